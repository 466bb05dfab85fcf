//! Logging setup. pyfcgi never writes logs to stdout: under a web server stdout may be the
//! FastCGI socket's neighbour or (under IIS) an invalid handle.
//!
//! Log files (`--log-file`, wfastcgi's `WSGI_LOG`) rotate by size. Several processes (IIS's
//! `maxInstances`) may share one file: every event is one `write` on an append-mode handle,
//! which the OS keeps whole on local files (not under Wine; there, use `{pid}` in the name
//! to give each process its own file).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("PYFCGI_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// A log file opened after startup ([`attach_file`]); until then, stderr.
static LATE_FILE: Mutex<Option<RotatingFile>> = Mutex::new(None);

/// Where [`init_stderr`]'s events go: the late file once attached, else stderr.
struct LateWriter;

impl Write for LateWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = LATE_FILE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match file.as_mut() {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut file = LATE_FILE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match file.as_mut() {
            Some(f) => f.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Logs to stderr at `level` (overridden by `PYFCGI_LOG`), or to the file [`attach_file`]
/// names later.
pub fn init_stderr(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LateWriter)
        .try_init();
}

/// From now on, [`init_stderr`]'s log goes to the file at `path` (`{pid}` expanded),
/// without colours... (under IIS the web.config's `WSGI_LOG`, known from the first request).
#[cfg_attr(not(feature = "python"), allow(dead_code))] // used by the first-request setup
pub fn attach_file(path: &Path, rotation: Rotation) -> anyhow::Result<PathBuf> {
    let path = expand_path(path);
    let file = RotatingFile::open(&path, rotation)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    *LATE_FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
    Ok(path)
}

/// Size-based rotation of a log file.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate when the file grows past this many bytes (0 = never).
    pub max_size: u64,
    /// Rotated files kept: PATH.1 (newest) … PATH.N.
    pub keep: u32,
}

/// The log file path with `{pid}` replaced by this process id.
pub fn expand_path(path: &Path) -> PathBuf {
    PathBuf::from(
        path.to_string_lossy()
            .replace("{pid}", &std::process::id().to_string()),
    )
}

/// An append-mode log file that rotates itself.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    rotation: Rotation,
    written: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl RotatingFile {
    /// Opens (creating folders as needed) `path` for appending.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(Self {
            path: path.to_owned(),
            file,
            rotation,
            written,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // Another process sharing the file may have rotated it already: only the process that
        // still writes to the file at PATH renames it.
        let ours = same_file(&self.file, &self.path);
        if ours {
            for i in (1..self.rotation.keep).rev() {
                let from = numbered(&self.path, i);
                if from.exists() {
                    let _ = std::fs::rename(&from, numbered(&self.path, i + 1));
                }
            }
            if self.rotation.keep > 0 {
                std::fs::rename(&self.path, numbered(&self.path, 1))?;
            } else {
                std::fs::remove_file(&self.path)?;
            }
        }
        self.file = open_append(&self.path)?;
        self.written = self.file.metadata().map_or(0, |m| m.len());
        Ok(())
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(file: &File, path: &Path) -> bool {
    // Windows: a file open without FILE_SHARE_DELETE cannot be renamed by others, so the
    // file at PATH is ours when its size matches what our handle sees.
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.rotation.max_size > 0
            && self.written + buf.len() as u64 > self.rotation.max_size
            && self.written > 0
        {
            // A failed rotation must not lose the log line: keep writing to the old file.
            let _ = self.rotate();
        }
        // One write per event keeps lines whole when processes share the file.
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Logs to the file at `path` (`{pid}` expanded; appending; created if missing) at `level`.
pub fn init_file(path: &Path, level: &str, rotation: Rotation) -> anyhow::Result<PathBuf> {
    let path = expand_path(path);
    let file = RotatingFile::open(&path, rotation)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_rotate_by_size_and_keep_n() {
        let dir = std::env::temp_dir().join(format!("pyfcgi-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("pyfcgi.log");
        let mut f = RotatingFile::open(
            &path,
            Rotation {
                max_size: 100,
                keep: 2,
            },
        )
        .unwrap();
        for i in 0..10 {
            f.write_all(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let main = std::fs::read_to_string(&path).unwrap();
        let one = std::fs::read_to_string(numbered(&path, 1)).unwrap();
        assert!(main.len() <= 100 && one.len() <= 100);
        assert!(main.contains("line 09") && one.contains("line 07"));
        assert!(numbered(&path, 2).exists() && !numbered(&path, 3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_placeholder_is_expanded() {
        let p = expand_path(Path::new("/var/log/pyfcgi-{pid}.log"));
        assert_eq!(
            p,
            PathBuf::from(format!("/var/log/pyfcgi-{}.log", std::process::id()))
        );
    }
}
