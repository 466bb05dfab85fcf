//! The resolver end to end: precedence, origins, messages, unknown keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyfcgi_iis::webconfig::AppSettings;

use crate::{Arg, Inputs, Origin, SettingError, Settings, WebConfigInput, resolve, resolve_from};

fn arg(name: &str, value: &str) -> Arg {
    Arg {
        name: name.into(),
        value: value.into(),
        flag: format!("--{name}"),
    }
}

fn web(xml: &str, file: &str) -> WebConfigInput {
    let mut s = AppSettings::default();
    s.apply_xml(
        format!("<configuration><appSettings>{xml}</appSettings></configuration>").as_bytes(),
        Path::new(file),
    )
    .unwrap();
    WebConfigInput::Read(s)
}

#[allow(clippy::unnecessary_wraps)] // resolve_from takes exactly this
fn toml(text: &str) -> Option<Result<(PathBuf, String), SettingError>> {
    Some(Ok((PathBuf::from("/srv/pyfcgi.toml"), text.to_owned())))
}

#[test]
fn every_default_parses() {
    let r = resolve_from(&Inputs::default(), None, None);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = r.settings;
    assert_eq!(s.max_body_size, 1 << 30);
    assert_eq!(s.graceful_timeout, Duration::from_secs(30));
    assert_eq!(s.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(s.request_timeout, None);
    assert_eq!(s.socket_mode, 0o660);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.crash_limit, 5);
    assert_eq!(s.max_params_bytes, 1 << 20);
    assert!(s.threads.is_none() && s.app.is_none());
    assert_eq!(Settings::defaults().io_threads, 1);
}

#[test]
fn precedence_is_flag_then_env_then_web_config_then_toml() {
    let inputs = Inputs {
        args: vec![arg("threads", "2")],
        env: vec![
            ("PYFCGI_THREADS".into(), "3".into()),
            ("PYFCGI_MAX_CONNS".into(), "7".into()),
        ],
        ..Inputs::default()
    };
    let r = resolve_from(
        &inputs,
        toml("threads = 5\nmax_conns = 9\nmax-requests = 11\nio_threads = 3\n"),
        Some(web(
            r#"<add key="PYFCGI_THREADS" value="4"/><add key="PYFCGI_MAX_CONNS" value="8"/><add key="PYFCGI_MAX_REQUESTS" value="12"/>"#,
            "C:\\site\\web.config",
        )),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.settings.threads, Some(2));
    assert_eq!(r.settings.max_conns, 7);
    assert_eq!(r.settings.max_requests, 12);
    assert_eq!(r.settings.io_threads, 3);
    assert_eq!(r.origin("threads"), Some(&Origin::Flag("--threads".into())));
    assert_eq!(
        r.origin("max-conns"),
        Some(&Origin::Env("PYFCGI_MAX_CONNS".into()))
    );
    assert_eq!(
        r.origin("io-threads"),
        Some(&Origin::Toml {
            file: "/srv/pyfcgi.toml".into(),
            line: 4,
            key: "io_threads".into()
        })
    );
    assert_eq!(r.origin("max-body-size"), Some(&Origin::Default));
}

#[test]
fn a_later_flag_replaces_an_earlier_one() {
    let inputs = Inputs {
        args: vec![arg("threads", "2"), arg("threads", "6")],
        ..Inputs::default()
    };
    assert_eq!(resolve_from(&inputs, None, None).settings.threads, Some(6));
}

#[test]
fn a_bad_web_config_value_names_the_file_the_key_the_value_and_the_range() {
    let r = resolve_from(
        &Inputs::default(),
        None,
        Some(web(
            r#"<add key="PYFCGI_THREADS" value="four"/>"#,
            r"C:\inetpub\site\web.config",
        )),
    );
    assert_eq!(
        r.error_report(),
        r#"web.config C:\inetpub\site\web.config: PYFCGI_THREADS = "four": expected a whole number from 1 to 1024"#
    );
    // The rest still resolves, to report the error with.
    assert!(r.settings.threads.is_none());
}

#[test]
fn a_bad_toml_value_names_the_file_line_and_key() {
    let r = resolve_from(
        &Inputs::default(),
        toml("# comment\n\nworkers = \"two\"\n"),
        None,
    );
    assert_eq!(
        r.error_report(),
        r#"pyfcgi.toml /srv/pyfcgi.toml line 3: workers = "two": expected a whole number from 1 to 1024, or auto"#
    );
    let r = resolve_from(&Inputs::default(), toml("threads = [1, 2]\n"), None);
    assert!(
        r.error_report().contains("a single value, not a list"),
        "{}",
        r.error_report()
    );
    let r = resolve_from(&Inputs::default(), toml("threads = \n"), None);
    assert!(
        r.error_report()
            .starts_with("pyfcgi.toml /srv/pyfcgi.toml: not valid TOML"),
        "{}",
        r.error_report()
    );
}

#[test]
fn infinite_nan_and_huge_numbers_are_errors_not_panics() {
    for v in ["inf", "NaN", "-1", "1e308", "99999999999"] {
        let inputs = Inputs {
            args: vec![
                arg("request-timeout", v),
                arg("graceful-timeout", v),
                arg("worker-lifetime", v),
            ],
            ..Inputs::default()
        };
        let r = resolve_from(&inputs, None, None);
        assert_eq!(r.errors.len(), 3, "{v}: {:?}", r.errors);
        assert!(
            r.error_report().contains(&format!(
                "--request-timeout = \"{v}\": expected a number of seconds"
            )),
            "{}",
            r.error_report()
        );
    }
}

#[test]
fn unknown_keys_are_warnings_with_the_closest_key() {
    let inputs = Inputs {
        env: vec![
            ("PYFCGI_THREAD".into(), "4".into()),
            ("PYFCGI_LOG".into(), "debug".into()),
            ("PATH".into(), "/bin".into()),
        ],
        ..Inputs::default()
    };
    let r = resolve_from(
        &inputs,
        toml("worker = 2\nhelp = true\n"),
        Some(web(
            r#"<add key="PYFCGI_MAX_BODYSIZE" value="1m"/><add key="DJANGO_SETTINGS_MODULE" value="s"/>"#,
            "web.config",
        )),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let lines: Vec<String> = r.unknown.iter().map(ToString::to_string).collect();
    assert!(lines.contains(&"environment variable PYFCGI_THREAD: unknown pyfcgi setting, ignored (did you mean PYFCGI_THREADS?)".to_owned()), "{lines:?}");
    assert!(lines.contains(&"pyfcgi.toml /srv/pyfcgi.toml line 1: worker: unknown pyfcgi setting, ignored (did you mean workers?)".to_owned()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pyfcgi.toml /srv/pyfcgi.toml line 2: help: unknown")),
        "{lines:?}"
    );
    assert!(lines.contains(&"web.config web.config: PYFCGI_MAX_BODYSIZE: unknown pyfcgi setting, ignored (did you mean PYFCGI_MAX_BODY_SIZE?)".to_owned()), "{lines:?}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        r.settings.app_env,
        vec![("DJANGO_SETTINGS_MODULE".into(), "s".into())]
    );
}

#[test]
fn pyfcgi_keys_win_over_wfastcgi_keys_whatever_the_order() {
    for xml in [
        r#"<add key="PYFCGI_APP" value="a:app"/><add key="WSGI_HANDLER" value="b.app"/>"#,
        r#"<add key="WSGI_HANDLER" value="b.app"/><add key="PYFCGI_APP" value="a:app"/>"#,
    ] {
        let r = resolve_from(&Inputs::default(), None, Some(web(xml, "web.config")));
        assert_eq!(r.settings.app.as_deref(), Some("a:app"), "{xml}");
    }
}

#[test]
fn the_ptvs_virtualenv_proxy_is_read_as_the_handler_and_venv_it_names() {
    for proxy in [
        "ptvs_virtualenv_proxy.get_venv_handler()",
        "ptvs_virtualenv_proxy.get_virtualenv_handler()",
    ] {
        let xml = format!(
            r#"<add key="WSGI_HANDLER" value="{proxy}"/><add key="WSGI_ALT_VIRTUALENV_HANDLER" value="mysite.wsgi.application"/><add key="WSGI_ALT_VIRTUALENV_ACTIVATE_THIS" value="D:\home\site\env\Scripts\python.exe"/>"#
        );
        let r = resolve_from(&Inputs::default(), None, Some(web(&xml, "web.config")));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            r.settings.app.as_deref(),
            Some("mysite.wsgi.application"),
            "{proxy}"
        );
        assert_eq!(
            r.settings.python.venv,
            Some(PathBuf::from(r"D:\home\site\env\Scripts\python.exe"))
        );
        assert_eq!(
            r.origin("app").map(ToString::to_string).as_deref(),
            Some("web.config web.config: WSGI_ALT_VIRTUALENV_HANDLER")
        );
    }
    // A PYFCGI_* key in the same file still wins; without the alternative handler the value
    // stays (and fails to load with its own message).
    let r = resolve_from(
        &Inputs::default(),
        None,
        Some(web(
            r#"<add key="WSGI_HANDLER" value="ptvs_virtualenv_proxy.get_venv_handler()"/><add key="WSGI_ALT_VIRTUALENV_HANDLER" value="a.app"/><add key="PYFCGI_APP" value="b:app"/>"#,
            "web.config",
        )),
    );
    assert_eq!(r.settings.app.as_deref(), Some("b:app"));
    let r = resolve_from(
        &Inputs::default(),
        None,
        Some(web(
            r#"<add key="WSGI_HANDLER" value="ptvs_virtualenv_proxy.get_venv_handler()"/>"#,
            "web.config",
        )),
    );
    assert_eq!(
        r.settings.app.as_deref(),
        Some("ptvs_virtualenv_proxy.get_venv_handler()")
    );
}

#[test]
fn web_config_pythonpath_expands_variables_from_the_given_environment() {
    let inputs = Inputs {
        env: vec![("SITE".into(), "/srv/site".into())],
        ..Inputs::default()
    };
    let r = resolve_from(
        &inputs,
        None,
        Some(web(
            r#"<add key="PYTHONPATH" value="%SITE%\lib; ;/x"/>"#,
            "web.config",
        )),
    );
    assert_eq!(
        r.settings.python.pythonpath,
        vec![PathBuf::from("/srv/site\\lib"), PathBuf::from("/x")]
    );
}

#[test]
fn app_and_builtin_conflict_and_switches_take_words() {
    let inputs = Inputs {
        args: vec![
            arg("app", "x:app"),
            arg("builtin", "hello"),
            arg("reload", "maybe"),
        ],
        ..Inputs::default()
    };
    let r = resolve_from(&inputs, None, None);
    let report = r.error_report();
    assert!(
        report.contains("--reload = \"maybe\": expected true or false"),
        "{report}"
    );
    assert!(
        report.contains("--app and --builtin cannot both be given"),
        "{report}"
    );
}

#[test]
fn files_are_found_and_read_through_the_app_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.config"),
        r#"<configuration><appSettings><add key="WSGI_HANDLER" value="app.app"/><add key="PYFCGI_THREADS" value="four"/></appSettings></configuration>"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("pyfcgi.toml"), "max-conns = 3\n").unwrap();
    let inputs = Inputs {
        args: vec![arg("app-root", dir.path().to_str().unwrap())],
        ..Inputs::default()
    };
    let r = resolve(&inputs);
    assert_eq!(r.settings.app.as_deref(), Some("app.app"));
    assert_eq!(r.settings.max_conns, 3);
    assert_eq!(r.files.len(), 2, "{:?}", r.files);
    assert_eq!(
        r.error_report(),
        format!(
            "web.config {}: PYFCGI_THREADS = \"four\": expected a whole number from 1 to 1024",
            dir.path().join("web.config").display()
        )
    );
    std::fs::write(
        dir.path().join("web.config"),
        "<configuration><appSettings>",
    )
    .unwrap();
    let r = resolve(&inputs);
    assert!(
        r.error_report().starts_with(&format!(
            "web.config {}: not valid XML",
            dir.path().join("web.config").display()
        )),
        "{}",
        r.error_report()
    );
    assert_eq!(r.errors[0].class(), "an unreadable web.config");
}

#[test]
fn log_format_comes_from_every_source_and_sets_the_access_log_default() {
    use crate::{AccessFormat, LogFormat};
    assert_eq!(Settings::defaults().log_format, LogFormat::Text);
    assert_eq!(
        Settings::defaults().access_format(),
        AccessFormat::default()
    );
    let env = Inputs {
        env: vec![("PYFCGI_LOG_FORMAT".into(), "JSON".into())],
        ..Inputs::default()
    };
    let s = resolve_from(&env, None, None).settings;
    assert_eq!(s.log_format, LogFormat::Json);
    assert!(s.access_format().is_json());
    let r = resolve_from(
        &Inputs::default(),
        toml("access-log-format = \"combined\"\n"),
        Some(web(
            r#"<add key="PYFCGI_LOG_FORMAT" value="json"/>"#,
            "C:\\site\\web.config",
        )),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.settings.log_format, LogFormat::Json);
    // An explicit access-log format wins over the JSON default.
    assert_eq!(r.settings.access_format(), AccessFormat::combined());
}

#[test]
fn a_bad_log_or_access_log_format_names_its_source() {
    let inputs = Inputs {
        args: vec![arg("access-log-format", "{status} {nope}")],
        env: vec![("PYFCGI_LOG_FORMAT".into(), "yaml".into())],
        ..Inputs::default()
    };
    let r = resolve_from(&inputs, None, None);
    let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("--access-log-format = \"{status} {nope}\": expected common, combined, json, or a line of placeholders")
            && e.contains("{nope} is not one")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e
            == "environment variable PYFCGI_LOG_FORMAT = \"yaml\": expected one of text, json"),
        "{errors:?}"
    );
}
