//! The ASGI `http` scope from the FastCGI params, and telling an ASGI app from a WSGI one.

use pyfcgi_proto::Params;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::AsgiConfig;

/// Whether `app` is an ASGI 3 application: a coroutine function, or an object whose
/// `__call__` is one (FastAPI, Starlette, Django's ASGIHandler).
pub fn is_asgi_app(py: Python<'_>, app: &Bound<'_, PyAny>) -> PyResult<bool> {
    let inspect = py.import("inspect")?;
    let is_coro = |o: &Bound<'_, PyAny>| -> PyResult<bool> {
        inspect
            .call_method1("iscoroutinefunction", (o,))?
            .is_truthy()
    };
    if is_coro(app)? {
        return Ok(true);
    }
    if inspect.call_method1("isfunction", (app,))?.is_truthy()?
        || inspect.call_method1("ismethod", (app,))?.is_truthy()?
    {
        return Ok(false);
    }
    match app.getattr("__call__") {
        Ok(call) => is_coro(&call),
        Err(_) => Ok(false),
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The `http` scope for one request.
pub(super) fn build<'py>(
    py: Python<'py>,
    params: &Params,
    cfg: &AsgiConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let get = |name: &str| params.get(name.as_bytes());
    let scope = PyDict::new(py);
    scope.set_item("type", "http")?;
    let asgi = PyDict::new(py);
    asgi.set_item("version", "3.0")?;
    // 2.4: send() raises OSError once the client is gone.
    asgi.set_item("spec_version", "2.4")?;
    scope.set_item("asgi", asgi)?;
    let protocol = get("SERVER_PROTOCOL").map_or_else(|| "HTTP/1.1".to_owned(), text);
    let http_version = match protocol.trim_start_matches("HTTP/") {
        "1.0" => "1.0",
        "2" | "2.0" => "2",
        "3" | "3.0" => "3",
        _ => "1.1",
    };
    scope.set_item("http_version", http_version)?;
    scope.set_item(
        "method",
        get("REQUEST_METHOD").map_or_else(|| "GET".to_owned(), |m| text(m).to_ascii_uppercase()),
    )?;
    let https = get("HTTPS").is_some_and(|v| v.eq_ignore_ascii_case(b"on") || v == b"1");
    let scheme = cfg
        .url_scheme
        .clone()
        .or_else(|| get("REQUEST_SCHEME").map(|s| text(s).to_ascii_lowercase()))
        .unwrap_or_else(|| if https { "https".into() } else { "http".into() });
    scope.set_item("scheme", &scheme)?;
    // root_path and path as WSGI's SCRIPT_NAME and PATH_INFO (IIS: from APPL_MD_PATH); ASGI's
    // path includes root_path.
    let (script_name, path_info) = if crate::wsgi::environ::is_apache_proxy_fcgi(params) {
        (
            String::new(),
            get("SCRIPT_NAME").map(text).unwrap_or_default(),
        )
    } else {
        (
            get("SCRIPT_NAME").map(text).unwrap_or_default(),
            get("PATH_INFO").map(text).unwrap_or_default(),
        )
    };
    let prefix = cfg.script_name.clone().or_else(|| {
        params
            .get_str("APPL_MD_PATH")
            .and_then(pyfcgi_iis::paths::app_virtual_path)
    });
    let (root_path, rest) = match &prefix {
        Some(p) => pyfcgi_iis::paths::split(p, &path_info),
        None => (script_name, path_info),
    };
    let path = format!("{root_path}{rest}");
    scope.set_item("root_path", root_path)?;
    scope.set_item(
        "path",
        if path.is_empty() {
            "/".to_owned()
        } else {
            path
        },
    )?;
    let raw = get("REQUEST_URI").or_else(|| get("UNENCODED_URL"));
    match raw {
        Some(uri) => {
            let end = uri.iter().position(|&b| b == b'?').unwrap_or(uri.len());
            scope.set_item("raw_path", PyBytes::new(py, &uri[..end]))?;
        }
        None => scope.set_item("raw_path", py.None())?,
    }
    scope.set_item(
        "query_string",
        PyBytes::new(py, get("QUERY_STRING").unwrap_or_default()),
    )?;
    let headers = PyList::empty(py);
    for (name, value) in params.iter() {
        let header: Option<Vec<u8>> = match name {
            b"CONTENT_TYPE" if !value.is_empty() => Some(b"content-type".to_vec()),
            b"CONTENT_LENGTH" if !value.is_empty() => Some(b"content-length".to_vec()),
            b"HTTP_CONTENT_TYPE" | b"HTTP_CONTENT_LENGTH" => None,
            n if n.starts_with(b"HTTP_") => Some(
                n[5..]
                    .iter()
                    .map(|&b| {
                        if b == b'_' {
                            b'-'
                        } else {
                            b.to_ascii_lowercase()
                        }
                    })
                    .collect(),
            ),
            _ => None,
        };
        if let Some(h) = header {
            headers.append((PyBytes::new(py, &h), PyBytes::new(py, value)))?;
        }
    }
    scope.set_item("headers", headers)?;
    // The one extension pyfcgi implements: the app may hand over a file path as the body.
    let extensions = PyDict::new(py);
    extensions.set_item("http.response.pathsend", PyDict::new(py))?;
    scope.set_item("extensions", extensions)?;
    let port = |name: &str| get(name).and_then(|p| text(p).trim().parse::<u16>().ok());
    if let Some(addr) = get("REMOTE_ADDR") {
        scope.set_item("client", (text(addr), port("REMOTE_PORT").unwrap_or(0)))?;
    }
    let host = get("SERVER_ADDR").or_else(|| get("SERVER_NAME"));
    if let Some(host) = host {
        let default = if scheme == "https" { 443 } else { 80 };
        scope.set_item(
            "server",
            (text(host), port("SERVER_PORT").unwrap_or(default)),
        )?;
    }
    Ok(scope)
}
