//! The daemon's configuration file: daemon settings, capacities and the desired state.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{loader::Capacity, state::State};

/// The embedded default: the demo topology built by `cargo xtask demo`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    /// Interfaces to attach xdp_lb to.
    pub interfaces: Vec<String>,
    /// Pins live under /sys/fs/bpf/<instance>/.
    pub instance: String,
    /// Idle seconds after which a connection entry stops pinning its backend.
    pub conn_timeout: u32,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon { interfaces: Vec::new(), instance: "lb".into(), conn_timeout: 900 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: Daemon,
    pub capacity: Capacity,
    #[serde(flatten)]
    pub state: State,
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let c: Config = toml::from_str(text).with_context(|| format!("{origin}: invalid configuration"))?;
        c.validate().with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<()> {
        self.capacity.validate()?;
        if self.daemon.instance.is_empty()
            || !self.daemon.instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("daemon.instance: {:?} must be non-empty [A-Za-z0-9_-]", self.daemon.instance);
        }
        if self.daemon.conn_timeout == 0 {
            bail!("daemon.conn_timeout: must be at least 1 second");
        }
        self.state.validate(self.capacity.max_vips, self.capacity.max_backends)
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.daemon.instance)
    }
}
