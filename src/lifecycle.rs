//! Process lifecycle helpers for IIS-style hosting: exit after N requests, and restart when
//! the application's files change (wfastcgi's WSGI_RESTART_FILE_REGEX), always draining the
//! in-flight request first. Under IIS an exiting process is simply replaced by a new one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyfcgi_server::{Handler, Request, ResponseWriter};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use pyfcgi_supervisor::watch::RestartWatcher;

/// wfastcgi's default WSGI_RESTART_FILE_REGEX.
pub use pyfcgi_iis::webconfig::DEFAULT_RESTART_REGEX;

/// Counts requests and starts a graceful shutdown once `limit` have been accepted; the
/// requests in flight (the last one included) still finish.
pub struct MaxRequests<H> {
    inner: H,
    remaining: AtomicU64,
    shutdown: CancellationToken,
    limit: u64,
}

impl<H: Handler> MaxRequests<H> {
    /// Wraps `inner`; `limit` 0 means no limit.
    pub fn new(inner: H, limit: u64, shutdown: CancellationToken) -> Self {
        Self {
            inner,
            remaining: AtomicU64::new(limit),
            shutdown,
            limit,
        }
    }
}

impl<H: Handler> Handler for MaxRequests<H> {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        if self.limit > 0 && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            info!(
                limit = self.limit,
                "--max-requests reached: exiting after this request"
            );
            self.shutdown.cancel();
        }
        self.inner.handle(request, response).await;
    }
}

/// Keeps watchers started later (when the first request names the app folder).
#[derive(Default, Clone)]
pub struct WatcherSlot(Arc<Mutex<Vec<RestartWatcher>>>);

impl WatcherSlot {
    /// Starts a watcher and keeps it alive; failures are logged, not fatal.
    pub fn start(&self, root: &Path, pattern: &str, shutdown: CancellationToken) {
        match RestartWatcher::start(root, pattern, shutdown) {
            Ok(w) => self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(w),
            Err(e) => warn!("{e}; changes will not restart the process"),
        }
    }
}
