//! What the exporter shows of the checker as a whole: check durations (a histogram per
//! check type), failures by type and reason, and state transitions.
//!
//! Reasons are a small fixed set (a label per distinct error text would be unbounded):
//! the check's detail is classified by [`failure_reason`].

use std::{collections::BTreeMap, time::Duration};

use crate::metrics::{CheckHistogram, HealthState, HealthTotals};

/// Upper bounds of the duration buckets, in seconds: from a loopback connect (well
/// under a millisecond) to the longest timeouts.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Debug, Default)]
pub struct CheckStats {
    durations: BTreeMap<&'static str, Histogram>,
    failures: BTreeMap<(&'static str, &'static str), u64>,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
}

/// The failure class of a check's detail text (see checks.rs for the texts).
pub fn failure_reason(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    let has = |w: &str| d.contains(w);
    if has("timeout") || has("timed out") {
        "timeout"
    } else if has("refused") || has("reset") {
        "refused"
    } else if has("unreachable") || has("no route") {
        "unreachable"
    } else if has("tls") || has("certificate") {
        "tls"
    } else if d.starts_with("http ") && has("expected") {
        "status"
    } else if has("does not contain") || has("lacks") {
        "content"
    } else if has("exit status") || has("signal") {
        "exit"
    } else {
        "other"
    }
}

impl CheckStats {
    /// One check of type `kind` that took `took`; `failed` holds its detail if it failed.
    pub fn observe(&mut self, kind: &'static str, took: Duration, failed: Option<&str>) {
        let secs = took.as_secs_f64();
        let h = self.durations.entry(kind).or_default();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.counts[i] += 1;
        h.sum += secs;
        if let Some(detail) = failed {
            *self
                .failures
                .entry((kind, failure_reason(detail)))
                .or_default() += 1;
        }
    }

    pub fn transition(&mut self, from: HealthState, to: HealthState) {
        *self
            .transitions
            .entry((from.label(), to.label()))
            .or_default() += 1;
    }

    pub fn totals(&self) -> HealthTotals {
        HealthTotals {
            durations: self
                .durations
                .iter()
                .map(|(kind, h)| {
                    let mut acc = 0;
                    let buckets = BUCKETS
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(h.counts)
                        .map(|(le, n)| {
                            acc += n;
                            (le, acc)
                        })
                        .collect();
                    CheckHistogram {
                        kind,
                        count: acc,
                        sum: h.sum,
                        buckets,
                    }
                })
                .collect(),
            failures: self
                .failures
                .iter()
                .map(|(&(k, r), &n)| (k, r, n))
                .collect(),
            transitions: self
                .transitions
                .iter()
                .map(|(&(f, t), &n)| (f, t, n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_fall_into_a_few_reasons() {
        for (d, r) in [
            ("timeout", "timeout"),
            ("connection refused", "refused"),
            ("HTTP 200, expected 500", "status"),
            ("HTTP 200, body does not contain \"x\"", "content"),
            ("TLS: invalid peer certificate: UnknownIssuer", "tls"),
            ("exit status 3", "exit"),
            ("no route to host", "unreachable"),
            ("something new", "other"),
        ] {
            assert_eq!(failure_reason(d), r, "{d}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut s = CheckStats::default();
        s.observe("tcp", Duration::from_micros(300), None);
        s.observe("tcp", Duration::from_millis(3), Some("connection refused"));
        s.observe("tcp", Duration::from_secs(9), Some("timeout"));
        s.transition(HealthState::Up, HealthState::Down);
        let t = s.totals();
        let h = &t.durations[0];
        assert_eq!((h.kind, h.count), ("tcp", 3));
        assert!((h.sum - 9.0033).abs() < 1e-9, "{}", h.sum);
        assert_eq!(h.buckets[0], (0.0005, 1));
        assert_eq!(h.buckets[3], (0.005, 2));
        assert_eq!(h.buckets[BUCKETS.len() - 1], (5.0, 2));
        assert_eq!(h.buckets[BUCKETS.len()], (f64::INFINITY, 3));
        assert_eq!(
            t.failures,
            vec![("tcp", "refused", 1), ("tcp", "timeout", 1)]
        );
        assert_eq!(t.transitions, vec![("UP", "DOWN", 1)]);
    }
}
