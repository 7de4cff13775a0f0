//! The desired state: what the operator asked for. Validated whole before anything
//! touches a map.

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

mod health;
pub use health::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => crate::PROTO_TCP,
            Proto::Udp => crate::PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => bail!("protocol {s:?}: expected tcp or udp"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    #[default]
    Mh,
    Sh,
    Rr,
    Wrr,
}

impl Scheduler {
    pub fn code(self) -> u32 {
        match self {
            Scheduler::Mh => crate::SCHED_MH,
            Scheduler::Sh => crate::SCHED_SH,
            Scheduler::Rr => crate::SCHED_RR,
            Scheduler::Wrr => crate::SCHED_WRR,
        }
    }
}

/// Forwarding method, with LVS's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// `-g`: direct routing, L2 rewrite.
    #[default]
    Dr,
    /// `-i`: IPIP (IPv4) or IPv6-in-IPv6.
    Tun,
    /// `-i` with GUE (IP in UDP).
    Gue,
}

impl Forward {
    pub fn mode(self) -> u32 {
        match self {
            Forward::Dr => crate::MODE_DR,
            Forward::Tun => crate::MODE_TUN_IPIP,
            Forward::Gue => crate::MODE_TUN_GUE,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: IpAddr,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub forward: Forward,
    /// L2 destination (the server's MAC in DR, the next hop's in tunnel mode).
    /// Resolved through the neighbour table when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default = "gue_port")]
    pub gue_port: u16,
    /// Overrides of the service's health check for this backend (see [`CheckParams`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<CheckParams>>,
}

fn one() -> u32 {
    1
}
fn gue_port() -> u16 {
    crate::DEFAULT_GUE_PORT
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            bail!("MAC {s:?}: expected six hex bytes separated by ':'");
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16)
                .map_err(|_| anyhow::anyhow!("MAC {s:?}: {p:?} is not a hex byte"))?;
        }
        Ok(Mac(m))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub address: IpAddr,
    /// 0 = every port of the address.
    pub port: u16,
    pub proto: Proto,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// `ipvsadm -p`: seconds a client sticks to its backend; 0 = off.
    #[serde(default)]
    pub persistence: u32,
    #[serde(default)]
    pub backends: Vec<RealServer>,
    /// Active checks, passive detection and what happens when a backend goes DOWN
    /// (see [`ServiceHealth`]); without it, no active checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<ServiceHealth>>,
}

impl Service {
    pub fn id(&self) -> ServiceId {
        ServiceId {
            address: self.address,
            port: self.port,
            proto: self.proto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId {
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{} {}:{}", self.proto, a, self.port),
            IpAddr::V6(a) => write!(f, "{} [{}]:{}", self.proto, a, self.port),
        }
    }
}

/// Tunnel and path settings shared by all services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tunnel {
    /// Outer IPv4 source (or prefix with `source_from_flow`).
    pub source_v4: Option<std::net::Ipv4Addr>,
    /// Prefix length kept from source_v4 when `source_from_flow` (the rest comes from the flow hash).
    pub source_v4_prefix: Option<u8>,
    pub source_v6: Option<std::net::Ipv6Addr>,
    pub source_from_flow: bool,
    /// Path MTU towards the real servers (default 1500).
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    pub tunnel: Tunnel,
    #[serde(rename = "service")]
    pub services: Vec<Service>,
}

impl State {
    /// Every exec health-check command, with where it is set: (service, backend
    /// override or None for the service's own).
    pub fn exec_commands(&self) -> BTreeSet<(String, Option<IpAddr>, String)> {
        let mut out = BTreeSet::new();
        for s in &self.services {
            let svc = s.id().to_string();
            if let Some(c) = s
                .health
                .as_ref()
                .and_then(|h| h.exec.as_ref()?.command.clone())
            {
                out.insert((svc.clone(), None, c));
            }
            for r in &s.backends {
                if let Some(c) = r
                    .health
                    .as_ref()
                    .and_then(|h| h.exec.as_ref()?.command.clone())
                {
                    out.insert((svc.clone(), Some(r.address), c));
                }
            }
        }
        out
    }

    /// Checks the whole state; the error names the field and the reason.
    pub fn validate(&self, max_vips: u32, max_backends: u32) -> Result<()> {
        let mut seen = BTreeSet::new();
        let mut backend_count = 0u32;
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("service[{i}] ({})", s.id());
            if !seen.insert(s.id()) {
                bail!("{at}: duplicate service");
            }
            if s.address.is_unspecified() || s.address.is_multicast() {
                bail!("{at}.address: {} cannot be a VIP", s.address);
            }
            if s.persistence > 31 * 24 * 3600 {
                bail!("{at}.persistence: {} s is more than 31 days", s.persistence);
            }
            let mut reals = BTreeSet::new();
            for (j, r) in s.backends.iter().enumerate() {
                let at = format!("{at}.backends[{j}] ({})", r.address);
                if !reals.insert(r.address) {
                    bail!("{at}: duplicate real server");
                }
                if r.address.is_ipv4() != s.address.is_ipv4() {
                    bail!("{at}.address: family differs from the VIP's");
                }
                if r.address.is_unspecified() || r.address.is_multicast() {
                    bail!("{at}.address: {} cannot be a real server", r.address);
                }
                if r.weight > 65535 {
                    bail!("{at}.weight: {} is above the maximum 65535", r.weight);
                }
                if r.forward == Forward::Gue && r.gue_port == 0 {
                    bail!("{at}.gue_port: must not be 0");
                }
                backend_count += 1;
            }
            s.validate_health()
                .map_err(|e| anyhow::anyhow!("{at}.{e:#}"))?;
        }
        if self.services.len() as u32 > max_vips {
            bail!(
                "services: {} exceed capacity.max_vips {}",
                self.services.len(),
                max_vips
            );
        }
        if backend_count >= max_backends {
            bail!(
                "backends: {backend_count} exceed capacity.max_backends {}",
                max_backends - 1
            );
        }
        if let Some(p) = self.tunnel.source_v4_prefix
            && p > 32
        {
            bail!("tunnel.source_v4_prefix: {p} is above 32");
        }
        if let Some(m) = self.tunnel.mtu
            && !(576..=65535).contains(&m)
        {
            bail!("tunnel.mtu: {m} is outside 576..=65535");
        }
        Ok(())
    }
}
