//! The client crate's error type.

use std::io;

use pyfcgi_proto::ProtoError;

use crate::response::HeadError;

/// Why a FastCGI exchange (or the `pyfcgi request` command) failed.
///
/// Messages say what went wrong and what to try; the underlying cause, when there is one, is
/// the [`std::error::Error::source`] (print the whole chain, e.g. with [`ClientError::report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// An address string is not one of the accepted forms.
    #[error(
        "invalid FastCGI address {input:?}: {reason}; use tcp:HOST:PORT, HOST:PORT, [IPv6]:PORT or unix:PATH"
    )]
    BadAddress {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting to the responder failed.
    #[error(
        "cannot connect to the FastCGI responder at {address}: is it running and listening there?"
    )]
    Connect {
        /// The address, as text.
        address: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `pyfcgi bench --latency-out` cannot write its file.
    #[error("cannot write the latency file {}", path.display())]
    WriteLatency {
        /// The file given.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The request cannot be built or encoded.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Reading from or writing to the connection failed.
    #[error("I/O error on the FastCGI connection")]
    Io(#[source] io::Error),
    /// The application's bytes are not valid FastCGI.
    #[error("the application sent invalid FastCGI")]
    Protocol(#[from] ProtoError),
    /// The connection ended before `FCGI_END_REQUEST`.
    #[error(
        "the application closed the connection before ending request {id} (no FCGI_END_REQUEST; \
         {stdout_bytes} bytes of FCGI_STDOUT had arrived); it probably crashed or exited: check \
         its stderr or log"
    )]
    ClosedEarly {
        /// The request id.
        id: u16,
        /// Response bytes received before the connection closed.
        stdout_bytes: usize,
    },
    /// The connection ended before `FCGI_GET_VALUES_RESULT`.
    #[error(
        "the application closed the connection before answering FCGI_GET_VALUES; it probably \
         crashed or exited: check its stderr or log"
    )]
    ClosedBeforeValues,
    /// A response record named a request that is not the active one.
    #[error(
        "the application sent {record} for request {got} while request {expected} was the only \
         active request"
    )]
    WrongRequestId {
        /// The record type's name.
        record: &'static str,
        /// The active request.
        expected: u16,
        /// The id in the record.
        got: u16,
    },
    /// The application answered `FCGI_GET_VALUES` with `FCGI_UNKNOWN_TYPE`.
    #[error("the application does not support FCGI_GET_VALUES (it answered FCGI_UNKNOWN_TYPE)")]
    GetValuesUnsupported,
    /// An earlier request left the connection closed or out of step.
    #[error("this connection cannot carry another request: {0}; open a new connection")]
    ConnectionUnusable(&'static str),
    /// The application's stdout is not a CGI response.
    #[error("the application's response is not a valid CGI response")]
    MalformedResponse(#[from] HeadError),
    /// No answer in time (raised by the CLI, which owns the timeout).
    #[error(
        "no answer within {secs} s while waiting for {waiting_for}; raise --timeout or check \
         whether the application is stuck"
    )]
    Timeout {
        /// The limit, in seconds.
        secs: f64,
        /// What was awaited.
        waiting_for: &'static str,
    },
    /// A responder process could not be started.
    #[error("cannot start the responder `{command}`: check that the program exists and runs")]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A spawned responder exited before it could be used.
    #[error(
        "the responder `{command}` exited ({status}) before accepting a connection; run the \
         command by hand to see why"
    )]
    ChildExited {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// A request body file (`-d @FILE`) could not be read.
    #[error("cannot read the request body from {path}")]
    ReadBody {
        /// The file (or `-` for stdin).
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A response body is not the one `--expect-body` gave.
    #[error(
        "response {request}: the body differs from --expect-body ({got} bytes, expected \
         {expected}; first difference at byte {first_difference})"
    )]
    BodyMismatch {
        /// Which response (1 = the first).
        request: u32,
        /// Its body length.
        got: usize,
        /// The expected length.
        expected: usize,
        /// Offset of the first differing byte.
        first_difference: usize,
    },
    /// Writing the response to our output failed.
    #[error("cannot write the response to standard output")]
    Output(#[source] io::Error),
}

impl ClientError {
    /// The `pyfcgi request` exit code for this error: 1 for usage, connection and setup
    /// problems, 2 for protocol errors, early closes and timeouts, 4 for a body that differs
    /// from `--expect-body`. (3, a refused request, is
    /// not an error; see [`crate::cli::run`].)
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Io(_)
            | Self::Protocol(_)
            | Self::ClosedEarly { .. }
            | Self::ClosedBeforeValues
            | Self::WrongRequestId { .. }
            | Self::GetValuesUnsupported
            | Self::ConnectionUnusable(_)
            | Self::MalformedResponse(_)
            | Self::Timeout { .. } => 2,
            Self::BodyMismatch { .. } => 4,
            _ => 1,
        }
    }

    /// The message followed by every cause, joined with `: `, for printing once.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_includes_the_cause() {
        let err = ClientError::Connect {
            address: "tcp:127.0.0.1:1".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        };
        let text = err.report();
        assert!(text.starts_with("cannot connect to the FastCGI responder at tcp:127.0.0.1:1"));
        assert!(text.ends_with(": connection refused"));
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn protocol_failures_exit_with_two() {
        let err = ClientError::ClosedEarly {
            id: 1,
            stdout_bytes: 0,
        };
        assert_eq!(err.exit_code(), 2);
    }
}
