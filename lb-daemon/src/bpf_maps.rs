//! The only writer of the data plane's maps: typed handles over the loaded object.
//! Maglev slots are written straight into the mmap'ed MAGLEV array, and only the
//! slots that change are written.

use std::{
    os::fd::AsFd as _,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Backend, Conn, Counters, Ctrl, FlowKey, HcCtrl, REASON_SLOTS, Reason, VipKey, VipMeta,
    map_names as m,
};

use crate::loader::Capacity;

/// The MAGLEV array, mapped into our address space (BPF_F_MMAPABLE).
struct SlotMem {
    ptr: NonNull<AtomicU32>,
    len: usize,
    map_len: usize,
}

// SAFETY: the mapping is owned by this struct and only accessed through atomics.
unsafe impl Send for SlotMem {}
unsafe impl Sync for SlotMem {}

impl SlotMem {
    /// `slots` u32 slots, stored two per (8-byte) array element.
    fn new(map: &MapData, slots: u32) -> Result<Self> {
        let len = slots as usize;
        let page = 4096;
        let map_len = (len.div_ceil(2) * 8).div_ceil(page) * page;
        let fd = map.fd().as_fd();
        use std::os::fd::AsRawFd as _;
        // SAFETY: mapping a BPF array fd read/write shared, as the kernel documents for
        // BPF_F_MMAPABLE arrays; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of MAGLEV");
        }
        Ok(SlotMem {
            ptr: NonNull::new(p.cast()).context("mmap returned null")?,
            len,
            map_len,
        })
    }

    fn slots(&self) -> &[AtomicU32] {
        // SAFETY: `len` u32s lie inside the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as 64-bit words (for VIP_FILTER: `len` counts u32 halves).
    fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is page-aligned and holds `len / 2` u64s.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / 2) }
    }
}

impl Drop for SlotMem {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// VIP_INDEX, written through mmap: each slot caches one of the VIPs whose key hashes
/// to it (`hash::vip_slot`); XDP falls back to VIPS for the others. Address markers
/// (proto 0) are not cached: only the cold paths look them up.
struct VipIndex {
    mem: SlotMem,
    _map: MapData,
    /// VIPs by slot, the slot's holder first.
    by_slot: std::collections::HashMap<u32, Vec<(VipKey, VipMeta)>>,
}

/// u32 words of a `VipSlot`: key 0..5, live 5, meta 6..12.
const SLOT_WORDS: usize = 16;
const LIVE_WORD: usize = 5;

impl VipIndex {
    fn new(map: Map) -> Result<Self> {
        let Map::Array(map) = map else {
            bail!("VIP_INDEX is not an array")
        };
        let mem = SlotMem::new(&map, lb_common::VIP_INDEX_SLOTS * SLOT_WORDS as u32)?;
        let index = VipIndex {
            mem,
            _map: map,
            by_slot: Default::default(),
        };
        for s in 0..lb_common::VIP_INDEX_SLOTS {
            index.write(s, None);
        }
        Ok(index)
    }

    fn set(&mut self, key: VipKey, meta: VipMeta) {
        if key.proto == 0 {
            return;
        }
        let slot = lb_common::hash::vip_slot(&key);
        let vips = self.by_slot.entry(slot).or_default();
        match vips.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = meta,
            None => vips.push((key, meta)),
        }
        let holder = vips.first().copied();
        self.write(slot, holder);
    }

    fn remove(&mut self, key: &VipKey) {
        let slot = lb_common::hash::vip_slot(key);
        let Some(vips) = self.by_slot.get_mut(&slot) else {
            return;
        };
        vips.retain(|(k, _)| k != key);
        let holder = vips.first().copied();
        if vips.is_empty() {
            self.by_slot.remove(&slot);
        }
        self.write(slot, holder);
    }

    /// What the mapped slot of `key` holds, read back from the map's memory.
    fn holder(&self, key: &VipKey) -> Option<(VipKey, VipMeta)> {
        use std::sync::atomic::Ordering::Acquire;
        let slot = lb_common::hash::vip_slot(key) as usize;
        let w = &self.mem.slots()[slot * SLOT_WORDS..][..SLOT_WORDS];
        if w[LIVE_WORD].load(Acquire) != 1 {
            return None;
        }
        let kw: [u32; 5] = std::array::from_fn(|i| w[i].load(Acquire));
        let mw: [u32; 6] = std::array::from_fn(|i| w[6 + i].load(Acquire));
        // SAFETY: the inverse of `write`'s transmutes; every bit pattern is a valid key/meta.
        Some(unsafe {
            (
                std::mem::transmute::<[u32; 5], VipKey>(kw),
                std::mem::transmute::<[u32; 6], VipMeta>(mw),
            )
        })
    }

    /// Fills slot `slot` with `vip` (or empties it). A new key is written with `live`
    /// cleared first and set last; a meta change of the same key is written in place.
    fn write(&self, slot: u32, vip: Option<(VipKey, VipMeta)>) {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let w = &self.mem.slots()[slot as usize * SLOT_WORDS..][..SLOT_WORDS];
        let Some((key, meta)) = vip else {
            w[LIVE_WORD].store(0, Release);
            return;
        };
        // SAFETY: VipKey is repr(C, align(4)), 20 bytes of integers; VipMeta is six u32s.
        let kw = unsafe { std::mem::transmute::<VipKey, [u32; 5]>(key) };
        let mw = unsafe { std::mem::transmute::<VipMeta, [u32; 6]>(meta) };
        let same_key =
            w[LIVE_WORD].load(Acquire) == 1 && kw.iter().zip(w).all(|(k, c)| c.load(Acquire) == *k);
        if !same_key {
            w[LIVE_WORD].store(0, Release);
            for (c, k) in w.iter().zip(kw) {
                c.store(k, Release);
            }
        }
        for (c, m) in w[6..12].iter().zip(mw) {
            c.store(m, Release);
        }
        w[LIVE_WORD].store(1, Release);
    }
}

/// The MAGLEV array's tables (see [`DataPlane::tables`]).
#[derive(Clone, Copy)]
pub struct Tables<'a> {
    slots: &'a [AtomicU32],
    ring: usize,
}

impl<'a> Tables<'a> {
    fn slots(&self, idx: u32) -> &'a [AtomicU32] {
        let start = idx as usize * self.ring;
        &self.slots[start..start + self.ring]
    }

    /// Makes VIP `idx`'s table equal `new` (shorter: the rest is emptied), writing only
    /// the slots that differ. Each slot write is atomic, so a packet sees the old or the
    /// new backend of its slot, never garbage. Returns how many slots were written.
    pub fn write(&self, idx: u32, new: &[u32]) -> usize {
        let slots = self.slots(idx);
        let (head, tail) = slots.split_at(new.len().min(slots.len()));
        let mut written = 0;
        let mut put = |s: &AtomicU32, v: u32| {
            if s.load(Ordering::Relaxed) != v {
                s.store(v, Ordering::Relaxed);
                written += 1;
            }
        };
        for (s, &v) in head.iter().zip(new) {
            put(s, v);
        }
        for s in tail {
            put(s, 0);
        }
        written
    }
}

/// The programs in the object, all verified at load.
pub const PROGRAMS: [&str; 4] = ["xdp_lb", "xdp_decap", "xdp_floor", "xdp_pass"];

pub struct DataPlane {
    pub ebpf: Ebpf,
    pub cap: Capacity,
    vips: HashMap<MapData, VipKey, VipMeta>,
    backends: Array<MapData, Backend>,
    ctrl: Array<MapData, Ctrl>,
    conns: HashMap<MapData, FlowKey, Conn>,
    vip_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, u64>,
    rr_state: PerCpuArray<MapData, u32>,
    slots: SlotMem,
    _maglev: MapData,
    filter: SlotMem,
    _filter: MapData,
    vip_gen: Array<MapData, u32>,
    events: Option<aya::maps::RingBuf<MapData>>,
    event_stats: PerCpuArray<MapData, u64>,
    vip_index: VipIndex,
    /// HC_CTRL and HC_ANSWERS, until the half-open checker takes them.
    hc: Option<(Array<MapData, HcCtrl>, aya::maps::RingBuf<MapData>)>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

impl DataPlane {
    /// Wraps a loaded object. Programs are verified here, before the maps are taken
    /// out of `ebpf` (loading relocates the map fds into the programs).
    pub fn new(mut ebpf: Ebpf, cap: Capacity) -> Result<Self> {
        for name in PROGRAMS {
            let p = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?;
            let x: &mut Xdp = p.try_into()?;
            x.load().with_context(|| format!("verifying {name}"))?;
        }
        let maglev = match take(&mut ebpf, m::MAGLEV)? {
            Map::Array(d) => d,
            _ => bail!("MAGLEV is not an array"),
        };
        let slots = SlotMem::new(&maglev, cap.max_vips * cap.ring_size)?;
        let filter_map = match take(&mut ebpf, m::VIP_FILTER)? {
            Map::Array(d) => d,
            _ => bail!("VIP_FILTER is not an array"),
        };
        let filter = SlotMem::new(&filter_map, lb_common::VIP_FILTER_WORDS * 2)?;
        let mut dp = DataPlane {
            vips: take(&mut ebpf, m::VIPS)?.try_into()?,
            backends: take(&mut ebpf, m::BACKENDS)?.try_into()?,
            ctrl: take(&mut ebpf, m::CTRL)?.try_into()?,
            conns: take(&mut ebpf, m::CONNS)?.try_into()?,
            vip_stats: take(&mut ebpf, m::VIP_STATS)?.try_into()?,
            backend_stats: take(&mut ebpf, m::BACKEND_STATS)?.try_into()?,
            reasons: take(&mut ebpf, m::REASONS)?.try_into()?,
            rr_state: take(&mut ebpf, m::RR_STATE)?.try_into()?,
            slots,
            _maglev: maglev,
            filter,
            _filter: filter_map,
            vip_gen: take(&mut ebpf, m::VIP_GEN)?.try_into()?,
            events: Some(take(&mut ebpf, m::EVENTS)?.try_into()?),
            event_stats: take(&mut ebpf, m::EVENT_STATS)?.try_into()?,
            vip_index: VipIndex::new(take(&mut ebpf, m::VIP_INDEX)?)?,
            hc: Some((
                take(&mut ebpf, m::HC_CTRL)?.try_into()?,
                take(&mut ebpf, m::HC_ANSWERS)?.try_into()?,
            )),
            ebpf,
            cap,
        };
        // VIP_INDEX is a cache of VIPS: filled from it, whatever VIPS was adopted with.
        let vips: Vec<(VipKey, VipMeta)> = dp.vips.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in vips {
            dp.vip_index.set(k, v);
        }
        Ok(dp)
    }

    /// Loads the embedded object with `cap` and wraps it.
    pub fn load(cap: &Capacity) -> Result<Self> {
        let ebpf = crate::loader::load(cap, None)?;
        let mut dp = Self::new(ebpf, cap.clone())?;
        dp.set_ctrl(&Ctrl {
            ring_size: cap.ring_size,
            ns_per_tick: crate::clock::ns_per_tick(),
            ..Ctrl::default()
        })?;
        Ok(dp)
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        let x: &mut Xdp = p.try_into()?;
        Ok(x)
    }

    /// Attaches program `prog` to an interface: native mode, else generic mode with a warning.
    pub fn attach(&mut self, prog: &str, ifname: &str) -> Result<(&'static str, XdpLinkId)> {
        let c = std::ffi::CString::new(ifname)?;
        let prog = self.program(prog)?;
        match prog.attach(c.as_c_str(), XdpMode::Driver) {
            Ok(id) => Ok(("native", id)),
            Err(e) => {
                tracing::warn!(
                    "native XDP on {ifname} failed ({e}); falling back to generic (skb) mode, which is much slower"
                );
                let id = prog
                    .attach(c.as_c_str(), XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {ifname}"))?;
                Ok(("generic", id))
            }
        }
    }

    pub fn set_ctrl(&mut self, c: &Ctrl) -> Result<()> {
        self.ctrl.set(0, c, 0).context("writing CTRL")
    }

    pub fn ctrl(&self) -> Result<Ctrl> {
        Ok(self.ctrl.get(&0, 0)?)
    }

    /// VIPS first, then its cached copy in VIP_INDEX.
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        self.vips.insert(key, meta, 0).context("writing VIPS")?;
        self.vip_index.set(*key, *meta);
        Ok(())
    }

    /// The VIP that VIP_INDEX holds in `key`'s slot (any key hashing there), if any.
    pub fn vip_index_holder(&self, key: &VipKey) -> Option<(VipKey, VipMeta)> {
        self.vip_index.holder(key)
    }

    /// VIP_INDEX's copy first, then VIPS: a packet never finds a removed VIP.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vip_index.remove(key);
        match self.vips.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from VIPS"),
        }
    }

    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        self.vips.iter().map(|r| r.map_err(Into::into)).collect()
    }

    pub fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        self.backends
            .set(id, b, 0)
            .with_context(|| format!("writing BACKENDS[{id}]"))
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        Ok(self.backends.get(&id, 0)?)
    }

    /// The current contents of VIP `idx`'s lookup table.
    pub fn table(&self, idx: u32) -> Vec<u32> {
        self.table_slots(idx)
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    fn table_slots(&self, idx: u32) -> &[AtomicU32] {
        self.tables().slots(idx)
    }

    /// Makes VIP `idx`'s table equal `new`: see [`Tables::write`].
    pub fn write_table(&self, idx: u32, new: &[u32]) -> usize {
        self.tables().write(idx, new)
    }

    /// The lookup tables alone, as a handle that worker threads can share: each
    /// VIP's table is a separate range of the mapping, so threads writing
    /// different VIPs' tables never touch the same slot.
    pub fn tables(&self) -> Tables<'_> {
        Tables {
            slots: self.slots.slots(),
            ring: self.cap.ring_size as usize,
        }
    }

    /// Makes VIP_FILTER equal `bits` (VIP_FILTER_WORDS words), writing changed words only.
    /// Bits are set before the VIP entries that need them and cleared after.
    pub fn write_filter(&self, bits: &[u64]) -> usize {
        let mut n = 0;
        for (w, v) in self.filter.words().iter().zip(bits) {
            if w.load(Ordering::Relaxed) != *v {
                w.store(*v, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    pub fn filter(&self) -> Vec<u64> {
        self.filter
            .words()
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// Retires VIP `idx`'s generation: its connection entries stop matching.
    pub fn bump_vip_gen(&mut self, idx: u32) -> Result<()> {
        let g = self.vip_gen.get(&idx, 0)?;
        self.vip_gen.set(idx, &g.wrapping_add(1), 0)?;
        Ok(())
    }

    pub fn vip_gen(&self, idx: u32) -> Result<u32> {
        Ok(self.vip_gen.get(&idx, 0)?)
    }

    pub fn reset_rr(&mut self, idx: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u32; n.get() as usize])?;
        self.rr_state.set(idx, zeros, 0)?;
        Ok(())
    }

    pub fn conn(&self, flow: &FlowKey) -> Option<Conn> {
        self.conns.get(flow, 0).ok()
    }

    pub fn conns(&self) -> Vec<(FlowKey, Conn)> {
        self.conns.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn clear_conns(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.conns.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = self.conns.remove(&k);
        }
        Ok(())
    }

    /// Deletes the connection entries that point at `backend` (health `on_down = reset`):
    /// the clients' next packets are balanced again. Returns how many went.
    pub fn remove_conns_to(&mut self, backend: u32) -> usize {
        let keys: Vec<FlowKey> = self
            .conns
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, c)| c.backend == backend)
            .map(|(k, _)| k)
            .collect();
        keys.iter().filter(|k| self.conns.remove(k).is_ok()).count()
    }

    fn sum(c: aya::maps::PerCpuValues<Counters>) -> Counters {
        c.iter().fold(Counters::default(), |a, b| Counters {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
            new_conns: a.new_conns + b.new_conns,
            syn_retransmits: a.syn_retransmits + b.syn_retransmits,
            handshakes: a.handshakes + b.handshakes,
            _reserved: 0,
        })
    }

    pub fn vip_counters(&self, idx: u32) -> Result<Counters> {
        Ok(Self::sum(self.vip_stats.get(&idx, 0)?))
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        Ok(Self::sum(self.backend_stats.get(&id, 0)?))
    }

    /// Per-CPU packet counts of one VIP (the busiest core, not the average).
    pub fn vip_counters_per_cpu(&self, idx: u32) -> Result<Vec<Counters>> {
        Ok(self.vip_stats.get(&idx, 0)?.iter().copied().collect())
    }

    /// Zeroes the traffic counters of the given VIP indexes and backend ids
    /// (`ipvsadm -Z`); `None` zeroes everything, reasons included.
    pub fn zero(&mut self, only: Option<(&[u32], &[u32])>) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
        let zc = || aya::maps::PerCpuValues::try_from(vec![Counters::default(); n]);
        let (vips, backends): (Vec<u32>, Vec<u32>) = match only {
            Some((v, b)) => (v.to_vec(), b.to_vec()),
            None => (
                (0..self.cap.max_vips).collect(),
                (0..self.cap.max_backends).collect(),
            ),
        };
        for i in vips {
            self.vip_stats.set(i, zc()?, 0)?;
        }
        for i in backends {
            self.backend_stats.set(i, zc()?, 0)?;
        }
        if only.is_none() {
            for r in 0..REASON_SLOTS {
                self.reasons
                    .set(r, aya::maps::PerCpuValues::try_from(vec![0u64; n])?, 0)?;
            }
        }
        Ok(())
    }

    /// Takes the EVENTS ring buffer (for a task that waits on it); `None` once taken.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.events.take()
    }

    /// Takes HC_CTRL and HC_ANSWERS, for the half-open checker
    /// (`HalfOpen::attach_data_plane`); `None` once taken.
    pub fn take_health_answers(
        &mut self,
    ) -> Option<(Array<MapData, HcCtrl>, aya::maps::RingBuf<MapData>)> {
        self.hc.take()
    }

    /// Drains pending passive events without waiting (if the ring buffer wasn't taken).
    pub fn drain_events(&mut self) -> Vec<lb_common::PassiveEvent> {
        self.events.as_mut().map(drain_ring).unwrap_or_default()
    }

    /// Ring-buffer accounting: (sent, lost because the ring was full, suppressed by the rate limit).
    pub fn event_stats(&self) -> Result<(u64, u64, u64)> {
        let get = |i: u32| -> Result<u64> { Ok(self.event_stats.get(&i, 0)?.iter().sum()) };
        Ok((
            get(lb_common::EVENT_STAT_SENT)?,
            get(lb_common::EVENT_STAT_LOST)?,
            get(lb_common::EVENT_STAT_SUPPRESSED)?,
        ))
    }

    /// Global counters by reason, summed over CPUs.
    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|r| {
                let v = self.reasons.get(&(*r as u32), 0)?;
                Ok((*r, v.iter().sum()))
            })
            .collect()
    }

    pub fn reason_count(&self, r: Reason) -> Result<u64> {
        debug_assert!((r as u32) < REASON_SLOTS);
        Ok(self.reasons.get(&(r as u32), 0)?.iter().sum())
    }
}

/// Everything in an EVENTS ring buffer now (no waiting).
pub fn drain_ring(ring: &mut aya::maps::RingBuf<MapData>) -> Vec<lb_common::PassiveEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<lb_common::PassiveEvent>() {
            // SAFETY: the program writes whole PassiveEvents (repr(C), plain data).
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
    }
    out
}
