//! Process lifecycle helpers for IIS-style hosting: exit after N requests, and restart when
//! the application's files change (wfastcgi's WSGI_RESTART_FILE_REGEX), always draining the
//! in-flight request first. Under IIS an exiting process is simply replaced by a new one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use pyfcgi_server::{Handler, Request, ResponseWriter};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

/// Watches `root` recursively; the first change to a path matching `pattern` triggers a
/// graceful shutdown after a short debounce (editors write files in several steps).
pub struct RestartWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl RestartWatcher {
    /// Starts watching. The regex is matched against the full path of each changed file.
    pub fn start(root: &Path, pattern: &str, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let fired = Arc::new(AtomicBool::new(false));
        Self::on_change(root, pattern, move |path| {
            if fired.swap(true, Ordering::AcqRel) {
                return;
            }
            info!(path = %path.display(), "watched file changed: restarting after the in-flight request");
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                shutdown.cancel();
            });
        })
    }

    /// Calls `f` (on the watcher's thread) for every created, modified or removed file under
    /// `root` whose full path matches `pattern`.
    pub fn on_change(
        root: &Path,
        pattern: &str,
        f: impl Fn(&Path) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let regex = regex::Regex::new(pattern).with_context(|| {
            format!("invalid restart regex {pattern:?} (WSGI_RESTART_FILE_REGEX / --restart-regex)")
        })?;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if !(event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove()) {
                    return;
                }
                if let Some(path) = event
                    .paths
                    .iter()
                    .find(|p| regex.is_match(&p.to_string_lossy()))
                {
                    f(path);
                }
            })
            .context("cannot start the file watcher")?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", root.display()))?;
        info!(root = %root.display(), pattern, "watching for file changes");
        Ok(Self { _watcher: watcher })
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
            Err(e) => warn!("{e:#}; changes will not restart the process"),
        }
    }
}
