//! Self-hosted debug, trace and the PMU, as the guest and the host must see them: the guest's
//! own `MDSCR_EL1` and, once it uses them, its breakpoints and watchpoints; trace prohibited
//! (FEAT_TRF); the host's counters stopped for a protected guest.
//!
//! The breakpoint and watchpoint registers switch lazily, as KVM does
//! ([`crate::guest::vcpu::DebugRegs`]): a run starts with them trapped (`MDCR_EL2.TDA`, from
//! `guest_controls`) and the host's in the CPU, harmless while the guest's `MDSCR_EL1` enables
//! no breakpoint or watchpoint events; they go *live* (the guest's in the CPU, untrapped) at
//! load when the guest's `MDSCR_EL1` enables those events, or at the guest's first access
//! ([`sync`]). Every register this CPU implements moves, not only the VM's advertised count:
//! live, the guest reaches them all, and none of the host's or another guest's may remain.
//!
//! No barrier of their own: the ERET into the guest is context synchronising, so what load
//! and [`sync`] write is in force from the guest's next instruction; trace is prohibited for
//! the whole run, so put has nothing to flush (TSB CSYNC) before restoring the host's
//! TRFCR_EL1, and put's final ISB puts the host's values back in force before EL2 continues.
//! EL2 itself takes no debug exception from the guest's registers: with `MDCR_EL2.TDE` and
//! `HCR_EL2.TGE` clear they target EL1, and the Arm ARM generates none at a higher exception
//! level than their target, whatever `HMC` a guest writes.

use super::scratch;
use crate::arch::sysreg::{PMCNTENCLR_EL0, PMCNTENSET_EL0, TRFCR_EL1};
use crate::cpu::controls::{mdcr, GuestControls};
use crate::guest::vcpu::{DebugRegs, VcpuCtx, DEBUG_SLOTS, MDSCR_IN_CPU};
use aarch64_cpu::registers::*;

/// The host's values, where the run changed them.
pub(super) struct Saved {
    mdscr: u64,
    /// `TRFCR_EL1`, if trace was prohibited for the run.
    trfcr: Option<u64>,
    /// `PMCNTENSET_EL0`, if the host's counters were stopped for a protected run.
    pmcnten: Option<u64>,
    /// The guest's `MDCR_EL2` (with `TDA`).
    guest_mdcr: u64,
    /// The guest's breakpoints and watchpoints are in the CPU (the host's in this CPU's
    /// scratch), untrapped.
    live: bool,
}

/// The host's breakpoint and watchpoint registers while a guest's are live: `DBGBVR`,
/// `DBGBCR`, `DBGWVR`, `DBGWCR`. (`MDCCINT_EL1` and the claim tags, which the lifted trap also
/// gives the guest, are not moved: QEMU 7.2 has no such registers at EL2, an UNDEF there;
/// docs/threat-model.md lists them.)
pub(super) struct HostDebug {
    regs: [[u64; DEBUG_SLOTS]; 4],
}

impl HostDebug {
    pub(super) const ZERO: Self = Self { regs: [[0; DEBUG_SLOTS]; 4] };
}

/// Defines a reader and a writer of `DBG<kind>R<n>_EL1` by index: each `n` is its own
/// instruction.
macro_rules! debug_bank {
    ($read:ident, $write:ident, $name:literal) => {
        debug_bank!($read, $write, $name, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    };
    ($read:ident, $write:ident, $name:literal, [$($i:literal),*]) => {
        /// Reads register `n` of the bank (`n` below this CPU's count; 0 otherwise).
        fn $read(n: usize) -> u64 {
            let mut v = 0;
            match n {
                $( $i => {
                    // SAFETY: reading a debug register this CPU implements (`n` below its
                    // count, checked by the caller) at EL2 has no side effect.
                    unsafe { core::arch::asm!(concat!("mrs {}, ", $name, $i, "_el1"), out(reg) v, options(nomem, nostack, preserves_flags)) }
                } )*
                _ => {}
            }
            v
        }

        /// Writes register `n` of the bank (`n` below this CPU's count; nothing otherwise).
        fn $write(n: usize, v: u64) {
            match n {
                $( $i => {
                    // SAFETY: a debug register this CPU implements; it acts on EL1&0 only (its
                    // exceptions target EL1, never EL2: module documentation).
                    unsafe { core::arch::asm!(concat!("msr ", $name, $i, "_el1, {}"), in(reg) v, options(nomem, nostack, preserves_flags)) }
                } )*
                _ => {}
            }
        }
    };
}

debug_bank!(read_bvr, write_bvr, "dbgbvr");
debug_bank!(read_bcr, write_bcr, "dbgbcr");
debug_bank!(read_wvr, write_wvr, "dbgwvr");
debug_bank!(read_wcr, write_wcr, "dbgwcr");

/// This CPU's breakpoints and watchpoints (`ID_AA64DFR0_EL1.BRPs`, `WRPs`, plus one).
fn cpu_slots() -> (usize, usize) {
    let dfr0 = ID_AA64DFR0_EL1.get();
    (((dfr0 >> 12) & 0xF) as usize + 1, ((dfr0 >> 20) & 0xF) as usize + 1)
}

/// Copies the CPU's breakpoint and watchpoint registers out.
fn save_regs(bvr: &mut [u64; DEBUG_SLOTS], bcr: &mut [u64; DEBUG_SLOTS], wvr: &mut [u64; DEBUG_SLOTS], wcr: &mut [u64; DEBUG_SLOTS]) {
    let (b, w) = cpu_slots();
    for n in 0..b {
        bvr[n] = read_bvr(n);
        bcr[n] = read_bcr(n);
    }
    for n in 0..w {
        wvr[n] = read_wvr(n);
        wcr[n] = read_wcr(n);
    }
}

/// Writes the CPU's breakpoint and watchpoint registers.
fn restore_regs(bvr: &[u64; DEBUG_SLOTS], bcr: &[u64; DEBUG_SLOTS], wvr: &[u64; DEBUG_SLOTS], wcr: &[u64; DEBUG_SLOTS]) {
    let (b, w) = cpu_slots();
    for n in 0..b {
        write_bvr(n, bvr[n]);
        write_bcr(n, bcr[n]);
    }
    for n in 0..w {
        write_wvr(n, wvr[n]);
        write_wcr(n, wcr[n]);
    }
}

/// The guest's registers into the CPU, the host's to the scratch; `MDCR_EL2.TDA` off.
fn go_live(d: &DebugRegs, saved: &mut Saved) {
    let host = &mut scratch().debug;
    let [hb, hc, hw, hwc] = &mut host.regs;
    save_regs(hb, hc, hw, hwc);
    restore_regs(&d.bvr, &d.bcr, &d.wvr, &d.wcr);
    MDSCR_EL1.set(d.mdscr_in_force());
    saved.live = true;
}

/// The guest's live registers back into `d` (of `MDSCR_EL1` only the bits EL2 put in the CPU:
/// `MDSCR_IN_CPU`), the host's into the CPU.
fn take_back(d: &mut DebugRegs) {
    save_regs(&mut d.bvr, &mut d.bcr, &mut d.wvr, &mut d.wcr);
    d.mdscr = (d.mdscr & !MDSCR_IN_CPU) | (MDSCR_EL1.get() & MDSCR_IN_CPU);
    let host = &scratch().debug;
    let [hb, hc, hw, hwc] = &host.regs;
    restore_regs(hb, hc, hw, hwc);
}

/// Load: the guest's `MDSCR_EL1` (its registers live if it enables their events), trace
/// prohibited and the host's counters stopped as `traps` says; `traps.mdcr` loses `TDA` for a
/// live start (the traps are written later in the load).
pub(super) fn load_guest(traps: &mut GuestControls, ctx: &VcpuCtx) -> Saved {
    let mut saved = Saved {
        mdscr: MDSCR_EL1.get(),
        trfcr: traps.no_trace.then(|| TRFCR_EL1.get()),
        pmcnten: traps.stop_host_counters.then(|| PMCNTENSET_EL0.get()),
        guest_mdcr: traps.mdcr,
        live: false,
    };
    if ctx.debug.live_from_entry() {
        go_live(&ctx.debug, &mut saved);
        traps.mdcr &= !mdcr::TDA;
    } else {
        MDSCR_EL1.set(ctx.debug.mdscr_in_force());
    }
    if saved.trfcr.is_some() {
        TRFCR_EL1.set(0);
    }
    if let Some(on) = saved.pmcnten {
        PMCNTENCLR_EL0.set(on);
    }
    saved
}

/// While loaded, after an emulated debug-register access ([`crate::hw::WorldSwitch::debug_sync`]).
pub(super) fn sync(ctx: &mut VcpuCtx, saved: &mut Saved, live: bool) {
    match (saved.live, live) {
        (false, true) => {
            go_live(&ctx.debug, saved);
            MDCR_EL2.set(saved.guest_mdcr & !mdcr::TDA);
        }
        (true, false) => {
            take_back(&mut ctx.debug);
            saved.live = false;
            MDCR_EL2.set(saved.guest_mdcr);
            MDSCR_EL1.set(ctx.debug.mdscr_in_force());
        }
        (false, false) => MDSCR_EL1.set(ctx.debug.mdscr_in_force()),
        (true, true) => {}
    }
}

/// Put: the guest's live registers saved, the host's values back.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.live {
        take_back(&mut ctx.debug);
    }
    if let Some(v) = saved.pmcnten {
        PMCNTENSET_EL0.set(v);
    }
    if let Some(v) = saved.trfcr {
        TRFCR_EL1.set(v);
    }
    MDSCR_EL1.set(saved.mdscr);
}
