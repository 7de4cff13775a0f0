//! The flow hash and slot reduction: one definition, used by the XDP program,
//! the daemon, the reference model and `lbctl route`, so all agree on where a flow lands.

use crate::FlowKey;

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
fn mix(h: u32, w: u32) -> u32 {
    (h ^ w).wrapping_mul(0x85eb_ca6b).rotate_left(13)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    // murmur3's finaliser: full avalanche so that the high bits used by `slot` are well mixed.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a whole 5-tuple (the `mh` scheduler's key).
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.dst, 0));
    // An IPv4 flow's other address words are zero: mixing them in is a chain of
    // dependent multiplies on every new flow for nothing.
    if k.family != crate::FAMILY_V4 {
        h = mix(h, word(&k.src, 4));
        h = mix(h, word(&k.src, 8));
        h = mix(h, word(&k.src, 12));
        h = mix(h, word(&k.dst, 4));
        h = mix(h, word(&k.dst, 8));
        h = mix(h, word(&k.dst, 12));
    }
    h = mix(h, (k.sport as u32) << 16 | k.dport as u32);
    h = mix(h, k.proto as u32);
    fmix(h)
}

/// The cookie in a half-open check's ISN (the bits of `HC_COOKIE_MASK`): keyed by the
/// daemon's secret and the target, so that XDP tells the answers to the daemon's
/// checks (`ack - 1`) from other traffic to those ports with no per-check state.
#[inline(always)]
pub fn hc_cookie(secret: &[u32; 4], remote: &[u8; 16], rport: u16) -> u32 {
    let mut h = secret[0];
    h = mix(h, word(remote, 0));
    h = mix(h, word(remote, 4));
    h = mix(h, word(remote, 8));
    h = mix(h, word(remote, 12));
    h = mix(h, secret[1] ^ rport as u32);
    h = mix(h, secret[2]);
    fmix(h ^ secret[3]) & crate::HC_COOKIE_MASK
}

/// The VIP_INDEX slot of a VIP key (0..VIP_INDEX_SLOTS).
#[inline(always)]
pub fn vip_slot(k: &crate::VipKey) -> u32 {
    let mut h = SEED ^ 0x5649; // distinct from the other hashes
    h = mix(h, word(&k.addr, 0));
    h = mix(h, word(&k.addr, 4));
    h = mix(h, word(&k.addr, 8));
    h = mix(h, word(&k.addr, 12));
    h = mix(
        h,
        (k.port as u32) << 16 | (k.proto as u32) << 8 | k.family as u32,
    );
    fmix(h) >> (32 - crate::VIP_INDEX_BITS)
}

/// Hash of the client address alone (the `sh` scheduler's key: client affinity).
#[inline(always)]
pub fn src_hash(src: &[u8; 16]) -> u32 {
    let mut h = SEED ^ 0x5348; // distinct from flow_hash of a zero tuple
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 4));
    h = mix(h, word(src, 8));
    h = mix(h, word(src, 12));
    fmix(h)
}

/// Maps a 32-bit hash onto `0..n` without a division (Lemire's multiply-shift).
#[inline(always)]
pub fn slot(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// The VIP_FILTER bit of a destination address (0..VIP_FILTER_BITS).
#[inline(always)]
pub fn addr_filter_bit(addr: &[u8; 16]) -> u32 {
    let w = word(addr, 0)
        ^ word(addr, 4).rotate_left(7)
        ^ word(addr, 8).rotate_left(14)
        ^ word(addr, 12).rotate_left(21);
    slot(w.wrapping_mul(0x9e37_79b1), crate::VIP_FILTER_BITS)
}
