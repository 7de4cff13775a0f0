//! End to end in network namespaces: the real lb-daemon binary, with a copy of its
//! default configuration, balances real TCP connections from curl over the VIP to
//! three nginx real servers (IPIP, decapsulated by `xdp_decap`), keeps a connection
//! on its server, and its counters add up. The topology is the demo's
//! (xtask/src/netns.rs), under the prefix `lbe2e-<pid>-`; a drop guard removes it
//! even when an assertion fails. Needs root.

use tests::e2e;
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::collections::{BTreeMap, BTreeSet};

use netns::{Lab, SERVERS, VIP, VIP_PORT};

/// New connections through the VIP (one curl each). rs3 (weight 2) expects half of
/// them, rs1 and rs2 a quarter: with 200, rs3 falls to either one's count with a
/// probability of about 1e-5 (4.3 standard deviations).
const REQUESTS: u32 = 200;

/// The embedded default configuration with its own instance name, checked
/// against the topology that netns.rs builds.
fn config(instance: &str) -> String {
    let mut cfg: toml::Table =
        toml::from_str(lb_daemon::config::DEFAULT_CONFIG).expect("default.toml is TOML");
    cfg["daemon"]["instance"] = instance.into();
    assert_eq!(
        cfg["daemon"]["interfaces"]
            .as_array()
            .expect("daemon.interfaces"),
        &vec![toml::Value::from(netns::LB_IF)]
    );
    let services = cfg["service"].as_array().expect("[[service]]");
    assert_eq!(services.len(), 1, "default.toml: one service expected");
    let svc = &services[0];
    assert_eq!(svc["address"].as_str(), Some(VIP));
    assert_eq!(svc["port"].as_integer(), Some(VIP_PORT.into()));
    let backends: Vec<(&str, &str, i64)> = svc["backends"]
        .as_array()
        .expect("service.backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default(),
                b["mac"].as_str().unwrap_or_default(),
                b.get("weight").and_then(|w| w.as_integer()).unwrap_or(1),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, i64)> = SERVERS
        .iter()
        .map(|s| (s.addr, s.mac, s.weight.into()))
        .collect();
    assert_eq!(
        backends, expected,
        "default.toml no longer matches xtask/src/netns.rs"
    );
    toml::to_string(&cfg).expect("serializing the configuration")
}

/// `Conns` and `InPkts` of the line for `addr_port` in the daemon's stats table.
fn counters(table: &str, addr_port: &str) -> (u64, u64) {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(addr_port))
        .unwrap_or_else(|| panic!("no line for {addr_port} in:\n{table}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(2)
        .map(|v| v.parse().expect("exact counter"))
        .collect();
    (n[0], n[1])
}

#[test]
fn daemon_balances_real_connections_in_namespaces() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end test needs root"
    );
    netns::remove_stale("lbe2e-").expect("removing leftovers of earlier runs");
    let daemon = e2e::daemon();
    let prefix = format!("lbe2e-{}-", std::process::id());
    // The guard: dropped (namespaces, nginx, daemon removed) however the test ends.
    let mut lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
    let cfg_path = lab.dir.join("lb.toml");
    std::fs::write(&cfg_path, config(prefix.trim_end_matches('-'))).unwrap();
    let mode = lab
        .start_daemon(&daemon, &["--config", cfg_path.to_str().unwrap()])
        .expect("starting lb-daemon");
    assert_eq!(
        mode, "native",
        "xdp_lb should attach to a veth in native mode"
    );

    let url = format!("http://{VIP}:{VIP_PORT}/");
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..REQUESTS {
        let (status, body) = lab.request(&url).expect("running curl");
        if status.success() && !body.is_empty() {
            *tally.entry(body).or_default() += 1;
        } else {
            failures.push(format!("request {i}: {status} {body:?}"));
        }
    }
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    let responders: BTreeSet<&str> = tally.keys().map(String::as_str).collect();
    let names: BTreeSet<&str> = SERVERS.iter().map(|s| s.name).collect();
    assert_eq!(responders, names, "responders {tally:?}");
    let (rs1, rs2, rs3) = (tally["rs1"], tally["rs2"], tally["rs3"]);
    assert!(rs3 > rs1 && rs3 > rs2, "rs3 has weight 2: {tally:?}");

    // One connection, two requests (keep-alive): one server answers both, and curl
    // reports that the second request opened no new connection.
    let out = lab
        .client("curl")
        .args([
            "-s",
            "--max-time",
            "2",
            "-w",
            " %{num_connects}\n",
            &url,
            &url,
        ])
        .output()
        .expect("running curl");
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(
        out.status.success(),
        "keep-alive curl: {} {words:?}",
        out.status
    );
    assert_eq!(
        words.len(),
        4,
        "two bodies and two connect counts: {words:?}"
    );
    assert_eq!(
        (words[1].as_str(), words[3].as_str()),
        ("1", "0"),
        "the second request should reuse the connection: {words:?}"
    );
    assert_eq!(
        words[0], words[2],
        "a connection moved between servers: {words:?}"
    );
    *tally.get_mut(&words[0]).expect("a known server") += 1;

    let table = lab.stop_daemon().expect("stopping lb-daemon");
    let conns = u64::from(REQUESTS) + 1;
    let (vip_conns, vip_pkts) = counters(&table, &format!("{VIP}:{VIP_PORT}"));
    assert_eq!(vip_conns, conns, "Conns of the VIP:\n{table}");
    assert!(vip_pkts >= conns * 3, "InPkts of the VIP:\n{table}");
    for s in &SERVERS {
        let (c, _) = counters(&table, &format!("{}:{VIP_PORT}", s.addr));
        assert_eq!(
            c,
            u64::from(tally[s.name]),
            "Conns of {} vs the servers' answers {tally:?}:\n{table}",
            s.name
        );
    }
    lab.cleanup().expect("cleaning up");
    assert!(netns::namespaces(&prefix).unwrap().is_empty());
}
