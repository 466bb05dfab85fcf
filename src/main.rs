//! The `pyfcgi` binary: command line, logging, lifecycle.

mod config;
mod doctor;
mod iis_cmd;
#[cfg(feature = "python")]
mod lazy;
// Without Python, the helpers only the WSGI path uses (file watcher) are unused.
#[cfg_attr(not(feature = "python"), allow(dead_code, unused_imports))]
mod lifecycle;
mod logging;
mod metrics;
#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_home;
mod serve;
mod settings;
mod status_http;
#[cfg(unix)]
mod supervisor;

use std::process::ExitCode;

use std::io::Write as _;

use clap::{Parser, Subcommand};

/// pyfcgi: a fast, robust FastCGI host for Python web apps (IIS, nginx, Apache, lighttpd).
#[derive(Debug, Parser)]
#[command(name = "pyfcgi", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a WSGI application (or a built-in handler) over FastCGI.
    #[command(args_override_self = true)]
    Serve(Box<serve::ServeArgs>),
    /// Load an application exactly as `serve` would, print the diagnosis, and exit non-zero
    /// if it fails to load.
    #[cfg(feature = "python")]
    Check(CheckArgs),
    /// Send one FastCGI request and print the response like `curl -i`.
    Request(pyfcgi_client::cli::RequestArgs),
    /// Load a FastCGI responder and report throughput, latency percentiles and errors
    /// (exit 2 when any request failed, 1 on a usage or setup error).
    Bench(Box<pyfcgi_client::bench::BenchArgs>),
    /// Register pyfcgi with IIS for a site (enable, disable), or print its web.config.
    Iis(iis_cmd::IisArgs),
    /// Check a site's IIS setup (web.config, handler, venv, import, logs) and say what to fix.
    Doctor(doctor::DoctorArgs),
}

#[cfg(feature = "python")]
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The WSGI application, as for `serve`.
    #[arg(value_name = "APP")]
    app: String,
    #[command(flatten)]
    python: serve::PythonArgs,
}

fn main() -> ExitCode {
    // Under IIS stdout/stderr are invalid handles: make them NUL before anything can print.
    pyfcgi_server::process::prepare_std_handles();
    if matches!(
        std::env::args_os()
            .nth(1)
            .as_deref()
            .and_then(|a| a.to_str()),
        Some("--version" | "-V")
    ) {
        print!("{}", version_report());
        return ExitCode::SUCCESS;
    }
    let (merged, sources) = match config::merged_args(std::env::args_os().collect()) {
        Ok(x) => x,
        Err(e) => {
            // No logging yet, and under IIS stderr may be an invalid handle: never panic here.
            let _ = writeln!(std::io::stderr(), "pyfcgi: configuration error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let cli = Cli::parse_from(merged);
    if !sources.files.is_empty() {
        serve::note_config_sources(sources);
    }
    match cli.command {
        Command::Serve(args) => serve::main(*args),
        #[cfg(feature = "python")]
        Command::Check(args) => check_main(&args),
        Command::Request(args) => request_main(args),
        Command::Bench(args) => bench_main(*args),
        Command::Iis(args) => iis_cmd::main(args),
        Command::Doctor(args) => doctor::main(&args),
    }
}

/// This process's `serve` settings as if `--app-root ROOT` had been given: the command line
/// and environment, then ROOT's web.config and pyfcgi.toml (for an app that is only known
/// from the first request's `APPL_PHYSICAL_PATH`).
#[cfg(feature = "python")]
pub(crate) fn serve_args_for_root(
    root: &std::path::Path,
) -> anyhow::Result<(serve::ServeArgs, config::Sources)> {
    let mut raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    raw.push("--app-root".into());
    raw.push(root.as_os_str().to_owned());
    let (merged, sources) = config::merged_args(raw)?;
    match Cli::try_parse_from(merged)?.command {
        Command::Serve(args) => Ok((*args, sources)),
        _ => anyhow::bail!("not a serve command line"),
    }
}

/// `pyfcgi --version`: the version, the git revision, the Python built for and the one found.
fn version_report() -> String {
    #[cfg(feature = "python")]
    use std::fmt::Write as _;
    let mut s = format!(
        "pyfcgi {} (git {})\n",
        env!("CARGO_PKG_VERSION"),
        env!("PYFCGI_GIT_REVISION")
    );
    #[cfg(feature = "python")]
    {
        let hints = python_home::Hints {
            venv: std::env::var_os("PYFCGI_VENV").map(std::path::PathBuf::from),
            explicit: std::env::var_os("PYFCGI_PYTHON_HOME").map(std::path::PathBuf::from),
            app_dirs: std::env::current_dir().into_iter().collect(),
        };
        let _ = writeln!(s, "python built for: CPython {}", python_home::BUILT_FOR);
        let _ = writeln!(
            s,
            "python found: {}",
            python_home::found_description(&hints)
        );
    }
    #[cfg(not(feature = "python"))]
    s.push_str("python: none (built without the `python` feature: built-in handlers only)\n");
    s
}

fn request_main(args: pyfcgi_client::cli::RequestArgs) -> ExitCode {
    logging::init_stderr("warn");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyfcgi request: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match rt.block_on(pyfcgi_client::cli::run(args, &mut stdout)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("pyfcgi request: {}", e.report());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn bench_main(args: pyfcgi_client::bench::BenchArgs) -> ExitCode {
    logging::init_stderr("warn");
    ExitCode::from(u8::try_from(pyfcgi_client::bench::main(args)).unwrap_or(1))
}

#[cfg(feature = "python")]
fn check_main(args: &CheckArgs) -> ExitCode {
    logging::init_stderr("warn");
    if let Err(nf) = python_home::ensure_loaded(&args.python.hints(Some(&args.app))) {
        eprintln!("pyfcgi check: {}", nf.diagnosis());
        return ExitCode::from(python_home::EXIT_NO_PYTHON);
    }
    match python::resolve(&args.app, &args.python, &[]) {
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
