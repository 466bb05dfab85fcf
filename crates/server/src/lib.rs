//! pyfcgi's FastCGI server: everything between a socket and a [`Handler`].
//!
//! * [`handler`]: the [`Handler`] trait and the request/response types a handler sees: params,
//!   a streaming [`BodyReceiver`], a [`ResponseWriter`] with backpressure, an [`AbortSignal`].
//! * [`body`]: request-body delivery that buffers and spools so a slow handler never stalls
//!   a connection.
//! * [`conn`]: drives one connection (any `AsyncRead + AsyncWrite`): decodes records with
//!   `pyfcgi-proto`, runs requests concurrently, coalesces response records into few writes.
//! * [`transport`]: where connections come from: TCP, Unix sockets, a listening socket or an
//!   already-connected stream inherited on standard input, IIS's named pipe on Windows.
//! * [`process`]: the rest of being started by IIS: standard handles, the shutdown event.
//! * [`serve`](mod@serve): the accept loop, connection limits and graceful shutdown.
//! * `handoff` (Unix): a retiring worker's kept connections passed to the supervisor (and on
//!   to a live worker) instead of being closed.
//! * [`builtin`]: the built-in `hello`, `echo` and `env` handlers.
//! * [`sched`]: the I/O thread does not preempt the app's threads on the core they share.
//!
//! Nothing here knows about Python; the Python layer is one more [`Handler`].

pub mod body;
pub mod builtin;
pub mod conn;
mod error;
pub mod handler;
#[cfg(unix)]
pub mod handoff;
pub mod impersonate;
pub mod observe;
mod out;
pub mod process;
pub mod proxy;
pub mod sched;
pub mod serve;
pub mod transport;

pub use error::ServerError;
pub use handler::{
    AbortSignal, BodyError, BodyReceiver, Handler, Request, ResponseWriter, Takeover, WriteError,
};
pub use out::DirectStream;
pub use serve::{ServerConfig, serve};
pub use transport::{Bind, Listener};
