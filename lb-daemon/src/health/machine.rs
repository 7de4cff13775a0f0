//! One backend's health state machine, pure (time is passed in, in milliseconds),
//! and the per-service plan that turns the machines into table weights.
//!
//! States are DPVS's: UP, DOWN-WAIT, DOWN, UP-WARM.
//!
//! - **Active checks** count like HAProxy: `fall` *consecutive* failures take a
//!   backend DOWN, `rise` *consecutive* passes bring it back; a pass resets the failure
//!   run and a failure the pass run. A failure short of `fall` shows as DOWN-WAIT
//!   (HAProxy's "UP, going down"); the backend stays in its table.
//! - **Passive reports** (from the data plane) work like DPVS's `dest-check`: a report
//!   moves UP to DOWN-WAIT; `down_after_reports` reports (each within `down_wait` of the
//!   previous) take it DOWN; with no further report for `down_wait`, it is UP again.
//!   Where active checks are configured they confirm (a failed check with a report
//!   pending: DOWN) or overrule (a passed check: back UP).
//! - **Hold-down**: a backend that goes DOWN stays DOWN for at least its current
//!   *inhibit* time; the inhibit time starts at `inhibit_min` and doubles each time it
//!   goes DOWN (up to `inhibit_max`), and halves for every stretch of its current length
//!   the backend stays up. A flapping backend is so held down longer and longer.
//! - **Recovery**: when the hold is over (and, with active checks, after `rise` passes)
//!   a backend goes to UP-WARM: back in its table, its weight ramping up over `warmup`.
//!   It is UP once the warm-up is over and it has been confirmed: by the active checks,
//!   or (passive only) by a report that traffic to it succeeds.
//!
//! A state that would be left the moment it is entered is skipped (with
//! `down_after_reports = 1` a report goes straight from UP to DOWN; without warm-up an
//! actively checked backend goes from DOWN straight to UP), so every event is a state
//! the backend was really in.

use crate::metrics::HealthState;

/// Milliseconds on a monotonic clock.
pub type Ms = u64;

/// The settings one machine runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Whether active checks run (they alone can confirm a recovery).
    pub active: bool,
    pub rise: u32,
    pub fall: u32,
    /// Whether passive reports are acted upon.
    pub passive: bool,
    pub down_after_reports: u32,
    pub down_wait: Ms,
    pub inhibit_min: Ms,
    pub inhibit_max: Ms,
    pub warmup: Ms,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            active: false,
            rise: 2,
            fall: 3,
            passive: true,
            down_after_reports: 1,
            down_wait: 3_000,
            inhibit_min: 5_000,
            inhibit_max: 3_600_000,
            warmup: 0,
        }
    }
}

/// What the machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The result of an active check (after its retries).
    Check {
        ok: bool,
        detail: std::borrow::Cow<'static, str>,
    },
    /// The data plane saw this backend fail to answer.
    PassiveFailure(String),
    /// The data plane saw traffic to this backend succeed.
    PassiveSuccess,
}

/// A change of state, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at: Ms,
    pub from: HealthState,
    pub to: HealthState,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    state: HealthState,
    since: Ms,
    /// Consecutive passed / failed active checks.
    ok_run: u32,
    fail_run: u32,
    /// Passive reports in the current DOWN-WAIT.
    reports: u32,
    /// DOWN-WAIT: back to `resume` at this time unless confirmed.
    wait_until: Option<Ms>,
    /// The state DOWN-WAIT returns to when overruled.
    resume: HealthState,
    /// DOWN: not before this time.
    held_until: Ms,
    /// The hold-down the next DOWN gets (before decay).
    inhibit: Ms,
    /// When the backend last came back (entered UP-WARM or UP from DOWN).
    recovered_at: Option<Ms>,
    /// UP-WARM: confirmed by checks or traffic.
    confirmed: bool,
    /// UP-WARM: when the warm-up started.
    warm_start: Ms,
    /// How many times it went DOWN.
    downs: u64,
}

impl Machine {
    /// A new backend starts UP (HAProxy's and IPVS's default: configuring a backend
    /// does not wait for a first check).
    pub fn new(p: &Params, now: Ms) -> Self {
        Machine {
            state: HealthState::Up,
            since: now,
            ok_run: 0,
            fail_run: 0,
            reports: 0,
            wait_until: None,
            resume: HealthState::Up,
            held_until: 0,
            inhibit: p.inhibit_min,
            recovered_at: None,
            confirmed: true,
            warm_start: now,
            downs: 0,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }
    pub fn since(&self) -> Ms {
        self.since
    }
    pub fn ok_run(&self) -> u32 {
        self.ok_run
    }
    pub fn fail_run(&self) -> u32 {
        self.fail_run
    }
    pub fn reports(&self) -> u32 {
        self.reports
    }
    pub fn downs(&self) -> u64 {
        self.downs
    }
    /// The hold-down the next DOWN would get, before decay.
    pub fn inhibit(&self) -> Ms {
        self.inhibit
    }
    /// DOWN and still held down: until when.
    pub fn held_until(&self, now: Ms) -> Option<Ms> {
        (self.state == HealthState::Down && self.held_until > now).then_some(self.held_until)
    }

    /// Out of its table: only DOWN is (DOWN-WAIT is not confirmed yet).
    pub fn excluded(&self) -> bool {
        self.state == HealthState::Down
    }

    /// The share of its weight the backend gets now: ramps over the warm-up, in tenths
    /// (so that a table is rebuilt at most ten times per warm-up), at least 0.1.
    pub fn weight_tenths(&self, p: &Params, now: Ms) -> u32 {
        if self.state != HealthState::UpWarm || p.warmup == 0 {
            return 10;
        }
        let elapsed = now.saturating_sub(self.warm_start);
        if elapsed >= p.warmup {
            return 10;
        }
        ((elapsed * 10 / p.warmup) as u32 + 1).clamp(1, 10)
    }

    /// When [`Machine::tick`] next has something to do (a timer expiring, a warm-up
    /// step); a time at or before `now` means "now". `None`: only an input can change
    /// anything.
    pub fn next_deadline(&self, p: &Params, now: Ms) -> Option<Ms> {
        match self.state {
            HealthState::DownWait => self.wait_until.filter(|_| self.fail_run == 0),
            HealthState::Down => {
                // Held: until the hold ends. After it: now, if nothing else is awaited.
                let ready = !p.active || self.ok_run >= p.rise;
                (self.held_until > now || ready).then_some(self.held_until)
            }
            HealthState::UpWarm if p.warmup > 0 => {
                let end = self.warm_start + p.warmup;
                if now >= end {
                    // Warm: UP as soon as confirmed (else an input will do it).
                    return self.confirmed.then_some(end);
                }
                // The next tenth.
                let step = (p.warmup / 10).max(1);
                let k = (now.saturating_sub(self.warm_start)) / step + 1;
                Some((self.warm_start + k * step).min(end))
            }
            _ => None,
        }
    }

    fn go(&mut self, to: HealthState, now: Ms, reason: String, out: &mut Vec<Transition>) {
        if to == self.state {
            return;
        }
        out.push(Transition {
            at: now,
            from: self.state,
            to,
            reason,
        });
        self.state = to;
        self.since = now;
    }

    /// Into DOWN, held for the (decayed) inhibit time, which then doubles.
    fn go_down(&mut self, p: &Params, now: Ms, why: String, out: &mut Vec<Transition>) {
        if let Some(r) = self.recovered_at {
            let mut up = now.saturating_sub(r);
            while self.inhibit > p.inhibit_min && up >= self.inhibit {
                up -= self.inhibit;
                self.inhibit = (self.inhibit / 2).max(p.inhibit_min);
            }
        }
        let hold = self
            .inhibit
            .clamp(p.inhibit_min, p.inhibit_max.max(p.inhibit_min));
        self.held_until = now + hold;
        self.inhibit = (hold.saturating_mul(2))
            .min(p.inhibit_max)
            .max(p.inhibit_min);
        self.ok_run = 0;
        self.reports = 0;
        self.wait_until = None;
        self.downs += 1;
        self.go(
            HealthState::Down,
            now,
            format!("{why}; held down for at least {}", fmt_ms(hold)),
            out,
        );
    }

    /// Out of DOWN: to UP-WARM, or straight to UP when there is nothing to wait for.
    fn recover(&mut self, p: &Params, now: Ms, why: String, out: &mut Vec<Transition>) {
        self.recovered_at = Some(now);
        self.warm_start = now;
        self.fail_run = 0;
        self.reports = 0;
        self.confirmed = p.active;
        if p.warmup == 0 && self.confirmed {
            self.go(HealthState::Up, now, why, out);
        } else {
            self.go(HealthState::UpWarm, now, why, out);
        }
    }

    /// UP-WARM to UP when warm and confirmed.
    fn maybe_warm_done(&mut self, p: &Params, now: Ms, out: &mut Vec<Transition>) {
        if self.state == HealthState::UpWarm
            && self.confirmed
            && now.saturating_sub(self.warm_start) >= p.warmup
        {
            let why = if p.warmup > 0 {
                format!("warm-up of {} over", fmt_ms(p.warmup))
            } else {
                "traffic to it succeeds".to_string()
            };
            self.go(HealthState::Up, now, why, out);
        }
    }

    /// Feeds one input; returns the transitions it caused (oldest first).
    pub fn input(&mut self, p: &Params, input: Input, now: Ms) -> Vec<Transition> {
        let mut out = Vec::new();
        match input {
            Input::Check { ok: true, detail } => {
                self.ok_run = self.ok_run.saturating_add(1);
                self.fail_run = 0;
                match self.state {
                    HealthState::Up => {}
                    HealthState::DownWait => {
                        self.reports = 0;
                        self.wait_until = None;
                        let to = self.resume;
                        self.go(to, now, format!("check passed ({detail})"), &mut out);
                    }
                    HealthState::Down => {
                        if self.ok_run >= p.rise && now >= self.held_until {
                            let why =
                                format!("{} consecutive checks passed ({detail})", self.ok_run);
                            self.recover(p, now, why, &mut out);
                        }
                    }
                    HealthState::UpWarm => {
                        self.confirmed = true;
                    }
                }
            }
            Input::Check { ok: false, detail } => {
                self.fail_run = self.fail_run.saturating_add(1);
                self.ok_run = 0;
                match self.state {
                    HealthState::Up | HealthState::UpWarm => {
                        if self.fail_run >= p.fall {
                            let why = format!(
                                "{} consecutive checks failed, last: {detail}",
                                self.fail_run
                            );
                            self.go_down(p, now, why, &mut out);
                        } else {
                            self.resume = self.state;
                            self.wait_until = None;
                            let why =
                                format!("check failed ({} of {}): {detail}", self.fail_run, p.fall);
                            self.go(HealthState::DownWait, now, why, &mut out);
                        }
                    }
                    HealthState::DownWait => {
                        if self.fail_run >= p.fall {
                            let why = format!(
                                "{} consecutive checks failed, last: {detail}",
                                self.fail_run
                            );
                            self.go_down(p, now, why, &mut out);
                        } else if self.reports > 0 {
                            let why = format!(
                                "check failed, confirming {} passive report(s): {detail}",
                                self.reports
                            );
                            self.go_down(p, now, why, &mut out);
                        }
                    }
                    HealthState::Down => {}
                }
            }
            Input::PassiveFailure(reason) if p.passive => match self.state {
                HealthState::Up | HealthState::UpWarm | HealthState::DownWait => {
                    if self.state != HealthState::DownWait {
                        self.resume = self.state;
                        self.reports = 0;
                    }
                    self.reports += 1;
                    if self.reports >= p.down_after_reports {
                        let why = format!(
                            "passive: {reason} ({} report(s), down_after_reports {})",
                            self.reports, p.down_after_reports
                        );
                        self.go_down(p, now, why, &mut out);
                    } else if p.active && self.fail_run > 0 {
                        let why = format!("passive: {reason}, confirming a failed check");
                        self.go_down(p, now, why, &mut out);
                    } else {
                        self.wait_until = Some(now + p.down_wait);
                        let why = format!(
                            "passive: {reason} ({} of {} report(s))",
                            self.reports, p.down_after_reports
                        );
                        self.go(HealthState::DownWait, now, why, &mut out);
                    }
                }
                HealthState::Down => {}
            },
            Input::PassiveFailure(_) => {}
            Input::PassiveSuccess if p.passive => {
                if self.state == HealthState::UpWarm {
                    self.confirmed = true;
                    self.maybe_warm_done(p, now, &mut out);
                }
            }
            Input::PassiveSuccess => {}
        }
        out.extend(self.tick(p, now));
        out
    }

    /// Expires timers: DOWN-WAIT without confirmation, the hold-down, the warm-up.
    pub fn tick(&mut self, p: &Params, now: Ms) -> Vec<Transition> {
        let mut out = Vec::new();
        match self.state {
            HealthState::DownWait => {
                if let Some(t) = self.wait_until
                    && now >= t
                    && self.fail_run == 0
                {
                    self.reports = 0;
                    self.wait_until = None;
                    let to = self.resume;
                    let why = format!("no further failure report for {}", fmt_ms(p.down_wait));
                    self.go(to, now, why, &mut out);
                }
            }
            HealthState::Down if now >= self.held_until => {
                if !p.active {
                    let why = format!(
                        "hold-down of {} over (inhibit), probing with traffic",
                        fmt_ms(self.held_until - self.since)
                    );
                    self.recover(p, now, why, &mut out);
                } else if self.ok_run >= p.rise {
                    let why = format!("hold-down over; {} consecutive checks passed", self.ok_run);
                    self.recover(p, now, why, &mut out);
                }
            }
            HealthState::UpWarm => {}
            _ => {}
        }
        self.maybe_warm_done(p, now, &mut out);
        out
    }

    /// New settings for a running machine (the state and counts stay).
    pub fn reconfigure(&mut self, old: &Params, new: &Params) {
        if old.inhibit_min != new.inhibit_min || old.inhibit_max != new.inhibit_max {
            self.inhibit = self
                .inhibit
                .clamp(new.inhibit_min, new.inhibit_max.max(new.inhibit_min));
        }
        if !new.active && old.active {
            self.ok_run = 0;
            self.fail_run = 0;
        }
    }
}

/// "5s", "1.5s", "250ms".
pub fn fmt_ms(ms: Ms) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// One backend as the service plan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its configured weight (0 = drained by the operator).
    pub weight: u32,
    /// DOWN: out of the table.
    pub excluded: bool,
    /// Its share of the weight now (warm-up), in tenths.
    pub tenths: u32,
}

/// What a service's table gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Effective weight per member, in order.
    pub weights: Vec<u32>,
    /// Every backend that should serve is DOWN: nobody was excluded (or the sorry
    /// server takes over).
    pub fail_open: bool,
    /// The sorry server serves (weights all 0 then, their flows kept).
    pub use_sorry: bool,
}

/// The largest weight the data plane accepts.
const MAX_WEIGHT: u32 = 65535;

/// The table weights of a service: DOWN members get 0 (out of the table, their
/// connections kept), warming ones a share of theirs. When that would leave nobody
/// (every member that has a weight is DOWN), the service fails open: with a sorry
/// server, it alone serves; else every member keeps its configured weight.
///
/// A warming member's share is relative to the others: so that a weight of 1 can
/// ramp too, every weight of the service is multiplied by up to 10 while one warms
/// (Maglev depends only on the ratios, so the others' slots do not move).
pub fn plan(members: &[Member], has_sorry: bool) -> Plan {
    let serving = members.iter().filter(|m| m.weight > 0).count();
    let live = members
        .iter()
        .filter(|m| m.weight > 0 && !m.excluded)
        .count();
    if serving > 0 && live == 0 {
        return Plan {
            weights: if has_sorry {
                vec![0; members.len()]
            } else {
                members.iter().map(|m| m.weight).collect()
            },
            fail_open: true,
            use_sorry: has_sorry,
        };
    }
    let warming = members
        .iter()
        .any(|m| m.weight > 0 && !m.excluded && m.tenths < 10);
    let max_w = members.iter().map(|m| m.weight).max().unwrap_or(0).max(1);
    let scale = if warming {
        (MAX_WEIGHT / max_w).clamp(1, 10)
    } else {
        1
    };
    let weights = members
        .iter()
        .map(|m| {
            if m.excluded || m.weight == 0 {
                0
            } else if m.tenths < 10 {
                (m.weight * scale * m.tenths).div_ceil(10).max(1)
            } else {
                m.weight * scale
            }
        })
        .collect();
    Plan {
        weights,
        fail_open: false,
        use_sorry: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn active() -> Params {
        Params {
            active: true,
            rise: 2,
            fall: 3,
            ..Params::default()
        }
    }

    fn ok() -> Input {
        Input::Check {
            ok: true,
            detail: "ok".into(),
        }
    }
    fn fail() -> Input {
        Input::Check {
            ok: false,
            detail: "connection refused".into(),
        }
    }
    fn report() -> Input {
        Input::PassiveFailure("SYN retransmitted".into())
    }

    fn states(ts: &[Transition]) -> Vec<(HealthState, HealthState)> {
        ts.iter().map(|t| (t.from, t.to)).collect()
    }

    #[test]
    fn fall_counts_consecutive_failures_only() {
        let p = active();
        let mut m = Machine::new(&p, 0);
        // fail, fail, pass, fail, fail: never 3 in a row.
        let mut t = 0;
        for i in [fail(), fail(), ok(), fail(), fail()] {
            t += 1000;
            m.input(&p, i, t);
            assert_ne!(
                m.state(),
                Down,
                "at {t}: cumulative failures must not count"
            );
        }
        assert_eq!(m.state(), DownWait);
        assert_eq!(m.fail_run(), 2);
        let ts = m.input(&p, fail(), t + 1000);
        assert_eq!(states(&ts), vec![(DownWait, Down)]);
        assert!(
            ts[0].reason.contains("3 consecutive checks failed"),
            "{}",
            ts[0].reason
        );
        assert!(
            ts[0].reason.contains("connection refused"),
            "{}",
            ts[0].reason
        );
        assert!(m.excluded());
    }

    #[test]
    fn a_pass_in_down_wait_goes_back_up() {
        let p = active();
        let mut m = Machine::new(&p, 0);
        assert_eq!(states(&m.input(&p, fail(), 1000)), vec![(Up, DownWait)]);
        assert!(!m.excluded(), "DOWN-WAIT stays in the table");
        assert_eq!(states(&m.input(&p, ok(), 2000)), vec![(DownWait, Up)]);
        assert_eq!(m.fail_run(), 0);
    }

    #[test]
    fn fall_one_goes_straight_down() {
        let p = Params {
            fall: 1,
            ..active()
        };
        let mut m = Machine::new(&p, 0);
        assert_eq!(states(&m.input(&p, fail(), 1000)), vec![(Up, Down)]);
    }

    #[test]
    fn rise_counts_consecutive_passes_after_the_hold() {
        let p = active();
        let mut m = Machine::new(&p, 0);
        for t in [1000, 2000, 3000] {
            m.input(&p, fail(), t);
        }
        assert_eq!(m.state(), Down);
        assert_eq!(m.held_until(3000), Some(8000), "inhibit_min 5 s");
        // pass, fail, pass: the run restarts.
        m.input(&p, ok(), 9000);
        m.input(&p, fail(), 10_000);
        assert_eq!(m.state(), Down);
        assert!(m.input(&p, ok(), 11_000).is_empty());
        let ts = m.input(&p, ok(), 12_000);
        assert_eq!(states(&ts), vec![(Down, Up)], "no warm-up: straight to UP");
        assert!(
            ts[0].reason.contains("2 consecutive checks passed"),
            "{}",
            ts[0].reason
        );
    }

    #[test]
    fn passes_during_the_hold_count_and_recover_when_it_ends() {
        let p = active();
        let mut m = Machine::new(&p, 0);
        for t in [1000, 2000, 3000] {
            m.input(&p, fail(), t);
        }
        // Held until 8000: passes at 4000 and 5000 reach rise, but the hold wins.
        assert!(m.input(&p, ok(), 4000).is_empty());
        assert!(m.input(&p, ok(), 5000).is_empty());
        assert_eq!(m.next_deadline(&p, 5000), Some(8000));
        assert!(m.tick(&p, 7999).is_empty());
        assert_eq!(states(&m.tick(&p, 8000)), vec![(Down, Up)]);
    }

    fn down_at(m: &mut Machine, p: &Params, t: Ms) -> Ms {
        let ts = m.input(p, report(), t);
        assert_eq!(ts.last().map(|x| x.to), Some(Down), "at {t}: {ts:?}");
        m.held_until(t).expect("held") - t
    }

    #[test]
    fn inhibit_doubles_on_each_repeated_failure_up_to_the_maximum() {
        let p = Params::default(); // passive only
        let mut m = Machine::new(&p, 0);
        let mut t = 1000;
        let mut holds = Vec::new();
        for _ in 0..12 {
            let hold = down_at(&mut m, &p, t);
            holds.push(hold / 1000);
            t += hold;
            // Hold over: UP-WARM (probing with traffic), and it fails again at once.
            let ts = m.tick(&p, t);
            assert_eq!(states(&ts), vec![(Down, UpWarm)]);
            t += 100;
        }
        assert_eq!(
            holds,
            vec![5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
    }

    #[test]
    fn inhibit_decays_while_the_backend_stays_up() {
        let p = Params::default();
        let mut m = Machine::new(&p, 0);
        let mut t = 0;
        for _ in 0..4 {
            t += down_at(&mut m, &p, t);
            m.tick(&p, t);
            m.input(&p, Input::PassiveSuccess, t);
        }
        // Held 5, 10, 20, 40; the next would be 80.
        assert_eq!(m.inhibit(), 80_000);
        // Up for 80 s: halves to 40; 40 s more: 20.
        t += 120_000;
        assert_eq!(down_at(&mut m, &p, t), 20_000);
        // A long stable stretch brings it back to the minimum.
        t += 20_000;
        m.tick(&p, t);
        t += 3_600_000;
        assert_eq!(down_at(&mut m, &p, t), 5_000);
    }

    #[test]
    fn flapping_backend_is_damped() {
        // Active checks flapping every other check with fall 1 / rise 1: each DOWN
        // holds longer, so over 10 minutes it spends most of the time out.
        let p = Params {
            rise: 1,
            fall: 1,
            ..active()
        };
        let mut m = Machine::new(&p, 0);
        let mut downs = 0;
        let mut down_ms = 0;
        let mut t = 0;
        let mut last = (m.state(), 0);
        while t < 600_000 {
            t += 1000;
            let input = if (t / 1000) % 2 == 0 { ok() } else { fail() };
            for x in m.input(&p, input, t) {
                if x.to == Down {
                    downs += 1;
                }
                if last.0 == Down {
                    down_ms += x.at - last.1;
                }
                last = (x.to, x.at);
            }
        }
        if last.0 == Down {
            down_ms += t - last.1;
        }
        // Undamped it would go down 300 times.
        assert!(downs <= 8, "{downs} DOWNs in 10 minutes");
        assert!(down_ms > 500_000, "down only {down_ms} ms of 600000");
    }

    #[test]
    fn passive_reports_wait_then_go_down_or_expire() {
        let p = Params {
            down_after_reports: 3,
            ..Params::default()
        };
        let mut m = Machine::new(&p, 0);
        assert_eq!(states(&m.input(&p, report(), 1000)), vec![(Up, DownWait)]);
        assert_eq!(m.next_deadline(&p, 1000), Some(4000));
        m.input(&p, report(), 2000);
        assert_eq!(m.reports(), 2);
        // No third within down_wait: back UP.
        assert!(m.tick(&p, 4999).is_empty());
        let ts = m.tick(&p, 5000);
        assert_eq!(states(&ts), vec![(DownWait, Up)]);
        // Three in a row: DOWN.
        m.input(&p, report(), 10_000);
        m.input(&p, report(), 11_000);
        let ts = m.input(&p, report(), 12_000);
        assert_eq!(states(&ts), vec![(DownWait, Down)]);
        assert!(ts[0].reason.contains("3 report(s)"), "{}", ts[0].reason);
    }

    #[test]
    fn one_report_by_default_takes_a_backend_straight_down() {
        let p = Params::default();
        let mut m = Machine::new(&p, 0);
        let ts = m.input(&p, report(), 1000);
        assert_eq!(states(&ts), vec![(Up, Down)]);
        assert!(
            ts[0].reason.starts_with("passive: SYN retransmitted"),
            "{}",
            ts[0].reason
        );
    }

    #[test]
    fn passive_recovery_goes_through_up_warm_until_traffic_succeeds() {
        let p = Params::default();
        let mut m = Machine::new(&p, 0);
        down_at(&mut m, &p, 1000);
        assert!(m.tick(&p, 5999).is_empty());
        assert_eq!(states(&m.tick(&p, 6000)), vec![(Down, UpWarm)]);
        assert!(!m.excluded());
        assert!(m.tick(&p, 60_000).is_empty(), "waits for traffic");
        let ts = m.input(&p, Input::PassiveSuccess, 61_000);
        assert_eq!(states(&ts), vec![(UpWarm, Up)]);
    }

    #[test]
    fn active_checks_confirm_or_overrule_passive_reports() {
        let p = Params {
            down_after_reports: 5,
            ..active()
        };
        // Overrule: a report, then a passing check.
        let mut m = Machine::new(&p, 0);
        m.input(&p, report(), 1000);
        assert_eq!(m.state(), DownWait);
        assert_eq!(states(&m.input(&p, ok(), 1100)), vec![(DownWait, Up)]);
        // Confirm: a report, then a failing check.
        let mut m = Machine::new(&p, 0);
        m.input(&p, report(), 1000);
        let ts = m.input(&p, fail(), 1100);
        assert_eq!(states(&ts), vec![(DownWait, Down)]);
        assert!(ts[0].reason.contains("confirming"), "{}", ts[0].reason);
        // A passive DOWN needs rise passes to come back, even after the hold.
        let p1 = Params {
            down_after_reports: 1,
            ..active()
        };
        let mut m = Machine::new(&p1, 0);
        m.input(&p1, report(), 1000);
        assert_eq!(m.state(), Down);
        assert!(m.tick(&p1, 7000).is_empty(), "hold over, but no passes yet");
        m.input(&p1, ok(), 8000);
        assert_eq!(states(&m.input(&p1, ok(), 9000)), vec![(Down, Up)]);
    }

    #[test]
    fn passive_reports_are_ignored_when_disabled() {
        let p = Params {
            passive: false,
            ..active()
        };
        let mut m = Machine::new(&p, 0);
        assert!(m.input(&p, report(), 1000).is_empty());
        assert_eq!(m.state(), Up);
    }

    #[test]
    fn warmup_ramps_in_tenths_then_up() {
        let p = Params {
            warmup: 10_000,
            fall: 1,
            rise: 1,
            ..active()
        };
        let mut m = Machine::new(&p, 0);
        m.input(&p, fail(), 1000);
        let ts = m.input(&p, ok(), 6000);
        assert_eq!(states(&ts), vec![(Down, UpWarm)]);
        assert_eq!(m.weight_tenths(&p, 6000), 1);
        assert_eq!(m.weight_tenths(&p, 10_999), 5);
        assert_eq!(m.next_deadline(&p, 10_999), Some(11_000));
        assert_eq!(m.weight_tenths(&p, 15_999), 10);
        assert!(m.tick(&p, 15_999).is_empty());
        assert_eq!(states(&m.tick(&p, 16_000)), vec![(UpWarm, Up)]);
        assert_eq!(m.weight_tenths(&p, 16_000), 10);
    }

    /// Ticks only when `next_deadline` says so (as `Health::tick` does), every 100 ms.
    fn drive(m: &mut Machine, p: &Params, from: Ms, to: Ms) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            if m.next_deadline(p, t).is_some_and(|d| d <= t) {
                out.extend(m.tick(p, t));
            }
            t += 100;
        }
        out
    }

    #[test]
    fn deadlines_wake_the_timer_for_every_timed_transition() {
        // Hold-down over with the passes already counted: recovered by the timer.
        let p = active();
        let mut m = Machine::new(&p, 0);
        for t in [1000, 2000, 3000] {
            m.input(&p, fail(), t);
        }
        m.input(&p, ok(), 4000);
        m.input(&p, ok(), 5000);
        let ts = drive(&mut m, &p, 5000, 9000);
        assert_eq!(states(&ts), vec![(Down, Up)]);
        assert_eq!(ts[0].at, 8000);
        // Hold-down over without passes: nothing until a check passes.
        let mut m = Machine::new(&p, 0);
        for t in [1000, 2000, 3000] {
            m.input(&p, fail(), t);
        }
        assert!(drive(&mut m, &p, 3000, 20_000).is_empty());
        assert_eq!(m.next_deadline(&p, 20_000), None);
        // Warm-up over: UP by the timer.
        let pw = Params {
            warmup: 2000,
            fall: 1,
            rise: 1,
            ..active()
        };
        let mut m = Machine::new(&pw, 0);
        m.input(&pw, fail(), 0);
        m.input(&pw, ok(), 5000);
        assert_eq!(m.state(), UpWarm);
        let ts = drive(&mut m, &pw, 5000, 8000);
        assert_eq!(states(&ts), vec![(UpWarm, Up)]);
        assert_eq!(ts[0].at, 7000);
        // Passive DOWN-WAIT expiry and passive hold-down end, by the timer.
        let pp = Params {
            down_after_reports: 2,
            ..Params::default()
        };
        let mut m = Machine::new(&pp, 0);
        m.input(&pp, report(), 1000);
        let ts = drive(&mut m, &pp, 1000, 5000);
        assert_eq!(states(&ts), vec![(DownWait, Up)]);
        assert_eq!(ts[0].at, 4000);
        m.input(&pp, report(), 10_000);
        m.input(&pp, report(), 10_500);
        assert_eq!(m.state(), Down);
        let ts = drive(&mut m, &pp, 10_500, 16_000);
        assert_eq!(states(&ts), vec![(Down, UpWarm)]);
        assert_eq!(ts[0].at, 15_500);
    }

    fn member(weight: u32, excluded: bool) -> Member {
        Member {
            weight,
            excluded,
            tenths: 10,
        }
    }

    #[test]
    fn down_members_leave_the_table() {
        let pl = plan(
            &[member(1, false), member(2, true), member(3, false)],
            false,
        );
        assert_eq!(pl.weights, vec![1, 0, 3]);
        assert!(!pl.fail_open);
    }

    #[test]
    fn all_down_fails_open_or_uses_the_sorry_server() {
        let all = [member(1, true), member(2, true), member(0, false)];
        let pl = plan(&all, false);
        assert!(pl.fail_open && !pl.use_sorry);
        assert_eq!(pl.weights, vec![1, 2, 0], "the configured weights stay");
        let pl = plan(&all, true);
        assert!(pl.fail_open && pl.use_sorry);
        assert_eq!(pl.weights, vec![0, 0, 0]);
        // Drained by the operator is not a failure.
        let pl = plan(&[member(0, false), member(0, true)], false);
        assert!(!pl.fail_open);
        assert_eq!(pl.weights, vec![0, 0]);
        // No backends at all: nothing to fail open to.
        assert!(!plan(&[], true).fail_open);
    }

    #[test]
    fn warming_member_gets_its_share_and_the_others_scale() {
        let warm = Member {
            weight: 1,
            excluded: false,
            tenths: 3,
        };
        let pl = plan(&[member(1, false), warm, member(2, false)], false);
        assert_eq!(pl.weights, vec![10, 3, 20]);
        // Large weights: the scale stays within 65535.
        let warm = Member {
            weight: 60000,
            excluded: false,
            tenths: 5,
        };
        let pl = plan(&[member(60000, false), warm], false);
        assert_eq!(pl.weights, vec![60000, 30000]);
        // A DOWN member does not make the others scale.
        let pl = plan(&[member(1, false), member(1, true)], false);
        assert_eq!(pl.weights, vec![1, 0]);
    }

    #[test]
    fn scaling_all_weights_keeps_the_maglev_table() {
        use lb_common::maglev::{MaglevBackend, build};
        let ws = [1u32, 1, 2, 3];
        let one: Vec<MaglevBackend> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| MaglevBackend {
                id: i as u32 + 1,
                weight: *w,
            })
            .collect();
        let ten: Vec<MaglevBackend> = one
            .iter()
            .map(|b| MaglevBackend {
                id: b.id,
                weight: b.weight * 10,
            })
            .collect();
        assert_eq!(build(&one, 65537), build(&ten, 65537));
    }
}
