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
/// picks, in list order, every backend whose weight is `>= cw`. (The kernel
/// counts `cw` from `max - gcd + 1` down to 1 instead: the same picks, since
/// every weight is a multiple of the gcd.) One cycle is `sum(weights) / gcd`
/// picks long, and each backend appears `weight / gcd` times.
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
    use proptest::prelude::*;

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

    fn list(bs: &[MaglevBackend]) -> Vec<(u32, u32)> {
        bs.iter().map(|b| (b.id, b.weight)).collect()
    }

    fn count(seq: &[u32], id: u32) -> usize {
        seq.iter().filter(|&&x| x == id).count()
    }

    #[test]
    fn wrr_432_is_ipvs_order() {
        let bs = [mb(1, 4), mb(2, 3), mb(3, 2)];
        // cw = 4: 1 | cw = 3: 1 2 | cw = 2: 1 2 3 | cw = 1: 1 2 3
        let seq = wrr_sequence(&bs, 1000);
        assert_eq!(seq, [1, 1, 2, 1, 2, 3, 1, 2, 3]);
        assert_eq!(seq, ipvs_wrr(&list(&bs), seq.len()));
        assert_eq!((count(&seq, 1), count(&seq, 2), count(&seq, 3)), (4, 3, 2));
    }

    #[test]
    fn wrr_divides_by_the_gcd() {
        // cw = 6, 4, 2 (step 2): 1 | 1 2 | 1 2 3
        let bs = [mb(1, 6), mb(2, 4), mb(3, 2)];
        let seq = wrr_sequence(&bs, 1000);
        assert_eq!(seq, [1, 1, 2, 1, 2, 3]);
        assert_eq!(seq, ipvs_wrr(&list(&bs), 6));
        // Fits in 6 thanks to the gcd: no scaling.
        assert_eq!(wrr_sequence(&[mb(1, 300), mb(2, 200), mb(3, 100)], 6), seq);
        // Equal weights: plain round robin.
        assert_eq!(
            wrr_sequence(&[mb(7, 5), mb(8, 5), mb(9, 5)], 1000),
            [7, 8, 9]
        );
    }

    #[test]
    fn wrr_skips_drained_backends() {
        let bs = [mb(1, 0), mb(2, 3), mb(3, 0), mb(4, 1), mb(NO_BACKEND, 9)];
        // cw = 3: 2 | cw = 2: 2 | cw = 1: 2 4
        assert_eq!(wrr_sequence(&bs, 1000), [2, 2, 2, 4]);
        assert_eq!(wrr_sequence(&bs[..4], 1000), ipvs_wrr(&list(&bs[..4]), 4));
        assert!(wrr_sequence(&[], 1000).is_empty());
        assert!(wrr_sequence(&[mb(1, 0), mb(2, 0)], 1000).is_empty());
        assert!(wrr_sequence(&[mb(1, 1)], 0).is_empty());
    }

    #[test]
    fn wrr_scales_down_to_fit() {
        // 5, 3, 1 is 9 long. Scaled by t/9: t = 5 gives 2, 1, 1 (4 <= 5),
        // t = 6 gives 3, 2, 1 (6 > 5).
        // cw = 2: 1 | cw = 1: 1 2 3
        assert_eq!(
            wrr_sequence(&[mb(1, 5), mb(2, 3), mb(3, 1)], 5),
            [1, 1, 2, 3]
        );
        // Weights 1000 and 1 in 101: 100 and 1 (rounded down, at least 1).
        let seq = wrr_sequence(&[mb(1, 1000), mb(2, 1)], 101);
        assert_eq!((count(&seq, 1), count(&seq, 2)), (100, 1));
        // Fewer slots than backends: the first ones, once each.
        assert_eq!(
            wrr_sequence(&[mb(1, 1), mb(2, 5), mb(3, 1), mb(4, 2)], 3),
            [1, 2, 3]
        );
    }

    #[test]
    fn rr_is_the_ids_in_order() {
        assert_eq!(rr_sequence(&[5, 3, 9, 1]), [5, 3, 9, 1]);
        assert_eq!(rr_sequence(&[5, NO_BACKEND, 3]), [5, 3]);
        assert!(rr_sequence(&[]).is_empty());
    }

    fn weighted() -> impl Strategy<Value = Vec<MaglevBackend>> {
        prop::collection::vec(0u32..=20, 0..12).prop_map(|ws| {
            ws.into_iter()
                .enumerate()
                .map(|(i, w)| mb(i as u32 + 1, w))
                .collect()
        })
    }

    proptest! {
        /// One cycle of IPVS's scheduler, and it repeats.
        #[test]
        fn wrr_is_one_ipvs_cycle(bs in weighted()) {
            let seq = wrr_sequence(&bs, u32::MAX);
            let g = bs.iter().fold(0, |g, b| gcd(g, b.weight));
            let len: u32 = bs.iter().map(|b| b.weight.checked_div(g).unwrap_or(0)).sum();
            prop_assert_eq!(seq.len() as u32, len);
            for b in &bs {
                prop_assert_eq!(count(&seq, b.id) as u32, b.weight.checked_div(g).unwrap_or(0));
            }
            let two = ipvs_wrr(&list(&bs), 2 * seq.len());
            prop_assert_eq!(&two[..seq.len()], &seq[..]);
            prop_assert_eq!(&two[seq.len()..], &seq[..]);
        }

        /// Scaled sequences fit, keep everybody, keep the weights' order,
        /// and are themselves IPVS cycles (of the scaled weights).
        #[test]
        fn wrr_scaled_fits(
            ws in prop::collection::vec(1u32..=100_000, 1..20),
            extra in 0u32..300,
        ) {
            let bs: Vec<_> = ws.iter().enumerate().map(|(i, &w)| mb(i as u32 + 1, w)).collect();
            let max_len = bs.len() as u32 + extra;
            let seq = wrr_sequence(&bs, max_len);
            prop_assert!(seq.len() as u32 <= max_len);
            let c: Vec<u32> = bs.iter().map(|b| count(&seq, b.id) as u32).collect();
            for (i, a) in bs.iter().enumerate() {
                prop_assert!(c[i] >= 1);
                for (j, b) in bs.iter().enumerate() {
                    if a.weight >= b.weight {
                        prop_assert!(c[i] >= c[j], "{:?} -> {:?}", ws, c);
                    }
                }
            }
            let scaled: Vec<_> = bs.iter().zip(&c).map(|(b, &w)| mb(b.id, w)).collect();
            prop_assert_eq!(&seq, &ipvs_wrr(&list(&scaled), seq.len()));
        }
    }
}
