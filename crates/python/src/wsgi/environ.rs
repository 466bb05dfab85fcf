//! The WSGI environ: every CGI variable the web server sent (decoded latin-1, PEP 3333's
//! "native strings"), the `wsgi.*` keys, and the defaults PEP 3333 requires.

use pyfcgi_proto::Params;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::WsgiConfig;

/// Decodes latin-1 bytes (every byte is one code point), as PEP 3333 requires for environ
/// values, in one pass by CPython's own decoder.
pub(crate) fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    let len = pyo3::ffi::Py_ssize_t::try_from(b.len()).unwrap_or(pyo3::ffi::Py_ssize_t::MAX);
    // SAFETY: the pointer and length describe `b`, which outlives the call; latin-1 decoding
    // cannot fail for any byte, and a NULL return (out of memory) is handled below.
    let obj =
        unsafe { pyo3::ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), len, std::ptr::null()) };
    // SAFETY: `obj` is a new reference (or NULL) returned by the call above.
    let Some(o) = (unsafe { Bound::from_owned_ptr_or_opt(py, obj) }) else {
        // Out of memory: clear the error and fall back to an empty string.
        let _ = PyErr::take(py);
        return PyString::new(py, "");
    };
    o.cast_into::<PyString>()
        .unwrap_or_else(|_| PyString::new(py, ""))
}

/// Most environ keys repeat on every request (CGI variables, common headers): keep them as
/// interned strings, whose hash Python caches, instead of decoding and hashing them anew.
fn key<'py>(py: Python<'py>, name: &[u8]) -> Bound<'py, PyString> {
    use std::cell::RefCell;
    // foldhash rather than SipHash: hashing these short keys was 2% of a hello-world
    // request; the table is bounded (MAX_KEYS), so flooding it with crafted names gains nothing.
    use foldhash::{HashMap, HashMapExt};
    const MAX_KEYS: usize = 512;
    const MAX_KEY_LEN: usize = 64;
    thread_local! {
        static KEYS: RefCell<HashMap<Vec<u8>, Py<PyString>>> = RefCell::new(HashMap::new());
    }
    if name.len() > MAX_KEY_LEN {
        return latin1(py, name);
    }
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(k) = keys.get(name) {
            return k.bind(py).clone();
        }
        let k = latin1(py, name);
        if keys.len() < MAX_KEYS
            && name.is_ascii()
            && let Ok(s) = k.to_str()
        {
            let interned = PyString::intern(py, s);
            keys.insert(name.to_vec(), interned.clone().unbind());
            return interned;
        }
        k
    })
}

/// Apache's mod_proxy_fcgi puts the whole URL path in `SCRIPT_NAME` and sends no
/// `PATH_INFO` (its `SCRIPT_FILENAME` is `proxy:fcgi://...`): the path is then the app's,
/// as behind nginx with `SCRIPT_NAME ""`.
pub(crate) fn is_apache_proxy_fcgi(params: &Params) -> bool {
    params.get(b"PATH_INFO").is_none()
        && params
            .get_str("SCRIPT_FILENAME")
            .is_some_and(|f| f.starts_with("proxy:fcgi://"))
}

/// Builds the environ dict for one request (without `wsgi.input`/`wsgi.errors`, which the
/// caller adds).
pub(crate) fn build<'py>(
    py: Python<'py>,
    params: &Params,
    cfg: &WsgiConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let env = PyDict::new(py);
    let mut have_script_name = false;
    let mut have_path_info = false;
    let mut https = false;
    let mut scheme: Option<String> = None;
    for (name, value) in params.iter() {
        match name {
            // PEP 3333 (and wsgiref.validate): these are CONTENT_TYPE/CONTENT_LENGTH only.
            b"HTTP_CONTENT_TYPE" | b"HTTP_CONTENT_LENGTH" => continue,
            // wfastcgi trusted a client-sent X-Original-URL to rewrite PATH_INFO; a client can
            // set any header, so pyfcgi never does. It stays visible as a plain header.
            b"SCRIPT_NAME" => have_script_name = true,
            b"PATH_INFO" => have_path_info = true,
            b"HTTPS" => https = value.eq_ignore_ascii_case(b"on") || value == b"1",
            b"REQUEST_SCHEME" => {
                scheme = std::str::from_utf8(value).ok().map(str::to_ascii_lowercase);
            }
            _ => {}
        }
        let k = key(py, name);
        // nginx passes a repeated request header as two params with the same name; the app
        // gets one value, joined the way HTTP combines field lines (RFC 9110 §5.3), Cookie
        // with "; " (RFC 6265 §5.4).
        if name.starts_with(b"HTTP_")
            && let Some(prev) = env.get_item(&k)?
        {
            let sep = if name == b"HTTP_COOKIE" { "; " } else { ", " };
            let joined = format!(
                "{}{sep}{}",
                prev.cast::<PyString>()?.to_str()?,
                latin1(py, value).to_str()?
            );
            env.set_item(k, joined)?;
            continue;
        }
        env.set_item(k, latin1(py, value))?;
    }
    if is_apache_proxy_fcgi(params) {
        match env.get_item("SCRIPT_NAME")? {
            Some(path) => env.set_item("PATH_INFO", path)?,
            None => env.set_item("PATH_INFO", "")?,
        }
        env.set_item("SCRIPT_NAME", "")?;
        have_path_info = true;
    }
    // Under IIS the application's virtual path is in APPL_MD_PATH and PATH_INFO holds the
    // whole URL path (research: iis-fastcgi.md §2.3); --script-name / the SCRIPT_NAME
    // appSetting override it.
    let iis_prefix = if cfg.script_name.is_none() {
        params
            .get_str("APPL_MD_PATH")
            .and_then(pyfcgi_iis::paths::app_virtual_path)
    } else {
        None
    };
    if let Some(prefix) = cfg.script_name.as_ref().or(iis_prefix.as_ref()) {
        let path: String = env
            .get_item("PATH_INFO")?
            .map(|p| p.extract())
            .transpose()?
            .unwrap_or_default();
        // PATH_INFO is a PEP 3333 native string (its bytes as latin-1); the prefix is text
        // (APPL_MD_PATH is UTF-8, as is --script-name): compare them in the same form, or a
        // non-ASCII application name (/café) would never match.
        let prefix: String = prefix.bytes().map(char::from).collect();
        let (script_name, path_info) = pyfcgi_iis::paths::split(&prefix, &path);
        env.set_item("SCRIPT_NAME", script_name)?;
        env.set_item("PATH_INFO", path_info)?;
    } else {
        if !have_script_name {
            env.set_item("SCRIPT_NAME", "")?;
        }
        if !have_path_info {
            env.set_item("PATH_INFO", "")?;
        }
    }
    for (key, default) in [
        ("QUERY_STRING", ""),
        ("REQUEST_METHOD", "GET"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ] {
        if !env.contains(key)? {
            env.set_item(key, default)?;
        }
    }
    let url_scheme = cfg
        .url_scheme
        .clone()
        .or(scheme)
        .unwrap_or_else(|| if https { "https".into() } else { "http".into() });
    let has_name = env.contains("SERVER_NAME")?;
    let has_port = env.contains("SERVER_PORT")?;
    if !has_name || !has_port {
        let host: Option<String> = env
            .get_item("HTTP_HOST")?
            .map(|h| h.extract())
            .transpose()?;
        // `name`, `name:port`, `[v6]` or `[v6]:port`.
        let (name, port) = match host.as_deref() {
            Some(h) => match h.rsplit_once(':') {
                Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    (n, Some(p))
                }
                _ => (h, None),
            },
            None => ("localhost", None),
        };
        if !has_name {
            env.set_item("SERVER_NAME", name)?;
        }
        if !has_port {
            let default = if url_scheme == "https" { "443" } else { "80" };
            env.set_item("SERVER_PORT", port.unwrap_or(default))?;
        }
    }
    env.set_item("wsgi.version", (1, 0))?;
    env.set_item("wsgi.url_scheme", url_scheme)?;
    env.set_item("wsgi.multithread", cfg.multithread)?;
    env.set_item("wsgi.multiprocess", cfg.multiprocess)?;
    env.set_item("wsgi.run_once", false)?;
    env.set_item("wsgi.input_terminated", true)?;
    env.set_item(
        "wsgi.file_wrapper",
        py.get_type::<super::response::FileWrapper>(),
    )?;
    Ok(env)
}
