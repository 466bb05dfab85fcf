//! What `pyfcgi iis enable|disable|webconfig` write: the server-level FastCGI application
//! (through `appcmd`, since `<fastCgi>` may only live in applicationHost.config) and the site's
//! `web.config` handler mapping, whose `scriptProcessor` must equal `fullPath|arguments`
//! character for character (research: iis-fastcgi.md §1.1).
//!
//! Updating an existing `web.config` keeps everything else in it: only the `pyfcgi` handler,
//! pyfcgi's `<location>` blocks and `WSGI_HANDLER` (when an app is given) are replaced;
//! `PYTHONPATH` and `WSGI_LOG` are added only when missing. Running `enable` twice gives the
//! same file, and removal takes out only what still has the values `enable` writes.
//!
//! It also reads what is there ([`SiteFastCgi`], [`fastcgi_applications`],
//! [`Registration::from_script_processor`]) for `pyfcgi doctor` and `disable`, and quotes and
//! splits command lines with the Windows C runtime's rules ([`quote_always`],
//! [`split_command_line`]), which is how appcmd and pyfcgi.exe read theirs.

use std::path::{Path, PathBuf};

use xmltree::{Element, EmitterConfig, XMLNode};

use crate::IisError;

/// The handler name pyfcgi registers.
pub const HANDLER_NAME: &str = "pyfcgi";

/// appCmd as the commands are printed; `%windir%` is expanded by whoever runs them.
pub const APPCMD: &str = r"%windir%\system32\inetsrv\appcmd.exe";

/// Which framework the site uses (decides the static folders excluded from the handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Any WSGI app: everything goes to Python.
    Generic,
    /// Flask: `/static` is served by IIS.
    Flask,
    /// Django: `/static` and `/media` are served by IIS (after `collectstatic`).
    Django,
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Generic => "generic",
            Self::Flask => "flask",
            Self::Django => "django",
        })
    }
}

impl std::str::FromStr for Flavour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "generic" | "wsgi" => Ok(Self::Generic),
            "flask" => Ok(Self::Flask),
            "django" => Ok(Self::Django),
            _ => Err(format!(
                "unknown flavour {s:?}; choose generic, flask or django"
            )),
        }
    }
}

/// Everything a registration needs.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Full path of pyfcgi.exe (`fullPath`).
    pub exe: PathBuf,
    /// The site's (or sub-application's) physical folder.
    pub app_root: PathBuf,
    /// The WSGI application (`--app`), also written as `WSGI_HANDLER`.
    pub app: Option<String>,
    /// The venv (`--venv`).
    pub venv: Option<PathBuf>,
    /// Framework flavour.
    pub flavour: Flavour,
    /// `responseBufferLimit="0"` so streamed responses (SSE) are not held by IIS.
    pub streaming: bool,
    /// `signalBeforeTerminateSeconds`: how long IIS waits after signalling shutdown.
    pub signal_before_terminate: u32,
    /// `instanceMaxRequests`.
    pub instance_max_requests: u32,
    /// `activityTimeout` and `requestTimeout`, seconds.
    pub timeout: u32,
    /// `--replace-wfastcgi`: take wfastcgi's handler mappings out of the web.config.
    pub replace_wfastcgi: bool,
}

impl Registration {
    /// A registration with pyfcgi's recommended IIS settings.
    pub fn new(exe: PathBuf, app_root: PathBuf) -> Self {
        Self {
            exe,
            app_root,
            app: None,
            venv: None,
            flavour: Flavour::Generic,
            streaming: false,
            signal_before_terminate: 30,
            instance_max_requests: 10_000,
            timeout: 600,
            replace_wfastcgi: false,
        }
    }

    /// The FastCGI `arguments`: bind the process to this app so it loads eagerly and refuses
    /// requests for other apps.
    pub fn arguments(&self) -> String {
        let mut args = format!(
            "serve --app-root {}",
            quote(&self.app_root.display().to_string())
        );
        if let Some(app) = &self.app {
            args.push_str(" --app ");
            args.push_str(&quote(app));
        }
        if let Some(v) = &self.venv {
            args.push_str(" --venv ");
            args.push_str(&quote(&v.display().to_string()));
        }
        args
    }

    /// The handler's `scriptProcessor`: exactly `fullPath|arguments`.
    pub fn script_processor(&self) -> String {
        format!("{}|{}", self.exe.display(), self.arguments())
    }

    /// The registration a `scriptProcessor` written by [`Registration::script_processor`]
    /// describes (exe, app root, app, venv; other settings at their defaults), or `None` when
    /// it is not one (wfastcgi's `python.exe|wfastcgi.py`, hand-edited arguments).
    pub fn from_script_processor(script_processor: &str) -> Option<Self> {
        let (exe, arguments) = script_processor.split_once('|')?;
        let mut words = split_command_line(arguments).into_iter();
        if words.next()? != "serve" {
            return None;
        }
        let (mut app_root, mut app, mut venv) = (None, None, None);
        while let Some(flag) = words.next() {
            let value = words.next()?;
            match flag.as_str() {
                "--app-root" => app_root = Some(PathBuf::from(value)),
                "--app" => app = Some(value),
                "--venv" => venv = Some(PathBuf::from(value)),
                _ => return None,
            }
        }
        let mut r = Self::new(PathBuf::from(exe), app_root?);
        r.app = app;
        r.venv = venv;
        Some(r)
    }

    fn fastcgi_key(&self) -> String {
        format!(
            "[fullPath='{}',arguments='{}']",
            self.exe.display(),
            self.arguments()
        )
    }

    /// The appcmd commands that register the FastCGI application (idempotent: the existing
    /// entry, if any, is removed first; appcmd's error for a missing one is harmless).
    pub fn appcmd_enable(&self) -> Vec<String> {
        let section = "-section:system.webServer/fastCgi";
        let add = format!(
            "/+[fullPath='{}',arguments='{}',signalBeforeTerminateSeconds='{}',instanceMaxRequests='{}',activityTimeout='{}',requestTimeout='{}',protocol='NamedPipe']",
            self.exe.display(),
            self.arguments(),
            self.signal_before_terminate,
            self.instance_max_requests,
            self.timeout,
            self.timeout,
        );
        vec![
            format!(
                r"{APPCMD} set config {section} {} /commit:apphost",
                quote_always(&format!("/-{}", self.fastcgi_key()))
            ),
            format!(
                r"{APPCMD} set config {section} {} /commit:apphost",
                quote_always(&add)
            ),
        ]
    }

    /// The `<application>` element [`Registration::appcmd_enable`] leaves in
    /// applicationHost.config's `<system.webServer><fastCgi>`, for reading and for admins who
    /// edit that file by hand.
    pub fn fastcgi_application_xml(&self) -> String {
        let mut app = Element::new("application");
        for (k, v) in [
            ("fullPath", self.exe.display().to_string()),
            ("arguments", self.arguments()),
            (
                "signalBeforeTerminateSeconds",
                self.signal_before_terminate.to_string(),
            ),
            (
                "instanceMaxRequests",
                self.instance_max_requests.to_string(),
            ),
            ("activityTimeout", self.timeout.to_string()),
            ("requestTimeout", self.timeout.to_string()),
            ("protocol", "NamedPipe".to_owned()),
        ] {
            app.attributes.insert(k.into(), v);
        }
        let mut out = Vec::new();
        let config = EmitterConfig::new().write_document_declaration(false);
        // Writing to a Vec cannot fail, and attribute values are escaped by the emitter.
        let _ = app.write_with_config(&mut out, config);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The appcmd command that removes the FastCGI application.
    pub fn appcmd_disable(&self) -> Vec<String> {
        vec![format!(
            r"{APPCMD} set config -section:system.webServer/fastCgi {} /commit:apphost",
            quote_always(&format!("/-{}", self.fastcgi_key()))
        )]
    }

    /// The app settings pyfcgi writes.
    fn app_settings(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(app) = &self.app {
            v.push(("WSGI_HANDLER", app.clone()));
        }
        v.push(("PYTHONPATH", self.app_root.display().to_string()));
        v.push((
            "WSGI_LOG",
            join_like(&self.app_root, &["logs", "pyfcgi.log"]),
        ));
        v
    }

    fn static_folders(&self) -> &'static [&'static str] {
        match self.flavour {
            Flavour::Generic => &[],
            Flavour::Flask => &["static"],
            Flavour::Django => &["static", "media"],
        }
    }

    /// A new `web.config`, or `existing` updated, as text.
    /// An existing file whose `<appSettings>` pyfcgi cannot read is refused with that error:
    /// written back as it is, the site would fail at its first request instead.
    pub fn web_config(&self, existing: Option<&[u8]>, path: &Path) -> Result<String, IisError> {
        let mut root = match existing {
            Some(x) => {
                crate::webconfig::AppSettings::default().apply_xml(x, path)?;
                parse(x, path)?
            }
            None => Element::new("configuration"),
        };
        self.apply(&mut root);
        emit(&root, path)
    }

    /// `existing` with pyfcgi's handler, locations and keys removed.
    pub fn remove_from_web_config(&self, existing: &[u8], path: &Path) -> Result<String, IisError> {
        let mut root = parse(existing, path)?;
        if let Some(handlers) = child_path(&mut root, &["system.webServer", "handlers"]) {
            handlers.children.retain(|n| !is_add_named(n, HANDLER_NAME));
        }
        root.children.retain(|n| !is_pyfcgi_location(n));
        // Only the values `enable` writes: a key the site had before keeps its own value.
        if let Some(settings) = root.get_mut_child("appSettings") {
            let ours = self.app_settings();
            settings.children.retain(|n| match n {
                XMLNode::Element(e) if e.name == "add" => !ours.iter().any(|(k, v)| {
                    e.attributes
                        .get("key")
                        .is_some_and(|key| key.eq_ignore_ascii_case(k))
                        && e.attributes.get("value") == Some(v)
                }),
                _ => true,
            });
        }
        // The containers `apply` created, if nothing else lives in them now.
        if let Some(web_server) = root.get_mut_child("system.webServer") {
            prune_if_blank(web_server, "handlers");
        }
        prune_if_blank(&mut root, "system.webServer");
        prune_if_blank(&mut root, "appSettings");
        emit(&root, path)
    }

    fn apply(&self, root: &mut Element) {
        // <appSettings>: set pyfcgi's keys, keep everything else. An explicit --app replaces
        // WSGI_HANDLER; a PYTHONPATH or WSGI_LOG the site already has (a wfastcgi site being
        // migrated) is kept, since it is what the app was deployed with.
        let settings = ensure_child(root, "appSettings");
        for (key, value) in self.app_settings() {
            let is_key = |n: &XMLNode| matches!(n, XMLNode::Element(e) if e.name == "add" && e.attributes.get("key").is_some_and(|k| k.eq_ignore_ascii_case(key)));
            let Some(first) = settings.children.iter().position(is_key) else {
                let mut add = Element::new("add");
                add.attributes.insert("key".into(), key.into());
                add.attributes.insert("value".into(), value);
                settings.children.push(XMLNode::Element(add));
                continue;
            };
            if key == "WSGI_HANDLER" {
                // Updated in place, so a second run gives the same file.
                if let XMLNode::Element(e) = &mut settings.children[first] {
                    e.attributes.insert("key".into(), key.into());
                    e.attributes.insert("value".into(), value);
                }
                let mut index = 0;
                settings.children.retain(|n| {
                    index += 1;
                    index - 1 == first || !is_key(n)
                });
            }
        }
        // <system.webServer><handlers>: one pyfcgi handler for every path, first in the list
        // (after a <clear/>, which would remove it): IIS runs the first handler whose path
        // matches, and a migrated site's wfastcgi handler (also path="*") would win otherwise.
        let handlers = ensure_path(root, &["system.webServer", "handlers"]);
        handlers.children.retain(|n| !is_add_named(n, HANDLER_NAME));
        if self.replace_wfastcgi {
            handlers.children.retain(|n| !is_wfastcgi_add(n));
        }
        let first = handlers
            .children
            .iter()
            .rposition(|n| matches!(n, XMLNode::Element(e) if e.name == "clear"))
            .map_or(0, |i| i + 1);
        let mut add = Element::new("add");
        for (k, v) in [
            ("name", HANDLER_NAME.to_owned()),
            ("path", "*".into()),
            ("verb", "*".into()),
            ("modules", "FastCgiModule".into()),
            ("scriptProcessor", self.script_processor()),
            ("resourceType", "Unspecified".into()),
            ("requireAccess", "Script".into()),
        ] {
            add.attributes.insert(k.into(), v);
        }
        if self.streaming {
            add.attributes
                .insert("responseBufferLimit".into(), "0".into());
        }
        handlers.children.insert(first, XMLNode::Element(add));
        // Static folders: IIS serves them, Python never sees the requests.
        root.children.retain(|n| !is_pyfcgi_location(n));
        for folder in self.static_folders() {
            let mut location = Element::new("location");
            location.attributes.insert("path".into(), (*folder).into());
            let mut remove = Element::new("remove");
            remove.attributes.insert("name".into(), HANDLER_NAME.into());
            let handlers = ensure_path(&mut location, &["system.webServer", "handlers"]);
            handlers.children.push(XMLNode::Element(remove));
            root.children.push(XMLNode::Element(location));
        }
    }
}

/// A FastCGI handler mapping (`<handlers><add modules="FastCgiModule">`) of a web.config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerMapping {
    /// `name`.
    pub name: String,
    /// `path` (`*` for pyfcgi's).
    pub path: String,
    /// `scriptProcessor`: `fullPath|arguments` of a `<fastCgi>` application.
    pub script_processor: String,
    /// `responseBufferLimit`, when set.
    pub response_buffer_limit: Option<String>,
}

/// What a site's `web.config` says about FastCGI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFastCgi {
    /// The FastCGI handler mappings of the file's top level (not inside `<location>`), after
    /// its own `<remove>` and `<clear/>`, in order.
    pub handlers: Vec<HandlerMapping>,
    /// The file has a `<system.webServer><fastCgi>` section, which IIS does not read there:
    /// the section is `allowDefinition="AppHostOnly"`.
    pub has_fastcgi_section: bool,
}

impl SiteFastCgi {
    /// Reads the FastCGI parts of a web.config.
    pub fn read(xml: &[u8], path: &Path) -> Result<Self, IisError> {
        let root = parse(xml, path)?;
        let Some(web_server) = root.get_child("system.webServer") else {
            return Ok(Self::default());
        };
        let mut handlers = Vec::new();
        for e in web_server
            .get_child("handlers")
            .into_iter()
            .flat_map(|h| h.children.iter().filter_map(XMLNode::as_element))
        {
            let attr = |k: &str| e.attributes.get(k).cloned();
            let name = attr("name").unwrap_or_default();
            match e.name.as_str() {
                "clear" => handlers.clear(),
                "remove" => {
                    handlers.retain(|h: &HandlerMapping| !h.name.eq_ignore_ascii_case(&name));
                }
                "add"
                    if attr("modules").is_some_and(|m| m.eq_ignore_ascii_case("FastCgiModule")) =>
                {
                    handlers.push(HandlerMapping {
                        name,
                        path: attr("path").unwrap_or_default(),
                        script_processor: attr("scriptProcessor").unwrap_or_default(),
                        response_buffer_limit: attr("responseBufferLimit"),
                    });
                }
                _ => {}
            }
        }
        Ok(Self {
            handlers,
            has_fastcgi_section: web_server.get_child("fastCgi").is_some(),
        })
    }

    /// pyfcgi's handler ([`HANDLER_NAME`]), if present.
    pub fn pyfcgi_handler(&self) -> Option<&HandlerMapping> {
        self.handlers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(HANDLER_NAME))
    }

    /// The handlers that run wfastcgi, in order.
    pub fn wfastcgi_handlers(&self) -> Vec<&HandlerMapping> {
        self.handlers
            .iter()
            .filter(|h| is_wfastcgi(&h.script_processor))
            .collect()
    }

    /// A wfastcgi handler for every path (`path="*"`) listed before pyfcgi's, or with no
    /// pyfcgi handler at all: IIS runs the first handler whose path matches, so that one
    /// answers the site's requests.
    pub fn wfastcgi_answers(&self) -> Option<&HandlerMapping> {
        for h in &self.handlers {
            if h.name.eq_ignore_ascii_case(HANDLER_NAME) {
                return None;
            }
            if is_wfastcgi(&h.script_processor) && h.path.trim() == "*" {
                return Some(h);
            }
        }
        None
    }
}

/// A `<system.webServer><fastCgi><application>` of applicationHost.config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCgiApplication {
    /// `fullPath`.
    pub full_path: String,
    /// `arguments`.
    pub arguments: String,
    /// Every attribute, as written.
    pub attributes: Vec<(String, String)>,
}

impl FastCgiApplication {
    /// The `scriptProcessor` a handler mapping must use for this application.
    pub fn script_processor(&self) -> String {
        format!("{}|{}", self.full_path, self.arguments)
    }

    /// An attribute's value (case-insensitive name).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The FastCGI applications registered in an applicationHost.config.
pub fn fastcgi_applications(xml: &[u8], path: &Path) -> Result<Vec<FastCgiApplication>, IisError> {
    let root = parse(xml, path)?;
    let apps = root
        .get_child("system.webServer")
        .and_then(|w| w.get_child("fastCgi"))
        .into_iter()
        .flat_map(|f| f.children.iter().filter_map(XMLNode::as_element))
        .filter(|e| e.name == "application")
        .map(|e| FastCgiApplication {
            full_path: e.attributes.get("fullPath").cloned().unwrap_or_default(),
            arguments: e.attributes.get("arguments").cloned().unwrap_or_default(),
            attributes: e
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect();
    Ok(apps)
}

/// One IIS application of an applicationHost.config: where its web.config lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFolder {
    /// The site's name and the application's path: `Default Web Site/app`.
    pub name: String,
    /// The application's root `physicalPath`, as written (`%SystemDrive%` unexpanded).
    pub physical_path: String,
}

/// Every application of every site in an applicationHost.config, with its root folder.
pub fn site_folders(xml: &[u8], path: &Path) -> Result<Vec<SiteFolder>, IisError> {
    let root = parse(xml, path)?;
    let sites = root
        .get_child("system.applicationHost")
        .and_then(|a| a.get_child("sites"))
        .into_iter()
        .flat_map(|s| s.children.iter().filter_map(XMLNode::as_element))
        .filter(|e| e.name == "site");
    let mut out = Vec::new();
    for site in sites {
        let site_name = site.attributes.get("name").cloned().unwrap_or_default();
        for app in site
            .children
            .iter()
            .filter_map(XMLNode::as_element)
            .filter(|e| e.name == "application")
        {
            let app_path = app.attributes.get("path").map_or("/", String::as_str);
            let root_dir = app
                .children
                .iter()
                .filter_map(XMLNode::as_element)
                .find(|v| {
                    v.name == "virtualDirectory"
                        && v.attributes.get("path").is_some_and(|p| p == "/")
                })
                .and_then(|v| v.attributes.get("physicalPath"));
            if let Some(physical) = root_dir {
                out.push(SiteFolder {
                    name: format!("{site_name}{}", app_path.trim_end_matches('/')),
                    physical_path: physical.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// True when `xml` is a `<configuration>` with nothing in it (what `disable` leaves of a
/// web.config that `enable` created).
pub fn is_empty_web_config(xml: &[u8], path: &Path) -> Result<bool, IisError> {
    let root = parse(xml, path)?;
    Ok(root.attributes.is_empty() && is_blank(&root))
}

fn is_blank(e: &Element) -> bool {
    e.children
        .iter()
        .all(|n| matches!(n, XMLNode::Text(t) if t.trim().is_empty()))
}

/// Removes `parent`'s child `name` when it has nothing left in it.
fn prune_if_blank(parent: &mut Element, name: &str) {
    parent.children.retain(
        |n| !matches!(n, XMLNode::Element(e) if e.name == name && e.attributes.is_empty() && is_blank(e)),
    );
}

/// Joins path parts with the separator `root` already uses, so a Windows path stays a Windows
/// path when generated on Linux (dry runs, tests).
fn join_like(root: &Path, parts: &[&str]) -> String {
    let r = root.display().to_string();
    let sep = if r.contains('\\') { '\\' } else { '/' };
    let mut out = r.trim_end_matches(sep).to_owned();
    for p in parts {
        out.push(sep);
        out.push_str(p);
    }
    out
}

/// Quotes a command-line argument when it has spaces or quotes (Windows rules).
fn quote(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\t', '"']) {
        return s.to_owned();
    }
    quote_always(s)
}

/// Wraps `s` in double quotes the way the Microsoft C runtime unquotes it
/// (`CommandLineToArgvW`): a `"` inside becomes `\"`, and backslashes are doubled only where
/// they precede a quote (so `C:\dir\` stays a path, not an escaped quote).
pub fn quote_always(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut backslashes = 0;
    for c in s.chars() {
        if c == '\\' {
            backslashes += 1;
            continue;
        }
        let n = if c == '"' {
            2 * backslashes + 1
        } else {
            backslashes
        };
        out.extend(std::iter::repeat_n('\\', n));
        backslashes = 0;
        out.push(c);
    }
    out.extend(std::iter::repeat_n('\\', 2 * backslashes));
    out.push('"');
    out
}

/// Splits a Windows command line into arguments with the Microsoft C runtime's rules (the
/// inverse of [`quote_always`]): spaces and tabs separate arguments outside quotes, `2n`
/// backslashes before `"` are `n` backslashes and a quote toggle, `2n+1` are `n` backslashes
/// and a literal `"`, and `""` inside quotes is a literal `"`.
pub fn split_command_line(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let mut n = 1;
                while chars.next_if_eq(&'\\').is_some() {
                    n += 1;
                }
                if chars.peek() == Some(&'"') {
                    cur.extend(std::iter::repeat_n('\\', n / 2));
                    if n % 2 == 1 {
                        chars.next();
                        cur.push('"');
                    }
                } else {
                    cur.extend(std::iter::repeat_n('\\', n));
                }
                in_arg = true;
            }
            '"' => {
                if quoted && chars.next_if_eq(&'"').is_some() {
                    cur.push('"');
                } else {
                    quoted = !quoted;
                }
                in_arg = true;
            }
            ' ' | '\t' if !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            _ => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    args
}

fn is_add_named(n: &XMLNode, name: &str) -> bool {
    matches!(n, XMLNode::Element(e) if e.name == "add" && e.attributes.get("name").is_some_and(|v| v.eq_ignore_ascii_case(name)))
}

/// Whether a `scriptProcessor` runs wfastcgi (`python.exe|...\\wfastcgi.py`, as
/// `wfastcgi-enable` registers it, or a copy of the script under another folder).
pub fn is_wfastcgi(script_processor: &str) -> bool {
    script_processor.to_ascii_lowercase().contains("wfastcgi")
}

/// A FastCGI `<add>` handler that runs wfastcgi.
fn is_wfastcgi_add(n: &XMLNode) -> bool {
    matches!(n, XMLNode::Element(e) if e.name == "add"
        && e.attributes.get("modules").is_some_and(|m| m.eq_ignore_ascii_case("FastCgiModule"))
        && e.attributes.get("scriptProcessor").is_some_and(|p| is_wfastcgi(p)))
}

/// The appcmd command that unregisters the FastCGI application a handler's
/// `scriptProcessor` (`fullPath|arguments`) names (a processor without `|` has no arguments).
pub fn appcmd_remove_fastcgi(script_processor: &str) -> String {
    let (full_path, arguments) = script_processor
        .split_once('|')
        .unwrap_or((script_processor, ""));
    format!(
        r"{APPCMD} set config -section:system.webServer/fastCgi {} /commit:apphost",
        quote_always(&format!(
            "/-[fullPath='{full_path}',arguments='{arguments}']"
        ))
    )
}

/// A `<location>` pyfcgi wrote: it only removes the pyfcgi handler.
fn is_pyfcgi_location(n: &XMLNode) -> bool {
    let XMLNode::Element(e) = n else { return false };
    if e.name != "location" {
        return false;
    }
    let removes_handler = |e: &Element| {
        e.get_child("system.webServer")
            .and_then(|w| w.get_child("handlers"))
            .is_some_and(|h| {
                let els: Vec<&Element> =
                    h.children.iter().filter_map(XMLNode::as_element).collect();
                els.len() == 1
                    && els[0].name == "remove"
                    && els[0]
                        .attributes
                        .get("name")
                        .is_some_and(|v| v == HANDLER_NAME)
            })
    };
    removes_handler(e)
}

fn ensure_child<'a>(parent: &'a mut Element, name: &str) -> &'a mut Element {
    if parent.get_child(name).is_none() {
        parent.children.push(XMLNode::Element(Element::new(name)));
    }
    parent.get_mut_child(name).expect("child was just ensured")
}

fn ensure_path<'a>(mut el: &'a mut Element, names: &[&str]) -> &'a mut Element {
    for n in names {
        el = ensure_child(el, n);
    }
    el
}

fn child_path<'a>(mut el: &'a mut Element, names: &[&str]) -> Option<&'a mut Element> {
    for n in names {
        el = el.get_mut_child(*n)?;
    }
    Some(el)
}

fn parse(xml: &[u8], path: &Path) -> Result<Element, IisError> {
    crate::webconfig::parse_configuration(xml, path)
}

fn emit(root: &Element, path: &Path) -> Result<String, IisError> {
    // Whitespace-only text from the original file would double up with the emitter's own
    // indentation; drop it and let the emitter indent.
    let mut root = root.clone();
    strip_whitespace(&mut root);
    let mut out = Vec::new();
    let config = EmitterConfig::new()
        .perform_indent(true)
        .indent_string("  ")
        .write_document_declaration(true);
    root.write_with_config(&mut out, config)
        .map_err(|e| IisError::Invalid {
            path: path.to_owned(),
            message: format!("cannot write XML: {e}"),
        })?;
    let mut s = String::from_utf8(out).map_err(|e| IisError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    s.push('\n');
    Ok(s)
}

fn strip_whitespace(e: &mut Element) {
    e.children
        .retain(|n| !matches!(n, XMLNode::Text(t) if t.trim().is_empty()));
    for n in &mut e.children {
        if let XMLNode::Element(c) = n {
            strip_whitespace(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        let mut r = Registration::new(
            PathBuf::from(r"C:\pyfcgi\pyfcgi.exe"),
            PathBuf::from(r"C:\inetpub\wwwroot\mysite"),
        );
        r.app = Some("mysite.wsgi:application".into());
        r.venv = Some(PathBuf::from(r"C:\inetpub\wwwroot\mysite\.venv"));
        r
    }

    /// Found by fuzz/fuzz_targets/webconfig.rs: an `<add>` without `key` in appSettings was
    /// kept, so `enable` wrote a web.config that `serve` then refused to read.
    #[test]
    fn enable_refuses_a_web_config_whose_app_settings_are_unreadable() {
        let existing = br#"<configuration><appSettings><add key="A" value="1"/><add keyy="B" value="2"/></appSettings></configuration>"#;
        let err = reg()
            .web_config(Some(existing), Path::new("web.config"))
            .unwrap_err();
        assert!(err.to_string().contains("without a key attribute"), "{err}");
    }

    #[test]
    fn script_processor_is_full_path_bar_arguments() {
        assert_eq!(
            reg().script_processor(),
            r"C:\pyfcgi\pyfcgi.exe|serve --app-root C:\inetpub\wwwroot\mysite --app mysite.wsgi:application --venv C:\inetpub\wwwroot\mysite\.venv"
        );
        let mut r = reg();
        r.app_root = PathBuf::from(r"C:\My Sites\a");
        assert!(
            r.arguments()
                .starts_with(r#"serve --app-root "C:\My Sites\a""#)
        );
    }

    #[test]
    fn new_web_config_snapshots() {
        let mut r = reg();
        insta::assert_snapshot!(
            "generic",
            r.web_config(None, Path::new("web.config")).unwrap()
        );
        r.flavour = Flavour::Django;
        r.streaming = true;
        insta::assert_snapshot!(
            "django_streaming",
            r.web_config(None, Path::new("web.config")).unwrap()
        );
        r.flavour = Flavour::Flask;
        r.streaming = false;
        insta::assert_snapshot!(
            "flask",
            r.web_config(None, Path::new("web.config")).unwrap()
        );
    }

    #[test]
    fn appcmd_snapshots() {
        insta::assert_snapshot!("appcmd_enable", reg().appcmd_enable().join("\n"));
        insta::assert_snapshot!("appcmd_disable", reg().appcmd_disable().join("\n"));
    }

    #[test]
    fn quoting_round_trips_through_the_windows_argv_rules() {
        for s in [
            r"C:\My Sites\a",
            r"C:\My Sites\",
            r#"say "hi""#,
            r#"a\"b"#,
            r"\\server\share\x y",
            "",
        ] {
            let quoted = quote_always(s);
            assert_eq!(split_command_line(&quoted), [s], "{quoted}");
        }
        assert_eq!(
            split_command_line(r#"serve --app-root "C:\My Sites\a" --app x:y"#),
            ["serve", "--app-root", r"C:\My Sites\a", "--app", "x:y"]
        );
        assert_eq!(split_command_line(r#""a""b" c"#), [r#"a"b"#, "c"]);
    }

    #[test]
    fn appcmd_arguments_with_quotes_survive_the_command_line() {
        let mut r = reg();
        r.app_root = PathBuf::from(r"C:\My Sites\a");
        r.venv = None;
        let cmd = &r.appcmd_enable()[1];
        let argv = split_command_line(cmd);
        assert_eq!(
            argv[4],
            format!(
                "/+[fullPath='C:\\pyfcgi\\pyfcgi.exe',arguments='{}',signalBeforeTerminateSeconds='30',instanceMaxRequests='10000',activityTimeout='600',requestTimeout='600',protocol='NamedPipe']",
                r.arguments()
            ),
            "{cmd}"
        );
        assert_eq!(argv[5], "/commit:apphost");
    }

    #[test]
    fn script_processor_is_parsed_back() {
        let mut r = reg();
        r.app_root = PathBuf::from(r"C:\My Sites\a");
        let back = Registration::from_script_processor(&r.script_processor()).unwrap();
        assert_eq!(back.script_processor(), r.script_processor());
        assert_eq!(back.app.as_deref(), Some("mysite.wsgi:application"));
        assert!(
            Registration::from_script_processor(r"C:\Python39\python.exe|C:\x\wfastcgi.py")
                .is_none()
        );
        assert!(Registration::from_script_processor("x|serve --app-root").is_none());
    }

    #[test]
    fn handlers_and_fastcgi_applications_are_read() {
        let r = reg();
        let text = r.web_config(None, Path::new("web.config")).unwrap();
        let site = SiteFastCgi::read(text.as_bytes(), Path::new("web.config")).unwrap();
        let h = site.pyfcgi_handler().unwrap();
        assert_eq!(h.script_processor, r.script_processor());
        assert!(!site.has_fastcgi_section);
        let site = SiteFastCgi::read(
            br#"<configuration><system.webServer><fastCgi/><handlers>
                <add name="Python FastCGI" path="*" modules="FastCgiModule" scriptProcessor="C:\py\python.exe|C:\py\wfastcgi.py"/>
                <add name="Gone" path="*.x" modules="FastCgiModule" scriptProcessor="x|y"/>
                <remove name="gone"/>
                <add name="Static" path="*.txt" modules="StaticFileModule"/>
            </handlers></system.webServer></configuration>"#,
            Path::new("web.config"),
        )
        .unwrap();
        assert!(site.has_fastcgi_section);
        assert_eq!(site.handlers.len(), 1);
        assert_eq!(site.handlers[0].name, "Python FastCGI");
        assert!(site.pyfcgi_handler().is_none());
        let apps = fastcgi_applications(
            br#"<configuration><system.webServer><fastCgi>
                <application fullPath="C:\pyfcgi\pyfcgi.exe" arguments="serve --app-root C:\s" signalBeforeTerminateSeconds="30"/>
            </fastCgi></system.webServer></configuration>"#,
            Path::new("applicationHost.config"),
        )
        .unwrap();
        assert_eq!(
            apps[0].script_processor(),
            r"C:\pyfcgi\pyfcgi.exe|serve --app-root C:\s"
        );
        assert_eq!(
            apps[0].attribute("signalbeforeterminateseconds"),
            Some("30")
        );
    }

    #[test]
    fn fastcgi_application_xml_is_what_appcmd_adds() {
        let mut r = reg();
        r.app_root = PathBuf::from(r"C:\My Sites\a");
        r.venv = None;
        let xml = r.fastcgi_application_xml();
        assert_eq!(
            xml,
            r#"<application fullPath="C:\pyfcgi\pyfcgi.exe" arguments="serve --app-root &quot;C:\My Sites\a&quot; --app mysite.wsgi:application" signalBeforeTerminateSeconds="30" instanceMaxRequests="10000" activityTimeout="600" requestTimeout="600" protocol="NamedPipe" />"#
        );
        let wrapped = format!(
            "<configuration><system.webServer><fastCgi>{xml}</fastCgi></system.webServer></configuration>"
        );
        let apps =
            fastcgi_applications(wrapped.as_bytes(), Path::new("applicationHost.config")).unwrap();
        assert_eq!(apps[0].script_processor(), r.script_processor());
    }

    #[test]
    fn disable_of_a_created_file_leaves_an_empty_configuration() {
        let mut r = reg();
        r.flavour = Flavour::Flask;
        let created = r.web_config(None, Path::new("web.config")).unwrap();
        let removed = r
            .remove_from_web_config(created.as_bytes(), Path::new("web.config"))
            .unwrap();
        assert!(
            is_empty_web_config(removed.as_bytes(), Path::new("web.config")).unwrap(),
            "{removed}"
        );
    }

    #[test]
    fn update_keeps_other_content_and_is_idempotent() {
        let existing = br#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="OTHER" value="kept" />
    <add key="WSGI_HANDLER" value="old.app" />
  </appSettings>
  <system.webServer>
    <handlers>
      <add name="StaticFile" path="*.txt" verb="GET" modules="StaticFileModule" resourceType="File" />
      <add name="pyfcgi" path="*" verb="*" modules="FastCgiModule" scriptProcessor="old|x" />
    </handlers>
    <rewrite><rules /></rewrite>
  </system.webServer>
</configuration>"#;
        let mut r = reg();
        r.flavour = Flavour::Django;
        let once = r
            .web_config(Some(existing), Path::new("web.config"))
            .unwrap();
        let twice = r
            .web_config(Some(once.as_bytes()), Path::new("web.config"))
            .unwrap();
        assert_eq!(once, twice, "enable must be idempotent");
        assert!(
            once.contains(r#"<add key="OTHER" value="kept" />"#),
            "{once}"
        );
        assert!(
            once.contains("StaticFileModule") && once.contains("<rewrite>"),
            "{once}"
        );
        assert_eq!(
            once.matches(r#"name="pyfcgi""#).count(),
            3,
            "one handler + two location removes:\n{once}"
        );
        assert!(!once.contains("old.app") && !once.contains("old|x"));
        // The settings it wrote are read back by the appSettings reader.
        let mut s = crate::webconfig::AppSettings::default();
        s.apply_xml(once.as_bytes(), Path::new("web.config"))
            .unwrap();
        assert_eq!(s.get("WSGI_HANDLER"), Some("mysite.wsgi:application"));
        assert_eq!(s.get("OTHER"), Some("kept"));
        // disable removes exactly what enable added.
        let removed = r
            .remove_from_web_config(once.as_bytes(), Path::new("web.config"))
            .unwrap();
        assert!(
            !removed.contains("pyfcgi") && !removed.contains("WSGI_HANDLER"),
            "{removed}"
        );
        assert!(removed.contains("OTHER") && removed.contains("StaticFileModule"));
    }

    #[test]
    fn a_migrated_sites_pythonpath_and_log_are_kept() {
        let existing = br#"<configuration><appSettings>
            <add key="WSGI_HANDLER" value="mysite.wsgi.application" />
            <add key="PYTHONPATH" value="C:\inetpub\wwwroot\mysite;C:\libs" />
            <add key="WSGI_LOG" value="C:\logs\wfastcgi.log" />
        </appSettings></configuration>"#;
        let mut r = reg();
        r.app = None;
        let text = r
            .web_config(Some(existing), Path::new("web.config"))
            .unwrap();
        let mut s = crate::webconfig::AppSettings::default();
        s.apply_xml(text.as_bytes(), Path::new("web.config"))
            .unwrap();
        assert_eq!(s.get("WSGI_HANDLER"), Some("mysite.wsgi.application"));
        assert_eq!(
            s.get("PYTHONPATH"),
            Some(r"C:\inetpub\wwwroot\mysite;C:\libs")
        );
        assert_eq!(s.get("WSGI_LOG"), Some(r"C:\logs\wfastcgi.log"));
        // disable leaves the site's own values alone.
        let removed = r
            .remove_from_web_config(text.as_bytes(), Path::new("web.config"))
            .unwrap();
        assert!(
            removed.contains("wfastcgi.log") && removed.contains("libs"),
            "{removed}"
        );
        assert!(!removed.contains("pyfcgi"), "{removed}");
    }
}
