//! The host's synchronous exceptions to EL2, decided.
//!
//! Place in the flow: right after the vectors (the arch shim `crate::arch::trap` reads `ESR_EL2`
//! and hands the host's saved registers here). Dispatches on `ESR_EL2.EC`:
//!
//! | EC | from the host | action |
//! |---|---|---|
//! | `HVC64` | a hypercall | [`crate::hypercall::handle`] (`HVC #0` only), result in `x0..=x3` |
//! | `SMC64` | `HCR_EL2.TSC` trap | the allow-list of [`crate::host::psci`]: intercept, forward to firmware, or refuse |
//! | `DABT_LOW` / `IABT_LOW` | stage-2 fault | map lazily where the host may access ([`crate::mem::protect`], [`crate::host::devices`]); a valid load or store to a guarded page: performed by EL2 ([`crate::host::gicr`], [`crate::host::pciconfig`]); else inject an abort |
//! | anything else | | inject UNDEF |
//!
//! Nothing the host does here is an EL2 error: host-caused events are logged at `debug!` at
//! most. Everything here is plain Rust over the hardware seam, tested on the host.

use crate::exception::inject::{inject_sync, Injection, TrapState};
use crate::exception::syndrome::{ec, fault_ipa, Esr, FaultKind};
use crate::host::devices::Guard;
use crate::host::guarded::GuardedIo;
use crate::host::{gicr, pciconfig};
use crate::host::psci::{classify, cpu_on_target, host_mem_protect, HostSmc};
use crate::hw::{Firmware, HostCpu, Hw};
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use crate::mem::protect::HostFault;
use core::sync::atomic::Ordering;
use shared_abi::{encode_result, HypError};

/// The host's general-purpose registers and return state, as the vectors saved them; EL2
/// changes them to give the host its result, step over an instruction, or inject.
pub struct HostRegs<'f> {
    /// `x0..=x30`.
    pub x: &'f mut [u64; 31],
    /// `ELR_EL2`: where the host resumes.
    pub elr: &'f mut u64,
    /// `SPSR_EL2`: the host's PSTATE.
    pub spsr: &'f mut u64,
}

/// A trap EL2 cannot complete: the host was interrupted in a state EL2 never creates (AArch32,
/// or EL2 itself), so there is no EL1 to inject into. An EL2 bug; the shim stops the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CannotInject;

/// Handles a synchronous exception from the host on CPU `cpu` with syndrome `esr`.
///
/// # Errors
/// [`CannotInject`] (see there).
pub fn handle_sync<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, esr: Esr, regs: &mut HostRegs<'_>, hw: &(impl Hw + HostCpu), io: &impl GuardedIo) -> Result<(), CannotInject> {
    match esr.ec() {
        ec::HVC64 => {
            match regs.x.first_chunk_mut::<8>() {
                Some(x) => handle_hvc(hyp, cpu, esr, x, hw),
                // Never: the frame holds 31 registers.
                None => regs.x[..4].copy_from_slice(&encode_result(Err(HypError::InvalidArgument))),
            }
            Ok(())
        }
        _ => not_a_hypercall(hyp, esr, regs, hw, io),
    }
}

/// A host hypercall (`ESR_EL2.EC` is `HVC64`) on CPU `cpu`: the call in `x0..=x7`, its result
/// written to `x0..=x3`. A hypercall reads and writes no other host state, so the vectors take
/// it on a path of its own that saves only the registers a call may change (the arch shim,
/// `crate::arch::trap::el2_host_hvc`).
#[inline(always)]
pub fn handle_hvc<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, esr: Esr, x: &mut [u64; 8], hw: &impl Hw) {
    // By reference: a copy is a call to the generic `memcpy` (about 55 instructions on every
    // hypercall).
    let result = if esr.imm16() != 0 { Err(HypError::NotSupported) } else { crate::hypercall::handle(hyp, cpu, x, hw) };
    x[..4].copy_from_slice(&encode_result(result));
}

/// [`handle_sync`] for everything but a hypercall, out of line: inlined, its registers made
/// every hypercall save and restore ten more.
#[inline(never)]
fn not_a_hypercall<T: TableMemory>(hyp: &Hyp<'_, T>, esr: Esr, regs: &mut HostRegs<'_>, hw: &(impl Hw + HostCpu), io: &impl GuardedIo) -> Result<(), CannotInject> {
    match esr.ec() {
        ec::SMC64 => {
            // A trapped SMC's preferred return address is the SMC itself: step over it.
            *regs.elr += 4;
            host_smc(hyp, regs.x, hw);
            Ok(())
        }
        ec::DABT_LOW | ec::IABT_LOW => {
            let (far, hpfar) = hw.fault_addresses();
            if matches!(esr.fault(), FaultKind::Translation(_)) {
                let ipa = fault_ipa(hpfar, far);
                match host_s2_fault(hyp, ipa, hw) {
                    HostFault::Retry => return Ok(()),
                    HostFault::Emulate(guard) if esr.ec() == ec::DABT_LOW => {
                        // A guarded page: EL2 performs a valid access itself (with
                        // GICR_CTLR.EnableLPIs or Command.BusMasterEnable forced to 0) and
                        // steps over the instruction.
                        let done = match (guard, &hyp.gicr, &hyp.platform.devices.ecam) {
                            (Guard::Redistributor, Some(rd), _) => gicr::emulate(rd, esr.0, ipa, regs.x, io),
                            (Guard::PciConfig, _, Some(ecam)) => pciconfig::emulate(ecam, esr.0, ipa, regs.x, io),
                            _ => false,
                        };
                        if done {
                            *regs.elr += 4;
                            return Ok(());
                        }
                    }
                    HostFault::Emulate(_) | HostFault::Inject => {}
                }
            }
            log::debug!("host abort at {far:#x} (ESR {:#x}): injecting", esr.0);
            let what = if esr.ec() == ec::DABT_LOW { Injection::DataAbort { write: esr.is_write() } } else { Injection::InstructionAbort };
            inject(regs, what, esr, far, hw)
        }
        _ => {
            log::debug!("host trap ESR {:#x} at {:#x}: injecting UNDEF", esr.0, *regs.elr);
            inject(regs, Injection::Undef, esr, 0, hw)
        }
    }
}

/// A host stage-2 *translation* fault on `ipa`: emulate a guarded device page, else map on
/// fault ([`crate::mem::MemState::host_map_on_fault`]).
pub fn host_s2_fault<T: TableMemory>(hyp: &Hyp<'_, T>, ipa: u64, hw: &impl Hw) -> HostFault {
    if let Some(guard) = hyp.platform.devices.guard(ipa) {
        return HostFault::Emulate(guard);
    }
    hyp.mem.lock().host_map_on_fault(ipa, &hyp.platform.devices, hw)
}

fn inject(regs: &mut HostRegs<'_>, what: Injection, esr: Esr, far: u64, hw: &impl HostCpu) -> Result<(), CannotInject> {
    let t = TrapState { elr: *regs.elr, spsr: *regs.spsr, il: esr.il(), vbar_el1: hw.vbar_el1() };
    let i = inject_sync(what, t).ok_or(CannotInject)?;
    hw.write_el1_exception(i.esr_el1, far, i.elr_el1, i.spsr_el1);
    *regs.elr = i.elr_el2;
    *regs.spsr = i.spsr_el2;
    Ok(())
}

/// A host SMC, decided by the allow-list ([`classify`]).
fn host_smc<T: TableMemory>(hyp: &Hyp<'_, T>, x: &mut [u64; 31], fw: &impl Firmware) {
    match classify([x[0], x[1], x[2], x[3]]) {
        HostSmc::CpuOn { target, entry, context } => {
            x[0] = match cpu_on_target(&hyp.platform, &hyp.cpus, target) {
                Err(e) => i64::from(e) as u64,
                Ok((idx, mpidr)) => {
                    // The target CPU reads these after it has turned its MMU on, so ordinary
                    // coherent stores suffice; the firmware call orders them before it starts.
                    hyp.cpu_boot[idx].entry.store(entry, Ordering::Release);
                    hyp.cpu_boot[idx].context.store(context, Ordering::Release);
                    // The platform's MPIDR for the CPU, not the host's raw value.
                    fw.cpu_on(mpidr, idx)
                }
            };
            x[1..4].fill(0);
        }
        HostSmc::MemProtect { enable } => {
            x[0] = host_mem_protect(&hyp.mem, enable, fw) as u64;
            x[1..4].fill(0);
        }
        HostSmc::Answer(v) => {
            x[0] = i64::from(v) as u64;
            x[1..4].fill(0);
        }
        HostSmc::Forward => fw.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exception::inject::mode;
    use crate::mem::addr::{PhysAddr, PAGE_SIZE};
    use crate::testing::*;
    use shared_abi::HypercallId;
    use std::cell::RefCell;
    use std::vec::Vec;

    /// A host at EL1h, `VBAR_EL1` = [`VBAR`].
    const VBAR: u64 = 0x4000_8000;
    const ELR: u64 = 0x4000_1000;

    struct Host {
        x: [u64; 31],
        elr: u64,
        spsr: u64,
    }

    impl Host {
        fn new(x: &[u64]) -> Self {
            let mut h = Host { x: [0; 31], elr: ELR, spsr: mode::EL1H };
            h.x[..x.len()].copy_from_slice(x);
            h
        }
        fn trap(&mut self, f: &Fixture, esr: u64, rec: &Recorder) -> Result<(), CannotInject> {
            let mut regs = HostRegs { x: &mut self.x, elr: &mut self.elr, spsr: &mut self.spsr };
            handle_sync(&f.hyp, 0, Esr(esr), &mut regs, rec, &Registers)
        }
    }

    /// Guarded device registers that read 0x5A and ignore writes.
    struct Registers;
    impl GuardedIo for Registers {
        unsafe fn read(&self, _: PhysAddr, _: u8) -> u64 {
            0x5A
        }
        unsafe fn write(&self, _: PhysAddr, _: u8, _: u64) {}
    }

    fn hvc(imm: u64) -> u64 {
        (ec::HVC64 as u64) << 26 | 1 << 25 | imm
    }
    fn smc() -> u64 {
        (ec::SMC64 as u64) << 26 | 1 << 25
    }
    fn dabt_translation(write: bool) -> u64 {
        (ec::DABT_LOW as u64) << 26 | 1 << 25 | (write as u64) << 6 | 0b000111
    }

    #[test]
    fn hypercalls_answer_in_x0_to_x3_and_only_hvc_0_is_one() {
        let f = fixture();
        let rec = Recorder::default();
        let mut h = Host::new(&[HypercallId::Ping as u64, 0xBEEF, 0, 0, 0, 0, 0, 0, 0x99]);
        h.trap(&f, hvc(0), &rec).unwrap();
        assert_eq!((&h.x[..4], h.x[8], h.elr), (&[0, 0xBEEF, 0, 0][..], 0x99, ELR), "HVC's ELR is already past it");
        let mut h = Host::new(&[HypercallId::Ping as u64, 0xBEEF]);
        h.trap(&f, hvc(1), &rec).unwrap();
        assert_eq!(h.x[0], HypError::NotSupported as i64 as u64, "HVC #1");
    }

    #[test]
    fn cpu_on_starts_the_platform_cpu_through_el2_and_records_the_hosts_entry() {
        let f = fixture();
        let rec = Recorder::default();
        let mut h = Host::new(&[smccc::psci::PSCI_CPU_ON_64 as u64, 0xFF00_0001, 0x4008_0000, 0x77]);
        h.trap(&f, smc(), &rec).unwrap();
        assert_eq!(h.elr, ELR + 4, "stepped over the SMC");
        assert_eq!(&h.x[..4], &[0, 0, 0, 0]);
        assert_eq!(rec.cpu_ons.borrow().as_slice(), &[(1, 1)], "MPIDR 1 (not the host's 0xFF00_0001), cpu 1");
        assert_eq!(f.hyp.cpu_boot[1].entry.load(Ordering::Relaxed), 0x4008_0000);
        assert_eq!(f.hyp.cpu_boot[1].context.load(Ordering::Relaxed), 0x77);
        let mut h = Host::new(&[smccc::psci::PSCI_CPU_ON_64 as u64, 5, 0x4008_0000, 0x77]);
        h.trap(&f, smc(), &rec).unwrap();
        assert_eq!(h.x[0], smccc::psci::error::INVALID_PARAMETERS as i64 as u64, "no CPU 5");
    }

    #[test]
    fn smcs_are_forwarded_answered_or_refused_by_the_allow_list() {
        let f = fixture();
        let rec = Recorder::default();
        let mut h = Host::new(&[smccc::psci::PSCI_VERSION as u64]);
        h.trap(&f, smc(), &rec).unwrap();
        assert_eq!(rec.log.borrow().as_slice(), &["forward"]);
        let mut h = Host::new(&[smccc::psci::PSCI_CPU_SUSPEND_64 as u64, 0, 0x4000_0000, 0]);
        h.trap(&f, smc(), &rec).unwrap();
        assert_eq!(h.x[0], u64::MAX, "NOT_SUPPORTED, firmware never asked");
        assert_eq!(rec.log.borrow().len(), 1);
    }

    #[test]
    fn a_host_fault_on_its_own_memory_maps_it_and_retries() {
        let f = fixture();
        let rec = Recorder { fault: RefCell::new((f.page(3) + 0x10, f.page(3) >> 8)), ..Recorder::default() };
        let mut h = Host::new(&[]);
        h.trap(&f, dabt_translation(false), &rec).unwrap();
        assert_eq!((h.elr, h.spsr), (ELR, mode::EL1H), "retried, nothing injected");
        assert_eq!(rec.log.borrow().as_slice(), &["host_s2_mapped"]);
    }

    #[test]
    fn a_host_fault_on_el2_memory_injects_an_abort_at_the_hosts_vector() {
        let f = fixture();
        let el2 = f.hyp.hyp_region.start.0 + PAGE_SIZE;
        let rec = Recorder { fault: RefCell::new((el2 + 8, el2 >> 8)), vbar: VBAR, ..Recorder::default() };
        let mut h = Host::new(&[]);
        h.trap(&f, dabt_translation(true), &rec).unwrap();
        assert_eq!(h.elr, VBAR + 0x200, "current EL with SP_ELx, synchronous");
        assert_eq!(h.spsr & 0xF, mode::EL1H);
        let el1: Vec<u64> = rec.el1_exceptions.borrow().clone();
        assert_eq!(el1[1..], [el2 + 8, ELR, mode::EL1H], "FAR_EL1, ELR_EL1, SPSR_EL1");
        assert_eq!(Esr(el1[0]).ec(), ec::DABT_CUR);
        assert!(Esr(el1[0]).is_write());
    }

    #[test]
    fn a_guarded_redistributor_page_is_emulated_and_stepped_over() {
        let f = fixture();
        // LDR w1, [GICR_CTLR of redistributor 0]: ISV, SAS 2, SRT 1.
        let esr = dabt_translation(false) | 1 << 24 | 2 << 22 | 1 << 16;
        let rec = Recorder { fault: RefCell::new((GICR.start.0, GICR.start.0 >> 8)), ..Recorder::default() };
        let mut h = Host::new(&[]);
        h.trap(&f, esr, &rec).unwrap();
        assert_eq!((h.x[1], h.elr), (0x5A, ELR + 4));
        // The same page without a valid syndrome: an abort, never a mapping.
        let mut h = Host::new(&[]);
        h.trap(&f, dabt_translation(false), &rec).unwrap();
        assert_eq!(Esr(rec.el1_exceptions.borrow()[0]).ec(), ec::DABT_CUR);
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), GICR.start.0).is_none());
    }

    #[test]
    fn anything_else_is_an_undef_and_an_impossible_state_is_refused() {
        let f = fixture();
        let rec = Recorder { vbar: VBAR, ..Recorder::default() };
        let mut h = Host::new(&[]);
        h.trap(&f, 0x3C << 26 | 1 << 25, &rec).unwrap(); // BRK
        assert_eq!((h.elr, rec.el1_exceptions.borrow()[0]), (VBAR + 0x200, 1 << 25), "EC 0, IL");
        let mut h = Host { spsr: 0b1001, ..Host::new(&[]) }; // EL2h
        assert_eq!(h.trap(&f, 0x3C << 26, &rec), Err(CannotInject));
    }

    #[test]
    fn host_faults_map_largest_allowed_block() {
        let f = fixture();
        let rec = Recorder::default();
        // First 2 MiB of test RAM is all host-owned: mapped as a block, the access retried.
        assert_eq!(host_s2_fault(&f.hyp, f.page(0), &rec), HostFault::Retry);
        assert_eq!(host_s2_fault(&f.hyp, f.page(0), &rec), HostFault::Retry, "second time: already mapped");
        assert_eq!(rec.log.borrow().as_slice(), &["host_s2_mapped"]);
        // EL2's pages are never mapped for the host.
        let el2 = f.hyp.hyp_region.start.0;
        assert_eq!(host_s2_fault(&f.hyp, el2, &rec), HostFault::Inject);
        assert_eq!(host_s2_fault(&f.hyp, el2 + 5 * PAGE_SIZE + 8, &rec), HostFault::Inject);
        // Outside the IPA space.
        assert_eq!(host_s2_fault(&f.hyp, 1 << 48, &rec), HostFault::Inject);
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), el2).is_none());
    }

    #[test]
    fn host_faults_on_guarded_pages_are_emulated_never_mapped() {
        let f = fixture();
        let rec = Recorder::default();
        assert_eq!(host_s2_fault(&f.hyp, 0x080A_0000, &rec), HostFault::Emulate(Guard::Redistributor));
        assert_eq!(host_s2_fault(&f.hyp, 0x08FE_0014, &rec), HostFault::Emulate(Guard::Redistributor), "past the present ones: refused by decode");
        assert_eq!(host_s2_fault(&f.hyp, 0x40_1000_8004, &rec), HostFault::Emulate(Guard::PciConfig));
        assert_eq!(host_s2_fault(&f.hyp, 0x080A_1000, &rec), HostFault::Retry);
        assert_eq!(host_s2_fault(&f.hyp, 0x0800_0000, &rec), HostFault::Retry);
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), 0x080A_0000).is_none());
        assert!(mem.host_s2().lookup(mem.tables(), 0x080A_1000).is_some());
        assert!(mem.host_s2().lookup(mem.tables(), 0x40_1000_8004).is_none());
    }

    #[test]
    fn fw_cfg_dma_is_an_abort_for_the_host() {
        // The review's attack: a store of a DMA descriptor address to fw_cfg's DMA register.
        let f = fixture();
        let rec = Recorder { fault: RefCell::new((0x0902_0010, 0x0902_0010 >> 8)), vbar: VBAR, ..Recorder::default() };
        let mut h = Host::new(&[]);
        h.trap(&f, dabt_translation(true) | 1 << 24 | 3 << 22, &rec).unwrap();
        assert_eq!(h.elr, VBAR + 0x200, "an abort at the host's vector");
        assert_eq!(rec.log.borrow().len(), 0, "nothing mapped");
        let mem = f.hyp.mem.lock();
        assert!(mem.host_s2().lookup(mem.tables(), 0x0902_0010).is_none());
    }

    #[test]
    fn pci_configuration_writes_are_performed_without_bus_mastering() {
        struct Log(RefCell<Vec<(u64, u8, u64)>>);
        impl GuardedIo for Log {
            unsafe fn read(&self, _: PhysAddr, _: u8) -> u64 {
                0
            }
            unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64) {
                self.0.borrow_mut().push((pa.0, size, value));
            }
        }
        let f = fixture();
        let cmd = 0x40_1000_8004;
        // STRH w2, [Command]: ISV, SAS 1, SRT 2, WnR.
        let esr = dabt_translation(true) | 1 << 24 | 1 << 22 | 2 << 16;
        let rec = Recorder { fault: RefCell::new((cmd, cmd >> 8)), ..Recorder::default() };
        let mut h = Host::new(&[0, 0, 0x0006]);
        let io = Log(RefCell::new(Vec::new()));
        let mut regs = HostRegs { x: &mut h.x, elr: &mut h.elr, spsr: &mut h.spsr };
        handle_sync(&f.hyp, 0, Esr(esr), &mut regs, &rec, &io).unwrap();
        assert_eq!((h.elr, io.0.borrow().as_slice()), (ELR + 4, &[(cmd, 2, 0x0002)][..]), "memory decoding on, bus mastering off");
    }

    #[test]
    fn mapping_all_allowed_device_space_fits_in_the_reserve() {
        let f = fixture();
        let rec = Recorder::default();
        let devices = f.hyp.platform.devices.clone();
        let before = f.hyp.mem.lock().tables().free_pages();
        for r in &devices.mmio {
            let step = if r.size() <= 64 << 20 { PAGE_SIZE } else { 2 << 20 };
            for ipa in (r.start.0..r.end.0).step_by(step as usize).chain([r.end.0 - 1]) {
                let want = if devices.guard(ipa).is_some() { HostFault::Emulate(Guard::Redistributor) } else { HostFault::Retry };
                assert_eq!(host_s2_fault(&f.hyp, ipa, &rec), want, "{ipa:#x}");
            }
        }
        let used = before - f.hyp.mem.lock().tables().free_pages();
        assert!(used <= devices.table_reserve(), "{used} table pages used, {} reserved", devices.table_reserve());
        assert_eq!((used, devices.table_reserve()), (13, 18), "QEMU virt: tables used and reserved");
    }
}
