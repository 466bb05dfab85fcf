//! Process lifecycle for `pyfcgi serve`: the `--workers` supervisor and its typed control
//! channel with the workers (Unix), and the file watcher behind restart-on-change.

#[cfg(unix)]
pub mod message;
#[cfg(unix)]
mod supervise;
pub mod watch;

#[cfg(unix)]
pub use supervise::{Config, Outcome, run};

/// Why the supervisor could not run (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "workers failed to start {failures} times in a row (--crash-limit); the last one {last}. Fix the application (see the log above) and start pyfcgi again"
    )]
    CrashLoop { failures: u32, last: String },
    #[error(transparent)]
    Status(#[from] pyfcgi_status::StatusError),
}
