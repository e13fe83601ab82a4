//! The invariant checker: walks every translation table and the ownership record and checks
//! what EL2 promises. Compiled into host tests and into the test EL2 image (`test-hooks`), where
//! a test-only hypercall runs it; a release EL2 does not contain it.
//!
//! Checked:
//! 1. every record entry names one valid owner and, if any, a different borrower;
//! 2. the host's stage 2 is an identity map that covers, in RAM, only pages the host owns or
//!    borrows (so never EL2's pages nor a protected guest's);
//! 3. each guest's stage 2 maps only its own regions, each to the page the region names, which
//!    the guest owns or borrows (so no page is in two guests unless one lent it);
//! 4. EL2's stage 1 maps, in RAM, only EL2's own pages and pages lent to EL2, and no fixmap slot
//!    is left mapped;
//! 5. every table page of every table lies in EL2's pool (and so belongs to EL2);
//! 6. every page marked *tags clean* belongs to an MTE VM that has it mapped.

use crate::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::hyp::MemState;
use crate::owner::{Component, PageState};
use crate::pgtable::TableMemory;

/// The first broken promise found, with the addresses involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A record entry with an invalid owner or a borrower equal to the owner.
    BadEntry {
        /// The page.
        pa: PhysAddr,
    },
    /// The host's stage 2 maps a page the host may not access, or not as an identity map.
    HostMapsForbidden {
        /// Input address.
        ipa: u64,
        /// Output address.
        pa: PhysAddr,
    },
    /// A guest's stage 2 maps a page outside its regions or not its own.
    GuestMapsForeign {
        /// VM handle.
        vm: u64,
        /// Input address.
        ipa: u64,
        /// Output address.
        pa: PhysAddr,
    },
    /// EL2's stage 1 maps RAM that is neither EL2's nor lent to it, or a fixmap slot is in use.
    HypMapsForeign {
        /// Virtual address.
        va: u64,
        /// Output address.
        pa: PhysAddr,
    },
    /// A translation-table page outside EL2's pool.
    TableOutsidePool {
        /// The table page.
        pa: PhysAddr,
    },
    /// A page marked tags-clean that no MTE VM owning or borrowing it has mapped.
    StaleTagsClean {
        /// The page.
        pa: PhysAddr,
    },
}

impl Violation {
    /// A small code and the main address, for a test hypercall's registers.
    pub fn code_and_addr(&self) -> (u64, u64) {
        match *self {
            Violation::BadEntry { pa } => (1, pa.0),
            Violation::HostMapsForbidden { pa, .. } => (2, pa.0),
            Violation::GuestMapsForeign { pa, .. } => (3, pa.0),
            Violation::HypMapsForeign { pa, .. } => (4, pa.0),
            Violation::TableOutsidePool { pa } => (5, pa.0),
            Violation::StaleTagsClean { pa } => (6, pa.0),
        }
    }
}

/// Where EL2's own virtual addresses start that are not identity maps of RAM (fixmap slots).
pub struct Layout {
    /// The table pool (every table page must lie in it), if known.
    pub pool: Option<PhysRange>,
    /// EL2 virtual addresses that must be unmapped when nothing is in progress (fixmap).
    pub fixmap: Option<(u64, u64)>,
}

/// Checks everything listed in the module documentation. Returns the number of RAM pages the
/// record covers.
///
/// # Errors
/// The first [`Violation`] found.
pub fn check<T: TableMemory>(mem: &MemState<'_, T>, layout: &Layout) -> Result<u64, Violation> {
    let own = &mem.own;
    let ram = own.ram();
    let pages = ram.size() / PAGE_SIZE;

    // 1. The record.
    for p in 0..pages {
        let pa = PhysAddr(ram.start.0 + p * PAGE_SIZE);
        let Some(e) = own.entry(pa) else { return Err(Violation::BadEntry { pa }) };
        if e.borrower() == Some(e.owner()) {
            return Err(Violation::BadEntry { pa });
        }
    }

    // 2. The host's stage 2.
    let mut bad = None;
    mem.host_s2.for_each_leaf(&mem.tables, &mut |l| {
        if bad.is_some() {
            return;
        }
        if l.pa_base.0 != l.ia_base {
            bad = Some(Violation::HostMapsForbidden { ipa: l.ia_base, pa: l.pa_base });
            return;
        }
        let leaf = PhysRange { start: l.pa_base, end: PhysAddr(l.pa_base.0 + l.size) };
        if !leaf.overlaps(&ram) {
            return; // device space
        }
        let mut pa = l.pa_base.0;
        while pa < leaf.end.0 {
            if !own.can_access(PhysAddr(pa), Component::Host) {
                bad = Some(Violation::HostMapsForbidden { ipa: pa, pa: PhysAddr(pa) });
                return;
            }
            pa += PAGE_SIZE;
        }
    });
    if let Some(v) = bad {
        return Err(v);
    }

    // 3. Each guest's stage 2.
    for vm in mem.vms.iter() {
        let me = vm.component();
        vm.s2.for_each_leaf(&mem.tables, &mut |l| {
            if bad.is_some() {
                return;
            }
            let ok = vm.translate(l.ia_base) == Some(l.pa_base)
                && l.size == PAGE_SIZE
                && own.can_access(l.pa_base, me);
            if !ok {
                bad = Some(Violation::GuestMapsForeign { vm: vm.handle, ipa: l.ia_base, pa: l.pa_base });
            }
        });
        if let Some(v) = bad {
            return Err(v);
        }
    }

    // 4. EL2's stage 1.
    mem.hyp_s1.for_each_leaf(&mem.tables, &mut |l| {
        if bad.is_some() {
            return;
        }
        if let Some((start, end)) = layout.fixmap {
            if l.ia_base >= start && l.ia_base < end {
                bad = Some(Violation::HypMapsForeign { va: l.ia_base, pa: l.pa_base });
                return;
            }
        }
        let mut pa = l.pa_base.0;
        while pa < l.pa_base.0 + l.size {
            match own.state(PhysAddr(pa), Component::Hyp) {
                None | Some(PageState::Owned) | Some(PageState::SharedBorrowed) => {}
                Some(_) => {
                    bad = Some(Violation::HypMapsForeign { va: l.ia_base + (pa - l.pa_base.0), pa: PhysAddr(pa) });
                    return;
                }
            }
            pa += PAGE_SIZE;
        }
    });
    if let Some(v) = bad {
        return Err(v);
    }

    // 5. Table pages.
    let mut table_check = |pa: PhysAddr| {
        if bad.is_none() && layout.pool.is_some_and(|p| !p.contains(pa)) {
            bad = Some(Violation::TableOutsidePool { pa });
        }
    };
    mem.host_s2.for_each_table(&mem.tables, &mut table_check);
    mem.hyp_s1.for_each_table(&mem.tables, &mut table_check);
    for vm in mem.vms.iter() {
        vm.s2.for_each_table(&mem.tables, &mut table_check);
    }
    if let Some(v) = bad {
        return Err(v);
    }

    // 6. Tags-clean marks.
    for p in 0..pages {
        let pa = PhysAddr(ram.start.0 + p * PAGE_SIZE);
        let Some(e) = own.entry(pa) else { continue };
        if !e.tags_clean() {
            continue;
        }
        let holder = mem.vms.iter().find(|vm| {
            vm.mte && (e.owner() == vm.component() || e.borrower() == Some(vm.component())) && {
                vm.regions
                    .iter()
                    .find(|r| pa.0 >= r.pa.0 && pa.0 < r.pa.0 + r.pages * PAGE_SIZE)
                    .is_some_and(|r| vm.s2.lookup(&mem.tables, r.ipa + (pa.0 - r.pa.0)).is_some_and(|l| l.pa_base == pa))
            }
        });
        if holder.is_none() {
            return Err(Violation::StaleTagsClean { pa });
        }
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::tests::{fixture, Recorder, HYP_PAGES};
    use crate::pgtable::{Attrs, MemType, Perms};
    use shared_abi::msg::{vm_flags, VmCreate};
    use shared_abi::HypercallId as H;
    use zerocopy::IntoBytes;

    const LAYOUT: Layout = Layout { pool: None, fixmap: None };

    #[test]
    fn a_busy_but_correct_state_passes() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        f.hyp.host_s2_fault(f.page(1), &Recorder::default());
        let req = VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::PROTECTED | vm_flags::MTE, reserved: [0; 2] };
        f.ram.0[..32].copy_from_slice(req.as_bytes());
        let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
        f.call(0, H::VmAddMemory, &[h, f.page(8), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        let t = (0x24 << 26) | (1 << 25) | 0b000111;
        *rec.1.borrow_mut() = vec![
            crate::vm::GuestTrap { kind: crate::vm::TrapKind::Sync, esr: t, far: 0, hpfar: 0x4000_0000 >> 8 },
            crate::vm::GuestTrap { kind: crate::vm::TrapKind::Sync, esr: (0x16 << 26) | (1 << 25), far: 0, hpfar: 0 },
        ];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let mem = f.hyp.mem.lock();
        assert_eq!(check(&mem, &LAYOUT), Ok(crate::hyp::tests::RAM_PAGES as u64));
    }

    #[test]
    fn a_host_mapping_of_el2_memory_is_found() {
        let f = fixture();
        let el2 = f.hyp.hyp_region.start.0 + 2 * PAGE_SIZE;
        let mut mem = f.hyp.mem.lock();
        let MemState { host_s2, tables, .. } = &mut *mem;
        host_s2.map(tables, el2, PhysAddr(el2), PAGE_SIZE, Attrs { mem: MemType::Normal, perms: Perms::RWX }, 3).unwrap();
        assert_eq!(check(&mem, &LAYOUT), Err(Violation::HostMapsForbidden { ipa: el2, pa: PhysAddr(el2) }));
        let _ = HYP_PAGES;
    }

    #[test]
    fn a_guest_mapping_of_host_memory_is_found() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, reserved: [0; 2] }.as_bytes());
        let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
        let host_page = f.page(20);
        let mut mem = f.hyp.mem.lock();
        let MemState { vms, tables, .. } = &mut *mem;
        let vm = vms.iter_mut().next().unwrap();
        vm.s2.map(tables, 0x4000_0000, PhysAddr(host_page), PAGE_SIZE, Attrs { mem: MemType::Normal, perms: Perms::RWX }, 3).unwrap();
        assert_eq!(check(&mem, &LAYOUT), Err(Violation::GuestMapsForeign { vm: h, ipa: 0x4000_0000, pa: PhysAddr(host_page) }));
    }

    #[test]
    fn el2_mapping_host_memory_and_stray_tables_are_found() {
        let f = fixture();
        let host_page = f.page(30);
        {
            let mut mem = f.hyp.mem.lock();
            let MemState { hyp_s1, tables, .. } = &mut *mem;
            hyp_s1.map(tables, host_page, PhysAddr(host_page), PAGE_SIZE, Attrs { mem: MemType::Normal, perms: Perms::RW }, 3).unwrap();
            assert_eq!(check(&mem, &LAYOUT), Err(Violation::HypMapsForeign { va: host_page, pa: PhysAddr(host_page) }));
        }
        let mem = f.hyp.mem.lock();
        let pool = PhysRange::from_size(PhysAddr(0x1000), PAGE_SIZE);
        let layout = Layout { pool, fixmap: None };
        assert!(matches!(check(&mem, &layout), Err(Violation::HypMapsForeign { .. }) | Err(Violation::TableOutsidePool { .. })));
    }

    #[test]
    fn a_stale_tags_clean_mark_is_found() {
        let f = fixture();
        let mut mem = f.hyp.mem.lock();
        mem.own.mark_tags_clean(PhysAddr(f.page(40)));
        assert_eq!(check(&mem, &LAYOUT), Err(Violation::StaleTagsClean { pa: PhysAddr(f.page(40)) }));
    }
}

#[cfg(test)]
mod properties {
    //! Random sequences of VM hypercalls (through the real dispatcher, with a fake world switch
    //! that plays random guest exits), checking every invariant after every operation. 100
    //! sequences of 1,000 operations: 100,000 per run; proptest shrinks a failure.
    use super::*;
    use crate::hyp::tests::{fixture, Fixture, Recorder};
    use crate::vm::{GuestTrap, TrapKind};
    use proptest::prelude::*;
    use shared_abi::msg::{vm_flags, VmCreate};
    use shared_abi::{reg, HypError, HypercallId as H};
    use zerocopy::IntoBytes;

    #[derive(Clone, Debug)]
    enum Op {
        Create(u64),
        Destroy(usize),
        Add { vm: usize, page: usize, ipa: u64, pages: u64 },
        Run { vm: usize, exits: Vec<(u8, u64)> },
        SetReg { vm: usize, id: u64, value: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let flags = prop_oneof![Just(0), Just(vm_flags::PROTECTED), Just(vm_flags::MTE), Just(vm_flags::MTE | vm_flags::PROTECTED)];
        prop_oneof![
            flags.prop_map(Op::Create),
            (0usize..6).prop_map(Op::Destroy),
            (0usize..6, 0usize..1100, 0u64..8, 0u64..20).prop_map(|(vm, page, ipa, pages)| Op::Add {
                vm,
                page,
                ipa: 0x4000_0000 + ipa * 0x1_0000,
                pages
            }),
            (0usize..6, proptest::collection::vec((0u8..4, 0u64..0x10_0000), 1..6)).prop_map(|(vm, exits)| Op::Run { vm, exits }),
            (0usize..6, prop_oneof![Just(reg::PC), Just(reg::x(1)), Just(0u64)], any::<u64>())
                .prop_map(|(vm, id, value)| Op::SetReg { vm, id, value }),
        ]
    }

    fn trap(kind: u8, addr: u64) -> GuestTrap {
        let ipa = 0x4000_0000 + (addr & !0xFFF);
        match kind {
            // Translation fault inside (maybe) guest RAM.
            0 => GuestTrap { kind: TrapKind::Sync, esr: (0x24 << 26) | (1 << 25) | 0b000111, far: 0, hpfar: ipa >> 8 },
            // Decodable MMIO write outside RAM.
            1 => GuestTrap { kind: TrapKind::Sync, esr: (0x24 << 26) | (1 << 25) | (1 << 24) | (3 << 22) | (1 << 6) | 0b000111, far: 0, hpfar: 0x0900_0000 >> 8 },
            // HVC (PSCI_VERSION or whatever x0 holds).
            2 => GuestTrap { kind: TrapKind::Sync, esr: (0x16 << 26) | (1 << 25), far: 0, hpfar: 0 },
            // WFI.
            _ => GuestTrap { kind: TrapKind::Sync, esr: (0x01 << 26) | (1 << 25), far: 0, hpfar: 0 },
        }
    }

    fn apply(f: &mut Fixture, handles: &mut Vec<u64>, op: &Op) -> Result<[u64; 3], HypError> {
        let h = |i: usize| handles.get(i % handles.len().max(1)).copied().unwrap_or(0);
        match op {
            Op::Create(flags) => {
                let req = VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: *flags, reserved: [0; 2] };
                f.ram.0[..32].copy_from_slice(req.as_bytes());
                let r = f.call(0, H::VmCreate, &[]);
                if let Ok([handle, _, _]) = r {
                    handles.push(handle);
                }
                r
            }
            Op::Destroy(i) => f.call(0, H::VmDestroy, &[h(*i)]),
            Op::Add { vm, page, ipa, pages } => {
                let pa = if *page < 1024 { f.page(*page) } else { f.page(0) - 4096 * (*page as u64 - 1023) };
                f.call(0, H::VmAddMemory, &[h(*vm), pa, *ipa, *pages])
            }
            Op::Run { vm, exits } => {
                let rec = Recorder::default();
                // Enough exits that the run always ends (a WFI at the end exits to the host).
                let mut script: Vec<GuestTrap> = exits.iter().map(|&(k, a)| trap(k, a)).collect();
                script.push(trap(3, 0));
                *rec.1.borrow_mut() = script;
                f.call_with(&rec, 0, H::VcpuRun, &[h(*vm), 0, 0])
            }
            Op::SetReg { vm, id, value } => f.call(0, H::VcpuSetReg, &[h(*vm), 0, *id, *value, 0]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_under_any_vm_call_sequence(ops in proptest::collection::vec(op(), 1000)) {
            let mut f = fixture();
            f.call(0, H::SetMessagePage, &[0, f.page(990)]).unwrap();
            let mut handles = Vec::new();
            let layout = Layout { pool: None, fixmap: None };
            for op in &ops {
                let _ = apply(&mut f, &mut handles, op);
                let mem = f.hyp.mem.lock();
                let r = check(&mem, &layout);
                prop_assert!(r.is_ok(), "after {:?}: {:?}", op, r);
                // Exactly the pages given away are not the host's.
                let (host, hyp, guests) = mem.own.census();
                prop_assert_eq!(host + hyp + guests, crate::hyp::tests::RAM_PAGES as u64);
            }
            // Destroying everything gives every page back to the host.
            for h in handles {
                let _ = f.call(0, H::VmDestroy, &[h]);
            }
            let mem = f.hyp.mem.lock();
            prop_assert_eq!(mem.own.census().2, 0, "guest-owned pages left after destroying every VM");
            prop_assert_eq!(mem.vms.count(), 0);
        }
    }
}
