//! `pyfcgi request`: send one request (or a few) to a FastCGI responder and print the response,
//! like curl does for HTTP.
//!
//! The binary turns its `pyfcgi request` flags into [`RequestArgs`] and calls [`run`]; on `Err` it
//! prints [`ClientError::report`] and exits with [`ClientError::exit_code`].
//!
//! Exit codes: 0 success; 1 usage, connect or spawn error; 2 protocol error, connection closed
//! early, invalid CGI response or timeout; 3 the application refused the request
//! (`FCGI_END_REQUEST` with a protocol status other than `FCGI_REQUEST_COMPLETE`); 4 a body
//! differs from `--expect-body`. With `--shutdown-after`, a responder that exits non-zero
//! makes the exit status its exit code (255 when that does not fit), and 124 means it did not
//! exit.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use pyfcgi_proto::ProtocolStatus;

use crate::{Address, ClientError, Connection, Request, Response, Stream};
use crate::{ChildOutput, Spawned};

/// Management values `--get-values` asks for (spec §4.1).
const VALUE_NAMES: [&str; 3] = ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"];

/// How long a spawned responder gets to exit after its connection closes (or after
/// `--shutdown-after` asked it to).
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// Exit status when a responder told to shut down (`--shutdown-after`) did not exit.
const EXIT_CHILD_STAYED: i32 = 124;

/// Options of `pyfcgi request` (the binary's `pyfcgi request` flags give them; see its
/// `--help` for the full text).
#[derive(Debug, Clone)]
// Command-line switches are bools by nature.
#[allow(clippy::struct_excessive_bools)]
pub struct RequestArgs {
    /// Connect to a running responder.
    pub connect: Option<String>,

    /// Start the responder given after `--` as IIS does.
    pub spawn: bool,

    /// Start the responder given after `--` with a listening socket as its stdin and connect.
    pub spawn_listen: bool,

    /// Ask the spawned responder to shut down while request N is in flight (Windows.
    pub shutdown_after: Option<u32>,

    /// After the last response, wait for the spawned responder to exit on its own (as after.
    pub wait_exit: bool,

    /// HTTP method [default.
    pub method: Option<String>,

    /// Request header 'Name.
    pub headers: Vec<String>,

    /// Request body, like curl.
    pub data: Option<String>,

    /// Request body sent exactly as given.
    pub data_binary: Option<String>,

    /// Check that every response body is exactly DATA or the contents of @FILE.
    pub expect_body: Option<String>,

    /// Extra FastCGI param NAME=VALUE, replacing a derived one of the same name (repeatable).
    pub params: Vec<String>,

    /// Send the params IIS 10 sends (APPL_PHYSICAL_PATH, APPL_MD_PATH, URL, ...).
    pub iis: bool,

    /// Set FCGI_KEEP_CONN [default for --spawn and --spawn-listen].
    pub keep_conn: bool,

    /// Do not set FCGI_KEEP_CONN [default for --connect].
    pub no_keep_conn: bool,

    /// Send the request N times, printing each response (tests keep-alive and id cycling).
    pub repeat: u32,

    /// Seconds to wait for a connection or a response (0.
    pub timeout: f64,

    /// Print the responder's FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS and exit.
    pub get_values: bool,

    /// Print the status line and headers before the body (the default).
    pub include: bool,

    /// Print only the response body.
    pub body_only: bool,

    /// The request target.
    pub url: String,

    /// The responder's command line, for --spawn and --spawn-listen.
    pub command: Vec<String>,
}

impl Default for RequestArgs {
    /// No responder; GET `/` once, with a 30 s timeout.
    fn default() -> Self {
        Self {
            connect: None,
            spawn: false,
            spawn_listen: false,
            shutdown_after: None,
            wait_exit: false,
            method: None,
            headers: Vec::new(),
            data: None,
            data_binary: None,
            expect_body: None,
            params: Vec::new(),
            iis: false,
            keep_conn: false,
            no_keep_conn: false,
            repeat: 1,
            timeout: 30.0,
            get_values: false,
            include: false,
            body_only: false,
            url: "/".to_owned(),
            command: Vec::new(),
        }
    }
}

impl RequestArgs {
    pub fn keep_conn(&self) -> bool {
        if self.keep_conn {
            true
        } else if self.no_keep_conn {
            false
        } else {
            // IIS always keeps its one connection to a process it started.
            self.spawn || self.spawn_listen
        }
    }
}

/// Runs `pyfcgi request`, writing responses to `out` and the application's stderr (and
/// notes) to our stderr. Returns the exit code: 0, or 3 when the application refused a
/// request; errors carry their own ([`ClientError::exit_code`]).
pub async fn run(args: RequestArgs, out: &mut impl Write) -> Result<i32, ClientError> {
    let limit = timeout_from_secs(args.timeout)?;
    check_usage(&args)?;
    let request = if args.get_values {
        None
    } else {
        Some(build_request(&args).await?)
    };
    let expect = match &args.expect_body {
        Some(spec) => Some(load_body(spec, false).await?),
        None => None,
    };
    let mut session = within(
        limit,
        "the responder to accept a connection",
        Session::open(&args),
    )
    .await?;
    let result = match &request {
        None => print_values(&mut session, limit, out).await,
        Some(request) => {
            send_all(&mut session, request, &args, expect.as_deref(), limit, out).await
        }
    };
    session.close(result.is_err()).await;
    result
}

pub(crate) fn timeout_from_secs(secs: f64) -> Result<Option<Duration>, ClientError> {
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs).map(Some).map_err(|_| {
        ClientError::Usage(format!(
            "--timeout {secs} is not a number of seconds; give e.g. --timeout 30 (0: no limit)"
        ))
    })
}

fn check_usage(args: &RequestArgs) -> Result<(), ClientError> {
    let responders = usize::from(args.connect.is_some())
        + usize::from(args.spawn)
        + usize::from(args.spawn_listen);
    if responders != 1 {
        return Err(ClientError::Usage(
            "give exactly one of --connect ADDR, --spawn and --spawn-listen".to_owned(),
        ));
    }
    if args.repeat == 0 || args.shutdown_after == Some(0) {
        return Err(ClientError::Usage(
            "--repeat and --shutdown-after count from 1".to_owned(),
        ));
    }
    for (a, b, both) in [
        (
            args.wait_exit,
            args.shutdown_after.is_some(),
            "--wait-exit and --shutdown-after",
        ),
        (
            args.data.is_some(),
            args.data_binary.is_some(),
            "--data and --data-binary",
        ),
        (args.include, args.body_only, "--include and --body-only"),
    ] {
        if a && b {
            return Err(ClientError::Usage(format!(
                "{both} cannot be used together"
            )));
        }
    }
    let spawning = args.spawn || args.spawn_listen;
    if spawning && args.command.is_empty() {
        return Err(ClientError::Usage(
            "--spawn and --spawn-listen need the responder's command line after `--`, e.g. \
             `pyfcgi request --spawn / -- pyfcgi serve app:app`"
                .to_owned(),
        ));
    }
    if !spawning && !args.command.is_empty() {
        return Err(ClientError::Usage(format!(
            "a command after `--` ({}) is only used with --spawn or --spawn-listen",
            args.command.join(" ")
        )));
    }
    // On Windows the pipe takes a new client once the responder has disconnected the last.
    if cfg!(unix) && args.spawn && !args.keep_conn() && args.repeat > 1 {
        return Err(ClientError::Usage(
            "--spawn has a single connection, so --repeat needs FCGI_KEEP_CONN: drop \
             --no-keep-conn or use --spawn-listen"
                .to_owned(),
        ));
    }
    if args.wait_exit && !spawning {
        return Err(ClientError::Usage(
            "--wait-exit needs a responder this command starts (--spawn or --spawn-listen)"
                .to_owned(),
        ));
    }
    if let Some(n) = args.shutdown_after {
        if !spawning {
            return Err(ClientError::Usage(
                "--shutdown-after needs a responder this command starts (--spawn or --spawn-listen)"
                    .to_owned(),
            ));
        }
        if n > args.repeat {
            return Err(ClientError::Usage(format!(
                "--shutdown-after {n} needs at least {n} requests: add --repeat {n}"
            )));
        }
    }
    Ok(())
}

/// Awaits `fut`, giving up after `limit`.
async fn within<T>(
    limit: Option<Duration>,
    waiting_for: &'static str,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match limit {
        None => fut.await,
        Some(limit) => {
            tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| ClientError::Timeout {
                    secs: limit.as_secs_f64(),
                    waiting_for,
                })?
        }
    }
}

/// Reads a `-d`/`--data-binary` value: literal, `@FILE` or `@-`.
pub(crate) async fn load_body(spec: &str, strip_newlines: bool) -> Result<Vec<u8>, ClientError> {
    let Some(path) = spec.strip_prefix('@') else {
        return Ok(spec.as_bytes().to_vec());
    };
    let read_error = |source| ClientError::ReadBody {
        path: path.to_owned(),
        source,
    };
    let mut data = if path == "-" {
        // tokio's stdin needs the `io-std` feature; a blocking read on the blocking pool is
        // just as good for a one-shot read.
        tokio::task::spawn_blocking(|| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut data).map(|_| data)
        })
        .await
        .map_err(|e| read_error(std::io::Error::other(e)))?
        .map_err(read_error)?
    } else {
        tokio::fs::read(path).await.map_err(read_error)?
    };
    if strip_newlines {
        // curl's -d drops CR and LF from file contents.
        data.retain(|&b| b != b'\r' && b != b'\n');
    }
    Ok(data)
}

async fn build_request(args: &RequestArgs) -> Result<Request, ClientError> {
    build_request_from(&RequestShape {
        method: args.method.as_deref(),
        url: &args.url,
        headers: &args.headers,
        data: args.data.as_deref(),
        data_binary: args.data_binary.as_deref(),
        params: &args.params,
        iis: args.iis,
        keep_conn: args.keep_conn(),
    })
    .await
}

/// The request-shaping flags `pyfcgi request` and `pyfcgi bench` share.
pub(crate) struct RequestShape<'a> {
    pub method: Option<&'a str>,
    pub url: &'a str,
    pub headers: &'a [String],
    pub data: Option<&'a str>,
    pub data_binary: Option<&'a str>,
    pub params: &'a [String],
    pub iis: bool,
    pub keep_conn: bool,
}

/// Builds the request the shaping flags describe (bodies from `@FILE` are read here).
pub(crate) async fn build_request_from(args: &RequestShape<'_>) -> Result<Request, ClientError> {
    let body = match (args.data, args.data_binary) {
        (Some(data), _) => Some(load_body(data, true).await?),
        (None, Some(data)) => Some(load_body(data, false).await?),
        (None, None) => None,
    };
    let method = match (args.method, &body) {
        (Some(m), _) => m.to_owned(),
        (None, Some(_)) => "POST".to_owned(),
        (None, None) => "GET".to_owned(),
    };
    let mut builder = Request::builder(method, args.url.to_owned())
        .iis(args.iis)
        .keep_conn(args.keep_conn);
    let mut has_content_type = false;
    for header in args.headers {
        let Some((name, value)) = header.split_once(':') else {
            return Err(ClientError::Usage(format!(
                "-H {header:?} is not a header: write it as 'Name: value'"
            )));
        };
        has_content_type |= name.trim().eq_ignore_ascii_case("content-type");
        builder = builder.header(name.trim(), value.trim());
    }
    if args.data.is_some() && !has_content_type {
        builder = builder.header("Content-Type", "application/x-www-form-urlencoded");
    }
    if let Some(body) = body {
        builder = builder.body(Bytes::from(body));
    }
    for param in args.params {
        match param.split_once('=') {
            Some((name, value)) if !name.is_empty() => builder = builder.param(name, value),
            _ => {
                return Err(ClientError::Usage(format!(
                    "--param {param:?} is not NAME=VALUE"
                )));
            }
        }
    }
    builder.build()
}

/// The responder we talk to, and the current connection to it.
struct Session {
    conn: Option<Connection<Stream>>,
    /// Set for --connect, to open further connections.
    address: Option<Address>,
    child: Option<Spawned>,
}

impl Session {
    async fn open(args: &RequestArgs) -> Result<Self, ClientError> {
        if let Some(connect) = &args.connect {
            let address: Address = connect.parse()?;
            let conn = Connection::new(address.connect().await?);
            return Ok(Self {
                conn: Some(conn),
                address: Some(address),
                child: None,
            });
        }
        Self::spawn(args).await
    }

    async fn spawn(args: &RequestArgs) -> Result<Self, ClientError> {
        // With --iis on Windows the child gets exactly what IIS gives it: no stdout/stderr.
        let output = if cfg!(windows) && args.iis {
            ChildOutput::Null
        } else {
            ChildOutput::ToStderr
        };
        let (child, conn) = if args.spawn {
            Spawned::connected(&args.command, output).await?
        } else {
            Spawned::listening(&args.command, output).await?
        };
        Ok(Self {
            conn: Some(conn),
            address: None,
            child: Some(child),
        })
    }

    /// The current connection, or a new one when the last was not kept.
    async fn connection(&mut self) -> Result<&mut Connection<Stream>, ClientError> {
        if let Some(conn) = self.conn.take_if(|c| c.is_reusable()) {
            return Ok(self.conn.insert(conn));
        }
        self.conn = None;
        let conn = if let Some(address) = &self.address {
            Connection::new(address.connect().await?)
        } else {
            self.reconnect_child().await?
        };
        Ok(self.conn.insert(conn))
    }

    async fn reconnect_child(&mut self) -> Result<Connection<Stream>, ClientError> {
        match &mut self.child {
            Some(child) => child.connect().await,
            None => Err(ClientError::ConnectionUnusable(
                "there is no responder to reconnect to",
            )),
        }
    }

    /// Closes the connection and stops a spawned responder; after a failure, says whether the
    /// responder died (the likely cause).
    async fn close(mut self, failed: bool) {
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            if failed && let Some(status) = child.try_wait() {
                note(&format!(
                    "the responder `{}` exited ({status})",
                    child.command()
                ));
            }
            match child.shutdown(CHILD_GRACE).await {
                Ok(status) if !status.success() && !failed => {
                    tracing::debug!("responder exited with {status}");
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("stopping the responder: {}", e.report()),
            }
        }
    }
}

/// Writes a line to our stderr, ignoring failures (there is nowhere else to report them).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "pyfcgi request: {text}");
}

async fn print_values(
    session: &mut Session,
    limit: Option<Duration>,
    out: &mut impl Write,
) -> Result<i32, ClientError> {
    let conn = session.connection().await?;
    let values = within(
        limit,
        "FCGI_GET_VALUES_RESULT",
        conn.get_values(&VALUE_NAMES),
    )
    .await?;
    for (name, value) in values.iter() {
        writeln!(
            out,
            "{}={}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        )
        .map_err(ClientError::Output)?;
    }
    out.flush().map_err(ClientError::Output)?;
    Ok(0)
}

async fn send_all(
    session: &mut Session,
    request: &Request,
    args: &RequestArgs,
    expect: Option<&[u8]>,
    limit: Option<Duration>,
    out: &mut impl Write,
) -> Result<i32, ClientError> {
    let count = args.shutdown_after.unwrap_or(args.repeat);
    for n in 1..=count {
        let shutdown_now = args.shutdown_after == Some(n);
        // The child is set aside while the connection (borrowed from the session) is in use.
        let child = if shutdown_now {
            session.child.take()
        } else {
            None
        };
        let response = exchange(session, request, limit, child.as_ref()).await;
        if let Some(child) = child {
            session.child = Some(child);
        }
        let response = response?;
        let code = print_response(&response, args.body_only, out)?;
        if code != 0 {
            return Ok(code);
        }
        if let Some(expected) = expect {
            check_body(n, &response.head()?.body, expected)?;
        }
    }
    if expect.is_some() {
        note(&format!("{count} response bodies matched --expect-body"));
    }
    if args.shutdown_after.is_some() || args.wait_exit {
        return Ok(report_child_exit(session).await);
    }
    Ok(0)
}

/// Sends one request; with `shutdown`, asks that child to shut down while the request is in
/// flight.
async fn exchange(
    session: &mut Session,
    request: &Request,
    limit: Option<Duration>,
    shutdown: Option<&Spawned>,
) -> Result<Response, ClientError> {
    let conn = within(
        limit,
        "the responder to accept a connection",
        session.connection(),
    )
    .await?;
    let response = within(limit, "the response", conn.request(request));
    let Some(child) = shutdown else {
        return response.await;
    };
    // `join!` polls the request first: its records are on their way before the signal.
    let (response, ()) = tokio::join!(response, async { child.request_shutdown() });
    response
}

/// After `--shutdown-after` or with `--wait-exit`: waits for the responder to exit on its own (the connection still
/// open) and says how it went. Returns the exit status for `pyfcgi request`.
async fn report_child_exit(session: &mut Session) -> i32 {
    let Some(child) = session.child.as_mut() else {
        return 0;
    };
    let Some(status) = child.wait_for_exit(CHILD_GRACE).await else {
        note(&format!(
            "child did not exit within {} s of the shutdown request",
            CHILD_GRACE.as_secs()
        ));
        return EXIT_CHILD_STAYED;
    };
    let Some(code) = status.code() else {
        note(&format!("child was killed ({status})"));
        return 255;
    };
    note(&format!("child exited with code {code}"));
    if code == 0 {
        0
    } else {
        u8::try_from(code)
            .ok()
            .filter(|c| *c != 0)
            .map_or(255, i32::from)
    }
}

fn check_body(n: u32, got: &[u8], expected: &[u8]) -> Result<(), ClientError> {
    if got == expected {
        return Ok(());
    }
    let first_difference = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    Err(ClientError::BodyMismatch {
        request: n,
        got: got.len(),
        expected: expected.len(),
        first_difference,
    })
}

/// Prints one response; returns 3 for a refused request.
fn print_response(
    response: &Response,
    body_only: bool,
    out: &mut impl Write,
) -> Result<i32, ClientError> {
    if !response.stderr.is_empty() {
        write_app_stderr(&response.stderr);
    }
    if !response.is_complete() {
        note(&format!(
            "the application refused the request: {}",
            describe_refusal(response.protocol_status)
        ));
        return Ok(3);
    }
    let head = response.head()?;
    let mut text = Vec::new();
    if !body_only {
        text.extend_from_slice(
            format!("HTTP/1.1 {} {}", head.status, head.reason)
                .trim_end()
                .as_bytes(),
        );
        text.extend_from_slice(b"\r\n");
        for (name, value) in &head.headers {
            text.extend_from_slice(name.as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value);
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b"\r\n");
    }
    out.write_all(&text).map_err(ClientError::Output)?;
    out.write_all(&head.body).map_err(ClientError::Output)?;
    out.flush().map_err(ClientError::Output)?;
    Ok(0)
}

/// Copies the application's FCGI_STDERR to our stderr, each line prefixed.
fn write_app_stderr(data: &[u8]) {
    let mut err = std::io::stderr().lock();
    for line in data.split_inclusive(|&b| b == b'\n') {
        let _ = err.write_all(b"fastcgi stderr: ");
        let _ = err.write_all(line);
    }
    if !data.ends_with(b"\n") {
        let _ = err.write_all(b"\n");
    }
}

fn describe_refusal(status: ProtocolStatus) -> String {
    match status {
        ProtocolStatus::CantMpxConn => "FCGI_CANT_MPX_CONN (it takes one request per connection \
                                        and another one is active)"
            .to_owned(),
        ProtocolStatus::Overloaded => {
            "FCGI_OVERLOADED (it is out of capacity; retry later or raise its limits)".to_owned()
        }
        ProtocolStatus::UnknownRole => {
            "FCGI_UNKNOWN_ROLE (it does not serve the Responder role)".to_owned()
        }
        other => format!("unknown FCGI_END_REQUEST protocol status {}", other.as_u8()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(addr: &str) -> RequestArgs {
        RequestArgs {
            connect: Some(addr.to_owned()),
            ..RequestArgs::default()
        }
    }

    fn spawn(command: &[&str]) -> RequestArgs {
        RequestArgs {
            spawn: true,
            command: command.iter().map(|c| (*c).to_owned()).collect(),
            ..RequestArgs::default()
        }
    }

    #[test]
    fn keep_conn_defaults_by_responder_and_flags_override() {
        assert!(spawn(&["x"]).keep_conn());
        assert!(!connect("h:1").keep_conn());
        let args = RequestArgs {
            no_keep_conn: true,
            ..spawn(&["x"])
        };
        assert!(!args.keep_conn());
        let args = RequestArgs {
            keep_conn: true,
            ..connect("h:1")
        };
        assert!(args.keep_conn());
    }

    #[test]
    fn exactly_one_responder_is_a_usage_error_otherwise() {
        assert!(check_usage(&RequestArgs::default()).is_err());
        let both = RequestArgs {
            spawn: true,
            ..connect("h:1")
        };
        assert!(check_usage(&both).is_err());
        assert!(check_usage(&connect("h:1")).is_ok());
        let zero = RequestArgs {
            repeat: 0,
            ..connect("h:1")
        };
        assert!(check_usage(&zero).is_err());
    }

    #[test]
    fn usage_errors_explain_themselves() {
        let args = spawn(&[]);
        assert!(
            check_usage(&args)
                .unwrap_err()
                .to_string()
                .contains("after `--`")
        );
        let args = RequestArgs {
            command: vec!["cmd".into()],
            ..connect("h:1")
        };
        assert!(check_usage(&args).is_err());
        let args = RequestArgs {
            no_keep_conn: true,
            repeat: 2,
            ..spawn(&["x"])
        };
        // Only Unix's socket pair is single-use; IIS's pipe takes the next client.
        assert_eq!(check_usage(&args).is_err(), cfg!(unix));
        let args = RequestArgs {
            shutdown_after: Some(1),
            ..connect("h:1")
        };
        assert!(
            check_usage(&args)
                .unwrap_err()
                .to_string()
                .contains("--spawn")
        );
        let args = RequestArgs {
            shutdown_after: Some(2),
            ..spawn(&["x"])
        };
        assert!(
            check_usage(&args)
                .unwrap_err()
                .to_string()
                .contains("--repeat 2")
        );
        let args = RequestArgs {
            shutdown_after: Some(2),
            repeat: 3,
            ..spawn(&["x"])
        };
        assert!(check_usage(&args).is_ok());
        let args = RequestArgs {
            shutdown_after: Some(0),
            ..spawn(&["x"])
        };
        assert!(check_usage(&args).is_err());
        assert!(timeout_from_secs(-1.0).is_err());
        assert_eq!(timeout_from_secs(0.0).unwrap(), None);
    }

    #[tokio::test]
    async fn data_makes_a_form_post() {
        let args = RequestArgs {
            data: Some("a=1".into()),
            headers: vec!["X-A: b".into()],
            params: vec!["SCRIPT_NAME=/s".into()],
            url: "/p".into(),
            ..connect("h:1")
        };
        let req = build_request(&args).await.unwrap();
        assert_eq!(req.param_str("REQUEST_METHOD"), Some("POST"));
        assert_eq!(
            req.param_str("CONTENT_TYPE"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(req.param_str("CONTENT_LENGTH"), Some("3"));
        assert_eq!(req.param_str("HTTP_X_A"), Some("b"));
        assert_eq!(req.param_str("SCRIPT_NAME"), Some("/s"));
        assert_eq!(&req.body()[..], b"a=1");
    }

    #[tokio::test]
    async fn bad_header_and_param_are_usage_errors() {
        let args = RequestArgs {
            headers: vec!["nocolon".into()],
            ..connect("h:1")
        };
        assert!(matches!(
            build_request(&args).await,
            Err(ClientError::Usage(_))
        ));
        let args = RequestArgs {
            params: vec!["=v".into()],
            ..connect("h:1")
        };
        assert!(matches!(
            build_request(&args).await,
            Err(ClientError::Usage(_))
        ));
    }

    #[tokio::test]
    async fn data_binary_reads_a_file_exactly() {
        let path = std::env::temp_dir().join(format!("pyfcgi-client-body-{}", std::process::id()));
        std::fs::write(&path, b"line1\r\nline2\n").unwrap();
        let spec = format!("@{}", path.display());
        assert_eq!(load_body(&spec, false).await.unwrap(), b"line1\r\nline2\n");
        assert_eq!(load_body(&spec, true).await.unwrap(), b"line1line2");
        std::fs::remove_file(&path).unwrap();
        let err = load_body("@/nonexistent/body", false).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/body"));
    }

    #[test]
    fn body_mismatch_names_the_first_difference() {
        assert!(check_body(1, b"abc", b"abc").is_ok());
        let err = check_body(7, b"abXd", b"abcd").unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert!(err.to_string().contains("response 7"), "{err}");
        assert!(err.to_string().contains("byte 2"), "{err}");
        let err = check_body(1, b"ab", b"abc").unwrap_err();
        assert!(err.to_string().contains("2 bytes, expected 3"), "{err}");
    }

    fn complete(stdout: &'static [u8]) -> Response {
        Response {
            stdout: Bytes::from_static(stdout),
            stderr: Bytes::new(),
            app_status: 0,
            protocol_status: ProtocolStatus::RequestComplete,
        }
    }

    #[test]
    fn include_mode_prints_an_http_head() {
        let mut out = Vec::new();
        let code =
            print_response(&complete(b"Status: 201\nX-A: 1\n\nbody\0"), false, &mut out).unwrap();
        assert_eq!(code, 0);
        assert_eq!(out, b"HTTP/1.1 201 Created\r\nX-A: 1\r\n\r\nbody\0");
        let mut out = Vec::new();
        print_response(&complete(b"\r\nonly"), true, &mut out).unwrap();
        assert_eq!(out, b"only");
    }

    #[test]
    fn refusal_exits_with_three_and_bad_head_with_two() {
        let mut refused = complete(b"");
        refused.protocol_status = ProtocolStatus::Overloaded;
        assert_eq!(print_response(&refused, false, &mut Vec::new()).unwrap(), 3);
        let err = print_response(&complete(b"no head"), false, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn spawned_responder_that_dies_gives_exit_code_two() {
        let args = RequestArgs {
            timeout: 10.0,
            ..spawn(&["/bin/sh", "-c", "exit 0"])
        };
        let err = run(args, &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{}", err.report());
    }

    /// A TCP listener serving the fake responder on every connection; returns its address.
    async fn fake_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(crate::fake_responder::responder(
                    stream,
                    crate::fake_responder::Behaviour::Echo,
                ));
            }
        });
        addr
    }

    async fn run_ok(args: RequestArgs) -> String {
        let mut out = Vec::new();
        let code = run(args, &mut out).await.unwrap();
        assert_eq!(code, 0);
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn repeat_reconnects_without_keep_conn_and_reuses_with_it() {
        let addr = fake_server().await;
        let out = run_ok(RequestArgs {
            repeat: 3,
            url: "/x".into(),
            ..connect(&addr)
        })
        .await;
        assert_eq!(
            out.matches("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nid=1 ")
                .count(),
            3,
            "{out}"
        );
        let out = run_ok(RequestArgs {
            keep_conn: true,
            repeat: 3,
            body_only: true,
            data: Some("ab".into()),
            url: "/x".into(),
            ..connect(&addr)
        })
        .await;
        assert_eq!(
            out,
            "id=1 len=2 sum=195id=2 len=2 sum=195id=3 len=2 sum=195"
        );
    }

    #[tokio::test]
    async fn get_values_prints_name_value_lines() {
        let addr = fake_server().await;
        let out = run_ok(RequestArgs {
            get_values: true,
            ..connect(&addr)
        })
        .await;
        assert_eq!(
            out,
            "FCGI_MAX_CONNS=1024\nFCGI_MAX_REQS=131072\nFCGI_MPXS_CONNS=1\n"
        );
    }

    #[tokio::test]
    async fn unreachable_address_gives_exit_code_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let addr = format!("127.0.0.1:{port}");
        let args = connect(&addr);
        let err = run(args, &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.report().contains(&addr));
    }
}
