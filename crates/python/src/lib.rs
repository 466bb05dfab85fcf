//! pyfcgi's embedded CPython: the WSGI host.
//!
//! * [`interp`]: venv, `sys.path`, `--chdir`, Python's stdout/stderr into the log.
//! * [`app`]: application specs (`module:attr`, `file.py:attr`, wfastcgi's dotted names,
//!   factories) and loading, with a diagnosis when it fails.
//! * [`pool`]: the worker threads.
//! * [`wsgi`]: PEP 3333: environ, `wsgi.input`, `start_response`, `write`, `file_wrapper`.
//!
//! [`PythonHandler`] plugs all of it into `pyfcgi-server` as a [`Handler`].
//!
//! The binary initialises the interpreter (`Python::initialize()`); this crate never does.

// Python protocol methods (`readable`, `isatty`, ...) take `&self` whether or not they use it.
#![allow(clippy::unused_self)]

pub mod app;
mod error;
pub mod interp;
mod log_stream;
pub mod pool;
pub mod wsgi;

use std::sync::Arc;

use bytes::Bytes;
use pyfcgi_server::{Handler, Request, ResponseWriter};
use tokio::sync::mpsc;

pub use error::{PythonError, format_exception};
pub use pool::{AppState, WorkerPool};
pub use wsgi::WsgiConfig;

use pool::Job;

/// Serves requests with a WSGI application on a [`WorkerPool`].
pub struct PythonHandler {
    jobs: mpsc::Sender<Job>,
    max_body_size: u64,
}

impl PythonHandler {
    /// Starts `threads` workers running `app` and returns the handler that feeds them.
    pub fn start(
        threads: usize,
        app: AppState,
        cfg: WsgiConfig,
    ) -> std::io::Result<(Self, WorkerPool)> {
        let (tx, rx) = mpsc::channel(threads.max(1) * 2);
        let max_body_size = cfg.max_body_size;
        let pool = WorkerPool::start(threads, rx, &Arc::new(app), &Arc::new(cfg))?;
        Ok((
            Self {
                jobs: tx,
                max_body_size,
            },
            pool,
        ))
    }
}

impl Handler for PythonHandler {
    async fn handle(&self, request: Request, mut response: ResponseWriter) {
        // Refuse an over-limit body before any Python runs (the rest of the body is read and
        // discarded by the connection, keeping it in sync).
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
            let page = Bytes::from(format!(
                "Status: 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe request body ({len} bytes) is larger than this server accepts ({} bytes).\n",
                self.max_body_size
            ));
            drop(request);
            if response.write(page).await.is_ok() {
                let _ = response.end(0).await;
            }
            return;
        }
        if self.jobs.send(Job { request, response }).await.is_err() {
            tracing::error!("the Python worker pool has stopped; request dropped");
        }
    }
}
