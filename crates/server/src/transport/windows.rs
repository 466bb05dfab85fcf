//! Windows transports: TCP listeners, and what IIS passes on standard input — the server end
//! of an already-connected overlapped named pipe (the default), or a listening socket
//! (`protocol="Tcp"`) (research/iis-fastcgi.md §1.4, §1.5).
//!
//! The pipe is one connection for the life of the process under IIS. A client that sends a
//! request without `FCGI_KEEP_CONN` gets the fcgi2/PHP behaviour instead: once it has read the
//! response and closed its end, the pipe is disconnected and waits for the next client.

use std::io;
use std::net::IpAddr;
use std::os::windows::io::{FromRawSocket, RawHandle, RawSocket};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::NamedPipeServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tracing::{debug, warn};
use windows_sys::Win32::Foundation::{
    CloseHandle, DUPLICATE_SAME_ACCESS, DuplicateHandle, ERROR_IO_PENDING, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Networking::WinSock::{
    SO_ACCEPTCONN, SO_TYPE, SOCK_STREAM, SOCKADDR_STORAGE, SOCKET, SOL_SOCKET, WSADATA, WSAStartup,
    getpeername, getsockname, getsockopt,
};
use windows_sys::Win32::Storage::FileSystem::WriteFile;
use windows_sys::Win32::System::Console::{GetStdHandle, STD_INPUT_HANDLE};
use windows_sys::Win32::System::IO::{GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Pipes::{GetNamedPipeInfo, PIPE_SERVER_END};
use windows_sys::Win32::System::Threading::{CreateEventW, GetCurrentProcess};

use super::{Bind, StdinKind};
use crate::ServerError;

/// How long a client that sent a request without `FCGI_KEEP_CONN` gets to read the response
/// and close its end before the pipe is disconnected anyway (which discards unread data).
const CLIENT_CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// Response bytes queued for a pipe's writer thread before handlers wait (in writes of up to
/// `ConnConfig::write_coalesce` bytes each).
const PIPE_WRITE_QUEUE: usize = 2;

/// A source of connections.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener, its `FCGI_WEB_SERVER_ADDRS` allow-list (empty = everyone), and whether
    /// it was inherited on standard input (IIS `protocol="Tcp"`).
    Tcp(TcpListener, Vec<IpAddr>, bool),
    /// One already-connected TCP stream: served once, then the server stops.
    ConnectedTcp(Option<TcpStream>),
    /// The server end of a named pipe inherited from IIS.
    Pipe(PipeListener),
}

/// What an accept produced.
#[derive(Debug)]
pub enum Accepted {
    /// A TCP connection and its peer.
    Tcp(TcpStream, String),
    /// The named-pipe connection.
    Pipe(PipeConnection),
}

/// What kind of transport a handle inherited from the web server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// The server end of a named pipe (IIS's default transport).
    PipeServer,
    /// A listening stream socket (IIS `protocol="Tcp"`).
    ListeningSocket,
    /// A connected stream socket.
    ConnectedSocket,
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

/// The standard-input handle, unless it is null or invalid.
fn stdin_handle() -> Option<HANDLE> {
    // SAFETY: GetStdHandle only reads the process's standard-handle table.
    let h = unsafe { GetStdHandle(STD_INPUT_HANDLE) };
    (!h.is_null() && h != INVALID_HANDLE_VALUE).then_some(h)
}

/// Inspects the handle on standard input without taking it. Never looks at stdout or stderr:
/// IIS passes `INVALID_HANDLE_VALUE` there, and Wine turns that into NULL.
pub fn inspect_stdin() -> Option<StdinKind> {
    Some(match inspect_handle(stdin_handle()?)? {
        HandleKind::PipeServer | HandleKind::ConnectedSocket => StdinKind::Connected,
        HandleKind::ListeningSocket => StdinKind::Listening,
    })
}

/// Inspects `handle` without taking it; `None` when it is neither a named pipe's server end
/// nor a stream socket (a file, a console, an anonymous pipe, a closed handle).
pub fn inspect_handle(handle: HANDLE) -> Option<HandleKind> {
    // `GetFileType` says FILE_TYPE_PIPE for sockets too, so ask the pipe question directly
    // (as PHP does): GetNamedPipeInfo fails on a socket.
    let mut flags = 0u32;
    // SAFETY: a query on a handle we only borrow; the out-pointer is a live local and the
    // other out-pointers are optional (null).
    let is_pipe = unsafe {
        GetNamedPipeInfo(
            handle,
            &raw mut flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    } != 0;
    if is_pipe {
        // A client end (someone else's pipe opened by name) is no transport of ours. (The
        // read end of an anonymous pipe, `cmd | pyfcgi`, is a server end too; nobody feeds
        // FastCGI to pyfcgi that way.)
        return (flags & PIPE_SERVER_END != 0).then_some(HandleKind::PipeServer);
    }
    socket_kind(handle as SOCKET)
}

fn winsock_init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: WSADATA is plain data WSAStartup fills in. Winsock counts startups, so this
        // coexists with std's own (never matched by WSACleanup: we need it until exit).
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the pointer is to a live local.
        let rc = unsafe { WSAStartup(0x0202, &raw mut data) };
        if rc != 0 {
            debug!(rc, "WSAStartup failed");
        }
    });
}

fn sockopt_i32(s: SOCKET, name: i32) -> Option<i32> {
    let mut value = 0i32;
    let mut len = size_of::<i32>() as i32;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a live local; a handle that
    // is not a socket makes it fail with WSAENOTSOCK.
    let rc = unsafe { getsockopt(s, SOL_SOCKET, name, (&raw mut value).cast(), &raw mut len) };
    (rc == 0).then_some(value)
}

fn socket_kind(s: SOCKET) -> Option<HandleKind> {
    winsock_init();
    match (sockopt_i32(s, SO_TYPE), sockopt_i32(s, SO_ACCEPTCONN)) {
        (Some(ty), _) if ty != SOCK_STREAM => None,
        (Some(_), Some(accepting)) => Some(if accepting != 0 {
            HandleKind::ListeningSocket
        } else {
            HandleKind::ConnectedSocket
        }),
        // Wine 8 answers WSAENOTSOCK to getsockopt on an *inherited* socket, while
        // getsockname, getpeername and accept work: decide by whether it has a peer.
        _ => {
            let mut addr: SOCKADDR_STORAGE = zeroed_sockaddr();
            let mut len = size_of::<SOCKADDR_STORAGE>() as i32;
            // SAFETY: the call writes at most `len` bytes into `addr`, a live local.
            if unsafe { getsockname(s, (&raw mut addr).cast(), &raw mut len) } != 0 {
                return None;
            }
            let mut len = size_of::<SOCKADDR_STORAGE>() as i32;
            // SAFETY: as above.
            let connected = unsafe { getpeername(s, (&raw mut addr).cast(), &raw mut len) } == 0;
            Some(if connected {
                HandleKind::ConnectedSocket
            } else {
                HandleKind::ListeningSocket
            })
        }
    }
}

fn zeroed_sockaddr() -> SOCKADDR_STORAGE {
    // SAFETY: SOCKADDR_STORAGE is plain data; all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

impl Listener {
    /// Opens the transport `bind` names. `allow` is the TCP allow-list.
    pub async fn bind(
        bind: &Bind,
        _unix: &super::UnixSocketOptions,
        allow: Vec<IpAddr>,
    ) -> Result<Self, ServerError> {
        match bind {
            Bind::Tcp(addr) => {
                let l =
                    TcpListener::bind(addr.as_str())
                        .await
                        .map_err(|source| ServerError::Bind {
                            addr: addr.clone(),
                            source,
                        })?;
                Ok(Self::Tcp(l, allow, false))
            }
            Bind::Unix(path) => Err(ServerError::Bind {
                addr: format!("unix:{}", path.display()),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Unix sockets are not supported on Windows; use HOST:PORT, or let IIS pass its named pipe on standard input",
                ),
            }),
            Bind::Fd(fd) => Self::from_fd(*fd, allow),
        }
    }

    /// Uses what the web server passed: `fd:0` is standard input, any other number is an
    /// inherited handle value. A named pipe's server end or a connected socket is served as
    /// the one connection; a listening socket is accepted on.
    pub fn from_fd(fd: i32, allow: Vec<IpAddr>) -> Result<Self, ServerError> {
        let handle = if fd == 0 {
            stdin_handle().ok_or(ServerError::NotASocket { fd })?
        } else {
            fd as usize as HANDLE
        };
        let kind = inspect_handle(handle).ok_or(ServerError::NotASocket { fd })?;
        let ctx = || format!("cannot use the transport on handle {fd}");
        Ok(match kind {
            HandleKind::PipeServer => {
                // SAFETY: `inspect_handle` showed this is an open named-pipe server end; it is
                // the handle the web server gave us and nothing else uses it, so we own it
                // from here on. IIS creates it overlapped, which tokio requires.
                let pipe = unsafe { NamedPipeServer::from_raw_handle(handle as RawHandle) }
                    .map_err(io_err(ctx()))?;
                Self::Pipe(PipeListener {
                    state: PipeState::Ready {
                        pipe,
                        reconnect: false,
                    },
                })
            }
            HandleKind::ListeningSocket => {
                // SAFETY: an open listening stream socket we now own, as above.
                let l = unsafe { std::net::TcpListener::from_raw_socket(handle as RawSocket) };
                l.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::Tcp(
                    TcpListener::from_std(l).map_err(io_err(ctx()))?,
                    allow,
                    true,
                )
            }
            HandleKind::ConnectedSocket => {
                // SAFETY: an open connected stream socket we now own, as above.
                let s = unsafe { std::net::TcpStream::from_raw_socket(handle as RawSocket) };
                s.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::ConnectedTcp(Some(TcpStream::from_std(s).map_err(io_err(ctx()))?))
            }
        })
    }

    /// True when this listener carries one inherited connection (IIS's pipe).
    pub fn is_connected_stream(&self) -> bool {
        matches!(self, Self::ConnectedTcp(_) | Self::Pipe(_))
    }

    /// True when the transport came from IIS (its named pipe, or a listening socket on
    /// standard input): IIS fails a request on any record type it does not expect
    /// (`FCGI_UNKNOWN_TYPE` included) and never multiplexes (research/iis-fastcgi.md §1.6).
    pub fn is_iis(&self) -> bool {
        matches!(self, Self::Pipe(_) | Self::Tcp(_, _, true))
    }

    /// Where connections come from, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l, _, inherited) => {
                let addr = l
                    .local_addr()
                    .map_or_else(|_| "tcp".into(), |a| format!("tcp:{a}"));
                if *inherited {
                    format!("{addr} (listening socket on stdin)")
                } else {
                    addr
                }
            }
            Self::ConnectedTcp(_) => "connected tcp stream on stdin".into(),
            Self::Pipe(_) => "named pipe on stdin".into(),
        }
    }

    /// The next connection; `Ok(None)` when the inherited connection is over. Refused TCP
    /// peers (allow-list) are logged and skipped.
    pub async fn accept(&mut self) -> io::Result<Option<Accepted>> {
        loop {
            return match self {
                Self::Tcp(l, allow, _) => {
                    let (s, peer) = l.accept().await?;
                    if !super::peer_allowed(allow, peer.ip()) {
                        warn!(%peer, "refused connection: peer is not in FCGI_WEB_SERVER_ADDRS");
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    Ok(Some(Accepted::Tcp(s, peer.to_string())))
                }
                Self::ConnectedTcp(s) => Ok(s.take().map(|s| {
                    let peer = s
                        .peer_addr()
                        .map_or_else(|_| "stdin".into(), |a| a.to_string());
                    Accepted::Tcp(s, peer)
                })),
                Self::Pipe(p) => Ok(p.accept().await?.map(Accepted::Pipe)),
            };
        }
    }
}

/// The inherited named pipe as a listener: it hands out its one connection, gets the pipe
/// back when that connection ends, and either stops (the client went away: under IIS that
/// means "exit now") or, when we closed a connection that was not kept, disconnects and
/// waits for the next client.
#[derive(Debug)]
pub struct PipeListener {
    state: PipeState,
}

#[derive(Debug)]
enum PipeState {
    /// The pipe is ours; `reconnect` when the last client must be disconnected first.
    Ready {
        pipe: NamedPipeServer,
        reconnect: bool,
    },
    /// Lent to a connection; comes back through the channel when the connection ends.
    Lent(oneshot::Receiver<Returned>),
    /// The client went away for good.
    Closed,
}

#[derive(Debug)]
struct Returned {
    pipe: NamedPipeServer,
    ending: Ending,
}

/// How a pipe connection ended: whichever happened first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// We closed it (a request without `FCGI_KEEP_CONN`, a protocol error, shutdown).
    ClosedByUs,
    /// The client closed its end, or the pipe broke.
    PeerGone,
}

impl PipeListener {
    // Cancel safe: the pipe stays in `self.state` across every await.
    async fn accept(&mut self) -> io::Result<Option<PipeConnection>> {
        loop {
            match &mut self.state {
                PipeState::Closed => return Ok(None),
                PipeState::Lent(rx) => {
                    self.state = match rx.await {
                        Ok(Returned {
                            pipe,
                            ending: Ending::ClosedByUs,
                        }) => PipeState::Ready {
                            pipe,
                            reconnect: true,
                        },
                        Ok(Returned {
                            ending: Ending::PeerGone,
                            ..
                        })
                        | Err(_) => PipeState::Closed,
                    };
                }
                PipeState::Ready { pipe, reconnect } => {
                    if *reconnect {
                        let_client_finish(pipe).await;
                        *reconnect = false;
                        if let Err(e) = pipe.disconnect() {
                            warn!(error = %e, "cannot disconnect the named pipe; stopping");
                            self.state = PipeState::Closed;
                            continue;
                        }
                        debug!("named pipe disconnected; waiting for the next client");
                    }
                    // ERROR_PIPE_CONNECTED (IIS connected before starting us) counts as
                    // connected: tokio returns Ok at once.
                    if let Err(e) = pipe.connect().await {
                        // Retrying a broken pipe would spin: the transport is gone.
                        warn!(error = %e, "cannot connect the named pipe; stopping");
                        self.state = PipeState::Closed;
                        continue;
                    }
                    let (tx, rx) = oneshot::channel();
                    let PipeState::Ready { pipe, .. } =
                        std::mem::replace(&mut self.state, PipeState::Lent(rx))
                    else {
                        continue;
                    };
                    return PipeConnection::new(pipe, tx).map(Some);
                }
            }
        }
    }
}

/// Before `DisconnectNamedPipe`, which throws away whatever the client has not read yet:
/// waits (a while) for the client to read the response and close its end, discarding
/// anything it still sends. fcgi2 calls `FlushFileBuffers` here, which does not wait on an
/// overlapped handle.
async fn let_client_finish(pipe: &mut NamedPipeServer) {
    let drain = async {
        let mut scrap = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut scrap).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(CLIENT_CLOSE_PATIENCE, drain)
        .await
        .is_err()
    {
        debug!("the pipe client did not close its end; disconnecting it");
    }
}

/// One connection on the named pipe: reads go through tokio; writes go through a writer
/// thread so that a flush means the bytes really left the process.
///
/// tokio's pipe writes only start an overlapped `WriteFile` and report success at once; if
/// the process then exits (after the shutdown event, say), the pending write dies with it and
/// IIS gets a truncated response. The writer thread waits for each write to complete, and
/// `poll_flush` waits for the writer thread.
#[derive(Debug)]
pub struct PipeConnection {
    pipe: Option<NamedPipeServer>,
    home: Option<oneshot::Sender<Returned>>,
    ending: Option<Ending>,
    writes: PollSender<Bytes>,
    acks: mpsc::UnboundedReceiver<io::Result<usize>>,
    /// Bytes handed to the writer thread, and bytes it has written.
    sent: u64,
    written: u64,
    write_error: Option<io::ErrorKind>,
}

impl PipeConnection {
    fn new(pipe: NamedPipeServer, home: oneshot::Sender<Returned>) -> io::Result<Self> {
        let handle = OwnedRaw::duplicate(std::os::windows::io::AsRawHandle::as_raw_handle(&pipe))?;
        let (tx, rx) = mpsc::channel(PIPE_WRITE_QUEUE);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("pyfcgi-pipe-writer".into())
            .spawn(move || writer_thread(&handle, rx, &ack_tx))?;
        Ok(Self {
            pipe: Some(pipe),
            home: Some(home),
            ending: None,
            writes: PollSender::new(tx),
            acks: ack_rx,
            sent: 0,
            written: 0,
            write_error: None,
        })
    }

    /// The pipe's client, for requests that take on its identity (`--impersonate`): a
    /// handle of its own, so it outlives this connection's other handles safely. `None` if
    /// the handle cannot be duplicated (such a request is then refused, not run as us).
    pub fn client(&self) -> Option<crate::impersonate::PipeClient> {
        let pipe = self.pipe.as_ref()?;
        let dup = OwnedRaw::duplicate(std::os::windows::io::AsRawHandle::as_raw_handle(pipe))
            .map_err(|e| warn!("cannot duplicate the pipe handle for --impersonate: {e}"))
            .ok()?;
        let raw = dup.get();
        std::mem::forget(dup);
        Some(crate::impersonate::PipeClient::new(
            crate::impersonate::Pipe::from_owned(raw),
        ))
    }

    fn end(&mut self, ending: Ending) {
        self.ending.get_or_insert(ending);
    }

    /// Takes the writer thread's reports; `Poll::Ready` once everything sent is written (or a
    /// write failed).
    fn poll_acks(&mut self, cx: &mut Context<'_>, until_written: bool) -> Poll<io::Result<()>> {
        loop {
            if let Some(kind) = self.write_error {
                return Poll::Ready(Err(kind.into()));
            }
            if until_written && self.written >= self.sent {
                return Poll::Ready(Ok(()));
            }
            let ack = if until_written {
                ready!(self.acks.poll_recv(cx))
            } else {
                match self.acks.try_recv() {
                    Ok(a) => Some(a),
                    Err(mpsc::error::TryRecvError::Empty) => return Poll::Ready(Ok(())),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match ack {
                Some(Ok(n)) => self.written += n as u64,
                Some(Err(e)) => {
                    debug!(error = %e, "named pipe write failed");
                    self.write_error = Some(e.kind());
                    self.end(Ending::PeerGone);
                }
                None => {
                    self.write_error = Some(io::ErrorKind::BrokenPipe);
                    self.end(Ending::PeerGone);
                }
            }
        }
    }
}

impl AsyncRead for PipeConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let result = ready!(Pin::new(pipe).poll_read(cx, buf));
        // EOF (tokio maps ERROR_BROKEN_PIPE to it) or an error: the client is gone.
        if result.is_err() || (buf.filled().len() == before && buf.remaining() > 0) {
            self.end(Ending::PeerGone);
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for PipeConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_acks(cx, false))?;
        if buf.is_empty() {
            // A zero-byte WriteFile on a pipe reaches the reader as a zero-byte read, which
            // readers take for end-of-file: never send one.
            return Poll::Ready(Ok(0));
        }
        if ready!(self.writes.poll_reserve(cx)).is_err()
            || self.writes.send_item(Bytes::copy_from_slice(buf)).is_err()
        {
            self.end(Ending::PeerGone);
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.sent += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_acks(cx, true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = ready!(self.poll_acks(cx, true));
        self.end(Ending::ClosedByUs);
        self.writes.close();
        Poll::Ready(flushed)
    }
}

impl Drop for PipeConnection {
    fn drop(&mut self) {
        if let (Some(pipe), Some(home)) = (self.pipe.take(), self.home.take()) {
            let ending = self.ending.unwrap_or(Ending::PeerGone);
            // The listener may be gone (server shutting down): then the pipe just closes.
            let _ = home.send(Returned { pipe, ending });
        }
    }
}

/// A raw handle we own and close on drop (the writer thread's duplicate of the pipe).
struct OwnedRaw(usize);

impl OwnedRaw {
    fn duplicate(handle: RawHandle) -> io::Result<Self> {
        let mut dup: HANDLE = std::ptr::null_mut();
        // SAFETY: duplicating an open handle of ours within our own process; `dup` is a live
        // local that receives the new handle.
        let ok = unsafe {
            let me = GetCurrentProcess();
            DuplicateHandle(
                me,
                handle as HANDLE,
                me,
                &raw mut dup,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(dup as usize))
    }

    fn get(&self) -> HANDLE {
        self.0 as HANDLE
    }
}

impl Drop for OwnedRaw {
    fn drop(&mut self) {
        // SAFETY: we own this handle and close it exactly once.
        unsafe { CloseHandle(self.get()) };
    }
}

/// Writes every buffer it receives to the pipe, each completely, and reports it. Ends when
/// the connection drops its sender or a write fails.
fn writer_thread(
    pipe: &OwnedRaw,
    mut rx: mpsc::Receiver<Bytes>,
    acks: &mpsc::UnboundedSender<io::Result<usize>>,
) {
    // SAFETY: a fresh unnamed manual-reset event; null attributes and name are allowed.
    let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    if event.is_null() {
        let _ = acks.send(Err(io::Error::last_os_error()));
        return;
    }
    let event = OwnedRaw(event as usize);
    while let Some(data) = rx.blocking_recv() {
        let result = write_all_overlapped(pipe.get(), event.get(), &data);
        let failed = result.is_err();
        if acks.send(result.map(|()| data.len())).is_err() || failed {
            break;
        }
    }
}

fn write_all_overlapped(pipe: HANDLE, event: HANDLE, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        // The low bit on hEvent keeps this completion off tokio's completion port (the pipe
        // is associated with it): we wait for it here instead (documented for
        // GetQueuedCompletionStatus).
        let mut ov = OVERLAPPED {
            hEvent: (event as usize | 1) as HANDLE,
            ..OVERLAPPED::default()
        };
        // SAFETY: `data` and `ov` outlive the operation: GetOverlappedResult below waits for
        // it to complete before either goes away.
        let started =
            unsafe { WriteFile(pipe, data.as_ptr(), len, std::ptr::null_mut(), &raw mut ov) } != 0;
        // SAFETY: reads the calling thread's last-error value.
        if !started && unsafe { GetLastError() } != ERROR_IO_PENDING {
            return Err(io::Error::last_os_error());
        }
        let mut n = 0u32;
        // SAFETY: `ov` is the OVERLAPPED of the write just started; bWait = TRUE blocks until
        // it completes.
        if unsafe { GetOverlappedResult(pipe, &raw const ov, &raw mut n, 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::windows::named_pipe::{ClientOptions, ServerOptions};

    fn pipe_name(tag: &str) -> String {
        format!(r"\\.\pipe\pyfcgi-test-{tag}-{}", std::process::id())
    }

    fn listener(pipe: NamedPipeServer) -> PipeListener {
        PipeListener {
            state: PipeState::Ready {
                pipe,
                reconnect: false,
            },
        }
    }

    #[tokio::test]
    async fn pipe_server_end_and_sockets_are_recognised() {
        let name = pipe_name("kind");
        let server = ServerOptions::new().create(&name).unwrap();
        let client = ClientOptions::new().open(&name).unwrap();
        use std::os::windows::io::AsRawHandle;
        assert_eq!(
            inspect_handle(server.as_raw_handle() as HANDLE),
            Some(HandleKind::PipeServer)
        );
        assert_eq!(inspect_handle(client.as_raw_handle() as HANDLE), None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        use std::os::windows::io::AsRawSocket;
        assert_eq!(
            inspect_handle(l.as_raw_socket() as HANDLE),
            Some(HandleKind::ListeningSocket)
        );
        let c = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(
            inspect_handle(c.as_raw_socket() as HANDLE),
            Some(HandleKind::ConnectedSocket)
        );
        let file = tempfile::tempfile().unwrap();
        assert_eq!(inspect_handle(file.as_raw_handle() as HANDLE), None);
    }

    #[tokio::test]
    async fn kept_pipe_ends_when_the_client_closes() {
        let name = pipe_name("eof");
        let server = ServerOptions::new().create(&name).unwrap();
        // Connected before the server looks, as IIS does it.
        let mut client = ClientOptions::new().open(&name).unwrap();
        let mut l = listener(server);
        let mut conn = l.accept().await.unwrap().unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(b"pong").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(client);
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        conn.shutdown().await.unwrap();
        drop(conn);
        assert!(l.accept().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn closed_connection_is_disconnected_and_the_next_client_served() {
        let name = pipe_name("reconnect");
        let server = ServerOptions::new().create(&name).unwrap();
        let mut l = listener(server);
        for round in 0..3u8 {
            // The pipe takes a new client only once the last one is disconnected.
            let open = async {
                loop {
                    match ClientOptions::new().open(&name) {
                        Ok(c) => return c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            };
            let (conn, mut client) =
                tokio::join!(async { l.accept().await.unwrap().unwrap() }, open);
            // A response larger than the pipe buffer: its tail is still on the way when we
            // close our side, and the listener must not disconnect before the client has it.
            let big = vec![round; 300_000];
            let serve = async {
                let mut conn = conn;
                conn.write_all(&big).await.unwrap();
                conn.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = vec![0; big.len()];
                client.read_exact(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(serve, read);
            assert!(got == big, "round {round}");
            drop(client);
        }
    }

    #[tokio::test]
    async fn flush_waits_until_the_client_has_the_bytes() {
        let name = pipe_name("flush");
        let server = ServerOptions::new()
            .in_buffer_size(4096)
            .out_buffer_size(4096)
            .create(&name)
            .unwrap();
        let mut client = ClientOptions::new().open(&name).unwrap();
        let mut l = listener(server);
        let mut conn = l.accept().await.unwrap().unwrap();
        let big = vec![7u8; 1 << 20];
        let write = async {
            conn.write_all(&big).await.unwrap();
            assert!(conn.written < conn.sent, "the client has not read yet");
            conn.flush().await.unwrap();
            // Flushed: every WriteFile completed, so even a process exit now loses nothing.
            assert_eq!(conn.written, big.len() as u64);
            drop(conn);
            drop(l);
        };
        let read = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(write, read);
        assert_eq!(got.len(), big.len());
    }
}
