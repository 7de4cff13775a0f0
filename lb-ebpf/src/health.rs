//! Answers to the daemon's half-open TCP checks, taken here instead of by the kernel.
//!
//! The daemon checks backends with a bare SYN from a reserved range of source ports
//! (lb-daemon's `halfopen`). Left to the kernel, each answer is an skb, a route
//! lookup, a copy to the daemon's raw socket, and for a SYN-ACK an RST built and
//! routed out again. Here the answer is recognised by its port and by the cookie in
//! our ISN (`hash::hc_cookie`, so no map entry per check and no other traffic to those
//! ports is touched), queued for the daemon on HC_ANSWERS, and a SYN-ACK is turned in
//! place into the RST the kernel would have sent (RFC 9293: `seq` = the segment's
//! ACK, no ACK of our own). When the ring is full the packet goes to the kernel, which
//! handles it as before.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, HC_ANSWER_OPEN, HC_ANSWER_REFUSED, HC_COOKIE_MASK, HC_F_POLLED, HcAnswer, PROTO_TCP,
    Reason, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, hash,
};

use crate::{
    csum,
    maps::{HC_ANSWERS, HC_CTRL},
    parse::{self, Packet, ptr_at, within},
};

const TCP_HDR_LEN: usize = 20;
const RST_TTL: u8 = 64;

/// Whether a TCP segment with these flags can be an answer to a SYN (ACK with SYN or
/// RST): the cheap test before anything else is read.
#[inline(always)]
pub fn maybe_answer(flags: u8) -> bool {
    flags & TCP_ACK != 0 && flags & (TCP_SYN | TCP_RST) != 0
}

/// `p` (TCP, not a fragment, `maybe_answer`): the reason it leaves with when it
/// answers one of the daemon's checks, else None. A function of its own (a BPF
/// subprogram with its own stack frame): inlined, its buffers pushed `xdp_lb` past
/// the 512-byte stack, and it only runs for SYN-ACKs and RSTs.
#[inline(never)]
pub fn answer(ctx: &XdpContext, p: &Packet) -> Option<Reason> {
    match try_answer(ctx, p) {
        Ok(r) => r,
        Err(r) => Some(r),
    }
}

#[inline(always)]
fn try_answer(ctx: &XdpContext, p: &Packet) -> Result<Option<Reason>, Reason> {
    let Some(hc) = HC_CTRL.get(0) else {
        return Ok(None);
    };
    let lport = u16::from_be(p.flow.dport);
    if hc.port_hi == 0 || lport < hc.port_lo || lport > hc.port_hi {
        return Ok(None);
    }
    let refused = p.tcp_flags & TCP_RST != 0;
    if !refused && p.tcp_flags & (TCP_SYN | TCP_FIN) != TCP_SYN {
        return Ok(None);
    }
    within(p, p.l4_off, TCP_HDR_LEN)?;
    let th: *mut [u8; TCP_HDR_LEN] = ptr_at(ctx, p.l4_off)?;
    let th = unsafe { &*th };
    let ack = u32::from_be_bytes([th[8], th[9], th[10], th[11]]);
    let rport = u16::from_be(p.flow.sport);
    if (ack.wrapping_sub(1) ^ hash::hc_cookie(&hc.secret, &p.flow.src, rport)) & HC_COOKIE_MASK != 0
    {
        return Ok(None);
    }
    // BPF_RB_NO_WAKEUP while the daemon polls: no irq_work (a self-IPI) per answer.
    let flags = if hc.flags & HC_F_POLLED != 0 { 1 } else { 0 };
    // Written in place in the ring: the frame stays small (see `answer`).
    let Some(mut slot) = HC_ANSWERS.reserve::<HcAnswer>(0) else {
        return Ok(None);
    };
    let ev = slot.as_mut_ptr();
    unsafe {
        (*ev).remote = p.flow.src;
        (*ev).ack = ack;
        (*ev).rport = rport;
        (*ev).lport = lport;
        (*ev).family = p.flow.family;
        (*ev).kind = if refused {
            HC_ANSWER_REFUSED
        } else {
            HC_ANSWER_OPEN
        };
        (*ev)._pad = [0; 2];
    }
    slot.submit(flags);
    Ok(Some(if refused {
        Reason::DropHealthAnswer
    } else {
        Reason::TxHealthReset
    }))
}

/// The one's-complement sum of the two 16-bit words of `w` as read from the packet.
#[inline(always)]
fn word_sum(w: u32) -> u64 {
    let w = u32::from_be(w);
    (w >> 16) as u64 + (w & 0xffff) as u64
}

/// For `answer`'s TxHealthReset: the SYN-ACK in `ctx` becomes our RST (options and
/// payload cut, ports and addresses swapped, `seq` = its ACK). A subprogram apart from
/// `answer` for the same reason: each frame fits beside `xdp_lb`'s, both would not.
#[inline(never)]
pub fn reset(ctx: &XdpContext, p: &Packet) -> Reason {
    match try_reset(ctx, p) {
        Ok(r) | Err(r) => r,
    }
}

/// Word-sized reads and writes throughout, the checksums summed as the words go by
/// (the IPv6 addresses by the kernel): byte arrays have LLVM hold every byte in a
/// register or on the stack.
#[inline(always)]
fn try_reset(ctx: &XdpContext, p: &Packet) -> Result<Reason, Reason> {
    let l3 = p.l3_off;
    let l4 = p.l4_off;
    within(p, l4, TCP_HDR_LEN)?;
    // TCP: ports swapped, seq = their ACK, no ACK, data offset 5, RST, window 0.
    let th: *mut [u32; 5] = ptr_at(ctx, l4)?;
    let off_flags = u32::from_ne_bytes([0x50, TCP_RST, 0, 0]);
    // Pseudo-header protocol and length, the data offset and flags.
    let mut sum = PROTO_TCP as u64 + TCP_HDR_LEN as u64 + word_sum(off_flags);
    unsafe {
        let t = &mut *th;
        let (ports, ack) = (t[0], t[2]);
        sum += word_sum(ports) + word_sum(ack);
        *t = [ports.rotate_left(16), ack, 0, off_flags, 0];
    }
    let l3_len = (l4 - l3) as u16;
    if p.flow.family == FAMILY_V4 {
        // As 16-bit words: 1 total length, 4 TTL and protocol, 5 checksum, 6..10 addresses.
        let h: *mut [u16; 10] = ptr_at(ctx, l3)?;
        unsafe {
            let h = &mut *h;
            for i in 6..8 {
                sum += u16::from_be(h[i]) as u64 + u16::from_be(h[i + 2]) as u64;
                h.swap(i, i + 2);
            }
            // The swap leaves the header checksum as it was; length and TTL do not.
            let new_len = l3_len + TCP_HDR_LEN as u16;
            let new_ttl = u16::from_be_bytes([RST_TTL, PROTO_TCP]);
            let c = csum::replace16(h[5].to_ne_bytes(), u16::from_be(h[1]), new_len);
            let c = csum::replace16(c, u16::from_be(h[4]), new_ttl);
            h[1] = new_len.to_be();
            h[4] = new_ttl.to_be();
            h[5] = u16::from_ne_bytes(c);
        }
    } else {
        let addrs: *mut [u32; 8] = ptr_at(ctx, l3 + 8)?;
        let plen_next_hop: *mut [u16; 2] = ptr_at(ctx, l3 + 4)?;
        unsafe {
            // Summed by the kernel: summed here, LLVM keeps all eight words live at
            // once, on the stack. csum_diff sums native-endian words: swapped to ours.
            let raw = bpf_csum_diff(core::ptr::null_mut(), 0, addrs.cast(), 32, 0);
            if raw < 0 {
                return Err(Reason::DropInternal);
            }
            sum += csum::fold(raw as u64).swap_bytes() as u64;
            let a = &mut *addrs;
            for i in 0..4 {
                a.swap(i, i + 4);
            }
            let next = (*plen_next_hop)[1].to_ne_bytes()[0];
            *plen_next_hop = [
                (l3_len - 40 + TCP_HDR_LEN as u16).to_be(),
                u16::from_ne_bytes([next, RST_TTL]),
            ];
        }
    }
    let check: *mut u16 = ptr_at(ctx, l4 + 16)?;
    unsafe { *check = u16::from_ne_bytes(csum::finish(sum)) };
    parse::swap_macs(ctx)?;
    // Options and payload cut last: nothing but ctx is live across the helper call.
    // It only fails on a frame already rewritten, which then cannot go anywhere.
    let keep = l4 + TCP_HDR_LEN;
    let len = ctx.data_end() - ctx.data();
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len as i32) } != 0 {
        return Err(Reason::DropInternal);
    }
    Ok(Reason::TxHealthReset)
}
