//! `_Conn`: one request as glue.py sees it. `receive()` and `send()` call it; it checks what
//! can be checked at once (the head, a closed client, the send window) and queues the rest as
//! `Cmd`s for the request's task (`Drive`, in mod.rs).

use std::sync::Arc;

use bytes::Bytes;
use pyfcgi_server::observe::RequestId;
use pyo3::prelude::*;
use tokio::sync::mpsc::UnboundedSender;
use tracing::info;

use super::input::disconnect;
use super::response::response_head;

/// A step the app asked for, carried out by the request's task.
pub(super) enum Cmd {
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

/// What a request's task and its `_Conn` share without a round trip.
#[derive(Default)]
pub(super) struct Link {
    /// Body bytes `send()` accepted without waiting that are not written yet.
    pub(super) unwritten: std::sync::atomic::AtomicUsize,
    /// The client is gone: further `send()` calls raise.
    pub(super) closed: std::sync::atomic::AtomicBool,
}

fn disconnected() -> PyErr {
    pyo3::exceptions::PyOSError::new_err("the client disconnected")
}

/// One request, as glue.py sees it.
#[pyclass(name = "_Conn")]
pub(super) struct Conn {
    /// The request id, for the log.
    pub(super) id: RequestId,
    pub(super) tx: UnboundedSender<Cmd>,
    /// The first `receive()` message, when the body was there before the app started.
    pub(super) first: Option<Py<PyAny>>,
    pub(super) link: Arc<Link>,
    pub(super) event_loop: Option<Py<PyAny>>,
    /// `--send-window`.
    pub(super) window: usize,
    /// The request is HEAD.
    pub(super) head_request: bool,
    /// No body may follow the head (HEAD, 204, 304): body bytes are dropped.
    pub(super) bodiless: bool,
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
        let head = response_head(status, &headers, self.id)
            .map_err(pyo3::exceptions::PyRuntimeError::new_err)?;
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
