//! Constants both sides agree on: families, modes, schedulers, flags,
//! counter reasons and map names.

/// Address family values stored in keys (not the kernel's AF_* numbers, so that 0 means "unset").
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// Default Maglev lookup-table size per VIP (prime).
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Backend id 0 is "no backend": table slots holding it are empty.
pub const NO_BACKEND: u32 = 0;

/// Forwarding modes (ipvsadm `-g` and `-i`).
pub const MODE_DR: u32 = 0;
pub const MODE_TUN_IPIP: u32 = 1;
pub const MODE_TUN_GUE: u32 = 2;

/// Schedulers, named as in ipvsadm.
pub const SCHED_MH: u32 = 0;
pub const SCHED_SH: u32 = 1;
pub const SCHED_RR: u32 = 2;
pub const SCHED_WRR: u32 = 3;

/// `Backend::flags`: the slot holds a configured backend.
pub const BACKEND_F_VALID: u32 = 1;

/// `VipMeta::flags`: this key only marks "some VIP lives on this address"
/// (port 0, proto 0); used to tell VIP fragments from foreign ones.
pub const VIP_F_ADDR_MARKER: u32 = 1;

/// `Conn::flags`
pub const CONN_F_SYN_SEEN: u32 = 1;
pub const CONN_F_ACK_SEEN: u32 = 2;
/// The client sent a FIN (IPVS's FIN_WAIT): closing, counted inactive.
pub const CONN_F_FIN_SEEN: u32 = 4;
/// The client sent a RST (IPVS's CLOSE): closing, counted inactive.
pub const CONN_F_RST_SEEN: u32 = 8;
/// An entry whose client sent FIN or RST pins its flow for this long after its last
/// packet (IPVS's FIN_WAIT timeout, 2 min), not the whole connection timeout: a closed
/// connection neither holds its backend nor counts for it for 15 minutes.
pub const CONN_CLOSING_TIMEOUT_SECS: u64 = 120;

/// `Ctrl::flags`: derive the tunnel's outer source address from the flow
/// (prefix + flow hash) so that real servers' NICs spread flows over queues.
pub const CTRL_F_SRC_FROM_FLOW: u32 = 1;

/// `Ctrl::flags`: some service has port 0 (every port). Without it, a miss on the
/// exact (addr, port, proto) key ends the VIP lookup: non-VIP traffic costs one lookup.
pub const CTRL_F_HAS_WILDCARD: u32 = 2;

/// `PassiveEvent::kind`: a retransmitted SYN on an entry that has seen no ACK.
pub const EVENT_SYN_RETRANSMIT: u32 = 1;
/// At most one event per backend per CPU in this many ns: a SYN flood can't flood the ring.
pub const EVENT_MIN_GAP_NS: u64 = 100_000_000;
/// EVENT_STATS slots.
pub const EVENT_STAT_SENT: u32 = 0;
pub const EVENT_STAT_LOST: u32 = 1;
pub const EVENT_STAT_SUPPRESSED: u32 = 2;

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// HcCtrl flags: the daemon reads HC_ANSWERS on its own schedule (no wake-up per answer).
pub const HC_F_POLLED: u32 = 1;
/// HcAnswer kinds.
pub const HC_ANSWER_OPEN: u8 = 1;
pub const HC_ANSWER_REFUSED: u8 = 2;
/// The bits of a half-open check's ISN that are the cookie (`hash::hc_cookie`); the
/// rest are random per check, so that a late answer to an earlier check of the same
/// target is told apart.
pub const HC_COOKIE_MASK: u32 = 0x00ff_ffff;

/// Default GUE destination port (UDP) on the real servers.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Default MTU of the path to the real servers.
pub const DEFAULT_MTU: u32 = 1500;

/// Bytes added by each encapsulation.
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const UDP_HDR_LEN: usize = 8;

/// How many bytes of the offending packet an ICMP "too big" quotes.
pub const ICMP_QUOTE_LEN: usize = 64;

/// Map names (as in the object file and under the pin directory).
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNS: &str = "CONNS";
    pub const PERSIST: &str = "PERSIST";
    pub const FRAGS: &str = "FRAGS";
    pub const CTRL: &str = "CTRL";
    pub const RR_STATE: &str = "RR_STATE";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASONS: &str = "REASONS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const VIP_GEN: &str = "VIP_GEN";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_RL: &str = "EVENT_RL";
    pub const EVENT_STATS: &str = "EVENT_STATS";
    pub const VIP_INDEX: &str = "VIP_INDEX";
    /// Not pinned: they belong to the daemon's half-open checker of the moment.
    pub const HC_CTRL: &str = "HC_CTRL";
    pub const HC_ANSWERS: &str = "HC_ANSWERS";
    /// Every map of `xdp_lb`, for pinning.
    pub const ALL: &[&str] = &[
        VIPS,
        MAGLEV,
        BACKENDS,
        CONNS,
        PERSIST,
        FRAGS,
        CTRL,
        RR_STATE,
        VIP_STATS,
        BACKEND_STATS,
        REASONS,
    ];
}

/// VIP_FILTER: a bitmap over VIP addresses (64-bit words), so that traffic to other
/// addresses leaves after one array read instead of a hash lookup.
pub const VIP_FILTER_WORDS: u32 = 1024;
pub const VIP_FILTER_BITS: u32 = VIP_FILTER_WORDS * 64;

/// VIP_INDEX: a direct-mapped copy of VIPS (`hash::vip_slot` picks the slot), read
/// inline by XDP; a miss falls back to the VIPS hash map.
pub const VIP_INDEX_BITS: u32 = 14;
pub const VIP_INDEX_SLOTS: u32 = 1 << VIP_INDEX_BITS;

/// Default map capacities (overridable at load time).
pub const DEFAULT_MAX_VIPS: u32 = 256;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_CONNS: u32 = 1 << 20;
pub const DEFAULT_PERSIST: u32 = 1 << 16;
pub const DEFAULT_FRAGS: u32 = 1 << 14;

macro_rules! reasons {
    ($($(#[$m:meta])* $name:ident = $v:expr, $label:expr;)*) => {
        /// Why a packet left the program the way it did. Each has a per-CPU counter.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$m])* $name = $v,)* }
        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
            /// Stable label used in metrics and `lbctl stats`.
            pub const fn label(self) -> &'static str { match self { $(Reason::$name => $label,)* } }
            /// The XDP action this reason ends in, by name.
            pub const fn action(self) -> &'static str {
                match self as u32 >> 4 { 0 => "pass", 1 => "drop", _ => "tx" }
            }
            /// The XDP action value (XDP_PASS = 2, XDP_DROP = 1, XDP_TX = 3).
            #[inline(always)]
            pub const fn xdp_action(self) -> u32 {
                match self as u32 >> 4 { 0 => 2, 1 => 1, _ => 3 }
            }
        }
    };
}

reasons! {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 0, "not_ip";
    /// Destination is not a configured VIP.
    PassNotVip = 1, "not_vip";
    /// Header truncated or inconsistent: the kernel decides what to do with it.
    PassMalformed = 2, "malformed";
    /// VIP address, but a protocol we don't balance (e.g. SCTP, ESP).
    PassUnsupportedProto = 3, "unsupported_proto";
    /// IPv6 extension header chain we don't walk (other than one fragment header).
    PassUnsupportedExt = 4, "unsupported_ext";
    /// ICMP to a VIP that is neither an echo request nor an error about a VIP flow.
    PassIcmpOther = 5, "icmp_other";
    /// Later fragment of a VIP datagram whose first fragment we never saw.
    DropFragNoFirst = 16, "frag_no_first";
    /// VIP has no usable backend in its table.
    DropNoBackend = 17, "no_backend";
    /// A map or helper failed (e.g. adjust_head): should never happen.
    DropInternal = 18, "internal";
    /// An RST answering one of the daemon's half-open checks: reported to the daemon.
    DropHealthAnswer = 19, "health_answer";
    /// DR: L2 rewrite, sent back out.
    TxDr = 32, "dr";
    /// Tunnel (IPIP / IP6IP6 / GUE) encapsulated, sent back out.
    TxTun = 33, "tun";
    /// Echo request to a VIP answered by the LB.
    TxIcmpEcho = 34, "icmp_echo_reply";
    /// Too big after encapsulation: ICMP frag-needed / packet-too-big sent to the client.
    TxIcmpTooBig = 35, "icmp_too_big";
    /// An ICMP error about a VIP flow, forwarded to that flow's backend.
    TxIcmpErrorFwd = 36, "icmp_error_forwarded";
    /// A SYN-ACK answering one of the daemon's half-open checks: reported to the
    /// daemon and turned into the RST the kernel would have sent.
    TxHealthReset = 37, "health_reset";
}

/// Size of the REASONS counter array (indexed by `Reason as u32`).
pub const REASON_SLOTS: u32 = 48;
