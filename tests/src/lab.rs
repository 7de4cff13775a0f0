//! A loaded data plane plus a desired state, driven through the daemon's own
//! projection code, and a way to run frames through a program.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::Reason;
use lb_daemon::{
    bpf_maps::DataPlane,
    loader::Capacity,
    state::State,
    sync::{ApplyReport, Projector},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub struct Lab {
    pub dp: DataPlane,
    pub proj: Projector,
    pub state: State,
}

/// The outcome of one frame through a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub ns: u64,
}

impl Lab {
    pub fn new() -> Result<Self> {
        Self::with_capacity(Capacity::small())
    }

    pub fn with_capacity(cap: Capacity) -> Result<Self> {
        let dp = DataPlane::load(&cap)?;
        let proj = Projector::new(cap.max_vips, cap.max_backends, cap.ring_size);
        Ok(Lab {
            dp,
            proj,
            state: State::default(),
        })
    }

    pub fn apply(&mut self, state: State) -> Result<ApplyReport> {
        let r = self.proj.apply(&mut self.dp, &state)?;
        self.state = state;
        Ok(r)
    }

    pub fn apply_toml(&mut self, toml_text: &str) -> Result<ApplyReport> {
        let s: State = toml::from_str(toml_text).context("parsing test state")?;
        self.apply(s)
    }

    /// Runs one frame through `prog` (repeat = 1).
    pub fn run_prog(&mut self, prog: &str, frame: &[u8]) -> Result<Run> {
        let mut out = vec![0u8; frame.len() + 512];
        let x = self.dp.program(prog)?;
        let r = x.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            action: r.return_value,
            out,
            ns: r.duration.as_nanos() as u64,
        })
    }

    pub fn run(&mut self, frame: &[u8]) -> Result<Run> {
        self.run_prog("xdp_lb", frame)
    }

    /// Runs `repeat` times in the kernel on the same buffer; returns the mean ns per run.
    pub fn run_repeat(&mut self, prog: &str, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let mut out = vec![0u8; frame.len() + 512];
        let x = self.dp.program(prog)?;
        let r = x.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    pub fn reason(&self, r: Reason) -> u64 {
        self.dp.reason_count(r).expect("reading REASONS")
    }
}
