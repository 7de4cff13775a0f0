//! The Prometheus exporter on the real data plane: known frames through `xdp_lb`
//! (BPF_PROG_TEST_RUN), then the exposition must hold exactly what they did, pass
//! `promtool check metrics`, and export every series that prometheus/alerts.yml and
//! prometheus/dashboard.json use; the rules pass `promtool check rules` and their unit
//! tests (`promtool test rules prometheus/alerts_test.yml`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use lb_common::Conn;
use lb_daemon::{
    health::Health,
    metrics::{self, ConnReader, CounterTables, Metrics},
};
use tests::{
    lab::{Lab, XDP_DROP, XDP_PASS, XDP_TX},
    pkt::{self, L3, L4},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

const CONFIG: &str = r#"
[[service]]
address = "10.0.0.10"
port = 80
proto = "tcp"
[service.health]
type = "tcp"
[[service.backends]]
address = "10.1.0.1"
mac = "02:00:00:00:01:01"
[[service.backends]]
address = "10.1.0.2"
mac = "02:00:00:00:01:02"
weight = 3

[[service]]
address = "fd00::10"
port = 53
proto = "udp"
[[service.backends]]
address = "fd00:1::1"
mac = "02:00:00:00:06:01"
weight = 2

# No backend: its SYNs are dropped (no_backend).
[[service]]
address = "10.0.0.20"
port = 80
proto = "tcp"
"#;

/// Series name + labels (sorted, `k="v"` joined by commas) → value, from Prometheus text.
type Series = BTreeMap<(String, String), f64>;

fn parse(text: &str) -> Series {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut l: Vec<&str> = if inner.is_empty() {
                    Vec::new()
                } else {
                    inner.split(',').collect()
                };
                l.sort_unstable();
                (n, l.join(","))
            }
            None => (head, String::new()),
        };
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        assert!(
            out.insert((name.to_owned(), labels), v).is_none(),
            "duplicate series {line:?}"
        );
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort_unstable();
    l.join(",")
}

fn get(s: &Series, name: &str, pairs: &[(&str, &str)]) -> f64 {
    let key = (name.to_owned(), labels(pairs));
    *s.get(&key)
        .unwrap_or_else(|| panic!("no series {name}{{{}}} in the exposition", key.1))
}

fn svc(
    addr: &'static str,
    port: &'static str,
    proto: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("local_address", addr),
        ("local_port", port),
        ("proto", proto),
    ]
}

fn be(
    addr: &'static str,
    port: &'static str,
    proto: &'static str,
    remote: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut v = svc(addr, port, proto);
    v.extend([("remote_address", remote), ("remote_port", port)]);
    v
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    conns: u64,
    pkts: u64,
    bytes: u64,
    active: u64,
    inactive: u64,
}

/// What the test sent, counted independently of the data plane's counters (from the
/// frames and the DR outputs' destination MACs), and the exposition afterwards.
struct Run {
    lab: Lab,
    m: Arc<Metrics>,
    /// The checker behind `m` (configured, no check running: results are reported).
    health: Health,
    backends: BTreeMap<u8, Tally>,
}

/// 10 TCP flows to 10.0.0.10:80 (SYN each, then an ACK on the first 6: 6 active,
/// 4 inactive), 3 UDP datagrams of one flow to [fd00::10]:53, 2 non-VIP packets and a
/// SYN to the VIP without backends.
fn run() -> Run {
    let mut lab = Lab::new().expect("lab");
    lab.apply_toml(CONFIG).expect("apply");
    let mut backends: BTreeMap<u8, Tally> = BTreeMap::new();
    let mut flow_backend = Vec::new();
    for i in 0..10u16 {
        let f = pkt::tcp("192.168.1.5", 4000 + i, "10.0.0.10", 80);
        let r = lab.run(&f).unwrap();
        assert_eq!(r.action, XDP_TX);
        let b = r.out[5];
        let t = backends.entry(b).or_default();
        t.conns += 1;
        t.pkts += 1;
        t.bytes += (f.len() - L3) as u64;
        flow_backend.push(b);
    }
    for (i, &b) in flow_backend.iter().enumerate() {
        let t = backends.get_mut(&b).unwrap();
        if i < 6 {
            let f = pkt::frame(
                "192.168.1.5".parse().unwrap(),
                "10.0.0.10".parse().unwrap(),
                L4::Tcp {
                    sport: 4000 + i as u16,
                    dport: 80,
                    syn: false,
                    ack: true,
                },
                b"GET / HTTP/1.0\r\n\r\n",
            );
            let r = lab.run(&f).unwrap();
            assert_eq!((r.action, r.out[5]), (XDP_TX, b), "flow {i} moved");
            t.pkts += 1;
            t.bytes += (f.len() - L3) as u64;
            t.active += 1;
        } else {
            t.inactive += 1;
        }
    }
    for _ in 0..3 {
        let f = pkt::udp("2001:db8::5", 5000, "fd00::10", 53);
        let r = lab.run(&f).unwrap();
        assert_eq!((r.action, r.out[5]), (XDP_TX, 0x01));
        let t = backends.entry(0x61).or_default(); // fd00:1::1, MAC ..:06:01
        t.pkts += 1;
        t.bytes += (f.len() - L3) as u64;
    }
    let udp = backends.get_mut(&0x61).unwrap();
    udp.conns = 1;
    udp.inactive = 1;
    for f in [
        pkt::tcp("192.168.1.5", 4000, "10.0.0.99", 80),
        pkt::udp("192.168.1.5", 4000, "10.0.0.10", 81),
    ] {
        assert_eq!(lab.run(&f).unwrap().action, XDP_PASS);
    }
    let f = pkt::tcp("192.168.1.5", 4000, "10.0.0.20", 80);
    assert_eq!(lab.run(&f).unwrap().action, XDP_DROP);

    let health = Health::new();
    health.configure(&lab.state);
    let m = Arc::new(Metrics::new("test", Arc::new(health.clone())));
    let reader = ConnReader::open(&lab.dp).expect("opening CONNS");
    let (gens, timeout) = metrics::conn_context(&lab.dp, &lab.proj, &lab.state).unwrap();
    m.set_conns(metrics::take_conn_snapshot(&reader, &gens, timeout).expect("snapshot"));
    Run {
        lab,
        m,
        health,
        backends,
    }
}

fn exposition(r: &Run, openmetrics: bool) -> String {
    let s = metrics::sample(&r.lab.dp, &r.lab.proj, &r.lab.state, 7, &r.m).expect("sample");
    metrics::encode(Arc::new(s), &r.m, openmetrics)
}

#[test]
fn exposition_holds_exactly_what_the_frames_did() {
    let r = run();
    let text = exposition(&r, false);
    let s = parse(&text);
    let web = svc("10.0.0.10", "80", "TCP");
    let dns = svc("fd00::10", "53", "UDP");
    let dead = svc("10.0.0.20", "80", "TCP");

    // Per backend: against the tally of the frames and outputs.
    let mut web_sum = Tally::default();
    for (mac, remote, weight) in [(1u8, "10.1.0.1", 1.0), (2, "10.1.0.2", 3.0)] {
        let t = r.backends.get(&mac).copied().unwrap_or_default();
        let l = be("10.0.0.10", "80", "TCP", remote);
        assert_eq!(
            get(&s, "lb_backend_connections_total", &l),
            t.conns as f64,
            "{remote}"
        );
        assert_eq!(
            get(&s, "lb_backend_incoming_packets_total", &l),
            t.pkts as f64,
            "{remote}"
        );
        assert_eq!(
            get(&s, "lb_backend_incoming_bytes_total", &l),
            t.bytes as f64,
            "{remote}"
        );
        assert_eq!(
            get(&s, "lb_backend_connections_active", &l),
            t.active as f64,
            "{remote}"
        );
        assert_eq!(
            get(&s, "lb_backend_connections_inactive", &l),
            t.inactive as f64,
            "{remote}"
        );
        assert_eq!(get(&s, "lb_backend_weight", &l), weight);
        assert_eq!(get(&s, "lb_backend_up", &l), 1.0);
        for (st, v) in [
            ("UP", 1.0),
            ("DOWN", 0.0),
            ("DOWN-WAIT", 0.0),
            ("UP-WARM", 0.0),
        ] {
            let mut l = l.clone();
            l.push(("state", st));
            assert_eq!(get(&s, "lb_backend_state", &l), v, "{remote} {st}");
        }
        web_sum.conns += t.conns;
        web_sum.pkts += t.pkts;
        web_sum.bytes += t.bytes;
    }
    assert_eq!((web_sum.conns, web_sum.pkts), (10, 16));
    let t = r.backends[&0x61];
    let l = be("fd00::10", "53", "UDP", "fd00:1::1");
    assert_eq!(get(&s, "lb_backend_connections_total", &l), 1.0);
    assert_eq!(get(&s, "lb_backend_incoming_packets_total", &l), 3.0);
    assert_eq!(
        get(&s, "lb_backend_incoming_bytes_total", &l),
        t.bytes as f64
    );
    assert_eq!(get(&s, "lb_backend_connections_active", &l), 0.0);
    assert_eq!(get(&s, "lb_backend_connections_inactive", &l), 1.0);
    assert_eq!(get(&s, "lb_backend_weight", &l), 2.0);

    // Per service.
    assert_eq!(get(&s, "lb_connections_total", &web), 10.0);
    assert_eq!(get(&s, "lb_incoming_packets_total", &web), 16.0);
    assert_eq!(
        get(&s, "lb_incoming_bytes_total", &web),
        web_sum.bytes as f64
    );
    assert_eq!(get(&s, "lb_connections_total", &dns), 1.0);
    assert_eq!(get(&s, "lb_incoming_packets_total", &dns), 3.0);
    assert_eq!(get(&s, "lb_incoming_bytes_total", &dns), t.bytes as f64);
    assert_eq!(get(&s, "lb_connections_total", &dead), 0.0);
    assert_eq!(get(&s, "lb_incoming_packets_total", &dead), 0.0);
    for (l, healthy) in [(&web, 2.0), (&dns, 1.0), (&dead, 0.0)] {
        let mut h = l.clone();
        h.push(("state", "healthy"));
        assert_eq!(get(&s, "lb_service_backends", &h), healthy);
        let mut u = l.clone();
        u.push(("state", "unhealthy"));
        assert_eq!(get(&s, "lb_service_backends", &u), 0.0);
    }

    // Data plane: every reason, exact; per CPU adds up to the VIP packets.
    for reason in lb_common::Reason::ALL {
        let want = match reason.label() {
            "dr" => 19.0,
            "not_vip" => 2.0,
            "no_backend" => 1.0,
            _ => 0.0,
        };
        let l = [("action", reason.action()), ("reason", reason.label())];
        assert_eq!(
            get(&s, "lb_xdp_packets_total", &l),
            want,
            "{}",
            reason.label()
        );
    }
    let cpu_sum: f64 = s
        .iter()
        .filter(|((n, _), _)| n == "lb_cpu_packets_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(cpu_sum, 19.0, "VIP packets over CPUs");
    assert_eq!(get(&s, "lb_conn_table_entries", &[]), 11.0);
    assert_eq!(get(&s, "lb_conn_table_capacity", &[]), 65536.0);
    assert!(get(&s, "lb_conn_snapshot_age_seconds", &[]) < 60.0);
    assert_eq!(get(&s, "lb_config_generation", &[]), 7.0);
    let (sent, lost, suppressed) = r.lab.dp.event_stats().unwrap();
    for (outcome, n) in [("sent", sent), ("lost", lost), ("suppressed", suppressed)] {
        assert_eq!(
            get(&s, "lb_events_total", &[("outcome", outcome)]),
            n as f64
        );
    }
    assert_eq!(get(&s, "lb_config_apply_errors_total", &[]), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(get(&s, "lb_build_info", &[("version", version)]), 1.0);
    let applied = get(&s, "lb_config_last_apply_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - applied < 600.0 && applied <= now,
        "{applied} vs {now}"
    );

    // No outgoing counters: in DR/TUN mode replies never cross the LB.
    assert!(!text.contains("outgoing"), "{text}");

    // The OpenMetrics rendering has the same samples, and the EOF marker.
    let om = exposition(&r, true);
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE lb_connections counter\n"));
    assert!(om.contains("# UNIT lb_incoming_bytes bytes\n"));
    let om_series = parse(&om);
    for (k, v) in &s {
        if k.0 != "lb_conn_snapshot_age_seconds" && k.0 != "lb_config_last_apply_timestamp_seconds"
        {
            assert_eq!(om_series.get(k), Some(v), "{k:?}");
        }
    }
}

#[test]
fn batched_walk_of_the_connection_table_matches_key_by_key() {
    let mut r = run();
    // More entries than one batch: 9,000 flows.
    for i in 0..9000u32 {
        let src = format!("172.16.{}.{}", i / 250, i % 250 + 1);
        let f = pkt::tcp(&src, 1024 + (i % 50000) as u16, "10.0.0.10", 80);
        assert_eq!(r.lab.run(&f).unwrap().action, XDP_TX);
    }
    let reader = ConnReader::open(&r.lab.dp).unwrap();
    let key = |c: &Conn| (c.backend, c.flags, c.last_seen_ns, c.vip_idx, c.vip_gen);
    let mut a: Vec<_> = reader
        .values_batched()
        .expect("BPF_MAP_LOOKUP_BATCH on an LRU hash (Linux ≥ 5.6)")
        .iter()
        .map(key)
        .collect();
    let mut b: Vec<_> = reader.values_by_key().unwrap().iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a.len(), 9011);
    assert_eq!(a, b);
}

#[test]
fn batched_counter_tables_match_key_by_key_reads() {
    let r = run();
    let cap = &r.lab.dp.cap;
    let t = CounterTables::read(&r.lab.dp, cap.max_vips, cap.max_backends)
        .expect("BPF_MAP_LOOKUP_BATCH on per-CPU arrays");
    let key = |c: &lb_common::Counters| (c.packets, c.bytes, c.new_conns);
    let mut seen = 0;
    for idx in 0..r.lab.dp.cap.max_vips {
        let want: Vec<_> = r
            .lab
            .dp
            .vip_counters_per_cpu(idx)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        let got: Vec<_> = t.vip_per_cpu(idx).iter().map(key).collect();
        assert_eq!(got, want, "VIP {idx}");
        seen += want.iter().filter(|k| k.0 > 0).count();
    }
    for id in 0..r.lab.dp.cap.max_backends {
        let want = r.lab.dp.backend_counters(id).unwrap();
        assert_eq!(key(&t.backend(id)), key(&want), "backend {id}");
    }
    assert!(seen > 0, "no traffic counted");
    // Reading only a prefix: the rest reads as zero.
    let t = CounterTables::read(&r.lab.dp, 1, 2).unwrap();
    assert_eq!(
        key(&t.backend(1)),
        key(&r.lab.dp.backend_counters(1).unwrap())
    );
    assert_eq!(key(&t.backend(2)), (0, 0, 0));
    assert!(t.vip_per_cpu(1).is_empty());
}

/// Runs `promtool args…` with `stdin`; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut c = Command::new("promtool");
    c.args(args)
        .current_dir(workspace().join("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_check_metrics_passes() {
    let r = run();
    r.m.record_api("unix", 200);
    r.m.record_apply(false);
    report_checks(&r);
    let text = exposition(&r, false);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n{text}"
    );
}

/// Metric names in PromQL text: every `lb_…` identifier, and any other identifier
/// directly followed by `{` (a selector).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        if ident(b[i]) && (i == 0 || !ident(b[i - 1]) && b[i - 1] != b'$' && b[i - 1] != b'.') {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let first = word.as_bytes()[0];
            let name_start = first.is_ascii_alphabetic() || first == b'_';
            if word.starts_with("lb_") || (name_start && i < b.len() && b[i] == b'{') {
                out.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every "expr" and templating "query"/"definition" string of a Grafana dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// One passed check of 10.1.0.1 (0.3 ms) and one failed of 10.1.0.2 (3 ms, refused).
fn report_checks(r: &Run) {
    let web = r.lab.state.services[0].id();
    let ms = |us| std::time::Duration::from_micros(us);
    r.health.report(
        (web, "10.1.0.1".parse().unwrap()),
        true,
        "connected".into(),
        ms(300),
        1,
    );
    r.health.report(
        (web, "10.1.0.2".parse().unwrap()),
        false,
        "connection refused".into(),
        ms(3000),
        1,
    );
}

#[test]
fn health_series_follow_the_checker() {
    let r = run();
    report_checks(&r);
    let text = exposition(&r, false);
    let s = parse(&text);
    let (b1, b2) = (
        be("10.0.0.10", "80", "TCP", "10.1.0.1"),
        be("10.0.0.10", "80", "TCP", "10.1.0.2"),
    );
    for (l, checks, failures, secs) in [(&b1, 1.0, 0.0, 0.0003), (&b2, 1.0, 1.0, 0.003)] {
        assert_eq!(get(&s, "lb_backend_checks_total", l), checks);
        assert_eq!(get(&s, "lb_backend_check_failures_total", l), failures);
        assert_eq!(get(&s, "lb_backend_check_up_down_total", l), 0.0);
        let d = get(&s, "lb_backend_check_duration_seconds", l);
        assert!((d - secs).abs() < 1e-9, "{d} vs {secs}");
    }
    // The first failure of fall = 3: DOWN-WAIT, not yet DOWN.
    let mut st = b2.clone();
    st.push(("state", "DOWN-WAIT"));
    assert_eq!(get(&s, "lb_backend_state", &st), 1.0);
    assert_eq!(get(&s, "lb_backend_up", &b2), 0.0);
    let mut h = svc("10.0.0.10", "80", "TCP");
    h.push(("state", "unhealthy"));
    assert_eq!(get(&s, "lb_service_backends", &h), 1.0);
    assert_eq!(
        get(
            &s,
            "lb_health_transitions_total",
            &[("from", "UP"), ("to", "DOWN-WAIT")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "lb_health_check_failures_total",
            &[("type", "tcp"), ("reason", "refused")]
        ),
        1.0
    );
    let t = [("type", "tcp")];
    assert_eq!(get(&s, "lb_health_check_duration_seconds_count", &t), 2.0);
    let sum = get(&s, "lb_health_check_duration_seconds_sum", &t);
    assert!((sum - 0.0033).abs() < 1e-9, "{sum}");
    for (le, n) in [
        ("0.0005", 1.0),
        ("0.0025", 1.0),
        ("0.005", 2.0),
        ("+Inf", 2.0),
    ] {
        assert_eq!(
            get(
                &s,
                "lb_health_check_duration_seconds_bucket",
                &[("type", "tcp"), ("le", le)]
            ),
            n,
            "le {le}"
        );
    }
    // No MAC missing here (every real server has one configured).
    assert_eq!(get(&s, "lb_backends_unresolved", &[]), 0.0);
    assert_eq!(get(&s, "lb_mac_resolution_failures_total", &[]), 0.0);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");
}

#[test]
fn rules_and_dashboard_use_only_exported_series() {
    let r = run();
    // Series that exist only after an event: make each happen once.
    r.m.record_api("unix", 200);
    r.m.record_apply(false);
    report_checks(&r);
    let exported: BTreeSet<String> = parse(&exposition(&r, false))
        .into_keys()
        .map(|(n, _)| n)
        .collect();
    // Made by Prometheus itself for every target.
    let synthetic = BTreeSet::from(["up".to_string()]);

    let dir = workspace().join("prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(str::to_owned)
        .collect();
    assert!(
        exprs.len() >= 8,
        "alerts.yml: one expr per alert, on one line each"
    );
    let mut from_rules: BTreeSet<String> = metric_names(&rules);
    for e in &exprs {
        from_rules.extend(metric_names(e));
    }
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap())
            .expect("dashboard.json is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(queries.len() >= 10, "dashboard: {queries:?}");
    let from_dash: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();

    for (what, names) in [("alerts.yml", &from_rules), ("dashboard.json", &from_dash)] {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !exported.contains(*n) && !synthetic.contains(*n))
            .collect();
        assert!(
            missing.is_empty(),
            "{what} uses series the exporter does not export: {missing:?}\nexported: {exported:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("lb_")),
            "{what}: {names:?}"
        );
    }
    // The extractor itself finds what it should.
    assert_eq!(
        metric_names(
            r#"sum by (proto) (rate(lb_connections_total{job="lb"}[$__rate_interval])) / up{job="lb"} {{ $labels.x }}"#
        ),
        BTreeSet::from(["lb_connections_total".into(), "up".into()])
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert has a unit test.
    let dir = workspace().join("prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alert {a} has no unit test in alerts_test.yml"
        );
    }
}
