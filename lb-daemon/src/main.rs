//! lb-daemon: loads the XDP programs, applies the configuration, attaches, and
//! reports per-service and per-backend counters.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use lb_daemon::{
    bpf_maps::DataPlane,
    config::{Config, DEFAULT_CONFIG},
    stats,
    sync::Projector,
};
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::parse(DEFAULT_CONFIG, "embedded default")?,
    };
    if !args.interfaces.is_empty() {
        cfg.daemon.interfaces = args.interfaces.clone();
    }
    if args.check {
        println!("configuration OK: {} services", cfg.state.services.len());
        return Ok(());
    }

    let mut dp = DataPlane::load(&cfg.capacity)?;
    let mut proj = Projector::new(cfg.capacity.max_vips, cfg.capacity.max_backends, cfg.capacity.ring_size);
    let mut ctrl = dp.ctrl()?;
    ctrl.conn_timeout_secs = cfg.daemon.conn_timeout;
    dp.set_ctrl(&ctrl)?;
    let report = proj.apply(&mut dp, &cfg.state).context("applying the configuration")?;
    info!(
        services = report.services_added,
        slots = report.slots_written,
        "configuration applied"
    );
    for ifname in &cfg.daemon.interfaces {
        let mode = dp.attach("xdp_lb", ifname)?;
        info!(interface = %ifname, mode, "xdp_lb attached");
    }
    if cfg.daemon.interfaces.is_empty() {
        warn!("no interface configured: the data plane is loaded but sees no traffic");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let period = Duration::from_secs(args.stats_interval.unwrap_or(3600).max(1));
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                if args.stats_interval.is_some() {
                    print!("{}", stats::stats_table(&dp, &proj, &cfg.state, false)?);
                }
            }
        }
    }
    print!("{}", stats::stats_table(&dp, &proj, &cfg.state, false)?);
    print!("{}", stats::reasons_table(&dp)?);
    info!("exiting: programs detach with the daemon");
    Ok(())
}
