"""A small FastAPI app: the ASGI features a FastCGI host must get right.

Serve it with pyfcgi (see docs/asgi.md):

    pyfcgi serve examples/fastapi_app/main.py:app --venv .venv --bind unix:/run/pyfcgi.sock

The streaming routes live under /events/, which configs/nginx-site.conf serves without
buffering.

Routes:
    GET  /hello?name=x   JSON greeting
    POST /items          a JSON body validated by pydantic, echoed back with an id
    POST /form           urlencoded form fields, echoed back
    POST /upload         multipart field "file": its size and sha256, read in chunks
    GET  /events/ticks   server-sent events from a StreamingResponse: 5 events, 200 ms apart
    GET  /events/stream  server-sent events from sse-starlette's EventSourceResponse
    GET  /events/wait    a long poll: waits until the client goes away (Request.is_disconnected)
    GET  /disconnects    how many /events/wait requests wait, and when the others saw their
                         clients leave (wall-clock seconds)
    GET  /whereami       the root_path and path the app sees
    POST /background     answers at once; a background task records the job afterwards
    GET  /jobs           the jobs the background task has recorded
    GET  /startup        what the lifespan startup set up
"""

import asyncio
import hashlib
import time
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

JOBS = []
DISCONNECTS = []
WAITING = []
SSE_EVENTS = 5
SSE_DELAY = 0.2


@asynccontextmanager
async def lifespan(app):
    app.state.started = "lifespan startup ran"
    yield
    JOBS.clear()


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/hello")
async def hello(name: str = "world"):
    return {"message": f"Hello, {name}!"}


@app.post("/items")
async def create_item(item: Item):
    return {"id": 1, **item.model_dump()}


@app.post("/form")
async def form(name: str = Form(...), colour: str = Form("")):
    return {"name": name, "colour": colour}


@app.post("/upload")
async def upload(file: UploadFile):
    h = hashlib.sha256()
    size = 0
    while block := await file.read(64 * 1024):
        size += len(block)
        h.update(block)
    return {"filename": file.filename, "size": size, "sha256": h.hexdigest()}


@app.get("/events/ticks")
async def ticks():
    async def events():
        for i in range(SSE_EVENTS):
            yield f"id: {i}\ndata: tick {i}\n\n"
            await asyncio.sleep(SSE_DELAY)

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/events/stream")
async def stream():
    # sse-starlette sends Connection: keep-alive and X-Accel-Buffering: no with the events.
    async def events():
        for i in range(SSE_EVENTS):
            yield {"id": str(i), "event": "tick", "data": f"tick {i}"}
            await asyncio.sleep(SSE_DELAY)

    return EventSourceResponse(events())


@app.get("/events/wait")
async def wait(request: Request, limit: float = 60.0):
    deadline = time.monotonic() + limit
    WAITING.append(request)
    try:
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                DISCONNECTS.append(time.time())
                return {"waited": "until the client left"}
            await asyncio.sleep(0.05)
        return {"waited": limit}
    finally:
        WAITING.remove(request)


@app.get("/disconnects")
async def disconnects():
    return {"waiting": len(WAITING), "at": DISCONNECTS}


@app.get("/whereami")
async def whereami(request: Request):
    return {"root_path": request.scope.get("root_path"), "path": request.scope["path"]}


def record(job: str):
    JOBS.append(job)


@app.post("/background")
async def background(job: str, tasks: BackgroundTasks):
    tasks.add_task(record, job)
    return {"queued": job}


@app.get("/jobs")
async def jobs():
    return {"jobs": JOBS}


@app.get("/startup")
async def startup():
    return {"state": app.state.started}
