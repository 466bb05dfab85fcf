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
