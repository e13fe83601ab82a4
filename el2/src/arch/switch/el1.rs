//! EL1 (and EL0) state every world switch moves: the system registers of
//! [`shared_abi::reg::SYSREGS`], `SP_EL0`, `SP_EL1`, `ELR_EL1` and `SPSR_EL1`. Plain EL1&0
//! state, never trapped at EL2, in effect from the next `ERET`.

use super::sysreg_bank;
use crate::guest::vcpu::{VcpuCtx, NR_SYSREGS};
use aarch64_cpu::registers::*;

/// The EL1 (and EL0) context every world switch moves: plain EL1&0 state, never trapped at EL2.
macro_rules! el1_sysregs {
    ($($name:literal),* $(,)?) => {
        /// Names of the switched registers, in context order (checked against
        /// `shared_abi::reg::SYSREGS` at boot).
        pub const SWITCHED_SYSREGS: [&str; NR_SYSREGS] = [$($name),*];
        sysreg_bank!(save_el1_sysregs, restore_el1_sysregs, NR_SYSREGS, [$($name),*]);
    };
}

el1_sysregs!(
    "sctlr_el1", "cpacr_el1", "ttbr0_el1", "ttbr1_el1", "tcr_el1", "afsr0_el1", "afsr1_el1",
    "esr_el1", "far_el1", "par_el1", "mair_el1", "amair_el1", "vbar_el1", "contextidr_el1",
    "tpidr_el1", "cntkctl_el1", "csselr_el1", "tpidr_el0", "tpidrro_el0", "cntv_ctl_el0",
    "cntv_cval_el0",
);

/// Checks, once at boot, that the assembly-side list matches the ABI's register list.
pub fn check_sysreg_tables() -> Result<(), &'static str> {
    for (a, (b, _)) in SWITCHED_SYSREGS.iter().zip(shared_abi::reg::SYSREGS.iter()) {
        if !a.eq_ignore_ascii_case(b) {
            return Err("world-switch register list does not match shared_abi::reg::SYSREGS");
        }
    }
    Ok(())
}

/// The host's EL1 state while a guest's is loaded.
pub(super) struct Saved {
    sys: [u64; NR_SYSREGS],
    sp_el0: u64,
    sp_el1: u64,
    elr_el1: u64,
    spsr_el1: u64,
}

impl Saved {
    pub(super) const ZERO: Self = Self { sys: [0; NR_SYSREGS], sp_el0: 0, sp_el1: 0, elr_el1: 0, spsr_el1: 0 };
}

/// Load, first step: saves the host's EL1 state into `out`, this CPU's scratch area, written in
/// place (returned
/// by value, the 25 values were copied once more whenever the compiler built them on the stack
/// first).
pub(super) fn save_host(out: &mut Saved) {
    save_el1_sysregs(&mut out.sys);
    (out.sp_el0, out.sp_el1, out.elr_el1, out.spsr_el1) = (SP_EL0.get(), SP_EL1.get(), ELR_EL1.get(), SPSR_EL1.get());
}

/// Load, last step (and after EL2 edited the context while loaded): the guest's EL1 state in.
pub(super) fn load_guest(ctx: &VcpuCtx) {
    restore_el1_sysregs(&ctx.sys);
    SP_EL0.set(ctx.sp_el0);
    SP_EL1.set(ctx.sp_el1);
    ELR_EL1.set(ctx.elr_el1);
    SPSR_EL1.set(ctx.spsr_el1);
}

/// Put, first step (and whenever EL2 edits the loaded guest's context): the guest's EL1 state
/// out.
pub(super) fn save_guest(ctx: &mut VcpuCtx) {
    save_el1_sysregs(&mut ctx.sys);
    (ctx.sp_el0, ctx.sp_el1, ctx.elr_el1, ctx.spsr_el1) = (SP_EL0.get(), SP_EL1.get(), ELR_EL1.get(), SPSR_EL1.get());
}

/// Put: the host's EL1 state back, with its virtual timer disabled.
pub(super) fn restore_host(saved: &mut Saved) {
    // The guest's CNTV_CTL_EL0/CNTV_CVAL_EL0 are saved (save_guest): the host gets its EL1
    // registers back with the virtual timer disabled, so the guest's timer can never keep the
    // physical PPI 27 asserted to the host (the host injects the guest's virtual PPI 27 from the
    // exit record's deadline, unless linked: EL2 delivers it during runs). No barrier of its
    // own: the ISB at the end of put makes
    // ENABLE = 0 effective before EL2 continues, and the timer's output is a level, so nothing
    // latched stays pending.
    crate::cpu::controls::host_el1_at_put(&mut saved.sys);
    restore_el1_sysregs(&saved.sys);
    SP_EL0.set(saved.sp_el0);
    SP_EL1.set(saved.sp_el1);
    ELR_EL1.set(saved.elr_el1);
    SPSR_EL1.set(saved.spsr_el1);
}
