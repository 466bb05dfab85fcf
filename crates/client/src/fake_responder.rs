//! A fake FastCGI responder for tests, built on `pyfcgi_proto::server::ServerConnection`.

use bytes::BytesMut;
use pyfcgi_proto::server::{Event, Limits, ServerConnection};
use pyfcgi_proto::{ProtocolStatus, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the fake responder does with each request.
#[derive(Clone, Copy)]
pub(crate) enum Behaviour {
    /// Answers after the whole body: `id=N len=L sum=S`, app status = id.
    Echo,
    /// Sends `big` bytes of stdout right after the params, before reading any body, then
    /// drains the body and ends with app status = body length.
    AnswerFirst { big: usize },
    /// Closes the connection right after the first BEGIN.
    CloseAfterBegin,
}

/// Serves requests on `io` until it closes; without FCGI_KEEP_CONN, closes after a request.
pub(crate) async fn responder<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, behaviour: Behaviour) {
    let mut conn = ServerConnection::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut len = 0usize;
    let mut sum = 0u64;
    let mut keep = true;
    loop {
        let event = match conn.decode(&mut buf) {
            Ok(Some(event)) => event,
            Ok(None) => {
                if conn.has_output() {
                    let out = conn.take_output();
                    if io.write_all(&out).await.is_err() {
                        return;
                    }
                }
                match io.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(e) => panic!("fake responder: {e}"),
        };
        let mut out = BytesMut::new();
        let mut finished = false;
        match (event, behaviour) {
            (Event::Begin { .. }, Behaviour::CloseAfterBegin) => return,
            (Event::Begin { keep_conn, .. }, _) => {
                keep = keep_conn;
                len = 0;
                sum = 0;
            }
            (Event::Params { id, .. }, Behaviour::AnswerFirst { big }) => {
                encode::stdout(&mut out, id, b"Status: 200 OK\r\n\r\n");
                encode::stdout(&mut out, id, &vec![b'r'; big]);
            }
            (Event::Stdin { data, .. }, _) => {
                len += data.len();
                sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
            }
            (Event::StdinEnd { id }, Behaviour::Echo) => {
                encode::stdout(&mut out, id, b"Content-Type: text/plain\r\n\r\n");
                encode::stdout(
                    &mut out,
                    id,
                    format!("id={id} len={len} sum={sum}").as_bytes(),
                );
                encode::stderr(&mut out, id, b"warn");
                encode::end_response(&mut out, id, u32::from(id), ProtocolStatus::RequestComplete);
                conn.finish(id);
                finished = true;
            }
            (Event::StdinEnd { id }, _) => {
                encode::end_response(&mut out, id, len as u32, ProtocolStatus::RequestComplete);
                conn.finish(id);
                finished = true;
            }
            _ => {}
        }
        if !out.is_empty() && io.write_all(&out).await.is_err() {
            return;
        }
        if finished && !keep {
            return;
        }
    }
}
