//! Backend selection: connection table first (Cilium's lesson: the scheduler
//! only runs for new flows), then persistence, then the VIP's scheduler.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    BACKEND_F_VALID, Backend, CONN_F_ACK_SEEN, CONN_F_SYN_SEEN, CTRL_F_HAS_WILDCARD, Conn, Ctrl,
    FlowKey, NO_BACKEND, PersistKey, PersistVal, Reason, SCHED_RR, SCHED_SH, SCHED_WRR, VipKey,
    VipMeta,
    hash::{flow_hash, slot, src_hash},
};

use crate::maps::{BACKENDS, CONNS, MAGLEV, PERSIST, RR_STATE, VIPS};

const NS: u64 = 1_000_000_000;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// VIP lookup: exact (addr, port, proto), then the address's wildcard-port service.
#[inline(always)]
pub fn vip(flow: &FlowKey, ctrl: &Ctrl) -> Option<&'static VipMeta> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(m) = unsafe { VIPS.get(&key) } {
        return Some(m);
    }
    if ctrl.flags & CTRL_F_HAS_WILDCARD == 0 {
        return None;
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }
}

/// Whether some VIP lives on the flow's destination address (the marker entry).
#[inline(always)]
pub fn vip_addr_known(flow: &FlowKey) -> bool {
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
    pub new_conn: bool,
}

/// The backend for `flow`. With `track` (ordinary packets) a new flow is entered in
/// the connection table; without it (ICMP errors) the tables are only read.
#[inline(always)]
pub fn choose(
    flow: &FlowKey,
    vip: &VipMeta,
    ctrl: &Ctrl,
    tcp_flags: u8,
    track: bool,
) -> Result<Choice, Reason> {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(c) = CONNS.get_ptr_mut(flow) {
        let c = unsafe { &mut *c };
        let idle = now.wrapping_sub(c.last_seen_ns);
        if idle < ctrl.conn_timeout_secs as u64 * NS && backend(c.backend).is_some() {
            // Refresh at most once a second, and record the handshake's progress
            // only when it changes: keeps the hit path's writes rare.
            if idle > NS {
                c.last_seen_ns = now;
            }
            if tcp_flags & TCP_ACK != 0 && c.flags & CONN_F_ACK_SEEN == 0 {
                c.flags |= CONN_F_ACK_SEEN;
            }
            return Ok(Choice {
                id: c.backend,
                new_conn: false,
            });
        }
    }
    let id = persistent_or_scheduled(flow, vip, ctrl, now, track)?;
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
            _pad: 0,
        };
        let _ = CONNS.insert(flow, &conn, 0);
    }
    Ok(Choice { id, new_conn: true })
}

#[inline(always)]
fn persistent_or_scheduled(
    flow: &FlowKey,
    vip: &VipMeta,
    ctrl: &Ctrl,
    now: u64,
    track: bool,
) -> Result<u32, Reason> {
    if vip.persist_secs == 0 {
        return schedule(flow, vip, ctrl);
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
    let id = schedule(flow, vip, ctrl)?;
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
fn schedule(flow: &FlowKey, vip: &VipMeta, ctrl: &Ctrl) -> Result<u32, Reason> {
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
        slot(flow_hash(flow), ring)
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
