//! Frame builders for tests (etherparse), with fixed MACs.

use std::net::IpAddr;

use etherparse::PacketBuilder;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        syn: bool,
        ack: bool,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
}

/// Inserts one 802.1Q tag after the MACs.
pub fn add_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// A client → VIP frame.
pub fn frame(src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            syn,
            ack,
        } => {
            let mut t = ip.tcp(sport, dport, 1000, 65535);
            if syn {
                t = t.syn();
            }
            if ack {
                t = t.ack(1);
            }
            t.write(&mut out, payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, payload).unwrap(),
    }
    out
}

pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    frame(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        L4::Tcp {
            sport,
            dport,
            syn: true,
            ack: false,
        },
        b"hello",
    )
}

/// An established-connection segment (ACK, no SYN): what a connection-table hit sees.
pub fn tcp_ack(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    frame(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        L4::Tcp {
            sport,
            dport,
            syn: false,
            ack: true,
        },
        b"hello",
    )
}

pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    frame(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        L4::Udp { sport, dport },
        b"hello",
    )
}

/// Offset of the IP header in an untagged frame.
pub const L3: usize = 14;

/// Recomputes the IPv4 header checksum of the header at `off` (after a test edits it).
pub fn fix_ipv4_csum(f: &mut [u8], off: usize) {
    let hl = ((f[off] & 0x0f) as usize) * 4;
    f[off + 10] = 0;
    f[off + 11] = 0;
    let c = internet_checksum(&f[off..off + hl]);
    f[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
}

pub fn internet_checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            (c[0] as u16) << 8
        };
        s += w as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
