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
        }
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
            "uptime_s": self.started.elapsed().as_secs_f64(),
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
    fn started(&self, _seq: u64, _params: &Params) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, done: &Finished) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(done.bytes, Ordering::Relaxed);
        let class = match done.status {
            100..=599 => usize::from(done.status / 100),
            _ => 0,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(done.duration.as_micros()).unwrap_or(u64::MAX);
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
    pub pid: u32,
    pub ready: bool,
    pub rss_mib: Option<u64>,
    pub uptime_s: f64,
    /// The worker's last stats line (its [`Metrics::snapshot`]).
    pub stats: Option<Value>,
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
        if live {
            self.in_flight += get("in_flight");
            self.queued += get("queued");
        }
        if let Some(r) = stats.get("responses") {
            for (i, k) in CLASS_KEYS.iter().enumerate() {
                self.classes[i] += r.get(k).and_then(Value::as_u64).unwrap_or(0);
            }
        }
        if let Some(h) = stats
            .get("latency_hist")
            .and_then(Value::as_str)
            .and_then(unhex)
            && let Ok(h) = hdrhistogram::serialization::Deserializer::new()
                .deserialize::<u64, _>(&mut h.as_slice())
        {
            let _ = self.hist.add(&h);
        }
    }
}

/// The response classes in [`Metrics::classes`] order.
const CLASS_KEYS: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The status document: totals over `workers` and the counters of `departed` ones (so the
/// totals never go down when a worker is replaced), their list, and the supervisor's facts.
pub fn status(
    workers: &[WorkerView],
    departed: &Totals,
    restarts: u64,
    uptime_s: f64,
    supervised: bool,
) -> Value {
    let mut t = departed.clone();
    let mut list = Vec::new();
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
        list.push(json!({
            "id": w.id,
            "pid": w.pid,
            "ready": w.ready,
            "rss_mib": w.rss_mib,
            "uptime_s": round3(w.uptime_s),
            "requests": get("requests"),
            "in_flight": get("in_flight"),
            "queued": get("queued"),
        }));
    }
    let hist = &t.hist;
    let ms = |q: f64| round3(hist.value_at_quantile(q) as f64 / 1000.0);
    let ready = workers.iter().any(|w| w.ready);
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
        "latency_ms": {
            "count": hist.len(),
            "p50": ms(0.5),
            "p90": ms(0.9),
            "p99": ms(0.99),
            "max": round3(hist.max() as f64 / 1000.0),
            "mean": round3(hist.mean() / 1000.0),
        },
        "workers": list,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The status document in the Prometheus text exposition format (0.0.4).
pub fn prometheus(s: &Value) -> String {
    use std::fmt::Write as _;
    let n = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut out = String::new();
    let metric = |out: &mut String, name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        &mut out,
        "pyfcgi_up",
        "gauge",
        "1 when at least one worker is ready.",
        &[(
            String::new(),
            f64::from(u8::from(
                s.get("ready").and_then(Value::as_bool).unwrap_or(false),
            )),
        )],
    );
    metric(
        &mut out,
        "pyfcgi_workers_alive",
        "gauge",
        "Worker processes running.",
        &[(String::new(), n("workers_alive"))],
    );
    metric(
        &mut out,
        "pyfcgi_workers_ready",
        "gauge",
        "Workers that have imported the app.",
        &[(String::new(), n("workers_ready"))],
    );
    metric(
        &mut out,
        "pyfcgi_worker_restarts_total",
        "counter",
        "Workers started to replace others.",
        &[(String::new(), n("restarts"))],
    );
    metric(
        &mut out,
        "pyfcgi_requests_in_flight",
        "gauge",
        "Requests being served.",
        &[(String::new(), n("in_flight"))],
    );
    metric(
        &mut out,
        "pyfcgi_queue_depth",
        "gauge",
        "Requests waiting for a free Python thread.",
        &[(String::new(), n("queue_depth"))],
    );
    metric(
        &mut out,
        "pyfcgi_response_bytes_total",
        "counter",
        "Response bytes sent, heads included.",
        &[(String::new(), n("bytes_out"))],
    );
    let classes: Vec<(String, f64)> = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
        .iter()
        .map(|c| {
            let v = s
                .get("responses")
                .and_then(|r| r.get(c))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            (format!("{{class=\"{c}\"}}"), v)
        })
        .collect();
    metric(
        &mut out,
        "pyfcgi_requests_total",
        "counter",
        "Requests served, by response class.",
        &classes,
    );
    let lat = s.get("latency_ms");
    let q = |k: &str| {
        lat.and_then(|l| l.get(k))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            / 1000.0
    };
    let count = lat
        .and_then(|l| l.get("count"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let _ = writeln!(
        out,
        "# HELP pyfcgi_request_duration_seconds Time from the request's params to the end of its response.\n# TYPE pyfcgi_request_duration_seconds summary"
    );
    for (label, key) in [("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")] {
        let _ = writeln!(
            out,
            "pyfcgi_request_duration_seconds{{quantile=\"{label}\"}} {}",
            q(key)
        );
    }
    let _ = writeln!(
        out,
        "pyfcgi_request_duration_seconds_sum {}",
        q("mean") * count
    );
    let _ = writeln!(out, "pyfcgi_request_duration_seconds_count {count}");
    let rss: Vec<(String, f64)> = s
        .get("workers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| {
            let pid = w.get("pid")?.as_u64()?;
            let rss = w.get("rss_mib")?.as_f64()?;
            Some((format!("{{pid=\"{pid}\"}}"), rss * 1024.0 * 1024.0))
        })
        .collect();
    metric(
        &mut out,
        "pyfcgi_worker_resident_memory_bytes",
        "gauge",
        "Resident memory of each worker.",
        &rss,
    );
    out
}

/// The status of this process alone (no supervisor).
fn own_status() -> Value {
    let m = global();
    let view = WorkerView {
        id: 0,
        pid: std::process::id(),
        ready: is_ready(),
        rss_mib: rss_mib(std::process::id()),
        uptime_s: m.started.elapsed().as_secs_f64(),
        stats: Some(m.snapshot()),
    };
    status(
        &[view],
        &Totals::default(),
        0,
        m.started.elapsed().as_secs_f64(),
        false,
    )
}

/// A process's resident set size in MiB (Linux `/proc`; `None` elsewhere).
pub fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
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
        let path = match params.get_str("REQUEST_URI").filter(|u| !u.is_empty()) {
            Some(uri) => uri.split('?').next().unwrap_or_default().to_owned(),
            None => format!(
                "{}{}",
                params.get_str("SCRIPT_NAME").unwrap_or_default(),
                params.get_str("PATH_INFO").unwrap_or_default()
            ),
        };
        path == self.path
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
            self::prometheus(doc),
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
    use std::time::Duration;

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
            });
        }
        let w = |id, ready| WorkerView {
            id,
            pid: 100 + u32::try_from(id).unwrap(),
            ready,
            rss_mib: Some(30),
            uptime_s: 1.0,
            stats: Some(m.snapshot()),
        };
        let mut gone = Totals::default();
        gone.add(&m.snapshot(), false);
        let s = status(&[w(1, true), w(2, false)], &Totals::default(), 3, 5.0, true);
        assert_eq!(s["requests"], 6);
        assert_eq!(s["responses"]["2xx"], 4);
        assert_eq!(s["responses"]["5xx"], 2);
        assert_eq!(s["workers_ready"], 1);
        assert_eq!(s["latency_ms"]["count"], 6);
        assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= 99.0);
        let p = prometheus(&s);
        assert!(p.contains("pyfcgi_requests_total{class=\"2xx\"} 4"), "{p}");
        assert!(p.contains("pyfcgi_worker_restarts_total 3"), "{p}");
        assert!(p.contains("pyfcgi_request_duration_seconds_count 6"), "{p}");
        // A departed worker's counters stay in the totals; its gauges do not.
        let s = status(&[w(1, true)], &gone, 4, 6.0, true);
        assert_eq!(s["requests"], 6);
        assert_eq!(s["latency_ms"]["count"], 6);
        assert_eq!(s["workers_alive"], 1);
    }
}
