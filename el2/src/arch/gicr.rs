//! The MMIO behind [`crate::host::gicr::RdIo`]: EL2's loads and stores to the redistributor control
//! pages it keeps from the host (mapped Device RW, identity, in EL2's stage 1 at boot).
//!
//! No barrier: each access is one the host made (or the boot probe), performed in the host's
//! program order; Device-nGnRE keeps it ordered with the host's own accesses to the same
//! redistributor, as if the host had made it itself. The `ERET` back to the host follows.

use crate::mem::addr::PhysAddr;
use crate::host::gicr::RdIo;

/// Redistributor control pages through EL2's Device mapping.
pub struct RdMmio;

impl RdIo for RdMmio {
    unsafe fn read(&self, pa: PhysAddr, size: u8) -> u64 {
        // SAFETY: by the trait's contract `pa` lies in a present redistributor's guarded page,
        // which boot mapped Device RW at the same address, and is aligned to `size`; reading a
        // redistributor register touches no memory EL2 uses.
        unsafe {
            if size == 8 {
                core::ptr::read_volatile(pa.0 as *const u64)
            } else {
                core::ptr::read_volatile(pa.0 as *const u32) as u64
            }
        }
    }

    unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64) {
        // SAFETY: as in `read`; the value was filtered by `crate::host::gicr` (no `EnableLPIs`).
        unsafe {
            if size == 8 {
                core::ptr::write_volatile(pa.0 as *mut u64, value);
            } else {
                core::ptr::write_volatile(pa.0 as *mut u32, value as u32);
            }
        }
    }
}
