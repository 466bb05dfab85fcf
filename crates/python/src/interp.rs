//! Interpreter setup: virtual environment, `sys.path`, working directory, Python's
//! stdout/stderr routed into the log, and the facts a diagnosis needs.
//!
//! The interpreter is initialised once per process by the binary (`Python::initialize()`);
//! this module adjusts it before the application is imported. A virtual environment is applied
//! the way its own launcher would: `sys.prefix`/`sys.exec_prefix` point at it and its
//! site-packages (with `.pth` files) come first on `sys.path`, without running the venv's
//! `python` executable.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyList;
use tracing::{info, warn};

use crate::PythonError;
use crate::log_stream::LogStream;

/// How to set up the interpreter.
#[derive(Debug, Clone, Default)]
pub struct InterpreterOptions {
    /// An explicit virtual environment (`--venv`).
    pub venv: Option<PathBuf>,
    /// Directories to put first on `sys.path` (`--pythonpath`), in order.
    pub pythonpath: Vec<PathBuf>,
    /// Directory to change into before importing (`--chdir`).
    pub chdir: Option<PathBuf>,
    /// Where to look for a `pyvenv.cfg` when no venv is named: this directory and its parents.
    pub app_dir: Option<PathBuf>,
    /// Variables to set in the application's `os.environ` (web.config appSettings).
    pub env: Vec<(String, String)>,
}

/// What the interpreter ended up as; logged at startup and in every diagnosis.
#[derive(Debug, Clone, Default)]
pub struct InterpreterInfo {
    /// `sys.executable` of the embedded interpreter (often empty or the host binary).
    pub executable: String,
    /// `sys.version`.
    pub version: String,
    /// `sys.prefix`.
    pub prefix: String,
    /// The venv applied, if any, and where it came from.
    pub venv: Option<(PathBuf, &'static str)>,
    /// `sys.path` after setup.
    pub sys_path: Vec<String>,
    /// Working directory.
    pub cwd: String,
}

impl std::fmt::Display for InterpreterInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  python:     {} ({})",
            self.version.lines().next().unwrap_or(""),
            self.prefix
        )?;
        if !self.executable.is_empty() {
            writeln!(f, "  executable: {}", self.executable)?;
        }
        match &self.venv {
            Some((p, how)) => writeln!(f, "  venv:       {} (from {how})", p.display())?,
            None => writeln!(
                f,
                "  venv:       none (pass --venv, set VIRTUAL_ENV, or put the app in a venv's tree)"
            )?,
        }
        writeln!(f, "  cwd:        {}", self.cwd)?;
        writeln!(f, "  sys.path:")?;
        for p in &self.sys_path {
            writeln!(f, "    {p}")?;
        }
        Ok(())
    }
}

/// Finds the venv to use: explicit, then `VIRTUAL_ENV`, then a `pyvenv.cfg` in `app_dir` or
/// one of its parents (an app living inside its venv's tree, or a `.venv` next to it).
pub fn find_venv(
    opts: &InterpreterOptions,
) -> Result<Option<(PathBuf, &'static str)>, PythonError> {
    if let Some(v) = &opts.venv {
        let venv = pyfcgi_iis::venv::venv_folder(v).map_err(|reason| PythonError::BadVenv {
            path: v.clone(),
            reason,
        })?;
        if venv != *v {
            tracing::info!(given = %v.display(), venv = %venv.display(),
                "--venv names a file or folder inside the venv: using the venv itself");
        }
        return Ok(Some((venv, "--venv")));
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from) {
        if v.join("pyvenv.cfg").is_file() {
            return Ok(Some((v, "VIRTUAL_ENV")));
        }
        warn!(path = %v.display(), "VIRTUAL_ENV does not point at a virtual environment (no pyvenv.cfg); ignoring it");
    }
    if let Some(start) = &opts.app_dir {
        let start = std::path::absolute(start).unwrap_or_else(|_| start.clone());
        for dir in start.ancestors() {
            if dir.join("pyvenv.cfg").is_file() {
                return Ok(Some((dir.to_owned(), "pyvenv.cfg above the app")));
            }
            for name in [".venv", "venv"] {
                if dir.join(name).join("pyvenv.cfg").is_file() {
                    return Ok(Some((dir.join(name), "a .venv/venv folder beside the app")));
                }
            }
        }
    }
    Ok(std::env::current_exe()
        .ok()
        .and_then(|exe| venv_holding(&exe))
        .map(|v| (v, "the venv pyfcgi is installed in")))
}

/// The venv whose `bin/` (Unix) or `Scripts\` (Windows) holds `exe`, as after
/// `pip install pyfcgi`.
pub fn venv_holding(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let name = dir.file_name()?.to_str()?;
    let venv = dir.parent()?;
    (["bin", "Scripts"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        && venv.join("pyvenv.cfg").is_file())
    .then(|| venv.to_owned())
}

/// Reads `key = value` from a venv's `pyvenv.cfg`.
fn pyvenv_value(venv: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_owned())
    })
}

/// The venv's site-packages directory for this interpreter's version.
fn venv_site_packages(venv: &Path, major: u8, minor: u8) -> PathBuf {
    if cfg!(windows) {
        venv.join("Lib").join("site-packages")
    } else {
        venv.join("lib")
            .join(format!("python{major}.{minor}"))
            .join("site-packages")
    }
}

/// Applies `opts` to the running interpreter. Call once, before loading the app.
pub fn setup(py: Python<'_>, opts: &InterpreterOptions) -> Result<InterpreterInfo, PythonError> {
    if let Some(dir) = &opts.chdir {
        std::env::set_current_dir(dir).map_err(|source| PythonError::Chdir {
            path: dir.clone(),
            source,
        })?;
    }
    let venv = find_venv(opts)?;
    let sys = py
        .import("sys")
        .map_err(|e| PythonError::python(py, "importing sys", &e))?;
    route_std_streams(py, &sys)
        .map_err(|e| PythonError::python(py, "redirecting sys.stdout/sys.stderr", &e))?;
    if let Some((path, how)) = &venv {
        apply_venv(py, &sys, path)
            .map_err(|e| PythonError::python(py, "applying the virtual environment", &e))?;
        info!(venv = %path.display(), from = how, "virtual environment applied");
    }
    if !opts.env.is_empty() {
        let environ = py
            .import("os")
            .and_then(|os| os.getattr("environ"))
            .map_err(|e| PythonError::python(py, "reading os.environ", &e))?;
        for (k, v) in &opts.env {
            environ
                .set_item(k, v)
                .map_err(|e| PythonError::python(py, format!("setting os.environ[{k:?}]"), &e))?;
        }
    }
    let sys_path = sys
        .getattr("path")
        .and_then(|p| Ok(p.cast_into::<PyList>()?))
        .map_err(|e| PythonError::python(py, "reading sys.path", &e))?;
    for dir in opts.pythonpath.iter().rev() {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        sys_path
            .insert(0, dir.to_string_lossy())
            .map_err(|e| PythonError::python(py, "extending sys.path", &e))?;
    }
    Ok(describe(py, venv))
}

/// Starts the interpreter (once per process). With `skip_site` (a venv is known before start),
/// `site` does not run at start-up: [`setup`] runs it later against the venv's prefix, the way
/// the venv's own `python` does. Otherwise the base interpreter's `site-packages` and every
/// `.pth` file in it would be processed first (imports and memory the venv never uses).
pub fn initialize(skip_site: bool) {
    // SAFETY: Py_IsInitialized may be called at any time, before initialisation too.
    let fresh = unsafe { pyo3::ffi::Py_IsInitialized() } == 0;
    if skip_site {
        // SAFETY: called before any other use of the interpreter, on one thread; the config
        // is initialised by CPython, changed field by field and cleared after use. After a
        // successful start the GIL is released, as pyo3's own initialisation does.
        unsafe {
            if pyo3::ffi::Py_IsInitialized() == 0 {
                let mut config = std::mem::MaybeUninit::<pyo3::ffi::PyConfig>::uninit();
                pyo3::ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
                let mut config = config.assume_init();
                config.site_import = 0;
                config.install_signal_handlers = 0;
                config.parse_argv = 0;
                let status = pyo3::ffi::Py_InitializeFromConfig(&raw const config);
                pyo3::ffi::PyConfig_Clear(&raw mut config);
                if pyo3::ffi::PyStatus_Exception(status) == 0 {
                    pyo3::ffi::PyEval_SaveThread();
                } else {
                    let text = |p: *const std::ffi::c_char| {
                        if p.is_null() {
                            String::new()
                        } else {
                            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                        }
                    };
                    warn!(func = %text(status.func), error = %text(status.err_msg),
                        "starting the interpreter without site failed; starting it normally");
                }
            }
        }
    }
    // A no-op when the interpreter is already running, apart from pyo3's bookkeeping.
    Python::initialize();
    // `threading` takes the thread that first imports it as the main thread. CPython's own
    // idea of it (signals, set_wakeup_fd) is the thread that started the interpreter, this
    // one. If an app imports neither asyncio nor threading, the first import would otherwise
    // happen on the ASGI event-loop thread, and uvloop, told it runs on the main thread,
    // would call set_wakeup_fd there and fail ("set_wakeup_fd only works in main thread").
    if fresh {
        Python::attach(|py| {
            if let Err(e) = py.import("threading") {
                warn!(error = %e, "importing threading at startup failed");
            }
        });
    }
}

/// The interpreter facts for logs and diagnoses.
pub fn describe(py: Python<'_>, venv: Option<(PathBuf, &'static str)>) -> InterpreterInfo {
    let get = |name: &str| -> String {
        py.import("sys")
            .and_then(|s| s.getattr(name))
            .and_then(|v| v.str().map(|s| s.to_string()))
            .unwrap_or_default()
    };
    let sys_path = py
        .import("sys")
        .and_then(|s| s.getattr("path"))
        .and_then(|p| p.extract::<Vec<String>>())
        .unwrap_or_default();
    InterpreterInfo {
        executable: get("executable"),
        version: get("version"),
        prefix: get("prefix"),
        venv,
        sys_path,
        cwd: std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

fn apply_venv(py: Python<'_>, sys: &Bound<'_, PyModule>, venv: &Path) -> PyResult<()> {
    let (major, minor): (u8, u8) = sys
        .getattr("version_info")?
        .extract::<(u8, u8, u8, String, u8)>()
        .map(|v| (v.0, v.1))?;
    if let Some(v) = pyvenv_value(venv, "version").or_else(|| pyvenv_value(venv, "version_info"))
        && !v.starts_with(&format!("{major}.{minor}"))
    {
        warn!(venv = %venv.display(), venv_python = %v, embedded = %format!("{major}.{minor}"),
            "the venv was made for another Python version; compiled packages in it may fail to import");
    }
    let site_packages = venv_site_packages(venv, major, minor);
    if !site_packages.is_dir() {
        warn!(path = %site_packages.display(), "the venv has no site-packages for this Python version");
    }
    let include_system = pyvenv_value(venv, "include-system-site-packages")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let venv_s = venv.to_string_lossy().into_owned();
    sys.setattr("prefix", &venv_s)?;
    sys.setattr("exec_prefix", &venv_s)?;
    let site_ran = sys.getattr("flags")?.getattr("no_site")?.extract::<i32>()? == 0;
    if !site_ran {
        // Started without site (see `initialize`): run it now for the venv, as its python
        // does: the venv's site-packages and .pth files, sitecustomize, exit()/help().
        let site = py.import("site")?;
        site.setattr("PREFIXES", PyList::new(py, [&venv_s, &venv_s])?)?;
        if include_system {
            let base: String = sys.getattr("base_prefix")?.extract()?;
            site.setattr("PREFIXES", PyList::new(py, [&venv_s, &base])?)?;
        } else {
            site.setattr("ENABLE_USER_SITE", false)?;
        }
        site.call_method0("main")?;
        py.import("os")?
            .getattr("environ")?
            .set_item("VIRTUAL_ENV", &venv_s)?;
        return Ok(());
    }
    let path: Bound<'_, PyList> = sys.getattr("path")?.cast_into()?;
    if !include_system {
        // Like a real venv: the base interpreter's site-packages are not visible.
        let keep = PyList::empty(py);
        for p in path.iter() {
            let s: String = p.extract()?;
            if !(s.ends_with("site-packages") || s.ends_with("dist-packages")) {
                keep.append(p)?;
            }
        }
        sys.setattr("path", &keep)?;
    }
    // addsitedir processes .pth files; then move the new entries to the front.
    let path: Bound<'_, PyList> = sys.getattr("path")?.cast_into()?;
    let before = path.len();
    py.import("site")?
        .call_method1("addsitedir", (site_packages.to_string_lossy(),))?;
    let path: Bound<'_, PyList> = sys.getattr("path")?.cast_into()?;
    let added: Vec<Bound<'_, PyAny>> = path.iter().skip(before).collect();
    let reordered = PyList::empty(py);
    for p in &added {
        reordered.append(p)?;
    }
    for p in path.iter().take(before) {
        reordered.append(p)?;
    }
    sys.setattr("path", reordered)?;
    py.import("os")?
        .getattr("environ")?
        .set_item("VIRTUAL_ENV", &venv_s)?;
    Ok(())
}

/// `print()` and the default logging handler write to `sys.stdout`/`sys.stderr`; under IIS
/// those are invalid handles and under nginx nobody reads them. Route both into the log.
fn route_std_streams(py: Python<'_>, sys: &Bound<'_, PyModule>) -> PyResult<()> {
    sys.setattr(
        "stdout",
        Py::new(py, LogStream::new("stdout", tracing::Level::INFO))?,
    )?;
    sys.setattr(
        "stderr",
        Py::new(py, LogStream::new("stderr", tracing::Level::WARN))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::venv_holding;

    #[test]
    fn the_venv_holding_the_exe_needs_bin_or_scripts_and_a_pyvenv_cfg() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path().join("site venv");
        for d in ["bin", "Scripts", "tools"] {
            std::fs::create_dir_all(venv.join(d)).unwrap();
        }
        assert_eq!(
            venv_holding(&venv.join("bin/pyfcgi")),
            None,
            "no pyvenv.cfg yet"
        );
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        assert_eq!(venv_holding(&venv.join("bin/pyfcgi")), Some(venv.clone()));
        assert_eq!(
            venv_holding(&venv.join("Scripts/pyfcgi.exe")),
            Some(venv.clone())
        );
        assert_eq!(venv_holding(&venv.join("tools/pyfcgi")), None);
    }
}
