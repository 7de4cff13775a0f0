//! Loading the embedded XDP object with the capacities the operator chose.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    DEFAULT_CONNS, DEFAULT_FRAGS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_PERSIST,
    DEFAULT_RING_SIZE, maglev::is_prime, map_names as m,
};

use crate::EBPF_OBJECT;

/// Capacities fixed at load time (BPF maps cannot grow).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacity {
    pub max_vips: u32,
    pub max_backends: u32,
    pub ring_size: u32,
    pub conn_table: u32,
    pub persist_table: u32,
    pub frag_table: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            ring_size: DEFAULT_RING_SIZE,
            conn_table: DEFAULT_CONNS,
            persist_table: DEFAULT_PERSIST,
            frag_table: DEFAULT_FRAGS,
        }
    }
}

impl Capacity {
    /// Small tables for tests and benchmarks: loads in milliseconds.
    pub fn small() -> Self {
        Capacity {
            max_vips: 16,
            max_backends: 256,
            conn_table: 65536,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !is_prime(self.ring_size) || self.ring_size < 7 {
            bail!("capacity.ring_size: {} is not a prime ≥ 7", self.ring_size);
        }
        if self.max_vips == 0 || self.max_backends < 2 {
            bail!("capacity: max_vips must be ≥ 1 and max_backends ≥ 2");
        }
        if (self.max_vips as u64) * (self.ring_size as u64) > u32::MAX as u64 / 2 {
            bail!("capacity: max_vips × ring_size is too large for one lookup array");
        }
        for (name, v) in [
            ("conn_table", self.conn_table),
            ("persist_table", self.persist_table),
            ("frag_table", self.frag_table),
        ] {
            if v < 16 {
                bail!("capacity.{name}: {v} is below the minimum of 16");
            }
        }
        Ok(())
    }
}

/// MAGLEV holds two u32 slots per element.
pub fn maglev_elements(cap: &Capacity) -> u32 {
    (cap.max_vips * cap.ring_size).div_ceil(2)
}

/// Loads the programs and creates (or, with `pin_dir`, adopts) the maps.
pub fn load(cap: &Capacity, pin_dir: Option<&PathBuf>) -> Result<Ebpf> {
    cap.validate()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(m::VIPS, cap.max_vips * 2)
        .map_max_entries(m::MAGLEV, maglev_elements(cap))
        .map_max_entries(m::BACKENDS, cap.max_backends)
        .map_max_entries(m::CONNS, cap.conn_table)
        .map_max_entries(m::PERSIST, cap.persist_table)
        .map_max_entries(m::FRAGS, cap.frag_table)
        .map_max_entries(m::RR_STATE, cap.max_vips)
        .map_max_entries(m::VIP_STATS, cap.max_vips)
        .map_max_entries(m::VIP_GEN, cap.max_vips)
        .map_max_entries(m::EVENT_RL, cap.max_backends)
        .map_max_entries(m::BACKEND_STATS, cap.max_backends);
    let pins: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            m::ALL.iter().map(|n| (*n, dir.join(n))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(EBPF_OBJECT).context("loading the XDP object")
}
