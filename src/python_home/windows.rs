//! Windows: find `python3XY.dll`, load it by full path, bind every delay-loaded import.

use std::ffi::{OsStr, c_char};
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::GetLastError;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
};
use windows_sys::Win32::System::LibraryLoader::{LOAD_WITH_ALTERED_SEARCH_PATH, LoadLibraryExW};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW,
};

use super::search::{self, Environment, Hints, NotFound, Tried};
use super::{BUILT_FOR, Found};

const DLL: &str = env!("PYFCGI_PYTHON_DLL");

static LOADED: OnceLock<Result<Found, NotFound>> = OnceLock::new();

unsafe extern "system" {
    /// MinGW's delay-load helper (libmingwex): loads the DLL named like the delay-import
    /// descriptor (already loaded here, so the loaded module is used) and fills every slot of
    /// its import table, data exports (`PyExc_*`, `_Py_NoneStruct`) included.
    fn __HrLoadAllImportsForDll(dll: *const c_char) -> i32;
}

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(Some(0)).collect()
}

/// Finds and loads the Python DLL once per process; every Python call must come after an
/// `Ok` from here.
pub fn ensure_loaded(hints: &Hints) -> Result<Found, NotFound> {
    LOADED.get_or_init(|| load(hints)).clone()
}

fn load(hints: &Hints) -> Result<Found, NotFound> {
    let env = environment();
    let (dir, source) = search::search(hints, &env, DLL, BUILT_FOR)?;
    let path = dir.join(DLL);
    let wpath = wide(path.as_os_str());
    // SAFETY: a NUL-terminated wide path; LOAD_WITH_ALTERED_SEARCH_PATH makes the DLL's own
    // folder the first place for its dependencies (vcruntime140.dll beside it).
    let module = unsafe {
        LoadLibraryExW(
            wpath.as_ptr(),
            std::ptr::null_mut(),
            LOAD_WITH_ALTERED_SEARCH_PATH,
        )
    };
    let fail = |outcome: String| NotFound {
        dll: DLL.to_owned(),
        built_for: BUILT_FOR.to_owned(),
        tried: vec![Tried {
            source: source.clone(),
            path: path.clone(),
            outcome,
        }],
        mismatch: None,
    };
    if module.is_null() {
        // SAFETY: reads the calling thread's last-error value.
        let err = unsafe { GetLastError() };
        return Err(fail(format!(
            "found, but Windows could not load it (error {err}: a 32-bit Python, or its vcruntime140.dll missing?)"
        )));
    }
    let name = format!("{DLL}\0");
    // SAFETY: a NUL-terminated ASCII DLL name matching the delay-import descriptor (build.rs).
    let hr = unsafe { __HrLoadAllImportsForDll(name.as_ptr().cast()) };
    if hr < 0 {
        return Err(fail(format!(
            "loaded, but binding its functions failed (HRESULT {hr:#x}): is it a CPython {BUILT_FOR} DLL?"
        )));
    }
    Ok(Found {
        library: path,
        source,
    })
}

/// `C:\py311\python311.dll (from ...)`, or why there is none, for `--version`.
pub fn found_description(hints: &Hints) -> String {
    match ensure_loaded(hints) {
        Ok(f) => format!("{} (from {})", f.library.display(), f.source),
        Err(nf) => format!(
            "none usable ({})",
            nf.diagnosis().lines().next().unwrap_or_default()
        ),
    }
}

fn environment() -> Environment {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut registry = Vec::new();
    let mut tags: Vec<String> = (8..=14).map(|m| format!("3.{m}")).collect();
    // The built version first, so its entry wins over others in the list.
    tags.sort_by_key(|t| t != BUILT_FOR);
    for tag in tags {
        for root in [HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE] {
            if let Some(p) = install_path(root, &tag) {
                registry.push((tag.clone(), p));
            }
        }
    }
    Environment {
        virtual_env: var("VIRTUAL_ENV"),
        python_home: var("PYTHONHOME"),
        exe_dir: std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned)),
        path: std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default(),
        registry,
    }
}

/// PEP 514: `Software\Python\PythonCore\<tag>\InstallPath`, default value.
fn install_path(root: HKEY, tag: &str) -> Option<PathBuf> {
    let key = wide(OsStr::new(&format!(
        r"Software\Python\PythonCore\{tag}\InstallPath"
    )));
    let mut buf = vec![0u16; 1024];
    let mut len = (buf.len() * 2) as u32;
    // SAFETY: key is NUL-terminated, the default value (null name) is read into buf of len
    // bytes; RRF_RT_REG_SZ guarantees a NUL-terminated string on success.
    let rc = unsafe {
        RegGetValueW(
            root,
            key.as_ptr(),
            std::ptr::null(),
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let n = (len as usize / 2).saturating_sub(1).min(buf.len());
    let s = String::from_utf16_lossy(&buf[..n]);
    let s = s.trim_end_matches('\0').trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Writes `text` to the Application event log as source "pyfcgi" (best effort: the source
/// may not be registered, and Windows then still logs the text with a generic header).
pub fn report_to_event_log(text: &str) {
    let source = wide(OsStr::new("pyfcgi"));
    let msg = wide(OsStr::new(text));
    // SAFETY: NUL-terminated wide strings that outlive the calls; the handle is closed.
    unsafe {
        let h = RegisterEventSourceW(std::ptr::null(), source.as_ptr());
        if h.is_null() {
            return;
        }
        let strings = [msg.as_ptr()];
        ReportEventW(
            h,
            EVENTLOG_ERROR_TYPE,
            0,
            1000,
            std::ptr::null_mut(),
            1,
            0,
            strings.as_ptr(),
            std::ptr::null(),
        );
        DeregisterEventSource(h);
    }
}
