//! SVE registers at EL2: save, restore and zero a vCPU's `Z0..Z31`, `P0..P15`, `FFR`, `FPSR`,
//! `FPCR` and `ZCR_EL1` at the current vector length, `ZCR_EL2`, and each CPU's probe of the
//! vector lengths it implements. The lazy switch that uses them is `guest::fpsimd`.
//!
//! EL2 is built for `aarch64-unknown-none-softfloat`: the compiler never emits FP/SIMD or SVE
//! instructions, and the assembler accepts these only inside this file's `global_asm!`, after
//! `.arch_extension sve`. Every entry point needs `CPTR_EL2.TZ` and `TFP` clear and in force
//! (an `ISB` after the write), or it takes an exception at EL2.

use super::super::regs::isb;
use crate::cpu::controls::cptr;
use crate::cpu::sve::VqSet;
use crate::guest::vcpu::SveRegs;
use aarch64_cpu::registers::*;

// x0 = &SveRegs. Z0..Z31 packed from offset 0 (`MUL VL` scales the index by the vector
// length), P0..P15 packed at P_OFFSET (`MUL VL` scales by the predicate length, VL / 8), FFR
// at FFR_OFFSET (through P0, which is reloaded after), FPSR, FPCR, ZCR_EL1 at FPSR_OFFSET.
// ZCR_EL1 by its encoding, S3_0_C1_C2_0.
core::arch::global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
.arch_extension sve
.global __sve_save
__sve_save:
    str z0, [x0, #0, mul vl]
    str z1, [x0, #1, mul vl]
    str z2, [x0, #2, mul vl]
    str z3, [x0, #3, mul vl]
    str z4, [x0, #4, mul vl]
    str z5, [x0, #5, mul vl]
    str z6, [x0, #6, mul vl]
    str z7, [x0, #7, mul vl]
    str z8, [x0, #8, mul vl]
    str z9, [x0, #9, mul vl]
    str z10, [x0, #10, mul vl]
    str z11, [x0, #11, mul vl]
    str z12, [x0, #12, mul vl]
    str z13, [x0, #13, mul vl]
    str z14, [x0, #14, mul vl]
    str z15, [x0, #15, mul vl]
    str z16, [x0, #16, mul vl]
    str z17, [x0, #17, mul vl]
    str z18, [x0, #18, mul vl]
    str z19, [x0, #19, mul vl]
    str z20, [x0, #20, mul vl]
    str z21, [x0, #21, mul vl]
    str z22, [x0, #22, mul vl]
    str z23, [x0, #23, mul vl]
    str z24, [x0, #24, mul vl]
    str z25, [x0, #25, mul vl]
    str z26, [x0, #26, mul vl]
    str z27, [x0, #27, mul vl]
    str z28, [x0, #28, mul vl]
    str z29, [x0, #29, mul vl]
    str z30, [x0, #30, mul vl]
    str z31, [x0, #31, mul vl]
    mov x9, #{p}
    add x1, x0, x9
    str p0, [x1, #0, mul vl]
    str p1, [x1, #1, mul vl]
    str p2, [x1, #2, mul vl]
    str p3, [x1, #3, mul vl]
    str p4, [x1, #4, mul vl]
    str p5, [x1, #5, mul vl]
    str p6, [x1, #6, mul vl]
    str p7, [x1, #7, mul vl]
    str p8, [x1, #8, mul vl]
    str p9, [x1, #9, mul vl]
    str p10, [x1, #10, mul vl]
    str p11, [x1, #11, mul vl]
    str p12, [x1, #12, mul vl]
    str p13, [x1, #13, mul vl]
    str p14, [x1, #14, mul vl]
    str p15, [x1, #15, mul vl]
    rdffr p0.b
    mov x9, #{ffr}
    add x2, x0, x9
    str p0, [x2]
    ldr p0, [x1]
    mrs x3, fpsr
    mrs x4, fpcr
    mrs x5, S3_0_C1_C2_0
    mov x9, #{fpsr}
    add x6, x0, x9
    stp x3, x4, [x6]
    str x5, [x6, #16]
    ret
.global __sve_restore
__sve_restore:
    mov x9, #{ffr}
    add x2, x0, x9
    ldr p0, [x2]
    wrffr p0.b
    mov x9, #{p}
    add x1, x0, x9
    ldr p0, [x1, #0, mul vl]
    ldr p1, [x1, #1, mul vl]
    ldr p2, [x1, #2, mul vl]
    ldr p3, [x1, #3, mul vl]
    ldr p4, [x1, #4, mul vl]
    ldr p5, [x1, #5, mul vl]
    ldr p6, [x1, #6, mul vl]
    ldr p7, [x1, #7, mul vl]
    ldr p8, [x1, #8, mul vl]
    ldr p9, [x1, #9, mul vl]
    ldr p10, [x1, #10, mul vl]
    ldr p11, [x1, #11, mul vl]
    ldr p12, [x1, #12, mul vl]
    ldr p13, [x1, #13, mul vl]
    ldr p14, [x1, #14, mul vl]
    ldr p15, [x1, #15, mul vl]
    ldr z0, [x0, #0, mul vl]
    ldr z1, [x0, #1, mul vl]
    ldr z2, [x0, #2, mul vl]
    ldr z3, [x0, #3, mul vl]
    ldr z4, [x0, #4, mul vl]
    ldr z5, [x0, #5, mul vl]
    ldr z6, [x0, #6, mul vl]
    ldr z7, [x0, #7, mul vl]
    ldr z8, [x0, #8, mul vl]
    ldr z9, [x0, #9, mul vl]
    ldr z10, [x0, #10, mul vl]
    ldr z11, [x0, #11, mul vl]
    ldr z12, [x0, #12, mul vl]
    ldr z13, [x0, #13, mul vl]
    ldr z14, [x0, #14, mul vl]
    ldr z15, [x0, #15, mul vl]
    ldr z16, [x0, #16, mul vl]
    ldr z17, [x0, #17, mul vl]
    ldr z18, [x0, #18, mul vl]
    ldr z19, [x0, #19, mul vl]
    ldr z20, [x0, #20, mul vl]
    ldr z21, [x0, #21, mul vl]
    ldr z22, [x0, #22, mul vl]
    ldr z23, [x0, #23, mul vl]
    ldr z24, [x0, #24, mul vl]
    ldr z25, [x0, #25, mul vl]
    ldr z26, [x0, #26, mul vl]
    ldr z27, [x0, #27, mul vl]
    ldr z28, [x0, #28, mul vl]
    ldr z29, [x0, #29, mul vl]
    ldr z30, [x0, #30, mul vl]
    ldr z31, [x0, #31, mul vl]
    mov x9, #{fpsr}
    add x6, x0, x9
    ldp x3, x4, [x6]
    ldr x5, [x6, #16]
    msr fpsr, x3
    msr fpcr, x4
    msr S3_0_C1_C2_0, x5
    ret
.global __sve_zero
__sve_zero:
    mov z0.d, #0
    mov z1.d, #0
    mov z2.d, #0
    mov z3.d, #0
    mov z4.d, #0
    mov z5.d, #0
    mov z6.d, #0
    mov z7.d, #0
    mov z8.d, #0
    mov z9.d, #0
    mov z10.d, #0
    mov z11.d, #0
    mov z12.d, #0
    mov z13.d, #0
    mov z14.d, #0
    mov z15.d, #0
    mov z16.d, #0
    mov z17.d, #0
    mov z18.d, #0
    mov z19.d, #0
    mov z20.d, #0
    mov z21.d, #0
    mov z22.d, #0
    mov z23.d, #0
    mov z24.d, #0
    mov z25.d, #0
    mov z26.d, #0
    mov z27.d, #0
    mov z28.d, #0
    mov z29.d, #0
    mov z30.d, #0
    mov z31.d, #0
    pfalse p0.b
    pfalse p1.b
    pfalse p2.b
    pfalse p3.b
    pfalse p4.b
    pfalse p5.b
    pfalse p6.b
    pfalse p7.b
    pfalse p8.b
    pfalse p9.b
    pfalse p10.b
    pfalse p11.b
    pfalse p12.b
    pfalse p13.b
    pfalse p14.b
    pfalse p15.b
    wrffr p0.b
    ret
.global __sve_rdvl
__sve_rdvl:
    rdvl x0, #1
    ret
"#,
    p = const SveRegs::P_OFFSET,
    ffr = const SveRegs::FFR_OFFSET,
    fpsr = const SveRegs::FPSR_OFFSET,
);

extern "C" {
    /// Stores the SVE registers, `FPSR`, `FPCR` and `ZCR_EL1` at `to`, at the current vector
    /// length. Clobbers x1..x6 and x9 (caller-saved).
    fn __sve_save(to: *mut SveRegs);
    /// Loads what `__sve_save` stores, at the current vector length.
    fn __sve_restore(from: *const SveRegs);
    /// Sets `Z0..Z31`, `P0..P15` and `FFR` to zero at the current vector length.
    fn __sve_zero();
    /// `RDVL`: the current vector length in bytes.
    fn __sve_rdvl() -> u64;
}

/// Saves a vCPU's SVE state (the module's precondition: SVE and FP/SIMD untrapped).
pub(super) fn save(to: &mut SveRegs) {
    // SAFETY: called by the lazy switch only with CPTR_EL2.TZ and TFP clear and in force;
    // `to` is a valid SveRegs with room for the architecture's largest length.
    unsafe { __sve_save(to) }
}

/// Loads a vCPU's SVE state (the module's precondition).
pub(super) fn restore(from: &SveRegs) {
    // SAFETY: as `save`; the assembly only reads `from`.
    unsafe { __sve_restore(from) }
}

/// Zeroes the SVE registers (the module's precondition).
pub(super) fn zero() {
    // SAFETY: as `save`; touches registers only.
    unsafe { __sve_zero() }
}

/// Writes `ZCR_EL2` (needs `CPTR_EL2.TZ` clear and in force). No ISB: the Arm ARM orders the
/// indirect reads of `ZCR_EL2.LEN` by later SVE instructions after the write, in program order.
pub(super) fn write_zcr_el2(zcr: u64) {
    // SAFETY: ZCR_EL2 (S3_4_C1_C2_0) only sizes SVE vectors at EL2 and below; with TZ clear
    // the access does not trap.
    unsafe { core::arch::asm!("msr S3_4_C1_C2_0, {}", in(reg) zcr, options(nomem, nostack, preserves_flags)) };
}

/// The vector lengths this CPU implements (as far as EL3 lets EL2 have them; none without
/// FEAT_SVE): `ZCR_EL2.LEN` from 15 down to 0, `RDVL` after each ([`VqSet::probe`]). Leaves
/// `CPTR_EL2` as it found it, and `ZCR_EL2.LEN` 0 (no one relies on its value: every SVE VM's
/// first use writes it).
pub(crate) fn lengths() -> VqSet {
    if (ID_AA64PFR0_EL1.get() >> 32) & 0xF == 0 {
        return VqSet::NONE;
    }
    let before = CPTR_EL2.get();
    CPTR_EL2.set(before & !(cptr::TZ | cptr::TFP));
    // The SVE and FP/SIMD traps are lifted, in force for the ZCR_EL2 writes and RDVL below.
    isb();
    let set = VqSet::probe(|len| {
        write_zcr_el2(len as u64);
        // SAFETY: SVE is untrapped (above); RDVL only reads the vector length.
        unsafe { __sve_rdvl() }
    });
    CPTR_EL2.set(before);
    // The caller's traps are back in force before it goes on.
    isb();
    set
}
