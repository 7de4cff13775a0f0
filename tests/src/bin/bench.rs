//! `cargo xtask bench`: XDP cost per packet by BPF_PROG_TEST_RUN and Maglev build
//! times, written to docs/benchmarks.md and docs/benchmarks.json.
//!
//! Method: every figure is the median of many `repeat = 1` runs, each fed a fresh copy
//! of the frame from user space (the kernel does not restore a packet between repeats,
//! so in-kernel repeats would measure the wrong path after the first rewrite). The
//! floor program is measured the same way. Counter deltas must show that every
//! iteration took the intended path, or the benchmark fails.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use anyhow::{Result, bail, ensure};
use lb_common::{
    Reason,
    maglev::{self, MaglevBackend},
};
use lb_daemon::loader::Capacity;
use serde_json::{Value, json};
use tests::{lab::Lab, pkt};

#[path = "../bench_health.rs"]
mod bench_health;
#[allow(dead_code)]
#[path = "../../../xtask/src/netns.rs"]
mod netns;

const ITER: usize = 20_000;

/// Counts what the process allocates, for the exporter's figures: bytes allocated in
/// all (a realloc counts its growth) and the peak of live bytes.
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grew(n: usize) {
    ALLOCATED.fetch_add(n as u64, Relaxed);
    let live = LIVE.fetch_add(n as u64, Relaxed) + n as u64;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as u64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new >= l.size() {
            grew(new - l.size());
        } else {
            LIVE.fetch_sub((l.size() - new) as u64, Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn pin_to_cpu0() {
    // SAFETY: plain libc call on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// The ns of `prog` on `frames[i % frames.len()]` for each i of `at`, each a separate
/// repeat=1 run, onto `out`.
fn run_ns(
    lab: &mut Lab,
    prog: &str,
    frames: &[Vec<u8>],
    at: std::ops::Range<usize>,
    out: &mut Vec<u64>,
) -> Result<()> {
    for i in at {
        out.push(lab.run_prog(prog, &frames[i % frames.len()])?.ns);
    }
    Ok(())
}

/// Median ns of `prog` over `frames` (cycled), each a separate repeat=1 run.
fn measure(lab: &mut Lab, prog: &str, frames: &[Vec<u8>], iters: usize) -> Result<f64> {
    let mut ns = Vec::with_capacity(iters);
    run_ns(lab, prog, frames, 0..iters, &mut ns)?;
    Ok(median(ns))
}

/// Runs of a path and of the floor alternate in blocks of this many.
const PAIR_BLOCK: usize = 500;

/// Median ns of `prog` over `frames` (as [`measure`]) and of the floor program on
/// `floor_frame`, in alternating blocks: the machine's speed changes from minute to
/// minute here (the floor between 110 and 150 ns), and a ratio is only sound when
/// both sides were measured in the same minutes.
fn measure_paired(
    lab: &mut Lab,
    prog: &str,
    frames: &[Vec<u8>],
    iters: usize,
    floor_frame: &Vec<u8>,
) -> Result<(f64, f64)> {
    let (mut path, mut floor) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for start in (0..iters).step_by(PAIR_BLOCK) {
        let end = (start + PAIR_BLOCK).min(iters);
        let floor_frames = std::slice::from_ref(floor_frame);
        run_ns(lab, "xdp_floor", floor_frames, start..end, &mut floor)?;
        run_ns(lab, prog, frames, start..end, &mut path)?;
    }
    Ok((median(path), median(floor)))
}

/// In-kernel repeat of an idempotent path (only valid when the program's output is
/// again a frame that takes the same path).
fn measure_repeat(lab: &mut Lab, prog: &str, frame: &[u8]) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..15 {
        // The kernel reports the mean duration per repeat.
        v.push((lab.run_repeat(prog, frame, 100_000)?.1 * 1000.0) as u64);
    }
    Ok(median(v) / 1000.0)
}

fn config(fwd: &str) -> String {
    format!(
        r#"
[tunnel]
source_v4 = "10.9.0.1"
source_v6 = "fd00:9::1"
[[service]]
address = "10.0.0.10"
port = 80
proto = "tcp"
[[service.backends]]
address = "10.1.0.1"
forward = "{fwd}"
mac = "02:00:00:00:01:01"
[[service.backends]]
address = "10.1.0.2"
forward = "{fwd}"
mac = "02:00:00:00:01:02"
[[service]]
address = "fd00::10"
port = 80
proto = "tcp"
[[service.backends]]
address = "fd00:1::1"
forward = "{fwd}"
mac = "02:00:00:00:06:01"
"#
    )
}

/// Counters by reason before a measurement.
struct Delta {
    before: BTreeMap<u32, u64>,
}

impl Delta {
    fn new(lab: &Lab) -> Self {
        let before = Reason::ALL
            .iter()
            .map(|r| (*r as u32, lab.reason(*r)))
            .collect();
        Delta { before }
    }
    /// Every iteration ended with `want`, and nothing else moved.
    fn check(&self, lab: &Lab, want: Reason, n: u64) -> Result<()> {
        for r in Reason::ALL {
            let d = lab.reason(*r) - self.before[&(*r as u32)];
            let expect = if *r == want { n } else { 0 };
            ensure!(
                d == expect,
                "counter {r:?} moved by {d}, expected {expect}: not every iteration took the measured path"
            );
        }
        Ok(())
    }
}

/// ns per packet by path name.
type Figures = BTreeMap<&'static str, f64>;

/// What [`xdp`] measured.
struct XdpFigures {
    /// Each path's median, and the floor's (alone, first, and again at the end).
    ns: Figures,
    /// The floor measured beside each path ([`measure_paired`]).
    floor_beside: Figures,
    /// In-kernel repeats of the idempotent paths.
    repeat: Figures,
}

impl XdpFigures {
    /// `path` × the floor measured beside it (the floor alone, for the floor rows).
    fn ratio(&self, path: &str) -> f64 {
        let floor = self.floor_beside.get(path).unwrap_or(&self.ns["floor"]);
        self.ns[path] / floor
    }
}

fn xdp() -> Result<XdpFigures> {
    pin_to_cpu0();
    let cap = Capacity {
        conn_table: 1 << 20,
        ..Capacity::small()
    };
    let mut dr = Lab::with_capacity(cap.clone())?;
    dr.apply_toml(&config("dr"))?;
    let mut tun = Lab::with_capacity(cap)?;
    tun.apply_toml(&config("tun"))?;
    // Hits are established segments (ACK); new flows are SYNs, as on the wire.
    let hit = pkt::tcp_ack("192.168.1.5", 4000, "10.0.0.10", 80);
    let hit6 = pkt::tcp_ack("2001:db8::5", 4000, "fd00::10", 80);
    let pass = pkt::tcp_ack("192.168.1.5", 4000, "10.0.0.99", 80);
    let new_flows: Vec<Vec<u8>> = (0..ITER as u32)
        .map(|i| {
            pkt::tcp(
                &format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255),
                1024 + (i % 60000) as u16,
                "10.0.0.10",
                80,
            )
        })
        .collect();
    // Warm the connection table for the hit paths.
    dr.run(&hit)?;
    tun.run(&hit)?;
    tun.run(&hit6)?;

    let mut r = BTreeMap::new();
    let mut beside = BTreeMap::new();
    let mut rep = BTreeMap::new();
    r.insert(
        "floor",
        measure(&mut dr, "xdp_floor", std::slice::from_ref(&hit), ITER)?,
    );
    // Records a path measured with `measure_paired`.
    let mut put = |path: &'static str, (ns, floor): (f64, f64)| {
        r.insert(path, ns);
        beside.insert(path, floor);
    };

    let d = Delta::new(&dr);
    let m = measure_paired(&mut dr, "xdp_lb", std::slice::from_ref(&hit), ITER, &hit)?;
    put("conntrack_hit", m);
    d.check(&dr, Reason::TxDr, ITER as u64)?;

    let d = Delta::new(&dr);
    let m = measure_paired(&mut dr, "xdp_lb", &new_flows, ITER, &hit)?;
    put("new_flow", m);
    d.check(&dr, Reason::TxDr, ITER as u64)?;
    let idx = dr
        .proj
        .vip_idx(&dr.state.services[0].id())
        .expect("installed");
    let conns = dr.dp.vip_counters(idx)?.new_conns;
    // ITER new flows, plus the one the warm-up hit created.
    ensure!(
        conns == ITER as u64 + 1,
        "new_flow: {conns} new connections, expected {}",
        ITER + 1
    );

    let d = Delta::new(&dr);
    let m = measure_paired(&mut dr, "xdp_lb", std::slice::from_ref(&pass), ITER, &hit)?;
    put("pass", m);
    d.check(&dr, Reason::PassNotVip, ITER as u64)?;

    let d = Delta::new(&tun);
    let m = measure_paired(&mut tun, "xdp_lb", std::slice::from_ref(&hit), ITER, &hit)?;
    put("tun_v4", m);
    d.check(&tun, Reason::TxTun, ITER as u64)?;
    let d = Delta::new(&tun);
    let m = measure_paired(&mut tun, "xdp_lb", std::slice::from_ref(&hit6), ITER, &hit)?;
    put("tun_v6", m);
    d.check(&tun, Reason::TxTun, ITER as u64)?;
    // Floor again at the end: the two must agree, or the machine was noisy.
    let floor2 = measure(&mut dr, "xdp_floor", std::slice::from_ref(&hit), ITER)?;
    r.insert("floor_end", floor2);

    // In-kernel repeats, valid for idempotent paths: floor (MAC swap twice = same path),
    // DR hit (the output is the same flow to the same backend), pass (unchanged).
    rep.insert("floor", measure_repeat(&mut dr, "xdp_floor", &hit)?);
    let d = Delta::new(&dr);
    rep.insert("conntrack_hit", measure_repeat(&mut dr, "xdp_lb", &hit)?);
    d.check(&dr, Reason::TxDr, 15 * 100_000)?;
    let d = Delta::new(&dr);
    rep.insert("pass", measure_repeat(&mut dr, "xdp_lb", &pass)?);
    d.check(&dr, Reason::PassNotVip, 15 * 100_000)?;
    Ok(XdpFigures {
        ns: r,
        floor_beside: beside,
        repeat: rep,
    })
}

/// A config file with `services` services of `per` backends each.
fn big_config(services: u32, per: u32) -> String {
    let mut t =
        String::from("[capacity]\nmax_vips = 1024\nmax_backends = 16384\nconn_table = 65536\n");
    for s in 0..services {
        t += &format!(
            "[[service]]\naddress = \"10.{}.{}.1\"\nport = 80\nproto = \"tcp\"\n",
            s / 256,
            s % 256
        );
        for b in 0..per {
            t += &format!(
                "[[service.backends]]\naddress = \"172.16.{}.{}\"\nmac = \"02:00:00:00:{:02x}:{:02x}\"\n",
                b / 250,
                b % 250 + 1,
                b / 256,
                b % 256
            );
        }
    }
    t
}

/// Control plane: time from a config file to consistent maps, and one backend change.
fn control_plane() -> Result<(f64, f64, usize)> {
    let text = big_config(1000, 10);
    let cfg = lb_daemon::config::Config::parse(&text, "bench")?;
    let mut lab = Lab::with_capacity(cfg.capacity.clone())?;
    let t = Instant::now();
    let cfg = lb_daemon::config::Config::parse(&text, "bench")?;
    let r = lab.apply(cfg.state)?;
    let apply_ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(r.services_added == 1000, "{r:?}");
    // One service of 1000 backends; change one backend's weight.
    let text = big_config(1, 1000);
    let cfg = lb_daemon::config::Config::parse(&text, "bench")?;
    let mut lab = Lab::with_capacity(cfg.capacity.clone())?;
    lab.apply(cfg.state.clone())?;
    let mut times = Vec::new();
    let mut slots = 0;
    for i in 0..21u32 {
        let mut st = lab.state.clone();
        st.services[0].backends[7].weight = if i % 2 == 0 { 3 } else { 1 };
        let t = Instant::now();
        let r = lab.apply(st)?;
        times.push(t.elapsed().as_nanos() as u64);
        ensure!(r.services_changed == 1, "{r:?}");
        slots = r.slots_written;
    }
    Ok((apply_ms, median(times) / 1e6, slots))
}

/// One scrape (sample of the maps + OpenMetrics encoding) with 1,000 services × 10
/// backends, all with traffic and a connection entry: median ms of 21, and the
/// allocations of the median run (bytes in all, peak live bytes above the start),
/// and the exposition's size.
fn exporter() -> Result<(f64, u64, u64, usize)> {
    use lb_daemon::metrics::{self, ConnReader, Metrics, NoChecks};
    let text = big_config(1000, 10);
    let cfg = lb_daemon::config::Config::parse(&text, "bench")?;
    let mut lab = Lab::with_capacity(cfg.capacity.clone())?;
    lab.apply(cfg.state)?;
    for s in 0..1000u32 {
        let vip = format!("10.{}.{}.1", s / 256, s % 256);
        let f = pkt::tcp("192.168.1.5", 4000, &vip, 80);
        ensure!(
            lab.run(&f)?.action == tests::lab::XDP_TX,
            "no backend for {vip}"
        );
    }
    let m = Metrics::new("bench", Arc::new(NoChecks));
    let reader = ConnReader::open(&lab.dp)?;
    let (gens, timeout) = metrics::conn_context(&lab.dp, &lab.proj, &lab.state)?;
    m.set_conns(metrics::take_conn_snapshot(&reader, &gens, timeout)?);
    let scrape = |lab: &Lab| -> Result<String> {
        let s = metrics::sample(&lab.dp, &lab.proj, &lab.state, 1, &m)?;
        Ok(metrics::encode(Arc::new(s), &m, true))
    };
    let len = scrape(&lab)?.len();
    let mut runs = Vec::new();
    for _ in 0..21 {
        let (a0, l0) = (ALLOCATED.load(Relaxed), LIVE.load(Relaxed));
        PEAK.store(l0, Relaxed);
        let t = Instant::now();
        let out = scrape(&lab)?;
        let ns = t.elapsed().as_nanos() as u64;
        let (a1, p1) = (ALLOCATED.load(Relaxed), PEAK.load(Relaxed));
        // Only the snapshot's age may change (its digits).
        ensure!(out.len().abs_diff(len) < 64, "the exposition changed");
        drop(out);
        runs.push((ns, a1 - a0, p1 - l0));
    }
    runs.sort_unstable();
    let (ns, alloc, peak) = runs[runs.len() / 2];
    Ok((ns as f64 / 1e6, alloc, peak, len))
}

fn maglev_ms(n: u32) -> f64 {
    let backends: Vec<MaglevBackend> = (1..=n).map(|id| MaglevBackend { id, weight: 1 }).collect();
    let mut table = Vec::new();
    let mut v = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        maglev::build_into(&backends, lb_common::DEFAULT_RING_SIZE, &mut table);
        v.push(t.elapsed().as_nanos() as u64);
    }
    assert!(table.iter().all(|&s| s != 0));
    median(v) / 1e6
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: sysconf has no preconditions. (Not available_parallelism: we pin to one CPU.)
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn replace_section(md: &str, tag: &str, body: &str) -> String {
    let begin = format!("<!-- {tag}:begin -->");
    let end = format!("<!-- {tag}:end -->");
    let block = format!("{begin}\n{body}{end}");
    match (md.find(&begin), md.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &md[..b], block, &md[e + end.len()..]),
        _ => format!("{md}\n{block}\n"),
    }
}

fn main() -> Result<()> {
    // The health bench's child processes; first of all, while this is the only thread.
    bench_health::enter_netns_from_env()?;
    if std::env::var_os(bench_health::LISTENERS_ENV).is_some() {
        return bench_health::listeners_main();
    }
    if std::env::var_os(bench_health::CHECKER_ENV).is_some() {
        return bench_health::checker_main();
    }
    // `LB_BENCH_ONLY=xdp`: only the XDP figures, printed, nothing written.
    if std::env::var("LB_BENCH_ONLY").as_deref() == Ok("xdp") {
        let f = xdp()?;
        for (k, v) in &f.ns {
            println!("{k:14} {v:7.1} ns  {:.2}x", f.ratio(k));
        }
        println!("floor beside each path: {:?}", f.floor_beside);
        println!("in-kernel repeat: {:?}", f.repeat);
        return Ok(());
    }
    // `LB_BENCH_ONLY=control_plane`: only the control-plane figures, printed, nothing
    // written (for profiling the apply path without the rest of the bench).
    if std::env::var("LB_BENCH_ONLY").as_deref() == Ok("control_plane") {
        let (apply_ms, change_ms, change_slots) = control_plane()?;
        println!(
            "apply 1000x10: {apply_ms:.1} ms; one backend change of 1000: {change_ms:.2} ms ({change_slots} slots)"
        );
        return Ok(());
    }
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    // First, before anything pins this process to one CPU. `LB_BENCH_HEALTH_ONLY`: only this.
    let health = bench_health::run()?;
    bench_health::write(&docs, &health, &machine(), replace_section)?;
    if std::env::var_os("LB_BENCH_HEALTH_ONLY").is_some() {
        return Ok(());
    }
    let (scrape_ms, scrape_alloc, scrape_peak, expo_len) = exporter()?;
    let (apply_ms, change_ms, change_slots) = control_plane()?;
    let xf = xdp()?;
    let (x, rep) = (&xf.ns, &xf.repeat);
    let m100 = maglev_ms(100);
    let m1000 = maglev_ms(1000);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let mach = machine();

    let json_path = docs.join("benchmarks.json");
    let mut j: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}));
    j["xdp_ns_per_packet"] = json!({
        "floor": x["floor"], "conntrack_hit": x["conntrack_hit"], "new_flow": x["new_flow"],
        "pass": x["pass"], "tun_v4": x["tun_v4"], "tun_v6": x["tun_v6"],
    });
    j["maglev_build_ms"] = json!({ "100": m100, "1000": m1000 });
    j["control_plane"] =
        json!({ "apply_1000x10_ms": apply_ms, "backend_change_1000_ms": change_ms });
    j["exporter"] = json!({
        "scrape_1000x10_ms": scrape_ms,
        "scrape_1000x10_alloc_bytes": scrape_alloc,
        "scrape_1000x10_peak_bytes": scrape_peak,
        "exposition_bytes": expo_len,
    });
    j["xdp_meta"] = json!({ "machine": mach, "date": date, "method": "median of 20000 BPF_PROG_TEST_RUN repeat=1 runs, fresh frame each, alternating in blocks of 500 with as many runs of the floor; ratios to the floor beside each path", "floor_beside_ns": xf.floor_beside, "in_kernel_repeat_ns": rep });
    std::fs::write(&json_path, serde_json::to_string_pretty(&j)? + "\n")?;

    let row = |k: &str, what: &str, target: &str| {
        let beside = xf
            .floor_beside
            .get(k)
            .map_or_else(String::new, |f| format!("{f:.0}"));
        format!(
            "| {what} | {:.0} | {beside} | {:.2}× | {target} |\n",
            x[k],
            xf.ratio(k)
        )
    };
    let mut body = String::new();
    body +=
        &format!("## XDP data plane (`cargo xtask bench`)\n\nMachine: {mach}. Date: {date}.\n\n");
    body += "Method: each figure is the median over 20,000 `BPF_PROG_TEST_RUN` calls with `repeat = 1`, every call fed a fresh copy of the frame (the kernel does not restore a packet between in-kernel repeats, so rewriting and encapsulating paths are only measured truly this way). The kernel's own per-run duration is used; the floor program (`xdp_floor`: swap MACs, XDP_TX) is measured the same way. Counter deltas are checked: every iteration took the intended path (e.g. 20,000 × `tx dr` and 20,000 new connections for new_flow), or the bench fails.\n\n";
    body += "Each path's runs alternate with the floor's in blocks of 500 (20,000 of each), and its ratio is to the floor measured beside it: the machine's speed drifts from minute to minute (the floor alone between 110 and 150 ns), and a ratio is only sound when both were measured in the same minutes. The floor row is the floor measured alone, first.\n\n";
    body +=
        "| path | ns/packet | floor beside it, ns | × floor | target |\n|---|---|---|---|---|\n";
    body += &row("floor", "floor (MAC swap + XDP_TX)", "");
    body += &row("conntrack_hit", "connection-table hit, DR", "≤ 2.5×");
    body += &row(
        "tun_v4",
        "connection-table hit, TUN IPIP encap (v4)",
        "≤ 2.5×",
    );
    body += &row(
        "tun_v6",
        "connection-table hit, TUN IP6IP6 encap (v6)",
        "≤ 2.5×",
    );
    body += &row("new_flow", "new flow (Maglev + conn insert), DR", "≤ 5×");
    body += &row("pass", "non-VIP pass", "≤ 2×");
    body += &format!(
        "\nFloor re-measured at the end: {:.0} ns.\n\n",
        x["floor_end"]
    );
    body += &format!(
        "In-kernel repeat (100,000 × 15, idempotent paths only): floor {:.1} ns, DR hit {:.1} ns ({:.2}×), pass {:.1} ns ({:.2}×).\n\n",
        rep["floor"],
        rep["conntrack_hit"],
        rep["conntrack_hit"] / rep["floor"],
        rep["pass"],
        rep["pass"] / rep["floor"]
    );
    body += &format!(
        "## Maglev table build (size 65537, median of 31)\n\n| backends | ms | target |\n|---|---|---|\n| 100 | {m100:.3} | |\n| 1000 | {m1000:.3} | ≤ 1.5 |\n\n"
    );
    body += &format!(
        "## Control plane\n\n| what | ms | target |\n|---|---|---|\n| 1,000 services × 10 backends from a config file to consistent maps (parse + validate + Maglev tables in parallel + map writes) | {apply_ms:.1} | < 1000 |\n| one backend's weight changed on a service of 1,000 backends (median of 21; {change_slots} slots rewritten, only those that changed) | {change_ms:.2} | < 20 |\n\n"
    );
    body += &format!(
        "## Prometheus exporter\n\nOne scrape of 1,000 services × 10 backends on {} CPUs: every per-CPU counter read and summed, plus the OpenMetrics encoding ({:.1} MB of exposition); median of 21. Allocations counted by a global allocator in the bench binary.\n\n| what | value | target |\n|---|---|---|\n| scrape time | {scrape_ms:.1} ms | < 50 ms |\n| bytes allocated | {:.1} MB | |\n| peak live bytes | {:.1} MB | |\n\n",
        aya::util::online_cpus().map(|v| v.len()).unwrap_or(0),
        expo_len as f64 / 1e6,
        scrape_alloc as f64 / 1e6,
        scrape_peak as f64 / 1e6,
    );
    let md_path = docs.join("benchmarks.md");
    let md = std::fs::read_to_string(&md_path).unwrap_or_else(|_| "# Benchmarks\n\nWritten by `cargo xtask bench`; do not edit the generated sections by hand.\n".into());
    std::fs::write(&md_path, replace_section(&md, "xdp", &body))?;
    print!("{body}");
    if x["conntrack_hit"] <= 0.0 {
        bail!("no measurement");
    }
    Ok(())
}
