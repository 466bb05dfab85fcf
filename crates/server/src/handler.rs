//! What a handler sees: the [`Handler`] trait, [`Request`], [`BodyReceiver`],
//! [`ResponseWriter`] and [`AbortSignal`].
//!
//! Both directions are bounded channels, so a slow client slows the handler down instead of
//! making the server buffer without limit, and a fast client sending a large body waits for the
//! handler to read it. Each side has an async method for tokio tasks and a `blocking_` twin for
//! plain threads (the Python workers), which must not be called from inside the runtime.

use std::future::Future;

use bytes::Bytes;
use pyfcgi_proto::Params;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Serves FastCGI requests. One value is shared by every connection.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request. The response ends when `response` is ended or dropped.
    fn handle(&self, request: Request, response: ResponseWriter)
    -> impl Future<Output = ()> + Send;
}

/// One Responder request, passed to the handler once its params are complete.
#[derive(Debug)]
pub struct Request {
    /// The FastCGI request id (unique among the connection's active requests).
    pub id: u16,
    /// The CGI/1.1 variables the web server sent.
    pub params: Params,
    /// Whether the web server keeps the connection after this request (`FCGI_KEEP_CONN`).
    pub keep_conn: bool,
    /// The request body, streamed as it arrives.
    pub body: BodyReceiver,
    /// Fires when the web server aborts the request or the connection is lost.
    pub abort: AbortSignal,
}

/// Messages on a request's body channel.
#[derive(Debug)]
pub(crate) enum BodyMsg {
    Data(Bytes),
    End,
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

/// What the connection's writer receives from requests and the reader.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Stdout(u16, Bytes),
    Stderr(u16, Bytes),
    End {
        id: u16,
        app_status: u32,
        close: bool,
    },
    /// Pre-encoded records (management answers, refusals).
    Raw(Bytes),
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
    fn is_open(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Streams a response: `FCGI_STDOUT` bytes (CGI head, then body), optional `FCGI_STDERR`, and
/// the end. Ending is explicit ([`Self::end`]); dropping an unended writer ends the request
/// with application status 1, so the web server is never left waiting.
///
/// Output is held back (up to 64 KiB, then the writer waits) until the web server has sent the
/// whole request body: nginx stops sending a request body as soon as the response head
/// arrives, so a response that starts early would leave both sides waiting. The server keeps
/// reading (and spooling) the body meanwhile, so waiting here cannot deadlock.
#[derive(Debug)]
pub struct ResponseWriter {
    id: u16,
    keep_conn: bool,
    tx: Option<mpsc::Sender<Outgoing>>,
    runtime: tokio::runtime::Handle,
    gate: StdinGate,
    held: Vec<Bytes>,
    held_bytes: usize,
}

impl ResponseWriter {
    pub(crate) fn new(
        id: u16,
        keep_conn: bool,
        tx: mpsc::Sender<Outgoing>,
        gate: StdinGate,
    ) -> Self {
        Self {
            id,
            keep_conn,
            tx: Some(tx),
            runtime: tokio::runtime::Handle::current(),
            gate,
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    /// Holds `data` while the gate is shut and there is room; returns it when it must be sent
    /// now (after [`Self::release`]).
    fn hold(&mut self, data: Bytes) -> Option<Bytes> {
        if self.held.is_empty() && self.gate.is_open() {
            return Some(data);
        }
        self.held_bytes += data.len();
        self.held.push(data);
        None
    }

    fn must_release(&self) -> bool {
        !self.held.is_empty() && (self.gate.is_open() || self.held_bytes > HOLD_LIMIT)
    }

    async fn release(&mut self) -> Result<(), WriteError> {
        self.gate.0.cancelled().await;
        let tx = self.sender()?.clone();
        for data in std::mem::take(&mut self.held) {
            tx.send(Outgoing::Stdout(self.id, data))
                .await
                .map_err(|_| WriteError::Closed)?;
        }
        self.held_bytes = 0;
        Ok(())
    }

    fn blocking_release(&mut self) -> Result<(), WriteError> {
        if !self.gate.is_open() {
            let gate = self.gate.0.clone();
            self.runtime.block_on(gate.cancelled());
        }
        let tx = self.sender()?.clone();
        for data in std::mem::take(&mut self.held) {
            tx.blocking_send(Outgoing::Stdout(self.id, data))
                .map_err(|_| WriteError::Closed)?;
        }
        self.held_bytes = 0;
        Ok(())
    }

    /// The request id this writer answers.
    pub fn id(&self) -> u16 {
        self.id
    }

    fn sender(&self) -> Result<&mpsc::Sender<Outgoing>, WriteError> {
        self.tx.as_ref().ok_or(WriteError::Closed)
    }

    /// Sends response bytes; waits while the connection's send queue is full. Empty data is a
    /// no-op (an empty `FCGI_STDOUT` would end the stream).
    pub async fn write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(data) = self.hold(data) {
            return self
                .sender()?
                .send(Outgoing::Stdout(self.id, data))
                .await
                .map_err(|_| WriteError::Closed);
        }
        if self.must_release() {
            self.release().await?;
        }
        Ok(())
    }

    /// [`Self::write`] for a thread outside the runtime.
    pub fn blocking_write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(data) = self.hold(data) {
            return self
                .sender()?
                .blocking_send(Outgoing::Stdout(self.id, data))
                .map_err(|_| WriteError::Closed);
        }
        if self.must_release() {
            self.blocking_release()?;
        }
        Ok(())
    }

    /// Sends response bytes if that needs no waiting; otherwise hands `data` back
    /// (`Ok(Some(data))`) for [`Self::blocking_write`]. Lets a Python worker skip releasing
    /// the GIL in the common case where the queue has room.
    pub fn try_write(&mut self, data: Bytes) -> Result<Option<Bytes>, WriteError> {
        if data.is_empty() {
            return Ok(None);
        }
        if !self.held.is_empty() || !self.gate.is_open() {
            if self.held_bytes + data.len() > HOLD_LIMIT {
                return Ok(Some(data));
            }
            self.held_bytes += data.len();
            self.held.push(data);
            return Ok(None);
        }
        match self.sender()?.try_send(Outgoing::Stdout(self.id, data)) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Outgoing::Stdout(_, data))) => Ok(Some(data)),
            Err(_) => Err(WriteError::Closed),
        }
    }

    /// Ends the response if that needs no waiting; otherwise gives the writer back
    /// (`Err(self)`) for [`Self::blocking_end`].
    pub fn try_end(mut self, app_status: u32) -> Result<Result<(), WriteError>, Self> {
        if !self.held.is_empty() || !self.gate.is_open() {
            return Err(self);
        }
        let Some(tx) = self.tx.take() else {
            return Ok(Err(WriteError::Closed));
        };
        match tx.try_send(self.end_msg(app_status)) {
            Ok(()) => Ok(Ok(())),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.tx = Some(tx);
                Err(self)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(Err(WriteError::Closed)),
        }
    }

    /// Sends `FCGI_STDERR` bytes. Under IIS any STDERR output turns the response into a 500
    /// showing that text, so the Python layer only does this when configured to.
    pub async fn write_stderr(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        self.sender()?
            .send(Outgoing::Stderr(self.id, data))
            .await
            .map_err(|_| WriteError::Closed)
    }

    /// [`Self::write_stderr`] for a thread outside the runtime.
    pub fn blocking_write_stderr(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        self.sender()?
            .blocking_send(Outgoing::Stderr(self.id, data))
            .map_err(|_| WriteError::Closed)
    }

    fn end_msg(&self, app_status: u32) -> Outgoing {
        Outgoing::End {
            id: self.id,
            app_status,
            close: !self.keep_conn,
        }
    }

    /// Ends the response (empty `FCGI_STDOUT` + `FCGI_END_REQUEST` with `app_status`).
    pub async fn end(mut self, app_status: u32) -> Result<(), WriteError> {
        self.release().await?;
        let tx = self.tx.take().ok_or(WriteError::Closed)?;
        tx.send(self.end_msg(app_status))
            .await
            .map_err(|_| WriteError::Closed)
    }

    /// [`Self::end`] for a thread outside the runtime.
    pub fn blocking_end(mut self, app_status: u32) -> Result<(), WriteError> {
        self.blocking_release()?;
        let tx = self.tx.take().ok_or(WriteError::Closed)?;
        tx.blocking_send(self.end_msg(app_status))
            .map_err(|_| WriteError::Closed)
    }
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let msg = self.end_msg(1);
            let held = std::mem::take(&mut self.held);
            if held.is_empty() {
                // Prefer not to wait: a free slot is the common case.
                if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
                    self.runtime.spawn(async move {
                        let _ = tx.send(msg).await;
                    });
                }
                return;
            }
            // Drop may run on a Python worker thread, outside the runtime: hand it the rest.
            let (id, gate) = (self.id, self.gate.0.clone());
            self.runtime.spawn(async move {
                gate.cancelled().await;
                for data in held {
                    if tx.send(Outgoing::Stdout(id, data)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(msg).await;
            });
        }
    }
}
