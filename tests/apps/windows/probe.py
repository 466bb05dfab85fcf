"""The Windows end-to-end probe app (scripts/windows-python-check): what IIS-specific
behaviour looks like from inside a WSGI app.

    /env    SCRIPT_NAME, PATH_INFO, the working directory, sys.prefix and the Python version
    /print  prints a marker to stdout (pyfcgi sends it to the log)
    /slow   sleeps 1.5 s (for the shutdown event arriving mid-request)
    /touch  changes models.py beside this file, then sleeps 1.5 s (a deploy mid-request)
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.endswith("/print"):
        print("probe: print() reached the log")
        body = "printed"
    elif path.endswith("/slow"):
        time.sleep(1.5)
        body = "slept"
    elif path.endswith("/touch"):
        with open(os.path.join(HERE, "models.py"), "a", encoding="utf-8") as f:
            f.write("# changed by /touch\n")
        time.sleep(1.5)
        body = "touched"
    else:
        body = "SN=%s|PI=%s|cwd=%s|prefix=%s|py=%d.%d" % (
            environ["SCRIPT_NAME"],
            path,
            os.getcwd(),
            sys.prefix,
            sys.version_info[0],
            sys.version_info[1],
        )
    data = body.encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]
