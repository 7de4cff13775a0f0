//! A user-space reference model of `xdp_lb`'s decision.
//!
//! Written from the data plane's contract, independently of the XDP code: headers
//! are read with etherparse, output headers are built with etherparse (checksums
//! included), and only the hash and slot reduction come from lb-common, as they are
//! the single definition of where a flow lands.
//!
//! The model works on a [`Config`] read back from the maps (VIPS, BACKENDS, each
//! VIP's table, CTRL) and keeps its own connection, persistence and fragment
//! tables, which it keeps in step with the program by applying the same inserts.
//! Time is not modelled: within a test nothing expires.
//!
//! Backend choice: a connection entry decides before the VIP is looked up, as long as
//! its VIP's generation is current (a removed VIP's entries stop matching) and its
//! backend is valid. A TCP SYN (without ACK) is a new connection: it is scheduled
//! (persistence, then the VIP's scheduler) and keeps an existing entry's backend only
//! as a retransmission (no ACK seen yet, same VIP and generation); otherwise it
//! replaces the entry.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpDscp, IpEcn, IpFragOffset, IpNumber,
    Ipv4Header, Ipv4HeaderSlice, Ipv6FlowLabel, Ipv6Header, Ipv6HeaderSlice, UdpHeader,
    icmpv4::DestUnreachableHeader,
};
use lb_common::{
    BACKEND_F_VALID, Backend, CONN_F_ACK_SEEN, CONN_F_FIN_SEEN, CONN_F_RST_SEEN, CONN_F_SYN_SEEN,
    CTRL_F_SRC_FROM_FLOW, Ctrl, FAMILY_V4, FAMILY_V6, FlowKey, FragKey, MODE_DR, MODE_TUN_GUE,
    NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP, PersistKey,
    REASON_SLOTS, Reason, SCHED_RR, SCHED_SH, SCHED_WRR, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    VIP_F_ADDR_MARKER, VipKey, VipMeta,
    hash::{flow_hash, slot, src_hash},
};
use lb_daemon::bpf_maps::DataPlane;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_FRAG: u8 = 44;
/// TTL / hop limit of every header the LB writes.
const TTL: u8 = 64;
/// Bytes of the offending packet quoted by an ICMP "too big".
const QUOTE_LEN: usize = 64;

/// The configuration the program sees, read back from the maps.
#[derive(Clone, Debug)]
pub struct Config {
    pub ctrl: Ctrl,
    pub vips: HashMap<VipKey, VipMeta>,
    /// BACKENDS, indexed by id (entry 0 included, never valid).
    pub backends: Vec<Backend>,
    /// Each (non-marker) VIP's lookup table, by VIP index.
    pub tables: HashMap<u32, Vec<u32>>,
    /// VIP_GEN, indexed by VIP index: bumped when a VIP is removed.
    pub vip_gens: Vec<u32>,
}

impl Config {
    /// Snapshot of the maps the program reads.
    pub fn read(dp: &DataPlane) -> Result<Config> {
        let ctrl = dp.ctrl().context("reading CTRL")?;
        let vips: HashMap<VipKey, VipMeta> =
            dp.vips().context("reading VIPS")?.into_iter().collect();
        let backends = (0..dp.cap.max_backends)
            .map(|id| {
                dp.backend(id)
                    .with_context(|| format!("reading BACKENDS[{id}]"))
            })
            .collect::<Result<Vec<_>>>()?;
        let tables = vips
            .values()
            .filter(|m| m.flags & VIP_F_ADDR_MARKER == 0)
            .map(|m| (m.idx, dp.table(m.idx)))
            .collect();
        let vip_gens = (0..dp.cap.max_vips)
            .map(|idx| {
                dp.vip_gen(idx)
                    .with_context(|| format!("reading VIP_GEN[{idx}]"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Config {
            ctrl,
            vips,
            backends,
            tables,
            vip_gens,
        })
    }

    /// A configured (valid) backend.
    pub fn backend(&self, id: u32) -> Option<&Backend> {
        self.backends
            .get(id as usize)
            .filter(|b| b.flags & BACKEND_F_VALID != 0)
    }

    /// VIP lookup: exact (address, port, protocol), then the address's port-0 service.
    pub fn vip(&self, flow: &FlowKey) -> Option<&VipMeta> {
        let key = VipKey {
            addr: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            family: flow.family,
        };
        self.vips
            .get(&key)
            .or_else(|| self.vips.get(&VipKey { port: 0, ..key }))
            .filter(|m| m.flags & VIP_F_ADDR_MARKER == 0)
    }

    /// VIP_GEN[idx], if `idx` is in range.
    pub fn vip_gen(&self, idx: u32) -> Option<u32> {
        self.vip_gens.get(idx as usize).copied()
    }

    /// Whether some VIP lives on the flow's destination address.
    pub fn vip_addr_known(&self, flow: &FlowKey) -> bool {
        let key = VipKey {
            addr: flow.dst,
            port: 0,
            proto: 0,
            family: flow.family,
        };
        self.vips.contains_key(&key)
    }
}

/// Fragment position of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    First,
    Later,
}

/// What the headers say (the program's `Packet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the L4 / ICMP header.
    pub l4_off: usize,
    /// Length of the IP datagram from its header.
    pub ip_len: usize,
    /// Client → VIP 5-tuple (ports in network order; 0 for later fragments and ICMP).
    pub flow: FlowKey,
    pub frag: Frag,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
    pub tcp_flags: u8,
    /// For ICMP (unfragmented): the message type and, for error types, the flow the
    /// quote is about, reversed into the client → VIP direction (None if unusable).
    pub icmp: Option<(u8, Option<FlowKey>)>,
}

/// The result of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// XDP action: 1 drop, 2 pass, 3 tx.
    pub action: u32,
    pub reason: Reason,
    /// The backend the packet was assigned to (also for "too big" answers).
    pub backend: Option<u32>,
    /// The frame as the program leaves it.
    pub out: Vec<u8>,
    /// The flow whose connection entry decided (or now records) `backend`.
    pub conn_flow: Option<FlowKey>,
}

/// A connection entry as far as the model can know it (no timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    pub backend: u32,
    pub flags: u32,
    pub vip_idx: u32,
    /// The VIP's generation when the entry was made.
    pub vip_gen: u32,
}

/// Traffic counters (packets, bytes, new connections) as VIP_STATS / BACKEND_STATS keep them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_conns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    ConnInsert(FlowKey, ConnEntry),
    /// Flags the entry gains (the client's first ACK, its FIN or RST).
    ConnFlags(FlowKey, u32),
    Persist(PersistKey, u32),
    Frag(FragKey, FragEntry),
    RrAdvance(u32, u32),
    Traffic {
        vip_idx: u32,
        backend: u32,
        bytes: u64,
        new_conn: bool,
    },
}

/// Where a first fragment went (the program's `FragVal`), for the later ones to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FragEntry {
    backend: u32,
    vip_idx: u32,
    /// The first fragment's flow hash (ports included): later fragments are tunnelled
    /// with it, not with a hash of their own port-less flow.
    flow_hash: u32,
}

pub struct Model {
    pub cfg: Config,
    conns: HashMap<FlowKey, ConnEntry>,
    persist: HashMap<PersistKey, u32>,
    frags: HashMap<FragKey, FragEntry>,
    /// rr/wrr cursors by VIP index. The program keeps them per CPU; the model
    /// assumes every frame runs on the same CPU.
    rr: HashMap<u32, u32>,
    reasons: [u64; REASON_SLOTS as usize],
    vip_traffic: HashMap<u32, Traffic>,
    backend_traffic: HashMap<u32, Traffic>,
}

/// `n` bytes at `off`, if they end by `limit`.
fn bytes(frame: &[u8], off: usize, n: usize, limit: usize) -> Option<&[u8]> {
    let end = off.checked_add(n)?;
    if end <= limit.min(frame.len()) {
        Some(&frame[off..end])
    } else {
        None
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// A port as FlowKey / VipKey hold it: network byte order.
fn port(b: &[u8]) -> u16 {
    be16(b).to_be()
}

fn is_ipv6_ext(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

/// ICMP of the packet's own family only: protocol 58 over IPv4 (or 1 over IPv6) is
/// an unsupported protocol.
fn is_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_V4 && proto == PROTO_ICMP) || (family == FAMILY_V6 && proto == PROTO_ICMPV6)
}

/// Parses a frame as the program must: at most one VLAN tag, IPv4 (options skipped) or
/// IPv6 (one fragment header walked), then the ports / ICMP header. `Err` is the
/// reason for a frame that is passed unchanged (not IP, or truncated / inconsistent).
/// Every header must lie within the IP datagram (not merely within the frame: Ethernet
/// padding after the datagram is never read as a header).
pub fn parse(frame: &[u8]) -> Result<Parsed, Reason> {
    let len = frame.len();
    let eth = bytes(frame, 0, ETH_LEN, len).ok_or(Reason::PassMalformed)?;
    let mut ty = be16(&eth[12..]);
    let mut l3 = ETH_LEN;
    if ty == ETH_P_8021Q || ty == ETH_P_8021AD {
        let tag = bytes(frame, ETH_LEN, VLAN_LEN, len).ok_or(Reason::PassMalformed)?;
        ty = be16(&tag[2..]);
        l3 += VLAN_LEN;
    }
    let mut p = Parsed {
        l3_off: l3,
        l4_off: 0,
        ip_len: 0,
        flow: FlowKey::default(),
        frag: Frag::None,
        frag_id: 0,
        tcp_flags: 0,
        icmp: None,
    };
    // Where the IP datagram ends: every header must lie before it.
    let end;
    match ty {
        ETH_P_IP => {
            let ip =
                Ipv4HeaderSlice::from_slice(&frame[l3..]).map_err(|_| Reason::PassMalformed)?;
            let hl = ip.slice().len();
            let tot = ip.total_len() as usize;
            if tot < hl || l3 + tot > len {
                return Err(Reason::PassMalformed);
            }
            end = l3 + tot;
            p.l4_off = l3 + hl;
            p.ip_len = tot;
            p.flow.family = FAMILY_V4;
            p.flow.proto = ip.protocol().0;
            p.flow.src[..4].copy_from_slice(&ip.source());
            p.flow.dst[..4].copy_from_slice(&ip.destination());
            if ip.more_fragments() || ip.fragments_offset().value() != 0 {
                p.frag = if ip.fragments_offset().value() == 0 {
                    Frag::First
                } else {
                    Frag::Later
                };
                p.frag_id = ip.identification() as u32;
            }
        }
        ETH_P_IPV6 => {
            let ip =
                Ipv6HeaderSlice::from_slice(&frame[l3..]).map_err(|_| Reason::PassMalformed)?;
            let tot = ip.payload_length() as usize + Ipv6Header::LEN;
            if l3 + tot > len {
                return Err(Reason::PassMalformed);
            }
            end = l3 + tot;
            p.l4_off = l3 + Ipv6Header::LEN;
            p.ip_len = tot;
            p.flow.family = FAMILY_V6;
            p.flow.proto = ip.next_header().0;
            p.flow.src = ip.source();
            p.flow.dst = ip.destination();
            if p.flow.proto == IPV6_FRAG {
                // Read by hand: etherparse 0.19's Ipv6FragmentHeader(Slice) takes the M flag
                // from bit 7 of the fourth byte; RFC 8200 puts it in bit 0, with the offset's
                // low bits above it (offset << 3 | res << 1 | M).
                let fh = bytes(frame, p.l4_off, 8, end).ok_or(Reason::PassMalformed)?;
                let off = be16(&fh[2..]);
                p.flow.proto = fh[0];
                p.l4_off += 8;
                p.frag_id = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
                p.frag = if off >> 3 != 0 {
                    Frag::Later
                } else if off & 1 != 0 {
                    Frag::First
                } else {
                    // An atomic fragment (RFC 6946): a whole datagram.
                    Frag::None
                };
            }
        }
        _ => return Err(Reason::PassNotIp),
    }
    if p.frag == Frag::Later {
        return Ok(p);
    }
    let l4 = p.l4_off;
    let fam = p.flow.family;
    match p.flow.proto {
        PROTO_TCP => {
            let th = bytes(frame, l4, 20, end).ok_or(Reason::PassMalformed)?;
            p.flow.sport = port(&th[0..]);
            p.flow.dport = port(&th[2..]);
            p.tcp_flags = th[13];
        }
        PROTO_UDP => {
            let uh = bytes(frame, l4, 8, end).ok_or(Reason::PassMalformed)?;
            p.flow.sport = port(&uh[0..]);
            p.flow.dport = port(&uh[2..]);
        }
        proto if is_icmp(fam, proto) => {
            let h = bytes(frame, l4, 8, end).ok_or(Reason::PassMalformed)?;
            if p.frag == Frag::None {
                let ty = h[0];
                let quoted = if is_icmp_error(fam, ty) {
                    quoted_flow(frame, l4 + 8, fam, end)
                } else {
                    None
                };
                p.icmp = Some((ty, quoted));
            }
        }
        _ => {}
    }
    Ok(p)
}

fn is_icmp_error(family: u8, ty: u8) -> bool {
    if family == FAMILY_V4 {
        // Destination unreachable (incl. fragmentation needed), time exceeded.
        ty == 3 || ty == 11
    } else {
        // Unreachable, packet too big, time exceeded.
        ty == 1 || ty == 2 || ty == 3
    }
}

/// The flow an ICMP error's quote (a VIP → client packet at `off`) belongs to,
/// reversed into client → VIP. Only TCP and UDP quotes are usable.
fn quoted_flow(frame: &[u8], off: usize, family: u8, limit: usize) -> Option<FlowKey> {
    let mut f = FlowKey {
        family,
        ..FlowKey::default()
    };
    let l4 = if family == FAMILY_V4 {
        let ip = Ipv4HeaderSlice::from_slice(frame.get(off..limit.min(frame.len()))?).ok()?;
        f.proto = ip.protocol().0;
        f.src[..4].copy_from_slice(&ip.destination());
        f.dst[..4].copy_from_slice(&ip.source());
        off + ip.slice().len()
    } else {
        let ip = bytes(frame, off, Ipv6Header::LEN, limit)?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        f.proto = ip[6];
        f.src.copy_from_slice(&ip[24..40]);
        f.dst.copy_from_slice(&ip[8..24]);
        off + Ipv6Header::LEN
    };
    if f.proto != PROTO_TCP && f.proto != PROTO_UDP {
        return None;
    }
    let ports = bytes(frame, l4, 4, limit)?;
    f.sport = port(&ports[2..]);
    f.dport = port(&ports[0..]);
    Some(f)
}

/// RFC 1624 (eqn. 3) update of a checksum when one 16-bit word changes.
fn csum_update(check: u16, old: u16, new: u16) -> u16 {
    fn add(a: u16, b: u16) -> u16 {
        let s = a as u32 + b as u32;
        ((s & 0xffff) + (s >> 16)) as u16
    }
    !add(add(!check, !old), new)
}

/// The frame's L2 header (with its VLAN tag), addressed `dst` ← `src`, carrying `ethertype`.
fn l2_header(frame: &[u8], l3_off: usize, dst: &[u8], src: &[u8], ethertype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(l3_off);
    out.extend_from_slice(dst);
    out.extend_from_slice(src);
    if l3_off > ETH_LEN {
        out.extend_from_slice(&frame[12..14]);
        out.extend_from_slice(&frame[14..16]);
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    out
}

/// The backend a packet goes to, the VIP it is counted for, and whether it opens a
/// connection.
#[derive(Clone, Copy, Debug)]
struct Choice {
    id: u32,
    vip_idx: u32,
    new_conn: bool,
}

struct Ctx<'a> {
    frame: &'a [u8],
    fx: Vec<Effect>,
    backend: Option<u32>,
    conn_flow: Option<FlowKey>,
    out: Option<Vec<u8>>,
}

impl Model {
    pub fn new(cfg: Config) -> Model {
        Model {
            cfg,
            conns: HashMap::new(),
            persist: HashMap::new(),
            frags: HashMap::new(),
            rr: HashMap::new(),
            reasons: [0; REASON_SLOTS as usize],
            vip_traffic: HashMap::new(),
            backend_traffic: HashMap::new(),
        }
    }

    /// A model of the program loaded in `dp`, with empty state tables.
    pub fn from_dataplane(dp: &DataPlane) -> Result<Model> {
        Ok(Model::new(Config::read(dp)?))
    }

    /// Takes a new configuration from the maps (after the daemon changed them), keeping
    /// the state tables, as the program does.
    pub fn reload(&mut self, dp: &DataPlane) -> Result<()> {
        self.cfg = Config::read(dp)?;
        Ok(())
    }

    /// What `frame` does: its outcome, with the state changes (connection, persistence
    /// and fragment entries, rr cursors, counters) applied.
    pub fn process(&mut self, frame: &[u8]) -> Outcome {
        let (outcome, effects) = self.decide(frame);
        self.commit(&outcome, &effects);
        outcome
    }

    /// What `frame` would do now, and the state changes that come with it (not applied).
    fn decide(&self, frame: &[u8]) -> (Outcome, Vec<Effect>) {
        let mut cx = Ctx {
            frame,
            fx: Vec::new(),
            backend: None,
            conn_flow: None,
            out: None,
        };
        let reason = match self.lb(&mut cx) {
            Ok(r) | Err(r) => r,
        };
        let tx = reason.xdp_action() == 3;
        let out = match cx.out {
            Some(o) if tx => o,
            _ => frame.to_vec(),
        };
        let outcome = Outcome {
            action: reason.xdp_action(),
            reason,
            backend: if tx { cx.backend } else { None },
            out,
            conn_flow: if tx { cx.conn_flow } else { None },
        };
        (outcome, cx.fx)
    }

    /// Applies a frame's state changes and counts its reason.
    fn commit(&mut self, outcome: &Outcome, effects: &[Effect]) {
        self.reasons[outcome.reason as usize] += 1;
        for e in effects {
            match e {
                Effect::ConnInsert(k, c) => {
                    self.conns.insert(*k, *c);
                }
                Effect::ConnFlags(k, f) => {
                    if let Some(c) = self.conns.get_mut(k) {
                        c.flags |= f;
                    }
                }
                Effect::Persist(k, b) => {
                    self.persist.insert(*k, *b);
                }
                Effect::Frag(k, f) => {
                    self.frags.insert(*k, *f);
                }
                Effect::RrAdvance(idx, next) => {
                    self.rr.insert(*idx, *next);
                }
                Effect::Traffic {
                    vip_idx,
                    backend,
                    bytes,
                    new_conn,
                } => {
                    for t in [
                        self.vip_traffic.entry(*vip_idx).or_default(),
                        self.backend_traffic.entry(*backend).or_default(),
                    ] {
                        t.packets += 1;
                        t.bytes += bytes;
                        t.new_conns += *new_conn as u64;
                    }
                }
            }
        }
    }

    /// How many frames ended with `r`.
    pub fn reason_count(&self, r: Reason) -> u64 {
        self.reasons[r as usize]
    }

    pub fn conns(&self) -> &HashMap<FlowKey, ConnEntry> {
        &self.conns
    }

    pub fn conn(&self, flow: &FlowKey) -> Option<&ConnEntry> {
        self.conns.get(flow)
    }

    pub fn persist(&self, client: &[u8; 16], vip_idx: u32) -> Option<u32> {
        self.persist
            .get(&PersistKey {
                client: *client,
                vip_idx,
            })
            .copied()
    }

    pub fn frag_count(&self) -> usize {
        self.frags.len()
    }

    pub fn persist_count(&self) -> usize {
        self.persist.len()
    }

    pub fn vip_traffic(&self, idx: u32) -> Traffic {
        self.vip_traffic.get(&idx).copied().unwrap_or_default()
    }

    pub fn backend_traffic(&self, id: u32) -> Traffic {
        self.backend_traffic.get(&id).copied().unwrap_or_default()
    }

    fn lb(&self, cx: &mut Ctx) -> Result<Reason, Reason> {
        let p = parse(cx.frame)?;
        let fam = p.flow.family;
        match p.flow.proto {
            PROTO_TCP | PROTO_UDP => {}
            proto if is_icmp(fam, proto) && p.frag == Frag::None => {
                return self.icmp(cx, &p);
            }
            proto => {
                if p.frag != Frag::Later {
                    if !self.cfg.vip_addr_known(&p.flow) {
                        return Ok(Reason::PassNotVip);
                    }
                    return Ok(if fam == FAMILY_V6 && is_ipv6_ext(proto) {
                        Reason::PassUnsupportedExt
                    } else {
                        Reason::PassUnsupportedProto
                    });
                }
            }
        }
        if p.frag == Frag::Later {
            let key = frag_key(&p);
            let Some(f) = self.frags.get(&key) else {
                return Ok(if self.cfg.vip_addr_known(&p.flow) {
                    Reason::DropFragNoFirst
                } else {
                    Reason::PassNotVip
                });
            };
            let c = Choice {
                id: f.backend,
                vip_idx: f.vip_idx,
                new_conn: false,
            };
            // Tunnelled with the first fragment's hash: the same outer source, GUE
            // source port and flow label as the rest of its datagram.
            return self.to_backend(cx, &p, f.flow_hash, c, true);
        }
        let syn = p.flow.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let c = if syn {
            let Some(vip) = self.cfg.vip(&p.flow) else {
                return Ok(Reason::PassNotVip);
            };
            self.syn(cx, &p.flow, vip)?
        } else if let Some(c) = self.established(cx, &p.flow, p.tcp_flags, true) {
            c
        } else {
            let Some(vip) = self.cfg.vip(&p.flow) else {
                return Ok(Reason::PassNotVip);
            };
            self.new_flow(cx, &p.flow, vip, p.tcp_flags, true)?
        };
        let hash = flow_hash(&p.flow);
        if p.frag == Frag::First {
            // Later fragments carry no ports: they follow the first one.
            cx.fx.push(Effect::Frag(
                frag_key(&p),
                FragEntry {
                    backend: c.id,
                    vip_idx: c.vip_idx,
                    flow_hash: hash,
                },
            ));
        }
        cx.conn_flow = Some(p.flow);
        self.to_backend(cx, &p, hash, c, true)
    }

    fn icmp(&self, cx: &mut Ctx, p: &Parsed) -> Result<Reason, Reason> {
        let (ty, quoted) = p.icmp.expect("parsed as ICMP");
        let v4 = p.flow.family == FAMILY_V4;
        let (request, reply) = if v4 { (8, 0) } else { (128, 129) };
        if ty == request {
            if !self.cfg.vip_addr_known(&p.flow) {
                return Ok(Reason::PassNotVip);
            }
            // Echo reply in place: addresses and MACs swapped, type changed, checksum
            // updated for the type word only (the swap leaves every sum unchanged).
            let mut out = cx.frame.to_vec();
            let (l3, l4) = (p.l3_off, p.l4_off);
            let old = be16(&out[l4..]);
            let new = u16::from_be_bytes([reply, out[l4 + 1]]);
            let c = csum_update(be16(&out[l4 + 2..]), old, new);
            out[l4] = reply;
            out[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
            let (a, n) = if v4 { (l3 + 12, 4) } else { (l3 + 8, 16) };
            let src = out[a..a + n].to_vec();
            out.copy_within(a + n..a + 2 * n, a);
            out[a + n..a + 2 * n].copy_from_slice(&src);
            out[..6].copy_from_slice(&cx.frame[6..12]);
            out[6..12].copy_from_slice(&cx.frame[..6]);
            cx.out = Some(out);
            return Ok(Reason::TxIcmpEcho);
        }
        if let Some(flow) = quoted
            && let Some(vip) = self.cfg.vip(&flow)
        {
            // An error about a VIP flow goes where that flow goes (tunnelled with that
            // flow's hash); no new connection, no persistence template.
            let c = match self.established(cx, &flow, 0, false) {
                Some(c) => c,
                None => self.new_flow(cx, &flow, vip, 0, false)?,
            };
            let r = self.to_backend(cx, p, flow_hash(&flow), c, false)?;
            return Ok(match r {
                Reason::TxDr | Reason::TxTun => Reason::TxIcmpErrorFwd,
                r => r,
            });
        }
        Ok(if self.cfg.vip_addr_known(&p.flow) {
            Reason::PassIcmpOther
        } else {
            Reason::PassNotVip
        })
    }

    /// `flow`'s connection entry, if it still decides: its VIP's generation is current
    /// and its backend valid. With `track`, the client's first ACK is recorded.
    fn established(
        &self,
        cx: &mut Ctx,
        flow: &FlowKey,
        tcp_flags: u8,
        track: bool,
    ) -> Option<Choice> {
        let c = self.conns.get(flow)?;
        if self.cfg.vip_gen(c.vip_idx) != Some(c.vip_gen) || self.cfg.backend(c.backend).is_none() {
            return None;
        }
        if track && tcp_flags & TCP_ACK != 0 && c.flags & CONN_F_ACK_SEEN == 0 {
            cx.fx.push(Effect::ConnFlags(*flow, CONN_F_ACK_SEEN));
        }
        let closing = if tcp_flags & TCP_FIN != 0 {
            CONN_F_FIN_SEEN
        } else {
            0
        } | if tcp_flags & TCP_RST != 0 {
            CONN_F_RST_SEEN
        } else {
            0
        };
        if track && closing & !c.flags != 0 {
            cx.fx.push(Effect::ConnFlags(*flow, closing));
        }
        Some(Choice {
            id: c.backend,
            vip_idx: c.vip_idx,
            new_conn: false,
        })
    }

    /// A TCP SYN (without ACK) for `vip`: scheduled as a new connection. An entry that
    /// has seen no ACK yet (same VIP and generation, valid backend) makes it a
    /// retransmission, which stays with that entry's backend; any other entry is a
    /// reused 5-tuple and is replaced.
    fn syn(&self, cx: &mut Ctx, flow: &FlowKey, vip: &VipMeta) -> Result<Choice, Reason> {
        let id = self.persistent_or_scheduled(cx, flow, vip, true)?;
        if self.cfg.backend(id).is_none() {
            return Err(Reason::DropNoBackend);
        }
        let vip_gen = self.cfg.vip_gen(vip.idx).unwrap_or(0);
        if let Some(c) = self.conns.get(flow)
            && c.flags & CONN_F_ACK_SEEN == 0
            && c.vip_gen == vip_gen
            && c.vip_idx == vip.idx
            && self.cfg.backend(c.backend).is_some()
        {
            return Ok(Choice {
                id: c.backend,
                vip_idx: c.vip_idx,
                new_conn: false,
            });
        }
        cx.fx.push(Effect::ConnInsert(
            *flow,
            ConnEntry {
                backend: id,
                flags: CONN_F_SYN_SEEN,
                vip_idx: vip.idx,
                vip_gen,
            },
        ));
        Ok(Choice {
            id,
            vip_idx: vip.idx,
            new_conn: true,
        })
    }

    /// A flow with no (current) connection entry: persistence, else the scheduler.
    /// With `track` (ordinary packets) it gets a connection entry; without it (ICMP
    /// errors) the tables are only read.
    fn new_flow(
        &self,
        cx: &mut Ctx,
        flow: &FlowKey,
        vip: &VipMeta,
        tcp_flags: u8,
        track: bool,
    ) -> Result<Choice, Reason> {
        let id = self.persistent_or_scheduled(cx, flow, vip, track)?;
        if self.cfg.backend(id).is_none() {
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
            cx.fx.push(Effect::ConnInsert(
                *flow,
                ConnEntry {
                    backend: id,
                    flags,
                    vip_idx: vip.idx,
                    vip_gen: self.cfg.vip_gen(vip.idx).unwrap_or(0),
                },
            ));
        }
        Ok(Choice {
            id,
            vip_idx: vip.idx,
            new_conn: true,
        })
    }

    /// The client's persistence template on a VIP with persistence (a new one, with
    /// `track`, when it has none with a valid backend), else the scheduler.
    fn persistent_or_scheduled(
        &self,
        cx: &mut Ctx,
        flow: &FlowKey,
        vip: &VipMeta,
        track: bool,
    ) -> Result<u32, Reason> {
        if vip.persist_secs == 0 {
            return self.schedule(cx, flow, vip);
        }
        let key = PersistKey {
            client: flow.src,
            vip_idx: vip.idx,
        };
        if let Some(&b) = self.persist.get(&key)
            && self.cfg.backend(b).is_some()
        {
            return Ok(b);
        }
        let id = self.schedule(cx, flow, vip)?;
        if track {
            cx.fx.push(Effect::Persist(key, id));
        }
        Ok(id)
    }

    fn schedule(&self, cx: &mut Ctx, flow: &FlowKey, vip: &VipMeta) -> Result<u32, Reason> {
        let ring = self.cfg.ctrl.ring_size;
        let pos = match vip.sched {
            SCHED_SH => slot(src_hash(&flow.src), ring),
            SCHED_RR | SCHED_WRR => {
                let len = vip.seq_len;
                let cur = self
                    .rr
                    .get(&vip.idx)
                    .copied()
                    .filter(|&c| c < len)
                    .unwrap_or(0);
                cx.fx.push(Effect::RrAdvance(
                    vip.idx,
                    if cur + 1 < len { cur + 1 } else { 0 },
                ));
                cur
            }
            _ => slot(flow_hash(flow), ring),
        };
        match self
            .cfg
            .tables
            .get(&vip.idx)
            .and_then(|t| t.get(pos as usize))
        {
            Some(&id) if id != NO_BACKEND => Ok(id),
            _ => Err(Reason::DropNoBackend),
        }
    }

    /// DR or tunnel to the chosen backend, counted for the chosen VIP; `hash` (a flow
    /// hash) decides the tunnel's outer source (with source-from-flow), GUE source
    /// port and IPv6 flow label. `mtu_check` is off for ICMP errors.
    fn to_backend(
        &self,
        cx: &mut Ctx,
        p: &Parsed,
        hash: u32,
        c: Choice,
        mtu_check: bool,
    ) -> Result<Reason, Reason> {
        let Some(b) = self.cfg.backend(c.id) else {
            return Ok(Reason::DropNoBackend);
        };
        cx.backend = Some(c.id);
        cx.fx.push(Effect::Traffic {
            vip_idx: c.vip_idx,
            backend: c.id,
            bytes: p.ip_len as u64,
            new_conn: c.new_conn,
        });
        let frame = cx.frame;
        if b.mode == MODE_DR {
            let mut out = frame.to_vec();
            out[..6].copy_from_slice(&b.mac);
            out[6..12].copy_from_slice(&frame[..6]);
            cx.out = Some(out);
            return Ok(Reason::TxDr);
        }
        let ctrl = &self.cfg.ctrl;
        let gue = b.mode == MODE_TUN_GUE;
        let outer_v4 = b.family == FAMILY_V4;
        let overhead = if outer_v4 {
            Ipv4Header::MIN_LEN
        } else {
            Ipv6Header::LEN
        } + if gue { UdpHeader::LEN } else { 0 };
        let l3 = p.l3_off;
        // Everything after L2 is carried, trailing padding included.
        let inner = &frame[l3..];
        if mtu_check && inner.len() + overhead > ctrl.mtu as usize {
            return self.too_big(cx, p, (ctrl.mtu as usize).wrapping_sub(overhead));
        }
        let inner_v4 = p.flow.family == FAMILY_V4;
        // The inner TOS / traffic class is copied to the outer header.
        let tos = if inner_v4 {
            inner[1]
        } else {
            (inner[0] << 4) | (inner[1] >> 4)
        };
        let next = if gue {
            IpNumber::UDP
        } else if inner_v4 {
            IpNumber(PROTO_IPIP)
        } else {
            IpNumber(PROTO_IPV6)
        };
        let mut out = l2_header(
            frame,
            l3,
            &b.mac,
            &frame[..6],
            if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 },
        );
        if outer_v4 {
            let mut src = u32::from_be_bytes(ctrl.tun_src_v4);
            if ctrl.flags & CTRL_F_SRC_FROM_FLOW != 0 {
                let host = u32::from_be_bytes(ctrl.tun_src_v4_hostmask);
                src = (src & !host) | (hash & host);
            }
            let mut h = Ipv4Header {
                dscp: IpDscp::try_new(tos >> 2).unwrap(),
                ecn: IpEcn::try_new(tos & 3).unwrap(),
                total_len: (inner.len() + overhead) as u16,
                identification: 0,
                dont_fragment: false,
                more_fragments: false,
                fragment_offset: IpFragOffset::ZERO,
                time_to_live: TTL,
                protocol: next,
                header_checksum: 0,
                source: src.to_be_bytes(),
                destination: b.addr[..4].try_into().unwrap(),
                options: Default::default(),
            };
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
        } else {
            let mut src = ctrl.tun_src_v6;
            if ctrl.flags & CTRL_F_SRC_FROM_FLOW != 0 {
                src[12..].copy_from_slice(&hash.to_be_bytes());
            }
            let h = Ipv6Header {
                traffic_class: tos,
                // RFC 6438: the flow label from the flow hash.
                flow_label: Ipv6FlowLabel::try_new(hash & 0x000f_ffff).unwrap(),
                payload_length: (inner.len() + overhead - Ipv6Header::LEN) as u16,
                next_header: next,
                hop_limit: TTL,
                source: src,
                destination: b.addr,
            };
            out.extend_from_slice(&h.to_bytes());
        }
        if gue {
            let u = UdpHeader {
                source_port: (hash >> 16) as u16 | 0x8000,
                destination_port: u16::from_be(b.gue_port),
                length: (inner.len() + UdpHeader::LEN) as u16,
                checksum: 0,
            };
            out.extend_from_slice(&u.to_bytes());
        }
        out.extend_from_slice(inner);
        cx.out = Some(out);
        Ok(Reason::TxTun)
    }

    /// ICMP "fragmentation needed" / "packet too big" back to the client, advertising
    /// `mtu`, quoting the first 64 bytes of the packet.
    fn too_big(&self, cx: &mut Ctx, p: &Parsed, mtu: usize) -> Result<Reason, Reason> {
        let frame = cx.frame;
        let l3 = p.l3_off;
        let quote = bytes(frame, l3, QUOTE_LEN, frame.len()).ok_or(Reason::PassMalformed)?;
        let v4 = p.flow.family == FAMILY_V4;
        let mut out = l2_header(
            frame,
            l3,
            &frame[6..12],
            &frame[..6],
            if v4 { ETH_P_IP } else { ETH_P_IPV6 },
        );
        if v4 {
            let icmp = Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu as u16,
                }),
                quote,
            );
            let mut h = Ipv4Header {
                dscp: IpDscp::ZERO,
                ecn: IpEcn::ZERO,
                total_len: (Ipv4Header::MIN_LEN + 8 + QUOTE_LEN) as u16,
                identification: 0,
                dont_fragment: false,
                more_fragments: false,
                fragment_offset: IpFragOffset::ZERO,
                time_to_live: TTL,
                protocol: IpNumber::ICMP,
                header_checksum: 0,
                source: p.flow.dst[..4].try_into().unwrap(),
                destination: p.flow.src[..4].try_into().unwrap(),
                options: Default::default(),
            };
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(&icmp.to_bytes());
        } else {
            let icmp = Icmpv6Header::with_checksum(
                Icmpv6Type::PacketTooBig { mtu: mtu as u32 },
                p.flow.dst,
                p.flow.src,
                quote,
            )
            .expect("small ICMPv6 message");
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (8 + QUOTE_LEN) as u16,
                next_header: IpNumber::IPV6_ICMP,
                hop_limit: TTL,
                source: p.flow.dst,
                destination: p.flow.src,
            };
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(&icmp.to_bytes());
        }
        out.extend_from_slice(quote);
        cx.out = Some(out);
        Ok(Reason::TxIcmpTooBig)
    }
}

fn frag_key(p: &Parsed) -> FragKey {
    FragKey {
        src: p.flow.src,
        dst: p.flow.dst,
        id: p.frag_id,
        proto: p.flow.proto,
        family: p.flow.family,
        _pad: [0; 2],
    }
}
