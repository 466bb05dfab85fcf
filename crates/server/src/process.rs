//! What a process started by a web server has to take care of besides the transport.
//!
//! * [`prepare_std_handles`]: IIS starts its FastCGI processes with invalid stdout/stderr
//!   handles and no console, and Rust's `println!`/`eprintln!` can then panic (std only
//!   forgives `ERROR_INVALID_HANDLE`, not whatever last-error is pending;
//!   research/iis-fastcgi.md §1.3). They are pointed at `NUL` before anything prints.
//! * [`watch_shutdown_event`]: IIS asks a process to stop by signalling the event whose handle
//!   it passes in `_FCGI_SHUTDOWN_EVENT_` (§1.7); a thread waits on it and starts the graceful
//!   shutdown.
//!
//! On Unix both are no-ops: the binary watches SIGTERM/SIGINT instead.

#[cfg(windows)]
pub use windows::{prepare_std_handles, watch_shutdown_event};

/// The environment variable IIS sets to the decimal value of an inherited event handle.
pub const SHUTDOWN_EVENT_VAR: &str = "_FCGI_SHUTDOWN_EVENT_";

/// Nothing to do on Unix; returns false (nothing was changed).
#[cfg(unix)]
pub fn prepare_std_handles() -> bool {
    false
}

/// `_FCGI_SHUTDOWN_EVENT_` is a Windows mechanism; returns `Ok(false)` (not watching).
#[cfg(unix)]
pub fn watch_shutdown_event(
    _shutdown: tokio_util::sync::CancellationToken,
) -> Result<bool, crate::ServerError> {
    Ok(false)
}

#[cfg(windows)]
mod windows {
    use std::io;

    use tokio_util::sync::CancellationToken;
    use tracing::{info, warn};
    use windows_sys::Win32::Foundation::{
        GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_TYPE_UNKNOWN, GetFileType,
        OPEN_EXISTING,
    };
    use windows_sys::Win32::System::Console::{
        GetStdHandle, STD_ERROR_HANDLE, STD_HANDLE, STD_OUTPUT_HANDLE, SetStdHandle,
    };
    use windows_sys::Win32::System::Threading::{
        INFINITE, OpenEventW, SYNCHRONIZATION_SYNCHRONIZE, WaitForSingleObject,
    };

    use super::SHUTDOWN_EVENT_VAR;
    use crate::ServerError;

    fn unusable(h: HANDLE) -> bool {
        // SAFETY: GetFileType only queries the handle; a bad one gives FILE_TYPE_UNKNOWN.
        h.is_null() || h == INVALID_HANDLE_VALUE || unsafe { GetFileType(h) } == FILE_TYPE_UNKNOWN
    }

    /// Points stdout and stderr at `NUL` wherever they are unusable: IIS passes
    /// `INVALID_HANDLE_VALUE` with both its pipe and its socket transports (under Wine they
    /// read as NULL), and a service or scheduled task may have none. Usable ones are kept, so
    /// a developer who runs the IIS setup by hand still sees output. Returns true when
    /// something was redirected. Call it first thing in `main`.
    pub fn prepare_std_handles() -> bool {
        let mut changed = false;
        for which in [STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
            // SAFETY: reads the process's standard-handle table.
            if unusable(unsafe { GetStdHandle(which) }) {
                changed |= point_at_nul(which);
            }
        }
        changed
    }

    fn point_at_nul(which: STD_HANDLE) -> bool {
        let name: Vec<u16> = "NUL\0".encode_utf16().collect();
        // SAFETY: `name` is NUL-terminated and outlives the call; null security attributes
        // and template are allowed. The handle is deliberately never closed: it becomes the
        // process's standard handle for its whole life.
        let nul = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if nul == INVALID_HANDLE_VALUE {
            return false;
        }
        // SAFETY: installs a valid handle we own as a standard handle.
        unsafe { SetStdHandle(which, nul) != 0 }
    }

    /// An event handle value, passed to the waiter thread (raw handles are not `Send`).
    struct EventHandle(usize);

    /// Reads `_FCGI_SHUTDOWN_EVENT_` — the decimal value of an inherited event handle, as
    /// IIS passes it; an event name is accepted too — and starts a thread that cancels
    /// `shutdown` when the event is signalled. Returns `Ok(false)` when the variable is not
    /// set (IIS sets it only when `signalBeforeTerminateSeconds > 0`).
    pub fn watch_shutdown_event(shutdown: CancellationToken) -> Result<bool, ServerError> {
        let Some(value) = std::env::var_os(SHUTDOWN_EVENT_VAR) else {
            return Ok(false);
        };
        watch_event(&value.to_string_lossy(), shutdown)?;
        Ok(true)
    }

    /// Starts the waiter thread for the event `value` names (a handle value or a name).
    fn watch_event(value: &str, shutdown: CancellationToken) -> Result<(), ServerError> {
        let bad = |source: io::Error| ServerError::Io {
            context: format!(
                "cannot use {SHUTDOWN_EVENT_VAR}={value:?} (expected an inherited event handle or an event name)"
            ),
            source,
        };
        let event = match value.trim().parse::<usize>() {
            Ok(raw) => EventHandle(raw),
            Err(_) => {
                let name: Vec<u16> = value.encode_utf16().chain([0]).collect();
                // SAFETY: `name` is NUL-terminated and outlives the call.
                let h = unsafe { OpenEventW(SYNCHRONIZATION_SYNCHRONIZE, 0, name.as_ptr()) };
                if h.is_null() {
                    return Err(bad(io::Error::last_os_error()));
                }
                EventHandle(h as usize)
            }
        };
        // Check the handle now, so a bad value is reported at startup rather than never.
        // SAFETY: waiting with a zero timeout only queries the object's state.
        if unsafe { WaitForSingleObject(event.0 as HANDLE, 0) }
            == windows_sys::Win32::Foundation::WAIT_FAILED
        {
            return Err(bad(io::Error::last_os_error()));
        }
        std::thread::Builder::new()
            .name("pyfcgi-shutdown-event".into())
            .spawn(move || {
                let event = event;
                // SAFETY: the handle was checked above and is never closed (it belongs to the
                // process for its whole life).
                let rc = unsafe { WaitForSingleObject(event.0 as HANDLE, INFINITE) };
                if rc == WAIT_OBJECT_0 {
                    info!("IIS signalled the shutdown event: finishing in-flight requests, then exiting");
                } else {
                    warn!(
                        rc,
                        error = %io::Error::last_os_error(),
                        "waiting for the shutdown event failed; shutting down"
                    );
                }
                shutdown.cancel();
            })
            .map_err(bad)?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent};

        use super::*;

        fn event(name: Option<&str>) -> HANDLE {
            let name: Option<Vec<u16>> = name.map(|n| n.encode_utf16().chain([0]).collect());
            let ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
            // SAFETY: a manual-reset, non-signalled event; the name (if any) is NUL-terminated.
            let h = unsafe { CreateEventW(std::ptr::null(), 1, 0, ptr) };
            assert!(!h.is_null());
            h
        }

        async fn cancelled_soon(token: &CancellationToken) -> bool {
            tokio::time::timeout(Duration::from_secs(10), token.cancelled())
                .await
                .is_ok()
        }

        #[tokio::test]
        async fn signalled_event_handle_value_starts_the_shutdown() {
            let h = event(None);
            let token = CancellationToken::new();
            watch_event(&(h as usize).to_string(), token.clone()).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!token.is_cancelled());
            // SAFETY: our own event.
            unsafe { SetEvent(h) };
            assert!(cancelled_soon(&token).await);
        }

        #[tokio::test]
        async fn event_name_is_accepted_too() {
            let name = format!("pyfcgi-test-shutdown-{}", std::process::id());
            let h = event(Some(&name));
            let token = CancellationToken::new();
            watch_event(&name, token.clone()).unwrap();
            // SAFETY: our own event.
            unsafe { SetEvent(h) };
            assert!(cancelled_soon(&token).await);
            // SAFETY: closes our handle once (the watcher opened its own).
            unsafe { CloseHandle(h) };
        }

        #[test]
        fn bad_values_are_reported_at_startup() {
            let token = CancellationToken::new();
            let err = watch_event("no-such-event-anywhere", token.clone()).unwrap_err();
            assert!(err.to_string().contains("_FCGI_SHUTDOWN_EVENT_"), "{err}");
            assert!(watch_event("999999", token).is_err());
        }
    }
}
