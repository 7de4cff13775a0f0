//! Weighted Maglev lookup table (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! Every backend has a permutation of the table's slots derived from its
//! **id** alone: `offset = h1(id) % size`, `skip = h2(id) % (size - 1) + 1`,
//! slot `j` of the permutation is `(offset + j * skip) % size`. Backends take
//! turns; on its turn a backend claims the first slot of its permutation that
//! is still empty. With a prime `size` every permutation covers the whole
//! table, so the table ends up full.
//!
//! Weights: each backend first gets a quota of turns, its ideal share
//! `size * weight / sum(weights)` rounded down, plus one for the backends
//! with the largest remainders (ties: lower id) until the quotas add up to
//! `size`. So every backend ends up with its ideal share rounded down or up,
//! never further off, whatever the mix of weights. The order of the turns is
//! Katran's weighted rounds: backends are ordered by id and go through rounds;
//! in each round a backend earns `weight / max_weight` of a turn and takes a
//! turn when its credit reaches one (credit starts just below one, so
//! everybody's first turn is in round 1), until its quota is used up. By
//! round `ceil(size * max_weight / sum(weights))` every quota is used up.
//! With equal weights this is exactly textbook Maglev: everybody in turn
//! until the table is full.
//!
//! Because the permutations depend only on ids and the turn order only on
//! the sorted ids and weights, the result does not depend on the order of the
//! input, and adding, removing or reweighting one backend moves few slots
//! besides the ones it gains or loses.
//!
//! Cost: filling the table by probing costs about `size * ln(size)` probes,
//! most of them at the end, when few slots are empty. So the probing runs on
//! a bitmap of taken slots (8 KiB for 65537 slots: it stays in L1), and the
//! last ~`sqrt(size)` slots are found another way: for each empty slot `s`
//! the number of steps backend `i` needs to reach it is
//! `(s - next_i) * skip_i⁻¹ mod size`, and the empty slot with the fewest
//! steps is exactly the one probing would find.

use crate::NO_BACKEND;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Backend id, never `NO_BACKEND` (entries with id 0 are ignored).
    pub id: u32,
    /// Relative weight; 0 means drained: the backend gets no slot.
    pub weight: u32,
}

/// Builds a Maglev lookup table of `size` slots.
///
/// `size` should be prime (see [`is_prime`]); any other size still gives a
/// full table, but the permutations are then not the textbook ones and the
/// spread is worse. Size 0 gives an empty table.
///
/// Every slot holds the id of a backend with weight > 0 or, if there is no
/// such backend, `NO_BACKEND`. A backend of weight `w` gets
/// `size * w / sum(weights)` slots, rounded down or up. The backends' order
/// does not matter (they are sorted by id); an id listed twice counts once,
/// with the sum of its weights.
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let mut table = Vec::new();
    build_into(backends, size, &mut table);
    table
}

/// [`build`] into an existing vector, reusing its allocation.
pub fn build_into(backends: &[MaglevBackend], size: u32, table: &mut Vec<u32>) {
    build_with(backends, size, table, Tuning::default());
}

/// Whether `n` is prime (for validating table sizes).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The slots whose value differs between `old` and `new`, as
/// `(slot, new value)`, in slot order. Tables of different lengths are
/// compared over the common prefix only.
pub fn diff<'a>(old: &'a [u32], new: &'a [u32]) -> impl Iterator<Item = (u32, u32)> + 'a {
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(slot, (_, &n))| (slot as u32, n))
}

/// Backend `id`'s permutation in a table of `size` (> 0) slots:
/// `(offset, skip)`, slot `j` being `(offset + j * skip) % size`.
///
/// For a prime size, `offset = h1(id) % size` and
/// `skip = h2(id) % (size - 1) + 1`. For other sizes `skip` is then moved up
/// to the next value coprime with `size`, so that the permutation still
/// covers the table.
pub fn permutation(id: u32, size: u32) -> (u32, u32) {
    permutation_in(id, size, is_prime(size))
}

fn permutation_in(id: u32, size: u32, prime: bool) -> (u32, u32) {
    debug_assert!(size > 0);
    let offset = (mix64(id as u64 ^ SEED_OFFSET) % size as u64) as u32;
    if size <= 2 {
        return (offset, 1);
    }
    let mut skip = (mix64(id as u64 ^ SEED_SKIP) % (size as u64 - 1)) as u32 + 1;
    if !prime {
        while gcd(skip, size) != 1 {
            skip = if skip == size - 1 { 1 } else { skip + 1 };
        }
    }
    (offset, skip)
}

// Two unrelated seeds: the high halves differ, so `id ^ SEED_OFFSET` and
// `id' ^ SEED_SKIP` never coincide for 32-bit ids.
const SEED_OFFSET: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_SKIP: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// splitmix64's finaliser: a bijection on u64 with full avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `a⁻¹ mod m` for `gcd(a, m) == 1`, `m > 1`.
fn mod_inverse(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1);
    t0.rem_euclid(m as i64) as u32
}

/// Internal knobs, so tests can check that every path gives the same table.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// Switch from probing to the empty-slot scan when this many slots are
    /// left (`None`: about `sqrt(size)`).
    endgame_at: Option<u32>,
    sched: Sched,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            endgame_at: None,
            sched: Sched::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    /// [`Sched::Rounds`] when the weights are not too skewed, else [`Sched::Heap`].
    Auto,
    Rounds,
    Heap,
}

fn build_with(backends: &[MaglevBackend], size: u32, table: &mut Vec<u32>, tuning: Tuning) {
    table.clear();
    table.resize(size as usize, NO_BACKEND);
    let set = normalise(backends);
    if size == 0 || set.is_empty() {
        return;
    }
    let endgame_at = tuning.endgame_at.unwrap_or_else(|| size.isqrt().max(16));
    let perms = Perms::new(&set, size);
    let weights: Vec<u64> = set.iter().map(|b| b.weight as u64).collect();
    let quotas = quotas(&weights, size);
    let wmax = weights.iter().copied().max().unwrap_or(1);
    let n = set.len() as u64;
    let sched = match tuning.sched {
        // Rounds visit every backend in each of about size * wmax / wsum
        // rounds: at most 4 * size visits when the mean weight is at least
        // wmax / 4. Otherwise the heap's log(n) per turn is cheaper.
        Sched::Auto if weights.iter().sum::<u64>() * 4 >= wmax * n => Sched::Rounds,
        Sched::Auto => Sched::Heap,
        s => s,
    };
    match sched {
        Sched::Rounds if weights.iter().all(|&w| w == wmax) => {
            fill(table, perms, endgame_at, Equal { n: set.len(), i: 0 })
        }
        Sched::Rounds => fill(
            table,
            perms,
            endgame_at,
            Credit::new(&weights, quotas, wmax),
        ),
        _ => fill(table, perms, endgame_at, Heap::new(&weights, quotas, wmax)),
    }
}

/// Every backend's number of slots: its ideal share `size * w / sum(w)`
/// rounded down, plus one for the `size - sum(rounded down)` backends with
/// the largest remainders, lower index first among equals.
fn quotas(weights: &[u64], size: u32) -> Vec<u64> {
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    let mut q = Vec::with_capacity(weights.len());
    let mut rem = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let share = size as u128 * w as u128;
        q.push((share / total) as u64);
        rem.push((share % total, i));
    }
    let short = size as u64 - q.iter().sum::<u64>();
    if short > 0 {
        rem.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in &rem[..short as usize] {
            q[i] += 1;
        }
    }
    q
}

/// Backends with weight > 0 and a real id, sorted by id, duplicates merged.
fn normalise(backends: &[MaglevBackend]) -> Vec<MaglevBackend> {
    let mut v: Vec<MaglevBackend> = backends
        .iter()
        .filter(|b| b.weight > 0 && b.id != NO_BACKEND)
        .copied()
        .collect();
    v.sort_unstable_by_key(|b| b.id);
    v.dedup_by(|b, a| {
        if a.id == b.id {
            a.weight = a.weight.saturating_add(b.weight);
            true
        } else {
            false
        }
    });
    v
}

/// Who takes the next turn (an index into the sorted backends).
trait Turns {
    fn next(&mut self) -> usize;
}

/// Equal weights: everybody, in order, round after round.
struct Equal {
    n: usize,
    i: usize,
}

impl Turns for Equal {
    #[inline(always)]
    fn next(&mut self) -> usize {
        let i = self.i;
        self.i = if i + 1 == self.n { 0 } else { i + 1 };
        i
    }
}

/// Katran's weighted rounds: in each round every backend earns its weight
/// and, once it has `wmax`, spends it on a turn, as long as it has quota
/// left. Credits start at `wmax - 1`, so everybody's first turn is in round 1.
struct Credit<'a> {
    weights: &'a [u64],
    credit: Vec<u64>,
    /// Turns left in each backend's quota.
    left: Vec<u64>,
    wmax: u64,
    /// The turns of the current round, and how many of them are taken.
    round: Vec<u32>,
    len: usize,
    pos: usize,
}

impl<'a> Credit<'a> {
    fn new(weights: &'a [u64], quotas: Vec<u64>, wmax: u64) -> Self {
        let n = weights.len();
        Credit {
            weights,
            credit: vec![wmax - 1; n],
            left: quotas,
            wmax,
            round: vec![0; n],
            len: 0,
            pos: 0,
        }
    }

    /// Works out the next round, without branching on who takes a turn
    /// (that would be a coin toss for the branch predictor).
    fn next_round(&mut self) {
        let mut len = 0;
        for (i, ((c, l), &w)) in self
            .credit
            .iter_mut()
            .zip(self.left.iter_mut())
            .zip(self.weights)
            .enumerate()
        {
            let earned = *c + w >= self.wmax;
            *c = *c + w - if earned { self.wmax } else { 0 };
            let take = earned & (*l > 0);
            *l -= take as u64;
            self.round[len] = i as u32;
            len += take as usize;
        }
        (self.len, self.pos) = (len, 0);
    }
}

impl Turns for Credit<'_> {
    #[inline(always)]
    fn next(&mut self) -> usize {
        while self.pos == self.len {
            self.next_round();
        }
        self.pos += 1;
        self.round[self.pos - 1] as usize
    }
}

/// The same order as [`Credit`], for skewed weights where most of a round's
/// visits would earn no turn: backend `i`'s `k`-th turn (from 1) comes in the
/// first round `r` with `wmax - 1 + r * w_i >= k * wmax`, and within a round
/// the lower index goes first, so a heap on `(round, index)` yields the turns
/// in order.
struct Heap<'a> {
    weights: &'a [u64],
    quotas: Vec<u64>,
    wmax: u64,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    turns: Vec<u64>,
}

impl<'a> Heap<'a> {
    fn new(weights: &'a [u64], quotas: Vec<u64>, wmax: u64) -> Self {
        let mut h = Heap {
            weights,
            quotas,
            wmax,
            heap: BinaryHeap::new(),
            turns: vec![0; weights.len()],
        };
        h.heap = (0..weights.len())
            .filter(|&i| h.quotas[i] > 0)
            .map(|i| Reverse((h.round(1, i), i as u32)))
            .collect();
        h
    }

    /// Round of backend `i`'s `k`-th turn: `ceil(((k - 1) * wmax + 1) / w_i)`.
    fn round(&self, k: u64, i: usize) -> u64 {
        // k <= 2^32 and wmax < 2^32: no overflow in u128, result < 2^64.
        ((k - 1) as u128 * self.wmax as u128 + 1).div_ceil(self.weights[i] as u128) as u64
    }
}

impl Turns for Heap<'_> {
    fn next(&mut self) -> usize {
        let Reverse((_, i)) = self.heap.pop().expect("quotas add up to the table size");
        let i = i as usize;
        self.turns[i] += 1;
        if self.turns[i] < self.quotas[i] {
            self.heap
                .push(Reverse((self.round(self.turns[i] + 1, i), i as u32)));
        }
        i
    }
}

/// Every backend's permutation and where it stands in it.
struct Perms {
    /// Next slot of the permutation to look at.
    next: Vec<u32>,
    skip: Vec<u32>,
    id: Vec<u32>,
}

impl Perms {
    fn new(set: &[MaglevBackend], size: u32) -> Self {
        let prime = is_prime(size);
        let (mut next, mut skip) = (Vec::with_capacity(set.len()), Vec::with_capacity(set.len()));
        for b in set {
            let (o, s) = permutation_in(b.id, size, prime);
            next.push(o);
            skip.push(s);
        }
        Perms {
            next,
            skip,
            id: set.iter().map(|b| b.id).collect(),
        }
    }
}

/// `p + s mod size` for `p < size`, `s <= size`, given `lim = size - s`:
/// `p + s` wraps iff `p >= lim`, which needs no wider integer.
#[inline(always)]
fn step(p: u32, s: u32, lim: u32) -> u32 {
    if p >= lim { p - lim } else { p + s }
}

/// Takes `table.len()` turns in the order `turns` gives.
///
/// Probing phase: the backend walks its permutation to the first slot not
/// yet taken (a bitmap of taken slots, 8 KiB for 65537 slots, so it stays
/// in L1). The walk costs `size / empty` probes, so the last few slots would
/// cost most of the time; once only `endgame_at` are left, the endgame
/// finds them another way (see [`scan`]).
fn fill<T: Turns>(table: &mut [u32], mut perms: Perms, endgame_at: u32, mut turns: T) {
    let size = table.len() as u32;
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let bit = |taken: &[u64], p: u32| (taken[(p >> 6) as usize] >> (p & 63)) & 1;
    let mut left = size;
    while left > endgame_at {
        let i = turns.next();
        let skip = perms.skip[i];
        let lim = size - skip;
        // Two interleaved walks (even and odd steps) halve the dependency
        // chain of the position arithmetic.
        let skip2 = step(skip, skip, lim);
        let lim2 = size - skip2;
        let mut a = perms.next[i];
        let mut b = step(a, skip, lim);
        let pos = loop {
            if bit(&taken, a) == 0 {
                break a;
            }
            if bit(&taken, b) == 0 {
                break b;
            }
            a = step(a, skip2, lim2);
            b = step(b, skip2, lim2);
        };
        taken[(pos >> 6) as usize] |= 1 << (pos & 63);
        table[pos as usize] = perms.id[i];
        perms.next[i] = step(pos, skip, lim);
        left -= 1;
    }
    if left == 0 {
        return;
    }
    let mut free = Vec::with_capacity(left as usize);
    for (w, &bits) in taken.iter().enumerate() {
        let mut empty = !bits;
        while empty != 0 {
            let s = (w as u32) * 64 + empty.trailing_zeros();
            if s >= size {
                break;
            }
            free.push(s);
            empty &= empty - 1;
        }
    }
    debug_assert_eq!(free.len() as u32, left);
    let mut inv = vec![0u32; perms.id.len()];
    // floor((2^64 - 1) / size), for Barrett reduction.
    let barrett = u64::MAX / size as u64;
    for _ in 0..left {
        let i = turns.next();
        if inv[i] == 0 && size > 1 {
            inv[i] = mod_inverse(perms.skip[i], size);
        }
        let k = scan(&free, size, perms.next[i], inv[i], barrett);
        let pos = free.swap_remove(k);
        table[pos as usize] = perms.id[i];
        perms.next[i] = step(pos, perms.skip[i], size - perms.skip[i]);
    }
}

/// Endgame turn: the index in `free` (the empty slots) of the one that the
/// backend standing at `base` with `skip⁻¹ = inv` reaches first.
///
/// Backend `i` reaches slot `s` after `(s - base) * skip⁻¹ mod size` steps.
/// Every slot it would pass before the closest empty one is taken, so the
/// empty slot with the fewest steps is the one its walk would find.
fn scan(free: &[u32], size: u32, base: u32, inv: u32, barrett: u64) -> usize {
    let (m, inv) = (size as u64, inv as u64);
    let mut best = (u64::MAX, 0usize);
    for (k, &s) in free.iter().enumerate() {
        let d = if s >= base {
            s - base
        } else {
            s + (size - base)
        } as u64;
        // steps = d * inv mod m with d, inv < m <= 2^32: Barrett reduction,
        // the estimated quotient is exact or one short.
        let x = d * inv;
        let q = ((x as u128 * barrett as u128) >> 64) as u64;
        let mut steps = x - q * m;
        if steps >= m {
            steps -= m;
        }
        if steps < best.0 {
            best = (steps, k);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Weighted Maglev straight from the definition: quotas by largest
    /// remainder, credit rounds, `%` for every probe, one probe at a time.
    fn reference(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let set = normalise(backends);
        let mut table = vec![NO_BACKEND; size as usize];
        if set.is_empty() || size == 0 {
            return table;
        }
        let total: u128 = set.iter().map(|b| b.weight as u128).sum();
        let share = |b: &MaglevBackend| size as u128 * b.weight as u128;
        let mut quota: Vec<u64> = set.iter().map(|b| (share(b) / total) as u64).collect();
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.sort_by_key(|&i| (Reverse(share(&set[i]) % total), i));
        let short = size as usize - quota.iter().sum::<u64>() as usize;
        for &i in &order[..short] {
            quota[i] += 1;
        }
        let perm: Vec<(u64, u64)> = set
            .iter()
            .map(|b| {
                let (o, s) = permutation(b.id, size);
                (o as u64, s as u64)
            })
            .collect();
        let wmax = set.iter().map(|b| b.weight as u64).max().unwrap();
        let mut credit = vec![wmax - 1; set.len()];
        let mut j = vec![0u64; set.len()];
        let mut filled = 0;
        loop {
            for (i, b) in set.iter().enumerate() {
                credit[i] += b.weight as u64;
                if credit[i] < wmax {
                    continue;
                }
                credit[i] -= wmax;
                if quota[i] == 0 {
                    continue;
                }
                quota[i] -= 1;
                loop {
                    let c = ((perm[i].0 + j[i] * perm[i].1) % size as u64) as usize;
                    j[i] += 1;
                    if table[c] == NO_BACKEND {
                        table[c] = b.id;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    return table;
                }
            }
        }
    }

    fn tunings(size: u32) -> Vec<Tuning> {
        let mut v = Vec::new();
        for endgame_at in [None, Some(0), Some(1), Some(size / 2), Some(size)] {
            for sched in [Sched::Auto, Sched::Rounds, Sched::Heap] {
                v.push(Tuning { endgame_at, sched });
            }
        }
        v
    }

    fn backends() -> impl Strategy<Value = Vec<MaglevBackend>> {
        prop::collection::vec((1u32..60, 0u32..12), 0..24).prop_map(|v| {
            v.into_iter()
                .map(|(id, weight)| MaglevBackend { id, weight })
                .collect()
        })
    }

    proptest! {
        /// Bitmap probing, the endgame scan and both schedulers build exactly
        /// the textbook table, for prime and non-prime sizes.
        #[test]
        fn every_path_matches_the_reference(
            bs in backends(),
            size in prop::sample::select(vec![1u32, 2, 3, 4, 7, 12, 13, 100, 251, 1009, 4096]),
        ) {
            let want = reference(&bs, size);
            for tuning in tunings(size) {
                let mut t = Vec::new();
                build_with(&bs, size, &mut t, tuning);
                prop_assert_eq!(&t, &want, "{:?}", tuning);
            }
        }

        #[test]
        fn heap_yields_the_turns_of_the_rounds(
            weights in prop::collection::vec(1u64..50, 1..20),
            size in 1u32..3000,
        ) {
            let wmax = *weights.iter().max().unwrap();
            let q = quotas(&weights, size);
            let mut rounds = Credit::new(&weights, q.clone(), wmax);
            let mut heap = Heap::new(&weights, q.clone(), wmax);
            let mut got = vec![0; weights.len()];
            for _ in 0..size {
                let i = rounds.next();
                prop_assert_eq!(i, heap.next());
                got[i] += 1;
            }
            prop_assert!(heap.heap.is_empty());
            prop_assert_eq!(got, q);
        }

        #[test]
        fn quotas_are_the_ideal_shares_rounded(
            weights in prop::collection::vec(1u64..=u32::MAX as u64, 1..50),
            size in 1u32..=u32::MAX,
        ) {
            let q = quotas(&weights, size);
            prop_assert_eq!(q.iter().sum::<u64>(), size as u64);
            let total: u128 = weights.iter().map(|&w| w as u128).sum();
            for (&qi, &w) in q.iter().zip(&weights) {
                let share = size as u128 * w as u128;
                let lo = (share / total) as u64;
                prop_assert!(qi == lo || (qi == lo + 1 && !share.is_multiple_of(total)));
            }
        }

        /// The endgame's modular arithmetic, for sizes up to 2^32 - 1 (the
        /// table tests only reach small sizes).
        #[test]
        fn scan_picks_the_fewest_steps(
            size in 2u32..=u32::MAX,
            base in any::<u32>(),
            skip in any::<u32>(),
            free in prop::collection::btree_set(any::<u32>(), 1..40),
        ) {
            let (base, skip) = (base % size, skip % (size - 1) + 1);
            prop_assume!(gcd(skip, size) == 1);
            let free: Vec<u32> = free.into_iter().map(|s| s % size).collect();
            let inv = mod_inverse(skip, size);
            let m = size as u128;
            let steps = |s: u32| (s as u128 + m - base as u128) % m * inv as u128 % m;
            let k = scan(&free, size, base, inv, u64::MAX / size as u64);
            let best = free.iter().map(|&s| steps(s)).min().unwrap();
            prop_assert_eq!(steps(free[k]), best);
            // And `best` steps of `skip` from `base` do land on it.
            prop_assert_eq!((base as u128 + best * skip as u128) % m, free[k] as u128);
        }

        #[test]
        fn mod_inverse_inverts(m in 2u32..=u32::MAX, a in 1u32..=u32::MAX) {
            let a = a % m;
            prop_assume!(a != 0 && gcd(a, m) == 1);
            let inv = mod_inverse(a, m);
            prop_assert!(inv < m);
            prop_assert_eq!(a as u64 * inv as u64 % m as u64, 1 % m as u64);
        }
    }

    #[test]
    fn reference_matches_at_full_size() {
        let bs: Vec<_> = (1..=300)
            .map(|id| MaglevBackend {
                id: id * 13,
                weight: id % 7 + 1,
            })
            .collect();
        assert_eq!(build(&bs, 65537), reference(&bs, 65537));
        let bs: Vec<_> = (1..=300)
            .map(|id| MaglevBackend { id, weight: 1 })
            .collect();
        assert_eq!(build(&bs, 65537), reference(&bs, 65537));
        // Skewed weights take the heap.
        let mut bs: Vec<_> = (1..=50).map(|id| MaglevBackend { id, weight: 1 }).collect();
        bs.push(MaglevBackend {
            id: 99,
            weight: 1000,
        });
        assert_eq!(build(&bs, 65537), reference(&bs, 65537));
    }

    #[test]
    fn permutation_is_the_documented_one() {
        for id in [1u32, 2, 3, 1000, u32::MAX] {
            let (o, s) = permutation(id, 65537);
            assert_eq!(o as u64, mix64(id as u64 ^ SEED_OFFSET) % 65537);
            assert_eq!(s as u64, mix64(id as u64 ^ SEED_SKIP) % 65536 + 1);
        }
        // Non-prime sizes: skip is moved to a value coprime with the size.
        for size in [4u32, 100, 65536, 1 << 20] {
            for id in 1..200 {
                let (o, s) = permutation(id, size);
                assert!(o < size && (1..size).contains(&s) && gcd(s, size) == 1);
            }
        }
        assert_eq!(permutation(7, 1), (0, 1));
    }
}
