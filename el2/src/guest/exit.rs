//! `VCPU_RUN`: load, the run loop, exit handling (aborts, MMIO, guest calls), put, and the
//! exit record.

use crate::mem::protect::GuestPage;
use super::sysreg::is_key_access;
use crate::hw::{GuestConfig, GuestIrq, GuestTrap, Hw, TrapKind};
use crate::guest::sgi;
use crate::exception::syndrome::{ec, Esr, FaultKind};
use crate::hyp::Hyp;
use crate::guest::vm::{handle_slot, Measured, RunState};
use crate::guest::running::{external_abort, inject_into_guest, kill, kill_exit, undef, Me, Next};
use crate::exception::inject::Injection;
use crate::guest::services;
use crate::guest::memory::map_guest_page;
use crate::guest::sysreg::sysreg_trap;
use crate::mem::pgtable::TableMemory;
use crate::exception::syndrome::{decode_mmio, fault_ipa};
use crate::guest::psci::{self, Served};
use crate::guest::vcpu::{power, pstate_enters_guest, PendingMmio, RunConfig, VcpuCtx};
use core::sync::atomic::Ordering;
use shared_abi::msg::{kill, run_flags, Exit};
use shared_abi::{HypError, HypResult};

const ISS_S1PTW: u64 = 1 << 7;

/// Exits EL2 handles by itself before it gives the CPU back to the host anyway (so a guest
/// cannot keep a host CPU forever through exits the host never sees).
pub const MAX_INTERNAL_EXITS: u32 = 100_000;

/// `VCPU_RUN`: runs vCPU `index` of `handle` until it needs the host.
pub(crate) fn vcpu_run<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64, mmio_value: u64, flags: u64, arch: &impl Hw) -> HypResult {
    if flags & !run_flags::ALL != 0 {
        return Err(HypError::InvalidArgument);
    }
    // The exit goes to the message page: refuse early if there is none.
    hyp.msg.page(cpu)?;
    let slot = hyp.vcpu_slot(handle, index)?;
    let mut ctx = slot.claim().ok_or(HypError::Busy)?;
    let vm_slot = handle_slot(handle);
    let Some(run_state) = hyp.runs.get(vm_slot) else { return Err(HypError::InvalidHandle) };
    let run = match ctx.run_cfg {
        // The vCPU has run in this VM (which the claim keeps alive) and the VM was not stopped:
        // its configuration is fixed, no lock needed.
        Some(run) if run.handle == handle && !run_state.stopped() => run,
        _ => first_run(hyp, handle, index, &mut ctx, arch)?,
    };
    let RunConfig { guest: cfg, nr_vcpus, fw, ptrauth, forwards, .. } = run;
    // Read once, here: the TLB record below must count only runs that enter the guest.
    let on = match slot.power.load(Ordering::Acquire) {
        power::ON => true,
        power::ON_PENDING => {
            ctx.reset_for_cpu_on(slot.on_entry.load(Ordering::Acquire), slot.on_context.load(Ordering::Acquire));
            slot.power.store(power::ON, Ordering::Release);
            true
        }
        _ => false,
    };
    let flush_local = on && run_state.tlb.run_on(index as usize, cpu);
    if !on {
        return finish_run(hyp, cpu, Exit::VcpuOff, false, &ctx, run_state, cfg.cntvoff, arch.counter());
    }
    let mut cfg = cfg;
    // The one setting that may still change once the VM has run: it only ever turns on, when a
    // CPU comes online whose `CTR_EL0` differs (`crate::cpu::cachetype`).
    cfg.trap_cache_type = hyp.guest_ctr_trapped();
    if core::mem::take(&mut ctx.pending_call) {
        // The host's answer to the call the VM forwarded at the last exit.
        ctx.x[0] = mmio_value;
    }
    if let Some(p) = ctx.pending_mmio.take() {
        if flags & run_flags::ABORT_MMIO != 0 {
            // No device there: a synchronous external abort, taken at the access. (It cannot
            // fail for a PSTATE that enters the guest; one that does not is killed below.)
            let injected = inject_into_guest(&mut ctx, Injection::DataAbort { write: p.access.write }, Esr(p.esr), p.far);
            debug_assert!(injected || !pstate_enters_guest(ctx.pstate), "an abort for a PSTATE that enters the guest");
        } else {
            if !p.access.write {
                let v = p.access.read_value(mmio_value);
                ctx.set_gpr(p.access.reg, v);
            }
            ctx.skip_instruction();
        }
    }
    // Pointer authentication: eager loads the keys every time; lazy only while the vCPU
    // used them recently (a trapped use sets the count; each load spends one).
    if ptrauth {
        if !hyp.pauth_lazy.load(Ordering::Relaxed) {
            cfg.pauth_now = true;
        } else if ctx.pauth_eager_left > 0 {
            ctx.pauth_eager_left -= 1;
            cfg.pauth_now = true;
        }
    }
    // Load once; from here to `put` nothing may return early.
    let mut saved = arch.load(&ctx, &cfg);
    if flush_local {
        // With the guest's VMID in VTTBR_EL2 (the invalidation acts on it).
        arch.flush_guest_local();
    }
    let mut exit = Exit::Irq;
    let set_way_done = core::cell::Cell::new(false);
    // The same for every exit of this run: built once.
    let _ = crate::guest::sgi::entered(slot, cpu, &mut ctx, arch, &mut saved);
    let me = Me { vm_slot, index: index as usize, cpu, nr_vcpus, fw: &fw, protected: cfg.protected, ptrauth, mte: cfg.mte, fwb: cfg.fwb, forwards, set_way_done: &set_way_done };
    // Every ERET into the guest consumes ctx.pstate as SPSR_EL2: it must land in the
    // guest's AArch64 EL0 or EL1. Checked where each writer hands it over: here for what
    // the host set (and a CPU_ON reset), after every exit below for what the guest left
    // (but for an HVC or SMC, which only AArch64 EL1 takes);
    // EL2's own writes (exception injection) are EL1h by construction (`inject_sync`),
    // which the debug assertion holds host tests to. So each entry is checked once.
    if !pstate_enters_guest(ctx.pstate) {
        exit = kill_illegal_state(hyp, handle, ctx.pstate);
    } else {
        // Counted down: compared with zero, the bound costs no constant on every exit.
        let mut budget = MAX_INTERNAL_EXITS;
        while budget > 0 {
            budget -= 1;
            debug_assert!(pstate_enters_guest(ctx.pstate), "EL2 wrote PSTATE {:#x}", ctx.pstate);
            let trap = arch.run(&mut ctx);
            let class = crate::exception::syndrome::exit_class(trap.kind == TrapKind::Irq, trap.kind == TrapKind::SError, trap.esr);
            // (`class` < CLASSES by construction; the mask spares a bounds check on every exit.)
            ctx.stats[class & (shared_abi::msg::stats::CLASSES - 1)] += 1;
            let next = if trap.kind == TrapKind::Sync && matches!(Esr(trap.esr).ec(), ec::HVC64 | ec::SMC64) {
                // Only AArch64 EL1 takes these (`HVC` and `SMC` are UNDEFINED at EL0, and an
                // illegal PSTATE takes an Illegal Execution State exception instead), so the
                // PSTATE such an exit leaves enters the guest without a check.
                debug_assert!(pstate_enters_guest(ctx.pstate), "an HVC/SMC exit from PSTATE {:#x}", ctx.pstate);
                guest_call(hyp, handle, &me, &mut ctx, Esr(trap.esr), arch)
            } else if !pstate_enters_guest(ctx.pstate) {
                // A guest that returned to AArch32 EL0 (hidden by the ID registers, not
                // emulated) is stopped before its exit is interpreted, as KVM does.
                exit = kill_illegal_state(hyp, handle, ctx.pstate);
                break;
            } else {
                handle_guest_exit(hyp, handle, &me, &mut ctx, trap, arch, &mut saved)
            };
            if let Next::Exit(e) = next {
                exit = e;
                break;
            }
        }
    }
    arch.put(&mut ctx, saved);
    crate::guest::sgi::left(slot);

    // List registers the guest has finished with are free again; deactivations of
    // level-sensitive interrupts wait for the host, which every exit reminds of them.
    let eoi = ctx.vgic.after_put();
    finish_run(hyp, cpu, exit, eoi, &ctx, run_state, cfg.cntvoff, arch.counter())
}

/// The VM's coalesced MMIO writes for exit record `e` (its VM has queued some since
/// `VM_CREATE`): the header, and the writes queued since the last record that carried some.
/// Out of line: inlined, its registers made every exit's record cost more.
#[inline(never)]
fn carry_coalesced<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, run_state: &RunState, e: &mut shared_abi::msg::VcpuExit) {
    if let Some(n) = run_state.coalesced.take(|first, writes| hyp.msg.write_coalesced(cpu, first, writes)) {
        e.coalesced = n;
        e.flags |= shared_abi::msg::exit::FLAG_COALESCED;
    }
}

/// `VCPU_RUN`'s checks under the memory lock, for a vCPU's first run in its VM (or one whose VM
/// was stopped): the VM lives and has vCPU `index`, and may run. vCPU 0's first run seals a
/// protected VM's measurement. From here on the VM's run configuration is fixed: it is kept in
/// the context ([`VcpuCtx::run_cfg`]) for the vCPU's later runs, which skip the lock. Out of
/// line: inlined, its registers crowded the run loop's.
#[inline(never)]
fn first_run<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, ctx: &mut VcpuCtx, arch: &impl Hw) -> Result<RunConfig, HypError> {
    let mut mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup_mut(handle)?;
    if index as usize >= vm.nr_vcpus {
        return Err(HypError::InvalidArgument);
    }
    if vm.killed || vm.ended {
        return Err(HypError::NotRunnable);
    }
    if index == 0 && matches!(vm.measurement, Measured::Building(_)) {
        // vCPU 0's first run seals the measurement with its registers as the host left
        // them. (The other vCPUs start off: none enters the guest before vCPU 0 has run
        // and turned it on.)
        let (x, pc, pstate) = (ctx.x, ctx.pc, ctx.pstate);
        mem.seal_measurement(handle, &x, pc, pstate, &hyp.boot_secret, arch);
    }
    let (_, vm) = mem.vms.lookup_mut(handle)?;
    vm.ran = true;
    let guest = GuestConfig {
        vttbr: vm.mem.vttbr(vm.vmid),
        start_level: vm.mem.s2().start_level(),
        ipa_bits: vm.mem.s2().ia_bits(),
        vmpidr: crate::guest::vcpu::vmpidr(index as usize),
        host_pmu: vm.host_pmu,
        pauth_now: false,
        mte: vm.mte,
        fwb: vm.fwb,
        protected: vm.protected,
        cntvoff: vm.cntvoff,
        trap_cache_type: hyp.guest_ctr_trapped(),
    };
    let run = RunConfig { handle, guest, nr_vcpus: vm.nr_vcpus, fw: vm.fw, ptrauth: vm.ptrauth, forwards: !vm.smccc_forward.is_empty() };
    ctx.run_cfg = Some(run);
    Ok(run)
}

/// Writes the exit record of `exit` ([`Exit::encode`], the one encoding the host decodes),
/// with [`exit::FLAG_EOI`] if `eoi` and the timer deadlines of the vCPU's saved state `ctx`
/// (every exit record carries them: the host delivers the timers' interrupts), and the VM's
/// queued coalesced MMIO writes ([`crate::guest::coalesce`]).
#[allow(clippy::too_many_arguments)]
fn finish_run<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, exit: Exit, eoi: bool, ctx: &VcpuCtx, run_state: &RunState, cntvoff: u64, now: u64) -> HypResult {
    let mut e = exit.encode();
    if eoi {
        e.flags |= shared_abi::msg::exit::FLAG_EOI;
    }
    (e.vtimer_deadline, e.ptimer_deadline) = ctx.timer_deadlines(cntvoff, now);
    if run_state.coalesced.used() {
        carry_coalesced(hyp, cpu, run_state, &mut e);
    }
    debug_assert_eq!(Exit::decode(&e), Ok(exit), "the host decodes what EL2 encodes");
    hyp.msg.write(cpu, &e)?;
    Ok([e.reason as u64, 0, 0])
}

/// The guest ended its VM (PSCI `SYSTEM_OFF`/`SYSTEM_RESET`, `how`): it never runs again.
fn end_vm<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, how: Exit) -> Exit {
    if let Ok((slot, vm)) = hyp.mem.lock().vms.lookup_mut(handle) {
        vm.ended = true;
        if let Some(run) = hyp.runs.get(slot) {
            run.stop();
        }
    }
    how
}

/// [`kill_exit`] for a `PSTATE` that does not enter the guest (the detail: it).
fn kill_illegal_state<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, pstate: u64) -> Exit {
    kill_exit(hyp, handle, kill::ILLEGAL_STATE, 0, pstate)
}

/// A guest's `HVC` or `SMC` (syndrome `esr`) of vCPU `me`: PSCI, SMCCC and the pKVM guest
/// services EL2 serves, or an exit for the host. Kept out of [`handle_guest_exit`], so that the
/// calls EL2 answers at once (`SMCCC_VERSION`, an ID no one implements) do not pay for that
/// function's frame.
fn guest_call<T: TableMemory, A: Hw>(hyp: &Hyp<'_, T>, handle: u64, me: &Me<'_>, ctx: &mut VcpuCtx, esr: Esr, arch: &A) -> Next {
    if esr.ec() == ec::SMC64 {
        // A trapped SMC's preferred return address is the SMC itself.
        ctx.skip_instruction();
    }
    match psci::serve(&hyp.vcpus[me.vm_slot], me.index, me.nr_vcpus, me.fw, me.protected, ctx) {
        Served::Resume => Next::Resume,
        Served::Exit(e) => Next::Exit(e),
        // MEM_SHARE, MEM_UNSHARE, MMIO_GUARD: answered; a share or unshare done is
        // also the host's to know.
        Served::Memory(call) => memory_call(hyp, handle, ctx, call, arch),
        // The VM ends for good: no vCPU of it is resumed by a later `VCPU_RUN`.
        Served::EndVm(how) => Next::Exit(end_vm(hyp, handle, how)),
        // Answered NOT_SUPPORTED, unless the VM forwards it ([`forward`]); a VM that forwards
        // nothing (most) costs no lock.
        Served::NotEl2s(_) if !me.forwards => Next::Resume,
        Served::NotEl2s(args) => forward(hyp, handle, ctx, args),
    }
}

/// [`guest_call`]'s `MEM_SHARE`, `MEM_UNSHARE` or `MMIO_GUARD`, out of line (the calls EL2
/// answers at once need none of its registers).
#[inline(never)]
fn memory_call<T: TableMemory, A: Hw>(hyp: &Hyp<'_, T>, handle: u64, ctx: &mut VcpuCtx, call: services::MemCall, arch: &A) -> Next {
    let (answer, exit) = services::serve(hyp, handle, call, arch);
    ctx.x[0] = answer;
    exit.map_or(Next::Resume, Next::Exit)
}

/// [`guest_call`]'s call EL2 does not serve, of a VM that forwards some (`args`: `x0..x3`):
/// the host answers it if the VM forwards its ID (fixed since the first run, so read under the
/// lock without a race), EL2 with `NOT_SUPPORTED` (already in `x0`) otherwise. Only 32-bit
/// function IDs are forwarded (SMCCC's; an exit record carries no other).
#[inline(never)]
fn forward<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ctx: &mut VcpuCtx, args: [u64; 4]) -> Next {
    let Ok(function) = u32::try_from(args[0]) else { return Next::Resume };
    if !hyp.mem.lock().vms.lookup(handle).is_ok_and(|(_, vm)| vm.smccc_forward.forwards(args[0])) {
        return Next::Resume;
    }
    ctx.pending_call = true;
    Next::Exit(Exit::Hypercall { function, args: [args[1], args[2], args[3]] })
}

/// Handles one guest exit of vCPU `me` other than a call ([`guest_call`]).
#[inline(never)]
fn handle_guest_exit<T: TableMemory, A: Hw>(hyp: &Hyp<'_, T>,
    handle: u64,
    me: &Me<'_>,
    ctx: &mut VcpuCtx,
    trap: GuestTrap,
    arch: &A,
    saved: &mut A::Saved,
) -> Next {
    match trap.kind {
        // The linked virtual timer and linked SGIs are delivered here, without the host; any
        // other interrupt is the host's.
        TrapKind::Irq => {
            return match arch.guest_irq(ctx, saved) {
                GuestIrq::Host => Next::Exit(Exit::Irq),
                GuestIrq::Timer => Next::Resume,
                GuestIrq::Doorbell => {
                    sgi::doorbell(&hyp.vcpus[me.vm_slot][me.index], ctx, arch, saved);
                    Next::Resume
                }
            }
        }
        TrapKind::SError => return kill(hyp, handle, kill::BAD_EXCEPTION, 0),
        TrapKind::Sync => {}
    }
    let esr = Esr(trap.esr);
    match esr.ec() {
        ec::WFX => {
            ctx.skip_instruction();
            if sgi::may_wait(&hyp.vcpus[me.vm_slot][me.index], me.cpu, ctx, arch, saved) {
                Next::Exit(Exit::Wfx)
            } else {
                Next::Resume
            }
        }
        // Lazy FP/SIMD: the first use in a run loads the guest's registers; the
        // instruction is retried (PC unchanged).
        ec::FP if arch.fp_load(ctx, saved) => Next::Resume,
        // Lazy SVE, for a VM with SVE: its first SVE instruction or ZCR_EL1 access loads the
        // same registers (its FP/SIMD ones are their low bits). Any other VM's is an UNDEF.
        ec::SVE if ctx.sve_vq != 0 && arch.fp_load(ctx, saved) => Next::Resume,
        // Lazy pointer authentication: a PAC instruction (HCR_EL2.API) or a key register
        // access (HCR_EL2.APK) is the first use in this run; retried after loading.
        ec::PAUTH | ec::SYS64 if me.ptrauth && (esr.ec() == ec::PAUTH || is_key_access(trap.esr)) && arch.pauth_load(ctx, saved) => {
            ctx.pauth_eager_left = hyp.pauth_decay.load(Ordering::Relaxed);
            Next::Resume
        }
        // A guest SGI (HCR_EL2.IMO/FMO trap the SGI registers): the host's distributor
        // model decides; the write itself is complete. Anything else here is an ID
        // register read or an UNDEF.
        ec::SYS64 => sysreg_trap(hyp, handle, me, ctx, trap.esr, arch, saved),
        ec::DABT_LOW | ec::IABT_LOW => {
            let ipa = fault_ipa(trap.hpfar, trap.far);
            match map_guest_page(hyp, handle, ipa, arch) {
                GuestPage::Mapped if matches!(esr.fault(), FaultKind::Translation(_)) => return Next::Resume,
                // Guest RAM is never MMIO: an access to it that cannot be mapped, or that
                // faults on a valid mapping, must not reach the host as an MMIO exit (that
                // would hand it a protected guest's data).
                GuestPage::Mapped => return kill(hyp, handle, kill::BAD_EXCEPTION, ipa),
                // Nothing happened: the access replays when the host runs the vCPU again.
                GuestPage::NeedTables(pages) => return Next::Exit(Exit::NeedTables { pages }),
                GuestPage::NoMemory => return kill(hyp, handle, kill::OUT_OF_MEMORY, ipa),
                GuestPage::Untagged(pa) => return Next::Exit(kill_exit(hyp, handle, kill::UNTAGGED_MEMORY, ipa, pa.0)),
                GuestPage::NotRam => {}
                // The guest's MMIO guard is on and it did not declare this granule: an
                // external abort for the guest, nothing for the host.
                GuestPage::Unguarded => return external_abort(hyp, handle, ctx, esr, trap.far, arch),
            }
            // Neither RAM nor something a VMM can emulate: an instruction fetch, or the
            // guest's own stage-1 walk, outside its RAM. KVM answers both with an external
            // abort for the guest, which may handle it.
            if esr.ec() == ec::IABT_LOW || trap.esr & ISS_S1PTW != 0 {
                return external_abort(hyp, handle, ctx, esr, trap.far, arch);
            }
            let Some(access) = decode_mmio(trap.esr) else {
                return kill(hyp, handle, kill::UNDECODABLE_MMIO, ipa);
            };
            let write = access.write.then(|| access.write_value(ctx.gpr(access.reg)));
            // A write in the VM's coalesced zone completes now, queued for the host
            // (`crate::guest::coalesce`), unless the queue is full.
            if let (Some(value), Some(run)) = (write, hyp.runs.get(me.vm_slot)) {
                if run.coalesced.zone().covers(ipa, access.size as u64) && run.coalesced.push(ipa, access.size as u64, value) {
                    ctx.skip_instruction();
                    return Next::Resume;
                }
            }
            // Completed, or aborted, by the next `VCPU_RUN` (the host's answer).
            ctx.pending_mmio = Some(PendingMmio { access, esr: trap.esr, far: trap.far });
            Next::Exit(Exit::Mmio { ipa, size: access.size as u32, write })
        }
        _ => undef(hyp, handle, ctx, esr, arch),
    }
}

#[cfg(test)]
mod tests {
    use crate::mem::addr::PhysAddr;
    use crate::testing::*;
    use super::*;

    #[test]
    fn calls_el2_does_not_serve_are_not_supported_unless_the_vm_forwards_them() {
        let mut f = fixture();
        // `create` forwards function ID 0; add a vendor-specific OS range (owner 7).
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmSmcccForward, &[h, 0xC700_0000, 0x100]).unwrap();
        let rec = Recorder::default();
        *rec.calls.borrow_mut() = vec![[0xC700_0100, 1, 2, 3], [0x0600_0000, 0, 0, 0], [0xC700_00FF, 4, 5, 6]];
        *rec.exits.borrow_mut() = vec![hvc(), hvc(), hvc(), mmio(0x0900_0000, false, 9, 3)];
        // The first two (just past the range; a yielding call no one forwards) are answered in
        // EL2: one VCPU_RUN, three entries, and the third reaches the host with its arguments.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow().len(), 3);
        assert_eq!(exit_record(&f).args, [0xC700_00FF, 4, 5, 6]);
        // The host's answer is the guest's x0 at the next entry.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x1234]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([0x1234, 0, 0]));
        // Only once: an MMIO read's value goes to its register, not to x0 again.
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), 7]), Ok([0; 3]));
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 9, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x55]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([7, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(9)]), Ok([0x55, 0, 0]));
        // Fixed from the first run on; a bad handle is one.
        assert_eq!(f.call(0, H::VmSmcccForward, &[h, 0xC700_1000, 1]), Err(HypError::Frozen));
        assert_eq!(f.call(0, H::VmSmcccForward, &[h + 1, 0xC700_1000, 1]), Err(HypError::InvalidHandle));
    }

    #[test]
    fn forwarding_is_refused_for_what_el2_serves_and_past_capacity() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        let fwd = |f: &Fixture, first: u64, count: u64| f.call(0, H::VmSmcccForward, &[h, first, count]);
        assert_eq!(fwd(&f, 0x8400_0000, 0x20), Err(HypError::InvalidArgument), "PSCI is EL2's");
        assert_eq!(fwd(&f, 0xC600_0000, 1), Err(HypError::InvalidArgument), "the pKVM guest services are EL2's");
        assert_eq!(fwd(&f, 0, 1), Err(HypError::InvalidArgument), "already forwarded");
        assert_eq!(fwd(&f, 5, 0), Err(HypError::InvalidArgument), "no IDs");
        assert_eq!(fwd(&f, 1 << 32, 1), Err(HypError::InvalidArgument), "no function ID");
        assert_eq!(fwd(&f, 0xFFFF_FF00, 0x101), Err(HypError::OutOfRange));
        for i in 1..shared_abi::SMCCC_FORWARD_RANGES as u64 {
            assert_eq!(fwd(&f, 0xC700_0000 + i, 1), Ok([0; 3]));
        }
        assert_eq!(fwd(&f, 0xC800_0000, 1), Err(HypError::NoCapacity));
    }

    #[test]
    fn a_vcpu_that_changes_cpu_flushes_its_vmid_locally_before_entry() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        f.call(1, H::SetMessagePage, &[1, f.page(1)]).unwrap();
        let run = |f: &Fixture, cpu: usize, vcpu: u64| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![hvc()];
            assert_eq!(f.call_with(&rec, cpu, H::VcpuRun, &[h, vcpu, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
            let log = rec.log.borrow().clone();
            log
        };
        assert_eq!(run(&f, 0, 0), ["load", "flush_guest_local", "run", "put"], "first run on CPU 0");
        assert_eq!(run(&f, 0, 0), ["load", "run", "put"], "same vCPU, same CPU: nothing to flush");
        assert_eq!(run(&f, 1, 0), ["load", "flush_guest_local", "run", "put"], "moved to CPU 1");
        assert_eq!(run(&f, 1, 0), ["load", "run", "put"]);
        assert_eq!(run(&f, 0, 0), ["load", "flush_guest_local", "run", "put"], "back on CPU 0");
        // A vCPU that is off does not enter, so its run does not count as one on this CPU.
        assert_eq!(f.call(1, H::VcpuRun, &[h, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        assert_eq!(run(&f, 0, 0), ["load", "run", "put"]);
    }

    #[test]
    fn a_vcpu_that_ran_reenters_without_the_memory_lock() {
        // The first run takes the lock; a later one, with the lock held elsewhere, must still
        // finish. Run on a thread of its own so that a regression fails the test instead of
        // hanging it (the stuck thread is left spinning).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut f = fixture();
            let h = create(&mut f, 1, vm_flags::PROTECTED);
            let rec = Recorder::default();
            // An MMIO access outside the VM's memory: an exit to the host, decided without the
            // lock too (`LayoutHint`).
            *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 9, 3)];
            assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
            let held = f.hyp.mem.lock();
            *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 9, 3)];
            let again = f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]);
            drop(held);
            let _ = tx.send(again);
        });
        let again = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(again) => again,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("a second VCPU_RUN waited for the memory lock"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the run's thread failed"),
        };
        assert_eq!(again, Ok([exit::MMIO as u64, 0, 0]));
    }

    #[test]
    fn a_run_configuration_never_outlives_its_vm() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        let slot = handle_slot(h);
        assert!(f.hyp.vcpus[slot][0].claim().unwrap().run_cfg.is_some_and(|r| r.handle == h), "kept after the first run");
        // The next VM in the same slot: the old handle's context is gone with it.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert!(f.hyp.vcpus[slot][0].claim().unwrap().run_cfg.is_none(), "VM_DESTROY resets it");
        let h2 = create(&mut f, 2, 0);
        assert_eq!(handle_slot(h2), slot);
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Err(HypError::InvalidHandle));
        *rec.exits.borrow_mut() = vec![hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h2, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        // A stale handle on a context that holds the new VM's configuration takes the lock,
        // which refuses it.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Err(HypError::InvalidHandle));
        // vCPU 1 has run too (off: its first run is a VCPU_OFF exit), so it keeps a
        // configuration; vCPU 0's stop still reaches it, through the slot's flag.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h2, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        assert!(f.hyp.vcpus[slot][1].claim().unwrap().run_cfg.is_some());
        // A stop ended by vCPU 0 itself (SYSTEM_OFF): every vCPU that has run sees it without the lock.
        // (`create` forwards function ID 0, so the last exit was the host's to answer: the
        // answer, the next run's value, is the guest's x0.)
        *rec.exits.borrow_mut() = vec![hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h2, 0, smccc::psci::PSCI_SYSTEM_OFF as u64]), Ok([exit::SYSTEM_OFF as u64, 0, 0]));
        assert!(f.hyp.runs[slot].stopped());
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h2, 0, 0]), Err(HypError::NotRunnable));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h2, 1, 0]), Err(HypError::NotRunnable));
        // The slot's next VM starts unstopped, with a TLB record of its own: its first run on
        // CPU 0 invalidates, whatever the last VM's vCPU 0 did there.
        f.call(0, H::VmDestroy, &[h2]).unwrap();
        let h3 = create(&mut f, 2, 0);
        assert!(!f.hyp.runs[handle_slot(h3)].stopped());
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h3, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert!(rec.log.borrow().contains(&"flush_guest_local"));
        // An EL2 kill (an access EL2 cannot decode) reaches a sibling that has run the same way.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h3, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        *rec.exits.borrow_mut() = vec![trap((0x24 << 26) | (1 << 25) | 0b000111, 0x0900_0000)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h3, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h3, 1, 0]), Err(HypError::NotRunnable));
    }

    #[test]
    fn the_cache_type_trap_is_decided_at_every_run() {
        use crate::cpu::features::CpuId;
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 9, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert!(!rec.loaded.get().unwrap().trap_cache_type, "CPUs agree");
        // A CPU whose cache lines are larger comes online after the VM has run: every CPU now
        // traps the guest's CTR_EL0, this vCPU's next run included.
        let view = *f.hyp.cpus.lock().view();
        let larger = (FIXTURE_CTR & !(0xF << 16)) | 5 << 16;
        f.hyp.cpu_entered_el2(1, CpuId { midr: 0x410F_D0C0, regs: view, ctr: larger, ich_vtr: Some(QEMU_ICH_VTR), sve: FIXTURE_SVE }).unwrap();
        assert!(f.hyp.guest_ctr_trapped());
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 9, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert!(rec.loaded.get().unwrap().trap_cache_type);
    }

    /// The coalesced writes the last exit record carried: the batch's first number and the
    /// writes as (IPA, value, size).
    fn coalesced(f: &Fixture) -> (u64, Vec<(u64, u64, u32)>) {
        use shared_abi::msg::{CoalescedBatch, COALESCED_OFFSET};
        use zerocopy::FromBytes;
        let e = exit_record(f);
        assert_ne!(e.flags & shared_abi::msg::exit::FLAG_COALESCED, 0, "a VM that queued writes: every record has the header");
        let n = e.coalesced as usize;
        let b = CoalescedBatch::read_from_prefix(&f.ram.0[MSG * 4096 + COALESCED_OFFSET..]).unwrap().0;
        (b.first_seq, b.writes[..n].iter().map(|w| (w.ipa, w.value, w.size)).collect())
    }

    #[test]
    fn writes_in_the_coalesced_zone_complete_without_an_exit_and_reach_the_host_in_order() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        // Hostile zones; a zone removed; then the UART's data register.
        assert_eq!(f.call(0, H::VmMmioCoalesce, &[h, 0x0900_0000, 4097]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VmMmioCoalesce, &[h, u64::MAX - 2, 4]), Err(HypError::OutOfRange));
        assert_eq!(f.call(0, H::VmMmioCoalesce, &[h + 1, 0x0900_0000, 4]), Err(HypError::InvalidHandle));
        f.call(0, H::VmMmioCoalesce, &[h, 0x0A00_0000, 4096]).unwrap();
        f.call(0, H::VmMmioCoalesce, &[h, 0x0A00_0000, 0]).unwrap();
        f.call(0, H::VmMmioCoalesce, &[h, 0x0900_0000, 4]).unwrap();
        // No write queued yet: no header (vCPU 1 is off, its run ends at once).
        assert_eq!(f.call_with(&Recorder::default(), 0, H::VcpuRun, &[h, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        assert_eq!(exit_record(&f).flags & shared_abi::msg::exit::FLAG_COALESCED, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 0x1_0041]).unwrap();
        let rec = Recorder::default();
        // A byte and a halfword inside the zone, then a byte just past it.
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, true, 1, 0), mmio(0x0900_0002, true, 1, 1), mmio(0x0900_0004, true, 1, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(Exit::decode(&exit_record(&f)), Ok(Exit::Mmio { ipa: 0x0900_0004, size: 1, write: Some(0x41) }));
        assert_eq!(coalesced(&f), (0, vec![(0x0900_0000, 0x41, 1), (0x0900_0002, 0x41, 2)]));
        let pcs = rec.entry_pcs.borrow().clone();
        assert_eq!(pcs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect::<Vec<_>>(), [4, 4], "each coalesced write completed");
        assert_eq!(f.call(0, H::VmMmioCoalesce, &[h, 0x0900_0000, 8]), Err(HypError::Frozen), "fixed once the VM ran");
        // A read in the zone exits; nothing was queued since.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, false, 1, 2)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(coalesced(&f), (2, vec![]), "a header: two writes were carried before this exit");
        // A full queue: the next write exits, carrying the queue, numbered on from 2.
        let max = shared_abi::msg::COALESCED_MAX;
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0000, true, 1, 0); max + 1];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 7]), Ok([exit::MMIO as u64, 0, 0]));
        // (The read's answer, 7, went to x1 first.)
        let (first, writes) = coalesced(&f);
        assert_eq!((first, writes.len()), (2, max));
        assert!(writes.iter().all(|&w| w == (0x0900_0000, 7, 1)));
        assert_eq!(Exit::decode(&exit_record(&f)), Ok(Exit::Mmio { ipa: 0x0900_0000, size: 1, write: Some(7) }));
        // Another vCPU's writes join the same queue and numbering: they are the VM's. (Which
        // vCPU's record carries a queued write is a race between CPUs; here each run ends
        // with a record that takes the whole queue.)
        f.call(0, H::VcpuSetReg, &[h, 1, reg::x(1), 0x42]).unwrap();
        let one = Recorder::default();
        *one.exits.borrow_mut() = vec![mmio(0x0900_0000, true, 1, 0), hvc()];
        // vCPU 1 is off until a guest's CPU_ON: turned on here directly.
        f.hyp.vcpus[handle_slot(h)][1].power.store(power::ON, Ordering::Release);
        assert_eq!(f.call_with(&one, 0, H::VcpuRun, &[h, 1, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(coalesced(&f), (2 + max as u64, vec![(0x0900_0000, 0x42, 1)]));
    }

    #[test]
    fn every_exit_record_carries_the_timer_deadlines() {
        use crate::guest::timer::{TIMER_ENABLE, TIMER_IMASK};
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        let (ctl, cval) = (SysReg::CNTV_CTL_EL0.id(), SysReg::CNTV_CVAL_EL0.id());
        // The physical count at the exits: 500, so CNTVOFF 500 makes the virtual count 0.
        let run = |f: &Fixture, vcpu: u64, script: Vec<GuestTrap>| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = script;
            rec.counter.set(500);
            f.call_with(&rec, 0, H::VcpuRun, &[h, vcpu, 0]).unwrap();
            let e = exit_record(f);
            (e.vtimer_deadline, e.ptimer_deadline)
        };
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTVOFF_EL2, 500]).unwrap();
        assert_eq!(run(&f, 0, vec![hvc()]), (u64::MAX, u64::MAX), "both timers off at reset");
        // Virtual: CVAL + CNTVOFF; physical: its CVAL. Masked or disabled: never.
        f.call(0, H::VcpuSetReg, &[h, 0, ctl, TIMER_ENABLE]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, cval, 1_000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, TIMER_ENABLE]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CVAL_EL0, 42]).unwrap();
        assert_eq!(run(&f, 0, vec![hvc()]), (1_500, 42));
        f.call(0, H::VcpuSetReg, &[h, 0, ctl, TIMER_ENABLE | TIMER_IMASK]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, TIMER_ENABLE | TIMER_IMASK]).unwrap();
        assert_eq!(run(&f, 0, vec![trap(0x01 << 26 | 1 << 25, 0)]), (u64::MAX, u64::MAX), "masked");
        // Hostile values: CVAL at the top of the count saturates instead of wrapping to "now".
        f.call(0, H::VcpuSetReg, &[h, 0, ctl, TIMER_ENABLE]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, cval, u64::MAX - 100]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, TIMER_ENABLE]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CVAL_EL0, u64::MAX]).unwrap();
        // vCPU 1 is off: its VCPU_OFF exit carries its own timers (CVAL 9 + CNTVOFF 500).
        f.call(0, H::VcpuSetReg, &[h, 1, ctl, TIMER_ENABLE]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 1, cval, 9]).unwrap();
        assert_eq!(run(&f, 1, vec![]), (509, u64::MAX));
        // A host that sets CNTVOFF above the count: the virtual count wrapped to the top and the
        // timer fires at once (the hardware's subtraction), which the deadline says.
        f.call(0, H::VcpuSetReg, &[h, 1, cval, 1_000]).unwrap();
        let rec = Recorder::default();
        rec.counter.set(10);
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        assert_eq!(exit_record(&f).vtimer_deadline, 0, "fired");
        // A kill exit (undecodable MMIO) carries them too.
        let undecodable = trap((0x24 << 26) | (1 << 25) | 0b000111, 0x0900_0000);
        assert_eq!(run(&f, 0, vec![undecodable]), (u64::MAX, u64::MAX), "saturated; the physical CVAL as set");
        assert_eq!(exit_record(&f).reason, exit::KILLED);
    }

    #[test]
    fn host_chosen_pstate_never_reaches_eret() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        // The host may not set an EL2 (or AArch32, or IL) PSTATE...
        for bad in [0x3C9u64, 0x3C8, 0x3C5 | 1 << 20, 0x13, 0x3C5 | 1 << 40] {
            assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::PSTATE, bad]), Err(HypError::InvalidArgument), "{bad:#x}");
        }
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PSTATE]), Ok([crate::guest::vcpu::PSTATE_RESET, 0, 0]));
        // ...and should one get into the context some other way, EL2 stops the VM before the
        // ERET: the guest never runs.
        {
            let slot = f.hyp.vcpu_slot(h, 0).unwrap();
            slot.claim().unwrap().pstate = 0x3C9;
        }
        let rec = Recorder::default();
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        assert!(!rec.log.borrow().contains(&"run"), "entered the guest with PSTATE EL2h");
        let e = exit_record(&f);
        assert_eq!((e.data, e.args[0]), (kill::ILLEGAL_STATE, 0x3C9));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
    }

    #[test]
    fn a_guest_that_returns_to_aarch32_is_stopped() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let rec = Recorder::default();
        // The guest ERETs to AArch32 EL0 (usr) and traps there, a WFI: EL2 does not interpret
        // the exit. (An HVC or SMC exit never comes from there: both are UNDEFINED at EL0.)
        rec.exits.borrow_mut().push(trap((0x01 << 26) | (1 << 25), 0));
        rec.pstates.borrow_mut().push(0x10);
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.args[0]), (kill::ILLEGAL_STATE, 0x10));
        assert_eq!(rec.log.borrow().last(), Some(&"put"), "the host's state is restored");
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
    }

    #[test]
    fn run_maps_memory_on_fault_and_exits_for_mmio() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(5), 0x41]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_1008), mmio(0x0900_0000, true, 5, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.ipa, e.size, e.flags, e.data), (0x0900_0000, 1, exit::MMIO_WRITE, 0x41));
        assert!(rec.log.borrow().contains(&"guest_s2_mapped"));
        {
            let mem = f.hyp.mem.lock();
            let vm = mem.vms.lookup(h).unwrap().1;
            let leaf = vm.mem.lookup(mem.tables(), 0x4000_1000).unwrap();
            assert_eq!(leaf.pa_base, PhysAddr(f.page(GUEST + 1)));
        }
        // Protected: registers are sealed now.
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Err(HypError::Denied));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), 1]), Err(HypError::Denied));
        // An MMIO read: the host's value lands in the register and the PC moves on.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0018, false, 7, 2), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        let pc_at_read = rec.entry_pcs.borrow()[0];
        // The guest's next entry must see x7 and pc + 4: check through a non-served HVC exit.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x1234_5678_9ABC]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[1], pc_at_read + 4);
    }

    #[test]
    fn secondary_vcpus_start_off_and_come_up_with_cpu_on() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        assert_eq!(f.call(0, H::VcpuRun, &[h, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        // vCPU 0 calls CPU_ON(1, 0x5000, 7), then WFI.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_CPU_ON_64 as u64]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 0x5000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(3), 7]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0), trap(0x01 << 26 | 1 << 25, 0)];
        // The host hears which vCPU came on (so it need not poll one that is off).
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::CPU_ON as u64, 0, 0]));
        assert_eq!(exit_record(&f).args, [1, 0, 0, 0]);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([0, 0, 0]), "CPU_ON succeeded");
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        // A second CPU_ON of the same vCPU is answered in EL2 (ON_PENDING): no exit.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_CPU_ON_64 as u64]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1]).unwrap();
        *rec.exits.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0), trap(0x01 << 26 | 1 << 25, 0)];
        rec.entry_pcs.borrow_mut().clear();
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([-5i64 as u64, 0, 0]), "ON_PENDING");
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 1, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[2], 0x5000, "vCPU 1 entered at the CPU_ON entry point");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 1, reg::x(0)]), Ok([7, 0, 0]));
    }

    #[test]
    fn a_cpu_on_racing_a_sibling_mid_claim_does_not_overwrite_its_entry_point() {
        // vCPU 1 claimed by another vCPU's CPU_ON that is still storing its entry point: a
        // second CPU_ON is told ON_PENDING and leaves the entry alone, AFFINITY_INFO says
        // ON_PENDING, and vCPU 1's own run finds it off until the claim is published.
        let mut f = fixture();
        let h = create(&mut f, 3, 0);
        let slot = handle_slot(h);
        f.hyp.vcpus[slot][1].power.store(power::CLAIMED, Ordering::Release);
        f.hyp.vcpus[slot][1].on_entry.store(0x7000, Ordering::Release);
        assert_eq!(f.call(0, H::VcpuRun, &[h, 1, 0]), Ok([exit::VCPU_OFF as u64, 0, 0]));
        for (n, v) in [smccc::psci::PSCI_CPU_ON_64 as u64, 1, 0x5000, 7].into_iter().enumerate() {
            f.call(0, H::VcpuSetReg, &[h, 0, reg::x(n as u64), v]).unwrap();
        }
        let rec = Recorder::default();
        let wfi = || trap(0x01 << 26 | 1 << 25, 0);
        *rec.exits.borrow_mut() = vec![hvc(), wfi()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]), "no CPU_ON exit");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([-5i64 as u64, 0, 0]));
        assert_eq!(f.hyp.vcpus[slot][1].on_entry.load(Ordering::Acquire), 0x7000, "the claimer's entry point stands");
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_AFFINITY_INFO_64 as u64]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 0]).unwrap();
        *rec.exits.borrow_mut() = vec![hvc(), wfi()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([2, 0, 0]), "AFFINITY_INFO: ON_PENDING");
    }

    /// vCPU 0's saved context.
    fn vcpu_ctx(f: &Fixture, h: u64) -> VcpuCtx {
        let slot = f.hyp.mem.lock().vms.lookup(h).unwrap().0;
        let ctx = f.hyp.vcpus[slot][0].claim().unwrap().clone();
        ctx
    }

    #[test]
    fn an_instruction_fetch_or_a_walk_outside_ram_is_an_abort_for_the_guest() {
        use crate::guest::vcpu::SysReg;
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x4000_0800]).unwrap();
        // An instruction fetch at 0x6000_0000 (above RAM), then the guest's own HVC.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap((0x20 << 26) | (1 << 25) | 0b000111, 0x6000_0010), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]), "no kill, no exit for the fetch");
        assert_eq!(rec.entry_pcs.borrow()[1], 0x4000_0800 + 0x200, "current EL with SP_ELx, synchronous");
        let ctx = vcpu_ctx(&f, h);
        let esr = ctx.sys[SysReg::ESR_EL1];
        assert_eq!((esr >> 26, esr & 0x3F, esr & (1 << 25) != 0), (0x21, 0x10, true), "instruction abort, same EL, SEA, IL");
        assert_eq!(ctx.sys[SysReg::FAR_EL1], 0x10, "FAR_EL2 (the test traps carry the page offset)");
        // A data access whose stage-1 walk leaves RAM (S1PTW): a data abort.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap((0x24 << 26) | (1 << 25) | (1 << 7) | 0b000111, 0x7000_0000), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        let esr = vcpu_ctx(&f, h).sys[SysReg::ESR_EL1];
        assert_eq!((esr >> 26, esr & 0x3F), (0x25, 0x10), "data abort, same EL, SEA");
        f.call(0, H::VmDestroy, &[h]).unwrap();
    }

    #[test]
    fn the_host_answers_an_mmio_access_with_a_value_or_an_abort() {
        use crate::guest::vcpu::SysReg;
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0100]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(3), 0xAAAA]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x4000_0800]).unwrap();
        // Unknown flags: refused before anything runs.
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0, 2]), Err(HypError::InvalidArgument));
        // A read the host declines: the guest takes a data abort at the load; x3 untouched.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0c00_0000, false, 3, 2), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x5555, run_flags::ABORT_MMIO]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[1], 0x4000_0800 + 0x200);
        let ctx = vcpu_ctx(&f, h);
        let esr = ctx.sys[SysReg::ESR_EL1];
        assert_eq!((esr >> 26, esr & 0x3F, esr & (1 << 6) != 0), (0x25, 0x10, false), "data abort, same EL, SEA, read");
        assert_eq!((ctx.elr_el1, ctx.x[3]), (0x4000_0100, 0xAAAA), "ELR_EL1 is the load; its register is not written");
        // A write the host declines: the same, with WnR; it never completed (the PC moves only
        // when the next run completes an access).
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0100]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0c00_0000, true, 3, 2), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Ok([0x4000_0100, 0, 0]), "not completed yet");
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0, run_flags::ABORT_MMIO]), Ok([exit::HYPERCALL as u64, 0, 0]));
        let esr = vcpu_ctx(&f, h).sys[SysReg::ESR_EL1];
        assert_eq!((esr >> 26, esr & (1 << 6) != 0), (0x25, true), "write");
        // Accepted: a write completes (PC + 4) at the next run, a read with the value.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0100]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0c00_0000, true, 3, 2), mmio(0x0c00_0000, false, 3, 2), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[1], 0x4000_0104);
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x1_2345_6789]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[2], 0x4000_0108);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(3)]), Ok([0x2345_6789, 0, 0]), "a 32-bit read");
        // With nothing pending the flag changes nothing.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0, run_flags::ABORT_MMIO]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[0], 0x4000_0108);
        f.call(0, H::VmDestroy, &[h]).unwrap();
    }

    #[test]
    fn an_sve_trap_loads_an_sve_vms_registers_and_is_an_undef_for_any_other() {
        use crate::guest::vcpu::SysReg;
        // SVE instruction or ZCR_EL1 access trapped by CPTR_EL2.TZ (ESR_EL2.EC 0x19).
        let sve_trap = || trap((0x19 << 26) | (1 << 25), 0);
        let mut f = fixture();
        let h = create_sve(&mut f, 1, vm_flags::PROTECTED, 32);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![sve_trap(), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(*rec.log.borrow(), ["load", "flush_guest_local", "run", "fp_load", "run", "put"], "loaded, retried");
        assert_eq!(rec.entry_pcs.borrow()[0], rec.entry_pcs.borrow()[1], "the instruction is retried");
        f.call(0, H::VcpuStats, &[h, 0]).unwrap();
        let stats = shared_abi::msg::VcpuStats::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        assert_eq!(stats.counts[shared_abi::msg::stats::FP], 1, "counted as the first vector use");
        // A VM without SVE: the guest gets an UNDEF, as on a CPU without SVE.
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x4000_0800]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![sve_trap(), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert!(!rec.log.borrow().contains(&"fp_load"), "nothing loaded for a VM without SVE");
        assert_eq!(rec.entry_pcs.borrow()[1], 0x4000_0800 + 0x200, "the guest's synchronous vector");
        assert_eq!(vcpu_ctx(&f, h).sys[SysReg::ESR_EL1] >> 26, 0, "EC 0: UNDEF");
    }

    #[test]
    fn undecodable_mmio_kills_the_vm() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap((0x24 << 26) | (1 << 25) | 0b000111, 0x0900_0000)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.ipa), (kill::UNDECODABLE_MMIO, 0x0900_0000));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
        f.call(0, H::VmDestroy, &[h]).unwrap();
    }

    #[test]
    fn system_off_and_reset_end_the_vm_for_every_vcpu() {
        for (call, reason) in [(smccc::psci::PSCI_SYSTEM_OFF, exit::SYSTEM_OFF), (smccc::psci::PSCI_SYSTEM_RESET, exit::SYSTEM_RESET)] {
            for flags in [0, vm_flags::PROTECTED] {
                let mut f = fixture();
                let h = create(&mut f, 2, flags);
                f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), call as u64]).unwrap();
                let rec = Recorder::default();
                *rec.exits.borrow_mut() = vec![hvc()];
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([reason as u64, 0, 0]));
                // Never resumed: not the caller, not its sibling (which would run the script).
                let rec = Recorder::default();
                *rec.exits.borrow_mut() = vec![hvc(), hvc()];
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable), "{reason}");
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 1, 0]), Err(HypError::NotRunnable), "{reason}");
                assert!(!rec.log.borrow().contains(&"run"));
                f.call(0, H::VmDestroy, &[h]).unwrap();
            }
        }
    }
}
