"""PEP 3333 test applications, served by tests/it/wsgi.rs as `pyfcgi serve pep3333.py:NAME`.

Every application here is wrapped in `wsgiref.validate.validator`, and warnings are errors:
a WSGIWarning from the validator (or any other warning) raises, so the request answers 500
and the test fails. The validator also checks that `close()` is called on the response
iterable: an unclosed iterable makes it complain through `sys.unraisablehook`, whose output
("Exception ignored in ...") lands in pyfcgi's log, where the tests look for it.

The exceptions are the apps named `raw_*`: they break PEP 3333 on purpose in ways the
validator would catch first (so pyfcgi's own checks would never be reached), or they need
pyfcgi to see the exact object they return (the validator wraps every response iterable,
which hides a `wsgi.file_wrapper` from the server).

Side channel: when the request carries the FastCGI param PYFCGI_TEST_SIDE, apps append
one line per event to that file (`called`, `closed`, `file closed`, ...), so a test can see
what happened even when no response gets through.

Request parameters the apps read: QUERY_STRING selects a mode, PYFCGI_TEST_FILE names a file
to serve.
"""

import io
import logging
import sys
import time
import warnings
from wsgiref.validate import validator

warnings.simplefilter("error")

TEXT = ("Content-Type", "text/plain; charset=utf-8")
BINARY = ("Content-Type", "application/octet-stream")

# Objects kept alive on purpose: a file that is never garbage collected is only closed if
# someone calls close() on it, so "file closed" in the side file proves the server did.
_KEEP = []


def _side(environ, line):
    path = environ.get("PYFCGI_TEST_SIDE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _frame(chunks):
    """Each chunk as b'<len>\\n' + chunk: the test sees how the input was split."""
    return b"".join(b"%d\n" % len(c) + c for c in chunks)


# --- environ -------------------------------------------------------------------------------


@validator
def environ_dump(environ, start_response):
    """Every environ key as `key=ascii(value)`, one per line, sorted."""
    lines = []
    for key in sorted(environ):
        if key in ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper"):
            value = "present" if environ[key] is not None else "None"
        else:
            value = environ[key]
        lines.append(f"{key}={value!a}")
    path = environ.get("PATH_INFO", "")
    # PEP 3333: the server decoded bytes as latin-1; re-encoding gives the raw bytes back.
    lines.append(f"path_info_utf8={path.encode('latin-1').decode('utf-8', 'replace')!a}")
    start_response("200 OK", [TEXT])
    return [("\n".join(lines) + "\n").encode("ascii")]


# --- wsgi.input ----------------------------------------------------------------------------


def _read_by_mode(environ):
    inp = environ["wsgi.input"]  # the validator's wrapper: checks every call and result
    raw = inp.input  # pyfcgi's own stream, for what the wrapper does not allow
    mode = environ.get("QUERY_STRING", "")
    out = []
    if mode == "read":
        out = [raw.read()]
    elif mode == "read_minus_one":
        out = [inp.read(-1)]
    elif mode == "read_n":
        while True:
            c = inp.read(7)
            if not c:
                break
            out.append(c)
    elif mode == "readline":
        while True:
            c = inp.readline()
            if not c:
                break
            out.append(c)
    elif mode == "readline_size":
        while True:
            c = inp.readline(5)
            if not c:
                break
            out.append(c)
    elif mode == "readlines":
        out = inp.readlines()
    elif mode == "readlines_hint":
        while True:
            lines = inp.readlines(10)
            if not lines:
                break
            out.append(b"".join(lines))
    elif mode == "iter":
        out = list(raw)  # pyfcgi's __iter__/__next__
    elif mode == "iter_validated":
        out = list(inp)  # the validator's __iter__, over readline()
    else:
        raise ValueError(f"unknown mode {mode!r}")
    # The end of the body is sticky: nothing more comes, whatever the web server sent.
    after = raw.read(10) + raw.readline() + raw.read()
    return out, after


@validator
def input_modes(environ, start_response):
    """Reads the body the way QUERY_STRING says; answers `after=N\\n` + framed chunks."""
    chunks, after = _read_by_mode(environ)
    start_response("200 OK", [BINARY])
    return [b"after=%d\n" % len(after), _frame(chunks)]


@validator
def echo_7(environ, start_response):
    """Reads the body 7 bytes at a time and sends it back."""
    inp = environ["wsgi.input"]
    buf = bytearray()
    short = 0
    while True:
        c = inp.read(7)
        if not c:
            break
        if len(c) != 7:
            short += 1
        buf += c
    start_response(
        "200 OK",
        [BINARY, ("Content-Length", str(len(buf))), ("X-Short-Reads", str(short))],
    )
    return [bytes(buf)]


@validator
def echo_slowly(environ, start_response):
    """Waits, then reads the body in small pieces with pauses, and sends it back."""
    time.sleep(0.5)
    inp = environ["wsgi.input"]
    buf = bytearray()
    while True:
        c = inp.read(16384)
        if not c:
            break
        buf += c
        time.sleep(0.002)
    start_response("200 OK", [BINARY, ("Content-Length", str(len(buf)))])
    return [bytes(buf)]


@validator
def hello(environ, start_response):
    """Ignores the request body entirely."""
    _side(environ, "called")
    start_response("200 OK", [TEXT])
    return [b"hello"]


# --- write() and the response head ---------------------------------------------------------


@validator
def write_only(environ, start_response):
    write = start_response("200 OK", [TEXT])
    write(b"one,")
    write(b"two,")
    write(b"three")
    return []


@validator
def write_then_iterable(environ, start_response):
    write = start_response("200 OK", [TEXT])
    write(b"written-")
    return [b"yielded-", b"last"]


@validator
def empty_first_chunk(environ, start_response):
    """Sends nothing but empty chunks first; with ?replace it then changes its status with
    exc_info, which PEP 3333 allows only while no header has gone out."""
    mode = environ.get("QUERY_STRING", "")
    write = start_response("200 OK", [TEXT, ("X-First", "yes")])
    if "write" in mode:
        write(b"")

    def body():
        yield b""
        yield b""
        if "replace" in mode:
            try:
                raise ValueError("changed my mind")
            except ValueError:
                start_response("503 Service Unavailable", [TEXT], sys.exc_info())
            yield b"replaced"
        else:
            yield b"data"

    return body()


# --- exc_info ------------------------------------------------------------------------------


@validator
def exc_info_before_headers(environ, start_response):
    start_response("200 OK", [TEXT, ("X-Stale", "yes")])
    try:
        raise ValueError("boom before any byte")
    except ValueError:
        start_response("500 Handled Error", [TEXT, ("X-Replaced", "yes")], sys.exc_info())
    return [b"handled error page"]


@validator
def exc_info_after_headers(environ, start_response):
    start_response("200 OK", [TEXT])

    def body():
        yield b"partial body"
        try:
            raise ValueError("late failure marker")
        except ValueError:
            start_response("500 Too Late", [TEXT], sys.exc_info())
            _side(environ, "start_response returned")  # PEP 3333: it must raise instead
        yield b"never sent"

    return body()


@validator
def start_response_twice(environ, start_response):
    start_response("200 OK", [TEXT])
    start_response("201 Created", [TEXT])
    return [b"unreachable"]


# --- application errors --------------------------------------------------------------------


@validator
def raise_before_start(environ, start_response):
    raise RuntimeError("secret detail 8f3a")


@validator
def raise_during_iteration(environ, start_response):
    start_response("200 OK", [TEXT])

    def body():
        yield b"first chunk"
        raise RuntimeError("iteration failure marker")

    return body()


def raw_yields_str(environ, start_response):
    """Yields str, not bytes (the validator would refuse it before pyfcgi saw it)."""
    start_response("200 OK", [TEXT])
    return ["not bytes"]


def raw_no_start_response(environ, start_response):
    """Never calls start_response (the validator asserts on the first body chunk)."""
    if environ.get("QUERY_STRING") == "empty":
        return []
    return [b"body without a status"]


@validator
def system_exit(environ, start_response):
    raise SystemExit("the app asked to exit")


class _Tracked:
    """A response iterable that records close() in the side file."""

    def __init__(self, environ, mode):
        self.environ = environ
        self.mode = mode

    def __iter__(self):
        if self.mode == "fail_first":
            raise RuntimeError("failed before the first chunk")
        yield b"a"
        if self.mode == "fail_later":
            raise RuntimeError("failed after the first chunk")
        if self.mode == "forever":
            chunk = b"x" * 16384
            while True:
                time.sleep(0.01)
                yield chunk
        yield b"b"

    def close(self):
        _side(self.environ, "closed")


@validator
def tracked_close(environ, start_response):
    _side(environ, "called")
    start_response("200 OK", [TEXT])
    return _Tracked(environ, environ.get("QUERY_STRING", ""))


# --- response headers --------------------------------------------------------------------

_BAD_HEADERS = {
    "ok": ("200 OK", []),
    "latin1": ("200 D\xe9j\xe0 vu", [("X-Latin", "caf\xe9")]),
    # Caught by the validator too: only served raw.
    "crlf_value": ("200 OK", [("X-Ok", "a\r\nX-Injected: 1")]),
    "lf_value": ("200 OK", [("X-Ok", "a\nX-Injected: 1")]),
    "cr_value": ("200 OK", [("X-Ok", "a\rX-Injected: 1")]),
    "crlf_name": ("200 OK", [("X-Injected: 1\r\nX-Ok", "v")]),
    "crlf_status": ("200 OK\r\nX-Injected: 1", []),
    "bad_status": ("2000 OK", []),
    "word_status": ("OK", []),
    "status_header": ("200 OK", [("Status", "302 X-Injected")]),
    "bytes_value": ("200 OK", [("X-Injected", b"1")]),
    # Not caught by the validator: served through it, so only pyfcgi stands in the way.
    "non_latin1_value": ("200 OK", [("X-Euro", "\u20ac X-Injected")]),
    "hop_connection": ("200 OK", [("Connection", "close, X-Injected")]),
    "hop_transfer_encoding": ("200 OK", [("Transfer-Encoding", "chunked; X-Injected")]),
    "hop_keep_alive": ("200 OK", [("Keep-Alive", "X-Injected")]),
    "hop_upgrade": ("200 OK", [("Upgrade", "X-Injected")]),
    "plus_content_length": ("200 OK", [("Content-Length", "+5"), ("X-Injected", "1")]),
    "negative_content_length": ("200 OK", [("Content-Length", "-1"), ("X-Injected", "1")]),
}


def raw_bad_header(environ, start_response):
    status, headers = _BAD_HEADERS[environ.get("QUERY_STRING", "")]
    start_response(status, [TEXT, *headers])
    return [b"body after head"]


bad_header = validator(raw_bad_header)


@validator
def content_length_mismatch(environ, start_response):
    if environ.get("QUERY_STRING") == "over":
        start_response("200 OK", [TEXT, ("Content-Length", "5")])
        return [b"0123", b"456789", b"more"]
    start_response("200 OK", [TEXT, ("Content-Length", "10")])
    return [b"abc"]


@validator
def head_aware(environ, start_response):
    """Declares the length of a body it leaves out for HEAD (and for ?304), as frameworks do."""
    body = b"0123456789"
    if environ.get("QUERY_STRING") == "304":
        start_response("304 Not Modified", [("Content-Length", str(len(body)))])
        return []
    start_response("200 OK", [TEXT, ("Content-Length", str(len(body)))])
    if environ["REQUEST_METHOD"] == "HEAD":
        return []
    return [body]


class _Counted:
    """Yields three chunks, recording each one and close() in the side file."""

    def __init__(self, environ):
        self.environ = environ

    def __iter__(self):
        for i in range(3):
            _side(self.environ, "chunk %d" % i)
            yield b"body%d" % i

    def close(self):
        _side(self.environ, "closed")


def raw_body_anyway(environ, start_response):
    """Yields a body whatever the status (QUERY_STRING, e.g. `204 No Content`) or the method:
    not through the validator, which would refuse a 1xx status before pyfcgi sees it."""
    status = environ.get("QUERY_STRING").replace("+", " ") or "200 OK"
    start_response(status, [TEXT])
    return _Counted(environ)


# --- wsgi.file_wrapper ---------------------------------------------------------------------


class _TrackedFile(io.FileIO):
    """A real file that records close(); with `poison`, read() fails (proving that the server
    sent it from its descriptor)."""

    def __init__(self, path, environ, poison=False):
        super().__init__(path, "rb")
        self.environ = environ
        self.poison = poison
        _KEEP.append(self)

    def read(self, size=-1):
        if self.poison:
            raise AssertionError("read() was called: the descriptor path was not taken")
        return super().read(size)

    def close(self):
        if not self.closed:
            _side(self.environ, "file closed")
        super().close()


class _TrackedBytesIO(io.BytesIO):
    def __init__(self, data, environ):
        super().__init__(data)
        self.environ = environ
        _KEEP.append(self)

    def close(self):
        if not self.closed:
            _side(self.environ, "file closed")
        super().close()


@validator
def file_wrapper_file(environ, start_response):
    """A real file through the validator (which hides it from pyfcgi: iteration path)."""
    f = _TrackedFile(environ["PYFCGI_TEST_FILE"], environ)
    start_response("200 OK", [BINARY])
    return environ["wsgi.file_wrapper"](f, 8192)


def raw_file_wrapper_fileno(environ, start_response):
    """A real file returned as is, from the offset in QUERY_STRING; read() is poisoned."""
    f = _TrackedFile(environ["PYFCGI_TEST_FILE"], environ, poison=True)
    f.seek(int(environ.get("QUERY_STRING") or 0))
    start_response("200 OK", [BINARY])
    return environ["wsgi.file_wrapper"](f)


def _bytesio(environ):
    with open(environ["PYFCGI_TEST_FILE"], "rb") as f:
        return _TrackedBytesIO(f.read(), environ)


@validator
def file_wrapper_bytesio(environ, start_response):
    start_response("200 OK", [BINARY])
    return environ["wsgi.file_wrapper"](_bytesio(environ), 1000)


def raw_file_wrapper_bytesio(environ, start_response):
    """A BytesIO returned as is: fileno() raises, so pyfcgi must iterate it."""
    start_response("200 OK", [BINARY])
    return environ["wsgi.file_wrapper"](_bytesio(environ), 1000)


# --- logging -------------------------------------------------------------------------------


@validator
def chatty(environ, start_response):
    tag = environ.get("QUERY_STRING", "")
    print(f"print-{tag}")
    logging.getLogger("pep3333").warning("logging-%s", tag)
    environ["wsgi.errors"].write(f"errors-{tag}\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [TEXT])
    return [b"chatted"]
