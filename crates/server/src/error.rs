//! The server crate's error type.

use std::path::PathBuf;

/// Why the server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A `--bind` value that does not parse.
    #[error(
        "invalid bind address {value:?}: {reason} (expected HOST:PORT, tcp:HOST:PORT, unix:PATH or fd:N)"
    )]
    BadBind {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding or listening failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Unix socket path is in use by a live server.
    #[error("unix socket {0} is in use by another running server")]
    SocketInUse(PathBuf),
    /// Standard input (or the given descriptor) is not a socket.
    #[error(
        "file descriptor {fd} is not a socket; start pyfcgi with --bind, or let the web server pass a socket on stdin"
    )]
    NotASocket {
        /// The descriptor.
        fd: i32,
    },
    /// `FCGI_WEB_SERVER_ADDRS` holds something that is not an IP address.
    #[error("FCGI_WEB_SERVER_ADDRS entry {0:?} is not an IP address")]
    BadWebServerAddr(String),
    /// Any other I/O failure.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
