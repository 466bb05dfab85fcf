//! Response-head validation (`pyfcgi_proto::head`): whatever status and headers an
//! application passes, a head that validates must read back, through the bundled client's
//! CGI parser, as exactly that status and exactly those headers — no extra line, no split
//! value. That is response header injection made impossible, checked on arbitrary strings.
//!
//! Input: NUL-separated fields, `status \0 name \0 value \0 name \0 value ...`, each decoded
//! as latin-1 (as a WSGI `str` of any byte would be) or, with a leading 0x01, as UTF-8.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pyfcgi_client::{ProtocolStatus, Response};
use pyfcgi_proto::head;

fuzz_target!(|data: &[u8]| {
    let (utf8, data) = match data.split_first() {
        Some((1, rest)) => (true, rest),
        _ => (false, data),
    };
    let mut fields = data.split(|&b| b == 0).map(|f| {
        if utf8 {
            String::from_utf8_lossy(f).into_owned()
        } else {
            f.iter().map(|&b| char::from(b)).collect::<String>()
        }
    });
    let Some(status) = fields.next() else { return };
    let rest: Vec<String> = fields.collect();
    let headers: Vec<(String, String)> = rest
        .chunks(2)
        .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
        .collect();
    if let Err(e) = head::validate_status(&status) {
        let _ = e.to_string();
        return;
    }
    let mut valid = Vec::new();
    for (n, v) in &headers {
        if let Err(e) = head::validate_header(n, v) {
            let _ = e.to_string();
        } else {
            valid.push((n.clone(), v.clone()));
        }
    }
    let mut out = Vec::new();
    head::encode_head(&mut out, &status, &valid);
    out.extend_from_slice(b"BODY");
    let resp = Response {
        stdout: Bytes::from(out),
        stderr: Bytes::new(),
        app_status: 0,
        protocol_status: ProtocolStatus::RequestComplete,
    };
    let parsed = resp.head().expect("a validated head parses");
    let code: u16 = status[..3].parse().expect("three digits");
    assert_eq!(parsed.status, code);
    assert_eq!(
        parsed.headers.len(),
        valid.len(),
        "header count changed: {parsed:?}"
    );
    for ((name, value), (pn, pv)) in valid.iter().zip(&parsed.headers) {
        assert_eq!(name, pn);
        let latin1: Vec<u8> = value.chars().map(|c| c as u8).collect();
        assert_eq!(latin1.trim_ascii(), &pv[..], "value of {name} changed");
    }
    assert_eq!(&parsed.body[..], b"BODY");
    // 1xx never validates as a final status.
    assert_ne!(status.as_bytes()[0], b'1');
});
