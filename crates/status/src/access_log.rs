//! `--access-log`: one line per request in `--access-log-format`, and several observers as one.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use pyfcgi_proto::Params;
use pyfcgi_server::observe::{Finished, Observer};

use crate::StatusError;

/// `--access-log`: one line per request, in `--access-log-format`.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
    format: String,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The default `--access-log-format`.
pub const DEFAULT_ACCESS_FORMAT: &str =
    r#"{time} {remote} "{method} {uri}" {status} {bytes} {duration_ms}ms id={request_id}"#;

/// The placeholders `--access-log-format` knows.
pub const ACCESS_FIELDS: &[&str] = &[
    "time",
    "remote",
    "method",
    "uri",
    "status",
    "bytes",
    "duration_ms",
    "duration_us",
    "request_id",
    "pid",
];

impl AccessLog {
    /// Opens `target` (`-` for stderr, else a file, appended to); checks the format.
    pub fn open(target: &std::path::Path, format: &str) -> Result<Self, StatusError> {
        check_format(format)?;
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
            format: format.to_owned(),
        })
    }

    fn line(&self, d: &Finished) -> String {
        let mut line = String::with_capacity(self.format.len() + 64);
        let mut rest = self.format.as_str();
        while let Some(open) = rest.find('{') {
            line.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                line.push_str(&rest[open..]);
                rest = "";
                break;
            };
            let field = &after[..close];
            let us = d.duration.as_micros();
            let value = match field {
                "time" => rfc3339(SystemTime::now()),
                "remote" => or_dash(&d.remote),
                "method" => or_dash(&d.method),
                "uri" => or_dash(&d.uri),
                "status" => d.status.to_string(),
                "bytes" => d.bytes.to_string(),
                "duration_ms" => format!("{:.3}", us as f64 / 1000.0),
                "duration_us" => us.to_string(),
                "request_id" => d.request_id().to_string(),
                "pid" => std::process::id().to_string(),
                other => format!("{{{other}}}"),
            };
            line.push_str(&value);
            rest = &after[close + 1..];
        }
        line.push_str(rest);
        line.push('\n');
        line
    }
}

/// A field taken from the request, safe to write: `-` when empty; `"`, `\\` and control
/// characters as `\xHH` (as nginx writes them), so a client cannot forge fields or lines, nor
/// send escape sequences to a terminal reading the log.
fn or_dash(s: &str) -> String {
    use std::fmt::Write as _;
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

/// Refuses a format with an unknown `{field}`, naming the allowed ones.
pub fn check_format(format: &str) -> Result<(), StatusError> {
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let field = &after[..close];
        if !ACCESS_FIELDS.contains(&field) {
            return Err(StatusError::AccessLogFormat {
                field: field.to_owned(),
                fields: ACCESS_FIELDS
                    .iter()
                    .map(|f| format!("{{{f}}}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

impl Observer for AccessLog {
    fn started(&self, _seq: u64, _params: &Params) {}

    fn finished(&self, done: &Finished) {
        let line = self.line(done);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // One write per line: processes sharing the file (append mode) never interleave.
        let _ = out.write_all(line.as_bytes());
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
}

/// `time` in RFC 3339, UTC, millisecond precision.
fn rfc3339(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn access_log_formats_and_refuses_unknown_fields() {
        assert!(check_format(DEFAULT_ACCESS_FORMAT).is_ok());
        let err = check_format("{nope}").unwrap_err().to_string();
        assert!(err.contains("{nope}") && err.contains("{status}"), "{err}");
        let log = AccessLog {
            out: Mutex::new(Box::new(std::io::sink())),
            format: "{method} {uri} {status} {bytes} id={request_id} {remote}".into(),
        };
        let d = Finished {
            seq: 7,
            method: "GET".into(),
            uri: "/a?b".into(),
            remote: String::new(),
            status: 404,
            bytes: 12,
            duration: Duration::from_millis(3),
            app_status: 0,
        };
        assert_eq!(
            log.line(&d),
            format!("GET /a?b 404 12 id={} -\n", d.request_id())
        );
    }
}
