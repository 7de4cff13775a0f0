//! The running daemon: the data plane, the projector and the desired state behind one
//! lock; every change goes through `Runtime::replace_state`, which validates the whole
//! new state before touching a map and persists it after.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::{
    FlowKey, Reason, SCHED_RR, SCHED_SH, SCHED_WRR,
    hash::{flow_hash, slot, src_hash},
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    bpf_maps::DataPlane,
    config::Config,
    loader,
    persist::{self, Saved},
    state::{Proto, State},
    sync::{ApplyReport, Projector, addr_bytes},
};

pub struct Runtime {
    pub dp: DataPlane,
    pub proj: Projector,
    pub state: State,
    pub generation: u64,
    pub cfg: Config,
    pub state_file: PathBuf,
    pub attached: Vec<(String, String)>,
    /// Whether the maps were adopted from a previous daemon.
    pub adopted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("state changed meanwhile: generation is {current}, the change was made against {sent}")]
    Conflict { current: u64, sent: u64 },
    #[error("{0:#}")]
    Invalid(anyhow::Error),
}

impl Runtime {
    /// Loads (or adopts) the data plane and brings it to the running state: the state
    /// file if there is one, else the configuration's services.
    pub fn start(cfg: Config, state_file: PathBuf, pin: bool) -> Result<Self> {
        let pin_dir = cfg.pin_dir();
        let adopted = pin && pin_dir.join(lb_common::map_names::VIPS).exists();
        let ebpf = loader::load(&cfg.capacity, pin.then_some(&pin_dir))
            .context("loading the data plane (if the pinned maps have other capacities, unload first: lbctl shutdown --unload)")?;
        let mut dp = DataPlane::new(ebpf, cfg.capacity.clone())?;
        let saved = persist::load(&state_file)?;
        let cap = &cfg.capacity;
        let (mut proj, state, generation) = match (&saved, adopted) {
            (Some(s), true) => {
                info!(
                    generation = s.generation,
                    "adopting pinned maps and the running state"
                );
                let proj = Projector::adopt(
                    cap.max_vips,
                    cap.max_backends,
                    cap.ring_size,
                    &s.state,
                    &s.alloc,
                )?;
                (proj, s.state.clone(), s.generation)
            }
            (Some(s), false) => (
                Projector::new(cap.max_vips, cap.max_backends, cap.ring_size),
                s.state.clone(),
                s.generation,
            ),
            (None, _) => (
                Projector::new(cap.max_vips, cap.max_backends, cap.ring_size),
                cfg.state.clone(),
                0,
            ),
        };
        if !adopted {
            let mut ctrl = dp.ctrl()?;
            ctrl.ring_size = cap.ring_size;
            ctrl.conn_timeout_secs = cfg.daemon.conn_timeout;
            dp.set_ctrl(&ctrl)?;
        }
        let report = proj
            .apply(&mut dp, &state)
            .context("applying the running state")?;
        info!(?report, "state applied");
        let rt = Runtime {
            dp,
            proj,
            state,
            generation,
            cfg,
            state_file,
            attached: Vec::new(),
            adopted,
        };
        rt.persist()?;
        Ok(rt)
    }

    fn persist(&self) -> Result<()> {
        persist::save(
            &self.state_file,
            &Saved {
                generation: self.generation,
                state: self.state.clone(),
                alloc: self.proj.alloc(),
            },
        )
    }

    /// Attaches xdp_lb to every configured interface. With pinning, the link is pinned
    /// (forwarding survives the daemon) and an existing pinned link is taken over by
    /// swapping the program atomically (bpf_link_update): no packet is left unhandled.
    pub fn attach(&mut self, pin: bool) -> Result<()> {
        for ifname in self.cfg.daemon.interfaces.clone() {
            let link_pin = self.cfg.pin_dir().join(format!("link_{ifname}"));
            let mode = if pin && link_pin.exists() {
                let old = PinnedLink::from_pin(&link_pin)
                    .with_context(|| format!("opening {}", link_pin.display()))?
                    .unpin()?;
                let xdp_link = XdpLink::try_from(old).context("pinned link is not an XDP link")?;
                let prog = self.dp.program("xdp_lb")?;
                let id = prog.attach_to_link(xdp_link)?;
                let fd: FdLink = prog.take_link(id)?.try_into()?;
                fd.pin(&link_pin)?;
                "adopted".to_string()
            } else {
                let (mode, id) = self.dp.attach("xdp_lb", &ifname)?;
                if pin {
                    let prog = self.dp.program("xdp_lb")?;
                    let fd: FdLink = prog.take_link(id)?.try_into()?;
                    fd.pin(&link_pin)?;
                }
                mode.to_string()
            };
            info!(interface = %ifname, %mode, "xdp_lb attached");
            self.attached.push((ifname, mode));
        }
        if self.cfg.daemon.interfaces.is_empty() {
            warn!("no interface configured: the data plane is loaded but sees no traffic");
        }
        Ok(())
    }

    /// Detaches from every interface and removes the pins: the data plane is gone.
    pub fn unload(&mut self) -> Result<()> {
        let dir = self.cfg.pin_dir();
        for (ifname, _) in &self.attached {
            let p = dir.join(format!("link_{ifname}"));
            if p.exists() {
                drop(PinnedLink::from_pin(&p)?.unpin()?);
            }
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// Replaces the desired state if `generation` is current: validated whole, applied to
    /// the maps, persisted; on any error nothing has changed.
    pub fn replace_state(
        &mut self,
        generation: u64,
        new: State,
    ) -> Result<ApplyReport, ChangeError> {
        if generation != self.generation {
            return Err(ChangeError::Conflict {
                current: self.generation,
                sent: generation,
            });
        }
        new.validate(self.cfg.capacity.max_vips, self.cfg.capacity.max_backends)
            .map_err(ChangeError::Invalid)?;
        let report = self
            .proj
            .apply(&mut self.dp, &new)
            .map_err(ChangeError::Invalid)?;
        self.state = new;
        self.generation += 1;
        self.persist().map_err(ChangeError::Invalid)?;
        Ok(report)
    }

    /// Which backend `client → vip` goes to, and why: the data plane's own decision
    /// recomputed with the same hash and table.
    pub fn route(&self, client: SocketAddr, vip: SocketAddr, proto: Proto) -> Result<RouteAnswer> {
        let (src, fam) = addr_bytes(client.ip());
        let (dst, fam2) = addr_bytes(vip.ip());
        if fam != fam2 {
            bail!("client and VIP are of different address families");
        }
        let flow = FlowKey {
            src,
            dst,
            sport: client.port().to_be(),
            dport: vip.port().to_be(),
            proto: proto.number(),
            family: fam,
            _pad: [0; 2],
        };
        let svc = self
            .state
            .services
            .iter()
            .find(|s| s.address == vip.ip() && s.proto == proto && s.port == vip.port())
            .or_else(|| {
                self.state
                    .services
                    .iter()
                    .find(|s| s.address == vip.ip() && s.proto == proto && s.port == 0)
            })
            .with_context(|| format!("{proto} {vip} is not a VIP"))?;
        let idx = self
            .proj
            .vip_idx(&svc.id())
            .context("service not installed")?;
        let name_of = |id: u32| {
            svc.backends
                .iter()
                .find(|r| self.proj.backend_id(&svc.id(), r.address) == Some(id))
                .map(|r| r.address)
        };
        if let Some(c) = self.dp.conn(&flow) {
            if let Some(a) = name_of(c.backend) {
                return Ok(RouteAnswer {
                    backend: Some(a),
                    why: "connection table entry".into(),
                });
            }
        }
        let ring = self.cfg.capacity.ring_size;
        let table = self.dp.table(idx);
        let sched = svc.scheduler.code();
        if sched == SCHED_RR || sched == SCHED_WRR {
            return Ok(RouteAnswer {
                backend: None,
                why: "new flow: next backend in the rr/wrr sequence (per CPU), not predictable"
                    .into(),
            });
        }
        let (h, what) = if sched == SCHED_SH {
            (src_hash(&flow.src), "source hash")
        } else {
            (flow_hash(&flow), "5-tuple hash")
        };
        let s = slot(h, ring);
        let id = table[s as usize];
        let mut why = format!("new flow: Maglev slot {s} of {ring} ({what})");
        if svc.persistence > 0 {
            why.push_str("; a persistence template for this client, if any, takes precedence");
        }
        Ok(RouteAnswer {
            backend: name_of(id),
            why,
        })
    }

    /// The connection table, with ids resolved to addresses.
    pub fn conns(&self) -> Vec<ConnEntry> {
        let mut by_id = std::collections::HashMap::new();
        for svc in &self.state.services {
            for r in &svc.backends {
                if let Some(id) = self.proj.backend_id(&svc.id(), r.address) {
                    by_id.insert(id, r.address);
                }
            }
        }
        let now = coarse_now_ns();
        let mut out: Vec<ConnEntry> = self
            .dp
            .conns()
            .into_iter()
            .map(|(k, c)| ConnEntry {
                proto: if k.proto == lb_common::PROTO_TCP { "tcp" } else { "udp" }.into(),
                client: SocketAddr::new(ip_of(&k.src, k.family), u16::from_be(k.sport)),
                vip: SocketAddr::new(ip_of(&k.dst, k.family), u16::from_be(k.dport)),
                backend: by_id.get(&c.backend).copied(),
                backend_id: c.backend,
                established: c.flags & lb_common::CONN_F_ACK_SEEN != 0,
                idle_secs: now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
            })
            .collect();
        out.sort_by_key(|e| (e.vip, e.client));
        out
    }

    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        self.dp.reason_counts()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnEntry {
    pub proto: String,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    /// The client's ACK was seen (handshake done, as far as the LB can tell).
    pub established: bool,
    pub idle_secs: u64,
}

fn ip_of(a: &[u8; 16], family: u8) -> IpAddr {
    if family == lb_common::FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

/// CLOCK_MONOTONIC_COARSE, the clock behind bpf_ktime_get_coarse_ns.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, Serialize)]
pub struct RouteAnswer {
    pub backend: Option<IpAddr>,
    pub why: String,
}
