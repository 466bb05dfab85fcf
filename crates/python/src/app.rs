//! Application specs and loading.
//!
//! Accepted forms:
//! * `module:attr` (`attr` may be dotted: `module:obj.app`)
//! * `module:factory()` or `module:factory('arg', 2)`: call it (literal arguments only)
//! * `path/to/file.py:attr` (the file's directory goes first on `sys.path`)
//! * wfastcgi's dotted form `package.module.attr` and `package.module.factory()`: the longest
//!   importable module prefix is imported, the rest is looked up on it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::PythonError;

/// A parsed application spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// The text as given.
    pub raw: String,
    /// What to import.
    pub target: Target,
    /// Attribute path on the module (empty for the dotted form, which resolves it at load).
    pub attrs: Vec<String>,
    /// `Some(args)` when the last attribute is to be called; `args` is the Python literal text
    /// between the parentheses.
    pub call: Option<String>,
}

/// Where the application lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An importable module name.
    Module(String),
    /// A `.py` file.
    File(PathBuf),
    /// wfastcgi's `a.b.c` form: split into module and attributes when loading.
    Dotted(String),
}

impl AppSpec {
    /// Parses a spec.
    pub fn parse(spec: &str) -> Result<Self, PythonError> {
        let bad = |reason: &str| PythonError::BadAppSpec {
            spec: spec.to_owned(),
            reason: format!(
                "{reason}; expected module:attr, module:factory(), path/to/app.py:attr or package.module.attr"
            ),
        };
        let spec_t = spec.trim();
        if spec_t.is_empty() {
            return Err(bad("it is empty"));
        }
        let (body, call) = match spec_t.find('(') {
            Some(open) => {
                if !spec_t.ends_with(')') {
                    return Err(bad("a call must end with ')'"));
                }
                (
                    &spec_t[..open],
                    Some(spec_t[open + 1..spec_t.len() - 1].to_owned()),
                )
            }
            None => (spec_t, None),
        };
        // A Windows drive letter (C:\app\wsgi.py:app) has a colon too: split at the last one.
        let colon = body.rfind(':').filter(|&i| !is_drive_colon(body, i));
        #[allow(clippy::single_match_else)]
        let (target, attrs) = match colon {
            Some(i) => {
                let (module, attr) = (&body[..i], &body[i + 1..]);
                if attr.is_empty() {
                    return Err(bad("nothing after ':'"));
                }
                let attrs: Vec<String> = attr.split('.').map(str::to_owned).collect();
                if attrs.iter().any(|a| !is_identifier(a)) {
                    return Err(bad("the attribute is not a Python name"));
                }
                let target = if Path::new(module)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("py"))
                    || module.contains('/')
                    || module.contains('\\')
                {
                    Target::File(PathBuf::from(module))
                } else if module.split('.').all(is_identifier) {
                    Target::Module(module.to_owned())
                } else {
                    return Err(bad("the module is not a dotted Python name"));
                };
                (target, attrs)
            }
            None => {
                if !body.contains('.') || !body.split('.').all(is_identifier) {
                    return Err(bad("no ':' and not a dotted name"));
                }
                (Target::Dotted(body.to_owned()), Vec::new())
            }
        };
        Ok(Self {
            raw: spec.to_owned(),
            target,
            attrs,
            call,
        })
    }

    /// The directory to search for a venv and to put on `sys.path` for a file target.
    pub fn app_dir(&self) -> Option<PathBuf> {
        match &self.target {
            Target::File(p) => Some(
                p.parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ),
            _ => std::env::current_dir().ok(),
        }
    }

    /// Imports and resolves the application object.
    pub fn load(&self, py: Python<'_>) -> Result<Py<PyAny>, PythonError> {
        let ctx = |what: &str| format!("{what} for application {}", self.raw);
        let import_failed = |what: String, e: &PyErr| {
            let mut err = PythonError::python(py, ctx(&what), e);
            if let (Some(hint), PythonError::Python { traceback, .. }) =
                (not_found_hint(py, e), &mut err)
            {
                traceback.push_str(&hint);
            }
            err
        };
        let (module, attrs) = match &self.target {
            Target::Module(m) => {
                ensure_cwd_on_path(py)
                    .map_err(|e| PythonError::python(py, ctx("extending sys.path"), &e))?;
                let m = py
                    .import(m.as_str())
                    .map_err(|e| import_failed(format!("importing module {m}"), &e))?;
                (m.into_any(), self.attrs.clone())
            }
            Target::File(p) => (
                load_file(py, p).map_err(|e| {
                    PythonError::python(py, ctx(&format!("loading {}", p.display())), &e)
                })?,
                self.attrs.clone(),
            ),
            Target::Dotted(d) => {
                ensure_cwd_on_path(py)
                    .map_err(|e| PythonError::python(py, ctx("extending sys.path"), &e))?;
                import_longest_prefix(py, d)
                    .map_err(|e| import_failed(format!("importing {d}"), &e))?
            }
        };
        let mut obj = module;
        for a in &attrs {
            obj = match obj.getattr(a.as_str()) {
                Ok(o) => o,
                Err(e) => {
                    // `mysite.wsgi` (or `mysite:wsgi`) where `mysite.wsgi:application` was
                    // meant: `wsgi` is no attribute of the package (it is not imported), but a
                    // module of that name exists.
                    if self.call.is_none()
                        && is_module(py, &obj)
                        && let Ok(parent) =
                            obj.getattr("__name__").and_then(|n| n.extract::<String>())
                    {
                        let name = format!("{parent}.{a}");
                        if let Some(m) = whole_module(py, &name) {
                            return Err(module_given(&self.raw, &name, &m));
                        }
                    }
                    return Err(PythonError::python(py, ctx(&format!("looking up {a}")), &e));
                }
            };
        }
        if self.call.is_none() && is_module(py, &obj) {
            let name = obj
                .getattr("__name__")
                .and_then(|n| n.extract::<String>())
                .unwrap_or_else(|_| self.raw.clone());
            return Err(module_given(&self.raw, &name, &obj));
        }
        if let Some(args) = &self.call {
            let (args, kwargs) = factory_args(py, args).map_err(|e| {
                PythonError::python(
                    py,
                    ctx("parsing the factory arguments (only literals are allowed)"),
                    &e,
                )
            })?;
            obj = obj
                .call(args, Some(&kwargs))
                .map_err(|e| PythonError::python(py, ctx("calling the application factory"), &e))?;
        }
        if !obj.is_callable() {
            let type_name = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(PythonError::NotCallable {
                spec: self.raw.clone(),
                type_name,
            });
        }
        Ok(obj.unbind())
    }
}

fn is_module(py: Python<'_>, obj: &Bound<'_, PyAny>) -> bool {
    py.import("types")
        .and_then(|t| t.getattr("ModuleType"))
        .and_then(|m| obj.is_instance(&m))
        .unwrap_or(false)
}

/// The module `dotted` names as a whole, when it is one (imported).
fn whole_module<'py>(py: Python<'py>, dotted: &str) -> Option<Bound<'py, PyAny>> {
    let util = py.import("importlib.util").ok()?;
    let spec = util.call_method1("find_spec", (dotted,)).ok()?;
    if spec.is_none() {
        return None;
    }
    py.import(dotted).ok().map(Bound::into_any)
}

/// The error for a spec that names `module` (called `name`): which callable in it was meant.
fn module_given(spec: &str, name: &str, module: &Bound<'_, PyAny>) -> PythonError {
    let callable = |attr: &str| {
        module
            .getattr(attr)
            .is_ok_and(|a| a.is_callable() && !a.is_instance_of::<pyo3::types::PyType>())
    };
    let found: Vec<&str> = ["application", "app", "api"]
        .into_iter()
        .filter(|a| callable(a))
        .collect();
    let suggestion = match found.as_slice() {
        [one, ..] => format!("did you mean {name}:{one}?"),
        [] if callable("create_app") => format!("did you mean {name}:create_app()?"),
        [] => format!(
            "name the WSGI or ASGI callable in it as module:attribute, such as {name}:application"
        ),
    };
    PythonError::ModuleGiven {
        spec: spec.to_owned(),
        suggestion,
    }
}

/// For an import that found no module: the folders Python searched (`sys.path`) and the
/// names in the app folder close to the missing one.
fn not_found_hint(py: Python<'_>, err: &PyErr) -> Option<String> {
    if !err.is_instance_of::<pyo3::exceptions::PyModuleNotFoundError>(py) {
        return None;
    }
    let missing: String = err.value(py).getattr("name").ok()?.extract().ok()?;
    let top = missing.split('.').next().unwrap_or(&missing).to_owned();
    let sys_path: Vec<String> = py
        .import("sys")
        .ok()?
        .getattr("path")
        .ok()?
        .extract()
        .ok()?;
    let folder = std::env::current_dir().ok()?;
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?.to_owned();
            if p.is_dir() && !name.starts_with('.') && name != "__pycache__" {
                Some(name)
            } else {
                name.strip_suffix(".py").map(str::to_owned)
            }
        })
        .collect();
    names.sort();
    let close: Vec<String> = py
        .import("difflib")
        .and_then(|d| d.call_method1("get_close_matches", (&top, names, 5, 0.6)))
        .and_then(|m| m.extract())
        .unwrap_or_default();
    let mut hint =
        format!("\nNo module named {top:?} in any folder Python searched (sys.path, in order):\n");
    for p in &sys_path {
        hint.push_str("  ");
        hint.push_str(if p.is_empty() {
            "(the current directory)"
        } else {
            p
        });
        hint.push('\n');
    }
    if close.is_empty() {
        let _ = writeln!(
            hint,
            "Nothing with a similar name is in the app folder {}.",
            folder.display()
        );
    } else {
        let _ = writeln!(
            hint,
            "Similar names in the app folder {}: {}.",
            folder.display(),
            close.join(", ")
        );
    }
    Some(hint)
}

/// The positional and keyword arguments of `factory(ARGS)`, each a Python literal
/// (`create_app('prod', debug=False)`), parsed with `ast` and evaluated with `literal_eval`.
fn factory_args<'py>(
    py: Python<'py>,
    args: &str,
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
    let ast = py.import("ast")?;
    let kwargs = PyDict::new(py);
    if args.trim().is_empty() {
        return Ok((PyTuple::empty(py), kwargs));
    }
    let mode = PyDict::new(py);
    mode.set_item("mode", "eval")?;
    let call = ast
        .call_method("parse", (format!("f({args})"),), Some(&mode))?
        .getattr("body")?;
    // `f(1), g(2)` or `f(1)(2)` would parse too: only one plain argument list is accepted.
    if !(call.is_instance(&ast.getattr("Call")?)?
        && call.getattr("func")?.is_instance(&ast.getattr("Name")?)?)
    {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "({args}) is not one argument list"
        )));
    }
    let mut positional = Vec::new();
    for node in call.getattr("args")?.try_iter()? {
        positional.push(ast.call_method1("literal_eval", (node?,))?);
    }
    for kw in call.getattr("keywords")?.try_iter()? {
        let kw = kw?;
        let name = kw.getattr("arg")?;
        if name.is_none() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "**mapping is not allowed in factory arguments",
            ));
        }
        kwargs.set_item(
            name,
            ast.call_method1("literal_eval", (kw.getattr("value")?,))?,
        )?;
    }
    Ok((PyTuple::new(py, positional)?, kwargs))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn is_drive_colon(s: &str, i: usize) -> bool {
    i == 1
        && s.as_bytes()[0].is_ascii_alphabetic()
        && matches!(s.as_bytes().get(2), Some(b'\\' | b'/'))
}

/// Like `python -m`/gunicorn: the working directory is importable.
fn ensure_cwd_on_path(py: Python<'_>) -> PyResult<()> {
    let path: Bound<'_, PyList> = py.import("sys")?.getattr("path")?.cast_into()?;
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !path.iter().any(|p| {
        p.extract::<String>()
            .is_ok_and(|s| s == cwd || s.is_empty())
    }) {
        path.insert(0, cwd)?;
    }
    Ok(())
}

fn load_file<'py>(py: Python<'py>, file: &Path) -> PyResult<Bound<'py, PyAny>> {
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    if !abs.is_file() {
        return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
            "no such file: {}",
            abs.display()
        )));
    }
    let dir = abs
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let path: Bound<'_, PyList> = py.import("sys")?.getattr("path")?.cast_into()?;
    path.insert(0, &dir)?;
    let name = abs
        .file_stem()
        .map_or_else(|| "app".into(), |s| s.to_string_lossy().into_owned());
    let util = py.import("importlib.util")?;
    let spec = util.call_method1(
        "spec_from_file_location",
        (&name, abs.display().to_string()),
    )?;
    let module = util.call_method1("module_from_spec", (&spec,))?;
    py.import("sys")?
        .getattr("modules")?
        .set_item(&name, &module)?;
    spec.getattr("loader")?
        .call_method1("exec_module", (&module,))?;
    Ok(module)
}

/// wfastcgi's resolution: import the longest importable prefix of `a.b.c.d`, then look the
/// rest up as attributes. A failing import of an existing module (a real error inside it) is
/// reported as such rather than masked by a shorter prefix.
fn import_longest_prefix<'py>(
    py: Python<'py>,
    dotted: &str,
) -> PyResult<(Bound<'py, PyAny>, Vec<String>)> {
    let parts: Vec<&str> = dotted.split('.').collect();
    let util = py.import("importlib.util")?;
    let mut last_err = None;
    for split in (1..parts.len()).rev() {
        let module = parts[..split].join(".");
        // find_spec tells "no such module" apart from "module raised while importing".
        let found = match util.call_method1("find_spec", (&module,)) {
            Ok(s) => !s.is_none(),
            Err(e) => {
                last_err = Some(e);
                false
            }
        };
        if !found {
            continue;
        }
        let m = py.import(module.as_str())?;
        return Ok((
            m.into_any(),
            parts[split..].iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    Err(last_err.unwrap_or_else(|| {
        pyo3::exceptions::PyModuleNotFoundError::new_err(format!(
            "no importable module in {dotted:?}"
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = AppSpec::parse("myapp.wsgi:application").unwrap();
        assert_eq!(s.target, Target::Module("myapp.wsgi".into()));
        assert_eq!(s.attrs, ["application"]);
        assert_eq!(s.call, None);
        let s = AppSpec::parse("app:create_app('prod', debug=False)").unwrap();
        assert_eq!(s.call.as_deref(), Some("'prod', debug=False"));
        let s = AppSpec::parse("site/app.py:app").unwrap();
        assert_eq!(s.target, Target::File("site/app.py".into()));
        let s = AppSpec::parse(r"C:\inetpub\app\wsgi.py:app").unwrap();
        assert_eq!(s.target, Target::File(r"C:\inetpub\app\wsgi.py".into()));
        let s = AppSpec::parse("django.core.wsgi.get_wsgi_application()").unwrap();
        assert_eq!(
            s.target,
            Target::Dotted("django.core.wsgi.get_wsgi_application".into())
        );
        assert_eq!(s.call.as_deref(), Some(""));
        assert_eq!(AppSpec::parse("m:a.b").unwrap().attrs, ["a", "b"]);
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        for bad in ["", "app", "m:", "m:1x", "m:f(", "bad-name:app", "m:a-b"] {
            let e = AppSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected module:attr"), "{bad}: {e}");
        }
    }
}
