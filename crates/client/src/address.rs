//! Responder addresses and the connected transport.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use crate::ClientError;

/// Where a FastCGI responder listens.
///
/// Accepted forms: `tcp:HOST:PORT`, `HOST:PORT`, `[IPv6]:PORT` (optionally after `tcp:`), and
/// `unix:PATH` (or a bare absolute path).
///
/// ```
/// use pyfcgi_client::Address;
/// let a: Address = "[::1]:9000".parse().unwrap();
/// assert_eq!(a, Address::Tcp { host: "::1".into(), port: 9000 });
/// assert_eq!(a.to_string(), "tcp:[::1]:9000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address; `host` is a name or an IP address (IPv6 without brackets).
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl Address {
    /// Connects to the responder.
    pub async fn connect(&self) -> Result<Stream, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: self.to_string(),
            source,
        };
        match self {
            Self::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_error)?;
                // Requests are written as a few records at once; Nagle would only add latency.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                Ok(Stream::Tcp(stream))
            }
            #[cfg(unix)]
            Self::Unix(path) => UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(connect_error),
            #[cfg(not(unix))]
            Self::Unix(_) => Err(connect_error(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix domain sockets are not supported on this platform; use tcp:HOST:PORT",
            ))),
        }
    }
}

impl FromStr for Address {
    type Err = ClientError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ClientError::BadAddress {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the socket path after `unix:` is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if input.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(input)));
        }
        let rest = input.strip_prefix("tcp:").unwrap_or(input);
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(bad("`[` of an IPv6 address has no matching `]`"));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(bad("the port is missing after the `]`"));
            };
            (host, port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(bad("the port is missing"));
            };
            if host.contains(':') {
                return Err(bad("an IPv6 address must be written in brackets"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port is not a number from 1 to 65535")),
            Ok(p) => p,
        };
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connected transport: TCP, a Unix domain socket (Unix) or a named pipe (Windows).
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    #[cfg(unix)]
    Unix(UnixStream),
    /// The client end of a named pipe (what IIS talks to its FastCGI processes over).
    #[cfg(windows)]
    Pipe(tokio::net::windows::named_pipe::NamedPipeClient),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(windows)]
            Self::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(windows)]
            Self::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(windows)]
            Self::Pipe(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Self::Unix(s) => s.is_write_vectored(),
            #[cfg(windows)]
            Self::Pipe(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(windows)]
            Self::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(windows)]
            Self::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn tcp_forms_are_parsed() {
        assert_eq!(
            "tcp:127.0.0.1:9000".parse::<Address>().unwrap(),
            tcp("127.0.0.1", 9000)
        );
        assert_eq!(
            "localhost:80".parse::<Address>().unwrap(),
            tcp("localhost", 80)
        );
        assert_eq!("[::1]:9000".parse::<Address>().unwrap(), tcp("::1", 9000));
        assert_eq!(
            "tcp:[fe80::1]:1".parse::<Address>().unwrap(),
            tcp("fe80::1", 1)
        );
    }

    #[test]
    fn unix_forms_are_parsed() {
        assert_eq!(
            "unix:/run/app.sock".parse::<Address>().unwrap(),
            Address::Unix("/run/app.sock".into())
        );
        assert_eq!(
            "unix:rel.sock".parse::<Address>().unwrap(),
            Address::Unix("rel.sock".into())
        );
        assert_eq!(
            "/tmp/x.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
    }

    #[test]
    fn bad_addresses_say_why() {
        for (input, reason) in [
            ("unix:", "empty"),
            ("localhost", "port is missing"),
            ("::1:9000", "brackets"),
            ("[::1]9000", "missing after"),
            ("[::1:9000", "no matching"),
            (":9000", "host is empty"),
            ("host:0", "1 to 65535"),
            ("host:70000", "1 to 65535"),
            ("host:http", "1 to 65535"),
        ] {
            let err = input.parse::<Address>().unwrap_err();
            assert!(err.to_string().contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "tcp:[::1]:9000",
            "tcp:example.org:8080",
            "unix:/tmp/a b.sock",
        ] {
            assert_eq!(text.parse::<Address>().unwrap().to_string(), text);
        }
    }

    #[tokio::test]
    async fn refused_connection_names_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = tcp("127.0.0.1", port).connect().await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }));
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
    }
}
