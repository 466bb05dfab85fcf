//! What is generated from the clap definitions themselves, so it can never disagree with
//! them: shell completions (`pyfcgi completions SHELL`) and the man pages (`pyfcgi man`),
//! which `scripts/release` ships beside the binaries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

/// Arguments of `pyfcgi completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, for example:\n  \
    bash: pyfcgi completions bash > ~/.local/share/bash-completion/completions/pyfcgi\n  \
    zsh: pyfcgi completions zsh > ~/.zfunc/_pyfcgi (with fpath+=~/.zfunc before compinit)\n  \
    fish: pyfcgi completions fish > ~/.config/fish/completions/pyfcgi.fish\n  \
    PowerShell: pyfcgi completions powershell >> $PROFILE")]
pub(crate) struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Arguments of `pyfcgi man`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Write pyfcgi.1 and one page per subcommand (pyfcgi-serve.1, ...) into DIR instead of
    /// printing pyfcgi.1 (read it with `pyfcgi man | man -l -`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `pyfcgi completions SHELL`: the script on stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pyfcgi", &mut out);
    write_stdout(&out, "pyfcgi completions")
}

/// `pyfcgi man [--out DIR]`.
pub(crate) fn man(args: &ManArgs) -> ExitCode {
    let Some(dir) = &args.out else {
        let mut out = Vec::new();
        return match clap_mangen::Man::new(crate::Cli::command()).render(&mut out) {
            Ok(()) => write_stdout(&out, "pyfcgi man"),
            Err(e) => {
                eprintln!("pyfcgi man: cannot render the man page: {e}");
                ExitCode::from(1)
            }
        };
    };
    match write_pages(dir) {
        Ok(n) => {
            eprintln!("pyfcgi man: wrote {n} pages into {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pyfcgi man: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes the page of `pyfcgi` and of each (visible) subcommand into `dir`, creating it;
/// returns how many.
fn write_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let cmd = crate::Cli::command();
    let pages = page_count(&cmd);
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    Ok(pages)
}

/// The pages `clap_mangen::generate_to` writes for `cmd`: its own and each visible
/// subcommand's, recursively.
fn page_count(cmd: &clap::Command) -> usize {
    1 + cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(page_count)
        .sum::<usize>()
}

fn write_stdout(bytes: &[u8], who: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}
