"""ASGI conformance probe for tests/it/asgi.rs: each path exercises one rule of the spec."""

import asyncio
import hashlib
import json
import os

LIFESPAN = []
LOG = os.environ.get("ASGI_TEST_LOG")


def note(text):
    if LOG:
        with open(LOG, "a") as f:
            f.write(text + "\n")


async def read_body(receive):
    chunks, total = [], 0
    h = hashlib.sha256()
    n = 0
    while True:
        m = await receive()
        assert m["type"] == "http.request", m
        h.update(m.get("body", b""))
        total += len(m.get("body", b""))
        n += 1
        if not m.get("more_body", False):
            return total, h.hexdigest(), n


async def start(send, status=200, headers=((b"content-type", b"text/plain"),)):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            LIFESPAN.append(m["type"])
            note(m["type"])
            if m["type"] == "lifespan.startup":
                if os.environ.get("ASGI_FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "no database (test)"})
                    return
                scope["state"]["greeting"] = "hi from lifespan"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/scope":
        body = {k: (v.decode("latin-1") if isinstance(v, bytes) else v)
                for k, v in scope.items() if k not in ("headers", "state")}
        body["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        body["state"] = scope["state"].get("greeting")
        body["lifespan"] = LIFESPAN
        data = json.dumps(body).encode()
        await start(send, headers=[(b"content-type", b"application/json")])
        await send({"type": "http.response.body", "body": data})
    elif path == "/upload":
        total, digest, n = await read_body(receive)
        await start(send)
        await send({"type": "http.response.body", "body": b"size=%d sha256=%s" % (total, digest.encode())})
    elif path == "/stream":
        await read_body(receive)
        await start(send)
        for i in range(5):
            await send({"type": "http.response.body", "body": b"event %d\n" % i, "more_body": True})
            await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        # Streams until the client goes away; records that it saw http.disconnect.
        await read_body(receive)
        await start(send)
        disconnected = asyncio.Event()

        async def watch():
            m = await receive()
            if m["type"] == "http.disconnect":
                note("disconnect seen")
                disconnected.set()

        asyncio.get_running_loop().create_task(watch())
        i = 0
        while not disconnected.is_set():
            try:
                await send({"type": "http.response.body", "body": b"x" * 1024 + b"\n", "more_body": True})
            except OSError:
                note("send failed after disconnect")
                break
            i += 1
            await asyncio.sleep(0.01)
    elif path == "/start-twice":
        await start(send)
        await start(send)
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"early"})
    elif path == "/raise-before":
        raise RuntimeError("raised before start")
    elif path == "/raise-after":
        await start(send)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("raised after the first chunk")
    elif path == "/return-after":
        await start(send)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        return
    elif path == "/empty":
        await start(send, status=204, headers=[])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/head":
        await start(send, headers=[(b"content-type", b"text/plain"), (b"content-length", b"4")])
        await send({"type": "http.response.body", "body": b"body"})
    elif path == "/body-anyway":
        # A body whatever the status (?204, ?304, ...) or method: the server must drop it.
        code = int(scope["query_string"] or b"200")
        await start(send, status=code)
        await send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})
        note("body-anyway done")
    elif path == "/bad-header":
        await start(send, headers=[(b"x-evil", b"a\r\nset-cookie: owned=1")])
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/hop-by-hop":
        # Hop-by-hop headers as real apps send them (sse-starlette's Connection: keep-alive,
        # BlackSheep's Transfer-Encoding: chunked): the server drops them and serves the rest.
        await start(send, headers=[
            (b"content-type", b"text/plain"),
            (b"connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=5"),
            (b"content-length", b"13"),
        ])
        await send({"type": "http.response.body", "body": b"hop-by-hop", "more_body": True})
        await send({"type": "http.response.body", "body": b" ok"})
    elif path == "/bad-hop-header":
        # Injection is refused in a header that would have been dropped, too.
        await start(send, headers=[(b"connection", b"close\r\nset-cookie: owned=1")])
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/no-response":
        return
    elif path == "/two-readers":
        # Two receive() calls waiting at once (Starlette's disconnect listener beside a body
        # reader): both are answered, here with http.disconnect once the response is done.
        await read_body(receive)
        loop = asyncio.get_running_loop()
        readers = [loop.create_task(receive()), loop.create_task(receive())]
        await asyncio.sleep(0.05)
        await start(send)
        await send({"type": "http.response.body", "body": b"two readers"})
        got = await asyncio.wait_for(asyncio.gather(*readers), 5)
        note("two readers: " + " ".join(m["type"] for m in got))
    elif path == "/wait-for-body":
        # Reads the body with receive() under a 10 ms timeout, retrying after each timeout:
        # a cancelled receive() must leave its message for the next call.
        h = hashlib.sha256()
        total = timeouts = 0
        while True:
            try:
                m = await asyncio.wait_for(receive(), 0.01)
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            assert m["type"] == "http.request", m
            h.update(m.get("body", b""))
            total += len(m.get("body", b""))
            if not m.get("more_body", False):
                break
        await start(send)
        await send({"type": "http.response.body",
                    "body": b"size=%d sha256=%s timeouts=%d" % (total, h.hexdigest().encode(), timeouts)})
    elif path == "/poll-disconnect":
        # Polls Starlette's Request.is_disconnected() (its code, written out): a receive() in
        # an anyio scope cancelled before it starts, so each poll cancels a pending read. The
        # client's abort must still turn it True. Needs the test venv (anyio).
        import anyio

        async def is_disconnected():
            message = {}
            with anyio.CancelScope() as cs:
                cs.cancel()
                message = await receive()
            return message.get("type") == "http.disconnect"

        await read_body(receive)
        polls = 0
        while not await is_disconnected():
            polls += 1
            if polls == 5:
                note("poll-disconnect polling")
            if polls > 2000:
                note("poll-disconnect gave up")
                return
            await asyncio.sleep(0.01)
        note("poll-disconnect: disconnected after %d polls" % polls)
    elif path == "/slow-async":
        await asyncio.sleep(3)
        await start(send)
        await send({"type": "http.response.body", "body": b"late"})
    elif path == "/block":
        # Blocking code in an async app: the whole event loop stops for 2 s.
        import time
        time.sleep(2)
        await start(send)
        await send({"type": "http.response.body", "body": b"late"})
    elif path == "/pathsend":
        # The file named by ASGI_TEST_FILE, handed over with the pathsend extension.
        assert "http.response.pathsend" in scope["extensions"], scope["extensions"]
        name = os.environ["ASGI_TEST_FILE"]
        size = os.path.getsize(name)
        await start(send, headers=[(b"content-type", b"application/octet-stream"),
                                   (b"content-length", str(size).encode())])
        await send({"type": "http.response.pathsend", "path": name})
    elif path == "/pathsend-missing":
        await start(send)
        await send({"type": "http.response.pathsend", "path": "/nonexistent/pyfcgi-test-file"})
    elif path == "/flood":
        # 200 MB in 64 KiB pieces as fast as send() lets it; notes the total every 1 MiB, so
        # a client that reads nothing shows whether send() waits (backpressure).
        await read_body(receive)
        await start(send)
        piece = b"f" * 65536
        for i in range(3200):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            if i % 16 == 15:
                note("flood sent %d" % ((i + 1) * len(piece)))
        await send({"type": "http.response.body", "body": b""})
    else:
        await start(send, status=404)
        await send({"type": "http.response.body", "body": b"not found"})
