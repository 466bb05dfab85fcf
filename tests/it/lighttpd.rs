//! lighttpd (Debian's lighttpd, mod_fastcgi) in front of pyfcgi, configured with the shipped
//! snippet `configs/lighttpd-fastcgi.conf`: the Flask example through a Unix socket, with and
//! without `--workers`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Server, TempDir, free_port, http};

/// A private lighttpd on a loopback port using the shipped snippet, pointed at `sock`;
/// stopped on drop.
struct Lighttpd {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Lighttpd {
    fn start(sock: &Path) -> Self {
        let dir = TempDir::new("lighttpd");
        let port = free_port();
        let snippet = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/lighttpd-fastcgi.conf"),
        )
        .unwrap();
        assert!(snippet.contains("/run/myapp/pyfcgi.sock"), "{snippet}");
        let snippet = snippet.replace("/run/myapp/pyfcgi.sock", &sock.display().to_string());
        std::fs::write(dir.path().join("fastcgi.conf"), snippet).unwrap();
        let d = dir.path().display();
        let conf = format!(
            "server.document-root = \"{d}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\n\
             server.errorlog = \"{d}/error.log\"\ninclude \"{d}/fastcgi.conf\"\n"
        );
        std::fs::write(dir.path().join("lighttpd.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/lighttpd")
            .args(["-D", "-f"])
            .arg(dir.path().join("lighttpd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lighttpd (scripts/install-deps installs it)");
        let mut l = Self { child, port, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(15) || l.child.try_wait().ok().flatten().is_some()
            {
                panic!("lighttpd did not start: {}", l.error_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        l
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Lighttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lighttpd_mod_fastcgi_serves_the_flask_example_with_the_shipped_snippet() {
    for extra in [&[][..], &["--workers", "2"][..]] {
        let dir = TempDir::new("lighttpd-flask");
        let sock = dir.path().join("pyfcgi.sock");
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flask_app/app.py");
        let spec = format!("{}:app", app.display());
        let mut args = vec![spec.as_str(), "--venv", crate::python_nginx::venv()];
        args.extend_from_slice(extra);
        let server = Server::on_unix_socket(&args, &sock);
        let lighttpd = Lighttpd::start(&sock);
        let logs = || {
            format!(
                "{extra:?}\n--- pyfcgi:\n{}\n--- lighttpd:\n{}",
                server.log(),
                lighttpd.error_log()
            )
        };
        let (st, _, body) = http(lighttpd.port, "GET", "/hello?name=lighttpd", &[], b"");
        assert_eq!(st, 200, "{}", logs());
        assert_eq!(body, b"Hello, lighttpd!\n", "{}", logs());
        // fix-root-scriptname: the whole path reaches Flask's router as PATH_INFO.
        let (st, _, body) = http(lighttpd.port, "GET", "/u/caf%C3%A9", &[], b"");
        assert_eq!(
            (st, String::from_utf8_lossy(&body).into_owned()),
            (200, "café\n".into()),
            "{}",
            logs()
        );
        let (st, _, body) = http(
            lighttpd.port,
            "POST",
            "/form",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"name=ada&colour=blue",
        );
        assert_eq!(st, 200, "{}", logs());
        assert_eq!(body, b"colour=blue\nname=ada\n", "{}", logs());
        let (st, _, _) = http(lighttpd.port, "GET", "/no/such/page", &[], b"");
        assert_eq!(st, 404, "{}", logs());
    }
}
