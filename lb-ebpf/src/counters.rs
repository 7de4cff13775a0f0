//! Per-CPU counters: plain adds on this CPU's copy, no atomics.

use lb_common::{
    Counters, EVENT_MIN_GAP_NS, EVENT_STAT_LOST, EVENT_STAT_SENT, EVENT_STAT_SUPPRESSED,
    EVENT_SYN_RETRANSMIT, PassiveEvent, Reason,
};

use crate::maps::{BACKEND_STATS, EVENT_RL, EVENT_STATS, EVENTS, REASONS, VIP_STATS};

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(r as u32) {
        unsafe { *c += 1 }
    }
}

#[inline(always)]
fn add(c: Option<*mut Counters>, bytes: u64, new_conn: bool) {
    if let Some(c) = c {
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        c.new_conns += new_conn as u64;
    }
}

#[inline(always)]
pub fn traffic(vip_idx: u32, backend: u32, bytes: u64, new_conn: bool) {
    add(VIP_STATS.get_ptr_mut(vip_idx), bytes, new_conn);
    add(BACKEND_STATS.get_ptr_mut(backend), bytes, new_conn);
}

/// A retransmitted SYN towards `backend`: counted, and reported to the daemon at most
/// once per EVENT_MIN_GAP_NS per backend on this CPU.
#[inline(always)]
pub fn syn_retransmit(vip_idx: u32, backend: u32, now: u64) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        unsafe { (*c).syn_retransmits += 1 }
    }
    let Some(last) = EVENT_RL.get_ptr_mut(backend) else {
        return;
    };
    let last = unsafe { &mut *last };
    if now.wrapping_sub(*last) < EVENT_MIN_GAP_NS {
        event_stat(EVENT_STAT_SUPPRESSED);
        return;
    }
    *last = now;
    let ev = PassiveEvent {
        kind: EVENT_SYN_RETRANSMIT,
        backend,
        vip_idx,
        _pad: 0,
        ts_ns: now,
    };
    if EVENTS.output(&ev, 0).is_ok() {
        event_stat(EVENT_STAT_SENT);
    } else {
        event_stat(EVENT_STAT_LOST);
    }
}

/// The client's first ACK on an entry: a completed handshake.
#[inline(always)]
pub fn handshake(backend: u32) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        unsafe { (*c).handshakes += 1 }
    }
}

#[inline(always)]
fn event_stat(i: u32) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(i) {
        unsafe { *c += 1 }
    }
}
