//! ASGI 3 through real nginx: the conformance probe (tests/apps/asgi_conformance.py) served by
//! `pyfcgi serve` (interface auto-detected) on a Unix socket, nginx in front. Checks the scope,
//! lifespan order, streamed uploads and responses, disconnects, and the spec's error rules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::{Role, encode};

use crate::support::{Nginx, Server, TempDir, http, serve_command};

fn app_spec() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/asgi_conformance.py");
    format!("{}:app", p.display())
}

struct Stack {
    server: Server,
    nginx: Nginx,
    dir: TempDir,
}

impl Stack {
    fn start(extra_env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("asgi");
        let sock = dir.path().join("pyfcgi.sock");
        let mut cmd = serve_command(&[&app_spec()]);
        cmd.arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .env("ASGI_TEST_LOG", dir.path().join("app.log"))
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let server = Server::from_command(cmd, None);
        let upstream = format!("upstream pyfcgi {{ server {}; keepalive 4; }}", server.addr);
        let params = Nginx::fastcgi_params();
        let nginx = Nginx::start(
            &upstream,
            &format!(
                "location / {{ {params} fastcgi_keep_conn on; fastcgi_buffering off; \
                 fastcgi_request_buffering off; client_max_body_size 100m; fastcgi_pass pyfcgi; }}"
            ),
        );
        Self { server, nginx, dir }
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        http(self.nginx.port, "GET", path, &[("X-Test", "yes")], b"")
    }

    /// A connection straight to pyfcgi's socket, bypassing nginx.
    fn connect(&self) -> std::os::unix::net::UnixStream {
        let c = std::os::unix::net::UnixStream::connect(self.dir.path().join("pyfcgi.sock"))
            .expect("connect to pyfcgi");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    }

    /// One request straight to pyfcgi's socket with the bundled client's framing.
    fn direct(&self, params: &[(&str, &str)]) -> crate::support::RawResponse {
        let mut c = self.connect();
        c.write_all(&crate::support::request_bytes(1, false, params, b""))
            .unwrap();
        crate::support::read_response(&mut c, 1).unwrap()
    }

    /// Waits up to 10 s for `needle` in the app's log.
    fn wait_app_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while !self.app_log().contains(needle) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.app_log().contains(needle)
    }

    fn app_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("app.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- pyfcgi:\n{}\n--- nginx:\n{}\n--- app:\n{}",
            self.server.log(),
            self.nginx.error_log(),
            self.app_log()
        )
    }
}

#[test]
fn the_scope_has_the_request_and_the_lifespan_state() {
    let s = Stack::start(&[]);
    let (status, _, body) = s.get("/scope?a=1&b=%20");
    assert_eq!(status, 200, "{}", s.logs());
    let body = String::from_utf8_lossy(&body).into_owned();
    for want in [
        r#""type": "http""#,
        r#""version": "3.0""#,
        r#""spec_version": "2.4""#,
        r#""path": "/scope""#,
        r#""raw_path": "/scope""#,
        r#""query_string": "a=1&b=%20""#,
        r#""root_path": """#,
        r#""method": "GET""#,
        r#""scheme": "http""#,
        r#""http_version": "1.1""#,
        r#"["x-test", "yes"]"#,
        r#""state": "hi from lifespan""#,
        r#""lifespan": ["lifespan.startup"]"#,
        r#""extensions": {"http.response.pathsend": {}}"#,
    ] {
        assert!(body.contains(want), "no {want} in {body}");
    }
    assert!(
        s.server.log().contains("serving an ASGI application"),
        "{}",
        s.logs()
    );
}

/// The SHA-256 of `data` in hex, from coreutils' sha256sum.
fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_20_mb_upload_streams_through_receive() {
    let s = Stack::start(&[]);
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, _, body) = http(s.nginx.port, "POST", "/upload", &[], &data);
    let digest = sha256_hex(&data);
    assert_eq!(status, 200, "{}", s.logs());
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("size={} sha256={digest}", data.len())
    );
}

#[test]
fn streamed_chunks_arrive_separately() {
    let s = Stack::start(&[]);
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut all = Vec::new();
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all).into_owned();
        for i in 0..5 {
            let marker = format!("event {i}\n");
            if text.contains(&marker) && seen.len() == i {
                seen.push(t0.elapsed());
            }
        }
    }
    assert_eq!(seen.len(), 5, "{}", String::from_utf8_lossy(&all));
    // The app sleeps 200 ms between events: they must not arrive in one lump.
    assert!(
        seen[4] - seen[0] >= Duration::from_millis(500),
        "events arrived together: {seen:?}"
    );
}

#[test]
fn a_client_that_leaves_makes_receive_say_disconnect() {
    let s = Stack::start(&[]);
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 8192];
    let _ = c.read(&mut buf).unwrap();
    drop(c);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) && !s.app_log().contains("disconnect seen") {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.app_log().contains("disconnect seen"), "{}", s.logs());
    // The server is still healthy.
    assert_eq!(s.get("/scope").0, 200);
}

#[test]
fn a_receive_cancelled_by_a_timeout_leaves_its_message_for_the_next_call() {
    let s = Stack::start(&[]);
    let mut c = s.connect();
    let mut head = BytesMut::new();
    encode::begin_request(&mut head, 1, Role::Responder, false);
    encode::params(
        &mut head,
        1,
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/wait-for-body"),
            ("CONTENT_LENGTH", "5000"),
        ],
    )
    .unwrap();
    encode::params_end(&mut head, 1);
    c.write_all(&head).unwrap();
    // Five 1000-byte STDIN records 100 ms apart: the app's 10 ms receive() timeouts fire
    // between them, each cancelling a read that Rust answers later.
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    for piece in body.chunks(1000) {
        std::thread::sleep(Duration::from_millis(100));
        let mut record = BytesMut::new();
        encode::stdin(&mut record, 1, piece);
        c.write_all(&record).unwrap();
    }
    let mut end = BytesMut::new();
    encode::stdin_end(&mut end, 1);
    c.write_all(&end).unwrap();
    // A lost message leaves the app waiting for the rest of the body: no response at all.
    let r = match crate::support::read_response(&mut c, 1) {
        Ok(r) => r,
        Err(e) => panic!(
            "no response ({e}): the app lost a body message?\n{}",
            s.logs()
        ),
    };
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let want = format!("size=5000 sha256={} timeouts=", sha256_hex(&body));
    let Some(at) = out.find(&want) else {
        panic!("want {want}...; got {out}\n{}", s.logs());
    };
    // The test is only worth something if receive() was cancelled along the way.
    let timeouts: u32 = out[at + want.len()..].trim().parse().unwrap();
    assert!(timeouts > 0, "no receive() timed out: {out}");
}

#[test]
fn starlette_is_disconnected_polling_turns_true_after_an_abort() {
    // asyncio's loop runs the cancel scope's cancellation before any reply to the read, so
    // every poll cancels a pending read (uvloop's order can let a fast reply win the race).
    for event_loop in ["asyncio", "uvloop"] {
        // The app's poll uses anyio, from the test venv.
        let s = Stack::start(&[
            ("PYFCGI_VENV", crate::python_nginx::venv()),
            ("PYFCGI_LOOP", event_loop),
        ]);
        let mut c = s.connect();
        c.write_all(&crate::support::request_bytes(
            1,
            false,
            &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/poll-disconnect")],
            b"",
        ))
        .unwrap();
        assert!(
            s.wait_app_log("poll-disconnect polling"),
            "{event_loop}: {}",
            s.logs()
        );
        let mut abort = BytesMut::new();
        encode::abort_request(&mut abort, 1);
        c.write_all(&abort).unwrap();
        assert!(
            s.wait_app_log("poll-disconnect: disconnected after"),
            "{event_loop}: {}",
            s.logs()
        );
        assert!(
            crate::support::read_response(&mut c, 1).is_ok(),
            "{event_loop}: {}",
            s.logs()
        );
    }
}

#[test]
fn spec_violations_and_exceptions_are_500_before_start_and_truncation_after() {
    let s = Stack::start(&[]);
    for path in [
        "/start-twice",
        "/body-before-start",
        "/raise-before",
        "/bad-header",
        "/no-response",
    ] {
        let (status, headers, body) = s.get(path);
        assert_eq!(status, 500, "{path}: {}", s.logs());
        assert!(
            !String::from_utf8_lossy(&body).contains("Traceback"),
            "{path} leaked a traceback"
        );
        assert!(
            !headers.to_ascii_lowercase().contains("owned"),
            "{path}: {headers}"
        );
    }
    // The last error's line is read from pyfcgi's stderr by another thread: wait for it.
    assert!(
        s.server.wait_log("without sending a response"),
        "{}",
        s.logs()
    );
    let log = s.server.log();
    for want in [
        "http.response.start sent twice",
        "http.response.body sent before http.response.start",
        "raised before start",
        "not allowed",
        "without sending a response",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    // After the first chunk the status is out: the response is cut short, the error logged.
    let (status, _, body) = s.get("/raise-after");
    assert_eq!(status, 200);
    assert_eq!(body, b"partial");
    // The log line is read from pyfcgi's stderr by another thread: wait for it.
    assert!(
        s.server.wait_log("raised after the first chunk"),
        "{}",
        s.logs()
    );
}

#[test]
fn hop_by_hop_headers_from_the_app_are_dropped_and_the_response_served() {
    let s = Stack::start(&[]);
    // Straight to pyfcgi: the CGI head it writes is exactly the app's other headers.
    let r = s.direct(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/hop-by-hop")]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "Status: 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nhop-by-hop ok",
        "{}",
        s.logs()
    );
    assert_eq!(r.app_status, 0);
    // The log says which header was dropped, for which request.
    assert!(
        s.server.wait_log("dropped a hop-by-hop response header"),
        "{}",
        s.logs()
    );
    let log = s.server.log();
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped a hop-by-hop response header"))
        .collect();
    for name in ["connection", "Transfer-Encoding", "Keep-Alive"] {
        assert!(
            dropped
                .iter()
                .any(|l| l.contains(&format!("header={name}")) && l.contains("request=")),
            "no line for {name}: {dropped:#?}"
        );
    }
    // Through nginx: a 200 with the whole body. The client asked for Connection: close, so
    // nginx's own Connection header says close; the app's keep-alive, Keep-Alive and
    // Transfer-Encoding (its Content-Length leaves nginx no reason to chunk) are not there.
    let (status, headers, body) = s.get("/hop-by-hop");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"hop-by-hop ok"[..]),
        "{}",
        s.logs()
    );
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close"), "{headers}");
    assert!(lower.contains("\r\ncontent-length: 13"), "{headers}");
    for absent in ["keep-alive", "transfer-encoding", "timeout=5"] {
        assert!(
            !lower.contains(absent),
            "{absent} reached the client:\n{headers}"
        );
    }
    // Injection is refused even in a header that would have been dropped.
    let (status, headers, _) = s.get("/bad-hop-header");
    assert_eq!(status, 500, "{}", s.logs());
    assert!(!headers.to_ascii_lowercase().contains("owned"), "{headers}");
    let (status, _, _) = s.get("/bad-header");
    assert_eq!(status, 500, "{}", s.logs());
}

#[test]
fn a_response_cut_short_by_the_app_ends_with_a_non_zero_app_status() {
    let s = Stack::start(&[]);
    // Straight to pyfcgi: nginx never passes FCGI_END_REQUEST's appStatus on.
    let get = |path: &str| s.direct(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", path)]);
    for path in ["/raise-after", "/return-after"] {
        let r = get(path);
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(
            out.starts_with("Status: 200 OK\r\n") && out.ends_with("partial"),
            "{path}: {out}\n{}",
            s.logs()
        );
        assert_ne!(r.app_status, 0, "{path}: {}", s.logs());
        assert_eq!(
            r.status,
            Some(pyfcgi_proto::ProtocolStatus::RequestComplete),
            "{path}"
        );
    }
    // A complete response, streamed or not, ends with 0.
    for path in ["/scope", "/stream"] {
        let r = get(path);
        assert!(String::from_utf8_lossy(&r.stdout).starts_with("Status: 200 OK\r\n"));
        assert_eq!(r.app_status, 0, "{path}: {}", s.logs());
    }
    // The log says so for both, as for WSGI, with the request id. (It is read from pyfcgi's
    // stderr by another thread: wait for the lines.)
    let cut = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("ending it early with a non-zero application status"))
            .map(str::to_owned)
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while cut(&s.server.log()).len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = cut(&s.server.log());
    assert_eq!(lines.len(), 2, "{}", s.logs());
    assert!(lines.iter().all(|l| l.contains("request=")), "{lines:#?}");
}

#[test]
fn detailed_errors_put_the_traceback_in_the_500_page_only_when_asked() {
    let s = Stack::start(&[("PYFCGI_DETAILED_ERRORS", "true")]);
    let (status, _, body) = s.get("/raise-before");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 500, "{}", s.logs());
    assert!(
        body.contains("Request id: ")
            && body.contains("Traceback")
            && body.contains("raised before start"),
        "{body}"
    );
    let plain = Stack::start(&[]);
    let (_, _, body) = plain.get("/raise-before");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(
        body.contains("Request id: ") && !body.contains("Traceback"),
        "{body}"
    );
}

#[test]
fn empty_bodies_and_head_requests_send_no_body() {
    let s = Stack::start(&[]);
    let (status, _, body) = s.get("/empty");
    assert_eq!((status, body.len()), (204, 0), "{}", s.logs());
    let (status, headers, body) = http(s.nginx.port, "HEAD", "/head", &[], b"");
    assert_eq!(status, 200, "{}", s.logs());
    assert!(body.is_empty());
    assert!(
        headers.to_ascii_lowercase().contains("content-length: 4"),
        "{headers}"
    );
}

#[test]
fn head_204_and_304_responses_carry_no_body_even_when_the_app_sends_one() {
    let s = Stack::start(&[]);
    // Straight to pyfcgi with the bundled client: nginx would drop a HEAD body itself.
    for (method, query, status) in [
        ("GET", "204", "204 No Content"),
        ("GET", "304", "304 Not Modified"),
        ("HEAD", "200", "200 OK"),
    ] {
        let r = s.direct(&[
            ("REQUEST_METHOD", method),
            ("PATH_INFO", "/body-anyway"),
            ("QUERY_STRING", query),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ]);
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(
            out.starts_with(&format!("Status: {status}\r\n")),
            "{out}\n{}",
            s.logs()
        );
        assert!(
            out.ends_with("\r\n\r\n"),
            "{method} ?{query} sent a body: {out:?}"
        );
        assert_eq!(r.app_status, 0);
    }
    let r = s.direct(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/body-anyway")]);
    assert!(String::from_utf8_lossy(&r.stdout).ends_with("part1part2"));
    // The app ran to its end every time (send() did not fail).
    let end = Instant::now() + Duration::from_secs(10);
    while s.app_log().matches("body-anyway done").count() < 4 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        s.app_log().matches("body-anyway done").count(),
        4,
        "{}",
        s.logs()
    );
    // A 1xx status cannot be the final one: refused from send(), a 500 for the client.
    let r = s.direct(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/body-anyway"),
        ("QUERY_STRING", "103"),
    ]);
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(out.starts_with("Status: 500 "), "{out}\n{}", s.logs());
    let end = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("status 103 is not a final HTTP status") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.logs().contains("status 103 is not a final HTTP status"),
        "{}",
        s.logs()
    );
}

#[test]
fn lifespan_shutdown_runs_on_sigterm_after_startup() {
    let s = Stack::start(&[]);
    assert_eq!(s.get("/scope").0, 200);
    let pid = s.server.pid();
    crate::support::kill(pid, libc::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10)
        && !s.server.log().contains("lifespan shutdown complete")
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.app_log().lines().collect::<Vec<_>>(),
        ["lifespan.startup", "lifespan.shutdown"],
        "{}",
        s.logs()
    );
    assert!(
        s.server.log().contains("lifespan shutdown complete"),
        "{}",
        s.logs()
    );
}

#[test]
fn a_failed_lifespan_startup_is_diagnosed_and_exits_6() {
    // Outside IIS an app that cannot start is a startup failure, as an import error is.
    let out = crate::support::run_pyfcgi(
        &["serve", &app_spec(), "--bind", "127.0.0.1:0"],
        &[("ASGI_FAIL_STARTUP", "1")],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(6), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("lifespan startup failed: no database (test)"),
        "{}",
        out.stderr
    );
}

#[test]
fn pathsend_streams_a_file_and_a_missing_one_is_a_500() {
    let dir = TempDir::new("asgi-pathsend");
    let file = dir.path().join("blob.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let s = Stack::start(&[("ASGI_TEST_FILE", file.to_str().unwrap())]);
    let (status, headers, body) = s.get("/pathsend");
    assert_eq!(status, 200, "{}", s.logs());
    assert!(
        body == data,
        "got {} bytes, want {}",
        body.len(),
        data.len()
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-length: 3000000"),
        "{headers}"
    );
    let (status, _, body) = http(s.nginx.port, "HEAD", "/pathsend", &[], b"");
    assert_eq!((status, body.len()), (200, 0), "{}", s.logs());
    let (status, _, _) = s.get("/pathsend-missing");
    assert_eq!(status, 500, "{}", s.logs());
    // The log line is read from pyfcgi's stderr by another thread: wait for it.
    assert!(
        s.server
            .wait_log("pathsend cannot open /nonexistent/pyfcgi-test-file"),
        "{}",
        s.logs()
    );
}

#[test]
fn two_waiting_receive_calls_are_both_answered() {
    let s = Stack::start(&[]);
    let (status, _, body) = s.get("/two-readers");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"two readers"[..]),
        "{}",
        s.logs()
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) && !s.app_log().contains("two readers:") {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.app_log()
            .contains("two readers: http.disconnect http.disconnect"),
        "{}",
        s.logs()
    );
}

#[test]
fn send_waits_for_a_client_that_does_not_read() {
    let s = Stack::start(&[]);
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let sent = || {
        s.app_log()
            .lines()
            .filter_map(|l| l.strip_prefix("flood sent "))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    // Reading nothing for 2 s: the app may only fill the socket buffers and the window.
    std::thread::sleep(Duration::from_secs(2));
    let stalled = sent();
    assert!(
        stalled < 48 << 20,
        "the app sent {stalled} bytes to a client that reads nothing"
    );
    // Now read it all: every byte arrives.
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("reading the flood: {e} after {total} bytes\n{}", s.logs()),
        }
    }
    assert!(total >= 3200 * 65536, "only {total} bytes\n{}", s.logs());
    assert_eq!(sent(), 3200 * 65536);
}

#[test]
fn request_timeout_answers_504_for_a_slow_or_blocking_asgi_app_and_logs_the_loop_stack() {
    let s = Stack::start(&[("PYFCGI_REQUEST_TIMEOUT", "1")]);
    for path in ["/slow-async", "/block"] {
        let t0 = Instant::now();
        let (status, _, body) = s.get(path);
        assert_eq!(status, 504, "{path}: {}", s.logs());
        assert!(String::from_utf8_lossy(&body).contains("did not answer within 1 s"));
        assert!(
            t0.elapsed() < Duration::from_millis(1900),
            "{path}: {:?}",
            t0.elapsed()
        );
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10)
        && s.server
            .log()
            .matches("ASGI request over --request-timeout")
            .count()
            < 2
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.server.log();
    assert_eq!(
        log.matches("ASGI request over --request-timeout").count(),
        2,
        "{log}"
    );
    // The blocking app's line is in the loop thread's stack.
    assert!(log.contains("time.sleep(2)"), "{log}");
    // The server is still healthy once the loop is free again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.get("/scope").0, 200, "{}", s.logs());
}

#[test]
fn the_shipped_nginx_site_config_gives_asgi_the_right_root_path_and_path() {
    // `include fastcgi_params; fastcgi_param SCRIPT_NAME "";` sends SCRIPT_NAME twice (the
    // path, then ""): the last value wins, as in WSGI and PHP-FPM.
    let dir = TempDir::new("asgi-shipped");
    let sock = dir.path().join("pyfcgi.sock");
    let mut cmd = serve_command(&[&app_spec()]);
    cmd.arg("--bind")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null());
    let server = Server::from_command(cmd, None);
    let location = crate::fastapi::shipped_location("/", "pyfcgi");
    assert!(
        location.contains("fastcgi_param SCRIPT_NAME \"\";"),
        "{location}"
    );
    let nginx = Nginx::start(
        &format!("upstream pyfcgi {{ server {}; keepalive 4; }}", server.addr),
        &location,
    );
    let (status, _, body) = http(nginx.port, "GET", "/scope?x=1", &[], b"");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}\n{}", server.log());
    assert!(body.contains(r#""root_path": """#), "{body}");
    assert!(body.contains(r#""path": "/scope""#), "{body}");
}
