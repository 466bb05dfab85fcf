//! Hostile and broken peers: each must close only its own connection, with a logged reason,
//! and never crash or wedge the server. After each, a normal request on a new connection works.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::{ProtocolStatus, Role, encode};

use crate::support::{Server, read_response, request_bytes, roundtrip};

const HELLO: &[u8] =
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// A normal request on a new connection is answered (hello or echo, whichever runs).
fn assert_still_serves(server: &Server) {
    let r = roundtrip(
        server,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "13")],
        b"Hello, World!",
    );
    assert!(
        r.stdout.starts_with(b"Status: 200 OK\r\n"),
        "server stopped answering; log:\n{}",
        server.log()
    );
    assert!(
        r.stdout.ends_with(b"\r\n\r\nHello, World!"),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
}

/// Reads until the server closes the connection; fails if it stays open for 10 s.
fn assert_closed_by_server(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
    }
}

#[test]
fn garbage_closes_only_that_connection() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let mut bystander = server.connect();
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed_by_server(&mut s);
    assert!(server.wait_log("invalid FastCGI input"), "{}", server.log());
    // A connection opened before the bad one still works.
    bystander
        .write_all(&request_bytes(1, true, &[], b""))
        .unwrap();
    assert_eq!(read_response(&mut bystander, 1).unwrap().stdout, HELLO);
    assert_still_serves(&server);
}

#[test]
fn wrong_version_is_refused_with_reason() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let mut s = server.connect();
    let mut req = request_bytes(1, false, &[], b"");
    req[0] = 2;
    s.write_all(&req).unwrap();
    assert_closed_by_server(&mut s);
    assert!(
        server.wait_log("unsupported FastCGI version 2"),
        "{}",
        server.log()
    );
    assert_still_serves(&server);
}

#[test]
fn absurd_name_value_length_is_refused_without_allocating() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let mut s = server.connect();
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, 1, Role::Responder, false);
    // name length 2^31-1, value length 1, then almost nothing.
    encode::stream(
        &mut out,
        pyfcgi_proto::RecordType::Params,
        1,
        &[0xff, 0xff, 0xff, 0xff, 1, b'x'],
        false,
    );
    encode::params_end(&mut out, 1);
    s.write_all(&out).unwrap();
    assert_closed_by_server(&mut s);
    assert!(
        server.wait_log("name-value pair is truncated"),
        "{}",
        server.log()
    );
    assert_still_serves(&server);
}

#[test]
fn truncated_record_then_close_is_logged() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let mut s = server.connect();
    let req = request_bytes(1, false, &[("A", "b")], b"");
    s.write_all(&req[..13]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed_by_server(&mut s);
    assert!(
        server.wait_log("in the middle of a record"),
        "{}",
        server.log()
    );
    assert_still_serves(&server);
}

#[test]
fn one_byte_every_50ms_neither_blocks_others_nor_breaks() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let req = request_bytes(
        1,
        false,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "5")],
        b"slow!",
    );
    let mut slow = server.connect();
    let addr = server.addr.clone();
    let trickle = std::thread::spawn(move || {
        for b in &req {
            slow.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        read_response(&mut slow, 1).unwrap()
    });
    // While the trickle runs, normal requests are answered at once.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&request_bytes(1, false, &[], b"fast")).unwrap();
        let r = read_response(&mut s, 1).unwrap();
        assert!(r.stdout.ends_with(b"fast"));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a slow client delayed others: {:?}",
            t.elapsed()
        );
    }
    let r = trickle.join().unwrap();
    assert!(
        r.stdout.ends_with(b"\r\n\r\nslow!"),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
}

#[test]
fn five_hundred_idle_connections_do_not_starve_a_real_request() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let idle: Vec<TcpStream> = (0..500).map(|_| server.connect()).collect();
    let t = Instant::now();
    assert_still_serves(&server);
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(idle);
    assert_still_serves(&server);
}

#[test]
fn client_vanishing_mid_response_is_survived() {
    let server = Server::tcp(&["--builtin", "echo"]);
    for _ in 0..3 {
        let mut s = server.connect();
        let body = vec![b'z'; 8 << 20];
        let len = body.len().to_string();
        let req = request_bytes(1, false, &[("CONTENT_LENGTH", &len)], &body);
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&req);
        });
        let mut first = [0u8; 1000];
        s.read_exact(&mut first).unwrap();
        // Close with unread data pending: the kernel sends RST.
        drop(s);
        let _ = writer.join();
    }
    assert_still_serves(&server);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn abort_request_mid_body_ends_the_request() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let mut s = server.connect();
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, 7, Role::Responder, true);
    encode::params(&mut out, 7, &[("CONTENT_LENGTH", "100")]).unwrap();
    encode::params_end(&mut out, 7);
    encode::stdin(&mut out, 7, b"partial");
    encode::abort_request(&mut out, 7);
    s.write_all(&out).unwrap();
    let r = read_response(&mut s, 7).unwrap();
    assert_eq!(r.status, Some(ProtocolStatus::RequestComplete));
    // The connection is kept (FCGI_KEEP_CONN) and id 7 can be used again.
    s.write_all(&request_bytes(7, true, &[], b"again")).unwrap();
    assert!(read_response(&mut s, 7).unwrap().stdout.ends_with(b"again"));
}

#[test]
fn multiplexed_requests_on_one_connection_are_answered() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let mut s = server.connect();
    let mut out = BytesMut::new();
    for id in 1..=3u16 {
        encode::begin_request(&mut out, id, Role::Responder, true);
        encode::params(&mut out, id, &[("CONTENT_LENGTH", "2")]).unwrap();
        encode::params_end(&mut out, id);
    }
    for id in (1..=3u16).rev() {
        encode::stdin(&mut out, id, format!("r{id}").as_bytes());
        encode::stdin_end(&mut out, id);
    }
    s.write_all(&out).unwrap();
    // Responses may interleave; collect all three.
    let mut conn = pyfcgi_proto::client::ClientConnection::new();
    let mut buf = BytesMut::new();
    let mut bodies = std::collections::HashMap::<u16, Vec<u8>>::new();
    let mut ended = 0;
    let mut chunk = [0u8; 4096];
    while ended < 3 {
        while let Some(ev) = conn.decode(&mut buf).unwrap() {
            match ev {
                pyfcgi_proto::client::ClientEvent::Stdout { id, data } => {
                    bodies.entry(id).or_default().extend_from_slice(&data)
                }
                pyfcgi_proto::client::ClientEvent::End { .. } => ended += 1,
                _ => {}
            }
        }
        if ended == 3 {
            break;
        }
        let n = s.read(&mut chunk).unwrap_or_else(|e| {
            panic!("{e}: got {bodies:?} ended {ended}; log:\n{}", server.log())
        });
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    for id in 1..=3u16 {
        assert!(bodies[&id].ends_with(format!("r{id}").as_bytes()));
    }
}

#[test]
fn get_values_and_unknown_management_types_are_answered() {
    let server = Server::tcp(&["--builtin", "hello", "--max-conns", "7", "--no-multiplex"]);
    let mut s = server.connect();
    let mut out = BytesMut::new();
    encode::get_values(
        &mut out,
        &["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"],
    )
    .unwrap();
    out.extend_from_slice(&[1, 99, 0, 0, 0, 0, 0, 0]);
    s.write_all(&out).unwrap();
    let mut conn = pyfcgi_proto::client::ClientConnection::new();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut got = Vec::new();
    while got.len() < 2 {
        while let Some(ev) = conn.decode(&mut buf).unwrap() {
            got.push(ev);
        }
        if got.len() < 2 {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let pyfcgi_proto::client::ClientEvent::GetValuesResult(v) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(v.get_str("FCGI_MAX_CONNS"), Some("7"));
    assert_eq!(v.get_str("FCGI_MAX_REQS"), Some("7"));
    assert_eq!(v.get_str("FCGI_MPXS_CONNS"), Some("0"));
    assert_eq!(got[1], pyfcgi_proto::client::ClientEvent::UnknownType(99));
}

#[test]
fn a_web_server_that_stalls_mid_request_is_cut_off_after_read_timeout() {
    let server = Server::tcp(&["--builtin", "echo", "--read-timeout", "0.5"]);
    let full = request_bytes(
        1,
        true,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "10")],
        b"0123456789",
    );
    // Params complete, body half sent, then nothing.
    let cut = full.len() - 20;
    let mut s = server.connect();
    s.write_all(&full[..cut]).unwrap();
    let t0 = Instant::now();
    assert_closed_by_server(&mut s);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    assert!(server.wait_log("--read-timeout"), "{}", server.log());
    // A connection that is merely idle between requests is not affected.
    let mut idle = server.connect();
    std::thread::sleep(Duration::from_millis(900));
    idle.write_all(&request_bytes(1, true, &[("REQUEST_METHOD", "GET")], b""))
        .unwrap();
    assert!(read_response(&mut idle, 1).is_ok(), "{}", server.log());
    assert_still_serves(&server);
}

#[test]
fn params_trickling_past_params_timeout_close_the_connection() {
    // Each byte comes well within --read-timeout; the whole head does not come within
    // --params-timeout.
    let server = Server::tcp(&[
        "--builtin",
        "hello",
        "--params-timeout",
        "1",
        "--read-timeout",
        "30",
    ]);
    let mut s = server.connect();
    let req = request_bytes(1, false, &[("HTTP_X_SLOW", &"s".repeat(400))], b"");
    let start = Instant::now();
    let mut sent = 0;
    for b in &req {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        if server.log().contains("--params-timeout") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sent < req.len(),
        "the whole request trickled in: {}",
        server.log()
    );
    assert_closed_by_server(&mut s);
    assert!(
        server.wait_log("did not all arrive within --params-timeout"),
        "{}",
        server.log()
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_still_serves(&server);
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_unread_management_records_keeps_memory_bounded() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let before = rss_kib(server.pid());
    let mut s = server.connect();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 64 KiB of records at a time: FCGI_GET_VALUES queries and unknown-type records, each
    // answered by the server; the answers are never read.
    let mut chunk = BytesMut::new();
    while chunk.len() < 64 * 1024 {
        encode::get_values(&mut chunk, &["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]).unwrap();
        for _ in 0..8 {
            chunk.extend_from_slice(&[1, 200, 0, 0, 0, 0, 0, 0]);
        }
    }
    let limit: usize = 400 << 20;
    let mut sent = 0usize;
    while sent < limit {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("write failed: {e}\n{}", server.log()),
        }
    }
    let grew = rss_kib(server.pid()).saturating_sub(before);
    // The server stopped reading once its answers backed up: the sender is held back after
    // what the kernel buffers hold, and the server's memory stays flat.
    assert!(
        sent < 128 << 20,
        "{} MiB were accepted without the answers being read",
        sent >> 20
    );
    assert!(grew < 48 * 1024, "the server grew by {grew} KiB");
    // Others are served meanwhile; the flooding connection closing frees everything.
    assert_still_serves(&server);
    drop(s);
    assert_still_serves(&server);
}
