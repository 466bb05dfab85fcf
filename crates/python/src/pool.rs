//! The worker pool: N Python threads, each attached to the interpreter once for its whole
//! life, waiting for the next request with the GIL released. The I/O threads only hand
//! requests over through a bounded channel and never touch Python.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use pyfcgi_server::{Request, ResponseWriter};
use pyo3::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::wsgi::{self, WsgiConfig, response::error_page};

/// A request waiting for a worker.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) response: ResponseWriter,
}

/// What the workers run: the loaded app, or the reason it failed to load.
pub enum AppState {
    /// The WSGI callable.
    Loaded(Py<PyAny>),
    /// Import failed: every request gets a 500 saying so; `detail` is the diagnosis.
    Failed {
        /// The full diagnosis (traceback, interpreter facts).
        detail: String,
    },
}

/// The running pool; dropping it (after the handler) lets the threads finish.
pub struct WorkerPool {
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers reading from `rx`.
    pub(crate) fn start(
        n: usize,
        rx: mpsc::Receiver<Job>,
        app: &Arc<AppState>,
        cfg: &Arc<WsgiConfig>,
    ) -> std::io::Result<Self> {
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (rx, app, cfg) = (Arc::clone(&rx), Arc::clone(app), Arc::clone(cfg));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pyfcgi-py-{i}"))
                    .spawn(move || worker(&rx, &app, &cfg))?,
            );
        }
        Ok(Self { threads })
    }

    /// Waits for every worker to finish its current request and exit (call after the server
    /// stopped, so the job channel is closed).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                error!("a Python worker thread panicked");
            }
        }
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, app: &AppState, cfg: &WsgiConfig) {
    Python::attach(|py| {
        loop {
            // Wait without the GIL so other workers (and Python threads) run meanwhile.
            let job = py.detach(|| {
                rx.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .blocking_recv()
            });
            let Some(Job { request, response }) = job else {
                break;
            };
            match app {
                AppState::Loaded(app) => wsgi::run_request(py, app, request, response, cfg),
                AppState::Failed { detail } => {
                    let seq = wsgi::next_request_seq();
                    let page = error_page(
                        "500 Internal Server Error",
                        "Internal Server Error: the application failed to load. The server log has the details.",
                        seq,
                        cfg.detailed_errors.then_some(detail.as_str()),
                    );
                    drop(request);
                    let mut response = response;
                    let _ = py.detach(move || {
                        response.blocking_write(page)?;
                        response.blocking_end(0)
                    });
                }
            }
        }
    });
    debug!("Python worker exiting");
}
