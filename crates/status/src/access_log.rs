//! `--access-log`: one line per request in `--access-log-format` (a line of placeholders, or
//! the `common`, `combined` and `json` presets), and several observers as one.

use std::fmt::Write as _;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use pyfcgi_proto::Params;
use pyfcgi_server::observe::{Finished, Observer};

use crate::StatusError;

/// `--access-log`: one line per request, in `--access-log-format`.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
    format: AccessFormat,
    /// The supervisor's id for this worker (`--workers`), for `{worker}` and JSON's `worker`.
    worker: Option<u64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The default `--access-log-format` (with the text error log).
pub const DEFAULT_ACCESS_FORMAT: &str =
    r#"{time} {remote} "{method} {uri}" {status} {bytes} {duration_ms}ms id={request_id}"#;

/// The `common` preset: Apache's and nginx's Common Log Format.
pub const COMMON_FORMAT: &str =
    r#"{remote} - {remote_user} [{time_local}] "{method} {uri} {protocol}" {status} {body_bytes}"#;

/// The `combined` preset: Apache's and nginx's `combined`, the Common Log Format with the
/// referer and the user agent.
pub const COMBINED_FORMAT: &str = r#"{remote} - {remote_user} [{time_local}] "{method} {uri} {protocol}" {status} {body_bytes} "{referer}" "{user_agent}""#;

/// The placeholders `--access-log-format` knows, besides `{header:NAME}`.
pub const ACCESS_FIELDS: &[&str] = &[
    "time",
    "time_local",
    "remote",
    "remote_user",
    "method",
    "uri",
    "protocol",
    "host",
    "status",
    "bytes",
    "body_bytes",
    "duration_ms",
    "duration_us",
    "request_id",
    "pid",
    "worker",
    "referer",
    "user_agent",
];

/// One placeholder of a format line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    TimeLocal,
    Remote,
    RemoteUser,
    Method,
    Uri,
    Protocol,
    Host,
    Status,
    Bytes,
    BodyBytes,
    DurationMs,
    DurationUs,
    RequestId,
    Pid,
    Worker,
    Referer,
    UserAgent,
}

impl Field {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "time" => Self::Time,
            "time_local" => Self::TimeLocal,
            "remote" => Self::Remote,
            "remote_user" => Self::RemoteUser,
            "method" => Self::Method,
            "uri" => Self::Uri,
            "protocol" => Self::Protocol,
            "host" => Self::Host,
            "status" => Self::Status,
            "bytes" => Self::Bytes,
            "body_bytes" => Self::BodyBytes,
            "duration_ms" => Self::DurationMs,
            "duration_us" => Self::DurationUs,
            "request_id" => Self::RequestId,
            "pid" => Self::Pid,
            "worker" => Self::Worker,
            "referer" => Self::Referer,
            "user_agent" => Self::UserAgent,
            _ => return None,
        })
    }

    /// The CGI variable the field reads (then the request's params are kept for it).
    fn param(self) -> Option<&'static str> {
        match self {
            Self::RemoteUser => Some("REMOTE_USER"),
            Self::Protocol => Some("SERVER_PROTOCOL"),
            Self::Host => Some("HTTP_HOST"),
            Self::Referer => Some("HTTP_REFERER"),
            Self::UserAgent => Some("HTTP_USER_AGENT"),
            _ => None,
        }
    }
}

/// A piece of a format line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
    /// `{header:NAME}`: the CGI variable that carries the header (`HTTP_X_FOO`).
    Header(String),
}

/// `--access-log-format`, parsed (and so checked) once, whether or not `--access-log` is set.
///
/// ```
/// use pyfcgi_status::AccessFormat;
///
/// assert_eq!("combined".parse::<AccessFormat>(), Ok(AccessFormat::combined()));
/// assert!("{status} {header:X-Request-Start}".parse::<AccessFormat>().is_ok());
/// let err = "{status} {nope}".parse::<AccessFormat>().unwrap_err();
/// assert!(err.to_string().contains("{nope} is not one"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFormat(Format);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    /// A text line of placeholders (the `common` and `combined` presets are such lines).
    Line(Vec<Piece>),
    /// One JSON object per line.
    Json,
}

/// An `--access-log-format` that cannot be used; reads as what was expected (the settings
/// put the source and the value in front).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "common, combined, json, or a line of placeholders: {{{}}} or {{header:NAME}}; {placeholder} is not one",
    ACCESS_FIELDS.join("}, {")
)]
pub struct AccessFormatError {
    /// The placeholder as written, with its braces.
    pub placeholder: String,
}

impl Default for AccessFormat {
    fn default() -> Self {
        Self::parse_line(DEFAULT_ACCESS_FORMAT).unwrap_or_else(|_| Self::json())
    }
}

impl AccessFormat {
    /// The `common` preset ([`COMMON_FORMAT`]).
    pub fn common() -> Self {
        Self::parse_line(COMMON_FORMAT).unwrap_or_default()
    }

    /// The `combined` preset ([`COMBINED_FORMAT`]).
    pub fn combined() -> Self {
        Self::parse_line(COMBINED_FORMAT).unwrap_or_default()
    }

    /// The `json` preset: one JSON object per line.
    pub fn json() -> Self {
        Self(Format::Json)
    }

    /// True for the `json` preset.
    pub fn is_json(&self) -> bool {
        self.0 == Format::Json
    }

    fn parse_line(format: &str) -> Result<Self, AccessFormatError> {
        let mut pieces = Vec::new();
        let mut rest = format;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            // A `{` without a `}` after it is text.
            let Some(close) = after.find('}') else { break };
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let name = &after[..close];
            let bad = || AccessFormatError {
                placeholder: format!("{{{name}}}"),
            };
            let piece = match name.split_once(':') {
                Some((kind, header)) if kind.eq_ignore_ascii_case("header") => {
                    Piece::Header(header_variable(header).ok_or_else(bad)?)
                }
                _ => Piece::Field(Field::from_name(name).ok_or_else(bad)?),
            };
            pieces.push(piece);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self(Format::Line(pieces)))
    }

    /// True when a line needs the request's params beyond what [`Finished`] carries.
    fn needs_params(&self) -> bool {
        match &self.0 {
            Format::Json => true,
            Format::Line(pieces) => pieces.iter().any(|p| match p {
                Piece::Header(_) => true,
                Piece::Field(f) => f.param().is_some(),
                Piece::Text(_) => false,
            }),
        }
    }

    fn needs_local_time(&self) -> bool {
        matches!(&self.0, Format::Line(p) if p.contains(&Piece::Field(Field::TimeLocal)))
    }
}

impl FromStr for AccessFormat {
    type Err = AccessFormatError;

    /// `common`, `combined`, `json` (any case), or a line of placeholders.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "common" => Ok(Self::common()),
            "combined" => Ok(Self::combined()),
            "json" => Ok(Self::json()),
            _ => Self::parse_line(s),
        }
    }
}

/// The CGI variable of the HTTP header `name` (any case): `X-Foo` is `HTTP_X_FOO`;
/// `Content-Type` and `Content-Length` are CGI's own `CONTENT_TYPE` and `CONTENT_LENGTH`.
/// `None` for a name that is no HTTP header name.
fn header_variable(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
    if !valid {
        return None;
    }
    let cgi = name.to_ascii_uppercase().replace('-', "_");
    Some(match cgi.as_str() {
        "CONTENT_TYPE" | "CONTENT_LENGTH" => cgi,
        _ => format!("HTTP_{cgi}"),
    })
}

impl AccessLog {
    /// Opens `target` (`-` for stderr, else a file, appended to) to write lines in `format`.
    pub fn open(target: &std::path::Path, format: AccessFormat) -> Result<Self, StatusError> {
        if format.needs_local_time() {
            // The time zone is read now, on the main thread, not while the app may be
            // changing the environment.
            let _ = local_time(SystemTime::now());
        }
        let out: Box<dyn Write + Send> = if target.as_os_str() == "-" {
            Box::new(std::io::stderr())
        } else {
            if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StatusError::AccessLog {
                    what: "cannot create the access log's folder",
                    path: dir.to_owned(),
                    source,
                })?;
            }
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .map_err(|source| StatusError::AccessLog {
                        what: "cannot open the access log",
                        path: target.to_owned(),
                        source,
                    })?,
            )
        };
        Ok(Self {
            out: Mutex::new(out),
            format,
            worker: None,
        })
    }

    /// Marks the lines as this supervised worker's (`{worker}`, JSON's `worker`).
    pub fn with_worker(mut self, worker: Option<u64>) -> Self {
        self.worker = worker;
        self
    }

    fn line(&self, d: &Finished, now: SystemTime) -> String {
        match &self.format.0 {
            Format::Json => self.json_line(d, now),
            Format::Line(pieces) => {
                let mut line = String::with_capacity(128);
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => line.push_str(t),
                        Piece::Field(f) => self.field(&mut line, *f, d, now),
                        Piece::Header(var) => line.push_str(&or_dash(&param(d, var))),
                    }
                }
                line.push('\n');
                line
            }
        }
    }

    fn field(&self, line: &mut String, field: Field, d: &Finished, now: SystemTime) {
        let us = d.duration.as_micros();
        let _ = match field {
            Field::Time => write!(line, "{}", rfc3339(now)),
            Field::TimeLocal => write!(line, "{}", clf_time(now)),
            Field::Remote => write!(line, "{}", or_dash(&d.remote)),
            Field::Method => write!(line, "{}", or_dash(&d.method)),
            Field::Uri => write!(line, "{}", or_dash(&d.uri)),
            Field::Status => write!(line, "{}", d.status),
            Field::Bytes => write!(line, "{}", d.bytes),
            Field::BodyBytes => write!(line, "{}", d.body_bytes),
            Field::DurationMs => write!(line, "{:.3}", us as f64 / 1000.0),
            Field::DurationUs => write!(line, "{us}"),
            Field::RequestId => write!(line, "{}", d.request_id()),
            Field::Pid => write!(line, "{}", std::process::id()),
            Field::Worker => match self.worker {
                Some(w) => write!(line, "{w}"),
                None => write!(line, "-"),
            },
            Field::RemoteUser
            | Field::Protocol
            | Field::Host
            | Field::Referer
            | Field::UserAgent => {
                let name = field.param().unwrap_or_default();
                write!(line, "{}", or_dash(&param(d, name)))
            }
        };
    }

    /// One JSON object: the keys are the placeholders' names; request values missing from
    /// the request are `null`.
    fn json_line(&self, d: &Finished, now: SystemTime) -> String {
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let opt = |name: &str| {
            let v = param(d, name);
            if v.is_empty() {
                "null".to_owned()
            } else {
                s(&v)
            }
        };
        let text = |v: &str| {
            if v.is_empty() {
                "null".to_owned()
            } else {
                s(v)
            }
        };
        let mut line = String::with_capacity(384);
        let _ = write!(
            line,
            r#"{{"time":{},"type":"access","remote":{},"remote_user":{},"method":{},"uri":{},"protocol":{},"host":{},"status":{},"bytes":{},"body_bytes":{},"duration_ms":{:.3},"request_id":{},"pid":{}"#,
            s(&rfc3339(now)),
            text(&d.remote),
            opt("REMOTE_USER"),
            text(&d.method),
            text(&d.uri),
            opt("SERVER_PROTOCOL"),
            opt("HTTP_HOST"),
            d.status,
            d.bytes,
            d.body_bytes,
            d.duration.as_micros() as f64 / 1000.0,
            s(&d.request_id().to_string()),
            std::process::id(),
        );
        if let Some(w) = self.worker {
            let _ = write!(line, r#","worker":{w}"#);
        }
        let _ = writeln!(
            line,
            r#","referer":{},"user_agent":{}}}"#,
            opt("HTTP_REFERER"),
            opt("HTTP_USER_AGENT")
        );
        line
    }
}

/// A request param as text (invalid UTF-8 replaced); empty when absent.
fn param(d: &Finished, name: &str) -> String {
    d.params
        .as_ref()
        .and_then(|p| p.get(name.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// A field taken from the request, safe to write: `-` when empty; `"`, `\\` and control
/// characters as `\xHH` (as nginx writes them), so a client cannot forge fields or lines, nor
/// send escape sequences to a terminal reading the log.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            for b in c.to_string().bytes() {
                let _ = write!(out, "\\x{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Observer for AccessLog {
    fn started(&self, _seq: u64, _params: &Params) {}

    fn finished(&self, done: &Finished) {
        let line = self.line(done, SystemTime::now());
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // One write per line: processes sharing the file (append mode) never interleave.
        let _ = out.write_all(line.as_bytes());
    }

    fn wants_params(&self) -> bool {
        self.format.needs_params()
    }
}

/// Several observers as one.
#[derive(Debug)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn started(&self, seq: u64, params: &Params) {
        for o in &self.0 {
            o.started(seq, params);
        }
    }

    fn finished(&self, done: &Finished) {
        for o in &self.0 {
            o.finished(done);
        }
    }

    fn wants_params(&self) -> bool {
        self.0.iter().any(|o| o.wants_params())
    }
}

/// A civil date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

/// The civil time `secs` seconds after 1970-01-01T00:00:00 (H. Hinnant's algorithm).
fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
    }
}

fn unix_secs(time: SystemTime) -> (i64, u32) {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (i64::try_from(d.as_secs()).unwrap_or(0), d.subsec_millis())
}

/// `time` in RFC 3339, UTC, millisecond precision.
fn rfc3339(time: SystemTime) -> String {
    let (secs, millis) = unix_secs(time);
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// The local time zone's offset from UTC at `time`, in seconds east (Unix: the TZ database
/// through `localtime_r`; elsewhere UTC).
#[cfg(unix)]
fn local_offset(secs: i64) -> i64 {
    // time_t is 64 bits wide on every platform pyfcgi supports.
    let t = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer), and
    // localtime_r writes only into the `tm` we pass; it returns null on failure.
    let (tm, ok) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&raw const t, &raw mut tm).is_null();
        (tm, ok)
    };
    #[allow(clippy::useless_conversion)] // a C long: 32 bits on some platforms
    let offset = i64::from(tm.tm_gmtoff);
    if ok { offset } else { 0 }
}

#[cfg(not(unix))]
fn local_offset(_secs: i64) -> i64 {
    0
}

/// The local civil time at `time` and its offset from UTC in seconds.
fn local_time(time: SystemTime) -> (Civil, i64) {
    let (secs, _) = unix_secs(time);
    let offset = local_offset(secs);
    (civil(secs + offset), offset)
}

/// `time` as the Common Log Format writes it: `10/Oct/2000:13:55:36 -0700`, local time.
fn clf_time(time: SystemTime) -> String {
    let (c, offset) = local_time(time);
    clf_format(c, offset)
}

fn clf_format(c: Civil, offset: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::try_from(c.month - 1).unwrap_or(0).min(11)];
    let sign = if offset < 0 { '-' } else { '+' };
    let off = offset.abs() / 60;
    format!(
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        c.day,
        c.year,
        c.hour,
        c.minute,
        c.second,
        off / 60,
        off % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn finished(params: &[(&str, &str)]) -> Finished {
        Finished {
            seq: 7,
            method: "GET".into(),
            uri: "/a?b".into(),
            remote: "10.0.0.1".into(),
            status: 404,
            bytes: 112,
            body_bytes: 12,
            duration: Duration::from_millis(3),
            app_status: 0,
            params: Some(Params::from_pairs(params.iter().copied()).unwrap()),
        }
    }

    fn log(format: &str) -> AccessLog {
        AccessLog {
            out: Mutex::new(Box::new(std::io::sink())),
            format: format.parse().unwrap(),
            worker: None,
        }
    }

    #[test]
    fn request_fields_cannot_forge_fields_lines_or_terminal_escapes() {
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("/a b/ü"), "/a b/ü");
        assert_eq!(
            or_dash("/x\" 200 0 \"evil\\\u{1b}[2J\u{8}\r\n\u{7f}\u{85}"),
            "/x\\x22 200 0 \\x22evil\\x5C\\x1B[2J\\x08\\x0D\\x0A\\x7F\\xC2\\x85"
        );
    }

    #[test]
    fn rfc3339_dates_are_right() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_806_400_123);
        assert_eq!(rfc3339(t), "2025-12-04T00:00:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn clf_times_are_written_as_apache_writes_them() {
        // Apache's documentation example: 10/Oct/2000:13:55:36 -0700.
        let utc = 971_211_336; // 2000-10-10T20:55:36Z
        assert_eq!(
            clf_format(civil(utc - 7 * 3600), -7 * 3600),
            "10/Oct/2000:13:55:36 -0700"
        );
        assert_eq!(
            clf_format(civil(utc + 19_800), 19_800),
            "11/Oct/2000:02:25:36 +0530"
        );
        assert_eq!(clf_format(civil(0), 0), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn access_log_formats_and_refuses_unknown_fields() {
        assert!(DEFAULT_ACCESS_FORMAT.parse::<AccessFormat>().is_ok());
        let err = "{nope}".parse::<AccessFormat>().unwrap_err().to_string();
        assert!(
            err.contains("{nope} is not one") && err.contains("{status}"),
            "{err}"
        );
        for bad in ["{header:}", "{header:a b}", "{Status}"] {
            assert!(bad.parse::<AccessFormat>().is_err(), "{bad}");
        }
        let d = finished(&[]);
        let log = log("{method} {uri} {status} {bytes} id={request_id} {remote_user} {");
        assert_eq!(
            log.line(&d, SystemTime::now()),
            format!("GET /a?b 404 112 id={} - {{\n", d.request_id())
        );
    }

    #[test]
    fn combined_lines_have_the_referer_and_user_agent_quoted() {
        let d = finished(&[
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("HTTP_REFERER", "http://x/\"q\""),
            ("HTTP_USER_AGENT", "curl/8.0"),
            ("REMOTE_USER", "ann"),
        ]);
        let line = log("combined").line(&d, SystemTime::now());
        let (head, rest) = line.split_once(" [").unwrap();
        assert_eq!(head, "10.0.0.1 - ann");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /a?b HTTP/1.1\" 404 12 \"http://x/\\x22q\\x22\" \"curl/8.0\"\n"
        );
        let line = log("common").line(&finished(&[]), SystemTime::now());
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(line.ends_with("] \"GET /a?b -\" 404 12\n"), "{line}");
    }

    #[test]
    fn headers_are_found_by_their_http_name_in_any_case() {
        let d = finished(&[("HTTP_X_FOO", "bar"), ("CONTENT_TYPE", "text/plain")]);
        let line = log("{header:x-foo}|{HEADER:X-Foo}|{header:Content-Type}|{header:X-None}")
            .line(&d, SystemTime::now());
        assert_eq!(line, "bar|bar|text/plain|-\n");
        assert!(log("{header:x-foo}").format.needs_params());
        assert!(!log(DEFAULT_ACCESS_FORMAT).format.needs_params());
    }

    #[test]
    fn json_lines_parse_and_escape_request_values() {
        let d = finished(&[("HTTP_USER_AGENT", "a\"b\\c\u{1b}\n")]);
        let mut log = log("json");
        log.worker = Some(3);
        let line = log.line(&d, SystemTime::now());
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["user_agent"], "a\"b\\c\u{1b}\n");
        assert_eq!(v["status"], 404);
        assert_eq!(v["body_bytes"], 12);
        assert_eq!(v["worker"], 3);
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["request_id"], d.request_id().to_string());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
