//! Projects the desired `State` into the maps through `DataPlane` (the only writer).
//! Order keeps every packet safe: a backend is written before any slot points at it,
//! and its slots are gone before it is invalidated.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
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
    state::{Scheduler, Service, ServiceId, State, Tunnel},
};

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub slots_written: usize,
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
    table: Vec<u32>,
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
    let members: Vec<MaglevBackend> = svc
        .backends
        .iter()
        .map(|r| MaglevBackend {
            id: ids[&r.address],
            weight: r.weight,
        })
        .collect();
    match svc.scheduler {
        Scheduler::Mh | Scheduler::Sh => (maglev::build(&members, ring), 0),
        Scheduler::Rr => {
            let live: Vec<u32> = members
                .iter()
                .filter(|m| m.weight > 0)
                .map(|m| m.id)
                .collect();
            let seq = sequence::rr_sequence(&live);
            let n = seq.len() as u32;
            (seq, n)
        }
        Scheduler::Wrr => {
            let seq = sequence::wrr_sequence(&members, ring);
            let n = seq.len() as u32;
            (seq, n)
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

    /// Makes the maps equal `desired`. Validation (including MACs) happens first: on error
    /// nothing has been written.
    pub fn apply(&mut self, dp: &mut DataPlane, desired: &State) -> Result<ApplyReport> {
        desired.validate(dp.cap.max_vips, dp.cap.max_backends)?;
        for s in &desired.services {
            for r in &s.backends {
                if r.mac.is_none() {
                    bail!(
                        "service {}: real server {} has no resolved MAC",
                        s.id(),
                        r.address
                    );
                }
            }
        }
        let mut report = ApplyReport::default();
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
            let leaving: Vec<(IpAddr, u32)> = ids
                .iter()
                .filter(|(a, _)| !svc.backends.iter().any(|r| r.address == **a))
                .map(|(a, b)| (*a, *b))
                .collect();
            for (a, _) in &leaving {
                ids.remove(a);
            }
            for r in &svc.backends {
                let bid = match ids.get(&r.address) {
                    Some(b) => *b,
                    None => {
                        let Some(b) = self.free_ids.pop_front() else {
                            bail!("no free backend id for {}", r.address);
                        };
                        ids.insert(r.address, b);
                        b
                    }
                };
                let (addr, family) = addr_bytes(r.address);
                let b = Backend {
                    addr,
                    mac: r.mac.expect("checked above").0,
                    family,
                    mode: r.forward.mode(),
                    flags: BACKEND_F_VALID,
                    gue_port: r.gue_port.to_be(),
                    ..Backend::default()
                };
                if dp.backend(bid)? != b {
                    dp.set_backend(bid, &b)?;
                }
            }
            work.push(Pending { id: *id, svc, idx, ids, existed, leaving, table: Vec::new(), seq_len: 0 });
        }
        // Phase 2 (parallel): the tables are pure computation, one per service.
        let ring = self.ring_size;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(work.len().max(1));
        let chunk = work.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|sc| {
            for part in work.chunks_mut(chunk) {
                sc.spawn(move || {
                    for w in part {
                        (w.table, w.seq_len) = table_for(w.svc, &w.ids, ring);
                    }
                });
            }
        });
        // Phase 3 (sequential): slots (only those that change), then the VIP entry, then
        // the backends that left are invalidated.
        for w in work {
            report.slots_written += dp.write_table(w.idx, &w.table);
            let meta = VipMeta {
                idx: w.idx,
                sched: w.svc.scheduler.code(),
                flags: 0,
                persist_secs: w.svc.persistence,
                seq_len: w.seq_len,
                _pad: 0,
            };
            dp.set_vip(&vip_key(w.id.address, w.id.port, w.id.proto.number()), &meta)?;
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
            self.installed.insert(w.id, Installed { svc: w.svc.clone(), idx: w.idx, ids: w.ids });
        }
        self.sync_markers(dp)?;
        Ok(report)
    }

    /// One marker entry per VIP address (for fragments, ICMP and "unsupported" counting),
    /// and the VIP_FILTER bitmap over the VIP addresses.
    fn sync_markers(&self, dp: &mut DataPlane) -> Result<()> {
        let want: std::collections::BTreeSet<IpAddr> =
            self.installed.keys().map(|k| k.address).collect();
        let bits = filter_bits(want.iter().copied());
        for (k, m) in dp.vips()? {
            if m.flags & VIP_F_ADDR_MARKER != 0 {
                let addr = if k.family == FAMILY_V4 {
                    IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
                } else {
                    IpAddr::from(k.addr)
                };
                if !want.contains(&addr) {
                    dp.remove_vip(&k)?;
                }
            }
        }
        for a in want {
            let meta = VipMeta {
                flags: VIP_F_ADDR_MARKER,
                ..VipMeta::default()
            };
            dp.set_vip(&marker_key(a), &meta)?;
        }
        // Now exact: bits of addresses that left are cleared.
        dp.write_filter(&bits);
        Ok(())
    }
}
