//! `pyfcgi bench --streams S`: S requests in flight at once on each connection, with request
//! ids 1..=S (FastCGI multiplexing, spec §3.3). Each id is a lane that sends its next request
//! when the previous one ends; one reader hands the records to the lanes by id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use pyfcgi_proto::client::{ClientConnection, ClientEvent};
use pyfcgi_proto::{Role, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc};

use crate::bench::{CONNECT_BACKOFF, Ctx, ErrorKind, Phase, SAMPLE_EVERY, Slot, Stats, within};
use crate::{ClientError, End, Request, Stream};

/// The records of `request` with request id `id` (always with `FCGI_KEEP_CONN`).
pub(crate) fn encode_request(request: &Request, id: u16) -> Result<Bytes, ClientError> {
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, id, Role::Responder, true);
    encode::params(&mut out, id, request.params()).map_err(|e| {
        ClientError::InvalidRequest(format!("cannot encode the FastCGI params: {e}"))
    })?;
    encode::params_end(&mut out, id);
    for piece in request.body().chunks(32 * 1024) {
        encode::stdin(&mut out, id, piece);
    }
    encode::stdin_end(&mut out, id);
    Ok(out.freeze())
}

/// Runs `streams` lanes on the slot's connection until the phase ends, reconnecting when the
/// connection breaks.
pub(crate) async fn mux_loop(
    ctx: Arc<Ctx>,
    phase: Arc<Phase>,
    mut slot: Slot,
    streams: u16,
) -> (Option<Slot>, Stats) {
    let mut stats = Stats::new();
    let encoded: Vec<Bytes> = match (1..=streams)
        .map(|id| encode_request(&ctx.request, id))
        .collect::<Result<_, _>>()
    {
        Ok(e) => e,
        Err(e) => {
            stats.error(ErrorKind::Protocol, || e.report());
            return (Some(slot), stats);
        }
    };
    while !phase.over() {
        let conn = match within(ctx.limit, slot.ready(&ctx.source)).await {
            Ok(_) => slot.conn.take(),
            Err(e) => {
                stats.error(ErrorKind::of(&e), || e.report());
                tokio::time::sleep(CONNECT_BACKOFF).await;
                continue;
            }
        };
        let Some(conn) = conn else { continue };
        let (rd, wr) = tokio::io::split(conn.into_inner());
        let broke = run_connection(&ctx, &phase, rd, wr, &encoded, &mut stats).await;
        if broke && !phase.over() {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
    (Some(slot), stats)
}

/// One connection's lanes and reader; true when the connection broke.
async fn run_connection(
    ctx: &Ctx,
    phase: &Phase,
    rd: ReadHalf<Stream>,
    wr: WriteHalf<Stream>,
    encoded: &[Bytes],
    stats: &mut Stats,
) -> bool {
    let writer = Mutex::new(wr);
    let mut routes = HashMap::new();
    let mut lanes = Vec::new();
    for (i, records) in encoded.iter().enumerate() {
        let id = i as u16 + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(id, tx);
        lanes.push(lane(ctx, phase, id, records, &writer, rx));
    }
    let lanes = futures_join(lanes);
    let reader = read_loop(rd, routes);
    tokio::pin!(lanes, reader);
    // The reader ends when the connection does; the lanes when the phase does (or when the
    // reader is gone and their responses cannot come).
    let (lane_stats, read_error) = tokio::select! {
        s = &mut lanes => (s, None),
        e = &mut reader => {
            // Let the lanes see their channels close and count what they lost.
            (lanes.await, Some(e))
        }
    };
    let mut broke = read_error.is_some();
    for s in lane_stats {
        broke |= s.1;
        stats.merge(s.0);
    }
    if let Some(Some(e)) = read_error {
        stats.error(ErrorKind::of(&e), || e.report());
    }
    broke
}

/// Polls every lane to completion on this task.
async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    crate::bench::join_all(futures).await
}

/// Reads records and routes them to the lanes; returns when the connection ends (`None`) or
/// fails.
async fn read_loop(
    mut rd: ReadHalf<Stream>,
    routes: HashMap<u16, mpsc::UnboundedSender<ClientEvent>>,
) -> Option<ClientError> {
    let mut decoder = ClientConnection::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => {
                    let id = match &event {
                        ClientEvent::Stdout { id, .. }
                        | ClientEvent::StdoutEnd { id }
                        | ClientEvent::Stderr { id, .. }
                        | ClientEvent::End { id, .. } => *id,
                        ClientEvent::GetValuesResult(_) | ClientEvent::UnknownType(_) => continue,
                    };
                    let Some(route) = routes.get(&id) else {
                        return Some(ClientError::InvalidRequest(format!(
                            "the application sent a record for request {id}, which was never sent"
                        )));
                    };
                    let _ = route.send(event);
                }
                Ok(None) => break,
                Err(e) => return Some(ClientError::Protocol(e)),
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(ClientError::Io(e)),
        }
    }
}

/// One request id's loop: send, wait for the end, check, repeat. Returns its stats and
/// whether the connection failed under it.
async fn lane(
    ctx: &Ctx,
    phase: &Phase,
    id: u16,
    records: &Bytes,
    writer: &Mutex<WriteHalf<Stream>>,
    mut rx: mpsc::UnboundedReceiver<ClientEvent>,
) -> (Stats, bool) {
    let mut stats = Stats::new();
    let mut sample = BytesMut::new();
    loop {
        let ticket = phase.tickets.fetch_add(1, Ordering::Relaxed);
        let Some(due) = phase.due(ticket) else {
            return (stats, false);
        };
        if phase.interval_ns.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let check = ticket.is_multiple_of(SAMPLE_EVERY);
        sample.clear();
        let sent = async {
            let mut w = writer.lock().await;
            w.write_all(records).await?;
            w.flush().await
        };
        stats.bytes_out += records.len() as u64;
        let result = match within(ctx.limit, async { sent.await.map_err(ClientError::Io) }).await {
            Ok(()) => {
                let response = collect(id, &mut rx, check, &mut sample, &mut stats.bytes_in);
                within(ctx.limit, response).await
            }
            Err(e) => Err(e),
        };
        let latency = due.elapsed();
        let broke = result.is_err();
        let outcome = result
            .map_err(|e| (ErrorKind::of(&e), e.report()))
            .and_then(|end| crate::bench::check_end(ctx, end, check, &mut sample));
        if check && outcome.is_ok() {
            stats.bodies_checked += 1;
        }
        crate::bench::record(ctx, phase, &mut stats, latency, outcome);
        if broke {
            return (stats, true);
        }
    }
}

/// Waits for the end of request `id`, sampling its stdout when `check`.
async fn collect(
    id: u16,
    rx: &mut mpsc::UnboundedReceiver<ClientEvent>,
    check: bool,
    sample: &mut BytesMut,
    bytes_in: &mut u64,
) -> Result<End, ClientError> {
    let mut stdout_bytes = 0;
    loop {
        match rx.recv().await {
            Some(ClientEvent::Stdout { data, .. }) => {
                *bytes_in += data.len() as u64;
                stdout_bytes += data.len();
                crate::bench::keep(sample, &data, check);
            }
            Some(ClientEvent::Stderr { data, .. }) => *bytes_in += data.len() as u64,
            Some(ClientEvent::End {
                app_status, status, ..
            }) => {
                return Ok(End {
                    app_status,
                    protocol_status: status,
                });
            }
            Some(_) => {}
            None => return Err(ClientError::ClosedEarly { id, stdout_bytes }),
        }
    }
}
