//! `pyfcgi serve`: settings to a running server — the transport opened first, then the
//! application (see startup.rs), signals, exit codes.
//!
//! Failures follow one rule (docs/configuration.md, "When startup fails"): outside IIS a
//! process that cannot serve what it was asked to exits at once with a documented code, with
//! and without `--workers`; on IIS's stream (a connection on stdin) it stays up and answers
//! every request with a 500 page saying what kind of problem it is and where the details
//! are, until a watched file (web.config, the app's .py files) changes or IIS stops it. IIS
//! then starts a fresh process; exiting instead would trip IIS's rapid-fail protection and
//! take the whole application pool down with a generic 503.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use pyfcgi_proto::server::Limits;
use pyfcgi_server::body::BodyConfig;
use pyfcgi_server::builtin::BuiltinHandler;
use pyfcgi_server::conn::ConnConfig;
use pyfcgi_server::serve::ServeOutcome;
use pyfcgi_server::transport::{StdinKind, inspect_stdin};
use pyfcgi_server::{Listener, ServerConfig};
use pyfcgi_settings::{Inputs, Settings};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::exit;
use crate::lifecycle::MaxRequests;
use crate::startup::{self, Failure, LogPlace};

/// True when this process serves IIS's stream: one connection on stdin, no `--bind`.
fn on_iis_stream(s: &Settings) -> bool {
    s.bind.is_none() && matches!(inspect_stdin(), Some(StdinKind::Connected))
}

pub fn main(args: Vec<pyfcgi_settings::Arg>) -> ExitCode {
    pyfcgi_status::set_build_info(crate::build_info());
    let inputs = startup::inputs(args, None);
    let res = startup::resolve(&inputs);
    let iis = on_iis_stream(&res.settings);
    let log = startup::init_logging(&res, iis);
    if res.settings.log_file.is_some() && log != LogPlace::Configured && !iis {
        // Outside IIS a log file that cannot be written is a startup error (said on stderr):
        // running on with the log going elsewhere would hide it.
        return ExitCode::from(exit::STARTUP);
    }
    startup::log_resolution(&res, "");
    if !res.errors.is_empty() {
        let failure = Failure::settings(&res);
        failure.report();
        if iis && !is_supervised_worker() {
            return explain_until_fixed(&res.settings, &failure, log);
        }
        return ExitCode::from(failure.exit_code());
    }
    let settings = res.settings;
    if let Some(n) = settings.workers.or(settings.reload.then_some(1))
        && !is_supervised_worker()
    {
        return supervise(&settings, n);
    }
    match run(&settings, inputs, log) {
        Ok(ServeOutcome::TimedOut) => ExitCode::from(exit::GRACE_TIMEOUT),
        Ok(_) => ExitCode::SUCCESS,
        Err(Exit(code)) => ExitCode::from(code),
    }
}

/// How `run` ends short of serving: the exit code, the diagnosis already logged.
#[derive(Debug)]
pub struct Exit(pub u8);

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        error!("{e:#}");
        Self(exit::STARTUP)
    }
}

fn runtime(io_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    if io_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")
}

fn run(settings: &Settings, inputs: Inputs, log: LogPlace) -> Result<ServeOutcome, Exit> {
    let rt = runtime(settings.io_threads)?;
    if let Some(addr) = &settings.status_bind
        && !is_supervised_worker()
    {
        // Up before the app is imported, to say "not ready" meanwhile.
        pyfcgi_status::http::start(addr, pyfcgi_status::own_source())
            .map_err(anyhow::Error::from)?;
    }
    // The transport first: a bad address is reported before a slow import, not after.
    let listener = rt.block_on(crate::listen::open_listener(settings))?;
    let shutdown = CancellationToken::new();
    if let Some(builtin) = settings.builtin {
        info!(handler = ?builtin, "serving a built-in handler");
        let handler = MaxRequests::new(
            BuiltinHandler(builtin),
            settings.max_requests,
            shutdown.clone(),
        );
        return Ok(rt.block_on(serve_async(settings, listener, Arc::new(handler), shutdown))?);
    }
    #[cfg(not(feature = "python"))]
    {
        let _ = (inputs, log);
        Err(anyhow::anyhow!(
            "this pyfcgi was built without Python (cargo feature `python`): it can only serve --builtin hello|echo|env"
        )
        .into())
    }
    #[cfg(feature = "python")]
    run_app(&rt, settings, inputs, listener, shutdown, log)
}

#[cfg(feature = "python")]
fn run_app(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    inputs: Inputs,
    listener: Listener,
    shutdown: CancellationToken,
    log: LogPlace,
) -> Result<ServeOutcome, Exit> {
    use startup::Started;
    let connected = listener.is_connected_stream();
    let ctx = startup::Ctx {
        shutdown: shutdown.clone(),
        watchers: crate::lifecycle::WatcherSlot::default(),
        connected,
        supervised: is_supervised_worker(),
        first_request: false,
    };
    if settings.app.is_none() && settings.app_root.is_none() && connected {
        // Under IIS without --app-root: the first request names the app's folder, and
        // everything (settings, log file, Python, the app) is set up from it then.
        info!(
            "no application given: it will be set up on the first request from the folder in APPL_PHYSICAL_PATH (IIS), as with --app-root"
        );
        let plan = crate::lazy::Plan {
            ctx: ctx.clone(),
            inputs,
            has_log_file: settings.log_file.is_some() && log == LogPlace::Configured,
        };
        return serve_lazy(rt, settings, listener, plan);
    }
    let started = match startup::start_app(settings, &ctx) {
        Ok(s) => s,
        Err(failure) => {
            // Under IIS the diagnosis must land in a file (stderr goes nowhere there).
            let log = if connected {
                startup::failure_log(log, settings)
            } else {
                log
            };
            failure.report();
            if !connected || ctx.supervised {
                // Outside IIS: say it and go, so systemd (or the supervisor) sees it. A
                // supervised worker never answers 500s for a failed import: the supervisor
                // keeps the workers that serve and retries.
                return Err(Exit(failure.exit_code()));
            }
            match failure {
                Failure::NoPython(nf) => return serve_without_python(rt, settings, listener, &nf),
                Failure::Load(detail) => {
                    error!(
                        "every request will be answered 500 until a watched file changes (web.config, the app's .py files) or IIS recycles the process"
                    );
                    startup::failed_wsgi(settings, &ctx, detail)?
                }
                other => {
                    startup::watch_for_restart(settings, &ctx);
                    let page = other.page(log);
                    return Ok(rt.block_on(serve_async(
                        settings,
                        listener,
                        Arc::new(ErrorPage(page)),
                        shutdown,
                    ))?);
                }
            }
        }
    };
    let grace = settings
        .graceful_timeout
        .max(std::time::Duration::from_secs(1));
    match started {
        Started::Wsgi(handler, pool) => {
            let outcome = serve_limited(rt, settings, listener, handler, shutdown);
            drop(ctx);
            if matches!(
                outcome,
                Ok(ServeOutcome::Drained | ServeOutcome::StreamClosed)
            ) {
                // Every connection is closed, so nothing is queued: the workers exit once
                // the job channel closes.
                pool.join();
            }
            Ok(outcome?)
        }
        Started::Asgi(handler, host) => {
            let outcome = serve_limited(rt, settings, listener, handler, shutdown);
            drop(ctx);
            host.stop(grace);
            Ok(outcome?)
        }
    }
}

/// Serves `handler` under `--max-requests` until shutdown; the handler is dropped before
/// this returns, so the app host can be stopped after.
#[cfg(feature = "python")]
fn serve_limited<H: pyfcgi_server::Handler>(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    listener: Listener,
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<ServeOutcome> {
    let handler = Arc::new(MaxRequests::new(
        handler,
        settings.max_requests,
        shutdown.clone(),
    ));
    rt.block_on(serve_async(settings, listener, handler, shutdown))
}

/// Serves the app set up from the first request's folder (IIS without `--app-root`).
#[cfg(feature = "python")]
fn serve_lazy(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    listener: Listener,
    plan: crate::lazy::Plan,
) -> Result<ServeOutcome, Exit> {
    let grace = settings
        .graceful_timeout
        .max(std::time::Duration::from_secs(1));
    let shutdown = plan.ctx.shutdown.clone();
    let (lazy, finisher) = crate::lazy::LazyApp::new(settings.max_body_size, plan);
    let handler = Arc::new(lazy);
    let outcome = rt.block_on(serve_async(
        settings,
        listener,
        Arc::clone(&handler),
        shutdown,
    ));
    drop(handler);
    let drained = matches!(
        outcome,
        Ok(ServeOutcome::Drained | ServeOutcome::StreamClosed)
    );
    if finisher.finish(if drained {
        grace
    } else {
        std::time::Duration::ZERO
    }) {
        return Err(Exit(crate::exit::NO_PYTHON));
    }
    Ok(outcome?)
}

/// No usable Python under IIS: the pending request (IIS sends one as it starts the process)
/// gets a 500 page saying what to fix, then the process exits with
/// [`crate::exit::NO_PYTHON`] (a new process may find a fixed installation).
#[cfg(feature = "python")]
fn serve_without_python(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    listener: Listener,
    nf: &pyfcgi_pyhome::NotFound,
) -> Result<ServeOutcome, Exit> {
    let shutdown = CancellationToken::new();
    let handler = MaxRequests::new(ErrorPage(nf.page()), 1, shutdown.clone());
    // Answer promptly and go: IIS starts a new process for the next request.
    let mut settings = settings.clone();
    settings.graceful_timeout = settings
        .graceful_timeout
        .min(std::time::Duration::from_secs(10));
    let _ = rt.block_on(serve_async(
        &settings,
        listener,
        Arc::new(handler),
        shutdown,
    ));
    Err(Exit(crate::exit::NO_PYTHON))
}

/// Invalid settings under IIS: every request gets the page saying so until web.config (or
/// another watched file) changes or IIS stops the process; then exit with
/// [`exit::SETTINGS`].
fn explain_until_fixed(settings: &Settings, failure: &Failure, log: LogPlace) -> ExitCode {
    let page = failure.page(log);
    let result = (|| -> anyhow::Result<()> {
        let rt = runtime(1)?;
        let listener = rt.block_on(crate::listen::open_listener(settings))?;
        let shutdown = CancellationToken::new();
        let _watcher = settings.app_root.as_deref().and_then(|root| {
            crate::lifecycle::RestartWatcher::start(
                root,
                pyfcgi_iis::webconfig::DEFAULT_RESTART_REGEX,
                shutdown.clone(),
            )
            .map_err(|e| warn!("{e:#}"))
            .ok()
        });
        error!(
            "every request is answered 500 until the settings are fixed (a change to web.config restarts pyfcgi)"
        );
        rt.block_on(serve_async(
            settings,
            listener,
            Arc::new(ErrorPage(page)),
            shutdown,
        ))?;
        Ok(())
    })();
    if let Err(e) = result {
        error!("{e:#}");
    }
    ExitCode::from(failure.exit_code())
}

/// Answers every request with a fixed 500 page.
pub struct ErrorPage(pub String);

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
    settings: &Settings,
    listener: Listener,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<ServeOutcome> {
    let connected = listener.is_connected_stream();
    if settings.io_threads <= 1 {
        // This thread is the only I/O thread: it must not preempt the app's threads on every
        // request's arrival (pyfcgi_server::sched explains).
        pyfcgi_server::sched::io_thread();
    }
    let limits = Limits {
        max_params_bytes: settings.max_params_bytes,
        max_params_pairs: settings.max_params,
        max_requests_per_conn: settings.max_requests_per_conn,
        multiplex: !settings.no_multiplex,
        max_conns: settings.max_conns,
        answer_unknown_type: true,
    };
    // Metrics when someone reads them (the status path, the supervisor); the access log.
    let mut observers: Vec<Arc<dyn pyfcgi_server::observe::Observer>> = Vec::new();
    if settings.status_path.is_some() || settings.status_bind.is_some() || is_supervised_worker() {
        if let Some(path) = &settings.status_path {
            // A scraper's requests are not traffic: they stay out of the counts and latency.
            pyfcgi_status::global().exclude_path(path);
        }
        observers.push(Arc::clone(pyfcgi_status::global()) as _);
    }
    if let Some(target) = &settings.access_log {
        let log = pyfcgi_status::AccessLog::open(target, settings.access_format())?
            .with_worker(worker_id());
        observers.push(Arc::new(log));
    }
    let observer: Option<Arc<dyn pyfcgi_server::observe::Observer>> = match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(pyfcgi_status::Observers(observers))),
    };
    // Under the supervisor: kept connections are handed over when this worker retires.
    #[cfg(unix)]
    let handover = if is_supervised_worker() {
        pyfcgi_server::handoff::Handover::from_env().map(Arc::new)
    } else {
        None
    };
    let config = ServerConfig {
        conn: ConnConfig {
            limits,
            idle_timeout: settings.idle_timeout.filter(|_| !connected),
            read_timeout: settings.read_timeout,
            params_timeout: settings.params_timeout,
            align_records: settings.align_records,
            body: BodyConfig {
                queue: 8,
                max_memory: usize::try_from(settings.max_body_memory).unwrap_or(usize::MAX),
                spool_dir: settings.spool_dir.as_deref().map(Arc::from),
            },
            observer,
            trusted_proxies: settings.trusted_proxy.clone().map(Arc::new),
            #[cfg(unix)]
            handover: handover.clone(),
            ..ConnConfig::default()
        },
        max_conns: settings.max_conns,
        graceful_timeout: settings.graceful_timeout,
    };
    // `shutdown` is what the app side cancels (--max-requests, a stuck request, a changed
    // file); a supervised worker asks its supervisor to be retired first, and serves until
    // `serve_stop` (SIGTERM, or the supervisor's answer).
    #[cfg(unix)]
    let serve_stop = match &handover {
        Some(h) => {
            let serve_stop = CancellationToken::new();
            pyfcgi_server::handoff::link_stops(Arc::clone(h), shutdown.clone(), serve_stop.clone());
            serve_stop
        }
        None => shutdown.clone(),
    };
    #[cfg(not(unix))]
    let serve_stop = shutdown.clone();
    spawn_signal_watcher(serve_stop.clone())?;
    info!(
        pid = std::process::id(),
        "pyfcgi {} starting",
        env!("CARGO_PKG_VERSION")
    );
    pyfcgi_status::set_ready();
    #[cfg(unix)]
    pyfcgi_supervisor::message::notify_ready();
    #[cfg(unix)]
    if is_supervised_worker() {
        pyfcgi_supervisor::message::spawn_stats_pusher();
    }
    let outcome = match &settings.status_path {
        Some(path) => {
            let handler = Arc::new(pyfcgi_status::StatusHandler::new(handler, path.clone()));
            pyfcgi_server::serve(listener, handler, config, serve_stop).await?
        }
        None => pyfcgi_server::serve(listener, handler, config, serve_stop).await?,
    };
    #[cfg(unix)]
    if is_supervised_worker() {
        // The last counters, so the supervisor's totals keep every request served here.
        let _ = pyfcgi_supervisor::message::push_stats();
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
                if is_supervised_worker() {
                    // The supervisor retires workers this way (a rolling restart, a limit,
                    // its own stop); the hint below is for a person at a terminal.
                    info!(
                        signal = name,
                        "stopping at the supervisor's request: finishing the requests in progress"
                    );
                } else {
                    info!(
                        signal = name,
                        "shutting down gracefully (send again to exit at once)"
                    );
                }
                shutdown.cancel();
                first = false;
            } else {
                warn!(signal = name, "second signal: exiting now");
                std::process::exit(i32::from(exit::GRACE_TIMEOUT));
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
                std::process::exit(i32::from(exit::GRACE_TIMEOUT));
            }
        }
    });
    Ok(())
}

/// `--workers N`: the supervisor (Unix; IIS starts its own processes on Windows).
#[cfg(unix)]
fn supervise(settings: &Settings, workers: usize) -> ExitCode {
    match supervise_inner(settings, workers) {
        Ok(pyfcgi_supervisor::Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(pyfcgi_supervisor::Outcome::CrashLoop) => ExitCode::from(exit::CRASH_LOOP),
        Ok(pyfcgi_supervisor::Outcome::WorkerFailed(code)) => ExitCode::from(code),
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(exit::STARTUP)
        }
    }
}

/// Opens the shared socket, then runs the supervisor on it; the listener (and a unix socket
/// file) lives until the supervisor is done.
#[cfg(unix)]
fn supervise_inner(
    settings: &Settings,
    workers: usize,
) -> anyhow::Result<pyfcgi_supervisor::Outcome> {
    use pyfcgi_server::transport::StdinKind;
    if settings.bind.is_none()
        && crate::listen::systemd_socket().is_none()
        && matches!(inspect_stdin(), Some(StdinKind::Connected))
    {
        anyhow::bail!(
            "--workers does not apply to a connected stdin (IIS starts one process per instance; set the FastCGI maxInstances instead)"
        );
    }
    if settings.bind.is_none()
        && crate::listen::systemd_socket().is_none()
        && inspect_stdin().is_none()
    {
        anyhow::bail!(
            "--workers needs a socket to share: give --bind (e.g. --bind unix:/run/pyfcgi.sock or --bind 127.0.0.1:9000)"
        );
    }
    let rt = runtime(1)?;
    rt.block_on(async {
        let listener = crate::listen::open_listener(settings).await?;
        let fd = listener
            .listening_fd()
            .context("the transport is not a listening socket")?
            .try_clone_to_owned()
            .context("cannot duplicate the listening socket")?;
        let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        // The workers share the supervisor's socket, handed over as their stdin.
        argv.extend(["--bind".into(), "fd:0".into()]);
        let config = pyfcgi_supervisor::Config {
            workers,
            graceful_timeout: settings.graceful_timeout,
            max_requests: settings.max_requests,
            max_requests_jitter: settings.max_requests_jitter,
            max_rss_mib: settings.max_rss_mib,
            worker_lifetime: settings.worker_lifetime.unwrap_or_default(),
            crash_limit: settings.crash_limit,
            ready_timeout: settings.ready_timeout,
            argv,
            status_path: settings.status_path.is_some(),
            status_bind: settings.status_bind.clone(),
            reload_dirs: if settings.reload {
                reload_dirs(settings)
            } else {
                Vec::new()
            },
            fatal_exit_codes: vec![exit::APP_LOAD, exit::NO_PYTHON],
        };
        let outcome = pyfcgi_supervisor::run(config, fd, &listener.describe()).await?;
        drop(listener);
        Ok(outcome)
    })
}

/// `--reload` watches `--app-root`, else `--chdir`, else the folder of an APP given as a
/// `.py` path, else the working directory.
#[cfg(unix)]
fn reload_dirs(settings: &Settings) -> Vec<std::path::PathBuf> {
    let app_file_dir = settings
        .app
        .as_deref()
        .and_then(|s| s.split_once(':').map(|(f, _)| std::path::Path::new(f)))
        .filter(|f| f.extension().is_some_and(|e| e == "py"))
        .and_then(|f| std::path::absolute(f).ok())
        .and_then(|f| f.parent().map(std::path::Path::to_path_buf));
    settings
        .app_root
        .clone()
        .or_else(|| settings.python.chdir.clone())
        .or(app_file_dir)
        .or_else(|| std::env::current_dir().ok())
        .into_iter()
        .collect()
}

#[cfg(unix)]
fn is_supervised_worker() -> bool {
    pyfcgi_supervisor::message::is_worker()
}

#[cfg(windows)]
fn is_supervised_worker() -> bool {
    false
}

/// The supervisor's id for this worker (`--workers`), for its access-log lines.
#[cfg(unix)]
fn worker_id() -> Option<u64> {
    pyfcgi_supervisor::message::worker_id()
}

#[cfg(windows)]
fn worker_id() -> Option<u64> {
    None
}

#[cfg(windows)]
fn supervise(_settings: &Settings, _workers: usize) -> ExitCode {
    error!(
        "--workers is not available on Windows: under IIS, set the FastCGI application's maxInstances; standalone, run several pyfcgi processes on different ports"
    );
    ExitCode::from(exit::STARTUP)
}
