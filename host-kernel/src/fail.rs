//! Reporting failure so that QEMU's exit status says so.
//!
//! QEMU exits 0 on PSCI `SYSTEM_OFF` whatever happened before. To fail visibly, the host
//! reports a guest panic through the `pvpanic-pci` device (as a Linux guest would), which QEMU
//! started with `-action panic=exit-failure` turns into exit status 1. The device is found and
//! given a BAR by a minimal walk of PCI bus 0 through ECAM.

use crate::platform::Platform;
use core::sync::atomic::{AtomicU64, Ordering};

const PVPANIC_ID: u32 = 0x0011_1B36; // device 0x0011, vendor 0x1b36 (Red Hat, QEMU)
const PVPANIC_PANICKED: u8 = 1;

static PVPANIC: AtomicU64 = AtomicU64::new(0);

/// Finds the pvpanic device and maps its BAR 0, so a later failure can be reported.
pub fn init(plat: &Platform) {
    let (Some(ecam), Some(bar)) = (plat.ecam, plat.pci_mem32) else { return };
    for dev in 0..32u64 {
        let cfg = ecam + (dev << 15);
        // SAFETY: ECAM configuration space of bus 0, device `dev`, function 0, from the device
        // tree; reading the ID register has no side effects.
        let id = unsafe { core::ptr::read_volatile(cfg as *const u32) };
        if id == PVPANIC_ID {
            // SAFETY: programming BAR 0 (offset 0x10) into the PCI memory window and enabling
            // memory decoding (command register bit 1) of the device just identified.
            unsafe {
                core::ptr::write_volatile((cfg + 0x10) as *mut u32, bar as u32);
                let cmd = core::ptr::read_volatile((cfg + 0x04) as *const u16);
                core::ptr::write_volatile((cfg + 0x04) as *mut u16, cmd | 0x2);
            }
            PVPANIC.store(bar, Ordering::SeqCst);
            return;
        }
    }
}

/// Prints `why`, reports the failure, and stops.
pub fn fail(why: core::fmt::Arguments<'_>) -> ! {
    crate::console::print_unlocked(format_args!("host: FAIL: {why}\n"));
    let bar = PVPANIC.load(Ordering::SeqCst);
    if bar != 0 {
        // SAFETY: the pvpanic BAR set up by `init`; writing PANICKED makes QEMU exit.
        unsafe { core::ptr::write_volatile(bar as *mut u8, PVPANIC_PANICKED) };
    }
    halt()
}

/// Stops this CPU.
pub fn halt() -> ! {
    loop {
        crate::arch::wfe();
    }
}

/// Fails the run ([`fail()`]) with the message if `$cond` is false.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail::fail(format_args!($($arg)*));
        }
    };
}
