//! Serving an app that is only known from the first request (under IIS, a handler mapping
//! whose `scriptProcessor` is `pyfcgi.exe` with no `--app-root`): that request's
//! `APPL_PHYSICAL_PATH` names the folder. The process then sets itself up exactly as with
//! `--app-root FOLDER`, through the same resolver and startup path (startup.rs): the
//! folder's web.config and pyfcgi.toml are read, the log file opened (or the fallback beside
//! web.config), Python found and the app imported. Whatever fails is logged there (and to
//! the Windows event log), and every request gets a 500 page naming the kind of problem.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use pyfcgi_python::asgi::{AsgiHandler, AsgiHost};
use pyfcgi_python::{Admission, AppBinding, PythonHandler, WorkerPool};
use pyfcgi_server::{Handler, Request, ResponseWriter};
use pyfcgi_settings::Inputs;
use tracing::error;

use crate::lifecycle::MaxRequests;
use crate::startup::{self, Ctx, Failure, Started};

/// What the first request's setup needs from the process.
pub struct Plan {
    pub ctx: Ctx,
    /// The process's own settings inputs (command line, environment): the folder's files
    /// are added to them.
    pub inputs: Inputs,
    /// A log file was opened at startup (`--log-file`): keep it.
    pub has_log_file: bool,
}

enum Served {
    Wsgi(MaxRequests<PythonHandler>),
    Asgi(MaxRequests<AsgiHandler>),
    /// Python could not be found: the page says what to fix; the process then exits 4.
    NoPython(String),
    /// The setup failed before the app could be imported: every request gets this page.
    Failed(Bytes),
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
    /// must exit with [`crate::exit::NO_PYTHON`].
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
    shutdown: tokio_util::sync::CancellationToken,
}

fn page_bytes(page: &str) -> Bytes {
    Bytes::from(format!(
        "Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{page}",
        page.len()
    ))
}

impl LazyApp {
    pub fn new(max_body_size: u64, plan: Plan) -> (Self, Finisher) {
        let outcome = Arc::new(Outcome::default());
        let app = Self {
            admission: Admission::new(AppBinding::default(), max_body_size),
            shutdown: plan.ctx.shutdown.clone(),
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
                    Some(plan) => set_up(plan, &root),
                    None => (
                        Served::Failed(page_bytes(
                            "Internal Server Error\n\nThe application's setup was interrupted.\n",
                        )),
                        None,
                    ),
                })
                .await;
                match started {
                    Ok((served, running)) => {
                        *self
                            .outcome
                            .running
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = running;
                        served
                    }
                    Err(e) => {
                        error!("setting up the application failed: {e}");
                        Served::Failed(page_bytes(
                            &Failure::Other(anyhow::anyhow!("{e}")).page(startup::LogPlace::Stderr),
                        ))
                    }
                }
            })
            .await
    }
}

/// Everything `--app-root ROOT` would have done at startup, for the first request's folder.
fn set_up(plan: Plan, root: &Path) -> (Served, Option<Running>) {
    let mut inputs = plan.inputs;
    inputs.first_request_root = Some(root.to_owned());
    let mut ctx = plan.ctx;
    ctx.first_request = true;
    let res = startup::resolve(&inputs);
    let log = startup::attach_logging(&res, root, plan.has_log_file);
    startup::log_resolution(&res, " (first request)");
    let failure = if res.errors.is_empty() {
        match startup::start_app(&res.settings, &ctx) {
            Ok(Started::Wsgi(handler, pool)) => {
                let h = MaxRequests::new(handler, res.settings.max_requests, ctx.shutdown.clone());
                return (Served::Wsgi(h), Some(Running::Pool(pool)));
            }
            Ok(Started::Asgi(handler, host)) => {
                let h = MaxRequests::new(handler, res.settings.max_requests, ctx.shutdown.clone());
                return (Served::Asgi(h), Some(Running::Host(host)));
            }
            Err(f) => f,
        }
    } else {
        Failure::settings(&res)
    };
    let log = startup::failure_log(log, &res.settings);
    failure.report();
    match failure {
        Failure::NoPython(nf) => (Served::NoPython(nf.page()), None),
        Failure::Load(detail) => {
            error!(
                "every request will be answered 500 until a watched file changes (web.config, the app's .py files) or IIS recycles the process"
            );
            match startup::failed_wsgi(&res.settings, &ctx, detail) {
                Ok(Started::Wsgi(handler, pool)) => (
                    Served::Wsgi(MaxRequests::new(handler, 0, ctx.shutdown.clone())),
                    Some(Running::Pool(pool)),
                ),
                Ok(Started::Asgi(..)) | Err(_) => (
                    Served::Failed(page_bytes(&Failure::Load(String::new()).page(log))),
                    None,
                ),
            }
        }
        other => {
            // Fixing web.config restarts the process (IIS starts a new one).
            startup::watch_for_restart(&res.settings, &ctx);
            error!(
                "every request is answered 500 until this is fixed (a change to web.config restarts pyfcgi)"
            );
            (Served::Failed(page_bytes(&other.page(log))), None)
        }
    }
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
                let failure = Failure::NoApp(
                    "no application to serve: give APP (or --app / --app-root), or run under IIS, which sends APPL_PHYSICAL_PATH so the app can be found through web.config's WSGI_HANDLER".to_owned(),
                );
                failure.report();
                drop(request);
                answer(
                    response,
                    page_bytes(&failure.page(startup::LogPlace::Stderr)),
                )
                .await;
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
                answer(response, page_bytes(page)).await;
                // Answer and go: IIS starts a new process for the next request.
                self.outcome.no_python.store(true, Ordering::Release);
                self.shutdown.cancel();
            }
            Served::Failed(page) => {
                drop(request);
                answer(response, page.clone()).await;
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
