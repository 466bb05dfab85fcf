//! `pyfcgi doctor`: checks a site's pyfcgi setup the way IIS will use it, and says for every
//! problem what to do. The checks follow what wfastcgi users ran into most (research:
//! users-and-peers.md §4, iis-fastcgi.md §4): unreadable or mismatched configuration, a
//! `scriptProcessor` that does not match the registered FastCGI application, venvs made for
//! another Python or from the Microsoft Store Python, imports that fail, unwritable logs.
//!
//! Output: one `PASS`/`WARN`/`FAIL`/`SKIP` line per check, details and the fix indented
//! below it. Exit 0 when nothing failed, 1 otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use pyfcgi_iis::register::{self, Registration, SiteFastCgi};
use pyfcgi_iis::{IisError, offline, webconfig};

use crate::iis_cmd::{self, Selectors};

/// `pyfcgi doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The site's (or IIS application's) physical folder [default: the current directory].
    #[arg(long, value_name = "DIR")]
    app_root: Option<PathBuf>,

    /// The WSGI application [default: the --app of web.config's pyfcgi handler, else
    /// PYFCGI_APP or WSGI_HANDLER from appSettings].
    #[arg(long, value_name = "APP")]
    app: Option<String>,

    /// The virtual environment [default: the --venv of web.config's pyfcgi handler, else
    /// PYFCGI_VENV from appSettings, else a pyvenv.cfg, .venv or venv at or above the app
    /// folder].
    #[arg(long, value_name = "DIR")]
    venv: Option<PathBuf>,

    /// The log file to check [default: PYFCGI_LOG_FILE or WSGI_LOG from appSettings].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// The pyfcgi.exe the handler should run [default: this executable].
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,

    /// applicationHost.config to look for the FastCGI registration in [default on Windows:
    /// %windir%\system32\inetsrv\config\applicationHost.config; reading it needs
    /// Administrator].
    #[arg(long, value_name = "PATH")]
    applicationhost: Option<PathBuf>,

    /// Do not start Python to import the application.
    #[arg(long)]
    no_import: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Skip => "SKIP",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
struct Finding {
    status: Status,
    title: String,
    details: Vec<String>,
    fix: Option<String>,
}

impl Finding {
    fn new(status: Status, title: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            details: Vec::new(),
            fix: None,
        }
    }

    fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What the checks found out about the site, shared between them.
struct Site {
    root: PathBuf,
    exe: PathBuf,
    settings: webconfig::AppSettings,
    fastcgi: Option<SiteFastCgi>,
    /// pyfcgi's handler, parsed back into a registration.
    registered: Option<Registration>,
    /// The settings exactly as `serve` resolves them for this folder (the first-request
    /// setup under IIS), with doctor's own --app/--venv on top.
    resolved: Option<pyfcgi_settings::Resolution>,
    /// How long importing the app took (set by the import check when it passed).
    import_seconds: Option<f64>,
}

/// Runs the checks and prints them. Exit 0 when none failed.
pub fn main(args: &DoctorArgs) -> ExitCode {
    crate::logging::init_stderr("warn");
    let findings = run(args);
    let mut text = String::new();
    for f in &findings {
        let _ = writeln!(text, "{}  {}", f.status.label(), f.title);
        for d in &f.details {
            let _ = writeln!(text, "      {d}");
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(text, "      fix: {fix}");
        }
    }
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let fails = count(Status::Fail);
    let _ = writeln!(
        text,
        "\n{} FAIL, {} WARN, {} PASS, {} SKIP",
        fails,
        count(Status::Warn),
        count(Status::Pass),
        count(Status::Skip)
    );
    print!("{text}");
    if fails == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run(args: &DoctorArgs) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = match iis_cmd::app_root_for_iis(args.app_root.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::new(Status::Fail, format!("app folder: {e:#}")));
            return out;
        }
    };
    let exe = match iis_cmd::exe_for_iis(args.exe.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            out.push(Finding::new(Status::Fail, format!("pyfcgi.exe: {e:#}")));
            return out;
        }
    };
    if !root.is_dir() {
        out.push(
            Finding::new(
                Status::Fail,
                format!("app folder: {} does not exist", root.display()),
            )
            .fix("pass the site's physical path (IIS Manager > site > Basic Settings) with --app-root"),
        );
        return out;
    }
    let mut site = Site {
        root,
        exe,
        settings: webconfig::AppSettings::default(),
        fastcgi: None,
        registered: None,
        resolved: None,
        import_seconds: None,
    };
    out.push(check_web_config(&mut site));
    if site.fastcgi.as_ref().is_some_and(|f| f.has_fastcgi_section) {
        out.push(
            Finding::new(
                Status::Warn,
                "web.config has a <system.webServer><fastCgi> section, which IIS does not read there",
            )
            .detail("the section is AppHostOnly: IIS ignores it in web.config, or answers 500.19 if it is locked")
            .fix("remove it; `pyfcgi iis enable` registers the FastCGI application in applicationHost.config"),
        );
    }
    out.push(check_handler(args, &mut site));
    let res = resolve_settings(args, &site);
    out.extend(check_settings(&res));
    site.resolved = Some(res);
    let app = resolve_app(&site);
    out.push(check_app(app.as_ref(), &site));
    let venv = resolve_venv(&site);
    out.extend(check_profile_paths(
        &site,
        venv.as_ref().map(|v| v.0.as_path()),
    ));
    let python = embedded_python(&site, venv.as_ref().map(|v| v.0.clone()));
    out.push(python.finding());
    out.push(check_venv(venv.as_ref(), &python));
    out.extend(check_pythonpath(&site));
    out.push(check_log(args, &site));
    out.push(check_offline(&site));
    out.push(if args.no_import {
        Finding::new(Status::Skip, "import: --no-import")
    } else {
        let started = std::time::Instant::now();
        let f = check_import(app.as_ref(), venv.as_ref(), &site);
        if f.status == Status::Pass {
            site.import_seconds = Some(started.elapsed().as_secs_f64());
        }
        f
    });
    // IIS's limits last: the activity timeout is compared with the import time.
    out.extend(check_registration(args, &site));
    out
}

/// `Malformed XML. 3:5 Unexpected ...` → `line 3, column 5: Unexpected ...`.
fn xml_position(message: &str) -> String {
    let m = message.strip_prefix("Malformed XML. ").unwrap_or(message);
    let parsed = m.split_once(' ').and_then(|(pos, rest)| {
        let (line, col) = pos.split_once(':')?;
        let (line, col) = (line.parse::<u64>().ok()?, col.parse::<u64>().ok()?);
        Some(format!("line {line}, column {col}: {rest}"))
    });
    parsed.unwrap_or_else(|| m.to_owned())
}

fn check_web_config(site: &mut Site) -> Finding {
    let own = site.root.join("web.config");
    let settings = match webconfig::load_for_app(&site.root) {
        Ok(s) => s,
        Err(IisError::Xml { path, message }) => {
            return Finding::new(
                Status::Fail,
                format!(
                    "web.config: {} is not well-formed XML at {}",
                    path.display(),
                    xml_position(&message)
                ),
            )
            .fix("correct the XML there; until then IIS answers every request with 500.19");
        }
        Err(e) => {
            return Finding::new(Status::Fail, format!("web.config: {e}")).fix(
                "correct the file; `pyfcgi iis webconfig` prints a valid one to compare with",
            );
        }
    };
    if own.is_file() {
        match std::fs::read(&own)
            .map_err(|source| IisError::Io {
                path: own.clone(),
                source,
            })
            .and_then(|x| SiteFastCgi::read(&x, &own))
        {
            Ok(f) => site.fastcgi = Some(f),
            Err(e) => return Finding::new(Status::Fail, format!("web.config: {e}")),
        }
    }
    let mut f = if own.is_file() {
        Finding::new(
            Status::Pass,
            format!("web.config: {} parses", own.display()),
        )
    } else {
        Finding::new(
            Status::Fail,
            format!("web.config: there is none in {}", site.root.display()),
        )
        .fix(format!(
            "run `pyfcgi iis enable --app-root {} --app <module:app>` (or write it with `pyfcgi iis webconfig`)",
            site.root.display()
        ))
    };
    f = describe_settings(f, &settings);
    site.settings = settings;
    f
}

/// Adds the merged appSettings, each with the file that set it, to `f`.
fn describe_settings(mut f: Finding, settings: &webconfig::AppSettings) -> Finding {
    if settings.sources.is_empty() {
        return f;
    }
    let files: Vec<String> = settings
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    f = f.detail(format!("files read, outermost first: {}", files.join(", ")));
    if settings.iter().next().is_none() {
        return f.detail("appSettings: none");
    }
    // The last file that adds a key is where its merged value comes from.
    let per_file: Vec<webconfig::AppSettings> = settings
        .sources
        .iter()
        .map(|p| {
            let mut s = webconfig::AppSettings::default();
            let _ = s.apply_file(p);
            s
        })
        .collect();
    f = f.detail("appSettings (merged):");
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in settings.iter() {
        let source = settings
            .sources
            .iter()
            .zip(&per_file)
            .rev()
            .find(|(_, s)| s.get(key).is_some())
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default();
        // Keys pyfcgi does not read are the app's environment: secrets (SECRET_KEY,
        // DATABASE_URL) live there, and doctor output gets pasted into tickets.
        let shown = if is_pyfcgi_key(key) {
            value.to_owned()
        } else {
            format!(
                "(hidden: {} characters, passed to the app's environment)",
                value.chars().count()
            )
        };
        f = f.detail(format!("  {key:<width$} = {shown}   [{source}]"));
    }
    f
}

/// An appSettings key pyfcgi itself reads (its value is configuration, not a secret).
fn is_pyfcgi_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    upper.starts_with("WSGI_")
        || upper.starts_with("PYFCGI_")
        || matches!(upper.as_str(), "PYTHONPATH" | "SCRIPT_NAME")
}

/// The settings `serve` would run with for this folder: the command line pyfcgi's handler
/// gives it (its --app and --venv) and doctor's own --app/--venv, then the environment,
/// web.config and pyfcgi.toml, through the same resolver.
fn resolve_settings(args: &DoctorArgs, site: &Site) -> pyfcgi_settings::Resolution {
    let mut flags = Vec::new();
    let mut push = |name: &str, value: String, flag: &str| {
        flags.push(pyfcgi_settings::Arg {
            name: name.to_owned(),
            value,
            flag: flag.to_owned(),
        });
    };
    if let Some(r) = &site.registered {
        if let Some(a) = &r.app {
            push("app", a.clone(), "the pyfcgi handler's --app");
        }
        if let Some(v) = &r.venv {
            push(
                "venv",
                v.display().to_string(),
                "the pyfcgi handler's --venv",
            );
        }
    }
    if let Some(a) = &args.app {
        push("app", a.clone(), "--app");
    }
    if let Some(v) = &args.venv {
        push("venv", v.display().to_string(), "--venv");
    }
    if let Some(l) = &args.log_file {
        push("log-file", l.display().to_string(), "--log-file");
    }
    crate::startup::resolve(&crate::startup::inputs(flags, Some(site.root.clone())))
}

/// Every effective setting with its origin; a FAIL for each invalid value and a WARN for
/// each unknown key.
fn check_settings(res: &pyfcgi_settings::Resolution) -> Vec<Finding> {
    let mut out = Vec::new();
    let set: Vec<&pyfcgi_settings::Effective> = res
        .effective
        .iter()
        .filter(|e| e.origin != pyfcgi_settings::Origin::Default)
        .collect();
    let mut f = Finding::new(
        if res.errors.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        format!(
            "settings: {} set, {} invalid, {} unknown (as `serve` resolves them: command line, PYFCGI_* variables, web.config, pyfcgi.toml)",
            set.len(),
            res.errors.len(),
            res.unknown.len()
        ),
    );
    let width = set.iter().map(|e| e.key.len()).max().unwrap_or(0);
    for e in set {
        f = f.detail(format!("{:<width$} = {}   [{}]", e.key, e.value, e.origin));
    }
    out.push(f);
    for e in &res.errors {
        out.push(
            Finding::new(Status::Fail, format!("setting: {e}"))
                .fix("correct the value there; until then pyfcgi answers every request with a 500 page naming the problem and logs this line"),
        );
    }
    for u in &res.unknown {
        let mut w = Finding::new(Status::Warn, format!("setting: {u}"));
        if let Some(s) = &u.suggestion {
            w = w.fix(format!("rename it to {s}"));
        }
        out.push(w);
    }
    out
}

fn resolve_app(site: &Site) -> Option<(String, String)> {
    let res = site.resolved.as_ref()?;
    let app = res.settings.app.clone()?;
    let origin = res
        .origin("app")
        .map_or_else(|| "settings".to_owned(), ToString::to_string);
    Some((app, origin))
}

fn check_app(app: Option<&(String, String)>, site: &Site) -> Finding {
    match app {
        Some((a, from)) => {
            let mut f = Finding::new(Status::Pass, format!("application: {a} (from {from})"));
            if let Some(h) = site.settings.get("WSGI_HANDLER").filter(|h| h != a) {
                f = f.detail(format!("WSGI_HANDLER in appSettings says {h}; {from} wins"));
            }
            f
        }
        None => Finding::new(Status::Fail, "application: no WSGI_HANDLER appSetting and no --app")
            .fix(r#"add <add key="WSGI_HANDLER" value="mysite.wsgi:application" /> to <appSettings>, or run `pyfcgi iis enable --app mysite.wsgi:application`"#),
    }
}

fn check_handler(args: &DoctorArgs, site: &mut Site) -> Finding {
    let enable_hint = format!(
        "run `pyfcgi iis enable --app-root {}` as Administrator: it writes the handler and registers the same string with IIS",
        site.root.display()
    );
    let Some(fastcgi) = &site.fastcgi else {
        return Finding::new(
            Status::Fail,
            "handler mapping: web.config could not be read",
        )
        .fix(enable_hint);
    };
    let wfastcgi: Vec<_> = fastcgi
        .handlers
        .iter()
        .filter(|h| h.script_processor.to_ascii_lowercase().contains("wfastcgi"))
        .collect();
    let Some(handler) = fastcgi.pyfcgi_handler() else {
        let mut f = Finding::new(
            Status::Fail,
            format!(
                "handler mapping: no handler named {:?} in web.config",
                register::HANDLER_NAME
            ),
        );
        for h in &wfastcgi {
            f = f.detail(format!(
                "{:?} still runs wfastcgi: {}",
                h.name, h.script_processor
            ));
        }
        if wfastcgi.is_empty() {
            return f.fix(enable_hint);
        }
        return f.fix(format!(
            "run `pyfcgi iis enable --app-root {} --replace-wfastcgi` as Administrator: it writes pyfcgi's handler, takes wfastcgi's out and registers pyfcgi with IIS (docs/migrating-from-wfastcgi.md)",
            site.root.display()
        ));
    };
    let registered = Registration::from_script_processor(&handler.script_processor);
    let sel = Selectors {
        app_root: Some(site.root.clone()),
        app: args
            .app
            .clone()
            .or_else(|| registered.as_ref().and_then(|r| r.app.clone())),
        venv: args
            .venv
            .clone()
            .or_else(|| registered.as_ref().and_then(|r| r.venv.clone())),
        exe: Some(site.exe.clone()),
    };
    site.registered = registered;
    let expected = match iis_cmd::registration(&sel) {
        Ok(r) => r.script_processor(),
        Err(e) => return Finding::new(Status::Fail, format!("handler mapping: {e:#}")),
    };
    let buffering = match handler.response_buffer_limit.as_deref() {
        Some("0") => "responseBufferLimit=0: streamed responses reach the client as they are produced".to_owned(),
        Some(n) => format!("responseBufferLimit={n}: IIS holds up to that many bytes of a response (use `--streaming` for SSE)"),
        None => "responseBufferLimit not set: IIS holds up to 4 MB of a response (use `--streaming` for SSE)".to_owned(),
    };
    let mut f = if handler.script_processor == expected {
        Finding::new(
            Status::Pass,
            "handler mapping: pyfcgi's handler runs this pyfcgi.exe for this app folder",
        )
        .detail(format!("scriptProcessor: {expected}"))
    } else {
        Finding::new(
            Status::Fail,
            "handler mapping: pyfcgi's handler runs another command than this pyfcgi expects (pyfcgi.exe, app folder, --app or --venv differ)",
        )
        .detail(format!("web.config: {}", handler.script_processor))
        .detail(format!("expected:   {expected}"))
        .fix(enable_hint)
    };
    f = f.detail(buffering);
    let replace_hint = format!(
        "run `pyfcgi iis enable --app-root {} --replace-wfastcgi` as Administrator: it puts pyfcgi's handler first, takes wfastcgi's out and unregisters wfastcgi's FastCGI application if no other site uses it",
        site.root.display()
    );
    if let Some(first) = fastcgi.wfastcgi_answers() {
        // IIS runs the first handler in the list whose path matches.
        f.status = Status::Fail;
        f.title = format!(
            "handler order: wfastcgi's handler {:?} comes before pyfcgi's in web.config, so IIS runs wfastcgi for every request and pyfcgi for none",
            first.name
        );
        f = f.detail(format!("{:?}: {}", first.name, first.script_processor));
        f.fix = Some(replace_hint);
    } else if !wfastcgi.is_empty() {
        if f.status == Status::Pass {
            f.status = Status::Warn;
        }
        for h in &wfastcgi {
            f = f.detail(format!(
                "wfastcgi's handler {:?} is still in web.config, after pyfcgi's (so it answers nothing): {}",
                h.name, h.script_processor
            ));
        }
        if f.fix.is_none() {
            f.fix = Some(replace_hint);
        }
    }
    f
}

pub fn default_applicationhost() -> Option<PathBuf> {
    let windir =
        webconfig::process_env("windir").or_else(|| webconfig::process_env("SystemRoot"))?;
    Some(
        Path::new(&windir)
            .join("system32")
            .join("inetsrv")
            .join("config")
            .join("applicationHost.config"),
    )
}

/// The `<fastCgi><application>` pyfcgi's handler names, or the finding that says why there
/// is none to check.
fn find_registration(
    args: &DoctorArgs,
    site: &Site,
) -> Result<register::FastCgiApplication, Finding> {
    let title = "FastCGI registration (applicationHost.config)";
    let path = match &args.applicationhost {
        Some(p) => p.clone(),
        None if cfg!(windows) => match default_applicationhost() {
            Some(p) => p,
            None => {
                return Err(Finding::new(
                    Status::Skip,
                    format!("{title}: %windir% is not set"),
                ));
            }
        },
        None => {
            return Err(Finding::new(
                Status::Skip,
                format!("{title}: not on Windows"),
            ));
        }
    };
    let Some(wanted) = site
        .fastcgi
        .as_ref()
        .and_then(SiteFastCgi::pyfcgi_handler)
        .map(|h| h.script_processor.clone())
    else {
        return Err(Finding::new(
            Status::Skip,
            format!("{title}: no pyfcgi handler to look for"),
        ));
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Finding::new(
                Status::Skip,
                format!(
                    "{title}: cannot read {} (run doctor as Administrator to check it)",
                    path.display()
                ),
            ));
        }
        Err(e) => {
            return Err(Finding::new(
                Status::Fail,
                format!("{title}: cannot read {}: {e}", path.display()),
            )
            .fix("install IIS with the CGI feature (docs/iis.md, step 1)"));
        }
    };
    let apps = match register::fastcgi_applications(&text, &path) {
        Ok(a) => a,
        Err(e) => return Err(Finding::new(Status::Fail, format!("{title}: {e}"))),
    };
    let Some(app) = apps.iter().find(|a| a.script_processor() == wanted) else {
        let mut f = Finding::new(
            Status::Fail,
            format!("{title}: no <fastCgi><application> matches the handler's scriptProcessor"),
        )
        .detail(format!("handler: {wanted}"))
        .detail(
            "IIS fails every request with a 500 until a registration has exactly this fullPath|arguments",
        );
        for a in apps.iter().filter(|a| {
            wanted
                .split('|')
                .next()
                .is_some_and(|e| e.eq_ignore_ascii_case(&a.full_path))
        }) {
            f = f.detail(format!("registered: {}", a.script_processor()));
        }
        return Err(f.fix(format!(
            "run `pyfcgi iis enable --app-root {}` as Administrator",
            site.root.display()
        )));
    };
    Ok(app.clone())
}

const REGISTRATION: &str = "FastCGI registration (applicationHost.config)";

fn check_registration(args: &DoctorArgs, site: &Site) -> Vec<Finding> {
    let app = match find_registration(args, site) {
        Ok(app) => app,
        Err(f) => return vec![f],
    };
    let mut out = vec![
        Finding::new(Status::Pass, format!("{REGISTRATION}: registered"))
            .detail(format!("fullPath={}", app.full_path))
            .detail(format!("arguments={}", app.arguments)),
    ];
    out.extend(iis_limits(&app, site));
    out
}

/// The appcmd command that sets one attribute of the FastCGI application.
fn appcmd_set(app: &register::FastCgiApplication, attribute: &str, value: &str) -> String {
    format!(
        r"{} set config -section:system.webServer/fastCgi {} /commit:apphost",
        register::APPCMD,
        register::quote_always(&format!(
            "/[fullPath='{}',arguments='{}'].{attribute}:{value}",
            app.full_path, app.arguments
        ))
    )
}

/// IIS's own limits on the FastCGI application (applicationHost.config, IIS's defaults where
/// an attribute is not set), against pyfcgi's settings for the site: each a PASS or a WARN
/// with the appcmd line that fixes it.
fn iis_limits(app: &register::FastCgiApplication, site: &Site) -> Vec<Finding> {
    let number = |name: &str, default: u64| -> (u64, bool) {
        match app.attribute(name).and_then(|v| v.trim().parse().ok()) {
            Some(v) => (v, true),
            None => (default, false),
        }
    };
    let shown = |name: &str, (v, set): (u64, bool)| {
        if set {
            format!("{name}={v}")
        } else {
            format!("{name}={v} (IIS's default: not set)")
        }
    };
    let settings = site.resolved.as_ref().map(|r| &r.settings);
    let mut out = Vec::new();

    // instanceMaxRequests: IIS retires the process after that many requests; a pyfcgi that
    // exits sooner looks like a crash to IIS ("exited unexpectedly").
    let imr = number("instanceMaxRequests", 200);
    let pyfcgi_max = settings.map_or(0, |s| s.max_requests);
    let title = format!("IIS limit: {}", shown("instanceMaxRequests", imr));
    out.push(if pyfcgi_max > 0 && pyfcgi_max < imr.0 {
        Finding::new(
            Status::Warn,
            format!("{title}, but PYFCGI_MAX_REQUESTS={pyfcgi_max} is lower: pyfcgi exits first, and IIS logs that the process exited unexpectedly"),
        )
        .fix(format!(
            "let IIS do the recycling: remove PYFCGI_MAX_REQUESTS, or lower IIS's limit to it: {}",
            appcmd_set(app, "instanceMaxRequests", &pyfcgi_max.to_string())
        ))
    } else if imr.0 < 1000 {
        Finding::new(
            Status::Warn,
            format!("{title}: IIS replaces the process every {} requests, and each new process imports Python and the app again", imr.0),
        )
        .fix(appcmd_set(app, "instanceMaxRequests", "10000"))
    } else {
        Finding::new(
            Status::Pass,
            format!("{title}: IIS recycles the process after that many requests"),
        )
    });

    // requestTimeout: IIS kills the whole process when one request runs longer; pyfcgi's
    // own --request-timeout answers 504 and logs the Python stack first, if it is shorter.
    let rt = number("requestTimeout", 90);
    let title = format!("IIS limit: {}", shown("requestTimeout", rt));
    let pyfcgi_rt = settings.and_then(|s| s.request_timeout);
    out.push(match pyfcgi_rt {
        Some(t) if t.as_secs() < rt.0 => Finding::new(
            Status::Pass,
            format!(
                "{title}: PYFCGI_REQUEST_TIMEOUT={} s answers 504 and logs the stack first",
                t.as_secs()
            ),
        ),
        other => {
            let why = match other {
                Some(t) => format!("PYFCGI_REQUEST_TIMEOUT={} s is not shorter", t.as_secs()),
                None => "PYFCGI_REQUEST_TIMEOUT is not set".into(),
            };
            Finding::new(
                Status::Warn,
                format!("{title}, and {why}: a request that runs that long gets IIS's bare 500 and the process is killed, every request on it lost, with no Python stack in the log"),
            )
            .fix(format!(
                "set PYFCGI_REQUEST_TIMEOUT a little below it in web.config's <appSettings>: <add key=\"PYFCGI_REQUEST_TIMEOUT\" value=\"{}\" />",
                rt.0.saturating_sub(5).max(1)
            ))
        }
    });

    // activityTimeout: the process must answer something within it; a slow app import on the
    // first request counts against it.
    let at = number("activityTimeout", 70);
    let title = format!("IIS limit: {}", shown("activityTimeout", at));
    out.push(match site.import_seconds {
        Some(took) if took * 2.0 > at.0 as f64 => Finding::new(
            Status::Warn,
            format!("{title}, and importing the app took {took:.1} s here: under load, a first request may hit IIS's limit"),
        )
        .fix(appcmd_set(app, "activityTimeout", &(at.0.max(60) * 2).to_string())),
        Some(took) => Finding::new(
            Status::Pass,
            format!("{title}: importing the app took {took:.1} s"),
        ),
        None => Finding::new(
            Status::Pass,
            format!("{title} (the import time was not measured: --no-import)"),
        ),
    });

    // signalBeforeTerminateSeconds: 0 means IIS never signals the shutdown event and kills
    // the process outright on recycle.
    let sbt = number("signalBeforeTerminateSeconds", 0);
    let grace = settings
        .map_or(30, |s| s.graceful_timeout.as_secs())
        .min(60);
    let title = format!("IIS limit: {}", shown("signalBeforeTerminateSeconds", sbt));
    out.push(if sbt.0 == 0 {
        Finding::new(
            Status::Warn,
            format!("{title}: IIS never signals pyfcgi's shutdown event; on recycle it kills the process, cutting off the requests in flight"),
        )
        .fix(appcmd_set(app, "signalBeforeTerminateSeconds", &grace.max(1).to_string()))
    } else if sbt.0 < grace {
        Finding::new(
            Status::Warn,
            format!("{title}, shorter than pyfcgi's graceful timeout ({grace} s): IIS may kill a request pyfcgi is still finishing"),
        )
        .fix(appcmd_set(app, "signalBeforeTerminateSeconds", &grace.to_string()))
    } else {
        Finding::new(
            Status::Pass,
            format!("{title}: requests in flight get that long to finish on recycle"),
        )
    });

    // stderrMode: pyfcgi writes FCGI_STDERR only with PYFCGI_STDERR_ERRORS.
    let stderr_mode = app.attribute("stderrMode").unwrap_or("ReturnStdErrIn500");
    let stderr_errors = settings.is_some_and(|s| s.stderr_errors);
    out.push(
        if stderr_errors && stderr_mode.eq_ignore_ascii_case("TerminateProcess") {
            Finding::new(
                Status::Warn,
                format!("IIS limit: stderrMode={stderr_mode}, and PYFCGI_STDERR_ERRORS is on: every application error kills the process"),
            )
            .fix(appcmd_set(app, "stderrMode", "ReturnStdErrIn500"))
        } else {
            Finding::new(
                Status::Pass,
                format!(
                    "IIS limit: stderrMode={stderr_mode}{}",
                    if stderr_errors {
                        ": application errors reach IIS as FCGI_STDERR (PYFCGI_STDERR_ERRORS)"
                    } else {
                        ": pyfcgi sends no FCGI_STDERR (errors go to its log)"
                    }
                ),
            )
        },
    );

    // maxInstances: processes, each with its own interpreter and --threads threads.
    let mi = number("maxInstances", 0);
    let threads = settings.and_then(|s| s.threads).unwrap_or(1);
    out.push(Finding::new(
        Status::Pass,
        if mi.0 == 0 {
            format!("IIS limit: {}: IIS picks the number of processes from the load; each runs {threads} Python thread(s) and holds its own copy of the app in memory", shown("maxInstances", mi))
        } else {
            format!(
                "IIS limit: {}: up to {} concurrent requests ({} processes × {threads} thread(s)), each process with its own copy of the app in memory",
                shown("maxInstances", mi),
                mi.0 * threads as u64,
                mi.0
            )
        },
    ));

    // The handler's responseBufferLimit: IIS holds that much of a response before sending.
    if let Some(h) = site.fastcgi.as_ref().and_then(SiteFastCgi::pyfcgi_handler) {
        let streaming = site
            .resolved
            .as_ref()
            .is_some_and(|r| matches!(r.settings.interface, pyfcgi_settings::Interface::Asgi));
        let limit = h.response_buffer_limit.as_deref().unwrap_or("4194304");
        out.push(if limit.trim() != "0" && streaming {
            Finding::new(
                Status::Warn,
                format!("IIS limit: responseBufferLimit={limit} on pyfcgi's handler: IIS holds streamed responses (server-sent events, long polls) until that many bytes or the end"),
            )
            .fix(format!(
                "run `pyfcgi iis enable --app-root {} --streaming` (it writes responseBufferLimit=\"0\")",
                site.root.display()
            ))
        } else {
            Finding::new(
                Status::Pass,
                format!("IIS limit: responseBufferLimit={limit} on pyfcgi's handler{}", if limit.trim() == "0" { ": responses stream as produced" } else { " (for server-sent events use `pyfcgi iis enable --streaming`)" }),
            )
        });
    }
    out
}

/// Paths that the IIS app pool identity usually cannot read (a user's profile, the Microsoft
/// Store's WindowsApps); users-and-peers.md §4 ("permissions").
fn check_profile_paths(site: &Site, venv: Option<&Path>) -> Option<Finding> {
    let mut paths: Vec<(&str, &Path)> = vec![("pyfcgi.exe", &site.exe), ("app folder", &site.root)];
    if let Some(v) = venv {
        paths.push(("venv", v));
    }
    paths.retain(|(_, p)| iis_cmd::is_windows_absolute(p));
    if paths.is_empty() {
        return None;
    }
    let risky: Vec<String> = paths
        .iter()
        .filter(|(_, p)| {
            let s = p.to_string_lossy().to_ascii_lowercase().replace('/', "\\");
            s.contains("\\users\\") || s.contains("\\windowsapps\\")
        })
        .map(|(what, p)| format!("{what}: {}", p.display()))
        .collect();
    if risky.is_empty() {
        return Some(Finding::new(
            Status::Pass,
            "locations: pyfcgi.exe, the app and the venv are outside user profiles",
        ));
    }
    let mut f = Finding::new(
        Status::Warn,
        "locations: under a user profile, which IIS app pool identities cannot read by default",
    );
    for r in risky {
        f = f.detail(r);
    }
    Some(f.fix(
        r#"move them to e.g. C:\pyfcgi and C:\inetpub\<site>, or grant access: icacls "<folder>" /grant "IIS AppPool\<pool>:(OI)(CI)RX""#,
    ))
}

/// The Python pyfcgi embeds.
struct EmbeddedPython {
    /// `major.minor.micro`, or why it is unknown.
    version: Result<(u8, u8, u8), String>,
    /// `sys.base_prefix`.
    base_prefix: String,
}

impl EmbeddedPython {
    fn finding(&self) -> Finding {
        match &self.version {
            Ok((a, b, c)) => {
                let f = Finding::new(
                    Status::Pass,
                    format!("embedded Python: {a}.{b}.{c} ({})", self.base_prefix),
                );
                if is_store_python(&self.base_prefix) {
                    store_python_fail(f, &format!("{a}.{b}"))
                } else {
                    f
                }
            }
            Err(e) => Finding::new(Status::Skip, format!("embedded Python: {e}")),
        }
    }
}

#[cfg(not(feature = "python"))]
fn embedded_python(_site: &Site, _venv: Option<PathBuf>) -> EmbeddedPython {
    EmbeddedPython {
        version: Err("not in this build (built without the `python` feature)".into()),
        base_prefix: String::new(),
    }
}

#[cfg(feature = "python")]
fn embedded_python(site: &Site, venv: Option<PathBuf>) -> EmbeddedPython {
    use pyo3::types::PyAnyMethods;
    let hints = pyfcgi_pyhome::Hints {
        explicit: site.settings.get("PYFCGI_PYTHON_HOME").map(PathBuf::from),
        venv,
        app_dirs: vec![site.root.clone()],
    };
    if let Err(nf) = pyfcgi_pyhome::ensure_loaded(&hints) {
        return EmbeddedPython {
            version: Err(nf.diagnosis()),
            base_prefix: String::new(),
        };
    }
    pyo3::Python::initialize();
    pyo3::Python::attach(|py| {
        let v = py.version_info();
        let base_prefix = py
            .import("sys")
            .and_then(|s| s.getattr("base_prefix"))
            .and_then(|p| p.extract::<String>())
            .unwrap_or_default();
        EmbeddedPython {
            version: Ok((v.major, v.minor, v.patch)),
            base_prefix,
        }
    })
}

fn is_store_python(path: &str) -> bool {
    path.to_ascii_lowercase().contains("windowsapps")
}

fn store_python_fail(mut f: Finding, version: &str) -> Finding {
    f.status = Status::Fail;
    f.detail(
        "this is the Microsoft Store Python (an App Execution Alias under WindowsApps): IIS app pool identities cannot run or read it",
    )
    .fix(format!(
        r#"install Python {version} from python.org "for all users" (C:\Program Files\Python...), then recreate the venv with it: "C:\Program Files\Python...\python.exe" -m venv <venv>"#
    ))
}

fn resolve_venv(site: &Site) -> Option<(PathBuf, String)> {
    if let Some(res) = &site.resolved
        && let Some(v) = &res.settings.python.venv
    {
        let origin = res
            .origin("venv")
            .map_or_else(|| "settings".to_owned(), ToString::to_string);
        return Some((v.clone(), origin));
    }
    // As `serve` finds one (VIRTUAL_ENV left out: IIS does not set it).
    for dir in site.root.ancestors() {
        if dir.join("pyvenv.cfg").is_file() {
            return Some((
                dir.to_owned(),
                "a pyvenv.cfg at or above the app folder".to_owned(),
            ));
        }
        for name in [".venv", "venv"] {
            if dir.join(name).join("pyvenv.cfg").is_file() {
                return Some((
                    dir.join(name),
                    "a .venv/venv folder at or above the app folder".to_owned(),
                ));
            }
        }
    }
    None
}

/// `key = value` lines of a pyvenv.cfg.
fn read_pyvenv_cfg(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect())
}

fn check_venv(venv: Option<&(PathBuf, String)>, python: &EmbeddedPython) -> Finding {
    let Some((venv, from)) = venv else {
        let mut f = Finding::new(
            Status::Pass,
            "venv: none; packages come from the embedded Python's own site-packages",
        );
        if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
            f.status = Status::Warn;
            f = f
                .detail(format!(
                    "VIRTUAL_ENV is set in this shell ({}), but IIS does not set it",
                    Path::new(&v).display()
                ))
                .fix("pass the venv to `pyfcgi iis enable --venv <dir>` so IIS uses it too");
        }
        return f;
    };
    let cfg_path = venv.join("pyvenv.cfg");
    let cfg = match read_pyvenv_cfg(&cfg_path) {
        Ok(c) => c,
        Err(e) => {
            return Finding::new(
                Status::Fail,
                format!(
                    "venv: {} (from {from}) has no readable pyvenv.cfg: {e}",
                    venv.display()
                ),
            )
            .fix(format!(
                "create it with the Python pyfcgi embeds: python -m venv {}",
                venv.display()
            ));
        }
    };
    let Ok((major, minor, _)) = python.version else {
        return Finding::new(
            Status::Skip,
            format!("venv: {} (embedded Python unknown)", venv.display()),
        );
    };
    let embedded = format!("{major}.{minor}");
    let mut f = Finding::new(
        Status::Pass,
        format!("venv: {} (from {from})", venv.display()),
    );
    let recreate = format!(
        "recreate it with Python {embedded} (the one pyfcgi embeds): python{embedded} -m venv --clear {}, then reinstall the requirements",
        venv.display()
    );
    for key in ["home", "executable", "base-executable", "command"] {
        if let Some(v) = cfg.get(key) {
            f = f.detail(format!("{key} = {v}"));
            if is_store_python(v) && f.status != Status::Fail {
                f = store_python_fail(f, &embedded);
            }
        }
    }
    if f.status == Status::Fail {
        return f;
    }
    match cfg.get("version").or_else(|| cfg.get("version_info")) {
        Some(v) if v == &embedded || v.starts_with(&format!("{embedded}.")) => {
            f = f.detail(format!(
                "made for Python {v}, matching the embedded {embedded}"
            ));
        }
        Some(v) => {
            f.status = Status::Fail;
            f = f
                .detail(format!("made for Python {v}, but pyfcgi embeds {embedded}: compiled packages will not import"))
                .fix(recreate.clone());
        }
        None => {
            f.status = Status::Warn;
            f = f
                .detail("pyvenv.cfg has no version; cannot tell which Python made it")
                .fix(recreate.clone());
        }
    }
    if let Some(home) = cfg.get("home").filter(|h| !Path::new(h).is_dir()) {
        if f.status == Status::Pass {
            f.status = Status::Warn;
            f = f.fix(recreate.clone());
        }
        f = f.detail(format!("its base Python folder {home} no longer exists"));
    }
    // Windows venvs use Lib\site-packages; POSIX ones lib/pythonX.Y/site-packages.
    let site_packages = if venv.join("Lib").join("site-packages").is_dir() {
        venv.join("Lib").join("site-packages")
    } else {
        venv.join("lib")
            .join(format!("python{embedded}"))
            .join("site-packages")
    };
    if site_packages.is_dir() {
        f = f.detail(format!("site-packages: {}", site_packages.display()));
    } else {
        f.status = Status::Fail;
        f = f
            .detail(format!("no site-packages at {}", site_packages.display()))
            .fix(recreate);
    }
    f
}

fn check_pythonpath(site: &Site) -> Option<Finding> {
    let raw = site.settings.get("PYTHONPATH")?;
    let entries = site.settings.pythonpath(&webconfig::process_env);
    let mut f = Finding::new(Status::Pass, format!("PYTHONPATH: {raw}"));
    let mut fixes = Vec::new();
    for e in entries {
        let p = Path::new(&e);
        // serve runs in the app folder, so relative entries are relative to it.
        let full = if p.is_absolute() || iis_cmd::is_windows_absolute(p) {
            p.to_owned()
        } else {
            site.root.join(p)
        };
        if e.contains('%') {
            f.status = Status::Warn;
            f = f.detail(format!("{e}: a %VARIABLE% here is not set in this shell"));
            fixes.push("set the variable for the app pool (or write the path out)".to_owned());
        } else if full.is_dir() {
            f = f.detail(format!("{e}: exists"));
        } else {
            f.status = Status::Warn;
            f = f.detail(format!("{e}: does not exist"));
            fixes.push(format!(
                "create {} or correct PYTHONPATH in web.config",
                full.display()
            ));
        }
    }
    if !fixes.is_empty() {
        fixes.dedup();
        f = f.fix(fixes.join("; "));
    }
    Some(f)
}

fn check_log(args: &DoctorArgs, site: &Site) -> Finding {
    let _ = args;
    let from_settings = site.resolved.as_ref().and_then(|res| {
        let log = res.settings.log_file.clone()?;
        let from = res
            .origin("log-file")
            .map_or_else(|| "settings".to_owned(), |o| o.key().to_owned());
        Some((log, from))
    });
    let Some((log, from)) = from_settings else {
        return Finding::new(
            Status::Warn,
            "log: no WSGI_LOG appSetting; under IIS pyfcgi's log (and the app's tracebacks) go nowhere",
        )
        .fix(format!(
            r#"add <add key="WSGI_LOG" value="{}" /> to <appSettings> (`pyfcgi iis enable` does)"#,
            iis_cmd::display_join(&site.root, &["logs", "pyfcgi.log"])
        ));
    };
    let full = if log.is_absolute() || iis_cmd::is_windows_absolute(&log) {
        log.clone()
    } else {
        site.root.join(&log)
    };
    let dir = full
        .parent()
        .map_or_else(|| site.root.clone(), Path::to_owned);
    let grant = format!(
        r#"icacls "{}" /grant "IIS AppPool\<pool>:(OI)(CI)M""#,
        dir.display()
    );
    if !dir.is_dir() {
        return Finding::new(
            Status::Fail,
            format!(
                "log: the folder of {} (from {from}) does not exist",
                log.display()
            ),
        )
        .fix(format!(
            "create {} and let the app pool write there: {grant}",
            dir.display()
        ));
    }
    let probe = dir.join(format!(".pyfcgi-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            let f = Finding::new(
                Status::Pass,
                format!(
                    "log: {} (from {from}); its folder is writable",
                    log.display()
                ),
            );
            if cfg!(windows) || iis_cmd::is_windows_absolute(&dir) {
                f.detail(format!(
                    "writable by this user; IIS writes as the app pool identity, which needs Modify: {grant}"
                ))
            } else {
                f
            }
        }
        Err(e) => Finding::new(
            Status::Fail,
            format!("log: cannot write in {} ({e})", dir.display()),
        )
        .fix(grant),
    }
}

fn check_offline(site: &Site) -> Finding {
    let path = offline::path(&site.root);
    if path.is_file() {
        Finding::new(
            Status::Warn,
            format!(
                "app_offline.htm: {} exists, so the site is offline",
                path.display()
            ),
        )
        .detail("every request is answered 503 with that page and the application is not called")
        .fix(format!(
            "delete {} when the deployment is done",
            path.display()
        ))
    } else {
        Finding::new(Status::Pass, "app_offline.htm: absent (the site is online)")
    }
}

#[cfg(not(feature = "python"))]
fn check_import(
    _app: Option<&(String, String)>,
    _venv: Option<&(PathBuf, String)>,
    _site: &Site,
) -> Finding {
    Finding::new(
        Status::Skip,
        "import: this pyfcgi was built without the `python` feature",
    )
}

#[cfg(feature = "python")]
fn check_import(
    app: Option<&(String, String)>,
    venv: Option<&(PathBuf, String)>,
    site: &Site,
) -> Finding {
    let Some((spec, _)) = app else {
        return Finding::new(Status::Skip, "import: no application to import");
    };
    let Some(res) = &site.resolved else {
        return Finding::new(Status::Skip, "import: the settings could not be resolved");
    };
    // Exactly what `serve` does: the same settings, the app folder as working directory.
    let mut python = crate::startup::python_settings(&res.settings);
    if python.venv.is_none() {
        python.venv = venv.map(|v| v.0.clone());
    }
    match crate::python::resolve(spec, &python, &res.settings.app_env) {
        Ok((pyfcgi_python::AppState::Loaded(_), report)) => {
            let mut lines = report.lines();
            // A file named like a standard library module loads today and breaks later.
            let status = if report.lines().any(|l| l.starts_with("warning: ")) {
                Status::Warn
            } else {
                Status::Pass
            };
            let mut f = Finding::new(status, format!("import: {}", lines.next().unwrap_or(spec)));
            for l in lines.filter(|l| !l.trim().is_empty()) {
                f = f.detail(l.trim_end().to_owned());
            }
            if status == Status::Warn {
                f = f.fix("rename the files the warnings name, and the imports of them");
            }
            f
        }
        Ok((_, report)) => {
            let mut lines = report.lines();
            let mut f = Finding::new(
                Status::Fail,
                format!("import: {}", lines.next().unwrap_or(spec)),
            );
            for l in lines {
                f = f.detail(l.trim_end().to_owned());
            }
            f.fix(format!(
                "fix the error above; `pyfcgi check {spec} --chdir {}` repeats just this check",
                site.root.display()
            ))
        }
        Err(e) => Finding::new(Status::Fail, format!("import: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_errors_name_line_and_column() {
        assert_eq!(
            xml_position("Malformed XML. 3:5 Unexpected end of stream"),
            "line 3, column 5: Unexpected end of stream"
        );
        assert_eq!(xml_position("something else"), "something else");
    }

    #[test]
    fn store_python_is_recognised() {
        assert!(is_store_python(
            r"C:\Users\me\AppData\Local\Microsoft\WindowsApps\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0"
        ));
        assert!(!is_store_python(r"C:\Program Files\Python312"));
    }
}
