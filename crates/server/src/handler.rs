//! What a handler sees: the [`Handler`] trait, [`Request`], [`BodyReceiver`],
//! [`ResponseWriter`] and [`AbortSignal`].
//!
//! Both directions are bounded channels, so a slow client slows the handler down instead of
//! making the server buffer without limit, and a fast client sending a large body waits for the
//! handler to read it. Each side has an async method for tokio tasks and a `blocking_` twin for
//! plain threads (the Python workers), which must not be called from inside the runtime.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pyfcgi_proto::{Params, RecordType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::out::{End, Out};

/// Serves FastCGI requests. One value is shared by every connection.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request. The response ends when `response` is ended or dropped.
    fn handle(&self, request: Request, response: ResponseWriter)
    -> impl Future<Output = ()> + Send;

    /// Takes the request on the I/O thread without starting a task, when that needs no
    /// waiting (a handler that queues work for its own threads). `Err` hands the request
    /// back; it then runs [`Self::handle`] in a task. Called on the runtime.
    #[allow(clippy::result_large_err)] // moved straight back to the caller, never stored
    fn try_handle_now(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> Result<(), (Request, ResponseWriter)> {
        Err((request, response))
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> impl Future<Output = ()> + Send {
        (**self).handle(request, response)
    }

    fn try_handle_now(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> Result<(), (Request, ResponseWriter)> {
        (**self).try_handle_now(request, response)
    }
}

/// One Responder request, passed to the handler once its params are complete.
#[derive(Debug)]
pub struct Request {
    /// The FastCGI request id (unique among the connection's active requests).
    pub id: u16,
    /// This process's request number; logs and error pages show it as
    /// [`Request::request_id`].
    pub seq: u64,
    /// The CGI/1.1 variables the web server sent.
    pub params: Params,
    /// Whether the web server keeps the connection after this request (`FCGI_KEEP_CONN`).
    pub keep_conn: bool,
    /// The request body, streamed as it arrives.
    pub body: BodyReceiver,
    /// Fires when the web server aborts the request or the connection is lost.
    pub abort: AbortSignal,
    /// The named pipe's client (IIS), whose identity the request may take on
    /// (`--impersonate`); `None` on every other transport.
    pub client: Option<crate::impersonate::PipeClient>,
}

impl Request {
    /// The request's id, as logs and error pages show it (unique across processes).
    pub fn request_id(&self) -> crate::observe::RequestId {
        crate::observe::RequestId::from_seq(self.seq)
    }
}

/// Messages on a request's body channel.
#[derive(Debug)]
pub(crate) enum BodyMsg {
    Data(Bytes),
    End,
    /// The body could not be buffered (spool file); nothing more comes.
    Failed,
}

/// Why the body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The connection ended or the request was aborted before the empty `FCGI_STDIN`.
    #[error(
        "the request body ended early: the web server closed the connection or aborted the request"
    )]
    Incomplete,
    /// The body overflowed memory and could not be written to a spool file.
    #[error(
        "the request body could not be buffered: writing the spool file failed (disk full or --spool-dir not writable; see the server log)"
    )]
    SpoolFailed,
}

/// The request body: chunks in arrival order, then `Ok(None)`.
#[derive(Debug)]
pub struct BodyReceiver {
    rx: mpsc::Receiver<BodyMsg>,
    done: bool,
}

impl BodyReceiver {
    pub(crate) fn new(rx: mpsc::Receiver<BodyMsg>) -> Self {
        Self { rx, done: false }
    }

    /// A body that is already complete and empty (for tests and internal requests).
    pub fn empty() -> Self {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(BodyMsg::End);
        Self::new(rx)
    }

    fn map(&mut self, msg: Option<BodyMsg>) -> Result<Option<Bytes>, BodyError> {
        if self.done {
            return Ok(None);
        }
        match msg {
            Some(BodyMsg::Data(b)) => Ok(Some(b)),
            Some(BodyMsg::End) => {
                self.done = true;
                Ok(None)
            }
            Some(BodyMsg::Failed) => {
                self.done = true;
                Err(BodyError::SpoolFailed)
            }
            None => Err(BodyError::Incomplete),
        }
    }

    /// The next chunk; `Ok(None)` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.done {
            return Ok(None);
        }
        let msg = self.rx.recv().await;
        self.map(msg)
    }

    /// The next chunk if one has already arrived, without waiting: `None` when nothing is
    /// there yet, else what [`Self::chunk`] would return.
    pub fn try_chunk(&mut self) -> Option<Result<Option<Bytes>, BodyError>> {
        if self.done {
            return Some(Ok(None));
        }
        let msg = match self.rx.try_recv() {
            Ok(msg) => Some(msg),
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
        Some(self.map(msg))
    }

    /// [`Self::chunk`] for a thread outside the runtime; blocks until a chunk arrives.
    pub fn blocking_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.done {
            return Ok(None);
        }
        let msg = self.rx.blocking_recv();
        self.map(msg)
    }

    /// True once the end of the body has been returned.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Fires when a request should stop: the web server sent `FCGI_ABORT_REQUEST`, the connection
/// was lost, or the server is shutting down past its grace period.
#[derive(Debug, Clone, Default)]
pub struct AbortSignal(CancellationToken);

impl AbortSignal {
    pub(crate) fn new() -> Self {
        Self(CancellationToken::new())
    }

    pub(crate) fn fire(&self) {
        self.0.cancel();
    }

    /// True once the request was aborted.
    pub fn is_aborted(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when the request is aborted.
    pub async fn aborted(&self) {
        self.0.cancelled().await;
    }
}

/// The response could not be written: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The web server closed the connection (or it failed); the rest of the response is lost.
    #[error("the web server closed the connection; the response cannot be delivered")]
    Closed,
}

/// Response bytes a writer holds back while the request body is still arriving.
const HOLD_LIMIT: usize = 64 * 1024;

/// Opens when the web server has sent the whole request body (or the request is over).
#[derive(Debug, Clone, Default)]
pub(crate) struct StdinGate(CancellationToken);

impl StdinGate {
    pub(crate) fn open(&self) {
        self.0.cancel();
    }
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Streams a response: `FCGI_STDOUT` bytes (CGI head, then body), optional `FCGI_STDERR`, and
/// the end. Ending is explicit ([`Self::end`]); dropping an unended writer ends the request
/// with application status 1, so the web server is never left waiting.
///
/// Writes go to the connection's shared buffer and, when nothing is queued ahead, straight to
/// the socket from the calling thread (see `out.rs`). A writer waits while the connection has
/// more than its response buffer pending.
///
/// Output is held back (up to 64 KiB, then the writer waits) until the web server has sent the
/// whole request body: nginx stops sending a request body as soon as the response head
/// arrives, so a response that starts early would leave both sides waiting. The server keeps
/// reading (and spooling) the body meanwhile, so waiting here cannot deadlock.
pub struct ResponseWriter {
    id: u16,
    keep_conn: bool,
    out: Option<Arc<Out>>,
    runtime: tokio::runtime::Handle,
    gate: StdinGate,
    /// Body bytes not yet handed to the connection: held for the gate, or deferred to go out
    /// with the next write or the end.
    held: BytesMut,
    /// The observer's bookkeeping, when one is configured.
    track: Option<Box<crate::observe::Track>>,
    /// Shared with a [`Takeover`], once one was made.
    claim: Option<Arc<std::sync::Mutex<Claim>>>,
}

/// Who answers the request: the writer, until a [`Takeover`] did.
#[derive(Debug, Default)]
struct Claim {
    /// The writer has handed response bytes (or the end) to the connection.
    sent: bool,
    /// The takeover answered the request; the writer's writes fail from now on.
    taken: bool,
    /// The writer ended the response: the request id may already serve another request, so
    /// a takeover must send nothing (the handler can still be running, e.g. in `close()`).
    ended: bool,
}

/// Answers a request in place of its writer, if the writer has sent nothing yet (a request
/// timeout's 504 while the handler is stuck). Made by [`ResponseWriter::takeover`].
#[derive(Clone)]
pub struct Takeover {
    claim: Arc<std::sync::Mutex<Claim>>,
    out: Arc<Out>,
    end: End,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("id", &self.end.id)
            .finish_non_exhaustive()
    }
}

impl Takeover {
    /// Sends `response` (a complete CGI response) and ends the request, unless the writer
    /// has sent something already. The writer's later writes then fail with
    /// [`WriteError::Closed`]. True when this answered the request.
    pub fn respond(&self, response: &[u8]) -> bool {
        let mut c = self
            .claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.sent || c.taken || c.ended {
            return false;
        }
        c.taken = true;
        let _ = self
            .out
            .push(RecordType::Stdout, self.end.id, response, Some(self.end));
        true
    }

    /// Ends the request where its response is (the web server sees it cut short), unless it
    /// has ended already. True when this ended it.
    pub fn end_now(&self) -> bool {
        let mut c = self
            .claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.taken || c.ended {
            return false;
        }
        c.taken = true;
        let end = End {
            app_status: 1,
            ..self.end
        };
        let _ = self
            .out
            .push(RecordType::Stdout, self.end.id, &[], Some(end));
        true
    }
}

impl std::fmt::Debug for ResponseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseWriter")
            .field("id", &self.id)
            .field("keep_conn", &self.keep_conn)
            .field("ended", &self.out.is_none())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl ResponseWriter {
    pub(crate) fn new(
        id: u16,
        keep_conn: bool,
        out: Arc<Out>,
        gate: StdinGate,
        track: Option<Box<crate::observe::Track>>,
    ) -> Self {
        out.writer_opened();
        Self {
            id,
            keep_conn,
            out: Some(out),
            runtime: tokio::runtime::Handle::current(),
            gate,
            held: BytesMut::new(),
            track,
            claim: None,
        }
    }

    /// A handle that can answer this request instead of the writer while the writer has sent
    /// nothing (see [`Takeover`]). `None` once the response has ended.
    pub fn takeover(&mut self) -> Option<Takeover> {
        let out = Arc::clone(self.out.as_ref()?);
        let claim = Arc::clone(
            self.claim
                .get_or_insert_with(|| Arc::new(std::sync::Mutex::new(Claim::default()))),
        );
        Some(Takeover {
            claim,
            out,
            end: self.end_marker(0),
        })
    }

    /// Before handing bytes or the end to the connection: false when a takeover answered.
    fn claim_send(&self) -> Option<std::sync::MutexGuard<'_, Claim>> {
        self.claim.as_ref().map(|c| {
            let mut g = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !g.taken {
                g.sent = true;
            }
            g
        })
    }

    fn note_sent(&mut self, data: &[u8]) {
        if let Some(t) = self.track.as_mut() {
            t.sent(data);
        }
    }

    fn note_end(&mut self, app_status: u32) {
        if let Some(t) = self.track.take() {
            t.end(app_status);
        }
    }

    /// The request id this writer answers.
    pub fn id(&self) -> u16 {
        self.id
    }

    fn out(&self) -> Result<&Arc<Out>, WriteError> {
        self.out.as_ref().ok_or(WriteError::Closed)
    }

    fn end_marker(&self, app_status: u32) -> End {
        End {
            id: self.id,
            app_status,
            close: !self.keep_conn,
        }
    }

    /// Keeps `data` back while the gate is shut and there is room. False: it must be sent
    /// now, after waiting for the gate.
    fn hold(&mut self, data: &[u8]) -> bool {
        if self.gate.is_open() {
            return false;
        }
        if self.held.len() + data.len() > HOLD_LIMIT {
            return false;
        }
        self.held.extend_from_slice(data);
        true
    }

    /// Hands `data` (after anything held) to the connection, with `end` if given.
    fn push(&mut self, data: &[u8], end: Option<End>) -> Result<(), WriteError> {
        if self.out.is_none() {
            return Err(WriteError::Closed);
        }
        if self.claim_send().is_some_and(|g| g.taken) {
            // A takeover answered (and ended) the request: nothing more goes out.
            self.held.clear();
            if let Some(out) = self.out.take() {
                out.writer_finished();
            }
            return Err(WriteError::Closed);
        }
        if self.held.is_empty() {
            self.note_sent(data);
            let out = self.out.as_ref().ok_or(WriteError::Closed)?;
            return out.push(RecordType::Stdout, self.id, data, end);
        }
        self.held.extend_from_slice(data);
        let held = std::mem::take(&mut self.held);
        self.note_sent(&held);
        let out = self.out.as_ref().ok_or(WriteError::Closed)?;
        let r = out.push(RecordType::Stdout, self.id, &held, end);
        self.held = held;
        self.held.clear();
        r
    }

    /// Sends response bytes; waits while the connection's buffer is full. Empty data is a
    /// no-op (an empty `FCGI_STDOUT` would end the stream).
    pub async fn write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() || self.hold(&data) {
            return Ok(());
        }
        self.gate.0.cancelled().await;
        self.out()?.room().await;
        self.push(&data, None)
    }

    /// [`Self::write`] for a thread outside the runtime.
    // Takes `Bytes` like its async twin, so callers switch between them freely.
    #[allow(clippy::needless_pass_by_value)]
    pub fn blocking_write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() || self.hold(&data) {
            return Ok(());
        }
        self.blocking_wait(true)?;
        self.push(&data, None)
    }

    /// Waits for the gate and, if `room`, for space in the connection's buffer.
    fn blocking_wait(&self, room: bool) -> Result<(), WriteError> {
        let out = self.out()?;
        let must_wait = !self.gate.is_open() || (room && out.is_full());
        if must_wait {
            let gate = self.gate.0.clone();
            let out = Arc::clone(out);
            self.runtime.block_on(async move {
                gate.cancelled().await;
                if room {
                    out.room().await;
                }
            });
        }
        Ok(())
    }

    /// Sends response bytes if that needs no waiting; otherwise hands `data` back
    /// (`Ok(Some(data))`) for [`Self::blocking_write`]. Lets a Python worker skip releasing
    /// the GIL in the common case where the buffer has room.
    pub fn try_write(&mut self, data: Bytes) -> Result<Option<Bytes>, WriteError> {
        if data.is_empty() || self.hold(&data) {
            return Ok(None);
        }
        if !self.gate.is_open() || self.out()?.is_full() {
            return Ok(Some(data));
        }
        self.push(&data, None).map(|()| None)
    }

    /// Sends `data` and ends the response in one write if that needs no waiting; otherwise
    /// hands both back (`Err((self, data))`) to be written and ended the usual way. For a body
    /// that is complete before its producer is done (a WSGI iterable that reached its
    /// Content-Length): the web server gets the end at once, not after the app's `close()`.
    pub fn try_write_and_end(
        mut self,
        data: Bytes,
        app_status: u32,
    ) -> Result<Result<(), WriteError>, (Self, Bytes)> {
        let Some(out) = self.out.as_ref() else {
            return Ok(Err(WriteError::Closed));
        };
        if !self.gate.is_open() || out.is_full() {
            return Err((self, data));
        }
        self.held.extend_from_slice(&data);
        Ok(self.finish(app_status))
    }

    /// Keeps `data` to send with the next write or the end, when it is small; false when it
    /// must be written now. For a body known to be complete (a WSGI list), so the head, the
    /// body and the end leave in one write.
    pub fn defer(&mut self, data: &[u8]) -> bool {
        if self.held.len() + data.len() > HOLD_LIMIT {
            return false;
        }
        self.held.extend_from_slice(data);
        true
    }

    /// Answers at once with `response` (a complete CGI response: head and body) and ends the
    /// request, without waiting for the rest of the request body: for refusals that never
    /// read it (a body over the size limit, an offline site). The connection then discards
    /// the request's remaining `FCGI_STDIN` (its id is released with the end). Never waits.
    pub fn respond_now(mut self, response: &[u8]) -> Result<(), WriteError> {
        // Holding output back for the body exists for responses that still read it; this
        // one does not, and a client sending a large body gets its answer now.
        let gate = StdinGate::default();
        gate.open();
        self.gate = gate;
        self.held.extend_from_slice(response);
        self.finish(0)
    }

    /// Ends the response if that needs no waiting; otherwise gives the writer back
    /// (`Err(self)`) for [`Self::blocking_end`].
    pub fn try_end(mut self, app_status: u32) -> Result<Result<(), WriteError>, Self> {
        if !self.gate.is_open() {
            return Err(self);
        }
        Ok(self.finish(app_status))
    }

    /// Sends `FCGI_STDERR` bytes. Under IIS any STDERR output turns the response into a 500
    /// showing that text, so the Python layer only does this when configured to.
    pub async fn write_stderr(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        let out = self.out()?;
        out.room().await;
        out.push(RecordType::Stderr, self.id, &data, None)
    }

    /// [`Self::write_stderr`] for a thread outside the runtime.
    // Takes `Bytes` like its async twin, so callers switch between them freely.
    #[allow(clippy::needless_pass_by_value)]
    pub fn blocking_write_stderr(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        self.blocking_wait(true)?;
        self.out()?.push(RecordType::Stderr, self.id, &data, None)
    }

    /// Ends the response (empty `FCGI_STDOUT` + `FCGI_END_REQUEST` with `app_status`).
    pub async fn end(mut self, app_status: u32) -> Result<(), WriteError> {
        self.gate.0.cancelled().await;
        self.finish(app_status)
    }

    /// [`Self::end`] for a thread outside the runtime.
    pub fn blocking_end(mut self, app_status: u32) -> Result<(), WriteError> {
        self.blocking_wait(false)?;
        self.finish(app_status)
    }

    /// Sends what is held and the end, and lets go of the connection.
    fn finish(&mut self, app_status: u32) -> Result<(), WriteError> {
        let end = self.end_marker(app_status);
        let r = self.push(&[], Some(end));
        self.mark_ended();
        self.note_end(app_status);
        if let Some(out) = self.out.take() {
            out.writer_finished();
        }
        r
    }
}

impl ResponseWriter {
    /// Tells a takeover that the response has ended (see [`Claim::ended`]).
    fn mark_ended(&self) {
        if let Some(c) = self.claim.as_ref() {
            c.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ended = true;
        }
    }
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.note_sent(&held);
        self.held = held;
        self.note_end(1);
        let taken = self.claim_send().is_some_and(|g| g.taken);
        let Some(out) = self.out.take() else { return };
        if taken {
            out.writer_finished();
            return;
        }
        let end = self.end_marker(1);
        self.mark_ended();
        if self.held.is_empty() || self.gate.is_open() {
            let _ = out.push(RecordType::Stdout, self.id, &self.held, Some(end));
            out.writer_finished();
            return;
        }
        // Drop may run on a Python worker thread, outside the runtime: the held bytes go out
        // once the body is in.
        let (id, gate, held) = (self.id, self.gate.0.clone(), std::mem::take(&mut self.held));
        self.runtime.spawn(async move {
            gate.cancelled().await;
            let _ = out.push(RecordType::Stdout, id, &held, Some(end));
            out.writer_finished();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_chunk_returns_what_has_arrived_without_waiting() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = BodyReceiver::new(rx);
        assert!(body.try_chunk().is_none(), "nothing has arrived yet");
        tx.try_send(BodyMsg::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.try_send(BodyMsg::End).unwrap();
        assert_eq!(body.try_chunk(), Some(Ok(Some(Bytes::from_static(b"abc")))));
        assert_eq!(body.try_chunk(), Some(Ok(None)));
        assert!(body.is_done());
        assert_eq!(body.try_chunk(), Some(Ok(None)), "stays at the end");

        let (tx, rx) = mpsc::channel(1);
        let mut cut = BodyReceiver::new(rx);
        drop(tx);
        assert_eq!(cut.try_chunk(), Some(Err(BodyError::Incomplete)));
    }
}
