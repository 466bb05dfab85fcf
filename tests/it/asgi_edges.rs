//! The ASGI host at the edges real deployments reach: an app that imports nothing under
//! uvloop (`--loop auto`), with and without `--workers`; a web server that closes the
//! connection while the app waits in `receive()` (the FastAPI example behind the shipped
//! nginx config in both keep-conn modes, and raw connections against `--max-conns`).

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fastapi::Stack;
use crate::support::{Server, TempDir, http, kill, read_response, request_bytes};

fn bare_app() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/asgi_longpoll.py");
    format!("{}:app", p.display())
}

/// Waits up to 10 s for `file` to contain `needle`; returns its text.
fn wait_note(file: &Path, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) || Instant::now() > end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn params<'a>(path: &'a str, note: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("HTTP_X_NOTE", note),
    ]
}

fn unix(server: &Server) -> UnixStream {
    let path = server.addr.trim_start_matches("unix:");
    let s = UnixStream::connect(path).expect("connect to pyfcgi");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn quick(server: &Server, note: &Path) -> Vec<u8> {
    let mut c = unix(server);
    let note = note.display().to_string();
    c.write_all(&request_bytes(1, false, &params("/quick", &note), b""))
        .unwrap();
    read_response(&mut c, 1).expect("an answer").stdout
}

#[test]
fn an_app_that_imports_nothing_runs_under_uvloop_with_loop_auto_with_and_without_workers() {
    // uvloop is in examples/requirements.txt (the venv); the app imports neither asyncio nor
    // threading, so the event-loop thread would be the first to import threading.
    let venv = crate::python_nginx::venv();
    let dir = TempDir::new("uvloop-bare");
    let note = dir.path().join("notes");
    for workers in [None, Some("2")] {
        let spec = bare_app();
        let mut args = vec![spec.as_str(), "--venv", venv, "--loop", "auto"];
        if let Some(n) = workers {
            args.extend(["--workers", n]);
        }
        let server = Server::unix(&args);
        let body = quick(&server, &note);
        assert!(
            body.ends_with(b"\r\n\r\nquick"),
            "workers {workers:?}: {}\n{}",
            String::from_utf8_lossy(&body),
            server.log()
        );
        let log = server.log();
        assert!(log.contains("event loop: uvloop"), "{log}");
        assert!(!log.contains("set_wakeup_fd"), "{log}");
        assert!(log.contains("ASGI"), "{log}");
        assert!(!log.contains("serving a WSGI application"), "{log}");
    }
}

#[test]
fn closed_connections_free_their_max_conns_slots_even_when_the_app_ignores_it() {
    let dir = TempDir::new("asgi-closed");
    let note = dir.path().join("notes");
    let note_s = note.display().to_string();
    let spec = bare_app();
    let server = Server::unix(&[&spec, "--max-conns", "2", "--loop", "asyncio"]);
    // Two requests take both slots: one waits in receive(), one never finishes.
    let mut held = Vec::new();
    for (path, keep) in [("/wait", true), ("/hang", false)] {
        let mut c = unix(&server);
        c.write_all(&request_bytes(1, keep, &params(path, &note_s), b""))
            .unwrap();
        held.push(c);
        let seen = wait_note(&note, &format!("{path} started"));
        assert!(
            seen.contains(&format!("{path} started")),
            "{seen}\n{}",
            server.log()
        );
    }
    // The web server goes away (as nginx does when the browser closes the tab).
    drop(held);
    let seen = wait_note(&note, "/wait got http.disconnect");
    assert!(
        seen.contains("/wait got http.disconnect"),
        "{seen}\n{}",
        server.log()
    );
    // Both slots are free again, though /hang's coroutine still runs.
    for _ in 0..3 {
        assert!(
            quick(&server, &note).ends_with(b"quick"),
            "{}",
            server.log()
        );
    }
    // A graceful stop does not wait for the abandoned coroutine (the grace period is 30 s).
    let t0 = Instant::now();
    let mut server = server;
    kill(server.pid(), libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.log()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the stop took {:?}\n{}",
        t0.elapsed(),
        server.log()
    );
}

fn json_field(body: &[u8], field: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text
        .find(&format!("\"{field}\":"))
        .map(|i| i + field.len() + 3)
        .unwrap_or_else(|| panic!("no {field} in {text}"));
    let rest = &text[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_long_poll_sees_the_client_leave_within_a_second_in_both_keep_conn_modes() {
    for keep_conn in [true, false] {
        let s = Stack::with("examples/fastapi_app/main.py", keep_conn, &[]);
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.write_all(b"GET /events/wait HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Wait until the app is polling Request.is_disconnected().
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, body) = http(s.nginx.port, "GET", "/disconnects", &[], b"");
            if json_field(&body, "waiting").trim() == "1" {
                break;
            }
            assert!(Instant::now() < end, "never waiting: {}", s.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = wall_clock();
        drop(c);
        let end = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let (_, _, body) = http(s.nginx.port, "GET", "/disconnects", &[], b"");
            let at = json_field(&body, "at");
            let at = at.trim().trim_start_matches('[').trim_end_matches(']');
            if let Ok(t) = at.parse::<f64>() {
                break t;
            }
            assert!(
                Instant::now() < end,
                "keep_conn {keep_conn}: the app never saw the client leave\n{}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            seen - left < 1.0,
            "keep_conn {keep_conn}: the app saw the client leave {:.3} s later\n{}",
            seen - left,
            s.logs()
        );
        // A graceful stop right after it ends at once.
        let Stack { mut server, .. } = s;
        let t0 = Instant::now();
        kill(server.pid(), libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|st| st.success()),
            "{status:?}\n{}",
            server.log()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "keep_conn {keep_conn}: the stop took {:?}\n{}",
            t0.elapsed(),
            server.log()
        );
    }
}
