//! `start_response`, the `write()` callable, `wsgi.file_wrapper`, and how response bytes reach
//! the connection.
//!
//! Validation follows PEP 3333: a malformed status, a header that is not a pair of `str`, a
//! header name that is not an HTTP token, a value with CR/LF or a character outside latin-1,
//! or a hop-by-hop header is an application error (the request answers 500); nothing the app
//! passes can split a header on the wire. Headers go out with the first non-empty body chunk.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use pyfcgi_proto::head;
use pyfcgi_server::observe::RequestId;
use pyfcgi_server::{AbortSignal, ResponseWriter};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use tracing::warn;

// Four independent facts about one response (head out, excess logged, connection gone,
// ended at its Content-Length), each read on its own: not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct ResponseState {
    /// Taken out while sending (the GIL is released then; the lock must not be held).
    pub(crate) writer: Option<ResponseWriter>,
    pub(crate) status: Option<String>,
    headers: Vec<(String, String)>,
    pub(crate) headers_sent: bool,
    content_length: Option<u64>,
    pub(crate) body_sent: u64,
    overflow_logged: bool,
    pub(crate) request: RequestId,
    /// The connection is gone; further writes fail fast.
    pub(crate) closed: bool,
    /// The body reached its Content-Length and the response was ended with it, before the
    /// app's iterable was exhausted and closed (the writer is gone; later bytes are excess).
    pub(crate) ended: bool,
    /// Fires on FCGI_ABORT_REQUEST: the next write fails like a closed connection.
    abort: AbortSignal,
    /// Whether body bytes go out (HEAD, 204 and 304 responses end with the head).
    body: BodyRule,
}

/// Whether the app's body bytes are sent or consumed and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    Send,
    /// A HEAD request, whatever the status.
    DropForHead,
    /// A 204 or 304 status.
    DropForStatus,
}

/// The `start_response` callable of one request.
#[pyclass(module = "pyfcgi", frozen)]
pub struct StartResponse {
    pub(crate) state: Mutex<ResponseState>,
}

impl StartResponse {
    pub(crate) fn new(writer: ResponseWriter, request: RequestId, head_request: bool) -> Self {
        Self {
            state: Mutex::new(ResponseState {
                writer: Some(writer),
                status: None,
                headers: Vec::new(),
                headers_sent: false,
                content_length: None,
                body_sent: 0,
                overflow_logged: false,
                request,
                closed: false,
                ended: false,
                abort: AbortSignal::default(),
                body: if head_request {
                    BodyRule::DropForHead
                } else {
                    BodyRule::Send
                },
            }),
        }
    }

    /// Makes writes fail once `abort` fires, so an aborted request stops (and its iterable
    /// is closed) instead of streaming to a web server that gave up on it.
    pub(crate) fn watch_abort(mut self, abort: AbortSignal) -> Self {
        self.state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .abort = abort;
        self
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ResponseState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `data` as body bytes (with the head first if not sent yet). Empty data sends
    /// nothing, not even the head.
    pub(crate) fn send_body(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            let st = self.lock();
            if st.status.is_none() {
                return Err(no_start_response());
            }
            return Ok(());
        }
        self.send(py, data, false, false)
    }

    /// [`Self::send_body`] for the last chunk of a body known to be complete (a list): kept
    /// back when small, to leave with the end in one write.
    pub(crate) fn send_last_body(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return self.send_body(py, data);
        }
        self.send(py, data, false, true)
    }

    /// Sends the head if it has not gone out yet (an empty body).
    pub(crate) fn send_head_if_unsent(&self, py: Python<'_>) -> PyResult<()> {
        self.send(py, &[], true, false)
    }

    fn send(&self, py: Python<'_>, data: &[u8], head_only: bool, last: bool) -> PyResult<()> {
        let (out, writer, complete) = {
            let mut st = self.lock();
            if st.closed || st.abort.is_aborted() {
                st.closed = true;
                return Err(client_gone());
            }
            if st.status.is_none() {
                return Err(no_start_response());
            }
            if head_only && st.headers_sent {
                return Ok(());
            }
            let allowed = match st.content_length {
                // HTTP: a response to HEAD, a 204 and a 304 end with the head, whatever the
                // app yields (its iterable is still consumed and closed).
                _ if st.body != BodyRule::Send => 0,
                Some(cl) => usize::try_from(cl.saturating_sub(st.body_sent))
                    .unwrap_or(usize::MAX)
                    .min(data.len()),
                None => data.len(),
            };
            if allowed < data.len() && !st.overflow_logged {
                st.overflow_logged = true;
                warn!(request = %st.request, content_length = ?st.content_length,
                    "the application sent more bytes than its Content-Length header; the excess is dropped");
            }
            if allowed == 0 && st.headers_sent {
                return Ok(());
            }
            let mut out = BytesMut::new();
            if !st.headers_sent {
                out = head_bytes(
                    st.status.as_deref().unwrap_or("500 Internal Server Error"),
                    &st.headers,
                    allowed,
                );
                st.headers_sent = true;
            }
            out.extend_from_slice(&data[..allowed]);
            st.body_sent += allowed as u64;
            let Some(writer) = st.writer.take() else {
                return Err(PyOSError::new_err(
                    "the response is being written by another thread",
                ));
            };
            let complete = st.body == BodyRule::Send && st.content_length == Some(st.body_sent);
            (out.freeze(), writer, complete)
        };
        // The body is complete: end the response with it, in one write, rather than after
        // the app's iterable runs out and its close() returns (Flask's and Django's responses
        // are iterators; that was a second write per request, and the client waited for
        // close()). Anything the iterable yields later is excess and dropped, as above.
        let (mut writer, out) = if complete && !head_only {
            match writer.try_write_and_end(out, 0) {
                Ok(result) => {
                    let mut st = self.lock();
                    return if result.is_ok() {
                        st.ended = true;
                        Ok(())
                    } else {
                        st.closed = true;
                        Err(client_gone())
                    };
                }
                Err(back) => back,
            }
        } else {
            (writer, out)
        };
        if last && writer.defer(&out) {
            self.lock().writer = Some(writer);
            return Ok(());
        }
        // Send without releasing the GIL when there is room (the common case); wait for
        // room with the GIL released otherwise.
        let result = match writer.try_write(out) {
            Ok(None) => Ok(writer),
            Ok(Some(out)) => py.detach(|| writer.blocking_write(out).map(|()| writer)),
            Err(e) => Err(e),
        };
        let mut st = self.lock();
        if let Ok(w) = result {
            st.writer = Some(w);
            Ok(())
        } else {
            st.closed = true;
            Err(client_gone())
        }
    }

    /// Takes the writer to end the response, with the head sent if nothing was.
    pub(crate) fn take_writer(&self) -> Option<ResponseWriter> {
        self.lock().writer.take()
    }

    /// Bytes promised by Content-Length but not sent (a short response), if any.
    pub(crate) fn shortfall(&self) -> Option<(u64, u64)> {
        let st = self.lock();
        if st.body != BodyRule::Send {
            return None;
        }
        st.content_length
            .filter(|cl| st.body_sent < *cl)
            .map(|cl| (cl, st.body_sent))
    }
}

fn no_start_response() -> PyErr {
    PyRuntimeError::new_err(
        "the application produced a response body before calling start_response()",
    )
}

fn client_gone() -> PyErr {
    PyOSError::new_err("the client went away; the response cannot be delivered")
}

/// The CGI head: `Status:` line, headers, blank line.
fn head_bytes(status: &str, headers: &[(String, String)], body_hint: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + headers.len() * 40 + body_hint);
    head::encode_head(&mut out, status, headers);
    out
}

pub(crate) fn validate_status(status: &str) -> PyResult<()> {
    head::validate_status(status).map_err(|e| PyValueError::new_err(e.to_string()))
}

pub(crate) fn validate_header(name: &str, value: &str) -> PyResult<()> {
    head::validate_header(name, value).map_err(|e| {
        // proto's messages name no interface; these two rules and their fixes are WSGI's.
        PyValueError::new_err(match e {
            head::HeadError::HopByHop(name) => format!(
                "hop-by-hop header {name:?} is not allowed from a WSGI application (PEP 3333): it describes the connection, which the web server manages"
            ),
            head::HeadError::StatusHeader => {
                "a header named 'Status' is not allowed; pass the status to start_response()"
                    .to_owned()
            }
            e => e.to_string(),
        })
    })
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, response_headers, exc_info=None)` → `write`.
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        slf: &Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let st = this.lock();
            if let Some(info) = exc_info {
                if st.headers_sent {
                    // PEP 3333: re-raise the original exception when headers are already out.
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
            } else if st.status.is_some() {
                return Err(PyRuntimeError::new_err(
                    "start_response() called a second time without exc_info (PEP 3333)",
                ));
            }
        }
        let status: String = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("status must be a str, like '200 OK'"))?
            .to_str()?
            .to_owned();
        validate_status(&status)?;
        let mut list = Vec::new();
        let mut content_length = None;
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item
                .cast::<PyTuple>()
                .ok()
                .filter(|t| t.len() == 2)
                .ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "each header must be a (name, value) tuple of str, got {item}"
                    ))
                })?;
            let name = pair.get_item(0)?;
            let value = pair.get_item(1)?;
            let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
                return Err(PyTypeError::new_err(format!(
                    "header names and values must be str, got {item}"
                )));
            };
            let (name, value) = (name.to_str()?.to_owned(), value.to_str()?.to_owned());
            validate_header(&name, &value)?;
            let previous_cl = content_length;
            if name.eq_ignore_ascii_case("content-length") {
                // Digits only: Rust's parse also takes "+5", which web servers refuse.
                let digits = value.trim();
                content_length = Some(
                    digits
                        .parse::<u64>()
                        .ok()
                        .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "invalid Content-Length {value:?}: it must be a non-negative integer"
                            ))
                        })?,
                );
            }
            if name.eq_ignore_ascii_case("content-length")
                && previous_cl.is_some()
                && previous_cl != content_length
            {
                return Err(PyValueError::new_err(
                    "two Content-Length headers with different values; send one",
                ));
            }
            list.push((name, value));
        }
        let mut st = this.lock();
        if st.body != BodyRule::DropForHead {
            st.body = if head::status_is_bodiless(&status) {
                BodyRule::DropForStatus
            } else {
                BodyRule::Send
            };
        }
        st.status = Some(status);
        st.headers = list;
        st.content_length = content_length;
        Ok(Write {
            response: slf.clone().unbind(),
        })
    }
}

/// The `write(data)` callable `start_response` returns (PEP 3333's imperative API).
#[pyclass(module = "pyfcgi", frozen)]
pub struct Write {
    response: Py<StartResponse>,
}

#[pymethods]
impl Write {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        self.response.get().send_body(py, data.as_bytes())
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates the file in blocks; when the file has
/// a usable `fileno()`, the server sends it from Rust without holding the GIL.
#[pyclass(module = "pyfcgi", frozen)]
pub struct FileWrapper {
    pub(crate) filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        Self {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok((data.len()? > 0).then_some(data))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// The generic error page (`detail` only with `--detailed-errors`), with the request id that
/// the log lines and the access log line of the request carry too.
pub(crate) fn error_page(
    status: &str,
    message: &str,
    request: RequestId,
    detail: Option<&str>,
) -> Bytes {
    let mut body = format!("{message}\n\nRequest id: {request}\n");
    if let Some(d) = detail {
        let _ = write!(body, "\n{d}");
    }
    let mut out = BytesMut::new();
    let _ = write!(
        StrBuf(&mut out),
        "Status: {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
    out.freeze()
}

struct StrBuf<'a>(&'a mut BytesMut);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_cgi_style() {
        let h = head_bytes("200 OK", &[("A".into(), "caf\u{e9}".into())], 0);
        assert_eq!(&h[..], b"Status: 200 OK\r\nA: caf\xe9\r\n\r\n");
    }

    #[test]
    fn error_page_has_length_and_id() {
        let p = error_page(
            "500 Internal Server Error",
            "Internal Server Error",
            RequestId::from_seq(42),
            None,
        );
        let s = String::from_utf8(p.to_vec()).unwrap();
        assert!(s.starts_with("Status: 500 Internal Server Error\r\n"));
        assert!(s.contains(&format!("Request id: {}\n", RequestId::from_seq(42))));
        let body = s.split("\r\n\r\n").nth(1).unwrap();
        assert!(s.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
