//! Passive detection end to end, in network namespaces (the demo topology of
//! xtask/src/netns.rs, prefix `lbpas-<pid>-`): the real lb-daemon learns from what the
//! XDP program sees of the client side of flows that a backend is not answering.
//!
//! Clients open connections through the VIP all along (threads in the client's
//! namespace, a new source port each time). Then, in a real server's namespace,
//! iptables starts refusing the clients' SYNs (the LB's own address still gets
//! through, so active checks alone would keep the backend UP):
//!
//! - `DROP` on rs2: the clients retransmit their SYNs; the data plane reports them over
//!   the ring buffer and rs2 goes DOWN with a passive reason, far sooner than the
//!   active check interval of service :8080 (30 s). On :80 (passive only), every time
//!   the hold-down ends rs2 is tried again (UP-WARM), fails again, and is held down
//!   for 5, 10, then 20 s (DPVS's doubling inhibit). With the rule gone, the first
//!   completed handshakes take it UP.
//! - `REJECT --reject-with tcp-reset` on rs3 for :8081: clients get an RST straight
//!   from rs3 and never retransmit; the share of new flows that never complete their
//!   handshake takes rs3 DOWN.
//!
//! The daemon runs with `--no-pin`; the [`Lab`] guard removes everything however the
//! test ends. Needs root.

use tests::e2e::{self, Api, service, wait_for};
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use netns::{Lab, SERVERS, VIP};
use serde_json::Value;

/// The active check interval of service :8080.
const ACTIVE_INTERVAL: f64 = 30.0;

fn config(instance: &str) -> String {
    let mut s = format!(
        "[daemon]\ninterfaces = [\"{}\"]\ninstance = \"{instance}\"\n\n[capacity]\nmax_vips = 16\nmax_backends = 256\nconn_table = 65536\n\n[tunnel]\nsource_v4 = \"{}\"\n\n",
        netns::LB_IF,
        netns::LB_ADDR
    );
    let health = [
        // Passive only; the third hold-down is the last one that grows.
        (
            80u16,
            "type = \"none\"\n[service.health.passive]\ninhibit_max = 20\n",
        ),
        (
            8080,
            "type = \"tcp\"\ninterval = 30\ntimeout = 1\nrise = 1\nfall = 3\n",
        ),
        (8081, "type = \"none\"\n"),
    ];
    for (port, h) in health {
        s.push_str(&format!(
            "[[service]]\naddress = \"{VIP}\"\nport = {port}\nproto = \"tcp\"\nscheduler = \"mh\"\n[service.health]\n{h}\n"
        ));
        for r in &SERVERS {
            s.push_str(&format!(
                "[[service.backends]]\naddress = \"{}\"\nforward = \"tun\"\nmac = \"{}\"\nweight = 1\n",
                r.addr, r.mac
            ));
        }
    }
    s
}

/// The small HTTP servers on ports 8080 and 8081 of each real server (see
/// `Lab::serve_on_servers`): each request is answered with the server's name.
fn serve_name(mut c: TcpStream, name: &'static str) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 512];
    let _ = c.read(&mut buf);
    let _ = c.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n{name}").as_bytes());
}

/// Client threads opening one connection after another to VIP:port (a new source port
/// each), counting the ones answered.
struct Clients {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
}

impl Clients {
    fn start(lab: &Lab, ports: &[u16], threads_per_port: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        for &port in ports {
            for _ in 0..threads_per_port {
                let (stop, answered) = (stop.clone(), answered.clone());
                let ns = lab.ns("client");
                let to: SocketAddr = format!("{VIP}:{port}").parse().unwrap();
                std::thread::spawn(move || {
                    netns::in_netns(&ns, || {
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok(mut c) =
                                TcpStream::connect_timeout(&to, Duration::from_secs(3))
                            {
                                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                                let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
                                let mut v = Vec::new();
                                if c.read_to_end(&mut v).is_ok() && v.starts_with(b"HTTP/1.") {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            sleep(Duration::from_millis(40));
                        }
                        Ok(())
                    })
                    .ok();
                });
            }
        }
        Clients { stop, answered }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Adds (`-A`) or deletes (`-D`) the rule on `server` that sends the clients' SYNs to
/// `port` to `target` (`["DROP"]`: black-holed; REJECT with an RST: refused).
fn client_syns(lab: &Lab, server: &str, op: &str, port: &str, target: &[&str]) {
    let mut args = vec![
        op,
        "INPUT",
        "-s",
        netns::CLIENT_ADDR,
        "-p",
        "tcp",
        "--syn",
        "--dport",
        port,
        "-j",
    ];
    args.extend_from_slice(target);
    iptables(lab, server, &args);
}

fn iptables(lab: &Lab, server: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(server), "iptables"])
        .args(args)
        .output()
        .expect("running iptables");
    assert!(
        out.status.success(),
        "iptables {args:?} in {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Transitions of backend `addr` of service `port`, oldest first.
fn transitions(api: &Api, port: u16, addr: &str) -> Vec<Value> {
    let svc = format!("tcp {VIP}:{port}");
    api.get("/v1/events?limit=1000")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == svc.as_str() && e["backend"] == addr)
        .cloned()
        .collect()
}

#[test]
fn passive_detection_takes_silent_backends_down_in_namespaces() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end test needs root"
    );
    netns::remove_stale("lbpas-").expect("removing leftovers of earlier runs");
    let daemon = e2e::daemon();
    let prefix = format!("lbpas-{}-", std::process::id());
    let mut lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
    let _servers = lab
        .serve_on_servers(&[8080, 8081], serve_name)
        .expect("test servers");
    let sock = lab
        .start_unpinned_daemon(&daemon, &config(prefix.trim_end_matches('-')))
        .expect("starting lb-daemon");
    let api = Api { sock };
    wait_for("the API socket", 10.0, || api.sock.exists());
    let (rs2, rs3) = (SERVERS[1].addr, SERVERS[2].addr);

    let clients = Clients::start(&lab, &[80, 8080, 8081], 2);
    wait_for("clients answered through every service", 10.0, || {
        clients.answered.load(Ordering::Relaxed) >= 60
    });
    // Healthy traffic completes its handshakes: no passive report, everyone UP.
    sleep(Duration::from_secs(3));
    let h = api.get("/v1/health");
    for port in [80u16, 8080, 8081] {
        for b in service(&h, port)["backends"].as_array().unwrap() {
            assert_eq!(b["state"], "UP", "healthy traffic, :{port}: {b:#}");
        }
    }
    for port in [80u16, 8080, 8081] {
        for r in &SERVERS {
            assert!(
                transitions(&api, port, r.addr).is_empty(),
                "no transition with healthy traffic (:{port} {})",
                r.addr
            );
        }
    }

    // rs2 black-holes the clients' SYNs (80 and 8080); rs3 refuses them on 8081.
    let blocked = Instant::now();
    for port in ["80", "8080"] {
        client_syns(&lab, "rs2", "-A", port, &["DROP"]);
    }
    client_syns(
        &lab,
        "rs3",
        "-A",
        "8081",
        &["REJECT", "--reject-with", "tcp-reset"],
    );

    // :8080 has an active check every 30 s; the passive report is much faster.
    let took = wait_for("rs2 DOWN on :8080", ACTIVE_INTERVAL, || {
        api.backend(8080, rs2)["state"] == "DOWN"
    });
    let t = transitions(&api, 8080, rs2);
    let down = t.iter().find(|e| e["new"] == "DOWN").unwrap();
    assert!(
        down["reason"]
            .as_str()
            .unwrap()
            .starts_with("passive: client retransmitted its SYN"),
        "{down:#}"
    );
    let detect = blocked.elapsed().as_secs_f64();
    assert!(
        detect < ACTIVE_INTERVAL / 3.0,
        "passive detection took {detect:.1} s (waited {took:.1} s)"
    );
    eprintln!("rs2 DOWN on :8080 by passive detection {detect:.1} s after the SYNs were dropped");

    // :8081: RSTs from rs3 leave handshakes unfinished.
    wait_for("rs3 DOWN on :8081", 10.0, || {
        api.backend(8081, rs3)["state"] == "DOWN"
    });
    let t = transitions(&api, 8081, rs3);
    let down = t.iter().find(|e| e["new"] == "DOWN").unwrap();
    assert!(
        down["reason"]
            .as_str()
            .unwrap()
            .contains("never completed their handshake"),
        "{down:#}"
    );
    // rs2 and rs1 on :8081 are not touched by rs3's failures.
    for r in [SERVERS[0].addr, rs2] {
        assert_eq!(api.backend(8081, r)["state"], "UP", "{r} on :8081");
    }

    // :80, passive only: DOWN, tried again after 5 s, DOWN, 10 s, DOWN, 20 s.
    wait_for("three hold-downs of rs2 on :80", 60.0, || {
        transitions(&api, 80, rs2)
            .iter()
            .filter(|e| e["new"] == "DOWN")
            .count()
            >= 3
    });
    let t = transitions(&api, 80, rs2);
    let time = |e: &Value| e["unix_time"].as_f64().unwrap();
    let downs: Vec<&Value> = t.iter().filter(|e| e["new"] == "DOWN").collect();
    for (i, want) in [5.0f64, 10.0].into_iter().enumerate() {
        let d = downs[i];
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .ends_with(&format!("held down for at least {}s", want as u64)),
            "hold-down {i}: {d:#}"
        );
        // The next transition ends the hold-down: UP-WARM, `want` seconds later.
        let next = t
            .iter()
            .find(|e| e["seq"].as_u64() > d["seq"].as_u64())
            .unwrap();
        assert_eq!(next["new"], "UP-WARM", "{next:#}");
        let held = time(next) - time(d);
        // The state machine keeps time in whole milliseconds (a DOWN at 1000.9 ms is
        // held from 1000 ms): the hold-down may end up to 1 ms early by the wall clock.
        assert!(
            (want - 0.001..want + 0.5).contains(&held),
            "hold-down {i}: {held:.2} s, expected {want} s: {d:#} {next:#}"
        );
    }
    assert!(
        downs[2]["reason"]
            .as_str()
            .unwrap()
            .ends_with("held down for at least 20s"),
        "{:#}",
        downs[2]
    );
    // While DOWN, no new connection is sent to rs2 on :80 (after those in flight).
    let conns = |api: &Api| api.conns(80, rs2);
    sleep(Duration::from_millis(500));
    let before = conns(&api);
    sleep(Duration::from_secs(2));
    assert_eq!(api.backend(80, rs2)["state"], "DOWN");
    assert_eq!(
        conns(&api),
        before,
        "new connections reached rs2 while DOWN"
    );

    // The rules go: after the hold-down rs2 is tried again, and the first completed
    // handshakes take it UP.
    for port in ["80", "8080"] {
        client_syns(&lab, "rs2", "-D", port, &["DROP"]);
    }
    wait_for("rs2 UP again on :80", 30.0, || {
        api.backend(80, rs2)["state"] == "UP"
    });
    let t = transitions(&api, 80, rs2);
    let last = t.last().unwrap();
    assert_eq!(last["old"], "UP-WARM", "{last:#}");
    assert_eq!(last["reason"], "traffic to it succeeds", "{last:#}");

    // The data plane rate-limited its reports, and none was lost.
    let m = api.get("/v1/status");
    eprintln!("status: {m:#}");
    drop(clients);
    let out = lab.stop_daemon().expect("stopping the daemon");
    eprintln!("{out}");
    lab.cleanup().expect("cleaning up");
}
