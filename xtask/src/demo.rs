//! `cargo xtask demo`: the embedded default configuration at work. Builds its
//! topology in `lbdemo-*` namespaces, runs lb-daemon there, sends `requests` HTTP
//! requests from the client through the VIP, prints which real server answered
//! each and the daemon's counters, and removes everything again.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::netns::{self, CLIENT_ADDR, LB_ADDR, LB_IF, Lab, SERVERS, VIP, VIP_PORT};

const PREFIX: &str = "lbdemo-";

pub fn run(daemon: &Path, requests: u32) -> Result<()> {
    if requests == 0 {
        bail!("--requests must be at least 1");
    }
    check_default_config(daemon)?;
    let binary = std::fs::read(daemon).with_context(|| format!("reading {}", daemon.display()))?;
    let object = embedded_object(&binary)
        .with_context(|| format!("no eBPF object found inside {}", daemon.display()))?;

    let mut lab = Lab::build(PREFIX, object)?;
    println!(
        "demo: built namespaces {PREFIX}{{sw,lb,client,{}}} on one bridge (br0 in {PREFIX}sw)",
        SERVERS.map(|s| s.name).join(","),
    );
    let len = netns::PREFIX_LEN;
    println!("      lb      {LB_IF} {LB_ADDR}/{len}, VIP {VIP} on lo, xdp_pass on its bridge port");
    println!("      client  eth0 {CLIENT_ADDR}/{len}");
    for s in &SERVERS {
        println!(
            "      {:<7} eth0 {}/{len} {}, VIP on lo, xdp_decap, nginx (weight {})",
            s.name, s.addr, s.mac, s.weight
        );
    }
    let mode = lab.start_daemon(daemon, &[])?;
    println!("demo: lb-daemon (embedded default config) attached xdp_lb to {LB_IF} ({mode})");

    let url = format!("http://{VIP}:{VIP_PORT}/");
    let mut tally: BTreeMap<String, u32> = SERVERS.iter().map(|s| (s.name.to_owned(), 0)).collect();
    let mut failures = Vec::new();
    for i in 1..=requests {
        // One curl, one connection, a fresh source port.
        let (status, body) = lab.request(&url)?;
        match tally.get_mut(&body) {
            Some(n) if status.success() => *n += 1,
            _ => failures.push(format!("request {i}: curl {status} body {body:?}")),
        }
    }

    println!("demo: {requests} requests from the client to {url}, answered by:");
    let max = tally.values().copied().max().unwrap_or(1).max(1);
    let weights: u32 = SERVERS.iter().map(|s| s.weight).sum();
    for s in &SERVERS {
        let n = tally[s.name];
        let bar = "#".repeat((n * 40).div_ceil(max) as usize);
        println!(
            "      {} (weight {}, {:>2}% expected) {n:>5} {:>3}%  {bar}",
            s.name,
            s.weight,
            s.weight * 100 / weights,
            n * 100 / requests
        );
    }
    for f in failures.iter().take(5) {
        println!("      FAILED {f}");
    }
    if failures.len() > 5 {
        println!("      … and {} more failures", failures.len() - 5);
    }

    let table = lab.stop_daemon()?;
    println!("demo: lb-daemon's counters after SIGTERM:");
    print!("{table}");
    lab.cleanup()?;
    println!("demo: removed the {PREFIX}* namespaces");

    if !failures.is_empty() {
        bail!("{} of {requests} requests failed", failures.len());
    }
    let silent: Vec<&str> = SERVERS
        .iter()
        .filter(|s| tally[s.name] == 0)
        .map(|s| s.name)
        .collect();
    if !silent.is_empty() {
        bail!("never answered: {}", silent.join(", "));
    }
    Ok(())
}

/// The demo topology is hard-coded in netns.rs; make sure it is still the one the
/// daemon embeds.
fn check_default_config(daemon: &Path) -> Result<()> {
    let text = netns::cmd(Command::new(daemon).arg("--print-default-config"))?;
    let mut expected = vec![
        format!("\"{LB_IF}\""),
        format!("\"{LB_ADDR}\""),
        format!("\"{VIP}\""),
    ];
    for s in &SERVERS {
        expected.push(format!("\"{}\"", s.addr));
        expected.push(format!("\"{}\"", s.mac));
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !text.contains(e.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "lb-daemon's default configuration no longer matches the demo topology in \
             xtask/src/netns.rs (missing {missing:?})"
        );
    }
    Ok(())
}

/// The XDP object the daemon embeds (aya::include_bytes_aligned!): the relocatable
/// eBPF ELF inside the binary, up to the end of its section header table.
fn embedded_object(binary: &[u8]) -> Option<&[u8]> {
    const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01"; // 64-bit, little endian, version 1
    const ET_REL: u16 = 1;
    const EM_BPF: u16 = 247;
    let u16_at = |h: &[u8], o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let mut from = 0;
    while let Some(pos) = binary[from..].windows(MAGIC.len()).position(|w| w == MAGIC) {
        let h = &binary[from + pos..];
        from += pos + 1;
        if h.len() < 64 || u16_at(h, 0x10) != ET_REL || u16_at(h, 0x12) != EM_BPF {
            continue;
        }
        let shoff = u64::from_le_bytes(h[0x28..0x30].try_into().ok()?) as usize;
        let end = shoff + u16_at(h, 0x3a) as usize * u16_at(h, 0x3c) as usize;
        if end <= h.len() {
            return Some(&h[..end]);
        }
    }
    None
}
