//! Half-open TCP checks (a SYN scan, F5's `tcp_half_open`): a SYN goes out of a raw
//! socket; a SYN-ACK means the port is open, an RST that it is closed ("connection
//! refused"), an ICMP error that the backend cannot be reached, silence (up to the
//! check's timeout) a timeout. The kernel answers the SYN-ACK with an RST of its own,
//! since no socket owns that 4-tuple, so the backend's application never sees a
//! connection, nothing is left in TIME_WAIT on either side, and one check costs one
//! `sendmsg` and (shared with the other checks) part of one `recv`, instead of a
//! socket, a connect, an epoll registration and a close.
//!
//! One [`HalfOpen`] serves every check: a raw IPPROTO_TCP socket per family and one
//! receive task that matches each reply to its pending check by (remote address,
//! remote port, local port) and `ack == our ISN + 1`. The ISN's low 24 bits are a
//! keyed cookie of the target ([`HalfOpen::isn_for`]), its high bits random per check,
//! so a late reply to an earlier check of the same 4-tuple is told apart.
//!
//! Where the balancer's XDP program sees the answers ([`use_data_plane`]), it takes
//! them instead of the kernel: it recognises them by port and cookie, queues them on
//! a ring buffer read here like the sockets, and turns a SYN-ACK into the RST itself
//! (lb-ebpf's `health` module). The raw sockets still receive what arrives elsewhere.
//!
//! - Source ports come from a pool of [`POOL_PORTS`] consecutive ports, each held by a
//!   bound (never listening) TCP socket for the pool's lifetime: no connection of the
//!   host can use them (the kernel skips bound ports when choosing ephemeral ones),
//!   and a SYN-ACK to one finds no socket and is reset. A port is used by one check
//!   of a given target at a time; past [`POOL_PORTS`] checks of one target at once,
//!   the next waits for a port.
//! - The source address is the one the kernel would use for the destination (a
//!   connected UDP socket's local address, cached for [`ROUTE_TTL`]); it is in the
//!   IP header and the checksum's pseudo-header, and given to `sendmsg` for the route
//!   (IP_PKTINFO/IPV6_PKTINFO). The sockets are IP_HDRINCL/IPV6_HDRINCL: otherwise
//!   the kernel builds each packet under the socket lock, held through the whole
//!   loopback delivery, and checks sent from two worker threads sleep on it.
//! - A classic BPF filter on each raw socket lets through only SYN-ACKs and RSTs to
//!   the pool's ports: without it the daemon would get a copy of every TCP segment
//!   the host receives.
//! - ICMP errors about our SYNs come through the sockets' error queues
//!   (IP_RECVERR/IPV6_RECVERR), the original segment's ports and sequence number
//!   identifying the check.
//! - The SYN is sent again after 1 s, 3 s, 7 s… (the kernel's backoff) while the
//!   check's timeout allows.
//! - Two ways to use it: [`HalfOpen::probe`], a future per check; or, for the health
//!   scheduler, [`HalfOpen::register`] + [`HalfOpen::send_many`] (many SYNs per
//!   sendmmsg) with the answers queued on a [`BatchSink`] and taken all at once. The
//!   receive task reads up to `RX_BATCH` segments per recvmmsg and completes them
//!   under one lock of the pending table.
//!
//! The receive task runs on the runtime of a check that found none running; if that
//! runtime goes away (tests run one per test) the pending checks are woken and the
//! next one starts a new task on its own runtime. The sockets and the pending table
//! live as long as the [`HalfOpen`], so no reply is lost in between.

use std::{
    collections::HashMap,
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, RingBuf};
use lb_common::{
    HC_ANSWER_OPEN, HC_ANSWER_REFUSED, HC_COOKIE_MASK, HC_F_POLLED, HcAnswer, HcCtrl, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::Notify,
};
use tracing::{debug, warn};

/// Source ports reserved for the checks.
pub const POOL_PORTS: u16 = 64;
/// How long a destination's source address is reused before it is looked up again.
pub const ROUTE_TTL: Duration = Duration::from_secs(30);
/// The first retransmission of an unanswered SYN (then doubling), as the kernel.
const FIRST_RTO: Duration = Duration::from_secs(1);
/// Where XDP takes the answers: polls of a raw socket in a row that found nothing,
/// after which it is read only every `RAW_QUIET_EVERY`th poll (see `HalfOpen::poll`).
const RAW_QUIET_PASSES: u64 = 64;
const RAW_QUIET_EVERY: u64 = 8;

/// Whether poll number `pass` reads a raw socket that found nothing `quiet` polls in
/// a row (see [`HalfOpen::poll`]).
fn raw_read_due(xdp: bool, quiet: u64, pass: u64) -> bool {
    !xdp || quiet < RAW_QUIET_PASSES || pass.is_multiple_of(RAW_QUIET_EVERY)
}

/// The SYN: a 20-byte header and an MSS option.
const SYN_LEN: usize = 24;

/// What came back for a SYN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A SYN-ACK: something listens there.
    Open,
    /// An RST: nothing does.
    Refused,
    /// An ICMP error ("host unreachable (ICMP)", …).
    Unreachable(String),
}

/// (remote address, remote port, local port).
type Key = (IpAddr, u16, u16);

/// A [`HalfOpen::probe`] waiting for its answer.
struct Waiter {
    answer: Mutex<Option<Answer>>,
    /// Notified with the answer, or without one when the receive task went away.
    wake: Notify,
}

/// Where the answer of a pending probe goes.
enum To {
    /// A [`HalfOpen::probe`] future.
    Waiter(Arc<Waiter>),
    /// A batch sender's queue (the health scheduler), with the probe's token there.
    Batch(Arc<BatchSink>, u32),
}

/// A probe whose SYN went out (or is about to).
struct Pending {
    isn: u32,
    to: To,
}

/// Answers to a batch sender's probes ([`HalfOpen::register`]), queued by the receive
/// task: the sender takes them all at once instead of being woken once per probe.
#[derive(Default)]
pub struct BatchSink {
    answers: Mutex<Vec<BatchAnswer>>,
    /// Notified after each read of the sockets that queued answers, and when the
    /// receive task goes away (so that the sender starts another).
    pub wake: Notify,
}

/// An answer for a batch sender: the probe's token and ISN, and what came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchAnswer {
    pub token: u32,
    pub isn: u32,
    pub answer: Answer,
}

impl BatchSink {
    /// Moves the queued answers to the end of `into`.
    pub fn take_into(&self, into: &mut Vec<BatchAnswer>) {
        into.append(&mut lock(&self.answers));
    }
}

/// A SYN ready to go: the whole packet (from its IP header) and where to.
#[derive(Clone, Copy)]
pub struct Syn {
    packet: [u8; 64],
    len: usize,
    source: IpAddr,
    target: SocketAddr,
}

impl Syn {
    pub fn new(source: IpAddr, target: SocketAddr, lport: u16, isn: u32) -> Self {
        let (packet, len) = syn_packet(source, target, lport, isn);
        Syn {
            packet,
            len,
            source,
            target,
        }
    }
}

/// How matching a reply to a pending probe checks the sequence numbers.
#[derive(Clone, Copy)]
enum Seq {
    /// A reply: its ACK is our ISN + 1.
    Ack(u32),
    /// An ICMP error: the original segment's sequence number is our ISN.
    Isn(u32),
}

impl Seq {
    fn matches(self, isn: u32) -> bool {
        match self {
            Seq::Ack(ack) => ack == isn.wrapping_add(1),
            Seq::Isn(seq) => seq == isn,
        }
    }
}

/// The pool of source ports: `base..base + POOL_PORTS`, each held by a bound socket.
struct PortPool {
    base: u16,
    _held: Vec<OwnedFd>,
}

/// The shared sender/receiver of half-open checks (see the module doc).
pub struct HalfOpen {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
    ports: PortPool,
    /// foldhash, not SipHash: looked up per probe and per answer; its keys are ours.
    pending: Mutex<HashMap<Key, Pending, foldhash::fast::RandomState>>,
    /// Where the next check starts looking for a free source port.
    next_port: AtomicUsize,
    /// Checks waiting for a source port (all taken for their target) and their wake-up.
    port_waiters: AtomicUsize,
    port_freed: Notify,
    routes: Mutex<HashMap<IpAddr, (IpAddr, Instant)>>,
    receiving: AtomicBool,
    /// A batch sender reads the sockets itself ([`HalfOpen::poll`]): no receive task.
    polled: AtomicBool,
    receiver_start: Mutex<()>,
    /// Segments and ICMP errors the receive task read (the filter's effect is visible here).
    received: AtomicU64,
    /// Answers read from the data plane's ring.
    xdp_received: AtomicU64,
    /// Polls so far, and per family (v4, v6) the polls in a row that found nothing.
    polls: AtomicU64,
    raw_quiet: [AtomicU64; 2],
    /// The key of the cookie in our ISNs ([`HalfOpen::isn_for`]).
    secret: [u32; 4],
    /// The answers XDP takes, once a data plane is attached.
    xdp: Mutex<Option<XdpAnswers>>,
    /// Tells the receive task to end (and the next check to start one), so that it
    /// waits on what was attached since it started.
    rx_restart: Notify,
}

/// The data plane's side of the checks ([`HalfOpen::attach_data_plane`]).
struct XdpAnswers {
    ctrl: Array<MapData, HcCtrl>,
    ring: RingBuf<MapData>,
    /// The last read's buffer, kept.
    replies: Vec<(Key, Seq, Answer)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live T of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn socket(family: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions; the fd is owned from here on.
    let fd = cvt(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The process-wide instance the checks use; `None` (logged once) when raw sockets
/// cannot be opened, and the checks connect instead.
pub fn shared() -> Option<&'static Arc<HalfOpen>> {
    static SHARED: OnceLock<Option<Arc<HalfOpen>>> = OnceLock::new();
    SHARED
        .get_or_init(|| match HalfOpen::new() {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                warn!(
                    error = %e,
                    "half-open tcp checks unavailable (raw sockets need CAP_NET_RAW): tcp checks connect instead"
                );
                None
            }
        })
        .as_ref()
}

/// Has the process-wide instance take its answers from `dp`'s XDP program (see
/// [`HalfOpen::attach_data_plane`]), if there is one and `dp` still has the maps.
pub fn use_data_plane(dp: &mut crate::bpf_maps::DataPlane) {
    let Some(engine) = shared() else { return };
    let Some((ctrl, ring)) = dp.take_health_answers() else {
        return;
    };
    match engine.attach_data_plane(ctrl, ring) {
        Ok(()) => debug!("half-open tcp checks: answers taken by XDP where it runs"),
        Err(e) => {
            warn!(error = %e, "half-open tcp checks: cannot hand the answers to XDP; the kernel takes them")
        }
    }
}

impl HalfOpen {
    /// Opens the raw sockets (an error only when neither family can have one) and
    /// reserves the source ports, in the current network namespace.
    pub fn new() -> io::Result<Self> {
        let ports = PortPool::reserve()?;
        let lo = ports.base;
        let hi = ports.base + (POOL_PORTS - 1);
        let v4 = raw_socket(libc::AF_INET, lo, hi);
        let v6 = raw_socket(libc::AF_INET6, lo, hi);
        let (v4, v6) = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (v4, v6) => {
                for (fam, r) in [("IPv4", &v4), ("IPv6", &v6)] {
                    if let Err(e) = r {
                        warn!(error = %e, "half-open {fam} tcp checks unavailable: {fam} tcp checks connect instead");
                    }
                }
                (v4.ok(), v6.ok())
            }
        };
        debug!(ports = %format!("{lo}-{hi}"), "half-open tcp checks ready");
        Ok(HalfOpen {
            v4,
            v6,
            ports,
            pending: Mutex::new(HashMap::default()),
            next_port: AtomicUsize::new(0),
            port_waiters: AtomicUsize::new(0),
            port_freed: Notify::new(),
            routes: Mutex::new(HashMap::new()),
            receiving: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            receiver_start: Mutex::new(()),
            received: AtomicU64::new(0),
            xdp_received: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            raw_quiet: [AtomicU64::new(0), AtomicU64::new(0)],
            secret: rand::random(),
            xdp: Mutex::new(None),
            rx_restart: Notify::new(),
        })
    }

    /// A fresh ISN for a check of `target`: the cookie XDP recognises the answers by
    /// (`lb_common::hash::hc_cookie`) in its low bits, random high bits, so that a late
    /// answer to an earlier check of the same target is still told apart.
    pub fn isn_for(&self, target: SocketAddr) -> u32 {
        let (remote, _) = crate::sync::addr_bytes(target.ip());
        let cookie = lb_common::hash::hc_cookie(&self.secret, &remote, target.port());
        (rand::random::<u32>() & !HC_COOKIE_MASK) | cookie
    }

    /// What XDP needs to take the answers to our checks.
    fn hc_ctrl(&self) -> HcCtrl {
        let r = self.port_range();
        HcCtrl {
            port_lo: *r.start(),
            port_hi: *r.end(),
            secret: self.secret,
            flags: if self.polled() { HC_F_POLLED } else { 0 },
        }
    }

    /// From now on the XDP program that owns these maps (the data plane's HC_CTRL and
    /// HC_ANSWERS) takes the answers to our checks that reach it: each is read from
    /// the ring instead of a raw socket, and XDP sends the RST for a SYN-ACK itself.
    /// Answers that arrive elsewhere, or find the ring full, still come through the
    /// raw sockets.
    pub fn attach_data_plane(
        &self,
        mut ctrl: Array<MapData, HcCtrl>,
        ring: RingBuf<MapData>,
    ) -> io::Result<()> {
        let mut xdp = lock(&self.xdp);
        ctrl.set(0, &self.hc_ctrl(), 0).map_err(io::Error::other)?;
        *xdp = Some(XdpAnswers {
            ctrl,
            ring,
            replies: Vec::new(),
        });
        drop(xdp);
        self.rx_restart.notify_waiters();
        Ok(())
    }

    /// Reads the answers XDP queued and completes the probes they answer; false when
    /// no data plane takes them.
    fn drain_xdp(&self) -> bool {
        let mut replies = {
            let mut xdp = lock(&self.xdp);
            let Some(x) = xdp.as_mut() else { return false };
            let mut replies = std::mem::take(&mut x.replies);
            while let Some(item) = x.ring.next() {
                if item.len() < size_of::<HcAnswer>() {
                    continue;
                }
                // SAFETY: the program writes whole HcAnswers (repr(C), plain data).
                let a: HcAnswer = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let remote = crate::sync::ip_from_bytes(&a.remote, a.family);
                let answer = match a.kind {
                    HC_ANSWER_OPEN => Answer::Open,
                    HC_ANSWER_REFUSED => Answer::Refused,
                    _ => continue,
                };
                replies.push(((remote, a.rport, a.lport), Seq::Ack(a.ack), answer));
            }
            replies
        };
        self.xdp_received
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        self.complete_all(&mut replies);
        // The buffer back for the next read (once per millisecond while polled).
        if let Some(x) = lock(&self.xdp).as_mut() {
            x.replies = replies;
        }
        true
    }

    /// Answers read from the data plane so far.
    pub fn xdp_received(&self) -> u64 {
        self.xdp_received.load(Ordering::Relaxed)
    }

    /// Whether `target`'s family has a raw socket.
    pub fn supports(&self, target: &SocketAddr) -> bool {
        match target {
            SocketAddr::V4(_) => self.v4.is_some(),
            SocketAddr::V6(_) => self.v6.is_some(),
        }
    }

    /// The reserved source ports.
    pub fn port_range(&self) -> std::ops::RangeInclusive<u16> {
        self.ports.base..=self.ports.base + (POOL_PORTS - 1)
    }

    /// Segments and ICMP errors read so far (all of them passed the socket filter).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// One probe of `target`: waits for the answer, sending the SYN again on the
    /// kernel's schedule while `timeout` allows. Unbounded itself; the caller's
    /// timeout drops it (which frees its source port).
    pub async fn probe(
        self: &Arc<Self>,
        target: SocketAddr,
        timeout: Duration,
    ) -> io::Result<Answer> {
        let fd = match target {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?
        .as_raw_fd();
        self.ensure_receiver();
        let source = self.source_for(target)?;
        let isn = self.isn_for(target);
        let slot = self.take_port(target, isn).await;
        let (buf, len) = syn_packet(source, target, slot.key.2, isn);
        let syn = &buf[..len];
        self.send(fd, syn, source, target).await?;
        let mut rto = FIRST_RTO;
        let mut since_sent = Duration::ZERO;
        loop {
            let resend = since_sent + rto < timeout;
            tokio::select! {
                () = slot.waiter.wake.notified() => {
                    if let Some(a) = lock(&slot.waiter.answer).take() {
                        return Ok(a);
                    }
                    // The receive task's runtime went away: carry on with one here.
                    self.ensure_receiver();
                }
                () = tokio::time::sleep(rto), if resend => {
                    self.send(fd, syn, source, target).await?;
                    since_sent += rto;
                    rto *= 2;
                }
            }
        }
    }

    /// Starts the receive task on the current runtime unless one runs (or the sockets
    /// are polled).
    pub fn ensure_receiver(self: &Arc<Self>) {
        if self.receiving.load(Ordering::Acquire) || self.polled.load(Ordering::Acquire) {
            return;
        }
        let _one = lock(&self.receiver_start);
        if self.receiving.load(Ordering::Acquire) {
            return;
        }
        self.receiving.store(true, Ordering::Release);
        tokio::spawn(receive(ReceiverGuard(self.clone())));
    }

    /// Whether a batch sender polls the sockets ([`HalfOpen::poll`]) rather than
    /// have the receive task woken by each answer. On, the receive task ends at its
    /// next wake-up, and the poller completes every pending probe, [`HalfOpen::probe`]'s
    /// too.
    pub fn set_polled(&self, on: bool) {
        // Called on every pass of the scheduler: HC_CTRL is written only on a change.
        if self.polled.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let mut xdp = lock(&self.xdp);
        if let Some(x) = xdp.as_mut()
            && let Err(e) = x.ctrl.set(0, &self.hc_ctrl(), 0)
        {
            warn!(error = %e, "half-open tcp checks: writing HC_CTRL");
        }
    }

    /// Whether the sockets are polled (see [`HalfOpen::set_polled`]).
    pub fn polled(&self) -> bool {
        self.polled.load(Ordering::Acquire)
    }

    /// Reads, without waiting, what the sockets of the families asked for hold, and
    /// completes the probes it answers (a batch sender's answers go to its sink).
    ///
    /// Where XDP takes the answers, a raw socket that had nothing for
    /// [`RAW_QUIET_PASSES`] passes in a row is read only every [`RAW_QUIET_EVERY`]th
    /// pass (what still comes there, ICMP errors and answers from interfaces without
    /// XDP, waits that much longer) until a read finds something again: otherwise
    /// each pass costs a recvmmsg(2) per family that finds the queue empty.
    pub fn poll(&self, v4: bool, v6: bool) {
        let xdp = self.drain_xdp();
        let pass = self.polls.fetch_add(1, Ordering::Relaxed);
        for (fd, is_v6) in [(&self.v4, false), (&self.v6, true)] {
            let Some(fd) = fd else { continue };
            if !(if is_v6 { v6 } else { v4 }) {
                continue;
            }
            let quiet = &self.raw_quiet[usize::from(is_v6)];
            if !raw_read_due(xdp, quiet.load(Ordering::Relaxed), pass) {
                continue;
            }
            let before = self.received.load(Ordering::Relaxed);
            let errored = drain_segments(self, fd.as_raw_fd(), is_v6);
            if errored {
                drain_errors(self, fd.as_raw_fd(), is_v6);
            }
            if errored || self.received.load(Ordering::Relaxed) != before {
                quiet.store(0, Ordering::Relaxed);
            } else {
                quiet.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The source address for `target` (cached route lookup).
    pub fn source_for(&self, target: SocketAddr) -> io::Result<IpAddr> {
        let now = Instant::now();
        if let Some((src, at)) = lock(&self.routes).get(&target.ip())
            && now.duration_since(*at) < ROUTE_TTL
        {
            return Ok(*src);
        }
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // connect(2) on a UDP socket only does the route lookup and source selection.
        let u = UdpSocket::bind(any)?;
        u.connect(target)?;
        let src = u.local_addr()?.ip();
        let mut routes = lock(&self.routes);
        if routes.len() > 100_000 {
            routes.retain(|_, (_, at)| now.duration_since(*at) < ROUTE_TTL);
        }
        routes.insert(target.ip(), (src, now));
        Ok(src)
    }

    /// A source port no other pending check of `target` uses, registered with `isn`.
    async fn take_port(self: &Arc<Self>, target: SocketAddr, isn: u32) -> Slot {
        if let Some(s) = self.try_take_port(target, isn) {
            return s;
        }
        self.port_waiters.fetch_add(1, Ordering::SeqCst);
        let _undo = Defer(|| {
            self.port_waiters.fetch_sub(1, Ordering::SeqCst);
        });
        loop {
            let freed = self.port_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = self.try_take_port(target, isn) {
                return s;
            }
            freed.await;
        }
    }

    fn try_take_port(self: &Arc<Self>, target: SocketAddr, isn: u32) -> Option<Slot> {
        let waiter = Arc::new(Waiter {
            answer: Mutex::new(None),
            wake: Notify::new(),
        });
        let port = self.take_free_port(target, isn, To::Waiter(waiter.clone()))?;
        Some(Slot {
            engine: self.clone(),
            key: (target.ip(), target.port(), port),
            waiter,
        })
    }

    /// A source port of the pool with no probe of `target` pending on it, now pending
    /// with `isn` and answered to `to`; None when every one is taken. The search starts
    /// at a rotating position, so that ports are reused as late as possible.
    fn take_free_port(&self, target: SocketAddr, isn: u32, to: To) -> Option<u16> {
        let start = self.next_port.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.pending);
        for i in 0..usize::from(POOL_PORTS) {
            let port = self.ports.base + ((start + i) % usize::from(POOL_PORTS)) as u16;
            let key = (target.ip(), target.port(), port);
            if let std::collections::hash_map::Entry::Vacant(v) = pending.entry(key) {
                v.insert(Pending { isn, to });
                return Some(port);
            }
        }
        None
    }

    /// Sends `seg`; retried once at once when it fails, since the first failure may be
    /// an ICMP error of another check left on the socket (sk_err), and a few times
    /// after a millisecond when the send buffer is full.
    async fn send(
        &self,
        fd: RawFd,
        seg: &[u8],
        source: IpAddr,
        target: SocketAddr,
    ) -> io::Result<()> {
        let mut stale_error_cleared = false;
        let mut full = 0;
        loop {
            match send_to(fd, seg, source, target) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {
                    full += 1;
                    if full > 5 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(_) if !stale_error_cleared => stale_error_cleared = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// A batch sender's probe of `target` with `isn`: a free source port (None when
    /// every one is taken by a pending probe of `target`), registered so that the
    /// answer is queued on `sink` with `token`. The registration goes with the answer;
    /// [`HalfOpen::release`] drops it when none comes.
    pub fn register(
        &self,
        target: SocketAddr,
        isn: u32,
        sink: &Arc<BatchSink>,
        token: u32,
    ) -> Option<u16> {
        self.take_free_port(target, isn, To::Batch(sink.clone(), token))
    }

    /// Drops the registration of a batch sender's probe (timed out or given up).
    pub fn release(&self, target: SocketAddr, lport: u16, isn: u32) {
        let key = (target.ip(), target.port(), lport);
        let mut pending = lock(&self.pending);
        if pending
            .get(&key)
            .is_some_and(|p| p.isn == isn && matches!(p.to, To::Batch(..)))
        {
            pending.remove(&key);
        }
        drop(pending);
        if self.port_waiters.load(Ordering::SeqCst) > 0 {
            self.port_freed.notify_waiters();
        }
    }

    /// Sends `syns` in as few sendmmsg(2) calls as their families allow: the result of
    /// each, in order (in `bufs`). A failure is retried once at once, since it may be an
    /// ICMP error of another check left on the socket (sk_err); a full send buffer
    /// (EAGAIN, ENOBUFS) fails the rest of that family's SYNs with it, for the caller to
    /// retry.
    pub fn send_many<'b>(&self, syns: &[Syn], bufs: &'b mut SendBuffers) -> &'b [io::Result<()>] {
        let SendBuffers {
            msgs,
            hdrs,
            idx,
            results,
        } = bufs;
        results.clear();
        results.extend(syns.iter().map(|_| Ok(())));
        for v6 in [false, true] {
            idx.clear();
            idx.extend((0..syns.len()).filter(|&i| syns[i].target.is_ipv6() == v6));
            if idx.is_empty() {
                continue;
            }
            let Some(fd) = (if v6 { &self.v6 } else { &self.v4 }) else {
                for &i in idx.iter() {
                    results[i] = Err(io::Error::from(io::ErrorKind::Unsupported));
                }
                continue;
            };
            msgs.clear();
            msgs.extend(idx.iter().map(|&i| OutMsg::new(&syns[i])));
            hdrs.clear();
            hdrs.extend(msgs.iter_mut().map(OutMsg::header));
            let mut at = 0;
            let mut retried = None;
            while at < hdrs.len() {
                let rest = &mut hdrs[at..];
                // SAFETY: every header points into `msgs`, alive and unmoved until after
                // the call.
                let n = unsafe {
                    libc::sendmmsg(
                        fd.as_raw_fd(),
                        rest.as_mut_ptr(),
                        rest.len() as libc::c_uint,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n > 0 {
                    at += n as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::ENOBUFS) => {
                        for &i in &idx[at..] {
                            results[i] = Err(io::Error::from_raw_os_error(
                                e.raw_os_error().unwrap_or(libc::EAGAIN),
                            ));
                        }
                        break;
                    }
                    _ if retried != Some(at) => retried = Some(at),
                    _ => {
                        results[idx[at]] = Err(e);
                        at += 1;
                    }
                }
            }
            // No pointer into `msgs` outlives the call (see SendBuffers' Send).
            hdrs.clear();
            msgs.clear();
        }
        results
    }

    /// Completes the pending probes that `replies` answer, under one lock of the table.
    fn complete_all(&self, replies: &mut Vec<(Key, Seq, Answer)>) {
        if replies.is_empty() {
            return;
        }
        let mut woken: Vec<Arc<BatchSink>> = Vec::new();
        let mut pending = lock(&self.pending);
        for (key, seq, answer) in replies.drain(..) {
            let Some(p) = pending.get(&key) else { continue };
            if !seq.matches(p.isn) {
                continue;
            }
            match &p.to {
                To::Waiter(w) => {
                    let mut a = lock(&w.answer);
                    if a.is_none() {
                        *a = Some(answer);
                        w.wake.notify_one();
                    }
                }
                To::Batch(..) => {
                    // Answered: the port is free for the next probe of this target.
                    let Some(Pending {
                        isn,
                        to: To::Batch(sink, token),
                    }) = pending.remove(&key)
                    else {
                        unreachable!("matched above")
                    };
                    lock(&sink.answers).push(BatchAnswer { token, isn, answer });
                    if !woken.iter().any(|s| Arc::ptr_eq(s, &sink)) {
                        woken.push(sink);
                    }
                }
            }
        }
        drop(pending);
        // A poller takes the answers right after its read: no wake-up for it.
        if !self.polled.load(Ordering::Acquire) {
            for s in woken {
                s.wake.notify_one();
            }
        }
    }

    /// A segment read from a raw socket (v4: from the IP header; v6: from the TCP
    /// header): the reply it is, if it answers a SYN.
    fn parse_segment(remote: IpAddr, tcp: &[u8]) -> Option<(Key, Seq, Answer)> {
        if tcp.len() < 14 {
            return None;
        }
        let rport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let lport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let flags = tcp[13];
        // Both answers to a SYN acknowledge it; an RST without ACK cannot be matched.
        if flags & TCP_ACK == 0 {
            return None;
        }
        let answer = if flags & TCP_RST != 0 {
            Answer::Refused
        } else if flags & (TCP_SYN | TCP_FIN) == TCP_SYN {
            Answer::Open
        } else {
            return None;
        };
        Some(((remote, rport, lport), Seq::Ack(ack), answer))
    }

    /// An ICMP error about a segment we sent: `tcp` starts with its TCP header.
    fn on_icmp(&self, remote: IpAddr, tcp: &[u8], detail: String) {
        if tcp.len() < 8 {
            return;
        }
        let lport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let rport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        self.complete_all(&mut vec![(
            (remote, rport, lport),
            Seq::Isn(seq),
            Answer::Unreachable(detail),
        )]);
    }
}

/// Runs `f` on drop.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// A pending check's registration; dropping it (answer, timeout, cancellation) frees
/// the source port.
struct Slot {
    engine: Arc<HalfOpen>,
    key: Key,
    waiter: Arc<Waiter>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = lock(&self.engine.pending);
        if pending
            .get(&self.key)
            .is_some_and(|p| matches!(&p.to, To::Waiter(w) if Arc::ptr_eq(w, &self.waiter)))
        {
            pending.remove(&self.key);
        }
        drop(pending);
        if self.engine.port_waiters.load(Ordering::SeqCst) > 0 {
            self.engine.port_freed.notify_waiters();
        }
    }
}

/// Marks the receive task gone when it ends or is dropped with its runtime, and wakes
/// the pending checks so that one of them starts another.
struct ReceiverGuard(Arc<HalfOpen>);

impl Drop for ReceiverGuard {
    fn drop(&mut self) {
        self.0.receiving.store(false, Ordering::Release);
        for p in lock(&self.0.pending).values() {
            match &p.to {
                To::Waiter(w) => w.wake.notify_one(),
                To::Batch(sink, _) => sink.wake.notify_one(),
            }
        }
    }
}

/// An fd owned elsewhere (by the [`HalfOpen`], which outlives the task).
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

async fn receive(guard: ReceiverGuard) {
    let engine = &guard.0;
    let register = |fd: &Option<OwnedFd>| -> io::Result<Option<AsyncFd<Borrowed>>> {
        fd.as_ref()
            .map(|fd| {
                // SAFETY: the fd belongs to the engine, which `guard` keeps alive (and
                // so open) until after the AsyncFds, declared later, are dropped.
                unsafe {
                    AsyncFd::register_with_interest(
                        Borrowed(fd.as_raw_fd()),
                        Interest::READABLE | Interest::ERROR,
                    )
                }
                .map_err(io::Error::from)
            })
            .transpose()
    };
    let (v4, v6) = match (register(&engine.v4), register(&engine.v6)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "half-open tcp checks: cannot register the raw sockets");
            return;
        }
    };
    // The data plane's ring, if one is attached (the fd stays open while it is: an
    // attachment is never undone).
    let xdp_fd = lock(&engine.xdp).as_ref().map(|x| x.ring.as_raw_fd());
    let xdp = match xdp_fd
        .map(|fd| {
            // SAFETY: the ring's fd stays open as long as the engine, which `guard`
            // keeps alive until after this AsyncFd is dropped (attachments are never
            // undone).
            unsafe { AsyncFd::register_with_interest(Borrowed(fd), Interest::READABLE) }
        })
        .transpose()
    {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "half-open tcp checks: cannot register the data plane's ring");
            return;
        }
    };
    // Answers queued before this task started.
    engine.drain_xdp();
    loop {
        let restart = engine.rx_restart.notified();
        let r = tokio::select! {
            r = ready(v4.as_ref()) => r.map(|g| (g, false)),
            r = ready(v6.as_ref()) => r.map(|g| (g, true)),
            r = ready(xdp.as_ref()) => {
                if engine.polled.load(Ordering::Acquire) {
                    return;
                }
                match r {
                    Ok(mut g) => {
                        engine.drain_xdp();
                        g.clear_ready();
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "half-open tcp checks: waiting on the data plane's ring");
                        return;
                    }
                }
            }
            () = restart => return,
        };
        let (mut g, v6) = match r {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "half-open tcp checks: waiting on the raw sockets");
                return;
            }
        };
        if engine.polled.load(Ordering::Acquire) {
            // A batch sender reads the sockets: no wake-up per answer.
            return;
        }
        let fd = g.get_ref().as_raw_fd();
        if g.ready().is_error() {
            drain_errors(engine, fd, v6);
        }
        drain_segments(engine, fd, v6);
        g.clear_ready();
    }
}

async fn ready(
    fd: Option<&AsyncFd<Borrowed>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, Borrowed>> {
    match fd {
        Some(fd) => fd.ready(Interest::READABLE | Interest::ERROR).await,
        None => std::future::pending().await,
    }
}

/// Reads per recvmmsg(2).
const RX_BATCH: usize = 32;

/// Reads the segments queued on a raw socket; whether a read reported an ICMP error
/// (its details are then in the error queue).
fn drain_segments(engine: &HalfOpen, fd: RawFd, v6: bool) -> bool {
    let mut bufs = [[0u8; 128]; RX_BATCH];
    // SAFETY: zeroed sockaddr_in6s are valid values.
    let mut names: [libc::sockaddr_in6; RX_BATCH] = unsafe { zeroed() };
    let mut iovs: [libc::iovec; RX_BATCH] = std::array::from_fn(|i| libc::iovec {
        iov_base: bufs[i].as_mut_ptr().cast(),
        iov_len: bufs[i].len(),
    });
    // SAFETY: zeroed mmsghdrs are valid values; filled in below.
    let mut hdrs: [libc::mmsghdr; RX_BATCH] = unsafe { zeroed() };
    let mut replies = Vec::with_capacity(RX_BATCH);
    let mut errored = false;
    loop {
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&raw mut names[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: every header points to live buffers of the sizes given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return errored,
                Some(libc::EINTR) => continue,
                // An ICMP error (sk_err) reported, and cleared, by this read.
                _ => {
                    errored = true;
                    continue;
                }
            }
        }
        let n = n as usize;
        engine.received.fetch_add(n as u64, Ordering::Relaxed);
        for i in 0..n {
            let pkt = &bufs[i][..(hdrs[i].msg_len as usize).min(bufs[i].len())];
            let reply = if v6 {
                let remote = IpAddr::V6(Ipv6Addr::from(names[i].sin6_addr.s6_addr));
                HalfOpen::parse_segment(remote, pkt)
            } else {
                // IPv4 raw sockets read the IP header too.
                if pkt.len() < 20 {
                    continue;
                }
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                if pkt.len() < ihl {
                    continue;
                }
                let remote = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
                HalfOpen::parse_segment(remote, &pkt[ihl..])
            };
            replies.extend(reply);
        }
        engine.complete_all(&mut replies);
        // A short read emptied the queue; what arrives later makes the socket ready
        // again (edge-triggered), so no read just to see EAGAIN.
        if n < RX_BATCH {
            return errored;
        }
    }
}

/// Reads the error queue: ICMP errors about TCP segments sent from this host (ours
/// among them: the filter does not apply to it), then clears the socket's pending
/// error so that no send of another check fails with it.
fn drain_errors(engine: &HalfOpen, fd: RawFd, v6: bool) {
    let mut data = [0u8; 64];
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 32];
    loop {
        // SAFETY: zeroed sockaddr_in6/msghdr are valid values.
        let mut name: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&raw mut name).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 32]>();
        // SAFETY: every buffer msg points to is live and sized.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        engine.received.fetch_add(1, Ordering::Relaxed);
        let mut err: Option<libc::sock_extended_err> = None;
        // SAFETY: msg was filled by recvmsg; the CMSG_* walk stays within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level, kind) == (libc::SOL_IP, libc::IP_RECVERR)
                    || (level, kind) == (libc::SOL_IPV6, libc::IPV6_RECVERR)
                {
                    err = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::sock_extended_err>(),
                    ));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let Some(err) = err else { continue };
        let detail = match err.ee_origin {
            libc::SO_EE_ORIGIN_ICMP => icmp_detail(err.ee_type, err.ee_code),
            libc::SO_EE_ORIGIN_ICMP6 => icmp6_detail(err.ee_type, err.ee_code),
            _ => None,
        };
        let Some(detail) = detail else { continue };
        // The name is the original segment's destination.
        let remote = if v6 {
            IpAddr::V6(Ipv6Addr::from(name.sin6_addr.s6_addr))
        } else {
            // SAFETY: for an IPv4 socket the name is a sockaddr_in, which fits.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const name).cast()) };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        };
        // The original packet from its IP header (IP_HDRINCL/IPV6_HDRINCL sockets).
        let orig = &data[..(n as usize).min(data.len())];
        let tcp = if v6 {
            // Our SYNs have no extension headers.
            match orig.get(6) {
                Some(&6) => &orig[40.min(orig.len())..],
                _ => continue,
            }
        } else {
            match orig.first() {
                Some(b) => &orig[(usize::from(b & 0x0f) * 4).min(orig.len())..],
                None => continue,
            }
        };
        engine.on_icmp(remote, tcp, detail);
    }
    let mut e: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR into a live c_int.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut e).cast(),
            &mut len,
        )
    };
}

/// ICMPv4 errors that end a check (None: not an error about reachability).
fn icmp_detail(kind: u8, code: u8) -> Option<String> {
    let what = match (kind, code) {
        (3, 0 | 6 | 11) => "network unreachable".into(),
        (3, 1 | 7 | 12) => "host unreachable".into(),
        (3, 2) => "protocol unreachable".into(),
        (3, 3) => "port unreachable".into(),
        // Fragmentation needed: not about a SYN's reachability.
        (3, 4) => return None,
        (3, 9 | 10 | 13) => "administratively prohibited".into(),
        (3, c) => format!("destination unreachable (code {c})"),
        (11, _) => "TTL exceeded".into(),
        (12, _) => "parameter problem".into(),
        _ => return None,
    };
    Some(format!("{what} (ICMP)"))
}

/// ICMPv6 errors that end a check.
fn icmp6_detail(kind: u8, code: u8) -> Option<String> {
    let what = match (kind, code) {
        (1, 0) => "network unreachable".into(),
        (1, 1 | 5 | 6) => "administratively prohibited".into(),
        (1, 2) => "beyond the scope of the source address".into(),
        (1, 3) => "host unreachable".into(),
        (1, 4) => "port unreachable".into(),
        (1, c) => format!("destination unreachable (code {c})"),
        (3, _) => "hop limit exceeded".into(),
        (4, _) => "parameter problem".into(),
        // 2: packet too big.
        _ => return None,
    };
    Some(format!("{what} (ICMPv6)"))
}

impl PortPool {
    /// `POOL_PORTS` consecutive free ports in the ephemeral range (services do not bind
    /// there), held by bound sockets.
    fn reserve() -> io::Result<Self> {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(str::parse::<u16>);
                Some((it.next()?.ok()?, it.next()?.ok()?))
            })
            .filter(|(lo, hi)| hi > lo && hi - lo >= POOL_PORTS * 2)
            .unwrap_or((32768, 60999));
        let span = u32::from(hi - lo + 1 - POOL_PORTS);
        let mut last = io::Error::from(io::ErrorKind::AddrInUse);
        for _ in 0..64 {
            let base = lo + (rand::random::<u32>() % span) as u16;
            match (0..POOL_PORTS).map(|i| bind_port(base + i)).collect() {
                Ok(held) => return Ok(PortPool { base, _held: held }),
                Err(e) => last = e,
            }
        }
        Err(io::Error::new(
            last.kind(),
            format!("no {POOL_PORTS} consecutive free ports in {lo}-{hi}: {last}"),
        ))
    }
}

/// A TCP socket bound to `port` on every address (dual-stack when there is IPv6).
fn bind_port(port: u16) -> io::Result<OwnedFd> {
    match socket(libc::AF_INET6, libc::SOCK_STREAM, 0) {
        Ok(fd) => {
            setsockopt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &0i32)?;
            // SAFETY: a zeroed sockaddr_in6 is the unspecified address.
            let mut a: libc::sockaddr_in6 = unsafe { zeroed() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = port.to_be();
            // SAFETY: bind with a live sockaddr_in6 of the size given.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const a).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            })?;
            Ok(fd)
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
            // SAFETY: a zeroed sockaddr_in is 0.0.0.0.
            let mut a: libc::sockaddr_in = unsafe { zeroed() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = port.to_be();
            // SAFETY: bind with a live sockaddr_in of the size given.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const a).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            })?;
            Ok(fd)
        }
        Err(e) => Err(e),
    }
}

/// One classic BPF instruction.
const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LD_B_IND: u16 = 0x50;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// The socket filter: TCP segments to a port in `lo..=hi` with SYN+ACK or RST set,
/// cut to the headers we read. IPv4 raw sockets see the packet from its IP header
/// (and first fragments only are looked at), IPv6 ones from the TCP header.
fn filter(v6: bool, lo: u16, hi: u16) -> Vec<libc::sock_filter> {
    let flags_ok = |accept_jt: u8| {
        // jset RST → accept; (flags & SYN|ACK) == SYN|ACK → accept; else drop.
        [
            op(JSET_K, accept_jt, 0, u32::from(TCP_RST)),
            op(AND_K, 0, 0, u32::from(TCP_SYN | TCP_ACK)),
            op(JEQ_K, 0, 1, u32::from(TCP_SYN | TCP_ACK)),
        ]
    };
    if v6 {
        let mut p = vec![
            op(LD_H_ABS, 0, 0, 2),          // 0: destination port
            op(JGE_K, 0, 6, u32::from(lo)), // 1: < lo → drop (8)
            op(JGT_K, 5, 0, u32::from(hi)), // 2: > hi → drop (8)
            op(LD_B_ABS, 0, 0, 13),         // 3: flags
        ];
        p.extend(flags_ok(2)); // 4, 5, 6
        p.push(op(RET_K, 0, 0, 20)); // 7: accept the TCP header
        p.push(op(RET_K, 0, 0, 0)); // 8: drop
        p
    } else {
        let mut p = vec![
            op(LD_H_ABS, 0, 0, 6),          // 0: fragment offset
            op(JSET_K, 9, 0, 0x1fff),       // 1: a later fragment → drop (11)
            op(LDX_B_MSH, 0, 0, 0),         // 2: x = IP header length
            op(LD_H_IND, 0, 0, 2),          // 3: destination port
            op(JGE_K, 0, 6, u32::from(lo)), // 4: < lo → drop
            op(JGT_K, 5, 0, u32::from(hi)), // 5: > hi → drop
            op(LD_B_IND, 0, 0, 13),         // 6: flags
        ];
        p.extend(flags_ok(2)); // 7, 8, 9
        p.push(op(RET_K, 0, 0, 80)); // 10: accept the IP and TCP headers
        p.push(op(RET_K, 0, 0, 0)); // 11: drop
        p
    }
}

/// A raw IPPROTO_TCP socket of `family`, non-blocking, filtered to replies to
/// `lo..=hi`, reporting ICMP errors.
fn raw_socket(family: libc::c_int, lo: u16, hi: u16) -> io::Result<OwnedFd> {
    let v6 = family == libc::AF_INET6;
    let fd = socket(
        family,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::IPPROTO_TCP,
    )?;
    let raw = fd.as_raw_fd();
    let prog = filter(v6, lo, hi);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
    // We write the IP header: without it the kernel corks each send under the socket
    // lock, held through the whole loopback delivery, and concurrent senders sleep on it.
    if v6 {
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, &1i32)?;
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, &1i32)?;
    } else {
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_RECVERR, &1i32)?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_HDRINCL, &1i32)?;
    }
    // Room for bursts (10,000 checks a second); FORCE needs CAP_NET_ADMIN, else the
    // sysctl maximum applies.
    let buf = 4i32 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt(raw, libc::SOL_SOCKET, force, &buf).is_err() {
            let _ = setsockopt(raw, libc::SOL_SOCKET, plain, &buf);
        }
    }
    // Segments queued before the filter was attached.
    let mut b = [0u8; 64];
    // SAFETY: recv into a live buffer.
    while unsafe { libc::recv(raw, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) } >= 0 {}
    Ok(fd)
}

/// Our SYN with its IP header (the sockets are IP_HDRINCL/IPV6_HDRINCL): the buffer
/// and its length.
fn syn_packet(source: IpAddr, target: SocketAddr, lport: u16, isn: u32) -> ([u8; 64], usize) {
    let mut p = [0u8; 64];
    let tcp = syn_segment(source, target, lport, isn);
    let ip_len = match (source, target.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((20 + SYN_LEN) as u16).to_be_bytes());
            // id 0: the kernel picks one; don't fragment, as TCP.
            p[6] = 0x40;
            p[8] = 64;
            p[9] = libc::IPPROTO_TCP as u8;
            p[12..16].copy_from_slice(&s.octets());
            p[16..20].copy_from_slice(&d.octets());
            let c = ipv4_header_checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
            p[6] = libc::IPPROTO_TCP as u8;
            p[7] = 64;
            p[8..24].copy_from_slice(&s.octets());
            p[24..40].copy_from_slice(&d.octets());
            40
        }
        // The source comes from a route lookup of the target: same family.
        _ => unreachable!("source and target of one family"),
    };
    p[ip_len..ip_len + SYN_LEN].copy_from_slice(&tcp);
    (p, ip_len + SYN_LEN)
}

fn ipv4_header_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Our SYN's TCP part from `source`:`lport` to `target`, checksummed.
fn syn_segment(source: IpAddr, target: SocketAddr, lport: u16, isn: u32) -> [u8; SYN_LEN] {
    let mut s = [0u8; SYN_LEN];
    s[0..2].copy_from_slice(&lport.to_be_bytes());
    s[2..4].copy_from_slice(&target.port().to_be_bytes());
    s[4..8].copy_from_slice(&isn.to_be_bytes());
    s[12] = ((SYN_LEN / 4) as u8) << 4;
    s[13] = TCP_SYN;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // MSS option: what an Ethernet path carries.
    let mss: u16 = if target.is_ipv4() { 1460 } else { 1440 };
    s[20] = 2;
    s[21] = 4;
    s[22..24].copy_from_slice(&mss.to_be_bytes());
    let c = tcp_checksum(source, target.ip(), &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// The TCP checksum of `seg` (its checksum field zero, or the result verifies to 0)
/// with the IPv4 or IPv6 pseudo-header.
pub fn tcp_checksum(source: IpAddr, dest: IpAddr, seg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    match (source, dest) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            add(&v6(s).octets());
            add(&v6(d).octets());
        }
    }
    add(&(seg.len() as u32).to_be_bytes());
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// [`HalfOpen::send_many`]'s buffers, kept by the caller from call to call: the SYNs
/// of every millisecond are laid out in the same memory. (Allocated per call, the
/// messages sat at the top of the thread's malloc arena, which grew and shrank with
/// mprotect(2) every millisecond: about 5% of the checker's time.)
#[derive(Default)]
pub struct SendBuffers {
    msgs: Vec<OutMsg>,
    hdrs: Vec<libc::mmsghdr>,
    idx: Vec<usize>,
    results: Vec<io::Result<()>>,
}

// SAFETY: the raw pointers in `msgs` and `hdrs` point into `msgs`; they are written,
// used and cleared within one send_many call, so no pointer is live when the buffers
// move to another thread.
unsafe impl Send for SendBuffers {}

/// One message to send: the packet, its destination and its source
/// (IP_PKTINFO / IPV6_PKTINFO), laid out for sendmsg(2)/sendmmsg(2).
struct OutMsg {
    packet: [u8; 64],
    len: usize,
    iov: libc::iovec,
    /// A sockaddr_in or sockaddr_in6.
    name: libc::sockaddr_in6,
    namelen: libc::socklen_t,
    control: [u64; 8],
    controllen: usize,
}

impl OutMsg {
    fn new(syn: &Syn) -> Self {
        Self::of(&syn.packet[..syn.len], syn.source, syn.target)
    }

    fn of(seg: &[u8], source: IpAddr, target: SocketAddr) -> Self {
        let mut packet = [0u8; 64];
        let len = seg.len().min(packet.len());
        packet[..len].copy_from_slice(&seg[..len]);
        let mut m = OutMsg {
            packet,
            len,
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: a zeroed sockaddr_in6 is a valid value.
            name: unsafe { zeroed() },
            namelen: 0,
            control: [0; 8],
            controllen: 0,
        };
        // A scratch header, only to place the cmsg inside `control`.
        // SAFETY: a zeroed msghdr is a valid value.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_control = m.control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: control is 64 bytes, room for a cmsghdr and an in_pktinfo or
        // in6_pktinfo; the sockaddr_in written over `name` fits in a sockaddr_in6.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            let (level, kind, info_len) = match (target, source) {
                (SocketAddr::V4(t), IpAddr::V4(s)) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: 0,
                        sin_addr: libc::in_addr {
                            s_addr: u32::from(*t.ip()).to_be(),
                        },
                        sin_zero: [0; 8],
                    };
                    std::ptr::write_unaligned((&raw mut m.name).cast(), sin);
                    m.namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(s).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
                    (
                        libc::IPPROTO_IP,
                        libc::IP_PKTINFO,
                        size_of::<libc::in_pktinfo>(),
                    )
                }
                (SocketAddr::V6(t), IpAddr::V6(s)) => {
                    m.name.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    m.name.sin6_addr.s6_addr = t.ip().octets();
                    m.name.sin6_scope_id = t.scope_id();
                    m.namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: s.octets(),
                        },
                        ipi6_ifindex: t.scope_id(),
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
                    (
                        libc::IPPROTO_IPV6,
                        libc::IPV6_PKTINFO,
                        size_of::<libc::in6_pktinfo>(),
                    )
                }
                // The source comes from a route lookup of the target: same family.
                _ => unreachable!("source and target of one family"),
            };
            (*c).cmsg_level = level;
            (*c).cmsg_type = kind;
            (*c).cmsg_len = libc::CMSG_LEN(info_len as u32) as usize;
            m.controllen = libc::CMSG_SPACE(info_len as u32) as usize;
        }
        m
    }

    /// The header for sendmsg/sendmmsg, pointing into `self` (which must not move
    /// while it is in use).
    fn header(&mut self) -> libc::mmsghdr {
        self.iov = libc::iovec {
            iov_base: self.packet.as_mut_ptr().cast(),
            iov_len: self.len,
        };
        // SAFETY: a zeroed mmsghdr is a valid value.
        let mut h: libc::mmsghdr = unsafe { zeroed() };
        h.msg_hdr.msg_name = (&raw mut self.name).cast();
        h.msg_hdr.msg_namelen = self.namelen;
        h.msg_hdr.msg_iov = &raw mut self.iov;
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = self.control.as_mut_ptr().cast();
        h.msg_hdr.msg_controllen = self.controllen;
        h
    }
}

/// sendmsg(2) of `seg` to `target` from `source` (IP_PKTINFO / IPV6_PKTINFO).
fn send_to(fd: RawFd, seg: &[u8], source: IpAddr, target: SocketAddr) -> io::Result<()> {
    if source.is_ipv4() != target.is_ipv4() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut m = OutMsg::of(seg, source, target);
    let h = m.header();
    // SAFETY: the header points into `m`, alive and unmoved.
    let n = unsafe { libc::sendmsg(fd, &h.msg_hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Runs `f` in a fresh network namespace of its own (see `test_netns`).
    fn in_fresh_netns<F: Future<Output = ()> + 'static>(
        setup: &'static [&'static str],
        f: impl FnOnce() -> F + Send + 'static,
    ) {
        crate::test_netns::run_in(crate::test_netns::Netns::Fresh(setup), f);
    }

    /// One probe as `checks::run` bounds it.
    async fn check(engine: &Arc<HalfOpen>, target: SocketAddr, ms: u64) -> String {
        let t = Duration::from_millis(ms);
        match tokio::time::timeout(t, engine.probe(target, t)).await {
            Ok(Ok(Answer::Open)) => "open".into(),
            Ok(Ok(Answer::Refused)) => "refused".into(),
            Ok(Ok(Answer::Unreachable(s))) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "timeout".into(),
        }
    }

    fn listener(addr: &str) -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    fn closed_port(addr: &str) -> SocketAddr {
        listener(addr).1
    }

    /// The listener never had a connection to accept.
    fn assert_nothing_accepted(l: &TcpListener) {
        match l.accept() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("the listener accepted a connection: {other:?}"),
        }
    }

    /// Every TCP socket of this namespace but the listeners: none may be left
    /// (TIME_WAIT, SYN_RECV, ESTABLISHED…).
    fn tcp_sockets_other_than_listeners() -> Vec<String> {
        ["tcp", "tcp6"]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .filter(|l| l.split_whitespace().nth(3) != Some("0A"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn pending(engine: &HalfOpen) -> usize {
        lock(&engine.pending).len()
    }

    /// [`HalfOpen::poll`]'s rule for reading a raw socket behind XDP.
    #[test]
    fn quiet_raw_sockets_are_read_less_often_only_behind_xdp() {
        // Without XDP every poll reads, however quiet.
        assert!((0..100).all(|pass| raw_read_due(false, 1_000, pass)));
        // With XDP: every poll until RAW_QUIET_PASSES empty ones in a row…
        assert!((0..100).all(|pass| raw_read_due(true, RAW_QUIET_PASSES - 1, pass)));
        // …then one in RAW_QUIET_EVERY, never fewer.
        let reads = (0..800)
            .filter(|&pass| raw_read_due(true, RAW_QUIET_PASSES, pass))
            .count() as u64;
        assert_eq!(reads, 800 / RAW_QUIET_EVERY);
        let mut gap = 0;
        for pass in 0..800 {
            gap = if raw_read_due(true, RAW_QUIET_PASSES + pass, pass) {
                0
            } else {
                gap + 1
            };
            assert!(gap < RAW_QUIET_EVERY, "poll {pass}: {gap} skipped in a row");
        }
    }

    /// XDP recognises our answers by the cookie in the low bits of the ISN: it must be
    /// the target's (address and port), under this engine's key; the high bits vary.
    #[test]
    fn isns_carry_the_targets_cookie() {
        if !is_root() {
            eprintln!("skipped: needs root (raw sockets)");
            return;
        }
        let e = HalfOpen::new().expect("engine");
        let ctrl = e.hc_ctrl();
        assert_eq!(
            (ctrl.port_lo, ctrl.port_hi),
            (*e.port_range().start(), *e.port_range().end())
        );
        assert_eq!(ctrl.secret, e.secret);
        for target in ["10.1.0.7:80", "[fd00:1::7]:443"] {
            let target: SocketAddr = target.parse().unwrap();
            let (addr, _) = crate::sync::addr_bytes(target.ip());
            let cookie = lb_common::hash::hc_cookie(&e.secret, &addr, target.port());
            let isns: Vec<u32> = (0..64).map(|_| e.isn_for(target)).collect();
            assert!(
                isns.iter().all(|i| i & HC_COOKIE_MASK == cookie),
                "{isns:x?}"
            );
            assert!(
                isns.iter().any(|i| i >> 24 != isns[0] >> 24),
                "the high bits never vary: {isns:x?}"
            );
            // Another port of the same address: another cookie.
            let other_port = lb_common::hash::hc_cookie(&e.secret, &addr, target.port() + 1);
            assert_ne!(other_port, cookie);
        }
        let other = HalfOpen::new().expect("a second engine");
        assert_ne!(other.secret, e.secret, "the key is per engine");
    }

    #[test]
    fn checksum_verifies_and_matches_a_reference() {
        let src: IpAddr = "10.0.0.1".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let seg = syn_segment(src, dst, 40000, 0x0102_0304);
        // A correct checksum makes the sum over pseudo-header and segment 0xffff.
        assert_eq!(tcp_checksum(src, dst.ip(), &seg), 0);
        // Computed by hand: pseudo-header 0a00+0001+0a00+0002+0006+0018, segment
        // 9c40+0050+0102+0304+0000+0000+6002+faf0+0000+0000+0204+05b4.
        let mut sum: u32 = [
            0x0a00, 0x0001, 0x0a00, 0x0002, 0x0006, 0x0018, 0x9c40, 0x0050, 0x0102, 0x0304, 0x6002,
            0xfaf0, 0x0204, 0x05b4,
        ]
        .iter()
        .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(u16::from_be_bytes([seg[16], seg[17]]), !(sum as u16));
        let src6: IpAddr = "2001:db8::1".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let seg6 = syn_segment(src6, dst6, 40001, 7);
        assert_eq!(tcp_checksum(src6, dst6.ip(), &seg6), 0);
        assert_eq!(&seg6[20..24], &[2, 4, 0x05, 0xa0], "MSS 1440");
        // The IPv4 header's checksum verifies too.
        let (p, len) = syn_packet(src, dst, 40000, 0x0102_0304);
        assert_eq!(len, 44);
        assert_eq!(ipv4_header_checksum(&p[..20]), 0);
        assert_eq!(&p[20..44], &seg);
        let (p6, len6) = syn_packet(src6, dst6, 40001, 7);
        assert_eq!((len6, p6[6], &p6[40..64]), (64, 6, &seg6[..]));
    }

    #[test]
    fn icmp_errors_read_as_reasons() {
        assert_eq!(icmp_detail(3, 1).unwrap(), "host unreachable (ICMP)");
        assert_eq!(
            icmp_detail(3, 13).unwrap(),
            "administratively prohibited (ICMP)"
        );
        assert_eq!(icmp_detail(3, 4), None, "fragmentation needed is not fatal");
        assert_eq!(icmp6_detail(1, 3).unwrap(), "host unreachable (ICMPv6)");
        assert_eq!(icmp6_detail(2, 0), None, "packet too big is not fatal");
    }

    /// Open and closed ports on IPv4 and IPv6, what the filter lets through, and no
    /// connection nor leftover socket on either side.
    #[test]
    fn open_passes_closed_is_refused_and_nothing_is_left_behind() {
        if !is_root() {
            eprintln!("skipped: raw sockets and namespaces need root");
            return;
        }
        in_fresh_netns(&[], || async {
            let engine = Arc::new(HalfOpen::new().unwrap());
            assert!(engine.v4.is_some() && engine.v6.is_some());
            let (l4, a4) = listener("127.0.0.1:0");
            let (l6, a6) = listener("[::1]:0");
            // Ordinary TCP traffic in both families: the filter keeps it out.
            for a in [a4, a6] {
                for _ in 0..20 {
                    let s = std::net::TcpStream::connect(a).unwrap();
                    drop(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while l4.accept().is_ok() {}
            while l6.accept().is_ok() {}
            // Give the receive task a chance to read anything that got through.
            check(&engine, closed_port("127.0.0.1:0"), 1000).await;
            assert_eq!(engine.received(), 1, "only the one RST passed the filter");
            // Let the connections above finish their TIME_WAIT-free close (the client
            // side of a normal close does linger: wait those out of the picture).
            let before = tcp_sockets_other_than_listeners().len();

            for _ in 0..5 {
                assert_eq!(check(&engine, a4, 1000).await, "open");
                assert_eq!(check(&engine, a6, 1000).await, "open");
            }
            assert_eq!(
                check(&engine, closed_port("127.0.0.1:0"), 1000).await,
                "refused"
            );
            assert_eq!(
                check(&engine, closed_port("[::1]:0"), 1000).await,
                "refused"
            );
            // One SYN-ACK per open check and one RST per closed one: nothing else.
            assert_eq!(engine.received(), 1 + 10 + 2);
            assert_eq!(pending(&engine), 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_nothing_accepted(&l4);
            assert_nothing_accepted(&l6);
            let after = tcp_sockets_other_than_listeners();
            assert_eq!(after.len(), before, "sockets left behind: {after:?}");
        });
    }

    /// A SYN whose checksum is wrong gets no answer (the same one, right, does): the
    /// kernel checks it, so the right one is right.
    #[test]
    fn a_corrupted_checksum_is_ignored_by_the_kernel() {
        if !is_root() {
            eprintln!("skipped: raw sockets and namespaces need root");
            return;
        }
        in_fresh_netns(&[], || async {
            let engine = Arc::new(HalfOpen::new().unwrap());
            let (_l, a) = listener("127.0.0.1:0");
            engine.ensure_receiver();
            let fd = engine.v4.as_ref().unwrap().as_raw_fd();
            let src = engine.source_for(a).unwrap();
            for corrupt in [true, false] {
                let isn: u32 = rand::random();
                let slot = engine.take_port(a, isn).await;
                let (mut syn, len) = syn_packet(src, a, slot.key.2, isn);
                if corrupt {
                    // The TCP checksum, after the 20-byte IPv4 header.
                    syn[20 + 17] ^= 0x5a;
                }
                engine.send(fd, &syn[..len], src, a).await.unwrap();
                let answered =
                    tokio::time::timeout(Duration::from_millis(300), slot.waiter.wake.notified())
                        .await
                        .is_ok();
                assert_eq!(answered, !corrupt, "corrupt = {corrupt}");
                if !corrupt {
                    assert_eq!(*lock(&slot.waiter.answer), Some(Answer::Open));
                }
            }
        });
    }

    /// Black-holed destinations (sent out of a veth to a MAC nobody has: its peer
    /// drops them) time out; ICMP errors (REJECT in INPUT) fail with their reason; the source
    /// ports are free again afterwards.
    #[test]
    fn blackhole_times_out_and_icmp_errors_fail_with_their_reason() {
        if !is_root() {
            eprintln!("skipped: raw sockets and namespaces need root");
            return;
        }
        in_fresh_netns(
            &[
                "link add bh0 type veth peer name bh1",
                "link set bh0 up",
                "link set bh1 up",
                "addr add 192.0.2.1/24 dev bh0",
                "-6 addr add 2001:db8::1/64 dev bh0 nodad",
                "neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev bh0 nud permanent",
                "-6 neigh add 2001:db8::2 lladdr 02:00:00:00:00:02 dev bh0 nud permanent",
                "addr add 192.0.2.9/32 dev lo",
                "-6 addr add 2001:db8::9/128 dev lo",
                "iptables -A INPUT -d 192.0.2.9 -p tcp -j REJECT --reject-with icmp-host-unreachable",
                "ip6tables -A INPUT -d 2001:db8::9 -p tcp -j REJECT --reject-with icmp6-adm-prohibited",
            ],
            || async {
                let engine = Arc::new(HalfOpen::new().unwrap());
                for t in ["192.0.2.2:80", "[2001:db8::2]:80"] {
                    let t0 = Instant::now();
                    assert_eq!(
                        check(&engine, t.parse().unwrap(), 300).await,
                        "timeout",
                        "{t}"
                    );
                    let took = t0.elapsed();
                    assert!(took < Duration::from_millis(600), "{t}: {took:?}");
                }
                assert_eq!(
                    check(&engine, "192.0.2.9:80".parse().unwrap(), 1000).await,
                    "host unreachable (ICMP)"
                );
                assert_eq!(
                    check(&engine, "[2001:db8::9]:80".parse().unwrap(), 1000).await,
                    "administratively prohibited (ICMPv6)"
                );
                // No route at all: the send itself fails.
                let r = check(&engine, "198.51.100.1:80".parse().unwrap(), 300).await;
                assert!(r.starts_with("error: ") && r.contains("nreachable"), "{r}");
                assert_eq!(pending(&engine), 0, "timed-out checks free their port");
                // A later check of the same target still works (a late answer could
                // not be mistaken for its: the ISN differs).
                let (_l, a) = listener("127.0.0.1:0");
                assert_eq!(check(&engine, a, 1000).await, "open");
            },
        );
    }

    /// Many checks at once, more than the pool has ports, of the same open and closed
    /// ports: each gets its own answer.
    #[test]
    fn concurrent_checks_of_one_port_are_matched() {
        if !is_root() {
            eprintln!("skipped: raw sockets and namespaces need root");
            return;
        }
        in_fresh_netns(&[], || async {
            let engine = Arc::new(HalfOpen::new().unwrap());
            let (l4, open4) = listener("127.0.0.1:0");
            let (l6, open6) = listener("[::1]:0");
            let closed4 = closed_port("127.0.0.1:0");
            let n = 3 * usize::from(POOL_PORTS);
            let targets: Vec<(SocketAddr, &str)> = (0..n)
                .map(|i| match i % 3 {
                    0 => (open4, "open"),
                    1 => (open6, "open"),
                    _ => (closed4, "refused"),
                })
                .collect();
            let results = futures_util::future::join_all(
                targets.iter().map(|(t, _)| check(&engine, *t, 2000)),
            )
            .await;
            for ((t, want), got) in targets.iter().zip(&results) {
                assert_eq!(got, want, "{t}");
            }
            assert_eq!(engine.received(), n as u64, "one answer per check");
            assert_eq!(pending(&engine), 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_nothing_accepted(&l4);
            assert_nothing_accepted(&l6);
            let left = tcp_sockets_other_than_listeners();
            assert!(left.is_empty(), "sockets left behind: {left:?}");
        });
    }

    /// The receive task dies with its runtime; the next check, on another runtime,
    /// starts another, and the engine goes on working.
    #[test]
    fn a_new_runtime_takes_over_the_receiving() {
        if !is_root() {
            eprintln!("skipped: raw sockets need root");
            return;
        }
        let engine = Arc::new(HalfOpen::new().unwrap());
        let (_l, a) = listener("127.0.0.1:0");
        for round in 0..3 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let got = rt.block_on(check(&engine, a, 1000));
            assert_eq!(got, "open", "round {round}");
            drop(rt);
            assert!(!engine.receiving.load(Ordering::Acquire), "round {round}");
        }
    }
}
