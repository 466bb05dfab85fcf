"""flup's threaded FastCGI WSGIServer serving bench/hello.py (a peer in scripts/bench/peers).

usage: python flup_server.py HOST:PORT|/path/to/socket THREADS
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flup.server.fcgi import WSGIServer  # noqa: E402

from hello import app  # noqa: E402

where, threads = sys.argv[1], int(sys.argv[2])
if ":" in where:
    host, port = where.rsplit(":", 1)
    bind = (host, int(port))
else:
    bind = where
WSGIServer(app, bindAddress=bind, multithreaded=True, multiplexed=False,
           maxThreads=threads, minSpare=threads, maxSpare=threads).run()
