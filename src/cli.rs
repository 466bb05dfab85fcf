//! The command line. `serve` and `check` take their flags from the settings table
//! ([`pyfcgi_settings::KEYS`]): clap only collects what was written, as text, and the settings
//! resolver parses and checks it together with the environment and the config files, so a
//! bad value gets the same message whichever source it came from.

use clap::ArgAction;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use pyfcgi_settings::{KEYS, Key, Kind, Scope};

/// The settings given on a command line (`serve`'s or `check`'s), unparsed.
#[derive(Debug, Clone, Default)]
pub struct SettingArgs(pub Vec<pyfcgi_settings::Arg>);

/// `serve`'s flags: every setting, and the positional APP.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags(pub SettingArgs);

/// `check`'s flags: the interpreter settings.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
#[derive(Debug, Clone, Default)]
pub struct PythonFlags(pub SettingArgs);

const APP_HELP: &str = "The WSGI or ASGI application: module:attr, module:factory(), path/to/app.py:attr, or wfastcgi's package.module.attr.";

fn key_arg(k: &'static Key) -> Arg {
    let mut a = Arg::new(k.name)
        .long(k.name)
        .help(format!("{} [env: {}]", k.help, k.env))
        .hide_short_help(k.rare);
    if let Some(c) = k.short {
        a = a.short(c);
    }
    match k.kind {
        Kind::Switch => a.action(ArgAction::SetTrue),
        Kind::Value | Kind::List => {
            let a = a.action(ArgAction::Append).value_name(k.value_name);
            match k.default {
                Some(d) => a.default_value(d),
                None => a,
            }
        }
    }
}

fn collect(m: &ArgMatches, scope: Option<Scope>) -> SettingArgs {
    let mut out = Vec::new();
    for k in KEYS.iter().filter(|k| scope.is_none_or(|s| k.scope == s)) {
        if m.value_source(k.name) != Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = format!("--{}", k.name);
        if k.kind == Kind::Switch {
            out.push(pyfcgi_settings::Arg {
                name: k.name.to_owned(),
                value: "true".to_owned(),
                flag,
            });
            continue;
        }
        for v in m.get_raw(k.name).into_iter().flatten() {
            out.push(pyfcgi_settings::Arg {
                name: k.name.to_owned(),
                value: v.to_string_lossy().into_owned(),
                flag: flag.clone(),
            });
        }
    }
    SettingArgs(out)
}

impl FromArgMatches for ServeFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = collect(m, None);
        // The positional APP wins over --app (it comes last).
        if let Some(app) = m.get_raw("APP").into_iter().flatten().next_back() {
            args.0.push(pyfcgi_settings::Arg {
                name: "app".to_owned(),
                value: app.to_string_lossy().into_owned(),
                flag: "APP".to_owned(),
            });
        }
        Ok(Self(args))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(Arg::new("APP").value_name("APP").help(APP_HELP).index(1))
            .args(KEYS.iter().map(key_arg))
            .after_help(
                "Every setting can also be given as its PYFCGI_* environment variable, a web.config appSettings key of the same name, or a pyfcgi.toml key (the flag name); see docs/configuration.md.",
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for PythonFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(collect(m, Some(Scope::Python))))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for PythonFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(
            KEYS.iter()
                .filter(|k| k.scope == Scope::Python)
                .map(key_arg),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn serve_flags_arrive_as_written_in_order_and_app_last() {
        let cli = crate::Cli::try_parse_from([
            "pyfcgi",
            "serve",
            "--app",
            "a:app",
            "--threads",
            "four",
            "--reload",
            "-b",
            "127.0.0.1:9000",
            "--threads=5",
            "b:app",
        ])
        .unwrap();
        let crate::Command::Serve(flags) = cli.command else {
            panic!("not serve")
        };
        let got: Vec<(String, String, String)> = flags
            .0
            .0
            .into_iter()
            .map(|a| (a.name, a.value, a.flag))
            .collect();
        let want = |n: &str, v: &str, f: &str| (n.to_owned(), v.to_owned(), f.to_owned());
        assert!(got.contains(&want("reload", "true", "--reload")), "{got:?}");
        assert!(
            got.contains(&want("bind", "127.0.0.1:9000", "--bind")),
            "{got:?}"
        );
        let threads: Vec<&str> = got
            .iter()
            .filter(|g| g.0 == "threads")
            .map(|g| g.1.as_str())
            .collect();
        assert_eq!(threads, ["four", "5"]);
        assert_eq!(got.last(), Some(&want("app", "b:app", "APP")));
        // Defaults are not "given".
        assert!(!got.iter().any(|g| g.0 == "max-body-size"), "{got:?}");
    }
}
