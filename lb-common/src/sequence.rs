//! Sequences for the `rr` and `wrr` schedulers.
//!
//! The data plane walks a VIP's sequence (the leading `seq_len` slots of its
//! table) with a cursor, so the sequence *is* the scheduler: `rr` is the
//! backends once each, in order, and `wrr` is the order in which IPVS's `wrr`
//! scheduler would pick them over one full cycle.

use crate::NO_BACKEND;
use crate::maglev::MaglevBackend;

/// The `rr` sequence: `ids` in the given order, each once. `NO_BACKEND`
/// entries are skipped (they would make the data plane drop the packet).
pub fn rr_sequence(ids: &[u32]) -> Vec<u32> {
    ids.iter().copied().filter(|&id| id != NO_BACKEND).collect()
}

/// The `wrr` sequence: the backends in the order IPVS's `wrr` scheduler
/// (`net/netfilter/ipvs/ip_vs_wrr.c`) picks them over one full cycle.
///
/// IPVS keeps a current weight `cw` that starts at the largest weight and
/// drops by the gcd of the weights after each pass over the list (wrapping
/// back to the largest weight after the pass at `cw == gcd`); in a pass it
/// picks, in list order, every backend whose weight is `>= cw`. One cycle is
/// `sum(weights) / gcd` picks long, and each backend appears `weight / gcd`
/// times.
///
/// Backends with weight 0 (drained) or id `NO_BACKEND` never appear. If no
/// backend remains, or `max_len` is 0, the result is empty.
///
/// If the cycle would be longer than `max_len`, the weights are first scaled
/// down by a common factor (the largest one that fits), rounding down but
/// keeping every positive weight at least 1, so shares stay as close to the
/// configured ones as the length allows. The result is never longer than
/// `max_len`: if even weight 1 for everybody does not fit (more backends than
/// `max_len`), it is the first `max_len` backends, once each.
pub fn wrr_sequence(backends: &[MaglevBackend], max_len: u32) -> Vec<u32> {
    let live: Vec<MaglevBackend> = backends
        .iter()
        .copied()
        .filter(|b| b.weight > 0 && b.id != NO_BACKEND)
        .collect();
    if live.is_empty() || max_len == 0 {
        return Vec::new();
    }
    if live.len() as u64 > max_len as u64 {
        return live[..max_len as usize].iter().map(|b| b.id).collect();
    }
    let weights = fit_weights(&live, max_len);
    wrr_cycle(&live, &weights)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Cycle length of positive `weights`: sum / gcd.
fn cycle_len(weights: &[u32]) -> u64 {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    weights.iter().map(|&w| (w / g) as u64).sum()
}

/// The weights to use so that the cycle fits in `max_len`
/// (`live.len() <= max_len`, every weight positive).
fn fit_weights(live: &[MaglevBackend], max_len: u32) -> Vec<u32> {
    let orig: Vec<u32> = live.iter().map(|b| b.weight).collect();
    if cycle_len(&orig) <= max_len as u64 {
        return orig;
    }
    // w' = max(1, floor(w * t / total)): the largest t whose weights fit.
    // The cycle is at most sum(w'), which is monotone in t, so a binary search
    // on "sum(w') <= max_len" finds it; t = 0 (all ones) always fits.
    let total: u128 = orig.iter().map(|&w| w as u128).sum();
    let scaled = |t: u128| -> Vec<u32> {
        orig.iter()
            .map(|&w| ((w as u128 * t / total) as u32).max(1))
            .collect()
    };
    let fits = |t: u128| scaled(t).iter().map(|&w| w as u64).sum::<u64>() <= max_len as u64;
    let (mut lo, mut hi) = (0u128, total); // fits(lo), !fits(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    scaled(lo)
}

/// One IPVS `wrr` cycle over `live` (list order) with positive `weights`.
fn wrr_cycle(live: &[MaglevBackend], weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let mut levels: Vec<u32> = weights.to_vec();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    let mut out = Vec::with_capacity(cycle_len(weights) as usize);
    let mut picked = Vec::with_capacity(live.len());
    // Passes with cw in (next level, level] pick the same backends: those
    // with weight >= level. There are (level - next level) / g such passes.
    for (k, &level) in levels.iter().enumerate() {
        let below = levels.get(k + 1).copied().unwrap_or(0);
        picked.clear();
        picked.extend(
            live.iter()
                .zip(weights)
                .filter(|&(_, &w)| w >= level)
                .map(|(b, _)| b.id),
        );
        for _ in 0..(level - below) / g {
            out.extend_from_slice(&picked);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend { id, weight }
    }

    /// A literal port of `ip_vs_wrr_schedule` (Linux 6.x) over a list of
    /// (id, weight), without the overload flag: `n` successive picks.
    fn ipvs_wrr(list: &[(u32, u32)], n: usize) -> Vec<u32> {
        let live: Vec<i64> = list.iter().map(|&(_, w)| w as i64).collect();
        let di = list.iter().fold(0, |g, &(_, w)| gcd(g, w)) as i64;
        let max = live.iter().copied().max().unwrap_or(0);
        // ip_vs_wrr_init_svc: cl = head, mw = max - (di - 1), cw = mw.
        let mw = if di == 0 { 0 } else { max - (di - 1) };
        let mut cw = mw;
        let mut cl: Option<usize> = None; // None = the list head
        let mut out = Vec::new();
        if mw == 0 {
            return out;
        }
        'pick: for _ in 0..n {
            let mut dest = cl;
            let last = cl;
            let mut stop: Option<Option<usize>> = None;
            let (mut last_pass, mut restarted) = (false, false);
            loop {
                // list_for_each_entry_continue: from after `dest` to the end.
                let start = dest.map_or(0, |d| d + 1);
                for d in start..list.len() {
                    if live[d] >= cw {
                        cl = Some(d);
                        out.push(list[d].0);
                        continue 'pick;
                    }
                    if stop == Some(Some(d)) {
                        return out;
                    }
                }
                dest = None;
                cw -= di;
                if cw <= 0 {
                    cw = mw;
                    if last_pass || last.is_none() {
                        return out;
                    }
                    restarted = true;
                }
                last_pass = cw <= di;
                if last_pass && restarted && last.is_some() {
                    stop = Some(last);
                }
            }
        }
        out
    }

    #[test]
    fn wrr_432_matches_ipvs() {
        let bs = [mb(1, 4), mb(2, 3), mb(3, 2)];
        // cw = 4: 1 | cw = 3: 1 2 | cw = 2: 1 2 3 | cw = 1: 1 2 3
        let seq = wrr_sequence(&bs, 1000);
        assert_eq!(seq, vec![1, 1, 2, 1, 2, 3, 1, 2, 3]);
        let list: Vec<(u32, u32)> = bs.iter().map(|b| (b.id, b.weight)).collect();
        assert_eq!(seq, ipvs_wrr(&list, seq.len()));
    }
}
