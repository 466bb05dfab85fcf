//! Finding the CPython pyfcgi embeds, before the interpreter starts.
//!
//! On Windows `python3XY.dll` is delay-loaded (build.rs), so `pyfcgi.exe` starts even when the
//! Python folder is not on `PATH`. Before the first Python call it looks for the DLL, in this
//! order (the first hit wins; a wrong explicit setting or a venv made for another Python stops
//! the search with a diagnosis rather than silently using something else):
//!
//! 1. `--python-home` / `PYFCGI_PYTHON_HOME` (web.config appSetting `PYFCGI_PYTHON_HOME`): the
//!    folder that holds the DLL, or the DLL itself;
//! 2. the venv: `--venv` / `PYFCGI_VENV`, `VIRTUAL_ENV`, a venv beside or above the app, or the
//!    venv whose `Scripts\` holds pyfcgi.exe (`pip install pyfcgi`), through `pyvenv.cfg`'s
//!    `home`;
//! 3. `PYTHONHOME`;
//! 4. the PEP 514 registry keys `HKCU|HKLM\Software\Python\PythonCore\3.XY\InstallPath`;
//! 5. the folder of pyfcgi.exe and `PATH` (where Windows itself would look).
//!
//! On Unix libpython is linked normally (with an rpath, build.rs); the twin only reports it.
//! The search itself is plain file lookups, compiled everywhere so its tests run on Linux too.

#[cfg_attr(not(windows), allow(dead_code))]
mod search;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::{ensure_loaded, found_description};
#[cfg(windows)]
pub use windows::{ensure_loaded, found_description};

pub use search::{Hints, NotFound};

/// The CPython version this binary was built for, like `3.11`.
pub const BUILT_FOR: &str = env!("PYFCGI_PYTHON_BUILT");

/// Where the interpreter was found.
#[derive(Debug, Clone)]
pub struct Found {
    /// The python3XY.dll or libpython3.X.so that is loaded.
    pub library: std::path::PathBuf,
    /// Which rule found it (`--venv`, `registry`, ...).
    pub source: String,
}
