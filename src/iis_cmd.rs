//! `pyfcgi iis enable|disable|webconfig`: registers pyfcgi with IIS for one site, the way
//! `wfastcgi-enable` did, and removes it again.
//!
//! Two things make a site run pyfcgi (research: iis-fastcgi.md §1.1):
//! * a `<fastCgi><application>` in applicationHost.config, which only `appcmd` (as
//!   Administrator) may write, because the section is AppHostOnly;
//! * a handler mapping in the site's `web.config` whose `scriptProcessor` equals that
//!   application's `fullPath|arguments` character for character.
//!
//! What to write comes from [`pyfcgi_iis::register`]; this module chooses paths, runs appcmd
//! on Windows and writes the file. Anywhere else, and with `--dry-run`, it prints the exact
//! commands and the resulting web.config instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pyfcgi_iis::register::{self, Flavour, Registration, SiteFastCgi};
use pyfcgi_iis::webconfig;

/// `pyfcgi iis ...`.
#[derive(Debug, Args)]
pub struct IisArgs {
    #[command(subcommand)]
    command: IisCommand,
}

#[derive(Debug, Subcommand)]
enum IisCommand {
    /// Register pyfcgi with IIS for one site: the FastCGI application (appcmd; run as
    /// Administrator) and the handler mapping in the site's web.config.
    Enable(EnableArgs),
    /// Undo `enable`: remove the FastCGI application and pyfcgi's parts of web.config.
    Disable(DisableArgs),
    /// Print the web.config `enable` would write (the site's current one updated, if any).
    Webconfig(WebconfigArgs),
}

/// Which site and application a registration is for.
#[derive(Debug, Clone, Args)]
pub struct Selectors {
    /// The site's (or IIS application's) physical folder, where web.config lives
    /// [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub app_root: Option<PathBuf>,

    /// The WSGI application (module:attr, module:factory(), or wfastcgi's dotted name);
    /// written to the FastCGI arguments and as the WSGI_HANDLER appSetting.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,

    /// The virtual environment the application runs in.
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,

    /// The pyfcgi.exe to register [default: this executable]. For preparing another
    /// server's configuration, and for tests.
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,
}

/// How the site is laid out.
#[derive(Debug, Clone, Args)]
struct Layout {
    /// generic, flask (IIS serves /static) or django (IIS serves /static and /media)
    /// [default: django if manage.py is in the app folder, flask if a *.py there imports
    /// Flask, else generic].
    #[arg(long, value_name = "NAME", value_parser = parse_flavour)]
    flavour: Option<Flavour>,

    /// Let streamed responses (server-sent events, long downloads) through as they are
    /// produced: responseBufferLimit="0" on the handler.
    #[arg(long)]
    streaming: bool,
}

#[derive(Debug, Args)]
struct EnableArgs {
    #[command(flatten)]
    selectors: Selectors,

    #[command(flatten)]
    layout: Layout,

    /// Seconds IIS waits after signalling shutdown before it kills the process
    /// (signalBeforeTerminateSeconds; IIS allows 0-60).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=60))]
    signal_before_terminate: u32,

    /// Requests a process serves before IIS replaces it (instanceMaxRequests).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    instance_max_requests: u32,

    /// Switch a wfastcgi site over in one step: take wfastcgi's handler mapping out of
    /// web.config and unregister wfastcgi's FastCGI application, unless another site in
    /// applicationHost.config still uses it.
    #[arg(long)]
    replace_wfastcgi: bool,

    /// The applicationHost.config that says which other sites use wfastcgi
    /// [default: %windir%\system32\inetsrv\config\applicationHost.config on Windows].
    #[arg(long, value_name = "FILE")]
    applicationhost: Option<PathBuf>,

    /// Print the appcmd commands and the resulting web.config; change nothing. Always on
    /// outside Windows.
    #[arg(long)]
    dry_run: bool,

    /// Write web.config and the log folder, and only print the appcmd commands (on Windows
    /// too). For preparing a site folder on another machine, and for tests.
    #[arg(long, hide = true)]
    write_web_config: bool,
}

#[derive(Debug, Args)]
struct DisableArgs {
    #[command(flatten)]
    selectors: Selectors,

    /// Print what would be removed; change nothing. Always on outside Windows.
    #[arg(long)]
    dry_run: bool,

    /// Update web.config even where appcmd cannot run (see `enable`).
    #[arg(long, hide = true)]
    write_web_config: bool,
}

#[derive(Debug, Args)]
struct WebconfigArgs {
    #[command(flatten)]
    selectors: Selectors,

    #[command(flatten)]
    layout: Layout,
}

fn parse_flavour(s: &str) -> Result<Flavour, String> {
    s.parse()
}

/// Runs `pyfcgi iis ...`. Exit 0 on success, 1 on any failure (the message says which step
/// failed and what to do).
pub fn main(args: IisArgs) -> ExitCode {
    let (name, result) = match args.command {
        IisCommand::Enable(a) => ("enable", enable(&a)),
        IisCommand::Disable(a) => ("disable", disable(&a)),
        IisCommand::Webconfig(a) => ("webconfig", webconfig_cmd(&a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyfcgi iis {name}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A Windows absolute path (`C:\...`, `\\server\share`), recognised on any OS.
pub fn is_windows_absolute(p: &Path) -> bool {
    let s = p.to_string_lossy();
    let b = s.as_bytes();
    s.starts_with(r"\\")
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

/// `p` as IIS should see it: absolute, with `.` and `..` taken out, but symlinks and
/// junctions kept as given: a site deployed as `C:\sites\app` → `releases\v42` must keep
/// naming `C:\sites\app`, or the next release would still be served from v42. (Without the
/// `\\?\` prefix, which IIS and appcmd do not accept.) A Windows path given on another OS is
/// kept as written: it names a folder on the IIS server.
pub fn path_for_iis(p: &Path) -> anyhow::Result<PathBuf> {
    if !cfg!(windows) && is_windows_absolute(p) {
        return Ok(p.to_owned());
    }
    let abs =
        std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(strip_verbatim(out))
}

/// `\\?\C:\x` → `C:\x`, `\\?\UNC\server\share` → `\\server\share`.
fn strip_verbatim(p: PathBuf) -> PathBuf {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix(r"\\?\UNC\") {
        return PathBuf::from(format!(r"\\{rest}"));
    }
    match s.strip_prefix(r"\\?\") {
        Some(rest) if is_windows_absolute(Path::new(rest)) => PathBuf::from(rest),
        _ => p,
    }
}

/// The pyfcgi.exe to register: `--exe`, else this executable.
pub fn exe_for_iis(exe: Option<&Path>) -> anyhow::Result<PathBuf> {
    let me = match exe {
        Some(p) => p.to_owned(),
        None => std::env::current_exe().context("cannot find this executable's path")?,
    };
    path_for_iis(&me)
}

/// The app folder: `--app-root`, else the current directory.
pub fn app_root_for_iis(app_root: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = match app_root {
        Some(p) => p.to_owned(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    path_for_iis(&root)
}

/// `root` joined with `parts`, written with the separator `root` uses (a `C:\site` given on
/// Linux for a dry run stays a Windows path).
pub fn display_join(root: &Path, parts: &[&str]) -> String {
    let r = root.display().to_string();
    let sep = if r.contains('\\') { '\\' } else { '/' };
    let mut out = r.trim_end_matches(sep).to_owned();
    for p in parts {
        out.push(sep);
        out.push_str(p);
    }
    out
}

/// The registration the selectors describe (IIS settings at pyfcgi's defaults).
pub fn registration(sel: &Selectors) -> anyhow::Result<Registration> {
    let mut r = Registration::new(
        exe_for_iis(sel.exe.as_deref())?,
        app_root_for_iis(sel.app_root.as_deref())?,
    );
    r.app.clone_from(&sel.app);
    r.venv = sel.venv.as_deref().map(venv_for_iis).transpose()?;
    Ok(r)
}

/// `--venv` as IIS should see it: the venv folder, also when its interpreter or `Scripts`
/// folder was given; an error naming the mistake when it is not a venv. A Windows path given
/// on another OS cannot be checked here and is kept as written.
fn venv_for_iis(p: &Path) -> anyhow::Result<PathBuf> {
    let given = path_for_iis(p)?;
    if !cfg!(windows) && is_windows_absolute(&given) {
        return Ok(given);
    }
    pyfcgi_iis::venv::venv_folder(&given)
        .map_err(|why| anyhow::anyhow!("--venv {}: {why}", p.display()))
}

/// Guesses the framework from the files at the app root.
/// The app folder's `*.py` files (not its subfolders'), sorted, with their text; files over
/// 1 MiB are left out (big generated files are not where an app creates its app object).
fn app_scripts(root: &Path) -> Vec<(PathBuf, String)> {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "py") && p.is_file())
        .filter(|p| p.metadata().is_ok_and(|m| m.len() <= 1 << 20))
        .collect();
    scripts.sort();
    scripts
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|text| (p, text)))
        .collect()
}

fn detect_flavour(root: &Path) -> (Flavour, String) {
    if root.join("manage.py").is_file() {
        return (Flavour::Django, "manage.py is in the app folder".into());
    }
    for (p, text) in app_scripts(root) {
        if text.contains("from flask") || text.contains("import flask") || text.contains("Flask(") {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            return (
                Flavour::Flask,
                format!("{} uses Flask", name.unwrap_or_default()),
            );
        }
    }
    (
        Flavour::Generic,
        "no manage.py and no Flask import in the app folder's *.py".into(),
    )
}

fn apply_layout(r: &mut Registration, layout: &Layout) -> String {
    r.streaming = layout.streaming;
    if let Some(f) = layout.flavour {
        r.flavour = f;
        format!("{f} (--flavour)")
    } else {
        let (f, why) = detect_flavour(&r.app_root);
        r.flavour = f;
        format!("{f} (detected: {why})")
    }
}

/// Notes about FastCGI handlers other than pyfcgi's in the web.config `enable` writes (a
/// wfastcgi site being migrated): pyfcgi's comes first, so it answers; the others stay.
fn other_fastcgi_handlers(web_config: &str, path: &Path) -> Vec<String> {
    let Ok(site) = SiteFastCgi::read(web_config.as_bytes(), path) else {
        return Vec::new();
    };
    site.handlers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case(register::HANDLER_NAME))
        .map(|h| {
            if register::is_wfastcgi(&h.script_processor) {
                format!(
                    "wfastcgi's handler {:?} (path {:?}) stays in web.config, after pyfcgi's: pyfcgi answers the \
                     site's requests now and wfastcgi none. To take wfastcgi out (handler and FastCGI application), \
                     run enable again with --replace-wfastcgi",
                    h.name, h.path
                )
            } else {
                format!(
                    "handler {:?} (path {:?}) also runs FastCGI ({}); it comes after pyfcgi's, whose path \"*\" \
                     matches first, so it answers nothing: delete it from web.config unless you mean it",
                    h.name, h.path, h.script_processor
                )
            }
        })
        .collect()
}

/// What `--replace-wfastcgi` does about wfastcgi's FastCGI applications (the
/// `fullPath|arguments` of the handlers it took out of web.config).
#[derive(Debug, Default)]
struct WfastcgiRemoval {
    /// appcmd commands that unregister an application no other site uses.
    commands: Vec<String>,
    /// Commands to run by hand once no other site uses the application (unknown here).
    unchecked: Vec<String>,
    /// What was found, for the output.
    notes: Vec<String>,
}

/// Which other IIS applications' web.config files run `script_processor`, from the sites in
/// applicationHost.config (`None`: that file could not be read, with why).
fn other_sites_using(
    applicationhost: &Path,
    script_processor: &str,
    own_root: &Path,
) -> Result<Vec<String>, String> {
    let text = std::fs::read(applicationhost)
        .map_err(|e| format!("cannot read {}: {e}", applicationhost.display()))?;
    let folders = register::site_folders(&text, applicationhost).map_err(|e| e.to_string())?;
    let own = own_root.display().to_string();
    let same_folder = |a: &str, b: &str| {
        a.trim_end_matches(['\\', '/'])
            .eq_ignore_ascii_case(b.trim_end_matches(['\\', '/']))
    };
    let mut users = Vec::new();
    for f in folders {
        let folder = webconfig::expand_vars(&f.physical_path, &webconfig::process_env);
        if same_folder(&folder, &own) {
            continue;
        }
        let config = Path::new(&folder).join("web.config");
        let Ok(xml) = std::fs::read(&config) else {
            continue;
        };
        let Ok(site) = SiteFastCgi::read(&xml, &config) else {
            continue;
        };
        if site
            .handlers
            .iter()
            .any(|h| h.script_processor.eq_ignore_ascii_case(script_processor))
        {
            users.push(format!("{} ({folder})", f.name));
        }
    }
    Ok(users)
}

fn plan_wfastcgi_removal(args: &EnableArgs, root: &Path, before: &SiteFastCgi) -> WfastcgiRemoval {
    let mut plan = WfastcgiRemoval::default();
    let mut processors: Vec<&str> = Vec::new();
    for h in before.wfastcgi_handlers() {
        if !processors
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&h.script_processor))
        {
            processors.push(&h.script_processor);
        }
        plan.notes.push(format!(
            "removed wfastcgi's handler {:?} from web.config ({})",
            h.name, h.script_processor
        ));
    }
    if processors.is_empty() {
        plan.notes.push(
            "--replace-wfastcgi: web.config has no wfastcgi handler; nothing to replace".into(),
        );
        return plan;
    }
    let applicationhost = args.applicationhost.clone().or_else(|| {
        cfg!(windows)
            .then(crate::doctor::default_applicationhost)
            .flatten()
    });
    for sp in processors {
        let command = register::appcmd_remove_fastcgi(sp);
        let Some(ahc) = &applicationhost else {
            plan.notes.push(format!(
                "wfastcgi's FastCGI application {sp} is left registered: without applicationHost.config \
                 (--applicationhost) pyfcgi cannot tell whether another site uses it; once none does, run:"
            ));
            plan.unchecked.push(command);
            continue;
        };
        match other_sites_using(ahc, sp, root) {
            Ok(users) if users.is_empty() => {
                plan.notes.push(format!(
                    "no other site uses wfastcgi's FastCGI application {sp}: it is unregistered"
                ));
                plan.commands.push(command);
            }
            Ok(users) => plan.notes.push(format!(
                "wfastcgi's FastCGI application {sp} stays registered: {} still use it",
                users.join(", ")
            )),
            Err(e) => {
                plan.notes.push(format!(
                    "wfastcgi's FastCGI application {sp} is left registered ({e}); once no other site uses it, run:"
                ));
                plan.unchecked.push(command);
            }
        }
    }
    plan
}

/// What the site's settings say, as `serve` would resolve them with the web.config `enable`
/// writes (the parent folders' files first).
struct SiteSettings {
    /// The invalid values.
    errors: Vec<String>,
    /// The unknown keys (warnings).
    unknown: Vec<String>,
    /// Whether web.config names the application (`WSGI_HANDLER` or `PYFCGI_APP`).
    names_app: bool,
}

fn settings_problems(root: &Path, new_xml: &str, path: &Path) -> SiteSettings {
    let mut settings = match root.parent() {
        Some(parent) => webconfig::load_for_app(parent).unwrap_or_default(),
        None => webconfig::AppSettings::default(),
    };
    if let Err(e) = settings.apply_xml(new_xml.as_bytes(), path) {
        return SiteSettings {
            errors: vec![e.to_string()],
            unknown: Vec::new(),
            names_app: true,
        };
    }
    let names_app = ["PYFCGI_APP", "WSGI_HANDLER"]
        .iter()
        .any(|k| settings.get(k).is_some_and(|v| !v.trim().is_empty()));
    let inputs = crate::startup::inputs(Vec::new(), None);
    let res = pyfcgi_settings::resolve_from(
        &inputs,
        None,
        Some(pyfcgi_settings::WebConfigInput::Read(settings)),
    );
    SiteSettings {
        errors: res.errors.iter().map(ToString::to_string).collect(),
        unknown: res.unknown.iter().map(ToString::to_string).collect(),
        names_app,
    }
}

/// The application spec a site's files suggest, for the message when none is given: Django's
/// `<project>.wsgi:application` (from manage.py's settings module), else the first
/// `name = Flask(...)`-style object or `application` in the app folder's *.py files.
fn suggest_app(root: &Path) -> Option<String> {
    if let Ok(manage) = std::fs::read_to_string(root.join("manage.py")) {
        let re =
            regex::Regex::new(r#"DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w]*)\."#).ok()?;
        if let Some(project) = re.captures(&manage).and_then(|c| c.get(1)) {
            let project = project.as_str();
            if root.join(project).join("wsgi.py").is_file() {
                return Some(format!("{project}.wsgi:application"));
            }
            if root.join(project).join("asgi.py").is_file() {
                return Some(format!("{project}.asgi:application"));
            }
        }
    }
    let object = regex::Regex::new(
        r"(?m)^([A-Za-z_]\w*)\s*=\s*(?:[\w.]+\.)?(?:Flask|Quart|FastAPI|Starlette|Bottle|Sanic|App|get_wsgi_application|get_asgi_application|make_app|create_app)\(",
    )
    .ok()?;
    let plain = regex::Regex::new(r"(?m)^(?:application\s*=|def application\s*\()").ok()?;
    let scripts = app_scripts(root);
    for (p, text) in &scripts {
        let Some(module) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if module == "manage" || module == "setup" {
            continue;
        }
        if let Some(name) = object.captures(text).and_then(|c| c.get(1)) {
            return Some(format!("{module}:{}", name.as_str()));
        }
        if plain.is_match(text) {
            return Some(format!("{module}:application"));
        }
    }
    None
}

/// The folder of the log file a web.config names (`PYFCGI_LOG_FILE`, else `WSGI_LOG`; a
/// relative name is relative to the app folder), as a path and as shown to the user.
fn log_folder(root: &Path, web_config: &str) -> Option<(PathBuf, String)> {
    let mut settings = webconfig::AppSettings::default();
    settings
        .apply_xml(web_config.as_bytes(), Path::new("web.config"))
        .ok()?;
    let log = ["PYFCGI_LOG_FILE", "WSGI_LOG"]
        .iter()
        .find_map(|k| settings.get(k).filter(|v| !v.trim().is_empty()))?;
    let dir = &log[..log.rfind(['\\', '/']).unwrap_or(0)];
    let p = Path::new(dir);
    if p.is_absolute() || is_windows_absolute(p) {
        Some((p.to_owned(), dir.to_owned()))
    } else if dir.is_empty() {
        Some((root.to_owned(), root.display().to_string()))
    } else {
        Some((root.join(dir), display_join(root, &[dir])))
    }
}

fn read_existing(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// What writing web.config did.
enum FileChange {
    Created,
    Updated { backup: Option<PathBuf> },
    Unchanged,
    Deleted,
}

/// Writes `new` over `path` (whose current content is `old`); `None` deletes the file. With
/// `backup`, the original is first copied to `web.config.bak` unless a backup exists: that
/// one keeps the file as it was before pyfcgi first changed it. (`disable` takes no backup:
/// it only removes what `enable` added, and everything else stays in the file.)
fn write_web_config(
    path: &Path,
    old: Option<&[u8]>,
    new: Option<&str>,
    backup: bool,
) -> anyhow::Result<FileChange> {
    if old == new.map(str::as_bytes) {
        return Ok(FileChange::Unchanged);
    }
    let mut written = None;
    if let Some(old) = old.filter(|_| backup) {
        let bak = path.with_file_name("web.config.bak");
        if !bak.exists() {
            std::fs::write(&bak, old)
                .with_context(|| format!("cannot write the backup {}", bak.display()))?;
            written = Some(bak);
        }
    }
    match (old, new) {
        (_, Some(text)) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(if old.is_some() {
                FileChange::Updated { backup: written }
            } else {
                FileChange::Created
            })
        }
        (Some(_), None) => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot delete {}", path.display()))?;
            Ok(FileChange::Deleted)
        }
        (None, None) => Ok(FileChange::Unchanged),
    }
}

fn describe_change(change: &FileChange, shown: &str) -> String {
    match change {
        FileChange::Created => format!("created {shown}"),
        FileChange::Updated { backup: Some(b) } => {
            format!("updated {shown} (the original is in {})", b.display())
        }
        FileChange::Updated { backup: None } => format!("updated {shown}"),
        FileChange::Unchanged => format!("{shown} is already up to date"),
        FileChange::Deleted => format!("deleted {shown}: only pyfcgi's settings were in it"),
    }
}

/// The note printed above appcmd commands.
const APPCMD_NOTE: &str = "# Run these from an elevated Command Prompt (Run as Administrator): only administrators\n\
     # may change applicationHost.config. The first command removes an earlier registration\n\
     # of the same application and fails harmlessly when there is none.";

fn dry_run_header(explicit: bool, verb: &str) -> String {
    if explicit {
        format!("# Dry run (--dry-run): nothing was changed. `pyfcgi iis {verb}` would:")
    } else {
        format!(
            "# Dry run: `pyfcgi iis {verb}` only changes IIS on Windows, so nothing was changed. On the IIS server it would:"
        )
    }
}

fn enable(args: &EnableArgs) -> anyhow::Result<()> {
    let mut reg = registration(&args.selectors)?;
    reg.signal_before_terminate = args.signal_before_terminate;
    reg.instance_max_requests = args.instance_max_requests;
    reg.replace_wfastcgi = args.replace_wfastcgi;
    let flavour_note = apply_layout(&mut reg, &args.layout);
    let config_path = reg.app_root.join("web.config");
    let config_shown = display_join(&reg.app_root, &["web.config"]);
    let existing = read_existing(&config_path)?;
    let before = existing
        .as_deref()
        .and_then(|x| SiteFastCgi::read(x, &config_path).ok())
        .unwrap_or_default();
    let wfastcgi = if args.replace_wfastcgi {
        plan_wfastcgi_removal(args, &reg.app_root, &before)
    } else {
        WfastcgiRemoval::default()
    };
    let new = reg
        .web_config(existing.as_deref(), &config_path)
        .with_context(|| format!("while reading {config_shown}"))?;
    let logs = log_folder(&reg.app_root, &new);
    let mut others = other_fastcgi_handlers(&new, &config_path);
    let site = settings_problems(&reg.app_root, &new, &config_path);
    if !site.errors.is_empty() {
        bail!(
            "{config_shown} has settings pyfcgi cannot use; fix them, then run enable again:\n{}",
            site.errors.join("\n")
        );
    }
    if reg.app.is_none() && !site.names_app {
        let hint = match suggest_app(&reg.app_root) {
            Some(app) => format!(
                "the app folder suggests --app {app}: run enable again with it (check the name first)"
            ),
            None => {
                "pass it as --app module:callable (Django: mysite.wsgi:application; Flask: app:app)"
                    .into()
            }
        };
        bail!(
            "no application to run: neither --app nor a WSGI_HANDLER in {config_shown} names one, so every \
             request would fail; {hint}"
        );
    }
    others.extend(site.unknown);
    let run_appcmd = cfg!(windows) && !args.dry_run && !args.write_web_config;
    let write_files = run_appcmd || args.write_web_config;
    let commands = reg.appcmd_enable();
    let mut out = std::io::stdout().lock();

    if !write_files {
        writeln!(out, "{}", dry_run_header(args.dry_run, "enable"))?;
        writeln!(out, "# Flavour: {flavour_note}")?;
        writeln!(out, "#")?;
        writeln!(
            out,
            "# 1. Register the FastCGI application in applicationHost.config:"
        )?;
        writeln!(out, "{APPCMD_NOTE}")?;
        for c in &commands {
            writeln!(out, "{c}")?;
        }
        writeln!(
            out,
            "# which leaves this in <system.webServer><fastCgi> of applicationHost.config:"
        )?;
        writeln!(out, "#   {}", reg.fastcgi_application_xml())?;
        writeln!(out, "# {}", limits_note(&reg))?;
        if args.replace_wfastcgi {
            writeln!(out, "#")?;
            writeln!(out, "# 1b. Replace wfastcgi (--replace-wfastcgi):")?;
            for n in &wfastcgi.notes {
                writeln!(out, "#   {n}")?;
            }
            for c in &wfastcgi.commands {
                writeln!(out, "{c}")?;
            }
            for c in &wfastcgi.unchecked {
                writeln!(out, "#   {c}")?;
            }
        }
        writeln!(out, "#")?;
        match &logs {
            Some((_, shown)) => {
                writeln!(out, "# 2. Create the log folder (WSGI_LOG): {shown}")?;
            }
            None => writeln!(out, "# 2. No WSGI_LOG, so no log folder to create.")?,
        }
        writeln!(out, "#")?;
        let what = match &existing {
            None => format!("# 3. Create {config_shown}:"),
            Some(old) if old.as_slice() == new.as_bytes() => {
                format!("# 3. Leave {config_shown} as it is (already up to date):")
            }
            Some(_) if config_path.with_file_name("web.config.bak").exists() => format!(
                "# 3. Update {config_shown} (web.config.bak already holds the file from before pyfcgi):"
            ),
            Some(_) => format!(
                "# 3. Update {config_shown} (the current file is first copied to web.config.bak):"
            ),
        };
        writeln!(out, "{what}")?;
        write!(out, "{new}")?;
        for w in &others {
            writeln!(out, "# Warning: {w}")?;
        }
        writeln!(out, "#")?;
        print_next_steps(&mut out, &reg, "#")?;
        return Ok(());
    }

    writeln!(
        out,
        "pyfcgi iis enable: {} for {}",
        reg.exe.display(),
        reg.app_root.display()
    )?;
    writeln!(out, "  flavour: {flavour_note}")?;
    if !reg.app_root.is_dir() {
        bail!(
            "the app folder {} does not exist; pass the site's physical path with --app-root",
            reg.app_root.display()
        );
    }
    if run_appcmd {
        if !reg.exe.is_file() {
            bail!(
                "{} does not exist; pass the installed pyfcgi.exe with --exe",
                reg.exe.display()
            );
        }
        for note in appcmd_run_all(&commands)? {
            writeln!(out, "  {note}")?;
        }
        writeln!(
            out,
            "  registered the FastCGI application in applicationHost.config"
        )?;
        writeln!(out, "  {}", limits_note(&reg))?;
        for note in appcmd_run_all(&wfastcgi.commands)? {
            writeln!(out, "  {note}")?;
        }
    } else {
        writeln!(
            out,
            "  appcmd not run (--write-web-config); on the IIS server run as Administrator:"
        )?;
        for c in commands.iter().chain(&wfastcgi.commands) {
            writeln!(out, "    {c}")?;
        }
    }
    for n in &wfastcgi.notes {
        writeln!(out, "  {n}")?;
    }
    for c in &wfastcgi.unchecked {
        writeln!(out, "    {c}")?;
    }
    match &logs {
        // A C:\ path named while preparing a site on another OS is not a folder here.
        Some((_, shown)) if !cfg!(windows) && is_windows_absolute(Path::new(shown)) => {
            writeln!(
                out,
                "  log folder {shown} not created: it is not a path on this machine"
            )?;
        }
        Some((dir, shown)) if !dir.is_dir() => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the log folder {shown}"))?;
            writeln!(out, "  created {shown}")?;
        }
        _ => {}
    }
    let change = write_web_config(&config_path, existing.as_deref(), Some(&new), true)?;
    writeln!(out, "  {}", describe_change(&change, &config_shown))?;
    for w in &others {
        writeln!(out, "  warning: {w}")?;
    }
    print_next_steps(&mut out, &reg, " ")?;
    Ok(())
}

/// What the IIS limits `enable` registers are for (IIS's defaults are 0, 200, 70 and 90).
fn limits_note(reg: &Registration) -> String {
    format!(
        "IIS limits set: signalBeforeTerminateSeconds={} (IIS signals pyfcgi to finish its requests on recycle; its default 0 kills them), \
         instanceMaxRequests={} (leave PYFCGI_MAX_REQUESTS unset or higher), activityTimeout={} and requestTimeout={} s \
         (IIS's 70 and 90 s are short for a slow first import; set PYFCGI_REQUEST_TIMEOUT below them for pyfcgi's own 504). \
         `pyfcgi doctor` checks them against the site's settings",
        reg.signal_before_terminate, reg.instance_max_requests, reg.timeout, reg.timeout
    )
}

fn print_next_steps(out: &mut dyn Write, reg: &Registration, prefix: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "{prefix} The handler's scriptProcessor (must equal fullPath|arguments exactly):"
    )?;
    writeln!(out, "{prefix}   {}", reg.script_processor())?;
    writeln!(
        out,
        "{prefix} Next: give the app pool identity (IIS AppPool\\<pool name>) read access to the app folder,"
    )?;
    writeln!(
        out,
        "{prefix} the venv and pyfcgi.exe, and Modify on the logs folder (docs/iis.md), then check the site with:"
    )?;
    write!(
        out,
        "{prefix}   pyfcgi doctor --app-root {}",
        quote_for_display(&reg.app_root.display().to_string())
    )?;
    if let Some(app) = &reg.app {
        write!(out, " --app {}", quote_for_display(app))?;
    }
    if let Some(venv) = &reg.venv {
        write!(
            out,
            " --venv {}",
            quote_for_display(&venv.display().to_string())
        )?;
    }
    writeln!(out)
}

fn quote_for_display(s: &str) -> String {
    if s.is_empty() || s.contains([' ', '\t', '"']) {
        register::quote_always(s)
    } else {
        s.to_owned()
    }
}

/// Fills the selectors the user left out from pyfcgi's handler in the existing web.config, so
/// `disable` removes the registration that is really there.
fn disable_registration(
    sel: &Selectors,
    site: Option<&SiteFastCgi>,
) -> anyhow::Result<(Registration, Option<String>)> {
    let mut reg = registration(sel)?;
    let Some(handler) = site.and_then(SiteFastCgi::pyfcgi_handler) else {
        return Ok((reg, None));
    };
    let Some(found) = Registration::from_script_processor(&handler.script_processor) else {
        return Ok((
            reg,
            Some(format!(
                "the pyfcgi handler's scriptProcessor is not one `pyfcgi iis enable` writes; using the command-line selectors: {}",
                handler.script_processor
            )),
        ));
    };
    if sel.exe.is_none() {
        reg.exe = found.exe;
    }
    if sel.app.is_none() {
        reg.app = found.app;
    }
    if sel.venv.is_none() {
        reg.venv = found.venv;
    }
    // The registered arguments name the app folder as it was written then.
    if sel.app_root.is_none() || found.app_root == reg.app_root {
        reg.app_root = found.app_root;
    }
    Ok((
        reg,
        Some(format!(
            "selectors not given on the command line come from web.config's scriptProcessor: {}",
            handler.script_processor
        )),
    ))
}

fn disable(args: &DisableArgs) -> anyhow::Result<()> {
    let root = app_root_for_iis(args.selectors.app_root.as_deref())?;
    let config_path = root.join("web.config");
    let config_shown = display_join(&root, &["web.config"]);
    let existing = read_existing(&config_path)?;
    let site = existing
        .as_deref()
        .map(|x| SiteFastCgi::read(x, &config_path))
        .transpose()
        .with_context(|| format!("while reading {config_shown}"))?;
    let (reg, note) = disable_registration(&args.selectors, site.as_ref())?;
    // web.config is edited in the folder given, even if the handler named another one.
    let new = match &existing {
        Some(old) => {
            let text = reg.remove_from_web_config(old, &config_path)?;
            let empty = register::is_empty_web_config(text.as_bytes(), &config_path)?;
            Some((!empty).then_some(text))
        }
        None => None,
    };
    let commands = reg.appcmd_disable();
    let run_appcmd = cfg!(windows) && !args.dry_run && !args.write_web_config;
    let write_files = run_appcmd || args.write_web_config;
    let mut out = std::io::stdout().lock();

    if !write_files {
        writeln!(out, "{}", dry_run_header(args.dry_run, "disable"))?;
        if let Some(n) = &note {
            writeln!(out, "# Note: {n}")?;
        }
        writeln!(out, "#")?;
        writeln!(
            out,
            "# 1. Remove the FastCGI application from applicationHost.config:"
        )?;
        writeln!(
            out,
            "# Run this from an elevated Command Prompt (Run as Administrator)."
        )?;
        for c in &commands {
            writeln!(out, "{c}")?;
        }
        writeln!(out, "#")?;
        match (&existing, &new) {
            (None, _) => writeln!(
                out,
                "# 2. {config_shown} does not exist: nothing to remove."
            )?,
            (Some(old), Some(Some(text))) if old.as_slice() == text.as_bytes() => writeln!(
                out,
                "# 2. {config_shown} has nothing from pyfcgi: leave it as it is."
            )?,
            (Some(_), Some(Some(text))) => {
                writeln!(
                    out,
                    "# 2. Remove pyfcgi's handler, locations and appSettings from {config_shown}:"
                )?;
                write!(out, "{text}")?;
            }
            (Some(_), _) => writeln!(
                out,
                "# 2. Delete {config_shown}: only pyfcgi's settings are in it."
            )?,
        }
        writeln!(out, "#")?;
        writeln!(
            out,
            "# The logs folder is left alone; delete it yourself if you no longer need the logs."
        )?;
        return Ok(());
    }

    writeln!(out, "pyfcgi iis disable: {}", root.display())?;
    if let Some(n) = &note {
        writeln!(out, "  note: {n}")?;
    }
    if run_appcmd {
        if appcmd_run_all(&commands)?.is_empty() {
            writeln!(
                out,
                "  removed the FastCGI application from applicationHost.config"
            )?;
        } else {
            writeln!(
                out,
                "  the FastCGI application was not registered in applicationHost.config"
            )?;
        }
    } else {
        writeln!(
            out,
            "  appcmd not run (--write-web-config); on the IIS server run as Administrator:"
        )?;
        for c in &commands {
            writeln!(out, "    {c}")?;
        }
    }
    match (&existing, new) {
        (Some(old), Some(text)) => {
            let change = write_web_config(&config_path, Some(old), text.as_deref(), false)?;
            writeln!(out, "  {}", describe_change(&change, &config_shown))?;
        }
        _ => writeln!(out, "  {config_shown} does not exist: nothing to remove")?,
    }
    writeln!(out, "  the logs folder is left alone")?;
    Ok(())
}

fn webconfig_cmd(args: &WebconfigArgs) -> anyhow::Result<()> {
    let mut reg = registration(&args.selectors)?;
    let note = apply_layout(&mut reg, &args.layout);
    if args.layout.flavour.is_none() {
        eprintln!("pyfcgi iis webconfig: flavour {note}");
    }
    let path = reg.app_root.join("web.config");
    let existing = read_existing(&path)?;
    let text = reg
        .web_config(existing.as_deref(), &path)
        .with_context(|| format!("while reading {}", path.display()))?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}

/// appcmd's answer to removing an entry that is not there (exit code 4312, message
/// `ERROR ( message:Cannot find requested collection element. )`), lower-cased.
const APPCMD_NOT_FOUND: &str = "cannot find requested collection element";

/// Runs appcmd command lines as printed, returning notes for the user. A removal (`/-[...]`)
/// of an entry that is not registered is not an error: `enable` removes before it adds, and
/// `disable` may run after someone removed the entry by hand. Any other failure stops here,
/// before web.config is touched.
fn appcmd_run_all(commands: &[String]) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for line in commands {
        let argv = register::split_command_line(line);
        let Some((program, rest)) = argv.split_first() else {
            continue;
        };
        let program = PathBuf::from(webconfig::expand_vars(program, &webconfig::process_env));
        if !program.is_file() {
            bail!(
                "{} not found: IIS is not installed on this machine. Install it with the CGI feature \
                 (Server: `Install-WindowsFeature Web-Server,Web-CGI`; Windows 10/11: \
                 `Enable-WindowsOptionalFeature -Online -FeatureName IIS-WebServerRole,IIS-CGI`), then run this again",
                program.display()
            );
        }
        let output = std::process::Command::new(&program)
            .args(rest)
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if output.status.success() {
            continue;
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let removal = rest.iter().any(|a| a.starts_with("/-["));
        if removal && text.to_ascii_lowercase().contains(APPCMD_NOT_FOUND) {
            notes.push("no earlier FastCGI registration of this application to remove".into());
            continue;
        }
        bail!(
            "appcmd failed ({}):\n  {line}\n{}\nRun pyfcgi from an elevated Command Prompt (Run as Administrator): \
             only administrators may change applicationHost.config",
            output.status,
            text.trim_end()
        );
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_are_recognised_on_any_os() {
        assert!(is_windows_absolute(Path::new(r"C:\inetpub\site")));
        assert!(is_windows_absolute(Path::new(r"\\server\share\site")));
        assert!(is_windows_absolute(Path::new("d:/site")));
        assert!(!is_windows_absolute(Path::new("/srv/site")));
        assert!(!is_windows_absolute(Path::new("site")));
    }

    #[test]
    fn verbatim_prefixes_are_stripped_for_iis() {
        assert_eq!(
            strip_verbatim(PathBuf::from(r"\\?\C:\pyfcgi\pyfcgi.exe")),
            PathBuf::from(r"C:\pyfcgi\pyfcgi.exe")
        );
        assert_eq!(
            strip_verbatim(PathBuf::from(r"\\?\UNC\srv\share\x")),
            PathBuf::from(r"\\srv\share\x")
        );
        assert_eq!(
            strip_verbatim(PathBuf::from("/usr/bin")),
            PathBuf::from("/usr/bin")
        );
    }

    #[test]
    fn display_join_keeps_the_roots_separator() {
        assert_eq!(
            display_join(Path::new(r"C:\site\"), &["logs", "x.log"]),
            r"C:\site\logs\x.log"
        );
        assert_eq!(
            display_join(Path::new("/srv/site"), &["web.config"]),
            "/srv/site/web.config"
        );
    }

    #[test]
    fn flavour_is_detected_from_the_app_folder() {
        let dir = std::env::temp_dir().join(format!("pyfcgi-flavour-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(detect_flavour(&dir).0, Flavour::Generic);
        std::fs::write(
            dir.join("app.py"),
            "from flask import Flask\napp = Flask(__name__)\n",
        )
        .unwrap();
        assert_eq!(detect_flavour(&dir).0, Flavour::Flask);
        std::fs::write(dir.join("manage.py"), "import django\n").unwrap();
        assert_eq!(detect_flavour(&dir).0, Flavour::Django);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
