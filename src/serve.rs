//! `pyfcgi serve`: options, transport selection, signals, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use pyfcgi_proto::server::Limits;
use pyfcgi_python::{PythonHandler, WsgiConfig};
use pyfcgi_server::body::BodyConfig;
use pyfcgi_server::builtin::{Builtin, BuiltinHandler};
use pyfcgi_server::conn::ConnConfig;
use pyfcgi_server::serve::ServeOutcome;
use pyfcgi_server::transport::parse_web_server_addrs;
use pyfcgi_server::transport::unix::{FdKind, inspect_fd};
use pyfcgi_server::{Bind, Listener, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::logging;

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

    #[command(flatten)]
    pub python: PythonArgs,

    /// Python worker threads (default: 1 when stdin is a connected stream, as under IIS,
    /// where requests arrive one at a time; otherwise 8).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Largest request body accepted; a larger declared Content-Length gets 413 without
    /// calling the application. Suffixes k, m, g (powers of 1024).
    #[arg(long, default_value = "1g", value_name = "SIZE", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Request-body bytes held in memory per request before spooling to a temp file.
    #[arg(long, default_value = "1m", value_name = "SIZE", value_parser = parse_size)]
    pub max_body_memory: u64,

    /// Put the traceback in 500 pages (for local debugging only: it shows code to visitors).
    #[arg(long)]
    pub detailed_errors: bool,

    /// Force wsgi.url_scheme (default: https when the web server sends HTTPS=on, else
    /// REQUEST_SCHEME, else http).
    #[arg(long, value_name = "SCHEME", value_parser = ["http", "https"])]
    pub url_scheme: Option<String>,

    /// The mount prefix of the app: becomes SCRIPT_NAME and is stripped from PATH_INFO.
    #[arg(long, value_name = "PREFIX", value_parser = parse_script_name)]
    pub script_name: Option<String>,
    /// Where to listen: HOST:PORT, tcp:HOST:PORT, unix:PATH, or fd:N (an inherited socket).
    /// Default: standard input, when the web server passed a socket there.
    #[arg(long, short = 'b', value_name = "ADDR")]
    pub bind: Option<String>,

    /// Permissions of a new unix socket file, in octal (e.g. 660).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Serve a built-in handler instead of an application: hello (fixed 13-byte response),
    /// echo (the request body back) or env (the request params as text).
    #[arg(long, value_name = "NAME")]
    pub builtin: Option<Builtin>,

    /// Most connections served at once (reported as FCGI_MAX_CONNS).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_conns: usize,

    /// Most requests in flight on one multiplexed connection (FCGI_MAX_REQS is this times
    /// --max-conns).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_requests_per_conn: usize,

    /// Refuse a second concurrent request on one connection (FCGI_MPXS_CONNS=0).
    #[arg(long)]
    pub no_multiplex: bool,

    /// Largest FCGI_PARAMS block of one request, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_params_bytes: usize,

    /// Most params (name-value pairs) in one request.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_params: usize,

    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub graceful_timeout: f64,

    /// Close a connection with no request in flight after this many idle seconds (0 = never).
    /// Not applied to a connection inherited on stdin.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,

    /// Threads for socket I/O (1 = a single-threaded runtime, the fastest on small machines).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub io_threads: usize,

    /// Pad every response record to a multiple of 8 bytes (FastCGI spec §3.3 recommendation;
    /// no web server needs it).
    #[arg(long)]
    pub align_records: bool,

    /// Comma-separated IP addresses allowed to connect over TCP (default: from the
    /// FCGI_WEB_SERVER_ADDRS environment variable; empty = any).
    #[arg(long, env = "FCGI_WEB_SERVER_ADDRS", value_name = "IPS")]
    pub web_server_addrs: Option<String>,

    /// Write logs to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace); PYFCGI_LOG overrides with a full filter.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
}

/// Interpreter options shared by `serve` and `check`.
#[derive(Debug, Args, Clone)]
pub struct PythonArgs {
    /// Virtual environment to use (default: $VIRTUAL_ENV, else a pyvenv.cfg, .venv or venv
    /// found beside or above the application).
    #[arg(long, value_name = "PATH")]
    pub venv: Option<PathBuf>,

    /// Directory to put first on sys.path (repeatable; PYTHONPATH is honoured too).
    #[arg(long, value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,

    /// Change to this directory before loading the application.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
}

/// Parses `10`, `64k`, `1m`, `2g` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 1048576, 512k, 10m or 1g"))
}

fn parse_script_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "/" {
        return Ok(String::new());
    }
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with '/', like /myapp"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let s = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 660"))
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds, got {v}"))
}

pub fn main(args: ServeArgs) -> ExitCode {
    match &args.log_file {
        Some(path) => {
            if let Err(e) = logging::init_file(path, &args.log_level) {
                logging::init_stderr(&args.log_level);
                error!("{e:#}");
                return ExitCode::from(EXIT_STARTUP);
            }
        }
        None => logging::init_stderr(&args.log_level),
    }
    match run(args) {
        Ok(ServeOutcome::TimedOut) => ExitCode::from(EXIT_GRACE_TIMEOUT),
        Ok(_) => ExitCode::SUCCESS,
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
    if let Some(builtin) = args.builtin {
        info!(handler = ?builtin, "serving a built-in handler");
        return rt.block_on(serve_async(
            args,
            Arc::new(BuiltinHandler(builtin)),
            CancellationToken::new(),
        ));
    }
    let Some(spec) = args.app.clone() else {
        bail!(
            "nothing to serve: give an application (e.g. `pyfcgi serve myapp:app`) or --builtin hello|echo|env"
        );
    };
    // The transport decides the default thread count, so look at stdin before anything.
    let connected = args.bind.is_none() && matches!(inspect_fd(0), Some(FdKind::Connected { .. }));
    let threads = args.threads.unwrap_or(if connected { 1 } else { 8 }).max(1);
    let shutdown = CancellationToken::new();
    let cfg = WsgiConfig {
        multithread: threads > 1,
        multiprocess: connected,
        url_scheme: args.url_scheme.clone(),
        script_name: args.script_name.clone(),
        detailed_errors: args.detailed_errors,
        max_body_size: args.max_body_size,
        shutdown: shutdown.clone(),
    };
    let app = crate::python::load(&spec, &args.python)?;
    let (handler, pool) = PythonHandler::start(threads, app, cfg)
        .context("cannot start the Python worker threads")?;
    info!(app = %spec, threads, "serving a WSGI application");
    let handler = Arc::new(handler);
    let outcome = rt.block_on(serve_async(args, Arc::clone(&handler), shutdown));
    drop(handler);
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
    } else {
        if inspect_fd(0).is_none() {
            bail!(
                "no --bind given and standard input is not a socket; use e.g. --bind 127.0.0.1:9000 or --bind unix:/run/pyfcgi.sock"
            );
        }
        Bind::Fd(0)
    };
    let listener = Listener::bind(&bind, args.socket_mode, allow)
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
    let config = ServerConfig {
        conn: ConnConfig {
            limits,
            idle_timeout: (!connected && !idle.is_zero()).then_some(idle),
            align_records: args.align_records,
            body: BodyConfig {
                queue: 8,
                max_memory: usize::try_from(args.max_body_memory).unwrap_or(usize::MAX),
            },
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
    let outcome = pyfcgi_server::serve(listener, handler, config, shutdown).await?;
    info!(?outcome, "pyfcgi stopped");
    Ok(outcome)
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
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
