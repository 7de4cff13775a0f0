//! The running daemon: the data plane, the projector and the desired state behind one
//! lock; every change goes through `Runtime::replace_state`, which validates the whole
//! new state before touching a map and persists it after.
//!
//! Next to the desired state the runtime keeps what it learnt from the kernel
//! ([`Learned`]: each MAC-less real server's path and next-hop MAC, the default tunnel
//! sources). [`follow_kernel`] feeds it the netlink watcher's changes; when they
//! change what is installed, the same projection re-applies (only the affected
//! backend entries, and slots when a real server enters or leaves its table).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
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
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{
    api::Shared,
    bpf_maps::DataPlane,
    config::Config,
    loader,
    netlink::{self, Event, Interface, Netlink},
    persist::{self, Saved},
    state::{Proto, State},
    sync::{ApplyReport, Learned, PathInfo, Projector, Unresolved, addr_bytes, effective_state},
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
    /// What the kernel told us: paths and MACs of the MAC-less real servers, tunnel
    /// source defaults. Part of what is installed, not of the desired state.
    pub learned: Learned,
    /// All interfaces with their MACs and addresses, as last seen.
    pub interfaces: Vec<Interface>,
    /// The addresses the netlink watcher follows (set by [`follow_kernel`]).
    pub tracked: Option<watch::Sender<BTreeSet<IpAddr>>>,
    /// Backend health (checks, passive reports, state machines): what is installed is
    /// the running state through [`crate::health::Health::effective`].
    pub health: crate::health::Health,
    /// Times a real server was left out for want of a MAC (each time it became
    /// unresolved, or its reason changed), for the exporter.
    pub mac_failures: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("state changed meanwhile: generation is {current}, the change was made against {sent}")]
    Conflict { current: u64, sent: u64 },
    #[error("{0:#}")]
    Invalid(anyhow::Error),
}

impl Runtime {
    /// The state the daemon will run: the state file's if there is one, else the
    /// configuration's.
    pub fn running_state(cfg: &Config, state_file: &Path) -> Result<State> {
        Ok(match persist::load(state_file)? {
            Some(s) => s.state,
            None => cfg.state.clone(),
        })
    }

    /// Loads (or adopts) the data plane and brings it to the running state: the state
    /// file if there is one, else the configuration's services, with the MACs and
    /// defaults in `learned` (see [`learn_initial`]).
    pub fn start(cfg: Config, state_file: PathBuf, pin: bool, learned: Learned) -> Result<Self> {
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
        let health = crate::health::Health::new();
        health.configure(&state);
        let report = proj
            .apply_learned(&mut dp, &health.effective(&state), &learned)
            .context("applying the running state")?;
        info!(?report, "state applied");
        let mac_failures = log_resolution(&[], proj.unresolved());
        let rt = Runtime {
            dp,
            proj,
            state,
            generation,
            cfg,
            state_file,
            attached: Vec::new(),
            adopted,
            learned,
            interfaces: Vec::new(),
            tracked: None,
            health,
            mac_failures,
        };
        rt.persist()?;
        Ok(rt)
    }

    /// The real servers whose MAC comes from the kernel: those without one configured.
    pub fn tracked_addresses(state: &State) -> BTreeSet<IpAddr> {
        state
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|r| r.mac.is_none())
            .map(|r| r.address)
            .collect()
    }

    /// MAC-less real servers of `state` whose path is not known yet.
    pub fn unknown_paths(&self, state: &State) -> Vec<IpAddr> {
        Self::tracked_addresses(state)
            .into_iter()
            .filter(|a| !self.learned.paths.contains_key(a))
            .collect()
    }

    /// Paths resolved ahead of a state change (see `PUT /v1/state`); known ones stay.
    pub fn add_paths(&mut self, paths: impl IntoIterator<Item = (IpAddr, PathInfo)>) {
        for (a, p) in paths {
            self.learned.paths.entry(a).or_insert(p);
        }
    }

    /// Takes in what the netlink watcher saw; re-applies the running state if that
    /// changes what is installed (a MAC appeared, changed or failed; a route moved; a
    /// default tunnel source changed). Returns the report of that apply, if any.
    pub fn learn(&mut self, events: Vec<Event>) -> Result<Option<ApplyReport>> {
        let tracked = Self::tracked_addresses(&self.state);
        let mut learned = self.learned.clone();
        for e in events {
            match e {
                Event::Path(a, p) if tracked.contains(&a) => {
                    let old = learned.paths.get(&a).and_then(|o| o.mac);
                    match (old, p.mac) {
                        (Some(o), Some(n)) if o != n => {
                            info!(real = %a, next_hop = %p.next_hop, old = %o, new = %n, "next-hop MAC changed");
                        }
                        _ => {}
                    }
                    learned.paths.insert(a, p);
                }
                Event::Path(..) => {}
                Event::Interfaces(list) => {
                    (learned.source_v4, learned.source_v6) =
                        default_sources(&self.cfg.daemon.interfaces, &list);
                    self.interfaces = list;
                }
            }
        }
        let before = effective_state(&self.state, &self.learned);
        let after = effective_state(&self.state, &learned);
        self.learned = learned;
        if before == after {
            return Ok(None);
        }
        // Something to install, or only the reasons of the unresolved (for the status).
        self.reapply().map(Some)
    }

    /// Applies the running state again with what was learnt; persists the allocation
    /// if a real server entered or left.
    fn reapply(&mut self) -> Result<ApplyReport> {
        let before = self.proj.unresolved().to_vec();
        let alloc = self.proj.alloc();
        let report = self
            .proj
            .apply_learned(
                &mut self.dp,
                &self.health.effective(&self.state),
                &self.learned,
            )
            .context("re-applying the running state after a kernel change")?;
        self.mac_failures += log_resolution(&before, self.proj.unresolved());
        if report.services_changed > 0 {
            info!(
                ?report,
                "state re-applied after a neighbour, route or interface change"
            );
        }
        if self.proj.alloc() != alloc {
            self.persist()?;
        }
        Ok(report)
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
        let before = self.proj.unresolved().to_vec();
        let report = self
            .proj
            .apply_learned(&mut self.dp, &self.health.effective(&new), &self.learned)
            .map_err(ChangeError::Invalid)?;
        self.mac_failures += log_resolution(&before, self.proj.unresolved());
        self.state = new;
        self.health.configure(&self.state);
        self.generation += 1;
        let tracked = Self::tracked_addresses(&self.state);
        self.learned.paths.retain(|a, _| tracked.contains(a));
        if let Some(t) = &self.tracked {
            t.send_replace(tracked);
        }
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
        if let Some(c) = self.dp.conn(&flow)
            && let Some(a) = name_of(c.backend)
        {
            return Ok(RouteAnswer {
                backend: Some(a),
                why: "connection table entry".into(),
            });
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
        let now = crate::clock::now_ns();
        let timeout = u64::from(self.cfg.daemon.conn_timeout);
        let mut out: Vec<ConnEntry> = self
            .dp
            .conns()
            .into_iter()
            .map(|(k, c)| ConnEntry {
                proto: if k.proto == lb_common::PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                }
                .into(),
                client: SocketAddr::new(
                    crate::sync::ip_from_bytes(&k.src, k.family),
                    u16::from_be(k.sport),
                ),
                vip: SocketAddr::new(
                    crate::sync::ip_from_bytes(&k.dst, k.family),
                    u16::from_be(k.dport),
                ),
                backend: by_id.get(&c.backend).copied(),
                backend_id: c.backend,
                established: c.is_active(),
                state: c.state(k.proto),
                idle_secs: now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
                expires_secs: c
                    .timeout_secs(timeout)
                    .saturating_sub(now.saturating_sub(c.last_seen_ns) / 1_000_000_000),
            })
            .collect();
        out.sort_by_key(|e| (e.vip, e.client));
        out
    }

    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        self.dp.reason_counts()
    }
}

/// Logs real servers that became unresolved (a warning with the reason) and those that
/// were resolved since `before`; returns how many became unresolved (or changed reason).
fn log_resolution(before: &[Unresolved], after: &[Unresolved]) -> u64 {
    let key = |u: &Unresolved| (u.service, u.address);
    let mut failures = 0;
    for u in after {
        if !before
            .iter()
            .any(|b| key(b) == key(u) && b.reason == u.reason)
        {
            failures += 1;
            warn!(service = %u.service, real = %u.address, reason = %u.reason,
                "real server left out: no MAC to forward to");
        }
    }
    for b in before {
        if !after.iter().any(|u| key(u) == key(b)) {
            info!(service = %b.service, real = %b.address, "real server resolved: forwarding to it");
        }
    }
    failures
}

/// Default outer tunnel sources: the first global address of each family on the
/// configured interfaces, in their order.
pub fn default_sources(
    configured: &[String],
    interfaces: &[Interface],
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let (mut v4, mut v6) = (None, None);
    for name in configured {
        let Some(i) = interfaces.iter().find(|i| &i.name == name) else {
            continue;
        };
        for a in i.addresses.iter().filter(|a| a.global) {
            match a.addr {
                IpAddr::V4(x) => {
                    v4.get_or_insert(x);
                }
                IpAddr::V6(x) => {
                    v6.get_or_insert(x);
                }
            }
        }
    }
    (v4, v6)
}

/// Before the runtime starts: connects to rtnetlink and learns the interfaces and the
/// paths (resolving MACs, at most [`netlink::RESOLVE_WAIT`]) of the MAC-less real
/// servers of `state`. Without netlink, those are unresolved and the rest runs.
pub async fn learn_initial(
    cfg: &Config,
    state: &State,
) -> (Option<Netlink>, Learned, Vec<Interface>) {
    let addrs = Runtime::tracked_addresses(state);
    let nl = match Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => {
            let why = format!("{e:#}");
            warn!(error = %why, "no rtnetlink: real servers without a configured MAC stay unresolved");
            let paths = addrs
                .into_iter()
                .map(|a| (a, PathInfo::failed(a, format!("no rtnetlink: {why}"))))
                .collect();
            return (
                None,
                Learned {
                    paths,
                    ..Learned::default()
                },
                Vec::new(),
            );
        }
    };
    let interfaces = nl.interfaces().await.unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "listing interfaces");
        Vec::new()
    });
    let (source_v4, source_v6) = default_sources(&cfg.daemon.interfaces, &interfaces);
    let paths = nl.paths(addrs, netlink::RESOLVE_WAIT).await;
    for (a, p) in &paths {
        if !p.interface.is_empty()
            && !cfg.daemon.interfaces.is_empty()
            && !cfg.daemon.interfaces.contains(&p.interface)
        {
            warn!(real = %a, interface = %p.interface,
                "the route to this real server leaves through an interface xdp_lb is not attached to");
        }
    }
    let learned = Learned {
        paths,
        source_v4,
        source_v6,
    };
    (Some(nl), learned, interfaces)
}

/// Follows the kernel for the running daemon: starts the netlink watcher on the
/// tracked addresses and a task that hands its events to [`Runtime::learn`].
pub async fn follow_kernel(shared: Arc<Shared>) {
    let Some(nl) = shared.netlink.clone() else {
        return;
    };
    let rx = {
        let mut rt = shared.rt.lock().await;
        let (tx, rx) = watch::channel(Runtime::tracked_addresses(&rt.state));
        rt.tracked = Some(tx);
        rx
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    if let Err(e) = netlink::Watcher::spawn(nl, rx, tx) {
        warn!(error = %format!("{e:#}"), "not following neighbour and route changes");
        return;
    }
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let mut batch = vec![e];
            while let Ok(e) = events.try_recv() {
                batch.push(e);
            }
            let mut rt = shared.rt.lock().await;
            if let Err(e) = rt.learn(batch) {
                error!(error = %format!("{e:#}"), "applying a neighbour or route change");
            }
        }
    });
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnEntry {
    pub proto: String,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    /// ESTABLISHED: the client's ACK was seen (handshake done, as far as the LB can
    /// tell) and no FIN or RST since.
    pub established: bool,
    /// ipvsadm -L -c's state: SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE (or UDP).
    pub state: &'static str,
    pub idle_secs: u64,
    /// Seconds until it stops pinning its flow (closing entries: at most 2 minutes).
    pub expires_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct RouteAnswer {
    pub backend: Option<IpAddr>,
    pub why: String,
}
