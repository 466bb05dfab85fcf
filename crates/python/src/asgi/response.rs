//! The `send()` side of a request (WSGI's twin: `wsgi/response.rs`): the head of
//! `http.response.start`, body pieces, `http.response.pathsend`, the end of the response, and
//! the error pages for an app that fails before its body.

use bytes::Bytes;
use pyfcgi_proto::head;
use pyfcgi_server::ResponseWriter;
use pyfcgi_server::observe::RequestId;
use pyo3::prelude::*;
use tracing::{debug, error, warn};

use super::Drive;
use super::input::Outcome;

/// The CGI response head for `http.response.start`, or why it is invalid.
///
/// Hop-by-hop headers are dropped, not refused: the ASGI spec has no rule against them and
/// common apps send them (sse-starlette's `Connection: keep-alive`, BlackSheep's
/// `Transfer-Encoding: chunked`), but the connection to the client is the web server's, and
/// a `Transfer-Encoding` it did not apply would corrupt the body. Header injection is refused
/// all the same, in those headers too.
pub(super) fn response_head(
    status: u16,
    headers: &[(Vec<u8>, Vec<u8>)],
    id: RequestId,
) -> Result<Vec<u8>, String> {
    let reason = match pyfcgi_proto::reason_phrase(status) {
        "" => "Status",
        r => r,
    };
    let line = format!("{status} {reason}");
    if !(200..=999).contains(&status) {
        return Err(format!(
            "ASGI: status {status} is not a final HTTP status (200-599 expected)"
        ));
    }
    head::validate_status(&line).map_err(|e| e.to_string())?;
    let mut fields = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        // latin-1, as HTTP header bytes are.
        let name: String = name.iter().map(|&b| char::from(b)).collect();
        let value: String = value.iter().map(|&b| char::from(b)).collect();
        match head::validate_header(&name, &value) {
            Ok(()) => fields.push((name, value)),
            Err(head::HeadError::HopByHop(_)) => {
                debug!(request = %id, header = %name, "ASGI: dropped a hop-by-hop response header (the web server manages the connection)");
            }
            Err(head::HeadError::StatusHeader) => {
                return Err("ASGI: a header named 'Status' is not allowed; the status goes in http.response.start's \"status\"".into());
            }
            Err(e) => return Err(format!("ASGI: {e}")),
        }
    }
    let mut out = Vec::with_capacity(64 + fields.len() * 40);
    head::encode_head(&mut out, &line, &fields);
    Ok(out)
}

const ERROR_PAGE: &[u8] = b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\r\nInternal Server Error\n";

impl Drive<'_> {
    /// `http.response.body`: writes the piece, then resolves the future `send()` waits on
    /// (if it waits).
    pub(super) async fn body_piece(&mut self, data: Bytes, more: bool, fut: Option<Py<PyAny>>) {
        let len = data.len();
        let ok = self.write_body(data, more).await;
        self.link
            .unwritten
            .fetch_sub(len, std::sync::atomic::Ordering::AcqRel);
        if let Some(fut) = fut {
            let outcome = if ok {
                Outcome::Done
            } else {
                Outcome::Failed("the client disconnected".into())
            };
            self.shared.finish(fut, outcome);
        }
    }

    /// Writes one body piece (the held head first); false when the client is gone.
    async fn write_body(&mut self, mut data: Bytes, more: bool) -> bool {
        let Some(mut r) = self.response.take() else {
            return false;
        };
        self.body_sent = true;
        if self.head_only {
            data = Bytes::new();
        }
        if let Some(head) = self.held_head.take() {
            let mut first = head;
            first.extend_from_slice(&data);
            data = Bytes::from(first);
        }
        let mut ok = true;
        if !data.is_empty() && (more || !r.defer(&data)) {
            ok = r.write(data).await.is_ok();
        }
        if more && ok {
            self.response = Some(r);
        } else if ok {
            ok = r.end(0).await.is_ok();
        }
        if !ok {
            self.set_gone();
        }
        if self.response.is_none() {
            self.release_read();
        }
        ok
    }

    /// `http.response.pathsend`: the file's bytes are the rest of the body.
    pub(super) async fn send_file(&mut self, file: std::fs::File) {
        use tokio::io::AsyncReadExt;
        const CHUNK: usize = 256 * 1024;
        let Some(mut r) = self.response.take() else {
            return;
        };
        self.body_sent = true;
        let mut ok = match self.held_head.take() {
            Some(head) => r.write(Bytes::from(head)).await.is_ok(),
            None => true,
        };
        let mut file = tokio::fs::File::from_std(file);
        while ok && !self.head_only {
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => ok = r.write(buf.freeze()).await.is_ok(),
                Err(e) => {
                    // The head is out: all that can be done is to cut the response short
                    // (dropping the writer ends the request with an error status).
                    error!("ASGI: http.response.pathsend: reading the file failed: {e}");
                    drop(r);
                    self.release_read();
                    return;
                }
            }
        }
        if !ok || r.end(0).await.is_err() {
            self.set_gone();
        }
        self.release_read();
    }

    pub(super) async fn finish(&mut self, started: bool, error: Option<&str>) {
        if let Some(e) = error {
            error!(request = %self.id, "ASGI application error: {e}");
        }
        if let Some(mut r) = self.response.take() {
            match self.held_head.take() {
                // Nothing sent yet: an error is still a 500 (with the traceback in it only
                // with --detailed-errors).
                _ if error.is_some() && !self.body_sent => {
                    let detail = error.filter(|_| self.shared.cfg.detailed_errors);
                    let page = crate::wsgi::response::error_page(
                        "500 Internal Server Error",
                        "Internal Server Error",
                        self.id,
                        detail,
                    );
                    if r.write(page).await.is_ok() {
                        let _ = r.end(0).await;
                    }
                }
                Some(head) => {
                    if r.write(Bytes::from(head)).await.is_ok() {
                        let _ = r.end(0).await;
                    }
                }
                // Part of the body is out and the app failed (raised, or returned before
                // the last piece): as for WSGI, a non-zero application status says the
                // response is incomplete, for a web server or client that reads it.
                None if error.is_some() => {
                    warn!(
                        request = %self.id,
                        "the response had already started; ending it early with a non-zero application status"
                    );
                    let _ = r.end(1).await;
                }
                None if started => {
                    let _ = r.end(0).await;
                }
                None => {
                    let _ = write_error(r).await;
                }
            }
        }
        self.release_read();
    }
}

pub(super) async fn write_error(mut r: ResponseWriter) -> Result<(), pyfcgi_server::WriteError> {
    r.write(Bytes::from_static(ERROR_PAGE)).await?;
    r.end(0).await
}

#[cfg(test)]
mod tests {
    use pyfcgi_server::observe::RequestId;

    use super::response_head;

    fn head(status: u16, headers: &[(&str, &str)]) -> Result<String, String> {
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        response_head(status, &headers, RequestId::from_seq(1))
            .map(|h| String::from_utf8_lossy(&h).into_owned())
    }

    #[test]
    fn the_head_has_a_status_line_and_refuses_header_injection() {
        assert_eq!(
            head(200, &[("content-type", "text/plain")]).unwrap(),
            "Status: 200 OK\r\ncontent-type: text/plain\r\n\r\n"
        );
        assert!(head(200, &[("x", "a\r\nSet-Cookie: evil")]).is_err());
        assert!(head(101, &[]).is_err());
        assert!(head(200, &[("bad name", "v")]).is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_in_any_case() {
        let out = head(
            200,
            &[
                ("Connection", "keep-alive"),
                ("content-type", "text/event-stream"),
                ("Transfer-Encoding", "chunked"),
                ("keep-alive", "timeout=5"),
                ("UPGRADE", "h2c"),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "Status: 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
        );
    }

    #[test]
    fn injection_in_a_hop_by_hop_header_is_still_refused() {
        let err = head(200, &[("connection", "close\r\nSet-Cookie: owned=1")]).unwrap_err();
        assert!(err.starts_with("ASGI: invalid value for header"), "{err}");
    }

    #[test]
    fn a_status_header_is_refused_with_the_asgi_fix() {
        let err = head(200, &[("Status", "404")]).unwrap_err();
        assert!(err.contains("http.response.start"), "{err}");
        assert!(!err.contains("start_response"), "{err}");
    }
}
