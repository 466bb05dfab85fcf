//! Restart on file changes (wfastcgi's `WSGI_RESTART_FILE_REGEX`, `--reload`): a recursive
//! watcher of a folder that reports changed files matching a regex.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why a folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    #[error(
        "invalid restart regex {pattern:?} (WSGI_RESTART_FILE_REGEX / --restart-regex): {message}"
    )]
    Regex { pattern: String, message: String },
    #[error("cannot start the file watcher")]
    Start(#[source] notify::Error),
    #[error("cannot watch {}", root.display())]
    Watch {
        root: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Watches `root` recursively; the first change to a path matching `pattern` triggers a
/// graceful shutdown after a short debounce (editors write files in several steps).
pub struct RestartWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl RestartWatcher {
    /// Starts watching. The regex is matched against the full path of each changed file.
    pub fn start(
        root: &Path,
        pattern: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, WatchError> {
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
    ) -> Result<Self, WatchError> {
        let regex = regex::Regex::new(pattern).map_err(|e| WatchError::Regex {
            pattern: pattern.to_owned(),
            message: e.to_string(),
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
            .map_err(WatchError::Start)?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                root: root.to_owned(),
                source,
            })?;
        info!(root = %root.display(), pattern, "watching for file changes");
        Ok(Self { _watcher: watcher })
    }
}
