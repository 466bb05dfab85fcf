//! One FastCGI connection, driven the way a web server drives it: one request at a time, the
//! request body written while the response is read.
//!
//! A responder may answer before it has read the whole body (IIS posts its receive before it
//! sends BEGIN_REQUEST; research/iis-fastcgi.md §1.6). Writing the whole body first and only
//! then reading would deadlock as soon as both socket buffers fill, so [`Connection`] polls the
//! write and the read side of the one stream together in a single future.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use pyfcgi_proto::client::{ClientConnection, ClientEvent};
use pyfcgi_proto::record::MAX_CONTENT_LEN;
use pyfcgi_proto::{Params, ProtocolStatus, RecordType, Role, encode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{ClientError, Request, Response};

/// How many body bytes are encoded into the write buffer at a time.
const WRITE_BATCH: usize = 4 * MAX_CONTENT_LEN;
/// How many bytes one read asks for.
const READ_CHUNK: usize = 64 * 1024;

/// Which output stream a piece of response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `FCGI_STDOUT`: the CGI response.
    Stdout,
    /// `FCGI_STDERR`: error output.
    Stderr,
}

/// How a request ended (`FCGI_END_REQUEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The application's status (like a CGI exit status).
    pub app_status: u32,
    /// The protocol status; anything but `RequestComplete` means the request was refused.
    pub protocol_status: ProtocolStatus,
}

/// Whether the connection can carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    /// Sent without FCGI_KEEP_CONN: the application closes the connection after the request.
    NotKept,
    /// A request failed or was cancelled half-way; the byte stream is out of step.
    Broken,
}

/// A FastCGI connection to one responder.
///
/// Requests are sent one after another (no multiplexing, like IIS and nginx); ids cycle
/// 1..=255 like IIS, so the id after 255 is 1. A request cancelled half-way (for example by
/// `tokio::time::timeout`) leaves the connection unusable.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    read_buf: BytesMut,
    decoder: ClientConnection,
    next_id: u16,
    state: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            read_buf: BytesMut::new(),
            decoder: ClientConnection::new(),
            next_id: 1,
            state: State::Ready,
        }
    }

    /// The request id the next request will use.
    pub fn next_request_id(&self) -> u16 {
        self.next_id
    }

    /// True while the connection can carry another request.
    pub fn is_reusable(&self) -> bool {
        self.state == State::Ready
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, giving up the connection.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends `req` and collects the whole response.
    ///
    /// An `FCGI_END_REQUEST` whose protocol status is not `RequestComplete` is returned in the
    /// [`Response`], not as an error.
    pub async fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut stdout = BytesMut::new();
        let mut stderr = BytesMut::new();
        let end = self
            .request_with(req, |output, data| match output {
                Output::Stdout => stdout.extend_from_slice(&data),
                Output::Stderr => stderr.extend_from_slice(&data),
            })
            .await?;
        Ok(Response {
            stdout: stdout.freeze(),
            stderr: stderr.freeze(),
            app_status: end.app_status,
            protocol_status: end.protocol_status,
        })
    }

    /// Sends `req` and hands each piece of response to `on_output` as it arrives, without
    /// buffering the response (for load generators and streaming consumers).
    pub async fn request_with<F>(
        &mut self,
        req: &Request,
        mut on_output: F,
    ) -> Result<End, ClientError>
    where
        F: FnMut(Output, Bytes),
    {
        self.check_ready()?;
        let id = self.take_id();
        let mut head = BytesMut::new();
        encode::begin_request(&mut head, id, Role::Responder, req.keep_conn());
        encode::params(&mut head, id, req.params()).map_err(|e| {
            ClientError::InvalidRequest(format!("cannot encode the FastCGI params: {e}"))
        })?;
        encode::params_end(&mut head, id);
        let mut writer = RequestWriter::new(head, req.body().clone(), id);
        let mut exchange = Exchange {
            id,
            keep_conn: req.keep_conn(),
            end: None,
            stdout_bytes: 0,
        };
        // Until the exchange completes, the stream is out of step (also when this future is
        // dropped half-way).
        self.state = State::Broken;
        let end = poll_fn(|cx| self.poll_exchange(cx, &mut writer, &mut exchange, &mut on_output))
            .await?;
        self.state = if writer.failed {
            State::Broken
        } else if req.keep_conn() {
            State::Ready
        } else {
            State::NotKept
        };
        Ok(end)
    }

    /// Asks the application for management values (`FCGI_GET_VALUES`, spec §4.1), e.g.
    /// `FCGI_MAX_CONNS`, `FCGI_MAX_REQS`, `FCGI_MPXS_CONNS`. Names the application does not
    /// know are left out of the answer.
    pub async fn get_values(&mut self, names: &[&str]) -> Result<Params, ClientError> {
        self.check_ready()?;
        let mut out = BytesMut::new();
        encode::get_values(&mut out, names).map_err(|e| {
            ClientError::InvalidRequest(format!("cannot encode FCGI_GET_VALUES: {e}"))
        })?;
        self.state = State::Broken;
        self.stream.write_all(&out).await.map_err(ClientError::Io)?;
        self.stream.flush().await.map_err(ClientError::Io)?;
        loop {
            while let Some(event) = self.decoder.decode(&mut self.read_buf)? {
                match event {
                    ClientEvent::GetValuesResult(params) => {
                        self.state = State::Ready;
                        return Ok(params);
                    }
                    ClientEvent::UnknownType(kind) if kind == RecordType::GetValues.as_u8() => {
                        self.state = State::Ready;
                        return Err(ClientError::GetValuesUnsupported);
                    }
                    other => {
                        tracing::debug!(
                            "ignoring {other:?} while waiting for FCGI_GET_VALUES_RESULT"
                        );
                    }
                }
            }
            if poll_fn(|cx| self.poll_read_more(cx)).await? == 0 {
                return Err(ClientError::ClosedBeforeValues);
            }
        }
    }

    fn check_ready(&self) -> Result<(), ClientError> {
        match self.state {
            State::Ready => Ok(()),
            State::NotKept => Err(ClientError::ConnectionUnusable(
                "the previous request was sent without FCGI_KEEP_CONN, so the application closes it",
            )),
            State::Broken => Err(ClientError::ConnectionUnusable(
                "an earlier exchange failed or was cancelled half-way",
            )),
        }
    }

    /// The next request id: 1..=255, then 1 again (what IIS does; research/iis-fastcgi.md §1.6).
    fn take_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = if id >= 255 { 1 } else { id + 1 };
        id
    }

    /// Reads once into the read buffer; `Ok(0)` is end of stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ClientError>> {
        let filled = self.read_buf.len();
        self.read_buf.resize(filled + READ_CHUNK, 0);
        let mut buf = ReadBuf::new(&mut self.read_buf[filled..]);
        let result = Pin::new(&mut self.stream).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.read_buf.truncate(filled + n);
        match result {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(ClientError::Io(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_exchange<F: FnMut(Output, Bytes)>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut RequestWriter,
        exchange: &mut Exchange,
        on_output: &mut F,
    ) -> Poll<Result<End, ClientError>> {
        loop {
            let written = writer.poll_drive(&mut self.stream, cx).is_ready();
            while exchange.end.is_none() {
                let Some(event) = self.decoder.decode(&mut self.read_buf)? else {
                    break;
                };
                exchange.on_event(event, on_output)?;
            }
            if let Some(end) = exchange.end {
                // With FCGI_KEEP_CONN the rest of the body must still go out so the next
                // request starts on a record boundary (the application drains it). Without it
                // the application closes the connection, so stop writing.
                if written || !exchange.keep_conn {
                    return Poll::Ready(Ok(end));
                }
                return Poll::Pending;
            }
            match self.poll_read_more(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ClientError::ClosedEarly {
                        id: exchange.id,
                        stdout_bytes: exchange.stdout_bytes,
                    }));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Both sides are now waiting (or the writer is done), and each registered the
                // waker.
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Progress of the response side of one request.
struct Exchange {
    id: u16,
    keep_conn: bool,
    end: Option<End>,
    stdout_bytes: usize,
}

impl Exchange {
    fn on_event<F: FnMut(Output, Bytes)>(
        &mut self,
        event: ClientEvent,
        on_output: &mut F,
    ) -> Result<(), ClientError> {
        let check = |record: RecordType, got: u16| {
            if got == self.id {
                Ok(())
            } else {
                Err(ClientError::WrongRequestId {
                    record: record.name(),
                    expected: self.id,
                    got,
                })
            }
        };
        match event {
            ClientEvent::Stdout { id, data } => {
                check(RecordType::Stdout, id)?;
                self.stdout_bytes += data.len();
                on_output(Output::Stdout, data);
            }
            ClientEvent::StdoutEnd { id } => check(RecordType::Stdout, id)?,
            ClientEvent::Stderr { id, data } => {
                check(RecordType::Stderr, id)?;
                on_output(Output::Stderr, data);
            }
            ClientEvent::End {
                id,
                app_status,
                status,
            } => {
                check(RecordType::EndRequest, id)?;
                self.end = Some(End {
                    app_status,
                    protocol_status: status,
                });
            }
            // Management answers nobody asked for: harmless, and not ours to judge.
            other @ (ClientEvent::GetValuesResult(_) | ClientEvent::UnknownType(_)) => {
                tracing::debug!("ignoring unsolicited {other:?} during request {}", self.id);
            }
        }
        Ok(())
    }
}

/// Writes the request's records, encoding the body a batch at a time so a large body is not
/// copied into one huge buffer.
struct RequestWriter {
    out: BytesMut,
    body: Bytes,
    id: u16,
    stdin_ended: bool,
    done: bool,
    /// Writing failed (typically the application closed early); the response may still be
    /// readable, but the connection is not reusable.
    failed: bool,
}

impl RequestWriter {
    fn new(head: BytesMut, body: Bytes, id: u16) -> Self {
        let mut writer = Self {
            out: head,
            body,
            id,
            stdin_ended: false,
            done: false,
            failed: false,
        };
        // A small request goes out in one write, as IIS sends it (§1.6).
        writer.refill();
        writer
    }

    /// Encodes the next batch of body records (and the final empty STDIN) into `out`; false
    /// when everything has been encoded.
    fn refill(&mut self) -> bool {
        let mut added = false;
        while self.out.len() < WRITE_BATCH {
            if !self.body.is_empty() {
                let n = self.body.len().min(WRITE_BATCH);
                encode::stdin(&mut self.out, self.id, &self.body[..n]);
                self.body.advance(n);
            } else if !self.stdin_ended {
                encode::stdin_end(&mut self.out, self.id);
                self.stdin_ended = true;
            } else {
                break;
            }
            added = true;
        }
        added
    }

    fn fail(&mut self, error: &io::Error) {
        tracing::debug!("writing request {} failed: {error}", self.id);
        self.failed = true;
        self.done = true;
    }

    /// Writes until the transport pushes back (`Pending`, waker registered) or everything is
    /// written and flushed (`Ready`). A write error ends writing but is not returned: the
    /// application may have answered and closed, and the reader decides what that means.
    fn poll_drive<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while !self.done {
            if self.out.is_empty() && !self.refill() {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.done = true,
                    Poll::Ready(Err(e)) => self.fail(&e),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            match Pin::new(&mut *stream).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => self.fail(&io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => self.fail(&e),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_responder::{Behaviour, responder};
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn connect(behaviour: Behaviour) -> Connection<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(responder(theirs, behaviour));
        Connection::new(ours)
    }

    fn body(n: usize) -> Bytes {
        (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
    }

    fn request(body: Bytes) -> Request {
        Request::builder("POST", "/upload")
            .body(body)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn five_megabyte_body_is_echoed() {
        let mut conn = connect(Behaviour::Echo);
        let data = body(5 * 1024 * 1024);
        let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        let resp = conn.request(&request(data)).await.unwrap();
        assert_eq!(resp.protocol_status, ProtocolStatus::RequestComplete);
        assert_eq!(&resp.stderr[..], b"warn");
        let head = resp.head().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body, format!("id=1 len={} sum={sum}", 5 * 1024 * 1024));
    }

    #[tokio::test]
    async fn response_before_body_does_not_deadlock() {
        let mut conn = connect(Behaviour::AnswerFirst { big: 3 << 20 });
        let resp = conn.request(&request(body(5 << 20))).await.unwrap();
        assert_eq!(resp.app_status, 5 << 20);
        assert_eq!(resp.head().unwrap().body.len(), 3 << 20);
        // The connection is still in step for the next request.
        let resp = conn.request(&request(body(10))).await.unwrap();
        assert_eq!(resp.app_status, 10);
    }

    #[tokio::test]
    async fn ids_cycle_from_255_back_to_1() {
        let mut conn = connect(Behaviour::Echo);
        let req = Request::builder("GET", "/").build().unwrap();
        let mut seen = Vec::new();
        for _ in 0..300 {
            let resp = conn.request(&req).await.unwrap();
            seen.push(resp.app_status);
        }
        let expected: Vec<u32> = (1..=255).chain(1..=45).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn get_values_reports_the_responder_limits() {
        let mut conn = connect(Behaviour::Echo);
        let values = conn
            .get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "NOPE"])
            .await
            .unwrap();
        assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("1024"));
        assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("1"));
        assert!(values.get(b"NOPE").is_none());
        // A request still works afterwards.
        let resp = conn.request(&request(body(3))).await.unwrap();
        assert_eq!(resp.app_status, 1);
    }

    #[tokio::test]
    async fn close_before_end_request_is_an_error() {
        let mut conn = connect(Behaviour::CloseAfterBegin);
        let err = conn.request(&request(body(1 << 20))).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::ClosedEarly {
                    id: 1,
                    stdout_bytes: 0
                }
            ),
            "{err:?}"
        );
        assert!(!conn.is_reusable());
        let again = conn.request(&request(body(1))).await.unwrap_err();
        assert!(matches!(again, ClientError::ConnectionUnusable(_)));
    }

    #[tokio::test]
    async fn refusal_is_returned_in_the_response() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut conn = Connection::new(ours);
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = theirs.read_buf(&mut buf).await;
            let mut out = BytesMut::new();
            encode::end_request(&mut out, 1, 0, ProtocolStatus::Overloaded);
            let _ = theirs.write_all(&out).await;
            // Keep the pipe open until the client is done.
            let _ = theirs.read_buf(&mut buf).await;
        });
        let resp = conn.request(&request(body(0))).await.unwrap();
        assert_eq!(resp.protocol_status, ProtocolStatus::Overloaded);
        assert!(resp.stdout.is_empty());
    }

    #[tokio::test]
    async fn record_for_another_request_is_an_error() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut conn = Connection::new(ours);
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = theirs.read_buf(&mut buf).await;
            let mut out = BytesMut::new();
            encode::stdout(&mut out, 7, b"x");
            let _ = theirs.write_all(&out).await;
            let _ = theirs.read_buf(&mut buf).await;
        });
        let err = conn.request(&request(body(0))).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::WrongRequestId {
                    expected: 1,
                    got: 7,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn without_keep_conn_the_connection_is_not_reused() {
        let mut conn = connect(Behaviour::Echo);
        let req = Request::builder("GET", "/")
            .keep_conn(false)
            .build()
            .unwrap();
        conn.request(&req).await.unwrap();
        assert!(!conn.is_reusable());
        assert!(matches!(
            conn.request(&req).await,
            Err(ClientError::ConnectionUnusable(_))
        ));
    }
}
