//! pyfcgi's settings, resolved once.
//!
//! Four sources, highest first: the command line, `PYFCGI_*` environment variables, the
//! `<appSettings>` of the application's web.config files (parents first, `<clear/>`,
//! `<remove>`, `%VAR%` in `PYTHONPATH`), and pyfcgi.toml; then the defaults. [`resolve`]
//! reads the files, [`resolve_from`] is the pure core (what the fuzz target drives): both give
//! a [`Resolution`]: the typed [`Settings`], every error (each naming the source, the value
//! and what is allowed), every unknown key (with the closest known one), and where each
//! effective value came from.
//!
//! The binary turns its clap matches into [`Arg`]s; nothing here knows clap.

mod keys;
mod origin;
mod resolve;
pub mod value;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use keys::{KEYS, Key, Kind, NOT_SETTINGS, NOT_SETTINGS_PREFIXES, Scope, WFASTCGI_ALIASES};
pub use origin::{Origin, SettingError, Unknown};
use pyfcgi_server::Bind;
use pyfcgi_server::builtin::Builtin;
use pyfcgi_server::proxy::TrustedProxies;
pub use pyfcgi_status::AccessFormat;
pub use resolve::{Arg, Effective, Inputs, Resolution, WebConfigInput, resolve, resolve_from};

/// `--interface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// ASGI when the app looks like one, else WSGI.
    Auto,
    /// PEP 3333.
    Wsgi,
    /// ASGI 3.0.
    Asgi,
}

/// `--lifespan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifespan {
    /// Run it; serve an app without lifespan support anyway.
    Auto,
    /// Run it; no support is a startup failure.
    On,
    /// Never run it.
    Off,
}

/// `--loop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLoop {
    /// uvloop when installed (not on Windows), else asyncio.
    Auto,
    /// asyncio's selector event loop.
    Asyncio,
    /// uvloop (an error when it is not installed).
    Uvloop,
}

/// `--log-format`: how the error log (and by default the access log) is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines for people: `TIME LEVEL target: message field=value`.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The interpreter settings `serve` and `check` share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonSettings {
    pub venv: Option<PathBuf>,
    /// Put first on `sys.path`, in this order.
    pub pythonpath: Vec<PathBuf>,
    pub chdir: Option<PathBuf>,
    pub python_home: Option<PathBuf>,
}

/// Everything `pyfcgi serve` (and `check`, `doctor`, supervised workers, the first-request
/// setup) runs with. Durations that mean "never" at 0 are `None`.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)]
pub struct Settings {
    /// The application spec (APP, `--app`, `WSGI_HANDLER`).
    pub app: Option<String>,
    pub app_root: Option<PathBuf>,
    /// The pyfcgi.toml read, if any.
    pub config: Option<PathBuf>,
    /// Extra `os.environ` entries for the app (web.config's other appSettings among them).
    pub app_env: Vec<(String, String)>,
    pub python: PythonSettings,
    pub max_requests: u64,
    pub restart_regex: Option<String>,
    pub stderr_errors: bool,
    pub threads: Option<usize>,
    pub max_body_size: u64,
    pub max_body_memory: u64,
    pub spool_dir: Option<PathBuf>,
    pub send_window: u64,
    pub detailed_errors: bool,
    /// `--impersonate`: requests run as IIS's authenticated user.
    pub impersonate: bool,
    /// `http` or `https`.
    pub url_scheme: Option<String>,
    pub script_name: Option<String>,
    pub interface: Interface,
    pub lifespan: Lifespan,
    pub event_loop: EventLoop,
    pub bind: Option<Bind>,
    pub workers: Option<usize>,
    pub reload: bool,
    pub max_requests_jitter: u64,
    pub max_rss_mib: u64,
    pub worker_lifetime: Option<Duration>,
    pub crash_limit: u32,
    pub ready_timeout: Duration,
    pub read_timeout: Option<Duration>,
    pub params_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub status_path: Option<String>,
    pub access_log: Option<PathBuf>,
    /// As given; [`Settings::access_format`] applies the default.
    pub access_log_format: Option<AccessFormat>,
    pub socket_mode: u32,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    pub status_bind: Option<String>,
    pub trusted_proxy: Option<TrustedProxies>,
    pub builtin: Option<Builtin>,
    pub max_conns: usize,
    pub max_requests_per_conn: usize,
    pub no_multiplex: bool,
    pub max_params_bytes: usize,
    pub max_params: usize,
    pub graceful_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub io_threads: usize,
    pub align_records: bool,
    /// Empty: any address may connect.
    pub web_server_addrs: Vec<IpAddr>,
    pub log_max_size: u64,
    pub log_keep: u32,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Settings {
    /// The settings with nothing given (every default).
    pub fn defaults() -> Self {
        resolve_from(&Inputs::default(), None, None).settings
    }

    /// The access log's format: `--access-log-format` when given, else `json` with
    /// `--log-format json` (one format for a log shipper to parse), else the default line.
    pub fn access_format(&self) -> AccessFormat {
        match (&self.access_log_format, self.log_format) {
            (Some(f), _) => f.clone(),
            (None, LogFormat::Json) => AccessFormat::json(),
            (None, LogFormat::Text) => AccessFormat::default(),
        }
    }
}

#[cfg(test)]
mod tests;
