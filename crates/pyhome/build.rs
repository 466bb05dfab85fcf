//! The CPython pyo3 builds against: `PYFCGI_PYTHON_BUILT` (like `3.11`) and, on Windows,
//! `PYFCGI_PYTHON_DLL` (`python311.dll`), the one DLL the search looks for. The binary's
//! build.rs makes the matching delay-import library.
fn main() {
    let config = pyo3_build_config::get();
    let (major, minor) = (config.version().major, config.version().minor);
    println!("cargo:rustc-env=PYFCGI_PYTHON_BUILT={major}.{minor}");
    let lib_name = config
        .lib_name()
        .map_or_else(|| format!("python{major}{minor}"), str::to_owned);
    println!("cargo:rustc-env=PYFCGI_PYTHON_DLL={lib_name}.dll");
}
