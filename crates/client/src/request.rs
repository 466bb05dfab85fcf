//! A FastCGI request: the params a web server would derive from an HTTP request, and a body.
//!
//! Without [`RequestBuilder::iis`] the params follow nginx's stock `fastcgi_params`; with it
//! they follow what IIS 10 sends (research/iis-fastcgi.md §2.2, §2.3).

use std::path::{MAIN_SEPARATOR, PathBuf};

use bytes::Bytes;

use crate::ClientError;

/// One name-value pair.
type Pair = (Vec<u8>, Vec<u8>);

/// A request ready to send: params in wire order, body, and the `FCGI_KEEP_CONN` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    params: Vec<Pair>,
    body: Bytes,
    keep_conn: bool,
}

impl Request {
    /// A builder for `method` and `target`: an origin-form path (`/path?query`) or an
    /// absolute `http://` or `https://` URL, whose host and port become `SERVER_NAME`,
    /// `SERVER_PORT` and `HTTP_HOST`.
    ///
    /// ```
    /// use pyfcgi_client::Request;
    /// let req = Request::builder("GET", "/a%20b?x=1").header("Accept", "*/*").build().unwrap();
    /// assert_eq!(req.param_str("PATH_INFO"), Some("/a b"));
    /// assert_eq!(req.param_str("QUERY_STRING"), Some("x=1"));
    /// assert_eq!(req.param_str("HTTP_ACCEPT"), Some("*/*"));
    /// ```
    pub fn builder(method: impl Into<String>, target: impl Into<String>) -> RequestBuilder {
        RequestBuilder::new(method.into(), target.into())
    }

    /// A request with exactly these params (no derived ones).
    pub fn from_params(params: Vec<(Vec<u8>, Vec<u8>)>, body: Bytes, keep_conn: bool) -> Self {
        Self {
            params,
            body,
            keep_conn,
        }
    }

    /// The params in the order they are sent.
    pub fn params(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.params
    }

    /// The value of param `name`.
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The value of param `name` as UTF-8 text.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.param(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether `FCGI_KEEP_CONN` is set (the application keeps the connection open after it).
    pub fn keep_conn(&self) -> bool {
        self.keep_conn
    }
}

/// Builds a [`Request`]; see [`Request::builder`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    server: Option<(String, u16)>,
    remote: (String, u16),
    script_name: String,
    iis: bool,
    appl_physical_path: Option<String>,
    extra: Vec<Pair>,
    keep_conn: bool,
}

/// The parts of a request target.
struct Target<'a> {
    https: bool,
    /// `host[:port]` as written in an absolute URL.
    authority: Option<&'a str>,
    /// The raw path (still percent-encoded).
    path: &'a str,
    /// The raw query, without `?`.
    query: &'a str,
}

impl<'a> Target<'a> {
    fn parse(target: &'a str) -> Result<Self, ClientError> {
        let target = target.split_once('#').map_or(target, |(t, _)| t);
        let (https, rest) = if let Some(rest) = target.strip_prefix("http://") {
            (false, Some(rest))
        } else if let Some(rest) = target.strip_prefix("https://") {
            (true, Some(rest))
        } else {
            (false, None)
        };
        let (authority, path_and_query) = match rest {
            Some(rest) => {
                let at = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, pq) = rest.split_at(at);
                if authority.is_empty() {
                    return Err(ClientError::InvalidRequest(format!(
                        "the URL {target:?} has no host"
                    )));
                }
                (Some(authority), pq)
            }
            None => (None, target),
        };
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let path = if path.is_empty() && authority.is_some() {
            "/"
        } else {
            path
        };
        if !path.starts_with('/') {
            return Err(ClientError::InvalidRequest(format!(
                "the URL path {target:?} must start with '/' (e.g. /hello?x=1) or be a full \
                 http:// URL"
            )));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ClientError::InvalidRequest(format!(
                "the URL path {target:?} contains spaces or control characters; percent-encode \
                 them (%20)"
            )));
        }
        Ok(Self {
            https,
            authority,
            path,
            query,
        })
    }
}

/// Splits `host[:port]` (host possibly a bracketed IPv6 address).
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), ClientError> {
    let bad = || ClientError::InvalidRequest(format!("invalid host and port {authority:?}"));
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        None => None,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Percent-decodes a URL path. Invalid escapes stay as they are (the path is already known to
/// be printable ASCII or UTF-8).
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|&b| (b as char).to_digit(16))
                .map(|d| d as u8)
        };
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// `Content-Type` → `HTTP_CONTENT_TYPE`-style name: upper case, `-` → `_`, `HTTP_` prefix.
fn header_param_name(name: &str) -> Vec<u8> {
    let mut out = b"HTTP_".to_vec();
    out.extend(name.bytes().map(|b| {
        if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        }
    }));
    out
}

/// Sets `name` to `value`: replaces the first pair of that name (keeping its position) and
/// drops any later ones, or appends.
fn set(params: &mut Vec<Pair>, name: &[u8], value: Vec<u8>) {
    match params.iter().position(|(n, _)| n == name) {
        Some(first) => {
            params[first].1 = value;
            let mut index = 0;
            params.retain(|(n, _)| {
                index += 1;
                index - 1 == first || n != name
            });
        }
        None => params.push((name.to_vec(), value)),
    }
}

impl RequestBuilder {
    fn new(method: String, target: String) -> Self {
        Self {
            method,
            target,
            headers: Vec::new(),
            body: Bytes::new(),
            server: None,
            remote: ("127.0.0.1".to_owned(), 50000),
            script_name: String::new(),
            iis: false,
            appl_physical_path: None,
            extra: Vec::new(),
            keep_conn: true,
        }
    }

    /// Adds a request header (repeatable; repeated names are joined with `, `, cookies with
    /// `; `). `Content-Type` becomes `CONTENT_TYPE` and `Content-Length` overrides
    /// `CONTENT_LENGTH`; every other header becomes `HTTP_NAME`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// `SERVER_NAME` and `SERVER_PORT` (default: from an absolute URL or the `Host` header,
    /// else `localhost` and 80).
    pub fn server(mut self, name: impl Into<String>, port: u16) -> Self {
        self.server = Some((name.into(), port));
        self
    }

    /// `REMOTE_ADDR` and `REMOTE_PORT` (default `127.0.0.1`, 50000).
    pub fn remote(mut self, addr: impl Into<String>, port: u16) -> Self {
        self.remote = (addr.into(), port);
        self
    }

    /// `SCRIPT_NAME` (default empty). When the decoded path starts with it, `PATH_INFO` is the
    /// rest. Ignored in IIS mode, where both are the full path.
    pub fn script_name(mut self, script_name: impl Into<String>) -> Self {
        self.script_name = script_name.into();
        self
    }

    /// Sends the params IIS 10 sends instead of nginx's.
    pub fn iis(mut self, iis: bool) -> Self {
        self.iis = iis;
        self
    }

    /// `APPL_PHYSICAL_PATH` in IIS mode (default: the current directory with a trailing
    /// separator, as IIS writes it).
    pub fn appl_physical_path(mut self, path: impl Into<String>) -> Self {
        self.appl_physical_path = Some(path.into());
        self
    }

    /// Sets a param after all derived ones; it replaces a derived param of the same name, and
    /// the last call for a name wins.
    pub fn param(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.extra
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// `FCGI_KEEP_CONN` (default true: the connection stays open for further requests).
    pub fn keep_conn(mut self, keep_conn: bool) -> Self {
        self.keep_conn = keep_conn;
        self
    }

    /// Derives the params.
    pub fn build(self) -> Result<Request, ClientError> {
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidRequest(format!(
                "the method {:?} is not an HTTP token such as GET or POST",
                self.method
            )));
        }
        let target = Target::parse(&self.target)?;
        let decoded_path = percent_decode(target.path);
        let request_uri = if target.query.is_empty() {
            target.path.to_owned()
        } else {
            format!("{}?{}", target.path, target.query)
        };

        // Headers, merged by name.
        let mut content_type = None;
        let mut content_length = None;
        let mut host_header = None;
        let mut http: Vec<Pair> = Vec::new();
        for (name, value) in &self.headers {
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(ClientError::InvalidRequest(format!(
                    "the header name {name:?} is not an HTTP token"
                )));
            }
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_owned());
                continue;
            }
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.to_owned());
                continue;
            }
            if name.eq_ignore_ascii_case("host") {
                host_header = Some(value.to_owned());
            }
            let param = header_param_name(name);
            if let Some((_, existing)) = http.iter_mut().find(|(n, _)| *n == param) {
                let sep: &[u8] = if name.eq_ignore_ascii_case("cookie") {
                    b"; "
                } else {
                    b", "
                };
                existing.extend_from_slice(sep);
                existing.extend_from_slice(value.as_bytes());
            } else {
                http.push((param, value.as_bytes().to_vec()));
            }
        }

        // Server name and port: explicit, else the URL, else the Host header.
        let default_port = if target.https { 443 } else { 80 };
        let from_url = match target.authority {
            Some(a) => Some(split_host_port(a)?),
            None => None,
        };
        let from_host = match (&from_url, &host_header) {
            (None, Some(h)) => split_host_port(h).ok(),
            _ => None,
        };
        let (server_name, server_port) = match (&self.server, from_url.or(from_host)) {
            (Some((name, port)), _) => (name.clone(), *port),
            (None, Some((name, port))) => (name, port.unwrap_or(default_port)),
            (None, None) => ("localhost".to_owned(), default_port),
        };
        if host_header.is_none() {
            let host = match target.authority {
                Some(a) => a.to_owned(),
                None if server_port == default_port => server_name.clone(),
                None if server_name.contains(':') => format!("[{server_name}]:{server_port}"),
                None => format!("{server_name}:{server_port}"),
            };
            // HTTP_HOST goes first among the headers, where a browser puts Host.
            http.insert(0, (b"HTTP_HOST".to_vec(), host.into_bytes()));
        }

        let method = self.method.to_ascii_uppercase();
        let body_len = self.body.len().to_string();
        let content_length = content_length.or_else(|| {
            let needs = !self.body.is_empty()
                || self.iis
                || matches!(method.as_str(), "POST" | "PUT" | "PATCH");
            needs.then(|| body_len.clone())
        });
        let (remote_addr, remote_port) = &self.remote;

        let mut params: Vec<Pair>;
        if self.iis {
            // IIS sends the headers first, then its table of server variables (§2.1).
            let appl = self.appl_physical_path.clone().unwrap_or_else(|| {
                let dir = std::env::current_dir()
                    .map_or_else(|_| ".".to_owned(), |d| d.display().to_string());
                if dir.ends_with(MAIN_SEPARATOR) {
                    dir
                } else {
                    format!("{dir}{MAIN_SEPARATOR}")
                }
            });
            let mut translated = PathBuf::from(&appl).into_os_string().into_encoded_bytes();
            for b in decoded_path.iter().skip_while(|&&b| b == b'/') {
                translated.push(if *b == b'/' { MAIN_SEPARATOR as u8 } else { *b });
            }
            let secure = target.https;
            params = http;
            params.extend(
                [
                    ("URL", decoded_path.clone()),
                    ("SERVER_SOFTWARE", b"Microsoft-IIS/10.0".to_vec()),
                    ("SERVER_PROTOCOL", b"HTTP/1.1".to_vec()),
                    (
                        "SERVER_PORT_SECURE",
                        if secure { b"1" } else { b"0" }.to_vec(),
                    ),
                    ("SERVER_PORT", server_port.to_string().into_bytes()),
                    ("SERVER_NAME", server_name.clone().into_bytes()),
                    ("SCRIPT_NAME", decoded_path.clone()),
                    ("REQUEST_URI", request_uri.clone().into_bytes()),
                    ("REQUEST_METHOD", method.clone().into_bytes()),
                    ("REMOTE_USER", Vec::new()),
                    ("REMOTE_PORT", remote_port.to_string().into_bytes()),
                    ("REMOTE_HOST", remote_addr.clone().into_bytes()),
                    ("REMOTE_ADDR", remote_addr.clone().into_bytes()),
                    ("QUERY_STRING", target.query.as_bytes().to_vec()),
                    ("PATH_TRANSLATED", translated),
                    ("PATH_INFO", decoded_path.clone()),
                    ("LOGON_USER", Vec::new()),
                    ("LOCAL_ADDR", b"127.0.0.1".to_vec()),
                    ("INSTANCE_META_PATH", b"/LM/W3SVC/1".to_vec()),
                    ("INSTANCE_NAME", b"DEFAULT WEB SITE".to_vec()),
                    ("INSTANCE_ID", b"1".to_vec()),
                    (
                        "HTTPS",
                        if secure {
                            b"on".to_vec()
                        } else {
                            b"off".to_vec()
                        },
                    ),
                    ("GATEWAY_INTERFACE", b"CGI/1.1".to_vec()),
                    (
                        "CONTENT_TYPE",
                        content_type.clone().unwrap_or_default().into_bytes(),
                    ),
                    (
                        "CONTENT_LENGTH",
                        content_length.clone().unwrap_or_default().into_bytes(),
                    ),
                    ("AUTH_USER", Vec::new()),
                    ("AUTH_TYPE", Vec::new()),
                    ("APPL_PHYSICAL_PATH", appl.into_bytes()),
                    ("APPL_MD_PATH", b"/LM/W3SVC/1/ROOT".to_vec()),
                ]
                .into_iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v)),
            );
        } else {
            // The order of nginx's stock fastcgi_params, headers last.
            let path_info = match decoded_path.strip_prefix(self.script_name.as_bytes()) {
                Some(rest)
                    if !self.script_name.is_empty() && (rest.is_empty() || rest[0] == b'/') =>
                {
                    rest.to_vec()
                }
                _ => decoded_path.clone(),
            };
            params = Vec::new();
            let mut add =
                |name: &str, value: &[u8]| params.push((name.as_bytes().to_vec(), value.to_vec()));
            add("QUERY_STRING", target.query.as_bytes());
            add("REQUEST_METHOD", method.as_bytes());
            if let Some(ct) = &content_type {
                add("CONTENT_TYPE", ct.as_bytes());
            }
            if let Some(cl) = &content_length {
                add("CONTENT_LENGTH", cl.as_bytes());
            }
            add("SCRIPT_NAME", self.script_name.as_bytes());
            add("REQUEST_URI", request_uri.as_bytes());
            add("PATH_INFO", &path_info);
            add("SERVER_PROTOCOL", b"HTTP/1.1");
            add(
                "REQUEST_SCHEME",
                if target.https { b"https" } else { b"http" },
            );
            if target.https {
                add("HTTPS", b"on");
            }
            add("GATEWAY_INTERFACE", b"CGI/1.1");
            add(
                "SERVER_SOFTWARE",
                concat!("pyfcgi-client/", env!("CARGO_PKG_VERSION")).as_bytes(),
            );
            add("REMOTE_ADDR", remote_addr.as_bytes());
            add("REMOTE_PORT", remote_port.to_string().as_bytes());
            add("SERVER_PORT", server_port.to_string().as_bytes());
            add("SERVER_NAME", server_name.as_bytes());
            params.extend(http);
        }
        for (name, value) in self.extra {
            set(&mut params, &name, value);
        }
        Ok(Request {
            params,
            body: self.body,
            keep_conn: self.keep_conn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(req: &Request) -> Vec<String> {
        req.params()
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn get_without_body_has_no_content_length() {
        let req = Request::builder("get", "/").build().unwrap();
        assert_eq!(req.param_str("REQUEST_METHOD"), Some("GET"));
        assert_eq!(req.param("CONTENT_LENGTH"), None);
        assert_eq!(req.param("CONTENT_TYPE"), None);
        assert_eq!(req.param_str("SCRIPT_NAME"), Some(""));
        assert_eq!(req.param_str("PATH_INFO"), Some("/"));
        assert_eq!(req.param_str("QUERY_STRING"), Some(""));
        assert_eq!(req.param_str("SERVER_NAME"), Some("localhost"));
        assert_eq!(req.param_str("SERVER_PORT"), Some("80"));
        assert_eq!(req.param_str("HTTP_HOST"), Some("localhost"));
        assert_eq!(req.param_str("GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert!(
            req.param_str("SERVER_SOFTWARE")
                .unwrap()
                .starts_with("pyfcgi-client/")
        );
        assert!(req.keep_conn());
    }

    #[test]
    fn post_always_has_content_length() {
        let req = Request::builder("POST", "/").build().unwrap();
        assert_eq!(req.param_str("CONTENT_LENGTH"), Some("0"));
        let req = Request::builder("GET", "/").body("abc").build().unwrap();
        assert_eq!(req.param_str("CONTENT_LENGTH"), Some("3"));
    }

    #[test]
    fn path_is_decoded_and_query_is_raw() {
        let req = Request::builder("GET", "/caf%C3%A9/a%2Fb?q=%20x&y#frag")
            .build()
            .unwrap();
        assert_eq!(req.param_str("PATH_INFO"), Some("/café/a/b"));
        assert_eq!(req.param_str("QUERY_STRING"), Some("q=%20x&y"));
        assert_eq!(
            req.param_str("REQUEST_URI"),
            Some("/caf%C3%A9/a%2Fb?q=%20x&y")
        );
    }

    #[test]
    fn invalid_escapes_are_kept() {
        assert_eq!(percent_decode("/a%zz%4"), b"/a%zz%4");
        assert_eq!(percent_decode("/%41%62"), b"/Ab");
    }

    #[test]
    fn headers_become_http_params() {
        let req = Request::builder("POST", "/")
            .header("Content-Type", "application/json")
            .header("X-Forwarded-For", "1.2.3.4")
            .header("Accept", "a")
            .header("accept", "b")
            .header("Cookie", "a=1")
            .header("Cookie", "b=2")
            .header("Host", "example.org:8080")
            .build()
            .unwrap();
        assert_eq!(req.param_str("CONTENT_TYPE"), Some("application/json"));
        assert_eq!(req.param("HTTP_CONTENT_TYPE"), None);
        assert_eq!(req.param_str("HTTP_X_FORWARDED_FOR"), Some("1.2.3.4"));
        assert_eq!(req.param_str("HTTP_ACCEPT"), Some("a, b"));
        assert_eq!(req.param_str("HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(req.param_str("HTTP_HOST"), Some("example.org:8080"));
        assert_eq!(req.param_str("SERVER_NAME"), Some("example.org"));
        assert_eq!(req.param_str("SERVER_PORT"), Some("8080"));
    }

    #[test]
    fn content_length_header_overrides_the_body_length() {
        let req = Request::builder("POST", "/")
            .header("Content-Length", "99")
            .body("x")
            .build()
            .unwrap();
        assert_eq!(req.param_str("CONTENT_LENGTH"), Some("99"));
        assert_eq!(req.param("HTTP_CONTENT_LENGTH"), None);
    }

    #[test]
    fn absolute_url_sets_server_and_host() {
        let req = Request::builder("GET", "http://example.com:8000/x?y=1")
            .build()
            .unwrap();
        assert_eq!(req.param_str("SERVER_NAME"), Some("example.com"));
        assert_eq!(req.param_str("SERVER_PORT"), Some("8000"));
        assert_eq!(req.param_str("HTTP_HOST"), Some("example.com:8000"));
        assert_eq!(req.param_str("PATH_INFO"), Some("/x"));
        assert_eq!(req.param_str("QUERY_STRING"), Some("y=1"));
        let req = Request::builder("GET", "https://[::1]").build().unwrap();
        assert_eq!(req.param_str("SERVER_NAME"), Some("::1"));
        assert_eq!(req.param_str("SERVER_PORT"), Some("443"));
        assert_eq!(req.param_str("HTTPS"), Some("on"));
        assert_eq!(req.param_str("PATH_INFO"), Some("/"));
    }

    #[test]
    fn script_name_is_split_off_path_info() {
        let req = Request::builder("GET", "/app/x")
            .script_name("/app")
            .build()
            .unwrap();
        assert_eq!(req.param_str("SCRIPT_NAME"), Some("/app"));
        assert_eq!(req.param_str("PATH_INFO"), Some("/x"));
        let req = Request::builder("GET", "/apple")
            .script_name("/app")
            .build()
            .unwrap();
        assert_eq!(req.param_str("PATH_INFO"), Some("/apple"));
    }

    #[test]
    fn iis_mode_sends_what_iis_sends() {
        let req = Request::builder("GET", "/a%20b/c?x=1")
            .header("User-Agent", "t")
            .iis(true)
            .appl_physical_path("C:\\inetpub\\wwwroot\\")
            .build()
            .unwrap();
        let p = |n| req.param_str(n);
        assert_eq!(p("SERVER_SOFTWARE"), Some("Microsoft-IIS/10.0"));
        assert_eq!(p("APPL_PHYSICAL_PATH"), Some("C:\\inetpub\\wwwroot\\"));
        assert_eq!(p("APPL_MD_PATH"), Some("/LM/W3SVC/1/ROOT"));
        assert_eq!(p("INSTANCE_META_PATH"), Some("/LM/W3SVC/1"));
        assert_eq!(p("INSTANCE_ID"), Some("1"));
        assert_eq!(p("HTTPS"), Some("off"));
        assert_eq!(p("SERVER_PORT_SECURE"), Some("0"));
        assert_eq!(p("URL"), Some("/a b/c"));
        assert_eq!(p("SCRIPT_NAME"), Some("/a b/c"));
        assert_eq!(p("PATH_INFO"), Some("/a b/c"));
        assert_eq!(p("REQUEST_URI"), Some("/a%20b/c?x=1"));
        assert_eq!(p("CONTENT_LENGTH"), Some("0"));
        assert_eq!(p("AUTH_TYPE"), Some(""));
        assert_eq!(p("LOGON_USER"), Some(""));
        assert_eq!(p("REMOTE_HOST"), Some("127.0.0.1"));
        assert_eq!(p("LOCAL_ADDR"), Some("127.0.0.1"));
        assert!(
            p("PATH_TRANSLATED")
                .unwrap()
                .starts_with("C:\\inetpub\\wwwroot\\a b")
        );
        assert!(p("INSTANCE_NAME").is_some());
        // Headers come first, as IIS builds the list.
        assert_eq!(&names(&req)[..2], ["HTTP_HOST", "HTTP_USER_AGENT"]);
    }

    #[test]
    fn iis_default_physical_path_ends_with_a_separator() {
        let req = Request::builder("GET", "/").iis(true).build().unwrap();
        assert!(
            req.param_str("APPL_PHYSICAL_PATH")
                .unwrap()
                .ends_with(MAIN_SEPARATOR)
        );
    }

    #[test]
    fn extra_params_replace_derived_ones_and_last_wins() {
        let req = Request::builder("GET", "/")
            .param("SCRIPT_NAME", "/one")
            .param("SCRIPT_NAME", "/two")
            .param("CUSTOM", "v")
            .build()
            .unwrap();
        assert_eq!(req.param_str("SCRIPT_NAME"), Some("/two"));
        assert_eq!(req.param_str("CUSTOM"), Some("v"));
        let n = names(&req);
        assert_eq!(n.iter().filter(|n| *n == "SCRIPT_NAME").count(), 1);
        assert_eq!(n.last().map(String::as_str), Some("CUSTOM"));
    }

    #[test]
    fn bad_targets_and_tokens_are_rejected() {
        for target in ["hello", "http:///x", "/a b"] {
            assert!(Request::builder("GET", target).build().is_err(), "{target}");
        }
        assert!(Request::builder("G T", "/").build().is_err());
        assert!(
            Request::builder("GET", "/")
                .header("Bad Name", "v")
                .build()
                .is_err()
        );
    }
}
