//! Embeds the path of the libpython pyo3 linked against (rpath), so `pyfcgi` starts without
//! LD_LIBRARY_PATH when Python lives outside the system library path (pyenv, /opt/python).
fn main() {
    #[cfg(feature = "python")]
    pyo3_build_config::add_libpython_rpath_link_args();
}
