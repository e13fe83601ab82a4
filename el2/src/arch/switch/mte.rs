//! MTE state of an MTE VM: its tag-generation and tag-check registers, and allocation tags
//! accessible at EL1&0 (`HCR_EL2.ATA`).

use super::sysreg_bank;
use super::scratch;
use crate::cpu::controls::hcr;
use crate::guest::vcpu::VcpuCtx;
use crate::hw::GuestConfig;

// RGSR_EL1, GCR_EL1, TFSR_EL1, TFSRE0_EL1 (shared_abi::reg::MTE_REGS): tag generation and
// checking at EL1&0. Only switched for MTE VMs, so FEAT_MTE2 is implemented.
sysreg_bank!(save_mte, restore_mte, 4, ["S3_0_C1_C0_5", "S3_0_C1_C0_6", "S3_0_C5_C6_0", "S3_0_C5_C6_1"]);

/// Whether the guest's MTE registers are loaded (the host's are in this CPU's scratch).
pub(super) struct Saved {
    loaded: bool,
}

/// Load, for an MTE VM: the guest's MTE registers in, tags accessible (`hcr`).
pub(super) fn load_guest(cfg: &GuestConfig, ctx: &VcpuCtx, hcr: &mut u64) -> Saved {
    if !cfg.mte {
        return Saved { loaded: false };
    }
    // The host's asynchronous tag-check faults land in its TFSR_EL1/TFSRE0_EL1 only once its
    // outstanding accesses complete: DSB, then ISB so the reads below see them.
    // SAFETY: barriers.
    unsafe { core::arch::asm!("dsb nsh", "isb", options(nostack, preserves_flags)) };
    save_mte(&mut scratch().mte);
    restore_mte(&ctx.mte);
    *hcr |= hcr::ATA;
    Saved { loaded: true }
}

/// Put: the guest's MTE registers out and the host's back, if they moved.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if !saved.loaded {
        return;
    }
    // Asynchronous tag-check faults the guest caused are recorded in TFSR_EL1/TFSRE0_EL1 only
    // once outstanding accesses complete: DSB before reading them, and ISB so the reads are
    // ordered after the update, so they land in the guest's context and not the host's.
    // (SCTLR_EL2.ITFSB also synchronises them on every entry to EL2.)
    // SAFETY: barriers.
    unsafe { core::arch::asm!("dsb nsh", "isb", options(nostack, preserves_flags)) };
    save_mte(&mut ctx.mte);
    restore_mte(&scratch().mte);
    // The host's MTE registers are in effect before EL2 continues: the ISB at the end of put
    // (after HCR_EL2) orders it.
}
