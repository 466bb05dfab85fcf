//! Drives one FastCGI connection over any `AsyncRead + AsyncWrite`.
//!
//! Two halves run concurrently in one task:
//! * the **reader** decodes records ([`ServerConnection`]), starts a handler task per request,
//!   feeds request bodies through bounded channels (waiting when a handler is slow to read, which
//!   stops reading the socket: backpressure on the web server), and fires abort signals;
//! * the **writer** takes response pieces from one bounded queue shared by the connection's
//!   requests, encodes them and coalesces whatever is queued into one write.
//!
//! An id is released (the writer tells the reader) *before* its `FCGI_END_REQUEST` is written,
//! so a web server that reuses the id right after reading the END_REQUEST never races the
//! release.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pyfcgi_proto::server::{Event, Limits, ServerConnection};
use pyfcgi_proto::{ProtocolStatus, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::{self, BodyConfig, BodyFeeder};
use crate::handler::{AbortSignal, BodyMsg, Handler, Outgoing, Request, ResponseWriter, StdinGate};

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Protocol limits and the values reported to `FCGI_GET_VALUES`.
    pub limits: Limits,
    /// Close a connection that has no active request and sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// How request bodies are buffered for handlers (memory, then a temp file).
    pub body: BodyConfig,
    /// Response pieces buffered per connection before handlers wait for the socket.
    pub response_queue: usize,
    /// Coalesce queued response records into writes of up to this many bytes.
    pub write_coalesce: usize,
    /// Read buffer size.
    pub read_buffer: usize,
    /// Pad records to 8 bytes (spec §3.3 "should"; no web server needs it).
    pub align_records: bool,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            idle_timeout: None,
            body: BodyConfig {
                queue: 8,
                max_memory: 1 << 20,
            },
            response_queue: 32,
            write_coalesce: 256 * 1024,
            read_buffer: 64 * 1024,
            align_records: false,
        }
    }
}

struct Active {
    keep_conn: bool,
    /// `None` before params complete, or after the handler stopped reading the body.
    body: Option<BodyFeeder>,
    abort: AbortSignal,
    stdin_done: StdinGate,
    started: bool,
}

/// Serves one connection until it closes, the peer misbehaves, or `shutdown` fires and no
/// request is in flight. Never panics on bad input: a protocol error closes this connection
/// with a logged reason.
pub async fn serve_connection<IO, H>(
    io: IO,
    handler: Arc<H>,
    config: Arc<ConnConfig>,
    shutdown: CancellationToken,
    peer: &str,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    debug!(peer, "connection accepted");
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(config.response_queue.max(1));
    let (freed_tx, freed_rx) = mpsc::unbounded_channel();
    let closed = CancellationToken::new();
    let reader = read_loop(
        rd,
        handler,
        &config,
        tx,
        freed_rx,
        closed.clone(),
        shutdown,
        peer,
    );
    let writer = write_loop(wr, rx, freed_tx, &config, closed, peer);
    tokio::join!(reader, writer);
    debug!(peer, "connection closed");
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R, H>(
    mut rd: R,
    handler: Arc<H>,
    config: &ConnConfig,
    tx: mpsc::Sender<Outgoing>,
    mut freed_rx: mpsc::UnboundedReceiver<u16>,
    closed: CancellationToken,
    shutdown: CancellationToken,
    peer: &str,
) where
    R: AsyncRead + Unpin,
    H: Handler,
{
    let mut conn = ServerConnection::new(config.limits.clone());
    let mut active: HashMap<u16, Active> = HashMap::new();
    let mut buf = BytesMut::with_capacity(config.read_buffer);
    let idle = config.idle_timeout;
    loop {
        while let Ok(id) = freed_rx.try_recv() {
            conn.finish(id);
            active.remove(&id);
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(config.read_buffer);
        }
        let idle_now = active.is_empty() && buf.is_empty();
        let read = if shutdown.is_cancelled() && idle_now {
            // A request may already sit unread in the socket: serve it rather than drop it;
            // otherwise close now.
            let ready = tokio::select! {
                biased;
                r = rd.read_buf(&mut buf) => Some(r),
                () = std::future::ready(()) => None,
            };
            match ready {
                Some(Ok(n)) if n > 0 => Ok(n),
                _ => {
                    debug!(peer, "closing idle connection for shutdown");
                    break;
                }
            }
        } else {
            tokio::select! {
                biased;
                () = closed.cancelled() => break,
                Some(id) = freed_rx.recv() => {
                    conn.finish(id);
                    active.remove(&id);
                    continue;
                }
                () = shutdown.cancelled(), if idle_now => continue,
                () = sleep_or_never(idle), if active.is_empty() => {
                    info!(peer, timeout_s = idle.map_or(0, |d| d.as_secs()), "closing connection idle past --idle-timeout");
                    break;
                }
                r = rd.read_buf(&mut buf) => r,
            }
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    warn!(
                        peer,
                        pending = buf.len(),
                        "web server closed the connection in the middle of a record"
                    );
                } else if !active.is_empty() {
                    debug!(
                        peer,
                        active = active.len(),
                        "web server closed its side with requests in flight"
                    );
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(peer, error = %e, "read failed");
                break;
            }
        }
        if let Err(e) = process(
            &mut conn,
            &mut buf,
            &mut active,
            &handler,
            config,
            &tx,
            &mut freed_rx,
            peer,
        )
        .await
        {
            warn!(peer, error = %e, "closing connection: invalid FastCGI input");
            break;
        }
    }
    // The connection is done reading: requests still waiting for body bytes never get them.
    for (_, a) in active.drain() {
        if a.body.is_some() || !a.started {
            a.abort.fire();
        }
        a.stdin_done.open();
    }
    closed.cancel();
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn process<H: Handler>(
    conn: &mut ServerConnection,
    buf: &mut BytesMut,
    active: &mut HashMap<u16, Active>,
    handler: &Arc<H>,
    config: &ConnConfig,
    tx: &mpsc::Sender<Outgoing>,
    freed_rx: &mut mpsc::UnboundedReceiver<u16>,
    peer: &str,
) -> Result<(), pyfcgi_proto::ProtoError> {
    loop {
        while let Ok(id) = freed_rx.try_recv() {
            conn.finish(id);
            active.remove(&id);
        }
        let event = conn.decode(buf)?;
        if conn.has_output() {
            let out = conn.take_output().freeze();
            if tx.send(Outgoing::Raw(out)).await.is_err() {
                return Ok(());
            }
        }
        let Some(event) = event else { return Ok(()) };
        match event {
            Event::Begin { id, keep_conn } => {
                active.insert(
                    id,
                    Active {
                        keep_conn,
                        body: None,
                        abort: AbortSignal::new(),
                        stdin_done: StdinGate::default(),
                        started: false,
                    },
                );
            }
            Event::Params { id, params } => {
                let Some(a) = active.get_mut(&id) else {
                    continue;
                };
                let (feeder, body_rx) = body::channel(&config.body);
                a.body = Some(feeder);
                a.started = true;
                let request = Request {
                    id,
                    params,
                    keep_conn: a.keep_conn,
                    body: body_rx,
                    abort: a.abort.clone(),
                };
                let response =
                    ResponseWriter::new(id, a.keep_conn, tx.clone(), a.stdin_done.clone());
                let handler = Arc::clone(handler);
                tokio::spawn(async move { handler.handle(request, response).await });
            }
            Event::Stdin { id, data } => feed_body(active, id, BodyMsg::Data(data), config).await,
            Event::StdinEnd { id } => {
                feed_body(active, id, BodyMsg::End, config).await;
                if let Some(a) = active.get_mut(&id) {
                    a.body = None;
                    a.stdin_done.open();
                }
            }
            Event::Abort { id } => {
                let Some(a) = active.get_mut(&id) else {
                    continue;
                };
                debug!(peer, id, "web server aborted the request");
                a.abort.fire();
                a.stdin_done.open();
                a.body = None;
                if !a.started {
                    // No handler owns this request yet: answer it here.
                    a.started = true;
                    let close = !a.keep_conn;
                    if tx
                        .send(Outgoing::End {
                            id,
                            app_status: 0,
                            close,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn feed_body(active: &mut HashMap<u16, Active>, id: u16, msg: BodyMsg, config: &ConnConfig) {
    let Some(a) = active.get_mut(&id) else { return };
    // A handler that dropped its BodyReceiver gets the rest of the body read and discarded,
    // which keeps the connection in sync for the next request.
    if let Some(feeder) = a.body.as_mut() {
        feeder.feed(msg, &config.body).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    freed_tx: mpsc::UnboundedSender<u16>,
    config: &ConnConfig,
    closed: CancellationToken,
    peer: &str,
) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let align = config.align_records;
    'outer: loop {
        // `None` once the reader stopped and every request's writer is gone.
        let Some(mut msg) = rx.recv().await else {
            break;
        };
        let mut close = false;
        loop {
            match msg {
                Outgoing::Stdout(id, data) => {
                    encode::stream(&mut out, pyfcgi_proto::RecordType::Stdout, id, &data, align);
                }
                Outgoing::Stderr(id, data) => {
                    encode::stream(&mut out, pyfcgi_proto::RecordType::Stderr, id, &data, align);
                }
                Outgoing::End {
                    id,
                    app_status,
                    close: c,
                } => {
                    let _ = freed_tx.send(id);
                    encode::end_response(&mut out, id, app_status, ProtocolStatus::RequestComplete);
                    close |= c;
                }
                Outgoing::Raw(bytes) => out.extend_from_slice(&bytes),
            }
            if close || out.len() >= config.write_coalesce {
                break;
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        if let Err(e) = write_out(&mut wr, &mut out).await {
            debug!(peer, error = %e, "web server went away while a response was being written");
            break 'outer;
        }
        if close {
            // FCGI_KEEP_CONN was not set: the application closes the connection (spec §5.1).
            break;
        }
    }
    let _ = wr.shutdown().await;
    closed.cancel();
    // Dropping `rx` makes every further write by a handler fail with WriteError::Closed.
}

async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    let data: Bytes = out.split().freeze();
    wr.write_all(&data).await?;
    wr.flush().await
}
