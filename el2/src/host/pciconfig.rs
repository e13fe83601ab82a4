//! PCI configuration space, kept from the host: no function may master memory.
//!
//! Place in the flow: the host data-abort handler in [`crate::host::trap`] hands a host access
//! to the ECAM (every page of it guarded, see [`crate::host::devices`]) to [`emulate`].
//!
//! **Why.** A PCI function with `Command.BusMasterEnable` set issues memory reads and writes
//! (DMA, and MSIs, which are memory writes) at addresses its driver chose, and no stage 2
//! checks them. QEMU has no IOMMU in front of `virt`'s PCI host bridge, so EL2 keeps bus
//! mastering off instead: the host enumerates and programs functions (BARs, memory and I/O
//! decoding, interrupts) as usual, but every write that covers the `Command` register has bit 2
//! cleared. With bus mastering off, a function or a bridge never initiates a memory request
//! upstream (PCI Local Bus 3.0 §6.2.2; PCIe Base 6.0 §7.5.1.1.3). Type 1 headers (bridges)
//! have the same bit at the same offset.
//!
//! **What.** A host load or store to the ECAM with a valid syndrome (`ESR_EL2.ISV`), of 1, 2
//! or 4 bytes, aligned, is performed by EL2 through its own Device mapping of the ECAM, with
//! the filter above on stores. Anything else (no `ISV`, 8 bytes, unaligned) gets the injected
//! abort any bad host access gets: ECAM accesses are at most 32 bits wide.

use crate::exception::syndrome::decode_mmio;
use crate::host::guarded::{perform, GuardedIo};
use crate::mem::addr::PhysRange;

/// Offset of the `Command` register in a function's configuration header (16 bits).
pub const COMMAND: u64 = 0x04;
/// `Command.BusMasterEnable`.
pub const COMMAND_BUS_MASTER: u64 = 1 << 2;

/// The value EL2 stores for a host store of `value` (`size` bytes at `offset` in a function's
/// 4 KiB of configuration space, aligned): without `BusMasterEnable` if the store covers the
/// `Command` register's low byte, unchanged otherwise.
pub const fn filter_write(offset: u64, size: u8, value: u64) -> u64 {
    let start = offset % 0x1000;
    if start <= COMMAND && COMMAND < start + size as u64 {
        value & !(COMMAND_BUS_MASTER << (8 * (COMMAND - start)))
    } else {
        value
    }
}

/// Performs a host data abort on the ECAM `ecam` for the host: `x` are its `x0..=x30`, `esr`
/// and `pa` what it trapped with (the host stage 2 is an identity map). `true`: done, the
/// caller steps the host over the instruction; `false`: inject an abort.
pub fn emulate(ecam: &PhysRange, esr: u64, pa: u64, x: &mut [u64; 31], io: &impl GuardedIo) -> bool {
    let Some(access) = decode_mmio(esr) else { return false };
    if !ecam.contains(crate::mem::addr::PhysAddr(pa)) || access.size > 4 || !pa.is_multiple_of(access.size as u64) {
        return false;
    }
    // SAFETY: `pa` lies in the ECAM, which boot mapped Device RW in EL2's stage 1, and is
    // aligned to the access size (1, 2 or 4 bytes).
    unsafe { perform(access, pa, x, |v| filter_write(pa, access.size, v), io) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::addr::PhysAddr;
    use core::cell::RefCell;
    use std::vec::Vec;

    const ECAM: PhysRange = PhysRange { start: PhysAddr(0x40_1000_0000), end: PhysAddr(0x40_2000_0000) };

    /// A data abort syndrome: `ISV`, `SAS` (log2 size), `SRT`, `WnR`.
    fn esr(isv: bool, sas: u64, srt: u64, write: bool) -> u64 {
        (0x24 << 26) | (1 << 25) | (isv as u64) << 24 | sas << 22 | srt << 16 | (write as u64) << 6 | 0b00_0111
    }

    #[derive(Default)]
    struct Log(RefCell<Vec<(char, u64, u8, u64)>>);
    impl GuardedIo for Log {
        unsafe fn read(&self, pa: PhysAddr, size: u8) -> u64 {
            self.0.borrow_mut().push(('r', pa.0, size, 0));
            0xFFFF_0147
        }
        unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64) {
            self.0.borrow_mut().push(('w', pa.0, size, value));
        }
    }

    #[test]
    fn bus_master_enable_never_reaches_a_function() {
        assert_eq!(filter_write(0x8004, 2, 0x0007), 0x0003, "Command, 16 bits: memory and I/O decoding stay");
        assert_eq!(filter_write(0x8004, 4, 0xFFFF_FFFF), 0xFFFF_FFFB, "Command and Status, 32 bits");
        assert_eq!(filter_write(0x8004, 1, 0x04), 0x00, "Command's low byte");
        assert_eq!(filter_write(0x8005, 1, 0xFF), 0xFF, "Command's high byte holds no BusMasterEnable");
        assert_eq!(filter_write(0x8006, 2, 0xFFFF), 0xFFFF, "Status");
        assert_eq!(filter_write(0x8010, 4, 0x1000_0004), 0x1000_0004, "a BAR");
        assert_eq!(filter_write(0x1_F004, 2, 0x4), 0, "every function of every bus");
    }

    #[test]
    fn valid_accesses_are_performed_and_others_refused() {
        let io = Log::default();
        let mut x = [0u64; 31];
        x[3] = 0x0006;
        assert!(emulate(&ECAM, esr(true, 1, 3, true), 0x40_1000_8004, &mut x, &io), "strh w3 to Command");
        assert!(emulate(&ECAM, esr(true, 2, 5, false), 0x40_1000_8000, &mut x, &io), "ldr w5 of the IDs");
        assert_eq!(x[5], 0xFFFF_0147);
        assert_eq!(io.0.borrow().as_slice(), &[('w', 0x40_1000_8004, 2, 0x0002), ('r', 0x40_1000_8000, 4, 0)]);
        assert!(!emulate(&ECAM, esr(false, 1, 3, true), 0x40_1000_8004, &mut x, &io), "no ISV");
        assert!(!emulate(&ECAM, esr(true, 3, 3, true), 0x40_1000_8000, &mut x, &io), "64 bits");
        assert!(!emulate(&ECAM, esr(true, 2, 3, true), 0x40_1000_8002, &mut x, &io), "unaligned");
        assert!(!emulate(&ECAM, esr(true, 2, 3, true), 0x40_2000_0000, &mut x, &io), "past the ECAM");
        assert_eq!(io.0.borrow().len(), 2);
    }
}
