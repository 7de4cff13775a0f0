//! End to end, observability: the real lb-daemon in the demo topology
//! (xtask/src/netns.rs, prefix `lbprom-<pid>-`) with its exporter on
//! 127.0.0.1:9469 in the LB's namespace, Debian's real `prometheus` scraping it every
//! second (with prometheus/alerts.yml loaded), and a real headless Chromium showing
//! the live stats page.
//!
//! * Prometheus: curl requests through the VIP; the series read back through
//!   Prometheus' HTTP API equal the requests sent and what the daemon's API reports;
//!   the rules load and evaluate, nothing fires on a healthy box, and a refused change
//!   of the running state fires LBConfigApplyErrors. The live exposition passes
//!   `promtool check metrics`.
//! * Chromium: the page loaded while traffic flows shows rates; once traffic stops,
//!   the numbers it shows equal the API's. A screenshot is saved to
//!   `target/test-output/e2e_prometheus/stats.png`.
//!
//! * Health: the service is checked over HTTP every second; rs2's nginx stops and
//!   Prometheus sees rs2 go DOWN (lb_backend_up, lb_backend_state,
//!   lb_service_backends, the failure, transition and duration series), then come back
//!   once nginx runs again.
//!
//! A drop guard removes the namespaces
//! and every process in them (daemon, nginx, prometheus, chromium), however the test
//! ends. Needs root, nginx, curl, prometheus and chromium.

use tests::e2e;
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use netns::{Lab, SERVERS, VIP, VIP_PORT};
use serde_json::{Value, json};

const METRICS: &str = "127.0.0.1:9469";
const PROM: &str = "127.0.0.1:9090";
/// Connections through the VIP before Prometheus is asked.
const REQUESTS: u32 = 60;

/// `target/test-output/e2e_prometheus/`.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let d = target.join("test-output").join("e2e_prometheus");
    fs::create_dir_all(&d).expect("creating the test output directory");
    d
}

/// The embedded default configuration with the exporter on, and the socket and state
/// file in the test's directory.
fn config(instance: &str, dir: &Path) -> String {
    let mut cfg: toml::Table =
        toml::from_str(lb_daemon::config::DEFAULT_CONFIG).expect("default.toml is TOML");
    let d = cfg["daemon"].as_table_mut().expect("[daemon]");
    d.insert("instance".into(), instance.into());
    d.insert("metrics_listen".into(), METRICS.into());
    d.insert("metrics_conn_interval".into(), 1.into());
    d.insert(
        "socket".into(),
        dir.join("lb.sock").display().to_string().into(),
    );
    d.insert(
        "state_file".into(),
        dir.join("lb.state.json").display().to_string().into(),
    );
    let svc = cfg["service"][0].as_table_mut().expect("[[service]]");
    assert_eq!(svc["address"].as_str(), Some(VIP));
    assert_eq!(svc["port"].as_integer(), Some(VIP_PORT.into()));
    // HTTP checks every second: a stopped nginx is DOWN within about 3 s.
    let health: toml::Table =
        toml::from_str("type = \"http\"\ninterval = 1\ntimeout = 1\nfall = 2\nrise = 2\n").unwrap();
    svc.insert("health".into(), health.into());
    toml::to_string(&cfg).expect("serializing the configuration")
}

/// A command in the LB's namespace.
fn in_lb(lab: &Lab, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.ns("lb"), program]);
    c
}

/// GET `url` from the LB's namespace: (status, body).
fn http_get(lab: &Lab, url: &str, extra: &[&str]) -> (u16, String) {
    let out = in_lb(lab, "curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The daemon's API on its unix socket: (status, JSON body).
fn api(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = c.arg(format!("http://lb{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl {path}: {text:?}"));
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// An instant query through Prometheus' HTTP API: (labels, value) per series.
fn query(lab: &Lab, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let out = in_lb(lab, "curl")
        .args(["-sS", "--max-time", "5", "--get", "--data-urlencode"])
        .arg(format!("query={q}"))
        .arg(format!("http://{PROM}/api/v1/query"))
        .output()
        .expect("curl");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("query {q}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["status"], "success", "query {q}: {v}");
    v["data"]["result"]
        .as_array()
        .expect("vector result")
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

/// The value of a query that must return one series (`None` if it returns none).
fn scalar(lab: &Lab, q: &str) -> Option<f64> {
    let r = query(lab, q);
    assert!(r.len() <= 1, "{q}: {r:?}");
    r.first().map(|x| x.1)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        sleep(Duration::from_millis(200));
    }
}

/// Prometheus in the LB's namespace; killed and waited for when dropped (the lab's own
/// cleanup also kills whatever is left in its namespaces).
struct Prometheus(Child);

impl Prometheus {
    fn start(lab: &Lab) -> Prometheus {
        let dir = lab.dir.join("prometheus");
        fs::create_dir_all(&dir).unwrap();
        let rules = e2e::workspace().join("prometheus/alerts.yml");
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: lb\n    static_configs:\n      - targets: ['{METRICS}']\n",
            rules.display()
        );
        fs::write(dir.join("prometheus.yml"), cfg).unwrap();
        let child = in_lb(lab, "prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus (Debian package prometheus)");
        Prometheus(child)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// wrk through the VIP from the client (one connection per request, so that new
/// connections show between any two of the page's samples, which Chromium's virtual
/// time takes milliseconds apart), for at most 60 s; killed when stopped or dropped.
struct Traffic(Option<Child>);

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let child = lab
            .client("wrk")
            .args([
                "-t1",
                "-c4",
                "-d60s",
                "--timeout",
                "2s",
                "-H",
                "Connection: close",
            ])
            .arg(format!("http://{VIP}:{VIP_PORT}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wrk");
        Traffic(Some(child))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Headless Chromium in the LB's namespace on the stats page, `mode` being
/// `--dump-dom` or `--screenshot=<file>`; returns stdout.
fn chromium(lab: &Lab, mode: &str) -> String {
    let profile = lab.dir.join("chromium-profile");
    fs::create_dir_all(&profile).unwrap();
    let out = in_lb(lab, "timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1200,800", "--virtual-time-budget=5000", mode])
        .arg(format!("http://{METRICS}/stats"))
        .env("HOME", &lab.dir)
        .output()
        .expect("running chromium (Debian package chromium)");
    assert!(
        out.status.success(),
        "chromium {mode}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `name` in the tag text `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}=\"");
    let i = tag.find(&pat)? + pat.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

/// One table row of the page: `data-k` → (`data-v` if any, shown text).
type Row = BTreeMap<String, (Option<String>, String)>;

/// The rows of the page's table for `service` (`tcp 10.100.0.100:80`), by backend
/// address ("Total" for the service's own row).
fn page_rows(dom: &str, service: &str) -> BTreeMap<String, Row> {
    let start = dom
        .find(&format!("data-service=\"{service}\""))
        .unwrap_or_else(|| panic!("no table for {service} on the page:\n{dom}"));
    let table = &dom[start..start + dom[start..].find("</table>").unwrap()];
    let mut rows = BTreeMap::new();
    for tr in table.split("<tr").skip(1) {
        let mut row = Row::new();
        for td in tr.split("<td").skip(1) {
            let tag_end = td.find('>').unwrap();
            let tag = &td[..tag_end];
            let text = &td[tag_end + 1..td.find("</td>").unwrap_or(td.len())];
            if let Some(k) = attr(tag, "data-k") {
                row.insert(
                    k.to_owned(),
                    (attr(tag, "data-v").map(str::to_owned), text.to_owned()),
                );
            }
        }
        if let Some((_, name)) = row.get("address") {
            rows.insert(name.clone(), row);
        }
    }
    rows
}

fn body_attr(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    attr(&body[..body.find('>')?], name).map(str::to_owned)
}

#[test]
fn prometheus_and_the_stats_page_see_what_the_data_plane_did() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end test needs root"
    );
    netns::remove_stale("lbprom-").expect("removing leftovers of earlier runs");
    let daemon = e2e::daemon();
    let prefix = format!("lbprom-{}-", std::process::id());
    let mut lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
    let cfg_path = lab.dir.join("lb.toml");
    fs::write(&cfg_path, config(prefix.trim_end_matches('-'), &lab.dir)).unwrap();
    let sock = lab.dir.join("lb.sock");
    lab.start_daemon(
        &daemon,
        &["--config", cfg_path.to_str().unwrap(), "--no-pin"],
    )
    .expect("starting lb-daemon");
    let metrics_url = format!("http://{METRICS}/metrics");
    wait_for("the metrics listener", Duration::from_secs(20), || {
        http_get(&lab, &metrics_url, &[]).0 == 200
    });
    let prom = Prometheus::start(&lab);
    wait_for("prometheus to be ready", Duration::from_secs(60), || {
        http_get(&lab, &format!("http://{PROM}/-/ready"), &[]).0 == 200
    });
    wait_for("a first scrape", Duration::from_secs(20), || {
        scalar(&lab, r#"up{job="lb"}"#) == Some(1.0)
    });

    // Traffic: one connection per request, tallied by the server that answered.
    let url = format!("http://{VIP}:{VIP_PORT}/");
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..REQUESTS {
        let (status, body) = lab.request(&url).expect("running curl");
        assert!(
            status.success() && !body.is_empty(),
            "request {i}: {body:?}"
        );
        *tally.entry(body).or_default() += 1;
    }

    // Read back through Prometheus: the VIP's connections are the requests sent...
    let vip = format!(r#"local_address="{VIP}",local_port="{VIP_PORT}",proto="TCP""#);
    wait_for(
        "lb_connections_total == REQUESTS",
        Duration::from_secs(20),
        || scalar(&lab, &format!("lb_connections_total{{{vip}}}")) == Some(f64::from(REQUESTS)),
    );
    // ...each real server's are the requests it answered...
    for s in &SERVERS {
        let q = format!(
            r#"lb_backend_connections_total{{{vip},remote_address="{}"}}"#,
            s.addr
        );
        assert_eq!(
            scalar(&lab, &q),
            Some(tally.get(s.name).copied().unwrap_or(0) as f64),
            "{} ({tally:?})",
            s.name
        );
    }
    // ...and every counter equals the daemon's API once the last packets are in.
    let agree = || {
        let (code, stats) = api(&sock, "GET", "/v1/stats", None);
        assert_eq!(code, 200, "{stats}");
        let svc = &stats["services"][0];
        let mut ok = scalar(&lab, &format!("lb_incoming_packets_total{{{vip}}}"))
            == svc["inpkts"].as_f64()
            && scalar(&lab, &format!("lb_incoming_bytes_total{{{vip}}}"))
                == svc["inbytes"].as_f64()
            && scalar(&lab, &format!("lb_connections_total{{{vip}}}")) == svc["conns"].as_f64();
        for b in svc["backends"].as_array().unwrap() {
            let l = format!(
                r#"{vip},remote_address="{}",remote_port="{VIP_PORT}""#,
                b["address"].as_str().unwrap()
            );
            for (metric, field) in [
                ("lb_backend_connections_total", "conns"),
                ("lb_backend_incoming_packets_total", "inpkts"),
                ("lb_backend_incoming_bytes_total", "inbytes"),
                ("lb_backend_connections_active", "active_conns"),
                ("lb_backend_connections_inactive", "inactive_conns"),
                ("lb_backend_weight", "weight"),
            ] {
                ok &= scalar(&lab, &format!("{metric}{{{l}}}")) == b[field].as_f64();
            }
            ok &= scalar(&lab, &format!("lb_backend_up{{{l}}}")) == Some(1.0);
            ok &= scalar(&lab, &format!(r#"lb_backend_state{{{l},state="UP"}}"#)) == Some(1.0);
        }
        let tun = stats["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[1] == "tun")
            .map(|r| r[2].as_f64().unwrap());
        ok &= scalar(&lab, r#"lb_xdp_packets_total{action="tx",reason="tun"}"#) == tun;
        ok &= scalar(&lab, "sum(lb_cpu_packets_total)") == svc["inpkts"].as_f64();
        ok
    };
    wait_for(
        "Prometheus to agree with the API",
        Duration::from_secs(20),
        agree,
    );
    assert_eq!(
        scalar(
            &lab,
            &format!(r#"lb_service_backends{{{vip},state="healthy"}}"#)
        ),
        Some(3.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scalar(&lab, &format!(r#"lb_build_info{{version="{version}"}}"#)),
        Some(1.0)
    );
    assert_eq!(scalar(&lab, "lb_conn_table_capacity"), Some(65536.0));
    assert_eq!(
        scalar(&lab, r#"lb_events_total{outcome="lost"}"#),
        Some(0.0)
    );
    assert!(scalar(&lab, "lb_conn_snapshot_age_seconds").unwrap() < 5.0);

    // The rules load and evaluate, and nothing fires on a healthy box.
    wait_for("the rules to be evaluated", Duration::from_secs(20), || {
        let (_, body) = http_get(&lab, &format!("http://{PROM}/api/v1/rules"), &[]);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .collect();
        rules.len() == 10 && rules.iter().all(|r| r["health"] == "ok")
    });
    assert!(
        query(&lab, "ALERTS").is_empty(),
        "{:?}",
        query(&lab, "ALERTS")
    );

    // The control plane: one good change and one refused change of the running state.
    let (code, cur) = api(&sock, "GET", "/v1/state", None);
    assert_eq!(code, 200);
    let (code, r) = api(&sock, "PUT", "/v1/state", Some(&cur));
    assert_eq!(code, 200, "{r}");
    let mut bad = cur.clone();
    bad["generation"] = r["generation"].clone();
    bad["state"]["service"][0]["address"] = json!("0.0.0.0");
    let (code, r) = api(&sock, "PUT", "/v1/state", Some(&bad));
    assert_eq!(code, 400, "{r}");
    wait_for(
        "the apply error and the new generation",
        Duration::from_secs(20),
        || {
            scalar(&lab, "lb_config_apply_errors_total") == Some(1.0)
                && scalar(&lab, "lb_config_generation") == Some(1.0)
        },
    );
    assert_eq!(
        scalar(&lab, r#"lb_api_requests_total{listener="unix",code="400"}"#),
        Some(1.0)
    );
    wait_for(
        "LBConfigApplyErrors to fire",
        Duration::from_secs(20),
        || {
            query(
                &lab,
                r#"ALERTS{alertname="LBConfigApplyErrors",alertstate="firing"}"#,
            )
            .len()
                == 1
        },
    );

    // Health: rs2's nginx stops; Prometheus sees it go DOWN, then come back.
    let rs2 = SERVERS[1].addr;
    let on_rs2 = |name: &str, extra: &str| format!(r#"{name}{{remote_address="{rs2}"{extra}}}"#);
    let svc_backends =
        |lab: &Lab, state: &str| scalar(lab, &format!(r#"lb_service_backends{{state="{state}"}}"#));
    wait_for("every backend checked UP", Duration::from_secs(20), || {
        scalar(&lab, &on_rs2("lb_backend_up", "")) == Some(1.0)
            && scalar(&lab, &on_rs2("lb_backend_checks_total", "")) >= Some(2.0)
            && svc_backends(&lab, "healthy") == Some(3.0)
    });
    assert_eq!(
        scalar(&lab, &on_rs2("lb_backend_check_failures_total", "")),
        Some(0.0)
    );
    lab.stop_nginx("rs2").expect("stopping rs2's nginx");
    wait_for(
        "Prometheus to see rs2 DOWN",
        Duration::from_secs(20),
        || {
            scalar(&lab, &on_rs2("lb_backend_up", "")) == Some(0.0)
                && scalar(&lab, &on_rs2("lb_backend_state", r#",state="DOWN""#)) == Some(1.0)
                && svc_backends(&lab, "unhealthy") == Some(1.0)
                && svc_backends(&lab, "healthy") == Some(2.0)
        },
    );
    assert!(scalar(&lab, &on_rs2("lb_backend_check_failures_total", "")) >= Some(2.0));
    assert_eq!(
        scalar(&lab, &on_rs2("lb_backend_check_up_down_total", "")),
        Some(1.0)
    );
    assert!(
        scalar(
            &lab,
            r#"lb_health_check_failures_total{type="http",reason="refused"}"#
        ) >= Some(2.0),
        "{:?}",
        query(&lab, "lb_health_check_failures_total")
    );
    assert_eq!(
        scalar(&lab, r#"sum(lb_health_transitions_total{to="DOWN"})"#),
        Some(1.0)
    );
    let checks = scalar(
        &lab,
        r#"lb_health_check_duration_seconds_count{type="http"}"#,
    );
    assert!(checks >= Some(6.0), "{checks:?}");
    lab.restart_nginx("rs2").expect("starting rs2's nginx");
    wait_for(
        "Prometheus to see rs2 UP again",
        Duration::from_secs(30),
        || {
            scalar(&lab, &on_rs2("lb_backend_up", "")) == Some(1.0)
                && svc_backends(&lab, "healthy") == Some(3.0)
        },
    );
    assert_eq!(
        scalar(&lab, r#"sum(lb_health_transitions_total{from="DOWN"})"#),
        Some(1.0)
    );

    // The live exposition in Prometheus text passes promtool's linter.
    let (code, text) = http_get(&lab, &metrics_url, &[]);
    assert_eq!(code, 200);
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(prom);

    // The stats page, while traffic flows: rates show, the screenshot is taken.
    let mut traffic = Traffic::start(&lab);
    let before = api(&sock, "GET", "/v1/stats", None).1["services"][0]["conns"].clone();
    wait_for("traffic to flow", Duration::from_secs(10), || {
        api(&sock, "GET", "/v1/stats", None).1["services"][0]["conns"].as_u64()
            > before.as_u64().map(|n| n + 100)
    });
    let png = output_dir().join("stats.png");
    let _ = fs::remove_file(&png);
    chromium(&lab, &format!("--screenshot={}", png.display()));
    let shot = fs::read(&png).expect("chromium wrote no screenshot");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
    let service = format!("tcp {VIP}:{VIP_PORT}");
    let dom = chromium(&lab, "--dump-dom");
    let samples: u32 = body_attr(&dom, "data-samples")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(samples >= 2, "the page refreshed {samples} times:\n{dom}");
    let rows = page_rows(&dom, &service);
    let cps: f64 = rows["Total"]["cps"].1.parse().unwrap_or(0.0);
    assert!(
        cps > 0.0,
        "no connection rate shown while traffic flows: {:?}",
        rows["Total"]
    );
    let pps: f64 = rows["Total"]["pps"].1.parse().unwrap_or(0.0);
    assert!(
        pps > 0.0,
        "no packet rate shown while traffic flows: {:?}",
        rows["Total"]
    );
    traffic.stop();

    // Traffic stopped: once the counters are still, the page shows the API's numbers.
    let mut last = Value::Null;
    wait_for("the counters to settle", Duration::from_secs(20), || {
        sleep(Duration::from_millis(1500));
        let (_, now) = api(&sock, "GET", "/v1/stats", None);
        let same = now["services"] == last["services"];
        last = now;
        same
    });
    let dom = chromium(&lab, "--dump-dom");
    let (_, stats) = api(&sock, "GET", "/v1/stats", None);
    assert_eq!(
        stats["services"], last["services"],
        "counters moved while the page was read"
    );
    let rows = page_rows(&dom, &service);
    let svc = &stats["services"][0];
    let v = |row: &Row, k: &str| -> u64 {
        row.get(k)
            .and_then(|c| c.0.as_deref())
            .unwrap_or_else(|| panic!("no {k} in {row:?}"))
            .parse()
            .unwrap()
    };
    assert_eq!(rows.len(), 4, "three backends and the total: {rows:?}");
    let total = &rows["Total"];
    for k in ["conns", "inpkts", "inbytes"] {
        assert_eq!(v(total, k), svc[k].as_u64().unwrap(), "service {k}");
    }
    for b in svc["backends"].as_array().unwrap() {
        let addr = b["address"].as_str().unwrap();
        let row = &rows[addr];
        for k in [
            "conns",
            "inpkts",
            "inbytes",
            "weight",
            "active_conns",
            "inactive_conns",
        ] {
            assert_eq!(v(row, k), b[k].as_u64().unwrap(), "{addr} {k}");
        }
        assert_eq!(row["state"].1, "UP", "{addr}");
        assert_eq!(
            row["bps"].1, "0 b",
            "{addr}: traffic stopped, the rate is 0"
        );
    }
    let (_, status) = api(&sock, "GET", "/v1/status", None);
    let entries = attr(
        &dom[dom.find("id=\"ct-entries\"").expect("conn table entries")..],
        "data-v",
    )
    .unwrap()
    .parse::<u64>()
    .unwrap();
    assert_eq!(
        Some(entries),
        status["conns"].as_u64(),
        "connection table entries"
    );
    assert!(
        dom.contains(r#"id="ev-lost" data-v="0""#),
        "events lost on the page"
    );
    let tun_row = &dom[dom.find("data-reason=\"tx/tun\"").expect("tx/tun row")..];
    let tun_shown = attr(
        &tun_row[tun_row.find("data-k=\"packets\"").unwrap()..],
        "data-v",
    )
    .unwrap()
    .to_owned();
    let tun_api = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[1] == "tun")
        .map(|r| r[2].to_string())
        .unwrap();
    assert_eq!(tun_shown, tun_api, "tx/tun packets");
    eprintln!("stats page screenshot: {}", png.display());

    lab.stop_daemon().expect("stopping lb-daemon");
    lab.cleanup().expect("cleaning up");
    assert!(netns::namespaces(&prefix).unwrap().is_empty());
}
