//! The web-server side of a connection: an application's bytes in, [`ClientEvent`]s out.
//! Used by the bundled client (`pyfcgi request`, `pyfcgi bench`) and by the tests.

use bytes::{Bytes, BytesMut};

use crate::ProtoError;
use crate::nv::Params;
use crate::record::{ProtocolStatus, RecordType, decode_record};

/// What an application sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Response bytes (never empty).
    Stdout {
        /// Request id.
        id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// The empty `FCGI_STDOUT` that ends the response body.
    StdoutEnd {
        /// Request id.
        id: u16,
    },
    /// Error output (never empty).
    Stderr {
        /// Request id.
        id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// `FCGI_END_REQUEST`.
    End {
        /// Request id.
        id: u16,
        /// The application's exit status.
        app_status: u32,
        /// The protocol status.
        status: ProtocolStatus,
    },
    /// `FCGI_GET_VALUES_RESULT`.
    GetValuesResult(Params),
    /// `FCGI_UNKNOWN_TYPE`: the application did not understand a management record of this
    /// type.
    UnknownType(u8),
}

/// Decoder for the responses on one connection.
#[derive(Debug, Default)]
pub struct ClientConnection {
    _private: (),
}

impl ClientConnection {
    /// A new decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes records from the front of `buf` until one yields an event; `Ok(None)` means
    /// more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ClientEvent>, ProtoError> {
        while let Some(record) = decode_record(buf)? {
            let id = record.header.request_id;
            let content = record.content;
            let event = match record.header.kind {
                RecordType::Stdout if content.is_empty() => ClientEvent::StdoutEnd { id },
                RecordType::Stdout => ClientEvent::Stdout { id, data: content },
                // An empty STDERR ends the error stream; nothing to report.
                RecordType::Stderr if content.is_empty() => continue,
                RecordType::Stderr => ClientEvent::Stderr { id, data: content },
                RecordType::EndRequest => {
                    if content.len() != 8 {
                        return Err(ProtoError::BadContentLength {
                            record: RecordType::EndRequest.name(),
                            len: content.len(),
                            expected: 8,
                        });
                    }
                    ClientEvent::End {
                        id,
                        app_status: u32::from_be_bytes([
                            content[0], content[1], content[2], content[3],
                        ]),
                        status: ProtocolStatus::from_u8(content[4]),
                    }
                }
                RecordType::GetValuesResult => {
                    ClientEvent::GetValuesResult(Params::decode(content, 1000, id)?)
                }
                RecordType::UnknownType => {
                    ClientEvent::UnknownType(content.first().copied().unwrap_or(0))
                }
                other => {
                    return Err(ProtoError::UnexpectedResponseRecord {
                        id,
                        record: other.name(),
                    });
                }
            };
            return Ok(Some(event));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;

    #[test]
    fn response_records_become_events() {
        let mut buf = BytesMut::new();
        encode::stdout(&mut buf, 1, b"Status: 200 OK\r\n\r\nhi");
        encode::stderr(&mut buf, 1, b"oops");
        encode::stream_end(&mut buf, RecordType::Stderr, 1);
        encode::end_response(&mut buf, 1, 3, ProtocolStatus::RequestComplete);
        let mut c = ClientConnection::new();
        let mut ev = Vec::new();
        while let Some(e) = c.decode(&mut buf).unwrap() {
            ev.push(e);
        }
        assert_eq!(ev.len(), 4);
        assert!(matches!(&ev[0], ClientEvent::Stdout { id: 1, data } if data.ends_with(b"hi")));
        assert!(matches!(&ev[1], ClientEvent::Stderr { data, .. } if &data[..] == b"oops"));
        assert_eq!(ev[2], ClientEvent::StdoutEnd { id: 1 });
        assert_eq!(
            ev[3],
            ClientEvent::End {
                id: 1,
                app_status: 3,
                status: ProtocolStatus::RequestComplete
            }
        );
    }

    #[test]
    fn request_records_in_a_response_are_errors() {
        let mut buf = BytesMut::new();
        encode::stdin(&mut buf, 1, b"x");
        assert!(ClientConnection::new().decode(&mut buf).is_err());
    }
}
