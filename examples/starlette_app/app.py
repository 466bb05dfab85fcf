"""A small Starlette app: static files, streaming both ways, middleware and lifespan state.

Serve it with pyfcgi (see docs/asgi.md):

    pyfcgi serve examples/starlette_app/app.py:app --venv .venv --bind unix:/run/pyfcgi.sock

Routes:
    GET  /                 an HTML page
    GET  /hello/{name}     JSON greeting (path parameter)
    GET  /static/...       files from static/ (Starlette's FileResponse; pyfcgi sends them
                           itself through the http.response.pathsend extension)
    POST /echo             streams the request body back as it arrives
    GET  /events/ticks     5 lines, 200 ms apart (a streamed response; configs/nginx-site.conf
                           serves /events/ without buffering)
    GET  /info             what the app sees: lifespan state, root_path, ASGI extensions
Every response carries an X-Process-Time header from a pure ASGI middleware.
"""

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


class ProcessTime:
    """Pure ASGI middleware: adds X-Process-Time (seconds) to every response head."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                took = f"{time.perf_counter() - t0:.6f}".encode()
                message["headers"] = [*message.get("headers", []), (b"x-process-time", took)]
            await send(message)

        await self.app(scope, receive, timed_send)


async def home(request):
    return HTMLResponse("<!doctype html><title>pyfcgi</title><h1>Starlette on pyfcgi</h1>\n")


async def hello(request):
    return JSONResponse({"message": f"Hello, {request.path_params['name']}!"})


async def echo(request):
    async def body():
        async for chunk in request.stream():
            yield chunk

    return StreamingResponse(body(), media_type=request.headers.get("content-type", "application/octet-stream"))


async def ticks(request):
    async def lines():
        for i in range(5):
            yield f"tick {i}\n"
            await asyncio.sleep(0.2)

    return StreamingResponse(lines(), media_type="text/plain")


async def info(request):
    return JSONResponse({
        "started": request.state.started,
        "root_path": request.scope.get("root_path", ""),
        "path": request.scope["path"],
        "extensions": sorted(request.scope.get("extensions", {})),
    })


@asynccontextmanager
async def lifespan(app):
    # The lifespan state reaches every request as request.state.
    yield {"started": "lifespan startup ran"}


app = Starlette(
    routes=[
        Route("/", home),
        Route("/hello/{name}", hello),
        Route("/echo", echo, methods=["POST"]),
        Route("/events/ticks", ticks),
        Route("/info", info),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ],
    middleware=[Middleware(ProcessTime)],
    lifespan=lifespan,
)
