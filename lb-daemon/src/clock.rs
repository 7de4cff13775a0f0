//! The data plane's clock, seen from user space.
//!
//! XDP reads the time as `bpf_jiffies64() × Ctrl::ns_per_tick`. The verifier inlines
//! the jiffies read into a plain load, where `bpf_ktime_get_coarse_ns` is a helper
//! call; with the SRSO "safe RET" mitigation of AMD hosts every kernel call/return
//! pair is costly, and that one call was ~35 ns of a ~260 ns connection-table hit.
//! Connection ages are compared with second-sized timeouts, so a tick (1/CONFIG_HZ,
//! 1 to 10 ms) is fine resolution.
//!
//! User space needs the tick length (to write `ns_per_tick` and to turn seconds into
//! the same unit) and, to age entries, the jiffies counter now: `/proc/timer_list`
//! prints it.

use std::{
    io::{BufRead, BufReader, Read},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The HZ values Linux builds with (CONFIG_HZ_100 … CONFIG_HZ_1000).
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];

/// Nanoseconds per jiffy on this kernel (found once per process).
pub fn ns_per_tick() -> u32 {
    static TICK: OnceLock<u32> = OnceLock::new();
    *TICK.get_or_init(|| {
        let hz = config_hz().or_else(measured_hz).unwrap_or_else(|| {
            tracing::warn!(
                "cannot tell the kernel's CONFIG_HZ (no kernel config, no /proc/timer_list); assuming 250"
            );
            250
        });
        (1_000_000_000 / hz) as u32
    })
}

/// The data plane's "now", in its nanoseconds (jiffies × tick length).
pub fn now_ns() -> u64 {
    jiffies()
        .unwrap_or(0)
        .wrapping_mul(u64::from(ns_per_tick()))
}

/// The kernel's jiffies counter (`jiffies: N`, the first such line of /proc/timer_list).
pub fn jiffies() -> Option<u64> {
    let f = std::fs::File::open("/proc/timer_list").ok()?;
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok())
}

/// CONFIG_HZ from the running kernel's config (/proc/config.gz or /boot/config-<release>).
fn config_hz() -> Option<u64> {
    let text = std::fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|f| {
            let mut s = String::new();
            flate2::read::GzDecoder::new(f)
                .read_to_string(&mut s)
                .ok()?;
            Some(s)
        })
        .or_else(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
            std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
        })?;
    parse_config_hz(&text)
}

fn parse_config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

/// Jiffies counted over 100 ms, rounded to the nearest HZ Linux builds with.
fn measured_hz() -> Option<u64> {
    let (j0, t0) = (jiffies()?, Instant::now());
    std::thread::sleep(Duration::from_millis(100));
    let (j1, t1) = (jiffies()?, Instant::now());
    let rate = (j1 - j0) as f64 / (t1 - t0).as_secs_f64();
    KNOWN_HZ.into_iter().min_by(|a, b| {
        (*a as f64 - rate)
            .abs()
            .total_cmp(&(*b as f64 - rate).abs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hz_is_read_from_the_config_text() {
        assert_eq!(
            parse_config_hz("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(parse_config_hz("CONFIG_HZ_PERIODIC=y\n"), None);
    }

    #[test]
    fn the_clock_ticks_at_the_found_rate() {
        // Measured against the monotonic clock: one second of the data plane's clock
        // is one second, within two ticks.
        let tick = u64::from(ns_per_tick());
        let (a, t) = (now_ns(), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let (b, el) = (now_ns(), t.elapsed());
        let drift = (b - a) as i64 - el.as_nanos() as i64;
        assert!(
            drift.unsigned_abs() <= 2 * tick,
            "data-plane clock moved {} ns in {:?} (tick {tick} ns)",
            b - a,
            el
        );
        assert_eq!(measured_hz().map(|hz| 1_000_000_000 / hz), Some(tick));
    }
}
