//! Serving an app that is only known from the first request (under IIS without `--app-root`):
//! that request's `APPL_PHYSICAL_PATH` names the folder whose web.config names the app. Once
//! it is imported, it is served as WSGI (the worker pool) or ASGI (the event loop), as
//! `--interface` decides, for every later request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyfcgi_proto::Params;
use pyfcgi_python::asgi::{AsgiConfig, AsgiHandler, AsgiHost};
use pyfcgi_python::{Admission, AppBinding, AppState, PythonHandler, WorkerPool};
use pyfcgi_server::{Handler, Request, ResponseWriter};
use tracing::{error, info};

use crate::serve::Interface;

/// Everything needed to start serving once the app is loaded.
pub struct Plan {
    /// Imports the app named by the request's web.config (needs the GIL; blocking).
    pub load: Box<dyn FnOnce(&Params) -> AppState + Send>,
    pub interface: Interface,
    pub asgi: AsgiConfig,
    pub threads: usize,
    pub wsgi: pyfcgi_python::WsgiConfig,
}

enum Served {
    Wsgi(PythonHandler),
    Asgi(AsgiHandler),
    /// The loader itself failed (a panic): every request gets a 500.
    Failed,
}

/// What must be stopped once the server has drained.
enum Running {
    Pool(WorkerPool),
    Host(AsgiHost),
}

/// The handler: binds to the first request's folder, loads the app, then hands every
/// request to the WSGI or ASGI handler.
pub struct LazyApp {
    admission: Admission,
    plan: Mutex<Option<Plan>>,
    served: tokio::sync::OnceCell<Served>,
    running: Arc<Mutex<Option<Running>>>,
    /// The folder the first request named (for the inner handler's own admission checks).
    root: Arc<Mutex<Option<std::path::PathBuf>>>,
}

/// Stops what the first request started, once the server has drained.
pub struct Finisher(Arc<Mutex<Option<Running>>>);

impl Finisher {
    /// Waits for the WSGI workers, or runs the ASGI lifespan shutdown.
    pub fn finish(self, grace: Duration) {
        let running = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match running {
            Some(Running::Pool(pool)) => pool.join(),
            Some(Running::Host(host)) => host.stop(grace),
            None => {}
        }
    }
}

impl LazyApp {
    pub fn new(binding: AppBinding, max_body_size: u64, plan: Plan) -> (Self, Finisher) {
        let running = Arc::new(Mutex::new(None));
        let app = Self {
            admission: Admission::new(binding, max_body_size),
            plan: Mutex::new(Some(plan)),
            served: tokio::sync::OnceCell::new(),
            running: Arc::clone(&running),
            root: Arc::new(Mutex::new(None)),
        };
        (app, Finisher(running))
    }

    async fn served(&self, params: &Params) -> &Served {
        self.served
            .get_or_init(|| async {
                let plan = self
                    .plan
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let root = self
                    .root
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let params = params.clone();
                let started =
                    tokio::task::spawn_blocking(move || start(plan, &params, root.as_deref()))
                        .await;
                let (served, running) = match started {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => {
                        error!("{e}");
                        (Served::Failed, None)
                    }
                    Err(e) => {
                        error!("loading the application failed: {e}");
                        (Served::Failed, None)
                    }
                };
                *self.running.lock().unwrap_or_else(PoisonError::into_inner) = running;
                served
            })
            .await
    }
}

const LOAD_FAILED: &[u8] = b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nInternal Server Error: the application failed to load. The server log has the details.\n";

fn start(
    plan: Option<Plan>,
    params: &Params,
    root: Option<&std::path::Path>,
) -> Result<(Served, Option<Running>), String> {
    let plan = plan.ok_or("the application loader was interrupted by an earlier request")?;
    let app = (plan.load)(params);
    // The root is bound already (the admission checks of the outer handler did it).
    let binding = || AppBinding {
        root: root.map(std::path::Path::to_path_buf),
        on_root: None,
    };
    if let Some(obj) = crate::serve::asgi_app(&app, plan.interface) {
        match AsgiHost::start(obj, plan.asgi) {
            Ok(host) => {
                info!("serving an ASGI application (loaded on the first request)");
                let admission = Admission::new(binding(), plan.wsgi.max_body_size);
                let handler = host.handler(admission);
                return Ok((Served::Asgi(handler), Some(Running::Host(host))));
            }
            Err(e) => {
                let detail = e.to_string();
                error!(
                    "{detail}\nEvery request will be answered 500; fix the application and restart."
                );
                return serve_wsgi(1, AppState::Failed { detail }, plan.wsgi, binding());
            }
        }
    }
    serve_wsgi(plan.threads, app, plan.wsgi, binding())
}

fn serve_wsgi(
    threads: usize,
    app: AppState,
    cfg: pyfcgi_python::WsgiConfig,
    binding: AppBinding,
) -> Result<(Served, Option<Running>), String> {
    let failed = matches!(app, AppState::Failed { .. });
    let (handler, pool) = PythonHandler::start(threads, app, cfg, binding)
        .map_err(|e| format!("cannot start the Python worker threads: {e}"))?;
    if !failed {
        info!(
            threads,
            "serving a WSGI application (loaded on the first request)"
        );
    }
    Ok((Served::Wsgi(handler), Some(Running::Pool(pool))))
}

impl Handler for LazyApp {
    async fn handle(&self, request: Request, mut response: ResponseWriter) {
        if self.served.get().is_none() {
            // Binds the process to the first request's folder (and starts the watcher).
            if let Some(page) = self.admission.refusal(&request) {
                drop(request);
                if response.write(page).await.is_ok() {
                    let _ = response.end(0).await;
                }
                return;
            }
            if let Some(root) = request.params.get_str("APPL_PHYSICAL_PATH") {
                let mut slot = self.root.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.is_none() && !root.is_empty() {
                    *slot = Some(root.into());
                }
            }
        }
        match self.served(&request.params).await {
            Served::Wsgi(h) => h.handle(request, response).await,
            Served::Asgi(h) => h.serve(request, response).await,
            Served::Failed => {
                drop(request);
                if response
                    .write(bytes::Bytes::from_static(LOAD_FAILED))
                    .await
                    .is_ok()
                {
                    let _ = response.end(0).await;
                }
            }
        }
    }

    fn try_handle_now(
        &self,
        request: Request,
        response: ResponseWriter,
    ) -> Result<(), (Request, ResponseWriter)> {
        match self.served.get() {
            Some(Served::Wsgi(h)) => h.try_handle_now(request, response),
            _ => Err((request, response)),
        }
    }
}
