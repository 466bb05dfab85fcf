//! The event loop thread: `AsgiHost` starts it (`run_loop`, `new_loop`) and runs the
//! lifespan; request tasks reach it through one queue (`Shared`) and a wake-up socket it
//! watches; `_Bridge` is the loop's side of that queue, drained by glue.py.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use pyfcgi_proto::Params;
use pyfcgi_server::observe::RequestId;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use super::conn::{Cmd, Conn, Link};
use super::input::{Outcome, outcome_value};
use super::{AsgiConfig, AsgiHandler, LoopKind, scope};
use crate::PythonError;

struct Finished {
    fut: Py<PyAny>,
    outcome: Outcome,
}

pub(super) struct NewRequest {
    pub(super) id: RequestId,
    pub(super) params: Params,
    pub(super) tx: UnboundedSender<Cmd>,
    /// The first body chunk, when it had arrived before the request was queued.
    pub(super) first: Option<Outcome>,
    pub(super) link: Arc<Link>,
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
pub(super) struct Shared {
    queue: Mutex<Queue>,
    wake: WakeWriter,
    pub(super) cfg: AsgiConfig,
    /// Lifespan reports from the loop: (stage, ok, message).
    lifespan_tx: Mutex<std::sync::mpsc::Sender<(String, bool, String)>>,
    /// The loop thread's `threading.get_ident()`, for its stack on a timeout.
    pub(super) loop_ident: std::sync::atomic::AtomicU64,
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

    /// Queues a new request for the loop.
    pub(super) fn request(&self, r: NewRequest) {
        self.push(|q| q.new.push(r));
    }

    pub(super) fn finish(&self, fut: Py<PyAny>, outcome: Outcome) {
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
                    id: r.id,
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
                pyfcgi_server::sched::app_thread();
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
