//! Test probes: faults a scenario provokes on purpose at EL1, and a request that makes EL2
//! fault on a secondary CPU.

use crate::{hyp, println};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use host_kernel::entry::{Frame, SYNC_CURRENT_EL};

/// A fault a scenario provokes on purpose, and what was observed.
pub struct FaultProbe {
    armed: AtomicBool,
    count: AtomicUsize,
    esr: AtomicU64,
    far: AtomicU64,
}

/// The one fault probe (scenarios run on CPU 0 while probing).
pub static PROBE: FaultProbe = FaultProbe {
    armed: AtomicBool::new(false),
    count: AtomicUsize::new(0),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
};

impl FaultProbe {
    /// Runs `f` expecting exactly one synchronous exception; returns its `(ESR_EL1, FAR_EL1)`.
    pub fn expect(&self, f: impl FnOnce()) -> Option<(u64, u64)> {
        let before = self.count.load(Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
        f();
        self.armed.store(false, Ordering::SeqCst);
        (self.count.load(Ordering::SeqCst) == before + 1)
            .then(|| (self.esr.load(Ordering::SeqCst), self.far.load(Ordering::SeqCst)))
    }
}

/// The kernel's exception hook: takes the synchronous exception an armed probe expects.
pub fn exception(frame: &mut Frame, kind: u64, esr: u64, far: u64) -> bool {
    // Synchronous, current EL with SP_ELx: the only kind a probe provokes.
    if kind != SYNC_CURRENT_EL || !PROBE.armed.swap(false, Ordering::SeqCst) {
        return false;
    }
    PROBE.esr.store(esr, Ordering::SeqCst);
    PROBE.far.store(far, Ordering::SeqCst);
    PROBE.count.fetch_add(1, Ordering::SeqCst);
    if (esr >> 26) & 0x3F == 0x21 {
        // Instruction abort on a branch target: resume at the caller (x30).
        frame.return_to_caller();
    } else {
        frame.skip_instruction();
    }
    true
}

/// CPU index a scenario wants to make EL2 fault on (`u64::MAX`: none, or taken).
pub static FAULT_REQUEST: AtomicU64 = AtomicU64::new(u64::MAX - 1);
/// Set if the test-hook call returned (it must not, on a test EL2).
pub static FAULT_RETURNED: AtomicBool = AtomicBool::new(false);

/// Run by every secondary CPU's idle loop: makes the test-hook call if [`FAULT_REQUEST`] names
/// this CPU.
pub fn fault_hook(cpu: usize) {
    let cpu = cpu as u64;
    if FAULT_REQUEST.load(Ordering::SeqCst) == cpu {
        FAULT_REQUEST.store(u64::MAX, Ordering::SeqCst);
        println!("host: cpu{cpu} asks EL2 to take an unexpected exception (test hook)");
        let r = hyp::call(shared_abi::HypercallId::TestFault, &[0]);
        println!("host: cpu{cpu}: TEST_FAULT returned {r:?}");
        FAULT_RETURNED.store(true, Ordering::SeqCst);
    }
}
