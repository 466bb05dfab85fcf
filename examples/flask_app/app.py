"""A small Flask app that exercises what a FastCGI host must get right.

Serve it with pyfcgi (see scripts/demo and configs/nginx-flask.conf):

    pyfcgi serve examples/flask_app/app.py:app --venv .venv --bind unix:/run/pyfcgi.sock

Routes:
    /                  an HTML index linking to the others
    /hello?name=x      plain text (HEAD works too)
    /form              GET: a form; POST: echoes the submitted fields
    /upload            POST multipart/form-data, field "file": its size and sha256
    /stream            20 chunks of 1 KiB, ~50 ms apart (a generator response)
    /redirect          302 to /hello
    /cookie/set?v=x    sets the cookie "demo"
    /cookie/get        shows the cookie "demo"
    /u/<name>          echoes a UTF-8 path segment (/u/caf%C3%A9 -> café)
    /static/...        files under static/ (nginx serves them in front of pyfcgi)
"""

import hashlib
import time

from flask import Flask, Response, redirect, request, stream_with_context

app = Flask(__name__)

STREAM_CHUNKS = 20
STREAM_CHUNK_SIZE = 1024
STREAM_DELAY = 0.05

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>pyfcgi Flask example</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body>
<h1>pyfcgi Flask example</h1>
<ul>
  <li><a href="/hello?name=world">/hello?name=world</a></li>
  <li><a href="/form">/form</a></li>
  <li><form method="post" action="/upload" enctype="multipart/form-data">
      /upload <input type="file" name="file"> <button>upload</button></form></li>
  <li><a href="/stream">/stream</a></li>
  <li><a href="/redirect">/redirect</a></li>
  <li><a href="/cookie/set?v=chocolate">/cookie/set?v=chocolate</a>,
      <a href="/cookie/get">/cookie/get</a></li>
  <li><a href="/u/caf%C3%A9">/u/café</a></li>
  <li><a href="/static/hello.txt">/static/hello.txt</a> (served by nginx)</li>
</ul>
</body></html>
"""

FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>form</title></head>
<body>
<form method="post" action="/form">
  <label>name <input name="name"></label>
  <label>colour <input name="colour"></label>
  <button>send</button>
</form>
</body></html>
"""


def text(body, status=200):
    return Response(body, status=status, mimetype="text/plain")


@app.get("/")
def index():
    return Response(INDEX, mimetype="text/html")


@app.get("/hello")  # Flask answers HEAD for every GET route
def hello():
    name = request.args.get("name", "world")
    return text(f"Hello, {name}!\n")


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "GET":
        return Response(FORM, mimetype="text/html")
    lines = [f"{k}={v}" for k in sorted(request.form) for v in request.form.getlist(k)]
    return text("".join(line + "\n" for line in lines))


@app.post("/upload")
def upload():
    f = request.files.get("file")
    if f is None:
        return text("no file field\n", 400)
    h = hashlib.sha256()
    size = 0
    while True:
        block = f.stream.read(64 * 1024)
        if not block:
            break
        size += len(block)
        h.update(block)
    return text(f"size={size}\nsha256={h.hexdigest()}\n")


@app.get("/stream")
def stream():
    def generate():
        for i in range(STREAM_CHUNKS):
            time.sleep(STREAM_DELAY)  # "work" before each chunk: ~1 s in all
            line = f"chunk {i:02d} "
            yield (line + "." * (STREAM_CHUNK_SIZE - len(line) - 1) + "\n").encode()

    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/redirect")
def to_hello():
    return redirect("/hello", code=302)


@app.get("/cookie/set")
def cookie_set():
    v = request.args.get("v", "")
    resp = text(f"set demo={v}\n")
    resp.set_cookie("demo", v, httponly=True, samesite="Lax")
    return resp


@app.get("/cookie/get")
def cookie_get():
    return text(f"demo={request.cookies.get('demo', '')}\n")


@app.get("/u/<name>")
def user(name):
    return text(f"{name}\n")

