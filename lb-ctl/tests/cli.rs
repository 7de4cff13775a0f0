//! The `lbctl` binary without a daemon: usage errors exit 2 with a message naming
//! the problem, an unreachable daemon exits 3.

use std::process::{Command, Output, Stdio};

fn nowhere() -> String {
    format!("/tmp/lbctl-test-no-daemon-{}.sock", std::process::id())
}

fn lbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .env_remove("LBCTL_SOCKET")
        .env_remove("LBCTL_URL")
        .env_remove("LBCTL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run lbctl")
}

#[track_caller]
fn expect(args: &[&str], code: i32, needle: &str) -> String {
    let out = lbctl(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr {err}");
    assert!(err.starts_with("lbctl: "), "{args:?}: {err:?}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    err
}

#[test]
fn ipvsadm_form_usage_errors_exit_2() {
    let sock = nowhere();
    let s = sock.as_str();
    for (args, needle) in [
        (
            vec!["-A", "-t", "10.0.0.1:80", "-m"],
            "-m (masquerading, NAT) is not supported",
        ),
        (
            vec!["-a", "-t", "10.0.0.1:80", "-r", "x"],
            "\"x\" is not a numeric address",
        ),
        (
            vec!["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.2", "-m"],
            "-m (masquerading",
        ),
        (
            vec!["-A", "-f", "1", "-s", "rr"],
            "-f (firewall-mark services) is not supported",
        ),
        (
            vec!["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.2", "-x", "100"],
            "-x (connection thresholds) is not supported",
        ),
        (
            vec!["-A", "-t", "10.0.0.1:80", "-p", "-M", "255.255.255.0"],
            "-M (persistence netmask) is not supported",
        ),
        (vec!["-A", "-t", "10.0.0.1:80", "--pe", "sip"], "--pe"),
        (vec!["-A", "-t", "10.0.0.1:80", "-o"], "-o (one-packet"),
        (
            vec!["-A", "-t", "10.0.0.1:80", "-s", "wlc", "--strict"],
            "scheduler wlc is not available yet",
        ),
        (
            vec!["-A", "-t", "10.0.0.1:80", "-s", "bogus"],
            "scheduler \"bogus\" is not supported",
        ),
        (
            vec!["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.2:8080"],
            "port 8080 differs from the service port 80",
        ),
        (
            vec![
                "-a",
                "-t",
                "10.0.0.1:80",
                "-r",
                "192.168.1.2",
                "-w",
                "70000",
            ],
            "illegal weight",
        ),
        (
            vec!["-A", "-t", "10.0.0.1:80", "-w", "2"],
            "option -w is not valid with -A",
        ),
        (vec!["-A", "-a"], "only one command at a time"),
        (vec!["-L", "--frobnicate"], "unknown option --frobnicate"),
        (
            vec!["-L", "--stats", "--rate"],
            "only one of --stats, --rate and -c",
        ),
    ] {
        let mut a = vec!["--socket", s];
        a.extend(args.iter().copied());
        let err = expect(&a, 2, needle);
        // Refused before any attempt to reach the daemon.
        assert!(!err.contains("cannot reach"), "{err}");
    }
}

#[test]
fn subcommand_usage_errors_exit_2() {
    let sock = nowhere();
    let s = sock.as_str();
    expect(
        &["--socket", s, "frobnicate"],
        2,
        "unrecognized subcommand 'frobnicate'",
    );
    expect(&["--socket", s, "service", "add"], 2, "<VIP:PORT>");
    expect(
        &["--socket", s, "service", "add", "www.example.com:80"],
        2,
        "is not a numeric address",
    );
    expect(
        &[
            "--socket",
            s,
            "backend",
            "add",
            "10.0.0.1:80",
            "192.168.1.2",
            "--forward",
            "nat",
        ],
        2,
        "invalid value 'nat'",
    );
    expect(
        &[
            "--socket",
            s,
            "backend",
            "edit",
            "10.0.0.1:80",
            "192.168.1.2",
        ],
        2,
        "required arguments were not provided",
    );
    expect(
        &[
            "--socket",
            s,
            "service",
            "add",
            "10.0.0.1:80",
            "-s",
            "lc",
            "--strict",
        ],
        2,
        "scheduler lc is not available yet",
    );
    expect(
        &["--socket", s, "route", "10.9.9.9", "10.0.0.1:80"],
        2,
        "CLIENT:PORT \"10.9.9.9\": needs a port",
    );
    expect(
        &["--url", "https://lb:9080", "status"],
        2,
        "scheme https is not supported",
    );
}

#[test]
fn restore_input_errors_exit_2_before_contacting_the_daemon() {
    let sock = nowhere();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--socket", &sock, "-R"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("lbctl: line 2: -m (masquerading, NAT) is not supported"),
        "{err}"
    );
}

#[test]
fn no_daemon_exits_3() {
    let sock = nowhere();
    let s = sock.as_str();
    for args in [
        vec!["--socket", s, "-L", "-n"],
        vec!["--socket", s, "-A", "-t", "10.0.0.1:80", "-s", "rr"],
        vec!["--socket", s, "list"],
        vec!["--socket", s, "status"],
        vec![
            "--socket",
            s,
            "backend",
            "drain",
            "10.0.0.1:80",
            "192.168.1.2",
        ],
        vec!["--socket", s],
    ] {
        let err = expect(&args, 3, &format!("cannot reach the daemon at {s}"));
        assert!(err.contains("is lb-daemon running?"), "{err}");
    }
    // The environment variable names the socket too.
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["-L", "-n"])
        .env("LBCTL_SOCKET", s)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(s));
    // TCP: nothing listens on port 1 of localhost.
    expect(
        &["--url", "http://127.0.0.1:1", "status"],
        3,
        "cannot reach the daemon at http://127.0.0.1:1",
    );
}

#[test]
fn help_version_and_completions() {
    let out = lbctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("ipvsadm form") && help.contains("Exit status"),
        "{help}"
    );
    let out = lbctl(&["-h"]);
    assert_eq!(out.status.code(), Some(0));
    let out = lbctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lbctl "));
    for shell in ["bash", "zsh", "fish"] {
        let out = lbctl(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("lbctl") && text.contains("drain"), "{shell}");
    }
}
