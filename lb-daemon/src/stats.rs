//! `ipvsadm -L -n --stats`-style tables from the per-CPU counters.

use std::fmt::Write as _;

use anyhow::Result;

use crate::{bpf_maps::DataPlane, state::State, sync::Projector};

/// ipvsadm's number formatting: every digit below 1e8 (or with `exact`), else scaled K/M/G/T.
pub fn scaled(n: u64, exact: bool) -> String {
    if exact || n < 100_000_000 {
        return n.to_string();
    }
    let units = [(1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')];
    for (div, u) in units {
        if (n as f64 >= div * 100.0 || u == 'K') && n as f64 >= div {
            return format!("{}{u}", (n as f64 / div) as u64);
        }
    }
    n.to_string()
}

fn addr_port(a: std::net::IpAddr, port: u16) -> String {
    match a {
        std::net::IpAddr::V4(v) => format!("{v}:{port}"),
        std::net::IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// The `--stats` table. Outgoing counters are 0: in DR and TUN mode replies bypass the LB.
pub fn stats_table(dp: &DataPlane, proj: &Projector, state: &State, exact: bool) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
    )?;
    writeln!(out, "  -> RemoteAddress:Port")?;
    for s in &state.services {
        let id = s.id();
        let Some(idx) = proj.vip_idx(&id) else {
            continue;
        };
        let c = dp.vip_counters(idx)?;
        let name = format!(
            "{}  {}",
            id.proto.to_string().to_uppercase(),
            addr_port(s.address, s.port)
        );
        writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
            name,
            scaled(c.new_conns, exact),
            scaled(c.packets, exact),
            0,
            scaled(c.bytes, exact),
            0
        )?;
        for r in &s.backends {
            let Some(bid) = proj.backend_id(&id, r.address) else {
                continue;
            };
            let b = dp.backend_counters(bid)?;
            let name = format!("  -> {}", addr_port(r.address, s.port));
            writeln!(
                out,
                "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
                name,
                scaled(b.new_conns, exact),
                scaled(b.packets, exact),
                0,
                scaled(b.bytes, exact),
                0
            )?;
        }
    }
    Ok(out)
}

/// Global counters by reason, one line each (`action reason count`), non-zero only.
pub fn reasons_table(dp: &DataPlane) -> Result<String> {
    let mut out = String::new();
    for (r, n) in dp.reason_counts()? {
        if n > 0 {
            writeln!(out, "{:<5} {:<22} {n}", r.action(), r.label())?;
        }
    }
    Ok(out)
}

/// The API's view of the counters: per service and backend, plus counters by reason.
/// Active/inactive connections come from the connection table: ESTABLISHED entries
/// (client ACK seen, no FIN or RST since) are active, any other inactive, as in IPVS.
pub fn stats_view(rt: &crate::runtime::Runtime) -> Result<lb_common::ops::StatsView> {
    use std::collections::HashMap;

    use lb_common::ops::{BackendStats, ServiceStats, StatsView};
    let mut active: HashMap<u32, (u64, u64)> = HashMap::new();
    for (_, c) in rt.dp.conns() {
        let e = active.entry(c.backend).or_default();
        if c.is_active() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let mut services = Vec::new();
    for s in &rt.state.services {
        let id = s.id();
        let Some(idx) = rt.proj.vip_idx(&id) else {
            continue;
        };
        let c = rt.dp.vip_counters(idx)?;
        let mut backends = Vec::new();
        for r in &s.backends {
            let Some(bid) = rt.proj.backend_id(&id, r.address) else {
                continue;
            };
            let b = rt.dp.backend_counters(bid)?;
            let (a, i) = active.get(&bid).copied().unwrap_or_default();
            backends.push(BackendStats {
                address: r.address,
                forward: r.forward,
                weight: r.weight,
                conns: b.new_conns,
                inpkts: b.packets,
                inbytes: b.bytes,
                active_conns: a,
                inactive_conns: i,
            });
        }
        services.push(ServiceStats {
            id,
            scheduler: s.scheduler,
            persistence: s.persistence,
            conns: c.new_conns,
            inpkts: c.packets,
            inbytes: c.bytes,
            backends,
        });
    }
    let reasons = rt
        .dp
        .reason_counts()?
        .into_iter()
        .map(|(r, n)| (r.action().to_string(), r.label().to_string(), n))
        .collect();
    Ok(StatsView { services, reasons })
}
