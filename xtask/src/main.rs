//! Project tasks: `cargo xtask setup | build | demo | test | bench`.

mod demo;
mod netns;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks for the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build and the tests need (idempotent).
    Setup,
    /// Build everything (the daemon embeds the XDP object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the load balancer on its embedded default in namespaces, send traffic, print counters.
    Demo {
        /// Requests the client sends through the VIP.
        #[arg(long, default_value_t = 30)]
        requests: u32,
    },
    /// Run the whole test suite (unit, packet, differential, end-to-end).
    Test,
    /// Benchmarks: XDP ns per packet and Maglev build times → docs/benchmarks.{md,json}.
    Bench,
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg(root().join("xtask/setup.sh")))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup()?;
            let mut c = cargo();
            c.args(["build", "--workspace", "--exclude", "lb-ebpf"]);
            if release {
                c.arg("--release");
            }
            run(&mut c)
        }
        Task::Demo { requests } => {
            setup()?;
            run(cargo().args(["build", "--release", "-p", "lb-daemon"]))?;
            demo::run(&root().join("target/release/lb-daemon"), requests)
        }
        Task::Test => {
            setup()?;
            // One cargo invocation: the closing "test result" lines are what CI reads.
            run(cargo().args(["test", "--release", "--workspace", "--exclude", "lb-ebpf"]))
        }
        Task::Bench => {
            setup()?;
            run(cargo()
                .args(["run", "--release", "-p", "tests", "--bin", "bench", "--"])
                .arg(root()))
        }
    }
}
