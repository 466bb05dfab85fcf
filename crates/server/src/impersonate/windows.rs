//! `ImpersonateNamedPipeClient` / `RevertToSelf` on the pipe IIS handed over.

use std::io;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Security::RevertToSelf;
use windows_sys::Win32::System::Pipes::ImpersonateNamedPipeClient;
use windows_sys::Win32::System::WindowsProgramming::GetUserNameW;

/// A duplicate of the pipe's server-end handle, owned here (closed on drop).
pub(crate) struct Pipe(usize);

// SAFETY: a kernel handle may be used from any thread.
unsafe impl Send for Pipe {}
// SAFETY: ImpersonateNamedPipeClient only reads the handle.
unsafe impl Sync for Pipe {}

impl Pipe {
    /// Takes ownership of `handle` (a duplicate made for this purpose).
    pub(crate) fn from_owned(handle: HANDLE) -> Self {
        Self(handle as usize)
    }

    pub(crate) fn impersonate(&self) -> io::Result<()> {
        // SAFETY: the handle is open for as long as `self` lives.
        if unsafe { ImpersonateNamedPipeClient(self.0 as HANDLE) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once.
        unsafe { CloseHandle(self.0 as HANDLE) };
    }
}

pub(super) fn revert() -> io::Result<()> {
    // SAFETY: no arguments; reverts the calling thread's impersonation.
    if unsafe { RevertToSelf() } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn thread_user() -> Option<String> {
    let mut buf = [0u16; 257];
    let mut len = buf.len() as u32;
    // SAFETY: `buf` holds `len` UTF-16 units; GetUserNameW writes at most that many.
    if unsafe { GetUserNameW(buf.as_mut_ptr(), &raw mut len) } == 0 {
        return None;
    }
    let n = (len as usize).saturating_sub(1).min(buf.len());
    Some(String::from_utf16_lossy(&buf[..n]))
}
