//! Starting a responder process the way a web server does.
//!
//! * Unix ([`unix`]): `Spawned::connected` gives the child one end of a connected socket pair
//!   on stdin (an emulation of IIS's pipe); `Spawned::listening` gives it a listening Unix
//!   socket (`FCGI_LISTENSOCK_FILENO`, FastCGI spec §2.2). `Spawned::request_shutdown` sends
//!   SIGTERM.
//! * Windows ([`windows`]): exactly what IIS does (research/iis-fastcgi.md §1.3–§1.5):
//!   `Spawned::connected` creates `\\.\pipe\IISFCGI-…`, connects to it *before* starting the
//!   child, and passes the server end as stdin with `_FCGI_X_PIPE_` and an inheritable
//!   `_FCGI_SHUTDOWN_EVENT_`; `Spawned::listening` passes a listening socket on 127.0.0.1
//!   (`protocol="Tcp"`). `Spawned::request_shutdown` signals the event.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::{ChildOutput, Spawned};
#[cfg(windows)]
pub use windows::{ChildOutput, Spawned};
