//! The guest's `DISR_EL1`: with `HCR_EL2.AMO` set (always, for guests) its accesses reach
//! `VDISR_EL2`, which nothing traps, so it moves with the vCPU where FEAT_RAS makes it exist
//! (`GuestControls::switch_vdisr`; finding N4 of the security review).
//!
//! Nothing of the host's moves. The host runs with `AMO` clear, so its `DISR_EL1` is the
//! physical register, which no guest reaches (its accesses go to `VDISR_EL2`, and a physical
//! SError is taken to EL2 rather than deferred by its `ESB`) and EL2 never writes (no `ESB`,
//! `SCTLR_EL2.IESB` clear). `VDISR_EL2` acts only while `AMO` is set, and the host, at EL1,
//! cannot read it: the guest's value stays there after put, and every guest's load overwrites
//! it.

use crate::arch::sysreg::VDISR_EL2;
use crate::cpu::controls::GuestControls;
use crate::guest::vcpu::VcpuCtx;

/// Whether the guest's value was loaded.
pub(super) struct Saved(bool);

/// Load: the guest's `DISR_EL1` into `VDISR_EL2`, where the register exists. No barrier: it
/// is read only by the guest, after the ERET.
pub(super) fn load_guest(controls: &GuestControls, ctx: &VcpuCtx) -> Saved {
    if controls.switch_vdisr {
        VDISR_EL2.set(ctx.disr_el1);
    }
    Saved(controls.switch_vdisr)
}

/// Put: the guest's value back to its context.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.0 {
        ctx.disr_el1 = VDISR_EL2.get();
    }
}
