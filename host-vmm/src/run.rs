//! The VMM's one exit loop: what every `VCPU_RUN` of every VM goes through, whoever drives it
//! ([`Machine`]: the VMM's own in [`crate::linux`], which serves every device of the one VM
//! platform; the scenarios' harness in [`crate::Stepper`], which steps a vCPU exit by exit).
//!
//! One step: the machine's preparation, the run (recorded for the timeout report), the exit
//! counted, the machine's look at the record, a `NEED_TABLES` exit answered with table pages
//! ([`give_tables`]), an MMIO exit served by the machine's devices on its bus (an address no device answers is counted in [`crate::UNASSIGNED`] and, as the
//! machine says, read as 0 with writes ignored or answered with an external abort), and then
//! the machine's handling of the exit.

use crate::stats::count_exit;
use arrayvec::ArrayVec;
use crate::{Vm, UNASSIGNED};
use core::sync::atomic::{AtomicU64, Ordering};
use host_kernel::hyp::client::{Exited, VmHandle};
use shared_abi::layout::run_status;
use shared_abi::msg::{exit, run_flags, CoalescedWrite, Exit, VcpuExit, COALESCED_MAX};
use shared_abi::HypError;

/// What one kind of VM does around its vCPUs' runs.
pub trait Machine {
    /// What an exit comes to for the loop around.
    type Step;

    /// The VM and the vCPU that runs.
    fn vcpu(&self) -> (&Vm, u64);

    /// Before each run (interrupts to queue, the host's timer PPIs).
    ///
    /// # Errors
    /// A hypercall's, which ends the step.
    fn before_run(&mut self) -> Result<(), HypError> {
        Ok(())
    }

    /// Every exit, before it is handled (the record-wide fields; a test device's look).
    ///
    /// # Errors
    /// A hypercall's, which ends the step.
    fn after_exit(&mut self, _e: &Exited) -> Result<(), HypError> {
        Ok(())
    }

    /// An MMIO access at `ipa`, through the machine's bus: the value read (0 for a write), or
    /// `None` if no device answers `ipa`.
    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> Option<u64>;

    /// A guest SMCCC call the VM forwards (`x0..=x3`): the guest's `x0`. `NOT_SUPPORTED`
    /// unless the machine serves such calls.
    fn smccc_call(&mut self, _args: [u64; 4]) -> u64 {
        SMCCC_NOT_SUPPORTED
    }

    /// An access no device answers gets an external abort (as under KVM), rather than reading
    /// 0 and ignoring writes.
    const ABORT_UNASSIGNED: bool = false;

    /// The exit, once an MMIO access is served.
    fn exit(&mut self, e: &Exited) -> Self::Step;
}

/// SMCCC's `NOT_SUPPORTED` (-1), the answer to a forwarded call no one serves.
pub const SMCCC_NOT_SUPPORTED: u64 = u64::MAX;

/// The VMM's answer to a vCPU's MMIO exit (or a forwarded SMCCC call's), given to its next
/// `VCPU_RUN`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioReply {
    /// The value of a read.
    pub value: u64,
    /// No device there: the access gets an external abort.
    pub abort: bool,
}

impl MmioReply {
    /// A read of 0 (or a write's completion): the answer before any exit.
    pub const ZERO: Self = Self { value: 0, abort: false };
}

/// Runs the machine's vCPU to its next exit and handles it. `reply` is the answer to the MMIO
/// access the vCPU's last exit made, and is set for this exit's.
///
/// # Errors
/// `VCPU_RUN`'s refusal, or a hypercall's from the machine.
pub fn step<M: Machine>(m: &mut M, reply: &mut MmioReply) -> Result<M::Step, HypError> {
    m.before_run()?;
    let (vm, vcpu) = m.vcpu();
    let handle = vm.handle;
    note_run(handle, vcpu);
    // Borrowed where `VCPU_RUN` left it: moving the `Exited` out of the result costs a copy.
    let MmioReply { value, abort } = core::mem::take(reply);
    let r = vm.el2().vcpu(vcpu).run(value, if abort { run_flags::ABORT_MMIO } else { 0 });
    let e = match &r {
        Ok(e) => e,
        Err(err) => {
            note_exit(Err(*err));
            return Err(*err);
        }
    };
    note_exit(Ok(&e.record));
    count_exit(handle, e.exit.reason());
    if e.record.flags & exit::FLAG_COALESCED != 0 {
        // Most records of such a VM carry no write and find every earlier one applied.
        let first = host_kernel::hyp::read_coalesced(crate::cpu_id()).0;
        if e.record.coalesced != 0 || coalesced_next(handle).load(Ordering::Acquire) < first {
            apply_coalesced(m, handle, e.record.coalesced);
        }
    }
    m.after_exit(e)?;
    if let Exit::NeedTables { pages } = e.exit {
        give_tables(m.vcpu().0.el2(), pages)?;
    }
    if let Exit::Hypercall { function, args: [a1, a2, a3] } = e.exit {
        let args = [function as u64, a1, a2, a3];
        // A call the VM forwards (`VM_SMCCC_FORWARD`): the machine's answer is the guest's x0.
        *reply = MmioReply { value: m.smccc_call(args), abort: false };
    }
    if let Exit::Mmio { ipa, size, write } = e.exit {
        *reply = match m.mmio(ipa, size, write) {
            Some(value) => MmioReply { value, abort: false },
            None => {
                UNASSIGNED.fetch_add(1, Ordering::Relaxed);
                MmioReply { value: 0, abort: M::ABORT_UNASSIGNED }
            }
        };
    }
    Ok(m.exit(e))
}

/// Each VM slot's next coalesced-write number to apply ([`apply_coalesced`]): EL2's slot, the
/// handle's low byte, below its 16 VMs. Reset by [`coalesce`], the one way the VMM sets a zone
/// (a VM whose zone some other path set would share its slot's stale count).
static COALESCED_NEXT: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// The VM slot of `handle` (EL2's: its low byte), for [`COALESCED_NEXT`].
fn coalesced_next(handle: u64) -> &'static AtomicU64 {
    &COALESCED_NEXT[(handle & 0xFF) as usize % COALESCED_NEXT.len()]
}

/// Coalesced MMIO writes applied, all VMs (the VMM's report).
pub static COALESCED: AtomicU64 = AtomicU64::new(0);

/// Sets VM `vm`'s coalesced MMIO zone (`VM_MMIO_COALESCE`, before its first run): guest writes
/// wholly inside the `len` bytes at `ipa` complete without an exit, and [`step`] applies them
/// through the machine's bus when an exit record of the VM carries them.
///
/// # Errors
/// EL2's refusal.
pub fn coalesce(vm: VmHandle, ipa: u64, len: u64) -> Result<(), HypError> {
    vm.mmio_coalesce(ipa, len)?;
    // EL2 numbers a new VM's writes from 0.
    coalesced_next(vm.0).store(0, Ordering::Release);
    Ok(())
}

/// Before an exit of VM `handle` is served: waits until every coalesced write that earlier
/// exit records carried is applied (those of other CPUs are being applied now, between their
/// `VCPU_RUN` and their exit's handling; EL2 numbers a VM's writes without a gap), then applies
/// the `n` this CPU's record carried, through the machine's bus. So the device sees the writes
/// in the order the guest made them, whichever vCPU made them, and each before anything the
/// guest did after it. The writes are copied out of the message page first: the bus's
/// devices may make hypercalls that reuse it. Out of line: inlined, it made every exit of every
/// VM cost more in the loop around it.
#[inline(never)]
fn apply_coalesced<M: Machine>(m: &mut M, handle: u64, n: u32) {
    let (first, read) = host_kernel::hyp::read_coalesced(crate::cpu_id());
    let n = (n as usize).min(COALESCED_MAX);
    // Only the writes carried: an exit with none copies nothing.
    let writes: ArrayVec<CoalescedWrite, COALESCED_MAX> = (0..n).map(read).collect();
    let next = coalesced_next(handle);
    while next.load(Ordering::Acquire) < first {
        host_kernel::arch::relax();
    }
    if n == 0 {
        return;
    }
    for w in &writes {
        if m.mmio(w.ipa, w.size, Some(w.value)).is_none() {
            UNASSIGNED.fetch_add(1, Ordering::Relaxed);
        }
    }
    COALESCED.fetch_add(n as u64, Ordering::Relaxed);
    next.store(first.wrapping_add(n as u64), Ordering::Release);
}

/// Table pages the VMM gives a VM at a time: at least what EL2 asks for, and in batches so that
/// a guest's growth costs few `NEED_TABLES` exits (each 4 KiB table maps 2 MiB in pages, or
/// 1 GiB in 2 MiB blocks).
pub const TABLE_BATCH: u64 = 16;

/// Gives VM `vm` `pages` (at least [`TABLE_BATCH`]) pages of host memory for its stage-2
/// tables (`VM_TOPUP_TABLES`); EL2 gives them back at `VM_DESTROY`.
///
/// # Errors
/// EL2's refusal.
pub fn give_tables(vm: VmHandle, pages: u64) -> Result<(), HypError> {
    let pages = pages.max(TABLE_BATCH);
    vm.topup_tables(crate::alloc_pages(pages), pages)
}

/// What each host CPU last did with a vCPU ([`shared_abi::layout::run_status`]): read by the
/// test runner through QEMU's monitor when a scenario hangs.
#[no_mangle]
pub static HOST_RUN_STATUS: [[AtomicU64; run_status::WORDS]; run_status::CPUS] =
    [const { [const { AtomicU64::new(0) }; run_status::WORDS] }; run_status::CPUS];

/// Records, for the timeout report, that this CPU enters `VCPU_RUN` for `vcpu` of VM `handle`.
fn note_run(handle: u64, vcpu: u64) {
    let row = &HOST_RUN_STATUS[crate::cpu_id() % run_status::CPUS];
    row[run_status::VM].store(handle, Ordering::Relaxed);
    row[run_status::VCPU].store(vcpu, Ordering::Relaxed);
    row[run_status::RUNS].fetch_add(1, Ordering::Relaxed);
    row[run_status::IN_RUN].store(1, Ordering::Release);
}

/// Records how the `VCPU_RUN` that [`note_run`] noted ended.
fn note_exit(r: Result<&VcpuExit, HypError>) {
    let row = &HOST_RUN_STATUS[crate::cpu_id() % run_status::CPUS];
    let (reason, ipa, data) = match r {
        Ok(e) => (e.reason as u64, e.ipa, e.data),
        Err(err) => (u64::MAX, 0, err as i64 as u64),
    };
    row[run_status::LAST_EXIT].store(reason, Ordering::Relaxed);
    row[run_status::LAST_IPA].store(ipa, Ordering::Relaxed);
    row[run_status::LAST_DATA].store(data, Ordering::Relaxed);
    row[run_status::IN_RUN].store(0, Ordering::Release);
}
