//! The shim between the vectors and the portable trap handling: it hands a host hypercall's
//! registers to [`crate::host::trap::handle_hvc`] and any other trap's, with `ESR_EL2`, to
//! [`crate::host::trap::handle_sync`], and stops the CPU on what EL2 cannot survive. Test builds
//! also serve the test hooks here.

use crate::arch::{self, Cpu, HvcFrame, TrapFrame};
use crate::exception::syndrome::Esr;
use crate::host::trap::{handle_hvc, handle_sync, HostRegs};
use crate::hyp::Hyp;
use crate::mem::pool::PagePool;
use crate::platform::MAX_CPUS;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// EL2's state, set once by the boot CPU before the host runs.
pub static HYP: spin::Once<Hyp<'static, PagePool>> = spin::Once::new();

/// Physical address of the secondary-CPU entry point, given to firmware on `CPU_ON`.
pub static SECONDARY_ENTRY: AtomicU64 = AtomicU64::new(0);

/// Handles a host hypercall, with `ESR_EL2` = `esr`. Called by the vector assembly.
pub extern "C" fn el2_host_hvc(frame: &mut HvcFrame, esr: u64) {
    let Some(hyp) = HYP.get() else {
        fatal("hypercall before EL2 state was set up", frame.x[0], frame.elr, frame.spsr);
    };
    let Some(x) = frame.x.first_chunk_mut::<8>() else {
        // Never: the frame holds 19 registers.
        fatal("hypercall frame too short", frame.x[0], frame.elr, frame.spsr);
    };
    #[cfg(feature = "test-hooks")]
    if test_hooks(hyp, x) {
        return;
    }
    handle_hvc(hyp, arch::cpu_index(), Esr(esr), x, &Cpu);
}

/// Handles any other synchronous exception from the host. Called by the vector assembly.
pub extern "C" fn el2_lower_sync(frame: &mut TrapFrame) {
    let Some(hyp) = HYP.get() else {
        fatal("trap before EL2 state was set up", frame.x[0], frame.elr, frame.spsr);
    };
    let esr = Esr(arch::esr_el2());
    let TrapFrame { x, elr, spsr, .. } = frame;
    let mut regs = HostRegs { x, elr, spsr };
    if handle_sync(hyp, arch::cpu_index(), esr, &mut regs, &Cpu, &arch::GuardedMmio).is_err() {
        // The trap came from a state EL2 never creates (AArch32, EL2): an EL2 bug.
        fatal("cannot inject into the interrupted state", frame.x[0], frame.elr, frame.spsr);
    }
}

/// Test-only calls, compiled only with the `test-hooks` feature (a separate EL2 image that
/// only the test suite boots). `true` if the call `x` was one of them (its result is in `x`).
#[cfg(feature = "test-hooks")]
fn test_hooks(hyp: &Hyp<'static, PagePool>, x: &mut [u64; 8]) -> bool {
    if x[0] == shared_abi::HypercallId::TestFault as u64 && x[1] == 0 {
        // An EL2 data abort: address 0 is mapped in no EL2 stage-1 table.
        // SAFETY: deliberately faulting; the unexpected-exception path parks this CPU.
        unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
    }
    if x[0] == shared_abi::HypercallId::TestCheckInvariants as u64 {
        let mem = hyp.mem.lock();
        let (pool_base, pool_size) = mem.tables().range();
        let layout = crate::invariants::Layout {
            pool: crate::mem::addr::PhysRange::from_size(pool_base, pool_size),
            fixmap: Some((arch::FIXMAP_VA, arch::FIXMAP_END)),
        };
        x[..4].copy_from_slice(&match crate::invariants::check(hyp, &mem, &layout) {
            Ok(pages) => [0, pages, 0, 0],
            Err(v) => {
                // A broken invariant is an EL2 bug: say so loudly (the test suite forbids it).
                log::error!("invariant violated: {v:?}");
                let (code, addr) = v.code_and_addr();
                [0, u64::MAX, code, addr]
            }
        });
        return true;
    }
    false
}

static PANICKING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Reports an exception EL2 did not expect, then stops this CPU. Called by the vector assembly
/// on this CPU's panic stack.
pub extern "C" fn el2_unexpected(frame: &TrapFrame, vector: u64) -> ! {
    let cpu = arch::cpu_index() % MAX_CPUS;
    if !PANICKING[cpu].swap(true, Ordering::Relaxed) {
        let r = arch::trap_regs();
        crate::arch::console::emergency(format_args!(
            "EL2 FATAL: unexpected exception (vector {vector}) on cpu{cpu}: ESR_EL2={:#x} FAR_EL2={:#x} ELR_EL2={:#x} SPSR_EL2={:#x} x0={:#x} x30={:#x}; machine stopped\n",
            r.esr, r.far, frame.elr, frame.spsr, frame.x[0], frame.x[30]
        ));
    }
    arch::failstop::signal();
    arch::park()
}

/// Reports an EL2 bug found while handling a trap (with the host's `x0`, `ELR_EL2` and
/// `SPSR_EL2` as saved), then stops this CPU.
fn fatal(why: &str, x0: u64, elr: u64, spsr: u64) -> ! {
    let cpu = arch::cpu_index() % MAX_CPUS;
    if !PANICKING[cpu].swap(true, Ordering::Relaxed) {
        let r = arch::trap_regs();
        crate::arch::console::emergency(format_args!(
            "EL2 FATAL: {why} on cpu{cpu}: ESR_EL2={:#x} FAR_EL2={:#x} ELR_EL2={:#x} SPSR_EL2={:#x} x0={x0:#x}; machine stopped\n",
            r.esr, r.far, elr, spsr
        ));
    }
    arch::failstop::signal();
    arch::park()
}
