//! Interop with libfcgi's `cgi-fcgi -bind -connect` (Debian libfcgi-bin), a FastCGI client
//! nobody here wrote. It sends the environment as params and stdin as the body, and prints the
//! response's STDOUT.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::Server;

fn cgi_fcgi(addr: &str, env: &[(&str, &str)], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("cgi-fcgi")
        .args(["-bind", "-connect", addr])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cgi-fcgi is not installed: run scripts/install-deps");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "cgi-fcgi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn cgi_fcgi_gets_the_exact_hello_bytes_over_tcp() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let out = cgi_fcgi(
        &server.addr,
        &[("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", "/")],
        b"",
    );
    assert_eq!(out, pyfcgi_server_hello());
}

#[test]
fn cgi_fcgi_gets_the_exact_hello_bytes_over_unix_socket() {
    let server = Server::unix(&["--builtin", "hello"]);
    let path = server.addr.trim_start_matches("unix:").to_owned();
    let out = cgi_fcgi(&path, &[("REQUEST_METHOD", "GET")], b"");
    assert_eq!(out, pyfcgi_server_hello());
}

#[test]
fn cgi_fcgi_post_is_echoed() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let len = body.len().to_string();
    let out = cgi_fcgi(
        &server.addr,
        &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", &len)],
        &body,
    );
    let head = format!(
        "Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    assert_eq!(&out[..head.len()], head.as_bytes());
    assert!(out[head.len()..] == body[..], "body differs");
}

fn pyfcgi_server_hello() -> Vec<u8> {
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
        .to_vec()
}
