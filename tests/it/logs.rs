//! Logs for people and for log shippers, through the real binary and a real Python app:
//! `--log-format json` (every error-log and access-log line one JSON object with its keys),
//! the access-log presets field by field, `{header:NAME}`, a bad format refused at startup
//! without `--access-log`, `NO_COLOR`, and what `--workers` writes: each worker's lines carry
//! its id, a rolling restart has no "send again" hint, a failed import's diagnosis is logged
//! once however many workers fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, TempDir, file_lines, kill, pyfcgi, run_pyfcgi, serve_command};
use crate::wsgi::PY_ENV;

const LIMIT: Duration = Duration::from_secs(60);

fn app_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/logs_app.py")
}

fn app_spec() -> String {
    format!("{}:app", app_path().display())
}

/// `pyfcgi serve logs_app.py:app ARGS --bind 127.0.0.1:0` with `env`, log level `level`.
fn serve(args: &[&str], env: &[(&str, &str)], level: &str) -> Server {
    let spec = app_spec();
    let mut all = vec![spec.as_str()];
    all.extend_from_slice(args);
    let mut cmd = serve_command(&all);
    cmd.args(["--bind", "127.0.0.1:0"])
        .env("PYFCGI_LOG", level)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in PY_ENV.iter().chain(env) {
        cmd.env(k, v);
    }
    Server::from_command(cmd, None)
}

/// `pyfcgi request --connect ADDR ARGS`, which must succeed; its stdout.
fn request(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["request", "--connect", server.addr.as_str()];
    all.extend_from_slice(args);
    let out = run_pyfcgi(&all, &[], None, LIMIT);
    assert_eq!(
        out.code(),
        Some(0),
        "{}\n{}\n{}",
        out.stderr,
        out.stdout_str(),
        server.log()
    );
    out.stdout_str()
}

/// Waits until `pred` holds for the server's log (bounded); false when it never does.
fn wait_for(server: &Server, limit: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if pred(&server.log()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Every line as a JSON object, with the keys each error-log line has.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n--- log:\n{log}"));
            for key in ["time", "level", "target", "message"] {
                assert!(v[key].is_string(), "no {key:?} in {line}");
            }
            let time = v["time"].as_str().unwrap();
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "time is not RFC 3339 UTC: {line}"
            );
            assert!(
                ["error", "warn", "info", "debug", "trace"].contains(&v["level"].as_str().unwrap()),
                "{line}"
            );
            v
        })
        .collect()
}

#[test]
fn json_error_log_and_access_log_lines_parse_and_carry_their_keys() {
    let dir = TempDir::new("logs-json");
    let access = dir.path().join("access.log");
    let server = serve(
        &[
            "--log-format",
            "json",
            "--access-log",
            access.to_str().unwrap(),
        ],
        &[],
        "debug",
    );
    request(&server, &["-H", "User-Agent: agent \"007\"", "/print?x=1"]);
    request(&server, &["/other"]);
    assert!(
        server.wait_log("\"message\":\"a \\\"quoted\\\" warning\""),
        "{}",
        server.log()
    );
    // The access log follows --log-format json (no --access-log-format given).
    let lines = file_lines(&access, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for (e, uri) in entries.iter().zip(["/print?x=1", "/other"]) {
        for key in [
            "time",
            "remote",
            "method",
            "uri",
            "protocol",
            "status",
            "bytes",
            "body_bytes",
            "duration_ms",
            "request_id",
            "pid",
            "referer",
            "user_agent",
        ] {
            assert!(e.get(key).is_some(), "no {key:?} in {e}");
        }
        assert_eq!(e["uri"], uri, "{e}");
        assert_eq!(e["status"], 200);
        assert_eq!(e["body_bytes"], 2);
        assert_eq!(e["method"], "GET");
        assert_eq!(e["protocol"], "HTTP/1.1");
        assert_eq!(e["remote"], "127.0.0.1");
        assert_eq!(e["referer"], Value::Null);
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(entries[0]["user_agent"], "agent \"007\"");
    let log = server.log();
    let events = json_lines(&log);
    // The app's print() and wsgi.errors lines carry the request's id, as its access line does.
    let id = entries[0]["request_id"].as_str().unwrap();
    for message in ["hello from the app", "a \"quoted\" warning"] {
        let e = events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in\n{log}"));
        assert_eq!(e["request_id"], id, "{e}");
        assert_eq!(e["target"], "pyfcgi::app", "{e}");
    }
    // The event's own fields are keys, numbers as numbers.
    let serving = events.iter().find(|e| e["message"] == "serving").unwrap();
    assert!(
        serving["listen"]
            .as_str()
            .unwrap()
            .starts_with("tcp:127.0.0.1:")
    );
    assert!(serving["max_conns"].is_u64(), "{serving}");
    // Not a worker: no worker key.
    assert!(events.iter().all(|e| e.get("worker").is_none()), "{log}");
    server.stop();
}

/// One access-log line of `format` for a request with a Referer, a User-Agent and X-Foo.
fn access_line(format: &str) -> String {
    let dir = TempDir::new("logs-preset");
    let access = dir.path().join("access.log");
    let server = serve(
        &[
            "--access-log",
            access.to_str().unwrap(),
            "--access-log-format",
            format,
        ],
        &[],
        "info",
    );
    request(
        &server,
        &[
            "-H",
            "Referer: http://example.com/from?a=1",
            "-H",
            "User-Agent: Mozilla/5.0 (X11) \"quoted\"",
            "-H",
            "X-Foo: bar baz",
            "/hello?q=1",
        ],
    );
    let lines = file_lines(&access, 1);
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", server.log());
    lines[0].clone()
}

/// `[10/Oct/2000:13:55:36 -0700]`: checks the shape, returns the rest of the line.
fn split_clf_time(line: &str) -> (&str, &str, &str) {
    let (head, rest) = line.split_once(" [").expect("no [time]");
    let (time, rest) = rest.split_once("] ").expect("no [time]");
    let b = time.as_bytes();
    assert_eq!(time.len(), 26, "{time:?}");
    assert!(
        b[2] == b'/' && b[6] == b'/' && b[11] == b':' && b[14] == b':' && b[17] == b':',
        "{time:?}"
    );
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(months.contains(&&time[3..6]), "{time:?}");
    assert!(
        b[20] == b' ' && (b[21] == b'+' || b[21] == b'-'),
        "{time:?}"
    );
    assert!(time[22..].bytes().all(|c| c.is_ascii_digit()), "{time:?}");
    (head, time, rest)
}

#[test]
fn the_common_and_combined_presets_are_written_as_apache_and_nginx_write_them() {
    // %h %l %u %t "%r" %>s %b
    let line = access_line("common");
    let (head, _, rest) = split_clf_time(&line);
    assert_eq!(head, "127.0.0.1 - -");
    assert_eq!(rest, "\"GET /hello?q=1 HTTP/1.1\" 200 2");
    // ... "%{Referer}i" "%{User-Agent}i", with " escaped as nginx does.
    let line = access_line("combined");
    let (head, _, rest) = split_clf_time(&line);
    assert_eq!(head, "127.0.0.1 - -");
    assert_eq!(
        rest,
        "\"GET /hello?q=1 HTTP/1.1\" 200 2 \"http://example.com/from?a=1\" \"Mozilla/5.0 (X11) \\x22quoted\\x22\""
    );
}

#[test]
fn header_placeholders_find_a_request_header_by_its_http_name() {
    let line = access_line(
        "{header:X-Foo}|{header:x-foo}|{header:X-Missing}|{header:User-Agent}|{status}",
    );
    assert_eq!(
        line,
        "bar baz|bar baz|-|Mozilla/5.0 (X11) \\x22quoted\\x22|200"
    );
    let line = access_line("json");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["referer"], "http://example.com/from?a=1");
    assert_eq!(v["user_agent"], "Mozilla/5.0 (X11) \"quoted\"");
}

#[test]
fn a_bad_access_log_format_is_refused_at_startup_without_access_log() {
    let spec = app_spec();
    let out = run_pyfcgi(
        &[
            "serve",
            &spec,
            "--bind",
            "127.0.0.1:0",
            "--access-log-format",
            "{status} {nope}",
        ],
        &[],
        None,
        LIMIT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--access-log-format = \"{status} {nope}\": expected common, combined, json"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("{nope} is not one"), "{}", out.stderr);
    // From the environment: the variable is named.
    let out = run_pyfcgi(
        &["serve", &spec, "--bind", "127.0.0.1:0"],
        &[
            ("PYFCGI_ACCESS_LOG_FORMAT", "{header:}"),
            ("PYFCGI_LOG_FORMAT", "xml"),
        ],
        None,
        LIMIT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    for want in [
        "environment variable PYFCGI_ACCESS_LOG_FORMAT = \"{header:}\": expected",
        "environment variable PYFCGI_LOG_FORMAT = \"xml\": expected one of text, json",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
}

/// A `serve` that fails at once (no such app): its log.
const FAILING: &str = "serve /nonexistent/app.py:app --bind 127.0.0.1:0";

/// [`FAILING`] under a pseudo-terminal (util-linux `script`), `NO_COLOR` as given; what the
/// terminal showed.
fn on_a_terminal(no_color: Option<&str>) -> String {
    let command = format!("{} {FAILING}", pyfcgi());
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env("PYFCGI_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let child = cmd.spawn().expect("util-linux script");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(LIMIT)
        .expect("script ran too long")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let ansi = |s: &str| s.contains("\u{1b}[");
    let coloured = on_a_terminal(None);
    assert!(coloured.contains("ERROR"), "{coloured}");
    assert!(
        ansi(&coloured),
        "a terminal should get colours: {coloured:?}"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(plain.contains("ERROR"), "{plain}");
    assert!(!ansi(&plain), "NO_COLOR=1: {plain:?}");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(ansi(&on_a_terminal(Some(""))));
    // Not a terminal (a pipe): no colours.
    let raw = Command::new(pyfcgi())
        .args(FAILING.split(' '))
        .env("PYFCGI_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&raw.stderr);
    assert!(stderr.contains("ERROR") && !ansi(&stderr), "{stderr:?}");
}

#[test]
fn supervised_workers_lines_carry_their_id_and_a_rolling_restart_has_no_send_again_hint() {
    let server = serve(&["--workers", "2", "--log-format", "json"], &[], "info");
    let ready = |log: &str, n: usize| log.matches("\"message\":\"worker ready\"").count() >= n;
    assert!(
        wait_for(&server, LIMIT, |l| ready(l, 2)),
        "{}",
        server.log()
    );
    kill(server.pid(), libc::SIGHUP);
    // Two new workers ready, two old ones gone.
    let done = |log: &str| {
        ready(log, 4)
            && log
                .matches("\"message\":\"worker exited with code 0\"")
                .count()
                >= 2
    };
    assert!(wait_for(&server, LIMIT, done), "{}", server.log());
    let log = server.log();
    let events = json_lines(&log);
    // Each worker's own lines say which worker wrote them: every worker id 1 to 4 serves.
    let mut serving: Vec<u64> = events
        .iter()
        .filter(|e| e["message"] == "serving")
        .map(|e| {
            e["worker"]
                .as_u64()
                .unwrap_or_else(|| panic!("no worker: {e}"))
        })
        .collect();
    serving.sort_unstable();
    assert_eq!(serving, [1, 2, 3, 4], "{log}");
    for e in events
        .iter()
        .filter(|e| e["target"].as_str().unwrap().starts_with("pyfcgi::"))
    {
        assert!(e["worker"].is_u64(), "a worker's line without its id: {e}");
    }
    // The retired workers say why they stop (told on the hand-over channel, not by a
    // signal), without the hint meant for a person at a terminal.
    let stopping: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .contains("retired by the supervisor: stopping gracefully")
        })
        .collect();
    assert_eq!(stopping.len(), 2, "{log}");
    assert!(!log.contains("send again"), "{log}");
    server.stop();
}

const DIAGNOSIS: &str = "RuntimeError: the app cannot import (logs test)";

#[test]
fn a_crash_loop_logs_the_import_diagnosis_once() {
    let dir = TempDir::new("logs-crash-loop");
    let broken = dir.path().join("broken");
    let mut server = serve(
        &["--workers", "2", "--crash-limit", "3"],
        &[("LOGS_APP_BROKEN", broken.to_str().unwrap())],
        "info",
    );
    assert!(
        wait_for(&server, LIMIT, |l| l.matches("worker ready").count() >= 2),
        "{}",
        server.log()
    );
    // Text lines: a worker's lines carry worker=N.
    let log = server.log();
    for n in [1, 2] {
        let needle = format!("serving listen={}", "tcp:");
        assert!(
            log.lines()
                .any(|l| l.contains(&needle) && l.ends_with(&format!(" worker={n}"))),
            "no serving line of worker {n}:\n{log}"
        );
    }
    // A bad deploy: the app no longer imports; then a worker crashes and each of its
    // replacements fails the import, up to --crash-limit.
    std::fs::write(&broken, "").unwrap();
    let out = run_pyfcgi(
        &["request", "--connect", &server.addr, "/crash"],
        &[],
        None,
        LIMIT,
    );
    assert_ne!(out.code(), Some(0), "the worker should have died");
    let status = server.wait_exit(LIMIT);
    let log = server.log();
    assert_eq!(status.and_then(|s| s.code()), Some(5), "{log}");
    assert_eq!(
        log.matches("before it was ready").count(),
        3,
        "three failed replacements:\n{log}"
    );
    assert_eq!(log.matches(DIAGNOSIS).count(), 1, "{log}");
    // While the replacements fail, the other worker still serves, and the log says so.
    assert!(log.contains("1 other worker keeps serving"), "{log}");
    assert!(!log.contains("answered 500"), "{log}");
}

#[test]
fn first_workers_that_cannot_import_log_the_diagnosis_once() {
    let dir = TempDir::new("logs-first-fail");
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    let spec = app_spec();
    let out = run_pyfcgi(
        &[
            "serve",
            &spec,
            "--workers",
            "3",
            "--bind",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &[
            ("LOGS_APP_BROKEN", broken.to_str().unwrap()),
            ("PYFCGI_LOG", "info"),
        ],
        None,
        LIMIT,
    );
    assert_eq!(out.code(), Some(6), "{}", out.stderr);
    let events = json_lines(&out.stderr);
    let diagnoses: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains(DIAGNOSIS))
        .collect();
    assert_eq!(diagnoses.len(), 1, "{}", out.stderr);
    // Logged by the supervisor, naming the worker that failed.
    assert!(diagnoses[0]["worker"].is_u64(), "{}", diagnoses[0]);
    assert!(!out.stderr.contains("answered 500"), "{}", out.stderr);
}

#[test]
fn a_rolling_restart_into_an_app_that_cannot_import_says_the_old_workers_keep_serving() {
    let dir = TempDir::new("logs-bad-deploy");
    let broken = dir.path().join("broken");
    let server = serve(
        &["--workers", "2"],
        &[("LOGS_APP_BROKEN", broken.to_str().unwrap())],
        "info",
    );
    assert!(
        wait_for(&server, LIMIT, |l| l.matches("worker ready").count() >= 2),
        "{}",
        server.log()
    );
    std::fs::write(&broken, "").unwrap();
    kill(server.pid(), libc::SIGHUP);
    assert!(
        server.wait_log("the rolling restart stopped, the old workers keep serving"),
        "{}",
        server.log()
    );
    // The old workers do serve, and nothing claimed every request would get a 500.
    assert!(request(&server, &["/after"]).contains("ok"));
    let log = server.log();
    assert_eq!(log.matches(DIAGNOSIS).count(), 1, "{log}");
    assert!(!log.contains("answered 500"), "{log}");
    assert!(!log.contains("send again"), "{log}");
    server.stop();
}
