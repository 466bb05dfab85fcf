//! `<appSettings>` of `web.config`, the way wfastcgi reads them, and done right where it was not:
//! `<clear/>` and `<remove key>` are honoured, and `web.config` files of parent folders apply
//! first (inner files override), as IIS's configuration inheritance does.
//!
//! wfastcgi's keys: `WSGI_HANDLER`, `PYTHONPATH` (`;`-separated, `%VAR%` expanded),
//! `WSGI_LOG`, `WSGI_RESTART_FILE_REGEX`, `SCRIPT_NAME`, `DJANGO_SETTINGS_MODULE`; every other
//! key is exported to the application's `os.environ`. pyfcgi's own keys start with `PYFCGI_`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xmltree::{Element, XMLNode};

use crate::IisError;

/// wfastcgi's default for `WSGI_RESTART_FILE_REGEX`.
pub const DEFAULT_RESTART_REGEX: &str = r".*((\.py)|(\.config))$";

/// Keys pyfcgi interprets itself (not exported to `os.environ`), besides `PYFCGI_*`.
pub const WFASTCGI_KEYS: [&str; 5] = [
    "WSGI_HANDLER",
    "PYTHONPATH",
    "WSGI_LOG",
    "WSGI_RESTART_FILE_REGEX",
    "SCRIPT_NAME",
];

/// Merged settings, in the order keys were added (later files override earlier ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSettings {
    /// (key, value, the web.config file that set it).
    entries: Vec<(String, String, PathBuf)>,
    /// The files read, outermost first.
    pub sources: Vec<PathBuf>,
}

impl AppSettings {
    /// The value of `key` (case-insensitive, as IIS treats keys).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v, _)| v.as_str())
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
    }

    /// All entries with the web.config file that set each (for messages naming the file).
    pub fn iter_with_origin(&self) -> impl Iterator<Item = (&str, &str, &Path)> {
        self.entries
            .iter()
            .map(|(k, v, f)| (k.as_str(), v.as_str(), f.as_path()))
    }

    /// Entries to export to `os.environ`: everything except wfastcgi's own keys and
    /// `PYFCGI_*` (`DJANGO_SETTINGS_MODULE` is exported, as wfastcgi does).
    pub fn environment(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| {
            !WFASTCGI_KEYS.iter().any(|w| w.eq_ignore_ascii_case(k))
                && !k.to_ascii_uppercase().starts_with("PYFCGI_")
        })
    }

    /// `PYTHONPATH` split on `;` with `%VAR%` expanded from `env`; empty parts dropped.
    pub fn pythonpath(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        self.get("PYTHONPATH")
            .map(|v| {
                v.split(';')
                    .map(|p| expand_vars(p.trim(), env))
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set(&mut self, key: &str, value: &str, file: &Path) {
        match self
            .entries
            .iter_mut()
            .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
        {
            Some(e) => {
                value.clone_into(&mut e.1);
                file.clone_into(&mut e.2);
            }
            None => self
                .entries
                .push((key.to_owned(), value.to_owned(), file.to_owned())),
        }
    }

    fn remove(&mut self, key: &str) {
        self.entries
            .retain(|(k, _, _)| !k.eq_ignore_ascii_case(key));
    }

    /// Applies one file's `<appSettings>` on top of what is there.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), IisError> {
        let text = std::fs::read(path).map_err(|source| IisError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.apply_xml(&text, path)?;
        self.sources.push(path.to_owned());
        Ok(())
    }

    /// Applies `<appSettings>` from XML text (`path` is for messages).
    pub fn apply_xml(&mut self, xml: &[u8], path: &Path) -> Result<(), IisError> {
        let root = parse_configuration(xml, path)?;
        let Some(app_settings) = root.get_child("appSettings") else {
            return Ok(());
        };
        if app_settings.attributes.contains_key("file")
            || app_settings.attributes.contains_key("configSource")
        {
            return Err(IisError::Invalid {
                path: path.to_owned(),
                message: "<appSettings file=...>/configSource is not supported; put the keys in web.config itself".into(),
            });
        }
        for node in &app_settings.children {
            let XMLNode::Element(e) = node else { continue };
            let key = e.attributes.get("key");
            match (e.name.as_str(), key) {
                ("clear", _) => self.entries.clear(),
                ("remove", Some(k)) => self.remove(k),
                ("add", Some(k)) => {
                    let v = e.attributes.get("value").map_or("", String::as_str);
                    self.set(k, v, path);
                }
                ("add" | "remove", None) => {
                    return Err(IisError::Invalid {
                        path: path.to_owned(),
                        message: format!("<appSettings><{}> without a key attribute", e.name),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Parses a web.config, checking that the root element is `<configuration>`. A UTF-8 BOM
/// (Visual Studio writes one) is accepted, as IIS accepts it.
pub(crate) fn parse_configuration(xml: &[u8], path: &Path) -> Result<Element, IisError> {
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

/// Reads the `<appSettings>` that apply to an application at `app_dir`: `web.config` of every
/// ancestor folder that has one (outermost first), then the app's own.
pub fn load_for_app(app_dir: &Path) -> Result<AppSettings, IisError> {
    let mut files: Vec<PathBuf> = app_dir
        .ancestors()
        .map(|d| d.join("web.config"))
        .filter(|p| p.is_file())
        .collect();
    files.reverse();
    let mut settings = AppSettings::default();
    for f in files {
        settings.apply_file(&f)?;
    }
    Ok(settings)
}

/// Expands `%NAME%` with `env(NAME)`, as Windows does: unknown variables are left as written,
/// `%%` stays.
pub fn expand_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end) if end > 0 => {
                let name = &after[..end];
                if let Some(v) = env(name) {
                    out.push_str(&v);
                } else {
                    out.push('%');
                    out.push_str(name);
                    out.push('%');
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Looks a variable up in the process environment, case-insensitively on Windows.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        cfg!(windows)
            .then(|| {
                std::env::vars()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .flatten()
    })
}

/// `key=value` pairs of a settings map, sorted (for logs).
pub fn describe(settings: &AppSettings) -> BTreeMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<AppSettings, IisError> {
        let mut s = AppSettings::default();
        s.apply_xml(xml.as_bytes(), Path::new("web.config"))?;
        Ok(s)
    }

    #[test]
    fn app_settings_are_read() {
        let s = parse(
            r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="myapp.app" />
    <add key="PYTHONPATH" value="C:\inetpub\app;%APPDATA%\lib" />
    <add key="DJANGO_SETTINGS_MODULE" value="mysite.settings" />
    <add key="SECRET" value="a&amp;b" />
  </appSettings>
  <system.webServer><handlers/></system.webServer>
</configuration>"#,
        )
        .unwrap();
        assert_eq!(s.get("wsgi_handler"), Some("myapp.app"));
        assert_eq!(s.get("SECRET"), Some("a&b"));
        let env: Vec<_> = s.environment().collect();
        assert_eq!(
            env,
            [
                ("DJANGO_SETTINGS_MODULE", "mysite.settings"),
                ("SECRET", "a&b")
            ]
        );
        let pp = s.pythonpath(&|n| (n == "APPDATA").then(|| r"C:\Users\x\AppData".to_owned()));
        assert_eq!(pp, [r"C:\inetpub\app", r"C:\Users\x\AppData\lib"]);
    }

    #[test]
    fn clear_and_remove_are_honoured_across_files() {
        let mut s = parse(r#"<configuration><appSettings><add key="A" value="1"/><add key="B" value="2"/><add key="C" value="3"/></appSettings></configuration>"#).unwrap();
        s.apply_xml(br#"<configuration><appSettings><remove key="b"/><add key="C" value="30"/></appSettings></configuration>"#, Path::new("inner")).unwrap();
        assert_eq!(s.get("A"), Some("1"));
        assert_eq!(s.get("B"), None);
        assert_eq!(s.get("C"), Some("30"));
        s.apply_xml(br#"<configuration><appSettings><clear/><add key="D" value="4"/></appSettings></configuration>"#, Path::new("x")).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [("D", "4")]);
    }

    #[test]
    fn parent_folders_apply_first() {
        let dir = std::env::temp_dir().join(format!("pyfcgi-webconfig-{}", std::process::id()));
        let app = dir.join("site").join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(dir.join("site/web.config"), r#"<configuration><appSettings><add key="A" value="site"/><add key="B" value="site"/></appSettings></configuration>"#).unwrap();
        std::fs::write(app.join("web.config"), "\u{feff}<configuration><appSettings><add key=\"B\" value=\"app\"/></appSettings></configuration>").unwrap();
        let s = load_for_app(&app).unwrap();
        assert_eq!(s.get("A"), Some("site"));
        assert_eq!(s.get("B"), Some("app"));
        assert_eq!(s.sources.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = parse("<configuration><appSettings><add key=\"A\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid XML"), "{e}");
        let e = parse("<html/>").unwrap_err().to_string();
        assert!(e.contains("expected <configuration>"), "{e}");
        let e =
            parse(r#"<configuration><appSettings><add value="x"/></appSettings></configuration>"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("without a key"), "{e}");
    }

    #[test]
    fn percent_vars_expand_like_windows() {
        let env = |n: &str| (n == "X").then(|| "1".to_owned());
        assert_eq!(expand_vars("%X%;%Y%;100%;%%", &env), "1;%Y%;100%;%%");
        assert_eq!(expand_vars("a%X%b", &env), "a1b");
    }
}
