//! The FastAPI example (examples/fastapi_app) as ASGI through real nginx: JSON, a form, a
//! 20 MB multipart upload with bounded server memory, server-sent events that arrive one by
//! one, a background task, lifespan state, and a client that leaves an SSE stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Nginx, Server, TempDir, http, serve_command};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An example app served by `pyfcgi serve` on a Unix socket, behind nginx (also used by
/// the Starlette tests).
pub(crate) struct Stack {
    pub(crate) server: Server,
    pub(crate) nginx: Nginx,
    _dir: TempDir,
}

impl Stack {
    fn start() -> Self {
        Self::example("examples/fastapi_app/main.py")
    }

    /// Serves `path` (relative to the repository), attribute `app`.
    pub(crate) fn example(path: &str) -> Self {
        let dir = TempDir::new("asgi-example");
        let sock = dir.path().join("pyfcgi.sock");
        let spec = format!("{}:app", repo().join(path).display());
        let venv = crate::python_nginx::venv();
        let mut cmd = serve_command(&[&spec, "--venv", venv]);
        cmd.arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null());
        let server = Server::from_command(cmd, Some(dir));
        let upstream = format!("upstream pyfcgi {{ server {}; keepalive 4; }}", server.addr);
        let params = Nginx::fastcgi_params();
        let nginx = Nginx::start(
            &upstream,
            &format!(
                "location / {{ {params} fastcgi_keep_conn on; fastcgi_pass pyfcgi; \
                 client_max_body_size 100m; }}
                 location ~ ^/(sse|ticks)$ {{ {params} fastcgi_keep_conn on; fastcgi_buffering off;
                                   fastcgi_pass pyfcgi; }}"
            ),
        );
        let dir = TempDir::new("fastapi-keep");
        Self {
            server,
            nginx,
            _dir: dir,
        }
    }

    pub(crate) fn logs(&self) -> String {
        format!(
            "--- pyfcgi:\n{}\n--- nginx:\n{}",
            self.server.log(),
            self.nginx.error_log()
        )
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fastapi_json_form_background_task_and_lifespan() {
    let s = Stack::start();
    assert!(
        s.server.log().contains("serving an ASGI application"),
        "{}",
        s.logs()
    );
    let (st, _, body) = http(s.nginx.port, "GET", "/hello?name=asgi", &[], b"");
    assert_eq!(
        (st, text(&body)),
        (200, r#"{"message":"Hello, asgi!"}"#.into()),
        "{}",
        s.logs()
    );
    let item = br#"{"name":"pen","price":1.5,"tags":["a"]}"#;
    let (st, _, body) = http(
        s.nginx.port,
        "POST",
        "/items",
        &[("Content-Type", "application/json")],
        item,
    );
    assert_eq!(st, 200, "{}", s.logs());
    assert_eq!(
        text(&body),
        r#"{"id":1,"name":"pen","price":1.5,"tags":["a"]}"#
    );
    // pydantic's validation error is the app's own 422.
    let (st, _, _) = http(
        s.nginx.port,
        "POST",
        "/items",
        &[("Content-Type", "application/json")],
        br#"{"name":"pen"}"#,
    );
    assert_eq!(st, 422);
    let (st, _, body) = http(
        s.nginx.port,
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=caf%C3%A9&colour=blue",
    );
    assert_eq!(
        (st, text(&body)),
        (200, r#"{"name":"café","colour":"blue"}"#.into())
    );
    let (st, _, body) = http(s.nginx.port, "POST", "/background?job=j1", &[], b"");
    assert_eq!((st, text(&body)), (200, r#"{"queued":"j1"}"#.into()));
    // The task runs after the response went out (in Starlette's thread pool): poll briefly.
    let t0 = Instant::now();
    let mut jobs = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        jobs = text(&http(s.nginx.port, "GET", "/jobs", &[], b"").2);
        if jobs.contains("j1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(jobs, r#"{"jobs":["j1"]}"#);
    let (_, _, body) = http(s.nginx.port, "GET", "/startup", &[], b"");
    assert_eq!(text(&body), r#"{"state":"lifespan startup ran"}"#);
}

#[test]
fn fastapi_20_mb_upload_keeps_memory_bounded() {
    let s = Stack::start();
    let payload: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let boundary = "pyfcgi-fastapi-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&payload);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    // Warm up (imports, first request) before measuring.
    http(s.nginx.port, "GET", "/hello", &[], b"");
    let before = s.rss_kib();
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let (st, _, resp) = http(
        s.nginx.port,
        "POST",
        "/upload",
        &[("Content-Type", &ctype)],
        &body,
    );
    let after = s.rss_kib();
    assert_eq!(st, 200, "{}", s.logs());
    let digest = {
        let mut c = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&payload).unwrap();
        let out = c.wait_with_output().unwrap();
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        text(&resp),
        format!(
            r#"{{"filename":"big.bin","size":{},"sha256":"{digest}"}}"#,
            payload.len()
        )
    );
    // The body is streamed (python-multipart spools to a temp file): no 20 MB copy.
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew by {} KiB during a 20 MB upload",
        after.saturating_sub(before)
    );
}

#[test]
fn fastapi_sse_events_arrive_one_by_one_and_a_leaving_client_is_fine() {
    let s = Stack::start();
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        let t = text(&all);
        while arrivals.len() < 5 && t.contains(&format!("data: tick {}\n", arrivals.len())) {
            arrivals.push(t0.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 5, "{}", text(&all));
    assert!(text(&all).contains("text/event-stream"));
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "events did not arrive separately: {arrivals:?}"
        );
    }
    // A client that leaves after the first event: the server stays healthy.
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = c.read(&mut buf).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(1500));
    let (st, _, _) = http(s.nginx.port, "GET", "/hello", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert!(!s.server.log().contains("panicked"), "{}", s.logs());
    // The app's stream stopped: its next send() raised (spec 2.4), Starlette turned that into
    // ClientDisconnect, and the task ended. Not an application error.
    assert!(
        s.server
            .log()
            .contains("the client went away; the application stopped with ClientDisconnect"),
        "{}",
        s.logs()
    );
    assert!(
        !s.server.log().contains("ASGI application error"),
        "{}",
        s.logs()
    );
}

#[test]
fn fastapi_under_the_iis_emulation_from_web_config() {
    let dir = TempDir::new("fastapi-iis");
    std::fs::copy(
        repo().join("examples/fastapi_app/main.py"),
        dir.path().join("main.py"),
    )
    .unwrap();
    let venv = crate::python_nginx::venv();
    std::fs::write(
        dir.path().join("web.config"),
        format!(
            "<configuration><appSettings><add key=\"WSGI_HANDLER\" value=\"main.app\"/>\
             <add key=\"PYFCGI_VENV\" value=\"{venv}\"/></appSettings></configuration>"
        ),
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let exe = crate::support::pyfcgi();
    // With --app-root (what `pyfcgi iis enable` writes), and without: then the first
    // request's APPL_PHYSICAL_PATH names the folder, and the app is loaded from it.
    for serve in [&["serve", "--app-root", &root][..], &["serve"][..]] {
        let out = Command::new(exe)
            .args([
                "request",
                "--timeout",
                "30",
                "--spawn",
                "--iis",
                "-s",
                "--repeat",
                "2",
            ])
            .arg("--param")
            .arg(format!("APPL_PHYSICAL_PATH={root}/"))
            .args([
                "--param",
                "APPL_MD_PATH=/LM/W3SVC/1/ROOT/api",
                "/api/hello?name=iis",
                "--",
            ])
            .arg(exe)
            .args(serve)
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{serve:?}: {stdout}\n{stderr}");
        // root_path /api (from APPL_MD_PATH) is stripped by Starlette's router.
        assert_eq!(
            stdout.matches(r#"{"message":"Hello, iis!"}"#).count(),
            2,
            "{serve:?}: {stdout}\n{stderr}"
        );
    }
}
