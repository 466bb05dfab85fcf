//! The whole settings resolver (`pyfcgi_settings::resolve_from`): command-line values, the
//! environment, a pyfcgi.toml and a web.config, all arbitrary, into settings or errors.
//! Never panics; every error names where its value came from; without errors, every number
//! is inside its documented range; resolving twice gives the same answer.
//!
//! Input: four sections separated by NUL bytes: command-line values (`name=value` lines),
//! environment (`NAME=VALUE` lines), pyfcgi.toml text, web.config XML.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use pyfcgi_iis::webconfig::AppSettings;
use pyfcgi_settings::{Arg, Inputs, Origin, SettingError, WebConfigInput, resolve_from};

fn pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (args, env, toml, xml) = (next(), next(), next(), next());
    let inputs = Inputs {
        args: pairs(&args)
            .into_iter()
            .map(|(name, value)| Arg {
                flag: format!("--{name}"),
                name,
                value,
            })
            .collect(),
        env: pairs(&env),
        cwd: None,
        first_request_root: None,
    };
    let toml_in = (!toml.is_empty()).then(|| Ok((PathBuf::from("/t/pyfcgi.toml"), toml.clone())));
    let web_file = Path::new("C:\\site\\web.config");
    let web = (!xml.is_empty()).then(|| {
        let mut s = AppSettings::default();
        match s.apply_xml(xml.as_bytes(), web_file) {
            Ok(()) => WebConfigInput::Read(s),
            Err(e) => WebConfigInput::Failed(SettingError::Conflict(e.to_string())),
        }
    });
    let r = resolve_from(&inputs, toml_in.clone(), web.clone());
    for e in &r.errors {
        let text = e.to_string();
        assert!(!text.is_empty());
        if let SettingError::Invalid { origin, .. } = e {
            assert!(text.starts_with(&origin.to_string()), "{text}");
            assert_ne!(*origin, Origin::Default, "a default failed to parse: {text}");
        }
    }
    for u in &r.unknown {
        let _ = u.to_string();
    }
    if r.errors.is_empty() {
        let s = &r.settings;
        assert!(s.threads.is_none_or(|t| (1..=1024).contains(&t)));
        assert!(s.workers.is_none_or(|w| (1..=1024).contains(&w)));
        assert!((1..=256).contains(&s.io_threads));
        assert!(s.max_conns >= 1 && s.max_requests_per_conn >= 1 && s.crash_limit >= 1);
        assert!(s.socket_mode <= 0o7777);
        assert!(s.graceful_timeout.as_secs_f64() <= pyfcgi_settings::value::MAX_SECONDS);
        assert!(s.request_timeout.is_none_or(|d| d.as_secs_f64() > 0.0));
        assert!(!(s.app.is_some() && s.builtin.is_some()));
    }
    let again = resolve_from(&inputs, toml_in, web);
    assert_eq!(r.errors, again.errors);
    assert_eq!(r.effective, again.effective);
});
