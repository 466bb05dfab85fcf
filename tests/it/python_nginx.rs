//! Real Python web apps behind real nginx: the Flask example (`examples/flask_app`) and the
//! Django example (`examples/django_project`), each served by its own `pyfcgi serve` on a Unix
//! socket with a private nginx in front (configured like `configs/nginx-flask.conf`). Every
//! feature is checked for both frameworks: query strings, urlencoded forms (with Django's CSRF
//! token), a 10 MB multipart upload with bounded server memory, a streamed response that
//! arrives in pieces, redirects, cookies, UTF-8 path segments and HEAD.
//!
//! The venv comes from `$PYFCGI_VENV` when set, else from `scripts/setup-python` (which creates
//! or reuses `<repo>/.venv`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{Nginx, Server, TempDir, http};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv with Flask and Django: `$PYFCGI_VENV`, or whatever `scripts/setup-python` prints.
pub(crate) fn venv() -> &'static str {
    static VENV: OnceLock<String> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Ok(v) = std::env::var("PYFCGI_VENV")
            && Path::new(&v).join("bin/python").exists()
        {
            return v;
        }
        let out = Command::new(repo().join("scripts/setup-python"))
            .output()
            .expect("run scripts/setup-python");
        assert!(
            out.status.success(),
            "scripts/setup-python failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum App {
    Flask,
    Django,
}

impl App {
    /// Starts `pyfcgi serve` for this app on a fresh Unix socket.
    fn serve(self) -> Server {
        let venv = venv();
        match self {
            App::Flask => {
                let spec = format!("{}:app", repo().join("examples/flask_app/app.py").display());
                Server::unix(&[&spec, "--venv", venv])
            }
            App::Django => {
                let dir = repo().join("examples/django_project");
                Server::unix(&[
                    "mysite.wsgi:application",
                    "--chdir",
                    &dir.display().to_string(),
                    "--venv",
                    venv,
                ])
            }
        }
    }
}

/// A pyfcgi serving `app` with nginx in front, the way `configs/nginx-flask.conf` sets it up:
/// a keep-alive upstream, and `fastcgi_buffering off` for the streaming location.
struct Stack {
    server: Server,
    nginx: Nginx,
}

impl Stack {
    fn start(app: App) -> Self {
        let server = app.serve();
        let upstream = format!("upstream pyfcgi {{ server {}; keepalive 8; }}", server.addr);
        let params = Nginx::fastcgi_params();
        let locations = format!(
            "location / {{ {params} fastcgi_keep_conn on; fastcgi_pass pyfcgi; }}
             location = /stream {{ {params} fastcgi_keep_conn on; fastcgi_buffering off;
                                   fastcgi_pass pyfcgi; }}"
        );
        let nginx = Nginx::start(&upstream, &locations);
        Self { server, nginx }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
        http(self.nginx.port, "GET", path, headers, b"")
    }

    /// What to show when an assertion fails: both logs.
    fn logs(&self) -> String {
        format!(
            "--- pyfcgi log:\n{}\n--- nginx error log:\n{}",
            self.server.log(),
            self.nginx.error_log()
        )
    }
}

/// The value of header `name` (case-insensitive) in a header block.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn text(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("UTF-8 body")
}

/// `kind` (VmHWM, VmRSS) of process `pid`, in KiB.
fn vm_kib(pid: u32, kind: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(kind)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {kind} in /proc/{pid}/status"))
}

/// A multipart/form-data body with one file field `file`; returns (content type, body).
fn multipart(data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----pyfcgi-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// sha256 of `data` in hex, by coreutils' `sha256sum` (no hashing crate in the dev-deps).
fn sha256_hex(data: &[u8]) -> String {
    let dir = TempDir::new("sha");
    let f: PathBuf = dir.path().join("data");
    std::fs::write(&f, data).unwrap();
    let out = Command::new("sha256sum")
        .arg(&f)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn pseudo_random(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i >> 13) as u8)
        .collect()
}

/// Declares one test per framework for a check `fn(App)`.
macro_rules! both {
    ($check:ident) => {
        mod $check {
            #[test]
            fn flask() {
                super::$check(super::App::Flask);
            }
            #[test]
            fn django() {
                super::$check(super::App::Django);
            }
        }
    };
}

both!(get_with_query);
fn get_with_query(app: App) {
    let st = Stack::start(app);
    let (status, head, body) = st.get("/hello?name=caf%C3%A9+au+lait&x=1", &[]);
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    assert_eq!(text(&body), "Hello, café au lait!\n");
    assert!(
        header(&head, "Content-Type").is_some_and(|v| v.starts_with("text/plain")),
        "{head}"
    );
    let (status, head, body) = st.get("/", &[]);
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    let page = text(&body);
    assert!(page.contains("href=\"/hello?name=world\""), "{page}");
    assert!(
        header(&head, "Content-Type").is_some_and(|v| v.starts_with("text/html")),
        "{head}"
    );
}

both!(form_post_urlencoded);
fn form_post_urlencoded(app: App) {
    let st = Stack::start(app);
    let (status, head, page) = st.get("/form", &[]);
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    let page = text(&page);
    assert!(page.contains("<form method=\"post\""), "{page}");
    let mut body = String::from("name=J%C3%BCrgen+M%C3%BCller&colour=blue%26green&colour=red");
    let mut cookie = String::new();
    if app == App::Django {
        // Django's CSRF protection: the token cookie from the GET, and the (masked) token from
        // the form's hidden field.
        let token = page
            .split("name=\"csrfmiddlewaretoken\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token in the form:\n{page}"));
        body = format!("csrfmiddlewaretoken={token}&{body}");
        let set = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| v.trim().strip_prefix("csrftoken="))
            .unwrap_or_else(|| panic!("no csrftoken cookie:\n{head}"));
        cookie = format!("csrftoken={}", set.split(';').next().unwrap());
    }
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if !cookie.is_empty() {
        headers.push(("Cookie", &cookie));
    }
    let (status, head, got) = http(st.nginx.port, "POST", "/form", &headers, body.as_bytes());
    assert_eq!(status, 200, "{head}\n{}\n{}", text(&got), st.logs());
    assert_eq!(
        text(&got),
        "colour=blue&green\ncolour=red\nname=Jürgen Müller\n"
    );
}

both!(upload_10_mb_multipart_with_bounded_memory);
fn upload_10_mb_multipart_with_bounded_memory(app: App) {
    let st = Stack::start(app);
    let pid = st.server.pid();
    // Warm-up: the same code path with a small file, so that lazy imports and first-use
    // allocations are counted before the baseline.
    let small = pseudo_random(64 * 1024);
    let (ct, body) = multipart(&small);
    let (status, head, got) = http(
        st.nginx.port,
        "POST",
        "/upload",
        &[("Content-Type", &ct)],
        &body,
    );
    assert_eq!(status, 200, "{head}\n{}\n{}", text(&got), st.logs());
    assert_eq!(
        text(&got),
        format!("size={}\nsha256={}\n", small.len(), sha256_hex(&small))
    );
    let base_hwm = vm_kib(pid, "VmHWM");

    let data = pseudo_random(10 * 1024 * 1024);
    let want = sha256_hex(&data);
    let (ct, body) = multipart(&data);
    let t = Instant::now();
    let (status, head, got) = http(
        st.nginx.port,
        "POST",
        "/upload",
        &[("Content-Type", &ct)],
        &body,
    );
    let took = t.elapsed();
    assert_eq!(status, 200, "{head}\n{}\n{}", text(&got), st.logs());
    assert_eq!(
        text(&got),
        format!("size={}\nsha256={want}\n", data.len()),
        "the app saw different bytes"
    );
    let hwm = vm_kib(pid, "VmHWM");
    let rss = vm_kib(pid, "VmRSS");
    let growth_mib = hwm.saturating_sub(base_hwm) as f64 / 1024.0;
    eprintln!(
        "{app:?}: 10 MB upload in {took:?}; VmHWM {base_hwm} -> {hwm} KiB (+{growth_mib:.1} MiB), VmRSS {rss} KiB"
    );
    assert!(
        growth_mib < 40.0,
        "{app:?}: peak RSS grew by {growth_mib:.1} MiB during a 10 MB upload \
         (VmHWM {base_hwm} -> {hwm} KiB); the body should be streamed/spooled, not held in memory"
    );
}

both!(streaming_response_arrives_in_pieces);
fn streaming_response_arrives_in_pieces(app: App) {
    let st = Stack::start(app);
    // Warm-up: first-request imports are not what is measured here.
    let (status, _, _) = st.get("/hello", &[]);
    assert_eq!(status, 200, "{}", st.logs());

    let mut s = TcpStream::connect(("127.0.0.1", st.nginx.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let (mut first, mut last) = (None, None);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let seen = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        if first.is_none() && seen(b"chunk 00 ") {
            first = Some(start.elapsed());
        }
        if last.is_none() && seen(b"chunk 19 ") {
            last = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", st.logs());
    let (Some(first), Some(last)) = (first, last) else {
        panic!("chunks missing:\n{}", String::from_utf8_lossy(&raw));
    };
    eprintln!("{app:?}: first chunk after {first:?}, last after {last:?}, whole {total:?}");
    // The body: 20 lines of 1 KiB, in order (dechunked by looking at the payload lines).
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    for i in 0..20 {
        let line = format!("chunk {i:02} ");
        assert!(body.contains(&line), "missing {line:?}");
    }
    assert!(
        first < Duration::from_millis(500),
        "{app:?}: the first chunk took {first:?}: the response was buffered, not streamed"
    );
    assert!(
        total >= Duration::from_secs(1),
        "{app:?}: the generator sleeps 20 x 50 ms, yet the response took {total:?}"
    );
    assert!(
        last - first >= Duration::from_millis(600),
        "{app:?}: chunks arrived together ({first:?} .. {last:?}), not as they were produced"
    );
}

both!(redirect_gives_302_and_location);
fn redirect_gives_302_and_location(app: App) {
    let st = Stack::start(app);
    let (status, head, _) = st.get("/redirect", &[]);
    assert_eq!(status, 302, "{head}\n{}", st.logs());
    let loc = header(&head, "Location").unwrap_or_else(|| panic!("no Location:\n{head}"));
    assert!(
        loc == "/hello" || loc.ends_with("://localhost/hello"),
        "{loc}"
    );
}

both!(cookie_set_then_sent_back_is_seen);
fn cookie_set_then_sent_back_is_seen(app: App) {
    let st = Stack::start(app);
    let (status, head, _) = st.get("/cookie/set?v=oatmeal42", &[]);
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    let set = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim())
        .find(|v| v.starts_with("demo="))
        .unwrap_or_else(|| panic!("no demo cookie set:\n{head}"));
    let pair = set.split(';').next().unwrap();
    assert_eq!(pair, "demo=oatmeal42");
    let cookie = format!("theme=dark; {pair}; lang=en");
    let (status, head, body) = st.get("/cookie/get", &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    assert_eq!(text(&body), "demo=oatmeal42\n");
}

both!(utf8_path_segment_round_trips);
fn utf8_path_segment_round_trips(app: App) {
    let st = Stack::start(app);
    for (path, want) in [
        ("/u/caf%C3%A9", "café\n"),
        ("/u/%E6%97%A5%E6%9C%AC%F0%9F%8E%89", "日本🎉\n"),
        ("/u/a%20b", "a b\n"),
    ] {
        let (status, head, body) = st.get(path, &[]);
        assert_eq!(status, 200, "{path}: {head}\n{}", st.logs());
        assert_eq!(text(&body), want, "{path}");
    }
}

both!(head_gives_headers_and_no_body);
fn head_gives_headers_and_no_body(app: App) {
    let st = Stack::start(app);
    let (status, head, body) = http(st.nginx.port, "HEAD", "/hello?name=head", &[], b"");
    assert_eq!(status, 200, "{head}\n{}", st.logs());
    assert!(body.is_empty(), "HEAD got a body: {:?}", text(&body));
    assert!(
        header(&head, "Content-Type").is_some_and(|v| v.starts_with("text/plain")),
        "{head}"
    );
    // "Hello, head!\n": the length the GET body would have.
    assert_eq!(header(&head, "Content-Length"), Some("13"), "{head}");
}

both!(client_abort_mid_stream_is_not_an_error);
/// A visitor who leaves during a streamed response is routine: pyfcgi should log it as such
/// ("client went away", INFO), not as an internal ERROR.
fn client_abort_mid_stream_is_not_an_error(app: App) {
    let st = Stack::start(app);
    let mut s = TcpStream::connect(("127.0.0.1", st.nginx.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(9).any(|w| w == b"chunk 01 ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        raw.extend_from_slice(&buf[..n]);
    }
    drop(s);
    // nginx notices on its next write and drops the upstream request; the app's generator is
    // then closed by pyfcgi at its next chunk.
    let end = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = st.server.log();
        if log.contains("client went away") || log.contains("ERROR") {
            break log;
        }
        assert!(
            Instant::now() < end,
            "no sign of the aborted request in the log:\n{}",
            st.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !log.contains("ERROR"),
        "{app:?}: a client abort was logged as an error:\n{log}"
    );
}
