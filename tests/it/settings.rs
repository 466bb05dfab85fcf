//! Settings and startup through the real binary: a bad value in any source is named with its
//! origin; under IIS (`pyfcgi request --spawn --iis`, both the `--app-root` form `pyfcgi iis
//! enable` writes and the bare first-request form) it becomes a 500 page and a WSGI_LOG line,
//! never a silent exit; outside IIS, startup failures exit at once with the same code with
//! and without `--workers`; `check`, `doctor` and `serve` agree on `sys.path`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::iis_lifecycle::web_config;
use crate::support::{TempDir, free_port, pyfcgi, run_pyfcgi};

const APP: &str = r#"
import sys
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("\n".join(sys.path)).encode()]
"#;

fn site(web: &str) -> TempDir {
    let dir = TempDir::new("settings");
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    std::fs::write(dir.path().join("web.config"), web).unwrap();
    dir
}

/// One IIS-style request to a pyfcgi that `request --spawn --iis` starts as IIS would.
/// Returns (exit code of `request`, its stdout, its stderr).
fn iis_request(root: &Path, serve: &[&str]) -> (Option<i32>, String, String) {
    let exe = pyfcgi();
    let out = Command::new(exe)
        .args(["request", "--timeout", "30", "--spawn", "--iis"])
        .arg("--param")
        .arg(format!("APPL_PHYSICAL_PATH={}/", root.display()))
        .args(["--param", "APPL_MD_PATH=/LM/W3SVC/1/ROOT", "/hello", "--"])
        .arg(exe)
        .args(serve)
        .env_remove("PYFCGI_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both ways IIS runs pyfcgi: with `--app-root` (what `pyfcgi iis enable` writes) and bare.
fn serve_forms(root: &str) -> [Vec<String>; 2] {
    [
        vec!["serve".into(), "--app-root".into(), root.into()],
        vec!["serve".into()],
    ]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn iis_a_bad_web_config_value_is_a_500_page_and_a_wsgi_log_line_naming_key_value_and_file() {
    let logs = TempDir::new("settings-log");
    let log = logs.path().join("new folder").join("site.log");
    let dir = site(&web_config(&[
        ("WSGI_HANDLER", "app.app"),
        ("WSGI_LOG", log.to_str().unwrap()),
        ("PYFCGI_THREADS", "four"),
    ]));
    let root = dir.path().display().to_string();
    let web = dir.path().join("web.config");
    for serve in serve_forms(&root) {
        let _ = std::fs::remove_file(&log);
        let (code, stdout, stderr) = iis_request(dir.path(), &as_strs(&serve));
        assert!(
            stdout.starts_with("HTTP/1.1 500")
                || stdout.contains("Status: 500")
                || stdout.contains(" 500 "),
            "{serve:?}: {code:?}\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("pyfcgi could not start this application: an invalid pyfcgi setting"),
            "{serve:?}: {stdout}"
        );
        assert!(
            !stdout.contains("four") && !stdout.contains(&root),
            "no values or paths on the page: {stdout}"
        );
        let text = read(&log);
        let want = format!(
            "web.config {}: PYFCGI_THREADS = \"four\": expected a whole number from 1 to 1024",
            web.display()
        );
        assert!(
            text.contains(&want),
            "{serve:?}: no {want:?} in WSGI_LOG:\n{text}"
        );
    }
}

#[test]
fn iis_an_unparsable_web_config_is_logged_beside_it_and_explained_on_the_page() {
    let dir = site("<configuration><appSettings><add key=\"WSGI_HANDLER\" value=\"app.app\">\n");
    let root = dir.path().display().to_string();
    let fallback = dir.path().join("pyfcgi-error.log");
    for serve in serve_forms(&root) {
        let _ = std::fs::remove_file(&fallback);
        let (code, stdout, stderr) = iis_request(dir.path(), &as_strs(&serve));
        assert!(
            stdout.contains("pyfcgi could not start this application: an unreadable web.config"),
            "{serve:?}: {code:?}\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("pyfcgi-error.log"), "{stdout}");
        let text = read(&fallback);
        assert!(
            text.contains(&format!(
                "web.config {}: not valid XML",
                dir.path().join("web.config").display()
            )),
            "{serve:?}: {text}"
        );
    }
}

#[test]
fn iis_a_wsgi_log_that_cannot_be_created_falls_back_beside_web_config() {
    let blocker = TempDir::new("settings-blocker");
    let file = blocker.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let log = file.join("logs").join("site.log");
    let dir = site(&web_config(&[
        ("WSGI_HANDLER", "app.app"),
        ("WSGI_LOG", log.to_str().unwrap()),
        ("PYFCGI_MAX_CONNS", "-3"),
    ]));
    let root = dir.path().display().to_string();
    let fallback = dir.path().join("pyfcgi-error.log");
    for serve in serve_forms(&root) {
        let _ = std::fs::remove_file(&fallback);
        let (code, stdout, stderr) = iis_request(dir.path(), &as_strs(&serve));
        assert!(
            stdout.contains("an invalid pyfcgi setting") && stdout.contains("pyfcgi-error.log"),
            "{serve:?}: {code:?}\n{stdout}\n{stderr}"
        );
        let text = read(&fallback);
        assert!(text.contains("cannot open log file"), "{serve:?}: {text}");
        assert!(
            text.contains("PYFCGI_MAX_CONNS = \"-3\": expected a whole number from 1 to 1000000"),
            "{serve:?}: {text}"
        );
    }
}

#[test]
fn a_bad_pyfcgi_toml_value_names_file_line_and_key_and_exits_2() {
    let dir = TempDir::new("settings-toml");
    let toml = dir.path().join("pyfcgi.toml");
    std::fs::write(
        &toml,
        "# pyfcgi\nbuiltin = \"hello\"\n\nworkers = \"two\"\n",
    )
    .unwrap();
    let port = free_port().to_string();
    let out = run_pyfcgi(
        &[
            "serve",
            "--config",
            toml.to_str().unwrap(),
            "--bind",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let want = format!(
        "pyfcgi.toml {} line 4: workers = \"two\": expected a whole number from 1 to 1024, or auto",
        toml.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

#[test]
fn misspelt_keys_in_every_source_are_warned_with_the_closest_key() {
    let dir = site(&web_config(&[("PYFCGI_THREAD", "2")]));
    std::fs::write(
        dir.path().join("pyfcgi.toml"),
        "builtin = \"hello\"\nworker = 2\nhelp = true\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let port = free_port().to_string();
    let mut child = Command::new(pyfcgi())
        .args([
            "serve",
            "--app-root",
            &root,
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--max-requests",
            "1",
        ])
        .env("PYFCGI_MAX_BODYSIZE", "1m")
        .env_remove("PYFCGI_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The warnings come before the server is up; one request ends it (--max-requests 1).
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run_pyfcgi(
        &["request", "--connect", &format!("127.0.0.1:{port}"), "/"],
        &[],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let _ = crate::support::wait_timeout(&mut child, Duration::from_secs(20));
    let log = crate::support::strip_ansi(&reader.join().unwrap());
    for want in [
        "environment variable PYFCGI_MAX_BODYSIZE: unknown pyfcgi setting, ignored (did you mean PYFCGI_MAX_BODY_SIZE?)".to_owned(),
        format!("web.config {}: PYFCGI_THREAD: unknown pyfcgi setting, ignored (did you mean PYFCGI_THREADS?)", dir.path().join("web.config").display()),
        format!("pyfcgi.toml {} line 2: worker: unknown pyfcgi setting, ignored (did you mean workers?)", dir.path().join("pyfcgi.toml").display()),
        format!("pyfcgi.toml {} line 3: help: unknown pyfcgi setting, ignored", dir.path().join("pyfcgi.toml").display()),
    ] {
        assert!(log.contains(&want), "no {want:?} in:\n{log}");
    }
    // doctor says the same, as WARNs with the fix.
    let doc = run_pyfcgi(
        &["doctor", "--app-root", &root, "--no-import"],
        &[],
        None,
        Duration::from_secs(30),
    );
    let text = doc.stdout_str();
    assert!(
        text.contains("WARN  setting: web.config")
            && text.contains("fix: rename it to PYFCGI_THREADS"),
        "{text}"
    );
    assert!(text.contains("fix: rename it to workers"), "{text}");
}

#[test]
fn infinite_or_nan_seconds_are_a_clear_error_not_a_panic() {
    for v in ["inf", "NaN", "1e400"] {
        let out = run_pyfcgi(
            &[
                "serve",
                "--builtin",
                "hello",
                "--bind",
                "127.0.0.1:0",
                "--request-timeout",
                v,
            ],
            &[],
            None,
            Duration::from_secs(20),
        );
        assert_eq!(out.code(), Some(2), "{v}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("--request-timeout = \"{v}\": expected a number of seconds from 0 to 31536000 (0 = no limit)")),
            "{v}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn doctor_fails_the_bad_value_with_its_origin() {
    let dir = site(&web_config(&[
        ("WSGI_HANDLER", "app.app"),
        ("PYFCGI_THREADS", "four"),
    ]));
    let root = dir.path().display().to_string();
    let out = run_pyfcgi(
        &["doctor", "--app-root", &root, "--no-import"],
        &[],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.stdout_str());
    let text = out.stdout_str();
    let want = format!(
        "FAIL  setting: web.config {}: PYFCGI_THREADS = \"four\": expected a whole number from 1 to 1024",
        dir.path().join("web.config").display()
    );
    assert!(text.contains(&want), "{text}");
    assert!(
        text.contains(&format!(
            "app      = app.app   [web.config {}: WSGI_HANDLER]",
            dir.path().join("web.config").display()
        )),
        "the effective settings with origins: {text}"
    );
}

#[test]
fn an_app_that_cannot_be_imported_exits_6_within_seconds_with_and_without_workers() {
    let dir = TempDir::new("settings-missing");
    for workers in [None, Some("2")] {
        let port = free_port().to_string();
        let bind = format!("127.0.0.1:{port}");
        let mut args = vec![
            "serve",
            "missing_module_pyfcgi:app",
            "--bind",
            &bind,
            "--chdir",
            dir.path().to_str().unwrap(),
        ];
        if let Some(n) = workers {
            args.extend(["--workers", n]);
        }
        let out = run_pyfcgi(&args, &[], None, Duration::from_secs(30));
        assert_eq!(out.code(), Some(6), "{workers:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("missing_module_pyfcgi"),
            "{}",
            out.stderr
        );
        assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
    }
}

#[test]
fn a_unix_socket_in_a_missing_folder_is_reported_before_the_app_is_imported() {
    let dir = site(&web_config(&[]));
    let sock = dir.path().join("no-such-folder").join("pyfcgi.sock");
    let out = run_pyfcgi(
        &[
            "serve",
            "app:app",
            "--chdir",
            dir.path().to_str().unwrap(),
            "--bind",
            &format!("unix:{}", sock.display()),
        ],
        &[],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the folder {} does not exist",
            sock.parent().unwrap().display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("application loaded"),
        "the transport comes first: {}",
        out.stderr
    );
}

#[test]
fn check_doctor_and_serve_report_the_same_sys_path() {
    let extra = TempDir::new("settings-extra");
    let dir = site(&web_config(&[
        ("WSGI_HANDLER", "app.app"),
        ("PYTHONPATH", extra.path().to_str().unwrap()),
    ]));
    let root = dir.path().display().to_string();
    // serve, under IIS: the app answers with its sys.path.
    let (_, stdout, stderr) = iis_request(dir.path(), &["serve", "--app-root", &root]);
    let served: Vec<&str> = stdout
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}\n{stderr}"))
        .lines()
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        served.iter().any(|l| *l == extra.path().to_str().unwrap()),
        "{served:?}"
    );
    // check and doctor print sys.path in their interpreter report: the same entries, in the
    // same order.
    let check = run_pyfcgi(
        &[
            "check",
            "app.app",
            "--chdir",
            &root,
            "--pythonpath",
            extra.path().to_str().unwrap(),
        ],
        &[],
        None,
        Duration::from_secs(60),
    );
    let doctor = run_pyfcgi(
        &["doctor", "--app-root", &root],
        &[],
        None,
        Duration::from_secs(60),
    );
    for (name, text) in [
        ("check", check.stdout_str()),
        ("doctor", doctor.stdout_str()),
    ] {
        assert_eq!(
            reported_sys_path(&text),
            served,
            "{name} reports another sys.path:\n{text}"
        );
    }
}

/// The entries under "sys.path:" in an interpreter report.
fn reported_sys_path(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.trim_end().ends_with("sys.path:"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect()
}
