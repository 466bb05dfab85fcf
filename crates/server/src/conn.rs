//! Drives one FastCGI connection.
//!
//! Two halves run concurrently in one task:
//! * the **reader** decodes records ([`ServerConnection`]), starts a handler task per request,
//!   feeds request bodies through bounded channels (waiting when a handler is slow to read, which
//!   stops reading the socket: backpressure on the web server), and fires abort signals;
//! * the **writer** flushes what the requests' writers could not send directly (see `out.rs`:
//!   a response normally leaves from the thread that produced it, in one non-blocking send),
//!   coalescing everything queued into one write.
//!
//! An id is released before its `FCGI_END_REQUEST` can reach the socket, so a web server that
//! reuses the id right after reading the END_REQUEST never races the release.

// Request ids are small integers chosen by the web server: foldhash, not SipHash.
use foldhash::{HashMap, HashMapExt};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::RecordType;
use pyfcgi_proto::server::{Event, Limits, ServerConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::{self, BodyConfig, BodyFeeder};
use crate::handler::{AbortSignal, BodyMsg, Handler, Request, ResponseWriter, StdinGate};
use crate::out::{self, DirectStream, End, Out, OwnedSink, SharedSink, TryWrite, WriteSink};

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Protocol limits and the values reported to `FCGI_GET_VALUES`.
    pub limits: Limits,
    /// Close a connection that has no active request and sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose web server sends nothing for this long while a request
    /// waits for the rest of its params or body (or a record is half received).
    pub read_timeout: Option<Duration>,
    /// Close a connection when a request's params have not all arrived this long after its
    /// `FCGI_BEGIN_REQUEST`, however steadily they trickle in (`--read-timeout` is per read;
    /// this is the whole head, like nginx's `client_header_timeout`).
    pub params_timeout: Option<Duration>,
    /// How request bodies are buffered for handlers (memory, then a temp file).
    pub body: BodyConfig,
    /// Response bytes a connection buffers (beyond what the socket takes) before handlers
    /// wait; also the largest single write.
    pub response_buffer: usize,
    /// Read buffer size.
    pub read_buffer: usize,
    /// Pad records to 8 bytes (spec §3.3 "should"; no web server needs it).
    pub align_records: bool,
    /// Told about every request's start and end (access log, metrics).
    pub observer: Option<Arc<dyn crate::observe::Observer>>,
    /// `--trusted-proxy`: whose `X-Forwarded-*` headers are applied to the params.
    pub trusted_proxies: Option<Arc<crate::proxy::TrustedProxies>>,
    /// Under a supervisor: once this worker is retiring, kept connections are handed back
    /// at their next request boundary instead of closing ([`crate::handoff`]).
    #[cfg(unix)]
    pub handover: Option<Arc<crate::handoff::Handover>>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            idle_timeout: None,
            read_timeout: None,
            params_timeout: None,
            body: BodyConfig {
                queue: 8,
                max_memory: 1 << 20,
                spool_dir: None,
            },
            response_buffer: 256 * 1024,
            read_buffer: 64 * 1024,
            align_records: false,
            observer: None,
            trusted_proxies: None,
            #[cfg(unix)]
            handover: None,
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
    /// When its `FCGI_BEGIN_REQUEST` arrived (for `params_timeout`).
    begun: Instant,
}

/// Serves one connection over a socket that requests may write to directly, until it closes,
/// the peer misbehaves, or `shutdown` fires and no request is in flight. Never panics on bad
/// input: a protocol error closes this connection with a logged reason.
pub async fn serve_connection<S, H>(
    stream: S,
    handler: Arc<H>,
    config: Arc<ConnConfig>,
    shutdown: CancellationToken,
    peer: &str,
) where
    S: DirectStream,
    H: Handler,
{
    serve_connection_from(stream, handler, config, shutdown, peer, BytesMut::new()).await;
}

/// [`serve_connection`] for a connection another process has already read from (a kept
/// connection handed over by a retiring worker): `start` is what it read that was not yet
/// part of a request, decoded before anything is read from the socket.
pub async fn serve_connection_from<S, H>(
    stream: S,
    handler: Arc<H>,
    config: Arc<ConnConfig>,
    shutdown: CancellationToken,
    peer: &str,
    start: BytesMut,
) where
    S: DirectStream,
    H: Handler,
{
    let stream = Arc::new(stream);
    let sink: Arc<dyn TryWrite> = Arc::clone(&stream) as Arc<dyn TryWrite>;
    let out = Out::new(Some(sink), config.response_buffer, config.align_records);
    run(
        SharedSource(Arc::clone(&stream)),
        SharedSink(stream),
        out,
        handler,
        &config,
        shutdown,
        peer,
        None,
        start,
    )
    .await;
}

/// [`serve_connection`] for any `AsyncRead + AsyncWrite` (the Windows named pipe, tests):
/// responses always go through the writer task. `client` is the named pipe's client, whose
/// identity requests may take on (`--impersonate`).
pub async fn serve_stream<IO, H>(
    io: IO,
    handler: Arc<H>,
    config: Arc<ConnConfig>,
    shutdown: CancellationToken,
    peer: &str,
    client: Option<crate::impersonate::PipeClient>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let (rd, wr) = tokio::io::split(io);
    let out = Out::new(None, config.response_buffer, config.align_records);
    run(
        OwnedSource(rd),
        OwnedSink(wr),
        out,
        handler,
        &config,
        shutdown,
        peer,
        client.as_ref(),
        BytesMut::new(),
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn run<R: ReadSource, W: WriteSink, H: Handler>(
    rd: R,
    wr: W,
    out: Arc<Out>,
    handler: Arc<H>,
    config: &ConnConfig,
    shutdown: CancellationToken,
    peer: &str,
    client: Option<&crate::impersonate::PipeClient>,
    start: BytesMut,
) {
    debug!(peer, "connection accepted");
    let closed = CancellationToken::new();
    let reader = read_loop(
        rd,
        handler,
        config,
        &out,
        closed.clone(),
        shutdown,
        peer,
        client,
        start,
    );
    let writer = async {
        if let Err(e) = out::write_loop(wr, &out).await {
            debug!(peer, error = %e, "web server went away while a response was being written");
        }
        closed.cancel();
    };
    tokio::join!(reader, writer);
    debug!(peer, "connection closed");
}

/// After shutdown, how long an idle connection waits for a request already on its way
/// before it closes.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(250);

/// Where the reader gets bytes.
trait ReadSource {
    /// Reads into `buf`; 0 at the end of the stream.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Reads what is already there without waiting (`None`: nothing, or an error).
    fn read_now(&mut self, buf: &mut BytesMut) -> Option<usize>;
    /// A duplicate of the socket's descriptor, to hand the connection over; `None` when
    /// this transport cannot be passed to another process.
    #[cfg(unix)]
    fn try_clone_fd(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

struct SharedSource<S>(Arc<S>);

impl<S: DirectStream> ReadSource for SharedSource<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.0.readable().await?;
            let room = buf.capacity() - buf.len();
            match self.0.try_read_buf(buf) {
                Ok(n) => {
                    if n > 0 && n < room {
                        // A short read emptied the socket: wait in the poller next time
                        // rather than pay for a read that would say WouldBlock.
                        self.0.clear_read_ready();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_now(&mut self, buf: &mut BytesMut) -> Option<usize> {
        self.0.try_read_buf(buf).ok()
    }

    #[cfg(unix)]
    fn try_clone_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.0.try_clone_fd().ok()
    }
}

struct OwnedSource<R>(R);

impl<R: AsyncRead + Unpin + Send> ReadSource for OwnedSource<R> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.0.read_buf(buf).await
    }

    fn read_now(&mut self, buf: &mut BytesMut) -> Option<usize> {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        let fut = self.0.read_buf(buf);
        tokio::pin!(fut);
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(n)) => Some(n),
            _ => None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: ReadSource, H: Handler>(
    mut rd: R,
    handler: Arc<H>,
    config: &ConnConfig,
    out: &Arc<Out>,
    closed: CancellationToken,
    shutdown: CancellationToken,
    peer: &str,
    client: Option<&crate::impersonate::PipeClient>,
    start: BytesMut,
) {
    let mut conn = ServerConnection::new(config.limits.clone());
    let mut active: HashMap<u16, Active> = HashMap::new();
    // Bytes a retiring worker read before handing this connection over come first.
    let mut unprocessed = !start.is_empty();
    let mut buf = start;
    buf.reserve(config.read_buffer);
    #[cfg(unix)]
    let mut handover = config.handover.as_deref();
    let mut freed = Vec::new();
    let mut shutdown_seen = false;
    // The linger is for a request already on its way when the signal came: once per
    // connection. A web server that keeps sending on a kept-alive connection must not keep
    // a draining process alive: after that, an idle connection closes at once.
    let mut lingered = false;
    let idle = config.idle_timeout;
    let idle_timer = tokio::time::sleep(idle.unwrap_or(Duration::MAX / 4));
    tokio::pin!(idle_timer);
    let mut last_read = Instant::now();
    let read_timeout = config.read_timeout;
    let read_timer = tokio::time::sleep(read_timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(read_timer);
    let mut last_input = Instant::now();
    let params_timeout = config.params_timeout;
    let params_timer = tokio::time::sleep(params_timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(params_timer);
    // The web server closed or reset its end (as opposed to this side deciding to close).
    let mut peer_gone = false;
    loop {
        release_freed(out, &mut freed, &mut conn, &mut active);
        #[cfg(unix)]
        if shutdown_seen
            && let Some(h) = handover.filter(|h| h.is_retiring())
            && conn.at_request_boundary()
            && !out.will_close()
        {
            // Retiring: a kept connection goes to another worker rather than closing under
            // a request the web server may already have sent.
            match hand_over(&rd, out, &buf, h, peer).await {
                HandOver::Done => {
                    // Let go of the socket without shutting it down: it lives on elsewhere.
                    out.close();
                    return;
                }
                HandOver::Closed => break,
                HandOver::Failed => handover = None,
            }
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(config.read_buffer);
        }
        let idle_now = active.is_empty() && buf.is_empty();
        let read = if std::mem::take(&mut unprocessed) {
            Ok(buf.len())
        } else if shutdown_seen && idle_now {
            // A request may already sit unread in the socket: serve it rather than drop it;
            // otherwise close now.
            // Bytes written just before the signal may not have reached the reactor yet
            // (Windows pipes complete reads through the IOCP), so wait a moment for them.
            let pending = match rd.read_now(&mut buf) {
                Some(n) if n > 0 => Some(Ok(n)),
                _ if !lingered => {
                    lingered = true;
                    tokio::time::timeout(SHUTDOWN_LINGER, rd.read(&mut buf))
                        .await
                        .ok()
                }
                _ => None,
            };
            match pending {
                Some(Ok(n)) if n > 0 => Ok(n),
                Some(Err(e)) => Err(e),
                _ => {
                    debug!(peer, "closing idle connection for shutdown");
                    break;
                }
            }
        } else {
            tokio::select! {
                biased;
                () = closed.cancelled() => break,
                () = out.wake_reader.notified() => continue,
                () = shutdown.cancelled(), if !shutdown_seen => {
                    // From now on every finished request wakes the reader, which closes the
                    // connection once nothing is in flight.
                    shutdown_seen = true;
                    out.want_freed_wakeups();
                    continue;
                }
                () = &mut idle_timer, if idle.is_some() => {
                    let idle = idle.unwrap_or_default();
                    release_freed(out, &mut freed, &mut conn, &mut active);
                    if active.is_empty() && buf.is_empty() && last_read.elapsed() >= idle {
                        info!(peer, timeout_s = idle.as_secs(), "closing connection idle past --idle-timeout");
                        break;
                    }
                    // Busy, or read from recently: look again one timeout after the last read
                    // (or from now, while requests run).
                    let base = if active.is_empty() { last_read } else { Instant::now() };
                    idle_timer.as_mut().reset((base + idle).into());
                    continue;
                }
                () = &mut read_timer, if read_timeout.is_some() => {
                    let limit = read_timeout.unwrap_or_default();
                    let waiting = !buf.is_empty()
                        || active.values().any(|a| !a.started || !a.stdin_done.is_open());
                    if waiting && last_input.elapsed() >= limit {
                        warn!(
                            peer,
                            timeout_s = limit.as_secs_f64(),
                            waiting = active.len(),
                            "the web server sent nothing for --read-timeout while a request waited for its params or body: closing the connection"
                        );
                        break;
                    }
                    let base = if waiting { last_input } else { Instant::now() };
                    read_timer.as_mut().reset((base + limit).into());
                    continue;
                }
                () = &mut params_timer, if params_timeout.is_some() => {
                    let limit = params_timeout.unwrap_or_default();
                    let oldest = active.values().filter(|a| !a.started).map(|a| a.begun).min();
                    if let Some(begun) = oldest.filter(|b| b.elapsed() >= limit) {
                        warn!(
                            peer,
                            timeout_s = limit.as_secs_f64(),
                            waited_s = begun.elapsed().as_secs_f64(),
                            "a request's params did not all arrive within --params-timeout: closing the connection"
                        );
                        break;
                    }
                    // Look again when the oldest request still in its params reaches the limit.
                    let base = oldest.unwrap_or_else(Instant::now);
                    params_timer.as_mut().reset((base + limit).into());
                    continue;
                }
                r = rd.read(&mut buf) => r,
            }
        };
        match read {
            Ok(0) => {
                peer_gone = true;
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
            Ok(_) => {
                if idle.is_some() {
                    last_read = Instant::now();
                }
                if read_timeout.is_some() {
                    last_input = Instant::now();
                }
            }
            Err(e) => {
                debug!(peer, error = %e, "read failed");
                peer_gone = true;
                break;
            }
        }
        if let Err(e) = process(
            &mut conn,
            &mut buf,
            &mut active,
            &handler,
            config,
            out,
            &mut freed,
            peer,
            client,
        )
        .await
        {
            warn!(peer, error = %e, "closing connection: invalid FastCGI input");
            break;
        }
    }
    if peer_gone {
        // The web server closed (or reset) the connection: nginx does this when the browser
        // goes away, and never sends FCGI_ABORT_REQUEST. Every request on it is aborted (an
        // ASGI app waiting in receive() gets http.disconnect, a WSGI app's writes fail), and
        // the connection ends now rather than when the last handler notices: its --max-conns
        // slot and a graceful stop do not wait for an app that keeps running. (FastCGI gives
        // a half-close no meaning and no web server sends one: end of input is the end.)
        for (_, a) in active.drain() {
            a.abort.fire();
            a.stdin_done.open();
        }
        out.close();
        return;
    }
    // The connection is done reading: requests still waiting for body bytes never get them.
    for (_, a) in active.drain() {
        if a.body.is_some() || !a.started {
            a.abort.fire();
        }
        a.stdin_done.open();
    }
    if !closed.is_cancelled() {
        // Let the writer flush what is queued, then close.
        out.close_when_flushed();
    }
}

#[cfg(unix)]
enum HandOver {
    /// The supervisor has the connection.
    Done,
    /// The connection closed meanwhile.
    Closed,
    /// It could not be handed over: close it as without a supervisor.
    Failed,
}

/// Hands a connection at a request boundary to the supervisor: once every response byte has
/// reached the socket, a duplicate of its descriptor goes with `buf` (bytes read but not yet
/// a whole record). Anything the web server sends meanwhile waits in the socket for the next
/// worker.
#[cfg(unix)]
async fn hand_over<R: ReadSource>(
    rd: &R,
    out: &Out,
    buf: &BytesMut,
    handover: &crate::handoff::Handover,
    peer: &str,
) -> HandOver {
    if !out.flushed().await {
        return HandOver::Closed;
    }
    let Some(fd) = rd.try_clone_fd() else {
        return HandOver::Failed;
    };
    if handover
        .give(fd, bytes::Bytes::copy_from_slice(buf), peer)
        .await
    {
        debug!(
            peer,
            leftover = buf.len(),
            "kept connection handed over at a request boundary"
        );
        HandOver::Done
    } else {
        HandOver::Failed
    }
}

/// Releases the ids whose ends have been queued.
fn release_freed(
    out: &Out,
    freed: &mut Vec<u16>,
    conn: &mut ServerConnection,
    active: &mut HashMap<u16, Active>,
) {
    out.take_freed(freed);
    for id in freed.drain(..) {
        conn.finish(id);
        active.remove(&id);
    }
}

#[allow(clippy::too_many_arguments)]
async fn process<H: Handler>(
    conn: &mut ServerConnection,
    buf: &mut BytesMut,
    active: &mut HashMap<u16, Active>,
    handler: &Arc<H>,
    config: &ConnConfig,
    out: &Arc<Out>,
    freed: &mut Vec<u16>,
    peer: &str,
    client: Option<&crate::impersonate::PipeClient>,
) -> Result<(), pyfcgi_proto::ProtoError> {
    loop {
        release_freed(out, freed, conn, active);
        let event = conn.decode(buf)?;
        if conn.has_output() {
            let answer = conn.take_output();
            if out.push_raw(&answer).is_err() {
                return Ok(());
            }
            // Management answers (FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE, refusals) count
            // against the connection's output budget like responses: a peer that floods
            // queries and never reads the answers stops being read, so memory stays bounded.
            if out.is_full() {
                debug!(
                    peer,
                    "the web server is not reading its answers: reading paused until it does"
                );
                out.room().await;
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
                        begun: Instant::now(),
                    },
                );
            }
            Event::Params { id, params } => {
                let Some(a) = active.get_mut(&id) else {
                    continue;
                };
                let params = match config
                    .trusted_proxies
                    .as_ref()
                    .and_then(|t| t.rewrite(&params))
                {
                    Some(rewritten) => rewritten,
                    None => params,
                };
                let (feeder, body_rx) = body::channel(&config.body);
                a.body = Some(feeder);
                a.started = true;
                let seq = crate::observe::next_request_seq();
                let track = config
                    .observer
                    .as_ref()
                    .map(|o| crate::observe::Track::new(Arc::clone(o), seq, &params));
                let request = Request {
                    id,
                    seq,
                    params,
                    keep_conn: a.keep_conn,
                    body: body_rx,
                    abort: a.abort.clone(),
                    client: client.cloned(),
                };
                let response = ResponseWriter::new(
                    id,
                    a.keep_conn,
                    Arc::clone(out),
                    a.stdin_done.clone(),
                    track,
                );
                if let Err((request, response)) = handler.try_handle_now(request, response) {
                    let handler = Arc::clone(handler);
                    tokio::spawn(async move { handler.handle(request, response).await });
                }
            }
            Event::Stdin { id, data } => feed_body(active, id, BodyMsg::Data(data), config).await,
            Event::StdinEnd { id } => {
                feed_body(active, id, BodyMsg::End, config).await;
                if let Some(a) = active.get_mut(&id) {
                    a.body = None;
                    a.stdin_done.open();
                }
            }
            Event::Refused { id, reason } => {
                let Some(a) = active.get_mut(&id) else {
                    continue;
                };
                warn!(
                    peer,
                    id,
                    "refused a request: {reason} (answered 431; raise --max-params-bytes or --max-params)"
                );
                a.started = true;
                a.stdin_done.open();
                let end = End {
                    id,
                    app_status: 0,
                    close: !a.keep_conn,
                };
                let page: &[u8] = b"Status: 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe request's headers are larger than this server accepts.\n";
                if out.push(RecordType::Stdout, id, page, Some(end)).is_err() {
                    return Ok(());
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
                    let end = End {
                        id,
                        app_status: 0,
                        close: !a.keep_conn,
                    };
                    if out.push(RecordType::Stdout, id, &[], Some(end)).is_err() {
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
