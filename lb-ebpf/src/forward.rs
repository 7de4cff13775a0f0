//! The last step for every balanced packet: count it, then DR or tunnel.

use aya_ebpf::programs::XdpContext;
use lb_common::{Ctrl, MODE_DR, Reason};

use crate::{
    counters, encap,
    parse::Packet,
    select::{self, Choice},
};

/// `c.hash` is the hash of the flow the packet belongs to (for ICMP errors: the quoted
/// one; for later fragments: the first fragment's); it decides the tunnel's outer
/// source, GUE source port and IPv6 flow label. `mtu_check` is off for
/// ICMP errors: an ICMP error must never be answered with another one.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    p: &Packet,
    c: &Choice,
    ctrl: &Ctrl,
    mtu_check: bool,
) -> Result<Reason, Reason> {
    let Some(b) = select::backend(c.id) else {
        return Ok(Reason::DropNoBackend);
    };
    counters::traffic(c.vip_idx, c.id, p.ip_len as u64, c.new_conn);
    if b.mode == MODE_DR {
        encap::dr(ctx, b)
    } else {
        encap::tunnel(ctx, p, c.hash, b, ctrl, mtu_check)
    }
}
