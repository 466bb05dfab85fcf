//! Kept connections passed between processes, so a retiring worker loses none (Unix).
//!
//! Under `--workers`, each worker shares a Unix socket pair with its supervisor
//! ([`HANDOFF_FD_ENV`] names the worker's end). When the supervisor retires a worker (a
//! rolling restart, `--max-rss`, `--worker-lifetime`, or the worker's own request: its
//! `--max-requests`), each `FCGI_KEEP_CONN` connection of that worker is not closed at its
//! next request boundary but sent, as a descriptor (`SCM_RIGHTS`) with the bytes already read
//! from it, to the supervisor, which sends it on to a live worker. That worker serves it as a
//! new connection starting with those bytes. Closing it instead races the web server, which
//! may already have written the next request: nginx retries such a request, Apache,
//! lighttpd and FastCGI clients do not.
//!
//! The pair is `SOCK_SEQPACKET`: one message per send, boundaries kept, end of file when the
//! other side is gone. A message is a tag byte, then for a connection its leftover bytes
//! (less than one record) with the descriptor attached.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Set in a supervised worker's environment: the descriptor of its end of the pair.
pub const HANDOFF_FD_ENV: &str = "PYFCGI_HANDOFF_FD";

/// Most bytes handed along with a connection: what was read of a record not yet whole
/// (header 8, content up to 65,535, padding up to 255), and one byte more than that is never
/// needed.
pub const MAX_LEFTOVER: usize = 8 + 65_535 + 255;

const TAG_CONNECTION: u8 = b'C';
const TAG_RETIRE: u8 = b'R';
const TAG_RETIRE_REQUEST: u8 = b'Q';

/// What goes over the pair.
#[derive(Debug)]
pub enum Message {
    /// A kept connection at a request boundary, and the bytes already read from it that are
    /// not yet part of a request.
    Connection {
        /// The connected socket (TCP or Unix).
        fd: OwnedFd,
        /// At most [`MAX_LEFTOVER`] bytes.
        leftover: Bytes,
    },
    /// Supervisor to worker: stop gracefully, handing kept connections back. Nothing is sent
    /// to this worker after it.
    Retire,
    /// Worker to supervisor: this worker wants to stop (`--max-requests`, a stuck request, a
    /// changed file); the supervisor answers with [`Message::Retire`].
    RetireRequest,
}

/// One end of a worker's pair, registered with the tokio reactor.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// A new pair, both ends close-on-exec (the supervisor clears the flag on the worker's
    /// end in the child only).
    pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: socketpair writes two new descriptors into the array, which we own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and belong to nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_cloexec(a.as_fd())?;
        set_cloexec(b.as_fd())?;
        Ok((a, b))
    }

    /// Wraps one end (made non-blocking); needs a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(fd.as_fd())?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, so its descriptor stays open and the
        // same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Self { fd })
    }

    /// The worker's end, from [`HANDOFF_FD_ENV`]; `None` when the variable is not set, or
    /// on a second call (the descriptor has one owner).
    pub fn from_env() -> Option<io::Result<Self>> {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let value = std::env::var(HANDOFF_FD_ENV).ok()?;
        if TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Self::from_raw_env_value(&value))
    }

    fn from_raw_env_value(value: &str) -> io::Result<Self> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{HANDOFF_FD_ENV}={value:?}: {why}"),
            )
        };
        let raw: RawFd = value
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| bad("not a descriptor number"))?;
        // SAFETY: only borrowed for the check; a closed descriptor makes getsockopt fail.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let kind = socket2::SockRef::from(&borrowed).r#type();
        if kind.ok() != Some(socket2::Type::SEQPACKET) {
            return Err(bad("not the supervisor's socket"));
        }
        // SAFETY: the supervisor left this descriptor open for us alone (checked above to be
        // a seqpacket socket); nothing else in this process uses it, so we take ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Not inherited by the app's own child processes.
        set_cloexec(fd.as_fd())?;
        Self::new(fd)
    }

    /// Sends `message` without waiting (`WouldBlock` when the other side's queue is full).
    pub fn try_send(&self, message: &Message) -> io::Result<()> {
        send_now(self.fd.get_ref().as_fd(), message)
    }

    /// Sends `message`, waiting for room.
    pub async fn send(&self, message: &Message) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| send_now(fd.get_ref().as_fd(), message)) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// The next message; `None` once the other side has closed its end.
    pub async fn recv(&self) -> io::Result<Option<Message>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_now(fd.get_ref().as_fd())) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// A message already queued, without waiting (`WouldBlock` when there is none).
    pub fn try_recv(&self) -> io::Result<Option<Message>> {
        recv_now(self.fd.get_ref().as_fd())
    }
}

/// A worker's side of the hand-over: its channel, and whether it is retiring.
#[derive(Debug)]
pub struct Handover {
    channel: Channel,
    /// Set when the supervisor retires this worker; from then on kept connections go back
    /// at their next request boundary instead of closing.
    retiring: AtomicBool,
    handed: AtomicU64,
    failed: AtomicU64,
}

/// How long a retiring worker waits for the supervisor to take a connection.
const GIVE_TIMEOUT: Duration = Duration::from_secs(2);

impl Handover {
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            retiring: AtomicBool::new(false),
            handed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// This worker's end from the environment; `None` when it was not started by a
    /// supervisor that passes connections (a problem with the variable is logged).
    pub fn from_env() -> Option<Self> {
        match Channel::from_env()? {
            Ok(channel) => Some(Self::new(channel)),
            Err(e) => {
                warn!(
                    "{e}; kept connections will be closed, not handed over, when this worker retires"
                );
                None
            }
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// True once the supervisor has retired this worker.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }

    /// Marks this worker retiring (before its shutdown starts).
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
    }

    /// Connections handed over so far.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    /// Connections that could not be handed over (and were closed as without a supervisor).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Sends a connection (a duplicate of its descriptor) to the supervisor.
    pub(crate) async fn give(&self, fd: OwnedFd, leftover: Bytes, peer: &str) -> bool {
        let message = Message::Connection { fd, leftover };
        let result = tokio::time::timeout(GIVE_TIMEOUT, self.channel.send(&message))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the supervisor did not take it in time",
                ))
            });
        match result {
            Ok(()) => {
                self.handed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Once per process: the same cause usually hits every connection.
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        peer,
                        error = %e,
                        "cannot hand a kept connection to the supervisor: closing it (and any other that fails the same way)"
                    );
                }
                false
            }
        }
    }

    /// Logs what was handed over, once the server has stopped.
    pub fn report(&self) {
        let (handed, failed) = (self.handed(), self.failed());
        if handed > 0 || failed > 0 {
            info!(
                handed,
                failed, "kept connections handed over to the supervisor for other workers"
            );
        }
    }
}

/// How long a worker that wants to stop waits for the supervisor's [`Message::Retire`]
/// before stopping on its own.
const RETIRE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Joins a supervised worker's two stop tokens: `wants_stop` is what the application side
/// cancels (`--max-requests`, a stuck request, a changed file), `serve_stop` is what the
/// server stops on (SIGTERM, or the supervisor's [`Message::Retire`], which the accept loop
/// turns into `retire()` then a cancel). A stop the worker wants is asked of the supervisor,
/// so that it stops sending connections here before the drain starts.
pub fn link_stops(
    handover: std::sync::Arc<Handover>,
    wants_stop: CancellationToken,
    serve_stop: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            biased;
            () = serve_stop.cancelled() => wants_stop.cancel(),
            () = wants_stop.cancelled() => {
                if let Err(e) = handover.channel.send(&Message::RetireRequest).await {
                    warn!(error = %e, "cannot ask the supervisor to retire this worker: stopping now");
                    serve_stop.cancel();
                    return;
                }
                if tokio::time::timeout(RETIRE_REQUEST_TIMEOUT, serve_stop.cancelled())
                    .await
                    .is_err()
                {
                    warn!("the supervisor did not retire this worker in time: stopping now");
                    handover.retire();
                    serve_stop.cancel();
                }
            }
        }
    });
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const CLOEXEC: libc::c_int = libc::SOCK_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const CLOEXEC: libc::c_int = 0;

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const RECV_FLAGS: libc::c_int = 0;

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const SEND_FLAGS: libc::c_int = 0;

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold; only its flags change.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold; only its status flags change.
    let r = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for the control message of one descriptor, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuf([u8; 64]);

fn send_now(sock: BorrowedFd<'_>, message: &Message) -> io::Result<()> {
    let (tag, payload, pass): (u8, &[u8], Option<RawFd>) = match message {
        Message::Connection { fd, leftover } => {
            if leftover.len() > MAX_LEFTOVER {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "more leftover bytes than one partial record",
                ));
            }
            (TAG_CONNECTION, leftover, Some(fd.as_raw_fd()))
        }
        Message::Retire => (TAG_RETIRE, &[], None),
        Message::RetireRequest => (TAG_RETIRE_REQUEST, &[], None),
    };
    let tag = [tag];
    let mut iov = [
        libc::iovec {
            iov_base: tag.as_ptr().cast_mut().cast(),
            iov_len: 1,
        },
        libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        },
    ];
    let mut control = ControlBuf([0; 64]);
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    if let Some(raw) = pass {
        let fd_len = std::mem::size_of::<RawFd>() as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(fd_len), libc::CMSG_LEN(fd_len)) };
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: msg_control points at `control`, aligned and larger than CMSG_SPACE of one
        // descriptor, so the first header and its data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const hdr);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for the descriptor"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
        }
    }
    // SAFETY: every pointer in `hdr` refers to live buffers of the stated lengths.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const hdr, SEND_FLAGS) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != 1 + payload.len() {
        // A seqpacket send is all or nothing; say so rather than assume.
        return Err(io::Error::other("the message was sent short"));
    }
    Ok(())
}

fn recv_now(sock: BorrowedFd<'_>) -> io::Result<Option<Message>> {
    let mut data = vec![0u8; 1 + MAX_LEFTOVER];
    let mut iov = [libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    }];
    let mut control = ControlBuf([0; 64]);
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = control.0.len() as _;
    // SAFETY: `hdr` points at live buffers of the stated lengths.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut hdr, RECV_FLAGS) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Every descriptor received is owned (and closed on any error below) before anything else.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen with well-formed headers; the
    // CMSG_* macros walk them within those bounds, and each SCM_RIGHTS payload is an array of
    // descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg);
                let size = std::mem::size_of::<RawFd>();
                for i in 0..bytes / size {
                    let raw = std::ptr::read_unaligned(data.add(i * size).cast::<RawFd>());
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const hdr, cmsg);
        }
    }
    for fd in &fds {
        set_cloexec(fd.as_fd())?;
    }
    if n == 0 {
        return Ok(None);
    }
    if hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a hand-over message was larger than allowed",
        ));
    }
    data.truncate(n as usize);
    let invalid = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidData, why.to_owned()));
    match (data[0], fds.len()) {
        (TAG_CONNECTION, 1) => {
            let fd = fds.pop().ok_or_else(|| io::Error::other("no descriptor"))?;
            // Copied: the receive buffer is sized for the largest leftover.
            Ok(Some(Message::Connection {
                fd,
                leftover: Bytes::copy_from_slice(&data[1..]),
            }))
        }
        (TAG_RETIRE, 0) if n == 1 => Ok(Some(Message::Retire)),
        (TAG_RETIRE_REQUEST, 0) if n == 1 => Ok(Some(Message::RetireRequest)),
        (TAG_CONNECTION, _) => invalid("a hand-over message without exactly one descriptor"),
        _ => invalid("an unknown hand-over message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn channels() -> (Channel, Channel) {
        let (a, b) = Channel::pair().unwrap();
        (Channel::new(a).unwrap(), Channel::new(b).unwrap())
    }

    #[tokio::test]
    async fn a_connection_and_its_leftover_bytes_cross_the_pair() {
        let (a, b) = channels();
        let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let leftover = Bytes::from(vec![7u8; MAX_LEFTOVER]);
        a.send(&Message::Connection {
            fd: theirs.into(),
            leftover: leftover.clone(),
        })
        .await
        .unwrap();
        a.send(&Message::Retire).await.unwrap();
        let Some(Message::Connection { fd, leftover: got }) = b.recv().await.unwrap() else {
            panic!("not a connection")
        };
        assert_eq!(got, leftover);
        // The descriptor is the same socket: what one end writes, the other reads.
        let mut received = std::os::unix::net::UnixStream::from(fd);
        mine.write_all(b"ping").unwrap();
        let mut four = [0u8; 4];
        received.read_exact(&mut four).unwrap();
        assert_eq!(&four, b"ping");
        assert!(matches!(b.recv().await.unwrap(), Some(Message::Retire)));
        b.send(&Message::RetireRequest).await.unwrap();
        assert!(matches!(
            a.try_recv().unwrap(),
            Some(Message::RetireRequest)
        ));
        assert_eq!(
            a.try_recv().err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        drop(b);
        assert!(a.recv().await.unwrap().is_none(), "end of file once closed");
    }

    #[tokio::test]
    async fn an_empty_leftover_and_received_descriptors_close_on_exec() {
        let (a, b) = channels();
        let (_mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&Message::Connection {
            fd: theirs.into(),
            leftover: Bytes::new(),
        })
        .await
        .unwrap();
        let Some(Message::Connection { fd, leftover }) = b.recv().await.unwrap() else {
            panic!()
        };
        assert!(leftover.is_empty());
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[tokio::test]
    async fn too_much_leftover_is_refused_before_sending() {
        let (a, _b) = channels();
        let (_mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = a
            .send(&Message::Connection {
                fd: theirs.into(),
                leftover: Bytes::from(vec![0u8; MAX_LEFTOVER + 1]),
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_message() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::new(b).unwrap();
        // SAFETY: send on a descriptor we own, from a live buffer.
        let n = unsafe { libc::send(a.as_raw_fd(), b"Zjunk".as_ptr().cast(), 5, 0) };
        assert_eq!(n, 5);
        assert_eq!(
            b.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A connection tag without a descriptor too.
        // SAFETY: as above.
        let n = unsafe { libc::send(a.as_raw_fd(), b"C".as_ptr().cast(), 1, 0) };
        assert_eq!(n, 1);
        assert_eq!(
            b.recv().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn the_variable_must_name_the_supervisors_socket() {
        for bad in ["", "x", "1", "-3"] {
            assert_eq!(
                Channel::from_raw_env_value(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        // A stream socket is not the supervisor's pair.
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        let raw = s.as_raw_fd().to_string();
        assert!(Channel::from_raw_env_value(&raw).is_err());
    }

    /// A connection's retirement as `conn` does it, without a supervisor: the test holds the
    /// supervisor's end of the pair.
    mod conn_level {
        use super::*;
        use std::sync::Arc;

        use bytes::BytesMut;
        use pyfcgi_proto::client::{ClientConnection, ClientEvent};
        use pyfcgi_proto::{Role, encode};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::UnixStream;
        use tokio_util::sync::CancellationToken;

        use crate::builtin::{Builtin, BuiltinHandler, HELLO_RESPONSE};
        use crate::conn::{ConnConfig, serve_connection, serve_connection_from};

        const LIMIT: Duration = Duration::from_secs(10);

        struct Worker {
            handover: Arc<Handover>,
            supervisor: Channel,
            shutdown: CancellationToken,
            task: tokio::task::JoinHandle<()>,
        }

        /// A connection served by a worker with a hand-over channel; the client's end.
        fn worker(handler: Builtin) -> (Worker, UnixStream) {
            let (ours, theirs) = Channel::pair().unwrap();
            let handover = Arc::new(Handover::new(Channel::new(ours).unwrap()));
            let config = Arc::new(ConnConfig {
                handover: Some(Arc::clone(&handover)),
                ..ConnConfig::default()
            });
            let (client, server) = UnixStream::pair().unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve_connection(
                server,
                Arc::new(BuiltinHandler(handler)),
                config,
                shutdown.clone(),
                "test",
            ));
            let w = Worker {
                handover,
                supervisor: Channel::new(theirs).unwrap(),
                shutdown,
                task,
            };
            (w, client)
        }

        fn request(id: u16, keep_conn: bool, body: &[u8]) -> Vec<u8> {
            let mut out = BytesMut::new();
            encode::begin_request(&mut out, id, Role::Responder, keep_conn);
            encode::params(&mut out, id, &[("REQUEST_METHOD", "POST")]).unwrap();
            encode::params_end(&mut out, id);
            if !body.is_empty() {
                encode::stdin(&mut out, id, body);
            }
            encode::stdin_end(&mut out, id);
            out.to_vec()
        }

        /// The response to `id`; `None` when the connection closed first.
        async fn response(s: &mut UnixStream, id: u16) -> Option<Vec<u8>> {
            let mut conn = ClientConnection::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            loop {
                while let Some(ev) = conn.decode(&mut buf).unwrap() {
                    match ev {
                        ClientEvent::Stdout { id: i, data } if i == id => {
                            out.extend_from_slice(&data);
                        }
                        ClientEvent::End { id: i, .. } if i == id => return Some(out),
                        _ => {}
                    }
                }
                let n = tokio::time::timeout(LIMIT, s.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                if n == 0 {
                    return None;
                }
            }
        }

        async fn handed(supervisor: &Channel) -> (OwnedFd, Bytes) {
            match tokio::time::timeout(LIMIT, supervisor.recv()).await {
                Ok(Ok(Some(Message::Connection { fd, leftover }))) => (fd, leftover),
                other => panic!("no connection handed over: {other:?}"),
            }
        }

        #[tokio::test]
        async fn a_kept_connection_goes_over_at_its_boundary_with_what_was_read_of_the_next_request()
         {
            let (w, mut client) = worker(Builtin::Hello);
            client.write_all(&request(1, true, b"")).await.unwrap();
            assert_eq!(response(&mut client, 1).await.unwrap(), HELLO_RESPONSE);
            // The web server has begun the next request when the worker retires.
            let next = request(1, true, b"");
            client.write_all(&next[..5]).await.unwrap();
            w.handover.retire();
            w.shutdown.cancel();
            let (fd, leftover) = handed(&w.supervisor).await;
            tokio::time::timeout(LIMIT, w.task).await.unwrap().unwrap();
            assert_eq!(w.handover.handed(), 1);
            // Whatever the old worker read is in `leftover`, the rest still in the socket.
            assert!(next[..5].starts_with(&leftover), "{leftover:?}");
            client.write_all(&next[5..]).await.unwrap();
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true).unwrap();
            let stream = UnixStream::from_std(std).unwrap();
            tokio::spawn(serve_connection_from(
                stream,
                Arc::new(BuiltinHandler(Builtin::Hello)),
                Arc::new(ConnConfig::default()),
                CancellationToken::new(),
                "new owner",
                BytesMut::from(&leftover[..]),
            ));
            assert_eq!(
                response(&mut client, 1).await.as_deref(),
                Some(HELLO_RESPONSE),
                "the new owner answers the request the old one had begun to read"
            );
        }

        /// Sends the first `cut` bytes of `whole` and waits until the worker has decoded
        /// them (a `FCGI_GET_VALUES` sent after them has been answered), so the request is
        /// active before the test goes on.
        async fn begin(client: &mut UnixStream, whole: &[u8], cut: usize) {
            let mut query = BytesMut::new();
            encode::get_values(&mut query, &["FCGI_MPXS_CONNS"]).unwrap();
            client.write_all(&whole[..cut]).await.unwrap();
            client.write_all(&query).await.unwrap();
            let mut conn = ClientConnection::new();
            let mut buf = BytesMut::new();
            loop {
                if let Some(ClientEvent::GetValuesResult(_)) = conn.decode(&mut buf).unwrap() {
                    return;
                }
                let n = tokio::time::timeout(LIMIT, client.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed");
            }
        }

        /// A request whose body is still arriving: BEGIN, PARAMS and the first STDIN record
        /// decoded, the rest to send.
        fn split_request(keep_conn: bool) -> (Vec<u8>, usize) {
            let mut out = BytesMut::new();
            encode::begin_request(&mut out, 1, Role::Responder, keep_conn);
            encode::params(&mut out, 1, &[("REQUEST_METHOD", "POST")]).unwrap();
            encode::params_end(&mut out, 1);
            encode::stdin(&mut out, 1, b"a body ");
            let cut = out.len();
            encode::stdin(&mut out, 1, b"in two parts");
            encode::stdin_end(&mut out, 1);
            (out.to_vec(), cut)
        }

        #[tokio::test]
        async fn a_request_in_flight_finishes_before_its_connection_goes_over() {
            let (w, mut client) = worker(Builtin::Echo);
            let (whole, cut) = split_request(true);
            begin(&mut client, &whole, cut).await;
            w.handover.retire();
            w.shutdown.cancel();
            client.write_all(&whole[cut..]).await.unwrap();
            let body = response(&mut client, 1).await.unwrap();
            assert!(body.ends_with(b"a body in two parts"), "{body:?}");
            let (_fd, leftover) = handed(&w.supervisor).await;
            assert!(leftover.is_empty());
        }

        #[tokio::test]
        async fn a_plain_stop_or_a_request_without_keep_conn_closes_as_before() {
            // Shutdown without retirement (SIGTERM): the idle kept connection closes.
            let (w, mut client) = worker(Builtin::Hello);
            client.write_all(&request(1, true, b"")).await.unwrap();
            assert!(response(&mut client, 1).await.is_some());
            w.shutdown.cancel();
            assert_eq!(response(&mut client, 2).await, None, "closed");
            tokio::time::timeout(LIMIT, w.task).await.unwrap().unwrap();
            assert_eq!(
                w.supervisor.try_recv().unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );

            // Retiring, but the request in flight said the connection ends with it.
            let (w, mut client) = worker(Builtin::Echo);
            let (whole, cut) = split_request(false);
            begin(&mut client, &whole, cut).await;
            w.handover.retire();
            w.shutdown.cancel();
            client.write_all(&whole[cut..]).await.unwrap();
            assert!(response(&mut client, 1).await.is_some());
            let mut rest = Vec::new();
            tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.is_empty());
            tokio::time::timeout(LIMIT, w.task).await.unwrap().unwrap();
            assert_eq!(
                w.supervisor.try_recv().unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            assert_eq!(w.handover.handed(), 0);
        }

        #[tokio::test]
        async fn a_connection_that_has_not_sent_a_request_yet_goes_over_too() {
            // Its first request may already be on its way; closing it could lose that.
            let (w, mut client) = worker(Builtin::Hello);
            w.handover.retire();
            w.shutdown.cancel();
            let (fd, leftover) = handed(&w.supervisor).await;
            assert!(leftover.is_empty());
            drop(fd);
            drop(w.supervisor);
            assert_eq!(
                response(&mut client, 1).await,
                None,
                "closed once no process holds it"
            );
        }
    }
}
