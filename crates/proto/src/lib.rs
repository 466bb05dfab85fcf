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
pub mod nv;
pub mod record;
pub mod server;

pub use error::ProtoError;
pub use nv::Params;
pub use record::{ProtocolStatus, Record, RecordHeader, RecordType, Role};
