//! Differential test: random and mutated frames through the real `xdp_lb`
//! (BPF_PROG_TEST_RUN) and through the reference model (`tests::model`), which
//! must agree on the XDP action, the output bytes, the backend, the reason
//! (checked per frame through the REASONS counters), and at the end on the whole
//! connection table and the traffic counters.
//!
//! `LB_DIFF_SEED=<u64>` replays a run (the seed is printed); `LB_DIFF_FRAMES=<n>`
//! sets the frames per configuration (default 60000, two configurations).
//!
//! rr/wrr VIPs are left out: their position is per CPU and the test thread may
//! move between CPUs; they have their own packet tests.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Instant, SystemTime},
};

use lb_common::{FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason};
use lb_daemon::loader::Capacity;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use tests::{
    lab::{Lab, XDP_TX},
    model::Model,
};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const ROUTER_V4: [u8; 4] = [10, 3, 0, 1];
const ROUTER_V6: &str = "fd00:3::1";

// ---------------------------------------------------------------------------
// Configuration

struct Svc {
    addr: &'static str,
    port: u16,
    proto: &'static str,
    sched: &'static str,
    persist: u32,
    /// (address, forward, weight, gue_port)
    backends: &'static [(&'static str, &'static str, u32, u16)],
}

const SERVICES: &[Svc] = &[
    Svc {
        addr: "10.0.0.10",
        port: 80,
        proto: "tcp",
        sched: "mh",
        persist: 0,
        backends: &[
            ("10.1.0.1", "dr", 1, 6080),
            ("10.1.0.2", "dr", 2, 6080),
            ("10.1.0.3", "tun", 1, 6080),
            ("10.1.0.4", "gue", 1, 6080),
        ],
    },
    Svc {
        addr: "10.0.0.10",
        port: 53,
        proto: "udp",
        sched: "sh",
        persist: 0,
        backends: &[
            ("10.1.1.1", "tun", 1, 6080),
            ("10.1.1.2", "gue", 1, 7000),
            ("10.1.1.3", "dr", 1, 6080),
        ],
    },
    Svc {
        addr: "10.0.0.10",
        port: 443,
        proto: "tcp",
        sched: "mh",
        persist: 300,
        backends: &[
            ("10.1.2.1", "dr", 1, 6080),
            ("10.1.2.2", "gue", 1, 6080),
            ("10.1.2.3", "tun", 1, 6080),
        ],
    },
    Svc {
        addr: "10.0.0.11",
        port: 0,
        proto: "tcp",
        sched: "mh",
        persist: 0,
        backends: &[("10.1.3.1", "dr", 1, 6080), ("10.1.3.2", "tun", 3, 6080)],
    },
    Svc {
        addr: "10.0.0.11",
        port: 0,
        proto: "udp",
        sched: "sh",
        persist: 60,
        backends: &[("10.1.4.1", "gue", 1, 6080), ("10.1.4.2", "dr", 1, 6080)],
    },
    Svc {
        addr: "10.0.0.11",
        port: 5000,
        proto: "udp",
        sched: "mh",
        persist: 0,
        backends: &[("10.1.5.1", "tun", 1, 6080)],
    },
    // No backend: every flow is DropNoBackend.
    Svc {
        addr: "10.0.0.12",
        port: 80,
        proto: "tcp",
        sched: "mh",
        persist: 0,
        backends: &[],
    },
    Svc {
        addr: "fd00::10",
        port: 80,
        proto: "tcp",
        sched: "mh",
        persist: 0,
        backends: &[
            ("fd01::1", "dr", 1, 6080),
            ("fd01::2", "tun", 2, 6080),
            ("fd01::3", "gue", 1, 6080),
        ],
    },
    Svc {
        addr: "fd00::10",
        port: 0,
        proto: "udp",
        sched: "mh",
        persist: 120,
        backends: &[
            ("fd01:1::1", "gue", 1, 6080),
            ("fd01:1::2", "dr", 1, 6080),
            ("fd01:1::3", "tun", 1, 6080),
        ],
    },
    Svc {
        addr: "fd00::10",
        port: 443,
        proto: "tcp",
        sched: "sh",
        persist: 0,
        backends: &[("fd01:2::1", "tun", 1, 6080), ("fd01:2::2", "dr", 1, 6080)],
    },
    Svc {
        addr: "fd00::11",
        port: 53,
        proto: "udp",
        sched: "mh",
        persist: 0,
        backends: &[("fd01:3::1", "gue", 1, 6081), ("fd01:3::2", "tun", 1, 6080)],
    },
    Svc {
        addr: "fd00::11",
        port: 0,
        proto: "tcp",
        sched: "sh",
        persist: 0,
        backends: &[("fd01:4::1", "dr", 1, 6080), ("fd01:4::2", "gue", 2, 6080)],
    },
    // Only a drained backend: an empty table.
    Svc {
        addr: "fd00::12",
        port: 0,
        proto: "udp",
        sched: "mh",
        persist: 0,
        backends: &[("fd01:5::1", "tun", 0, 6080)],
    },
];

/// Addresses with no VIP.
const OTHERS: &[&str] = &["10.0.0.99", "192.0.2.7", "fd00::99", "2001:db8::7"];

/// How the configuration changes half-way through a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// The first real server of each service with several is gone and the others'
    /// weights went up: connection entries, persistence templates and fragments may
    /// point at a removed backend, and the tables move.
    Reweight,
    /// As `Reweight`, and the wildcard (port 0) services are gone too.
    ReweightNoWildcard,
}

fn state_toml(mtu: u32, from_flow: bool, change: Change) -> String {
    let changed = change != Change::None;
    let mut s = String::new();
    writeln!(s, "[tunnel]").unwrap();
    if from_flow {
        writeln!(
            s,
            "source_v4 = \"10.9.0.0\"\nsource_v4_prefix = 20\nsource_v6 = \"fd00:9::\""
        )
        .unwrap();
        writeln!(s, "source_from_flow = true").unwrap();
    } else {
        writeln!(s, "source_v4 = \"10.9.0.1\"\nsource_v6 = \"fd00:9::1\"").unwrap();
    }
    writeln!(s, "mtu = {mtu}").unwrap();
    let mut mac = 0u16;
    for svc in SERVICES {
        if change == Change::ReweightNoWildcard && svc.port == 0 {
            mac += svc.backends.len() as u16;
            continue;
        }
        writeln!(s, "\n[[service]]").unwrap();
        writeln!(
            s,
            "address = \"{}\"\nport = {}\nproto = \"{}\"",
            svc.addr, svc.port, svc.proto
        )
        .unwrap();
        writeln!(
            s,
            "scheduler = \"{}\"\npersistence = {}",
            svc.sched, svc.persist
        )
        .unwrap();
        for (j, (addr, fwd, weight, gue_port)) in svc.backends.iter().enumerate() {
            mac += 1;
            if changed && j == 0 && svc.backends.len() > 1 {
                continue;
            }
            let weight = if changed { weight + 1 } else { *weight };
            writeln!(s, "[[service.backends]]").unwrap();
            writeln!(
                s,
                "address = \"{addr}\"\nforward = \"{fwd}\"\nweight = {weight}"
            )
            .unwrap();
            writeln!(s, "gue_port = {gue_port}").unwrap();
            writeln!(
                s,
                "mac = \"02:00:00:00:{:02x}:{:02x}\"",
                mac >> 8,
                mac & 0xff
            )
            .unwrap();
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Frame building

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn finish(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Checksum over a pseudo header (src, dst, proto, len) and `data`.
fn pseudo_csum(src: &[u8], dst: &[u8], proto: u8, data: &[u8]) -> u16 {
    finish(sum16(src) + sum16(dst) + proto as u32 + data.len() as u32 + sum16(data))
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1000u32.to_be_bytes());
    h.extend_from_slice(&(if flags & 0x10 != 0 { 1u32 } else { 0 }).to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// Fills in the TCP / UDP / ICMP checksum of `l4` (a whole, unfragmented datagram).
fn set_l4_csum(v6: bool, src: &[u8], dst: &[u8], proto: u8, l4: &mut [u8]) {
    let at = match proto {
        PROTO_TCP if l4.len() >= 20 => 16,
        PROTO_UDP if l4.len() >= 8 => 6,
        PROTO_ICMP | PROTO_ICMPV6 if l4.len() >= 4 => 2,
        _ => return,
    };
    l4[at] = 0;
    l4[at + 1] = 0;
    let c = if proto == PROTO_ICMP && !v6 {
        finish(sum16(l4))
    } else {
        pseudo_csum(src, dst, proto, l4)
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&rest);
    h.extend_from_slice(body);
    h
}

struct Ip4Opts {
    id: u16,
    /// Flags and fragment offset field.
    frag: u16,
    tos: u8,
    options: Vec<u8>,
}

fn ipv4(src: &[u8], dst: &[u8], proto: u8, payload: &[u8], o: &Ip4Opts) -> Vec<u8> {
    let hl = 20 + o.options.len();
    let mut h = vec![0x40 | (hl / 4) as u8, o.tos];
    h.extend_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&o.id.to_be_bytes());
    h.extend_from_slice(&o.frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(src);
    h.extend_from_slice(dst);
    h.extend_from_slice(&o.options);
    let c = finish(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(src: &[u8], dst: &[u8], next: u8, payload: &[u8], tc: u8, fl: u32) -> Vec<u8> {
    let mut h = vec![
        0x60 | (tc >> 4),
        (tc << 4) | ((fl >> 16) as u8 & 0x0f),
        (fl >> 8) as u8,
        fl as u8,
    ];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(src);
    h.extend_from_slice(dst);
    h.extend_from_slice(payload);
    h
}

fn frag6(next: u8, offset_units: u16, more: bool, id: u32) -> [u8; 8] {
    let o = (offset_units << 3) | more as u16;
    let o = o.to_be_bytes();
    let i = id.to_be_bytes();
    [next, 0, o[0], o[1], i[0], i[1], i[2], i[3]]
}

fn eth(src_mac: [u8; 6], vlan: Option<(u16, u16)>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = LB_MAC.to_vec();
    f.extend_from_slice(&src_mac);
    if let Some((tpid, tci)) = vlan {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The generator

#[derive(Clone, Copy, Debug)]
struct Flow {
    client: IpAddr,
    vip: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

impl Flow {
    fn v6(&self) -> bool {
        self.vip.is_ipv6()
    }
}

struct Gen {
    rng: StdRng,
    pool: Vec<Flow>,
    /// First fragments sent: (flow, id), so later fragments can follow them.
    firsts: Vec<(Flow, u32)>,
    vip_addrs: Vec<IpAddr>,
}

const TCP_FLAGS: &[u8] = &[0x02, 0x10, 0x12, 0x18, 0x11, 0x04, 0x00, 0x19, 0x02];

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vip_addrs: Vec<IpAddr> = SERVICES.iter().map(|s| s.addr.parse().unwrap()).collect();
        vip_addrs.dedup();
        let mut pool = Vec::new();
        for _ in 0..3000 {
            let f = Gen::fresh_flow(&mut rng, &vip_addrs);
            pool.push(f);
        }
        Gen {
            rng,
            pool,
            firsts: Vec::new(),
            vip_addrs,
        }
    }

    fn client(rng: &mut StdRng, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                2,
                0,
                0,
                0,
                0,
                rng.random_range(0..4),
                rng.random_range(1..300),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                10,
                2,
                rng.random_range(0..4),
                rng.random_range(1..80),
            ))
        }
    }

    fn fresh_flow(rng: &mut StdRng, vip_addrs: &[IpAddr]) -> Flow {
        let r = rng.random_range(0..100);
        let (vip, proto, dport) = if r < 80 {
            // A configured service (wildcards with a random port).
            let s = &SERVICES[rng.random_range(0..SERVICES.len())];
            let port = if s.port == 0 {
                rng.random_range(1..65535)
            } else {
                s.port
            };
            (
                s.addr.parse().unwrap(),
                if s.proto == "tcp" {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                },
                port,
            )
        } else if r < 92 {
            // A VIP address, any protocol and port.
            let a = *vip_addrs.choose(rng).unwrap();
            let proto = if rng.random_bool(0.5) {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            (
                a,
                proto,
                *[80u16, 53, 443, 8080, 5000, 1].choose(rng).unwrap(),
            )
        } else {
            let a: IpAddr = OTHERS.choose(rng).unwrap().parse().unwrap();
            (
                a,
                if rng.random_bool(0.5) {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                },
                80,
            )
        };
        let client = Gen::client(rng, vip.is_ipv6());
        Flow {
            client,
            vip,
            proto,
            sport: rng.random_range(1024..65535),
            dport,
        }
    }

    fn flow(&mut self) -> Flow {
        if self.rng.random_bool(0.85) {
            *self.pool.choose(&mut self.rng).unwrap()
        } else {
            Gen::fresh_flow(&mut self.rng, &self.vip_addrs)
        }
    }

    fn payload(&mut self, big: f64) -> Vec<u8> {
        let n = if self.rng.random_bool(big) {
            self.rng.random_range(500..1480)
        } else if self.rng.random_bool(0.2) {
            self.rng.random_range(100..500)
        } else {
            self.rng.random_range(0..100)
        };
        (0..n).map(|_| self.rng.random()).collect()
    }

    fn client_mac(&mut self) -> [u8; 6] {
        let mut m: [u8; 6] = self.rng.random();
        m[0] = (m[0] & 0xfe) | 0x02;
        m
    }

    fn vlan(&mut self) -> Option<(u16, u16)> {
        if self.rng.random_bool(0.15) {
            let tpid = if self.rng.random_bool(0.8) {
                0x8100
            } else {
                0x88a8
            };
            Some((tpid, self.rng.random_range(1..4095)))
        } else {
            None
        }
    }

    fn v4_opts(&mut self, frag: u16) -> Ip4Opts {
        let options = if self.rng.random_bool(0.12) {
            let n = 4 * self.rng.random_range(1..=10);
            (0..n).map(|_| self.rng.random()).collect()
        } else {
            Vec::new()
        };
        let df = if self.rng.random_bool(0.5) { 0x4000 } else { 0 };
        Ip4Opts {
            id: self.rng.random(),
            frag: frag | df,
            tos: self.rng.random(),
            options,
        }
    }

    /// An IP packet (header(s) + `l4`) from `src` to `dst`, in an Ethernet frame.
    /// `frag`: (id, offset in 8-byte units, more fragments).
    fn frame(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        mut l4: Vec<u8>,
        frag: Option<(u32, u16, bool)>,
    ) -> Vec<u8> {
        let (s, d) = (ip_bytes(src), ip_bytes(dst));
        let v6 = dst.is_ipv6();
        if frag.is_none() {
            set_l4_csum(v6, &s, &d, proto, &mut l4);
        }
        let vlan = self.vlan();
        let mac = self.client_mac();
        let mut f = if v6 {
            let tc = if self.rng.random_bool(0.3) {
                self.rng.random()
            } else {
                0
            };
            let fl = self.rng.random_range(0..1 << 20);
            let atomic = frag.is_none() && self.rng.random_bool(0.03);
            let ip = match frag {
                Some((id, off, more)) => {
                    let mut p = frag6(proto, off, more, id).to_vec();
                    p.extend_from_slice(&l4);
                    ipv6(&s, &d, 44, &p, tc, fl)
                }
                None if atomic => {
                    let mut p = frag6(proto, 0, false, self.rng.random()).to_vec();
                    p.extend_from_slice(&l4);
                    ipv6(&s, &d, 44, &p, tc, fl)
                }
                None => ipv6(&s, &d, proto, &l4, tc, fl),
            };
            eth(mac, vlan, 0x86dd, &ip)
        } else {
            let field = match frag {
                Some((_, off, more)) => off | if more { 0x2000 } else { 0 },
                None => 0,
            };
            let mut o = self.v4_opts(field);
            if let Some((id, ..)) = frag {
                o.id = id as u16;
            }
            eth(mac, vlan, 0x0800, &ipv4(&s, &d, proto, &l4, &o))
        };
        if f.len() < 60 && self.rng.random_bool(0.5) {
            let pad = if self.rng.random_bool(0.5) {
                0
            } else {
                self.rng.random()
            };
            f.resize(60, pad);
        }
        f
    }

    fn l4_for(&mut self, f: &Flow, big: f64) -> Vec<u8> {
        let payload = self.payload(big);
        if f.proto == PROTO_TCP {
            let flags = *TCP_FLAGS.choose(&mut self.rng).unwrap();
            tcp(f.sport, f.dport, flags, &payload)
        } else {
            udp(f.sport, f.dport, &payload)
        }
    }

    fn next_frame(&mut self) -> Vec<u8> {
        let f = match self.rng.random_range(0..100) {
            0..38 => {
                let fl = self.flow();
                let l4 = self.l4_for(&fl, 0.08);
                self.frame(fl.client, fl.vip, fl.proto, l4, None)
            }
            38..47 => self.first_fragment(),
            47..55 => self.later_fragment(),
            55..61 => self.echo(),
            61..75 => self.icmp_error(),
            75..79 => self.icmp_other(),
            79..85 => self.other_proto(),
            85..89 => self.non_ip(),
            _ => self.bad_header(),
        };
        if self.rng.random_bool(0.35) {
            self.mutate(f)
        } else {
            f
        }
    }

    fn first_fragment(&mut self) -> Vec<u8> {
        let fl = self.flow();
        let id = self.rng.random_range(0..256);
        let l4 = self.l4_for(&fl, 0.15);
        self.firsts.push((fl, id));
        if self.firsts.len() > 512 {
            self.firsts.swap_remove(self.rng.random_range(0..512));
        }
        self.frame(fl.client, fl.vip, fl.proto, l4, Some((id, 0, true)))
    }

    fn later_fragment(&mut self) -> Vec<u8> {
        let (fl, id) = match self.firsts.choose(&mut self.rng) {
            Some(x) if self.rng.random_bool(0.7) => *x,
            _ => (self.flow(), self.rng.random_range(0..256)),
        };
        let payload = self.payload(0.15);
        let off = self.rng.random_range(1..186);
        let more = self.rng.random_bool(0.5);
        self.frame(fl.client, fl.vip, fl.proto, payload, Some((id, off, more)))
    }

    fn any_dst(&mut self, v6: bool) -> IpAddr {
        loop {
            let a: IpAddr = if self.rng.random_bool(0.75) {
                *self.vip_addrs.choose(&mut self.rng).unwrap()
            } else {
                OTHERS.choose(&mut self.rng).unwrap().parse().unwrap()
            };
            if a.is_ipv6() == v6 {
                return a;
            }
        }
    }

    fn echo(&mut self) -> Vec<u8> {
        let v6 = self.rng.random_bool(0.5);
        let dst = self.any_dst(v6);
        let src = Gen::client(&mut self.rng, v6);
        let (proto, ty) = if v6 {
            (PROTO_ICMPV6, 128)
        } else {
            (PROTO_ICMP, 8)
        };
        let body = self.payload(0.1);
        let rest: [u8; 4] = self.rng.random();
        let l4 = icmp(
            ty,
            if self.rng.random_bool(0.9) {
                0
            } else {
                self.rng.random()
            },
            rest,
            &body,
        );
        let frag = match self.rng.random_range(0..10) {
            0 => Some((self.rng.random_range(0..256), 0, true)),
            1 => Some((
                self.rng.random_range(0..256),
                self.rng.random_range(1..100),
                false,
            )),
            _ => None,
        };
        self.frame(src, dst, proto, l4, frag)
    }

    /// An ICMP error about a flow: the quote is a VIP → client packet.
    fn icmp_error(&mut self) -> Vec<u8> {
        let fl = self.flow();
        let v6 = fl.v6();
        let (vip, client) = (ip_bytes(fl.vip), ip_bytes(fl.client));
        let mut qproto = fl.proto;
        if self.rng.random_bool(0.05) {
            qproto = *[PROTO_ICMP, 50, PROTO_ICMPV6]
                .choose(&mut self.rng)
                .unwrap();
        }
        let inner_l4 = if fl.proto == PROTO_TCP {
            tcp(fl.dport, fl.sport, 0x12, &[])
        } else {
            udp(fl.dport, fl.sport, &self.payload(0.0))
        };
        let mut quote = if v6 {
            ipv6(&vip, &client, qproto, &inner_l4, 0, 0)
        } else {
            let o = self.v4_opts(0);
            ipv4(&vip, &client, qproto, &inner_l4, &o)
        };
        let hl = if v6 {
            40
        } else {
            ((quote[0] & 0x0f) * 4) as usize
        };
        let cut = match self.rng.random_range(0..10) {
            0 => hl + self.rng.random_range(0..4),
            1..5 => hl + 8,
            _ => quote.len(),
        };
        quote.truncate(cut.min(quote.len()));
        let mtu: u16 = *[1280u16, 1400, 1500, 576].choose(&mut self.rng).unwrap();
        let m = mtu.to_be_bytes();
        let (proto, l4) = if v6 {
            let (ty, code, rest) = match self.rng.random_range(0..4) {
                0 => (1, self.rng.random_range(0..7), [0; 4]),
                1 => (2, 0, [0, 0, m[0], m[1]]),
                2 => (3, self.rng.random_range(0..2), [0; 4]),
                _ => (4, 0, [0, 0, 0, 8]),
            };
            (PROTO_ICMPV6, icmp(ty, code, rest, &quote))
        } else {
            let (ty, code, rest) = match self.rng.random_range(0..4) {
                0 => (3, 4, [0, 0, m[0], m[1]]),
                1 => (3, self.rng.random_range(0..16), [0; 4]),
                2 => (11, self.rng.random_range(0..2), [0; 4]),
                _ => (12, 0, [20, 0, 0, 0]),
            };
            (PROTO_ICMP, icmp(ty, code, rest, &quote))
        };
        let src: IpAddr = if self.rng.random_bool(0.5) {
            fl.client
        } else if v6 {
            ROUTER_V6.parse().unwrap()
        } else {
            IpAddr::from(ROUTER_V4)
        };
        let dst = if self.rng.random_bool(0.9) {
            fl.vip
        } else {
            self.any_dst(v6)
        };
        self.frame(src, dst, proto, l4, None)
    }

    fn icmp_other(&mut self) -> Vec<u8> {
        let v6 = self.rng.random_bool(0.5);
        let dst = self.any_dst(v6);
        let src = Gen::client(&mut self.rng, v6);
        let body = self.payload(0.0);
        let rest: [u8; 4] = self.rng.random();
        let (proto, ty) = if v6 {
            (
                PROTO_ICMPV6,
                *[129u8, 130, 133, 135, 136, 4, 0]
                    .choose(&mut self.rng)
                    .unwrap(),
            )
        } else {
            (
                PROTO_ICMP,
                *[0u8, 5, 13, 14, 9, 12, 4].choose(&mut self.rng).unwrap(),
            )
        };
        let l4 = icmp(ty, 0, rest, &body);
        self.frame(src, dst, proto, l4, None)
    }

    fn other_proto(&mut self) -> Vec<u8> {
        let v6 = self.rng.random_bool(0.5);
        let dst = self.any_dst(v6);
        let src = Gen::client(&mut self.rng, v6);
        let proto = if v6 {
            *[0u8, 43, 50, 51, 60, 59, 47, 132, 135, 139, 140, PROTO_ICMP]
                .choose(&mut self.rng)
                .unwrap()
        } else {
            *[2u8, 47, 50, 51, 132, 0, 41, 4, PROTO_ICMPV6]
                .choose(&mut self.rng)
                .unwrap()
        };
        let body = self.payload(0.05);
        let frag = match self.rng.random_range(0..8) {
            0 => Some((self.rng.random_range(0..256), 0, true)),
            _ => None,
        };
        self.frame(src, dst, proto, body, frag)
    }

    fn non_ip(&mut self) -> Vec<u8> {
        let mac = self.client_mac();
        let n = self.rng.random_range(0..80);
        let body: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
        match self.rng.random_range(0..5) {
            0 => eth(mac, None, 0x0806, &body),
            1 => eth(mac, None, 0x88cc, &body),
            // QinQ: two tags, the program looks behind one only.
            2 => {
                let mut inner = vec![0x81, 0x00, 0, 5, 0x08, 0x00];
                inner.extend_from_slice(&body);
                eth(mac, Some((0x88a8, 7)), 0x8100, &inner)
            }
            3 => eth(mac, self.vlan(), self.rng.random(), &body),
            // Bare headers: Ethernet alone, or a tag with nothing behind it.
            _ => {
                let mut f = eth(
                    mac,
                    None,
                    *[0x0800u16, 0x86dd, 0x8100].choose(&mut self.rng).unwrap(),
                    &[],
                );
                let extra = self.rng.random_range(0..8);
                f.extend((0..extra).map(|_| self.rng.random::<u8>()));
                f
            }
        }
    }

    /// A valid TCP/UDP frame with one header field made wrong.
    fn bad_header(&mut self) -> Vec<u8> {
        let fl = self.flow();
        let l4 = self.l4_for(&fl, 0.0);
        let mut f = self.frame(fl.client, fl.vip, fl.proto, l4, None);
        let l3 = if u16::from_be_bytes([f[12], f[13]]) == 0x86dd || f[12..14] == [0x08, 0x00] {
            14
        } else {
            18
        };
        let r = self.rng.random_range(0..6);
        match (fl.v6(), r) {
            (_, 0) => f[l3] = (self.rng.random_range(0..16u8) << 4) | (f[l3] & 0x0f),
            (false, 1) => f[l3] = 0x40 | self.rng.random_range(0..16u8),
            (false, 2..4) => {
                let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]);
                let d: i32 = self.rng.random_range(-40..40);
                let n = (tot as i32 + d).clamp(0, 0xffff) as u16;
                f[l3 + 2..l3 + 4].copy_from_slice(&n.to_be_bytes());
            }
            (true, 1..4) => {
                let pl = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
                let d: i32 = self.rng.random_range(-40..40);
                let n = (pl as i32 + d).clamp(0, 0xffff) as u16;
                f[l3 + 4..l3 + 6].copy_from_slice(&n.to_be_bytes());
            }
            _ => {
                let n = self.rng.random_range(14..=f.len());
                f.truncate(n);
            }
        }
        f
    }

    fn mutate(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.rng.random_range(1..=3) {
            match self.rng.random_range(0..10) {
                0..3 => {
                    // Flip a bit, mostly in the headers.
                    let hi = if self.rng.random_bool(0.8) {
                        f.len().min(90)
                    } else {
                        f.len()
                    };
                    let i = self.rng.random_range(0..hi);
                    f[i] ^= 1 << self.rng.random_range(0..8);
                }
                3..5 => {
                    let hi = f.len().min(90);
                    let i = self.rng.random_range(0..hi);
                    f[i] = self.rng.random();
                }
                5..7 => {
                    let n = self.rng.random_range(14..=f.len());
                    f.truncate(n);
                }
                7 => {
                    let n = self.rng.random_range(1..64);
                    f.extend((0..n).map(|_| self.rng.random::<u8>()));
                }
                _ => {
                    // Change a length-ish field of an IP header at 14 or 18.
                    let l3 = if self.rng.random_bool(0.8) { 14 } else { 18 };
                    let at = l3 + *[2usize, 3, 4, 5, 6, 7].choose(&mut self.rng).unwrap();
                    if at < f.len() {
                        f[at] = f[at].wrapping_add(self.rng.random_range(1..8));
                    }
                }
            }
        }
        f
    }
}

// ---------------------------------------------------------------------------
// The test

fn mac_to_backend(model: &Model) -> HashMap<[u8; 6], u32> {
    (0..model.cfg.backends.len() as u32)
        .filter_map(|id| model.cfg.backend(id).map(|b| (b.mac, id)))
        .collect()
}

/// Runs `frames` frames through a fresh data plane configured with (`mtu`, `from_flow`);
/// half-way the configuration changes (see `state_toml`).
fn check_config(
    name: &str,
    index: u64,
    (mtu, from_flow, change): (u32, bool, Change),
    frames: u64,
    seed: u64,
) -> u64 {
    let cap = Capacity {
        conn_table: 1 << 18,
        frag_table: 1 << 16,
        persist_table: 1 << 16,
        ..Capacity::small()
    };
    let mut lab = Lab::with_capacity(cap.clone()).expect("loading xdp_lb");
    lab.apply_toml(&state_toml(mtu, from_flow, Change::None))
        .expect("applying the state");
    let mut model = Model::from_dataplane(&lab.dp).expect("reading the maps");
    // MAC → backend id (all MACs are distinct), to tell where a frame went.
    let mut by_mac = mac_to_backend(&model);
    let mut counts: HashMap<u32, u64> = Reason::ALL
        .iter()
        .map(|r| (*r as u32, lab.reason(*r)))
        .collect();
    let start_counts = counts.clone();
    let mut done = 0;
    let mut g = Gen::new(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));

    for i in 0..frames {
        if i == frames / 2 {
            lab.apply_toml(&state_toml(mtu, from_flow, change))
                .expect("applying the changed state");
            model.reload(&lab.dp).expect("reading the maps");
            by_mac = mac_to_backend(&model);
        }
        let frame = g.next_frame();
        // The model's verdict (its state moves on with it; a mismatch ends the test).
        let exp = model.process(&frame);
        let run = lab.run(&frame).unwrap_or_else(|e| {
            panic!(
                "[{name} #{i} seed {seed}] test run failed: {e:#}; frame {}",
                hex(&frame)
            )
        });
        let fail = |what: &str, prog_reason: Option<Reason>| -> ! {
            let first_diff = run.out.iter().zip(&exp.out).position(|(a, b)| a != b);
            panic!(
                "[{name} #{i} seed {seed}] {what}\n frame    {}\n model    action {} reason {:?} backend {:?}\n          out {}\n program  action {} reason {:?}\n          out {}\n first differing byte: {:?} (lengths {} / {})",
                hex(&frame),
                exp.action,
                exp.reason,
                exp.backend,
                hex(&exp.out),
                run.action,
                prog_reason,
                hex(&run.out),
                first_diff,
                exp.out.len(),
                run.out.len(),
            )
        };
        // The reason: exactly the expected counter moved by one.
        let now = lab.reason(exp.reason);
        let r = exp.reason as u32;
        if now != counts[&r] + 1 {
            let moved = Reason::ALL
                .iter()
                .copied()
                .find(|x| lab.reason(*x) != counts[&(*x as u32)]);
            fail("reason differs", moved);
        }
        counts.insert(r, now);
        if run.action != exp.action {
            fail("action differs", None);
        }
        if run.out != exp.out {
            fail("output differs", Some(exp.reason));
        }
        if run.action == XDP_TX {
            // Sent to a backend: the destination MAC says which.
            let to_backend = matches!(
                exp.reason,
                Reason::TxDr | Reason::TxTun | Reason::TxIcmpErrorFwd
            );
            let mac: [u8; 6] = run.out[..6].try_into().unwrap();
            if to_backend && by_mac.get(&mac).copied() != exp.backend {
                fail("backend (by destination MAC) differs", Some(exp.reason));
            }
            if let (Some(flow), Some(b)) = (exp.conn_flow, exp.backend) {
                match lab.dp.conn(&flow) {
                    Some(c) if c.backend == b => {}
                    c => fail(
                        &format!("connection entry {c:?} differs from backend {b}"),
                        Some(exp.reason),
                    ),
                }
            }
        }
        done += 1;
    }

    // Counters: every reason, over the whole run.
    for r in Reason::ALL {
        let got = lab.reason(*r) - start_counts[&(*r as u32)];
        assert_eq!(
            got,
            model.reason_count(*r),
            "[{name}] REASONS[{r:?}]: program {got}, model"
        );
    }
    // The whole connection table.
    let conns: HashMap<FlowKey, _> = lab.dp.conns().into_iter().collect();
    assert_eq!(
        conns.len(),
        model.conns().len(),
        "[{name}] connection entries: program vs model"
    );
    for (k, c) in model.conns() {
        let p = conns
            .get(k)
            .unwrap_or_else(|| panic!("[{name}] program has no entry for {k:?}"));
        assert_eq!(
            (p.backend, p.flags, p.vip_idx, p.vip_gen),
            (c.backend, c.flags, c.vip_idx, c.vip_gen),
            "[{name}] connection entry {k:?}"
        );
    }
    // Traffic counters of every VIP and backend.
    for idx in 0..cap.max_vips {
        let c = lab.dp.vip_counters(idx).unwrap();
        let m = model.vip_traffic(idx);
        assert_eq!(
            (c.packets, c.bytes, c.new_conns),
            (m.packets, m.bytes, m.new_conns),
            "[{name}] VIP {idx} counters"
        );
    }
    for id in 0..cap.max_backends {
        let c = lab.dp.backend_counters(id).unwrap();
        let m = model.backend_traffic(id);
        assert_eq!(
            (c.packets, c.bytes, c.new_conns),
            (m.packets, m.bytes, m.new_conns),
            "[{name}] backend {id} counters"
        );
    }
    // Far from the LRU maps' capacity, so nothing was evicted behind the model's back.
    // An LRU map can evict before it is full (free entries wait in per-CPU lists): stay
    // below half a CPU's share of the connection table.
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.get() as usize);
    assert!(
        model.conns().len() < cap.conn_table as usize / cpus / 2,
        "[{name}] too many connections for a CPU's share of CONNS: lower LB_DIFF_FRAMES"
    );
    assert!(model.frag_count() < (cap.frag_table / 2) as usize);
    assert!(model.persist_count() < (cap.persist_table / 2) as usize);

    let mut line = format!("[{name}] {done} frames:");
    for r in Reason::ALL {
        let n = model.reason_count(*r);
        if n > 0 {
            write!(line, " {}={n}", r.label()).unwrap();
        }
    }
    println!("{line}");
    println!(
        "[{name}] {} connection entries, {} fragment entries, {} persistence entries",
        model.conns().len(),
        model.frag_count(),
        model.persist_count()
    );
    done
}

#[test]
fn program_matches_model() {
    let seed = match std::env::var("LB_DIFF_SEED") {
        Ok(s) => s.parse().expect("LB_DIFF_SEED: a u64"),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let frames = std::env::var("LB_DIFF_FRAMES")
        .map_or(60_000, |s| s.parse().expect("LB_DIFF_FRAMES: a count"));
    println!(
        "differential: seed {seed} (replay with LB_DIFF_SEED={seed}), {frames} frames per configuration"
    );
    let t = Instant::now();
    let mut total = 0;
    for (index, (name, setup)) in [
        ("mtu1500", (1500, false, Change::Reweight)),
        (
            "mtu600-src-from-flow",
            (600, true, Change::ReweightNoWildcard),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        total += check_config(name, index as u64, setup, frames, seed);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "differential: {total} frames in {secs:.1} s ({:.1} µs/frame)",
        secs * 1e6 / total as f64
    );
}
