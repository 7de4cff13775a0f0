//! lb-daemon: loads (or adopts) the XDP data plane, applies the running state,
//! attaches, serves the API, and reports per-service and per-backend counters.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use lb_daemon::{
    api::{self, Shared},
    config::{Config, DEFAULT_CONFIG},
    metrics::{self, Metrics},
    runtime::{self, Runtime},
    stats,
};
use tokio::{net::UnixListener, sync::Notify};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(version, about = "Layer-4 XDP load balancer daemon")]
struct Args {
    /// Configuration file (TOML). Without it, the embedded demo default is used.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Interface to attach to (repeatable); overrides daemon.interfaces.
    #[arg(short, long = "iface")]
    interfaces: Vec<String>,
    /// On exit, detach the programs and remove the pins (default: the data plane keeps
    /// forwarding without the daemon, and the next daemon adopts it).
    #[arg(long)]
    detach_on_exit: bool,
    /// Don't pin maps and links (a throw-away data plane that lives with the process).
    #[arg(long)]
    no_pin: bool,
    /// State file (overrides daemon.state_file).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// API socket (overrides daemon.socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the stats table every N seconds.
    #[arg(long, value_name = "SECONDS")]
    stats_interval: Option<u64>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Pins need bpffs at /sys/fs/bpf. `ip netns exec` gives its command a fresh /sys
/// without it: mount one there, and say that its pins are private to that mount
/// namespace (run the daemon with `nsenter --net=...` to keep the host's bpffs).
fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let is_bpffs =
        unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC;
    if is_bpffs {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    // SAFETY: mount(2) with static C strings.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
    }
    warn!(
        "mounted a bpffs on /sys/fs/bpf in this mount namespace: pins live only as long as it does"
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::parse(DEFAULT_CONFIG, "embedded default")?,
    };
    init_logging(cfg.daemon.log_json);
    if !args.interfaces.is_empty() {
        cfg.daemon.interfaces = args.interfaces.clone();
    }
    if let Some(s) = &args.socket {
        cfg.daemon.socket = Some(s.clone());
    }
    if let Some(s) = &args.state_file {
        cfg.daemon.state_file = Some(s.clone());
    }
    if args.check {
        println!("configuration OK: {} services", cfg.state.services.len());
        return Ok(());
    }
    let pin = !args.no_pin;
    if pin {
        ensure_bpffs()?;
    }
    let socket = cfg.socket();
    let token = match &cfg.daemon.api_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    // MACs of real servers without one configured: the kernel's neighbour table.
    let running = Runtime::running_state(&cfg, &cfg.state_file())?;
    let (netlink, learned, interfaces) = runtime::learn_initial(&cfg, &running).await;
    let mut rt = Runtime::start(cfg.clone(), cfg.state_file(), pin, learned)?;
    rt.interfaces = interfaces;
    rt.attach(pin)?;
    let shared = Arc::new(Shared {
        rt: tokio::sync::Mutex::new(rt),
        shutdown: Notify::new(),
        unload: std::sync::atomic::AtomicBool::new(false),
        netlink,
    });
    runtime::follow_kernel(shared.clone()).await;
    // Health checks, and the task that makes the tables follow backend health.
    lb_daemon::health::start(shared.clone()).await;

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %socket.display(), "API listening");
    // The exporter's own counters; backend health from the health checker.
    let health = shared.rt.lock().await.health.clone();
    let metrics = Arc::new(Metrics::new(&cfg.daemon.instance, Arc::new(health)));
    let app = api::router(shared.clone()).layer(axum::middleware::from_fn_with_state(
        (metrics.clone(), "unix"),
        metrics::track_api,
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    if let (Some(addr), Some(token)) = (cfg.daemon.api_listen, token) {
        let guard = (Arc::new(token), Arc::new(cfg.daemon.api_allow.clone()));
        let app = api::router(shared.clone())
            .layer(axum::middleware::from_fn_with_state(
                guard,
                api::require_token,
            ))
            .layer(axum::middleware::from_fn_with_state(
                (metrics.clone(), "tcp"),
                metrics::track_api,
            ));
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        info!(%addr, "API listening on TCP (bearer token)");
        tokio::spawn(async move {
            axum::serve(
                tcp,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
    }
    if let Some(addr) = cfg.daemon.metrics_listen {
        let every = Duration::from_secs(cfg.daemon.metrics_conn_interval.into());
        metrics::spawn_conn_snapshots(shared.clone(), metrics.clone(), every).await?;
        metrics::serve(addr, shared.clone(), metrics.clone()).await?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let period = Duration::from_secs(args.stats_interval.unwrap_or(3600).max(1));
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = shared.shutdown.notified() => break,
            _ = tick.tick() => {
                if args.stats_interval.is_some() {
                    let rt = shared.rt.lock().await;
                    print!("{}", stats::stats_table(&rt.dp, &rt.proj, &rt.state, false)?);
                }
            }
        }
    }
    let mut rt = shared.rt.lock().await;
    print!(
        "{}",
        stats::stats_table(&rt.dp, &rt.proj, &rt.state, false)?
    );
    print!("{}", stats::reasons_table(&rt.dp)?);
    let _ = std::fs::remove_file(&socket);
    if args.detach_on_exit || shared.unload.load(std::sync::atomic::Ordering::SeqCst) || !pin {
        rt.unload()?;
        info!("data plane unloaded");
    } else {
        info!(pins = %rt.cfg.pin_dir().display(), "exiting; the data plane keeps forwarding");
    }
    Ok(())
}
