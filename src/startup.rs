//! The one startup path: settings resolved once ([`resolve`]), the log opened where the
//! settings say (or a documented fallback), and the application host built from the settings
//! ([`start_app`]) — for `serve` on every transport, the first-request setup under IIS,
//! supervised workers and `check`. A failure is a [`Failure`] with a class (for the page a
//! visitor sees, which names no value or path), a full diagnosis (for the log and the Windows
//! event log) and an exit code.

use std::path::{Path, PathBuf};

use pyfcgi_settings::{Inputs, Resolution, Settings};
use tracing::{error, info, warn};

use crate::exit;

/// The inputs of this process: its command-line settings, its environment and working
/// directory, and (first-request setup) the folder IIS named.
pub fn inputs(args: Vec<pyfcgi_settings::Arg>, first_request_root: Option<PathBuf>) -> Inputs {
    Inputs {
        args,
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
        cwd: std::env::current_dir().ok(),
        first_request_root,
    }
}

/// Resolves the settings (reading pyfcgi.toml and web.config).
pub fn resolve(inputs: &Inputs) -> Resolution {
    pyfcgi_settings::resolve(inputs)
}

/// The file the log goes to when the configured one cannot be opened (or is itself the bad
/// setting): `pyfcgi-error.log` in the app folder (beside its web.config), else in the
/// system temp directory.
pub fn fallback_log(app_root: Option<&Path>) -> PathBuf {
    app_root
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
        .join("pyfcgi-error.log")
}

fn rotation(s: &Settings) -> crate::logging::Rotation {
    crate::logging::Rotation {
        max_size: s.log_max_size,
        keep: s.log_keep,
    }
}

/// Where this process's log went, for the page a failed startup shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPlace {
    Stderr,
    /// The file the settings name (WSGI_LOG, --log-file).
    Configured,
    /// [`fallback_log`].
    Fallback,
}

/// Sets up logging for `serve` from the resolved settings: the configured file; else stderr,
/// with the fallback file attached at once when the configured file cannot be opened (or the
/// settings are invalid under IIS, where nobody reads stderr), or later by
/// [`failure_log`] when a startup failure must be recorded. Called once, before anything is
/// logged.
pub fn init_logging(res: &Resolution, iis: bool) -> LogPlace {
    let s = &res.settings;
    let level = s.log_level.as_str();
    crate::logging::set_format(s.log_format);
    let mut open_error = None;
    if let Some(path) = &s.log_file {
        match crate::logging::init_file(path, level, rotation(s)) {
            Ok(_) => return LogPlace::Configured,
            Err(e) => open_error = Some(e),
        }
    }
    crate::logging::init_stderr(level);
    let mut place = LogPlace::Stderr;
    if iis && (open_error.is_some() || !res.errors.is_empty()) {
        place = failure_log(place, s);
    }
    if let Some(e) = open_error {
        match place {
            LogPlace::Fallback => error!(
                "{e:#}; logging beside web.config in pyfcgi-error.log instead (the fallback when WSGI_LOG / --log-file cannot be used)"
            ),
            _ if iis => error!("{e:#}"),
            _ => error!("{e:#}: pyfcgi does not start without its log file"),
        }
    }
    place
}

/// Makes sure a startup failure is written to a file: when the log goes to stderr (under
/// IIS, nowhere), the fallback file is attached ([`fallback_log`]).
pub fn failure_log(place: LogPlace, s: &Settings) -> LogPlace {
    if place != LogPlace::Stderr {
        return place;
    }
    let fallback = fallback_log(s.app_root.as_deref());
    match crate::logging::attach_file(&fallback, rotation(s)) {
        Ok(path) => {
            info!(
                "pyfcgi {} logging to {} (startup failure)",
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
            LogPlace::Fallback
        }
        Err(e) => {
            error!("{e:#}");
            LogPlace::Stderr
        }
    }
}

/// The first-request setup's logging: the log file its settings name is attached (unless one
/// was opened at startup); when it cannot be, or the settings are invalid, the fallback
/// beside its web.config.
#[cfg(feature = "python")]
pub fn attach_logging(res: &Resolution, root: &Path, has_log_file: bool) -> LogPlace {
    let s = &res.settings;
    // The app folder's settings may ask for JSON: from now on, whatever the file.
    crate::logging::set_format(s.log_format);
    if has_log_file {
        return LogPlace::Configured;
    }
    let mut why = None;
    if let Some(path) = &s.log_file {
        match crate::logging::attach_file(path, rotation(s)) {
            Ok(path) => {
                info!(
                    root = %root.display(),
                    "pyfcgi {} logging to {} (from the application's settings)",
                    env!("CARGO_PKG_VERSION"),
                    path.display()
                );
                return LogPlace::Configured;
            }
            Err(e) => why = Some(format!("{e:#}")),
        }
    }
    if why.is_none() && res.errors.is_empty() {
        return LogPlace::Stderr;
    }
    let place = failure_log(LogPlace::Stderr, s);
    if let Some(why) = why {
        error!("{why}; logging beside web.config in pyfcgi-error.log instead");
    }
    place
}

/// Logs what the resolution found besides errors: the files read and the unknown keys.
pub fn log_resolution(res: &Resolution, when: &str) {
    if !res.files.is_empty() {
        info!(files = ?res.files, "settings read from config files{when}");
    }
    for u in &res.unknown {
        warn!("{u}");
    }
}

/// A startup that did not produce a running application.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
#[derive(Debug)]
pub enum Failure {
    /// Invalid settings or an unreadable config file.
    Settings { class: &'static str, report: String },
    /// No usable Python.
    #[cfg(feature = "python")]
    NoPython(pyfcgi_pyhome::NotFound),
    /// No application named anywhere.
    NoApp(String),
    /// The application (or its venv, or the interpreter setup) failed to load.
    Load(String),
    /// Anything else (threads, transport).
    Other(anyhow::Error),
}

impl Failure {
    /// From a resolution with errors.
    pub fn settings(res: &Resolution) -> Self {
        let class = res.errors.first().map_or(
            "an invalid pyfcgi setting",
            pyfcgi_settings::SettingError::class,
        );
        Self::Settings {
            class,
            report: format!(
                "pyfcgi cannot start: {} in its settings:\n{}",
                match res.errors.len() {
                    1 => "a problem".to_owned(),
                    n => format!("{n} problems"),
                },
                res.error_report()
            ),
        }
    }

    /// The kind of problem, for visitors (no values, no paths).
    pub fn class(&self) -> &'static str {
        match self {
            Self::Settings { class, .. } => class,
            #[cfg(feature = "python")]
            Self::NoPython(_) => "no usable Python",
            Self::NoApp(_) => "no application configured",
            Self::Load(_) => "the application failed to load",
            Self::Other(_) => "a startup error",
        }
    }

    /// The full diagnosis, for the log.
    pub fn diagnosis(&self) -> String {
        match self {
            Self::Settings { report, .. } => report.clone(),
            #[cfg(feature = "python")]
            Self::NoPython(nf) => nf.diagnosis(),
            Self::NoApp(s) | Self::Load(s) => s.clone(),
            Self::Other(e) => format!("{e:#}"),
        }
    }

    /// The documented exit code (docs/configuration.md, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Settings { .. } => exit::SETTINGS,
            #[cfg(feature = "python")]
            Self::NoPython(_) => crate::exit::NO_PYTHON,
            Self::NoApp(_) | Self::Load(_) => exit::APP_LOAD,
            Self::Other(_) => exit::STARTUP,
        }
    }

    /// Logs the diagnosis, and on Windows also writes it to the Application event log (under
    /// IIS nobody reads stderr).
    pub fn report(&self) {
        let text = self.diagnosis();
        // A supervised worker's diagnosis is logged by the supervisor, once for all the
        // workers that fail the same way (a crash loop, or every first worker at once).
        #[cfg(unix)]
        if pyfcgi_supervisor::message::report_failure(&text) {
            return;
        }
        error!("{text}");
        crate::event_log::report(&text);
    }

    /// The 500 page a visitor gets (under IIS, where the process stays up): what kind of
    /// problem and where the details are, nothing more.
    pub fn page(&self, log: LogPlace) -> String {
        let place = match log {
            LogPlace::Configured => {
                "the log file named by WSGI_LOG (or PYFCGI_LOG_FILE / --log-file)"
            }
            LogPlace::Fallback => "pyfcgi-error.log beside the site's web.config",
            LogPlace::Stderr => {
                "pyfcgi's standard error (no log file is configured: add WSGI_LOG to web.config)"
            }
        };
        let event_log = if cfg!(windows) {
            " and in the Windows Application event log (source pyfcgi)"
        } else {
            ""
        };
        format!(
            "Internal Server Error\n\npyfcgi could not start this application: {}.\nThe details are in {place}{event_log}.\n",
            self.class()
        )
    }
}

#[cfg(feature = "python")]
pub use app::{Ctx, Started, failed_wsgi, python_settings, start_app, watch_for_restart};

#[cfg(feature = "python")]
mod app {
    use pyfcgi_python::asgi::{AsgiConfig, AsgiHandler, AsgiHost, LoopKind};
    use pyfcgi_python::{Admission, AppBinding, AppState, PythonHandler, WorkerPool, WsgiConfig};
    use pyfcgi_settings::{EventLoop, Interface, Lifespan, PythonSettings, Settings};
    use tokio_util::sync::CancellationToken;
    use tracing::{info, warn};

    use super::Failure;
    use crate::lifecycle::{DEFAULT_RESTART_REGEX, WatcherSlot};

    /// What the process around the app is.
    #[derive(Clone)]
    pub struct Ctx {
        pub shutdown: CancellationToken,
        pub watchers: WatcherSlot,
        /// One connection on stdin (IIS): one request at a time.
        pub connected: bool,
        /// Started by `--workers`' supervisor.
        pub supervised: bool,
        /// Set up on the first request: the folder is bound already.
        pub first_request: bool,
    }

    impl Ctx {
        fn threads(&self, s: &Settings) -> usize {
            s.threads.unwrap_or(if self.connected { 1 } else { 8 })
        }
    }

    /// A running application host.
    pub enum Started {
        Wsgi(PythonHandler, WorkerPool),
        Asgi(AsgiHandler, AsgiHost),
    }

    /// The interpreter settings as the app is loaded with them: the app folder is the
    /// working directory unless `--chdir` says otherwise (wfastcgi does the same).
    pub fn python_settings(s: &Settings) -> PythonSettings {
        let mut p = s.python.clone();
        if p.chdir.is_none() {
            p.chdir.clone_from(&s.app_root);
        }
        p
    }

    fn wsgi_config(s: &Settings, ctx: &Ctx, threads: usize) -> WsgiConfig {
        WsgiConfig {
            request_timeout: s.request_timeout,
            exit_when_stuck: ctx.connected || ctx.supervised || ctx.first_request,
            multithread: threads > 1,
            multiprocess: ctx.connected,
            url_scheme: s.url_scheme.clone(),
            script_name: s.script_name.clone(),
            detailed_errors: s.detailed_errors,
            stderr_errors: s.stderr_errors,
            max_body_size: s.max_body_size,
            shutdown: ctx.shutdown.clone(),
            impersonate: s.impersonate,
        }
    }

    pub fn asgi_config(s: &Settings, stuck: Option<CancellationToken>) -> AsgiConfig {
        use pyfcgi_python::asgi::Lifespan as L;
        AsgiConfig {
            script_name: s.script_name.clone(),
            url_scheme: s.url_scheme.clone(),
            lifespan: match s.lifespan {
                Lifespan::Auto => L::Auto,
                Lifespan::On => L::On,
                Lifespan::Off => L::Off,
            },
            detailed_errors: s.detailed_errors,
            request_timeout: s.request_timeout,
            stuck,
            send_window: usize::try_from(s.send_window).unwrap_or(usize::MAX),
            loop_kind: match s.event_loop {
                EventLoop::Auto => LoopKind::Auto,
                EventLoop::Asyncio => LoopKind::Asyncio,
                EventLoop::Uvloop => LoopKind::Uvloop,
            },
        }
    }

    fn binding(s: &Settings, ctx: &Ctx, regex: Option<&String>) -> AppBinding {
        let on_root: Option<pyfcgi_python::OnRoot> = match (&s.app_root, regex) {
            (None, Some(regex)) if !ctx.first_request => {
                let (watchers, shutdown, regex) =
                    (ctx.watchers.clone(), ctx.shutdown.clone(), regex.clone());
                Some(Box::new(move |root: &std::path::Path| {
                    watchers.start(root, &regex, shutdown.clone());
                }))
            }
            _ => None,
        };
        AppBinding {
            root: s.app_root.clone(),
            on_root,
        }
    }

    /// The restart regex: wfastcgi's default when the app folder is known or the process
    /// serves IIS's stream; an empty value disables it.
    fn restart_regex(s: &Settings, ctx: &Ctx) -> Option<String> {
        match &s.restart_regex {
            Some(r) if r.is_empty() => None,
            Some(r) => Some(r.clone()),
            None if s.app_root.is_some() || ctx.connected || ctx.first_request => {
                Some(DEFAULT_RESTART_REGEX.to_owned())
            }
            None => None,
        }
    }

    /// Starts the file watcher that restarts the process when a watched file changes (the
    /// app's code, web.config). Also used while a failed startup is being reported, so that
    /// fixing web.config brings the app up.
    pub fn watch_for_restart(s: &Settings, ctx: &Ctx) -> Option<String> {
        let regex = restart_regex(s, ctx);
        let root = s.app_root.clone().or_else(|| {
            // An explicit --restart-regex without an app folder watches the working directory.
            s.restart_regex
                .as_ref()
                .filter(|r| !r.is_empty())
                .and_then(|_| std::env::current_dir().ok())
        });
        if let (Some(root), Some(regex)) = (&root, &regex) {
            ctx.watchers.start(root, regex, ctx.shutdown.clone());
        }
        regex.filter(|_| root.is_none())
    }

    /// Finds Python, imports the app and starts its host (the WSGI worker pool or the ASGI
    /// event loop), as the settings say.
    pub fn start_app(s: &Settings, ctx: &Ctx) -> Result<Started, Failure> {
        // The status document's queue depth is the WSGI pool's queue.
        pyfcgi_status::set_queue_depth(pyfcgi_python::pool::queued);
        let python = python_settings(s);
        let spec = s.app.clone().ok_or_else(|| {
            Failure::NoApp(match &s.app_root {
                Some(root) => format!(
                    "no application for {}: its web.config has no WSGI_HANDLER and no APP was given; add <add key=\"WSGI_HANDLER\" value=\"package.module.app\"/> to its <appSettings>",
                    root.display()
                ),
                None => "no application given: name one (APP, --app, PYFCGI_APP) or use --builtin".to_owned(),
            })
        })?;
        match pyfcgi_pyhome::ensure_loaded(&crate::python::hints(&python, Some(&spec))) {
            Ok(found) => info!("python: {} ({})", found.library.display(), found.source),
            Err(nf) => return Err(Failure::NoPython(nf)),
        }
        let (app, _report) = crate::python::resolve(&spec, &python, &s.app_env)
            .map_err(|e| Failure::Load(format!("{e:#}")))?;
        let AppState::Loaded(obj) = app else {
            let AppState::Failed { detail } = app else {
                unreachable!("an AppState is loaded or failed")
            };
            return Err(Failure::Load(detail));
        };
        let unbound_regex = watch_for_restart(s, ctx);
        let binding = binding(s, ctx, unbound_regex.as_ref());
        let when = if ctx.first_request {
            " (loaded on the first request)"
        } else {
            ""
        };
        if let Some(obj) = asgi_app(&obj, s.interface) {
            if s.impersonate {
                return Err(Failure::Load(
                    "--impersonate (PYFCGI_IMPERSONATE) runs each request's thread as the client's user, but an ASGI app runs every request on one event-loop thread: serve a WSGI app, or turn impersonation off".into(),
                ));
            }
            let stuck = (ctx.connected || ctx.supervised || ctx.first_request)
                .then(|| ctx.shutdown.clone());
            let host = AsgiHost::start(obj, asgi_config(s, stuck))
                .map_err(|e| Failure::Load(e.to_string()))?;
            info!(app = %spec, "serving an ASGI application{when}");
            let handler = host.handler(Admission::new(binding, s.max_body_size));
            return Ok(Started::Asgi(handler, host));
        }
        let threads = ctx.threads(s);
        let (handler, pool) = PythonHandler::start(
            threads,
            AppState::Loaded(obj),
            wsgi_config(s, ctx, threads),
            binding,
        )
        .map_err(|e| {
            Failure::Other(anyhow::Error::new(e).context("cannot start the Python worker threads"))
        })?;
        info!(app = %spec, threads, "serving a WSGI application{when}");
        Ok(Started::Wsgi(handler, pool))
    }

    /// Under IIS an app that failed to load is still served: every request gets the 500 page
    /// of the WSGI host (with the diagnosis when --detailed-errors), until a watched file
    /// changes and IIS starts a fixed process.
    pub fn failed_wsgi(s: &Settings, ctx: &Ctx, detail: String) -> anyhow::Result<Started> {
        let unbound_regex = watch_for_restart(s, ctx);
        let binding = binding(s, ctx, unbound_regex.as_ref());
        let (handler, pool) = PythonHandler::start(
            1,
            AppState::Failed { detail },
            wsgi_config(s, ctx, 1),
            binding,
        )?;
        Ok(Started::Wsgi(handler, pool))
    }

    /// The app to serve with ASGI, per `--interface`.
    fn asgi_app(
        obj: &pyo3::Py<pyo3::PyAny>,
        interface: Interface,
    ) -> Option<pyo3::Py<pyo3::PyAny>> {
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
}
