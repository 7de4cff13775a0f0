//! Test support: a lab around the real XDP object (BPF_PROG_TEST_RUN), packet
//! builders, and the user-space reference model of the data plane.

pub mod e2e;
pub mod lab;
pub mod model;
pub mod pkt;
