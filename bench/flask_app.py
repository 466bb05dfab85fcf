"""A Flask hello world for scripts/bench/run: one route, 13-byte text/plain body.

    GET /  ->  "Hello, World!"   (WSGI callable: bench/flask_app.py:app)
"""

from flask import Flask, Response

app = Flask(__name__)


@app.get("/")
def hello():
    return Response("Hello, World!", mimetype="text/plain")
