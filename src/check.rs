//! `pyfcgi check APP`.

use std::process::ExitCode;

/// `pyfcgi check APP`: the settings resolved as `serve` resolves them (flags, environment,
/// pyfcgi.toml), then the app loaded through the same code; prints the diagnosis (the
/// interpreter, the venv, `sys.path`).
pub fn main(args: crate::CheckArgs) -> ExitCode {
    crate::logging::init_stderr("warn");
    let mut flags = args.python.0.0;
    flags.push(pyfcgi_settings::Arg {
        name: "app".into(),
        value: args.app.clone(),
        flag: "APP".into(),
    });
    let res = crate::startup::resolve(&crate::startup::inputs(flags, None));
    for u in &res.unknown {
        eprintln!("pyfcgi check: warning: {u}");
    }
    if !res.errors.is_empty() {
        eprintln!("pyfcgi check: {}", res.error_report());
        return ExitCode::from(crate::exit::SETTINGS);
    }
    let python = crate::startup::python_settings(&res.settings);
    if let Err(nf) = pyfcgi_pyhome::ensure_loaded(&crate::python::hints(&python, Some(&args.app))) {
        eprintln!("pyfcgi check: {}", nf.diagnosis());
        return ExitCode::from(crate::exit::NO_PYTHON);
    }
    match crate::python::resolve(&args.app, &python, &res.settings.app_env) {
        Ok((pyfcgi_python::AppState::Loaded(_), report)) => {
            println!("OK: {report}");
            ExitCode::SUCCESS
        }
        Ok((_, report)) => {
            eprintln!("pyfcgi check: {report}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pyfcgi check: {e:#}");
            ExitCode::from(1)
        }
    }
}
