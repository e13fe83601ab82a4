//! The vCPU that runs: what exit handlers are given ([`Me`]) and return ([`Next`]), and what
//! any of them may do to it: inject an exception, or stop its VM.

use crate::cpu::fwreg::FwRegs;
use crate::exception::inject::{inject_sync, Injection, TrapState};
use crate::exception::syndrome::Esr;
use crate::guest::vcpu::{SysReg, VcpuCtx};
use crate::hw::Hw;
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use shared_abi::msg::{kill, Exit};

/// The running vCPU, as exit handling needs it.
#[derive(Clone, Copy)]
pub struct Me<'f> {
    pub(super) vm_slot: usize,
    pub(super) index: usize,
    /// The CPU it runs on.
    pub(super) cpu: usize,
    pub(super) nr_vcpus: usize,
    /// The VM's firmware registers (frozen once it has run).
    pub(super) fw: &'f FwRegs,
    /// The VM is protected.
    pub(super) protected: bool,
    /// The VM has pointer authentication.
    pub(super) ptrauth: bool,
    /// The VM has MTE.
    pub(super) mte: bool,
    /// The VM's stage 2 forces Write-Back (`HCR_EL2.FWB`).
    pub(super) fwb: bool,
    /// The VM forwards some SMCCC calls to the host (`VM_SMCCC_FORWARD`, fixed once it ran).
    pub(super) forwards: bool,
    /// This `VCPU_RUN` has already cleaned the VM's memory for a set/way operation.
    pub(super) set_way_done: &'f core::cell::Cell<bool>,
}

pub enum Next {
    /// Enter the guest again.
    Resume,
    /// Return to the host with this exit.
    Exit(Exit),
}

/// Stops the VM (see [`kill_exit`]) with no detail.
pub fn kill<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, why: u64, ipa: u64) -> Next {
    Next::Exit(kill_exit(hyp, handle, why, ipa, 0))
}

/// Stops the VM for good (reason `why`, at `ipa`, with the reason's `detail`); the exit that
/// tells the host.
pub fn kill_exit<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, why: u64, ipa: u64, detail: u64) -> Exit {
    if let Ok((slot, vm)) = hyp.mem.lock().vms.lookup_mut(handle) {
        vm.killed = true;
        if let Some(run) = hyp.runs.get(slot) {
            run.stop();
        }
    }
    log::debug!("VM {handle:#x} stopped: reason {why}, IPA {ipa:#x}");
    Exit::Killed { reason: why, ipa, detail }
}

/// Anything EL2 does not emulate (other system registers, SVE, pointer authentication,
/// ...): the guest gets an UNDEF, as on hardware without it. The guest's EL1 registers are
/// live in the CPU: edit them through the context.
pub fn undef<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ctx: &mut VcpuCtx, esr: Esr, arch: &impl Hw) -> Next {
    arch.el1_to_ctx(ctx);
    let ok = inject_into_guest(ctx, Injection::Undef, esr, 0);
    arch.el1_from_ctx(ctx);
    if ok {
        Next::Resume
    } else {
        kill(hyp, handle, kill::BAD_EXCEPTION, 0)
    }
}

/// A synchronous external abort for the guest's access (syndrome `esr`, at virtual address
/// `far`): an instruction or data abort, as the access was, taken to the guest's EL1 like one
/// its own memory system reported. The guest's EL1 registers are live in the CPU.
pub fn external_abort<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ctx: &mut VcpuCtx, esr: Esr, far: u64, arch: &impl Hw) -> Next {
    let what = if esr.ec() == crate::exception::syndrome::ec::IABT_LOW { Injection::InstructionAbort } else { Injection::DataAbort { write: esr.is_write() } };
    arch.el1_to_ctx(ctx);
    let ok = inject_into_guest(ctx, what, esr, far);
    arch.el1_from_ctx(ctx);
    if ok {
        Next::Resume
    } else {
        kill(hyp, handle, kill::BAD_EXCEPTION, 0)
    }
}

/// Injects a synchronous exception into a guest that is not running (its EL1 registers are in
/// `ctx`). `false` if the guest's state does not allow it.
pub fn inject_into_guest(ctx: &mut VcpuCtx, what: Injection, esr: Esr, far: u64) -> bool {
    let t = TrapState { elr: ctx.pc, spsr: ctx.pstate, il: esr.il(), vbar_el1: ctx.sys[SysReg::VBAR_EL1] };
    let Some(i) = inject_sync(what, t) else { return false };
    ctx.sys[SysReg::ESR_EL1] = i.esr_el1;
    ctx.sys[SysReg::FAR_EL1] = far;
    ctx.elr_el1 = i.elr_el1;
    ctx.spsr_el1 = i.spsr_el1;
    ctx.pc = i.elr_el2;
    ctx.pstate = i.spsr_el2;
    true
}
