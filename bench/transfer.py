"""Large-body WSGI apps for scripts/bench/resources (1 GiB through pyfcgi at bounded memory).

    upload    reads wsgi.input in 64 KiB pieces; answers "bytes=N sha256=HEX hash_s=S", S the
              seconds spent hashing, so a benchmark can tell the app's share of the time
    download  yields BYTES (query ?bytes=N&chunk=M, default 1 GiB in 64 KiB chunks) with
              Content-Length set; every chunk is the same bytes object, so the app itself
              allocates nothing per chunk and the server's memory is what shows.
"""

import hashlib
import time
from urllib.parse import parse_qs

READ_SIZE = 64 * 1024


def upload(environ, start_response):
    inp = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = 0
    hashing = 0.0
    while True:
        block = inp.read(READ_SIZE)
        if not block:
            break
        total += len(block)
        t = time.perf_counter()
        digest.update(block)
        hashing += time.perf_counter() - t
    body = f"bytes={total} sha256={digest.hexdigest()} hash_s={hashing:.3f}\n".encode("ascii")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def download(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    size = int(query.get("bytes", [str(1 << 30)])[0])
    chunk = int(query.get("chunk", [str(READ_SIZE)])[0])
    block = bytes(range(256)) * (chunk // 256) + bytes(chunk % 256)
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
    )

    def body():
        full, rest = divmod(size, chunk)
        for _ in range(full):
            yield block
        if rest:
            yield block[:rest]

    return body()
