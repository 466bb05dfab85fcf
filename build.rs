//! Build facts for `pyfcgi --version`, and how the binary links libpython:
//!
//! * Unix: the path of the libpython pyo3 linked against goes into the rpath, so `pyfcgi`
//!   starts without LD_LIBRARY_PATH when Python lives outside the system library path (pyenv,
//!   /opt/python).
//! * Windows (GNU toolchain): `python3XY.dll` is **delay-loaded**. A normal import would make
//!   Windows refuse to start the exe when the DLL is not on the search path (exit 0xC0000135
//!   before `main`, nothing logged: IIS's "FastCGI process exited unexpectedly"). Here the exe
//!   starts, finds the DLL itself (`crates/pyhome`), loads it by full path, and binds every
//!   import at once before the first Python call. The delay-import library is made with
//!   MinGW's `dlltool --output-delaylib` from the export list of that CPython version (the
//!   `.def` files python3-dll-a carries). `.cargo/config.toml` sets PYO3_USE_RAW_DYLIB=0 so
//!   pyo3 links `-lpython3XY` (this library) instead of its raw-dylib imports, which cannot be
//!   delay-loaded.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PYFCGI_GIT_REVISION");
    let rev = std::env::var("PYFCGI_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PYFCGI_GIT_REVISION={rev}");
    for head in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(head).exists() {
            println!("cargo:rerun-if-changed={head}");
        }
    }
    #[cfg(feature = "python")]
    python::link();
}

/// `abc1234` or `abc1234-dirty`, when built from a git checkout.
fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

#[cfg(feature = "python")]
mod python {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub fn link() {
        let config = pyo3_build_config::get();
        let (major, minor) = (config.version().major, config.version().minor);
        println!("cargo:rustc-env=PYFCGI_PYTHON_BUILT={major}.{minor}");
        let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        if target_os != "windows" {
            pyo3_build_config::add_libpython_rpath_link_args();
            return;
        }
        let lib_name = config
            .lib_name()
            .map_or_else(|| format!("python{major}{minor}"), str::to_owned);
        println!("cargo:rustc-env=PYFCGI_PYTHON_DLL={lib_name}.dll");
        let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
        assert!(
            env == "gnu",
            "pyfcgi's Windows build delay-loads {lib_name}.dll, which needs the GNU toolchain \
                 (x86_64-pc-windows-gnu; see scripts/wine-cross). MSVC cannot delay-load \
                 Python's data exports (LNK1194)."
        );
        println!("cargo:rerun-if-env-changed=PYO3_USE_RAW_DYLIB");
        assert!(
            std::env::var("PYO3_USE_RAW_DYLIB").as_deref() == Ok("0"),
            "PYO3_USE_RAW_DYLIB must be 0 for the Windows build (set in .cargo/config.toml): \
                 pyo3's raw-dylib imports of {lib_name}.dll cannot be delay-loaded"
        );
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let def_dir = out.join("python-def");
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        python3_dll_a::ImportLibraryGenerator::new(&arch, &env)
            .version(Some((major, minor)))
            .generate(&def_dir)
            .unwrap_or_else(|e| panic!("cannot write the {lib_name} export list: {e}"));
        let def = def_dir.join(format!("{lib_name}.def"));
        let lib_dir = out.join("python-delaylib");
        std::fs::create_dir_all(&lib_dir).expect("cannot create the delay-import folder");
        delaylib(&def, &format!("{lib_name}.dll"), &lib_dir, &lib_name);
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
    }

    /// Writes `lib{lib_name}.dll.a`, a delay-import library for `dll`. dlltool names the
    /// delay-import descriptor after its output file, so it writes a fixed name
    /// (`__DELAY_IMPORT_DESCRIPTOR_libpyfcgi_python_delay_a`, which crates/pyhome/src/windows.rs
    /// binds) and the result is renamed to what pyo3-ffi links (`-lpython3XY`).
    fn delaylib(def: &Path, dll: &str, dir: &Path, lib_name: &str) {
        let tool = std::env::var("DLLTOOL").unwrap_or_else(|_| "x86_64-w64-mingw32-dlltool".into());
        let status = Command::new(&tool)
            .current_dir(dir)
            .arg("--input-def")
            .arg(def)
            .args([
                "--dllname",
                dll,
                "--output-delaylib",
                "libpyfcgi_python_delay.a",
            ])
            .status()
            .unwrap_or_else(|e| panic!("cannot run {tool} (MinGW binutils): {e}"));
        assert!(
            status.success(),
            "{tool} failed making the {dll} delay-import library: {status}"
        );
        std::fs::rename(
            dir.join("libpyfcgi_python_delay.a"),
            dir.join(format!("lib{lib_name}.dll.a")),
        )
        .expect("cannot rename the delay-import library");
    }
}
