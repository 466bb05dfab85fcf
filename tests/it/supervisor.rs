//! `pyfcgi serve --workers N` behind real nginx: rolling restarts (SIGHUP) without a failed
//! request, a worker killed with SIGKILL (only its in-flight requests may fail: counted), a
//! graceful SIGTERM that finishes every accepted request, recycling by --max-requests and
//! --max-rss without failed requests, and a crash loop that stops with a clear error.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Nginx, Server, TempDir, kill, serve_command};

fn app_spec() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/workers_app.py");
    format!("{}:app", p.display())
}

struct Stack {
    server: Server,
    nginx: Nginx,
    /// pyfcgi's FastCGI socket (nginx's upstream).
    sock: std::path::PathBuf,
    _dir: TempDir,
}

impl Stack {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(args, env, "")
    }

    /// [`Stack::start`] with more directives in nginx's location.
    fn start_with(args: &[&str], env: &[(&str, &str)], location_extra: &str) -> Self {
        let dir = TempDir::new("workers");
        let sock = dir.path().join("pyfcgi.sock");
        let spec = app_spec();
        let mut all = vec![spec.as_str()];
        all.extend_from_slice(args);
        let mut cmd = serve_command(&all);
        cmd.arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .env("PYFCGI_LOG", "info")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let server = Server::from_command(cmd, None);
        let upstream = format!(
            "upstream pyfcgi {{ server unix:{}; keepalive 8; }}",
            sock.display()
        );
        let params = Nginx::fastcgi_params();
        let nginx = Nginx::start(
            &upstream,
            &format!(
                "location / {{ {params} fastcgi_keep_conn on; {location_extra} fastcgi_pass pyfcgi; }}"
            ),
        );
        Self {
            server,
            nginx,
            sock,
            _dir: dir,
        }
    }

    /// [`Stack::start`] of a `--workers 2` server, returned once both workers are ready.
    fn start_ready(args: &[&str], env: &[(&str, &str)]) -> Self {
        let s = Self::start(args, env);
        assert!(
            s.wait_count("worker ready", 2, Duration::from_secs(30)),
            "{}",
            s.logs()
        );
        s
    }

    /// A ready `--workers 2` server with `--status-path /pyfcgi-status` and a `--status-bind`
    /// on a free loopback port, which it returns.
    fn start_with_status() -> (Self, u16) {
        let port = crate::support::free_port();
        let bind = format!("127.0.0.1:{port}");
        let args = [
            "--workers",
            "2",
            "--status-path",
            "/pyfcgi-status",
            "--status-bind",
            &bind,
        ];
        (Self::start_ready(&args, &[]), port)
    }

    fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.server.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn logs(&self) -> String {
        format!(
            "--- pyfcgi:\n{}\n--- nginx:\n{}",
            self.server.log(),
            self.nginx.error_log()
        )
    }
}

/// One HTTP GET through nginx; `Err` describes a failure (connection error or non-200).
fn get(port: u16, path: &str) -> Result<u32, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text.lines().next().unwrap_or("(nothing)").to_owned());
    }
    text.split("\r\n\r\n")
        .nth(1)
        .and_then(|b| b.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {text:?}"))
}

/// Client threads sending requests until stopped: (successes by pid, failures).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<u32>, Vec<String>)>>,
}

impl Load {
    fn start(port: u16, clients: usize, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match get(port, path) {
                            Ok(pid) => ok.push(pid),
                            Err(e) => failed.push(e),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> (Vec<u32>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for t in self.threads {
            let (o, f) = t.join().unwrap();
            ok.extend(o);
            failed.extend(f);
        }
        (ok, failed)
    }
}

fn pids(ok: &[u32]) -> BTreeSet<u32> {
    ok.iter().copied().collect()
}

#[test]
fn sighup_rolling_restart_under_load_fails_no_request() {
    // A 0.5 s import: during each replacement only the old workers can serve.
    let s = Stack::start_ready(&["--workers", "2"], &[("WORKERS_APP_IMPORT_DELAY", "0.5")]);
    let load = Load::start(s.nginx.port, 4, "/");
    std::thread::sleep(Duration::from_millis(500));
    kill(s.server.pid(), libc::SIGHUP);
    assert!(
        s.wait_count("worker ready", 4, Duration::from_secs(30)),
        "the new workers did not get ready: {}",
        s.logs()
    );
    assert!(
        s.wait_count("retiring worker", 2, Duration::from_secs(10)),
        "{}",
        s.logs()
    );
    // The old workers drain and exit while the load goes on.
    assert!(
        s.wait_count("worker exited with code 0", 2, Duration::from_secs(15)),
        "the old workers did not exit: {}",
        s.logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        s.logs()
    );
    assert!(ok.len() > 50, "only {} requests", ok.len());
    // An old worker answered before and a new one after: the load went on, with no failure,
    // after both old workers exited. (Not "both old workers": nginx may have kept all its
    // upstream connections on one of them; a CI run once saw exactly that.)
    assert!(
        pids(&ok).len() >= 2,
        "old and new workers should have answered: {:?}",
        pids(&ok)
    );
}

#[test]
fn a_worker_killed_with_sigkill_loses_only_its_in_flight_requests_and_is_replaced() {
    let s = Stack::start_ready(&["--workers", "2"], &[]);
    let clients = 4;
    let load = Load::start(s.nginx.port, clients, "/sleep?0.05");
    std::thread::sleep(Duration::from_millis(500));
    let victim = get(s.nginx.port, "/").unwrap();
    kill(victim, libc::SIGKILL);
    assert!(
        s.wait_count("worker ready", 3, Duration::from_secs(20)),
        "no replacement: {}",
        s.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.finish();
    // Each client has at most one request in flight, so at most `clients` can be lost.
    assert!(
        failed.len() <= clients,
        "{} failed (more than the {clients} that can be in flight): {failed:?}",
        failed.len()
    );
    eprintln!(
        "SIGKILL of a worker: {} failed, {} succeeded",
        failed.len(),
        ok.len()
    );
    assert!(
        s.server.log().contains("was killed by signal 9"),
        "{}",
        s.logs()
    );
    // nginx keeps using its kept-alive connections to the surviving worker; once that one
    // is stopped too, the replacement answers.
    let survivor = pids(&ok).into_iter().find(|p| *p != victim).unwrap();
    kill(survivor, libc::SIGTERM);
    let t0 = Instant::now();
    let mut answered = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(pid) = get(s.nginx.port, "/")
            && pid != victim
            && pid != survivor
        {
            answered = Some(pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        answered.is_some(),
        "the replacement never answered: {}",
        s.logs()
    );
}

#[test]
fn sigterm_finishes_every_accepted_request_then_exits_0() {
    let mut s = Stack::start(&["--workers", "2"], &[]);
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(20)),
        "{}",
        s.logs()
    );
    let port = s.nginx.port;
    let results = Arc::new(Mutex::new(Vec::new()));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let results = Arc::clone(&results);
            std::thread::spawn(move || {
                let r = get(port, "/sleep?1");
                results.lock().unwrap().push(r);
            })
        })
        .collect();
    // Let the requests reach the workers, then stop.
    std::thread::sleep(Duration::from_millis(400));
    kill(s.server.pid(), libc::SIGTERM);
    for t in slow {
        t.join().unwrap();
    }
    let status = s.server.wait_exit(Duration::from_secs(20));
    let results = results.lock().unwrap();
    assert!(
        results.iter().all(Result::is_ok),
        "{results:?}\n{}",
        s.logs()
    );
    assert!(
        status.is_some_and(|st| st.success()),
        "{status:?}\n{}",
        s.logs()
    );
    assert!(s.server.log().contains("graceful stop"), "{}", s.logs());
}

#[test]
fn max_requests_with_jitter_recycles_workers_without_a_failed_request() {
    let s = Stack::start_ready(
        &[
            "--workers",
            "2",
            "--max-requests",
            "20",
            "--max-requests-jitter",
            "10",
        ],
        &[],
    );
    let load = Load::start(s.nginx.port, 3, "/");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30)
        && s.server.log().matches("worker ready").count() < 6
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        s.logs()
    );
    assert!(
        s.server.log().matches("worker ready").count() >= 6,
        "workers did not recycle: {}",
        s.logs()
    );
    assert!(pids(&ok).len() >= 4, "{:?}", pids(&ok));
}

#[test]
fn a_worker_over_max_rss_is_replaced() {
    let s = Stack::start(&["--workers", "1", "--max-rss", "150"], &[]);
    assert!(
        s.wait_count("worker ready", 1, Duration::from_secs(20)),
        "{}",
        s.logs()
    );
    let first = get(s.nginx.port, "/").unwrap();
    for _ in 0..8 {
        get(s.nginx.port, "/leak").unwrap();
    }
    assert!(
        s.wait_count("over --max-rss 150", 1, Duration::from_secs(10)),
        "{}",
        s.logs()
    );
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(20)),
        "{}",
        s.logs()
    );
    let t0 = Instant::now();
    let mut now = first;
    while t0.elapsed() < Duration::from_secs(10) && now == first {
        now = get(s.nginx.port, "/").unwrap();
    }
    assert_ne!(now, first, "the leaking worker still answers: {}", s.logs());
}

#[test]
fn workers_that_crash_before_ready_stop_the_supervisor_with_exit_5() {
    let (out, sock, _dir) = failing_workers("WORKERS_APP_CRASH", &["--crash-limit", "3"]);
    assert_eq!(out.code(), Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("--crash-limit"), "{}", out.stderr);
    assert!(out.stderr.contains("exited with code 3"), "{}", out.stderr);
    assert!(!sock.exists(), "the socket file was left behind");
}

/// `serve --workers 2` on a unix socket with `fail` set for the app (see workers_app.py);
/// the output, the socket path and its folder (kept, so that a socket left behind shows).
fn failing_workers(
    fail: &str,
    extra: &[&str],
) -> (crate::support::CmdOutput, std::path::PathBuf, TempDir) {
    let dir = TempDir::new("workers-fail");
    let sock = dir.path().join("pyfcgi.sock");
    let bind = format!("unix:{}", sock.display());
    let spec = app_spec();
    let mut args = vec![
        "serve",
        spec.as_str(),
        "--workers",
        "2",
        "--bind",
        bind.as_str(),
    ];
    args.extend_from_slice(extra);
    let out = crate::support::run_pyfcgi(
        &args,
        &[(fail, "1"), ("PYFCGI_LOG", "info")],
        None,
        Duration::from_secs(60),
    );
    (out, sock, dir)
}

#[test]
fn workers_that_cannot_import_stop_the_supervisor_at_once_with_exit_6() {
    // The same code as `serve` without --workers (tests/it/settings.rs): the import error is
    // not retried --crash-limit times, since every worker would fail the same way.
    let (out, sock, _dir) = failing_workers("WORKERS_APP_FAIL", &[]);
    assert_eq!(out.code(), Some(6), "{}", out.stderr);
    for want in [
        "the app cannot import (test)",
        "the application cannot be loaded",
    ] {
        assert!(out.stderr.contains(want), "{}", out.stderr);
    }
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn reload_restarts_the_workers_when_a_python_file_changes() {
    let dir = TempDir::new("workers-reload");
    let app = dir.path().join("app.py");
    let version = |v: &str| {
        format!(
            "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'{v}']\n"
        )
    };
    std::fs::write(&app, version("1")).unwrap();
    let sock = dir.path().join("pyfcgi.sock");
    let spec = format!("{}:app", app.display());
    let mut cmd = serve_command(&[&spec, "--reload"]);
    cmd.arg("--bind")
        .arg(format!("unix:{}", sock.display()))
        .env("PYFCGI_LOG", "info")
        .stdin(Stdio::null());
    let server = Server::from_command(cmd, None);
    let params = Nginx::fastcgi_params();
    let nginx = Nginx::start(
        &format!("upstream pyfcgi {{ server unix:{}; }}", sock.display()),
        &format!("location / {{ {params} fastcgi_pass pyfcgi; }}"),
    );
    let body = |_: ()| crate::support::http(nginx.port, "GET", "/", &[], b"").2;
    assert_eq!(body(()), b"1", "{}", server.log());
    std::fs::write(&app, version("2")).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) && body(()) != b"2" {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        body(()),
        b"2",
        "the change was not picked up: {}",
        server.log()
    );
    assert!(
        server.log().contains("--reload: file changed"),
        "{}",
        server.log()
    );
}

/// Parses Prometheus text: `name{labels}` → value; panics on a malformed sample line.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let base = name.split('{').next().unwrap();
        assert!(
            base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        out.insert(name.to_owned(), v);
    }
    out
}

#[test]
fn the_status_path_reports_every_worker_as_json_and_prometheus_and_the_access_log_has_each_request()
{
    let dir = TempDir::new("workers-status");
    let access = dir.path().join("logs").join("access.log");
    let s = Stack::start_ready(
        &[
            "--workers",
            "2",
            "--status-path",
            "/pyfcgi-status",
            "--access-log",
            access.to_str().unwrap(),
        ],
        &[],
    );
    for _ in 0..20 {
        get(s.nginx.port, "/").unwrap();
    }
    let (st, _, missing) = crate::support::http(s.nginx.port, "GET", "/sleep?0.01", &[], b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&missing));
    // The workers report once a second, the supervisor aggregates once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let (st, headers, body) = crate::support::http(s.nginx.port, "GET", "/pyfcgi-status", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert!(headers.contains("application/json"), "{headers}");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["ready"], true, "{doc}");
    assert_eq!(doc["supervised"], true);
    assert_eq!(doc["workers_alive"], 2, "{doc}");
    assert_eq!(doc["workers_ready"], 2, "{doc}");
    assert!(doc["requests"].as_u64().unwrap() >= 21, "{doc}");
    assert!(doc["responses"]["2xx"].as_u64().unwrap() >= 21, "{doc}");
    assert!(doc["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{doc}");
    let workers = doc["workers"].as_array().unwrap();
    assert!(
        workers.iter().all(|w| w["rss_mib"].as_u64().unwrap() > 0),
        "{doc}"
    );

    let (st, headers, body) = crate::support::http(
        s.nginx.port,
        "GET",
        "/pyfcgi-status?format=prometheus",
        &[],
        b"",
    );
    assert_eq!(st, 200);
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let m = parse_prometheus(&String::from_utf8_lossy(&body));
    assert_eq!(m["pyfcgi_up"], 1.0);
    assert_eq!(m["pyfcgi_workers_ready"], 2.0);
    assert!(m["pyfcgi_requests_total{class=\"2xx\"}"] >= 21.0, "{m:?}");
    assert!(
        m["pyfcgi_request_duration_seconds_bucket{le=\"+Inf\"}"] >= 21.0,
        "{m:?}"
    );
    assert!(m["pyfcgi_request_duration_seconds_count"] >= 21.0, "{m:?}");
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("pyfcgi_worker_resident_memory_bytes"))
            .count(),
        2,
        "{m:?}"
    );

    // The access log: one line per request from both workers (one file, append mode).
    let log = std::fs::read_to_string(&access).unwrap();
    assert!(
        log.lines()
            .filter(|l| l.contains(" \"GET /\" 200 "))
            .count()
            >= 20,
        "{log}"
    );
    assert!(log.contains(" \"GET /sleep?0.01\" 200 "), "{log}");
    assert!(
        log.lines()
            .all(|l| l.contains(" id=") && l.ends_with(char::is_numeric)),
        "{log}"
    );
}

#[test]
fn a_single_process_answers_the_status_path_too() {
    let s = Stack::start(&["--status-path", "/st"], &[]);
    get(s.nginx.port, "/").unwrap();
    let (st, _, body) = crate::support::http(s.nginx.port, "GET", "/st", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["supervised"], false);
    assert_eq!(doc["workers_alive"], 1);
    assert!(doc["requests"].as_u64().unwrap() >= 1, "{doc}");
}

/// GET `path` on the plain-HTTP `--status-bind` listener at `port`: (status, headers, body).
fn status_get(port: u16, path: &str) -> Option<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head, raw[split + 4..].to_vec()))
}

/// Starts the slow-importing app with `--status-bind` (and `extra`), checks that the status
/// listener says "not ready" (503) while the app imports, then ready once it serves.
fn readiness_follows_the_import(extra: &[&str], workers: u64) {
    let port = crate::support::free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut args = vec!["--status-bind", bind.as_str()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    // Stack::start returns once pyfcgi serves, so it runs aside while the status is polled.
    let starter = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Stack::start(&args, &[("WORKERS_APP_IMPORT_DELAY", "4")])
    });
    let end = Instant::now() + Duration::from_secs(10);
    let early = loop {
        if let Some(r) = status_get(port, "/") {
            break r;
        }
        assert!(Instant::now() < end, "the status listener never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(early.0, 503, "{}", String::from_utf8_lossy(&early.2));
    let doc: serde_json::Value = serde_json::from_slice(&early.2).unwrap();
    assert_eq!(doc["ready"], false, "{doc}");
    assert_eq!(doc["workers_ready"], 0, "{doc}");
    let (st, head, body) = status_get(port, "/metrics").unwrap();
    assert_eq!(st, 503);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(
        parse_prometheus(&String::from_utf8_lossy(&body))["pyfcgi_up"],
        0.0
    );

    let s = starter.join().unwrap();
    let ready = |doc: &serde_json::Value| {
        doc["ready"] == true && doc["workers_ready"].as_u64() == Some(workers)
    };
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _, body) = status_get(port, "/").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if st == 200 && ready(&doc) {
            break;
        }
        assert!(Instant::now() < end, "never ready: {doc}\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        get(s.nginx.port, "/").unwrap();
    }
    // Workers report once a second; a single process counts at once.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = status_get(port, "/?format=prometheus").unwrap();
        let m = parse_prometheus(&String::from_utf8_lossy(&body));
        if m["pyfcgi_requests_total{class=\"2xx\"}"] >= 10.0 {
            assert_eq!(m["pyfcgi_up"], 1.0);
            assert!(m.contains_key("pyfcgi_queue_depth"), "{m:?}");
            break;
        }
        assert!(Instant::now() < end, "requests never counted: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Not HTTP GET: refused clearly.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        c.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 405 "), "{raw}");
    }
}

#[test]
fn status_bind_says_not_ready_while_a_single_process_imports_the_app() {
    readiness_follows_the_import(&[], 1);
}

#[test]
fn status_bind_on_the_supervisor_says_not_ready_until_the_workers_imported_the_app() {
    readiness_follows_the_import(&["--workers", "2"], 2);
}

#[test]
fn the_totals_keep_the_requests_of_replaced_workers() {
    let port = crate::support::free_port();
    let bind = format!("127.0.0.1:{port}");
    let s = Stack::start_ready(&["--workers", "2", "--status-bind", &bind], &[]);
    for _ in 0..30 {
        get(s.nginx.port, "/").unwrap();
    }
    kill(s.server.pid(), libc::SIGHUP);
    assert!(
        s.wait_count("worker ready", 4, Duration::from_secs(30)),
        "{}",
        s.logs()
    );
    assert!(
        s.wait_count("worker exited", 2, Duration::from_secs(30)),
        "{}",
        s.logs()
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = status_get(port, "/").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // Only new workers are left, and the old ones' 30 requests are still counted.
        let old_gone = doc["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["requests"] == 0));
        if old_gone && doc["restarts"] == 2 {
            assert!(doc["requests"].as_u64().unwrap() >= 30, "{doc}");
            assert!(doc["latency_ms"]["count"].as_u64().unwrap() >= 30, "{doc}");
            break;
        }
        assert!(Instant::now() < end, "{doc}\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unix_socket_group_and_mode_are_applied_and_bad_names_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("sock-perms");
    let sock = dir.path().join("perms.sock");
    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    let mut cmd = serve_command(&[
        "--builtin",
        "hello",
        "--socket-mode",
        "660",
        "--socket-group",
        &gid.to_string(),
    ]);
    cmd.arg("--bind")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null());
    let server = Server::from_command(cmd, None);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    drop(server);

    let out = crate::support::run_pyfcgi(
        &[
            "serve",
            "--builtin",
            "hello",
            "--bind",
            &format!("unix:{}", dir.path().join("b.sock").display()),
            "--socket-group",
            "no-such-group-pyfcgi",
        ],
        &[],
        None,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("invalid --socket-group") && out.stderr.contains("no group named"),
        "{out:?}"
    );
    assert!(!dir.path().join("b.sock").exists());
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket_with_workers() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("systemd");
    let sock = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    // As systemd does: the socket on descriptor 3, LISTEN_PID = the service's own pid.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --builtin hello --workers 2")
        .arg(crate::support::pyfcgi())
        .env("PYFCGI_LOG", "info")
        .stdin(Stdio::null());
    // SAFETY: dup2 in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2(3, 3) would keep close-on-exec.
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let s = Server::from_command(cmd, None);
    drop(listener);
    let params = Nginx::fastcgi_params();
    let nginx = Nginx::start(
        &format!("upstream pyfcgi {{ server unix:{}; }}", sock.display()),
        &format!("location / {{ {params} fastcgi_pass pyfcgi; }}"),
    );
    let (st, _, body) = crate::support::http(nginx.port, "GET", "/", &[], b"");
    assert_eq!(
        (st, body.as_slice()),
        (200, &b"Hello, World!"[..]),
        "{}",
        s.log()
    );
    assert!(s.log().contains("socket activation"), "{}", s.log());
    assert!(s.wait_log("worker ready"), "{}", s.log());
}

#[test]
fn request_timeout_answers_504_logs_the_python_stack_and_replaces_a_stuck_worker() {
    let s = Stack::start(&["--workers", "1", "--request-timeout", "1"], &[]);
    assert!(
        s.wait_count("worker ready", 1, Duration::from_secs(20)),
        "{}",
        s.logs()
    );
    let t0 = Instant::now();
    let (st, _, body) = crate::support::http(s.nginx.port, "GET", "/sleep?4", &[], b"");
    let took = t0.elapsed();
    assert_eq!(st, 504, "{}", s.logs());
    assert!(String::from_utf8_lossy(&body).contains("did not answer within 1 s"));
    assert!(took < Duration::from_millis(3500), "the 504 took {took:?}");
    assert!(
        s.wait_count("over --request-timeout", 1, Duration::from_secs(5)),
        "{}",
        s.logs()
    );
    let log = s.server.log();
    assert!(
        log.contains("workers_app.py") && log.contains("time.sleep("),
        "no Python stack in the log: {log}"
    );
    // At twice the timeout the worker counts as stuck: it stops and a new one takes over.
    assert!(
        s.wait_count("this worker is stuck", 1, Duration::from_secs(10)),
        "{}",
        s.logs()
    );
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(20)),
        "{}",
        s.logs()
    );
    let t0 = Instant::now();
    while get(s.nginx.port, "/").is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get(s.nginx.port, "/").is_ok(), "{}", s.logs());
}

/// One sample as the reference parser (`prometheus_client`) reads it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
    /// The family's type.
    kind: String,
}

/// Parses `text` with Prometheus's reference parser (`prometheus_client`, in the test venv),
/// and checks it with `promtool check metrics` when promtool is installed.
fn parse_with_reference(text: &str) -> Vec<Sample> {
    use std::io::Write;
    const SCRIPT: &str = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       print(json.dumps({'name': s.name, 'labels': s.labels, 'value': s.value, 'kind': f.type}))\n";
    let python = Path::new(crate::python_nginx::venv()).join("bin/python");
    let run = |cmd: &mut std::process::Command| {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(std::process::Command::new(&python).args(["-c", SCRIPT]));
    assert!(
        out.status.success(),
        "prometheus_client rejects the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let check = run(std::process::Command::new("promtool").args(["check", "metrics"]));
        assert!(
            check.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = |k: &str| v[k].as_str().unwrap().to_owned();
            Sample {
                name: text("name"),
                labels: v["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                value: v["value"].as_f64().unwrap(),
                kind: text("kind"),
            }
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels` (panics when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {samples:?}"))
        .value
}

/// The `slot` labels of the samples of `name`.
fn slots_of(samples: &[Sample], name: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get("slot").cloned())
        .collect()
}

/// Checks a scrape's histogram: cumulative buckets in `le` order ending with +Inf = _count.
fn check_histogram(samples: &[Sample]) -> f64 {
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == "pyfcgi_request_duration_seconds_bucket")
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    let count = value(samples, "pyfcgi_request_duration_seconds_count", &[]);
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
    assert!(value(samples, "pyfcgi_request_duration_seconds_sum", &[]) > 0.0);
    assert!(
        samples
            .iter()
            .any(|s| s.name.starts_with("pyfcgi_request_duration_seconds") && s.kind == "histogram")
    );
    count
}

#[test]
fn metrics_follow_prometheus_conventions_with_a_histogram_and_series_by_worker_slot() {
    let (s, port) = Stack::start_with_status();
    // Status requests first: were they counted, the totals below would be over 20.
    for _ in 0..5 {
        let (st, _, _) = crate::support::http(s.nginx.port, "GET", "/pyfcgi-status", &[], b"");
        assert_eq!(st, 200, "{}", s.logs());
    }
    for _ in 0..20 {
        get(s.nginx.port, "/").unwrap();
    }
    let scrape = |path: &str| {
        let (st, head, body) = status_get(port, path).unwrap();
        assert_eq!(st, 200, "{head}");
        String::from_utf8(body).unwrap()
    };
    // Workers report once a second: wait until every app request is counted.
    let end = Instant::now() + Duration::from_secs(15);
    let samples = loop {
        let samples = parse_with_reference(&scrape("/metrics"));
        let total: f64 = samples
            .iter()
            .filter(|s| s.name == "pyfcgi_requests_total")
            .map(|s| s.value)
            .sum();
        if total >= 20.0 {
            assert_eq!(total, 20.0, "the status path's requests were counted");
            break samples;
        }
        assert!(Instant::now() < end, "requests never counted: {samples:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(check_histogram(&samples), 20.0);
    let build = samples
        .iter()
        .find(|s| s.name == "pyfcgi_build_info")
        .expect("pyfcgi_build_info");
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        !build.labels["revision"].is_empty() && build.labels["python"].starts_with("3."),
        "{build:?}"
    );
    let both: BTreeSet<String> = ["0", "1"].iter().map(|s| (*s).to_owned()).collect();
    for family in [
        "pyfcgi_worker_ready",
        "pyfcgi_worker_requests_total",
        "pyfcgi_worker_requests_in_flight",
        "pyfcgi_worker_resident_memory_bytes",
        "pyfcgi_worker_restarts_total",
        "pyfcgi_worker_cpu_seconds_total",
        "pyfcgi_worker_open_fds",
    ] {
        assert_eq!(slots_of(&samples, family), both, "{family}: {samples:?}");
    }
    // Each worker has imported Python and holds its sockets and files.
    for s in samples.iter().filter(|s| {
        s.name == "pyfcgi_worker_cpu_seconds_total" || s.name == "pyfcgi_worker_open_fds"
    }) {
        assert!(s.value > 0.0, "{s:?}");
    }
    assert!(
        samples.iter().all(|s| !s.labels.contains_key("pid")),
        "a series by pid: {samples:?}"
    );
    let by_slot: f64 = samples
        .iter()
        .filter(|s| s.name == "pyfcgi_worker_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(by_slot, 20.0);
    for name in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(value(&samples, name, &[]) > 0.0, "{name}");
    }
    // The status path serves the same families (from the supervisor's file).
    let (st, _, body) = crate::support::http(
        s.nginx.port,
        "GET",
        "/pyfcgi-status?format=prometheus",
        &[],
        b"",
    );
    assert_eq!(st, 200);
    let via_path = parse_with_reference(&String::from_utf8_lossy(&body));
    check_histogram(&via_path);
    assert_eq!(slots_of(&via_path, "pyfcgi_worker_ready"), both);
    let doc: serde_json::Value = serde_json::from_str(&scrape("/")).unwrap();
    let mut slots: Vec<u64> = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slot"].as_u64().unwrap())
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1], "{doc}");

    // A rolling restart: the replacements take the slots, so the series stay the same.
    kill(s.server.pid(), libc::SIGHUP);
    assert!(
        s.wait_count("worker ready", 4, Duration::from_secs(30)),
        "{}",
        s.logs()
    );
    assert!(
        s.wait_count("worker exited", 2, Duration::from_secs(30)),
        "{}",
        s.logs()
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = parse_with_reference(&scrape("/metrics"));
        let restarts: f64 = samples
            .iter()
            .filter(|s| s.name == "pyfcgi_worker_restarts_total")
            .map(|s| s.value)
            .sum();
        if restarts == 2.0 && value(&samples, "pyfcgi_workers_alive", &[]) == 2.0 {
            for family in ["pyfcgi_worker_ready", "pyfcgi_worker_requests_total"] {
                assert_eq!(slots_of(&samples, family), both, "{family}: {samples:?}");
            }
            for slot in ["0", "1"] {
                assert_eq!(
                    value(&samples, "pyfcgi_worker_restarts_total", &[("slot", slot)]),
                    1.0
                );
            }
            // The counters keep the replaced workers' requests.
            let by_slot: f64 = samples
                .iter()
                .filter(|s| s.name == "pyfcgi_worker_requests_total")
                .map(|s| s.value)
                .sum();
            assert!(by_slot >= 20.0, "{samples:?}");
            assert!(check_histogram(&samples) >= 20.0);
            break;
        }
        assert!(Instant::now() < end, "{samples:?}\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `pyfcgi top ARGS --once`: (exit code, stdout, stderr).
fn top_once(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["top"];
    all.extend_from_slice(args);
    all.push("--once");
    let out = crate::support::run_pyfcgi(&all, &[], None, Duration::from_secs(20));
    (out.code(), out.stdout_str(), out.stderr)
}

/// Checks a `pyfcgi top --once` frame of a `--workers 2` server: the totals, a row per slot.
fn check_top_frame(args: &[&str], logs: &dyn Fn() -> String) {
    let (code, out, err) = top_once(args);
    assert_eq!(code, Some(0), "{err}\n{}", logs());
    assert!(!out.contains('\u{1b}'), "escape codes in --once: {out:?}");
    assert!(
        out.contains("workers 2 alive, 2 ready") && out.contains("latency p50 "),
        "{out}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" MiB") && l.contains(" ready "))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let slots: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert_eq!(slots, BTreeSet::from(["0", "1"]), "{out}");
    let (code, json, err) = top_once(&[args, &["--json"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["workers"].as_array().map(Vec::len), Some(2), "{doc}");
}

#[test]
fn top_shows_every_worker_over_tcp_fastcgi_and_a_unix_socket_and_names_an_unreachable_endpoint() {
    let (s, port) = Stack::start_with_status();
    let bind = format!("127.0.0.1:{port}");
    for _ in 0..10 {
        get(s.nginx.port, "/").unwrap();
    }
    // The supervisor publishes readiness within a second of it: wait for both.
    let end = Instant::now() + Duration::from_secs(10);
    while top_once(&[&bind]).1.matches(" ready ").count() < 2 {
        assert!(Instant::now() < end, "{}", s.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    check_top_frame(&[&bind], &|| s.logs());
    let fcgi = format!("unix:{}", s.sock.display());
    check_top_frame(&[&fcgi, "--status-path", "/pyfcgi-status"], &|| s.logs());

    // A --status-bind on a Unix socket, given as a path.
    let dir = TempDir::new("top-unix");
    let status_sock = dir.path().join("status.sock");
    let u = Stack::start_ready(
        &[
            "--workers",
            "2",
            "--status-bind",
            &format!("unix:{}", status_sock.display()),
        ],
        &[],
    );
    let path = status_sock.display().to_string();
    let end = Instant::now() + Duration::from_secs(10);
    while top_once(&[&path]).1.matches(" ready ").count() < 2 {
        assert!(Instant::now() < end, "{}", u.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    check_top_frame(&[&path], &|| u.logs());

    // Nothing there: said clearly, with what to check, and a non-zero exit.
    let nobody = format!("127.0.0.1:{}", crate::support::free_port());
    let (code, out, err) = top_once(&[&nobody]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("cannot read the status from http://{nobody}/"))
            && err.contains("Connection refused")
            && err.contains(&format!("--status-bind {nobody}?")),
        "{err}"
    );
    let (code, _, err) = top_once(&[&fcgi, "--status-path", "/not-the-status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--status-path /not-the-status"), "{err}");
}

/// Runs `pyfcgi top ADDRESS --interval 0.2` under a pseudo-terminal until it has drawn the
/// worker table twice, then `mode`: "q" stops the server (`server`), waits for the view to say
/// the endpoint is lost and presses q; "term" sends the view SIGTERM; "hang" freezes the
/// server (SIGSTOP), waits until the view's next request sits unanswered in the listener's
/// accept queue, presses q and lets the server go on (SIGCONT). Returns (exit code and
/// whether the step was done, everything the terminal got, seconds from the step to the
/// view's exit).
fn top_in_pty(mode: &str, server: u32, address: &str) -> (String, String, f64) {
    const SCRIPT: &str = r#"
import os, pty, select, signal, sys, time
mode, server = sys.argv[1], int(sys.argv[2])
port = int(sys.argv[5].rsplit(":", 1)[1]) if mode == "hang" else 0

def accept_queue():
    # A listening socket's rx_queue in /proc/net/tcp is its accept queue's length.
    for line in open("/proc/net/tcp").readlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
            return int(f[4].split(":")[1], 16)
    return 0

pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[3], sys.argv[3:])
buf, stopped, sent, at = b"", False, False, time.time()
end = time.time() + 30
while time.time() < end:
    if not stopped and buf.count(b"SLOT") >= 2:
        if mode == "q":
            os.kill(server, signal.SIGTERM)
        elif mode == "hang":
            os.kill(server, signal.SIGSTOP)
        else:
            os.kill(pid, signal.SIGTERM)
            sent, at = True, time.time()
        stopped = True
    if stopped and not sent and mode == "q" and b"endpoint lost" in buf:
        os.write(fd, b"q")
        sent, at = True, time.time()
    if stopped and not sent and mode == "hang" and accept_queue() > 0:
        os.write(fd, b"q")
        sent, at = True, time.time()
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            d = os.read(fd, 65536)
        except OSError:
            break
        if not d:
            break
        buf += d
if not sent:
    os.kill(pid, 9)
_, st = os.waitpid(pid, 0)
took = time.time() - at
if mode == "hang":
    os.kill(server, signal.SIGCONT)
print(os.waitstatus_to_exitcode(st), int(sent))
print(buf.hex())
print(took)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, mode, &server.to_string()])
        .args([crate::support::pyfcgi(), "top", address])
        .args(["--interval", "0.2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let hex = lines.next();
    let took = lines
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::NAN);
    let screen = hex
        .and_then(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| {
            format!(
                "no output; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (status, screen, took)
}

/// The terminal got the alternate screen, then left it at the very end, cursor shown again.
fn check_terminal_restored(screen: &str) {
    let enter = screen
        .find("\u{1b}[?1049h")
        .expect("alternate screen entered");
    let leave = screen
        .rfind("\u{1b}[?1049l")
        .expect("alternate screen left");
    assert!(enter < leave && screen[leave..].len() <= 16, "{screen:?}");
    assert!(
        screen.contains("\u{1b}[?25h"),
        "cursor shown again: {screen:?}"
    );
}

#[test]
fn top_live_view_draws_frames_says_when_the_endpoint_is_lost_and_restores_the_terminal() {
    let port = crate::support::free_port();
    let bind = format!("127.0.0.1:{port}");
    let s = Stack::start_ready(&["--workers", "2", "--status-bind", &bind], &[]);
    // SIGTERM (a closed terminal's SIGHUP the same) ends the view like q.
    let (status, screen, _) = top_in_pty("term", s.server.pid(), &bind);
    assert_eq!(status, "0 1", "exit code, SIGTERM sent: {screen:?}");
    assert!(screen.contains("workers 2 alive"), "{screen:?}");
    check_terminal_restored(&screen);
    // A server that hangs (accepts, never answers) does not keep q from quitting: the view
    // reads the status on a thread of its own, and would otherwise wait out its 5 s timeout.
    let (status, screen, took) = top_in_pty("hang", s.server.pid(), &bind);
    assert_eq!(status, "0 1", "exit code, q sent: {screen:?}\n{}", s.logs());
    eprintln!("top quit {took:.2} s after q against a hung endpoint");
    assert!(took < 2.5, "q took {took:.2} s against a hung endpoint");
    check_terminal_restored(&screen);
    // The server goes away: the view says so and keeps retrying until q.
    let (status, screen, _) = top_in_pty("q", s.server.pid(), &bind);
    assert_eq!(status, "0 1", "exit code, q sent: {screen:?}\n{}", s.logs());
    assert!(
        screen.contains("!! endpoint lost: cannot connect") && screen.contains("retrying every"),
        "{screen:?}"
    );
    check_terminal_restored(&screen);
}

// ---- Rolling restarts and recycling keep kept connections (docs/deployment.md, "Kept
// connections across a restart"). `pyfcgi bench` talks FastCGI straight to the workers with
// FCGI_KEEP_CONN and does not retry, like Apache or lighttpd: a kept connection closed by a
// retiring worker just as a request arrives on it is a failed request.

/// `pyfcgi serve` of the workers app on a unix socket, with `extra` flags, the access log
/// giving the pid of the worker that answered each request.
struct Supervised {
    server: Server,
    sock: std::path::PathBuf,
    access: std::path::PathBuf,
    _dir: TempDir,
}

impl Supervised {
    fn start(extra: &[&str]) -> Self {
        let dir = TempDir::new("handover");
        let sock = dir.path().join("pyfcgi.sock");
        let access = dir.path().join("access.log");
        let spec = app_spec();
        let access_arg = access.display().to_string();
        let mut args = vec![
            spec.as_str(),
            "--access-log",
            access_arg.as_str(),
            "--access-log-format",
            "{pid} {status}",
        ];
        args.extend_from_slice(extra);
        let server = Server::on_unix_socket(&args, &sock);
        Self {
            server,
            sock,
            access,
            _dir: dir,
        }
    }

    /// Waits until the log has `needle` `n` times; false after `limit`.
    fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.server.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The pids in the access log, one per request.
    fn answered_by(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.access)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Waits until the access log has at least `n` requests; false after `limit`.
    fn wait_requests(&self, n: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.answered_by().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The pids of the workers with supervisor ids `ids` ("worker started worker=N pid=P").
    fn pids_of(&self, ids: std::ops::RangeInclusive<u64>) -> BTreeSet<u32> {
        let field = |line: &str, key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .parse()
                .ok()
        };
        self.server
            .log()
            .lines()
            .filter(|l| l.contains("worker started"))
            .filter_map(|l| Some((field(l, "worker=")?, field(l, "pid=")?)))
            .filter(|(id, _)| ids.contains(id))
            .filter_map(|(_, pid)| u32::try_from(pid).ok())
            .collect()
    }
}

/// `pyfcgi bench` running in the background against `sock`, kept connections (its default).
struct BenchRun {
    child: std::process::Child,
    out: std::sync::mpsc::Receiver<(String, String)>,
}

impl BenchRun {
    fn start(sock: &Path, args: &[&str]) -> Self {
        use std::io::Read;
        let mut child = std::process::Command::new(crate::support::pyfcgi())
            .arg("bench")
            .arg("--connect")
            .arg(format!("unix:{}", sock.display()))
            .args(args)
            .args(["--json", "/"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let err = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = se.read_to_string(&mut s);
                s
            });
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            let _ = tx.send((s, err.join().unwrap_or_default()));
        });
        Self { child, out }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The JSON report and bench's stderr, once it ends (killed after `limit`).
    fn finish(mut self, limit: Duration) -> (String, String) {
        let status = crate::support::wait_timeout(&mut self.child, limit);
        let (json, err) = self
            .out
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        assert!(status.is_some(), "bench did not finish: {err}");
        (json, err)
    }

    /// [`BenchRun::finish`], then checks that no request failed (the log shows what the
    /// server saw when one did); prints `what: N ok, 0 failed` and returns (ok, the report).
    fn finish_with_none_failed(
        self,
        limit: Duration,
        what: &str,
        log: &dyn Fn() -> String,
    ) -> (u64, String) {
        let (json, err) = self.finish(limit);
        let failed = report_u64(&json, "error_total");
        let ok = report_u64(&json, "ok");
        eprintln!("{what}: {ok} ok, {failed} failed");
        assert_eq!(failed, 0, "{json}\n{err}\n{}", log());
        (ok, json)
    }
}

/// The integer value of `"key":N` in bench's one-line JSON report.
fn report_u64(json: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    json.find(&needle)
        .map(|at| {
            json[at + needle.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the report: {json:?}"))
}

#[test]
fn two_rolling_restarts_under_bench_on_kept_connections_fail_no_request() {
    let s = Supervised::start(&["--workers", "2"]);
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(30)),
        "{}",
        s.server.log()
    );
    let mut bench = BenchRun::start(&s.sock, &["-c", "8", "-d", "15"]);
    assert!(
        s.wait_requests(200, Duration::from_secs(20)),
        "bench is not running: {}",
        s.server.log()
    );
    for round in 1..=2 {
        kill(s.server.pid(), libc::SIGHUP);
        // Both workers replaced: two new ones ready, two old ones gone.
        assert!(
            s.wait_count("worker ready", 2 + 2 * round, Duration::from_secs(60))
                && s.wait_count("worker exited", 2 * round, Duration::from_secs(60)),
            "rolling restart {round} did not finish: {}",
            s.server.log()
        );
        let before = s.answered_by().len();
        assert!(
            s.wait_requests(before + 200, Duration::from_secs(20)),
            "no requests after restart {round}: {}",
            s.server.log()
        );
    }
    assert!(
        bench.running(),
        "bench ended before the second restart did: raise its -d"
    );
    let (ok, json) = bench.finish_with_none_failed(
        Duration::from_secs(60),
        "two rolling restarts under bench",
        &|| s.server.log(),
    );
    assert!(ok > 600, "{json}");
    let answered: BTreeSet<u32> = s.answered_by().into_iter().collect();
    let (first, last) = (s.pids_of(1..=2), s.pids_of(5..=6));
    assert!(
        !answered.is_disjoint(&first) && !answered.is_disjoint(&last),
        "an old and a new worker should have answered: {answered:?}, first {first:?}, last {last:?}"
    );
    assert!(
        s.server.log().contains("kept connections handed over"),
        "no connection was handed over: {}",
        s.server.log()
    );
}

#[test]
fn max_requests_recycling_under_bench_on_kept_connections_fails_no_request() {
    let port = crate::support::free_port();
    let bind = format!("127.0.0.1:{port}");
    let s = Supervised::start(&[
        "--workers",
        "2",
        "--max-requests",
        "150",
        "--status-bind",
        &bind,
    ]);
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(30)),
        "{}",
        s.server.log()
    );
    // 1500 requests over workers that each serve 150: about ten recycles.
    let bench = BenchRun::start(&s.sock, &["-c", "8", "-n", "1500"]);
    let (ok, json) = bench.finish_with_none_failed(
        Duration::from_secs(120),
        "--max-requests 150 under bench",
        &|| s.server.log(),
    );
    let recycled = s.server.log().matches("worker exited with code 0").count();
    eprintln!("--max-requests 150 under bench: {recycled} workers recycled");
    assert_eq!(ok, 1500, "{json}");
    assert!(recycled >= 4, "workers did not recycle: {}", s.server.log());
    let answered: BTreeSet<u32> = s.answered_by().into_iter().collect();
    assert!(answered.len() >= 5, "{answered:?}");
    // The metrics count the hand-overs (the supervisor publishes within a second).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = status_get(port, "/metrics").unwrap();
        let samples = parse_with_reference(&String::from_utf8_lossy(&body));
        let handed = value(&samples, "pyfcgi_connections_handed_over_total", &[]);
        if handed > 0.0 {
            eprintln!("--max-requests 150 under bench: {handed} connections handed over");
            assert_eq!(
                value(&samples, "pyfcgi_connections_handover_closed_total", &[]),
                0.0
            );
            assert_eq!(
                value(&samples, "pyfcgi_connections_handover_held", &[]),
                0.0
            );
            break;
        }
        assert!(Instant::now() < end, "no hand-over counted: {samples:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_rolling_restarts_behind_nginx_that_does_not_retry_fail_no_request() {
    // `fastcgi_next_upstream off`: nginx does not retry a request whose kept upstream
    // connection closed under it (its default hides such a close), as Apache and lighttpd do not.
    let s = Stack::start_with(&["--workers", "2"], &[], "fastcgi_next_upstream off;");
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(30)),
        "{}",
        s.logs()
    );
    let load = Load::start(s.nginx.port, 6, "/");
    let first = get(s.nginx.port, "/").unwrap();
    for round in 1..=2 {
        kill(s.server.pid(), libc::SIGHUP);
        assert!(
            s.wait_count("worker ready", 2 + 2 * round, Duration::from_secs(60))
                && s.wait_count("worker exited", 2 * round, Duration::from_secs(60)),
            "rolling restart {round} did not finish: {}",
            s.logs()
        );
    }
    // The load goes on against the new workers only.
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = first;
    while last == first && Instant::now() < end {
        last = get(s.nginx.port, "/").unwrap_or(first);
    }
    let (ok, failed) = load.finish();
    eprintln!(
        "two rolling restarts behind nginx: {} ok, {} failed",
        ok.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        s.logs()
    );
    assert_ne!(last, first, "a new worker never answered: {}", s.logs());
    assert!(pids(&ok).contains(&first), "{:?}", pids(&ok));
    assert!(ok.len() > 100, "only {} requests", ok.len());
}

#[test]
fn worker_lifetime_replacements_under_bench_on_kept_connections_fail_no_request() {
    // --worker-lifetime (like --max-rss) replaces a worker the way a rolling restart does.
    let s = Supervised::start(&["--workers", "2", "--worker-lifetime", "1"]);
    assert!(
        s.wait_count("worker ready", 2, Duration::from_secs(30)),
        "{}",
        s.server.log()
    );
    let mut bench = BenchRun::start(&s.sock, &["-c", "8", "-d", "10"]);
    assert!(
        s.wait_count("--worker-lifetime reached", 2, Duration::from_secs(30))
            && s.wait_count("worker exited", 2, Duration::from_secs(30)),
        "no worker was replaced: {}",
        s.server.log()
    );
    assert!(
        bench.running(),
        "bench ended before the replacements did: raise its -d"
    );
    let (ok, json) = bench.finish_with_none_failed(
        Duration::from_secs(60),
        "--worker-lifetime under bench",
        &|| s.server.log(),
    );
    assert!(ok > 300, "{json}");
}

#[test]
fn a_single_worker_recycled_by_max_requests_has_its_kept_connections_held_until_the_next_is_ready()
{
    // With one worker there is nobody to take them at once: the supervisor holds them.
    let s = Supervised::start(&["--workers", "1", "--max-requests", "200"]);
    assert!(
        s.wait_count("worker ready", 1, Duration::from_secs(30)),
        "{}",
        s.server.log()
    );
    let bench = BenchRun::start(&s.sock, &["-c", "8", "-n", "800"]);
    let (ok, json) = bench.finish_with_none_failed(
        Duration::from_secs(120),
        "one worker, --max-requests 200 under bench",
        &|| s.server.log(),
    );
    assert_eq!(ok, 800, "{json}");
    assert!(
        s.wait_count("worker exited with code 0", 2, Duration::from_secs(20)),
        "the worker was not recycled: {}",
        s.server.log()
    );
    let log = s.server.log();
    assert!(log.contains("holding it until one is ready"), "{log}");
}
