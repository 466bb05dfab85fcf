//! PEP 3333 conformance: the apps in tests/apps/pep3333.py (each behind
//! `wsgiref.validate.validator`, with warnings turned into errors) served by `pyfcgi serve`
//! and driven with raw FastCGI records, so every byte the server writes is seen.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::encode;

use crate::support::{RawResponse, Server, TempDir, read_response, request_bytes_raw};

/// The Python test apps.
pub(crate) const APPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps");

/// Environment for every server and command: no `__pycache__` in the source tree.
pub(crate) const PY_ENV: &[(&str, &str)] = &[("PYTHONDONTWRITEBYTECODE", "1")];

/// `pyfcgi serve tests/apps/pep3333.py:NAME EXTRA... --bind 127.0.0.1:0`.
fn serve(name: &str, extra: &[&str]) -> Server {
    let spec = format!("{APPS}/pep3333.py:{name}");
    let mut args = vec![spec.as_str()];
    args.extend_from_slice(extra);
    Server::tcp_env(&args, PY_ENV)
}

/// A CGI response (`Status:` line, headers, body) as the app's host wrote it to FCGI_STDOUT.
#[derive(Debug)]
pub(crate) struct Cgi {
    pub status: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: RawResponse,
}

impl Cgi {
    pub fn parse(raw: RawResponse) -> Self {
        let split = raw
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no header end in {:?}",
                    String::from_utf8_lossy(&raw.stdout)
                )
            });
        let head: String = raw.stdout[..split].iter().map(|&b| char::from(b)).collect();
        let mut status = String::new();
        let mut headers = Vec::new();
        for line in head.split("\r\n") {
            let (n, v) = line.split_once(": ").unwrap_or((line, ""));
            if n.eq_ignore_ascii_case("status") {
                status = v.to_owned();
            } else {
                headers.push((n.to_owned(), v.to_owned()));
            }
        }
        let body = raw.stdout[split + 4..].to_vec();
        Self {
            status,
            headers,
            body,
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request id printed on pyfcgi's error pages (`k3f9a2qz-17`).
    pub fn request_id(&self) -> String {
        let text = self.body_str();
        let at = text
            .find("Request id: ")
            .expect("no request id on the page")
            + 12;
        let id = text[at..].split_whitespace().next().unwrap_or_default();
        assert!(
            id.split_once('-')
                .is_some_and(|(p, n)| p.len() == 8 && n.parse::<u64>().is_ok()),
            "not a request id: {id:?} in {text:?}"
        );
        id.to_owned()
    }
}

/// The params nginx's fastcgi_params would send for `GET /?QUERY`, with `extra` replacing or
/// adding entries (an empty name removes nothing; use [`call_raw`] for full control).
fn params<'a>(query: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", query),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", "/"),
        ("REQUEST_URI", "/"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.24.0"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "50000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
    ];
    for (k, v) in extra {
        match p.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v,
            None => p.push((k, v)),
        }
    }
    p
}

/// Sends one request (exactly these params) on a new connection and reads the whole answer.
fn call_raw(server: &Server, params: &[(&[u8], &[u8])], body: &[u8], piece: usize) -> RawResponse {
    let mut s = server.connect();
    let req = request_bytes_raw(1, false, params, body, piece);
    // Written from another thread: a big body must not wait on our reading.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&req);
    });
    let r = read_response(&mut s, 1)
        .unwrap_or_else(|e| panic!("no complete response: {e}; log:\n{}", server.log()));
    writer.join().unwrap();
    r
}

fn as_bytes<'a>(p: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    p.iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect()
}

/// `GET /?QUERY` with `extra` params and no body.
fn get(server: &Server, query: &str, extra: &[(&str, &str)]) -> Cgi {
    Cgi::parse(call_raw(server, &as_bytes(&params(query, extra)), b"", 0))
}

/// `POST /?QUERY` with `body` and its CONTENT_LENGTH.
fn post(server: &Server, query: &str, extra: &[(&str, &str)], body: &[u8]) -> Cgi {
    let len = body.len().to_string();
    let mut p = params(query, extra);
    p[0].1 = "POST";
    p.push(("CONTENT_LENGTH", &len));
    Cgi::parse(call_raw(server, &as_bytes(&p), body, 0))
}

/// Asserts a 200 with application status 0, showing the log otherwise.
fn assert_ok(server: &Server, r: &Cgi) {
    assert!(
        r.status.starts_with("200") && r.raw.app_status == 0,
        "status {:?} app_status {} body {:?}\nlog:\n{}",
        r.status,
        r.raw.app_status,
        r.body_str(),
        server.log()
    );
}

/// Asserts a 500 from pyfcgi (not from the app) with application status 0.
fn assert_500(server: &Server, r: &Cgi) {
    assert!(
        r.status.starts_with("500 ") && r.raw.app_status == 0,
        "status {:?} app_status {} body {:?}\nlog:\n{}",
        r.status,
        r.raw.app_status,
        r.body_str(),
        server.log()
    );
}

/// The validator had nothing to say: no warning, no failed assertion, no unclosed iterable.
fn assert_validator_quiet(server: &Server) {
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    for bad in [
        "WSGIWarning",
        "AssertionError",
        "Exception ignored",
        "without being closed",
        "application error",
    ] {
        assert!(!log.contains(bad), "log mentions {bad:?}:\n{log}");
    }
}

/// Waits until `needle` is in the log, failing with the log.
fn expect_log(server: &Server, needle: &str) {
    assert!(
        server.wait_log(needle),
        "log lacks {needle:?}:\n{}",
        server.log()
    );
}

/// `key=ascii(value)` lines of `environ_dump` as a map.
fn environ_of(server: &Server, r: &Cgi) -> HashMap<String, String> {
    assert_ok(server, r);
    r.body_str()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Python's `ascii()` of a plain ASCII str without quotes or backslashes.
fn py(s: &str) -> String {
    format!("'{s}'")
}

/// A temp file path for the apps' side channel, and what has been written there.
struct Side {
    _dir: TempDir,
    path: String,
}

impl Side {
    fn new() -> Self {
        let dir = TempDir::new("side");
        let path = dir.path().join("side.log").display().to_string();
        Self { _dir: dir, path }
    }
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    /// Waits up to 10 s for `line` to appear.
    fn wait_for(&self, line: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.lines().iter().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Deterministic bytes covering every value, CR and LF included (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// --- environ -------------------------------------------------------------------------------

#[test]
fn a_repeated_header_reaches_the_app_joined_in_one_value() {
    let server = serve("environ_dump", &[]);
    let mut p = params("", &[]);
    // What nginx sends for a request with two of each header line.
    p.extend([
        ("HTTP_ACCEPT", "text/html"),
        ("HTTP_COOKIE", "a=1"),
        ("HTTP_ACCEPT", "application/json;q=0.9"),
        ("HTTP_COOKIE", "b=2"),
        ("HTTP_X_FORWARDED_FOR", "192.0.2.1"),
        ("HTTP_X_FORWARDED_FOR", "192.0.2.2"),
        ("HTTP_X_FORWARDED_FOR", "192.0.2.3"),
        ("HTTP_X_SINGLE", "only"),
    ]);
    let r = Cgi::parse(call_raw(&server, &as_bytes(&p), b"", 0));
    let env = environ_of(&server, &r);
    assert_eq!(env["HTTP_ACCEPT"], py("text/html, application/json;q=0.9"));
    assert_eq!(env["HTTP_COOKIE"], py("a=1; b=2"));
    assert_eq!(
        env["HTTP_X_FORWARDED_FOR"],
        py("192.0.2.1, 192.0.2.2, 192.0.2.3")
    );
    assert_eq!(env["HTTP_X_SINGLE"], py("only"));
    assert_validator_quiet(&server);
}

#[test]
fn environ_holds_every_param_the_web_server_sent() {
    let server = serve("environ_dump", &[]);
    let sent = [
        ("REQUEST_METHOD", "POST"),
        ("QUERY_STRING", "a=1&b=two"),
        ("SCRIPT_NAME", "/mount"),
        ("PATH_INFO", "/some/path"),
        ("REQUEST_URI", "/mount/some/path?a=1&b=two"),
        ("DOCUMENT_URI", "/mount/some/path"),
        ("DOCUMENT_ROOT", "/srv/www"),
        ("SERVER_PROTOCOL", "HTTP/1.0"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.24.0"),
        ("REMOTE_ADDR", "203.0.113.9"),
        ("REMOTE_PORT", "51515"),
        ("SERVER_ADDR", "198.51.100.1"),
        ("SERVER_PORT", "8443"),
        ("SERVER_NAME", "app.example"),
        ("CONTENT_TYPE", "text/plain; charset=utf-8"),
        ("CONTENT_LENGTH", "4"),
        ("HTTP_HOST", "app.example:8443"),
        ("HTTP_COOKIE", "a=b; c=d"),
        ("HTTP_X_FORWARDED_FOR", "192.0.2.1, 192.0.2.2"),
        ("HTTP_ACCEPT", "*/*"),
        ("EMPTY_PARAM", ""),
        ("X_CUSTOM_PARAM", "value with spaces"),
        ("lowercase_param", "kept as sent"),
        ("APPL_PHYSICAL_PATH", "C:\\inetpub\\wwwroot\\"),
    ];
    let r = Cgi::parse(call_raw(&server, &as_bytes(&sent), b"body", 0));
    let env = environ_of(&server, &r);
    for (k, v) in sent {
        let want = if v.contains('\\') {
            format!("'{}'", v.replace('\\', "\\\\"))
        } else {
            py(v)
        };
        assert_eq!(env.get(k), Some(&want), "{k}; environ:\n{}", r.body_str());
    }
    assert_eq!(env["wsgi.version"], "(1, 0)");
    assert_eq!(env["wsgi.url_scheme"], py("http"));
    assert_eq!(env["wsgi.run_once"], "False");
    assert_eq!(env["wsgi.multiprocess"], "False");
    assert_eq!(env["wsgi.input_terminated"], "True");
    for k in ["wsgi.input", "wsgi.errors", "wsgi.file_wrapper"] {
        assert_eq!(env[k], py("present"), "{k}");
    }
    assert_validator_quiet(&server);
}

#[test]
fn environ_decodes_non_ascii_bytes_as_latin1() {
    let server = serve("environ_dump", &[]);
    let mut p: Vec<(&[u8], &[u8])> = as_bytes(&params("", &[]));
    p.retain(|(k, _)| *k != b"PATH_INFO");
    p.push((b"PATH_INFO", b"/caf\xc3\xa9"));
    p.push((b"HTTP_X_RAW", b"\xff\x80 \xe9"));
    let r = Cgi::parse(call_raw(&server, &p, b"", 0));
    let env = environ_of(&server, &r);
    // 'Ã©': the two UTF-8 bytes, one code point each.
    assert_eq!(env["PATH_INFO"], r"'/caf\xc3\xa9'");
    assert_eq!(env["path_info_utf8"], r"'/caf\xe9'");
    assert_eq!(env["HTTP_X_RAW"], r"'\xff\x80 \xe9'");
    assert_validator_quiet(&server);
}

#[test]
fn url_scheme_follows_https_and_request_scheme() {
    let server = serve("environ_dump", &[]);
    for (extra, want) in [
        (&[][..], "http"),
        (&[("HTTPS", "on")][..], "https"),
        (&[("HTTPS", "ON")][..], "https"),
        (&[("HTTPS", "1")][..], "https"),
        (&[("HTTPS", "off")][..], "http"),
        (&[("HTTPS", "")][..], "http"),
        (&[("REQUEST_SCHEME", "https")][..], "https"),
        (&[("REQUEST_SCHEME", "http")][..], "http"),
    ] {
        let env = environ_of(&server, &get(&server, "", extra));
        assert_eq!(env["wsgi.url_scheme"], py(want), "{extra:?}");
    }
    assert_validator_quiet(&server);
}

#[test]
fn url_scheme_flag_overrides_the_web_server() {
    let server = serve("environ_dump", &["--url-scheme", "https"]);
    let env = environ_of(&server, &get(&server, "", &[]));
    assert_eq!(env["wsgi.url_scheme"], py("https"));
    let env = environ_of(&server, &get(&server, "", &[("REQUEST_SCHEME", "http")]));
    assert_eq!(env["wsgi.url_scheme"], py("https"));
    let server = serve("environ_dump", &["--url-scheme", "http"]);
    let env = environ_of(&server, &get(&server, "", &[("HTTPS", "on")]));
    assert_eq!(env["wsgi.url_scheme"], py("http"));
    assert_validator_quiet(&server);
}

#[test]
fn multithread_reflects_the_threads_flag() {
    for (threads, want) in [("1", "False"), ("3", "True")] {
        let server = serve("environ_dump", &["--threads", threads]);
        let env = environ_of(&server, &get(&server, "", &[]));
        assert_eq!(env["wsgi.multithread"], want, "--threads {threads}");
        assert_eq!(env["wsgi.multiprocess"], "False");
        assert_validator_quiet(&server);
    }
}

#[test]
fn script_name_and_path_info_default_to_empty() {
    let server = serve("environ_dump", &[]);
    let p: Vec<(&[u8], &[u8])> = vec![(b"REQUEST_METHOD", b"GET"), (b"SERVER_NAME", b"h")];
    let env = environ_of(&server, &Cgi::parse(call_raw(&server, &p, b"", 0)));
    assert_eq!(env["SCRIPT_NAME"], "''");
    assert_eq!(env["PATH_INFO"], "''");
    assert_eq!(env["QUERY_STRING"], "''");
    assert_eq!(env["SERVER_PORT"], py("80"));
    assert_validator_quiet(&server);
}

#[test]
fn server_name_and_port_default_from_http_host() {
    let server = serve("environ_dump", &[]);
    for (host, https, name, port) in [
        (Some("example.test:8080"), false, "example.test", "8080"),
        (Some("example.test"), false, "example.test", "80"),
        (Some("example.test"), true, "example.test", "443"),
        (Some("[::1]:8443"), false, "[::1]", "8443"),
        (Some("[::1]"), false, "[::1]", "80"),
        (None, false, "localhost", "80"),
    ] {
        let mut p = params("", &[]);
        p.retain(|e| e.0 != "SERVER_NAME" && e.0 != "SERVER_PORT");
        if let Some(h) = host {
            p.push(("HTTP_HOST", h));
        }
        if https {
            p.push(("HTTPS", "on"));
        }
        let env = environ_of(
            &server,
            &Cgi::parse(call_raw(&server, &as_bytes(&p), b"", 0)),
        );
        assert_eq!(env["SERVER_NAME"], py(name), "{host:?}");
        assert_eq!(env["SERVER_PORT"], py(port), "{host:?}");
    }
    assert_validator_quiet(&server);
}

#[test]
fn script_name_flag_strips_the_mount_prefix() {
    let server = serve("environ_dump", &["--script-name", "/app/"]);
    for (path, script, rest) in [
        (Some("/app/x/y"), "/app", "/x/y"),
        (Some("/app"), "/app", ""),
        (Some("/app/"), "/app", "/"),
        (Some("/application"), "/app", "/application"),
        (Some("/other"), "/app", "/other"),
        (None, "/app", ""),
    ] {
        let mut p = params("", &[("SCRIPT_NAME", "/sent-by-web-server")]);
        match path {
            Some(v) => p.iter_mut().find(|e| e.0 == "PATH_INFO").unwrap().1 = v,
            None => p.retain(|e| e.0 != "PATH_INFO"),
        }
        let env = environ_of(
            &server,
            &Cgi::parse(call_raw(&server, &as_bytes(&p), b"", 0)),
        );
        assert_eq!(env["SCRIPT_NAME"], py(script), "{path:?}");
        assert_eq!(env["PATH_INFO"], py(rest), "{path:?}");
    }
    assert_validator_quiet(&server);
}

#[test]
fn http_content_type_and_length_never_reach_the_environ() {
    let server = serve("environ_dump", &[]);
    let r = post(
        &server,
        "",
        &[
            ("CONTENT_TYPE", "application/json"),
            ("HTTP_CONTENT_TYPE", "application/json"),
            ("HTTP_CONTENT_LENGTH", "2"),
        ],
        b"{}",
    );
    let env = environ_of(&server, &r);
    assert!(!env.contains_key("HTTP_CONTENT_TYPE"), "{}", r.body_str());
    assert!(!env.contains_key("HTTP_CONTENT_LENGTH"), "{}", r.body_str());
    assert_eq!(env["CONTENT_TYPE"], py("application/json"));
    assert_eq!(env["CONTENT_LENGTH"], py("2"));
    assert_validator_quiet(&server);
}

// --- wsgi.input ----------------------------------------------------------------------------

const INPUT_MODES: [&str; 9] = [
    "read",
    "read_minus_one",
    "read_n",
    "readline",
    "readline_size",
    "readlines",
    "readlines_hint",
    "iter",
    "iter_validated",
];

/// What each mode of `input_modes` must return for `body` (Python's file semantics).
fn expected_chunks(mode: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let lines = || body.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec);
    match mode {
        "read" | "read_minus_one" => vec![body.to_vec()],
        "read_n" => body.chunks(7).map(<[u8]>::to_vec).collect(),
        "readline" | "readlines" | "iter" | "iter_validated" => lines().collect(),
        "readline_size" => lines()
            .flat_map(|l| l.chunks(5).map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect(),
        "readlines_hint" => {
            let mut groups = Vec::new();
            let mut cur: Vec<u8> = Vec::new();
            for l in lines() {
                cur.extend_from_slice(&l);
                if cur.len() >= 10 {
                    groups.push(std::mem::take(&mut cur));
                }
            }
            if !cur.is_empty() {
                groups.push(cur);
            }
            groups
        }
        _ => unreachable!("{mode}"),
    }
}

/// Parses `after=N\n` + framed chunks.
fn framed(body: &[u8]) -> (usize, Vec<Vec<u8>>) {
    let nl = body.iter().position(|&b| b == b'\n').unwrap();
    let after: usize = std::str::from_utf8(&body[6..nl]).unwrap().parse().unwrap();
    let mut rest = &body[nl + 1..];
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
        let n: usize = std::str::from_utf8(&rest[..nl]).unwrap().parse().unwrap();
        chunks.push(rest[nl + 1..nl + 1 + n].to_vec());
        rest = &rest[nl + 1 + n..];
    }
    (after, chunks)
}

/// Runs every read mode over `sent` with CONTENT_LENGTH `cl` (None: no param), the body in
/// STDIN records of `piece` bytes; the app must see exactly `visible`.
fn check_input_modes(server: &Server, sent: &[u8], cl: Option<&str>, piece: usize, visible: &[u8]) {
    for mode in INPUT_MODES {
        let mut p = params(mode, &[("REQUEST_METHOD", "POST")]);
        if let Some(cl) = cl {
            p.push(("CONTENT_LENGTH", cl));
        }
        let r = Cgi::parse(call_raw(server, &as_bytes(&p), sent, piece));
        assert_ok(server, &r);
        let (after, chunks) = framed(&r.body);
        let want = expected_chunks(mode, visible);
        assert!(
            chunks == want,
            "mode {mode}, CONTENT_LENGTH {cl:?}, records of {piece}: got {} chunks {:?}..., want {} chunks {:?}...",
            chunks.len(),
            chunks
                .iter()
                .take(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>(),
            want.len(),
            want.iter()
                .take(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            after, 0,
            "mode {mode}: bytes readable after the end of the body"
        );
    }
}

const LINES: &[u8] = b"line one\nsecond line is longer than ten\n\nx\nlast line without newline";

#[test]
fn input_read_modes_with_content_length() {
    let server = serve("input_modes", &[]);
    let len = LINES.len().to_string();
    check_input_modes(&server, LINES, Some(&len), 0, LINES);
    // Record boundaries in the middle of lines change nothing.
    check_input_modes(&server, LINES, Some(&len), 3, LINES);
    let big: Vec<u8> = noise(150_000);
    check_input_modes(&server, &big, Some(&big.len().to_string()), 0, &big);
    check_input_modes(&server, b"", Some("0"), 0, b"");
    assert_validator_quiet(&server);
}

#[test]
fn input_read_modes_without_content_length_read_to_the_empty_stdin() {
    let server = serve("input_modes", &[]);
    check_input_modes(&server, LINES, None, 0, LINES);
    check_input_modes(&server, LINES, None, 3, LINES);
    // nginx sends an empty CONTENT_LENGTH when the request has none.
    check_input_modes(&server, LINES, Some(""), 4, LINES);
    let big: Vec<u8> = noise(150_000);
    check_input_modes(&server, &big, None, 0, &big);
    check_input_modes(&server, b"", None, 0, b"");
    assert_validator_quiet(&server);
}

#[test]
fn input_never_reads_past_content_length() {
    let server = serve("input_modes", &[]);
    // The web server sends more than it declared: the app sees only the declared bytes.
    check_input_modes(&server, LINES, Some("20"), 0, &LINES[..20]);
    check_input_modes(&server, LINES, Some("20"), 3, &LINES[..20]);
    check_input_modes(&server, LINES, Some("0"), 0, b"");
    let big = noise(200_000);
    check_input_modes(&server, &big, Some("100000"), 0, &big[..100_000]);
    assert_validator_quiet(&server);
}

#[test]
fn five_megabytes_read_seven_bytes_at_a_time_arrive_intact() {
    let server = serve("echo_7", &[]);
    let body = noise(5 << 20);
    let t = Instant::now();
    let r = post(&server, "", &[], &body);
    assert_ok(&server, &r);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "the echoed body differs");
    // Only the last read may come up short.
    assert_eq!(r.header("X-Short-Reads"), Some("1"));
    eprintln!("5 MB in 7-byte reads: {:?}", t.elapsed());
    assert_validator_quiet(&server);
}

#[test]
fn body_larger_than_max_body_memory_reaches_a_slow_reader_intact() {
    let server = serve("echo_slowly", &["--max-body-memory", "64k"]);
    let body = noise(3 << 20);
    let r = post(&server, "", &[], &body);
    assert_ok(&server, &r);
    assert!(
        r.body == body,
        "the echoed body differs ({} bytes)",
        r.body.len()
    );
    expect_log(&server, "spooling to a temp file");
    assert_validator_quiet(&server);
}

#[test]
fn unread_body_on_a_kept_connection_does_not_break_the_next_request() {
    let server = serve("hello", &[]);
    let mut s = server.connect();
    let big = noise(2 << 20);
    let len = big.len().to_string();
    let mut post_p = params("", &[("REQUEST_METHOD", "POST")]);
    post_p.push(("CONTENT_LENGTH", &len));
    // With CONTENT_LENGTH, without it, then a plain GET, all on one kept connection.
    let requests = [
        request_bytes_raw(1, true, &as_bytes(&post_p), &big, 0),
        request_bytes_raw(1, true, &as_bytes(&params("", &[])), &big, 0),
        request_bytes_raw(2, true, &as_bytes(&params("", &[])), b"", 0),
    ];
    for (i, req) in requests.into_iter().enumerate() {
        let id = if i == 2 { 2 } else { 1 };
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&req));
        let r = Cgi::parse(
            read_response(&mut s, id)
                .unwrap_or_else(|e| panic!("request {i}: {e}; log:\n{}", server.log())),
        );
        writer.join().unwrap().unwrap();
        assert_ok(&server, &r);
        assert_eq!(r.body, b"hello", "request {i}");
    }
    assert_validator_quiet(&server);
}

#[test]
fn max_body_size_answers_413_without_calling_the_app() {
    let server = serve("hello", &["--max-body-size", "1k"]);
    let side = Side::new();
    let mut s = server.connect();
    let mut send = |id: u16, body: &[u8]| {
        let len = body.len().to_string();
        let mut p = params(
            "",
            &[("REQUEST_METHOD", "POST"), ("PYFCGI_TEST_SIDE", &side.path)],
        );
        p.push(("CONTENT_LENGTH", &len));
        s.write_all(&request_bytes_raw(id, true, &as_bytes(&p), body, 0))
            .unwrap();
        Cgi::parse(read_response(&mut s, id).unwrap())
    };
    let r = send(1, &noise(2048));
    assert!(r.status.starts_with("413"), "{r:?}\nlog:\n{}", server.log());
    assert!(
        side.lines().is_empty(),
        "the app was called: {:?}",
        side.lines()
    );
    expect_log(&server, "answered 413");
    // The connection stays in sync; a body under the limit reaches the app.
    let r = send(1, &noise(1024));
    assert_ok(&server, &r);
    assert_eq!(side.lines(), ["called"]);
}

// --- write() and the response head ---------------------------------------------------------

#[test]
fn write_callable_sends_the_body_imperatively() {
    let server = serve("write_only", &[]);
    let r = get(&server, "", &[]);
    assert_ok(&server, &r);
    assert_eq!(r.body, b"one,two,three");
    assert_validator_quiet(&server);
}

#[test]
fn write_then_returned_iterable_are_sent_in_order() {
    let server = serve("write_then_iterable", &[]);
    let r = get(&server, "", &[]);
    assert_ok(&server, &r);
    assert_eq!(r.body, b"written-yielded-last");
    assert_validator_quiet(&server);
}

#[test]
fn headers_wait_for_the_first_non_empty_chunk() {
    let server = serve("empty_first_chunk", &[]);
    for mode in ["", "write"] {
        let r = get(&server, mode, &[]);
        assert_ok(&server, &r);
        assert_eq!(r.header("X-First"), Some("yes"));
        assert_eq!(r.body, b"data");
        assert!(r.raw.stdout.starts_with(b"Status: 200 OK\r\n"));
    }
    // After only empty chunks, exc_info may still replace the status: nothing was sent.
    for mode in ["replace", "write,replace"] {
        let r = get(&server, mode, &[]);
        assert!(
            r.status == "503 Service Unavailable" && r.raw.app_status == 0,
            "{mode}: {r:?}\nlog:\n{}",
            server.log()
        );
        assert_eq!(r.header("X-First"), None, "{mode}");
        assert_eq!(r.body, b"replaced", "{mode}");
    }
    assert_validator_quiet(&server);
}

// --- exc_info ------------------------------------------------------------------------------

#[test]
fn exc_info_before_headers_lets_the_second_status_win() {
    let server = serve("exc_info_before_headers", &[]);
    let r = get(&server, "", &[]);
    assert_eq!(r.status, "500 Handled Error", "log:\n{}", server.log());
    assert_eq!(r.raw.app_status, 0);
    assert_eq!(r.header("X-Replaced"), Some("yes"));
    assert_eq!(r.header("X-Stale"), None);
    assert_eq!(r.body, b"handled error page");
    assert_validator_quiet(&server);
}

#[test]
fn exc_info_after_headers_reraises_and_ends_the_request() {
    let server = serve("exc_info_after_headers", &[]);
    let side = Side::new();
    let r = get(&server, "", &[("PYFCGI_TEST_SIDE", &side.path)]);
    assert_eq!(r.status, "200 OK");
    assert_eq!(r.body, b"partial body");
    assert_ne!(
        r.raw.app_status, 0,
        "the cut-short response must not look complete"
    );
    assert!(
        side.lines().is_empty(),
        "start_response returned: {:?}",
        side.lines()
    );
    expect_log(&server, "late failure marker");
    expect_log(&server, "the response had already started");
    assert!(!String::from_utf8_lossy(&r.raw.stdout).contains("Too Late"));
}

#[test]
fn start_response_twice_without_exc_info_is_500() {
    let server = serve("start_response_twice", &[]);
    let r = get(&server, "", &[]);
    assert_500(&server, &r);
    assert!(!r.body_str().contains("unreachable"));
    expect_log(
        &server,
        "start_response() called a second time without exc_info",
    );
}

// --- application errors --------------------------------------------------------------------

#[test]
fn exception_before_start_is_a_generic_500_with_the_traceback_in_the_log() {
    let server = serve("raise_before_start", &[]);
    let r = get(&server, "", &[]);
    assert_500(&server, &r);
    let page = r.body_str();
    assert!(!page.contains("secret detail"), "{page}");
    assert!(!page.contains("Traceback"), "{page}");
    let id = r.request_id();
    expect_log(&server, "RuntimeError: secret detail 8f3a");
    let log = server.log();
    let at = log
        .find("application error")
        .expect("no application error line");
    let entry = &log[at..];
    let tb = entry.find("Traceback").expect("no traceback");
    let fields = entry
        .find(&format!("request={id}"))
        .unwrap_or_else(|| panic!("no request={id} in:\n{log}"));
    assert!(
        tb < fields && entry[..fields].contains("secret detail 8f3a"),
        "{log}"
    );
}

#[test]
fn detailed_errors_put_the_traceback_in_the_page() {
    let server = serve("raise_before_start", &["--detailed-errors"]);
    let r = get(&server, "", &[]);
    assert_500(&server, &r);
    let page = r.body_str();
    assert!(page.contains("Traceback"), "{page}");
    assert!(page.contains("RuntimeError: secret detail 8f3a"), "{page}");
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[test]
fn exception_during_iteration_after_headers_ends_with_nonzero_app_status() {
    let server = serve("raise_during_iteration", &[]);
    let r = get(&server, "", &[]);
    assert_eq!(r.status, "200 OK");
    assert_eq!(r.body, b"first chunk");
    assert_ne!(r.raw.app_status, 0);
    expect_log(&server, "iteration failure marker");
    expect_log(&server, "the response had already started");
}

#[test]
fn non_bytes_in_the_iterable_is_500() {
    let server = serve("raw_yields_str", &[]);
    let r = get(&server, "", &[]);
    assert_500(&server, &r);
    assert!(!r.body_str().contains("not bytes\n") && !r.body_str().starts_with("not bytes"));
    expect_log(&server, "yielded str, not bytes");
}

#[test]
fn start_response_never_called_is_500() {
    let server = serve("raw_no_start_response", &[]);
    for mode in ["", "empty"] {
        let r = get(&server, mode, &[]);
        assert_500(&server, &r);
        assert!(!r.body_str().contains("body without a status"));
    }
    expect_log(&server, "before calling start_response");
}

#[test]
fn close_is_called_however_the_response_ends() {
    let server = serve("tracked_close", &[]);
    let side = Side::new();
    for (mode, status, body) in [
        ("ok", "200 OK", &b"ab"[..]),
        ("fail_first", "500 Internal Server Error", b""),
        ("fail_later", "200 OK", b"a"),
    ] {
        side.clear();
        let r = get(&server, mode, &[("PYFCGI_TEST_SIDE", &side.path)]);
        assert_eq!(r.status, status, "{mode}; log:\n{}", server.log());
        if !body.is_empty() {
            assert_eq!(r.body, body, "{mode}");
        }
        assert_eq!(side.lines(), ["called", "closed"], "{mode}");
    }
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    assert!(!log.contains("without being closed"), "{log}");
}

/// Starts `tracked_close?forever` on `s` (request `id`) and reads until some body arrived.
fn start_endless(server: &Server, s: &mut TcpStream, id: u16, keep: bool, side: &Side) {
    let p = params("forever", &[("PYFCGI_TEST_SIDE", &side.path)]);
    s.write_all(&request_bytes_raw(id, keep, &as_bytes(&p), b"", 0))
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 65536];
    while got < 100_000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early; log:\n{}", server.log());
        got += n;
    }
}

#[test]
fn close_is_called_when_the_client_goes_away() {
    let server = serve("tracked_close", &[]);
    let side = Side::new();
    let mut s = server.connect();
    start_endless(&server, &mut s, 1, false, &side);
    drop(s);
    assert!(
        side.wait_for("closed"),
        "close() not called after the client left: {:?}\nlog:\n{}",
        side.lines(),
        server.log()
    );
    expect_log(&server, "client went away");
}

/// A reader that fails once `.1` has passed (a response that never ends still ends the test).
struct Deadline<'a>(&'a mut TcpStream, Instant);

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "deadline passed",
            ));
        }
        self.0.read(buf)
    }
}

#[test]
fn close_is_called_when_the_web_server_aborts_the_request() {
    let server = serve("tracked_close", &[]);
    let side = Side::new();
    let mut s = server.connect();
    start_endless(&server, &mut s, 1, true, &side);
    let mut out = BytesMut::new();
    encode::abort_request(&mut out, 1);
    s.write_all(&out).unwrap();
    let mut bounded = Deadline(&mut s, Instant::now() + Duration::from_secs(10));
    let r = read_response(&mut bounded, 1).unwrap_or_else(|e| {
        panic!(
            "no END_REQUEST after FCGI_ABORT_REQUEST: {e}; log:\n{}",
            server.log()
        )
    });
    assert!(r.status.is_some());
    assert!(
        side.wait_for("closed"),
        "close() not called after FCGI_ABORT_REQUEST: {:?}\nlog:\n{}",
        side.lines(),
        server.log()
    );
    // The kept connection serves the next request.
    let p = params("ok", &[]);
    s.write_all(&request_bytes_raw(1, true, &as_bytes(&p), b"", 0))
        .unwrap();
    let r = Cgi::parse(read_response(&mut s, 1).unwrap());
    assert_ok(&server, &r);
    assert_eq!(r.body, b"ab");
}

// --- response headers ----------------------------------------------------------------------

#[test]
fn header_injection_and_invalid_heads_are_refused() {
    // One worker: a request that killed it would leave the server unable to answer.
    let raw = serve("raw_bad_header", &["--threads", "1"]);
    let validated = serve("bad_header", &[]);
    for (server, mode, why) in [
        (&raw, "crlf_value", "invalid value for header"),
        (&raw, "lf_value", "invalid value for header"),
        (&raw, "cr_value", "invalid value for header"),
        (&raw, "crlf_name", "invalid header name"),
        (&raw, "crlf_status", "invalid status"),
        (&raw, "bad_status", "invalid status"),
        (&raw, "word_status", "invalid status"),
        (&raw, "status_header", "named 'Status' is not allowed"),
        (&raw, "bytes_value", "must be str"),
        (&validated, "non_latin1_value", "invalid value for header"),
        (&validated, "hop_connection", "hop-by-hop"),
        (&validated, "hop_transfer_encoding", "hop-by-hop"),
        (&validated, "hop_keep_alive", "hop-by-hop"),
        (&validated, "hop_upgrade", "hop-by-hop"),
        (&validated, "plus_content_length", "invalid Content-Length"),
        (
            &validated,
            "negative_content_length",
            "invalid Content-Length",
        ),
    ] {
        let r = get(server, mode, &[]);
        assert_500(server, &r);
        let out = String::from_utf8_lossy(&r.raw.stdout);
        assert!(!out.contains("X-Injected"), "{mode}: {out}");
        assert!(!out.contains("body after head"), "{mode}: {out}");
        assert!(
            r.raw
                .stdout
                .starts_with(b"Status: 500 Internal Server Error\r\n"),
            "{mode}: {out}"
        );
        expect_log(server, why);
    }
    for server in [&raw, &validated] {
        let r = get(server, "ok", &[]);
        assert_ok(server, &r);
        assert_eq!(r.body, b"body after head");
    }
    // Latin-1 in the status and header values goes out as one byte per character.
    let r = get(&validated, "latin1", &[]);
    assert_ok(&validated, &r);
    assert!(
        r.raw.stdout.starts_with(b"Status: 200 D\xe9j\xe0 vu\r\n"),
        "{:?}",
        String::from_utf8_lossy(&r.raw.stdout)
    );
    assert_eq!(r.header("X-Latin"), Some("caf\u{e9}"));
    // The validator let these through to pyfcgi and raised nothing itself.
    assert!(
        !validated.log().contains("AssertionError"),
        "{}",
        validated.log()
    );
}

#[test]
fn content_length_is_honoured() {
    let server = serve("content_length_mismatch", &[]);
    let r = get(&server, "over", &[]);
    assert_ok(&server, &r);
    assert_eq!(r.header("Content-Length"), Some("5"));
    assert_eq!(r.body, b"01234");
    expect_log(&server, "more bytes than its Content-Length");
    let r = get(&server, "under", &[]);
    assert_eq!(r.status, "200 OK");
    assert_eq!(r.body, b"abc");
    expect_log(&server, "short response");
    assert_validator_quiet(&server);
}

#[test]
fn head_and_304_without_body_are_not_short_responses() {
    let server = serve("head_aware", &[]);
    let r = get(&server, "", &[("REQUEST_METHOD", "HEAD")]);
    assert_ok(&server, &r);
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert!(r.body.is_empty());
    let r = get(&server, "304", &[]);
    assert_eq!(r.status, "304 Not Modified");
    assert!(r.body.is_empty());
    let r = get(&server, "", &[]);
    assert_ok(&server, &r);
    assert_eq!(r.body, b"0123456789");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!server.log().contains("short response"), "{}", server.log());
    assert_validator_quiet(&server);
}

#[test]
fn no_body_goes_out_for_head_204_and_304_yet_the_iterable_is_consumed_and_closed() {
    let server = serve("raw_body_anyway", &[]);
    let dir = TempDir::new("bodiless");
    let side = dir.path().join("side.txt");
    let side_s = side.display().to_string();
    for (status, method) in [
        ("204+No+Content", "GET"),
        ("304+Not+Modified", "GET"),
        ("200+OK", "HEAD"),
        ("404+Not+Found", "HEAD"),
    ] {
        let _ = std::fs::remove_file(&side);
        let r = get(
            &server,
            status,
            &[("REQUEST_METHOD", method), ("PYFCGI_TEST_SIDE", &side_s)],
        );
        assert_eq!(r.status, status.replace('+', " "), "{method}: {r:?}");
        assert_eq!(r.raw.app_status, 0, "{r:?}");
        assert!(r.body.is_empty(), "{status} {method} sent a body: {r:?}");
        let seen = std::fs::read_to_string(&side).unwrap_or_default();
        assert_eq!(
            seen, "chunk 0\nchunk 1\nchunk 2\nclosed\n",
            "{status} {method}: the iterable must be consumed and closed"
        );
    }
    let r = get(&server, "200+OK", &[]);
    assert_eq!(r.body, b"body0body1body2");
    assert!(!server.log().contains("short response"), "{}", server.log());
}

#[test]
fn an_informational_status_is_refused_as_the_final_one() {
    let server = serve("raw_body_anyway", &[]);
    for status in ["100+Continue", "103+Early+Hints"] {
        let r = get(&server, status, &[]);
        assert_500(&server, &r);
        assert!(!r.body_str().contains("body0"), "{r:?}");
    }
    expect_log(
        &server,
        "a 1xx status is informational, not a final response",
    );
}

// --- wsgi.file_wrapper ---------------------------------------------------------------------

/// A file of noise bigger than pyfcgi's 256 KiB send buffer.
fn data_file(dir: &Path) -> (String, Vec<u8>) {
    let data = noise(600_001);
    let path = dir.join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    (path.display().to_string(), data)
}

#[test]
fn file_wrapper_sends_files_and_bytesio_byte_exact_and_closes_them() {
    let dir = TempDir::new("filewrap");
    let (file, data) = data_file(dir.path());
    let side = Side::new();
    for (app, query, skip) in [
        ("file_wrapper_file", "", 0),
        ("raw_file_wrapper_fileno", "", 0),
        ("raw_file_wrapper_fileno", "12345", 12345),
        ("file_wrapper_bytesio", "", 0),
        ("raw_file_wrapper_bytesio", "", 0),
    ] {
        let server = serve(app, &[]);
        side.clear();
        let r = get(
            &server,
            query,
            &[
                ("PYFCGI_TEST_FILE", &file),
                ("PYFCGI_TEST_SIDE", &side.path),
            ],
        );
        assert_ok(&server, &r);
        assert_eq!(r.body.len(), data.len() - skip, "{app}?{query}");
        assert!(r.body == data[skip..], "{app}?{query}: bytes differ");
        assert_eq!(side.lines(), ["file closed"], "{app}?{query}");
        assert_validator_quiet(&server);
    }
}

// --- logging -------------------------------------------------------------------------------

#[test]
fn print_logging_and_wsgi_errors_reach_the_log_with_the_request_number() {
    let server = serve("chatty", &[]);
    let mut numbers = Vec::new();
    for tag in ["tag1f", "tag2f"] {
        let r = get(&server, tag, &[]);
        assert_ok(&server, &r);
        let mut seen = Vec::new();
        for (what, stream) in [
            ("print", "stdout"),
            ("logging", "stderr"),
            ("errors", "wsgi.errors"),
        ] {
            let marker = format!("{what}-{tag}");
            expect_log(&server, &marker);
            let log = server.log();
            let line = log.lines().find(|l| l.contains(&marker)).unwrap();
            assert!(line.contains(&format!("stream=\"{stream}\"")), "{line}");
            let id = line
                .split("request=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .filter(|id| id.contains('-'))
                .unwrap_or_else(|| panic!("no request id: {line}"));
            seen.push(id.to_owned());
        }
        assert!(seen.iter().all(|n| *n == seen[0]), "{seen:?}");
        numbers.push(seen[0].clone());
    }
    assert_ne!(numbers[0], numbers[1]);
    assert_validator_quiet(&server);
}

// --- SystemExit ----------------------------------------------------------------------------

#[test]
fn system_exit_answers_500_and_shuts_down_gracefully() {
    let mut server = serve("system_exit", &[]);
    let r = get(&server, "", &[]);
    assert_500(&server, &r);
    expect_log(&server, "SystemExit");
    expect_log(&server, "shutting down gracefully");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        server.log()
    );
}
