//! Built-in handlers: `hello`, `echo` and `env`.
//!
//! They answer without Python, so they show what the FastCGI layer alone can do (the
//! protocol-ceiling benchmark target) and let an admin check a web server's FastCGI setup
//! before any application is involved.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

use crate::handler::{Handler, Request, ResponseWriter};

/// Which built-in handler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// A fixed 13-byte `Hello, World!` response.
    Hello,
    /// The request body sent back as `application/octet-stream`, streamed.
    Echo,
    /// The request params as `NAME=VALUE` lines.
    Env,
}

impl std::str::FromStr for Builtin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hello" => Ok(Self::Hello),
            "echo" => Ok(Self::Echo),
            "env" => Ok(Self::Env),
            other => Err(format!(
                "unknown built-in handler {other:?}; choose hello, echo or env"
            )),
        }
    }
}

/// The exact bytes `hello` writes.
pub const HELLO_RESPONSE: &[u8] =
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// Runs a [`Builtin`].
#[derive(Debug, Clone, Copy)]
pub struct BuiltinHandler(pub Builtin);

impl Handler for BuiltinHandler {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        match self.0 {
            Builtin::Hello => hello(response).await,
            Builtin::Echo => echo(request, response).await,
            Builtin::Env => env(&request, response).await,
        }
    }
}

async fn hello(mut response: ResponseWriter) {
    if response
        .write(Bytes::from_static(HELLO_RESPONSE))
        .await
        .is_ok()
    {
        let _ = response.end(0).await;
    }
}

async fn echo(mut request: Request, mut response: ResponseWriter) {
    let mut head = String::from("Status: 200 OK\r\nContent-Type: application/octet-stream\r\n");
    if let Some(len) = request
        .params
        .get_str("CONTENT_LENGTH")
        .filter(|l| l.parse::<u64>().is_ok())
    {
        let _ = write!(head, "Content-Length: {len}\r\n");
    }
    head.push_str("\r\n");
    // The head goes out with the first body chunk (one record, one write for small bodies).
    let mut pending = Some(BytesMut::from(head.as_bytes()));
    loop {
        let chunk = tokio::select! {
            c = request.body.chunk() => c,
            () = request.abort.aborted() => return,
        };
        match chunk {
            Ok(Some(data)) => {
                let data = match pending.take() {
                    Some(mut h) => {
                        h.extend_from_slice(&data);
                        h.freeze()
                    }
                    None => data,
                };
                if response.write(data).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(id = request.id, error = %e, "echo: body incomplete");
                return;
            }
        }
    }
    if let Some(h) = pending
        && response.write(h.freeze()).await.is_err()
    {
        return;
    }
    let _ = response.end(0).await;
}

async fn env(request: &Request, mut response: ResponseWriter) {
    let mut out =
        BytesMut::from(&b"Status: 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"[..]);
    for (name, value) in request.params.iter() {
        out.extend_from_slice(name);
        out.extend_from_slice(b"=");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\n");
    }
    if response.write(out.freeze()).await.is_ok() {
        let _ = response.end(0).await;
    }
}
