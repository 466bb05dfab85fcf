//! The Starlette example (examples/starlette_app) through real nginx: static files sent with
//! the `http.response.pathsend` extension, a request body streamed back, a streamed
//! response whose lines arrive apart, a pure ASGI middleware, and lifespan state.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fastapi::Stack;
use crate::support::http;

const APP: &str = "examples/starlette_app/app.py";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn starlette_routes_static_files_middleware_and_lifespan_state() {
    let s = Stack::example(APP);
    let (st, headers, body) = http(s.nginx.port, "GET", "/", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert!(text(&body).contains("Starlette on pyfcgi"));
    assert!(
        headers.to_ascii_lowercase().contains("x-process-time: "),
        "the middleware's header is missing: {headers}"
    );

    let (st, _, body) = http(s.nginx.port, "GET", "/hello/caf%C3%A9", &[], b"");
    assert_eq!(
        (st, text(&body)),
        (200, r#"{"message":"Hello, café!"}"#.into())
    );

    let (st, _, body) = http(s.nginx.port, "GET", "/info", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert_eq!(
        text(&body),
        r#"{"started":"lifespan startup ran","root_path":"","path":"/info","extensions":["http.response.pathsend"]}"#
    );

    // StaticFiles answers with FileResponse, which hands the path to pyfcgi (pathsend).
    let want = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/starlette_app/static/hello.txt"),
    )
    .unwrap();
    let (st, headers, body) = http(s.nginx.port, "GET", "/static/hello.txt", &[], b"");
    assert_eq!(st, 200, "{}", s.logs());
    assert_eq!(body, want);
    let lower = headers.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("content-length: {}", want.len())),
        "{headers}"
    );
    assert!(lower.contains("etag: "), "{headers}");
    let (st, _, body) = http(s.nginx.port, "HEAD", "/static/hello.txt", &[], b"");
    assert_eq!((st, body.len()), (200, 0));
    let (st, _, _) = http(s.nginx.port, "GET", "/static/missing.txt", &[], b"");
    assert_eq!(st, 404);
}

#[test]
fn starlette_echoes_a_5_mb_body_and_streams_lines_apart() {
    let s = Stack::example(APP);
    let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (st, _, got) = http(
        s.nginx.port,
        "POST",
        "/echo",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(st, 200, "{}", s.logs());
    assert!(
        got == body,
        "echoed {} bytes of {}\n{}",
        got.len(),
        body.len(),
        s.logs()
    );

    // The shipped config serves /events/ unbuffered (fastcgi_buffering off): each line
    // arrives on its own.
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /events/ticks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                let lines = text(&all).matches("tick ").count();
                while seen.len() < lines {
                    seen.push(t0.elapsed());
                }
            }
            Err(e) => panic!("reading /events/ticks: {e}\n{}", s.logs()),
        }
    }
    assert_eq!(seen.len(), 5, "{}", text(&all));
    assert!(
        seen[4] - seen[0] >= Duration::from_millis(500),
        "the lines arrived together: {seen:?}"
    );
}
