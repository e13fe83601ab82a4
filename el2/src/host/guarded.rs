//! Loads and stores EL2 performs for the host on a device page it keeps from the host's
//! stage 2 (a *guarded* page: see [`crate::host::devices`]), after the page's own module
//! ([`crate::host::gicr`], [`crate::host::pciconfig`]) has decoded and filtered them.

use crate::exception::syndrome::MmioAccess;
use crate::mem::addr::PhysAddr;

/// Loads and stores EL2 performs for the host on a guarded page: the arch layer on the
/// machine, a fake in tests.
pub trait GuardedIo {
    /// Reads `size` (1, 2, 4 or 8) bytes at `pa`.
    ///
    /// # Safety
    /// `pa` lies in a guarded page that boot mapped Device in EL2's stage 1, behind which a
    /// device answers, and is aligned to `size`.
    unsafe fn read(&self, pa: PhysAddr, size: u8) -> u64;
    /// Writes the low `size` (1, 2, 4 or 8) bytes of `value` at `pa`.
    ///
    /// # Safety
    /// As for [`GuardedIo::read`].
    unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64);
}

/// Performs the host's load or store `access` at `pa` for it: a store writes `filter` of the
/// value of the register it names (`x` are the host's `x0..=x30`; register 31 is XZR), a load
/// puts what it read into that register.
///
/// # Safety
/// As for [`GuardedIo::read`]: the caller's guard checked `pa` and its alignment.
pub unsafe fn perform(access: MmioAccess, pa: u64, x: &mut [u64; 31], filter: impl FnOnce(u64) -> u64, io: &impl GuardedIo) {
    let reg = access.reg as usize;
    if access.write {
        let value = filter(access.write_value(x.get(reg).copied().unwrap_or(0)));
        // SAFETY: the caller's contract.
        unsafe { io.write(PhysAddr(pa), access.size, value) };
    } else {
        // SAFETY: the caller's contract.
        let raw = unsafe { io.read(PhysAddr(pa), access.size) };
        if let Some(r) = x.get_mut(reg) {
            *r = access.read_value(raw);
        }
    }
}
