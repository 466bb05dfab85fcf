//! `pyfcgi serve`: options, transport selection, signals, exit codes.

#[cfg(feature = "python")]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use pyfcgi_proto::server::Limits;
#[cfg(feature = "python")]
use pyfcgi_python::{AppBinding, AppState, PythonHandler, WsgiConfig};

use crate::lifecycle::MaxRequests;
#[cfg(feature = "python")]
use crate::lifecycle::{DEFAULT_RESTART_REGEX, WatcherSlot};
use pyfcgi_server::body::BodyConfig;
use pyfcgi_server::builtin::{Builtin, BuiltinHandler};
use pyfcgi_server::conn::ConnConfig;
use pyfcgi_server::serve::ServeOutcome;
#[cfg(feature = "python")]
use pyfcgi_server::transport::StdinKind;
use pyfcgi_server::transport::inspect_stdin;
use pyfcgi_server::transport::parse_web_server_addrs;
use pyfcgi_server::{Bind, Listener, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::logging;
pub use crate::settings::parse_size;
use crate::settings::{parse_env_pair, parse_mode, parse_script_name, parse_workers};

/// Exit code when the grace period ran out with requests in flight.
const EXIT_GRACE_TIMEOUT: u8 = 3;
/// Exit code for configuration or startup errors.
const EXIT_STARTUP: u8 = 1;

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct ServeArgs {
    /// The WSGI application: module:attr, module:factory(), path/to/app.py:attr, or
    /// wfastcgi's package.module.attr.
    #[arg(value_name = "APP", conflicts_with = "builtin")]
    pub app: Option<String>,

    /// The WSGI application, as an option (what IIS's FastCGI `arguments` and the
    /// WSGI_HANDLER appSetting set); the positional APP wins over it.
    #[arg(
        long = "app",
        env = "PYFCGI_APP",
        value_name = "APP",
        conflicts_with = "builtin",
        hide_short_help = true
    )]
    pub app_option: Option<String>,

    /// The application's folder (IIS: the site's physical path). Its web.config appSettings
    /// and pyfcgi.toml are read at startup, the app is loaded eagerly, pyfcgi changes into it
    /// (unless --chdir), and requests for other IIS applications are refused.
    #[arg(long, env = "PYFCGI_APP_ROOT", value_name = "DIR")]
    pub app_root: Option<PathBuf>,

    /// Exit cleanly after this many requests (between requests); 0 = never. Under IIS keep
    /// it at or above the FastCGI instanceMaxRequests so IIS recycles first.
    #[arg(
        long,
        env = "PYFCGI_MAX_REQUESTS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_requests: u64,

    /// Restart (drain the in-flight request, then exit so IIS starts a new process) when a
    /// file under the app folder whose path matches this regex changes. wfastcgi's
    /// WSGI_RESTART_FILE_REGEX; default .*((\.py)|(\.config))$ when an app folder is known;
    /// an empty value disables watching.
    #[arg(long, env = "PYFCGI_RESTART_REGEX", value_name = "REGEX")]
    pub restart_regex: Option<String>,

    /// Also send application tracebacks on FCGI_STDERR (IIS then shows them as the 500 page
    /// to every visitor: only for debugging).
    #[arg(long, env = "PYFCGI_STDERR_ERRORS")]
    pub stderr_errors: bool,

    /// Settings file (TOML, keys are flag names: threads = 4, max-body-size = "10m").
    /// Default: pyfcgi.toml in the app folder, else in the working directory.
    #[arg(long, env = "PYFCGI_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Extra environment variable for the application, NAME=VALUE (repeatable; web.config
    /// appSettings that are not pyfcgi or wfastcgi keys arrive here).
    #[arg(long = "app-env", value_name = "NAME=VALUE", value_parser = parse_env_pair, hide_short_help = true)]
    pub app_env: Vec<(String, String)>,

    #[command(flatten)]
    pub python: PythonArgs,

    /// Python worker threads (default: 1 when stdin is a connected stream, as under IIS,
    /// where requests arrive one at a time; otherwise 8).
    #[arg(long, env = "PYFCGI_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Largest request body accepted; a larger declared Content-Length gets 413 without
    /// calling the application. Suffixes k, m, g (powers of 1024).
    #[arg(long, env = "PYFCGI_MAX_BODY_SIZE", default_value = "1g", value_name = "SIZE", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Request-body bytes held in memory per request before spooling to a temp file.
    #[arg(long, env = "PYFCGI_MAX_BODY_MEMORY", default_value = "1m", value_name = "SIZE", value_parser = parse_size)]
    pub max_body_memory: u64,

    /// Directory for request bodies over --max-body-memory (default: the system temp
    /// directory, $TMPDIR). Spool files have no name there, are readable only by this user
    /// and vanish with the request.
    #[arg(long, env = "PYFCGI_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// ASGI: response bytes a request may have handed to `send()` and not yet written before
    /// `send()` waits for the client (backpressure). Suffixes k, m, g.
    #[arg(long, env = "PYFCGI_SEND_WINDOW", default_value = "64k", value_name = "SIZE", value_parser = parse_size)]
    pub send_window: u64,

    /// Put the traceback in 500 pages (for local debugging only: it shows code to visitors).
    #[arg(long, env = "PYFCGI_DETAILED_ERRORS")]
    pub detailed_errors: bool,

    /// Force wsgi.url_scheme (default: https when the web server sends HTTPS=on, else
    /// REQUEST_SCHEME, else http).
    #[arg(long, env = "PYFCGI_URL_SCHEME", value_name = "SCHEME", value_parser = ["http", "https"])]
    pub url_scheme: Option<String>,

    /// The mount prefix of the app: becomes SCRIPT_NAME and is stripped from PATH_INFO.
    #[arg(long, env = "PYFCGI_SCRIPT_NAME", value_name = "PREFIX", value_parser = parse_script_name)]
    pub script_name: Option<String>,

    /// The application's interface: wsgi (PEP 3333), asgi (ASGI 3), or auto (asgi when the
    /// app is a coroutine function or has an async __call__, like FastAPI and Starlette).
    #[arg(long, env = "PYFCGI_INTERFACE", value_enum, default_value_t = Interface::Auto)]
    pub interface: Interface,

    /// ASGI: run the app's lifespan protocol (startup before the first request, shutdown on
    /// stop). auto: run it, and serve an app that does not support it anyway; on: such an
    /// app is a startup failure; off: never.
    #[arg(long, env = "PYFCGI_LIFESPAN", value_enum, default_value_t = LifespanArg::Auto)]
    pub lifespan: LifespanArg,

    /// ASGI: the event loop. auto: uvloop when installed (not on Windows), else asyncio.
    #[arg(long = "loop", env = "PYFCGI_LOOP", value_enum, default_value_t = LoopArg::Auto)]
    pub event_loop: LoopArg,
    /// Where to listen: HOST:PORT, tcp:HOST:PORT, unix:PATH, or fd:N (an inherited socket).
    /// Default: standard input, when the web server passed a socket there.
    #[arg(long, env = "PYFCGI_BIND", short = 'b', value_name = "ADDR")]
    pub bind: Option<String>,

    /// Run a supervisor and N worker processes sharing the socket (each imports the app
    /// itself); `auto` = the number of CPUs. Unset: one process, no supervisor. Not under
    /// IIS, which starts its own processes (maxInstances). See docs/deployment.md.
    #[arg(long, env = "PYFCGI_WORKERS", value_name = "N|auto", value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Development: watch the app's Python files and do a rolling restart (as SIGHUP) when
    /// one changes. Implies --workers 1 when --workers is not given. Watches --app-root, else
    /// --chdir, else the folder of an APP given as a .py path, else the working directory.
    #[arg(long, env = "PYFCGI_RELOAD")]
    pub reload: bool,

    /// With --workers: add a random 0..=J to each worker's --max-requests, so that the
    /// workers do not all recycle at once.
    #[arg(
        long,
        env = "PYFCGI_MAX_REQUESTS_JITTER",
        default_value_t = 0,
        value_name = "J"
    )]
    pub max_requests_jitter: u64,

    /// With --workers: a worker whose resident memory exceeds this many MiB finishes its
    /// requests and is replaced (a new one is started first); 0 = no limit.
    #[arg(long, env = "PYFCGI_MAX_RSS", default_value_t = 0, value_name = "MIB")]
    pub max_rss: u64,

    /// With --workers: replace each worker after this many seconds (0 = never).
    #[arg(
        long,
        env = "PYFCGI_WORKER_LIFETIME",
        default_value_t = 0.0,
        value_name = "SECS"
    )]
    pub worker_lifetime: f64,

    /// With --workers: stop (exit code 5) when workers fail this many times in a row before
    /// they are ready (an app that cannot import). Crashes are retried with backoff.
    #[arg(
        long,
        env = "PYFCGI_CRASH_LIMIT",
        default_value_t = 5,
        value_name = "N"
    )]
    pub crash_limit: u32,

    /// With --workers: how long a new worker may take to import the app and become ready
    /// during a rolling restart before the restart is abandoned.
    #[arg(
        long,
        env = "PYFCGI_READY_TIMEOUT",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    pub ready_timeout: f64,

    /// Close a connection when the web server sends nothing for this many seconds while a
    /// request waits for its params or body (a stalled client upload); 0 = never.
    #[arg(
        long,
        env = "PYFCGI_READ_TIMEOUT",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    pub read_timeout: f64,

    /// A request (WSGI or ASGI) running longer than this many seconds is answered 504 (or, if its
    /// response has started, ended where it is), and the app's Python stack is logged. A
    /// request still running at twice the limit makes a supervised or IIS worker stop, to
    /// be replaced. 0 = no limit.
    #[arg(
        long,
        env = "PYFCGI_REQUEST_TIMEOUT",
        default_value_t = 0.0,
        value_name = "SECS"
    )]
    pub request_timeout: f64,

    /// Answer this path (e.g. /pyfcgi-status) with the server's status, from Rust, without
    /// calling the app: JSON, or the Prometheus text format with ?format=prometheus or an
    /// Accept: text/plain header. 503 until the app is ready. With --workers, the totals of
    /// every worker. Keep it away from the public (an nginx `location` with `allow`/`deny`).
    #[arg(long, env = "PYFCGI_STATUS_PATH", value_name = "PATH")]
    pub status_path: Option<String>,

    /// Write one line per request to this file (appended; `-` for stderr).
    #[arg(long, env = "PYFCGI_ACCESS_LOG", value_name = "PATH")]
    pub access_log: Option<PathBuf>,

    /// The access log line: {time} {remote} {method} {uri} {status} {bytes} {duration_ms}
    /// {duration_us} {request_id} {pid}.
    #[arg(long, env = "PYFCGI_ACCESS_LOG_FORMAT", value_name = "FORMAT", default_value = crate::metrics::DEFAULT_ACCESS_FORMAT)]
    pub access_log_format: String,

    /// Permissions of a new unix socket file, in octal. The default, 660, lets the owner and
    /// the group connect and nobody else, whatever the umask (give the web server the group
    /// with --socket-group, or use 666 to let every local user connect).
    #[arg(long, env = "PYFCGI_SOCKET_MODE", value_name = "MODE", value_parser = parse_mode, default_value = "660")]
    pub socket_mode: u32,

    /// Owner of a new unix socket file: a user name or id (needs root).
    #[arg(long, env = "PYFCGI_SOCKET_OWNER", value_name = "USER")]
    pub socket_owner: Option<String>,

    /// Group of a new unix socket file: a group name or id, e.g. the web server's
    /// (www-data), with --socket-mode 660.
    #[arg(long, env = "PYFCGI_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Also answer the status (as --status-path does) on this separate plain-HTTP listener,
    /// HOST:PORT or unix:PATH, e.g. 127.0.0.1:9101 for Prometheus. It is up before the app is
    /// imported (reporting not ready, 503, until it is) and is served by the supervisor with
    /// --workers.
    #[arg(long, env = "PYFCGI_STATUS_BIND", value_name = "ADDR")]
    pub status_bind: Option<String>,

    /// Apply X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host (REMOTE_ADDR, the URL
    /// scheme, HTTP_HOST) when the web server's client is one of these proxies: addresses or
    /// networks, comma-separated or repeated (10.0.0.1, 10.0.0.0/8, ::1). Without it those
    /// headers reach the app as plain headers and change nothing.
    #[arg(long, env = "PYFCGI_TRUSTED_PROXY", value_name = "ADDRS", value_parser = parse_trusted_proxy)]
    pub trusted_proxy: Vec<pyfcgi_server::proxy::TrustedProxies>,

    /// Serve a built-in handler instead of an application: hello (fixed 13-byte response),
    /// echo (the request body back) or env (the request params as text).
    #[arg(long, env = "PYFCGI_BUILTIN", value_name = "NAME")]
    pub builtin: Option<Builtin>,

    /// Most connections served at once (reported as FCGI_MAX_CONNS).
    #[arg(
        long,
        env = "PYFCGI_MAX_CONNS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_conns: usize,

    /// Most requests in flight on one multiplexed connection (FCGI_MAX_REQS is this times
    /// --max-conns).
    #[arg(
        long,
        env = "PYFCGI_MAX_REQUESTS_PER_CONN",
        default_value_t = 128,
        value_name = "N"
    )]
    pub max_requests_per_conn: usize,

    /// Refuse a second concurrent request on one connection (FCGI_MPXS_CONNS=0).
    #[arg(long, env = "PYFCGI_NO_MULTIPLEX")]
    pub no_multiplex: bool,

    /// Largest FCGI_PARAMS block of one request, in bytes.
    #[arg(long, env = "PYFCGI_MAX_PARAMS_BYTES", default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_params_bytes: usize,

    /// Most params (name-value pairs) in one request.
    #[arg(
        long,
        env = "PYFCGI_MAX_PARAMS",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub max_params: usize,

    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(
        long,
        env = "PYFCGI_GRACEFUL_TIMEOUT",
        default_value_t = 30.0,
        value_name = "SECS"
    )]
    pub graceful_timeout: f64,

    /// Close a connection with no request in flight after this many idle seconds (0 = never).
    /// Not applied to a connection inherited on stdin.
    #[arg(
        long,
        env = "PYFCGI_IDLE_TIMEOUT",
        default_value_t = 300.0,
        value_name = "SECS"
    )]
    pub idle_timeout: f64,

    /// Threads for socket I/O (1 = a single-threaded runtime, the fastest on small machines).
    #[arg(long, env = "PYFCGI_IO_THREADS", default_value_t = 1, value_name = "N")]
    pub io_threads: usize,

    /// Pad every response record to a multiple of 8 bytes (FastCGI spec §3.3 recommendation;
    /// no web server needs it).
    #[arg(long, env = "PYFCGI_ALIGN_RECORDS")]
    pub align_records: bool,

    /// Comma-separated IP addresses allowed to connect over TCP (default: from the
    /// FCGI_WEB_SERVER_ADDRS environment variable; empty = any).
    #[arg(long, env = "FCGI_WEB_SERVER_ADDRS", value_name = "IPS")]
    pub web_server_addrs: Option<String>,

    /// Rotate the log file when it grows past this size (0 = never).
    #[arg(long, env = "PYFCGI_LOG_MAX_SIZE", default_value = "10m", value_name = "SIZE", value_parser = parse_size)]
    pub log_max_size: u64,

    /// Rotated log files kept (PATH.1 … PATH.N).
    #[arg(long, env = "PYFCGI_LOG_KEEP", default_value_t = 5, value_name = "N")]
    pub log_keep: u32,

    /// Write logs to this file instead of stderr (wfastcgi's WSGI_LOG). `{pid}` in the name
    /// is replaced by the process id, giving each IIS process its own file.
    #[arg(long, env = "PYFCGI_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace); PYFCGI_LOG overrides with a full filter.
    #[arg(
        long,
        env = "PYFCGI_LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: String,
}

/// Interpreter options shared by `serve` and `check`.
#[derive(Debug, Args, Clone)]
pub struct PythonArgs {
    /// Virtual environment to use (default: $VIRTUAL_ENV, else a pyvenv.cfg, .venv or venv
    /// found beside or above the application).
    #[arg(long, env = "PYFCGI_VENV", value_name = "PATH")]
    pub venv: Option<PathBuf>,

    /// Directory to put first on sys.path (repeatable; PYTHONPATH is honoured too).
    #[arg(long, env = "PYFCGI_PYTHONPATH", value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,

    /// Change to this directory before loading the application.
    #[arg(long, env = "PYFCGI_CHDIR", value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Windows: the folder holding python3XY.dll (or the DLL itself), when the venv's
    /// pyvenv.cfg, PYTHONHOME and the registry do not lead to it. Ignored on Unix, where
    /// libpython is linked at build time.
    #[arg(long, env = "PYFCGI_PYTHON_HOME", value_name = "DIR")]
    pub python_home: Option<PathBuf>,
}

impl PythonArgs {
    /// Where to look for the interpreter (see `python_home`), for the app `spec` if known.
    #[cfg(feature = "python")]
    pub fn hints(&self, spec: Option<&str>) -> crate::python_home::Hints {
        let mut app_dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = spec
            .and_then(|s| pyfcgi_python::app::AppSpec::parse(s).ok())
            .and_then(|p| p.app_dir())
        {
            app_dirs.push(d);
        }
        app_dirs.extend(self.chdir.iter().cloned());
        app_dirs.extend(std::env::current_dir().ok());
        crate::python_home::Hints {
            explicit: self.python_home.clone(),
            venv: self.venv.clone(),
            app_dirs,
        }
    }
}

/// `--interface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Interface {
    /// ASGI when the app looks like one, else WSGI.
    Auto,
    /// PEP 3333.
    Wsgi,
    /// ASGI 3.0.
    Asgi,
}

/// `--lifespan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LifespanArg {
    /// Run it; serve an app without lifespan support anyway.
    Auto,
    /// Run it; no support is a startup failure.
    On,
    /// Never run it.
    Off,
}

/// `--loop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoopArg {
    /// uvloop when installed (not on Windows), else asyncio.
    Auto,
    /// asyncio's selector event loop.
    Asyncio,
    /// uvloop (an error when it is not installed).
    Uvloop,
}

fn parse_trusted_proxy(s: &str) -> Result<pyfcgi_server::proxy::TrustedProxies, String> {
    s.parse()
        .map_err(|e: pyfcgi_server::proxy::BadProxy| e.to_string())
}

/// All `--trusted-proxy` entries as one list, `None` when there are none.
fn trusted_proxies(
    lists: &[pyfcgi_server::proxy::TrustedProxies],
) -> Option<Arc<pyfcgi_server::proxy::TrustedProxies>> {
    let (first, rest) = lists.split_first()?;
    let mut all = first.clone();
    for l in rest {
        all.extend(l);
    }
    Some(Arc::new(all))
}

/// How to create a `unix:` socket file: `--socket-mode`, `--socket-owner`, `--socket-group`.
pub(crate) fn unix_socket_options(
    args: &ServeArgs,
) -> anyhow::Result<pyfcgi_server::transport::UnixSocketOptions> {
    #[cfg(unix)]
    let (uid, gid) = (
        args.socket_owner
            .as_deref()
            .map(|u| crate::supervisor::user_id(u).context("invalid --socket-owner"))
            .transpose()?,
        args.socket_group
            .as_deref()
            .map(|g| crate::supervisor::group_id(g).context("invalid --socket-group"))
            .transpose()?,
    );
    #[cfg(windows)]
    let (uid, gid) = {
        if args.socket_owner.is_some() || args.socket_group.is_some() {
            bail!(
                "--socket-owner and --socket-group apply to unix sockets, which Windows does not use here"
            );
        }
        (None, None)
    };
    Ok(pyfcgi_server::transport::UnixSocketOptions {
        mode: Some(args.socket_mode),
        uid,
        gid,
    })
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds, got {v}"))
}

/// The socket systemd passed (socket activation: `LISTEN_PID` is this process and
/// `LISTEN_FDS` at least 1): descriptor 3. Only the first one is used.
pub(crate) fn systemd_socket() -> Option<i32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    if pid != std::process::id() || fds == 0 {
        return None;
    }
    if fds > 1 {
        warn!(
            fds,
            "systemd passed several sockets (LISTEN_FDS); pyfcgi serves the first one only"
        );
    }
    info!("using the socket systemd passed (socket activation)");
    Some(3)
}

/// `--workers N`: the supervisor (Unix; IIS starts its own processes on Windows).
#[cfg(unix)]
fn supervise(args: &ServeArgs, workers: usize) -> ExitCode {
    match crate::supervisor::main(args, workers) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

#[cfg(unix)]
fn is_supervised_worker() -> bool {
    crate::supervisor::is_worker()
}

#[cfg(windows)]
fn is_supervised_worker() -> bool {
    false
}

#[cfg(windows)]
fn supervise(_args: &ServeArgs, _workers: usize) -> ExitCode {
    error!(
        "--workers is not available on Windows: under IIS, set the FastCGI application's maxInstances; standalone, run several pyfcgi processes on different ports"
    );
    ExitCode::from(EXIT_STARTUP)
}

/// Config files merged into the arguments, logged once logging is set up.
static CONFIG_SOURCES: std::sync::OnceLock<crate::config::Sources> = std::sync::OnceLock::new();

/// Records where settings came from, for the startup log.
pub fn note_config_sources(sources: crate::config::Sources) {
    let _ = CONFIG_SOURCES.set(sources);
}

pub fn main(args: ServeArgs) -> ExitCode {
    match &args.log_file {
        Some(path) => {
            let rotation = logging::Rotation {
                max_size: args.log_max_size,
                keep: args.log_keep,
            };
            if let Err(e) = logging::init_file(path, &args.log_level, rotation) {
                logging::init_stderr(&args.log_level);
                error!("{e:#}");
                return ExitCode::from(EXIT_STARTUP);
            }
        }
        None => logging::init_stderr(&args.log_level),
    }
    if let Some(src) = CONFIG_SOURCES.get() {
        info!(files = ?src.files, overridden_by_env_or_cli = ?src.shadowed, "settings read from config files");
    }
    if let Some(n) = args.workers.or(args.reload.then_some(1))
        && !is_supervised_worker()
    {
        return supervise(&args, n);
    }
    match run(args) {
        Ok(ServeOutcome::TimedOut) => ExitCode::from(EXIT_GRACE_TIMEOUT),
        Ok(_) => ExitCode::SUCCESS,
        #[cfg(feature = "python")]
        Err(e) if e.is::<NoPython>() => {
            error!("{e:#}");
            ExitCode::from(crate::python_home::EXIT_NO_PYTHON)
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

fn run(args: ServeArgs) -> anyhow::Result<ServeOutcome> {
    let rt = if args.io_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.io_threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    if let Some(addr) = &args.status_bind
        && !is_supervised_worker()
    {
        // Up before the app is imported, to say "not ready" meanwhile.
        crate::status_http::start(addr, crate::metrics::own_source())?;
    }
    if let Some(builtin) = args.builtin {
        info!(handler = ?builtin, "serving a built-in handler");
        let shutdown = CancellationToken::new();
        let handler =
            MaxRequests::new(BuiltinHandler(builtin), args.max_requests, shutdown.clone());
        return rt.block_on(serve_async(args, Arc::new(handler), shutdown));
    }
    #[cfg(not(feature = "python"))]
    bail!(
        "this pyfcgi was built without Python (cargo feature `python`): it can only serve --builtin hello|echo|env"
    );
    #[cfg(feature = "python")]
    run_app(&rt, args)
}

#[cfg(feature = "python")]
fn run_app(rt: &tokio::runtime::Runtime, args: ServeArgs) -> anyhow::Result<ServeOutcome> {
    let shutdown = CancellationToken::new();
    // The transport decides the default thread count, so look at stdin before anything.
    let connected = args.bind.is_none() && matches!(inspect_stdin(), Some(StdinKind::Connected));
    let threads = args.threads.unwrap_or(if connected { 1 } else { 8 }).max(1);
    let cfg = WsgiConfig {
        request_timeout: (args.request_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.request_timeout)),
        exit_when_stuck: connected || is_supervised_worker(),
        multithread: threads > 1,
        multiprocess: connected,
        url_scheme: args.url_scheme.clone(),
        script_name: args.script_name.clone(),
        detailed_errors: args.detailed_errors,
        stderr_errors: args.stderr_errors,
        max_body_size: args.max_body_size,
        shutdown: shutdown.clone(),
    };
    let mut python = args.python.clone();
    if python.chdir.is_none() {
        // wfastcgi runs the app from its folder; so does pyfcgi when it knows the folder.
        python.chdir.clone_from(&args.app_root);
    }
    // Restart on file changes: wfastcgi's default regex when the app folder is known (IIS),
    // or whatever --restart-regex says; an empty regex disables it.
    let restart_regex = match &args.restart_regex {
        Some(r) if r.is_empty() => None,
        Some(r) => Some(r.clone()),
        None if args.app_root.is_some() || connected => Some(DEFAULT_RESTART_REGEX.to_owned()),
        None => None,
    };
    let watchers = WatcherSlot::default();
    let spec = args.app.clone().or_else(|| args.app_option.clone());
    if spec.is_none() && args.app_root.is_none() {
        // Under IIS without --app-root: the first request names the app's folder, and
        // everything (settings, log file, Python, the app) is set up from it then.
        info!(
            "no application given: it will be set up on the first request from the folder in APPL_PHYSICAL_PATH (IIS), as with --app-root"
        );
        let plan = crate::lazy::Plan {
            shutdown: shutdown.clone(),
            watchers: watchers.clone(),
            has_log_file: args.log_file.is_some(),
            connected,
        };
        return serve_lazy(rt, args, plan, watchers, shutdown);
    }
    match crate::python_home::ensure_loaded(&python.hints(spec.as_deref())) {
        Ok(found) => info!("python: {} ({})", found.library.display(), found.source),
        Err(nf) => return serve_without_python(rt, args, &nf),
    }
    let app = match &spec {
        Some(spec) => crate::python::load(spec, &python, &args.app_env)?,
        None if args.app_root.is_some() => bail!(
            "no application: --app-root {} has no WSGI_HANDLER in its web.config and no APP was given",
            args.app_root
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        ),
        None => unreachable!("no app and no --app-root is served by serve_lazy"),
    };
    if is_supervised_worker() && matches!(app, AppState::Failed { .. }) {
        // A worker that cannot import the app must not serve 500s: the supervisor keeps the
        // workers it has (a rolling restart stops) or gives up after --crash-limit.
        bail!("the application failed to load (see above): this worker exits");
    }
    let watch_root = args.app_root.clone().or_else(|| {
        // An explicit --restart-regex without an app folder watches the working directory.
        args.restart_regex
            .as_ref()
            .filter(|r| !r.is_empty())
            .and_then(|_| std::env::current_dir().ok())
    });
    if let (Some(root), Some(regex)) = (&watch_root, &restart_regex) {
        watchers.start(root, regex, shutdown.clone());
    }
    let on_root: Option<pyfcgi_python::OnRoot> = match (&watch_root, restart_regex) {
        (None, Some(regex)) => {
            let (watchers, shutdown) = (watchers.clone(), shutdown.clone());
            Some(Box::new(move |root: &Path| {
                watchers.start(root, &regex, shutdown.clone());
            }))
        }
        _ => None,
    };
    let binding = AppBinding {
        root: args.app_root.clone(),
        on_root,
    };
    let (app, binding) = match asgi_app(&app, args.interface) {
        Some(obj) => match start_asgi(
            obj,
            &args,
            (connected || is_supervised_worker()).then(|| shutdown.clone()),
        ) {
            Ok(host) => return serve_asgi(rt, args, host, binding, shutdown, watchers),
            Err(detail) if is_supervised_worker() => {
                bail!("{detail}\nThis worker exits.")
            }
            Err(detail) => {
                error!(
                    "{detail}\nEvery request will be answered 500; fix the application and restart."
                );
                (AppState::Failed { detail }, binding)
            }
        },
        None => (app, binding),
    };
    let (handler, pool) = PythonHandler::start(threads, app, cfg, binding)
        .context("cannot start the Python worker threads")?;
    info!(
        app = spec
            .as_deref()
            .unwrap_or("(from web.config on the first request)"),
        threads, "serving a WSGI application"
    );
    let handler = Arc::new(MaxRequests::new(
        handler,
        args.max_requests,
        shutdown.clone(),
    ));
    let outcome = rt.block_on(serve_async(args, Arc::clone(&handler), shutdown));
    drop(handler);
    drop(watchers);
    if matches!(
        outcome,
        Ok(ServeOutcome::Drained | ServeOutcome::StreamClosed)
    ) {
        // Every connection is closed, so nothing is queued: the workers exit once the job
        // channel closes.
        pool.join();
    }
    outcome
}

/// The app to serve with ASGI, per `--interface`.
#[cfg(feature = "python")]
pub(crate) fn asgi_app(app: &AppState, interface: Interface) -> Option<pyo3::Py<pyo3::PyAny>> {
    let AppState::Loaded(obj) = app else {
        return None;
    };
    pyo3::Python::attach(|py| match interface {
        Interface::Wsgi => None,
        Interface::Asgi => Some(obj.clone_ref(py)),
        Interface::Auto => match pyfcgi_python::asgi::is_asgi_app(py, obj.bind(py)) {
            Ok(true) => Some(obj.clone_ref(py)),
            Ok(false) => None,
            Err(e) => {
                warn!(
                    "cannot tell whether the app is ASGI ({e}); serving it as WSGI (use --interface)"
                );
                None
            }
        },
    })
}

#[cfg(feature = "python")]
fn start_asgi(
    obj: pyo3::Py<pyo3::PyAny>,
    args: &ServeArgs,
    stuck: Option<CancellationToken>,
) -> Result<pyfcgi_python::asgi::AsgiHost, String> {
    let cfg = pyfcgi_python::asgi::AsgiConfig {
        stuck,
        ..asgi_config(args)
    };
    pyfcgi_python::asgi::AsgiHost::start(obj, cfg).map_err(|e| e.to_string())
}

#[cfg(feature = "python")]
pub(crate) fn asgi_config(args: &ServeArgs) -> pyfcgi_python::asgi::AsgiConfig {
    use pyfcgi_python::asgi::{AsgiConfig, Lifespan, LoopKind};
    AsgiConfig {
        script_name: args.script_name.clone(),
        url_scheme: args.url_scheme.clone(),
        lifespan: match args.lifespan {
            LifespanArg::Auto => Lifespan::Auto,
            LifespanArg::On => Lifespan::On,
            LifespanArg::Off => Lifespan::Off,
        },
        detailed_errors: args.detailed_errors,
        request_timeout: (args.request_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.request_timeout)),
        stuck: None,
        send_window: usize::try_from(args.send_window).unwrap_or(usize::MAX),
        loop_kind: match args.event_loop {
            LoopArg::Auto => LoopKind::Auto,
            LoopArg::Asyncio => LoopKind::Asyncio,
            LoopArg::Uvloop => LoopKind::Uvloop,
        },
    }
}

/// Serves the app set up from the first request's folder (IIS without `--app-root`).
#[cfg(feature = "python")]
fn serve_lazy(
    rt: &tokio::runtime::Runtime,
    args: ServeArgs,
    plan: crate::lazy::Plan,
    watchers: WatcherSlot,
    shutdown: CancellationToken,
) -> anyhow::Result<ServeOutcome> {
    let grace = std::time::Duration::from_secs_f64(args.graceful_timeout.max(1.0));
    let (lazy, finisher) = crate::lazy::LazyApp::new(args.max_body_size, plan);
    let handler = Arc::new(lazy);
    let outcome = rt.block_on(serve_async(args, Arc::clone(&handler), shutdown));
    drop(handler);
    drop(watchers);
    let drained = matches!(
        outcome,
        Ok(ServeOutcome::Drained | ServeOutcome::StreamClosed)
    );
    if finisher.finish(if drained { grace } else { Duration::ZERO }) {
        return Err(NoPython.into());
    }
    outcome
}

/// Serves an ASGI app until shutdown, then runs its lifespan shutdown.
#[cfg(feature = "python")]
fn serve_asgi(
    rt: &tokio::runtime::Runtime,
    args: ServeArgs,
    host: pyfcgi_python::asgi::AsgiHost,
    binding: AppBinding,
    shutdown: CancellationToken,
    watchers: WatcherSlot,
) -> anyhow::Result<ServeOutcome> {
    let admission = pyfcgi_python::Admission::new(binding, args.max_body_size);
    info!(
        app = args
            .app
            .as_deref()
            .or(args.app_option.as_deref())
            .unwrap_or_default(),
        "serving an ASGI application"
    );
    let grace = std::time::Duration::from_secs_f64(args.graceful_timeout.max(1.0));
    let handler = Arc::new(MaxRequests::new(
        host.handler(admission),
        args.max_requests,
        shutdown.clone(),
    ));
    let outcome = rt.block_on(serve_async(args, Arc::clone(&handler), shutdown));
    drop(handler);
    drop(watchers);
    host.stop(grace);
    outcome
}

/// No usable Python: the diagnosis goes to the log (and the Windows event log); the pending
/// request (IIS sends one as it starts the process) gets a 500 page saying what to fix, then
/// the process exits with [`crate::python_home::EXIT_NO_PYTHON`].
#[cfg(feature = "python")]
fn serve_without_python(
    rt: &tokio::runtime::Runtime,
    mut args: ServeArgs,
    nf: &crate::python_home::NotFound,
) -> anyhow::Result<ServeOutcome> {
    let diagnosis = nf.diagnosis();
    error!("{diagnosis}");
    #[cfg(windows)]
    crate::python_home::report_to_event_log(&diagnosis);
    let shutdown = CancellationToken::new();
    let handler = MaxRequests::new(ErrorPage(nf.page()), 1, shutdown.clone());
    // Answer promptly and go: IIS starts a new process for the next request.
    args.graceful_timeout = args.graceful_timeout.min(10.0);
    let _ = rt.block_on(serve_async(args, Arc::new(handler), shutdown));
    Err(NoPython.into())
}

/// The error that makes `serve` exit with EXIT_NO_PYTHON.
#[cfg(feature = "python")]
#[derive(Debug)]
pub struct NoPython;

#[cfg(feature = "python")]
impl std::fmt::Display for NoPython {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("exiting: no usable Python (see the diagnosis above)")
    }
}

#[cfg(feature = "python")]
impl std::error::Error for NoPython {}

/// Answers every request with a fixed 500 page.
#[cfg(feature = "python")]
struct ErrorPage(String);

#[cfg(feature = "python")]
impl pyfcgi_server::Handler for ErrorPage {
    async fn handle(
        &self,
        mut request: pyfcgi_server::Request,
        mut response: pyfcgi_server::ResponseWriter,
    ) {
        // Drain the body so the web server is not left blocked writing it.
        while let Ok(Some(_)) = request.body.chunk().await {}
        let page = format!(
            "Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{}",
            self.0.len(),
            self.0
        );
        if response.write(bytes::Bytes::from(page)).await.is_ok() {
            let _ = response.end(0).await;
        }
    }
}

async fn serve_async<H: pyfcgi_server::Handler>(
    args: ServeArgs,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<ServeOutcome> {
    let allow = match &args.web_server_addrs {
        Some(v) => parse_web_server_addrs(v)
            .context("invalid --web-server-addrs / FCGI_WEB_SERVER_ADDRS")?,
        None => Vec::new(),
    };
    let bind = if let Some(b) = &args.bind {
        b.parse::<Bind>()?
    } else if let Some(fd) = systemd_socket() {
        Bind::Fd(fd)
    } else {
        if inspect_stdin().is_none() {
            bail!(
                "no --bind given and standard input is not a socket (nor IIS's named pipe); use e.g. --bind 127.0.0.1:9000 or --bind unix:/run/pyfcgi.sock"
            );
        }
        Bind::Fd(0)
    };
    let listener = Listener::bind(&bind, &unix_socket_options(&args)?, allow)
        .await
        .with_context(|| format!("cannot open transport {bind}"))?;
    let connected = listener.is_connected_stream();
    let limits = Limits {
        max_params_bytes: args.max_params_bytes,
        max_params_pairs: args.max_params,
        max_requests_per_conn: args.max_requests_per_conn.max(1),
        multiplex: !args.no_multiplex,
        max_conns: args.max_conns.max(1),
        answer_unknown_type: true,
    };
    let idle = seconds("idle-timeout", args.idle_timeout)?;
    // Metrics when someone reads them (the status path, the supervisor); the access log.
    let mut observers: Vec<Arc<dyn pyfcgi_server::observe::Observer>> = Vec::new();
    if args.status_path.is_some() || args.status_bind.is_some() || is_supervised_worker() {
        observers.push(Arc::clone(crate::metrics::global()) as _);
    }
    if let Some(target) = &args.access_log {
        let log = crate::metrics::AccessLog::open(target, &args.access_log_format)?;
        observers.push(Arc::new(log));
    }
    let observer: Option<Arc<dyn pyfcgi_server::observe::Observer>> = match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(crate::metrics::Observers(observers))),
    };
    let config = ServerConfig {
        conn: ConnConfig {
            limits,
            idle_timeout: (!connected && !idle.is_zero()).then_some(idle),
            read_timeout: (args.read_timeout > 0.0)
                .then(|| Duration::from_secs_f64(args.read_timeout)),
            align_records: args.align_records,
            body: BodyConfig {
                queue: 8,
                max_memory: usize::try_from(args.max_body_memory).unwrap_or(usize::MAX),
                spool_dir: args.spool_dir.as_deref().map(Arc::from),
            },
            observer,
            trusted_proxies: trusted_proxies(&args.trusted_proxy),
            ..ConnConfig::default()
        },
        max_conns: args.max_conns.max(1),
        graceful_timeout: seconds("graceful-timeout", args.graceful_timeout)?,
    };
    spawn_signal_watcher(shutdown.clone())?;
    info!(
        pid = std::process::id(),
        "pyfcgi {} starting",
        env!("CARGO_PKG_VERSION")
    );
    crate::metrics::set_ready();
    #[cfg(unix)]
    crate::supervisor::notify_ready();
    if is_supervised_worker() {
        crate::metrics::spawn_stats_pusher();
    }
    let outcome = match &args.status_path {
        Some(path) => {
            let handler = Arc::new(crate::metrics::StatusHandler::new(handler, path.clone()));
            pyfcgi_server::serve(listener, handler, config, shutdown).await?
        }
        None => pyfcgi_server::serve(listener, handler, config, shutdown).await?,
    };
    if is_supervised_worker() {
        // The last counters, so the supervisor's totals keep every request served here.
        let _ = crate::metrics::push_stats();
    }
    info!(?outcome, "pyfcgi stopped");
    Ok(outcome)
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
#[cfg(unix)]
fn spawn_signal_watcher(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if first {
                info!(
                    signal = name,
                    "shutting down gracefully (send again to exit at once)"
                );
                shutdown.cancel();
                first = false;
            } else {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(i32::from(EXIT_GRACE_TIMEOUT));
            }
        }
    });
    Ok(())
}

/// IIS's `_FCGI_SHUTDOWN_EVENT_` (research/iis-fastcgi.md §1.7), or Ctrl+C in a console,
/// starts a graceful shutdown; a second Ctrl+C exits at once.
#[cfg(windows)]
fn spawn_signal_watcher(shutdown: CancellationToken) -> anyhow::Result<()> {
    if pyfcgi_server::process::watch_shutdown_event(shutdown.clone())? {
        info!("watching IIS's shutdown event");
    }
    tokio::spawn(async move {
        let mut first = true;
        // Without a console (as under IIS) this never fires.
        while tokio::signal::ctrl_c().await.is_ok() {
            if first {
                info!("Ctrl+C: shutting down gracefully (press again to exit at once)");
                shutdown.cancel();
                first = false;
            } else {
                warn!("second Ctrl+C: exiting now");
                std::process::exit(i32::from(EXIT_GRACE_TIMEOUT));
            }
        }
    });
    Ok(())
}
