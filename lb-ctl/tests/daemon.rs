//! `lbctl` against a fake daemon on a unix socket (hyper server): what it sends
//! (read-modify-write with the generation, one PUT per command, none on refusal),
//! the 409 retry, and what it prints.

use std::{
    convert::Infallible,
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_common::ops::Op;
use lb_common::state::State;
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    generation: u64,
    state: Value,
    stats: Value,
    /// (method, uri, body) of every request.
    requests: Vec<(String, String, Value)>,
    /// States accepted by PUT /v1/state.
    puts: Vec<Value>,
    /// Answer this many PUTs with 409 (someone else changed the state).
    conflicts: u32,
    /// Answer PUT with 400 and this error.
    reject: Option<String>,
    /// Serve GET /v1/conns.
    conns: Option<Value>,
    /// Serve GET /v1/events.
    events: Option<Value>,
    /// `conn_timeout` in GET /v1/status.
    conn_timeout: Option<u64>,
}

type Shared = Arc<Mutex<Fake>>;

struct Daemon {
    sock: PathBuf,
    fake: Shared,
}

/// The socket file goes with the fake (its listener thread lives on, unreachable).
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn json_response(code: u16, v: &Value) -> Response<Full<Bytes>> {
    let body = if v.is_null() {
        Bytes::new()
    } else {
        Bytes::from(v.to_string())
    };
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    fake: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("lbctl sends JSON")
    };
    let mut f = fake.lock().unwrap();
    f.requests.push((method.clone(), uri.clone(), body.clone()));
    let path = uri.split('?').next().unwrap().to_string();
    let (code, v) = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/state") => (200, json!({"generation": f.generation, "state": f.state})),
        ("PUT", "/v1/state") => {
            if f.conflicts > 0 {
                f.conflicts -= 1;
                f.generation += 1;
                (
                    409,
                    json!({"error": format!("generation {} is not the current one", body["generation"])}),
                )
            } else if let Some(m) = f.reject.clone() {
                (400, json!({ "error": m }))
            } else if body["generation"] != json!(f.generation) {
                (409, json!({"error": "stale generation"}))
            } else {
                let _: State =
                    serde_json::from_value(body["state"].clone()).expect("PUT carries a State");
                f.state = body["state"].clone();
                f.puts.push(body["state"].clone());
                f.generation += 1;
                (200, json!({"generation": f.generation, "report": {}}))
            }
        }
        ("GET", "/v1/stats") => (200, f.stats.clone()),
        ("GET", "/v1/status") => {
            let mut v = json!({"version": "0.1.0", "instance": "lb", "generation": f.generation,
                   "interfaces": [{"name": "eth0", "mode": "native"}],
                   "services": 1, "backends": 2, "conns": 3, "conn_capacity": 1048576});
            if let Some(t) = f.conn_timeout {
                v["conn_timeout"] = json!(t);
            }
            (200, v)
        }
        ("POST", "/v1/zero") => (200, json!({"zeroed": true})),
        ("POST", "/v1/shutdown") => (200, json!({"shutting_down": true})),
        ("GET", "/v1/route") => (
            200,
            json!({"backend": "10.1.0.12", "why": "new flow: Maglev slot 5 of 65537"}),
        ),
        ("GET", "/v1/conns") if f.conns.is_some() => (200, f.conns.clone().unwrap()),
        ("GET", "/v1/events") if f.events.is_some() => (200, f.events.clone().unwrap()),
        _ => (404, Value::Null),
    };
    Ok(json_response(code, &v))
}

fn start(state: Value) -> Daemon {
    let sock = std::env::temp_dir().join(format!(
        "lbctl-fake-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&sock);
    let fake: Shared = Arc::new(Mutex::new(Fake {
        generation: 7,
        state,
        ..Default::default()
    }));
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let f2 = fake.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let f = f2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, f.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Daemon { sock, fake }
}

impl Daemon {
    fn run(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .env_remove("LBCTL_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        (
            status.code().unwrap(),
            String::from_utf8(stdout).unwrap(),
            String::from_utf8(stderr).unwrap(),
        )
    }

    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let (code, out, err) = self.run(args, stdin);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }

    fn puts(&self) -> Vec<Value> {
        self.fake.lock().unwrap().puts.clone()
    }

    fn put_attempts(&self) -> usize {
        self.fake
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.0 == "PUT")
            .count()
    }

    fn state(&self) -> State {
        serde_json::from_value(self.fake.lock().unwrap().state.clone()).unwrap()
    }
}

fn empty() -> Value {
    json!({})
}

/// One HTTP service with a DR and a TUN real server.
fn one_service() -> Value {
    json!({"service": [{
        "address": "10.0.0.1", "port": 80, "proto": "tcp", "scheduler": "rr", "persistence": 0,
        "backends": [
            {"address": "192.168.1.2", "weight": 1, "forward": "dr"},
            {"address": "192.168.1.3", "weight": 4, "forward": "tun"}
        ]
    }]})
}

/// `ipvsadm -S -n` of an LVS box: DR and TUN real servers, weights, persistence, wlc.
const LVS_SAVE: &str = "\
-A -t 192.0.2.10:80 -s wlc
-a -t 192.0.2.10:80 -r 10.1.0.11:80 -g -w 1
-a -t 192.0.2.10:80 -r 10.1.0.12:80 -g -w 3
-A -t 192.0.2.10:443 -s wlc -p 1800
-a -t 192.0.2.10:443 -r 10.1.0.11:443 -g -w 1
-A -u 192.0.2.53:53 -s rr
-a -u 192.0.2.53:53 -r 10.2.0.1:53 -i -w 1
-a -u 192.0.2.53:53 -r 10.2.0.2:53 -i -w 0
";

#[test]
fn migrate_with_ipvsadm_save_then_list_and_save() {
    let d = start(empty());
    let (code, out, err) = d.run(&["-R"], LVS_SAVE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        "lbctl: warning: line 1: service tcp 192.0.2.10:80: scheduler wlc is not available yet: using mh (Maglev consistent hashing) instead\n\
         lbctl: warning: line 4: service tcp 192.0.2.10:443: scheduler wlc is not available yet: using mh (Maglev consistent hashing) instead\n"
    );
    assert_eq!(d.puts().len(), 1, "restore is one PUT");
    let st = d.state();
    assert_eq!(st.services.len(), 3);
    assert_eq!(st.services[1].persistence, 1800);

    assert_eq!(
        d.ok(&["-S", "-n"], ""),
        "\
-A -t 192.0.2.10:80 -s mh
-a -t 192.0.2.10:80 -r 10.1.0.11:80 -g -w 1
-a -t 192.0.2.10:80 -r 10.1.0.12:80 -g -w 3
-A -t 192.0.2.10:443 -s mh -p 1800
-a -t 192.0.2.10:443 -r 10.1.0.11:443 -g -w 1
-A -u 192.0.2.53:53 -s rr
-a -u 192.0.2.53:53 -r 10.2.0.1:53 -i -w 1
-a -u 192.0.2.53:53 -r 10.2.0.2:53 -i -w 0
"
    );
    assert_eq!(d.ok(&["save"], ""), d.ok(&["-Sn"], ""));

    d.fake.lock().unwrap().stats = json!({
        "services": [{"id": {"address": "192.0.2.10", "port": 80, "proto": "tcp"},
                      "conns": 5, "inpkts": 50, "inbytes": 5000,
                      "backends": [{"address": "10.1.0.12", "active_conns": 12, "inactive_conns": 3,
                                    "conns": 5, "inpkts": 50, "inbytes": 5000}]}],
        "reasons": [["tx", "dr", 50]]
    });
    // ipvsadm's printf formats, size= from the daemon's conn_capacity.
    let want = "\
IP Virtual Server version 1.2.1 (size=1048576)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.0.2.10:80 mh
  -> 10.1.0.11:80                 Route   1      0          0         
  -> 10.1.0.12:80                 Route   3      12         3         
TCP  192.0.2.10:443 mh persistent 1800
  -> 10.1.0.11:443                Route   1      0          0         
UDP  192.0.2.53:53 rr
  -> 10.2.0.1:53                  Tunnel  1      0          0         
  -> 10.2.0.2:53                  Tunnel  0      0          0         
";
    assert_eq!(d.ok(&["-L", "-n"], ""), want);
    assert_eq!(d.ok(&["-Ln"], ""), want);
    assert_eq!(d.ok(&["list"], ""), want);
    assert_eq!(
        d.ok(&[], ""),
        want,
        "bare lbctl lists, as bare ipvsadm does"
    );

    let stats = d.ok(&["-L", "-n", "--stats", "-t", "192.0.2.10:80"], "");
    assert_eq!(
        stats,
        "\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.0.2.10:80                       5       50        0     5000        0
  -> 10.1.0.11:80                        0        0        0        0        0
  -> 10.1.0.12:80                        5       50        0     5000        0
"
    );
    let s = d.ok(&["stats"], "");
    assert!(
        s.ends_with("\nAction Reason                 Count\ntx     dr                     50\n"),
        "{s}"
    );
    // Rates over one second: the fake's counters do not move.
    let r = d.ok(&["-L", "-n", "--rate"], "");
    assert!(r.contains("CPS    InPPS   OutPPS    InBPS   OutBPS"), "{r}");
    assert!(
        r.contains(
            "\nTCP  192.0.2.10:80                       0        0        0        0        0\n"
        ),
        "{r}"
    );

    let (code, _, err) = d.run(&["-L", "-n", "-t", "192.0.2.99:80"], "");
    assert_eq!(
        (code, err.as_str()),
        (1, "lbctl: No such service tcp 192.0.2.99:80\n")
    );
}

#[test]
fn restore_is_all_or_nothing() {
    let d = start(json!({"service": [{"address": "192.0.2.53", "port": 53, "proto": "udp"}]}));
    let (code, _, err) = d.run(&["-R"], LVS_SAVE);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.ends_with("lbctl: line 6: service udp 192.0.2.53:53 already exists\n"),
        "{err}"
    );
    assert_eq!(d.put_attempts(), 0, "nothing is sent when one line fails");

    // --strict refuses wlc before anything reaches the daemon.
    let (code, _, err) = d.run(&["--strict", "restore"], LVS_SAVE);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(
            "lbctl: line 1: service tcp 192.0.2.10:80: scheduler wlc is not available yet"
        ),
        "{err}"
    );
    assert_eq!(d.put_attempts(), 0);

    // --replace clears first: one PUT with exactly the file's services.
    let (code, _, err) = d.run(&["restore", "--replace", "-"], LVS_SAVE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.puts().len(), 1);
    assert_eq!(d.state().services.len(), 3);
}

#[test]
fn edits_read_modify_write_with_generation() {
    let d = start(one_service());
    d.ok(
        &[
            "-a",
            "-t",
            "10.0.0.1:80",
            "-r",
            "192.168.1.4",
            "-i",
            "--gue",
            "-w",
            "2",
        ],
        "",
    );
    let puts = d.fake.lock().unwrap().requests.clone();
    let put = puts.iter().find(|r| r.0 == "PUT").unwrap();
    assert_eq!(
        put.2["generation"],
        json!(7),
        "PUT carries the generation read"
    );
    let st = d.state();
    let r = &st.services[0].backends[2];
    assert_eq!(
        (r.address.to_string(), r.weight, r.forward),
        ("192.168.1.4".to_string(), 2, lb_common::state::Forward::Gue)
    );

    // Drain keeps the tunnel: weight 0, forwarding unchanged — both forms.
    d.ok(&["backend", "drain", "10.0.0.1:80", "192.168.1.3"], "");
    let r = &d.state().services[0].backends[1];
    assert_eq!((r.weight, r.forward), (0, lb_common::state::Forward::Tun));
    d.ok(
        &["-e", "-t", "10.0.0.1:80", "-r", "192.168.1.3:80", "-w", "5"],
        "",
    );
    let r = &d.state().services[0].backends[1];
    assert_eq!((r.weight, r.forward), (5, lb_common::state::Forward::Tun));

    d.ok(&["service", "edit", "10.0.0.1:80", "-p"], "");
    let s = &d.state().services[0];
    assert_eq!(
        (s.scheduler, s.persistence),
        (lb_common::state::Scheduler::Rr, 300)
    );
    // -E is ipvsadm's: no -p turns persistence off, no -s means the default (mh).
    d.ok(&["-E", "-t", "10.0.0.1:80"], "");
    let s = &d.state().services[0];
    assert_eq!(
        (s.scheduler, s.persistence),
        (lb_common::state::Scheduler::Mh, 0)
    );

    let (code, _, err) = d.run(&["service", "add", "10.0.0.2:80", "-s", "wlc"], "");
    assert_eq!(code, 0);
    assert_eq!(
        err,
        "lbctl: warning: service tcp 10.0.0.2:80: scheduler wlc is not available yet: using mh (Maglev consistent hashing) instead\n"
    );
    d.ok(&["-D", "-t", "10.0.0.2:80"], "");
    d.ok(&["backend", "del", "10.0.0.1:80", "192.168.1.4"], "");
    assert_eq!(d.state().services.len(), 1);
    assert_eq!(d.state().services[0].backends.len(), 2);
    d.ok(&["-C"], "");
    assert!(d.state().services.is_empty());
}

#[test]
fn conflicts_with_the_state_are_refused_locally() {
    let d = start(one_service());
    for (args, msg) in [
        (
            vec!["-A", "-t", "10.0.0.1:80"],
            "lbctl: service tcp 10.0.0.1:80 already exists\n",
        ),
        (
            vec!["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.2"],
            "lbctl: destination 192.168.1.2 already exists in service tcp 10.0.0.1:80\n",
        ),
        (
            vec!["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.9"],
            "lbctl: No such destination 192.168.1.9 in service tcp 10.0.0.1:80\n",
        ),
        (
            vec![
                "backend",
                "drain",
                "--proto",
                "udp",
                "10.0.0.1:80",
                "192.168.1.2",
            ],
            "lbctl: No such service udp 10.0.0.1:80\n",
        ),
        (
            vec!["-E", "-t", "10.0.0.9:80", "-s", "rr"],
            "lbctl: No such service tcp 10.0.0.9:80\n",
        ),
    ] {
        let (code, _, err) = d.run(&args, "");
        assert_eq!((code, err.as_str()), (1, msg), "{args:?}");
    }
    assert_eq!(d.put_attempts(), 0);
}

#[test]
fn generation_conflict_is_retried_once() {
    let d = start(one_service());
    d.fake.lock().unwrap().conflicts = 1;
    d.ok(&["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.9"], "");
    assert_eq!(d.put_attempts(), 2);
    assert_eq!(d.state().services[0].backends.len(), 3);

    d.fake.lock().unwrap().conflicts = 2;
    let (code, _, err) = d.run(&["backend", "drain", "10.0.0.1:80", "192.168.1.9"], "");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("lbctl: the state changed under us twice (generation conflict)"),
        "{err}"
    );
    assert_eq!(d.put_attempts(), 4);
    assert_eq!(d.state().services[0].backends[2].weight, 1, "not applied");
}

#[test]
fn daemon_refusal_exits_1_with_its_message() {
    let d = start(one_service());
    d.fake.lock().unwrap().reject = Some("backends: 4096 exceed capacity.max_backends 4095".into());
    let (code, _, err) = d.run(&["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.9"], "");
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "lbctl: backends: 4096 exceed capacity.max_backends 4095\n"
        )
    );
}

#[test]
fn events_lists_health_transitions() {
    let d = start(one_service());
    let (code, _, err) = d.run(&["events"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no health events"), "{err}");
    // The daemon's shape (GET /v1/events): oldest first; a service-level event has no backend.
    d.fake.lock().unwrap().events = Some(json!({"events": [
        {"seq": 1, "time": "2026-01-02T03:04:05.006Z", "unix_time": 1.0, "service": "tcp 10.0.0.1:80",
         "backend": "192.168.1.2", "old": "UP", "new": "DOWN",
         "reason": "3 consecutive checks failed, last: connection refused; held down for at least 5s"},
        {"seq": 2, "time": "2026-01-02T03:04:06.000Z", "unix_time": 2.0, "service": "tcp 10.0.0.1:80",
         "backend": null, "old": "SERVING", "new": "FAIL-OPEN", "reason": "every backend is DOWN"}
    ]}));
    assert_eq!(
        d.ok(&["events", "-n", "5"], ""),
        "TIME                     SERVICE                  BACKEND          OLD          NEW       REASON\n\
         2026-01-02T03:04:05.006Z tcp 10.0.0.1:80          192.168.1.2      UP        -> DOWN      3 consecutive checks failed, last: connection refused; held down for at least 5s\n\
         2026-01-02T03:04:06.000Z tcp 10.0.0.1:80          -                SERVING   -> FAIL-OPEN every backend is DOWN\n"
    );
    let reqs = d.fake.lock().unwrap().requests.clone();
    assert!(reqs.iter().any(|r| r.1 == "/v1/events?limit=5"), "{reqs:?}");
}

#[test]
fn zero_route_status_shutdown_and_connections() {
    let d = start(one_service());
    d.ok(&["-Z", "-t", "10.0.0.1:80"], "");
    d.ok(&["zero"], "");
    let out = d.ok(
        &["route", "[2001:db8::7]:4000", "[2001:db8::10]:80", "udp"],
        "",
    );
    assert_eq!(
        out,
        "udp [2001:db8::7]:4000 -> [2001:db8::10]:80\nbackend: 10.1.0.12\nwhy: new flow: Maglev slot 5 of 65537\n"
    );
    let status = d.ok(&["status"], "");
    assert!(
        status.contains("interfaces     eth0 (native)\n"),
        "{status}"
    );
    d.ok(&["shutdown", "--unload"], "");

    let (code, _, err) = d.run(&["-L", "-n", "-c"], "");
    assert_eq!(code, 1);
    assert!(err.contains("does not serve its connection table"), "{err}");
    // The daemon's shape: backend address (or null once removed), established, idle_secs.
    d.fake.lock().unwrap().conns = Some(json!({"conns": [
        {"proto": "tcp", "client": "198.51.100.7:40001", "vip": "10.0.0.1:80",
         "backend": "192.168.1.2", "backend_id": 1, "established": true, "idle_secs": 61},
        {"proto": "tcp", "client": "198.51.100.8:40002", "vip": "10.0.0.1:80",
         "backend": null, "backend_id": 9, "established": false, "idle_secs": 2},
        {"proto": "udp", "client": "198.51.100.9:5353", "vip": "10.0.0.1:53",
         "backend": "192.168.1.3", "backend_id": 2, "established": false, "idle_secs": 0}
    ]}));
    // Without conn_timeout in /v1/status the expiry is unknown: "-".
    assert_eq!(
        d.ok(&["-lnc"], ""),
        "IPVS connection entries\n\
         pro expire state       source             virtual            destination\n\
         TCP -      ESTABLISHED 198.51.100.7:40001 10.0.0.1:80        192.168.1.2:80\n\
         TCP -      SYN_RECV    198.51.100.8:40002 10.0.0.1:80        -\n\
         UDP -      UDP         198.51.100.9:5353  10.0.0.1:53        192.168.1.3:53\n"
    );
    d.fake.lock().unwrap().conn_timeout = Some(900);
    let out = d.ok(&["list", "--connections"], "");
    assert!(
        out.contains(
            "\nTCP 13:59  ESTABLISHED 198.51.100.7:40001 10.0.0.1:80        192.168.1.2:80\n"
        ),
        "{out}"
    );
    assert!(out.contains("\nUDP 15:00  UDP "), "{out}");

    let reqs = d.fake.lock().unwrap().requests.clone();
    let bodies: Vec<(String, Value)> = reqs
        .iter()
        .filter(|r| r.0 == "POST")
        .map(|r| (r.1.clone(), r.2.clone()))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (
                "/v1/zero".into(),
                json!({"service": {"address": "10.0.0.1", "port": 80, "proto": "tcp"}})
            ),
            ("/v1/zero".into(), json!({"service": null})),
            ("/v1/shutdown".into(), json!({"unload": true})),
        ]
    );
    assert!(
        reqs.iter().any(|r| r.1
            == "/v1/route?client=%5B2001%3Adb8%3A%3A7%5D%3A4000&vip=%5B2001%3Adb8%3A%3A10%5D%3A80&proto=udp"),
        "{reqs:?}"
    );
}

#[test]
fn op_json_shape() {
    let op: Op = serde_json::from_value(json!({"edit_real": {
        "svc": {"address": "10.0.0.1", "port": 80, "proto": "tcp"},
        "address": "192.168.1.2", "weight": 0, "forward": null}}))
    .unwrap();
    assert!(matches!(
        op,
        Op::EditReal {
            weight: Some(0),
            forward: None,
            ..
        }
    ));
    assert_eq!(serde_json::to_value(Op::Clear).unwrap(), json!("clear"));
    let back: Op = serde_json::from_value(serde_json::to_value(&op).unwrap()).unwrap();
    assert_eq!(back, op);
    // A StatsView missing fields (an older daemon) reads as empty.
    let v: lb_common::ops::StatsView = serde_json::from_value(json!({"table": "x"})).unwrap();
    assert_eq!(v, Default::default());
}
