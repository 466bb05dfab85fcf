//! Request ids name one request across every process that writes a log: the workers of
//! `pyfcgi serve --workers N` and IIS-style instances (`pyfcgi bench --spawn-pool`) share an
//! access log without a repeated id, and the id on a 500 page is the one on that request's
//! access-log line and error-log line.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Server, TempDir, file_lines, pyfcgi, roundtrip, run_pyfcgi, serve_command};
use crate::wsgi::{Cgi, PY_ENV};

const LIMIT: Duration = Duration::from_secs(120);

/// `pyfcgi bench ARGS --json`, which must succeed.
fn bench(args: &[&str]) {
    let mut argv = vec!["bench", "--json"];
    argv.extend_from_slice(args);
    let out = run_pyfcgi(&argv, &[], None, LIMIT);
    assert_eq!(
        out.code(),
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout_str()
    );
}

/// Checks `{pid} {request_id}` lines: no id twice, and each process shows one tag of its
/// own (`TAG-N`, N counting its requests). Returns the number of lines per pid.
fn assert_ids_unique(lines: &[String]) -> BTreeMap<u32, usize> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let mut tags: BTreeMap<u32, &str> = BTreeMap::new();
    let mut per_pid = BTreeMap::new();
    for line in lines {
        let (pid, id) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not `pid id`: {line:?}"));
        let pid: u32 = pid.parse().unwrap_or_else(|_| panic!("{line:?}"));
        let (tag, n) = id
            .split_once('-')
            .unwrap_or_else(|| panic!("no tag in {id:?}"));
        assert!(
            tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id:?}"
        );
        assert!(n.parse::<u64>().is_ok_and(|n| n >= 1), "{id:?}");
        assert_eq!(*tags.entry(pid).or_insert(tag), tag, "pid {pid}: two tags");
        if let Some(earlier) = seen.insert(id, line) {
            panic!("id {id} twice: {earlier:?} and {line:?}");
        }
        *per_pid.entry(pid).or_insert(0) += 1;
    }
    let mut distinct: Vec<&str> = tags.values().copied().collect();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        tags.len(),
        "processes share a tag: {tags:?}"
    );
    per_pid
}

#[test]
fn request_ids_stay_unique_across_supervised_workers_sharing_an_access_log() {
    let dir = TempDir::new("request-ids-workers");
    let access = dir.path().join("access.log");
    let server = Server::tcp(&[
        "--builtin",
        "hello",
        "--workers",
        "2",
        "--access-log",
        access.to_str().unwrap(),
        "--access-log-format",
        "{pid} {request_id}",
    ]);
    // Each worker counts from 1: before ids carried a process tag, every number up to the
    // smaller worker's count appeared twice. A new connection per request spreads the
    // requests over both workers; rounds go on until both answered.
    let mut sent = 0;
    let per_pid = loop {
        bench(&[
            "--connect",
            &server.addr,
            "-c",
            "4",
            "-n",
            "200",
            "--no-keep-conn",
        ]);
        sent += 200;
        let lines = file_lines(&access, sent);
        assert_eq!(lines.len(), sent, "{}", server.log());
        let per_pid = assert_ids_unique(&lines);
        if (per_pid.len() == 2 && sent >= 400) || sent >= 2000 {
            break per_pid;
        }
    };
    assert_eq!(
        per_pid.len(),
        2,
        "both workers should have answered: {per_pid:?}"
    );
}

#[test]
fn request_ids_stay_unique_across_iis_style_instances_sharing_an_access_log() {
    let dir = TempDir::new("request-ids-instances");
    let access = dir.path().join("access.log");
    // As IIS runs maxInstances processes, each counting its requests from 1.
    bench(&[
        "--spawn-pool",
        "2",
        "-c",
        "4",
        "-n",
        "400",
        "--",
        pyfcgi(),
        "serve",
        "--builtin",
        "hello",
        "--access-log",
        access.to_str().unwrap(),
        "--access-log-format",
        "{pid} {request_id}",
    ]);
    let lines = file_lines(&access, 400);
    assert_eq!(lines.len(), 400);
    let per_pid = assert_ids_unique(&lines);
    assert_eq!(per_pid.len(), 2, "{per_pid:?}");
}

#[test]
fn a_500_page_shows_the_request_id_of_its_access_log_and_error_log_lines() {
    let dir = TempDir::new("request-ids-500");
    let app = dir.path().join("boom.py");
    std::fs::write(
        &app,
        "def app(environ, start_response):\n    raise RuntimeError('boom ' + environ['PATH_INFO'])\n",
    )
    .unwrap();
    let access = dir.path().join("access.log");
    let spec = format!("{}:app", app.display());
    let mut cmd = serve_command(&[
        &spec,
        "--workers",
        "2",
        "--access-log",
        access.to_str().unwrap(),
        "--access-log-format",
        "{status} {uri} {request_id}",
    ]);
    cmd.args(["--bind", "127.0.0.1:0"])
        .env("PYFCGI_LOG", "info")
        .stdin(Stdio::null());
    for (k, v) in PY_ENV {
        cmd.env(k, v);
    }
    let server = Server::from_command(cmd, None);
    let mut ids = Vec::new();
    for n in 0..6 {
        let uri = format!("/boom{n}");
        let r = Cgi::parse(roundtrip(
            &server,
            &[
                ("REQUEST_METHOD", "GET"),
                ("REQUEST_URI", &uri),
                ("SCRIPT_NAME", ""),
                ("PATH_INFO", &uri),
                ("QUERY_STRING", ""),
                ("SERVER_NAME", "localhost"),
                ("SERVER_PORT", "80"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
            ],
            b"",
        ));
        assert!(r.status.starts_with("500 "), "{r:?}\n{}", server.log());
        ids.push((uri, r.request_id()));
    }
    let lines = file_lines(&access, ids.len());
    for (uri, id) in &ids {
        assert!(
            lines.contains(&format!("500 {uri} {id}")),
            "no access-log line for {uri} with {id}: {lines:?}"
        );
        // The error-log entry: the traceback (which names the path), then its fields.
        let needle = format!("request={id}");
        assert!(
            server.wait_log(&needle),
            "no {needle} in:\n{}",
            server.log()
        );
        let log = server.log();
        let entry = log
            .split("application error")
            .find(|e| e.contains(&format!("RuntimeError: boom {uri}")))
            .unwrap_or_else(|| panic!("no application error for {uri}:\n{log}"));
        assert!(entry.contains(&needle), "{entry}");
    }
    let mut distinct: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
}
