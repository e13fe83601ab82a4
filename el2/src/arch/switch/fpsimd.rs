//! FP/SIMD and SVE, switched lazily: the guest runs with FP/SIMD and SVE trapped
//! (`CPTR_EL2.TFP`, `TZ`) until its first use in a run, which loads its registers (the host's
//! go to this CPU's scratch); `put` swaps them back only if that happened. The script is
//! `guest::fpsimd` (host-tested); this module gives it the registers ([`VectorRegs`] for
//! [`Cpu`]) and the FP/SIMD save and restore; the SVE ones are in [`super::sve`].

use super::{scratch, sve, HostSaved};
use crate::arch::regs::isb;
use crate::arch::Cpu;
use crate::guest::fpsimd::{self, Lazy};
use crate::guest::vcpu::{FpRegs, SveRegs, VcpuCtx};
use crate::hw::VectorRegs;
use aarch64_cpu::registers::*;

// FP/SIMD save and restore. EL2 is built without FP (softfloat); these and the SVE ones in
// `super::sve` are its only vector instructions, run with CPTR_EL2.TFP clear. x0 = &FpRegs
// (V0..V31 at 0, FPSR at 512, FPCR 520).
core::arch::global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
.global __fp_save
__fp_save:
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mrs x1, fpsr
    mrs x2, fpcr
    add x0, x0, #512
    stp x1, x2, [x0]
    ret
.global __fp_restore
__fp_restore:
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    add x0, x0, #512
    ldp x1, x2, [x0]
    msr fpsr, x1
    msr fpcr, x2
    ret
"#
);

extern "C" {
    /// Stores V0..V31, FPSR, FPCR at `to`. Needs `CPTR_EL2.TFP` clear.
    fn __fp_save(to: *mut FpRegs);
    /// Loads V0..V31, FPSR, FPCR from `from`. Needs `CPTR_EL2.TFP` clear.
    fn __fp_restore(from: *const FpRegs);
}

impl VectorRegs for Cpu {
    fn write_cptr(&self, cptr: u64) {
        CPTR_EL2.set(cptr);
    }

    fn isb(&self) {
        isb();
    }

    fn write_zcr_el2(&self, zcr: u64) {
        sve::write_zcr_el2(zcr);
    }

    fn fp_save(&self, to: &mut FpRegs) {
        // SAFETY: the script (`guest::fpsimd`) calls this only with CPTR_EL2.TFP clear and in
        // force; `to` is a valid FpRegs.
        unsafe { __fp_save(to) }
    }

    fn fp_restore(&self, from: &FpRegs) {
        // SAFETY: as `fp_save`.
        unsafe { __fp_restore(from) }
    }

    fn sve_save(&self, to: &mut SveRegs) {
        sve::save(to);
    }

    fn sve_restore(&self, from: &SveRegs) {
        sve::restore(from);
    }

    fn sve_zero(&self) {
        sve::zero();
    }
}

/// Load: nothing moves yet; the guest's traps are remembered for its first use.
pub(super) fn load_guest(guest_cptr: u64) -> Lazy {
    fpsimd::load(guest_cptr)
}

/// The guest's first FP/SIMD (or, with SVE, SVE) use in this run: untrap, host's registers
/// out, guest's in. `false` if already loaded.
pub(super) fn first_use(ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
    fpsimd::first_use(&Cpu, &mut saved.fp, ctx, &mut scratch().fp)
}

/// Put: the guest's registers out and the host's back, if they moved.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Lazy) {
    fpsimd::put(&Cpu, saved, ctx, &scratch().fp);
}
