//! What pyfcgi knows about IIS, as plain functions that run and are tested on any OS:
//!
//! * [`webconfig`]: `<appSettings>` of `web.config` files (with `<clear/>`, `<remove>`, parent
//!   folders) and wfastcgi's keys; `%VAR%` expansion.
//! * [`paths`]: `SCRIPT_NAME`/`PATH_INFO` for an app in an IIS (sub-)application, from
//!   `APPL_MD_PATH`.
//! * [`offline`]: the `app_offline.htm` page.
//! * [`register`]: what `pyfcgi iis enable` writes: appcmd commands and the site's
//!   `web.config` handler mapping, created or updated in place.
//! * [`venv`]: what a `--venv`/`PYFCGI_VENV` value names (a venv, or the interpreter inside
//!   one), with the fix when it is neither.

mod error;
pub mod offline;
pub mod paths;
pub mod register;
pub mod venv;
pub mod webconfig;

pub use error::IisError;
