//! `--impersonate`: running a request's Python code as the user IIS authenticated, the way
//! PHP's `fastcgi.impersonate` does. IIS's FastCGI module writes each request to the named
//! pipe while impersonating the signed-in user (Windows authentication); the server end of the
//! pipe can then take on that identity for a thread with `ImpersonateNamedPipeClient`, and give
//! it back with `RevertToSelf`.
//!
//! [`PipeClient`] is the pipe a request came over; [`PipeClient::impersonate`] makes the
//! calling thread the client until the returned [`Impersonation`] is dropped. A thread that
//! cannot be reverted must not run anything else: the process aborts (IIS starts another).
//! Only the Windows named pipe has a client identity; the Unix twin has none, and no request
//! outside Windows carries a [`PipeClient`].

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as platform;
#[cfg(windows)]
use windows as platform;

use std::sync::Arc;

#[cfg(windows)]
pub(crate) use platform::Pipe;

/// Why a thread could not take on the pipe client's identity.
#[derive(Debug, thiserror::Error)]
#[error("cannot impersonate the web server's client: {0}")]
pub struct ImpersonateError(#[from] std::io::Error);

/// The named pipe a request arrived on (cheap to clone: one handle shared by the connection's
/// requests).
#[derive(Clone)]
pub struct PipeClient(Arc<platform::Pipe>);

impl std::fmt::Debug for PipeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipeClient")
    }
}

impl PipeClient {
    #[cfg_attr(unix, allow(dead_code))]
    pub(crate) fn new(pipe: platform::Pipe) -> Self {
        Self(Arc::new(pipe))
    }

    /// Makes the calling thread run as the pipe's client (the user IIS authenticated) until
    /// the result is dropped. The identity is that of the last message read from the pipe:
    /// with IIS, one request at a time per pipe, the current request's.
    pub fn impersonate(&self) -> Result<Impersonation, ImpersonateError> {
        self.0.impersonate()?;
        Ok(Impersonation {
            _not_send: std::marker::PhantomData,
        })
    }

    /// The name of the user the calling thread runs as (`DOMAIN\user`), for the log.
    pub fn thread_user() -> Option<String> {
        platform::thread_user()
    }
}

/// The calling thread runs as the pipe's client until this is dropped. Not `Send`: the
/// identity belongs to the thread that took it.
#[derive(Debug)]
pub struct Impersonation {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Impersonation {
    fn drop(&mut self) {
        if let Err(e) = platform::revert() {
            // Running the next request as this user would be a security hole.
            tracing::error!(
                "cannot revert impersonation ({e}); stopping the process at once rather than run anything else as the client's user"
            );
            std::process::abort();
        }
    }
}
