//! ASGI 3.0 (HTTP and lifespan): one asyncio event loop on a dedicated Python thread.
//!
//! The I/O side never takes the GIL. Each request's task (the connection's tokio runtime)
//! queues the request for the loop and then carries out what the app asks through `receive()`
//! and `send()`: read the next body chunk, write the response head, write body pieces. Each
//! finished step goes back on the same queue. A queue that turns non-empty writes one byte to
//! a socket the loop watches (`add_reader`), so the loop wakes without polling, and drains
//! everything queued in one GIL hold (glue.py).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use pyfcgi_proto::Params;
use pyfcgi_server::observe::RequestId;
use pyfcgi_server::{BodyReceiver, Request, ResponseWriter};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{error, info, warn};

use crate::PythonError;
use pyfcgi_proto::head;

mod scope;

pub use scope::is_asgi_app;

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

/// A step the app asked for, carried out by the request's task.
enum Cmd {
    Read(Py<PyAny>),
    /// The validated CGI head of `http.response.start`.
    Start(Vec<u8>),
    /// `http.response.body`; `fut` is resolved once written (`None`: `send()` did not wait).
    Body {
        data: Bytes,
        more: bool,
        fut: Option<Py<PyAny>>,
    },
    /// `http.response.pathsend`: the file, already open, is the rest of the body.
    PathSend(std::fs::File),
    Finish {
        started: bool,
        error: Option<String>,
    },
}

/// The outcome of a step, for the future the app awaits.
enum Outcome {
    Chunk(Bytes, bool),
    Disconnect,
    Done,
    Failed(String),
}

struct Finished {
    fut: Py<PyAny>,
    outcome: Outcome,
}

struct NewRequest {
    params: Params,
    tx: UnboundedSender<Cmd>,
    /// The first body chunk, when it had arrived before the request was queued.
    first: Option<Outcome>,
    link: Arc<Link>,
}

/// What a request's task and its `_Conn` share without a round trip.
#[derive(Default)]
struct Link {
    /// Body bytes `send()` accepted without waiting that are not written yet.
    unwritten: std::sync::atomic::AtomicUsize,
    /// The client is gone: further `send()` calls raise.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Queue {
    new: Vec<NewRequest>,
    finished: Vec<Finished>,
    stop: bool,
    /// A wake-up byte is on its way and not yet consumed.
    armed: bool,
}

/// What the request tasks and the loop thread share.
struct Shared {
    queue: Mutex<Queue>,
    wake: WakeWriter,
    cfg: AsgiConfig,
    /// Lifespan reports from the loop: (stage, ok, message).
    lifespan_tx: Mutex<std::sync::mpsc::Sender<(String, bool, String)>>,
    /// The loop thread's `threading.get_ident()`, for its stack on a timeout.
    loop_ident: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn push(&self, f: impl FnOnce(&mut Queue)) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut q);
        if !q.armed {
            q.armed = true;
            drop(q);
            self.wake.wake();
        }
    }

    fn finish(&self, fut: Py<PyAny>, outcome: Outcome) {
        self.push(|q| q.finished.push(Finished { fut, outcome }));
    }
}

#[cfg(unix)]
type WakeStream = std::os::unix::net::UnixStream;
#[cfg(windows)]
type WakeStream = std::net::TcpStream;

struct WakeWriter(WakeStream);

impl WakeWriter {
    fn wake(&self) {
        // WouldBlock means the socket is full of wake-ups already: the loop will run.
        let _ = (&self.0).write(&[1]);
    }
}

/// The wake-up socket pair: (the loop's end, the writers' end), both non-blocking.
fn wake_pair() -> std::io::Result<(WakeStream, WakeStream)> {
    #[cfg(unix)]
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    #[cfg(windows)]
    let (a, b) = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let b = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (a, _) = listener.accept()?;
        b.set_nodelay(true)?;
        (a, b)
    };
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

#[cfg(unix)]
fn raw_fd(s: &WakeStream) -> u64 {
    use std::os::fd::AsRawFd;
    u64::try_from(s.as_raw_fd()).unwrap_or_default()
}

#[cfg(windows)]
fn raw_fd(s: &WakeStream) -> u64 {
    use std::os::windows::io::AsRawSocket;
    s.as_raw_socket()
}

/// The loop thread's view of [`Shared`], handed to glue.py.
#[pyclass(name = "_Bridge")]
struct Bridge {
    shared: Arc<Shared>,
    reader: WakeStream,
    /// The event loop, for the futures `send()` waits on.
    event_loop: Option<Py<PyAny>>,
}

#[pymethods]
impl Bridge {
    fn fileno(&self) -> u64 {
        raw_fd(&self.reader)
    }

    /// Everything queued since the last call: `(new requests, finished steps)`; a stop
    /// request shows as `None` in place of the lists.
    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Consume the wake-up bytes first: a push after this writes a new one.
        let mut sink = [0u8; 256];
        while matches!(self.reader.read(&mut sink), Ok(n) if n > 0) {}
        let (new, finished, stop) = {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.armed = false;
            (
                std::mem::take(&mut q.new),
                std::mem::take(&mut q.finished),
                std::mem::take(&mut q.stop),
            )
        };
        let new_list = PyList::empty(py);
        for r in new {
            let scope = scope::build(py, &r.params, &self.shared.cfg)?;
            let head_request = r
                .params
                .get(b"REQUEST_METHOD")
                .is_some_and(|m| m.eq_ignore_ascii_case(b"HEAD"));
            let first = r
                .first
                .map(|o| outcome_value(py, o).map(Bound::unbind))
                .transpose()?;
            let conn = Py::new(
                py,
                Conn {
                    tx: r.tx,
                    first,
                    link: r.link,
                    event_loop: self.event_loop.as_ref().map(|l| l.clone_ref(py)),
                    window: self.shared.cfg.send_window,
                    head_request,
                    bodiless: head_request,
                },
            )?;
            new_list.append((conn, scope))?;
        }
        let done = PyList::empty(py);
        for f in finished {
            let failed = matches!(f.outcome, Outcome::Failed(_));
            done.append((f.fut, outcome_value(py, f.outcome)?, failed))?;
        }
        Ok((new_list, done, stop).into_pyobject(py)?.into_any())
    }

    /// A lifespan report from glue.py: `stage` is `startup` or `shutdown`.
    fn lifespan(&self, stage: String, ok: bool, message: String) {
        let tx = self
            .shared
            .lifespan_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = tx.send((stage, ok, message));
    }
}

/// The Python value an outcome resolves a future with (`Failed`: the message).
fn outcome_value(py: Python<'_>, outcome: Outcome) -> PyResult<Bound<'_, PyAny>> {
    Ok(match outcome {
        Outcome::Chunk(data, more) => {
            let d = PyDict::new(py);
            d.set_item("type", "http.request")?;
            d.set_item("body", PyBytes::new(py, &data))?;
            d.set_item("more_body", more)?;
            d.into_any()
        }
        Outcome::Disconnect => disconnect(py)?.into_any(),
        Outcome::Done => py.None().into_bound(py),
        Outcome::Failed(why) => why.into_pyobject(py)?.into_any(),
    })
}

fn disconnect(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", "http.disconnect")?;
    Ok(d)
}

fn disconnected() -> PyErr {
    pyo3::exceptions::PyOSError::new_err("the client disconnected")
}

/// One request, as glue.py sees it.
#[pyclass(name = "_Conn")]
struct Conn {
    tx: UnboundedSender<Cmd>,
    /// The first `receive()` message, when the body was there before the app started.
    first: Option<Py<PyAny>>,
    link: Arc<Link>,
    event_loop: Option<Py<PyAny>>,
    /// `--send-window`.
    window: usize,
    /// The request is HEAD.
    head_request: bool,
    /// No body may follow the head (HEAD, 204, 304): body bytes are dropped.
    bodiless: bool,
}

#[pymethods]
impl Conn {
    /// The next `receive()` message if it is known now; else `None`, and `fut` gets it.
    fn read(&mut self, py: Python<'_>, fut: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.tx.send(Cmd::Read(fut)).is_err() {
            return Ok(Some(disconnect(py)?.into_any().unbind()));
        }
        Ok(None)
    }

    /// `http.response.start`: raises when the status or a header is invalid.
    #[allow(clippy::needless_pass_by_value)] // extracted from Python by value
    fn start(&mut self, status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<()> {
        let head =
            response_head(status, &headers).map_err(pyo3::exceptions::PyRuntimeError::new_err)?;
        // HTTP: a response to HEAD, a 204 and a 304 end with the head.
        self.bodiless = self.head_request || status == 204 || status == 304;
        self.tx.send(Cmd::Start(head)).map_err(|_| disconnected())
    }

    /// `http.response.body`: `None` when `send()` need not wait, else the future to await.
    fn body(&self, py: Python<'_>, data: Vec<u8>, more: bool) -> PyResult<Option<Py<PyAny>>> {
        use std::sync::atomic::Ordering;
        if self.link.closed.load(Ordering::Acquire) {
            return Err(disconnected());
        }
        let data = if self.bodiless { Vec::new() } else { data };
        let len = data.len();
        let before = self.link.unwritten.fetch_add(len, Ordering::AcqRel);
        // The last piece never waits: nothing follows it that the wait could hold back.
        let wait = more && before + len > self.window;
        let fut = match (&self.event_loop, wait) {
            (Some(l), true) => Some(l.call_method0(py, "create_future")?),
            _ => None,
        };
        let cmd = Cmd::Body {
            data: Bytes::from(data),
            more,
            fut: fut.as_ref().map(|f| f.clone_ref(py)),
        };
        self.tx.send(cmd).map_err(|_| disconnected())?;
        Ok(fut)
    }

    /// `http.response.pathsend`: opens the file now, so a missing one raises in the app.
    #[allow(clippy::needless_pass_by_value)] // extracted from Python by value
    fn pathsend(&self, path: std::path::PathBuf) -> PyResult<()> {
        if self.link.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(disconnected());
        }
        if self.bodiless {
            let end = Cmd::Body {
                data: Bytes::new(),
                more: false,
                fut: None,
            };
            return self.tx.send(end).map_err(|_| disconnected());
        }
        let file = std::fs::File::open(&path).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!(
                "ASGI: http.response.pathsend cannot open {}: {e}",
                path.display()
            ))
        })?;
        self.tx
            .send(Cmd::PathSend(file))
            .map_err(|_| disconnected())
    }

    /// The app returned or raised; `gone_note` says how it stopped after the client left.
    #[pyo3(signature = (started, error, gone_note=None))]
    fn finish(&self, started: bool, error: Option<String>, gone_note: Option<String>) {
        if let Some(note) = gone_note {
            info!("the client went away; the application stopped with {note}");
        }
        let _ = self.tx.send(Cmd::Finish { started, error });
    }

    /// Whether the client is known to be gone.
    fn gone(&self) -> bool {
        self.link.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The CGI response head for `http.response.start`, or why it is invalid.
fn response_head(status: u16, headers: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let reason = match pyfcgi_proto::reason_phrase(status) {
        "" => "Status",
        r => r,
    };
    let line = format!("{status} {reason}");
    if !(200..=999).contains(&status) {
        return Err(format!(
            "ASGI: status {status} is not a final HTTP status (200-599 expected)"
        ));
    }
    head::validate_status(&line).map_err(|e| e.to_string())?;
    let mut fields = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        // latin-1, as HTTP header bytes are.
        let name: String = name.iter().map(|&b| char::from(b)).collect();
        let value: String = value.iter().map(|&b| char::from(b)).collect();
        head::validate_header(&name, &value).map_err(|e| format!("ASGI: {e}"))?;
        fields.push((name, value));
    }
    let mut out = Vec::with_capacity(64 + fields.len() * 40);
    head::encode_head(&mut out, &line, &fields);
    Ok(out)
}

const ERROR_PAGE: &[u8] = b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\r\nInternal Server Error\n";

/// Serves requests with an ASGI application on the event loop.
pub struct AsgiHost {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    lifespan_rx: std::sync::mpsc::Receiver<(String, bool, String)>,
}

impl AsgiHost {
    /// Starts the loop thread with `app`, runs the lifespan startup, and returns once the app
    /// is ready. A failed startup is an error with the app's message.
    pub fn start(app: Py<PyAny>, cfg: AsgiConfig) -> Result<Self, PythonError> {
        let (reader, writer) = wake_pair().map_err(|e| {
            PythonError::Startup(format!(
                "cannot create the event loop's wake-up socket: {e}"
            ))
        })?;
        let (lifespan_tx, lifespan_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: WakeWriter(writer),
            cfg,
            lifespan_tx: Mutex::new(lifespan_tx.clone()),
            loop_ident: std::sync::atomic::AtomicU64::new(0),
        });
        let bridge_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pyfcgi-asgi".into())
            .spawn(move || {
                let cfg = bridge_shared.cfg.clone();
                let result = Python::attach(|py| {
                    run_loop(
                        py,
                        app,
                        Bridge {
                            shared: bridge_shared,
                            reader,
                            event_loop: None,
                        },
                        &cfg,
                    )
                });
                if let Err(e) = result {
                    let _ = lifespan_tx.send(("startup".into(), false, e));
                }
            })
            .map_err(|e| {
                PythonError::Startup(format!("cannot start the event loop thread: {e}"))
            })?;
        let host = Self {
            shared,
            thread: Some(thread),
            lifespan_rx,
        };
        match host.lifespan_rx.recv() {
            Ok((_, true, note)) => {
                if note == "unsupported" {
                    info!("ASGI application ready (it does not use lifespan)");
                } else {
                    info!(lifespan = %host.shared.cfg.lifespan.as_str(), "ASGI application ready: lifespan startup complete");
                }
                Ok(host)
            }
            Ok((_, false, why)) => Err(PythonError::Startup(format!(
                "the ASGI application's lifespan startup failed: {why}"
            ))),
            Err(_) => Err(PythonError::Startup(
                "the event loop thread ended before the application was ready".into(),
            )),
        }
    }

    /// The handler for `pyfcgi-server`; `admission` answers what must not reach the app.
    pub fn handler(&self, admission: crate::Admission) -> AsgiHandler {
        AsgiHandler {
            shared: Arc::clone(&self.shared),
            admission: Arc::new(admission),
        }
    }

    /// Runs the lifespan shutdown and stops the loop (after the server has drained).
    pub fn stop(mut self, limit: Duration) {
        self.shared.push(|q| q.stop = true);
        match self.lifespan_rx.recv_timeout(limit) {
            Ok((_, true, _)) => info!("ASGI lifespan shutdown complete"),
            Ok((_, false, why)) => error!("the ASGI application's lifespan shutdown failed: {why}"),
            Err(_) => warn!(
                limit_s = limit.as_secs(),
                "the ASGI lifespan shutdown did not finish in time"
            ),
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_loop(
    py: Python<'_>,
    app: Py<PyAny>,
    mut bridge: Bridge,
    cfg: &AsgiConfig,
) -> Result<(), String> {
    let fail = |what: &str, e: PyErr| format!("{what}: {}", crate::format_exception(py, &e));
    if let Ok(ident) = py
        .import("threading")
        .and_then(|t| t.call_method0("get_ident"))
        .and_then(|i| i.extract::<u64>())
    {
        bridge
            .shared
            .loop_ident
            .store(ident, std::sync::atomic::Ordering::Relaxed);
    }
    let asyncio = py
        .import("asyncio")
        .map_err(|e| fail("importing asyncio", e))?;
    let event_loop =
        new_loop(py, &asyncio, cfg.loop_kind).map_err(|e| fail("creating the event loop", e))?;
    asyncio
        .call_method1("set_event_loop", (&event_loop,))
        .map_err(|e| fail("setting the event loop", e))?;
    let code = std::ffi::CString::new(include_str!("glue.py")).map_err(|e| e.to_string())?;
    let glue = PyModule::from_code(py, &code, c"pyfcgi_asgi_glue.py", c"pyfcgi_asgi_glue")
        .map_err(|e| fail("loading the ASGI glue", e))?;
    bridge.event_loop = Some(event_loop.clone().unbind());
    let bridge = Py::new(py, bridge).map_err(|e| fail("creating the bridge", e))?;
    glue.call_method1(
        "install",
        (
            &event_loop,
            bridge,
            app,
            PyDict::new(py),
            cfg.lifespan.as_str(),
        ),
    )
    .map_err(|e| fail("starting the ASGI application", e))?;
    event_loop
        .call_method0("run_forever")
        .map_err(|e| fail("the event loop", e))?;
    let _ = event_loop.call_method0("close");
    Ok(())
}

fn new_loop<'py>(
    py: Python<'py>,
    asyncio: &Bound<'py, PyModule>,
    kind: LoopKind,
) -> PyResult<Bound<'py, PyAny>> {
    let uvloop = if cfg!(windows) || kind == LoopKind::Asyncio {
        None
    } else {
        match py.import("uvloop") {
            Ok(m) => Some(m),
            Err(e) if kind == LoopKind::Uvloop => return Err(e),
            Err(_) => None,
        }
    };
    if let Some(m) = uvloop {
        info!("event loop: uvloop");
        return m.call_method0("new_event_loop");
    }
    info!("event loop: asyncio");
    // The selector loop everywhere: add_reader works with it on Windows too (sockets).
    asyncio.call_method0("SelectorEventLoop")
}

/// The `pyfcgi-server` handler: each request becomes a task on the loop.
#[derive(Clone)]
pub struct AsgiHandler {
    shared: Arc<Shared>,
    admission: Arc<crate::Admission>,
}

impl AsgiHandler {
    /// Carries out the app's steps for one request until it finishes.
    pub async fn serve(&self, request: Request, mut response: ResponseWriter) {
        if let Some(page) = self.admission.refusal(&request) {
            drop(request);
            if response.write(page).await.is_ok() {
                let _ = response.end(0).await;
            }
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
            pending_reads: std::collections::VecDeque::new(),
            held_head: None,
            body_sent: false,
            body_done: false,
        };
        // nginx sends a GET's empty body with its params: the app's first receive() then
        // needs no round trip.
        let first = body.try_chunk().map(|chunk| state.outcome(chunk));
        let link = Arc::clone(&state.link);
        self.shared.push(|q| {
            q.new.push(NewRequest {
                params,
                tx,
                first,
                link,
            });
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
    pending_reads: std::collections::VecDeque<Py<PyAny>>,
    /// `http.response.start`'s head, kept until the first body piece, so that an error
    /// before any body still becomes a 500, and head and body leave in one write.
    held_head: Option<Vec<u8>>,
    body_sent: bool,
    body_done: bool,
}

impl Drive<'_> {
    /// What the app's `receive()` gets for a body read.
    fn outcome(&mut self, chunk: Result<Option<Bytes>, pyfcgi_server::BodyError>) -> Outcome {
        match chunk {
            Ok(Some(data)) => Outcome::Chunk(data, true),
            Ok(None) => {
                self.body_done = true;
                Outcome::Chunk(Bytes::new(), false)
            }
            // The client is still there: the app's response (or pyfcgi's 500) reaches it.
            Err(pyfcgi_server::BodyError::SpoolFailed) => Outcome::Disconnect,
            Err(_) => {
                self.set_gone();
                Outcome::Disconnect
            }
        }
    }

    /// Whether the client is gone (the same flag `send()` checks).
    fn gone(&self) -> bool {
        self.link.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_gone(&self) {
        self.link
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Resolves the waiting `receive()` calls with `http.disconnect` once the response is
    /// over or the client is gone.
    fn release_read(&mut self) {
        for f in std::mem::take(&mut self.pending_reads) {
            self.shared.finish(f, Outcome::Disconnect);
        }
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
                    let outcome = self.outcome(chunk);
                    let gone = matches!(outcome, Outcome::Disconnect);
                    if let Some(f) = self.pending_reads.pop_front() {
                        self.shared.finish(f, outcome);
                    }
                    if gone {
                        self.release_read();
                    }
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
            Cmd::Read(fut) => {
                if self.gone() || self.response.is_none() {
                    self.shared.finish(fut, Outcome::Disconnect);
                } else {
                    self.pending_reads.push_back(fut);
                }
            }
            Cmd::Start(head) => {
                if self.response.is_some() {
                    self.held_head = Some(head);
                }
            }
            Cmd::Body { data, more, fut } => {
                let len = data.len();
                let ok = self.write_body(data, more).await;
                self.link
                    .unwritten
                    .fetch_sub(len, std::sync::atomic::Ordering::AcqRel);
                if let Some(fut) = fut {
                    let outcome = if ok {
                        Outcome::Done
                    } else {
                        Outcome::Failed("the client disconnected".into())
                    };
                    self.shared.finish(fut, outcome);
                }
            }
            Cmd::PathSend(file) => self.send_file(file).await,
            Cmd::Finish { started, error } => {
                self.finish(started, error.as_deref()).await;
                return true;
            }
        }
        false
    }

    /// Writes one body piece (the held head first); false when the client is gone.
    async fn write_body(&mut self, mut data: Bytes, more: bool) -> bool {
        let Some(mut r) = self.response.take() else {
            return false;
        };
        self.body_sent = true;
        if self.head_only {
            data = Bytes::new();
        }
        if let Some(head) = self.held_head.take() {
            let mut first = head;
            first.extend_from_slice(&data);
            data = Bytes::from(first);
        }
        let mut ok = true;
        if !data.is_empty() && (more || !r.defer(&data)) {
            ok = r.write(data).await.is_ok();
        }
        if more && ok {
            self.response = Some(r);
        } else if ok {
            ok = r.end(0).await.is_ok();
        }
        if !ok {
            self.set_gone();
        }
        if self.response.is_none() {
            self.release_read();
        }
        ok
    }

    /// `http.response.pathsend`: the file's bytes are the rest of the body.
    async fn send_file(&mut self, file: std::fs::File) {
        use tokio::io::AsyncReadExt;
        const CHUNK: usize = 256 * 1024;
        let Some(mut r) = self.response.take() else {
            return;
        };
        self.body_sent = true;
        let mut ok = match self.held_head.take() {
            Some(head) => r.write(Bytes::from(head)).await.is_ok(),
            None => true,
        };
        let mut file = tokio::fs::File::from_std(file);
        while ok && !self.head_only {
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => ok = r.write(buf.freeze()).await.is_ok(),
                Err(e) => {
                    // The head is out: all that can be done is to cut the response short
                    // (dropping the writer ends the request with an error status).
                    error!("ASGI: http.response.pathsend: reading the file failed: {e}");
                    drop(r);
                    self.release_read();
                    return;
                }
            }
        }
        if !ok || r.end(0).await.is_err() {
            self.set_gone();
        }
        self.release_read();
    }

    async fn finish(&mut self, started: bool, error: Option<&str>) {
        if let Some(e) = error {
            error!(request = %self.id, "ASGI application error: {e}");
        }
        if let Some(mut r) = self.response.take() {
            match self.held_head.take() {
                // Nothing sent yet: an error is still a 500 (with the traceback in it only
                // with --detailed-errors).
                _ if error.is_some() && !self.body_sent => {
                    let detail = error.filter(|_| self.shared.cfg.detailed_errors);
                    let page = crate::wsgi::response::error_page(
                        "500 Internal Server Error",
                        "Internal Server Error",
                        self.id,
                        detail,
                    );
                    if r.write(page).await.is_ok() {
                        let _ = r.end(0).await;
                    }
                }
                Some(head) => {
                    if r.write(Bytes::from(head)).await.is_ok() {
                        let _ = r.end(0).await;
                    }
                }
                None if started => {
                    let _ = r.end(0).await;
                }
                None => {
                    let _ = write_error(r).await;
                }
            }
        }
        self.release_read();
    }
}

async fn write_error(mut r: ResponseWriter) -> Result<(), pyfcgi_server::WriteError> {
    r.write(Bytes::from_static(ERROR_PAGE)).await?;
    r.end(0).await
}

impl pyfcgi_server::Handler for AsgiHandler {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        self.serve(request, response).await;
    }
}

#[cfg(test)]
mod tests {
    use super::response_head;

    #[test]
    fn the_head_has_a_status_line_and_refuses_header_injection() {
        // The validators' messages are Python exceptions, turned into text here.
        pyo3::Python::initialize();
        let head =
            response_head(200, &[(b"content-type".to_vec(), b"text/plain".to_vec())]).unwrap();
        assert_eq!(head, b"Status: 200 OK\r\ncontent-type: text/plain\r\n\r\n");
        assert!(response_head(200, &[(b"x".to_vec(), b"a\r\nSet-Cookie: evil".to_vec())]).is_err());
        assert!(response_head(101, &[]).is_err());
        assert!(response_head(200, &[(b"bad name".to_vec(), b"v".to_vec())]).is_err());
    }
}
