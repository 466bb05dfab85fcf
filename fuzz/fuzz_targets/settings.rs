//! `serve` settings parsing (src/settings.rs, compiled in as it is): the value parsers the
//! command line and pyfcgi.toml share, `pyfcgi.toml` into flag pairs, and flag lookup in an
//! argument list. Never panics; a parsed size prints back to the same size; every TOML key
//! becomes a flag name without '_'; a flag found by `flag_value` is one
//! `flag_value_present` sees.
#![no_main]

#[path = "../../src/settings.rs"]
#[allow(dead_code)]
mod settings;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            if let Ok(n) = settings::parse_size(&text) {
                assert_eq!(settings::parse_size(&n.to_string()), Ok(n));
            }
            let _ = settings::parse_mode(&text).map(|m| assert!(m <= 0o7777));
            let _ = settings::parse_workers(&text)
                .map(|n| assert!((1..=1024).contains(&n) || text.eq_ignore_ascii_case("auto")));
            if let Ok((k, _)) = settings::parse_env_pair(&text) {
                assert!(!k.is_empty());
            }
            if let Ok(p) = settings::parse_script_name(&text) {
                assert!(p.is_empty() || (p.starts_with('/') && !p.ends_with('/')));
            }
        }
        1 | 2 => match settings::toml_pairs(&text) {
            Ok(pairs) => {
                for (k, _) in pairs {
                    assert!(!k.contains('_'), "{k}");
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        _ => {
            let args: Vec<String> = text.split('\n').map(str::to_owned).collect();
            let name = args.first().cloned().unwrap_or_default();
            if settings::flag_value(&args[1..], &name).is_some() {
                assert!(settings::flag_value_present(&args[1..], &name));
            }
        }
    }
});
