//! Windows: `ReportEventW` to the Application log.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;

use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
};

/// The event source name and event id pyfcgi reports under.
const SOURCE: &str = "pyfcgi";
const EVENT_ID: u32 = 1000;

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Writes `text` to the Application event log as source "pyfcgi" (best effort: the source
/// may not be registered, and Windows then still logs the text with a generic header).
pub fn report(text: &str) {
    let source = wide(OsStr::new(SOURCE));
    let msg = wide(OsStr::new(text));
    // SAFETY: NUL-terminated wide strings that outlive the calls; the handle is closed.
    unsafe {
        let h = RegisterEventSourceW(std::ptr::null(), source.as_ptr());
        if h.is_null() {
            tracing::debug!(
                "cannot register the event source: the event log does not get this report"
            );
            return;
        }
        let strings = [msg.as_ptr()];
        ReportEventW(
            h,
            EVENTLOG_ERROR_TYPE,
            0,
            EVENT_ID,
            std::ptr::null_mut(),
            1,
            0,
            strings.as_ptr(),
            std::ptr::null(),
        );
        DeregisterEventSource(h);
    }
}
