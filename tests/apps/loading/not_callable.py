"""The target exists but is not callable."""

application = {"this is": "a dict, not a WSGI application"}
