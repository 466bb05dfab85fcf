//! What a venv setting (`--venv`, `PYFCGI_VENV`) names. It lives in this crate, with the
//! web.config reader, because everything that reads settings depends on it: the settings, the
//! Python host, the interpreter search and `pyfcgi iis enable`, with or without Python.

use std::path::{Path, PathBuf};

/// The venv a `--venv` value names: the folder itself when it holds `pyvenv.cfg`, or the venv
/// around an interpreter given in its place (`.venv\Scripts\python.exe`, `.venv/bin/python`,
/// `activate_this.py`, or that `Scripts`/`bin` folder, which is what people copy from a
/// shell). Otherwise why it
/// is not a venv, with the fix.
pub fn venv_folder(given: &Path) -> Result<PathBuf, String> {
    let is_venv = |p: &Path| p.join("pyvenv.cfg").is_file();
    let scripts_dir = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.eq_ignore_ascii_case("Scripts") || n == "bin")
    };
    if is_venv(given) {
        return Ok(given.to_owned());
    }
    if !given.exists() {
        return Err(match given.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) if !parent.exists() => format!(
                "it does not exist (nor does {}); create it with `python -m venv {}`",
                parent.display(),
                given.display()
            ),
            _ => format!(
                "it does not exist; create it with `python -m venv {}`",
                given.display()
            ),
        });
    }
    if given.is_file() {
        // The interpreter, or virtualenv's activate_this.py (wfastcgi's
        // WSGI_ALT_VIRTUALENV_ACTIVATE_THIS names one or the other).
        let interpreter = given
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_ascii_lowercase)
            .is_some_and(|n| n.starts_with("python") || n == "activate_this.py");
        if let Some(dir) = given.parent()
            && interpreter
            && scripts_dir(dir)
            && let Some(venv) = dir.parent()
            && is_venv(venv)
        {
            return Ok(venv.to_owned());
        }
        return Err(format!(
            "it is a file, not a venv folder; give the folder that holds pyvenv.cfg{}",
            given
                .parent()
                .and_then(Path::parent)
                .filter(|v| is_venv(v))
                .map(|v| format!(" ({})", v.display()))
                .unwrap_or_default()
        ));
    }
    if scripts_dir(given)
        && let Some(venv) = given.parent()
        && is_venv(venv)
    {
        return Ok(venv.to_owned());
    }
    for child in [".venv", "venv", "env"] {
        let c = given.join(child);
        if is_venv(&c) {
            return Err(format!(
                "it has no pyvenv.cfg, but {} is a venv: use --venv {}",
                c.display(),
                c.display()
            ));
        }
    }
    Err(format!(
        "it has no pyvenv.cfg, so it is not a virtual environment; create one with `python -m venv {}`",
        given.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::venv_folder;

    #[test]
    fn a_venv_its_interpreter_and_its_scripts_folder_all_name_the_venv() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path().join(".venv");
        for bin in ["bin", "Scripts"] {
            std::fs::create_dir_all(venv.join(bin)).unwrap();
        }
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::fs::write(venv.join("bin").join("python"), "").unwrap();
        std::fs::write(venv.join("Scripts").join("python.exe"), "").unwrap();
        for given in [
            venv.clone(),
            venv.join("bin").join("python"),
            venv.join("Scripts").join("python.exe"),
            venv.join("Scripts"),
            venv.join("bin"),
        ] {
            assert_eq!(venv_folder(&given).unwrap(), venv, "{}", given.display());
        }
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = venv_folder(&missing).unwrap_err();
        assert!(e.starts_with("it does not exist;"), "{e}");
        assert!(!e.contains("pyvenv.cfg"), "{e}");
        let e = venv_folder(&missing.join("deeper")).unwrap_err();
        assert!(e.contains("nor does"), "{e}");
        std::fs::create_dir_all(t.path().join("site").join(".venv")).unwrap();
        std::fs::write(t.path().join("site").join(".venv").join("pyvenv.cfg"), "").unwrap();
        let e = venv_folder(&t.path().join("site")).unwrap_err();
        assert!(e.contains("is a venv: use --venv"), "{e}");
        std::fs::write(t.path().join("notes.txt"), "").unwrap();
        let e = venv_folder(&t.path().join("notes.txt")).unwrap_err();
        assert!(e.starts_with("it is a file"), "{e}");
        let e = venv_folder(t.path()).unwrap_err();
        assert!(e.contains("no pyvenv.cfg"), "{e}");
    }
}
