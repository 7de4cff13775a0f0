//! End to end, MACs from the kernel: the demo topology (xtask/src/netns.rs) with a
//! configuration that names no MAC and no tunnel source. The real lb-daemon, run in
//! the LB's network namespace with `nsenter --net` (unpinned), must
//!
//! * resolve the three nginx real servers through ARP and balance real connections
//!   over the VIP to all of them, with the tunnel source taken from lb0's address;
//! * report a fourth real server whose address has no host (10.100.0.14) as
//!   unresolved in `GET /v1/status`, and never install it, while the others serve;
//! * follow a real server's MAC change announced by a gratuitous ARP (rs2), and one
//!   found only by resolving again after `ip neigh flush` on the LB (rs3): within a
//!   few seconds its BACKENDS entry (`backend_entries` in the status) has the new MAC
//!   and traffic reaches it again.
//!
//! Prefix `lbneigh-<pid>-` (namespaces, /tmp files, daemon instance); a drop guard
//! removes all of it even when an assertion fails. Needs root.

use tests::e2e;
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs::{self, File},
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netns::{LB_ADDR, LB_IF, Lab, SERVERS, VIP, VIP_PORT, in_netns, wait_until};
use serde_json::{Value, json};

const STALE_PREFIX: &str = "lbneigh-";
/// A real server address on the segment where no host answers.
const GHOST: &str = "10.100.0.14";
/// How long a MAC change may take to reach the BACKENDS map.
const FOLLOW_LIMIT: Duration = Duration::from_secs(8);

/// The embedded default configuration with its own instance name, every `mac` and
/// the tunnel source removed, and the ghost real server added.
fn config(instance: &str) -> String {
    let mut cfg: toml::Table =
        toml::from_str(lb_daemon::config::DEFAULT_CONFIG).expect("default.toml is TOML");
    cfg["daemon"]["instance"] = instance.into();
    assert_eq!(
        cfg["daemon"]["interfaces"].as_array(),
        Some(&vec![toml::Value::from(LB_IF)]),
        "default.toml no longer matches xtask/src/netns.rs"
    );
    cfg.get_mut("tunnel")
        .and_then(|t| t.as_table_mut())
        .expect("[tunnel]")
        .remove("source_v4");
    let svc = cfg["service"][0].as_table_mut().expect("[[service]]");
    assert_eq!(svc["address"].as_str(), Some(VIP));
    assert_eq!(svc["port"].as_integer(), Some(VIP_PORT.into()));
    let backends = svc["backends"].as_array_mut().expect("service.backends");
    let addrs: Vec<&str> = backends
        .iter()
        .map(|b| b["address"].as_str().unwrap_or_default())
        .collect();
    let expected: Vec<&str> = SERVERS.iter().map(|s| s.addr).collect();
    assert_eq!(addrs, expected, "default.toml no longer matches netns.rs");
    for b in backends.iter_mut() {
        b.as_table_mut().expect("a backend table").remove("mac");
    }
    let mut ghost = toml::Table::new();
    ghost.insert("address".into(), GHOST.into());
    ghost.insert("forward".into(), "tun".into());
    backends.push(ghost.into());
    toml::to_string(&cfg).expect("serializing the configuration")
}

/// One HTTP request to the daemon's API on `sock` with curl: (status, body).
fn api(sock: &Path, method: &str, path: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .arg(format!("http://lb{path}"))
        .output()
        .context("running curl")?;
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

/// The topology and the daemon; the drop guard kills the daemon, then the [`Lab`]
/// removes the namespaces (nginx with them) and its directory (config, state file,
/// socket, logs).
struct Rig {
    lab: Lab,
    daemon: Option<Child>,
    sock: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(c) = &mut self.daemon {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Rig {
    fn new() -> Rig {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the test needs root");
        netns::remove_stale(STALE_PREFIX).expect("removing leftovers of earlier runs");
        let daemon_bin = e2e::daemon();
        let prefix = format!("{STALE_PREFIX}{}-", std::process::id());
        let lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
        let dir = lab.dir.clone();
        let mut rig = Rig {
            lab,
            daemon: None,
            sock: dir.join("api.sock"),
        };
        let cfg = dir.join("lb.toml");
        fs::write(&cfg, config(prefix.trim_end_matches('-'))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", rig.lab.ns("lb")))
            .arg(&daemon_bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--no-pin")
            .arg("--state-file")
            .arg(dir.join("lb.state.json"))
            .arg("--socket")
            .arg(&rig.sock)
            .env("RUST_LOG", "info,lb_daemon::api=warn")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("daemon.out")).unwrap())
            .stderr(File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .expect("starting lb-daemon");
        let child = rig.daemon.insert(child);
        let sock = rig.sock.clone();
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(st) = child.try_wait()? {
                bail!("lb-daemon exited ({st}) before serving its API");
            }
            Ok(matches!(api(&sock, "GET", "/v1/status"), Ok((200, _))))
        });
        match ready {
            Ok(true) => {}
            Ok(false) => panic!("lb-daemon's API did not answer within 30 s:\n{}", rig.log()),
            Err(e) => panic!("{e:#}:\n{}", rig.log()),
        }
        rig
    }

    fn log(&self) -> String {
        fs::read_to_string(self.lab.dir.join("daemon.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let (code, body) = api(&self.sock, "GET", "/v1/status")
            .unwrap_or_else(|e| panic!("GET /v1/status: {e:#}\n{}", self.log()));
        assert_eq!(code, 200, "GET /v1/status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status: {e}: {body}"))
    }

    /// Real server address → MAC of its BACKENDS entry, from the status.
    fn entries(&self) -> BTreeMap<String, String> {
        entries(&self.status())
    }

    /// `n` new connections through the VIP: the answering servers' tally. Every
    /// request must succeed.
    fn requests(&self, n: u32) -> BTreeMap<String, u32> {
        let url = format!("http://{VIP}:{VIP_PORT}/");
        let mut tally = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..n {
            let (status, body) = self.lab.request(&url).expect("running curl");
            if status.success() && !body.is_empty() {
                *tally.entry(body).or_default() += 1;
            } else {
                failures.push(format!("request {i}: {status} {body:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "failed requests through the VIP: {failures:#?}\nstatus: {:#}\n{}",
            self.status(),
            self.log()
        );
        tally
    }

    /// Gives real server `name` a new MAC (`ip link set dev eth0 address`).
    fn change_mac(&self, name: &str, mac: &str) {
        netns::cmd(Command::new("ip").args([
            "-n",
            &self.lab.ns(name),
            "link",
            "set",
            "dev",
            "eth0",
            "address",
            mac,
        ]))
        .expect("changing a real server's MAC");
    }

    /// Waits until the BACKENDS entry of `addr` has `mac`.
    fn wait_for_entry(&self, addr: &str, mac: &str, what: &str) {
        let mut last = BTreeMap::new();
        let ok = wait_until(FOLLOW_LIMIT, || {
            last = self.entries();
            Ok(last.get(addr).map(String::as_str) == Some(mac))
        })
        .unwrap();
        assert!(
            ok,
            "{what}: the BACKENDS entry of {addr} did not become {mac} within {FOLLOW_LIMIT:?}: {last:?}\nstatus: {:#}\n{}",
            self.status(),
            self.log()
        );
    }
}

fn entries(status: &Value) -> BTreeMap<String, String> {
    status["backend_entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no backend_entries in {status}"))
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["mac"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("hex byte"))
        .collect();
    v.try_into().expect("six bytes")
}

/// A gratuitous ARP (an unsolicited request, sender = target = `ip`, as `arping -U`
/// sends) from `mac` out of `ifname` of the calling thread's namespace; sent twice.
fn gratuitous_arp(ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let mut frame = Vec::with_capacity(42);
    frame.extend([0xff; 6]);
    frame.extend(mac);
    frame.extend(ETH_P_ARP.to_be_bytes());
    frame.extend([0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend(mac);
    frame.extend(ip.octets());
    frame.extend([0xff; 6]);
    frame.extend(ip.octets());
    let name = CString::new(ifname)?;
    // SAFETY: if_nametoindex on a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context("if_nametoindex");
    }
    // SAFETY: a packet socket, owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("packet socket");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..2 {
        // SAFETY: sendto with a live buffer and a sockaddr_ll of the right size.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a gratuitous ARP");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn daemon_resolves_and_follows_real_server_macs() {
    let rig = Rig::new();
    let names: BTreeSet<&str> = SERVERS.iter().map(|s| s.name).collect();

    // Resolved through ARP at startup: the servers' own MACs; the ghost left out.
    let status = rig.status();
    let expected: BTreeMap<String, String> = SERVERS
        .iter()
        .map(|s| (s.addr.to_owned(), s.mac.to_owned()))
        .collect();
    assert_eq!(entries(&status), expected, "status: {status:#}");
    assert_eq!(status["unresolved"], json!([GHOST]), "status: {status:#}");
    let reasons = status["unresolved_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "status: {status:#}");
    assert_eq!(reasons[0]["address"], json!(GHOST));
    assert!(
        reasons[0]["reason"].as_str().unwrap().contains("ARP"),
        "status: {status:#}"
    );
    assert_eq!(
        status["tunnel_source_v4"],
        json!(LB_ADDR),
        "the tunnel source defaults to lb0's address: {status:#}"
    );
    let links = status["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "status: {status:#}");
    assert_eq!(links[0]["name"], json!(LB_IF));
    assert!(
        links[0]["mac"].as_str().is_some_and(|m| m.len() == 17),
        "status: {status:#}"
    );
    assert!(
        rig.log().contains("real server left out"),
        "the unresolved server is logged as a warning:\n{}",
        rig.log()
    );

    // Traffic through the VIP reaches all three servers (none goes to the ghost).
    let tally = rig.requests(60);
    let responders: BTreeSet<&str> = tally.keys().map(String::as_str).collect();
    assert_eq!(responders, names, "responders {tally:?}");

    // rs2 changes its MAC and announces it with a gratuitous ARP.
    let rs2 = &SERVERS[1];
    let new2 = "02:00:00:64:01:0c";
    rig.change_mac(rs2.name, new2);
    in_netns(&rig.lab.ns(rs2.name), || {
        gratuitous_arp("eth0", parse_mac(new2), rs2.addr.parse()?)
    })
    .expect("gratuitous ARP from rs2");
    rig.wait_for_entry(rs2.addr, new2, "after rs2's gratuitous ARP");

    // rs3 changes its MAC silently; the LB's neighbour entry is flushed and the
    // daemon has the kernel resolve it again.
    let rs3 = &SERVERS[2];
    let new3 = "02:00:00:64:01:0d";
    rig.change_mac(rs3.name, new3);
    netns::cmd(Command::new("ip").args([
        "-n",
        &rig.lab.ns("lb"),
        "neigh",
        "flush",
        "to",
        rs3.addr,
        "dev",
        LB_IF,
    ]))
    .expect("ip neigh flush");
    rig.wait_for_entry(rs3.addr, new3, "after flushing rs3's entry");

    // Only the two entries changed; the ghost is still out; all three still serve.
    let status = rig.status();
    let mut expected = expected;
    expected.insert(rs2.addr.into(), new2.into());
    expected.insert(rs3.addr.into(), new3.into());
    assert_eq!(entries(&status), expected, "status: {status:#}");
    assert_eq!(status["unresolved"], json!([GHOST]), "status: {status:#}");
    let tally = rig.requests(60);
    let responders: BTreeSet<&str> = tally.keys().map(String::as_str).collect();
    assert_eq!(
        responders, names,
        "responders after the MAC changes {tally:?}"
    );

    // A clean stop (the log is shown with --nocapture).
    let mut rig = rig;
    println!("{}", rig.log());
    let mut child = rig.daemon.take().unwrap();
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = wait_until(Duration::from_secs(10), || Ok(child.try_wait()?.is_some()));
    if !matches!(stopped, Ok(true)) {
        let _ = child.kill();
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "lb-daemon exited with {st}:\n{}", rig.log());
    rig.lab.cleanup().expect("cleaning up");
    assert!(netns::namespaces(&rig.lab.prefix).unwrap().is_empty());
}
