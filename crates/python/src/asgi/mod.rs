//! ASGI 3.0 (HTTP and lifespan): one asyncio event loop on a dedicated Python thread.
//!
//! The I/O side never takes the GIL. Each request's task (the connection's tokio runtime)
//! queues the request for the loop and then carries out what the app asks through `receive()`
//! and `send()`: read the next body chunk, write the response head, write body pieces. Each
//! finished step goes back on the same queue. A queue that turns non-empty writes one byte to
//! a socket the loop watches (`add_reader`), so the loop wakes without polling, and drains
//! everything queued in one GIL hold (glue.py).
//!
//! The files mirror WSGI's (`crate::wsgi`), so one reads by analogy with the other:
//!
//! * this file: the settings ([`AsgiConfig`]) and one request's run ([`AsgiHandler::serve`]
//!   and its `Drive` loop), as `wsgi/mod.rs` has `WsgiConfig` and `run_request`.
//! * `scope`: the `http` scope, WSGI's `environ.rs`.
//! * `input`: the `receive()` side (body reads, `http.request`/`http.disconnect`), WSGI's
//!   `input.rs` (`wsgi.input`).
//! * `response`: the `send()` side (the head, body pieces, pathsend, the end of the response
//!   and the error pages), WSGI's `response.rs`.
//! * `conn`: `_Conn`, the object glue.py calls for one request, and the steps it queues.
//! * `host`: the loop thread, its wake-up queue and `_Bridge` (WSGI's twin is `pool.rs`, the
//!   worker threads).
//! * `glue.py`: the Python side: the tasks, `receive()`, `send()`, the lifespan.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyfcgi_server::observe::RequestId;
use pyfcgi_server::{BodyReceiver, Request, ResponseWriter};
use pyo3::prelude::*;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::error;

mod conn;
mod host;
mod input;
mod response;
mod scope;

pub use host::AsgiHost;
pub use scope::is_asgi_app;

use conn::{Cmd, Link};
use host::{NewRequest, Shared};
use response::write_error;

/// `--lifespan`: whether the app's lifespan protocol runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lifespan {
    /// Run it; an app that does not support it (raises or returns at once) is served anyway.
    #[default]
    Auto,
    /// Run it; an app that does not support it is a startup failure.
    On,
    /// Do not run it.
    Off,
}

impl Lifespan {
    fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// `--loop`: which asyncio event loop runs the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoopKind {
    /// uvloop when it is installed and this is not Windows, else asyncio's.
    #[default]
    Auto,
    /// asyncio's own (the selector loop, on Windows too).
    Asyncio,
    /// uvloop; an error when it is not installed.
    Uvloop,
}

/// What the ASGI host needs to know.
#[derive(Clone, Debug)]
pub struct AsgiConfig {
    /// `--script-name`: the mount prefix (`root_path`), as for WSGI.
    pub script_name: Option<String>,
    /// `--url-scheme`: forces `scope["scheme"]`.
    pub url_scheme: Option<String>,
    /// `--lifespan`.
    pub lifespan: Lifespan,
    /// `--loop`.
    pub loop_kind: LoopKind,
    /// `--detailed-errors`: a 500 page carries the app's traceback.
    pub detailed_errors: bool,
    /// `--send-window`: response bytes a request may have accepted from `send()` and not yet
    /// written before `send()` waits for the writes (backpressure).
    pub send_window: usize,
    /// `--request-timeout`: a request not finished by then gets a 504 (or its response is
    /// ended), and the event loop thread's Python stack is logged.
    pub request_timeout: Option<Duration>,
    /// Cancelled when a request is still running at twice the timeout (the loop is stuck):
    /// the process stops, to be replaced. `None`: only log.
    pub stuck: Option<tokio_util::sync::CancellationToken>,
}

impl Default for AsgiConfig {
    fn default() -> Self {
        Self {
            script_name: None,
            url_scheme: None,
            lifespan: Lifespan::default(),
            loop_kind: LoopKind::default(),
            detailed_errors: false,
            send_window: 64 * 1024,
            request_timeout: None,
            stuck: None,
        }
    }
}

/// The `pyfcgi-server` handler: each request becomes a task on the loop.
#[derive(Clone)]
pub struct AsgiHandler {
    shared: Arc<Shared>,
    admission: Arc<crate::Admission>,
}

impl AsgiHandler {
    /// Carries out the app's steps for one request until it finishes.
    pub async fn serve(&self, request: Request, response: ResponseWriter) {
        // Answered at once, without waiting for the body (the connection discards the rest).
        if let Some(page) = self.admission.refusal(&request) {
            drop(request);
            let _ = response.respond_now(&page);
            return;
        }
        let id = request.request_id();
        let Request {
            params,
            mut body,
            abort,
            ..
        } = request;
        // A HEAD response carries no body, whatever the app sends.
        let head_only = params.get(b"REQUEST_METHOD") == Some(b"HEAD");
        let (tx, rx) = unbounded_channel();
        let mut state = Drive {
            shared: &self.shared,
            id,
            link: Arc::new(Link::default()),
            head_only,
            response: Some(response),
            pending_reads: VecDeque::new(),
            held_head: None,
            body_sent: false,
            body_done: false,
        };
        // nginx sends a GET's empty body with its params: the app's first receive() then
        // needs no round trip.
        let first = body.try_chunk().map(|chunk| state.outcome(chunk));
        let link = Arc::clone(&state.link);
        self.shared.request(NewRequest {
            id,
            params,
            tx,
            first,
            link,
        });
        state.run(rx, body, abort).await;
    }
}

/// One request's task: carries out the app's steps.
struct Drive<'a> {
    shared: &'a Shared,
    /// The request id, for the log and the 500 page.
    id: RequestId,
    link: Arc<Link>,
    head_only: bool,
    response: Option<ResponseWriter>,
    /// Waiting `receive()` calls, oldest first: each gets the next message. (Apps may have
    /// two waiting, as Starlette's disconnect listener beside a body reader does.)
    pending_reads: VecDeque<Py<PyAny>>,
    /// `http.response.start`'s head, kept until the first body piece, so that an error
    /// before any body still becomes a 500, and head and body leave in one write.
    held_head: Option<Vec<u8>>,
    body_sent: bool,
    body_done: bool,
}

impl Drive<'_> {
    /// Whether the client is gone (the same flag `send()` checks).
    fn gone(&self) -> bool {
        self.link.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_gone(&self) {
        self.link
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    async fn run(
        &mut self,
        mut rx: UnboundedReceiver<Cmd>,
        mut body: BodyReceiver,
        abort: pyfcgi_server::AbortSignal,
    ) {
        let timeout = self.shared.cfg.request_timeout;
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let deadline =
            tokio::time::sleep_until(timeout.map_or(far, |t| tokio::time::Instant::now() + t));
        tokio::pin!(deadline);
        // 0: not yet; 1: answered 504; 2: reported stuck.
        let mut late = 0u8;
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else {
                        // The loop dropped the request without finishing it (it stopped).
                        if let Some(r) = self.response.take() {
                            let _ = write_error(r).await;
                        }
                        break;
                    };
                    if self.step(cmd).await {
                        break;
                    }
                }
                chunk = body.chunk(), if !self.pending_reads.is_empty() && !self.body_done => {
                    self.answer_read(chunk);
                }
                () = abort.aborted(), if !self.gone() => {
                    self.set_gone();
                    self.release_read();
                }
                () = &mut deadline, if timeout.is_some() && late < 2 => {
                    let limit = timeout.unwrap_or_default();
                    if late == 0 {
                        self.timed_out(limit).await;
                        deadline.as_mut().reset(tokio::time::Instant::now() + limit);
                        late = 1;
                    } else {
                        late = 2;
                        if let Some(stuck) = &self.shared.cfg.stuck {
                            error!(request = %self.id, "an ASGI request is still running at twice --request-timeout: the event loop is stuck; this process stops, to be replaced");
                            stuck.cancel();
                        }
                    }
                }
            }
        }
    }

    /// `--request-timeout` passed: a 504 if nothing was sent, else the response ends here;
    /// the app's later `send()` calls raise, and the loop thread's Python stack is logged.
    async fn timed_out(&mut self, limit: Duration) {
        let answered = match self.response.take() {
            Some(mut r) if !self.body_sent => {
                self.held_head = None;
                let page = format!(
                    "The application did not answer within {} s (request id {}).\n",
                    limit.as_secs_f64(),
                    self.id
                );
                let response = format!(
                    "Status: 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{page}",
                    page.len()
                );
                if r.write(Bytes::from(response)).await.is_ok() {
                    let _ = r.end(0).await;
                }
                "answered 504"
            }
            Some(r) => {
                drop(r);
                "ended the response where it was"
            }
            None => "the response was already complete",
        };
        self.set_gone();
        self.release_read();
        let ident = self
            .shared
            .loop_ident
            .load(std::sync::atomic::Ordering::Relaxed);
        let id = self.id;
        let secs = limit.as_secs_f64();
        // Reading the stack takes the GIL: on a thread of its own, never an I/O thread.
        std::thread::spawn(move || {
            let stack = crate::watchdog::python_stack(ident);
            error!(
                request = %id,
                "ASGI request over --request-timeout ({secs} s): {answered}; the event loop thread's Python stack:\n{stack}"
            );
        });
    }

    /// Carries out one step; true once the request is over.
    async fn step(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Read(fut) => self.queue_read(fut),
            Cmd::Start(head) => {
                if self.response.is_some() {
                    self.held_head = Some(head);
                }
            }
            Cmd::Body { data, more, fut } => self.body_piece(data, more, fut).await,
            Cmd::PathSend(file) => self.send_file(file).await,
            Cmd::Finish { started, error } => {
                self.finish(started, error.as_deref()).await;
                return true;
            }
        }
        false
    }
}

impl pyfcgi_server::Handler for AsgiHandler {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        self.serve(request, response).await;
    }
}
