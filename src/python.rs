//! Interpreter start-up and application loading for `serve` and `check`, eagerly (the app is
//! known at startup) or deferred to the first request (under IIS without `--app-root`, where
//! only the request's `APPL_PHYSICAL_PATH` says where the app and its web.config are).

use std::path::{Path, PathBuf};

use anyhow::Context;
use pyfcgi_iis::webconfig;
use pyfcgi_proto::Params;
use pyfcgi_python::AppState;
use pyfcgi_python::app::AppSpec;
use pyfcgi_python::interp::{self, InterpreterOptions};
use pyo3::Python;
use pyo3::types::PyAnyMethods;
use tracing::{error, info};

use crate::serve::PythonArgs;

/// Starts the interpreter, applies `args`, and imports `spec`. An import failure is not an
/// error here: it is logged with a full diagnosis and returned as [`AppState::Failed`], so the
/// server keeps answering (500s) instead of crash-looping under IIS.
pub fn load(spec: &str, args: &PythonArgs, env: &[(String, String)]) -> anyhow::Result<AppState> {
    let (state, report) = resolve(spec, args, env)?;
    if matches!(state, AppState::Failed { .. }) {
        log_failure(&report);
    }
    Ok(state)
}

fn log_failure(report: &str) {
    error!(
        "{report}\nEvery request will be answered 500 until the application loads; fix it and restart (under IIS: recycle the app pool or touch a watched file)."
    );
}

/// Like [`load`], also returning the diagnosis text (for `pyfcgi check`).
pub fn resolve(
    spec: &str,
    args: &PythonArgs,
    env: &[(String, String)],
) -> anyhow::Result<(AppState, String)> {
    let parsed = AppSpec::parse(spec)?;
    if let Some(dir) = &args.chdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot change directory to {} (--chdir)", dir.display()))?;
    }
    let opts = InterpreterOptions {
        venv: args.venv.clone(),
        pythonpath: args.pythonpath.clone(),
        chdir: None,
        app_dir: parsed.app_dir(),
        env: env.to_vec(),
    };
    // With a venv known now, site runs once, for the venv (not for the base interpreter too).
    interp::initialize(matches!(interp::find_venv(&opts), Ok(Some(_))));
    Ok(Python::attach(|py| load_attached(py, spec, &parsed, &opts)))
}

fn load_attached(
    py: Python<'_>,
    spec: &str,
    parsed: &AppSpec,
    opts: &InterpreterOptions,
) -> (AppState, String) {
    let info = match interp::setup(py, opts) {
        Ok(info) => info,
        Err(e) => {
            let info = interp::describe(py, None);
            let detail =
                format!("cannot prepare the interpreter for {spec}: {e}\n\nInterpreter:\n{info}");
            return (
                AppState::Failed {
                    detail: detail.clone(),
                },
                detail,
            );
        }
    };
    match parsed.load(py) {
        Ok(app) => {
            let repr = app
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default();
            info!(app = spec, object = %repr, "application loaded");
            let report = format!(
                "application {spec} loaded: {repr}\n{}",
                interp::describe(py, info.venv.clone())
            );
            (AppState::Loaded(app), report)
        }
        Err(e) => {
            let info = interp::describe(py, info.venv.clone());
            let detail = format!("application {spec} failed to load: {e}\n\nInterpreter:\n{info}");
            (
                AppState::Failed {
                    detail: detail.clone(),
                },
                detail,
            )
        }
    }
}

/// A loader for the first request: reads the web.config appSettings of the request's
/// `APPL_PHYSICAL_PATH` (WSGI_HANDLER, PYTHONPATH, PYFCGI_VENV, other keys into os.environ),
/// changes into that folder as wfastcgi does, and imports the app.
pub fn deferred(
    args: PythonArgs,
    env: Vec<(String, String)>,
) -> Box<dyn FnOnce(&Params) -> AppState + Send> {
    Python::initialize();
    Box::new(move |params| {
        Python::attach(|py| {
            let Some(root) = params
                .get_str("APPL_PHYSICAL_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
            else {
                let detail = "no application to serve: give APP (or --app / --app-root), or run under IIS, which sends APPL_PHYSICAL_PATH so the app can be found through web.config's WSGI_HANDLER".to_owned();
                log_failure(&detail);
                return AppState::Failed { detail };
            };
            match load_from_web_config(py, &root, &args, &env) {
                Ok((state, report)) => {
                    if matches!(state, AppState::Failed { .. }) {
                        log_failure(&report);
                    }
                    state
                }
                Err(e) => {
                    let detail = format!("{e:#}");
                    log_failure(&detail);
                    AppState::Failed { detail }
                }
            }
        })
    })
}

fn load_from_web_config(
    py: Python<'_>,
    root: &Path,
    args: &PythonArgs,
    env: &[(String, String)],
) -> anyhow::Result<(AppState, String)> {
    let settings = webconfig::load_for_app(root).context("reading the application's web.config")?;
    info!(root = %root.display(), files = ?settings.sources, "configuration from web.config (first request)");
    let spec = settings.get("PYFCGI_APP").or_else(|| settings.get("WSGI_HANDLER")).map(str::to_owned).with_context(|| {
        format!(
            "no WSGI_HANDLER appSetting in the web.config files for {} (read: {:?}); add <add key=\"WSGI_HANDLER\" value=\"package.module.app\"/> or pass --app",
            root.display(),
            settings.sources
        )
    })?;
    let parsed = AppSpec::parse(&spec)?;
    let chdir = args.chdir.clone().unwrap_or_else(|| root.to_owned());
    std::env::set_current_dir(&chdir)
        .with_context(|| format!("cannot change directory to {}", chdir.display()))?;
    let mut pythonpath: Vec<PathBuf> = settings
        .pythonpath(&webconfig::process_env)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    pythonpath.extend(args.pythonpath.iter().cloned());
    let mut all_env = env.to_vec();
    all_env.extend(
        settings
            .environment()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let opts = InterpreterOptions {
        venv: args
            .venv
            .clone()
            .or_else(|| settings.get("PYFCGI_VENV").map(PathBuf::from)),
        pythonpath,
        chdir: None,
        app_dir: Some(root.to_owned()),
        env: all_env,
    };
    Ok(load_attached(py, &spec, &parsed, &opts))
}
