"""A hello-world WSGI app, 13 bytes, no I/O, for docs/benchmarks.md's direct commands and
scripts/bench/resources (scripts/bench/run serves the same bytes from bench/apps.py:hello)."""

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
