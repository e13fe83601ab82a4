//! The host-test fixture: EL2 built over a RAM buffer, and a recorder standing in for the
//! hardware seam ([`crate::hw`]). Compiled only for tests.
#![cfg(test)]

use crate::cpu::features::CpuId;
use crate::guest::timer::PTimer;
use crate::guest::vcpu::VcpuCtx;
use crate::cpu::controls::cptr;
use crate::guest::vcpu::{FpRegs, SveRegs};
use crate::hw::{CacheOps, Clock, Firmware, GuestConfig, GuestTrap, HostCpu, Tlb, VectorRegs, WorldSwitch};
use crate::hyp::{Hyp, HypParts};
use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::mem::owner::{Ownership, PageEntry};
use crate::mem::pgtable::test_mem::FakeMemory;
use crate::mem::pgtable::{Format, PageTable};
use crate::platform::Platform;
use arrayvec::ArrayVec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::AtomicU64;
use shared_abi::{HypResult, HypercallId};
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

/// Records what EL2 asked of the hardware, and plays a script of guest exits for `run`.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Every hardware call, in order (by name).
    pub log: RefCell<Vec<&'static str>>,
    /// The addresses `clear_tags` and `clear_tags_block` were given, in order.
    pub tags_cleared: RefCell<Vec<u64>>,
    /// `clear_tags` and `clear_tags_block` fail (a CPU without its fixmap slot).
    pub tags_fail: Cell<bool>,
    /// The addresses `clean_inval_poc_block` was given, in order.
    pub blocks_cleaned: RefCell<Vec<u64>>,
    /// The addresses `clean_inval_poc` was given, in order.
    pub pages_cleaned: RefCell<Vec<u64>>,
    /// The guest exits `run` returns, in order; running past the end fails the test.
    pub exits: RefCell<Vec<GuestTrap>>,
    /// The PC of each guest entry.
    pub entry_pcs: RefCell<Vec<u64>>,
    /// The PSTATE each exit leaves, while the list lasts.
    pub pstates: RefCell<Vec<u64>>,
    /// The `x0..=x3` each exit leaves (an SMCCC call's), while the list lasts.
    pub calls: RefCell<Vec<[u64; 4]>>,
    /// What `counter` answers (tests set it).
    pub counter: Cell<u64>,
    /// Firmware `CPU_ON` calls: (MPIDR, CPU index).
    pub cpu_ons: RefCell<Vec<(u64, usize)>>,
    /// `FAR_EL2` and `HPFAR_EL2` of a host trap (tests set them).
    pub fault: RefCell<(u64, u64)>,
    /// The host's `VBAR_EL1` (tests set it).
    pub vbar: u64,
    /// The last exception injected into the host: `ESR_EL1`, `FAR_EL1`, `ELR_EL1`, `SPSR_EL1`.
    pub el1_exceptions: RefCell<Vec<u64>>,
    /// The configuration of the last `load`.
    pub loaded: Cell<Option<GuestConfig>>,
    /// A guest's stage 2 (and VMID) is loaded: between `load` and `put`. A TLB invalidation
    /// of "the current VMID" then hits the guest's, as on the hardware, so
    /// `host_s2_unmapped` refuses it.
    pub guest_loaded: Cell<bool>,
    /// The `VTTBR_EL2` values borrowed for the host's invalidations in a guest's run
    /// (`host_s2_unmapped_from_guest`).
    pub host_vttbrs: RefCell<Vec<u64>>,
    /// The FP/SIMD and SVE register file behind [`VectorRegs`].
    pub vectors: RefCell<FakeVectors>,
    /// How many of the next `guest_irq` calls (after `doorbells`) find the linked virtual
    /// timer firing.
    pub vtimer_takes: Cell<u32>,
    /// How many of the next `guest_irq` calls find EL2's doorbell.
    pub doorbells: Cell<u32>,
    /// Every `queue_sgis` request, in order.
    pub sgis_queued: RefCell<Vec<u16>>,
    /// The SGIs each `queue_sgis` call leaves pending (no list register), of those asked,
    /// while the list lasts (then none).
    pub sgis_left: RefCell<Vec<u16>>,
    /// The affinities `ring_doorbell` rang, in order.
    pub doorbells_rung: RefCell<Vec<u64>>,
}

/// A CPU's vector registers and their traps, as [`VectorRegs`] reaches them: every access
/// checks the trap it needs is lifted *in force* (written and synchronised), as the CPU would
/// otherwise take an exception at EL2. Where the architecture leaves a result open, the model
/// takes the case that would leak: an FP/SIMD or SVE write leaves the bits above what it writes
/// as they were.
pub(crate) struct FakeVectors {
    /// `CPTR_EL2` as last written.
    pub cptr: u64,
    /// `CPTR_EL2` as in force (after an `ISB`).
    pub cptr_in_force: u64,
    /// `ZCR_EL2`.
    pub zcr_el2: u64,
    /// The CPU's largest vector length in quadwords (it implements every one up to it).
    pub max_vq: u8,
    /// `Z0..Z31` at the architecture's largest length.
    pub z: [[u8; 256]; 32],
    /// `P0..P15`.
    pub p: [[u8; 32]; 16],
    /// `FFR`.
    pub ffr: [u8; 32],
    pub fpsr: u64,
    pub fpcr: u64,
    pub zcr_el1: u64,
}

impl Default for FakeVectors {
    /// A CPU of 512 bits with the host's `CPTR_EL2` (FP/SIMD untrapped, SVE and SME trapped).
    fn default() -> Self {
        Self::with_max_vq(4)
    }
}

impl FakeVectors {
    /// A CPU whose largest vector length is `max_vq` quadwords, registers zero.
    pub fn with_max_vq(max_vq: u8) -> Self {
        let host = cptr::RES1 | cptr::TZ | cptr::TSM;
        Self { cptr: host, cptr_in_force: host, zcr_el2: 0, max_vq, z: [[0; 256]; 32], p: [[0; 32]; 16], ffr: [0; 32], fpsr: 0, fpcr: 0, zcr_el1: 0 }
    }

    /// The vector length in bytes at EL2: `ZCR_EL2.LEN` capped by the CPU.
    pub fn vl(&self) -> usize {
        16 * ((self.zcr_el2 & 0xF) as usize + 1).min(self.max_vq as usize)
    }

    fn need(&self, what: &str, traps: u64) {
        assert_eq!(self.cptr_in_force & traps, 0, "{what} with CPTR_EL2 {:#x} in force: an exception at EL2", self.cptr_in_force);
    }

    /// `V0..V31`, `FPSR`, `FPCR` as the CPU holds them.
    pub fn fp(&self) -> FpRegs {
        let mut f = FpRegs::ZERO;
        for n in 0..32 {
            f.v[2 * n] = u64::from_le_bytes(self.z[n][..8].try_into().unwrap());
            f.v[2 * n + 1] = u64::from_le_bytes(self.z[n][8..16].try_into().unwrap());
        }
        (f.fpsr, f.fpcr) = (self.fpsr, self.fpcr);
        f
    }

    /// Writes `V0..V31`, `FPSR`, `FPCR` (the low 128 bits of each `Z` only).
    pub fn load_fp(&mut self, f: &FpRegs) {
        for n in 0..32 {
            self.z[n][..8].copy_from_slice(&f.v[2 * n].to_le_bytes());
            self.z[n][8..16].copy_from_slice(&f.v[2 * n + 1].to_le_bytes());
        }
        (self.fpsr, self.fpcr) = (f.fpsr, f.fpcr);
    }
}

impl VectorRegs for Recorder {
    fn write_cptr(&self, v: u64) {
        self.note("write_cptr");
        self.vectors.borrow_mut().cptr = v;
    }
    fn isb(&self) {
        self.note("isb");
        let mut v = self.vectors.borrow_mut();
        v.cptr_in_force = v.cptr;
    }
    fn write_zcr_el2(&self, zcr: u64) {
        self.note("write_zcr_el2");
        let mut v = self.vectors.borrow_mut();
        v.need("ZCR_EL2 write", cptr::TZ);
        v.zcr_el2 = zcr;
    }
    fn fp_save(&self, to: &mut FpRegs) {
        self.note("fp_save");
        let v = self.vectors.borrow();
        v.need("FP/SIMD save", cptr::TFP);
        *to = v.fp();
    }
    fn fp_restore(&self, from: &FpRegs) {
        self.note("fp_restore");
        let mut v = self.vectors.borrow_mut();
        v.need("FP/SIMD restore", cptr::TFP);
        v.load_fp(from);
    }
    fn sve_save(&self, to: &mut SveRegs) {
        self.note("sve_save");
        let v = self.vectors.borrow();
        v.need("SVE save", cptr::TZ | cptr::TFP);
        let (vl, pl) = (v.vl(), v.vl() / 8);
        for n in 0..32 {
            to.z[n * vl..(n + 1) * vl].copy_from_slice(&v.z[n][..vl]);
        }
        for n in 0..16 {
            to.p[n * pl..(n + 1) * pl].copy_from_slice(&v.p[n][..pl]);
        }
        to.ffr[..pl].copy_from_slice(&v.ffr[..pl]);
        (to.fpsr, to.fpcr, to.zcr_el1) = (v.fpsr, v.fpcr, v.zcr_el1);
    }
    fn sve_restore(&self, from: &SveRegs) {
        self.note("sve_restore");
        let mut v = self.vectors.borrow_mut();
        v.need("SVE restore", cptr::TZ | cptr::TFP);
        let (vl, pl) = (v.vl(), v.vl() / 8);
        for n in 0..32 {
            v.z[n][..vl].copy_from_slice(&from.z[n * vl..(n + 1) * vl]);
        }
        for n in 0..16 {
            v.p[n][..pl].copy_from_slice(&from.p[n * pl..(n + 1) * pl]);
        }
        v.ffr[..pl].copy_from_slice(&from.ffr[..pl]);
        (v.fpsr, v.fpcr, v.zcr_el1) = (from.fpsr, from.fpcr, from.zcr_el1);
    }
    fn sve_zero(&self) {
        self.note("sve_zero");
        let mut v = self.vectors.borrow_mut();
        v.need("SVE zeroing", cptr::TZ | cptr::TFP);
        let (vl, pl) = (v.vl(), v.vl() / 8);
        for n in 0..32 {
            v.z[n][..vl].fill(0);
        }
        for n in 0..16 {
            v.p[n][..pl].fill(0);
        }
        v.ffr[..pl].fill(0);
    }
}

impl Recorder {
    fn note(&self, what: &'static str) {
        self.log.borrow_mut().push(what);
    }
}

impl WorldSwitch for Recorder {
    type Saved = ();
    fn load(&self, _: &VcpuCtx, cfg: &GuestConfig) {
        self.note("load");
        self.loaded.set(Some(*cfg));
        self.guest_loaded.set(true);
    }
    fn put(&self, _: &mut VcpuCtx, _: ()) {
        self.note("put");
        self.guest_loaded.set(false);
    }
    fn el1_to_ctx(&self, _: &mut VcpuCtx) {}
    fn pauth_load(&self, _: &VcpuCtx, _: &mut ()) -> bool {
        let first = !self.log.borrow().contains(&"pauth_load");
        self.note("pauth_load");
        first
    }
    fn debug_sync(&self, ctx: &mut VcpuCtx, _: &mut (), uses: bool) {
        // What the guest's state asks for (the run's liveness so far is `debug_switch`'s to
        // add: its own tests).
        self.note(if uses && !ctx.debug.oslk { "debug_live" } else { "debug_trapped" });
    }
    fn fp_load(&self, _: &VcpuCtx, _: &mut ()) -> bool {
        let first = !self.log.borrow().contains(&"fp_load");
        self.note("fp_load");
        first
    }
    fn el1_from_ctx(&self, _: &VcpuCtx) {}
    fn run(&self, ctx: &mut VcpuCtx) -> GuestTrap {
        self.note("run");
        self.entry_pcs.borrow_mut().push(ctx.pc);
        let mut script = self.exits.borrow_mut();
        assert!(!script.is_empty(), "guest ran past the end of its script");
        let mut pstates = self.pstates.borrow_mut();
        if !pstates.is_empty() {
            ctx.pstate = pstates.remove(0);
        }
        let mut calls = self.calls.borrow_mut();
        if !calls.is_empty() {
            ctx.x[..4].copy_from_slice(&calls.remove(0));
        }
        script.remove(0)
    }
    fn ptimer_backing(&self, t: &PTimer) {
        self.note(if t.deadline(0) == u64::MAX { "ptimer_backing_off" } else { "ptimer_backing_on" });
    }
    fn guest_irq(&self, ctx: &mut VcpuCtx, _: &mut ()) -> crate::hw::GuestIrq {
        self.note("guest_irq");
        let (doorbells, takes) = (self.doorbells.get(), self.vtimer_takes.get());
        if doorbells > 0 {
            self.doorbells.set(doorbells - 1);
            crate::hw::GuestIrq::Doorbell
        } else if takes > 0 && ctx.vgic.vtimer != 0 {
            self.vtimer_takes.set(takes - 1);
            crate::hw::GuestIrq::Timer
        } else {
            crate::hw::GuestIrq::Host
        }
    }
    fn queue_sgis(&self, _: &mut VcpuCtx, _: &mut (), bits: u16) -> u16 {
        self.sgis_queued.borrow_mut().push(bits);
        let mut left = self.sgis_left.borrow_mut();
        bits & if left.is_empty() { 0 } else { left.remove(0) }
    }
    fn ring_doorbell(&self, mpidr: u64) {
        self.doorbells_rung.borrow_mut().push(mpidr);
    }
}

impl Tlb for Recorder {
    fn hyp_s1_mapped(&self) {
        self.note("hyp_s1_mapped");
    }
    fn hyp_s1_unmapped(&self) {
        self.note("hyp_s1_unmapped");
    }
    fn host_s2_mapped(&self) {
        self.note("host_s2_mapped");
    }
    fn host_s2_unmapped(&self) {
        // With a guest loaded, TLBI VMALLS12E1IS would invalidate the guest's VMID and leave
        // the host's entries: an EL2 bug in any test that gets here.
        assert!(!self.guest_loaded.get(), "host_s2_unmapped with a guest's VMID loaded: the host's TLB entries would stay");
        self.note("host_s2_unmapped");
    }
    fn host_s2_unmapped_from_guest(&self, host_vttbr: u64) {
        assert!(self.guest_loaded.get(), "host_s2_unmapped_from_guest outside a guest's run");
        self.host_vttbrs.borrow_mut().push(host_vttbr);
        self.note("host_s2_unmapped");
    }
    fn guest_s2_mapped(&self) {
        self.note("guest_s2_mapped");
    }
    fn flush_guest_tlb(&self, _: u64, _: u8, _: u8) {
        self.note("flush_guest_tlb");
    }
    fn flush_guest_local(&self) {
        self.note("flush_guest_local");
    }
}

impl CacheOps for Recorder {
    fn clean_inval_poc(&self, pa: PhysAddr) {
        self.note("clean_inval_poc");
        self.pages_cleaned.borrow_mut().push(pa.0);
    }
    fn clean_inval_poc_block(&self, base: PhysAddr) {
        self.note("clean_inval_poc_block");
        self.blocks_cleaned.borrow_mut().push(base.0);
    }
    fn clear_tags(&self, pa: PhysAddr) -> bool {
        self.note("clear_tags");
        self.tags_cleared.borrow_mut().push(pa.0);
        !self.tags_fail.get()
    }
    fn clear_tags_block(&self, base: PhysAddr) -> bool {
        self.note("clear_tags_block");
        self.tags_cleared.borrow_mut().push(base.0);
        !self.tags_fail.get()
    }
    fn scrub_page(&self, pa: PhysAddr, tagged: bool) {
        if !tagged {
            self.note("scrub_page_untagged");
        }
        // SAFETY: tests only give the VM pages of the fixture's RAM buffer.
        unsafe { core::ptr::write_bytes(pa.0 as *mut u8, 0, PAGE_SIZE as usize) };
        self.note("scrub_page");
    }
}

impl crate::hw::PageIo for Recorder {
    fn read_page(&self, pa: PhysAddr, out: &mut [u8; 4096]) {
        // SAFETY: tests only give the VM pages of the fixture's RAM buffer.
        unsafe { core::ptr::copy_nonoverlapping(pa.0 as *const u8, out.as_mut_ptr(), 4096) };
        self.note("read_page");
    }
    fn write_page(&self, pa: PhysAddr, bytes: &[u8; 4096]) {
        // SAFETY: as above.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa.0 as *mut u8, 4096) };
        self.note("write_page");
    }
}

impl Firmware for Recorder {
    fn cpu_on(&self, mpidr: u64, cpu: usize) -> u64 {
        self.cpu_ons.borrow_mut().push((mpidr, cpu));
        0
    }
    fn forward(&self, _: &mut [u64; 31]) {
        self.note("forward");
    }
    fn mem_protect(&self, enable: u32) -> i64 {
        self.note(if enable == 1 { "mem_protect_on" } else { "mem_protect_other" });
        -1 // like QEMU's PSCI: NOT_SUPPORTED
    }
}

impl HostCpu for Recorder {
    fn fault_addresses(&self) -> (u64, u64) {
        *self.fault.borrow()
    }
    fn vbar_el1(&self) -> u64 {
        self.vbar
    }
    fn write_el1_exception(&self, esr: u64, far: u64, elr: u64, spsr: u64) {
        *self.el1_exceptions.borrow_mut() = vec![esr, far, elr, spsr];
    }
}

impl Clock for Recorder {
    fn counter(&self) -> u64 {
        self.counter.get()
    }
}

/// Test RAM: a real buffer, so message pages can be read and written; 2 MiB aligned, so
/// its first 2 MiB are one host stage-2 block.
#[repr(C, align(0x200000))]
pub(crate) struct Ram(pub [u8; RAM_PAGES * 4096]);
pub(crate) const RAM_PAGES: usize = 1536; // 6 MiB: three 2 MiB blocks, the middle one free for guest blocks
pub(crate) const HYP_PAGES: u64 = 16;
/// `ICH_VTR_EL2` of QEMU 7.2's `max` CPU: ListRegs 3, PREbits 4, PRIbits 4.
pub(crate) const QEMU_ICH_VTR: u64 = 3 | 4 << 26 | 4 << 29;
/// The SVE vector lengths of the fixture's CPU: 128, 256 and 512 bits.
pub(crate) const FIXTURE_SVE: crate::cpu::sve::VqSet = crate::cpu::sve::VqSet(0b1011);
/// `CTR_EL0` of the fixture's CPU: IDC and DIC, 64-byte lines, PIPT.
pub(crate) const FIXTURE_CTR: u64 = 0xB444_C004;
/// QEMU `virt`'s device tree (2 CPUs, 1 GiB, GICv3 with an ITS, PCI).
pub(crate) const QEMU_VIRT_DTB: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-2cpu.dtb");
/// Its redistributor region (room for 123; the fixture has 2 CPUs).
pub(crate) const GICR: PhysRange = PhysRange { start: PhysAddr(0x080A_0000), end: PhysAddr(0x0900_0000) };

pub(crate) struct Fixture {
    pub ram: Box<Ram>,
    _entries: Box<[PageEntry]>,
    pub hyp: Hyp<'static, FakeMemory>,
}

pub(crate) fn fixture() -> Fixture {
    let ram = Box::new(Ram([0; RAM_PAGES * 4096]));
    let base = PhysAddr(ram.0.as_ptr() as u64);
    let ram_range = PhysRange::from_size(base, (RAM_PAGES * 4096) as u64).unwrap();
    let mut entries: Box<[PageEntry]> = vec![PageEntry::default(); RAM_PAGES].into_boxed_slice();
    // SAFETY: the fixture keeps `entries` alive and unmoved (boxed) as long as `hyp`.
    let slice: &'static mut [PageEntry] = unsafe { &mut *(entries.as_mut() as *mut [PageEntry]) };
    let own = Ownership::new(ram_range, slice).unwrap();
    let mut tables = FakeMemory::new(64);
    let host_s2 = PageTable::new(&mut tables, Format::Stage2, 48).unwrap();
    let hyp_s1 = PageTable::new(&mut tables, Format::El2Stage1, 48).unwrap();
    let platform = Platform { ram: ram_range, uart: PhysAddr(0x900_0000), cpus: ArrayVec::from_iter([0, 1]), untagged: None, pci: None, devices: crate::platform::parse(QEMU_VIRT_DTB).unwrap().devices };
    // EL2 takes the last HYP_PAGES pages.
    let hyp_region = PhysRange::from_size(PhysAddr(ram_range.end.0 - HYP_PAGES * PAGE_SIZE), HYP_PAGES * PAGE_SIZE).unwrap();
    // Built on the heap one VM's row at a time: the whole table (about 1.4 MiB, with room for
    // every vCPU's SVE registers) would not fit a test thread's stack.
    let rows: Box<[[crate::guest::vcpu::VcpuSlot; crate::guest::MAX_VCPUS]]> = (0..crate::guest::MAX_VMS).map(|_| core::array::from_fn(|_| crate::guest::vcpu::VcpuSlot::new())).collect();
    let vcpus: &'static crate::guest::vcpu::VcpuTable = Box::leak(rows.try_into().unwrap_or_else(|_| unreachable!("MAX_VMS rows")));
    let idregs: &'static crate::guest::vm::IdRegTable = Box::leak(Box::new(core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0)))));
    // A CPU with FP, AdvSIMD, AArch64-only EL0/EL1, CSV2 1, AES 2, a 48-bit PA and SVE2 with
    // vector lengths of 128, 256 and 512 bits (FIXTURE_SVE).
    let mut boot_cpu_idregs = [0u64; crate::cpu::idreg::NR_IDREGS];
    boot_cpu_idregs[crate::cpu::idreg::idx(4, 0)] = 0x11 | 1 << 32 | 1 << 56;
    boot_cpu_idregs[crate::cpu::idreg::idx(4, 4)] = 1 | 2 << 4; // ID_AA64ZFR0_EL1: SVE2, SVE AES 2
    boot_cpu_idregs[crate::cpu::idreg::idx(6, 0)] = 2 << 4;
    boot_cpu_idregs[crate::cpu::idreg::idx(7, 0)] = 5;
    boot_cpu_idregs[crate::cpu::idreg::idx(6, 1)] = 1 << 8 | 1 << 28; // IMPDEF PAuth, address + generic
    boot_cpu_idregs[crate::cpu::idreg::idx(4, 1)] = 2 << 8; // FEAT_MTE2
    // QEMU 7.2's virtual CPU interface: 4 list registers, 5 priority and preemption bits.
    let boot_cpu = CpuId { midr: 0x410F_D0C0, regs: boot_cpu_idregs, ctr: FIXTURE_CTR, ich_vtr: Some(QEMU_ICH_VTR), sve: FIXTURE_SVE };
    let gicr = Some(crate::host::gicr::Redistributors { region: GICR, present: 2 });
    let hyp = Hyp::new(HypParts { platform, hyp_region, own, host_s2, hyp_s1, tables, vcpus, idregs, boot_cpu, gicr, boot_secret: [0x5E; 32] }).unwrap();
    Fixture { ram, _entries: entries, hyp }
}

impl Fixture {
    pub fn page(&self, n: usize) -> u64 {
        self.ram.0.as_ptr() as u64 + (n * 4096) as u64
    }
    pub fn call(&self, cpu: usize, id: HypercallId, args: &[u64]) -> HypResult {
        self.call_with(&Recorder::default(), cpu, id, args)
    }
    pub fn call_with(&self, rec: &Recorder, cpu: usize, id: HypercallId, args: &[u64]) -> HypResult {
        let mut x = [0u64; 8];
        x[0] = id as u64;
        x[1..1 + args.len()].copy_from_slice(args);
        crate::hypercall::handle(&self.hyp, cpu, &x, rec)
    }
}

// Helpers the tests of the VM and vCPU calls share, and what they all use.

pub(crate) use crate::cpu::idreg;
pub(crate) use crate::guest::vcpu::SysReg;
pub(crate) use crate::hw::TrapKind;
pub(crate) use crate::mem::owner::PageState;
pub(crate) use shared_abi::msg::{exit, kill, vm_flags, VcpuExit, VmCreate};
pub(crate) use shared_abi::reg;
pub(crate) use shared_abi::HypError;
pub(crate) use shared_abi::HypercallId as H;
pub(crate) use zerocopy::{FromBytes, IntoBytes};
use crate::exception::syndrome::hpfar_of;

/// Message page: RAM page 0.
pub(crate) const MSG: usize = 0;
/// Guest memory: RAM pages 8..12.
pub(crate) const GUEST: usize = 8;
/// Stage-2 table pages [`create`] gives each VM: [`TABLE_PAGES`] from RAM page `TABLES + i *
/// TABLE_PAGES` for the first slot `i` (one per VM slot) the host owns.
pub(crate) const TABLES: usize = RAM_PAGES - HYP_PAGES as usize - crate::guest::MAX_VMS * TABLE_PAGES;
pub(crate) const TABLE_PAGES: usize = 8;

/// What `VM_DESTROY` of a VM [`create`] made does last: its table pages zeroed (never
/// tagged), and taken out of EL2's stage 1.
pub(crate) fn table_pages_returned() -> Vec<&'static str> {
    let mut log: Vec<_> = (0..TABLE_PAGES).flat_map(|_| ["scrub_page_untagged", "scrub_page"]).collect();
    log.push("hyp_s1_unmapped");
    log
}

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
    create_sve(f, vcpus, flags, 0)
}

/// [`create`] with SVE of `sve_vl` bytes ([`vm_flags::SVE`] added unless 0).
pub(crate) fn create_sve(f: &mut Fixture, vcpus: u32, flags: u64, sve_vl: u64) -> u64 {
    let h = create_without_tables(f, vcpus, flags, sve_vl);
    give_tables(f, h);
    h
}

/// [`create_sve`] without table pages: the VM's first guest mapping needs some.
pub(crate) fn create_without_tables(f: &mut Fixture, vcpus: u32, flags: u64, sve_vl: u64) -> u64 {
    f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).ok();
    let flags = if sve_vl != 0 { flags | vm_flags::SVE } else { flags };
    let req = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, sve_vl, reserved: 0 };
    f.ram.0[MSG * 4096..MSG * 4096 + 32].copy_from_slice(req.as_bytes());
    let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
    // [`hvc`] with a fresh vCPU's `x0` (0, no function EL2 serves) is the tests' plain exit
    // to the host: forwarded, as a VMM would forward its own calls.
    f.call(0, H::VmSmcccForward, &[h, 0, 1]).unwrap();
    h
}

/// Gives VM `h` stage-2 table pages, as the host's VMM does: [`TABLE_PAGES`] pages from the
/// first of the fixture's slots for them that the host still owns.
pub(crate) fn give_tables(f: &Fixture, h: u64) {
    let topped = (0..crate::guest::MAX_VMS).any(|i| f.call(0, H::VmTopupTables, &[h, f.page(TABLES + i * TABLE_PAGES), TABLE_PAGES as u64]).is_ok());
    assert!(topped, "no free slot of table pages");
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
