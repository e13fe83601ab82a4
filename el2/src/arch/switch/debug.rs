//! Self-hosted debug, trace and the PMU, which the guest must neither see nor be seen by:
//! `MDSCR_EL1` = 0 for the run (no host breakpoint, watchpoint or step fires in the guest),
//! trace prohibited (FEAT_TRF), the host's counters stopped for a protected guest.
//!
//! No barrier of their own: the ERET into the guest is context synchronising, so MDSCR_EL1 = 0,
//! TRFCR_EL1 = 0 and the stopped counters are in force from the guest's first instruction;
//! trace is prohibited for the whole run, so put has nothing to flush (TSB CSYNC) before
//! restoring the host's TRFCR_EL1, and put's final ISB puts the host's values back in force
//! before EL2 continues.

use crate::arch::sysreg::{PMCNTENCLR_EL0, PMCNTENSET_EL0, TRFCR_EL1};
use aarch64_cpu::registers::*;
use crate::cpu::controls::GuestControls;

/// The host's values, where the run changed them.
pub(super) struct Saved {
    mdscr: u64,
    /// `TRFCR_EL1`, if trace was prohibited for the run.
    trfcr: Option<u64>,
    /// `PMCNTENSET_EL0`, if the host's counters were stopped for a protected run.
    pmcnten: Option<u64>,
}

/// Load: debug, trace and counters quiet for the guest, as `traps` says.
pub(super) fn load_guest(traps: &GuestControls) -> Saved {
    let saved = Saved {
        mdscr: MDSCR_EL1.get(),
        trfcr: traps.no_trace.then(|| TRFCR_EL1.get()),
        pmcnten: traps.stop_host_counters.then(|| PMCNTENSET_EL0.get()),
    };
    MDSCR_EL1.set(0);
    if saved.trfcr.is_some() {
        TRFCR_EL1.set(0);
    }
    if let Some(on) = saved.pmcnten {
        PMCNTENCLR_EL0.set(on);
    }
    saved
}

/// Put: the host's values back.
pub(super) fn put(saved: &Saved) {
    if let Some(v) = saved.pmcnten {
        PMCNTENSET_EL0.set(v);
    }
    if let Some(v) = saved.trfcr {
        TRFCR_EL1.set(v);
    }
    MDSCR_EL1.set(saved.mdscr);
}
