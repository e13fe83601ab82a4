//! Self-hosted debug, trace and the PMU as the world switch moves them: the register file of
//! [`crate::guest::debug_switch`], which decides what moves when (tested on the host over a
//! fake register file).
//!
//! No barrier of their own: the ERET into the guest is context synchronising, so what load
//! and `sync` write is in force from the guest's next instruction; trace is prohibited for
//! the whole run, so put has nothing to flush (TSB CSYNC) before restoring the host's
//! TRFCR_EL1, and put's final ISB puts the host's values back in force before EL2 continues.
//! EL2 itself takes no debug exception from the guest's registers: with `MDCR_EL2.TDE` and
//! `HCR_EL2.TGE` clear they target EL1, and the Arm ARM generates none at a higher exception
//! level than their target, whatever `HMC` a guest writes.

use crate::arch::sysreg::{PMCNTENCLR_EL0, PMCNTENSET_EL0, TRFCR_EL1};
use crate::guest::debug_switch::{Bank, DebugCpu};
use aarch64_cpu::registers::*;

pub(super) use crate::guest::debug_switch::{load_guest, put, sync, HostDebug, Saved};

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
                    // count: `Regs::read`, the only caller, checks it) at EL2 has no side
                    // effect.
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
                    // SAFETY: a debug register this CPU implements (`Regs::write`, the only
                    // caller, checks `n` against its count); it acts on EL1&0 only (its
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

/// This CPU's debug and PMU registers.
pub(super) struct Regs;

impl Regs {
    /// How many registers of `bank` this CPU implements.
    fn count(&self, bank: Bank) -> usize {
        let (b, w) = self.slots();
        if matches!(bank, Bank::Bvr | Bank::Bcr) { b } else { w }
    }
}

impl DebugCpu for Regs {
    fn slots(&self) -> (usize, usize) {
        let dfr0 = ID_AA64DFR0_EL1.get();
        (((dfr0 >> 12) & 0xF) as usize + 1, ((dfr0 >> 20) & 0xF) as usize + 1)
    }

    fn read(&self, bank: Bank, n: usize) -> u64 {
        if n >= self.count(bank) {
            return 0; // no such register on this CPU: an access would UNDEF at EL2
        }
        match bank {
            Bank::Bvr => read_bvr(n),
            Bank::Bcr => read_bcr(n),
            Bank::Wvr => read_wvr(n),
            Bank::Wcr => read_wcr(n),
        }
    }

    fn write(&self, bank: Bank, n: usize, v: u64) {
        if n >= self.count(bank) {
            return;
        }
        match bank {
            Bank::Bvr => write_bvr(n, v),
            Bank::Bcr => write_bcr(n, v),
            Bank::Wvr => write_wvr(n, v),
            Bank::Wcr => write_wcr(n, v),
        }
    }

    fn mdscr(&self) -> u64 {
        MDSCR_EL1.get()
    }

    fn set_mdscr(&self, v: u64) {
        MDSCR_EL1.set(v);
    }

    fn set_mdcr_el2(&self, v: u64) {
        MDCR_EL2.set(v);
    }

    fn trfcr(&self) -> u64 {
        TRFCR_EL1.get()
    }

    fn set_trfcr(&self, v: u64) {
        TRFCR_EL1.set(v);
    }

    fn pmcntenset(&self) -> u64 {
        PMCNTENSET_EL0.get()
    }

    fn pmcnten_clear(&self, v: u64) {
        PMCNTENCLR_EL0.set(v);
    }

    fn pmcnten_set(&self, v: u64) {
        PMCNTENSET_EL0.set(v);
    }

    fn with_host<R>(&self, f: impl FnOnce(&mut HostDebug) -> R) -> R {
        f(&mut super::scratch().debug)
    }
}
