//! Writers for every record either side sends. Each appends wire bytes to a `BytesMut`.
//!
//! Stream records (PARAMS, STDIN, STDOUT, STDERR) are split into records of at most
//! [`MAX_CONTENT_LEN`] bytes. An *empty* stream record means end-of-stream (spec §3.3), so the
//! data writers never emit one: writing zero bytes writes nothing, and only the `*_end`
//! functions send the empty record. (wfastcgi sent an empty STDOUT after every write; nginx took
//! the first as the end of the response and dropped the body.)

use bytes::{BufMut, BytesMut};

use crate::ProtoError;
use crate::nv;
use crate::record::{
    FLAG_KEEP_CONN, HEADER_LEN, MANAGEMENT_ID, MAX_CONTENT_LEN, ProtocolStatus, RecordHeader,
    RecordType, Role,
};

/// Padding that brings `len` up to a multiple of 8 (spec §3.3 recommends 8-byte alignment).
pub fn align8_padding(len: usize) -> u8 {
    ((8 - len % 8) % 8) as u8
}

/// Appends one record with `content`, which must be at most [`MAX_CONTENT_LEN`] bytes.
fn record(out: &mut BytesMut, kind: RecordType, id: u16, content: &[u8], align: bool) {
    debug_assert!(content.len() <= MAX_CONTENT_LEN);
    let pad = if align {
        align8_padding(content.len())
    } else {
        0
    };
    out.reserve(HEADER_LEN + content.len() + usize::from(pad));
    out.put_slice(&RecordHeader::new(kind, id, content.len() as u16, pad).to_bytes());
    out.put_slice(content);
    out.put_bytes(0, usize::from(pad));
}

/// Appends `data` as stream records of `kind`, split at [`MAX_CONTENT_LEN`]; nothing when
/// `data` is empty. `align` pads each record to a multiple of 8 bytes.
pub fn stream(out: &mut BytesMut, kind: RecordType, id: u16, data: &[u8], align: bool) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        record(out, kind, id, chunk, align);
    }
}

/// Appends the empty record that ends a stream.
pub fn stream_end(out: &mut BytesMut, kind: RecordType, id: u16) {
    record(out, kind, id, &[], false);
}

/// Header (and padding length) for a stream record carrying `len` bytes, for writers that send
/// the content from its own buffer (vectored I/O) instead of copying it.
pub fn stream_header(kind: RecordType, id: u16, len: usize, align: bool) -> ([u8; HEADER_LEN], u8) {
    debug_assert!(len <= MAX_CONTENT_LEN);
    let pad = if align { align8_padding(len) } else { 0 };
    (RecordHeader::new(kind, id, len as u16, pad).to_bytes(), pad)
}

/// `FCGI_BEGIN_REQUEST` (spec §5.1).
pub fn begin_request(out: &mut BytesMut, id: u16, role: Role, keep_conn: bool) {
    let r = role.as_u16().to_be_bytes();
    let flags = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    record(
        out,
        RecordType::BeginRequest,
        id,
        &[r[0], r[1], flags, 0, 0, 0, 0, 0],
        false,
    );
}

/// `FCGI_ABORT_REQUEST` (spec §5.4).
pub fn abort_request(out: &mut BytesMut, id: u16) {
    record(out, RecordType::AbortRequest, id, &[], false);
}

/// `FCGI_PARAMS` records carrying `pairs` (not the terminating empty record).
pub fn params<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    out: &mut BytesMut,
    id: u16,
    pairs: &[(N, V)],
) -> Result<(), ProtoError> {
    let mut body = BytesMut::new();
    for (n, v) in pairs {
        nv::encode_pair(&mut body, n.as_ref(), v.as_ref())?;
    }
    stream(out, RecordType::Params, id, &body, false);
    Ok(())
}

/// The empty `FCGI_PARAMS` record that ends the parameters.
pub fn params_end(out: &mut BytesMut, id: u16) {
    stream_end(out, RecordType::Params, id);
}

/// `FCGI_STDIN` records carrying `data`.
pub fn stdin(out: &mut BytesMut, id: u16, data: &[u8]) {
    stream(out, RecordType::Stdin, id, data, false);
}

/// The empty `FCGI_STDIN` record that ends the request body.
pub fn stdin_end(out: &mut BytesMut, id: u16) {
    stream_end(out, RecordType::Stdin, id);
}

/// `FCGI_STDOUT` records carrying `data`; nothing for empty `data`.
pub fn stdout(out: &mut BytesMut, id: u16, data: &[u8]) {
    stream(out, RecordType::Stdout, id, data, false);
}

/// `FCGI_STDERR` records carrying `data`; nothing for empty `data`.
pub fn stderr(out: &mut BytesMut, id: u16, data: &[u8]) {
    stream(out, RecordType::Stderr, id, data, false);
}

/// Ends a response: the empty `FCGI_STDOUT` (end of stream) and `FCGI_END_REQUEST`.
pub fn end_response(out: &mut BytesMut, id: u16, app_status: u32, status: ProtocolStatus) {
    stream_end(out, RecordType::Stdout, id);
    end_request(out, id, app_status, status);
}

/// `FCGI_END_REQUEST` (spec §5.5).
pub fn end_request(out: &mut BytesMut, id: u16, app_status: u32, status: ProtocolStatus) {
    let a = app_status.to_be_bytes();
    record(
        out,
        RecordType::EndRequest,
        id,
        &[a[0], a[1], a[2], a[3], status.as_u8(), 0, 0, 0],
        false,
    );
}

/// `FCGI_GET_VALUES` asking for `names` (spec §4.1).
pub fn get_values(out: &mut BytesMut, names: &[&str]) -> Result<(), ProtoError> {
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
    let mut body = BytesMut::new();
    for (n, v) in &pairs {
        nv::encode_pair(&mut body, n.as_bytes(), v.as_bytes())?;
    }
    // A management record must fit in one record; names beyond that are not sent.
    body.truncate(MAX_CONTENT_LEN);
    record(out, RecordType::GetValues, MANAGEMENT_ID, &body, false);
    Ok(())
}

/// `FCGI_GET_VALUES_RESULT` with `pairs` (spec §4.1). Pairs that would not fit in one record
/// are left out.
pub fn get_values_result(out: &mut BytesMut, pairs: &[(&[u8], &[u8])]) -> Result<(), ProtoError> {
    let mut body = BytesMut::new();
    for (n, v) in pairs {
        if body.len() + nv::encoded_pair_len(n, v) > MAX_CONTENT_LEN {
            break;
        }
        nv::encode_pair(&mut body, n, v)?;
    }
    record(
        out,
        RecordType::GetValuesResult,
        MANAGEMENT_ID,
        &body,
        false,
    );
    Ok(())
}

/// `FCGI_UNKNOWN_TYPE` answering a management record of type `kind` (spec §4.2).
pub fn unknown_type(out: &mut BytesMut, kind: u8) {
    record(
        out,
        RecordType::UnknownType,
        MANAGEMENT_ID,
        &[kind, 0, 0, 0, 0, 0, 0, 0],
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::decode_record;

    fn records(mut buf: BytesMut) -> Vec<crate::Record> {
        let mut v = Vec::new();
        while let Some(r) = decode_record(&mut buf).unwrap() {
            v.push(r);
        }
        assert!(buf.is_empty());
        v
    }

    #[test]
    fn empty_stdout_write_emits_nothing() {
        let mut out = BytesMut::new();
        stdout(&mut out, 1, b"");
        stderr(&mut out, 1, b"");
        assert!(out.is_empty());
    }

    #[test]
    fn large_stdout_splits_at_65535() {
        let mut out = BytesMut::new();
        stdout(&mut out, 7, &vec![b'x'; 65535 * 2 + 10]);
        let recs = records(out);
        let lens: Vec<usize> = recs.iter().map(|r| r.content.len()).collect();
        assert_eq!(lens, [65535, 65535, 10]);
        assert!(
            recs.iter()
                .all(|r| r.header.request_id == 7 && r.header.kind == RecordType::Stdout)
        );
    }

    #[test]
    fn aligned_records_are_padded_to_eight() {
        let mut out = BytesMut::new();
        stream(&mut out, RecordType::Stdout, 1, b"hello", true);
        assert_eq!(out.len(), 16);
        assert_eq!(out[6], 3);
        assert_eq!(records(out)[0].content, &b"hello"[..]);
    }

    #[test]
    fn end_response_is_empty_stdout_then_end_request() {
        let mut out = BytesMut::new();
        end_response(&mut out, 2, 5, ProtocolStatus::RequestComplete);
        let recs = records(out);
        assert_eq!(recs[0].header.kind, RecordType::Stdout);
        assert!(recs[0].content.is_empty());
        assert_eq!(recs[1].header.kind, RecordType::EndRequest);
        assert_eq!(&recs[1].content[..], &[0, 0, 0, 5, 0, 0, 0, 0]);
    }

    #[test]
    fn begin_request_carries_role_and_flags() {
        let mut out = BytesMut::new();
        begin_request(&mut out, 258, Role::Filter, true);
        assert_eq!(&out[..], &[1, 1, 1, 2, 0, 8, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn get_values_result_never_exceeds_one_record() {
        let big = vec![b'v'; 40_000];
        let mut out = BytesMut::new();
        get_values_result(&mut out, &[(b"A", &big), (b"B", &big)]).unwrap();
        let recs = records(out);
        assert_eq!(recs.len(), 1);
        assert!(recs[0].content.len() <= MAX_CONTENT_LEN);
    }
}
