//! The status document in the Prometheus text exposition format (0.0.4), following the
//! naming rules: base units in the names (`_seconds`, `_bytes`), `_total` on counters, one
//! label set per series. Per-worker series are labelled by worker slot (0..N-1, kept by a
//! replacement), never by pid, so recycling does not create new series.

use std::fmt::Write as _;

use serde_json::Value;

use crate::metrics::DURATION_BUCKETS_S;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out, name }
    }

    /// A sample: `suffix` after the family name (`_bucket`, `_sum`), `labels` as
    /// `(name, value)` pairs.
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], v: f64) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(v));
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value (`+Inf`, `-Inf` and `NaN` spelt as the format spells them).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

/// A single unlabelled series.
fn single(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    Family::new(out, name, kind, help).sample("", &[], v);
}

/// The status document ([`crate::status`]) in the Prometheus text exposition format.
pub fn prometheus(doc: &Value) -> String {
    let num = |k: &str| doc.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut text = String::new();
    let out = &mut text;
    single(
        out,
        "pyfcgi_up",
        "gauge",
        "1 when at least one worker is ready.",
        f64::from(u8::from(
            doc.get("ready").and_then(Value::as_bool).unwrap_or(false),
        )),
    );
    if let Some(b) = doc.get("build") {
        let get = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("unknown");
        Family::new(
            out,
            "pyfcgi_build_info",
            "gauge",
            "Always 1; the labels say which pyfcgi and which CPython.",
        )
        .sample(
            "",
            &[
                ("version", get("version")),
                ("revision", get("revision")),
                ("python", get("python")),
            ],
            1.0,
        );
    }
    single(
        out,
        "pyfcgi_workers_alive",
        "gauge",
        "Worker processes running.",
        num("workers_alive"),
    );
    single(
        out,
        "pyfcgi_workers_ready",
        "gauge",
        "Workers that have imported the app.",
        num("workers_ready"),
    );
    single(
        out,
        "pyfcgi_requests_in_flight",
        "gauge",
        "Requests being served.",
        num("in_flight"),
    );
    single(
        out,
        "pyfcgi_queue_depth",
        "gauge",
        "Requests waiting for a free Python thread.",
        num("queue_depth"),
    );
    single(
        out,
        "pyfcgi_response_bytes_total",
        "counter",
        "Response bytes sent, heads included.",
        num("bytes_out"),
    );
    let mut requests = Family::new(
        out,
        "pyfcgi_requests_total",
        "counter",
        "Requests served, by response class (the status path's own requests are not counted).",
    );
    for c in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"] {
        let v = doc
            .get("responses")
            .and_then(|r| r.get(c))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        requests.sample("", &[("class", c)], v);
    }
    duration_histogram(out, doc.get("request_duration_seconds"));
    slots(out, doc.get("slots").and_then(Value::as_array));
    if let Some(h) = doc.get("handover") {
        handover(out, h);
    }
    process(out, doc.get("process"));
    text
}

/// Kept connections handed over by retiring workers (supervised only: a single process has
/// nobody to hand them to).
fn handover(out: &mut String, h: &Value) {
    let num = |k: &str| h.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    single(
        out,
        "pyfcgi_connections_handed_over_total",
        "counter",
        "Kept connections retiring workers handed over to the supervisor for other workers.",
        num("connections"),
    );
    single(
        out,
        "pyfcgi_connections_handover_closed_total",
        "counter",
        "Handed-over connections closed because no worker took them (stopping, or none ready within --graceful-timeout).",
        num("closed"),
    );
    single(
        out,
        "pyfcgi_connections_handover_held",
        "gauge",
        "Handed-over connections waiting for a worker to be ready.",
        num("held"),
    );
}

fn duration_histogram(out: &mut String, h: Option<&Value>) {
    let count = h
        .and_then(|h| h.get("count"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut f = Family::new(
        out,
        "pyfcgi_request_duration_seconds",
        "histogram",
        "Time from the request's params to the end of its response.",
    );
    let buckets = h
        .and_then(|h| h.get("buckets"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for le in DURATION_BUCKETS_S {
        let v = buckets
            .iter()
            .find(|b| b.get("le").and_then(Value::as_f64) == Some(le))
            .and_then(|b| b.get("count"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        f.sample("_bucket", &[("le", &number(le))], v);
    }
    f.sample("_bucket", &[("le", "+Inf")], count);
    let sum = h
        .and_then(|h| h.get("sum"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    f.sample("_sum", &[], sum);
    f.sample("_count", &[], count);
}

/// The per-slot series: one of each per worker slot.
fn slots(out: &mut String, slots: Option<&Vec<Value>>) {
    let slots = slots.map(Vec::as_slice).unwrap_or_default();
    let families: [(&str, &str, &str, &str); 8] = [
        (
            "pyfcgi_worker_ready",
            "gauge",
            "1 when the slot's worker has imported the app and takes requests.",
            "ready",
        ),
        (
            "pyfcgi_worker_requests_total",
            "counter",
            "Requests served by the slot's workers, the replaced ones included.",
            "requests",
        ),
        (
            "pyfcgi_worker_requests_in_flight",
            "gauge",
            "Requests being served by the slot's worker.",
            "in_flight",
        ),
        (
            "pyfcgi_worker_queue_depth",
            "gauge",
            "Requests waiting for a free Python thread in the slot's worker.",
            "queued",
        ),
        (
            "pyfcgi_worker_resident_memory_bytes",
            "gauge",
            "Resident memory of the slot's worker (of both during a rolling restart's overlap).",
            "rss_bytes",
        ),
        (
            "pyfcgi_worker_cpu_seconds_total",
            "counter",
            "User and system CPU time of the slot's workers, the replaced ones included.",
            "cpu_seconds_total",
        ),
        (
            "pyfcgi_worker_open_fds",
            "gauge",
            "Open file descriptors of the slot's worker (of both during a rolling restart's overlap).",
            "open_fds",
        ),
        (
            "pyfcgi_worker_restarts_total",
            "counter",
            "Workers started in the slot to replace another (sum() for all of them).",
            "restarts",
        ),
    ];
    for (name, kind, help, key) in families {
        let mut f = Family::new(out, name, kind, help);
        for slot in slots {
            let Some(i) = slot.get("slot").and_then(Value::as_u64) else {
                continue;
            };
            let v = match slot.get(key) {
                Some(Value::Bool(b)) => f64::from(u8::from(*b)),
                Some(v) => match v.as_f64() {
                    Some(x) => x,
                    // No RSS known (not Linux, or no worker in the slot right now).
                    None => continue,
                },
                None => continue,
            };
            f.sample("", &[("slot", &i.to_string())], v);
        }
    }
}

/// The `process_*` metrics of the Prometheus client libraries, for the process that wrote
/// the document (the supervisor under `--workers`); those it could not read are left out.
fn process(out: &mut String, p: Option<&Value>) {
    let families = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            "cpu_seconds_total",
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            "open_fds",
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            "max_fds",
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            "resident_memory_bytes",
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            "virtual_memory_bytes",
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            "start_time_seconds",
        ),
    ];
    for (name, kind, help, key) in families {
        if let Some(v) = p.and_then(|p| p.get(key)).and_then(Value::as_f64) {
            single(out, name, kind, help, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_special_numbers_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.0025), "0.0025");
        assert_eq!(number(1.0), "1");
    }

    #[test]
    fn handover_counters_are_written_only_when_supervised() {
        let single = prometheus(&serde_json::json!({"ready": true}));
        assert!(!single.contains("handed_over"), "{single}");
        let doc = serde_json::json!({
            "ready": true,
            "handover": {"connections": 7, "closed": 1, "held": 2},
        });
        let text = prometheus(&doc);
        assert!(
            text.contains("# TYPE pyfcgi_connections_handed_over_total counter\npyfcgi_connections_handed_over_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\npyfcgi_connections_handover_closed_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pyfcgi_connections_handover_held gauge\npyfcgi_connections_handover_held 2\n"),
            "{text}"
        );
    }
}
