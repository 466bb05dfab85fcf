"""WSGI app for tests/it/logs.rs.

LOGS_APP_BROKEN: a path; while that file exists, the import raises (a deploy gone wrong).
/print writes a line with print() and one to wsgi.errors; /crash ends the process
(os._exit(1)), as a crashing C extension would; any other path answers "ok".
"""

import os
import sys

_broken = os.environ.get("LOGS_APP_BROKEN")
if _broken and os.path.exists(_broken):
    raise RuntimeError("the app cannot import (logs test)")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/crash":
        os._exit(1)
    if path == "/print":
        print("hello from the app")
        sys.stdout.flush()
        environ["wsgi.errors"].write('a "quoted" warning\n')
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
