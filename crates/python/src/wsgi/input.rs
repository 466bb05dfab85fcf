//! `wsgi.input`: the request body as a binary file, streamed from the connection.
//!
//! Never reads past `CONTENT_LENGTH` (PEP 3333); without one, reads to the end of the body
//! (`wsgi.input_terminated` is True). Waits for body bytes with the GIL released.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use pyfcgi_server::BodyReceiver;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

struct InputState {
    /// Taken out while waiting for a chunk (the GIL is released then; the lock must not be).
    body: Option<BodyReceiver>,
    /// Unread part of the last chunk.
    buf: Bytes,
    /// Bytes still allowed by CONTENT_LENGTH.
    remaining: Option<u64>,
    /// Bytes read so far, checked against the body size limit.
    total: u64,
    max_size: u64,
    eof: bool,
}

/// The `wsgi.input` object.
#[pyclass(module = "pyfcgi", frozen)]
pub struct InputStream {
    state: Mutex<InputState>,
}

impl InputStream {
    /// Wraps a request body. `content_length` caps what is read; `max_size` fails reads of a
    /// body without length that grows past the limit.
    pub fn new(body: BodyReceiver, content_length: Option<u64>, max_size: u64) -> Self {
        Self {
            state: Mutex::new(InputState {
                body: Some(body),
                buf: Bytes::new(),
                remaining: content_length,
                total: 0,
                max_size,
                eof: content_length == Some(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `buf` non-empty unless the body is over. Returns false at the end.
    fn fill(&self, py: Python<'_>) -> PyResult<bool> {
        let mut body = {
            let mut st = self.lock();
            if !st.buf.is_empty() {
                return Ok(true);
            }
            if st.eof {
                return Ok(false);
            }
            match st.body.take() {
                Some(b) => b,
                None => {
                    return Err(PyOSError::new_err(
                        "wsgi.input is being read by another thread",
                    ));
                }
            }
        };
        let chunk = py.detach(|| body.blocking_chunk());
        let mut st = self.lock();
        st.body = Some(body);
        match chunk {
            Ok(Some(mut data)) => {
                if let Some(rem) = st.remaining {
                    let keep = usize::try_from(rem).unwrap_or(usize::MAX).min(data.len());
                    data.truncate(keep);
                    st.remaining = Some(rem - keep as u64);
                    if rem - keep as u64 == 0 {
                        st.eof = true;
                    }
                }
                st.total += data.len() as u64;
                if st.total > st.max_size {
                    st.eof = true;
                    return Err(PyValueError::new_err(format!(
                        "the request body is larger than the configured maximum of {} bytes (--max-body-size)",
                        st.max_size
                    )));
                }
                st.buf = data;
                Ok(!st.buf.is_empty() || !st.eof)
            }
            Ok(None) => {
                st.eof = true;
                Ok(false)
            }
            Err(e) => {
                st.eof = true;
                Err(PyOSError::new_err(format!("{e}")))
            }
        }
    }

    /// Reads up to `limit` bytes (all when None), stopping after a newline when `line`.
    fn read_impl<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
        line: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            if limit.is_some_and(|l| len >= l) {
                break;
            }
            if !self.fill(py)? {
                let st = self.lock();
                if st.buf.is_empty() {
                    break;
                }
            }
            let mut st = self.lock();
            if st.buf.is_empty() {
                continue;
            }
            let mut take = limit.map_or(st.buf.len(), |l| (l - len).min(st.buf.len()));
            let mut done = false;
            if line && let Some(nl) = st.buf[..take].iter().position(|&b| b == b'\n') {
                take = nl + 1;
                done = true;
            }
            let piece = st.buf.split_to(take);
            len += piece.len();
            parts.push(piece);
            if done {
                break;
            }
        }
        if parts.len() == 1 {
            return Ok(PyBytes::new(py, &parts[0]));
        }
        PyBytes::new_with(py, len, |out| {
            let mut at = 0;
            for p in &parts {
                out[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            Ok(())
        })
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl InputStream {
    /// `read(size=-1)`: up to `size` bytes, or the rest of the body.
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.read_impl(py, size_arg(size), false)
    }

    /// `readline(size=-1)`: up to and including the next newline.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.read_impl(py, size_arg(size), true)
    }

    /// `readlines(hint=-1)`: lines until their total size reaches `hint`.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|h| *h > 0);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.read_impl(py, None, true)?;
            let n = line.as_bytes().len();
            if n == 0 {
                break;
            }
            lines.append(line)?;
            total += n;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_impl(py, None, true)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
