//! The health checker under load (included by bench.rs): 10,000 backends with TCP
//! checks every second against local listeners, on the daemon's own runtime shape
//! (tokio, 2 worker threads), for `SECONDS` after a warm-up; once in the default tcp
//! mode (`half-open`: a raw SYN, the SYN-ACK reset by the kernel) and once with
//! `mode = "connect"`.
//!
//! The listeners (4 addresses × 2 ports on 127.0.0.x, accept-and-close) run in a child
//! process (this binary again, with `LB_BENCH_HEALTH_LISTENERS` set), so that the CPU
//! measured with getrusage(RUSAGE_SELF) is the checker's: its tasks and timers, the
//! SYNs, connects and closes (with the kernel's share of the loopback handshake
//! charged to the sending side). The spread is |actual − scheduled| start time of every
//! check. The listener process reports how many connections it accepted: none, for
//! half-open checks.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use lb_common::state::{
    CheckParams, CheckType, Dur, Proto, RealServer, Service, ServiceHealth, State, TcpCheck,
    TcpMode,
};
use lb_daemon::health::Health;

pub const BACKENDS: usize = 10_000;
pub const SECONDS: u64 = 10;
const WARMUP: Duration = Duration::from_secs(3);
const ADDRS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Listening ports per address.
const PORTS: usize = 2;

pub struct HealthBench {
    /// The default tcp mode (half-open).
    pub default_mode: ModeRun,
    /// `mode = "connect"`.
    pub connect: ModeRun,
    /// The kernel's floor on this machine: 10,000 blocking connect + RST-close a second
    /// from one thread with no runtime at all, % of one core.
    pub floor_pct: f64,
    /// The half-open engine alone: 10,000 probes a second, one after the other, on a
    /// current-thread runtime in one thread (no health state machines), % of one core.
    pub half_open_floor_pct: Option<f64>,
}

/// One run of the checker in one tcp mode.
pub struct ModeRun {
    /// What the checks did: "half-open", "connect", or "connect (half-open unavailable)".
    pub mode: String,
    /// CPU of the whole process (user + system) over the window, % of one core.
    pub cpu_pct: f64,
    pub user_pct: f64,
    pub sys_pct: f64,
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
}

/// When set, this process is the listeners' (see the module doc).
pub const LISTENERS_ENV: &str = "LB_BENCH_HEALTH_LISTENERS";

/// The listener process: accept and close until standard input closes.
pub fn listeners_main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Ports chosen by the kernel on the first address, then taken on the others too
        // (another run may be going on).
        let mut ports = Vec::new();
        let mut listeners = Vec::new();
        let mut tries = 0;
        while ports.len() < PORTS {
            tries += 1;
            ensure!(tries < 100, "no port free on every address");
            let first = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let p = first.local_addr()?.port();
            let mut group = vec![first];
            for a in &ADDRS[1..] {
                match tokio::net::TcpListener::bind((a.parse::<IpAddr>()?, p)).await {
                    Ok(l) => group.push(l),
                    Err(_) => break,
                }
            }
            if group.len() == ADDRS.len() {
                ports.push(p);
                listeners.extend(group);
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

fn rusage() -> (f64, f64) {
    rusage_of(libc::RUSAGE_SELF)
}

fn rusage_of(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn state(ports: &[u16], mode: TcpMode) -> State {
    let backends = (0..BACKENDS)
        .map(|i| RealServer {
            address: format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap(),
            weight: 1,
            forward: Default::default(),
            mac: None,
            gue_port: lb_common::DEFAULT_GUE_PORT,
            health: Some(Box::new(CheckParams {
                address: Some(ADDRS[i % ADDRS.len()].parse().unwrap()),
                port: Some(ports[(i / ADDRS.len()) % ports.len()]),
                ..Default::default()
            })),
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

/// CPU seconds per blocking connect + RST close to the listeners, from one thread.
fn floor_per_connect(ports: &[u16]) -> Result<f64> {
    let targets: Vec<std::net::SocketAddr> = ADDRS
        .iter()
        .flat_map(|a| {
            ports
                .iter()
                .map(move |p| format!("{a}:{p}").parse().unwrap())
        })
        .collect();
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
            use std::os::fd::AsRawFd as _;
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
    .map_err(|_| anyhow::anyhow!("floor thread panicked"))?
}

/// CPU seconds per half-open probe of the listeners, one after the other, through an
/// engine of its own on a current-thread runtime in one thread.
fn floor_per_half_open_probe(ports: &[u16]) -> Result<Option<f64>> {
    use lb_daemon::health::checks::halfopen::{Answer, HalfOpen};
    let targets: Vec<std::net::SocketAddr> = ADDRS
        .iter()
        .flat_map(|a| {
            ports
                .iter()
                .map(move |p| format!("{a}:{p}").parse().unwrap())
        })
        .collect();
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
    .map_err(|_| anyhow::anyhow!("half-open floor thread panicked"))?
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

/// Both modes, the default one first, then the floor.
pub fn run() -> Result<HealthBench> {
    let (default_mode, half_open_floor) = run_mode(TcpMode::HalfOpen)?;
    let (connect, floor) = run_mode(TcpMode::Connect)?;
    let floor = floor.context("the connect floor")?;
    Ok(HealthBench {
        default_mode,
        connect,
        floor_pct: floor * BACKENDS as f64 * 100.0,
        half_open_floor_pct: half_open_floor.map(|f| f * BACKENDS as f64 * 100.0),
    })
}

/// One run in `mode`, and the CPU seconds per operation of its floor: a blocking
/// connect for `connect`, a probe of the half-open engine alone for `half-open` (None
/// when raw sockets are not available).
fn run_mode(mode: TcpMode) -> Result<(ModeRun, Option<f64>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(LISTENERS_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the listener process")?;
    let mut out = BufReader::new(child.stdout.take().context("listener stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let ports: Vec<u16> = match line.trim().strip_prefix("ready ") {
        Some(rest) => rest.split(' ').map(str::parse).collect::<Result<_, _>>()?,
        None => anyhow::bail!("listener process: {line:?}"),
    };
    ensure!(ports.len() == PORTS, "listener process: {line:?}");
    let st = state(&ports, mode);
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
    let health = Health::new();
    health.configure(&st);
    let result = rt.block_on(async {
        health.start_checks();
        tokio::time::sleep(WARMUP).await;
        health.record_spread(true);
        let (u0, s0) = rusage();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        let (u1, s1) = rusage();
        let wall = t0.elapsed().as_secs_f64();
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
        Ok(ModeRun {
            mode: what,
            cpu_pct: (u1 - u0 + s1 - s0) / wall * 100.0,
            user_pct: (u1 - u0) / wall * 100.0,
            sys_pct: (s1 - s0) / wall * 100.0,
            spread_p50_ms: percentile(&spread, 0.50),
            spread_p99_ms: percentile(&spread, 0.99),
            spread_max_ms: spread.last().map_or(0.0, |v| f64::from(*v)),
            checks: spread.len(),
            checks_per_sec: spread.len() as f64 / wall,
            failures,
            accepted: 0,
        })
    });
    drop(rt);
    let floor = match mode {
        TcpMode::Connect => Some(floor_per_connect(&ports)?),
        TcpMode::HalfOpen => floor_per_half_open_probe(&ports)?,
    };
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line)?;
    let _ = child.wait();
    let mut r = result?;
    r.accepted = match line.trim().strip_prefix("accepted ") {
        Some(n) => n.parse()?,
        None => anyhow::bail!("listener process at exit: {line:?}"),
    };
    Ok((r, floor))
}

/// The markdown section.
pub fn markdown(h: &HealthBench, machine: &str, date: &str) -> String {
    let (d, c) = (&h.default_mode, &h.connect);
    format!(
        "## Health checks\n\nMachine: {machine}. Date: {date}.\n\n\
         {BACKENDS} backends, TCP checks every 1 s (start of each drawn uniformly over the interval), \
         on a 2-worker tokio runtime as in the daemon, against 8 listeners (4 addresses × 2 ports on \
         127.0.0.x, accept-and-close) in a separate process; {SECONDS} s measured after a {} s warm-up, \
         once in the default tcp mode (`half-open`: a SYN from a shared raw socket; the kernel resets \
         the SYN-ACK) and once with `tcp.mode = \"connect\"`. \
         CPU is getrusage(RUSAGE_SELF) of the checking process (user + system, % of one core); \
         the spread is |actual − scheduled| start time of every check in the window.\n\n\
         | what | {} (default) | {} | target |\n|---|---|---|---|\n\
         | CPU, % of one core | {:.1} (user {:.1}, system {:.1}) | {:.1} (user {:.1}, system {:.1}) | < 10 |\n\
         | checks per second | {:.0} ({} in the window) | {:.0} ({} in the window) | 10,000 |\n\
         | start-time error p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms | |\n\
         | failed checks | {} | {} | 0 |\n\
         | connections the listeners accepted | {} | {} | 0 for half-open |\n\
         | floor: the same work alone, one thread (connect: blocking connect + close, no runtime; \
         half-open: the engine's probes one after the other on a current-thread runtime) | {} | {:.1} | |\n\n\
         On loopback the backend's side of every exchange runs in the sending thread's softirq and \
         is charged to the checker: for a connect, the whole handshake of both ends (SYN, SYN-ACK, \
         the listener's child socket, the RST); for a half-open check, the listener's SYN handling \
         and SYN-ACK and our kernel's RST to it (in a perf profile of the half-open run, about 40% \
         of the process's samples). Against remote backends that share is theirs. A half-open \
         check itself is one sendmsg of a SYN (IP_HDRINCL, so concurrent sends do not serialize on \
         the socket lock), no socket, and a share of the reads of the one receive task (the \
         raw socket's BPF filter passes only SYN-ACKs and RSTs to the reserved source ports).\n\n",
        WARMUP.as_secs(),
        d.mode,
        c.mode,
        d.cpu_pct,
        d.user_pct,
        d.sys_pct,
        c.cpu_pct,
        c.user_pct,
        c.sys_pct,
        d.checks_per_sec,
        d.checks,
        c.checks_per_sec,
        c.checks,
        d.spread_p50_ms,
        d.spread_p99_ms,
        d.spread_max_ms,
        c.spread_p50_ms,
        c.spread_p99_ms,
        c.spread_max_ms,
        d.failures,
        c.failures,
        d.accepted,
        c.accepted,
        h.half_open_floor_pct
            .map_or_else(|| "n/a".to_string(), |f| format!("{f:.1}")),
        h.floor_pct,
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
    let mut j: serde_json::Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let (d, c) = (&h.default_mode, &h.connect);
    j["health"] = serde_json::json!({
        "tcp_mode": d.mode,
        "tcp_checks_10k_cpu_pct": r1(d.cpu_pct),
        "check_spread_ms_p99": r3(d.spread_p99_ms),
        "check_spread_ms_p50": r3(d.spread_p50_ms),
        "checks_per_sec": d.checks_per_sec.round(),
        "failures": d.failures,
        "accepted": d.accepted,
        "connect_tcp_checks_10k_cpu_pct": r1(c.cpu_pct),
        "connect_check_spread_ms_p99": r3(c.spread_p99_ms),
        "connect_checks_per_sec": c.checks_per_sec.round(),
        "connect_failures": c.failures,
        "kernel_floor_cpu_pct": r1(h.floor_pct),
        "half_open_floor_cpu_pct": h.half_open_floor_pct.map(r1),
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
