"""WSGI app for tests/it/supervisor.rs: answers with its worker's pid.

WORKERS_APP_IMPORT_DELAY: seconds the import takes (a slow app, so that a rolling restart
has a window where only old workers can serve). WORKERS_APP_FAIL: the import raises.
WORKERS_APP_CRASH: the process dies during the import (os._exit(3)), as a crashing C
extension would.
/sleep?S sleeps S seconds; /leak keeps 20 MB more each call (for --max-rss).
"""

import os
import time

time.sleep(float(os.environ.get("WORKERS_APP_IMPORT_DELAY", "0")))
if os.environ.get("WORKERS_APP_CRASH"):
    os._exit(3)
if os.environ.get("WORKERS_APP_FAIL"):
    raise RuntimeError("the app cannot import (test)")

LEAK = []


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "0.5"))
    elif path == "/leak":
        LEAK.append(b"x" * (20 << 20))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
