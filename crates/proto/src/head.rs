//! The CGI response head an application hands the web server (RFC 3875 §6): validation of
//! the status and of each header, and the encoding of the head. A head that passes
//! validation cannot split into more lines than it has headers, whatever the application
//! passed: this is the line between a buggy (or attacker-steered) app and response header
//! injection, so it is fuzzed (fuzz/fuzz_targets/head.rs).
//!
//! Strings are the app's `str` values; each `char` must be latin-1 (PEP 3333), and goes on
//! the wire as the one byte of the same value.

use bytes::BufMut;

/// The hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, and the
/// connection to the client is the web server's, so an application's response may not carry
/// them. What happens to one an app sends is the interface's rule: PEP 3333 makes it a WSGI
/// application error; ASGI has no such rule, so the ASGI host drops it.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Why a status or header cannot go into a response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Not `DDD` or `DDD reason`.
    #[error("invalid status {0:?}: it must be a 3-digit code and a reason phrase, like '200 OK'")]
    BadStatus(String),
    /// A control character or a character outside latin-1 in the status.
    #[error(
        "invalid status {0:?}: control characters and characters outside latin-1 are not allowed"
    )]
    StatusCharacter(String),
    /// A 1xx status as the final one.
    #[error(
        "invalid status {0:?}: a 1xx status is informational, not a final response (200-599 expected)"
    )]
    Informational(String),
    /// A header name that is not an HTTP token.
    #[error("invalid header name {0:?}: it must be an HTTP token")]
    BadName(String),
    /// A hop-by-hop header ([`HOP_BY_HOP`]); its name and value are valid otherwise.
    #[error(
        "hop-by-hop header {0:?} is not allowed in an application's response: it describes the connection, which the web server manages"
    )]
    HopByHop(String),
    /// A header named `Status`: the CGI head carries the status on a line of its own.
    #[error(
        "a header named 'Status' is not allowed: the response status is given apart from the headers"
    )]
    StatusHeader,
    /// CR, LF, another control character, or a character outside latin-1 in a value.
    #[error(
        "invalid value for header {name:?}: character {ch:?} is not allowed (CR/LF would split the header; values must be latin-1)"
    )]
    BadValue {
        /// The header's name.
        name: String,
        /// The first character refused.
        ch: char,
    },
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Checks a status line such as `200 OK` (a bare `200` is accepted too).
pub fn validate_status(status: &str) -> Result<(), HeadError> {
    let bytes = status.as_bytes();
    let code_ok = bytes.len() >= 3 && bytes[..3].iter().all(u8::is_ascii_digit) && bytes[0] != b'0';
    let rest_ok = bytes.len() == 3 || bytes.get(3) == Some(&b' ');
    if !code_ok || !rest_ok {
        return Err(HeadError::BadStatus(status.to_owned()));
    }
    if status.chars().any(|c| c.is_control() || u32::from(c) > 255) {
        return Err(HeadError::StatusCharacter(status.to_owned()));
    }
    if bytes[0] == b'1' {
        return Err(HeadError::Informational(status.to_owned()));
    }
    Ok(())
}

/// Whether `name` is a hop-by-hop header ([`HOP_BY_HOP`]), in any letter case.
///
/// ```
/// assert!(pyfcgi_proto::head::is_hop_by_hop("Transfer-Encoding"));
/// assert!(!pyfcgi_proto::head::is_hop_by_hop("Content-Length"));
/// ```
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Checks one response header.
///
/// The name and the value are checked first: [`HeadError::HopByHop`] and
/// [`HeadError::StatusHeader`] come only for a header that could go on the wire intact, so
/// a caller that drops hop-by-hop headers instead of refusing them still refuses injection.
pub fn validate_header(name: &str, value: &str) -> Result<(), HeadError> {
    if name.is_empty() || !name.chars().all(is_tchar) {
        return Err(HeadError::BadName(name.to_owned()));
    }
    if let Some(ch) = value
        .chars()
        .find(|&c| (c.is_control() && c != '\t') || u32::from(c) > 255)
    {
        return Err(HeadError::BadValue {
            name: name.to_owned(),
            ch,
        });
    }
    if name.eq_ignore_ascii_case("status") {
        return Err(HeadError::StatusHeader);
    }
    if is_hop_by_hop(name) {
        return Err(HeadError::HopByHop(name.to_owned()));
    }
    Ok(())
}

/// Whether a response with this status has no body (RFC 9110 §6.4.1): 204 and 304.
pub fn status_is_bodiless(status: &str) -> bool {
    status.starts_with("204") || status.starts_with("304")
}

/// Appends a string already validated as latin-1, one byte per character.
pub fn put_latin1<B: BufMut>(out: &mut B, s: &str) {
    if s.is_ascii() {
        out.put_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            out.put_u8(u8::try_from(u32::from(c)).unwrap_or(b'?'));
        }
    }
}

/// The CGI head: `Status:` line, headers, blank line; both validated already.
pub fn encode_head<B: BufMut>(out: &mut B, status: &str, headers: &[(String, String)]) {
    out.put_slice(b"Status: ");
    put_latin1(out, status);
    out.put_slice(b"\r\n");
    for (n, v) in headers {
        put_latin1(out, n);
        out.put_slice(b": ");
        put_latin1(out, v);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_validated() {
        for ok in [
            "200 OK",
            "404 Not Found",
            "599 X",
            "200",
            "200 D\u{e9}j\u{e0} vu",
        ] {
            assert!(validate_status(ok).is_ok(), "{ok}");
        }
        for bad in [
            "OK",
            "",
            "20",
            "20 OK",
            "200OK",
            "099 x",
            "200 OK\r\nX: y",
            "abc def",
            "200 \u{20ac}",
        ] {
            assert!(validate_status(bad).is_err(), "{bad}");
        }
        for informational in ["100 Continue", "103 Early Hints", "199"] {
            assert_eq!(
                validate_status(informational),
                Err(HeadError::Informational(informational.into()))
            );
        }
    }

    #[test]
    fn headers_are_validated() {
        assert!(validate_header("Content-Type", "text/html; charset=utf-8").is_ok());
        assert!(validate_header("X-Latin", "caf\u{e9}").is_ok());
        assert!(validate_header("X-Tab", "a\tb").is_ok());
        for (n, v) in [
            ("X-A", "a\r\nSet-Cookie: x"),
            ("X-A", "a\nb"),
            ("X-A", "a\rb"),
            ("X-A", "\u{20ac}"),
            ("Bad Name", "v"),
            ("X:Y", "v"),
            ("", "v"),
            ("Connection", "close"),
            ("transfer-encoding", "chunked"),
            ("status", "200"),
        ] {
            assert!(validate_header(n, v).is_err(), "{n}: {v}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_known_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(is_hop_by_hop(&name.to_ascii_uppercase()), "{name}");
            assert_eq!(
                validate_header(name, "x"),
                Err(HeadError::HopByHop(name.to_owned()))
            );
        }
        assert!(is_hop_by_hop("Keep-Alive"));
        for name in ["content-length", "connectionx", "x-connection", "tee", ""] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn injection_is_reported_before_the_hop_by_hop_and_status_rules() {
        // A caller that drops hop-by-hop headers must still see the injection attempt.
        assert!(matches!(
            validate_header("Connection", "close\r\nSet-Cookie: x"),
            Err(HeadError::BadValue { ch: '\r', .. })
        ));
        assert!(matches!(
            validate_header("Status", "200\nX: y"),
            Err(HeadError::BadValue { ch: '\n', .. })
        ));
        assert_eq!(
            validate_header("Upgrade", "h2c"),
            Err(HeadError::HopByHop("Upgrade".into()))
        );
        assert_eq!(
            validate_header("STATUS", "200"),
            Err(HeadError::StatusHeader)
        );
    }

    #[test]
    fn messages_name_no_interface() {
        // The same errors reach WSGI and ASGI apps; each interface adds its own rule.
        for e in [
            HeadError::HopByHop("Connection".into()),
            HeadError::StatusHeader,
            HeadError::BadName("a b".into()),
            HeadError::BadStatus("x".into()),
        ] {
            let msg = e.to_string();
            for interface in ["WSGI", "ASGI", "PEP 3333", "start_response"] {
                assert!(!msg.contains(interface), "{msg}");
            }
        }
    }

    #[test]
    fn bodiless_statuses() {
        assert!(status_is_bodiless("204 No Content"));
        assert!(status_is_bodiless("304 Not Modified"));
        assert!(!status_is_bodiless("200 OK"));
    }

    #[test]
    fn the_head_is_cgi_style_and_latin1() {
        let mut out = Vec::new();
        encode_head(&mut out, "200 OK", &[("X-Caf".into(), "caf\u{e9}".into())]);
        assert_eq!(out, b"Status: 200 OK\r\nX-Caf: caf\xe9\r\n\r\n");
    }
}
