//! From the four sources to one [`Settings`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pyfcgi_iis::IisError;
use pyfcgi_iis::webconfig::{self, AppSettings};

use crate::keys::{KEYS, Key, Kind, NOT_SETTINGS, NOT_SETTINGS_PREFIXES, WFASTCGI_ALIASES};
use crate::origin::{Origin, SettingError, Unknown};
use crate::{EventLoop, Interface, Lifespan, LogFormat, PythonSettings, Settings, value};

/// One value from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The setting ([`Key::name`]).
    pub name: String,
    /// The value (`true` for a switch given as a bare flag).
    pub value: String,
    /// As the user wrote it, for messages: `--threads`, `APP`.
    pub flag: String,
}

/// What the process was given.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Command-line values in the order given (a later one replaces an earlier one).
    pub args: Vec<Arg>,
    /// The environment (only `PYFCGI_*` and `FCGI_WEB_SERVER_ADDRS` are read; the rest is
    /// used for `%VAR%` in web.config's `PYTHONPATH`).
    pub env: Vec<(String, String)>,
    /// Where `pyfcgi.toml` is looked for when neither `--config` nor the app folder has one.
    pub cwd: Option<PathBuf>,
    /// The first request's folder (IIS's `APPL_PHYSICAL_PATH`) when no app folder was given:
    /// read as if `--app-root` named it.
    pub first_request_root: Option<PathBuf>,
}

/// The web.config side, already read (or why it could not be).
#[derive(Debug, Clone)]
pub enum WebConfigInput {
    Read(AppSettings),
    Failed(SettingError),
}

/// One effective setting, for `doctor` and the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub key: &'static str,
    /// As written (app-env shows names only: values may be secrets).
    pub value: String,
    pub origin: Origin,
}

/// The outcome of resolving: always a full [`Settings`] (an invalid value falls back to its
/// default, so a log file or an app folder can still be used to report the error), plus the
/// errors, the unknown keys and the origins.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub settings: Settings,
    pub errors: Vec<SettingError>,
    pub unknown: Vec<Unknown>,
    /// Config files read, in the order applied (pyfcgi.toml, then web.config outermost first).
    pub files: Vec<PathBuf>,
    pub effective: Vec<Effective>,
}

impl Resolution {
    /// All errors, one per line.
    pub fn error_report(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Where `key` got its value.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.effective
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.origin)
    }
}

/// A value before parsing.
#[derive(Debug, Clone)]
struct Raw {
    key: &'static Key,
    values: Vec<String>,
    origin: Origin,
    /// A wfastcgi key (`WSGI_HANDLER`): the `PYFCGI_*` key of the same source wins over it.
    alias: bool,
}

impl Raw {
    fn rank(&self) -> (u8, bool) {
        (self.origin.rank(), self.alias)
    }
}

/// Reads the pyfcgi.toml and web.config files the inputs lead to, then resolves.
pub fn resolve(inputs: &Inputs) -> Resolution {
    let mut early = Vec::new();
    let mut ignored = Vec::new();
    from_args(inputs, &mut early, &mut ignored);
    from_env(inputs, &mut early, &mut ignored);
    let pick = |name: &str| {
        early
            .iter()
            .filter(|r| r.key.name == name)
            .min_by_key(|r| r.rank())
            .and_then(|r| r.values.last().cloned())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut app_root = pick("app-root").or_else(|| inputs.first_request_root.clone());
    let toml_path = pick("config").or_else(|| {
        app_root
            .iter()
            .chain(inputs.cwd.iter())
            .map(|d| d.join("pyfcgi.toml"))
            .find(|p| p.is_file())
    });
    let toml = toml_path.map(|file| match std::fs::read_to_string(&file) {
        Ok(text) => Ok((file, text)),
        Err(e) => Err(SettingError::File {
            kind: "pyfcgi.toml",
            file,
            message: format!("cannot read it: {e}"),
        }),
    });
    if app_root.is_none()
        && let Some(Ok((file, text))) = &toml
    {
        let mut raws = Vec::new();
        let _ = from_toml(file, text, &mut raws, &mut Vec::new());
        app_root = raws
            .iter()
            .find(|r| r.key.name == "app-root")
            .and_then(|r| r.values.last())
            .map(PathBuf::from);
    }
    let web = app_root.map(|root| match webconfig::load_for_app(&root) {
        Ok(s) => WebConfigInput::Read(s),
        Err(e) => WebConfigInput::Failed(web_config_error(e, &root)),
    });
    resolve_from(inputs, toml, web)
}

fn web_config_error(e: IisError, root: &Path) -> SettingError {
    let (file, message) = match e {
        IisError::Io { path, source } => (path, format!("cannot read it: {source}")),
        IisError::Xml { path, message } => (path, format!("not valid XML: {message}")),
        IisError::Invalid { path, message } => (path, message),
        other => (root.join("web.config"), other.to_string()),
    };
    SettingError::File {
        kind: "web.config",
        file,
        message,
    }
}

/// The pure core: the inputs, the chosen pyfcgi.toml (path and text, or why it could not be
/// read) and the app's web.config settings, into a [`Resolution`]. Never panics.
pub fn resolve_from(
    inputs: &Inputs,
    toml: Option<Result<(PathBuf, String), SettingError>>,
    web: Option<WebConfigInput>,
) -> Resolution {
    let mut raws = Vec::new();
    let mut unknown = Vec::new();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    from_args(inputs, &mut raws, &mut unknown);
    from_env(inputs, &mut raws, &mut unknown);
    let mut config = None;
    match toml {
        Some(Ok((file, text))) => {
            if let Err(e) = from_toml(&file, &text, &mut raws, &mut unknown) {
                errors.push(e);
            }
            files.push(file.clone());
            config = Some(file);
        }
        Some(Err(e)) => errors.push(e),
        None => {}
    }
    match web {
        Some(WebConfigInput::Read(settings)) => {
            from_web_config(&settings, &inputs.env, &mut raws, &mut unknown);
            files.extend(settings.sources.iter().cloned());
        }
        Some(WebConfigInput::Failed(e)) => errors.push(e),
        None => {}
    }
    if let Some(root) = &inputs.first_request_root {
        raws.push(Raw {
            key: key("app-root"),
            values: vec![root.display().to_string()],
            origin: Origin::Flag("APPL_PHYSICAL_PATH (the first request's folder)".into()),
            alias: true,
        });
    }
    for r in &raws {
        if r.origin.rank() > 0 && r.key.name == "config" {
            errors.push(SettingError::Conflict(format!(
                "{}: the settings file cannot name another one (use --config or PYFCGI_CONFIG)",
                r.origin
            )));
        }
    }
    let mut p = Picker {
        raws: group(raws),
        errors,
        effective: Vec::new(),
    };
    let settings = build(&mut p, config);
    if settings.app.is_some() && settings.builtin.is_some() {
        p.errors.push(SettingError::Conflict(format!(
            "{} and {} cannot both be given: serve an application or a built-in handler",
            origin_of(&p, "app"),
            origin_of(&p, "builtin")
        )));
    }
    Resolution {
        settings,
        errors: p.errors,
        unknown,
        files,
        effective: p.effective,
    }
}

fn origin_of(p: &Picker, name: &str) -> String {
    p.effective
        .iter()
        .find(|e| e.key == name)
        .map_or_else(|| name.to_owned(), |e| e.origin.to_string())
}

fn key(name: &str) -> &'static Key {
    // Only called with names from the table (a unit test resolves every key).
    Key::find(name).unwrap_or(&KEYS[0])
}

fn from_args(inputs: &Inputs, raws: &mut Vec<Raw>, unknown: &mut Vec<Unknown>) {
    for a in &inputs.args {
        let Some(k) = Key::find(&a.name) else {
            unknown.push(Unknown {
                origin: Origin::Flag(a.flag.clone()),
                suggestion: None,
            });
            continue;
        };
        raws.push(Raw {
            key: k,
            values: vec![a.value.clone()],
            origin: Origin::Flag(a.flag.clone()),
            alias: false,
        });
    }
}

fn from_env(inputs: &Inputs, raws: &mut Vec<Raw>, unknown: &mut Vec<Unknown>) {
    for (var, val) in &inputs.env {
        if let Some(k) = Key::find_env(var).filter(|k| k.env == var.as_str()) {
            raws.push(Raw {
                key: k,
                values: vec![val.clone()],
                origin: Origin::Env(var.clone()),
                alias: false,
            });
        } else if var.starts_with("PYFCGI_")
            && !NOT_SETTINGS.contains(&var.as_str())
            && !NOT_SETTINGS_PREFIXES.iter().any(|p| var.starts_with(p))
        {
            unknown.push(Unknown {
                origin: Origin::Env(var.clone()),
                suggestion: suggest(var, KEYS.iter().map(|k| k.env)),
            });
        }
    }
}

/// The closest known name, if close enough to be a typo.
fn suggest<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let given = given.to_ascii_lowercase().replace('_', "-");
    known
        .map(|k| {
            let norm = k.to_ascii_lowercase().replace('_', "-");
            (strsim::jaro_winkler(&given, &norm), k)
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.to_owned())
}

fn from_toml(
    file: &Path,
    text: &str,
    raws: &mut Vec<Raw>,
    unknown: &mut Vec<Unknown>,
) -> Result<(), SettingError> {
    use toml::Spanned;
    type Table = std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>;
    let table: Table = toml::from_str(text).map_err(|e| SettingError::File {
        kind: "pyfcgi.toml",
        file: file.to_owned(),
        message: format!("not valid TOML: {}", e.to_string().trim_end()),
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    for (k, v) in table {
        let origin = Origin::Toml {
            file: file.to_owned(),
            line: line_of(k.span().start),
            key: k.get_ref().clone(),
        };
        let Some(found) = Key::find(k.get_ref()) else {
            unknown.push(Unknown {
                origin,
                suggestion: suggest(k.get_ref(), KEYS.iter().map(|k| k.name)),
            });
            continue;
        };
        let bad = |expected: &str| SettingError::Invalid {
            origin: origin.clone(),
            value: v.get_ref().to_string(),
            expected: expected.to_owned(),
        };
        let values = match v.get_ref() {
            toml::Value::Array(items) if found.kind == Kind::List => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a list of strings or numbers"))?,
            toml::Value::Array(_) => return Err(bad("a single value, not a list")),
            other => vec![scalar(other).ok_or_else(|| bad("a string, number or boolean"))?],
        };
        raws.push(Raw {
            key: found,
            values,
            origin,
            alias: false,
        });
    }
    Ok(())
}

fn scalar(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => return None,
    })
}

fn from_web_config(
    settings: &AppSettings,
    env: &[(String, String)],
    raws: &mut Vec<Raw>,
    unknown: &mut Vec<Unknown>,
) {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| {
                if cfg!(windows) {
                    k.eq_ignore_ascii_case(name)
                } else {
                    k == name
                }
            })
            .map(|(_, v)| v.clone())
    };
    for (k, v, file) in settings.iter_with_origin() {
        let origin = Origin::WebConfig {
            file: file.to_owned(),
            key: k.to_owned(),
        };
        let upper = k.to_ascii_uppercase();
        if upper == "WSGI_HANDLER"
            && let Some(proxied) = ptvs_proxy(settings, v, file)
        {
            raws.extend(proxied);
            continue;
        }
        if let Some((_, name)) = WFASTCGI_ALIASES.iter().find(|(a, _)| *a == upper) {
            let values = if *name == "pythonpath" {
                v.split(';')
                    .map(|p| webconfig::expand_vars(p.trim(), &lookup))
                    .filter(|p| !p.is_empty())
                    .collect()
            } else {
                vec![v.to_owned()]
            };
            raws.push(Raw {
                key: key(name),
                values,
                origin,
                alias: true,
            });
        } else if let Some(found) = Key::find_env(&upper).filter(|k| k.env.starts_with("PYFCGI_")) {
            raws.push(Raw {
                key: found,
                values: vec![v.to_owned()],
                origin,
                alias: false,
            });
        } else if upper.starts_with("PYFCGI_") {
            unknown.push(Unknown {
                origin,
                suggestion: suggest(&upper, KEYS.iter().map(|k| k.env)),
            });
        } else {
            // Anything else is for the application's os.environ, as wfastcgi does.
            raws.push(Raw {
                key: key("app-env"),
                values: vec![format!("{k}={v}")],
                origin,
                alias: false,
            });
        }
    }
}

/// Visual Studio's and Azure's wfastcgi templates point `WSGI_HANDLER` at
/// `ptvs_virtualenv_proxy.get_venv_handler()` (or `get_virtualenv_handler()`), a script that
/// activates the venv named by `WSGI_ALT_VIRTUALENV_ACTIVATE_THIS` (its python.exe, or
/// virtualenv's activate_this.py) and then loads `WSGI_ALT_VIRTUALENV_HANDLER`. pyfcgi does
/// what the proxy does, directly: that handler is the app (each value with its own origin;
/// aliases, so `PYFCGI_*` keys still win) and that venv is the venv.
fn ptvs_proxy(settings: &AppSettings, handler: &str, file: &Path) -> Option<Vec<Raw>> {
    let h = handler.trim().replace(' ', "");
    if !matches!(
        h.as_str(),
        "ptvs_virtualenv_proxy.get_venv_handler()"
            | "ptvs_virtualenv_proxy.get_virtualenv_handler()"
    ) {
        return None;
    }
    let find = |key: &str| {
        settings
            .iter_with_origin()
            .filter(|(k, _, _)| k.eq_ignore_ascii_case(key))
            .last()
            .map(|(k, v, f)| {
                (
                    v.to_owned(),
                    Origin::WebConfig {
                        file: f.to_owned(),
                        key: k.to_owned(),
                    },
                )
            })
    };
    let mut out = Vec::new();
    match find("WSGI_ALT_VIRTUALENV_HANDLER") {
        Some((app, origin)) => out.push(Raw {
            key: key("app"),
            values: vec![app],
            origin,
            alias: true,
        }),
        // Nothing to proxy to: the value stays, and fails to load with its own message.
        None => out.push(Raw {
            key: key("app"),
            values: vec![handler.to_owned()],
            origin: Origin::WebConfig {
                file: file.to_owned(),
                key: "WSGI_HANDLER".into(),
            },
            alias: true,
        }),
    }
    if let Some((venv, origin)) = find("WSGI_ALT_VIRTUALENV_ACTIVATE_THIS") {
        out.push(Raw {
            key: key("venv"),
            values: vec![venv],
            origin,
            alias: true,
        });
    }
    Some(out)
}

/// Raws by key, the winner first (lowest rank; among equals, the last given).
fn group(raws: Vec<Raw>) -> HashMap<&'static str, Vec<Raw>> {
    let mut by: HashMap<&'static str, Vec<Raw>> = HashMap::new();
    for r in raws {
        by.entry(r.key.name).or_default().push(r);
    }
    for v in by.values_mut() {
        v.reverse();
        // Stable: among equal ranks the later-given (now earlier) stays first.
        v.sort_by_key(Raw::rank);
    }
    by
}

struct Picker {
    raws: HashMap<&'static str, Vec<Raw>>,
    errors: Vec<SettingError>,
    effective: Vec<Effective>,
}

impl Picker {
    /// The winning value, parsed; an invalid one is an error and gives the default.
    fn get<T>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        if let Some(r) = self.raws.get(name).and_then(|v| v.first()) {
            let text = r.values.last().cloned().unwrap_or_default();
            match parse(&text) {
                Ok(v) => {
                    self.effective.push(Effective {
                        key: r.key.name,
                        value: text,
                        origin: r.origin.clone(),
                    });
                    return Some(v);
                }
                Err(expected) => self.errors.push(SettingError::Invalid {
                    origin: r.origin.clone(),
                    value: text,
                    expected,
                }),
            }
        }
        let default = key(name).default?;
        let v = parse(default).ok()?;
        self.effective.push(Effective {
            key: name,
            value: default.to_owned(),
            origin: Origin::Default,
        });
        Some(v)
    }

    /// For keys with a default (which always parses: a unit test resolves the defaults).
    fn req<T: Default>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        self.get(name, parse).unwrap_or_default()
    }

    fn switch(&mut self, name: &'static str) -> bool {
        self.get(name, value::switch).unwrap_or(false)
    }

    /// A repeatable setting: the values of the highest source that gives any.
    fn list<T>(&mut self, name: &'static str, parse: impl Fn(&str) -> Result<T, String>) -> Vec<T> {
        let Some(all) = self.raws.get(name) else {
            return Vec::new();
        };
        let top = all[0].origin.rank();
        let chosen: Vec<Raw> = all
            .iter()
            .filter(|r| r.origin.rank() == top)
            .rev()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for r in chosen {
            for text in &r.values {
                match parse(text) {
                    Ok(v) => {
                        out.push(v);
                        self.effective.push(Effective {
                            key: r.key.name,
                            value: text.clone(),
                            origin: r.origin.clone(),
                        });
                    }
                    Err(expected) => self.errors.push(SettingError::Invalid {
                        origin: r.origin.clone(),
                        value: text.clone(),
                        expected,
                    }),
                }
            }
        }
        out
    }

    /// `app-env`: every source adds; for one variable name the highest source wins.
    fn app_env(&mut self) -> Vec<(String, String)> {
        let Some(all) = self.raws.get("app-env").cloned() else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut won: Vec<(String, Origin)> = Vec::new();
        // Lowest precedence first, so that a higher source replaces.
        for r in all.iter().rev() {
            for text in &r.values {
                match value::env_pair(text) {
                    Ok((k, v)) => {
                        out.retain(|(o, _)| *o != k);
                        won.retain(|(o, _)| *o != k);
                        won.push((k.clone(), r.origin.clone()));
                        out.push((k, v));
                    }
                    Err(expected) => self.errors.push(SettingError::Invalid {
                        origin: r.origin.clone(),
                        value: text.clone(),
                        expected,
                    }),
                }
            }
        }
        for (k, origin) in won {
            self.effective.push(Effective {
                key: "app-env",
                value: format!("{k}=…"),
                origin,
            });
        }
        out
    }
}

/// The most a size setting takes (1 TiB), so later arithmetic cannot overflow.
const MAX_SIZE: u64 = 1 << 40;

fn build(p: &mut Picker, config: Option<PathBuf>) -> Settings {
    use value::{choice, count, count_usize, mode, path, positive_seconds, seconds, size, text};
    let python = PythonSettings {
        venv: p.get("venv", path),
        pythonpath: p.list("pythonpath", path),
        chdir: p.get("chdir", path),
        python_home: p.get("python-home", path),
    };
    Settings {
        app: p.get("app", text),
        app_root: p.get("app-root", path),
        config,
        app_env: p.app_env(),
        python,
        max_requests: p.req("max-requests", |s| count(s, 0, u64::MAX)),
        restart_regex: p.get("restart-regex", |s| {
            if s.is_empty() {
                Ok(String::new())
            } else {
                value::regex(s)
            }
        }),
        stderr_errors: p.switch("stderr-errors"),
        threads: p.get("threads", |s| count_usize(s, 1, 1024)),
        max_body_size: p.req("max-body-size", |s| size(s, MAX_SIZE)),
        max_body_memory: p.req("max-body-memory", |s| size(s, 1 << 30)),
        spool_dir: p.get("spool-dir", path),
        send_window: p.req("send-window", |s| size(s, 1 << 30).and_then(nonzero_size)),
        detailed_errors: p.switch("detailed-errors"),
        impersonate: p.switch("impersonate"),
        url_scheme: p.get("url-scheme", |s| {
            choice(s, &[("http", "http"), ("https", "https")]).map(str::to_owned)
        }),
        script_name: p.get("script-name", value::script_name),
        interface: p
            .get("interface", |s| {
                choice(
                    s,
                    &[
                        ("auto", Interface::Auto),
                        ("wsgi", Interface::Wsgi),
                        ("asgi", Interface::Asgi),
                    ],
                )
            })
            .unwrap_or(Interface::Auto),
        lifespan: p
            .get("lifespan", |s| {
                choice(
                    s,
                    &[
                        ("auto", Lifespan::Auto),
                        ("on", Lifespan::On),
                        ("off", Lifespan::Off),
                    ],
                )
            })
            .unwrap_or(Lifespan::Auto),
        event_loop: p
            .get("loop", |s| {
                choice(
                    s,
                    &[
                        ("auto", EventLoop::Auto),
                        ("asyncio", EventLoop::Asyncio),
                        ("uvloop", EventLoop::Uvloop),
                    ],
                )
            })
            .unwrap_or(EventLoop::Auto),
        bind: p.get("bind", |s| {
            s.parse::<pyfcgi_server::Bind>().map_err(|e| {
                format!("an address: HOST:PORT, tcp:HOST:PORT, unix:PATH or fd:N ({e})")
            })
        }),
        workers: p.get("workers", value::workers),
        reload: p.switch("reload"),
        max_requests_jitter: p.req("max-requests-jitter", |s| count(s, 0, 1 << 40)),
        max_rss_mib: p.req("max-rss", |s| count(s, 0, 1 << 24)),
        worker_lifetime: p
            .get("worker-lifetime", |s| seconds(s, Some("never")))
            .flatten(),
        crash_limit: p.req("crash-limit", |s| count(s, 1, 1000).map(|n| n as u32)),
        ready_timeout: p.req("ready-timeout", |s| positive_seconds(s, 1.0)),
        read_timeout: p
            .get("read-timeout", |s| seconds(s, Some("never")))
            .flatten(),
        params_timeout: p
            .get("params-timeout", |s| seconds(s, Some("never")))
            .flatten(),
        request_timeout: p
            .get("request-timeout", |s| seconds(s, Some("no limit")))
            .flatten(),
        status_path: p.get("status-path", |s| {
            if s.starts_with('/') {
                Ok(s.to_owned())
            } else {
                Err("a path starting with '/', like /pyfcgi-status".to_owned())
            }
        }),
        access_log: p.get("access-log", path),
        access_log_format: p.get("access-log-format", |s| {
            s.parse::<pyfcgi_status::AccessFormat>()
                .map_err(|e| e.to_string())
        }),
        socket_mode: p.req("socket-mode", mode),
        socket_owner: p.get("socket-owner", text),
        socket_group: p.get("socket-group", text),
        status_bind: p.get("status-bind", text),
        trusted_proxy: {
            let lists = p.list("trusted-proxy", |s| {
                s.parse::<pyfcgi_server::proxy::TrustedProxies>()
                    .map_err(|_| {
                        "IP addresses or networks, comma-separated (10.0.0.1, 10.0.0.0/8, ::1)"
                            .to_owned()
                    })
            });
            let mut it = lists.into_iter();
            it.next().map(|mut all| {
                for l in it {
                    all.extend(&l);
                }
                all
            })
        },
        builtin: p.get("builtin", |s| {
            s.parse::<pyfcgi_server::builtin::Builtin>()
                .map_err(|_| "one of hello, echo, env".to_owned())
        }),
        max_conns: p.req("max-conns", |s| count_usize(s, 1, 1_000_000)),
        max_requests_per_conn: p.req("max-requests-per-conn", |s| count_usize(s, 1, 65_535)),
        no_multiplex: p.switch("no-multiplex"),
        max_params_bytes: p.req("max-params-bytes", |s| {
            size(s, 64 << 20)
                .and_then(|n| {
                    if n >= 1024 {
                        Ok(n as usize)
                    } else {
                        Err(String::new())
                    }
                })
                .map_err(|_| "a size from 1k to 64m".to_owned())
        }),
        max_params: p.req("max-params", |s| count_usize(s, 1, 1_000_000)),
        graceful_timeout: p
            .req("graceful-timeout", |s| seconds(s, None))
            .unwrap_or_default(),
        idle_timeout: p
            .get("idle-timeout", |s| seconds(s, Some("never")))
            .flatten(),
        io_threads: p.req("io-threads", |s| count_usize(s, 1, 256)),
        align_records: p.switch("align-records"),
        web_server_addrs: p
            .get("web-server-addrs", |s| {
                pyfcgi_server::transport::parse_web_server_addrs(s).map_err(|_| {
                    "IP addresses, comma-separated (127.0.0.1,::1), or empty for any".to_owned()
                })
            })
            .unwrap_or_default(),
        log_max_size: p.req("log-max-size", |s| size(s, MAX_SIZE)),
        log_keep: p.req("log-keep", |s| count(s, 0, 1000).map(|n| n as u32)),
        log_file: p.get("log-file", path),
        log_level: p.req("log-level", |s| {
            choice(
                s,
                &[
                    ("error", "error"),
                    ("warn", "warn"),
                    ("warning", "warn"),
                    ("info", "info"),
                    ("debug", "debug"),
                    ("trace", "trace"),
                    ("off", "off"),
                ],
            )
            .map(str::to_owned)
        }),
        log_format: p
            .get("log-format", |s| {
                choice(s, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
            })
            .unwrap_or_default(),
    }
}

fn nonzero_size(n: u64) -> Result<u64, String> {
    if n == 0 {
        Err("a size above 0, like 64k".to_owned())
    } else {
        Ok(n)
    }
}
