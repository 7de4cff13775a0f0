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
//! Weights follow Katran's weighted variant: backends are ordered by id and
//! go through rounds; in each round a backend earns `weight / max_weight` of a
//! turn and takes a turn when its credit reaches one. Backend `i`'s `k`-th turn
//! therefore comes in round `ceil(k * max_weight / weight_i)`, and its share of
//! the table is within two slots of `size * weight_i / sum(weights)`.
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
/// such backend, `NO_BACKEND`. The backends' order does not matter (they are
/// sorted by id); an id listed twice counts once, with the sum of its weights.
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
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n % d == 0 || n % (d + 2) == 0 {
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

pub static GROUP_PCT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Internal knobs, so tests can check that every path gives the same table.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// Search turns side by side while more than this many slots are
    /// empty (`None`: an eighth of the table).
    lanes_until: Option<u32>,
    /// Switch from probing to the empty-slot scan when this many slots are
    /// left (`None`: about `sqrt(size)`).
    endgame_at: Option<u32>,
    sched: Sched,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            lanes_until: None,
            endgame_at: None,
            sched: Sched::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    /// Rounds when the weights are not too skewed, a heap otherwise.
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
    let mut f = Filler::new(&set, size, table, &tuning);
    let wmax = set.iter().map(|b| b.weight).max().unwrap_or(1) as u64;
    let wsum: u64 = set.iter().map(|b| b.weight as u64).sum();
    let sched = match tuning.sched {
        // A round visits every backend but only gives wsum / wmax turns.
        Sched::Auto if wsum * 4 >= wmax * set.len() as u64 => Sched::Rounds,
        Sched::Auto => Sched::Heap,
        s => s,
    };
    if sched == Sched::Rounds {
        if set.iter().all(|b| b.weight as u64 == wmax) {
            loop {
                for i in 0..set.len() {
                    if f.turn(i) {
                        return;
                    }
                }
            }
        }
        let mut credit = vec![0u64; set.len()];
        loop {
            for (i, (c, b)) in credit.iter_mut().zip(&set).enumerate() {
                *c += b.weight as u64;
                if *c >= wmax {
                    *c -= wmax;
                    if f.turn(i) {
                        return;
                    }
                }
            }
        }
    }
    // Turn k (1-based) of backend i comes in round ceil(k * wmax / w_i); within
    // a round, by index: exactly the order of the rounds above.
    let round = |k: u64, w: u32| (k as u128 * wmax as u128).div_ceil(w as u128) as u64;
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = set
        .iter()
        .enumerate()
        .map(|(i, b)| Reverse((round(1, b.weight), i as u32)))
        .collect();
    let mut turns = vec![0u64; set.len()];
    while let Some(Reverse((_, i))) = heap.pop() {
        let i = i as usize;
        if f.turn(i) {
            return;
        }
        turns[i] += 1;
        heap.push(Reverse((round(turns[i] + 1, set[i].weight), i as u32)));
    }
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

/// Turns searched side by side (see [`Filler::flush`]).
const LANES: usize = 4;

/// The table being filled, and every backend's place in its permutation.
///
/// Turns are queued and searched [`LANES`] at a time, which gives the same
/// table as taking them one by one (see [`Filler::flush`]).
struct Filler<'t> {
    table: &'t mut [u32],
    size: u32,
    /// Empty slots left.
    left: u32,
    /// Turns queued so far, and the ones not searched yet.
    issued: u32,
    queue: [u32; LANES],
    queued: usize,
    /// Probing phase: bit `s` set = slot `s` taken.
    taken: Vec<u64>,
    /// Search queued turns side by side while more than this many slots are empty.
    lanes_until: u32,
    /// Endgame: the empty slots (unordered), once `left <= endgame_at`.
    free: Vec<u32>,
    endgame_at: u32,
    /// Per backend: next slot of its permutation to look at, its skip, its
    /// id, and `skip⁻¹ mod size` (0 until needed).
    next: Vec<u32>,
    skip: Vec<u32>,
    id: Vec<u32>,
    inv: Vec<u32>,
    /// floor((2^64 - 1) / size), for Barrett reduction.
    barrett: u64,
}

impl<'t> Filler<'t> {
    fn new(set: &[MaglevBackend], size: u32, table: &'t mut [u32], tuning: &Tuning) -> Self {
        let mut next = Vec::with_capacity(set.len());
        let mut skip = Vec::with_capacity(set.len());
        let prime = is_prime(size);
        for b in set {
            let (o, s) = permutation_in(b.id, size, prime);
            next.push(o);
            skip.push(s);
        }
        let mut f = Filler {
            table,
            size,
            left: size,
            issued: 0,
            queue: [0; LANES],
            queued: 0,
            taken: vec![0; (size as usize).div_ceil(64)],
            lanes_until: tuning.lanes_until.unwrap_or(size / 8),
            free: Vec::new(),
            endgame_at: tuning.endgame_at.unwrap_or_else(|| size.isqrt().max(16)),
            next,
            skip,
            id: set.iter().map(|b| b.id).collect(),
            inv: vec![0; set.len()],
            barrett: u64::MAX / size as u64,
        };
        if f.left <= f.endgame_at {
            f.start_endgame();
        }
        f
    }

    /// Backend `i` takes the next turn. Returns whether the table is full
    /// (there are exactly `size` turns).
    #[inline(always)]
    fn turn(&mut self, i: usize) -> bool {
        self.queue[self.queued] = i as u32;
        self.queued += 1;
        self.issued += 1;
        let full = self.issued == self.size;
        if self.queued == LANES || full {
            self.flush();
        }
        full
    }

    /// Takes the queued turns.
    ///
    /// While the table is not too full, the queued backends search their
    /// permutations side by side, without branching on what each probe finds,
    /// so there is one unpredictable branch per [`LANES`] turns instead of
    /// one or two per turn. The claims are then made in turn order; a claim
    /// stands if its slot is still empty and its backend was not already
    /// earlier in the queue: the slots before it in the backend's permutation
    /// were taken when it searched, and slots never become empty again, so
    /// it is what a search at its turn would have found. Otherwise that turn
    /// searches again, alone.
    #[inline(always)]
    fn flush(&mut self) {
        let n = self.queued;
        self.queued = 0;
        if n < LANES || self.left < self.lanes_until || self.left - self.endgame_at < LANES as u32 {
            for k in 0..n {
                self.single(self.queue[k] as usize);
            }
            return;
        }
        let q = self.queue.map(|i| i as usize);
        let mut pos = q.map(|i| self.next[i]);
        let skip = q.map(|i| self.skip[i]);
        let lim = skip.map(|s| self.size - s);
        loop {
            let mut any = 0;
            for k in 0..LANES {
                let t = self.bit(pos[k]);
                any |= t;
                let adv = if pos[k] >= lim[k] {
                    pos[k] - lim[k]
                } else {
                    pos[k] + skip[k]
                };
                pos[k] = if t != 0 { adv } else { pos[k] };
            }
            if any == 0 {
                break;
            }
        }
        for k in 0..LANES {
            let i = q[k];
            if self.bit(pos[k]) == 0 && !q[..k].contains(&i) {
                self.claim(i, pos[k]);
            } else {
                self.probe(i);
            }
        }
        if self.left == self.endgame_at {
            self.start_endgame();
        }
    }

    /// One turn for backend `i`, alone.
    #[inline(always)]
    fn single(&mut self, i: usize) {
        if self.left > self.endgame_at {
            self.probe(i);
            if self.left == self.endgame_at {
                self.start_endgame();
            }
        } else {
            self.scan(i);
        }
    }

    #[inline(always)]
    fn bit(&self, p: u32) -> u64 {
        (self.taken[(p >> 6) as usize] >> (p & 63)) & 1
    }

    /// Backend `i` takes empty slot `pos` (probing phase).
    #[inline(always)]
    fn claim(&mut self, i: usize, pos: u32) {
        self.taken[(pos >> 6) as usize] |= 1 << (pos & 63);
        self.table[pos as usize] = self.id[i];
        let lim = self.size - self.skip[i];
        self.next[i] = if pos >= lim {
            pos - lim
        } else {
            pos + self.skip[i]
        };
        self.left -= 1;
    }

    /// Backend `i` walks its permutation to the first empty slot and takes it.
    #[inline(always)]
    fn probe(&mut self, i: usize) {
        // Two interleaved walks (even and odd steps) halve the dependency
        // chain of the position arithmetic. `p + s` wraps iff `p >= size - s`,
        // which needs no wider integer.
        let skip = self.skip[i];
        let skip2 = if skip >= self.size - skip {
            skip - (self.size - skip)
        } else {
            skip + skip
        };
        let lim = self.size - skip;
        let lim2 = self.size - skip2;
        let mut a = self.next[i];
        let mut b = if a >= lim { a - lim } else { a + skip };
        let pos = loop {
            if self.bit(a) == 0 {
                break a;
            }
            if self.bit(b) == 0 {
                break b;
            }
            a = if a >= lim2 { a - lim2 } else { a + skip2 };
            b = if b >= lim2 { b - lim2 } else { b + skip2 };
        };
        self.claim(i, pos);
    }

    #[cold]
    fn start_endgame(&mut self) {
        self.free.clear();
        for (w, &bits) in self.taken.iter().enumerate() {
            let mut empty = !bits;
            while empty != 0 {
                let s = (w as u32) * 64 + empty.trailing_zeros();
                if s >= self.size {
                    break;
                }
                self.free.push(s);
                empty &= empty - 1;
            }
        }
        debug_assert_eq!(self.free.len() as u32, self.left);
    }

    /// Endgame turn: claims the empty slot that backend `i` reaches in the
    /// fewest steps, i.e. the one probing would find.
    fn scan(&mut self, i: usize) {
        let size = self.size;
        let inv = if size == 1 {
            0
        } else {
            if self.inv[i] == 0 {
                self.inv[i] = mod_inverse(self.skip[i], size);
            }
            self.inv[i] as u64
        };
        let base = self.next[i];
        let (m, r) = (size as u64, self.barrett);
        let mut best = (u64::MAX, 0usize);
        for (k, &s) in self.free.iter().enumerate() {
            let d = if s >= base {
                s - base
            } else {
                s + (size - base)
            } as u64;
            // steps = d * inv mod m (d, inv < m <= 2^32): Barrett reduction,
            // q is floor(x / m) or one less.
            let x = d * inv;
            let q = ((x as u128 * r as u128) >> 64) as u64;
            let mut steps = x - q * m;
            if steps >= m {
                steps -= m;
            }
            if steps < best.0 {
                best = (steps, k);
            }
        }
        let pos = self.free.swap_remove(best.1);
        self.table[pos as usize] = self.id[i];
        let lim = size - self.skip[i];
        self.next[i] = if pos >= lim {
            pos - lim
        } else {
            pos + self.skip[i]
        };
        self.left -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn timing() {
        for n in [100u32, 1000] {
            let bs: Vec<_> = (1..=n).map(|id| MaglevBackend { id, weight: 1 }).collect();
            for lu in [65537, 32768, 16384, 8192, 6553, 4096, 2048, 1024, 512] {
                let tuning = Tuning {
                    lanes_until: Some(lu),
                    endgame_at: None,
                    sched: Sched::Auto,
                };
                let mut t = Vec::new();
                let mut times = Vec::new();
                for _ in 0..200 {
                    let s = Instant::now();
                    build_with(&bs, 65537, &mut t, tuning);
                    times.push(s.elapsed());
                }
                times.sort();
                println!("n={n} lu={lu:?} min={:?} med={:?}", times[0], times[100]);
            }
        }
    }
}
