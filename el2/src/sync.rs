//! EL2's locks: `spin`'s mutex, waiting with `YIELD` instead of its default `ISB`
//! (`core::hint::spin_loop`). A CPU spinning on a lock another CPU holds then hands QEMU's
//! round-robin TCG the turn, so the holder runs; with `ISB` it spins until the next timer
//! deadline, which under `-icount` with no timer armed may be never (a 2-vCPU Linux guest on
//! 2 host CPUs stalled so: one CPU in `VCPU_SET_IRQ` spinning on the memory lock while the
//! other cleared a guest block's tags under it). The house rule for every wait of EL2 and the
//! host: `WFE`/`WFI`, or `YIELD` in the loop.

/// `spin`'s relax strategy for EL2: `YIELD` (`crate::arch::yield_hint`) on the
/// hardware, `spin_loop` in host tests.
pub struct Yield;

impl spin::relax::RelaxStrategy for Yield {
    #[inline(always)]
    fn relax() {
        #[cfg(all(target_arch = "aarch64", target_os = "none"))]
        crate::arch::yield_hint();
        #[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
        core::hint::spin_loop();
    }
}

/// EL2's mutex: [`spin::mutex::Mutex`] waiting with [`Yield`].
pub type Mutex<T> = spin::mutex::Mutex<T, Yield>;
