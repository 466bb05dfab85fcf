"""The same routes as examples/flask_app/app.py, in Django.

    /                  an HTML index linking to the others
    /hello?name=x      plain text (HEAD works too)
    /form              GET: a form with a CSRF token; POST: echoes the submitted fields
    /upload            POST multipart/form-data, field "file": its size and sha256 (CSRF-exempt)
    /stream            20 chunks of 1 KiB, ~50 ms apart (StreamingHttpResponse)
    /redirect          302 to /hello
    /cookie/set?v=x    sets the cookie "demo"
    /cookie/get        shows the cookie "demo"
    /u/<name>          echoes a UTF-8 path segment (/u/caf%C3%A9 -> café)
"""

import hashlib
import time

from django.http import (
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe

STREAM_CHUNKS = 20
STREAM_CHUNK_SIZE = 1024
STREAM_DELAY = 0.05

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>pyfcgi Django example</title></head>
<body>
<h1>pyfcgi Django example</h1>
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
</ul>
</body></html>
"""

FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>form</title></head>
<body>
<form method="post" action="/form">
  <input type="hidden" name="csrfmiddlewaretoken" value="{token}">
  <label>name <input name="name"></label>
  <label>colour <input name="colour"></label>
  <button>send</button>
</form>
</body></html>
"""


def text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@require_safe  # GET and HEAD
def index(request):
    return HttpResponse(INDEX)


@require_safe
def hello(request):
    name = request.GET.get("name", "world")
    return text(f"Hello, {name}!\n")


@require_http_methods(["GET", "HEAD", "POST"])
def form(request):
    if request.method != "POST":
        return HttpResponse(FORM.format(token=escape(get_token(request))))
    lines = [
        f"{k}={v}"
        for k in sorted(request.POST)
        if k != "csrfmiddlewaretoken"
        for v in request.POST.getlist(k)
    ]
    return text("".join(line + "\n" for line in lines))


@csrf_exempt
@require_POST
def upload(request):
    f = request.FILES.get("file")
    if f is None:
        return HttpResponseBadRequest("no file field\n", content_type="text/plain")
    h = hashlib.sha256()
    size = 0
    for block in f.chunks(64 * 1024):
        size += len(block)
        h.update(block)
    return text(f"size={size}\nsha256={h.hexdigest()}\n")


@require_safe
def stream(request):
    def generate():
        for i in range(STREAM_CHUNKS):
            time.sleep(STREAM_DELAY)  # "work" before each chunk: ~1 s in all
            line = f"chunk {i:02d} "
            yield (line + "." * (STREAM_CHUNK_SIZE - len(line) - 1) + "\n").encode()

    return StreamingHttpResponse(generate(), content_type="text/plain")


@require_safe
def to_hello(request):
    return HttpResponseRedirect("/hello")


@require_safe
def cookie_set(request):
    v = request.GET.get("v", "")
    resp = text(f"set demo={v}\n")
    resp.set_cookie("demo", v, httponly=True, samesite="Lax")
    return resp


@require_safe
def cookie_get(request):
    return text(f"demo={request.COOKIES.get('demo', '')}\n")


@require_safe
def user(request, name):
    return text(f"{name}\n")
