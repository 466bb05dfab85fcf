# A raw ASGI app that imports nothing at all (not asyncio, not threading): tests/it/asgi_edges.rs.
# Each request notes what happened in the file named by the request's X-Note header.
#   /wait   reads the body, then waits in receive() for what comes next (a long poll)
#   /hang   reads the body, then never finishes and ignores the client leaving
#   /quick  answers at once


def note(scope, text):
    for name, value in scope["headers"]:
        if name == b"x-note":
            with open(value.decode(), "a") as f:
                f.write(text + "\n")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # no lifespan support: served anyway with --lifespan auto
    path = scope["path"]
    if path in ("/wait", "/hang"):
        while True:
            m = await receive()
            if not m.get("more_body"):
                break
        note(scope, "%s started" % path)
        if path == "/wait":
            m = await receive()
            note(scope, "/wait got " + m["type"])
            return
        forever = __import__("asyncio").Event()
        await forever.wait()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"quick"})
