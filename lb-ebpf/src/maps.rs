//! The data plane's maps. Types come from lb-common; capacities here are defaults
//! that the loader overrides (`EbpfLoader::map_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    Backend, Conn, Counters, Ctrl, DEFAULT_CONNS, DEFAULT_FRAGS, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_VIPS, DEFAULT_PERSIST, DEFAULT_RING_SIZE, FlowKey, FragKey, FragVal, HcCtrl,
    PersistKey, PersistVal, REASON_SLOTS, VIP_FILTER_WORDS, VIP_INDEX_SLOTS, VipKey, VipMeta,
    VipSlot,
};

/// BPF_F_MMAPABLE: the daemon writes Maglev slots straight into the map's memory.
const F_MMAPABLE: u32 = 1 << 10;

/// (addr, port, proto) → VIP. Twice the VIP count: each address also has a marker entry.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS * 2, 0);

/// Flat lookup tables: VIP `idx` owns slots `idx * ring_size .. (idx + 1) * ring_size`.
/// Two slots per element: array elements are 8-byte aligned, so `[u32; 2]` makes the
/// mmap'ed memory one dense `u32` array for the daemon.
#[map]
pub static MAGLEV: Array<[u32; 2]> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE / 2 + 1, F_MMAPABLE);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The common LRU, not BPF_F_NO_COMMON_LRU: a per-CPU LRU rotates its lists on every
/// insert (walking other entries), while the common one pops from a per-CPU free
/// list refilled in batches; measured here, a new flow costs ~50 ns less with it.
#[map]
pub static CONNS: LruHashMap<FlowKey, Conn> = LruHashMap::with_max_entries(DEFAULT_CONNS, 0);

#[map]
pub static PERSIST: LruHashMap<PersistKey, PersistVal> =
    LruHashMap::with_max_entries(DEFAULT_PERSIST, 0);

#[map]
pub static FRAGS: LruHashMap<FragKey, FragVal> = LruHashMap::with_max_entries(DEFAULT_FRAGS, 0);

#[map]
pub static CTRL: Array<Ctrl> = Array::with_max_entries(1, 0);

/// Per-CPU position in each VIP's rr/wrr sequence.
#[map]
pub static RR_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);

/// Bitmap over VIP addresses (`hash::addr_filter_bit`), written by the daemon through mmap.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, F_MMAPABLE);

/// VIPS, direct-mapped by `hash::vip_slot` for an inline lookup (written by the daemon
/// through mmap; a miss falls back to VIPS).
#[map]
pub static VIP_INDEX: Array<VipSlot> = Array::with_max_entries(VIP_INDEX_SLOTS, F_MMAPABLE);

/// Generation of each VIP index; connection entries remember it.
#[map]
pub static VIP_GEN: Array<u32> = Array::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Passive health signals for the daemon (`PassiveEvent`s).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Per backend, per CPU: when the last event was sent (rate limit).
#[map]
pub static EVENT_RL: PerCpuArray<u64> = PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// EVENT_STAT_* counters: sent, lost (ring full), suppressed (rate limit).
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// How to recognise the answers to the daemon's half-open checks (`HcCtrl`).
#[map]
pub static HC_CTRL: Array<HcCtrl> = Array::with_max_entries(1, 0);

/// The answers to the daemon's half-open checks taken here (`HcAnswer`s).
#[map]
pub static HC_ANSWERS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
