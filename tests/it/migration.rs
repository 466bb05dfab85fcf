//! Migrating a wfastcgi site, through the real binary: the patterns wfastcgi sites really
//! have (Visual Studio's and Azure's `ptvs_virtualenv_proxy`), and the mistakes an admin makes
//! on the way (a Django module where its callable is meant, a misspelt module, a venv given
//! as its interpreter or not there at all), each answered with what was meant.
//! (`pyfcgi iis enable` and `doctor` on a wfastcgi site: iis_cli.rs.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::iis_lifecycle::web_config;
use crate::support::{TempDir, free_port, pyfcgi, run_pyfcgi};

/// A venv made by the interpreter pyfcgi embeds (`python3` on PATH), without pip.
fn make_venv(at: &Path) {
    let out = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(at)
        .output()
        .expect("python3 -m venv");
    assert!(
        out.status.success(),
        "python3 -m venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's site-packages folder.
fn site_packages(venv: &Path) -> std::path::PathBuf {
    let lib = venv.join("lib");
    let py = std::fs::read_dir(&lib)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("python"))
        .expect("lib/pythonX.Y");
    py.path().join("site-packages")
}

/// One IIS-style request (`request --spawn --iis`), both ways IIS can run pyfcgi.
fn iis_get(root: &Path, bare: bool) -> (Option<i32>, String, String) {
    let exe = pyfcgi();
    let mut cmd = Command::new(exe);
    cmd.args(["request", "--timeout", "30", "--spawn", "--iis"])
        .arg("--param")
        .arg(format!("APPL_PHYSICAL_PATH={}/", root.display()))
        .args(["--param", "APPL_MD_PATH=/LM/W3SVC/1/ROOT", "/", "--"])
        .arg(exe)
        .arg("serve");
    if !bare {
        cmd.arg("--app-root").arg(root);
    }
    let out = cmd
        .env_remove("PYFCGI_LOG")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Visual Studio's and Azure's wfastcgi template: `WSGI_HANDLER` is the PTVS proxy, which
/// names the real handler and the venv (its interpreter) in two more keys. pyfcgi serves the
/// real handler from that venv, without the proxy script.
#[test]
fn the_ptvs_virtualenv_proxy_pattern_serves_the_alternative_handler_from_its_venv() {
    let dir = TempDir::new("ptvs");
    let root = dir.path();
    let venv = root.join("env");
    make_venv(&venv);
    std::fs::write(
        site_packages(&venv).join("ptvs_marker.py"),
        "VALUE = 'imported from the venv'\n",
    )
    .unwrap();
    std::fs::write(
        root.join("app.py"),
        "import sys\nimport ptvs_marker\n\ndef wsgi_app(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [('%s|%s' % (ptvs_marker.VALUE, sys.prefix)).encode()]\n",
    )
    .unwrap();
    let python = venv.join("bin").join("python");
    std::fs::write(
        root.join("web.config"),
        web_config(&[
            ("WSGI_HANDLER", "ptvs_virtualenv_proxy.get_venv_handler()"),
            ("WSGI_ALT_VIRTUALENV_HANDLER", "app.wsgi_app"),
            (
                "WSGI_ALT_VIRTUALENV_ACTIVATE_THIS",
                python.to_str().unwrap(),
            ),
        ]),
    )
    .unwrap();
    for bare in [false, true] {
        let (code, stdout, stderr) = iis_get(root, bare);
        assert_eq!(code, Some(0), "bare={bare}: {stdout}\n{stderr}");
        assert!(stdout.contains("200 OK"), "bare={bare}: {stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!("imported from the venv|{}", venv.display())),
            "bare={bare}: {stdout}\n{stderr}"
        );
    }
    // doctor reads it the same way.
    let out = run_pyfcgi(
        &[
            "doctor",
            "--app-root",
            root.to_str().unwrap(),
            "--exe",
            r"C:\pyfcgi\pyfcgi.exe",
        ],
        &[],
        None,
        Duration::from_secs(60),
    );
    let text = out.stdout_str();
    assert!(
        text.contains("application: app.wsgi_app (from web.config")
            && text.contains("WSGI_ALT_VIRTUALENV_HANDLER"),
        "{text}"
    );
}

fn serve_fails(args: &[&str], dir: &Path) -> String {
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let mut all = vec!["serve", "--bind", &bind, "--chdir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_pyfcgi(&all, &[], None, Duration::from_secs(30));
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    out.stderr
}

#[test]
fn a_django_module_given_where_its_callable_is_meant_gets_the_fix() {
    let dir = TempDir::new("module-given");
    let pkg = dir.path().join("mysite");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    std::fs::write(
        pkg.join("wsgi.py"),
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n",
    )
    .unwrap();
    for spec in ["mysite.wsgi", "mysite:wsgi"] {
        let err = serve_fails(&[spec], dir.path());
        assert!(
            err.contains(&format!(
                "{spec} is a module, not the application in it: did you mean mysite.wsgi:application?"
            )),
            "{spec}: {err}"
        );
    }
}

#[test]
fn a_module_that_is_not_found_names_the_folders_searched_and_similar_names() {
    let dir = TempDir::new("module-missing");
    std::fs::write(
        dir.path().join("hello.py"),
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n",
    )
    .unwrap();
    let err = serve_fails(&["helo:app"], dir.path());
    assert!(
        err.contains(
            "No module named \"helo\" in any folder Python searched (sys.path, in order):"
        ),
        "{err}"
    );
    let shown = dir.path().canonicalize().unwrap();
    assert!(
        err.contains(&format!("  {}\n", dir.path().display()))
            || err.contains(&format!("  {}\n", shown.display())),
        "the app folder is listed: {err}"
    );
    assert!(err.contains(": hello."), "{err}");
    let err = serve_fails(&["zzzqqq:app"], dir.path());
    assert!(
        err.contains("Nothing with a similar name is in the app folder"),
        "{err}"
    );
}

#[test]
fn venv_given_as_its_interpreter_works_and_a_missing_one_is_named_missing() {
    let dir = TempDir::new("venv-forms");
    let venv = dir.path().join(".venv");
    make_venv(&venv);
    std::fs::write(
        site_packages(&venv).join("venv_marker.py"),
        "VALUE = 'venv marker'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "import venv_marker\n\ndef app(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [venv_marker.VALUE.encode()]\n",
    )
    .unwrap();
    let python = venv.join("bin").join("python");
    let out = run_pyfcgi(
        &[
            "request",
            "--timeout",
            "30",
            "--spawn",
            "/",
            "--",
            pyfcgi(),
            "serve",
            "app:app",
            "--chdir",
            dir.path().to_str().unwrap(),
            "--venv",
            python.to_str().unwrap(),
        ],
        &[],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout_str(), out.stderr);
    assert!(
        out.stdout_str().contains("venv marker"),
        "{}",
        out.stdout_str()
    );

    let missing = dir.path().join("no-such-venv");
    let err = serve_fails(
        &["app:app", "--venv", missing.to_str().unwrap()],
        dir.path(),
    );
    assert!(err.contains("it does not exist"), "{err}");
    assert!(!err.contains("pyvenv.cfg"), "{err}");
}

/// `--impersonate` where there is no IIS pipe (TCP here): every request is refused with a 500
/// and a log line; none runs as the server's own user.
#[test]
fn impersonate_refuses_requests_that_have_no_pipe_client() {
    let dir = TempDir::new("impersonate");
    std::fs::write(
        dir.path().join("app.py"),
        "RAN = []\ndef app(environ, start_response):\n    RAN.append(1)\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ran']\n",
    )
    .unwrap();
    let spec = format!("{}/app.py:app", dir.path().display());
    let server = crate::support::Server::tcp(&[&spec, "--impersonate"]);
    for _ in 0..2 {
        let r = crate::support::roundtrip(
            &server,
            &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")],
            b"",
        );
        let text = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(text.starts_with("Status: 500"), "{text}");
        assert!(
            text.contains("could not run as the signed-in user"),
            "{text}"
        );
        assert!(!text.contains("ran"), "{text}");
    }
    assert!(
        server.wait_log("--impersonate: the request did not come over IIS's named pipe"),
        "{}",
        server.log()
    );
}

#[test]
fn impersonate_with_an_asgi_app_is_a_startup_error() {
    let dir = TempDir::new("impersonate-asgi");
    std::fs::write(
        dir.path().join("app.py"),
        "async def app(scope, receive, send):\n    pass\n",
    )
    .unwrap();
    let err = serve_fails(&["app:app", "--impersonate"], dir.path());
    assert!(
        err.contains("an ASGI app runs every request on one event-loop thread"),
        "{err}"
    );
}
