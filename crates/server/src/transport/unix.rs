//! Unix transports: TCP and Unix-socket listeners, and sockets inherited on a descriptor.

use std::net::IpAddr;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::{info, warn};

use super::{Bind, StdinKind};
use crate::ServerError;

/// A source of connections.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener and its `FCGI_WEB_SERVER_ADDRS` allow-list (empty = everyone).
    Tcp(TcpListener, Vec<IpAddr>),
    /// A Unix-socket listener; `Some(owned)` is the socket file it created, removed when the
    /// listener is dropped (only if it is still that same file).
    Unix(UnixListener, Option<OwnedSocketFile>),
    /// One already-connected stream: served once, then the server stops.
    ConnectedUnix(Option<UnixStream>),
    /// One already-connected TCP stream.
    ConnectedTcp(Option<TcpStream>),
}

/// A socket file this process created, identified by device and inode so that dropping the
/// listener never removes a socket another server has since put at the same path.
#[derive(Debug)]
pub struct OwnedSocketFile {
    path: PathBuf,
    id: (u64, u64),
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// What an accept produced.
#[derive(Debug)]
pub enum Accepted {
    /// A TCP connection and its peer.
    Tcp(TcpStream, String),
    /// A Unix-socket connection.
    Unix(UnixStream, String),
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

impl Listener {
    /// Opens the transport `bind` names. `unix` says how a new Unix socket file is created;
    /// `allow` is the TCP allow-list.
    pub async fn bind(
        bind: &Bind,
        unix: &super::UnixSocketOptions,
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
                Ok(Self::Tcp(l, allow))
            }
            Bind::Unix(path) => bind_unix(path, unix),
            Bind::Fd(fd) => Self::from_fd(*fd, allow),
        }
    }

    /// Uses the socket on descriptor `fd`: a listening socket is accepted on, a connected
    /// stream is served as the only connection.
    pub fn from_fd(fd: RawFd, allow: Vec<IpAddr>) -> Result<Self, ServerError> {
        let kind = inspect_fd(fd).ok_or(ServerError::NotASocket { fd })?;
        // SAFETY: `inspect_fd` showed `fd` is an open socket; nothing else in the process uses
        // it (it is the descriptor the web server handed us), so we take ownership.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let ctx = || format!("cannot use the socket on descriptor {fd}");
        Ok(match kind {
            FdKind::Listening { unix: true } => {
                let l = std::os::unix::net::UnixListener::from(owned);
                l.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::Unix(UnixListener::from_std(l).map_err(io_err(ctx()))?, None)
            }
            FdKind::Listening { unix: false } => {
                let l = std::net::TcpListener::from(owned);
                l.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::Tcp(TcpListener::from_std(l).map_err(io_err(ctx()))?, allow)
            }
            FdKind::Connected { unix: true } => {
                let s = std::os::unix::net::UnixStream::from(owned);
                s.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::ConnectedUnix(Some(UnixStream::from_std(s).map_err(io_err(ctx()))?))
            }
            FdKind::Connected { unix: false } => {
                let s = std::net::TcpStream::from(owned);
                s.set_nonblocking(true).map_err(io_err(ctx()))?;
                Self::ConnectedTcp(Some(TcpStream::from_std(s).map_err(io_err(ctx()))?))
            }
        })
    }

    /// The listening socket's descriptor (to hand to worker processes); `None` for a
    /// connected stream.
    pub fn listening_fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Self::Tcp(l, _) => Some(l.as_fd()),
            Self::Unix(l, _) => Some(l.as_fd()),
            Self::ConnectedUnix(_) | Self::ConnectedTcp(_) => None,
        }
    }

    /// True when this listener carries exactly one inherited connection (IIS-style).
    pub fn is_connected_stream(&self) -> bool {
        matches!(self, Self::ConnectedUnix(_) | Self::ConnectedTcp(_))
    }

    /// True when the transport came from IIS; never on Unix (see the Windows twin).
    pub fn is_iis(&self) -> bool {
        false
    }

    /// Where connections come from, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l, _) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| format!("tcp:{a}")),
            Self::Unix(l, path) => match path {
                Some(p) => format!("unix:{}", p.path.display()),
                None => l
                    .local_addr()
                    .ok()
                    .and_then(|a| {
                        a.as_pathname()
                            .map(|p| format!("unix:{} (inherited)", p.display()))
                    })
                    .unwrap_or_else(|| "inherited unix socket".into()),
            },
            Self::ConnectedUnix(_) => "connected unix stream on stdin".into(),
            Self::ConnectedTcp(_) => "connected tcp stream on stdin".into(),
        }
    }

    /// The next connection; `Ok(None)` when a connected-stream listener has handed out its one
    /// connection. Refused TCP peers (allow-list) are logged and skipped.
    pub async fn accept(&mut self) -> std::io::Result<Option<Accepted>> {
        loop {
            return match self {
                Self::Tcp(l, allow) => {
                    let (s, peer) = l.accept().await?;
                    if !super::peer_allowed(allow, peer.ip()) {
                        warn!(%peer, "refused connection: peer is not in FCGI_WEB_SERVER_ADDRS");
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    Ok(Some(Accepted::Tcp(s, peer.to_string())))
                }
                Self::Unix(l, _) => {
                    let (s, _) = l.accept().await?;
                    Ok(Some(Accepted::Unix(s, "unix".into())))
                }
                Self::ConnectedUnix(s) => Ok(s.take().map(|s| Accepted::Unix(s, "stdin".into()))),
                Self::ConnectedTcp(s) => Ok(s.take().map(|s| {
                    let peer = s
                        .peer_addr()
                        .map_or_else(|_| "stdin".into(), |a| a.to_string());
                    Accepted::Tcp(s, peer)
                })),
            };
        }
    }
}

/// A connected stream socket received from another process (a kept connection handed over),
/// ready to serve; its peer as [`Listener::accept`] would give it.
pub fn adopt_stream(fd: OwnedFd) -> std::io::Result<Accepted> {
    let unix = SockRef::from(&fd).local_addr()?.is_unix();
    if unix {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(Accepted::Unix(UnixStream::from_std(s)?, "unix".into()))
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        let peer = s
            .peer_addr()
            .map_or_else(|_| "tcp".into(), |a| a.to_string());
        Ok(Accepted::Tcp(TcpStream::from_std(s)?, peer))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, Some(owned)) = self
            && file_id(&owned.path) == Some(owned.id)
        {
            let _ = std::fs::remove_file(&owned.path);
        }
    }
}

/// Makes `path` free for a new Unix socket: nothing there, or a stale socket file nobody
/// listens on (removed). Refuses a live socket and anything that is not a socket.
pub fn clear_stale_socket(path: &Path) -> Result<(), ServerError> {
    let addr = || format!("unix:{}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::Bind {
                addr: addr(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket; refusing to replace it",
                ),
            });
        }
        // Only "connection refused" proves nobody listens. Anything else (permission denied on
        // a live server's socket, say) must not make us unlink a socket someone else serves.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::SocketInUse(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "removing stale unix socket left by an earlier run");
                std::fs::remove_file(path).map_err(io_err(format!(
                    "cannot remove stale socket {}",
                    path.display()
                )))?;
            }
            Err(e) => {
                return Err(ServerError::Bind {
                    addr: addr(),
                    source: std::io::Error::new(
                        e.kind(),
                        format!(
                            "a socket already exists there and cannot be checked ({e}); it may belong to a running server"
                        ),
                    ),
                });
            }
        }
    }
    Ok(())
}

fn bind_unix(path: &Path, opts: &super::UnixSocketOptions) -> Result<Listener, ServerError> {
    let addr = || format!("unix:{}", path.display());
    let socket_mode = opts.mode;
    clear_stale_socket(path)?;
    // Create the socket with its final mode (no window with the umask's mode): restrict the
    // umask around bind, then set the exact mode.
    let old_umask = socket_mode.map(|mode| {
        // SAFETY: umask only swaps the process file-creation mask; no memory is involved.
        unsafe { libc::umask(!(mode as libc::mode_t) & 0o777) }
    });
    let bound = UnixListener::bind(path);
    if let Some(old) = old_umask {
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
    }
    let l = bound.map_err(|source| ServerError::Bind {
        addr: addr(),
        source,
    })?;
    if let Some(mode) = socket_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(
            format!("cannot chmod {:o} {}", mode, path.display()),
        ))?;
    }
    if (opts.uid.is_some() || opts.gid.is_some())
        && let Err(e) = std::os::unix::fs::chown(path, opts.uid, opts.gid)
    {
        // Not left behind half-configured.
        let _ = std::fs::remove_file(path);
        return Err(io_err(format!(
            "cannot give {} to user {} group {} (changing the owner needs root; the group, membership of it)",
            path.display(),
            opts.uid.map_or("-".to_owned(), |u| u.to_string()),
            opts.gid.map_or("-".to_owned(), |g| g.to_string()),
        ))(e));
    }
    let id = file_id(path).unwrap_or_default();
    Ok(Listener::Unix(
        l,
        Some(OwnedSocketFile {
            path: path.to_owned(),
            id,
        }),
    ))
}

/// What kind of socket a descriptor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A listening socket.
    Listening {
        /// AF_UNIX rather than AF_INET/AF_INET6.
        unix: bool,
    },
    /// A connected stream socket.
    Connected {
        /// AF_UNIX rather than AF_INET/AF_INET6.
        unix: bool,
    },
}

/// Inspects descriptor `fd` without taking it; `None` when it is not a stream socket (closed,
/// a file, a terminal, a pipe).
pub fn inspect_fd(fd: RawFd) -> Option<FdKind> {
    // SAFETY: the descriptor is only borrowed for the duration of this call; if it is not open
    // the socket calls below fail with EBADF and we return None.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    if sock.r#type().ok()? != socket2::Type::STREAM {
        return None;
    }
    let unix = sock.local_addr().ok()?.is_unix();
    if sock.is_listener().ok()? {
        Some(FdKind::Listening { unix })
    } else {
        Some(FdKind::Connected { unix })
    }
}

/// Inspects standard input (descriptor 0) without taking it.
pub fn inspect_stdin() -> Option<StdinKind> {
    inspect_fd(0).map(|kind| match kind {
        FdKind::Listening { .. } => StdinKind::Listening,
        FdKind::Connected { .. } => StdinKind::Connected,
    })
}
