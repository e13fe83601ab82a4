//! The VM table: each VM's metadata ([`Vm`]), handles, and which vCPU last ran on each CPU.
//!
//! Place in the flow: *state*. The VM calls that change it are in [`crate::hypercall::vm`];
//! a VM's memory record is [`crate::mem::guest::GuestMemory`], changed only by
//! [`crate::mem::protect`]; vCPU slots and claims are in [`crate::guest::vcpu`].
//!
//! # Capacity
//! [`MAX_VMS`] VMs of up to [`MAX_VCPUS`] vCPUs each, [`crate::mem::guest::MAX_REGIONS`]
//! memory regions per VM, guest IPA sizes [`crate::guest::MIN_IPA_BITS`]..=[`crate::guest::MAX_IPA_BITS`]. Exceeding any is `NoCapacity` or
//! `InvalidArgument`, never a panic.
//!
//! # Handles
//! `handle = generation << 8 | slot`, with a per-slot generation bumped on every create, so a
//! handle of a destroyed VM never names its successor in the same slot.
//!
//! # Locks and vCPU ownership
//! VM metadata (stage 2, regions, flags) lives under the memory lock. A vCPU's context is owned
//! by whoever *claims* it ([`crate::guest::vcpu::VcpuSlot::claim`], an atomic flag, never waited on): `VCPU_RUN` for
//! the whole run, register calls for their duration, `VM_DESTROY` to scrub it. Claims are taken
//! before the memory lock, and `VM_DESTROY` claims every vCPU under the lock, so a VM can never
//! be destroyed while one of its vCPUs runs (the caller gets `Busy`). A host register access
//! holds the memory lock for the whole access, so a protected VM's seal (`ran`, set under the
//! lock by `VCPU_RUN`) cannot close in the middle of it. Only a vCPU's first `VCPU_RUN` in its
//! VM takes the lock; the later ones read what they need of the VM from the vCPU's context
//! ([`RunState`] says why that is sound). A claim on a stale handle
//! whose slot was reused can make a concurrent call on the new VM see `Busy` once; retrying is
//! always correct.

use crate::cpu::fwreg::FwRegs;
use crate::mem::addr::PhysAddr;
use crate::mem::guest::GuestMemory;
use crate::cpu::idreg::NR_IDREGS;
use crate::mem::owner::Component;
use crate::platform::MAX_CPUS;
use crate::guest::{MAX_VCPUS, MAX_VMS};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use crate::guest::coalesce::{Queue, Zone};
use shared_abi::msg::CoalescedWrite;
use shared_abi::HypError;

/// One VM's metadata (under the memory lock).
#[derive(Debug)]
pub struct Vm {
    /// Its handle.
    pub handle: u64,
    /// Protected: donated memory, sealed registers.
    pub protected: bool,
    /// Number of vCPUs.
    pub nr_vcpus: usize,
    /// Stage-2 VMID (slot + 1; the host is 0).
    pub vmid: u8,
    /// Its memory: stage 2 and regions (changed only by [`crate::mem::protect`]).
    pub mem: GuestMemory,
    /// A vCPU has run (a protected VM's registers are sealed from then on).
    pub ran: bool,
    /// EL2 stopped the VM; it never runs again.
    pub killed: bool,
    /// The guest called PSCI `SYSTEM_OFF` or `SYSTEM_RESET`: the VM has ended and never runs
    /// again (a reset is the host's to do, by building a new VM).
    pub ended: bool,
    /// The guest may use the PMU directly ([`shared_abi::msg::vm_flags::HOST_PMU`]).
    pub host_pmu: bool,
    /// Firmware pseudo-registers.
    pub fw: FwRegs,
    /// The ID-register values EL2 gave the VM at creation: host writes may only lower them.
    pub idreg_limit: [u64; NR_IDREGS],
    /// The guest has pointer authentication.
    pub ptrauth: bool,
    /// The guest has MTE.
    pub mte: bool,
    /// The guest's SVE vector length in quadwords (128 bits), 0 without SVE: `ZCR_EL2.LEN` + 1
    /// while it runs ([`crate::cpu::sve`]); each vCPU's context has the same
    /// ([`crate::guest::vcpu::VcpuCtx::sve_vq`]).
    pub sve_vq: u8,
    /// Its stage 2 is walked with `HCR_EL2.FWB` (every CPU has FEAT_S2FWB): guest RAM is
    /// Write-Back whatever the guest's stage 1 says, so first mappings need no cache
    /// maintenance (see docs/memory.md, *Cache maintenance*).
    pub fwb: bool,
    /// `CNTVOFF_EL2` while its vCPUs run ([`shared_abi::reg::CNTVOFF_EL2`]): 0 at `VM_CREATE`
    /// (the guest's virtual count is the physical count) unless the host set another before the
    /// first run.
    pub cntvoff: u64,
    /// Its measurement ([`shared_abi::measure`]): built by `VM_CREATE` and `VM_ADD_MEMORY`,
    /// sealed at the first `VCPU_RUN`.
    pub measurement: Measured,
    /// The SMCCC calls it forwards to the host (`VM_SMCCC_FORWARD`, before the first run).
    pub smccc_forward: crate::guest::smccc_forward::SmcccForward,
    /// The handover region's IPA and first backing page, if the host gave one
    /// ([`shared_abi::measure::add_flags::HANDOVER`]): EL2 writes the handover there at the seal.
    pub handover: Option<(u64, PhysAddr)>,
}

/// A VM's measurement.
#[derive(Clone)]
pub enum Measured {
    /// Before the first run: records are still added.
    Building(shared_abi::measure::Measurement),
    /// From the first run on: the value.
    Sealed([u8; shared_abi::measure::DIGEST]),
}

impl core::fmt::Debug for Measured {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Measured::Building(_) => f.write_str("Building"),
            Measured::Sealed(m) => write!(f, "Sealed({:02x?})", m),
        }
    }
}

/// Which vCPU of one VM last ran on each physical CPU, and on which CPU each vCPU last ran.
///
/// A guest may invalidate its TLB entries with a *local* TLBI (no `IS`), which reaches only the
/// physical CPU it runs on. Entries of the VM's VMID that another physical CPU still holds are
/// then stale for that vCPU should it run there later, or for another vCPU of the VM running
/// there (the guest believes each vCPU has a TLB of its own). So a CPU's entries for the VMID
/// can be trusted only if the last vCPU of the VM that ran on it is the one about to run, and
/// that vCPU has not run anywhere else since. Anything else: invalidate the VMID's entries on
/// this CPU before entry. (Stage-2 changes are EL2's and always broadcast.)
///
/// Read and written without the memory lock ([`RunState`]): each entry has one writer at a
/// time. `vcpu_on_cpu[c]` is written only by `VCPU_RUN` on CPU `c`, `cpu_of_vcpu[v]` only by the
/// holder of vCPU `v`'s claim (the claim's acquire and release order one holder's writes
/// before the next one's reads), and both are reset by `VM_CREATE` under the memory lock, when
/// no vCPU of the slot can be running (see [`RunState`]).
pub struct LocalTlbRecord {
    vcpu_on_cpu: [AtomicU8; MAX_CPUS],
    cpu_of_vcpu: [AtomicU8; MAX_VCPUS],
}

impl LocalTlbRecord {
    const NONE: u8 = u8::MAX;

    /// Nothing has run yet: every first run on a CPU invalidates.
    pub const fn new() -> Self {
        Self { vcpu_on_cpu: [const { AtomicU8::new(Self::NONE) }; MAX_CPUS], cpu_of_vcpu: [const { AtomicU8::new(Self::NONE) }; MAX_VCPUS] }
    }

    /// Forgets every run (`VM_CREATE`, under the memory lock).
    pub fn reset(&self) {
        for e in self.vcpu_on_cpu.iter().chain(&self.cpu_of_vcpu) {
            e.store(Self::NONE, Ordering::Relaxed);
        }
    }

    /// Records that vCPU `vcpu` runs on physical CPU `cpu` now; `true` if the VM's TLB entries
    /// on `cpu` must be invalidated (locally) first.
    pub fn run_on(&self, vcpu: usize, cpu: usize) -> bool {
        let (Some(on_cpu), Some(of_vcpu)) = (self.vcpu_on_cpu.get(cpu), self.cpu_of_vcpu.get(vcpu)) else {
            return true;
        };
        let stale = on_cpu.load(Ordering::Relaxed) != vcpu as u8 || of_vcpu.load(Ordering::Relaxed) != cpu as u8;
        on_cpu.store(vcpu as u8, Ordering::Relaxed);
        of_vcpu.store(cpu as u8, Ordering::Relaxed);
        stale
    }
}

impl Default for LocalTlbRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// A VM slot's queue of coalesced MMIO writes ([`RunState`]), and what exit records must tell
/// the host so that it applies every write before any exit that came after it.
///
/// Every exit record of a VM that has queued a write carries the queue's header (`take`):
/// how many writes earlier records carried, and the writes queued since. The host serves an
/// exit only once it has applied every write numbered below the header's, then the record's
/// own: so a write is applied before any exit its guest made after it, whichever vCPU's record
/// carries it, and the writes in the order EL2 took them.
pub struct Coalesced {
    queue: crate::sync::Mutex<Queue>,
    /// A write was ever queued since `VM_CREATE`: until then the records carry no header (there
    /// is nothing to wait for).
    used: AtomicBool,
    /// Set under the lock with the first write queued, cleared with the last taken, so that an
    /// exit with nothing queued takes no lock. A run that reads it clear while another CPU
    /// queues a write leaves that write to a later record: the queuing vCPU's own next exit
    /// reads it set (same CPU, program order), and so does an exit the guest ordered after the
    /// write with its own synchronisation (a release, or a barrier, after the write on the one
    /// vCPU, observed by the other before its exit); an exit nothing orders after the write
    /// may be served before it, as it could have happened first.
    nonempty: AtomicBool,
    /// How many writes records have carried (the queue's first number), stored under the lock
    /// before `nonempty` is cleared: an exit that reads `nonempty` clear reads at least the
    /// count that clearing followed.
    carried: AtomicU64,
    /// The zone (`VM_MMIO_COALESCE`): set under the memory lock before the VM's first run,
    /// read by its runs without it (each vCPU's first run takes the lock after it).
    zone_base: AtomicU64,
    zone_len: AtomicU64,
}

impl Coalesced {
    pub const fn new() -> Self {
        Self {
            queue: crate::sync::Mutex::new(Queue::new()),
            used: AtomicBool::new(false),
            nonempty: AtomicBool::new(false),
            carried: AtomicU64::new(0),
            zone_base: AtomicU64::new(0),
            zone_len: AtomicU64::new(0),
        }
    }

    /// The VM's zone.
    pub fn zone(&self) -> Zone {
        Zone::from_parts(self.zone_base.load(Ordering::Relaxed), self.zone_len.load(Ordering::Relaxed))
    }

    /// `VM_MMIO_COALESCE`, under the memory lock, before the VM's first run.
    pub fn set_zone(&self, zone: Zone) {
        let (base, len) = zone.parts();
        self.zone_base.store(base, Ordering::Relaxed);
        self.zone_len.store(len, Ordering::Relaxed);
    }

    /// Whether the VM has queued a write since `VM_CREATE` (its records carry a header).
    #[inline(always)]
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    /// `VM_CREATE` and `VM_DESTROY`: a new VM in the slot numbers from 0, and nothing a
    /// destroyed VM's guest wrote stays in EL2's memory.
    pub fn reset(&self) {
        let mut q = self.queue.lock();
        *q = Queue::new();
        self.used.store(false, Ordering::Relaxed);
        self.nonempty.store(false, Ordering::Relaxed);
        self.carried.store(0, Ordering::Relaxed);
        self.set_zone(Zone::NONE);
    }

    /// Queues a write; `false` when the queue is full (the write exits).
    pub fn push(&self, ipa: u64, size: u64, value: u64) -> bool {
        let mut q = self.queue.lock();
        let pushed = q.push(ipa, size, value);
        if pushed {
            self.used.store(true, Ordering::Release);
            self.nonempty.store(true, Ordering::Release);
        }
        pushed
    }

    /// For an exit record: hands `carry` the number of the first write not yet carried and
    /// the writes queued (maybe none), and forgets those if it succeeds. `None` (nothing to
    /// carry, no header) while no write was ever queued, or if `carry` failed (the writes stay
    /// queued); else how many writes the record carries.
    pub fn take(&self, carry: impl FnOnce(u64, &[CoalescedWrite]) -> Result<(), HypError>) -> Option<u32> {
        if !self.used.load(Ordering::Acquire) {
            return None;
        }
        if !self.nonempty.load(Ordering::Acquire) {
            return carry(self.carried.load(Ordering::Acquire), &[]).ok().map(|()| 0);
        }
        let mut q = self.queue.lock();
        let (first, writes) = q.pending();
        let n = writes.len() as u32;
        carry(first, writes).ok()?;
        q.taken();
        self.carried.store(first.wrapping_add(u64::from(n)), Ordering::Release);
        self.nonempty.store(false, Ordering::Release);
        Some(n)
    }
}

impl Default for Coalesced {
    fn default() -> Self {
        Self::new()
    }
}

/// Per VM slot: what `VCPU_RUN` needs of its VM without the memory lock once the vCPU has run
/// (its run configuration, fixed from the VM's first run on, is kept in the vCPU's context:
/// [`crate::guest::vcpu::RunConfig`]).
///
/// Why reading it without the lock is sound: a vCPU's context holds a run configuration only
/// after a `VCPU_RUN` of that VM took the lock, and `VM_DESTROY` resets every context of the VM
/// while it holds all their claims; so a `VCPU_RUN` that holds a claim and finds its handle in
/// the context knows the VM lives, and stays alive, for the whole run. `VM_CREATE` resets this
/// state under the lock, before any vCPU of the new VM can have run.
pub struct RunState {
    /// The VM was stopped: killed by EL2, or ended by the guest (`SYSTEM_OFF`/`SYSTEM_RESET`).
    /// Set under the memory lock with [`Vm::killed`] or [`Vm::ended`]; a run that sees it goes
    /// to the lock, which answers `NotRunnable`. A run that does not see a stop made meanwhile
    /// on another CPU is a run that began just before it, as with the lock.
    stopped: AtomicBool,
    /// Where its vCPUs ran.
    pub tlb: LocalTlbRecord,
    /// Its coalesced MMIO writes not yet carried to the host.
    pub coalesced: Coalesced,
}

impl RunState {
    pub const fn new() -> Self {
        Self { stopped: AtomicBool::new(false), tlb: LocalTlbRecord::new(), coalesced: Coalesced::new() }
    }

    /// `VM_CREATE`, under the memory lock: a new VM in the slot.
    pub fn reset(&self) {
        self.stopped.store(false, Ordering::Relaxed);
        self.tlb.reset();
        self.coalesced.reset();
    }

    /// Under the memory lock, with [`Vm::killed`] or [`Vm::ended`].
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether the VM was stopped.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl Default for RunState {
    fn default() -> Self {
        Self::new()
    }
}

impl Vm {
    /// The ownership component of this VM's pages.
    pub fn component(&self) -> Component {
        Component::Guest(self.vmid - 1)
    }
}

/// The VM-table slot a handle names: its low 8 bits (see the module documentation).
pub const fn handle_slot(handle: u64) -> usize {
    (handle & 0xFF) as usize
}

/// All VMs (under the memory lock).
#[derive(Debug)]
pub struct VmTable {
    slots: [Option<Vm>; MAX_VMS],
    gens: [u32; MAX_VMS],
}

impl Default for VmTable {
    fn default() -> Self {
        Self { slots: Default::default(), gens: [0; MAX_VMS] }
    }
}

impl VmTable {
    /// The slot and VM a handle names.
    ///
    /// # Errors
    /// [`HypError::InvalidHandle`] if it names no live VM.
    pub fn lookup(&self, handle: u64) -> Result<(usize, &Vm), HypError> {
        let slot = handle_slot(handle);
        match self.slots.get(slot) {
            Some(Some(vm)) if vm.handle == handle => Ok((slot, vm)),
            _ => Err(HypError::InvalidHandle),
        }
    }

    pub(crate) fn lookup_mut(&mut self, handle: u64) -> Result<(usize, &mut Vm), HypError> {
        let slot = handle_slot(handle);
        match self.slots.get_mut(slot) {
            Some(Some(vm)) if vm.handle == handle => Ok((slot, vm)),
            _ => Err(HypError::InvalidHandle),
        }
    }

    /// A slot no live VM holds.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    /// The handle of the next VM created in `slot`: a new generation (never 0) above the slot.
    pub fn next_handle(&mut self, slot: usize) -> u64 {
        let gen = self.gens[slot].wrapping_add(1).max(1);
        self.gens[slot] = gen;
        (gen as u64) << 8 | slot as u64
    }

    /// Puts `vm` in `slot` (a [`Self::free_slot`], with a [`Self::next_handle`]).
    pub fn insert(&mut self, slot: usize, vm: Vm) {
        self.slots[slot] = Some(vm);
    }

    /// Takes the VM out of `slot`.
    pub fn remove(&mut self, slot: usize) -> Option<Vm> {
        self.slots.get_mut(slot)?.take()
    }

    /// Every live VM.
    pub fn iter(&self) -> impl Iterator<Item = &Vm> {
        self.slots.iter().flatten()
    }

    /// Every live VM, mutably (tests build broken states with it).
    #[cfg(test)]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Vm> {
        self.slots.iter_mut().flatten()
    }

    /// Number of live VMs.
    pub fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// What a vCPU's fault may learn about its VM's memory without the memory lock: the IPA
/// range its regions span and whether its MMIO guard is on. Published under the lock
/// ([`crate::guest::memory::publish_layout`]) by every call that may change either; read
/// without it at a stage-2 fault ([`crate::guest::memory::map_guest_page`]), where it saves
/// taking the lock to learn that an MMIO access is not RAM.
///
/// Why a read without the lock is sound: while a VM lives its regions only grow
/// (`VM_ADD_MEMORY`; a protected VM's are frozen once it has run, `MemState::host_give_guest`)
/// and its guard only turns on (`MmioGuard::add`, protected VMs only). The fields are atomics,
/// stored with release and loaded with acquire; a running vCPU need not have taken the lock
/// since a publication (a `VCPU_RUN` after a vCPU's first does not: [`RunState`]). A fault
/// that reads an older hint (or `lo` and `hi` of two publications) sees a span no larger than
/// the regions' at some moment before, and decides as if it had come before the change. It
/// fails closed: a fresh or destroyed VM's hint ([`LayoutHint::CLOSED`]) sends every fault to
/// the lock, so a change that was never published costs a lock, never a guest's data.
pub(crate) struct LayoutHint {
    lo: AtomicU64,
    hi: AtomicU64,
    guarded: AtomicBool,
}

impl LayoutHint {
    /// Every address may be RAM: ask under the lock.
    pub(crate) const CLOSED: (u64, u64, bool) = (0, u64::MAX, true);

    pub(crate) const fn new() -> Self {
        Self { lo: AtomicU64::new(Self::CLOSED.0), hi: AtomicU64::new(Self::CLOSED.1), guarded: AtomicBool::new(Self::CLOSED.2) }
    }

    /// Under the memory lock: the regions span `[lo, hi)`, the guard is `guarded`.
    pub(crate) fn publish(&self, lo: u64, hi: u64, guarded: bool) {
        self.lo.store(lo, Ordering::Release);
        self.hi.store(hi, Ordering::Release);
        self.guarded.store(guarded, Ordering::Release);
    }

    /// Without the lock: `ipa` is outside every region and the guard is off, so an access to
    /// it is an MMIO exit (`false`: ask under the lock).
    pub(crate) fn surely_not_ram(&self, ipa: u64) -> bool {
        let outside = ipa < self.lo.load(Ordering::Acquire) || ipa >= self.hi.load(Ordering::Acquire);
        outside && !self.guarded.load(Ordering::Acquire)
    }
}

/// Every VM's ID registers, by VM slot. Written only under the memory lock and only before the
/// VM first runs; read by the guest's ID-register trap without a lock.
pub type IdRegTable = [[AtomicU64; NR_IDREGS]; MAX_VMS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_tlb_record_trusts_a_cpu_only_for_the_vcpu_that_last_ran_there_and_nowhere_else() {
        let r = LocalTlbRecord::new();
        assert!(r.run_on(0, 0), "first run on a CPU");
        assert!(!r.run_on(0, 0), "again on the same CPU");
        assert!(r.run_on(0, 1), "moved to CPU 1");
        assert!(r.run_on(0, 0), "back on CPU 0: its local TLBIs on CPU 1 never reached CPU 0");
        assert!(r.run_on(1, 0), "another vCPU of the VM on CPU 0");
        assert!(r.run_on(0, 0), "and back");
        assert!(r.run_on(MAX_VCPUS, 0) && r.run_on(0, MAX_CPUS), "out of range: invalidate");
        r.reset();
        assert!(r.run_on(0, 0), "a new VM in the slot: first run on a CPU");
    }
}
