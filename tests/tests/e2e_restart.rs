//! End to end, restarts and refused changes: the real lb-daemon binary in the demo
//! topology (xtask/src/netns.rs), run pinned in the LB's network namespace with
//! `nsenter --net` so that it keeps the host's bpffs (`ip netns exec` would give it a
//! private /sys whose pins die with it).
//!
//! * `sigkill_during_transfer_is_hitless`: a rate-limited 20 MiB download through
//!   the VIP survives a SIGKILL of the daemon and a restart that adopts the pinned
//!   maps and link; the state and the connection table come back unchanged.
//! * `bad_changes_leave_state_untouched`: invalid, unknown-field, semantically wrong
//!   and stale `PUT /v1/state` bodies and malformed configuration files are refused
//!   with an error naming the reason, and change nothing.
//!
//! Each test has its own prefix `lbrst-<pid>-<n>-` (namespaces, /tmp files, daemon
//! instance = pin directory /sys/fs/bpf/lbrst-<pid>-<n>); a drop guard removes all of
//! it even when an assertion fails. Needs root.

use tests::e2e;
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netns::{CLIENT_ADDR, LB_IF, Lab, SERVERS, VIP, VIP_PORT, wait_until};
use serde_json::{Value, json};

const STALE_PREFIX: &str = "lbrst-";
/// The file downloaded through the VIP while the daemon is killed and restarted.
const BIG_FILE: &str = "big.bin";
const BIG_LEN: u64 = 20 << 20;
/// 3 MiB/s, both curl's `--limit-rate` and nginx's `limit_rate`: 20 MiB take about
/// 6.7 s. curl alone lets bursts through (it finished in under 4 s on a loaded
/// machine); nginx sends at most rate × (elapsed + 1 s), so at least 5.7 s.
const RATE_MIB: u32 = 3;

/// The embedded default configuration (the topology netns.rs builds) with its own
/// instance name; `edit` may change it further.
fn config(instance: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut cfg: toml::Table =
        toml::from_str(lb_daemon::config::DEFAULT_CONFIG).expect("default.toml is TOML");
    cfg["daemon"]["instance"] = instance.into();
    assert_eq!(
        cfg["daemon"]["interfaces"].as_array(),
        Some(&vec![toml::Value::from(LB_IF)]),
        "default.toml no longer matches xtask/src/netns.rs"
    );
    let svc = &cfg["service"][0];
    assert_eq!(svc["address"].as_str(), Some(VIP));
    assert_eq!(svc["port"].as_integer(), Some(VIP_PORT.into()));
    edit(&mut cfg);
    toml::to_string(&cfg).expect("serializing the configuration")
}

/// Sets `key` in the TOML table `table` (indexing a missing key panics).
fn insert(table: &mut toml::Value, key: &str, value: impl Into<toml::Value>) {
    table
        .as_table_mut()
        .expect("a TOML table")
        .insert(key.into(), value.into());
}

/// One HTTP request to the daemon's API on `sock` with curl: (status, body).
fn api(sock: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if body.is_some() {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    c.arg(format!("http://lb{path}"));
    let mut child = c.spawn().context("spawning curl")?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(b) = body {
            stdin.write_all(b)?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "curl {method} {path} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

fn sha256(path: &Path) -> String {
    let out = netns::cmd(Command::new("sha256sum").arg(path)).expect("sha256sum");
    out.split_whitespace().next().expect("a digest").to_owned()
}

/// (client, vip, backend) of every entry of a `GET /v1/conns` answer.
fn conn_triples(conns: &Value) -> BTreeSet<(String, String, String)> {
    conns["conns"]
        .as_array()
        .expect("conns: an array")
        .iter()
        .map(|c| {
            let s = |k: &str| match &c[k] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            (s("client"), s("vip"), s("backend"))
        })
        .collect()
}

/// Runs `c` with stdout and stderr to files in `dir`; kills it after `limit`.
/// Returns its exit status (None if it had to be killed) and its stderr.
fn run_limited(
    c: &mut Command,
    dir: &Path,
    name: &str,
    limit: Duration,
) -> (Option<ExitStatus>, String) {
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(File::create(dir.join(format!("{name}.stdout"))).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {c:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(20));
    };
    (status, fs::read_to_string(&err_path).unwrap_or_default())
}

/// The topology plus a daemon managed here, and the drop guard of both: the daemon
/// and other processes are killed, the pin directory removed, then the [`Lab`]
/// removes the namespaces (nginx with them) and its directory (config, state file,
/// socket, logs, downloads).
struct Rig {
    lab: Lab,
    daemon: Option<Child>,
    /// Other processes to kill on drop (the download).
    others: Vec<Child>,
    pin_dir: PathBuf,
    daemon_bin: PathBuf,
    cfg: PathBuf,
    state_file: PathBuf,
    sock: PathBuf,
    /// Daemons started so far (names their logs).
    starts: u32,
}

impl Rig {
    fn new(test: u32) -> Rig {
        netns::prepare_pinning_test(STALE_PREFIX);
        let daemon_bin = e2e::daemon();
        let prefix = format!("{STALE_PREFIX}{}-{test}-", std::process::id());
        let lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
        let dir = lab.dir.clone();
        // Built first so that a failure below still tears the topology down.
        let rig = Rig {
            lab,
            daemon: None,
            others: Vec::new(),
            pin_dir: netns::pin_dir(&prefix),
            daemon_bin,
            cfg: dir.join("lb.toml"),
            state_file: dir.join("state").join("lb.state.json"),
            sock: dir.join("api.sock"),
            starts: 0,
        };
        assert!(
            !rig.pin_dir.exists(),
            "{} exists before the test",
            rig.pin_dir.display()
        );
        fs::write(&rig.cfg, config(netns::instance(&prefix), |_| {})).unwrap();
        rig
    }

    fn lb_ns(&self) -> PathBuf {
        Path::new("/run/netns").join(self.lab.ns("lb"))
    }

    /// The daemon in the LB's network namespace only (host mounts, so host bpffs),
    /// with `config` and this rig's state file and socket.
    fn daemon_command(&self, config: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.lb_ns().display()))
            .arg(&self.daemon_bin)
            .arg("--config")
            .arg(config)
            .arg("--state-file")
            .arg(&self.state_file)
            .arg("--socket")
            .arg(&self.sock);
        c
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.lab.dir.join(format!("daemon-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Starts a daemon and waits until its API answers (it attaches before it
    /// listens); returns `GET /v1/status`.
    fn start_daemon(&mut self) -> Value {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.starts += 1;
        let name = format!("daemon-{}", self.starts);
        let child = self
            .daemon_command(&self.cfg)
            .stdin(Stdio::null())
            .stdout(File::create(self.lab.dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(self.lab.dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("starting lb-daemon");
        let child = self.daemon.insert(child);
        let sock = &self.sock;
        let mut status = String::new();
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(st) = child.try_wait()? {
                bail!("lb-daemon exited ({st}) before serving its API");
            }
            Ok(match api(sock, "GET", "/v1/status", None) {
                Ok((200, body)) => {
                    status = body;
                    true
                }
                _ => false,
            })
        });
        match ready {
            Ok(true) => {}
            Ok(false) => panic!(
                "lb-daemon's API did not answer within 30 s:\n{}",
                self.daemon_log()
            ),
            Err(e) => panic!("{e:#}:\n{}", self.daemon_log()),
        }
        serde_json::from_str(&status).expect("status is JSON")
    }

    /// A request that must answer 200 with JSON.
    fn get(&self, path: &str) -> Value {
        let (code, body) = api(&self.sock, "GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}\n{}", self.daemon_log()));
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn put_state(&self, body: &[u8]) -> (u16, String) {
        api(&self.sock, "PUT", "/v1/state", Some(body))
            .unwrap_or_else(|e| panic!("PUT /v1/state: {e:#}\n{}", self.daemon_log()))
    }

    /// Whether lb0 has an XDP program (native or generic) attached.
    fn xdp_on_lb(&self) -> bool {
        let link =
            netns::cmd(Command::new("ip").args(["-n", &self.lab.ns("lb"), "link", "show", LB_IF]))
                .expect("ip link show lb0");
        link.contains("prog/xdp")
    }

    /// One request from the client through the VIP: the answering server's name.
    fn request_vip(&self) -> String {
        let (status, body) = self
            .lab
            .request(&format!("http://{VIP}:{VIP_PORT}/"))
            .expect("running curl");
        assert!(
            status.success() && SERVERS.iter().any(|s| s.name == body),
            "request through the VIP: {status} {body:?}"
        );
        body
    }

    /// Makes every nginx also serve `<www>/<name>` at `mib_per_s` per connection (a
    /// location added to its configuration, reloaded with SIGHUP); waits until each
    /// serves it directly.
    fn serve_file(&self, www: &Path, name: &str, mib_per_s: u32) {
        let anchor = "        location / {";
        for s in &SERVERS {
            let d = self.lab.dir.join(s.name);
            let conf_path = d.join("nginx.conf");
            let conf = fs::read_to_string(&conf_path).unwrap();
            assert!(conf.contains(anchor), "nginx.conf of {}:\n{conf}", s.name);
            let location = format!(
                "        location = /{name} {{\n            root {};\n            \
                 limit_rate {mib_per_s}m;\n        }}\n",
                www.display()
            );
            fs::write(
                &conf_path,
                conf.replacen(anchor, &format!("{location}{anchor}"), 1),
            )
            .unwrap();
            let pid: libc::pid_t = fs::read_to_string(d.join("nginx.pid"))
                .unwrap()
                .trim()
                .parse()
                .expect("nginx.pid");
            // SAFETY: kill(2) on the nginx master this lab started.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGHUP) },
                0,
                "reloading nginx"
            );
        }
        for s in &SERVERS {
            // The static file honours a range (206); `return 200` does not.
            let url = format!("http://{}:{VIP_PORT}/{name}", s.addr);
            let ok = wait_until(Duration::from_secs(10), || {
                let out = self
                    .lab
                    .client("curl")
                    .args(["-s", "-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}"])
                    .arg(&url)
                    .output()?;
                Ok(out.stdout == b"206")
            })
            .unwrap();
            assert!(
                ok,
                "nginx of {} does not serve /{name} after a reload: {}",
                s.name,
                fs::read_to_string(self.lab.dir.join(s.name).join("error.log")).unwrap_or_default()
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in self.daemon.iter_mut().chain(self.others.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.pin_dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!("removing {}: {e}", self.pin_dir.display());
        }
        // Then `lab` drops: nginx, namespaces and the directory go.
    }
}

#[test]
fn sigkill_during_transfer_is_hitless() {
    let mut rig = Rig::new(1);

    // The file every real server serves, readable by nginx's unprivileged workers.
    let www = rig.lab.dir.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::set_permissions(&rig.lab.dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&www, fs::Permissions::from_mode(0o755)).unwrap();
    let big = www.join(BIG_FILE);
    let copied = std::io::copy(
        &mut File::open("/dev/urandom").unwrap().take(BIG_LEN),
        &mut File::create(&big).unwrap(),
    )
    .unwrap();
    assert_eq!(copied, BIG_LEN);
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).unwrap();
    let digest = sha256(&big);
    rig.serve_file(&www, BIG_FILE, RATE_MIB);

    let status = rig.start_daemon();
    assert_eq!(status["adopted"], json!(false), "first start: {status}");
    assert_eq!(
        status["interfaces"],
        json!([{"name": LB_IF, "mode": "native"}]),
        "first start: {status}"
    );
    assert!(rig.xdp_on_lb());
    // A few finished connections in the table besides the download.
    for _ in 0..5 {
        rig.request_vip();
    }

    let download = rig.lab.dir.join("download.bin");
    let url = format!("http://{VIP}:{VIP_PORT}/{BIG_FILE}");
    let child = rig
        .lab
        .client("curl")
        .args(["-sS", "--max-time", "40", "--limit-rate"])
        .arg(format!("{RATE_MIB}M"))
        .arg("-o")
        .arg(&download)
        .args(["-w", "%{http_code} %{size_download} %{local_port}", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the download");
    let t0 = Instant::now();
    rig.others.push(child);

    sleep(Duration::from_millis(1500));
    let state_before = rig.get("/v1/state");
    let conns_before = conn_triples(&rig.get("/v1/conns"));
    let vip = format!("{VIP}:{VIP_PORT}");
    let ours: Vec<_> = conns_before
        .iter()
        .filter(|(c, v, _)| c.starts_with(&format!("{CLIENT_ADDR}:")) && *v == vip)
        .collect();
    assert!(
        ours.len() >= 6,
        "5 requests and the download should be in the table: {conns_before:#?}"
    );
    assert!(
        conns_before.iter().all(|(_, _, b)| b != "null"),
        "every entry should resolve to a backend: {conns_before:#?}"
    );

    sleep(Duration::from_millis(2000).saturating_sub(t0.elapsed()));
    assert!(
        rig.others[0].try_wait().unwrap().is_none(),
        "the download finished within 2 s: raise BIG_LEN or lower RATE_MIB"
    );
    let mut old = rig.daemon.take().expect("the daemon");
    old.kill().expect("SIGKILL to the daemon");
    let st = old.wait().unwrap();
    let killed_at = t0.elapsed();
    assert!(!st.success(), "the daemon was killed: {st}");
    assert!(
        rig.xdp_on_lb(),
        "xdp_lb should stay attached to {LB_IF} (pinned link) after SIGKILL"
    );
    assert!(rig.pin_dir.join(format!("link_{LB_IF}")).exists());

    sleep(Duration::from_secs(1));
    let status = rig.start_daemon();
    let restarted_at = t0.elapsed();
    assert_eq!(
        status["adopted"],
        json!(true),
        "the restarted daemon should adopt the pinned maps: {status}\n{}",
        rig.daemon_log()
    );
    assert_eq!(
        status["interfaces"],
        json!([{"name": LB_IF, "mode": "adopted"}]),
        "the pinned link should be taken over: {status}"
    );
    assert!(
        rig.others[0].try_wait().unwrap().is_none(),
        "the download finished before the new daemon was up ({restarted_at:?}): \
         raise BIG_LEN or lower RATE_MIB"
    );
    let state_after = rig.get("/v1/state");
    assert_eq!(
        state_after, state_before,
        "the adopted state differs from the one before the kill"
    );
    let conns_after = conn_triples(&rig.get("/v1/conns"));
    let lost: Vec<_> = conns_before.difference(&conns_after).collect();
    assert!(
        lost.is_empty(),
        "connection entries lost or moved across the restart: {lost:#?}\nafter: {conns_after:#?}"
    );

    // The download completes, intact.
    let dl = &mut rig.others[0];
    let finished = wait_until(Duration::from_secs(30), || Ok(dl.try_wait()?.is_some())).unwrap();
    assert!(
        finished,
        "the download did not finish within 30 s of the restart"
    );
    let took = t0.elapsed();
    let mut out = String::new();
    let mut err = String::new();
    dl.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    dl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = dl.wait().unwrap();
    assert!(st.success(), "download: {st} {out} {err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 3, "curl -w: {out:?}");
    assert_eq!(words[0], "200", "download: {out} {err}");
    assert_eq!(words[1], BIG_LEN.to_string(), "bytes received: {out} {err}");
    assert_eq!(fs::metadata(&download).unwrap().len(), BIG_LEN);
    assert_eq!(sha256(&download), digest, "the downloaded file is corrupt");
    let port = format!("{CLIENT_ADDR}:{}", words[2]);
    assert!(
        conns_before.iter().any(|(c, v, _)| *c == port && *v == vip),
        "the download's connection {port} was not in the table before the kill: {conns_before:#?}"
    );
    eprintln!(
        "download: killed at {killed_at:?}, new daemon up at {restarted_at:?}, done at {took:?}"
    );

    // Shutdown with unload: detached, pins gone.
    let (code, body) = api(
        &rig.sock,
        "POST",
        "/v1/shutdown",
        Some(br#"{"unload":true}"#),
    )
    .unwrap();
    assert_eq!(code, 200, "shutdown: {body}");
    let d = rig.daemon.as_mut().unwrap();
    let exited = wait_until(Duration::from_secs(10), || Ok(d.try_wait()?.is_some())).unwrap();
    assert!(exited, "the daemon did not exit after /v1/shutdown");
    let st = rig.daemon.take().unwrap().wait().unwrap();
    assert!(st.success(), "daemon exit: {st}\n{}", rig.daemon_log());
    assert!(
        !rig.pin_dir.exists(),
        "{} left after an unloading shutdown",
        rig.pin_dir.display()
    );
    let detached = wait_until(Duration::from_secs(3), || Ok(!rig.xdp_on_lb())).unwrap();
    assert!(detached, "{LB_IF} still has an XDP program after unloading");
}

#[test]
fn bad_changes_leave_state_untouched() {
    let mut rig = Rig::new(2);
    let status = rig.start_daemon();
    assert_eq!(status["adopted"], json!(false), "{status}");

    // One valid change first: the generation moves past 0 so that a stale one exists.
    let initial = rig.get("/v1/state");
    let g0 = initial["generation"].as_u64().expect("generation");
    let (code, body) = rig.put_state(
        json!({"generation": g0, "state": initial["state"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "a valid PUT: {body}");

    let (code, before_text) = api(&rig.sock, "GET", "/v1/state", None).unwrap();
    assert_eq!(code, 200);
    let before: Value = serde_json::from_str(&before_text).unwrap();
    let g = before["generation"].as_u64().unwrap();
    assert_eq!(g, g0 + 1, "{before}");
    let file_before = fs::read(&rig.state_file).expect("the state file");

    let state = &before["state"];
    let body_at = |generation: u64, edit: &dyn Fn(&mut Value)| {
        let mut s = state.clone();
        edit(&mut s);
        json!({"generation": generation, "state": s}).to_string()
    };
    let with = |edit: &dyn Fn(&mut Value)| body_at(g, edit);
    // A valid change (rs3 removed), made against a generation that is not current.
    let drop_last = |s: &mut Value| {
        s["service"][0]["backends"].as_array_mut().unwrap().pop();
    };
    let truncated = with(&|_| {});
    let truncated = truncated[..truncated.len() / 2].to_owned();
    let cases: Vec<(&str, String, u16, &[&str])> = vec![
        ("truncated JSON", truncated, 400, &["JSON", "EOF"]),
        (
            "not JSON",
            "generation = 1".into(),
            400,
            &["JSON", "expected"],
        ),
        (
            "unknown field in a service",
            with(&|s| s["service"][0]["colour"] = json!("blue")),
            400,
            &["unknown field", "colour"],
        ),
        (
            "unknown field in a real server",
            with(&|s| s["service"][0]["backends"][0]["colour"] = json!("blue")),
            400,
            &["unknown field", "colour"],
        ),
        (
            "unknown top-level field",
            {
                let mut v: Value = serde_json::from_str(&with(&|_| {})).unwrap();
                v["dry_run"] = json!(true);
                v.to_string()
            },
            400,
            &["unknown field", "dry_run"],
        ),
        (
            "weight 70000",
            with(&|s| s["service"][0]["backends"][1]["weight"] = json!(70000)),
            400,
            &["weight", "70000", "65535"],
        ),
        (
            "duplicate service",
            with(&|s| {
                let svc = s["service"][0].clone();
                s["service"].as_array_mut().unwrap().push(svc);
            }),
            400,
            &["duplicate service"],
        ),
        (
            "real server of another address family",
            with(&|s| s["service"][0]["backends"][2]["address"] = json!("fd00::13")),
            400,
            &["family", "fd00::13"],
        ),
        (
            "mtu 100",
            with(&|s| s["tunnel"]["mtu"] = json!(100)),
            400,
            &["mtu", "100"],
        ),
        (
            "stale generation",
            body_at(g - 1, &drop_last),
            409,
            &["generation"],
        ),
        (
            "future generation",
            body_at(g + 1, &drop_last),
            409,
            &["generation"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, want, needles) in &cases {
        let (code, answer) = rig.put_state(body.as_bytes());
        let error = serde_json::from_str::<Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        match error {
            Some(e) if code == *want => {
                let missing: Vec<_> = needles.iter().filter(|n| !e.contains(**n)).collect();
                if !missing.is_empty() {
                    failures.push(format!("{what}: error {e:?} does not mention {missing:?}"));
                }
                eprintln!("{what}: {code} {e}");
            }
            _ => failures.push(format!(
                "{what}: expected {want} with an error, got {code} {answer}"
            )),
        }
        let (_, now) = api(&rig.sock, "GET", "/v1/state", None).unwrap();
        if now != before_text {
            failures.push(format!("{what}: the state changed:\n{now}"));
        }
    }
    assert!(failures.is_empty(), "refused changes: {failures:#?}");
    assert_eq!(
        fs::read(&rig.state_file).unwrap(),
        file_before,
        "the state file changed"
    );
    // The data plane still forwards.
    rig.request_vip();

    // A second daemon with a malformed configuration (and the running one's state
    // file and socket) must refuse to start and touch nothing.
    let inst = netns::instance(&rig.lab.prefix).to_owned();
    let bad_configs: Vec<(&str, String, &[&str])> = vec![
        (
            "bad TOML",
            config(&inst, |_| {}).replacen("[daemon]", "[daemon", 1),
            &["invalid configuration", "TOML parse error", "line"],
        ),
        (
            "unknown key in [daemon]",
            config(&inst, |c| insert(&mut c["daemon"], "frobnicate", true)),
            &["invalid configuration", "unknown field", "frobnicate"],
        ),
        (
            "unknown key in a service",
            config(&inst, |c| insert(&mut c["service"][0], "frobnicate", true)),
            &["invalid configuration", "frobnicate"],
        ),
        (
            "unknown top-level table",
            config(&inst, |c| {
                c.insert("frobnicate".into(), toml::Table::new().into());
            }),
            &["invalid configuration", "frobnicate"],
        ),
        (
            "weight 70000 in the configuration",
            config(&inst, |c| {
                insert(&mut c["service"][0]["backends"][0], "weight", 70000)
            }),
            &["invalid configuration", "weight"],
        ),
    ];
    for (i, (what, text, needles)) in bad_configs.iter().enumerate() {
        let path = rig.lab.dir.join(format!("bad-{i}.toml"));
        fs::write(&path, text).unwrap();
        let (status, stderr) = run_limited(
            &mut rig.daemon_command(&path),
            &rig.lab.dir,
            &format!("bad-{i}"),
            Duration::from_secs(15),
        );
        match status {
            None => failures.push(format!(
                "{what}: the daemon started (killed after 15 s): {stderr}"
            )),
            Some(st) if st.success() => failures.push(format!("{what}: exited 0: {stderr}")),
            Some(_) => {
                let missing: Vec<_> = needles.iter().filter(|n| !stderr.contains(**n)).collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{what}: error {stderr:?} does not mention {missing:?}"
                    ));
                }
                eprintln!("{what}: {status:?}\n{}", stderr.trim());
            }
        }
        if fs::read(&rig.state_file).unwrap() != file_before {
            failures.push(format!("{what}: the state file changed"));
        }
    }
    assert!(
        failures.is_empty(),
        "malformed configurations: {failures:#?}"
    );
    let (code, now) = api(&rig.sock, "GET", "/v1/state", None).expect("the running daemon's API");
    assert_eq!(
        (code, now),
        (200, before_text),
        "the running daemon's state"
    );
    assert!(rig.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    rig.request_vip();
}
