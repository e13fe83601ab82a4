//! `TPIDR2_EL0` (FEAT_SME): hidden from the guest's ID registers but not trappable without
//! FEAT_FGT, so it moves with the vCPU rather than leak between host and guests.

use super::ControlFeatures;
use crate::arch::sysreg::TPIDR2_EL0;
use crate::guest::vcpu::VcpuCtx;

/// The host's `TPIDR2_EL0`, if the CPU has FEAT_SME.
pub(super) struct Saved(Option<u64>);

/// Load: the guest's value in, where the register exists.
pub(super) fn load_guest(f: &ControlFeatures, ctx: &VcpuCtx) -> Saved {
    if !f.sme {
        return Saved(None);
    }
    let host = TPIDR2_EL0.get();
    TPIDR2_EL0.set(ctx.tpidr2);
    Saved(Some(host))
}

/// Put: the guest's value out, the host's back.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if let Some(v) = saved.0 {
        ctx.tpidr2 = TPIDR2_EL0.get();
        TPIDR2_EL0.set(v);
    }
}
