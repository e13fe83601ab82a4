//! Virtual machines: the VM table, guest memory, vCPU ownership, and the run loop.
//!
//! Place in the flow: *validate → lock → check → commit* for the VM hypercalls, and the exit
//! handling of the world switch. Hardware is reached only through [`GuestArch`].
//!
//! # Files
//! - this one: the VM table ([`Vm`], handles), vCPU slots and claims, [`GuestArch`] and
//!   [`GuestConfig`], `VM_CREATE` and `VM_DESTROY`;
//! - `memory`: `VM_ADD_MEMORY`, mapping guest pages on first touch, destroy's memory part;
//! - `regs`: host access to registers (`VCPU_GET_REG`/`SET_REG`/`REG_LIST`, VM-wide ones);
//! - `run`: `VCPU_RUN`, the run loop, exit handling, guest calls, the exit record;
//! - `irq`: `VCPU_SET_IRQ`, `VCPU_IRQ_STATE`, `VCPU_STATS`;
//! - `sysreg`: trapped `MRS`/`MSR` emulation (ID registers, SGIs, UNDEF).
//!
//! # Capacity
//! [`MAX_VMS`] VMs of up to [`MAX_VCPUS`] vCPUs each, [`MAX_REGIONS`] memory regions per VM,
//! guest IPA sizes [`MIN_IPA_BITS`]..=[`MAX_IPA_BITS`]. Exceeding any is `NoCapacity` or
//! `InvalidArgument`, never a panic.
//!
//! # Handles
//! `handle = generation << 8 | slot`, with a per-slot generation bumped on every create, so a
//! handle of a destroyed VM never names its successor in the same slot.
//!
//! # Locks and vCPU ownership
//! VM metadata (stage 2, regions, flags) lives under the memory lock. A vCPU's context is owned
//! by whoever *claims* it ([`VcpuSlot::claim`], an atomic flag, never waited on): `VCPU_RUN` for
//! the whole run, register calls for their duration, `VM_DESTROY` to scrub it. Claims are taken
//! before the memory lock, and `VM_DESTROY` claims every vCPU under the lock, so a VM can never
//! be destroyed while one of its vCPUs runs (the caller gets `Busy`). A host register access
//! holds the memory lock for the whole access, so a protected VM's seal (`ran`, set under the
//! lock by `VCPU_RUN`) cannot close in the middle of it. A claim on a stale handle
//! whose slot was reused can make a concurrent call on the new VM see `Busy` once; retrying is
//! always correct.

pub use super::exit::inject_into_guest;

use crate::cpu::fwreg::FwRegs;
use crate::hw::Hw;
use crate::hyp::Hyp;
use crate::mem::GuestMemory;
use crate::cpu::idreg::{self, VmPolicy, NR_IDREGS};
use crate::mem::owner::Component;
use crate::mem::pgtable::TableMemory;
use crate::platform::MAX_CPUS;
use crate::guest::vcpu::{power, VcpuCtx, VcpuGuard, VcpuSlot};
use crate::guest::{MAX_IPA_BITS, MAX_VCPUS, MAX_VMS, MIN_IPA_BITS};
use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU64, Ordering};
use shared_abi::msg::{vm_flags, VmCreate};
use shared_abi::{HypError, HypResult};

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
    /// The guest may use the PMU directly ([`vm_flags::HOST_PMU`]).
    pub host_pmu: bool,
    /// Firmware pseudo-registers.
    pub fw: FwRegs,
    /// The ID-register values EL2 gave the VM at creation: host writes may only lower them.
    pub idreg_limit: [u64; NR_IDREGS],
    /// The guest has pointer authentication.
    pub ptrauth: bool,
    /// The guest has MTE.
    pub mte: bool,
    /// Its stage 2 is walked with `HCR_EL2.FWB` (every CPU has FEAT_S2FWB): guest RAM is
    /// Write-Back whatever the guest's stage 1 says, so first mappings need no cache
    /// maintenance (see ARCHITECTURE.md, *Cache maintenance*).
    pub fwb: bool,
    /// Where its vCPUs ran: when a CPU's TLB may hold entries a guest's local TLBI missed.
    pub local_tlb: LocalTlbRecord,
    /// `CNTVOFF_EL2` while its vCPUs run ([`shared_abi::reg::CNTVOFF_EL2`]): the physical count
    /// at `VM_CREATE` unless the host set another before the first run.
    pub cntvoff: u64,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTlbRecord {
    vcpu_on_cpu: [u8; MAX_CPUS],
    cpu_of_vcpu: [u8; MAX_VCPUS],
}

impl LocalTlbRecord {
    const NONE: u8 = u8::MAX;

    /// Nothing has run yet: every first run on a CPU invalidates.
    pub const fn new() -> Self {
        Self { vcpu_on_cpu: [Self::NONE; MAX_CPUS], cpu_of_vcpu: [Self::NONE; MAX_VCPUS] }
    }

    /// Records that vCPU `vcpu` runs on physical CPU `cpu` now; `true` if the VM's TLB entries
    /// on `cpu` must be invalidated (locally) first.
    pub fn run_on(&mut self, vcpu: usize, cpu: usize) -> bool {
        let (Some(on_cpu), Some(of_vcpu)) = (self.vcpu_on_cpu.get_mut(cpu), self.cpu_of_vcpu.get_mut(vcpu)) else {
            return true;
        };
        let stale = *on_cpu != vcpu as u8 || *of_vcpu != cpu as u8;
        (*on_cpu, *of_vcpu) = (vcpu as u8, cpu as u8);
        stale
    }
}

impl Default for LocalTlbRecord {
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
        let slot = (handle & 0xFF) as usize;
        match self.slots.get(slot) {
            Some(Some(vm)) if vm.handle == handle => Ok((slot, vm)),
            _ => Err(HypError::InvalidHandle),
        }
    }

    pub(crate) fn lookup_mut(&mut self, handle: u64) -> Result<(usize, &mut Vm), HypError> {
        let slot = (handle & 0xFF) as usize;
        match self.slots.get_mut(slot) {
            Some(Some(vm)) if vm.handle == handle => Ok((slot, vm)),
            _ => Err(HypError::InvalidHandle),
        }
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

/// Every VM's ID registers, by VM slot. Written only under the memory lock and only before the
/// VM first runs; read by the guest's ID-register trap without a lock.
pub type IdRegTable = [[AtomicU64; NR_IDREGS]; MAX_VMS];

pub(crate) fn vcpu_slot<'h, T: TableMemory>(hyp: &'h Hyp<'_, T>, handle: u64, index: u64) -> Result<&'h VcpuSlot, HypError> {
    if index >= MAX_VCPUS as u64 {
        return Err(HypError::InvalidArgument);
    }
    Ok(&hyp.vcpus[(handle & 0xFF) as usize % MAX_VMS][index as usize])
}

/// Claims vCPU `index` of the live VM `handle` for a host call that needs no more than
/// that (the VM lookup is not kept: the claim alone keeps the vCPU's state still).
pub(crate) fn claim_vcpu<'h, T: TableMemory>(hyp: &'h Hyp<'_, T>, handle: u64, index: u64) -> Result<VcpuGuard<'h>, HypError> {
    let guard = vcpu_slot(hyp, handle, index)?.claim().ok_or(HypError::Busy)?;
    let mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup(handle)?;
    if index as usize >= vm.nr_vcpus {
        return Err(HypError::InvalidArgument);
    }
    Ok(guard)
}

/// `VM_CREATE`.
pub(crate) fn vm_create<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, arch: &impl Hw) -> HypResult {
    let req: VmCreate = hyp.msg.read(cpu)?;
    if req.reserved != [0; 2] {
        return Err(HypError::BadMessage);
    }
    if req.nr_vcpus == 0 || req.nr_vcpus as usize > MAX_VCPUS {
        return Err(HypError::InvalidArgument);
    }
    if !(MIN_IPA_BITS..=MAX_IPA_BITS).contains(&req.ipa_bits) || req.flags & !vm_flags::ALL != 0 {
        return Err(HypError::InvalidArgument);
    }
    // From here on the CPU view is fixed: CPUs that come online later must be at least as
    // capable as what this VM is given (see `cpufeat`).
    let cpus = hyp.fix_cpu_features();
    if req.ipa_bits > cpus.max_ipa_bits() as u32 {
        // Some CPU's PARange is smaller than the IPA size asked for.
        return Err(HypError::InvalidArgument);
    }
    let mte = req.flags & vm_flags::MTE != 0;
    if mte && !cpus.mte2() {
        // Some CPU has no allocation tags in memory.
        return Err(HypError::Denied);
    }
    let ptrauth = req.flags & vm_flags::PTRAUTH != 0;
    if ptrauth && !cpus.ptrauth() {
        // Some CPU lacks address or generic authentication, CPUs differ in algorithm or
        // PAuth level, or an IMPLEMENTATION DEFINED algorithm on CPUs that are not identical.
        return Err(HypError::Denied);
    }
    if req.flags & vm_flags::HOST_PMU != 0 && req.flags & vm_flags::PROTECTED != 0 {
        // A protected guest must not share the host's PMU (a side channel both ways).
        return Err(HypError::Denied);
    }
    let mut mem = hyp.mem.lock();
    let slot = mem.vms.slots.iter().position(Option::is_none).ok_or(HypError::NoCapacity)?;
    // The slot's vCPUs may be briefly claimed by a call with a stale handle.
    let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
    for v in &hyp.vcpus[slot] {
        guards.push(v.claim().ok_or(HypError::Busy)?);
    }
    let fwb = cpus.s2fwb();
    let guest_memory = mem.guest_memory_new(fwb, req.ipa_bits as u8, hyp.host_reserve)?;
    let vms = &mut mem.vms;
    let policy = VmPolicy {
        mte,
        ptrauth,
        pmu: req.flags & vm_flags::HOST_PMU != 0,
        ipa_bits: req.ipa_bits as u8,
        protected: req.flags & vm_flags::PROTECTED != 0,
    };
    let idreg_limit = idreg::restrict(cpus.view(), &policy);
    for (a, v) in hyp.idregs[slot].iter().zip(idreg_limit) {
        a.store(v, Ordering::Relaxed);
    }
    let gen = vms.gens[slot].wrapping_add(1).max(1);
    vms.gens[slot] = gen;
    let handle = (gen as u64) << 8 | slot as u64;
    for (i, (g, v)) in guards.iter_mut().zip(&hyp.vcpus[slot]).enumerate() {
        **g = VcpuCtx::new();
        v.power.store(if i == 0 { power::ON } else { power::OFF }, Ordering::Release);
    }
    let protected = req.flags & vm_flags::PROTECTED != 0;
    if protected && !vms.iter().any(|vm| vm.protected) {
        // The first protected VM: from now on a reset must not hand RAM to the next boot
        // unscrubbed. Under the memory lock, like the host's own MEM_PROTECT calls, so the
        // host cannot turn protection off in between. Firmware without MEM_PROTECT (QEMU)
        // answers NOT_SUPPORTED; the VM is created all the same.
        let r = arch.mem_protect(1);
        log::debug!("PSCI MEM_PROTECT(1) for the first protected VM: {r}");
    }
    vms.slots[slot] = Some(Vm {
        handle,
        protected,
        nr_vcpus: req.nr_vcpus as usize,
        vmid: slot as u8 + 1,
        mem: guest_memory,
        ran: false,
        killed: false,
        ended: false,
        host_pmu: req.flags & vm_flags::HOST_PMU != 0,
        fw: FwRegs::new(cpus.fw_provided()),
        idreg_limit,
        ptrauth,
        mte,
        fwb,
        local_tlb: LocalTlbRecord::new(),
        // 0 until the host sets it: on QEMU 7.2 an enabled virtual timer whose
        // CNTV_CVAL_EL0 + CNTVOFF_EL2 wraps re-arms QEMU's timer in the past for ever and
        // hangs the whole machine, and any non-zero offset lets a guest choose such a CVAL
        // (a guest must not be able to stop the emulator). A host that sets an offset takes
        // that on itself (`guest-storm-cval-max-offset`).
        cntvoff: 0,
    });
    Ok([handle, 0, 0])
}

/// `VM_DESTROY`.
pub(crate) fn vm_destroy<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, arch: &impl Hw) -> HypResult {
    let mut mem = hyp.mem.lock();
    let (slot, _) = mem.vms.lookup(handle)?;
    let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
    for v in &hyp.vcpus[slot] {
        guards.push(v.claim().ok_or(HypError::Busy)?);
    }
    // Checked: commit. Nothing below can fail.
    let Some(vm) = mem.vms.slots[slot].take() else { return Err(HypError::InvalidHandle) };
    mem.guest_reclaim_scrub(vm, hyp.platform.untagged, arch);
    // Nothing of the VM's vCPUs stays in EL2's memory: registers, and a guest's pending
    // `CPU_ON` entry point and context.
    for (g, v) in guards.iter_mut().zip(&hyp.vcpus[slot]) {
        **g = VcpuCtx::new();
        v.power.store(power::OFF, Ordering::Release);
        v.on_entry.store(0, Ordering::Relaxed);
        v.on_context.store(0, Ordering::Relaxed);
    }
    Ok([0; 3])
}

#[cfg(test)]
pub(crate) mod tests {
    //! Helpers every test of the VM hypercalls shares, and the tests of VM life (create,
    //! destroy, handles, vCPU claims).
    use super::*;
    pub(crate) use crate::testing::{fixture, Fixture, Recorder};
    pub(crate) use crate::hw::{GuestTrap, TrapKind};
    use crate::exception::syndrome::hpfar_of;
    pub(crate) use shared_abi::msg::{exit, kill, VcpuExit};
    pub(crate) use shared_abi::reg;
    pub(crate) use shared_abi::HypercallId as H;
    pub(crate) use shared_abi::HypError;
    pub(crate) use zerocopy::{FromBytes, IntoBytes};
    pub(crate) use crate::mem::addr::PhysAddr;
    pub(crate) use crate::cpu::idreg;
    pub(crate) use crate::mem::owner::PageState;
    pub(crate) use shared_abi::msg::{vm_flags, VmCreate};
    pub(crate) use crate::guest::vcpu::SysReg;
    pub(crate) use core::sync::atomic::Ordering;

    /// Message page: RAM page 0.
    pub(crate) const MSG: usize = 0;
    /// Guest memory: RAM pages 8..12.
    pub(crate) const GUEST: usize = 8;

    pub(crate) fn trap(esr: u64, ipa: u64) -> GuestTrap {
        GuestTrap { kind: TrapKind::Sync, esr, far: ipa & 0xFFF, hpfar: hpfar_of(ipa) }
    }
    pub(crate) fn dabt_translation(ipa: u64) -> GuestTrap {
        trap((0x24 << 26) | (1 << 25) | 0b000111, ipa)
    }
    pub(crate) fn mmio(ipa: u64, write: bool, srt: u64, sas: u64) -> GuestTrap {
        trap((0x24 << 26) | (1 << 25) | (1 << 24) | sas << 22 | srt << 16 | (1 << 15) | (write as u64) << 6 | 0b000111, ipa)
    }
    pub(crate) fn hvc() -> GuestTrap {
        trap((0x16 << 26) | (1 << 25), 0)
    }

    pub(crate) fn create(f: &mut Fixture, vcpus: u32, flags: u64) -> u64 {
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).ok();
        let req = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, reserved: [0; 2] };
        f.ram.0[MSG * 4096..MSG * 4096 + 32].copy_from_slice(req.as_bytes());
        f.call(0, H::VmCreate, &[]).unwrap()[0]
    }

    /// Leaves no more free table pages than the host stage 2's reserve: a guest mapping fails.
    pub(crate) fn leave_only_the_host_reserve(f: &mut Fixture) {
        let mut mem = f.hyp.mem.lock();
        let (_, _, _, tables, _) = mem.parts_mut();
        tables.limit = tables.in_use() + f.hyp.host_reserve;
    }

    pub(crate) fn exit_record(f: &Fixture) -> VcpuExit {
        VcpuExit::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0
    }

    #[test]
    fn create_validates_the_request() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let cases = [
            (VmCreate { nr_vcpus: 0, ipa_bits: 36, flags: 0, reserved: [0; 2] }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 9, ipa_bits: 36, flags: 0, reserved: [0; 2] }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 31, flags: 0, reserved: [0; 2] }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 41, flags: 0, reserved: [0; 2] }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 1 << 9, reserved: [0; 2] }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::HOST_PMU | vm_flags::PROTECTED, reserved: [0; 2] }, HypError::Denied),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, reserved: [0, 1] }, HypError::BadMessage),
        ];
        for (req, err) in cases {
            f.ram.0[..32].copy_from_slice(req.as_bytes());
            assert_eq!(f.call(0, H::VmCreate, &[]), Err(err), "{req:?}");
        }
        assert_eq!(f.hyp.mem.lock().vms.count(), 0);
    }

    #[test]
    fn capacity_is_an_error_and_handles_go_stale() {
        let mut f = fixture();
        let handles: Vec<u64> = (0..MAX_VMS).map(|_| create(&mut f, 1, 0)).collect();
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, reserved: [0; 2] }.as_bytes());
        assert_eq!(f.call(0, H::VmCreate, &[]), Err(HypError::NoCapacity));
        f.call(0, H::VmDestroy, &[handles[3]]).unwrap();
        let again = create(&mut f, 1, 0);
        assert_eq!(again & 0xFF, handles[3] & 0xFF, "slot reused");
        assert_ne!(again, handles[3], "with a new generation");
        assert_eq!(f.call(0, H::VmDestroy, &[handles[3]]), Err(HypError::InvalidHandle), "stale handle");
        assert_eq!(f.call(0, H::VcpuRun, &[handles[3], 0, 0]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VmDestroy, &[0]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VmDestroy, &[u64::MAX]), Err(HypError::InvalidHandle));
    }

    #[test]
    fn local_tlb_record_trusts_a_cpu_only_for_the_vcpu_that_last_ran_there_and_nowhere_else() {
        let mut r = LocalTlbRecord::new();
        assert!(r.run_on(0, 0), "first run on a CPU");
        assert!(!r.run_on(0, 0), "again on the same CPU");
        assert!(r.run_on(0, 1), "moved to CPU 1");
        assert!(r.run_on(0, 0), "back on CPU 0: its local TLBIs on CPU 1 never reached CPU 0");
        assert!(r.run_on(1, 0), "another vCPU of the VM on CPU 0");
        assert!(r.run_on(0, 0), "and back");
        assert!(r.run_on(MAX_VCPUS, 0) && r.run_on(0, MAX_CPUS), "out of range: invalidate");
    }

    #[test]
    fn create_keeps_the_host_reserve() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        leave_only_the_host_reserve(&mut f);
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, reserved: [0; 2] }.as_bytes());
        assert_eq!(f.call(0, H::VmCreate, &[]), Err(HypError::NoMemory));
    }

    #[test]
    fn destroy_leaves_no_vcpu_state_behind() {
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        // vCPU 0 calls CPU_ON(1, 0x5000, 7): vCPU 1 is left pending with the guest's entry
        // point and context; then the host destroys the VM.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_CPU_ON_64 as u64]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 0x5000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(3), 7]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::CPU_ON as u64, 0, 0]));
        let slot = (h & 0xFF) as usize;
        assert_eq!(f.hyp.vcpus[slot][1].on_entry.load(Ordering::Relaxed), 0x5000);
        f.call(0, H::VmDestroy, &[h]).unwrap();
        for v in &f.hyp.vcpus[slot] {
            assert_eq!(v.power.load(Ordering::Relaxed), power::OFF);
            assert_eq!((v.on_entry.load(Ordering::Relaxed), v.on_context.load(Ordering::Relaxed)), (0, 0));
            assert_eq!(*v.claim().unwrap(), VcpuCtx::new());
        }
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout).is_ok());
    }

    #[test]
    fn vcpu_in_use_is_busy_and_destroy_waits_for_it() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let guard = f.hyp.vcpus[(h & 0xFF) as usize][0].claim().unwrap();
        assert_eq!(f.call(0, H::VmDestroy, &[h]), Err(HypError::Busy));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::Busy));
        drop(guard);
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(f.call(0, H::VmDestroy, &[h]), Err(HypError::InvalidHandle));
    }
}
