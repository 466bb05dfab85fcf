//! The search order of [`super`], over plain files: which folder holds `python3XY.dll`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the command line and web.config say about the interpreter and the app.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// `--python-home`: a folder holding the DLL, or the DLL itself.
    pub explicit: Option<PathBuf>,
    /// `--venv` (web.config `PYFCGI_VENV` arrives here too).
    pub venv: Option<PathBuf>,
    /// Folders the app lives in; a venv is looked for in them and their parents.
    pub app_dirs: Vec<PathBuf>,
}

/// The process's side of the search: environment, own location, registry.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub virtual_env: Option<PathBuf>,
    pub python_home: Option<PathBuf>,
    /// The folder of the running executable.
    pub exe_dir: Option<PathBuf>,
    /// `PATH`, split.
    pub path: Vec<PathBuf>,
    /// PEP 514 entries: (tag like `3.11`, InstallPath).
    pub registry: Vec<(String, PathBuf)>,
}

/// One place looked at, for the diagnosis.
#[derive(Debug, Clone)]
pub struct Tried {
    pub source: String,
    pub path: PathBuf,
    pub outcome: String,
}

/// No usable Python: what was tried, and whether a wrong version is the cause.
#[derive(Debug, Clone)]
pub struct NotFound {
    pub dll: String,
    pub built_for: String,
    pub tried: Vec<Tried>,
    /// A wrong-version DLL where the configuration pointed (venv or explicit).
    pub mismatch: Option<String>,
}

impl NotFound {
    /// The full diagnosis, for the log and the event log (names paths, never values of other
    /// settings).
    pub fn diagnosis(&self) -> String {
        let mut s = format!(
            "pyfcgi cannot start Python: this pyfcgi is built for CPython {} and needs {}, ",
            self.built_for, self.dll
        );
        match &self.mismatch {
            Some(m) => {
                let _ = write!(s, "but the configured Python is another version: {m}.");
            }
            None => s.push_str("which was not found."),
        }
        s.push_str("\nLooked in, in order:");
        for t in &self.tried {
            let _ = write!(s, "\n  {}: {}: {}", t.source, t.path.display(), t.outcome);
        }
        if self.tried.is_empty() {
            s.push_str("\n  (nowhere: no venv, PYTHONHOME, registry entry or PATH folder)");
        }
        let _ = write!(s, "\nTo fix: {}", self.remedy());
        s
    }

    /// What to do, without any path or setting value (for the 500 page visitors may see).
    pub fn remedy(&self) -> String {
        let v = &self.built_for;
        if self.mismatch.is_some() {
            format!(
                "use a venv made with Python {v} (python{v} -m venv ...), or install the pyfcgi build for the venv's Python into that venv (pip install pyfcgi picks it)."
            )
        } else {
            format!(
                "install CPython {v} for all users (python.org), or set the PYFCGI_PYTHON_HOME appSetting (--python-home) to the folder that holds {dll}, or point PYFCGI_VENV (--venv) at a venv made with Python {v}.",
                dll = self.dll
            )
        }
    }

    /// The body of the 500 page answered to the pending request.
    pub fn page(&self) -> String {
        let what = if self.mismatch.is_some() {
            format!(
                "it is built for CPython {} ({}), but the configured Python is another version",
                self.built_for, self.dll
            )
        } else {
            format!("{} was not found", self.dll)
        };
        format!(
            "pyfcgi could not start Python: {what}.\n\nTo fix: {}\n\nThe pyfcgi log (WSGI_LOG / --log-file) and the Windows Application event log list every place searched.\n",
            self.remedy()
        )
    }
}

/// Finds the folder holding `dll` (`python311.dll`), or says why not.
pub fn search(
    hints: &Hints,
    env: &Environment,
    dll: &str,
    built_for: &str,
) -> Result<(PathBuf, String), NotFound> {
    let mut nf = NotFound {
        dll: dll.to_owned(),
        built_for: built_for.to_owned(),
        tried: Vec::new(),
        mismatch: None,
    };
    let note = |nf: &mut NotFound, source: &str, path: &Path, outcome: String| {
        nf.tried.push(Tried {
            source: source.to_owned(),
            path: path.to_owned(),
            outcome,
        });
    };
    // 1. explicit: wrong means stop.
    if let Some(p) = &hints.explicit {
        let dir = if p.is_file() {
            p.parent().map(Path::to_owned).unwrap_or_default()
        } else {
            p.clone()
        };
        match look(&dir, dll) {
            Look::Found => return Ok((dir, "--python-home".into())),
            other => {
                if let Look::Other(names) = &other {
                    nf.mismatch = Some(format!("{} holds {names}", dir.display()));
                }
                note(&mut nf, "--python-home", &dir, other.describe(dll));
                return Err(nf);
            }
        }
    }
    // 2. venvs, in the order interp::find_venv applies them, then the exe's own venv.
    let mut venvs: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(v) = &hints.venv {
        match pyfcgi_iis::venv::venv_folder(v) {
            Ok(venv) => venvs.push((venv, "--venv")),
            Err(why) => note(&mut nf, "--venv", v, why),
        }
    } else {
        if let Some(v) = &env.virtual_env {
            venvs.push((v.clone(), "VIRTUAL_ENV"));
        }
        for dir in &hints.app_dirs {
            if let Some(v) = venv_near(dir) {
                venvs.push((v, "venv beside or above the app"));
            }
        }
    }
    if let Some(exe_dir) = &env.exe_dir
        && let Some(venv) = exe_dir.parent()
        && venv.join("pyvenv.cfg").is_file()
    {
        venvs.push((venv.to_owned(), "the venv holding pyfcgi"));
    }
    for (venv, source) in venvs {
        let Some(home) = pyvenv_home(&venv) else {
            note(
                &mut nf,
                source,
                &venv,
                "no pyvenv.cfg with a `home = ` line".into(),
            );
            continue;
        };
        let source = format!("{source} {} (pyvenv.cfg home)", venv.display());
        match look(&home, dll) {
            Look::Found => return Ok((home, source)),
            Look::Other(names) => {
                nf.mismatch = Some(format!(
                    "the venv {} was made with {} ({names})",
                    venv.display(),
                    home.display()
                ));
                note(&mut nf, &source, &home, Look::Other(names).describe(dll));
                return Err(nf);
            }
            other => note(&mut nf, &source, &home, other.describe(dll)),
        }
    }
    // 3.-5. the machine's Pythons.
    let mut places: Vec<(String, PathBuf)> = Vec::new();
    if let Some(h) = &env.python_home {
        places.push(("PYTHONHOME".into(), h.clone()));
    }
    let mut other_tags = Vec::new();
    for (tag, path) in &env.registry {
        if tag == built_for {
            places.push((format!("registry PythonCore\\{tag}"), path.clone()));
        } else {
            other_tags.push(tag.as_str());
        }
    }
    if !other_tags.is_empty() {
        note(
            &mut nf,
            "registry (PEP 514)",
            Path::new("PythonCore"),
            format!(
                "only other versions are registered: {}",
                other_tags.join(", ")
            ),
        );
    }
    if let Some(d) = &env.exe_dir {
        places.push(("pyfcgi's folder".into(), d.clone()));
    }
    places.extend(env.path.iter().map(|p| ("PATH".to_owned(), p.clone())));
    for (source, dir) in places {
        match look(&dir, dll) {
            Look::Found => return Ok((dir, source)),
            // Unconfigured folders (PATH) are listed only when they hold something relevant.
            Look::Missing | Look::Empty if source == "PATH" => {}
            other => note(&mut nf, &source, &dir, other.describe(dll)),
        }
    }
    Err(nf)
}

enum Look {
    Found,
    Missing,
    Empty,
    Other(String),
}

impl Look {
    fn describe(&self, dll: &str) -> String {
        match self {
            Look::Found => "found".into(),
            Look::Missing => "folder does not exist".into(),
            Look::Empty => format!("no {dll} there"),
            Look::Other(names) => format!("holds {names}, not {dll}"),
        }
    }
}

fn look(dir: &Path, dll: &str) -> Look {
    if dir.join(dll).is_file() {
        return Look::Found;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Look::Missing;
    };
    let mut others: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            let l = n.to_ascii_lowercase();
            l.starts_with("python3")
                && std::path::Path::new(&l)
                    .extension()
                    .is_some_and(|e| e == "dll")
                && l != "python3.dll"
                && !l.eq_ignore_ascii_case(dll)
        })
        .collect();
    others.sort();
    if others.is_empty() {
        Look::Empty
    } else {
        Look::Other(others.join(", "))
    }
}

/// A venv in `dir` or above it: a `pyvenv.cfg` there, or in a `.venv`/`venv` child.
fn venv_near(dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    for d in dir.ancestors() {
        if d.join("pyvenv.cfg").is_file() {
            return Some(d.to_owned());
        }
        for name in [".venv", "venv"] {
            if d.join(name).join("pyvenv.cfg").is_file() {
                return Some(d.join(name));
            }
        }
    }
    None
}

/// `home = ...` of a venv's pyvenv.cfg (the base interpreter's folder).
pub fn pyvenv_home(venv: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("home") && !v.trim().is_empty())
            .then(|| PathBuf::from(v.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    fn venv(root: &Path, name: &str, home: &Path) -> PathBuf {
        let v = root.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(
            v.join("pyvenv.cfg"),
            format!("home = {}\r\nversion = 3.11.9\r\n", home.display()),
        )
        .unwrap();
        v
    }

    #[test]
    fn venv_home_is_found_before_pythonhome_and_path() {
        let t = tree();
        let py = t.path().join("py311");
        touch(&py.join("python311.dll"));
        let other = t.path().join("other");
        touch(&other.join("python311.dll"));
        let app = t.path().join("site");
        venv(&app, ".venv", &py);
        let hints = Hints {
            app_dirs: vec![app.clone()],
            ..Hints::default()
        };
        let env = Environment {
            python_home: Some(other.clone()),
            path: vec![other],
            ..Environment::default()
        };
        let (dir, source) = search(&hints, &env, "python311.dll", "3.11").unwrap();
        assert_eq!(dir, py);
        assert!(source.contains("venv beside or above the app"), "{source}");
    }

    #[test]
    fn venv_of_another_version_stops_the_search_with_a_mismatch() {
        let t = tree();
        let py39 = t.path().join("py39");
        touch(&py39.join("python39.dll"));
        let good = t.path().join("py311");
        touch(&good.join("python311.dll"));
        let v = venv(t.path(), "venv39", &py39);
        let hints = Hints {
            venv: Some(v),
            ..Hints::default()
        };
        let env = Environment {
            path: vec![good],
            ..Environment::default()
        };
        let nf = search(&hints, &env, "python311.dll", "3.11").unwrap_err();
        assert!(nf.mismatch.as_deref().unwrap().contains("python39.dll"));
        let d = nf.diagnosis();
        assert!(
            d.contains("built for CPython 3.11") && d.contains("python39.dll"),
            "{d}"
        );
        assert!(
            !nf.page().contains(&*t.path().to_string_lossy()),
            "no paths on the page"
        );
    }

    #[test]
    fn registry_pythonhome_exe_dir_and_path_in_order() {
        let t = tree();
        let reg = t.path().join("reg311");
        touch(&reg.join("python311.dll"));
        let exe = t.path().join("exe");
        touch(&exe.join("python311.dll"));
        let mut env = Environment {
            python_home: Some(t.path().join("nothing-here")),
            registry: vec![
                ("3.9".into(), t.path().join("x")),
                ("3.11".into(), reg.clone()),
            ],
            exe_dir: Some(exe.clone()),
            ..Environment::default()
        };
        let (dir, source) = search(&Hints::default(), &env, "python311.dll", "3.11").unwrap();
        assert_eq!((dir, source.as_str()), (reg, "registry PythonCore\\3.11"));
        env.registry.clear();
        let (dir, _) = search(&Hints::default(), &env, "python311.dll", "3.11").unwrap();
        assert_eq!(dir, exe);
    }

    #[test]
    fn nothing_found_lists_every_place_and_the_remedy() {
        let t = tree();
        let exe = t.path().join("Scripts");
        std::fs::create_dir_all(&exe).unwrap();
        let env = Environment {
            python_home: Some(t.path().join("gone")),
            exe_dir: Some(exe),
            path: vec![t.path().join("p1")],
            ..Environment::default()
        };
        let nf = search(&Hints::default(), &env, "python311.dll", "3.11").unwrap_err();
        assert!(nf.mismatch.is_none());
        let d = nf.diagnosis();
        assert!(
            d.contains("PYTHONHOME") && d.contains("folder does not exist"),
            "{d}"
        );
        assert!(
            d.contains("pyfcgi's folder") && d.contains("no python311.dll there"),
            "{d}"
        );
        assert!(nf.page().contains("python311.dll was not found"));
        assert!(nf.page().contains("PYFCGI_PYTHON_HOME"));
    }

    #[test]
    fn wrong_explicit_home_is_reported_not_bypassed() {
        let t = tree();
        let good = t.path().join("good");
        touch(&good.join("python311.dll"));
        let hints = Hints {
            explicit: Some(t.path().join("typo")),
            ..Hints::default()
        };
        let env = Environment {
            path: vec![good],
            ..Environment::default()
        };
        let nf = search(&hints, &env, "python311.dll", "3.11").unwrap_err();
        assert_eq!(nf.tried.len(), 1);
        assert!(nf.tried[0].source == "--python-home");
        // The DLL itself may be named too.
        let dll = t.path().join("good").join("python311.dll");
        let hints = Hints {
            explicit: Some(dll),
            ..Hints::default()
        };
        assert!(search(&hints, &Environment::default(), "python311.dll", "3.11").is_ok());
    }

    #[test]
    fn the_venv_holding_the_exe_is_used_after_app_venvs() {
        let t = tree();
        let py = t.path().join("py");
        touch(&py.join("python311.dll"));
        let v = venv(t.path(), "v", &py);
        let env = Environment {
            exe_dir: Some(v.join("Scripts")),
            ..Environment::default()
        };
        let (dir, source) = search(&Hints::default(), &env, "python311.dll", "3.11").unwrap();
        assert_eq!(dir, py);
        assert!(source.starts_with("the venv holding pyfcgi"), "{source}");
    }
}
