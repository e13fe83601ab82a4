//! EL2's global state: [`Hyp`], built once at boot and shared by every CPU.
//!
//! It holds the state; it serves nothing itself. Host calls start in [`crate::hypercall`],
//! guest exits in [`crate::guest::exit`], and every change of memory state goes through
//! [`crate::mem::protect`].
//!
//! # Locks
//! One lock, [`Hyp::mem`], guards the ownership record, the host stage 2, EL2's stage 1, the
//! table pool and the VM table ([`MemState`]), and the writers of the message-page registry.
//! Message pages are *read* without the lock: each is written once, during set-up, before any
//! message call can use it. [`Hyp::cpus`] (the CPU view) has its own lock, taken inside the
//! memory lock or alone, and nothing is locked while holding it.

use crate::mem::addr::PhysRange;
use crate::mem::owner::Ownership;
use crate::mem::pgtable::{PageTable, TableMemory};
use crate::host::msgpage::MessagePages;
use crate::mem::MemState;
use crate::platform::{Platform, MAX_CPUS};
use crate::cpu::features::{CpuFeatures, CpuId, Weaker};
use crate::host::devices::HostDevices;
use crate::host::gicr::Redistributors;
use crate::guest::vgic::VgicCaps;
use crate::guest::vcpu::{VcpuGuard, VcpuSlot, VcpuTable};
use crate::guest::vm::handle_slot;
use crate::guest::{MAX_VCPUS, MAX_VMS};
use shared_abi::HypError;
use crate::guest::vm::IdRegTable;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// The boot CPU's `MIDR_EL1`, ID registers, `CTR_EL0` and `ICH_VTR_EL2` (platform index 0; other
    /// CPUs report theirs with [`Hyp::cpu_entered_el2`]).
    pub boot_cpu: CpuId,
    /// The redistributors found at boot in the platform's redistributor region
    /// ([`crate::host::gicr::probe`]).
    pub gicr: Option<Redistributors>,
    /// A random value of this boot, from which each VM's secrets are derived
    /// ([`shared_abi::measure::Handover`]).
    pub boot_secret: [u8; 32],
}

/// EL2's global state.
pub struct Hyp<'a, T: TableMemory> {
    /// The machine.
    pub platform: Platform,
    /// EL2's own memory.
    pub hyp_region: PhysRange,
    /// The redistributors, whose control pages the host never maps (see [`crate::host::gicr`]).
    pub gicr: Option<Redistributors>,
    /// This boot's random secret (see [`HypParts::boot_secret`]); never leaves EL2.
    pub(crate) boot_secret: [u8; 32],
    /// The memory lock (see the module documentation).
    pub mem: crate::sync::Mutex<MemState<'a, T>>,
    /// `FINALISE_SETUP` has been called.
    pub(crate) finalised: AtomicBool,
    /// Every CPU's message page.
    pub(crate) msg: MessagePages,
    /// Host `CPU_ON` requests, by CPU index.
    pub cpu_boot: [CpuBoot; MAX_CPUS],
    /// Every vCPU context (see [`crate::guest::vm`] for who may touch one).
    pub(crate) vcpus: &'a VcpuTable,
    /// Table pages kept for the host's stage 2: VMs' root tables, and EL2's own tables for the
    /// table pages VMs hold, may not use them.
    pub(crate) host_reserve: usize,
    /// Per-VM ID registers (see [`crate::guest::vm`]).
    pub(crate) idregs: &'a IdRegTable,
    /// Per VM slot: what a stage-2 fault may learn without the memory lock
    /// ([`crate::guest::vm::LayoutHint`]).
    pub(crate) layout: [crate::guest::vm::LayoutHint; MAX_VMS],
    /// Per VM slot: what `VCPU_RUN` reads without the memory lock
    /// ([`crate::guest::vm::RunState`]).
    pub(crate) runs: [crate::guest::vm::RunState; MAX_VMS],
    /// Every CPU's ID registers and the view combined from them (see [`crate::cpu::features`]): open
    /// until `FINALISE_SETUP` or the first `VM_CREATE`, fixed from then on. Its own lock, never
    /// held while taking another.
    pub(crate) cpus: crate::sync::Mutex<CpuFeatures>,
    /// Pointer-authentication policy: lazy (true) or eager.
    pub(crate) pauth_lazy: AtomicBool,
    /// Lazy policy: loads a vCPU keeps its keys after a trapped use.
    pub(crate) pauth_decay: core::sync::atomic::AtomicU32,
    /// [`CpuFeatures::vgic`] of [`Hyp::cpus`] ([`VgicCaps::bits`]; 0: some CPU has no
    /// interface), copied under that lock whenever it changes, so `VCPU_SET_IRQ` reads it
    /// without the lock. It changes only while the view is open, before any vCPU exists.
    vgic: core::sync::atomic::AtomicU32,
    /// [`CpuFeatures::ctr`] of [`Hyp::cpus`], copied as [`Hyp::vgic`] is: the `CTR_EL0` guests
    /// read (trapped, `HCR_EL2.TID2`, where CPUs differ).
    ctr: AtomicU64,
    /// [`CpuFeatures::ctr_trap`] of [`Hyp::cpus`], copied likewise; it only ever turns on.
    ctr_trap: AtomicBool,
    /// Every CPU of the platform has its own redistributor, so any of them can deliver a
    /// linked virtual timer and consume EL2's doorbell; decided once at boot
    /// ([`Hyp::cpu_redistributor`]). Otherwise `VCPU_LINK_VTIMER` and `VCPU_LINK_SGIS` are
    /// `Denied`: a linked vCPU on a CPU without one would exit on its timer's PPI at every
    /// entry, and deactivate a hardware interrupt that is not active.
    linkable: AtomicBool,
}

/// Default pointer-authentication policy: lazy. Measured (`cargo xtask bench`, instructions per
/// guest exit to the host over a plain VM): a VM not using its keys +99 eager vs +5 lazy; a VM
/// using them every run +102 eager vs +106 lazy (a re-armed trap every 64 runs).
pub const PTRAUTH_DEFAULT_LAZY: bool = true;
/// Default number of runs a vCPU keeps its keys loaded after a trapped use (lazy policy).
pub const PTRAUTH_DEFAULT_DECAY: u32 = 64;

/// Table pages the host's identity stage 2 can need at most for `ram` (see docs/memory.md):
/// the root, two level-1 tables, one level-2 table per GiB and one level-3 table per 2 MiB;
/// and what the device space the host may reach needs ([`HostDevices::table_reserve`]).
pub fn host_s2_reserve(ram: PhysRange, devices: &HostDevices) -> usize {
    3 + (ram.size() >> 30) as usize + 1 + (ram.size() >> 21) as usize + devices.table_reserve()
}

impl<'a, T: TableMemory> Hyp<'a, T> {
    /// Builds EL2's state from its parts: the host owns all RAM but `hyp_region`, which EL2
    /// takes.
    ///
    /// # Errors
    /// A description of what is wrong; EL2 start-up stops on it.
    pub fn new(parts: HypParts<'a, T>) -> Result<Self, &'static str> {
        let HypParts { platform, hyp_region, own, host_s2, hyp_s1, tables, vcpus, idregs, boot_cpu, gicr, boot_secret } = parts;
        crate::cpu::idreg::check_table(crate::cpu::idreg::FIELDS).map_err(|_| "the ID-register field table is malformed")?;
        let mem = MemState::new(own, host_s2, hyp_s1, tables, hyp_region).map_err(|_| "EL2's region is not page-aligned RAM")?;
        if gicr.map(|g| g.region) != platform.devices.gicr {
            return Err("the redistributors EL2 guards are not the platform's");
        }
        let host_reserve = host_s2_reserve(platform.ram, &platform.devices);
        let cpus = CpuFeatures::new(0, boot_cpu);
        let vgic = cpus.vgic().map_or(0, VgicCaps::bits);
        let (ctr, ctr_trap) = (cpus.ctr(), cpus.ctr_trap());
        Ok(Self {
            boot_secret,
            platform,
            hyp_region,
            gicr,
            mem: crate::sync::Mutex::new(mem),
            finalised: AtomicBool::new(false),
            msg: MessagePages::default(),
            cpu_boot: Default::default(),
            vcpus,
            host_reserve,
            idregs,
            layout: [const { crate::guest::vm::LayoutHint::new() }; MAX_VMS],
            runs: [const { crate::guest::vm::RunState::new() }; MAX_VMS],
            cpus: crate::sync::Mutex::new(cpus),
            pauth_lazy: AtomicBool::new(PTRAUTH_DEFAULT_LAZY),
            pauth_decay: core::sync::atomic::AtomicU32::new(PTRAUTH_DEFAULT_DECAY),
            vgic: core::sync::atomic::AtomicU32::new(vgic),
            ctr: AtomicU64::new(ctr),
            ctr_trap: AtomicBool::new(ctr_trap),
            linkable: AtomicBool::new(true),
        })
    }

    /// Boot: whether every CPU of the platform has `found` its own redistributor (see
    /// [`Hyp::linkable`]); a `false` is for good.
    pub fn cpu_redistributor(&self, found: bool) {
        if !found {
            self.linkable.store(false, Ordering::Release);
        }
    }

    /// Whether EL2 links virtual timers and SGIs (`VCPU_LINK_VTIMER`, `VCPU_LINK_SGIS`).
    pub(crate) fn linkable(&self) -> bool {
        self.linkable.load(Ordering::Acquire)
    }

    /// The virtual CPU interface vCPUs get, if every CPU has one: EL2 fills list registers
    /// only up to the smallest count any CPU has, with priorities every CPU implements (see
    /// [`crate::cpu::features`]: once a VM exists, a CPU with less is refused).
    pub(crate) fn vgic_caps(&self) -> Option<VgicCaps> {
        VgicCaps::from_bits(self.vgic.load(Ordering::Acquire))
    }

    /// CPU `cpu` (platform index) has entered EL2 and read its own `id` (its ID registers,
    /// `CTR_EL0` and `ICH_VTR_EL2`). Before the view is fixed it joins the combined view; after, it must be
    /// at least as capable.
    ///
    /// # Errors
    /// [`Weaker`]: the CPU is weaker than what VMs or EL2 already rely on, and must not enter
    /// the host (its entry path powers it off).
    pub fn cpu_entered_el2(&self, cpu: usize, id: CpuId) -> Result<(), Weaker> {
        let mut cpus = self.cpus.lock();
        let r = cpus.report(cpu, id);
        self.vgic.store(cpus.vgic().map_or(0, VgicCaps::bits), Ordering::Release);
        self.ctr.store(cpus.ctr(), Ordering::Release);
        self.ctr_trap.store(cpus.ctr_trap(), Ordering::Release);
        r
    }

    /// The `CTR_EL0` guests read: every CPU satisfies it (see [`crate::cpu::cachetype`]). It
    /// changes only while the CPU view is open, before any vCPU exists.
    pub(crate) fn guest_ctr(&self) -> u64 {
        self.ctr.load(Ordering::Acquire)
    }

    /// Whether guests read the cache type through EL2 ([`CpuFeatures::ctr_trap`]).
    pub(crate) fn guest_ctr_trapped(&self) -> bool {
        self.ctr_trap.load(Ordering::Acquire)
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

    /// vCPU `index` of the VM slot that `handle` names (whether or not that VM is alive).
    ///
    /// # Errors
    /// `InvalidArgument` for an index past [`MAX_VCPUS`].
    pub(crate) fn vcpu_slot(&self, handle: u64, index: u64) -> Result<&VcpuSlot, HypError> {
        if index >= MAX_VCPUS as u64 {
            return Err(HypError::InvalidArgument);
        }
        Ok(&self.vcpus[handle_slot(handle) % MAX_VMS][index as usize])
    }

    /// Claims vCPU `index` of the live VM `handle` for a host call that needs no more than
    /// that (the VM lookup is not kept: the claim alone keeps the vCPU's state still).
    ///
    /// # Errors
    /// `InvalidArgument` for an index past the VM's vCPUs, `Busy` if someone holds it,
    /// `InvalidHandle` if no live VM has `handle`.
    pub(crate) fn claim_vcpu(&self, handle: u64, index: u64) -> Result<VcpuGuard<'_>, HypError> {
        let guard = self.vcpu_slot(handle, index)?.claim().ok_or(HypError::Busy)?;
        let mem = self.mem.lock();
        let (_, vm) = mem.vms.lookup(handle)?;
        if index as usize >= vm.nr_vcpus {
            return Err(HypError::InvalidArgument);
        }
        Ok(guard)
    }

    /// Whether set-up has been finalised.
    pub fn finalised(&self) -> bool {
        self.finalised.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use shared_abi::{HypError, HypResult, HypercallId};
    use zerocopy::IntoBytes;

    #[test]
    fn the_smallest_virtual_cpu_interface_wins() {
        let f = fixture();
        let qemu = crate::guest::vgic::VgicCaps::from_vtr(QEMU_ICH_VTR);
        assert_eq!(f.hyp.vgic_caps(), Some(qemu));
        let cpu = |vtr| CpuId { ich_vtr: vtr, ..boot_cpu(&f) };
        f.hyp.cpu_entered_el2(1, cpu(Some(15 | 6 << 26 | 7 << 29))).unwrap();
        assert_eq!(f.hyp.vgic_caps(), Some(qemu), "a bigger CPU changes nothing");
        f.hyp.cpu_entered_el2(1, cpu(Some(1 | 4 << 26 | 4 << 29))).unwrap();
        assert_eq!(f.hyp.vgic_caps().map(|c| c.nr_lrs), Some(2));
        f.hyp.cpu_entered_el2(1, cpu(None)).unwrap();
        assert_eq!(f.hyp.vgic_caps(), None, "a CPU without GICv3 system registers: no vGIC");
        // Open view: the same CPU reporting again replaces its old report.
        f.hyp.cpu_entered_el2(1, cpu(Some(QEMU_ICH_VTR))).unwrap();
        assert_eq!(f.hyp.vgic_caps(), Some(qemu));
    }

    #[test]
    fn a_late_cpu_with_fewer_list_registers_is_refused() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let spi = shared_abi::msg::irq::config(0xA0, true, 1, false) as u64;
        for vintid in 32..36 {
            f.call(0, HypercallId::VcpuSetIrq, &[h, 0, vintid, spi]).unwrap();
        }
        assert_eq!(f.hyp.vcpus[crate::guest::vm::handle_slot(h)][0].claim().unwrap().vgic.report(4).used, 0b1111);
        // A CPU with 2 list registers comes online after the VM exists: loading the vCPU there
        // would write ICH_LR2_EL2 and ICH_LR3_EL2, which it does not have (an EL2 UNDEF).
        let late = CpuId { ich_vtr: Some(1 | 4 << 26 | 4 << 29), ..boot_cpu(&f) };
        assert_eq!(f.hyp.cpu_entered_el2(1, late), Err(Weaker::Field { reg: "ICH_VTR_EL2", field: "ListRegs" }));
        assert_eq!(f.hyp.vgic_caps().map(|c| c.nr_lrs), Some(4), "the view keeps its list registers");
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 1), Err(smccc::psci::Error::Denied), "recorded: the next CPU_ON is refused");
        // Fewer priority or preemption bits, or no interface: refused too; more: fine.
        for (vtr, field) in [(3 | 4 << 26 | 3 << 29, "PRIbits"), (3 | 3 << 26 | 4 << 29, "PREbits")] {
            assert_eq!(f.hyp.cpu_entered_el2(1, CpuId { ich_vtr: Some(vtr), ..boot_cpu(&f) }), Err(Weaker::Field { reg: "ICH_VTR_EL2", field }));
        }
        assert_eq!(f.hyp.cpu_entered_el2(1, CpuId { ich_vtr: None, ..boot_cpu(&f) }), Err(Weaker::Field { reg: "ID_AA64PFR0_EL1", field: "GIC" }));
        assert_eq!(f.hyp.cpu_entered_el2(1, CpuId { ich_vtr: Some(15 | 6 << 26 | 7 << 29), ..boot_cpu(&f) }), Ok(()));
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 1), Ok((1, 1)));
        assert_eq!(f.hyp.vgic_caps().map(|c| c.nr_lrs), Some(4));
    }

    /// Writes a `VmCreate` to CPU 0's message page (page 1) and calls `VM_CREATE`.
    fn vm_create(f: &mut Fixture, ipa_bits: u32, flags: u64) -> HypResult {
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).ok();
        let req = shared_abi::msg::VmCreate { nr_vcpus: 1, ipa_bits, flags, sve_vl: 0, reserved: 0 };
        f.ram.0[4096..4096 + 32].copy_from_slice(req.as_bytes());
        f.call(0, HypercallId::VmCreate, &[])
    }

    fn boot_cpu(f: &Fixture) -> CpuId {
        let mut c = CpuFeatures::clone(&f.hyp.cpus.lock());
        c.fix();
        CpuId { midr: 0x410F_D0C0, regs: *c.view(), ctr: FIXTURE_CTR, ich_vtr: Some(QEMU_ICH_VTR), sve: FIXTURE_SVE }
    }

    #[test]
    fn cpu_on_gives_firmware_the_platform_mpidr() {
        let f = fixture();
        // RES1 bit 31, U, MT and bits above Aff3 from the host: firmware sees the device
        // tree's value only.
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 0xFFFF_FF00_C100_0001), Ok((1, 1)));
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 0x8000_0000), Ok((0, 0)));
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 2), Err(smccc::psci::Error::InvalidParameters));
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
        assert_eq!(crate::host::psci::cpu_on_target(&f.hyp.platform, &f.hyp.cpus, 1), Err(smccc::psci::Error::Denied), "recorded: the next CPU_ON is refused");
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
}
