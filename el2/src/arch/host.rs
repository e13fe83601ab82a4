//! Running the host on this CPU: its stage 2 and traps (`HCR_EL2`, `VTCR_EL2`, `CPTR_EL2`,
//! ...), and the boot-time values of the control registers EL2 otherwise never touches.

use super::regs::{cpu_index, dsb_ish, isb, ps_field, WALK_ATTRS};
use crate::cpu::controls::hcr;
use crate::mem::pgtable::PageTable;
use aarch64_cpu::registers::*;
use core::arch::asm;

/// `SCTLR_EL1` the host starts with: RES1 bits, MMU and caches off.
const SCTLR_EL1_HOST_RESET: u64 = 0x30D0_0800;
/// `CPTR_EL2` (non-VHE) for the host: RES1 bits, `TZ` and `TSM` set (SVE and SME trap: the
/// host gets neither; a guest's SVE is EL2's to switch), `TFP` clear (FP/SIMD is the host's).
const CPTR_EL2_HOST: u64 = 0x33FF;
const VTCR_EL2_RES1: u64 = 1 << 31;
/// `SPSR_EL2` for entering the host: EL1h, D/A/I/F masked.
const SPSR_EL1H_DAIF: u64 = 0x3C5;

/// Stage-2 and trap configuration for running the host on this CPU.
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// `VTTBR_EL2` (host VMID 0).
    pub vttbr: u64,
    /// `VTCR_EL2`.
    pub vtcr: u64,
    /// `HCR_EL2`.
    pub hcr: u64,
}

impl HostConfig {
    /// The boot CPU's host configuration as this CPU must use it: `HCR_EL2.ATA` only with
    /// FEAT_MTE2 and `HCR_EL2.API/APK` only with pointer authentication, from this CPU's own
    /// ID registers `regs` (the bits are RES0 otherwise). The host reads the real ID registers
    /// and decides for itself; guests' MTE and pointer authentication come from every CPU.
    pub fn for_this_cpu(&self, regs: &[u64; crate::cpu::idreg::NR_IDREGS]) -> Self {
        let mut hcr = self.hcr;
        if !crate::cpu::idreg::mte2(regs) {
            hcr &= !hcr::ATA;
        }
        if !crate::cpu::idreg::has_pauth(regs) {
            hcr &= !(hcr::API | hcr::APK);
        }
        Self { hcr, ..*self }
    }

    /// The configuration for the host stage 2 `table`.
    pub fn new(table: &PageTable, pa_bits: u8) -> Self {
        let sl0 = match table.start_level() {
            0 => 2,
            1 => 1,
            _ => 0,
        };
        let vtcr = VTCR_EL2_RES1 | (64 - table.ia_bits() as u64) | sl0 << 6 | WALK_ATTRS | ps_field(pa_bits) << 16;
        // Traps deny by default: the host gets stage 2, SMC trapping, and only what it needs.
        // ATA and API/APK are filtered per CPU by `for_this_cpu`.
        let hcr = hcr::VM | hcr::SWIO | hcr::DC | hcr::TSC | hcr::RW | hcr::API | hcr::APK | hcr::ATA;
        Self { vttbr: table.root().0, vtcr, hcr }
    }
}

/// Programs this CPU to run the host under `cfg`.
pub fn activate_host(cfg: &HostConfig) {
    // This CPU's features decide which control registers exist; the world switch reads them
    // back on every guest load.
    let features = crate::cpu::controls::ControlFeatures::from_id_regs(
        ID_AA64PFR0_EL1.get(),
        ID_AA64PFR1_EL1.get(),
        ID_AA64DFR0_EL1.get(),
        ID_AA64MMFR0_EL1.get(),
        ID_AA64MMFR1_EL1.get(),
    );
    super::switch::CONTROL_FEATURES[cpu_index() % crate::platform::MAX_CPUS].store(features.bits(), core::sync::atomic::Ordering::Relaxed);
    write_boot_controls(&crate::cpu::controls::boot_controls(&features));
    super::switch::vgic::clear();
    VTCR_EL2.set(cfg.vtcr);
    VTTBR_EL2.set(cfg.vttbr);
    // VTCR/VTTBR are in effect before the TLB invalidation below uses the VMID.
    isb();
    // SAFETY: invalidating all EL1&0 stage 1 and 2 entries of the current VMID is always
    // allowed at EL2; it drops anything left from before EL2 started.
    unsafe { asm!("tlbi vmalls12e1", options(nostack, preserves_flags)) };
    dsb_ish();
    CPTR_EL2.set(CPTR_EL2_HOST);
    let pmcr_n = {
        let v: u64;
        // SAFETY: reading PMCR_EL0 at EL2 has no side effects.
        unsafe { asm!("mrs {}, pmcr_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
        (v >> 11) & 0x1F
    };
    // MDCR_EL2.HPMN = PMCR_EL0.N: every counter belongs to EL1&0; no debug or PMU traps.
    MDCR_EL2.set(pmcr_n);
    // CNTHCTL_EL2.EL1PCTEN | EL1PCEN: the host uses the physical counter and timer directly.
    CNTHCTL_EL2.set(0b11);
    CNTVOFF_EL2.set(0);
    // EL2's physical timer off (its ENABLE resets to an UNKNOWN value): it only ever backs a
    // running guest's emulated EL1 physical timer (`WorldSwitch::ptimer_backing`), and must not
    // fire PPI 26 at the host before the first guest runs here.
    CNTHP_CTL_EL2.set(0);
    // The host sees the real MIDR/MPIDR; both registers reset to UNKNOWN values.
    let midr = MIDR_EL1.get();
    // SAFETY: writing VPIDR_EL2 only changes what EL1 reads from MIDR_EL1.
    unsafe { asm!("msr vpidr_el2, {}", in(reg) midr, options(nostack, preserves_flags)) };
    VMPIDR_EL2.set(MPIDR_EL1.get());
    SCTLR_EL1.set(SCTLR_EL1_HOST_RESET);
    HCR_EL2.set(cfg.hcr);
    // What the world switch puts back after every guest (system register reads see the
    // writes above in program order).
    super::switch::traps::HOST_EL2[cpu_index() % crate::platform::MAX_CPUS].record();
    // All of the above is in effect before anything runs at EL1 (the ERET that enters the
    // host is context synchronising too; this makes the order independent of the caller).
    isb();
}

/// Writes the control registers EL2 otherwise never touches to their known values
/// (`controls::boot_controls`); the `ISB` at the end of [`activate_host`] puts them in force.
fn write_boot_controls(b: &crate::cpu::controls::BootControls) {
    // Each register is written only when this CPU implements it (`boot_controls` returns
    // `None` otherwise), and each only configures EL2 traps or EL1&0 behaviour, which does not
    // run until the ERET into the host.
    if let Some(v) = b.hcrx {
        // SAFETY: see above (FEAT_HCX).
        unsafe { asm!("msr S3_4_C1_C2_2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // HCRX_EL2
    }
    if let Some(v) = b.fgt {
        // SAFETY: see above (FEAT_FGT).
        unsafe {
            asm!(
                "msr S3_4_C1_C1_4, {v}", // HFGRTR_EL2
                "msr S3_4_C1_C1_5, {v}", // HFGWTR_EL2
                "msr S3_4_C1_C1_6, {v}", // HFGITR_EL2
                "msr S3_4_C3_C1_4, {v}", // HDFGRTR_EL2
                "msr S3_4_C3_C1_5, {v}", // HDFGWTR_EL2
                v = in(reg) v,
                options(nomem, nostack, preserves_flags)
            )
        };
    }
    if let Some(v) = b.icc_sre_el2 {
        // SAFETY: see above (GICv3 system-register interface).
        unsafe { asm!("msr S3_4_C12_C9_5, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // ICC_SRE_EL2
    }
    if let Some(v) = b.trfcr_el2 {
        // SAFETY: see above (FEAT_TRF).
        unsafe { asm!("msr S3_4_C1_C2_1, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // TRFCR_EL2
    }
}

/// Enters the host at EL1h at `entry` with `x0 = arg`, every other GPR zero, and D/A/I/F
/// masked.
///
/// # Safety
/// [`activate_host`] must have run on this CPU.
pub unsafe fn enter_host(entry: u64, arg: u64) -> ! {
    ELR_EL2.set(entry);
    SPSR_EL2.set(SPSR_EL1H_DAIF);
    // SAFETY: the caller guarantees the host configuration is active; the GPRs are cleared so
    // no EL2 value reaches the host. ERET is context synchronising (ELR/SPSR writes).
    unsafe {
        asm!(
            "mov x1, xzr", "mov x2, xzr", "mov x3, xzr", "mov x4, xzr", "mov x5, xzr",
            "mov x6, xzr", "mov x7, xzr", "mov x8, xzr", "mov x9, xzr", "mov x10, xzr",
            "mov x11, xzr", "mov x12, xzr", "mov x13, xzr", "mov x14, xzr", "mov x15, xzr",
            "mov x16, xzr", "mov x17, xzr", "mov x18, xzr", "mov x19, xzr", "mov x20, xzr",
            "mov x21, xzr", "mov x22, xzr", "mov x23, xzr", "mov x24, xzr", "mov x25, xzr",
            "mov x26, xzr", "mov x27, xzr", "mov x28, xzr", "mov x29, xzr", "mov x30, xzr",
            "eret",
            in("x0") arg,
            options(noreturn)
        )
    }
}

