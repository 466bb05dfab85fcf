//! `Params::decode` on arbitrary bytes. Whatever decodes must survive a round trip through
//! `nv::encode_pair`, and the canonical encoding must be a fixed point.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pyfcgi_proto::ProtoError;
use pyfcgi_proto::nv::{self, Params};

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let params = match Params::decode(raw.clone(), usize::MAX, 1) {
        Ok(p) => p,
        Err(ProtoError::TruncatedPair { needed, available }) => {
            assert!(
                needed > available,
                "TruncatedPair with needed {needed} <= available {available}"
            );
            return;
        }
        Err(e) => panic!("unexpected error without a pair limit: {e}"),
    };
    assert_eq!(params.raw(), &raw);
    let n = params.len();
    assert_eq!(params.is_empty(), n == 0);

    // The pair limit: n pairs pass with limit n and fail with n - 1.
    assert_eq!(Params::decode(raw.clone(), n, 1).as_ref(), Ok(&params));
    if n > 0 {
        assert_eq!(
            Params::decode(raw.clone(), n - 1, 7),
            Err(ProtoError::TooManyParams {
                id: 7,
                limit: n - 1
            })
        );
    }

    // Round trip through the encoder.
    let pairs: Vec<(&[u8], &[u8])> = params.iter().collect();
    let mut encoded = BytesMut::new();
    for (name, value) in &pairs {
        let before = encoded.len();
        nv::encode_pair(&mut encoded, name, value).expect("decoded pair must re-encode");
        assert_eq!(encoded.len() - before, nv::encoded_pair_len(name, value));
    }
    let encoded = encoded.freeze();
    assert!(
        encoded.len() <= data.len(),
        "canonical encoding longer than the input"
    );
    let again =
        Params::decode(encoded.clone(), usize::MAX, 1).expect("re-encoded pairs must decode");
    let again_pairs: Vec<(&[u8], &[u8])> = again.iter().collect();
    assert_eq!(pairs, again_pairs, "round trip changed the pairs");
    if encoded.len() == data.len() {
        assert_eq!(
            &encoded[..],
            data,
            "same length but different canonical bytes"
        );
    }
    let mut twice = BytesMut::new();
    for (name, value) in &again_pairs {
        nv::encode_pair(&mut twice, name, value).unwrap();
    }
    assert_eq!(
        twice.freeze(),
        encoded,
        "canonical encoding is not a fixed point"
    );

    // Lookups agree with iteration (a name sent twice takes its last value, as PHP-FPM does);
    // a few names keep this linear-ish.
    for (name, _) in pairs.iter().take(16) {
        let last = pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(params.get(name), last);
        assert_eq!(params.get_bytes(name).as_deref(), last);
        if let Ok(s) = std::str::from_utf8(name) {
            assert_eq!(
                params.get_str(s),
                last.and_then(|v| std::str::from_utf8(v).ok())
            );
        }
    }
    let _ = format!("{params:?}");
});
