//! Starting a responder process the way a web server does (Unix; the Windows twin is
//! `windows.rs`).
//!
//! * [`Spawned::connected`]: the child's stdin is one end of a connected socket pair and we
//!   keep the other, like IIS hands its responder an already-connected named pipe: one
//!   connection for the process's life, one request at a time (research/iis-fastcgi.md §1.4).
//! * [`Spawned::listening`]: the child's stdin is a listening Unix socket
//!   (`FCGI_LISTENSOCK_FILENO`, FastCGI spec §2.2) in a fresh private directory, and we connect
//!   to it, like mod_fcgid or lighttpd do.

use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::{ClientError, Connection, Stream};

/// How long [`Spawned::listening`] keeps retrying to connect.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// After SIGTERM, how long to wait before SIGKILL.
const TERM_PATIENCE: Duration = Duration::from_secs(2);

/// Where a spawned responder's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutput {
    /// Both go where ours go.
    Inherit,
    /// Both are discarded (closest to IIS, which gives the process no console).
    Null,
    /// Both go to our stderr, so our stdout carries only the response.
    ToStderr,
}

/// The private directory holding a listening socket; removed on drop.
#[derive(Debug)]
struct SocketDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl SocketDir {
    fn create() -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last_error = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("pyfcgi-client-{}-{n}-{nanos}", std::process::id()));
            // 0700: nobody else may connect to the responder.
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let socket = dir.join("fcgi.sock");
                    return Ok(Self { dir, socket });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary directory name")))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A responder process started by [`Spawned::connected`] or [`Spawned::listening`].
///
/// Dropping it kills the process (SIGKILL); [`Spawned::shutdown`] lets it exit gracefully.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    command: String,
    socket: Option<SocketDir>,
}

impl Spawned {
    /// Starts `cmd` with stdin = one end of a connected Unix socket pair, as IIS hands over its
    /// pipe, and returns the connection on the other end.
    // Async although nothing is awaited: registering the socket with tokio needs a runtime,
    // and the signature matches `listening`.
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
        let (ours, theirs) = StdUnixStream::pair().map_err(spawn_error)?;
        let child = spawn(cmd, OwnedFd::from(theirs), output).map_err(spawn_error)?;
        ours.set_nonblocking(true).map_err(spawn_error)?;
        let ours = UnixStream::from_std(ours).map_err(spawn_error)?;
        let spawned = Self {
            child,
            command,
            socket: None,
        };
        Ok((spawned, Connection::new(Stream::Unix(ours))))
    }

    /// Starts `cmd` with stdin = a listening Unix socket in a fresh private temporary
    /// directory (`FCGI_LISTENSOCK_FILENO`) and connects to it, retrying briefly.
    pub async fn listening(
        cmd: &[String],
        output: ChildOutput,
    ) -> Result<(Self, Connection<Stream>), ClientError> {
        let command = cmd.join(" ");
        let spawn_error = |source| ClientError::Spawn {
            command: command.clone(),
            source,
        };
        let dir = SocketDir::create().map_err(spawn_error)?;
        let listener = UnixListener::bind(&dir.socket).map_err(spawn_error)?;
        // Our copy of the listener closes when this function returns: the child owns it.
        let child = spawn(cmd, OwnedFd::from(listener), output).map_err(spawn_error)?;
        let mut spawned = Self {
            child,
            command,
            socket: Some(dir),
        };
        let conn = spawned.connect().await?;
        Ok((spawned, conn))
    }

    /// The listening socket of a [`Spawned::listening`] child.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.socket.as_path())
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The process id, while the process has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Opens another connection to a [`Spawned::listening`] child, retrying for a few seconds
    /// while the child starts; fails at once if the child has exited.
    pub async fn connect(&mut self) -> Result<Connection<Stream>, ClientError> {
        let Some(path) = self.socket_path().map(Path::to_path_buf) else {
            return Err(ClientError::ConnectionUnusable(
                "a responder started with a connected socket accepts no further connections",
            ));
        };
        let deadline = Instant::now() + CONNECT_PATIENCE;
        loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => return Ok(Connection::new(Stream::Unix(stream))),
                Err(e) => {
                    if let Some(status) = self.try_wait() {
                        return Err(ClientError::ChildExited {
                            command: self.command.clone(),
                            status,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(ClientError::Connect {
                            address: format!("unix:{}", path.display()),
                            source: e,
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the process to finish what it is doing and exit (SIGTERM, the Unix counterpart of
    /// IIS's `_FCGI_SHUTDOWN_EVENT_`). The connection stays open.
    pub fn request_shutdown(&self) {
        self.terminate();
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it is still running.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Ends the process gracefully: a connected child sees end-of-file once every
    /// [`Connection`] to it is dropped (drop them first) and gets `grace` to exit; a listening
    /// child, which would wait for more connections, gets SIGTERM at once. Whatever is still
    /// running after that gets SIGTERM, then SIGKILL.
    pub async fn shutdown(mut self, grace: Duration) -> Result<ExitStatus, ClientError> {
        if self.socket.is_some() {
            self.terminate();
        }
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return status.map_err(ClientError::Io);
        }
        tracing::debug!("responder did not exit within {grace:?}; sending SIGTERM");
        self.terminate();
        if let Ok(status) = tokio::time::timeout(TERM_PATIENCE, self.child.wait()).await {
            return status.map_err(ClientError::Io);
        }
        tracing::debug!("responder ignored SIGTERM; killing it");
        self.child.kill().await.map_err(ClientError::Io)?;
        self.child.wait().await.map_err(ClientError::Io)
    }

    /// Sends SIGTERM (the child can shut down gracefully; `Child::kill` only does SIGKILL).
    fn terminate(&self) {
        let Some(pid) = self.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return;
        };
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is our
        // own unreaped child (`Child::id` is None once reaped), so it cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            tracing::debug!("kill({pid}, SIGTERM): {}", io::Error::last_os_error());
        }
    }
}

/// Spawns `cmd` with `stdin` as its fd 0.
fn spawn(cmd: &[String], stdin: OwnedFd, output: ChildOutput) -> io::Result<Child> {
    let Some((program, args)) = cmd.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given: put the responder's command line after `--`",
        ));
    };
    let output_stdio = || -> io::Result<Stdio> {
        Ok(match output {
            ChildOutput::Inherit => Stdio::inherit(),
            ChildOutput::Null => Stdio::null(),
            ChildOutput::ToStderr => Stdio::from(io::stderr().as_fd().try_clone_to_owned()?),
        })
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(output_stdio()?)
        .stderr(output_stdio()?)
        .kill_on_drop(true);
    let child = command.spawn();
    // `command` holds the child's end of the socket; dropping it here means our side sees
    // end-of-file when the child exits.
    drop(command);
    child
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let cmd = vec!["/nonexistent/responder".to_owned()];
        let err = Spawned::connected(&cmd, ChildOutput::Null)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Spawn { .. }), "{err:?}");
        assert!(err.report().contains("/nonexistent/responder"));
        let err = Spawned::connected(&[], ChildOutput::Null)
            .await
            .unwrap_err();
        assert!(err.report().contains("after `--`"));
    }

    #[tokio::test]
    async fn responder_that_exits_closes_the_connection() {
        // `cat` would echo our records back; `true` exits at once without answering.
        let (spawned, mut conn) = Spawned::connected(&sh("exit 0"), ChildOutput::Null)
            .await
            .unwrap();
        let req = Request::builder("GET", "/").build().unwrap();
        let err = conn.request(&req).await.unwrap_err();
        assert!(
            matches!(err, ClientError::ClosedEarly { .. } | ClientError::Io(_)),
            "{err:?}"
        );
        drop(conn);
        assert!(
            spawned
                .shutdown(Duration::from_secs(5))
                .await
                .unwrap()
                .success()
        );
    }

    #[tokio::test]
    async fn listening_child_gets_a_listening_socket_and_is_terminated() {
        // The shell keeps the listener open on fd 0 and waits; we can connect although
        // nobody accepts (the backlog holds the connection).
        let (spawned, conn) = Spawned::listening(&sh("exec sleep 30"), ChildOutput::Null)
            .await
            .unwrap();
        let path = spawned.socket_path().unwrap().to_path_buf();
        assert!(path.exists());
        drop(conn);
        let status = spawned.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(!status.success());
        assert!(!path.exists(), "the socket directory is removed");
    }

    #[tokio::test]
    async fn listening_child_that_exits_is_reported() {
        // No socket is ever bound at the path: a listener bound and dropped here could still
        // accept, held open by a child another test forks meanwhile (before its exec closes it).
        let dir = SocketDir::create().unwrap();
        let child = spawn(
            &sh("exit 3"),
            OwnedFd::from(StdUnixStream::pair().unwrap().0),
            ChildOutput::Null,
        )
        .unwrap();
        let mut spawned = Spawned {
            child,
            command: "exit 3".into(),
            socket: Some(dir),
        };
        let err = spawned.connect().await.unwrap_err();
        assert!(matches!(err, ClientError::ChildExited { .. }), "{err:?}");
    }
}
