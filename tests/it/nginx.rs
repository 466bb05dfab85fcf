//! Interop with real nginx: `fastcgi_pass` to a Unix socket and to TCP, GET, a 20 MB POST,
//! keep-alive upstream connections with `fastcgi_keep_conn on`.

use crate::support::{Nginx, Server, http};

fn location(pass: &str) -> String {
    format!(
        "location / {{ {} fastcgi_pass {pass}; }}",
        Nginx::fastcgi_params()
    )
}

#[test]
fn nginx_get_over_unix_socket_returns_hello() {
    let server = Server::unix(&["--builtin", "hello"]);
    let nginx = Nginx::start("", &location(&server.addr));
    let (status, head, body) = http(nginx.port, "GET", "/anything?x=1", &[], b"");
    assert_eq!(status, 200, "{head}\n{}", nginx.error_log());
    assert_eq!(body, b"Hello, World!");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(head.contains("Content-Length: 13"), "{head}");
}

#[test]
fn nginx_get_over_tcp_returns_hello() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let nginx = Nginx::start("", &location(&server.addr));
    let (status, _, body) = http(nginx.port, "GET", "/", &[], b"");
    assert_eq!(status, 200, "{}", nginx.error_log());
    assert_eq!(body, b"Hello, World!");
}

#[test]
fn nginx_post_of_20_mb_is_echoed_byte_for_byte() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let nginx = Nginx::start("", &location(&server.addr));
    let body: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (status, head, got) = http(
        nginx.port,
        "POST",
        "/echo",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(status, 200, "{head}\n{}", nginx.error_log());
    assert_eq!(got.len(), body.len());
    assert!(got == body, "echoed body differs");
}

#[test]
fn nginx_env_shows_the_params_nginx_sent() {
    let server = Server::unix(&["--builtin", "env"]);
    let nginx = Nginx::start("", &location(&server.addr));
    let (status, _, body) = http(
        nginx.port,
        "GET",
        "/p/a%20th?q=1&r=%41",
        &[("X-Custom", "yes")],
        b"",
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for line in [
        "REQUEST_METHOD=GET",
        "QUERY_STRING=q=1&r=%41",
        "PATH_INFO=/p/a th",
        "REQUEST_URI=/p/a%20th?q=1&r=%41",
        "HTTP_X_CUSTOM=yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn nginx_keep_conn_upstream_reuses_one_connection() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let upstream = format!("upstream pyfcgi {{ server {}; keepalive 4; }}", server.addr);
    let loc = format!(
        "location / {{ {} fastcgi_keep_conn on; fastcgi_pass pyfcgi; }}",
        Nginx::fastcgi_params()
    );
    let nginx = Nginx::start(&upstream, &loc);
    for i in 0..50 {
        let (status, _, body) = http(nginx.port, "GET", &format!("/{i}"), &[], b"");
        assert_eq!(status, 200, "request {i}: {}", nginx.error_log());
        assert_eq!(body, b"Hello, World!");
    }
    let log = server.log();
    let accepted = log.matches("connection accepted").count();
    assert_eq!(
        accepted, 1,
        "nginx should keep one upstream connection; log:\n{log}"
    );
}

#[test]
fn nginx_repeated_request_headers_reach_a_wsgi_app_joined() {
    let spec = format!("{}/pep3333.py:environ_dump", crate::wsgi::APPS);
    let server = Server::unix(&[&spec]);
    let nginx = Nginx::start("", &location(&server.addr));
    // nginx (1.22, Debian bookworm) passes each header line as its own HTTP_* param.
    let (status, _, body) = http(
        nginx.port,
        "GET",
        "/",
        &[
            ("X-Multi", "one"),
            ("Cookie", "a=1"),
            ("X-Multi", "two"),
            ("Cookie", "b=2"),
        ],
        b"",
    );
    assert_eq!(status, 200, "{}\n{}", nginx.error_log(), server.log());
    let text = String::from_utf8(body).unwrap();
    for line in ["HTTP_X_MULTI='one, two'", "HTTP_COOKIE='a=1; b=2'"] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
