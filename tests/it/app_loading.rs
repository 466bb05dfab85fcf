//! Application loading: every spec form, `--chdir`/`--pythonpath`, virtual environments
//! (`--venv`, `VIRTUAL_ENV`, a `pyvenv.cfg` above the app), and what `pyfcgi check` and
//! `pyfcgi serve` do with an app that fails to load. Apps live in tests/apps/loading.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Server, TempDir, roundtrip, run_pyfcgi, serve_command};
use crate::wsgi::{Cgi, PY_ENV};

const LOADING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/loading");

const LIMIT: Duration = Duration::from_secs(60);

/// `pyfcgi serve ARGS` on a loopback port, without bytecode files and without any
/// `VIRTUAL_ENV` the test runner may have, plus `env`.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = serve_command(args);
    cmd.args(["--bind", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .env_remove("VIRTUAL_ENV");
    for (k, v) in PY_ENV.iter().chain(env) {
        cmd.env(k, v);
    }
    Server::from_command(cmd, None)
}

/// `pyfcgi check ARGS` (same environment rules as [`serve`]).
fn check(args: &[&str], env: &[(&str, &str)]) -> crate::support::CmdOutput {
    let mut argv = vec!["check"];
    argv.extend_from_slice(args);
    let mut all: Vec<(&str, &str)> = PY_ENV.to_vec();
    all.extend_from_slice(env);
    // run_pyfcgi adds variables; VIRTUAL_ENV set to "" is ignored with a warning at worst,
    // so tests that must not see one run under a clean value instead.
    if !all.iter().any(|(k, _)| *k == "VIRTUAL_ENV") {
        all.push(("VIRTUAL_ENV", ""));
    }
    run_pyfcgi(&argv, &all, None, LIMIT)
}

/// `pyfcgi serve ARGS` on a loopback port for an app that cannot load: outside IIS it exits
/// at once with code 6 (the same with `--workers`, tests/it/settings.rs); returns its log.
fn serve_fails(args: &[&str]) -> String {
    let mut argv = vec!["serve"];
    argv.extend_from_slice(args);
    argv.extend(["--bind", "127.0.0.1:0"]);
    let mut env: Vec<(&str, &str)> = PY_ENV.to_vec();
    env.push(("VIRTUAL_ENV", ""));
    let out = run_pyfcgi(&argv, &env, None, LIMIT);
    assert_eq!(out.code(), Some(6), "{}", out.stderr);
    out.stderr
}

/// One request to `pyfcgi serve ARGS` run as IIS runs it (`request --spawn --iis`: one
/// connection on stdin), where a failed app is answered 500 rather than exiting.
fn iis_get(args: &[&str]) -> String {
    let exe = crate::support::pyfcgi();
    let mut cmd = Command::new(exe);
    cmd.args(["request", "--timeout", "30", "--spawn", "--iis", "/", "--"])
        .arg(exe)
        .arg("serve")
        .args(args)
        .env_remove("VIRTUAL_ENV");
    for (k, v) in PY_ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One GET; the parsed CGI response.
fn get(server: &Server) -> Cgi {
    Cgi::parse(roundtrip(
        server,
        &[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/"),
            ("QUERY_STRING", ""),
        ],
        b"",
    ))
}

/// Serves `args` and asserts the app answers 200 with `body`.
fn assert_serves(args: &[&str], env: &[(&str, &str)], body: &str) {
    let server = serve(args, env);
    let r = get(&server);
    assert!(
        r.status == "200 OK" && r.body_str() == body,
        "{args:?}: {} {:?}\nlog:\n{}",
        r.status,
        r.body_str(),
        server.log()
    );
}

#[test]
fn module_attr_loads_with_chdir_or_pythonpath() {
    assert_serves(&["plainapp:app", "--chdir", LOADING], &[], "plainapp:app");
    assert_serves(
        &["plainapp:app", "--pythonpath", LOADING],
        &[],
        "plainapp:app",
    );
    assert_serves(
        &["plainapp:holder.app", "--chdir", LOADING],
        &[],
        "plainapp:holder.app",
    );
    assert_serves(
        &["webpkg.site.wsgi:application", "--pythonpath", LOADING],
        &[],
        "webpkg.site.wsgi.application",
    );
}

#[test]
fn factories_are_called_with_their_literal_arguments() {
    assert_serves(
        &["plainapp:create_app()", "--chdir", LOADING],
        &[],
        "plainapp:create_app(default, plain)",
    );
    assert_serves(
        &["plainapp:create_app('prod')", "--chdir", LOADING],
        &[],
        "plainapp:create_app(prod, plain)",
    );
    assert_serves(
        &["plainapp:create_app(\"a:b (c)\")", "--chdir", LOADING],
        &[],
        "plainapp:create_app(a:b (c), plain)",
    );
}

#[test]
fn factory_keyword_arguments_are_passed() {
    assert_serves(
        &[
            "plainapp:create_app('prod', flavour='spicy')",
            "--chdir",
            LOADING,
        ],
        &[],
        "plainapp:create_app(prod, spicy)",
    );
}

#[test]
fn file_paths_load_absolute_and_relative() {
    let abs = format!("{LOADING}/plainapp.py:app");
    assert_serves(&[&abs], &[], "plainapp:app");
    // Relative to the working directory (the crate root for `cargo test`)...
    assert_serves(&["tests/apps/loading/plainapp.py:app"], &[], "plainapp:app");
    // ...or to --chdir.
    let apps = format!("{}/tests/apps", env!("CARGO_MANIFEST_DIR"));
    assert_serves(
        &["loading/plainapp.py:create_app('file')", "--chdir", &apps],
        &[],
        "plainapp:create_app(file, plain)",
    );
    assert_serves(
        &["plainapp.py:app", "--chdir", LOADING],
        &[],
        "plainapp:app",
    );
}

#[test]
fn wfastcgi_dotted_names_load() {
    assert_serves(
        &["webpkg.site.wsgi.application", "--chdir", LOADING],
        &[],
        "webpkg.site.wsgi.application",
    );
    assert_serves(
        &["webpkg.site.wsgi.make_app()", "--chdir", LOADING],
        &[],
        "webpkg.site.wsgi.make_app()",
    );
    assert_serves(
        &["plainapp.holder.app", "--pythonpath", LOADING],
        &[],
        "plainapp:holder.app",
    );
}

// --- virtual environments ------------------------------------------------------------------

/// `major.minor` of the interpreter pyfcgi embeds, from `pyfcgi check`'s report.
fn embedded_python_version() -> String {
    let out = check(&["plainapp:app", "--chdir", LOADING], &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let text = out.stdout_str();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("python:"))
        .unwrap_or_else(|| panic!("no python: line in {text}"));
    let ver = line.split_whitespace().nth(1).unwrap();
    let mut parts = ver.split('.');
    format!("{}.{}", parts.next().unwrap(), parts.next().unwrap())
}

/// A venv made by `python3 -m venv` in `dir`, with a module only it has: `venvonly_mod`,
/// whose `application` answers `sys.prefix`.
fn make_venv(dir: &Path) -> PathBuf {
    let venv = dir.join("env");
    let out = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv");
    assert!(
        out.status.success(),
        "python3 -m venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The embedded interpreter reads lib/pythonX.Y/site-packages for its own X.Y.
    let site = venv
        .join("lib")
        .join(format!("python{}", embedded_python_version()))
        .join("site-packages");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("venvonly_mod.py"),
        "import sys\n\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [sys.prefix.encode()]\n",
    )
    .unwrap();
    venv
}

#[test]
fn venv_flag_makes_its_packages_importable() {
    let dir = TempDir::new("venv-flag");
    let venv = make_venv(dir.path());
    let v = venv.display().to_string();
    assert_serves(&["venvonly_mod:application", "--venv", &v], &[], &v);
    // Without it, the module is not there.
    let out = check(&["venvonly_mod:application"], &[]);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("No module named 'venvonly_mod'"),
        "{}",
        out.stderr
    );
}

#[test]
fn virtual_env_variable_is_honoured() {
    let dir = TempDir::new("venv-var");
    let venv = make_venv(dir.path());
    let v = venv.display().to_string();
    assert_serves(&["venvonly_mod:application"], &[("VIRTUAL_ENV", &v)], &v);
    let out = check(&["venvonly_mod:application"], &[("VIRTUAL_ENV", &v)]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout_str().contains("from VIRTUAL_ENV"),
        "{}",
        out.stdout_str()
    );
}

#[test]
fn venv_above_or_beside_the_app_is_discovered() {
    let dir = TempDir::new("venv-above");
    let venv = make_venv(dir.path());
    let v = venv.display().to_string();
    let app_src = "from venvonly_mod import application\n";
    // Inside the venv's tree.
    let inside = venv.join("srv");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::write(inside.join("site_app.py"), app_src).unwrap();
    let spec = format!("{}/site_app.py:application", inside.display());
    assert_serves(&[&spec], &[], &v);
    let out = check(&[&spec], &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout_str().contains("pyvenv.cfg above the app"),
        "{}",
        out.stdout_str()
    );
    // A .venv folder beside the app.
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::rename(&venv, project.join(".venv")).unwrap();
    std::fs::write(project.join("site_app.py"), app_src).unwrap();
    let spec = format!("{}/site_app.py:application", project.display());
    let dotvenv = project.join(".venv").display().to_string();
    assert_serves(&[&spec], &[], &dotvenv);
}

// --- applications that fail to load --------------------------------------------------------

const MISSING: &str = "No module named 'pyfcgi_test_no_such_module'";

#[test]
fn check_prints_the_import_traceback_and_sys_path() {
    let out = check(&["broken_import:application", "--chdir", LOADING], &[]);
    assert_ne!(out.code(), Some(0), "{}", out.stdout_str());
    let err = &out.stderr;
    for needle in [
        "Traceback (most recent call last)",
        "broken_import.py\", line 3",
        "import pyfcgi_test_no_such_module",
        &format!("ModuleNotFoundError: {MISSING}"),
        "sys.path:",
        LOADING,
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

#[test]
fn an_app_that_cannot_load_exits_6_but_is_answered_500_under_iis() {
    let log = serve_fails(&["broken_import:application", "--chdir", LOADING]);
    assert_eq!(log.matches(MISSING).count(), 1, "{log}");
    assert!(log.contains("broken_import.py\", line 3"), "{log}");
    assert!(log.contains("sys.path:"), "{log}");

    // Under IIS the process stays up and every request gets the 500 page (until a watched
    // file changes): exiting would trip IIS's rapid-fail protection.
    let page = iis_get(&["broken_import:application", "--chdir", LOADING]);
    assert!(page.contains(" 500 "), "{page}");
    assert!(page.contains("application failed to load"), "{page}");
    assert!(!page.contains("Traceback"), "{page}");
    assert!(!page.contains("pyfcgi_test_no_such_module"), "{page}");

    let page = iis_get(&[
        "broken_import:application",
        "--chdir",
        LOADING,
        "--detailed-errors",
    ]);
    assert!(page.contains("application failed to load"), "{page}");
    assert!(page.contains("Traceback"), "{page}");
    assert!(page.contains(MISSING), "{page}");
}

#[test]
fn non_callable_or_missing_targets_are_clear_errors() {
    let out = check(&["not_callable:application", "--chdir", LOADING], &[]);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr
            .contains("not_callable:application resolved to a dict, which is not callable"),
        "{}",
        out.stderr
    );
    let out = check(&["plainapp:nope", "--chdir", LOADING], &[]);
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("looking up nope"), "{}", out.stderr);
    assert!(out.stderr.contains("AttributeError"), "{}", out.stderr);
    for spec in [
        "plainapp:create_app(os.getcwd())",
        "plainapp:create_app(**{})",
        "plainapp:create_app(1)(2)",
    ] {
        let out = check(&[spec, "--chdir", LOADING], &[]);
        assert_ne!(out.code(), Some(0), "{spec}");
        assert!(
            out.stderr.contains("only literals"),
            "{spec}: {}",
            out.stderr
        );
    }

    let log = serve_fails(&["not_callable:application", "--chdir", LOADING]);
    assert!(log.contains("not callable"), "{log}");
}

/// A folder with `site.py` (which Python imported before the app could) and `code.py`
/// (which replaces the standard module), each a WSGI app.
fn stdlib_named_site() -> crate::support::TempDir {
    let dir = crate::support::TempDir::new("shadow");
    let app = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'mine']\n";
    for f in ["site.py", "code.py"] {
        std::fs::write(dir.path().join(f), app).unwrap();
    }
    dir
}

fn stdlib_file(module: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import sysconfig, os; print(os.path.join(sysconfig.get_path('stdlib'), '{module}.py'))"),
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn files_named_like_standard_modules_are_diagnosed_naming_both_files() {
    let dir = stdlib_named_site();
    let root = dir.path().to_str().unwrap();
    let (mine_site, mine_code) = (format!("{root}/site.py"), format!("{root}/code.py"));
    let (std_site, std_code) = (stdlib_file("site"), stdlib_file("code"));

    // site.py is never imported: the load error says why, with both paths.
    let out = check(&["site:app", "--chdir", root], &[]);
    assert_ne!(out.code(), Some(0), "{}", out.stdout_str());
    assert!(
        out.stderr.contains("module 'site' has no attribute 'app'"),
        "{}",
        out.stderr
    );
    let eclipsed = format!(
        "warning: {mine_site} has the name of the standard library module `site` ({std_site}), which Python had imported already"
    );
    assert!(out.stderr.contains(&eclipsed), "{}", out.stderr);

    // code.py loads, and check warns that it replaces the standard module.
    let out = check(&["code:app", "--chdir", root], &[]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let shadows =
        format!("warning: {mine_code} shadows the standard library module `code` ({std_code})");
    assert!(out.stdout_str().contains(&shadows), "{}", out.stdout_str());

    // serve: the load error in the log carries the diagnosis too.
    let log = serve_fails(&["site:app", "--chdir", root]);
    assert!(log.contains(&eclipsed), "{log}");
}
