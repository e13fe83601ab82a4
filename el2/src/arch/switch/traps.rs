//! EL2's configuration for the guest: its traps (`HCR_EL2`, `CPTR_EL2`, `MDCR_EL2`,
//! `CNTHCTL_EL2`, from [`crate::cpu::controls::guest_controls`]) and its stage 2 (`VTTBR_EL2`,
//! `VTCR_EL2`) and `VMPIDR_EL2`; the host's, back at put.

use crate::cpu::controls::GuestControls;
use crate::hw::GuestConfig;
use aarch64_cpu::registers::*;

/// The host's EL2 configuration.
pub(super) struct Saved {
    hcr: u64,
    cptr: u64,
    /// `MDCR_EL2` (the guest's traps are computed from it).
    pub(super) mdcr: u64,
    cnthctl: u64,
    vtcr: u64,
    vttbr: u64,
    vmpidr: u64,
}

/// Load, first step: the host's EL2 configuration out.
pub(super) fn save_host() -> Saved {
    Saved {
        hcr: HCR_EL2.get(),
        cptr: CPTR_EL2.get(),
        mdcr: MDCR_EL2.get(),
        cnthctl: CNTHCTL_EL2.get(),
        vtcr: VTCR_EL2.get(),
        vttbr: VTTBR_EL2.get(),
        vmpidr: VMPIDR_EL2.get(),
    }
}

fn guest_vtcr(cfg: &GuestConfig) -> u64 {
    stage2_vtcr(VTCR_EL2.get(), cfg.ipa_bits, cfg.start_level)
}

/// A guest stage 2's `VTCR_EL2`: the same walk attributes and PS as the host's `host_vtcr`;
/// only T0SZ (`ipa_bits`) and SL0 (`start_level`) differ.
pub(in crate::arch) fn stage2_vtcr(host_vtcr: u64, ipa_bits: u8, start_level: u8) -> u64 {
    let sl0 = match start_level {
        0 => 2,
        1 => 1,
        _ => 0,
    };
    (host_vtcr & !0xFF) | (64 - ipa_bits as u64) | sl0 << 6
}

/// Load: the guest's traps (with `hcr` as the other features left it) and stage 2. EL1&0
/// does not run until the ERET, so architecturally the order is free; this comes before the
/// guest's EL1 state so that guest stage-1 state is never paired with the host's VMID (what
/// speculative-AT errata would care about).
pub(super) fn load_guest(hcr: u64, traps: &GuestControls, cfg: &GuestConfig) {
    HCR_EL2.set(hcr);
    CPTR_EL2.set(traps.cptr);
    MDCR_EL2.set(traps.mdcr);
    CNTHCTL_EL2.set(traps.cnthctl);
    VMPIDR_EL2.set(cfg.vmpidr);
    VTCR_EL2.set(guest_vtcr(cfg));
    VTTBR_EL2.set(cfg.vttbr);
}

/// Put: the host's stage 2 and traps back. (Host stage-1 state briefly pairs with the guest's
/// VMID before this; EL1 does not run in between, which is all the architecture requires.)
pub(super) fn restore_host(saved: &Saved) {
    VTTBR_EL2.set(saved.vttbr);
    VTCR_EL2.set(saved.vtcr);
    VMPIDR_EL2.set(saved.vmpidr);
    CNTHCTL_EL2.set(saved.cnthctl);
    MDCR_EL2.set(saved.mdcr);
    CPTR_EL2.set(saved.cptr);
    HCR_EL2.set(saved.hcr);
}
