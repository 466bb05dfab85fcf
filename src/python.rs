//! Interpreter start-up and application loading for `serve` and `check` (at startup, or on
//! the first request under IIS without `--app-root`: see lazy.rs).

use std::fmt::Write as _;

use anyhow::Context;
use pyfcgi_python::AppState;
use pyfcgi_python::app::AppSpec;
use pyfcgi_python::interp::{self, InterpreterOptions};
use pyo3::Python;
use pyo3::types::PyAnyMethods;
use tracing::{error, info, warn};

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
    let shadows = parsed
        .app_dir()
        .map(|d| pyfcgi_python::shadow::stdlib_shadows(py, &d))
        .unwrap_or_default();
    let result = parsed.load(py);
    // After the import: sys.modules then tells which of the two files Python uses.
    let shadows = if shadows.is_empty() {
        shadows
    } else {
        parsed
            .app_dir()
            .map(|d| pyfcgi_python::shadow::stdlib_shadows(py, &d))
            .unwrap_or_default()
    };
    let mut notes = String::new();
    for s in &shadows {
        warn!(app = spec, "{s}");
        let _ = writeln!(notes, "warning: {s}");
    }
    match result {
        Ok(app) => {
            let repr = app
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default();
            info!(app = spec, object = %repr, "application loaded");
            let report = format!(
                "application {spec} loaded: {repr}\n{notes}{}",
                interp::describe(py, info.venv.clone())
            );
            (AppState::Loaded(app), report)
        }
        Err(e) => {
            let info = interp::describe(py, info.venv.clone());
            let detail =
                format!("application {spec} failed to load: {e}\n{notes}\nInterpreter:\n{info}");
            (
                AppState::Failed {
                    detail: detail.clone(),
                },
                detail,
            )
        }
    }
}
