//! The `pyfcgi` binary: command line, logging, lifecycle.

mod logging;
mod python;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pyfcgi: a fast, robust FastCGI host for Python web apps (IIS, nginx, Apache, lighttpd).
#[derive(Debug, Parser)]
#[command(name = "pyfcgi", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a WSGI application (or a built-in handler) over FastCGI.
    Serve(serve::ServeArgs),
    /// Load an application exactly as `serve` would, print the diagnosis, and exit non-zero
    /// if it fails to load.
    Check(CheckArgs),
    /// Send one FastCGI request and print the response like `curl -i`.
    Request(pyfcgi_client::cli::RequestArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The WSGI application, as for `serve`.
    #[arg(value_name = "APP")]
    app: String,
    #[command(flatten)]
    python: serve::PythonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(args),
        Command::Check(args) => check_main(&args),
        Command::Request(args) => request_main(args),
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

fn check_main(args: &CheckArgs) -> ExitCode {
    logging::init_stderr("warn");
    match python::resolve(&args.app, &args.python) {
        Ok((pyfcgi_python::AppState::Loaded(_), report)) => {
            println!("OK: {report}");
            ExitCode::SUCCESS
        }
        Ok((pyfcgi_python::AppState::Failed { .. }, report)) => {
            eprintln!("pyfcgi check: {report}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pyfcgi check: {e:#}");
            ExitCode::from(1)
        }
    }
}
