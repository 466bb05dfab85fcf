//! Paths under IIS, as a matrix: for each way a request reaches an IIS application (the site's
//! root, nested applications, a virtual directory inside an application, URL Rewrite, trailing
//! slashes, percent-encoded and non-ASCII paths, a different case in the request than in the
//! application's path), what WSGI sees (`SCRIPT_NAME`, `PATH_INFO`) and what ASGI sees
//! (`root_path`, `path`), with the params IIS 10 sends (research: iis-fastcgi.md §2):
//! `PATH_INFO`, `SCRIPT_NAME` and `URL` the whole decoded path (UTF-8), `UNENCODED_URL` and
//! `REQUEST_URI` raw, the application's virtual path only in `APPL_MD_PATH`. X-Original-URL
//! (URL Rewrite's header, which a client can send too) is never used.

use crate::iis_lifecycle::{Iis, web_config};
use crate::support::TempDir;

const WSGI_APP: &str = r#"
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    # PEP 3333 strings carry the bytes as latin-1: back to the bytes IIS sent (UTF-8).
    sn = environ["SCRIPT_NAME"].encode("latin-1")
    pi = environ["PATH_INFO"].encode("latin-1")
    return [b"A=" + sn + b"|B=" + pi + b"|"]
"#;

const ASGI_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("A=%s|B=%s|" % (scope["root_path"], scope["path"])).encode("utf-8")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})
"#;

/// (what, APPL_MD_PATH, the decoded path IIS sends, the raw URL, SCRIPT_NAME, PATH_INFO).
/// ASGI's `root_path` is the same as SCRIPT_NAME and its `path` is SCRIPT_NAME + PATH_INFO
/// ("/" when both are empty).
const CASES: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "site root",
        "/LM/W3SVC/1/ROOT",
        "/users/1",
        "/users/1",
        "",
        "/users/1",
    ),
    ("site root, bare /", "/LM/W3SVC/1/ROOT", "/", "/", "", "/"),
    (
        "nested application",
        "/LM/W3SVC/1/ROOT/a/b",
        "/a/b/c",
        "/a/b/c",
        "/a/b",
        "/c",
    ),
    (
        "nested application, trailing slash",
        "/LM/W3SVC/1/ROOT/a/b",
        "/a/b/",
        "/a/b/",
        "/a/b",
        "/",
    ),
    (
        "nested application, no trailing slash",
        "/LM/W3SVC/1/ROOT/a/b",
        "/a/b",
        "/a/b",
        "/a/b",
        "",
    ),
    (
        "virtual directory inside an application (not an application: same APPL_MD_PATH)",
        "/LM/W3SVC/1/ROOT/app",
        "/app/files/report.txt",
        "/app/files/report.txt",
        "/app",
        "/files/report.txt",
    ),
    (
        "percent-encoded path (IIS decodes it)",
        "/LM/W3SVC/1/ROOT/app",
        "/app/a b/100%",
        "/app/a%20b/100%25",
        "/app",
        "/a b/100%",
    ),
    (
        "non-ASCII path (UTF-8)",
        "/LM/W3SVC/1/ROOT/app",
        "/app/café/naïve",
        "/app/caf%C3%A9/na%C3%AFve",
        "/app",
        "/café/naïve",
    ),
    (
        "non-ASCII application name",
        "/LM/W3SVC/1/ROOT/café",
        "/café/menu",
        "/caf%C3%A9/menu",
        "/café",
        "/menu",
    ),
    (
        "request in another case than the application (IIS matches it)",
        "/LM/W3SVC/1/ROOT/Shop",
        "/SHOP/Cart",
        "/SHOP/Cart",
        "/SHOP",
        "/Cart",
    ),
];

fn run_matrix(app: &str, asgi: bool) {
    let dir = TempDir::new(if asgi {
        "iis-paths-asgi"
    } else {
        "iis-paths-wsgi"
    });
    std::fs::write(dir.path().join("paths_app.py"), app).unwrap();
    std::fs::write(
        dir.path().join("web.config"),
        web_config(&[("WSGI_HANDLER", "paths_app.app")]),
    )
    .unwrap();
    let mut iis = Iis::start(dir.path(), &[], &[]);
    let mut failures = Vec::new();
    for &(what, md_path, path, raw, sn, pi) in CASES {
        let query = "q=1";
        let request_uri = format!("{raw}?{query}");
        let params = [
            ("APPL_MD_PATH", md_path),
            ("URL", path),
            ("UNENCODED_URL", raw),
            ("HTTP_URL", raw),
            ("REQUEST_URI", request_uri.as_str()),
            ("QUERY_STRING", query),
            ("INSTANCE_META_PATH", "/LM/W3SVC/1"),
        ];
        let mut cases = vec![(what.to_owned(), params.to_vec())];
        // URL Rewrite: the path IIS sends is the rewritten one; the browser's URL is only in
        // X-Original-URL, which pyfcgi never trusts (a client can send it too).
        let mut rewritten = params.to_vec();
        rewritten.push(("HTTP_X_ORIGINAL_URL", "/pretty/url"));
        cases.push((format!("{what}, behind URL Rewrite"), rewritten));
        for (label, params) in cases {
            let body = iis.body(path, &params);
            let (want_a, want_b) = if asgi {
                let full = format!("{sn}{pi}");
                (
                    sn.to_owned(),
                    if full.is_empty() {
                        "/".to_owned()
                    } else {
                        full
                    },
                )
            } else {
                (sn.to_owned(), pi.to_owned())
            };
            let want = format!("A={want_a}|B={want_b}|");
            if body != want {
                failures.push(format!(
                    "{label}: sent {path:?}, got {body:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len() * 2,
        failures.join("\n")
    );
}

#[test]
fn wsgi_script_name_and_path_info_for_every_iis_path_shape() {
    run_matrix(WSGI_APP, false);
}

#[test]
fn asgi_root_path_and_path_for_every_iis_path_shape() {
    run_matrix(ASGI_APP, true);
}
