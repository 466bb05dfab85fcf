//! IIS lifecycle and configuration, on Unix: pyfcgi runs as IIS starts it (stdin = one
//! connected stream, here a socketpair; requests with FCGI_KEEP_CONN and IIS params, ids
//! cycling), configured by web.config appSettings in the app folder.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    RawResponse, Server, TempDir, kill, read_response, request_bytes, serve_command,
};

/// A test app: echoes what WSGI saw, can sleep, and records calls in `calls.log`.
const APP: &str = r#"
import os, time
def app(environ, start_response):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log"), "a") as f:
        f.write(environ["PATH_INFO"] + "\n")
    if environ["PATH_INFO"].endswith("/slow"):
        time.sleep(1.5)
    body = "SN=%s|PI=%s|D=%s|T=%s|cwd=%s|MT=%s" % (
        environ["SCRIPT_NAME"], environ["PATH_INFO"], os.environ.get("DJANGO_SETTINGS_MODULE"),
        os.environ.get("TEAM"), os.getcwd(), environ["wsgi.multithread"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#;

/// A web.config with these appSettings (also used by tests/it/settings.rs).
pub(crate) fn web_config(keys: &[(&str, &str)]) -> String {
    let adds: String = keys
        .iter()
        .map(|(k, v)| format!("    <add key=\"{k}\" value=\"{v}\" />\n"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <appSettings>\n{adds}  </appSettings>\n</configuration>\n"
    )
}

/// An app folder with app.py and a web.config.
fn site(keys: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("iis");
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    std::fs::write(dir.path().join("web.config"), web_config(keys)).unwrap();
    dir
}

/// pyfcgi as IIS runs it: stdin is our connected socket.
pub(crate) struct Iis {
    server: Server,
    pipe: UnixStream,
    next_id: u16,
    root: String,
}

impl Iis {
    pub(crate) fn start(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut cmd = serve_command(args);
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
            .current_dir("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let server = Server::from_command(cmd, None);
        Self {
            server,
            pipe: ours,
            next_id: 1,
            root: format!("{}/", root.display()),
        }
    }

    fn send(&mut self, path: &str, extra: &[(&str, &str)]) -> u16 {
        let id = self.next_id;
        self.next_id = if id == 255 { 1 } else { id + 1 };
        let mut params: Vec<(&str, &str)> = vec![
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", path),
            ("SCRIPT_NAME", path),
            ("SERVER_SOFTWARE", "Microsoft-IIS/10.0"),
            ("APPL_MD_PATH", "/LM/W3SVC/1/ROOT"),
            ("APPL_PHYSICAL_PATH", &self.root),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("HTTPS", "off"),
        ];
        for (k, v) in extra {
            params.retain(|(n, _)| n != k);
            params.push((k, v));
        }
        self.pipe
            .write_all(&request_bytes(id, true, &params, b""))
            .unwrap();
        id
    }

    fn get(&mut self, path: &str, extra: &[(&str, &str)]) -> RawResponse {
        let id = self.send(path, extra);
        read_response(&mut self.pipe, id)
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.server.log()))
    }

    pub(crate) fn body(&mut self, path: &str, extra: &[(&str, &str)]) -> String {
        let r = self.get(path, extra);
        let s = String::from_utf8_lossy(&r.stdout).into_owned();
        s.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
    }
}

fn calls(root: &Path) -> String {
    std::fs::read_to_string(root.join("calls.log")).unwrap_or_default()
}

#[test]
fn app_is_loaded_on_the_first_request_from_web_config_in_appl_physical_path() {
    let dir = site(&[
        ("WSGI_HANDLER", "app.app"),
        ("DJANGO_SETTINGS_MODULE", "mysite.settings"),
        ("TEAM", "blue"),
    ]);
    let mut iis = Iis::start(dir.path(), &[], &[]);
    let body = iis.body("/hello", &[]);
    assert!(
        body.contains("D=mysite.settings") && body.contains("T=blue"),
        "{body}"
    );
    assert!(
        body.contains(&format!("cwd={}", dir.path().display())),
        "wfastcgi runs the app from its folder: {body}"
    );
    assert!(body.contains("MT=False"), "one thread under IIS: {body}");
}

#[test]
fn the_first_requests_web_config_sets_up_the_log_file_threads_and_max_requests() {
    // No --app-root: every web.config setting still applies, as with --app-root, from the
    // folder the first request names.
    let logs = TempDir::new("iis-late-log");
    let log = logs.path().join("new folder").join("site.log");
    let dir = site(&[
        ("WSGI_HANDLER", "app.app"),
        ("WSGI_LOG", log.to_str().unwrap()),
        ("PYFCGI_THREADS", "2"),
        ("PYFCGI_MAX_REQUESTS", "2"),
    ]);
    let mut iis = Iis::start(dir.path(), &[], &[]);
    assert!(
        iis.body("/one", &[]).contains("MT=True"),
        "PYFCGI_THREADS=2 from web.config"
    );
    assert!(iis.body("/two", &[]).contains("PI=/two"));
    let status = iis.server.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "PYFCGI_MAX_REQUESTS=2 from web.config: {status:?}\n{}",
        iis.server.log()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| {
        panic!(
            "WSGI_LOG {} not written ({e}):\n{}",
            log.display(),
            iis.server.log()
        )
    });
    for want in [
        "logging to",
        "serving a WSGI application (loaded on the first request)",
        "--max-requests reached",
    ] {
        assert!(text.contains(want), "no {want:?} in WSGI_LOG:\n{text}");
    }
}

#[test]
fn app_root_reads_web_config_at_startup_and_loads_eagerly() {
    let dir = site(&[("WSGI_HANDLER", "app.app"), ("PYFCGI_THREADS", "2")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    assert!(
        iis.server.wait_log("application loaded"),
        "{}",
        iis.server.log()
    );
    assert!(calls(dir.path()).is_empty());
    assert!(
        iis.body("/x", &[]).contains("MT=True"),
        "PYFCGI_THREADS=2 from web.config"
    );
}

#[test]
fn environment_beats_web_config_and_the_command_line_beats_both() {
    let dir = site(&[("WSGI_HANDLER", "app.app"), ("PYFCGI_THREADS", "2")]);
    let root = dir.path().display().to_string();
    let mut env_wins = Iis::start(
        dir.path(),
        &["--app-root", &root],
        &[("PYFCGI_THREADS", "1")],
    );
    assert!(env_wins.body("/x", &[]).contains("MT=False"));
    let mut cli_wins = Iis::start(
        dir.path(),
        &["--app-root", &root, "--threads", "3"],
        &[("PYFCGI_THREADS", "1")],
    );
    assert!(cli_wins.body("/x", &[]).contains("MT=True"));
}

#[test]
fn web_config_beats_pyfcgi_toml_and_bad_toml_is_refused() {
    let dir = site(&[("WSGI_HANDLER", "app.app"), ("PYFCGI_THREADS", "1")]);
    std::fs::write(
        dir.path().join("pyfcgi.toml"),
        "threads = 4\ndetailed-errors = true\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    assert!(
        iis.body("/x", &[]).contains("MT=False"),
        "web.config's 1 beats pyfcgi.toml's 4"
    );
    // A misspelt key is a warning naming the closest key; a bad value stops the start (exit
    // 2), named with its file, line and key.
    std::fs::write(
        dir.path().join("pyfcgi.toml"),
        "treads = 4\nio-threads = \"two\"\n",
    )
    .unwrap();
    let out = crate::support::run_pyfcgi(
        &["serve", "--app-root", &root, "--bind", "127.0.0.1:0"],
        &[],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let toml = dir.path().join("pyfcgi.toml");
    for want in [
        format!(
            "pyfcgi.toml {} line 1: treads: unknown pyfcgi setting, ignored (did you mean threads?)",
            toml.display()
        ),
        format!(
            "pyfcgi.toml {} line 2: io-threads = \"two\": expected a whole number from 1 to 256",
            toml.display()
        ),
    ] {
        assert!(
            out.stderr.contains(&want),
            "no {want:?} in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn parent_folder_web_config_applies_and_the_inner_one_overrides() {
    let outer = TempDir::new("iis-parent");
    std::fs::write(
        outer.path().join("web.config"),
        web_config(&[
            ("TEAM", "outer"),
            ("DJANGO_SETTINGS_MODULE", "outer.settings"),
        ]),
    )
    .unwrap();
    let root = outer.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("app.py"), APP).unwrap();
    std::fs::write(
        root.join("web.config"),
        "<configuration><appSettings><remove key=\"TEAM\"/><add key=\"WSGI_HANDLER\" value=\"app.app\"/></appSettings></configuration>",
    )
    .unwrap();
    let mut iis = Iis::start(&root, &[], &[]);
    let body = iis.body("/x", &[]);
    assert!(
        body.contains("D=outer.settings") && body.contains("T=None"),
        "{body}"
    );
}

#[test]
fn script_name_is_derived_from_appl_md_path_for_root_and_sub_applications() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let mut iis = Iis::start(dir.path(), &[], &[]);
    assert!(iis.body("/users/1", &[]).starts_with("SN=|PI=/users/1|"));
    let sub = [("APPL_MD_PATH", "/LM/W3SVC/1/ROOT/shop")];
    assert!(
        iis.body("/shop/cart", &sub)
            .starts_with("SN=/shop|PI=/cart|")
    );
    assert!(
        iis.body("/Shop/cart", &sub)
            .starts_with("SN=/Shop|PI=/cart|"),
        "IIS paths are case-insensitive"
    );
    assert!(iis.body("/shop", &sub).starts_with("SN=/shop|PI=|"));
}

#[test]
fn script_name_app_setting_overrides_the_derivation() {
    let dir = site(&[("WSGI_HANDLER", "app.app"), ("SCRIPT_NAME", "/custom")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    let body = iis.body("/custom/a", &[("APPL_MD_PATH", "/LM/W3SVC/1/ROOT/shop")]);
    assert!(body.starts_with("SN=/custom|PI=/a|"), "{body}");
}

#[test]
fn a_client_x_original_url_header_is_never_used_for_routing() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let mut iis = Iis::start(dir.path(), &[], &[]);
    let body = iis.body("/public", &[("HTTP_X_ORIGINAL_URL", "/admin/secret")]);
    assert!(body.starts_with("SN=|PI=/public|"), "{body}");
}

#[test]
fn a_request_for_another_application_is_refused() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    let r = iis.get("/x", &[("APPL_PHYSICAL_PATH", "/srv/other-site/")]);
    assert!(String::from_utf8_lossy(&r.stdout).starts_with("Status: 500"));
    assert!(
        iis.server
            .wait_log("request for another IIS application refused")
    );
    assert!(calls(dir.path()).is_empty(), "the app must not be called");
    // Its own requests still work, with or without the trailing separator.
    assert!(iis.body("/ok", &[]).contains("PI=/ok"));
}

#[test]
fn app_offline_htm_answers_503_without_calling_the_app() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(
        dir.path(),
        &["--app-root", &root, "--restart-regex", ""],
        &[],
    );
    std::fs::write(
        dir.path().join("app_offline.htm"),
        "<h1>Deploying, back soon</h1>",
    )
    .unwrap();
    let r = iis.get("/x", &[]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.starts_with("Status: 503 Service Unavailable\r\n")
            && text.ends_with("<h1>Deploying, back soon</h1>"),
        "{text}"
    );
    assert!(calls(dir.path()).is_empty());
    std::fs::remove_file(dir.path().join("app_offline.htm")).unwrap();
    assert!(iis.body("/y", &[]).contains("PI=/y"));
}

#[test]
fn max_requests_exits_cleanly_after_the_last_one() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(
        dir.path(),
        &["--app-root", &root, "--max-requests", "3"],
        &[],
    );
    for i in 0..3 {
        assert!(
            iis.body(&format!("/{i}"), &[])
                .contains(&format!("PI=/{i}"))
        );
    }
    let st = iis.server.wait_exit(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", iis.server.log());
    assert!(iis.server.log().contains("--max-requests reached"));
}

#[test]
fn a_changed_py_file_restarts_after_the_in_flight_request() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    assert!(
        iis.server.wait_log("watching for file changes"),
        "{}",
        iis.server.log()
    );
    let id = iis.send("/slow", &[]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.path().join("models.py"), "# changed\n").unwrap();
    let t = Instant::now();
    let r = read_response(&mut iis.pipe, id).expect("the in-flight request completes");
    assert!(String::from_utf8_lossy(&r.stdout).contains("PI=/slow"));
    let st = iis.server.wait_exit(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", iis.server.log());
    assert!(
        iis.server.log().contains("watched file changed"),
        "{}",
        iis.server.log()
    );
    assert!(t.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_non_matching_file_change_does_not_restart() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    assert!(iis.server.wait_log("watching for file changes"));
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(iis.body("/still", &[]).contains("PI=/still"));
}

#[test]
fn shutdown_during_a_request_lets_it_finish_then_exits_0() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let root = dir.path().display().to_string();
    let mut iis = Iis::start(dir.path(), &["--app-root", &root], &[]);
    let id = iis.send("/slow", &[]);
    std::thread::sleep(Duration::from_millis(400));
    kill(iis.server.pid(), libc::SIGTERM);
    let r = read_response(&mut iis.pipe, id).expect("the in-flight request completes");
    assert!(String::from_utf8_lossy(&r.stdout).contains("PI=/slow"));
    let st = iis.server.wait_exit(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", iis.server.log());
}

#[test]
fn ids_cycle_past_255_on_the_one_kept_connection() {
    let dir = site(&[("WSGI_HANDLER", "app.app")]);
    let mut iis = Iis::start(dir.path(), &[], &[]);
    for i in 0..300 {
        assert!(
            iis.body(&format!("/{i}"), &[])
                .contains(&format!("PI=/{i}|"))
        );
    }
    assert_eq!(iis.server.log().matches("connection accepted").count(), 1);
}
