//! Forwarding: DR (L2 rewrite) and tunnels (IPIP, IP6IP6, GUE), plus the ICMP
//! "too big" answer when encapsulation would exceed the path MTU.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Backend, CTRL_F_SRC_FROM_FLOW, Ctrl, FAMILY_V4, ICMP_QUOTE_LEN, IPV4_HDR_LEN, IPV6_HDR_LEN,
    MODE_TUN_GUE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, Reason, UDP_HDR_LEN,
};

use crate::{
    csum,
    parse::{ETH_LEN, Packet, VLAN_LEN, ptr_at},
};

const TTL: u8 = 64;

/// DR: the frame goes to the real server's MAC, from ours (the MAC it was sent to).
#[inline(always)]
pub fn dr(ctx: &XdpContext, b: &Backend) -> Result<Reason, Reason> {
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let eth = unsafe { &mut *eth };
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&b.mac);
    out[6..].copy_from_slice(&eth[..6]);
    *eth = out;
    Ok(Reason::TxDr)
}

#[inline(always)]
fn overhead(b: &Backend) -> usize {
    let ip = if b.family == FAMILY_V4 {
        IPV4_HDR_LEN
    } else {
        IPV6_HDR_LEN
    };
    if b.mode == MODE_TUN_GUE {
        ip + UDP_HDR_LEN
    } else {
        ip
    }
}

/// An Ethernet header; `align(2)` lets LLVM copy it in 16-bit words, not bytes.
#[repr(C, align(2))]
#[derive(Clone, Copy)]
struct Eth {
    dst: [u8; 6],
    src: [u8; 6],
    ty: [u8; 2],
}

/// Moves the L2 header (with its VLAN tag, if any) from `from` to the new packet start,
/// setting the destination MAC to `dst` and the source to the frame's old destination.
#[inline(always)]
fn move_l2(ctx: &XdpContext, from: usize, l3_off: usize, dst: &[u8; 6]) -> Result<(), Reason> {
    let old: *const Eth = ptr_at(ctx, from)?;
    let new: *mut Eth = ptr_at(ctx, 0)?;
    let old = unsafe { *old };
    unsafe {
        *new = Eth {
            dst: *dst,
            src: old.dst,
            ty: old.ty,
        }
    };
    if l3_off > ETH_LEN {
        let otag: *const [u8; VLAN_LEN] = ptr_at(ctx, from + ETH_LEN)?;
        let ntag: *mut [u8; VLAN_LEN] = ptr_at(ctx, ETH_LEN)?;
        unsafe { *ntag = *otag };
    }
    Ok(())
}

/// The outer source address: fixed, or the configured prefix with host bits from the flow.
#[inline(always)]
fn outer_src_v4(ctrl: &Ctrl, hash: u32) -> [u8; 4] {
    let mut s = ctrl.tun_src_v4;
    if ctrl.flags & CTRL_F_SRC_FROM_FLOW != 0 {
        let h = hash.to_be_bytes();
        for i in 0..4 {
            let m = ctrl.tun_src_v4_hostmask[i];
            s[i] = (s[i] & !m) | (h[i] & m);
        }
    }
    s
}

#[inline(always)]
fn outer_src_v6(ctrl: &Ctrl, hash: u32) -> [u8; 16] {
    let mut s = ctrl.tun_src_v6;
    if ctrl.flags & CTRL_F_SRC_FROM_FLOW != 0 {
        s[12..].copy_from_slice(&hash.to_be_bytes());
    }
    s
}

/// An IPv4 header without options. `align(4)`: written in 32-bit words (the packet is
/// only 2-byte aligned there, which x86 and arm64 store fine and the verifier allows).
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id_frag: [u8; 4],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[inline(always)]
fn ipv4_header(len: u16, tos: u8, proto: u8, src: &[u8; 4], dst: &[u8; 4]) -> Ipv4Hdr {
    let l = len.to_be_bytes();
    // One's-complement sum of the header's 16-bit words (checksum field 0).
    let sum = u16::from_be_bytes([0x45, tos]) as u64
        + len as u64
        + u16::from_be_bytes([TTL, proto]) as u64
        + u16::from_be_bytes([src[0], src[1]]) as u64
        + u16::from_be_bytes([src[2], src[3]]) as u64
        + u16::from_be_bytes([dst[0], dst[1]]) as u64
        + u16::from_be_bytes([dst[2], dst[3]]) as u64;
    Ipv4Hdr {
        vihl: 0x45,
        tos,
        tot_len: l,
        id_frag: [0; 4],
        ttl: TTL,
        proto,
        check: csum::finish(sum),
        src: *src,
        dst: *dst,
    }
}

#[repr(C)]
struct Ipv6Hdr {
    vcf: [u8; 4],
    payload_len: [u8; 2],
    next: u8,
    hop: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// Tunnel: push an outer IPv4/IPv6 header (and UDP for GUE) in front of the IP packet.
#[inline(always)]
pub fn tunnel(
    ctx: &XdpContext,
    p: &Packet,
    hash: u32,
    b: &Backend,
    ctrl: &Ctrl,
    mtu_check: bool,
) -> Result<Reason, Reason> {
    let oh = overhead(b);
    let l3_off = p.l3_off;
    // What actually travels: the whole L3 part of the frame (trailing padding included).
    let carried = ctx.data_end() - ctx.data() - l3_off;
    if mtu_check && carried + oh > ctrl.mtu as usize {
        return too_big(ctx, p, ctrl.mtu as usize - oh);
    }
    // Inner TOS / traffic class, copied to the outer header (RFC 2003 / RFC 2473).
    let tos = {
        let b0: *const [u8; 2] = ptr_at(ctx, l3_off)?;
        let b0 = unsafe { *b0 };
        if p.flow.family == FAMILY_V4 {
            b0[1]
        } else {
            (b0[0] << 4) | (b0[1] >> 4)
        }
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(oh as i32)) } != 0 {
        return Err(Reason::DropInternal);
    }
    move_l2(ctx, oh, l3_off, &b.mac)?;
    let inner_len = carried;
    let gue = b.mode == MODE_TUN_GUE;
    let ip_off = l3_off;
    let (next, udp_off) = if b.family == FAMILY_V4 {
        let proto = if gue { PROTO_UDP } else { PROTO_IPIP };
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&b.addr[..4]);
        let h = ipv4_header(
            (inner_len + oh) as u16,
            tos,
            proto,
            &outer_src_v4(ctrl, hash),
            &dst,
        );
        let out: *mut Ipv4Hdr = ptr_at(ctx, ip_off)?;
        unsafe { *out = h };
        (proto, ip_off + IPV4_HDR_LEN)
    } else {
        let inner_is_v4 = p.flow.family == FAMILY_V4;
        let proto = if gue {
            PROTO_UDP
        } else if inner_is_v4 {
            PROTO_IPIP
        } else {
            PROTO_IPV6
        };
        let out: *mut Ipv6Hdr = ptr_at(ctx, ip_off)?;
        let out = unsafe { &mut *out };
        // Flow label from the flow hash (RFC 6438), so ECMP/RSS can spread tunnels.
        let fl = hash & 0x000f_ffff;
        out.vcf = [
            0x60 | (tos >> 4),
            (tos << 4) | (fl >> 16) as u8,
            (fl >> 8) as u8,
            fl as u8,
        ];
        out.payload_len = ((inner_len + oh - IPV6_HDR_LEN) as u16).to_be_bytes();
        out.next = proto;
        out.hop = TTL;
        out.src = outer_src_v6(ctrl, hash);
        out.dst = b.addr;
        (proto, ip_off + IPV6_HDR_LEN)
    };
    if next == PROTO_UDP {
        let udp: *mut [u8; 8] = ptr_at(ctx, udp_off)?;
        // Source port from the flow hash (RSS on the real server), checksum 0 (RFC 6935 for v6).
        let sport = ((hash >> 16) as u16 | 0x8000).to_be_bytes();
        let dport = b.gue_port.to_ne_bytes();
        let len = ((inner_len + UDP_HDR_LEN) as u16).to_be_bytes();
        unsafe { *udp = [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0] };
    }
    Ok(Reason::TxTun)
}

/// Turns the packet into ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6)
/// back to the client, quoting the start of the packet, and sends it out again.
#[inline(always)]
fn too_big(ctx: &XdpContext, p: &Packet, mtu: usize) -> Result<Reason, Reason> {
    let l3_off = p.l3_off;
    let v4 = p.flow.family == FAMILY_V4;
    let new_hdrs = if v4 {
        IPV4_HDR_LEN + 8
    } else {
        IPV6_HDR_LEN + 8
    };
    let keep = l3_off + ICMP_QUOTE_LEN;
    let cur = ctx.data_end() - ctx.data();
    if cur < keep {
        return Err(Reason::PassMalformed);
    }
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - cur as i32) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(new_hdrs as i32)) } != 0
    {
        return Err(Reason::DropInternal);
    }
    // Back to the client: swap the MACs.
    let src_mac = {
        let e: *const [u8; 12] = ptr_at(ctx, new_hdrs)?;
        let e = unsafe { *e };
        let mut m = [0u8; 6];
        m.copy_from_slice(&e[6..]);
        m
    };
    move_l2(ctx, new_hdrs, l3_off, &src_mac)?;
    let icmp_off = l3_off + new_hdrs - 8;
    let quote_off = l3_off + new_hdrs;
    let icmp: *mut [u8; 8] = ptr_at(ctx, icmp_off)?;
    let _: *const [u8; ICMP_QUOTE_LEN] = ptr_at(ctx, quote_off)?;
    let mtu16 = (mtu as u16).to_be_bytes();
    if v4 {
        unsafe { *icmp = [3, 4, 0, 0, 0, 0, mtu16[0], mtu16[1]] };
    } else {
        let m = (mtu as u32).to_be_bytes();
        unsafe { *icmp = [2, 0, 0, 0, m[0], m[1], m[2], m[3]] };
    }
    // Sum of the ICMP message (header + quote) by the kernel's csum_diff, which sums
    // native-endian words: swap it to our big-endian arithmetic.
    let msg_len = 8 + ICMP_QUOTE_LEN;
    let raw = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp as *mut u32,
            msg_len as u32,
            0,
        )
    };
    if raw < 0 {
        return Err(Reason::DropInternal);
    }
    let mut sum = csum::fold(raw as u64).swap_bytes() as u64;
    if v4 {
        let q: *const [u8; 20] = ptr_at(ctx, quote_off)?;
        let q = unsafe { *q };
        let mut client = [0u8; 4];
        let mut vip = [0u8; 4];
        client.copy_from_slice(&q[12..16]);
        vip.copy_from_slice(&q[16..20]);
        let h = ipv4_header(
            (IPV4_HDR_LEN + msg_len) as u16,
            0,
            PROTO_ICMP,
            &vip,
            &client,
        );
        let out: *mut Ipv4Hdr = ptr_at(ctx, l3_off)?;
        unsafe { *out = h };
    } else {
        let q: *const Ipv6Hdr = ptr_at(ctx, quote_off)?;
        let (client, vip) = unsafe { ((*q).src, (*q).dst) };
        sum +=
            csum::sum_bytes(&client) + csum::sum_bytes(&vip) + msg_len as u64 + PROTO_ICMPV6 as u64;
        let out: *mut Ipv6Hdr = ptr_at(ctx, l3_off)?;
        let out = unsafe { &mut *out };
        out.vcf = [0x60, 0, 0, 0];
        out.payload_len = (msg_len as u16).to_be_bytes();
        out.next = PROTO_ICMPV6;
        out.hop = TTL;
        out.src = vip;
        out.dst = client;
    }
    let c = csum::finish(sum);
    let icmp: *mut [u8; 8] = ptr_at(ctx, icmp_off)?;
    unsafe {
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
    Ok(Reason::TxIcmpTooBig)
}
