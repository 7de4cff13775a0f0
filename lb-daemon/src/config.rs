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
    /// API unix socket (root only); default /run/lb/<instance>.sock.
    pub socket: Option<PathBuf>,
    /// The running state, persisted on every change; default /var/lib/lb/<instance>.state.json.
    pub state_file: Option<PathBuf>,
    /// Optional TCP listener for the API ("127.0.0.1:9180"); needs `api_token_file`.
    pub api_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    pub api_token_file: Option<PathBuf>,
    /// Source addresses allowed on the TCP listener (empty: any).
    pub api_allow: Vec<std::net::IpAddr>,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Prometheus exporter and live stats page ("127.0.0.1:9469"): `/metrics`, `/stats`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds between two walks of the connection table for the exporter's
    /// active/inactive counts (the table can hold millions of entries).
    pub metrics_conn_interval: u32,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            interfaces: Vec::new(),
            instance: "lb".into(),
            conn_timeout: 900,
            socket: None,
            state_file: None,
            api_listen: None,
            api_token_file: None,
            api_allow: Vec::new(),
            log_json: false,
            metrics_listen: None,
            metrics_conn_interval: 5,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ConfigFile")]
pub struct Config {
    pub daemon: Daemon,
    pub capacity: Capacity,
    #[serde(flatten)]
    pub state: State,
}

/// The file's shape, spelled out instead of `flatten`ed so that an unknown key is
/// reported at its own line, not at the top of the file.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    daemon: Daemon,
    capacity: Capacity,
    tunnel: crate::state::Tunnel,
    service: Vec<crate::state::Service>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        let c = Config::default();
        ConfigFile {
            daemon: c.daemon,
            capacity: c.capacity,
            tunnel: c.state.tunnel,
            service: c.state.services,
        }
    }
}

impl From<ConfigFile> for Config {
    fn from(f: ConfigFile) -> Self {
        Config {
            daemon: f.daemon,
            capacity: f.capacity,
            state: State {
                tunnel: f.tunnel,
                services: f.service,
            },
        }
    }
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let c: Config =
            toml::from_str(text).with_context(|| format!("{origin}: invalid configuration"))?;
        c.validate()
            .with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<()> {
        self.capacity.validate()?;
        if self.daemon.instance.is_empty()
            || !self
                .daemon
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "daemon.instance: {:?} must be non-empty [A-Za-z0-9_-]",
                self.daemon.instance
            );
        }
        if self.daemon.api_listen.is_some() && self.daemon.api_token_file.is_none() {
            bail!("daemon.api_listen: a TCP listener needs daemon.api_token_file (bearer token)");
        }
        if self.daemon.metrics_conn_interval == 0 {
            bail!("daemon.metrics_conn_interval: must be at least 1 second");
        }
        if self.daemon.conn_timeout == 0 {
            bail!("daemon.conn_timeout: must be at least 1 second");
        }
        self.state
            .validate(self.capacity.max_vips, self.capacity.max_backends)
    }

    pub fn socket(&self) -> PathBuf {
        self.daemon
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/lb/{}.sock", self.daemon.instance)))
    }

    pub fn state_file(&self) -> PathBuf {
        self.daemon.state_file.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/var/lib/lb/{}.state.json", self.daemon.instance))
        })
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.daemon.instance)
    }
}
