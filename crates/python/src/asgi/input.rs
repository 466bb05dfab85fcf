//! The `receive()` side of a request (WSGI's twin: `wsgi/input.rs`, `wsgi.input`): body
//! chunks read from FastCGI become `http.request` messages, in order, one per waiting
//! `receive()`; the end of the response or a client that left becomes `http.disconnect`.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::Drive;

/// The outcome of a step, for the future the app awaits.
pub(super) enum Outcome {
    Chunk(Bytes, bool),
    Disconnect,
    Done,
    Failed(String),
}

/// The Python value an outcome resolves a future with (`Failed`: the message).
pub(super) fn outcome_value(py: Python<'_>, outcome: Outcome) -> PyResult<Bound<'_, PyAny>> {
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

pub(super) fn disconnect(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", "http.disconnect")?;
    Ok(d)
}

impl Drive<'_> {
    /// A `receive()` the app is waiting on: answered at once when the request is over,
    /// else queued for the next body chunk (or `http.disconnect`).
    pub(super) fn queue_read(&mut self, fut: Py<PyAny>) {
        if self.gone() || self.response.is_none() {
            self.shared.finish(fut, Outcome::Disconnect);
        } else {
            self.pending_reads.push_back(fut);
        }
    }

    /// A body read finished: the oldest waiting `receive()` gets it.
    pub(super) fn answer_read(&mut self, chunk: Result<Option<Bytes>, pyfcgi_server::BodyError>) {
        let outcome = self.outcome(chunk);
        let gone = matches!(outcome, Outcome::Disconnect);
        if let Some(f) = self.pending_reads.pop_front() {
            self.shared.finish(f, outcome);
        }
        if gone {
            self.release_read();
        }
    }

    /// What the app's `receive()` gets for a body read.
    pub(super) fn outcome(
        &mut self,
        chunk: Result<Option<Bytes>, pyfcgi_server::BodyError>,
    ) -> Outcome {
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

    /// Resolves the waiting `receive()` calls with `http.disconnect` once the response is
    /// over or the client is gone.
    pub(super) fn release_read(&mut self) {
        for f in std::mem::take(&mut self.pending_reads) {
            self.shared.finish(f, Outcome::Disconnect);
        }
    }
}
