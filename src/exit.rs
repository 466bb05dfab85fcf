//! The process exit codes, one place (documented in docs/configuration.md, "Exit codes").

/// A startup error that is none of the below (the transport, the runtime).
pub const STARTUP: u8 = 1;
/// Invalid settings or an unreadable web.config / pyfcgi.toml (also clap's usage errors).
pub const SETTINGS: u8 = 2;
/// The grace period ran out with requests in flight.
pub const GRACE_TIMEOUT: u8 = 3;
/// No usable Python (Windows: no python3XY.dll found, or one of another version).
pub const NO_PYTHON: u8 = 4;
/// `--workers`: workers kept failing before they were ready (`--crash-limit`).
pub const CRASH_LOOP: u8 = 5;
/// The application could not be loaded (import error, no app named, a venv that is not
/// one), with or without `--workers`.
pub const APP_LOAD: u8 = 6;
