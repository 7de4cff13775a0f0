//! The scheduler of half-open TCP checks: one task runs all of them, instead of one
//! tokio task per backend.
//!
//! Every check has one next time the scheduler acts on it (its next slot, a SYN to
//! send again, its timeout, the end of `delay_before_retry`), kept in a timer wheel of
//! 1 ms buckets ([`Wheel`]: O(1) to add; a binary heap of 10,000 checks, with the
//! timeouts of the answered probes still in it, cost more than the rest of the
//! scheduler). An entry whose time is no longer the check's is stale and skipped when
//! its bucket comes. A bucket is taken when its first millisecond comes, so a check
//! may start up to 1 ms before its slot (as late as the runtime's timer makes it
//! otherwise): the recorded spread is the absolute error. The task sleeps to the
//! earliest bucket (or until the receive task queues answers, or a check is
//! added or triggered) and then handles everything due: the SYNs of all the checks
//! whose slot came in that millisecond go out in one sendmmsg(2) per family, the
//! answers the receive task queued (see [`BatchSink`]) are taken at once, and the
//! finished checks are reported to the health table under one lock.
//!
//! The semantics are those of the per-task loop ([`super::check_loop`]): the first
//! slot drawn uniformly over the interval, then a fixed rate (slots missed by a long
//! check skipped); each check an attempt plus up to `retry` more, `delay_before_retry`
//! apart, each attempt bounded by the timeout, its SYN sent again after 1 s, 3 s, 7 s…
//! while the timeout allows; an immediate check when triggered (right after the one
//! running, if any), the next slots then following from it.

use std::{
    borrow::Cow,
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use lb_common::state::ResolvedCheck;
use tokio::time::Instant;

use super::{
    BackendKey, Health, Inner,
    checks::{
        halfopen::{Answer, BatchAnswer, BatchSink, HalfOpen, ROUTE_TTL, SendBuffers, Syn},
        io_detail,
    },
};

/// The first retransmission of an unanswered SYN (then doubling), as the kernel.
const FIRST_RTO: Duration = Duration::from_secs(1);
/// How soon a check waiting for a source port, or a SYN the send buffer had no room
/// for, is tried again.
const AGAIN: Duration = Duration::from_millis(1);
/// Tries of a SYN the send buffer has no room for, before the attempt fails.
const SEND_TRIES: u8 = 5;
/// From this many checks a second on, the task reads the answers itself every
/// millisecond (it wakes that often anyway) instead of the receive task being woken
/// by each one and waking it in turn.
const POLL_RATE: f64 = 500.0;

/// A check's handle: its slot in the scheduler and that slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id {
    index: u32,
    generation: u32,
}

/// A finished check, for [`Health::report_batch`].
pub struct Done {
    pub id: Id,
    pub key: BackendKey,
    pub ok: bool,
    pub detail: Cow<'static, str>,
    /// Of the last attempt.
    pub took: Duration,
    pub attempts: u32,
}

pub struct Scheduler {
    engine: Arc<HalfOpen>,
    sink: Arc<BatchSink>,
    state: Mutex<State>,
}

struct State {
    slots: Vec<Slot>,
    free: Vec<u32>,
    wheel: Wheel,
    /// Checks a second, all together.
    rate: f64,
    /// Checks of IPv4 and IPv6 targets.
    v4: usize,
    v6: usize,
}

impl State {
    fn count(&mut self, s: &Sched, sign: f64) {
        self.rate += sign / s.interval.as_secs_f64().max(0.001);
        let n = if s.target.is_ipv6() {
            &mut self.v6
        } else {
            &mut self.v4
        };
        if sign > 0.0 {
            *n += 1;
        } else {
            *n -= 1;
        }
    }
}

/// Milliseconds the wheel spans; later times wait in its heap.
const WHEEL_MS: u64 = 8192;

/// (time, slot index, generation).
type Timer = (Instant, u32, u32);

/// A timer wheel of 1 ms buckets (see the module doc).
struct Wheel {
    origin: Instant,
    buckets: Vec<Vec<Timer>>,
    /// The first bucket (ms since `origin`) not taken yet.
    cur: u64,
    /// Entries past the span: (ms since `origin`, entry).
    far: BinaryHeap<Reverse<(u64, Timer)>>,
    /// The memory of buckets taken, for buckets filled next: an entry waits about an
    /// interval, so only that many buckets hold memory at a time, not the whole span.
    /// (Each bucket keeping its own, the first lap of 10,000 checks a second grew the
    /// malloc arena, an mprotect(2) each time, for 8 s.)
    spare: Vec<Vec<Timer>>,
}

impl Wheel {
    fn new() -> Self {
        Wheel {
            origin: Instant::now(),
            buckets: (0..WHEEL_MS).map(|_| Vec::new()).collect(),
            cur: 0,
            far: BinaryHeap::new(),
            spare: Vec::new(),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn push(&mut self, e: Timer) {
        // Due already: the next bucket.
        let k = self.ms(e.0).max(self.cur);
        if k - self.cur < WHEEL_MS {
            self.bucket(k).push(e);
        } else {
            self.far.push(Reverse((k, e)));
        }
    }

    /// Bucket `k` (ms since `origin`), given spare memory if it has none.
    fn bucket(&mut self, k: u64) -> &mut Vec<Timer> {
        let b = &mut self.buckets[(k % WHEEL_MS) as usize];
        if b.capacity() == 0
            && let Some(v) = self.spare.pop()
        {
            *b = v;
        }
        b
    }

    /// When the first non-empty bucket is due.
    fn next_due(&self) -> Option<Instant> {
        let k = (self.cur..self.cur + WHEEL_MS)
            .find(|k| !self.buckets[(k % WHEEL_MS) as usize].is_empty())
            .or_else(|| self.far.peek().map(|Reverse((k, _))| *k))?;
        Some(self.origin + Duration::from_millis(k))
    }

    /// Moves the entries of the buckets due at `now` to `out`.
    fn take_due(&mut self, now: Instant, out: &mut Vec<Timer>) {
        let end = self.ms(now);
        while self.cur <= end {
            let b = &mut self.buckets[(self.cur % WHEEL_MS) as usize];
            out.append(b);
            if b.capacity() > 0 {
                self.spare.push(std::mem::take(b));
            }
            self.cur += 1;
            while let Some(&Reverse((k, e))) = self.far.peek()
                && k < self.cur + WHEEL_MS
            {
                self.far.pop();
                self.bucket(k.max(self.cur)).push(e);
            }
        }
    }
}

#[derive(Default)]
struct Slot {
    generation: u32,
    check: Option<Sched>,
}

struct Sched {
    key: BackendKey,
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    retry: u32,
    delay_before_retry: Duration,
    /// The slot the next regular check starts at.
    next_slot: Instant,
    /// When the scheduler acts on this check next; wheel entries for other times are stale.
    at: Instant,
    /// An immediate check is asked for (after the running one, if any).
    triggered: bool,
    run: Option<Run>,
    /// The source address for the target and when it was looked up (see
    /// [`HalfOpen::source_for`]; kept here, no shared cache to look up per probe).
    source: Option<(IpAddr, Instant)>,
}

/// A check under way.
struct Run {
    /// Started by a trigger rather than at its slot.
    triggered: bool,
    started: Instant,
    attempts: u32,
    attempt: Attempt,
}

enum Attempt {
    /// Waiting out `delay_before_retry` before the next attempt.
    Delay,
    Probe(Probe),
}

struct Probe {
    start: Instant,
    deadline: Instant,
    isn: u32,
    source: IpAddr,
    /// None while every source port is taken by a pending probe of the target.
    lport: Option<u16>,
    first_sent: Instant,
    /// Time from the first SYN to the latest one, and to the next.
    since_sent: Duration,
    rto: Duration,
}

/// A SYN to send, and whose it is.
struct Out {
    id: Id,
    isn: u32,
    syn: Syn,
    tries: u8,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one pass over the due work produced.
#[derive(Default)]
struct Pass {
    out: Vec<Out>,
    done: Vec<Done>,
    /// |actual − scheduled| start of the checks started at their slot, ms.
    spread: Vec<f32>,
}

impl Scheduler {
    pub fn new(engine: Arc<HalfOpen>) -> Self {
        Scheduler {
            engine,
            sink: Arc::new(BatchSink::default()),
            state: Mutex::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                wheel: Wheel::new(),
                rate: 0.0,
                v4: 0,
                v6: 0,
            }),
        }
    }

    /// Whether this scheduler can run `check` (a half-open tcp check of a family with
    /// a raw socket).
    pub fn handles(check: &ResolvedCheck) -> bool {
        matches!(
            check.probe,
            lb_common::state::Probe::Tcp {
                mode: lb_common::state::TcpMode::HalfOpen
            }
        )
    }

    pub fn engine(&self) -> &Arc<HalfOpen> {
        &self.engine
    }

    /// Adds a check of `key`: its first slot drawn uniformly over its interval.
    pub fn add(&self, key: BackendKey, check: &ResolvedCheck) -> Id {
        let now = Instant::now();
        let interval = check.interval.std();
        let first = now + interval.mul_f64(rand::random::<f64>());
        let mut st = lock(&self.state);
        let index = match st.free.pop() {
            Some(i) => i,
            None => {
                st.slots.push(Slot::default());
                (st.slots.len() - 1) as u32
            }
        };
        let sched = Sched {
            key,
            target: check.target,
            interval,
            timeout: check.timeout.std(),
            retry: check.retry,
            delay_before_retry: check.delay_before_retry.std(),
            next_slot: first,
            at: first,
            triggered: false,
            run: None,
            source: None,
        };
        st.count(&sched, 1.0);
        let slot = &mut st.slots[index as usize];
        slot.check = Some(sched);
        let generation = slot.generation;
        st.wheel.push((first, index, generation));
        drop(st);
        // The task may sleep past this check's first slot.
        self.sink.wake.notify_one();
        Id { index, generation }
    }

    /// Removes a check (its pending probe, if any, dropped).
    pub fn remove(&self, id: Id) {
        let mut st = lock(&self.state);
        let Some(slot) = st.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(s) = slot.check.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        st.free.push(id.index);
        st.count(&s, -1.0);
        if st.rate < POLL_RATE {
            // No task may be left to poll (the checks are being stopped): answers to
            // other users of the engine need the receive task again.
            self.engine.set_polled(false);
        }
        drop(st);
        if let Some(Run {
            attempt: Attempt::Probe(p),
            ..
        }) = s.run
            && let Some(lport) = p.lport
        {
            self.engine.release(s.target, lport, p.isn);
        }
    }

    /// An immediate check of `id` (after the one running, if any).
    pub fn trigger(&self, id: Id) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let Some(s) = st.get(id) else { return };
        s.triggered = true;
        if s.run.is_none() {
            s.at = now;
            st.wheel.push((now, id.index, id.generation));
        }
        drop(st);
        self.sink.wake.notify_one();
    }

    /// Checks registered.
    pub fn len(&self) -> usize {
        let st = lock(&self.state);
        st.slots.len() - st.free.len()
    }

    /// The scheduler's task: runs until `health` is gone (or the task is aborted).
    pub async fn run(self: Arc<Self>, health: Weak<Inner>) {
        let mut answers: Vec<BatchAnswer> = Vec::new();
        let mut due: Vec<Timer> = Vec::new();
        // Buffers kept from pass to pass.
        let mut pass = Pass::default();
        let mut syns: Vec<Syn> = Vec::new();
        let mut send_bufs = SendBuffers::default();
        // SYNs the send buffer had no room for, tried again a millisecond later.
        let mut again: Vec<Out> = Vec::new();
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            let (next, polling, v4, v6) = {
                let st = lock(&self.state);
                (
                    st.wheel.next_due(),
                    st.rate >= POLL_RATE,
                    st.v4 > 0,
                    st.v6 > 0,
                )
            };
            self.engine.set_polled(polling);
            let soon = Instant::now() + AGAIN;
            let next = match next {
                Some(t) if polling => Some(t.min(soon)),
                None if polling => Some(soon),
                t => t,
            };
            let next = match (next, again.is_empty()) {
                (t, false) => {
                    Some(t.map_or(Instant::now() + AGAIN, |t| t.min(Instant::now() + AGAIN)))
                }
                (t, true) => t,
            };
            match next {
                Some(t) => {
                    sleep.as_mut().reset(t);
                    tokio::select! {
                        () = &mut sleep => {}
                        () = self.sink.wake.notified() => {}
                    }
                }
                None => self.sink.wake.notified().await,
            }
            if polling {
                self.engine.poll(v4, v6);
            } else {
                // The receive task may have gone with another runtime.
                self.engine.ensure_receiver();
            }
            let now = Instant::now();
            self.sink.take_into(&mut answers);
            pass.out.append(&mut again);
            {
                let mut st = lock(&self.state);
                for a in answers.drain(..) {
                    st.answer(a, now, &mut pass);
                }
                st.wheel.take_due(now, &mut due);
                for (t, index, generation) in due.drain(..) {
                    st.fire(
                        &self.engine,
                        &self.sink,
                        index,
                        generation,
                        t,
                        now,
                        &mut pass,
                    );
                }
            }
            if !pass.out.is_empty() {
                syns.clear();
                syns.extend(pass.out.iter().map(|o| o.syn));
                let results = self.engine.send_many(&syns, &mut send_bufs);
                let mut st = lock(&self.state);
                let mut out = std::mem::take(&mut pass.out);
                for (mut o, r) in out.drain(..).zip(results) {
                    let Err(e) = r else { continue };
                    let full = matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS));
                    if full && o.tries + 1 < SEND_TRIES {
                        o.tries += 1;
                        again.push(o);
                        continue;
                    }
                    st.send_failed(&self.engine, o.id, o.isn, e, now, &mut pass);
                }
                // The buffer kept for the next pass.
                pass.out = out;
            }
            let Some(inner) = health.upgrade() else {
                return;
            };
            let h = Health { inner };
            h.record_spreads(&pass.spread);
            pass.spread.clear();
            if !pass.done.is_empty() {
                h.report_batch(&mut pass.done);
            }
        }
    }
}

impl State {
    fn get(&mut self, id: Id) -> Option<&mut Sched> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.check.as_mut())
    }

    fn schedule(&mut self, id: Id, at: Instant) {
        if let Some(s) = self.get(id) {
            s.at = at;
            self.wheel.push((at, id.index, id.generation));
        }
    }

    /// The wheel entry (`t`) of check `index` came due.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        engine: &HalfOpen,
        sink: &Arc<BatchSink>,
        index: u32,
        generation: u32,
        t: Instant,
        now: Instant,
        pass: &mut Pass,
    ) {
        let id = Id { index, generation };
        let Some(s) = self.get(id) else { return };
        if s.at != t {
            return;
        }
        match &mut s.run {
            None => {
                let triggered = std::mem::take(&mut s.triggered);
                if !triggered {
                    let error = if now >= s.next_slot {
                        now - s.next_slot
                    } else {
                        s.next_slot - now
                    };
                    pass.spread.push(error.as_secs_f32() * 1000.0);
                }
                s.run = Some(Run {
                    triggered,
                    started: now,
                    attempts: 0,
                    attempt: Attempt::Delay,
                });
                self.start_attempt(engine, sink, id, now, pass);
            }
            Some(Run {
                attempt: Attempt::Delay,
                ..
            }) => self.start_attempt(engine, sink, id, now, pass),
            Some(Run {
                attempt: Attempt::Probe(p),
                ..
            }) => {
                // What the entry was for: its time, not `now` (taken up to 1 ms early).
                if t >= p.deadline {
                    if let Some(lport) = p.lport {
                        engine.release(s.target, lport, p.isn);
                    }
                    self.end_attempt(id, false, "timeout".into(), now, pass);
                    return;
                }
                let target = s.target;
                let next = match p.lport {
                    // Waiting for a source port.
                    None => match engine.register(target, p.isn, sink, index) {
                        Some(lport) => {
                            p.lport = Some(lport);
                            p.first_sent = now;
                            pass.out.push(Out {
                                id,
                                isn: p.isn,
                                syn: Syn::new(p.source, target, lport, p.isn),
                                tries: 0,
                            });
                            next_send(p, s.timeout)
                        }
                        None => Some(now + AGAIN),
                    },
                    // Unanswered: the SYN again, on the kernel's schedule.
                    Some(lport) => {
                        pass.out.push(Out {
                            id,
                            isn: p.isn,
                            syn: Syn::new(p.source, target, lport, p.isn),
                            tries: 0,
                        });
                        p.since_sent += p.rto;
                        p.rto *= 2;
                        next_send(p, s.timeout)
                    }
                };
                let at = next.map_or(p.deadline, |n| n.min(p.deadline));
                self.schedule(id, at);
            }
        }
    }

    /// The next attempt of the check under way: a port, a SYN queued.
    fn start_attempt(
        &mut self,
        engine: &HalfOpen,
        sink: &Arc<BatchSink>,
        id: Id,
        now: Instant,
        pass: &mut Pass,
    ) {
        let Some(s) = self.get(id) else { return };
        let target = s.target;
        let timeout = s.timeout;
        let cached = s
            .source
            .filter(|(_, at)| now.saturating_duration_since(*at) < ROUTE_TTL);
        let looked_up = match cached {
            Some((src, _)) => Ok(src),
            None => engine.source_for(target),
        };
        if cached.is_none()
            && let Ok(src) = looked_up
        {
            s.source = Some((src, now));
        }
        let run = s.run.as_mut().expect("a check under way");
        run.attempts += 1;
        let source = match looked_up {
            Ok(src) => src,
            Err(e) => {
                run.attempt = Attempt::Probe(Probe {
                    start: now,
                    deadline: now + timeout,
                    isn: 0,
                    source: target.ip(),
                    lport: None,
                    first_sent: now,
                    since_sent: Duration::ZERO,
                    rto: FIRST_RTO,
                });
                self.end_attempt(id, false, io_detail(&e).into(), now, pass);
                return;
            }
        };
        let isn = engine.isn_for(target);
        let lport = engine.register(target, isn, sink, id.index);
        let p = Probe {
            start: now,
            deadline: now + timeout,
            isn,
            source,
            lport,
            first_sent: now,
            since_sent: Duration::ZERO,
            rto: FIRST_RTO,
        };
        let at = match lport {
            Some(lport) => {
                pass.out.push(Out {
                    id,
                    isn,
                    syn: Syn::new(source, target, lport, isn),
                    tries: 0,
                });
                next_send(&p, timeout).map_or(p.deadline, |n| n.min(p.deadline))
            }
            None => (now + AGAIN).min(p.deadline),
        };
        run.attempt = Attempt::Probe(p);
        self.schedule(id, at);
    }

    /// The current attempt of `id` ended: the check is done, or the next attempt waits.
    fn end_attempt(
        &mut self,
        id: Id,
        ok: bool,
        detail: Cow<'static, str>,
        now: Instant,
        pass: &mut Pass,
    ) {
        let Some(s) = self.get(id) else { return };
        let Some(run) = s.run.as_mut() else { return };
        let took = match &run.attempt {
            Attempt::Probe(p) => now.saturating_duration_since(p.start),
            Attempt::Delay => Duration::ZERO,
        };
        if !ok && run.attempts <= s.retry {
            run.attempt = Attempt::Delay;
            let at = now + s.delay_before_retry;
            self.schedule(id, at);
            return;
        }
        let run = s.run.take().expect("checked");
        pass.done.push(Done {
            id,
            key: s.key,
            ok,
            detail,
            took,
            attempts: run.attempts,
        });
        // Fixed rate from the slot (or from the start of a triggered check); slots
        // missed by a long check are skipped.
        let base = if run.triggered {
            run.started
        } else {
            s.next_slot
        };
        let mut next = base + s.interval;
        if next <= now && !s.interval.is_zero() {
            let behind = now - next;
            let skip = behind.as_nanos() / s.interval.as_nanos() + 1;
            next += s.interval * skip as u32;
        }
        s.next_slot = next;
        let at = if s.triggered { now } else { next };
        self.schedule(id, at);
    }

    /// An answer the receive task queued.
    fn answer(&mut self, a: BatchAnswer, now: Instant, pass: &mut Pass) {
        // The token is the slot index; the ISN tells whether the answer is the current
        // probe's (the slot may have been reused, or the probe timed out).
        let Some(slot) = self.slots.get(a.token as usize) else {
            return;
        };
        let id = Id {
            index: a.token,
            generation: slot.generation,
        };
        let Some(s) = self.get(id) else { return };
        let current = matches!(&s.run, Some(Run { attempt: Attempt::Probe(p), .. })
            if p.isn == a.isn && p.lport.is_some());
        if !current {
            return;
        }
        // The receive task dropped the registration with the answer.
        let (ok, detail) = match a.answer {
            Answer::Open => (true, Cow::Borrowed("SYN-ACK (half-open)")),
            Answer::Refused => (false, Cow::Borrowed("connection refused")),
            Answer::Unreachable(what) => (false, Cow::Owned(what)),
        };
        self.end_attempt(id, ok, detail, now, pass);
    }

    /// A SYN could not be sent: its attempt fails with the error.
    fn send_failed(
        &mut self,
        engine: &HalfOpen,
        id: Id,
        isn: u32,
        e: &std::io::Error,
        now: Instant,
        pass: &mut Pass,
    ) {
        let Some(s) = self.get(id) else { return };
        let target = s.target;
        let Some(Run {
            attempt: Attempt::Probe(p),
            ..
        }) = &s.run
        else {
            return;
        };
        if p.isn != isn {
            return;
        }
        if let Some(lport) = p.lport {
            engine.release(target, lport, isn);
        }
        self.end_attempt(id, false, io_detail(e).into(), now, pass);
    }
}

/// When the probe's SYN goes out again, if its timeout leaves room for that.
fn next_send(p: &Probe, timeout: Duration) -> Option<Instant> {
    (p.since_sent + p.rto < timeout).then(|| p.first_sent + p.since_sent + p.rto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_gives_every_entry_once_in_its_millisecond_and_reuses_bucket_memory() {
        let mut w = Wheel::new();
        let origin = w.origin;
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let (mut pushed, mut taken) = (0u64, 0u64);
        let mut out = Vec::new();
        // Three laps: each millisecond ten entries due a second later, and now and then
        // one past the span (through the heap).
        for ms in 0..3 * WHEEL_MS {
            for j in 0..10 {
                w.push((at(ms + 1000), ms as u32, j));
                pushed += 1;
            }
            if ms % 100 == 0 {
                w.push((at(ms + WHEEL_MS + 5), ms as u32, 99));
                pushed += 1;
            }
            w.take_due(at(ms), &mut out);
            for (t, _, _) in out.drain(..) {
                assert_eq!(w.ms(t), ms, "an entry for {} ms taken at {ms} ms", w.ms(t));
                taken += 1;
            }
            // Entries live a second: about a thousand buckets hold memory at a time,
            // not the whole span.
            let holding = w.buckets.iter().filter(|b| b.capacity() > 0).count() + w.spare.len();
            assert!(holding <= 1100, "{holding} buckets' memory at {ms} ms");
        }
        w.take_due(at(5 * WHEEL_MS), &mut out);
        taken += out.len() as u64;
        assert_eq!(taken, pushed);
        assert!(w.next_due().is_none());
    }
}
