//! `pip install pyfcgi` on Linux: the wheel maturin builds from pyproject.toml (what
//! scripts/release ships) is installed with pip into a fresh venv, and the `pyfcgi` it puts in
//! the venv's `bin/` serves the Flask example behind real nginx, with no `--venv`: it applies
//! the venv that holds it. The Windows wheel is checked under Wine (scripts/windows-check).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Nginx, Server, TempDir, http};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the Linux wheel with maturin (dev profile, its own target dir so it does not
/// invalidate the test build) and returns its path.
fn build_wheel(out: &Path) -> PathBuf {
    run(
        Command::new(repo().join("scripts/maturin"))
            .args(["build", "--locked", "-i", "python3", "--out"])
            .arg(out)
            .env("CARGO_TARGET_DIR", repo().join("target/wheel"))
            .current_dir(repo()),
        "scripts/maturin build",
    );
    std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("maturin wrote no wheel")
}

#[test]
fn the_pip_installed_wheel_serves_flask_behind_nginx_from_the_venv_bin() {
    let dir = TempDir::new("wheel");
    let wheel = build_wheel(&dir.path().join("dist"));
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("pyfcgi-")
            && name.contains("-cp3")
            && name.contains("-manylinux_")
            && name.ends_with("_x86_64.whl"),
        "unexpected wheel name {name}"
    );
    let venv = dir.path().join("fresh venv");
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    );
    // Flask from the repo's pinned requirements; pip's cache makes this quick after the first.
    run(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(repo().join("examples/requirements.txt"))
            .arg(&wheel),
        "pip install",
    );
    let exe = venv.join("bin/pyfcgi");
    assert!(
        exe.exists(),
        "pip put no pyfcgi in {}",
        venv.join("bin").display()
    );
    let version = run(Command::new(&exe).arg("--version"), "pyfcgi --version");
    assert!(version.starts_with("pyfcgi "), "{version}");
    assert!(version.contains("python found: CPython 3."), "{version}");

    let spec = format!("{}:app", repo().join("examples/flask_app/app.py").display());
    let sock = dir.path().join("pyfcgi.sock");
    let mut cmd = Command::new(&exe);
    cmd.args(["serve", &spec, "--bind"])
        .arg(format!("unix:{}", sock.display()))
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYFCGI_VENV")
        .env("PYFCGI_LOG", "info")
        .stdin(Stdio::null());
    let server = Server::from_command(cmd, None);
    let upstream = format!("upstream pyfcgi {{ server {}; }}", server.addr);
    let params = Nginx::fastcgi_params();
    let nginx = Nginx::start(
        &upstream,
        &format!("location / {{ {params} fastcgi_pass pyfcgi; }}"),
    );
    let (status, _, body) = http(nginx.port, "GET", "/hello?name=pip", &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "Hello, pip!\n"),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("virtual environment applied"),
        "the venv holding the exe was not applied:\n{}",
        server.log()
    );
}
