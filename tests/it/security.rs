//! The hardening SECURITY.md promises, driven through the real binary: forwarding headers
//! applied only from `--trusted-proxy`, secrets from web.config kept out of logs and doctor
//! output, Unix sockets that only the owner and group can use, and request-body spool files
//! that nobody else can read and that vanish with the request. (Response header injection is
//! wsgi.rs `bad_headers_*` and fuzz/fuzz_targets/head.rs; tracebacks staying off client pages
//! is app_loading.rs and wsgi.rs.)

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Nginx, Server, TempDir, http, run_pyfcgi};
use crate::wsgi::APPS;

fn location(pass: &str) -> String {
    format!(
        "location / {{ {} fastcgi_pass {pass}; }}",
        Nginx::fastcgi_params()
    )
}

fn lines(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::to_owned)
        .collect()
}

const FORWARDED: &[(&str, &str)] = &[
    // The first entry is what a client could forge; nginx (the trusted hop) saw 203.0.113.7.
    ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "www.example.com"),
];

#[test]
fn forwarded_headers_change_the_request_only_from_a_trusted_proxy() {
    // nginx connects from 127.0.0.1: trusted in the first run, not in the others.
    for (trust, applied) in [
        (Some("127.0.0.1"), true),
        (Some("10.0.0.0/8,::1"), false),
        (None, false),
    ] {
        let mut args = vec!["--builtin", "env"];
        if let Some(t) = trust {
            args.extend(["--trusted-proxy", t]);
        }
        let server = Server::unix(&args);
        let nginx = Nginx::start("", &location(&server.addr));
        let (status, _, body) = http(nginx.port, "GET", "/", FORWARDED, b"");
        assert_eq!(status, 200, "{}", nginx.error_log());
        let env = lines(&body);
        let has = |l: &str| env.iter().any(|e| e == l);
        if applied {
            for l in [
                "REMOTE_ADDR=203.0.113.7",
                "HTTPS=on",
                "REQUEST_SCHEME=https",
                "HTTP_HOST=www.example.com",
            ] {
                assert!(has(l), "{trust:?}: missing {l} in {env:#?}");
            }
        } else {
            assert!(has("REMOTE_ADDR=127.0.0.1"), "{trust:?}: {env:#?}");
            assert!(
                !has("HTTPS=on") && !has("HTTP_HOST=www.example.com"),
                "{trust:?}: {env:#?}"
            );
        }
        // The headers themselves always reach the app as they were sent.
        assert!(has("HTTP_X_FORWARDED_FOR=6.6.6.6, 203.0.113.7"), "{env:#?}");
    }
}

#[test]
fn a_trusted_proxy_sets_the_wsgi_url_scheme() {
    let spec = format!("{APPS}/pep3333.py:environ_dump");
    let server = Server::unix(&[&spec, "--trusted-proxy", "127.0.0.1"]);
    let nginx = Nginx::start("", &location(&server.addr));
    let (status, _, body) = http(nginx.port, "GET", "/", FORWARDED, b"");
    assert_eq!(status, 200, "{}", server.log());
    let env = lines(&body);
    assert!(
        env.iter().any(|l| l == "wsgi.url_scheme='https'"),
        "{env:#?}"
    );
    assert!(
        env.iter().any(|l| l == "REMOTE_ADDR='203.0.113.7'"),
        "{env:#?}"
    );
}

#[test]
fn a_bad_trusted_proxy_is_refused_at_start() {
    let out = run_pyfcgi(
        &[
            "serve",
            "--builtin",
            "hello",
            "--trusted-proxy",
            "proxy.example.com",
        ],
        &[],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--trusted-proxy = \"proxy.example.com\": expected IP addresses or networks"),
        "{}",
        out.stderr
    );
}

const SECRET: &str = "sekrit-5b0d-do-not-log";

/// A site with a secret in its appSettings and an app that says whether it sees it.
fn secret_site() -> TempDir {
    let dir = TempDir::new("secret-site");
    std::fs::write(
        dir.path().join("web.config"),
        format!(
            "<configuration><appSettings>\
             <add key=\"WSGI_HANDLER\" value=\"secret_app.application\"/>\
             <add key=\"DJANGO_SECRET_KEY\" value=\"{SECRET}\"/>\
             </appSettings></configuration>"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("secret_app.py"),
        "import os, sys\n\
         def application(environ, start_response):\n\
         \x20   seen = os.environ.get('DJANGO_SECRET_KEY') == 'sekrit-5b0d-do-not-log'\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'seen' if seen else b'missing']\n",
    )
    .unwrap();
    dir
}

#[test]
fn app_settings_values_reach_the_app_but_never_the_log_or_doctor() {
    let dir = secret_site();
    let root = dir.path().to_str().unwrap();
    let log = dir.path().join("pyfcgi.log");
    let log_s = log.display().to_string();
    let port = crate::support::free_port();
    let mut cmd = Command::new(crate::support::pyfcgi());
    cmd.args([
        "serve",
        "--app-root",
        root,
        "--log-file",
        &log_s,
        "--log-level",
        "trace",
    ])
    .args(["--bind", &format!("127.0.0.1:{port}")])
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut answer = None;
    while Instant::now() < end && answer.is_none() {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&crate::support::request_bytes(
                1,
                false,
                &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")],
                b"",
            ))
            .unwrap();
            answer = crate::support::read_response(&mut s, 1).ok();
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.expect("no answer");
    assert!(
        answer.stdout.ends_with(b"seen"),
        "{:?}",
        String::from_utf8_lossy(&answer.stdout)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("application loaded"), "{text}");
    assert!(!text.contains(SECRET), "the log holds the secret:\n{text}");

    let out = run_pyfcgi(
        &["doctor", "--app-root", root, "--no-import"],
        &[],
        None,
        Duration::from_secs(60),
    );
    let stdout = out.stdout_str();
    assert!(
        !stdout.contains(SECRET),
        "doctor printed the secret:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "DJANGO_SECRET_KEY = (hidden: {} characters",
            SECRET.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("WSGI_HANDLER      = secret_app.application"),
        "{stdout}"
    );
}

#[test]
fn a_unix_socket_is_owner_and_group_only_whatever_the_umask() {
    let dir = TempDir::new("sock-mode");
    let sock = dir.path().join("s.sock");
    for (extra, want) in [(None, 0o660), (Some("600"), 0o600)] {
        let _ = std::fs::remove_file(&sock);
        let mut args = format!(
            "umask 000; exec {} serve --builtin hello --bind unix:{}",
            crate::support::pyfcgi(),
            sock.display()
        );
        if let Some(m) = extra {
            args.push_str(&format!(" --socket-mode {m}"));
        }
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &args]).stdin(Stdio::null());
        let server = Server::from_command(cmd, None);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "socket mode {mode:o}; log:\n{}", server.log());
        drop(server);
    }
}

/// An app that sleeps before reading its body, so the body has to wait in a spool file.
const SLOW_READER: &str = "import time\n\
def application(environ, start_response):\n\
\x20   time.sleep(float(environ.get('QUERY_STRING') or 2))\n\
\x20   try:\n\
\x20       n = len(environ['wsgi.input'].read())\n\
\x20   except OSError as e:\n\
\x20       start_response('503 Service Unavailable', [('Content-Type', 'text/plain')])\n\
\x20       return [str(e).encode()]\n\
\x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
\x20   return [str(n).encode()]\n";

/// Descriptors of `pid` that point into `dir`, with their permission bits.
fn open_files_in(pid: u32, dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path())
            && target.starts_with(dir)
            && let Ok(meta) = std::fs::metadata(fd.path())
        {
            out.push((
                target.display().to_string(),
                meta.permissions().mode() & 0o777,
            ));
        }
    }
    out
}

#[test]
fn spooled_bodies_are_private_unnamed_and_gone_after_the_request() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::write(dir.path().join("slow.py"), SLOW_READER).unwrap();
    let spec = format!("{}/slow.py:application", dir.path().display());
    let spool_s = spool.display().to_string();
    let server = Server::tcp(&[&spec, "--max-body-memory", "4k", "--spool-dir", &spool_s]);
    let addr = server.addr.clone();
    let body = vec![b'x'; 2 << 20];
    let poster = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        use std::io::Write;
        let len = body.len().to_string();
        s.write_all(&crate::support::request_bytes(
            1,
            false,
            &[
                ("REQUEST_METHOD", "POST"),
                ("QUERY_STRING", "3"),
                ("CONTENT_LENGTH", &len),
            ],
            &body,
        ))
        .unwrap();
        crate::support::read_response(&mut s, 1).unwrap()
    });
    // While the app sleeps, the body sits in a spool file.
    let end = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < end && seen.is_empty() {
        seen = open_files_in(server.pid(), &spool);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !seen.is_empty(),
        "no spool file was open; log:\n{}",
        server.log()
    );
    for (path, mode) in &seen {
        assert_eq!(*mode, 0o600, "{path} has mode {mode:o}");
    }
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool file has a name in the directory"
    );
    let r = poster.join().unwrap();
    assert!(
        r.stdout.ends_with(b"2097152"),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        open_files_in(server.pid(), &spool).is_empty(),
        "spool file still open after the request"
    );
}

#[test]
fn a_request_cannot_forge_access_log_fields_or_send_terminal_escapes() {
    let dir = crate::support::TempDir::new("access-escape");
    let log = dir.path().join("access.log");
    let server = crate::support::Server::tcp(&[
        "--builtin",
        "hello",
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        r#"{remote} "{method} {uri}" {status}"#,
    ]);
    let uri = "/x\" 200 \"forged\\\u{1b}[2J\u{8}";
    let r = crate::support::roundtrip(
        &server,
        &[
            ("REQUEST_METHOD", "GET\"X"),
            ("REQUEST_URI", uri),
            ("REMOTE_ADDR", "127.0.0.1"),
        ],
        b"",
    );
    assert!(!r.stdout.is_empty());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.ends_with('\n') || std::time::Instant::now() > end {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        text, "127.0.0.1 \"GET\\x22X /x\\x22 200 \\x22forged\\x5C\\x1B[2J\\x08\" 200\n",
        "one well-formed line, the request's quotes, backslash and control characters escaped"
    );
}
