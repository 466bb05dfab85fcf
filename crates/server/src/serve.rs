//! The accept loop: connection limit, one task per connection, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::ServerError;
use crate::conn::ConnConfig;
use crate::conn::serve_connection;
#[cfg(windows)]
use crate::conn::serve_stream;
use crate::handler::Handler;
use crate::transport::{Accepted, Listener};

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Per-connection settings.
    pub conn: ConnConfig,
    /// Most connections served at once; further ones wait in the listen backlog.
    pub max_conns: usize,
    /// After shutdown is requested, how long in-flight requests may take before the server
    /// returns anyway.
    pub graceful_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            conn: ConnConfig::default(),
            max_conns: 1024,
            graceful_timeout: Duration::from_secs(30),
        }
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeOutcome {
    /// Every connection finished within the grace period.
    Drained,
    /// The grace period ran out with connections still open.
    TimedOut,
    /// A connected-stream transport (stdin) closed: the web server is done with us.
    StreamClosed,
}

/// Accepts connections from `listener` and serves them with `handler` until `shutdown` fires
/// (or, for an inherited connected stream, until that one connection ends). On shutdown it
/// stops accepting, lets in-flight requests finish for up to `graceful_timeout`, and returns.
pub async fn serve<H: Handler>(
    mut listener: Listener,
    handler: Arc<H>,
    mut config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<ServeOutcome, ServerError> {
    if listener.is_iis() {
        // IIS fails a request on any record type it does not expect, FCGI_UNKNOWN_TYPE
        // included, and never sends two requests at once (research/iis-fastcgi.md §1.6).
        config.conn.limits.answer_unknown_type = false;
        config.conn.limits.multiplex = false;
    }
    let conn_config = Arc::new(config.conn.clone());
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_conns.max(1)));
    let connected = listener.is_connected_stream();
    // Kept connections other workers handed over, through the supervisor.
    #[cfg(unix)]
    let mut handed = config
        .conn
        .handover
        .clone()
        .map(|h| read_handoffs(h, shutdown.clone()));
    #[cfg(not(unix))]
    let mut handed: Option<std::convert::Infallible> = None;
    info!(listen = %listener.describe(), max_conns = config.max_conns, "serving");
    let mut outcome = None;
    // Logged once each time the limit is reached, not once per waiting connection.
    let mut at_limit = false;
    loop {
        if permits.available_permits() == 0 {
            if !at_limit && !connected {
                warn!(
                    max_conns = config.max_conns,
                    "--max-conns reached: new connections wait in the listen backlog until one closes"
                );
            }
            at_limit = true;
        } else {
            at_limit = false;
        }
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
            h = next_handed(&mut handed) => {
                #[cfg(unix)]
                match h {
                    Some((fd, leftover)) => {
                        serve_handed(&tracker, fd, &leftover, &handler, &conn_config, &shutdown, Some(permit));
                    }
                    None => handed = None,
                }
                #[cfg(not(unix))]
                let _: Option<std::convert::Infallible> = h;
                continue;
            }
        };
        let accepted = match accepted {
            Ok(Some(a)) => a,
            Ok(None) => {
                // The one inherited connection was handed out; wait for it to end.
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = wait_all(&tracker) => outcome = Some(ServeOutcome::StreamClosed),
                }
                break;
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let cfg = Arc::clone(&conn_config);
        let stop = shutdown.clone();
        tracker.spawn(async move {
            match accepted {
                Accepted::Tcp(s, peer) => serve_connection(s, handler, cfg, stop, &peer).await,
                #[cfg(unix)]
                Accepted::Unix(s, peer) => serve_connection(s, handler, cfg, stop, &peer).await,
                #[cfg(windows)]
                Accepted::Pipe(p) => {
                    let client = p.client();
                    serve_stream(p, handler, cfg, stop, "pipe", client).await;
                }
            }
            drop(permit);
        });
    }
    if let Some(o) = outcome {
        return Ok(o);
    }
    drop(listener);
    #[cfg(unix)]
    if let Some(rx) = handed.as_mut() {
        // Connections the supervisor sent before this worker stopped are served (or handed
        // back) like the others, not dropped.
        while let Ok((fd, leftover)) = rx.try_recv() {
            let permit = Arc::clone(&permits).try_acquire_owned().ok();
            serve_handed(
                &tracker,
                fd,
                &leftover,
                &handler,
                &conn_config,
                &shutdown,
                permit,
            );
        }
    }
    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        info!(
            connections = in_flight,
            grace_s = config.graceful_timeout.as_secs_f64(),
            "shutting down: letting in-flight requests finish"
        );
    }
    let drained = tokio::time::timeout(config.graceful_timeout, tracker.wait())
        .await
        .is_ok();
    #[cfg(unix)]
    if let Some(h) = &config.conn.handover {
        h.report();
    }
    if drained {
        debug!("all connections closed");
        Ok(if connected {
            ServeOutcome::StreamClosed
        } else {
            ServeOutcome::Drained
        })
    } else {
        warn!(
            connections = tracker.len(),
            "graceful timeout reached; exiting with requests still in flight"
        );
        Ok(ServeOutcome::TimedOut)
    }
}

#[cfg(unix)]
type Handed = (std::os::fd::OwnedFd, bytes::Bytes);

/// Reads the supervisor's messages: connections go to the accept loop; `Retire` marks this
/// worker retiring, then starts its graceful stop (even while the accept loop waits for a
/// `--max-conns` slot).
#[cfg(unix)]
fn read_handoffs(
    handover: Arc<crate::handoff::Handover>,
    shutdown: CancellationToken,
) -> tokio::sync::mpsc::UnboundedReceiver<Handed> {
    use crate::handoff::Message;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match handover.channel().recv().await {
                Ok(Some(Message::Connection { fd, leftover })) => {
                    if tx.send((fd, leftover)).is_err() {
                        return;
                    }
                }
                Ok(Some(Message::Retire)) => {
                    info!(
                        "retired by the supervisor: stopping gracefully; kept connections go to the other workers"
                    );
                    handover.retire();
                    shutdown.cancel();
                }
                Ok(Some(Message::RetireRequest)) => {}
                Ok(None) => return,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    warn!(error = %e, "ignored a bad message from the supervisor");
                }
                Err(e) => {
                    warn!(error = %e, "the supervisor's hand-over channel failed: kept connections will be closed when this worker stops");
                    return;
                }
            }
        }
    });
    rx
}

/// The next connection handed over; `None` once the supervisor's channel is gone (never,
/// without one).
#[cfg(unix)]
async fn next_handed(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Handed>>,
) -> Option<Handed> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_handed(_: &mut Option<std::convert::Infallible>) -> Option<std::convert::Infallible> {
    std::future::pending().await
}

/// Serves a kept connection another worker handed over, starting with the bytes it had read.
#[cfg(unix)]
fn serve_handed<H: Handler>(
    tracker: &TaskTracker,
    fd: std::os::fd::OwnedFd,
    leftover: &[u8],
    handler: &Arc<H>,
    config: &Arc<ConnConfig>,
    shutdown: &CancellationToken,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let accepted = match crate::transport::unix::adopt_stream(fd) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot serve a connection handed over by another worker");
            return;
        }
    };
    let (handler, cfg, stop) = (Arc::clone(handler), Arc::clone(config), shutdown.clone());
    let start = bytes::BytesMut::from(leftover);
    tracker.spawn(async move {
        match accepted {
            Accepted::Tcp(s, peer) => {
                crate::conn::serve_connection_from(s, handler, cfg, stop, &peer, start).await;
            }
            Accepted::Unix(s, peer) => {
                crate::conn::serve_connection_from(s, handler, cfg, stop, &peer, start).await;
            }
        }
        drop(permit);
    });
}

async fn wait_all(tracker: &TaskTracker) {
    tracker.close();
    tracker.wait().await;
}
