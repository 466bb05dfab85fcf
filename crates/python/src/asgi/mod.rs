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
use pyfcgi_server::{BodyReceiver, Request, ResponseWriter};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{error, info, warn};

use crate::PythonError;
use crate::wsgi::response::{validate_header, validate_status};

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
#[derive(Clone, Debug, Default)]
pub struct AsgiConfig {
    /// `--script-name`: the mount prefix (`root_path`), as for WSGI.
    pub script_name: Option<String>,
    /// `--url-scheme`: forces `scope["scheme"]`.
    pub url_scheme: Option<String>,
    /// `--lifespan`.
    pub lifespan: Lifespan,
    /// `--loop`.
    pub loop_kind: LoopKind,
}

/// A step the app asked for, carried out by the request's task.
enum Cmd {
    Read(Py<PyAny>),
    Start {
        head: Result<Vec<u8>, String>,
        fut: Py<PyAny>,
    },
    Body {
        data: Bytes,
        more: bool,
        fut: Py<PyAny>,
    },
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
            let conn = Py::new(py, Conn { tx: r.tx })?;
            new_list.append((conn, scope))?;
        }
        let done = PyList::empty(py);
        for f in finished {
            let (value, failed): (Bound<'py, PyAny>, bool) = match f.outcome {
                Outcome::Chunk(data, more) => {
                    let d = PyDict::new(py);
                    d.set_item("type", "http.request")?;
                    d.set_item("body", PyBytes::new(py, &data))?;
                    d.set_item("more_body", more)?;
                    (d.into_any(), false)
                }
                Outcome::Disconnect => {
                    let d = PyDict::new(py);
                    d.set_item("type", "http.disconnect")?;
                    (d.into_any(), false)
                }
                Outcome::Done => (py.None().into_bound(py), false),
                Outcome::Failed(why) => (why.into_pyobject(py)?.into_any(), true),
            };
            done.append((f.fut, value, failed))?;
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

/// One request, as glue.py sees it.
#[pyclass(name = "_Conn")]
struct Conn {
    tx: UnboundedSender<Cmd>,
}

#[pymethods]
impl Conn {
    fn read(&self, py: Python<'_>, fut: Py<PyAny>) -> PyResult<()> {
        if let Err(e) = self.tx.send(Cmd::Read(fut)) {
            let Cmd::Read(fut) = e.0 else { return Ok(()) };
            let d = PyDict::new(py);
            d.set_item("type", "http.disconnect")?;
            fut.call_method1(py, "set_result", (d,))?;
        }
        Ok(())
    }

    #[allow(clippy::needless_pass_by_value)] // extracted from Python by value
    fn start(
        &self,
        py: Python<'_>,
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        fut: Py<PyAny>,
    ) -> PyResult<()> {
        let head = response_head(status, &headers);
        self.send(py, Cmd::Start { head, fut })
    }

    fn body(&self, py: Python<'_>, data: Vec<u8>, more: bool, fut: Py<PyAny>) -> PyResult<()> {
        self.send(
            py,
            Cmd::Body {
                data: Bytes::from(data),
                more,
                fut,
            },
        )
    }

    #[pyo3(signature = (started, error))]
    fn finish(&self, started: bool, error: Option<String>) {
        let _ = self.tx.send(Cmd::Finish { started, error });
    }
}

impl Conn {
    fn send(&self, py: Python<'_>, cmd: Cmd) -> PyResult<()> {
        if let Err(e) = self.tx.send(cmd)
            && let Cmd::Start { fut, .. } | Cmd::Body { fut, .. } = e.0
        {
            let err = pyo3::exceptions::PyOSError::new_err("the client disconnected");
            fut.call_method1(py, "set_exception", (err,))?;
        }
        Ok(())
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
    validate_status(&line).map_err(|e| e.to_string())?;
    let mut head = format!("Status: {line}\r\n").into_bytes();
    for (name, value) in headers {
        // latin-1, as HTTP header bytes are.
        let name: String = name.iter().map(|&b| char::from(b)).collect();
        let value: String = value.iter().map(|&b| char::from(b)).collect();
        validate_header(&name, &value).map_err(|e| format!("ASGI: {e}"))?;
        head.extend(name.chars().map(|c| c as u8));
        head.extend_from_slice(b": ");
        head.extend(value.chars().map(|c| c as u8));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
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
    bridge: Bridge,
    cfg: &AsgiConfig,
) -> Result<(), String> {
    let fail = |what: &str, e: PyErr| format!("{what}: {}", crate::format_exception(py, &e));
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
        let Request {
            params,
            body,
            abort,
            ..
        } = request;
        // A HEAD response carries no body, whatever the app sends.
        let head_only = params.get(b"REQUEST_METHOD") == Some(b"HEAD");
        let (tx, rx) = unbounded_channel();
        self.shared.push(|q| q.new.push(NewRequest { params, tx }));
        drive(&self.shared, head_only, rx, body, abort, response).await;
    }
}

async fn drive(
    shared: &Shared,
    head_only: bool,
    mut rx: UnboundedReceiver<Cmd>,
    mut body: BodyReceiver,
    abort: pyfcgi_server::AbortSignal,
    response: ResponseWriter,
) {
    let mut response = Some(response);
    let mut pending_read: Option<Py<PyAny>> = None;
    let mut held_head: Option<Vec<u8>> = None;
    let mut body_sent = false;
    let mut body_done = false;
    let mut gone = false;
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else {
                    // The loop dropped the request without finishing it (it stopped).
                    if let Some(r) = response.take() {
                        let _ = write_error(r).await;
                    }
                    break;
                };
                match cmd {
                    Cmd::Read(fut) => {
                        if pending_read.is_some() {
                            shared.finish(fut, Outcome::Failed("ASGI: receive() called while another receive() is still waiting".into()));
                        } else if gone || response.is_none() {
                            shared.finish(fut, Outcome::Disconnect);
                        } else {
                            pending_read = Some(fut);
                        }
                    }
                    Cmd::Start { head, fut } => match head {
                        // Kept until the first body piece, so that an error before any body
                        // still becomes a 500, and head and body leave in one write.
                        Ok(head) if response.is_some() => {
                            held_head = Some(head);
                            shared.finish(fut, Outcome::Done);
                        }
                        Ok(_) => shared.finish(fut, Outcome::Failed("the response has already ended".into())),
                        Err(why) => shared.finish(fut, Outcome::Failed(why)),
                    },
                    Cmd::Body { mut data, more, fut } => {
                        let Some(mut r) = response.take() else {
                            shared.finish(fut, Outcome::Failed("the response has already ended".into()));
                            continue;
                        };
                        body_sent = true;
                        if head_only {
                            data = Bytes::new();
                        }
                        let mut ok = true;
                        if let Some(head) = held_head.take() {
                            let mut first = head;
                            first.extend_from_slice(&data);
                            data = Bytes::from(first);
                        }
                        if !data.is_empty() && (more || !r.defer(&data)) {
                            ok = r.write(data).await.is_ok();
                        }
                        if more && ok {
                            response = Some(r);
                        } else if ok {
                            ok = r.end(0).await.is_ok();
                        }
                        if !ok {
                            gone = true;
                        }
                        shared.finish(fut, if ok { Outcome::Done } else { Outcome::Failed("the client disconnected".into()) });
                        if response.is_none()
                            && let Some(f) = pending_read.take()
                        {
                            shared.finish(f, Outcome::Disconnect);
                        }
                    }
                    Cmd::Finish { started, error } => {
                        if let Some(e) = &error {
                            error!("ASGI application error: {e}");
                        }
                        if let Some(mut r) = response.take() {
                            match held_head.take() {
                                // Nothing sent yet: an error is still a 500.
                                _ if error.is_some() && !body_sent => {
                                    let _ = write_error(r).await;
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
                        if let Some(f) = pending_read.take() {
                            shared.finish(f, Outcome::Disconnect);
                        }
                        break;
                    }
                }
            }
            chunk = body.chunk(), if pending_read.is_some() && !body_done => {
                let outcome = match chunk {
                    Ok(Some(data)) => Outcome::Chunk(data, true),
                    Ok(None) => {
                        body_done = true;
                        Outcome::Chunk(Bytes::new(), false)
                    }
                    Err(_) => {
                        gone = true;
                        Outcome::Disconnect
                    }
                };
                if let Some(f) = pending_read.take() {
                    shared.finish(f, outcome);
                }
            }
            () = abort.aborted(), if pending_read.is_some() && !gone => {
                gone = true;
                if let Some(f) = pending_read.take() {
                    shared.finish(f, Outcome::Disconnect);
                }
            }
        }
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
