//! Logging setup. pyfcgi never writes logs to stdout: under a web server stdout may be the
//! FastCGI socket's neighbour or (under IIS) an invalid handle.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("PYFCGI_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr at `level` (overridden by `PYFCGI_LOG`).
pub fn init_stderr(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logs to the file at `path` (appending; created if missing) at `level`.
pub fn init_file(path: &Path, level: &str) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}
