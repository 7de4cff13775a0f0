//! Backend selection: connection table first (Cilium's lesson: the scheduler
//! only runs for new flows), then persistence, then the VIP's scheduler.

use aya_ebpf::helpers::bpf_jiffies64;
use lb_common::{
    BACKEND_F_VALID, Backend, CONN_F_ACK_SEEN, CONN_F_FIN_SEEN, CONN_F_RST_SEEN, CONN_F_SYN_SEEN,
    CTRL_F_HAS_WILDCARD, Conn, Ctrl, FlowKey, NO_BACKEND, PersistKey, PersistVal, Reason, SCHED_RR,
    SCHED_SH, SCHED_WRR, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, VipKey, VipMeta,
    hash::{addr_filter_bit, flow_hash, slot, src_hash, vip_slot},
};

use crate::counters;
use crate::maps::{
    BACKENDS, CONNS, MAGLEV, PERSIST, RR_STATE, VIP_FILTER, VIP_GEN, VIP_INDEX, VIPS,
};

const NS: u64 = 1_000_000_000;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// VIP lookup: exact (addr, port, proto), then the address's wildcard-port service.
#[inline(always)]
pub fn vip(flow: &FlowKey, ctrl: &Ctrl) -> Option<&'static VipMeta> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(m) = vip_exact(&key) {
        return Some(m);
    }
    if ctrl.flags & CTRL_F_HAS_WILDCARD == 0 {
        return None;
    }
    key.port = 0;
    vip_exact(&key)
}

/// VIP_INDEX first (an inline read), VIPS when the slot holds another key or none.
#[inline(always)]
fn vip_exact(key: &VipKey) -> Option<&'static VipMeta> {
    if let Some(s) = VIP_INDEX.get(vip_slot(key))
        && s.live == 1
        && s.key == *key
    {
        return Some(&s.meta);
    }
    unsafe { VIPS.get(key) }
}

/// Whether some VIP lives on the flow's destination address (the marker entry).
#[inline(always)]
pub fn vip_addr_known(flow: &FlowKey) -> bool {
    if !maybe_vip(&flow.dst) {
        return false;
    }
    let key = VipKey {
        addr: flow.dst,
        port: 0,
        proto: 0,
        family: flow.family,
    };
    unsafe { VIPS.get(&key) }.is_some()
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    match BACKENDS.get(id) {
        Some(b) if b.flags & BACKEND_F_VALID != 0 => Some(b),
        _ => None,
    }
}

/// Scalars only: a reference in here lets LLVM fold pointer bits into integer
/// arithmetic, which the verifier rightly rejects.
#[derive(Clone, Copy)]
pub struct Choice {
    pub id: u32,
    pub vip_idx: u32,
    /// The flow's `flow_hash` (outer source, GUE port, flow label).
    pub hash: u32,
    pub new_conn: bool,
}

/// The data plane's clock in ns: jiffies × tick length. The verifier turns the
/// jiffies read into one load; a ktime helper would be a call on every packet.
#[inline(always)]
pub fn now(ctrl: &Ctrl) -> u64 {
    unsafe { bpf_jiffies64() }.wrapping_mul(ctrl.ns_per_tick as u64)
}

/// May `addr` be a VIP? One bit of VIP_FILTER: no means certainly not.
#[inline(always)]
pub fn maybe_vip(addr: &[u8; 16]) -> bool {
    let bit = addr_filter_bit(addr);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) => (w >> (bit & 63)) & 1 != 0,
        None => true,
    }
}

/// An established flow: its entry's VIP still exists in the same generation, its
/// backend is valid and it has not idled out. Looked up before the VIP itself
/// (Cilium's lesson): a hit needs no VIP lookup and no scheduler.
#[inline(always)]
pub fn established(
    flow: &FlowKey,
    ctrl: &Ctrl,
    tcp_flags: u8,
    now: u64,
    track: bool,
) -> Option<Choice> {
    let c = CONNS.get_ptr_mut(flow)?;
    let c = unsafe { &mut *c };
    let idle = now.wrapping_sub(c.last_seen_ns);
    if idle >= c.timeout_secs(ctrl.conn_timeout_secs as u64) * NS
        || VIP_GEN.get(c.vip_idx).copied() != Some(c.vip_gen)
        || backend(c.backend).is_none()
    {
        return None;
    }
    if track {
        // Refresh at most once a second, and record the handshake's progress only
        // when it changes: keeps the hit path's writes rare.
        if idle > NS {
            c.last_seen_ns = now;
        }
        if tcp_flags & TCP_ACK != 0 && c.flags & CONN_F_ACK_SEEN == 0 {
            c.flags |= CONN_F_ACK_SEEN;
            if c.flags & CONN_F_SYN_SEEN != 0 {
                counters::handshake(c.backend);
            }
        }
        // The client closes (FIN) or aborts (RST): IPVS's FIN_WAIT / CLOSE, an
        // inactive entry that pins its flow only CONN_CLOSING_TIMEOUT_SECS more.
        let closing = ((tcp_flags & TCP_FIN != 0) as u32 * CONN_F_FIN_SEEN)
            | ((tcp_flags & TCP_RST != 0) as u32 * CONN_F_RST_SEEN);
        if closing & !c.flags != 0 {
            c.flags |= closing;
        }
    }
    Some(Choice {
        id: c.backend,
        vip_idx: c.vip_idx,
        hash: c.flow_hash,
        new_conn: false,
    })
}

/// A TCP SYN (without ACK) for `vip`: a new connection by definition, so the
/// connection table is not searched first (the insert itself tells us if an entry
/// existed). A retransmitted SYN, whose entry has seen no ACK yet, stays where the
/// first went; a SYN on an established entry is a reused 5-tuple and is scheduled
/// afresh, as IPVS does.
#[inline(always)]
pub fn syn(flow: &FlowKey, vip: &VipMeta, ctrl: &Ctrl, now: u64) -> Result<Choice, Reason> {
    let hash = flow_hash(flow);
    let id = persistent_or_scheduled(flow, hash, vip, ctrl, now, true)?;
    if backend(id).is_none() {
        return Err(Reason::DropNoBackend);
    }
    let vip_gen = VIP_GEN.get(vip.idx).copied().unwrap_or(0);
    let conn = Conn {
        backend: id,
        flags: CONN_F_SYN_SEEN,
        last_seen_ns: now,
        vip_idx: vip.idx,
        vip_gen,
        flow_hash: hash,
        _pad: 0,
    };
    if CONNS.insert(flow, &conn, BPF_NOEXIST).is_ok() {
        return Ok(Choice {
            id,
            vip_idx: vip.idx,
            hash,
            new_conn: true,
        });
    }
    if let Some(c) = CONNS.get_ptr_mut(flow) {
        let c = unsafe { &mut *c };
        if c.flags & CONN_F_ACK_SEEN == 0
            && c.vip_gen == vip_gen
            && c.vip_idx == vip.idx
            && now.wrapping_sub(c.last_seen_ns) < ctrl.conn_timeout_secs as u64 * NS
            && backend(c.backend).is_some()
        {
            counters::syn_retransmit(c.vip_idx, c.backend, now);
            return Ok(Choice {
                id: c.backend,
                vip_idx: c.vip_idx,
                hash,
                new_conn: false,
            });
        }
    }
    let _ = CONNS.insert(flow, &conn, BPF_ANY);
    Ok(Choice {
        id,
        vip_idx: vip.idx,
        hash,
        new_conn: true,
    })
}

/// A new flow for `vip`: persistence, else the scheduler. With `track` (ordinary
/// packets) it is entered in the connection table; without it (ICMP errors) the
/// tables are only read.
#[inline(always)]
pub fn new_flow(
    flow: &FlowKey,
    vip: &VipMeta,
    ctrl: &Ctrl,
    tcp_flags: u8,
    now: u64,
    track: bool,
) -> Result<Choice, Reason> {
    let hash = flow_hash(flow);
    let id = persistent_or_scheduled(flow, hash, vip, ctrl, now, track)?;
    if backend(id).is_none() {
        return Err(Reason::DropNoBackend);
    }
    if track {
        let mut flags = 0;
        if tcp_flags & TCP_SYN != 0 {
            flags |= CONN_F_SYN_SEEN;
        }
        if tcp_flags & TCP_ACK != 0 {
            flags |= CONN_F_ACK_SEEN;
        }
        let conn = Conn {
            backend: id,
            flags,
            last_seen_ns: now,
            vip_idx: vip.idx,
            vip_gen: VIP_GEN.get(vip.idx).copied().unwrap_or(0),
            flow_hash: hash,
            _pad: 0,
        };
        let _ = CONNS.insert(flow, &conn, 0);
    }
    Ok(Choice {
        id,
        vip_idx: vip.idx,
        hash,
        new_conn: true,
    })
}

#[inline(always)]
fn persistent_or_scheduled(
    flow: &FlowKey,
    hash: u32,
    vip: &VipMeta,
    ctrl: &Ctrl,
    now: u64,
    track: bool,
) -> Result<u32, Reason> {
    if vip.persist_secs == 0 {
        return schedule(flow, hash, vip, ctrl);
    }
    let key = PersistKey {
        client: flow.src,
        vip_idx: vip.idx,
    };
    let ttl = vip.persist_secs as u64 * NS;
    if let Some(t) = PERSIST.get_ptr_mut(&key) {
        let t = unsafe { &mut *t };
        if now < t.expires_ns && backend(t.backend).is_some() {
            if track {
                t.expires_ns = now + ttl;
            }
            return Ok(t.backend);
        }
    }
    let id = schedule(flow, hash, vip, ctrl)?;
    if !track {
        return Ok(id);
    }
    let _ = PERSIST.insert(
        &key,
        &PersistVal {
            backend: id,
            _pad: 0,
            expires_ns: now + ttl,
        },
        0,
    );
    Ok(id)
}

/// The scheduler proper: a slot of the VIP's table, by hash (mh, sh) or in sequence (rr, wrr).
#[inline(always)]
fn schedule(flow: &FlowKey, hash: u32, vip: &VipMeta, ctrl: &Ctrl) -> Result<u32, Reason> {
    let ring = ctrl.ring_size;
    let pos = if vip.sched == SCHED_RR || vip.sched == SCHED_WRR {
        let Some(st) = RR_STATE.get_ptr_mut(vip.idx) else {
            return Err(Reason::DropInternal);
        };
        let st = unsafe { &mut *st };
        let len = vip.seq_len;
        let cur = if *st < len { *st } else { 0 };
        *st = if cur + 1 < len { cur + 1 } else { 0 };
        cur
    } else if vip.sched == SCHED_SH {
        slot(src_hash(&flow.src), ring)
    } else {
        slot(hash, ring)
    };
    let flat = vip.idx * ring + pos;
    match MAGLEV.get(flat >> 1) {
        Some(pair) => match pair[(flat & 1) as usize] {
            NO_BACKEND => Err(Reason::DropNoBackend),
            id => Ok(id),
        },
        None => Err(Reason::DropNoBackend),
    }
}
