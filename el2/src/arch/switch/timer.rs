//! The guest's timers: its virtual count (`CNTVOFF_EL2`, the VM's; the host runs with 0) and
//! the emulated EL1 physical timer's deadline on EL2's own physical timer (`CNTHP_*`). The
//! virtual timer's registers themselves are EL1 state ([`super::el1`]).

use crate::arch::sysreg::CNTHP_CVAL_EL2;
use crate::guest::timer::PTimer;
use crate::guest::vcpu::VcpuCtx;
use crate::hw::GuestConfig;
use aarch64_cpu::registers::*;

/// Load: the VM's virtual count, and the backing of its emulated physical timer.
pub(super) fn load_guest(cfg: &GuestConfig, ctx: &VcpuCtx) {
    // The VM's virtual count (CNTVCT = CNTPCT - CNTVOFF).
    CNTVOFF_EL2.set(cfg.cntvoff);
    back_ptimer(&ctx.ptimer);
}

/// While loaded: backs the guest's emulated EL1 physical timer `t` with EL2's own, so its
/// deadline ends the run (PPI 26 is routed to EL2 while a guest runs); off when `t` cannot
/// fire.
pub(super) fn back_ptimer(t: &PTimer) {
    // CNTHP counts the physical count, as the emulated timer does (no offset). No barrier:
    // the ERET back into the guest synchronises both writes before its next instruction, and
    // a stale setting until then can at worst end the run early (an IRQ exit).
    if t.deadline(0) == u64::MAX {
        CNTHP_CTL_EL2.set(0);
    } else {
        CNTHP_CVAL_EL2.set(t.cval);
        CNTHP_CTL_EL2.set(1);
    }
}

/// Put: the host's count has no offset, and EL2's physical timer backs only a running guest's
/// emulated timer: off for the host (the ISB at the end of put makes both effective, and the
/// timer's level output drops with it).
pub(super) fn put() {
    CNTVOFF_EL2.set(0);
    CNTHP_CTL_EL2.set(0);
}
