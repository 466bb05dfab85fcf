//! Every configurable limit, tripped: the clear response or log line, and the server (and,
//! where the protocol allows, the same connection) serving on afterwards. `--max-body-size`
//! (413) is in wsgi.rs, `--read-timeout` in hostile.rs.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use pyfcgi_proto::{ProtocolStatus, Role, encode};

use crate::support::{Nginx, Server, http, read_response, request_bytes};

const HELLO_BODY: &[u8] = b"Hello, World!";

#[test]
fn headers_over_max_params_bytes_get_431_through_nginx_and_the_connection_serves_on() {
    let server = Server::unix(&["--builtin", "hello", "--max-params-bytes", "4096"]);
    let nginx = Nginx::start(
        &format!("upstream pyfcgi {{ server {}; keepalive 2; }}", server.addr),
        &format!(
            "location / {{ {} fastcgi_keep_conn on; fastcgi_pass pyfcgi; }}",
            Nginx::fastcgi_params()
        ),
    );
    let big = "c".repeat(6000);
    let (status, _, body) = http(nginx.port, "GET", "/", &[("X-Big", &big)], b"");
    assert_eq!(status, 431, "{}\n{}", nginx.error_log(), server.log());
    assert!(
        String::from_utf8_lossy(&body).contains("headers are larger than this server accepts"),
        "{body:?}"
    );
    assert!(
        server.wait_log("exceed the limit of 4096 bytes (answered 431"),
        "{}",
        server.log()
    );
    for _ in 0..3 {
        let (status, _, body) = http(nginx.port, "GET", "/", &[], b"");
        assert_eq!(
            (status, body.as_slice()),
            (200, HELLO_BODY),
            "{}",
            server.log()
        );
    }
    assert!(
        !server.log().contains("invalid FastCGI input"),
        "{}",
        server.log()
    );
}

#[test]
fn more_params_than_max_params_get_431_on_a_connection_that_stays_open() {
    let server = Server::tcp(&["--builtin", "hello", "--max-params", "20"]);
    let mut s = server.connect();
    let names: Vec<String> = (0..30).map(|i| format!("HTTP_X_{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    s.write_all(&request_bytes(1, true, &many, b"ignored body"))
        .unwrap();
    let r = read_response(&mut s, 1).unwrap();
    assert!(
        r.stdout
            .starts_with(b"Status: 431 Request Header Fields Too Large\r\n"),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert_eq!(r.status, Some(ProtocolStatus::RequestComplete));
    assert!(
        server.wait_log("more than 20 FCGI_PARAMS name-value pairs"),
        "{}",
        server.log()
    );
    // The same connection, the same request id: served.
    s.write_all(&request_bytes(1, true, &many[..10], b""))
        .unwrap();
    let r = read_response(&mut s, 1).unwrap();
    assert!(
        r.stdout.ends_with(HELLO_BODY),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
}

#[test]
fn connections_over_max_conns_wait_until_one_closes() {
    let server = Server::tcp(&["--builtin", "hello", "--max-conns", "2"]);
    // Two connections hold both slots (each proven accepted by a request).
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(&request_bytes(1, true, &[], b"")).unwrap();
            assert!(
                read_response(&mut s, 1)
                    .unwrap()
                    .stdout
                    .ends_with(HELLO_BODY)
            );
            s
        })
        .collect();
    assert!(server.wait_log("--max-conns reached"), "{}", server.log());
    // A third connects (the kernel's backlog) but is not served while both are open.
    let mut third = server.connect();
    third.write_all(&request_bytes(1, false, &[], b"")).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = third.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "served past --max-conns: {early:?}"
    );
    // One closes: the waiting connection is accepted and answered.
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_response(&mut third, 1).unwrap();
    assert!(r.stdout.ends_with(HELLO_BODY), "{}", server.log());
    drop(held);
}

#[test]
fn requests_over_max_requests_per_conn_are_refused_as_overloaded() {
    let server = Server::tcp(&["--builtin", "echo", "--max-requests-per-conn", "2"]);
    let mut s = server.connect();
    let mut out = BytesMut::new();
    // Three requests begin; none has finished its params, so all would be in flight.
    for id in 1..=3u16 {
        encode::begin_request(&mut out, id, Role::Responder, true);
    }
    s.write_all(&out).unwrap();
    let r = read_response(&mut s, 3).unwrap();
    assert_eq!(r.status, Some(ProtocolStatus::Overloaded));
    // The two admitted requests complete normally (one after the other, so that each read
    // sees only its own records).
    for id in 1..=2u16 {
        let mut out = BytesMut::new();
        encode::params(&mut out, id, &[("CONTENT_LENGTH", "2")]).unwrap();
        encode::params_end(&mut out, id);
        encode::stdin(&mut out, id, format!("r{id}").as_bytes());
        encode::stdin_end(&mut out, id);
        s.write_all(&out).unwrap();
        let r = read_response(&mut s, id).unwrap();
        assert!(r.stdout.ends_with(format!("r{id}").as_bytes()), "{r:?}");
    }
}

/// Sends a request's head and the first `first` body bytes of a declared `declared`-byte
/// body, with FCGI_KEEP_CONN.
fn upload_head(id: u16, declared: usize, first: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let len = declared.to_string();
    encode::begin_request(&mut out, id, Role::Responder, true);
    encode::params(
        &mut out,
        id,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", len.as_str())],
    )
    .unwrap();
    encode::params_end(&mut out, id);
    encode::stdin(&mut out, id, &vec![b'u'; first]);
    out.to_vec()
}

#[test]
fn a_body_over_max_body_size_gets_413_while_the_client_is_still_sending() {
    // WSGI and ASGI apps share the admission; the ASGI example stands for the other host.
    let wsgi = format!("{}/pep3333.py:hello", crate::wsgi::APPS);
    let asgi = format!(
        "{}/examples/fastapi_app/main.py:app",
        env!("CARGO_MANIFEST_DIR")
    );
    let venv = crate::python_nginx::venv();
    for spec in [wsgi.as_str(), asgi.as_str()] {
        let server = Server::tcp_env(
            &[spec, "--venv", venv, "--max-body-size", "1m"],
            crate::wsgi::PY_ENV,
        );
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // 50 MB declared, 64 KiB sent: the answer comes now, not after 50 MB.
        s.write_all(&upload_head(1, 50_000_000, 65536)).unwrap();
        let r = read_response(&mut s, 1).unwrap_or_else(|e| {
            panic!(
                "{spec}: no answer while the body was still coming: {e}\n{}",
                server.log()
            )
        });
        assert!(
            r.stdout.starts_with(b"Status: 413 "),
            "{spec}: {}",
            String::from_utf8_lossy(&r.stdout)
        );
        assert_eq!(r.app_status, 0);
        assert!(server.wait_log("answered 413"), "{}", server.log());
        // The rest of that body is discarded; the same connection serves the next request.
        let mut rest = BytesMut::new();
        encode::stdin(&mut rest, 1, &vec![b'u'; 200_000]);
        encode::stdin_end(&mut rest, 1);
        s.write_all(&rest).unwrap();
        let hello = if spec == wsgi { "/" } else { "/hello" };
        s.write_all(&request_bytes(
            1,
            true,
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", ""),
                ("PATH_INFO", hello),
                ("SERVER_NAME", "x"),
                ("SERVER_PORT", "80"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
            ],
            b"",
        ))
        .unwrap();
        let r = read_response(&mut s, 1).unwrap();
        assert!(
            r.stdout.starts_with(b"Status: 200 "),
            "{spec}: {}\n{}",
            String::from_utf8_lossy(&r.stdout),
            server.log()
        );
    }
}
