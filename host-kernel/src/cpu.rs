//! The host's CPUs: how many it handles, which one is running, which have come online.

use crate::arch;
use core::sync::atomic::AtomicBool;

/// Most CPUs the host handles.
pub const MAX_CPUS: usize = 8;

/// CPUs that have reported in, by index.
pub static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// This host CPU's index (kept in `TPIDR_EL1` by the entry code).
pub fn cpu_id() -> usize {
    arch::tpidr_el1() as usize % MAX_CPUS
}

/// The exception level the host runs at (`CurrentEL.EL`).
pub fn current_el() -> u64 {
    (arch::current_el() >> 2) & 3
}
