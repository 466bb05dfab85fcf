//! Process lifecycle of `pyfcgi serve`: graceful SIGTERM, grace and idle timeouts, Unix socket
//! files, the FCGI_WEB_SERVER_ADDRS allow-list, and sockets inherited on stdin.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::{Role, encode};

use crate::support::{
    Server, TempDir, kill, read_response, request_bytes, roundtrip, run_pyfcgi, serve_command,
};

const HELLO: &[u8] =
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// BEGIN (FCGI_KEEP_CONN set, as nginx with `fastcgi_keep_conn on` sends it) +
/// PARAMS(CONTENT_LENGTH=10) + the first 5 body bytes of request 1: a request that stays in
/// flight until the rest arrives.
fn half_request() -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, 1, Role::Responder, true);
    encode::params(
        &mut out,
        1,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "10")],
    )
    .unwrap();
    encode::params_end(&mut out, 1);
    encode::stdin(&mut out, 1, b"01234");
    out.to_vec()
}

/// The other half: 5 more bytes and the empty STDIN.
fn rest_of_request() -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::stdin(&mut out, 1, b"56789");
    encode::stdin_end(&mut out, 1);
    out.to_vec()
}

/// Sends [`half_request`] to an `echo` server, followed by FCGI_GET_VALUES. The server holds
/// a response back until the whole body has arrived, but answers FCGI_GET_VALUES at once, and
/// only after decoding the records before it: the answer proves request 1 is active.
fn start_half_request(server: &Server) -> TcpStream {
    let mut s = server.connect();
    let mut out = BytesMut::from(&half_request()[..]);
    encode::get_values(&mut out, &["FCGI_MAX_CONNS"]).unwrap();
    s.write_all(&out).unwrap();
    let mut header = [0u8; 8];
    s.read_exact(&mut header).unwrap();
    assert_eq!(
        header[..4],
        [1, 10, 0, 0],
        "expected FCGI_GET_VALUES_RESULT first"
    );
    let len = usize::from(u16::from_be_bytes([header[4], header[5]])) + usize::from(header[6]);
    let mut content = vec![0u8; len];
    s.read_exact(&mut content).unwrap();
    s
}

/// Reads until the peer closes; fails if it stays open for 10 s. Returns what was read.
fn read_until_closed(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let mut server = Server::tcp(&["--builtin", "echo"]);
    let mut s = start_half_request(&server);
    kill(server.pid(), libc::SIGTERM);
    assert!(
        server.wait_log("letting in-flight requests finish"),
        "{}",
        server.log()
    );
    // The listener is closed: nobody new gets in.
    assert!(
        TcpStream::connect(&server.addr).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    s.write_all(&rest_of_request()).unwrap();
    let r = read_response(&mut s, 1).unwrap();
    assert_eq!(
        r.stdout,
        b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\n0123456789"
    );
    assert_eq!(r.app_status, 0);
    // Even with FCGI_KEEP_CONN the server closes the connection once it is idle.
    assert!(read_until_closed(&mut s).is_empty());
    let st = server.wait_exit(Duration::from_secs(5));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", server.log());
    assert!(server.log().contains("outcome=Drained"), "{}", server.log());
}

#[test]
fn sigterm_when_idle_exits_0_despite_a_kept_connection() {
    let mut server = Server::tcp(&["--builtin", "hello"]);
    let mut kept = server.connect();
    kept.write_all(&request_bytes(1, true, &[], b"")).unwrap();
    assert_eq!(read_response(&mut kept, 1).unwrap().stdout, HELLO);
    let t = Instant::now();
    kill(server.pid(), libc::SIGTERM);
    let st = server.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", server.log());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    // The server closed the kept connection on its way out.
    assert!(read_until_closed(&mut kept).is_empty());
}

#[test]
fn graceful_timeout_expiry_exits_3() {
    let mut server = Server::tcp(&["--builtin", "echo", "--graceful-timeout", "1"]);
    let _s = start_half_request(&server);
    let t = Instant::now();
    kill(server.pid(), libc::SIGTERM);
    let st = server.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(3), "{}", server.log());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exit took {took:?}"
    );
    assert!(
        server.log().contains("graceful timeout reached"),
        "{}",
        server.log()
    );
}

#[test]
fn idle_timeout_closes_an_idle_connection() {
    let server = Server::tcp(&["--builtin", "hello", "--idle-timeout", "1"]);
    let mut s = server.connect();
    s.write_all(&request_bytes(1, true, &[], b"")).unwrap();
    assert_eq!(read_response(&mut s, 1).unwrap().stdout, HELLO);
    let t = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "expected end-of-file");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    assert!(server.wait_log("idle-timeout"), "{}", server.log());
    // The server itself keeps serving.
    assert_eq!(roundtrip(&server, &[], b"").stdout, HELLO);
}

/// `pyfcgi serve ARGS --bind unix:PATH` on a fixed path.
fn unix_server(path: &Path, args: &[&str]) -> Server {
    let mut cmd = serve_command(args);
    cmd.args(["--bind", &format!("unix:{}", path.display())])
        .stdin(Stdio::null());
    Server::from_command(cmd, None)
}

fn unix_hello(path: &Path) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&request_bytes(1, false, &[], b"")).unwrap();
    read_response(&mut s, 1).unwrap().stdout
}

#[test]
fn unix_socket_mode_is_applied_and_file_removed_on_exit() {
    let dir = TempDir::new("lc-mode");
    let sock = dir.path().join("s.sock");
    let server = unix_server(&sock, &["--builtin", "hello", "--socket-mode", "600"]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "mode {mode:o}");
    assert_eq!(unix_hello(&sock), HELLO);
    let st = server.stop();
    assert_eq!(st.and_then(|s| s.code()), Some(0));
    assert!(!sock.exists(), "socket file left after a graceful exit");
}

#[test]
fn unix_stale_socket_is_replaced_and_live_socket_is_refused() {
    let dir = TempDir::new("lc-stale");
    let sock = dir.path().join("s.sock");
    let mut first = unix_server(&sock, &["--builtin", "hello"]);
    // SIGKILL: no cleanup, the socket file stays behind.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(sock.exists());
    let second = unix_server(&sock, &["--builtin", "hello"]);
    assert!(
        second.log().contains("removing stale unix socket"),
        "{}",
        second.log()
    );
    assert_eq!(unix_hello(&sock), HELLO);
    // A third server on the live socket must fail and leave the live one alone.
    let out = run_pyfcgi(
        &[
            "serve",
            "--builtin",
            "hello",
            "--bind",
            &format!("unix:{}", sock.display()),
        ],
        &[],
        None,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
    assert_eq!(unix_hello(&sock), HELLO);
    assert_eq!(second.stop().and_then(|s| s.code()), Some(0));
    assert!(!sock.exists());
}

#[test]
fn web_server_addrs_refuses_other_peers() {
    let server = Server::tcp_env(
        &["--builtin", "hello"],
        &[("FCGI_WEB_SERVER_ADDRS", "127.0.0.2")],
    );
    let mut s = server.connect();
    // The write may fail if the server already closed; either way no answer comes.
    let _ = s.write_all(&request_bytes(1, false, &[], b""));
    assert!(
        read_until_closed(&mut s).is_empty(),
        "a refused peer got an answer"
    );
    assert!(server.wait_log("FCGI_WEB_SERVER_ADDRS"), "{}", server.log());
    assert!(
        !server.log().contains("connection accepted"),
        "{}",
        server.log()
    );
}

#[test]
fn web_server_addrs_serves_listed_peers() {
    let server = Server::tcp_env(
        &["--builtin", "hello"],
        &[("FCGI_WEB_SERVER_ADDRS", "127.0.0.1")],
    );
    assert_eq!(roundtrip(&server, &[], b"").stdout, HELLO);
    assert!(
        !server.log().contains("refused connection"),
        "{}",
        server.log()
    );
}

#[test]
fn inherited_listening_socket_on_stdin_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = serve_command(&["--builtin", "hello"]);
    cmd.stdin(Stdio::from(OwnedFd::from(listener)));
    let server = Server::from_command(cmd, None);
    assert_eq!(server.addr, addr.to_string(), "{}", server.log());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&request_bytes(1, false, &[], b"")).unwrap();
    assert_eq!(read_response(&mut s, 1).unwrap().stdout, HELLO);
    assert_eq!(server.stop().and_then(|s| s.code()), Some(0));
}

#[test]
fn inherited_connected_socket_on_stdin_serves_then_exits_0_on_close() {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = serve_command(&["--builtin", "hello"]);
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
    let mut server = Server::from_command(cmd, None);
    ours.write_all(&request_bytes(1, true, &[], b"")).unwrap();
    assert_eq!(read_response(&mut ours, 1).unwrap().stdout, HELLO);
    drop(ours);
    let st = server.wait_exit(Duration::from_secs(5));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", server.log());
    assert!(
        server.log().contains("outcome=StreamClosed"),
        "{}",
        server.log()
    );
}

/// Each thread of `pid`: (name, scheduling policy) from /proc (`stat` field 41).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the command name (which ends with the last ')'): state is field 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok());
        out.push((name.trim().to_owned(), policy.unwrap_or(u32::MAX)));
    }
    out
}

#[test]
fn the_io_thread_does_not_preempt_the_python_threads() {
    // SCHED_BATCH (3) for the one I/O thread, the normal policy (0) for the app's threads,
    // which would otherwise inherit it (pyfcgi_server::sched).
    let spec = format!("{}/pep3333.py:hello", crate::wsgi::APPS);
    let server = Server::tcp_env(&[&spec, "--threads", "2"], crate::wsgi::PY_ENV);
    let r = roundtrip(&server, &[("REQUEST_METHOD", "GET")], b"");
    assert!(r.stdout.starts_with(b"Status: 200"), "{}", server.log());
    let threads = thread_policies(server.pid());
    let main = threads.iter().find(|(n, _)| n == "pyfcgi");
    assert_eq!(main.map(|t| t.1), Some(3), "{threads:?}");
    let python: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("pyfcgi-py-"))
        .collect();
    assert_eq!(python.len(), 2, "{threads:?}");
    assert!(python.iter().all(|(_, p)| *p == 0), "{threads:?}");
}
