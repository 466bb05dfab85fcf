//! `SCRIPT_NAME` and `PATH_INFO` under IIS.
//!
//! With a `path="*"` FastCGI handler, IIS sends the full decoded URL path in `PATH_INFO` (and
//! often in `SCRIPT_NAME` too). wfastcgi blanked `SCRIPT_NAME`, so apps in sub-applications
//! (`/myapp`) routed wrongly and built wrong URLs. The application's virtual path is in
//! `APPL_MD_PATH` after the `/ROOT` segment (`/LM/W3SVC/1/ROOT/myapp` → `/myapp`); that is
//! `SCRIPT_NAME`, and `PATH_INFO` is the rest of the URL path.

/// The IIS application's virtual path from `APPL_MD_PATH` (`""` for a site's root app);
/// `None` when the value has no `/ROOT` segment. IIS 6 wrote `Root`, IIS 10 `ROOT`.
pub fn app_virtual_path(appl_md_path: &str) -> Option<String> {
    let segments: Vec<&str> = appl_md_path.split('/').collect();
    let root = segments
        .iter()
        .position(|s| s.eq_ignore_ascii_case("ROOT"))?;
    let rest: Vec<&str> = segments[root + 1..]
        .iter()
        .copied()
        .filter(|s| !s.is_empty())
        .collect();
    if rest.is_empty() {
        Some(String::new())
    } else {
        Some(format!("/{}", rest.join("/")))
    }
}

/// Splits an IIS request path into (`SCRIPT_NAME`, `PATH_INFO`) for an app mounted at
/// `script_name`. IIS paths are case-insensitive, so the prefix is matched ignoring ASCII
/// case; the returned `SCRIPT_NAME` keeps the case the client used, so URLs the app builds
/// match what the browser shows. A path outside the prefix is returned whole as `PATH_INFO`.
pub fn split(script_name: &str, path: &str) -> (String, String) {
    let prefix = script_name.trim_end_matches('/');
    if prefix.is_empty() {
        return (String::new(), path.to_owned());
    }
    let n = prefix.len();
    let matches = path.len() >= n
        && path.is_char_boundary(n)
        && path[..n].eq_ignore_ascii_case(prefix)
        && (path.len() == n || path.as_bytes()[n] == b'/');
    if matches {
        (path[..n].to_owned(), path[n..].to_owned())
    } else {
        (prefix.to_owned(), path.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_path_comes_from_appl_md_path() {
        assert_eq!(app_virtual_path("/LM/W3SVC/1/ROOT").as_deref(), Some(""));
        assert_eq!(app_virtual_path("/LM/W3SVC/1/ROOT/").as_deref(), Some(""));
        assert_eq!(
            app_virtual_path("/LM/W3SVC/1/ROOT/myapp").as_deref(),
            Some("/myapp")
        );
        assert_eq!(
            app_virtual_path("/LM/W3SVC/793536/Root/koo").as_deref(),
            Some("/koo")
        );
        assert_eq!(
            app_virtual_path("/LM/W3SVC/2/ROOT/a/b").as_deref(),
            Some("/a/b")
        );
        assert_eq!(app_virtual_path("/LM/W3SVC/1"), None);
    }

    #[test]
    fn path_is_split_at_the_app_prefix() {
        assert_eq!(split("", "/x/y"), (String::new(), "/x/y".into()));
        assert_eq!(
            split("/myapp", "/myapp/users/1"),
            ("/myapp".into(), "/users/1".into())
        );
        assert_eq!(
            split("/myapp", "/MyApp/users"),
            ("/MyApp".into(), "/users".into())
        );
        assert_eq!(split("/myapp", "/myapp"), ("/myapp".into(), String::new()));
        assert_eq!(
            split("/myapp", "/myapplication"),
            ("/myapp".into(), "/myapplication".into())
        );
        assert_eq!(split("/myapp/", "/myapp/x"), ("/myapp".into(), "/x".into()));
        assert_eq!(
            split("/caf\u{e9}", "/caf\u{e9}/x"),
            ("/caf\u{e9}".into(), "/x".into())
        );
    }
}
