//! Interpreter start-up and application loading for `serve`, `check` and `doctor` (at
//! startup, or on the first request under IIS without `--app-root`: see lazy.rs). All three
//! load through [`resolve`] with the same [`PythonSettings`], so they report the same
//! `sys.path`.

use std::fmt::Write as _;

use anyhow::Context;
use pyfcgi_python::AppState;
use pyfcgi_python::app::AppSpec;
use pyfcgi_python::interp::{self, InterpreterOptions};
use pyfcgi_settings::PythonSettings;
use pyo3::Python;
use pyo3::types::PyAnyMethods;
use tracing::{info, warn};

/// Where to look for the interpreter (see `python_home`), for the app `spec` if known.
pub fn hints(python: &PythonSettings, spec: Option<&str>) -> pyfcgi_pyhome::Hints {
    let mut app_dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(d) = spec
        .and_then(|s| AppSpec::parse(s).ok())
        .and_then(|p| p.app_dir())
    {
        app_dirs.push(d);
    }
    app_dirs.extend(python.chdir.iter().cloned());
    app_dirs.extend(std::env::current_dir().ok());
    pyfcgi_pyhome::Hints {
        explicit: python.python_home.clone(),
        venv: python.venv.clone(),
        app_dirs,
    }
}

/// Starts the interpreter, applies `args`, and imports `spec`; returns the app (or why it
/// failed: not an error here, the caller decides) and the diagnosis text.
pub fn resolve(
    spec: &str,
    args: &PythonSettings,
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
