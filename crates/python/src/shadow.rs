//! Files in the application's folder named like a standard library module (`site.py`,
//! `code.py`, `email/`): either Python had imported the standard module already and the
//! file is never loaded, or the file replaces the standard module for everything that
//! imports it. Both show up as baffling errors far from the cause, so `check`, `doctor` and
//! the load error name both files.

use std::fmt;
use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// One file that has the name of a standard library module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The module name (`site`).
    pub module: String,
    /// The application's file (`/srv/app/site.py`).
    pub file: String,
    /// Where the standard module lives (a path, or "built into the interpreter").
    pub stdlib: String,
    /// What `sys.modules` holds under that name now, if anything.
    pub loaded: Option<String>,
}

impl Shadow {
    /// Python imported the standard module before the app could: the file is never used.
    pub fn eclipsed(&self) -> bool {
        self.loaded.as_deref().is_some_and(|l| l != self.file)
    }
}

impl fmt::Display for Shadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            module,
            file,
            stdlib,
            ..
        } = self;
        if self.eclipsed() {
            write!(
                f,
                "{file} has the name of the standard library module `{module}` ({stdlib}), which Python had imported already: \
                 `import {module}` gives the standard module, never your file; rename {file}"
            )
        } else {
            write!(
                f,
                "{file} shadows the standard library module `{module}` ({stdlib}): \
                 everything that imports `{module}` (the standard library itself, frameworks) gets your file; rename {file}"
            )
        }
    }
}

/// The files in `folder` that have the name of a standard library module, sorted by name.
/// Empty when the folder cannot be read or Python cannot tell.
pub fn stdlib_shadows(py: Python<'_>, folder: &Path) -> Vec<Shadow> {
    let found = || -> PyResult<Vec<Shadow>> {
        let code = std::ffi::CString::new(include_str!("shadow.py"))
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let module = PyModule::from_code(py, &code, c"pyfcgi_shadow.py", c"pyfcgi_shadow")?;
        let rows: Vec<(String, String, String, Option<String>)> = module
            .call_method1("shadows", (folder.display().to_string(),))?
            .extract()?;
        Ok(rows
            .into_iter()
            .map(|(module, file, stdlib, loaded)| Shadow {
                module,
                file,
                stdlib,
                loaded,
            })
            .collect())
    };
    found().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_both_files() {
        let mut s = Shadow {
            module: "site".into(),
            file: "/srv/app/site.py".into(),
            stdlib: "/usr/lib/python3.11/site.py".into(),
            loaded: Some("/usr/lib/python3.11/site.py".into()),
        };
        assert!(s.eclipsed());
        let m = s.to_string();
        assert!(
            m.contains("/srv/app/site.py") && m.contains("/usr/lib/python3.11/site.py"),
            "{m}"
        );
        assert!(m.contains("imported already"), "{m}");
        s.loaded = Some("/srv/app/site.py".into());
        assert!(!s.eclipsed());
        assert!(
            s.to_string()
                .contains("shadows the standard library module `site`")
        );
        s.loaded = None;
        assert!(!s.eclipsed());
    }
}
