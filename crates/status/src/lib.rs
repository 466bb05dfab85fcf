//! Request metrics and the status document (JSON and the Prometheus text format), served on
//! a path of the FastCGI server (`StatusHandler`) or a small plain-HTTP listener of its own
//! (`http`), and the access log. None of it touches Python.

pub mod access_log;
pub mod http;
pub mod metrics;

pub use access_log::{ACCESS_FIELDS, AccessLog, DEFAULT_ACCESS_FORMAT, Observers, check_format};
pub use metrics::{
    Metrics, STATUS_FILE_ENV, Source, StatusHandler, Totals, WorkerView, global, is_ready,
    own_source, prometheus, render, rss_mib, set_queue_depth, set_ready, status, wants_prometheus,
};

use std::path::PathBuf;

/// What went wrong opening a status listener or an access log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// `--status-bind` is not an address pyfcgi can listen on.
    #[error("invalid --status-bind {0}")]
    BadAddress(String),
    /// The status listener could not be opened (or its thread started).
    #[error("cannot open --status-bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The access log's file or folder.
    #[error("{what} {}", path.display())]
    AccessLog {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An unknown `{field}` in `--access-log-format`.
    #[error("--access-log-format: unknown field {{{field}}}; the fields are {fields}")]
    AccessLogFormat { field: String, fields: String },
}
