//! The host's console: the PL011 from the device tree (the same one EL2 writes to).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

static BASE: AtomicU64 = AtomicU64::new(0x0900_0000);
static LOCK: crate::sync::Mutex<()> = crate::sync::Mutex::new(());

/// Uses the PL011 at `base`.
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

/// A writer to the UART (callers hold `LOCK` for whole lines).
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let base = BASE.load(Ordering::Relaxed);
        for b in s.bytes() {
            if b == b'\n' {
                put(base, b'\r');
            }
            put(base, b);
        }
        Ok(())
    }
}

fn put(base: u64, c: u8) {
    // SAFETY: `base` is the PL011 the device tree names; UARTFR (0x18) is read-only and
    // UARTDR (0x0) queues a character. The host's stage 2 maps it as Device memory.
    unsafe {
        while core::ptr::read_volatile((base + 0x18) as *const u32) & (1 << 5) != 0 {}
        core::ptr::write_volatile(base as *mut u32, c as u32);
    }
}

/// Writes raw bytes (a guest's console output) under the lock, `\n` as CR LF.
pub fn write_bytes(bytes: &[u8]) {
    let _g = LOCK.lock();
    let base = BASE.load(Ordering::Relaxed);
    for &b in bytes {
        if b == b'\n' {
            put(base, b'\r');
        }
        put(base, b);
    }
}

/// A character typed into the host's console, if one is waiting (`UARTFR.RXFE` clear).
pub fn try_read() -> Option<u8> {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: as in `put`: UARTFR is read-only; reading UARTDR pops the receive FIFO, which
    // only this function does.
    unsafe {
        if core::ptr::read_volatile((base + 0x18) as *const u32) & (1 << 4) != 0 {
            return None;
        }
        Some(core::ptr::read_volatile(base as *const u32) as u8)
    }
}

/// Prints one line atomically with respect to other host CPUs.
pub fn print(args: fmt::Arguments<'_>) {
    let _g = LOCK.lock();
    let _ = Uart.write_fmt(args);
}

/// Prints without the lock (for the failure path).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Uart.write_fmt(args);
}

/// `println!` for the host.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
