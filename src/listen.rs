//! Opening the transport `serve` (or the supervisor) listens on: `--bind`, else systemd's
//! socket, else stdin; the unix socket file's mode and owner.

use anyhow::{Context, bail};
use pyfcgi_server::transport::inspect_stdin;
use pyfcgi_server::{Bind, Listener};
use pyfcgi_settings::Settings;
use tracing::{info, warn};

/// Where to listen: `--bind`, else systemd's socket, else stdin.
pub fn bind_of(settings: &Settings) -> anyhow::Result<Bind> {
    if let Some(b) = &settings.bind {
        return Ok(b.clone());
    }
    if let Some(fd) = systemd_socket() {
        return Ok(Bind::Fd(fd));
    }
    if inspect_stdin().is_none() {
        bail!(
            "no --bind given and standard input is not a socket (nor IIS's named pipe); use e.g. --bind 127.0.0.1:9000 or --bind unix:/run/pyfcgi.sock"
        );
    }
    Ok(Bind::Fd(0))
}

/// Opens the transport the settings name; the error says which address and why (a missing
/// folder for a unix socket is named).
pub async fn open_listener(settings: &Settings) -> anyhow::Result<Listener> {
    let bind = bind_of(settings)?;
    if let Bind::Unix(path) = &bind
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        bail!(
            "cannot open transport {bind}: the folder {} does not exist (create it, or choose another --bind)",
            dir.display()
        );
    }
    Listener::bind(
        &bind,
        &unix_socket_options(settings)?,
        settings.web_server_addrs.clone(),
    )
    .await
    .with_context(|| format!("cannot open transport {bind}"))
}

/// How to create a `unix:` socket file: `--socket-mode`, `--socket-owner`, `--socket-group`.
pub fn unix_socket_options(
    settings: &Settings,
) -> anyhow::Result<pyfcgi_server::transport::UnixSocketOptions> {
    #[cfg(unix)]
    let (uid, gid) = (
        settings
            .socket_owner
            .as_deref()
            .map(|u| user_id(u).context("invalid --socket-owner"))
            .transpose()?,
        settings
            .socket_group
            .as_deref()
            .map(|g| group_id(g).context("invalid --socket-group"))
            .transpose()?,
    );
    #[cfg(windows)]
    let (uid, gid) = {
        if settings.socket_owner.is_some() || settings.socket_group.is_some() {
            bail!(
                "--socket-owner and --socket-group apply to unix sockets, which Windows does not use here"
            );
        }
        (None, None)
    };
    Ok(pyfcgi_server::transport::UnixSocketOptions {
        mode: Some(settings.socket_mode),
        uid,
        gid,
    })
}

/// The socket systemd passed (socket activation: `LISTEN_PID` is this process and
/// `LISTEN_FDS` at least 1): descriptor 3. Only the first one is used.
pub fn systemd_socket() -> Option<i32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    if pid != std::process::id() || fds == 0 {
        return None;
    }
    if fds > 1 {
        warn!(
            fds,
            "systemd passed several sockets (LISTEN_FDS); pyfcgi serves the first one only"
        );
    }
    info!("using the socket systemd passed (socket activation)");
    Some(3)
}

/// A user name or numeric id as a uid (`--socket-owner`).
#[cfg(unix)]
pub fn user_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).context("the name contains a NUL byte")?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r fills it, pointing into `buf`, which outlives
    // every use of it here.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &raw mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut out,
        )
    };
    if rc != 0 || out.is_null() {
        bail!("no user named {name:?} on this machine");
    }
    Ok(pw.pw_uid)
}

/// A group name or numeric id as a gid (`--socket-group`).
#[cfg(unix)]
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).context("the name contains a NUL byte")?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: as in user_id, with getgrnam_r.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its real size.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &raw mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut out,
        )
    };
    if rc != 0 || out.is_null() {
        bail!("no group named {name:?} on this machine");
    }
    Ok(gr.gr_gid)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_name_or_id() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(user_id("1234").unwrap(), 1234);
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-pyfcgi").unwrap_err().to_string();
        assert!(e.contains("no group named"), "{e}");
        assert!(user_id("no-such-user-pyfcgi").is_err());
    }
}
