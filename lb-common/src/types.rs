//! Map keys and values. `#[repr(C)]`, explicit padding, sizes checked at compile time.
//! Keys built from byte arrays are `align(4)` so that the eBPF code copies them in
//! 32-bit words instead of byte by byte (the BPF backend cannot assume more).

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

macro_rules! pod {
    ($($t:ty),*) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), only integer fields and explicit padding, no implicit holes.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// VIPS key: (address, port, protocol). IPv4 addresses occupy `addr[..4]`, the rest zero.
/// `port` is in network byte order; port 0 means "every port of this address".
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
assert_size!(VipKey, 20);

/// VIPS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index of this VIP's slice of MAGLEV and of its counters.
    pub idx: u32,
    /// One of `SCHED_*`.
    pub sched: u32,
    /// `VIP_F_*`.
    pub flags: u32,
    /// Persistence timeout in seconds (`ipvsadm -p`); 0 = off.
    pub persist_secs: u32,
    /// For rr/wrr: how many leading slots of this VIP's table hold the sequence.
    pub seq_len: u32,
    pub _pad: u32,
}
assert_size!(VipMeta, 24);

/// VIP_INDEX element: one VIP (key and meta) cached in the slot its key hashes to.
/// XDP finds a VIP here with an inline array read, where a VIPS lookup is a chain of
/// kernel calls; VIPS stays the truth, and a slot that does not hold the key (empty,
/// or taken by a colliding VIP) sends the lookup there.
///
/// The daemon writes slots through mmap, `live` last when it fills one and first when
/// it empties one, so a reader that sees `live` and the key sees that VIP's meta.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    /// 1 when `key` and `meta` hold a VIP.
    pub live: u32,
    pub meta: VipMeta,
    pub _pad: [u32; 4],
}
assert_size!(VipSlot, 64);

/// BACKENDS value, indexed by backend id (id 0 is never used).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Real server address (outer destination in tunnel mode).
    pub addr: [u8; 16],
    /// L2 destination: the real server's MAC (DR) or the next hop's (tunnel).
    pub mac: [u8; 6],
    pub family: u8,
    pub _pad0: u8,
    /// One of `MODE_*`.
    pub mode: u32,
    /// `BACKEND_F_*`.
    pub flags: u32,
    /// GUE destination port, network byte order.
    pub gue_port: u16,
    pub _pad1: [u8; 2],
}
assert_size!(Backend, 36);

/// A flow as the LB sees it: client → VIP. Also the CONNS key.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order. For ICMP echo: the identifier in `sport`, 0 in `dport`.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(FlowKey, 40);

/// CONNS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub backend: u32,
    /// `CONN_F_*`.
    pub flags: u32,
    /// The data plane's clock (jiffies × `Ctrl::ns_per_tick`) when last refreshed
    /// (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// VIP index: the data plane counts hits without looking the VIP up again.
    pub vip_idx: u32,
    /// VIP_GEN[vip_idx] when the entry was made: a removed (or re-created) VIP bumps
    /// its generation, so its old entries stop matching.
    pub vip_gen: u32,
    /// `hash::flow_hash` of the flow, kept so that a hit needs no rehash for the
    /// tunnel's outer source, GUE source port or IPv6 flow label.
    pub flow_hash: u32,
    pub _pad: u32,
}
assert_size!(Conn, 32);

impl Conn {
    /// The client sent FIN or RST.
    pub const fn closing(&self) -> bool {
        self.flags & (crate::CONN_F_FIN_SEEN | crate::CONN_F_RST_SEEN) != 0
    }

    /// IPVS's ActiveConn: ESTABLISHED (the client's ACK seen, no FIN or RST since);
    /// every other entry is an InActConn.
    pub const fn is_active(&self) -> bool {
        self.flags & crate::CONN_F_ACK_SEEN != 0 && !self.closing()
    }

    /// How long the entry pins its flow after its last packet, given the configured
    /// connection timeout.
    pub fn timeout_secs(&self, conn_timeout_secs: u64) -> u64 {
        if self.closing() {
            conn_timeout_secs.min(crate::CONN_CLOSING_TIMEOUT_SECS)
        } else {
            conn_timeout_secs
        }
    }

    /// ipvsadm -L -c's state, as far as the client side shows it.
    pub const fn state(&self, proto: u8) -> &'static str {
        if proto != crate::PROTO_TCP {
            "UDP"
        } else if self.flags & crate::CONN_F_RST_SEEN != 0 {
            "CLOSE"
        } else if self.flags & crate::CONN_F_FIN_SEEN != 0 {
            "FIN_WAIT"
        } else if self.flags & crate::CONN_F_ACK_SEEN != 0 {
            "ESTABLISHED"
        } else {
            "SYN_RECV"
        }
    }
}

/// PERSIST key: (VIP, client address), as ipvsadm's persistent templates.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub client: [u8; 16],
    pub vip_idx: u32,
}
assert_size!(PersistKey, 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistVal {
    pub backend: u32,
    pub _pad: u32,
    /// Coarse ns after which the template no longer applies.
    pub expires_ns: u64,
}
assert_size!(PersistVal, 16);

/// FRAGS key: one datagram (addresses + IP ID / fragment ID).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 ID (16 bits) or IPv6 fragment identification, as read (network order).
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(FragKey, 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVal {
    pub backend: u32,
    pub vip_idx: u32,
    /// The first fragment's flow hash: later fragments (which carry no ports) get the
    /// same tunnel source, GUE port and flow label, so they stay on one path.
    pub flow_hash: u32,
    pub _pad: u32,
}
assert_size!(FragVal, 16);

/// CTRL[0]: knobs the daemon sets for the whole data plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctrl {
    /// Size of each VIP's Maglev table (prime).
    pub ring_size: u32,
    /// MTU of the path to the real servers: encapsulated packets above it get ICMP too-big.
    pub mtu: u32,
    /// `CTRL_F_*`.
    pub flags: u32,
    /// Idle time after which a connection entry no longer pins its backend.
    pub conn_timeout_secs: u32,
    /// Outer IPv4 source of tunnelled packets (or its prefix, with CTRL_F_SRC_FROM_FLOW).
    pub tun_src_v4: [u8; 4],
    /// With CTRL_F_SRC_FROM_FLOW: these host bits of tun_src_v4 come from the flow hash
    /// (network order mask, e.g. 0.0.255.255 for a /16 prefix).
    pub tun_src_v4_hostmask: [u8; 4],
    /// Outer IPv6 source; with CTRL_F_SRC_FROM_FLOW its low 32 bits come from the flow hash.
    pub tun_src_v6: [u8; 16],
    /// MAC the LB sends from (the ingress interface's, for XDP_TX).
    pub our_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Length of a kernel tick (1/CONFIG_HZ) in ns: the data plane's clock is
    /// `bpf_jiffies64() × ns_per_tick`, a load the verifier inlines, where a ktime
    /// helper is a call (lb-daemon's `clock` module says why that matters).
    pub ns_per_tick: u32,
    pub _pad1: u32,
}
assert_size!(Ctrl, 56);

impl Default for Ctrl {
    fn default() -> Self {
        Ctrl {
            ring_size: crate::DEFAULT_RING_SIZE,
            mtu: crate::DEFAULT_MTU,
            flags: 0,
            conn_timeout_secs: 900,
            tun_src_v4: [0; 4],
            tun_src_v4_hostmask: [0; 4],
            tun_src_v6: [0; 16],
            our_mac: [0; 6],
            _pad: [0; 2],
            ns_per_tick: 4_000_000,
            _pad1: 0,
        }
    }
}

/// Per-CPU traffic counters for a VIP or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_conns: u64,
    /// SYNs seen again on an entry whose handshake never completed (the client is
    /// retrying: the backend may not be answering). Passive health's first signal.
    pub syn_retransmits: u64,
    /// Entries whose client ACK was seen after their SYN: handshakes that completed.
    /// `1 - handshakes / new_conns` is the share of flows stuck in the handshake.
    pub handshakes: u64,
    pub _reserved: u64,
}
assert_size!(Counters, 48);

/// A passive health signal from the data plane (EVENTS ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveEvent {
    /// One of `EVENT_*`.
    pub kind: u32,
    pub backend: u32,
    pub vip_idx: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}
assert_size!(PassiveEvent, 24);

/// HC_CTRL (one entry): what XDP needs to recognise the answers to the daemon's
/// half-open TCP checks without a map entry per check: the checks' source ports and
/// the key of the cookie in their ISNs (`hash::hc_cookie`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcCtrl {
    /// The checks' source ports, inclusive, host order; `port_hi == 0`: off.
    pub port_lo: u16,
    pub port_hi: u16,
    pub secret: [u32; 4],
    /// `HC_F_*`.
    pub flags: u32,
}
assert_size!(HcCtrl, 24);

/// An answer to a half-open check, taken by XDP (HC_ANSWERS ring buffer). Ports and
/// `ack` in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcAnswer {
    /// The backend (an IPv4 address in the first 4 bytes).
    pub remote: [u8; 16],
    /// The answer's acknowledgement number: our ISN + 1.
    pub ack: u32,
    pub rport: u16,
    pub lport: u16,
    pub family: u8,
    /// `HC_ANSWER_OPEN` (a SYN-ACK) or `HC_ANSWER_REFUSED` (an RST).
    pub kind: u8,
    pub _pad: [u8; 2],
}
assert_size!(HcAnswer, 28);

pod!(
    HcCtrl,
    HcAnswer,
    VipKey,
    VipMeta,
    VipSlot,
    Backend,
    FlowKey,
    Conn,
    PersistKey,
    PersistVal,
    FragKey,
    FragVal,
    Ctrl,
    Counters,
    PassiveEvent
);

impl FlowKey {
    /// Key with addresses reduced to a family-independent form (used for `sh`).
    pub fn src_only(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            family: self.family,
            ..FlowKey::default()
        }
    }
}
