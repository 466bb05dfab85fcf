//! Request metrics and the status document (JSON and the Prometheus text format), served on
//! a path of the FastCGI server (`StatusHandler`) or a small plain-HTTP listener of its own
//! (`http`), and the access log. None of it touches Python.

pub mod access_log;
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod process;

pub use access_log::{
    ACCESS_FIELDS, AccessFormat, AccessFormatError, AccessLog, COMBINED_FORMAT, COMMON_FORMAT,
    DEFAULT_ACCESS_FORMAT, Observers,
};
pub use exposition::prometheus;
pub use metrics::{
    BuildInfo, DURATION_BUCKETS_S, Metrics, STATUS_FILE_ENV, SlotHistory, Source, StatusHandler,
    Totals, WorkerView, global, is_ready, own_source, render, rss_mib, set_build_info,
    set_queue_depth, set_ready, status, wants_prometheus,
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
}
