"""The WSGI app scripts/soak drives: small answers, uploads, streamed downloads, failures."""

import hashlib


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/small":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/upload":
        h = hashlib.sha256()
        n = 0
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        body = ("%d %s" % (n, h.hexdigest())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/download":
        mib = int(environ.get("QUERY_STRING") or "10")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(mib << 20))])
        chunk = b"d" * 65536
        return (chunk for _ in range(mib * 16))
    if path == "/boom":
        raise RuntimeError("soak: an intended application failure")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such soak route"]
