//! The health checker under load (included by bench.rs): 10,000 backends with TCP
//! checks every second, on the daemon's own runtime shape (tokio, 2 worker threads),
//! for `SECONDS` after a warm-up; in the default tcp mode (`half-open`: a raw SYN, the
//! SYN-ACK reset by the kernel) and with `mode = "connect"`; against listeners behind
//! a veth pair (the figure reported) and, for comparison, on loopback.
//!
//! Each run is two processes (this binary again): the checker
//! (`LB_BENCH_HEALTH_CHECKER`) and the listeners (`LB_BENCH_HEALTH_LISTENERS`,
//! accept-and-close), each a fresh process so that getrusage(RUSAGE_SELF) is the
//! checker's alone and the half-open engine (process-wide) belongs to its namespace.
//!
//! - veth: two namespaces made for the run, `lbhb-<pid>-c` (the checker) and
//!   `lbhb-<pid>-l` (the listeners: 4 ports on 0.0.0.0, reached at 254 addresses of
//!   10.201.1.0/24, local to that namespace by one `local` route, so 1,016 different
//!   targets), joined by a veth pair with a native XDP_PASS program on both ends (veth
//!   receives through NAPI only with XDP or GRO) and threaded NAPI. The listeners'
//!   kernel work (the SYN, the SYN-ACK, the RST it gets) then runs in the peer's NAPI
//!   thread, as it would on a remote machine, and our side's receive work (the SYN-ACK
//!   in, its copy to the raw socket, our kernel's RST out) in the checker side's NAPI
//!   thread. The checker's CPU is its process (user + system) plus that thread
//!   (utime + stime from /proc/<pid>/stat over the same window); the peer's thread is
//!   reported apart and not counted.
//! - loopback: the listeners on 4 addresses × 2 ports of 127.0.0.x in the host's
//!   namespace. There the listeners' kernel work runs in the sending thread's softirq
//!   and is charged to the checker: the figure is the process's alone.
//!
//! The spread is |actual − scheduled| start time of every check in the window. The
//! listener process reports how many connections it accepted: none, for half-open
//! checks.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use lb_common::state::{
    CheckParams, CheckType, Dur, Proto, RealServer, Service, ServiceHealth, State, TcpCheck,
    TcpMode,
};
use lb_daemon::health::Health;
use serde_json::{Value, json};

use super::netns;

pub const BACKENDS: usize = 10_000;
pub const SECONDS: u64 = 10;
const WARMUP: Duration = Duration::from_secs(3);
/// Loopback: the listeners' addresses, and ports per address.
const LOOPBACK_ADDRS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
const LOOPBACK_PORTS: usize = 2;
/// veth: the link's subnet (the checker .1, the listeners .2), the targets' /24 (local
/// to the listeners' namespace) and the listening ports.
const LINK_CHECKER: &str = "10.201.0.1";
const LINK_LISTENERS: &str = "10.201.0.2";
const TARGET_NET: &str = "10.201.1";
const VETH_PORTS: usize = 4;

/// When set, this process is the listeners' (see the module doc): "loopback" or "any".
pub const LISTENERS_ENV: &str = "LB_BENCH_HEALTH_LISTENERS";
/// When set, this process is a checker in this tcp mode; the targets in TARGETS_ENV.
pub const CHECKER_ENV: &str = "LB_BENCH_HEALTH_CHECKER";
const TARGETS_ENV: &str = "LB_BENCH_HEALTH_TARGETS";
/// The network namespace a child process enters first.
const NETNS_ENV: &str = "LB_BENCH_HEALTH_NETNS";
/// The checker's device, where it attaches the data plane (`xdp_lb`) as the daemon does.
const XDP_DEV_ENV: &str = "LB_BENCH_HEALTH_XDP_DEV";
/// Leftovers of earlier runs: `lbhb-<pid>-…`.
const TAG: &str = "lbhb-";

pub struct HealthBench {
    /// The reported runs: listeners behind a veth pair.
    pub veth: Runs,
    /// The same on loopback.
    pub loopback: Runs,
}

pub struct Runs {
    /// The default tcp mode (half-open).
    pub default_mode: ModeRun,
    /// `mode = "connect"`.
    pub connect: ModeRun,
}

/// One run of the checker in one tcp mode.
pub struct ModeRun {
    /// What the checks did: "half-open", "connect", or "connect (half-open unavailable)".
    pub mode: String,
    /// What the checker costs, % of one core: the process, plus (veth) the checker
    /// side's NAPI thread.
    pub cpu_pct: f64,
    /// The process (user + system), and its user and system parts.
    pub process_pct: f64,
    pub user_pct: f64,
    pub sys_pct: f64,
    /// veth: the NAPI threads of the checker's side (counted) and of the listeners'
    /// (not counted).
    pub napi_host_pct: Option<f64>,
    pub napi_peer_pct: Option<f64>,
    /// veth: the run time of the checker's `xdp_lb` in the window (the kernel's BPF
    /// run-time statistics), % of one core, and how many packets it ran for.
    pub xdp_pct: Option<f64>,
    pub xdp_runs: Option<u64>,
    /// p50 / p99 / max of |actual − scheduled| check start, ms.
    pub spread_p50_ms: f64,
    pub spread_p99_ms: f64,
    pub spread_max_ms: f64,
    /// Checks started in the window, and per second.
    pub checks: usize,
    pub checks_per_sec: f64,
    /// Failed checks over the whole run (should be 0).
    pub failures: u64,
    /// Connections the listeners accepted over the whole run.
    pub accepted: u64,
    /// Answers to half-open probes over the whole run: taken by the data plane (XDP),
    /// and read from the raw sockets.
    pub xdp_answers: u64,
    pub socket_answers: u64,
    /// The same work alone in one thread, % of one core for 10,000 a second (connect:
    /// blocking connect + RST close, no runtime; half-open: the engine's probes one
    /// after the other on a current-thread runtime). None without raw sockets.
    pub floor_pct: Option<f64>,
}

/// First thing in `main`, while the process has one thread: enters the namespace a
/// parent asked for (all threads made later are in it too).
pub fn enter_netns_from_env() -> Result<()> {
    let Some(ns) = std::env::var_os(NETNS_ENV) else {
        return Ok(());
    };
    let f = File::open(Path::new("/run/netns").join(&ns))
        .with_context(|| format!("opening namespace {ns:?}"))?;
    // SAFETY: setns(2) on an open namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering namespace {ns:?}"));
    }
    Ok(())
}

/// The listener process: accept and close until standard input closes.
pub fn listeners_main() -> Result<()> {
    let loopback = std::env::var(LISTENERS_ENV)? == "loopback";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut ports = Vec::new();
        let mut listeners = Vec::new();
        if loopback {
            // Ports chosen by the kernel on the first address, then taken on the others
            // too (another run may be going on).
            let mut tries = 0;
            while ports.len() < LOOPBACK_PORTS {
                tries += 1;
                ensure!(tries < 100, "no port free on every address");
                let first = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let p = first.local_addr()?.port();
                let mut group = vec![first];
                for a in &LOOPBACK_ADDRS[1..] {
                    match tokio::net::TcpListener::bind((a.parse::<IpAddr>()?, p)).await {
                        Ok(l) => group.push(l),
                        Err(_) => break,
                    }
                }
                if group.len() == LOOPBACK_ADDRS.len() {
                    ports.push(p);
                    listeners.extend(group);
                }
            }
        } else {
            // A namespace of our own: any port, on every (local) address.
            for _ in 0..VETH_PORTS {
                let l = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
                ports.push(l.local_addr()?.port());
                listeners.push(l);
            }
        }
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for l in listeners {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = l.accept().await {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = s.set_zero_linger();
                        drop(s);
                    }
                }
            });
        }
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        println!("ready {}", list.join(" "));
        std::io::stdout().flush()?;
        // Until the parent closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await?;
        println!(
            "accepted {}",
            accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
        std::io::stdout().flush()?;
        anyhow::Ok(())
    })
}

fn rusage_of(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn state(targets: &[SocketAddr], mode: TcpMode) -> State {
    let backends = (0..BACKENDS)
        .map(|i| {
            let t = targets[i % targets.len()];
            RealServer {
                address: format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
                weight: 1,
                forward: Default::default(),
                mac: None,
                gue_port: lb_common::DEFAULT_GUE_PORT,
                health: Some(Box::new(CheckParams {
                    address: Some(t.ip()),
                    port: Some(t.port()),
                    ..Default::default()
                })),
            }
        })
        .collect();
    State {
        tunnel: Default::default(),
        services: vec![Service {
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            scheduler: Default::default(),
            persistence: 0,
            backends,
            health: Some(Box::new(ServiceHealth {
                kind: Some(CheckType::Tcp),
                interval: Some(Dur::secs(1)),
                tcp: Some(TcpCheck { mode: Some(mode) }),
                ..Default::default()
            })),
        }],
    }
}

/// CPU seconds per blocking connect + RST close to `targets`, from one thread.
fn floor_per_connect(targets: Vec<SocketAddr>) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        const N: usize = 20_000;
        let (u0, s0) = rusage_of(libc::RUSAGE_THREAD);
        for i in 0..N {
            // The listener may reset it before connect(2) returns: connected all the same.
            let s = match std::net::TcpStream::connect(targets[i % targets.len()]) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e.into()),
            };
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: SO_LINGER with a linger struct on an open socket.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const l).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
        let (u1, s1) = rusage_of(libc::RUSAGE_THREAD);
        Ok((u1 - u0 + s1 - s0) / N as f64)
    })
    .join()
    .map_err(|_| anyhow!("floor thread panicked"))?
}

/// CPU seconds per half-open probe of `targets`, one after the other, through an
/// engine of its own on a current-thread runtime in one thread.
fn floor_per_half_open_probe(targets: Vec<SocketAddr>) -> Result<Option<f64>> {
    use lb_daemon::health::checks::halfopen::{Answer, HalfOpen};
    std::thread::spawn(move || -> Result<Option<f64>> {
        const N: usize = 20_000;
        let Ok(engine) = HalfOpen::new() else {
            return Ok(None);
        };
        let engine = std::sync::Arc::new(engine);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (u0, s0) = rusage_of(libc::RUSAGE_THREAD);
            for i in 0..N {
                let t = targets[i % targets.len()];
                let a = engine.probe(t, Duration::from_secs(1)).await?;
                ensure!(a == Answer::Open, "{t}: {a:?}");
            }
            let (u1, s1) = rusage_of(libc::RUSAGE_THREAD);
            Ok(Some((u1 - u0 + s1 - s0) / N as f64))
        })
    })
    .join()
    .map_err(|_| anyhow!("half-open floor thread panicked"))?
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

fn parse_mode(s: &str) -> Result<TcpMode> {
    match s {
        "half-open" => Ok(TcpMode::HalfOpen),
        "connect" => Ok(TcpMode::Connect),
        _ => bail!("unknown tcp mode {s:?}"),
    }
}

/// The checker process: checks the targets of TARGETS_ENV in the mode of CHECKER_ENV,
/// printing `window start` and `window end` around the measured window (the parent
/// samples the NAPI threads then), then `result <json>`.
pub fn checker_main() -> Result<()> {
    let mode = parse_mode(&std::env::var(CHECKER_ENV)?)?;
    let targets: Vec<SocketAddr> = std::env::var(TARGETS_ENV)?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("LB_BENCH_HEALTH_TARGETS")?;
    ensure!(!targets.is_empty(), "no targets");
    let st = state(&targets, mode);
    st.validate(1, BACKENDS as u32 + 1)?;
    let rt = if std::env::var_os("LB_BENCH_HEALTH_CURRENT").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    let what = match mode {
        TcpMode::HalfOpen if lb_daemon::health::checks::halfopen::shared().is_none() => {
            "connect (half-open unavailable)".to_string()
        }
        m => m.to_string(),
    };
    // As the daemon: the data plane on the interface the answers come in on, handed
    // to the half-open engine before the checks start.
    let mut dp = match std::env::var(XDP_DEV_ENV) {
        Ok(dev) => {
            let mut dp =
                lb_daemon::bpf_maps::DataPlane::load(&lb_daemon::loader::Capacity::small())?;
            dp.attach("xdp_lb", &dev)?;
            lb_daemon::health::checks::halfopen::use_data_plane(&mut dp);
            // The parent makes its NAPI threaded now that it exists (veth has NAPI
            // only with XDP), and says when.
            writeln!(std::io::stdout(), "attached")?;
            std::io::stdout().flush()?;
            let mut go = String::new();
            std::io::stdin().read_line(&mut go)?;
            ensure!(go.trim() == "go", "checker: expected go, got {go:?}");
            Some(dp)
        }
        Err(_) => None,
    };
    // The kernel times every run of every BPF program while this fd is open: what
    // `xdp_lb` itself costs on the NAPI thread, apart from veth's receive path.
    let _bpf_stats = match dp {
        Some(_) => Some(aya::sys::enable_stats(aya::sys::Stats::RunTime)?),
        None => None,
    };
    let mut xdp_run = || -> Result<Option<(Duration, u64)>> {
        let Some(dp) = dp.as_mut() else {
            return Ok(None);
        };
        let info = dp.program("xdp_lb")?.info()?;
        Ok(Some((info.run_time(), info.run_count())))
    };
    let health = Health::new();
    health.configure(&st);
    let mut out = std::io::stdout();
    let mut r = rt.block_on(async {
        health.start_checks();
        tokio::time::sleep(WARMUP).await;
        health.record_spread(true);
        let x0 = xdp_run()?;
        let (u0, s0) = rusage_of(libc::RUSAGE_SELF);
        let t0 = Instant::now();
        writeln!(out, "window start")?;
        out.flush()?;
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let (u1, s1) = rusage_of(libc::RUSAGE_SELF);
        let wall = t0.elapsed().as_secs_f64();
        let x1 = xdp_run()?;
        let (xdp_pct, xdp_runs) = match (x0, x1) {
            (Some((t0, n0)), Some((t1, n1))) => {
                (Some((t1 - t0).as_secs_f64() / wall * 100.0), Some(n1 - n0))
            }
            _ => (None, None),
        };
        writeln!(out, "window end {wall}")?;
        out.flush()?;
        let mut spread = health.take_spread();
        health.record_spread(false);
        health.stop_checks();
        spread.sort_unstable_by(f32::total_cmp);
        let view = health.view();
        let failures: u64 = view.services[0].backends.iter().map(|b| b.failures).sum();
        let up = view.services[0]
            .backends
            .iter()
            .filter(|b| b.state == lb_daemon::metrics::HealthState::Up)
            .count();
        ensure!(
            up == BACKENDS,
            "{mode}: only {up} of {BACKENDS} backends UP; e.g. {:?}",
            view.services[0]
                .backends
                .iter()
                .find(|b| b.state != lb_daemon::metrics::HealthState::Up)
        );
        let engine = lb_daemon::health::checks::halfopen::shared();
        Ok(json!({
            "mode": what,
            "xdp_answers": engine.map_or(0, |e| e.xdp_received()),
            "socket_answers": engine.map_or(0, |e| e.received()),
            "process_pct": (u1 - u0 + s1 - s0) / wall * 100.0,
            "xdp_pct": xdp_pct,
            "xdp_runs": xdp_runs,
            "user_pct": (u1 - u0) / wall * 100.0,
            "sys_pct": (s1 - s0) / wall * 100.0,
            "spread_p50_ms": percentile(&spread, 0.50),
            "spread_p99_ms": percentile(&spread, 0.99),
            "spread_max_ms": spread.last().map_or(0.0, |v| f64::from(*v)),
            "checks": spread.len(),
            "checks_per_sec": spread.len() as f64 / wall,
            "failures": failures,
        }))
    })?;
    drop(rt);
    let per_op = match mode {
        TcpMode::Connect => Some(floor_per_connect(targets)?),
        TcpMode::HalfOpen => floor_per_half_open_probe(targets)?,
    };
    r["floor_pct"] = json!(per_op.map(|f| f * BACKENDS as f64 * 100.0));
    writeln!(out, "result {r}")?;
    out.flush()?;
    Ok(())
}

/// The veth topology (see the module doc); removed when dropped, and by the next run
/// if this process dies first.
struct Net {
    prefix: String,
    checker_ns: String,
    listeners_ns: String,
    /// The checker's side and the listeners' side of the veth pair.
    host_dev: String,
    peer_dev: String,
    /// The attached XDP_PASS programs (detached when dropped).
    xdp: Option<aya::Ebpf>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.xdp = None;
        if let Err(e) = netns::remove_leftovers(&self.prefix) {
            eprintln!("cleaning up {}*: {e:#}", self.prefix);
        }
    }
}

fn run_cmd(args: &[&str]) -> Result<String> {
    netns::cmd(Command::new(args[0]).args(&args[1..]))
}

impl Net {
    fn build() -> Result<Net> {
        netns::remove_stale(TAG)?;
        let pid = std::process::id();
        let prefix = format!("{TAG}{pid}-");
        // Short device names: the NAPI threads are `napi/<dev>-<id>`, cut to 15 bytes.
        let id = pid % 100_000;
        let mut net = Net {
            checker_ns: format!("{prefix}c"),
            listeners_ns: format!("{prefix}l"),
            host_dev: format!("hb{id}c"),
            peer_dev: format!("hb{id}l"),
            prefix,
            xdp: None,
        };
        net.setup()?;
        Ok(net)
    }

    fn setup(&mut self) -> Result<()> {
        let (c, l) = (self.checker_ns.clone(), self.listeners_ns.clone());
        let (hd, pd) = (self.host_dev.clone(), self.peer_dev.clone());
        run_cmd(&["ip", "netns", "add", &c])?;
        run_cmd(&["ip", "netns", "add", &l])?;
        run_cmd(&[
            "ip", "link", "add", &hd, "netns", &c, "type", "veth", "peer", "name", &pd, "netns", &l,
        ])?;
        let checker_addr = format!("{LINK_CHECKER}/24");
        let listeners_addr = format!("{LINK_LISTENERS}/24");
        let targets = format!("{TARGET_NET}.0/24");
        for (ns, cmds) in [
            (
                &c,
                vec![
                    vec!["link", "set", "lo", "up"],
                    vec!["addr", "add", &checker_addr, "dev", &hd],
                    vec!["link", "set", &hd, "up"],
                    vec!["route", "add", &targets, "via", LINK_LISTENERS],
                ],
            ),
            (
                &l,
                vec![
                    vec!["link", "set", "lo", "up"],
                    vec!["addr", "add", &listeners_addr, "dev", &pd],
                    vec!["link", "set", &pd, "up"],
                    // The whole /24 is this namespace's: one route instead of 254 addresses.
                    vec!["route", "add", "local", &targets, "dev", "lo"],
                ],
            ),
        ] {
            for args in cmds {
                let mut full = vec!["ip", "-n", ns.as_str()];
                full.extend(args);
                run_cmd(&full)?;
            }
        }
        // veth receives through NAPI only with an XDP program (or GRO): XDP_PASS on the
        // listeners' side; on ours the checker attaches the data plane (`xdp_lb`), as
        // the daemon does, and its NAPI thread exists while it runs.
        let mut loader = aya::EbpfLoader::new();
        for m in netns::UNUSED_MAPS {
            loader.map_max_entries(m, 16);
        }
        let mut ebpf = loader
            .load(lb_daemon::EBPF_OBJECT)
            .context("loading the XDP object")?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut("xdp_pass")
            .ok_or_else(|| anyhow!("no xdp_pass in the XDP object"))?
            .try_into()?;
        prog.load().context("verifying xdp_pass")?;
        let name = std::ffi::CString::new(pd.as_str())?;
        netns::in_netns(&l, || {
            Ok(prog.attach(name.as_c_str(), aya::programs::XdpMode::Driver)?)
        })
        .with_context(|| format!("attaching xdp_pass to {pd} in {l}"))?;
        self.xdp = Some(ebpf);
        set_threaded(&l, &pd)?;
        ensure!(
            !napi_threads(&pd).is_empty(),
            "no threaded NAPI kthread for {pd}"
        );
        Ok(())
    }

    fn targets(&self, ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .flat_map(|p| (1..=254).map(move |h| format!("{TARGET_NET}.{h}:{p}").parse().unwrap()))
            .collect()
    }
}

/// Runs `dev`'s NAPI in kthreads of its own (it must have NAPI: with veth, XDP).
fn set_threaded(ns: &str, dev: &str) -> Result<()> {
    // `ip netns exec` mounts that namespace's sysfs.
    run_cmd(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{dev}/threaded"),
    ])?;
    Ok(())
}

/// The pids of `dev`'s NAPI kthreads (`napi/<dev>-<id>`, the name cut to 15 bytes).
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let prefix = &prefix[..prefix.len().min(15)];
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

/// utime + stime of `pids`, in seconds.
fn cpu_of(pids: &[u32]) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("/proc/{pid}/stat"))?;
        // After the command (in parentheses, may hold anything): field 3 onwards.
        let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15.
        ticks += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    }
    Ok(ticks as f64 / hz)
}

fn child(env: &[(&str, String)]) -> Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut c = Command::new(std::env::current_exe()?);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting a bench process")?;
    let out = BufReader::new(child.stdout.take().context("child stdout")?);
    Ok((child, out))
}

fn read_line(out: &mut BufReader<std::process::ChildStdout>, what: &str) -> Result<String> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure!(!line.is_empty(), "{what}: the process ended early");
    Ok(line.trim().to_string())
}

/// Both topologies, both modes; the reported one (veth, half-open) first.
pub fn run() -> Result<HealthBench> {
    let net = Net::build()?;
    let veth = Runs {
        default_mode: run_mode(Some(&net), TcpMode::HalfOpen)?,
        connect: run_mode(Some(&net), TcpMode::Connect)?,
    };
    drop(net);
    let loopback = Runs {
        default_mode: run_mode(None, TcpMode::HalfOpen)?,
        connect: run_mode(None, TcpMode::Connect)?,
    };
    Ok(HealthBench { veth, loopback })
}

/// One run in `mode`, over `net` or on loopback.
fn run_mode(net: Option<&Net>, mode: TcpMode) -> Result<ModeRun> {
    let mut lenv = vec![(
        LISTENERS_ENV,
        if net.is_some() { "any" } else { "loopback" }.to_string(),
    )];
    if let Some(n) = net {
        lenv.push((NETNS_ENV, n.listeners_ns.clone()));
    }
    let (mut listeners, mut lout) = child(&lenv)?;
    let line = read_line(&mut lout, "listener process")?;
    let ports: Vec<u16> = match line.strip_prefix("ready ") {
        Some(rest) => rest.split(' ').map(str::parse).collect::<Result<_, _>>()?,
        None => bail!("listener process: {line:?}"),
    };
    let targets: Vec<SocketAddr> = match net {
        Some(n) => n.targets(&ports),
        None => LOOPBACK_ADDRS
            .iter()
            .flat_map(|a| {
                ports
                    .iter()
                    .map(move |p| format!("{a}:{p}").parse().unwrap())
            })
            .collect(),
    };
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let mut cenv = vec![
        (CHECKER_ENV, mode.to_string()),
        (TARGETS_ENV, list.join(",")),
    ];
    if let Some(n) = net {
        cenv.push((NETNS_ENV, n.checker_ns.clone()));
        cenv.push((XDP_DEV_ENV, n.host_dev.clone()));
    }
    let (mut checker, mut cout) = child(&cenv)?;
    let result = (|| -> Result<(Value, f64, f64)> {
        if let Some(n) = net {
            let l = read_line(&mut cout, "checker")?;
            ensure!(l == "attached", "checker: {l:?}");
            set_threaded(&n.checker_ns, &n.host_dev)?;
            let mut stdin = checker.stdin.take().context("checker stdin")?;
            writeln!(stdin, "go")?;
        }
        let l = read_line(&mut cout, "checker")?;
        ensure!(l == "window start", "checker: {l:?}");
        // Ours exists once the checker attached its XDP program.
        let napi = net.map(|n| (napi_threads(&n.host_dev), napi_threads(&n.peer_dev)));
        if let Some((h, _)) = &napi {
            ensure!(
                !h.is_empty(),
                "no threaded NAPI kthread on the checker's side"
            );
        }
        let sample = || -> Result<(f64, f64)> {
            match &napi {
                Some((h, p)) => Ok((cpu_of(h)?, cpu_of(p)?)),
                None => Ok((0.0, 0.0)),
            }
        };
        let (h0, p0) = sample()?;
        let l = read_line(&mut cout, "checker")?;
        let (h1, p1) = sample()?;
        let wall: f64 = l
            .strip_prefix("window end ")
            .with_context(|| format!("checker: {l:?}"))?
            .parse()?;
        let l = read_line(&mut cout, "checker")?;
        let r: Value = serde_json::from_str(
            l.strip_prefix("result ")
                .with_context(|| format!("checker: {l:?}"))?,
        )?;
        Ok((r, (h1 - h0) / wall * 100.0, (p1 - p0) / wall * 100.0))
    })();
    if result.is_err() {
        let _ = checker.kill();
    }
    let _ = checker.wait();
    drop(listeners.stdin.take());
    let accepted = read_line(&mut lout, "listener process");
    let _ = listeners.wait();
    let (r, napi_host, napi_peer) = result?;
    // Else the listeners' kernel work ran in the sender's softirq after all (veth
    // without NAPI): the split this bench is about would be wrong.
    ensure!(
        net.is_none() || (napi_host > 0.0 && napi_peer > 0.0),
        "the veth NAPI threads did no work (host {napi_host:.1}%, peer {napi_peer:.1}%)"
    );
    // Veth, half-open: the checker's data plane takes the answers (else this bench
    // measures the kernel path it replaced).
    if net.is_some() && r["mode"] == "half-open" {
        let (xdp, checks) = (r["xdp_answers"].as_u64(), r["checks"].as_u64());
        ensure!(
            xdp >= checks,
            "the data plane took {xdp:?} answers for {checks:?} checks"
        );
        // The answers in the window ran `xdp_lb`, and the kernel timed the runs (the
        // window's last checks are answered after it: 1% slack).
        let (runs, pct) = (r["xdp_runs"].as_u64(), r["xdp_pct"].as_f64());
        ensure!(
            runs.zip(checks).is_some_and(|(r, c)| r * 100 >= c * 99)
                && pct.is_some_and(|p| p > 0.0),
            "xdp_lb's run-time statistics: {runs:?} runs, {pct:?}% for {checks:?} checks"
        );
    }
    let accepted = accepted?;
    let accepted: u64 = match accepted.strip_prefix("accepted ") {
        Some(n) => n.parse()?,
        None => bail!("listener process at exit: {accepted:?}"),
    };
    let f = |k: &str| {
        r[k].as_f64()
            .with_context(|| format!("checker result: no {k}"))
    };
    let process_pct = f("process_pct")?;
    let napi_host_pct = net.map(|_| napi_host);
    Ok(ModeRun {
        mode: r["mode"].as_str().unwrap_or_default().to_string(),
        cpu_pct: process_pct + napi_host_pct.unwrap_or(0.0),
        process_pct,
        user_pct: f("user_pct")?,
        sys_pct: f("sys_pct")?,
        napi_host_pct,
        napi_peer_pct: net.map(|_| napi_peer),
        xdp_pct: r["xdp_pct"].as_f64(),
        xdp_runs: r["xdp_runs"].as_u64(),
        spread_p50_ms: f("spread_p50_ms")?,
        spread_p99_ms: f("spread_p99_ms")?,
        spread_max_ms: f("spread_max_ms")?,
        checks: f("checks")? as usize,
        checks_per_sec: f("checks_per_sec")?,
        failures: f("failures")? as u64,
        accepted,
        floor_pct: r["floor_pct"].as_f64(),
        xdp_answers: f("xdp_answers")? as u64,
        socket_answers: f("socket_answers")? as u64,
    })
}

/// The markdown section.
pub fn markdown(h: &HealthBench, machine: &str, date: &str) -> String {
    let runs = [
        (&h.veth.default_mode, "veth"),
        (&h.veth.connect, "veth"),
        (&h.loopback.default_mode, "loopback"),
        (&h.loopback.connect, "loopback"),
    ];
    let head: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, (r, topo))| {
            let default = if i == 0 { ", reported" } else { "" };
            format!("{}, {topo}{default}", r.mode)
        })
        .collect();
    let row = |what: &str, f: &dyn Fn(&ModeRun) -> String, target: &str| {
        let cells: Vec<String> = runs.iter().map(|(r, _)| f(r)).collect();
        format!("| {what} | {} | {target} |\n", cells.join(" | "))
    };
    let na = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"));
    let mut t = format!(
        "| what | {} | target |\n|---|---|---|---|---|---|\n",
        head.join(" | ")
    );
    t += &row(
        "**CPU of the checker, % of one core** (process + our side's NAPI thread)",
        &|r| format!("**{:.1}**", r.cpu_pct),
        "< 10",
    );
    t += &row(
        "process (getrusage: user + system)",
        &|r| {
            format!(
                "{:.1} (user {:.1}, system {:.1})",
                r.process_pct, r.user_pct, r.sys_pct
            )
        },
        "",
    );
    t += &row(
        "our side's NAPI thread (veth: XDP takes the SYN-ACK and sends the RST)",
        &|r| na(r.napi_host_pct),
        "",
    );
    t += &row(
        "… of which `xdp_lb` itself (the kernel's BPF run-time statistics; the rest is veth's \
         receive path: skb → XDP copy, wake-ups, the RST's transmit)",
        &|r| match (r.xdp_pct, r.xdp_runs) {
            (Some(p), Some(n)) => format!("{p:.2} ({n} runs)"),
            _ => "n/a".to_string(),
        },
        "",
    );
    t += &row(
        "our code alone: process + `xdp_lb`'s run time (no veth receive path)",
        &|r| na(r.xdp_pct.map(|x| r.process_pct + x)),
        "",
    );
    t += &row(
        "not counted: the listeners' NAPI thread (their kernel's work)",
        &|r| na(r.napi_peer_pct),
        "",
    );
    t += &row(
        "checks per second",
        &|r| format!("{:.0} ({} in the window)", r.checks_per_sec, r.checks),
        "10,000",
    );
    t += &row(
        "start-time error p50 / p99 / max",
        &|r| {
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                r.spread_p50_ms, r.spread_p99_ms, r.spread_max_ms
            )
        },
        "",
    );
    t += &row("failed checks", &|r| r.failures.to_string(), "0");
    t += &row(
        "connections the listeners accepted",
        &|r| r.accepted.to_string(),
        "0 for half-open",
    );
    t += &row(
        "answers taken by XDP / read from the raw sockets (whole run)",
        &|r| format!("{} / {}", r.xdp_answers, r.socket_answers),
        "",
    );
    t += &row(
        "floor: the same work alone in one thread, process only",
        &|r| na(r.floor_pct),
        "",
    );
    format!(
        "## Health checks\n\nMachine: {machine}. Date: {date}.\n\n\
         {BACKENDS} backends, TCP checks every 1 s (the first slot of each drawn uniformly over \
         the interval), on a 2-worker tokio runtime as in the daemon, {SECONDS} s measured after a \
         {} s warm-up; in the default tcp mode (`half-open`: a SYN from a shared raw socket; all \
         half-open checks run on one scheduler task, the SYNs of a millisecond sent with one \
         sendmmsg; where the data plane runs, XDP takes the SYN-ACK, queues it for the checker on \
         a ring buffer and turns it into the RST, else the kernel copies it to the raw socket and \
         resets it) and with `tcp.mode = \"connect\"`. The checker and the \
         listeners (accept-and-close) are separate processes.\n\n\
         - **veth** (the figure reported): the checker in a network namespace, the listeners in \
         another (4 ports × 254 addresses = 1,016 targets), joined by a veth pair with threaded \
         NAPI: on our end the checker attaches the data plane (`xdp_lb`) as the daemon does, on \
         theirs an XDP_PASS program (veth receives through NAPI only with XDP). The listeners' \
         kernel work runs in their side's NAPI thread, as on a remote machine; our side's receive \
         work (XDP taking the SYN-ACK and sending the RST back) in ours. **CPU of the checker = getrusage(RUSAGE_SELF) of the checking process (user + \
         system) + utime + stime of our side's NAPI kthread** (`napi/<dev>-<id>`, from \
         /proc/<pid>/stat over the same window, tick-based accounting); the listeners' NAPI thread \
         is shown but not counted. How much of our NAPI thread is `xdp_lb` itself comes from the \
         kernel's BPF run-time statistics (BPF_ENABLE_STATS, the program's run_time_ns over the \
         window); the rest of that thread is veth's receive path, which a NIC's driver does not \
         have in this form (veth copies each skb into a page-pool page before XDP sees it).\n\
         - **loopback**: the listeners on 4 addresses × 2 ports of 127.0.0.x. The listeners' \
         kernel work (for a connect the whole handshake of both ends) then runs in the sending \
         thread's softirq and is charged to the checker's process: shown for comparison.\n\n\
         The start-time error is |actual − scheduled| start of every check in the window (the \
         scheduler takes a 1 ms bucket when its first millisecond comes: a check may start up to \
         1 ms early).\n\n{t}\n",
        WARMUP.as_secs(),
    )
}

/// Writes `health` into docs/benchmarks.json and the `health` section of
/// docs/benchmarks.md (`replace` is bench.rs's section splicer).
pub fn write(
    docs: &std::path::Path,
    h: &HealthBench,
    machine: &str,
    replace: fn(&str, &str, &str) -> String,
) -> Result<()> {
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let json_path = docs.join("benchmarks.json");
    let mut j: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}));
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let (d, c) = (&h.veth.default_mode, &h.veth.connect);
    let (ld, lc) = (&h.loopback.default_mode, &h.loopback.connect);
    j["health"] = json!({
        "topology": "veth + threaded NAPI, listeners in another namespace",
        "tcp_mode": d.mode,
        "tcp_checks_10k_cpu_pct": r1(d.cpu_pct),
        "check_spread_ms_p99": r3(d.spread_p99_ms),
        "check_spread_ms_p50": r3(d.spread_p50_ms),
        "process_cpu_pct": r1(d.process_pct),
        "process_user_pct": r1(d.user_pct),
        "process_system_pct": r1(d.sys_pct),
        "napi_host_cpu_pct": d.napi_host_pct.map(r1),
        "napi_peer_cpu_pct_not_counted": d.napi_peer_pct.map(r1),
        "xdp_prog_cpu_pct": d.xdp_pct.map(r3),
        "xdp_prog_runs": d.xdp_runs,
        "process_plus_xdp_prog_cpu_pct": d.xdp_pct.map(|x| r1(d.process_pct + x)),
        "checks_per_sec": d.checks_per_sec.round(),
        "failures": d.failures,
        "accepted": d.accepted,
        "half_open_floor_cpu_pct": d.floor_pct.map(r1),
        "connect_tcp_checks_10k_cpu_pct": r1(c.cpu_pct),
        "connect_napi_peer_cpu_pct_not_counted": c.napi_peer_pct.map(r1),
        "connect_check_spread_ms_p99": r3(c.spread_p99_ms),
        "connect_checks_per_sec": c.checks_per_sec.round(),
        "connect_failures": c.failures,
        "kernel_floor_cpu_pct": c.floor_pct.map(r1),
        "loopback_tcp_checks_10k_cpu_pct": r1(ld.cpu_pct),
        "loopback_check_spread_ms_p99": r3(ld.spread_p99_ms),
        "loopback_connect_tcp_checks_10k_cpu_pct": r1(lc.cpu_pct),
        "loopback_half_open_floor_cpu_pct": ld.floor_pct.map(r1),
        "loopback_kernel_floor_cpu_pct": lc.floor_pct.map(r1),
        "machine": machine,
        "date": date,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&j)? + "\n")?;
    let md_path = docs.join("benchmarks.md");
    let md = std::fs::read_to_string(&md_path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench`; do not edit the generated sections by hand.\n"
            .into()
    });
    let body = markdown(h, machine, &date);
    std::fs::write(&md_path, replace(&md, "health", &body))?;
    print!("{body}");
    Ok(())
}
