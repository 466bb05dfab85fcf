//! Logging setup. pyfcgi never writes logs to stdout: under a web server stdout may be the
//! FastCGI socket's neighbour or (under IIS) an invalid handle.
//!
//! Two formats (`--log-format`): text lines for people, or one JSON object per line for log
//! shippers ([`JsonEvent`]). A supervised worker's lines carry its id (`worker=N`, JSON's
//! `"worker"`), so the lines of `--workers N` can be told apart. Colours only on a terminal,
//! and never when `NO_COLOR` is set (<https://no-color.org>).
//!
//! Log files (`--log-file`, wfastcgi's `WSGI_LOG`) rotate by size. Several processes (IIS's
//! `maxInstances`) may share one file: every event is one `write` on an append-mode handle,
//! which the OS keeps whole on local files (not under Wine; there, use `{pid}` in the name
//! to give each process its own file).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use pyfcgi_settings::LogFormat;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::registry::LookupSpan;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("PYFCGI_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// `--log-format json`: read per event, so the first-request setup can switch to the app's
/// setting after the log was opened.
static JSON: AtomicBool = AtomicBool::new(false);
/// ANSI colours in text lines: only while the log goes to a terminal and `NO_COLOR` is unset.
static COLOUR: AtomicBool = AtomicBool::new(false);

/// Sets the format of every event from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// True when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The supervisor's id for this worker (`serve --workers N`), `None` in any other process.
fn worker() -> Option<u64> {
    #[cfg(unix)]
    {
        pyfcgi_supervisor::message::worker_id()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// How every event is written: text (tracing's own layout, plus `worker=N` in a supervised
/// worker) or one JSON object.
struct EventFormat {
    plain: format::Format,
    colour: format::Format,
    worker: Option<u64>,
}

impl EventFormat {
    fn new() -> Self {
        Self {
            plain: format::Format::default().with_ansi(false),
            colour: format::Format::default().with_ansi(true),
            worker: worker(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for EventFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            return writer.write_str(&JsonEvent::new(event, self.worker).line());
        }
        let text = if COLOUR.load(Ordering::Relaxed) {
            &self.colour
        } else {
            &self.plain
        };
        let Some(worker) = self.worker else {
            return text.format_event(ctx, writer, event);
        };
        // The worker id goes last, where tracing puts an event's own fields.
        let mut line = String::with_capacity(256);
        text.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} worker={worker}")
    }
}

/// One event as a JSON object on one line: `time` (RFC 3339, UTC), `level`, `target`,
/// `message`, `request_id` (the event's `request` field), `worker` (a supervised worker's
/// id), then the event's other fields, numbers and booleans as such. (pyfcgi records no
/// spans: the request id travels as an event field, so span fields are not written.)
pub struct JsonEvent {
    level: &'static str,
    target: String,
    message: String,
    request_id: Option<serde_json::Value>,
    fields: Vec<(String, serde_json::Value)>,
    worker: Option<u64>,
}

/// Keys of every JSON line; an event field of the same name is written as `field.NAME`.
const JSON_KEYS: &[&str] = &["time", "level", "target", "message", "request_id"];

impl JsonEvent {
    fn new(event: &Event<'_>, worker: Option<u64>) -> Self {
        let meta = event.metadata();
        let mut json = Self {
            level: match *meta.level() {
                tracing::Level::ERROR => "error",
                tracing::Level::WARN => "warn",
                tracing::Level::INFO => "info",
                tracing::Level::DEBUG => "debug",
                tracing::Level::TRACE => "trace",
            },
            target: meta.target().to_owned(),
            message: String::new(),
            request_id: None,
            fields: Vec::new(),
            worker,
        };
        event.record(&mut json);
        json
    }

    fn push(&mut self, field: &Field, value: serde_json::Value) {
        match field.name() {
            "message" => {
                self.message = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
            }
            "request" => self.request_id = Some(value),
            name if JSON_KEYS.contains(&name) => self.fields.push((format!("field.{name}"), value)),
            name => self.fields.push((name.to_owned(), value)),
        }
    }

    /// The object, with its newline.
    pub fn line(&self) -> String {
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let mut time = String::with_capacity(32);
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut time));
        let mut line = String::with_capacity(160 + self.message.len());
        let _ = write!(
            line,
            r#"{{"time":{},"level":"{}","target":{},"message":{}"#,
            s(&time),
            self.level,
            s(&self.target),
            s(&self.message)
        );
        if let Some(id) = &self.request_id {
            let _ = write!(line, r#","request_id":{id}"#);
        }
        // The supervisor's own lines about a worker carry it as a field of the event.
        if let Some(w) = self.worker
            && !self.fields.iter().any(|(k, _)| k == "worker")
        {
            let _ = write!(line, r#","worker":{w}"#);
        }
        for (k, v) in &self.fields {
            let _ = write!(line, ",{}:{v}", s(k));
        }
        line.push_str("}\n");
        line
    }
}

impl Visit for JsonEvent {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    // Durations in ms/us arrive as 128-bit: a JSON number when they fit 64 bits (serde_json
    // keeps those exact), text beyond.
    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| value.to_string().into(), Into::into);
        self.push(field, v);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| value.to_string().into(), Into::into);
        self.push(field, v);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, value.to_string().into());
    }
}

/// A log file opened after startup ([`attach_file`]); until then, stderr.
static LATE_FILE: Mutex<Option<RotatingFile>> = Mutex::new(None);

/// Where [`init_stderr`]'s events go: the late file once attached, else stderr.
struct LateWriter;

impl Write for LateWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = LATE_FILE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match file.as_mut() {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut file = LATE_FILE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match file.as_mut() {
            Some(f) => f.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Logs to stderr at `level` (overridden by `PYFCGI_LOG`), or to the file [`attach_file`]
/// names later.
pub fn init_stderr(level: &str) {
    COLOUR.store(
        std::io::stderr().is_terminal() && !no_color(),
        Ordering::Relaxed,
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .event_format(EventFormat::new())
        .with_writer(|| LateWriter)
        .try_init();
}

/// From now on, [`init_stderr`]'s log goes to the file at `path` (`{pid}` expanded),
/// without colours (under IIS the web.config's `WSGI_LOG`, known from the first request).
#[cfg_attr(not(feature = "python"), allow(dead_code))] // used by the first-request setup
pub fn attach_file(path: &Path, rotation: Rotation) -> anyhow::Result<PathBuf> {
    let path = expand_path(path);
    let file = RotatingFile::open(&path, rotation)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    COLOUR.store(false, Ordering::Relaxed);
    *LATE_FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
    Ok(path)
}

/// Size-based rotation of a log file.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate when the file grows past this many bytes (0 = never).
    pub max_size: u64,
    /// Rotated files kept: PATH.1 (newest) … PATH.N.
    pub keep: u32,
}

/// The log file path with `{pid}` replaced by this process id.
pub fn expand_path(path: &Path) -> PathBuf {
    PathBuf::from(
        path.to_string_lossy()
            .replace("{pid}", &std::process::id().to_string()),
    )
}

/// An append-mode log file that rotates itself.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    rotation: Rotation,
    written: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl RotatingFile {
    /// Opens (creating folders as needed) `path` for appending.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(Self {
            path: path.to_owned(),
            file,
            rotation,
            written,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // Another process sharing the file may have rotated it already: only the process that
        // still writes to the file at PATH renames it.
        let ours = same_file(&self.file, &self.path);
        if ours {
            for i in (1..self.rotation.keep).rev() {
                let from = numbered(&self.path, i);
                if from.exists() {
                    let _ = std::fs::rename(&from, numbered(&self.path, i + 1));
                }
            }
            if self.rotation.keep > 0 {
                std::fs::rename(&self.path, numbered(&self.path, 1))?;
            } else {
                std::fs::remove_file(&self.path)?;
            }
        }
        self.file = open_append(&self.path)?;
        self.written = self.file.metadata().map_or(0, |m| m.len());
        Ok(())
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(file: &File, path: &Path) -> bool {
    // Windows: a file open without FILE_SHARE_DELETE cannot be renamed by others, so the
    // file at PATH is ours when its size matches what our handle sees.
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.rotation.max_size > 0
            && self.written + buf.len() as u64 > self.rotation.max_size
            && self.written > 0
        {
            // A failed rotation must not lose the log line: keep writing to the old file.
            let _ = self.rotate();
        }
        // One write per event keeps lines whole when processes share the file.
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Logs to the file at `path` (`{pid}` expanded; appending; created if missing) at `level`.
pub fn init_file(path: &Path, level: &str, rotation: Rotation) -> anyhow::Result<PathBuf> {
    let path = expand_path(path);
    let file = RotatingFile::open(&path, rotation)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    COLOUR.store(false, Ordering::Relaxed);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .event_format(EventFormat::new())
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_rotate_by_size_and_keep_n() {
        let dir = std::env::temp_dir().join(format!("pyfcgi-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("pyfcgi.log");
        let mut f = RotatingFile::open(
            &path,
            Rotation {
                max_size: 100,
                keep: 2,
            },
        )
        .unwrap();
        for i in 0..10 {
            f.write_all(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let main = std::fs::read_to_string(&path).unwrap();
        let one = std::fs::read_to_string(numbered(&path, 1)).unwrap();
        assert!(main.len() <= 100 && one.len() <= 100);
        assert!(main.contains("line 09") && one.contains("line 07"));
        assert!(numbered(&path, 2).exists() && !numbered(&path, 3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_events_are_one_object_per_line_with_their_keys() {
        use tracing_subscriber::layer::{Context, SubscriberExt};

        struct Capture(std::sync::Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                self.0
                    .lock()
                    .unwrap()
                    .push(JsonEvent::new(event, Some(2)).line());
            }
        }
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                request = %"k3f9a2qz-17",
                time = 5_u64,
                ok = true,
                "a \"quoted\"\ntwo-line message"
            );
            tracing::info!(worker = 7_u64, "the supervisor's line about a worker");
            tracing::info!(
                after_ms = std::time::Duration::from_millis(42).as_millis(),
                huge = u128::MAX,
                "128-bit fields"
            );
        });
        let lines = lines.lock().unwrap();
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l:?}");
                serde_json::from_str(l).unwrap()
            })
            .collect();
        assert_eq!(v[0]["level"], "warn");
        assert_eq!(v[0]["message"], "a \"quoted\"\ntwo-line message");
        assert_eq!(v[0]["request_id"], "k3f9a2qz-17");
        assert_eq!(v[0]["worker"], 2);
        assert_eq!(v[0]["field.time"], 5);
        assert_eq!(v[0]["ok"], true);
        assert!(v[0]["time"].as_str().unwrap().ends_with('Z'));
        assert!(v[0]["target"].as_str().unwrap().starts_with("pyfcgi"));
        // An event's own `worker` field is the worker it is about.
        assert_eq!(v[1]["worker"], 7);
        assert_eq!(lines[1].matches("\"worker\"").count(), 1, "{}", lines[1]);
        // 128-bit values (Duration::as_millis) are numbers when they fit, text beyond.
        assert_eq!(v[2]["after_ms"], 42);
        assert_eq!(v[2]["huge"], u128::MAX.to_string());
    }

    #[test]
    fn pid_placeholder_is_expanded() {
        let p = expand_path(Path::new("/var/log/pyfcgi-{pid}.log"));
        assert_eq!(
            p,
            PathBuf::from(format!("/var/log/pyfcgi-{}.log", std::process::id()))
        );
    }
}
