#!/usr/bin/env python3
"""The peer benchmark behind scripts/bench/run: pyfcgi against other FastCGI servers for Python,
a C libfcgi responder (the no-Python ceiling) and, for reference, two HTTP servers.

Scenarios (apps under bench/): hello (13 B), kib16 (16 KiB), post-1m (1 MiB POST echoed back),
stream (100 x 1 KiB chunks, no Content-Length), flask and django (hello-world views).

Paths:
  direct  FastCGI over a Unix socket, loaded by `pyfcgi bench -c 64` (wfastcgi: IIS-style,
          `pyfcgi bench --spawn-pool N`, the FastCGI stream on each process's stdin)
  nginx   wrk -t1 -c64 -> nginx -> the same Unix socket (not wfastcgi: nginx cannot spawn it)
  http    HTTP reference only: wrk -t1 -c64 straight to Granian or gunicorn, no nginx

Pinning (2 cores): the load generator and nginx on CPU 0, the server under test alone on CPU 1.
Per run: requests/s of good responses, the server's own CPU time per good response (utime +
stime of its whole process tree, from /proc, over the measuring window), p99 latency and
errors. Every run passes a correctness gate (status and body checked); a run that fails it is
reported as failed, with the reason, and is never ranked.
"""

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import apps  # noqa: E402  (bench/apps.py: the expected bodies)
from procfs import proc_tree  # noqa: E402  (scripts/bench/procfs.py)

HZ = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
POST_SIZE = 1 << 20
DEFAULT_VENV = "/tmp/pyfcgi-bench-venv"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Scenario:
    """One workload: the WSGI app (FILE:CALLABLE under bench/), the C responder's mode (None:
    no C version), whether it POSTs the 1 MiB body, and the body every response must carry."""

    def __init__(self, name, title, app, c_mode, expected, post=False, framework=False):
        self.name, self.title, self.app, self.c_mode = name, title, app, c_mode
        self.expected, self.post, self.framework = expected, post, framework

    def app_path(self):
        file, _, attr = self.app.partition(":")
        return os.path.join(BENCH, file), attr

    def module_attr(self):
        """The app as module:attr (bench/ on sys.path), for Granian, gunicorn and wfastcgi."""
        file, _, attr = self.app.partition(":")
        return os.path.splitext(file)[0], attr


def post_body():
    """1 MiB that is not one repeated byte, the same on every run."""
    block = bytes(range(256)) * 4
    return b"".join(i.to_bytes(4, "big") + block[4:] for i in range(POST_SIZE // len(block)))


SCENARIOS = {s.name: s for s in [
    Scenario("hello", "hello world (13 B)", "apps.py:hello", "hello", apps.HELLO),
    Scenario("kib16", "16 KiB response", "apps.py:kib16", "kib16", apps.KIB16),
    Scenario("post-1m", "1 MiB POST, echoed", "apps.py:echo", "echo", post_body(), post=True),
    Scenario("stream", "100 x 1 KiB streamed", "apps.py:stream", "stream", apps.STREAM_BODY),
    Scenario("flask", "Flask hello", "flask_app.py:app", None, apps.HELLO, framework=True),
    Scenario("django", "Django hello", "django_app.py:application", None, apps.HELLO,
             framework=True),
]}


class Server:
    """A peer. kind: fastcgi (a Unix socket), spawn (pyfcgi bench starts the processes: only the
    direct path) or http (a TCP port: only the http path). keep_conn: it serves many
    connections per worker, so clients keep connections open (FCGI_KEEP_CONN, nginx upstream
    keepalive); a peer that serves one connection at a time per worker gets a new connection
    for every request instead, otherwise 63 of 64 kept connections would wait forever."""

    def __init__(self, name, label, kind, keep_conn, needs_venv, note=""):
        self.name, self.label, self.kind = name, label, kind
        self.keep_conn, self.needs_venv, self.note = keep_conn, needs_venv, note

    def paths(self):
        return {"fastcgi": ("direct", "nginx"), "spawn": ("direct",), "http": ("http",)}[self.kind]

    def supports(self, scenario):
        return self.name != "c" or scenario.c_mode is not None


SERVERS = {s.name: s for s in [
    Server("pyfcgi", "pyfcgi", "fastcgi", True, False),
    Server("uwsgi", "uWSGI", "fastcgi", False, True,
           "`--fastcgi-socket`; closes after every request, whatever FCGI_KEEP_CONN says"),
    Server("flup-threaded", "flup (threaded)", "fastcgi", True, True,
           "flup.server.fcgi: a thread per connection, so as many threads as connections"),
    Server("flup-fork", "flup (forked)", "fastcgi", False, True,
           "flup.server.fcgi_fork: pre-forked processes, one connection each"),
    Server("wfastcgi", "wfastcgi", "spawn", True, True,
           "IIS-style: processes with the FastCGI stream on stdin (`pyfcgi bench --spawn-pool`)"),
    Server("pyfcgi-iis", "pyfcgi (IIS-style)", "spawn", True, False,
           "pyfcgi run as IIS runs it, like wfastcgi: `pyfcgi bench --spawn-pool N --iis -- "
           "pyfcgi serve`, the app from the Web.config"),
    Server("c", "C libfcgi", "fastcgi", False, False,
           "bench/c/responder.c: no Python, the ceiling; one connection at a time per thread"),
    Server("granian", "Granian (HTTP)", "http", True, True, "HTTP reference: `--interface wsgi`"),
    Server("gunicorn", "gunicorn (HTTP)", "http", True, True, "HTTP reference: gthread worker"),
]}
PATHS = ("direct", "nginx", "http")


# --- processes and /proc ---------------------------------------------------------------------

def cpu_ticks(pids, reaped=True):
    """utime + stime, in clock ticks, of the given processes (all their threads), plus with
    `reaped` what their children that exited and were waited for had used (cutime + cstime),
    so a worker process that ends inside the window still counts."""
    total = 0
    last = 14 if reaped else 12
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:last + 1])
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_ticks(pid):
    return cpu_ticks(proc_tree(pid))


def core_busy(cpu):
    """Busy clock ticks of one CPU (all but idle and iowait), from /proc/stat; None if `cpu` is
    not a single CPU number."""
    if not cpu.isdigit():
        return None
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:9]]
                return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return None


class Window:
    """The server's CPU time over a measuring window, and how busy its core was with anything
    else meanwhile (another build, another benchmark): the noise indicator of every run."""

    def __init__(self, pid, cpu):
        self.pid, self.cpu = pid, cpu
        self.pids = proc_tree(pid)
        self.ticks, self.core, self.wall = cpu_ticks(self.pids), core_busy(cpu), time.monotonic()

    def close(self):
        """Returns (server CPU seconds, % of the server's core used by other processes)."""
        pids = self.pids + [p for p in proc_tree(self.pid) if p not in self.pids]
        ticks, core, wall = cpu_ticks(pids), core_busy(self.cpu), time.monotonic()
        cpu_s = (ticks - self.ticks) / HZ
        foreign = None
        if core is not None and self.core is not None:
            foreign = max(0.0, (core - self.core) / HZ - cpu_s) / (wall - self.wall) * 100
        return cpu_s, foreign


PERF_EVENTS = ("instructions", "cycles", "cache-misses", "dTLB-load-misses", "iTLB-load-misses",
               "context-switches", "cpu-migrations", "page-faults", "task-clock")


def ctx_switches(pids):
    """(voluntary, non-voluntary) context switches of every thread of `pids`, from /proc."""
    vol = nonvol = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            nonvol += int(line.split()[1])
            except OSError:
                pass
    return vol, nonvol


class PerfStat:
    """`perf stat` attached to a server's processes over a measuring window, plus the
    voluntary and non-voluntary context switches of its threads from /proc. Counters the
    machine does not expose (hardware counters in most VMs) come back as None."""

    def __init__(self, pid):
        self.pids = proc_tree(pid)
        self.ctx = ctx_switches(self.pids)
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc = None
        if shutil.which("perf"):
            self.proc = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS),
                 "-p", ",".join(map(str, self.pids))],
                stdout=subprocess.DEVNULL, stderr=self.out)
            time.sleep(0.2)  # attached before the window opens

    def close(self, requests):
        """Per-request values: {event: count per request or None}."""
        vol, nonvol = ctx_switches(self.pids)
        result = {e: None for e in PERF_EVENTS}
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.out.seek(0)
            for line in self.out.read().splitlines():
                fields = line.split(",")
                if len(fields) < 3 or fields[2] not in result:
                    continue
                try:
                    result[fields[2]] = float(fields[0]) / max(requests, 1)
                except ValueError:
                    pass  # "<not supported>", "<not counted>"
        self.out.close()
        result["voluntary-switches"] = (vol - self.ctx[0]) / max(requests, 1)
        result["nonvoluntary-switches"] = (nonvol - self.ctx[1]) / max(requests, 1)
        return result


def log_tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in tail) or "    | (empty log)"


class PeerFailed(Exception):
    """The peer did not start, died, or cannot be measured; the message says why."""


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.venv_python = os.path.join(args.venv, "bin", "python")
        self.post_file = os.path.join(work, "post.bin")
        with open(self.post_file, "wb") as f:
            f.write(SCENARIOS["post-1m"].expected)
        self.expected_files = {}
        for s in SCENARIOS.values():
            path = os.path.join(work, f"expect-{s.name}.bin")
            with open(path, "wb") as f:
                f.write(s.expected)
            self.expected_files[s.name] = path
        self.wrk_post = os.path.join(work, "post.lua")
        with open(self.wrk_post, "w") as f:
            f.write(f'wrk.method = "POST"\n'
                    f'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                    f'local f = assert(io.open("{self.post_file}", "rb"))\n'
                    f'wrk.body = f:read("*a")\nf:close()\n')

    # --- starting and stopping peers ---

    def workers(self, server):
        if server.name == "flup-threaded":
            return max(self.args.workers, self.args.connections)
        return self.args.workers

    def command(self, server, scenario, where):
        a, n = self.args, self.workers(server)
        file, attr = scenario.app_path()
        module, _ = scenario.module_attr()
        venv_bin = os.path.join(a.venv, "bin")
        if server.name == "pyfcgi":
            cmd = [a.pyfcgi, "serve", f"{file}:{attr}", "--bind", f"unix:{where}",
                   "--threads", str(n), "--log-level", "warn"]
            return cmd + (["--venv", a.venv] if scenario.framework else [])
        if server.name == "uwsgi":
            cmd = [os.path.join(venv_bin, "uwsgi"), "--fastcgi-socket", where, "--wsgi-file", file,
                   "--callable", attr, "--virtualenv", a.venv, "--processes", "1",
                   "--disable-logging", "--die-on-term", "--listen", "1024"]
            return cmd + (["--threads", str(n)] if n > 1 else [])
        if server.name in ("flup-threaded", "flup-fork"):
            mode = server.name.split("-")[1]
            return [self.venv_python, os.path.join(BENCH, "flup_server.py"), mode,
                    f"{file}:{attr}", where, str(n)]
        if server.name == "c":
            return [self.args.responder, scenario.c_mode, where, str(n)]
        if server.name == "granian":
            return [os.path.join(venv_bin, "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                    "--port", str(where), "--workers", "1", "--runtime-threads", "1",
                    "--blocking-threads", str(n), "--no-access-log", "--log-level", "warning",
                    "--working-dir", BENCH, f"{module}:{attr}"]
        if server.name == "gunicorn":
            return [os.path.join(venv_bin, "gunicorn"), "--workers", "1", "--worker-class",
                    "gthread", "--threads", str(n), "--bind", f"127.0.0.1:{where}",
                    "--chdir", BENCH, "--log-level", "warning", f"{module}:{attr}"]
        raise PeerFailed(f"{server.name} has no server command")

    def start(self, server, scenario, tag):
        """Starts a socket or HTTP server pinned to the server CPU; returns (proc, where, log)."""
        if server.kind == "http":
            where = free_port()
        else:
            where = os.path.join(self.work, f"{tag}.sock")
            if os.path.exists(where):
                os.unlink(where)
        log_path = os.path.join(self.work, f"{tag}.log")
        cmd = ["taskset", "-c", self.args.server_cpu] + self.command(server, scenario, where)
        with open(log_path, "ab") as log_file:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=log_file, start_new_session=True, cwd=BENCH)
            except OSError as e:
                raise PeerFailed(f"cannot start {' '.join(cmd)}: {e}")
        deadline = time.monotonic() + self.args.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PeerFailed(f"exited with status {proc.returncode} while starting:\n"
                                 f"{log_tail(log_path)}")
            if can_connect(where):
                return proc, where, log_path
            time.sleep(0.05)
        stop(proc)
        raise PeerFailed(f"not listening on {where} after {self.args.start_timeout} s:\n"
                         f"{log_tail(log_path)}")

    # --- the direct path: pyfcgi bench ---

    def bench_cmd(self, scenario, seconds, target, keep_conn, warmup=0.0):
        a = self.args
        cmd = ["taskset", "-c", a.load_cpu, a.pyfcgi, "bench", *target, "-c", str(a.connections),
               "-d", f"{seconds:g}", "--expect-status", "200",
               "--expect-body", "@" + self.expected_files[scenario.name], "--json"]
        if warmup:
            cmd += ["--warmup", f"{warmup:g}"]
        if not keep_conn:
            cmd.append("--no-keep-conn")
        if scenario.post:
            cmd += ["--data-binary", "@" + self.post_file]
        return cmd

    def run_bench(self, cmd):
        timeout = self.args.seconds + self.args.warmup + 60
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerFailed(f"pyfcgi bench did not finish within {timeout} s")
        return parse_bench(out.returncode, out.stdout, out.stderr)

    def direct(self, server, scenario, where, proc):
        a = self.args
        target = ["--connect", f"unix:{where}"]
        self.run_bench(self.bench_cmd(scenario, a.warmup, target, server.keep_conn))
        perf = (PerfStat(proc.pid) if server.name in a.perf_servers
                and scenario.name in a.perf_scenarios else None)
        window = Window(proc.pid, a.server_cpu)
        report, first_error = self.run_bench(
            self.bench_cmd(scenario, a.seconds, target, server.keep_conn))
        result = bench_result(report, first_error, *window.close())
        if perf is not None:
            result["perf"] = perf.close(report.get("ok") or 0)
        return result

    def direct_spawn(self, server, scenario):
        """wfastcgi, or pyfcgi run the same way (IIS's model): pyfcgi bench spawns the pool,
        each process gets its FastCGI stream on stdin and reads the app from the Web.config of
        the request's APPL_PHYSICAL_PATH; the pool's CPU is sampled from /proc during the run."""
        a = self.args
        app_dir = os.path.join(self.work, f"{server.name}-{scenario.name}")
        os.makedirs(app_dir, exist_ok=True)
        module, attr = scenario.module_attr()
        # wfastcgi opens "Web.config", pyfcgi "web.config": one name on Windows, two on Linux.
        name = "Web.config" if server.name == "wfastcgi" else "web.config"
        with open(os.path.join(app_dir, name), "w") as f:
            f.write(WEB_CONFIG.format(handler=f"{module}.{attr}", pythonpath=BENCH))
        target = ["--spawn-pool", str(self.workers(server)), "--iis",
                  "--param", f"APPL_PHYSICAL_PATH={app_dir}"]
        cmd = self.bench_cmd(scenario, a.seconds, target, True, warmup=a.warmup)
        if server.name == "wfastcgi":
            cmd += ["--", "taskset", "-c", a.server_cpu, self.venv_python,
                    os.path.join(BENCH, "wfastcgi_linux.py")]
        else:
            cmd += ["--", "taskset", "-c", a.server_cpu, a.pyfcgi, "serve", "--log-level", "warn",
                    *(["--venv", a.venv] if scenario.framework else [])]
        sampler = TreeSampler()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            bench = subprocess.Popen(cmd, stdout=out, stderr=err)
            sampler.start(bench.pid)
            try:
                bench.wait(timeout=a.seconds + a.warmup + 60)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait()
                raise PeerFailed("pyfcgi bench --spawn-pool did not finish in time")
            finally:
                sampler.stop()
            end = time.monotonic()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
        report, first_error = parse_bench(bench.returncode, stdout, stderr)
        # The measuring window ended when bench printed its report, just before it exited.
        window_end = end - 0.05
        window_start = window_end - report["duration_s"]
        cpu_s = sampler.cpu_seconds(window_start, window_end)
        return bench_result(report, first_error, cpu_s, None)

    # --- wrk: the nginx and http paths ---

    def wrk(self, scenario, url, seconds):
        a = self.args
        # wrk takes whole seconds only.
        cmd = ["taskset", "-c", a.load_cpu, "wrk", "-t1", f"-c{a.connections}", "--latency",
               f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
        if scenario.post:
            cmd += ["-s", self.wrk_post]
        out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise PeerFailed(f"wrk failed (exit {out.returncode}): "
                             f"{(out.stderr or out.stdout).strip()[-300:]}")
        return parse_wrk(out.stdout)

    def check_http(self, scenario, url):
        """One request with urllib: the correctness gate for the wrk paths (wrk only counts
        statuses); run before and after the measurement."""
        data = scenario.expected if scenario.post else None
        req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return f"status {e.code} {e.reason}"
        except OSError as e:
            return f"no answer: {e}"
        except http.client.HTTPException as e:
            return f"a broken HTTP response: {e!r}"
        if status != 200:
            return f"status {status}"
        if body != scenario.expected:
            return f"a {len(body)}-byte body where {len(scenario.expected)} bytes were expected"
        return ""

    def through_wrk(self, scenario, url, proc, extra_pids=()):
        a = self.args
        for _ in range(100):
            problem = self.check_http(scenario, url)
            if not problem.startswith("no answer"):
                break
            time.sleep(0.05)
        if problem:
            return failed_result(f"correctness check before the run: {problem}")
        self.wrk(scenario, url, a.warmup)
        window = Window(proc.pid, a.server_cpu)
        w = self.wrk(scenario, url, a.seconds)
        cpu_s, foreign = window.close()
        problems = []
        after = self.check_http(scenario, url)
        if after:
            problems.append(f"correctness check after the run: {after}")
        if w["non2xx"]:
            problems.append(f"{w['non2xx']} non-2xx responses")
        if w["socket_errors"]:
            problems.append(f"socket errors: {w['socket_errors']}")
        good = w["requests"] - w["non2xx"]
        # wrk does not check bodies; its byte count catches short ones (headers come on top).
        if good and w["bytes_read"] < 0.98 * good * len(scenario.expected):
            problems.append(f"{w['bytes_read'] / good:.0f} bytes read per response, less than the "
                            f"{len(scenario.expected)}-byte body")
        if not good:
            return failed_result("; ".join(problems) or "no good response")
        return {
            "rps": good / w["seconds"], "cpu_us": cpu_s * 1e6 / good,
            "p99_ms": w["p99_ms"], "requests": w["requests"], "ok": good,
            "errors": w["non2xx"] + sum(w["socket_error_counts"]), "problem": "; ".join(problems),
            "foreign_pct": foreign,
        }

    def nginx(self, server, scenario, where, proc, tag):
        nwork = os.path.join(self.work, f"ngx-{tag}")
        os.makedirs(nwork, exist_ok=True)
        port = free_port()
        conf = os.path.join(nwork, "nginx.conf")
        keep = server.keep_conn
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(
                work=nwork, sock=where, port=port,
                keepalive=f"keepalive {self.args.connections};" if keep else "",
                keep_conn="on" if keep else "off"))
        ngx = subprocess.Popen(["taskset", "-c", self.args.load_cpu, NGINX, "-p", nwork, "-c", conf],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if not wait_for(lambda: can_connect(port), 10):
                raise PeerFailed(f"nginx did not start:\n{log_tail(os.path.join(nwork, 'error.log'))}")
            return self.through_wrk(scenario, f"http://127.0.0.1:{port}/", proc)
        finally:
            ngx.send_signal(signal.SIGQUIT)
            try:
                ngx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                ngx.kill()
                ngx.wait()

    # --- the app alone: its floor ---

    def floor(self, scenario):
        """The app's own CPU per request with no server (bench/floor.py), on the server's core
        and with the servers' interpreter; None for the POST scenario (its work is the body)."""
        if scenario.post:
            return None
        a = self.args
        file, attr = scenario.app_path()
        cmd = ["taskset", "-c", a.server_cpu, a.python, os.path.join(BENCH, "floor.py"),
               f"{file}:{attr}", f"{a.seconds:g}", f"{a.warmup:g}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH,
                                 timeout=a.seconds + a.warmup + 60)
        except subprocess.TimeoutExpired:
            log(f"  floor {scenario.name}: did not finish in time")
            return None
        if out.returncode != 0:
            log(f"  floor {scenario.name}: {' '.join(cmd)} failed:\n{out.stderr.strip()[-600:]}")
            return None
        return json.loads(out.stdout)["cpu_us"]

    # --- one server, one scenario, every selected path ---

    def measure(self, server, scenario, rep):
        tag = f"{server.name}-{scenario.name}-{rep}"
        paths = [p for p in server.paths() if p in self.args.paths]
        results = {}
        if server.kind == "spawn":
            return {"direct": self.direct_spawn(server, scenario)}
        proc, where, log_path = self.start(server, scenario, tag)
        try:
            for path in paths:
                try:
                    if path == "direct":
                        results[path] = self.direct(server, scenario, where, proc)
                    elif path == "nginx":
                        results[path] = self.nginx(server, scenario, where, proc, tag)
                    else:
                        results[path] = self.through_wrk(scenario, f"http://127.0.0.1:{where}/", proc)
                except PeerFailed as e:
                    results[path] = failed_result(str(e))
                if proc.poll() is not None:
                    died = f"the server exited (status {proc.returncode}):\n{log_tail(log_path)}"
                    results[path] = failed_result(died)
                    for rest in paths[paths.index(path) + 1:]:
                        results[rest] = failed_result(died)
                    break
        finally:
            stop(proc)
        return results


class TreeSampler:
    """Samples the CPU ticks of a process's descendants (not the process itself) every 50 ms, for
    servers whose processes live only inside one pyfcgi bench run."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._seen = {}

    def start(self, pid):
        def loop():
            while not self._stop.is_set():
                for p in proc_tree(pid)[1:]:
                    ticks = cpu_ticks([p], reaped=False)
                    if ticks or p not in self._seen:
                        self._seen[p] = max(self._seen.get(p, 0), ticks)
                self.samples.append((time.monotonic(), sum(self._seen.values())))
                self._stop.wait(0.05)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def cpu_seconds(self, start, end):
        """CPU seconds over [start, end], from the samples inside it, scaled to its length."""
        inside = [(t, ticks) for t, ticks in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5:
            raise PeerFailed("too few CPU samples inside the measuring window")
        (ta, ca), (tb, cb) = inside[0], inside[-1]
        return (cb - ca) / HZ * (end - start) / (tb - ta)


def parse_bench(returncode, stdout, stderr):
    """pyfcgi bench's JSON report and its "first error" line (exit 2: some requests failed)."""
    if returncode not in (0, 2):
        raise PeerFailed(f"pyfcgi bench failed (exit {returncode}): {stderr.strip()[-800:]}")
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise PeerFailed(f"pyfcgi bench printed no JSON: {stderr.strip()[-800:]}")
    first_error = next((line.split("first error: ", 1)[1] for line in stderr.splitlines()
                        if "first error: " in line), "")
    return report, first_error


def bench_result(report, first_error, cpu_s, foreign_pct):
    ok = report["ok"]
    if not ok:
        return failed_result(f"no good response in {report['requests']} requests"
                             + (f"; first error: {first_error}" if first_error else ""))
    problem = ""
    if report["error_total"]:
        kinds = ", ".join(f"{k} {v}" for k, v in report["errors"].items() if v)
        problem = f"{report['error_total']} errors ({kinds})" + (
            f"; first: {first_error}" if first_error else "")
    return {
        "rps": ok / report["duration_s"], "cpu_us": cpu_s * 1e6 / ok,
        "p99_ms": report["latency_us"]["p99"] / 1000, "requests": report["requests"], "ok": ok,
        "errors": report["error_total"], "problem": problem, "foreign_pct": foreign_pct,
    }


def failed_result(problem):
    return {"rps": None, "cpu_us": None, "p99_ms": None, "requests": 0, "ok": 0, "errors": None,
            "problem": problem, "foreign_pct": None}


WEB_CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="{handler}" />
    <add key="PYTHONPATH" value="{pythonpath}" />
    <add key="WSGI_RESTART_FILE_REGEX" value="" />
  </appSettings>
</configuration>
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body; fastcgi_temp_path {work}/fastcgi;
    proxy_temp_path {work}/proxy; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    # Bodies and responses stay in memory: the 1 MiB POST and its echo never touch the disk.
    client_max_body_size 2m; client_body_buffer_size 2m;
    fastcgi_buffer_size 32k; fastcgi_buffers 80 16k; fastcgi_busy_buffers_size 64k;
    fastcgi_max_temp_file_size 0;
    upstream app {{ server unix:{sock}; {keepalive} }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_keep_conn {keep_conn};
            fastcgi_pass app;
        }}
    }}
}}
"""

WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def parse_wrk(out):
    def find(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise PeerFailed(f"unexpected wrk output: {out.strip()[-300:]}")
        return m
    m = find(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read")
    p99 = find(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    counts = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    return {
        "requests": int(m.group(1)),
        "seconds": float(m.group(2)) * WRK_UNITS[m.group(3)] / 1000,
        "bytes_read": float(m.group(4)) * SIZE_UNITS[m.group(5)],
        "p99_ms": float(p99.group(1)) * WRK_UNITS[p99.group(2)],
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_error_counts": counts,
        "socket_errors": sock.group(0).split(": ", 1)[1] if sock else "",
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(where):
    if isinstance(where, int):
        s = socket.socket()
        addr = ("127.0.0.1", where)
    else:
        if not os.path.exists(where):
            return False
        s = socket.socket(socket.AF_UNIX)
        addr = where
    with s:
        s.settimeout(1)
        try:
            s.connect(addr)
            return True
        except OSError:
            return False


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def stop(proc):
    """SIGTERM to the server's process group; SIGKILL after 3 s (flup's forked server may
    wait for its children forever)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            pass
    try:  # what the group left behind (forked children that outlived their parent)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the run, its summary and its report -------------------------------------------------------

def median_of(runs, key):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def floors_of(raw_floors):
    """The median floor per scenario (µs of CPU per request, the app alone)."""
    by = {}
    for f in raw_floors:
        if f["cpu_us"] is not None:
            by.setdefault(f["scenario"], []).append(f["cpu_us"])
    return {k: statistics.median(v) for k, v in by.items()}


def summarise(raw, floors=None):
    """Medians per (path, scenario, server), with each one's overhead over the app's floor
    (server CPU per response minus the floor). A cell with any failed run is failed."""
    floors = floors or {}
    cells = {}
    for r in raw:
        cells.setdefault((r["path"], r["scenario"], r["server"]), []).append(r)
    out = []
    for (path, scenario, server), runs in cells.items():
        problems = [f"rep {r['rep']}: {r['problem']}" for r in runs if r["problem"]]
        out.append({
            "path": path, "scenario": scenario, "server": server, "reps": len(runs),
            "rps": median_of(runs, "rps"), "cpu_us": median_of(runs, "cpu_us"),
            "p99_ms": median_of(runs, "p99_ms"),
            "errors": sum(r["errors"] or 0 for r in runs),
            "foreign_pct_max": max((r["foreign_pct"] for r in runs if r["foreign_pct"] is not None),
                                   default=None),
            "ok": not problems, "problems": problems,
        })
        cell = out[-1]
        perf_runs = [r["perf"] for r in runs if r.get("perf")]
        if perf_runs:
            cell["perf"] = {k: median_of(perf_runs, k) for k in perf_runs[0]}
        # The C responder runs no Python app: a Python floor means nothing for it.
        floor = floors.get(scenario) if server != "c" else None
        cell["floor_us"] = floor
        cell["overhead_us"] = (cell["cpu_us"] - floor
                               if floor is not None and cell["cpu_us"] is not None else None)
    return out


def fmt(value, spec, unit=""):
    return "–" if value is None else f"{value:{spec}}{unit}".replace(",", " ")


def markdown(summary, args):
    """One table per path, then pyfcgi's CPU per response against each peer."""
    lines = []
    by = {(s["path"], s["scenario"], s["server"]): s for s in summary}
    path_titles = {
        "direct": "Direct: `pyfcgi bench` → server (FastCGI, Unix socket)",
        "nginx": "Through nginx: `wrk` → nginx → server (FastCGI, Unix socket)",
        "http": "HTTP reference: `wrk` → server (no nginx, no FastCGI)",
    }
    for path in PATHS:
        rows = [s for s in summary if s["path"] == path]
        if not rows:
            continue
        base_path = "direct" if path == "http" else path
        vs = "CPU vs pyfcgi direct" if path == "http" else "CPU vs pyfcgi"
        lines += [f"#### {path_titles[path]}", "",
                  f"| scenario | server | requests/s | server CPU per response | app floor "
                  f"| server overhead | p99 latency | errors | {vs} |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for scenario in args.scenarios:
            for server in args.servers:
                s = by.get((path, scenario, server))
                if not s:
                    continue
                base = by.get((base_path, scenario, "pyfcgi"))
                ratio = "–"
                if s["ok"] and base and base["ok"] and s["cpu_us"] and server != "pyfcgi":
                    ratio = f"{s['cpu_us'] / base['cpu_us']:.2f}×"
                status = (str(s["errors"]) if s["ok"] else
                          "**failed**" + (f" ({s['errors']})" if s["errors"] else ""))
                lines.append(
                    f"| {SCENARIOS[scenario].title} | {SERVERS[server].label} "
                    f"| {fmt(s['rps'], ',.0f')} | {fmt(s['cpu_us'], '.1f', ' µs')} "
                    f"| {fmt(s.get('floor_us'), '.1f', ' µs')} "
                    f"| {fmt(s.get('overhead_us'), '.1f', ' µs')} "
                    f"| {fmt(s['p99_ms'], '.2f', ' ms')} | {status} | {ratio} |")
        lines.append("")
    if any(s.get("floor_us") is not None for s in summary):
        lines += ["*App floor*: the same app called in a loop in the same interpreter on the "
                  "server's core, with no server (bench/floor.py, an environ like pyfcgi's). "
                  "*Server overhead*: CPU per response minus the floor, what the server itself "
                  "adds (sockets, FastCGI or HTTP, the environ, the response).", ""]
    failures = [s for s in summary if not s["ok"]]
    if failures:
        lines += ["Failed runs (not ranked):", ""]
        for s in failures:
            # The problem's first line, and the last line of a log tail under it.
            parts = [line.strip(" |") for line in s["problems"][0].splitlines()]
            brief = parts[0] if len(parts) == 1 else f"{parts[0]} … {parts[-1]}"
            more = f" (and {len(s['problems']) - 1} more reps)" if len(s["problems"]) > 1 else ""
            lines.append(f"- {SERVERS[s['server']].label}, {s['scenario']}, {s['path']}: "
                         f"{brief[:400]}{more}")
        lines.append("")
    return "\n".join(lines)


def perf_table(summary):
    """Per-request counters of the direct runs that had `perf stat` attached."""
    rows = [s for s in summary if s.get("perf") and s["path"] == "direct"]
    if not rows:
        return ""
    events = [e for e in (*PERF_EVENTS, "voluntary-switches", "nonvoluntary-switches")
              if any(r["perf"].get(e) is not None for r in rows)]
    missing = [e for e in PERF_EVENTS if e not in events]
    names = {"task-clock": "task-clock (ms)"}
    lines = ["| scenario | server | " + " | ".join(names.get(e, e) for e in events) + " |",
             "|---|---|" + "---:|" * len(events)]
    for r in sorted(rows, key=lambda r: (r["scenario"], r["server"])):
        cells = []
        for e in events:
            v = r["perf"].get(e)
            if v is None:
                cells.append("–")
            else:
                cells.append((f"{v:,.0f}" if v >= 100 else f"{v:.3f}").replace(",", " "))
        lines.append(f"| {SCENARIOS[r['scenario']].title} | {SERVERS[r['server']].label} | "
                     + " | ".join(cells) + " |")
    note = ("Per response, over the measuring window (`perf stat -p`; voluntary and "
            "non-voluntary switches of every thread from /proc).")
    if missing:
        note += (f" Not exposed on this machine: {', '.join(missing)} (`perf stat` says "
                 "<not supported>; hardware counters are usually hidden inside a VM).")
    return "\n".join(lines) + "\n\n" + note


def ratio_matrix(summary, args, path="direct", key="cpu_us"):
    """pyfcgi's CPU per response (or `key`: overhead_us) divided by each peer's: below 1
    means pyfcgi is cheaper."""
    by = {(s["path"], s["scenario"], s["server"]): s for s in summary}
    measured = {(s["server"]) for s in summary}
    # pyfcgi run IIS-style is the base when only it is measured (against wfastcgi).
    me = "pyfcgi" if "pyfcgi" in measured else "pyfcgi-iis"
    peers = [p for p in args.servers if p not in ("pyfcgi", me) and p in measured]
    if me not in measured or not peers:
        return ""
    lines = ["| scenario | " + " | ".join(SERVERS[p].label for p in peers) + " |",
             "|---|" + "---:|" * len(peers)]
    for scenario in args.scenarios:
        base = by.get((path, scenario, me))
        cells = []
        for p in peers:
            s = by.get(("http" if SERVERS[p].kind == "http" else path, scenario, p))
            if not (s and base and s["ok"] and base["ok"] and s.get(key) and base.get(key)
                    and s[key] > 0):
                cells.append("–" if not s or s["ok"] else "failed")
            else:
                cells.append(f"{base[key] / s[key]:.2f}")
        if key != "cpu_us" and all(c == "–" for c in cells):
            continue
        lines.append(f"| {SCENARIOS[scenario].title} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    return "\n".join(lines)


def command_output(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(args):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "python": command_output([args.python, "-c", "import sys; print(sys.version.split()[0])"]),
        "nginx": command_output([NGINX, "-v"]).rsplit("/", 1)[-1],
        "wrk": command_output(["wrk", "-v"]).split("[")[0].replace("wrk ", "")
        .replace("debian/", "").strip(),
        "gcc": command_output(["gcc", "-dumpfullversion"]),
        "libfcgi": command_output(["dpkg-query", "-W", "-f=${Version}", "libfcgi-dev"]),
        # The first line: the version and the revision the binary was built from (the rest
        # describes the Python it finds).
        "pyfcgi": (command_output([args.pyfcgi, "--version"]).splitlines() or [""])[0]
        .replace("pyfcgi ", ""),
        "pyfcgi_commit": command_output(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
    }
    if os.path.exists(os.path.join(args.venv, "bin", "python")):
        info["peers"] = json.loads(command_output([
            os.path.join(args.venv, "bin", "python"), "-c",
            "import importlib.metadata as m, json\nout = {}\n"
            "for n in ('uWSGI', 'flup', 'wfastcgi', 'granian', 'gunicorn', 'Flask', 'Django'):\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))"]) or "{}")
    return info


DOC = os.path.join(ROOT, "docs", "benchmarks.md")
DOC_BEGIN = "<!-- scripts/bench/run writes from here to the end marker; edit run.py, not this -->"
DOC_END = "<!-- end of scripts/bench/run's section -->"


def noise_note(raw, config):
    """One sentence on how busy the server's core was with other processes during the runs."""
    values = sorted(r["foreign_pct"] for r in raw if r["foreign_pct"] is not None)
    if not values:
        return ""
    noisy = sum(v > config["max_noise"] for v in values)
    return (f"Noise: other processes used a median {statistics.median(values):.1f}% (at most "
            f"{values[-1]:.0f}%) of the server's core (CPU {config['server_cpu']}) during the "
            f"measuring windows; {noisy} of {len(values)} runs were above {config['max_noise']:g}% "
            f"after up to {config['noise_retries']} retries.")


def docs_section(info, config, elapsed, table, ratios, charts, noise, overhead="", perf=""):
    peers = ", ".join(f"{k} {v}" for k, v in info.get("peers", {}).items())
    lines = [
        DOC_BEGIN, "",
        f"Measured {time.strftime('%Y-%m-%d')} on {info['nproc']} cores ({info['cpu']}), Linux "
        f"{info['kernel']}, CPython {info['python']}, nginx {info['nginx']}, wrk {info['wrk']}, "
        f"gcc {info['gcc']}, libfcgi {info['libfcgi']}; pyfcgi {info['pyfcgi']} "
        f"(`{info['pyfcgi_commit']}`); {peers}.", "",
        f"`scripts/bench/run`: {config['reps']} × {config['seconds']:g} s "
        f"(after {config['warmup']:g} s of warm-up), {config['connections']} connections, "
        f"{config['workers']} worker per server, medians; the whole run took "
        f"{elapsed / 60:.1f} minutes. {noise}", "",
    ]
    if ratios:
        lines += ["**pyfcgi's CPU per response divided by each peer's** (direct path; HTTP "
                  "references through wrk). Below 1: pyfcgi spends less CPU per response.", "",
                  ratios, ""]
    if overhead:
        lines += ["**pyfcgi's server overhead divided by each peer's** (CPU per response minus "
                  "the app's floor; the scenarios with a floor). Below 1: pyfcgi adds less.", "",
                  overhead, ""]
    lines += [table, ""]
    if perf:
        lines += ["#### Counters per response (direct path)", "", perf, ""]
    lines += [f"![{name}](bench/{name}.png)\n" for name in charts]
    lines += ["", DOC_END]
    return "\n".join(lines)


def write_docs(args, section):
    """Replaces the generated section of docs/benchmarks.md (appends it the first time)."""
    with open(DOC) as f:
        text = f.read()
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        tail = rest.split(DOC_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(DOC, "w") as f:
        f.write(text)


def draw_charts(args, result_file):
    """docs/bench/*.png with the venv's matplotlib; returns the chart names, or [] on failure."""
    out_dir = os.path.join(ROOT, "docs", "bench")
    cmd = [args.python, os.path.join(ROOT, "scripts", "bench", "charts.py"), result_file, out_dir]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        log(f"run: no charts ({' '.join(cmd)} failed):\n{res.stderr.strip()[-800:]}")
        return []
    return [os.path.splitext(os.path.basename(line))[0] for line in res.stdout.split()]


def build_responder(args):
    """Compiles bench/c/responder.c into target/bench/ when it is missing or older."""
    src = os.path.join(BENCH, "c", "responder.c")
    out = os.path.join(ROOT, "target", "bench", "responder")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = ["gcc", "-O2", "-Wall", "-o", out, src, "-lfcgi", "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise PeerFailed(f"cannot build the C responder ({' '.join(cmd)}):\n{res.stderr.strip()}\n"
                         "scripts/install-deps --bench installs gcc and libfcgi-dev")
    return out


def parse_list(text, valid, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in valid]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(empty list)'}; choose from {', '.join(valid)}")
    return list(dict.fromkeys(items))


def positive(kind):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    return check


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """Usage errors exit 1, as setup errors do; 2 means pyfcgi failed the gate."""
        self.print_usage(sys.stderr)
        sys.exit(f"{self.prog}: error: {message}")


def parse_args(argv):
    ap = Parser(
        prog="scripts/bench/run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=positive(float), default=3.0,
                    help="measuring window of each run (default 3)")
    ap.add_argument("--warmup", type=positive(float), default=1.0,
                    help="unmeasured load before each run (default 1)")
    ap.add_argument("--reps", type=positive(int), default=3, help="repetitions, medians (default 3)")
    ap.add_argument("--servers", type=lambda t: parse_list(t, list(SERVERS), "server"),
                    default=[s for s in SERVERS if s != "pyfcgi-iis"],
                    help="comma-separated: " + ",".join(SERVERS) + " (default: all but "
                         "pyfcgi-iis, which is for comparing with wfastcgi)")
    ap.add_argument("--scenarios", type=lambda t: parse_list(t, list(SCENARIOS), "scenario"),
                    default=list(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--paths", type=lambda t: parse_list(t, list(PATHS), "path"),
                    default=list(PATHS), help="comma-separated: " + ",".join(PATHS))
    ap.add_argument("--workers", type=positive(int), default=1,
                    help="worker threads or processes per server (default 1; flup's threaded "
                         "server gets at least one per connection)")
    ap.add_argument("--connections", type=positive(int), default=64, help="default 64")
    ap.add_argument("--smoke", action="store_true",
                    help="CI check: hello, direct, pyfcgi and the C responder, one 1 s run, "
                         "no charts, no docs; fails when either fails the gate")
    ap.add_argument("--venv", default=os.environ.get("BENCH_VENV", DEFAULT_VENV),
                    help="venv holding the peers (default $BENCH_VENV or " + DEFAULT_VENV + ")")
    ap.add_argument("--pyfcgi", default=os.path.join(ROOT, "target", "release", "pyfcgi"))
    ap.add_argument("--out", help="where results.json and results.md go (default target/bench, "
                                  "with --smoke target/bench/smoke)")
    ap.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                    help="write charts to docs/bench/ and the results into docs/benchmarks.md "
                         "(default: on for a full run, off with --smoke or a partial selection)")
    ap.add_argument("--max-noise", type=float, default=10.0,
                    help="measure a server/scenario again when other processes took more than "
                         "this %% of the server's core (default 10)")
    ap.add_argument("--noise-retries", type=int, default=1, choices=range(0, 6), metavar="N",
                    help="how many times to measure again (0 to 5, default 1)")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="measure each app alone (bench/floor.py) for the floor and overhead "
                         "columns (default on)")
    ap.add_argument("--perf-servers", type=lambda t: parse_list(t, list(SERVERS), "server"),
                    default=["pyfcgi", "uwsgi"],
                    help="servers whose direct runs get `perf stat` and context-switch counts "
                         "(default pyfcgi,uwsgi)")
    ap.add_argument("--perf-scenarios", type=lambda t: parse_list(t, list(SCENARIOS), "scenario"),
                    default=["django", "flask", "hello"],
                    help="scenarios measured that way (default django,flask,hello)")
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--server-cpu", default="1" if (os.cpu_count() or 1) > 1 else "0")
    ap.add_argument("--start-timeout", type=positive(float), default=30.0)
    args = ap.parse_args(argv)
    explicit = {a.split("=")[0] for a in argv if a.startswith("--")}
    if args.smoke:
        clash = explicit & {"--servers", "--scenarios", "--paths", "--reps", "--seconds"}
        if clash:
            ap.error(f"--smoke chooses its own {', '.join(sorted(clash))}")
        args.servers, args.scenarios, args.paths = ["pyfcgi", "c"], ["hello"], ["direct"]
        args.reps, args.seconds, args.warmup, args.noise_retries = 1, 1.0, 0.5, 0
    if args.out is None:
        args.out = os.path.join(ROOT, "target", "bench", *(["smoke"] if args.smoke else []))
    partial = explicit & {"--servers", "--scenarios", "--paths"}
    if args.docs is None:
        args.docs = not args.smoke and not partial
    if args.docs and args.smoke:
        ap.error("--smoke writes no docs")
    if not os.access(args.pyfcgi, os.X_OK):
        ap.error(f"{args.pyfcgi} is not an executable; build it with cargo build --release --locked")
    args.python = os.path.join(args.venv, "bin", "python")
    if not os.path.exists(args.python):
        args.python = sys.executable
    return args


def plan(args):
    """(server, scenario) pairs to run, skipping what a selection cannot measure."""
    venv_ok = os.path.exists(os.path.join(args.venv, "bin", "python"))
    skipped, pairs = [], []
    for server in [SERVERS[s] for s in args.servers]:
        if not set(server.paths()) & set(args.paths):
            skipped.append(f"{server.label}: not measured on --paths {','.join(args.paths)}")
            continue
        if server.needs_venv and not venv_ok:
            skipped.append(f"{server.label}: no venv at {args.venv} (run without --smoke to "
                           "install the peers)")
            continue
        for scenario in [SCENARIOS[s] for s in args.scenarios]:
            if not server.supports(scenario):
                continue
            if scenario.framework and not venv_ok:
                skipped.append(f"{server.label} {scenario.name}: Flask/Django need the venv")
                continue
            pairs.append((server, scenario))
    return pairs, skipped


def noise(results):
    return max((r["foreign_pct"] or 0 for r in results.values()), default=0)


def measure_quietly(bench, server, scenario, rep):
    """bench.measure, again (up to --noise-retries times) while other processes took more than
    --max-noise % of the server's core; the quietest attempt is kept."""
    args, attempts = bench.args, []
    for attempt in range(1 + args.noise_retries):
        try:
            results = bench.measure(server, scenario, rep)
        except PeerFailed as e:
            return {p: failed_result(str(e)) for p in server.paths() if p in args.paths}
        attempts.append(results)
        if noise(results) <= args.max_noise or attempt == args.noise_retries:
            break
        log(f"  {scenario.name} {server.name}: other processes used {noise(results):.0f}% of "
            f"CPU {args.server_cpu}; measuring again")
        time.sleep(2)
    return min(attempts, key=noise)


def main(argv):
    args = parse_args(argv)
    pairs, skipped = plan(args)
    for s in skipped:
        log(f"skipped: {s}")
    if not pairs:
        log("run: nothing to measure with this selection")
        return 1
    if any(server.name == "c" for server, _ in pairs):
        try:
            args.responder = build_responder(args)
        except PeerFailed as e:
            log(f"run: {e}")
            return 1
    runs = sum(len([p for p in server.paths() if p in args.paths]) for server, _ in pairs)
    total = runs * args.reps
    log(f"run: {len(pairs)} server/scenario pairs, {total} measurements of {args.seconds:g} s "
        f"(+{args.warmup:g} s warm-up); server on CPU {args.server_cpu}, load on CPU {args.load_cpu}")
    raw, raw_floors, done, started = [], [], 0, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyfcgi-bench-") as work:
        # A copy, so that a rebuild of target/release during the run cannot mix two versions.
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.pyfcgi)))
        args.pyfcgi = shutil.copy2(args.pyfcgi, os.path.join(work, "pyfcgi"))
        info = machine(args)
        info["pyfcgi_built"] = built
        bench = Bench(args, work)
        scenarios = list(dict.fromkeys(scenario.name for _, scenario in pairs))
        for rep in range(1, args.reps + 1):
            if args.floor:
                for name in scenarios:
                    cpu = bench.floor(SCENARIOS[name])
                    raw_floors.append({"scenario": name, "rep": rep, "cpu_us": cpu})
                    if cpu is not None:
                        log(f"rep {rep}/{args.reps} {name}: app floor {cpu:.1f} µs CPU/request")
            for server, scenario in pairs:
                results = measure_quietly(bench, server, scenario, rep)
                for path, r in results.items():
                    done += 1
                    raw.append({"server": server.name, "scenario": scenario.name, "path": path,
                                "rep": rep, **r})
                    eta = (time.monotonic() - started) / done * (total - done)
                    if r["problem"]:
                        outcome = "FAILED: " + r["problem"].replace("\n", "\n  ")
                    else:
                        outcome = (f"{r['rps']:.0f} req/s, {r['cpu_us']:.1f} µs CPU/response, "
                                   f"p99 {r['p99_ms']:.2f} ms")
                        if (r["foreign_pct"] or 0) > args.max_noise:
                            outcome += (f" (noisy: other processes used {r['foreign_pct']:.0f}% "
                                        f"of CPU {args.server_cpu})")
                    log(f"[{done}/{total}, ETA {eta / 60:.1f} min] rep {rep}/{args.reps} "
                        f"{scenario.name} {path} {server.name}: {outcome}")
    elapsed = time.monotonic() - started
    floors = floors_of(raw_floors)
    summary = summarise(raw, floors)
    config = {k: getattr(args, k) for k in ("seconds", "warmup", "reps", "servers", "scenarios",
                                             "paths", "workers", "connections", "load_cpu",
                                             "server_cpu", "max_noise", "noise_retries",
                                             "smoke", "floor", "perf_servers",
                                             "perf_scenarios")}
    table = markdown(summary, args)
    ratios = ratio_matrix(summary, args)
    overhead = ratio_matrix(summary, args, key="overhead_us")
    perf = perf_table(summary)
    noise = noise_note(raw, config)
    os.makedirs(args.out, exist_ok=True)
    result_file = os.path.join(args.out, "results.json")
    with open(result_file, "w") as f:
        json.dump({"machine": info, "config": config, "elapsed_s": round(elapsed, 1), "noise": noise,
                   "skipped": skipped, "floors": floors, "floor_runs": raw_floors,
                   "summary": summary, "runs": raw}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + ("\n" + ratios + "\n" if ratios else "")
                + ("\n" + overhead + "\n" if overhead else "")
                + ("\n" + perf + "\n" if perf else ""))
    print(table)
    if ratios:
        print("pyfcgi CPU per response ÷ the peer's (below 1: pyfcgi is cheaper), direct path:\n")
        print(ratios)
    if overhead:
        print("\npyfcgi's overhead over the app's floor ÷ the peer's (below 1: pyfcgi adds less):\n")
        print(overhead)
    if perf:
        print("\n" + perf)
    if args.docs:
        charts = draw_charts(args, result_file)
        write_docs(args, docs_section(info, config, elapsed, table, ratios, charts, noise,
                                      overhead, perf))
        log(f"run: wrote docs/benchmarks.md and {len(charts)} charts in docs/bench/")
    if noise:
        log(f"run: {noise}")
    log(f"run: {total} measurements in {elapsed / 60:.1f} min; {result_file}")
    own_failures = [s for s in summary if s["server"] in ("pyfcgi", "c") and not s["ok"]]
    for s in own_failures:
        log(f"run: {s['server']} failed {s['scenario']} {s['path']}: {s['problems'][0]}")
    return 2 if own_failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
