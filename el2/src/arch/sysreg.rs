//! Named accessors for the system registers `aarch64-cpu` does not name, so no call site spells
//! `S3_…`, and the list registers by index.
//!
//! Each is used only where its feature exists on this CPU (the callers check the CPU's
//! [`crate::cpu::controls::ControlFeatures`]); every access is at EL2 and has no side effect
//! beyond the register itself.

use aarch64_cpu::registers::*;

/// Reads `$r` (an `S<op0>_<op1>_C<n>_C<m>_<op2>` name or an architectural one).
macro_rules! mrs {
    ($r:literal) => {{
        let v: u64;
        // SAFETY: the callers read only registers that exist on this CPU (checked against its
        // features), at EL2, without side effects.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $r), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// Writes `$v` to `$r`.
macro_rules! msr {
    ($r:literal, $v:expr) => {
        // SAFETY: the callers write only registers that exist on this CPU, with values that
        // affect EL1&0 (which does not run until the next ERET) or restore the host's own.
        unsafe { core::arch::asm!(concat!("msr ", $r, ", {}"), in(reg) $v, options(nomem, nostack, preserves_flags)) }
    };
}


/// A system register by its Arm ARM name, with `get` and `set`.
macro_rules! sysregs {
    ($( $(#[$doc:meta])* $name:ident = $enc:literal; )*) => {
        $(
            $(#[$doc])*
            #[allow(non_camel_case_types)]
            pub(super) struct $name;
            // Not every register is both read and written.
            #[allow(dead_code)]
            impl $name {
                #[inline(always)]
                pub(super) fn get(&self) -> u64 {
                    mrs!($enc)
                }
                #[inline(always)]
                pub(super) fn set(&self, v: u64) {
                    msr!($enc, v)
                }
            }
        )*
    };
}

sysregs! {
    /// Trace filter control at EL1 (FEAT_TRF).
    TRFCR_EL1 = "S3_0_C1_C2_1";
    /// PMU counter enables, set view (FEAT_PMUv3).
    PMCNTENSET_EL0 = "S3_3_C9_C12_1";
    /// PMU counter enables, clear view.
    PMCNTENCLR_EL0 = "S3_3_C9_C12_2";
    /// EL0 thread ID for SME (FEAT_SME).
    TPIDR2_EL0 = "S3_3_C13_C0_5";
    /// EL2's physical timer compare value (the emulated EL1 physical timer's backing).
    CNTHP_CVAL_EL2 = "cnthp_cval_el2";
    /// Virtual deferred interrupt status: a guest's `DISR_EL1` under `HCR_EL2.AMO` (FEAT_RAS).
    VDISR_EL2 = "S3_4_C12_C1_1";
    /// The highest-priority pending Group 1 physical interrupt (GICv3 CPU interface; reading it
    /// acknowledges nothing).
    ICC_HPPIR1_EL1 = "S3_0_C12_C12_2";
    /// Generates a Group 1 SGI (GICv3 CPU interface).
    ICC_SGI1R_EL1 = "S3_0_C12_C11_5";
}

/// `ICH_LR<n>_EL2` for `n` < 16 (the caller names only list registers the CPU implements,
/// `ICH_VTR_EL2.ListRegs`).
pub(super) fn write_ich_lr(n: usize, v: u64) {
    match n {
        0 => ICH_LR0_EL2.set(v),
        1 => ICH_LR1_EL2.set(v),
        2 => ICH_LR2_EL2.set(v),
        3 => ICH_LR3_EL2.set(v),
        4 => ICH_LR4_EL2.set(v),
        5 => ICH_LR5_EL2.set(v),
        6 => ICH_LR6_EL2.set(v),
        7 => ICH_LR7_EL2.set(v),
        8 => ICH_LR8_EL2.set(v),
        9 => ICH_LR9_EL2.set(v),
        10 => ICH_LR10_EL2.set(v),
        11 => ICH_LR11_EL2.set(v),
        12 => ICH_LR12_EL2.set(v),
        13 => ICH_LR13_EL2.set(v),
        14 => ICH_LR14_EL2.set(v),
        _ => ICH_LR15_EL2.set(v),
    }
}

/// Reads `ICH_LR<n>_EL2` (as [`write_ich_lr`]).
pub(super) fn read_ich_lr(n: usize) -> u64 {
    match n {
        0 => ICH_LR0_EL2.get(),
        1 => ICH_LR1_EL2.get(),
        2 => ICH_LR2_EL2.get(),
        3 => ICH_LR3_EL2.get(),
        4 => ICH_LR4_EL2.get(),
        5 => ICH_LR5_EL2.get(),
        6 => ICH_LR6_EL2.get(),
        7 => ICH_LR7_EL2.get(),
        8 => ICH_LR8_EL2.get(),
        9 => ICH_LR9_EL2.get(),
        10 => ICH_LR10_EL2.get(),
        11 => ICH_LR11_EL2.get(),
        12 => ICH_LR12_EL2.get(),
        13 => ICH_LR13_EL2.get(),
        14 => ICH_LR14_EL2.get(),
        _ => ICH_LR15_EL2.get(),
    }
}
