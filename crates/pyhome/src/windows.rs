//! Windows: find `python3XY.dll`, load it by full path, bind every delay-loaded import.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{GetLastError, HMODULE};
use windows_sys::Win32::System::LibraryLoader::{
    GetModuleHandleW, GetProcAddress, LOAD_WITH_ALTERED_SEARCH_PATH, LoadLibraryExW,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW,
};

use super::search::{self, Environment, Hints, NotFound, Tried};
use super::{BUILT_FOR, Found};

const DLL: &str = env!("PYFCGI_PYTHON_DLL");

static LOADED: OnceLock<Result<Found, NotFound>> = OnceLock::new();

/// The delay-import descriptor dlltool made for python3XY.dll (build.rs fixes its name).
/// Layout: `ImgDelayDescr` of delayimp.h, every field an RVA (`attrs` bit 0 set).
#[repr(C)]
#[allow(dead_code)] // read by layout: only some fields are used
struct DelayDescriptor {
    attrs: u32,
    dll_name: u32,
    module_handle: u32,
    iat: u32,
    int: u32,
    bound_iat: u32,
    unload_iat: u32,
    timestamp: u32,
}

unsafe extern "C" {
    #[link_name = "__DELAY_IMPORT_DESCRIPTOR_libpyfcgi_python_delay_a"]
    static PYTHON_DELAY_IMPORTS: DelayDescriptor;
}

/// Fills every slot of pyfcgi's delay-import table for python3XY.dll from `module`, the way
/// the delay-load helper would on first call, but all at once and up front: the slots of data
/// exports (`PyExc_*`, `_Py_NoneStruct`) are read as pointers, never called, so no helper
/// would ever fill them. Also stores the module handle, so the helper (which a slot left
/// unfilled would reach) finds the DLL already loaded. `Err` names the first missing export.
///
/// # Safety
/// `module` must be a loaded module; no other thread may be using Python yet.
unsafe fn bind_imports(module: HMODULE) -> Result<(), String> {
    // SAFETY: GetModuleHandleW(null) is this exe's base; the descriptor's RVAs (made by
    // dlltool, relocated by ld) point into this image: the handle slot in .data, the
    // import-address and import-name tables in .idata (writable), both ended by a zero entry.
    unsafe {
        let base = GetModuleHandleW(std::ptr::null()).cast::<u8>();
        let d = &raw const PYTHON_DELAY_IMPORTS;
        if (*d).attrs & 1 == 0 {
            return Err("(a delay-import table pyfcgi cannot read: not RVA-based)".into());
        }
        base.add((*d).module_handle as usize)
            .cast::<HMODULE>()
            .write(module);
        let mut slot = base.add((*d).iat as usize).cast::<usize>();
        let mut name = base.add((*d).int as usize).cast::<u64>();
        let mut missing = None;
        while name.read() != 0 {
            let entry = name.read();
            // IMAGE_ORDINAL_FLAG64: import by ordinal; otherwise the RVA of a hint + name.
            let proc = if entry & (1 << 63) != 0 {
                GetProcAddress(module, (entry & 0xffff) as usize as *const u8)
            } else {
                GetProcAddress(module, base.add(entry as usize + 2))
            };
            match proc {
                Some(f) => slot.write(f as usize),
                None if missing.is_none() => {
                    missing = Some(if entry & (1 << 63) != 0 {
                        format!("ordinal {}", entry & 0xffff)
                    } else {
                        std::ffi::CStr::from_ptr(base.add(entry as usize + 2).cast())
                            .to_string_lossy()
                            .into_owned()
                    });
                }
                None => {}
            }
            slot = slot.add(1);
            name = name.add(1);
        }
        missing.map_or(Ok(()), Err)
    }
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
    // SAFETY: `module` is the loaded python3XY.dll; see bind_imports.
    if let Err(missing) = unsafe { bind_imports(module) } {
        return Err(fail(format!(
            "loaded, but it lacks {missing}, which pyfcgi uses: is it a CPython {BUILT_FOR} DLL?"
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
        Ok(f) => {
            // SAFETY: the DLL is bound; Py_GetVersion may be called before initialisation.
            let v = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
            let v = v.to_string_lossy();
            let v = v.split_whitespace().next().unwrap_or_default();
            format!("CPython {v}, {} (from {})", f.library.display(), f.source)
        }
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
