//! Interpreter start-up and application loading for `serve` and `check`.

use anyhow::Context;
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
pub fn load(spec: &str, args: &PythonArgs) -> anyhow::Result<AppState> {
    let (state, report) = resolve(spec, args)?;
    if matches!(state, AppState::Failed { .. }) {
        error!(
            "{report}\nEvery request will be answered 500 until the application loads; fix it and restart (or touch a watched file under IIS)."
        );
    }
    Ok(state)
}

/// Like [`load`], also returning the diagnosis text (for `pyfcgi check`).
pub fn resolve(spec: &str, args: &PythonArgs) -> anyhow::Result<(AppState, String)> {
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
    };
    Python::initialize();
    Python::attach(|py| {
        let info = interp::setup(py, &opts)?;
        match parsed.load(py) {
            Ok(app) => {
                let repr = app
                    .bind(py)
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                info!(app = spec, object = %repr, "application loaded");
                Ok((
                    AppState::Loaded(app),
                    format!(
                        "application {spec} loaded: {repr}\n{}",
                        interp::describe(py, info.venv.clone())
                    ),
                ))
            }
            Err(e) => {
                let info = interp::describe(py, info.venv.clone());
                let detail =
                    format!("application {spec} failed to load: {e}\n\nInterpreter:\n{info}");
                Ok((
                    AppState::Failed {
                        detail: detail.clone(),
                    },
                    detail,
                ))
            }
        }
    })
}
