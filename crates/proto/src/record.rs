//! Records: the 8-byte header (spec §3.3), types (§8), roles, flags, statuses, and the
//! framing decoder that cuts a byte stream into whole records.

use bytes::{Buf, Bytes, BytesMut};

use crate::ProtoError;

/// The only FastCGI protocol version (spec §3.3, `FCGI_VERSION_1`).
pub const VERSION_1: u8 = 1;
/// Length of a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content one record can carry (the length field is 16 bits).
pub const MAX_CONTENT_LEN: usize = 65535;
/// Largest whole record: header, content and the largest padding.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_CONTENT_LEN + 255;
/// Request id 0 is reserved for management records (spec §3.3).
pub const MANAGEMENT_ID: u16 = 0;
/// `FCGI_KEEP_CONN` flag of `FCGI_BEGIN_REQUEST` (spec §5.1).
pub const FLAG_KEEP_CONN: u8 = 1;

/// Record types (spec §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// 1: starts a request.
    BeginRequest,
    /// 2: the web server aborts a request.
    AbortRequest,
    /// 3: the application ends a request.
    EndRequest,
    /// 4: request parameters (name-value pairs).
    Params,
    /// 5: request body.
    Stdin,
    /// 6: response body.
    Stdout,
    /// 7: error output.
    Stderr,
    /// 8: filter data (Filter role only).
    Data,
    /// 9: management query.
    GetValues,
    /// 10: management answer.
    GetValuesResult,
    /// 11: answer to an unknown management record.
    UnknownType,
    /// Anything else.
    Other(u8),
}

impl RecordType {
    /// The type byte on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::BeginRequest => 1,
            Self::AbortRequest => 2,
            Self::EndRequest => 3,
            Self::Params => 4,
            Self::Stdin => 5,
            Self::Stdout => 6,
            Self::Stderr => 7,
            Self::Data => 8,
            Self::GetValues => 9,
            Self::GetValuesResult => 10,
            Self::UnknownType => 11,
            Self::Other(b) => b,
        }
    }

    /// The type for a wire byte.
    pub fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            other => Self::Other(other),
        }
    }

    /// The spec's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::BeginRequest => "FCGI_BEGIN_REQUEST",
            Self::AbortRequest => "FCGI_ABORT_REQUEST",
            Self::EndRequest => "FCGI_END_REQUEST",
            Self::Params => "FCGI_PARAMS",
            Self::Stdin => "FCGI_STDIN",
            Self::Stdout => "FCGI_STDOUT",
            Self::Stderr => "FCGI_STDERR",
            Self::Data => "FCGI_DATA",
            Self::GetValues => "FCGI_GET_VALUES",
            Self::GetValuesResult => "FCGI_GET_VALUES_RESULT",
            Self::UnknownType => "FCGI_UNKNOWN_TYPE",
            Self::Other(_) => "unknown-type",
        }
    }
}

/// Roles of `FCGI_BEGIN_REQUEST` (spec §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// 1: the only role pyfcgi serves.
    Responder,
    /// 2
    Authorizer,
    /// 3
    Filter,
    /// Anything else.
    Other(u16),
}

impl Role {
    /// The role on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::Responder => 1,
            Self::Authorizer => 2,
            Self::Filter => 3,
            Self::Other(r) => r,
        }
    }

    /// The role for a wire value.
    pub fn from_u16(r: u16) -> Self {
        match r {
            1 => Self::Responder,
            2 => Self::Authorizer,
            3 => Self::Filter,
            other => Self::Other(other),
        }
    }
}

/// `protocolStatus` of `FCGI_END_REQUEST` (spec §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolStatus {
    /// 0: normal end.
    RequestComplete,
    /// 1: the connection does not multiplex and another request is active.
    CantMpxConn,
    /// 2: out of a resource (here: the per-connection request limit).
    Overloaded,
    /// 3: the role is not served.
    UnknownRole,
    /// Anything else.
    Other(u8),
}

impl ProtocolStatus {
    /// The status byte on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::RequestComplete => 0,
            Self::CantMpxConn => 1,
            Self::Overloaded => 2,
            Self::UnknownRole => 3,
            Self::Other(b) => b,
        }
    }

    /// The status for a wire byte.
    pub fn from_u8(b: u8) -> Self {
        match b {
            0 => Self::RequestComplete,
            1 => Self::CantMpxConn,
            2 => Self::Overloaded,
            3 => Self::UnknownRole,
            other => Self::Other(other),
        }
    }
}

/// The fixed 8-byte record header (spec §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Protocol version; always [`VERSION_1`] when encoding.
    pub version: u8,
    /// Record type.
    pub kind: RecordType,
    /// Request id (0 for management records).
    pub request_id: u16,
    /// Content bytes that follow the header.
    pub content_length: u16,
    /// Padding bytes that follow the content.
    pub padding_length: u8,
}

impl RecordHeader {
    /// A version-1 header.
    pub fn new(kind: RecordType, request_id: u16, content_length: u16, padding_length: u8) -> Self {
        Self {
            version: VERSION_1,
            kind,
            request_id,
            content_length,
            padding_length,
        }
    }

    /// The header as wire bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            self.version,
            self.kind.as_u8(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Parses a header from exactly [`HEADER_LEN`] bytes. The version is not checked here.
    pub fn from_bytes(b: [u8; HEADER_LEN]) -> Self {
        Self {
            version: b[0],
            kind: RecordType::from_u8(b[1]),
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_length: u16::from_be_bytes([b[4], b[5]]),
            padding_length: b[6],
        }
    }
}

/// One whole record: header and content (padding already skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The header as received.
    pub header: RecordHeader,
    /// The content, a zero-copy slice of the input buffer.
    pub content: Bytes,
}

/// Cuts the next whole record off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole record (read more and call again);
/// in that case it reserves room for the rest. A record is at most [`MAX_RECORD_LEN`] bytes, so
/// a caller never buffers more than that for one record.
pub fn decode_record(buf: &mut BytesMut) -> Result<Option<Record>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&buf[..HEADER_LEN]);
    let header = RecordHeader::from_bytes(raw);
    if header.version != VERSION_1 {
        return Err(ProtoError::UnsupportedVersion(header.version));
    }
    let content = usize::from(header.content_length);
    let total = HEADER_LEN + content + usize::from(header.padding_length);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let content = buf.split_to(content).freeze();
    buf.advance(usize::from(header.padding_length));
    Ok(Some(Record { header, content }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_bytes() {
        let h = RecordHeader::new(RecordType::Stdout, 0x1234, 0xfedc, 7);
        let b = h.to_bytes();
        assert_eq!(b, [1, 6, 0x12, 0x34, 0xfe, 0xdc, 7, 0]);
        assert_eq!(RecordHeader::from_bytes(b), h);
    }

    #[test]
    fn record_types_round_trip_for_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(RecordType::from_u8(b).as_u8(), b);
            assert_eq!(ProtocolStatus::from_u8(b).as_u8(), b);
        }
        for r in [0u16, 1, 2, 3, 4, 65535] {
            assert_eq!(Role::from_u16(r).as_u16(), r);
        }
    }

    #[test]
    fn partial_record_waits_for_more_bytes() {
        let mut buf = BytesMut::from(&[1u8, 5, 0, 1, 0, 3, 2, 0, b'a', b'b'][..]);
        assert_eq!(decode_record(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"c\0");
        assert_eq!(
            decode_record(&mut buf).unwrap(),
            None,
            "padding not yet complete"
        );
        buf.extend_from_slice(b"\0");
        let rec = decode_record(&mut buf).unwrap().unwrap();
        assert_eq!(rec.header.kind, RecordType::Stdin);
        assert_eq!(&rec.content[..], b"abc");
        assert!(buf.is_empty());
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut buf = BytesMut::from(&[2u8, 1, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(
            decode_record(&mut buf),
            Err(ProtoError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn short_header_needs_more() {
        let mut buf = BytesMut::from(&[1u8, 1, 0][..]);
        assert_eq!(decode_record(&mut buf).unwrap(), None);
    }
}
