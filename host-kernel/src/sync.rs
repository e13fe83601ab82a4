//! The host's locks: `spin`'s mutex, waiting with `YIELD` ([`crate::arch::relax`]) instead of
//! its default `ISB`, so that a CPU spinning on a lock another CPU holds hands QEMU's
//! round-robin TCG the turn (under `-icount` too) rather than spinning to the next timer
//! deadline. EL2's locks do the same (`el2::sync`).

/// `spin`'s relax strategy for the host: [`crate::arch::relax`].
pub struct Yield;

impl spin::relax::RelaxStrategy for Yield {
    #[inline(always)]
    fn relax() {
        crate::arch::relax();
    }
}

/// The host's mutex: [`spin::mutex::Mutex`] waiting with [`Yield`].
pub type Mutex<T> = spin::mutex::Mutex<T, Yield>;
/// Its guard.
pub type MutexGuard<'a, T> = spin::mutex::MutexGuard<'a, T>;
