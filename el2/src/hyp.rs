//! EL2's state and the host's hypercalls.
//!
//! Place in the flow: *decode → validate → lock → check → commit*. [`Hyp::host_hvc`] decodes the
//! function ID and argument registers, refuses what is malformed before taking any lock, then
//! takes the memory lock, checks page states, and commits. A failure after the checks would be
//! an EL2 bug, never an error the host sees.
//!
//! # Locks
//! One lock, [`Hyp::mem`], guards the ownership record, the host stage 2, EL2's stage 1 and the
//! table pool, and the per-CPU message-page registry's writers. Message pages are *read* without
//! the lock: each is written once, during set-up, before any message call can use it.
//! [`Hyp::cpus`] (the CPU view) has its own lock, taken inside the memory lock or alone, and
//! nothing is locked while holding it.
//!
//! # Memory maintenance
//! Table edits here are followed by the barrier or TLB maintenance of [`Tlb`]
//! implementation provides (the arch layer in EL2, a recorder in tests).

use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::mem::owner::Ownership;
use crate::mem::pgtable::{PageTable, TableMemory};
use crate::mem::protect::HostFault;
use crate::mem::MemState;
use crate::platform::{Platform, MAX_CPUS};
use crate::cpu::features::{CpuFeatures, CpuId, Weaker};
use crate::host::gicr::Redistributors;
use crate::guest::vgic::VgicCaps;
use crate::guest::vcpu::VcpuTable;
use crate::guest::vm::IdRegTable;
use crate::hw::{Hw, Tlb};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared_abi::msg::{EchoRequest, HypInfo};
use shared_abi::{HypError, HypResult, HypercallId, Phase, ABI_VERSION};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Per-CPU boot request recorded by an intercepted host `CPU_ON`.
#[derive(Default)]
pub struct CpuBoot {
    /// Host entry point.
    pub entry: AtomicU64,
    /// Host `x0` at the entry point.
    pub context: AtomicU64,
}

/// What [`Hyp::new`] is built from.
pub struct HypParts<'a, T: TableMemory> {
    /// The machine.
    pub platform: Platform,
    /// EL2's own memory.
    pub hyp_region: PhysRange,
    /// The ownership record (all host-owned).
    pub own: Ownership<'a>,
    /// The host's (empty) stage 2.
    pub host_s2: PageTable,
    /// EL2's stage 1.
    pub hyp_s1: PageTable,
    /// Table memory.
    pub tables: T,
    /// vCPU contexts.
    pub vcpus: &'a VcpuTable,
    /// Per-VM ID registers.
    pub idregs: &'a IdRegTable,
    /// The boot CPU's `MIDR_EL1` and ID registers (platform index 0; other CPUs report theirs
    /// with [`Hyp::cpu_entered_el2`]).
    pub boot_cpu: CpuId,
    /// The redistributors found at boot in [`Platform::gicr`] ([`crate::host::gicr::probe`]).
    pub gicr: Option<Redistributors>,
}

/// EL2's global state.
pub struct Hyp<'a, T: TableMemory> {
    /// The machine.
    pub platform: Platform,
    /// EL2's own memory.
    pub hyp_region: PhysRange,
    /// The redistributors, whose control pages the host never maps (see [`crate::host::gicr`]).
    pub gicr: Option<Redistributors>,
    /// The memory lock (see the module documentation).
    pub mem: spin::Mutex<MemState<'a, T>>,
    finalised: AtomicBool,
    msg_page: [AtomicU64; MAX_CPUS],
    /// Host `CPU_ON` requests, by CPU index.
    pub cpu_boot: [CpuBoot; MAX_CPUS],
    /// Every vCPU context (see [`crate::guest::vm`] for who may touch one).
    pub(crate) vcpus: &'a VcpuTable,
    /// Table pages kept for the host's stage 2: guest stage-2 tables may not use them.
    pub(crate) host_reserve: usize,
    /// Per-VM ID registers (see [`crate::guest::vm`]).
    pub(crate) idregs: &'a IdRegTable,
    /// Every CPU's ID registers and the view combined from them (see [`crate::cpu::features`]): open
    /// until `FINALISE_SETUP` or the first `VM_CREATE`, fixed from then on. Its own lock, never
    /// held while taking another.
    pub(crate) cpus: spin::Mutex<CpuFeatures>,
    /// Pointer-authentication policy: lazy (true) or eager.
    pub(crate) pauth_lazy: AtomicBool,
    /// Lazy policy: loads a vCPU keeps its keys after a trapped use.
    pub(crate) pauth_decay: core::sync::atomic::AtomicU32,
    /// The virtual GICv3 CPU interface every CPU that entered EL2 has ([`VgicCaps::bits`],
    /// the smallest of each field; 0: some CPU has none, [`VGIC_UNREPORTED`]: no report yet).
    pub(crate) vgic: core::sync::atomic::AtomicU32,
}

/// [`Hyp::vgic`] before the boot CPU reports.
const VGIC_UNREPORTED: u32 = u32::MAX;

/// Default pointer-authentication policy: lazy. Measured (`cargo xtask bench`, instructions per
/// guest exit to the host over a plain VM): a VM not using its keys +99 eager vs +5 lazy; a VM
/// using them every run +102 eager vs +106 lazy (a re-armed trap every 64 runs).
pub const PTRAUTH_DEFAULT_LAZY: bool = true;
/// Default number of runs a vCPU keeps its keys loaded after a trapped use (lazy policy).
pub const PTRAUTH_DEFAULT_DECAY: u32 = 64;

/// Table pages the host's identity stage 2 can need at most for `ram` (see ARCHITECTURE.md):
/// the root, two level-1 tables, one level-2 table per GiB and one level-3 table per 2 MiB;
/// and around the guarded pages of the redistributor region `gicr`, a level-2 table and one
/// level-3 table per 2 MiB it touches.
pub fn host_s2_reserve(ram: PhysRange, gicr: Option<PhysRange>) -> usize {
    let gicr = gicr.map_or(0, |r| 2 + (r.size() >> 21) as usize + 1);
    3 + (ram.size() >> 30) as usize + 1 + (ram.size() >> 21) as usize + gicr
}

impl<'a, T: TableMemory> Hyp<'a, T> {
    /// Builds EL2's state from its parts: the host owns all RAM but `hyp_region`, which EL2
    /// takes.
    ///
    /// # Errors
    /// A description of what is wrong; EL2 start-up stops on it.
    pub fn new(parts: HypParts<'a, T>) -> Result<Self, &'static str> {
        let HypParts { platform, hyp_region, own, host_s2, hyp_s1, tables, vcpus, idregs, boot_cpu, gicr } = parts;
        crate::cpu::idreg::check_table(crate::cpu::idreg::FIELDS).map_err(|_| "the ID-register field table is malformed")?;
        let mem = MemState::new(own, host_s2, hyp_s1, tables, hyp_region).map_err(|_| "EL2's region is not page-aligned RAM")?;
        if gicr.map(|g| g.region) != platform.gicr {
            return Err("the redistributors EL2 guards are not the platform's");
        }
        let host_reserve = host_s2_reserve(platform.ram, platform.gicr);
        Ok(Self {
            platform,
            hyp_region,
            gicr,
            mem: spin::Mutex::new(mem),
            finalised: AtomicBool::new(false),
            msg_page: Default::default(),
            cpu_boot: Default::default(),
            vcpus,
            host_reserve,
            idregs,
            cpus: spin::Mutex::new(CpuFeatures::new(0, boot_cpu)),
            pauth_lazy: AtomicBool::new(PTRAUTH_DEFAULT_LAZY),
            pauth_decay: core::sync::atomic::AtomicU32::new(PTRAUTH_DEFAULT_DECAY),
            vgic: core::sync::atomic::AtomicU32::new(VGIC_UNREPORTED),
        })
    }

    /// A CPU entering EL2 reports its `ICH_VTR_EL2` (`None`: no GICv3 system-register
    /// interface). EL2 fills list registers only up to the smallest count any CPU has, with
    /// priorities every CPU implements. (A CPU with fewer list registers than a vCPU already
    /// uses would lose interrupts: CPUs are assumed to agree, as QEMU's and real systems do;
    /// a disagreement is logged.)
    pub fn report_vgic(&self, vtr: Option<u64>) {
        let caps = vtr.map_or(0, |v| VgicCaps::from_vtr(v).bits());
        let old = self.vgic.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            Some(match (cur, VgicCaps::from_bits(cur), VgicCaps::from_bits(caps)) {
                (VGIC_UNREPORTED, ..) => caps,
                (_, Some(a), Some(b)) => a.min(b).bits(),
                _ => 0,
            })
        });
        if matches!(old, Ok(o) if o != VGIC_UNREPORTED && o != caps) {
            log::error!("CPUs differ in their virtual GIC CPU interface (ICH_VTR_EL2 {vtr:?}); using the smallest");
        }
    }

    /// The virtual CPU interface VMs get, if every CPU has one.
    pub(crate) fn vgic_caps(&self) -> Option<VgicCaps> {
        match self.vgic.load(Ordering::Acquire) {
            VGIC_UNREPORTED => None,
            b => VgicCaps::from_bits(b),
        }
    }

    /// CPU `cpu` (platform index) has entered EL2 and read its own `id`. Before the view is
    /// fixed it joins the combined view; after, it must be at least as capable.
    ///
    /// # Errors
    /// [`Weaker`]: the CPU is weaker than what VMs or EL2 already rely on, and must not enter
    /// the host (its entry path powers it off).
    pub fn cpu_entered_el2(&self, cpu: usize, id: CpuId) -> Result<(), Weaker> {
        self.cpus.lock().report(cpu, id)
    }

    /// Fixes the combined CPU view (the first `FINALISE_SETUP` or `VM_CREATE`) and returns a
    /// copy of it, which cannot change afterwards.
    pub(crate) fn fix_cpu_features(&self) -> CpuFeatures {
        let mut cpus = self.cpus.lock();
        cpus.fix();
        cpus.clone()
    }

    /// The firmware workaround levels every CPU supports (fixed once a VM exists).
    pub(crate) fn fw_provided(&self) -> crate::cpu::fwreg::Provided {
        self.cpus.lock().fw_provided()
    }

    /// Decides a host `CPU_ON(target)`: the target's platform index and the `MPIDR` to give
    /// firmware, the platform's own value for that CPU (affinity fields as the device tree
    /// gives them; the host's other bits are dropped).
    ///
    /// # Errors
    /// The PSCI error for the host: `INVALID_PARAMETERS` for an MPIDR that names no CPU;
    /// `DENIED` for a CPU that already failed [`Hyp::cpu_entered_el2`] against the fixed view.
    pub fn cpu_on_target(&self, target: u64) -> Result<(usize, u64), i64> {
        let idx = self.platform.cpu_index(target).ok_or(smccc::psci::error::INVALID_PARAMETERS as i64)?;
        if let Err(w) = self.cpus.lock().cpu_on_check(idx) {
            log::debug!("CPU_ON of cpu{idx} refused: it is weaker than the fixed CPU view ({w:?})");
            return Err(crate::host::psci::DENIED);
        }
        Ok((idx, self.platform.cpus[idx] & crate::platform::MPIDR_AFF_MASK))
    }

    /// Whether set-up has been finalised.
    pub fn finalised(&self) -> bool {
        self.finalised.load(Ordering::Acquire)
    }

    /// Handles a host `HVC #0` made on CPU `cpu` with `x0..=x7` = `x`.
    pub fn host_hvc(&self, cpu: usize, x: [u64; 8], m: &impl Hw) -> HypResult {
        let id = HypercallId::try_from(x[0])?;
        if x[1 + id.nr_args()..].iter().any(|&r| r != 0) {
            return Err(HypError::InvalidArgument);
        }
        if id.phase() == Phase::SetupOnly && self.finalised() {
            return Err(HypError::SetupFinalised);
        }
        match id {
            HypercallId::Version => Ok([ABI_VERSION.encode(), 0, 0]),
            HypercallId::Ping => Ok([x[1], 0, 0]),
            HypercallId::SetMessagePage => self.set_message_page(x[1], x[2], m),
            HypercallId::FinaliseSetup => {
                let _guard = self.mem.lock();
                // CPUs that come online from now on must be at least what is combined so far.
                self.fix_cpu_features();
                self.finalised.store(true, Ordering::Release);
                Ok([0; 3])
            }
            HypercallId::HypInfo => {
                let info = HypInfo {
                    abi_version: ABI_VERSION.encode() as u32,
                    nr_cpus: self.platform.cpus.len() as u32,
                    ram_base: self.platform.ram.start.0,
                    ram_size: self.platform.ram.size(),
                    hyp_base: self.hyp_region.start.0,
                    hyp_size: self.hyp_region.size(),
                    host_ipa_bits: self.mem.lock().host_s2().ia_bits() as u32,
                    finalised: self.finalised() as u32,
                };
                self.write_message(cpu, &info)?;
                Ok([0; 3])
            }
            // Served by the trap layer in test builds; never here.
            HypercallId::TestFault | HypercallId::TestCheckInvariants => Err(HypError::NotSupported),
            HypercallId::Echo => {
                let req: EchoRequest = self.read_message(cpu)?;
                if req.flags != 0 {
                    return Err(HypError::BadMessage);
                }
                self.write_message(cpu, &req.expected_response())?;
                Ok([0; 3])
            }
            HypercallId::SetPtrauthPolicy => {
                let lazy = match (x[1], x[2]) {
                    (shared_abi::PTRAUTH_EAGER, 0) => false,
                    (shared_abi::PTRAUTH_LAZY, 1..=1_000_000) => true,
                    _ => return Err(HypError::InvalidArgument),
                };
                let _guard = self.mem.lock();
                if self.finalised() {
                    return Err(HypError::SetupFinalised);
                }
                self.pauth_lazy.store(lazy, Ordering::Relaxed);
                self.pauth_decay.store(x[2] as u32, Ordering::Relaxed);
                Ok([0; 3])
            }
            HypercallId::VmCreate => self.vm_create(cpu, m),
            HypercallId::VmDestroy => self.vm_destroy(x[1], m),
            HypercallId::VmAddMemory => self.vm_add_memory(x[1], x[2], x[3], x[4], m),
            HypercallId::VcpuSetReg => self.vcpu_set_reg(x[1], x[2], x[3], (x[4], x[5])),
            HypercallId::VcpuGetReg => self.vcpu_get_reg(x[1], x[2], x[3]),
            HypercallId::VcpuRegList => self.vcpu_reg_list(cpu, x[1], x[2]),
            HypercallId::VcpuRun => self.vcpu_run(cpu, x[1], x[2], x[3], m),
            HypercallId::VcpuSetIrq => self.vcpu_set_irq(x[1], x[2], x[3], x[4]),
            HypercallId::VcpuIrqState => self.vcpu_irq_state(cpu, x[1], x[2]),
            HypercallId::VcpuStats => self.vcpu_stats(cpu, x[1], x[2]),
        }
    }

    fn set_message_page(&self, cpu: u64, pa: u64, m: &impl Tlb) -> HypResult {
        // Validate: everything checkable without the lock.
        if cpu >= self.platform.cpus.len() as u64 {
            return Err(HypError::InvalidArgument);
        }
        let pa = PhysAddr(pa);
        if !pa.is_page_aligned() {
            return Err(HypError::NotAligned);
        }
        let page = PhysRange::from_size(pa, PAGE_SIZE).ok_or(HypError::OutOfRange)?;
        if !self.platform.ram.contains_range(&page) {
            return Err(HypError::OutOfRange);
        }
        // Lock, check.
        let mut mem = self.mem.lock();
        if self.finalised() {
            return Err(HypError::SetupFinalised);
        }
        let slot = &self.msg_page[cpu as usize];
        if slot.load(Ordering::Relaxed) != 0 {
            return Err(HypError::Frozen);
        }
        mem.host_share_hyp(pa, m)?;
        slot.store(pa.0, Ordering::Release);
        Ok([0; 3])
    }

    pub(crate) fn message_page(&self, cpu: usize) -> Result<PhysAddr, HypError> {
        match self.msg_page.get(cpu).map(|s| s.load(Ordering::Acquire)) {
            Some(0) | None => Err(HypError::NoMessagePage),
            Some(pa) => Ok(PhysAddr(pa)),
        }
    }

    /// Copies a message out of `cpu`'s message page. The host may rewrite the page at any
    /// time; the copy is what gets validated and used.
    pub(crate) fn read_message<M: FromBytes>(&self, cpu: usize) -> Result<M, HypError> {
        let pa = self.message_page(cpu)?;
        const { assert!(core::mem::size_of::<M>() as u64 <= PAGE_SIZE) };
        // A volatile read copies each byte once: later checks see the copy, never the page.
        // SAFETY: a message page is host RAM shared with EL2 for good (the host cannot donate
        // it away), mapped RW at `pa` in EL2's stage 1, page aligned; any bytes are a valid M.
        Ok(unsafe { core::ptr::read_volatile(pa.0 as *const M) })
    }

    pub(crate) fn write_message<M: IntoBytes + Immutable>(&self, cpu: usize, msg: &M) -> Result<(), HypError> {
        let pa = self.message_page(cpu)?;
        const { assert!(core::mem::size_of::<M>() as u64 <= PAGE_SIZE) };
        let bytes = msg.as_bytes();
        // Volatile, so every byte is stored (the host reads the page, the compiler cannot see
        // it), 8 bytes at a time where they fit: an exit record is 10 stores, not 80. The page
        // is page aligned, so every 8-byte chunk is naturally aligned.
        let words = bytes.chunks_exact(8);
        let tail = words.remainder();
        let mut i = 0;
        for w in words {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            // SAFETY: as in `read_message`; `i + 8 <= size_of::<M>() <= PAGE_SIZE` and `pa + i`
            // is 8-byte aligned (the page is page aligned, `i` a multiple of 8).
            unsafe { core::ptr::write_volatile((pa.0 as *mut u8).add(i) as *mut u64, u64::from_ne_bytes(v)) };
            i += 8;
        }
        for b in tail {
            // SAFETY: as above, `i < size_of::<M>()`.
            unsafe { core::ptr::write_volatile((pa.0 as *mut u8).add(i), *b) };
            i += 1;
        }
        Ok(())
    }

    /// Handles a host stage-2 *translation* fault on `ipa`.
    pub fn host_s2_fault(&self, ipa: u64, m: &impl Tlb) -> HostFault {
        if self.gicr.is_some_and(|g| crate::host::gicr::guarded(&g.region, ipa).is_some()) {
            return HostFault::Emulate;
        }
        self.mem.lock().host_map_on_fault(ipa, self.platform.gicr.as_ref(), m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::mem::owner::{Component, PageState};
    
    
    
    
    use shared_abi::msg::EchoResponse;
    

    #[test]
    fn the_smallest_virtual_cpu_interface_wins() {
        let f = fixture();
        let qemu = crate::guest::vgic::VgicCaps::from_vtr(QEMU_ICH_VTR);
        assert_eq!(f.hyp.vgic_caps(), Some(qemu));
        f.hyp.report_vgic(Some(15 | 6 << 26 | 7 << 29));
        assert_eq!(f.hyp.vgic_caps(), Some(qemu), "a bigger CPU changes nothing");
        f.hyp.report_vgic(Some(1 | 4 << 26 | 4 << 29));
        assert_eq!(f.hyp.vgic_caps().map(|c| c.nr_lrs), Some(2));
        f.hyp.report_vgic(None);
        assert_eq!(f.hyp.vgic_caps(), None, "a CPU without GICv3 system registers: no vGIC");
    }

    #[test]
    fn version_and_ping() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::Version, &[]), Ok([ABI_VERSION.encode(), 0, 0]));
        assert_eq!(f.call(0, HypercallId::Ping, &[0xDEAD]), Ok([0xDEAD, 0, 0]));
    }

    #[test]
    fn unknown_ids_are_not_supported() {
        let f = fixture();
        let mut x = [0u64; 8];
        for id in [0xC600_0FFF, 0x8400_0000, 0, u64::MAX] {
            x[0] = id;
            assert_eq!(f.hyp.host_hvc(0, x, &Recorder::default()), Err(HypError::NotSupported));
        }
    }

    #[test]
    fn test_hooks_are_not_served_by_the_dispatcher() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::TestFault, &[0]), Err(HypError::NotSupported));
    }

    #[test]
    fn non_zero_unused_registers_are_invalid() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::Version, &[1]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, HypercallId::Ping, &[1, 0, 0, 0, 0, 0, 1]), Err(HypError::InvalidArgument));
    }

    #[test]
    fn message_calls_need_a_message_page() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::HypInfo, &[]), Err(HypError::NoMessagePage));
        assert_eq!(f.call(1, HypercallId::Echo, &[]), Err(HypError::NoMessagePage));
    }

    #[test]
    fn message_page_is_shared_and_mapped_for_el2() {
        let f = fixture();
        let rec = Recorder::default();
        let mut x = [0u64; 8];
        x[0] = HypercallId::SetMessagePage as u64;
        x[1] = 1;
        x[2] = f.page(3);
        assert_eq!(f.hyp.host_hvc(0, x, &rec), Ok([0; 3]));
        assert_eq!(rec.log.borrow().as_slice(), &["hyp_s1_mapped"]);
        let mem = f.hyp.mem.lock();
        assert_eq!(mem.own().state(PhysAddr(f.page(3)), Component::Host), Some(PageState::SharedOwned));
        assert_eq!(mem.own().state(PhysAddr(f.page(3)), Component::Hyp), Some(PageState::SharedBorrowed));
        assert!(mem.hyp_s1().lookup(mem.tables(), f.page(3)).is_some());
    }

    #[test]
    fn echo_round_trips_through_the_page() {
        let mut f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).unwrap();
        let req = EchoRequest { nonce: 42, flags: 0, words: [1, 2, 3, 4, 5, 6] };
        f.ram.0[4096..4096 + 64].copy_from_slice(req.as_bytes());
        f.call(0, HypercallId::Echo, &[]).unwrap();
        let resp = EchoResponse::read_from_bytes(&f.ram.0[4096..4096 + 64]).unwrap();
        assert_eq!(resp, req.expected_response());
        // A reserved field set is a bad message, and the page is left as it was.
        let bad = EchoRequest { flags: 1, ..req };
        f.ram.0[4096..4096 + 64].copy_from_slice(bad.as_bytes());
        assert_eq!(f.call(0, HypercallId::Echo, &[]), Err(HypError::BadMessage));
        assert_eq!(&f.ram.0[4096..4096 + 64], bad.as_bytes());
    }

    #[test]
    fn hyp_info_describes_the_machine() {
        let f = fixture();
        f.call(1, HypercallId::SetMessagePage, &[1, f.page(2)]).unwrap();
        f.call(1, HypercallId::HypInfo, &[]).unwrap();
        let info = HypInfo::read_from_prefix(&f.ram.0[2 * 4096..]).unwrap().0;
        assert_eq!(info.nr_cpus, 2);
        assert_eq!(info.ram_size, (RAM_PAGES * 4096) as u64);
        assert_eq!(info.hyp_size, HYP_PAGES * PAGE_SIZE);
        assert_eq!(info.finalised, 0);
        assert_eq!(info.host_ipa_bits, 48);
    }

    #[test]
    fn set_message_page_rejects_bad_arguments_and_changes_nothing() {
        let f = fixture();
        let el2_page = f.hyp.hyp_region.start.0;
        let cases: &[(&[u64], HypError)] = &[
            (&[2, f.page(0)], HypError::InvalidArgument),
            (&[u64::MAX, f.page(0)], HypError::InvalidArgument),
            (&[0, f.page(0) + 8], HypError::NotAligned),
            (&[0, f.page(0) - 4096], HypError::OutOfRange),
            (&[0, !0xFFF], HypError::OutOfRange),
            (&[0, el2_page], HypError::NotOwned),
        ];
        for (args, err) in cases {
            assert_eq!(f.call(0, HypercallId::SetMessagePage, args), Err(*err), "{args:x?}");
        }
        assert_eq!(f.hyp.mem.lock().own().census(), ((RAM_PAGES as u64 - HYP_PAGES), HYP_PAGES, 0));
        assert_eq!(f.call(0, HypercallId::HypInfo, &[]), Err(HypError::NoMessagePage));
    }

    #[test]
    fn messages_are_written_whole_and_nothing_past_them() {
        let mut f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).unwrap();
        f.ram.0[4096..8192].fill(0xEE);
        // 8-byte words, then a tail of bytes (no message has one today; the writer must not care).
        let msg: [u8; 21] = core::array::from_fn(|i| i as u8 + 1);
        f.hyp.write_message(0, &msg).unwrap();
        assert_eq!(f.ram.0[4096..4096 + 21], msg);
        assert!(f.ram.0[4096 + 21..8192].iter().all(|&b| b == 0xEE), "nothing written past the message");
        assert_eq!(f.hyp.write_message(1, &msg), Err(HypError::NoMessagePage));
    }

    #[test]
    fn message_page_cannot_be_set_twice_or_reused() {
        let f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(5)]).unwrap();
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[0, f.page(6)]), Err(HypError::Frozen));
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[1, f.page(5)]), Err(HypError::NotOwned));
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(f.page(6)), Component::Host), Some(PageState::Owned));
    }

    #[test]
    fn setup_calls_are_refused_after_finalise() {
        let f = fixture();
        f.call(0, HypercallId::FinaliseSetup, &[]).unwrap();
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]), Err(HypError::SetupFinalised));
        assert_eq!(f.call(0, HypercallId::FinaliseSetup, &[]), Err(HypError::SetupFinalised));
        assert_eq!(f.call(0, HypercallId::Ping, &[7]), Ok([7, 0, 0]));
    }

    /// Writes a `VmCreate` to CPU 0's message page (page 1) and calls `VM_CREATE`.
    fn vm_create(f: &mut Fixture, ipa_bits: u32, flags: u64) -> HypResult {
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).ok();
        let req = shared_abi::msg::VmCreate { nr_vcpus: 1, ipa_bits, flags, reserved: [0; 2] };
        f.ram.0[4096..4096 + 32].copy_from_slice(req.as_bytes());
        f.call(0, HypercallId::VmCreate, &[])
    }

    fn boot_cpu(f: &Fixture) -> CpuId {
        let mut c = CpuFeatures::clone(&f.hyp.cpus.lock());
        c.fix();
        CpuId { midr: 0x410F_D0C0, regs: *c.view() }
    }

    #[test]
    fn cpu_on_gives_firmware_the_platform_mpidr() {
        let f = fixture();
        // RES1 bit 31, U, MT and bits above Aff3 from the host: firmware sees the device
        // tree's value only.
        assert_eq!(f.hyp.cpu_on_target(0xFFFF_FF00_C100_0001), Ok((1, 1)));
        assert_eq!(f.hyp.cpu_on_target(0x8000_0000), Ok((0, 0)));
        assert_eq!(f.hyp.cpu_on_target(2), Err(smccc::psci::error::INVALID_PARAMETERS as i64));
    }

    #[test]
    fn a_weaker_cpu_joins_before_the_first_vm_and_is_refused_after() {
        use shared_abi::msg::vm_flags;
        let mut f = fixture();
        let big = boot_cpu(&f);
        let mut little = big;
        little.regs[crate::cpu::idreg::idx(4, 1)] = 0; // no MTE
        little.regs[crate::cpu::idreg::idx(7, 0)] = 1; // 36-bit PA
        little.regs[crate::cpu::idreg::idx(4, 0)] &= !(0xF << 56); // CSV2 0
        little.midr = 0x410F_D050;
        // Open: the little CPU joins, and what VMs get follows every CPU.
        assert_eq!(f.hyp.cpu_entered_el2(1, little), Ok(()));
        assert_eq!(vm_create(&mut f, 40, 0), Err(HypError::InvalidArgument), "PARange of the little CPU");
        assert_eq!(vm_create(&mut f, 36, vm_flags::MTE), Err(HypError::Denied));
        assert_eq!(vm_create(&mut f, 36, vm_flags::PTRAUTH), Err(HypError::Denied), "IMPDEF PAuth, CPUs differ");
        let h = vm_create(&mut f, 36, 0).unwrap()[0];
        assert_eq!(f.hyp.fw_provided().wa1, crate::cpu::fwreg::NOT_AVAIL, "workaround levels from every CPU");
        assert_eq!(f.call(0, HypercallId::VcpuGetReg, &[h, 0, crate::cpu::fwreg::WORKAROUND_1]), Ok([crate::cpu::fwreg::NOT_AVAIL, 0, 0]));
        // Fixed: the little CPU coming back is fine (same values), a weaker one is not.
        assert_eq!(f.hyp.cpu_entered_el2(1, little), Ok(()));
        let mut weaker = little;
        weaker.regs[crate::cpu::idreg::idx(6, 0)] = 0; // no AES
        assert!(f.hyp.cpu_entered_el2(1, weaker).is_err());
        assert_eq!(f.hyp.cpu_on_target(1), Err(crate::host::psci::DENIED), "recorded: the next CPU_ON is refused");
    }

    #[test]
    fn finalise_fixes_the_cpu_view() {
        let mut f = fixture();
        let mut little = boot_cpu(&f);
        little.regs[crate::cpu::idreg::idx(4, 1)] = 0;
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).unwrap();
        f.call(0, HypercallId::FinaliseSetup, &[]).unwrap();
        assert_eq!(
            f.hyp.cpu_entered_el2(1, little),
            Err(Weaker::Field { reg: "ID_AA64PFR1_EL1", field: "MTE" }),
            "after set-up, a CPU without MTE would break MTE VMs"
        );
        assert!(vm_create(&mut f, 36, shared_abi::msg::vm_flags::MTE).is_ok(), "the view kept MTE");
    }

    #[test]
    fn host_faults_map_largest_allowed_block() {
        let f = fixture();
        let rec = Recorder::default();
        // First 2 MiB of test RAM is all host-owned: mapped as a block, the access retried.
        assert_eq!(f.hyp.host_s2_fault(f.page(0), &rec), HostFault::Retry);
        assert_eq!(f.hyp.host_s2_fault(f.page(0), &rec), HostFault::Retry, "second time: already mapped");
        assert_eq!(rec.log.borrow().as_slice(), &["host_s2_mapped"]);
        // EL2's pages are never mapped for the host.
        let el2 = f.hyp.hyp_region.start.0;
        assert_eq!(f.hyp.host_s2_fault(el2, &rec), HostFault::Inject);
        assert_eq!(f.hyp.host_s2_fault(el2 + 5 * PAGE_SIZE + 8, &rec), HostFault::Inject);
        // Outside the IPA space.
        assert_eq!(f.hyp.host_s2_fault(1 << 48, &rec), HostFault::Inject);
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), el2).is_none());
    }

    #[test]
    fn host_faults_on_guarded_pages_are_emulated_never_mapped() {
        let f = fixture();
        let rec = Recorder::default();
        assert_eq!(f.hyp.host_s2_fault(0x080A_0000, &rec), HostFault::Emulate);
        assert_eq!(f.hyp.host_s2_fault(0x08FE_0014, &rec), HostFault::Emulate, "past the present ones: refused by decode");
        assert_eq!(f.hyp.host_s2_fault(0x080A_1000, &rec), HostFault::Retry);
        assert_eq!(f.hyp.host_s2_fault(0x0800_0000, &rec), HostFault::Retry);
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), 0x080A_0000).is_none());
        assert!(mem.host_s2().lookup(mem.tables(), 0x080A_1000).is_some());
    }
}
