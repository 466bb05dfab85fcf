//! Watching requests without touching the handler: an [`Observer`] in the
//! [`ConnConfig`](crate::conn::ConnConfig) is told when each request starts and how it ended
//! (status, bytes, duration). The access log and the metrics are observers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyfcgi_proto::Params;

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// A process-unique request number, for logs and error pages (FastCGI ids repeat).
pub fn next_request_seq() -> u64 {
    REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// How one request ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The request id ([`crate::Request::seq`]).
    pub seq: u64,
    /// `REQUEST_METHOD`.
    pub method: String,
    /// `REQUEST_URI`, else `SCRIPT_NAME` + `PATH_INFO` (+ `?QUERY_STRING`).
    pub uri: String,
    /// `REMOTE_ADDR`.
    pub remote: String,
    /// The response status (the CGI `Status:` header; 200 without one, 302 with only a
    /// `Location:`); 0 when no head was sent.
    pub status: u16,
    /// Response bytes, head included.
    pub bytes: u64,
    /// From the complete params to the end of the response.
    pub duration: Duration,
    /// The FastCGI application status: 0 when the response was completed normally.
    pub app_status: u32,
}

/// Told about every request.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// A request's params are complete and it goes to the handler.
    fn started(&self, seq: u64, params: &Params);
    /// The response ended (or the handler dropped it).
    fn finished(&self, done: &Finished);
}

/// Per-request bookkeeping inside the response writer.
pub(crate) struct Track {
    observer: Arc<dyn Observer>,
    done: Finished,
    started: Instant,
    /// The start of the response, until the head is complete.
    head: Vec<u8>,
    head_done: bool,
}

/// The head is looked for in this many bytes at most.
const HEAD_SCAN: usize = 16 * 1024;

impl Track {
    pub(crate) fn new(observer: Arc<dyn Observer>, seq: u64, params: &Params) -> Box<Self> {
        observer.started(seq, params);
        let get = |n: &str| params.get_str(n).unwrap_or_default().to_owned();
        let uri = if let Some(u) = params.get_str("REQUEST_URI").filter(|u| !u.is_empty()) {
            u.to_owned()
        } else {
            let mut u = get("SCRIPT_NAME") + &get("PATH_INFO");
            let q = get("QUERY_STRING");
            if !q.is_empty() {
                u.push('?');
                u.push_str(&q);
            }
            u
        };
        Box::new(Self {
            observer,
            done: Finished {
                seq,
                method: get("REQUEST_METHOD"),
                uri,
                remote: get("REMOTE_ADDR"),
                status: 0,
                bytes: 0,
                duration: Duration::ZERO,
                app_status: 0,
            },
            started: Instant::now(),
            head: Vec::new(),
            head_done: false,
        })
    }

    /// Response bytes going out.
    pub(crate) fn sent(&mut self, data: &[u8]) {
        self.done.bytes += data.len() as u64;
        if self.head_done {
            return;
        }
        let room = HEAD_SCAN.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        if let Some(status) = head_status(&self.head) {
            self.done.status = status;
            self.head_done = true;
            self.head = Vec::new();
        } else if self.head.len() >= HEAD_SCAN {
            self.head_done = true;
            self.head = Vec::new();
        }
    }

    #[allow(clippy::boxed_local)] // the writer keeps it boxed (small when unobserved)
    pub(crate) fn end(mut self: Box<Self>, app_status: u32) {
        self.done.duration = self.started.elapsed();
        self.done.app_status = app_status;
        self.observer.finished(&self.done);
    }
}

/// The status of a complete CGI head (`None` while the head is incomplete).
fn head_status(buf: &[u8]) -> Option<u16> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut location = false;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("status") {
            return Some(
                value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
            );
        }
        location |= name.trim().eq_ignore_ascii_case("location");
    }
    Some(if location { 302 } else { 200 })
}

#[cfg(test)]
mod tests {
    use super::head_status;

    #[test]
    fn the_status_comes_from_the_cgi_head() {
        assert_eq!(
            head_status(b"Status: 404 Not Found\r\nX: y\r\n\r\nbody"),
            Some(404)
        );
        assert_eq!(head_status(b"Content-Type: text/plain\r\n\r\n"), Some(200));
        assert_eq!(head_status(b"Location: /x\r\n\r\n"), Some(302));
        assert_eq!(head_status(b"status: 201 Created\n\n"), Some(201));
        assert_eq!(
            head_status(b"Status: 500 Internal"),
            None,
            "incomplete head"
        );
    }
}
