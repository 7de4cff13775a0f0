//! Types and pure logic shared by the XDP programs and user space.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and a
//! compile-time size check, so the kernel and user-space views can never
//! drift apart. Addresses and ports are kept in network byte order.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod consts;
pub mod hash;
pub mod types;

#[cfg(feature = "user")]
pub mod maglev;
/// Operations on the desired state (ipvsadm semantics), shared by the daemon and lbctl.
#[cfg(feature = "user")]
pub mod ops;
#[cfg(feature = "user")]
pub mod sequence;
/// The desired state (services, real servers, tunnel settings): shared by the daemon and lbctl.
#[cfg(feature = "user")]
pub mod state;

pub use consts::*;
pub use types::*;
