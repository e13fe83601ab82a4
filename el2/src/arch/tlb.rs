//! TLB maintenance and the barriers that publish page-table edits ([`Tlb`]).

use super::regs::{dsb_ish, dsb_ishst, isb};
use super::Cpu;
use crate::hw::Tlb;
use aarch64_cpu::registers::*;
use core::arch::asm;

impl Tlb for Cpu {
    fn hyp_s1_mapped(&self) {
        // New entries reach the walker before EL2 accesses the newly mapped page; the ISB
        // stops this CPU from having fetched a translation for it speculatively before.
        dsb_ishst();
        isb();
    }

    fn hyp_s1_unmapped(&self) {
        // The removals complete before the invalidation; the invalidation completes on every
        // CPU before the pages change hands; the ISB drops what this CPU fetched meanwhile.
        dsb_ishst();
        // SAFETY: invalidating EL2's own translations only costs refills.
        unsafe { asm!("tlbi alle2is", options(nostack, preserves_flags)) };
        dsb_ish();
        isb();
    }

    fn host_s2_mapped(&self) {
        // The ERET back to the host is context synchronising; the DSB makes the new entry
        // visible to the walkers of every CPU first.
        dsb_ishst();
    }

    fn host_s2_unmapped(&self) {
        // Entry removals complete, then all stage 1+2 entries of the host VMID (loaded in
        // VTTBR_EL2 while EL2 serves the host) are invalidated on all CPUs, and that completes.
        dsb_ishst();
        // SAFETY: TLB invalidation for the current VMID is always allowed at EL2.
        unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
        dsb_ish();
        isb();
    }

    fn host_s2_unmapped_from_guest(&self, host_vttbr: u64) {
        // A guest's VMID is loaded: the TLBI would miss the host's entries.
        let host_vtcr = super::switch::traps::HOST_EL2[super::cpu_index() % crate::platform::MAX_CPUS].vtcr.load(core::sync::atomic::Ordering::Relaxed);
        invalidate_vmid(host_vttbr, host_vtcr);
    }

    fn guest_s2_mapped(&self) {
        // Visible to the walkers before the guest retries; entering the guest synchronises.
        dsb_ishst();
    }

    fn flush_guest_tlb(&self, vttbr: u64, ia_bits: u8, start_level: u8) {
        // In a host call: the host's VTCR_EL2 is loaded, whose attributes a guest's shares.
        invalidate_vmid(vttbr, super::switch::traps::stage2_vtcr(VTCR_EL2.get(), ia_bits, start_level));
    }

    fn flush_guest_local(&self) {
        // `load` wrote the guest's VTTBR_EL2 without an ISB: make its VMID the one the TLBI
        // below acts on.
        isb();
        // SAFETY: invalidating the current VMID's EL1&0 entries and this CPU's instruction
        // cache is always allowed at EL2; it only costs refills.
        unsafe { asm!("tlbi vmalls12e1", "ic iallu", options(nostack, preserves_flags)) };
        // Local (non-shareable) completion suffices: only this CPU's TLB and I-cache were hit.
        // SAFETY: a barrier.
        unsafe { asm!("dsb nsh", options(nostack, preserves_flags)) };
        // The guest's first instruction is fetched after the invalidation (the ERET into the
        // guest synchronises too; this keeps the order independent of the caller).
        isb();
    }
}

/// Invalidates every stage 1+2 entry of the VMID in `vttbr` on all CPUs, whichever VMID is
/// loaded: `TLBI VMALLS12E1IS` acts on the VMID in `VTTBR_EL2`, so that stage 2 is borrowed
/// (`vttbr` with its own `vtcr`) and given back. Both registers move together, as KVM's
/// `__load_stage2` moves them: the PE may walk the EL1&0 regime speculatively while EL2 runs,
/// and a walk of one stage 2's tables under another's T0SZ/SL0 would cache nonsense under the
/// borrowed VMID. Entry removals complete before, and the invalidation on every CPU after.
fn invalidate_vmid(vttbr: u64, vtcr: u64) {
    let (loaded_vttbr, loaded_vtcr) = (VTTBR_EL2.get(), VTCR_EL2.get());
    dsb_ishst();
    VTCR_EL2.set(vtcr);
    VTTBR_EL2.set(vttbr);
    // The TLBI uses the borrowed VMID.
    isb();
    // SAFETY: TLB invalidation for the current VMID is always allowed at EL2.
    unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
    dsb_ish();
    VTTBR_EL2.set(loaded_vttbr);
    VTCR_EL2.set(loaded_vtcr);
    // Later stage-2 walks (and the ERET to whoever runs next) use the loaded stage 2 again.
    isb();
}
