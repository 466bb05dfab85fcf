//! Watching requests without touching the handler: an [`Observer`] in the
//! [`ConnConfig`](crate::conn::ConnConfig) is told when each request starts and how it ended
//! (status, bytes, duration). The access log and the metrics are observers. Also the one
//! format of a request's id ([`RequestId`]), shared by logs, error pages and the access log.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use pyfcgi_proto::Params;

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// This process's next request number (from 1). FastCGI ids repeat on every connection, so
/// requests are numbered here; [`RequestId`] is how the number is shown.
pub fn next_request_seq() -> u64 {
    REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A request's id as the error log, the 500/504 pages and the access log show it:
/// `{process}-{seq}`, e.g. `k3f9a2qz-17`.
///
/// `seq` counts this process's requests from 1. The process part tells apart the processes
/// that write one log: the workers of `pyfcgi serve --workers N`, several IIS instances, the
/// same app before and after a restart. It is 8 characters of lowercase Crockford base32
/// (40 bits, no `i`, `l`, `o`, `u`), mixed from the pid and the time the process first
/// shows an id, so the id on a 500 page names one request in the whole log.
///
/// ```
/// use pyfcgi_server::observe::RequestId;
///
/// let id = RequestId::from_seq(17).to_string();
/// let (process, seq) = id.split_once('-').unwrap();
/// assert_eq!((process.len(), seq), (8, "17"));
/// assert_eq!(RequestId::from_seq(18).to_string(), format!("{process}-18"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// The id of this process's request number `seq` (from [`next_request_seq`]).
    pub fn from_seq(seq: u64) -> Self {
        Self(seq)
    }

    /// The request number within this process.
    pub fn seq(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", process_tag(), self.0)
    }
}

/// The process part of every [`RequestId`] of this process, fixed on first use.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        process_tag_of(std::process::id(), nanos)
    })
}

/// Lowercase Crockford base32: no `i`, `l`, `o`, `u` to misread when an id is copied by hand.
const TAG_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const TAG_LEN: usize = 8;

/// The tag of process `pid` started at `nanos` (since the Unix epoch). The mix is a
/// bijection of 64 bits, so one start time never gives two pids the same 64 bits, and
/// neighbouring pids or times look nothing alike; 40 of the bits are shown.
fn process_tag_of(pid: u32, nanos: u64) -> String {
    let h = splitmix64(splitmix64(nanos) ^ u64::from(pid));
    (0..TAG_LEN)
        .map(|i| char::from(TAG_ALPHABET[(h >> (59 - 5 * i)) as usize & 31]))
        .collect()
}

/// SplitMix64's finalizer (Steele, Lea, Flood 2014): xor-shifts and odd multiplications,
/// each invertible, so distinct inputs give distinct outputs.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How one request ended.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// This process's request number ([`crate::Request::seq`]); shown as
    /// [`Finished::request_id`].
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
    /// Response body bytes (after the CGI head), what Apache's `%b` and nginx's
    /// `$body_bytes_sent` count. All of `bytes` when no head was found in the first 16 KiB.
    pub body_bytes: u64,
    /// From the complete params to the end of the response.
    pub duration: Duration,
    /// The FastCGI application status: 0 when the response was completed normally.
    pub app_status: u32,
    /// The request's params (its CGI variables and headers), kept only for an observer that
    /// asks for them ([`Observer::wants_params`]).
    pub params: Option<Params>,
}

impl Finished {
    /// The request's id, as logs and error pages show it.
    pub fn request_id(&self) -> RequestId {
        RequestId::from_seq(self.seq)
    }
}

/// Told about every request.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// A request's params are complete and it goes to the handler.
    fn started(&self, seq: u64, params: &Params);
    /// The response ended (or the handler dropped it).
    fn finished(&self, done: &Finished);
    /// True when [`Finished::params`] should carry the request's params (an access log
    /// writing headers); they are kept until the request ends.
    fn wants_params(&self) -> bool {
        false
    }
}

/// Per-request bookkeeping inside the response writer.
pub(crate) struct Track {
    observer: Arc<dyn Observer>,
    done: Finished,
    started: Instant,
    /// The start of the response, until the head is complete.
    head: Vec<u8>,
    head_done: bool,
    /// The head's length, once known.
    head_len: u64,
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
            done: Finished {
                seq,
                method: get("REQUEST_METHOD"),
                uri,
                remote: get("REMOTE_ADDR"),
                status: 0,
                bytes: 0,
                body_bytes: 0,
                duration: Duration::ZERO,
                app_status: 0,
                params: observer.wants_params().then(|| params.clone()),
            },
            observer,
            started: Instant::now(),
            head: Vec::new(),
            head_done: false,
            head_len: 0,
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
        if let Some((status, len)) = head_status(&self.head) {
            self.done.status = status;
            self.head_len = len as u64;
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
        self.done.body_bytes = self.done.bytes.saturating_sub(self.head_len);
        self.observer.finished(&self.done);
    }
}

/// The status of a complete CGI head and the head's length with its blank line (`None`
/// while the head is incomplete).
fn head_status(buf: &[u8]) -> Option<(u16, usize)> {
    let (end, len) = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            buf.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut location = false;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Some((code, len));
        }
        location |= name.trim().eq_ignore_ascii_case("location");
    }
    Some((if location { 302 } else { 200 }, len))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{RequestId, TAG_ALPHABET, TAG_LEN, head_status, process_tag, process_tag_of};

    #[test]
    fn the_process_tag_format_is_stable() {
        // Logs kept from earlier versions stay comparable: the same inputs, the same tag.
        assert_eq!(process_tag_of(4242, 1_764_806_400_123_456_789), "0rx6ccxn");
        assert_eq!(process_tag_of(1, 0), "at91c78g");
        let tag = process_tag();
        assert_eq!(tag.len(), TAG_LEN);
        assert!(tag.bytes().all(|b| TAG_ALPHABET.contains(&b)), "{tag}");
    }

    #[test]
    fn process_tags_differ_between_pids_and_between_start_times() {
        let t = 1_764_806_400_000_000_000;
        // Workers started together (neighbouring pids, one start time)...
        let workers: HashSet<_> = (1000..3000).map(|pid| process_tag_of(pid, t)).collect();
        assert_eq!(workers.len(), 2000);
        // ...and restarts of one pid a nanosecond, a millisecond, a second apart.
        let restarts: HashSet<_> = [0, 1, 1_000_000, 1_000_000_000]
            .iter()
            .map(|d| process_tag_of(4242, t + d))
            .collect();
        assert_eq!(restarts.len(), 4);
        assert!(restarts.is_disjoint(&workers));
    }

    #[test]
    fn a_request_id_is_the_process_tag_and_the_number() {
        let id = RequestId::from_seq(17);
        assert_eq!(id.seq(), 17);
        assert_eq!(id.to_string(), format!("{}-17", process_tag()));
        assert_eq!(id.to_string(), RequestId::from_seq(17).to_string());
    }

    #[test]
    fn the_status_comes_from_the_cgi_head() {
        assert_eq!(
            head_status(b"Status: 404 Not Found\r\nX: y\r\n\r\nbody"),
            Some((404, 31))
        );
        assert_eq!(
            head_status(b"Content-Type: text/plain\r\n\r\n"),
            Some((200, 28))
        );
        assert_eq!(head_status(b"Location: /x\r\n\r\n"), Some((302, 16)));
        assert_eq!(head_status(b"status: 201 Created\n\n"), Some((201, 21)));
        assert_eq!(
            head_status(b"Status: 500 Internal"),
            None,
            "incomplete head"
        );
    }
}
