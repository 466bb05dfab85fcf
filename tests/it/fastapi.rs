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

    /// Serves `path` (relative to the repository), attribute `app`, behind the shipped
    /// nginx site config.
    pub(crate) fn example(path: &str) -> Self {
        Self::with(path, true, &[])
    }

    /// [`Self::example`] with `fastcgi_keep_conn` on or off and extra `serve` arguments.
    pub(crate) fn with(path: &str, keep_conn: bool, extra: &[&str]) -> Self {
        let dir = TempDir::new("asgi-example");
        let sock = dir.path().join("pyfcgi.sock");
        let spec = format!("{}:app", repo().join(path).display());
        let venv = crate::python_nginx::venv();
        let mut args = vec![spec.as_str(), "--venv", venv];
        args.extend_from_slice(extra);
        let mut cmd = serve_command(&args);
        cmd.arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null());
        let server = Server::from_command(cmd, Some(dir));
        let upstream = format!("upstream pyfcgi {{ server {}; keepalive 4; }}", server.addr);
        let mut locations = shipped_app_locations("pyfcgi");
        if !keep_conn {
            locations = locations.replace("fastcgi_keep_conn on;", "fastcgi_keep_conn off;");
        }
        let nginx = Nginx::start(&upstream, &locations);
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

/// The `location` block `name` (`/`, `/events/`) of configs/nginx-site.conf as shipped, but for
/// the upstream's name and the absolute path of nginx's fastcgi_params (the test nginx runs
/// with its own prefix).
pub(crate) fn shipped_location(name: &str, upstream: &str) -> String {
    let shipped = include_str!("../../configs/nginx-site.conf");
    let open = format!("    location {name} {{");
    let start = shipped
        .find(&open)
        .unwrap_or_else(|| panic!("configs/nginx-site.conf has no `location {name}` block"));
    let end = start + shipped[start..].find("\n    }").expect("the block ends") + "\n    }".len();
    shipped[start..end].replace("myapp", upstream).replace(
        "include fastcgi_params;",
        "include /etc/nginx/fastcgi_params;",
    )
}

/// The shipped site's locations that go to the app: `/events/` (streaming, unbuffered) and
/// `/`.
pub(crate) fn shipped_app_locations(upstream: &str) -> String {
    format!(
        "{}\n{}",
        shipped_location("/events/", upstream),
        shipped_location("/", upstream)
    )
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

/// Reads `path` through nginx to the end; returns the body and when each of the five
/// `data: tick N` events arrived.
fn read_ticks(port: u16, path: &str) -> (String, Vec<Duration>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
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
        // sse-starlette ends lines with \r\n, StreamingResponse here with \n.
        let t = text(&all).replace("\r\n", "\n");
        while arrivals.len() < 5 && t.contains(&format!("data: tick {}\n", arrivals.len())) {
            arrivals.push(t0.elapsed());
        }
    }
    (text(&all), arrivals)
}

fn assert_apart(arrivals: &[Duration], all: &str) {
    assert_eq!(arrivals.len(), 5, "{all}");
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "events did not arrive separately: {arrivals:?}"
        );
    }
}

#[test]
fn fastapi_sees_the_right_root_path_and_path_behind_the_shipped_nginx_config() {
    let s = Stack::start();
    for path in ["/whereami", "/whereami/"] {
        let (st, _, body) = http(s.nginx.port, "GET", path, &[], b"");
        if path.ends_with('/') {
            // FastAPI redirects to the route without the slash: the path it saw was right.
            assert_eq!(st, 307, "{}", s.logs());
            continue;
        }
        assert_eq!(
            (st, text(&body)),
            (200, r#"{"root_path":"","path":"/whereami"}"#.into()),
            "{}",
            s.logs()
        );
    }
}

#[test]
fn sse_starlette_event_source_streams_its_events_one_by_one() {
    // EventSourceResponse always sends `Connection: keep-alive`, a hop-by-hop header an ASGI
    // server must accept (and not pass on).
    let s = Stack::start();
    let (all, arrivals) = read_ticks(s.nginx.port, "/events/stream");
    assert!(all.starts_with("HTTP/1.1 200"), "{all}\n{}", s.logs());
    assert!(all.contains("text/event-stream"), "{all}");
    assert!(all.contains("event: tick"), "{all}");
    assert_apart(&arrivals, &all);
    assert!(
        !s.server.log().contains("ASGI application error"),
        "{}",
        s.logs()
    );
}

#[test]
fn fastapi_sse_events_arrive_one_by_one_and_a_leaving_client_is_fine() {
    let s = Stack::start();
    let (all, arrivals) = read_ticks(s.nginx.port, "/events/ticks");
    assert!(all.contains("text/event-stream"), "{all}");
    assert_apart(&arrivals, &all);
    let mut buf = [0u8; 4096];
    // A client that leaves after the first event: the server stays healthy.
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.write_all(b"GET /events/ticks HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = c.read(&mut buf).unwrap();
    drop(c);
    // The app's stream stopped: its next send() raised (spec 2.4), Starlette turned that into
    // ClientDisconnect, and the task ended. Not an application error.
    assert!(
        s.server
            .wait_log("the client went away; the application stopped with ClientDisconnect"),
        "{}",
        s.logs()
    );
    let (st, _, _) = http(s.nginx.port, "GET", "/hello", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert!(!s.server.log().contains("panicked"), "{}", s.logs());
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
