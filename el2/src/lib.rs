//! The EL2 hypervisor: the only trusted code.
//!
//! The flow of every host request, top to bottom (each module says where it sits):
//!
//! ```text
//! arch::vectors → arch::trap (shim) → host::trap → hypercall (decode once, dispatch)
//!   → hypercall::{setup, vm, vcpu} or guest::exit (VCPU_RUN) → mem::protect (state change)
//!   → hw (the hardware seam) → arch
//! ```
//!
//! Everything except `arch` is plain Rust that builds and is unit-tested on the development
//! host; `arch` exists only on the bare-metal AArch64 target.
#![cfg_attr(not(test), no_std)]

pub mod cpu;
pub mod error;
pub mod exception;
pub mod guest;
pub mod host;
pub mod hw;
pub mod hypercall;
pub mod hyp;
#[cfg(any(test, feature = "test-hooks"))]
pub mod invariants;
pub mod mem;
pub mod platform;
pub mod sync;
#[cfg(test)]
pub(crate) mod testing;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod arch;
