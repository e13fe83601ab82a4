//! Pointer-authentication keys: loaded at `load` under the eager policy (or a recent use),
//! otherwise at the guest's first trapped use (`HCR_EL2.API/APK`); `put` swaps back what moved.

use super::sysreg_bank;
use super::{scratch, HostSaved};
use crate::cpu::controls::hcr;
use crate::guest::vcpu::VcpuCtx;
use crate::hw::GuestConfig;
use aarch64_cpu::registers::*;

// APIAKeyLo/Hi, APIBKeyLo/Hi, APDAKeyLo/Hi, APDBKeyLo/Hi, APGAKeyLo/Hi (shared_abi::reg::PAUTH_KEYS).
// The keys only affect pointer-authentication instructions at EL1&0; EL2 itself is not built
// with pointer authentication, so it never uses the guest's keys.
sysreg_bank!(save_keys, restore_keys, 10, [
    "S3_0_C2_C1_0", "S3_0_C2_C1_1", "S3_0_C2_C1_2", "S3_0_C2_C1_3", "S3_0_C2_C2_0",
    "S3_0_C2_C2_1", "S3_0_C2_C2_2", "S3_0_C2_C2_3", "S3_0_C2_C3_0", "S3_0_C2_C3_1",
]);

/// `HCR_EL2.APK | HCR_EL2.API`: pointer-authentication keys and instructions untrapped.
const HCR_APK_API: u64 = hcr::APK | hcr::API;

/// Whether the guest's keys are loaded (the host's are in this CPU's scratch).
pub(super) struct Saved {
    loaded: bool,
}

/// Load: the guest's keys now if `cfg.pauth_now` (eager, or recently used), untrapped in `hcr`.
pub(super) fn load_guest(cfg: &GuestConfig, ctx: &VcpuCtx, hcr: &mut u64) -> Saved {
    if !cfg.pauth_now {
        return Saved { loaded: false };
    }
    save_keys(&mut scratch().keys);
    restore_keys(&ctx.pauth_keys);
    *hcr |= HCR_APK_API;
    Saved { loaded: true }
}

/// The guest's first pointer-authentication use in this run (lazy policy): keys in, untrapped.
/// `false` if already loaded.
pub(super) fn first_use(ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
    if saved.pauth.loaded {
        return false;
    }
    save_keys(&mut scratch().keys);
    restore_keys(&ctx.pauth_keys);
    saved.pauth.loaded = true;
    // In effect for the guest from the ERET that retries the trapped instruction.
    HCR_EL2.set(HCR_EL2.get() | HCR_APK_API);
    true
}

/// Put: the guest's keys out and the host's back, if they moved.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.loaded {
        save_keys(&mut ctx.pauth_keys);
        restore_keys(&scratch().keys);
    }
}
