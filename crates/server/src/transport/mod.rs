//! Where connections come from, chosen by `--bind`:
//!
//! | `--bind` | transport |
//! |---|---|
//! | `HOST:PORT`, `tcp:HOST:PORT` | TCP listener (`FCGI_WEB_SERVER_ADDRS` allow-list enforced) |
//! | `unix:PATH` | Unix socket listener (`--socket-mode` applies) |
//! | `fd:N` | a socket inherited on descriptor N: a listening socket is accepted on (spec §2.2, `FCGI_LISTENSOCK_FILENO`, as spawn-fcgi, mod_fcgid and lighttpd pass it); an already-connected stream is served as the one connection (how IIS hands over its pipe; `pyfcgi request --spawn` emulates it with a socketpair on Unix) |
//! | `fd:0` on Windows | standard input as IIS passes it: the server end of its named pipe (`protocol="NamedPipe"`) or a listening socket (`protocol="Tcp"`); another N is an inherited handle value |
//!
//! Without `--bind`, standard input is inspected and used as `fd:0` when it is a socket (or,
//! on Windows, the server end of IIS's named pipe). Platform code lives in `unix` and
//! `windows`, which have the same surface: `Listener`, `Accepted`, `inspect_stdin`.

#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod windows;

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ServerError;

/// A parsed `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// `HOST:PORT` for TCP.
    Tcp(String),
    /// Path of a Unix socket.
    Unix(PathBuf),
    /// An inherited descriptor.
    Fd(i32),
}

impl FromStr for Bind {
    type Err = ServerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ServerError::BadBind {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(fd) = s.strip_prefix("fd:") {
            return fd
                .parse()
                .map(Self::Fd)
                .map_err(|_| bad("the descriptor is not a number"));
        }
        let hostport = s.strip_prefix("tcp:").unwrap_or(s);
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return Err(bad("no port given"));
        };
        if host.is_empty() {
            return Err(bad("no host given (use 127.0.0.1:PORT for loopback)"));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad("the port is not a number from 0 to 65535"));
        }
        Ok(Self::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

/// Parses `FCGI_WEB_SERVER_ADDRS` (spec §3.2): comma-separated IP addresses of the web servers
/// allowed to connect over TCP. Blank entries are ignored.
pub fn parse_web_server_addrs(value: &str) -> Result<Vec<IpAddr>, ServerError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| ServerError::BadWebServerAddr(s.to_owned()))
        })
        .collect()
}

/// Whether `peer` is allowed by `allow` (an empty list allows everyone). IPv4-mapped IPv6
/// addresses match their IPv4 form.
pub fn peer_allowed(allow: &[IpAddr], peer: IpAddr) -> bool {
    if allow.is_empty() {
        return true;
    }
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    let peer = canon(peer);
    allow.iter().any(|a| canon(*a) == peer)
}

/// How a new Unix socket file is created (`unix:PATH` transports; ignored elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixSocketOptions {
    /// Permission bits (e.g. `0o660`); `None` keeps what the umask gives.
    pub mode: Option<u32>,
    /// Owner user id to give the file.
    pub uid: Option<u32>,
    /// Group id to give the file (e.g. the web server's group).
    pub gid: Option<u32>,
}

/// What the web server passed on standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// A listening socket to accept on (FastCGI spec §2.2; IIS `protocol="Tcp"`).
    Listening,
    /// One already-connected stream, served as the only connection (IIS's named pipe; a
    /// socket pair from `pyfcgi request --spawn` on Unix).
    Connected,
}

#[cfg(unix)]
pub use unix::{Accepted, Listener, inspect_stdin};
#[cfg(windows)]
pub use windows::{Accepted, Listener, inspect_stdin};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_values_parse() {
        assert_eq!(
            "127.0.0.1:9000".parse::<Bind>().unwrap(),
            Bind::Tcp("127.0.0.1:9000".into())
        );
        assert_eq!(
            "tcp:[::1]:9000".parse::<Bind>().unwrap(),
            Bind::Tcp("[::1]:9000".into())
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Bind>().unwrap(),
            Bind::Unix("/run/x.sock".into())
        );
        assert_eq!("fd:0".parse::<Bind>().unwrap(), Bind::Fd(0));
        for bad in ["9000", ":9000", "host:port", "unix:", "fd:x", "h:70000"] {
            assert!(bad.parse::<Bind>().is_err(), "{bad}");
        }
    }

    #[test]
    fn web_server_addrs_allow_list() {
        let allow = parse_web_server_addrs(" 127.0.0.1, ::1 ,").unwrap();
        assert!(peer_allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(peer_allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(peer_allowed(&allow, "::1".parse().unwrap()));
        assert!(!peer_allowed(&allow, "127.0.0.2".parse().unwrap()));
        assert!(peer_allowed(&[], "10.0.0.1".parse().unwrap()));
        assert!(parse_web_server_addrs("localhost").is_err());
    }
}
