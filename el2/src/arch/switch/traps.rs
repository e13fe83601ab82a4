//! EL2's configuration for the guest: its traps (`HCR_EL2`, `CPTR_EL2`, `MDCR_EL2`,
//! `CNTHCTL_EL2`, from [`crate::cpu::controls::guest_controls`]) and its stage 2 (`VTTBR_EL2`,
//! `VTCR_EL2`) and `VMPIDR_EL2`; the host's, back at put, from the copy each CPU keeps
//! ([`HostEl2`]).

use crate::arch::regs::cpu_index;
use crate::cpu::controls::{hcr, GuestControls};
use crate::hw::GuestConfig;
use crate::platform::MAX_CPUS;
use aarch64_cpu::registers::*;
use core::sync::atomic::{AtomicU64, Ordering};

/// A CPU's EL2 configuration for running the host, as `activate_host` set it: the host cannot
/// change any of these registers, and EL2 changes them only while a guest is loaded, or for a
/// moment that puts them back (`crate::arch::tlb` borrows `VTTBR_EL2`/`VTCR_EL2`, the SVE
/// probe at boot `CPTR_EL2`). So `put` restores them from here, and `load` need not read them
/// back each time.
pub struct HostEl2 {
    hcr: AtomicU64,
    cptr: AtomicU64,
    /// `MDCR_EL2` (the guest's traps are computed from it).
    mdcr: AtomicU64,
    cnthctl: AtomicU64,
    /// `VTCR_EL2` (also for the TLB maintenance that borrows the host's stage 2).
    pub(in crate::arch) vtcr: AtomicU64,
    vttbr: AtomicU64,
    vmpidr: AtomicU64,
}

/// Each CPU's [`HostEl2`].
pub static HOST_EL2: [HostEl2; MAX_CPUS] = [const {
    HostEl2 {
        hcr: AtomicU64::new(0),
        cptr: AtomicU64::new(0),
        mdcr: AtomicU64::new(0),
        cnthctl: AtomicU64::new(0),
        vtcr: AtomicU64::new(0),
        vttbr: AtomicU64::new(0),
        vmpidr: AtomicU64::new(0),
    }
}; MAX_CPUS];

impl HostEl2 {
    /// Records this CPU's host configuration, read back from the registers `activate_host`
    /// has just written.
    pub(in crate::arch) fn record(&self) {
        for (field, v) in [
            (&self.hcr, HCR_EL2.get()),
            (&self.cptr, CPTR_EL2.get()),
            (&self.mdcr, MDCR_EL2.get()),
            (&self.cnthctl, CNTHCTL_EL2.get()),
            (&self.vtcr, VTCR_EL2.get()),
            (&self.vttbr, VTTBR_EL2.get()),
            (&self.vmpidr, VMPIDR_EL2.get()),
        ] {
            field.store(v, Ordering::Relaxed);
        }
    }

    /// This CPU's record. `activate_host` makes it before the CPU first enters the host, so a
    /// `VCPU_RUN` on a CPU without one is an EL2 bug; restoring zeros at `put` would run the
    /// host without its stage 2, so the machine stops instead.
    pub(super) fn this_cpu() -> &'static Self {
        let cpu = cpu_index() % MAX_CPUS;
        let host = &HOST_EL2[cpu];
        if host.hcr.load(Ordering::Relaxed) & hcr::VM == 0 {
            crate::arch::console::emergency(format_args!("EL2 FATAL: cpu{cpu} runs a guest without its host configuration recorded; machine stopped\n"));
            crate::arch::failstop::signal();
            crate::arch::park();
        }
        host
    }

    /// `MDCR_EL2` for the host.
    pub(super) fn mdcr(&self) -> u64 {
        self.mdcr.load(Ordering::Relaxed)
    }
}

fn guest_vtcr(host: &HostEl2, cfg: &GuestConfig) -> u64 {
    stage2_vtcr(host.vtcr.load(Ordering::Relaxed), cfg.ipa_bits, cfg.start_level)
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
pub(super) fn load_guest(host: &HostEl2, hcr: u64, traps: &GuestControls, cfg: &GuestConfig) {
    HCR_EL2.set(hcr);
    CPTR_EL2.set(traps.cptr);
    MDCR_EL2.set(traps.mdcr);
    CNTHCTL_EL2.set(traps.cnthctl);
    VMPIDR_EL2.set(cfg.vmpidr);
    VTCR_EL2.set(guest_vtcr(host, cfg));
    VTTBR_EL2.set(cfg.vttbr);
}

/// Put: the host's stage 2 and traps back. (Host stage-1 state briefly pairs with the guest's
/// VMID before this; EL1 does not run in between, which is all the architecture requires.)
pub(super) fn restore_host(host: &HostEl2) {
    let get = |r: &AtomicU64| r.load(Ordering::Relaxed);
    VTTBR_EL2.set(get(&host.vttbr));
    VTCR_EL2.set(get(&host.vtcr));
    VMPIDR_EL2.set(get(&host.vmpidr));
    CNTHCTL_EL2.set(get(&host.cnthctl));
    MDCR_EL2.set(get(&host.mdcr));
    CPTR_EL2.set(get(&host.cptr));
    HCR_EL2.set(get(&host.hcr));
}
