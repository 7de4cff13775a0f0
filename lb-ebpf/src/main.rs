#![no_std]
#![no_main]

//! lb-ebpf: the load balancer's XDP programs.
//!
//! `xdp_lb` balances VIP traffic; `xdp_decap` runs on real servers without tunnel
//! devices; `xdp_floor` only swaps MACs and is the benchmarks' yardstick;
//! `xdp_pass` lets veth peers receive XDP_TX'd frames.

mod counters;
mod csum;
mod decap;
mod encap;
mod forward;
mod health;
mod icmp;
mod maps;
mod parse;
mod select;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{PROTO_TCP, PROTO_UDP, Reason, TCP_ACK, TCP_SYN};

use crate::{
    maps::{CTRL, FRAGS},
    parse::{FRAG_FIRST, FRAG_LATER, ptr_at},
};

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let r = match try_lb(&ctx) {
        Ok(r) | Err(r) => r,
    };
    counters::reason(r);
    r.xdp_action()
}

#[inline(always)]
fn is_ipv6_ext(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn try_lb(ctx: &XdpContext) -> Result<Reason, Reason> {
    let p = parse::parse(ctx)?;
    let Some(ctrl) = CTRL.get(0) else {
        return Err(Reason::DropInternal);
    };
    match p.flow.proto {
        PROTO_TCP | PROTO_UDP => {}
        proto if parse::is_icmp(p.flow.family, proto) && p.frag == parse::FRAG_NONE => {
            return icmp::handle(ctx, &p, ctrl);
        }
        proto => {
            if p.frag != FRAG_LATER {
                if !select::vip_addr_known(&p.flow) {
                    return Ok(Reason::PassNotVip);
                }
                return Ok(
                    if is_ipv6_ext(proto) && p.flow.family == lb_common::FAMILY_V6 {
                        Reason::PassUnsupportedExt
                    } else {
                        Reason::PassUnsupportedProto
                    },
                );
            }
        }
    }
    if p.frag == FRAG_LATER {
        return later_fragment(ctx, &p, ctrl);
    }
    if p.flow.proto == PROTO_TCP
        && p.frag == parse::FRAG_NONE
        && health::maybe_answer(p.tcp_flags)
        && let Some(r) = health::answer(ctx, &p)
    {
        return Ok(if r == Reason::TxHealthReset {
            health::reset(ctx, &p)
        } else {
            r
        });
    }
    if !select::maybe_vip(&p.flow.dst) {
        return Ok(Reason::PassNotVip);
    }
    let now = select::now(ctrl);
    let syn = p.flow.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let choice = if syn {
        let Some(vip) = select::vip(&p.flow, ctrl) else {
            return Ok(Reason::PassNotVip);
        };
        select::syn(&p.flow, vip, ctrl, now)?
    } else {
        match select::established(&p.flow, ctrl, p.tcp_flags, now, true) {
            Some(c) => c,
            None => {
                let Some(vip) = select::vip(&p.flow, ctrl) else {
                    return Ok(Reason::PassNotVip);
                };
                select::new_flow(&p.flow, vip, ctrl, p.tcp_flags, now, true)?
            }
        }
    };
    if p.frag == FRAG_FIRST {
        // Later fragments carry no ports: remember where this datagram went.
        let _ = FRAGS.insert(
            &frag_key(&p),
            &lb_common::FragVal {
                backend: choice.id,
                vip_idx: choice.vip_idx,
                flow_hash: choice.hash,
                _pad: 0,
            },
            0,
        );
    }
    forward::to_backend(ctx, &p, &choice, ctrl, true)
}

#[inline(always)]
fn frag_key(p: &parse::Packet) -> lb_common::FragKey {
    lb_common::FragKey {
        src: p.flow.src,
        dst: p.flow.dst,
        id: p.frag_id,
        proto: p.flow.proto,
        family: p.flow.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn later_fragment(
    ctx: &XdpContext,
    p: &parse::Packet,
    ctrl: &lb_common::Ctrl,
) -> Result<Reason, Reason> {
    if !select::maybe_vip(&p.flow.dst) {
        return Ok(Reason::PassNotVip);
    }
    let Some(f) = (unsafe { FRAGS.get(&frag_key(p)) }) else {
        return Ok(if select::vip_addr_known(&p.flow) {
            Reason::DropFragNoFirst
        } else {
            Reason::PassNotVip
        });
    };
    let choice = select::Choice {
        id: f.backend,
        vip_idx: f.vip_idx,
        hash: f.flow_hash,
        new_conn: false,
    };
    forward::to_backend(ctx, p, &choice, ctrl, true)
}

#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    decap::decap(&ctx)
}

/// The benchmarks' floor: the least an XDP forwarder can do (swap MACs, XDP_TX).
#[xdp]
pub fn xdp_floor(ctx: XdpContext) -> u32 {
    match ptr_at::<[u8; 12]>(&ctx, 0) {
        Ok(eth) => {
            let eth = unsafe { &mut *eth };
            let mut out = [0u8; 12];
            out[..6].copy_from_slice(&eth[6..]);
            out[6..].copy_from_slice(&eth[..6]);
            *eth = out;
            xdp_action::XDP_TX
        }
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// Does nothing but pass: attached to veth peers so that XDP_TX frames arrive
/// (veth delivers XDP_TX'd frames only to a peer with a native XDP program).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
