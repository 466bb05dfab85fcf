//! web.config handling (`pyfcgi_iis`) on arbitrary files: reading `<appSettings>` and the
//! handler mappings never panics, and for any file that parses, what `pyfcgi iis enable`
//! writes into it parses again, names pyfcgi's handler with the registration's
//! scriptProcessor, is a fixed point (enable twice = enable once), and `disable` removes the
//! handler again. Also: a scriptProcessor built from an arbitrary app root, app and venv
//! reads back as the same three.
//!
//! Input: the web.config bytes, then optionally a NUL and `root \n app \n venv` (UTF-8, an
//! empty app or venv meaning none), so real web.config files are seeds as they are.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use pyfcgi_iis::register::{Registration, SiteFastCgi};
use pyfcgi_iis::webconfig::AppSettings;

struct Input {
    xml: Vec<u8>,
    root: String,
    app: Option<String>,
    venv: Option<String>,
}

fn split(data: &[u8]) -> Input {
    let (xml, tail) = match data.iter().rposition(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let tail = String::from_utf8_lossy(tail);
    let mut parts = tail.splitn(3, '\n').map(str::to_owned);
    Input {
        xml: xml.to_vec(),
        root: parts.next().unwrap_or_default(),
        app: parts.next(),
        venv: parts.next(),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = split(data);
    let path = Path::new("web.config");
    let mut settings = AppSettings::default();
    let parsed = settings.apply_xml(&input.xml, path);
    if let Err(e) = &parsed {
        let _ = e.to_string();
    }
    let _ = settings.pythonpath(&|_| Some("X".into()));
    let _ = settings.environment().count();
    let site = SiteFastCgi::read(&input.xml, path);

    let mut reg = Registration::new(
        PathBuf::from(r"C:\pyfcgi\pyfcgi.exe"),
        PathBuf::from(r"C:\inetpub\site"),
    );
    reg.app = Some("app:application".into());
    if site.is_ok()
        && let Ok(written) = reg.web_config(Some(&input.xml), path)
    {
        let again = reg
            .web_config(Some(written.as_bytes()), path)
            .expect("enable's output parses");
        assert_eq!(written, again, "enable is not idempotent");
        let read = SiteFastCgi::read(written.as_bytes(), path).expect("enable's output reads");
        let handler = read
            .pyfcgi_handler()
            .expect("enable wrote pyfcgi's handler");
        assert_eq!(handler.script_processor, reg.script_processor());
        let mut s = AppSettings::default();
        s.apply_xml(written.as_bytes(), path)
            .expect("enable's output has readable appSettings");
        let removed = reg
            .remove_from_web_config(written.as_bytes(), path)
            .expect("disable reads enable's output");
        let read = SiteFastCgi::read(removed.as_bytes(), path).expect("disable's output reads");
        assert!(read.pyfcgi_handler().is_none(), "disable left the handler");
    }

    // scriptProcessor round trip (no NUL: Windows command lines cannot hold one).
    if input.root.is_empty()
        || [&input.root]
            .into_iter()
            .chain(&input.app)
            .chain(&input.venv)
            .any(|s| s.contains('\0'))
    {
        return;
    }
    let mut r = Registration::new(
        PathBuf::from(r"C:\pyfcgi\pyfcgi.exe"),
        PathBuf::from(&input.root),
    );
    r.app = input.app.clone().filter(|a| !a.is_empty());
    r.venv = input
        .venv
        .clone()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let sp = r.script_processor();
    if let Some(back) = Registration::from_script_processor(&sp) {
        assert_eq!(back.app_root, r.app_root, "{sp}");
        assert_eq!(back.app, r.app, "{sp}");
        assert_eq!(back.venv, r.venv, "{sp}");
    } else if !input.root.contains('|') {
        panic!("scriptProcessor {sp:?} does not read back");
    }
});
