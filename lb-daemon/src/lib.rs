//! lb-daemon: loads the XDP programs, projects the desired state into BPF maps,
//! and serves the operator.

pub mod api;
pub mod bpf_maps;
pub mod clock;
pub mod config;
pub mod health;
pub mod loader;
pub mod metrics;
pub mod netlink;
pub mod persist;
pub mod runtime;
pub use lb_common::state;
pub mod stats;
pub mod stats_page;
pub mod sync;
#[cfg(test)]
mod test_netns;

/// The XDP object built from lb-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
