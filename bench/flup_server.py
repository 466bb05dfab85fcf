"""flup's FastCGI WSGIServer, threaded or forked, for scripts/bench/run.

usage: python flup_server.py threaded|fork FILE.py:CALLABLE SOCKET WORKERS

threaded  flup.server.fcgi: one process, at most WORKERS threads, one connection per thread
          (a connection that finds no idle thread is closed at once).
fork      flup.server.fcgi_fork: WORKERS pre-forked processes, one connection each.
"""

import importlib.util
import os
import sys


def load_app(spec):
    path, _, name = spec.rpartition(":")
    if not path or not name:
        sys.exit(f"flup_server: app must be FILE.py:CALLABLE, not {spec!r}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    module_name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def close_without_lingering():
    """After a response without FCGI_KEEP_CONN, flup shuts its side down and then waits, with
    no time limit, for the client's EOF (a guard against TCP resets). pyfcgi bench keeps its
    last connections open until it exits, so that wait would stall a one-worker flup at the
    end of every run (nginx closes at once, so behind nginx it never waits). Instead: shut
    down, read what the client has already sent (closing on unread bytes would reset the
    connection under the client), close. libfcgi (bench/c/responder.c) is treated alike."""
    import socket

    from flup.server.fcgi_base import Connection

    def cleanup(self):
        try:
            self._sock.shutdown(socket.SHUT_WR)
            self._sock.setblocking(False)
            while self._sock.recv(65536):
                pass
        except OSError:
            pass
        self._sock.close()

    Connection._cleanupSocket = cleanup


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("threaded", "fork"):
        sys.exit(__doc__)
    mode, spec, sock, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    app = load_app(spec)
    close_without_lingering()
    if mode == "threaded":
        from flup.server.fcgi import WSGIServer

        server = WSGIServer(app, bindAddress=sock, multithreaded=True, multiplexed=False,
                            maxThreads=workers, minSpare=workers, maxSpare=workers)
    else:
        from flup.server.fcgi_fork import WSGIServer

        server = WSGIServer(app, bindAddress=sock, maxChildren=workers, minSpare=workers,
                            maxSpare=workers, maxRequests=0)
    server.run()


if __name__ == "__main__":
    main()
