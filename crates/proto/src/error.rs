//! The protocol crate's error type.

/// Why a byte stream is not valid FastCGI. Any of these ends the connection it came from;
/// none of them affects another connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The version byte of a record header is not 1 (spec §3.3).
    #[error("unsupported FastCGI version {0} in record header (only version 1 exists)")]
    UnsupportedVersion(u8),
    /// A record's content length does not match what its type requires.
    #[error("{record} record has content length {len}, expected {expected}")]
    BadContentLength {
        /// The record type's name.
        record: &'static str,
        /// The length found.
        len: usize,
        /// The length the spec requires.
        expected: usize,
    },
    /// A name-value pair's length runs past the end of the data that holds it.
    #[error("name-value pair is truncated: needs {needed} bytes, {available} remain")]
    TruncatedPair {
        /// Bytes the pair claims to need.
        needed: usize,
        /// Bytes actually left.
        available: usize,
    },
    /// The PARAMS of one request are larger than the configured limit.
    #[error("request {id}: FCGI_PARAMS exceed the limit of {limit} bytes")]
    ParamsTooLarge {
        /// Request id.
        id: u16,
        /// The configured maximum.
        limit: usize,
    },
    /// A request has more name-value pairs than the configured limit.
    #[error("request {id}: more than {limit} FCGI_PARAMS name-value pairs")]
    TooManyParams {
        /// Request id.
        id: u16,
        /// The configured maximum.
        limit: usize,
    },
    /// `FCGI_BEGIN_REQUEST` named a request id that is still active (spec §3.3).
    #[error("FCGI_BEGIN_REQUEST for request {0}, which is already active")]
    DuplicateRequestId(u16),
    /// A record arrived that is not allowed in the request's current state.
    #[error("request {id}: unexpected {record} record {state}")]
    UnexpectedRecord {
        /// Request id.
        id: u16,
        /// The record type's name.
        record: &'static str,
        /// The state the request was in, as a phrase.
        state: &'static str,
    },
    /// A request-level record used a type that does not exist.
    #[error("request {id}: unknown record type {kind}")]
    UnknownRequestRecordType {
        /// Request id.
        id: u16,
        /// The type byte.
        kind: u8,
    },
    /// A response (client side) record arrived that the client cannot accept.
    #[error("unexpected {record} record for request {id} in a response")]
    UnexpectedResponseRecord {
        /// Request id.
        id: u16,
        /// The record type's name.
        record: &'static str,
    },
    /// Name-value data to encode is longer than the 31-bit length field allows.
    #[error("name or value of {len} bytes is longer than FastCGI allows (2^31-1)")]
    PairTooLong {
        /// The offending length.
        len: usize,
    },
}
