//! Health-check configuration: the `[service.health]` table and the per-backend
//! `health` override, with the defaults operators know from HAProxy and keepalived
//! (shared/CONVENTIONS.md), and their resolution into one [`Probe`] per backend.
//!
//! ```toml
//! [[service]]
//! address = "10.0.0.100"
//! port = 80
//! proto = "tcp"
//! [service.health]
//! type = "http"            # tcp (default), http, https, udp, exec, none
//! interval = 1             # seconds, or "500ms", "2s", "1m"
//! fall = 2
//! on_down = "reset"        # drop the backend's connection entries when it goes DOWN
//! warmup = 30              # ramp the weight up over 30 s after a recovery
//! sorry = { address = "10.0.0.99", mac = "02:00:00:00:00:99" }
//! [service.health.http]
//! path = "/healthz"
//! expect_status = ["200-299", 301]
//! body_contains = "ok"
//! [service.health.passive]
//! down_after_reports = 2
//!
//! [[service.backends]]
//! address = "10.0.0.11"
//! health = { port = 8080, http = { path = "/ready" } }   # per-backend override
//! ```
//!
//! Defaults (each documented on its field):
//!
//! | key | default | from |
//! |---|---|---|
//! | `type` | `tcp` (when a `health` table exists) | HAProxy `check`, keepalived `TCP_CHECK` |
//! | `interval` | 2 s | HAProxy `inter 2000` |
//! | `timeout` | min(5 s, interval) | keepalived `connect_timeout 5`, HAProxy caps by `inter` |
//! | `rise` / `fall` | 2 / 3 consecutive checks | HAProxy |
//! | `retry` | 0 | keepalived's `retry 1` is its only debounce; `fall` plays that role here |
//! | `delay_before_retry` | 1 s, 3 s for http/https | keepalived |
//! | `port` / `address` | the service's port / the backend's address | HAProxy `port`/`addr` |
//! | `tcp.mode` | `half-open` (a SYN; a SYN-ACK passes, the kernel resets it); `connect` = a full handshake then an RST | F5 `tcp_half_open`; keepalived/HAProxy connect |
//! | `http.method`, `http.path` | `GET`, `/` | keepalived `HTTP_GET` |
//! | `http.expect_status` | `200-299` | keepalived `status_code` |
//! | `http.tls_verify` | true (https) | |
//! | `udp.payload` / `udp.expect` | empty datagram / any reply | |
//! | `exec.timeout` | the check's `timeout` | keepalived `misc_timeout` |
//! | `on_down` | `keep` (flows finish or time out) | IPVS `expire_nodest_conn=0` |
//! | `warmup` | 0 (off) | HAProxy `slowstart` |
//! | `passive.down_after_reports` | 1 | DPVS `down-retry 1` |
//! | `passive.down_wait` | 3 s | DPVS `down-wait 3` |
//! | `passive.inhibit_min` / `inhibit_max` | 5 s / 3600 s | DPVS |
//! | `passive.stuck_handshake_pct` / `stuck_handshake_min_flows` | 80 / 10 (TCP) | |

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::{RealServer, Service};

/// A duration in the configuration, kept in milliseconds. Written as seconds (`2`,
/// `0.5`) or as a string with a unit (`"500ms"`, `"2s"`, `"1m"`, `"1h"`); serialized
/// as whole seconds when it is a whole number of seconds, else as `"<n>ms"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub u64);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(s * 1000)
    }
    pub const fn ms(self) -> u64 {
        self.0
    }
    pub const fn std(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl FromStr for Dur {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1000.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000.0)
        } else if let Some(n) = t.strip_suffix('h') {
            (n, 3_600_000.0)
        } else {
            (t, 1000.0)
        };
        let v: f64 = num.trim().parse().map_err(|_| {
            anyhow::anyhow!("{s:?}: expected seconds or a number with ms, s, m or h")
        })?;
        Dur::from_f64_ms(v * scale).ok_or_else(|| anyhow::anyhow!("{s:?}: not a valid duration"))
    }
}

impl Dur {
    fn from_f64_ms(ms: f64) -> Option<Self> {
        (ms.is_finite() && (0.0..=1e15).contains(&ms)).then(|| Dur(ms.round() as u64))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("seconds, or a string like \"500ms\", \"2s\", \"1m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                v.checked_mul(1000)
                    .map(Dur)
                    .ok_or_else(|| E::custom(format!("{v} s is too long")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    return Err(E::custom(format!("{v}: a duration cannot be negative")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Dur::from_f64_ms(v * 1000.0)
                    .ok_or_else(|| E::custom(format!("{v}: not a valid number of seconds")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse()
                    .map_err(|e: anyhow::Error| E::custom(format!("{e:#}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The kind of active check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// The port accepts connections: a half-open SYN probe by default, or a full
    /// connect (`tcp.mode`; keepalived `TCP_CHECK`, HAProxy `check`).
    #[default]
    Tcp,
    /// HTTP request, status (and optionally body) checked (keepalived `HTTP_GET`).
    Http,
    /// HTTP over TLS (keepalived `SSL_GET`).
    Https,
    /// A datagram sent, a reply expected.
    Udp,
    /// A command; exit status 0 = healthy (keepalived `MISC_CHECK`).
    Exec,
    /// No active check (passive detection only).
    None,
}

impl CheckType {
    /// The configuration's name of the type (also the exporter's `type` label).
    pub const fn label(self) -> &'static str {
        match self {
            CheckType::Tcp => "tcp",
            CheckType::Http => "http",
            CheckType::Https => "https",
            CheckType::Udp => "udp",
            CheckType::Exec => "exec",
            CheckType::None => "none",
        }
    }
}

impl fmt::Display for CheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An accepted HTTP status or range of them: `200`, `"200"`, `"200-299"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub fn contains(&self, s: u16) -> bool {
        (self.lo..=self.hi).contains(&s)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for StatusRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let num = |p: &str| -> Result<u16> {
            let v: u16 = p.trim().parse().map_err(|_| {
                anyhow::anyhow!("{s:?}: expected a status (200) or a range (200-299)")
            })?;
            if !(100..=599).contains(&v) {
                bail!("{s:?}: {v} is not an HTTP status (100-599)");
            }
            Ok(v)
        };
        let r = match s.split_once('-') {
            Some((a, b)) => StatusRange {
                lo: num(a)?,
                hi: num(b)?,
            },
            None => {
                let v = num(s)?;
                StatusRange { lo: v, hi: v }
            }
        };
        if r.lo > r.hi {
            bail!("{s:?}: the range is empty");
        }
        Ok(r)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an HTTP status (200) or a range (\"200-299\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse()
                    .map_err(|e: anyhow::Error| E::custom(format!("{e:#}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a `tcp` check probes the port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpMode {
    /// A SYN from a raw socket: a SYN-ACK passes (answered with an RST: by the
    /// balancer's XDP program where it comes in through it, else by the kernel, no
    /// socket owning the 4-tuple), an RST or an ICMP error fails. The backend's
    /// application never sees a connection, and it costs a fraction of a connect.
    /// Falls back to `connect` when raw sockets are not allowed (no CAP_NET_RAW).
    #[default]
    HalfOpen,
    /// A full connect, closed with an RST (keepalived `TCP_CHECK`, HAProxy `check`):
    /// also proves the application accepts connections (a full accept queue fails it).
    Connect,
}

impl fmt::Display for TcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcpMode::HalfOpen => "half-open",
            TcpMode::Connect => "connect",
        })
    }
}

/// `tcp` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpCheck {
    /// `half-open` (default) or `connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TcpMode>,
}

/// `http` / `https` settings; every field optional so that a backend can override one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpCheck {
    /// Default `GET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Default `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Host header (and the TLS server name); default the check address[:port].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Accepted statuses; default `["200-299"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<StatusRange>>,
    /// The body (its first 64 KiB) must contain this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Verify the server's certificate against the system's roots (https); default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
}

/// `udp` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpCheck {
    /// The datagram sent; default empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The reply must contain this; default: any reply will do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// `exec` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecCheck {
    /// Run with `/bin/sh -c`; exit status 0 = healthy. Its environment has
    /// `LB_CHECK_ADDRESS`, `LB_CHECK_PORT`, `LB_SERVICE` and `LB_BACKEND`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Killed (with its process group) after this long; default the check's timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// The check parameters a backend can override (`[[service.backends]] health = {…}`):
/// every field of [`ServiceHealth`] that is about the check itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckParams {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_before_retry: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
}

/// What happens to a backend's connection-table entries when it goes DOWN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Left to finish or time out (IPVS's default, `expire_nodest_conn=0`).
    #[default]
    Keep,
    /// Deleted at once: the clients' next packets are balanced again (to a live backend).
    Reset,
}

/// Passive detection (reports from the data plane), DPVS's `dest-check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Passive {
    /// Act on the data plane's reports (default true).
    pub enabled: bool,
    /// Reports (within `down_wait` of each other) that take a backend DOWN; default 1.
    pub down_after_reports: u32,
    /// A backend in DOWN-WAIT with no further report for this long is UP again; 3 s.
    pub down_wait: Dur,
    /// The first hold-down after a failure; doubles on each repeated failure; 5 s.
    pub inhibit_min: Dur,
    /// The longest hold-down; 3600 s.
    pub inhibit_max: Dur,
    /// TCP services: a backend for which at least this share (in %) of the new flows
    /// of a sampling window never completed their handshake is reported; 0 turns it
    /// off. Default 80. Catches what retransmitted SYNs don't: a backend answering
    /// with RST (port closed), whose replies the LB never sees in DR/TUN mode.
    pub stuck_handshake_pct: u32,
    /// …counting only windows with at least this many new flows to the backend; 10.
    pub stuck_handshake_min_flows: u32,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            enabled: true,
            down_after_reports: 1,
            down_wait: Dur::secs(3),
            inhibit_min: Dur::secs(5),
            inhibit_max: Dur::secs(3600),
            stuck_handshake_pct: 80,
            stuck_handshake_min_flows: 10,
        }
    }
}

/// A service's `[service.health]`: the check (the same keys as [`CheckParams`]) and
/// what happens around it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceHealth {
    /// `tcp` (default), `http`, `https`, `udp`, `exec`, `none`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckType>,
    /// Between two checks of a backend; default 2 s (HAProxy `inter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// For one attempt; default min(5 s, interval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Consecutive passed checks that bring a DOWN backend back; default 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Consecutive failed checks that take a backend DOWN; default 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// Extra attempts, `delay_before_retry` apart, before a check counts as failed; 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Default 1 s (3 s for http/https), as keepalived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_before_retry: Option<Dur>,
    /// Check this port instead of the service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Check this address instead of the backend's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// `tcp` checks: `mode = "half-open"` (default) or `"connect"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// `keep` (default) or `reset` the connection entries of a backend that goes DOWN.
    pub on_down: OnDown,
    /// Seconds over which a recovered backend's weight ramps up to its own; 0 = off.
    pub warmup: Dur,
    /// Takes the traffic when every backend is DOWN (else the VIP keeps them all: fail open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sorry: Option<RealServer>,
    /// Passive detection settings.
    pub passive: Passive,
}

impl ServiceHealth {
    /// The check part, as a backend override would write it.
    pub fn params(&self) -> CheckParams {
        CheckParams {
            kind: self.kind,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
            retry: self.retry,
            delay_before_retry: self.delay_before_retry,
            port: self.port,
            address: self.address,
            tcp: self.tcp.clone(),
            http: self.http.clone(),
            udp: self.udp.clone(),
            exec: self.exec.clone(),
        }
    }
}

impl CheckParams {
    /// `self` with `over`'s fields where it has them (nested tables field by field).
    pub fn merged(&self, over: &CheckParams) -> CheckParams {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>) -> Option<T> {
            over.clone().or_else(|| base.clone())
        }
        let tcp = match (&self.tcp, &over.tcp) {
            (Some(b), Some(o)) => Some(TcpCheck {
                mode: pick(&b.mode, &o.mode),
            }),
            (b, o) => pick(b, o),
        };
        let http = match (&self.http, &over.http) {
            (Some(b), Some(o)) => Some(HttpCheck {
                method: pick(&b.method, &o.method),
                path: pick(&b.path, &o.path),
                host: pick(&b.host, &o.host),
                expect_status: pick(&b.expect_status, &o.expect_status),
                body_contains: pick(&b.body_contains, &o.body_contains),
                tls_verify: pick(&b.tls_verify, &o.tls_verify),
            }),
            (b, o) => pick(b, o),
        };
        let udp = match (&self.udp, &over.udp) {
            (Some(b), Some(o)) => Some(UdpCheck {
                payload: pick(&b.payload, &o.payload),
                expect: pick(&b.expect, &o.expect),
            }),
            (b, o) => pick(b, o),
        };
        let exec = match (&self.exec, &over.exec) {
            (Some(b), Some(o)) => Some(ExecCheck {
                command: pick(&b.command, &o.command),
                timeout: pick(&b.timeout, &o.timeout),
            }),
            (b, o) => pick(b, o),
        };
        CheckParams {
            kind: pick(&self.kind, &over.kind),
            interval: pick(&self.interval, &over.interval),
            timeout: pick(&self.timeout, &over.timeout),
            rise: pick(&self.rise, &over.rise),
            fall: pick(&self.fall, &over.fall),
            retry: pick(&self.retry, &over.retry),
            delay_before_retry: pick(&self.delay_before_retry, &over.delay_before_retry),
            port: pick(&self.port, &over.port),
            address: pick(&self.address, &over.address),
            tcp,
            http,
            udp,
            exec,
        }
    }
}

/// Default check interval (HAProxy `inter 2000`).
pub const DEFAULT_INTERVAL: Dur = Dur::secs(2);
/// keepalived's `connect_timeout`; the default timeout is this or the interval, if shorter.
pub const DEFAULT_CONNECT_TIMEOUT: Dur = Dur::secs(5);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_RETRY: u32 = 0;
/// keepalived's `delay_before_retry` (3 s for its HTTP checkers).
pub const DEFAULT_DELAY_BEFORE_RETRY: Dur = Dur::secs(1);
pub const DEFAULT_DELAY_BEFORE_RETRY_HTTP: Dur = Dur::secs(3);
/// keepalived's `status_code` default.
pub const DEFAULT_EXPECT_STATUS: StatusRange = StatusRange { lo: 200, hi: 299 };
/// Shortest accepted interval.
pub const MIN_INTERVAL: Dur = Dur(100);
/// Longest accepted interval or timeout.
pub const MAX_INTERVAL: Dur = Dur::secs(86400);

/// A fully resolved HTTP(S) check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    pub host: String,
    pub expect_status: Vec<StatusRange>,
    pub body_contains: Option<String>,
    pub tls: bool,
    pub tls_verify: bool,
}

/// What is done to check one backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    Tcp {
        mode: TcpMode,
    },
    Http(HttpProbe),
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    Exec {
        command: String,
        timeout: Dur,
    },
}

/// One backend's active check, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedCheck {
    pub kind: CheckType,
    pub probe: Probe,
    /// Where the check goes (port 0 for exec checks without a port).
    pub target: SocketAddr,
    pub interval: Dur,
    pub timeout: Dur,
    pub rise: u32,
    pub fall: u32,
    pub retry: u32,
    pub delay_before_retry: Dur,
}

impl Service {
    /// The active check of backend `r`, defaults applied; `None` when it has none
    /// (no `health` on the service nor the backend, or `type = "none"`). The error
    /// names the field, relative to the service (`health.…` or `backends.health.…`).
    pub fn resolve_check(&self, r: &RealServer) -> Result<Option<ResolvedCheck>> {
        let base = self.health.as_deref().map(ServiceHealth::params);
        let p = match (&base, r.health.as_deref()) {
            (None, None) => return Ok(None),
            (Some(b), None) => b.clone(),
            (None, Some(o)) => o.clone(),
            (Some(b), Some(o)) => b.merged(o),
        };
        let kind = p.kind.unwrap_or_default();
        if kind == CheckType::None {
            return Ok(None);
        }
        let interval = p.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
            bail!("health.interval: {interval} is outside {MIN_INTERVAL}..{MAX_INTERVAL}");
        }
        let timeout = p.timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT.min(interval));
        if timeout.0 == 0 || timeout > MAX_INTERVAL {
            bail!("health.timeout: {timeout} is outside 1ms..{MAX_INTERVAL}");
        }
        let rise = p.rise.unwrap_or(DEFAULT_RISE);
        if !(1..=1000).contains(&rise) {
            bail!("health.rise: {rise} is outside 1..=1000");
        }
        let fall = p.fall.unwrap_or(DEFAULT_FALL);
        if !(1..=1000).contains(&fall) {
            bail!("health.fall: {fall} is outside 1..=1000");
        }
        let retry = p.retry.unwrap_or(DEFAULT_RETRY);
        if retry > 100 {
            bail!("health.retry: {retry} is above 100");
        }
        let is_http = matches!(kind, CheckType::Http | CheckType::Https);
        let delay_before_retry = p.delay_before_retry.unwrap_or(if is_http {
            DEFAULT_DELAY_BEFORE_RETRY_HTTP
        } else {
            DEFAULT_DELAY_BEFORE_RETRY
        });
        if delay_before_retry > MAX_INTERVAL {
            bail!("health.delay_before_retry: {delay_before_retry} is above {MAX_INTERVAL}");
        }
        let address = p.address.unwrap_or(r.address);
        if address.is_unspecified() || address.is_multicast() {
            bail!("health.address: {address} cannot be checked");
        }
        let port = p.port.unwrap_or(self.port);
        if port == 0 && kind != CheckType::Exec {
            bail!(
                "health.port: needed for a {kind} check when the service has no port (port 0 = every port)"
            );
        }
        let target = SocketAddr::new(address, port);
        let probe = match kind {
            CheckType::Tcp => Probe::Tcp {
                mode: p.tcp.as_ref().and_then(|t| t.mode).unwrap_or_default(),
            },
            CheckType::Http | CheckType::Https => {
                let h = p.http.clone().unwrap_or_default();
                let method = h.method.unwrap_or_else(|| "GET".into());
                if method.is_empty()
                    || !method
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    bail!("health.http.method: {method:?} is not an HTTP method");
                }
                let path = h.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    bail!(
                        "health.http.path: {path:?} must start with / and have no spaces or control characters"
                    );
                }
                let host = match h.host {
                    Some(hh) => {
                        if hh.is_empty() || hh.bytes().any(|b| b <= b' ' || b == 0x7f) {
                            bail!("health.http.host: {hh:?} is not a host name");
                        }
                        hh
                    }
                    None => match address {
                        IpAddr::V4(a) => format!("{a}:{port}"),
                        IpAddr::V6(a) => format!("[{a}]:{port}"),
                    },
                };
                let expect_status = h
                    .expect_status
                    .unwrap_or_else(|| vec![DEFAULT_EXPECT_STATUS]);
                if expect_status.is_empty() {
                    bail!("health.http.expect_status: empty: no status would pass");
                }
                if h.body_contains.as_deref() == Some("") {
                    bail!("health.http.body_contains: empty (leave it out to not check the body)");
                }
                Probe::Http(HttpProbe {
                    method,
                    path,
                    host,
                    expect_status,
                    body_contains: h.body_contains,
                    tls: kind == CheckType::Https,
                    tls_verify: h.tls_verify.unwrap_or(true),
                })
            }
            CheckType::Udp => {
                let u = p.udp.clone().unwrap_or_default();
                if u.expect.as_deref() == Some("") {
                    bail!("health.udp.expect: empty (leave it out to accept any reply)");
                }
                Probe::Udp {
                    payload: u.payload.unwrap_or_default().into_bytes(),
                    expect: u.expect.map(String::into_bytes),
                }
            }
            CheckType::Exec => {
                let e = p.exec.clone().unwrap_or_default();
                let command = match e.command {
                    Some(c) if !c.trim().is_empty() => c,
                    _ => bail!("health.exec.command: an exec check needs a command"),
                };
                let t = e.timeout.unwrap_or(timeout);
                if t.0 == 0 || t > MAX_INTERVAL {
                    bail!("health.exec.timeout: {t} is outside 1ms..{MAX_INTERVAL}");
                }
                Probe::Exec {
                    command,
                    timeout: t,
                }
            }
            CheckType::None => unreachable!("handled above"),
        };
        Ok(Some(ResolvedCheck {
            kind,
            probe,
            target,
            interval,
            timeout,
            rise,
            fall,
            retry,
            delay_before_retry,
        }))
    }

    /// The service's passive settings (the defaults without a `health` table).
    pub fn passive(&self) -> Passive {
        self.health
            .as_ref()
            .map(|h| h.passive.clone())
            .unwrap_or_default()
    }

    /// Checks the `health` tables of the service and its backends; errors are
    /// relative to the service (`health.…`, `backends[j] (addr).health.…`).
    pub fn validate_health(&self) -> Result<()> {
        if let Some(h) = &self.health {
            let p = &h.passive;
            if p.down_after_reports == 0 {
                bail!("health.passive.down_after_reports: must be at least 1");
            }
            if p.inhibit_min.0 == 0 {
                bail!("health.passive.inhibit_min: must be more than 0");
            }
            if p.stuck_handshake_pct > 100 {
                bail!(
                    "health.passive.stuck_handshake_pct: {} is above 100",
                    p.stuck_handshake_pct
                );
            }
            if p.stuck_handshake_min_flows == 0 {
                bail!("health.passive.stuck_handshake_min_flows: must be at least 1");
            }
            if p.inhibit_min > p.inhibit_max {
                bail!(
                    "health.passive.inhibit_min: {} is above inhibit_max {}",
                    p.inhibit_min,
                    p.inhibit_max
                );
            }
            if p.inhibit_max > MAX_INTERVAL || p.down_wait > MAX_INTERVAL {
                bail!("health.passive: durations are limited to {MAX_INTERVAL}");
            }
            if h.warmup > MAX_INTERVAL {
                bail!("health.warmup: {} is above {MAX_INTERVAL}", h.warmup);
            }
            if let Some(s) = &h.sorry {
                if s.address.is_ipv4() != self.address.is_ipv4() {
                    bail!("health.sorry.address: family differs from the VIP's");
                }
                if s.address.is_unspecified() || s.address.is_multicast() {
                    bail!(
                        "health.sorry.address: {} cannot be a real server",
                        s.address
                    );
                }
                if self.backends.iter().any(|r| r.address == s.address) {
                    bail!(
                        "health.sorry.address: {} is also a backend of the service",
                        s.address
                    );
                }
                if s.health.is_some() {
                    bail!("health.sorry.health: the sorry server is not checked");
                }
                if s.forward == super::Forward::Gue && s.gue_port == 0 {
                    bail!("health.sorry.gue_port: must not be 0");
                }
            }
        }
        for (j, r) in self.backends.iter().enumerate() {
            self.resolve_check(r).map_err(|e| {
                let which = if r.health.is_some() {
                    format!("backends[{j}] ({}).", r.address)
                } else {
                    String::new()
                };
                anyhow::anyhow!("{which}{e:#}")
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    fn parse(toml_text: &str) -> Result<State> {
        let s: State = toml::from_str(toml_text)?;
        s.validate(16, 64)?;
        Ok(s)
    }

    const BASE: &str = r#"
[[service]]
address = "10.0.0.100"
port = 80
proto = "tcp"
"#;

    fn with(extra: &str) -> String {
        format!("{BASE}{extra}")
    }

    #[test]
    fn durations_parse_in_every_form() {
        for (s, ms) in [
            ("2", 2000),
            ("0.5", 500),
            ("500ms", 500),
            ("2s", 2000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1.5s", 1500),
        ] {
            assert_eq!(s.parse::<Dur>().unwrap(), Dur(ms), "{s}");
        }
        assert!("fast".parse::<Dur>().is_err());
        assert!("-1".parse::<Dur>().is_err());
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct T {
            d: Dur,
        }
        for (t, ms) in [("d = 3", 3000), ("d = 0.25", 250), ("d = \"750ms\"", 750)] {
            let v: T = toml::from_str(t).unwrap();
            assert_eq!(v.d, Dur(ms));
            let back: T = toml::from_str(&toml::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, v, "round trip of {t}");
        }
    }

    #[test]
    fn defaults_are_haproxy_and_keepalived_ones() {
        let s = parse(&with(
            r#"
[service.health]
[[service.backends]]
address = "10.0.0.11"
mac = "02:00:00:00:00:0b"
"#,
        ))
        .unwrap();
        let svc = &s.services[0];
        let c = svc.resolve_check(&svc.backends[0]).unwrap().unwrap();
        assert_eq!(c.kind, CheckType::Tcp);
        assert_eq!(
            c.probe,
            Probe::Tcp {
                mode: TcpMode::HalfOpen
            }
        );
        assert_eq!(c.interval, Dur::secs(2));
        assert_eq!(
            c.timeout,
            Dur::secs(2),
            "min(connect_timeout 5 s, interval)"
        );
        assert_eq!((c.rise, c.fall, c.retry), (2, 3, 0));
        assert_eq!(c.delay_before_retry, Dur::secs(1));
        assert_eq!(c.target, "10.0.0.11:80".parse().unwrap());
        let p = svc.passive();
        assert_eq!(p.down_after_reports, 1);
        assert_eq!(
            (p.inhibit_min, p.inhibit_max),
            (Dur::secs(5), Dur::secs(3600))
        );
        assert_eq!(svc.health.as_ref().unwrap().on_down, OnDown::Keep);
    }

    #[test]
    fn no_health_table_means_no_active_check() {
        let s = parse(&with(
            "[[service.backends]]\naddress = \"10.0.0.11\"\nmac = \"02:00:00:00:00:0b\"\n",
        ))
        .unwrap();
        let svc = &s.services[0];
        assert_eq!(svc.resolve_check(&svc.backends[0]).unwrap(), None);
        assert_eq!(svc.passive(), Passive::default());
    }

    #[test]
    fn backend_override_merges_field_by_field() {
        let s = parse(&with(
            r#"
[service.health]
type = "http"
interval = "500ms"
timeout = 10
fall = 2
[service.health.http]
path = "/healthz"
expect_status = [200, "300-399"]
[[service.backends]]
address = "10.0.0.11"
mac = "02:00:00:00:00:0b"
health = { port = 8080, address = "10.0.1.11", http = { host = "app.example" } }
[[service.backends]]
address = "10.0.0.12"
mac = "02:00:00:00:00:0c"
health = { type = "none" }
"#,
        ))
        .unwrap();
        let svc = &s.services[0];
        let c = svc.resolve_check(&svc.backends[0]).unwrap().unwrap();
        assert_eq!(c.target, "10.0.1.11:8080".parse().unwrap());
        assert_eq!(
            (c.interval, c.timeout, c.fall),
            (Dur(500), Dur::secs(10), 2)
        );
        assert_eq!(
            c.delay_before_retry,
            Dur::secs(3),
            "keepalived's HTTP default"
        );
        let Probe::Http(h) = c.probe else {
            panic!("http probe")
        };
        assert_eq!(h.path, "/healthz");
        assert_eq!(h.host, "app.example");
        assert_eq!(h.method, "GET");
        assert!(!h.tls && h.tls_verify);
        assert_eq!(
            h.expect_status,
            vec![
                StatusRange { lo: 200, hi: 200 },
                StatusRange { lo: 300, hi: 399 }
            ]
        );
        assert_eq!(svc.resolve_check(&svc.backends[1]).unwrap(), None);
    }

    #[test]
    fn state_round_trips_through_json_and_toml() {
        let s = parse(&with(
            r#"
[service.health]
type = "https"
interval = 1.5
on_down = "reset"
warmup = 30
sorry = { address = "10.0.0.99", mac = "02:00:00:00:00:63" }
http = { tls_verify = false, expect_status = ["200-204"], body_contains = "ok" }
passive = { down_after_reports = 2, inhibit_min = 1 }
[[service.backends]]
address = "10.0.0.11"
mac = "02:00:00:00:00:0b"
health = { rise = 5, exec = { command = "true" } }
"#,
        ))
        .unwrap();
        let json = serde_json_like(&s);
        assert_eq!(json, s);
        let back: State = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let h = s.services[0].health.as_ref().unwrap();
        assert_eq!(h.interval, Some(Dur(1500)));
        assert_eq!(h.on_down, OnDown::Reset);
        assert_eq!(h.passive.down_after_reports, 2);
        assert_eq!(h.passive.inhibit_max, Dur::secs(3600), "default kept");
    }

    /// A serde round trip through the TOML value model (lb-common has no serde_json).
    fn serde_json_like(s: &State) -> State {
        let v = toml::Value::try_from(s).unwrap();
        v.try_into().unwrap()
    }

    fn err(extra: &str) -> String {
        format!("{:#}", parse(&with(extra)).unwrap_err())
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[service.health]\ninterval = \"10ms\"\n", "health.interval"),
            ("[service.health]\nrise = 0\n", "health.rise"),
            ("[service.health]\nfall = 0\n", "health.fall"),
            ("[service.health]\ntype = \"exec\"\n", "health.exec.command"),
            (
                "[service.health]\ntype = \"http\"\nhttp = { path = \"x\" }\n",
                "health.http.path",
            ),
            (
                "[service.health]\ntype = \"http\"\nhttp = { expect_status = [] }\n",
                "health.http.expect_status",
            ),
            (
                "[service.health]\ntype = \"http\"\nhttp = { method = \"GE T\" }\n",
                "health.http.method",
            ),
            (
                "[service.health]\npassive = { down_after_reports = 0 }\n",
                "health.passive.down_after_reports",
            ),
            (
                "[service.health]\npassive = { inhibit_min = 10, inhibit_max = 5 }\n",
                "health.passive.inhibit_min",
            ),
            (
                "[service.health]\nsorry = { address = \"fd00::1\" }\n",
                "health.sorry.address",
            ),
        ];
        for (extra, field) in cases {
            let e = err(&format!(
                "{extra}[[service.backends]]\naddress = \"10.0.0.11\"\n"
            ));
            assert!(e.contains(field), "{extra:?}: {e}");
            assert!(e.contains("service[0]"), "{extra:?}: {e}");
        }
        // Per backend: the error says which.
        let e = err("[[service.backends]]\naddress = \"10.0.0.11\"\nhealth = { timeout = 0 }\n");
        assert!(e.contains("backends[0] (10.0.0.11).health.timeout"), "{e}");
        // Unknown keys are refused.
        let e = err("[service.health]\nintervall = 2\n");
        assert!(e.contains("intervall"), "{e}");
        let e = err("[service.health]\nhttp = { pth = \"/\" }\n");
        assert!(e.contains("pth"), "{e}");
        // Status ranges.
        let e =
            err("[service.health]\ntype = \"http\"\nhttp = { expect_status = [\"299-200\"] }\n");
        assert!(e.contains("empty"), "{e}");
        let e = err("[service.health]\ntype = \"http\"\nhttp = { expect_status = [700] }\n");
        assert!(e.contains("700"), "{e}");
    }

    #[test]
    fn tcp_mode_defaults_to_half_open_and_is_overridable() {
        let s = parse(&with(
            r#"
[service.health]
tcp = { mode = "connect" }
[[service.backends]]
address = "10.0.0.11"
[[service.backends]]
address = "10.0.0.12"
health = { tcp = { mode = "half-open" } }
[[service.backends]]
address = "10.0.0.13"
health = { tcp = {} }
"#,
        ))
        .unwrap();
        let svc = &s.services[0];
        let mode = |j: usize| match svc.resolve_check(&svc.backends[j]).unwrap().unwrap().probe {
            Probe::Tcp { mode } => mode,
            p => panic!("{p:?}"),
        };
        assert_eq!(mode(0), TcpMode::Connect);
        assert_eq!(mode(1), TcpMode::HalfOpen, "the backend's override wins");
        assert_eq!(
            mode(2),
            TcpMode::Connect,
            "an empty table keeps the service's"
        );
        let back: State = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let e = err("[service.health]\ntcp = { mode = \"syn\" }\n");
        assert!(e.contains("syn") && e.contains("half-open"), "{e}");
        let e = err("[service.health]\ntcp = { mod = \"connect\" }\n");
        assert!(e.contains("mod"), "{e}");
    }

    #[test]
    fn wildcard_port_services_need_a_check_port() {
        let text = r#"
[[service]]
address = "10.0.0.100"
port = 0
proto = "tcp"
[service.health]
[[service.backends]]
address = "10.0.0.11"
"#;
        let e = format!("{:#}", parse(text).unwrap_err());
        assert!(e.contains("health.port"), "{e}");
        let ok = text.replace("[service.health]", "[service.health]\nport = 22");
        parse(&ok).unwrap();
    }

    #[test]
    fn sorry_server_must_not_be_a_backend() {
        let e = err(
            "[service.health]\nsorry = { address = \"10.0.0.11\" }\n[[service.backends]]\naddress = \"10.0.0.11\"\n",
        );
        assert!(
            e.contains("health.sorry.address") && e.contains("also a backend"),
            "{e}"
        );
    }
}
