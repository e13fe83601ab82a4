//! The thin AArch64 layer: system registers, barriers, TLB maintenance, the exception vectors.
//!
//! Place in the flow: the bottom. Only this module (and the boot crate's entry assembly) contains
//! `asm!`. It is compiled only for the bare-metal target; everything above it builds and is
//! unit-tested on the development host.
//!
//! Register and field names follow the Arm ARM (DDI 0487). Every barrier says what it orders.

pub mod console;
pub mod failstop;
mod cache;
mod guarded;
mod host;
mod regs;
mod sysreg;
pub(crate) mod switch;
mod tlb;
pub mod trap;
mod vectors;

use crate::hw::{Clock, Firmware, HostCpu};
use aarch64_cpu::registers::*;
pub use cache::{FIXMAP_BLOCK_ENTRY, FIXMAP_BLOCK_SIZE, FIXMAP_BLOCK_TEMPLATE, FIXMAP_BLOCK_TEMPLATE_TAGGED, FIXMAP_BLOCK_VA, FIXMAP_END, FIXMAP_ENTRY, FIXMAP_TEMPLATE, FIXMAP_TEMPLATE_TAGGED, FIXMAP_VA};
pub use guarded::GuardedMmio;
pub use host::{activate_host, enter_host, HostConfig};
pub use regs::*;
pub use switch::check_sysreg_tables;
pub use switch::vgic::{ich_vtr, set_redistributor};
pub(crate) use switch::sve_lengths;
pub use vectors::{HvcFrame, TrapFrame};

/// The CPU EL2 runs on: the implementation of every trait of the hardware seam ([`crate::hw`]).
pub struct Cpu;

impl Firmware for Cpu {
    fn cpu_on(&self, mpidr: u64, cpu: usize) -> u64 {
        let mut args = [0u64; 17];
        args[0] = mpidr;
        args[1] = trap::SECONDARY_ENTRY.load(core::sync::atomic::Ordering::Relaxed);
        args[2] = cpu as u64;
        smc(smccc::psci::PSCI_CPU_ON_64, args)[0]
    }

    fn forward(&self, x: &mut [u64; 31]) {
        let mut args = [0u64; 17];
        args.copy_from_slice(&x[1..18]);
        let r = smc(x[0] as u32, args);
        x[..18].copy_from_slice(&r);
    }

    fn mem_protect(&self, enable: u32) -> i64 {
        let mut args = [0u64; 17];
        args[0] = enable as u64;
        smc(smccc::psci::PSCI_MEM_PROTECT, args)[0] as i64
    }
}

impl HostCpu for Cpu {
    fn fault_addresses(&self) -> (u64, u64) {
        (FAR_EL2.get(), HPFAR_EL2.get())
    }

    fn vbar_el1(&self) -> u64 {
        VBAR_EL1.get()
    }

    fn write_el1_exception(&self, esr: u64, far: u64, elr: u64, spsr: u64) {
        write_el1_exception(esr, far, elr, spsr);
    }
}

impl Clock for Cpu {
    fn counter(&self) -> u64 {
        // No ISB before the read: CNTPCT_EL0 may be read a little early, which only makes an
        // emulated timer look a few ticks younger to the guest (as if the access had been
        // early); nothing else is ordered against it.
        CNTPCT_EL0.get()
    }
}
