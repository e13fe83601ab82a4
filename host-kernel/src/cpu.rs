//! The host's CPUs: how many it handles, which one is running, which have come online.

use core::arch::asm;
use core::sync::atomic::AtomicBool;

/// Most CPUs the host handles.
pub const MAX_CPUS: usize = 8;

/// CPUs that have reported in, by index.
pub static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// This host CPU's index (kept in `TPIDR_EL1` by the entry code).
pub fn cpu_id() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack)) };
    v as usize % MAX_CPUS
}

/// The exception level the host runs at (`CurrentEL.EL`).
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}
