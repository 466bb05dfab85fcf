//! The responder side of a connection: a web server's bytes in, [`Event`]s out.
//!
//! [`ServerConnection`] tracks which request ids are active and in which phase each is
//! (spec §3.3: BEGIN, then PARAMS until an empty PARAMS, then STDIN until an empty STDIN). It
//! answers management records itself (`FCGI_GET_VALUES`, unknown types) and refuses roles other
//! than Responder, queueing those answers as bytes for the caller to write
//! ([`ServerConnection::take_output`]).

use bytes::{Bytes, BytesMut};

use crate::ProtoError;
use crate::encode;
use crate::nv::Params;
use crate::record::{
    FLAG_KEEP_CONN, MANAGEMENT_ID, ProtocolStatus, Record, RecordType, Role, decode_record,
};

/// Configuration of a connection: the limits enforced and the values `FCGI_GET_VALUES`
/// reports.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most bytes of `FCGI_PARAMS` content one request may send (checked before buffering).
    pub max_params_bytes: usize,
    /// Most name-value pairs in one request's params.
    pub max_params_pairs: usize,
    /// Most requests active at once on one connection (`FCGI_MAX_REQS`). More are refused with
    /// `FCGI_OVERLOADED`.
    pub max_requests_per_conn: usize,
    /// Whether one connection may carry several requests at once (`FCGI_MPXS_CONNS`). When
    /// false, a second request is refused with `FCGI_CANT_MPX_CONN`.
    pub multiplex: bool,
    /// Reported as `FCGI_MAX_CONNS`.
    pub max_conns: usize,
    /// Whether to answer an unknown management record with `FCGI_UNKNOWN_TYPE` (spec §4.2).
    /// IIS fails a request on any record type it does not expect, so the IIS transport turns
    /// this off.
    pub answer_unknown_type: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params_bytes: 1 << 20,
            max_params_pairs: 1000,
            max_requests_per_conn: 128,
            multiplex: true,
            max_conns: 1024,
            answer_unknown_type: true,
        }
    }
}

/// What a web server asked for. Records of inactive requests are ignored (spec §3.3) and
/// produce no event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A Responder request began.
    Begin {
        /// Request id.
        id: u16,
        /// `FCGI_KEEP_CONN`: the web server keeps the connection after this request.
        keep_conn: bool,
    },
    /// All params of the request have arrived.
    Params {
        /// Request id.
        id: u16,
        /// The decoded pairs.
        params: Params,
    },
    /// A piece of the request body (never empty).
    Stdin {
        /// Request id.
        id: u16,
        /// Body bytes, a slice of the input buffer.
        data: Bytes,
    },
    /// The request body is complete.
    StdinEnd {
        /// Request id.
        id: u16,
    },
    /// The web server aborted the request (`FCGI_ABORT_REQUEST`); the application should end
    /// it with `FCGI_END_REQUEST` as soon as it can.
    Abort {
        /// Request id.
        id: u16,
    },
    /// The request's params broke a limit ([`Limits::max_params_bytes`] or
    /// [`Limits::max_params_pairs`]). The request is refused, not the connection: its further
    /// PARAMS/STDIN records are ignored; the caller answers it (431) and ends it.
    Refused {
        /// Request id.
        id: u16,
        /// The limit that tripped.
        reason: ProtoError,
    },
}

#[derive(Debug)]
enum Phase {
    Params(BytesMut),
    Stdin,
    StdinDone,
    /// Over a limit: the caller answers it; its input is dropped until it is finished.
    Refused,
}

impl Phase {
    fn describe(&self) -> &'static str {
        match self {
            Phase::Params(_) => "before FCGI_PARAMS ended",
            Phase::Stdin => "while reading FCGI_STDIN",
            Phase::StdinDone => "after FCGI_STDIN ended",
            Phase::Refused => "after it was refused",
        }
    }
}

/// The responder's state for one connection.
#[derive(Debug)]
pub struct ServerConnection {
    limits: Limits,
    /// Active requests. A handful at most in practice, so a vector beats a map.
    active: Vec<(u16, Phase)>,
    output: BytesMut,
}

impl ServerConnection {
    /// A connection with no active requests.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            active: Vec::new(),
            output: BytesMut::new(),
        }
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes records from the front of `buf` until one yields an event.
    ///
    /// `Ok(None)` means `buf` holds no further whole record; read more bytes and call again.
    /// Afterwards, check [`Self::take_output`] for answers to management records.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtoError> {
        while let Some(record) = decode_record(buf)? {
            if let Some(event) = self.on_record(record)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Bytes the connection wants written (management answers, refusals); empty when none.
    pub fn take_output(&mut self) -> BytesMut {
        self.output.split()
    }

    /// True when [`Self::take_output`] would return bytes.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Marks request `id` finished (its `FCGI_END_REQUEST` is being written), so the id can be
    /// reused. Unknown ids are ignored.
    pub fn finish(&mut self, id: u16) {
        self.active.retain(|(a, _)| *a != id);
    }

    /// True while `id` is active.
    pub fn is_active(&self, id: u16) -> bool {
        self.active.iter().any(|(a, _)| *a == id)
    }

    /// Number of active requests.
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// True between requests: none is active (begun and not yet [finished](Self::finish))
    /// and no answer waits in [`Self::take_output`]. What the caller's buffer still holds
    /// after [`Self::decode`] returned `Ok(None)` is then less than one record that belongs
    /// to no request yet, so the connection can be carried on by another
    /// `ServerConnection`, given those bytes first (a retiring worker hands kept connections
    /// over at such a point).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use pyfcgi_proto::{Role, encode};
    /// use pyfcgi_proto::server::{Limits, ServerConnection};
    ///
    /// let mut conn = ServerConnection::new(Limits::default());
    /// let mut buf = BytesMut::new();
    /// encode::begin_request(&mut buf, 1, Role::Responder, true);
    /// buf.truncate(5); // half a record
    /// assert_eq!(conn.decode(&mut buf).unwrap(), None);
    /// assert!(conn.at_request_boundary());
    /// ```
    pub fn at_request_boundary(&self) -> bool {
        self.active.is_empty() && self.output.is_empty()
    }

    fn phase_mut(&mut self, id: u16) -> Option<&mut Phase> {
        self.active
            .iter_mut()
            .find(|(a, _)| *a == id)
            .map(|(_, p)| p)
    }

    fn on_record(&mut self, record: Record) -> Result<Option<Event>, ProtoError> {
        let id = record.header.request_id;
        let kind = record.header.kind;
        if id == MANAGEMENT_ID {
            self.on_management(kind, &record.content)?;
            return Ok(None);
        }
        if kind == RecordType::BeginRequest {
            return self.on_begin(id, &record.content);
        }
        let max_params_bytes = self.limits.max_params_bytes;
        let max_pairs = self.limits.max_params_pairs;
        let Some(phase) = self.phase_mut(id) else {
            // Spec §3.3: records for an inactive request id are ignored.
            return Ok(None);
        };
        let content = record.content;
        match (kind, &mut *phase) {
            (RecordType::Params, Phase::Params(buf)) => {
                if content.is_empty() {
                    let data = std::mem::take(buf).freeze();
                    return match Params::decode(data, max_pairs, id) {
                        Ok(params) => {
                            *phase = Phase::Stdin;
                            Ok(Some(Event::Params { id, params }))
                        }
                        Err(reason @ ProtoError::TooManyParams { .. }) => {
                            *phase = Phase::Refused;
                            Ok(Some(Event::Refused { id, reason }))
                        }
                        Err(e) => Err(e),
                    };
                }
                if buf.len() + content.len() > max_params_bytes {
                    *phase = Phase::Refused;
                    let reason = ProtoError::ParamsTooLarge {
                        id,
                        limit: max_params_bytes,
                    };
                    return Ok(Some(Event::Refused { id, reason }));
                }
                buf.extend_from_slice(&content);
                Ok(None)
            }
            // A refused request's remaining input (and its abort) is dropped.
            (RecordType::Params | RecordType::Stdin | RecordType::AbortRequest, Phase::Refused) => {
                Ok(None)
            }
            (RecordType::Stdin, Phase::Stdin) => {
                if content.is_empty() {
                    *phase = Phase::StdinDone;
                    Ok(Some(Event::StdinEnd { id }))
                } else {
                    Ok(Some(Event::Stdin { id, data: content }))
                }
            }
            (RecordType::AbortRequest, _) => Ok(Some(Event::Abort { id })),
            // FCGI_DATA belongs to the Filter role, which is refused at BEGIN; a web server
            // that sends it anyway gets it ignored rather than a dropped connection.
            (RecordType::Data, _) => Ok(None),
            (RecordType::Params | RecordType::Stdin, phase) => Err(ProtoError::UnexpectedRecord {
                id,
                record: kind.name(),
                state: phase.describe(),
            }),
            (RecordType::Other(b), _) => Err(ProtoError::UnknownRequestRecordType { id, kind: b }),
            (other, phase) => Err(ProtoError::UnexpectedRecord {
                id,
                record: other.name(),
                state: phase.describe(),
            }),
        }
    }

    fn on_begin(&mut self, id: u16, content: &[u8]) -> Result<Option<Event>, ProtoError> {
        if content.len() != 8 {
            return Err(ProtoError::BadContentLength {
                record: RecordType::BeginRequest.name(),
                len: content.len(),
                expected: 8,
            });
        }
        if self.is_active(id) {
            return Err(ProtoError::DuplicateRequestId(id));
        }
        let role = Role::from_u16(u16::from_be_bytes([content[0], content[1]]));
        let keep_conn = content[2] & FLAG_KEEP_CONN != 0;
        let refusal = if role != Role::Responder {
            Some(ProtocolStatus::UnknownRole)
        } else if !self.limits.multiplex && !self.active.is_empty() {
            Some(ProtocolStatus::CantMpxConn)
        } else if self.active.len() >= self.limits.max_requests_per_conn {
            Some(ProtocolStatus::Overloaded)
        } else {
            None
        };
        if let Some(status) = refusal {
            encode::end_request(&mut self.output, id, 0, status);
            return Ok(None);
        }
        self.active.push((id, Phase::Params(BytesMut::new())));
        Ok(Some(Event::Begin { id, keep_conn }))
    }

    fn on_management(&mut self, kind: RecordType, content: &Bytes) -> Result<(), ProtoError> {
        if kind != RecordType::GetValues {
            if self.limits.answer_unknown_type {
                encode::unknown_type(&mut self.output, kind.as_u8());
            }
            return Ok(());
        }
        let query = Params::decode(content.clone(), 64, MANAGEMENT_ID)?;
        let max_conns = self.limits.max_conns.to_string();
        let max_reqs = if self.limits.multiplex {
            self.limits
                .max_requests_per_conn
                .saturating_mul(self.limits.max_conns)
        } else {
            self.limits.max_conns
        }
        .to_string();
        let mpxs = if self.limits.multiplex { "1" } else { "0" };
        let mut answer: Vec<(&[u8], &[u8])> = Vec::new();
        for (name, _) in query.iter() {
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" => max_conns.as_bytes(),
                b"FCGI_MAX_REQS" => max_reqs.as_bytes(),
                b"FCGI_MPXS_CONNS" => mpxs.as_bytes(),
                // Spec §4.1: names the application does not know are left out of the answer.
                _ => continue,
            };
            answer.push((name, value));
        }
        encode::get_values_result(&mut self.output, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientConnection, ClientEvent};

    fn request(id: u16, keep: bool, pairs: &[(&str, &str)], body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode::begin_request(&mut out, id, Role::Responder, keep);
        encode::params(&mut out, id, pairs).unwrap();
        encode::params_end(&mut out, id);
        encode::stdin(&mut out, id, body);
        encode::stdin_end(&mut out, id);
        out
    }

    fn all_events(
        conn: &mut ServerConnection,
        buf: &mut BytesMut,
    ) -> Result<Vec<Event>, ProtoError> {
        let mut v = Vec::new();
        while let Some(e) = conn.decode(buf)? {
            v.push(e);
        }
        Ok(v)
    }

    /// Events with adjacent stdin chunks merged, so differently split inputs compare equal.
    fn normalized(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            if let (Some(Event::Stdin { id: a, data: prev }), Event::Stdin { id: b, data }) =
                (out.last_mut(), &e)
                && a == b
            {
                let mut joined = prev.to_vec();
                joined.extend_from_slice(data);
                *prev = Bytes::from(joined);
                continue;
            }
            out.push(e);
        }
        out
    }

    #[test]
    fn simple_request_yields_begin_params_stdin_end() {
        let mut buf = request(1, false, &[("A", "b")], b"body");
        let mut conn = ServerConnection::new(Limits::default());
        let ev = all_events(&mut conn, &mut buf).unwrap();
        assert_eq!(ev.len(), 4);
        assert_eq!(
            ev[0],
            Event::Begin {
                id: 1,
                keep_conn: false
            }
        );
        assert!(
            matches!(&ev[1], Event::Params { id: 1, params } if params.get_str("A") == Some("b"))
        );
        assert_eq!(
            ev[2],
            Event::Stdin {
                id: 1,
                data: Bytes::from_static(b"body")
            }
        );
        assert_eq!(ev[3], Event::StdinEnd { id: 1 });
        assert!(!conn.has_output());
    }

    #[test]
    fn params_pair_straddling_two_records_is_decoded() {
        let mut pairs = BytesMut::new();
        crate::nv::encode_pair(&mut pairs, b"SCRIPT_NAME", b"/index.py").unwrap();
        let (a, b) = pairs.split_at(5);
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 3, Role::Responder, true);
        encode::stream(&mut buf, RecordType::Params, 3, a, false);
        encode::stream(&mut buf, RecordType::Params, 3, b, true);
        encode::params_end(&mut buf, 3);
        let mut conn = ServerConnection::new(Limits::default());
        let ev = all_events(&mut conn, &mut buf).unwrap();
        assert!(
            matches!(&ev[1], Event::Params { params, .. } if params.get_str("SCRIPT_NAME") == Some("/index.py"))
        );
    }

    #[test]
    fn every_split_of_the_input_yields_identical_events() {
        let mut wire = request(
            1,
            true,
            &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "11")],
            b"hello world",
        );
        wire.extend_from_slice(&request(2, true, &[("X", &"y".repeat(300))], b""));
        let expected = normalized(
            all_events(
                &mut ServerConnection::new(Limits::default()),
                &mut wire.clone(),
            )
            .unwrap(),
        );
        for split in 0..=wire.len() {
            let mut conn = ServerConnection::new(Limits::default());
            let mut buf = BytesMut::from(&wire[..split]);
            let mut ev = all_events(&mut conn, &mut buf).unwrap();
            buf.extend_from_slice(&wire[split..]);
            ev.extend(all_events(&mut conn, &mut buf).unwrap());
            assert_eq!(normalized(ev), expected, "split at {split}");
        }
        // One byte at a time.
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut ev = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            ev.extend(all_events(&mut conn, &mut buf).unwrap());
        }
        assert_eq!(normalized(ev), expected);
    }

    #[test]
    fn get_values_is_answered_with_configured_values() {
        let mut buf = BytesMut::new();
        encode::get_values(
            &mut buf,
            &["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "NOPE"],
        )
        .unwrap();
        let limits = Limits {
            max_conns: 10,
            max_requests_per_conn: 3,
            ..Limits::default()
        };
        let mut conn = ServerConnection::new(limits);
        assert!(all_events(&mut conn, &mut buf).unwrap().is_empty());
        let mut out = conn.take_output();
        let mut client = ClientConnection::new();
        let Some(ClientEvent::GetValuesResult(values)) = client.decode(&mut out).unwrap() else {
            panic!()
        };
        assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("10"));
        assert_eq!(values.get_str("FCGI_MAX_REQS"), Some("30"));
        assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("1"));
        assert_eq!(values.get(b"NOPE"), None);
    }

    #[test]
    fn unknown_management_type_is_answered_unless_disabled() {
        let mut buf = BytesMut::from(&[1u8, 42, 0, 0, 0, 0, 0, 0][..]);
        let mut conn = ServerConnection::new(Limits::default());
        assert!(all_events(&mut conn, &mut buf.clone()).unwrap().is_empty());
        let out = conn.take_output();
        assert_eq!(
            &out[..],
            &[1, 11, 0, 0, 0, 8, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut quiet = ServerConnection::new(Limits {
            answer_unknown_type: false,
            ..Limits::default()
        });
        assert!(all_events(&mut quiet, &mut buf).unwrap().is_empty());
        assert!(!quiet.has_output());
    }

    #[test]
    fn non_responder_role_is_refused_with_unknown_role() {
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 5, Role::Authorizer, false);
        encode::params_end(&mut buf, 5);
        let mut conn = ServerConnection::new(Limits::default());
        assert!(
            all_events(&mut conn, &mut buf).unwrap().is_empty(),
            "later records of the refused id are ignored"
        );
        let mut out = conn.take_output();
        let ev = ClientConnection::new().decode(&mut out).unwrap();
        assert_eq!(
            ev,
            Some(ClientEvent::End {
                id: 5,
                app_status: 0,
                status: ProtocolStatus::UnknownRole
            })
        );
    }

    #[test]
    fn begin_for_active_id_is_a_protocol_error() {
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        let mut conn = ServerConnection::new(Limits::default());
        assert_eq!(
            all_events(&mut conn, &mut buf),
            Err(ProtoError::DuplicateRequestId(1))
        );
    }

    #[test]
    fn finished_id_can_be_reused() {
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = request(1, true, &[], b"");
        all_events(&mut conn, &mut buf).unwrap();
        conn.finish(1);
        let mut buf = request(1, true, &[], b"");
        assert_eq!(all_events(&mut conn, &mut buf).unwrap().len(), 3);
    }

    #[test]
    fn second_request_without_multiplexing_gets_cant_mpx_conn() {
        let mut conn = ServerConnection::new(Limits {
            multiplex: false,
            ..Limits::default()
        });
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        encode::begin_request(&mut buf, 2, Role::Responder, true);
        assert_eq!(all_events(&mut conn, &mut buf).unwrap().len(), 1);
        let mut out = conn.take_output();
        assert_eq!(
            ClientConnection::new().decode(&mut out).unwrap(),
            Some(ClientEvent::End {
                id: 2,
                app_status: 0,
                status: ProtocolStatus::CantMpxConn
            })
        );
    }

    #[test]
    fn requests_over_the_limit_get_overloaded() {
        let mut conn = ServerConnection::new(Limits {
            max_requests_per_conn: 2,
            ..Limits::default()
        });
        let mut buf = BytesMut::new();
        for id in 1..=3 {
            encode::begin_request(&mut buf, id, Role::Responder, true);
        }
        assert_eq!(all_events(&mut conn, &mut buf).unwrap().len(), 2);
        let mut out = conn.take_output();
        assert!(matches!(
            ClientConnection::new().decode(&mut out).unwrap(),
            Some(ClientEvent::End {
                id: 3,
                status: ProtocolStatus::Overloaded,
                ..
            })
        ));
    }

    #[test]
    fn params_over_the_limit_refuse_the_request_not_the_connection() {
        let mut conn = ServerConnection::new(Limits {
            max_params_bytes: 100,
            max_params_pairs: 3,
            ..Limits::default()
        });
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        encode::params(&mut buf, 1, &[("N", "v".repeat(200))]).unwrap();
        // The rest of the refused request is dropped without an error.
        encode::params(&mut buf, 1, &[("M", "w")]).unwrap();
        encode::params_end(&mut buf, 1);
        encode::stdin(&mut buf, 1, b"body");
        encode::stdin_end(&mut buf, 1);
        // Too many pairs on another request.
        encode::begin_request(&mut buf, 2, Role::Responder, true);
        encode::params(
            &mut buf,
            2,
            &[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")],
        )
        .unwrap();
        encode::params_end(&mut buf, 2);
        let events = all_events(&mut conn, &mut buf).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Begin {
                    id: 1,
                    keep_conn: true
                },
                Event::Refused {
                    id: 1,
                    reason: ProtoError::ParamsTooLarge { id: 1, limit: 100 }
                },
                Event::Begin {
                    id: 2,
                    keep_conn: true
                },
                Event::Refused {
                    id: 2,
                    reason: ProtoError::TooManyParams { id: 2, limit: 3 }
                },
            ]
        );
        // Once finished, the id takes a new request.
        conn.finish(1);
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        encode::params(&mut buf, 1, &[("A", "1")]).unwrap();
        encode::params_end(&mut buf, 1);
        let events = all_events(&mut conn, &mut buf).unwrap();
        assert!(
            matches!(events[1], Event::Params { id: 1, .. }),
            "{events:?}"
        );
    }

    #[test]
    fn stdin_before_params_end_is_an_error() {
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 1, Role::Responder, true);
        encode::stdin(&mut buf, 1, b"x");
        assert!(matches!(
            all_events(&mut conn, &mut buf),
            Err(ProtoError::UnexpectedRecord { .. })
        ));
    }

    #[test]
    fn records_for_inactive_ids_are_ignored() {
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = BytesMut::new();
        encode::stdin(&mut buf, 9, b"stray");
        encode::params_end(&mut buf, 9);
        assert!(all_events(&mut conn, &mut buf).unwrap().is_empty());
    }

    #[test]
    fn abort_is_reported() {
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = BytesMut::new();
        encode::begin_request(&mut buf, 4, Role::Responder, true);
        encode::abort_request(&mut buf, 4);
        let ev = all_events(&mut conn, &mut buf).unwrap();
        assert_eq!(ev[1], Event::Abort { id: 4 });
    }

    #[test]
    fn request_boundaries_are_between_requests_only() {
        let mut conn = ServerConnection::new(Limits::default());
        assert!(conn.at_request_boundary(), "a new connection");
        let wire = request(1, true, &[("A", "b")], b"body");
        // At every split of one request, the boundary is only before BEGIN is whole.
        let begin_len = 16;
        for split in 0..wire.len() {
            let mut conn = ServerConnection::new(Limits::default());
            let mut buf = BytesMut::from(&wire[..split]);
            all_events(&mut conn, &mut buf).unwrap();
            assert_eq!(
                conn.at_request_boundary(),
                split < begin_len,
                "split at {split}"
            );
            if conn.at_request_boundary() {
                // The leftover is what another connection state starts from.
                assert_eq!(&buf[..], &wire[..split]);
            }
        }
        // Finished: a boundary again, with the next request's first bytes left over.
        let mut buf = wire.clone();
        buf.extend_from_slice(&request(1, true, &[], b"")[..3]);
        all_events(&mut conn, &mut buf).unwrap();
        assert!(!conn.at_request_boundary(), "the request is still active");
        conn.finish(1);
        assert!(conn.at_request_boundary());
        assert_eq!(buf.len(), 3);
        // A management answer not yet taken is not a boundary.
        let mut buf = BytesMut::new();
        encode::get_values(&mut buf, &["FCGI_MPXS_CONNS"]).unwrap();
        all_events(&mut conn, &mut buf).unwrap();
        assert!(!conn.at_request_boundary());
        conn.take_output();
        assert!(conn.at_request_boundary());
    }

    #[test]
    fn short_begin_is_an_error() {
        let mut conn = ServerConnection::new(Limits::default());
        let mut buf = BytesMut::from(&[1u8, 1, 0, 1, 0, 2, 0, 0, 0, 1][..]);
        assert!(matches!(
            all_events(&mut conn, &mut buf),
            Err(ProtoError::BadContentLength { .. })
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_chunking_yields_identical_events(
                body in proptest::collection::vec(any::<u8>(), 0..70_000),
                value in "[a-z]{0,300}",
                cuts in proptest::collection::vec(1usize..5000, 1..40),
            ) {
                let mut wire = request(7, true, &[("V", value.as_str()), ("CONTENT_LENGTH", "x")], &body);
                let expected = normalized(all_events(&mut ServerConnection::new(Limits::default()), &mut wire.clone()).unwrap());
                let mut conn = ServerConnection::new(Limits::default());
                let mut buf = BytesMut::new();
                let mut events = Vec::new();
                let mut cuts = cuts.into_iter().cycle();
                while !wire.is_empty() {
                    let n = cuts.next().unwrap_or(1).min(wire.len());
                    buf.extend_from_slice(&wire.split_to(n));
                    events.extend(all_events(&mut conn, &mut buf).unwrap());
                }
                prop_assert_eq!(normalized(events), expected);
            }

            #[test]
            fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
                let mut conn = ServerConnection::new(Limits::default());
                let mut buf = BytesMut::from(&data[..]);
                let _ = all_events(&mut conn, &mut buf);
            }
        }
    }
}
