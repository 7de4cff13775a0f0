//! Internet checksum helpers (RFC 1071 / RFC 1624).

#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// One's-complement sum of a byte slice of even length known at compile time.
#[inline(always)]
pub fn sum_bytes(b: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i + 1 < b.len() {
        s += u16::from_be_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    s
}

/// Checksum field value (network order bytes) for data whose sum is `s`.
#[inline(always)]
pub fn finish(s: u64) -> [u8; 2] {
    (!fold(s)).to_be_bytes()
}

/// RFC 1624 incremental update of a checksum when a 16-bit word changes from `old` to `new`.
#[inline(always)]
pub fn replace16(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let hc = u16::from_be_bytes(check);
    let s = (!hc) as u64 + (!old) as u64 + new as u64;
    (!fold(s)).to_be_bytes()
}
