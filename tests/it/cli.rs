//! `pyfcgi request` and `pyfcgi serve` driven from the command line as a user would: exact
//! output bytes, exit codes and error messages.

use std::net::TcpListener;
use std::time::Duration;

use crate::support::{Server, TempDir, pyfcgi, run_pyfcgi};

/// What `pyfcgi request` prints for the `hello` built-in (curl -i style, CRLF line ends).
const HELLO_HTTP: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

const LIMIT: Duration = Duration::from_secs(60);

/// `pyfcgi request ARGS` (stdin null, default environment).
fn request(args: &[&str]) -> crate::support::CmdOutput {
    let mut argv = vec!["request"];
    argv.extend_from_slice(args);
    run_pyfcgi(&argv, &[], None, LIMIT)
}

/// Asserts a zero exit, showing stderr otherwise.
fn assert_ok(out: &crate::support::CmdOutput) {
    assert_eq!(
        out.code(),
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout_str()
    );
}

/// Deterministic bytes covering every value, CR and LF included (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn request_spawn_prints_hello_like_curl_i() {
    let out = request(&["--spawn", "--", pyfcgi(), "serve", "--builtin", "hello"]);
    assert_ok(&out);
    assert_eq!(out.stdout, HELLO_HTTP, "{:?}", out.stdout_str());
}

#[test]
fn request_spawn_listen_prints_hello_like_curl_i() {
    let out = request(&[
        "--spawn-listen",
        "--",
        pyfcgi(),
        "serve",
        "--builtin",
        "hello",
    ]);
    assert_ok(&out);
    assert_eq!(out.stdout, HELLO_HTTP, "{:?}", out.stdout_str());
}

#[test]
fn request_spawn_repeat_300_cycles_ids_on_one_kept_connection() {
    // The spawned server's stderr goes to the client's stderr: its debug log shows how many
    // connections it accepted.
    let out = run_pyfcgi(
        &[
            "request",
            "--spawn",
            "--repeat",
            "300",
            "--",
            pyfcgi(),
            "serve",
            "--builtin",
            "hello",
        ],
        &[("PYFCGI_LOG", "debug")],
        None,
        LIMIT,
    );
    assert_ok(&out);
    assert_eq!(out.stdout.len(), HELLO_HTTP.len() * 300);
    assert_eq!(out.stdout, HELLO_HTTP.repeat(300));
    assert_eq!(
        out.stderr.matches("connection accepted").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("outcome=StreamClosed"),
        "{}",
        out.stderr
    );
}

#[test]
fn request_get_values_reports_the_servers_limits() {
    let server = Server::tcp(&["--builtin", "hello", "--max-conns", "5"]);
    let out = request(&["--connect", &server.addr, "--get-values"]);
    assert_ok(&out);
    assert_eq!(
        out.stdout_str(),
        "FCGI_MAX_CONNS=5\nFCGI_MAX_REQS=640\nFCGI_MPXS_CONNS=1\n"
    );
}

#[test]
fn request_data_file_strips_newlines_and_echo_returns_it() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let dir = TempDir::new("cli-body");
    let file = dir.path().join("body.txt");
    std::fs::write(&file, b"a=1&b=2\nc=3\r\n").unwrap();
    let spec = format!("@{}", file.display());
    let out = request(&["--connect", &server.addr, "-d", &spec]);
    assert_ok(&out);
    assert_eq!(
        out.stdout_str(),
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\na=1&b=2c=3"
    );
}

#[test]
fn request_data_binary_from_stdin_echoes_3mb_exactly() {
    let server = Server::tcp(&["--builtin", "echo"]);
    let body = noise(3 << 20);
    let out = run_pyfcgi(
        &[
            "request",
            "--connect",
            &server.addr,
            "-s",
            "--data-binary",
            "@-",
        ],
        &[],
        Some(body.clone()),
        LIMIT,
    );
    assert_ok(&out);
    assert_eq!(out.stdout.len(), body.len());
    assert!(out.stdout == body, "echoed body differs");
}

#[test]
fn request_method_header_and_param_reach_the_application() {
    let server = Server::tcp(&["--builtin", "env"]);
    let out = request(&[
        "--connect",
        &server.addr,
        "-s",
        "-X",
        "PUT",
        "-H",
        "X-A: b",
        "--param",
        "FOO=bar",
        "/p?q=1",
    ]);
    assert_ok(&out);
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "HTTP_X_A=b",
        "FOO=bar",
        "REQUEST_METHOD=PUT",
        "QUERY_STRING=q=1",
    ] {
        assert!(lines.contains(&want), "no {want} in:\n{text}");
    }
    assert!(!text.contains("APPL_MD_PATH"), "{text}");
}

#[test]
fn request_iis_sends_the_iis_params() {
    let server = Server::tcp(&["--builtin", "env"]);
    let out = request(&["--connect", &server.addr, "-s", "--iis", "/x"]);
    assert_ok(&out);
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("APPL_MD_PATH=")),
        "{text}"
    );
    assert!(
        lines.contains(&"SERVER_SOFTWARE=Microsoft-IIS/10.0"),
        "{text}"
    );
}

#[test]
fn request_to_closed_port_exits_1_with_a_clear_message() {
    let out = request(&["--connect", "127.0.0.1:1", "--timeout", "10"]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("cannot connect") && out.stderr.contains("127.0.0.1:1"),
        "{}",
        out.stderr
    );
}

#[test]
fn request_to_server_that_hangs_up_exits_2() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        // Accept and drop each connection at once.
        for s in listener.incoming() {
            drop(s);
        }
    });
    let out = request(&["--connect", &addr, "--timeout", "10"]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.starts_with("pyfcgi request: "), "{}", out.stderr);
}

#[test]
fn serve_without_bind_and_no_socket_on_stdin_exits_1_quickly() {
    let out = run_pyfcgi(
        &["serve", "--builtin", "hello"],
        &[],
        None,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    assert!(out.stderr.contains("--bind"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "logs never go to stdout");
}

#[test]
fn serve_with_nonsense_bind_fails_with_invalid_bind_address() {
    let out = run_pyfcgi(
        &["serve", "--builtin", "hello", "--bind", "nonsense"],
        &[],
        None,
        Duration::from_secs(10),
    );
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid bind address"),
        "{}",
        out.stderr
    );
}

#[test]
fn request_shutdown_after_lets_the_request_in_flight_finish_and_the_child_exit_0() {
    // The Unix twin of IIS's shutdown event: SIGTERM while request 3 (5 MB) is on its way.
    let dir = TempDir::new("cli-shutdown-after");
    let file = dir.path().join("body.bin");
    std::fs::write(&file, noise(5 << 20)).unwrap();
    let spec = format!("@{}", file.display());
    let out = request(&[
        "--spawn",
        "--repeat",
        "3",
        "--shutdown-after",
        "3",
        "-s",
        "--data-binary",
        &spec,
        "--expect-body",
        &spec,
        "--",
        pyfcgi(),
        "serve",
        "--builtin",
        "echo",
    ]);
    assert_ok(&out);
    assert!(
        out.stderr
            .contains("3 response bodies matched --expect-body"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("child exited with code 0"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout.len(), 3 * (5 << 20));
}

#[test]
fn request_expect_body_mismatch_exits_4() {
    let out = request(&[
        "--spawn",
        "-d",
        "abc",
        "--expect-body",
        "abd",
        "--",
        pyfcgi(),
        "serve",
        "--builtin",
        "echo",
    ]);
    assert_eq!(out.code(), Some(4), "{}", out.stderr);
    assert!(
        out.stderr.contains("first difference at byte 2"),
        "{}",
        out.stderr
    );
}

/// The long flags `pyfcgi SUBCOMMAND --help` lists (`--help` and `--version` aside).
fn help_flags(subcommand: &str) -> std::collections::BTreeSet<String> {
    let out = run_pyfcgi(&[subcommand, "--help"], &[], None, LIMIT);
    assert_ok(&out);
    out.stdout_str()
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('-')
                .filter(|_| !l.starts_with("--"))
                .map_or(l, |rest| {
                    // `-b, --bind <ADDR>`
                    rest.split_once(", ").map_or(l, |(_, long)| long)
                });
            let name = l.strip_prefix("--")?;
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty() && name != "help" && name != "version").then_some(name)
        })
        .collect()
}

/// The flags docs/configuration.md lists in the tables of `heading`'s section (the first
/// cell of each row: `` `--name VALUE` ``, `` `--a` / `--b` ``, ...).
fn documented_flags(heading: &str) -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/configuration.md"));
    let section = &doc[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut flags = std::collections::BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row[1..].split(" | ").next().unwrap_or_default();
        for part in cell.split('`').skip(1).step_by(2) {
            if let Some(name) = part.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(name);
            }
        }
    }
    flags
}

#[test]
fn every_flag_is_documented_in_configuration_md_and_every_documented_flag_exists() {
    for (subcommand, heading) in [
        ("serve", "## `pyfcgi serve [APP]`"),
        ("request", "## `pyfcgi request`"),
        ("bench", "## `pyfcgi bench`"),
        ("top", "## `pyfcgi top`"),
    ] {
        let real = help_flags(subcommand);
        let documented = documented_flags(heading);
        assert!(real.len() >= 3, "{subcommand}: parsed {real:?} from --help");
        let undocumented: Vec<_> = real.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&real).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "pyfcgi {subcommand}: flags missing from docs/configuration.md ({heading}): \
             {undocumented:?}; documented there but not flags of pyfcgi {subcommand}: {unknown:?}"
        );
    }
}

/// Runs `shell -c script` (None when the shell is not installed), returning stdout.
fn shell_out(shell: &str, script: &str) -> Option<String> {
    let out = std::process::Command::new(shell)
        .arg("-c")
        .arg(script)
        .env("PYFCGI", pyfcgi())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{shell} -c {script}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn completions_are_generated_for_each_shell_and_complete_flags_and_subcommands() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = run_pyfcgi(&["completions", shell], &[], None, LIMIT);
        assert_ok(&out);
        let script = out.stdout_str();
        for word in ["max-requests", "latency-out", "completions", "bench"] {
            assert!(script.contains(word), "{shell}: no {word} in\n{script}");
        }
    }
    // Loaded into the shells themselves (scripts/install-deps installs zsh and fish).
    let bash = shell_out(
        "bash",
        r#"source <("$PYFCGI" completions bash)
           COMP_WORDS=(pyfcgi serve --max-re); COMP_CWORD=2
           _pyfcgi pyfcgi --max-re serve; echo "${COMPREPLY[@]}"
           COMP_WORDS=(pyfcgi compl); COMP_CWORD=1
           _pyfcgi pyfcgi compl pyfcgi; echo "${COMPREPLY[@]}""#,
    )
    .expect("bash is installed");
    assert_eq!(
        bash,
        "--max-requests --max-requests-jitter --max-requests-per-conn\ncompletions\n"
    );
    if let Some(fish) = shell_out(
        "fish",
        r#"source ("$PYFCGI" completions fish | psub); complete -C 'pyfcgi bench --latency'"#,
    ) {
        assert!(fish.starts_with("--latency-out\t"), "{fish}");
    }
    // zsh parses it (-n: no execution).
    let dir = TempDir::new("zsh-completion");
    let file = dir.path().join("_pyfcgi");
    std::fs::write(
        &file,
        run_pyfcgi(&["completions", "zsh"], &[], None, LIMIT).stdout,
    )
    .unwrap();
    shell_out("zsh", &format!("zsh -n {}", file.display()));
    let out = run_pyfcgi(&["completions", "tcsh"], &[], None, LIMIT);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr
            .contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{}",
        out.stderr
    );
}

#[test]
fn man_pages_are_generated_for_pyfcgi_and_each_subcommand() {
    let out = run_pyfcgi(&["man"], &[], None, LIMIT);
    assert_ok(&out);
    let page = out.stdout_str();
    assert!(page.contains(".TH pyfcgi 1"), "{page}");
    assert!(page.contains("pyfcgi\\-serve"), "{page}");
    let dir = TempDir::new("man-pages");
    let out_dir = dir.path().join("man1");
    let out = run_pyfcgi(
        &["man", "--out", out_dir.to_str().unwrap()],
        &[],
        None,
        LIMIT,
    );
    assert_ok(&out);
    let serve = std::fs::read_to_string(out_dir.join("pyfcgi-serve.1")).unwrap();
    assert!(serve.contains(".TH pyfcgi-serve 1"), "{serve}");
    assert!(serve.contains("max\\-requests"), "{serve}");
    for page in [
        "pyfcgi.1",
        "pyfcgi-bench.1",
        "pyfcgi-iis-enable.1",
        "pyfcgi-doctor.1",
    ] {
        assert!(out_dir.join(page).exists(), "{page} missing");
    }
    let written = std::fs::read_dir(&out_dir).unwrap().count();
    assert!(
        out.stderr.contains(&format!("wrote {written} pages into")),
        "{}",
        out.stderr
    );
}

#[test]
fn version_with_an_unknown_argument_names_it_and_exits_2() {
    for argv in [["--version", "--jsn"], ["-V", "json"]] {
        let out = run_pyfcgi(&argv, &[], None, LIMIT);
        assert_eq!(out.code(), Some(2), "{argv:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{argv:?}: {}", out.stdout_str());
        assert!(
            out.stderr
                .contains(&format!("--version takes only --json, not {}", argv[1])),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn version_json_is_one_object_with_the_version_and_revision() {
    for argv in [["--version", "--json"], ["--json", "-V"]] {
        let out = run_pyfcgi(&argv, &[], None, LIMIT);
        assert_ok(&out);
        let text = out.stdout_str();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["name"], "pyfcgi");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(v["revision"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        assert_eq!(v["features"]["python"], true);
        assert!(
            v["python"]["built_for"]
                .as_str()
                .is_some_and(|p| p.starts_with("3.")),
            "{v}"
        );
        // The text form says the same.
        let plain = run_pyfcgi(&["--version"], &[], None, LIMIT).stdout_str();
        assert!(
            plain.starts_with(&format!(
                "pyfcgi {} (git {})",
                v["version"].as_str().unwrap(),
                v["revision"].as_str().unwrap()
            )),
            "{plain}"
        );
    }
}
