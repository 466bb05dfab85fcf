#!/usr/bin/env python3
"""Resource use of pyfcgi: memory, big bodies, cold start, allocations and instructions.

Run through scripts/bench/resources, which builds the binary and installs what is missing.
Measurements (select with --only):

  rss    RSS per process at idle and under `pyfcgi bench -c 64` load, bench/hello.py with one
         worker thread, for pyfcgi and uWSGI (--fastcgi-socket --processes 1). Read from
         /proc/PID/status of the server's whole process tree: VmRSS, RssAnon, VmHWM.
  big    a 1 GiB upload (POST to bench/transfer.py:upload, which reads wsgi.input in 64 KiB
         pieces and answers size and sha256) and a 1 GiB download (bench/transfer.py:download,
         64 KiB x 16384 chunks), driven by `pyfcgi request`; wall time and the server's VmHWM.
  cold   time from spawning `pyfcgi serve` to the first complete response, against
         `python -c "import MODULE"` with the same interpreter and venv (medians).
  alloc  heap allocations and bytes per request under valgrind --tool=dhat.
  instr  user-space instructions per request under valgrind --tool=callgrind.

alloc and instr serve N1 and then N2 requests (one keep-alive connection) in two separate
server runs and report (run2 - run1) / (N2 - N1): start-up, the readiness probe and shutdown
cancel out. Progress goes to stderr; a Markdown summary to stdout; everything to --json.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from procfs import proc_tree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = b"Hello, World!"
MIB = 1 << 20
ALL = ("rss", "big", "cold", "alloc", "instr")


class BenchError(Exception):
    """A measurement could not be taken; the message says what to look at."""


def log(msg):
    print(f"resources: {msg}", file=sys.stderr, flush=True)


# --- /proc -------------------------------------------------------------------------------------


def proc_status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile of one process, in KiB (empty if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def tree_memory(pid):
    """Per-process memory of the tree, and the sums."""
    procs = {p: s for p in proc_tree(pid) if (s := proc_status(p))}
    total = {k: sum(s.get(k, 0) for s in procs.values()) for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
    return {"processes": len(procs), "per_process": procs, "total_kib": total}


class RssSampler:
    """Samples the tree's summed VmRSS every `interval` seconds in a thread; keeps the maximum."""

    def __init__(self, pid, interval=0.02):
        self.pid, self.interval, self.max_kib, self.samples = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss = sum(proc_status(p).get("VmRSS", 0) for p in proc_tree(self.pid))
            self.max_kib = max(self.max_kib, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- a minimal FastCGI client (readiness probes and cold-start timing) -------------------------


def _record(rtype, content=b"", request_id=1):
    pad = -len(content) % 8
    return struct.pack(">BBHHBB", 1, rtype, request_id, len(content), pad, 0) + content + bytes(pad)


def _pair(name, value):
    def length(n):
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)

    return length(len(name)) + length(len(value)) + name + value


def fcgi_request_bytes(path="/"):
    """One GET request (FCGI_BEGIN_REQUEST, PARAMS, empty STDIN), connection not kept."""
    path, _, query = path.partition("?")
    params = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "REQUEST_URI": path + ("?" + query if query else ""), "SERVER_NAME": "localhost",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "GATEWAY_INTERFACE": "CGI/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "HTTP_HOST": "localhost",
    }
    body = b"".join(_pair(k.encode(), v.encode()) for k, v in params.items())
    return (_record(1, struct.pack(">HB5x", 1, 0)) + _record(4, body) + _record(4)
            + _record(5))


def fcgi_exchange(sock, request):
    """Sends `request` on a connected socket; returns (status, body) of the response."""
    sock.sendall(request)
    buf, stdout = b"", b""
    while True:
        while len(buf) >= 8:
            _, rtype, _, clen, pad, _ = struct.unpack(">BBHHBB", buf[:8])
            if len(buf) < 8 + clen + pad:
                break
            content, buf = buf[8:8 + clen], buf[8 + clen + pad:]
            if rtype == 6:
                stdout += content
            elif rtype == 3:
                head, _, body = stdout.partition(b"\r\n\r\n")
                status = 200
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"status:"):
                        status = int(line.split(b":", 1)[1].split()[0])
                return status, body
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the responder closed the connection before FCGI_END_REQUEST")
        buf += data


def probe(sock_path, path="/", timeout=5.0):
    """One request; (status, body) or None when nothing listens yet."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    try:
        return fcgi_exchange(s, fcgi_request_bytes(path))
    finally:
        s.close()


# --- servers -----------------------------------------------------------------------------------


class Server:
    """A server process in its own session, stopped with SIGTERM (graceful in pyfcgi)."""

    def __init__(self, name, cmd, sock, work, env=None):
        self.name, self.cmd, self.sock = name, cmd, sock
        self.log_path = os.path.join(work, f"{name}.log")
        if os.path.exists(sock):
            os.unlink(sock)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "ab"), start_new_session=True,
                                     env=env)

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, path="/", timeout=30.0, expect=None):
        """Polls with real FastCGI requests until one is answered 200."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with code {self.proc.returncode} before answering; "
                                 f"its log ({self.log_path}):\n{self.log_tail()}")
            try:
                r = probe(self.sock, path, timeout=max(1.0, end - time.monotonic()))
            except OSError:
                r = None
            if r is not None:
                status, body = r
                if status != 200 or (expect is not None and body != expect):
                    raise BenchError(f"{self.name}: GET {path} answered {status} {body[:200]!r}; "
                                     f"its log:\n{self.log_tail()}")
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer on {self.sock} within {timeout:.0f} s "
                         f"(command: {' '.join(self.cmd)}); its log:\n{self.log_tail()}")

    def stop(self, timeout=30.0):
        """SIGTERM, wait; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def taskset(cpu):
    return ["taskset", "-c", cpu] if cpu is not None and shutil.which("taskset") else []


def venv_flag(args):
    return ["--venv", args.venv] if args.venv else []


def hello_cmd(args, name, sock):
    app = os.path.join(ROOT, "bench", "hello.py")
    if name == "pyfcgi":
        return [args.pyfcgi, "serve", f"{app}:app", "--threads", "1", "--bind", f"unix:{sock}",
                "--log-level", "warn"] + venv_flag(args)
    if name == "uwsgi":
        return [args.uwsgi, "--fastcgi-socket", sock, "--wsgi-file", app, "--callable", "app",
                "--processes", "1", "--disable-logging", "--die-on-term", "--listen", "1024"]
    raise ValueError(name)


def run_bench(args, sock, extra, cpu=None, timeout=None):
    """`pyfcgi bench --json` against sock; returns the parsed report."""
    cmd = taskset(cpu) + [args.pyfcgi, "bench", "--connect", f"unix:{sock}", "--json",
                          "--expect-body", HELLO.decode()] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"`{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip()}") from None
    if report.get("error_total"):
        raise BenchError(f"`{' '.join(cmd)}` saw errors: {report.get('errors')}")
    return report


# --- rss ---------------------------------------------------------------------------------------


def measure_rss(args, work):
    servers = ["pyfcgi"] + (["uwsgi"] if args.uwsgi else [])
    if not args.uwsgi:
        log("rss: no uWSGI (--uwsgi not given); measuring pyfcgi only")
    results = {}
    for name in servers:
        sock = os.path.join(work, f"rss-{name}.sock")
        srv = Server(f"rss-{name}", taskset(args.server_cpu) + hello_cmd(args, name, sock), sock, work)
        try:
            srv.wait_ready(expect=HELLO)
            time.sleep(args.settle)
            idle = tree_memory(srv.pid)
            extra = ["-c", "64", "-d", str(args.load_seconds)]
            if name == "uwsgi":
                extra.append("--no-keep-conn")  # uWSGI closes after every response anyway
            log(f"rss: {name}: idle {idle['total_kib']['VmRSS'] / 1024:.1f} MiB in {idle['processes']} "
                f"process(es); {args.load_seconds} s of `pyfcgi bench -c 64`")
            with RssSampler(srv.pid) as sampler:
                report = run_bench(args, sock, extra, cpu=args.load_cpu)
            loaded = tree_memory(srv.pid)
            time.sleep(args.settle)
            after = tree_memory(srv.pid)
        finally:
            srv.stop()
        results[name] = {
            "processes": idle["processes"],
            "idle_rss_kib": idle["total_kib"]["VmRSS"],
            "idle_anon_kib": idle["total_kib"]["RssAnon"],
            "idle_file_kib": idle["total_kib"]["RssFile"],
            "idle_rss_per_process_kib": idle["total_kib"]["VmRSS"] / max(idle["processes"], 1),
            "load_rss_max_sampled_kib": sampler.max_kib,
            "load_hwm_kib": loaded["total_kib"]["VmHWM"],
            "after_load_rss_kib": after["total_kib"]["VmRSS"],
            "load_rps": report["throughput_rps"],
            "load_requests": report["ok"],
        }
        r = results[name]
        log(f"rss: {name}: under load max {r['load_rss_max_sampled_kib'] / 1024:.1f} MiB, VmHWM "
            f"{r['load_hwm_kib'] / 1024:.1f} MiB at {r['load_rps']:.0f} req/s; after {r['after_load_rss_kib'] / 1024:.1f} MiB")
    return results


# --- big bodies --------------------------------------------------------------------------------


def run_client(cmd, stdout_sink=None):
    """Runs cmd; returns (exit code, stdout bytes or counted length, seconds, peak RSS KiB).

    With stdout_sink="count", stdout is read and only counted (no copy kept)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    t.start()
    if stdout_sink == "count":
        out = 0
        while chunk := p.stdout.read1(1 << 20):
            out += len(chunk)
    else:
        out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    t.join()
    return p.returncode, out, seconds, usage.ru_maxrss, (err[0] if err else b"").decode(errors="replace")


def make_body_file(path, size):
    """Writes `size` bytes (a random 1 MiB block, repeated) and returns their sha256."""
    block = os.urandom(min(MIB, size))
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            piece = block[:min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def measure_big(args, work):
    size = args.big_bytes
    app = os.path.join(ROOT, "bench", "transfer.py")
    results = {"bytes": size}
    body_path = os.path.join(work, "upload.bin")
    log(f"big: writing a {size / MIB:.0f} MiB request body to {body_path}")
    want = make_body_file(body_path, size)
    try:
        for kind in ("upload", "download"):
            sock = os.path.join(work, f"big-{kind}.sock")
            cmd = taskset(args.server_cpu) + [args.pyfcgi, "serve", f"{app}:{kind}", "--threads", "1",
                                              "--bind", f"unix:{sock}", "--log-level", "warn"] + venv_flag(args)
            srv = Server(f"big-{kind}", cmd, sock, work)
            try:
                srv.wait_ready(path="/?bytes=13" if kind == "download" else "/")
                before = tree_memory(srv.pid)["total_kib"]
                client = taskset(args.load_cpu) + [args.pyfcgi, "request", "--connect", f"unix:{sock}", "-s",
                                                   "--timeout", "600"]
                log(f"big: {kind} of {size / MIB:.0f} MiB")
                with RssSampler(srv.pid, interval=0.05) as sampler:
                    if kind == "upload":
                        code, out, secs, client_kib, err = run_client(client + ["--data-binary", f"@{body_path}", "/"])
                    else:
                        code, out, secs, client_kib, err = run_client(client + [f"/?bytes={size}"], "count")
                peak = tree_memory(srv.pid)["total_kib"]
            finally:
                srv.stop()
            if code != 0:
                raise BenchError(f"big {kind}: `pyfcgi request` exited {code}: {err.strip()}\n"
                                 f"server log:\n{srv.log_tail()}")
            app_hash_s = None
            if kind == "upload":
                fields = dict(f.split("=", 1) for f in out.decode(errors="replace").split() if "=" in f)
                if fields.get("bytes") != str(size) or fields.get("sha256") != want:
                    raise BenchError(f"big upload: the app answered {out[:200]!r}, "
                                     f"expected bytes={size} sha256={want}")
                app_hash_s = float(fields.get("hash_s", "nan"))
            elif out != size:
                raise BenchError(f"big download: got {out} bytes, expected {size}")
            results[kind] = {
                "seconds": secs,
                "mib_per_s": size / MIB / secs,
                "server_rss_before_kib": before["VmRSS"],
                "server_hwm_kib": peak["VmHWM"],
                "server_rss_max_sampled_kib": sampler.max_kib,
                "client_peak_rss_kib": client_kib,
                "app_hash_seconds": app_hash_s,
            }
            r = results[kind]
            log(f"big: {kind}: {secs:.2f} s ({r['mib_per_s']:.0f} MiB/s), server VmHWM {r['server_hwm_kib'] / 1024:.1f} MiB "
                f"(was {r['server_rss_before_kib'] / 1024:.1f} MiB before)")
    finally:
        os.unlink(body_path)
    return results


# --- cold start --------------------------------------------------------------------------------


def time_first_response(cmd, sock, path, expect_status=200, timeout=30.0, env=None, cwd=None):
    """Seconds from spawning cmd to the first complete FastCGI response on sock.

    Polls connect() every ~0.2 ms while nothing listens, so the polling adds at most that."""
    if os.path.exists(sock):
        os.unlink(sock)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True, env=env, cwd=cwd)
    request = fcgi_request_bytes(path)
    try:
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if p.poll() is not None:
                    raise BenchError(f"`{' '.join(cmd)}` exited {p.returncode} before listening: "
                                     f"{p.stderr.read().decode(errors='replace')[-2000:]}")
                if time.perf_counter() - t0 > timeout:
                    raise BenchError(f"`{' '.join(cmd)}` did not listen on {sock} within {timeout:.0f} s")
                time.sleep(0.0002)
                continue
            try:
                s.settimeout(timeout)
                status, body = fcgi_exchange(s, request)
            finally:
                s.close()
            elapsed = time.perf_counter() - t0
            if status != expect_status:
                raise BenchError(f"`{' '.join(cmd)}`: first response was {status} {body[:200]!r}")
            return elapsed
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        p.stderr.close()


def time_command(cmd, cwd=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` (in {cwd}) failed: {p.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


NO_TEARDOWN = "import {}; import os; os._exit(0)"


def measure_cold(args, work):
    sock = os.path.join(work, "cold.sock")
    py = args.python
    hello_dir = os.path.join(ROOT, "bench")
    cases = {
        # name: ("cmd", command, cwd) timed to exit, or ("serve", command, request path)
        # timed to the first response
        "python_startup": ("cmd", [py, "-c", "pass"], hello_dir),
        "import_hello": ("cmd", [py, "-c", "import hello"], hello_dir),
        # Without the interpreter's teardown, which pyfcgi's first response does not include
        # either: the baseline the target is checked against (the stricter one).
        "import_hello_noexit": ("cmd", [py, "-c", NO_TEARDOWN.format("hello")], hello_dir),
        "pyfcgi_hello": ("serve", [args.pyfcgi, "serve", os.path.join(hello_dir, "hello.py") + ":app",
                                   "--threads", "1", "--bind", f"unix:{sock}", "--log-level", "warn"] + venv_flag(args), "/"),
        "pyfcgi_builtin": ("serve", [args.pyfcgi, "serve", "--builtin", "hello", "--bind", f"unix:{sock}",
                                     "--log-level", "warn"], "/"),
    }
    base_py = os.path.realpath(py)
    if args.venv:
        # Diagnostic: the base interpreter outside the venv, which runs its site-packages'
        # .pth files; pyfcgi's embedded interpreter does too, before it applies the venv.
        cases["import_hello_base"] = ("cmd", [base_py, "-c", "import hello"], hello_dir)
    if args.flask:
        flask_dir = os.path.join(ROOT, "examples", "flask_app")
        cases["import_flask"] = ("cmd", [py, "-c", "import app"], flask_dir)
        cases["import_flask_noexit"] = ("cmd", [py, "-c", NO_TEARDOWN.format("app")], flask_dir)
        cases["pyfcgi_flask"] = ("serve", [args.pyfcgi, "serve", os.path.join(flask_dir, "app.py") + ":app",
                                           "--threads", "1", "--bind", f"unix:{sock}", "--log-level", "warn"]
                                 + venv_flag(args), "/hello")
    else:
        log("cold: Flask example skipped (smoke, or no --venv); bench/hello.py only")

    def once(case):
        kind, cmd, where = cases[case]
        if kind == "cmd":
            return time_command(cmd, cwd=where)
        return time_first_response(cmd, sock, where)

    times = {c: [] for c in cases}
    for c in cases:  # warm the page cache and __pycache__
        once(c)
    log(f"cold: {args.cold_reps} interleaved repetitions of {', '.join(cases)}")
    for _ in range(args.cold_reps):
        for c in cases:
            times[c].append(once(c))
    results = {c: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3,
                   "max_ms": max(t) * 1e3, "runs_ms": [round(x * 1e3, 2) for x in t]}
               for c, t in times.items()}
    for c, r in results.items():
        log(f"cold: {c}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})")
    results["python"] = py
    results["reps"] = args.cold_reps
    return results


# --- valgrind ----------------------------------------------------------------------------------

VALGRIND_CASES = {
    "builtin": ["--builtin", "hello"],
    "wsgi": [os.path.join(ROOT, "bench", "hello.py") + ":app", "--threads", "1"],
}


def read_maps(pid):
    """[(start, end, path)] of the file mappings of pid (under valgrind: the guest's)."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, parts[5].strip()))
    return out


def object_category(path, binary):
    """pyfcgi (our Rust code and its statically linked crates), cpython, libc or other."""
    if not path:
        return "other"
    if os.path.realpath(path) == binary or path.endswith("/pyfcgi"):
        return "pyfcgi"
    base = os.path.basename(path)
    if base.startswith("libpython") or ".cpython-" in base:
        return "cpython"
    if base.startswith("libc.so") or base.startswith("libc-"):
        return "libc"
    return "other"


def parse_callgrind(path, binary):
    """Total Ir and self Ir per object category, from a callgrind.out file."""
    names, per_object, total = {}, {}, None
    npos, current, skip_next = 1, None, False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("positions:"):
                npos = len(line.split()[1:])
            elif line.startswith("totals:"):
                total = int(line.split()[1])
            elif line.startswith(("ob=", "cob=")):
                # Compressed names "(id) path" are defined at first use, by ob= or cob= alike.
                ref = line.split("=", 1)[1].strip()
                if ref.startswith("("):
                    key, _, name = ref[1:].partition(")")
                    name = name.strip()
                    if name:
                        names[key] = name
                    ref = names.get(key, "")
                if line.startswith("ob="):
                    current = ref
            elif line.startswith("calls="):
                skip_next = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                fields = line.split()
                if len(fields) > npos:
                    per_object[current] = per_object.get(current, 0) + int(fields[npos])
    if total is None:
        raise BenchError(f"{path} has no totals: line (did valgrind finish?)")
    cats = {"pyfcgi": 0, "cpython": 0, "libc": 0, "other": 0}
    for obj, ir in per_object.items():
        cats[object_category(obj, binary)] += ir
    return {"total": total, "by_object": cats, "self_sum": sum(per_object.values())}


ALLOC_FNS = ("malloc", "calloc", "realloc", "memalign", "posix_memalign", "aligned_alloc", "operator new")


def parse_dhat(path, maps, binary):
    """Total blocks and bytes, split by who called the allocator (Rust code or libpython)."""
    with open(path) as f:
        data = json.load(f)
    ftbl = data["ftbl"]

    def frame_category(i):
        text = ftbl[i]
        try:
            addr = int(text.split(":", 1)[0], 16)
        except ValueError:
            return None
        for lo, hi, p in maps:
            if lo <= addr < hi:
                return object_category(p, binary)
        return None

    cats = {k: {"blocks": 0, "bytes": 0} for k in ("pyfcgi", "cpython", "other")}
    blocks = nbytes = 0
    for pp in data["pps"]:
        blocks += pp["tbk"]
        nbytes += pp["tb"]
        who = "other"
        for i in pp["fs"]:
            c = frame_category(i)
            if c in ("pyfcgi", "cpython"):
                who = c
                break
        cats[who]["blocks"] += pp["tbk"]
        cats[who]["bytes"] += pp["tb"]
    return {"blocks": blocks, "bytes": nbytes, "by_caller": cats}


def valgrind_run(args, work, tool, case, n):
    sock = os.path.join(work, f"vg-{tool}-{case}-{n}.sock")
    out = os.path.join(work, f"vg-{tool}-{case}-{n}.out")
    vlog = os.path.join(work, f"vg-{tool}-{case}-{n}.log")
    out_flag = {"dhat": "--dhat-out-file", "callgrind": "--callgrind-out-file"}[tool]
    cmd = ["valgrind", f"--tool={tool}", f"{out_flag}={out}", f"--log-file={vlog}", args.pyfcgi, "serve",
           *VALGRIND_CASES[case], "--bind", f"unix:{sock}", "--log-level", "warn"]
    srv = Server(f"vg-{tool}-{case}-{n}", cmd, sock, work)
    t0 = time.monotonic()
    try:
        srv.wait_ready(expect=HELLO, timeout=300)
        report = run_bench(args, sock, ["-c", str(args.valgrind_conns), "-n", str(n), "--timeout", "120"],
                           timeout=3600)
        maps = read_maps(srv.pid) if tool == "dhat" else None
    except BaseException:
        srv.stop(timeout=120)
        raise
    code = srv.stop(timeout=600)
    if code != 0 or not os.path.exists(out):
        raise BenchError(f"valgrind --tool={tool} {case}: exit {code}, output {out} "
                         f"{'present' if os.path.exists(out) else 'missing'}; see {vlog} and {srv.log_path}")
    binary = os.path.realpath(args.pyfcgi)
    parsed = parse_dhat(out, maps, binary) if tool == "dhat" else parse_callgrind(out, binary)
    log(f"{tool}: {case} x {n}: {time.monotonic() - t0:.0f} s, {report['throughput_rps']:.0f} req/s under valgrind")
    return parsed


def measure_valgrind(args, work, tool):
    n1, n2 = args.requests
    results = {"n1": n1, "n2": n2, "connections": args.valgrind_conns}
    for case in VALGRIND_CASES:
        a = valgrind_run(args, work, tool, case, n1)
        b = valgrind_run(args, work, tool, case, n2)
        d = n2 - n1
        if tool == "callgrind":
            results[case] = {
                "instructions_per_request": (b["total"] - a["total"]) / d,
                "by_object_per_request": {k: (b["by_object"][k] - a["by_object"][k]) / d for k in a["by_object"]},
                "totals": [a["total"], b["total"]],
            }
            log(f"instr: {case}: {results[case]['instructions_per_request']:.0f} instructions/request")
        else:
            results[case] = {
                "allocations_per_request": (b["blocks"] - a["blocks"]) / d,
                "bytes_per_request": (b["bytes"] - a["bytes"]) / d,
                "by_caller_per_request": {k: {m: (b["by_caller"][k][m] - a["by_caller"][k][m]) / d
                                              for m in ("blocks", "bytes")} for k in a["by_caller"]},
                "totals": [[a["blocks"], a["bytes"]], [b["blocks"], b["bytes"]]],
            }
            log(f"alloc: {case}: {results[case]['allocations_per_request']:.2f} allocations, "
                f"{results[case]['bytes_per_request']:.0f} bytes per request")
    results["pythonmalloc"] = os.environ.get("PYTHONMALLOC", "")
    return results


# --- report ------------------------------------------------------------------------------------


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def fmt_int(x):
    return f"{x:,.0f}".replace(",", " ")


def markdown(res, args):
    out = []
    if "rss" in res:
        out += ["| server (bench/hello.py, 1 thread) | processes | idle RSS | idle RssAnon | RSS under load "
                "(max sampled / VmHWM) | RSS after load | load |", "|---|---|---|---|---|---|---|"]
        for name, r in res["rss"].items():
            label = {"pyfcgi": "pyfcgi `--threads 1`", "uwsgi": "uWSGI `--processes 1`"}[name]
            out.append(f"| {label} | {r['processes']} | {mib(r['idle_rss_kib'])} | {mib(r['idle_anon_kib'])} | "
                       f"{mib(r['load_rss_max_sampled_kib'])} / {mib(r['load_hwm_kib'])} | "
                       f"{mib(r['after_load_rss_kib'])} | {fmt_int(r['load_rps'])} req/s |")
        out.append("")
    if "big" in res:
        b = res["big"]
        out += [f"| {b['bytes'] / MIB:.0f} MiB through pyfcgi | time | throughput | pyfcgi RSS before | "
                "pyfcgi peak (VmHWM) | client peak RSS |", "|---|---|---|---|---|---|"]
        for kind in ("upload", "download"):
            r = b[kind]
            secs = f"{r['seconds']:.2f} s"
            if r.get("app_hash_seconds") is not None:
                secs += f" (the app's SHA-256: {r['app_hash_seconds']:.2f} s)"
            out.append(f"| {kind} | {secs} | {r['mib_per_s']:.0f} MiB/s | {mib(r['server_rss_before_kib'])} | "
                       f"**{mib(r['server_hwm_kib'])}** | {mib(r['client_peak_rss_kib'])} |")
        out.append("")
    if "cold" in res:
        c = res["cold"]
        rows = [("python_startup", "`python -c pass`"), ("import_hello", "`python -c \"import hello\"` (bench/)"),
                ("import_hello_noexit", "`python -c \"import hello; import os; os._exit(0)\"` (no teardown)"),
                ("import_hello_base", "`python -c \"import hello\"` with the venv's base interpreter"),
                ("pyfcgi_hello", "pyfcgi `bench/hello.py:app`: spawn → first response"),
                ("import_flask", "`python -c \"import app\"` (examples/flask_app)"),
                ("import_flask_noexit", "`python -c \"import app; import os; os._exit(0)\"` (no teardown)"),
                ("pyfcgi_flask", "pyfcgi Flask example: spawn → first response (`/hello`)"),
                ("pyfcgi_builtin", "pyfcgi `--builtin hello`: spawn → first response")]
        out += [f"| cold start ({c['reps']} runs) | median | min |", "|---|---|---|"]
        for key, label in rows:
            if key in c:
                out.append(f"| {label} | {c[key]['median_ms']:.1f} ms | {c[key]['min_ms']:.1f} ms |")
        for app, imp in (("pyfcgi_hello", "import_hello"), ("pyfcgi_flask", "import_flask")):
            if app in c and imp in c:
                over = c[app]["median_ms"] - c[imp + "_noexit"]["median_ms"]
                over_exit = c[app]["median_ms"] - c[imp]["median_ms"]
                out.append(f"| **{app.split('_')[1]}: pyfcgi minus import** (no teardown; target ≤ 20 ms) "
                           f"| **{over:+.1f} ms** | (minus plain `import`: {over_exit:+.1f} ms) |")
        out.append("")
    if "instr" in res or "alloc" in res:
        out += ["| per request (one connection) | instructions | in pyfcgi (Rust) | in libpython | in libc | other "
                "| heap allocations | bytes allocated | allocations by Rust / by libpython |",
                "|---|---|---|---|---|---|---|---|---|"]
        for case, label in (("builtin", "`--builtin hello`"), ("wsgi", "WSGI `bench/hello.py`")):
            cells = [label]
            if "instr" in res:
                r = res["instr"][case]
                o = r["by_object_per_request"]
                cells += [fmt_int(r["instructions_per_request"]), fmt_int(o["pyfcgi"]), fmt_int(o["cpython"]),
                          fmt_int(o["libc"]), fmt_int(o["other"])]
            else:
                cells += ["–"] * 5
            if "alloc" in res:
                r = res["alloc"][case]
                by = r["by_caller_per_request"]
                cells += [f"{r['allocations_per_request']:.1f}", fmt_int(r["bytes_per_request"]),
                          f"{by['pyfcgi']['blocks']:.1f} / {by['cpython']['blocks']:.1f}"]
            else:
                cells += ["–"] * 3
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        if "alloc" in res and res["alloc"]["pythonmalloc"]:
            out += [f"(PYTHONMALLOC={res['alloc']['pythonmalloc']}: CPython's allocations all go through malloc.)", ""]
        if "instr" in res:
            i = res["instr"]
            out.append(f"instructions per request: builtin {fmt_int(i['builtin']['instructions_per_request'])}, "
                       f"WSGI hello {fmt_int(i['wsgi']['instructions_per_request'])} "
                       f"(callgrind, ({i['n2']} − {i['n1']} requests) difference)")
            out.append("")
    out.append(machine_line(args))
    return "\n".join(out)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_line(args):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    built = os.environ.get("PYFCGI_BUILT_FROM")
    line = (f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}, Python {args.python_version}; "
            f"{args.pyfcgi_version} ({f'built from {built}' if built else args.pyfcgi}).")
    if getattr(args, "loadavg", None):
        # Other work on the machine skews the timings (cold start, transfer times), not the
        # memory or instruction counts.
        line += f" Load average before/after: {args.loadavg[0]:.1f} / {args.loadavg[1]:.1f}."
    return line


# --- targets -----------------------------------------------------------------------------------


def check_targets(res):
    """[(target, met, detail)] for what was measured."""
    out = []
    if "rss" in res and "uwsgi" in res["rss"]:
        p, u = res["rss"]["pyfcgi"]["idle_rss_per_process_kib"], res["rss"]["uwsgi"]["idle_rss_per_process_kib"]
        out.append(("idle RSS per process ≤ uWSGI's", p <= u, f"{mib(p)} vs {mib(u)}"))
    if "big" in res:
        for kind in ("upload", "download"):
            h = res["big"][kind]["server_hwm_kib"]
            out.append((f"{kind} peak RSS < 64 MiB", h < 64 * 1024, mib(h)))
    if "cold" in res:
        c = res["cold"]
        for app, imp in (("pyfcgi_flask", "import_flask"), ("pyfcgi_hello", "import_hello")):
            if app in c:
                over = c[app]["median_ms"] - c[imp + "_noexit"]["median_ms"]
                out.append((f"{app} cold start ≤ import + 20 ms", over <= 20,
                            f"{over:+.1f} ms over import without teardown"))
    return out


# --- main --------------------------------------------------------------------------------------


def size_arg(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1g, 8m, 4096)") from None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pyfcgi", default=os.path.join(ROOT, "target", "release", "pyfcgi"))
    ap.add_argument("--uwsgi", help="uwsgi executable (rss comparison); without it pyfcgi only")
    ap.add_argument("--venv", help="venv with Flask (cold start of examples/flask_app); its python is used for the import baselines")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--smoke", action="store_true",
                    help="quick CI run (about 4 s): rss of pyfcgi only with 1 s of load, an 8 MiB upload and "
                         "download, cold start of bench/hello.py x 3; no valgrind")
    ap.add_argument("--check", action="store_true", help="exit 3 when a measured target is missed")
    ap.add_argument("--big-size", type=size_arg, default=1 << 30, help="upload/download size (default 1g)")
    ap.add_argument("--load-seconds", type=int, default=5)
    ap.add_argument("--cold-reps", type=int, default=15)
    ap.add_argument("--requests", default="2000,12000", help="N1,N2 requests for alloc/instr")
    ap.add_argument("--valgrind-conns", type=int, default=1)
    ap.add_argument("--json", help="where to write the results (default target/bench/resources.json, "
                                    "resources-smoke.json with --smoke)")
    ap.add_argument("--load-cpu", default="0" if (os.cpu_count() or 1) > 1 else None)
    ap.add_argument("--server-cpu", default="1" if (os.cpu_count() or 1) > 1 else None)
    args = ap.parse_args()

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ALL]
    if unknown:
        ap.error(f"--only: unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    try:
        args.requests = tuple(int(x) for x in args.requests.split(","))
        if len(args.requests) != 2 or not 0 < args.requests[0] < args.requests[1]:
            raise ValueError
    except ValueError:
        ap.error("--requests takes N1,N2 with 0 < N1 < N2, e.g. 2000,12000")
    args.settle = 1.0
    if args.smoke:
        only = [x for x in only if x in ("rss", "big", "cold")]
        args.uwsgi = None
        args.big_size = min(args.big_size, 8 * MIB)
        args.load_seconds, args.cold_reps, args.settle = 1, 3, 0.3
    args.big_bytes = args.big_size
    if not args.json:
        args.json = os.path.join(ROOT, "target", "bench", "resources-smoke.json" if args.smoke else "resources.json")
    args.pyfcgi = os.path.abspath(args.pyfcgi)
    if not os.access(args.pyfcgi, os.X_OK):
        ap.error(f"{args.pyfcgi} is not an executable; build it with `cargo build --release --locked`")
    if any(x in only for x in ("alloc", "instr")) and not shutil.which("valgrind"):
        ap.error("alloc and instr need valgrind (scripts/install-deps --bench installs it)")
    # The import baselines run the interpreter pyfcgi embeds, in the same venv pyfcgi is given.
    args.flask = False
    if args.venv:
        args.python = os.path.join(args.venv, "bin", "python")
        if not os.access(args.python, os.X_OK):
            ap.error(f"--venv {args.venv}: no bin/python there; create it with scripts/setup-python")
        has_flask = subprocess.run([args.python, "-c", "import flask"], capture_output=True).returncode == 0
        if not has_flask and not args.smoke and "cold" in only:
            ap.error(f"--venv {args.venv} has no Flask; create it with scripts/setup-python")
        args.flask = has_flask and not args.smoke
    else:
        args.python = os.path.realpath(sys.executable)
    args.python_version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                                         capture_output=True, text=True).stdout.strip()
    args.pyfcgi_version = subprocess.run([args.pyfcgi, "--version"], capture_output=True, text=True).stdout.strip()

    started = time.monotonic()
    args.loadavg = None
    load_before = loadavg()
    if load_before > 1.0:
        log(f"warning: load average {load_before:.1f} before starting: timings will be noisy")
    res = {}
    steps = {"rss": measure_rss, "big": measure_big, "cold": measure_cold,
             "alloc": lambda a, w: measure_valgrind(a, w, "dhat"),
             "instr": lambda a, w: measure_valgrind(a, w, "callgrind")}
    try:
        with tempfile.TemporaryDirectory(prefix="pyfcgi-resources-") as work:
            for name in ALL:
                if name in only:
                    t = time.monotonic()
                    res[name] = steps[name](args, work)
                    log(f"{name}: done in {time.monotonic() - t:.0f} s")
    except BenchError as e:
        log(f"error: {e}")
        return 1
    elapsed = time.monotonic() - started
    args.loadavg = (load_before, loadavg())
    targets = check_targets(res)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pyfcgi": args.pyfcgi, "pyfcgi_version": args.pyfcgi_version,
        "built_from": os.environ.get("PYFCGI_BUILT_FROM"), "python": args.python,
        "python_version": args.python_version, "machine": machine_line(args), "smoke": args.smoke,
        "seconds": round(elapsed, 1),
        "targets": [{"target": t, "met": m, "value": d} for t, m, d in targets],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, **res}, f, indent=2)
    print(markdown(res, args))
    for t, met, detail in targets:
        log(f"target {'met' if met else 'MISSED'}: {t} ({detail})")
    log(f"{'smoke ' if args.smoke else ''}run took {elapsed:.0f} s; results in {args.json}")
    if args.check and not all(m for _, m, _ in targets):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
