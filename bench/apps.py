"""The plain WSGI apps of scripts/bench/run, one callable per scenario (stdlib only).

    hello    13 bytes, Content-Length set (the same as bench/hello.py:app)
    kib16    16 KiB, Content-Length set
    echo     the request body back (the benchmark POSTs 1 MiB), Content-Length set
    stream   100 chunks of 1 KiB from a generator, no Content-Length

bench/c/responder.c answers the same bytes without Python. The benchmark driver imports this
module for the expected bodies, so keep it free of third-party imports.
"""

HELLO = b"Hello, World!"
# A pattern rather than zeros, so a server that drops or repeats a block is caught.
KIB16 = b"0123456789abcdef" * 1024
STREAM_CHUNK = b"0123456789abcdef" * 64
STREAM_CHUNKS = 100
STREAM_BODY = STREAM_CHUNK * STREAM_CHUNKS

_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
_KIB16_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(KIB16)))]


def hello(environ, start_response):
    start_response("200 OK", _HELLO_HEADERS)
    return [HELLO]


def kib16(environ, start_response):
    start_response("200 OK", _KIB16_HEADERS)
    return [KIB16]


def echo(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(STREAM_CHUNKS):
        yield STREAM_CHUNK
