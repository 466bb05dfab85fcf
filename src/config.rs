//! Where `pyfcgi serve` settings come from, highest first:
//! command line > environment (`PYFCGI_*`) > web.config `<appSettings>` > `pyfcgi.toml` >
//! defaults.
//!
//! Config files are turned into command-line arguments placed *before* the real ones (clap
//! lets a later occurrence override an earlier one), and a file setting whose `PYFCGI_*`
//! variable is set is skipped, so the environment keeps its place. One parser, one set of
//! validations and messages for every source.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use pyfcgi_iis::webconfig::{self, AppSettings};

use crate::settings::{Pairs, flag_value, flag_value_present};

/// A serve flag as the config layer sees it.
struct Flag {
    long: String,
    takes_value: bool,
    env: Option<String>,
}

fn serve_flags() -> Vec<Flag> {
    let mut cmd = crate::Cli::command();
    // Building resolves each argument's action (whether it takes a value).
    cmd.build();
    let Some(serve) = cmd.find_subcommand("serve") else {
        return Vec::new();
    };
    serve
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_owned();
            let takes_value = a.get_action().takes_values();
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some(Flag {
                long,
                takes_value,
                env,
            })
        })
        .collect()
}

/// What the config files contributed, for the startup log.
#[derive(Debug, Default)]
pub struct Sources {
    /// Files read, in the order applied.
    pub files: Vec<PathBuf>,
    /// Settings skipped because an environment variable or the command line sets them.
    pub shadowed: Vec<String>,
}

/// The argument vector `pyfcgi serve` is parsed from, with config-file settings merged in.
/// Other subcommands are returned untouched.
pub fn merged_args(raw: Vec<OsString>) -> anyhow::Result<(Vec<OsString>, Sources)> {
    let mut sources = Sources::default();
    if raw.get(1).is_none_or(|s| s != "serve") {
        return Ok((raw, sources));
    }
    let user_args: Vec<String> = raw[2..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let app_root = flag_value(&user_args, "app-root")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PYFCGI_APP_ROOT").map(PathBuf::from));
    let flags = serve_flags();
    let mut synthetic: Vec<String> = Vec::new();

    let toml_path = flag_value(&user_args, "config")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PYFCGI_CONFIG").map(PathBuf::from))
        .or_else(|| {
            app_root
                .as_ref()
                .map(|r| r.join("pyfcgi.toml"))
                .filter(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("pyfcgi.toml")).filter(|p| p.is_file()));
    if let Some(path) = toml_path {
        let pairs = read_toml(&path)?;
        push_settings(
            &mut synthetic,
            &mut sources,
            &flags,
            &user_args,
            pairs,
            &path,
            true,
        )?;
        sources.files.push(path);
    }
    if let Some(root) = &app_root {
        let settings = webconfig::load_for_app(root)
            .with_context(|| format!("reading web.config for --app-root {}", root.display()))?;
        let pairs = web_config_pairs(&settings);
        let origin = settings
            .sources
            .last()
            .cloned()
            .unwrap_or_else(|| root.join("web.config"));
        push_settings(
            &mut synthetic,
            &mut sources,
            &flags,
            &user_args,
            pairs,
            &origin,
            false,
        )?;
        sources.files.extend(settings.sources.iter().cloned());
    }
    let mut out: Vec<OsString> = vec![raw[0].clone(), raw[1].clone()];
    out.extend(synthetic.into_iter().map(OsString::from));
    out.extend(raw[2..].iter().cloned());
    Ok((out, sources))
}

fn read_toml(path: &Path) -> anyhow::Result<Pairs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::settings::toml_pairs(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// web.config keys as flags: wfastcgi's keys map onto pyfcgi flags, `PYFCGI_X_Y` is `--x-y`,
/// everything else becomes an environment variable for the application.
fn web_config_pairs(settings: &AppSettings) -> Pairs {
    let mut pairs: Pairs = Vec::new();
    for (key, value) in settings.iter() {
        let upper = key.to_ascii_uppercase();
        let flag = match upper.as_str() {
            "WSGI_HANDLER" => "app".to_owned(),
            "WSGI_LOG" => "log-file".to_owned(),
            "WSGI_RESTART_FILE_REGEX" => "restart-regex".to_owned(),
            "SCRIPT_NAME" => "script-name".to_owned(),
            "PYTHONPATH" => {
                pairs.push((
                    "pythonpath".into(),
                    settings.pythonpath(&webconfig::process_env),
                ));
                continue;
            }
            _ => {
                let Some(rest) = upper.strip_prefix("PYFCGI_") else {
                    pairs.push(("app-env".into(), vec![format!("{key}={value}")]));
                    continue;
                };
                rest.to_ascii_lowercase().replace('_', "-")
            }
        };
        pairs.push((flag, vec![value.to_owned()]));
    }
    pairs
}

fn push_settings(
    out: &mut Vec<String>,
    sources: &mut Sources,
    flags: &[Flag],
    user_args: &[String],
    pairs: Pairs,
    origin: &Path,
    strict: bool,
) -> anyhow::Result<()> {
    for (name, values) in pairs {
        let Some(flag) = flags.iter().find(|f| f.long == name) else {
            if strict {
                let mut known: Vec<&str> = flags.iter().map(|f| f.long.as_str()).collect();
                known.sort_unstable();
                bail!(
                    "{}: unknown setting {name:?}; settings are serve flag names: {}",
                    origin.display(),
                    known.join(", ")
                );
            }
            tracing::warn!(file = %origin.display(), setting = %name, "ignoring unknown pyfcgi setting in web.config");
            continue;
        };
        // The environment and the command line outrank files.
        if flag
            .env
            .as_ref()
            .is_some_and(|e| std::env::var_os(e).is_some())
            || flag_value_present(user_args, &name)
        {
            sources.shadowed.push(name);
            continue;
        }
        for v in values {
            if flag.takes_value {
                out.push(format!("--{name}"));
                out.push(v);
            } else if matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on") {
                out.push(format!("--{name}"));
            } else if !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "0" | "no" | "off" | ""
            ) {
                bail!(
                    "{}: {name} is a switch; use true or false, not {v:?}",
                    origin.display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_are_found_in_both_spellings() {
        let args: Vec<String> = ["--app-root", "/x", "--config=/c.toml"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(flag_value(&args, "app-root").as_deref(), Some("/x"));
        assert_eq!(flag_value(&args, "config").as_deref(), Some("/c.toml"));
        assert!(flag_value_present(&args, "config"));
        assert!(!flag_value_present(&args, "threads"));
    }

    /// configs/pyfcgi.toml, with its commented-out keys switched on, is a valid `serve`
    /// configuration: every key is a flag and every value parses.
    #[test]
    fn the_shipped_pyfcgi_toml_parses_with_every_key_on() {
        use clap::Parser;
        let shipped = include_str!("../configs/pyfcgi.toml");
        let all_on: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all_on.contains("\ntrusted-proxy = "), "{all_on}");
        let path = std::env::temp_dir().join(format!("pyfcgi-toml-{}.toml", std::process::id()));
        std::fs::write(&path, &all_on).unwrap();
        let raw: Vec<OsString> = ["pyfcgi", "serve", "--config", path.to_str().unwrap()]
            .iter()
            .map(OsString::from)
            .collect();
        let merged = merged_args(raw);
        let _ = std::fs::remove_file(&path);
        let (args, sources) = merged.unwrap();
        assert_eq!(sources.files.len(), 1);
        if let Err(e) = crate::Cli::try_parse_from(&args) {
            panic!("{e}\nargs: {args:?}");
        }
    }

    #[test]
    fn web_config_keys_map_to_flags() {
        let mut s = AppSettings::default();
        s.apply_xml(
            br#"<configuration><appSettings>
                <add key="WSGI_HANDLER" value="app.app"/>
                <add key="PYFCGI_THREADS" value="4"/>
                <add key="PYFCGI_DETAILED_ERRORS" value="true"/>
                <add key="DJANGO_SETTINGS_MODULE" value="s.settings"/>
            </appSettings></configuration>"#,
            Path::new("web.config"),
        )
        .unwrap();
        let pairs = web_config_pairs(&s);
        assert!(pairs.contains(&("app".into(), vec!["app.app".into()])));
        assert!(pairs.contains(&("threads".into(), vec!["4".into()])));
        assert!(pairs.contains(&("detailed-errors".into(), vec!["true".into()])));
        assert!(pairs.contains(&(
            "app-env".into(),
            vec!["DJANGO_SETTINGS_MODULE=s.settings".into()]
        )));
    }
}
