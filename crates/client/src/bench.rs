//! `pyfcgi bench`: a FastCGI load generator that talks to the responder directly (no web
//! server in the way) or starts it the way IIS does, and reports throughput, an HDR latency
//! histogram and errors by kind.
//!
//! Each of the `-c` connections is one task running requests back to back on one
//! [`Connection`] (one request in flight per connection, as IIS and nginx send them). With
//! `--streams S` each connection carries S requests at once instead, with ids 1..=S (FastCGI
//! multiplexing; see `bench_mux`). With `--rate` the load is open-loop: request `k` is due
//! at `start + k / rate`, and its latency is measured from that due time, so a stalled
//! responder is charged for the requests it delayed (no coordinated omission).
//!
//! Exit codes: 0 every request succeeded; 1 usage or setup error (bad flags, unreadable body
//! file, no runtime); 2 at least one request failed (connect, protocol, status, body or
//! timeout), after the report is printed.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use pyfcgi_proto::{ProtocolStatus, Role, encode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::{RequestShape, build_request_from, load_body, timeout_from_secs};
use crate::{Address, ChildOutput, ClientError, Connection, Output, Request, Response, Spawned};
use crate::{End, Stream};

/// Exit status when any request failed.
pub const EXIT_REQUEST_ERRORS: i32 = 2;

/// Every response's status is checked against `--expect-status` (from its first bytes, which
/// costs next to nothing); the body of the first response of a run and every `SAMPLE_EVERY`th
/// after it is compared with `--expect-body` (comparing all would measure our copying).
pub(crate) const SAMPLE_EVERY: u64 = 100;

/// Response bytes kept for the status of an unsampled response: the CGI head.
pub(crate) const HEAD_CAPTURE: usize = 4096;

/// Keeps `data` in `sample`: all of it for a sampled response, else up to the head.
pub(crate) fn keep(sample: &mut BytesMut, data: &[u8], check: bool) {
    if check {
        sample.extend_from_slice(data);
    } else if sample.len() < HEAD_CAPTURE {
        let n = data.len().min(HEAD_CAPTURE - sample.len());
        sample.extend_from_slice(&data[..n]);
    }
}

/// The HTTP status a CGI response head gives (`Status:`, else 302 for a bare `Location:`,
/// else 200); `None` when the head is longer than what was kept.
fn head_status(head: &[u8]) -> Option<Result<u16, String>> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| head.windows(2).position(|w| w == b"\n\n"));
    let Some(end) = end else {
        return (head.len() < HEAD_CAPTURE)
            .then(|| Err("invalid CGI response: no blank line after the head".to_owned()));
    };
    let mut location = false;
    for line in head[..end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"Status") {
            let code = value.get(..3).and_then(|d| std::str::from_utf8(d).ok());
            return Some(code.and_then(|d| d.parse().ok()).ok_or_else(|| {
                format!(
                    "invalid CGI response: Status {:?}",
                    String::from_utf8_lossy(value)
                )
            }));
        }
        location |= name.eq_ignore_ascii_case(b"Location");
    }
    Some(Ok(if location { 302 } else { 200 }))
}

/// How long a spawned responder gets to exit once its connection is closed.
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// Latencies above this are recorded as this (the histogram's upper bound).
const MAX_LATENCY_NS: u64 = 100_000_000_000;

/// After a failed connect, wait this long before the next attempt so a dead responder does
/// not turn the run into a busy loop of connect calls.
pub(crate) const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// How often the progress line is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// Options of `pyfcgi bench` (the binary's `pyfcgi bench` flags give them; see its `--help`
/// for the full text).
#[derive(Debug, Clone)]
// Command-line switches are bools by nature.
#[allow(clippy::struct_excessive_bools)]
pub struct BenchArgs {
    /// Load a running responder.
    pub connect: Option<String>,

    /// Start one responder process per connection, given after `--`, IIS-style.
    pub spawn: bool,

    /// Start N responder processes (IIS's maxInstances), one connection each.
    pub spawn_pool: Option<u32>,

    /// Concurrent request loops, each with its own connection (with --spawn-pool.
    pub connections: Option<u32>,

    /// Measure for SECS seconds [default.
    pub duration: Option<f64>,

    /// Measure N requests, then stop.
    pub requests: Option<u64>,

    /// Send load for SECS seconds before measuring (not counted).
    pub warmup: f64,

    /// Open-loop load.
    pub rate: Option<f64>,

    /// Do not set FCGI_KEEP_CONN.
    pub no_keep_conn: bool,

    /// Requests in flight at once on each connection, with ids 1..=S (FastCGI multiplexing;.
    pub streams: u16,

    /// Seconds to wait for a connection or a response before counting a timeout (0.
    pub timeout: f64,

    /// Runtime threads for the load generator (1 keeps it on one core, for `taskset`).
    pub threads: u16,

    /// HTTP method [default.
    pub method: Option<String>,

    /// Request header 'Name.
    pub headers: Vec<String>,

    /// Request body, like curl's -d.
    pub data: Option<String>,

    /// Request body sent exactly as given.
    pub data_binary: Option<String>,

    /// Extra FastCGI param NAME=VALUE, replacing a derived one of the same name (repeatable).
    pub params: Vec<String>,

    /// Send the params IIS 10 sends (APPL_PHYSICAL_PATH, APPL_MD_PATH, URL, ...).
    pub iis: bool,

    /// The HTTP status sampled responses must have.
    pub expect_status: u16,

    /// The body sampled responses must have.
    pub expect_body: Option<String>,

    /// Print one JSON object instead of the table.
    pub json: bool,

    /// Write every measured request's start time, latency and result to this CSV file.
    pub latency_out: Option<PathBuf>,

    /// The request target.
    pub url: String,

    /// The responder's command line, for --spawn and --spawn-pool.
    pub command: Vec<String>,
}

impl Default for BenchArgs {
    /// No responder; 8 loops of GET `/` for 10 s, one stream each, 10 s timeout.
    fn default() -> Self {
        Self {
            connect: None,
            spawn: false,
            spawn_pool: None,
            connections: None,
            duration: None,
            requests: None,
            warmup: 0.0,
            rate: None,
            no_keep_conn: false,
            streams: 1,
            timeout: 10.0,
            threads: 1,
            method: None,
            headers: Vec::new(),
            data: None,
            data_binary: None,
            params: Vec::new(),
            iis: false,
            expect_status: 200,
            expect_body: None,
            json: false,
            latency_out: None,
            url: "/".to_owned(),
            command: Vec::new(),
        }
    }
}

/// Runs `pyfcgi bench` on its own runtime, printing the report to stdout and problems to
/// stderr; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            note(&format!("cannot start the async runtime: {e}"));
            return 1;
        }
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(report) => {
            let text = if json { report.json() } else { report.table() };
            if let Some(first) = &report.stats.first_error {
                note(&format!("first error: {first}"));
            }
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                note(&format!("cannot write the report: {e}"));
                return 1;
            }
            if report.stats.error_total() > 0 {
                EXIT_REQUEST_ERRORS
            } else {
                0
            }
        }
        Err(e) => {
            note(&e.report());
            1
        }
    }
}

/// Writes a line to our stderr, ignoring failures (there is nowhere else to report them).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "pyfcgi bench: {text}");
}

/// Runs the benchmark and returns its report (request failures are in the report, not
/// errors).
pub async fn run(args: BenchArgs) -> Result<Report, ClientError> {
    let plan = Plan::from_args(&args)?;
    // Created before the run, so a path that cannot be written fails now, not after it.
    let latency_out = match &args.latency_out {
        Some(path) => Some((
            path.clone(),
            std::fs::File::create(path).map_err(|source| ClientError::WriteLatency {
                path: path.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let request = build_request_from(&RequestShape {
        method: args.method.as_deref(),
        url: &args.url,
        headers: &args.headers,
        data: args.data.as_deref(),
        data_binary: args.data_binary.as_deref(),
        params: &args.params,
        iis: args.iis,
        keep_conn: !args.no_keep_conn,
    })
    .await?;
    let expect_body = match &args.expect_body {
        Some(spec) => Some(Bytes::from(load_body(spec, false).await?)),
        None => None,
    };
    let source = if let Some(connect) = &args.connect {
        Source::Connect(connect.parse()?)
    } else {
        // With --iis on Windows the child gets exactly what IIS gives it: no stdout/stderr.
        let output = if cfg!(windows) && args.iis {
            ChildOutput::Null
        } else {
            ChildOutput::ToStderr
        };
        Source::Spawn {
            command: args.command.clone(),
            output,
        }
    };
    let request_wire_len = wire_len(&request)?;
    let target = match &source {
        Source::Connect(address) => address.to_string(),
        Source::Spawn { command, .. } => format!("spawn: {}", command.join(" ")),
    };
    let mut ctx = Ctx {
        source,
        request,
        request_wire_len,
        expect_status: args.expect_status,
        expect_body,
        limit: plan.limit,
        pool: None,
        progress: std::io::stderr().is_terminal(),
        streams: args.streams,
    };

    // Connect (or start the processes) before the clock starts.
    let (mut slots, setup) = setup_slots(&ctx, plan.slot_count).await;
    if plan.pooled {
        ctx.pool = Some(Pool {
            permits: Semaphore::new(slots.len()),
            slots: Mutex::new(std::mem::take(&mut slots)),
        });
    }
    let ctx = Arc::new(ctx);

    if let Some(warmup) = plan.warmup {
        let phase = Phase::new(Stop::After(warmup), plan.interval_ns);
        let (back, _) = run_phase(&ctx, phase, slots, plan.loops, "warm-up").await;
        slots = back;
    }
    let mut phase = Phase::new(plan.stop, plan.interval_ns);
    phase.samples = latency_out.is_some();
    let started = phase.start;
    let (slots, mut stats) = run_phase(&ctx, phase, slots, plan.loops, "bench").await;
    let elapsed = started.elapsed();
    stats.merge(setup);

    let ctx = Arc::into_inner(ctx);
    let pooled = ctx
        .and_then(|c| c.pool)
        .map(|p| p.slots.into_inner().unwrap_or_else(PoisonError::into_inner))
        .unwrap_or_default();
    close_slots(slots.into_iter().chain(pooled)).await;

    if let Some((path, file)) = latency_out {
        let samples = std::mem::take(&mut stats.samples);
        write_latencies(&path, file, samples)?;
    }

    Ok(Report {
        target,
        connections: plan.loops,
        processes: plan.pooled.then_some(plan.slot_count),
        keep_conn: !args.no_keep_conn,
        streams: args.streams,
        elapsed,
        stats,
    })
}

/// What the flags ask for, checked.
#[derive(Debug)]
struct Plan {
    /// Request loops (`-c`).
    loops: u32,
    /// Connections (and processes, when spawning) to set up.
    slot_count: u32,
    /// With --spawn-pool: the loops share the slots.
    pooled: bool,
    stop: Stop,
    warmup: Option<Duration>,
    /// Nanoseconds between due times (open loop), from --rate.
    interval_ns: Option<f64>,
    limit: Option<Duration>,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Result<Self, ClientError> {
        let usage = |text: String| Err(ClientError::Usage(text));
        let responders = usize::from(args.connect.is_some())
            + usize::from(args.spawn)
            + usize::from(args.spawn_pool.is_some());
        if responders != 1 {
            return usage(
                "give exactly one of --connect ADDR, --spawn and --spawn-pool N".to_owned(),
            );
        }
        if args.spawn_pool == Some(0)
            || args.connections == Some(0)
            || args.requests == Some(0)
            || args.streams == 0
            || args.threads == 0
        {
            return usage(
                "--spawn-pool, --connections, --requests, --streams and --threads count from 1"
                    .to_owned(),
            );
        }
        if args.duration.is_some() && args.requests.is_some() {
            return usage("--duration and --requests cannot be used together".to_owned());
        }
        if args.data.is_some() && args.data_binary.is_some() {
            return usage("--data and --data-binary cannot be used together".to_owned());
        }
        let spawning = args.spawn || args.spawn_pool.is_some();
        if spawning && args.command.is_empty() {
            return usage(
                "--spawn and --spawn-pool need the responder's command line after `--`, e.g. \
                 `pyfcgi bench --spawn -c 4 -- pyfcgi serve app:app`"
                    .to_owned(),
            );
        }
        if !spawning && !args.command.is_empty() {
            return usage(format!(
                "a command after `--` ({}) is only used with --spawn or --spawn-pool",
                args.command.join(" ")
            ));
        }
        if args.streams > 1 && (spawning || args.no_keep_conn) {
            return usage(
                "--streams multiplexes requests on kept connections, so it needs --connect and \
                 cannot be combined with --no-keep-conn"
                    .to_owned(),
            );
        }
        if spawning && args.no_keep_conn {
            return usage(
                "a spawned responder has a single connection, so --no-keep-conn needs --connect"
                    .to_owned(),
            );
        }
        let secs = |flag: &str, value: f64, zero_ok: bool| {
            if value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0)) {
                Duration::try_from_secs_f64(value).map_err(|_| ())
            } else {
                Err(())
            }
            .map_err(|()| {
                ClientError::Usage(format!(
                    "{flag} {value} is not a positive number of seconds"
                ))
            })
        };
        let stop = match (args.requests, args.duration) {
            (Some(n), _) => Stop::Count(n),
            (None, Some(d)) => Stop::After(secs("--duration", d, false)?),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        let warmup = Some(secs("--warmup", args.warmup, true)?).filter(|w| !w.is_zero());
        let interval_ns = match args.rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => Some(1e9 / r),
            Some(r) => return usage(format!("--rate {r} is not a positive number of requests/s")),
        };
        let (loops, slot_count) = if let Some(n) = args.spawn_pool {
            (args.connections.unwrap_or(n), n)
        } else {
            let c = args.connections.unwrap_or(8);
            (c, c)
        };
        Ok(Self {
            loops,
            slot_count,
            pooled: args.spawn_pool.is_some(),
            stop,
            warmup,
            interval_ns,
            limit: timeout_from_secs(args.timeout)?,
        })
    }
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After this many requests.
    Count(u64),
    /// No request starts (or is due) this long after the phase started.
    After(Duration),
}

/// Where connections come from.
pub(crate) enum Source {
    Connect(Address),
    Spawn {
        command: Vec<String>,
        output: ChildOutput,
    },
}

/// One connection and, when spawning, the process at its other end.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) conn: Option<Connection<Stream>>,
    child: Option<Spawned>,
}

impl Slot {
    /// The connection, (re)connected or (re)spawned if the last one is not reusable.
    pub(crate) async fn ready(
        &mut self,
        source: &Source,
    ) -> Result<&mut Connection<Stream>, ClientError> {
        if let Some(conn) = self.conn.take_if(|c| c.is_reusable()) {
            return Ok(self.conn.insert(conn));
        }
        self.conn = None;
        let conn = match source {
            Source::Connect(address) => Connection::new(address.connect().await?),
            Source::Spawn { command, output } => {
                // Like IIS, replace a process whose connection broke (dropping kills it).
                self.child = None;
                let (child, conn) = Spawned::connected(command, *output).await?;
                self.child = Some(child);
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    async fn close(mut self) {
        self.conn = None;
        if let Some(child) = self.child.take()
            && let Err(e) = child.shutdown(CHILD_GRACE).await
        {
            tracing::debug!("stopping a responder: {}", e.report());
        }
    }
}

/// The slots of `--spawn-pool`, shared by the request loops.
struct Pool {
    slots: Mutex<Vec<Slot>>,
    /// One permit per slot; tokio's semaphore is fair, so waiting loops queue in order.
    permits: Semaphore,
}

impl Pool {
    fn take(&self) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, slot: Slot) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }
}

/// What every request loop shares for the whole run.
pub(crate) struct Ctx {
    pub(crate) source: Source,
    pub(crate) request: Request,
    request_wire_len: u64,
    expect_status: u16,
    expect_body: Option<Bytes>,
    pub(crate) limit: Option<Duration>,
    pool: Option<Pool>,
    pub(crate) progress: bool,
    /// Requests in flight per connection (`--streams`).
    streams: u16,
}

/// One timed phase (warm-up or measurement).
pub(crate) struct Phase {
    start: Instant,
    stop: Stop,
    pub(crate) interval_ns: Option<f64>,
    /// The next request number; also its slot in the --rate schedule.
    pub(crate) tickets: AtomicU64,
    /// Finished and failed requests, for the progress line only.
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Keep every request's [`Sample`] (`--latency-out`, measurement phase only).
    samples: bool,
}

impl Phase {
    fn new(stop: Stop, interval_ns: Option<f64>) -> Self {
        Self {
            start: Instant::now(),
            stop,
            interval_ns,
            tickets: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            samples: false,
        }
    }

    /// True once no further request may start.
    pub(crate) fn over(&self) -> bool {
        self.due(self.tickets.load(Ordering::Relaxed)).is_none()
    }

    /// When request `ticket` should start, or `None` when the phase is over.
    pub(crate) fn due(&self, ticket: u64) -> Option<Instant> {
        let due = match self.interval_ns {
            Some(interval) => send_time(self.start, interval, ticket),
            None => Instant::now(),
        };
        match self.stop {
            Stop::Count(n) if ticket >= n => None,
            Stop::After(d) if due >= self.start + d => None,
            _ => Some(due),
        }
    }
}

/// The due time of request `ticket` under an open-loop schedule of one request every
/// `interval_ns` nanoseconds.
fn send_time(start: Instant, interval_ns: f64, ticket: u64) -> Instant {
    start + Duration::from_nanos((ticket as f64 * interval_ns) as u64)
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Protocol,
    Status,
    Body,
    Timeout,
}

impl ErrorKind {
    const ALL: [Self; 5] = [
        Self::Connect,
        Self::Protocol,
        Self::Status,
        Self::Body,
        Self::Timeout,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::Body => "body",
            Self::Timeout => "timeout",
        }
    }

    pub(crate) fn of(error: &ClientError) -> Self {
        match error {
            ClientError::Connect { .. }
            | ClientError::Spawn { .. }
            | ClientError::ChildExited { .. } => Self::Connect,
            ClientError::Timeout { .. } => Self::Timeout,
            _ => Self::Protocol,
        }
    }
}

/// Counters and the latency histogram of one request loop, or merged.
#[derive(Debug, Clone)]
pub struct Stats {
    pub(crate) ok: u64,
    /// Responses whose body was compared with `--expect-body` (or fully parsed, without it).
    pub(crate) bodies_checked: u64,
    errors: [u64; 5],
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// Nanoseconds, 3 significant digits.
    latency: Histogram<u64>,
    first_error: Option<String>,
    /// Every measured request, with `--latency-out` (empty otherwise).
    samples: Vec<Sample>,
}

/// One request as `--latency-out` writes it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it was due (sent, in a closed loop), from the start of the measurement.
    start: Duration,
    latency: Duration,
    /// `None`: it succeeded.
    failed: Option<ErrorKind>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            ok: 0,
            bodies_checked: 0,
            errors: [0; 5],
            bytes_in: 0,
            bytes_out: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            first_error: None,
            samples: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        self.errors[kind as usize] += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {}", kind.name(), detail()));
        }
    }

    pub(crate) fn record_latency(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.max(1));
    }

    pub(crate) fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.bodies_checked += other.bodies_checked;
        for (sum, n) in self.errors.iter_mut().zip(other.errors) {
            *sum += n;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        if let Err(e) = self.latency.add(&other.latency) {
            tracing::debug!("cannot merge latency histograms: {e}");
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.samples.extend(other.samples);
    }

    /// Failed requests of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Requests that succeeded.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Latency at quantile `q` (0..=1) in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    target: String,
    connections: u32,
    /// With --spawn-pool: the number of processes.
    processes: Option<u32>,
    keep_conn: bool,
    /// Requests in flight per connection.
    streams: u16,
    elapsed: Duration,
    /// The counters and latencies.
    pub stats: Stats,
}

/// The latency percentiles shown, with their labels.
const QUANTILES: [(&str, &str, f64); 4] = [
    ("p50", "p50", 0.5),
    ("p90", "p90", 0.9),
    ("p99", "p99", 0.99),
    ("p99.9", "p99_9", 0.999),
];

impl Report {
    fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let processes = self
            .processes
            .map(|n| format!(" sharing {n} processes"))
            .unwrap_or_default();
        let keep = if self.streams > 1 {
            format!("keep-conn, {} streams each", self.streams)
        } else if self.keep_conn {
            "keep-conn".to_owned()
        } else {
            "new connection per request".to_owned()
        };
        let _ = writeln!(
            out,
            "target      {} ({} connections{processes}, {keep})",
            self.target, self.connections
        );
        let _ = writeln!(
            out,
            "requests    {} ({} ok, {} errors)",
            s.ok + s.error_total(),
            s.ok,
            s.error_total()
        );
        let _ = writeln!(
            out,
            "checked     the status of every response; the body of {} (1 in {SAMPLE_EVERY}), the others unchecked",
            s.bodies_checked
        );
        let _ = writeln!(out, "duration    {:.3} s", self.elapsed.as_secs_f64());
        let _ = writeln!(out, "throughput  {:.1} req/s", self.throughput());
        let mut latency = String::new();
        for (label, _, q) in QUANTILES {
            let _ = write!(
                latency,
                "{label} {}  ",
                format_latency(s.latency.value_at_quantile(q))
            );
        }
        let _ = writeln!(
            out,
            "latency     {latency}max {}",
            format_latency(s.latency.max())
        );
        let secs = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "bytes in    {} ({}/s)",
            format_bytes(s.bytes_in),
            format_bytes((s.bytes_in as f64 / secs) as u64)
        );
        let _ = writeln!(
            out,
            "bytes out   {} ({}/s)",
            format_bytes(s.bytes_out),
            format_bytes((s.bytes_out as f64 / secs) as u64)
        );
        let errors: Vec<String> = ErrorKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), s.errors[*k as usize]))
            .collect();
        let _ = writeln!(out, "errors      {}", errors.join(", "));
        out
    }

    /// One JSON object (and a newline); latencies in microseconds.
    pub fn json(&self) -> String {
        let s = &self.stats;
        let mut out = String::from("{");
        let _ = write!(out, "\"target\":{}", json_string(&self.target));
        let _ = write!(out, ",\"connections\":{}", self.connections);
        let _ = write!(out, ",\"streams\":{}", self.streams);
        if let Some(n) = self.processes {
            let _ = write!(out, ",\"processes\":{n}");
        }
        let _ = write!(out, ",\"keep_conn\":{}", self.keep_conn);
        let _ = write!(out, ",\"requests\":{}", s.ok + s.error_total());
        let _ = write!(out, ",\"ok\":{}", s.ok);
        let _ = write!(out, ",\"bodies_checked\":{}", s.bodies_checked);
        let _ = write!(out, ",\"duration_s\":{:.6}", self.elapsed.as_secs_f64());
        let _ = write!(out, ",\"throughput_rps\":{:.3}", self.throughput());
        out.push_str(",\"latency_us\":{");
        for (_, key, q) in QUANTILES {
            let _ = write!(out, "\"{key}\":{:.3},", s.quantile_us(q));
        }
        let _ = write!(
            out,
            "\"max\":{:.3},\"mean\":{:.3}}}",
            s.latency.max() as f64 / 1000.0,
            s.latency.mean() / 1000.0
        );
        let _ = write!(out, ",\"bytes_in\":{}", s.bytes_in);
        let _ = write!(out, ",\"bytes_out\":{}", s.bytes_out);
        let _ = write!(out, ",\"error_total\":{}", s.error_total());
        out.push_str(",\"errors\":{");
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{}\":{}", kind.name(), s.errors[*kind as usize]);
        }
        out.push_str("}}\n");
        out
    }
}

/// A latency in nanoseconds, in the unit that keeps 3–4 significant digits.
fn format_latency(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

/// A byte count in binary units.
fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bytes one request puts on the wire (the same records `Connection` writes).
fn wire_len(request: &Request) -> Result<u64, ClientError> {
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, 1, Role::Responder, request.keep_conn());
    encode::params(&mut out, 1, request.params()).map_err(|e| {
        ClientError::InvalidRequest(format!("cannot encode the FastCGI params: {e}"))
    })?;
    encode::params_end(&mut out, 1);
    let mut len = out.len() as u64;
    // Encoded a piece at a time so a large body is not copied whole.
    for piece in request.body().chunks(1 << 20) {
        out.clear();
        encode::stdin(&mut out, 1, piece);
        len += out.len() as u64;
    }
    out.clear();
    encode::stdin_end(&mut out, 1);
    Ok(len + out.len() as u64)
}

/// Sets up `count` slots concurrently; failures are counted as errors, and the slot retries
/// on its first request.
async fn setup_slots(ctx: &Ctx, count: u32) -> (Vec<Slot>, Stats) {
    let mut stats = Stats::new();
    let mut slots = Vec::with_capacity(count as usize);
    let attempts = (0..count).map(|_| async {
        let mut slot = Slot::default();
        let result = within(ctx.limit, slot.ready(&ctx.source)).await.map(|_| ());
        (slot, result)
    });
    // Joined on this task: the futures borrow `ctx`, and setup time is not measured.
    let results = join_all(attempts).await;
    for (slot, result) in results {
        if let Err(e) = result {
            stats.error(ErrorKind::of(&e), || e.report());
        }
        slots.push(slot);
    }
    (slots, stats)
}

/// Polls all futures to completion on the current task.
pub(crate) async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

async fn close_slots(slots: impl Iterator<Item = Slot>) {
    join_all(slots.map(Slot::close)).await;
}

/// Awaits `fut`, giving up after `limit`.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match limit {
        None => fut.await,
        Some(limit) => {
            tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| ClientError::Timeout {
                    secs: limit.as_secs_f64(),
                    waiting_for: "the responder",
                })?
        }
    }
}

/// Runs `loops` request loops until the phase ends; returns the slots and the merged stats.
async fn run_phase(
    ctx: &Arc<Ctx>,
    phase: Phase,
    slots: Vec<Slot>,
    loops: u32,
    label: &'static str,
) -> (Vec<Slot>, Stats) {
    let phase = Arc::new(phase);
    let progress = ctx
        .progress
        .then(|| Progress::start(Arc::clone(&phase), label));
    let mut slots = slots.into_iter();
    let mut tasks = JoinSet::new();
    for _ in 0..loops {
        let own = if ctx.pool.is_some() {
            None
        } else {
            Some(slots.next().unwrap_or_default())
        };
        if ctx.streams > 1 {
            let slot = own.unwrap_or_default();
            let task =
                crate::bench_mux::mux_loop(Arc::clone(ctx), Arc::clone(&phase), slot, ctx.streams);
            tasks.spawn(task);
        } else {
            tasks.spawn(request_loop(Arc::clone(ctx), Arc::clone(&phase), own));
        }
    }
    let mut back = Vec::new();
    let mut stats = Stats::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok((slot, loop_stats)) => {
                back.extend(slot);
                stats.merge(loop_stats);
            }
            Err(e) => tracing::warn!("a request loop failed: {e}"),
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    (back, stats)
}

/// One connection's request loop.
async fn request_loop(
    ctx: Arc<Ctx>,
    phase: Arc<Phase>,
    mut own: Option<Slot>,
) -> (Option<Slot>, Stats) {
    let mut stats = Stats::new();
    let mut sample = BytesMut::new();
    loop {
        let ticket = phase.tickets.fetch_add(1, Ordering::Relaxed);
        let Some(due) = phase.due(ticket) else {
            break;
        };
        if phase.interval_ns.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let check = ticket.is_multiple_of(SAMPLE_EVERY);
        let result = match (&ctx.pool, own.as_mut()) {
            (Some(pool), _) => {
                let Ok(_permit) = pool.permits.acquire().await else {
                    break;
                };
                let mut slot = pool.take();
                let result = exchange(&ctx, &mut slot, check, &mut sample, &mut stats).await;
                pool.give_back(slot);
                result
            }
            (None, Some(slot)) => exchange(&ctx, slot, check, &mut sample, &mut stats).await,
            (None, None) => break,
        };
        let failed = record(&ctx, &phase, &mut stats, due.elapsed(), result);
        if failed == Some(ErrorKind::Connect) {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
    (own, stats)
}

/// Counts one finished request (its latency measured from `due`) and returns the kind of
/// failure, if it failed.
pub(crate) fn record(
    ctx: &Ctx,
    phase: &Phase,
    stats: &mut Stats,
    latency: Duration,
    result: Result<(), (ErrorKind, String)>,
) -> Option<ErrorKind> {
    let sent = phase.samples.then(|| Instant::now().checked_sub(latency));
    let failed = match result {
        Ok(()) => {
            stats.ok += 1;
            stats.record_latency(latency);
            None
        }
        Err((kind, detail)) => {
            // A response that arrived but failed the gate still has a latency.
            if matches!(kind, ErrorKind::Status | ErrorKind::Body) {
                stats.record_latency(latency);
            }
            stats.error(kind, || detail);
            if ctx.progress {
                phase.failed.fetch_add(1, Ordering::Relaxed);
            }
            Some(kind)
        }
    };
    if ctx.progress {
        phase.done.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(sent) = sent {
        stats.samples.push(Sample {
            start: sent.map_or(Duration::ZERO, |t| t.saturating_duration_since(phase.start)),
            latency,
            failed,
        });
    }
    failed
}

/// `--latency-out`: one line per measured request, in the order they were due:
/// `start_s,latency_us,result` (`ok` or the kind of failure).
fn write_latencies(
    path: &Path,
    file: std::fs::File,
    mut samples: Vec<Sample>,
) -> Result<(), ClientError> {
    samples.sort_unstable_by_key(|s| s.start);
    let mut out = std::io::BufWriter::new(file);
    let written = writeln!(out, "start_s,latency_us,result")
        .and_then(|()| {
            samples.iter().try_for_each(|s| {
                writeln!(
                    out,
                    "{:.6},{:.1},{}",
                    s.start.as_secs_f64(),
                    s.latency.as_secs_f64() * 1e6,
                    s.failed.map_or("ok", ErrorKind::name)
                )
            })
        })
        .and_then(|()| out.flush());
    written.map_err(|source| ClientError::WriteLatency {
        path: path.to_owned(),
        source,
    })
}

/// Sends the request once on `slot`; with `check`, compares the response with the gate.
async fn exchange(
    ctx: &Ctx,
    slot: &mut Slot,
    check: bool,
    sample: &mut BytesMut,
    stats: &mut Stats,
) -> Result<(), (ErrorKind, String)> {
    let fail = |e: ClientError| (ErrorKind::of(&e), e.report());
    let conn = match within(ctx.limit, slot.ready(&ctx.source)).await {
        Ok(conn) => conn,
        Err(e) => return Err(fail(e)),
    };
    stats.bytes_out += ctx.request_wire_len;
    sample.clear();
    let bytes_in = &mut stats.bytes_in;
    let response = conn.request_with(&ctx.request, |output, data| {
        *bytes_in += data.len() as u64;
        if output == Output::Stdout {
            keep(sample, &data, check);
        }
    });
    let end = within(ctx.limit, response).await.map_err(fail);
    // A connection that cannot carry another request (no FCGI_KEEP_CONN, or broken) is closed
    // now, not when the next request replaces it: a responder that waits for the client to
    // close first (flup, libfcgi) would otherwise sit on it, and with one worker stall.
    if !slot.conn.as_ref().is_some_and(Connection::is_reusable) {
        slot.conn = None;
    }
    let checked = check_end(ctx, end?, check, sample);
    if check && checked.is_ok() {
        stats.bodies_checked += 1;
    }
    checked
}

/// Applies the correctness gate to a finished request.
pub(crate) fn check_end(
    ctx: &Ctx,
    end: End,
    check: bool,
    sample: &mut BytesMut,
) -> Result<(), (ErrorKind, String)> {
    if end.protocol_status != ProtocolStatus::RequestComplete {
        return Err((
            ErrorKind::Protocol,
            format!(
                "the application refused the request ({:?})",
                end.protocol_status
            ),
        ));
    }
    if !check {
        return match head_status(sample) {
            Some(Ok(status)) if status != ctx.expect_status => Err((
                ErrorKind::Status,
                format!(
                    "status {status} where --expect-status is {}",
                    ctx.expect_status
                ),
            )),
            Some(Err(e)) => Err((ErrorKind::Protocol, e)),
            _ => Ok(()),
        };
    }
    let response = Response {
        stdout: sample.split().freeze(),
        stderr: Bytes::new(),
        app_status: end.app_status,
        protocol_status: end.protocol_status,
    };
    let head = response
        .head()
        .map_err(|e| (ErrorKind::Protocol, format!("invalid CGI response: {e}")))?;
    if head.status != ctx.expect_status {
        return Err((
            ErrorKind::Status,
            format!(
                "status {} {} where --expect-status is {}",
                head.status, head.reason, ctx.expect_status
            ),
        ));
    }
    if let Some(expected) = &ctx.expect_body
        && head.body != expected
    {
        return Err((
            ErrorKind::Body,
            format!(
                "a {}-byte body where --expect-body has {} bytes",
                head.body.len(),
                expected.len()
            ),
        ));
    }
    Ok(())
}

/// The live progress line on stderr (terminal only).
struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(phase: Arc<Phase>, label: &'static str) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        let handle = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(PROGRESS_TICK);
            let mut last = (Instant::now(), 0_u64);
            loop {
                interval.tick().await;
                let done = phase.done.load(Ordering::Relaxed);
                let failed = phase.failed.load(Ordering::Relaxed);
                let now = Instant::now();
                let secs = now.duration_since(last.0).as_secs_f64();
                let rate = if secs > 0.0 {
                    (done - last.1) as f64 / secs
                } else {
                    0.0
                };
                last = (now, done);
                handle.set_message(format!(
                    "{label}: {:.1} s, {done} requests, {rate:.0} req/s, {failed} errors",
                    phase.start.elapsed().as_secs_f64()
                ));
                handle.tick();
            }
        });
        Self { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_comes_from_the_cgi_head() {
        assert_eq!(
            head_status(b"Status: 404 Not Found\r\nContent-Type: x\r\n\r\nbody"),
            Some(Ok(404))
        );
        assert_eq!(head_status(b"content-type: x\n\nbody"), Some(Ok(200)));
        assert_eq!(head_status(b"Location: /x\r\n\r\n"), Some(Ok(302)));
        assert_eq!(
            head_status(b"status:301 Moved\r\nLocation: /x\r\n\r\n"),
            Some(Ok(301))
        );
        assert!(matches!(head_status(b"Status: abc\r\n\r\n"), Some(Err(_))));
        assert!(matches!(head_status(b"no head at all"), Some(Err(_))));
        // A head longer than what is kept: unknown, not an error.
        assert_eq!(head_status(&[b'x'; HEAD_CAPTURE]), None);
        let mut kept = BytesMut::new();
        keep(&mut kept, &[b'a'; HEAD_CAPTURE + 10], false);
        assert_eq!(kept.len(), HEAD_CAPTURE);
        keep(&mut kept, b"more", true);
        assert_eq!(kept.len(), HEAD_CAPTURE + 4);
    }

    #[test]
    fn latencies_are_shown_in_a_readable_unit() {
        assert_eq!(format_latency(800), "0.8 µs");
        assert_eq!(format_latency(12_345), "12.3 µs");
        assert_eq!(format_latency(999_949), "999.9 µs");
        assert_eq!(format_latency(1_500_000), "1.50 ms");
        assert_eq!(format_latency(2_340_000_000), "2.34 s");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(format_bytes(13), "13 B");
        assert_eq!(format_bytes(2048), "2.00 KiB");
        assert_eq!(format_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn percentiles_come_from_the_merged_histogram() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for us in 1..=900 {
            a.record_latency(Duration::from_micros(us));
        }
        for us in 901..=1000 {
            b.record_latency(Duration::from_micros(us));
        }
        a.ok = 900;
        b.ok = 100;
        b.error(ErrorKind::Body, || "first".into());
        b.error(ErrorKind::Body, || "second".into());
        a.merge(b);
        assert_eq!(a.ok(), 1000);
        assert_eq!(a.error_total(), 2);
        assert_eq!(a.first_error.as_deref(), Some("body: first"));
        // 3 significant digits: within 0.1 %.
        assert!(
            (a.quantile_us(0.5) - 500.0).abs() <= 0.5,
            "{}",
            a.quantile_us(0.5)
        );
        assert!((a.quantile_us(0.99) - 990.0).abs() <= 1.0);
        assert!((a.quantile_us(0.999) - 999.0).abs() <= 1.0);
        assert!((a.latency.max() as f64 / 1000.0 - 1000.0).abs() <= 1.0);
    }

    fn report(stats: Stats) -> Report {
        Report {
            target: "unix:/tmp/a\"b.sock".into(),
            connections: 4,
            streams: 1,
            processes: None,
            keep_conn: true,
            elapsed: Duration::from_secs(2),
            stats,
        }
    }

    #[test]
    fn json_report_is_one_object_with_every_field() {
        let mut stats = Stats::new();
        stats.ok = 10;
        stats.bytes_in = 130;
        stats.record_latency(Duration::from_micros(20));
        stats.error(ErrorKind::Timeout, || "slow".into());
        let json = report(stats).json();
        assert!(
            json.starts_with("{\"target\":\"unix:/tmp/a\\\"b.sock\""),
            "{json}"
        );
        for field in [
            "\"requests\":11",
            "\"ok\":10",
            "\"throughput_rps\":5.000",
            "\"p50\":20.",
            "\"p99_9\":",
            "\"bytes_in\":130",
            "\"error_total\":1",
            "\"timeout\":1",
            "\"connect\":0",
        ] {
            assert!(json.contains(field), "{field} missing in {json}");
        }
        assert!(json.ends_with("}}\n"));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }

    #[test]
    fn table_lists_throughput_latency_and_errors() {
        let mut stats = Stats::new();
        stats.ok = 4000;
        stats.record_latency(Duration::from_micros(150));
        let table = report(stats).table();
        assert!(
            table.contains("requests    4000 (4000 ok, 0 errors)"),
            "{table}"
        );
        assert!(table.contains("throughput  2000.0 req/s"), "{table}");
        assert!(table.contains("p50 150.0 µs"), "{table}");
        assert!(
            table.contains("errors      connect 0, protocol 0, status 0, body 0, timeout 0"),
            "{table}"
        );
    }

    #[test]
    fn open_loop_schedule_spaces_requests_evenly() {
        let start = Instant::now();
        let interval = 1e9 / 500.0;
        assert_eq!(send_time(start, interval, 0), start);
        assert_eq!(
            send_time(start, interval, 1),
            start + Duration::from_millis(2)
        );
        assert_eq!(
            send_time(start, interval, 500),
            start + Duration::from_secs(1)
        );
    }

    #[test]
    fn paced_phase_ends_at_its_duration() {
        let phase = Phase::new(Stop::After(Duration::from_secs(1)), Some(1e9 / 500.0));
        assert!(phase.due(499).is_some());
        assert!(
            phase.due(500).is_none(),
            "request 500 is due exactly at the end"
        );
        let counted = Phase::new(Stop::Count(3), None);
        assert!(counted.due(2).is_some());
        assert!(counted.due(3).is_none());
    }

    #[test]
    fn spawn_without_keep_conn_is_a_usage_error() {
        let cmd = vec!["x".to_owned()];
        let args = BenchArgs {
            spawn: true,
            no_keep_conn: true,
            command: cmd.clone(),
            ..BenchArgs::default()
        };
        let err = Plan::from_args(&args).unwrap_err();
        assert!(err.to_string().contains("--no-keep-conn"), "{err}");
        let args = BenchArgs {
            spawn_pool: Some(3),
            command: cmd,
            ..BenchArgs::default()
        };
        let plan = Plan::from_args(&args).unwrap();
        assert_eq!((plan.loops, plan.slot_count, plan.pooled), (3, 3, true));
        let args = BenchArgs {
            connect: Some("h:1".into()),
            rate: Some(0.0),
            ..BenchArgs::default()
        };
        assert!(Plan::from_args(&args).is_err());
        let none = BenchArgs::default();
        assert!(Plan::from_args(&none).is_err(), "no responder");
    }
}
