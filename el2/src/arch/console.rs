//! EL2's console: a write-only PL011 driver and the `log` backend.
//!
//! The UART is shared with the host, which may reprogram or disable it at any time. So EL2
//! never waits on it without bound: if the transmit FIFO stays full for [`TX_SPIN_LIMIT`]
//! polls, the character is dropped. A hostile host can silence EL2's log, never stall EL2.
//! (A dedicated UART for EL2 would remove even that; QEMU's `virt` has one only with
//! `secure=on`.)

use crate::arch;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Polls of `UARTFR.TXFF` before a character is dropped.
pub const TX_SPIN_LIMIT: u32 = 100_000;
const UARTDR: u64 = 0x000;
const UARTFR: u64 = 0x018;
const UARTFR_TXFF: u32 = 1 << 5;

static UART_BASE: AtomicU64 = AtomicU64::new(0);
static LOCK: spin::mutex::Mutex<(), Yield> = spin::mutex::Mutex::new(());

/// The console lock's wait: `YIELD`, as `crate::sync`'s (which this layer does not import:
/// `sync` uses the arch layer).
struct Yield;

impl spin::relax::RelaxStrategy for Yield {
    #[inline(always)]
    fn relax() {
        arch::yield_hint();
    }
}

/// Starts using the PL011 at `base` (identity-mapped as Device memory in EL2's stage 1).
pub fn init(base: u64, level: log::LevelFilter) {
    UART_BASE.store(base, Ordering::Relaxed);
    // `set_logger` fails only if a logger is already set, which changes nothing here.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

fn putc(base: u64, c: u8) {
    for _ in 0..TX_SPIN_LIMIT {
        // SAFETY: `base` is the PL011 from the device tree, mapped as Device memory in EL2's
        // stage 1; UARTFR is a read-only register with no side effects.
        let fr = unsafe { core::ptr::read_volatile((base + UARTFR) as *const u32) };
        if fr & UARTFR_TXFF == 0 {
            // SAFETY: as above; writing UARTDR queues one character.
            unsafe { core::ptr::write_volatile((base + UARTDR) as *mut u32, c as u32) };
            return;
        }
    }
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let base = UART_BASE.load(Ordering::Relaxed);
        if base == 0 {
            return Ok(());
        }
        for b in s.bytes() {
            if b == b'\n' {
                putc(base, b'\r');
            }
            putc(base, b);
        }
        Ok(())
    }
}

/// Prints without taking the console lock: for the fatal paths, where the lock may be held
/// by the code that failed.
pub fn emergency(args: fmt::Arguments<'_>) {
    let _ = Uart.write_fmt(args);
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let _guard = LOCK.lock();
        let _ = writeln!(Uart, "el2[cpu{}] {}: {}", arch::cpu_index(), r.level(), r.args());
    }

    fn flush(&self) {}
}
