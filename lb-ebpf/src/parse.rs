//! Header parsing. Every read is bounds-checked against `data_end`; anything
//! truncated or inconsistent ends as `Reason::PassMalformed` and is never forwarded.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason,
};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_FRAG: u8 = 44;

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

/// A bounds-checked pointer `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    Ok((start + off) as *mut T)
}

/// Swaps the Ethernet source and destination: a frame answered back out.
/// In 16-bit words: no 12-byte copy on the stack.
#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Result<(), Reason> {
    let eth: *mut [u16; 6] = ptr_at(ctx, 0)?;
    let e = unsafe { &mut *eth };
    for i in 0..3 {
        e.swap(i, i + 3);
    }
    Ok(())
}

#[inline(always)]
pub fn be16(b: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*b)
}

pub struct Packet {
    /// Offset of the IP header (14, or 18 behind one 802.1Q tag).
    pub l3_off: usize,
    /// Offset of the L4 (or ICMP) header.
    pub l4_off: usize,
    /// IP datagram length from the header (bytes counted in stats).
    pub ip_len: u32,
    /// Client → VIP 5-tuple (ports 0 for later fragments and ICMP).
    pub flow: FlowKey,
    pub frag: u8,
    /// IPv4 ID or IPv6 fragment identification (raw, network order).
    pub frag_id: u32,
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset just past the IP datagram (Ethernet padding may follow).
    #[inline(always)]
    pub fn end(&self) -> usize {
        self.l3_off + self.ip_len as usize
    }
}

/// `len` bytes at `off` must lie inside the IP datagram, not just inside the frame:
/// a header in Ethernet padding is malformed, not a header.
#[inline(always)]
pub fn within(p: &Packet, off: usize, len: usize) -> Result<(), Reason> {
    if off + len > p.end() {
        return Err(Reason::PassMalformed);
    }
    Ok(())
}

/// `align(4)`: lets LLVM read the addresses as words. The packet is only 2-byte aligned
/// there, which x86 and arm64 load fine and the verifier allows without strict alignment.
#[repr(C, align(4))]
struct Ipv4 {
    vihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C, align(4))]
struct Ipv6 {
    vcf: [u8; 4],
    payload_len: [u8; 2],
    next: u8,
    hop: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct Frag6 {
    next: u8,
    _res: u8,
    off: [u8; 2],
    id: [u8; 4],
}

/// Returns the offset of the IP header and the ethertype behind at most one VLAN tag.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<(usize, u16), Reason> {
    let eth: *const [u8; ETH_LEN] = ptr_at(ctx, 0)?;
    let mut ty = u16::from_be_bytes(unsafe { [(*eth)[12], (*eth)[13]] });
    let mut off = ETH_LEN;
    if ty == ETH_P_8021Q || ty == ETH_P_8021AD {
        let tag: *const [u8; VLAN_LEN] = ptr_at(ctx, ETH_LEN)?;
        ty = u16::from_be_bytes(unsafe { [(*tag)[2], (*tag)[3]] });
        off += VLAN_LEN;
    }
    Ok((off, ty))
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let (l3_off, ty) = l2(ctx)?;
    let avail = ctx.data_end() - ctx.data();
    let mut p = Packet {
        l3_off,
        l4_off: 0,
        ip_len: 0,
        flow: FlowKey::default(),
        frag: FRAG_NONE,
        frag_id: 0,
        tcp_flags: 0,
    };
    if ty == ETH_P_IP {
        let ip: *const Ipv4 = ptr_at(ctx, l3_off)?;
        let ip = unsafe { &*ip };
        let hl = ((ip.vihl & 0x0f) as usize) * 4;
        let tot = be16(&ip.tot_len) as usize;
        if ip.vihl >> 4 != 4 || hl < 20 || tot < hl || l3_off + tot > avail {
            return Err(Reason::PassMalformed);
        }
        p.l4_off = l3_off + hl;
        p.ip_len = tot as u32;
        p.flow.family = FAMILY_V4;
        p.flow.proto = ip.proto;
        p.flow.src[..4].copy_from_slice(&ip.src);
        p.flow.dst[..4].copy_from_slice(&ip.dst);
        let frag = be16(&ip.frag);
        if frag & 0x3fff != 0 {
            p.frag = if frag & 0x1fff == 0 {
                FRAG_FIRST
            } else {
                FRAG_LATER
            };
            p.frag_id = u16::from_ne_bytes(ip.id) as u32;
        }
    } else if ty == ETH_P_IPV6 {
        let ip: *const Ipv6 = ptr_at(ctx, l3_off)?;
        let ip = unsafe { &*ip };
        let tot = be16(&ip.payload_len) as usize + 40;
        if ip.vcf[0] >> 4 != 6 || l3_off + tot > avail {
            return Err(Reason::PassMalformed);
        }
        p.l4_off = l3_off + 40;
        p.ip_len = tot as u32;
        p.flow.family = FAMILY_V6;
        p.flow.proto = ip.next;
        p.flow.src = ip.src;
        p.flow.dst = ip.dst;
        if ip.next == IPV6_FRAG {
            within(&p, p.l4_off, 8)?;
            let fh: *const Frag6 = ptr_at(ctx, p.l4_off)?;
            let fh = unsafe { &*fh };
            let off = be16(&fh.off);
            p.flow.proto = fh.next;
            p.l4_off += 8;
            p.frag_id = u32::from_ne_bytes(fh.id);
            p.frag = if off & 0xfff8 != 0 {
                FRAG_LATER
            } else if off & 1 != 0 {
                FRAG_FIRST
            } else {
                // An atomic fragment (RFC 6946): a whole datagram in one piece.
                FRAG_NONE
            };
        }
    } else {
        return Err(Reason::PassNotIp);
    }
    if p.frag == FRAG_LATER {
        return Ok(p);
    }
    match p.flow.proto {
        PROTO_TCP => {
            within(&p, p.l4_off, 20)?;
            let th: *const [u8; 20] = ptr_at(ctx, p.l4_off)?;
            let th = unsafe { &*th };
            p.flow.sport = u16::from_ne_bytes([th[0], th[1]]);
            p.flow.dport = u16::from_ne_bytes([th[2], th[3]]);
            p.tcp_flags = th[13];
        }
        PROTO_UDP => {
            within(&p, p.l4_off, 8)?;
            let uh: *const [u8; 8] = ptr_at(ctx, p.l4_off)?;
            let uh = unsafe { &*uh };
            p.flow.sport = u16::from_ne_bytes([uh[0], uh[1]]);
            p.flow.dport = u16::from_ne_bytes([uh[2], uh[3]]);
        }
        proto if is_icmp(p.flow.family, proto) => {
            within(&p, p.l4_off, 8)?;
            let _: *const [u8; 8] = ptr_at(ctx, p.l4_off)?;
        }
        _ => {}
    }
    Ok(p)
}

/// ICMP for the packet's own family only (protocol 58 in IPv4 is not ICMP).
#[inline(always)]
pub fn is_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_V4 && proto == PROTO_ICMP) || (family == FAMILY_V6 && proto == PROTO_ICMPV6)
}

/// The flow an ICMP error is about, reversed into the client → VIP direction.
/// `off` is the offset of the quoted (inner) IP header.
#[inline(always)]
pub fn quoted_flow(
    ctx: &XdpContext,
    p: &Packet,
    off: usize,
    family: u8,
) -> Result<FlowKey, Reason> {
    let mut f = FlowKey {
        family,
        ..FlowKey::default()
    };
    let l4 = if family == FAMILY_V4 {
        within(p, off, 20)?;
        let ip: *const Ipv4 = ptr_at(ctx, off)?;
        let ip = unsafe { &*ip };
        let hl = ((ip.vihl & 0x0f) as usize) * 4;
        if ip.vihl >> 4 != 4 || hl < 20 {
            return Err(Reason::PassMalformed);
        }
        f.proto = ip.proto;
        f.src[..4].copy_from_slice(&ip.dst);
        f.dst[..4].copy_from_slice(&ip.src);
        off + hl
    } else {
        within(p, off, 40)?;
        let ip: *const Ipv6 = ptr_at(ctx, off)?;
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(Reason::PassMalformed);
        }
        f.proto = ip.next;
        f.src = ip.dst;
        f.dst = ip.src;
        off + 40
    };
    if f.proto != PROTO_TCP && f.proto != PROTO_UDP {
        return Err(Reason::PassIcmpOther);
    }
    within(p, l4, 4)?;
    let ports: *const [u8; 4] = ptr_at(ctx, l4)?;
    let ports = unsafe { &*ports };
    f.sport = u16::from_ne_bytes([ports[2], ports[3]]);
    f.dport = u16::from_ne_bytes([ports[0], ports[1]]);
    Ok(f)
}
