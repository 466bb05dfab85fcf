//! `ServerConnection` on structured input: a sequence of well-formed records (built with
//! `arbitrary`, encoded by `pyfcgi_proto::encode`) mixed with raw garbage records, fed in
//! input-chosen chunks. Where the byte-stream target (`server_conn`) mostly hits framing
//! errors, this one reaches deep request states: interleaved multiplexed requests, params over
//! the limits, aborts, reused ids, management records between them.
//!
//! Checks, against a model of what was sent: every `Params` event holds exactly the pairs sent
//! for that request; `Stdin` events carry exactly the bytes sent, in order; a request is
//! `Refused` exactly when its params broke a limit; and no event concerns a request that was
//! never begun.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pyfcgi_proto::server::{Event, Limits, ServerConnection};
use pyfcgi_proto::{ProtoError, RecordType, Role, encode, nv};

const MAX_PARAMS_BYTES: usize = 512;
const MAX_PAIRS: usize = 6;

#[derive(Debug, Arbitrary)]
enum Op {
    Begin {
        id: u8,
        keep: bool,
        authorizer: bool,
    },
    Params {
        id: u8,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    ParamsEnd {
        id: u8,
    },
    Stdin {
        id: u8,
        data: Vec<u8>,
    },
    StdinEnd {
        id: u8,
    },
    Abort {
        id: u8,
    },
    GetValues {
        names: Vec<String>,
    },
    /// The application finished a request (its END_REQUEST went out).
    Finish {
        id: u8,
    },
    /// An unknown or unexpected record type, content included.
    Raw {
        kind: u8,
        id: u8,
        content: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    ops: Vec<Op>,
    chunks: Vec<u8>,
    multiplex: bool,
}

/// What the model expects of one request the connection accepted.
#[derive(Debug, Default)]
struct Req {
    /// Encoded PARAMS bytes sent so far (None once the params ended or were refused).
    params: Option<Vec<u8>>,
    stdin_sent: Vec<u8>,
    stdin_seen: Vec<u8>,
    refused: bool,
    ended_params: bool,
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_params_bytes: MAX_PARAMS_BYTES,
        max_params_pairs: MAX_PAIRS,
        max_requests_per_conn: 4,
        multiplex: input.multiplex,
        max_conns: 4,
        answer_unknown_type: true,
    };
    let mut conn = ServerConnection::new(limits);
    let mut wire = BytesMut::new();
    let mut chunks = input.chunks.iter().cycle();
    let mut buf = BytesMut::new();
    // Requests the connection reported as begun, by id.
    let mut reqs: HashMap<u16, Req> = HashMap::new();
    for op in &input.ops {
        match op {
            Op::Begin {
                id,
                keep,
                authorizer,
            } => {
                let role = if *authorizer {
                    Role::Authorizer
                } else {
                    Role::Responder
                };
                encode::begin_request(&mut wire, u16::from(*id), role, *keep);
            }
            Op::Params { id, pairs } => {
                let mut content = BytesMut::new();
                for (n, v) in pairs {
                    let _ = nv::encode_pair(&mut content, n, v);
                }
                for piece in content.chunks(65535) {
                    encode::stream(&mut wire, RecordType::Params, u16::from(*id), piece, false);
                }
            }
            Op::ParamsEnd { id } => encode::params_end(&mut wire, u16::from(*id)),
            Op::Stdin { id, data } => {
                for piece in data.chunks(65535) {
                    encode::stdin(&mut wire, u16::from(*id), piece);
                }
            }
            Op::StdinEnd { id } => encode::stdin_end(&mut wire, u16::from(*id)),
            Op::Abort { id } => encode::abort_request(&mut wire, u16::from(*id)),
            Op::GetValues { names } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let _ = encode::get_values(&mut wire, &names);
            }
            Op::Finish { id } => {
                // Everything sent so far reaches the connection first.
                if !drive(&mut conn, &mut wire, &mut buf, &mut chunks, &mut reqs) {
                    return;
                }
                let id = u16::from(*id);
                conn.finish(id);
                reqs.remove(&id);
                assert!(!conn.is_active(id));
            }
            Op::Raw { kind, id, content } => {
                let content = &content[..content.len().min(65535)];
                // Request records built from raw bytes would change a request behind the
                // model's back: those kinds come from the typed ops only.
                let kind = match *kind {
                    1 | 2 | 4 | 5 => *kind | 0x80,
                    k => k,
                };
                let kind = RecordType::from_u8(kind);
                encode::stream(&mut wire, kind, u16::from(*id), content, false);
            }
        }
        // Model: what a well-formed op does to an active request, recorded before decoding.
        if let Some(id) = op_id(op)
            && let Some(r) = reqs.get_mut(&id)
        {
            match op {
                Op::Params { pairs, .. } if !r.ended_params => {
                    if let Some(p) = r.params.as_mut() {
                        for (n, v) in pairs {
                            let mut one = BytesMut::new();
                            if nv::encode_pair(&mut one, n, v).is_ok() {
                                p.extend_from_slice(&one);
                            }
                        }
                    }
                }
                Op::Stdin { data, .. } if r.ended_params && !r.refused => {
                    r.stdin_sent.extend_from_slice(data);
                }
                _ => {}
            }
        }
        if !drive(&mut conn, &mut wire, &mut buf, &mut chunks, &mut reqs) {
            return;
        }
    }
    for (id, r) in &reqs {
        assert_eq!(
            r.stdin_sent, r.stdin_seen,
            "request {id}: stdin events differ from what was sent"
        );
    }
});

fn op_id(op: &Op) -> Option<u16> {
    match op {
        Op::Params { id, .. } | Op::Stdin { id, .. } => Some(u16::from(*id)),
        _ => None,
    }
}

/// Feeds `wire` to the connection in input-chosen chunks and checks every event. Returns
/// false once the connection failed (a real server closes it then).
fn drive<'a>(
    conn: &mut ServerConnection,
    wire: &mut BytesMut,
    buf: &mut BytesMut,
    chunks: &mut impl Iterator<Item = &'a u8>,
    reqs: &mut HashMap<u16, Req>,
) -> bool {
    while !wire.is_empty() {
        let n = chunks
            .next()
            .map_or(wire.len(), |&b| usize::from(b) * 7 + 1)
            .min(wire.len());
        buf.extend_from_slice(&wire.split_to(n));
        loop {
            match conn.decode(buf) {
                Err(e) => {
                    let _ = e.to_string();
                    return false;
                }
                Ok(None) => break,
                Ok(Some(ev)) => check(&ev, reqs),
            }
            let _ = conn.take_output();
        }
        let _ = conn.take_output();
    }
    true
}

fn check(ev: &Event, reqs: &mut HashMap<u16, Req>) {
    match ev {
        Event::Begin { id, .. } => {
            assert!(
                reqs.insert(
                    *id,
                    Req {
                        params: Some(Vec::new()),
                        ..Req::default()
                    }
                )
                .is_none(),
                "request {id} began twice"
            );
        }
        Event::Params { id, params } => {
            let r = reqs.get_mut(id).expect("Params for a request never begun");
            let sent = r.params.take().expect("Params twice");
            r.ended_params = true;
            assert!(sent.len() <= MAX_PARAMS_BYTES && params.len() <= MAX_PAIRS);
            assert_eq!(
                &params.raw()[..],
                &sent[..],
                "request {id}: params differ from what was sent"
            );
        }
        Event::Stdin { id, data } => {
            let r = reqs.get_mut(id).expect("Stdin for a request never begun");
            assert!(
                r.ended_params && !r.refused,
                "Stdin before params ended or after a refusal"
            );
            r.stdin_seen.extend_from_slice(data);
        }
        Event::StdinEnd { id } | Event::Abort { id } => {
            let r = reqs.get(id).expect("event for a request never begun");
            assert!(!r.refused, "event for refused request {id}");
        }
        Event::Refused { id, reason } => {
            let r = reqs.get_mut(id).expect("Refused for a request never begun");
            let sent = r.params.take().expect("Refused after params ended");
            r.refused = true;
            r.ended_params = true;
            match reason {
                ProtoError::ParamsTooLarge { .. } => assert!(
                    sent.len() > MAX_PARAMS_BYTES,
                    "refused as too large at {} bytes",
                    sent.len()
                ),
                ProtoError::TooManyParams { .. } => {
                    let pairs = pyfcgi_proto::Params::decode(sent.into(), usize::MAX, *id)
                        .expect("sent params decode");
                    assert!(
                        pairs.len() > MAX_PAIRS,
                        "refused with {} pairs",
                        pairs.len()
                    );
                }
                other => panic!("refused for {other}"),
            }
        }
    }
}
