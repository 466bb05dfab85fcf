"""Runs asgi_hello's app (or `raw`) under the fcgisgi package on a Unix socket, for
scripts/bench/asgi: python fcgisgi_server.py SOCKET [app|raw]"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import asgi_hello  # noqa: E402
from fcgisgi import run_asgi_server  # noqa: E402

asyncio.run(run_asgi_server(getattr(asgi_hello, sys.argv[2] if len(sys.argv) > 2 else "app"),
                            bind_address=sys.argv[1]))
