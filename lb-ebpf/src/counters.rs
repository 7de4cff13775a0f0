//! Per-CPU counters: plain adds on this CPU's copy, no atomics.

use lb_common::{Counters, Reason};

use crate::maps::{BACKEND_STATS, REASONS, VIP_STATS};

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
