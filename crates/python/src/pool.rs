//! The worker pool: N Python threads, each attached to the interpreter once for its whole
//! life, waiting for the next request with the GIL released. The I/O threads only put
//! requests on the [`JobQueue`] and never touch Python.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;

use pyfcgi_proto::Params;
use pyfcgi_server::{Request, ResponseWriter};
use pyo3::prelude::*;
use tracing::{debug, error};

use crate::wsgi::{self, WsgiConfig, response::error_page};

/// A request waiting for a worker.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) response: ResponseWriter,
}

/// Requests waiting for a worker. Adding one never waits (the connection limit bounds the
/// queue) and wakes a worker only when one is asleep, so a busy worker takes request after
/// request without a wake-up or a context switch in between.
#[derive(Default)]
pub(crate) struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    sleeping: usize,
    closed: bool,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job; hands it back when the pool has stopped.
    #[allow(clippy::result_large_err)] // moved straight back to the caller, never stored
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        let mut st = self.lock();
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        let wake = st.sleeping > 0;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job if one is queued.
    fn try_pop(&self) -> Option<Job> {
        self.lock().jobs.pop_front()
    }

    /// The next job, waiting for one; `None` once closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st.sleeping += 1;
            st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.sleeping -= 1;
        }
    }

    /// No more jobs: workers finish what is queued, then exit.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Loads the application on the first request, from what that request says (under IIS the
/// application's folder is only known from `APPL_PHYSICAL_PATH`). Runs on a worker with the
/// GIL held; the result replaces the deferred state for every later request.
pub type DeferredLoader = Box<dyn Fn(Python<'_>, &Params) -> AppState + Send + Sync>;

/// What the workers run.
pub enum AppState {
    /// The WSGI callable.
    Loaded(Py<PyAny>),
    /// Import failed: every request gets a 500 saying so; `detail` is the diagnosis.
    Failed {
        /// The full diagnosis (traceback, interpreter facts).
        detail: String,
    },
    /// Not loaded yet: the first request's worker runs the loader.
    Deferred(DeferredLoader),
}

/// The running pool; dropping it (after the handler) lets the threads finish.
pub struct WorkerPool {
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers taking jobs from `rx`.
    pub(crate) fn start(
        n: usize,
        rx: &Arc<JobQueue>,
        app: &Arc<Mutex<AppState>>,
        cfg: &Arc<WsgiConfig>,
    ) -> std::io::Result<Self> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (rx, app, cfg) = (Arc::clone(rx), Arc::clone(app), Arc::clone(cfg));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pyfcgi-py-{i}"))
                    .spawn(move || worker(&rx, &app, &cfg))?,
            );
        }
        Ok(Self { threads })
    }

    /// Waits for every worker to finish its current request and exit (call after the server
    /// stopped, so the job queue is closed).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                error!("a Python worker thread panicked");
            }
        }
    }
}

/// What a request runs: the app, or the load failure.
enum Resolved {
    App(Py<PyAny>),
    Failed(String),
}

/// The app for this request, running a deferred loader first if needed. The slot's lock is
/// taken without the GIL (another worker may hold the GIL while waiting for it).
fn resolve(py: Python<'_>, slot: &Mutex<AppState>, params: &Params) -> Resolved {
    let mut guard = loop {
        match slot.try_lock() {
            Ok(g) => break g,
            Err(TryLockError::Poisoned(p)) => break p.into_inner(),
            // Wait for the holder (a worker running the loader) without the GIL, then retry.
            Err(TryLockError::WouldBlock) => py.detach(|| drop(slot.lock())),
        }
    };
    if let AppState::Deferred(loader) = &*guard {
        let loaded = loader(py, params);
        *guard = loaded;
    }
    match &*guard {
        AppState::Loaded(app) => Resolved::App(app.clone_ref(py)),
        AppState::Failed { detail } => Resolved::Failed(detail.clone()),
        AppState::Deferred(_) => {
            Resolved::Failed("the application loader did not load anything".into())
        }
    }
}

fn worker(rx: &JobQueue, app: &Mutex<AppState>, cfg: &WsgiConfig) {
    Python::attach(|py| {
        loop {
            // Wait without the GIL so other workers (and Python threads) run meanwhile.
            // A queued job is taken with the GIL kept; waiting happens without it.
            let job = rx.try_pop().or_else(|| py.detach(|| rx.pop()));
            let Some(Job { request, response }) = job else {
                break;
            };
            match resolve(py, app, &request.params) {
                Resolved::App(app) => {
                    // A bug in pyfcgi must cost one request, not the worker thread: the
                    // response writer's Drop still ends the request for the web server.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        wsgi::run_request(py, &app, request, response, cfg);
                    }));
                    if ran.is_err() {
                        error!(
                            "internal error while running a request (a pyfcgi bug; please report it); the worker continues"
                        );
                    }
                }
                Resolved::Failed(detail) => {
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
