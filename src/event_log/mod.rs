//! The Windows Application event log, where an IIS admin looks when a site fails: every
//! startup failure is written there as well as to the log file. The Unix twin writes nothing
//! more than the log line pyfcgi already wrote (systemd's journal has stderr).

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::report;
#[cfg(windows)]
pub use windows::report;
