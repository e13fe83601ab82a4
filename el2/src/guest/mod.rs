//! Guests: VMs and their vCPUs, and everything EL2 does for a guest while it runs.
//!
//! - `vm`: the VM table;
//! - `vcpu`: a vCPU's saved context (`SysReg`), register access by KVM ID, slots and claims;
//! - `debug_switch`: what the world switch moves of self-hosted debug, trace and the PMU;
//! - `memory`: guest memory while it runs (first-touch mapping, set/way cleaning);
//! - `exit`: `VCPU_RUN`, the run loop and exit handling; `running`: what exit handlers share;
//! - `fpsimd`: the lazy switch of the guest's FP/SIMD and SVE registers;
//! - `sysreg`: trapped system-register emulation; `vgic`: the virtual CPU interface; `sgi`:
//!   SGIs EL2 delivers between a VM's running vCPUs;
//! - `psci`: PSCI and SMCCC for guests; `smccc_forward`: which other calls go to the host;
//!   `timer`: the guest timers; `coalesce`: MMIO writes that complete without an exit.

pub mod coalesce;
pub mod debug_switch;
pub mod exit;
pub mod fpsimd;
pub mod memory;
pub mod running;
pub mod services;
pub mod sgi;
pub mod psci;
pub mod smccc_forward;
pub mod sysreg;
pub mod timer;
pub mod vcpu;
pub mod vgic;
pub mod vm;

/// Most VMs alive at once.
pub const MAX_VMS: usize = 16;
/// Most vCPUs per VM.
pub const MAX_VCPUS: usize = 8;
/// Smallest guest IPA size.
pub const MIN_IPA_BITS: u32 = 32;
/// Largest guest IPA size.
pub const MAX_IPA_BITS: u32 = 40;
