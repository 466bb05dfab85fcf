"""ASGI hello worlds for scripts/bench/asgi: Starlette (`app`), FastAPI (`fastapi_app`) and a
raw ASGI callable (`raw`), so the framework's cost and the server's cost can be told apart."""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse as FastAPIText
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return PlainTextResponse("Hello, World!")


app = Starlette(routes=[Route("/hello", hello)])

fastapi_app = FastAPI()


@fastapi_app.get("/hello", response_class=FastAPIText)
async def fastapi_hello():
    return "Hello, World!"


async def raw(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, World!"})
