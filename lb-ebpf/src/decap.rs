//! Decapsulation for real servers that have no tunnel device (no ipip / fou module):
//! strips an outer IPv4/IPv6 header (IPIP, IP6IP6, 4in6, 6in4) or IP + UDP (GUE,
//! direct IP payload) and passes the inner packet to the kernel.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS, helpers::bpf_xdp_adjust_head, macros::map, maps::Array,
    maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{DEFAULT_GUE_PORT, PROTO_IPIP, PROTO_IPV6, PROTO_UDP};

use crate::parse::{ETH_LEN, VLAN_LEN, l2, ptr_at};

/// DECAP_CFG[0]: GUE UDP port (host order; 0 = default 6080).
#[map]
pub static DECAP_CFG: Array<u32> = Array::with_max_entries(1, 0);

/// DECAP_STATS: [0] decapsulated, [1] passed untouched.
#[map]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn count(i: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(i) {
        unsafe { *c += 1 }
    }
}

pub fn decap(ctx: &XdpContext) -> u32 {
    let decapped = try_decap(ctx).is_ok();
    count(if decapped { 0 } else { 1 });
    XDP_PASS
}

#[inline(always)]
fn gue_port() -> u16 {
    match DECAP_CFG.get(0) {
        Some(&p) if p != 0 => p as u16,
        _ => DEFAULT_GUE_PORT,
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<(), ()> {
    let (l3_off, ty) = l2(ctx).map_err(|_| ())?;
    // Copy the L2 header now, while its bounds check is the freshest one the verifier knows.
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0).map_err(|_| ())?;
    let mut e = unsafe { *eth };
    let mut tag = [0u8; VLAN_LEN];
    if l3_off > ETH_LEN {
        let t: *const [u8; VLAN_LEN] = ptr_at(ctx, ETH_LEN).map_err(|_| ())?;
        tag = unsafe { *t };
    }
    let (outer_len, proto) = if ty == 0x0800 {
        let ip: *const [u8; 20] = ptr_at(ctx, l3_off).map_err(|_| ())?;
        let ip = unsafe { &*ip };
        (((ip[0] & 0x0f) as usize) * 4, ip[9])
    } else if ty == 0x86dd {
        let ip: *const [u8; 40] = ptr_at(ctx, l3_off).map_err(|_| ())?;
        (40, unsafe { (*ip)[6] })
    } else {
        return Err(());
    };
    let strip = match proto {
        PROTO_IPIP | PROTO_IPV6 => outer_len,
        PROTO_UDP => {
            let udp: *const [u8; 8] = ptr_at(ctx, l3_off + outer_len).map_err(|_| ())?;
            let dport = unsafe { u16::from_be_bytes([(*udp)[2], (*udp)[3]]) };
            if dport != gue_port() {
                return Err(());
            }
            outer_len + 8
        }
        _ => return Err(()),
    };
    if strip < 20 {
        return Err(());
    }
    // At least a minimal inner header must be there (a 1-byte check would be
    // compiled into a form the verifier cannot use).
    let inner: *const [u8; 20] = ptr_at(ctx, l3_off + strip).map_err(|_| ())?;
    let inner_type: u16 = match unsafe { (*inner)[0] } >> 4 {
        4 => 0x0800,
        6 => 0x86dd,
        _ => return Err(()),
    };
    // Drop the outer headers, then write the saved L2 header (with the inner
    // ethertype) at the new start.
    let t = inner_type.to_be_bytes();
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Err(());
    }
    if l3_off > ETH_LEN {
        tag[2] = t[0];
        tag[3] = t[1];
        let ntag: *mut [u8; VLAN_LEN] = ptr_at(ctx, ETH_LEN).map_err(|_| ())?;
        unsafe { *ntag = tag };
    } else {
        e[12] = t[0];
        e[13] = t[1];
    }
    let neth: *mut [u8; ETH_LEN] = ptr_at(ctx, 0).map_err(|_| ())?;
    unsafe { *neth = e };
    Ok(())
}
