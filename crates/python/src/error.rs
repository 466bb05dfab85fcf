//! The Python crate's error type.

use std::path::PathBuf;

use pyo3::prelude::*;

/// Why the interpreter could not be set up or the application not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// A virtual environment that is not one.
    #[error("virtual environment {path} is not usable: {reason}")]
    BadVenv {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--chdir` failed.
    #[error("cannot change directory to {path}")]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An application spec that does not parse.
    #[error("invalid application {spec:?}: {reason}")]
    BadAppSpec {
        /// The spec given.
        spec: String,
        /// What is wrong, and the accepted forms.
        reason: String,
    },
    /// The application object is not callable.
    #[error(
        "{spec} resolved to a {type_name}, which is not callable; point at the WSGI application object (for Flask: the Flask() instance, for Django: get_wsgi_application())"
    )]
    NotCallable {
        /// The spec given.
        spec: String,
        /// Python type of what was found.
        type_name: String,
    },
    /// The spec names a module where the application object inside it is wanted (Django's
    /// `mysite.wsgi`).
    #[error("{spec} is a module, not the application in it: {suggestion}")]
    ModuleGiven {
        /// The spec given.
        spec: String,
        /// `did you mean mysite.wsgi:application?`, or how to name the callable.
        suggestion: String,
    },
    /// The ASGI event loop or the app's lifespan startup failed.
    #[error("{0}")]
    Startup(String),
    /// Python raised while doing `context`; `traceback` is the formatted exception.
    #[error("{context} failed:\n{traceback}")]
    Python {
        /// What was being done.
        context: String,
        /// `traceback.format_exception` output.
        traceback: String,
    },
}

impl PythonError {
    /// Wraps a Python exception with its full traceback.
    pub fn python(py: Python<'_>, context: impl Into<String>, err: &PyErr) -> Self {
        Self::Python {
            context: context.into(),
            traceback: format_exception(py, err),
        }
    }
}

/// The exception as Python's `traceback.format_exception` prints it, falling back to its
/// `str()` when even that fails.
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1("format_exception", (err.clone_ref(py).into_value(py),))?;
        let s: Vec<String> = lines.extract()?;
        Ok(s.concat())
    });
    formatted.unwrap_or_else(|_| {
        format!(
            "{}: {}",
            err.get_type(py)
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            err.value(py)
        )
    })
}
