//! The virtual GICv3 CPU interface, which moves with the vCPU on CPUs that have the GICv3
//! system-register interface. What moves when is decided in plain Rust
//! ([`vgic::VgicCpu::load`], [`vgic::VgicCpu::put`]); this module gives it the `ICH_*_EL2`
//! registers ([`vgic::IchRegs`]).

use super::{features, ControlFeatures};
use crate::arch::regs::{cpu_index, isb};
use crate::arch::sysreg::{read_ich_lr, write_ich_lr};
use aarch64_cpu::registers::*;
use crate::guest::vcpu::VcpuCtx;
use crate::guest::vgic::{self, IchRegs};
use crate::platform::MAX_CPUS;
use core::sync::atomic::{AtomicU8, Ordering};

/// Per CPU: how many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` it has ([`vgic::apr_count`] of its
/// `ICH_VTR_EL2`), read once by [`clear`] at boot.
static APR_COUNT: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// This CPU's `ICH_*_EL2` registers, with its number of active-priority registers (1, 2 or 4:
/// [`vgic::apr_count`]; the others do not exist on this CPU and are never accessed).
struct Ich {
    apr: usize,
}

impl IchRegs for Ich {
    fn apr_count(&self) -> usize {
        self.apr
    }

    fn vmcr(&self) -> u64 {
        ICH_VMCR_EL2.get()
    }

    fn set_vmcr(&mut self, v: u64) {
        ICH_VMCR_EL2.set(v);
    }

    fn set_hcr(&mut self, v: u64) {
        ICH_HCR_EL2.set(v);
    }

    fn read_aprs(&self, ap0: &mut [u32; 4], ap1: &mut [u32; 4]) {
        ap0[0] = ICH_AP0R0_EL2.get() as u32;
        ap1[0] = ICH_AP1R0_EL2.get() as u32;
        if self.apr >= 2 {
            ap0[1] = ICH_AP0R1_EL2.get() as u32;
            ap1[1] = ICH_AP1R1_EL2.get() as u32;
        }
        if self.apr >= 4 {
            ap0[2] = ICH_AP0R2_EL2.get() as u32;
            ap1[2] = ICH_AP1R2_EL2.get() as u32;
            ap0[3] = ICH_AP0R3_EL2.get() as u32;
            ap1[3] = ICH_AP1R3_EL2.get() as u32;
        }
    }

    fn write_aprs(&mut self, ap0: &[u32; 4], ap1: &[u32; 4]) {
        ICH_AP0R0_EL2.set(ap0[0] as u64);
        ICH_AP1R0_EL2.set(ap1[0] as u64);
        if self.apr >= 2 {
            ICH_AP0R1_EL2.set(ap0[1] as u64);
            ICH_AP1R1_EL2.set(ap1[1] as u64);
        }
        if self.apr >= 4 {
            ICH_AP0R2_EL2.set(ap0[2] as u64);
            ICH_AP1R2_EL2.set(ap1[2] as u64);
            ICH_AP0R3_EL2.set(ap0[3] as u64);
            ICH_AP1R3_EL2.set(ap1[3] as u64);
        }
    }

    fn lr(&self, n: usize) -> u64 {
        read_ich_lr(n)
    }

    fn set_lr(&mut self, n: usize, v: u64) {
        write_ich_lr(n, v);
    }
}

/// This CPU's `ICH_VTR_EL2`, if it has the GICv3 system-register interface (reported to
/// [`crate::hyp::Hyp::cpu_entered_el2`] when the CPU enters EL2).
pub fn ich_vtr() -> Option<u64> {
    features().gicv3.then(|| ICH_VTR_EL2.get())
}

/// Boot, on every CPU with GICv3: [`vgic::reset_cpu_interface`].
pub fn clear() {
    if !features().gicv3 {
        return;
    }
    // ICC_SRE_EL2.SRE (written by the boot controls just before) enables EL2's accesses to
    // the ICH_* registers: in effect before the first of them.
    isb();
    let vtr = ICH_VTR_EL2.get();
    let apr = vgic::apr_count(vtr);
    APR_COUNT[cpu_index() % MAX_CPUS].store(apr as u8, Ordering::Relaxed);
    vgic::reset_cpu_interface(&mut Ich { apr }, vtr);
}

/// What `put` needs to know of the load.
pub(super) struct Saved {
    /// The CPU has the interface, with this many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` (0: no
    /// GICv3, nothing moved).
    apr: u8,
    /// What [`vgic::VgicCpu::load`] returned: the vCPU's interface was idle at load.
    idle: bool,
}

/// Load: [`vgic::VgicCpu::load`]. No ISB: the ERET synchronises.
pub(super) fn load_guest(f: &ControlFeatures, ctx: &VcpuCtx) -> Saved {
    if !f.gicv3 {
        return Saved { apr: 0, idle: true };
    }
    let apr = APR_COUNT[cpu_index() % MAX_CPUS].load(Ordering::Relaxed);
    let idle = ctx.vgic.load(&mut Ich { apr: apr as usize });
    Saved { apr, idle }
}

/// Put: [`vgic::VgicCpu::put`]. Its writes are in effect before EL2 continues: the ISB at the
/// end of put orders them.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.apr == 0 {
        return;
    }
    ctx.vgic.put(&mut Ich { apr: saved.apr as usize }, saved.idle);
}
