//! Packet tests: crafted frames through the real `xdp_lb` (BPF_PROG_TEST_RUN),
//! checking the action, the output bytes and the counters.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket};
use lb_common::Reason;
use tests::{
    lab::{Lab, XDP_DROP, XDP_PASS, XDP_TX},
    pkt::{self, CLIENT_MAC, L3, L4, LB_MAC},
};

/// Backends 10.1.0.{1,2,3} (MACs 02:..:01:0{1,2,3}) behind 10.0.0.10:80/tcp, plus IPv6 and
/// tunnel services. `extra` is appended (more services).
fn config(fwd: &str, sched: &str, extra: &str) -> String {
    format!(
        r#"
[tunnel]
source_v4 = "10.9.0.1"
source_v6 = "fd00:9::1"
mtu = 1500

[[service]]
address = "10.0.0.10"
port = 80
proto = "tcp"
scheduler = "{sched}"
[[service.backends]]
address = "10.1.0.1"
forward = "{fwd}"
mac = "02:00:00:00:01:01"
[[service.backends]]
address = "10.1.0.2"
forward = "{fwd}"
mac = "02:00:00:00:01:02"
[[service.backends]]
address = "10.1.0.3"
forward = "{fwd}"
mac = "02:00:00:00:01:03"

[[service]]
address = "fd00::10"
port = 80
proto = "tcp"
scheduler = "{sched}"
[[service.backends]]
address = "fd00:1::1"
forward = "{fwd}"
mac = "02:00:00:00:06:01"
[[service.backends]]
address = "fd00:1::2"
forward = "{fwd}"
mac = "02:00:00:00:06:02"
{extra}
"#
    )
}

fn lab(fwd: &str, sched: &str) -> Lab {
    let mut l = Lab::new().expect("lab");
    l.apply_toml(&config(fwd, sched, "")).expect("apply");
    l
}

fn dst_mac(f: &[u8]) -> [u8; 6] {
    f[..6].try_into().unwrap()
}

/// DR output: which backend (last MAC byte) got it.
fn dr_backend(out: &[u8]) -> u8 {
    assert_eq!(&out[6..12], &LB_MAC, "source MAC must be the LB's");
    out[5]
}

#[test]
fn non_vip_and_non_ip_pass_unchanged() {
    let mut l = lab("dr", "mh");
    for f in [
        pkt::tcp("192.168.1.5", 4000, "10.0.0.99", 80),
        pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 81),
        pkt::udp("192.168.1.5", 4000, "10.0.0.10", 80),
        pkt::tcp("2001:db8::5", 4000, "fd00::99", 80),
    ] {
        let r = l.run(&f).unwrap();
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(
            r.out, f,
            "a non-VIP packet must leave byte for byte unchanged"
        );
    }
    // ARP
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let r = l.run(&arp).unwrap();
    assert_eq!((r.action, r.out == arp), (XDP_PASS, true));
    assert_eq!(l.reason(Reason::PassNotVip), 4);
    assert_eq!(l.reason(Reason::PassNotIp), 1);
}

#[test]
fn dr_v4_rewrites_only_the_macs_and_counts() {
    let mut l = lab("dr", "mh");
    let f = pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80);
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    let b = dr_backend(&r.out);
    assert!((1..=3).contains(&b));
    assert_eq!(dst_mac(&r.out), [2, 0, 0, 0, 1, b]);
    assert_eq!(&r.out[12..], &f[12..], "DR must not touch L3 and above");
    // Same flow again: same backend, counted as one connection, two packets.
    let r2 = l.run(&f).unwrap();
    assert_eq!(r2.out, r.out);
    let svc = l.state.services[0].id();
    let idx = l.proj.vip_idx(&svc).unwrap();
    let c = l.dp.vip_counters(idx).unwrap();
    assert_eq!((c.packets, c.new_conns), (2, 1));
    assert_eq!(c.bytes, 2 * (f.len() - L3) as u64);
    let bid = l
        .proj
        .backend_id(&svc, format!("10.1.0.{b}").parse().unwrap())
        .unwrap();
    let bc = l.dp.backend_counters(bid).unwrap();
    assert_eq!((bc.packets, bc.new_conns), (2, 1));
    assert_eq!(l.reason(Reason::TxDr), 2);
}

#[test]
fn dr_v6() {
    let mut l = lab("dr", "mh");
    let f = pkt::tcp("2001:db8::5", 4000, "fd00::10", 80);
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(&r.out[..5], &[2, 0, 0, 0, 6]);
    assert_eq!(&r.out[12..], &f[12..]);
}

/// Parses an encapsulated output: (outer src, outer dst, outer protocol, inner L3 bytes).
fn outer(out: &[u8]) -> (IpAddr, IpAddr, u8, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(out).expect("output parses");
    match p.net.expect("outer IP") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            let hdr = h.slice();
            assert_eq!(pkt::internet_checksum(hdr), 0, "outer IPv4 checksum");
            assert_eq!(h.total_len() as usize, out.len() - L3);
            let inner = out[L3 + 20..].to_vec();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.protocol().0,
                inner,
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            assert_eq!(h.payload_length() as usize, out.len() - L3 - 40);
            let inner = out[L3 + 40..].to_vec();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.next_header().0,
                inner,
            )
        }
        _ => panic!("no IP"),
    }
}

#[test]
fn tun_v4_ipip_exact_outer_header() {
    let mut l = lab("tun", "mh");
    let f = pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80);
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out.len(), f.len() + 20);
    let (src, dst, proto, inner) = outer(&r.out);
    assert_eq!(src, "10.9.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(proto, 4);
    let b = r.out[5];
    assert_eq!(dst, format!("10.1.0.{b}").parse::<IpAddr>().unwrap());
    assert_eq!(
        inner,
        f[L3..].to_vec(),
        "inner packet is the original, untouched"
    );
    assert_eq!(&r.out[6..12], &LB_MAC);
    assert_eq!(&r.out[12..14], &[0x08, 0x00]);
    // TTL 64, TOS copied (0), no DF.
    assert_eq!((r.out[L3 + 8], r.out[L3 + 1]), (64, 0));
    assert_eq!(l.reason(Reason::TxTun), 1);
}

#[test]
fn tun_v6_ip6ip6() {
    let mut l = lab("tun", "mh");
    let f = pkt::tcp("2001:db8::5", 4000, "fd00::10", 80);
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out.len(), f.len() + 40);
    let (src, dst, proto, inner) = outer(&r.out);
    assert_eq!(src, "fd00:9::1".parse::<IpAddr>().unwrap());
    assert_eq!(proto, 41);
    assert!(dst.to_string().starts_with("fd00:1::"));
    assert_eq!(inner, f[L3..].to_vec());
    assert_eq!(r.out[L3 + 7], 64, "hop limit");
}

#[test]
fn gue_v4_and_v6() {
    let mut l = lab("gue", "mh");
    for f in [
        pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80),
        pkt::tcp("2001:db8::5", 4000, "fd00::10", 80),
    ] {
        let r = l.run(&f).unwrap();
        assert_eq!(r.action, XDP_TX);
        let (_, _, proto, inner) = outer(&r.out);
        assert_eq!(proto, 17);
        assert_eq!(u16::from_be_bytes([inner[2], inner[3]]), 6080, "GUE port");
        assert_eq!(
            u16::from_be_bytes([inner[4], inner[5]]) as usize,
            inner.len(),
            "UDP length"
        );
        assert!(
            u16::from_be_bytes([inner[0], inner[1]]) >= 0x8000,
            "source port from the flow hash"
        );
        assert_eq!(&inner[8..], &f[L3..]);
    }
}

#[test]
fn source_from_flow_spreads_outer_sources() {
    let mut l = Lab::new().unwrap();
    let cfg = config("tun", "mh", "").replace(
        "mtu = 1500",
        "mtu = 1500\nsource_from_flow = true\nsource_v4_prefix = 16",
    );
    l.apply_toml(&cfg).unwrap();
    let mut srcs = std::collections::BTreeSet::new();
    for port in 1000..1100 {
        let r = l
            .run(&pkt::tcp("192.168.1.5", port, "10.0.0.10", 80))
            .unwrap();
        let (src, ..) = outer(&r.out);
        let IpAddr::V4(s) = src else { panic!() };
        assert_eq!(&s.octets()[..2], &[10, 9], "prefix kept");
        srcs.insert(s);
    }
    assert!(srcs.len() > 90, "outer sources spread: {}", srcs.len());
}

#[test]
fn vlan_tag_is_kept_in_dr_and_tun() {
    for fwd in ["dr", "tun"] {
        let mut l = lab(fwd, "mh");
        let f = pkt::add_vlan(&pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80), 42);
        let r = l.run(&f).unwrap();
        assert_eq!(r.action, XDP_TX, "{fwd}");
        assert_eq!(&r.out[12..16], &[0x81, 0x00, 0x00, 42], "{fwd}: tag kept");
        if fwd == "dr" {
            assert_eq!(&r.out[12..], &f[12..]);
        } else {
            assert_eq!(&r.out[16..18], &[0x08, 0x00]);
            assert_eq!(r.out[18], 0x45);
            assert_eq!(r.out[18 + 9], 4);
            assert_eq!(&r.out[38..], &f[18..], "inner packet intact");
        }
    }
}

#[test]
fn wildcard_port_service_takes_every_port() {
    let mut l = Lab::new().unwrap();
    let extra = r#"
[[service]]
address = "10.0.0.20"
port = 0
proto = "udp"
[[service.backends]]
address = "10.1.0.9"
mac = "02:00:00:00:01:09"
"#;
    l.apply_toml(&config("dr", "mh", extra)).unwrap();
    for port in [53, 443, 65535] {
        let r = l
            .run(&pkt::udp("192.168.1.5", 4000, "10.0.0.20", port))
            .unwrap();
        assert_eq!((r.action, r.out[5]), (XDP_TX, 9));
    }
    // Not for TCP on that address.
    let f = pkt::tcp("192.168.1.5", 4000, "10.0.0.20", 53);
    assert_eq!(l.run(&f).unwrap().action, XDP_PASS);
}

#[test]
fn truncated_and_malformed_headers_pass_unchanged() {
    let mut l = lab("dr", "mh");
    let good = pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80);
    // BPF_PROG_TEST_RUN needs at least an Ethernet header: truncate from there on.
    let mut cases: Vec<Vec<u8>> = (L3..L3 + 40).map(|n| good[..n].to_vec()).collect();
    let mut bad_version = good.clone();
    bad_version[L3] = 0x55;
    cases.push(bad_version);
    let mut bad_ihl = good.clone();
    bad_ihl[L3] = 0x44;
    cases.push(bad_ihl);
    let mut long_total = good.clone();
    long_total[L3 + 2] = 0x40;
    cases.push(long_total);
    let good6 = pkt::tcp("2001:db8::5", 4000, "fd00::10", 80);
    cases.extend((L3..L3 + 60).map(|n| good6[..n].to_vec()));
    for f in &cases {
        let r = l.run(f).unwrap();
        assert_eq!(r.action, XDP_PASS, "{f:02x?}");
        assert_eq!(&r.out, f);
    }
    assert_eq!(l.reason(Reason::TxDr), 0);
    // Every case but the ethertype-only 14-byte frame... which is malformed too (no IP header).
    assert_eq!(l.reason(Reason::PassMalformed), cases.len() as u64);
}

#[test]
fn ipv4_options_are_balanced() {
    let mut l = lab("tun", "mh");
    let plain = pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80);
    // Insert 8 bytes of options (NOPs + EOL): IHL 7.
    let mut f = plain[..L3 + 20].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 0]);
    f.extend_from_slice(&plain[L3 + 20..]);
    f[L3] = 0x47;
    let tot = u16::from_be_bytes([f[L3 + 2], f[L3 + 3]]) + 8;
    f[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
    pkt::fix_ipv4_csum(&mut f, L3);
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    let r_plain = l.run(&plain).unwrap();
    assert_eq!(
        r.out[5], r_plain.out[5],
        "same 5-tuple → same backend despite options"
    );
    let (.., inner) = outer(&r.out);
    assert_eq!(inner, f[L3..].to_vec());
}

fn fragment_v4(base: &[u8], id: u16, offset8: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = base[..L3 + 20].to_vec();
    f[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
    let fl = offset8 | if more { 0x2000 } else { 0 };
    f[L3 + 6..L3 + 8].copy_from_slice(&fl.to_be_bytes());
    f.extend_from_slice(payload);
    let tot = (20 + payload.len()) as u16;
    f[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
    pkt::fix_ipv4_csum(&mut f, L3);
    f
}

#[test]
fn fragments_follow_the_first_or_are_dropped() {
    let mut l = lab("dr", "mh");
    let base = pkt::udp("192.168.1.5", 4000, "10.0.0.10", 80);
    let mut l2 = Lab::new().unwrap();
    l2.apply_toml(
        &config("dr", "mh", "").replace("port = 80\nproto = \"tcp\"", "port = 80\nproto = \"udp\""),
    )
    .unwrap();
    drop(l);
    l = l2;
    let udp_part = &base[L3 + 20..];
    let mut first_payload = udp_part.to_vec();
    first_payload.extend_from_slice(&[0xaa; 16]);
    for id in [7u16, 8, 9, 10, 11, 12] {
        let first = fragment_v4(&base, id, 0, true, &first_payload);
        let r1 = l.run(&first).unwrap();
        assert_eq!(r1.action, XDP_TX);
        let later = fragment_v4(&base, id, 4, false, &[0xbb; 24]);
        let r2 = l.run(&later).unwrap();
        assert_eq!(r2.action, XDP_TX);
        assert_eq!(r2.out[5], r1.out[5], "later fragment follows the first");
    }
    let orphan = fragment_v4(&base, 999, 4, false, &[0xcc; 24]);
    let r = l.run(&orphan).unwrap();
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(l.reason(Reason::DropFragNoFirst), 1);
    // A fragment not for a VIP passes.
    let other = pkt::udp("192.168.1.5", 4000, "10.0.0.99", 80);
    let f = fragment_v4(&other, 5, 4, false, &[0xcc; 24]);
    assert_eq!(l.run(&f).unwrap().action, XDP_PASS);
}

#[test]
fn ipv6_fragments_follow_the_first() {
    let mut l = Lab::new().unwrap();
    l.apply_toml(
        &config("dr", "mh", "").replace("port = 80\nproto = \"tcp\"", "port = 80\nproto = \"udp\""),
    )
    .unwrap();
    let base = pkt::udp("2001:db8::5", 4000, "fd00::10", 80);
    let build = |id: u32, off8: u16, more: bool, body: &[u8]| {
        let mut f = base[..L3 + 40].to_vec();
        f[L3 + 6] = 44;
        let fo = (off8 << 3) | more as u16;
        let mut fh = vec![17, 0];
        fh.extend_from_slice(&fo.to_be_bytes());
        fh.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&fh);
        f.extend_from_slice(body);
        let pl = (8 + body.len()) as u16;
        f[L3 + 4..L3 + 6].copy_from_slice(&pl.to_be_bytes());
        f
    };
    let mut first_body = base[L3 + 40..].to_vec();
    first_body.extend_from_slice(&[0xaa; 19]);
    let mut backends = std::collections::BTreeSet::new();
    for id in 1..40u32 {
        let r1 = l.run(&build(id, 0, true, &first_body)).unwrap();
        let r2 = l.run(&build(id, 3, false, &[0xbb; 16])).unwrap();
        assert_eq!((r1.action, r2.action), (XDP_TX, XDP_TX));
        assert_eq!(r1.out[..6], r2.out[..6]);
        backends.insert(r1.out[5]);
    }
    assert_eq!(
        l.run(&build(1000, 3, false, &[0; 16])).unwrap().action,
        XDP_DROP
    );
}

#[test]
fn too_big_after_encap_answers_icmp_frag_needed() {
    let mut l = Lab::new().unwrap();
    l.apply_toml(&config("tun", "mh", "").replace("mtu = 1500", "mtu = 1400"))
        .unwrap();
    let f = pkt::frame(
        "192.168.1.5".parse().unwrap(),
        "10.0.0.10".parse().unwrap(),
        L4::Tcp {
            sport: 4000,
            dport: 80,
            syn: false,
            ack: true,
        },
        &[0x5a; 1400 - 20 - 20 - 19],
    );
    // 1381 + 20 > 1400 → too big
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(&r.out[..6], &CLIENT_MAC, "back to the client");
    assert_eq!(&r.out[6..12], &LB_MAC);
    let ip = &r.out[L3..];
    assert_eq!(ip.len(), 20 + 8 + 64);
    assert_eq!(pkt::internet_checksum(&ip[..20]), 0);
    assert_eq!(&ip[12..16], &[10, 0, 0, 10], "from the VIP");
    assert_eq!(&ip[16..20], &[192, 168, 1, 5], "to the client");
    assert_eq!(ip[9], 1);
    let icmp = &ip[20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1380,
        "next-hop MTU = mtu - overhead"
    );
    assert_eq!(pkt::internet_checksum(icmp), 0, "ICMP checksum");
    assert_eq!(&icmp[8..], &f[L3..L3 + 64], "quotes the packet");
    assert_eq!(l.reason(Reason::TxIcmpTooBig), 1);
    // One byte less fits.
    let small = pkt::frame(
        "192.168.1.5".parse().unwrap(),
        "10.0.0.10".parse().unwrap(),
        L4::Tcp {
            sport: 4000,
            dport: 80,
            syn: false,
            ack: true,
        },
        &[0x5a; 1400 - 20 - 20 - 20],
    );
    assert_eq!(outer(&l.run(&small).unwrap().out).2, 4);
}

fn icmpv6_checksum(ip6: &[u8]) -> u16 {
    let plen = u16::from_be_bytes([ip6[4], ip6[5]]) as usize;
    let mut pseudo = ip6[8..40].to_vec();
    pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&ip6[40..40 + plen]);
    pkt::internet_checksum(&pseudo)
}

#[test]
fn too_big_v6_answers_packet_too_big() {
    let mut l = Lab::new().unwrap();
    l.apply_toml(&config("tun", "mh", "").replace("mtu = 1500", "mtu = 1280"))
        .unwrap();
    let f = pkt::frame(
        "2001:db8::5".parse().unwrap(),
        "fd00::10".parse().unwrap(),
        L4::Tcp {
            sport: 4000,
            dport: 80,
            syn: false,
            ack: true,
        },
        &[0x5a; 1250],
    );
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    let ip = &r.out[L3..];
    assert_eq!(ip.len(), 40 + 8 + 64);
    assert_eq!(ip[6], 58);
    assert_eq!(&ip[8..24], &f[L3 + 24..L3 + 40], "from the VIP");
    assert_eq!(&ip[24..40], &f[L3 + 8..L3 + 24], "to the client");
    assert_eq!((ip[40], ip[41]), (2, 0));
    assert_eq!(u32::from_be_bytes([ip[44], ip[45], ip[46], ip[47]]), 1240);
    assert_eq!(icmpv6_checksum(ip), 0, "ICMPv6 checksum with pseudo-header");
}

#[test]
fn echo_to_a_vip_is_answered() {
    let mut l = lab("dr", "mh");
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 168, 1, 5], [10, 0, 0, 10], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut f, b"ping")
        .unwrap();
    let r = l.run(&f).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!((&r.out[..6], &r.out[6..12]), (&CLIENT_MAC[..], &LB_MAC[..]));
    let ip = &r.out[L3..];
    assert_eq!(
        (&ip[12..16], &ip[16..20]),
        (&[10u8, 0, 0, 10][..], &[192u8, 168, 1, 5][..])
    );
    assert_eq!(pkt::internet_checksum(&ip[..20]), 0);
    assert_eq!(ip[20], 0, "echo reply");
    assert_eq!(pkt::internet_checksum(&ip[20..]), 0);
    assert_eq!(&ip[28..], b"ping");
    // v6
    let mut f6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(
            "2001:db8::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .icmpv6_echo_request(7, 1)
        .write(&mut f6, b"ping")
        .unwrap();
    let r6 = l.run(&f6).unwrap();
    assert_eq!(r6.action, XDP_TX);
    assert_eq!(r6.out[L3 + 40], 129);
    assert_eq!(icmpv6_checksum(&r6.out[L3..]), 0);
    // Echo to a non-VIP passes.
    let mut g = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([192, 168, 1, 5], [10, 0, 0, 99], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut g, b"ping")
        .unwrap();
    assert_eq!(l.run(&g).unwrap().out, g);
    assert_eq!(l.reason(Reason::TxIcmpEcho), 2);
}

#[test]
fn icmp_error_goes_to_the_flows_backend() {
    let mut l = lab("dr", "mh");
    let mut seen = std::collections::BTreeSet::new();
    for port in 4000..4040u16 {
        let f = pkt::tcp("192.168.1.5", port, "10.0.0.10", 80);
        let b = l.run(&f).unwrap().out[5];
        seen.insert(b);
        // A router says the backend's reply (VIP:80 → client:port) was too big.
        let mut reply = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 10], [192, 168, 1, 5], 64)
            .tcp(80, port, 1, 1000)
            .write(&mut reply, &[])
            .unwrap();
        let mut icmp = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x99], LB_MAC)
            .ipv4([172, 16, 0, 1], [10, 0, 0, 10], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut icmp, &reply)
            .unwrap();
        let r = l.run(&icmp).unwrap();
        assert_eq!(r.action, XDP_TX);
        assert_eq!(
            r.out[5], b,
            "ICMP error reaches the backend of the flow it quotes"
        );
        assert_eq!(&r.out[12..], &icmp[12..]);
    }
    assert!(seen.len() > 1);
    assert_eq!(l.reason(Reason::TxIcmpErrorFwd), 40);
}

fn flows(n: u16) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            pkt::tcp(
                &format!("192.168.{}.{}", i / 200, i % 200 + 1),
                10000 + i,
                "10.0.0.10",
                80,
            )
        })
        .collect()
}

#[test]
fn established_flows_keep_their_backend_across_changes() {
    let mut l = lab("dr", "mh");
    let fl = flows(600);
    let before: Vec<u8> = fl.iter().map(|f| l.run(f).unwrap().out[5]).collect();
    // Weight change on backend 1, then removal of backend 3.
    let cfg = config("dr", "mh", "");
    let weighted = cfg.replacen(
        "mac = \"02:00:00:00:01:01\"",
        "mac = \"02:00:00:00:01:01\"\nweight = 5",
        1,
    );
    l.apply_toml(&weighted).unwrap();
    let after: Vec<u8> = fl.iter().map(|f| l.run(f).unwrap().out[5]).collect();
    assert_eq!(
        before, after,
        "weight change must not move established flows"
    );
    let without3 = weighted.replace(
        "[[service.backends]]\naddress = \"10.1.0.3\"\nforward = \"dr\"\nmac = \"02:00:00:00:01:03\"\n",
        "",
    );
    assert_ne!(without3, weighted);
    l.apply_toml(&without3).unwrap();
    for (f, b) in fl.iter().zip(&before) {
        let now = l.run(f).unwrap().out[5];
        if *b == 3 {
            assert_ne!(now, 3, "a removed backend gets nothing");
        } else {
            assert_eq!(now, *b, "flows of remaining backends stay");
        }
    }
    // New flows after the weight change follow the weights: backend 1 gets ~5/6.
    let newer: Vec<u8> = (0..600u16)
        .map(|i| {
            l.run(&pkt::tcp("172.20.0.1", 20000 + i, "10.0.0.10", 80))
                .unwrap()
                .out[5]
        })
        .collect();
    let ones = newer.iter().filter(|b| **b == 1).count();
    assert!(
        (430..=570).contains(&ones),
        "weight 5:1 → {ones}/600 on backend 1"
    );
}

#[test]
fn drained_backend_keeps_flows_gets_no_new_ones() {
    let mut l = lab("dr", "mh");
    let fl = flows(300);
    let before: Vec<u8> = fl.iter().map(|f| l.run(f).unwrap().out[5]).collect();
    let drained = config("dr", "mh", "").replacen(
        "mac = \"02:00:00:00:01:02\"",
        "mac = \"02:00:00:00:01:02\"\nweight = 0",
        1,
    );
    l.apply_toml(&drained).unwrap();
    let after: Vec<u8> = fl.iter().map(|f| l.run(f).unwrap().out[5]).collect();
    assert_eq!(before, after);
    for i in 0..300u16 {
        let b = l
            .run(&pkt::tcp("172.20.0.1", 30000 + i, "10.0.0.10", 80))
            .unwrap()
            .out[5];
        assert_ne!(b, 2, "drained backend must get no new flow");
    }
}

#[test]
fn sh_keeps_a_client_on_one_backend() {
    let mut l = lab("dr", "sh");
    let mut per_client = std::collections::BTreeMap::new();
    for c in 1..=60u8 {
        let mut set = std::collections::BTreeSet::new();
        for port in 0..20u16 {
            set.insert(
                l.run(&pkt::tcp(
                    &format!("192.168.7.{c}"),
                    2000 + port,
                    "10.0.0.10",
                    80,
                ))
                .unwrap()
                .out[5],
            );
        }
        assert_eq!(set.len(), 1, "client {c} saw backends {set:?}");
        per_client.insert(c, *set.iter().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = per_client.values().collect();
    assert_eq!(distinct.len(), 3, "clients spread over all backends");
}

fn pin_to_one_cpu() {
    // rr state is per CPU: keep every BPF_PROG_TEST_RUN on the same CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn rr_cycles_through_backends_and_wrr_follows_weights() {
    pin_to_one_cpu();
    let mut l = lab("dr", "rr");
    let seq: Vec<u8> = (0..9u16)
        .map(|i| {
            l.run(&pkt::tcp("192.168.1.5", 5000 + i, "10.0.0.10", 80))
                .unwrap()
                .out[5]
        })
        .collect();
    assert_eq!(seq, vec![1, 2, 3, 1, 2, 3, 1, 2, 3]);
    let cfg = config("dr", "wrr", "")
        .replacen(
            "mac = \"02:00:00:00:01:01\"",
            "mac = \"02:00:00:00:01:01\"\nweight = 3",
            1,
        )
        .replacen(
            "mac = \"02:00:00:00:01:02\"",
            "mac = \"02:00:00:00:01:02\"\nweight = 2",
            1,
        );
    let mut l = Lab::new().unwrap();
    l.apply_toml(&cfg).unwrap();
    let seq: Vec<u8> = (0..12u16)
        .map(|i| {
            l.run(&pkt::tcp("192.168.1.5", 6000 + i, "10.0.0.10", 80))
                .unwrap()
                .out[5]
        })
        .collect();
    let count = |b| seq.iter().filter(|x| **x == b).count();
    assert_eq!((count(1), count(2), count(3)), (6, 4, 2), "{seq:?}");
    // IPVS wrr order for weights 3,2,1: 1,1,2,1,2,3
    assert_eq!(&seq[..6], &[1, 1, 2, 1, 2, 3]);
}

#[test]
fn persistence_keeps_a_client_on_one_backend_across_ports() {
    let mut l = Lab::new().unwrap();
    let cfg = config("dr", "mh", "").replacen(
        "scheduler = \"mh\"",
        "scheduler = \"mh\"\npersistence = 300",
        1,
    );
    l.apply_toml(&cfg).unwrap();
    for c in 1..=20u8 {
        let set: std::collections::BTreeSet<u8> = (0..30u16)
            .map(|p| {
                l.run(&pkt::tcp(
                    &format!("192.168.9.{c}"),
                    3000 + p,
                    "10.0.0.10",
                    80,
                ))
                .unwrap()
                .out[5]
            })
            .collect();
        assert_eq!(set.len(), 1, "client {c}: {set:?}");
    }
    // Without persistence the same client spreads.
    let mut l = lab("dr", "mh");
    let set: std::collections::BTreeSet<u8> = (0..30u16)
        .map(|p| {
            l.run(&pkt::tcp("192.168.9.1", 3000 + p, "10.0.0.10", 80))
                .unwrap()
                .out[5]
        })
        .collect();
    assert!(set.len() > 1);
}

#[test]
fn no_backend_drops_and_counts() {
    let mut l = Lab::new().unwrap();
    l.apply_toml(
        r#"
[[service]]
address = "10.0.0.30"
port = 80
proto = "tcp"
"#,
    )
    .unwrap();
    let r = l
        .run(&pkt::tcp("192.168.1.5", 4000, "10.0.0.30", 80))
        .unwrap();
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(l.reason(Reason::DropNoBackend), 1);
}

#[test]
fn decap_restores_the_original_packet() {
    for (fwd, f) in [
        ("tun", pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80)),
        ("tun", pkt::tcp("2001:db8::5", 4000, "fd00::10", 80)),
        ("gue", pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80)),
        ("gue", pkt::tcp("2001:db8::5", 4000, "fd00::10", 80)),
        (
            "tun",
            pkt::add_vlan(&pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80), 7),
        ),
    ] {
        let mut l = lab(fwd, "mh");
        let enc = l.run(&f).unwrap();
        assert_eq!(enc.action, XDP_TX);
        let dec = l.run_prog("xdp_decap", &enc.out).unwrap();
        assert_eq!(dec.action, XDP_PASS);
        assert_eq!(
            &dec.out[12..],
            &f[12..],
            "{fwd}: inner packet and ethertype restored"
        );
        assert_eq!(&dec.out[..6], &enc.out[..6]);
    }
    // Not a tunnel: untouched.
    let mut l = lab("dr", "mh");
    let f = pkt::udp("192.168.1.5", 4000, "10.0.0.10", 53);
    assert_eq!(l.run_prog("xdp_decap", &f).unwrap().out, f);
}

#[test]
fn retransmitted_syn_is_counted_and_reported_once_per_interval() {
    let mut l = lab("dr", "mh");
    let syn = pkt::tcp("192.168.1.5", 4000, "10.0.0.10", 80);
    let first = l.run(&syn).unwrap().out[5];
    for _ in 0..5 {
        assert_eq!(
            l.run(&syn).unwrap().out[5],
            first,
            "a retransmitted SYN stays on its backend"
        );
    }
    let svc = l.state.services[0].id();
    let bid = l
        .proj
        .backend_id(&svc, format!("10.1.0.{first}").parse().unwrap())
        .unwrap();
    let c = l.dp.backend_counters(bid).unwrap();
    assert_eq!((c.new_conns, c.syn_retransmits, c.handshakes), (1, 5, 0));
    let ev = l.dp.drain_events();
    assert_eq!(
        ev.len(),
        1,
        "rate limited to one event per backend per 100 ms: {ev:?}"
    );
    assert_eq!(
        (ev[0].kind, ev[0].backend),
        (lb_common::EVENT_SYN_RETRANSMIT, bid)
    );
    let (sent, lost, suppressed) = l.dp.event_stats().unwrap();
    assert_eq!((sent, lost, suppressed), (1, 0, 4));
    // The client's ACK completes the handshake: counted once.
    let ack = pkt::tcp_ack("192.168.1.5", 4000, "10.0.0.10", 80);
    l.run(&ack).unwrap();
    l.run(&ack).unwrap();
    assert_eq!(l.dp.backend_counters(bid).unwrap().handshakes, 1);
}

/// `f` (IPv4, no options) with its TCP flags byte replaced.
fn with_tcp_flags(mut f: Vec<u8>, flags: u8) -> Vec<u8> {
    f[14 + 20 + 13] = flags;
    f
}

#[test]
fn fin_and_rst_make_an_entry_inactive_and_short_lived() {
    let mut l = lab("dr", "mh");
    let conn = |l: &Lab, sport: u16| {
        let e: Vec<_> =
            l.dp.conns()
                .into_iter()
                .filter(|(k, _)| u16::from_be(k.sport) == sport)
                .collect();
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].1
    };
    for (sport, flags, state) in [(4100u16, 0x11u8, "FIN_WAIT"), (4101, 0x04, "CLOSE")] {
        let syn = pkt::tcp("192.168.1.5", sport, "10.0.0.10", 80);
        let b = l.run(&syn).unwrap().out[5];
        let ack = pkt::tcp_ack("192.168.1.5", sport, "10.0.0.10", 80);
        assert_eq!(l.run(&ack).unwrap().out[5], b);
        let c = conn(&l, sport);
        assert!(c.is_active(), "{c:?}");
        assert_eq!(c.state(lb_common::PROTO_TCP), "ESTABLISHED");
        assert_eq!(c.timeout_secs(900), 900);
        // The client closes: still forwarded to its backend, now inactive.
        let close = with_tcp_flags(ack.clone(), flags);
        let r = l.run(&close).unwrap();
        assert_eq!((r.action, r.out[5]), (XDP_TX, b), "{state}");
        let c = conn(&l, sport);
        assert!(!c.is_active(), "{state}: {c:?}");
        assert_eq!(c.state(lb_common::PROTO_TCP), state);
        assert_eq!(
            c.timeout_secs(900),
            lb_common::CONN_CLOSING_TIMEOUT_SECS,
            "{state}"
        );
        // Later segments (the peer's FIN's ACK) stay on the backend and keep the flag.
        assert_eq!(l.run(&ack).unwrap().out[5], b);
        assert_eq!(conn(&l, sport).state(lb_common::PROTO_TCP), state);
    }
}

#[test]
fn syn_on_an_established_entry_is_scheduled_afresh() {
    let mut l = lab("dr", "mh");
    // Establish 200 flows, then make backend 1 heavier: a reused 5-tuple (SYN after
    // the old connection's ACKs) follows the new table, a retransmission would not.
    let flows: Vec<(Vec<u8>, Vec<u8>)> = (0..200u16)
        .map(|i| {
            (
                pkt::tcp("192.168.3.3", 7000 + i, "10.0.0.10", 80),
                pkt::tcp_ack("192.168.3.3", 7000 + i, "10.0.0.10", 80),
            )
        })
        .collect();
    for (syn, ack) in &flows {
        l.run(syn).unwrap();
        l.run(ack).unwrap();
    }
    let heavier = config("dr", "mh", "").replacen(
        "mac = \"02:00:00:00:01:01\"",
        "mac = \"02:00:00:00:01:01\"\nweight = 50",
        1,
    );
    l.apply_toml(&heavier).unwrap();
    let mut moved = 0;
    for (syn, ack) in &flows {
        let before = l.run(ack).unwrap().out[5];
        let after = l.run(syn).unwrap().out[5];
        if after != before {
            moved += 1;
            assert_eq!(after, 1, "a rescheduled flow follows the new weights");
        }
    }
    assert!(moved > 50, "reused 5-tuples are rescheduled: {moved}");
}

/// The data plane's clock (jiffies × Ctrl::ns_per_tick) is the one user space ages
/// entries with, and an entry idle past the timeout no longer pins its flow.
#[test]
fn entries_age_on_the_data_plane_clock_and_expire() {
    let mut l = lab("dr", "mh");
    let mut ctrl = l.dp.ctrl().unwrap();
    assert_eq!(ctrl.ns_per_tick, lb_daemon::clock::ns_per_tick());
    ctrl.conn_timeout_secs = 1;
    l.dp.set_ctrl(&ctrl).unwrap();
    let ack = pkt::tcp_ack("192.168.1.5", 4200, "10.0.0.10", 80);
    let before = lb_daemon::clock::now_ns();
    let b = l.run(&ack).unwrap().out[5];
    let after = lb_daemon::clock::now_ns();
    let seen = |l: &Lab| {
        l.dp.conns()
            .into_iter()
            .find(|(k, _)| u16::from_be(k.sport) == 4200)
            .expect("an entry for the flow")
            .1
    };
    let c = seen(&l);
    assert!(
        (before..=after).contains(&c.last_seen_ns),
        "entry stamped {} outside the user-space clock's {before}..={after}",
        c.last_seen_ns
    );
    let idx = l.proj.vip_idx(&l.state.services[0].id()).unwrap();
    let new_conns = |l: &Lab| l.dp.vip_counters(idx).unwrap().new_conns;
    let n = new_conns(&l);
    // Within the timeout: a hit, no new connection.
    assert_eq!(l.run(&ack).unwrap().out[5], b);
    assert_eq!(new_conns(&l), n);
    // Idle past it: scheduled afresh (same backend, Maglev is stable), counted new,
    // and stamped again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(l.run(&ack).unwrap().out[5], b);
    assert_eq!(new_conns(&l), n + 1);
    assert!(seen(&l).last_seen_ns >= c.last_seen_ns + 1_000_000_000);
}

/// VIP_INDEX caches VIPS: a VIP is found in its slot; of two VIPs whose keys share a
/// slot, one is cached and the other found through VIPS; removing the cached one
/// hands the slot to the other and stops its traffic; a scheduler change of a cached
/// VIP is seen at once.
#[test]
fn vip_index_caches_vips_and_collisions_fall_back() {
    use lb_common::hash::vip_slot;
    use lb_daemon::sync::vip_key;
    // Two VIP addresses whose (addr, 80, tcp) keys share a slot.
    let key = |i: u32| {
        let a = IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        (a, vip_key(a, 80, lb_common::PROTO_TCP))
    };
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..200_000u32)
        .find_map(|i| {
            let (addr, k) = key(i);
            seen.insert(vip_slot(&k), addr).map(|other| (other, addr))
        })
        .expect("a collision among 200,000 keys in 16,384 slots");
    let service = |addr: IpAddr, sched: &str, last: u8| {
        format!(
            "[[service]]\naddress = \"{addr}\"\nport = 80\nproto = \"tcp\"\nscheduler = \"{sched}\"\n\
             [[service.backends]]\naddress = \"10.1.0.{last}\"\nforward = \"dr\"\nmac = \"02:00:00:00:01:{last:02x}\"\n"
        )
    };
    let mut l = Lab::new().unwrap();
    l.apply_toml(&(service(a, "mh", 1) + &service(b, "mh", 2)))
        .unwrap();
    let ka = vip_key(a, 80, lb_common::PROTO_TCP);
    let kb = vip_key(b, 80, lb_common::PROTO_TCP);
    let (held, _) = l.dp.vip_index_holder(&ka).expect("the slot holds a VIP");
    assert!(held == ka || held == kb);
    let (cached, other, cached_addr, other_addr, cached_mac, other_mac) = if held == ka {
        (ka, kb, a, b, 1u8, 2u8)
    } else {
        (kb, ka, b, a, 2, 1)
    };
    let to = |addr: IpAddr, sport: u16| pkt::tcp("192.168.1.5", sport, &addr.to_string(), 80);
    // Both reach their own backend: one through the index, one through VIPS.
    assert_eq!(l.run(&to(cached_addr, 5000)).unwrap().out[5], cached_mac);
    assert_eq!(l.run(&to(other_addr, 5001)).unwrap().out[5], other_mac);
    // A scheduler change of the cached VIP is in its slot.
    let rr = if cached_mac == 1 {
        service(a, "rr", 1) + &service(b, "mh", 2)
    } else {
        service(a, "mh", 1) + &service(b, "rr", 2)
    };
    l.apply_toml(&rr).unwrap();
    let (k, meta) = l.dp.vip_index_holder(&cached).unwrap();
    assert_eq!((k, meta.sched), (cached, lb_common::SCHED_RR));
    // Removing the cached VIP: the slot goes to the other, and the removed one's
    // traffic passes.
    let only_other = if cached_mac == 1 {
        service(b, "mh", 2)
    } else {
        service(a, "mh", 1)
    };
    l.apply_toml(&only_other).unwrap();
    assert_eq!(l.dp.vip_index_holder(&other).unwrap().0, other);
    assert_eq!(l.run(&to(other_addr, 5002)).unwrap().out[5], other_mac);
    let r = l.run(&to(cached_addr, 5003)).unwrap();
    assert_eq!(r.action, XDP_PASS);
    // And with no VIPs at all, the slot is empty.
    l.apply_toml("").unwrap();
    assert!(l.dp.vip_index_holder(&other).is_none());
}

/// The answers to the daemon's half-open checks: a SYN-ACK or RST to one of the
/// checks' source ports whose ACK carries our cookie is reported on HC_ANSWERS; the
/// SYN-ACK leaves as the RST the kernel would have sent, the RST is dropped. Anything
/// else to those ports (another cookie, another port, no config) passes unchanged.
#[test]
fn health_check_answers_are_reported_and_reset() {
    use etherparse::{PacketBuilder, TcpOptionElement};
    use lb_common::{HC_ANSWER_OPEN, HC_ANSWER_REFUSED, HC_COOKIE_MASK, HcAnswer, HcCtrl};

    const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
    let secret = [0x1111_2222, 0x3333_4444, 0x5555_6666, 0x7777_8888];
    let isn_of = |remote: IpAddr, rport: u16, high: u32| {
        let (r, _) = lb_daemon::sync::addr_bytes(remote);
        (high << 24) | lb_common::hash::hc_cookie(&secret, &r, rport)
    };
    // An answer as a backend's kernel sends it: a SYN-ACK with options, or an RST.
    let answer = |backend: IpAddr, lb: IpAddr, lport: u16, ack: u32, open: bool| {
        let b = PacketBuilder::ethernet2(BACKEND_MAC, LB_MAC);
        let ip = match (backend, lb) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 57),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 57),
            _ => unreachable!(),
        };
        let mut out = Vec::new();
        if open {
            ip.tcp(80, lport, 0xabcd_0001, 64240)
                .syn()
                .ack(ack)
                .options(&[
                    TcpOptionElement::MaximumSegmentSize(1460),
                    TcpOptionElement::SelectiveAcknowledgementPermitted,
                    TcpOptionElement::Noop,
                    TcpOptionElement::WindowScale(7),
                ])
                .unwrap()
                .write(&mut out, &[])
                .unwrap();
        } else {
            ip.tcp(80, lport, 0, 0)
                .rst()
                .ack(ack)
                .write(&mut out, &[])
                .unwrap();
        }
        out
    };
    // The RST our kernel would send for that SYN-ACK: seq = its ACK, no ACK of ours.
    let rst = |backend: IpAddr, lb: IpAddr, lport: u16, seq: u32| {
        let b = PacketBuilder::ethernet2(LB_MAC, BACKEND_MAC);
        let ip = match (lb, backend) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut out = Vec::new();
        ip.tcp(lport, 80, seq, 0)
            .rst()
            .write(&mut out, &[])
            .unwrap();
        out
    };

    let mut l = lab("dr", "mh");
    let (mut ctrl, mut ring) = l.dp.take_health_answers().expect("the maps");
    let mut reports = || {
        let mut v = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<HcAnswer>());
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HcAnswer>()) });
        }
        v
    };
    let b4: IpAddr = "10.1.0.7".parse().unwrap();
    let lb4: IpAddr = "10.9.0.1".parse().unwrap();
    let b6: IpAddr = "fd00:1::7".parse().unwrap();
    let lb6: IpAddr = "fd00:9::1".parse().unwrap();
    let isn = isn_of(b4, 80, 0x5a);
    let open4 = answer(b4, lb4, 40005, isn.wrapping_add(1), true);

    // No HC_CTRL yet: the kernel's.
    let r = l.run(&open4).unwrap();
    assert_eq!((r.action, &r.out), (XDP_PASS, &open4));
    ctrl.set(
        0,
        &HcCtrl {
            port_lo: 40000,
            port_hi: 40063,
            secret,
            flags: 0,
        },
        0,
    )
    .unwrap();
    assert!(reports().is_empty());

    let before = (
        l.reason(Reason::TxHealthReset),
        l.reason(Reason::DropHealthAnswer),
    );
    let r = l.run(&open4).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(
        r.out,
        rst(b4, lb4, 40005, isn.wrapping_add(1)),
        "the IPv4 RST"
    );
    let mut want = HcAnswer {
        ack: isn.wrapping_add(1),
        rport: 80,
        lport: 40005,
        family: lb_common::FAMILY_V4,
        kind: HC_ANSWER_OPEN,
        ..HcAnswer::default()
    };
    want.remote[..4].copy_from_slice(&[10, 1, 0, 7]);
    assert_eq!(reports(), vec![want]);

    // The same behind a VLAN tag: the tag stays.
    let r = l.run(&pkt::add_vlan(&open4, 42)).unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(
        r.out,
        pkt::add_vlan(&rst(b4, lb4, 40005, isn.wrapping_add(1)), 42)
    );
    assert_eq!(reports().len(), 1);

    // IPv6; and an RST (port closed), dropped.
    let isn6 = isn_of(b6, 80, 0xff);
    let r = l
        .run(&answer(b6, lb6, 40063, isn6.wrapping_add(1), true))
        .unwrap();
    assert_eq!(r.action, XDP_TX);
    assert_eq!(
        r.out,
        rst(b6, lb6, 40063, isn6.wrapping_add(1)),
        "the IPv6 RST"
    );
    let r = l
        .run(&answer(b4, lb4, 40000, isn.wrapping_add(1), false))
        .unwrap();
    assert_eq!(r.action, XDP_DROP);
    let got = reports();
    assert_eq!(got.len(), 2);
    let r6 = lb_daemon::sync::addr_bytes(b6).0;
    assert_eq!(
        (
            got[0].remote,
            got[0].family,
            got[0].lport,
            got[0].ack,
            got[0].kind
        ),
        (
            r6,
            lb_common::FAMILY_V6,
            40063,
            isn6.wrapping_add(1),
            HC_ANSWER_OPEN
        )
    );
    assert_eq!((got[1].lport, got[1].kind), (40000, HC_ANSWER_REFUSED));
    assert_eq!(
        (
            l.reason(Reason::TxHealthReset) - before.0,
            l.reason(Reason::DropHealthAnswer) - before.1
        ),
        (3, 1)
    );

    // Not ours: a cookie off by one bit, a port outside the range, another target
    // (the cookie is the target's), an ACK without SYN, a SYN-ACK with FIN.
    let other_cookie = isn ^ 1;
    let mut others = vec![
        answer(b4, lb4, 40005, other_cookie.wrapping_add(1), true),
        answer(b4, lb4, 40064, isn.wrapping_add(1), true),
        answer(b4, lb4, 39999, isn.wrapping_add(1), false),
        answer(
            "10.1.0.8".parse().unwrap(),
            lb4,
            40005,
            isn.wrapping_add(1),
            true,
        ),
        pkt::tcp_ack("10.1.0.7", 80, "10.9.0.1", 40005),
    ];
    let mut fin = answer(b4, lb4, 40005, isn.wrapping_add(1), true);
    fin[L3 + 20 + 13] |= 0x01;
    others.push(fin);
    // Only the high (random) bits differ: still ours, as far as XDP can tell.
    assert_eq!((isn ^ 0xff00_0000) & HC_COOKIE_MASK, isn & HC_COOKIE_MASK);
    for f in &others {
        let r = l.run(f).unwrap();
        assert_eq!((r.action, &r.out), (XDP_PASS, f));
    }
    assert!(reports().is_empty());
}
