//! The command line. `serve` and `check` take their flags from the settings table
//! ([`pyfcgi_settings::KEYS`]): clap only collects what was written, as text, and the settings
//! resolver parses and checks it together with the environment and the config files, so a
//! bad value gets the same message whichever source it came from.

use clap::ArgAction;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use pyfcgi_settings::{KEYS, Key, Kind, Scope};

/// The settings given on a command line (`serve`'s or `check`'s), unparsed.
#[derive(Debug, Clone, Default)]
pub struct SettingArgs(pub Vec<pyfcgi_settings::Arg>);

/// `serve`'s flags: every setting, and the positional APP.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags(pub SettingArgs);

/// `check`'s flags: the interpreter settings.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
#[derive(Debug, Clone, Default)]
pub struct PythonFlags(pub SettingArgs);

const APP_HELP: &str = "The WSGI or ASGI application: module:attr, module:factory(), path/to/app.py:attr, or wfastcgi's package.module.attr.";

fn key_arg(k: &'static Key) -> Arg {
    let mut a = Arg::new(k.name)
        .long(k.name)
        .help(format!("{} [env: {}]", k.help, k.env))
        .hide_short_help(k.rare);
    if let Some(c) = k.short {
        a = a.short(c);
    }
    match k.kind {
        Kind::Switch => a.action(ArgAction::SetTrue),
        Kind::Value | Kind::List => {
            let a = a.action(ArgAction::Append).value_name(k.value_name);
            match k.default {
                Some(d) => a.default_value(d),
                None => a,
            }
        }
    }
}

fn collect(m: &ArgMatches, scope: Option<Scope>) -> SettingArgs {
    let mut out = Vec::new();
    for k in KEYS.iter().filter(|k| scope.is_none_or(|s| k.scope == s)) {
        if m.value_source(k.name) != Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = format!("--{}", k.name);
        if k.kind == Kind::Switch {
            out.push(pyfcgi_settings::Arg {
                name: k.name.to_owned(),
                value: "true".to_owned(),
                flag,
            });
            continue;
        }
        for v in m.get_raw(k.name).into_iter().flatten() {
            out.push(pyfcgi_settings::Arg {
                name: k.name.to_owned(),
                value: v.to_string_lossy().into_owned(),
                flag: flag.clone(),
            });
        }
    }
    SettingArgs(out)
}

impl FromArgMatches for ServeFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = collect(m, None);
        // The positional APP wins over --app (it comes last).
        if let Some(app) = m.get_raw("APP").into_iter().flatten().next_back() {
            args.0.push(pyfcgi_settings::Arg {
                name: "app".to_owned(),
                value: app.to_string_lossy().into_owned(),
                flag: "APP".to_owned(),
            });
        }
        Ok(Self(args))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(Arg::new("APP").value_name("APP").help(APP_HELP).index(1))
            .args(KEYS.iter().map(key_arg))
            .after_help(
                "Every setting can also be given as its PYFCGI_* environment variable, a web.config appSettings key of the same name, or a pyfcgi.toml key (the flag name); see docs/configuration.md.",
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for PythonFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(collect(m, Some(Scope::Python))))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for PythonFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(
            KEYS.iter()
                .filter(|k| k.scope == Scope::Python)
                .map(key_arg),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

// `pyfcgi request` and `pyfcgi bench`: the flags (clap) live here; the client crate takes the
// plain options they give and checks them again itself.

/// Arguments of `pyfcgi request`.
#[derive(Debug, Clone, clap::Args)]
// Command-line switches are bools by nature.
#[allow(clippy::struct_excessive_bools)]
#[command(group(
    clap::ArgGroup::new("responder")
        .required(true)
        .args(["connect", "spawn", "spawn_listen"])
))]
pub struct RequestCli {
    /// Connect to a running responder: tcp:HOST:PORT, HOST:PORT (IPv6 in brackets) or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,

    /// Start the responder given after `--` as IIS does: its stdin is an already-connected
    /// stream (on Windows IIS's named pipe, with _FCGI_X_PIPE_ and _FCGI_SHUTDOWN_EVENT_, and
    /// with --iis also no stdout/stderr; on Unix a socket pair), and every request is sent on
    /// that one kept connection.
    #[arg(long)]
    pub spawn: bool,

    /// Start the responder given after `--` with a listening socket as its stdin and connect
    /// to it: a Unix socket (FCGI_LISTENSOCK_FILENO) on Unix, a TCP socket on 127.0.0.1 as
    /// IIS's protocol="Tcp" does on Windows.
    #[arg(long)]
    pub spawn_listen: bool,

    /// Ask the spawned responder to shut down while request N is in flight (Windows: signal
    /// _FCGI_SHUTDOWN_EVENT_; Unix: SIGTERM, so use N > 1 there: a responder still starting
    /// dies of it), send no request after it, and report how the responder exited ("child
    /// exited with code X"); a non-zero code becomes the exit status.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub shutdown_after: Option<u32>,

    /// After the last response, wait for the spawned responder to exit on its own (as after
    /// `--max-requests`, or when it cannot start Python) and report how it exited ("child
    /// exited with code X"); a non-zero code becomes the exit status.
    #[arg(long, conflicts_with = "shutdown_after")]
    pub wait_exit: bool,

    /// HTTP method [default: GET, or POST when a body is given].
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,

    /// Request header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body, like curl: DATA, @FILE or @- for stdin (newlines are removed from files
    /// and stdin; Content-Type defaults to application/x-www-form-urlencoded).
    #[arg(short = 'd', long, value_name = "DATA", conflicts_with = "data_binary")]
    pub data: Option<String>,

    /// Request body sent exactly as given: DATA, @FILE or @- for stdin.
    #[arg(long, value_name = "DATA")]
    pub data_binary: Option<String>,

    /// Check that every response body is exactly DATA or the contents of @FILE; exit with 4
    /// at the first one that differs.
    #[arg(long, value_name = "DATA")]
    pub expect_body: Option<String>,

    /// Extra FastCGI param NAME=VALUE, replacing a derived one of the same name (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,

    /// Send the params IIS 10 sends (APPL_PHYSICAL_PATH, APPL_MD_PATH, URL, ...).
    #[arg(long)]
    pub iis: bool,

    /// Set FCGI_KEEP_CONN [default for --spawn and --spawn-listen].
    #[arg(long, overrides_with = "no_keep_conn")]
    pub keep_conn: bool,

    /// Do not set FCGI_KEEP_CONN [default for --connect]; each repeat opens a new connection.
    #[arg(long, overrides_with = "keep_conn")]
    pub no_keep_conn: bool,

    /// Send the request N times, printing each response (tests keep-alive and id cycling).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Seconds to wait for a connection or a response (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,

    /// Print the responder's FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS and exit.
    #[arg(long)]
    pub get_values: bool,

    /// Print the status line and headers before the body (the default).
    #[arg(short = 'i', long)]
    pub include: bool,

    /// Print only the response body.
    #[arg(short = 's', long, conflicts_with = "include")]
    pub body_only: bool,

    /// The request target: /path?query, or a full http://host:port/path?query URL whose host
    /// and port become SERVER_NAME, SERVER_PORT and HTTP_HOST.
    #[arg(value_name = "URL", default_value = "/")]
    pub url: String,

    /// The responder's command line, for --spawn and --spawn-listen.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl From<RequestCli> for pyfcgi_client::cli::RequestArgs {
    fn from(c: RequestCli) -> Self {
        Self {
            connect: c.connect,
            spawn: c.spawn,
            spawn_listen: c.spawn_listen,
            shutdown_after: c.shutdown_after,
            wait_exit: c.wait_exit,
            method: c.method,
            headers: c.headers,
            data: c.data,
            data_binary: c.data_binary,
            expect_body: c.expect_body,
            params: c.params,
            iis: c.iis,
            keep_conn: c.keep_conn,
            no_keep_conn: c.no_keep_conn,
            repeat: c.repeat,
            timeout: c.timeout,
            get_values: c.get_values,
            include: c.include,
            body_only: c.body_only,
            url: c.url,
            command: c.command,
        }
    }
}

/// Arguments of `pyfcgi bench`.
#[derive(Debug, Clone, clap::Args)]
// Command-line switches are bools by nature.
#[allow(clippy::struct_excessive_bools)]
#[command(group(
    clap::ArgGroup::new("responder")
        .required(true)
        .args(["connect", "spawn", "spawn_pool"])
))]
pub struct BenchCli {
    /// Load a running responder: tcp:HOST:PORT, HOST:PORT (IPv6 in brackets) or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,

    /// Start one responder process per connection, given after `--`, IIS-style: its stdin is
    /// an already-connected stream that carries all its requests.
    #[arg(long)]
    pub spawn: bool,

    /// Start N responder processes (IIS's maxInstances), one connection each; the -c request
    /// loops share them, waiting for a free one as IIS queues requests [-c defaults to N].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub spawn_pool: Option<u32>,

    /// Concurrent request loops, each with its own connection (with --spawn-pool: sharing the
    /// pool) [default: 8, or N with --spawn-pool].
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,

    /// Measure for SECS seconds [default: 10 when -n is not given].
    #[arg(short = 'd', long, value_name = "SECS", conflicts_with = "requests")]
    pub duration: Option<f64>,

    /// Measure N requests, then stop.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Send load for SECS seconds before measuring (not counted).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub warmup: f64,

    /// Open-loop load: R requests per second in total, latency measured from each request's
    /// due time.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Do not set FCGI_KEEP_CONN: open a new connection for every request (--connect only).
    #[arg(long)]
    pub no_keep_conn: bool,

    /// Requests in flight at once on each connection, with ids 1..=S (FastCGI multiplexing;
    /// the responder must accept it: pyfcgi does, most others answer CANT_MPX_CONN).
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub streams: u16,

    /// Seconds to wait for a connection or a response before counting a timeout (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,

    /// Runtime threads for the load generator (1 keeps it on one core, for `taskset`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    /// HTTP method [default: GET, or POST when a body is given].
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,

    /// Request header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body, like curl's -d: DATA or @FILE (newlines removed from files;
    /// Content-Type defaults to application/x-www-form-urlencoded). No short form: -d is the
    /// duration here.
    #[arg(long, value_name = "DATA", conflicts_with = "data_binary")]
    pub data: Option<String>,

    /// Request body sent exactly as given: DATA or @FILE.
    #[arg(long, value_name = "DATA")]
    pub data_binary: Option<String>,

    /// Extra FastCGI param NAME=VALUE, replacing a derived one of the same name (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,

    /// Send the params IIS 10 sends (APPL_PHYSICAL_PATH, APPL_MD_PATH, URL, ...).
    #[arg(long)]
    pub iis: bool,

    /// The HTTP status every response must have.
    #[arg(long, value_name = "CODE", default_value_t = 200)]
    pub expect_status: u16,

    /// The body sampled responses (the first, then 1 in 100) must have: DATA or @FILE.
    #[arg(long, value_name = "DATA")]
    pub expect_body: Option<String>,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write every measured request to FILE as CSV, one line each in the order they were
    /// due: start_s,latency_us,result (ok, or connect/protocol/status/body/timeout), for
    /// plotting a run. Warm-up requests are not written.
    #[arg(long, value_name = "FILE")]
    pub latency_out: Option<std::path::PathBuf>,

    /// The request target: /path?query, or a full http://host:port/path?query URL.
    #[arg(value_name = "URL", default_value = "/")]
    pub url: String,

    /// The responder's command line, for --spawn and --spawn-pool.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl From<BenchCli> for pyfcgi_client::bench::BenchArgs {
    fn from(c: BenchCli) -> Self {
        Self {
            connect: c.connect,
            spawn: c.spawn,
            spawn_pool: c.spawn_pool,
            connections: c.connections,
            duration: c.duration,
            requests: c.requests,
            warmup: c.warmup,
            rate: c.rate,
            no_keep_conn: c.no_keep_conn,
            streams: c.streams,
            timeout: c.timeout,
            threads: c.threads,
            method: c.method,
            headers: c.headers,
            data: c.data,
            data_binary: c.data_binary,
            params: c.params,
            iis: c.iis,
            expect_status: c.expect_status,
            expect_body: c.expect_body,
            json: c.json,
            latency_out: c.latency_out,
            url: c.url,
            command: c.command,
        }
    }
}

/// Arguments of `pyfcgi top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopCli {
    /// The server's --status-bind address (HOST:PORT, unix:PATH or a socket path), or with
    /// --status-path its FastCGI address (HOST:PORT, unix:PATH).
    #[arg(value_name = "ADDRESS")]
    pub address: String,

    /// Ask over FastCGI at ADDRESS for this path (the server's --status-path).
    #[arg(long, value_name = "PATH")]
    pub status_path: Option<String>,

    /// Seconds between refreshes (0.1 to 3600).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = top_interval)]
    pub interval: f64,

    /// Print one plain-text frame (no escape codes) and exit.
    #[arg(long)]
    pub once: bool,

    /// With --once: print the status document (JSON) instead.
    #[arg(long, requires = "once")]
    pub json: bool,
}

fn top_interval(s: &str) -> Result<f64, String> {
    let (lo, hi) = pyfcgi_client::top::INTERVAL_RANGE;
    match s.parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("give {lo} to {hi} seconds")),
    }
}

impl From<TopCli> for pyfcgi_client::top::TopArgs {
    fn from(c: TopCli) -> Self {
        Self {
            address: c.address,
            status_path: c.status_path,
            interval: c.interval,
            once: c.once,
            json: c.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn serve_flags_arrive_as_written_in_order_and_app_last() {
        let cli = crate::Cli::try_parse_from([
            "pyfcgi",
            "serve",
            "--app",
            "a:app",
            "--threads",
            "four",
            "--reload",
            "-b",
            "127.0.0.1:9000",
            "--threads=5",
            "b:app",
        ])
        .unwrap();
        let crate::Command::Serve(flags) = cli.command else {
            panic!("not serve")
        };
        let got: Vec<(String, String, String)> = flags
            .0
            .0
            .into_iter()
            .map(|a| (a.name, a.value, a.flag))
            .collect();
        let want = |n: &str, v: &str, f: &str| (n.to_owned(), v.to_owned(), f.to_owned());
        assert!(got.contains(&want("reload", "true", "--reload")), "{got:?}");
        assert!(
            got.contains(&want("bind", "127.0.0.1:9000", "--bind")),
            "{got:?}"
        );
        let threads: Vec<&str> = got
            .iter()
            .filter(|g| g.0 == "threads")
            .map(|g| g.1.as_str())
            .collect();
        assert_eq!(threads, ["four", "5"]);
        assert_eq!(got.last(), Some(&want("app", "b:app", "APP")));
        // Defaults are not "given".
        assert!(!got.iter().any(|g| g.0 == "max-body-size"), "{got:?}");
    }

    #[test]
    fn request_and_bench_flags_are_consistent_and_enforce_one_responder() {
        use clap::CommandFactory;
        crate::Cli::command().debug_assert();
        let parse = |argv: &[&str]| crate::Cli::try_parse_from(argv.iter().copied());
        assert!(parse(&["pyfcgi", "request", "/"]).is_err());
        assert!(parse(&["pyfcgi", "request", "--connect", "x:1", "--spawn", "/"]).is_err());
        assert!(parse(&["pyfcgi", "request", "--connect", "h:1", "--repeat", "0"]).is_err());
        assert!(
            parse(&[
                "pyfcgi",
                "request",
                "--spawn",
                "--shutdown-after",
                "0",
                "--",
                "x"
            ])
            .is_err()
        );
        let Ok(cli) = parse(&[
            "pyfcgi", "request", "--spawn", "-X", "PUT", "/x?y", "--", "pyfcgi", "serve",
        ]) else {
            panic!("request flags")
        };
        let crate::Command::Request(r) = cli.command else {
            panic!("not request")
        };
        let r = pyfcgi_client::cli::RequestArgs::from(r);
        assert!(r.spawn && r.url == "/x?y" && r.command == ["pyfcgi", "serve"]);
        assert_eq!(
            (r.method.as_deref(), r.repeat, r.timeout),
            (Some("PUT"), 1, 30.0)
        );
        let Ok(cli) = parse(&[
            "pyfcgi",
            "request",
            "--connect",
            "h:1",
            "--no-keep-conn",
            "--keep-conn",
        ]) else {
            panic!("keep-conn flags")
        };
        let crate::Command::Request(r) = cli.command else {
            panic!("not request")
        };
        assert!(pyfcgi_client::cli::RequestArgs::from(r).keep_conn());
        assert!(parse(&["pyfcgi", "bench", "/"]).is_err());
        assert!(parse(&["pyfcgi", "bench", "--connect", "h:1", "-d", "1", "-n", "5"]).is_err());
        let Ok(cli) = parse(&["pyfcgi", "bench", "--spawn-pool", "3", "--", "x"]) else {
            panic!("bench flags")
        };
        let crate::Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        let b = pyfcgi_client::bench::BenchArgs::from(*b);
        assert_eq!(
            (b.spawn_pool, b.streams, b.timeout, b.url.as_str()),
            (Some(3), 1, 10.0, "/")
        );
    }

    #[test]
    fn top_flags_are_range_checked_and_json_needs_once() {
        let parse = |argv: &[&str]| crate::Cli::try_parse_from(argv.iter().copied());
        for bad in ["0", "0.01", "3601", "nan", "x", "-1"] {
            assert!(
                parse(&["pyfcgi", "top", "h:1", "--interval", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(parse(&["pyfcgi", "top", "h:1", "--json"]).is_err());
        assert!(parse(&["pyfcgi", "top"]).is_err());
        let Ok(cli) = parse(&[
            "pyfcgi",
            "top",
            "unix:/s",
            "--status-path",
            "/st",
            "--once",
            "--json",
            "--interval",
            "0.5",
        ]) else {
            panic!("top flags")
        };
        let crate::Command::Top(t) = cli.command else {
            panic!("not top")
        };
        let t = pyfcgi_client::top::TopArgs::from(t);
        assert_eq!(
            (
                t.address.as_str(),
                t.status_path.as_deref(),
                t.interval,
                t.once,
                t.json
            ),
            ("unix:/s", Some("/st"), 0.5, true, true)
        );
    }
}
