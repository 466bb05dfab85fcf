//! `ClientConnection` on arbitrary bytes: must never panic, events must respect their
//! documented shapes, and feeding the bytes one at a time must give the same events.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pyfcgi_proto::ProtoError;
use pyfcgi_proto::client::{ClientConnection, ClientEvent};

fn check(ev: &ClientEvent) {
    match ev {
        ClientEvent::Stdout { data, .. } => assert!(!data.is_empty(), "empty Stdout event"),
        ClientEvent::Stderr { data, .. } => assert!(!data.is_empty(), "empty Stderr event"),
        ClientEvent::GetValuesResult(p) => assert!(p.len() <= 1000),
        ClientEvent::StdoutEnd { .. } | ClientEvent::End { .. } | ClientEvent::UnknownType(_) => {}
    }
}

fn whole(data: &[u8]) -> (Vec<ClientEvent>, Option<ProtoError>) {
    let mut conn = ClientConnection::new();
    let mut buf = BytesMut::from(data);
    let mut events = Vec::new();
    loop {
        match conn.decode(&mut buf) {
            Ok(Some(ev)) => {
                check(&ev);
                events.push(ev);
            }
            Ok(None) => return (events, None),
            Err(e) => {
                let _ = e.to_string();
                return (events, Some(e));
            }
        }
    }
}

fn bytewise(data: &[u8]) -> (Vec<ClientEvent>, Option<ProtoError>) {
    let mut conn = ClientConnection::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match conn.decode(&mut buf) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let a = whole(data);
    let b = bytewise(data);
    assert_eq!(a, b, "byte-at-a-time feeding changed the outcome");
});
