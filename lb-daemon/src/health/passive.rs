//! Passive detection: what the data plane sees of each backend, turned into health
//! inputs ([`HealthInput`]) for the state machines.
//!
//! In DR and TUN mode a backend's replies do not pass the LB, so all it can see is the
//! client side of each flow:
//!
//! - **Retransmitted SYNs.** The XDP program reports a second SYN on a connection
//!   entry that has seen no ACK from the client (EVENTS ring buffer, rate-limited per
//!   backend and CPU in the data plane, so a SYN flood cannot flood the ring). The
//!   client did not get a SYN-ACK within its retransmission timeout (1 s on Linux):
//!   the backend black-holes SYNs, is gone, or is overloaded. Each report is one
//!   [`HealthInput::PassiveFailure`], read as soon as the ring buffer has data.
//! - **Stuck handshakes.** Every [`SAMPLE`] the per-backend counters are read: of the
//!   new flows of that window, the share that never completed the handshake (no ACK
//!   from the client) above `passive.stuck_handshake_pct` is a failure. This catches a
//!   backend that answers SYNs with RST (its port closed), where clients do not
//!   retransmit. TCP services only (UDP has no handshake).
//! - **Success.** A completed handshake to a backend is traffic to it succeeding:
//!   [`HealthInput::PassiveSuccess`], which ends an UP-WARM.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use lb_common::{
    EVENT_SYN_RETRANSMIT,
    state::{Proto, ServiceId},
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, warn};

use super::{BackendKey, HealthInput};
use crate::api::Shared;

/// How often the handshake counters are sampled.
pub const SAMPLE: Duration = Duration::from_secs(2);
/// After a wake-up, more reports are let in for this long, so that a burst is handled
/// with one lock of the runtime.
const COALESCE: Duration = Duration::from_millis(5);

/// Starts the ring-buffer reader and the counter sampler.
pub async fn start(shared: Arc<Shared>) {
    let ring = shared.rt.lock().await.dp.take_events();
    match ring {
        // SAFETY: the RingBuf owns its map fd and keeps it open, and the same, for as
        // long as it lives; the AsyncFd owns the RingBuf.
        Some(ring) => match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
            Ok(fd) => {
                tokio::spawn(read_reports(shared.clone(), fd));
            }
            Err(e) => {
                warn!(error = %e, "passive detection: cannot poll the EVENTS ring buffer; SYN retransmissions will not be acted on")
            }
        },
        None => warn!("passive detection: EVENTS ring buffer already taken"),
    }
    tokio::spawn(sample_handshakes(shared));
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

async fn read_reports(shared: Arc<Shared>, mut fd: AsyncFd<Ring>) {
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "passive detection: polling the ring buffer failed; stopped");
                return;
            }
        };
        tokio::time::sleep(COALESCE).await;
        let events = crate::bpf_maps::drain_ring(guard.get_inner_mut());
        guard.clear_ready();
        if events.is_empty() {
            continue;
        }
        let rt = shared.rt.lock().await;
        let ids = backend_ids(&rt);
        for ev in events {
            if ev.kind != EVENT_SYN_RETRANSMIT {
                continue;
            }
            let Some((key, _)) = ids.get(&ev.backend) else {
                // A backend removed since (or a sorry server, which is not checked).
                continue;
            };
            debug!(service = %key.0, backend = %key.1, "passive: retransmitted SYN");
            rt.health.input(HealthInput::PassiveFailure {
                backend: *key,
                reason: "client retransmitted its SYN (no SYN-ACK within its timeout)".into(),
            });
        }
    }
}

/// What a data-plane backend id stands for now: (service, real server), and the
/// service's handshake thresholds (`None` if not applicable: UDP, or turned off).
type Ids = HashMap<u32, (BackendKey, Option<(u32, u32)>)>;

fn backend_ids(rt: &crate::runtime::Runtime) -> Ids {
    let mut ids = HashMap::new();
    for s in &rt.state.services {
        let sid: ServiceId = s.id();
        let p = s.passive();
        let stuck = (p.enabled && s.proto == Proto::Tcp && p.stuck_handshake_pct > 0)
            .then_some((p.stuck_handshake_pct, p.stuck_handshake_min_flows));
        for r in &s.backends {
            if let Some(id) = rt.proj.backend_id(&sid, r.address) {
                ids.insert(id, ((sid, r.address), stuck));
            }
        }
    }
    ids
}

/// The counters of one backend at the last sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub new_conns: u64,
    pub handshakes: u64,
}

/// What one window says about a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    Success,
    /// (new flows, of them without a completed handshake).
    Stuck(u64, u64),
}

/// Judges the window between two samples. Counters that went down were zeroed
/// (`lbctl zero`): no verdict then. Flows opened late in a window complete early in
/// the next, so a steady backend shows about as many handshakes as new flows.
pub fn judge(prev: Sample, now: Sample, stuck: Option<(u32, u32)>) -> Verdict {
    if now.new_conns < prev.new_conns || now.handshakes < prev.handshakes {
        return Verdict::Nothing;
    }
    let opened = now.new_conns - prev.new_conns;
    let done = now.handshakes - prev.handshakes;
    if let Some((pct, min_flows)) = stuck
        && opened >= u64::from(min_flows)
    {
        let stuck_flows = opened.saturating_sub(done);
        if stuck_flows * 100 >= opened * u64::from(pct) {
            return Verdict::Stuck(opened, stuck_flows);
        }
    }
    if done > 0 {
        Verdict::Success
    } else {
        Verdict::Nothing
    }
}

async fn sample_handshakes(shared: Arc<Shared>) {
    let mut last: HashMap<(BackendKey, u32), Sample> = HashMap::new();
    let mut every = tokio::time::interval(SAMPLE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let rt = shared.rt.lock().await;
        let ids = backend_ids(&rt);
        let mut seen = HashSet::with_capacity(ids.len());
        for (&id, &(key, stuck)) in &ids {
            let Ok(c) = rt.dp.backend_counters(id) else {
                continue;
            };
            let now = Sample {
                new_conns: c.new_conns,
                handshakes: c.handshakes,
            };
            seen.insert((key, id));
            let Some(prev) = last.insert((key, id), now) else {
                continue;
            };
            match judge(prev, now, stuck) {
                Verdict::Nothing => {}
                Verdict::Success => rt
                    .health
                    .input(HealthInput::PassiveSuccess { backend: key }),
                Verdict::Stuck(opened, stuck) => rt.health.input(HealthInput::PassiveFailure {
                    backend: key,
                    reason: format!(
                        "{stuck} of {opened} new flows in {}s never completed their handshake",
                        SAMPLE.as_secs()
                    ),
                }),
            }
        }
        last.retain(|k, _| seen.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(new_conns: u64, handshakes: u64) -> Sample {
        Sample {
            new_conns,
            handshakes,
        }
    }

    #[test]
    fn a_healthy_window_is_a_success() {
        assert_eq!(
            judge(s(100, 95), s(150, 144), Some((80, 10))),
            Verdict::Success
        );
    }

    #[test]
    fn handshakes_that_never_complete_are_a_failure() {
        assert_eq!(
            judge(s(100, 95), s(120, 96), Some((80, 10))),
            Verdict::Stuck(20, 19)
        );
        // Below the share: a success (some handshakes completed).
        assert_eq!(judge(s(0, 0), s(20, 5), Some((80, 10))), Verdict::Success);
    }

    #[test]
    fn too_few_flows_or_turned_off_or_zeroed_say_nothing_of_failure() {
        assert_eq!(judge(s(0, 0), s(9, 0), Some((80, 10))), Verdict::Nothing);
        assert_eq!(judge(s(0, 0), s(50, 0), None), Verdict::Nothing);
        assert_eq!(
            judge(s(500, 400), s(3, 0), Some((80, 10))),
            Verdict::Nothing
        );
    }
}
