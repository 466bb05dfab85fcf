//! `pyfcgi bench` driven as a user would: its correctness gate, its JSON report and its exit
//! codes (not its speed: CI machines are too noisy for timed assertions).

use std::time::Duration;

use crate::support::{CmdOutput, Server, pyfcgi, run_pyfcgi};

const LIMIT: Duration = Duration::from_secs(120);

fn bench(args: &[&str]) -> CmdOutput {
    let mut argv = vec!["bench"];
    argv.extend_from_slice(args);
    run_pyfcgi(&argv, &[], None, LIMIT)
}

/// The integer value of `"key":N` in the one-line JSON report.
fn json_u64(json: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let at = json
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} missing: {json}"))
        + needle.len();
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a count: {json}"))
}

fn json_f64(json: &str, key: &str) -> f64 {
    let needle = format!("\"{key}\":");
    let at = json
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} missing: {json}"))
        + needle.len();
    let number: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {json}"))
}

fn assert_code(out: &CmdOutput, code: i32) {
    assert_eq!(
        out.code(),
        Some(code),
        "stderr:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout_str()
    );
}

#[test]
fn bench_connect_counts_every_good_response_in_json() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "4",
        "-n",
        "2000",
        "--expect-body",
        "Hello, World!",
        "--json",
    ]);
    assert_code(&out, 0);
    let json = out.stdout_str();
    assert!(json.starts_with('{') && json.ends_with("}\n"), "{json}");
    assert_eq!(json.lines().count(), 1, "{json}");
    assert_eq!(json_u64(&json, "requests"), 2000, "{json}");
    assert_eq!(json_u64(&json, "ok"), 2000, "{json}");
    assert_eq!(json_u64(&json, "error_total"), 0, "{json}");
    assert_eq!(json_u64(&json, "connections"), 4, "{json}");
    // The hello body is 13 bytes, so the CGI response is more than that per request.
    assert!(json_u64(&json, "bytes_in") > 2000 * 13, "{json}");
    assert!(json_u64(&json, "bytes_out") > 2000 * 16, "{json}");
    assert!(json_f64(&json, "throughput_rps") > 0.0, "{json}");
    let p50 = json_f64(&json, "p50");
    let p99 = json_f64(&json, "p99");
    let max = json_f64(&json, "max");
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{json}");
}

#[test]
fn bench_spawn_runs_one_echo_process_per_connection() {
    let out = bench(&[
        "--spawn",
        "-c",
        "2",
        "-n",
        "300",
        "--data-binary",
        "abc",
        "--expect-body",
        "abc",
        "--json",
        "--",
        pyfcgi(),
        "serve",
        "--builtin",
        "echo",
    ]);
    assert_code(&out, 0);
    let json = out.stdout_str();
    assert_eq!(json_u64(&json, "ok"), 300, "{json}");
    assert_eq!(json_u64(&json, "error_total"), 0, "{json}");
}

#[test]
fn bench_wrong_expected_body_counts_mismatches_and_exits_2() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "2",
        "-n",
        "250",
        "--expect-body",
        "wrong",
    ]);
    assert_code(&out, 2);
    let table = out.stdout_str();
    // The bodies of responses 0, 100 and 200 are compared; the run goes on after a mismatch.
    assert!(
        table.contains("requests    250 (247 ok, 3 errors)"),
        "{table}"
    );
    assert!(
        table.contains("checked     the status of every response; the body of 0 (1 in 100)"),
        "{table}"
    );
    assert!(table.contains("body 3"), "{table}");
    assert!(out.stderr.contains("first error: body:"), "{}", out.stderr);
}

#[test]
fn bench_rate_paces_an_open_loop_run() {
    let server = Server::tcp(&["--builtin", "hello"]);
    let out = bench(&[
        "--connect",
        &server.addr,
        "--rate",
        "500",
        "-d",
        "1",
        "--json",
    ]);
    assert_code(&out, 0);
    let json = out.stdout_str();
    // Request k is due at k/500 s, and none is due at or after 1 s: exactly 500.
    assert_eq!(json_u64(&json, "requests"), 500, "{json}");
    assert_eq!(json_u64(&json, "ok"), 500, "{json}");
    assert!(json_f64(&json, "duration_s") >= 0.99, "{json}");
}

#[test]
fn bench_refused_connection_is_counted_not_fatal() {
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let out = bench(&["--connect", &addr, "-c", "1", "-n", "3", "--json"]);
    assert_code(&out, 2);
    let json = out.stdout_str();
    assert!(json_u64(&json, "connect") >= 3, "{json}");
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

#[test]
fn bench_spawn_with_no_keep_conn_is_a_usage_error() {
    let out = bench(&["--spawn", "--no-keep-conn", "--", pyfcgi(), "serve"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("--no-keep-conn"), "{}", out.stderr);
}

#[test]
fn bench_streams_multiplexes_requests_and_checks_every_lane() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "2",
        "--streams",
        "8",
        "-n",
        "3000",
        "--data-binary",
        "multiplexed body",
        "--expect-body",
        "multiplexed body",
        "--json",
    ]);
    assert_code(&out, 0);
    let json = out.stdout_str();
    assert_eq!(json_u64(&json, "ok"), 3000, "{json}");
    assert_eq!(json_u64(&json, "error_total"), 0, "{json}");
    assert_eq!(json_u64(&json, "streams"), 8, "{json}");
}

#[test]
fn bench_streams_against_a_server_that_does_not_multiplex_reports_refusals() {
    let server = Server::tcp(&["--builtin", "hello", "--no-multiplex"]);
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "1",
        "--streams",
        "4",
        "-n",
        "200",
    ]);
    assert_code(&out, 2);
    let table = out.stdout_str();
    assert!(table.contains("4 streams each"), "{table}");
    assert!(!table.contains("protocol 0,"), "{table}");
    assert!(
        out.stderr.contains("CantMpxConn") || out.stderr.contains("refused"),
        "{}",
        out.stderr
    );
}

#[test]
fn bench_streams_needs_a_kept_connection() {
    let out = bench(&["--spawn", "--streams", "2", "--", "true"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("--streams"), "{}", out.stderr);
}

/// Every response's status is counted, not only the sampled ones: a page that answers 404 is
/// 200 errors out of 200, and the report says how many bodies were compared.
#[test]
fn bench_counts_the_status_of_every_response() {
    let dir = crate::support::TempDir::new("bench-404");
    std::fs::write(
        dir.path().join("notfound.py"),
        "def app(environ, start_response):\n    \
         start_response('404 Not Found', [('Content-Type', 'text/plain')])\n    \
         return [b'no such page']\n",
    )
    .unwrap();
    let spec = format!("{}/notfound.py:app", dir.path().display());
    let server = Server::tcp(&[&spec]);
    let out = bench(&["--connect", &server.addr, "-c", "2", "-n", "200"]);
    assert_code(&out, 2);
    let table = out.stdout_str();
    assert!(
        table.contains("requests    200 (0 ok, 200 errors)"),
        "{table}"
    );
    assert!(table.contains("status 200"), "{table}");
    assert!(
        out.stderr.contains("first error: status: status 404"),
        "{}",
        out.stderr
    );
    // The right status: every one ok, and the sampled bodies (requests 0 and 100) counted.
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "2",
        "-n",
        "200",
        "--expect-status",
        "404",
        "--expect-body",
        "no such page",
        "--json",
    ]);
    assert_code(&out, 0);
    let json = out.stdout_str();
    assert_eq!(json_u64(&json, "ok"), 200, "{json}");
    assert_eq!(json_u64(&json, "bodies_checked"), 2, "{json}");
}

#[test]
fn bench_latency_out_writes_every_measured_request_as_csv() {
    let dir = crate::support::TempDir::new("bench-latency-out");
    std::fs::write(
        dir.path().join("half.py"),
        "import itertools\n\
         n = itertools.count()\n\
         def app(environ, start_response):\n    \
         status = '200 OK' if next(n) % 2 else '503 Busy'\n    \
         start_response(status, [('Content-Type', 'text/plain')])\n    \
         return [b'x']\n",
    )
    .unwrap();
    let spec = format!("{}/half.py:app", dir.path().display());
    let server = Server::tcp(&[&spec]);
    let csv = dir.path().join("lat.csv");
    let out = bench(&[
        "--connect",
        &server.addr,
        "-c",
        "2",
        "-n",
        "300",
        "--warmup",
        "0.2",
        "--latency-out",
        csv.to_str().unwrap(),
    ]);
    assert_code(&out, 2);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("start_s,latency_us,result"), "{text}");
    let rows: Vec<(f64, f64, &str)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2])
        })
        .collect();
    // The measured requests only (the warm-up's are not written), in start order.
    assert_eq!(rows.len(), 300, "{text}");
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "{text}");
    assert!(rows.iter().all(|r| r.1 > 0.0), "{text}");
    let ok = rows.iter().filter(|r| r.2 == "ok").count();
    let status = rows.iter().filter(|r| r.2 == "status").count();
    assert_eq!(ok + status, 300, "{text}");
    // The same counts as the table.
    let table = out.stdout_str();
    assert!(
        table.contains(&format!("requests    300 ({ok} ok, {status} errors)")),
        "{table}\n{ok} ok, {status} status errors in the file"
    );
    assert!(ok > 0 && status > 0, "{text}");

    // A file that cannot be written fails before the run, with the path.
    let out = bench(&[
        "--connect",
        &server.addr,
        "-n",
        "5",
        "--latency-out",
        dir.path().join("no/such/dir/lat.csv").to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("cannot write the latency file") && out.stderr.contains("no/such/dir"),
        "{}",
        out.stderr
    );
}
