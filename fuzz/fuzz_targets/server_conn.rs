//! `ServerConnection` on arbitrary bytes, fed in arbitrary chunks, with `finish()` called at
//! input-chosen points. Must never panic, and checks invariants against a small model.
//!
//! Input layout (see fuzz/seeds.py, which writes seeds in this form):
//!   byte 0      bits 0-4: n, the number of control bytes that follow (0..=31)
//!               bit 5: multiplexing off; bit 6: FCGI_UNKNOWN_TYPE answers off;
//!               bit 7: max_params_pairs 8 instead of 64
//!   bytes 1..=n control bytes, cycled: one cursor picks chunk sizes, another picks which ids
//!               to finish after Begin / StdinEnd / Abort events
//!   the rest    the FastCGI byte stream a web server sends
//! With n = 0 the stream is fed in one piece and finish() is never called.
//! `PYFCGI_FUZZ_TRACE=1 cargo fuzz run server_conn FILE` prints what one input did.
//!
//! Records are framed whole before they become events, so the chunking must not change what
//! happens: a chunked run is compared with a one-piece run (same finish schedule).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pyfcgi_proto::client::{ClientConnection, ClientEvent};
use pyfcgi_proto::server::{Event, Limits, ServerConnection};
use pyfcgi_proto::{ProtoError, ProtocolStatus};

const MAX_REQS: usize = 4;
const MAX_PARAMS_BYTES: usize = 4096;
const MAX_CONTENT_LEN: usize = 65535;

/// Cycles over the control bytes; yields nothing when there are none.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], start: usize) -> Self {
        Self { bytes, pos: start }
    }

    fn next(&mut self) -> Option<u8> {
        if self.bytes.is_empty() {
            return None;
        }
        let b = self.bytes[self.pos % self.bytes.len()];
        self.pos += 1;
        Some(b)
    }
}

/// 1..=128 bytes for small control bytes, multiples of 97 up to 12 KiB for large ones.
fn chunk_len(b: u8) -> usize {
    if b < 0x80 {
        usize::from(b) + 1
    } else {
        (usize::from(b & 0x7f) + 1) * 97
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Params,
    Stdin,
    StdinDone,
    /// Refused over a params limit: no further events until finished.
    Refused,
}

#[derive(Debug, Default)]
struct Outcome {
    events: Vec<Event>,
    error: Option<ProtoError>,
    output: Vec<u8>,
}

struct Harness<'a> {
    limits: Limits,
    conn: ServerConnection,
    /// The ids the connection must consider active, with the phase each must be in.
    model: Vec<(u16, Phase)>,
    finishes: Cursor<'a>,
    client: ClientConnection,
    client_buf: BytesMut,
    out: Outcome,
}

impl Harness<'_> {
    fn phase_of(&mut self, id: u16, what: &str) -> &mut Phase {
        match self.model.iter_mut().find(|(a, _)| *a == id) {
            Some((_, p)) => p,
            None => panic!("{what} event for request {id}, which is not active"),
        }
    }

    fn finish(&mut self, id: u16) {
        self.conn.finish(id);
        self.model.retain(|(a, _)| *a != id);
        assert!(
            !self.conn.is_active(id),
            "request {id} still active after finish()"
        );
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Begin { id, .. } => {
                let id = *id;
                assert_ne!(id, 0, "Begin event for the management id");
                assert!(
                    !self.model.iter().any(|(a, _)| *a == id),
                    "Begin event for request {id}, which was already active"
                );
                self.model.push((id, Phase::Params));
                assert!(
                    self.model.len() <= MAX_REQS,
                    "Begin accepted beyond max_requests_per_conn"
                );
                if !self.limits.multiplex {
                    assert_eq!(
                        self.model.len(),
                        1,
                        "second request accepted without multiplexing"
                    );
                }
                if let Some(b) = self.finishes.next() {
                    if b & 1 != 0 {
                        self.finish(id);
                    }
                    if b & 2 != 0 {
                        if let Some(&(oldest, _)) = self.model.first() {
                            self.finish(oldest);
                        }
                    }
                    if b & 4 != 0 {
                        // Often an id that is not active: must be ignored.
                        self.finish(u16::from(b >> 3));
                    }
                }
            }
            Event::Params { id, params } => {
                let phase = self.phase_of(*id, "Params");
                assert_eq!(
                    *phase,
                    Phase::Params,
                    "second Params event for request {id}"
                );
                *phase = Phase::Stdin;
                assert!(
                    params.raw().len() <= MAX_PARAMS_BYTES,
                    "params over max_params_bytes"
                );
                assert!(
                    params.len() <= self.limits.max_params_pairs,
                    "params over max_params_pairs"
                );
                assert_eq!(params.iter().len(), params.len());
            }
            Event::Stdin { id, data } => {
                assert!(!data.is_empty(), "empty Stdin event for request {id}");
                assert!(data.len() <= MAX_CONTENT_LEN);
                let phase = self.phase_of(*id, "Stdin");
                assert_eq!(
                    *phase,
                    Phase::Stdin,
                    "Stdin event for request {id} in phase {phase:?}"
                );
            }
            Event::StdinEnd { id } => {
                let phase = self.phase_of(*id, "StdinEnd");
                assert_eq!(
                    *phase,
                    Phase::Stdin,
                    "StdinEnd for request {id} in phase {phase:?}"
                );
                *phase = Phase::StdinDone;
                self.maybe_finish_after_end(*id);
            }
            Event::Abort { id } => {
                let phase = self.phase_of(*id, "Abort");
                assert_ne!(
                    *phase,
                    Phase::Refused,
                    "Abort event for refused request {id}"
                );
                self.maybe_finish_after_end(*id);
            }
            Event::Refused { id, reason } => {
                let limits = self.limits.clone();
                let phase = self.phase_of(*id, "Refused");
                assert_eq!(
                    *phase,
                    Phase::Params,
                    "Refused event for request {id} in phase {phase:?}"
                );
                *phase = Phase::Refused;
                match reason {
                    ProtoError::ParamsTooLarge { id: rid, limit } => {
                        assert_eq!((*rid, *limit), (*id, MAX_PARAMS_BYTES));
                    }
                    ProtoError::TooManyParams { id: rid, limit } => {
                        assert_eq!((*rid, *limit), (*id, limits.max_params_pairs));
                    }
                    other => panic!("request {id} refused for {other}, which is not a limit"),
                }
                self.maybe_finish_after_end(*id);
            }
        }
    }

    fn maybe_finish_after_end(&mut self, id: u16) {
        if self.finishes.next().is_some_and(|b| b & 1 != 0) {
            self.finish(id);
        }
    }

    /// Takes the connection's output and checks that a web server can decode it.
    fn drain_output(&mut self) {
        let bytes = self.conn.take_output();
        assert!(
            !self.conn.has_output(),
            "has_output() true right after take_output()"
        );
        self.out.output.extend_from_slice(&bytes);
        self.client_buf.extend_from_slice(&bytes);
        loop {
            match self.client.decode(&mut self.client_buf) {
                Ok(None) => break,
                Err(e) => panic!("server output does not decode as a response: {e}"),
                Ok(Some(ev)) => self.check_answer(&ev),
            }
        }
    }

    fn check_answer(&self, ev: &ClientEvent) {
        match ev {
            ClientEvent::End {
                id,
                app_status,
                status,
            } => {
                assert_ne!(*id, 0, "END_REQUEST for the management id");
                assert_eq!(*app_status, 0);
                match status {
                    ProtocolStatus::UnknownRole | ProtocolStatus::Overloaded => {}
                    ProtocolStatus::CantMpxConn => assert!(!self.limits.multiplex),
                    other => panic!("unexpected refusal status {other:?}"),
                }
            }
            ClientEvent::GetValuesResult(values) => {
                for (name, value) in values.iter() {
                    assert!(
                        matches!(
                            name,
                            b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" | b"FCGI_MPXS_CONNS"
                        ),
                        "GET_VALUES_RESULT names unknown variable {:?}",
                        String::from_utf8_lossy(name)
                    );
                    assert!(!value.is_empty() && value.iter().all(u8::is_ascii_digit));
                }
            }
            ClientEvent::UnknownType(kind) => {
                assert!(
                    self.limits.answer_unknown_type,
                    "UNKNOWN_TYPE sent although disabled"
                );
                assert_ne!(*kind, 9, "GET_VALUES answered as an unknown type");
            }
            other => panic!("server wrote a record the web server cannot accept: {other:?}"),
        }
    }

    fn check_model(&self) {
        assert_eq!(
            self.conn.active_count(),
            self.model.len(),
            "active_count() vs model"
        );
        assert!(
            self.conn.active_count() <= MAX_REQS,
            "active_count() over the limit"
        );
        for (id, _) in &self.model {
            assert!(self.conn.is_active(*id), "request {id} should be active");
        }
    }
}

fn run(stream: &[u8], ctl: &[u8], limits: &Limits, chunked: bool) -> Outcome {
    let mut h = Harness {
        limits: limits.clone(),
        conn: ServerConnection::new(limits.clone()),
        model: Vec::new(),
        finishes: Cursor::new(ctl, ctl.len() / 2),
        client: ClientConnection::new(),
        client_buf: BytesMut::new(),
        out: Outcome::default(),
    };
    let mut chunks = Cursor::new(ctl, 0);
    let mut buf = BytesMut::new();
    let mut rest = stream;
    'feed: while !rest.is_empty() {
        let n = match chunks.next() {
            Some(b) if chunked => chunk_len(b),
            _ => rest.len(),
        }
        .min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let result = h.conn.decode(&mut buf);
            h.drain_output();
            match result {
                Err(e) => {
                    let _ = e.to_string();
                    h.out.error = Some(e);
                    break 'feed;
                }
                Ok(None) => break,
                Ok(Some(event)) => {
                    h.on_event(&event);
                    h.out.events.push(event);
                }
            }
            h.check_model();
        }
        h.check_model();
    }
    assert!(
        h.client_buf.is_empty(),
        "server output ends with a partial record ({} bytes)",
        h.client_buf.len()
    );
    h.out
}

/// `PYFCGI_FUZZ_TRACE=1` prints each run's outcome (for reproducing and checking seeds).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PYFCGI_FUZZ_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, tail)) = data.split_first() else {
        return;
    };
    let n = usize::from(head & 0x1f).min(tail.len());
    let (ctl, stream) = tail.split_at(n);
    let limits = Limits {
        max_params_bytes: MAX_PARAMS_BYTES,
        max_params_pairs: if head & 0x80 != 0 { 8 } else { 64 },
        max_requests_per_conn: MAX_REQS,
        multiplex: head & 0x20 == 0,
        max_conns: 16,
        answer_unknown_type: head & 0x40 == 0,
    };
    let chunked = run(stream, ctl, &limits, true);
    if trace() {
        eprintln!(
            "ctl={ctl:02x?} limits={limits:?}\nevents={:#?}\nerror={:?}\noutput={:02x?}",
            chunked.events, chunked.error, chunked.output
        );
    }
    if !ctl.is_empty() {
        let whole = run(stream, ctl, &limits, false);
        assert_eq!(chunked.events, whole.events, "chunking changed the events");
        assert_eq!(chunked.error, whole.error, "chunking changed the error");
        assert_eq!(chunked.output, whole.output, "chunking changed the output");
    }
});
