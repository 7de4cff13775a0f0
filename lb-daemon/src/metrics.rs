//! The Prometheus exporter: `/metrics` (OpenMetrics or Prometheus text, by the scraper's
//! `Accept`), `/stats.json` (the same sample for the live page) and `/stats` (the page,
//! [`crate::stats_page`]) on `daemon.metrics_listen`.
//!
//! Everything is read at scrape time: the per-CPU counters of the data plane (two
//! BPF_MAP_LOOKUP_BATCH calls, one per counter array) are summed then, under the runtime
//! lock, into one [`Sample`], which is encoded after the lock is released. The one exception is the connection table (up to millions of entries): a
//! background task walks it every `daemon.metrics_conn_interval` seconds with a map
//! handle of its own (no lock held) and the scrape reads that snapshot; its age is exported.
//!
//! Series (prefix `lb_`; node_exporter's IPVS names and labels where one exists):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `lb_connections_total`, `lb_incoming_packets_total`, `lb_incoming_bytes_total` | counter | local_address, local_port, proto (per service) |
//! | `lb_backend_connections_total`, `lb_backend_incoming_packets_total`, `lb_backend_incoming_bytes_total` | counter | local_address, local_port, remote_address, remote_port, proto |
//! | `lb_backend_connections_active`, `lb_backend_connections_inactive`, `lb_backend_weight` | gauge | same |
//! | `lb_backend_up`, `lb_backend_state` (+ `state`: UP, DOWN, DOWN-WAIT, UP-WARM) | gauge | same |
//! | `lb_service_backends` (+ `state`: healthy, unhealthy) | gauge | local_address, local_port, proto |
//! | `lb_backend_check_duration_seconds` (the last check) | gauge | per backend |
//! | `lb_backend_checks_total`, `lb_backend_check_failures_total`, `lb_backend_check_up_down_total` | counter | per backend |
//! | `lb_health_check_duration_seconds` | histogram | type (tcp, http, https, udp, exec) |
//! | `lb_health_check_failures_total` | counter | type, reason (timeout, refused, unreachable, tls, status, content, exit, other) |
//! | `lb_health_transitions_total` | counter | from, to (UP, DOWN, DOWN-WAIT, UP-WARM) |
//! | `lb_backends_unresolved` | gauge | — |
//! | `lb_mac_resolution_failures_total` | counter | — |
//! | `lb_xdp_packets_total` | counter | action (pass, drop, tx), reason |
//! | `lb_cpu_packets_total` | counter | cpu |
//! | `lb_conn_table_entries`, `lb_conn_table_capacity`, `lb_conn_snapshot_age_seconds`, `lb_conn_snapshot_duration_seconds` | gauge | — |
//! | `lb_events_total` | counter | outcome (sent, lost, suppressed): the EVENTS ring buffer |
//! | `lb_build_info` | info | version |
//! | `lb_config_generation`, `lb_config_last_apply_timestamp_seconds` | gauge | — |
//! | `lb_config_apply_errors_total` | counter | — |
//! | `lb_api_requests_total` | counter | listener (unix, tcp), code |
//!
//! Service and backend counters are separate names so that `sum()` over any label of
//! one name makes sense (a service's own series would otherwise be counted twice).
//!
//! Not exported, on purpose:
//! - outgoing packets and bytes (node_exporter's `*_outgoing_*`): in DR and tunnel mode
//!   the real servers answer the clients directly, so replies never cross the load
//!   balancer and there is nothing to count; a zero would look like a measurement.
//! - node_exporter's `local_mark` label: there are no firewall-mark services.
//! - a duration histogram per backend: with thousands of backends that is tens of
//!   thousands of series; the histogram is per check type, and each backend has the
//!   last check's duration (HAProxy's `check_duration`) and its failure counters.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::{self, Write as _},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use axum::{
    Router,
    extract::{Request, State as AxState},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use lb_common::{Conn, Counters, FlowKey, Reason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, LabelSetEncoder},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        info::Info,
    },
    registry::{Registry, Unit},
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    api::Ctx,
    bpf_maps::DataPlane,
    runtime::Runtime,
    state::{Forward, Proto, Scheduler, ServiceId, State},
    sync::Projector,
};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

// ---------------------------------------------------------------------------------------
// Health: the one place the exporter and the page learn a backend's health from.
// ---------------------------------------------------------------------------------------

/// A backend's health state, with DPVS's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HealthState {
    #[serde(rename = "UP")]
    Up,
    #[serde(rename = "DOWN")]
    Down,
    /// Failing, not yet confirmed down.
    #[serde(rename = "DOWN-WAIT")]
    DownWait,
    /// Back up, still warming up.
    #[serde(rename = "UP-WARM")]
    UpWarm,
}

impl HealthState {
    pub const ALL: [HealthState; 4] = [
        HealthState::Up,
        HealthState::Down,
        HealthState::DownWait,
        HealthState::UpWarm,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            HealthState::Up => "UP",
            HealthState::Down => "DOWN",
            HealthState::DownWait => "DOWN-WAIT",
            HealthState::UpWarm => "UP-WARM",
        }
    }

    /// Passing its checks: UP and UP-WARM (`lb_backend_up` = 1, counted healthy).
    pub const fn healthy(self) -> bool {
        matches!(self, HealthState::Up | HealthState::UpWarm)
    }
}

/// The last check of a backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastCheck {
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub unix_time: f64,
    pub detail: String,
    /// How long the last attempt took.
    pub duration_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendHealth {
    pub state: HealthState,
    /// `None`: never checked (no checker).
    pub last_check: Option<LastCheck>,
    /// Checks run, and failed, since the backend was configured.
    pub checks: u64,
    pub check_failures: u64,
    /// Times it went DOWN.
    pub downs: u64,
}

impl BackendHealth {
    /// UP, never checked.
    pub fn up() -> Self {
        BackendHealth {
            state: HealthState::Up,
            last_check: None,
            checks: 0,
            check_failures: 0,
            downs: 0,
        }
    }
}

/// Check durations of one check type: cumulative buckets `(le, count)`, +Inf last.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckHistogram {
    pub kind: &'static str,
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<(f64, u64)>,
}

/// The checker as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HealthTotals {
    pub durations: Vec<CheckHistogram>,
    /// (check type, reason, failures).
    pub failures: Vec<(&'static str, &'static str, u64)>,
    /// (from, to, transitions).
    pub transitions: Vec<(&'static str, &'static str, u64)>,
}

/// Where backend health comes from. The health checker will implement this; until it
/// exists, [`NoChecks`] is the source.
pub trait HealthSource: Send + Sync {
    fn backend(&self, service: &ServiceId, backend: IpAddr) -> BackendHealth;
    /// Durations, failures and transitions of every check so far.
    fn totals(&self) -> HealthTotals {
        HealthTotals::default()
    }
}

/// No health checks: every configured backend is UP and has never been checked.
pub struct NoChecks;

impl HealthSource for NoChecks {
    fn backend(&self, _: &ServiceId, _: IpAddr) -> BackendHealth {
        BackendHealth::up()
    }
}

// ---------------------------------------------------------------------------------------
// Connection-table snapshot.
// ---------------------------------------------------------------------------------------

/// Connection-table entries by backend id, as of one walk of the table.
#[derive(Clone, Debug, Default)]
pub struct ConnSnapshot {
    /// When the walk finished; `None` before the first one.
    pub taken: Option<Instant>,
    /// How long the walk took.
    pub walk: Duration,
    /// Every entry in the table (the LRU's occupancy, stale ones included).
    pub entries: u64,
    /// Backend id → (active, inactive) live entries.
    pub by_backend: HashMap<u32, (u64, u64)>,
}

impl ConnSnapshot {
    /// Counts `conns` as IPVS does: an entry is a live connection of its backend while it
    /// still pins the flow (idle less than `timeout_ns`, made in its VIP's current
    /// generation, `gens`: VIP index → generation; closing entries idle out after
    /// CONN_CLOSING_TIMEOUT_SECS); it is active while ESTABLISHED (client ACK seen, no
    /// FIN or RST since), inactive otherwise. Stale entries only take room.
    pub fn count(
        conns: &[Conn],
        gens: &HashMap<u32, u32>,
        timeout_ns: u64,
        now_ns: u64,
        walk: Duration,
    ) -> Self {
        let mut by_backend: HashMap<u32, (u64, u64)> = HashMap::new();
        for c in conns {
            let timeout = c.timeout_secs(timeout_ns / 1_000_000_000) * 1_000_000_000;
            let live = now_ns.saturating_sub(c.last_seen_ns) < timeout
                && gens.get(&c.vip_idx) == Some(&c.vip_gen);
            if !live {
                continue;
            }
            let e = by_backend.entry(c.backend).or_default();
            if c.is_active() {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        ConnSnapshot {
            taken: Some(Instant::now()),
            walk,
            entries: conns.len() as u64,
            by_backend,
        }
    }
}

/// A handle of its own on the data plane's connection table, so that walking it takes
/// no lock on the [`DataPlane`].
pub struct ConnReader {
    map: Map,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Opens map `name` of the loaded `xdp_lb` by id: a handle of our own, usable without
/// the [`DataPlane`].
fn open_map(dp: &DataPlane, name: &str) -> Result<MapData> {
    let ids = dp
        .ebpf
        .program("xdp_lb")
        .context("no program xdp_lb")?
        .info()
        .context("xdp_lb program info")?
        .map_ids()
        .context("xdp_lb map ids")?
        .context("the kernel does not list a program's maps")?;
    for id in ids {
        let info = MapInfo::from_id(id).context("map info")?;
        if info.name_as_str() == Some(name) {
            return MapData::from_id(id).with_context(|| format!("opening {name} by id"));
        }
    }
    bail!("xdp_lb uses no map named {name}")
}

/// A BPF_MAP_LOOKUP_BATCH walk of the map behind `fd`, `chunk` keys per call, until
/// the end or `limit` keys: the values, `per_key` of type `V` per key (the CPU count
/// for per-CPU maps). `K` is the key type.
fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    fd: std::os::fd::RawFd,
    per_key: usize,
    mut chunk: usize,
    limit: Option<usize>,
) -> io::Result<Vec<V>> {
    if limit == Some(0) {
        return Ok(Vec::new());
    }
    let mut keys: Vec<K> = Vec::new();
    let mut vals: Vec<V> = Vec::new();
    let mut out = Vec::new();
    // The position token: a bucket number (u32) for hash maps, a key (u32) for arrays.
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        keys.resize(chunk, K::default());
        vals.resize(chunk * per_key, V::default());
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_mut_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: vals.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `count` keys and `count × per_key` values of the
        // map's own key and value types (plain integers: any bytes are valid), the
        // tokens 8 bytes (more than a u32 key or bucket); the kernel writes `count`
        // back into `attr`, which lives across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let n = (attr.count as usize).min(chunk);
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) => {
                    out.extend_from_slice(&vals[..n * per_key]);
                    return Ok(out);
                }
                // One hash bucket holds more entries than fit: retry larger.
                Some(libc::ENOSPC) if n == 0 => {
                    chunk *= 2;
                    continue;
                }
                _ => return Err(e),
            }
        }
        out.extend_from_slice(&vals[..n * per_key]);
        if n == 0 || limit.is_some_and(|l| out.len() >= l * per_key) {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

impl ConnReader {
    /// Finds `CONNS` among the maps of the loaded `xdp_lb` and opens it by id.
    pub fn open(dp: &DataPlane) -> Result<Self> {
        let data = open_map(dp, lb_common::map_names::CONNS)?;
        Ok(ConnReader {
            map: Map::from_map_data(data)?,
        })
    }

    /// Every entry's value: BPF_MAP_LOOKUP_BATCH (a few syscalls for the whole table),
    /// or one entry at a time where the kernel refuses batches.
    pub fn values(&self) -> Result<Vec<Conn>> {
        match self.batch() {
            Ok(v) => Ok(v),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                let m = BpfHashMap::<_, FlowKey, Conn>::try_from(&self.map)?;
                Ok(m.iter().filter_map(|r| r.ok()).map(|(_, c)| c).collect())
            }
            Err(e) => Err(e).context("BPF_MAP_LOOKUP_BATCH on CONNS"),
        }
    }

    /// The walk one key at a time (aya's iterator), for comparison.
    pub fn values_by_key(&self) -> Result<Vec<Conn>> {
        let m = BpfHashMap::<_, FlowKey, Conn>::try_from(&self.map)?;
        Ok(m.iter().filter_map(|r| r.ok()).map(|(_, c)| c).collect())
    }

    /// The walk by BPF_MAP_LOOKUP_BATCH only (no fallback).
    pub fn values_batched(&self) -> io::Result<Vec<Conn>> {
        self.batch()
    }

    fn batch(&self) -> io::Result<Vec<Conn>> {
        let fd = match &self.map {
            Map::HashMap(d) | Map::LruHashMap(d) => d.fd().as_fd().as_raw_fd(),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        lookup_batch::<FlowKey, Conn>(fd, 1, 8192, None)
    }
}

/// The per-CPU traffic counters of every VIP index and backend id, each table read
/// with one BPF_MAP_LOOKUP_BATCH (instead of a syscall per VIP and per backend).
pub struct CounterTables {
    ncpus: usize,
    vips: Vec<Counters>,
    backends: Vec<Counters>,
}

impl CounterTables {
    /// Reads the first `vips` VIP indexes and `backends` backend ids (at most the
    /// capacities): beyond the highest in use there is nothing to read.
    pub fn read(dp: &DataPlane, vips: u32, backends: u32) -> Result<Self> {
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("possible CPUs")?
            .get() as usize;
        let table = |name: &str, entries: u32| -> Result<Vec<Counters>> {
            let map = open_map(dp, name)?;
            let fd = map.fd().as_fd().as_raw_fd();
            let n = entries as usize;
            let v = lookup_batch::<u32, Counters>(fd, ncpus, n.max(1), Some(n))
                .with_context(|| format!("BPF_MAP_LOOKUP_BATCH on {name}"))?;
            if v.len() != entries as usize * ncpus {
                bail!(
                    "{name}: {} values read, {entries} × {ncpus} expected",
                    v.len()
                );
            }
            Ok(v)
        };
        Ok(CounterTables {
            ncpus,
            vips: table(lb_common::map_names::VIP_STATS, vips.min(dp.cap.max_vips))?,
            backends: table(
                lb_common::map_names::BACKEND_STATS,
                backends.min(dp.cap.max_backends),
            )?,
        })
    }

    /// VIP `idx`'s counters, one per possible CPU.
    pub fn vip_per_cpu(&self, idx: u32) -> &[Counters] {
        let i = idx as usize * self.ncpus;
        self.vips.get(i..i + self.ncpus).unwrap_or(&[])
    }

    /// Backend `id`'s counters summed over CPUs.
    pub fn backend(&self, id: u32) -> Counters {
        let i = id as usize * self.ncpus;
        sum(self.backends.get(i..i + self.ncpus).unwrap_or(&[]))
    }
}

/// The traffic counters (packets, bytes, new connections) summed over CPUs.
fn sum(per_cpu: &[Counters]) -> Counters {
    let mut c = Counters::default();
    for v in per_cpu {
        c.packets += v.packets;
        c.bytes += v.bytes;
        c.new_conns += v.new_conns;
    }
    c
}

/// Current generation of each installed VIP index, and the idle timeout, in ns.
pub fn conn_context(
    dp: &DataPlane,
    proj: &Projector,
    state: &State,
) -> Result<(HashMap<u32, u32>, u64)> {
    let mut gens = HashMap::new();
    for s in &state.services {
        if let Some(idx) = proj.vip_idx(&s.id()) {
            gens.insert(idx, dp.vip_gen(idx)?);
        }
    }
    Ok((
        gens,
        u64::from(dp.ctrl()?.conn_timeout_secs) * 1_000_000_000,
    ))
}

/// Walks the table once with `reader` and counts it (what the background task does).
pub fn take_conn_snapshot(
    reader: &ConnReader,
    gens: &HashMap<u32, u32>,
    timeout_ns: u64,
) -> Result<ConnSnapshot> {
    let t = Instant::now();
    let values = reader.values()?;
    let walk = t.elapsed();
    Ok(ConnSnapshot::count(
        &values,
        gens,
        timeout_ns,
        crate::clock::now_ns(),
        walk,
    ))
}

// ---------------------------------------------------------------------------------------
// The exporter's own state: control-plane counters, the snapshot, the health source.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    listener: &'static str,
    code: u16,
}

pub struct Metrics {
    pub instance: String,
    api_requests: Family<ApiLabels, Counter>,
    apply_errors: Counter,
    /// f64 bits: Unix time of the last successful apply of the running state.
    last_apply: AtomicU64,
    conns: Mutex<ConnSnapshot>,
    health: Arc<dyn HealthSource>,
    batch_warned: std::sync::atomic::AtomicBool,
    online_cpus: BTreeSet<u32>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// The running state was applied just now (the daemon starts with it applied).
    pub fn new(instance: &str, health: Arc<dyn HealthSource>) -> Self {
        let online_cpus = aya::util::online_cpus()
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        Metrics {
            instance: instance.to_owned(),
            api_requests: Family::default(),
            apply_errors: Counter::default(),
            last_apply: AtomicU64::new(unix_now().to_bits()),
            conns: Mutex::new(ConnSnapshot::default()),
            health,
            batch_warned: Default::default(),
            online_cpus,
        }
    }

    pub fn set_conns(&self, s: ConnSnapshot) {
        *self.conns.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn record_apply(&self, ok: bool) {
        if ok {
            self.last_apply
                .store(unix_now().to_bits(), Ordering::Relaxed);
        } else {
            self.apply_errors.inc();
        }
    }

    pub fn record_api(&self, listener: &'static str, code: u16) {
        self.api_requests
            .get_or_create(&ApiLabels { listener, code })
            .inc();
    }

    pub fn apply_errors(&self) -> u64 {
        self.apply_errors.get()
    }
}

/// Axum middleware for the API routers: counts requests by listener and status code, and
/// `PUT /v1/state` outcomes as applies (success) or apply errors (refused as invalid or
/// failed; a 409 generation conflict is neither).
pub async fn track_api(
    AxState((m, listener)): AxState<(Arc<Metrics>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let is_apply = req.method() == Method::PUT && req.uri().path() == "/v1/state";
    let res = next.run(req).await;
    let code = res.status();
    m.record_api(listener, code.as_u16());
    if is_apply && code != StatusCode::CONFLICT {
        m.record_apply(code.is_success());
    }
    res
}

// ---------------------------------------------------------------------------------------
// The sample: every number the exporter and the page show, read at once.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch when the sample was taken (the page divides by it).
    pub unix_time: f64,
    pub version: &'static str,
    pub instance: String,
    pub generation: u64,
    pub last_apply_unix: f64,
    pub apply_errors: u64,
    pub services: Vec<ServiceSample>,
    pub reasons: Vec<ReasonSample>,
    pub cpus: Vec<CpuSample>,
    pub conn_table: ConnTableSample,
    pub events: EventsSample,
    pub health: HealthTotals,
    pub mac: MacSample,
}

/// MAC resolution of the real servers (and next hops) without a configured MAC.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MacSample {
    /// Real servers left out now: no MAC to forward to.
    pub unresolved: u64,
    /// Times one was left out (it became unresolved, or its reason changed).
    pub failures: u64,
}

/// The EVENTS ring buffer (passive health signals from the data plane).
#[derive(Clone, Debug, Serialize)]
pub struct EventsSample {
    pub sent: u64,
    /// Not sent: the ring was full (the daemon did not drain it fast enough).
    pub lost: u64,
    /// Not sent: the per-backend rate limit.
    pub suppressed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceSample {
    pub id: ServiceId,
    pub scheduler: Scheduler,
    pub persistence: u32,
    pub conns: u64,
    pub inpkts: u64,
    pub inbytes: u64,
    pub backends: Vec<BackendSample>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendSample {
    pub address: IpAddr,
    pub forward: Forward,
    pub weight: u32,
    pub conns: u64,
    pub inpkts: u64,
    pub inbytes: u64,
    pub active_conns: u64,
    pub inactive_conns: u64,
    pub health: BackendHealth,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReasonSample {
    pub action: &'static str,
    pub reason: &'static str,
    pub packets: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuSample {
    pub cpu: u32,
    /// VIP packets this CPU handled (VIP_STATS summed over VIPs).
    pub packets: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnTableSample {
    pub entries: u64,
    pub capacity: u32,
    /// Age of the snapshot the entries and active/inactive counts come from.
    pub snapshot_age_seconds: Option<f64>,
    pub snapshot_duration_seconds: f64,
}

/// Reads the counters of every installed service and backend (per-CPU values summed),
/// the counters by reason and per CPU, and the latest connection snapshot.
pub fn sample(
    dp: &DataPlane,
    proj: &Projector,
    state: &State,
    generation: u64,
    m: &Metrics,
) -> Result<Sample> {
    let conns = m.conns.lock().unwrap_or_else(|e| e.into_inner());
    // Two batch reads, up to the highest VIP index and backend id in use; per-key
    // reads where the kernel refuses batches.
    let (mut vips, mut backends) = (0, 0);
    for s in &state.services {
        let id = s.id();
        if let Some(idx) = proj.vip_idx(&id) {
            vips = vips.max(idx + 1);
        }
        for r in &s.backends {
            if let Some(b) = proj.backend_id(&id, r.address) {
                backends = backends.max(b + 1);
            }
        }
    }
    let tables = match CounterTables::read(dp, vips, backends) {
        Ok(t) => Some(t),
        Err(e) => {
            if !m.batch_warned.swap(true, Ordering::Relaxed) {
                warn!("reading the counters key by key: {e:#}");
            }
            None
        }
    };
    let mut cpu_packets: Vec<u64> = Vec::new();
    let mut services = Vec::with_capacity(state.services.len());
    for s in &state.services {
        let id = s.id();
        let Some(idx) = proj.vip_idx(&id) else {
            continue;
        };
        let owned;
        let per_cpu = match &tables {
            Some(t) => t.vip_per_cpu(idx),
            None => {
                owned = dp.vip_counters_per_cpu(idx)?;
                &owned[..]
            }
        };
        if cpu_packets.len() < per_cpu.len() {
            cpu_packets.resize(per_cpu.len(), 0);
        }
        let (mut c, mut p, mut b) = (0, 0, 0);
        for (cpu, v) in per_cpu.iter().enumerate() {
            cpu_packets[cpu] += v.packets;
            c += v.new_conns;
            p += v.packets;
            b += v.bytes;
        }
        let mut backends = Vec::with_capacity(s.backends.len());
        for r in &s.backends {
            let Some(bid) = proj.backend_id(&id, r.address) else {
                continue;
            };
            let k = match &tables {
                Some(t) => t.backend(bid),
                None => dp.backend_counters(bid)?,
            };
            let (active, inactive) = conns.by_backend.get(&bid).copied().unwrap_or_default();
            backends.push(BackendSample {
                address: r.address,
                forward: r.forward,
                weight: r.weight,
                conns: k.new_conns,
                inpkts: k.packets,
                inbytes: k.bytes,
                active_conns: active,
                inactive_conns: inactive,
                health: m.health.backend(&id, r.address),
            });
        }
        services.push(ServiceSample {
            id,
            scheduler: s.scheduler,
            persistence: s.persistence,
            conns: c,
            inpkts: p,
            inbytes: b,
            backends,
        });
    }
    let cpus = if m.online_cpus.is_empty() {
        (0..cpu_packets.len() as u32).collect()
    } else {
        m.online_cpus.clone()
    };
    let cpus = cpus
        .into_iter()
        .chain(
            // A CPU gone offline keeps what it counted.
            cpu_packets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(c, _)| c as u32),
        )
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .map(|cpu| CpuSample {
            cpu,
            packets: cpu_packets.get(cpu as usize).copied().unwrap_or(0),
        })
        .collect();
    let (sent, lost, suppressed) = dp.event_stats()?;
    let reasons = dp
        .reason_counts()?
        .into_iter()
        .map(|(r, n): (Reason, u64)| ReasonSample {
            action: r.action(),
            reason: r.label(),
            packets: n,
        })
        .collect();
    Ok(Sample {
        unix_time: unix_now(),
        version: env!("CARGO_PKG_VERSION"),
        instance: m.instance.clone(),
        generation,
        last_apply_unix: f64::from_bits(m.last_apply.load(Ordering::Relaxed)),
        apply_errors: m.apply_errors(),
        services,
        reasons,
        cpus,
        conn_table: ConnTableSample {
            entries: conns.entries,
            capacity: dp.cap.conn_table,
            snapshot_age_seconds: conns.taken.map(|t| t.elapsed().as_secs_f64()),
            snapshot_duration_seconds: conns.walk.as_secs_f64(),
        },
        events: EventsSample {
            sent,
            lost,
            suppressed,
        },
        health: m.health.totals(),
        mac: MacSample {
            unresolved: proj.unresolved().len() as u64,
            failures: 0,
        },
    })
}

pub fn sample_runtime(rt: &Runtime, m: &Metrics) -> Result<Sample> {
    let mut s = sample(&rt.dp, &rt.proj, &rt.state, rt.generation, m)?;
    s.mac.failures = rt.mac_failures;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Encoding.
// ---------------------------------------------------------------------------------------

fn proto_label(p: Proto) -> &'static str {
    // As node_exporter (from /proc/net/ip_vs): upper case.
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

enum V {
    C(u64),
    G(u64),
    F(f64),
}

/// One metric family: a descriptor and its series.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    let ty = match series.peek() {
        Some((_, V::C(_))) => MetricType::Counter,
        Some(_) => MetricType::Gauge,
        None => return Ok(()),
    };
    let mut me = enc.encode_descriptor(name, help, unit, ty)?;
    for (labels, v) in series {
        let fe = me.encode_family(&labels)?;
        match v {
            V::C(n) => ConstCounter::new(n).encode(fe)?,
            V::G(n) => ConstGauge::new(n).encode(fe)?,
            V::F(x) => ConstGauge::new(x).encode(fe)?,
        }
    }
    Ok(())
}

type NoLabels = [(&'static str, &'static str); 0];

/// A label set rendered once per scrape, `k1="v1",…,kn`, plus the last value: written
/// with two writes per series (the text up to the last label's name through the key
/// writer, the last value through the value writer) instead of four per label. The
/// output is byte for byte what a list of pairs gives; values are escaped when rendered.
#[derive(Clone, Copy)]
struct Rendered<'a> {
    head: &'a str,
    last: &'a str,
}

impl EncodeLabelSet for Rendered<'_> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> fmt::Result {
        let mut label = enc.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(self.head)?;
        let mut value = key.encode_label_value()?;
        value.write_str(self.last)?;
        value.finish()
    }
}

/// `pairs` as `k1="v1",…,kn` (the last value left out).
fn render(pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(128);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        if i + 1 == pairs.len() {
            break;
        }
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// A service's and its backends' label sets, rendered once per scrape.
struct Svc<'a> {
    s: &'a ServiceSample,
    proto: &'static str,
    /// local_address, local_port, proto.
    head: String,
    /// The same + state.
    state_head: String,
    /// Per backend: + remote_address, remote_port (before proto), and the same + state.
    backends: Vec<(String, String)>,
}

impl<'a> Svc<'a> {
    fn new(s: &'a ServiceSample) -> Self {
        let addr = s.id.address.to_string();
        let port = s.id.port.to_string();
        let proto = proto_label(s.id.proto);
        let backends = s
            .backends
            .iter()
            .map(|b| {
                let remote = b.address.to_string();
                let l = [
                    ("local_address", addr.as_str()),
                    ("local_port", port.as_str()),
                    ("remote_address", remote.as_str()),
                    ("remote_port", port.as_str()),
                    ("proto", proto),
                    ("state", ""),
                ];
                (render(&l[..5]), render(&l))
            })
            .collect();
        let l = [
            ("local_address", addr.as_str()),
            ("local_port", port.as_str()),
            ("proto", proto),
            ("state", ""),
        ];
        Svc {
            s,
            proto,
            head: render(&l[..3]),
            state_head: render(&l),
            backends,
        }
    }

    fn labels(&self) -> Rendered<'_> {
        Rendered {
            head: &self.head,
            last: self.proto,
        }
    }
}

/// One series per backend of every service: `f`'s value.
fn per_backend<'a>(
    svcs: &'a [Svc<'a>],
    f: &'a dyn Fn(&BackendSample) -> V,
) -> impl Iterator<Item = (Rendered<'a>, V)> + 'a {
    svcs.iter().flat_map(move |v| {
        v.s.backends.iter().zip(&v.backends).map(move |(b, h)| {
            let l = Rendered {
                head: &h.0,
                last: v.proto,
            };
            (l, f(b))
        })
    })
}

impl Collector for Sample {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let svcs: Vec<Svc> = self.services.iter().map(Svc::new).collect();
        let per_service =
            |f: fn(&ServiceSample) -> V| svcs.iter().map(move |v| (v.labels(), f(v.s)));
        family(
            &mut enc,
            "connections",
            "Connections scheduled by the service (new flows), summed over CPUs.",
            None,
            per_service(|s| V::C(s.conns)),
        )?;
        family(
            &mut enc,
            "incoming_packets",
            "Packets from clients to the service, summed over CPUs.",
            None,
            per_service(|s| V::C(s.inpkts)),
        )?;
        family(
            &mut enc,
            "incoming",
            "Bytes from clients to the service (IP length), summed over CPUs.",
            Some(&Unit::Bytes),
            per_service(|s| V::C(s.inbytes)),
        )?;
        family(
            &mut enc,
            "backend_connections",
            "Connections scheduled to the real server, summed over CPUs.",
            None,
            per_backend(&svcs, &|b| V::C(b.conns)),
        )?;
        family(
            &mut enc,
            "backend_incoming_packets",
            "Packets forwarded to the real server, summed over CPUs.",
            None,
            per_backend(&svcs, &|b| V::C(b.inpkts)),
        )?;
        family(
            &mut enc,
            "backend_incoming",
            "Bytes forwarded to the real server (IP length, as received from clients), summed over CPUs.",
            Some(&Unit::Bytes),
            per_backend(&svcs, &|b| V::C(b.inbytes)),
        )?;
        family(
            &mut enc,
            "backend_connections_active",
            "Live connection-table entries of the real server whose client ACK was seen (ESTABLISHED), as of the last snapshot.",
            None,
            per_backend(&svcs, &|b| V::G(b.active_conns)),
        )?;
        family(
            &mut enc,
            "backend_connections_inactive",
            "Live connection-table entries of the real server not yet established, as of the last snapshot.",
            None,
            per_backend(&svcs, &|b| V::G(b.inactive_conns)),
        )?;
        family(
            &mut enc,
            "backend_weight",
            "Configured weight of the real server.",
            None,
            per_backend(&svcs, &|b| V::G(u64::from(b.weight))),
        )?;
        family(
            &mut enc,
            "backend_up",
            "1 if the real server passes its health checks (UP or UP-WARM); every backend is UP while no checks are configured.",
            None,
            per_backend(&svcs, &|b| V::G(u64::from(b.health.state.healthy()))),
        )?;
        family(
            &mut enc,
            "backend_state",
            "Health state of the real server: 1 for the current state, 0 for the others.",
            None,
            svcs.iter().flat_map(|v| {
                v.s.backends.iter().zip(&v.backends).flat_map(|(b, h)| {
                    HealthState::ALL.iter().map(move |st| {
                        let l = Rendered {
                            head: &h.1,
                            last: st.label(),
                        };
                        (l, V::G(u64::from(b.health.state == *st)))
                    })
                })
            }),
        )?;
        family(
            &mut enc,
            "service_backends",
            "Real servers of the service by health.",
            None,
            svcs.iter().flat_map(|v| {
                let healthy =
                    v.s.backends
                        .iter()
                        .filter(|b| b.health.state.healthy())
                        .count() as u64;
                let unhealthy = v.s.backends.len() as u64 - healthy;
                [("healthy", healthy), ("unhealthy", unhealthy)].map(|(st, n)| {
                    let l = Rendered {
                        head: &v.state_head,
                        last: st,
                    };
                    (l, V::G(n))
                })
            }),
        )?;

        family(
            &mut enc,
            "backend_check_duration",
            "Duration of the real server's last health check.",
            Some(&Unit::Seconds),
            svcs.iter().flat_map(|v| {
                v.s.backends.iter().zip(&v.backends).filter_map(|(b, h)| {
                    let last = b.health.last_check.as_ref()?;
                    let l = Rendered {
                        head: &h.0,
                        last: v.proto,
                    };
                    Some((l, V::F(last.duration_seconds)))
                })
            }),
        )?;
        family(
            &mut enc,
            "backend_checks",
            "Health checks of the real server.",
            None,
            per_backend(&svcs, &|b| V::C(b.health.checks)),
        )?;
        family(
            &mut enc,
            "backend_check_failures",
            "Failed health checks of the real server.",
            None,
            per_backend(&svcs, &|b| V::C(b.health.check_failures)),
        )?;
        family(
            &mut enc,
            "backend_check_up_down",
            "Times the real server went DOWN (by active checks or passive reports).",
            None,
            per_backend(&svcs, &|b| V::C(b.health.downs)),
        )?;
        let h = &self.health;
        if !h.durations.is_empty() {
            let mut me = enc.encode_descriptor(
                "health_check_duration",
                "Duration of health checks, by check type.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for d in &h.durations {
                // The encoder accumulates: hand it the count of each bucket alone.
                let mut below = 0;
                let own: Vec<(f64, u64)> = d
                    .buckets
                    .iter()
                    .map(|&(le, cum)| {
                        let n = cum - below;
                        below = cum;
                        (le, n)
                    })
                    .collect();
                me.encode_family(&[("type", d.kind)])?
                    .encode_histogram::<NoLabels>(d.sum, d.count, &own, None)?;
            }
        }
        family(
            &mut enc,
            "health_check_failures",
            "Failed health checks, by check type and reason (timeout, refused, unreachable, tls, status, content, exit, other).",
            None,
            h.failures
                .iter()
                .map(|&(k, r, n)| ([("type", k), ("reason", r)], V::C(n))),
        )?;
        family(
            &mut enc,
            "health_transitions",
            "Health state transitions of real servers, by old and new state.",
            None,
            h.transitions
                .iter()
                .map(|&(f, t, n)| ([("from", f), ("to", t)], V::C(n))),
        )?;
        let none: NoLabels = [];
        family(
            &mut enc,
            "backends_unresolved",
            "Real servers left out of their tables now: no MAC to forward to (neighbour or route unresolved).",
            None,
            [(none, V::G(self.mac.unresolved))],
        )?;
        family(
            &mut enc,
            "mac_resolution_failures",
            "Times a real server was left out for want of a MAC (it became unresolved, or its reason changed).",
            None,
            [(none, V::C(self.mac.failures))],
        )?;

        family(
            &mut enc,
            "xdp_packets",
            "Packets leaving xdp_lb, by XDP action and reason, summed over CPUs.",
            None,
            self.reasons.iter().map(|r| {
                (
                    [("action", r.action), ("reason", r.reason)],
                    V::C(r.packets),
                )
            }),
        )?;
        let cpu_names: Vec<String> = self.cpus.iter().map(|c| c.cpu.to_string()).collect();
        family(
            &mut enc,
            "cpu_packets",
            "VIP packets handled by each CPU (the busiest core, not the average).",
            None,
            self.cpus
                .iter()
                .zip(&cpu_names)
                .map(|(c, n)| ([("cpu", n.as_str())], V::C(c.packets))),
        )?;
        let ct = &self.conn_table;
        family(
            &mut enc,
            "conn_table_entries",
            "Entries in the connection table (stale ones included: they hold room until evicted), as of the last snapshot.",
            None,
            [(none, V::G(ct.entries))],
        )?;
        family(
            &mut enc,
            "conn_table_capacity",
            "Size of the connection table (capacity.conn_table).",
            None,
            [(none, V::G(u64::from(ct.capacity)))],
        )?;
        if let Some(age) = ct.snapshot_age_seconds {
            family(
                &mut enc,
                "conn_snapshot_age",
                "Age of the connection-table snapshot behind the entry and active/inactive counts.",
                Some(&Unit::Seconds),
                [(none, V::F(age))],
            )?;
        }
        family(
            &mut enc,
            "conn_snapshot_duration",
            "Time the last walk of the connection table took.",
            Some(&Unit::Seconds),
            [(none, V::F(ct.snapshot_duration_seconds))],
        )?;
        let ev = &self.events;
        family(
            &mut enc,
            "events",
            "Passive health events of the data plane's EVENTS ring buffer: sent, lost (the ring was full), suppressed (per-backend rate limit).",
            None,
            [
                ("sent", ev.sent),
                ("lost", ev.lost),
                ("suppressed", ev.suppressed),
            ]
            .map(|(o, n)| ([("outcome", o)], V::C(n))),
        )?;
        family(
            &mut enc,
            "config_generation",
            "Generation of the running state (incremented by every change applied).",
            None,
            [(none, V::G(self.generation))],
        )?;
        family(
            &mut enc,
            "config_last_apply_timestamp",
            "Unix time the running state was last applied (daemon start or a successful change).",
            Some(&Unit::Seconds),
            [(none, V::F(self.last_apply_unix))],
        )?;
        Ok(())
    }
}

/// The exposition of `sample` plus the exporter's own counters: OpenMetrics text, or
/// Prometheus text 0.0.4 (`openmetrics` false).
pub fn encode(sample: Arc<Sample>, m: &Metrics, openmetrics: bool) -> String {
    let mut reg = Registry::with_prefix("lb");
    reg.register(
        "build",
        "Build of the running lb-daemon.",
        Info::new([("version", sample.version)]),
    );
    reg.register(
        "config_apply_errors",
        "Changes of the running state refused as invalid or failed while applying.",
        m.apply_errors.clone(),
    );
    reg.register(
        "api_requests",
        "API requests by listener and HTTP status code.",
        m.api_requests.clone(),
    );
    // Sized up front (about 1.5 KB per backend): no copying as it grows.
    let backends: usize = sample.services.iter().map(|s| s.backends.len()).sum();
    let mut out = String::with_capacity(8192 + 600 * sample.services.len() + 1600 * backends);
    reg.register_collector(Box::new(sample));
    let r = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &reg)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)
    };
    r.expect("writing to a String cannot fail");
    out
}

/// Sample under the runtime lock, encode after it on a blocking thread (a large
/// exposition takes tens of milliseconds of CPU).
pub async fn scrape(ctx: &Ctx, m: &Arc<Metrics>, openmetrics: bool) -> Result<String> {
    let s = {
        let rt = ctx.rt.lock().await;
        sample_runtime(&rt, m)?
    };
    let m = m.clone();
    tokio::task::spawn_blocking(move || encode(Arc::new(s), &m, openmetrics))
        .await
        .context("encoding the exposition")
}

// ---------------------------------------------------------------------------------------
// The listener.
// ---------------------------------------------------------------------------------------

type MCtx = (Ctx, Arc<Metrics>);

fn wants_openmetrics(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn get_metrics(AxState((ctx, m)): AxState<MCtx>, headers: HeaderMap) -> Response {
    let om = wants_openmetrics(&headers);
    match scrape(&ctx, &m, om).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                if om {
                    OPENMETRICS_CONTENT_TYPE
                } else {
                    PROMETHEUS_CONTENT_TYPE
                },
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

async fn get_stats_json(AxState((ctx, m)): AxState<MCtx>) -> Response {
    let s = {
        let rt = ctx.rt.lock().await;
        sample_runtime(&rt, &m)
    };
    match s {
        Ok(s) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(s)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

/// `/metrics`, `/stats.json` and the page (`/stats`, `/`).
pub fn router(ctx: Ctx, m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/stats.json", get(get_stats_json))
        .with_state((ctx, m))
        .merge(crate::stats_page::router())
}

/// Binds `addr` and serves [`router`] in the background.
pub async fn serve(addr: SocketAddr, ctx: Ctx, m: Arc<Metrics>) -> Result<()> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    info!(%addr, "metrics listening (/metrics, /stats)");
    let app = router(ctx, m);
    tokio::spawn(async move { axum::serve(tcp, app).await });
    Ok(())
}

/// Opens a handle on the connection table and refreshes the snapshot every `every`
/// (the walk runs on a blocking thread, with no lock held; the lock is taken only to
/// read the VIP generations and the timeout).
pub async fn spawn_conn_snapshots(ctx: Ctx, m: Arc<Metrics>, every: Duration) -> Result<()> {
    let reader = {
        let rt = ctx.rt.lock().await;
        ConnReader::open(&rt.dp)?
    };
    let reader = Arc::new(reader);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let cx = {
                let rt = ctx.rt.lock().await;
                conn_context(&rt.dp, &rt.proj, &rt.state)
            };
            let (gens, timeout) = match cx {
                Ok(c) => c,
                Err(e) => {
                    warn!("connection snapshot: {e:#}");
                    continue;
                }
            };
            let r = reader.clone();
            match tokio::task::spawn_blocking(move || take_conn_snapshot(&r, &gens, timeout)).await
            {
                Ok(Ok(s)) => m.set_conns(s),
                Ok(Err(e)) => warn!("connection snapshot: {e:#}"),
                Err(e) => warn!("connection snapshot task: {e}"),
            }
        }
    });
    Ok(())
}
