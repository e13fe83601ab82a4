//! Named accessors for the system registers `aarch64-cpu` does not name (or that the assembler
//! knows only by encoding), so no call site spells `S3_…`.
//!
//! Each is used only where its feature exists on this CPU (the callers check the CPU's
//! [`crate::cpu::controls::ControlFeatures`]); every access is at EL2 and has no side effect
//! beyond the register itself.

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
    /// Debug monitor control: the guest runs with 0 (no host breakpoint, watchpoint or step).
    MDSCR_EL1 = "mdscr_el1";
    /// Trace filter control at EL1 (FEAT_TRF).
    TRFCR_EL1 = "S3_0_C1_C2_1";
    /// PMU counter enables, set view (FEAT_PMUv3).
    PMCNTENSET_EL0 = "S3_3_C9_C12_1";
    /// PMU counter enables, clear view.
    PMCNTENCLR_EL0 = "S3_3_C9_C12_2";
    /// EL0 thread ID for SME (FEAT_SME).
    TPIDR2_EL0 = "S3_3_C13_C0_5";
    /// EL2's physical timer control (the emulated EL1 physical timer's backing).
    CNTHP_CTL_EL2 = "cnthp_ctl_el2";
    /// EL2's physical timer compare value.
    CNTHP_CVAL_EL2 = "cnthp_cval_el2";
    /// Virtual GIC hypervisor control (`En`, maintenance interrupt enables).
    ICH_HCR_EL2 = "S3_4_C12_C11_0";
    /// Virtual GIC type: list registers, priority and preemption bits.
    ICH_VTR_EL2 = "S3_4_C12_C11_1";
    /// The virtual CPU interface's state as the guest's `ICC_*` accesses see it.
    ICH_VMCR_EL2 = "S3_4_C12_C11_7";
    /// Group 0 active priorities 0.
    ICH_AP0R0_EL2 = "S3_4_C12_C8_0";
    /// Group 0 active priorities 1.
    ICH_AP0R1_EL2 = "S3_4_C12_C8_1";
    /// Group 0 active priorities 2.
    ICH_AP0R2_EL2 = "S3_4_C12_C8_2";
    /// Group 0 active priorities 3.
    ICH_AP0R3_EL2 = "S3_4_C12_C8_3";
    /// Group 1 active priorities 0.
    ICH_AP1R0_EL2 = "S3_4_C12_C9_0";
    /// Group 1 active priorities 1.
    ICH_AP1R1_EL2 = "S3_4_C12_C9_1";
    /// Group 1 active priorities 2.
    ICH_AP1R2_EL2 = "S3_4_C12_C9_2";
    /// Group 1 active priorities 3.
    ICH_AP1R3_EL2 = "S3_4_C12_C9_3";
}

/// `ICH_LR<n>_EL2` for `n` < 16 (the caller names only list registers the CPU implements,
/// `ICH_VTR_EL2.ListRegs`).
pub(super) fn write_ich_lr(n: usize, v: u64) {
    match n {
        0 => msr!("S3_4_C12_C12_0", v),
        1 => msr!("S3_4_C12_C12_1", v),
        2 => msr!("S3_4_C12_C12_2", v),
        3 => msr!("S3_4_C12_C12_3", v),
        4 => msr!("S3_4_C12_C12_4", v),
        5 => msr!("S3_4_C12_C12_5", v),
        6 => msr!("S3_4_C12_C12_6", v),
        7 => msr!("S3_4_C12_C12_7", v),
        8 => msr!("S3_4_C12_C13_0", v),
        9 => msr!("S3_4_C12_C13_1", v),
        10 => msr!("S3_4_C12_C13_2", v),
        11 => msr!("S3_4_C12_C13_3", v),
        12 => msr!("S3_4_C12_C13_4", v),
        13 => msr!("S3_4_C12_C13_5", v),
        14 => msr!("S3_4_C12_C13_6", v),
        _ => msr!("S3_4_C12_C13_7", v),
    }
}

/// Reads `ICH_LR<n>_EL2` (as [`write_ich_lr`]).
pub(super) fn read_ich_lr(n: usize) -> u64 {
    match n {
        0 => mrs!("S3_4_C12_C12_0"),
        1 => mrs!("S3_4_C12_C12_1"),
        2 => mrs!("S3_4_C12_C12_2"),
        3 => mrs!("S3_4_C12_C12_3"),
        4 => mrs!("S3_4_C12_C12_4"),
        5 => mrs!("S3_4_C12_C12_5"),
        6 => mrs!("S3_4_C12_C12_6"),
        7 => mrs!("S3_4_C12_C12_7"),
        8 => mrs!("S3_4_C12_C13_0"),
        9 => mrs!("S3_4_C12_C13_1"),
        10 => mrs!("S3_4_C12_C13_2"),
        11 => mrs!("S3_4_C12_C13_3"),
        12 => mrs!("S3_4_C12_C13_4"),
        13 => mrs!("S3_4_C12_C13_5"),
        14 => mrs!("S3_4_C12_C13_6"),
        _ => mrs!("S3_4_C12_C13_7"),
    }
}
