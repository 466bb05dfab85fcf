"""Applications that fail in every way a WSGI app can, for tests/it/faults.rs.

QUERY_STRING picks the behaviour; PYFCGI_TEST_SIDE (a FastCGI param) names a file where the
app records what happened, so a test sees it even when no response gets through.
"""

import time


def _side(environ, line):
    path = environ.get("PYFCGI_TEST_SIDE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _CloseRaises:
    def __init__(self, environ):
        self.environ = environ

    def __iter__(self):
        yield b"complete body"

    def close(self):
        _side(self.environ, "close called")
        raise RuntimeError("close() failure marker")


class _CloseWaits:
    """A body complete by its Content-Length whose close() waits for `<side>.go` (20 s at most)."""

    def __init__(self, environ):
        self.environ = environ

    def __iter__(self):
        yield b"complete body"
        yield b""

    def close(self):
        _side(self.environ, "close started")
        go = self.environ.get("PYFCGI_TEST_SIDE", "") + ".go"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                open(go).close()
                break
            except OSError:
                time.sleep(0.01)
        _side(self.environ, "closed")


class _Big:
    """`total` bytes in 64 KiB chunks, recording close()."""

    def __init__(self, environ, total):
        self.environ = environ
        self.total = total

    def __iter__(self):
        chunk = b"z" * 65536
        for _ in range(self.total // len(chunk)):
            yield chunk

    def close(self):
        _side(self.environ, "big closed")


def application(environ, start_response):
    mode = environ.get("QUERY_STRING", "")
    if mode == "none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return None
    if mode == "str":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return "a str, not bytes"
    if mode == "close_raises":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return _CloseRaises(environ)
    if mode == "close_waits":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return _CloseWaits(environ)
    if mode.startswith("big="):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Big(environ, int(mode[4:]))
    if mode == "upload":
        try:
            data = environ["wsgi.input"].read()
        except OSError as e:
            _side(environ, "read failed: %s" % e)
            raise
        _side(environ, "read %d" % len(data))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]
    if mode == "upload_uncaught":
        time.sleep(1)
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
