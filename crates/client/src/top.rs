//! `pyfcgi top`: a live terminal view of a running pyfcgi, read from its status endpoint (as
//! uwsgitop does for uWSGI): the totals, and one row per worker.
//!
//! The endpoint is either a `--status-bind` listener (plain HTTP over TCP or a Unix socket)
//! or, with a status path, the FastCGI socket itself (`--status-path`, asked the way a web
//! server would). Rates (requests per second) come from two successive documents; the
//! document says when it was made (`uptime_s`), so a document that has not changed since the
//! last sample does not make the rate drop to zero.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Address, ClientError, Connection, Request};

/// The shortest and longest refresh interval, in seconds.
pub const INTERVAL_RANGE: (f64, f64) = (0.1, 3600.0);
/// How long one read of the endpoint may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest status answer read (a document for hundreds of workers is well under this).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// What `pyfcgi top` was asked (the command line, checked again here).
#[derive(Debug, Clone)]
pub struct TopArgs {
    /// A `--status-bind` address (`HOST:PORT`, `unix:PATH` or a socket path), or with
    /// `status_path` a FastCGI address.
    pub address: String,
    /// The server's `--status-path`: ask over FastCGI at `address`.
    pub status_path: Option<String>,
    /// Seconds between refreshes.
    pub interval: f64,
    /// Print one plain-text frame and exit.
    pub once: bool,
    /// With `once`: print the status document (JSON) instead.
    pub json: bool,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopError {
    /// The address is not one `pyfcgi top` understands.
    #[error(
        "{input:?} is not a status address: give the --status-bind address (HOST:PORT, unix:PATH or a socket path), or a FastCGI address (HOST:PORT, unix:PATH) with --status-path PATH"
    )]
    BadAddress { input: String },
    /// A number out of range.
    #[error("{0}")]
    Usage(String),
    /// Connecting failed.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// Reading or writing the connection failed.
    #[error("the connection failed")]
    Io(#[source] std::io::Error),
    /// No answer in time.
    #[error("no answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// The FastCGI exchange failed.
    #[error(transparent)]
    FastCgi(#[from] ClientError),
    /// An answer, but not the status document.
    #[error("{0}")]
    NotStatus(String),
    /// The terminal could not be set up or read.
    #[error("the terminal")]
    Terminal(#[source] std::io::Error),
}

/// Where the status comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// A `--status-bind` listener on TCP (`HOST:PORT`).
    HttpTcp(String),
    /// A `--status-bind` listener on a Unix socket.
    HttpUnix(PathBuf),
    /// The FastCGI socket and the server's `--status-path`.
    FastCgi { address: Address, path: String },
}

impl Endpoint {
    fn parse(input: &str, status_path: Option<&str>) -> Result<Self, TopError> {
        let bad = || TopError::BadAddress {
            input: input.to_owned(),
        };
        if let Some(path) = status_path {
            if !path.starts_with('/') {
                return Err(TopError::Usage(format!(
                    "--status-path {path:?} must start with / (the path given to pyfcgi serve --status-path)"
                )));
            }
            let address = input.parse::<Address>().map_err(|_| bad())?;
            return Ok(Self::FastCgi {
                address,
                path: path.to_owned(),
            });
        }
        let input = input.strip_prefix("http://").unwrap_or(input);
        let input = input.strip_suffix('/').unwrap_or(input);
        if let Some(p) = input.strip_prefix("unix:") {
            return if p.is_empty() {
                Err(bad())
            } else {
                Ok(Self::HttpUnix(p.into()))
            };
        }
        if input.starts_with('/') || input.starts_with("./") {
            return Ok(Self::HttpUnix(input.into()));
        }
        match input.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::HttpTcp(input.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::HttpTcp(a) => format!("http://{a}/ (--status-bind)"),
            Self::HttpUnix(p) => format!("unix:{} (--status-bind)", p.display()),
            Self::FastCgi { address, path } => format!("{address} {path} (FastCGI, --status-path)"),
        }
    }

    /// What to check when the endpoint cannot be read.
    fn hint(&self) -> String {
        match self {
            Self::HttpTcp(a) => format!(
                "is pyfcgi running with --status-bind {a}? For a server with --status-path instead, give its FastCGI address and --status-path PATH"
            ),
            Self::HttpUnix(p) => format!(
                "is pyfcgi running with --status-bind unix:{}? For a server with --status-path instead, give its FastCGI address and --status-path PATH",
                p.display()
            ),
            Self::FastCgi { address, path } => format!(
                "is pyfcgi running on {address} with --status-path {path}? For a --status-bind listener, leave out --status-path"
            ),
        }
    }

    /// Reads the status document once.
    async fn fetch(&self) -> Result<Value, TopError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_now()).await {
            Ok(r) => r,
            Err(_) => Err(TopError::Timeout),
        }
    }

    async fn fetch_now(&self) -> Result<Value, TopError> {
        match self {
            Self::HttpTcp(a) => {
                let s = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map_err(TopError::Connect)?;
                http_get(s).await
            }
            #[cfg(unix)]
            Self::HttpUnix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(TopError::Connect)?;
                http_get(s).await
            }
            #[cfg(not(unix))]
            Self::HttpUnix(_) => Err(TopError::Usage(
                "Unix sockets are not supported on this system".to_owned(),
            )),
            Self::FastCgi { address, path } => {
                let mut conn = Connection::new(address.connect().await?);
                let request = Request::builder("GET", path.as_str())
                    .header("Accept", "application/json")
                    .build()?;
                let response = conn.request(&request).await?;
                let head = response.head().map_err(ClientError::from)?;
                status_json(head.status, &head.body, &format!("--status-path {path}"))
            }
        }
    }
}

/// GET / on a `--status-bind` listener (HTTP/1.1, `Connection: close`).
async fn http_get<S>(mut s: S) -> Result<Value, TopError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: pyfcgi\r\nAccept: application/json\r\nUser-Agent: pyfcgi-top\r\nConnection: close\r\n\r\n",
    )
    .await
    .map_err(TopError::Io)?;
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(TopError::Io)?;
    let not_http = || {
        TopError::NotStatus(
            "the answer is not HTTP: is this a pyfcgi --status-bind listener?".to_owned(),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(not_http)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(not_http)?;
    status_json(status, &raw[split + 4..], "--status-bind")
}

/// The document in an answer: 200 (ready) and 503 (not ready) both carry it.
fn status_json(status: u16, body: &[u8], what: &str) -> Result<Value, TopError> {
    if status != 200 && status != 503 {
        return Err(TopError::NotStatus(format!(
            "the answer is HTTP {status}, not the status document: is this pyfcgi's {what}?"
        )));
    }
    let doc: Value = serde_json::from_slice(body).map_err(|_| {
        TopError::NotStatus(format!(
            "the answer is not pyfcgi's status document (JSON): is this pyfcgi's {what}?"
        ))
    })?;
    if doc.get("workers").is_none() || doc.get("requests").is_none() {
        return Err(TopError::NotStatus(format!(
            "the JSON answer is not pyfcgi's status document: is this pyfcgi's {what}?"
        )));
    }
    Ok(doc)
}

/// Successive documents, for the rates.
#[derive(Default)]
struct Samples {
    /// The document the rates are measured from.
    base: Option<Value>,
    last: Option<Value>,
}

impl Samples {
    fn push(&mut self, doc: Value) {
        let made = |d: &Value| d.get("uptime_s").and_then(Value::as_f64);
        // An unchanged document (the supervisor writes it once a second) keeps the base.
        if let Some(last) = self.last.take() {
            if made(&last) == made(&doc) {
                self.last = Some(doc);
                return;
            }
            self.base = Some(last);
        }
        self.last = Some(doc);
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Requests per second between `base` and `last` for the counter `get` reads.
fn rate(base: Option<&Value>, last: &Value, get: impl Fn(&Value) -> Option<f64>) -> Option<f64> {
    let base = base?;
    let dt = num(last, "uptime_s") - num(base, "uptime_s");
    let d = get(last)? - get(base)?;
    (dt > 0.0 && d >= 0.0).then(|| d / dt)
}

/// `1h02m03s`, `4m05s`, `12s`; days past a day.
fn duration(s: f64) -> String {
    let s = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b / 1_048_576.0))
}

fn per_s(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// One frame: plain text lines (no escape codes).
fn frame(samples: &Samples, source: &str) -> Vec<String> {
    let Some(doc) = samples.last.as_ref() else {
        return Vec::new();
    };
    let base = samples.base.as_ref();
    let mut lines = Vec::new();
    let build = doc.get("build");
    let b = |k: &str| {
        build
            .and_then(|b| b.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    lines.push(format!(
        "pyfcgi top - {source} - pyfcgi {} (git {}), Python {}",
        b("version"),
        b("revision"),
        b("python")
    ));
    let supervised = doc.get("supervised").and_then(Value::as_bool) == Some(true);
    lines.push(format!(
        "{} pid {}, up {}; {}; workers {} alive, {} ready; {} restarts",
        if supervised { "supervisor" } else { "process" },
        num(doc, "pid"),
        duration(num(doc, "uptime_s")),
        if doc.get("ready").and_then(Value::as_bool) == Some(true) {
            "ready"
        } else {
            "NOT READY"
        },
        num(doc, "workers_alive"),
        num(doc, "workers_ready"),
        num(doc, "restarts"),
    ));
    let responses = doc.get("responses");
    let class = |c: &str| {
        responses
            .and_then(|r| r.get(c))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    lines.push(format!(
        "requests {} ({}/s)   in flight {}   queued {}   responses 2xx {} 3xx {} 4xx {} 5xx {}",
        num(doc, "requests"),
        per_s(rate(base, doc, |d| d
            .get("requests")
            .and_then(Value::as_f64))),
        num(doc, "in_flight"),
        num(doc, "queue_depth"),
        class("2xx"),
        class("3xx"),
        class("4xx"),
        class("5xx"),
    ));
    let lat = doc.get("latency_ms").cloned().unwrap_or(Value::Null);
    lines.push(format!(
        "latency p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        num(&lat, "p50"),
        num(&lat, "p90"),
        num(&lat, "p99"),
        num(&lat, "max"),
    ));
    lines.push(String::new());
    lines.push(format!(
        "{:>4}  {:>8}  {:<8}  {:>9}  {:>7}  {:>9}  {:>6}  {:>6}  {:>10}  {:>8}  {:>8}  {:>9}",
        "SLOT",
        "PID",
        "STATE",
        "REQUESTS",
        "REQ/S",
        "IN FLIGHT",
        "QUEUED",
        "CPU%",
        "RSS",
        "P99 MS",
        "RESTARTS",
        "UPTIME"
    ));
    // Each worker's requests and CPU seconds in the previous sample, by pid.
    let previous: HashMap<u64, (f64, Option<f64>)> = base
        .and_then(|b| b.get("workers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| {
            Some((
                w.get("pid")?.as_u64()?,
                (
                    w.get("requests")?.as_f64()?,
                    w.get("cpu_seconds").and_then(Value::as_f64),
                ),
            ))
        })
        .collect();
    // Restarts are per slot (the supervisor's memory of each).
    let restarts: HashMap<u64, f64> = doc
        .get("slots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.get("slot")?.as_u64()?, s.get("restarts")?.as_f64()?)))
        .collect();
    let dt = base.map(|b| num(doc, "uptime_s") - num(b, "uptime_s"));
    let mut workers: Vec<&Value> = doc
        .get("workers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    workers.sort_by_key(|w| (num(w, "slot") as u64, num(w, "uptime_s").to_bits()));
    for w in workers {
        let pid = num(w, "pid") as u64;
        let (r, cpu) = match (previous.get(&pid), dt) {
            (Some((requests, cpu)), Some(dt)) if dt > 0.0 => (
                Some((num(w, "requests") - requests).max(0.0) / dt),
                cpu.zip(w.get("cpu_seconds").and_then(Value::as_f64))
                    .map(|(before, now)| (now - before).max(0.0) / dt * 100.0),
            ),
            _ => (None, None),
        };
        let state = w.get("state").and_then(Value::as_str).unwrap_or(
            if w.get("ready").and_then(Value::as_bool) == Some(true) {
                "ready"
            } else {
                "starting"
            },
        );
        let rss = w.get("rss_bytes").and_then(Value::as_f64).or_else(|| {
            w.get("rss_mib")
                .and_then(Value::as_f64)
                .map(|m| m * 1_048_576.0)
        });
        let p99 = w
            .get("latency_ms")
            .and_then(|l| l.get("p99"))
            .and_then(Value::as_f64)
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}"));
        let slot = w.get("slot").and_then(Value::as_u64);
        lines.push(format!(
            "{:>4}  {:>8}  {:<8}  {:>9}  {:>7}  {:>9}  {:>6}  {:>6}  {:>10}  {:>8}  {:>8}  {:>9}",
            slot.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            pid,
            state,
            num(w, "requests"),
            per_s(r),
            num(w, "in_flight"),
            num(w, "queued"),
            cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
            mib(rss),
            p99,
            slot.and_then(|s| restarts.get(&s))
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            duration(num(w, "uptime_s")),
        ));
    }
    lines
}

/// Runs `pyfcgi top`; returns the exit code (0; 1 when the endpoint cannot be read; 2 on a
/// usage error). Messages go to stderr.
pub fn main(args: &TopArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("pyfcgi top: {message}");
            code
        }
    }
}

fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let _ = write!(s, ": {c}");
        source = c.source();
    }
    s
}

fn run(args: &TopArgs) -> Result<(), (i32, String)> {
    let usage = |e: TopError| (2, report(&e));
    let (lo, hi) = INTERVAL_RANGE;
    if !(lo..=hi).contains(&args.interval) {
        return Err(usage(TopError::Usage(format!(
            "--interval {} is out of range: give {lo} to {hi} seconds",
            args.interval
        ))));
    }
    if args.json && !args.once {
        return Err(usage(TopError::Usage(
            "--json prints one document: use it with --once".to_owned(),
        )));
    }
    let endpoint = Endpoint::parse(&args.address, args.status_path.as_deref()).map_err(usage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    let unreachable = |e: &TopError| {
        (
            1,
            format!(
                "cannot read the status from {}: {}\n  {}",
                endpoint.describe(),
                report(e),
                endpoint.hint()
            ),
        )
    };
    let first = rt.block_on(endpoint.fetch()).map_err(|e| unreachable(&e))?;
    let mut out = std::io::stdout().lock();
    if args.once {
        let text = if args.json {
            format!("{first:#}\n")
        } else {
            let mut samples = Samples::default();
            samples.push(first);
            frame(&samples, &endpoint.describe()).join("\n") + "\n"
        };
        return out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| (1, format!("cannot write to stdout: {e}")));
    }
    if !crossterm::tty::IsTty::is_tty(&std::io::stdout()) {
        return Err(usage(TopError::Usage(
            "stdout is not a terminal: use --once for one plain-text frame (or --once --json)"
                .to_owned(),
        )));
    }
    drop(rt);
    live(&endpoint, first, Duration::from_secs_f64(args.interval)).map_err(|e| (1, report(&e)))
}

/// Raw mode and the alternate screen, undone on drop (also on a panic's unwind).
struct Screen;

impl Screen {
    fn enter() -> Result<Self, TopError> {
        crossterm::terminal::enable_raw_mode().map_err(TopError::Terminal)?;
        let screen = Self;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )
        .map_err(TopError::Terminal)?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// SIGTERM, SIGHUP (the terminal went away) and SIGINT end the live view like `q`, so the
/// terminal is restored rather than left in raw mode.
struct StopSignals(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopSignals {
    fn watch() -> Self {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(unix)]
        for sig in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGINT,
        ] {
            // Without it, a signal stops the view the default way (the terminal stays raw).
            let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&flag));
        }
        Self(flag)
    }

    fn raised(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Fetches the status every `interval` (counted from the end of the previous fetch) on a
/// thread of its own, so a hung endpoint never keeps the view from answering its keys.
/// Sends each document, or the error's report; ends when the receiver is gone.
fn fetch_every(
    endpoint: Endpoint,
    interval: Duration,
) -> Result<std::sync::mpsc::Receiver<Result<Value, String>>, TopError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TopError::Io)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pyfcgi-top-fetch".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let got = rt.block_on(endpoint.fetch()).map_err(|e| report(&e));
                if tx.send(got).is_err() {
                    return;
                }
            }
        })
        .map_err(TopError::Io)?;
    Ok(rx)
}

fn live(endpoint: &Endpoint, first: Value, interval: Duration) -> Result<(), TopError> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let fetched = fetch_every(endpoint.clone(), interval)?;
    let screen = Screen::enter()?;
    let source = endpoint.describe();
    let mut samples = Samples::default();
    samples.push(first);
    let mut lost: Option<String> = None;
    let stop = StopSignals::watch();
    draw(&samples, &source, lost.as_deref(), interval)?;
    loop {
        if stop.raised() {
            break;
        }
        match fetched.try_recv() {
            Ok(Ok(doc)) => {
                samples.push(doc);
                lost = None;
                draw(&samples, &source, lost.as_deref(), interval)?;
            }
            Ok(Err(e)) => {
                lost = Some(format!(
                    "endpoint lost: {e}; retrying every {:.1} s ({})",
                    interval.as_secs_f64(),
                    endpoint.hint()
                ));
                draw(&samples, &source, lost.as_deref(), interval)?;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                drop(screen);
                return Err(TopError::NotStatus(
                    "the thread reading the status stopped".to_owned(),
                ));
            }
        }
        // Short waits, so a new document, a key or a signal is seen within 50 ms.
        if !event::poll(Duration::from_millis(50)).map_err(TopError::Terminal)? {
            continue;
        }
        match event::read().map_err(TopError::Terminal)? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                    break;
                }
            }
            Event::Resize(..) => draw(&samples, &source, lost.as_deref(), interval)?,
            _ => {}
        }
    }
    drop(screen);
    Ok(())
}

fn draw(
    samples: &Samples,
    source: &str,
    lost: Option<&str>,
    interval: Duration,
) -> Result<(), TopError> {
    use crossterm::{cursor, queue, style, terminal};
    // A terminal that does not say its size (a bare pseudo-terminal says 0x0) gets 100x40.
    let (cols, rows) = terminal::size()
        .ok()
        .filter(|(c, r)| *c > 0 && *r > 0)
        .unwrap_or((100, 40));
    let mut lines = frame(samples, source);
    lines.insert(
        0,
        lost.map_or_else(
            || format!("every {:.1} s; q or Ctrl-C quits", interval.as_secs_f64()),
            |l| format!("!! {l}"),
        ),
    );
    let mut out = std::io::stdout().lock();
    // Each line overwritten in place, then the rest cleared: no flicker of a blank screen.
    for (i, line) in lines.iter().take(usize::from(rows)).enumerate() {
        let line: String = line.chars().take(usize::from(cols)).collect();
        queue!(
            out,
            cursor::MoveTo(0, u16::try_from(i).unwrap_or(u16::MAX)),
            style::Print(line),
            terminal::Clear(terminal::ClearType::UntilNewLine)
        )
        .map_err(TopError::Terminal)?;
    }
    queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))
        .map_err(TopError::Terminal)?;
    out.flush().map_err(TopError::Terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_are_status_bind_listeners_or_fastcgi_with_a_path() {
        let p = |a: &str| Endpoint::parse(a, None);
        assert_eq!(
            p("127.0.0.1:9101").unwrap(),
            Endpoint::HttpTcp("127.0.0.1:9101".into())
        );
        assert_eq!(
            p("http://localhost:9101/").unwrap(),
            Endpoint::HttpTcp("localhost:9101".into())
        );
        assert_eq!(
            p("unix:/run/s.sock").unwrap(),
            Endpoint::HttpUnix("/run/s.sock".into())
        );
        assert_eq!(
            p("/run/s.sock").unwrap(),
            Endpoint::HttpUnix("/run/s.sock".into())
        );
        for bad in ["localhost", "unix:", "host:99999", ":80"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Endpoint::parse("127.0.0.1:9000", Some("/st")).unwrap(),
            Endpoint::FastCgi { path, .. } if path == "/st"
        ));
        assert!(Endpoint::parse("127.0.0.1:9000", Some("st")).is_err());
    }

    fn doc(uptime: f64, requests: u64, w0: u64) -> Value {
        // Slot 0's worker uses 0.25 CPU seconds a second.
        let cpu = uptime / 4.0;
        json!({
            "ready": true, "supervised": true, "pid": 10, "uptime_s": uptime,
            "workers_alive": 2, "workers_ready": 1, "restarts": 1, "requests": requests,
            "in_flight": 1, "queue_depth": 0, "responses": {"2xx": requests},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.5, "max": 9.0},
            "build": {"version": "0.1.0", "revision": "abc", "python": "3.11"},
            "workers": [
                {"slot": 1, "pid": 12, "ready": false, "state": "starting", "requests": 0,
                 "in_flight": 0, "queued": 0, "rss_bytes": 10_485_760, "uptime_s": 1.0},
                {"slot": 0, "pid": 11, "ready": true, "state": "ready", "requests": w0,
                 "in_flight": 1, "queued": 0, "rss_bytes": 31_457_280, "uptime_s": 75.0,
                 "cpu_seconds": cpu,
                 "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.5}},
            ],
            "slots": [{"slot": 0, "restarts": 7}, {"slot": 1, "restarts": 0}],
        })
    }

    #[test]
    fn a_frame_has_the_totals_rates_from_two_samples_and_a_row_per_worker() {
        let mut s = Samples::default();
        s.push(doc(10.0, 100, 60));
        let once = frame(&s, "src").join("\n");
        assert!(once.contains("requests 100 (-/s)"), "{once}");
        // The same document again keeps the base; a newer one gives the rates.
        s.push(doc(10.0, 100, 60));
        s.push(doc(12.0, 120, 70));
        let f = frame(&s, "src");
        let text = f.join("\n");
        assert!(text.contains("requests 120 (10.0/s)"), "{text}");
        assert!(text.contains("p99 3.50 ms"), "{text}");
        assert!(
            text.contains("supervisor pid 10, up 12s; ready; workers 2 alive, 1 ready; 1 restarts"),
            "{text}"
        );
        let rows: Vec<&String> = f.iter().filter(|l| l.contains(" MiB")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].trim_start().starts_with("0 ") && rows[0].contains("ready"),
            "{text}"
        );
        assert!(
            rows[0].contains("5.0") && rows[0].contains("30.0 MiB") && rows[0].contains("1m15s"),
            "{text}"
        );
        // CPU% from two samples of its CPU seconds; restarts from its slot.
        let cols: Vec<&str> = rows[0].split_whitespace().collect();
        assert_eq!(cols[7], "25.0", "{text}");
        assert_eq!(cols[cols.len() - 2], "7", "{text}");
        assert!(text.contains("CPU%") && text.contains("RESTARTS"), "{text}");
        assert!(
            rows[1].contains("starting") && rows[1].contains("10.0 MiB"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "no escape codes");
    }

    #[test]
    fn answers_other_than_the_status_document_are_named() {
        assert!(status_json(503, br#"{"workers": [], "requests": 0}"#, "x").is_ok());
        for (status, body) in [(404, &b"nope"[..]), (200, b"<html>"), (200, b"{\"a\": 1}")] {
            let e = status_json(status, body, "--status-path /st")
                .unwrap_err()
                .to_string();
            assert!(e.contains("--status-path /st"), "{e}");
        }
        assert_eq!(duration(3723.0), "1h02m03s");
        assert_eq!(duration(90_000.0), "1d01h00m");
    }
}
