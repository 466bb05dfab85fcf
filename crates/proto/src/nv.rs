//! Name-value pairs (spec §3.4) and the decoded request parameters.
//!
//! A length below 128 takes one byte; a longer one takes four with the top bit set, so a length
//! is at most 2^31-1. Lengths are checked against the bytes actually present before anything
//! is sliced, so an absurd length is an error, never an allocation.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ProtoError;

/// Largest length a name or value can have on the wire.
pub const MAX_PAIR_LEN: usize = 0x7fff_ffff;

/// Reads one length field at `pos`; returns the length and the position after the field.
fn read_len(data: &[u8], pos: usize) -> Result<(usize, usize), ProtoError> {
    let Some(&first) = data.get(pos) else {
        return Err(ProtoError::TruncatedPair {
            needed: 1,
            available: 0,
        });
    };
    if first & 0x80 == 0 {
        return Ok((usize::from(first), pos + 1));
    }
    let Some(b) = data.get(pos..pos + 4) else {
        return Err(ProtoError::TruncatedPair {
            needed: 4,
            available: data.len() - pos,
        });
    };
    let len = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]) as usize;
    Ok((len, pos + 4))
}

/// Appends one length field.
fn write_len(out: &mut BytesMut, len: usize) -> Result<(), ProtoError> {
    if len < 0x80 {
        out.put_u8(len as u8);
    } else if len <= MAX_PAIR_LEN {
        out.put_u32(len as u32 | 0x8000_0000);
    } else {
        return Err(ProtoError::PairTooLong { len });
    }
    Ok(())
}

/// Appends one name-value pair in wire form.
pub fn encode_pair(out: &mut BytesMut, name: &[u8], value: &[u8]) -> Result<(), ProtoError> {
    out.reserve(name.len() + value.len() + 8);
    write_len(out, name.len())?;
    write_len(out, value.len())?;
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    Ok(())
}

/// Bytes a pair takes on the wire.
pub fn encoded_pair_len(name: &[u8], value: &[u8]) -> usize {
    let field = |n: usize| if n < 0x80 { 1 } else { 4 };
    field(name.len()) + field(value.len()) + name.len() + value.len()
}

/// Decoded name-value pairs of one request (or of a GET_VALUES record), kept as offsets into
/// one shared buffer so decoding allocates a single `Vec` and copies nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    data: Bytes,
    /// (name start, name end, value end) offsets into `data`; the value starts at name end.
    spans: Vec<(u32, u32, u32)>,
}

impl Params {
    /// Decodes all pairs in `data`, which must hold whole pairs only.
    ///
    /// `max_pairs` bounds the number of pairs; the byte size is the caller's to bound.
    pub fn decode(data: Bytes, max_pairs: usize, id: u16) -> Result<Self, ProtoError> {
        let mut spans = Vec::with_capacity(32.min(max_pairs));
        let mut pos = 0;
        while pos < data.len() {
            if spans.len() >= max_pairs {
                return Err(ProtoError::TooManyParams {
                    id,
                    limit: max_pairs,
                });
            }
            let (name_len, p) = read_len(&data, pos)?;
            let (value_len, p) = read_len(&data, p)?;
            let available = data.len() - p;
            let needed = name_len.saturating_add(value_len);
            if needed > available {
                return Err(ProtoError::TruncatedPair { needed, available });
            }
            let name_end = p + name_len;
            let value_end = name_end + value_len;
            // `data` is at most u32::MAX long in practice (the caller's limit is far below),
            // but check rather than truncate.
            let (Ok(a), Ok(b), Ok(c)) = (
                u32::try_from(p),
                u32::try_from(name_end),
                u32::try_from(value_end),
            ) else {
                return Err(ProtoError::ParamsTooLarge {
                    id,
                    limit: u32::MAX as usize,
                });
            };
            spans.push((a, b, c));
            pos = value_end;
        }
        Ok(Self { data, spans })
    }

    /// Builds params from pairs (used by clients and tests).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, ProtoError> {
        let mut buf = BytesMut::new();
        for (n, v) in pairs {
            encode_pair(&mut buf, n.as_ref(), v.as_ref())?;
        }
        Self::decode(buf.freeze(), usize::MAX, 0)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The pairs in wire order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&(a, b, c)| {
            (
                &self.data[a as usize..b as usize],
                &self.data[b as usize..c as usize],
            )
        })
    }

    /// The value of the last pair named `name`. A CGI variable sent twice takes its last
    /// value, as PHP-FPM does: nginx's `include fastcgi_params; fastcgi_param SCRIPT_NAME "";`
    /// sends `SCRIPT_NAME` twice and means the second. (Repeated `HTTP_*` request headers are
    /// joined by the gateways from [`Params::iter`], not looked up here.)
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.spans
            .iter()
            .rev()
            .find(|&&(a, b, _)| &self.data[a as usize..b as usize] == name)
            .map(|&(_, b, c)| &self.data[b as usize..c as usize])
    }

    /// The value of `name` as UTF-8 text, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of the last pair named `name` (see [`Params::get`]) as a zero-copy `Bytes`.
    pub fn get_bytes(&self, name: &[u8]) -> Option<Bytes> {
        self.spans
            .iter()
            .rev()
            .find(|&&(a, b, _)| &self.data[a as usize..b as usize] == name)
            .map(|&(_, b, c)| self.data.slice(b as usize..c as usize))
    }

    /// The wire bytes the pairs were decoded from.
    pub fn raw(&self) -> &Bytes {
        &self.data
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_and_long_lengths_are_encoded_per_spec() {
        let mut out = BytesMut::new();
        encode_pair(&mut out, b"A", &[b'x'; 200]).unwrap();
        assert_eq!(&out[..5], &[1, 0x80, 0, 0, 200]);
        assert_eq!(out.len(), encoded_pair_len(b"A", &[b'x'; 200]));
        let p = Params::decode(out.freeze(), 10, 1).unwrap();
        assert_eq!(p.get(b"A").map(<[u8]>::len), Some(200));
    }

    #[test]
    fn length_127_uses_one_byte_and_128_uses_four() {
        let mut out = BytesMut::new();
        encode_pair(&mut out, &[b'n'; 127], &[b'v'; 128]).unwrap();
        assert_eq!(out[0], 127);
        assert_eq!(&out[1..5], &[0x80, 0, 0, 128]);
    }

    #[test]
    fn absurd_length_is_an_error_not_an_allocation() {
        // name length 2^31-1, value length 0, no data.
        let data = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0]);
        let err = Params::decode(data, 10, 3).unwrap_err();
        assert_eq!(
            err,
            ProtoError::TruncatedPair {
                needed: MAX_PAIR_LEN,
                available: 0
            }
        );
    }

    #[test]
    fn truncated_length_field_is_an_error() {
        let err = Params::decode(Bytes::from_static(&[0x80, 0]), 10, 1).unwrap_err();
        assert!(matches!(err, ProtoError::TruncatedPair { needed: 4, .. }));
        let err = Params::decode(Bytes::from_static(&[3]), 10, 1).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::TruncatedPair {
                needed: 1,
                available: 0
            }
        ));
    }

    #[test]
    fn pair_count_limit_is_enforced() {
        let p = Params::from_pairs([("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
        let err = Params::decode(p.raw().clone(), 2, 9).unwrap_err();
        assert_eq!(err, ProtoError::TooManyParams { id: 9, limit: 2 });
    }

    #[test]
    fn empty_names_and_values_are_kept() {
        let p = Params::from_pairs([("", ""), ("X", "")]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get(b"X"), Some(&b""[..]));
        assert_eq!(p.get_bytes(b""), Some(Bytes::new()));
    }

    #[test]
    fn a_variable_sent_twice_takes_its_last_value() {
        let p = Params::from_pairs([("SCRIPT_NAME", "/health"), ("X", "x"), ("SCRIPT_NAME", "")])
            .unwrap();
        assert_eq!(p.get_str("SCRIPT_NAME"), Some(""));
        assert_eq!(p.get_bytes(b"SCRIPT_NAME").as_deref(), Some(&b""[..]));
        assert_eq!(p.get_str("X"), Some("x"));
        assert_eq!(
            p.len(),
            3,
            "iter still sees every pair (repeated headers are joined)"
        );
    }

    proptest! {
        #[test]
        fn pairs_round_trip(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let p = Params::from_pairs(pairs.iter().map(|(n, v)| (n, v))).unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>)> = p.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(got, pairs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Params::decode(Bytes::from(data), 100, 1);
        }
    }
}
