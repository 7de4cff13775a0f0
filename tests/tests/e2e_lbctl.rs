//! End to end through `lbctl` only: the real lb-daemon in the demo topology
//! (xtask/src/netns.rs), run pinned in the LB's network namespace with `nsenter --net`
//! (so its pins are in the host's bpffs, under /sys/fs/bpf/<instance>/), driven by the
//! real `lbctl` binary over the daemon's unix socket (`LBCTL_SOCKET`). After each change
//! the test reads the daemon's pinned maps itself (VIPS, BACKENDS, MAGLEV, CONNS and the
//! counters) and sends real connections with curl through the VIP to the lab's nginx
//! servers, which answer with their name.
//!
//! * `changes_reach_the_maps_and_the_traffic`: services and real servers added, edited,
//!   drained and deleted in both forms (`service|backend …` and ipvsadm's
//!   `-A/-E/-D/-a/-e/-d`); Maglev slot shares follow the weights exactly (rounded
//!   ideal share, 0 for a drained server) and so do new connections (3:1 over 200);
//!   a drained server keeps its established flow; `-L -n`, `--stats`, `--rate` and `-c`
//!   agree with the maps; `-S -n` → `-C` → `-R` brings back the same table, maps and
//!   traffic.
//! * `ipvsadm_import_and_refusals`: a hand-written `ipvsadm -S -n` of an LVS setup (TCP
//!   and UDP, DR and tunnel, weights, `-p 300`, wlc/rr/wrr/sh) imports with one warning
//!   per wlc service and saves back as it came in (wlc → mh); `--strict` refuses it;
//!   invalid command lines exit 2 (usage) or 1 (refused) with a message naming the
//!   problem, and leave the daemon's state file byte-identical.
//!
//! Each test has its own prefix `lbctl-<pid>-<n>-` (namespaces, /tmp files, daemon
//! instance = pin directory); the test ends with `lbctl shutdown --unload`, and a drop
//! guard removes the pins, the daemon and the topology even when an assertion fails.
//! Needs root.

use tests::e2e;
#[allow(dead_code)]
#[path = "../../xtask/src/netns.rs"]
mod netns;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use lb_common::{
    BACKEND_F_VALID, Backend, Conn, Counters, FlowKey, VIP_F_ADDR_MARKER, VipKey, VipMeta,
    map_names as m,
    state::{Forward, Proto, Scheduler, ServiceId},
};
use lb_daemon::persist::Saved;
use netns::{CLIENT_ADDR, LB_IF, Lab, SERVERS, VIP, VIP_PORT, in_netns, wait_until};

const STALE_PREFIX: &str = "lbctl-";
/// How long a change may take to show in the maps (MAC resolution happens before the
/// PUT returns; this is slack for a loaded machine).
const SETTLE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Host preparation and leftovers (as in e2e_restart.rs)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// What the test expects: its own model of the table
// ---------------------------------------------------------------------------

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("an IPv4 address"))
}

#[derive(Clone, Debug)]
struct Real {
    addr: IpAddr,
    fwd: Forward,
    weight: u32,
}

#[derive(Clone, Debug)]
struct Svc {
    id: ServiceId,
    sched: Scheduler,
    persist: u32,
    reals: Vec<Real>,
}

fn sid(proto: Proto, addr: &str, port: u16) -> ServiceId {
    ServiceId {
        address: v4(addr),
        port,
        proto,
    }
}

fn tcp(addr: &str, port: u16) -> ServiceId {
    sid(Proto::Tcp, addr, port)
}

fn udp(addr: &str, port: u16) -> ServiceId {
    sid(Proto::Udp, addr, port)
}

fn sched_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Mh => "mh",
        Scheduler::Sh => "sh",
        Scheduler::Rr => "rr",
        Scheduler::Wrr => "wrr",
    }
}

fn proto_flag(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "-t",
        Proto::Udp => "-u",
    }
}

fn proto_upper(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

fn addr_port(a: IpAddr, port: u16) -> String {
    format!("{a}:{port}")
}

/// ipvsadm's listing order: protocol number, address, port.
fn ipvs_order(a: &ServiceId, b: &ServiceId) -> std::cmp::Ordering {
    (a.proto.number(), a.address, a.port).cmp(&(b.proto.number(), b.address, b.port))
}

/// The table as the test has configured it, in configuration order.
#[derive(Clone, Debug, Default)]
struct Model {
    services: Vec<Svc>,
}

impl Model {
    fn add_svc(&mut self, id: ServiceId, sched: Scheduler, persist: u32) {
        assert!(self.services.iter().all(|s| s.id != id));
        self.services.push(Svc {
            id,
            sched,
            persist,
            reals: Vec::new(),
        });
    }

    fn svc(&mut self, id: ServiceId) -> &mut Svc {
        self.services
            .iter_mut()
            .find(|s| s.id == id)
            .expect("service in the model")
    }

    fn del_svc(&mut self, id: ServiceId) {
        self.services.retain(|s| s.id != id);
    }

    fn add_real(&mut self, id: ServiceId, addr: &str, fwd: Forward, weight: u32) {
        self.svc(id).reals.push(Real {
            addr: v4(addr),
            fwd,
            weight,
        });
    }

    fn real(&mut self, id: ServiceId, addr: &str) -> &mut Real {
        self.svc(id)
            .reals
            .iter_mut()
            .find(|r| r.addr == v4(addr))
            .expect("real server in the model")
    }

    fn del_real(&mut self, id: ServiceId, addr: &str) {
        self.svc(id).reals.retain(|r| r.addr != v4(addr));
    }

    fn addresses(&self) -> BTreeSet<IpAddr> {
        self.services.iter().map(|s| s.id.address).collect()
    }

    /// `ipvsadm -S -n` of this table: configuration order, as ipvsadm-save prints it.
    fn save_text(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            let svc = format!(
                "{} {}",
                proto_flag(s.id.proto),
                addr_port(s.id.address, s.id.port)
            );
            out.push_str(&format!("-A {svc} -s {}", sched_name(s.sched)));
            if s.persist > 0 {
                out.push_str(&format!(" -p {}", s.persist));
            }
            out.push('\n');
            for r in &s.reals {
                let fwd = match r.fwd {
                    Forward::Dr => "-g",
                    Forward::Tun => "-i",
                    Forward::Gue => "-i --gue",
                };
                out.push_str(&format!(
                    "-a {svc} -r {} {fwd} -w {}\n",
                    addr_port(r.addr, s.id.port),
                    r.weight
                ));
            }
        }
        out
    }

    /// The services and their real servers in ipvsadm's listing order.
    fn sorted(&self) -> Vec<(Svc, Vec<Real>)> {
        let mut v = self.services.clone();
        v.sort_by(|a, b| ipvs_order(&a.id, &b.id));
        v.into_iter()
            .map(|s| {
                let mut r = s.reals.clone();
                r.sort_by_key(|r| r.addr);
                (s, r)
            })
            .collect()
    }

    /// `ipvsadm -L -n` with the connection counts of `dp`'s connection table.
    fn list_text(&self, dp: &Dp, size: u64) -> String {
        let mut out = format!("IP Virtual Server version 1.2.1 (size={size})\n");
        out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
        for (s, reals) in self.sorted() {
            out.push_str(&format!(
                "{}  {} {}",
                proto_upper(s.id.proto),
                addr_port(s.id.address, s.id.port),
                sched_name(s.sched)
            ));
            if s.persist > 0 {
                out.push_str(&format!(" persistent {}", s.persist));
            }
            out.push('\n');
            for r in reals {
                let (active, inactive) = dp.conn_counts(&s.id, r.addr);
                let fwd = match r.fwd {
                    Forward::Dr => "Route",
                    Forward::Tun | Forward::Gue => "Tunnel",
                };
                // ipvsadm: "  -> %-28s %-7s %-6d %-10u %-10u\n"
                out.push_str(&format!(
                    "  -> {:<28} {fwd:<7} {:<6} {active:<10} {inactive:<10}\n",
                    addr_port(r.addr, s.id.port),
                    r.weight
                ));
            }
        }
        out
    }

    /// `ipvsadm -L -n --stats --exact` from `dp`'s counters (Out* are 0: DR and tunnel
    /// replies bypass the load balancer).
    fn stats_text(&self, dp: &Dp, size: u64) -> String {
        let mut out = format!("IP Virtual Server version 1.2.1 (size={size})\n");
        out.push_str(&counters_header([
            "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes",
        ]));
        out.push_str("  -> RemoteAddress:Port\n");
        for (s, reals) in self.sorted() {
            let c = dp.vip_counters(&s.id);
            let name = format!(
                "{}  {}",
                proto_upper(s.id.proto),
                addr_port(s.id.address, s.id.port)
            );
            out.push_str(&format!(
                "{name:<33}{:>9}{:>9}{:>9}{:>9}{:>9}\n",
                c.new_conns, c.packets, 0, c.bytes, 0
            ));
            for r in reals {
                let c = dp.backend_counters(&s.id, r.addr);
                out.push_str(&format!(
                    "  -> {:<28}{:>9}{:>9}{:>9}{:>9}{:>9}\n",
                    addr_port(r.addr, s.id.port),
                    c.new_conns,
                    c.packets,
                    0,
                    c.bytes,
                    0
                ));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The data plane as the pinned maps hold it
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct DpService {
    meta: VipMeta,
    /// Real server → (backend id, BACKENDS entry), ids from the state file's allocation.
    reals: BTreeMap<IpAddr, (u32, Backend)>,
    /// The VIP's slice of MAGLEV (backend ids).
    table: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
struct Dp {
    services: BTreeMap<ServiceId, DpService>,
    markers: BTreeSet<IpAddr>,
    /// Ids of the BACKENDS entries marked valid.
    valid: BTreeSet<u32>,
    conns: Vec<(FlowKey, Conn)>,
    vip_counters: BTreeMap<ServiceId, Counters>,
    backend_counters: BTreeMap<u32, Counters>,
}

fn sum(v: aya::maps::PerCpuValues<Counters>) -> Counters {
    v.iter().fold(Counters::default(), |a, b| Counters {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
        new_conns: a.new_conns + b.new_conns,
        syn_retransmits: a.syn_retransmits + b.syn_retransmits,
        handshakes: a.handshakes + b.handshakes,
        _reserved: 0,
    })
}

fn ip_of(key: &VipKey) -> IpAddr {
    assert_eq!(key.family, lb_common::FAMILY_V4, "{key:?}");
    IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name)).with_context(|| format!("opening pin {name}"))?;
    Ok(Map::from_map_data(data)?)
}

/// A service's scheduler, persistence, sequence length and BACKENDS entries by address.
type Normalized = (u32, u32, u32, Vec<(IpAddr, Backend)>);

/// An invalid command line: arguments, standard input, exit status, what stderr says.
type Refusal<'a> = (Vec<&'a str>, Option<&'a str>, i32, Vec<&'a str>);

impl Dp {
    fn id_of(&self, svc: &ServiceId, real: IpAddr) -> Option<u32> {
        self.services.get(svc)?.reals.get(&real).map(|r| r.0)
    }

    /// (ActiveConn, InActConn) of a real server: its entries in the connection table,
    /// ESTABLISHED (client ACK seen, no FIN or RST since) or not.
    fn conn_counts(&self, svc: &ServiceId, real: IpAddr) -> (u64, u64) {
        let Some(id) = self.id_of(svc, real) else {
            return (0, 0);
        };
        self.conns
            .iter()
            .filter(|(_, c)| c.backend == id)
            .fold((0, 0), |(a, i), (_, c)| {
                if c.is_active() {
                    (a + 1, i)
                } else {
                    (a, i + 1)
                }
            })
    }

    fn vip_counters(&self, svc: &ServiceId) -> Counters {
        self.vip_counters.get(svc).copied().unwrap_or_default()
    }

    fn backend_counters(&self, svc: &ServiceId, real: IpAddr) -> Counters {
        self.id_of(svc, real)
            .and_then(|id| self.backend_counters.get(&id).copied())
            .unwrap_or_default()
    }

    /// Slots per real server of a service's whole table.
    fn slot_counts(&self, svc: &ServiceId) -> BTreeMap<IpAddr, u32> {
        let s = &self.services[svc];
        let by_id: BTreeMap<u32, IpAddr> = s.reals.iter().map(|(a, (id, _))| (*id, *a)).collect();
        let mut counts: BTreeMap<IpAddr, u32> = s.reals.keys().map(|a| (*a, 0)).collect();
        for id in &s.table {
            if let Some(a) = by_id.get(id) {
                *counts.get_mut(a).unwrap() += 1;
            }
        }
        counts
    }

    /// The rr/wrr sequence (the table's leading `seq_len` slots) as addresses.
    fn sequence(&self, svc: &ServiceId) -> Vec<Option<IpAddr>> {
        let s = &self.services[svc];
        let by_id: BTreeMap<u32, IpAddr> = s.reals.iter().map(|(a, (id, _))| (*id, *a)).collect();
        s.table[..s.meta.seq_len as usize]
            .iter()
            .map(|id| by_id.get(id).copied())
            .collect()
    }

    /// What a save → clear → restore must preserve: everything but the ids and VIP
    /// indexes (which are allocated anew) and the Maglev slot positions (which follow
    /// from the ids); slot counts are compared separately.
    fn normalized(&self) -> BTreeMap<ServiceId, Normalized> {
        self.services
            .iter()
            .map(|(id, s)| {
                let reals = s.reals.iter().map(|(a, (_, b))| (*a, *b)).collect();
                (
                    *id,
                    (s.meta.sched, s.meta.persist_secs, s.meta.seq_len, reals),
                )
            })
            .collect()
    }
}

fn lab_mac(addr: IpAddr) -> [u8; 6] {
    let s = SERVERS
        .iter()
        .find(|s| v4(s.addr) == addr)
        .unwrap_or_else(|| panic!("{addr} is not a lab server"));
    let mut mac = [0u8; 6];
    for (d, p) in mac.iter_mut().zip(s.mac.split(':')) {
        *d = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// How `dp` differs from `model` (empty: it matches).
fn mismatches(dp: &Dp, model: &Model, ring: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let want: BTreeSet<ServiceId> = model.services.iter().map(|s| s.id).collect();
    let have: BTreeSet<ServiceId> = dp.services.keys().copied().collect();
    if want != have {
        bad.push(format!("VIPS services {have:?}, expected {want:?}"));
    }
    if dp.markers != model.addresses() {
        bad.push(format!(
            "VIPS address markers {:?}, expected {:?}",
            dp.markers,
            model.addresses()
        ));
    }
    let used: BTreeSet<u32> = dp
        .services
        .values()
        .flat_map(|s| s.reals.values().map(|r| r.0))
        .collect();
    if dp.valid != used {
        bad.push(format!(
            "valid BACKENDS entries {:?}, the services' backends are {used:?}",
            dp.valid
        ));
    }
    for s in &model.services {
        let Some(d) = dp.services.get(&s.id) else {
            continue;
        };
        let at = s.id;
        if d.meta.sched != s.sched.code() || d.meta.persist_secs != s.persist || d.meta.flags != 0 {
            bad.push(format!(
                "{at}: VIPS entry {:?}, expected scheduler {:?} (code {}), persistence {}",
                d.meta,
                s.sched,
                s.sched.code(),
                s.persist
            ));
        }
        let addrs: BTreeSet<IpAddr> = s.reals.iter().map(|r| r.addr).collect();
        let installed: BTreeSet<IpAddr> = d.reals.keys().copied().collect();
        if addrs != installed {
            bad.push(format!("{at}: backends {installed:?}, expected {addrs:?}"));
            continue;
        }
        for r in &s.reals {
            let (id, b) = d.reals[&r.addr];
            let IpAddr::V4(a) = r.addr else {
                unreachable!()
            };
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a.octets());
            let want = Backend {
                addr,
                mac: lab_mac(r.addr),
                family: lb_common::FAMILY_V4,
                mode: r.fwd.mode(),
                flags: BACKEND_F_VALID,
                gue_port: lb_common::DEFAULT_GUE_PORT.to_be(),
                ..Backend::default()
            };
            if b != want {
                bad.push(format!(
                    "{at}: BACKENDS[{id}] for {} is {b:?}, expected {want:?}",
                    r.addr
                ));
            }
        }
        let live: Vec<&Real> = s.reals.iter().filter(|r| r.weight > 0).collect();
        let total: u64 = live.iter().map(|r| r.weight as u64).sum();
        let counts = dp.slot_counts(&s.id);
        let unknown = d
            .table
            .iter()
            .filter(|id| **id != 0 && !d.reals.values().any(|r| r.0 == **id))
            .count();
        if unknown > 0 {
            bad.push(format!(
                "{at}: {unknown} slots hold ids of no backend of the service"
            ));
        }
        match s.sched {
            Scheduler::Mh | Scheduler::Sh => {
                if d.meta.seq_len != 0 {
                    bad.push(format!("{at}: seq_len {} for Maglev", d.meta.seq_len));
                }
                let empty = d.table.iter().filter(|id| **id == 0).count();
                let want_empty = if total == 0 { ring as usize } else { 0 };
                if empty != want_empty {
                    bad.push(format!("{at}: {empty} empty slots, expected {want_empty}"));
                }
                for r in &s.reals {
                    // Every real server gets its ideal share rounded down or up.
                    let ideal = if total == 0 {
                        0.0
                    } else {
                        ring as f64 * r.weight as f64 / total as f64
                    };
                    let got = counts[&r.addr];
                    if (got as f64) < ideal.floor() || (got as f64) > ideal.ceil() {
                        bad.push(format!(
                            "{at}: {} (weight {}) has {got} of {ring} slots, ideal {ideal:.1}",
                            r.addr, r.weight
                        ));
                    }
                }
            }
            Scheduler::Rr | Scheduler::Wrr => {
                let g = live.iter().fold(0, |g, r| gcd(g, r.weight));
                let per = |r: &Real| {
                    if s.sched == Scheduler::Rr || r.weight == 0 {
                        (r.weight > 0) as u32
                    } else {
                        r.weight / g
                    }
                };
                let want_len: u32 = s.reals.iter().map(per).sum();
                if d.meta.seq_len != want_len {
                    bad.push(format!(
                        "{at}: seq_len {}, expected {want_len}",
                        d.meta.seq_len
                    ));
                    continue;
                }
                let seq = dp.sequence(&s.id);
                if s.sched == Scheduler::Rr {
                    let want: Vec<Option<IpAddr>> = live.iter().map(|r| Some(r.addr)).collect();
                    if seq != want {
                        bad.push(format!("{at}: rr sequence {seq:?}, expected {want:?}"));
                    }
                }
                for r in &s.reals {
                    let n = seq.iter().filter(|a| **a == Some(r.addr)).count() as u32;
                    if n != per(r) {
                        bad.push(format!(
                            "{at}: {} (weight {}) is {n} times in the sequence, expected {}",
                            r.addr,
                            r.weight,
                            per(r)
                        ));
                    }
                }
                if d.table[want_len as usize..].iter().any(|id| *id != 0) {
                    bad.push(format!("{at}: slots after the sequence are not empty"));
                }
            }
        }
    }
    bad
}

// ---------------------------------------------------------------------------
// The rig: topology, daemon, lbctl
// ---------------------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The embedded default configuration (the topology netns.rs builds) with this test's
/// instance and without services: everything is configured through lbctl.
fn config(instance: &str) -> (String, toml::Table) {
    let mut cfg: toml::Table =
        toml::from_str(lb_daemon::config::DEFAULT_CONFIG).expect("default.toml is TOML");
    cfg["daemon"]["instance"] = instance.into();
    assert_eq!(
        cfg["daemon"]["interfaces"].as_array(),
        Some(&vec![toml::Value::from(LB_IF)]),
        "default.toml no longer matches xtask/src/netns.rs"
    );
    cfg.remove("service");
    (
        toml::to_string(&cfg).expect("serializing the configuration"),
        cfg,
    )
}

/// A keep-alive HTTP/1.1 connection from the client through the VIP.
struct KeepAlive {
    stream: TcpStream,
    local: SocketAddr,
}

impl KeepAlive {
    fn open(client_ns: &str) -> KeepAlive {
        let vip: SocketAddr = format!("{VIP}:{VIP_PORT}").parse().unwrap();
        let stream = in_netns(client_ns, || {
            Ok(TcpStream::connect_timeout(&vip, Duration::from_secs(3))?)
        })
        .expect("connecting to the VIP");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let local = stream.local_addr().unwrap();
        KeepAlive { stream, local }
    }

    /// One request on this connection: the answering server's name.
    fn get(&mut self) -> String {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
            .expect("sending a request on the kept-alive connection");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self
                .stream
                .read(&mut chunk)
                .expect("reading on the kept-alive connection");
            assert!(n > 0, "the kept-alive connection was closed: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("Content-Length");
                if buf.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                    return text[end + 4..end + 4 + len].trim().to_owned();
                }
            }
        }
    }

    fn flow(&self) -> FlowKey {
        let ip4 = |a: IpAddr| {
            let IpAddr::V4(a) = a else { unreachable!() };
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        };
        FlowKey {
            src: ip4(self.local.ip()),
            dst: ip4(v4(VIP)),
            sport: self.local.port().to_be(),
            dport: VIP_PORT.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

struct Rig {
    lab: Lab,
    daemon: Option<Child>,
    pin_dir: PathBuf,
    daemon_bin: PathBuf,
    lbctl_bin: PathBuf,
    cfg: PathBuf,
    state_file: PathBuf,
    sock: PathBuf,
    ring: u32,
    max_backends: u32,
    /// capacity.conn_table: what `-L -n` shows as `size=`.
    conn_table: u64,
}

impl Rig {
    fn new(test: u32) -> Rig {
        netns::prepare_pinning_test(STALE_PREFIX);
        let daemon_bin = e2e::daemon();
        let lbctl_bin = e2e::lbctl();
        let prefix = format!("{STALE_PREFIX}{}-{test}-", std::process::id());
        let lab = Lab::build(&prefix, lb_daemon::EBPF_OBJECT).expect("building the topology");
        let dir = lab.dir.clone();
        let (text, cfg) = config(netns::instance(&prefix));
        let cap = |k: &str| cfg["capacity"].get(k).and_then(|v| v.as_integer());
        let rig = Rig {
            lab,
            daemon: None,
            pin_dir: netns::pin_dir(&prefix),
            daemon_bin,
            lbctl_bin,
            cfg: dir.join("lb.toml"),
            state_file: dir.join("state").join("lb.state.json"),
            sock: dir.join("api.sock"),
            ring: cap("ring_size").map_or(lb_common::DEFAULT_RING_SIZE, |v| v as u32),
            max_backends: cap("max_backends").expect("capacity.max_backends") as u32,
            conn_table: cap("conn_table").expect("capacity.conn_table") as u64,
        };
        assert!(
            !rig.pin_dir.exists(),
            "{} exists before the test",
            rig.pin_dir.display()
        );
        fs::write(&rig.cfg, text).unwrap();
        rig
    }

    fn client_ns(&self) -> String {
        self.lab.ns("client")
    }

    fn daemon_log(&self) -> String {
        let log = fs::read_to_string(self.lab.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Starts the daemon in the LB's network namespace (host mounts: host bpffs) and
    /// waits until `lbctl status` reaches it.
    fn start_daemon(&mut self) {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.lab.ns("lb")))
            .arg(&self.daemon_bin)
            .arg("--config")
            .arg(&self.cfg)
            .arg("--state-file")
            .arg(&self.state_file)
            .arg("--socket")
            .arg(&self.sock)
            .stdin(Stdio::null())
            .stdout(File::create(self.lab.dir.join("daemon.out")).unwrap())
            .stderr(File::create(self.lab.dir.join("daemon.log")).unwrap())
            .spawn()
            .expect("starting lb-daemon");
        let child = self.daemon.insert(child);
        let mut last = String::new();
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!("lb-daemon exited ({st}) before serving its API");
            }
            let r = run_lbctl(&self.lbctl_bin, &self.sock, &["status"], None);
            last = r.stderr;
            Ok(r.code == 0)
        });
        match ready {
            Ok(true) => {}
            Ok(false) => panic!(
                "lbctl status did not reach the daemon within 30 s ({last}):\n{}",
                self.daemon_log()
            ),
            Err(e) => panic!("{e:#}:\n{}", self.daemon_log()),
        }
    }

    fn lbctl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run_lbctl(&self.lbctl_bin, &self.sock, args, stdin)
    }

    /// `args` with `--socket <the daemon's>` where `at` says, and LBCTL_SOCKET naming
    /// a socket that does not exist: the flag must win, in either form.
    #[track_caller]
    fn ok_flag_socket(&self, args: &[&str], at: usize) -> String {
        let sock = self.sock.to_str().unwrap();
        let mut full: Vec<&str> = args.to_vec();
        full.splice(at..at, ["--socket", sock]);
        let nowhere = self.lab.dir.join("nowhere.sock");
        let r = run_lbctl(&self.lbctl_bin, &nowhere, &full, None);
        assert!(
            r.code == 0 && r.stderr.is_empty(),
            "lbctl {full:?}: exit {} stderr {:?}",
            r.code,
            r.stderr
        );
        r.stdout
    }

    /// An lbctl command that must succeed silently on stderr; its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    #[track_caller]
    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let r = self.lbctl(args, stdin);
        assert!(
            r.code == 0 && r.stderr.is_empty(),
            "lbctl {args:?}: exit {} stderr {:?}\n{}",
            r.code,
            r.stderr,
            self.daemon_log()
        );
        r.stdout
    }

    fn saved(&self) -> Saved {
        let text = fs::read(&self.state_file).expect("the daemon's state file");
        serde_json::from_slice(&text).expect("the state file parses")
    }

    /// Reads the pinned maps, with the backend ids of the state file's allocation.
    fn read_dp(&self) -> Result<Dp> {
        let saved = self.saved();
        let dir = &self.pin_dir;
        let vips: BpfHashMap<MapData, VipKey, VipMeta> = open_map(dir, m::VIPS)?.try_into()?;
        let backends: Array<MapData, Backend> = open_map(dir, m::BACKENDS)?.try_into()?;
        let maglev: Array<MapData, [u32; 2]> = open_map(dir, m::MAGLEV)?.try_into()?;
        let conns: BpfHashMap<MapData, FlowKey, Conn> = open_map(dir, m::CONNS)?.try_into()?;
        let vip_stats: PerCpuArray<MapData, Counters> = open_map(dir, m::VIP_STATS)?.try_into()?;
        let backend_stats: PerCpuArray<MapData, Counters> =
            open_map(dir, m::BACKEND_STATS)?.try_into()?;
        let mut dp = Dp {
            services: BTreeMap::new(),
            markers: BTreeSet::new(),
            valid: BTreeSet::new(),
            conns: Vec::new(),
            vip_counters: BTreeMap::new(),
            backend_counters: BTreeMap::new(),
        };
        for kv in vips.iter() {
            let (k, meta) = kv?;
            if meta.flags & VIP_F_ADDR_MARKER != 0 {
                dp.markers.insert(ip_of(&k));
                continue;
            }
            let proto = match k.proto {
                lb_common::PROTO_TCP => Proto::Tcp,
                lb_common::PROTO_UDP => Proto::Udp,
                p => anyhow::bail!("VIPS key with protocol {p}: {k:?}"),
            };
            let id = ServiceId {
                address: ip_of(&k),
                port: u16::from_be(k.port),
                proto,
            };
            let alloc = saved
                .alloc
                .services
                .iter()
                .find(|e| e.service == id)
                .with_context(|| format!("{id} is in VIPS but not in the state file's alloc"))?;
            anyhow::ensure!(
                alloc.idx == meta.idx,
                "{id}: VIPS says index {}, the allocation {}",
                meta.idx,
                alloc.idx
            );
            let mut reals = BTreeMap::new();
            for (a, bid) in &alloc.backends {
                reals.insert(*a, (*bid, backends.get(bid, 0)?));
            }
            let start = meta.idx as usize * self.ring as usize;
            let mut table = Vec::with_capacity(self.ring as usize);
            let mut elem = u32::MAX;
            let mut pair = [0u32; 2];
            for slot in start..start + self.ring as usize {
                if (slot / 2) as u32 != elem {
                    elem = (slot / 2) as u32;
                    pair = maglev.get(&elem, 0)?;
                }
                table.push(pair[slot % 2]);
            }
            dp.vip_counters
                .insert(id, sum(vip_stats.get(&meta.idx, 0)?));
            for (bid, _) in reals.values() {
                dp.backend_counters
                    .insert(*bid, sum(backend_stats.get(bid, 0)?));
            }
            dp.services.insert(id, DpService { meta, reals, table });
        }
        for id in 0..self.max_backends {
            if backends.get(&id, 0)?.flags & BACKEND_F_VALID != 0 {
                dp.valid.insert(id);
            }
        }
        dp.conns = conns.iter().collect::<Result<_, _>>()?;
        dp.conns
            .sort_by_key(|(k, _)| (k.src, k.sport, k.dst, k.dport, k.proto));
        Ok(dp)
    }

    fn dp(&self) -> Dp {
        self.read_dp()
            .unwrap_or_else(|e| panic!("reading the pinned maps: {e:#}"))
    }

    /// Waits (up to [`SETTLE`]) until the maps match `model`; panics with the
    /// differences otherwise. Also checks `lbctl -S -n` against the model.
    #[track_caller]
    fn check(&self, model: &Model, step: &str) -> Dp {
        let mut bad = Vec::new();
        let mut dp = None;
        let _ = wait_until(SETTLE, || {
            match self.read_dp() {
                Ok(d) => {
                    bad = mismatches(&d, model, self.ring);
                    dp = Some(d);
                }
                Err(e) => bad = vec![format!("reading the pinned maps: {e:#}")],
            }
            Ok(bad.is_empty())
        });
        assert!(
            bad.is_empty(),
            "{step}: the maps do not match:\n  {}\ndaemon log:\n{}",
            bad.join("\n  "),
            self.daemon_log()
        );
        let save = self.ok(&["-S", "-n"]);
        assert_eq!(save, model.save_text(), "{step}: lbctl -S -n");
        let dp = dp.expect("read above");
        for s in &model.services {
            if matches!(s.sched, Scheduler::Mh | Scheduler::Sh) {
                eprintln!("{step}: {} slots {:?}", s.id, dp.slot_counts(&s.id));
            } else {
                eprintln!("{step}: {} sequence {:?}", s.id, dp.sequence(&s.id));
            }
        }
        dp
    }

    /// `n` new connections (one curl, `Connection: close`) through the VIP: how many
    /// each server answered.
    fn curl(&self, n: usize) -> BTreeMap<String, usize> {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://{VIP}:{VIP_PORT}/{i}"))
            .collect();
        let out = self
            .lab
            .client("curl")
            .args([
                "-sS",
                "--connect-timeout",
                "3",
                "--max-time",
                "5",
                "-H",
                "Connection: close",
            ])
            .args(&urls)
            .output()
            .expect("running curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl through the VIP: {} {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let mut hits = BTreeMap::new();
        for line in stdout.lines() {
            assert!(
                SERVERS.iter().any(|s| s.name == line),
                "unexpected answer {line:?}"
            );
            *hits.entry(line.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(hits.values().sum::<usize>(), n, "answers: {stdout}");
        hits
    }

    /// Whether a single request through the VIP fails.
    fn curl_fails(&self) -> bool {
        let (status, _) = self
            .lab
            .request(&format!("http://{VIP}:{VIP_PORT}/"))
            .expect("running curl");
        !status.success()
    }

    /// A kept-alive connection through the VIP that landed on `server` (rsN).
    fn keepalive_to(&self, server: &str) -> KeepAlive {
        for _ in 0..100 {
            let mut k = KeepAlive::open(&self.client_ns());
            if k.get() == server {
                return k;
            }
        }
        panic!("100 connections through the VIP and none reached {server}");
    }

    /// `lbctl shutdown --unload`: the daemon exits 0, the pins and the XDP program go.
    fn shutdown_unload(&mut self) {
        self.ok(&["shutdown", "--unload"]);
        let d = self.daemon.as_mut().expect("the daemon");
        let exited = wait_until(Duration::from_secs(10), || Ok(d.try_wait()?.is_some())).unwrap();
        assert!(exited, "the daemon did not exit after lbctl shutdown");
        let st = self.daemon.take().unwrap().wait().unwrap();
        assert!(st.success(), "daemon exit: {st}\n{}", self.daemon_log());
        assert!(
            !self.pin_dir.exists(),
            "{} left after lbctl shutdown --unload",
            self.pin_dir.display()
        );
        let lb = self.lab.ns("lb");
        let detached = wait_until(Duration::from_secs(3), || {
            let link = netns::cmd(Command::new("ip").args(["-n", &lb, "link", "show", LB_IF]))?;
            Ok(!link.contains("prog/xdp"))
        })
        .unwrap();
        assert!(detached, "{LB_IF} still has an XDP program after unloading");
        let r = self.lbctl(&["-L", "-n"], None);
        assert_eq!(r.code, 3, "lbctl without a daemon: {:?}", r.stderr);
    }
}

/// Runs lbctl with `LBCTL_SOCKET=sock` (the argument may name another with --socket).
fn run_lbctl(bin: &Path, sock: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .env("LBCTL_SOCKET", sock)
        .env_remove("LBCTL_URL")
        .env_remove("LBCTL_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lbctl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(c) = self.daemon.as_mut() {
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

/// Runs `read`, then `list`, then `read` again until both reads agree (no traffic
/// moved the counters meanwhile); returns the read and the listing.
fn quiet<T: PartialEq>(read: impl Fn() -> T, list: impl Fn() -> String) -> (T, String) {
    for _ in 0..10 {
        let before = read();
        let out = list();
        if read() == before {
            return (before, out);
        }
        sleep(Duration::from_millis(300));
    }
    panic!("the maps kept changing while listing");
}

/// The title line of ipvsadm's `--stats` and `--rate` listings:
/// `"%-33s %8s %8s %8s %8s %8s\n"` with "Prot LocalAddress:Port" first.
fn counters_header(titles: [&str; 5]) -> String {
    let [a, b, c, d, e] = titles;
    format!(
        "{:<33} {a:>8} {b:>8} {c:>8} {d:>8} {e:>8}\n",
        "Prot LocalAddress:Port"
    )
}

fn share(hits: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = hits.values().sum();
    *hits.get(name).unwrap_or(&0) as f64 / total as f64
}

fn names(hits: &BTreeMap<String, usize>) -> BTreeSet<&str> {
    hits.keys().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------
// Test 1: changes, listings, save/restore
// ---------------------------------------------------------------------------

#[test]
fn changes_reach_the_maps_and_the_traffic() {
    let t0 = Instant::now();
    let mut rig = Rig::new(1);
    rig.start_daemon();
    let mut model = Model::default();
    let web = tcp(VIP, VIP_PORT);
    let web_s = addr_port(v4(VIP), VIP_PORT);
    let web_s = web_s.as_str();
    rig.check(&model, "empty");
    assert!(rig.dp().markers.is_empty());

    // --- Subcommand form: a Maglev service with two tunnelled servers, 3:1.
    rig.ok(&["service", "add", web_s]);
    model.add_svc(web, Scheduler::Mh, 0);
    rig.ok(&[
        "backend",
        "add",
        web_s,
        "10.100.0.11",
        "-w",
        "3",
        "-f",
        "tun",
    ]);
    rig.ok(&[
        "backend",
        "add",
        web_s,
        "10.100.0.12:80",
        "--weight",
        "1",
        "--forward",
        "tun",
    ]);
    model.add_real(web, "10.100.0.11", Forward::Tun, 3);
    model.add_real(web, "10.100.0.12", Forward::Tun, 1);
    rig.check(&model, "subcommands: rs1 w3, rs2 w1");
    let hits = rig.curl(200);
    eprintln!("3:1 over 200 new connections: {hits:?}");
    assert_eq!(names(&hits), BTreeSet::from(["rs1", "rs2"]), "{hits:?}");
    let s1 = share(&hits, "rs1");
    assert!(
        (0.62..=0.88).contains(&s1),
        "weight 3:1 should give rs1 about 75% of new connections: {hits:?}"
    );

    route_predicts_traffic(&rig);

    // --- ipvsadm form: a third server by direct routing, weights edited.
    rig.ok(&["-a", "-t", web_s, "-r", "10.100.0.13", "-g", "-w", "2"]);
    model.add_real(web, "10.100.0.13", Forward::Dr, 2);
    rig.ok(&["-e", "-t", web_s, "-r", "10.100.0.11:80", "-i", "-w", "1"]);
    model.real(web, "10.100.0.11").weight = 1;
    rig.ok(&["backend", "edit", web_s, "10.100.0.12", "-w", "2"]);
    model.real(web, "10.100.0.12").weight = 2;
    rig.check(&model, "ipvsadm form: rs1 w1, rs2 w2, rs3 w2 (DR)");
    let hits = rig.curl(100);
    eprintln!("1:2:2 over 100: {hits:?}");
    assert_eq!(names(&hits), BTreeSet::from(["rs1", "rs2", "rs3"]));

    // --- Drain (subcommand): rs3's established flow stays, new ones avoid it.
    let mut on_rs3 = rig.keepalive_to("rs3");
    rig.ok(&["backend", "drain", web_s, "10.100.0.13"]);
    model.real(web, "10.100.0.13").weight = 0;
    let dp = rig.check(&model, "rs3 drained");
    let rs3_id = dp.id_of(&web, v4("10.100.0.13")).unwrap();
    assert!(dp.valid.contains(&rs3_id), "a drained backend stays valid");
    let hits = rig.curl(100);
    eprintln!("rs3 drained, 100 new connections: {hits:?}");
    assert_eq!(names(&hits), BTreeSet::from(["rs1", "rs2"]), "{hits:?}");
    assert_eq!(
        on_rs3.get(),
        "rs3",
        "the established flow left the drained rs3"
    );
    let dp = rig.dp();
    let entry = dp.conns.iter().find(|(k, _)| *k == on_rs3.flow());
    assert_eq!(
        entry.map(|(_, c)| c.backend),
        Some(rs3_id),
        "CONNS entry of the kept-alive flow {}",
        on_rs3.local
    );

    // --- Listings, while the maps are quiet: -L -n, the subcommand and bare lbctl.
    sleep(Duration::from_millis(300));
    let (dp, list) = quiet(|| rig.dp(), || rig.ok(&["-L", "-n"]));
    assert_eq!(list, model.list_text(&dp, rig.conn_table), "lbctl -L -n");
    eprintln!("lbctl -L -n:\n{list}");
    assert!(
        dp.conn_counts(&web, v4("10.100.0.13")).0 >= 1,
        "the drained rs3 still has its active connection"
    );
    let (dp, list) = quiet(|| rig.dp(), || rig.ok(&["list", "-n"]));
    assert_eq!(list, model.list_text(&dp, rig.conn_table), "lbctl list -n");
    let (dp, list) = quiet(|| rig.dp(), || rig.ok(&[]));
    assert_eq!(list, model.list_text(&dp, rig.conn_table), "bare lbctl");
    let (_, one) = quiet(|| rig.dp(), || rig.ok(&["-L", "-n", "-t", web_s]));
    assert!(
        one.starts_with("Prot LocalAddress:Port Scheduler Flags\n")
            && one.contains(&format!("TCP  {web_s} mh\n")),
        "-L -n -t lists one service without the version line:\n{one}"
    );

    // -L -n -c: the connection table, row for row.
    let (dp, conns) = quiet(|| rig.dp(), || rig.ok(&["-L", "-n", "-c"]));
    check_conns(&conns, &dp);
    let row = conns
        .lines()
        .find(|l| l.contains(&format!(" {} ", on_rs3.local)))
        .unwrap_or_else(|| panic!("no row for {} in:\n{conns}", on_rs3.local));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[2], cols[4], cols[5]),
        ("TCP", "ESTABLISHED", web_s, "10.100.0.13:80"),
        "{row}"
    );

    // --- Drain (ipvsadm form -w 0): rs2 too; everything new goes to rs1.
    let mut on_rs2 = rig.keepalive_to("rs2");
    rig.ok(&["-e", "-t", web_s, "-r", "10.100.0.12", "-w", "0"]);
    model.real(web, "10.100.0.12").weight = 0;
    rig.check(&model, "rs2 drained too (-e -w 0, forwarding kept)");
    let hits = rig.curl(60);
    assert_eq!(names(&hits), BTreeSet::from(["rs1"]), "{hits:?}");
    assert_eq!(on_rs2.get(), "rs2");
    assert_eq!(on_rs3.get(), "rs3");

    // Back in service: -e without -g/-i keeps rs3's direct routing.
    rig.ok(&["-e", "-t", web_s, "-r", "10.100.0.13", "-w", "3"]);
    model.real(web, "10.100.0.13").weight = 3;
    rig.ok(&["backend", "edit", web_s, "10.100.0.12", "--weight", "1"]);
    model.real(web, "10.100.0.12").weight = 1;
    rig.check(&model, "rs2 w1 and rs3 w3 again");
    // Closed now so that their last packets are counted before -Z, not after.
    drop(on_rs2);
    drop(on_rs3);
    sleep(Duration::from_millis(500));

    // --- Counters: -Z, then 30 connections; --stats matches curl and the maps.
    rig.ok(&["-Z"]);
    let zero = rig.dp();
    assert_eq!(zero.vip_counters(&web), Counters::default(), "after -Z");
    let hits = rig.curl(30);
    sleep(Duration::from_millis(300));
    let (dp, stats) = quiet(|| rig.dp(), || rig.ok(&["-L", "-n", "--stats", "--exact"]));
    assert_eq!(stats, model.stats_text(&dp, rig.conn_table), "--stats");
    eprintln!("lbctl -L -n --stats --exact:\n{stats}");
    let vc = dp.vip_counters(&web);
    assert_eq!(vc.new_conns, 30, "new connections counted: {vc:?}");
    assert!(
        vc.packets >= 30 * 4 && vc.bytes >= vc.packets * 40,
        "{vc:?}"
    );
    for s in &SERVERS {
        let c = dp.backend_counters(&web, v4(s.addr));
        assert_eq!(
            c.new_conns,
            *hits.get(s.name).unwrap_or(&0) as u64,
            "{}: the LB's count of new connections vs what curl saw {hits:?}",
            s.name
        );
    }
    let (_, sub) = quiet(|| rig.dp(), || rig.ok(&["list", "--stats", "--exact"]));
    assert_eq!(sub, stats, "lbctl list --stats --exact");

    // --rate, with connections running during its one-second sample.
    rate_under_load(&rig, &web);

    // --- Deletions: rs2 (-d), then rs1 (backend del); their entries go invalid.
    let before = rig.dp();
    let rs2_id = before.id_of(&web, v4("10.100.0.12")).unwrap();
    let rs1_id = before.id_of(&web, v4("10.100.0.11")).unwrap();
    rig.ok(&["-d", "-t", web_s, "-r", "10.100.0.12"]);
    model.del_real(web, "10.100.0.12");
    let dp = rig.check(&model, "rs2 deleted");
    assert!(
        !dp.valid.contains(&rs2_id),
        "BACKENDS[{rs2_id}] still valid"
    );
    let hits = rig.curl(60);
    assert_eq!(names(&hits), BTreeSet::from(["rs1", "rs3"]), "{hits:?}");
    rig.ok(&["backend", "del", web_s, "10.100.0.11"]);
    model.del_real(web, "10.100.0.11");
    let dp = rig.check(&model, "rs1 deleted");
    assert!(
        !dp.valid.contains(&rs1_id),
        "BACKENDS[{rs1_id}] still valid"
    );
    let hits = rig.curl(30);
    assert_eq!(names(&hits), BTreeSet::from(["rs3"]), "{hits:?}");
    rig.ok(&["backend", "add", web_s, "10.100.0.11", "-f", "tun"]);
    model.add_real(web, "10.100.0.11", Forward::Tun, 1);
    rig.ok(&["-a", "-t", web_s, "-r", "10.100.0.12:80", "-i", "-w", "1"]);
    model.add_real(web, "10.100.0.12", Forward::Tun, 1);

    // --- More services, and service edits in both forms.
    let dns = udp(VIP, 53);
    rig.ok(&["-A", "-u", &format!("{VIP}:53"), "-s", "sh"]);
    model.add_svc(dns, Scheduler::Sh, 0);
    rig.ok(&[
        "-a",
        "-u",
        &format!("{VIP}:53"),
        "-r",
        "10.100.0.11",
        "-i",
        "-w",
        "5",
    ]);
    rig.ok(&[
        "backend",
        "add",
        &format!("{VIP}:53"),
        "10.100.0.13",
        "--proto",
        "udp",
    ]);
    model.add_real(dns, "10.100.0.11", Forward::Tun, 5);
    model.add_real(dns, "10.100.0.13", Forward::Dr, 1);
    let app = tcp("10.100.0.101", 8080);
    rig.ok(&["service", "add", "10.100.0.101:8080", "-s", "wrr", "-p"]);
    model.add_svc(app, Scheduler::Wrr, 300);
    for (real, w) in [
        ("10.100.0.11", "3"),
        ("10.100.0.12", "1"),
        ("10.100.0.13", "0"),
    ] {
        rig.ok(&["-a", "-t", "10.100.0.101:8080", "-r", real, "-g", "-w", w]);
        model.add_real(app, real, Forward::Dr, w.parse().unwrap());
    }
    rig.check(&model, "three services (mh, sh, wrr -p)");
    rig.ok(&["service", "edit", "10.100.0.101:8080", "-s", "rr"]);
    model.svc(app).sched = Scheduler::Rr;
    rig.check(&model, "service edit -s rr keeps the persistence");
    rig.ok(&["-E", "-t", "10.100.0.101:8080", "-s", "wrr", "-p", "60"]);
    (model.svc(app).sched, model.svc(app).persist) = (Scheduler::Wrr, 60);
    rig.check(&model, "-E -s wrr -p 60");
    rig.ok(&["service", "edit", "10.100.0.101:8080", "-p", "0"]);
    model.svc(app).persist = 0;
    rig.check(&model, "service edit -p 0");
    rig.ok(&["-E", "-t", "10.100.0.101:8080", "-p"]);
    (model.svc(app).sched, model.svc(app).persist) = (Scheduler::Mh, 300);
    rig.check(
        &model,
        "-E -p: ipvsadm's defaults for what is not given (mh)",
    );

    // --- Save → clear → restore.
    let saved = rig.ok(&["-S", "-n"]);
    assert_eq!(saved, model.save_text());
    assert_eq!(
        rig.ok_flag_socket(&["-S", "-n"], 2),
        saved,
        "-S -n --socket"
    );
    assert_eq!(rig.ok(&["save"]), saved, "lbctl save");
    let before = rig.check(&model, "before the round trip");
    rig.ok(&["-C"]);
    let empty = Model::default();
    let cleared = rig.check(&empty, "after -C");
    assert!(cleared.services.is_empty() && cleared.valid.is_empty());
    assert!(
        rig.curl_fails(),
        "a request through the VIP still succeeds after -C"
    );
    rig.ok_in(&["-R"], Some(&saved));
    let after = rig.check(&model, "after -R");
    assert_eq!(rig.ok(&["-S", "-n"]), saved, "-S -n after the round trip");
    assert_eq!(
        after.normalized(),
        before.normalized(),
        "VIP and backend entries after the round trip"
    );
    for s in &model.services {
        let (b, a) = (before.slot_counts(&s.id), after.slot_counts(&s.id));
        for (addr, n) in &b {
            // Equal weights may round the other way round with new ids: ±1 at most.
            assert!(
                a[addr].abs_diff(*n) <= 1,
                "{}: {addr} had {n} slots, now {}",
                s.id,
                a[addr]
            );
        }
        if matches!(s.sched, Scheduler::Rr | Scheduler::Wrr) {
            assert_eq!(after.sequence(&s.id), before.sequence(&s.id), "{}", s.id);
        }
    }
    let hits = rig.curl(60);
    assert_eq!(
        names(&hits),
        BTreeSet::from(["rs1", "rs2", "rs3"]),
        "{hits:?}"
    );

    // --- Service deletions: the UDP service (-D), then the app (service del).
    rig.ok(&["-D", "-u", &format!("{VIP}:53")]);
    model.del_svc(dns);
    rig.ok(&["service", "del", "10.100.0.101:8080"]);
    model.del_svc(app);
    let dp = rig.check(&model, "one service left");
    assert_eq!(dp.markers, BTreeSet::from([v4(VIP)]));

    rig.shutdown_unload();
    eprintln!("test took {:?}", t0.elapsed());
}

/// `lbctl route` says where a new flow from a given client port goes (Maglev's
/// 5-tuple hash); curl from exactly that port lands there, and afterwards the route
/// comes from the connection table. Ports below the ephemeral range: no earlier flow.
fn route_predicts_traffic(rig: &Rig) {
    let vip = format!("{VIP}:{VIP_PORT}");
    let route = |port: u16| -> (String, String) {
        let client = format!("{CLIENT_ADDR}:{port}");
        let out = rig.ok_flag_socket(&["route", &client, &vip], 1);
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k:?} in {out:?}"))
                .to_owned()
        };
        (field("backend: "), field("why: "))
    };
    let mut seen = BTreeSet::new();
    for port in 20000..20016u16 {
        let (backend, why) = route(port);
        assert!(why.contains("5-tuple hash"), "port {port}: {why}");
        let server = SERVERS
            .iter()
            .find(|s| s.addr == backend)
            .unwrap_or_else(|| panic!("route to {backend:?}"));
        let out = rig
            .lab
            .client("curl")
            .args(["-sS", "--max-time", "3", "--local-port"])
            .arg(port.to_string())
            .arg(format!("http://{vip}/"))
            .output()
            .expect("running curl");
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(
            body,
            server.name,
            "port {port}: lbctl route said {backend} ({why}); curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (again, why) = route(port);
        assert_eq!(
            (again.as_str(), why.as_str()),
            (backend.as_str(), "connection table entry"),
            "port {port} after the connection"
        );
        seen.insert(server.name);
    }
    eprintln!("lbctl route predicted 16 flows, on {seen:?}");
}

/// `-L -n -c` against the CONNS map: header, one row per entry, same contents.
fn check_conns(out: &str, dp: &Dp) {
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("IPVS connection entries"), "{out}");
    assert_eq!(
        lines.next(),
        Some("pro expire state       source             virtual            destination"),
        "{out}"
    );
    let mut got = Vec::new();
    for l in lines {
        let c: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(c.len(), 6, "row {l:?}");
        let (mm, ss) = c[1].split_once(':').expect("expire mm:ss");
        let secs = mm.parse::<u32>().unwrap() * 60 + ss.parse::<u32>().unwrap();
        // Closing entries (FIN_WAIT, CLOSE) pin their flow 2 minutes at most.
        let limit = if matches!(c[2], "FIN_WAIT" | "CLOSE") {
            lb_common::CONN_CLOSING_TIMEOUT_SECS as u32
        } else {
            900
        };
        assert!(
            secs <= limit && ss.len() == 2 && mm.len() >= 2,
            "expire {} in {l:?}",
            c[1]
        );
        got.push((
            c[0],
            c[2],
            c[3].to_owned(),
            c[4].to_owned(),
            c[5].to_owned(),
        ));
    }
    let owner: BTreeMap<u32, (ServiceId, IpAddr)> = dp
        .services
        .iter()
        .flat_map(|(id, s)| s.reals.iter().map(|(a, (b, _))| (*b, (*id, *a))))
        .collect();
    let mut want = Vec::new();
    for (k, c) in &dp.conns {
        let ip = |b: &[u8; 16]| IpAddr::from([b[0], b[1], b[2], b[3]]);
        let vip = SocketAddr::new(ip(&k.dst), u16::from_be(k.dport));
        let proto = if k.proto == lb_common::PROTO_TCP {
            "TCP"
        } else {
            "UDP"
        };
        let state = c.state(k.proto);
        let dest = owner.get(&c.backend).map_or("-".to_owned(), |(_, a)| {
            SocketAddr::new(*a, vip.port()).to_string()
        });
        want.push((
            proto,
            state,
            SocketAddr::new(ip(&k.src), u16::from_be(k.sport)).to_string(),
            vip.to_string(),
            dest,
        ));
    }
    got.sort();
    want.sort();
    assert_eq!(got, want, "-L -n -c rows vs the CONNS map");
    assert!(
        got.iter()
            .all(|r| r.2.starts_with(&format!("{CLIENT_ADDR}:"))),
        "{got:?}"
    );
}

/// `-L -n --rate` while a thread in the client's namespace opens connections: the
/// service's CPS is positive and no more than the connections made meanwhile.
fn rate_under_load(rig: &Rig, web: &ServiceId) {
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let ns = rig.client_ns();
    let load = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || {
            in_netns(&ns, || {
                let vip: SocketAddr = format!("{VIP}:{VIP_PORT}").parse()?;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut body = Vec::new();
                    s.read_to_end(&mut body)?;
                    made.fetch_add(1, Ordering::Relaxed);
                    sleep(Duration::from_millis(5));
                }
                Ok(())
            })
        })
    };
    sleep(Duration::from_millis(200));
    let m0 = made.load(Ordering::Relaxed);
    let rate = rig.ok(&["-L", "-n", "--rate"]);
    let m1 = made.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap().expect("the load thread's connections");
    eprintln!(
        "lbctl -L -n --rate ({} connections meanwhile):\n{rate}",
        m1 - m0
    );
    let mut lines = rate.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("IP Virtual Server version 1.2.1 (size=")),
        "{rate}"
    );
    assert_eq!(
        lines.next(),
        Some(counters_header(["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]).trim_end()),
        "{rate}"
    );
    assert_eq!(lines.next(), Some("  -> RemoteAddress:Port"), "{rate}");
    let svc_row = format!("TCP  {}", addr_port(web.address, web.port));
    let row = rate
        .lines()
        .find(|l| l.starts_with(&svc_row))
        .unwrap_or_else(|| panic!("no row for {svc_row}:\n{rate}"));
    let nums: Vec<u64> = row[svc_row.len()..]
        .split_whitespace()
        .map(|n| n.parse().expect("a plain number"))
        .collect();
    let [cps, inpps, outpps, inbps, outbps] = nums[..] else {
        panic!("row {row:?}")
    };
    assert!(
        cps >= 1 && cps <= m1 - m0 + 2,
        "CPS {cps} with {} connections during the sample",
        m1 - m0
    );
    // Every packet is at least 40 bytes (IPv4 + TCP headers); rates are rounded.
    assert!(inpps >= cps && inbps + 40 >= inpps * 40, "{row}");
    assert_eq!((outpps, outbps), (0, 0), "{row}");
    // The real servers' CPS add up to the service's (each rounded).
    let reals: u64 = rate
        .lines()
        .skip_while(|l| !l.starts_with(&svc_row))
        .skip(1)
        .take_while(|l| l.starts_with("  -> "))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        reals.abs_diff(cps) <= 3,
        "backend CPS {reals} vs {cps}:\n{rate}"
    );
}

// ---------------------------------------------------------------------------
// Test 2: import of an ipvsadm-save file, --strict, refused command lines
// ---------------------------------------------------------------------------

/// `ipvsadm -S -n` of an LVS director (sorted as ipvsadm prints it): web with
/// persistence on wlc (the default scheduler), SMTP and MySQL over IPIP/DR with
/// rr/wrr, DNS and syslog over UDP with sh and wlc.
const LVS_SAVE: &str = "\
-A -t 10.100.0.100:80 -s wlc -p 300
-a -t 10.100.0.100:80 -r 10.100.0.11:80 -g -w 100
-a -t 10.100.0.100:80 -r 10.100.0.12:80 -g -w 100
-a -t 10.100.0.100:80 -r 10.100.0.13:80 -g -w 50
-A -t 10.100.0.100:443 -s wlc -p 300
-a -t 10.100.0.100:443 -r 10.100.0.11:443 -g -w 100
-a -t 10.100.0.100:443 -r 10.100.0.12:443 -g -w 100
-A -t 10.100.0.110:25 -s rr
-a -t 10.100.0.110:25 -r 10.100.0.12:25 -i -w 1
-a -t 10.100.0.110:25 -r 10.100.0.13:25 -i -w 1
-A -t 10.100.0.110:3306 -s wrr
-a -t 10.100.0.110:3306 -r 10.100.0.11:3306 -g -w 3
-a -t 10.100.0.110:3306 -r 10.100.0.12:3306 -g -w 2
-a -t 10.100.0.110:3306 -r 10.100.0.13:3306 -g -w 0
-A -u 10.100.0.100:53 -s sh
-a -u 10.100.0.100:53 -r 10.100.0.11:53 -i -w 1
-a -u 10.100.0.100:53 -r 10.100.0.12:53 -i -w 1
-A -u 10.100.0.120:514 -s wlc
-a -u 10.100.0.120:514 -r 10.100.0.13:514 -g -w 1
";

/// The same table as the test expects it imported (wlc → mh).
fn lvs_model() -> Model {
    let mut m = Model::default();
    let web = tcp(VIP, 80);
    m.add_svc(web, Scheduler::Mh, 300);
    m.add_real(web, "10.100.0.11", Forward::Dr, 100);
    m.add_real(web, "10.100.0.12", Forward::Dr, 100);
    m.add_real(web, "10.100.0.13", Forward::Dr, 50);
    let tls = tcp(VIP, 443);
    m.add_svc(tls, Scheduler::Mh, 300);
    m.add_real(tls, "10.100.0.11", Forward::Dr, 100);
    m.add_real(tls, "10.100.0.12", Forward::Dr, 100);
    let smtp = tcp("10.100.0.110", 25);
    m.add_svc(smtp, Scheduler::Rr, 0);
    m.add_real(smtp, "10.100.0.12", Forward::Tun, 1);
    m.add_real(smtp, "10.100.0.13", Forward::Tun, 1);
    let db = tcp("10.100.0.110", 3306);
    m.add_svc(db, Scheduler::Wrr, 0);
    m.add_real(db, "10.100.0.11", Forward::Dr, 3);
    m.add_real(db, "10.100.0.12", Forward::Dr, 2);
    m.add_real(db, "10.100.0.13", Forward::Dr, 0);
    let dns = udp(VIP, 53);
    m.add_svc(dns, Scheduler::Sh, 0);
    m.add_real(dns, "10.100.0.11", Forward::Tun, 1);
    m.add_real(dns, "10.100.0.12", Forward::Tun, 1);
    let syslog = udp("10.100.0.120", 514);
    m.add_svc(syslog, Scheduler::Mh, 0);
    m.add_real(syslog, "10.100.0.13", Forward::Dr, 1);
    m
}

/// The warnings lbctl must print for [`LVS_SAVE`], one per wlc service.
fn lvs_warnings() -> String {
    [
        (1, "tcp 10.100.0.100:80"),
        (5, "tcp 10.100.0.100:443"),
        (18, "udp 10.100.0.120:514"),
    ]
    .iter()
    .map(|(line, svc)| {
        format!(
            "lbctl: warning: line {line}: service {svc}: scheduler wlc is not available yet: \
                 using mh (Maglev consistent hashing) instead\n"
        )
    })
    .collect()
}

#[test]
fn ipvsadm_import_and_refusals() {
    let t0 = Instant::now();
    let mut rig = Rig::new(2);
    rig.start_daemon();

    // Something to leave untouched: one service with one real server.
    let mut model = Model::default();
    let keep = tcp("10.100.0.200", 8080);
    rig.ok(&["service", "add", "10.100.0.200:8080", "-s", "rr"]);
    model.add_svc(keep, Scheduler::Rr, 0);
    rig.ok(&["backend", "add", "10.100.0.200:8080", "10.100.0.11"]);
    model.add_real(keep, "10.100.0.11", Forward::Dr, 1);
    rig.check(&model, "one service");

    // --- Refused command lines: exit status, message, state file byte for byte.
    let file_before = fs::read(&rig.state_file).unwrap();
    let save_before = rig.ok(&["-S", "-n"]);
    let k = "10.100.0.200:8080";
    let too_many: String = (1..=16)
        .map(|i| format!("-A -t 10.100.1.{i}:80 -s rr\n"))
        .collect();
    let cases: Vec<Refusal> = vec![
        // Usage errors (2): what the form cannot express or a value out of range.
        (
            vec!["-A", "-t", "10.100.0.201:80", "-m"],
            None,
            2,
            vec!["-m (masquerading, NAT) is not supported"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.12", "-m", "-w", "1"],
            None,
            2,
            vec!["-m (masquerading, NAT) is not supported"],
        ),
        (
            vec!["-A", "-f", "1", "-s", "rr"],
            None,
            2,
            vec!["-f (firewall-mark services) is not supported"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.300"],
            None,
            2,
            vec!["\"10.100.0.300\" is not a numeric address"],
        ),
        (
            vec!["-A", "-t", "10.100.0.256:80"],
            None,
            2,
            vec!["-t", "not a numeric address"],
        ),
        (
            vec!["service", "add", "10.100.0.201:http"],
            None,
            2,
            vec!["port \"http\" is not a number"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.12", "-w", "65536"],
            None,
            2,
            vec!["-w 65536: illegal weight (expected 0-65535)"],
        ),
        (
            vec!["-e", "-t", k, "-r", "10.100.0.11", "-w", "-1"],
            None,
            2,
            vec!["-w -1: illegal weight"],
        ),
        (
            vec!["backend", "add", k, "10.100.0.12", "-w", "70000"],
            None,
            2,
            vec!["weight 70000: the range is 0-65535"],
        ),
        (
            vec!["backend", "edit", k, "10.100.0.11", "-w", "65536"],
            None,
            2,
            vec!["weight 65536"],
        ),
        (
            vec!["-A", "-t", "10.100.0.201:80", "-s", "lottery"],
            None,
            2,
            vec!["scheduler \"lottery\" is not supported (schedulers: mh, sh, rr, wrr)"],
        ),
        (
            vec!["service", "add", "10.100.0.201:80", "-s", "fifo"],
            None,
            2,
            vec!["scheduler \"fifo\" is not supported"],
        ),
        (
            vec!["--strict", "-A", "-t", "10.100.0.201:80", "-s", "wlc"],
            None,
            2,
            vec!["scheduler wlc", "refused because of --strict"],
        ),
        (
            vec!["-A", "-t", "10.100.0.201:80", "-p", "99999999"],
            None,
            2,
            vec!["-p 99999999: illegal timeout"],
        ),
        (
            vec!["service", "add", "10.100.0.201:80", "-p", "99999999"],
            None,
            2,
            vec!["persistence 99999999: the maximum is 2678400 s"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.12:80"],
            None,
            2,
            vec!["port 80 differs from the service port 8080"],
        ),
        (
            vec!["-a", "-t", k, "-r", "[fd00::12]:8080"],
            None,
            2,
            vec!["real server fd00::12 is IPv6 but service tcp 10.100.0.200:8080 is IPv4"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.12", "-x", "100"],
            None,
            2,
            vec!["-x (connection thresholds) is not supported"],
        ),
        (
            vec![
                "backend",
                "add",
                k,
                "10.100.0.12",
                "--mac",
                "zz:00:00:00:00:00",
            ],
            None,
            2,
            vec!["--mac", "not a hex byte"],
        ),
        (
            vec!["-C", "-t", k],
            None,
            2,
            vec!["option -t is not valid with -C"],
        ),
        (vec!["frobnicate"], None, 2, vec!["frobnicate"]),
        (
            vec!["-R"],
            Some(
                "-A -t 10.100.0.202:80 -s rr\n\
                 -a -t 10.100.0.202:80 -r 10.100.0.11 -g -w 1\n\
                 -a -t 10.100.0.202:80 -r 10.100.0.12 -m -w 1\n",
            ),
            2,
            vec!["line 3", "-m (masquerading"],
        ),
        // Refused (1): conflicts with the state, checked by lbctl or by the daemon.
        (
            vec!["-E", "-t", "10.100.0.201:80", "-s", "rr"],
            None,
            1,
            vec!["No such service tcp 10.100.0.201:80"],
        ),
        (
            vec!["service", "edit", "10.100.0.201:80", "-s", "rr"],
            None,
            1,
            vec!["No such service tcp 10.100.0.201:80"],
        ),
        (
            vec!["-e", "-t", k, "-r", "10.100.0.13", "-w", "2"],
            None,
            1,
            vec!["No such destination 10.100.0.13 in service tcp 10.100.0.200:8080"],
        ),
        (
            vec!["backend", "drain", k, "10.100.0.13"],
            None,
            1,
            vec!["No such destination 10.100.0.13"],
        ),
        (
            vec!["-d", "-u", k, "-r", "10.100.0.11"],
            None,
            1,
            vec!["No such service udp 10.100.0.200:8080"],
        ),
        (
            vec!["-D", "-t", "10.100.0.201:80"],
            None,
            1,
            vec!["No such service tcp 10.100.0.201:80"],
        ),
        (
            vec!["-A", "-t", k, "-s", "wrr"],
            None,
            1,
            vec!["service tcp 10.100.0.200:8080 already exists"],
        ),
        (
            vec!["-a", "-t", k, "-r", "10.100.0.11", "-i"],
            None,
            1,
            vec!["destination 10.100.0.11 already exists in service tcp 10.100.0.200:8080"],
        ),
        (
            vec!["-A", "-t", "224.0.0.1:80"],
            None,
            1,
            vec!["224.0.0.1 cannot be a VIP"],
        ),
        (
            vec!["-L", "-n", "-t", "10.100.0.201:80"],
            None,
            1,
            vec!["No such service tcp 10.100.0.201:80"],
        ),
        (
            vec!["-R"],
            Some(
                "-A -t 10.100.0.202:80 -s rr\n\
                 -a -t 10.100.0.202:80 -r 10.100.0.11 -g -w 1\n\
                 -A -t 10.100.0.200:8080 -s wrr\n",
            ),
            1,
            vec!["line 3: service tcp 10.100.0.200:8080 already exists"],
        ),
        // The daemon's own limit: 17 services for capacity.max_vips 16.
        (
            vec!["-R"],
            Some(too_many.as_str()),
            1,
            vec!["services: 17 exceed capacity.max_vips 16"],
        ),
    ];
    let mut failures = Vec::new();
    for (args, stdin, code, needles) in &cases {
        let r = rig.lbctl(args, *stdin);
        let what = format!("lbctl {}", args.join(" "));
        eprintln!("{what}: exit {} {}", r.code, r.stderr.trim());
        if r.code != *code {
            failures.push(format!(
                "{what}: exit {}, expected {code}: {}",
                r.code, r.stderr
            ));
        }
        if !r.stderr.starts_with("lbctl: ") || !r.stdout.is_empty() {
            failures.push(format!(
                "{what}: stderr {:?}, stdout {:?}",
                r.stderr, r.stdout
            ));
        }
        let missing: Vec<_> = needles.iter().filter(|n| !r.stderr.contains(**n)).collect();
        if !missing.is_empty() {
            failures.push(format!("{what}: {:?} lacks {missing:?}", r.stderr));
        }
        if fs::read(&rig.state_file).unwrap() != file_before {
            failures.push(format!("{what}: the state file changed"));
        }
    }
    assert!(
        failures.is_empty(),
        "refused command lines:\n{}",
        failures.join("\n")
    );
    assert_eq!(rig.ok(&["-S", "-n"]), save_before);
    rig.check(&model, "after the refused command lines");

    // --- --strict refuses the import (wlc), naming the line; nothing changes.
    let file = rig.lab.dir.join("lvs.save");
    fs::write(&file, LVS_SAVE).unwrap();
    let file_s = file.to_str().unwrap();
    for (args, stdin) in [
        (vec!["--strict", "-R"], Some(LVS_SAVE)),
        (vec!["--strict", "restore", "--replace", file_s], None),
    ] {
        let r = rig.lbctl(&args, stdin);
        assert_eq!(r.code, 2, "lbctl {args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("lbctl: line 1: ")
                && r.stderr.contains("scheduler wlc is not available yet")
                && r.stderr.contains("refused because of --strict"),
            "lbctl {args:?}: {}",
            r.stderr
        );
        assert_eq!(fs::read(&rig.state_file).unwrap(), file_before);
    }
    rig.check(&model, "after --strict");

    // --- The import, replacing what was there: one warning per wlc service, and the
    // table saves back as it came in, wlc → mh.
    let r = rig.lbctl(&["restore", "--replace", file_s], None);
    assert_eq!(r.code, 0, "import: {}", r.stderr);
    assert_eq!(r.stderr, lvs_warnings(), "import warnings");
    eprintln!("import warnings:\n{}", r.stderr);
    let model = lvs_model();
    rig.check(&model, "imported");
    assert_eq!(rig.ok(&["-S", "-n"]), LVS_SAVE.replace(" -s wlc", " -s mh"));
    assert_eq!(rig.ok(&["-S", "-n"]), model.save_text());
    // Persistence (-p 300) in the data plane: every new connection of the client
    // sticks to one real server.
    let hits = rig.curl(20);
    assert_eq!(
        hits.len(),
        1,
        "-p 300: one client, one real server: {hits:?}"
    );
    // The listing of the imported table.
    sleep(Duration::from_millis(300));
    let (dp, list) = quiet(|| rig.dp(), || rig.ok(&["-L", "-n"]));
    assert_eq!(list, model.list_text(&dp, rig.conn_table));
    eprintln!("imported, lbctl -L -n:\n{list}");

    // Again, ipvsadm's way: a second import on top is refused whole; -C then -R works.
    let file_now = fs::read(&rig.state_file).unwrap();
    let r = rig.lbctl(&["-R"], Some(LVS_SAVE));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("line 1: service tcp 10.100.0.100:80 already exists"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(&rig.state_file).unwrap(), file_now);
    rig.ok(&["-C"]);
    rig.check(&Model::default(), "cleared");
    let r = rig.lbctl(&["-R"], Some(LVS_SAVE));
    assert_eq!((r.code, r.stderr), (0, lvs_warnings()), "-R");
    rig.check(&model, "imported with -R");

    rig.shutdown_unload();
    eprintln!("test took {:?}", t0.elapsed());
}
