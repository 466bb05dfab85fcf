//! The `pyfcgi` binary: command line, logging, lifecycle.

#[cfg(feature = "python")]
mod check;
mod cli;
mod doctor;
mod event_log;
mod exit;
mod generate;
mod iis_cmd;
#[cfg(feature = "python")]
mod lazy;
// Without Python, the helpers only the WSGI path uses (file watcher) are unused.
#[cfg_attr(not(feature = "python"), allow(dead_code, unused_imports))]
mod lifecycle;
mod listen;
mod logging;
#[cfg(feature = "python")]
mod python;
mod serve;
mod startup;

use std::process::ExitCode;

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
    Serve(cli::ServeFlags),
    /// Load an application exactly as `serve` would, print the diagnosis, and exit non-zero
    /// if it fails to load.
    #[cfg(feature = "python")]
    Check(CheckArgs),
    /// Send one FastCGI request and print the response like `curl -i`.
    Request(cli::RequestCli),
    /// Load a FastCGI responder and report throughput, latency percentiles and errors
    /// (exit 2 when any request failed, 1 on a usage or setup error).
    Bench(Box<cli::BenchCli>),
    /// A live view of a running pyfcgi from its status endpoint (--status-bind, or
    /// --status-path over FastCGI): totals and one row per worker, like uwsgitop.
    Top(cli::TopCli),
    /// Register pyfcgi with IIS for a site (enable, disable), or print its web.config.
    Iis(iis_cmd::IisArgs),
    /// Check a site's IIS setup (web.config, handler, venv, import, logs) and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Print the shell completion script for bash, zsh, fish, PowerShell or elvish.
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write one per subcommand with --out DIR.
    Man(generate::ManArgs),
}

#[cfg(feature = "python")]
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The WSGI or ASGI application, as for `serve`.
    #[arg(value_name = "APP")]
    pub(crate) app: String,
    #[command(flatten)]
    pub(crate) python: cli::PythonFlags,
}

fn main() -> ExitCode {
    const VERSION_ARGS: &[&str] = &["--version", "-V", "--json"];
    // Under IIS stdout/stderr are invalid handles: make them NUL before anything can print.
    pyfcgi_server::process::prepare_std_handles();
    // `--version` is ours (clap's prints one line): `--version [--json]`, in either order.
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let is =
        |a: &std::ffi::OsString, names: &[&str]| a.to_str().is_some_and(|a| names.contains(&a));
    if args.iter().any(|a| is(a, &["--version", "-V"])) {
        if args.iter().all(|a| is(a, VERSION_ARGS)) {
            if args.iter().any(|a| is(a, &["--json"])) {
                println!("{}", version_json());
            } else {
                print!("{}", version_report());
            }
            return ExitCode::SUCCESS;
        }
        // `pyfcgi --version --jsn`: a typo is named, not answered with the plain report.
        if args.first().is_some_and(|a| is(a, VERSION_ARGS)) {
            let others: Vec<_> = args
                .iter()
                .filter(|a| !is(a, VERSION_ARGS))
                .map(|a| a.to_string_lossy())
                .collect();
            eprintln!(
                "pyfcgi: --version takes only --json, not {}: try `pyfcgi --version --json`",
                others.join(" ")
            );
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(flags) => serve::main(flags.0.0),
        #[cfg(feature = "python")]
        Command::Check(args) => check::main(args),
        Command::Request(args) => request_main(args.into()),
        Command::Bench(args) => bench_main((*args).into()),
        Command::Top(args) => {
            let code = pyfcgi_client::top::main(&args.into());
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Iis(args) => iis_cmd::main(args),
        Command::Doctor(args) => doctor::main(&args),
        Command::Completions(args) => generate::completions(&args),
        Command::Man(args) => generate::man(&args),
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
        let hints = python_hints();
        let _ = writeln!(s, "python built for: CPython {}", pyfcgi_pyhome::BUILT_FOR);
        let _ = writeln!(
            s,
            "python found: {}",
            pyfcgi_pyhome::found_description(&hints)
        );
    }
    #[cfg(not(feature = "python"))]
    s.push_str("python: none (built without the `python` feature: built-in handlers only)\n");
    s
}

/// Where `--version` looks for Python: the venv and home variables, the current folder.
#[cfg(feature = "python")]
fn python_hints() -> pyfcgi_pyhome::Hints {
    pyfcgi_pyhome::Hints {
        venv: std::env::var_os("PYFCGI_VENV").map(std::path::PathBuf::from),
        explicit: std::env::var_os("PYFCGI_PYTHON_HOME").map(std::path::PathBuf::from),
        app_dirs: std::env::current_dir().into_iter().collect(),
    }
}

/// `pyfcgi --version --json`: the same facts as one JSON object, for scripts and inventories.
fn version_json() -> serde_json::Value {
    #[cfg(feature = "python")]
    let python = {
        let hints = python_hints();
        serde_json::json!({
            "built_for": pyfcgi_pyhome::BUILT_FOR,
            "found": pyfcgi_pyhome::found_description(&hints),
        })
    };
    #[cfg(not(feature = "python"))]
    let python = serde_json::Value::Null;
    serde_json::json!({
        "name": "pyfcgi",
        "version": env!("CARGO_PKG_VERSION"),
        "revision": env!("PYFCGI_GIT_REVISION"),
        "target": format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        "features": { "python": cfg!(feature = "python") },
        "python": python,
    })
}

/// What the status document and `pyfcgi_build_info` say about this binary: the same
/// version, revision and Python as `pyfcgi --version`.
pub(crate) fn build_info() -> pyfcgi_status::BuildInfo {
    pyfcgi_status::BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: env!("PYFCGI_GIT_REVISION").to_owned(),
        #[cfg(feature = "python")]
        python: pyfcgi_pyhome::BUILT_FOR.to_owned(),
        #[cfg(not(feature = "python"))]
        python: "none".to_owned(),
    }
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
