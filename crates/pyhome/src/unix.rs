//! Unix twin: libpython is linked at build time (rpath, build.rs), so the dynamic loader has
//! found it before `main`; this only reports which one.

use super::Found;
use super::search::{Hints, NotFound};

/// Always `Ok` (the signature is the Windows twin's): the loader resolved libpython already (or the process would not run).
#[allow(clippy::unnecessary_wraps)]
pub fn ensure_loaded(_hints: &Hints) -> Result<Found, NotFound> {
    Ok(Found {
        library: linked_library().unwrap_or_default(),
        source: "linked at build time".into(),
    })
}

/// The libpython file that provides `Py_GetVersion`, with its version.
pub fn found_description(_hints: &Hints) -> String {
    // SAFETY: Py_GetVersion may be called before initialisation; it returns a static string.
    let version = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) }
        .to_string_lossy()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    match linked_library() {
        Some(p) => format!("CPython {version} ({})", p.display()),
        None => format!("CPython {version} (linked statically)"),
    }
}

fn linked_library() -> Option<std::path::PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables for the given code address.
    let ok = unsafe {
        libc::dladdr(
            pyo3::ffi::Py_GetVersion as *const libc::c_void,
            info.as_mut_ptr(),
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so info is filled; dli_fname is a NUL-terminated path or null.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    let exe = std::env::current_exe().ok();
    let p = std::path::PathBuf::from(name);
    (Some(&p) != exe.as_ref()).then_some(p)
}
