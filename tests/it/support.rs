//! Shared test plumbing: temp dirs, the pyfcgi process, nginx, a raw FastCGI client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pyfcgi_proto::client::{ClientConnection, ClientEvent};
use pyfcgi_proto::{ProtocolStatus, Role, encode};

/// The binary under test.
pub fn pyfcgi() -> &'static str {
    env!("CARGO_BIN_EXE_pyfcgi")
}

/// The lines of the file at `path` once it has at least `n`, or what it has after 10 s.
pub fn file_lines(path: &Path, n: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pyfcgi-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a pid we spawned.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits for `child` up to `limit`; kills it when the time is up and returns None.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `pyfcgi serve`, with its stderr (the log) captured. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
    /// Set once the log reader has read stderr to its end (everyone writing it has exited).
    log_done: Arc<std::sync::atomic::AtomicBool>,
    _dir: Option<TempDir>,
}

impl Server {
    /// Starts `pyfcgi serve ARGS --bind tcp:127.0.0.1:0` and learns the port from the log.
    pub fn tcp(args: &[&str]) -> Self {
        Self::start(args, "127.0.0.1:0", None)
    }

    /// Starts on a Unix socket in a fresh temp dir; `addr` is `unix:PATH`.
    pub fn unix(args: &[&str]) -> Self {
        let dir = TempDir::new("sock");
        let sock = dir.path().join("pyfcgi.sock");
        Self::start(args, &format!("unix:{}", sock.display()), Some(dir))
    }

    /// Starts `pyfcgi serve ARGS` on the Unix socket `sock` with info logging, as a front end
    /// (nginx, Apache, lighttpd) configured with that path expects.
    pub fn on_unix_socket(args: &[&str], sock: &Path) -> Self {
        let mut cmd = serve_command(args);
        cmd.arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .env("PYFCGI_LOG", "info")
            .stdin(Stdio::null());
        Self::from_command(cmd, None)
    }

    fn start(args: &[&str], bind: &str, dir: Option<TempDir>) -> Self {
        let mut cmd = serve_command(args);
        cmd.args(["--bind", bind]).stdin(Stdio::null());
        Self::from_command(cmd, dir)
    }

    /// The log so far (ANSI colours stripped).
    pub fn log(&self) -> String {
        strip_ansi(&self.log.lock().unwrap())
    }

    /// Waits until the log contains `needle` (up to 10 s).
    pub fn wait_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A TCP connection to the server (TCP servers only).
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        kill(self.child.id(), libc::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "serving" event of `--log-format json`.
fn is_json_serving_line(line: &str) -> bool {
    json_serving_listen(line).is_some()
}

/// The `listen` of a JSON "serving" event.
fn json_serving_listen(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if v["message"] != "serving" {
        return None;
    }
    v["listen"].as_str().map(str::to_owned)
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Encodes a whole Responder request.
pub fn request_bytes(id: u16, keep_conn: bool, params: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, id, Role::Responder, keep_conn);
    encode::params(&mut out, id, params).unwrap();
    encode::params_end(&mut out, id);
    encode::stdin(&mut out, id, body);
    encode::stdin_end(&mut out, id);
    out.to_vec()
}

/// A response read off a raw connection.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub status: Option<ProtocolStatus>,
}

/// Reads records from `s` until END_REQUEST for `id`.
pub fn read_response(s: &mut impl Read, id: u16) -> std::io::Result<RawResponse> {
    let mut conn = ClientConnection::new();
    let mut buf = BytesMut::new();
    let mut resp = RawResponse::default();
    let mut chunk = [0u8; 65536];
    loop {
        while let Some(ev) = conn
            .decode(&mut buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            match ev {
                ClientEvent::Stdout { id: i, data } if i == id => {
                    resp.stdout.extend_from_slice(&data)
                }
                ClientEvent::Stderr { id: i, data } if i == id => {
                    resp.stderr.extend_from_slice(&data)
                }
                ClientEvent::End {
                    id: i,
                    app_status,
                    status,
                } if i == id => {
                    resp.app_status = app_status;
                    resp.status = Some(status);
                    return Ok(resp);
                }
                _ => {}
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before END_REQUEST",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One whole request/response on a new TCP connection.
pub fn roundtrip(server: &Server, params: &[(&str, &str)], body: &[u8]) -> RawResponse {
    let mut s = server.connect();
    s.write_all(&request_bytes(1, false, params, body)).unwrap();
    read_response(&mut s, 1).unwrap()
}

/// A free loopback TCP port (bind to 0, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nginx instance on a loopback port, stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `locations` inside a `server { listen 127.0.0.1:PORT; }` block and
    /// `http_extra` at http level (upstreams).
    pub fn start(http_extra: &str, locations: &str) -> Self {
        let nginx = [
            "/usr/sbin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/nginx/sbin/nginx",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed: run scripts/install-deps");
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r"
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 100m;
    {http_extra}
    server {{
        listen 127.0.0.1:{port};
        {locations}
    }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .args([
                "-p",
                &dir.path().display().to_string(),
                "-c",
                &conf_path.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    /// `fastcgi_param`s that pass the usual CGI variables (Debian's fastcgi_params, inline).
    pub fn fastcgi_params() -> &'static str {
        r"
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param SCRIPT_NAME '';
        fastcgi_param PATH_INFO $uri;
        fastcgi_param REQUEST_URI $request_uri;
        fastcgi_param DOCUMENT_URI $document_uri;
        fastcgi_param SERVER_PROTOCOL $server_protocol;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
        fastcgi_param REMOTE_ADDR $remote_addr;
        fastcgi_param REMOTE_PORT $remote_port;
        fastcgi_param SERVER_ADDR $server_addr;
        fastcgi_param SERVER_PORT $server_port;
        fastcgi_param SERVER_NAME $server_name;
        "
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(self.child.id(), libc::SIGQUIT);
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
        }
    }
}

/// A minimal HTTP/1.1 client: one request per connection (`Connection: close`), returns the
/// status code, the header block and the body (chunked bodies decoded).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

impl Server {
    /// Starts `cmd` (a `pyfcgi serve ...` command whose stdin the caller chose) with its log
    /// captured, and waits for the "serving" line like [`Server::tcp`]. `addr` is whatever
    /// follows `listen=` (without `tcp:`). The command is consumed so that its copies of any
    /// inherited descriptors are closed once the child has them.
    pub fn from_command(mut cmd: Command, dir: Option<TempDir>) -> Self {
        if !cmd.get_envs().any(|(k, _)| k == "PYFCGI_LOG") {
            cmd.env(
                "PYFCGI_LOG",
                std::env::var("PYFCGI_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            );
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pyfcgi");
        drop(cmd);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&log_done);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if (line.contains("serving listen=") || is_json_serving_line(&line))
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            done.store(true, Ordering::Release);
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pyfcgi did not start: {}", log.lock().unwrap());
        };
        let line = strip_ansi(&line);
        // `--log-format json`: the same event as an object.
        let line = json_serving_listen(&line).map_or(line, |listen| format!("listen={listen}"));
        let addr = line
            .split("listen=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no listen= in {line:?}")
            })
            .trim_start_matches("tcp:")
            .to_owned();
        Self {
            child,
            addr,
            log,
            log_done,
            _dir: dir,
        }
    }

    /// Like [`Server::tcp`], with extra environment variables for the server.
    pub fn tcp_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = serve_command(args);
        cmd.args(["--bind", "127.0.0.1:0"]).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::from_command(cmd, None)
    }

    /// Waits up to `limit` for the server to exit on its own (no signal is sent); kills it and
    /// returns None when the time is up.
    ///
    /// Once it has exited, its last lines are in [`Server::log`] (the reader is given up to
    /// 5 s more to reach the end of stderr, which a worker it left behind may hold open).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_timeout(&mut self.child, limit)?;
        let end = Instant::now() + Duration::from_secs(5);
        while !self.log_done.load(Ordering::Acquire) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(status)
    }
}

/// `pyfcgi serve ARGS` with the test log level; stdin, --bind and the rest are up to the caller.
pub fn serve_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(pyfcgi());
    cmd.arg("serve").args(args).env(
        "PYFCGI_LOG",
        std::env::var("PYFCGI_TEST_LOG").unwrap_or_else(|_| "debug".into()),
    );
    cmd
}

/// What a finished `pyfcgi` command produced.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `pyfcgi ARGS` with `env` added and `stdin` fed to it (null when None), collecting
/// stdout and stderr; panics (after killing it) when it runs longer than `limit`.
pub fn run_pyfcgi(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> CmdOutput {
    let mut cmd = Command::new(pyfcgi());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn pyfcgi");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    // Readers report through channels: a grandchild holding a pipe open must not wedge us.
    let collect = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            let _ = tx.send(v);
        });
        rx
    };
    let out_rx = collect(Box::new(child.stdout.take().unwrap()));
    let err_rx = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait_timeout(&mut child, limit);
    let elapsed = start.elapsed();
    let grace = Duration::from_secs(10);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = strip_ansi(&String::from_utf8_lossy(
        &err_rx.recv_timeout(grace).unwrap_or_default(),
    ));
    let Some(status) = status else {
        panic!(
            "`pyfcgi {}` ran longer than {limit:?}; stderr:\n{stderr}",
            args.join(" ")
        );
    };
    CmdOutput {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// Like [`request_bytes`], with params as raw bytes (not necessarily UTF-8) and the body sent
/// in `STDIN` records of at most `piece` bytes (0: as few records as possible).
pub fn request_bytes_raw(
    id: u16,
    keep_conn: bool,
    params: &[(&[u8], &[u8])],
    body: &[u8],
    piece: usize,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::begin_request(&mut out, id, Role::Responder, keep_conn);
    encode::params(&mut out, id, params).unwrap();
    encode::params_end(&mut out, id);
    if piece == 0 {
        encode::stdin(&mut out, id, body);
    } else {
        for p in body.chunks(piece) {
            encode::stdin(&mut out, id, p);
        }
    }
    encode::stdin_end(&mut out, id);
    out.to_vec()
}
