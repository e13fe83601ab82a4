//! The MMIO behind [`crate::host::guarded::GuardedIo`]: EL2's loads and stores to the device
//! pages it keeps from the host (the redistributor control pages and the PCI ECAM, mapped
//! Device RW, identity, in EL2's stage 1 at boot).
//!
//! No barrier: each access is one the host made (or the boot probe), performed in the host's
//! program order; Device-nGnRE keeps it ordered with the host's own accesses to the same
//! device, as if the host had made it itself. The `ERET` back to the host follows.

use crate::host::guarded::GuardedIo;
use crate::mem::addr::PhysAddr;

/// Guarded device pages through EL2's Device mapping.
pub struct GuardedMmio;

impl GuardedIo for GuardedMmio {
    unsafe fn read(&self, pa: PhysAddr, size: u8) -> u64 {
        // SAFETY: by the trait's contract `pa` lies in a guarded page, which boot mapped Device
        // RW at the same address, and is aligned to `size`; a device register read touches no
        // memory EL2 uses.
        unsafe {
            match size {
                1 => core::ptr::read_volatile(pa.0 as *const u8) as u64,
                2 => core::ptr::read_volatile(pa.0 as *const u16) as u64,
                4 => core::ptr::read_volatile(pa.0 as *const u32) as u64,
                _ => core::ptr::read_volatile(pa.0 as *const u64),
            }
        }
    }

    unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64) {
        // SAFETY: as in `read`; the value was filtered by the page's guard
        // (`crate::host::gicr`, `crate::host::pciconfig`).
        unsafe {
            match size {
                1 => core::ptr::write_volatile(pa.0 as *mut u8, value as u8),
                2 => core::ptr::write_volatile(pa.0 as *mut u16, value as u16),
                4 => core::ptr::write_volatile(pa.0 as *mut u32, value as u32),
                _ => core::ptr::write_volatile(pa.0 as *mut u64, value),
            }
        }
    }
}
