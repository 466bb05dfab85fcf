//! pyfcgi's embedded CPython: the WSGI and ASGI hosts.
//!
//! * [`interp`]: venv, `sys.path`, `--chdir`, Python's stdout/stderr into the log.
//! * [`app`]: application specs (`module:attr`, `file.py:attr`, wfastcgi's dotted names,
//!   factories) and loading, with a diagnosis when it fails.
//! * [`pool`]: the WSGI worker threads.
//! * [`wsgi`]: PEP 3333: environ, `wsgi.input`, `start_response`, `write`, `file_wrapper`.
//! * [`asgi`]: ASGI 3 (HTTP and lifespan) on one event-loop thread; its files mirror `wsgi`'s.
//!
//! [`PythonHandler`] (WSGI) and [`asgi::AsgiHandler`] plug into `pyfcgi-server` as a
//! [`Handler`]; [`Admission`] answers, for both, what must not reach the app.
//!
//! The binary initialises the interpreter (`Python::initialize()`); this crate never does.

// Python protocol methods (`readable`, `isatty`, ...) take `&self` whether or not they use it.
#![allow(clippy::unused_self)]

pub mod app;
pub mod asgi;
mod error;
pub mod interp;
mod log_stream;
pub mod pool;
pub mod shadow;
mod watchdog;
pub mod wsgi;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pyfcgi_server::{Handler, Request, ResponseWriter};

pub use error::{PythonError, format_exception};
pub use pool::{AppState, WorkerPool};
pub use wsgi::WsgiConfig;

use pool::{Job, JobQueue};

/// Called once with the application folder when a request first names it.
pub type OnRoot = Box<dyn Fn(&Path) + Send + Sync>;

/// Which IIS application folder this process serves.
#[derive(Default)]
pub struct AppBinding {
    /// The application's folder when known at startup (`--app-root`). Otherwise the first
    /// request's `APPL_PHYSICAL_PATH` binds the process.
    pub root: Option<PathBuf>,
    /// Called once when the root becomes known from a request (starts the file watcher).
    pub on_root: Option<OnRoot>,
}

/// Serves requests with a WSGI application on a [`WorkerPool`].
pub struct PythonHandler {
    jobs: Arc<JobQueue>,
    admission: Admission,
}

/// What answers a request before it reaches the app (WSGI or ASGI): another IIS
/// application's request, `app_offline.htm`, a body over `--max-body-size`.
pub struct Admission {
    max_body_size: u64,
    root: OnceLock<PathBuf>,
    on_root: Option<OnRoot>,
}

impl Admission {
    /// Binds to `binding` and refuses bodies over `max_body_size`.
    pub fn new(binding: AppBinding, max_body_size: u64) -> Self {
        let root = OnceLock::new();
        if let Some(r) = binding.root {
            let _ = root.set(r);
        }
        Self {
            max_body_size,
            root,
            on_root: binding.on_root,
        }
    }
}

impl PythonHandler {
    /// Starts `threads` workers running `app` and returns the handler that feeds them.
    pub fn start(
        threads: usize,
        app: AppState,
        cfg: WsgiConfig,
        binding: AppBinding,
    ) -> std::io::Result<(Self, WorkerPool)> {
        let jobs = Arc::new(JobQueue::new(threads));
        let admission = Admission::new(binding, cfg.max_body_size);
        let pool = WorkerPool::start(threads, &jobs, &Arc::new(app), &Arc::new(cfg))?;
        Ok((Self { jobs, admission }, pool))
    }
}

impl Admission {
    /// Answers here, without Python, when the request must not reach the app: another IIS
    /// application's request, the site is offline, or the body is too large.
    pub fn refusal(&self, request: &Request) -> Option<Bytes> {
        if let Some(phys) = request
            .params
            .get_str("APPL_PHYSICAL_PATH")
            .filter(|p| !p.is_empty())
        {
            let phys = PathBuf::from(phys);
            match self.root.get() {
                Some(root) if !same_dir(root, &phys) => {
                    tracing::error!(
                        bound = %root.display(),
                        requested = %phys.display(),
                        "request for another IIS application refused: this process serves only its own app folder; give each application its own FastCGI entry (pyfcgi iis enable)"
                    );
                    return Some(Bytes::from_static(
                        b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInternal Server Error: this FastCGI process is bound to another application. The server log has the details.\n",
                    ));
                }
                Some(_) => {}
                None => {
                    if self.root.set(phys.clone()).is_ok() {
                        tracing::info!(root = %phys.display(), "bound to the IIS application folder of the first request");
                        if let Some(cb) = &self.on_root {
                            cb(&phys);
                        }
                    }
                }
            }
        }
        if let Some(page) = self
            .root
            .get()
            .and_then(|r| pyfcgi_iis::offline::response(r))
        {
            return Some(Bytes::from(page));
        }
        let declared = request
            .params
            .get_str("CONTENT_LENGTH")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = declared.filter(|&l| l > self.max_body_size) {
            tracing::warn!(
                id = request.id,
                content_length = len,
                limit = self.max_body_size,
                "request body over --max-body-size: answered 413"
            );
            return Some(Bytes::from(format!(
                "Status: 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe request body ({len} bytes) is larger than this server accepts ({} bytes).\n",
                self.max_body_size
            )));
        }
        None
    }
}

/// Whether two folders are the same, ignoring trailing separators (and case on Windows,
/// where IIS paths are case-insensitive).
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        let s = p.display().to_string();
        let s = s.trim_end_matches(['/', '\\']).to_owned();
        if cfg!(windows) { s.to_lowercase() } else { s }
    };
    norm(a) == norm(b)
}

impl Handler for PythonHandler {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        // The rest of a refused request's body is discarded by the connection, keeping it
        // in sync.
        if let Some(page) = self.admission.refusal(&request) {
            drop(request);
            let _ = response.respond_now(&page);
            return;
        }
        if self.jobs.push(Job { request, response }).is_err() {
            tracing::error!("the Python worker pool has stopped; request dropped");
        }
    }

    fn try_handle_now(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> Result<(), (Request, ResponseWriter)> {
        // Refusals are answered at once, without waiting for the body; everything else is
        // queued right here.
        if let Some(page) = self.admission.refusal(&request) {
            drop(request);
            let _ = response.respond_now(&page);
            return Ok(());
        }
        match self.jobs.push(Job { request, response }) {
            Ok(()) => Ok(()),
            Err(job) => Err((job.request, job.response)),
        }
    }
}

impl Drop for PythonHandler {
    fn drop(&mut self) {
        self.jobs.close();
    }
}
