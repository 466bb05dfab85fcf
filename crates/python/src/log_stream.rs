//! Text streams that write into the log: `sys.stdout`, `sys.stderr` and each request's
//! `wsgi.errors`. Output is line-buffered; a partial line is logged on `flush()` or when the
//! stream is dropped.

use std::cell::Cell;
use std::sync::Mutex;

use pyfcgi_server::observe::RequestId;
use pyo3::prelude::*;
use tracing::Level;
use tracing::field::display;

thread_local! {
    /// The request the current worker thread is running (`None` between requests).
    pub(crate) static CURRENT_REQUEST: Cell<Option<RequestId>> = const { Cell::new(None) };
}

/// A file-like object whose lines become log events.
#[pyclass(module = "pyfcgi", frozen)]
pub struct LogStream {
    name: &'static str,
    level: Level,
    /// The request this stream belongs to (`wsgi.errors`), `None` for process-wide streams.
    request: Option<RequestId>,
    partial: Mutex<String>,
}

impl LogStream {
    /// A process-wide stream (`sys.stdout`, `sys.stderr`).
    pub fn new(name: &'static str, level: Level) -> Self {
        Self {
            name,
            level,
            request: None,
            partial: Mutex::new(String::new()),
        }
    }

    /// A request's `wsgi.errors`.
    pub fn for_request(request: RequestId) -> Self {
        Self {
            name: "wsgi.errors",
            level: Level::WARN,
            request: Some(request),
            partial: Mutex::new(String::new()),
        }
    }

    fn emit(&self, line: &str) {
        let stream = self.name;
        // sys.stdout/sys.stderr are shared: attribute a line to the request this worker
        // thread is running, if any (a line outside any request has no `request` field).
        let request = self
            .request
            .or_else(|| CURRENT_REQUEST.with(Cell::get))
            .map(display);
        match self.level {
            Level::ERROR => tracing::error!(target: "pyfcgi::app", stream, request, "{line}"),
            Level::WARN => tracing::warn!(target: "pyfcgi::app", stream, request, "{line}"),
            Level::INFO => tracing::info!(target: "pyfcgi::app", stream, request, "{line}"),
            _ => tracing::debug!(target: "pyfcgi::app", stream, request, "{line}"),
        }
    }

    fn push(&self, text: &str) {
        let mut partial = self
            .partial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        partial.push_str(text);
        while let Some(nl) = partial.find('\n') {
            let line: String = partial.drain(..=nl).collect();
            self.emit(line.trim_end_matches(['\n', '\r']));
        }
    }

    fn flush_partial(&self) {
        let mut partial = self
            .partial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !partial.is_empty() {
            let line = std::mem::take(&mut *partial);
            self.emit(&line);
        }
    }
}

#[pymethods]
impl LogStream {
    /// Writes text (bytes are decoded as UTF-8 with replacement, for lenient apps).
    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(s) = data.extract::<&str>() {
            self.push(s);
            return Ok(s.chars().count());
        }
        let b: Vec<u8> = data.extract()?;
        self.push(&String::from_utf8_lossy(&b));
        Ok(b.len())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        self.flush_partial();
    }

    fn isatty(&self) -> bool {
        false
    }

    fn writable(&self) -> bool {
        true
    }

    fn readable(&self) -> bool {
        false
    }

    fn seekable(&self) -> bool {
        false
    }

    #[getter]
    fn closed(&self) -> bool {
        false
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        "utf-8"
    }

    #[getter]
    fn errors(&self) -> &'static str {
        "replace"
    }

    #[getter]
    fn name(&self) -> String {
        format!("<pyfcgi {}>", self.name)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.flush_partial();
    }
}
