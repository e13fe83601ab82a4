//! Virtual machines: the VM table, guest memory, vCPU ownership, and the run loop.
//!
//! Place in the flow: *validate → lock → check → commit* for the VM hypercalls, and the exit
//! handling of the world switch. Hardware is reached only through [`GuestArch`].
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

use crate::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::exception::{ec, inject_sync, Esr, FaultKind, Injection, TrapState};
use crate::hyp::{Hyp, Maintenance, MemState};
use crate::owner::Component;
use crate::platform::MAX_CPUS;
use crate::psci::{self, Firmware};
use crate::pgtable::{Attrs, Format, MemType, PageTable, Perms, TableMemory};
use crate::fwreg::{self, FwError, FwRegs};
use crate::idreg::{self, VmPolicy, NR_IDREGS};
use crate::vcpu::{classify_guest_call, decode_mmio, power, pstate_enters_guest, register_ids, GuestCall, RegError, VcpuCtx};
use arrayvec::ArrayVec;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use crate::vgic::{self, IrqError};
use shared_abi::msg::{exit, kill, vm_flags, RegList, VcpuExit, VmCreate, MAX_REG_IDS};
use shared_abi::{reg, HypError, HypResult};

/// Most VMs alive at once.
pub const MAX_VMS: usize = 16;
/// Most vCPUs per VM.
pub const MAX_VCPUS: usize = 8;
/// Most memory regions per VM.
pub const MAX_REGIONS: usize = 16;
/// Smallest guest IPA size.
pub const MIN_IPA_BITS: u32 = 32;
/// Largest guest IPA size.
pub const MAX_IPA_BITS: u32 = 40;
/// Exits EL2 handles by itself before it gives the CPU back to the host anyway (so a guest
/// cannot keep a host CPU forever through exits the host never sees).
pub const MAX_INTERNAL_EXITS: u32 = 100_000;

const GUEST_RAM: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RWX };

/// A run of guest memory: `pages` pages at `ipa`, backed by host-given pages at `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First guest IPA.
    pub ipa: u64,
    /// First backing page.
    pub pa: PhysAddr,
    /// Number of pages.
    pub pages: u64,
}

impl Region {
    /// Bytes of guest memory.
    pub fn size(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
    /// The backing pages.
    pub fn phys(&self) -> PhysRange {
        PhysRange { start: self.pa, end: PhysAddr(self.pa.0 + self.size()) }
    }
}

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
    /// The guest's stage 2.
    pub s2: PageTable,
    /// Its memory.
    pub regions: ArrayVec<Region, MAX_REGIONS>,
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
    /// The backing page of `ipa`, if it is guest memory.
    pub fn translate(&self, ipa: u64) -> Option<PhysAddr> {
        self.regions
            .iter()
            .find(|r| ipa >= r.ipa && ipa - r.ipa < r.size())
            .map(|r| PhysAddr(r.pa.0 + ((ipa - r.ipa) & !(PAGE_SIZE - 1))))
    }

    fn overlaps(&self, ipa: u64, size: u64) -> bool {
        self.regions.iter().any(|r| ipa < r.ipa + r.size() && r.ipa < ipa + size)
    }

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

    fn lookup_mut(&mut self, handle: u64) -> Result<(usize, &mut Vm), HypError> {
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

/// A vCPU's context and who holds it.
pub struct VcpuSlot {
    claimed: AtomicBool,
    /// PSCI power state ([`power`]).
    pub power: AtomicU8,
    /// `CPU_ON` entry point for a pending power-on.
    pub on_entry: AtomicU64,
    /// `CPU_ON` context for a pending power-on.
    pub on_context: AtomicU64,
    ctx: UnsafeCell<VcpuCtx>,
}

// SAFETY: `ctx` is only reached through a `VcpuGuard`, and at most one guard exists per slot
// (the `claimed` flag is taken with an acquire compare-exchange and released on drop).
unsafe impl Sync for VcpuSlot {}

impl VcpuSlot {
    /// An unclaimed, powered-off vCPU at reset.
    pub const fn new() -> Self {
        Self {
            claimed: AtomicBool::new(false),
            power: AtomicU8::new(power::OFF),
            on_entry: AtomicU64::new(0),
            on_context: AtomicU64::new(0),
            ctx: UnsafeCell::new(VcpuCtx::new()),
        }
    }

    /// Takes the vCPU's context, or `None` if someone else holds it.
    pub fn claim(&self) -> Option<VcpuGuard<'_>> {
        self.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            // Lazily: a guard built and dropped on failure would release the holder's claim.
            .then(|| VcpuGuard { slot: self })
    }
}

impl Default for VcpuSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Exclusive access to a vCPU's context.
pub struct VcpuGuard<'a> {
    slot: &'a VcpuSlot,
}

impl Deref for VcpuGuard<'_> {
    type Target = VcpuCtx;
    fn deref(&self) -> &VcpuCtx {
        // SAFETY: the guard is the only holder of the claim (see `VcpuSlot`'s Sync).
        unsafe { &*self.slot.ctx.get() }
    }
}

impl DerefMut for VcpuGuard<'_> {
    fn deref_mut(&mut self) -> &mut VcpuCtx {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.slot.ctx.get() }
    }
}

impl Drop for VcpuGuard<'_> {
    fn drop(&mut self) {
        self.slot.claimed.store(false, Ordering::Release);
    }
}

/// Every vCPU slot, by VM slot and vCPU index.
pub type VcpuTable = [[VcpuSlot; MAX_VCPUS]; MAX_VMS];

/// Every VM's ID registers, by VM slot. Written only under the memory lock and only before the
/// VM first runs; read by the guest's ID-register trap without a lock.
pub type IdRegTable = [[AtomicU64; NR_IDREGS]; MAX_VMS];

/// How a guest entry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// A synchronous exception (see `esr`).
    Sync,
    /// A physical IRQ or FIQ.
    Irq,
    /// A physical SError.
    SError,
}

/// The syndrome of a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTrap {
    /// What happened.
    pub kind: TrapKind,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// `HPFAR_EL2`.
    pub hpfar: u64,
}

/// What the run loop needs to run a VM.
#[derive(Clone, Copy, Debug)]
pub struct GuestConfig {
    /// `VTTBR_EL2`: stage-2 root and VMID.
    pub vttbr: u64,
    /// Stage-2 root level.
    pub start_level: u8,
    /// Guest IPA size.
    pub ipa_bits: u8,
    /// `VMPIDR_EL2`.
    pub vmpidr: u64,
    /// Leave the PMU untrapped ([`vm_flags::HOST_PMU`]).
    pub host_pmu: bool,
    /// Load the guest's pointer-authentication keys now (and leave them untrapped).
    pub pauth_now: bool,
    /// MTE VM: allocation tags accessible (`HCR_EL2.ATA`), MTE registers switched.
    pub mte: bool,
    /// The stage 2 uses the FEAT_S2FWB encoding: run with `HCR_EL2.FWB` set.
    pub fwb: bool,
    /// A protected VM: the host's PMU must not count it (see `controls::guest_controls`).
    pub protected: bool,
}

/// Hardware operations for guests (the world switch), faked in tests.
///
/// A `VCPU_RUN` *loads* the vCPU once (host EL1 state out, guest traps, stage 2 and EL1 state
/// in), *runs* it as often as EL2 handles its exits by itself (only GPRs, PC and PSTATE move),
/// and *puts* it back once, when returning to the host. Between `load` and `put` the guest's
/// EL1 system registers live in the CPU, not in `ctx.sys`.
pub trait GuestArch: Maintenance + Firmware {
    /// What `load` saved of the host, for `put`.
    type Saved;
    /// Saves the host's EL1 state and EL2 configuration; installs the guest's.
    fn load(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> Self::Saved;
    /// Enters the loaded guest and returns at its next exit.
    fn run(&self, ctx: &mut VcpuCtx) -> GuestTrap;
    /// Saves the guest's EL1 state into `ctx` and restores the host's.
    fn put(&self, ctx: &mut VcpuCtx, saved: Self::Saved);
    /// The guest's first pointer-authentication use in this run (lazy policy): stop trapping
    /// it (`HCR_EL2.API/APK`), save the host's keys in `saved` and load the guest's from
    /// `ctx`; `put` swaps them back. `false` if already loaded.
    fn pauth_load(&self, ctx: &VcpuCtx, saved: &mut Self::Saved) -> bool;
    /// The guest's first FP/SIMD use in this run (its access trapped): stop trapping FP/SIMD,
    /// save the host's FP/SIMD registers in `saved` and load the guest's from `ctx`; `put`
    /// swaps them back. `false` if they are already loaded (the trap is then not ours to fix).
    fn fp_load(&self, ctx: &VcpuCtx, saved: &mut Self::Saved) -> bool;
    /// While loaded: copies the guest's live EL1 system registers into `ctx`.
    fn el1_to_ctx(&self, ctx: &mut VcpuCtx);
    /// While loaded: writes `ctx`'s EL1 system registers back to the CPU.
    fn el1_from_ctx(&self, ctx: &VcpuCtx);
    /// New valid entries in a guest stage 2: `DSB ISHST` (the entry to the guest synchronises).
    fn guest_s2_mapped(&self);
    /// Invalidates every TLB entry of the VMID in `vttbr`, on all CPUs.
    fn flush_guest_tlb(&self, vttbr: u64);
    /// While loaded, before the first entry: invalidates the loaded guest's TLB entries (its
    /// VMID, stage 1 and 2) and the instruction cache on *this CPU only*, so nothing a local
    /// TLBI or `IC IALLU` of the guest missed on another CPU survives here (see
    /// [`LocalTlbRecord`]).
    fn flush_guest_local(&self);
    /// Zeroes the page at `pa` (EL2 reaches it through a temporary mapping), and its
    /// allocation tags if `tagged`: the CPU has FEAT_MTE2 *and* the page has tag storage. Tag
    /// operations (`DC GZVA`) are never used on memory without tag storage. Then cleans and
    /// invalidates it to the PoC through the same mapping: the zeroes may sit in dirty lines
    /// over the guest's data in DRAM, and the host stage 2 is not FWB, so a host mapping the
    /// page Non-cacheable would read DRAM (the same as [`Self::clean_inval_poc`], without a
    /// second temporary mapping and its broadcast TLBI).
    fn scrub_page(&self, pa: PhysAddr, tagged: bool);
    /// Sets every allocation tag of the page at `pa` to zero, keeping its data.
    fn clear_tags(&self, pa: PhysAddr);
    /// Cleans and invalidates the page at `pa` to the Point of Coherency (`DC CIVAC` per line
    /// through the fixmap, `DSB ISH`): DRAM then holds what any cache held, and no cache holds
    /// a line of it, so a non-cacheable view of the page and a cacheable one agree.
    fn clean_inval_poc(&self, pa: PhysAddr);
}

const HPFAR_FIPA_MASK: u64 = 0x0000_0FFF_FFFF_FFF0;
const ISS_S1PTW: u64 = 1 << 7;
const NOT_SUPPORTED: u64 = -1i64 as u64;
const PSCI_ALREADY_ON: u64 = -4i64 as u64;
const PSCI_ON_PENDING: u64 = -5i64 as u64;

/// The running vCPU, as exit handling needs it.
#[derive(Clone, Copy)]
struct Me<'f> {
    vm_slot: usize,
    index: usize,
    nr_vcpus: usize,
    /// The VM's firmware registers (frozen once it has run).
    fw: &'f FwRegs,
    /// The VM has pointer authentication.
    ptrauth: bool,
}

/// Outcome of [`Hyp::map_guest_page`].
enum GuestPage {
    /// The page is guest RAM and mapped (now or before).
    Mapped,
    /// The page is guest RAM but EL2 has no table page left for it.
    NoMemory,
    /// An MTE VM's page without allocation-tag storage behind it.
    Untagged(PhysAddr),
    /// Not guest RAM.
    NotRam,
}

enum Next {
    Resume,
    Exit(VcpuExit),
}

fn irq_err(e: IrqError) -> HypError {
    match e {
        IrqError::BadField => HypError::InvalidArgument,
        IrqError::Hardware | IrqError::NoVgic => HypError::Denied,
        IrqError::Queued => HypError::Busy,
        IrqError::Full => HypError::NoCapacity,
    }
}

fn vm_err(e: RegError) -> HypError {
    match e {
        RegError::Unknown => HypError::UnknownRegister,
        RegError::ReadOnly => HypError::Denied,
        RegError::TooWide | RegError::BadValue => HypError::InvalidArgument,
    }
}

impl<'a, T: TableMemory> Hyp<'a, T> {
    fn vcpu_slot(&self, handle: u64, index: u64) -> Result<&VcpuSlot, HypError> {
        if index >= MAX_VCPUS as u64 {
            return Err(HypError::InvalidArgument);
        }
        Ok(&self.vcpus[(handle & 0xFF) as usize % MAX_VMS][index as usize])
    }

    /// Claims vCPU `index` of the live VM `handle` for a host call that needs no more than
    /// that (the VM lookup is not kept: the claim alone keeps the vCPU's state still).
    fn claim_vcpu(&self, handle: u64, index: u64) -> Result<VcpuGuard<'_>, HypError> {
        let guard = self.vcpu_slot(handle, index)?.claim().ok_or(HypError::Busy)?;
        let mem = self.mem.lock();
        let (_, vm) = mem.vms.lookup(handle)?;
        if index as usize >= vm.nr_vcpus {
            return Err(HypError::InvalidArgument);
        }
        Ok(guard)
    }

    /// `VM_CREATE`.
    pub(crate) fn vm_create(&self, cpu: usize, fw: &impl Firmware) -> HypResult {
        let req: VmCreate = self.read_message(cpu)?;
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
        let cpus = self.fix_cpu_features();
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
        let mut mem = self.mem.lock();
        let slot = mem.vms.slots.iter().position(Option::is_none).ok_or(HypError::NoCapacity)?;
        // The slot's vCPUs may be briefly claimed by a call with a stale handle.
        let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
        for v in &self.vcpus[slot] {
            guards.push(v.claim().ok_or(HypError::Busy)?);
        }
        let MemState { tables, vms, .. } = &mut *mem;
        if tables.free_pages() <= self.host_reserve {
            return Err(HypError::NoMemory);
        }
        let fwb = cpus.s2fwb();
        let format = if fwb { Format::Stage2Fwb } else { Format::Stage2 };
        let s2 = PageTable::new(tables, format, req.ipa_bits as u8).map_err(|_| HypError::NoMemory)?;
        let policy = VmPolicy {
            mte,
            ptrauth,
            pmu: req.flags & vm_flags::HOST_PMU != 0,
            ipa_bits: req.ipa_bits as u8,
            protected: req.flags & vm_flags::PROTECTED != 0,
        };
        let idreg_limit = idreg::restrict(cpus.view(), &policy);
        for (a, v) in self.idregs[slot].iter().zip(idreg_limit) {
            a.store(v, Ordering::Relaxed);
        }
        let gen = vms.gens[slot].wrapping_add(1).max(1);
        vms.gens[slot] = gen;
        let handle = (gen as u64) << 8 | slot as u64;
        for (i, (g, v)) in guards.iter_mut().zip(&self.vcpus[slot]).enumerate() {
            **g = VcpuCtx::new();
            v.power.store(if i == 0 { power::ON } else { power::OFF }, Ordering::Release);
        }
        let protected = req.flags & vm_flags::PROTECTED != 0;
        if protected && !vms.iter().any(|vm| vm.protected) {
            // The first protected VM: from now on a reset must not hand RAM to the next boot
            // unscrubbed. Under the memory lock, like the host's own MEM_PROTECT calls, so the
            // host cannot turn protection off in between. Firmware without MEM_PROTECT (QEMU)
            // answers NOT_SUPPORTED; the VM is created all the same.
            let r = fw.mem_protect(1);
            log::debug!("PSCI MEM_PROTECT(1) for the first protected VM: {r}");
        }
        vms.slots[slot] = Some(Vm {
            handle,
            protected,
            nr_vcpus: req.nr_vcpus as usize,
            vmid: slot as u8 + 1,
            s2,
            regions: ArrayVec::new(),
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
        });
        Ok([handle, 0, 0])
    }

    /// `VM_DESTROY`.
    pub(crate) fn vm_destroy(&self, handle: u64, arch: &impl GuestArch) -> HypResult {
        let mut mem = self.mem.lock();
        let (slot, _) = mem.vms.lookup(handle)?;
        let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
        for v in &self.vcpus[slot] {
            guards.push(v.claim().ok_or(HypError::Busy)?);
        }
        // Checked: commit. Nothing below can fail.
        let MemState { own, tables, vms, .. } = &mut *mem;
        let Some(vm) = vms.slots[slot].take() else { return Err(HypError::InvalidHandle) };
        let me = vm.component();
        for r in &vm.regions {
            if vm.protected {
                for p in 0..r.pages {
                    let pa = PhysAddr(r.pa.0 + p * PAGE_SIZE);
                    // Zeroed and cleaned to the PoC, FWB or not (see `scrub_page`).
                    arch.scrub_page(pa, !self.platform.untagged.is_some_and(|u| u.contains(pa)));
                }
                if own.donate(r.phys(), me, Component::Host).is_err() {
                    log::error!("VM {handle:#x}: region {r:?} not owned by the guest at destroy");
                }
            } else if own.unshare(r.phys(), Component::Host, me).is_err() {
                log::error!("VM {handle:#x}: region {r:?} not shared at destroy");
            }
        }
        arch.flush_guest_tlb(vm.s2.root().0 | (vm.vmid as u64) << 48);
        vm.s2.destroy(tables);
        // Nothing of the VM's vCPUs stays in EL2's memory: registers, and a guest's pending
        // `CPU_ON` entry point and context.
        for (g, v) in guards.iter_mut().zip(&self.vcpus[slot]) {
            **g = VcpuCtx::new();
            v.power.store(power::OFF, Ordering::Release);
            v.on_entry.store(0, Ordering::Relaxed);
            v.on_context.store(0, Ordering::Relaxed);
        }
        Ok([0; 3])
    }

    /// The host's PSCI `MEM_PROTECT(enable)` ([`psci::mem_protect`]): decided and forwarded
    /// under the memory lock, where protected VMs are created and destroyed, so the count
    /// cannot change between the decision and firmware's answer. Returns the value for `x0`.
    pub fn host_mem_protect(&self, enable: u32, fw: &impl Firmware) -> i64 {
        let mem = self.mem.lock();
        let protected_vms = mem.vms.iter().filter(|vm| vm.protected).count();
        match psci::mem_protect(enable, protected_vms) {
            None => fw.mem_protect(enable),
            Some(answer) => answer,
        }
    }

    /// `VM_ADD_MEMORY`.
    pub(crate) fn vm_add_memory(&self, handle: u64, pa: u64, ipa: u64, pages: u64, m: &impl Maintenance) -> HypResult {
        if !pa.is_multiple_of(PAGE_SIZE) || !ipa.is_multiple_of(PAGE_SIZE) {
            return Err(HypError::NotAligned);
        }
        let size = pages.checked_mul(PAGE_SIZE).filter(|&s| s > 0).ok_or(HypError::OutOfRange)?;
        let phys = PhysRange::from_size(PhysAddr(pa), size).ok_or(HypError::OutOfRange)?;
        let ipa_end = ipa.checked_add(size).ok_or(HypError::OutOfRange)?;
        if !self.platform.ram.contains_range(&phys) {
            return Err(HypError::OutOfRange);
        }
        let mut mem = self.mem.lock();
        let MemState { own, host_s2, tables, vms, .. } = &mut *mem;
        let (_, vm) = vms.lookup_mut(handle)?;
        if vm.protected && vm.ran {
            // A protected VM is sealed once it has run: the host may not change what the
            // guest's memory is (checked under the lock `VCPU_RUN` sets `ran` under).
            return Err(HypError::Denied);
        }
        if ipa_end > 1u64 << vm.s2.ia_bits() {
            return Err(HypError::OutOfRange);
        }
        if vm.overlaps(ipa, size) {
            return Err(HypError::InvalidArgument);
        }
        if vm.regions.is_full() {
            return Err(HypError::NoCapacity);
        }
        if vm.mte && self.platform.untagged.is_some_and(|u| u.overlaps(&phys)) {
            // An MTE guest must never get Normal cacheable memory without tag storage: refused
            // here, and (should it get there some other way) stopped at the first touch.
            return Err(HypError::InvalidArgument);
        }
        let me = vm.component();
        if vm.protected {
            own.donate(phys, Component::Host, me).map_err(|_| HypError::NotOwned)?;
            // The host loses the pages: drop every host mapping of them, on every CPU.
            if let Ok(Some((s, n))) = host_s2.unmap(tables, pa, size) {
                m.host_s2_unmapped(s, n);
            }
        } else {
            own.share(phys, Component::Host, me).map_err(|_| HypError::NotOwned)?;
        }
        vm.regions.push(Region { ipa, pa: PhysAddr(pa), pages });
        Ok([0; 3])
    }

    /// Runs `access` on the context of vCPU `index` of `handle` for the host, if the host may
    /// access its registers.
    ///
    /// The seal check must hold for the whole access, not only when it is made: the vCPU's
    /// claim excludes *its own* run, but another vCPU of the same VM may start running on
    /// another CPU and set `ran` in between. So the check and the access both happen under
    /// the memory lock, which `VCPU_RUN` holds to set `ran`: a protected VM either has not run
    /// for the whole access, or the access is `Denied`. (Lock order as everywhere: the claim
    /// first, then the memory lock; the access itself only copies registers.)
    fn with_host_regs<R>(&self, handle: u64, index: u64, access: impl FnOnce(&mut VcpuCtx) -> R) -> Result<R, HypError> {
        let mut guard = self.vcpu_slot(handle, index)?.claim().ok_or(HypError::Busy)?;
        let mem = self.mem.lock();
        let (_, vm) = mem.vms.lookup(handle)?;
        if index as usize >= vm.nr_vcpus {
            return Err(HypError::InvalidArgument);
        }
        if vm.protected && vm.ran {
            return Err(HypError::Denied);
        }
        let r = access(&mut guard);
        drop(mem);
        Ok(r)
    }

    /// VM-wide registers (firmware pseudo-registers) through `VCPU_GET_REG`/`VCPU_SET_REG`:
    /// writable before the VM's first run; afterwards an identical write succeeds and any
    /// other is `Frozen` (a protected VM's are sealed like the rest of its registers).
    fn vm_reg(&self, handle: u64, index: u64, id: u64, write: Option<(u64, u64)>) -> HypResult {
        if index >= MAX_VCPUS as u64 {
            return Err(HypError::InvalidArgument);
        }
        let mut mem = self.mem.lock();
        let (_, vm) = mem.vms.lookup_mut(handle)?;
        if index as usize >= vm.nr_vcpus {
            return Err(HypError::InvalidArgument);
        }
        if vm.protected && vm.ran {
            return Err(HypError::Denied);
        }
        if let Some(i) = idreg::index_of(id) {
            let slot = &self.idregs[(handle & 0xFF) as usize][i];
            let current = slot.load(Ordering::Relaxed);
            let Some((value, hi)) = write else { return Ok([current, 0, 0]) };
            if vm.ran || hi != 0 {
                return if value == current && hi == 0 { Ok([0; 3]) } else if hi != 0 { Err(HypError::InvalidArgument) } else { Err(HypError::Frozen) };
            }
            if !idreg::write_ok(i, value, vm.idreg_limit[i]) {
                return Err(HypError::InvalidArgument);
            }
            slot.store(value, Ordering::Relaxed);
            return Ok([0; 3]);
        }
        let current = vm.fw.get(id).ok_or(HypError::UnknownRegister)?;
        let Some((value, hi)) = write else { return Ok([current, 0, 0]) };
        if hi != 0 {
            return Err(HypError::InvalidArgument);
        }
        if vm.ran {
            return if value == current { Ok([0; 3]) } else { Err(HypError::Frozen) };
        }
        vm.fw = vm.fw.with(&self.fw_provided(), id, value).map_err(|e| match e {
            FwError::Unknown => HypError::UnknownRegister,
            FwError::Refused => HypError::InvalidArgument,
        })?;
        Ok([0; 3])
    }

    /// `VCPU_SET_REG`.
    pub(crate) fn vcpu_set_reg(&self, handle: u64, index: u64, id: u64, value: (u64, u64)) -> HypResult {
        if fwreg::IDS.contains(&id) || idreg::index_of(id).is_some() {
            return self.vm_reg(handle, index, id, Some(value));
        }
        self.with_host_regs(handle, index, |g| g.set(id, value))?.map_err(vm_err)?;
        Ok([0; 3])
    }

    /// `VCPU_GET_REG`.
    pub(crate) fn vcpu_get_reg(&self, handle: u64, index: u64, id: u64) -> HypResult {
        if fwreg::IDS.contains(&id) || idreg::index_of(id).is_some() {
            return self.vm_reg(handle, index, id, None);
        }
        let (lo, hi) = self.with_host_regs(handle, index, |g| g.get(index as usize, id))?.map_err(vm_err)?;
        Ok([lo, hi, 0])
    }

    /// `VCPU_REG_LIST`.
    pub(crate) fn vcpu_reg_list(&self, cpu: usize, handle: u64, index: u64) -> HypResult {
        {
            let mem = self.mem.lock();
            let (_, vm) = mem.vms.lookup(handle)?;
            if index as usize >= vm.nr_vcpus {
                return Err(HypError::InvalidArgument);
            }
        }
        let mut list = RegList { count: 0, ids: [0; MAX_REG_IDS] };
        let ids = register_ids().chain(fwreg::IDS).chain((0..NR_IDREGS).map(idreg::reg_id));
        for (slot, id) in list.ids.iter_mut().zip(ids) {
            *slot = id;
            list.count += 1;
        }
        self.write_message(cpu, &list)?;
        Ok([list.count, 0, 0])
    }

    /// `VCPU_SET_IRQ`: queues virtual interrupt `vintid` with `config` ([`shared_abi::msg::irq`])
    /// in a free list register of vCPU `index`. Every field is checked before anything is
    /// locked ([`vgic::lr_from_request`]); the list register value is EL2's own encoding.
    /// Allowed for protected VMs after their first run: delivering interrupts is the host's
    /// job, and an interrupt reveals nothing of the guest.
    pub(crate) fn vcpu_set_irq(&self, handle: u64, index: u64, vintid: u64, config: u64) -> HypResult {
        let caps = self.vgic_caps().ok_or(HypError::Denied)?;
        let v = vgic::lr_from_request(vintid, config, caps).map_err(irq_err)?;
        let mut guard = self.claim_vcpu(handle, index)?;
        let n = guard.vgic.queue(v, caps.nr_lrs).map_err(irq_err)?;
        Ok([n as u64, 0, 0])
    }

    /// `VCPU_IRQ_STATE`: the vCPU's list registers and the deactivations the host asked to
    /// hear about, to the message page (collecting the deactivations).
    pub(crate) fn vcpu_irq_state(&self, cpu: usize, handle: u64, index: u64) -> HypResult {
        self.message_page(cpu)?;
        let nr_lrs = self.vgic_caps().map_or(0, |c| c.nr_lrs);
        let mut guard = self.claim_vcpu(handle, index)?;
        // Collected only once the report is written: a failed write loses nothing.
        let mut vgic = guard.vgic.clone();
        let state = vgic.report(nr_lrs);
        self.write_message(cpu, &state)?;
        guard.vgic = vgic;
        Ok([state.used as u64, 0, 0])
    }

    /// `VCPU_STATS`: the vCPU's exception counts, by class. Counts only: allowed for protected
    /// VMs at any time.
    pub(crate) fn vcpu_stats(&self, cpu: usize, handle: u64, index: u64) -> HypResult {
        self.message_page(cpu)?;
        let guard = self.claim_vcpu(handle, index)?;
        let stats = shared_abi::msg::VcpuStats { counts: guard.stats };
        self.write_message(cpu, &stats)?;
        Ok([guard.stats.iter().sum(), 0, 0])
    }

    /// `VCPU_RUN`: runs vCPU `index` of `handle` until it needs the host.
    pub(crate) fn vcpu_run(&self, cpu: usize, handle: u64, index: u64, mmio_value: u64, arch: &impl GuestArch) -> HypResult {
        // The exit goes to the message page: refuse early if there is none.
        self.message_page(cpu)?;
        let slot = self.vcpu_slot(handle, index)?;
        let mut ctx = slot.claim().ok_or(HypError::Busy)?;
        let (cfg, nr_vcpus, fw, ptrauth, on, flush_local) = {
            let mut mem = self.mem.lock();
            let (_, vm) = mem.vms.lookup_mut(handle)?;
            if index as usize >= vm.nr_vcpus {
                return Err(HypError::InvalidArgument);
            }
            if vm.killed || vm.ended {
                return Err(HypError::NotRunnable);
            }
            vm.ran = true;
            let cfg = GuestConfig {
                vttbr: vm.s2.root().0 | (vm.vmid as u64) << 48,
                start_level: vm.s2.start_level(),
                ipa_bits: vm.s2.ia_bits(),
                vmpidr: crate::vcpu::vmpidr(index as usize),
                host_pmu: vm.host_pmu,
                pauth_now: false,
                mte: vm.mte,
                fwb: vm.fwb,
                protected: vm.protected,
            };
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
            let flush_local = on && vm.local_tlb.run_on(index as usize, cpu);
            (cfg, vm.nr_vcpus, vm.fw, vm.ptrauth, on, flush_local)
        };
        if !on {
            return self.finish_run(cpu, VcpuExit { reason: exit::VCPU_OFF, ..Default::default() });
        }
        let mut cfg = cfg;
        let vm_slot = (handle & 0xFF) as usize;
        if let Some(read) = ctx.pending_read.take() {
            let v = read.read_value(mmio_value);
            ctx.set_gpr(read.reg, v);
            ctx.pc = ctx.pc.wrapping_add(4);
        }
        // Pointer authentication: eager loads the keys every time; lazy only while the vCPU
        // used them recently (a trapped use sets the count; each load spends one).
        if ptrauth {
            if !self.pauth_lazy.load(Ordering::Relaxed) {
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
        let mut exit = VcpuExit { reason: exit::IRQ, ..Default::default() };
        // Every ERET into the guest consumes ctx.pstate as SPSR_EL2: it must land in the
        // guest's AArch64 EL0 or EL1. Checked where each writer hands it over: here for what
        // the host set (and a CPU_ON reset), after every exit below for what the guest left;
        // EL2's own writes (exception injection) are EL1h by construction (`inject_sync`),
        // which the debug assertion holds host tests to. So each entry is checked once.
        if !pstate_enters_guest(ctx.pstate) {
            exit = self.kill_illegal_state(handle, ctx.pstate);
        } else {
            for _ in 0..MAX_INTERNAL_EXITS {
                debug_assert!(pstate_enters_guest(ctx.pstate), "EL2 wrote PSTATE {:#x}", ctx.pstate);
                let trap = arch.run(&mut ctx);
                let class = crate::exception::exit_class(trap.kind == TrapKind::Irq, trap.kind == TrapKind::SError, trap.esr);
                // (`class` < CLASSES by construction; the mask spares a bounds check on every exit.)
                ctx.stats[class & (shared_abi::msg::stats::CLASSES - 1)] += 1;
                // A guest that returned to AArch32 EL0 (hidden by the ID registers, not
                // emulated) is stopped before its exit is interpreted, as KVM does.
                if !pstate_enters_guest(ctx.pstate) {
                    exit = self.kill_illegal_state(handle, ctx.pstate);
                    break;
                }
                let me = Me { vm_slot, index: index as usize, nr_vcpus, fw: &fw, ptrauth };
                if let Next::Exit(e) = self.handle_guest_exit(handle, me, &mut ctx, trap, arch, &mut saved) {
                    exit = e;
                    break;
                }
            }
        }
        arch.put(&mut ctx, saved);

        // List registers the guest has finished with are free again; deactivations of
        // level-sensitive interrupts wait for the host, which every exit reminds of them.
        if ctx.vgic.after_put() {
            exit.flags |= exit::FLAG_EOI;
        }
        self.finish_run(cpu, exit)
    }

    fn finish_run(&self, cpu: usize, e: VcpuExit) -> HypResult {
        self.write_message(cpu, &e)?;
        Ok([e.reason as u64, 0, 0])
    }

    fn kill(&self, handle: u64, why: u64, ipa: u64) -> Next {
        Next::Exit(self.kill_exit(handle, why, ipa))
    }

    /// Stops the VM for good; the exit record that tells the host.
    fn kill_exit(&self, handle: u64, why: u64, ipa: u64) -> VcpuExit {
        if let Ok((_, vm)) = self.mem.lock().vms.lookup_mut(handle) {
            vm.killed = true;
        }
        log::debug!("VM {handle:#x} stopped: reason {why}, IPA {ipa:#x}");
        VcpuExit { reason: exit::KILLED, ipa, data: why, ..Default::default() }
    }

    /// The guest ended its VM (PSCI `SYSTEM_OFF`/`SYSTEM_RESET`): it never runs again.
    fn end_vm(&self, handle: u64, reason: u32) -> VcpuExit {
        if let Ok((_, vm)) = self.mem.lock().vms.lookup_mut(handle) {
            vm.ended = true;
        }
        VcpuExit { reason, ..Default::default() }
    }

    /// [`Self::kill_exit`] for a `PSTATE` that does not enter the guest (`args[0]` = it).
    fn kill_illegal_state(&self, handle: u64, pstate: u64) -> VcpuExit {
        VcpuExit { args: [pstate, 0, 0, 0], ..self.kill_exit(handle, kill::ILLEGAL_STATE, 0) }
    }

    /// Handles one guest exit of vCPU `me`.
    fn handle_guest_exit<A: GuestArch>(
        &self,
        handle: u64,
        me: Me<'_>,
        ctx: &mut VcpuCtx,
        trap: GuestTrap,
        arch: &A,
        saved: &mut A::Saved,
    ) -> Next {
        match trap.kind {
            TrapKind::Irq => return Next::Exit(VcpuExit { reason: exit::IRQ, ..Default::default() }),
            TrapKind::SError => return self.kill(handle, kill::BAD_EXCEPTION, 0),
            TrapKind::Sync => {}
        }
        let esr = Esr(trap.esr);
        match esr.ec() {
            ec::WFX => {
                ctx.pc = ctx.pc.wrapping_add(4);
                Next::Exit(VcpuExit { reason: exit::WFX, ..Default::default() })
            }
            // Lazy FP/SIMD: the first use in a run loads the guest's registers; the
            // instruction is retried (PC unchanged).
            ec::FP if arch.fp_load(ctx, saved) => Next::Resume,
            // Lazy pointer authentication: a PAC instruction (HCR_EL2.API) or a key register
            // access (HCR_EL2.APK) is the first use in this run; retried after loading.
            ec::PAUTH | ec::SYS64 if me.ptrauth && (esr.ec() == ec::PAUTH || is_key_access(trap.esr)) && arch.pauth_load(ctx, saved) => {
                ctx.pauth_eager_left = self.pauth_decay.load(Ordering::Relaxed);
                Next::Resume
            }
            // A guest SGI (HCR_EL2.IMO/FMO trap the SGI registers): the host's distributor
            // model decides; the write itself is complete. Anything else here is an ID
            // register read or an UNDEF.
            ec::SYS64 => {
                if let Some((sgi, value)) = sgi_write(trap.esr, ctx, me) {
                    ctx.pc = ctx.pc.wrapping_add(4);
                    let args = [sgi.intid as u64, sgi.targets as u64, sgi.reg, 0];
                    return Next::Exit(VcpuExit { reason: exit::SGI, data: value, args, ..Default::default() });
                }
                // ID registers (HCR_EL2.TID3): answered from the VM's values, without a lock.
                match sysreg_access(trap.esr).and_then(|a| Some((a.rt, idreg_read(&a)?))) {
                    Some((rt, i)) => {
                        ctx.set_gpr(rt, self.idregs[me.vm_slot][i].load(Ordering::Relaxed));
                        ctx.pc = ctx.pc.wrapping_add(4);
                        Next::Resume
                    }
                    None => self.undef(handle, ctx, esr, arch),
                }
            }
            ec::HVC64 | ec::SMC64 => {
                if esr.ec() == ec::SMC64 {
                    // A trapped SMC's preferred return address is the SMC itself.
                    ctx.pc = ctx.pc.wrapping_add(4);
                }
                self.guest_call(handle, me, ctx)
            }
            ec::DABT_LOW | ec::IABT_LOW => {
                let ipa = (trap.hpfar & HPFAR_FIPA_MASK) << 8 | (trap.far & 0xFFF);
                match self.map_guest_page(handle, ipa, arch) {
                    GuestPage::Mapped if matches!(esr.fault(), FaultKind::Translation(_)) => return Next::Resume,
                    // Guest RAM is never MMIO: an access to it that cannot be mapped, or that
                    // faults on a valid mapping, must not reach the host as an MMIO exit (that
                    // would hand it a protected guest's data).
                    GuestPage::Mapped => return self.kill(handle, kill::BAD_EXCEPTION, ipa),
                    GuestPage::NoMemory => return self.kill(handle, kill::OUT_OF_MEMORY, ipa),
                    GuestPage::Untagged(pa) => {
                        let Next::Exit(mut e) = self.kill(handle, kill::UNTAGGED_MEMORY, ipa) else { return Next::Resume };
                        e.args[0] = pa.0;
                        return Next::Exit(e);
                    }
                    GuestPage::NotRam => {}
                }
                if esr.ec() == ec::IABT_LOW || trap.esr & ISS_S1PTW != 0 {
                    return self.kill(handle, kill::BAD_EXCEPTION, ipa);
                }
                let Some(access) = decode_mmio(trap.esr) else {
                    return self.kill(handle, kill::UNDECODABLE_MMIO, ipa);
                };
                let mut e = VcpuExit { reason: exit::MMIO, ipa, size: access.size as u32, ..Default::default() };
                if access.write {
                    e.flags = exit::MMIO_WRITE;
                    e.data = access.write_value(ctx.gpr(access.reg));
                    ctx.pc = ctx.pc.wrapping_add(4);
                } else {
                    ctx.pending_read = Some(access);
                }
                Next::Exit(e)
            }
            _ => self.undef(handle, ctx, esr, arch),
        }
    }

    /// Anything EL2 does not emulate (other system registers, SVE, pointer authentication,
    /// ...): the guest gets an UNDEF, as on hardware without it. The guest's EL1 registers are
    /// live in the CPU: edit them through the context.
    fn undef(&self, handle: u64, ctx: &mut VcpuCtx, esr: Esr, arch: &impl GuestArch) -> Next {
        arch.el1_to_ctx(ctx);
        let ok = inject_into_guest(ctx, Injection::Undef, esr, 0);
        arch.el1_from_ctx(ctx);
        if ok {
            Next::Resume
        } else {
            self.kill(handle, kill::BAD_EXCEPTION, 0)
        }
    }

    /// Maps the guest page holding `ipa` if it is guest memory.
    fn map_guest_page(&self, handle: u64, ipa: u64, arch: &impl GuestArch) -> GuestPage {
        let mut mem = self.mem.lock();
        let MemState { own, tables, vms, .. } = &mut *mem;
        let Ok((_, vm)) = vms.lookup_mut(handle) else { return GuestPage::NotRam };
        let Some(pa) = vm.translate(ipa) else { return GuestPage::NotRam };
        if !own.can_access(pa, vm.component()) {
            // Regions are only recorded after a successful donation or share: an EL2 bug.
            log::error!("VM {handle:#x}: region page {pa:?} not the guest's");
            return GuestPage::NoMemory;
        }
        let page = ipa & !(PAGE_SIZE - 1);
        if vm.s2.lookup(tables, page).is_some() {
            return GuestPage::Mapped;
        }
        if vm.mte && self.platform.untagged.is_some_and(|u| u.contains(pa)) {
            // An MTE guest may only get Normal cacheable memory that can hold tags.
            return GuestPage::Untagged(pa);
        }
        // Up to 3 new tables; never dip into the host stage 2's reserve. Checked before the
        // tags are cleared.
        if tables.free_pages() < self.host_reserve + 3 {
            return GuestPage::NoMemory;
        }
        // Only tags nobody else left: cleared once per change of ownership (the donated or
        // shared data is the host's and is kept). Marked only once the mapping exists, so a
        // *tags clean* mark is only ever on a page the VM has mapped.
        let clear_mark = vm.mte && !own.entry(pa).is_some_and(|e| e.tags_clean());
        if clear_mark {
            arch.clear_tags(pa);
        }
        if !vm.fwb {
            // Without FWB a guest may see the page Non-cacheable (MMU off, or its own
            // mapping): DRAM must hold what the host (or the tag clearing above) left in the
            // caches, and no dirty line of the host's may later be written back over the
            // guest's data. Once per page and VM: the mapping stays until destroy.
            arch.clean_inval_poc(pa);
        }
        match vm.s2.map(tables, page, pa, PAGE_SIZE, GUEST_RAM, 3) {
            Ok(()) => {
                if clear_mark {
                    own.mark_tags_clean(pa);
                }
                arch.guest_s2_mapped();
                GuestPage::Mapped
            }
            Err(_) => GuestPage::NoMemory,
        }
    }

    fn guest_call(&self, handle: u64, me: Me<'_>, ctx: &mut VcpuCtx) -> Next {
        let x = [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]];
        let (vcpus, index) = (&self.vcpus[me.vm_slot], me.index);
        match classify_guest_call(x, me.nr_vcpus, me.fw) {
            GuestCall::Answer(v) => ctx.x[0] = v,
            GuestCall::CpuOn { target, entry, context } => {
                let t = &vcpus[target];
                ctx.x[0] = match t.power.load(Ordering::Acquire) {
                    power::ON => PSCI_ALREADY_ON,
                    power::ON_PENDING => PSCI_ON_PENDING,
                    _ => {
                        t.on_entry.store(entry, Ordering::Release);
                        t.on_context.store(context, Ordering::Release);
                        match t.power.compare_exchange(power::OFF, power::ON_PENDING, Ordering::AcqRel, Ordering::Acquire) {
                            Ok(_) => 0,
                            Err(power::ON) => PSCI_ALREADY_ON,
                            Err(_) => PSCI_ON_PENDING,
                        }
                    }
                };
            }
            GuestCall::CpuOff => {
                vcpus[index].power.store(power::OFF, Ordering::Release);
                return Next::Exit(VcpuExit { reason: exit::VCPU_OFF, ..Default::default() });
            }
            GuestCall::AffinityInfo(t) => {
                ctx.x[0] = match vcpus[t].power.load(Ordering::Acquire) {
                    power::ON => 0,
                    power::ON_PENDING => 2,
                    _ => 1,
                }
            }
            // The VM ends for good: no vCPU of it is resumed by a later `VCPU_RUN`.
            GuestCall::SystemOff => return Next::Exit(self.end_vm(handle, exit::SYSTEM_OFF)),
            GuestCall::SystemReset => return Next::Exit(self.end_vm(handle, exit::SYSTEM_RESET)),
            GuestCall::ToHost => {
                ctx.x[0] = NOT_SUPPORTED;
                return Next::Exit(VcpuExit { reason: exit::HYPERCALL, args: x, ..Default::default() });
            }
        }
        Next::Resume
    }
}

/// A trapped `MRS`/`MSR` (`ESR_EL2.EC == 0x18`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysregAccess {
    /// `op0`.
    pub op0: u8,
    /// `op1`.
    pub op1: u8,
    /// `CRn`.
    pub crn: u8,
    /// `CRm`.
    pub crm: u8,
    /// `op2`.
    pub op2: u8,
    /// The general-purpose register.
    pub rt: u8,
    /// A read (`MRS`).
    pub read: bool,
}

/// Decodes the ISS of a trapped system-register access (Arm ARM D17.2.37, EC 0x18).
pub fn sysreg_access(esr: u64) -> Option<SysregAccess> {
    (Esr(esr).ec() == ec::SYS64).then_some(SysregAccess {
        op0: ((esr >> 20) & 3) as u8,
        op2: ((esr >> 17) & 7) as u8,
        op1: ((esr >> 14) & 7) as u8,
        crn: ((esr >> 10) & 0xF) as u8,
        rt: ((esr >> 5) & 0x1F) as u8,
        crm: ((esr >> 1) & 0xF) as u8,
        read: esr & 1 != 0,
    })
}

/// A trapped SGI generation write of vCPU `me`, decoded, and the value written.
fn sgi_write(esr: u64, ctx: &VcpuCtx, me: Me<'_>) -> Option<(vgic::Sgi, u64)> {
    let a = sysreg_access(esr)?;
    let value = ctx.gpr(a.rt);
    Some((vgic::decode_sgi(&a, value, me.index, me.nr_vcpus)?, value))
}

/// Whether a trapped `MRS`/`MSR` names a pointer-authentication key register.
fn is_key_access(esr: u64) -> bool {
    sysreg_access(esr).is_some_and(|a| a.op0 == 3 && a.op1 == 0 && a.crn == 2 && (1..=3).contains(&a.crm))
}

/// The ID-register index a trapped read names, if it is one.
fn idreg_read(a: &SysregAccess) -> Option<usize> {
    (a.read && a.op0 == 3 && a.op1 == 0 && a.crn == 0 && (1..=7).contains(&a.crm)).then(|| idreg::idx(a.crm, a.op2))
}

/// Injects a synchronous exception into a guest that is not running (its EL1 registers are in
/// `ctx`). `false` if the guest's state does not allow it.
pub fn inject_into_guest(ctx: &mut VcpuCtx, what: Injection, esr: Esr, far: u64) -> bool {
    let t = TrapState { elr: ctx.pc, spsr: ctx.pstate, il: esr.il(), vbar_el1: ctx.sys[SYS_VBAR_EL1] };
    let Some(i) = inject_sync(what, t) else { return false };
    ctx.sys[SYS_ESR_EL1] = i.esr_el1;
    ctx.sys[SYS_FAR_EL1] = far;
    ctx.elr_el1 = i.elr_el1;
    ctx.spsr_el1 = i.spsr_el1;
    ctx.pc = i.elr_el2;
    ctx.pstate = i.spsr_el2;
    true
}

const SYS_ESR_EL1: usize = 7;
const SYS_FAR_EL1: usize = 8;
const SYS_VBAR_EL1: usize = 12;
const _: () = {
    assert!(reg::SYSREGS[SYS_ESR_EL1].1 == reg::sysreg(3, 0, 5, 2, 0));
    assert!(reg::SYSREGS[SYS_FAR_EL1].1 == reg::sysreg(3, 0, 6, 0, 0));
    assert!(reg::SYSREGS[SYS_VBAR_EL1].1 == reg::sysreg(3, 0, 12, 0, 0));
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::tests::{fixture, Fixture, Recorder};
    use crate::owner::PageState;
    use shared_abi::HypercallId as H;
    use zerocopy::{FromBytes, IntoBytes};

    const MSG: usize = 0; // message page: RAM page 0
    const GUEST: usize = 8; // guest memory: RAM pages 8..12

    fn trap(esr: u64, ipa: u64) -> GuestTrap {
        GuestTrap { kind: TrapKind::Sync, esr, far: ipa & 0xFFF, hpfar: (ipa >> 8) & HPFAR_FIPA_MASK }
    }
    fn dabt_translation(ipa: u64) -> GuestTrap {
        trap((0x24 << 26) | (1 << 25) | 0b000111, ipa)
    }
    fn mmio(ipa: u64, write: bool, srt: u64, sas: u64) -> GuestTrap {
        trap((0x24 << 26) | (1 << 25) | (1 << 24) | sas << 22 | srt << 16 | (1 << 15) | (write as u64) << 6 | 0b000111, ipa)
    }
    fn hvc() -> GuestTrap {
        trap((0x16 << 26) | (1 << 25), 0)
    }

    fn create(f: &mut Fixture, vcpus: u32, flags: u64) -> u64 {
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).ok();
        let req = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, reserved: [0; 2] };
        f.ram.0[MSG * 4096..MSG * 4096 + 32].copy_from_slice(req.as_bytes());
        f.call(0, H::VmCreate, &[]).unwrap()[0]
    }

    /// Leaves no more free table pages than the host stage 2's reserve: a guest mapping fails.
    fn leave_only_the_host_reserve(f: &mut Fixture) {
        let mut mem = f.hyp.mem.lock();
        let used = mem.tables.in_use();
        mem.tables.limit = used + f.hyp.host_reserve;
    }

    fn exit_record(f: &Fixture) -> VcpuExit {
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
    fn protected_memory_is_donated_and_scrubbed_back() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.ram.0[GUEST * 4096] = 0xAB; // "image" data the host loaded
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmAddMemory, &[h, f.page(GUEST), 0x8000_0000, 4]).unwrap();
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.own.state(PhysAddr(f.page(GUEST)), Component::Host), Some(PageState::NoAccess));
            assert_eq!(mem.own.state(PhysAddr(f.page(GUEST + 3)), Component::Guest(0)), Some(PageState::Owned));
        }
        assert_eq!(f.ram.0[GUEST * 4096], 0xAB, "donation keeps the data");
        // The same pages again, to this VM or another: refused.
        let h2 = create(&mut f, 1, vm_flags::PROTECTED);
        assert_eq!(f.call(0, H::VmAddMemory, &[h2, f.page(GUEST + 2), 0x8000_0000, 1]), Err(HypError::NotOwned));
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 4), 0x8000_2000, 1]), Err(HypError::InvalidArgument), "IPA overlap");
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.0.borrow().iter().filter(|s| **s == "scrub_page").count(), 4);
        assert_eq!(f.ram.0[GUEST * 4096], 0, "scrubbed");
        assert_eq!(f.hyp.mem.lock().own.state(PhysAddr(f.page(GUEST)), Component::Host), Some(PageState::Owned));
    }

    #[test]
    fn a_page_given_back_is_mapped_again_inside_a_split_block() {
        let mut f = fixture();
        let chunk = f.page(0);
        let donated = f.page(GUEST);
        // The host uses its first 2 MiB: one block.
        assert_eq!(f.hyp.host_s2_fault(chunk + 0x40, &Recorder::default()), crate::hyp::HostFault::Retry);
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.host_s2.lookup(&mem.tables, chunk).map(|l| l.level), Some(2));
        }
        // One page of it goes to a protected VM: the block goes.
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, donated, 0x8000_0000, 1]).unwrap();
        // The host uses the rest of the chunk: EL2 maps it page by page (a level-3 table).
        for p in [0, GUEST - 1, GUEST + 1, 511] {
            assert_eq!(f.hyp.host_s2_fault(f.page(p), &Recorder::default()), crate::hyp::HostFault::Retry, "page {p}");
        }
        assert_eq!(f.hyp.host_s2_fault(donated, &Recorder::default()), crate::hyp::HostFault::Inject, "the guest's now");
        // The VM goes; its page comes back, and the host's next touch maps it again.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let rec = Recorder::default();
        assert_eq!(f.hyp.host_s2_fault(donated + 8, &rec), crate::hyp::HostFault::Retry);
        assert_eq!(rec.0.borrow().as_slice(), &["host_s2_mapped"]);
        let mem = f.hyp.mem.lock();
        let leaf = mem.host_s2.lookup(&mem.tables, donated).expect("the returned page is mapped");
        assert_eq!((leaf.level, leaf.pa_base), (3, PhysAddr(donated)));
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
    fn a_vcpu_that_changes_cpu_flushes_its_vmid_locally_before_entry() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        f.call(1, H::SetMessagePage, &[1, f.page(1)]).unwrap();
        let run = |f: &Fixture, cpu: usize, vcpu: u64| {
            let rec = Recorder::default();
            *rec.1.borrow_mut() = vec![hvc()];
            assert_eq!(f.call_with(&rec, cpu, H::VcpuRun, &[h, vcpu, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
            let log = rec.0.borrow().clone();
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

    /// The maintenance log of a protected VM's life: donation, two first accesses (one page
    /// touched twice), destroy.
    fn cache_maintenance_log(f: &mut Fixture, flags: u64) -> [Vec<&'static str>; 3] {
        let h = create(f, 1, vm_flags::PROTECTED | flags);
        let add = Recorder::default();
        f.call_with(&add, 0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 2]).unwrap();
        let run = Recorder::default();
        *run.1.borrow_mut() = vec![dabt_translation(0x4000_0000), dabt_translation(0x4000_1000), dabt_translation(0x4000_1008), hvc()];
        f.call_with(&run, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let destroy = Recorder::default();
        f.call_with(&destroy, 0, H::VmDestroy, &[h]).unwrap();
        let mem = |r: Recorder| r.0.take().into_iter().filter(|s| !["load", "put", "run", "flush_guest_local"].contains(s)).collect();
        [mem(add), mem(run), mem(destroy)]
    }

    #[test]
    fn without_fwb_pages_are_cleaned_to_poc_on_first_map_and_after_scrubbing() {
        let mut f = fixture(); // the fixture's CPU has no FEAT_S2FWB
        let [add, run, destroy] = cache_maintenance_log(&mut f, 0);
        // Donation: nobody can touch the pages until the guest's first access, which cleans.
        assert!(!add.contains(&"clean_inval_poc"), "{add:?}");
        assert_eq!(run, ["clean_inval_poc", "guest_s2_mapped", "clean_inval_poc", "guest_s2_mapped"], "once per page, before it is mapped");
        assert_eq!(destroy, ["scrub_page", "scrub_page", "flush_guest_tlb"], "scrub_page cleans to the PoC too");
        // MTE: the tags are cleared first, then the page (tags included) is cleaned.
        let [_, run, _] = cache_maintenance_log(&mut f, vm_flags::MTE);
        assert_eq!(&run[..3], ["clear_tags", "clean_inval_poc", "guest_s2_mapped"]);
    }

    #[test]
    fn with_fwb_guest_ram_is_forced_write_back_and_only_scrubbed_pages_are_cleaned() {
        let mut f = fixture();
        f.hyp.cpus.lock().view_mut()[idreg::idx(7, 2)] |= 1 << 40; // every CPU has FEAT_S2FWB
        let [add, run, destroy] = cache_maintenance_log(&mut f, 0);
        assert!(!add.contains(&"clean_inval_poc"), "{add:?}");
        assert_eq!(run, ["guest_s2_mapped", "guest_s2_mapped"], "the guest's view is cacheable: nothing to clean");
        // The host's stage 2 is not FWB (the host chooses its own cacheability): scrubbed
        // pages are cleaned all the same.
        assert_eq!(destroy, ["scrub_page", "scrub_page", "flush_guest_tlb"], "scrub_page cleans to the PoC too");
        // The stage 2 uses the FWB encoding (MemAttr 0b0110, forced Write-Back), and the VM
        // runs with HCR_EL2.FWB; the guest is not told about FWB.
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_0000), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let mem = f.hyp.mem.lock();
        let vm = mem.vms.lookup(h).unwrap().1;
        assert!(vm.fwb);
        assert_eq!((vm.s2.lookup(&mem.tables, 0x4000_0000).unwrap().desc >> 2) & 0xF, 0b0110);
        assert_eq!(self::idreg::restrict(f.hyp.cpus.lock().view(), &idreg::VmPolicy { mte: false, ptrauth: false, pmu: false, ipa_bits: 36, protected: false })[idreg::idx(7, 2)] >> 40 & 0xF, 0);
    }

    #[test]
    fn add_memory_rejects_bad_ranges() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let g = f.page(GUEST);
        let el2 = f.hyp.hyp_region.start.0;
        let cases: [([u64; 4], HypError); 9] = [
            ([h, g + 1, 0, 1], HypError::NotAligned),
            ([h, g, 0x10, 1], HypError::NotAligned),
            ([h, g, 0, 0], HypError::OutOfRange),
            ([h, g, 0, u64::MAX / 4096 + 1], HypError::OutOfRange),
            ([h, g, 1 << 36, 1], HypError::OutOfRange),
            ([h, g, (1 << 36) - 4096, 2], HypError::OutOfRange),
            ([h, g - 4096 * 64, 0, 1], HypError::OutOfRange),
            ([h, el2, 0, 1], HypError::NotOwned),
            ([h + 1, g, 0, 1], HypError::InvalidHandle),
        ];
        for (args, err) in cases {
            assert_eq!(f.call(0, H::VmAddMemory, &args), Err(err), "{args:x?}");
        }
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.regions.is_empty());
    }

    #[test]
    fn every_exception_a_vcpu_takes_is_counted_by_class() {
        use shared_abi::msg::{stats, VcpuStats};
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x8000_0000, 1]).unwrap();
        // A first touch (EL2 maps it), a call EL2 answers (SMCCC_VERSION), then WFI (exit).
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::arch::SMCCC_VERSION as u64, 0]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x8000_0000), hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        // Counts only: allowed for a protected VM that has run.
        assert_eq!(f.call(0, H::VcpuStats, &[h, 0]), Ok([3, 0, 0]));
        let s = VcpuStats::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        let mut want = [0u64; stats::CLASSES];
        (want[stats::ABORT], want[stats::HVC_SMC], want[stats::WFX]) = (1, 1, 1);
        assert_eq!(s.counts, want);
        assert_eq!(f.call(0, H::VcpuStats, &[h, 1]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuStats, &[h + 1, 0]), Err(HypError::InvalidHandle));
    }

    #[test]
    fn host_chosen_pstate_never_reaches_eret() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        // The host may not set an EL2 (or AArch32, or IL) PSTATE...
        for bad in [0x3C9u64, 0x3C8, 0x3C5 | 1 << 20, 0x13, 0x3C5 | 1 << 40] {
            assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::PSTATE, bad]), Err(HypError::InvalidArgument), "{bad:#x}");
        }
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PSTATE]), Ok([crate::vcpu::PSTATE_RESET, 0, 0]));
        // ...and should one get into the context some other way, EL2 stops the VM before the
        // ERET: the guest never runs.
        {
            let slot = f.hyp.vcpu_slot(h, 0).unwrap();
            slot.claim().unwrap().pstate = 0x3C9;
        }
        let rec = Recorder::default();
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        assert!(!rec.0.borrow().contains(&"run"), "entered the guest with PSTATE EL2h");
        let e = exit_record(&f);
        assert_eq!((e.data, e.args[0]), (kill::ILLEGAL_STATE, 0x3C9));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
    }

    #[test]
    fn a_guest_that_returns_to_aarch32_is_stopped() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let rec = Recorder::default();
        // The guest ERETs to AArch32 EL0 (usr) and traps: EL2 does not interpret the exit.
        rec.1.borrow_mut().push(hvc());
        rec.3.borrow_mut().push(0x10);
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.args[0]), (kill::ILLEGAL_STATE, 0x10));
        assert_eq!(rec.0.borrow().last(), Some(&"put"), "the host's state is restored");
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
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_1008), mmio(0x0900_0000, true, 5, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.ipa, e.size, e.flags, e.data), (0x0900_0000, 1, exit::MMIO_WRITE, 0x41));
        assert!(rec.0.borrow().contains(&"guest_s2_mapped"));
        {
            let mem = f.hyp.mem.lock();
            let vm = mem.vms.lookup(h).unwrap().1;
            let leaf = vm.s2.lookup(&mem.tables, 0x4000_1000).unwrap();
            assert_eq!(leaf.pa_base, PhysAddr(f.page(GUEST + 1)));
        }
        // Protected: registers are sealed now.
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Err(HypError::Denied));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), 1]), Err(HypError::Denied));
        // An MMIO read: the host's value lands in the register and the PC moves on.
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![mmio(0x0900_0018, false, 7, 2), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        let pc_at_read = rec.2.borrow()[0];
        // The guest's next entry must see x7 and pc + 4: check through a non-served HVC exit.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0x1234_5678_9ABC]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[1], pc_at_read + 4);
    }

    #[test]
    fn non_protected_registers_stay_accessible() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        f.call(0, H::VcpuSetReg, &[h, 1, reg::x(3), 99]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 1, reg::x(3)]), Ok([99, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Ok([4, 0, 0]), "WFI stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 2, reg::PC]), Err(HypError::InvalidArgument), "no vCPU 2");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, 0x6030_0000_0013_FFFF]), Err(HypError::UnknownRegister));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::MPIDR_EL1, 1]), Err(HypError::Denied));
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
        *rec.1.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([0, 0, 0]), "CPU_ON succeeded");
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 1, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[2], 0x5000, "vCPU 1 entered at the CPU_ON entry point");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 1, reg::x(0)]), Ok([7, 0, 0]));
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
        *rec.1.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
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
    fn firmware_registers_follow_the_restore_rules() {
        let mut f = fixture(); // the fixture's hardware needs no workaround 1 (CSV2 = 1)
        let h = create(&mut f, 1, 0);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::PSCI_VERSION]), Ok([0x10001, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::WORKAROUND_1]), Ok([fwreg::NOT_REQUIRED, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::WORKAROUND_3]), Ok([fwreg::NOT_AVAIL, 0, 0]));
        // Refused: unknown bits, more protection than provided, an unknown version.
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_1, 1 << 4, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_3, fwreg::AVAIL, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10002, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION + 9, 0, 0]), Err(HypError::UnknownRegister));
        // Accepted before the first run.
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10000, 0]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_1, fwreg::AVAIL, 0]).unwrap();
        // The guest is told: PSCI_VERSION answered from the VM's value.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_VERSION as u64, 0]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([0x10000, 0, 0]));
        // After the first run: identical writes succeed, others are Busy.
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10000, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10001, 0]), Err(HypError::Frozen));
        // Listed by VCPU_REG_LIST.
        let all = register_ids().count() + fwreg::IDS.len() + NR_IDREGS;
        assert!(all <= MAX_REG_IDS, "the register list must fit the message");
        assert_eq!(f.call(0, H::VcpuRegList, &[h, 0]).unwrap()[0] as usize, all);
    }

    #[test]
    fn mte_vms_get_clean_tags_once_and_never_untagged_memory() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::MTE | vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_0000), dabt_translation(0x4000_1000), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(rec.0.borrow().iter().filter(|s| **s == "clear_tags").count(), 2, "one clear per page");
        assert!(f.hyp.mem.lock().own.entry(PhysAddr(f.page(GUEST))).unwrap().tags_clean());
        // Destroy and give the same pages to a new MTE VM: a change of ownership, clean again.
        // A protected MTE VM's pages are scrubbed with their tags (DC GZVA: all have storage).
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.0.borrow().iter().filter(|s| **s == "scrub_page").count(), 4);
        assert!(!rec.0.borrow().contains(&"scrub_page_untagged"), "tags zeroed too");
        assert!(!f.hyp.mem.lock().own.entry(PhysAddr(f.page(GUEST))).unwrap().tags_clean());
        // A page without tag storage behind it: refused to an MTE VM at VM_ADD_MEMORY...
        let untagged = PhysRange::from_size(PhysAddr(f.page(GUEST + 3)), PAGE_SIZE);
        f.hyp.platform.untagged = untagged;
        let h = create(&mut f, 1, vm_flags::MTE);
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 3), 0x4000_3000, 1]), Err(HypError::InvalidArgument));
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.regions.is_empty(), "nothing given");
        // ...and should it get there anyway (here: the platform description changes under a
        // VM that has it), the VM is stopped at the first touch, naming IPA and PA.
        f.hyp.platform.untagged = None;
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        f.hyp.platform.untagged = untagged;
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_3008)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.ipa, e.args[0]), (kill::UNTAGGED_MEMORY, 0x4000_3008, f.page(GUEST + 3)));
        // A VM without MTE may use that memory.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_3008), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert!(!rec.0.borrow().contains(&"clear_tags"), "no tag work for a VM without MTE");
        f.call(0, H::VmDestroy, &[h]).unwrap();
        // Scrubbing memory without tag storage never uses tag operations (DC GZVA).
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.0.borrow().iter().filter(|s| **s == "scrub_page").count(), 4);
        assert_eq!(rec.0.borrow().iter().filter(|s| **s == "scrub_page_untagged").count(), 1, "only the untagged page");
    }

    #[test]
    fn id_register_reads_are_answered_from_the_vm() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        // MRS x3, ID_AA64ISAR0_EL1 (op0 3, op1 0, CRn 0, CRm 6, op2 0), then an MSR to it.
        let mrs = (0x18 << 26) | (1 << 25) | 3 << 20 | 3 << 5 | 6 << 1 | 1;
        let msr = mrs & !1;
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap(mrs, 0), trap(msr, 0), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let isar0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(6, 0))]).unwrap()[0];
        assert_eq!(isar0, 2 << 4, "the fixture CPU's AES 2, restricted");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(3)]), Ok([isar0, 0, 0]));
        assert_eq!(rec.2.borrow()[1], 4, "read stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::SYSREGS[SYS_ESR_EL1].1]), Ok([1 << 25, 0, 0]), "the write was an UNDEF");
        let sve = idreg::reg_id(idreg::idx(4, 0));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, sve, 0x11 | 1 << 32, 0]), Err(HypError::Frozen), "after the run");
    }

    #[test]
    fn undecodable_mmio_kills_the_vm() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap((0x24 << 26) | (1 << 25) | 0b000111, 0x0900_0000)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.ipa), (kill::UNDECODABLE_MMIO, 0x0900_0000));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
        f.call(0, H::VmDestroy, &[h]).unwrap();
    }

    #[test]
    fn guest_ram_that_cannot_be_mapped_is_never_an_mmio_exit() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        leave_only_the_host_reserve(&mut f);
        let rec = Recorder::default();
        // A store with a valid syndrome (ISV set) to guest RAM: must not become MMIO.
        *rec.1.borrow_mut() = vec![mmio(0x4000_1000, true, 5, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.ipa, e.flags), (kill::OUT_OF_MEMORY, 0x4000_1000, 0));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable));
    }

    #[test]
    fn an_mte_page_that_cannot_be_mapped_is_not_marked_tags_clean() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED | vm_flags::MTE);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        leave_only_the_host_reserve(&mut f);
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![dabt_translation(0x4000_1000)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        assert!(!rec.0.borrow().contains(&"clear_tags"), "no tag work for a page that is not mapped");
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert_eq!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout), Ok(crate::hyp::tests::RAM_PAGES as u64));
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
    fn unemulated_system_register_access_injects_undef() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::SYSREGS[SYS_VBAR_EL1].1, 0x8000]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap((0x18 << 26) | (1 << 25), 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[1], 0x8000 + 0x200, "resumed at the guest's EL1 sync vector");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::ELR_EL1]), Ok([0x1000, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::SYSREGS[SYS_ESR_EL1].1]), Ok([1 << 25, 0, 0]));
    }

    #[test]
    fn a_protected_vm_that_ran_gets_no_more_memory() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 1), 0x4000_1000, 1]), Err(HypError::Denied));
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.vms.lookup(h).unwrap().1.regions.len(), 1, "nothing added");
            assert_eq!(mem.own.state(PhysAddr(f.page(GUEST + 1)), Component::Host), Some(PageState::Owned), "still the host's");
        }
        // A non-protected VM shares memory with the host: it may still grow after running.
        let h2 = create(&mut f, 1, 0);
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h2, 0, 0]).unwrap();
        f.call(0, H::VmAddMemory, &[h2, f.page(GUEST + 1), 0x4000_1000, 1]).unwrap();
    }

    #[test]
    fn system_off_and_reset_end_the_vm_for_every_vcpu() {
        for (call, reason) in [(smccc::psci::PSCI_SYSTEM_OFF, exit::SYSTEM_OFF), (smccc::psci::PSCI_SYSTEM_RESET, exit::SYSTEM_RESET)] {
            for flags in [0, vm_flags::PROTECTED] {
                let mut f = fixture();
                let h = create(&mut f, 2, flags);
                f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), call as u64]).unwrap();
                let rec = Recorder::default();
                *rec.1.borrow_mut() = vec![hvc()];
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([reason as u64, 0, 0]));
                // Never resumed: not the caller, not its sibling (which would run the script).
                let rec = Recorder::default();
                *rec.1.borrow_mut() = vec![hvc(), hvc()];
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Err(HypError::NotRunnable), "{reason}");
                assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 1, 0]), Err(HypError::NotRunnable), "{reason}");
                assert!(!rec.0.borrow().contains(&"run"));
                f.call(0, H::VmDestroy, &[h]).unwrap();
            }
        }
    }

    #[test]
    fn the_seal_holds_for_the_whole_register_access() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Barrier;
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        f.call(1, H::SetMessagePage, &[1, f.page(MSG + 1)]).unwrap();
        let f = &f;
        let (inside, run_done) = (Barrier::new(2), AtomicBool::new(false));
        std::thread::scope(|s| {
            // CPU 1 runs vCPU 1 (it is off, but the run still marks the VM as having run)
            // while CPU 0 is in the middle of a register access to vCPU 0.
            s.spawn(|| {
                inside.wait();
                f.call(1, H::VcpuRun, &[h, 1, 0]).unwrap();
                run_done.store(true, Ordering::SeqCst);
            });
            let r = f.hyp.with_host_regs(h, 0, |ctx| {
                inside.wait();
                std::thread::sleep(std::time::Duration::from_millis(200));
                ctx.x[0] = 42;
                run_done.load(Ordering::SeqCst)
            });
            assert_eq!(r, Ok(false), "the VM started running in the middle of a sealed-register access");
        });
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.ran);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Err(HypError::Denied));
    }

    #[test]
    fn memory_protection_is_on_while_protected_vms_exist() {
        let mut f = fixture();
        let mem_protect = |f: &Fixture, enable: u32| {
            let rec = Recorder::default();
            let r = f.hyp.host_mem_protect(enable, &rec);
            let forwarded = rec.0.borrow().iter().any(|s| s.starts_with("mem_protect"));
            (r, forwarded)
        };
        assert_eq!(mem_protect(&f, 0), (-1, true), "no protected VM: the host's call reaches firmware");
        // A non-protected VM changes nothing; the first protected one turns protection on.
        let rec = Recorder::default();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let plain = create(&mut f, 1, 0);
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::PROTECTED, reserved: [0; 2] }.as_bytes());
        let p1 = f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0];
        assert_eq!(*rec.0.borrow(), ["mem_protect_on"], "enabled once, for the first protected VM");
        let rec = Recorder::default();
        let p2 = f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0];
        assert!(rec.0.borrow().is_empty(), "already on");
        // While protected VMs exist the host may not turn it off; enabling again is harmless.
        assert_eq!(mem_protect(&f, 0), (psci::DENIED, false));
        assert_eq!(mem_protect(&f, 5), (psci::DENIED, false));
        assert_eq!(mem_protect(&f, 1), (-1, true));
        f.call(0, H::VmDestroy, &[p1]).unwrap();
        assert_eq!(mem_protect(&f, 0), (psci::DENIED, false), "one protected VM left");
        f.call(0, H::VmDestroy, &[p2]).unwrap();
        assert_eq!(mem_protect(&f, 0), (-1, true), "the last one is gone");
        f.call(0, H::VmDestroy, &[plain]).unwrap();
    }

    fn irq_state(f: &Fixture, h: u64, vcpu: u64) -> shared_abi::msg::VgicState {
        f.call(0, H::VcpuIrqState, &[h, vcpu]).unwrap();
        shared_abi::msg::VgicState::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0
    }

    #[test]
    fn set_irq_validates_every_field_and_fills_list_registers() {
        use shared_abi::msg::irq::{self, config, PENDING};
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        let spi = config(0xA0, true, PENDING, false) as u64;
        // Hostile fields: refused before anything is touched.
        for (vintid, cfg, err) in [
            (1020, spi, HypError::InvalidArgument),
            (8192, spi, HypError::InvalidArgument),
            (32, config(0xA0, true, 0, false) as u64, HypError::InvalidArgument),
            (32, config(0xA1, true, PENDING, false) as u64, HypError::InvalidArgument),
            (32, spi | 1 << 40, HypError::InvalidArgument),
            (32, spi | 27 << irq::PINTID_SHIFT, HypError::InvalidArgument),
            (27, spi | irq::HW as u64 | 27 << irq::PINTID_SHIFT, HypError::Denied),
        ] {
            assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, vintid, cfg]), Err(err), "{vintid} {cfg:#x}");
        }
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 2, 32, spi]), Err(HypError::InvalidArgument), "no vCPU 2");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 8, 32, spi]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h + 0x100, 0, 32, spi]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 32, spi, 1]), Err(HypError::InvalidArgument), "x5 unused");
        assert_eq!(irq_state(&f, h, 0).used, 0, "nothing queued");
        // A protected VM that has run still gets interrupts, and the host sees their state.
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        for (n, id) in [32u64, 33, 27, 1].into_iter().enumerate() {
            assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, id, spi]), Ok([n as u64, 0, 0]));
        }
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 33, spi]), Err(HypError::Busy), "already queued");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 34, spi]), Err(HypError::NoCapacity), "4 list registers");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 34, spi]), Ok([0, 0, 0]), "per vCPU");
        let s = irq_state(&f, h, 0);
        assert_eq!((s.nr_lrs, s.used), (4, 0b1111));
        assert_eq!(s.lrs[2], (spi << 32) | 27);
        // A running vCPU is Busy.
        let guard = f.hyp.vcpus[(h & 0xFF) as usize][1].claim().unwrap();
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 35, spi]), Err(HypError::Busy));
        assert_eq!(f.call(0, H::VcpuIrqState, &[h, 1]), Err(HypError::Busy));
        drop(guard);
        // Destroy forgets everything queued.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout).is_ok());
    }

    #[test]
    fn set_irq_is_denied_without_a_virtual_cpu_interface() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.hyp.report_vgic(None);
        let spi = shared_abi::msg::irq::config(0xA0, true, 1, false) as u64;
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 32, spi]), Err(HypError::Denied));
    }

    #[test]
    fn deactivated_level_interrupts_are_reported_once() {
        use shared_abi::msg::irq::{config, PENDING};
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetIrq, &[h, 0, 40, config(0x80, true, PENDING, true) as u64]).unwrap();
        f.call(0, H::VcpuSetIrq, &[h, 0, 41, config(0x80, true, PENDING, false) as u64]).unwrap();
        let run = |f: &Fixture| {
            let rec = Recorder::default();
            *rec.1.borrow_mut() = vec![hvc()];
            f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
            exit_record(f).flags
        };
        assert_eq!(run(&f) & exit::FLAG_EOI, 0, "still pending");
        // The guest deactivated both (what put saves from the CPU).
        {
            let mut g = f.hyp.vcpus[(h & 0xFF) as usize][0].claim().unwrap();
            g.vgic.lr[0] &= !(3 << 62);
            g.vgic.lr[1] &= !(3 << 62);
        }
        assert_eq!(run(&f) & exit::FLAG_EOI, exit::FLAG_EOI);
        assert_eq!(run(&f) & exit::FLAG_EOI, exit::FLAG_EOI, "until collected");
        let s = irq_state(&f, h, 0);
        assert_eq!((s.used, s.eoi[0]), (0, 1 << 40), "both freed, only the level one reported");
        assert_eq!(run(&f) & exit::FLAG_EOI, 0);
        assert_eq!(irq_state(&f, h, 0).eoi, [0; 16]);
    }

    #[test]
    fn guest_sgis_exit_to_the_host_decoded() {
        let mut f = fixture();
        let h = create(&mut f, 4, vm_flags::PROTECTED);
        // MSR ICC_SGI1R_EL1, x5 (op0 3, op1 0, CRn 12, CRm 11, op2 5): INTID 7 to vCPUs 1, 3.
        let msr = |op2: u64| (0x18 << 26) | (1 << 25) | 3 << 20 | op2 << 17 | 12 << 10 | 5 << 5 | 11 << 1;
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(5), 7 << 24 | 0b1010]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap(msr(5), 0), trap(msr(7), 0), trap(msr(5) | 1, 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.args, e.data), ([7, 0b1010, shared_abi::msg::sgi::SGI1R, 0], 7 << 24 | 0b1010));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        assert_eq!(exit_record(&f).args[2], shared_abi::msg::sgi::SGI0R);
        // The read of the write-only register is an UNDEF, not an SGI.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[..3], [0x1000, 0x1004, 0x1008], "each write stepped over");
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
