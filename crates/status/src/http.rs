//! `--status-bind`: the status document on its own small plain-HTTP listener (for a
//! Prometheus scraper or a load balancer's health check), on a thread of its own.
//!
//! It is up before the application is imported, so it can say "not ready" (503) while the
//! app loads; it never touches Python. With `--workers` the supervisor serves it from the
//! totals it keeps; the workers do not open it.

use std::io::{Read, Write};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::StatusError;
use crate::metrics::Source;

/// Longest request head read (a status request is one short line and a few headers).
const MAX_HEAD: usize = 16 * 1024;
/// A client gets this long to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

enum StatusListener {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
}

trait Stream: Read + Write {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

#[cfg(unix)]
impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// Opens `addr` (`HOST:PORT` or `unix:PATH`) and answers status requests from `source` on a
/// background thread for the rest of the process's life. Returns the address listened on.
pub fn start(addr: &str, source: Source) -> Result<String, StatusError> {
    let listener = bind(addr)?;
    let shown = match &listener {
        StatusListener::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| addr.to_owned(), |a| a.to_string()),
        #[cfg(unix)]
        StatusListener::Unix(_, p) => format!("unix:{}", p.display()),
    };
    std::thread::Builder::new()
        .name("pyfcgi-status".into())
        .spawn(move || serve(&listener, &source))
        .map_err(|source| StatusError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    info!(listen = %shown, "status listener (--status-bind) up");
    Ok(shown)
}

fn bind(addr: &str) -> Result<StatusListener, StatusError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        #[cfg(unix)]
        {
            let path = std::path::PathBuf::from(path);
            pyfcgi_server::transport::unix::clear_stale_socket(&path).map_err(|e| {
                StatusError::Bind {
                    addr: addr.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            let l = std::os::unix::net::UnixListener::bind(&path).map_err(|source| {
                StatusError::Bind {
                    addr: addr.to_owned(),
                    source,
                }
            })?;
            return Ok(StatusListener::Unix(l, path));
        }
        #[cfg(windows)]
        {
            let _ = path;
            return Err(StatusError::BadAddress(format!(
                "{addr}: unix sockets are not supported on Windows; give HOST:PORT"
            )));
        }
    }
    if !addr.contains(':') {
        return Err(StatusError::BadAddress(format!(
            "{addr:?} is not HOST:PORT (e.g. 127.0.0.1:9101) or unix:PATH"
        )));
    }
    let l = std::net::TcpListener::bind(addr).map_err(|source| StatusError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    Ok(StatusListener::Tcp(l))
}

fn serve(listener: &StatusListener, source: &Source) {
    loop {
        let r = match listener {
            StatusListener::Tcp(l) => l.accept().map(|(s, _)| answer(s, source)),
            #[cfg(unix)]
            StatusListener::Unix(l, _) => l.accept().map(|(s, _)| answer(s, source)),
        };
        if let Err(e) = r {
            warn!("--status-bind: accept failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Answers one request on `stream` (HTTP/1.x, then closes it).
fn answer(mut stream: impl Stream, source: &Source) {
    if let Err(e) = stream.set_timeouts(IO_TIMEOUT) {
        debug!("--status-bind: {e}");
        return;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let reply = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break respond(&req, source),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                break plain(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                );
            }
            Err(e) => break plain("400 Bad Request", &format!("bad request: {e}\n")),
        }
    };
    let _ = stream.write_all(&reply).and_then(|()| stream.flush());
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    http_response(status, "text/plain; charset=utf-8", body, true)
}

fn http_response(status: &str, ctype: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn respond(req: &httparse::Request<'_, '_>, source: &Source) -> Vec<u8> {
    let method = req.method.unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return plain("405 Method Not Allowed", "only GET and HEAD\n");
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let accept = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("accept"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let prometheus =
        path == "/metrics" || crate::metrics::wants_prometheus(Some(query), accept.as_deref());
    let (ready, ctype, body) = crate::metrics::render(&source(), prometheus);
    let status = if ready {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    http_response(status, ctype, &body, method == "GET")
}
