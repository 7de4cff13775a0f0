//! Properties of the weighted Maglev table: balance, weights, disruption,
//! order independence, drained backends, `diff`. Plus a timing report.
#![cfg(feature = "user")]

use lb_common::NO_BACKEND;
use lb_common::maglev::{MaglevBackend, build, build_into, diff, is_prime, permutation};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

const SIZE: u32 = 65537;

fn mb(id: u32, weight: u32) -> MaglevBackend {
    MaglevBackend { id, weight }
}

/// `n` backends of weight 1 with scattered ids.
fn equal(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|k| mb(k.wrapping_mul(2_654_435_761) % 1_000_000_007 + 1, 1))
        .collect()
}

fn counts(table: &[u32]) -> HashMap<u32, u64> {
    let mut c = HashMap::new();
    for &id in table {
        *c.entry(id).or_insert(0) += 1;
    }
    c
}

fn changed(a: &[u32], b: &[u32]) -> u64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u64
}

/// Checks that the table is full of live ids, that every live backend has its
/// ideal share `size * w / sum(w)` rounded down or up, and that this is
/// within `rel` of the ideal share. Returns the worst relative error.
fn check_shares(bs: &[MaglevBackend], size: u32, table: &[u32], rel: f64) -> f64 {
    assert_eq!(table.len(), size as usize);
    let mut w: HashMap<u32, u128> = HashMap::new();
    for b in bs.iter().filter(|b| b.weight > 0 && b.id != NO_BACKEND) {
        *w.entry(b.id).or_insert(0) += b.weight as u128;
    }
    let total: u128 = w.values().sum();
    let c = counts(table);
    for id in c.keys() {
        assert!(w.contains_key(id), "slot holds {id}, not a live backend");
    }
    let mut worst = 0f64;
    for (id, &wi) in &w {
        let got = c.get(id).copied().unwrap_or(0) as u128;
        let share = size as u128 * wi;
        let (lo, exact) = (share / total, share.is_multiple_of(total));
        assert!(
            got == lo || (got == lo + 1 && !exact),
            "backend {id}: {got} slots, ideal {share}/{total}"
        );
        let ideal = share as f64 / total as f64;
        let err = (got as f64 - ideal).abs() / ideal;
        assert!(
            err <= rel,
            "backend {id}: {got} slots, ideal {ideal:.2}, off by more than {rel}"
        );
        worst = worst.max(err);
    }
    worst
}

/// Shuffles deterministically (no rand dependency needed).
fn shuffled(bs: &[MaglevBackend], seed: u64) -> Vec<MaglevBackend> {
    let mut v = bs.to_vec();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

#[test]
fn equal_weights_are_balanced_within_1_percent() {
    for n in [1u32, 2, 3, 10, 100, 1000] {
        let bs = equal(n);
        let t = build(&bs, SIZE);
        let worst = check_shares(&bs, SIZE, &t, 0.01);
        println!("{n} backends: worst share error {:.3}%", worst * 100.0);
        // Round-robin turns: counts differ by at most one.
        let c = counts(&t);
        let (lo, hi) = (c.values().min().unwrap(), c.values().max().unwrap());
        assert!(hi - lo <= 1, "{n} backends: counts {lo}..={hi}");
    }
}

#[test]
fn weights_1_to_20_are_honoured_within_2_percent() {
    let bs: Vec<_> = (1..=20).map(|w| mb(1000 + w * 31, w)).collect();
    let t = build(&bs, SIZE);
    check_shares(&bs, SIZE, &t, 0.02);
    let c = counts(&t);
    // Weight 20 gets 20 times what weight 1 gets (each within 2 slots of
    // 65537 * w / 210).
    assert!(
        (c[&(1000 + 31)] as i64 - 312).abs() <= 1,
        "{}",
        c[&(1000 + 31)]
    );
    assert!(
        (c[&(1000 + 20 * 31)] as i64 - 6241).abs() <= 2,
        "{}",
        c[&(1000 + 20 * 31)]
    );
}

#[test]
fn mixed_and_skewed_weights_are_honoured() {
    // Many light backends and a few heavier ones: the light ones must not
    // all round the same way at the heavy ones' expense.
    let mut bs: Vec<_> = (1..=1000).map(|id| mb(id, 1)).collect();
    bs.extend((1..=10).map(|id| mb(5000 + id, 3)));
    check_shares(&bs, SIZE, &build(&bs, SIZE), 0.02);
    // Mean weight far below the maximum (the heap scheduler).
    let mut bs: Vec<_> = (1..=200).map(|id| mb(id, 1)).collect();
    bs.push(mb(5000, 1000));
    check_shares(&bs, SIZE, &build(&bs, SIZE), 0.02);
    // Ideal shares of 43.7 slots: rounding stays within 2%.
    let mut bs: Vec<_> = (1..=500).map(|id| mb(id, 1)).collect();
    bs.push(mb(5000, 1000));
    check_shares(&bs, SIZE, &build(&bs, SIZE), 0.02);
    // Extreme weights do not overflow; a tiny share may round to nothing.
    let bs = [mb(1, u32::MAX), mb(2, 1), mb(3, u32::MAX / 2)];
    let t = build(&bs, SIZE);
    check_shares(&bs, SIZE, &t, 1.0);
    assert_eq!(counts(&t).get(&2), None);
}

/// Removing one of `n` backends, or adding one, moves at most 1/n + 2% of
/// the table.
#[test]
fn removing_or_adding_one_backend_moves_little() {
    for n in [10u32, 100, 1000] {
        let bs = equal(n);
        let t = build(&bs, SIZE);
        let bound = ((1.0 / n as f64 + 0.02) * SIZE as f64) as u64;
        let (mut worst_rm, mut worst_add) = (0, 0);
        for k in 0..10 {
            let victim = bs[k * n as usize / 10];
            let rm: Vec<_> = bs.iter().copied().filter(|b| b.id != victim.id).collect();
            let t2 = build(&rm, SIZE);
            let moved = changed(&t, &t2);
            assert!(moved <= bound, "n={n} remove {victim:?}: {moved} > {bound}");
            // Everything the victim had moved, and little else.
            assert!(t2.iter().all(|&id| id != victim.id));
            worst_rm = worst_rm.max(moved);

            let mut add = bs.clone();
            add.push(mb(2_000_000_000 + k as u32, 1));
            let moved = changed(&t, &build(&add, SIZE));
            let bound = ((1.0 / (n + 1) as f64 + 0.02) * SIZE as f64) as u64;
            assert!(moved <= bound, "n={n} add: {moved} > {bound}");
            worst_add = worst_add.max(moved);
        }
        println!(
            "n={n}: remove moves <= {:.2}%, add <= {:.2}% (1/n = {:.2}%)",
            worst_rm as f64 * 100.0 / SIZE as f64,
            worst_add as f64 * 100.0 / SIZE as f64,
            100.0 / n as f64
        );
    }
}

/// Changing one backend's weight moves about the change in its share, plus
/// at most 1% of the table.
#[test]
fn changing_one_weight_moves_little() {
    for n in [10usize, 100, 1000] {
        let base: Vec<_> = equal(n as u32).into_iter().map(|b| mb(b.id, 4)).collect();
        for (from, to) in [(4, 3), (4, 5), (4, 8), (4, 1), (2, 3), (1, 4)] {
            let mut a = base.clone();
            a[n / 3].weight = from;
            let mut b = base.clone();
            b[n / 3].weight = to;
            let moved = changed(&build(&a, SIZE), &build(&b, SIZE)) as f64 / SIZE as f64;
            let share = |bs: &[MaglevBackend]| {
                bs[n / 3].weight as f64 / bs.iter().map(|b| b.weight as f64).sum::<f64>()
            };
            let delta = (share(&a) - share(&b)).abs();
            assert!(
                moved <= delta + 0.01,
                "n={n} {from}->{to}: moved {moved:.4}, share delta {delta:.4}"
            );
        }
    }
}

#[test]
fn result_does_not_depend_on_input_order() {
    let mut bs: Vec<_> = (1..=300).map(|k| mb(k * 7 + 1, k % 5)).collect();
    let t = build(&bs, SIZE);
    bs.reverse();
    assert_eq!(build(&bs, SIZE), t);
    for seed in 1..5 {
        assert_eq!(build(&shuffled(&bs, seed), SIZE), t);
    }
}

#[test]
fn drained_backends_get_no_slot() {
    let live: Vec<_> = (1..=50).map(|id| mb(id, 1 + id % 3)).collect();
    let mut all = live.clone();
    all.extend((51..=60).map(|id| mb(id, 0)));
    let t = build(&all, SIZE);
    assert!(t.iter().all(|&id| (1..=50).contains(&id)));
    // A drained backend is exactly as if it were absent.
    assert_eq!(t, build(&live, SIZE));
}

#[test]
fn no_live_backend_gives_an_empty_table() {
    assert_eq!(build(&[], SIZE), vec![NO_BACKEND; SIZE as usize]);
    assert_eq!(build(&[mb(1, 0), mb(2, 0)], 13), vec![NO_BACKEND; 13]);
    // Id 0 is "no backend": ignored.
    assert_eq!(build(&[mb(NO_BACKEND, 5)], 13), vec![NO_BACKEND; 13]);
    assert_eq!(build(&[mb(NO_BACKEND, 5), mb(4, 1)], 13), vec![4; 13]);
    assert!(build(&[mb(1, 1)], 0).is_empty());
}

#[test]
fn duplicate_ids_count_once_with_summed_weight() {
    let a = build(&[mb(5, 1), mb(7, 3), mb(5, 2)], 251);
    assert_eq!(a, build(&[mb(7, 3), mb(5, 3)], 251));
}

#[test]
fn small_and_non_prime_sizes_give_full_tables() {
    let bs: Vec<_> = (1..=5).map(|id| mb(id, id)).collect();
    for size in [1u32, 2, 3, 4, 5, 7, 13, 100, 1000, 4096] {
        let t = build(&bs, size);
        assert_eq!(t.len(), size as usize);
        assert!(t.iter().all(|&id| (1..=5).contains(&id)), "size {size}");
    }
}

#[test]
fn diff_yields_exactly_the_changed_slots() {
    let bs = equal(100);
    let old = build(&bs, SIZE);
    let new = build(&bs[1..], SIZE);
    let d: Vec<(u32, u32)> = diff(&old, &new).collect();
    let want: Vec<(u32, u32)> = (0..SIZE)
        .filter(|&s| old[s as usize] != new[s as usize])
        .map(|s| (s, new[s as usize]))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(d, want);
    let mut patched = old.clone();
    for (s, id) in diff(&old, &new) {
        patched[s as usize] = id;
    }
    assert_eq!(patched, new);
    assert_eq!(diff(&old, &old).count(), 0);
}

#[test]
fn build_into_reuses_the_allocation() {
    let bs = equal(100);
    let mut t = build(&bs, SIZE);
    let ptr = t.as_ptr();
    build_into(&bs[..50], SIZE, &mut t);
    assert_eq!(t.as_ptr(), ptr);
    assert_eq!(t, build(&bs[..50], SIZE));
    build_into(&bs, 13, &mut t);
    assert_eq!(t, build(&bs, 13));
}

#[test]
fn is_prime_matches_a_sieve() {
    let n = 100_000usize;
    let mut sieve = vec![true; n];
    sieve[0] = false;
    sieve[1] = false;
    for i in 2..n {
        if sieve[i] {
            for j in (i * i..n).step_by(i) {
                sieve[j] = false;
            }
        }
    }
    for (i, &p) in sieve.iter().enumerate() {
        assert_eq!(is_prime(i as u32), p, "{i}");
    }
    assert!(is_prime(65537) && is_prime(4_294_967_291) && is_prime(2_147_483_647));
    assert!(!is_prime(65536) && !is_prime(u32::MAX) && !is_prime(4_294_049_777)); // 65521 * 65537
}

#[test]
fn permutations_come_from_ids() {
    // Same id, same permutation, wherever it is in the list.
    assert_eq!(permutation(42, SIZE), permutation(42, SIZE));
    let (o, s) = permutation(42, SIZE);
    assert!(o < SIZE && (1..SIZE).contains(&s));
    // Different ids: different permutations (the table is not degenerate).
    let perms: BTreeSet<_> = (1..=1000).map(|id| permutation(id, SIZE)).collect();
    assert_eq!(perms.len(), 1000);
}

fn backends(
    max_n: usize,
    weights: std::ops::RangeInclusive<u32>,
) -> impl Strategy<Value = Vec<MaglevBackend>> {
    prop::collection::btree_map(1u32..=u32::MAX, weights, 1..=max_n)
        .prop_map(|m| m.into_iter().map(|(id, weight)| mb(id, weight)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random weights: every live backend has its ideal share rounded down
    /// or up, which is within 2% of it: with at most 40 backends of weight
    /// <= 16, every ideal share is above 100 slots.
    #[test]
    fn prop_weights_are_honoured(bs in backends(40, 0..=16)) {
        prop_assume!(bs.iter().any(|b| b.weight > 0));
        check_shares(&bs, SIZE, &build(&bs, SIZE), 0.02);
    }

    #[test]
    fn prop_order_does_not_matter(bs in backends(200, 0..=10), seed in any::<u64>()) {
        prop_assert_eq!(build(&shuffled(&bs, seed), SIZE), build(&bs, SIZE));
    }

    #[test]
    fn prop_removing_one_moves_little(bs in backends(300, 1..=1), k in any::<prop::sample::Index>()) {
        prop_assume!(bs.len() >= 2);
        let n = bs.len();
        let mut rm = bs.clone();
        rm.remove(k.index(n));
        let moved = changed(&build(&bs, SIZE), &build(&rm, SIZE));
        let bound = ((1.0 / n as f64 + 0.02) * SIZE as f64) as u64;
        prop_assert!(moved <= bound, "n={} moved {} > {}", n, moved, bound);
    }

    #[test]
    fn prop_adding_one_moves_little(bs in backends(300, 1..=1), id in 1u32..=u32::MAX) {
        prop_assume!(bs.iter().all(|b| b.id != id));
        let mut add = bs.clone();
        add.push(mb(id, 1));
        let moved = changed(&build(&bs, SIZE), &build(&add, SIZE));
        let bound = ((1.0 / add.len() as f64 + 0.02) * SIZE as f64) as u64;
        prop_assert!(moved <= bound, "n={} moved {} > {}", add.len(), moved, bound);
    }

    #[test]
    fn prop_changing_one_weight_moves_little(
        bs in backends(100, 1..=10),
        k in any::<prop::sample::Index>(),
        to in 1u32..=10,
    ) {
        let mut b2 = bs.clone();
        let k = k.index(bs.len());
        b2[k].weight = to;
        let share = |v: &[MaglevBackend]| v[k].weight as f64 / v.iter().map(|b| b.weight as f64).sum::<f64>();
        let delta = (share(&bs) - share(&b2)).abs();
        let moved = changed(&build(&bs, SIZE), &build(&b2, SIZE)) as f64 / SIZE as f64;
        prop_assert!(moved <= delta + 0.02, "moved {:.4}, share delta {:.4}", moved, delta);
    }

    #[test]
    fn prop_diff_is_exact(a in backends(50, 0..=5), b in backends(50, 0..=5)) {
        let (old, new) = (build(&a, 1009), build(&b, 1009));
        let mut patched = old.clone();
        let mut n = 0;
        for (s, id) in diff(&old, &new) {
            prop_assert_ne!(old[s as usize], new[s as usize]);
            prop_assert_eq!(id, new[s as usize]);
            patched[s as usize] = id;
            n += 1;
        }
        prop_assert_eq!(patched, new);
        prop_assert_eq!(n, changed(&old, &build(&b, 1009)));
    }
}

/// Timing report, not a test of speed: run with
/// `cargo test -p lb-common --features user --release --test maglev_props build_timing -- --nocapture`.
#[test]
fn build_timing_report() {
    let report = |label: &str, bs: &[MaglevBackend]| {
        let mut t = Vec::new();
        let mut times: Vec<Duration> = (0..101)
            .map(|_| {
                let s = Instant::now();
                build_into(bs, SIZE, &mut t);
                s.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "build {label}, size {SIZE}: min {:?}, median {:?}",
            times[0], times[50]
        );
    };
    report("100 backends weight 1", &equal(100));
    report("1000 backends weight 1", &equal(1000));
    let weighted: Vec<_> = equal(1000)
        .into_iter()
        .enumerate()
        .map(|(k, b)| mb(b.id, 1 + k as u32 % 10))
        .collect();
    report("1000 backends weights 1..10", &weighted);
}
