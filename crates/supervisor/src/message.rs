//! The control channel between the supervisor and its workers: a worker's stdout carries
//! typed messages, one per line, each a JSON object after a record-separator mark (so text a
//! C extension prints to stdout is told apart and just logged).

use std::io::Write;

/// Set in a worker's environment: serve as a worker (report readiness; never supervise). Its
/// value is the worker's id, the `worker=N` of the supervisor's lines about it, which the
/// worker's own log lines carry too.
pub const WORKER_ENV: &str = "PYFCGI_SUPERVISED";

/// What starts a message line: ASCII record separator, then `pyfcgi `.
const MARK: &str = "\u{1e}pyfcgi ";

/// A worker's message to its supervisor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// The app is imported and requests are being accepted.
    Ready,
    /// The worker's counters ([`pyfcgi_status::Metrics::snapshot`]).
    Stats { stats: serde_json::Value },
    /// The worker cannot start (the app failed to load): the full diagnosis, which the
    /// supervisor logs once however many workers fail the same way.
    Failed { diagnosis: String },
}

impl WorkerMessage {
    /// The message as one line (with its newline).
    pub fn encode(&self) -> String {
        // Serializing a plain enum with a JSON value cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        format!("{MARK}{json}\n")
    }

    /// A line read from a worker's stdout: the message, or `None` for any other text.
    pub fn decode(line: &str) -> Option<Self> {
        serde_json::from_str(line.strip_prefix(MARK)?).ok()
    }
}

/// True in a process the supervisor started.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// This worker's id, given by the supervisor ([`WORKER_ENV`]); `None` outside a worker.
pub fn worker_id() -> Option<u64> {
    std::env::var(WORKER_ENV).ok()?.trim().parse().ok()
}

/// In a worker: hands a startup failure's diagnosis to the supervisor to log (once for all
/// the workers that fail the same way). False when this is no worker or the supervisor
/// cannot be told: then the caller logs it.
pub fn report_failure(diagnosis: &str) -> bool {
    is_worker()
        && send(&WorkerMessage::Failed {
            diagnosis: diagnosis.to_owned(),
        })
        .is_ok()
}

/// Sends `message` to the supervisor (nothing when this process is not a worker).
pub fn send(message: &WorkerMessage) -> std::io::Result<()> {
    if !is_worker() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(message.encode().as_bytes())?;
    out.flush()
}

/// Tells the supervisor (if any) that this worker is ready to take requests.
pub fn notify_ready() {
    let _ = send(&WorkerMessage::Ready);
}

/// Sends this worker's counters to the supervisor now (also its last word before exiting,
/// so the totals keep every request it served).
pub fn push_stats() -> std::io::Result<()> {
    send(&WorkerMessage::Stats {
        stats: pyfcgi_status::global().snapshot(),
    })
}

/// Under the supervisor: sends this worker's counters every second.
pub fn spawn_stats_pusher() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if push_stats().is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_other_text_is_not_one() {
        for m in [
            WorkerMessage::Ready,
            WorkerMessage::Stats {
                stats: serde_json::json!({"requests": 3, "latency_hist": "00ff"}),
            },
            WorkerMessage::Failed {
                diagnosis: "Traceback:\n  boom\n".into(),
            },
        ] {
            let line = m.encode();
            assert!(
                line.ends_with('\n') && line.starts_with('\u{1e}'),
                "{line:?}"
            );
            assert_eq!(WorkerMessage::decode(line.trim_end()), Some(m));
        }
        assert_eq!(
            WorkerMessage::Ready.encode(),
            "\u{1e}pyfcgi {\"type\":\"ready\"}\n"
        );
        for other in [
            "",
            "hello",
            "{\"type\":\"ready\"}",
            "\u{1e}pyfcgi {\"type\":\"nope\"}",
        ] {
            assert_eq!(WorkerMessage::decode(other), None, "{other:?}");
        }
    }
}
