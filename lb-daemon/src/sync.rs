//! Projects the desired `State` into the maps through `DataPlane` (the only writer).
//! Order keeps every packet safe: a backend is written before any slot points at it,
//! and its slots are gone before it is invalidated.
//!
//! What is installed is the *effective* state: the desired state with each real
//! server's MAC filled in (the configuration's, else the one learnt from the kernel's
//! neighbour table, see [`Learned`]). A real server without one is left out of its
//! service (its flows could not be forwarded correctly) and reported as unresolved.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, bail};
use lb_common::{
    BACKEND_F_VALID, Backend, CTRL_F_HAS_WILDCARD, CTRL_F_SRC_FROM_FLOW, Ctrl, FAMILY_V4,
    FAMILY_V6, VIP_F_ADDR_MARKER, VipKey, VipMeta,
    maglev::{self, MaglevBackend},
    sequence,
};

use crate::{
    bpf_maps::DataPlane,
    state::{Forward, Mac, RealServer, Scheduler, Service, ServiceId, State, Tunnel},
};

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub slots_written: usize,
    /// Real servers (per service) left out for want of a MAC.
    pub unresolved: usize,
}

/// What the kernel said about the path to one real server's address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathInfo {
    /// The L2 next hop: the address itself when on-link, else the route's gateway.
    pub next_hop: IpAddr,
    /// The route goes through a gateway (direct routing needs the server on-link).
    pub via_gateway: bool,
    pub ifindex: u32,
    pub interface: String,
    /// The next hop's MAC from the neighbour table; None while unknown or failed.
    pub mac: Option<Mac>,
    /// Why there is no MAC (no route, no ARP/ND answer, ...).
    pub error: Option<String>,
}

impl PathInfo {
    /// A path that could not even be looked up (no route, netlink unavailable).
    pub fn failed(addr: IpAddr, error: impl Into<String>) -> Self {
        PathInfo {
            next_hop: addr,
            via_gateway: false,
            ifindex: 0,
            interface: String::new(),
            mac: None,
            error: Some(error.into()),
        }
    }
}

/// What the daemon learnt from the kernel, filling what the configuration leaves out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Per real-server address (those without a configured MAC).
    pub paths: BTreeMap<IpAddr, PathInfo>,
    /// Outer tunnel sources when `tunnel.source_v4` / `source_v6` are not configured.
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
}

/// A real server left out of its service: no MAC to send its packets to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unresolved {
    pub service: ServiceId,
    pub address: IpAddr,
    pub reason: String,
}

/// The MAC packets for `r` are sent to: the configured one wins, else the learnt next
/// hop's. Direct routing rewrites only the MAC, so it needs the server on-link: a
/// route through a gateway is an error there.
pub fn effective_mac(r: &RealServer, learned: &Learned) -> Result<Mac, String> {
    if let Some(m) = r.mac {
        return Ok(m);
    }
    let Some(p) = learned.paths.get(&r.address) else {
        return Err("MAC not resolved yet".into());
    };
    if r.forward == Forward::Dr && p.via_gateway {
        return Err(format!(
            "direct routing needs the real server on-link (L2 adjacency), but the route to it goes through gateway {}",
            p.next_hop
        ));
    }
    match (p.mac, &p.error) {
        (Some(m), _) => Ok(m),
        (None, Some(e)) => Err(e.clone()),
        (None, None) => Err(format!("resolving the MAC of next hop {}", p.next_hop)),
    }
}

/// The state to install: every real server that has an effective MAC, with it; the
/// others are left out and returned. Tunnel sources default to the learnt ones.
pub fn effective_state(desired: &State, learned: &Learned) -> (State, Vec<Unresolved>) {
    let mut unresolved = Vec::new();
    let mut st = desired.clone();
    st.tunnel.source_v4 = st.tunnel.source_v4.or(learned.source_v4);
    st.tunnel.source_v6 = st.tunnel.source_v6.or(learned.source_v6);
    for s in &mut st.services {
        let id = s.id();
        s.backends.retain_mut(|r| match effective_mac(r, learned) {
            Ok(m) => {
                r.mac = Some(m);
                true
            }
            Err(reason) => {
                unresolved.push(Unresolved {
                    service: id,
                    address: r.address,
                    reason,
                });
                false
            }
        });
    }
    (st, unresolved)
}

/// Which VIP index and backend ids each service holds: saved with the state so that a
/// restarted daemon adopting pinned maps keeps every id (connection entries refer to them).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Alloc {
    pub services: Vec<AllocEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllocEntry {
    pub service: ServiceId,
    pub idx: u32,
    pub backends: Vec<(IpAddr, u32)>,
}

/// A service being (re)installed by one apply.
struct Pending<'a> {
    id: ServiceId,
    svc: &'a Service,
    idx: u32,
    ids: BTreeMap<IpAddr, u32>,
    existed: bool,
    leaving: Vec<(IpAddr, u32)>,
    seq_len: u32,
}

struct Installed {
    svc: Service,
    idx: u32,
    ids: BTreeMap<IpAddr, u32>,
}

pub struct Projector {
    installed: BTreeMap<ServiceId, Installed>,
    /// Free VIP indexes and backend ids, reused oldest-freed first so that a stale
    /// connection entry is unlikely to meet a recycled id.
    free_idx: VecDeque<u32>,
    free_ids: VecDeque<u32>,
    ring_size: u32,
    /// Real servers the last apply left out.
    unresolved: Vec<Unresolved>,
}

pub fn vip_key(addr: IpAddr, port: u16, proto: u8) -> VipKey {
    let (a, family) = addr_bytes(addr);
    VipKey {
        addr: a,
        port: port.to_be(),
        proto,
        family,
    }
}

/// The inverse of [`addr_bytes`]: the address in map keys' form, by family.
pub fn ip_from_bytes(a: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

pub fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    let mut a = [0u8; 16];
    match addr {
        IpAddr::V4(v) => {
            a[..4].copy_from_slice(&v.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v) => (v.octets(), FAMILY_V6),
    }
}

fn marker_key(addr: IpAddr) -> VipKey {
    vip_key(addr, 0, 0)
}

pub fn ctrl_for(t: &Tunnel, ring_size: u32, conn_timeout_secs: u32) -> Ctrl {
    let mut c = Ctrl {
        ring_size,
        conn_timeout_secs,
        ns_per_tick: crate::clock::ns_per_tick(),
        ..Ctrl::default()
    };
    if let Some(m) = t.mtu {
        c.mtu = m;
    }
    if let Some(s) = t.source_v4 {
        c.tun_src_v4 = s.octets();
    }
    if let Some(s) = t.source_v6 {
        c.tun_src_v6 = s.octets();
    }
    if t.source_from_flow {
        c.flags |= CTRL_F_SRC_FROM_FLOW;
        let prefix = t.source_v4_prefix.unwrap_or(16) as u32;
        let host = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
        c.tun_src_v4_hostmask = host.to_be_bytes();
    }
    c
}

/// VIP_FILTER contents for a set of VIP addresses.
pub fn filter_bits(addrs: impl Iterator<Item = IpAddr>) -> Vec<u64> {
    let mut bits = vec![0u64; lb_common::VIP_FILTER_WORDS as usize];
    for a in addrs {
        let b = lb_common::hash::addr_filter_bit(&addr_bytes(a).0);
        bits[(b >> 6) as usize] |= 1 << (b & 63);
    }
    bits
}

/// The table a service's VIP should have: Maglev for mh/sh, a sequence for rr/wrr.
pub fn table_for(svc: &Service, ids: &BTreeMap<IpAddr, u32>, ring: u32) -> (Vec<u32>, u32) {
    let mut table = Vec::new();
    let seq_len = table_into(svc, ids, ring, &mut table);
    (table, seq_len)
}

/// [`table_for`] into `table` (its allocation reused); returns the sequence length
/// (0 for Maglev).
pub fn table_into(
    svc: &Service,
    ids: &BTreeMap<IpAddr, u32>,
    ring: u32,
    table: &mut Vec<u32>,
) -> u32 {
    let members: Vec<MaglevBackend> = svc
        .backends
        .iter()
        .map(|r| MaglevBackend {
            id: ids[&r.address],
            weight: r.weight,
        })
        .collect();
    match svc.scheduler {
        Scheduler::Mh | Scheduler::Sh => {
            maglev::build_into(&members, ring, table);
            0
        }
        Scheduler::Rr => {
            let live: Vec<u32> = members
                .iter()
                .filter(|m| m.weight > 0)
                .map(|m| m.id)
                .collect();
            *table = sequence::rr_sequence(&live);
            table.len() as u32
        }
        Scheduler::Wrr => {
            *table = sequence::wrr_sequence(&members, ring);
            table.len() as u32
        }
    }
}

impl Projector {
    pub fn new(max_vips: u32, max_backends: u32, ring_size: u32) -> Self {
        Projector {
            installed: BTreeMap::new(),
            free_idx: (0..max_vips).collect(),
            // id 0 means "no backend".
            free_ids: (1..max_backends).collect(),
            ring_size,
            unresolved: Vec::new(),
        }
    }

    /// Rebuilds the allocation of a previous daemon whose maps we adopted: `state` is what
    /// it had installed, `alloc` its ids. Nothing is written.
    pub fn adopt(
        max_vips: u32,
        max_backends: u32,
        ring_size: u32,
        state: &State,
        alloc: &Alloc,
    ) -> Result<Self> {
        let mut p = Projector::new(max_vips, max_backends, ring_size);
        for e in &alloc.services {
            let Some(svc) = state.services.iter().find(|s| s.id() == e.service) else {
                bail!("state file: allocation for unknown service {}", e.service);
            };
            p.free_idx.retain(|i| *i != e.idx);
            let ids: BTreeMap<IpAddr, u32> = e.backends.iter().copied().collect();
            p.free_ids.retain(|i| !ids.values().any(|b| b == i));
            p.installed.insert(
                e.service,
                Installed {
                    svc: svc.clone(),
                    idx: e.idx,
                    ids,
                },
            );
        }
        Ok(p)
    }

    pub fn alloc(&self) -> Alloc {
        Alloc {
            services: self
                .installed
                .iter()
                .map(|(id, i)| AllocEntry {
                    service: *id,
                    idx: i.idx,
                    backends: i.ids.iter().map(|(a, b)| (*a, *b)).collect(),
                })
                .collect(),
        }
    }

    /// The backend id of a real server of a service, if installed.
    pub fn backend_id(&self, svc: &ServiceId, real: IpAddr) -> Option<u32> {
        self.installed
            .get(svc)
            .and_then(|i| i.ids.get(&real).copied())
    }

    pub fn vip_idx(&self, svc: &ServiceId) -> Option<u32> {
        self.installed.get(svc).map(|i| i.idx)
    }

    /// Real servers the last apply left out for want of a MAC.
    pub fn unresolved(&self) -> &[Unresolved] {
        &self.unresolved
    }

    /// [`Projector::apply_learned`] with nothing learnt: only configured MACs.
    pub fn apply(&mut self, dp: &mut DataPlane, desired: &State) -> Result<ApplyReport> {
        self.apply_learned(dp, desired, &Learned::default())
    }

    /// Makes the maps equal the effective state of `desired` (see [`effective_state`]):
    /// real servers without a MAC are left out and reported, the rest applies. The whole
    /// state is validated first: on error nothing has been written.
    pub fn apply_learned(
        &mut self,
        dp: &mut DataPlane,
        desired: &State,
        learned: &Learned,
    ) -> Result<ApplyReport> {
        desired.validate(dp.cap.max_vips, dp.cap.max_backends)?;
        let (effective, unresolved) = effective_state(desired, learned);
        let desired = &effective;
        let mut report = ApplyReport {
            unresolved: unresolved.len(),
            ..ApplyReport::default()
        };
        // New addresses' filter bits go in before any of their entries (stale ones are
        // cleared at the end): a packet never meets a VIP entry its bit hides.
        let current = dp.filter();
        let incoming = filter_bits(desired.services.iter().map(|s| s.address));
        let merged: Vec<u64> = incoming.iter().zip(&current).map(|(n, c)| n | c).collect();
        dp.write_filter(&merged);
        let conn_timeout = dp.ctrl().map(|c| c.conn_timeout_secs).unwrap_or(900);
        let mut ctrl = ctrl_for(&desired.tunnel, self.ring_size, conn_timeout);
        if desired.services.iter().any(|s| s.port == 0) {
            ctrl.flags |= CTRL_F_HAS_WILDCARD;
        }
        if dp.ctrl()? != ctrl {
            dp.set_ctrl(&ctrl)?;
        }

        let wanted: BTreeMap<ServiceId, &Service> =
            desired.services.iter().map(|s| (s.id(), s)).collect();
        // Removals first: frees indexes and ids for the additions.
        let gone: Vec<ServiceId> = self
            .installed
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for id in gone {
            let inst = self.installed.remove(&id).expect("installed");
            dp.remove_vip(&vip_key(id.address, id.port, id.proto.number()))?;
            dp.bump_vip_gen(inst.idx)?;
            report.slots_written += dp.write_table(inst.idx, &[]);
            for bid in inst.ids.values() {
                dp.set_backend(*bid, &Backend::default())?;
                self.free_ids.push_back(*bid);
            }
            self.free_idx.push_back(inst.idx);
            report.services_removed += 1;
        }
        // Phase 1 (sequential): ids, and backend entries written before any slot can
        // point at them.
        let mut work: Vec<Pending> = Vec::new();
        for (id, svc) in &wanted {
            let (idx, mut ids, existed) = match self.installed.remove(id) {
                Some(inst) if &inst.svc == *svc => {
                    self.installed.insert(*id, inst);
                    continue;
                }
                Some(inst) => (inst.idx, inst.ids, true),
                None => {
                    let Some(idx) = self.free_idx.pop_front() else {
                        bail!("no free VIP slot for {id}");
                    };
                    (idx, BTreeMap::new(), false)
                }
            };
            // Real servers that left: out of the table first, invalidated afterwards.
            // (A set, not a scan of the backends per id: 1,000 backends would make
            // that a million comparisons.)
            let staying: std::collections::BTreeSet<IpAddr> =
                svc.backends.iter().map(|r| r.address).collect();
            let leaving: Vec<(IpAddr, u32)> = ids
                .iter()
                .filter(|(a, _)| !staying.contains(*a))
                .map(|(a, b)| (*a, *b))
                .collect();
            for (a, _) in &leaving {
                ids.remove(a);
            }
            for r in &svc.backends {
                let (bid, fresh) = match ids.get(&r.address) {
                    Some(b) => (*b, false),
                    None => {
                        let Some(b) = self.free_ids.pop_front() else {
                            bail!("no free backend id for {}", r.address);
                        };
                        ids.insert(r.address, b);
                        (b, true)
                    }
                };
                let (addr, family) = addr_bytes(r.address);
                let b = Backend {
                    addr,
                    mac: r.mac.expect("effective_state sets every MAC").0,
                    family,
                    mode: r.forward.mode(),
                    flags: BACKEND_F_VALID,
                    gue_port: r.gue_port.to_be(),
                    ..Backend::default()
                };
                // A fresh id's entry is invalid (freed ids are invalidated), and `b`
                // is valid: it must be written, no need to read it first.
                if fresh || dp.backend(bid)? != b {
                    dp.set_backend(bid, &b)?;
                }
            }
            work.push(Pending {
                id: *id,
                svc,
                idx,
                ids,
                existed,
                leaving,
                seq_len: 0,
            });
        }
        // Phase 2 (parallel): each service's table, computed into a buffer the worker
        // reuses and then written (only the slots that change) straight into the
        // mapped MAGLEV array: VIPs' tables are disjoint ranges of it. Every backend a
        // table names was written in phase 1; VIP entries follow in phase 3. Workers
        // take the next service as they finish one, so big services do not leave a
        // core idle.
        let ring = self.ring_size;
        let tables = dp.tables();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(work.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let built: Vec<(Vec<(usize, u32)>, usize)> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    sc.spawn(|| {
                        let mut table = Vec::new();
                        let (mut seq_lens, mut written) = (Vec::new(), 0);
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(w) = work.get(i) else { break };
                            seq_lens.push((i, table_into(w.svc, &w.ids, ring, &mut table)));
                            written += tables.write(w.idx, &table);
                        }
                        (seq_lens, written)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|h| h.join().expect("table worker panicked"))
                .collect()
        });
        for (seq_lens, written) in built {
            report.slots_written += written;
            for (i, n) in seq_lens {
                work[i].seq_len = n;
            }
        }
        // Phase 3 (sequential): the VIP entry, then the backends that left are
        // invalidated.
        for w in work {
            let meta = VipMeta {
                idx: w.idx,
                sched: w.svc.scheduler.code(),
                flags: 0,
                persist_secs: w.svc.persistence,
                seq_len: w.seq_len,
                _pad: 0,
            };
            dp.set_vip(
                &vip_key(w.id.address, w.id.port, w.id.proto.number()),
                &meta,
            )?;
            if !w.existed {
                dp.reset_rr(w.idx)?;
            }
            for (_, bid) in w.leaving {
                dp.set_backend(bid, &Backend::default())?;
                self.free_ids.push_back(bid);
            }
            if w.existed {
                report.services_changed += 1;
            } else {
                report.services_added += 1;
            }
            self.installed.insert(
                w.id,
                Installed {
                    svc: w.svc.clone(),
                    idx: w.idx,
                    ids: w.ids,
                },
            );
        }
        self.sync_markers(dp)?;
        self.unresolved = unresolved;
        Ok(report)
    }

    /// One marker entry per VIP address (for fragments, ICMP and "unsupported" counting),
    /// and the VIP_FILTER bitmap over the VIP addresses.
    fn sync_markers(&self, dp: &mut DataPlane) -> Result<()> {
        let want: std::collections::BTreeSet<IpAddr> =
            self.installed.keys().map(|k| k.address).collect();
        let bits = filter_bits(want.iter().copied());
        let meta = VipMeta {
            flags: VIP_F_ADDR_MARKER,
            ..VipMeta::default()
        };
        // Markers already in place are left alone: only what changes is written.
        let mut present = std::collections::BTreeSet::new();
        for (k, m) in dp.vips()? {
            if m.flags & VIP_F_ADDR_MARKER != 0 {
                let addr = ip_from_bytes(&k.addr, k.family);
                if !want.contains(&addr) {
                    dp.remove_vip(&k)?;
                } else if m == meta && k == marker_key(addr) {
                    present.insert(addr);
                }
            }
        }
        for a in want.difference(&present) {
            dp.set_vip(&marker_key(*a), &meta)?;
        }
        // Now exact: bits of addresses that left are cleared.
        dp.write_filter(&bits);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Capacity;

    const A: &str = "10.0.0.11";
    const B: &str = "10.0.0.12";
    const C: &str = "10.0.0.13";

    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }

    /// Built through serde, so that fields added later take their defaults.
    fn real(addr: &str, forward: Forward, m: Option<Mac>) -> RealServer {
        serde_json::from_value(serde_json::json!({
            "address": addr,
            "forward": forward,
            "mac": m,
        }))
        .expect("a real server")
    }

    fn state(backends: Vec<RealServer>) -> State {
        let mut s: State = serde_json::from_value(serde_json::json!({
            "service": [{"address": "10.0.0.100", "port": 80, "proto": "tcp"}],
        }))
        .expect("a state");
        s.services[0].backends = backends;
        s
    }

    fn path(next_hop: &str, via_gateway: bool, m: Option<Mac>) -> PathInfo {
        PathInfo {
            next_hop: next_hop.parse().unwrap(),
            via_gateway,
            ifindex: 2,
            interface: "eth0".into(),
            mac: m,
            error: None,
        }
    }

    fn learned(paths: &[(&str, PathInfo)]) -> Learned {
        Learned {
            paths: paths
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), p.clone()))
                .collect(),
            ..Learned::default()
        }
    }

    fn addrs(s: &State) -> Vec<(String, Option<Mac>)> {
        s.services[0]
            .backends
            .iter()
            .map(|r| (r.address.to_string(), r.mac))
            .collect()
    }

    #[test]
    fn configured_mac_wins_over_the_learnt_one() {
        let r = real(A, Forward::Tun, Some(mac(1)));
        let l = learned(&[(A, path(A, false, Some(mac(9))))]);
        assert_eq!(effective_mac(&r, &l), Ok(mac(1)));
        // Even a DR server behind a gateway: the operator said where to send.
        let r = real(A, Forward::Dr, Some(mac(1)));
        let l = learned(&[(A, path("10.0.0.1", true, Some(mac(9))))]);
        assert_eq!(effective_mac(&r, &l), Ok(mac(1)));
    }

    #[test]
    fn learnt_mac_fills_a_missing_one() {
        let r = real(A, Forward::Dr, None);
        let l = learned(&[(A, path(A, false, Some(mac(9))))]);
        assert_eq!(effective_mac(&r, &l), Ok(mac(9)));
        // Tunnels go to the gateway's MAC.
        let r = real(A, Forward::Tun, None);
        let l = learned(&[(A, path("10.0.0.1", true, Some(mac(7))))]);
        assert_eq!(effective_mac(&r, &l), Ok(mac(7)));
    }

    #[test]
    fn unresolved_real_servers_are_left_out_and_reported() {
        let desired = state(vec![
            real(A, Forward::Tun, Some(mac(1))),
            real(B, Forward::Tun, None),
            real(C, Forward::Tun, None),
        ]);
        let mut failed = path(C, false, None);
        failed.error = Some("no ARP answer".into());
        let l = learned(&[(B, path(B, false, Some(mac(2)))), (C, failed)]);
        let (eff, unresolved) = effective_state(&desired, &l);
        assert_eq!(
            addrs(&eff),
            vec![(A.to_string(), Some(mac(1))), (B.to_string(), Some(mac(2)))]
        );
        assert_eq!(
            unresolved,
            vec![Unresolved {
                service: desired.services[0].id(),
                address: C.parse().unwrap(),
                reason: "no ARP answer".into(),
            }]
        );
        // Nothing learnt at all: only the configured one stays.
        let (eff, unresolved) = effective_state(&desired, &Learned::default());
        assert_eq!(addrs(&eff), vec![(A.to_string(), Some(mac(1)))]);
        let left: Vec<String> = unresolved.iter().map(|u| u.address.to_string()).collect();
        assert_eq!(left, vec![B, C]);
    }

    #[test]
    fn direct_routing_through_a_gateway_is_an_error_for_that_server() {
        let desired = state(vec![
            real(A, Forward::Dr, None),
            real(B, Forward::Tun, None),
        ]);
        let gw = path("10.0.0.1", true, Some(mac(7)));
        let l = learned(&[(A, gw.clone()), (B, gw)]);
        let (eff, unresolved) = effective_state(&desired, &l);
        assert_eq!(addrs(&eff), vec![(B.to_string(), Some(mac(7)))]);
        assert_eq!(unresolved.len(), 1);
        assert_eq!(unresolved[0].address.to_string(), A);
        assert!(
            unresolved[0].reason.contains("L2 adjacency")
                && unresolved[0].reason.contains("10.0.0.1"),
            "{}",
            unresolved[0].reason
        );
    }

    #[test]
    fn tunnel_sources_default_to_the_learnt_ones() {
        let mut desired = state(vec![]);
        let l = Learned {
            source_v4: Some("10.0.0.1".parse().unwrap()),
            source_v6: Some("fd00::1".parse().unwrap()),
            ..Learned::default()
        };
        let (eff, _) = effective_state(&desired, &l);
        assert_eq!(eff.tunnel.source_v4, l.source_v4);
        assert_eq!(eff.tunnel.source_v6, l.source_v6);
        desired.tunnel.source_v4 = Some("192.0.2.1".parse().unwrap());
        let (eff, _) = effective_state(&desired, &l);
        assert_eq!(eff.tunnel.source_v4, Some("192.0.2.1".parse().unwrap()));
    }

    /// What the maps should hold for `s`: its table (as [`table_for`] computes it, padded
    /// with empty slots) and the VIP entry's sequence length.
    fn expected(proj: &Projector, s: &Service, ring: u32) -> (Vec<u32>, u32) {
        let ids: BTreeMap<IpAddr, u32> = s
            .backends
            .iter()
            .map(|r| (r.address, proj.backend_id(&s.id(), r.address).unwrap()))
            .collect();
        let (mut t, n) = table_for(s, &ids, ring);
        t.resize(ring as usize, 0);
        (t, n)
    }

    /// Through a real (unpinned) data plane: needs root for the BPF maps.
    #[test]
    fn tables_built_in_parallel_land_in_their_vips_and_only_changes_are_written() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF maps needs root");
            return;
        }
        let cap = Capacity::small();
        let ring = cap.ring_size;
        let mut dp = DataPlane::load(&cap).expect("loading the data plane");
        let mut proj = Projector::new(cap.max_vips, cap.max_backends, ring);
        // Nine services on three addresses, every scheduler, different sizes.
        let scheduler = ["mh", "rr", "wrr"];
        let services: Vec<serde_json::Value> = (0..9u32)
            .map(|i| {
                let backends: Vec<serde_json::Value> = (0..2 + i * 3)
                    .map(|b| {
                        serde_json::json!({
                            "address": format!("10.{i}.{}.{}", b / 200, b % 200 + 1),
                            "mac": format!("02:00:00:00:{i:02x}:{:02x}", b % 256),
                            "weight": 1 + b % 3,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "address": format!("10.0.0.{}", 100 + i % 3),
                    "port": 80 + i,
                    "proto": "tcp",
                    "scheduler": scheduler[i as usize % 3],
                    "backends": backends,
                })
            })
            .collect();
        let mut desired: State =
            serde_json::from_value(serde_json::json!({ "service": services })).unwrap();
        let r = proj.apply(&mut dp, &desired).expect("apply");
        assert_eq!(r.services_added, 9);
        let mut nonzero = 0;
        for s in &desired.services {
            let (table, seq_len) = expected(&proj, s, ring);
            let idx = proj.vip_idx(&s.id()).unwrap();
            assert_eq!(dp.table(idx), table, "table of {}", s.id());
            let key = vip_key(s.address, s.port, s.proto.number());
            let meta = dp.vips().unwrap().into_iter().find(|(k, _)| *k == key);
            assert_eq!(meta.map(|(_, m)| (m.idx, m.seq_len)), Some((idx, seq_len)));
            nonzero += table.iter().filter(|b| **b != 0).count();
        }
        assert_eq!(r.slots_written, nonzero, "every slot written once");
        let markers = |dp: &DataPlane| {
            dp.vips()
                .unwrap()
                .into_iter()
                .filter(|(_, m)| m.flags & VIP_F_ADDR_MARKER != 0)
                .count()
        };
        assert_eq!(markers(&dp), 3);

        // The same state again: nothing is written.
        let r = proj.apply(&mut dp, &desired).expect("apply");
        assert_eq!((r.services_changed, r.slots_written), (0, 0));

        // One weight changes and one service goes: only the slots that differ are written.
        let mh = desired.services[3].clone();
        let before = dp.table(proj.vip_idx(&mh.id()).unwrap());
        desired.services[3].backends[2].weight = 7;
        let gone = desired.services.remove(8);
        let gone_slots = dp.table(proj.vip_idx(&gone.id()).unwrap());
        let r = proj.apply(&mut dp, &desired).expect("apply");
        assert_eq!((r.services_changed, r.services_removed), (1, 1));
        let (after, _) = expected(&proj, &desired.services[3], ring);
        assert_eq!(dp.table(proj.vip_idx(&mh.id()).unwrap()), after);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(moved > 0);
        let emptied = gone_slots.iter().filter(|b| **b != 0).count();
        assert_eq!(r.slots_written, moved + emptied);
        assert_eq!(markers(&dp), 3, "10.0.0.102 still has services");
    }

    /// The backend ids and their BACKENDS entries' MACs of the one service.
    fn installed(proj: &Projector, dp: &DataPlane, s: &State) -> Vec<(String, [u8; 6])> {
        let id = s.services[0].id();
        s.services[0]
            .backends
            .iter()
            .filter_map(|r| {
                let bid = proj.backend_id(&id, r.address)?;
                Some((r.address.to_string(), dp.backend(bid).unwrap().mac))
            })
            .collect()
    }

    /// Through a real (unpinned) data plane: needs root for the BPF maps.
    #[test]
    fn apply_leaves_out_the_unresolved_and_follows_mac_changes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF maps needs root");
            return;
        }
        let cap = Capacity::small();
        let mut dp = DataPlane::load(&cap).expect("loading the data plane");
        let mut proj = Projector::new(cap.max_vips, cap.max_backends, cap.ring_size);
        let desired = state(vec![
            real(A, Forward::Tun, Some(mac(1))),
            real(B, Forward::Tun, None),
        ]);
        let svc = desired.services[0].id();
        let idx_of = |proj: &Projector| proj.vip_idx(&svc).unwrap();

        // B unknown: applies without it (no whole-state error), B reported.
        let r = proj.apply(&mut dp, &desired).expect("apply");
        assert_eq!((r.services_added, r.unresolved), (1, 1));
        assert_eq!(installed(&proj, &dp, &desired), vec![(A.into(), mac(1).0)]);
        assert_eq!(proj.unresolved()[0].address.to_string(), B);
        let a_id = proj.backend_id(&svc, A.parse().unwrap()).unwrap();
        let table = dp.table(idx_of(&proj));
        assert!(table.iter().all(|b| *b == a_id), "only A in the table");

        // B's MAC appears: B enters the table.
        let mut l = learned(&[(B, path(B, false, Some(mac(2))))]);
        let r = proj.apply_learned(&mut dp, &desired, &l).expect("apply");
        assert_eq!((r.services_changed, r.unresolved), (1, 0));
        assert!(proj.unresolved().is_empty());
        assert_eq!(
            installed(&proj, &dp, &desired),
            vec![(A.into(), mac(1).0), (B.into(), mac(2).0)]
        );
        let b_id = proj.backend_id(&svc, B.parse().unwrap()).unwrap();
        let table = dp.table(idx_of(&proj));
        assert!(table.contains(&b_id) && table.contains(&a_id));

        // B's MAC changes: only its BACKENDS entry changes, same id, same table.
        l.paths.get_mut(&B.parse().unwrap()).unwrap().mac = Some(mac(3));
        let r = proj.apply_learned(&mut dp, &desired, &l).expect("apply");
        assert_eq!(r.slots_written, 0);
        assert_eq!(proj.backend_id(&svc, B.parse().unwrap()), Some(b_id));
        assert_eq!(dp.backend(b_id).unwrap().mac, mac(3).0);
        assert_eq!(dp.table(idx_of(&proj)), table);

        // Resolution fails: B leaves the table, its entry is invalidated.
        l.paths.get_mut(&B.parse().unwrap()).unwrap().mac = None;
        let r = proj.apply_learned(&mut dp, &desired, &l).expect("apply");
        assert_eq!(r.unresolved, 1);
        assert_eq!(proj.backend_id(&svc, B.parse().unwrap()), None);
        assert_eq!(dp.backend(b_id).unwrap(), Backend::default());
        assert!(dp.table(idx_of(&proj)).iter().all(|b| *b == a_id));

        // Nothing changed: nothing written.
        let r = proj.apply_learned(&mut dp, &desired, &l).expect("apply");
        assert_eq!((r.services_changed, r.slots_written), (0, 0));
    }
}
