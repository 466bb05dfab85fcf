//! Starting a responder exactly as IIS's FastCGI module does (research/iis-fastcgi.md §1.3–§1.5).
//!
//! * [`Spawned::connected`] (`protocol="NamedPipe"`, the default): `CreateNamedPipeW`
//!   `\\.\pipe\IISFCGI-<uuid>` (duplex, overlapped, byte mode, one instance, 4096-byte
//!   buffers, inheritable), then the client end is opened with `CreateFileW` *before* the child
//!   exists, so the child's `ConnectNamedPipe` finds it already connected.
//! * [`Spawned::listening`] (`protocol="Tcp"`): a listening socket on 127.0.0.1, port 0.
//!
//! The child gets the transport as stdin, `INVALID_HANDLE_VALUE` as stdout and stderr (with
//! [`ChildOutput::Null`]), `_FCGI_SHUTDOWN_EVENT_` = the decimal value of an inheritable
//! manual-reset event, `_FCGI_X_PIPE_` = the pipe name (pipe mode only) ahead of our own
//! environment, and inherits only those handles (`PROC_THREAD_ATTRIBUTE_HANDLE_LIST`).

use std::ffi::OsString;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, IntoRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::net::windows::named_pipe::NamedPipeClient;
use windows_sys::Win32::Foundation::{
    DUPLICATE_SAME_ACCESS, DuplicateHandle, ERROR_PIPE_BUSY, GENERIC_READ, GENERIC_WRITE, HANDLE,
    HANDLE_FLAG_INHERIT, INVALID_HANDLE_VALUE, SetHandleInformation, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, OPEN_EXISTING, PIPE_ACCESS_DUPLEX,
};
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, STD_OUTPUT_HANDLE};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::{
    CREATE_UNICODE_ENVIRONMENT, CreateEventW, CreateProcessW, DETACHED_PROCESS,
    DeleteProcThreadAttributeList, EXTENDED_STARTUPINFO_PRESENT, GetCurrentProcess,
    GetExitCodeProcess, InitializeProcThreadAttributeList, LPPROC_THREAD_ATTRIBUTE_LIST,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST, PROCESS_INFORMATION, STARTF_USESTDHANDLES, STARTUPINFOEXW,
    SetEvent, TerminateProcess, UpdateProcThreadAttribute, WaitForSingleObject,
};

use crate::{ClientError, Connection, Stream};

/// IIS passes the shutdown event's handle value in this variable.
const SHUTDOWN_EVENT_VAR: &str = "_FCGI_SHUTDOWN_EVENT_";
/// How long [`Spawned::connect`] keeps retrying.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// IIS's pipe buffers, both directions.
const PIPE_BUFFER: u32 = 4096;
/// How often the process is polled while waiting for it to exit.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Where a spawned responder's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutput {
    /// Both go where ours go.
    Inherit,
    /// Both are `INVALID_HANDLE_VALUE` and the process has no console, exactly as under IIS.
    Null,
    /// Both go to our stderr, so our stdout carries only the response.
    ToStderr,
}

/// The transport the child got.
#[derive(Debug)]
enum Transport {
    Pipe { name: String },
    Tcp { addr: SocketAddr },
}

/// A responder process started by [`Spawned::connected`] or [`Spawned::listening`].
///
/// Dropping it terminates the process; [`Spawned::shutdown`] lets it exit gracefully.
#[derive(Debug)]
pub struct Spawned {
    process: OwnedHandle,
    pid: u32,
    command: String,
    transport: Transport,
    /// The `_FCGI_SHUTDOWN_EVENT_` event.
    event: OwnedHandle,
    status: Option<ExitStatus>,
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

fn inheritable() -> SECURITY_ATTRIBUTES {
    SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: std::ptr::null_mut(),
        bInheritHandle: 1,
    }
}

/// Takes ownership of a handle a Win32 call returned, or the last OS error for the value
/// that call uses to signal failure (`INVALID_HANDLE_VALUE` or NULL).
fn owned(h: HANDLE) -> io::Result<OwnedHandle> {
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle just returned to us; nothing else owns it.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
}

/// A fresh `IISFCGI-` suffix shaped like IIS's UUIDs (uniqueness is all that matters).
fn uuid_ish() -> String {
    let a = RandomState::new().hash_one(std::process::id());
    let b = RandomState::new().hash_one(SystemTime::now());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Opens the client end of the pipe, overlapped, as IIS does.
fn open_pipe_client(name: &str) -> io::Result<OwnedHandle> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated and outlives the call; no security attributes (not
    // inheritable) and no template.
    owned(unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    })
}

fn pipe_client(handle: OwnedHandle) -> io::Result<Stream> {
    // SAFETY: an open, overlapped pipe client handle whose ownership we pass on.
    let client = unsafe { NamedPipeClient::from_raw_handle(handle.into_raw_handle()) }?;
    Ok(Stream::Pipe(client))
}

/// Quotes one argument the way `CommandLineToArgvW` (and the MSVC runtime) splits it back.
fn quote_arg(arg: &str, out: &mut String) {
    if !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\x0b', '"']) {
        out.push_str(arg);
        return;
    }
    out.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                // Backslashes before a quote are escaped, and so is the quote.
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    // Backslashes before the closing quote are escaped.
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
}

fn command_line(cmd: &[String]) -> String {
    let mut line = String::new();
    for (i, arg) in cmd.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        quote_arg(arg, &mut line);
    }
    line
}

/// A `CREATE_UNICODE_ENVIRONMENT` block: `first` (IIS puts its variables first), then ours
/// without any of the same names.
fn environment_block(first: &[(&str, String)]) -> Vec<u16> {
    let mut block = Vec::new();
    for (name, value) in first {
        block.extend(format!("{name}={value}").encode_utf16());
        block.push(0);
    }
    for (name, value) in std::env::vars_os() {
        let taken = first
            .iter()
            .any(|(n, _)| OsString::from(n).eq_ignore_ascii_case(&name));
        if taken || name.is_empty() {
            continue;
        }
        block.extend(name.encode_wide());
        block.push(u16::from(b'='));
        block.extend(value.encode_wide());
        block.push(0);
    }
    block.push(0);
    if first.is_empty() && block.len() == 1 {
        block.push(0);
    }
    block
}

/// An inheritable duplicate of one of our standard handles, if it is usable.
fn inheritable_copy(which: u32) -> io::Result<Option<OwnedHandle>> {
    // SAFETY: reads the process's standard-handle table.
    let h = unsafe { GetStdHandle(which) };
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return Ok(None);
    }
    let mut dup: HANDLE = std::ptr::null_mut();
    // SAFETY: duplicates a handle of ours within our process into a live local.
    let ok = unsafe {
        let me = GetCurrentProcess();
        DuplicateHandle(me, h, me, &raw mut dup, 0, 1, DUPLICATE_SAME_ACCESS)
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    owned(dup).map(Some)
}

/// A `PROC_THREAD_ATTRIBUTE_LIST` restricting inheritance to `handles` (as IIS does).
struct HandleList {
    buf: Vec<usize>,
    /// The attribute points into this; it must live as long as the list.
    _handles: Vec<HANDLE>,
}

impl HandleList {
    fn new(handles: Vec<HANDLE>) -> io::Result<Self> {
        let mut size = 0usize;
        // SAFETY: the documented size query (null list); it "fails" with
        // ERROR_INSUFFICIENT_BUFFER and sets `size`.
        unsafe { InitializeProcThreadAttributeList(std::ptr::null_mut(), 1, 0, &raw mut size) };
        if size == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0usize; size.div_ceil(size_of::<usize>())];
        let list: LPPROC_THREAD_ATTRIBUTE_LIST = buf.as_mut_ptr().cast();
        // SAFETY: `buf` has at least `size` bytes, suitably aligned.
        if unsafe { InitializeProcThreadAttributeList(list, 1, 0, &raw mut size) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let this = Self {
            buf,
            _handles: handles,
        };
        // SAFETY: the list was initialised above; the value points to the handle array that
        // `this` keeps alive (a Vec's heap buffer does not move with the Vec).
        let ok = unsafe {
            UpdateProcThreadAttribute(
                this.list(),
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                this._handles.as_ptr().cast(),
                size_of_val(this._handles.as_slice()),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(this)
    }

    fn list(&self) -> LPPROC_THREAD_ATTRIBUTE_LIST {
        self.buf.as_ptr().cast_mut().cast()
    }
}

impl Drop for HandleList {
    fn drop(&mut self) {
        // SAFETY: the list was initialised in `new` and is deleted once.
        unsafe { DeleteProcThreadAttributeList(self.list()) };
    }
}

/// Starts `cmd` with `stdin` as its standard input and `env` ahead of our environment,
/// inheriting only `stdin`, `also_inherit` and the output handles.
fn create_process(
    cmd: &[String],
    stdin: HANDLE,
    also_inherit: &[HANDLE],
    output: ChildOutput,
    env: &[(&str, String)],
) -> io::Result<(OwnedHandle, u32)> {
    if cmd.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given: put the responder's command line after `--`",
        ));
    }
    let (out, err) = match output {
        ChildOutput::Null => (None, None),
        ChildOutput::Inherit => (
            inheritable_copy(STD_OUTPUT_HANDLE)?,
            inheritable_copy(STD_ERROR_HANDLE)?,
        ),
        ChildOutput::ToStderr => (
            inheritable_copy(STD_ERROR_HANDLE)?,
            inheritable_copy(STD_ERROR_HANDLE)?,
        ),
    };
    let raw = |h: &Option<OwnedHandle>| {
        h.as_ref()
            .map_or(INVALID_HANDLE_VALUE, |h| h.as_raw_handle() as HANDLE)
    };
    let mut handles = vec![stdin];
    handles.extend_from_slice(also_inherit);
    handles.extend(
        out.iter()
            .chain(err.iter())
            .map(|h| h.as_raw_handle() as HANDLE),
    );
    let list = HandleList::new(handles)?;
    // SAFETY: all-zero is a valid STARTUPINFOEXW (plain data: sizes, flags, handles).
    let mut si: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    si.StartupInfo.cb = size_of::<STARTUPINFOEXW>() as u32;
    si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    si.StartupInfo.hStdInput = stdin;
    si.StartupInfo.hStdOutput = raw(&out);
    si.StartupInfo.hStdError = raw(&err);
    si.lpAttributeList = list.list();
    let mut flags = CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT;
    if output == ChildOutput::Null {
        // IIS gives its FastCGI processes no console.
        flags |= DETACHED_PROCESS;
    }
    let mut line = wide(&command_line(cmd));
    let env = environment_block(env);
    let mut pi = PROCESS_INFORMATION::default();
    // SAFETY: every pointer is to a live local or null where allowed: the command line is a
    // mutable NUL-terminated buffer (CreateProcessW may write to it), the environment block is
    // double-NUL-terminated UTF-16, `si` is a STARTUPINFOEXW as EXTENDED_STARTUPINFO_PRESENT
    // says, and its attribute list and handles outlive the call.
    let ok = unsafe {
        CreateProcessW(
            std::ptr::null(),
            line.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            1,
            flags,
            env.as_ptr().cast(),
            std::ptr::null(),
            &raw const si.StartupInfo,
            &raw mut pi,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    drop(owned(pi.hThread));
    Ok((owned(pi.hProcess)?, pi.dwProcessId))
}

fn make_inheritable(h: HANDLE) -> io::Result<()> {
    // SAFETY: sets a flag on a handle we own.
    if unsafe { SetHandleInformation(h, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn shutdown_event() -> io::Result<OwnedHandle> {
    let sa = inheritable();
    // SAFETY: inheritable, manual-reset, initially non-signalled, unnamed — IIS's event.
    owned(unsafe { CreateEventW(&raw const sa, 1, 0, std::ptr::null()) })
}

impl Spawned {
    /// Starts `cmd` as IIS does in its default NamedPipe mode and returns the connection on
    /// the client end (already connected before the child started).
    // Async although nothing is awaited: registering the pipe with tokio needs a runtime, and
    // the signature matches the Unix twin.
    #[allow(clippy::unused_async)]
    pub async fn connected(
        cmd: &[String],
        output: ChildOutput,
    ) -> Result<(Self, Connection<Stream>), ClientError> {
        let command = cmd.join(" ");
        let spawn_error = |source| ClientError::Spawn {
            command: command.clone(),
            source,
        };
        let name = format!(r"\\.\pipe\IISFCGI-{}", uuid_ish());
        let wname = wide(&name);
        let sa = inheritable();
        // SAFETY: `wname` is NUL-terminated and `sa` is live for the call.
        let server = owned(unsafe {
            CreateNamedPipeW(
                wname.as_ptr(),
                PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT,
                1,
                PIPE_BUFFER,
                PIPE_BUFFER,
                0,
                &raw const sa,
            )
        })
        .map_err(spawn_error)?;
        // IIS connects before the child exists.
        let client = open_pipe_client(&name).map_err(spawn_error)?;
        let event = shutdown_event().map_err(spawn_error)?;
        let env = [
            (
                SHUTDOWN_EVENT_VAR,
                (event.as_raw_handle() as usize).to_string(),
            ),
            ("_FCGI_X_PIPE_", name.clone()),
        ];
        let (process, pid) = create_process(
            cmd,
            server.as_raw_handle() as HANDLE,
            &[event.as_raw_handle() as HANDLE],
            output,
            &env,
        )
        .map_err(spawn_error)?;
        // The child has its copy; without ours, its exit breaks the pipe and we notice.
        drop(server);
        let spawned = Self {
            process,
            pid,
            command,
            transport: Transport::Pipe { name },
            event,
            status: None,
        };
        let stream = pipe_client(client).map_err(ClientError::Io)?;
        Ok((spawned, Connection::new(stream)))
    }

    /// Starts `cmd` as IIS does with `protocol="Tcp"`: stdin is a listening socket on
    /// 127.0.0.1 (no `_FCGI_X_PIPE_`), and we connect to it.
    pub async fn listening(
        cmd: &[String],
        output: ChildOutput,
    ) -> Result<(Self, Connection<Stream>), ClientError> {
        use std::os::windows::io::AsRawSocket;
        let command = cmd.join(" ");
        let spawn_error = |source| ClientError::Spawn {
            command: command.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(spawn_error)?;
        let addr = listener.local_addr().map_err(spawn_error)?;
        let socket = listener.as_raw_socket() as HANDLE;
        make_inheritable(socket).map_err(spawn_error)?;
        let event = shutdown_event().map_err(spawn_error)?;
        let env = [(
            SHUTDOWN_EVENT_VAR,
            (event.as_raw_handle() as usize).to_string(),
        )];
        let (process, pid) = create_process(
            cmd,
            socket,
            &[event.as_raw_handle() as HANDLE],
            output,
            &env,
        )
        .map_err(spawn_error)?;
        drop(listener);
        let mut spawned = Self {
            process,
            pid,
            command,
            transport: Transport::Tcp { addr },
            event,
            status: None,
        };
        let conn = spawned.connect().await?;
        Ok((spawned, conn))
    }

    /// The listening socket of a [`Spawned::listening`] child has no path on Windows.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        None
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        Some(self.pid)
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let h = self.process.as_raw_handle() as HANDLE;
            // SAFETY: queries our own process handle.
            if unsafe { WaitForSingleObject(h, 0) } == WAIT_OBJECT_0 {
                let mut code = 0u32;
                // SAFETY: as above; `code` is a live local.
                if unsafe { GetExitCodeProcess(h, &raw mut code) } != 0 {
                    self.status = Some(ExitStatus::from_raw(code));
                }
            }
        }
        self.status
    }

    /// Opens a new connection: the pipe again by name once the child has disconnected the last
    /// client (it answers `ERROR_PIPE_BUSY` until then), or the TCP listener. Retries for a
    /// few seconds; fails at once if the child has exited.
    pub async fn connect(&mut self) -> Result<Connection<Stream>, ClientError> {
        let deadline = Instant::now() + CONNECT_PATIENCE;
        loop {
            let (address, result) = match &self.transport {
                Transport::Pipe { name } => {
                    (name.clone(), open_pipe_client(name).and_then(pipe_client))
                }
                Transport::Tcp { addr } => (
                    format!("tcp:{addr}"),
                    TcpStream::connect(addr).await.map(|s| {
                        let _ = s.set_nodelay(true);
                        Stream::Tcp(s)
                    }),
                ),
            };
            match result {
                Ok(stream) => return Ok(Connection::new(stream)),
                Err(e) => {
                    if let Some(status) = self.try_wait() {
                        return Err(ClientError::ChildExited {
                            command: self.command.clone(),
                            status,
                        });
                    }
                    let busy = e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32);
                    if Instant::now() >= deadline {
                        return Err(ClientError::Connect { address, source: e });
                    }
                    if !busy {
                        tracing::debug!("connecting to the responder: {e}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signals `_FCGI_SHUTDOWN_EVENT_`, as IIS does before it terminates a process. The
    /// connection stays open.
    pub fn request_shutdown(&self) {
        // SAFETY: sets our own event.
        if unsafe { SetEvent(self.event.as_raw_handle() as HANDLE) } == 0 {
            tracing::debug!("SetEvent: {}", io::Error::last_os_error());
        }
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it is still running.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Ends the process the way IIS retires one: (the caller has dropped every
    /// [`Connection`], which closes our pipe end) signal the shutdown event, wait up to
    /// `grace`, then `TerminateProcess`.
    pub async fn shutdown(mut self, grace: Duration) -> Result<ExitStatus, ClientError> {
        self.request_shutdown();
        if let Some(status) = self.wait_for_exit(grace).await {
            return Ok(status);
        }
        tracing::debug!("responder did not exit within {grace:?}; terminating it");
        self.terminate();
        self.wait_for_exit(Duration::from_secs(5))
            .await
            .ok_or_else(|| ClientError::Io(io::Error::other("the responder does not terminate")))
    }

    fn terminate(&self) {
        // SAFETY: terminates our own child through its process handle.
        if unsafe { TerminateProcess(self.process.as_raw_handle() as HANDLE, 1) } == 0 {
            tracing::debug!("TerminateProcess: {}", io::Error::last_os_error());
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_command_line_to_argv() {
        let cases: [(&[&str], &str); 5] = [
            (&["a", "b"], "a b"),
            (&["has space", ""], r#""has space" """#),
            (&[r#"say "hi""#], r#""say \"hi\"""#),
            (&[r"C:\dir with space\"], r#""C:\dir with space\\""#),
            (&[r"C:\plain\path.exe"], r"C:\plain\path.exe"),
        ];
        for (args, want) in cases {
            let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(command_line(&args), want);
        }
    }

    #[test]
    fn environment_puts_iis_variables_first_without_duplicates() {
        let block = environment_block(&[("_FCGI_X_PIPE_", r"\\.\pipe\x".into())]);
        let text = String::from_utf16(&block).unwrap();
        let vars: Vec<&str> = text.split('\0').filter(|s| !s.is_empty()).collect();
        assert_eq!(vars[0], r"_FCGI_X_PIPE_=\\.\pipe\x");
        assert_eq!(
            vars.iter()
                .filter(|v| v.starts_with("_FCGI_X_PIPE_="))
                .count(),
            1
        );
        assert!(block.ends_with(&[0, 0]));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let cmd = vec![r"C:\nonexistent\responder.exe".to_owned()];
        let err = Spawned::connected(&cmd, ChildOutput::Null)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Spawn { .. }), "{err:?}");
        let err = Spawned::connected(&[], ChildOutput::Null)
            .await
            .unwrap_err();
        assert!(err.report().contains("after `--`"));
    }

    #[tokio::test]
    async fn child_sees_the_iis_environment_and_exit_code() {
        // cmd.exe exits with the code we ask for; the variables are there if `if defined`
        // finds them.
        let cmd: Vec<String> = [
            "cmd.exe",
            "/c",
            "if defined _FCGI_X_PIPE_ if defined _FCGI_SHUTDOWN_EVENT_ exit 7",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let (mut spawned, conn) = Spawned::connected(&cmd, ChildOutput::Null).await.unwrap();
        let status = spawned
            .wait_for_exit(Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(status.code(), Some(7));
        drop(conn);
    }
}
