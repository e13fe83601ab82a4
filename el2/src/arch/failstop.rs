//! Ending the whole machine as a failure when EL2 cannot go on.
//!
//! An exception EL2 did not expect, or a panic, means the trusted code is broken: no CPU may
//! carry on as if nothing happened, and a test run must fail at once rather than wait for its
//! timeout. On QEMU `virt` the way to say "this machine failed" is the `pvpanic-pci` device
//! (QEMU started with `-action panic=exit-failure` exits with status 1 when it is written).
//!
//! EL2 finds the device on bus 0 of the generic PCI host bridge at boot, before the host runs,
//! and maps its configuration page and one page of the 32-bit memory window for itself. At the
//! failure it programs BAR 0 itself (the host may have moved or disabled it: its values are
//! never trusted or used) and writes `PANICKED`. Without the device, the CPU just parks.

use core::sync::atomic::{AtomicU64, Ordering};

/// PCI vendor 0x1b36 (Red Hat, QEMU), device 0x0011 (pvpanic).
const PVPANIC_ID: u32 = 0x0011_1B36;
/// pvpanic event: the guest (here: the machine) panicked.
const PVPANIC_PANICKED: u8 = 1;
/// ECAM: each device's function 0 has 32 KiB of configuration space on bus 0 (`dev << 15`).
const ECAM_DEVICE_SHIFT: u64 = 15;
/// Configuration space: command register (memory decode is bit 1) and BAR 0.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_BAR0: u64 = 0x10;

/// The device's configuration space and the BAR address EL2 gives it (0: no device).
static CONFIG: AtomicU64 = AtomicU64::new(0);
static BAR: AtomicU64 = AtomicU64::new(0);

/// Looks for pvpanic on bus 0 of the ECAM at `ecam`; returns its configuration address.
///
/// # Safety
/// `ecam` must be the platform's ECAM (from the device tree), accessed with the MMU off (so
/// as Device memory) or through a Device mapping of its first 1 MiB.
pub unsafe fn probe(ecam: u64) -> Option<u64> {
    (0..32u64).map(|dev| ecam + (dev << ECAM_DEVICE_SHIFT)).find(|&cfg| {
        // SAFETY: per this function's contract; reading a vendor/device ID has no side effects.
        unsafe { core::ptr::read_volatile(cfg as *const u32) == PVPANIC_ID }
    })
}

/// Arms [`signal`]: the device's configuration page and the page EL2 puts its BAR at are
/// mapped Device, RW, in EL2's stage 1 (identity).
pub fn arm(config: u64, bar: u64) {
    CONFIG.store(config, Ordering::Relaxed);
    BAR.store(bar, Ordering::Relaxed);
}

/// Ends the machine as a failure, if the device was found; returns otherwise (the caller
/// parks the CPU).
pub fn signal() {
    let (config, bar) = (CONFIG.load(Ordering::Relaxed), BAR.load(Ordering::Relaxed));
    if config == 0 {
        return;
    }
    // SAFETY: `arm` was given the device's configuration page and a BAR page in the PCI memory
    // window, both mapped Device RW at EL2. Device-nGnRE accesses to one peripheral arrive in
    // program order, so the BAR and command writes take effect before the event write.
    unsafe {
        core::ptr::write_volatile((config + PCI_BAR0) as *mut u32, bar as u32);
        let command = core::ptr::read_volatile((config + PCI_COMMAND) as *const u16);
        core::ptr::write_volatile((config + PCI_COMMAND) as *mut u16, command | PCI_COMMAND_MEMORY);
        core::ptr::write_volatile(bar as *mut u8, PVPANIC_PANICKED);
    }
}
