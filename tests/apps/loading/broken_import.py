"""Fails at import time: the diagnosis must show this file, this line and sys.path."""

import pyfcgi_test_no_such_module  # noqa: F401  (the failure under test)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]
