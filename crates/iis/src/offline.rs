//! `app_offline.htm`: while this file exists in the application's root, every request is
//! answered 503 with the file's content and the application is not called (the convention
//! IIS/ASP.NET admins use for deployments).

use std::path::{Path, PathBuf};

/// The file's name.
pub const FILE_NAME: &str = "app_offline.htm";

/// Largest page served (a bigger file is cut, with a warning in the log by the caller).
pub const MAX_PAGE: u64 = 1 << 20;

/// Where `app_offline.htm` would be for an app rooted at `app_root`.
pub fn path(app_root: &Path) -> PathBuf {
    app_root.join(FILE_NAME)
}

/// The offline page, when the file exists: a complete CGI response (503, `Retry-After`).
pub fn response(app_root: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path(app_root)).ok()?;
    let mut body = Vec::new();
    file.take(MAX_PAGE).read_to_end(&mut body).ok()?;
    let mut out = format!(
        "Status: 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\nRetry-After: 30\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_page_is_served_while_the_file_exists() {
        let dir = std::env::temp_dir().join(format!("pyfcgi-offline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(response(&dir).is_none());
        std::fs::write(path(&dir), "<h1>Back soon</h1>").unwrap();
        let r = String::from_utf8(response(&dir).unwrap()).unwrap();
        assert!(r.starts_with("Status: 503 Service Unavailable\r\n"));
        assert!(r.ends_with("\r\n\r\n<h1>Back soon</h1>"));
        assert!(r.contains("Content-Length: 18\r\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
