//! The WSGI side of a request (PEP 3333), run on a Python worker thread with the GIL held:
//! build the environ, call the application, send what it returns, always call `close()`.
//!
//! * [`environ`]: the environ dict.
//! * [`input`]: the `wsgi.input` stream.
//! * [`response`]: `start_response`, `write()`, `wsgi.file_wrapper`, error pages.

pub(crate) mod environ;
pub mod input;
pub mod response;

use pyfcgi_server::observe::RequestId;
use pyfcgi_server::{Request, ResponseWriter};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::format_exception;
use crate::log_stream::LogStream;
use input::InputStream;
use response::{FileWrapper, StartResponse, error_page};

/// Per-process WSGI settings.
#[allow(clippy::struct_excessive_bools)] // independent switches, each a documented flag
#[derive(Debug, Clone)]
pub struct WsgiConfig {
    /// `wsgi.multithread`.
    pub multithread: bool,
    /// `wsgi.multiprocess`.
    pub multiprocess: bool,
    /// Forces `wsgi.url_scheme` (`--url-scheme`).
    pub url_scheme: Option<String>,
    /// Mount prefix: `SCRIPT_NAME`, stripped from `PATH_INFO` (`--script-name`).
    pub script_name: Option<String>,
    /// Put tracebacks in 500 pages (`--detailed-errors`); off by default.
    pub detailed_errors: bool,
    /// Also send the traceback on FCGI_STDERR (`--stderr-errors`). Off by default: IIS turns
    /// any STDERR output into a 500 page showing it to every visitor.
    pub stderr_errors: bool,
    /// Largest request body accepted, in bytes (`--max-body-size`).
    pub max_body_size: u64,
    /// Fired when the app raises SystemExit/KeyboardInterrupt: the process shuts down
    /// gracefully.
    pub shutdown: CancellationToken,
    /// `--request-timeout`: longer requests get a 504 and their Python stack logged.
    pub request_timeout: Option<std::time::Duration>,
    /// A request still running at twice the timeout stops the process (to be replaced).
    pub exit_when_stuck: bool,
    /// `--impersonate`: each request runs as the named pipe's client (IIS's user).
    pub impersonate: bool,
}

impl Default for WsgiConfig {
    fn default() -> Self {
        Self {
            multithread: false,
            multiprocess: false,
            url_scheme: None,
            script_name: None,
            detailed_errors: false,
            stderr_errors: false,
            max_body_size: 1 << 30,
            shutdown: CancellationToken::new(),
            request_timeout: None,
            exit_when_stuck: false,
            impersonate: false,
        }
    }
}

/// How a request failed before any header went out, for the 500 page.
enum Failure {
    /// The app raised; the traceback is logged and (with --detailed-errors) shown.
    Exception(String),
    /// SystemExit/KeyboardInterrupt from the app.
    Exit(String),
}

/// Runs one request through `app`. Never raises: every outcome ends the FastCGI request.
pub fn run_request(
    py: Python<'_>,
    app: &Py<PyAny>,
    request: Request,
    response: ResponseWriter,
    cfg: &WsgiConfig,
) {
    let id = request.request_id();
    let Request {
        params,
        body,
        abort,
        ..
    } = request;
    let content_length = params
        .get_str("CONTENT_LENGTH")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let head_request = params
        .get(b"REQUEST_METHOD")
        .is_some_and(|m| m.eq_ignore_ascii_case(b"HEAD"));
    let start = match Py::new(
        py,
        StartResponse::new(response, id, head_request).watch_abort(abort),
    ) {
        Ok(s) => s,
        Err(e) => {
            error!(
                request = %id,
                "cannot create start_response: {}",
                format_exception(py, &e)
            );
            return;
        }
    };
    crate::log_stream::CURRENT_REQUEST.with(|c| c.set(Some(id)));
    let outcome = call_app(py, app, &params, body, content_length, &start, cfg, id);
    finish(py, start.get(), outcome, cfg, id, &params);
    crate::log_stream::CURRENT_REQUEST.with(|c| c.set(None));
}

#[allow(clippy::too_many_arguments)]
fn call_app(
    py: Python<'_>,
    app: &Py<PyAny>,
    params: &pyfcgi_proto::Params,
    body: pyfcgi_server::BodyReceiver,
    content_length: Option<u64>,
    start: &Py<StartResponse>,
    cfg: &WsgiConfig,
    id: RequestId,
) -> Result<(), PyErr> {
    let environ = environ::build(py, params, cfg)?;
    environ.set_item(
        "wsgi.input",
        Py::new(
            py,
            InputStream::new(body, content_length, cfg.max_body_size),
        )?,
    )?;
    environ.set_item("wsgi.errors", Py::new(py, LogStream::for_request(id))?)?;
    let result = app.bind(py).call1((environ, start.bind(py)))?;
    let sent = send_result(py, &result, start.get());
    // PEP 3333: close() is called however the iteration ended.
    let closed = if result.hasattr("close").unwrap_or(false) {
        result.call_method0("close").map(drop)
    } else {
        Ok(())
    };
    sent?;
    closed
}

/// Sends the app's iterable. Lists and tuples (the common `[body]`) skip the iterator
/// protocol; a `FileWrapper` over a real file is sent from Rust with the GIL released.
fn send_result(py: Python<'_>, result: &Bound<'_, PyAny>, start: &StartResponse) -> PyResult<()> {
    if let Ok(wrapper) = result.cast::<FileWrapper>()
        && let Some(sent) = send_file(py, wrapper.get(), start)?
    {
        return Ok(sent);
    }
    let item_bytes = |item: &Bound<'_, PyAny>, last: bool| -> PyResult<()> {
        let b = item.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "the application's iterable yielded {}, not bytes",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        if last {
            start.send_last_body(py, b.as_bytes())
        } else {
            start.send_body(py, b.as_bytes())
        }
    };
    // A list or tuple is complete already: its last chunk may wait for the end, so a small
    // response leaves in one write. An iterator's chunks go out as they come (PEP 3333).
    if let Ok(list) = result.cast::<PyList>() {
        let n = list.len();
        for (i, item) in list.iter().enumerate() {
            item_bytes(&item, i + 1 == n)?;
        }
    } else if let Ok(tuple) = result.cast::<PyTuple>() {
        let n = tuple.len();
        for (i, item) in tuple.iter().enumerate() {
            item_bytes(&item, i + 1 == n)?;
        }
    } else {
        for item in result.try_iter()? {
            item_bytes(&item?, false)?;
        }
    }
    Ok(())
}

/// Sends a `FileWrapper`'s file straight from its descriptor, from the current position.
/// Returns `None` when the file has no usable descriptor (then it is iterated in Python).
#[cfg(unix)]
fn send_file(py: Python<'_>, wrapper: &FileWrapper, start: &StartResponse) -> PyResult<Option<()>> {
    use std::io::Read;
    use std::os::fd::BorrowedFd;
    let f = wrapper.filelike.bind(py);
    let Ok(fd) = f.call_method0("fileno").and_then(|n| n.extract::<i32>()) else {
        return Ok(None);
    };
    // Python may hold buffered bytes ahead of the descriptor's offset; tell() syncs them.
    let pos: u64 = match f.call_method0("tell").and_then(|p| p.extract()) {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    // SAFETY: `fd` is open (fileno() just returned it) and only borrowed to duplicate it.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    let Ok(owned) = dup else { return Ok(None) };
    let mut file = std::fs::File::from(owned);
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(pos))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = py
            .detach(|| file.read(&mut buf))
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        if n == 0 {
            return Ok(Some(()));
        }
        start.send_body(py, &buf[..n])?;
    }
}

#[cfg(not(unix))]
fn send_file(
    _py: Python<'_>,
    _wrapper: &FileWrapper,
    _start: &StartResponse,
) -> PyResult<Option<()>> {
    Ok(None)
}

/// Ends the FastCGI request for every outcome.
fn finish(
    py: Python<'_>,
    start: &StartResponse,
    outcome: PyResult<()>,
    cfg: &WsgiConfig,
    id: RequestId,
    params: &pyfcgi_proto::Params,
) {
    let method = params.get_str("REQUEST_METHOD").unwrap_or("-");
    let path = params
        .get_str("REQUEST_URI")
        .or_else(|| params.get_str("PATH_INFO"))
        .unwrap_or("-");
    let failure = match outcome {
        Ok(()) => match start.send_head_if_unsent(py) {
            Ok(()) => None,
            Err(e) => Some(Failure::Exception(format_exception(py, &e))),
        },
        Err(e) => {
            let tb = format_exception(py, &e);
            if e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py) {
                Some(Failure::Exit(tb))
            } else {
                Some(Failure::Exception(tb))
            }
        }
    };
    let (headers_sent, closed, ended) = {
        let st = start.lock();
        (st.headers_sent, st.closed, st.ended)
    };
    let Some(writer) = start.take_writer() else {
        if ended {
            // The response went out whole when the body reached its Content-Length; what
            // went wrong afterwards (in the iterable's tail or its close()) is only logged.
            match failure {
                None => {}
                Some(Failure::Exit(tb)) => {
                    error!(request = %id, method, path,
                        "the application raised SystemExit/KeyboardInterrupt after its response was complete; shutting down gracefully:\n{tb}");
                    cfg.shutdown.cancel();
                }
                Some(Failure::Exception(tb)) => {
                    error!(request = %id, method, path,
                        "application error after its response was complete (the client has it):\n{tb}");
                }
            }
            return;
        }
        if closed {
            // The write that found the connection gone consumed the writer.
            info!(
                request = %id,
                method, path, "client went away before the response was complete"
            );
        } else {
            error!(
                request = %id,
                "response writer missing at the end of the request"
            );
        }
        return;
    };
    let app_status = match failure {
        None => {
            // HEAD, 204 and 304 responses carry no body (shortfall() is None for them).
            if let Some((promised, sent)) = start.shortfall() {
                warn!(
                    request = %id,
                    method,
                    path,
                    promised,
                    sent,
                    "short response: the application sent fewer bytes than its Content-Length"
                );
            }
            0
        }
        Some(_) if closed => {
            info!(
                request = %id,
                method, path, "client went away before the response was complete"
            );
            1
        }
        Some(failure) => {
            let (tb, exit) = match &failure {
                Failure::Exception(tb) => (tb.as_str(), false),
                Failure::Exit(tb) => (tb.as_str(), true),
            };
            if exit {
                error!(
                    request = %id,
                    method,
                    path,
                    "the application raised SystemExit/KeyboardInterrupt; shutting down gracefully:\n{tb}"
                );
                cfg.shutdown.cancel();
            } else {
                error!(request = %id, method, path, "application error:\n{tb}");
            }
            let mut writer = writer;
            if cfg.stderr_errors {
                let tb = bytes::Bytes::from(tb.to_owned());
                writer = match py.detach(move || writer.blocking_write_stderr(tb).map(|()| writer))
                {
                    Ok(w) => w,
                    Err(_) => return,
                };
            }
            if headers_sent {
                warn!(
                    request = %id,
                    "the response had already started; ending it early with a non-zero application status"
                );
                return end_with(py, writer, None, 1, id);
            }
            let page = error_page(
                "500 Internal Server Error",
                "Internal Server Error: the application raised an exception. The server log has the details.",
                id,
                cfg.detailed_errors.then_some(tb),
            );
            return end_with(py, writer, Some(page), 0, id);
        }
    };
    end_with(py, writer, None, app_status, id);
}

fn end_with(
    py: Python<'_>,
    mut writer: ResponseWriter,
    page: Option<bytes::Bytes>,
    app_status: u32,
    id: RequestId,
) {
    let mut page = page;
    // Fast path without releasing the GIL: everything fits in the queue.
    if let Some(p) = page.take() {
        let Ok(rest) = writer.try_write(p) else {
            debug!(
                request = %id,
                "connection closed before the end of the response"
            );
            return;
        };
        page = rest;
    }
    if page.is_none() {
        writer = match writer.try_end(app_status) {
            Ok(Ok(())) => return,
            Ok(Err(_)) => {
                debug!(
                    request = %id,
                    "connection closed before the end of the response"
                );
                return;
            }
            Err(w) => w,
        };
    }
    let done = py.detach(move || {
        if let Some(p) = page {
            writer.blocking_write(p)?;
        }
        writer.blocking_end(app_status)
    });
    if done.is_err() {
        debug!(
            request = %id,
            "connection closed before the end of the response"
        );
    }
}
