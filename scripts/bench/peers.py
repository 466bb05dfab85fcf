#!/usr/bin/env python3
"""Benchmark pyfcgi against flup and uWSGI (FastCGI) on bench/hello.py, behind nginx + wrk.

Method (2 cores): nginx and wrk share CPU 0, the server under test runs alone on CPU 1
(taskset). nginx + wrk saturate at roughly 30k requests/s here, which hides the difference
between fast servers, so besides requests/s the script reports the server's own CPU time per
request: utime+stime of the server's processes (all threads, all children) read from /proc over
the measuring window, divided by the requests wrk completed. Every server gets the same app,
the same Unix socket setup, the same nginx config (keep-alive upstream, fastcgi_keep_conn on)
and the same thread count. Medians of --reps runs, interleaved so drift hits all servers alike.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HZ = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def proc_tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pid):
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def wait_socket(path, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise RuntimeError(f"server socket {path} did not come up")


def server_cmd(name, args, sock, threads):
    app = os.path.join(ROOT, "bench", "hello.py")
    if name == "pyfcgi":
        return [args.pyfcgi, "serve", f"{app}:app", "--bind", f"unix:{sock}",
                "--threads", str(threads), "--log-level", "warn"]
    if name == "uwsgi":
        cmd = [os.path.join(args.venv, "bin", "uwsgi"), "--fastcgi-socket", sock,
               "--wsgi-file", app, "--callable", "app", "--processes", "1",
               "--disable-logging", "--die-on-term", "--listen", "1024"]
        if threads > 1:
            cmd += ["--threads", str(threads)]
        return cmd
    if name == "flup":
        return [os.path.join(args.venv, "bin", "python"), os.path.join(ROOT, "bench", "flup_server.py"),
                sock, str(threads)]
    raise ValueError(name)


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body; fastcgi_temp_path {work}/fastcgi;
    proxy_temp_path {work}/proxy; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    upstream app {{ server unix:{sock}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_keep_conn on;
            fastcgi_pass app;
        }}
    }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
    errors = re.findall(r"(Socket errors:.*|Non-2xx or 3xx responses: \d+)", out)
    return rps, reqs, p99, errors


def measure(name, args, threads, work):
    sock = os.path.join(work, f"{name}.sock")
    port = free_port()
    srv = subprocess.Popen(["taskset", "-c", args.server_cpu] + server_cmd(name, args, sock, threads),
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name}.log"), "ab"),
                           start_new_session=True)
    ngx = None
    try:
        wait_socket(sock)
        nwork = os.path.join(work, f"ngx-{name}")
        os.makedirs(nwork, exist_ok=True)
        conf = os.path.join(nwork, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(work=nwork, sock=sock, port=port))
        ngx = subprocess.Popen(["taskset", "-c", args.load_cpu, NGINX, "-p", nwork, "-c", conf],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/hello"
        for _ in range(100):
            try:
                body = urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{name}: no answer through nginx")
        if body != b"Hello, World!":
            raise RuntimeError(f"{name}: wrong body {body!r}")
        wrk = ["taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{args.connections}", "--latency"]
        subprocess.run(wrk + ["-d2s", url], capture_output=True, check=True)  # warm-up
        t0 = cpu_ticks(srv.pid)
        out = subprocess.run(wrk + [f"-d{args.seconds}s", url], capture_output=True, text=True, check=True).stdout
        t1 = cpu_ticks(srv.pid)
        rps, reqs, p99, errors = parse_wrk(out)
        if errors:
            log(f"  {name}: wrk reported {errors}")
        return {"rps": rps, "cpu_us": (t1 - t0) / HZ * 1e6 / max(reqs, 1), "p99_ms": p99}
    finally:
        if ngx:
            ngx.send_signal(signal.SIGQUIT)
            ngx.wait(timeout=10)
        os.killpg(srv.pid, signal.SIGTERM)
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", required=True, help="venv with flup and uwsgi")
    ap.add_argument("--pyfcgi", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    ap.add_argument("--servers", default="pyfcgi,uwsgi,flup")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--server-cpu", default="1" if os.cpu_count() > 1 else "0")
    args = ap.parse_args()
    servers = args.servers.split(",")
    results = {}
    with tempfile.TemporaryDirectory(prefix="pyfcgi-peers-") as work:
        for threads in [int(t) for t in args.threads.split(",")]:
            for rep in range(args.reps):
                for name in servers:
                    r = measure(name, args, threads, work)
                    results.setdefault((name, threads), []).append(r)
                    log(f"threads={threads} rep {rep + 1}/{args.reps} {name}: {r['rps']:.0f} req/s, "
                        f"{r['cpu_us']:.1f} us CPU/req, p99 {r['p99_ms']:.2f} ms")
    print(f"| server | threads | requests/s | server CPU per request | p99 latency | CPU vs pyfcgi |")
    print("|---|---|---|---|---|---|")
    for (name, threads), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        base = statistics.median(r["cpu_us"] for r in results[("pyfcgi", threads)]) if ("pyfcgi", threads) in results else float("nan")
        print(f"| {name} | {threads} | {med['rps']:.0f} | {med['cpu_us']:.1f} µs | {med['p99_ms']:.2f} ms | "
              f"{med['cpu_us'] / base:.2f}× |")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nwrk -t1 -c{args.connections} --latency, {args.seconds} s x {args.reps} (medians); "
          f"nginx + wrk on CPU {args.load_cpu}, server on CPU {args.server_cpu}; {os.cpu_count()} cores, {cpu}.")


if __name__ == "__main__":
    main()
