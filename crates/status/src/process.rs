//! Facts about a process as the Prometheus client libraries export them (`process_*`): CPU
//! time, file descriptors, memory, start time. Read from `/proc` on Linux; elsewhere there
//! are none, and the metrics are left out rather than reported as zero.

use serde_json::{Map, Value};

/// This process's facts as JSON (`cpu_seconds_total`, `open_fds`, `max_fds`,
/// `resident_memory_bytes`, `virtual_memory_bytes`, `start_time_seconds`); a fact that
/// cannot be read is absent.
pub fn own_facts() -> Value {
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut m = Map::new();
    #[cfg(target_os = "linux")]
    linux::facts(&mut m);
    Value::Object(m)
}

/// A process's resident set size in bytes (Linux `/proc`; `None` elsewhere).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|k| k.saturating_mul(1024))
}

/// A `Name:   123 kB` line of `/proc/PID/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(target_os = "linux")]
mod linux {
    use serde_json::{Map, Value, json};

    pub(super) fn facts(m: &mut Map<String, Value>) {
        let ticks = clock_ticks();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(f) = stat_fields(&stat)
        {
            let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            // proc(5): utime and stime are fields 14 and 15, starttime 22 (in clock ticks);
            // `f` starts at field 3.
            if let (Some(u), Some(s)) = (at(11), at(12)) {
                m.insert("cpu_seconds_total".into(), json!((u + s) as f64 / ticks));
            }
            if let Some(start) = at(19)
                && let Some(boot) = boot_time()
            {
                m.insert(
                    "start_time_seconds".into(),
                    json!(boot as f64 + start as f64 / ticks),
                );
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            m.insert("open_fds".into(), json!(dir.count()));
        }
        if let Some(n) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l))
        {
            m.insert("max_fds".into(), json!(n));
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for (key, line) in [
                ("resident_memory_bytes", "VmRSS:"),
                ("virtual_memory_bytes", "VmSize:"),
            ] {
                if let Some(kib) = super::status_kib(&status, line) {
                    m.insert(key.into(), json!(kib.saturating_mul(1024)));
                }
            }
        }
    }

    /// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
    /// parentheses, so the split is at the last `)`).
    pub(super) fn stat_fields(stat: &str) -> Option<Vec<&str>> {
        let (_, rest) = stat.rsplit_once(')')?;
        Some(rest.split_whitespace().collect())
    }

    /// The soft "Max open files" of `/proc/PID/limits` (`None` when unlimited).
    pub(super) fn max_open_files(limits: &str) -> Option<u64> {
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The boot time, seconds since the Unix epoch (`btime` of `/proc/stat`).
    fn boot_time() -> Option<u64> {
        std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    fn clock_ticks() -> f64 {
        // SAFETY: sysconf only reads a system constant.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_files_are_parsed_the_way_the_prometheus_clients_read_them() {
        let f = linux::stat_fields(
            "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 1 0 500 1 2",
        )
        .unwrap();
        assert_eq!((f[0], f[11], f[12], f[19]), ("S", "7", "3", "500"));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(linux::max_open_files(limits), Some(1024));
        assert_eq!(
            linux::max_open_files("Max open files   unlimited  unlimited  files"),
            None
        );
        let facts = own_facts();
        for k in [
            "cpu_seconds_total",
            "open_fds",
            "max_fds",
            "resident_memory_bytes",
            "start_time_seconds",
        ] {
            assert!(facts.get(k).is_some(), "{k} missing: {facts}");
        }
        assert!(
            facts["start_time_seconds"].as_f64().unwrap() > 1.6e9,
            "{facts}"
        );
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        assert_eq!(
            status_kib("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048)
        );
        assert_eq!(status_kib("Name:\tx\n", "VmRSS:"), None);
    }
}
