# pyfcgi's ASGI 3.0 glue, run on the event-loop thread (crates/python/src/asgi/mod.rs).
#
# Rust queues new requests and finished I/O (body chunks read, writes done) and writes a byte to
# a socket this loop watches with add_reader; `_wake` drains the queue in one call. Each request
# is one task running the app with `receive`/`send` that hand work to Rust and await a future
# Rust resolves. No polling, and the loop thread is the only one here that holds the GIL.

import asyncio
import collections
import itertools
import logging
import os
import traceback

_log = logging.getLogger("pyfcgi.asgi")


def install(loop, bridge, app, state, mode):
    """Registers the wake-up reader and starts the lifespan (`mode`: auto, on or off)."""
    stop = asyncio.Event()

    def settle(fut, value, failed):
        if fut.done():
            return
        if failed:
            fut.set_exception(OSError(value))
        else:
            fut.set_result(value)

    def wake():
        new, done, stopping = bridge.drain()
        if stopping:
            stop.set()
        for fut, value, failed in done:
            settle(fut, value, failed)
        for conn, scope in new:
            scope["state"] = dict(state)
            loop.create_task(run(conn, scope))

    async def run(conn, scope):
        started = False
        finished = False
        # Reads whose receive() was cancelled (asyncio.wait_for timing out, an anyio cancel
        # scope such as Starlette's is_disconnected()), as (sequence number, future), oldest
        # first. Rust answers reads in order, so a cancelled one still gets the next message:
        # the next receive() takes it from here instead of issuing a new read, and no message
        # is lost or reordered.
        orphans = collections.deque()
        reads = itertools.count()

        def orphan(entry):
            # Oldest first, whatever order concurrent receive() calls were cancelled in.
            i = len(orphans)
            while i and orphans[i - 1][0] > entry[0]:
                i -= 1
            orphans.insert(i, entry)

        async def receive():
            if orphans:
                entry = orphans.popleft()
                fut = entry[1]
                if fut.done():
                    return fut.result()
            else:
                fut = loop.create_future()
                # The first body chunk is often there already: it comes back at once.
                message = conn.read(fut)
                if message is not None:
                    return message
                entry = (next(reads), fut)
            # Shielded: cancelling receive() leaves the read itself pending, for the next call.
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                orphan(entry)
                raise

        async def send(message):
            nonlocal started, finished
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    raise RuntimeError("ASGI: http.response.start sent twice")
                if message.get("trailers"):
                    raise RuntimeError(
                        "ASGI: response trailers are not supported over FastCGI "
                        "(the http.response.trailers extension is not advertised)"
                    )
                # Validated here (an invalid status or header raises); the head goes out
                # with the first body piece.
                conn.start(int(message["status"]), list(message.get("headers") or ()))
                started = True
            elif kind == "http.response.body":
                if not started:
                    raise RuntimeError("ASGI: http.response.body sent before http.response.start")
                if finished:
                    raise RuntimeError("ASGI: http.response.body sent after the response ended")
                more = bool(message.get("more_body", False))
                body = message.get("body", b"")
                if not isinstance(body, (bytes, bytearray, memoryview)):
                    raise TypeError(
                        "ASGI: http.response.body's body must be bytes, not %s" % type(body).__name__
                    )
                if not more:
                    finished = True
                # None when the bytes fit in the connection's window; else a future that
                # resolves once they are written (backpressure for a slow client).
                fut = conn.body(bytes(body), more)
                if fut is not None:
                    await fut
            elif kind == "http.response.pathsend":
                if not started:
                    raise RuntimeError("ASGI: http.response.pathsend sent before http.response.start")
                if finished:
                    raise RuntimeError("ASGI: http.response.pathsend sent after the response ended")
                conn.pathsend(os.fspath(message["path"]))
                finished = True
            else:
                raise RuntimeError("ASGI: unexpected message type %r in an http scope" % (kind,))

        try:
            await app(scope, receive, send)
        except BaseException as e:  # the app's failure, or the task cancelled at shutdown
            if conn.gone() and isinstance(e, Exception):
                # The client left and the app stopped on it (send() raised OSError, which
                # Starlette turns into ClientDisconnect): not an application error.
                conn.finish(started, None, "%s: %s" % (type(e).__name__, e))
            else:
                conn.finish(started, "".join(traceback.format_exception(type(e), e, e.__traceback__)))
            if not isinstance(e, Exception):
                raise
            return
        if finished:
            conn.finish(True, None)
        elif started:
            conn.finish(True, "the application returned before the response body was complete")
        else:
            conn.finish(False, "the application returned without sending a response")

    loop.add_reader(bridge.fileno(), wake)

    async def main():
        try:
            if mode == "off":
                bridge.lifespan("startup", True, "off")
                await stop.wait()
                bridge.lifespan("shutdown", True, "off")
            else:
                await lifespan(stop)
        finally:
            loop.remove_reader(bridge.fileno())
            loop.stop()

    async def lifespan(events):
        """Runs the lifespan protocol: startup now; shutdown when `events` says so.

        Reports to Rust through `bridge.lifespan(stage, ok, message)`."""
        to_app = asyncio.Queue()
        outcome = {}
        waiter = {"fut": loop.create_future()}

        async def receive():
            return await to_app.get()

        async def send(message):
            kind = message["type"]
            outcome[kind] = message.get("message", "")
            if not waiter["fut"].done():
                waiter["fut"].set_result(kind)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": state}
        task = loop.create_task(app(scope, receive, send))

        def task_done(t):
            if not waiter["fut"].done():
                exc = None if t.cancelled() else t.exception()
                waiter["fut"].set_result(("raised", exc))

        task.add_done_callback(task_done)
        await to_app.put({"type": "lifespan.startup"})
        got = await waiter["fut"]
        if isinstance(got, tuple):
            exc = got[1]
            if mode == "on":
                bridge.lifespan("startup", False, "the application does not support lifespan: %s"
                                % ("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                                   if exc else "it returned at once"))
                return
            _log.info("lifespan not supported by the application (--lifespan auto): %r", exc)
            bridge.lifespan("startup", True, "unsupported")
            await events.wait()
            bridge.lifespan("shutdown", True, "unsupported")
            return
        if got == "lifespan.startup.failed":
            bridge.lifespan("startup", False, outcome.get(got) or "lifespan.startup.failed")
            return
        bridge.lifespan("startup", True, "")
        await events.wait()
        waiter["fut"] = loop.create_future()
        await to_app.put({"type": "lifespan.shutdown"})
        got = await waiter["fut"]
        if isinstance(got, tuple):
            exc = got[1]
            bridge.lifespan("shutdown", exc is None, "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc else "")
        elif got == "lifespan.shutdown.failed":
            bridge.lifespan("shutdown", False, outcome.get(got) or "lifespan.shutdown.failed")
        else:
            bridge.lifespan("shutdown", True, "")

    loop.create_task(main())
