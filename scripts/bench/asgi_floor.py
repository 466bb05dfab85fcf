"""An ASGI app's floor: its own CPU per request with no server (scripts/bench/asgi).

    python asgi_floor.py MODULE:ATTR SECONDS

Runs the app on the event loop the servers use (uvloop when installed, as pyfcgi's
`--loop auto` and uvicorn[standard] do), calling it with an http scope like the one pyfcgi
builds for GET /hello, a receive() that returns the empty body, and a send() that keeps the
messages, for SECONDS of CPU time after a second of warm-up. Prints {"cpu_us": ..., "calls": N}.
Run it pinned to the server's core; a server's CPU per response minus this is its overhead.
"""

import asyncio
import json
import os
import sys
import time

SCOPE = {
    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
    "method": "GET", "scheme": "http", "path": "/hello", "raw_path": b"/hello",
    "query_string": b"", "root_path": "",
    "headers": [(b"host", b"localhost"), (b"user-agent", b"pyfcgi-bench"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80),
    "extensions": {"http.response.pathsend": {}},
}
BODY = {"type": "http.request", "body": b"", "more_body": False}


async def measure(app, seconds):
    sent = []

    async def receive():
        return BODY

    async def send(message):
        sent.append(message)

    async def one():
        scope = dict(SCOPE)
        scope["state"] = {}
        await app(scope, receive, send)
        status = sent[0]["status"]
        sent.clear()
        return status

    if await one() != 200:
        raise SystemExit("asgi_floor: the app did not answer 200")
    clock = time.process_time
    end = clock() + 1.0
    while clock() < end:
        await one()
    calls, start = 0, clock()
    while True:
        for _ in range(100):
            await one()
        calls += 100
        now = clock()
        if now >= start + seconds:
            return (now - start) / calls * 1e6, calls


def main(argv):
    module, _, attr = argv[1].partition(":")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app = getattr(__import__(module), attr)
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    cpu_us, calls = loop.run_until_complete(measure(app, float(argv[2])))
    print(json.dumps({"cpu_us": cpu_us, "calls": calls}))


if __name__ == "__main__":
    main(sys.argv)
