//! Request metrics and the status endpoint (`--status-path`, JSON and Prometheus text). All of
//! it is Rust: a status request never reaches Python.
//!
//! A process counts its own requests ([`Metrics`], an [`Observer`] of the server). Under the
//! supervisor (`--workers`), each worker sends its counters to the supervisor once a second
//! on its control channel; the supervisor adds them up with its own facts (workers alive and
//! ready, restarts, RSS) and writes the result to a file whose path the workers get in
//! `PYFCGI_STATUS_FILE`, so any worker can answer the status path for all of them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Serializer as _;
use pyfcgi_proto::Params;
use pyfcgi_server::observe::{Finished, Observer};
use pyfcgi_server::{Handler, Request, ResponseWriter};
use serde_json::{Value, json};

/// The environment variable naming the supervisor's aggregate status file.
pub const STATUS_FILE_ENV: &str = "PYFCGI_STATUS_FILE";

/// Latencies are recorded in microseconds, up to an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Produces the current status document (this process's, or the supervisor's aggregate).
pub type Source = Arc<dyn Fn() -> Value + Send + Sync>;

/// This process's request counters.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: AtomicU64,
    in_flight: AtomicI64,
    bytes: AtomicU64,
    /// Responses by class: index 0 none/other, 1..=5 for 1xx..5xx.
    classes: [AtomicU64; 6],
    latency: Mutex<Histogram<u64>>,
    /// The exact sum of the latencies, in microseconds (the histogram's is approximate).
    latency_sum_us: AtomicU64,
    /// `--status-path`: requests for it are not counted (a scraper would count itself).
    status_path: OnceLock<String>,
}

impl Metrics {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            bytes: AtomicU64::new(0),
            classes: Default::default(),
            latency: Mutex::new(new_histogram()),
            latency_sum_us: AtomicU64::new(0),
            status_path: OnceLock::new(),
        }
    }

    /// Requests for `path` (the status path) are not counted: they are answered by pyfcgi
    /// itself, and a scraper polling every few seconds would otherwise make up the traffic
    /// and the latency it reports.
    pub fn exclude_path(&self, path: &str) {
        let _ = self.status_path.set(path.to_owned());
    }

    fn excluded(&self, path: &str) -> bool {
        self.status_path.get().is_some_and(|p| p == path)
    }

    /// This process's counters as JSON (`latency_hist`: the histogram, V2-serialized, hex).
    pub fn snapshot(&self) -> Value {
        let hist = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut ser = Vec::new();
        let _ = hdrhistogram::serialization::V2Serializer::new().serialize(&hist, &mut ser);
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed).max(0),
            "queued": queued(),
            "bytes_out": self.bytes.load(Ordering::Relaxed),
            "responses": classes_json(&self.classes.each_ref().map(|c| c.load(Ordering::Relaxed))),
            "latency_hist": hex(&ser),
            "latency_sum_us": self.latency_sum_us.load(Ordering::Relaxed),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            // CPU time and descriptors of this process (the supervisor labels them with the
            // worker's slot); absent where /proc is not.
            "process": crate::process::own_facts(),
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn classes_json(c: &[u64; 6]) -> Value {
    json!({"1xx": c[1], "2xx": c[2], "3xx": c[3], "4xx": c[4], "5xx": c[5], "other": c[0]})
}

impl Observer for Metrics {
    fn started(&self, _seq: u64, params: &Params) {
        if self.status_path.get().is_some() && self.excluded(&request_path(params)) {
            return;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, done: &Finished) {
        // `uri` is REQUEST_URI, or SCRIPT_NAME + PATH_INFO (+ ?query): the path
        // `request_path` saw when the request started.
        if self.excluded(done.uri.split('?').next().unwrap_or_default()) {
            return;
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(done.bytes, Ordering::Relaxed);
        let class = match done.status {
            100..=599 => usize::from(done.status / 100),
            _ => 0,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(done.duration.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let _ = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(us.clamp(1, MAX_LATENCY_US));
    }
}

/// Where the queue depth comes from (the Python worker pool's queue, when there is one).
static QUEUE_DEPTH: OnceLock<fn() -> usize> = OnceLock::new();

/// Tells the metrics how to read the number of requests waiting for a free worker thread.
pub fn set_queue_depth(f: fn() -> usize) {
    let _ = QUEUE_DEPTH.set(f);
}

/// Requests waiting for a free worker thread in this process.
fn queued() -> u64 {
    QUEUE_DEPTH
        .get()
        .map_or(0, |f| u64::try_from(f()).unwrap_or(u64::MAX))
}

static READY: AtomicBool = AtomicBool::new(false);

/// The app is imported and requests are being accepted: the status says ready from now on.
pub fn set_ready() {
    READY.store(true, Ordering::Relaxed);
}

/// Whether [`set_ready`] was called.
pub fn is_ready() -> bool {
    READY.load(Ordering::Relaxed)
}

/// This process's metrics.
pub fn global() -> &'static Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new()))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One worker as the supervisor knows it.
pub struct WorkerView {
    pub id: u64,
    /// Its slot, 0..N-1: a replacement takes the slot of the worker it replaces, so the
    /// per-worker metrics keep their series across recycling.
    pub slot: usize,
    pub pid: u32,
    pub ready: bool,
    /// Asked to stop (replaced, over a limit, shutting down): finishing its requests.
    pub stopping: bool,
    pub rss_bytes: Option<u64>,
    pub uptime_s: f64,
    /// The worker's last stats line (its [`Metrics::snapshot`]).
    pub stats: Option<Value>,
}

/// What the supervisor remembers of one worker slot beyond its current worker.
#[derive(Debug, Clone, Default)]
pub struct SlotHistory {
    /// Workers started in this slot after the first.
    pub restarts: u64,
    /// Requests served by the slot's workers that have exited.
    pub departed_requests: u64,
    /// CPU seconds of the slot's workers that have exited (their last stats line).
    pub departed_cpu_seconds: f64,
}

impl SlotHistory {
    /// Keeps the counters of a worker of this slot that has exited (`stats`: its last
    /// stats line, [`Metrics::snapshot`]).
    pub fn departed(&mut self, stats: &Value) {
        self.departed_requests += stats.get("requests").and_then(Value::as_u64).unwrap_or(0);
        self.departed_cpu_seconds += cpu_seconds(stats).unwrap_or(0.0);
    }
}

/// A worker's CPU seconds from its stats line.
fn cpu_seconds(stats: &Value) -> Option<f64> {
    stats.get("process")?.get("cpu_seconds_total")?.as_f64()
}

/// A worker's open descriptors from its stats line.
fn open_fds(stats: &Value) -> Option<u64> {
    stats.get("process")?.get("open_fds")?.as_u64()
}

/// Counters added up over several workers' stats lines.
#[derive(Clone)]
pub struct Totals {
    requests: u64,
    in_flight: u64,
    queued: u64,
    bytes: u64,
    classes: [u64; 6],
    hist: Histogram<u64>,
    sum_us: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            requests: 0,
            in_flight: 0,
            queued: 0,
            bytes: 0,
            classes: [0; 6],
            hist: new_histogram(),
            sum_us: 0,
        }
    }
}

impl Totals {
    /// Adds one worker's stats line ([`Metrics::snapshot`]). `live`: the worker is running, so
    /// its gauges (in flight, queued) count too; a departed worker leaves only its counters.
    pub fn add(&mut self, stats: &Value, live: bool) {
        let get = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.requests += get("requests");
        self.bytes += get("bytes_out");
        self.sum_us = self.sum_us.saturating_add(get("latency_sum_us"));
        if live {
            self.in_flight += get("in_flight");
            self.queued += get("queued");
        }
        if let Some(r) = stats.get("responses") {
            for (i, k) in CLASS_KEYS.iter().enumerate() {
                self.classes[i] += r.get(k).and_then(Value::as_u64).unwrap_or(0);
            }
        }
        if let Some(h) = histogram_of(stats) {
            let _ = self.hist.add(&h);
        }
    }
}

/// The latency histogram of a stats line.
fn histogram_of(stats: &Value) -> Option<Histogram<u64>> {
    let bytes = stats
        .get("latency_hist")
        .and_then(Value::as_str)
        .and_then(unhex)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize::<u64, _>(&mut bytes.as_slice())
        .ok()
}

/// The response classes in [`Metrics::classes`] order.
const CLASS_KEYS: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The upper bounds (`le`, seconds) of the request-duration histogram's buckets: from half a
/// millisecond (a cached page) to a minute (a request past any sane proxy timeout), roughly
/// 1-2.5-5 per decade like the Prometheus client defaults. Fixed, so the buckets of every
/// process and host add up.
pub const DURATION_BUCKETS_S: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The cumulative count of latencies at or under each of [`DURATION_BUCKETS_S`].
fn cumulative_buckets(hist: &Histogram<u64>) -> [u64; DURATION_BUCKETS_S.len()] {
    let mut out = [0; DURATION_BUCKETS_S.len()];
    for v in hist.iter_recorded() {
        // A recorded value stands for a small range (3 significant digits); it is counted
        // from the range's lowest value, so a latency of exactly `le` counts under `le`.
        let s = hist.lowest_equivalent(v.value_iterated_to()) as f64 / 1e6;
        for (i, le) in DURATION_BUCKETS_S.iter().enumerate() {
            if s <= *le {
                out[i] += v.count_at_value();
            }
        }
    }
    out
}

/// p50, p90, p99 of a latency histogram, in milliseconds.
fn percentiles_ms(hist: &Histogram<u64>) -> Value {
    let ms = |q: f64| round3(hist.value_at_quantile(q) as f64 / 1000.0);
    json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99)})
}

/// What `pyfcgi_build_info` reports.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// pyfcgi's version.
    pub version: String,
    /// Its git revision (`abc1234`, `abc1234-dirty`, `unknown`).
    pub revision: String,
    /// The CPython version it runs (or was built for); `none` without Python.
    pub python: String,
}

static BUILD: OnceLock<BuildInfo> = OnceLock::new();

/// Sets what the status document says about the build (once, at startup).
pub fn set_build_info(info: BuildInfo) {
    let _ = BUILD.set(info);
}

fn build_json() -> Value {
    match BUILD.get() {
        Some(b) => json!({"version": b.version, "revision": b.revision, "python": b.python}),
        None => {
            json!({"version": env!("CARGO_PKG_VERSION"), "revision": "unknown", "python": "unknown"})
        }
    }
}

/// The status document: totals over `workers` and the counters of `departed` ones (so the
/// totals never go down when a worker is replaced), their list, one entry per worker slot
/// (with `slots`, the supervisor's memory of each), and the facts of this process.
pub fn status(
    workers: &[WorkerView],
    departed: &Totals,
    slots: &[SlotHistory],
    restarts: u64,
    uptime_s: f64,
    supervised: bool,
) -> Value {
    let mut t = departed.clone();
    let mut list = Vec::new();
    let n_slots = workers
        .iter()
        .map(|w| w.slot + 1)
        .max()
        .unwrap_or(0)
        .max(slots.len());
    let mut by_slot: Vec<Value> = (0..n_slots)
        .map(|i| {
            let h = slots.get(i).cloned().unwrap_or_default();
            json!({
                "slot": i,
                "workers": 0,
                "pid": null,
                "ready": false,
                "requests": h.departed_requests,
                "in_flight": 0,
                "queued": 0,
                "rss_bytes": null,
                "cpu_seconds_total": h.departed_cpu_seconds,
                "open_fds": null,
                "restarts": h.restarts,
            })
        })
        .collect();
    for w in workers {
        let get = |k: &str| {
            w.stats
                .as_ref()
                .and_then(|s| s.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        if let Some(s) = &w.stats {
            t.add(s, true);
        }
        let hist = w.stats.as_ref().and_then(histogram_of);
        list.push(json!({
            "id": w.id,
            "slot": w.slot,
            "pid": w.pid,
            "ready": w.ready,
            "state": if w.stopping {
                "stopping"
            } else if w.ready {
                "ready"
            } else {
                "starting"
            },
            "rss_mib": w.rss_bytes.map(|b| b / (1024 * 1024)),
            "rss_bytes": w.rss_bytes,
            "uptime_s": round3(w.uptime_s),
            "requests": get("requests"),
            "in_flight": get("in_flight"),
            "queued": get("queued"),
            "cpu_seconds": w.stats.as_ref().and_then(cpu_seconds),
            "open_fds": w.stats.as_ref().and_then(open_fds),
            // null until the worker has served a request.
            "latency_ms": hist
                .as_ref()
                .filter(|h| !h.is_empty())
                .map_or(Value::Null, percentiles_ms),
        }));
        let slot = &mut by_slot[w.slot];
        let add = |slot: &mut Value, k: &str, v: u64| {
            slot[k] = json!(slot[k].as_u64().unwrap_or(0) + v);
        };
        add(slot, "workers", 1);
        add(slot, "requests", get("requests"));
        add(slot, "in_flight", get("in_flight"));
        add(slot, "queued", get("queued"));
        if let Some(b) = w.rss_bytes {
            add(slot, "rss_bytes", b);
        }
        if let Some(stats) = &w.stats {
            if let Some(cpu) = cpu_seconds(stats) {
                slot["cpu_seconds_total"] =
                    json!(slot["cpu_seconds_total"].as_f64().unwrap_or(0.0) + cpu);
            }
            if let Some(n) = open_fds(stats) {
                add(slot, "open_fds", n);
            }
        }
        // The newest worker of the slot (the replacement, while a rolling restart overlaps).
        slot["pid"] = json!(w.pid);
        slot["ready"] = json!(slot["ready"].as_bool().unwrap_or(false) || w.ready);
    }
    let hist = &t.hist;
    let ready = workers.iter().any(|w| w.ready);
    let mut latency = percentiles_ms(hist);
    latency["count"] = json!(hist.len());
    latency["max"] = json!(round3(hist.max() as f64 / 1000.0));
    latency["mean"] = json!(round3(hist.mean() / 1000.0));
    let buckets: Vec<Value> = DURATION_BUCKETS_S
        .iter()
        .zip(cumulative_buckets(hist))
        .map(|(le, count)| json!({"le": le, "count": count}))
        .collect();
    json!({
        "ready": ready,
        "supervised": supervised,
        "pid": std::process::id(),
        "uptime_s": round3(uptime_s),
        "workers_alive": workers.len(),
        "workers_ready": workers.iter().filter(|w| w.ready).count(),
        "restarts": restarts,
        "requests": t.requests,
        "in_flight": t.in_flight,
        "queue_depth": t.queued,
        "bytes_out": t.bytes,
        "responses": classes_json(&t.classes),
        "latency_ms": latency,
        "request_duration_seconds": {
            "buckets": buckets,
            "sum": t.sum_us as f64 / 1e6,
            "count": hist.len(),
        },
        "build": build_json(),
        "process": crate::process::own_facts(),
        "slots": by_slot,
        "workers": list,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The status of this process alone (no supervisor).
fn own_status() -> Value {
    let m = global();
    let view = WorkerView {
        id: 0,
        slot: 0,
        pid: std::process::id(),
        ready: is_ready(),
        stopping: false,
        rss_bytes: crate::process::rss_bytes(std::process::id()),
        uptime_s: m.started.elapsed().as_secs_f64(),
        stats: Some(m.snapshot()),
    };
    status(
        &[view],
        &Totals::default(),
        &[],
        0,
        m.started.elapsed().as_secs_f64(),
        false,
    )
}

/// A process's resident set size in MiB (Linux `/proc`; `None` elsewhere).
pub fn rss_mib(pid: u32) -> Option<u64> {
    crate::process::rss_bytes(pid).map(|b| b / (1024 * 1024))
}

/// The path a request asks for: `REQUEST_URI` without its query, else `SCRIPT_NAME` +
/// `PATH_INFO`.
fn request_path(params: &Params) -> String {
    match params.get_str("REQUEST_URI").filter(|u| !u.is_empty()) {
        Some(uri) => uri.split('?').next().unwrap_or_default().to_owned(),
        None => format!(
            "{}{}",
            params.get_str("SCRIPT_NAME").unwrap_or_default(),
            params.get_str("PATH_INFO").unwrap_or_default()
        ),
    }
}

/// `--status-path`: answers that path itself and hands everything else to `inner`.
pub struct StatusHandler<H> {
    inner: H,
    path: String,
}

impl<H> StatusHandler<H> {
    pub fn new(inner: H, path: String) -> Self {
        Self { inner, path }
    }

    fn is_status(&self, params: &Params) -> bool {
        request_path(params) == self.path
    }
}

/// The status document: the supervisor's aggregate when supervised, else this process's.
fn current_status() -> Value {
    if let Some(file) = std::env::var_os(STATUS_FILE_ENV)
        && let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        return v;
    }
    own_status()
}

/// Whether a status request asks for the Prometheus text format (`?format=prometheus`, or
/// an `Accept` of text/plain or OpenMetrics) rather than JSON.
pub fn wants_prometheus(query: Option<&str>, accept: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv == "format=prometheus"))
        || accept.is_some_and(|a| a.contains("text/plain") || a.contains("openmetrics"))
}

/// The status document as a response: (ready, content type, body).
pub fn render(doc: &Value, prometheus: bool) -> (bool, &'static str, String) {
    let ready = doc.get("ready").and_then(Value::as_bool).unwrap_or(false);
    if prometheus {
        (
            ready,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::exposition::prometheus(doc),
        )
    } else {
        (ready, "application/json", format!("{doc:#}\n"))
    }
}

/// `--status-bind` in a process without a supervisor: this process's status.
pub fn own_source() -> Source {
    Arc::new(current_status)
}

fn status_response(params: &Params) -> Bytes {
    let prometheus = wants_prometheus(
        params.get_str("QUERY_STRING"),
        params.get_str("HTTP_ACCEPT"),
    );
    let (ready, ctype, body) = render(&current_status(), prometheus);
    let status = if ready {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    Bytes::from(format!(
        "Status: {status}\r\nContent-Type: {ctype}\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

impl<H: Handler> Handler for StatusHandler<H> {
    async fn handle(&self, mut request: Request, mut response: ResponseWriter) {
        if !self.is_status(&request.params) {
            return self.inner.handle(request, response).await;
        }
        while let Ok(Some(_)) = request.body.chunk().await {}
        if response
            .write(status_response(&request.params))
            .await
            .is_ok()
        {
            let _ = response.end(0).await;
        }
    }

    fn try_handle_now(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> Result<(), (Request, ResponseWriter)> {
        if self.is_status(&request.params) {
            return Err((request, response));
        }
        self.inner.try_handle_now(request, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::prometheus;
    use std::time::Duration;

    #[test]
    fn requests_for_the_status_path_are_not_counted() {
        let m = Metrics::new();
        m.exclude_path("/st");
        for uri in ["/st", "/st?format=prometheus", "/app"] {
            let params = Params::from_pairs([("REQUEST_URI", uri)]).unwrap();
            m.started(1, &params);
            m.finished(&Finished {
                seq: 1,
                method: "GET".into(),
                uri: uri.into(),
                remote: String::new(),
                status: 200,
                bytes: 10,
                duration: Duration::from_millis(1),
                app_status: 0,
                ..Finished::default()
            });
        }
        let snap = m.snapshot();
        assert_eq!(snap["requests"], 1, "{snap}");
        assert_eq!(snap["in_flight"], 0, "{snap}");
    }

    #[test]
    fn totals_add_up_across_workers_and_render_as_prometheus() {
        let m = Metrics::new();
        for (status, ms) in [(200, 2), (200, 4), (500, 100)] {
            m.started(1, &Params::default());
            m.finished(&Finished {
                seq: 1,
                method: "GET".into(),
                uri: "/".into(),
                remote: String::new(),
                status,
                bytes: 10,
                duration: Duration::from_millis(ms),
                app_status: 0,
                ..Finished::default()
            });
        }
        let w = |id, slot, ready| WorkerView {
            id,
            slot,
            pid: 100 + u32::try_from(id).unwrap(),
            ready,
            stopping: false,
            rss_bytes: Some(30 << 20),
            uptime_s: 1.0,
            stats: Some(m.snapshot()),
        };
        let mut gone = Totals::default();
        gone.add(&m.snapshot(), false);
        let history = [
            SlotHistory::default(),
            SlotHistory {
                restarts: 3,
                departed_requests: 7,
                departed_cpu_seconds: 1.5,
            },
        ];
        let s = status(
            &[w(1, 0, true), w(2, 1, false)],
            &Totals::default(),
            &history,
            3,
            5.0,
            true,
        );
        assert_eq!(s["requests"], 6);
        assert_eq!(s["responses"]["2xx"], 4);
        assert_eq!(s["responses"]["5xx"], 2);
        assert_eq!(s["workers_ready"], 1);
        assert_eq!(s["latency_ms"]["count"], 6);
        assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= 99.0);
        assert_eq!(s["workers"][1]["slot"], 1);
        assert!(s["workers"][1]["latency_ms"]["p99"].as_f64().unwrap() >= 99.0);
        assert_eq!(s["slots"][1]["requests"], 3 + 7);
        // CPU seconds: the departed workers' and the live one's own (this process's here).
        #[cfg(target_os = "linux")]
        {
            let cpu = s["slots"][1]["cpu_seconds_total"].as_f64().unwrap();
            assert!(cpu >= 1.5, "{s}");
            assert!(s["slots"][0]["open_fds"].as_u64().unwrap() > 0, "{s}");
            assert!(s["workers"][0]["cpu_seconds"].as_f64().is_some(), "{s}");
            let mut h = SlotHistory::default();
            h.departed(&m.snapshot());
            assert_eq!(h.departed_requests, 3);
            assert!(h.departed_cpu_seconds >= 0.0 && cpu_seconds(&m.snapshot()).is_some());
        }
        let p = prometheus(&s);
        assert!(p.contains("pyfcgi_requests_total{class=\"2xx\"} 4"), "{p}");
        assert!(
            p.contains("pyfcgi_worker_restarts_total{slot=\"1\"} 3"),
            "{p}"
        );
        assert!(
            p.contains("pyfcgi_worker_requests_total{slot=\"1\"} 10"),
            "{p}"
        );
        assert!(p.contains("pyfcgi_worker_ready{slot=\"0\"} 1"), "{p}");
        #[cfg(target_os = "linux")]
        {
            assert!(
                p.contains("pyfcgi_worker_cpu_seconds_total{slot=\"1\"} "),
                "{p}"
            );
            assert!(p.contains("pyfcgi_worker_open_fds{slot=\"0\"} "), "{p}");
        }
        assert!(
            p.contains("pyfcgi_worker_resident_memory_bytes{slot=\"0\"} 31457280"),
            "{p}"
        );
        assert!(p.contains("pyfcgi_request_duration_seconds_count 6"), "{p}");
        // 2 ms and 4 ms twice each, 100 ms twice: cumulative buckets, the sum exact.
        for (le, n) in [
            ("0.001", 0),
            ("0.0025", 2),
            ("0.005", 4),
            ("0.1", 6),
            ("+Inf", 6),
        ] {
            let line = format!("pyfcgi_request_duration_seconds_bucket{{le=\"{le}\"}} {n}\n");
            assert!(p.contains(&line), "{line}{p}");
        }
        assert!(
            p.contains("pyfcgi_request_duration_seconds_sum 0.212\n"),
            "{p}"
        );
        assert!(p.contains("pyfcgi_build_info{version=\""), "{p}");
        // A departed worker's counters stay in the totals; its gauges do not.
        let s = status(&[w(1, 0, true)], &gone, &history, 4, 6.0, true);
        assert_eq!(s["requests"], 6);
        assert_eq!(s["latency_ms"]["count"], 6);
        assert_eq!(s["workers_alive"], 1);
    }
}
