//! What `pyfcgi iis enable|disable|webconfig` write: the server-level FastCGI application
//! (through `appcmd`, since `<fastCgi>` may only live in applicationHost.config) and the site's
//! `web.config` handler mapping, whose `scriptProcessor` must equal `fullPath|arguments`
//! character for character (research: iis-fastcgi.md §1.1).
//!
//! Updating an existing `web.config` keeps everything else in it: only the `pyfcgi` handler,
//! pyfcgi's `<location>` blocks and the keys pyfcgi sets in `<appSettings>` are replaced, so
//! running `enable` twice gives the same file.

use std::path::{Path, PathBuf};

use xmltree::{Element, EmitterConfig, XMLNode};

use crate::IisError;

/// The handler name pyfcgi registers.
pub const HANDLER_NAME: &str = "pyfcgi";

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
        vec![
            format!(
                r#"%windir%\system32\inetsrv\appcmd.exe set config {section} "/-{}" /commit:apphost"#,
                self.fastcgi_key()
            ),
            format!(
                r#"%windir%\system32\inetsrv\appcmd.exe set config {section} "/+[fullPath='{}',arguments='{}',signalBeforeTerminateSeconds='{}',instanceMaxRequests='{}',activityTimeout='{}',requestTimeout='{}',protocol='NamedPipe']" /commit:apphost"#,
                self.exe.display(),
                self.arguments(),
                self.signal_before_terminate,
                self.instance_max_requests,
                self.timeout,
                self.timeout,
            ),
        ]
    }

    /// The appcmd command that removes the FastCGI application.
    pub fn appcmd_disable(&self) -> Vec<String> {
        vec![format!(
            r#"%windir%\system32\inetsrv\appcmd.exe set config -section:system.webServer/fastCgi "/-{}" /commit:apphost"#,
            self.fastcgi_key()
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
    pub fn web_config(&self, existing: Option<&[u8]>, path: &Path) -> Result<String, IisError> {
        let mut root = match existing {
            Some(x) => parse(x, path)?,
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
        if let Some(settings) = root.get_mut_child("appSettings") {
            let keys: Vec<&str> = self.app_settings().iter().map(|(k, _)| *k).collect();
            settings.children.retain(|n| match n {
                XMLNode::Element(e) if e.name == "add" => !e
                    .attributes
                    .get("key")
                    .is_some_and(|k| keys.contains(&k.as_str())),
                _ => true,
            });
        }
        emit(&root, path)
    }

    fn apply(&self, root: &mut Element) {
        // <appSettings>: set pyfcgi's keys, keep everything else.
        let settings = ensure_child(root, "appSettings");
        for (key, value) in self.app_settings() {
            settings.children.retain(|n| !matches!(n, XMLNode::Element(e) if e.name == "add" && e.attributes.get("key").is_some_and(|k| k.eq_ignore_ascii_case(key))));
            let mut add = Element::new("add");
            add.attributes.insert("key".into(), key.into());
            add.attributes.insert("value".into(), value);
            settings.children.push(XMLNode::Element(add));
        }
        // <system.webServer><handlers>: one pyfcgi handler for every path.
        let handlers = ensure_path(root, &["system.webServer", "handlers"]);
        handlers.children.retain(|n| !is_add_named(n, HANDLER_NAME));
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
        handlers.children.push(XMLNode::Element(add));
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
    format!("\"{}\"", s.replace('"', "\\\""))
}

fn is_add_named(n: &XMLNode, name: &str) -> bool {
    matches!(n, XMLNode::Element(e) if e.name == "add" && e.attributes.get("name").is_some_and(|v| v.eq_ignore_ascii_case(name)))
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
    let xml = xml.strip_prefix(b"\xef\xbb\xbf").unwrap_or(xml);
    let root = Element::parse(xml).map_err(|e| IisError::Xml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if root.name != "configuration" {
        return Err(IisError::Invalid {
            path: path.to_owned(),
            message: format!(
                "the root element is <{}>, expected <configuration>",
                root.name
            ),
        });
    }
    Ok(root)
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
}
