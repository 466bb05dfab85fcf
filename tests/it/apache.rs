//! Apache httpd (Debian's apache2, mod_proxy_fcgi) in front of pyfcgi: the Flask example
//! through a Unix socket, with and without `--workers`, and the path rules for Apache's
//! SCRIPT_NAME-only params (no PATH_INFO).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Server, TempDir, free_port, http};

/// A private Apache on a loopback port, proxying `/` to the FastCGI socket; stopped on drop.
struct Apache {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Apache {
    fn start(sock: &Path) -> Self {
        let dir = TempDir::new("apache");
        let port = free_port();
        let d = dir.path().display();
        let modules = "/usr/lib/apache2/modules";
        let conf = format!(
            "ServerRoot \"{d}\"\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\n\
             ErrorLog {d}/error.log\nLogLevel warn\nMutex file:{d}\nServerName localhost\n\
             DocumentRoot {d}\nUser nobody\nGroup nogroup\n\
             LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
             LoadModule authz_core_module {modules}/mod_authz_core.so\n\
             LoadModule proxy_module {modules}/mod_proxy.so\n\
             LoadModule proxy_fcgi_module {modules}/mod_proxy_fcgi.so\n\
             ProxyPass \"/\" \"unix:{}|fcgi://localhost/\" enablereuse=on\n",
            sock.display()
        );
        std::fs::write(dir.path().join("httpd.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/apache2")
            .args(["-X", "-f"])
            .arg(dir.path().join("httpd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2 (scripts/install-deps installs it)");
        let mut a = Self { child, port, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(15) || a.child.try_wait().ok().flatten().is_some()
            {
                panic!("apache2 did not start: {}", a.error_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flask(dir: &TempDir, extra: &[&str]) -> Server {
    let sock = dir.path().join("pyfcgi.sock");
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flask_app/app.py");
    let spec = format!("{}:app", app.display());
    let venv = crate::python_nginx::venv();
    let mut args = vec![spec.as_str(), "--venv", venv, "--socket-mode", "666"];
    args.extend_from_slice(extra);
    Server::on_unix_socket(&args, &sock)
}

#[test]
fn apache_mod_proxy_fcgi_serves_the_flask_example() {
    for extra in [&[][..], &["--workers", "2"][..]] {
        let dir = TempDir::new("apache-flask");
        // Apache's worker runs as nobody: it must be able to reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let server = flask(&dir, extra);
        let apache = Apache::start(&dir.path().join("pyfcgi.sock"));
        let logs = || {
            format!(
                "{extra:?}\n--- pyfcgi:\n{}\n--- apache:\n{}",
                server.log(),
                apache.error_log()
            )
        };
        let (st, _, body) = http(apache.port, "GET", "/hello?name=apache", &[], b"");
        assert_eq!(st, 200, "{}", logs());
        assert_eq!(body, b"Hello, apache!\n", "{}", logs());
        // The URL path reaches Flask's router as PATH_INFO (Apache sends it as SCRIPT_NAME).
        let (st, _, body) = http(apache.port, "GET", "/u/caf%C3%A9", &[], b"");
        assert_eq!(
            (st, String::from_utf8_lossy(&body).into_owned()),
            (200, "café\n".into()),
            "{}",
            logs()
        );
        let (st, _, _) = http(apache.port, "GET", "/no/such/page", &[], b"");
        assert_eq!(st, 404, "{}", logs());
    }
}
