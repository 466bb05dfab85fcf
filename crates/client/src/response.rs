//! What the application sent, and the CGI response head inside its stdout (RFC 3875 §6).

use bytes::Bytes;
use pyfcgi_proto::ProtocolStatus;

/// A complete response: everything the application sent for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// All `FCGI_STDOUT` bytes: CGI headers, a blank line, the body.
    pub stdout: Bytes,
    /// All `FCGI_STDERR` bytes.
    pub stderr: Bytes,
    /// `appStatus` of `FCGI_END_REQUEST`.
    pub app_status: u32,
    /// `protocolStatus` of `FCGI_END_REQUEST`; anything but `RequestComplete` means the
    /// application refused the request.
    pub protocol_status: ProtocolStatus,
}

/// The parsed CGI head of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status code (from `Status:`; 302 for a bare `Location:`; else 200).
    pub status: u16,
    /// Reason phrase (from `Status:`, else the standard one for the code).
    pub reason: String,
    /// Header fields in order, without `Status:`. Values are bytes: WSGI headers are
    /// Latin-1, not necessarily UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body: a zero-copy slice of [`Response::stdout`].
    pub body: Bytes,
}

impl ResponseHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first header named `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Why a response's stdout is not a CGI response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// No blank line ends the header block.
    #[error(
        "no blank line ends its CGI headers ({len} bytes of FCGI_STDOUT, starting {preview}); a \
         responder must send header lines such as `Status: 200 OK` and `Content-Type: \
         text/plain`, an empty line, then the body"
    )]
    NoHeaderTerminator {
        /// Bytes of stdout received.
        len: usize,
        /// The start of stdout, escaped.
        preview: String,
    },
    /// A header line has no `:` or an invalid name.
    #[error("the header line {line:?} is not `Name: value`")]
    MalformedHeader {
        /// The line, lossily decoded.
        line: String,
    },
    /// `Status:` does not start with a three-digit code.
    #[error("`Status: {value}` does not start with a three-digit HTTP status code")]
    BadStatus {
        /// The header value.
        value: String,
    },
}

impl Response {
    /// True when the request ended with `FCGI_REQUEST_COMPLETE`.
    pub fn is_complete(&self) -> bool {
        self.protocol_status == ProtocolStatus::RequestComplete
    }

    /// Parses the CGI head at the start of stdout. Lines may end in `\r\n` or `\n`.
    ///
    /// ```
    /// use pyfcgi_client::{ProtocolStatus, Response};
    /// let resp = Response {
    ///     stdout: "Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope".into(),
    ///     stderr: Default::default(),
    ///     app_status: 0,
    ///     protocol_status: ProtocolStatus::RequestComplete,
    /// };
    /// let head = resp.head().unwrap();
    /// assert_eq!((head.status, head.reason.as_str()), (404, "Not Found"));
    /// assert_eq!(head.header_str("content-type"), Some("text/plain"));
    /// assert_eq!(&head.body[..], b"nope");
    /// ```
    pub fn head(&self) -> Result<ResponseHead, HeadError> {
        let out = &self.stdout;
        let mut pos = 0;
        let mut headers = Vec::new();
        let mut status_value: Option<String> = None;
        let body_start = loop {
            let Some(nl) = out[pos..].iter().position(|&b| b == b'\n') else {
                return Err(HeadError::NoHeaderTerminator {
                    len: out.len(),
                    preview: preview(out),
                });
            };
            let line_end = pos + nl;
            let line = &out[pos..line_end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos = line_end + 1;
            if line.is_empty() {
                break pos;
            }
            let malformed = || HeadError::MalformedHeader {
                line: String::from_utf8_lossy(line).into_owned(),
            };
            let colon = line.iter().position(|&b| b == b':').ok_or_else(malformed)?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
                return Err(malformed());
            }
            let name = String::from_utf8_lossy(name).into_owned();
            let value = line[colon + 1..].trim_ascii().to_vec();
            if name.eq_ignore_ascii_case("status") {
                status_value = Some(String::from_utf8_lossy(&value).into_owned());
            } else {
                headers.push((name, value));
            }
        };
        let (status, reason) = match status_value {
            Some(value) => parse_status(&value)?,
            // RFC 3875 §6.2.3: a redirect without Status is a 302.
            None if headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("location")) =>
            {
                (302, "Found".to_owned())
            }
            None => (200, "OK".to_owned()),
        };
        Ok(ResponseHead {
            status,
            reason,
            headers,
            body: out.slice(body_start..),
        })
    }
}

/// `404 Not Found` → (404, "Not Found"); `200` → (200, "OK").
fn parse_status(value: &str) -> Result<(u16, String), HeadError> {
    let bad = || HeadError::BadStatus {
        value: value.to_owned(),
    };
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = code.parse().map_err(|_| bad())?;
    let reason = reason.trim();
    let reason = if reason.is_empty() {
        pyfcgi_proto::reason_phrase(code).to_owned()
    } else {
        reason.to_owned()
    };
    Ok((code, reason))
}

/// The first bytes of `out`, escaped, for an error message.
fn preview(out: &[u8]) -> String {
    const MAX: usize = 80;
    let shown = &out[..out.len().min(MAX)];
    let mut text = format!("\"{}\"", shown.escape_ascii());
    if out.len() > MAX {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(stdout: &'static [u8]) -> Response {
        Response {
            stdout: Bytes::from_static(stdout),
            stderr: Bytes::new(),
            app_status: 0,
            protocol_status: ProtocolStatus::RequestComplete,
        }
    }

    #[test]
    fn default_status_is_200() {
        let head = response(b"Content-Type: text/html\n\n<p>").head().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.reason, "OK");
        assert_eq!(
            head.headers,
            [("Content-Type".to_owned(), b"text/html".to_vec())]
        );
        assert_eq!(&head.body[..], b"<p>");
    }

    #[test]
    fn location_without_status_is_302() {
        let head = response(b"Location: /x\r\n\r\n").head().unwrap();
        assert_eq!((head.status, head.reason.as_str()), (302, "Found"));
        assert_eq!(head.header_str("location"), Some("/x"));
        let head = response(b"Status: 301\r\nLocation: /x\r\n\r\n")
            .head()
            .unwrap();
        assert_eq!(
            (head.status, head.reason.as_str()),
            (301, "Moved Permanently")
        );
    }

    #[test]
    fn status_header_is_not_in_the_list() {
        let head = response(b"Status: 418 I'm a teapot\r\nX: 1\r\n\r\n")
            .head()
            .unwrap();
        assert_eq!((head.status, head.reason.as_str()), (418, "I'm a teapot"));
        assert_eq!(head.headers.len(), 1);
        assert!(head.body.is_empty());
    }

    #[test]
    fn body_may_contain_anything() {
        let head = response(b"\r\n\r\n\0binary").head().unwrap();
        assert!(head.headers.is_empty());
        assert_eq!(&head.body[..], b"\r\n\0binary");
    }

    #[test]
    fn missing_terminator_is_an_error() {
        let err = response(b"Content-Type: text/plain\r\nhello")
            .head()
            .unwrap_err();
        assert!(matches!(err, HeadError::NoHeaderTerminator { len: 31, .. }));
        assert!(err.to_string().contains("Content-Type"));
        assert!(matches!(
            response(b"").head(),
            Err(HeadError::NoHeaderTerminator { len: 0, .. })
        ));
    }

    #[test]
    fn malformed_lines_and_statuses_are_errors() {
        assert!(matches!(
            response(b"hello world\r\n\r\n").head(),
            Err(HeadError::MalformedHeader { .. })
        ));
        assert!(matches!(
            response(b"Status: OK\r\n\r\n").head(),
            Err(HeadError::BadStatus { .. })
        ));
        assert!(matches!(
            response(b"Status: 2000 Big\r\n\r\n").head(),
            Err(HeadError::BadStatus { .. })
        ));
    }
}
