//! The pKVM guest services: SMCCC vendor-hypervisor calls a guest makes to EL2 (discovery,
//! `HYP_MEMINFO`, `MEM_SHARE`, `MEM_UNSHARE`, `MMIO_GUARD`), as Linux's `pkvm-guest` driver
//! uses them. The IDs, UID and answers are [`shared_abi::guest`]'s.
//!
//! Place in the flow: [`crate::guest::psci::classify_guest_call`] hands owner-6 calls to
//! [`classify`]; the run loop ([`crate::guest::exit`]) passes a memory call to [`serve`], which
//! changes ownership only through [`crate::mem::protect`]'s transitions, under the memory lock.
//!
//! Only protected VMs get the memory services: another VM's memory is the host's already, and
//! KVM offers them to pKVM's protected VMs alone. Any other VM finds the KVM UID and an empty
//! service bitmap.

use crate::hw::Tlb;
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use crate::mem::protect::Refused;
use shared_abi::guest::{self as abi, features};
use shared_abi::msg::Exit;

/// What a vendor-hypervisor call leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Answer in EL2: `x0..=x3`.
    Answer([u64; 4]),
    /// A memory call, served under the memory lock ([`serve`]).
    Memory(MemCall),
}

/// A memory service call of a protected VM, on the granule at an IPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemCall {
    /// `MEM_SHARE`.
    Share(u64),
    /// `MEM_UNSHARE`.
    Unshare(u64),
    /// `MMIO_GUARD`.
    Guard(u64),
}

/// Decodes a vendor-hypervisor call (`x0` owner 6) from a VM that is `protected` or not.
pub fn classify(x: [u64; 4], protected: bool) -> Service {
    let one = |v: u64| Service::Answer([v, 0, 0, 0]);
    let memory = |call: fn(u64) -> MemCall| match (protected, x[2] | x[3]) {
        (false, _) => one(abi::NOT_SUPPORTED),
        (true, 0) => Service::Memory(call(x[1])),
        (true, _) => one(abi::INVALID_PARAMETER),
    };
    match x[0] as u32 {
        abi::VENDOR_HYP_CALL_UID => Service::Answer(abi::KVM_UID.map(u64::from)),
        abi::VENDOR_HYP_KVM_FEATURES => one(if protected { features::PROTECTED } else { features::OTHER }),
        abi::HYP_MEMINFO if !protected => one(abi::NOT_SUPPORTED),
        abi::HYP_MEMINFO if x[1] | x[2] | x[3] != 0 => one(abi::INVALID_PARAMETER),
        abi::HYP_MEMINFO => one(abi::GRANULE),
        abi::MEM_SHARE => memory(MemCall::Share),
        abi::MEM_UNSHARE => memory(MemCall::Unshare),
        abi::MMIO_GUARD => memory(MemCall::Guard),
        _ => one(abi::NOT_SUPPORTED),
    }
}

/// Serves memory call `call` of protected VM `handle`: the guest's answer (`x0`), and the exit
/// that tells the host of a share or an unshare done.
pub fn serve<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, call: MemCall, tlb: &impl Tlb) -> (u64, Option<Exit>) {
    let mut mem = hyp.mem.lock();
    let (result, exit) = match call {
        MemCall::Share(ipa) => (mem.guest_share_host(handle, ipa), Exit::MemShare { ipa }),
        MemCall::Unshare(ipa) => (mem.guest_unshare_host(handle, ipa, tlb), Exit::MemUnshare { ipa }),
        MemCall::Guard(ipa) => {
            let r = mem.guest_mmio_guard(handle, ipa);
            crate::guest::memory::publish_layout(hyp, &mem, handle);
            return (answer(r), None);
        }
    };
    drop(mem);
    (answer(result), result.is_ok().then_some(exit))
}

fn answer(r: Result<(), Refused>) -> u64 {
    match r {
        Ok(()) => abi::SUCCESS,
        Err(e) => {
            log::debug!("guest memory call refused: {e:?}");
            abi::INVALID_PARAMETER
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: u64 = abi::VENDOR_HYP_CALL_UID as u64;
    const FEATURES: u64 = abi::VENDOR_HYP_KVM_FEATURES as u64;

    #[test]
    fn discovery_finds_kvm_and_the_services_a_protected_vm_has() {
        let uid = Service::Answer([0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D]);
        assert_eq!(classify([UID, 0, 0, 0], true), uid);
        assert_eq!(classify([UID, 0, 0, 0], false), uid);
        assert_eq!(classify([FEATURES, 0, 0, 0], true), Service::Answer([0b1001_1101, 0, 0, 0]));
        assert_eq!(classify([FEATURES, 0, 0, 0], false), Service::Answer([1, 0, 0, 0]));
        assert_eq!(classify([abi::HYP_MEMINFO as u64, 0, 0, 0], true), Service::Answer([4096, 0, 0, 0]));
        assert_eq!(classify([0x8600_0001, 0, 0, 0], true), Service::Answer([abi::NOT_SUPPORTED, 0, 0, 0]), "PTP: not offered");
        assert_eq!(classify([0xC600_0005, 0, 0, 0], true), Service::Answer([abi::NOT_SUPPORTED, 0, 0, 0]));
    }

    #[test]
    fn memory_calls_take_one_address_and_only_from_protected_vms() {
        let share = abi::MEM_SHARE as u64;
        assert_eq!(classify([share, 0x4010_0000, 0, 0], true), Service::Memory(MemCall::Share(0x4010_0000)));
        assert_eq!(classify([abi::MEM_UNSHARE as u64, 7, 0, 0], true), Service::Memory(MemCall::Unshare(7)));
        assert_eq!(classify([abi::MMIO_GUARD as u64, 0x0900_0000, 0, 0], true), Service::Memory(MemCall::Guard(0x0900_0000)));
        assert_eq!(classify([share, 0x4010_0000, 1, 0], true), Service::Answer([abi::INVALID_PARAMETER, 0, 0, 0]), "x2 must be 0");
        assert_eq!(classify([share, 0x4010_0000, 0, 1], true), Service::Answer([abi::INVALID_PARAMETER, 0, 0, 0]), "x3 must be 0");
        assert_eq!(classify([abi::HYP_MEMINFO as u64, 1, 0, 0], true), Service::Answer([abi::INVALID_PARAMETER, 0, 0, 0]));
        for id in [abi::HYP_MEMINFO, abi::MEM_SHARE, abi::MEM_UNSHARE, abi::MMIO_GUARD] {
            assert_eq!(classify([id as u64, 0x4010_0000, 0, 0], false), Service::Answer([abi::NOT_SUPPORTED, 0, 0, 0]), "{id:#x}");
        }
    }

    /// Through the run loop: a protected VM with 4 pages at IPA [`IPA`] (RAM pages 8..12).
    mod through_the_run_loop {
        use crate::invariants::{check, Layout};
        use crate::mem::addr::PhysAddr;
        use crate::mem::owner::Component;
        use crate::testing::*;
        use shared_abi::guest as abi;

        const IPA: u64 = 0x4000_0000;
        const LAYOUT: Layout = Layout { pool: None, fixmap: None };

        fn protected_vm(f: &mut Fixture) -> u64 {
            let h = create(f, 1, vm_flags::PROTECTED);
            f.call(0, H::VmAddMemory, &[h, f.page(GUEST), IPA, 4]).unwrap();
            h
        }

        /// Runs the guest through the SMCCC calls `calls` (each an HVC exit), then a WFI: the
        /// exit reasons, the guest's `x0` after each call, and the recorder.
        fn run_calls(f: &Fixture, h: u64, calls: &[[u64; 4]]) -> (Vec<u32>, Vec<u64>, Recorder) {
            let rec = Recorder::default();
            *rec.calls.borrow_mut() = calls.to_vec();
            *rec.exits.borrow_mut() = calls.iter().map(|_| hvc()).chain([trap(0x01 << 26 | 1 << 25, 0)]).collect();
            let mut reasons = Vec::new();
            let mut answers = Vec::new();
            loop {
                let r = f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap()[0] as u32;
                reasons.push(r);
                if r == exit::WFX {
                    break;
                }
            }
            // The guest's x0 after each call: what the next entry saw, read from the context.
            let slot = f.hyp.mem.lock().vms.lookup(h).unwrap().0;
            answers.push(f.hyp.vcpus[slot][0].claim().unwrap().x[0]);
            let inv = check(&f.hyp, &f.hyp.mem.lock(), &LAYOUT);
            assert!(inv.is_ok(), "invariants after {calls:x?}: {inv:?}");
            (reasons, answers, rec)
        }

        fn call(id: u32, ipa: u64) -> [u64; 4] {
            [id as u64, ipa, 0, 0]
        }

        #[test]
        fn a_shared_page_is_the_hosts_to_map_until_it_is_unshared() {
            let mut f = fixture();
            let h = protected_vm(&mut f);
            let pa = PhysAddr(f.page(GUEST + 1));
            let (reasons, answers, _) = run_calls(&f, h, &[call(abi::MEM_SHARE, IPA + 0x1000)]);
            assert_eq!((reasons.as_slice(), answers[0]), (&[exit::MEM_SHARE, exit::WFX][..], abi::SUCCESS));
            assert_eq!(exit_record(&f).reason, exit::WFX);
            let own = |f: &Fixture| f.hyp.mem.lock().own().entry(pa).map(|e| (e.owner(), e.borrower()));
            assert_eq!(own(&f), Some((Component::Guest(0), Some(Component::Host))));
            // The host may now map it: that page alone, read/write.
            let rec = Recorder::default();
            assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, pa.0 + 8, &rec), crate::mem::protect::HostFault::Retry);
            {
                let mem = f.hyp.mem.lock();
                let leaf = mem.host_s2().lookup(mem.tables(), pa.0).unwrap();
                assert_eq!(leaf.size, 4096);
                assert!(mem.host_s2().lookup(mem.tables(), pa.0 + 4096).is_none(), "its neighbour is still the guest's");
            }
            // Unshared: the host's mapping goes, with a TLB invalidation, before the guest runs on.
            let (reasons, answers, rec) = run_calls(&f, h, &[call(abi::MEM_UNSHARE, IPA + 0x1000)]);
            assert_eq!((reasons.as_slice(), answers[0]), (&[exit::MEM_UNSHARE, exit::WFX][..], abi::SUCCESS));
            let log = rec.log.borrow().clone();
            let unmapped = log.iter().position(|&e| e == "host_s2_unmapped").expect("a TLB invalidation of the host's VMID");
            assert!(unmapped < log.iter().rposition(|&e| e == "run").unwrap(), "before the guest's next entry: {log:?}");
            // Served in the guest's run: the host's VTTBR_EL2 (its stage 2, VMID 0) is borrowed
            // for the invalidation, which would otherwise hit the guest's loaded VMID.
            assert_eq!(*rec.host_vttbrs.borrow(), [f.hyp.mem.lock().host_s2().root().0]);
            assert_eq!(own(&f), Some((Component::Guest(0), None)));
            let mem = f.hyp.mem.lock();
            assert!(mem.host_s2().lookup(mem.tables(), pa.0).is_none());
        }

        #[test]
        fn wrong_shares_unshares_and_guards_are_invalid_parameters() {
            let mut f = fixture();
            let h = protected_vm(&mut f);
            let invalid = [
                call(abi::MEM_SHARE, IPA + 0x10),            // not aligned
                call(abi::MEM_SHARE, 0x0900_0000),            // MMIO
                call(abi::MEM_SHARE, IPA + 0x4000),           // past the VM's RAM
                call(abi::MEM_SHARE, u64::MAX & !0xFFF),      // outside the IPA space
                call(abi::MEM_UNSHARE, IPA),                  // never shared
                call(abi::MMIO_GUARD, IPA + 0x2000),          // RAM
                call(abi::MMIO_GUARD, 1 << 36),               // outside the IPA space
                call(abi::MMIO_GUARD, 0x0900_0004),           // not aligned
            ];
            for c in invalid {
                let (reasons, answers, _) = run_calls(&f, h, &[c]);
                assert_eq!((reasons.as_slice(), answers[0]), (&[exit::WFX][..], abi::INVALID_PARAMETER), "{c:x?}");
            }
            // Twice the same share: the second is refused.
            assert_eq!(run_calls(&f, h, &[call(abi::MEM_SHARE, IPA)]).1[0], abi::SUCCESS);
            assert_eq!(run_calls(&f, h, &[call(abi::MEM_SHARE, IPA)]).1[0], abi::INVALID_PARAMETER);
            assert_eq!(run_calls(&f, h, &[call(abi::MEM_UNSHARE, IPA)]).1[0], abi::SUCCESS);
            assert_eq!(run_calls(&f, h, &[call(abi::MEM_UNSHARE, IPA)]).1[0], abi::INVALID_PARAMETER);
        }

        #[test]
        fn a_vm_that_is_not_protected_has_no_memory_services() {
            let mut f = fixture();
            let h = create(&mut f, 1, 0);
            f.call(0, H::VmAddMemory, &[h, f.page(GUEST), IPA, 4]).unwrap();
            for id in [abi::HYP_MEMINFO, abi::MEM_SHARE, abi::MEM_UNSHARE, abi::MMIO_GUARD] {
                let (reasons, answers, _) = run_calls(&f, h, &[call(id, IPA)]);
                assert_eq!((reasons.as_slice(), answers[0]), (&[exit::WFX][..], abi::NOT_SUPPORTED), "{id:#x}");
            }
        }

        #[test]
        fn with_the_guard_on_only_declared_mmio_reaches_the_host() {
            let mut f = fixture();
            let h = protected_vm(&mut f);
            // Before the guard: any MMIO exits.
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![mmio(0x0A00_0000, true, 1, 2)];
            assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
            assert_eq!(run_calls(&f, h, &[call(abi::MMIO_GUARD, 0x0900_0000)]).1[0], abi::SUCCESS);
            // Declared: an exit. Undeclared: an external abort at the guest's vector, no exit.
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![mmio(0x0900_0018, true, 1, 2)];
            assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![mmio(0x0A00_0000, true, 1, 2), trap(0x01 << 26 | 1 << 25, 0)];
            assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
            let slot = f.hyp.mem.lock().vms.lookup(h).unwrap().0;
            let ctx = f.hyp.vcpus[slot][0].claim().unwrap().clone();
            assert_eq!(rec.entry_pcs.borrow()[1], 0x200, "VBAR_EL1 0 + current EL with SP_ELx, synchronous");
            let esr = ctx.sys[SysReg::ESR_EL1];
            assert_eq!((esr >> 26, esr & 0x3F, esr & (1 << 6) != 0), (0x25, 0x10, true), "data abort, same EL, SEA, write");
            // Guest RAM is never MMIO, guarded or not.
            assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.mem.mmio_guard().is_on());
        }

        #[test]
        fn destroy_takes_shared_pages_back_from_the_host_before_the_scrub() {
            let mut f = fixture();
            let h = protected_vm(&mut f);
            let pa = f.page(GUEST + 2);
            run_calls(&f, h, &[call(abi::MEM_SHARE, IPA + 0x2000)]);
            assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, pa, &Recorder::default()), crate::mem::protect::HostFault::Retry);
            let rec = Recorder::default();
            f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
            let log = rec.log.borrow().clone();
            let unmapped = log.iter().position(|&e| e == "host_s2_unmapped").expect("the host's mapping of the shared page goes");
            assert!(unmapped < log.iter().position(|&e| e == "scrub_page").unwrap(), "{log:?}");
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.own().entry(PhysAddr(pa)).map(|e| (e.owner(), e.borrower())), Some((Component::Host, None)));
            assert!(check(&f.hyp, &mem, &LAYOUT).is_ok());
        }
    }
}
