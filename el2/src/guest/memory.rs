//! Guest memory: `VM_ADD_MEMORY`, stage-2 mapping of guest pages on first touch, and what
//! `VM_DESTROY` does with a VM's memory (scrub, give back, unshare).

use crate::hw::Hw;
use crate::mem::addr::{PhysAddr, PAGE_SIZE};
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use crate::mem::protect::GuestPage;
use crate::mem::MemState;
use crate::guest::vm::handle_slot;
use arrayvec::ArrayVec;

/// Mapped pages or 2 MiB blocks a set/way clean collects per hold of the memory lock
/// (`clean_vm_to_poc`): up to 128 MiB to clean, outside the lock.
pub const SET_WAY_BATCH: usize = 64;

/// Cleans and invalidates to the PoC every page of VM `handle` that its stage 2 maps (a
/// guest's set/way maintenance, without FWB), for the vCPU whose claim the caller holds.
///
/// A block is cleaned as one; one that two regions hold is cleaned once when the regions are
/// next to each other in the VM's list (as the host adds runs side by side), at least once in
/// any case.
///
/// The memory lock is held only to find the next [`SET_WAY_BATCH`] mapped pages, not for
/// the cleaning: a guest repeating set/way operations must not keep every other VM's
/// hypercalls and faults waiting for a whole-VM clean. Cleaning outside the lock is sound
/// because the pages found cannot change hands meanwhile: a VM's pages go back only at
/// `VM_DESTROY`, which cannot run while the caller's vCPU is claimed (each CPU's fixmap
/// slot is its own). A page mapped after its batch was collected is mapped by
/// `map_guest_page`, which cleans it itself.
pub(crate) fn clean_vm_to_poc<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, arch: &impl Hw) {
    // (region index, page index) where the next batch starts.
    let mut cursor = (0usize, 0u64);
    // The last 2 MiB block batched (a block may span two regions side by side).
    let mut last_block = None;
    loop {
        // (first page, a whole 2 MiB block).
        let mut batch = ArrayVec::<(PhysAddr, bool), SET_WAY_BATCH>::new();
        {
            let mem = hyp.mem.lock();
            let Ok((_, vm)) = mem.vms.lookup(handle) else { return };
            'collect: while let Some(r) = vm.mem.regions().get(cursor.0) {
                while cursor.1 < r.pages {
                    if batch.is_full() {
                        break 'collect;
                    }
                    let ipa = r.ipa + cursor.1 * PAGE_SIZE;
                    cursor.1 += 1;
                    match vm.mem.lookup(mem.tables(), ipa) {
                        // A block: once, and on to the first page past it in this region.
                        Some(leaf) if leaf.level == 2 => {
                            if last_block != Some(leaf.ia_base) {
                                last_block = Some(leaf.ia_base);
                                batch.push((leaf.pa_base, true));
                            }
                            cursor.1 = cursor.1.max((leaf.ia_base + leaf.size - r.ipa) / PAGE_SIZE);
                        }
                        Some(leaf) => batch.push((PhysAddr(leaf.pa_base.0 + (ipa - leaf.ia_base)), false)),
                        None => {}
                    }
                }
                cursor = (cursor.0 + 1, 0);
            }
        }
        if batch.is_empty() {
            return;
        }
        // A block through the CPU's block slot: one broadcast TLBI for 512 pages.
        for (pa, block) in batch {
            if block {
                arch.clean_inval_poc_block(pa);
            } else {
                arch.clean_inval_poc(pa);
            }
        }
    }
}

/// Publishes VM `handle`'s layout hint ([`LayoutHint`]) from `mem`, under the memory lock the
/// caller holds: after `VM_CREATE`, `VM_ADD_MEMORY` and every `MMIO_GUARD` (the host's or the
/// guest's).
pub(crate) fn publish_layout<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>, handle: u64) {
    let Ok((slot, vm)) = mem.vms.lookup(handle) else { return };
    let Some(hint) = hyp.layout.get(slot) else { return };
    let regions = vm.mem.regions();
    let lo = regions.iter().map(|r| r.ipa).min().unwrap_or(u64::MAX);
    let hi = regions.iter().map(|r| r.ipa + r.size()).max().unwrap_or(0);
    hint.publish(lo, hi, vm.mem.mmio_guard().is_on());
}

/// Maps the guest page holding `ipa` if it is guest memory. An address outside the VM's
/// regions, with its MMIO guard off, is an MMIO access without a look under the lock.
pub(crate) fn map_guest_page<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ipa: u64, hw: &impl Hw) -> GuestPage {
    if let Some(hint) = hyp.layout.get(handle_slot(handle)) {
        if hint.surely_not_ram(ipa) {
            return GuestPage::NotRam;
        }
    }
    hyp.mem.lock().guest_map_on_fault(handle, ipa, hyp.platform.untagged, hw)
}

#[cfg(test)]
mod tests {
    use crate::mem::addr::PhysRange;
    use crate::mem::owner::Component;
    use crate::testing::*;
    use super::*;

    /// The maintenance log of a protected VM's life: donation, two first accesses (one page
    /// touched twice), destroy.
    fn cache_maintenance_log(f: &mut Fixture, flags: u64) -> [Vec<&'static str>; 3] {
        let h = create(f, 1, vm_flags::PROTECTED | flags);
        let add = Recorder::default();
        f.call_with(&add, 0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 2]).unwrap();
        let run = Recorder::default();
        *run.exits.borrow_mut() = vec![dabt_translation(0x4000_0000), dabt_translation(0x4000_1000), dabt_translation(0x4000_1008), hvc()];
        f.call_with(&run, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let destroy = Recorder::default();
        f.call_with(&destroy, 0, H::VmDestroy, &[h]).unwrap();
        let mem = |r: Recorder| r.log.take().into_iter().filter(|s| !["load", "put", "run", "flush_guest_local"].contains(s)).collect();
        [mem(add), mem(run), mem(destroy)]
    }

    #[test]
    fn protected_memory_is_donated_and_scrubbed_back() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.ram.0[GUEST * 4096] = 0xAB; // "image" data the host loaded
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmAddMemory, &[h, f.page(GUEST), 0x8000_0000, 2, shared_abi::measure::add_flags::MEASURE]).unwrap();
        f.ram.0[(GUEST + 2) * 4096] = 0xCD; // left over, not to be measured
        f.call_with(&rec, 0, H::VmAddMemory, &[h, f.page(GUEST + 2), 0x8000_2000, 2, 0]).unwrap();
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.own().state(PhysAddr(f.page(GUEST)), Component::Host), Some(PageState::NoAccess));
            assert_eq!(mem.own().state(PhysAddr(f.page(GUEST + 3)), Component::Guest(0)), Some(PageState::Owned));
        }
        assert_eq!(f.ram.0[GUEST * 4096], 0xAB, "a measured donation keeps the data");
        assert_eq!(f.ram.0[(GUEST + 2) * 4096], 0, "an unmeasured one is zeroed");
        // The same pages again, to this VM or another: refused.
        let h2 = create(&mut f, 1, vm_flags::PROTECTED);
        assert_eq!(f.call(0, H::VmAddMemory, &[h2, f.page(GUEST + 2), 0x8000_0000, 1]), Err(HypError::NotOwned));
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 4), 0x8000_2000, 1]), Err(HypError::InvalidArgument), "IPA overlap");
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page").count(), 4 + TABLE_PAGES, "guest and table pages");
        assert_eq!(f.ram.0[GUEST * 4096], 0, "scrubbed");
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(f.page(GUEST)), Component::Host), Some(PageState::Owned));
    }

    #[test]
    fn a_page_given_back_is_mapped_again_inside_a_split_block() {
        let mut f = fixture();
        let chunk = f.page(0);
        let donated = f.page(GUEST);
        // The host uses its first 2 MiB: one block.
        assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, chunk + 0x40, &Recorder::default()), crate::mem::protect::HostFault::Retry);
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.host_s2().lookup(mem.tables(), chunk).map(|l| l.level), Some(2));
        }
        // One page of it goes to a protected VM: the block goes.
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, donated, 0x8000_0000, 1]).unwrap();
        // The host uses the rest of the chunk: EL2 maps it page by page (a level-3 table).
        for p in [0, GUEST - 1, GUEST + 1, 511] {
            assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, f.page(p), &Recorder::default()), crate::mem::protect::HostFault::Retry, "page {p}");
        }
        assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, donated, &Recorder::default()), crate::mem::protect::HostFault::Inject, "the guest's now");
        // The VM goes; its page comes back, and the host's next touch maps it again.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let rec = Recorder::default();
        assert_eq!(crate::host::trap::host_s2_fault(&f.hyp, donated + 8, &rec), crate::mem::protect::HostFault::Retry);
        assert_eq!(rec.log.borrow().as_slice(), &["host_s2_mapped"]);
        let mem = f.hyp.mem.lock();
        let leaf = mem.host_s2().lookup(mem.tables(), donated).expect("the returned page is mapped");
        assert_eq!((leaf.level, leaf.pa_base), (3, PhysAddr(donated)));
    }

    #[test]
    fn without_fwb_pages_are_cleaned_to_poc_on_first_map_and_after_scrubbing() {
        let mut f = fixture(); // the fixture's CPU has no FEAT_S2FWB
        let [add, run, destroy] = cache_maintenance_log(&mut f, 0);
        // Donation: nobody can touch the pages until the guest's first access, which cleans.
        assert!(!add.contains(&"clean_inval_poc"), "{add:?}");
        assert_eq!(run, ["clean_inval_poc", "guest_s2_mapped", "clean_inval_poc", "guest_s2_mapped"], "once per page, before it is mapped");
        assert_eq!(destroy, [&["scrub_page", "scrub_page", "flush_guest_tlb"][..], &table_pages_returned()].concat(), "scrub_page cleans to the PoC too");
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
        assert_eq!(destroy, [&["scrub_page", "scrub_page", "flush_guest_tlb"][..], &table_pages_returned()].concat(), "scrub_page cleans to the PoC too");
        // The stage 2 uses the FWB encoding (MemAttr 0b0110, forced Write-Back), and the VM
        // runs with HCR_EL2.FWB; the guest is not told about FWB.
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_0000), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let mem = f.hyp.mem.lock();
        let vm = mem.vms.lookup(h).unwrap().1;
        assert!(vm.fwb);
        assert_eq!((vm.mem.lookup(mem.tables(), 0x4000_0000).unwrap().desc >> 2) & 0xF, 0b0110);
        assert_eq!(self::idreg::restrict(f.hyp.cpus.lock().view(), &idreg::VmPolicy { mte: false, ptrauth: false, pmu: false, ipa_bits: 36, protected: false, sve: false })[idreg::idx(7, 2)] >> 40 & 0xF, 0);
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
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.mem.regions().is_empty());
    }

    #[test]
    fn mte_vms_get_clean_tags_once_and_never_untagged_memory() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::MTE | vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_0000), dabt_translation(0x4000_1000), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "clear_tags").count(), 2, "one clear per page");
        assert!(f.hyp.mem.lock().own().entry(PhysAddr(f.page(GUEST))).unwrap().tags_clean());
        // Destroy and give the same pages to a new MTE VM: a change of ownership, clean again.
        // A protected MTE VM's pages are scrubbed with their tags (DC GZVA: all have storage).
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page").count(), 4 + TABLE_PAGES);
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page_untagged").count(), TABLE_PAGES, "tags zeroed too (table pages never hold any)");
        assert!(!f.hyp.mem.lock().own().entry(PhysAddr(f.page(GUEST))).unwrap().tags_clean());
        // A page without tag storage behind it: refused to an MTE VM at VM_ADD_MEMORY...
        let untagged = PhysRange::from_size(PhysAddr(f.page(GUEST + 3)), PAGE_SIZE);
        f.hyp.platform.untagged = untagged;
        let h = create(&mut f, 1, vm_flags::MTE);
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 3), 0x4000_3000, 1]), Err(HypError::InvalidArgument));
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.mem.regions().is_empty(), "nothing given");
        // ...and should it get there anyway (here: the platform description changes under a
        // VM that has it), the VM is stopped at the first touch, naming IPA and PA.
        f.hyp.platform.untagged = None;
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        f.hyp.platform.untagged = untagged;
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_3008)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::KILLED as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.data, e.ipa, e.args[0]), (kill::UNTAGGED_MEMORY, 0x4000_3008, f.page(GUEST + 3)));
        // A VM without MTE may use that memory.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_3008), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert!(!rec.log.borrow().contains(&"clear_tags"), "no tag work for a VM without MTE");
        f.call(0, H::VmDestroy, &[h]).unwrap();
        // Scrubbing memory without tag storage never uses tag operations (DC GZVA).
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page").count(), 4 + TABLE_PAGES);
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page_untagged").count(), 1 + TABLE_PAGES, "only the untagged page (and the table pages)");
    }

    #[test]
    fn guest_ram_that_cannot_be_mapped_yet_is_never_an_mmio_exit() {
        let mut f = fixture();
        let h = create_without_tables(&mut f, 1, vm_flags::PROTECTED, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        // A store with a valid syndrome (ISV set) to guest RAM, which needs a level-2 and a
        // level-3 table the VM does not have: must not become MMIO, and nothing happens.
        *rec.exits.borrow_mut() = vec![mmio(0x4000_1000, true, 5, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::NEED_TABLES as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.args, e.ipa, e.data, e.flags), ([2, 0, 0, 0], 0, 0, 0), "how many, and nothing of the access");
        assert!(!rec.log.borrow().iter().any(|s| ["guest_s2_mapped", "clean_inval_poc"].contains(s)), "{:?}", rec.log.borrow());
        // The host gives one page, too few: asked again, for the one still missing.
        let first = f.page(TABLES - 3);
        f.call(0, H::VmTopupTables, &[h, first, 1]).unwrap();
        *rec.exits.borrow_mut() = vec![mmio(0x4000_1000, true, 5, 3)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::NEED_TABLES as u64, 0, 0]));
        assert_eq!(exit_record(&f).args[0], 1);
        // Enough: the access replays and maps; the tables are the pages given.
        f.call(0, H::VmTopupTables, &[h, first + PAGE_SIZE, 2]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x4000_1000, true, 5, 3), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        {
            let mem = f.hyp.mem.lock();
            let vm = mem.vms.lookup(h).unwrap().1;
            assert_eq!(vm.mem.lookup(mem.tables(), 0x4000_1000).map(|l| l.pa_base.0), Some(f.page(GUEST + 1)));
            assert_eq!(vm.mem.tables().runs(), [PhysRange::from_size(PhysAddr(first), 3 * PAGE_SIZE).unwrap()], "the two top-ups joined");
            assert_eq!(vm.mem.tables().free(), 1);
        }
        invariants_hold(&f);
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(first), Component::Host), Some(PageState::Owned), "back to the host");
        invariants_hold(&f);
    }

    #[test]
    fn an_mte_page_that_cannot_be_mapped_yet_is_not_marked_tags_clean() {
        let mut f = fixture();
        let h = create_without_tables(&mut f, 1, vm_flags::PROTECTED | vm_flags::MTE, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x4000_1000)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::NEED_TABLES as u64, 0, 0]));
        assert!(!rec.log.borrow().contains(&"clear_tags"), "no tag work for a page that is not mapped");
        invariants_hold(&f);
    }

    /// The hint a fault reads without the lock follows every change of the VM's layout: memory
    /// added after the first run (a non-protected VM), and the MMIO guard turned on.
    #[test]
    fn the_layout_hint_follows_memory_and_the_mmio_guard() {
        let mut f = fixture();
        let rec = Recorder::default();
        let h = create(&mut f, 1, 0);
        assert_eq!(map_guest_page(&f.hyp, h, 0x4000_0000, &rec), GuestPage::NotRam, "no memory yet");
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1]).unwrap();
        *rec.exits.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        // Added after the first run, below and above the first region.
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 1), 0x3FFF_F000, 1]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 2), 0x4000_1000, 1]).unwrap();
        for ipa in [0x3FFF_F000, 0x4000_0000, 0x4000_1FF8] {
            assert_eq!(map_guest_page(&f.hyp, h, ipa, &rec), GuestPage::Mapped, "{ipa:#x}");
        }
        for ipa in [0x3FFF_EFF8, 0x4000_2000, 0x0900_0000] {
            assert_eq!(map_guest_page(&f.hyp, h, ipa, &rec), GuestPage::NotRam, "{ipa:#x}");
        }
        // A protected VM whose host turned its MMIO guard on: an undeclared granule outside
        // its RAM is no MMIO exit, hint or not.
        let p = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[p, f.page(GUEST + 4), 0x4000_0000, 1]).unwrap();
        assert_eq!(map_guest_page(&f.hyp, p, 0x0A00_0000, &rec), GuestPage::NotRam);
        f.call(0, H::VmMmioGuard, &[p, 0x0900_0000]).unwrap();
        assert_eq!(map_guest_page(&f.hyp, p, 0x0900_0008, &rec), GuestPage::NotRam, "declared");
        assert_eq!(map_guest_page(&f.hyp, p, 0x0A00_0000, &rec), GuestPage::Unguarded, "not declared");
        assert!(f.hyp.layout[handle_slot(h)].surely_not_ram(0x0900_0000), "published");
        // Destroy closes the slot's hint (every fault asks under the lock); a new VM in the
        // slot publishes its own.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert!(!f.hyp.layout[handle_slot(h)].surely_not_ram(0x0900_0000), "closed");
        let again = create(&mut f, 1, 0);
        assert_eq!(handle_slot(again), handle_slot(h));
        assert!(f.hyp.layout[handle_slot(again)].surely_not_ram(0x4000_0000), "a VM without memory: nothing is RAM");
        assert_eq!(map_guest_page(&f.hyp, again, 0x4000_0000, &rec), GuestPage::NotRam);
    }

    /// The fixture's second 2 MiB of RAM (pages 512..1024): one aligned block, free.
    const BLOCK_PAGE: usize = 512;
    const BLOCK_IPA: u64 = 0x4020_0000;

    fn leaf_at(f: &Fixture, h: u64, ipa: u64) -> Option<(u8, u64, u64)> {
        let mem = f.hyp.mem.lock();
        let vm = mem.vms.lookup(h).unwrap().1;
        vm.mem.lookup(mem.tables(), ipa).map(|l| (l.level, l.ia_base, l.pa_base.0))
    }

    fn invariants_hold(f: &Fixture) {
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert_eq!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout), Ok(crate::testing::RAM_PAGES as u64));
    }

    #[test]
    fn a_first_touch_maps_the_whole_2mib_block_with_its_tags_cleared_at_once() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED | vm_flags::MTE);
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, 512]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA + 0x1_2008), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(leaf_at(&f, h, BLOCK_IPA + 0x1F_F000), Some((2, BLOCK_IPA, f.page(BLOCK_PAGE))), "one level-2 block");
        let log = rec.log.borrow();
        assert_eq!(log.iter().filter(|s| **s == "guest_s2_mapped").count(), 1, "one fault, one mapping");
        assert_eq!(log.iter().filter(|s| **s == "clear_tags_block").count(), 1, "every page's tags, once, in one go");
        assert!(!log.contains(&"clear_tags"), "no page on its own");
        assert_eq!(*rec.tags_cleared.borrow(), [f.page(BLOCK_PAGE)], "the block's own first page");
        assert_eq!(f.page(BLOCK_PAGE) % (2 << 20), 0);
        // Without FWB (the fixture's CPUs): cleaned to the PoC after its tags, before it is
        // mapped, as one block.
        let maint: Vec<_> = log.iter().copied().filter(|s| s.contains("tags") || s.contains("poc") || *s == "guest_s2_mapped").collect();
        assert_eq!(maint, ["clear_tags_block", "clean_inval_poc_block", "guest_s2_mapped"]);
        assert_eq!(*rec.blocks_cleaned.borrow(), [f.page(BLOCK_PAGE)]);
        drop(log);
        invariants_hold(&f);
        // Shares and unshares inside the block change the host's access, never the guest's
        // mapping: the block stays.
        let rec = Recorder::default();
        let g = shared_abi::guest::MEM_SHARE as u64;
        let u = shared_abi::guest::MEM_UNSHARE as u64;
        *rec.calls.borrow_mut() = vec![[g, BLOCK_IPA + 0x5000, 0, 0], [g, BLOCK_IPA + 0x6000, 0, 0], [u, BLOCK_IPA + 0x5000, 0, 0]];
        *rec.exits.borrow_mut() = vec![hvc(), hvc(), hvc(), hvc()];
        for want in [exit::MEM_SHARE, exit::MEM_SHARE, exit::MEM_UNSHARE] {
            assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([want as u64, 0, 0]));
        }
        assert_eq!(leaf_at(&f, h, BLOCK_IPA + 0x5000), Some((2, BLOCK_IPA, f.page(BLOCK_PAGE))));
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.own().state(PhysAddr(f.page(BLOCK_PAGE + 6)), Component::Host), Some(PageState::SharedBorrowed));
            assert_eq!(mem.own().state(PhysAddr(f.page(BLOCK_PAGE + 5)), Component::Host), Some(PageState::NoAccess));
        }
        invariants_hold(&f);
        // Destroy scrubs every page of the block and gives it back.
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(rec.log.borrow().iter().filter(|s| **s == "scrub_page").count(), 512 + TABLE_PAGES);
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(f.page(BLOCK_PAGE + 6)), Component::Host), Some(PageState::Owned));
        invariants_hold(&f);
    }

    #[test]
    fn a_block_with_a_page_whose_tags_are_clean_clears_the_others_page_by_page() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED | vm_flags::MTE);
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, 512]).unwrap();
        // Cleared for this owner already, as if mapped before: its tags are the guest's now. (A
        // state EL2 does not reach today, the invariant checker says: a mark is only ever on a
        // mapped page, and a mapped page's block is not mapped again. The fallback is defence.)
        f.hyp.mem.lock().parts_mut().0.mark_tags_clean(PhysAddr(f.page(BLOCK_PAGE + 7)));
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(leaf_at(&f, h, BLOCK_IPA).map(|l| l.0), Some(2));
        let log = rec.log.borrow();
        assert!(!log.contains(&"clear_tags_block"));
        assert_eq!(log.iter().filter(|s| **s == "clear_tags").count(), 511, "all but the clean page");
        assert!(!rec.tags_cleared.borrow().contains(&f.page(BLOCK_PAGE + 7)));
        // The tags first, then the block cleaned to the PoC as one (no FWB), then the mapping.
        let maint: Vec<_> = log.iter().copied().filter(|s| s.contains("poc") || *s == "guest_s2_mapped").collect();
        assert_eq!(maint, ["clean_inval_poc_block", "guest_s2_mapped"]);
        let last_tags = log.iter().rposition(|s| *s == "clear_tags").unwrap();
        assert!(last_tags < log.iter().position(|s| *s == "clean_inval_poc_block").unwrap());
    }

    #[test]
    fn tags_that_cannot_be_cleared_stop_the_mapping() {
        for pages in [512, 1] {
            let mut f = fixture();
            let h = create(&mut f, 1, vm_flags::PROTECTED | vm_flags::MTE);
            f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, pages]).unwrap();
            let rec = Recorder::default();
            rec.tags_fail.set(true);
            *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA)];
            let r = f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]);
            assert_eq!(r, Ok([exit::KILLED as u64, 0, 0]), "{pages} pages");
            assert_eq!(leaf_at(&f, h, BLOCK_IPA), None, "nothing mapped");
            assert!(!rec.log.borrow().contains(&"guest_s2_mapped"));
        }
    }

    #[test]
    fn regions_side_by_side_make_one_block() {
        // Two runs of RAM a VMM gave one after the other, contiguous in IPA and in PA.
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, 3]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE + 3), BLOCK_IPA + 0x3000, 509]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA + 0x10_0000), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(leaf_at(&f, h, BLOCK_IPA), Some((2, BLOCK_IPA, f.page(BLOCK_PAGE))));
        invariants_hold(&f);
        // A set/way clean (no FWB) cleans the block once, though two regions hold it.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(crate::guest::sysreg::tests::sysreg_esr(1, 0, 7, 14, 2, 0, false), 0), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(*rec.blocks_cleaned.borrow(), [f.page(BLOCK_PAGE)]);
        assert!(!rec.log.borrow().contains(&"clean_inval_poc"), "no page on its own");
    }

    #[test]
    fn a_set_way_batch_that_fills_at_a_block_goes_on_after_it() {
        // One page short of a batch, then a block (which fills it), then two pages.
        use crate::guest::memory::SET_WAY_BATCH;
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let n = SET_WAY_BATCH as u64 - 1;
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, n]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, 512]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST) + (n + 8) * 4096, 0x5000_0000, 2]).unwrap();
        let mut script: Vec<_> = (0..n).map(|p| dabt_translation(0x4000_0000 + p * 4096)).collect();
        script.extend([dabt_translation(BLOCK_IPA), dabt_translation(0x5000_0000), dabt_translation(0x5000_1000)]);
        script.extend([trap(crate::guest::sysreg::tests::sysreg_esr(1, 0, 7, 14, 2, 0, false), 0), hvc()]);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = script;
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(*rec.blocks_cleaned.borrow(), [f.page(BLOCK_PAGE), f.page(BLOCK_PAGE)]);
        let pages: Vec<u64> = (0..n).map(|p| f.page(GUEST) + p * 4096).chain([0, 1].map(|p| f.page(GUEST) + (n + 8 + p) * 4096)).collect();
        let twice: Vec<u64> = pages.iter().chain(&pages).copied().collect();
        assert_eq!(*rec.pages_cleaned.borrow(), twice, "every page at its first touch, then once in the set/way");
    }

    #[test]
    fn a_set_way_clean_takes_blocks_whole_and_pages_one_by_one() {
        // A block-mapped 2 MiB and, in a second region, two pages mapped on their own.
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA, 512]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x5000_0000, 4]).unwrap();
        let rec = Recorder::default();
        let cisw = trap(crate::guest::sysreg::tests::sysreg_esr(1, 0, 7, 14, 2, 0, false), 0);
        *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA + 0x8000), dabt_translation(0x5000_0000), dabt_translation(0x5000_2000), cisw, hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(*rec.blocks_cleaned.borrow(), [f.page(BLOCK_PAGE), f.page(BLOCK_PAGE)], "at first touch, then for the set/way");
        let (a, b) = (f.page(GUEST), f.page(GUEST) + 0x2000);
        assert_eq!(*rec.pages_cleaned.borrow(), [a, b, a, b], "each page at its first touch and once more, none never mapped");
    }

    #[test]
    fn memory_that_cannot_be_one_block_is_mapped_page_by_page() {
        // (IPA, first page, pages, the IPA touched): the pages not as aligned as the IPA; a
        // region short of the block; the block split between two regions not contiguous in PA.
        for (ipa, first, pages, touch) in [(BLOCK_IPA, BLOCK_PAGE + 1, 511, BLOCK_IPA), (BLOCK_IPA + 0x1000, BLOCK_PAGE + 1, 511, BLOCK_IPA + 0x1000)] {
            let mut f = fixture();
            let h = create(&mut f, 1, 0);
            f.call(0, H::VmAddMemory, &[h, f.page(first), ipa, pages]).unwrap();
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![dabt_translation(touch), hvc()];
            f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
            assert_eq!(leaf_at(&f, h, touch).map(|l| l.0), Some(3), "{ipa:#x}");
            invariants_hold(&f);
        }
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE + 256), BLOCK_IPA, 256]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(BLOCK_PAGE), BLOCK_IPA + 0x10_0000, 256]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(BLOCK_IPA + 0x10_0000), dabt_translation(BLOCK_IPA), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(leaf_at(&f, h, BLOCK_IPA).map(|l| l.0), Some(3));
        assert_eq!(leaf_at(&f, h, BLOCK_IPA + 0x1000), None, "only what was touched");
        invariants_hold(&f);
    }

    #[test]
    fn a_protected_vm_that_ran_gets_no_more_memory() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 1), 0x4000_1000, 1]), Err(HypError::Denied));
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.vms.lookup(h).unwrap().1.mem.regions().len(), 1, "nothing added");
            assert_eq!(mem.own().state(PhysAddr(f.page(GUEST + 1)), Component::Host), Some(PageState::Owned), "still the host's");
        }
        // A non-protected VM shares memory with the host: it may still grow after running.
        let h2 = create(&mut f, 1, 0);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h2, 0, 0]).unwrap();
        f.call(0, H::VmAddMemory, &[h2, f.page(GUEST + 1), 0x4000_1000, 1]).unwrap();
    }

    #[test]
    fn memory_protection_is_on_while_protected_vms_exist() {
        let mut f = fixture();
        let mem_protect = |f: &Fixture, enable: u32| {
            let rec = Recorder::default();
            let r = crate::host::psci::host_mem_protect(&f.hyp.mem, enable, &rec);
            let forwarded = rec.log.borrow().iter().any(|s| s.starts_with("mem_protect"));
            (r, forwarded)
        };
        assert_eq!(mem_protect(&f, 0), (-1, true), "no protected VM: the host's call reaches firmware");
        // A non-protected VM changes nothing; the first protected one turns protection on.
        let rec = Recorder::default();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let plain = create(&mut f, 1, 0);
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::PROTECTED, sve_vl: 0, reserved: 0 }.as_bytes());
        let p1 = f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0];
        assert_eq!(*rec.log.borrow(), ["mem_protect_on"], "enabled once, for the first protected VM");
        let rec = Recorder::default();
        let p2 = f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0];
        assert!(rec.log.borrow().is_empty(), "already on");
        // While protected VMs exist the host may not turn it off; enabling again is harmless.
        assert_eq!(mem_protect(&f, 0), (i64::from(smccc::psci::Error::Denied), false));
        assert_eq!(mem_protect(&f, 5), (i64::from(smccc::psci::Error::Denied), false));
        assert_eq!(mem_protect(&f, 1), (-1, true));
        f.call(0, H::VmDestroy, &[p1]).unwrap();
        assert_eq!(mem_protect(&f, 0), (i64::from(smccc::psci::Error::Denied), false), "one protected VM left");
        f.call(0, H::VmDestroy, &[p2]).unwrap();
        assert_eq!(mem_protect(&f, 0), (-1, true), "the last one is gone");
        f.call(0, H::VmDestroy, &[plain]).unwrap();
    }
}
