//! Guests: VMs and their vCPUs, and everything EL2 does for a guest while it runs.
//!
//! - `vm`: the VM table, vCPU slots and claims, `VM_CREATE` and `VM_DESTROY`;
//! - `vcpu`: a vCPU's saved context and the KVM register IDs;
//! - `memory`: `VM_ADD_MEMORY`, first-touch mapping, what destroy does with memory;
//! - `regs`: host access to registers; `irq`: list registers and statistics;
//! - `exit`: `VCPU_RUN`, the run loop and exit handling;
//! - `sysreg`: trapped system-register emulation; `vgic`: the virtual CPU interface.

pub mod exit;
pub mod irq;
pub mod memory;
pub mod regs;
pub mod sysreg;
pub mod vcpu;
pub mod vgic;
pub mod vm;
