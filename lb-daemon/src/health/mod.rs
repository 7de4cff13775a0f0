//! Backend health: active checks, passive reports, the per-backend state machine and
//! what it does to the tables.
//!
//! - [`checks`]: one attempt of each kind of check (tcp, http/https, udp, exec).
//! - [`machine`]: the state machine (HAProxy's consecutive rise/fall, DPVS's
//!   DOWN-WAIT / DOWN / UP-WARM with a doubling hold-down) and the per-service plan
//!   (weights, fail-open), pure.
//! - [`events`]: the transition log.
//! - [`passive`]: the data plane's reports and counters as health inputs.
//! - [`stats`]: check durations, failures by reason and transitions, for the exporter.
//! - [`api`]: `GET /v1/health`, `GET /v1/events`.
//!
//! - [`sched`]: the scheduler that runs every half-open tcp check from one task.
//!
//! [`Health`] is the handle the runtime owns. Half-open tcp checks (the default tcp
//! mode) all run on one scheduler task: a heap of next-due times, the SYNs due in the
//! same millisecond sent with one sendmmsg, the answers taken in batches and the
//! results applied under one lock of the table. Every other check has one lightweight
//! tokio task per backend (no thread per check) that sleeps until its next slot. Either
//! way the first slot of each is drawn uniformly over its interval, so that 10,000
//! backends do not fire at once, and the later ones follow at a fixed rate. Results and passive
//! reports ([`Health::input`]) go through the machines; when that changes what the
//! tables should hold, the watch channel [`Health::subscribe`] ticks and the applier
//! task ([`start`]) re-applies the running state through [`Health::effective`]:
//! DOWN backends get weight 0 (out of the table, their flows kept unless
//! `on_down = "reset"`), warming ones a share of theirs; a service whose backends
//! are all DOWN fails open (keeps them all, or serves from its `sorry` server).

pub mod api;
pub mod checks;
pub mod events;
pub mod machine;
pub mod passive;
mod sched;
pub mod stats;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use lb_common::state::{CheckType, OnDown, RealServer, ResolvedCheck, ServiceId, State};
use serde::Serialize;
use tokio::{sync::Notify, task::AbortHandle, time::Instant};
use tracing::{error, info, warn};

use crate::metrics::{BackendHealth, HealthSource, HealthState, LastCheck};

use self::{
    checks::ExecEnv,
    events::{Event, EventLog},
    machine::{Input, Machine, Member, Ms, Params, Transition},
};

/// A backend of a service.
pub type BackendKey = (ServiceId, IpAddr);

/// What the data plane (the EVENTS ring buffer) reports about a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthInput {
    /// A sign the backend is not answering: a retransmitted SYN on a fresh connection
    /// entry, a high share of new flows that never finish their handshake…
    PassiveFailure { backend: BackendKey, reason: String },
    /// Traffic to the backend succeeds (a handshake completed).
    PassiveSuccess { backend: BackendKey },
}

/// The last check of a backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastResult {
    pub ok: bool,
    pub detail: Cow<'static, str>,
    /// RFC 3339, UTC.
    pub time: String,
    pub unix_time: f64,
    /// Of the last attempt.
    pub duration_ms: f64,
    /// 1 + the retries it took.
    pub attempts: u32,
}

struct Entry {
    machine: Machine,
    params: Params,
    check: Option<Arc<ResolvedCheck>>,
    /// `check`'s type label, kept here: the check itself is another allocation, a
    /// cache miss per result at 10,000 checks a second.
    kind: &'static str,
    task: Option<Runner>,
    /// Wakes the check task for an immediate check (a passive report to confirm).
    trigger: Arc<Notify>,
    last: Option<LastResult>,
    checks: u64,
    failures: u64,
    /// What the tables were last told: (out, tenths of the weight).
    published: (bool, u32),
}

#[derive(Clone, Debug, Default)]
struct SvcEntry {
    on_down: OnDown,
    sorry: Option<RealServer>,
    kind: Option<CheckType>,
    fail_open: bool,
    sorry_active: bool,
}

/// What runs a backend's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runner {
    /// Its own task ([`check_loop`]).
    Task(tokio::task::Id),
    /// The half-open scheduler ([`sched`]).
    Scheduled(sched::Id),
}

#[derive(Default)]
struct Table {
    /// foldhash: SipHash was a visible share of the checker's time at 10,000 results
    /// a second, and the keys are our own configuration, not an attacker's.
    backends: HashMap<BackendKey, Entry, foldhash::fast::RandomState>,
    /// Backends whose machine has a deadline (a hold-down, DOWN-WAIT, warm-up step):
    /// the only ones [`Health::tick`] looks at.
    timed: HashSet<BackendKey, foldhash::fast::RandomState>,
    /// The check tasks, by id ([`Runner::Task`]).
    tasks: HashMap<tokio::task::Id, AbortHandle>,
    services: BTreeMap<ServiceId, SvcEntry>,
    /// Backends that went DOWN with `on_down = "reset"`: their connection entries go.
    resets: Vec<BackendKey>,
    ticker: Option<AbortHandle>,
}

struct Inner {
    epoch: Instant,
    table: Mutex<Table>,
    events: Mutex<EventLog>,
    out: tokio::sync::watch::Sender<u64>,
    handle: Mutex<Option<tokio::runtime::Handle>>,
    /// |actual − scheduled| start of each check, in ms, when recording (benchmark).
    spread: Mutex<Option<Vec<f32>>>,
    /// Check durations and failures by type, transitions: for the exporter.
    stats: Mutex<stats::CheckStats>,
    /// The half-open scheduler, made with the first half-open check (None: raw
    /// sockets unavailable), and its task.
    sched: OnceLock<Option<Arc<sched::Scheduler>>>,
    sched_task: Mutex<Option<AbortHandle>>,
}

/// The health checker: cheap to clone, shared by the runtime, the API and the exporter.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

fn label(s: HealthState) -> &'static str {
    s.label()
}

impl Health {
    /// An idle checker: machines follow [`Health::configure`], but no check runs
    /// before [`Health::start_checks`].
    pub fn new() -> Self {
        let (out, _) = tokio::sync::watch::channel(0);
        Health {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                table: Mutex::new(Table::default()),
                events: Mutex::new(EventLog::default()),
                out,
                handle: Mutex::new(None),
                spread: Mutex::new(None),
                stats: Mutex::new(stats::CheckStats::default()),
                sched: OnceLock::new(),
                sched_task: Mutex::new(None),
            }),
        }
    }

    fn now_ms(&self) -> Ms {
        self.inner.epoch.elapsed().as_millis() as Ms
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ticks whenever what the tables should hold changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.out.subscribe()
    }

    /// Follows a new running state: machines for new backends (UP), new settings for
    /// the others (their state stays), checks started, restarted or stopped.
    pub fn configure(&self, state: &State) {
        let now = self.now_ms();
        let handle = self
            .inner
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut t = self.table();
        let mut seen = std::collections::HashSet::new();
        let mut services = BTreeMap::new();
        for svc in &state.services {
            let id = svc.id();
            let passive = svc.passive();
            let h = svc.health.as_ref();
            let old = t.services.get(&id).cloned().unwrap_or_default();
            services.insert(
                id,
                SvcEntry {
                    on_down: h.map(|h| h.on_down).unwrap_or_default(),
                    sorry: h.and_then(|h| h.sorry.clone()),
                    kind: h.map(|h| h.kind.unwrap_or_default()),
                    ..old
                },
            );
            for r in &svc.backends {
                let key = (id, r.address);
                seen.insert(key);
                let check = match svc.resolve_check(r) {
                    Ok(c) => c.map(Arc::new),
                    Err(e) => {
                        // Validated before; only a state that skipped validation gets here.
                        error!(service = %id, backend = %r.address, error = %format!("{e:#}"), "health check not started");
                        None
                    }
                };
                let params = Params {
                    active: check.is_some(),
                    rise: check.as_ref().map_or(2, |c| c.rise),
                    fall: check.as_ref().map_or(3, |c| c.fall),
                    passive: passive.enabled,
                    down_after_reports: passive.down_after_reports,
                    down_wait: passive.down_wait.ms(),
                    inhibit_min: passive.inhibit_min.ms(),
                    inhibit_max: passive.inhibit_max.ms(),
                    warmup: h.map_or(0, |h| h.warmup.ms()),
                };
                let entry = t.backends.entry(key).or_insert_with(|| Entry {
                    machine: Machine::new(&params, now),
                    params,
                    check: None,
                    kind: "none",
                    task: None,
                    trigger: Arc::new(Notify::new()),
                    last: None,
                    checks: 0,
                    failures: 0,
                    published: (false, 10),
                });
                if entry.params != params {
                    entry.machine.reconfigure(&entry.params, &params);
                    entry.params = params;
                }
                let mut stop = None;
                if entry.check.as_deref() != check.as_deref() {
                    stop = entry.task.take();
                    entry.kind = check.as_ref().map_or("none", |c| c.kind.label());
                    entry.check = check;
                    entry.last = None;
                }
                let start = match (&entry.task, &entry.check, &handle) {
                    (None, Some(c), Some(h)) => Some((c.clone(), entry.trigger.clone(), h)),
                    _ => None,
                };
                if let Some(r) = stop {
                    self.stop_runner(&mut t, r);
                }
                if let Some((c, trigger, h)) = start {
                    let r = self.spawn_check(&mut t, h, key, c, trigger);
                    t.backends.get_mut(&key).expect("inserted").task = Some(r);
                }
                t.track(key, now);
            }
        }
        let gone: Vec<BackendKey> = t
            .backends
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(r) = t.backends.remove(&k).and_then(|e| e.task) {
                self.stop_runner(&mut t, r);
            }
            t.timed.remove(&k);
        }
        t.services = services;
        t.resets.retain(|k| seen.contains(k));
        self.publish(&mut t, now, None);
    }

    /// Starts the checks (and the timer that expires hold-downs and DOWN-WAITs) on the
    /// current tokio runtime.
    pub fn start_checks(&self) {
        let handle = tokio::runtime::Handle::current();
        *self.inner.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.clone());
        let mut t = self.table();
        let keys: Vec<BackendKey> = t.backends.keys().copied().collect();
        for key in keys {
            let e = t.backends.get_mut(&key).expect("listed");
            if e.task.is_none()
                && let Some(c) = e.check.clone()
            {
                let trigger = e.trigger.clone();
                let r = self.spawn_check(&mut t, &handle, key, c, trigger);
                t.backends.get_mut(&key).expect("listed").task = Some(r);
            }
        }
        if t.ticker.is_none() {
            let weak = Arc::downgrade(&self.inner);
            t.ticker = Some(
                handle
                    .spawn(async move {
                        let mut every = tokio::time::interval(Duration::from_millis(100));
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            every.tick().await;
                            let Some(inner) = weak.upgrade() else { return };
                            Health { inner }.tick();
                        }
                    })
                    .abort_handle(),
            );
        }
    }

    /// Stops every check task and the timer (the machines stay).
    pub fn stop_checks(&self) {
        *self.inner.handle.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut t = self.table();
        let runners: Vec<Runner> = t
            .backends
            .values_mut()
            .filter_map(|e| e.task.take())
            .collect();
        for r in runners {
            self.stop_runner(&mut t, r);
        }
        if let Some(task) = t.ticker.take() {
            task.abort();
        }
        if let Some(task) = self
            .inner
            .sched_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    /// Starts the checks of `key`: with the half-open scheduler when it can run them,
    /// else in a task of their own.
    fn spawn_check(
        &self,
        t: &mut Table,
        handle: &tokio::runtime::Handle,
        key: BackendKey,
        check: Arc<ResolvedCheck>,
        trigger: Arc<Notify>,
    ) -> Runner {
        if sched::Scheduler::handles(&check)
            && let Some(s) = self.scheduler()
            && s.engine().supports(&check.target)
        {
            let mut task = self
                .inner
                .sched_task
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if task.as_ref().is_none_or(AbortHandle::is_finished) {
                let weak = Arc::downgrade(&self.inner);
                *task = Some(handle.spawn(s.clone().run(weak)).abort_handle());
            }
            return Runner::Scheduled(s.add(key, &check));
        }
        let weak = Arc::downgrade(&self.inner);
        let a = handle
            .spawn(check_loop(weak, key, check, trigger))
            .abort_handle();
        let id = a.id();
        t.tasks.insert(id, a);
        Runner::Task(id)
    }

    fn stop_runner(&self, t: &mut Table, r: Runner) {
        match r {
            Runner::Task(id) => {
                if let Some(a) = t.tasks.remove(&id) {
                    a.abort();
                }
            }
            Runner::Scheduled(id) => {
                if let Some(s) = self.scheduler() {
                    s.remove(id);
                }
            }
        }
    }

    /// The half-open scheduler (made on first use); None without raw sockets.
    fn scheduler(&self) -> Option<&Arc<sched::Scheduler>> {
        self.inner
            .sched
            .get_or_init(|| {
                checks::halfopen::shared().map(|e| Arc::new(sched::Scheduler::new(e.clone())))
            })
            .as_ref()
    }

    /// Half-open checks go through `engine` rather than the process-wide one (a test's,
    /// in a namespace of its own). Before any check starts.
    #[cfg(test)]
    fn use_engine(&self, engine: Arc<checks::halfopen::HalfOpen>) {
        let s = Some(Arc::new(sched::Scheduler::new(engine)));
        assert!(self.inner.sched.set(s).is_ok(), "a scheduler already");
    }

    /// Checks run by the half-open scheduler (the others have a task each).
    pub fn scheduled_checks(&self) -> usize {
        self.inner
            .sched
            .get()
            .and_then(Option::as_ref)
            .map_or(0, |s| s.len())
    }

    /// Records |actual − scheduled| start times of checks (for the benchmark).
    pub fn record_spread(&self, on: bool) {
        *self.inner.spread.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    fn record_spreads(&self, ms: &[f32]) {
        if ms.is_empty() {
            return;
        }
        if let Some(v) = self
            .inner
            .spread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            v.extend_from_slice(ms);
        }
    }

    /// The recorded start-time errors, in ms (and recording goes on, emptied).
    pub fn take_spread(&self) -> Vec<f32> {
        self.inner
            .spread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Expires timers of the machines that have one. A machine gets a deadline only
    /// through an input, a check result or a new configuration (all of which update
    /// `timed`); time alone only takes it away.
    pub fn tick(&self) {
        let now = self.now_ms();
        let mut t = self.table();
        if t.timed.is_empty() {
            return;
        }
        let keys: Vec<BackendKey> = t.timed.iter().copied().collect();
        for &key in &keys {
            let Some(e) = t.backends.get_mut(&key) else {
                t.timed.remove(&key);
                continue;
            };
            if e.machine
                .next_deadline(&e.params, now)
                .is_some_and(|d| d <= now)
            {
                let ts = e.machine.tick(&e.params, now);
                self.transitions(&mut t, key, ts);
            }
            t.track(key, now);
        }
        if self.publish_keys(&mut t, now, &keys) {
            self.inner.out.send_modify(|g| *g += 1);
        }
    }

    /// A passive report from the data plane.
    pub fn input(&self, input: HealthInput) {
        let now = self.now_ms();
        let mut t = self.table();
        let (key, inp) = match input {
            HealthInput::PassiveFailure { backend, reason } => {
                (backend, Input::PassiveFailure(reason))
            }
            HealthInput::PassiveSuccess { backend } => (backend, Input::PassiveSuccess),
        };
        let Some(e) = t.backends.get_mut(&key) else {
            return;
        };
        let ts = e.machine.input(&e.params, inp, now);
        // A report to confirm: check now rather than at the next slot.
        if e.check.is_some() && ts.iter().any(|x| x.to == HealthState::DownWait) {
            match e.task {
                Some(Runner::Scheduled(id)) => {
                    if let Some(s) = self.scheduler() {
                        s.trigger(id);
                    }
                }
                _ => e.trigger.notify_one(),
            }
        }
        self.transitions(&mut t, key, ts);
        t.track(key, now);
        self.publish(&mut t, now, Some(key));
    }

    /// A check result (from a check task, or a test).
    pub fn report(
        &self,
        key: BackendKey,
        ok: bool,
        detail: String,
        duration: Duration,
        attempts: u32,
    ) {
        let now = self.now_ms();
        let unix_time = unix_now();
        let mut t = self.table();
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let r = Report {
            ok,
            detail: detail.into(),
            duration,
            attempts,
        };
        let changed = self.result(&mut t, &mut stats, key, None, r, now, unix_time);
        drop(stats);
        if changed == Some(true) || !t.resets.is_empty() {
            self.inner.out.send_modify(|g| *g += 1);
        }
    }

    /// The results of the half-open scheduler, under one lock of the table. A result
    /// of a check no longer the backend's (removed or replaced meanwhile) is dropped.
    fn report_batch(&self, done: &mut Vec<sched::Done>) {
        let now = self.now_ms();
        let unix_time = unix_now();
        let mut t = self.table();
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for d in done.drain(..) {
            let r = Report {
                ok: d.ok,
                detail: d.detail,
                duration: d.took,
                attempts: d.attempts,
            };
            let runner = Some(Runner::Scheduled(d.id));
            changed |=
                self.result(&mut t, &mut stats, d.key, runner, r, now, unix_time) == Some(true);
        }
        drop(stats);
        if changed || !t.resets.is_empty() {
            self.inner.out.send_modify(|g| *g += 1);
        }
    }

    /// One check result into `key`'s machine (when `runner`, if given, still runs its
    /// checks): whether what the tables should hold changed; None when dropped.
    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        t: &mut Table,
        stats: &mut stats::CheckStats,
        key: BackendKey,
        runner: Option<Runner>,
        r: Report,
        now: Ms,
        unix_time: f64,
    ) -> Option<bool> {
        let e = t.backends.get_mut(&key)?;
        if runner.is_some() && e.task != runner {
            return None;
        }
        let Report {
            ok,
            detail,
            duration,
            attempts,
        } = r;
        e.checks += 1;
        if !ok {
            e.failures += 1;
        }
        stats.observe(e.kind, duration, (!ok).then_some(&*detail));
        // The last result reused (its time text among others): no allocation per check.
        let last = e.last.get_or_insert_with(|| LastResult {
            ok,
            detail: Cow::Borrowed(""),
            // Formatted when shown.
            time: String::new(),
            unix_time,
            duration_ms: 0.0,
            attempts,
        });
        last.ok = ok;
        // A static text (the usual case) is a pointer copy: the old text's buffer is
        // not touched.
        last.detail.clone_from(&detail);
        last.unix_time = unix_time;
        last.duration_ms = duration.as_secs_f64() * 1000.0;
        last.attempts = attempts;
        let ts = e.machine.input(&e.params, Input::Check { ok, detail }, now);
        let changed = published(e, now);
        let timed = e.machine.next_deadline(&e.params, now).is_some();
        if timed {
            t.timed.insert(key);
        } else if !t.timed.is_empty() {
            t.timed.remove(&key);
        }
        if !ts.is_empty() {
            self.transitions_with(t, stats, key, ts);
        }
        Some(changed)
    }

    fn transitions(&self, t: &mut Table, key: BackendKey, ts: Vec<Transition>) {
        if ts.is_empty() {
            return;
        }
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        self.transitions_with(t, &mut stats, key, ts);
    }

    fn transitions_with(
        &self,
        t: &mut Table,
        stats: &mut stats::CheckStats,
        key: BackendKey,
        ts: Vec<Transition>,
    ) {
        let svc = t.services.get(&key.0).cloned().unwrap_or_default();
        let mut log = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        for x in ts {
            stats.transition(x.from, x.to);
            let ev = log.push(
                key.0.to_string(),
                Some(key.1),
                label(x.from),
                label(x.to),
                x.reason.clone(),
            );
            log_event(ev);
            if x.to == HealthState::Down && svc.on_down == OnDown::Reset {
                t.resets.push(key);
            }
        }
    }

    /// Ticks the watch channel if what the tables should hold changed: for backend
    /// `only`, or all of them.
    fn publish(&self, t: &mut Table, now: Ms, only: Option<BackendKey>) {
        let changed = match only {
            Some(k) => self.publish_keys(t, now, &[k]),
            None => {
                // Every entry's record updated: no short-circuit.
                let mut changed = false;
                for e in t.backends.values_mut() {
                    changed |= published(e, now);
                }
                changed
            }
        };
        if changed || !t.resets.is_empty() {
            self.inner.out.send_modify(|g| *g += 1);
        }
    }

    /// Whether what the tables should hold changed for one of `keys` (the caller ticks).
    fn publish_keys(&self, t: &mut Table, now: Ms, keys: &[BackendKey]) -> bool {
        let mut changed = false;
        for k in keys {
            if let Some(e) = t.backends.get_mut(k) {
                changed |= published(e, now);
            }
        }
        changed
    }

    /// The state to install for `desired`: DOWN backends at weight 0, warming ones
    /// ramping; a service whose backends are all DOWN fails open (all kept, or its sorry
    /// server alone). Fail-open changes are logged (error) and recorded as events.
    /// The `health` tables are left out of what is returned.
    pub fn effective(&self, desired: &State) -> State {
        let now = self.now_ms();
        let mut t = self.table();
        let mut st = desired.clone();
        for svc in &mut st.services {
            let id = svc.id();
            let members: Vec<Member> = svc
                .backends
                .iter()
                .map(|r| match t.backends.get(&(id, r.address)) {
                    Some(e) => Member {
                        weight: r.weight,
                        excluded: e.machine.excluded(),
                        tenths: e.machine.weight_tenths(&e.params, now),
                    },
                    None => Member {
                        weight: r.weight,
                        excluded: false,
                        tenths: 10,
                    },
                })
                .collect();
            // What is installed carries no health settings (they are the checker's; a
            // sorry server in them would read as a duplicate backend).
            let sorry = svc.health.take().and_then(|h| h.sorry);
            let plan = machine::plan(&members, sorry.is_some());
            for (r, w) in svc.backends.iter_mut().zip(&plan.weights) {
                r.weight = *w;
            }
            if plan.use_sorry
                && let Some(s) = sorry
            {
                svc.backends.push(RealServer {
                    weight: s.weight.max(1),
                    ..s
                });
            }
            let Some(entry) = t.services.get_mut(&id) else {
                continue;
            };
            if entry.fail_open != plan.fail_open || entry.sorry_active != plan.use_sorry {
                let old = svc_label(entry.fail_open, entry.sorry_active);
                let new = svc_label(plan.fail_open, plan.use_sorry);
                entry.fail_open = plan.fail_open;
                entry.sorry_active = plan.use_sorry;
                let reason = if plan.use_sorry {
                    "every backend is DOWN: the sorry server takes the traffic".to_string()
                } else if plan.fail_open {
                    "every backend is DOWN: failing open, the VIP keeps all its backends rather than dropping all traffic".to_string()
                } else {
                    "a backend is up again: back to the healthy ones".to_string()
                };
                let mut log = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
                let ev = log.push(id.to_string(), None, old, new, reason);
                log_event(ev);
            }
        }
        st
    }

    /// Backends whose connection entries must go (`on_down = "reset"`), taken. Those of
    /// a service failing open without a sorry server are dropped: their clients would
    /// only come back to them.
    pub fn take_resets(&self) -> Vec<BackendKey> {
        let mut t = self.table();
        let list = std::mem::take(&mut t.resets);
        list.into_iter()
            .filter(|k| {
                t.services
                    .get(&k.0)
                    .is_some_and(|s| !(s.fail_open && !s.sorry_active))
                    && t.backends.get(k).is_some_and(|e| e.machine.excluded())
            })
            .collect()
    }

    /// Services failing open (every backend DOWN), and whether a sorry server serves.
    pub fn fail_open(&self) -> Vec<(ServiceId, bool)> {
        self.table()
            .services
            .iter()
            .filter(|(_, s)| s.fail_open)
            .map(|(id, s)| (*id, s.sorry_active))
            .collect()
    }

    /// The state of one backend (UP when unknown).
    pub fn state_of(&self, service: &ServiceId, backend: IpAddr) -> HealthState {
        self.table()
            .backends
            .get(&(*service, backend))
            .map_or(HealthState::Up, |e| e.machine.state())
    }

    /// The recent events, oldest first.
    pub fn events(&self, limit: usize, since: u64) -> Vec<Event> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent(limit, since)
    }

    /// Everything about every backend, per service, for `GET /v1/health`.
    pub fn view(&self) -> HealthView {
        let now = self.now_ms();
        let t = self.table();
        let mut services: BTreeMap<ServiceId, ServiceView> = t
            .services
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    ServiceView {
                        service: id.to_string(),
                        id: *id,
                        check: s.kind,
                        on_down: s.on_down,
                        fail_open: s.fail_open,
                        sorry: s.sorry.as_ref().map(|r| r.address),
                        sorry_active: s.sorry_active,
                        backends: Vec::new(),
                    },
                )
            })
            .collect();
        for ((sid, addr), e) in &t.backends {
            let Some(sv) = services.get_mut(sid) else {
                continue;
            };
            let m = &e.machine;
            sv.backends.push(BackendView {
                address: *addr,
                state: m.state(),
                since_ms_ago: now.saturating_sub(m.since()),
                excluded: m.excluded(),
                weight_factor: f64::from(m.weight_tenths(&e.params, now)) / 10.0,
                consecutive_ok: m.ok_run(),
                consecutive_fail: m.fail_run(),
                passive_reports: m.reports(),
                held_down_ms: m.held_until(now).map(|u| u - now),
                next_inhibit_ms: m.inhibit(),
                downs: m.downs(),
                checks: e.checks,
                failures: e.failures,
                check: e.check.as_ref().map(|c| CheckView {
                    kind: c.kind,
                    target: c.target.to_string(),
                    interval_ms: c.interval.ms(),
                    timeout_ms: c.timeout.ms(),
                    rise: c.rise,
                    fall: c.fall,
                    retry: c.retry,
                }),
                last_check: e.last.clone().map(|mut l| {
                    l.time = events::rfc3339((l.unix_time * 1000.0) as u64);
                    l
                }),
            });
        }
        let mut services: Vec<ServiceView> = services.into_values().collect();
        for s in &mut services {
            s.backends.sort_by_key(|b| b.address);
        }
        HealthView { services }
    }
}

/// A check's result.
struct Report {
    ok: bool,
    detail: Cow<'static, str>,
    duration: Duration,
    attempts: u32,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Records what the tables should hold for `e`; whether that changed.
fn published(e: &mut Entry, now: Ms) -> bool {
    let now_pub = (
        e.machine.excluded(),
        e.machine.weight_tenths(&e.params, now),
    );
    let changed = now_pub != e.published;
    e.published = now_pub;
    changed
}

impl Table {
    /// Keeps `key` in `timed` exactly while its machine has a deadline.
    fn track(&mut self, key: BackendKey, now: Ms) {
        let has = self
            .backends
            .get(&key)
            .is_some_and(|e| e.machine.next_deadline(&e.params, now).is_some());
        if has {
            self.timed.insert(key);
        } else if !self.timed.is_empty() {
            self.timed.remove(&key);
        }
    }
}

fn svc_label(fail_open: bool, sorry: bool) -> &'static str {
    match (fail_open, sorry) {
        (true, true) => "SORRY",
        (true, false) => "FAIL-OPEN",
        _ => "SERVING",
    }
}

/// Every event goes to the log: DOWN and fail-open loudly.
fn log_event(ev: &Event) {
    let backend = ev.backend.map(|b| b.to_string()).unwrap_or_default();
    match ev.new.as_str() {
        "FAIL-OPEN" | "SORRY" => error!(
            target: "lb_daemon::health",
            service = %ev.service, old = %ev.old, new = %ev.new, reason = %ev.reason,
            "service {}: {} -> {}: {}", ev.service, ev.old, ev.new, ev.reason
        ),
        "DOWN" | "DOWN-WAIT" => warn!(
            target: "lb_daemon::health",
            service = %ev.service, backend = %backend, old = %ev.old, new = %ev.new, reason = %ev.reason,
            "backend {backend} of {}: {} -> {}: {}", ev.service, ev.old, ev.new, ev.reason
        ),
        _ => info!(
            target: "lb_daemon::health",
            service = %ev.service, backend = %backend, old = %ev.old, new = %ev.new, reason = %ev.reason,
            "backend {backend} of {}: {} -> {}: {}", ev.service, ev.old, ev.new, ev.reason
        ),
    }
}

/// One backend's check loop: slots `interval` apart from a random phase; each check
/// is an attempt plus up to `retry` more, `delay_before_retry` apart.
async fn check_loop(
    inner: Weak<Inner>,
    key: BackendKey,
    check: Arc<ResolvedCheck>,
    trigger: Arc<Notify>,
) {
    let interval = check.interval.std();
    let phase = interval.mul_f64(rand::random::<f64>());
    let mut next = Instant::now() + phase;
    let env = ExecEnv {
        service: key.0.to_string(),
        backend: key.1.to_string(),
    };
    loop {
        let triggered = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = trigger.notified() => true,
        };
        let started = Instant::now();
        if !triggered {
            let Some(i) = inner.upgrade() else { return };
            let mut s = i.spread.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = s.as_mut() {
                v.push(started.saturating_duration_since(next).as_secs_f32() * 1000.0);
            }
        }
        let mut attempts = 0;
        let (outcome, took) = loop {
            attempts += 1;
            let (o, d) = checks::run(&check, &env).await;
            if o.ok || attempts > check.retry {
                break (o, d);
            }
            tokio::time::sleep(check.delay_before_retry.std()).await;
        };
        let Some(i) = inner.upgrade() else { return };
        Health { inner: i }.report(key, outcome.ok, outcome.detail, took, attempts);
        // Fixed rate from the slot (or from now, after an immediate check); slots
        // missed by a long check are skipped.
        let base = if triggered { started } else { next };
        next = base + interval;
        let now = Instant::now();
        if next <= now {
            let behind = now - next;
            let skip = behind.as_nanos() / interval.as_nanos() + 1;
            next += interval * skip as u32;
        }
    }
}

/// `GET /v1/health`.
#[derive(Clone, Debug, Serialize)]
pub struct HealthView {
    pub services: Vec<ServiceView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    /// "tcp 10.0.0.1:80"
    pub service: String,
    pub id: ServiceId,
    /// The service's check type; null without a `health` table.
    pub check: Option<CheckType>,
    pub on_down: OnDown,
    /// Every backend is DOWN: the VIP keeps them all (or its sorry server serves).
    pub fail_open: bool,
    pub sorry: Option<IpAddr>,
    pub sorry_active: bool,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendView {
    pub address: IpAddr,
    pub state: HealthState,
    pub since_ms_ago: u64,
    /// Out of its table (DOWN).
    pub excluded: bool,
    /// Share of its weight in the table now (warm-up).
    pub weight_factor: f64,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub passive_reports: u32,
    /// Held down (inhibit) for this much longer.
    pub held_down_ms: Option<u64>,
    /// The hold-down its next DOWN would get (before decay).
    pub next_inhibit_ms: u64,
    pub downs: u64,
    pub checks: u64,
    pub failures: u64,
    pub check: Option<CheckView>,
    pub last_check: Option<LastResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckView {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub target: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub retry: u32,
}

impl HealthSource for Health {
    fn backend(&self, service: &ServiceId, backend: IpAddr) -> BackendHealth {
        let t = self.table();
        match t.backends.get(&(*service, backend)) {
            Some(e) => BackendHealth {
                state: e.machine.state(),
                last_check: e.last.as_ref().map(|l| LastCheck {
                    ok: l.ok,
                    unix_time: l.unix_time,
                    detail: l.detail.to_string(),
                    duration_seconds: l.duration_ms / 1000.0,
                }),
                checks: e.checks,
                check_failures: e.failures,
                downs: e.machine.downs(),
            },
            None => BackendHealth::up(),
        }
    }

    fn totals(&self) -> crate::metrics::HealthTotals {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .totals()
    }
}

/// Starts the checks and the task that re-applies the running state when health
/// changes what the tables should hold (and resets the flows of `on_down = "reset"`
/// backends).
pub async fn start(shared: Arc<crate::api::Shared>) {
    let health = {
        let mut rt = shared.rt.lock().await;
        checks::halfopen::use_data_plane(&mut rt.dp);
        rt.health.clone()
    };
    health.start_checks();
    passive::start(shared.clone()).await;
    let mut rx = health.subscribe();
    tokio::spawn(async move {
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            // Let a burst of results settle into one apply.
            tokio::time::sleep(Duration::from_millis(10)).await;
            rx.borrow_and_update();
            let mut rt = shared.rt.lock().await;
            if let Err(e) = rt.apply_health() {
                error!(error = %format!("{e:#}"), "applying a health change");
            }
        }
    });
}

impl crate::runtime::Runtime {
    /// The (service, real server) a data-plane backend id stands for: passive reports
    /// (the EVENTS ring buffer) name backends by id. `None` for an id no longer installed
    /// (or a sorry server, which is not checked).
    pub fn backend_key(&self, id: u32) -> Option<BackendKey> {
        self.state.services.iter().find_map(|s| {
            let sid = s.id();
            s.backends
                .iter()
                .find(|r| self.proj.backend_id(&sid, r.address) == Some(id))
                .map(|r| (sid, r.address))
        })
    }

    /// Re-applies the running state with the backends' health (see
    /// [`Health::effective`]), then deletes the connection entries of backends that
    /// went DOWN with `on_down = "reset"`.
    pub fn apply_health(&mut self) -> anyhow::Result<crate::sync::ApplyReport> {
        let alloc = self.proj.alloc();
        let eff = self.health.effective(&self.state);
        let report = self.proj.apply_learned(&mut self.dp, &eff, &self.learned)?;
        if report.services_changed > 0 {
            info!(target: "lb_daemon::health", ?report, "tables follow backend health");
        }
        for (svc, addr) in self.health.take_resets() {
            if let Some(id) = self.proj.backend_id(&svc, addr) {
                let n = self.dp.remove_conns_to(id);
                warn!(target: "lb_daemon::health", service = %svc, backend = %addr, entries = n,
                    "on_down = reset: connection entries of the DOWN backend deleted");
            }
        }
        // A sorry server entering or leaving changes the allocation: keep the state
        // file's in step, so that a restarted daemon adopting the maps knows its id.
        if self.proj.alloc() != alloc {
            crate::persist::save(
                &self.state_file,
                &crate::persist::Saved {
                    generation: self.generation,
                    state: self.state.clone(),
                    alloc: self.proj.alloc(),
                },
            )?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::state::{Proto, Service, ServiceHealth};

    fn state(n: usize, health: Option<ServiceHealth>) -> State {
        State {
            tunnel: Default::default(),
            services: vec![Service {
                address: "10.0.0.100".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp,
                scheduler: Default::default(),
                persistence: 0,
                backends: (0..n)
                    .map(|i| RealServer {
                        address: format!("10.0.0.{}", 11 + i).parse().unwrap(),
                        weight: 1,
                        forward: Default::default(),
                        mac: None,
                        gue_port: lb_common::DEFAULT_GUE_PORT,
                        health: None,
                    })
                    .collect(),
                health: health.map(Box::new),
            }],
        }
    }

    fn key(s: &State, i: usize) -> BackendKey {
        (s.services[0].id(), s.services[0].backends[i].address)
    }

    fn fail(h: &Health, k: BackendKey) {
        h.report(k, false, "connection refused".into(), Duration::ZERO, 1);
    }

    #[test]
    fn down_backends_get_weight_zero_and_all_down_fails_open() {
        let hc = ServiceHealth {
            fall: Some(1),
            ..Default::default()
        };
        let st = state(3, Some(hc.clone()));
        let h = Health::new();
        h.configure(&st);
        let rx = h.subscribe();
        fail(&h, key(&st, 1));
        assert!(rx.has_changed().unwrap());
        let eff = h.effective(&st);
        let w: Vec<u32> = eff.services[0].backends.iter().map(|r| r.weight).collect();
        assert_eq!(w, vec![1, 0, 1]);
        assert!(h.fail_open().is_empty());
        fail(&h, key(&st, 0));
        fail(&h, key(&st, 2));
        let eff = h.effective(&st);
        let w: Vec<u32> = eff.services[0].backends.iter().map(|r| r.weight).collect();
        assert_eq!(w, vec![1, 1, 1], "fail open: keep them all");
        assert_eq!(h.fail_open(), vec![(st.services[0].id(), false)]);
        let evs = h.events(100, 0);
        let last = evs.last().unwrap();
        assert_eq!(
            (last.old.as_str(), last.new.as_str(), last.backend),
            ("SERVING", "FAIL-OPEN", None)
        );
        assert_eq!(evs.iter().filter(|e| e.new == "DOWN").count(), 3);

        // With a sorry server: it alone serves.
        let sorry = RealServer {
            address: "10.0.0.99".parse().unwrap(),
            weight: 1,
            forward: Default::default(),
            mac: None,
            gue_port: lb_common::DEFAULT_GUE_PORT,
            health: None,
        };
        let st2 = state(
            3,
            Some(ServiceHealth {
                sorry: Some(sorry.clone()),
                ..hc
            }),
        );
        h.configure(&st2);
        let eff = h.effective(&st2);
        let b = &eff.services[0].backends;
        assert_eq!(b.len(), 4);
        assert_eq!(
            b.iter().map(|r| r.weight).collect::<Vec<_>>(),
            vec![0, 0, 0, 1]
        );
        assert_eq!(b[3].address, sorry.address);
        assert_eq!(h.fail_open(), vec![(st.services[0].id(), true)]);
        assert_eq!(h.events(1, 0)[0].new, "SORRY");
    }

    #[test]
    fn resets_only_for_on_down_reset() {
        let st = state(
            2,
            Some(ServiceHealth {
                fall: Some(1),
                on_down: OnDown::Reset,
                ..Default::default()
            }),
        );
        let h = Health::new();
        h.configure(&st);
        fail(&h, key(&st, 0));
        h.effective(&st);
        assert_eq!(h.take_resets(), vec![key(&st, 0)]);
        assert!(h.take_resets().is_empty(), "taken");
        let keep = state(
            2,
            Some(ServiceHealth {
                fall: Some(1),
                ..Default::default()
            }),
        );
        let h = Health::new();
        h.configure(&keep);
        fail(&h, key(&keep, 0));
        assert!(h.take_resets().is_empty());
    }

    #[test]
    fn reconfigure_keeps_state_and_drops_removed_backends() {
        let hc = ServiceHealth {
            fall: Some(1),
            ..Default::default()
        };
        let st = state(3, Some(hc));
        let h = Health::new();
        h.configure(&st);
        fail(&h, key(&st, 0));
        assert_eq!(
            h.state_of(&st.services[0].id(), key(&st, 0).1),
            HealthState::Down
        );
        let mut st2 = st.clone();
        st2.services[0].backends.pop();
        h.configure(&st2);
        assert_eq!(
            h.state_of(&st.services[0].id(), key(&st, 0).1),
            HealthState::Down
        );
        let v = h.view();
        assert_eq!(v.services[0].backends.len(), 2);
    }

    #[test]
    fn passive_reports_reach_the_machine() {
        let st = state(2, None);
        let h = Health::new();
        h.configure(&st);
        h.input(HealthInput::PassiveFailure {
            backend: key(&st, 1),
            reason: "SYN retransmitted".into(),
        });
        assert_eq!(
            h.state_of(&st.services[0].id(), key(&st, 1).1),
            HealthState::Down
        );
        let ev = h.events(1, 0);
        assert!(
            ev[0].reason.starts_with("passive: SYN retransmitted"),
            "{:?}",
            ev[0]
        );
        // Unknown backends are ignored.
        h.input(HealthInput::PassiveSuccess {
            backend: (st.services[0].id(), "192.0.2.1".parse().unwrap()),
        });
    }

    /// Through the runtime and a real (unpinned) data plane: needs root.
    #[test]
    fn runtime_tables_follow_health_and_fail_open() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF maps needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lb-health-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = r#"
[capacity]
max_vips = 16
max_backends = 256
conn_table = 65536
[[service]]
address = "10.0.0.100"
port = 80
proto = "tcp"
[service.health]
fall = 1
sorry = { address = "10.0.0.99", mac = "02:00:00:00:00:63" }
[[service.backends]]
address = "10.0.0.11"
mac = "02:00:00:00:00:0b"
[[service.backends]]
address = "10.0.0.12"
mac = "02:00:00:00:00:0c"
[[service]]
address = "10.0.0.101"
port = 80
proto = "tcp"
[service.health]
fall = 1
[[service.backends]]
address = "10.0.0.21"
mac = "02:00:00:00:00:15"
[[service.backends]]
address = "10.0.0.22"
mac = "02:00:00:00:00:16"
"#;
        let cfg = crate::config::Config::parse(text, "test").unwrap();
        let mut rt =
            crate::runtime::Runtime::start(cfg, dir.join("state.json"), false, Default::default())
                .unwrap();
        let st = rt.state.clone();
        let (a, b) = (st.services[0].id(), st.services[1].id());
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let table_ids = |rt: &crate::runtime::Runtime, svc: &ServiceId| {
            let mut t = rt.dp.table(rt.proj.vip_idx(svc).unwrap());
            t.sort_unstable();
            t.dedup();
            t
        };
        let id = |rt: &crate::runtime::Runtime, svc: &ServiceId, a: &str| {
            rt.proj.backend_id(svc, ip(a)).unwrap()
        };
        let both = vec![id(&rt, &a, "10.0.0.11"), id(&rt, &a, "10.0.0.12")];
        assert_eq!(rt.backend_key(both[1]), Some((a, ip("10.0.0.12"))));
        assert_eq!(rt.backend_key(0), None);
        assert_eq!(table_ids(&rt, &a), both);

        // One DOWN: out of the table, its BACKENDS entry (and so its flows) kept.
        let h = rt.health.clone();
        fail(&h, (a, ip("10.0.0.11")));
        rt.apply_health().unwrap();
        assert_eq!(table_ids(&rt, &a), vec![id(&rt, &a, "10.0.0.12")]);
        let b11 = id(&rt, &a, "10.0.0.11");
        assert_ne!(rt.dp.backend(b11).unwrap(), lb_common::Backend::default());

        // Both DOWN: the sorry server alone.
        fail(&h, (a, ip("10.0.0.12")));
        rt.apply_health().unwrap();
        let sorry = rt
            .proj
            .backend_id(&a, ip("10.0.0.99"))
            .expect("sorry installed");
        assert_eq!(table_ids(&rt, &a), vec![sorry]);
        assert_eq!(h.fail_open(), vec![(a, true)]);

        // Without a sorry server: fail open, the whole table kept.
        let before = table_ids(&rt, &b);
        fail(&h, (b, ip("10.0.0.21")));
        fail(&h, (b, ip("10.0.0.22")));
        rt.apply_health().unwrap();
        assert_eq!(table_ids(&rt, &b), before);
        assert!(h.fail_open().contains(&(b, false)));

        // Back up: held down 5 s first (inhibit_min), then rise (2) passes.
        let up = |h: &Health, k: BackendKey| {
            h.report(k, true, "connected".into(), Duration::ZERO, 1);
        };
        let v = h.view();
        let b12 = v.services[0]
            .backends
            .iter()
            .find(|x| x.address == ip("10.0.0.12"))
            .unwrap();
        assert!(b12.held_down_ms.is_some_and(|ms| ms > 4000), "{b12:?}");
        std::thread::sleep(Duration::from_millis(5100));
        up(&h, (a, ip("10.0.0.12")));
        up(&h, (a, ip("10.0.0.12")));
        assert_eq!(h.state_of(&a, ip("10.0.0.12")), HealthState::Up);
        rt.apply_health().unwrap();
        assert_eq!(table_ids(&rt, &a), vec![id(&rt, &a, "10.0.0.12")]);
        assert_eq!(rt.proj.backend_id(&a, ip("10.0.0.99")), None, "sorry gone");
        assert!(!h.fail_open().iter().any(|(s, _)| *s == a));
        let evs = h.events(100, 0);
        let svc_events: Vec<(&str, &str)> = evs
            .iter()
            .filter(|e| e.backend.is_none() && e.service == a.to_string())
            .map(|e| (e.old.as_str(), e.new.as_str()))
            .collect();
        assert_eq!(svc_events, vec![("SERVING", "SORRY"), ("SORRY", "SERVING")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Half-open checks on the scheduler, in a namespace of their own: an open port
    /// passes, a closed one is refused (after its retry), a black-holed one times out,
    /// a passive report triggers an immediate check; nothing reaches the listener.
    /// With few checks the receive task wakes the scheduler with the answers.
    #[test]
    fn half_open_checks_run_on_the_scheduler() {
        scheduler_case(0);
    }

    /// The same with 600 more checks a second: the scheduler reads the answers itself.
    #[test]
    fn half_open_checks_run_on_the_polling_scheduler() {
        scheduler_case(600);
    }

    /// [`half_open_checks_run_on_the_scheduler`] with `extra` more backends checked
    /// every second against the open port.
    fn scheduler_case(extra: usize) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: raw sockets and namespaces need root");
            return;
        }
        const SETUP: &[&str] = &[
            "link add bh0 type veth peer name bh1",
            "link set bh0 up",
            "link set bh1 up",
            "addr add 192.0.2.1/24 dev bh0",
            // Sent out of bh0 to a MAC nobody has: its peer drops them.
            "neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev bh0 nud permanent",
        ];
        crate::test_netns::run_in(crate::test_netns::Netns::Fresh(SETUP), move || async move {
            let engine = Arc::new(checks::halfopen::HalfOpen::new().unwrap());
            let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            open.set_nonblocking(true).unwrap();
            let open_port = open.local_addr().unwrap().port();
            let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let ms = lb_common::state::Dur;
            let lo = Some("127.0.0.1".parse().unwrap());
            let params = [
                lb_common::state::CheckParams {
                    address: lo,
                    port: Some(open_port),
                    ..Default::default()
                },
                lb_common::state::CheckParams {
                    address: lo,
                    port: Some(closed_port),
                    retry: Some(1),
                    delay_before_retry: Some(ms(50)),
                    fall: Some(1),
                    ..Default::default()
                },
                lb_common::state::CheckParams {
                    address: Some("192.0.2.2".parse().unwrap()),
                    port: Some(80),
                    timeout: Some(ms(150)),
                    fall: Some(1),
                    interval: Some(ms(200)),
                    ..Default::default()
                },
                lb_common::state::CheckParams {
                    address: lo,
                    port: Some(open_port),
                    interval: Some(lb_common::state::Dur::secs(3600)),
                    ..Default::default()
                },
            ];
            let mut st = state(
                4,
                Some(ServiceHealth {
                    interval: Some(ms(100)),
                    // A report waits for a check (DOWN-WAIT) rather than taking
                    // the backend down at once.
                    passive: lb_common::state::Passive {
                        down_after_reports: 2,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            );
            for (r, p) in st.services[0].backends.iter_mut().zip(params) {
                r.health = Some(Box::new(p));
            }
            let template = st.services[0].backends[0].clone();
            for i in 0..extra {
                let mut r = template.clone();
                r.address = format!("10.1.{}.{}", i / 250, i % 250 + 1).parse().unwrap();
                r.health.as_mut().unwrap().interval = Some(lb_common::state::Dur::secs(1));
                st.services[0].backends.push(r);
            }
            let h = Health::new();
            h.use_engine(engine.clone());
            h.configure(&st);
            h.start_checks();
            assert_eq!(h.scheduled_checks(), 4 + extra);
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert_eq!(engine.polled(), extra > 0);
            let before = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            h.input(HealthInput::PassiveFailure {
                backend: key(&st, 3),
                reason: "SYN retransmitted".into(),
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let v = h.view();
            let b = &v.services[0].backends;
            let last = |i: usize| b[i].last_check.clone().expect("checked");
            assert_eq!(b[0].state, HealthState::Up, "{:?}", b[0]);
            assert!(b[0].checks >= 6, "{:?}", b[0]);
            assert_eq!(
                (last(0).ok, &*last(0).detail, last(0).attempts),
                (true, "SYN-ACK (half-open)", 1)
            );
            assert_eq!(b[1].state, HealthState::Down, "{:?}", b[1]);
            assert_eq!(
                (last(1).ok, &*last(1).detail, last(1).attempts),
                (false, "connection refused", 2)
            );
            assert_eq!(b[1].failures, b[1].checks);
            assert_eq!(b[2].state, HealthState::Down, "{:?}", b[2]);
            assert_eq!(last(2).detail, "timeout");
            assert!(
                (140.0..400.0).contains(&last(2).duration_ms),
                "{:?}",
                last(2)
            );
            // Its slot is somewhere in the hour: this check is the triggered one.
            assert_eq!(b[3].checks, 1, "{:?}", b[3]);
            assert!(last(3).ok && last(3).unix_time >= before, "{:?}", last(3));
            assert_eq!(b[3].state, HealthState::Up, "confirmed up: {:?}", b[3]);
            assert!(
                h.events(100, 0)
                    .iter()
                    .any(|e| e.new == "DOWN-WAIT" && e.backend == Some(b[3].address))
            );
            // Their first slots are spread over their 1 s interval, the last
            // ones possibly answered after the view above: waited for.
            let extra_ok = |h: &Health| {
                h.view().services[0].backends[4..]
                    .iter()
                    .filter(|b| b.checks >= 1 && b.failures == 0)
                    .count()
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while extra_ok(&h) < extra && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                extra_ok(&h),
                extra,
                "every extra backend checked, and passing"
            );
            match open.accept() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the listener accepted a connection: {other:?}"),
            }
            h.stop_checks();
            assert_eq!(h.scheduled_checks(), 0);
            assert!(!engine.polled(), "the receive task's again once stopped");
        });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn checks_run_spread_over_the_interval() {
        // 50 backends checked over TCP every 200 ms against one listener.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let mut st = state(
            50,
            Some(ServiceHealth {
                interval: Some(lb_common::state::Dur(200)),
                port: Some(port),
                address: Some("127.0.0.1".parse().unwrap()),
                ..Default::default()
            }),
        );
        st.services[0]
            .backends
            .iter_mut()
            .enumerate()
            .for_each(|(i, r)| {
                r.address = format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap();
            });
        let h = Health::new();
        h.configure(&st);
        h.record_spread(true);
        h.start_checks();
        if checks::halfopen::shared().is_some() {
            assert_eq!(
                h.scheduled_checks(),
                50,
                "half-open checks on the scheduler"
            );
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let v = h.view();
        let b = &v.services[0].backends;
        assert!(
            b.iter()
                .all(|b| b.state == HealthState::Up && b.checks >= 4),
            "{b:#?}"
        );
        assert!(b.iter().all(|b| {
            b.last_check
                .as_ref()
                .is_some_and(|l| l.ok && ["connected", "SYN-ACK (half-open)"].contains(&&*l.detail))
        }));
        let spread = h.take_spread();
        assert!(spread.len() >= 200, "{}", spread.len());
        h.stop_checks();
    }
}
