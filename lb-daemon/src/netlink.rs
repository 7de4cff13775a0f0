//! The kernel's view of the network, over rtnetlink: the interfaces' MACs and
//! addresses, the route to each real server (its next hop: the route's gateway, else
//! the server itself), and the next hop's MAC from the neighbour table.
//!
//! Resolution uses the kernel's own ARP/ND: a missing, failed or stale entry is handed
//! back to the kernel with `NTF_USE` (`RTM_NEWNEIGH`), which makes it solicit the
//! address as if a packet were waiting for it (a UDP datagram to the discard port is
//! the fallback when the kernel refuses that). Nothing is ever guessed: a next hop is
//! resolved only by an entry in a usable state (`NUD_REACHABLE`, `STALE`, `DELAY`,
//! `PROBE`, `PERMANENT` or `NOARP`) that has a link-layer address.
//!
//! [`Watcher`] follows the changes: it listens to `RTNLGRP_NEIGH`, the route groups
//! and the link/address groups, and tells the runtime (as [`Event`]s) whenever a
//! tracked real server's next hop or its MAC appears, changes or fails. A MAC is
//! dropped only when the kernel could not confirm it after being asked to (an entry
//! deleted or failed without our asking is first re-solicited, so that
//! `ip neigh flush` does not take a live server out).

use std::{
    collections::{BTreeMap, BTreeSet, btree_map},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{StreamExt as _, TryStreamExt as _, future::join_all};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressScope},
        link::LinkAttribute,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    },
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{state::Mac, sync::PathInfo};

/// How long a resolution asked for at startup or by a state change may take. The
/// kernel gives up on an unanswered ARP/ND after 3 probes 1 s apart by default.
pub const RESOLVE_WAIT: Duration = Duration::from_millis(3500);
/// A next hop that could not be resolved is solicited again this often.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(5);
/// A resolved next hop's entry is looked at this often; a stale one is re-verified by
/// the kernel (unicast probes), so that a MAC that changed silently is found.
const REFRESH: Duration = Duration::from_secs(30);
/// A solicitation with no news after this long is looked at again.
const PENDING_CHECK: Duration = Duration::from_secs(1);
/// A next hop's entry that disappeared (or failed) without our asking is solicited
/// again after this pause.
const SETTLE: Duration = Duration::from_millis(200);
/// The watcher's clock: debounces route and interface changes, runs the checks.
const TICK: Duration = Duration::from_millis(250);

const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | NUD_NOARP | NUD_PERMANENT;
const NUD_STALE: u16 = 0x04;

/// An address of an interface, shown as `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
    /// Scope global (not link-local, not host).
    pub global: bool,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IfAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One network interface as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub addresses: Vec<IfAddr>,
}

/// The kernel's route to an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The route's gateway, else the address itself (on-link).
    pub addr: IpAddr,
    pub gateway: bool,
    /// Output interface.
    pub ifindex: u32,
    /// The route's preferred source address.
    pub source: Option<IpAddr>,
}

/// A neighbour table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// `NUD_*` bits.
    pub state: u16,
    pub mac: Option<Mac>,
}

impl Neighbour {
    fn from_msg(m: &NeighbourMessage) -> Self {
        let mac = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac_of(l),
            _ => None,
        });
        Neighbour {
            state: m.header.state.into(),
            mac,
        }
    }

    /// The MAC if the entry may be used as it is.
    pub fn usable_mac(&self) -> Option<Mac> {
        if self.state & NUD_USABLE != 0 {
            self.mac
        } else {
            None
        }
    }

    /// Static entries: never handed back to the kernel for resolution.
    fn fixed(&self) -> bool {
        self.state & (NUD_PERMANENT | NUD_NOARP) != 0
    }
}

fn mac_of(b: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(b).ok().map(Mac)
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// A netlink error as the errno text (`No route to host (os error 113)`).
fn nl_error(e: rtnetlink::Error) -> anyhow::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            std::io::Error::from_raw_os_error(-m.raw_code()).into()
        }
        e => anyhow!("{e}"),
    }
}

/// A connection to the kernel's routing netlink (requests and answers only).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket; its connection runs as a task of the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every interface with its MAC and addresses (RTM_GETLINK, RTM_GETADDR).
    pub async fn interfaces(&self) -> Result<Vec<Interface>> {
        let mut out: BTreeMap<u32, Interface> = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl_error)? {
            let mut i = Interface {
                index: l.header.index,
                name: String::new(),
                mac: None,
                addresses: Vec::new(),
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => i.name = n.clone(),
                    LinkAttribute::Address(b) => i.mac = mac_of(b),
                    _ => {}
                }
            }
            out.insert(i.index, i);
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(nl_error)? {
            // IFA_LOCAL is the local address (IFA_ADDRESS is the peer's on a
            // point-to-point link); IPv6 has only IFA_ADDRESS.
            let find = |local: bool| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) if local => Some(*ip),
                    AddressAttribute::Address(ip) if !local => Some(*ip),
                    _ => None,
                })
            };
            if let (Some(ip), Some(i)) = (find(true).or(find(false)), out.get_mut(&a.header.index))
            {
                i.addresses.push(IfAddr {
                    addr: ip,
                    prefix: a.header.prefix_len,
                    global: a.header.scope == AddressScope::Universe,
                });
            }
        }
        Ok(out.into_values().collect())
    }

    async fn ifname(&self, index: u32) -> String {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(l)) => l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The route the kernel would use towards `addr` (RTM_GETROUTE for it): its
    /// gateway if any, else `addr` itself (on-link), and the output interface.
    pub async fn next_hop(&self, addr: IpAddr) -> Result<NextHop> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(addr);
        msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(addr)));
        let mut routes = self.handle.route().get(msg).execute();
        let r = routes
            .try_next()
            .await
            .map_err(nl_error)
            .with_context(|| format!("no route to {addr}"))?
            .with_context(|| format!("no route to {addr}"))?;
        match r.header.kind {
            RouteType::Unicast => {}
            RouteType::Local => bail!("{addr} is an address of this host"),
            k => bail!("the route to {addr} is of type {k:?}"),
        }
        let (mut gateway, mut oif, mut source) = (None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(s) => source = route_ip(s),
                _ => {}
            }
        }
        Ok(NextHop {
            addr: gateway.unwrap_or(addr),
            gateway: gateway.is_some(),
            ifindex: oif.with_context(|| format!("the route to {addr} has no interface"))?,
            source,
        })
    }

    /// The neighbour table's entry for `addr` on interface `ifindex` (RTM_GETNEIGH).
    pub async fn neighbour(&self, addr: IpAddr, ifindex: u32) -> Result<Option<Neighbour>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(addr);
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                addr,
            )));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(m));
        req.header.flags = NLM_F_REQUEST;
        let mut h = self.handle.clone();
        let mut answers = h.request(req).map_err(nl_error)?;
        while let Some(msg) = answers.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    return Ok(Some(Neighbour::from_msg(&n)));
                }
                NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => return Ok(None),
                NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                    return Err(nl_error(rtnetlink::Error::NetlinkError(e)))
                        .with_context(|| format!("looking up the neighbour entry of {addr}"));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Makes the kernel resolve `addr` on `ifindex`: creates the entry if needed and
    /// triggers ARP/ND as a waiting packet would (NTF_USE). Falls back to a UDP
    /// datagram to the address's discard port, which makes the stack resolve it.
    pub async fn solicit(&self, addr: IpAddr, ifindex: u32) -> Result<()> {
        if let Err(e) = self.use_neighbour(addr, ifindex).await {
            debug!(%addr, error = %format!("{e:#}"), "NTF_USE refused; soliciting with a UDP datagram");
            let local: SocketAddr = match addr {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = UdpSocket::bind(local)?;
            s.connect((addr, 9))
                .with_context(|| format!("connecting a UDP socket to {addr}:9"))?;
            s.send(&[])
                .with_context(|| format!("sending to {addr}:9"))?;
        }
        Ok(())
    }

    /// `RTM_NEWNEIGH` with `NTF_USE` (create if missing, state left as it is): the
    /// kernel starts resolving the entry as for a packet waiting on it.
    async fn use_neighbour(&self, addr: IpAddr, ifindex: u32) -> Result<()> {
        self.handle
            .neighbours()
            .add(ifindex, addr)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(nl_error)
    }

    /// The MAC of next hop `hop` on `ifindex`, from the neighbour table, asking the
    /// kernel to resolve it when missing, failed or incomplete; waits at most `wait`.
    pub async fn resolve_hop(&self, hop: IpAddr, ifindex: u32, wait: Duration) -> Result<Mac> {
        let deadline = Instant::now() + wait;
        let mut solicited: Option<Instant> = None;
        loop {
            let n = self.neighbour(hop, ifindex).await?;
            if let Some(m) = n.and_then(|n| n.usable_mac()) {
                return Ok(m);
            }
            if n.is_some_and(|n| n.fixed()) {
                bail!("the neighbour entry of {hop} has no MAC");
            }
            let state = n.map(|n| n.state);
            match (state, solicited) {
                (Some(s), _) if s & NUD_INCOMPLETE != 0 => {}
                (Some(s), Some(t)) if s & NUD_FAILED != 0 && t.elapsed() > PENDING_CHECK => {
                    bail!("no ARP/ND answer from {hop}");
                }
                (Some(_), Some(_)) => {}
                (_, None) => {
                    self.solicit(hop, ifindex).await?;
                    solicited = Some(Instant::now());
                }
                (None, Some(t)) if t.elapsed() > PENDING_CHECK => {
                    self.solicit(hop, ifindex).await?;
                    solicited = Some(Instant::now());
                }
                (None, Some(_)) => {}
            }
            if Instant::now() >= deadline {
                bail!("no ARP/ND answer from {hop} within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The MAC packets to `addr` are sent to: its next hop's, resolved with
    /// [`Netlink::resolve_hop`]; None if it could not be resolved within `wait`.
    pub async fn resolve(&self, addr: IpAddr, wait: Duration) -> Option<Mac> {
        self.path(addr, wait).await.mac
    }

    /// The path to real server `addr`: next hop, interface and (waiting at most
    /// `wait`) the next hop's MAC, or why there is none.
    pub async fn path(&self, addr: IpAddr, wait: Duration) -> PathInfo {
        let nh = match self.next_hop(addr).await {
            Ok(n) => n,
            Err(e) => return PathInfo::failed(addr, format!("{e:#}")),
        };
        let mut p = PathInfo {
            next_hop: nh.addr,
            via_gateway: nh.gateway,
            ifindex: nh.ifindex,
            interface: self.ifname(nh.ifindex).await,
            mac: None,
            error: None,
        };
        match self.resolve_hop(nh.addr, nh.ifindex, wait).await {
            Ok(m) => p.mac = Some(m),
            Err(e) => p.error = Some(format!("{e:#}")),
        }
        p
    }

    /// [`Netlink::path`] for many addresses at once.
    pub async fn paths(
        &self,
        addrs: impl IntoIterator<Item = IpAddr>,
        wait: Duration,
    ) -> BTreeMap<IpAddr, PathInfo> {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        let found = join_all(addrs.iter().map(|a| self.path(*a, wait))).await;
        addrs.into_iter().zip(found).collect()
    }
}

/// What the watcher tells the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The path to a tracked real server, or its next hop's MAC, changed.
    Path(IpAddr, PathInfo),
    /// Interfaces or their addresses changed: all of them, as they are now.
    Interfaces(Vec<Interface>),
}

/// What the watcher knows of one next hop (address, interface).
#[derive(Debug)]
struct Hop {
    mac: Option<Mac>,
    error: Option<String>,
    /// A resolution we asked for, still without an outcome.
    solicited: Option<Instant>,
    /// Solicitations in a row that ended with the entry gone.
    attempts: u32,
    /// When to look at the entry again without an event.
    next_check: Instant,
}

impl Hop {
    fn new() -> Self {
        Hop {
            mac: None,
            error: None,
            solicited: None,
            attempts: 0,
            next_check: Instant::now(),
        }
    }
}

/// Follows the kernel for a set of real-server addresses (see the module doc).
pub struct Watcher {
    nl: Netlink,
    tracked: watch::Receiver<BTreeSet<IpAddr>>,
    out: mpsc::UnboundedSender<Event>,
    routes: BTreeMap<IpAddr, Result<NextHop, String>>,
    hops: BTreeMap<(IpAddr, u32), Hop>,
    ifnames: BTreeMap<u32, String>,
    sent: BTreeMap<IpAddr, PathInfo>,
    interfaces: Vec<Interface>,
}

impl Watcher {
    /// Subscribes to the neighbour, route, link and address groups and runs the
    /// watcher as a task: it tracks the addresses `tracked` holds (updated by the
    /// runtime when the state changes) and sends [`Event`]s on `out` until `out` is
    /// closed.
    pub fn spawn(
        nl: Netlink,
        tracked: watch::Receiver<BTreeSet<IpAddr>>,
        out: mpsc::UnboundedSender<Event>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let (conn, _, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .context("subscribing to rtnetlink neighbour and route changes")?;
        tokio::spawn(conn);
        let w = Watcher {
            nl,
            tracked,
            out,
            routes: BTreeMap::new(),
            hops: BTreeMap::new(),
            ifnames: BTreeMap::new(),
            sent: BTreeMap::new(),
            interfaces: Vec::new(),
        };
        Ok(tokio::spawn(w.run(messages)))
    }

    async fn run(
        mut self,
        mut messages: impl futures_util::Stream<
            Item = (
                NetlinkMessage<RouteNetlinkMessage>,
                rtnetlink::sys::SocketAddr,
            ),
        > + Unpin,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut routes_dirty, mut ifaces_dirty) = (false, true);
        let mut listening = true;
        self.retrack().await;
        // Whether anything was looked at since the last publish.
        let mut dirty = true;
        loop {
            tokio::select! {
                m = messages.next(), if listening => {
                    let Some((msg, _)) = m else {
                        warn!("rtnetlink notifications stopped: neighbours are only polled now");
                        listening = false;
                        continue;
                    };
                    match msg.payload {
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
                        ) => {
                            let dst = n.attributes.iter().find_map(|a| match a {
                                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                                _ => None,
                            });
                            if let Some(dst) = dst {
                                let key = (dst, n.header.ifindex);
                                if self.hops.contains_key(&key) {
                                    self.check(key).await;
                                    dirty = true;
                                }
                            }
                        }
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
                        ) => routes_dirty = true,
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewLink(_)
                            | RouteNetlinkMessage::DelLink(_)
                            | RouteNetlinkMessage::NewAddress(_)
                            | RouteNetlinkMessage::DelAddress(_),
                        ) => {
                            ifaces_dirty = true;
                            routes_dirty = true;
                        }
                        _ => {}
                    }
                }
                changed = self.tracked.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.retrack().await;
                    dirty = true;
                }
                _ = tick.tick() => {
                    if ifaces_dirty {
                        ifaces_dirty = false;
                        self.reload_interfaces().await;
                        dirty = true;
                    }
                    if routes_dirty {
                        routes_dirty = false;
                        self.reroute().await;
                        dirty = true;
                    }
                    let now = Instant::now();
                    let due: Vec<(IpAddr, u32)> = self
                        .hops
                        .iter()
                        .filter(|(_, h)| h.next_check <= now)
                        .map(|(k, _)| *k)
                        .collect();
                    for key in due {
                        self.check(key).await;
                        dirty = true;
                    }
                }
            }
            if dirty && !self.publish() {
                return;
            }
            dirty = false;
        }
    }

    async fn reload_interfaces(&mut self) {
        match self.nl.interfaces().await {
            Ok(list) => {
                self.ifnames = list.iter().map(|i| (i.index, i.name.clone())).collect();
                if list != self.interfaces {
                    self.interfaces = list.clone();
                    let _ = self.out.send(Event::Interfaces(list));
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "listing interfaces"),
        }
    }

    /// The tracked set changed: routes for new addresses, forget the others.
    async fn retrack(&mut self) {
        let tracked = self.tracked.borrow_and_update().clone();
        self.routes.retain(|a, _| tracked.contains(a));
        self.sent.retain(|a, _| tracked.contains(a));
        for a in tracked {
            if !self.routes.contains_key(&a) {
                let r = self.nl.next_hop(a).await.map_err(|e| format!("{e:#}"));
                self.routes.insert(a, r);
            }
        }
        self.sync_hops().await;
    }

    /// Routes changed: look every tracked address up again.
    async fn reroute(&mut self) {
        let addrs: Vec<IpAddr> = self.routes.keys().copied().collect();
        for a in addrs {
            let r = self.nl.next_hop(a).await.map_err(|e| format!("{e:#}"));
            self.routes.insert(a, r);
        }
        self.sync_hops().await;
    }

    /// One hop per distinct next hop of the tracked addresses; new ones are checked.
    async fn sync_hops(&mut self) {
        let wanted: BTreeSet<(IpAddr, u32)> = self
            .routes
            .values()
            .filter_map(|r| r.as_ref().ok().map(|n| (n.addr, n.ifindex)))
            .collect();
        self.hops.retain(|k, _| wanted.contains(k));
        for key in wanted {
            if let btree_map::Entry::Vacant(e) = self.hops.entry(key) {
                e.insert(Hop::new());
                self.check(key).await;
            }
        }
    }

    /// Looks at the kernel's entry for a next hop and decides what we know of it.
    async fn check(&mut self, key: (IpAddr, u32)) {
        let (addr, ifindex) = key;
        let entry = self.nl.neighbour(addr, ifindex).await;
        let now = Instant::now();
        let Some(hop) = self.hops.get_mut(&key) else {
            return;
        };
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                hop.error = Some(format!("{e:#}"));
                hop.next_check = now + RETRY_UNRESOLVED;
                return;
            }
        };
        let mut solicit = false;
        match entry {
            Some(n) if n.usable_mac().is_some() => {
                hop.mac = n.usable_mac();
                hop.error = None;
                hop.solicited = None;
                hop.attempts = 0;
                if hop.next_check <= now {
                    // A periodic look: have the kernel re-verify a stale entry.
                    if n.state & NUD_STALE != 0 {
                        solicit = true;
                    }
                    hop.next_check = now + REFRESH;
                }
            }
            Some(n) if n.fixed() => {
                // PERMANENT/NOARP without a MAC: nothing the kernel can resolve.
                hop.mac = None;
                hop.error = Some(format!("the neighbour entry of {addr} has no MAC"));
                hop.next_check = now + REFRESH;
            }
            Some(n) if n.state & NUD_INCOMPLETE != 0 => {
                hop.solicited.get_or_insert(now);
                hop.next_check = now + PENDING_CHECK;
            }
            Some(n) if n.state & NUD_FAILED != 0 && hop.solicited.is_some() => {
                // The kernel tried, as asked, and got no answer.
                if hop.mac.is_some() {
                    warn!(next_hop = %addr, "neighbour resolution failed: no ARP/ND answer");
                }
                hop.mac = None;
                hop.error = Some(format!("no ARP/ND answer from {addr}"));
                hop.solicited = None;
                hop.attempts = 0;
                hop.next_check = now + RETRY_UNRESOLVED;
            }
            None if hop.solicited.is_some_and(|t| now - t < PENDING_CHECK) => {
                hop.next_check = now + PENDING_CHECK;
            }
            None if hop.attempts >= 3 => {
                hop.mac = None;
                hop.error = Some(format!("the neighbour entry of {addr} keeps disappearing"));
                hop.solicited = None;
                hop.attempts = 0;
                hop.next_check = now + RETRY_UNRESOLVED;
            }
            _ => {
                // Missing, NONE, or FAILED without our asking (flushed, or the stack's
                // own probe failed): ask the kernel before believing it.
                if hop.mac.is_none()
                    && hop.error.is_none()
                    && entry.is_some_and(|n| n.state & NUD_FAILED != 0)
                {
                    hop.error = Some(format!("no ARP/ND answer from {addr}"));
                }
                if hop.next_check <= now {
                    solicit = true;
                } else {
                    // Let whoever removed it finish first: `ip neigh flush` deletes in
                    // rounds until nothing is left, and gives up if entries come back.
                    hop.next_check = hop.next_check.min(now + SETTLE);
                }
            }
        }
        if solicit {
            hop.solicited = Some(now);
            hop.attempts += u32::from(entry.is_none());
            hop.next_check = now + PENDING_CHECK;
            if let Err(e) = self.nl.solicit(addr, ifindex).await {
                warn!(next_hop = %addr, error = %format!("{e:#}"), "soliciting a neighbour");
            }
        }
    }

    fn path_of(&self, a: IpAddr) -> Option<PathInfo> {
        let p = match self.routes.get(&a)? {
            Err(e) => PathInfo::failed(a, e.clone()),
            Ok(n) => {
                let hop = self.hops.get(&(n.addr, n.ifindex))?;
                PathInfo {
                    next_hop: n.addr,
                    via_gateway: n.gateway,
                    ifindex: n.ifindex,
                    interface: self.ifnames.get(&n.ifindex).cloned().unwrap_or_default(),
                    mac: hop.mac,
                    error: hop.error.clone(),
                }
            }
        };
        Some(p)
    }

    /// Sends the paths that changed; false once the runtime is gone.
    fn publish(&mut self) -> bool {
        let addrs: Vec<IpAddr> = self.routes.keys().copied().collect();
        for a in addrs {
            let Some(p) = self.path_of(a) else { continue };
            if self.sent.get(&a) != Some(&p) {
                if self.out.send(Event::Path(a, p.clone())).is_err() {
                    return false;
                }
                self.sent.insert(a, p);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::{
        state::{Forward, RealServer},
        sync::{Learned, effective_mac},
    };

    /// Network namespaces of their own, removed on drop.
    struct Ns(Vec<String>);

    impl Drop for Ns {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }

    fn ip(ns: &str, args: &str) {
        let st = Command::new("ip")
            .args(["-n", ns])
            .args(args.split_whitespace())
            .status()
            .expect("running ip");
        assert!(st.success(), "ip -n {ns} {args}: {st}");
    }

    /// Runs `f` inside `ns` (the netlink sockets belong to the namespace they are
    /// opened in).
    fn in_ns<F: Future<Output = ()> + 'static>(ns: &str, f: impl FnOnce() -> F + Send + 'static) {
        crate::test_netns::run_in(crate::test_netns::Netns::Named(ns.to_string()), f);
    }

    /// Interfaces, routes (on-link, through a gateway, none, local), static entries
    /// and a real ARP resolution, in two namespaces joined by a veth pair.
    #[test]
    fn next_hops_neighbours_and_interfaces_from_the_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let pid = std::process::id();
        let ns = Ns(vec![
            format!("lbnltest-{pid}-a"),
            format!("lbnltest-{pid}-b"),
        ]);
        for n in &ns.0 {
            let st = Command::new("ip").args(["netns", "add", n]).status();
            assert!(st.is_ok_and(|s| s.success()), "ip netns add {n}");
        }
        let (a, b) = (&ns.0[0], &ns.0[1]);
        ip(
            a,
            &format!(
                "link add v0 address 02:00:00:00:00:01 type veth peer name v1 address 02:00:00:00:00:02 netns {b}"
            ),
        );
        ip(a, "addr add 10.99.0.1/24 dev v0");
        ip(a, "link set v0 up");
        ip(b, "addr add 10.99.0.2/24 dev v1");
        ip(b, "link set v1 up");
        ip(a, "route add 10.98.0.0/24 via 10.99.0.254");
        ip(
            a,
            "neigh replace 10.99.0.5 lladdr 02:00:00:00:00:05 nud permanent dev v0",
        );
        in_ns(a, || async {
            let nl = Netlink::connect().expect("rtnetlink");
            let ifs = nl.interfaces().await.expect("interfaces");
            let v0 = ifs.iter().find(|i| i.name == "v0").expect("v0 listed");
            assert_eq!(v0.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
            let v4 = v0.addresses.iter().find(|a| a.addr.is_ipv4()).expect("v4");
            assert_eq!(v4.to_string(), "10.99.0.1/24");
            assert!(v4.global);
            // The IPv6 link-local one, if already there, is not global.
            assert!(
                v0.addresses
                    .iter()
                    .filter(|a| a.addr.is_ipv6())
                    .all(|a| !a.global)
            );

            // On-link: the address itself, through v0; a static entry.
            let fixed: IpAddr = "10.99.0.5".parse().unwrap();
            let nh = nl.next_hop(fixed).await.expect("route");
            assert_eq!((nh.addr, nh.gateway, nh.ifindex), (fixed, false, v0.index));
            assert_eq!(nh.source, Some("10.99.0.1".parse().unwrap()));
            let n = nl.neighbour(fixed, v0.index).await.unwrap().expect("entry");
            assert_eq!(n.usable_mac(), Some(Mac([2, 0, 0, 0, 0, 5])));

            // The peer: no entry yet; resolved through ARP when asked.
            let peer: IpAddr = "10.99.0.2".parse().unwrap();
            assert_eq!(nl.neighbour(peer, v0.index).await.unwrap(), None);
            assert_eq!(
                nl.resolve(peer, Duration::from_secs(3)).await,
                Some(Mac([2, 0, 0, 0, 0, 2]))
            );

            // NTF_USE itself: the kernel creates the entry and starts resolving it.
            let third: IpAddr = "10.99.0.3".parse().unwrap();
            nl.use_neighbour(third, v0.index).await.expect("NTF_USE");
            let n = nl.neighbour(third, v0.index).await.unwrap().expect("entry");
            assert_eq!(n.state, NUD_INCOMPLETE, "{n:?}");

            // Nobody there: the kernel's ARP gives up; not resolved.
            let ghost: IpAddr = "10.99.0.9".parse().unwrap();
            let p = nl.path(ghost, RESOLVE_WAIT).await;
            assert_eq!(p.mac, None);
            assert!(
                p.error.as_deref().is_some_and(|e| e.contains("ARP")),
                "{p:?}"
            );

            // Behind a gateway: the gateway is the next hop; direct routing refuses it.
            let far: IpAddr = "10.98.0.7".parse().unwrap();
            let p = nl.path(far, Duration::from_millis(100)).await;
            assert_eq!(p.next_hop, "10.99.0.254".parse::<IpAddr>().unwrap());
            assert!(p.via_gateway);
            assert_eq!(p.interface, "v0");
            let learned = Learned {
                paths: [(far, p)].into_iter().collect(),
                ..Learned::default()
            };
            let real = |forward| -> RealServer {
                serde_json::from_value(serde_json::json!({
                    "address": far, "forward": forward,
                }))
                .unwrap()
            };
            let dr = effective_mac(&real(Forward::Dr), &learned);
            assert!(dr.is_err_and(|e| e.contains("L2 adjacency")));

            // No route; an address of this host.
            let p = nl.path("192.0.2.1".parse().unwrap(), Duration::ZERO).await;
            assert!(p.mac.is_none() && p.error.is_some(), "{p:?}");
            let e = nl.next_hop("10.99.0.1".parse().unwrap()).await.unwrap_err();
            assert!(format!("{e:#}").contains("address of this host"), "{e:#}");
        });
    }
}
