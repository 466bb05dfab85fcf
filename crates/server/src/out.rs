//! A connection's outgoing side, shared by its requests' [`ResponseWriter`]s, its reader and
//! its writer task.
//!
//! Response records are encoded straight into one pending buffer under a mutex. When nothing
//! is queued ahead, the thread that produced them (a Python worker, or a handler task) writes
//! them to the socket at once with a non-blocking send: no hand-off to the I/O thread, no
//! wake-up, no context switch, which is most of what a small response costs. Whatever the
//! socket does not take at once is left pending and the connection's writer task, woken
//! once, flushes it when the socket is writable, coalescing everything queued meanwhile.
//! Writers wait (backpressure) while more than `limit` bytes are pending.
//!
//! Transports without a thread-safe non-blocking send (the Windows named pipe) always go
//! through the writer task, with the same buffer and backpressure.
//!
//! An id is recorded as freed *before* its `FCGI_END_REQUEST` can reach the socket, so the
//! reader never sees the web server reuse an id it still considers active.
//!
//! [`ResponseWriter`]: crate::ResponseWriter

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, Bytes, BytesMut};
use pyfcgi_proto::{ProtocolStatus, RecordType, encode};
use tokio::sync::Notify;

use crate::handler::WriteError;

/// A stream the connection can read and write through shared references, from any thread.
pub trait DirectStream: Send + Sync + 'static {
    /// Waits until the stream may be readable.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits until the stream may be writable.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is available into `buf` without waiting.
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes without waiting.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Forgets that the stream was readable (after a short read drained the socket), so the
    /// next wait goes to the poller instead of costing a read that returns `WouldBlock`.
    fn clear_read_ready(&self);
    /// Sends FIN (the application closes the connection, spec §5.1).
    fn shutdown_write(&self);
    /// A duplicate of the socket's descriptor, to hand the connection to another process.
    #[cfg(unix)]
    fn try_clone_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

macro_rules! direct_stream {
    ($ty:ty) => {
        impl DirectStream for $ty {
            async fn readable(&self) -> io::Result<()> {
                <$ty>::readable(self).await
            }
            async fn writable(&self) -> io::Result<()> {
                <$ty>::writable(self).await
            }
            fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
                <$ty>::try_read_buf(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$ty>::try_write(self, buf)
            }
            fn clear_read_ready(&self) {
                // A closure that reports WouldBlock clears the cached readiness (tokio keeps
                // any readiness that arrived since it was observed).
                let _ = self.try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            fn shutdown_write(&self) {
                let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
            }
            #[cfg(unix)]
            fn try_clone_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
                std::os::fd::AsFd::as_fd(self).try_clone_to_owned()
            }
        }
    };
}

direct_stream!(tokio::net::TcpStream);
#[cfg(unix)]
direct_stream!(tokio::net::UnixStream);

/// The object-safe part of [`DirectStream`] that response writers use.
pub(crate) trait TryWrite: Send + Sync {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl<S: DirectStream> TryWrite for S {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        DirectStream::try_write(self, buf)
    }
}

// Independent flags of one small state machine, all read under the same lock.
#[allow(clippy::struct_excessive_bools)]
#[derive(Default)]
struct State {
    /// Encoded records not yet written, in order.
    pending: BytesMut,
    /// The writer task is flushing bytes it took from `pending`: nobody else may write.
    busy: bool,
    /// The connection is gone (or failed): every further write fails.
    closed: bool,
    /// A request without `FCGI_KEEP_CONN` ended: close once everything is flushed.
    close_after: bool,
    /// Ids whose end has been queued, for the reader to release.
    freed: Vec<u16>,
    /// The reader asked to be woken when an id is freed (it is shutting down).
    reader_wants_freed: bool,
    /// The reader has stopped: close once every response writer is done and all is flushed.
    reader_done: bool,
    /// Response writers not yet ended or dropped.
    writers: usize,
    /// For direct writes; dropped when the connection ends so the socket closes even while a
    /// handler still holds its writer.
    sink: Option<Arc<dyn TryWrite>>,
}

/// The shared outgoing side of one connection.
pub(crate) struct Out {
    state: Mutex<State>,
    /// Pending bytes are waiting for the writer task (or the connection should close).
    pub(crate) wake_writer: Notify,
    /// The pending buffer fell below `limit`, or the connection closed.
    drained: Notify,
    /// An id was freed while the reader asked for it.
    pub(crate) wake_reader: Notify,
    limit: usize,
    align: bool,
}

/// What a push adds after its records.
#[derive(Clone, Copy)]
pub(crate) struct End {
    pub(crate) id: u16,
    pub(crate) app_status: u32,
    pub(crate) close: bool,
}

impl Out {
    pub(crate) fn new(sink: Option<Arc<dyn TryWrite>>, limit: usize, align: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                sink,
                ..State::default()
            }),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            wake_reader: Notify::new(),
            limit: limit.max(1),
            align,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when a writer should wait before adding more.
    pub(crate) fn is_full(&self) -> bool {
        let st = self.lock();
        !st.closed && st.pending.len() >= self.limit
    }

    /// Queues `stream` records for `id` carrying `data` (may be empty), then `end` if given,
    /// and writes them at once when nothing is ahead of them. Never waits.
    pub(crate) fn push(
        &self,
        kind: RecordType,
        id: u16,
        data: &[u8],
        end: Option<End>,
    ) -> Result<(), WriteError> {
        self.push_with(end, |buf, align| {
            if !data.is_empty() {
                encode::stream(buf, kind, id, data, align);
            }
        })
    }

    /// Queues already-encoded records (management answers).
    pub(crate) fn push_raw(&self, data: &[u8]) -> Result<(), WriteError> {
        self.push_with(None, |buf, _| buf.extend_from_slice(data))
    }

    fn push_with(
        &self,
        end: Option<End>,
        encode_into: impl FnOnce(&mut BytesMut, bool),
    ) -> Result<(), WriteError> {
        let mut st = self.lock();
        if st.closed {
            return Err(WriteError::Closed);
        }
        encode_into(&mut st.pending, self.align);
        let mut wake_reader = false;
        if let Some(end) = end {
            encode::end_response(
                &mut st.pending,
                end.id,
                end.app_status,
                ProtocolStatus::RequestComplete,
            );
            st.freed.push(end.id);
            st.close_after |= end.close;
            wake_reader = st.reader_wants_freed;
        }
        if !st.busy && !st.close_after && !st.pending.is_empty() {
            let st = &mut *st;
            if let Some(sink) = &st.sink {
                while !st.pending.is_empty() {
                    match sink.try_write(&st.pending) {
                        Ok(0) => break,
                        Ok(n) => st.pending.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // The writer task meets the same error and closes the connection.
                        Err(_) => break,
                    }
                }
            }
        }
        let need_writer = !st.pending.is_empty() || st.close_after;
        drop(st);
        if need_writer {
            self.wake_writer.notify_one();
        }
        if wake_reader {
            self.wake_reader.notify_one();
        }
        Ok(())
    }

    /// Waits until there is room (or the connection is gone: then the next push fails).
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// True when the connection is closed or closes once flushed (a request without
    /// `FCGI_KEEP_CONN` ended).
    #[cfg(unix)]
    pub(crate) fn will_close(&self) -> bool {
        let st = self.lock();
        st.closed || st.close_after
    }

    /// Waits until every queued byte has been written to the socket; false when the
    /// connection closed first.
    #[cfg(unix)]
    pub(crate) async fn flushed(&self) -> bool {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.closed {
                    return false;
                }
                if st.pending.is_empty() && !st.busy {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Ids freed since the last call (appended to `into`).
    pub(crate) fn take_freed(&self, into: &mut Vec<u16>) {
        let mut st = self.lock();
        into.append(&mut st.freed);
    }

    /// From now on, wake the reader whenever an id is freed.
    pub(crate) fn want_freed_wakeups(&self) {
        self.lock().reader_wants_freed = true;
    }

    /// The writer task's next job: bytes to flush, `None` to wait, or `Err(close)` to stop
    /// (`close`: shut the write side down first).
    fn take_for_writer(&self) -> Result<Option<Bytes>, bool> {
        let mut st = self.lock();
        if st.closed {
            return Err(false);
        }
        if st.pending.is_empty() {
            let done = st.close_after || (st.reader_done && st.writers == 0);
            return if done { Err(true) } else { Ok(None) };
        }
        st.busy = true;
        Ok(Some(st.pending.split().freeze()))
    }

    fn writer_done(&self) {
        let below = {
            let mut st = self.lock();
            st.busy = false;
            st.pending.len() < self.limit
        };
        if below {
            self.drained.notify_waiters();
        }
    }

    /// A response writer starts.
    pub(crate) fn writer_opened(&self) {
        self.lock().writers += 1;
    }

    /// A response writer ended (or was dropped).
    pub(crate) fn writer_finished(&self) {
        let last = {
            let mut st = self.lock();
            st.writers = st.writers.saturating_sub(1);
            st.writers == 0 && st.reader_done
        };
        if last {
            self.wake_writer.notify_one();
        }
    }

    /// The reader stopped: the writer closes the connection once every response is out.
    pub(crate) fn close_when_flushed(&self) {
        self.lock().reader_done = true;
        self.wake_writer.notify_one();
    }

    /// Marks the connection closed: writers fail from now on, waiters wake, the socket is let go.
    pub(crate) fn close(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
            st.sink = None;
            st.pending = BytesMut::new();
        }
        self.drained.notify_waiters();
        self.wake_writer.notify_one();
    }
}

/// Where the writer task sends what direct writes could not.
pub(crate) trait WriteSink {
    fn write_all(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// A [`DirectStream`] shared with the reader and the response writers.
pub(crate) struct SharedSink<S>(pub(crate) Arc<S>);

impl<S: DirectStream> WriteSink for SharedSink<S> {
    async fn write_all(&mut self, data: Bytes) -> io::Result<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            self.0.writable().await?;
            match self.0.try_write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.0.shutdown_write();
    }
}

/// Any `AsyncWrite` (its half of a split stream), owned by the writer task.
pub(crate) struct OwnedSink<W>(pub(crate) W);

impl<W: tokio::io::AsyncWrite + Unpin + Send> WriteSink for OwnedSink<W> {
    async fn write_all(&mut self, data: Bytes) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(&data).await?;
        self.0.flush().await
    }

    async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.0.shutdown().await;
    }
}

/// The writer task: flushes what direct writes left pending until the connection ends.
pub(crate) async fn write_loop<W: WriteSink>(mut sink: W, out: &Out) -> io::Result<()> {
    let result = loop {
        match out.take_for_writer() {
            Ok(Some(data)) => {
                let r = sink.write_all(data).await;
                out.writer_done();
                if let Err(e) = r {
                    break Err(e);
                }
            }
            Ok(None) => out.wake_writer.notified().await,
            Err(shutdown) => {
                if shutdown {
                    sink.shutdown().await;
                }
                break Ok(());
            }
        }
    };
    out.close();
    result
}
