//! Trap handling: what EL2 does when the host traps to it.
//!
//! Place in the flow: right after the vectors. Dispatches on `ESR_EL2.EC`:
//!
//! | EC | from the host | action |
//! |---|---|---|
//! | `HVC64` | a hypercall | [`Hyp::host_hvc`], result in `x0..=x3` |
//! | `SMC64` | `HCR_EL2.TSC` trap | the allow-list of [`crate::host::psci`]: intercept, forward to firmware, or refuse |
//! | `DABT_LOW` / `IABT_LOW` | stage-2 fault | map lazily if the host owns the page; a valid load or store to a guarded redistributor page: performed by EL2 ([`crate::host::gicr`]); else inject an abort |
//! | anything else | | inject UNDEF |
//!
//! Nothing the host does here is an EL2 error: host-caused events are logged at `debug!` at most.

use crate::arch::{self, Cpu, TrapFrame};
use crate::exception::syndrome::{ec, fault_ipa, Esr, FaultKind};
use crate::exception::inject::{inject_sync, Injection, TrapState};
use crate::hyp::Hyp;
use crate::mem::protect::HostFault;
use crate::platform::MAX_CPUS;
use crate::mem::pool::PagePool;
use crate::host::psci::{classify, HostSmc};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared_abi::{encode_result, HypError};

/// EL2's state, set once by the boot CPU before the host runs.
pub static HYP: spin::Once<Hyp<'static, PagePool>> = spin::Once::new();

/// Physical address of the secondary-CPU entry point, given to firmware on `CPU_ON`.
pub static SECONDARY_ENTRY: AtomicU64 = AtomicU64::new(0);

/// Handles a synchronous exception from the host. Called by the vector assembly.
pub extern "C" fn el2_lower_sync(frame: &mut TrapFrame) {
    let Some(hyp) = HYP.get() else {
        fatal(frame, "trap before EL2 state was set up");
    };
    let esr = Esr(arch::esr_el2());
    match esr.ec() {
        ec::HVC64 => {
            #[cfg(feature = "test-hooks")]
            if test_hooks(hyp, frame) {
                return;
            }
            let result = if esr.imm16() != 0 {
                Err(HypError::NotSupported)
            } else {
                let mut x = [0u64; 8];
                x.copy_from_slice(&frame.x[..8]);
                hyp.host_hvc(arch::cpu_index(), x, &Cpu)
            };
            frame.x[..4].copy_from_slice(&encode_result(result));
        }
        ec::SMC64 => {
            // A trapped SMC's preferred return address is the SMC itself: step over it.
            frame.elr += 4;
            host_smc(hyp, frame);
        }
        ec::DABT_LOW | ec::IABT_LOW => {
            let regs = arch::trap_regs();
            if matches!(esr.fault(), FaultKind::Translation(_)) {
                let ipa = fault_ipa(regs.hpfar, regs.far);
                match hyp.host_s2_fault(ipa, &Cpu) {
                    HostFault::Retry => return,
                    HostFault::Emulate if esr.ec() == ec::DABT_LOW => {
                        // A guarded redistributor page: EL2 performs a valid access itself
                        // (GICR_CTLR.EnableLPIs forced to 0) and steps over the instruction.
                        if let Some(rd) = &hyp.gicr {
                            if crate::host::gicr::emulate(rd, esr.0, ipa, &mut frame.x, &arch::RdMmio) {
                                frame.elr += 4;
                                return;
                            }
                        }
                    }
                    HostFault::Emulate | HostFault::Inject => {}
                }
            }
            log::debug!("host abort at {:#x} (ESR {:#x}): injecting", regs.far, regs.esr);
            let what = if esr.ec() == ec::DABT_LOW {
                Injection::DataAbort { write: esr.is_write() }
            } else {
                Injection::InstructionAbort
            };
            inject(frame, what, esr, regs.far);
        }
        _ => {
            log::debug!("host trap ESR {:#x} at {:#x}: injecting UNDEF", esr.0, frame.elr);
            inject(frame, Injection::Undef, esr, 0);
        }
    }
}

/// Test-only calls, compiled only with the `test-hooks` feature (a separate EL2 image that
/// only the test suite boots). `true` if the call was one of them (its result is in `frame`).
#[cfg(feature = "test-hooks")]
fn test_hooks(hyp: &Hyp<'static, PagePool>, frame: &mut TrapFrame) -> bool {
    if frame.x[0] == shared_abi::HypercallId::TestFault as u64 && frame.x[1] == 0 {
        // An EL2 data abort: address 0 is mapped in no EL2 stage-1 table.
        // SAFETY: deliberately faulting; the unexpected-exception path parks this CPU.
        unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
    }
    if frame.x[0] == shared_abi::HypercallId::TestCheckInvariants as u64 {
        let mem = hyp.mem.lock();
        let (pool_base, pool_size) = mem.tables().range();
        let layout = crate::invariants::Layout {
            pool: crate::mem::addr::PhysRange::from_size(pool_base, pool_size),
            fixmap: Some((arch::FIXMAP_VA, arch::FIXMAP_VA + MAX_CPUS as u64 * 4096)),
        };
        frame.x[..4].copy_from_slice(&match crate::invariants::check(hyp, &mem, &layout) {
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

fn inject(frame: &mut TrapFrame, what: Injection, esr: Esr, far: u64) {
    let t = TrapState { elr: frame.elr, spsr: frame.spsr, il: esr.il(), vbar_el1: arch::vbar_el1() };
    match inject_sync(what, t) {
        Some(i) => {
            arch::write_el1_exception(i.esr_el1, far, i.elr_el1, i.spsr_el1);
            frame.elr = i.elr_el2;
            frame.spsr = i.spsr_el2;
        }
        // The trap came from a state EL2 never creates (AArch32, EL2): an EL2 bug.
        None => fatal(frame, "cannot inject into the interrupted state"),
    }
}

fn host_smc(hyp: &Hyp<'static, PagePool>, frame: &mut TrapFrame) {
    let x = &mut frame.x;
    match classify([x[0], x[1], x[2], x[3]]) {
        HostSmc::CpuOn { target, entry, context } => {
            x[0] = match hyp.cpu_on_target(target) {
                Err(e) => e as u64,
                Ok((idx, mpidr)) => {
                    // The target CPU reads these after it has turned its MMU on, so ordinary
                    // coherent stores suffice; the SMC below orders them before the CPU starts.
                    hyp.cpu_boot[idx].entry.store(entry, Ordering::Release);
                    hyp.cpu_boot[idx].context.store(context, Ordering::Release);
                    let mut args = [0u64; 17];
                    // The platform's MPIDR for the CPU, not the host's raw value.
                    args[0] = mpidr;
                    args[1] = SECONDARY_ENTRY.load(Ordering::Relaxed);
                    args[2] = idx as u64;
                    arch::smc(smccc::psci::PSCI_CPU_ON_64, args)[0]
                }
            };
            x[1..4].fill(0);
        }
        HostSmc::MemProtect { enable } => {
            x[0] = hyp.host_mem_protect(enable, &Cpu) as u64;
            x[1..4].fill(0);
        }
        HostSmc::Answer(v) => {
            x[0] = v as u64;
            x[1..4].fill(0);
        }
        HostSmc::Forward => {
            let mut args = [0u64; 17];
            args.copy_from_slice(&x[1..18]);
            let r = arch::smc(x[0] as u32, args);
            x[..18].copy_from_slice(&r);
        }
    }
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

/// Reports an EL2 bug found while handling a trap, then stops this CPU.
fn fatal(frame: &TrapFrame, why: &str) -> ! {
    let cpu = arch::cpu_index() % MAX_CPUS;
    if !PANICKING[cpu].swap(true, Ordering::Relaxed) {
        let r = arch::trap_regs();
        crate::arch::console::emergency(format_args!(
            "EL2 FATAL: {why} on cpu{cpu}: ESR_EL2={:#x} FAR_EL2={:#x} ELR_EL2={:#x} SPSR_EL2={:#x}; machine stopped\n",
            r.esr, r.far, frame.elr, frame.spsr
        ));
    }
    arch::failstop::signal();
    arch::park()
}
