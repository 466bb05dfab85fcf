//! Request-body delivery that never lets a slow handler stall the connection.
//!
//! The reader hands body chunks straight to the handler's bounded channel while it has room.
//! When it is full, a per-request *pump* task takes over: chunks are queued in memory up to
//! `max_body_memory` and beyond that appended to an unlinked temp file, then fed to the
//! handler as it reads. The reader keeps reading the socket either way, so a handler that
//! writes its response before reading its body (or reads it slowly) cannot deadlock with a
//! web server that sends the whole body before reading the response, as nginx does.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::handler::{BodyMsg, BodyReceiver};

/// Chunk size when reading spooled body bytes back.
const SPOOL_READ_CHUNK: usize = 64 * 1024;
/// Bytes the reader may have in flight to a pump before it waits (the pump drains this into
/// memory or the file at once, so this only bounds a burst).
const PUMP_INFLIGHT: u32 = 512 * 1024;

/// Body delivery settings.
#[derive(Debug, Clone)]
pub struct BodyConfig {
    /// Chunks the handler's channel holds.
    pub queue: usize,
    /// Body bytes a request may hold in memory beyond that before spooling to a temp file.
    pub max_memory: usize,
    /// Where spool files are created (`--spool-dir`; `None`: the system temp directory).
    /// They are created without a name (or unlinked at once), readable only by this user,
    /// and gone when the request ends, even if the process is killed.
    pub spool_dir: Option<std::sync::Arc<std::path::Path>>,
}

/// The reader's end of one request body.
#[derive(Debug)]
pub(crate) enum BodyFeeder {
    /// Straight into the handler's channel.
    Direct(mpsc::Sender<BodyMsg>),
    /// Through a pump task that buffers and spools.
    Pumped {
        tx: mpsc::UnboundedSender<BodyMsg>,
        budget: Arc<Semaphore>,
    },
    /// The handler dropped its receiver: the rest of the body is discarded.
    Discard,
}

/// A body channel pair for a new request.
pub(crate) fn channel(config: &BodyConfig) -> (BodyFeeder, BodyReceiver) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    (BodyFeeder::Direct(tx), BodyReceiver::new(rx))
}

impl BodyFeeder {
    /// Delivers one message without ever waiting on the handler (only, briefly, on the pump).
    pub(crate) async fn feed(&mut self, msg: BodyMsg, config: &BodyConfig) {
        match self {
            Self::Discard => {}
            Self::Direct(tx) => match tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => *self = Self::Discard,
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    let handler_tx = tx.clone();
                    let (ptx, prx) = mpsc::unbounded_channel();
                    let budget = Arc::new(Semaphore::new(PUMP_INFLIGHT as usize));
                    tokio::spawn(pump(
                        prx,
                        handler_tx,
                        Arc::clone(&budget),
                        config.max_memory,
                        config.spool_dir.clone(),
                    ));
                    *self = Self::Pumped { tx: ptx, budget };
                    Box::pin(self.feed(msg, config)).await;
                }
            },
            Self::Pumped { budget, .. } => {
                let len = match &msg {
                    BodyMsg::Data(b) => u32::try_from(b.len())
                        .unwrap_or(PUMP_INFLIGHT)
                        .min(PUMP_INFLIGHT),
                    BodyMsg::End | BodyMsg::Failed => 0,
                };
                let budget = Arc::clone(budget);
                if len > 0 {
                    let Ok(permit) = budget.acquire_many(len).await else {
                        *self = Self::Discard;
                        return;
                    };
                    permit.forget();
                }
                let Self::Pumped { tx, .. } = self else {
                    return;
                };
                if tx.send(msg).is_err() {
                    *self = Self::Discard;
                }
            }
        }
    }
}

/// Bytes waiting for the handler: memory first, then the spool file's unread part.
struct Backlog {
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    max_memory: usize,
    spool: Option<Spool>,
    spool_dir: Option<Arc<std::path::Path>>,
}

struct Spool {
    file: Arc<std::fs::File>,
    read_pos: u64,
    write_pos: u64,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.memory.is_empty()
            && self
                .spool
                .as_ref()
                .is_none_or(|s| s.read_pos == s.write_pos)
    }

    async fn push(&mut self, data: Bytes) -> std::io::Result<()> {
        let spooling = self
            .spool
            .as_ref()
            .is_some_and(|s| s.read_pos < s.write_pos);
        if !spooling && self.memory_bytes + data.len() <= self.max_memory {
            self.memory_bytes += data.len();
            self.memory.push_back(data);
            return Ok(());
        }
        if self.spool.is_none() {
            let dir = self.spool_dir.clone();
            let file = tokio::task::spawn_blocking(move || {
                let file = match dir {
                    Some(d) => tempfile::tempfile_in(d)?,
                    None => tempfile::tempfile()?,
                };
                // O_TMPFILE files get 0666 minus the umask: the file has no name, but its
                // bits should say private too.
                #[cfg(unix)]
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok::<_, std::io::Error>(file)
            })
            .await
            .map_err(std::io::Error::other)??;
            debug!(
                max_memory = self.max_memory,
                "request body exceeds memory budget; spooling to a temp file"
            );
            self.spool = Some(Spool {
                file: Arc::new(file),
                read_pos: 0,
                write_pos: 0,
            });
        }
        let Some(spool) = self.spool.as_mut() else {
            return Ok(());
        };
        let file = Arc::clone(&spool.file);
        let pos = spool.write_pos;
        let len = data.len() as u64;
        tokio::task::spawn_blocking(move || write_all_at(&file, &data, pos))
            .await
            .map_err(std::io::Error::other)??;
        spool.write_pos += len;
        Ok(())
    }

    async fn pop(&mut self) -> std::io::Result<Option<Bytes>> {
        if let Some(b) = self.memory.pop_front() {
            self.memory_bytes -= b.len();
            return Ok(Some(b));
        }
        let Some(spool) = self.spool.as_mut() else {
            return Ok(None);
        };
        if spool.read_pos == spool.write_pos {
            return Ok(None);
        }
        let len = usize::try_from(spool.write_pos - spool.read_pos)
            .unwrap_or(SPOOL_READ_CHUNK)
            .min(SPOOL_READ_CHUNK);
        let file = Arc::clone(&spool.file);
        let pos = spool.read_pos;
        let data = tokio::task::spawn_blocking(move || read_exact_at(&file, len, pos))
            .await
            .map_err(std::io::Error::other)??;
        spool.read_pos += len as u64;
        if spool.read_pos == spool.write_pos {
            // Drained: start over at the front of the file, back to memory first.
            spool.read_pos = 0;
            spool.write_pos = 0;
        }
        Ok(Some(data))
    }
}

#[cfg(unix)]
fn write_all_at(file: &std::fs::File, data: &[u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, pos)
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, len: usize, pos: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, pos)?;
    Ok(Bytes::from(buf))
}

#[cfg(windows)]
fn write_all_at(file: &std::fs::File, mut data: &[u8], mut pos: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, data, pos)?;
        data = &data[n..];
        pos += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, len: usize, mut pos: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = std::os::windows::fs::FileExt::seek_read(file, &mut buf[filled..], pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        pos += n as u64;
    }
    Ok(Bytes::from(buf))
}

async fn pump(
    mut input: mpsc::UnboundedReceiver<BodyMsg>,
    handler: mpsc::Sender<BodyMsg>,
    budget: Arc<Semaphore>,
    max_memory: usize,
    spool_dir: Option<Arc<std::path::Path>>,
) {
    let mut backlog = Backlog {
        memory: VecDeque::new(),
        memory_bytes: 0,
        max_memory,
        spool: None,
        spool_dir,
    };
    let mut ended = false;
    let mut input_open = true;
    let mut handler_open = true;
    loop {
        if !input_open && (backlog.is_empty() || !handler_open) {
            if ended && handler_open {
                let _ = handler.send(BodyMsg::End).await;
            }
            return;
        }
        tokio::select! {
            msg = input.recv(), if input_open => match msg {
                Some(BodyMsg::Data(data)) => {
                    budget.add_permits(data.len().min(PUMP_INFLIGHT as usize));
                    if handler_open
                        && let Err(e) = backlog.push(data).await
                    {
                        let dir = backlog.spool_dir.as_deref().map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
                        warn!(error = %e, dir = %dir.display(), "cannot spool the request body to a temp file (--spool-dir); the application sees a read error and the rest of the body is discarded");
                        // What was buffered is dropped too: the app must not see a body with
                        // a hole in it.
                        backlog.memory.clear();
                        backlog.memory_bytes = 0;
                        backlog.spool = None;
                        let _ = handler.send(BodyMsg::Failed).await;
                        handler_open = false;
                    }
                }
                Some(BodyMsg::End) => {
                    ended = true;
                    input_open = false;
                }
                // Only the pump sends Failed, never the connection.
                Some(BodyMsg::Failed) | None => input_open = false,
            },
            permit = handler.reserve(), if handler_open && !backlog.is_empty() => match permit {
                Ok(permit) => match backlog.pop().await {
                    Ok(Some(data)) => permit.send(BodyMsg::Data(data)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot read the spooled request body back");
                        handler_open = false;
                    }
                },
                // The handler stopped reading: discard the rest.
                Err(_) => handler_open = false,
            },
        }
    }
}
