//! ICMP to a VIP: echo requests are answered here; errors about a VIP flow
//! (unreachable / fragmentation needed / packet too big / time exceeded) are sent
//! to the backend that owns the flow, found from the quoted header.

use aya_ebpf::programs::XdpContext;
use lb_common::{Ctrl, FAMILY_V4, Reason};

use crate::{
    csum, forward,
    parse::{self, Packet, ptr_at, quoted_flow},
    select,
};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

#[inline(always)]
fn is_error(family: u8, ty: u8) -> bool {
    if family == FAMILY_V4 {
        ty == 3 || ty == 11 // destination unreachable (incl. frag needed), time exceeded
    } else {
        ty == 1 || ty == 2 || ty == 3 // unreachable, packet too big, time exceeded
    }
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, p: &Packet, ctrl: &Ctrl) -> Result<Reason, Reason> {
    let hdr: *mut [u8; 4] = ptr_at(ctx, p.l4_off)?;
    let ty = unsafe { (*hdr)[0] };
    let fam = p.flow.family;
    let request = if fam == FAMILY_V4 {
        ECHO_REQUEST_V4
    } else {
        ECHO_REQUEST_V6
    };
    if ty == request {
        if !select::vip_addr_known(&p.flow) {
            return Ok(Reason::PassNotVip);
        }
        return echo_reply(ctx, p, hdr);
    }
    if is_error(fam, ty) {
        // Where the quoted packet (VIP → client) was going tells us the flow.
        if let Ok(flow) = quoted_flow(ctx, p, p.l4_off + 8, fam)
            && let Some(vip) = select::vip(&flow, ctrl)
        {
            let now = select::now(ctrl);
            let choice = match select::established(&flow, ctrl, 0, now, false) {
                Some(c) => c,
                None => select::new_flow(&flow, vip, ctrl, 0, now, false)?,
            };
            let r = forward::to_backend(ctx, p, &choice, ctrl, false)?;
            // DR/TUN forwarding of the error (a too-big answer is never sent for it).
            return Ok(if r == Reason::DropNoBackend {
                r
            } else {
                Reason::TxIcmpErrorFwd
            });
        }
    }
    Ok(if select::vip_addr_known(&p.flow) {
        Reason::PassIcmpOther
    } else {
        Reason::PassNotVip
    })
}

/// Echo reply in place: swap addresses (the IP checksum is unchanged by a swap),
/// change the type (checksum updated incrementally) and swap the MACs.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, p: &Packet, hdr: *mut [u8; 4]) -> Result<Reason, Reason> {
    let hdr = unsafe { &mut *hdr };
    let v4 = p.flow.family == FAMILY_V4;
    let new_ty = if v4 { ECHO_REPLY_V4 } else { ECHO_REPLY_V6 };
    let old = u16::from_be_bytes([hdr[0], hdr[1]]);
    let new = u16::from_be_bytes([new_ty, hdr[1]]);
    let c = csum::replace16([hdr[2], hdr[3]], old, new);
    *hdr = [new_ty, hdr[1], c[0], c[1]];
    if v4 {
        let a: *mut [u8; 8] = ptr_at(ctx, p.l3_off + 12)?;
        let a = unsafe { &mut *a };
        *a = [a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]];
    } else {
        let src: *mut [u8; 16] = ptr_at(ctx, p.l3_off + 8)?;
        let dst: *mut [u8; 16] = ptr_at(ctx, p.l3_off + 24)?;
        unsafe { core::ptr::swap(src, dst) };
    }
    parse::swap_macs(ctx)?;
    Ok(Reason::TxIcmpEcho)
}
