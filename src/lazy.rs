//! Serving an app that is only known from the first request (under IIS, a handler mapping
//! whose `scriptProcessor` is `pyfcgi.exe` with no `--app-root`): that request's
//! `APPL_PHYSICAL_PATH` names the folder. The process then sets itself up exactly as with
//! `--app-root FOLDER`: the folder's web.config and pyfcgi.toml are read (`WSGI_LOG`,
//! `WSGI_RESTART_FILE_REGEX`, `PYFCGI_*`, the venv, ...), the log file opened, Python found
//! and the app imported. It is then served as WSGI (the worker pool) or ASGI (the event
//! loop), as `--interface` decides, for every later request.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use pyfcgi_python::asgi::{AsgiHandler, AsgiHost};
use pyfcgi_python::{Admission, AppBinding, AppState, PythonHandler, WorkerPool, WsgiConfig};
use pyfcgi_server::{Handler, Request, ResponseWriter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::lifecycle::{DEFAULT_RESTART_REGEX, MaxRequests, WatcherSlot};
use crate::serve::ServeArgs;

/// What the first request's setup needs from the process.
pub struct Plan {
    pub shutdown: CancellationToken,
    pub watchers: WatcherSlot,
    /// A log file was opened at startup (`--log-file`): keep it.
    pub has_log_file: bool,
    /// stdin is IIS's connected stream (one request at a time: one worker thread).
    pub connected: bool,
}

enum Served {
    Wsgi(MaxRequests<PythonHandler>),
    Asgi(MaxRequests<AsgiHandler>),
    /// Python could not be found: the page says what to fix; the process then exits 4.
    NoPython(String),
    /// The setup failed before the app could be imported: every request gets a 500.
    Failed,
}

/// What must be stopped once the server has drained.
enum Running {
    Pool(WorkerPool),
    Host(AsgiHost),
}

#[derive(Default)]
struct Outcome {
    running: Mutex<Option<Running>>,
    no_python: AtomicBool,
}

/// Stops what the first request started, once the server has drained.
pub struct Finisher(Arc<Outcome>);

impl Finisher {
    /// Waits for the WSGI workers, or runs the ASGI lifespan shutdown. True when the process
    /// must exit with [`crate::python_home::EXIT_NO_PYTHON`].
    pub fn finish(self, grace: Duration) -> bool {
        let running = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match running {
            Some(Running::Pool(pool)) => pool.join(),
            Some(Running::Host(host)) => host.stop(grace),
            None => {}
        }
        self.0.no_python.load(Ordering::Acquire)
    }
}

/// The handler: binds to the first request's folder, sets up from it, then hands every
/// request to the WSGI or ASGI handler.
pub struct LazyApp {
    admission: Admission,
    plan: Mutex<Option<Plan>>,
    served: tokio::sync::OnceCell<Served>,
    outcome: Arc<Outcome>,
    shutdown: CancellationToken,
}

const SETUP_FAILED: &[u8] = b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInternal Server Error: the application failed to load. The server log has the details.\n";

impl LazyApp {
    pub fn new(max_body_size: u64, plan: Plan) -> (Self, Finisher) {
        let outcome = Arc::new(Outcome::default());
        let app = Self {
            admission: Admission::new(AppBinding::default(), max_body_size),
            shutdown: plan.shutdown.clone(),
            plan: Mutex::new(Some(plan)),
            served: tokio::sync::OnceCell::new(),
            outcome: Arc::clone(&outcome),
        };
        (app, Finisher(outcome))
    }

    async fn served(&self, root: &Path) -> &Served {
        self.served
            .get_or_init(|| async {
                let plan = self
                    .plan
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let root = root.to_owned();
                let started = tokio::task::spawn_blocking(move || match plan {
                    Some(plan) => set_up(&plan, &root),
                    None => Err(anyhow::anyhow!("the setup was interrupted by an earlier request")),
                })
                .await;
                match started {
                    Ok(Ok((served, running))) => {
                        *self
                            .outcome
                            .running
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = running;
                        served
                    }
                    Ok(Err(e)) => {
                        error!(
                            "{e:#}\nEvery request will be answered 500; fix it and restart (recycle the app pool or touch a watched file)."
                        );
                        Served::Failed
                    }
                    Err(e) => {
                        error!("setting up the application failed: {e}");
                        Served::Failed
                    }
                }
            })
            .await
    }
}

/// Everything `--app-root ROOT` would have done at startup, for the first request's folder.
fn set_up(plan: &Plan, root: &Path) -> anyhow::Result<(Served, Option<Running>)> {
    let (args, sources) = crate::serve_args_for_root(root)
        .with_context(|| format!("reading the settings for {}", root.display()))?;
    if !sources.files.is_empty() {
        info!(files = ?sources.files, overridden_by_env_or_cli = ?sources.shadowed, "settings read from config files (first request)");
    }
    if !plan.has_log_file
        && let Some(path) = &args.log_file
    {
        let rotation = crate::logging::Rotation {
            max_size: args.log_max_size,
            keep: args.log_keep,
        };
        let path = crate::logging::attach_file(path, rotation)?;
        info!(
            root = %root.display(),
            "pyfcgi {} logging to {} (from the application's settings)",
            env!("CARGO_PKG_VERSION"),
            path.display()
        );
    }
    let spec = args.app.clone().or_else(|| args.app_option.clone()).with_context(|| {
        format!(
            "no application for {}: its web.config has no WSGI_HANDLER (read: {:?}); add <add key=\"WSGI_HANDLER\" value=\"package.module.app\"/>",
            root.display(),
            sources.files
        )
    })?;
    let mut python = args.python.clone();
    if python.chdir.is_none() {
        python.chdir = Some(root.to_owned());
    }
    match crate::python_home::ensure_loaded(&python.hints(Some(&spec))) {
        Ok(found) => info!("python: {} ({})", found.library.display(), found.source),
        Err(nf) => {
            let diagnosis = nf.diagnosis();
            error!("{diagnosis}");
            #[cfg(windows)]
            crate::python_home::report_to_event_log(&diagnosis);
            return Ok((Served::NoPython(nf.page()), None));
        }
    }
    let app = crate::python::load(&spec, &python, &args.app_env)?;
    let regex = match &args.restart_regex {
        Some(r) if r.is_empty() => None,
        Some(r) => Some(r.clone()),
        None => Some(DEFAULT_RESTART_REGEX.to_owned()),
    };
    if let Some(regex) = regex {
        plan.watchers.start(root, &regex, plan.shutdown.clone());
    }
    // The folder is bound already (by the outer admission check).
    let binding = || AppBinding {
        root: Some(root.to_owned()),
        on_root: None,
    };
    let limit = args.max_requests;
    if let Some(obj) = crate::serve::asgi_app(&app, args.interface) {
        let cfg = pyfcgi_python::asgi::AsgiConfig {
            stuck: Some(plan.shutdown.clone()),
            ..crate::serve::asgi_config(&args)
        };
        match AsgiHost::start(obj, cfg) {
            Ok(host) => {
                info!(app = %spec, "serving an ASGI application (loaded on the first request)");
                let handler = host.handler(Admission::new(binding(), args.max_body_size));
                let handler = MaxRequests::new(handler, limit, plan.shutdown.clone());
                return Ok((Served::Asgi(handler), Some(Running::Host(host))));
            }
            Err(e) => {
                let detail = e.to_string();
                error!(
                    "{detail}\nEvery request will be answered 500; fix the application and restart."
                );
                let cfg = wsgi_config(&args, 1, plan);
                return serve_wsgi(1, AppState::Failed { detail }, cfg, binding(), limit, plan);
            }
        }
    }
    let threads = args
        .threads
        .unwrap_or(if plan.connected { 1 } else { 8 })
        .max(1);
    let loaded = matches!(app, AppState::Loaded(_));
    let cfg = wsgi_config(&args, threads, plan);
    let served = serve_wsgi(threads, app, cfg, binding(), limit, plan)?;
    if loaded {
        info!(app = %spec, threads, "serving a WSGI application (loaded on the first request)");
    }
    Ok(served)
}

fn wsgi_config(args: &ServeArgs, threads: usize, plan: &Plan) -> WsgiConfig {
    WsgiConfig {
        request_timeout: (args.request_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.request_timeout)),
        exit_when_stuck: true,
        multithread: threads > 1,
        multiprocess: plan.connected,
        url_scheme: args.url_scheme.clone(),
        script_name: args.script_name.clone(),
        detailed_errors: args.detailed_errors,
        stderr_errors: args.stderr_errors,
        max_body_size: args.max_body_size,
        shutdown: plan.shutdown.clone(),
    }
}

fn serve_wsgi(
    threads: usize,
    app: AppState,
    cfg: WsgiConfig,
    binding: AppBinding,
    limit: u64,
    plan: &Plan,
) -> anyhow::Result<(Served, Option<Running>)> {
    let (handler, pool) = PythonHandler::start(threads, app, cfg, binding)
        .context("cannot start the Python worker threads")?;
    let handler = MaxRequests::new(handler, limit, plan.shutdown.clone());
    Ok((Served::Wsgi(handler), Some(Running::Pool(pool))))
}

impl Handler for LazyApp {
    async fn handle(&self, request: Request, response: ResponseWriter) {
        if self.served.get().is_none() {
            // Binds the process to the first request's folder; another app's request, or
            // app_offline.htm, is answered here.
            if let Some(page) = self.admission.refusal(&request) {
                drop(request);
                answer(response, page).await;
                return;
            }
        }
        let Some(root) = request
            .params
            .get_str("APPL_PHYSICAL_PATH")
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
        else {
            if self.served.get().is_none() {
                error!(
                    "no application to serve: give APP (or --app / --app-root), or run under IIS, which sends APPL_PHYSICAL_PATH so the app can be found through web.config's WSGI_HANDLER"
                );
                drop(request);
                answer(response, Bytes::from_static(SETUP_FAILED)).await;
                return;
            }
            return self.dispatch(request, response).await;
        };
        self.served(&root).await;
        self.dispatch(request, response).await;
    }
}

impl LazyApp {
    async fn dispatch(&self, request: Request, response: ResponseWriter) {
        let Some(served) = self.served.get() else {
            return;
        };
        match served {
            Served::Wsgi(h) => h.handle(request, response).await,
            Served::Asgi(h) => h.handle(request, response).await,
            Served::NoPython(page) => {
                drop(request);
                let page = format!(
                    "Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{page}",
                    page.len()
                );
                answer(response, Bytes::from(page)).await;
                // Answer and go: IIS starts a new process for the next request.
                self.outcome.no_python.store(true, Ordering::Release);
                self.shutdown.cancel();
            }
            Served::Failed => {
                drop(request);
                answer(response, Bytes::from_static(SETUP_FAILED)).await;
            }
        }
    }
}

/// Sends a complete CGI response and ends the request.
async fn answer(mut response: ResponseWriter, page: Bytes) {
    if response.write(page).await.is_ok() {
        let _ = response.end(0).await;
    }
}
