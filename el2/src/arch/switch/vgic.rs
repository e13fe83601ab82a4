//! The virtual GICv3 CPU interface, which moves with the vCPU on CPUs that have the GICv3
//! system-register interface: `ICH_VMCR_EL2` always; the active priorities, the list
//! registers in use and `ICH_HCR_EL2.En` only when the vCPU's interface is not idle.

use super::{features, ControlFeatures};
use crate::arch::regs::{cpu_index, isb};
use crate::arch::sysreg::{read_ich_lr, write_ich_lr};
use aarch64_cpu::registers::*;
use crate::guest::vcpu::VcpuCtx;
use crate::guest::vgic;
use crate::platform::MAX_CPUS;
use core::sync::atomic::{AtomicU8, Ordering};

/// Per CPU: how many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` it has ([`vgic::apr_count`] of its
/// `ICH_VTR_EL2`), read once by [`clear`] at boot.
static APR_COUNT: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// Writes the first `count` (1, 2 or 4: [`vgic::apr_count`]) `ICH_AP0R<n>_EL2` and
/// `ICH_AP1R<n>_EL2`; the others do not exist on this CPU.
fn write_aprs(count: usize, ap0: &[u32; 4], ap1: &[u32; 4]) {
    ICH_AP0R0_EL2.set(ap0[0] as u64);
    ICH_AP1R0_EL2.set(ap1[0] as u64);
    if count >= 2 {
        ICH_AP0R1_EL2.set(ap0[1] as u64);
        ICH_AP1R1_EL2.set(ap1[1] as u64);
    }
    if count >= 4 {
        ICH_AP0R2_EL2.set(ap0[2] as u64);
        ICH_AP1R2_EL2.set(ap1[2] as u64);
        ICH_AP0R3_EL2.set(ap0[3] as u64);
        ICH_AP1R3_EL2.set(ap1[3] as u64);
    }
}

/// Reads what [`write_aprs`] writes.
fn read_aprs(count: usize, ap0: &mut [u32; 4], ap1: &mut [u32; 4]) {
    ap0[0] = ICH_AP0R0_EL2.get() as u32;
    ap1[0] = ICH_AP1R0_EL2.get() as u32;
    if count >= 2 {
        ap0[1] = ICH_AP0R1_EL2.get() as u32;
        ap1[1] = ICH_AP1R1_EL2.get() as u32;
    }
    if count >= 4 {
        ap0[2] = ICH_AP0R2_EL2.get() as u32;
        ap1[2] = ICH_AP1R2_EL2.get() as u32;
        ap0[3] = ICH_AP0R3_EL2.get() as u32;
        ap1[3] = ICH_AP1R3_EL2.get() as u32;
    }
}

/// This CPU's `ICH_VTR_EL2`, if it has the GICv3 system-register interface (reported to
/// [`crate::hyp::Hyp::cpu_entered_el2`] when the CPU enters EL2).
pub fn ich_vtr() -> Option<u64> {
    features().gicv3.then(|| ICH_VTR_EL2.get())
}

/// Boot, on every CPU with GICv3: the virtual interface off and every list register and
/// active priority zero (their reset values are UNKNOWN), so a guest's load finds only its
/// own state in them.
pub fn clear() {
    if !features().gicv3 {
        return;
    }
    // ICC_SRE_EL2.SRE (written by the boot controls just before) enables EL2's accesses to
    // the ICH_* registers: in effect before the first of them.
    isb();
    ICH_HCR_EL2.set(0);
    let vtr = ICH_VTR_EL2.get();
    let apr = vgic::apr_count(vtr);
    APR_COUNT[cpu_index() % MAX_CPUS].store(apr as u8, Ordering::Relaxed);
    write_aprs(apr, &[0; 4], &[0; 4]);
    for n in 0..=(vtr & 0x1F) as usize {
        write_ich_lr(n, 0);
    }
}

/// What `put` needs to know of the load.
pub(super) struct Saved {
    /// The CPU has the interface, with this many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` (0: no
    /// GICv3, nothing moved).
    apr: u8,
    /// The vCPU's interface was idle at load ([`vgic::VgicCpu::idle`]): only `ICH_VMCR_EL2`
    /// moved.
    idle: bool,
}

/// Load: the vCPU's priority mask and enables, active priorities, the list registers in use
/// (the others are zero: every put clears what it loaded, and boot clears them all), then
/// `En`. No ISB: the ERET synchronises.
pub(super) fn load_guest(f: &ControlFeatures, ctx: &VcpuCtx) -> Saved {
    if !f.gicv3 {
        return Saved { apr: 0, idle: true };
    }
    let v = &ctx.vgic;
    ICH_VMCR_EL2.set(v.vmcr);
    let apr = APR_COUNT[cpu_index() % MAX_CPUS].load(Ordering::Relaxed);
    let idle = v.idle();
    if !idle {
        write_aprs(apr as usize, &v.ap0r, &v.ap1r);
        let mut used = v.used;
        while used != 0 {
            let n = used.trailing_zeros() as usize;
            write_ich_lr(n, v.lr[n]);
            used &= used - 1;
        }
        ICH_HCR_EL2.set(vgic::ICH_HCR_GUEST);
    }
    Saved { apr, idle }
}

/// Put: the host runs with the virtual interface off (no maintenance interrupt), and with no
/// list register or active priority of this vCPU left in the CPU.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.apr == 0 {
        return;
    }
    let v = &mut ctx.vgic;
    v.vmcr = ICH_VMCR_EL2.get();
    if saved.idle {
        return;
    }
    ICH_HCR_EL2.set(0);
    read_aprs(saved.apr as usize, &mut v.ap0r, &mut v.ap1r);
    if v.ap0r != [0; 4] || v.ap1r != [0; 4] {
        write_aprs(saved.apr as usize, &[0; 4], &[0; 4]);
    }
    let mut used = v.used;
    while used != 0 {
        let n = used.trailing_zeros() as usize;
        v.lr[n] = read_ich_lr(n);
        write_ich_lr(n, 0);
        used &= used - 1;
    }
}
