//! Health checks end to end, in network namespaces (the demo topology of
//! xtask/src/netns.rs, prefix `lbhc-<pid>-`): the real lb-daemon checks the three
//! nginx real servers over HTTP every second (fall 2, rise 2) and small test servers
//! of this process serve long transfers on ports 8080/8081 of each real server.
//!
//! - stopping rs2's nginx takes it DOWN within fall × interval + timeout (seen in
//!   `GET /v1/health` and `GET /v1/events`, and by `lbctl events`), and none of 50 new
//!   connections reaches it; starting it again brings it back once `rise` checks
//!   passed (and its hold-down is over);
//! - a long transfer to a healthy backend survives another going down and coming
//!   back; one to the backend that goes down survives too (`on_down = "keep"`), and is
//!   cut with `on_down = "reset"`;
//! - a wrong expected status and a missing body substring take every backend DOWN, and
//!   the service fails open (keeps them all);
//! - an exec check whose command outlives its timeout fails with "timeout" after the
//!   timeout, and its processes are killed.
//!
//! The daemon runs with `--no-pin`, a temporary state file and socket, and its own
//! instance; the [`Lab`] guard removes everything however the test ends. Needs root.

use tests::e2e::{self, Api, service, wait_for};
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use netns::{Lab, SERVERS, VIP};
use serde_json::{Value, json};

const INTERVAL: f64 = 1.0;
const FALL: f64 = 2.0;
const RISE: f64 = 2.0;
const TIMEOUT: f64 = 1.0;
/// Added to every time bound: polling (every 50 ms), the applier, scheduling.
const SLACK: f64 = 0.6;
/// The long transfers: 6 MiB, paced by the server at 8 KiB every 40 ms (about 30 s),
/// so that the flow carries packets all along (a client's rate limit alone would not:
/// the whole body would sit in its socket buffer within a second).
const BIG: usize = 6 << 20;
const CHUNK: usize = 8 << 10;
const PACE: Duration = Duration::from_millis(40);
const RATE: &str = "400k";

fn backends_toml(health: Option<&str>) -> String {
    let mut s = String::new();
    for r in &SERVERS {
        s.push_str(&format!(
            "[[service.backends]]\naddress = \"{}\"\nforward = \"tun\"\nmac = \"{}\"\nweight = {}\n",
            r.addr, r.mac, r.weight
        ));
        if let Some(h) = health {
            s.push_str(&format!("health = {h}\n"));
        }
    }
    s
}

/// The services: 80 (nginx), 8080/8081 (test servers, checked on nginx's port 80),
/// 81 (wrong status), 82 (missing body text), 83 (exec outliving its timeout).
/// The daemon's TCP API (inside the LB namespace) and its bearer token.
const TCP_API: &str = "127.0.0.1:9180";
const TOKEN: &str = "e2e-health-token";

fn config(instance: &str, sleep_marker: &str, token_file: &str) -> String {
    let svc = |port: u16, health: &str| {
        format!(
            "[[service]]\naddress = \"{VIP}\"\nport = {port}\nproto = \"tcp\"\nscheduler = \"mh\"\n{health}\n{}\n",
            backends_toml(None)
        )
    };
    let http = |extra: &str| {
        format!(
            "[service.health]\ntype = \"http\"\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\nfall = {FALL}\nrise = {RISE}\n{extra}"
        )
    };
    [
        format!(
            "[daemon]\ninterfaces = [\"{}\"]\ninstance = \"{instance}\"\napi_listen = \"{TCP_API}\"\napi_token_file = \"{token_file}\"\n\n[capacity]\nmax_vips = 16\nmax_backends = 256\nconn_table = 65536\n\n[tunnel]\nsource_v4 = \"{}\"\n\n",
            netns::LB_IF,
            netns::LB_ADDR
        ),
        svc(80, &http("[service.health.http]\npath = \"/\"\nbody_contains = \"rs\"\n")),
        svc(8080, &http("port = 80\non_down = \"keep\"\n")),
        svc(8081, &http("port = 80\non_down = \"reset\"\n")),
        svc(81, &http("port = 80\n[service.health.http]\nexpect_status = [\"500\"]\n")),
        svc(82, &http("port = 80\n[service.health.http]\nbody_contains = \"no-such-text\"\n")),
        // Half-open TCP checks of nginx: their answers are taken by the daemon's XDP
        // program on the LB's interface (SYN-ACK: RST sent from XDP; RST: dropped).
        svc(
            84,
            &format!(
                "[service.health]\ntype = \"tcp\"\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\nfall = {FALL}\nrise = {RISE}\nport = 80\n"
            ),
        ),
        svc(
            83,
            &format!(
                "[service.health]\ntype = \"exec\"\ninterval = 2\nfall = 1\nexec = {{ command = \"{sleep_marker}\", timeout = 1 }}\n"
            ),
        ),
    ]
    .concat()
}

/// The long-transfer test servers on ports 8080 and 8081 of each real server (see
/// `Lab::serve_on_servers`): any request is answered with `BIG` bytes.
fn serve_big(mut c: TcpStream, _server: &'static str) {
    c.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n");
    if c.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b'x'; CHUNK];
    let mut left = BIG;
    while left > 0 {
        let n = left.min(chunk.len());
        if c.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n;
        sleep(PACE);
    }
}

/// A curl of the VIP in the client's namespace, from a chosen source port.
struct Transfer {
    child: Child,
    out: PathBuf,
    label: String,
}

impl Transfer {
    fn start(lab: &Lab, port: u16, local_port: u16, label: &str) -> Transfer {
        let out = lab.dir.join(format!("transfer-{label}"));
        let child = lab
            .client("curl")
            .args(["-s", "-o"])
            .arg(&out)
            .args([
                "--limit-rate",
                RATE,
                "--max-time",
                "90",
                "--local-port",
                &local_port.to_string(),
                "-w",
                "%{http_code} %{size_download}",
                &format!("http://{VIP}:{port}/"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting curl");
        Transfer {
            child,
            out,
            label: label.into(),
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Bytes received so far.
    fn received(&self) -> u64 {
        fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
    }

    /// (curl's exit code, "<http code> <bytes>")
    fn finish(mut self) -> (Option<i32>, String) {
        let st = self.child.wait().unwrap();
        let mut s = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        let _ = fs::remove_file(&self.out);
        (st.code(), s)
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A source port whose new flow to `vip_port` the daemon would send to a backend
/// for which `want` holds (GET /v1/route).
fn port_to(api: &Api, vip_port: u16, from: u16, want: impl Fn(&str) -> bool) -> (u16, String) {
    for p in from..from + 1000 {
        let r = api.get(&format!(
            "/v1/route?client={}:{p}&vip={VIP}:{vip_port}&proto=tcp",
            netns::CLIENT_ADDR
        ));
        if let Some(b) = r["backend"].as_str()
            && want(b)
        {
            return (p, b.to_string());
        }
    }
    panic!("no source port found for VIP port {vip_port}");
}

/// Processes whose command line is `marker` (the exec check's sleep).
fn count_procs(marker: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.trim() == marker)
        .count()
}

fn can_connect(lab: &Lab, addr: &str) -> bool {
    let a: SocketAddr = format!("{addr}:80").parse().unwrap();
    netns::in_netns(&lab.ns("client"), || {
        Ok(TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
    })
    .unwrap()
}

fn events(api: &Api) -> Vec<Value> {
    api.get("/v1/events?limit=1000")["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn health_checks_take_backends_out_and_back_in_namespaces() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end test needs root"
    );
    netns::remove_stale("lbhc-").expect("removing leftovers of earlier runs");
    let daemon = e2e::binary("lb-daemon", "lb-daemon");
    let lbctl = e2e::lbctl();
    let prefix = format!("lbhc-{}-", std::process::id());
    let mut lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
    let _servers = lab
        .serve_on_servers(&[8080, 8081], serve_big)
        .expect("test servers");
    let marker = format!("sleep 30.{}", std::process::id());
    let token_file = lab.dir.join("token");
    fs::write(&token_file, TOKEN).unwrap();
    let cfg = config(
        prefix.trim_end_matches('-'),
        &marker,
        token_file.to_str().unwrap(),
    );
    let sock = lab
        .start_unpinned_daemon(&daemon, &cfg)
        .expect("starting lb-daemon");
    let api = Api { sock };
    wait_for("the API socket", 10.0, || api.sock.exists());
    let rs2 = SERVERS[1].addr;
    let all_checked_up = |port: u16| {
        let h = api.get("/v1/health");
        service(&h, port)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| {
                b["state"] == "UP"
                    && b["last_check"]["ok"] == true
                    && b["consecutive_ok"].as_u64() >= Some(1)
            })
    };
    wait_for(
        "every backend of :80, :8080, :8081 checked UP",
        10.0,
        || all_checked_up(80) && all_checked_up(8080) && all_checked_up(8081) && all_checked_up(84),
    );
    let b = api.backend(84, rs2);
    assert_eq!(
        (
            b["check"]["type"].as_str(),
            b["last_check"]["detail"].as_str()
        ),
        (Some("tcp"), Some("SYN-ACK (half-open)")),
        "{b:#}"
    );
    let b = api.backend(8080, rs2);
    assert_eq!(
        b["check"]["target"],
        format!("{rs2}:80"),
        "check port override: {b:#}"
    );
    assert_eq!(b["check"]["type"], "http");

    // Wrong status and missing body text: every backend DOWN, the services fail open.
    for (port, why) in [
        (81u16, "HTTP 200, expected 500"),
        (82, "does not contain \"no-such-text\""),
    ] {
        wait_for(&format!("service :{port} failing open"), 10.0, || {
            service(&api.get("/v1/health"), port)["fail_open"] == true
        });
        let svc = service(&api.get("/v1/health"), port);
        for b in svc["backends"].as_array().unwrap() {
            assert_eq!(b["state"], "DOWN", "{b:#}");
            let detail = b["last_check"]["detail"].as_str().unwrap();
            assert!(detail.contains(why), "{port}: {detail}");
        }
        let evs = events(&api);
        assert!(
            evs.iter()
                .any(|e| e["service"] == format!("tcp {VIP}:{port}")
                    && e["new"] == "FAIL-OPEN"
                    && e["backend"].is_null()),
            "{evs:#?}"
        );
        // Failing open: the table still sends new flows to the (DOWN) backends.
        let r = api.get(&format!(
            "/v1/route?client={}:40000&vip={VIP}:{port}&proto=tcp",
            netns::CLIENT_ADDR
        ));
        assert!(r["backend"].is_string(), "fail-open kept no table: {r:#}");
    }
    let log = fs::read_to_string(lab.dir.join("daemon.log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("failing open"),
        "fail-open is logged loudly:\n{log}"
    );

    // Exec check: the command outlives its 1 s timeout: "timeout" after 1 s, killed.
    wait_for("exec checks failing with timeout", 10.0, || {
        service(&api.get("/v1/health"), 83)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["last_check"]["detail"] == "timeout")
    });
    for b in service(&api.get("/v1/health"), 83)["backends"]
        .as_array()
        .unwrap()
    {
        let ms = b["last_check"]["duration_ms"].as_f64().unwrap();
        assert!(
            (1000.0..1000.0 + SLACK * 1000.0).contains(&ms),
            "exec check took {ms} ms"
        );
        assert_eq!(b["state"], "DOWN");
    }
    // Never more sleeps alive than backends checked (each is killed at its timeout).
    let most = (0..20)
        .map(|_| {
            sleep(Duration::from_millis(150));
            count_procs(&marker)
        })
        .max()
        .unwrap();
    assert!(
        most <= SERVERS.len(),
        "{most} exec-check commands alive at once"
    );

    // Long transfers: to a healthy backend (never rs2) and to rs2 (keep / reset).
    let (p_healthy, healthy) = port_to(&api, 8080, 41000, |b| b != rs2);
    let (p_keep, _) = port_to(&api, 8080, 42000, |b| b == rs2);
    let (p_reset, _) = port_to(&api, 8081, 43000, |b| b == rs2);
    let mut t_healthy = Transfer::start(&lab, 8080, p_healthy, "healthy");
    let t_keep = Transfer::start(&lab, 8080, p_keep, "keep");
    let mut t_reset = Transfer::start(&lab, 8081, p_reset, "reset");
    sleep(Duration::from_millis(1000));
    let conns = api.get("/v1/conns");
    let on = |port: u16, local: u16| {
        conns["conns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["vip"] == format!("{VIP}:{port}")
                    && c["client"] == format!("{}:{local}", netns::CLIENT_ADDR)
            })
            .map(|c| c["backend"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(
        on(8080, p_healthy).as_deref(),
        Some(healthy.as_str()),
        "{conns:#}"
    );
    assert_eq!(on(8080, p_keep).as_deref(), Some(rs2), "{conns:#}");
    assert_eq!(on(8081, p_reset).as_deref(), Some(rs2), "{conns:#}");

    // Stop rs2's nginx: DOWN within fall × interval + timeout.
    lab.stop_nginx("rs2").expect("stopping rs2's nginx");
    wait_for("rs2's nginx to stop", 10.0, || !can_connect(&lab, rs2));
    let stopped = Instant::now();
    let bound = FALL * INTERVAL + TIMEOUT + SLACK;
    let took = wait_for("rs2 DOWN", bound, || api.state(80, rs2) == "DOWN");
    println!("rs2 DOWN {took:.2} s after its nginx stopped (bound {bound:.1} s)");
    let down_at = Instant::now();
    let b = api.backend(80, rs2);
    assert!(
        b["excluded"] == true && b["consecutive_fail"].as_u64() >= Some(2),
        "{b:#}"
    );
    assert!(
        b["last_check"]["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{b:#}"
    );
    // The half-open checks saw nginx's port refuse (an RST, taken by XDP).
    wait_for("rs2 DOWN on :84", bound, || api.state(84, rs2) == "DOWN");
    let b = api.backend(84, rs2);
    assert_eq!(
        b["last_check"]["detail"].as_str(),
        Some("connection refused"),
        "{b:#}"
    );
    let evs = events(&api);
    let rs2_events: Vec<(String, String, String)> = evs
        .iter()
        .filter(|e| e["service"] == format!("tcp {VIP}:80") && e["backend"] == rs2)
        .map(|e| {
            (
                e["old"].as_str().unwrap().into(),
                e["new"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rs2_events
            .iter()
            .map(|e| (e.0.as_str(), e.1.as_str()))
            .collect::<Vec<_>>(),
        vec![("UP", "DOWN-WAIT"), ("DOWN-WAIT", "DOWN")],
        "{rs2_events:#?}"
    );
    assert!(
        rs2_events[1].2.contains("2 consecutive checks failed"),
        "{rs2_events:#?}"
    );
    let ev = evs
        .iter()
        .rfind(|e| e["backend"] == rs2 && e["new"] == "DOWN")
        .unwrap();
    assert!(
        ev["time"].as_str().unwrap().ends_with('Z') && ev["seq"].as_u64().is_some(),
        "{ev:#}"
    );

    // lbctl events shows it.
    let out = Command::new(&lbctl)
        .args([
            "--socket",
            api.sock.to_str().unwrap(),
            "events",
            "-n",
            "200",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lbctl events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.contains(&format!("tcp {VIP}:80"))
            && l.contains(rs2)
            && l.contains("-> DOWN ")),
        "{text}"
    );

    // No new connection reaches rs2: 50 curls, all answered by the others.
    let before = api.conns(80, rs2);
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..50 {
        let (status, body) = lab.request(&format!("http://{VIP}/")).unwrap();
        assert!(status.success(), "request {i}: {status} {body:?}");
        *tally.entry(body).or_default() += 1;
    }
    assert!(!tally.contains_key("rs2"), "{tally:?}");
    assert_eq!(tally.values().sum::<u32>(), 50, "{tally:?}");
    assert_eq!(
        api.conns(80, rs2),
        before,
        "new connections were scheduled to rs2"
    );

    // on_down = "reset": the flow to rs2 on :8081 lost its entry and is cut (its next
    // packets go to another server, which resets them); on :8080 ("keep") it goes on.
    // (Each service checks rs2 on its own schedule: wait for those two to see it too.)
    wait_for(
        "rs2 DOWN for :8080 and :8081",
        FALL * INTERVAL + TIMEOUT + SLACK,
        || api.state(8080, rs2) == "DOWN" && api.state(8081, rs2) == "DOWN",
    );
    sleep(Duration::from_millis(200));
    let conns = api.get("/v1/conns");
    let has = |port: u16, local: u16| {
        conns["conns"].as_array().unwrap().iter().any(|c| {
            c["vip"] == format!("{VIP}:{port}")
                && c["client"] == format!("{}:{local}", netns::CLIENT_ADDR)
                && c["backend"] == rs2
        })
    };
    let log_8081 = || {
        fs::read_to_string(lab.dir.join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(":8081") || l.contains("reset"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !has(8081, p_reset),
        "on_down = reset left the entry: {conns:#}\n{}",
        log_8081()
    );
    assert!(
        has(8080, p_keep),
        "on_down = keep lost the entry: {conns:#}"
    );
    // Cut: curl fails (the client accepted another server's RST), or the flow is
    // stalled (rs2 no longer gets its ACKs).
    let mut last = (t_reset.received(), Instant::now());
    wait_for("the reset transfer to fail or stall", 15.0, || {
        if !t_reset.running() {
            return true;
        }
        let now = t_reset.received();
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(3)
    });
    let stalled_at = t_reset.received();
    let done = !t_reset.running();
    let (code, out) = t_reset.finish();
    if done {
        assert_ne!(code, Some(0), "the reset transfer should fail: {out}");
    } else {
        assert!(stalled_at < BIG as u64, "stalled after the whole body?");
    }
    println!(
        "on_down = reset: the flow to rs2 {} after {stalled_at} of {BIG} bytes",
        if done { "failed" } else { "stalled" }
    );

    // Start it again: UP once 2 checks passed (and the 5 s hold-down is over).
    lab.restart_nginx("rs2").expect("starting rs2's nginx");
    wait_for("rs2's nginx to start", 10.0, || can_connect(&lab, rs2));

    let hold_left = 5.0 - down_at.elapsed().as_secs_f64();
    let bound = (RISE * INTERVAL + TIMEOUT).max(hold_left) + SLACK;
    let took = wait_for("rs2 UP", bound, || api.state(80, rs2) == "UP");
    println!("rs2 UP {took:.2} s after its nginx started (bound {bound:.1} s)");
    assert!(
        took >= (RISE - 1.0) * INTERVAL - 0.1,
        "UP after {took:.2} s: before {RISE} checks could pass"
    );
    let b = api.backend(80, rs2);
    assert!(
        b["consecutive_ok"].as_u64() >= Some(2) && b["excluded"] == false,
        "{b:#}"
    );
    let ev = events(&api)
        .into_iter()
        .rfind(|e| e["service"] == format!("tcp {VIP}:80") && e["backend"] == rs2)
        .unwrap();
    assert_eq!(
        (ev["old"].as_str(), ev["new"].as_str()),
        (Some("DOWN"), Some("UP")),
        "{ev:#}"
    );
    assert!(
        ev["reason"]
            .as_str()
            .unwrap()
            .contains("consecutive checks passed"),
        "{ev:#}"
    );
    println!(
        "rs2 back after {:.2} s DOWN",
        stopped.elapsed().as_secs_f64()
    );
    wait_for("rs2 UP on :84", bound, || api.state(84, rs2) == "UP");
    // Those answers went through the data plane: SYN-ACKs reset there, RSTs dropped.
    let reasons = api.get("/v1/stats")["reasons"].clone();
    let count = |label: &str| {
        reasons
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[1] == label)
            .and_then(|r| r[2].as_u64())
            .unwrap_or(0)
    };
    assert!(
        count("health_reset") >= 2 * SERVERS.len() as u64 && count("health_answer") >= 2,
        "half-open answers taken by XDP: {reasons}"
    );

    // The transfer to the healthy backend was still going when rs2 came back, and ends
    // complete; so does the one kept on rs2.
    assert!(
        t_healthy.running(),
        "the long transfer ended before rs2 came back: make it longer"
    );
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let (_, body) = lab.request(&format!("http://{VIP}/")).unwrap();
        *tally.entry(body).or_default() += 1;
    }
    assert!(
        tally.contains_key("rs2"),
        "rs2 gets new connections again: {tally:?}"
    );
    for (t, what) in [(t_healthy, "healthy"), (t_keep, "kept")] {
        let label = t.label.clone();
        let (code, out) = t.finish();
        assert_eq!(code, Some(0), "{what} transfer ({label}): {out}");
        assert_eq!(out, format!("200 {BIG}"), "{what} transfer ({label})");
    }

    tcp_api_cannot_add_exec_checks(&lab, &api);

    lab.stop_daemon().expect("stopping lb-daemon");
    sleep(Duration::from_millis(200));
    assert_eq!(
        count_procs(&marker),
        0,
        "exec-check commands left after the daemon stopped"
    );
    lab.cleanup().expect("cleaning up");
    assert!(netns::namespaces(&prefix).unwrap().is_empty());
}

/// The service on `port` in a state's JSON.
fn service_on(state: &mut Value, port: u16) -> &mut Value {
    state["service"]
        .as_array_mut()
        .expect("a service list")
        .iter_mut()
        .find(|s| s["port"] == port)
        .unwrap_or_else(|| panic!("no service on :{port}"))
}

/// PUT /v1/state over the TCP API (curl in the LB namespace): (status, body).
fn put_over_tcp(lab: &Lab, token: Option<&str>, body: &Value) -> (u16, String) {
    let file = lab.dir.join("put.json");
    fs::write(&file, body.to_string()).unwrap();
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &lab.ns("lb"),
        "curl",
        "-s",
        "--max-time",
        "5",
    ]);
    c.args(["-X", "PUT", "-H", "content-type: application/json"]);
    if let Some(t) = token {
        c.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    c.arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{TCP_API}/v1/state"));
    let out = c.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    (
        code.trim().parse().expect("an HTTP status"),
        body.to_string(),
    )
}

/// Exec checks run commands as root: over the token-protected TCP API a state may keep
/// the exec checks it has, but not add or change one; the unix socket may.
fn tcp_api_cannot_add_exec_checks(lab: &Lab, api: &Api) {
    let cur = api.get("/v1/state");
    let generation = cur["generation"].as_u64().unwrap();
    let state = cur["state"].clone();
    let put = |s: &Value, g: u64| json!({ "generation": g, "state": s });
    // No token, wrong token: refused before anything is read.
    assert_eq!(put_over_tcp(lab, None, &put(&state, generation)).0, 401);
    assert_eq!(
        put_over_tcp(lab, Some("nope"), &put(&state, generation)).0,
        401
    );
    // An exec check added to :80 over TCP: 403, and nothing changes.
    let mut with_exec = state.clone();
    service_on(&mut with_exec, 80)["health"] =
        json!({ "type": "exec", "exec": { "command": "touch /tmp/owned" } });
    let (code, body) = put_over_tcp(lab, Some(TOKEN), &put(&with_exec, generation));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("exec health check `touch /tmp/owned` on tcp")
            && body.contains("only through the local unix socket"),
        "{body}"
    );
    let after = api.get("/v1/state");
    assert_eq!(after["generation"].as_u64(), Some(generation));
    assert_eq!(after["state"], state);
    // The same state as before (its :83 exec check kept) is accepted over TCP.
    let (code, body) = put_over_tcp(lab, Some(TOKEN), &put(&state, generation));
    assert_eq!(code, 200, "{body}");
    // Changing the existing exec command over TCP is refused too.
    let generation = generation + 1;
    let mut changed = state.clone();
    service_on(&mut changed, 83)["health"]["exec"]["command"] = json!("id");
    let (code, body) = put_over_tcp(lab, Some(TOKEN), &put(&changed, generation));
    assert_eq!(code, 403, "{body}");
}
