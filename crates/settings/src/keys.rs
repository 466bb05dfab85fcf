//! Every setting pyfcgi knows, once: its flag name (also its pyfcgi.toml key), its
//! `PYFCGI_*` variable (also its web.config key), what kind of value it takes, and its help
//! text. The binary builds its `serve`/`check` flags from this table, and the resolver finds
//! unknown keys (and what they were probably meant to be) with it.

/// What a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One value; a later source's value replaces an earlier one.
    Value,
    /// On or off: a bare flag on the command line, `true`/`false` elsewhere.
    Switch,
    /// Repeatable: each occurrence adds a value.
    List,
}

/// Which commands take the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `serve` only.
    Serve,
    /// `serve` and `check` (the interpreter: venv, sys.path, working directory).
    Python,
}

/// One setting.
#[derive(Debug)]
pub struct Key {
    /// The flag without `--`; also the pyfcgi.toml key (`_` and `-` both accepted).
    pub name: &'static str,
    /// The environment variable and web.config appSettings key.
    pub env: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    /// Placeholder in help (`N`, `SIZE`, ...); empty for switches.
    pub value_name: &'static str,
    /// The default, as written by a user (shown in help; parsed like any other value).
    pub default: Option<&'static str>,
    /// A one-letter flag.
    pub short: Option<char>,
    /// Shown only in `--help`, not `-h`.
    pub rare: bool,
    pub help: &'static str,
}

impl Key {
    /// The key by flag name (`-` or `_` accepted).
    pub fn find(name: &str) -> Option<&'static Key> {
        let name = name.replace('_', "-");
        KEYS.iter().find(|k| k.name == name)
    }

    /// The key by environment variable / web.config key (case-insensitive, as IIS is).
    pub fn find_env(var: &str) -> Option<&'static Key> {
        KEYS.iter().find(|k| k.env.eq_ignore_ascii_case(var))
    }
}

const fn value(
    name: &'static str,
    env: &'static str,
    value_name: &'static str,
    default: Option<&'static str>,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        kind: Kind::Value,
        scope: Scope::Serve,
        value_name,
        default,
        short: None,
        rare: false,
        help,
    }
}

const fn switch(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        name,
        env,
        kind: Kind::Switch,
        scope: Scope::Serve,
        value_name: "",
        default: None,
        short: None,
        rare: false,
        help,
    }
}

const fn list(
    name: &'static str,
    env: &'static str,
    value_name: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        kind: Kind::List,
        scope: Scope::Serve,
        value_name,
        default: None,
        short: None,
        rare: false,
        help,
    }
}

const fn python(mut k: Key) -> Key {
    k.scope = Scope::Python;
    k
}

const fn rare(mut k: Key) -> Key {
    k.rare = true;
    k
}

const fn short(mut k: Key, c: char) -> Key {
    k.short = Some(c);
    k
}

/// `PYFCGI_*` variables pyfcgi reads that are not settings (no warning for them).
pub const NOT_SETTINGS: &[&str] = &[
    "PYFCGI_LOG",
    "PYFCGI_SUPERVISED",
    "PYFCGI_STATUS_FILE",
    "PYFCGI_HANDOFF_FD",
    "PYFCGI_PYTHON_DLL",
    "PYFCGI_BIN",
    // Set by pyfcgi's build script; `cargo run`/`cargo test` pass them on.
    "PYFCGI_GIT_REVISION",
    "PYFCGI_PYTHON_BUILT",
];

/// Prefixes of `PYFCGI_*` variables that belong to pyfcgi's own scripts and tests (the
/// benchmark, release and Windows check scripts), not to `serve`.
pub const NOT_SETTINGS_PREFIXES: &[&str] = &[
    "PYFCGI_TEST",
    "PYFCGI_BENCH_",
    "PYFCGI_RELEASE_",
    "PYFCGI_WINDOWS_",
    "PYFCGI_E2E_",
    "PYFCGI_BUILT_FROM",
    "PYFCGI_COLOUR",
];

/// The settings, in the order `--help` lists them.
pub static KEYS: &[Key] = &[
    rare(value(
        "app",
        "PYFCGI_APP",
        "APP",
        None,
        "The WSGI or ASGI application, as an option (what IIS's FastCGI `arguments` and the WSGI_HANDLER appSetting set); the positional APP wins over it.",
    )),
    value(
        "app-root",
        "PYFCGI_APP_ROOT",
        "DIR",
        None,
        "The application's folder (IIS: the site's physical path). Its web.config appSettings and pyfcgi.toml are read at startup, the app is loaded eagerly, pyfcgi changes into it (unless --chdir), and requests for other IIS applications are refused.",
    ),
    value(
        "config",
        "PYFCGI_CONFIG",
        "PATH",
        None,
        "Settings file (TOML, keys are flag names: threads = 4, max-body-size = \"10m\"). Default: pyfcgi.toml in the app folder, else in the working directory.",
    ),
    value(
        "max-requests",
        "PYFCGI_MAX_REQUESTS",
        "N",
        Some("0"),
        "Exit cleanly after this many requests (between requests); 0 = never. Under IIS keep it at or above the FastCGI instanceMaxRequests so IIS recycles first.",
    ),
    value(
        "restart-regex",
        "PYFCGI_RESTART_REGEX",
        "REGEX",
        None,
        "Restart (drain the in-flight request, then exit so IIS starts a new process) when a file under the app folder whose path matches this regex changes. wfastcgi's WSGI_RESTART_FILE_REGEX; default .*((\\.py)|(\\.config))$ when an app folder is known; an empty value disables watching.",
    ),
    switch(
        "stderr-errors",
        "PYFCGI_STDERR_ERRORS",
        "Also send application tracebacks on FCGI_STDERR (IIS then shows them as the 500 page to every visitor: only for debugging).",
    ),
    rare(list(
        "app-env",
        "PYFCGI_APP_ENV",
        "NAME=VALUE",
        "Extra environment variable for the application, NAME=VALUE (repeatable; web.config appSettings that are not pyfcgi or wfastcgi keys arrive here).",
    )),
    python(value(
        "venv",
        "PYFCGI_VENV",
        "PATH",
        None,
        "Virtual environment to use (default: $VIRTUAL_ENV, else a pyvenv.cfg, .venv or venv found beside or above the application).",
    )),
    python(list(
        "pythonpath",
        "PYFCGI_PYTHONPATH",
        "DIR",
        "Directory to put first on sys.path (repeatable; PYTHONPATH is honoured too).",
    )),
    python(value(
        "chdir",
        "PYFCGI_CHDIR",
        "DIR",
        None,
        "Change to this directory before loading the application.",
    )),
    python(value(
        "python-home",
        "PYFCGI_PYTHON_HOME",
        "DIR",
        None,
        "Windows: the folder holding python3XY.dll (or the DLL itself), when the venv's pyvenv.cfg, PYTHONHOME and the registry do not lead to it. Ignored on Unix, where libpython is linked at build time.",
    )),
    value(
        "threads",
        "PYFCGI_THREADS",
        "N",
        None,
        "Python worker threads, 1 to 1024 (default: 1 when stdin is a connected stream, as under IIS, where requests arrive one at a time; otherwise 8).",
    ),
    value(
        "max-body-size",
        "PYFCGI_MAX_BODY_SIZE",
        "SIZE",
        Some("1g"),
        "Largest request body accepted; a larger declared Content-Length gets 413 without calling the application. Suffixes k, m, g (powers of 1024).",
    ),
    value(
        "max-body-memory",
        "PYFCGI_MAX_BODY_MEMORY",
        "SIZE",
        Some("1m"),
        "Request-body bytes held in memory per request before spooling to a temp file.",
    ),
    value(
        "spool-dir",
        "PYFCGI_SPOOL_DIR",
        "DIR",
        None,
        "Directory for request bodies over --max-body-memory (default: the system temp directory, $TMPDIR). Spool files have no name there, are readable only by this user and vanish with the request.",
    ),
    value(
        "send-window",
        "PYFCGI_SEND_WINDOW",
        "SIZE",
        Some("64k"),
        "ASGI: response bytes a request may have handed to `send()` and not yet written before `send()` waits for the client (backpressure). Suffixes k, m, g.",
    ),
    switch(
        "impersonate",
        "PYFCGI_IMPERSONATE",
        "Under IIS with Windows authentication, run each request's Python code as the signed-in user (ImpersonateNamedPipeClient on IIS's pipe, reverted after the request); a request that cannot be impersonated is refused with a 500. WSGI only. Off by default: see docs/iis.md, Impersonation.",
    ),
    switch(
        "detailed-errors",
        "PYFCGI_DETAILED_ERRORS",
        "Put the traceback in 500 pages (for local debugging only: it shows code to visitors).",
    ),
    value(
        "url-scheme",
        "PYFCGI_URL_SCHEME",
        "SCHEME",
        None,
        "Force wsgi.url_scheme, http or https (default: https when the web server sends HTTPS=on, else REQUEST_SCHEME, else http).",
    ),
    value(
        "script-name",
        "PYFCGI_SCRIPT_NAME",
        "PREFIX",
        None,
        "The mount prefix of the app: becomes SCRIPT_NAME and is stripped from PATH_INFO.",
    ),
    value(
        "interface",
        "PYFCGI_INTERFACE",
        "auto|wsgi|asgi",
        Some("auto"),
        "The application's interface: wsgi (PEP 3333), asgi (ASGI 3), or auto (asgi when the app is a coroutine function or has an async __call__, like FastAPI and Starlette).",
    ),
    value(
        "lifespan",
        "PYFCGI_LIFESPAN",
        "auto|on|off",
        Some("auto"),
        "ASGI: run the app's lifespan protocol (startup before the first request, shutdown on stop). auto: run it, and serve an app that does not support it anyway; on: such an app is a startup failure; off: never.",
    ),
    value(
        "loop",
        "PYFCGI_LOOP",
        "auto|asyncio|uvloop",
        Some("auto"),
        "ASGI: the event loop. auto: uvloop when installed (not on Windows), else asyncio.",
    ),
    short(
        value(
            "bind",
            "PYFCGI_BIND",
            "ADDR",
            None,
            "Where to listen: HOST:PORT, tcp:HOST:PORT, unix:PATH, or fd:N (an inherited socket). Default: standard input, when the web server passed a socket there.",
        ),
        'b',
    ),
    value(
        "workers",
        "PYFCGI_WORKERS",
        "N|auto",
        None,
        "Run a supervisor and N worker processes sharing the socket (each imports the app itself), 1 to 1024; `auto` = the number of CPUs. Unset: one process, no supervisor. Not under IIS, which starts its own processes (maxInstances). See docs/deployment.md.",
    ),
    switch(
        "reload",
        "PYFCGI_RELOAD",
        "Development: watch the app's Python files and do a rolling restart (as SIGHUP) when one changes. Implies --workers 1 when --workers is not given. Watches --app-root, else --chdir, else the folder of an APP given as a .py path, else the working directory.",
    ),
    value(
        "max-requests-jitter",
        "PYFCGI_MAX_REQUESTS_JITTER",
        "J",
        Some("0"),
        "With --workers: add a random 0..=J to each worker's --max-requests, so that the workers do not all recycle at once.",
    ),
    value(
        "max-rss",
        "PYFCGI_MAX_RSS",
        "MIB",
        Some("0"),
        "With --workers: a worker whose resident memory exceeds this many MiB finishes its requests and is replaced (a new one is started first); 0 = no limit.",
    ),
    value(
        "worker-lifetime",
        "PYFCGI_WORKER_LIFETIME",
        "SECS",
        Some("0"),
        "With --workers: replace each worker after this many seconds (0 = never).",
    ),
    value(
        "crash-limit",
        "PYFCGI_CRASH_LIMIT",
        "N",
        Some("5"),
        "With --workers: stop (exit code 5) when workers fail this many times in a row before they are ready. Crashes are retried with backoff.",
    ),
    value(
        "ready-timeout",
        "PYFCGI_READY_TIMEOUT",
        "SECS",
        Some("60"),
        "With --workers: how long a new worker may take to import the app and become ready during a rolling restart before the restart is abandoned.",
    ),
    value(
        "read-timeout",
        "PYFCGI_READ_TIMEOUT",
        "SECS",
        Some("60"),
        "Close a connection when the web server sends nothing for this many seconds while a request waits for its params or body (a stalled client upload); 0 = never.",
    ),
    value(
        "params-timeout",
        "PYFCGI_PARAMS_TIMEOUT",
        "SECS",
        Some("60"),
        "Close a connection when a request's params (its headers and CGI variables) have not all arrived this many seconds after its FCGI_BEGIN_REQUEST, however steadily they trickle in (like nginx's client_header_timeout); 0 = never.",
    ),
    value(
        "request-timeout",
        "PYFCGI_REQUEST_TIMEOUT",
        "SECS",
        Some("0"),
        "A request (WSGI or ASGI) running longer than this many seconds is answered 504 (or, if its response has started, ended where it is), and the app's Python stack is logged. A request still running at twice the limit makes a supervised or IIS worker stop, to be replaced. 0 = no limit.",
    ),
    value(
        "status-path",
        "PYFCGI_STATUS_PATH",
        "PATH",
        None,
        "Answer this path (e.g. /pyfcgi-status) with the server's status, from Rust, without calling the app: JSON, or the Prometheus text format with ?format=prometheus or an Accept: text/plain header. 503 until the app is ready. With --workers, the totals of every worker. Keep it away from the public (an nginx `location` with `allow`/`deny`).",
    ),
    value(
        "access-log",
        "PYFCGI_ACCESS_LOG",
        "PATH",
        None,
        "Write one line per request to this file (appended; `-` for stderr).",
    ),
    value(
        "access-log-format",
        "PYFCGI_ACCESS_LOG_FORMAT",
        "FORMAT",
        None,
        "The access log line: a preset (common, combined: Apache's and nginx's; json: one JSON object per line) or a line of placeholders: {time} {time_local} {remote} {remote_user} {method} {uri} {protocol} {host} {status} {bytes} {body_bytes} {duration_ms} {duration_us} {request_id} {pid} {worker} {referer} {user_agent} {header:NAME}. Checked at startup even without --access-log. Default: json with --log-format json, else `{time} {remote} \"{method} {uri}\" {status} {bytes} {duration_ms}ms id={request_id}`.",
    ),
    value(
        "socket-mode",
        "PYFCGI_SOCKET_MODE",
        "MODE",
        Some("660"),
        "Permissions of a new unix socket file, in octal. The default, 660, lets the owner and the group connect and nobody else, whatever the umask (give the web server the group with --socket-group, or use 666 to let every local user connect).",
    ),
    value(
        "socket-owner",
        "PYFCGI_SOCKET_OWNER",
        "USER",
        None,
        "Owner of a new unix socket file: a user name or id (needs root).",
    ),
    value(
        "socket-group",
        "PYFCGI_SOCKET_GROUP",
        "GROUP",
        None,
        "Group of a new unix socket file: a group name or id, e.g. the web server's (www-data), with --socket-mode 660.",
    ),
    value(
        "status-bind",
        "PYFCGI_STATUS_BIND",
        "ADDR",
        None,
        "Also answer the status (as --status-path does) on this separate plain-HTTP listener, HOST:PORT or unix:PATH, e.g. 127.0.0.1:9101 for Prometheus. It is up before the app is imported (reporting not ready, 503, until it is) and is served by the supervisor with --workers.",
    ),
    list(
        "trusted-proxy",
        "PYFCGI_TRUSTED_PROXY",
        "ADDRS",
        "Apply X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host (REMOTE_ADDR, the URL scheme, HTTP_HOST) when the web server's client is one of these proxies: addresses or networks, comma-separated or repeated (10.0.0.1, 10.0.0.0/8, ::1). Without it those headers reach the app as plain headers and change nothing.",
    ),
    value(
        "builtin",
        "PYFCGI_BUILTIN",
        "NAME",
        None,
        "Serve a built-in handler instead of an application: hello (fixed 13-byte response), echo (the request body back) or env (the request params as text).",
    ),
    value(
        "max-conns",
        "PYFCGI_MAX_CONNS",
        "N",
        Some("1024"),
        "Most connections served at once (reported as FCGI_MAX_CONNS).",
    ),
    value(
        "max-requests-per-conn",
        "PYFCGI_MAX_REQUESTS_PER_CONN",
        "N",
        Some("128"),
        "Most requests in flight on one multiplexed connection (FCGI_MAX_REQS is this times --max-conns).",
    ),
    switch(
        "no-multiplex",
        "PYFCGI_NO_MULTIPLEX",
        "Refuse a second concurrent request on one connection (FCGI_MPXS_CONNS=0).",
    ),
    value(
        "max-params-bytes",
        "PYFCGI_MAX_PARAMS_BYTES",
        "BYTES",
        Some("1048576"),
        "Largest FCGI_PARAMS block of one request, in bytes (suffixes k, m allowed).",
    ),
    value(
        "max-params",
        "PYFCGI_MAX_PARAMS",
        "N",
        Some("1000"),
        "Most params (name-value pairs) in one request.",
    ),
    value(
        "graceful-timeout",
        "PYFCGI_GRACEFUL_TIMEOUT",
        "SECS",
        Some("30"),
        "Seconds in-flight requests may take to finish after SIGTERM/SIGINT.",
    ),
    value(
        "idle-timeout",
        "PYFCGI_IDLE_TIMEOUT",
        "SECS",
        Some("300"),
        "Close a connection with no request in flight after this many idle seconds (0 = never). Not applied to a connection inherited on stdin.",
    ),
    value(
        "io-threads",
        "PYFCGI_IO_THREADS",
        "N",
        Some("1"),
        "Threads for socket I/O (1 = a single-threaded runtime, the fastest on small machines).",
    ),
    switch(
        "align-records",
        "PYFCGI_ALIGN_RECORDS",
        "Pad every response record to a multiple of 8 bytes (FastCGI spec §3.3 recommendation; no web server needs it).",
    ),
    value(
        "web-server-addrs",
        "FCGI_WEB_SERVER_ADDRS",
        "IPS",
        None,
        "Comma-separated IP addresses allowed to connect over TCP (default: from the FCGI_WEB_SERVER_ADDRS environment variable; empty = any).",
    ),
    value(
        "log-max-size",
        "PYFCGI_LOG_MAX_SIZE",
        "SIZE",
        Some("10m"),
        "Rotate the log file when it grows past this size (0 = never).",
    ),
    value(
        "log-keep",
        "PYFCGI_LOG_KEEP",
        "N",
        Some("5"),
        "Rotated log files kept (PATH.1 … PATH.N).",
    ),
    value(
        "log-file",
        "PYFCGI_LOG_FILE",
        "PATH",
        None,
        "Write logs to this file instead of stderr (wfastcgi's WSGI_LOG). `{pid}` in the name is replaced by the process id, giving each IIS process its own file.",
    ),
    value(
        "log-format",
        "PYFCGI_LOG_FORMAT",
        "FORMAT",
        Some("text"),
        "text, or json: one JSON object per line (time, level, target, message, request_id, worker and the event's fields), for log shippers. Also makes the access log JSON unless --access-log-format says otherwise. Colours only on a terminal, never with NO_COLOR set.",
    ),
    value(
        "log-level",
        "PYFCGI_LOG_LEVEL",
        "LEVEL",
        Some("info"),
        "Log level (error, warn, info, debug, trace); PYFCGI_LOG overrides with a full filter.",
    ),
];

/// web.config keys wfastcgi defined, and the setting each is (a `PYFCGI_*` key for the same
/// setting in the same file wins over it). `PYTHONPATH` is `;`-separated with `%VAR%`.
pub const WFASTCGI_ALIASES: &[(&str, &str)] = &[
    ("WSGI_HANDLER", "app"),
    ("WSGI_LOG", "log-file"),
    ("WSGI_RESTART_FILE_REGEX", "restart-regex"),
    ("SCRIPT_NAME", "script-name"),
    ("PYTHONPATH", "pythonpath"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_variables_are_unique_and_match() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                KEYS[i + 1..]
                    .iter()
                    .all(|o| o.name != k.name && o.env != k.env),
                "{} twice",
                k.name
            );
            if k.env.starts_with("PYFCGI_") {
                assert_eq!(
                    k.env,
                    format!("PYFCGI_{}", k.name.to_ascii_uppercase().replace('-', "_")),
                    "variable of {}",
                    k.name
                );
            }
            assert_eq!(
                k.kind == Kind::Switch,
                k.value_name.is_empty(),
                "{}",
                k.name
            );
        }
        assert!(Key::find("max_body_size").is_some());
        assert!(Key::find_env("pyfcgi_threads").is_some());
    }
}
