//! `pyfcgi iis enable|disable|webconfig` and `pyfcgi doctor`, driven as an admin would.
//!
//! Outside Windows `enable`/`disable` never run appcmd: they print the commands (a dry run).
//! The file half of the job is tested through the hidden `--write-web-config` flag, which
//! writes web.config and the log folder exactly as a real Windows run does and still only
//! prints the appcmd commands; the appcmd half is the printed text, which the snapshots pin
//! and which is split here with the Windows argv rules appcmd uses.

use std::path::Path;
use std::process::Command;

use pyfcgi_iis::register::split_command_line;
use xmltree::Element;

use crate::support::{TempDir, pyfcgi};

const EXE: &str = r"C:\pyfcgi\pyfcgi.exe";

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `pyfcgi ARGS` in `cwd`, without the caller's venv or pyfcgi settings leaking in.
fn run(args: &[&str]) -> Out {
    let out = Command::new(pyfcgi())
        .args(args)
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYFCGI_APP_ROOT")
        .env_remove("PYFCGI_APP")
        .env_remove("PYFCGI_LOG")
        .output()
        .expect("run pyfcgi");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.code,
        Some(0),
        "pyfcgi {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The temp dir's path replaced by a placeholder, so snapshots do not depend on it.
fn normalise(text: &str, dir: &TempDir) -> String {
    let mut text = text.to_owned();
    if let Ok(c) = dir.path().canonicalize() {
        text = text.replace(&c.display().to_string(), "[APP_ROOT]");
    }
    text.replace(&dir.path().display().to_string(), "[APP_ROOT]")
}

/// The XML document inside a dry run's output.
fn xml_in(output: &str) -> &str {
    let start = output.find("<?xml").expect("a web.config in the output");
    let end =
        output.find("</configuration>").expect("end of web.config") + "</configuration>".len();
    &output[start..end]
}

/// The pyfcgi handler's scriptProcessor, read with a real XML parser.
fn script_processor(xml: &str) -> String {
    let root = Element::parse(xml.as_bytes()).expect("well-formed XML");
    assert_eq!(root.name, "configuration");
    let handlers = root
        .get_child("system.webServer")
        .and_then(|w| w.get_child("handlers"))
        .expect("<system.webServer><handlers>");
    let add = handlers
        .children
        .iter()
        .filter_map(|n| n.as_element())
        .find(|e| e.attributes.get("name").map(String::as_str) == Some("pyfcgi"))
        .expect("the pyfcgi handler");
    add.attributes["scriptProcessor"].clone()
}

fn django_site() -> TempDir {
    let dir = TempDir::new("iis-django");
    std::fs::write(dir.path().join("manage.py"), "import django\n").unwrap();
    dir
}

fn tiny_wsgi_site() -> TempDir {
    let dir = TempDir::new("iis-wsgi");
    std::fs::write(
        dir.path().join("hello.py"),
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'hi']\n",
    )
    .unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn enable_dry_run_prints_appcmd_and_a_django_web_config() {
    let dir = django_site();
    let root = path_str(dir.path());
    let out = ok(&[
        "iis",
        "enable",
        "--dry-run",
        "--exe",
        EXE,
        "--app-root",
        root,
        "--app",
        "mysite.wsgi:application",
        "--flavour",
        "django",
    ]);
    insta::assert_snapshot!("enable_dry_run_django", normalise(&out, &dir));
    let sp = script_processor(xml_in(&out));
    assert_eq!(
        sp,
        format!("{EXE}|serve --app-root {root} --app mysite.wsgi:application")
    );
    assert!(
        out.contains(&format!("#   {sp}\n")),
        "the scriptProcessor is shown:\n{out}"
    );
    assert!(
        !dir.path().join("web.config").exists(),
        "a dry run writes nothing"
    );
    assert!(
        !dir.path().join("logs").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn enable_without_dry_run_off_windows_only_prints() {
    let dir = django_site();
    let out = ok(&[
        "iis",
        "enable",
        "--exe",
        EXE,
        "--app-root",
        path_str(dir.path()),
        "--app",
        "mysite.wsgi:application",
    ]);
    if cfg!(windows) {
        return;
    }
    assert!(
        out.starts_with("# Dry run: `pyfcgi iis enable` only changes IIS on Windows"),
        "{out}"
    );
    assert!(
        out.contains("# Flavour: django (detected: manage.py is in the app folder)"),
        "{out}"
    );
    assert!(!dir.path().join("web.config").exists());
}

#[test]
fn flask_is_detected_from_the_app_files() {
    let dir = TempDir::new("iis-flask");
    std::fs::write(
        dir.path().join("app.py"),
        "from flask import Flask\napp = Flask(__name__)\n",
    )
    .unwrap();
    let out = ok(&[
        "iis",
        "enable",
        "--dry-run",
        "--exe",
        EXE,
        "--app-root",
        path_str(dir.path()),
        "--app",
        "app:app",
    ]);
    assert!(
        out.contains("# Flavour: flask (detected: app.py uses Flask)"),
        "{out}"
    );
    assert!(out.contains(r#"<location path="static">"#), "{out}");
    assert!(!out.contains(r#"<location path="media">"#), "{out}");
}

#[test]
fn app_root_with_spaces_is_quoted_so_appcmd_reads_it_back() {
    let out = ok(&[
        "iis",
        "enable",
        "--dry-run",
        "--exe",
        EXE,
        "--app-root",
        r"C:\inetpub\My Flask Site",
        "--app",
        "app:app",
        "--flavour",
        "flask",
        "--streaming",
        "--signal-before-terminate",
        "60",
        "--instance-max-requests",
        "500",
    ]);
    insta::assert_snapshot!("enable_dry_run_windows_path_with_spaces", out);
    let add = out
        .lines()
        .find(|l| l.contains("\"/+["))
        .expect("the appcmd add command");
    let argv = split_command_line(add);
    assert_eq!(argv[0], r"%windir%\system32\inetsrv\appcmd.exe");
    assert_eq!(
        argv[4],
        r#"/+[fullPath='C:\pyfcgi\pyfcgi.exe',arguments='serve --app-root "C:\inetpub\My Flask Site" --app app:app',signalBeforeTerminateSeconds='60',instanceMaxRequests='500',activityTimeout='600',requestTimeout='600',protocol='NamedPipe']"#
    );
    let sp = script_processor(xml_in(&out));
    assert_eq!(
        sp, r#"C:\pyfcgi\pyfcgi.exe|serve --app-root "C:\inetpub\My Flask Site" --app app:app"#,
        "scriptProcessor must equal fullPath|arguments"
    );
}

#[test]
fn webconfig_prints_only_the_xml() {
    let out = ok(&[
        "iis",
        "webconfig",
        "--exe",
        EXE,
        "--app-root",
        r"C:\inetpub\flaskapp",
        "--app",
        "app:app",
        "--flavour",
        "flask",
    ]);
    assert!(out.starts_with("<?xml"), "{out}");
    assert_eq!(
        xml_in(&out).len() + 1,
        out.len(),
        "nothing but the document and a newline"
    );
    insta::assert_snapshot!("webconfig_flask", out);
    // What the binary prints is what the library's reader understands.
    let mut settings = pyfcgi_iis::webconfig::AppSettings::default();
    settings
        .apply_xml(out.as_bytes(), Path::new("web.config"))
        .unwrap();
    assert_eq!(settings.get("WSGI_HANDLER"), Some("app:app"));
    assert_eq!(
        settings.get("WSGI_LOG"),
        Some(r"C:\inetpub\flaskapp\logs\pyfcgi.log")
    );
}

#[test]
fn bad_selectors_are_rejected_with_a_reason() {
    let out = run(&["iis", "enable", "--dry-run", "--flavour", "rails"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("choose generic, flask or django"),
        "{}",
        out.stderr
    );
    let out = run(&[
        "iis",
        "enable",
        "--dry-run",
        "--signal-before-terminate",
        "61",
    ]);
    assert_eq!(out.code, Some(2), "IIS allows 0-60: {}", out.stderr);
}

#[test]
fn enable_updates_an_existing_web_config_idempotently_with_one_backup() {
    let dir = django_site();
    let root = path_str(dir.path());
    let config = dir.path().join("web.config");
    let bak = dir.path().join("web.config.bak");
    let original = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <!-- the admin's own settings -->
  <appSettings>
    <add key="DJANGO_SETTINGS_MODULE" value="mysite.settings" />
  </appSettings>
  <system.webServer>
    <httpErrors errorMode="Detailed" />
  </system.webServer>
</configuration>
"#;
    std::fs::write(&config, original).unwrap();
    let enable = [
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        root,
        "--app",
        "mysite.wsgi:application",
    ];
    let first = ok(&enable);
    assert!(first.contains("(the original is in"), "{first}");
    assert_eq!(
        std::fs::read_to_string(&bak).unwrap(),
        original,
        "the backup is the original"
    );
    assert!(
        dir.path().join("logs").is_dir(),
        "the WSGI_LOG folder is created"
    );
    let once = std::fs::read_to_string(&config).unwrap();
    insta::assert_snapshot!("enable_updated_web_config", normalise(&once, &dir));
    assert!(once.contains("<!-- the admin's own settings -->") && once.contains("httpErrors"));

    let second = ok(&enable);
    assert!(second.contains("is already up to date"), "{second}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        once,
        "enable is idempotent"
    );

    // A changed registration rewrites the file but keeps the first backup.
    ok(&[&enable[..], &["--streaming"]].concat());
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(r#"responseBufferLimit="0""#)
    );
    assert_eq!(
        std::fs::read_to_string(&bak).unwrap(),
        original,
        "the backup is taken once"
    );

    // The dry run of enable on the written file shows it unchanged.
    let dry = ok(&[
        &enable[..1],
        &["enable", "--dry-run", "--streaming"],
        &enable[3..],
    ]
    .concat());
    assert!(dry.contains("3. Leave"), "{dry}");

    // disable removes exactly what enable added.
    let out = ok(&["iis", "disable", "--write-web-config", "--app-root", root]);
    assert!(
        out.contains("come from web.config's scriptProcessor"),
        "{out}"
    );
    let after = std::fs::read_to_string(&config).unwrap();
    let settings_after = pyfcgi_iis::webconfig::load_for_app(dir.path()).unwrap();
    assert_eq!(
        settings_after.iter().collect::<Vec<_>>(),
        [("DJANGO_SETTINGS_MODULE", "mysite.settings")]
    );
    assert!(
        !after.contains("pyfcgi") && !after.contains("WSGI_"),
        "{after}"
    );
    assert!(
        after.contains("<!-- the admin's own settings -->") && after.contains("httpErrors"),
        "{after}"
    );
}

#[test]
fn disable_deletes_a_web_config_that_enable_created() {
    let dir = django_site();
    let root = path_str(dir.path());
    ok(&[
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        root,
        "--app",
        "mysite.wsgi:application",
    ]);
    assert!(
        !dir.path().join("web.config.bak").exists(),
        "nothing to back up"
    );
    let dry = ok(&["iis", "disable", "--dry-run", "--app-root", root]);
    insta::assert_snapshot!("disable_dry_run", normalise(&dry, &dir));
    assert!(
        dir.path().join("web.config").exists(),
        "a dry run writes nothing"
    );
    let out = ok(&["iis", "disable", "--write-web-config", "--app-root", root]);
    assert!(out.contains("only pyfcgi's settings were in it"), "{out}");
    assert!(!dir.path().join("web.config").exists());
    assert!(dir.path().join("logs").is_dir(), "logs are kept");
}

/// Writes the web.config `enable` would, for the tiny WSGI app.
fn enabled_wsgi_site() -> TempDir {
    let dir = tiny_wsgi_site();
    ok(&[
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        path_str(dir.path()),
        "--app",
        "hello:application",
    ]);
    dir
}

fn doctor(dir: &TempDir, extra: &[&str]) -> Out {
    let mut args = vec!["doctor", "--app-root", path_str(dir.path())];
    if !extra.contains(&"--exe") {
        args.extend(["--exe", EXE]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn doctor_passes_a_site_enable_wrote() {
    let dir = enabled_wsgi_site();
    let out = doctor(&dir, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let root = path_str(dir.path());
    for line in [
        format!("PASS  web.config: {root}/web.config parses"),
        "PASS  application: hello:application (from the pyfcgi handler's --app)".to_owned(),
        "PASS  handler mapping: pyfcgi's handler runs this pyfcgi.exe for this app folder"
            .to_owned(),
        format!("PASS  log: {root}/logs/pyfcgi.log (from WSGI_LOG); its folder is writable"),
        "PASS  app_offline.htm: absent (the site is online)".to_owned(),
    ] {
        assert!(
            out.stdout.contains(&line),
            "missing {line:?} in:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains(&format!(
            "        WSGI_HANDLER = hello:application   [{root}/web.config]"
        )),
        "{}",
        out.stdout
    );
    #[cfg(feature = "python")]
    assert!(
        out.stdout
            .contains("PASS  import: application hello:application loaded"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\n0 FAIL, 0 WARN,"), "{}", out.stdout);
}

#[cfg(feature = "python")]
#[test]
fn doctor_warns_about_a_file_named_like_a_standard_module() {
    let dir = enabled_wsgi_site();
    std::fs::write(dir.path().join("test.py"), "X = 1\n").unwrap();
    let out = doctor(&dir, &[]);
    assert_eq!(
        out.code,
        Some(0),
        "a warning is not a failure:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("WARN  import: application hello:application loaded"),
        "{}",
        out.stdout
    );
    let mine = format!("{}/test.py", path_str(dir.path()));
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&mine))
        .unwrap_or_else(|| panic!("no line names {mine}:\n{}", out.stdout));
    assert!(
        line.contains("the standard library module `test` (") && line.contains("/test"),
        "{line}"
    );
}

#[test]
fn doctor_reports_where_web_config_is_broken() {
    let dir = tiny_wsgi_site();
    std::fs::write(
        dir.path().join("web.config"),
        "<configuration>\n  <appSettings>\n    <add key=\"WSGI_HANDLER\" value=\"hello:application\">\n  </appSettings>\n</configuration>\n",
    )
    .unwrap();
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  web.config:"))
        .unwrap_or_else(|| panic!("no web.config FAIL in:\n{}", out.stdout));
    assert!(
        line.contains("is not well-formed XML at line 4, column"),
        "{line}"
    );
    assert!(
        out.stdout.contains("500.19"),
        "the fix names IIS's symptom:\n{}",
        out.stdout
    );
}

#[test]
fn doctor_shows_both_script_processors_when_they_differ() {
    let dir = enabled_wsgi_site();
    let root = path_str(dir.path());
    let out = doctor(&dir, &["--no-import", "--exe", r"D:\tools\pyfcgi.exe"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let expected = format!(
        "FAIL  handler mapping: pyfcgi's handler runs another command than this pyfcgi expects (pyfcgi.exe, app folder, --app or --venv differ)\n      \
         web.config: {EXE}|serve --app-root {root} --app hello:application\n      \
         expected:   D:\\tools\\pyfcgi.exe|serve --app-root {root} --app hello:application\n"
    );
    assert!(out.stdout.contains(&expected), "{}", out.stdout);
    assert!(
        out.stdout.contains("fix: run `pyfcgi iis enable"),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_warns_that_app_offline_takes_the_site_down() {
    let dir = enabled_wsgi_site();
    std::fs::write(dir.path().join("app_offline.htm"), "<h1>Back soon</h1>").unwrap();
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(
        out.code,
        Some(0),
        "a WARN is not a failure:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("WARN  app_offline.htm:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("the site is offline"), "{}", out.stdout);
    assert!(out.stdout.contains("fix: delete"), "{}", out.stdout);
}

#[test]
fn doctor_refuses_store_python_venvs_and_missing_settings() {
    let dir = tiny_wsgi_site();
    let venv = dir.path().join(".venv");
    std::fs::create_dir_all(&venv).unwrap();
    std::fs::write(
        venv.join("pyvenv.cfg"),
        "home = C:\\Users\\me\\AppData\\Local\\Microsoft\\WindowsApps\\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0\nversion = 3.12.1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("web.config"), "<configuration><appSettings><add key=\"PYTHONPATH\" value=\"%NO_SUCH_VAR_PYFCGI%\\lib;missing\"/></appSettings></configuration>").unwrap();
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(out.code, Some(1));
    let s = &out.stdout;
    assert!(
        s.contains("FAIL  application: no WSGI_HANDLER appSetting and no --app"),
        "{s}"
    );
    assert!(
        s.contains("FAIL  handler mapping: no handler named \"pyfcgi\""),
        "{s}"
    );
    assert!(s.contains("Microsoft Store Python"), "{s}");
    assert!(s.contains("WARN  PYTHONPATH:"), "{s}");
    assert!(
        s.contains("%NO_SUCH_VAR_PYFCGI%\\lib: a %VARIABLE% here is not set"),
        "{s}"
    );
    assert!(s.contains("missing: does not exist"), "{s}");
    assert!(s.contains("WARN  log: no WSGI_LOG appSetting"), "{s}");
}

#[test]
fn doctor_checks_the_registration_in_application_host_config() {
    let dir = enabled_wsgi_site();
    let root = path_str(dir.path());
    let apphost = dir.path().join("applicationHost.config");
    std::fs::write(
        &apphost,
        format!(
            "<configuration><system.webServer><fastCgi>\n<application fullPath=\"{EXE}\" arguments=\"serve --app-root {root}\" />\n</fastCgi></system.webServer></configuration>"
        ),
    )
    .unwrap();
    let host = path_str(&apphost);
    let out = doctor(&dir, &["--no-import", "--applicationhost", host]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "FAIL  FastCGI registration (applicationHost.config): no <fastCgi><application> matches"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("registered: {EXE}|serve --app-root {root}\n")),
        "near misses are shown:\n{}",
        out.stdout
    );
    std::fs::write(
        &apphost,
        format!(
            "<configuration><system.webServer><fastCgi>\n<application fullPath=\"{EXE}\" arguments=\"serve --app-root {root} --app hello:application\" signalBeforeTerminateSeconds=\"30\" />\n</fastCgi></system.webServer></configuration>"
        ),
    )
    .unwrap();
    let out = doctor(&dir, &["--no-import", "--applicationhost", host]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("PASS  FastCGI registration (applicationHost.config): registered"),
        "{}",
        out.stdout
    );
}

/// `configs/iis/` holds what the binary writes for two sample sites (configs/iis/README.md).
#[test]
fn sample_configs_match_the_binary() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/iis");
    let sites = [
        ("flask", r"C:\inetpub\flaskapp", "app:app"),
        ("django", r"C:\inetpub\mysite", "mysite.wsgi:application"),
    ];
    let mut applications = Vec::new();
    for (flavour, root, app) in sites {
        let venv = format!(r"{root}\.venv");
        let args = [
            "--exe",
            EXE,
            "--app-root",
            root,
            "--app",
            app,
            "--venv",
            &venv,
            "--flavour",
            flavour,
        ];
        let web_config = ok(&[&["iis", "webconfig"][..], &args].concat());
        let sample = std::fs::read_to_string(configs.join(flavour).join("web.config")).unwrap();
        assert_eq!(
            sample, web_config,
            "configs/iis/{flavour}/web.config is stale; regenerate it (configs/iis/README.md)"
        );
        let dry = ok(&[&["iis", "enable", "--dry-run"][..], &args].concat());
        let line = dry.lines().find_map(|l| {
            l.strip_prefix("# ")
                .filter(|l| l.trim_start().starts_with("<application "))
        });
        applications.push(line.expect("the <application> line").to_owned());
    }
    // The sample lists the Django site first.
    applications.reverse();
    let expected = format!("<fastCgi>\n{}\n</fastCgi>\n", applications.join("\n"));
    let sample = std::fs::read_to_string(configs.join("applicationHost-fastCgi.xml")).unwrap();
    assert_eq!(
        sample, expected,
        "configs/iis/applicationHost-fastCgi.xml is stale"
    );
}

const WFASTCGI_SP: &str = r"C:\Python39\python.exe|C:\Python39\Lib\site-packages\wfastcgi.py";
const WFASTCGI_ADD: &str = r#"<add name="Python FastCGI" path="*" verb="*" modules="FastCgiModule" scriptProcessor="C:\Python39\python.exe|C:\Python39\Lib\site-packages\wfastcgi.py" resourceType="Unspecified" requireAccess="Script" />"#;

/// The names of a web.config's `<handlers><add>` entries, in order.
fn handler_names(dir: &Path) -> Vec<String> {
    let xml = std::fs::read(dir.join("web.config")).unwrap();
    let root = Element::parse(xml.as_slice()).expect("well-formed XML");
    root.get_child("system.webServer")
        .and_then(|w| w.get_child("handlers"))
        .map(|h| {
            h.children
                .iter()
                .filter_map(|n| n.as_element())
                .filter(|e| e.name == "add")
                .map(|e| e.attributes["name"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// An applicationHost.config with two IIS applications: the site and a `legacy` one.
fn application_host(dir: &Path, site: &Path, legacy: &Path) -> std::path::PathBuf {
    let path = dir.join("applicationHost.config");
    std::fs::write(
        &path,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <system.applicationHost>
    <sites>
      <site name="Default Web Site" id="1">
        <application path="/" applicationPool="DefaultAppPool">
          <virtualDirectory path="/" physicalPath="{}" />
        </application>
        <application path="/legacy" applicationPool="legacy">
          <virtualDirectory path="/" physicalPath="{}" />
        </application>
      </site>
    </sites>
  </system.applicationHost>
  <system.webServer>
    <fastCgi>
      <application fullPath="C:\Python39\python.exe" arguments="C:\Python39\Lib\site-packages\wfastcgi.py" />
    </fastCgi>
  </system.webServer>
</configuration>
"#,
            site.display(),
            legacy.display()
        ),
    )
    .unwrap();
    path
}

/// A wfastcgi site: `enable` keeps its settings and puts pyfcgi's handler first; doctor says
/// what is wrong with each handler order; `--replace-wfastcgi` takes wfastcgi out, and
/// unregisters its FastCGI application only when no other site uses it.
#[test]
fn a_wfastcgi_site_is_migrated_and_the_old_handler_flagged() {
    let dir = tiny_wsgi_site();
    let root = path_str(dir.path());
    std::fs::create_dir_all(dir.path().join("oldlogs")).unwrap();
    std::fs::create_dir_all(dir.path().join("lib")).unwrap();
    let wfastcgi = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <system.webServer>
    <handlers>
      {WFASTCGI_ADD}
    </handlers>
  </system.webServer>
  <appSettings>
    <add key="WSGI_HANDLER" value="hello.application" />
    <add key="PYTHONPATH" value="{root};{root}/lib" />
    <add key="WSGI_LOG" value="{root}/oldlogs/wfastcgi.log" />
  </appSettings>
</configuration>
"#
    );
    std::fs::write(dir.path().join("web.config"), &wfastcgi).unwrap();
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains(r#""Python FastCGI" still runs wfastcgi"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "fix: run `pyfcgi iis enable --app-root {root} --replace-wfastcgi` as Administrator"
        )),
        "{}",
        out.stdout
    );

    let out = ok(&[
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        root,
    ]);
    assert!(
        out.contains(r#"warning: wfastcgi's handler "Python FastCGI" (path "*") stays in web.config, after pyfcgi's: pyfcgi answers"#),
        "{out}"
    );
    assert!(out.contains("--replace-wfastcgi"), "{out}");
    assert_eq!(handler_names(dir.path()), ["pyfcgi", "Python FastCGI"]);
    assert!(
        !dir.path().join("logs").exists(),
        "the site's own WSGI_LOG folder is used"
    );
    let settings = pyfcgi_iis::webconfig::load_for_app(dir.path()).unwrap();
    assert_eq!(
        settings.get("WSGI_HANDLER"),
        Some("hello.application"),
        "kept without --app"
    );
    assert_eq!(
        settings.get("WSGI_LOG"),
        Some(format!("{root}/oldlogs/wfastcgi.log").as_str())
    );
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(
        out.code,
        Some(0),
        "a warning, not a failure: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "PASS  application: hello.application (from web.config {root}/web.config: WSGI_HANDLER)"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "WARN  handler mapping: pyfcgi's handler runs this pyfcgi.exe for this app folder"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            r#"wfastcgi's handler "Python FastCGI" is still in web.config, after pyfcgi's"#
        ),
        "{}",
        out.stdout
    );

    // A file where wfastcgi's handler comes first (as enable used to write it): IIS runs
    // wfastcgi, and doctor says so.
    let config = std::fs::read_to_string(dir.path().join("web.config")).unwrap();
    let pyfcgi_line = config
        .lines()
        .find(|l| l.contains(r#"name="pyfcgi""#))
        .unwrap()
        .to_owned();
    let wf_line = config
        .lines()
        .find(|l| l.contains("wfastcgi.py"))
        .unwrap()
        .to_owned();
    let swapped = config
        .replace(&pyfcgi_line, "@@PYFCGI@@")
        .replace(&wf_line, &pyfcgi_line)
        .replace("@@PYFCGI@@", &wf_line);
    std::fs::write(dir.path().join("web.config"), swapped).unwrap();
    assert_eq!(handler_names(dir.path()), ["Python FastCGI", "pyfcgi"]);
    let out = doctor(&dir, &["--no-import"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains(r#"FAIL  handler order: wfastcgi's handler "Python FastCGI" comes before pyfcgi's in web.config, so IIS runs wfastcgi for every request"#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("--replace-wfastcgi"), "{}", out.stdout);
    // enable again puts pyfcgi first.
    ok(&[
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        root,
    ]);
    assert_eq!(handler_names(dir.path()), ["pyfcgi", "Python FastCGI"]);

    // --replace-wfastcgi while another IIS application still runs wfastcgi: the handler goes,
    // the shared FastCGI application stays.
    let legacy = TempDir::new("iis-legacy");
    std::fs::write(
        legacy.path().join("web.config"),
        format!("<configuration><system.webServer><handlers>{WFASTCGI_ADD}</handlers></system.webServer></configuration>"),
    )
    .unwrap();
    let ahc = application_host(legacy.path(), dir.path(), legacy.path());
    let replace = |extra: &[&str]| {
        let mut args = vec![
            "iis",
            "enable",
            "--dry-run",
            "--replace-wfastcgi",
            "--exe",
            EXE,
            "--app-root",
            root,
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let out = replace(&["--applicationhost", path_str(&ahc)]);
    assert!(
        out.contains(&format!(
            "wfastcgi's FastCGI application {WFASTCGI_SP} stays registered: Default Web Site/legacy ({}) still use it",
            legacy.path().display()
        )),
        "{out}"
    );
    assert!(
        !out.contains("/-[fullPath='C:\\Python39\\python.exe'"),
        "{out}"
    );
    assert!(!xml_in(&out).contains("wfastcgi.py"), "{out}");
    // Once the other application has moved on, it is unregistered too.
    std::fs::write(legacy.path().join("web.config"), "<configuration/>").unwrap();
    let out = replace(&["--applicationhost", path_str(&ahc)]);
    let unregister = r#"%windir%\system32\inetsrv\appcmd.exe set config -section:system.webServer/fastCgi "/-[fullPath='C:\Python39\python.exe',arguments='C:\Python39\Lib\site-packages\wfastcgi.py']" /commit:apphost"#;
    assert!(out.contains(&format!("\n{unregister}\n")), "{out}");
    assert!(
        out.contains("no other site uses wfastcgi's FastCGI application"),
        "{out}"
    );
    // Without applicationHost.config, the command is shown for later, not run.
    let out = replace(&[]);
    assert!(out.contains(&format!("#   {unregister}")), "{out}");
    assert!(
        out.contains("cannot tell whether another site uses it"),
        "{out}"
    );

    // The switch, written: wfastcgi's handler is gone and doctor passes (and imports, with the
    // wfastcgi name).
    let out = ok(&[
        "iis",
        "enable",
        "--write-web-config",
        "--replace-wfastcgi",
        "--applicationhost",
        path_str(&ahc),
        "--exe",
        EXE,
        "--app-root",
        root,
    ]);
    assert!(
        out.contains(r#"removed wfastcgi's handler "Python FastCGI" from web.config"#),
        "{out}"
    );
    assert!(out.contains(unregister), "{out}");
    assert_eq!(handler_names(dir.path()), ["pyfcgi"]);
    let out = doctor(&dir, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(!out.stdout.contains("WARN  handler"), "{}", out.stdout);
    #[cfg(feature = "python")]
    assert!(
        out.stdout
            .contains("PASS  import: application hello.application loaded"),
        "{}",
        out.stdout
    );

    // disable gives the site back its own settings.
    ok(&["iis", "disable", "--write-web-config", "--app-root", root]);
    let settings = pyfcgi_iis::webconfig::load_for_app(dir.path()).unwrap();
    assert_eq!(settings.get("WSGI_HANDLER"), Some("hello.application"));
    // (A value equal to what enable writes could not be told apart from enable's own.)
    assert_eq!(
        settings.get("PYTHONPATH"),
        Some(format!("{root};{root}/lib").as_str())
    );
    assert_eq!(
        settings.get("WSGI_LOG"),
        Some(format!("{root}/oldlogs/wfastcgi.log").as_str())
    );
}

/// `enable` with no application named anywhere refuses, and suggests what the folder holds.
#[test]
fn enable_without_an_app_refuses_and_suggests_one() {
    let flask = TempDir::new("iis-noapp-flask");
    std::fs::write(
        flask.path().join("app.py"),
        "from flask import Flask\n\napp = Flask(__name__)\n",
    )
    .unwrap();
    let django = django_site();
    std::fs::write(
        django.path().join("manage.py"),
        "import os\nos.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"mysite.settings\")\n",
    )
    .unwrap();
    std::fs::create_dir_all(django.path().join("mysite")).unwrap();
    std::fs::write(
        django.path().join("mysite").join("wsgi.py"),
        "application = None\n",
    )
    .unwrap();
    let bare = TempDir::new("iis-noapp-bare");
    for (dir, wanted) in [
        (&flask, "--app app:app"),
        (&django, "--app mysite.wsgi:application"),
        (&bare, "pass it as --app module:callable"),
    ] {
        for mode in ["--dry-run", "--write-web-config"] {
            let out = run(&[
                "iis",
                "enable",
                mode,
                "--exe",
                EXE,
                "--app-root",
                path_str(dir.path()),
            ]);
            assert_eq!(out.code, Some(1), "{mode}: {}", out.stdout);
            assert!(
                out.stderr
                    .contains("no application to run: neither --app nor a WSGI_HANDLER"),
                "{}",
                out.stderr
            );
            assert!(out.stderr.contains(wanted), "{wanted}: {}", out.stderr);
            assert!(!dir.path().join("web.config").exists(), "nothing written");
        }
    }
}

/// `--venv` given as the venv's interpreter is written as the venv; a missing one is named as
/// missing; `--app-root` through a symlink is written as given.
#[cfg(unix)]
#[test]
fn venv_and_app_root_are_written_the_way_iis_needs_them() {
    let dir = tiny_wsgi_site();
    let venv = dir.path().join(".venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    std::fs::write(venv.join("bin").join("python"), "").unwrap();
    let root = path_str(dir.path());
    let webconfig = |extra: &[&str]| {
        let mut args = vec![
            "iis",
            "webconfig",
            "--exe",
            EXE,
            "--app",
            "hello:application",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let python = venv.join("bin").join("python");
    let out = webconfig(&["--app-root", root, "--venv", path_str(&python)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        script_processor(xml_in(&out.stdout)).ends_with(&format!("--venv {}", venv.display())),
        "{}",
        out.stdout
    );
    let missing = dir.path().join("no-such-venv");
    let out = webconfig(&["--app-root", root, "--venv", path_str(&missing)]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("it does not exist"), "{}", out.stderr);
    assert!(!out.stderr.contains("pyvenv.cfg"), "{}", out.stderr);

    let link_dir = TempDir::new("iis-link");
    let link = link_dir.path().join("current");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let out = webconfig(&["--app-root", path_str(&link)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        script_processor(xml_in(&out.stdout)).contains(&format!("--app-root {}", link.display())),
        "{}",
        out.stdout
    );
}

#[test]
fn enable_refuses_an_invalid_pyfcgi_setting_and_warns_about_an_unknown_one() {
    let dir = django_site();
    let root = path_str(dir.path());
    let config = dir.path().join("web.config");
    let write = |adds: &str| {
        std::fs::write(
            &config,
            format!("<configuration><appSettings>{adds}</appSettings></configuration>"),
        )
        .unwrap();
    };
    let enable = [
        "iis",
        "enable",
        "--write-web-config",
        "--exe",
        EXE,
        "--app-root",
        root,
        "--app",
        "mysite.wsgi:application",
    ];
    write(r#"<add key="PYFCGI_THREADS" value="four" />"#);
    let out = run(&enable);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "web.config {}: PYFCGI_THREADS = \"four\": expected a whole number from 1 to 1024",
            config.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        !std::fs::read_to_string(&config).unwrap().contains("pyfcgi"),
        "nothing written"
    );
    write(r#"<add key="PYFCGI_THREAD" value="4" />"#);
    let text = ok(&enable);
    assert!(
        text.contains(
            "PYFCGI_THREAD: unknown pyfcgi setting, ignored (did you mean PYFCGI_THREADS?)"
        ),
        "{text}"
    );
}
