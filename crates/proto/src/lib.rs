//! Sans-IO FastCGI 1.0 protocol.
//!
//! Bytes go in, events come out; responses go in, bytes come out. Nothing here touches a
//! socket or a runtime, so every part can be unit-tested, property-tested and fuzzed.
//!
//! * [`record`]: the 8-byte record header, record types, roles, flags and statuses, and the
//!   framing decoder that cuts a byte stream into records (spec §3.3).
//! * [`nv`]: name-value pairs (spec §3.4) and the decoded request [`Params`].
//! * [`encode`]: writers for every record an application or a web server sends.
//! * [`server`]: the responder side: a connection state machine that turns a web server's bytes
//!   into [`server::Event`]s and answers management records itself.
//! * [`client`]: the web-server side, used by the bundled client and the tests.
//! * [`head`]: validation and encoding of the CGI response head an application sends.
//!
//! ```
//! use bytes::BytesMut;
//! use pyfcgi_proto::{encode, server::{Event, ServerConnection, Limits}};
//!
//! // What a web server sends for `GET /` with no body.
//! let mut wire = BytesMut::new();
//! encode::begin_request(&mut wire, 1, pyfcgi_proto::Role::Responder, true);
//! encode::params(&mut wire, 1, &[(&b"REQUEST_METHOD"[..], &b"GET"[..])]).unwrap();
//! encode::params_end(&mut wire, 1);
//! encode::stdin_end(&mut wire, 1);
//!
//! let mut conn = ServerConnection::new(Limits::default());
//! let mut events = Vec::new();
//! while let Some(event) = conn.decode(&mut wire).unwrap() {
//!     events.push(event);
//! }
//! assert!(matches!(events[0], Event::Begin { id: 1, keep_conn: true }));
//! assert!(matches!(&events[1], Event::Params { id: 1, params } if params.get(b"REQUEST_METHOD") == Some(&b"GET"[..])));
//! assert!(matches!(events[2], Event::StdinEnd { id: 1 }));
//! ```

pub mod client;
pub mod encode;
mod error;
pub mod head;
pub mod nv;
pub mod record;
pub mod server;

pub use error::ProtoError;
pub use nv::Params;
pub use record::{ProtocolStatus, Record, RecordHeader, RecordType, Role};

/// The reason phrase of common HTTP status codes (RFC 9110 §15), empty for others: what
/// a CGI `Status:` line or a client's status line shows next to the code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}
