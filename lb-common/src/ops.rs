//! Operations on the desired state with ipvsadm's semantics, and ipvsadm's text
//! formats: the command line (`-A -t 10.0.0.1:80 -s rr`), the save format
//! (`ipvsadm-save` ≡ `ipvsadm -S -n`) and the listings (`-L -n`, `--stats`,
//! `--rate`, `--exact`, `-c`). Pure: shared by the daemon and `lbctl`.
//!
//! What ipvsadm has and this load balancer does not (`-m` NAT, `-f` firewall marks,
//! `-M` persistence netmask, `-x`/`-y` thresholds, `-o`, `--pe`, `-b`, sync daemons…)
//! is refused with an error naming the flag, never ignored.

use std::{
    cmp::Ordering,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::state::{Forward, Mac, Proto, RealServer, Scheduler, Service, ServiceId, State};

/// `-p` without a value, as in ipvsadm.
pub const DEFAULT_PERSISTENCE: u32 = 300;
/// ipvsadm's `MAX_TIMEOUT` (31 days), also `State::validate`'s limit.
pub const MAX_PERSISTENCE: u32 = 86400 * 31;
/// ipvsadm's weight range is 0..=65535.
pub const MAX_WEIGHT: u32 = 65535;
/// The `size=` ipvsadm prints when nothing better is known (IPVS's default
/// connection hash table size). `lbctl` passes the daemon's connection-table capacity.
pub const DEFAULT_TABLE_SIZE: u32 = 4096;

/// Schedulers ipvsadm has that need per-backend connection counts (or, for `dh`,
/// `lblc`, `lblcr`, destination-address locality) and are not there yet: a saved
/// config naming one is imported as `mh` with a warning, or refused with `--strict`.
pub const SUBSTITUTED_SCHEDULERS: &[&str] = &["wlc", "lc", "sed", "nq", "dh", "lblc", "lblcr"];

/// One change to the desired state. The JSON shape is serde's default
/// (externally tagged, snake_case): `{"add_service": {...}}`, `"clear"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `-A`
    AddService(Service),
    /// `-E`: `None` leaves the field as it is.
    EditService {
        id: ServiceId,
        scheduler: Option<Scheduler>,
        /// Seconds; `Some(0)` turns persistence off.
        persistence: Option<u32>,
    },
    /// `-D`
    DelService(ServiceId),
    /// `-a`
    AddReal { svc: ServiceId, real: RealServer },
    /// `-e`: `None` leaves the field as it is; weight 0 drains.
    EditReal {
        svc: ServiceId,
        address: IpAddr,
        weight: Option<u32>,
        forward: Option<Forward>,
    },
    /// `-d`
    DelReal { svc: ServiceId, address: IpAddr },
    /// `-C`: every service goes; the tunnel settings stay.
    Clear,
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn check_weight(w: u32) -> Result<()> {
    if w > MAX_WEIGHT {
        bail!("illegal weight {w}: the range is 0-{MAX_WEIGHT}");
    }
    Ok(())
}

fn check_persistence(p: u32) -> Result<()> {
    if p > MAX_PERSISTENCE {
        bail!("illegal persistence timeout {p}: the maximum is {MAX_PERSISTENCE} s (31 days)");
    }
    Ok(())
}

fn check_real(id: &ServiceId, r: &RealServer) -> Result<()> {
    if r.address.is_ipv4() != id.address.is_ipv4() {
        bail!(
            "real server {} is {} but service {id} is {}",
            r.address,
            family(r.address),
            family(id.address)
        );
    }
    check_weight(r.weight)
}

fn no_such_service(id: &ServiceId) -> anyhow::Error {
    anyhow!("No such service {id}")
}

fn no_such_destination(id: &ServiceId, a: IpAddr) -> anyhow::Error {
    anyhow!("No such destination {a} in service {id}")
}

/// Applies one operation with ipvsadm's semantics. Every check happens before
/// anything is changed: on error `state` is exactly as it was.
pub fn apply(state: &mut State, op: &Op) -> Result<()> {
    match op {
        Op::AddService(s) => {
            let id = s.id();
            if state.services.iter().any(|x| x.id() == id) {
                bail!("service {id} already exists");
            }
            check_persistence(s.persistence)?;
            for (i, r) in s.backends.iter().enumerate() {
                check_real(&id, r)?;
                if s.backends[..i].iter().any(|x| x.address == r.address) {
                    bail!("destination {} already exists in service {id}", r.address);
                }
            }
            state.services.push(s.clone());
        }
        Op::EditService {
            id,
            scheduler,
            persistence,
        } => {
            if let Some(p) = persistence {
                check_persistence(*p)?;
            }
            let s = state
                .services
                .iter_mut()
                .find(|x| x.id() == *id)
                .ok_or_else(|| no_such_service(id))?;
            if let Some(sc) = scheduler {
                s.scheduler = *sc;
            }
            if let Some(p) = persistence {
                s.persistence = *p;
            }
        }
        Op::DelService(id) => {
            let i = state
                .services
                .iter()
                .position(|x| x.id() == *id)
                .ok_or_else(|| no_such_service(id))?;
            state.services.remove(i);
        }
        Op::AddReal { svc, real } => {
            let s = state
                .services
                .iter_mut()
                .find(|x| x.id() == *svc)
                .ok_or_else(|| no_such_service(svc))?;
            if s.backends.iter().any(|x| x.address == real.address) {
                bail!(
                    "destination {} already exists in service {svc}",
                    real.address
                );
            }
            check_real(svc, real)?;
            s.backends.push(real.clone());
        }
        Op::EditReal {
            svc,
            address,
            weight,
            forward,
        } => {
            if let Some(w) = weight {
                check_weight(*w)?;
            }
            let s = state
                .services
                .iter_mut()
                .find(|x| x.id() == *svc)
                .ok_or_else(|| no_such_service(svc))?;
            let r = s
                .backends
                .iter_mut()
                .find(|x| x.address == *address)
                .ok_or_else(|| no_such_destination(svc, *address))?;
            if let Some(w) = weight {
                r.weight = *w;
            }
            if let Some(f) = forward {
                r.forward = *f;
            }
        }
        Op::DelReal { svc, address } => {
            let s = state
                .services
                .iter_mut()
                .find(|x| x.id() == *svc)
                .ok_or_else(|| no_such_service(svc))?;
            let i = s
                .backends
                .iter()
                .position(|x| x.address == *address)
                .ok_or_else(|| no_such_destination(svc, *address))?;
            s.backends.remove(i);
        }
        Op::Clear => state.services.clear(),
    }
    Ok(())
}

/// Applies all operations or none: on error `state` is unchanged and the error
/// names the failing operation's position (1-based).
pub fn apply_all(state: &mut State, ops: &[Op]) -> Result<()> {
    let mut next = state.clone();
    for (i, op) in ops.iter().enumerate() {
        apply(&mut next, op).with_context(|| format!("operation {}", i + 1))?;
    }
    *state = next;
    Ok(())
}

// ---------------------------------------------------------------------------
// Statistics the daemon reports (GET /v1/stats)
// ---------------------------------------------------------------------------

/// What `GET /v1/stats` answers: counters per service and real server, read from the
/// per-CPU maps at request time, plus the global counters by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsView {
    pub services: Vec<ServiceStats>,
    /// `(action, reason, count)`, e.g. `("tx", "dr", 1234)`.
    pub reasons: Vec<(String, String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub id: ServiceId,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub persistence: u32,
    /// New connections scheduled.
    #[serde(default)]
    pub conns: u64,
    #[serde(default)]
    pub inpkts: u64,
    #[serde(default)]
    pub inbytes: u64,
    #[serde(default)]
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: IpAddr,
    #[serde(default)]
    pub forward: Forward,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub conns: u64,
    #[serde(default)]
    pub inpkts: u64,
    #[serde(default)]
    pub inbytes: u64,
    #[serde(default)]
    pub active_conns: u64,
    #[serde(default)]
    pub inactive_conns: u64,
}

impl StatsView {
    pub fn service(&self, id: &ServiceId) -> Option<&ServiceStats> {
        self.services.iter().find(|s| s.id == *id)
    }
}

impl ServiceStats {
    pub fn backend(&self, a: IpAddr) -> Option<&BackendStats> {
        self.backends.iter().find(|b| b.address == a)
    }
}

/// Per-second rates between two samples `secs` apart, in a `StatsView` whose
/// `conns`/`inpkts`/`inbytes` are CPS/InPPS/InBPS (rounded). Counters that went
/// backwards (zeroed in between) or appeared in `after` only give 0. Active and
/// inactive connection counts are `after`'s.
pub fn rate_view(before: &StatsView, after: &StatsView, secs: f64) -> StatsView {
    let per_sec = |b: u64, a: u64| -> u64 {
        if secs <= 0.0 {
            return 0;
        }
        (a.saturating_sub(b) as f64 / secs).round() as u64
    };
    let services = after
        .services
        .iter()
        .map(|s| {
            let old = before.service(&s.id);
            let backends = s
                .backends
                .iter()
                .map(|b| {
                    let ob = old.and_then(|o| o.backend(b.address));
                    let (c, p, y) = ob.map_or((b.conns, b.inpkts, b.inbytes), |o| {
                        (o.conns, o.inpkts, o.inbytes)
                    });
                    BackendStats {
                        conns: per_sec(c, b.conns),
                        inpkts: per_sec(p, b.inpkts),
                        inbytes: per_sec(y, b.inbytes),
                        ..b.clone()
                    }
                })
                .collect();
            let (c, p, y) = old.map_or((s.conns, s.inpkts, s.inbytes), |o| {
                (o.conns, o.inpkts, o.inbytes)
            });
            ServiceStats {
                conns: per_sec(c, s.conns),
                inpkts: per_sec(p, s.inpkts),
                inbytes: per_sec(y, s.inbytes),
                backends,
                ..s.clone()
            }
        })
        .collect();
    StatsView {
        services,
        reasons: Vec::new(),
    }
}

/// One entry of the connection table as `-L -c` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    pub proto: Proto,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// `None` when the entry's backend is no longer configured (shown as `-`).
    pub backend: Option<SocketAddr>,
    /// In IPVS's spirit, from what the load balancer sees of the client's side:
    /// `SYN_RECV`, `ESTABLISHED`, `UDP`.
    pub state: String,
    /// Seconds until the entry expires if idle; `None` when unknown (shown as `-`).
    pub expires: Option<u32>,
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// `addr[:port]` the way ipvsadm prints and reads it numerically: `10.0.0.1:80`,
/// `10.0.0.1`, `[2001:db8::1]:80`, `[2001:db8::1]` or a bare `2001:db8::1`.
/// Host and service names are not resolved.
pub fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>)> {
    let not_numeric = || {
        anyhow!(
            "{s:?} is not a numeric address[:port] (IPv6 as [addr]:port; lbctl does not resolve host or service names)"
        )
    };
    let port = |p: &str| -> Result<u16> {
        p.parse::<u16>()
            .map_err(|_| anyhow!("{s:?}: port {p:?} is not a number 0-65535"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (a, after) = rest.split_once(']').ok_or_else(not_numeric)?;
        let a: Ipv6Addr = a.parse().map_err(|_| not_numeric())?;
        return match after {
            "" => Ok((IpAddr::V6(a), None)),
            _ => {
                let p = after.strip_prefix(':').ok_or_else(not_numeric)?;
                Ok((IpAddr::V6(a), Some(port(p)?)))
            }
        };
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok((IpAddr::V4(a), None));
    }
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Ok((IpAddr::V6(a), None));
    }
    let (a, p) = s.split_once(':').ok_or_else(not_numeric)?;
    let a: Ipv4Addr = a.parse().map_err(|_| not_numeric())?;
    Ok((IpAddr::V4(a), Some(port(p)?)))
}

/// ipvsadm's numeric `addr:port`: IPv6 in brackets.
pub fn addr_port(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A service as `-t|-u` takes it: a missing port is 0 (every port).
pub fn parse_service(proto: Proto, s: &str) -> Result<ServiceId> {
    let (address, port) = parse_addr_port(s)?;
    Ok(ServiceId {
        address,
        port: port.unwrap_or(0),
        proto,
    })
}

/// A real server as `-r` takes it. Direct routing and tunnelling keep the
/// destination port, so a port, if given, must be the service's (ipvsadm silently
/// replaces it; we refuse rather than ignore it).
pub fn parse_real(svc: &ServiceId, s: &str) -> Result<IpAddr> {
    let (a, port) = parse_addr_port(s)?;
    if let Some(p) = port
        && p != svc.port
    {
        bail!(
            "real server {s}: port {p} differs from the service port {}: direct routing and tunnelling keep the destination port (port mapping needs -m, which is not supported)",
            svc.port
        );
    }
    if a.is_ipv4() != svc.address.is_ipv4() {
        bail!(
            "real server {a} is {} but service {svc} is {}",
            family(a),
            family(svc.address)
        );
    }
    Ok(a)
}

// ---------------------------------------------------------------------------
// Schedulers
// ---------------------------------------------------------------------------

pub fn scheduler_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Mh => "mh",
        Scheduler::Sh => "sh",
        Scheduler::Rr => "rr",
        Scheduler::Wrr => "wrr",
    }
}

/// A scheduler by ipvsadm name. ipvsadm's connection-count and locality schedulers
/// ([`SUBSTITUTED_SCHEDULERS`]) become `mh` with a warning (the returned string),
/// or are refused when `strict`.
pub fn parse_scheduler(name: &str, strict: bool) -> Result<(Scheduler, Option<String>)> {
    let s = match name {
        "mh" => Scheduler::Mh,
        "sh" => Scheduler::Sh,
        "rr" => Scheduler::Rr,
        "wrr" => Scheduler::Wrr,
        n if SUBSTITUTED_SCHEDULERS.contains(&n) => {
            if strict {
                bail!(
                    "scheduler {n} is not available yet (schedulers: mh, sh, rr, wrr); refused because of --strict (without it, mh is used instead with a warning)"
                );
            }
            return Ok((
                Scheduler::Mh,
                Some(format!(
                    "scheduler {n} is not available yet: using mh (Maglev consistent hashing) instead"
                )),
            ));
        }
        n => bail!("scheduler {n:?} is not supported (schedulers: mh, sh, rr, wrr)"),
    };
    Ok((s, None))
}

fn forward_name(f: Forward) -> &'static str {
    match f {
        Forward::Dr => "Route",
        Forward::Tun | Forward::Gue => "Tunnel",
    }
}

// ---------------------------------------------------------------------------
// ipvsadm's command line
// ---------------------------------------------------------------------------

/// What an ipvsadm command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `-A -E -D -a -e -d -C`
    Op(Op),
    /// `-L`/`-l`
    List(ListRequest),
    /// `-Z [service]`
    Zero(Option<ServiceId>),
    /// `-S [-n]` (always numeric)
    Save,
    /// `-R`: commands from standard input
    Restore,
    /// `-h`
    Help,
    /// `-v`
    Version,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListFormat {
    #[default]
    Plain,
    /// `--stats`
    Stats,
    /// `--rate`
    Rate,
    /// `-c`
    Conns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListRequest {
    pub format: ListFormat,
    pub options: ListOptions,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOptions {
    /// `-L -t addr:port`: this service only, without the version line.
    pub service: Option<ServiceId>,
    /// `--exact`: every digit instead of K/M/G/T.
    pub exact: bool,
    /// `--nosort`: configuration order instead of ipvsadm's sorted order.
    pub nosort: bool,
    /// The `size=` of the first line.
    pub table_size: u32,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            service: None,
            exact: false,
            nosort: false,
            table_size: DEFAULT_TABLE_SIZE,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ArgKind {
    None,
    Required,
    Optional,
}

struct OptSpec {
    short: Option<char>,
    long: &'static str,
    arg: ArgKind,
}

const fn opt(short: Option<char>, long: &'static str, arg: ArgKind) -> OptSpec {
    OptSpec { short, long, arg }
}

use ArgKind::{None as NoArg, Optional as OptArg, Required as ReqArg};

/// ipvsadm's options (upstream names), plus our extensions `--gue` and `--mac`.
const OPTS: &[OptSpec] = &[
    // commands
    opt(Some('A'), "add-service", NoArg),
    opt(Some('E'), "edit-service", NoArg),
    opt(Some('D'), "delete-service", NoArg),
    opt(Some('C'), "clear", NoArg),
    opt(Some('L'), "list", NoArg),
    opt(Some('l'), "list", NoArg),
    opt(Some('Z'), "zero", NoArg),
    opt(Some('a'), "add-server", NoArg),
    opt(Some('e'), "edit-server", NoArg),
    opt(Some('d'), "delete-server", NoArg),
    opt(Some('R'), "restore", NoArg),
    opt(Some('S'), "save", NoArg),
    opt(Some('h'), "help", NoArg),
    opt(Some('v'), "version", NoArg),
    opt(None, "set", ReqArg),
    opt(None, "start-daemon", ReqArg),
    opt(None, "stop-daemon", ReqArg),
    // options
    opt(Some('t'), "tcp-service", ReqArg),
    opt(Some('u'), "udp-service", ReqArg),
    opt(Some('f'), "fwmark-service", ReqArg),
    opt(Some('s'), "scheduler", ReqArg),
    opt(Some('p'), "persistent", OptArg),
    opt(Some('M'), "netmask", ReqArg),
    opt(Some('r'), "real-server", ReqArg),
    opt(Some('m'), "masquerading", NoArg),
    opt(Some('i'), "ipip", NoArg),
    opt(Some('g'), "gatewaying", NoArg),
    opt(Some('w'), "weight", ReqArg),
    opt(Some('x'), "u-threshold", ReqArg),
    opt(Some('y'), "l-threshold", ReqArg),
    opt(Some('n'), "numeric", NoArg),
    opt(Some('c'), "connection", NoArg),
    opt(Some('X'), "exact", NoArg),
    opt(Some('6'), "ipv6", NoArg),
    opt(Some('o'), "ops", NoArg),
    opt(Some('b'), "sched-flags", ReqArg),
    opt(None, "pe", ReqArg),
    opt(None, "stats", NoArg),
    opt(None, "rate", NoArg),
    opt(None, "thresholds", NoArg),
    opt(None, "persistent-conn", NoArg),
    opt(None, "nosort", NoArg),
    opt(None, "sort", NoArg),
    opt(None, "timeout", NoArg),
    opt(None, "daemon", NoArg),
    opt(None, "mcast-interface", ReqArg),
    opt(None, "syncid", ReqArg),
    opt(None, "mcast-group", ReqArg),
    opt(None, "mcast-port", ReqArg),
    opt(None, "mcast-ttl", ReqArg),
    opt(None, "sync-maxlen", ReqArg),
    opt(None, "tun-info", NoArg),
    opt(None, "tun-type", ReqArg),
    opt(None, "tun-port", ReqArg),
    opt(None, "tun-nocsum", NoArg),
    opt(None, "tun-csum", NoArg),
    opt(None, "tun-remcsum", NoArg),
    // extensions
    opt(None, "gue", NoArg),
    opt(None, "mac", ReqArg),
];

const COMMANDS: &[&str] = &[
    "add-service",
    "edit-service",
    "delete-service",
    "clear",
    "list",
    "zero",
    "add-server",
    "edit-server",
    "delete-server",
    "restore",
    "save",
    "help",
    "version",
    "set",
    "start-daemon",
    "stop-daemon",
];

/// Why an ipvsadm option is refused, or `None` when it is supported.
/// `value` is the option's argument, if any.
fn unsupported(long: &str, value: Option<&str>) -> Option<String> {
    let why = match long {
        "masquerading" => {
            "(masquerading, NAT) is not supported: forwarding is -g (direct routing) or -i (tunnel); replies must not cross the load balancer"
        }
        "fwmark-service" => {
            "(firewall-mark services) is not supported: a service is an address, port and protocol (-t or -u)"
        }
        "netmask" => "(persistence netmask) is not supported: persistence is per client address",
        "u-threshold" | "l-threshold" => {
            if value.is_some_and(|v| v.trim() == "0") {
                return None; // 0 = no threshold, what we do anyway
            }
            "(connection thresholds) is not supported: only 0 (no threshold) is accepted"
        }
        "ops" => "(one-packet scheduling) is not supported",
        "pe" => "(persistence engines) is not supported",
        "sched-flags" => "(scheduler flags) is not supported",
        "ipv6" => "(IPv6 firewall-mark services) is not supported",
        "thresholds" => "(threshold listing) is not supported: there are no thresholds",
        "persistent-conn" => "(persistent-connection listing) is not supported",
        "tun-info" => "(tunnel info listing) is not supported: see lbctl save",
        "tun-csum" | "tun-remcsum" => {
            "is not supported: GUE packets carry no UDP checksum (--tun-nocsum)"
        }
        "set" => "(IPVS connection timeouts) is not supported",
        "timeout" => "(IPVS connection timeouts) is not supported",
        "daemon" | "start-daemon" | "stop-daemon" | "mcast-interface" | "syncid"
        | "mcast-group" | "mcast-port" | "mcast-ttl" | "sync-maxlen" => {
            "(IPVS connection synchronisation daemon) is not supported"
        }
        _ => return None,
    };
    Some(why.to_string())
}

/// Options each command takes; anything else is refused, as ipvsadm does.
fn allowed(cmd: &str) -> &'static [&'static str] {
    const SVC: &[&str] = &["tcp-service", "udp-service", "scheduler", "persistent"];
    const REAL: &[&str] = &[
        "tcp-service",
        "udp-service",
        "real-server",
        "gatewaying",
        "ipip",
        "gue",
        "tun-type",
        "tun-port",
        "tun-nocsum",
        "weight",
        "u-threshold",
        "l-threshold",
        "mac",
    ];
    const EDIT_REAL: &[&str] = &[
        "tcp-service",
        "udp-service",
        "real-server",
        "gatewaying",
        "ipip",
        "gue",
        "tun-type",
        "tun-nocsum",
        "weight",
        "u-threshold",
        "l-threshold",
    ];
    match cmd {
        "add-service" | "edit-service" => SVC,
        "delete-service" | "zero" => &["tcp-service", "udp-service"],
        "add-server" => REAL,
        "edit-server" => EDIT_REAL,
        "delete-server" => &["tcp-service", "udp-service", "real-server"],
        "list" => &[
            "tcp-service",
            "udp-service",
            "numeric",
            "connection",
            "exact",
            "stats",
            "rate",
            "nosort",
            "sort",
        ],
        "save" => &["numeric"],
        _ => &[],
    }
}

struct Occ {
    long: &'static str,
    /// As written: `-m` or `--masquerading`.
    shown: String,
    value: Option<String>,
}

fn find_long(name: &str) -> Option<&'static OptSpec> {
    OPTS.iter().find(|o| o.long == name)
}

fn find_short(c: char) -> Option<&'static OptSpec> {
    OPTS.iter().find(|o| o.short == Some(c))
}

fn tokenize<S: AsRef<str>>(args: &[S]) -> Result<Vec<Occ>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_ref();
        i += 1;
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let spec = find_long(name).ok_or_else(|| anyhow!("unknown option --{name}"))?;
            let shown = format!("--{name}");
            let value = match spec.arg {
                ArgKind::None => {
                    if inline.is_some() {
                        bail!("option {shown} takes no value");
                    }
                    None
                }
                ArgKind::Required => match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args
                            .get(i)
                            .ok_or_else(|| anyhow!("option {shown} needs a value"))?;
                        i += 1;
                        Some(v.as_ref().to_string())
                    }
                },
                ArgKind::Optional => match inline {
                    Some(v) => Some(v),
                    None => match args.get(i).map(|v| v.as_ref()) {
                        Some(v) if !v.starts_with('-') => {
                            i += 1;
                            Some(v.to_string())
                        }
                        _ => None,
                    },
                },
            };
            out.push(Occ {
                long: spec.long,
                shown,
                value,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let spec = find_short(c).ok_or_else(|| anyhow!("unknown option -{c}"))?;
                let shown = format!("-{c}");
                let rest: String = chars[j..].iter().collect();
                let value = match spec.arg {
                    ArgKind::None => None,
                    ArgKind::Required => {
                        j = chars.len();
                        if rest.is_empty() {
                            let v = args
                                .get(i)
                                .ok_or_else(|| anyhow!("option {shown} needs a value"))?;
                            i += 1;
                            Some(v.as_ref().to_string())
                        } else {
                            Some(rest)
                        }
                    }
                    ArgKind::Optional => {
                        j = chars.len();
                        if rest.is_empty() {
                            match args.get(i).map(|v| v.as_ref()) {
                                Some(v) if !v.starts_with('-') => {
                                    i += 1;
                                    Some(v.to_string())
                                }
                                _ => None,
                            }
                        } else {
                            Some(rest)
                        }
                    }
                };
                out.push(Occ {
                    long: spec.long,
                    shown,
                    value,
                });
            }
        } else {
            bail!("unexpected argument {a:?}");
        }
    }
    Ok(out)
}

fn number(shown: &str, v: &str, min: u64, max: u64, what: &str) -> Result<u64> {
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => bail!("{shown} {v}: illegal {what} (expected {min}-{max})"),
    }
}

/// Parses one ipvsadm command line (without the program name), e.g.
/// `["-A", "-t", "10.0.0.1:80", "-s", "rr", "-p"]`. Returns the command and the
/// warnings (scheduler substitutions). Unsupported ipvsadm flags are errors that
/// name the flag.
///
/// Semantics follow ipvsadm: `-A`/`-E` without `-s` mean the default scheduler
/// (ours: `mh`), `-E` without `-p` turns persistence off, `-a`/`-e` without `-w`
/// mean weight 1. One deliberate difference: `-e` without `-g`/`-i` keeps the real
/// server's forwarding method (ipvsadm resets it to `-g`), because here the method
/// belongs to the real server, not to each connection, and switching it would
/// break the established flows that draining (`-w 0`) is meant to keep.
pub fn parse_ipvsadm_args<S: AsRef<str>>(
    args: &[S],
    strict: bool,
) -> Result<(Command, Vec<String>)> {
    let occs = tokenize(args)?;
    for o in &occs {
        if let Some(why) = unsupported(o.long, o.value.as_deref()) {
            bail!("{} {why}", o.shown);
        }
    }
    let mut cmd: Option<&Occ> = None;
    for o in &occs {
        if COMMANDS.contains(&o.long) {
            if let Some(c) = cmd {
                bail!(
                    "only one command at a time: {} and {} were both given",
                    c.shown,
                    o.shown
                );
            }
            cmd = Some(o);
        }
    }
    let cmd = cmd.ok_or_else(|| {
        anyhow!("no command given: one of -A -E -D -a -e -d -C -L -Z -S -R is needed")
    })?;
    let ok = allowed(cmd.long);
    for o in &occs {
        if COMMANDS.contains(&o.long) {
            continue;
        }
        if !ok.contains(&o.long) {
            bail!("option {} is not valid with {}", o.shown, cmd.shown);
        }
    }
    let mut seen: Vec<&'static str> = Vec::new();
    for o in &occs {
        let canonical = match o.long {
            "udp-service" => "tcp-service",
            "gatewaying" | "ipip" => "fwd",
            l => l,
        };
        if canonical != "fwd" && canonical != "sort" && seen.contains(&canonical) {
            bail!("option {} was given more than once", o.shown);
        }
        seen.push(canonical);
    }
    let get = |long: &str| occs.iter().find(|o| o.long == long);
    let has = |long: &str| get(long).is_some();

    let mut warnings = Vec::new();
    let service = match (get("tcp-service"), get("udp-service")) {
        (Some(_), Some(_)) => bail!("only one of -t and -u"),
        (Some(o), None) => Some(
            parse_service(Proto::Tcp, o.value.as_deref().unwrap_or(""))
                .with_context(|| o.shown.clone())?,
        ),
        (None, Some(o)) => Some(
            parse_service(Proto::Udp, o.value.as_deref().unwrap_or(""))
                .with_context(|| o.shown.clone())?,
        ),
        (None, None) => None,
    };
    let need_service =
        || service.ok_or_else(|| anyhow!("{} needs a service: -t|-u address:port", cmd.shown));

    let command = match cmd.long {
        "add-service" | "edit-service" => {
            let id = need_service()?;
            let scheduler = match get("scheduler") {
                Some(o) => {
                    let (s, w) = parse_scheduler(o.value.as_deref().unwrap_or(""), strict)
                        .with_context(|| format!("service {id}"))?;
                    if let Some(w) = w {
                        warnings.push(format!("service {id}: {w}"));
                    }
                    s
                }
                None => Scheduler::default(),
            };
            let persistence = match get("persistent") {
                Some(o) => match &o.value {
                    Some(v) => number(&o.shown, v, 1, MAX_PERSISTENCE as u64, "timeout")? as u32,
                    None => DEFAULT_PERSISTENCE,
                },
                None => 0,
            };
            if cmd.long == "add-service" {
                Command::Op(Op::AddService(Service {
                    address: id.address,
                    port: id.port,
                    proto: id.proto,
                    scheduler,
                    persistence,
                    backends: Vec::new(),
                    health: None,
                }))
            } else {
                Command::Op(Op::EditService {
                    id,
                    scheduler: Some(scheduler),
                    persistence: Some(persistence),
                })
            }
        }
        "delete-service" => Command::Op(Op::DelService(need_service()?)),
        "clear" => Command::Op(Op::Clear),
        "add-server" | "edit-server" | "delete-server" => {
            let svc = need_service()?;
            let r = get("real-server")
                .ok_or_else(|| anyhow!("{} needs a real server: -r address[:port]", cmd.shown))?;
            let address = parse_real(&svc, r.value.as_deref().unwrap_or(""))
                .with_context(|| r.shown.clone())?;
            if cmd.long == "delete-server" {
                Command::Op(Op::DelReal { svc, address })
            } else {
                let forward = forwarding(&occs)?;
                let weight = match get("weight") {
                    Some(o) => number(
                        &o.shown,
                        o.value.as_deref().unwrap_or(""),
                        0,
                        MAX_WEIGHT as u64,
                        "weight",
                    )? as u32,
                    None => 1,
                };
                if cmd.long == "add-server" {
                    let gue_port = match get("tun-port") {
                        Some(o) => number(
                            &o.shown,
                            o.value.as_deref().unwrap_or(""),
                            1,
                            65535,
                            "tunnel port",
                        )? as u16,
                        None => crate::DEFAULT_GUE_PORT,
                    };
                    let mac = match get("mac") {
                        Some(o) => Some(
                            o.value
                                .as_deref()
                                .unwrap_or("")
                                .parse::<Mac>()
                                .with_context(|| o.shown.clone())?,
                        ),
                        None => None,
                    };
                    Command::Op(Op::AddReal {
                        svc,
                        real: RealServer {
                            address,
                            weight,
                            forward: forward.unwrap_or_default(),
                            mac,
                            gue_port,
                            health: None,
                        },
                    })
                } else {
                    Command::Op(Op::EditReal {
                        svc,
                        address,
                        weight: Some(weight),
                        forward,
                    })
                }
            }
        }
        "list" => {
            let format = match (has("stats"), has("rate"), has("connection")) {
                (false, false, false) => ListFormat::Plain,
                (true, false, false) => ListFormat::Stats,
                (false, true, false) => ListFormat::Rate,
                (false, false, true) => ListFormat::Conns,
                _ => bail!("only one of --stats, --rate and -c"),
            };
            if format == ListFormat::Conns && service.is_some() {
                bail!("-c lists the whole connection table: no -t/-u with it");
            }
            Command::List(ListRequest {
                format,
                options: ListOptions {
                    service,
                    exact: has("exact"),
                    nosort: has("nosort"),
                    table_size: DEFAULT_TABLE_SIZE,
                },
            })
        }
        "zero" => Command::Zero(service),
        "save" => Command::Save,
        "restore" => Command::Restore,
        "help" => Command::Help,
        "version" => Command::Version,
        other => bail!("--{other} is not supported"),
    };
    Ok((command, warnings))
}

/// `-g`, `-i`, `--gue`, `--tun-type`, `--tun-port`, `--tun-nocsum` → the method, if given.
fn forwarding(occs: &[Occ]) -> Result<Option<Forward>> {
    let mut base: Option<(&Occ, Forward)> = None;
    for o in occs {
        let f = match o.long {
            "gatewaying" => Forward::Dr,
            "ipip" => Forward::Tun,
            _ => continue,
        };
        if let Some((p, pf)) = base
            && pf != f
        {
            bail!("conflicting forwarding methods {} and {}", p.shown, o.shown);
        }
        base = Some((o, f));
    }
    let mut tun: Option<(&Occ, Forward)> = None;
    for o in occs {
        let f = match (o.long, o.value.as_deref()) {
            ("gue", _) => Forward::Gue,
            ("tun-type", Some("gue")) => Forward::Gue,
            ("tun-type", Some("ipip")) => Forward::Tun,
            ("tun-type", Some(t)) => {
                bail!(
                    "{} {t}: tunnel type {t} is not supported (ipip, gue)",
                    o.shown
                )
            }
            _ => continue,
        };
        if let Some((p, pf)) = tun
            && pf != f
        {
            bail!("conflicting tunnel types {} and {}", p.shown, o.shown);
        }
        tun = Some((o, f));
    }
    let method = match (base, tun) {
        (Some((g, Forward::Dr)), Some((t, _))) => {
            bail!("{} needs -i (tunnel), not {}", t.shown, g.shown)
        }
        (_, Some((_, f))) => Some(f),
        (b, None) => b.map(|(_, f)| f),
    };
    for o in occs {
        if matches!(o.long, "tun-port" | "tun-nocsum") && method != Some(Forward::Gue) {
            bail!("{} applies to GUE tunnels only (-i --gue)", o.shown);
        }
    }
    Ok(method)
}

// ---------------------------------------------------------------------------
// Save format
// ---------------------------------------------------------------------------

fn svc_rule(id: &ServiceId) -> String {
    let flag = match id.proto {
        Proto::Tcp => "-t",
        Proto::Udp => "-u",
    };
    format!("{flag} {}", addr_port(id.address, id.port))
}

/// `ipvsadm -S -n`: services in configuration order, each followed by its real
/// servers. Only what ipvsadm would not know is added, as extensions: `--gue`
/// (with `-i`), `--tun-port N` when not the default 6080, `--mac M` when set.
/// The tunnel settings (`State::tunnel`) are daemon configuration, not part of it.
pub fn format_save(state: &State) -> String {
    let mut out = String::new();
    for s in &state.services {
        let id = s.id();
        let svc = svc_rule(&id);
        let _ = write!(out, "-A {svc} -s {}", scheduler_name(s.scheduler));
        if s.persistence > 0 {
            let _ = write!(out, " -p {}", s.persistence);
        }
        out.push('\n');
        for r in &s.backends {
            let fwd = match r.forward {
                Forward::Dr => "-g",
                Forward::Tun => "-i",
                Forward::Gue => "-i --gue",
            };
            let _ = write!(
                out,
                "-a {svc} -r {} {fwd} -w {}",
                addr_port(r.address, s.port),
                r.weight
            );
            if r.forward == Forward::Gue && r.gue_port != crate::DEFAULT_GUE_PORT {
                let _ = write!(out, " --tun-port {}", r.gue_port);
            }
            if let Some(m) = r.mac {
                let _ = write!(out, " --mac {m}");
            }
            out.push('\n');
        }
    }
    out
}

/// Operations with the (1-based) line each came from.
pub type NumberedOps = Vec<(usize, Op)>;

/// Like [`parse_save`], with each operation's line number.
pub fn parse_save_numbered(text: &str, strict: bool) -> Result<(NumberedOps, Vec<String>)> {
    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let (cmd, w) = parse_ipvsadm_args(&tokens, strict).with_context(|| format!("line {n}"))?;
        match cmd {
            Command::Op(op) => ops.push((n, op)),
            _ => bail!(
                "line {n}: {} is not a command a saved table holds (-A -E -D -a -e -d -C)",
                tokens[0]
            ),
        }
        warnings.extend(w.into_iter().map(|w| format!("line {n}: {w}")));
    }
    Ok((ops, warnings))
}

/// Reads `ipvsadm-save` / `ipvsadm -S -n` output (and any `-A -E -D -a -e -d -C`
/// lines, as `ipvsadm -R` does). Blank lines and `#` comments are skipped. Errors
/// name the line. Warnings: one per service whose scheduler was substituted.
pub fn parse_save(text: &str, strict: bool) -> Result<(Vec<Op>, Vec<String>)> {
    let (ops, warnings) = parse_save_numbered(text, strict)?;
    Ok((ops.into_iter().map(|(_, op)| op).collect(), warnings))
}

// ---------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------

// The first line is ipvsadm's own, version included: "IP Virtual Server version
// 1.2.1" is the version of the IPVS interface whose table layout we reproduce, and
// scripts and exporters that parse `ipvsadm -Ln` match that line verbatim. The
// honest part we control is `size=`: lbctl passes the daemon's connection-table
// capacity (IPVS prints its connection hash table size there). lbctl's own version
// is in `lbctl --version` and `lbctl status`.
const VERSION_LINE: &str = "IP Virtual Server version 1.2.1";

/// ipvsadm's `print_largenum`: `%9llu` below 1e8, else `%8llu` + K/M/G/T
/// (÷1e3, 1e6, 1e9, 1e12); `--exact`: every digit, at least 9 wide, one leading space.
pub fn largenum(i: u64, exact: bool) -> String {
    if exact {
        let len = i.to_string().len();
        let w = if len <= 8 { 9 } else { len + 1 };
        return format!("{i:>w$}");
    }
    if i < 100_000_000 {
        format!("{i:>9}")
    } else if i < 1_000_000_000 {
        format!("{:>8}K", i / 1_000)
    } else if i < 100_000_000_000 {
        format!("{:>8}M", i / 1_000_000)
    } else if i < 100_000_000_000_000 {
        format!("{:>8}G", i / 1_000_000_000)
    } else {
        format!("{:>8}T", i / 1_000_000_000_000)
    }
}

fn proto_upper(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

/// ipvsadm's sort order (`ipvs_cmp_services`): family, protocol, address, port.
fn cmp_services(a: &ServiceId, b: &ServiceId) -> Ordering {
    (a.address.is_ipv6(), a.proto.number(), a.address, a.port).cmp(&(
        b.address.is_ipv6(),
        b.proto.number(),
        b.address,
        b.port,
    ))
}

/// The services to list, in order, with their real servers in order.
fn rows<'a>(state: &'a State, opts: &ListOptions) -> Vec<(&'a Service, Vec<&'a RealServer>)> {
    let mut v: Vec<&Service> = state
        .services
        .iter()
        .filter(|s| opts.service.is_none_or(|id| s.id() == id))
        .collect();
    if !opts.nosort {
        v.sort_by(|a, b| cmp_services(&a.id(), &b.id()));
    }
    v.into_iter()
        .map(|s| {
            let mut r: Vec<&RealServer> = s.backends.iter().collect();
            if !opts.nosort {
                r.sort_by_key(|x| x.address);
            }
            (s, r)
        })
        .collect()
}

fn svc_name(id: &ServiceId) -> String {
    format!(
        "{}  {}",
        proto_upper(id.proto),
        addr_port(id.address, id.port)
    )
}

fn header(out: &mut String, opts: &ListOptions) {
    if opts.service.is_none() {
        let _ = writeln!(out, "{VERSION_LINE} (size={})", opts.table_size);
    }
}

/// `ipvsadm -L -n`: configuration from `state`, connection counts from `stats`.
pub fn format_list(state: &State, stats: &StatsView, opts: &ListOptions) -> String {
    let mut out = String::new();
    header(&mut out, opts);
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    for (s, reals) in rows(state, opts) {
        let id = s.id();
        let _ = write!(out, "{} {}", svc_name(&id), scheduler_name(s.scheduler));
        if s.persistence > 0 {
            let _ = write!(out, " persistent {}", s.persistence);
        }
        out.push('\n');
        let st = stats.service(&id);
        for r in reals {
            let b = st.and_then(|x| x.backend(r.address));
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                addr_port(r.address, s.port),
                forward_name(r.forward),
                r.weight,
                b.map_or(0, |b| b.active_conns),
                b.map_or(0, |b| b.inactive_conns),
            );
        }
    }
    out
}

fn counters_table(
    state: &State,
    stats: &StatsView,
    opts: &ListOptions,
    titles: [&str; 5],
    rate: bool,
) -> String {
    let mut out = String::new();
    header(&mut out, opts);
    let _ = writeln!(
        out,
        "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "Prot LocalAddress:Port", titles[0], titles[1], titles[2], titles[3], titles[4]
    );
    out.push_str("  -> RemoteAddress:Port\n");
    let n = |i: u64| largenum(i, opts.exact);
    for (s, reals) in rows(state, opts) {
        let id = s.id();
        let st = stats.service(&id);
        let (c, p, y) = st.map_or((0, 0, 0), |x| (x.conns, x.inpkts, x.inbytes));
        // Out* are 0: with direct routing and tunnelling the replies go from the
        // real servers to the clients without crossing the load balancer.
        let _ = writeln!(
            out,
            "{:<33}{}{}{}{}{}",
            svc_name(&id),
            n(c),
            n(p),
            n(0),
            n(y),
            n(0)
        );
        for r in reals {
            let b = st.and_then(|x| x.backend(r.address));
            let (c, p, y) = b.map_or((0, 0, 0), |x| (x.conns, x.inpkts, x.inbytes));
            let name = addr_port(r.address, s.port);
            if rate {
                // ipvsadm prints the real servers' CPS/InPPS/OutPPS with a plain %8u.
                let _ = writeln!(
                    out,
                    "  -> {name:<28} {c:>8} {p:>8} {:>8}{}{}",
                    0,
                    n(y),
                    n(0)
                );
            } else {
                let _ = writeln!(
                    out,
                    "  -> {name:<28}{}{}{}{}{}",
                    n(c),
                    n(p),
                    n(0),
                    n(y),
                    n(0)
                );
            }
        }
    }
    out
}

/// `ipvsadm -L -n --stats` (with `opts.exact`: `--exact`). OutPkts and OutBytes are
/// always 0: with DR and tunnel forwarding the replies bypass the load balancer.
pub fn format_stats(state: &State, stats: &StatsView, opts: &ListOptions) -> String {
    counters_table(
        state,
        stats,
        opts,
        ["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"],
        false,
    )
}

/// `ipvsadm -L -n --rate` from two samples `secs` apart. OutPPS and OutBPS are
/// always 0, for the same reason as in [`format_stats`].
pub fn format_rate(
    state: &State,
    before: &StatsView,
    after: &StatsView,
    secs: f64,
    opts: &ListOptions,
) -> String {
    counters_table(
        state,
        &rate_view(before, after, secs),
        opts,
        ["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"],
        true,
    )
}

/// `ipvsadm -L -n -c`.
pub fn format_conns(conns: &[ConnEntry]) -> String {
    let mut out = String::from("IPVS connection entries\n");
    let _ = writeln!(
        out,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for c in conns {
        let expire = match c.expires {
            Some(e) => format!("{:02}:{:02}", e / 60, e % 60),
            None => "-".to_string(),
        };
        let backend = c.backend.map_or("-".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            proto_upper(c.proto),
            expire,
            c.state,
            c.client.to_string(),
            c.vip.to_string(),
            backend
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sid(a: &str, port: u16, proto: Proto) -> ServiceId {
        ServiceId {
            address: v4(a),
            port,
            proto,
        }
    }

    fn svc(a: &str, port: u16) -> Service {
        Service {
            address: v4(a),
            port,
            proto: Proto::Tcp,
            scheduler: Scheduler::Mh,
            persistence: 0,
            backends: Vec::new(),
            health: None,
        }
    }

    fn real(a: &str, weight: u32, forward: Forward) -> RealServer {
        RealServer {
            address: v4(a),
            weight,
            forward,
            mac: None,
            gue_port: crate::DEFAULT_GUE_PORT,
            health: None,
        }
    }

    fn base() -> State {
        let mut s = svc("10.0.0.1", 80);
        s.backends.push(real("192.168.1.2", 1, Forward::Dr));
        State {
            services: vec![s],
            ..Default::default()
        }
    }

    /// Applies `op`, expects an error containing `msg`, and the state untouched.
    fn refused(op: Op, msg: &str) {
        let mut st = base();
        let before = st.clone();
        let e = apply(&mut st, &op).expect_err("must be refused");
        assert!(format!("{e:#}").contains(msg), "{e:#} lacks {msg:?}");
        assert_eq!(st, before, "state changed by a refused {op:?}");
    }

    fn args(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    fn parse(s: &str) -> Result<(Command, Vec<String>)> {
        parse_ipvsadm_args(&args(s), false)
    }

    fn parse_err(s: &str) -> String {
        format!("{:#}", parse(s).expect_err(s))
    }

    #[test]
    fn apply_adds_edits_and_deletes() {
        let mut st = base();
        let id = sid("10.0.0.1", 80, Proto::Tcp);
        apply(
            &mut st,
            &Op::AddReal {
                svc: id,
                real: real("192.168.1.3", 2, Forward::Tun),
            },
        )
        .unwrap();
        apply(
            &mut st,
            &Op::EditReal {
                svc: id,
                address: v4("192.168.1.3"),
                weight: Some(0),
                forward: None,
            },
        )
        .unwrap();
        let r = &st.services[0].backends[1];
        assert_eq!((r.weight, r.forward), (0, Forward::Tun));
        apply(
            &mut st,
            &Op::EditService {
                id,
                scheduler: Some(Scheduler::Wrr),
                persistence: None,
            },
        )
        .unwrap();
        assert_eq!(st.services[0].scheduler, Scheduler::Wrr);
        apply(
            &mut st,
            &Op::EditService {
                id,
                scheduler: None,
                persistence: Some(300),
            },
        )
        .unwrap();
        assert_eq!(
            (st.services[0].scheduler, st.services[0].persistence),
            (Scheduler::Wrr, 300)
        );
        apply(
            &mut st,
            &Op::DelReal {
                svc: id,
                address: v4("192.168.1.2"),
            },
        )
        .unwrap();
        assert_eq!(st.services[0].backends.len(), 1);
        apply(&mut st, &Op::AddService(svc("10.0.0.2", 443))).unwrap();
        apply(&mut st, &Op::DelService(id)).unwrap();
        assert_eq!(st.services.len(), 1);
        st.tunnel.mtu = Some(1400);
        apply(&mut st, &Op::Clear).unwrap();
        assert!(st.services.is_empty());
        assert_eq!(st.tunnel.mtu, Some(1400), "-C keeps the tunnel settings");
    }

    #[test]
    fn apply_errors_leave_state_unchanged() {
        let id = sid("10.0.0.1", 80, Proto::Tcp);
        let missing = sid("10.0.0.9", 80, Proto::Tcp);
        refused(
            Op::AddService(svc("10.0.0.1", 80)),
            "service tcp 10.0.0.1:80 already exists",
        );
        refused(
            Op::EditService {
                id: missing,
                scheduler: Some(Scheduler::Rr),
                persistence: None,
            },
            "No such service tcp 10.0.0.9:80",
        );
        // Same address, other protocol: a different service.
        refused(
            Op::DelService(sid("10.0.0.1", 80, Proto::Udp)),
            "No such service udp 10.0.0.1:80",
        );
        refused(
            Op::AddReal {
                svc: missing,
                real: real("192.168.1.5", 1, Forward::Dr),
            },
            "No such service tcp 10.0.0.9:80",
        );
        refused(
            Op::AddReal {
                svc: id,
                real: real("192.168.1.2", 5, Forward::Tun),
            },
            "destination 192.168.1.2 already exists in service tcp 10.0.0.1:80",
        );
        refused(
            Op::AddReal {
                svc: id,
                real: RealServer {
                    address: "2001:db8::2".parse().unwrap(),
                    ..real("192.168.1.2", 1, Forward::Dr)
                },
            },
            "is IPv6 but service tcp 10.0.0.1:80 is IPv4",
        );
        refused(
            Op::AddReal {
                svc: id,
                real: real("192.168.1.7", 65536, Forward::Dr),
            },
            "illegal weight 65536",
        );
        refused(
            Op::EditReal {
                svc: id,
                address: v4("192.168.1.9"),
                weight: Some(3),
                forward: None,
            },
            "No such destination 192.168.1.9 in service tcp 10.0.0.1:80",
        );
        refused(
            Op::EditReal {
                svc: id,
                address: v4("192.168.1.2"),
                weight: Some(70000),
                forward: Some(Forward::Tun),
            },
            "illegal weight 70000",
        );
        refused(
            Op::DelReal {
                svc: id,
                address: v4("192.168.1.9"),
            },
            "No such destination 192.168.1.9",
        );
        refused(
            Op::EditService {
                id,
                scheduler: Some(Scheduler::Rr),
                persistence: Some(MAX_PERSISTENCE + 1),
            },
            "illegal persistence timeout",
        );
        let mut dup = svc("10.0.0.3", 80);
        dup.backends = vec![
            real("192.168.1.2", 1, Forward::Dr),
            real("192.168.1.2", 1, Forward::Dr),
        ];
        refused(
            Op::AddService(dup),
            "destination 192.168.1.2 already exists",
        );
    }

    #[test]
    fn apply_all_is_all_or_nothing() {
        let mut st = base();
        let before = st.clone();
        let ops = vec![
            Op::AddService(svc("10.0.0.2", 80)),
            Op::AddService(svc("10.0.0.1", 80)),
        ];
        let e = apply_all(&mut st, &ops).unwrap_err();
        assert!(format!("{e:#}").starts_with("operation 2: service tcp 10.0.0.1:80 already"));
        assert_eq!(st, before);
        apply_all(&mut st, &ops[..1]).unwrap();
        assert_eq!(st.services.len(), 2);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr_port("10.0.0.1:80").unwrap(),
            (v4("10.0.0.1"), Some(80))
        );
        assert_eq!(parse_addr_port("10.0.0.1").unwrap(), (v4("10.0.0.1"), None));
        assert_eq!(
            parse_addr_port("[2001:db8::1]:443").unwrap(),
            ("2001:db8::1".parse().unwrap(), Some(443))
        );
        assert_eq!(
            parse_addr_port("2001:db8::1").unwrap(),
            ("2001:db8::1".parse().unwrap(), None)
        );
        for bad in [
            "x",
            "www.example.com:80",
            "10.0.0.1:http",
            "10.0.0.1:70000",
            "[::1",
            "[::1]80",
            "",
        ] {
            assert!(parse_addr_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            addr_port("2001:db8::1".parse().unwrap(), 80),
            "[2001:db8::1]:80"
        );
    }

    #[test]
    fn command_line_ops() {
        let (c, w) = parse("-A -t 10.0.0.1:80 -s rr -p").unwrap();
        assert!(w.is_empty());
        assert_eq!(
            c,
            Command::Op(Op::AddService(Service {
                scheduler: Scheduler::Rr,
                persistence: 300,
                ..svc("10.0.0.1", 80)
            }))
        );
        // -p takes the next word only if it is not an option; default scheduler mh.
        let (c, _) = parse("-A -u [2001:db8::1]:53 -p -s sh").unwrap();
        let Command::Op(Op::AddService(s)) = c else {
            panic!()
        };
        assert_eq!(
            (s.proto, s.port, s.scheduler, s.persistence),
            (Proto::Udp, 53, Scheduler::Sh, 300)
        );
        assert_eq!(
            parse("-A -t 10.0.0.1:80").unwrap().0,
            Command::Op(Op::AddService(svc("10.0.0.1", 80)))
        );
        // -E follows ipvsadm: unspecified scheduler = default, no -p = not persistent.
        assert_eq!(
            parse("--edit-service --tcp-service=10.0.0.1:80 -p 600")
                .unwrap()
                .0,
            Command::Op(Op::EditService {
                id: sid("10.0.0.1", 80, Proto::Tcp),
                scheduler: Some(Scheduler::Mh),
                persistence: Some(600)
            })
        );
        let id = sid("10.0.0.1", 80, Proto::Tcp);
        assert_eq!(
            parse("-a -t 10.0.0.1:80 -r 192.168.1.2 -i -w 5").unwrap().0,
            Command::Op(Op::AddReal {
                svc: id,
                real: real("192.168.1.2", 5, Forward::Tun)
            })
        );
        let (c, _) = parse(
            "-a -t 10.0.0.1:80 -r 192.168.1.2:80 -i --gue --tun-port 7000 --mac 02:00:00:00:00:01",
        )
        .unwrap();
        let Command::Op(Op::AddReal { real: r, .. }) = c else {
            panic!()
        };
        assert_eq!(
            (r.forward, r.gue_port, r.weight, r.mac.unwrap().to_string()),
            (Forward::Gue, 7000, 1, "02:00:00:00:00:01".to_string())
        );
        // -e: weight defaults to 1 like ipvsadm; the forwarding method stays unless given.
        assert_eq!(
            parse("-e -t 10.0.0.1:80 -r 192.168.1.2 -w 0").unwrap().0,
            Command::Op(Op::EditReal {
                svc: id,
                address: v4("192.168.1.2"),
                weight: Some(0),
                forward: None
            })
        );
        assert_eq!(
            parse("-e -t 10.0.0.1:80 -r 192.168.1.2 -g").unwrap().0,
            Command::Op(Op::EditReal {
                svc: id,
                address: v4("192.168.1.2"),
                weight: Some(1),
                forward: Some(Forward::Dr)
            })
        );
        assert_eq!(
            parse("-d -t 10.0.0.1:80 -r 192.168.1.2").unwrap().0,
            Command::Op(Op::DelReal {
                svc: id,
                address: v4("192.168.1.2")
            })
        );
        assert_eq!(
            parse("-D -t 10.0.0.1:80").unwrap().0,
            Command::Op(Op::DelService(id))
        );
        assert_eq!(parse("-C").unwrap().0, Command::Op(Op::Clear));
        // Bundled short options and attached values.
        assert_eq!(
            parse("-a -t 10.0.0.1:80 -r192.168.1.2 -w7").unwrap().0,
            Command::Op(Op::AddReal {
                svc: id,
                real: real("192.168.1.2", 7, Forward::Dr)
            })
        );
    }

    #[test]
    fn command_line_other_commands() {
        assert_eq!(
            parse("-Ln").unwrap().0,
            Command::List(ListRequest::default())
        );
        let (c, _) = parse("-L -n --stats --exact -t 10.0.0.1:80").unwrap();
        assert_eq!(
            c,
            Command::List(ListRequest {
                format: ListFormat::Stats,
                options: ListOptions {
                    service: Some(sid("10.0.0.1", 80, Proto::Tcp)),
                    exact: true,
                    ..Default::default()
                }
            })
        );
        assert!(matches!(
            parse("-l -n --rate").unwrap().0,
            Command::List(ListRequest {
                format: ListFormat::Rate,
                ..
            })
        ));
        assert!(matches!(
            parse("-lnc").unwrap().0,
            Command::List(ListRequest {
                format: ListFormat::Conns,
                ..
            })
        ));
        assert_eq!(parse("-Z").unwrap().0, Command::Zero(None));
        assert_eq!(
            parse("-Z -u 10.0.0.1:53").unwrap().0,
            Command::Zero(Some(sid("10.0.0.1", 53, Proto::Udp)))
        );
        assert_eq!(parse("-S -n").unwrap().0, Command::Save);
        assert_eq!(parse("-Sn").unwrap().0, Command::Save);
        assert_eq!(parse("-R").unwrap().0, Command::Restore);
    }

    #[test]
    fn command_line_refusals_name_the_flag() {
        for (line, needle) in [
            (
                "-A -t 10.0.0.1:80 -m",
                "-m (masquerading, NAT) is not supported",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -m -w 1",
                "-m (masquerading",
            ),
            (
                "-A -f 1 -s rr",
                "-f (firewall-mark services) is not supported",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -x 100",
                "-x (connection thresholds)",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -y 5",
                "-y (connection thresholds)",
            ),
            (
                "-A -t 10.0.0.1:80 -p 300 -M 255.255.255.0",
                "-M (persistence netmask)",
            ),
            ("-A -t 10.0.0.1:80 --pe sip", "--pe (persistence engines)"),
            ("-A -t 10.0.0.1:80 -o", "-o (one-packet scheduling)"),
            ("-A -t 10.0.0.1:80 -s mh -b mh-port", "-b (scheduler flags)"),
            (
                "--start-daemon master",
                "--start-daemon (IPVS connection synchronisation",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -i --tun-type gue --tun-csum",
                "--tun-csum is not supported",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -i --tun-type gre",
                "tunnel type gre is not supported",
            ),
            (
                "-A -t 10.0.0.1:80 -s fo",
                "scheduler \"fo\" is not supported",
            ),
            ("-A -t 10.0.0.1:80 -w 3", "option -w is not valid with -A"),
            (
                "-a -t 10.0.0.1:80 -s rr -r 192.168.1.2",
                "option -s is not valid with -a",
            ),
            (
                "-A -a -t 10.0.0.1:80",
                "only one command at a time: -A and -a",
            ),
            ("-t 10.0.0.1:80", "no command given"),
            ("-A", "-A needs a service"),
            ("-a -t 10.0.0.1:80", "-a needs a real server"),
            ("-a -t 10.0.0.1:80 -r x", "\"x\" is not a numeric address"),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2:8080",
                "port 8080 differs from the service port 80",
            ),
            (
                "-a -t 10.0.0.1:80 -r 2001:db8::2",
                "is IPv6 but service tcp 10.0.0.1:80 is IPv4",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -w 65536",
                "-w 65536: illegal weight",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -g -i",
                "conflicting forwarding methods -g and -i",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 -g --gue",
                "--gue needs -i (tunnel), not -g",
            ),
            (
                "-a -t 10.0.0.1:80 -r 192.168.1.2 --tun-port 7000",
                "--tun-port applies to GUE",
            ),
            (
                "-e -t 10.0.0.1:80 -r 192.168.1.2 -i --gue --tun-port 7000",
                "option --tun-port is not valid with -e",
            ),
            ("-A -t 10.0.0.1:80 -p 0", "-p 0: illegal timeout"),
            (
                "-A -t 10.0.0.1:80 -s rr -s wrr",
                "option -s was given more than once",
            ),
            ("-L --stats --rate", "only one of --stats, --rate and -c"),
            (
                "-A -t 10.0.0.1:80 --frobnicate",
                "unknown option --frobnicate",
            ),
            ("-A -t 10.0.0.1:80 -q", "unknown option -q"),
            ("-A -t 10.0.0.1:80 extra", "unexpected argument \"extra\""),
            ("-A -t", "option -t needs a value"),
        ] {
            let e = parse_err(line);
            assert!(e.contains(needle), "{line}: {e:?} lacks {needle:?}");
        }
        // Threshold 0 means "none": accepted (ipvsadm-save of some versions prints it).
        assert!(parse("-a -t 10.0.0.1:80 -r 192.168.1.2 -g -w 1 -x 0 -y 0").is_ok());
        // The GUE options ipvsadm 1.31 saves are understood.
        let (c, _) =
            parse("-a -t 10.0.0.1:80 -r 192.168.1.2:80 -i -w 1 --tun-type gue --tun-port 6081 --tun-nocsum")
                .unwrap();
        let Command::Op(Op::AddReal { real: r, .. }) = c else {
            panic!()
        };
        assert_eq!((r.forward, r.gue_port), (Forward::Gue, 6081));
    }

    #[test]
    fn schedulers_substituted_or_refused() {
        for s in SUBSTITUTED_SCHEDULERS {
            let (sc, w) = parse_scheduler(s, false).unwrap();
            assert_eq!(sc, Scheduler::Mh);
            assert!(
                w.unwrap()
                    .contains(&format!("scheduler {s} is not available yet: using mh"))
            );
            let e = parse_scheduler(s, true).unwrap_err().to_string();
            assert!(
                e.contains(&format!("scheduler {s} is not available yet"))
                    && e.contains("--strict")
            );
        }
        for (n, s) in [
            ("mh", Scheduler::Mh),
            ("sh", Scheduler::Sh),
            ("rr", Scheduler::Rr),
            ("wrr", Scheduler::Wrr),
        ] {
            assert_eq!(parse_scheduler(n, true).unwrap(), (s, None));
        }
    }

    /// What `ipvsadm -S -n` prints on an LVS box with DR and TUN real servers,
    /// weights, persistence and the default `wlc` scheduler.
    const LVS_SAVE: &str = "\
-A -t 192.0.2.10:80 -s wlc
-a -t 192.0.2.10:80 -r 10.1.0.11:80 -g -w 1
-a -t 192.0.2.10:80 -r 10.1.0.12:80 -g -w 3
-a -t 192.0.2.10:80 -r 10.1.0.13:80 -g -w 0
-A -t 192.0.2.10:443 -s wlc -p 1800
-a -t 192.0.2.10:443 -r 10.1.0.11:443 -g -w 1
-a -t 192.0.2.10:443 -r 10.1.0.12:443 -g -w 1
-A -u 192.0.2.53:53 -s rr
-a -u 192.0.2.53:53 -r 10.2.0.1:53 -i -w 1
-a -u 192.0.2.53:53 -r 10.2.0.2:53 -i -w 2
-A -t [2001:db8::10]:80 -s sh -p 300
-a -t [2001:db8::10]:80 -r [2001:db8:1::11]:80 -i -w 1 --tun-type ipip
-a -t [2001:db8::10]:80 -r [2001:db8:1::12]:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
";

    #[test]
    fn parse_realistic_ipvsadm_save() {
        let (ops, warnings) = parse_save(LVS_SAVE, false).unwrap();
        assert_eq!(ops.len(), 13);
        assert_eq!(
            warnings,
            vec![
                "line 1: service tcp 192.0.2.10:80: scheduler wlc is not available yet: using mh (Maglev consistent hashing) instead",
                "line 5: service tcp 192.0.2.10:443: scheduler wlc is not available yet: using mh (Maglev consistent hashing) instead",
            ]
        );
        let mut st = State::default();
        apply_all(&mut st, &ops).unwrap();
        st.validate(256, 4096).unwrap();
        let s = &st.services;
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].scheduler, s[0].persistence), (Scheduler::Mh, 0));
        assert_eq!(
            s[0].backends.iter().map(|r| r.weight).collect::<Vec<_>>(),
            vec![1, 3, 0]
        );
        assert_eq!((s[1].port, s[1].persistence), (443, 1800));
        assert_eq!((s[2].proto, s[2].scheduler), (Proto::Udp, Scheduler::Rr));
        assert!(s[2].backends.iter().all(|r| r.forward == Forward::Tun));
        assert_eq!(s[2].backends[1].weight, 2);
        assert_eq!(
            (
                s[3].scheduler,
                s[3].persistence,
                s[3].backends[0].forward,
                s[3].backends[1].forward
            ),
            (Scheduler::Sh, 300, Forward::Tun, Forward::Gue)
        );

        let e = format!("{:#}", parse_save(LVS_SAVE, true).unwrap_err());
        assert!(
            e.starts_with("line 1: service tcp 192.0.2.10:80: scheduler wlc"),
            "{e}"
        );
        assert!(e.contains("--strict"), "{e}");
    }

    #[test]
    fn parse_save_refusals_name_line_and_flag() {
        let text = "# saved\n\n-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -m -w 1\n";
        let e = format!("{:#}", parse_save(text, false).unwrap_err());
        assert!(
            e.starts_with("line 4: -m (masquerading, NAT) is not supported"),
            "{e}"
        );
        let e = format!("{:#}", parse_save("-A -f 7 -s wlc\n", false).unwrap_err());
        assert!(e.starts_with("line 1: -f (firewall-mark services)"), "{e}");
        let e = format!(
            "{:#}",
            parse_save(
                "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g -w 1 -x 500 -y 100\n",
                false
            )
            .unwrap_err()
        );
        assert!(e.starts_with("line 2: -x (connection thresholds)"), "{e}");
        let e = format!("{:#}", parse_save("-L -n\n", false).unwrap_err());
        assert!(
            e.contains("line 1: -L is not a command a saved table holds"),
            "{e}"
        );
    }

    fn rich_state() -> State {
        let mut a = svc("10.0.0.1", 80);
        a.scheduler = Scheduler::Wrr;
        a.persistence = 300;
        a.backends = vec![
            real("192.168.1.2", 1, Forward::Dr),
            real("192.168.1.3", 0, Forward::Tun),
            RealServer {
                mac: Some("02:00:00:00:00:01".parse().unwrap()),
                gue_port: 7000,
                ..real("192.168.1.4", 65535, Forward::Gue)
            },
            real("192.168.1.5", 2, Forward::Gue),
        ];
        let mut b = Service {
            address: "2001:db8::1".parse().unwrap(),
            port: 0,
            proto: Proto::Udp,
            scheduler: Scheduler::Sh,
            persistence: 86400,
            backends: vec![],
            health: None,
        };
        b.backends.push(RealServer {
            address: "2001:db8::2".parse().unwrap(),
            ..real("0.0.0.0", 1, Forward::Tun)
        });
        State {
            services: vec![a, b, svc("10.0.0.2", 53)],
            ..Default::default()
        }
    }

    #[test]
    fn save_format_exact() {
        let mut st = base();
        st.services[0].persistence = 300;
        assert_eq!(
            format_save(&st),
            "-A -t 10.0.0.1:80 -s mh -p 300\n-a -t 10.0.0.1:80 -r 192.168.1.2:80 -g -w 1\n"
        );
        let text = format_save(&rich_state());
        assert_eq!(
            text,
            "\
-A -t 10.0.0.1:80 -s wrr -p 300
-a -t 10.0.0.1:80 -r 192.168.1.2:80 -g -w 1
-a -t 10.0.0.1:80 -r 192.168.1.3:80 -i -w 0
-a -t 10.0.0.1:80 -r 192.168.1.4:80 -i --gue -w 65535 --tun-port 7000 --mac 02:00:00:00:00:01
-a -t 10.0.0.1:80 -r 192.168.1.5:80 -i --gue -w 2
-A -u [2001:db8::1]:0 -s sh -p 86400
-a -u [2001:db8::1]:0 -r [2001:db8::2]:0 -i -w 1
-A -t 10.0.0.2:53 -s mh
"
        );
    }

    #[test]
    fn save_round_trip() {
        for st in [State::default(), base(), rich_state()] {
            let (ops, warnings) = parse_save(&format_save(&st), true).unwrap();
            assert!(warnings.is_empty());
            let mut back = State::default();
            apply_all(&mut back, &ops).unwrap();
            assert_eq!(back, st);
        }
    }

    fn stats_for(st: &State) -> StatsView {
        StatsView {
            services: st
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| ServiceStats {
                    id: s.id(),
                    scheduler: s.scheduler,
                    persistence: s.persistence,
                    conns: 1000 * (i as u64 + 1),
                    inpkts: 123_456_789,
                    inbytes: 98_765_432_100,
                    backends: s
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(j, r)| BackendStats {
                            address: r.address,
                            forward: r.forward,
                            weight: r.weight,
                            conns: 10 + j as u64,
                            inpkts: 99_999_999,
                            inbytes: 1_500_000_000_000_000,
                            active_conns: 5 + j as u64,
                            inactive_conns: j as u64,
                        })
                        .collect(),
                })
                .collect(),
            reasons: vec![("tx".into(), "dr".into(), 7)],
        }
    }

    #[test]
    fn list_golden() {
        let st = rich_state();
        let got = format_list(&st, &stats_for(&st), &ListOptions::default());
        // printf("%s  %s", proto, addr) " %s" sched [" persistent %u"];
        // "  -> %-28s %-7s %-6d %-10u %-10u". Sorted: IPv4 before IPv6, TCP before UDP.
        let want = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.1:80 wrr persistent 300
  -> 192.168.1.2:80               Route   1      5          0         
  -> 192.168.1.3:80               Tunnel  0      6          1         
  -> 192.168.1.4:80               Tunnel  65535  7          2         
  -> 192.168.1.5:80               Tunnel  2      8          3         
TCP  10.0.0.2:53 mh
UDP  [2001:db8::1]:0 sh persistent 86400
  -> [2001:db8::2]:0              Tunnel  1      5          0         
";
        assert_eq!(got, want);

        // One service: no version line; --nosort keeps the configuration order.
        let mut st2 = st.clone();
        st2.services[0].backends.reverse();
        let opts = ListOptions {
            service: Some(sid("10.0.0.1", 80, Proto::Tcp)),
            nosort: true,
            table_size: 1048576,
            ..Default::default()
        };
        let got = format_list(&st2, &StatsView::default(), &opts);
        assert_eq!(
            got,
            "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.1:80 wrr persistent 300
  -> 192.168.1.5:80               Tunnel  2      0          0         
  -> 192.168.1.4:80               Tunnel  65535  0          0         
  -> 192.168.1.3:80               Tunnel  0      0          0         
  -> 192.168.1.2:80               Route   1      0          0         
"
        );
        let empty = format_list(
            &State::default(),
            &StatsView::default(),
            &ListOptions {
                table_size: 1048576,
                ..Default::default()
            },
        );
        assert_eq!(
            empty,
            "IP Virtual Server version 1.2.1 (size=1048576)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        );
    }

    #[test]
    fn stats_golden() {
        let mut st = base();
        st.services[0]
            .backends
            .push(real("192.168.1.3", 1, Forward::Dr));
        let stats = stats_for(&st);
        // "%-33s %8s %8s %8s %8s %8s" title; rows "%-33s" / "  -> %-28s" then
        // print_largenum: "%9llu" below 1e8, else "%8llu" + K/M/G/T.
        let want = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.1:80                      1000  123456K        0   98765M        0
  -> 192.168.1.2:80                     10 99999999        0    1500T        0
  -> 192.168.1.3:80                     11 99999999        0    1500T        0
";
        assert_eq!(format_stats(&st, &stats, &ListOptions::default()), want);

        let exact = ListOptions {
            exact: true,
            ..Default::default()
        };
        let want = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.1:80                      1000 123456789        0 98765432100        0
  -> 192.168.1.2:80                     10 99999999        0 1500000000000000        0
  -> 192.168.1.3:80                     11 99999999        0 1500000000000000        0
";
        assert_eq!(format_stats(&st, &stats, &exact), want);
    }

    #[test]
    fn largenum_thresholds() {
        for (n, s) in [
            (0, "        0"),
            (99_999_999, " 99999999"),
            (100_000_000, "  100000K"),
            (999_999_999, "  999999K"),
            (1_000_000_000, "    1000M"),
            (99_999_999_999, "   99999M"),
            (100_000_000_000, "     100G"),
            (100_000_000_000_000, "     100T"),
        ] {
            assert_eq!(largenum(n, false), s, "{n}");
        }
        assert_eq!(largenum(5, true), "        5");
        assert_eq!(largenum(123_456_789, true), " 123456789");
    }

    #[test]
    fn rate_golden() {
        let st = base();
        let id = st.services[0].id();
        let sample = |c, p, b| StatsView {
            services: vec![ServiceStats {
                id,
                scheduler: Scheduler::Mh,
                persistence: 0,
                conns: c,
                inpkts: p,
                inbytes: b,
                backends: vec![BackendStats {
                    address: v4("192.168.1.2"),
                    forward: Forward::Dr,
                    weight: 1,
                    conns: c,
                    inpkts: p,
                    inbytes: b,
                    active_conns: 0,
                    inactive_conns: 0,
                }],
            }],
            reasons: vec![],
        };
        let got = format_rate(
            &st,
            &sample(100, 1000, 1_000_000),
            &sample(300, 5000, 3_001_000_000),
            2.0,
            &ListOptions::default(),
        );
        let want = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.0.0.1:80                       100     2000        0    1500M        0
  -> 192.168.1.2:80                    100     2000        0    1500M        0
";
        assert_eq!(got, want);
        // A counter that went backwards (zeroed in between) gives 0, not a wrap.
        let got = rate_view(&sample(300, 5000, 9), &sample(0, 0, 0), 1.0);
        assert_eq!(got.services[0].conns, 0);
    }

    #[test]
    fn conns_golden() {
        let c = ConnEntry {
            proto: Proto::Tcp,
            client: "198.51.100.7:40001".parse().unwrap(),
            vip: "10.0.0.1:80".parse().unwrap(),
            backend: Some("192.168.1.2:80".parse().unwrap()),
            state: "ESTABLISHED".into(),
            expires: Some(899),
        };
        let gone = ConnEntry {
            proto: Proto::Udp,
            client: "[2001:db8::7]:5353".parse().unwrap(),
            vip: "[2001:db8::10]:53".parse().unwrap(),
            backend: None,
            state: "UDP".into(),
            expires: None,
        };
        // "%-3s %-6s %-11s %-18s %-18s %s", expire "%02d:%02d".
        assert_eq!(
            format_conns(&[c, gone]),
            "\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:59  ESTABLISHED 198.51.100.7:40001 10.0.0.1:80        192.168.1.2:80
UDP -      UDP         [2001:db8::7]:5353 [2001:db8::10]:53  -
"
        );
    }
}
