//! The transition log: every state change is an [`Event`], kept in a bounded ring
//! (the recent ones, for `GET /v1/events` and `lbctl events`) and written to the log
//! (all of them).

use std::{
    collections::VecDeque,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// How many events the ring keeps.
pub const EVENT_RING: usize = 1024;

/// One transition of a backend (or, with `backend` null, of a service: fail-open).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Increasing number, for polling (`?since=`).
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub unix_time: f64,
    /// "tcp 10.0.0.1:80"
    pub service: String,
    pub backend: Option<IpAddr>,
    /// UP, DOWN-WAIT, DOWN, UP-WARM; for a service: SERVING, FAIL-OPEN, SORRY.
    pub old: String,
    pub new: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    ring: VecDeque<Event>,
    next_seq: u64,
}

impl EventLog {
    pub fn push(
        &mut self,
        service: String,
        backend: Option<IpAddr>,
        old: &str,
        new: &str,
        reason: String,
    ) -> &Event {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.next_seq += 1;
        if self.ring.len() == EVENT_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(Event {
            seq: self.next_seq,
            time: rfc3339(now.as_millis() as u64),
            unix_time: now.as_secs_f64(),
            service,
            backend,
            old: old.to_string(),
            new: new.to_string(),
            reason,
        });
        self.ring.back().expect("just pushed")
    }

    /// The last `limit` events with `seq > since`, oldest first.
    pub fn recent(&self, limit: usize, since: u64) -> Vec<Event> {
        let after: Vec<&Event> = self.ring.iter().filter(|e| e.seq > since).collect();
        let skip = after.len().saturating_sub(limit);
        after.into_iter().skip(skip).cloned().collect()
    }
}

/// Milliseconds since the epoch as `2024-05-01T12:34:56.789Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_718_451_045_007), "2024-06-15T11:30:45.007Z");
    }

    #[test]
    fn ring_keeps_the_most_recent() {
        let mut log = EventLog::default();
        for i in 0..(EVENT_RING + 10) {
            log.push("svc".into(), None, "UP", "DOWN", format!("{i}"));
        }
        let all = log.recent(usize::MAX, 0);
        assert_eq!(all.len(), EVENT_RING);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all.last().unwrap().reason, format!("{}", EVENT_RING + 9));
        let last3 = log.recent(3, 0);
        assert_eq!(
            last3.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1032, 1033, 1034]
        );
        assert_eq!(log.recent(100, 1033).len(), 1);
    }
}
