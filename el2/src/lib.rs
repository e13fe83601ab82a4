//! The EL2 hypervisor: the only trusted code.
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod exception;
pub mod owner;
pub mod pgtable;
pub mod platform;
pub mod pool;
pub mod hyp;
pub mod psci;
