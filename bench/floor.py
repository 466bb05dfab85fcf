"""An app's floor: its own CPU per request with no server at all (scripts/bench/run).

    python floor.py FILE:CALLABLE SECONDS [WARMUP]

Imports the WSGI app the way the servers do (FILE's folder first on sys.path), then calls it
in a loop for SECONDS of CPU time with an environ like the one pyfcgi builds for
`pyfcgi bench` (the same CGI variables, the wsgi.* keys, an empty wsgi.input), reads the body
it returns and calls close(), as PEP 3333 asks of a server. Prints one JSON object:
{"cpu_us": CPU per request in µs, "calls": N, "body": the first response's body length}.

Run it pinned to the server's core (taskset) with the interpreter the servers embed, so that
a server's CPU per response minus this floor is what the server itself adds: reading and
writing the socket, decoding params, building the environ, framing the response.
"""

import io
import json
import os
import sys
import time

# What `pyfcgi bench` sends for GET / (crates/client/src/request.rs), as a server decodes it.
CGI = {
    "QUERY_STRING": "",
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "REQUEST_URI": "/",
    "PATH_INFO": "/",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "pyfcgi-client",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "40000",
    "SERVER_PORT": "80",
    "SERVER_NAME": "localhost",
    "HTTP_HOST": "localhost",
    "HTTP_USER_AGENT": "pyfcgi-bench",
    "HTTP_ACCEPT": "*/*",
}


def load(spec):
    file, _, attr = spec.partition(":")
    folder = os.path.dirname(os.path.abspath(file))
    sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(file))[0]
    module = __import__(name)
    return getattr(module, attr or "application")


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 1
    app = load(argv[1])
    seconds = float(argv[2])
    warmup = float(argv[3]) if len(argv) == 4 else 1.0
    template = dict(CGI)
    template.update({
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    })
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)
        return lambda data: None

    def one():
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(b"")
        result = app(environ, start_response)
        try:
            size = 0
            for chunk in result:
                size += len(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return size

    body = one()
    if not status or not status[0].startswith("200"):
        print(f"floor: {argv[1]} answered {status[:1]}, not 200", file=sys.stderr)
        return 1
    clock = time.process_time
    end = clock() + warmup
    while clock() < end:
        one()
    calls, start = 0, clock()
    end = start + seconds
    while True:
        for _ in range(100):
            one()
        calls += 100
        now = clock()
        if now >= end:
            break
    print(json.dumps({"cpu_us": (now - start) / calls * 1e6, "calls": calls, "body": body}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
