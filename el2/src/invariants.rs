//! The invariant checker: walks every translation table, the ownership record, the VM table and
//! the free vCPU slots, and checks what EL2 promises (what docs/threat-model.md relies
//! on). Compiled into host tests and into the test EL2 image (`test-hooks`), where a test-only
//! hypercall runs it under the memory lock; a release EL2 does not contain it.
//!
//! Checked, one function each, in this order (the number is the violation's code):
//! 1. every record entry names one valid owner and, if any, a different borrower;
//! 2. the host's stage 2 is an identity map that covers, in RAM, only pages the host owns or
//!    borrows (so never EL2's pages nor a protected guest's);
//! 3. each guest's stage 2 maps only its own regions, each to the page the region names, which
//!    the guest owns or borrows (so no page is in two guests unless one lent it);
//! 4. EL2's stage 1 maps, in RAM, only EL2's own pages and pages lent to EL2, and no fixmap slot
//!    is left mapped;
//! 5. every table page of every table lies in EL2's pool (and so belongs to EL2), but a guest
//!    stage 2's tables below its root, which are exactly the pages its memcache handed out,
//!    each once;
//! 6. every page marked *tags clean* belongs to an MTE VM that has it mapped;
//! 7. every page an MTE VM's stage 2 maps is marked *tags clean* (EL2 cleared its allocation
//!    tags on the first mapping since its last change of ownership), and
//! 8. has tag storage (lies outside the platform's untagged RAM);
//! 9. every page of a protected VM's regions is owned by that VM, never merely shared with it,
//!    and lent, if at all, only to the host (the guest's own `MEM_SHARE`);
//! 10. no page is owned by, or lent to, a guest whose VM slot holds no live VM;
//! 11. no two regions (of one VM or of two) share a physical page, and
//! 12. no two regions of one VM overlap in its IPA space;
//! 13. every vCPU of a free VM slot is reset: its context equals [`VcpuCtx::new`] (so no pending
//!     MMIO read, nor a run configuration a stale handle could use), it is powered off, and no `CPU_ON` entry point or context, nor linked SGI
//!     state, is left;
//! 14. every page EL2 borrows from anyone is a registered message page;
//! 15. EL2's stage 1 is W^X: no leaf is both writable and executable;
//! 16. the host's stage 2 maps RAM as Normal memory and everything else as Device (pages it
//!     leaves unmapped, such as the guarded redistributor pages, are not its concern);
//! 17. outside RAM, the host's stage 2 maps only device space the host may reach
//!     (`crate::host::devices`): no device that can master memory (fw_cfg, virtio-mmio, the
//!     ITS), no guarded page (the redistributors' `GICR_CTLR.EnableLPIs`, PCI configuration
//!     space);
//! 18. the host's stage 2 maps a page it borrows from a guest only read/write, never
//!     executable, and only as that page (never in a block, so that `MEM_UNSHARE` unmaps
//!     exactly it);
//! 19. every page of a VM's memcache (its stage-2 table pages) is EL2's alone, mapped by EL2's
//!     stage 1 at its own address, outside the pool and every other VM's memcache, and the
//!     memcache has handed out no more pages than it holds;
//! 20. EL2 owns no page but its own region's and the live VMs' table pages (so a destroyed
//!     VM's table pages went back to the host).
#![cfg(any(test, feature = "test-hooks"))]

use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::hyp::Hyp;
use crate::mem::MemState;
use crate::mem::owner::{Component, PageEntry, PageState, MAX_GUEST};
use crate::mem::pgtable::{Leaf, MemType, PageTable, TableMemory};
use crate::platform::MAX_CPUS;
use crate::guest::vcpu::{power, VcpuCtx};
use crate::guest::vm::Vm;
use crate::guest::MAX_VMS;
use core::sync::atomic::Ordering;

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
    /// An MTE VM's stage 2 maps a page whose allocation tags EL2 has not cleared.
    MteTagsNotClean {
        /// VM handle.
        vm: u64,
        /// Input address.
        ipa: u64,
        /// The page.
        pa: PhysAddr,
    },
    /// An MTE VM's stage 2 maps a page without allocation-tag storage.
    MteNoTagStorage {
        /// VM handle.
        vm: u64,
        /// Input address.
        ipa: u64,
        /// The page.
        pa: PhysAddr,
    },
    /// A page of a protected VM's regions that the VM does not own alone.
    ProtectedPageNotExclusive {
        /// VM handle.
        vm: u64,
        /// The page.
        pa: PhysAddr,
    },
    /// A page owned by, or lent to, a guest that has no live VM.
    OrphanGuestPage {
        /// The page.
        pa: PhysAddr,
    },
    /// Two regions backed by the same physical page.
    RegionsOverlapPhys {
        /// The first page both hold.
        pa: PhysAddr,
    },
    /// Two regions of one VM overlap in its IPA space.
    RegionsOverlapIpa {
        /// VM handle.
        vm: u64,
        /// The first IPA both hold.
        ipa: u64,
    },
    /// A vCPU of a free VM slot that is not at reset.
    FreeVcpuNotReset {
        /// VM slot.
        slot: usize,
        /// vCPU index.
        vcpu: usize,
    },
    /// EL2 borrows a page that is not a registered message page.
    HypBorrowsNonMessage {
        /// The page.
        pa: PhysAddr,
    },
    /// EL2's stage 1 has a leaf both writable and executable.
    HypWritableExecutable {
        /// Virtual address.
        va: u64,
    },
    /// The host's stage 2 maps RAM as other than Normal, or non-RAM as other than Device (or
    /// one leaf over both).
    HostWrongMemoryType {
        /// Input address (an identity map: also the output address).
        ipa: u64,
    },
    /// The host's stage 2 maps a page a guest lent it other than as that page alone,
    /// read/write and not executable.
    HostBorrowedPageMapping {
        /// Input address of the leaf.
        ipa: u64,
    },
    /// The host's stage 2 has a leaf outside RAM over device space the host may not map: a
    /// device not on the allow-list, or a guarded page.
    HostMapsForbiddenDevice {
        /// Input address of the leaf.
        ipa: u64,
    },
    /// A page of a VM's memcache that is not EL2's alone, not mapped by EL2 at its address,
    /// or also in the pool or another VM's memcache; or a memcache that handed out more than
    /// it holds (`pa`: its first run).
    TablePageMisplaced {
        /// VM handle.
        vm: u64,
        /// The page.
        pa: PhysAddr,
    },
    /// A page EL2 owns outside its region and the live VMs' table pages.
    StrayHypPage {
        /// The page.
        pa: PhysAddr,
    },
}

impl Violation {
    /// A small code and the main address, for a test hypercall's registers (see docs/ABI.md).
    pub fn code_and_addr(&self) -> (u64, u64) {
        match *self {
            Violation::BadEntry { pa } => (1, pa.0),
            Violation::HostMapsForbidden { pa, .. } => (2, pa.0),
            Violation::GuestMapsForeign { pa, .. } => (3, pa.0),
            Violation::HypMapsForeign { pa, .. } => (4, pa.0),
            Violation::TableOutsidePool { pa } => (5, pa.0),
            Violation::StaleTagsClean { pa } => (6, pa.0),
            Violation::MteTagsNotClean { pa, .. } => (7, pa.0),
            Violation::MteNoTagStorage { pa, .. } => (8, pa.0),
            Violation::ProtectedPageNotExclusive { pa, .. } => (9, pa.0),
            Violation::OrphanGuestPage { pa } => (10, pa.0),
            Violation::RegionsOverlapPhys { pa } => (11, pa.0),
            Violation::RegionsOverlapIpa { ipa, .. } => (12, ipa),
            Violation::FreeVcpuNotReset { slot, vcpu } => (13, (slot as u64) << 8 | vcpu as u64),
            Violation::HypBorrowsNonMessage { pa } => (14, pa.0),
            Violation::HypWritableExecutable { va } => (15, va),
            Violation::HostWrongMemoryType { ipa } => (16, ipa),
            Violation::HostMapsForbiddenDevice { ipa } => (17, ipa),
            Violation::HostBorrowedPageMapping { ipa } => (18, ipa),
            Violation::TablePageMisplaced { pa, .. } => (19, pa.0),
            Violation::StrayHypPage { pa } => (20, pa.0),
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

/// Checks everything listed in the module documentation, on `mem` (the memory lock held by
/// the caller) and the rest of `hyp`. Returns the number of RAM pages the record covers.
///
/// # Errors
/// The first [`Violation`] found.
pub fn check<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>, layout: &Layout) -> Result<u64, Violation> {
    record_entries_valid(mem)?;
    host_s2_maps_only_host_pages(mem)?;
    guest_s2_maps_only_own_regions(mem)?;
    hyp_s1_maps_only_hyp_pages(mem, layout)?;
    tables_in_pool(mem, layout)?;
    tags_clean_marks_are_mapped(mem)?;
    mte_mappings_are_tagged(hyp, mem)?;
    protected_pages_exclusive(mem)?;
    no_orphan_guest_pages(mem)?;
    regions_disjoint(mem)?;
    free_vcpus_reset(hyp, mem)?;
    hyp_borrows_only_message_pages(hyp, mem)?;
    hyp_s1_w_xor_x(mem)?;
    host_s2_memory_types(hyp, mem)?;
    host_s2_allowed_devices(hyp, mem)?;
    host_s2_borrowed_pages(mem)?;
    memcache_pages_are_el2s(mem, layout)?;
    hyp_owns_only_its_region_and_tables(hyp, mem)?;
    Ok(mem.own().ram().size() / PAGE_SIZE)
}

/// Every page of the record with its entry (`None` for a page the record cannot name).
fn record<'m, T: TableMemory>(mem: &'m MemState<'_, T>) -> impl Iterator<Item = (PhysAddr, Option<PageEntry>)> + 'm {
    let ram = mem.own().ram();
    (ram.start.0..ram.end.0).step_by(PAGE_SIZE as usize).map(|pa| (PhysAddr(pa), mem.own().entry(PhysAddr(pa))))
}

/// Runs `f` on every leaf of `table` and returns the first violation it reports.
fn first_leaf_violation(table: &PageTable, tables: &impl TableMemory, mut f: impl FnMut(Leaf) -> Option<Violation>) -> Result<(), Violation> {
    let mut bad = None;
    table.for_each_leaf(tables, &mut |l| {
        if bad.is_none() {
            bad = f(l);
        }
    });
    bad.map_or(Ok(()), Err)
}

/// The pages of a leaf, each with its input address.
fn leaf_pages(l: &Leaf) -> impl Iterator<Item = (u64, PhysAddr)> {
    let (ia, pa) = (l.ia_base, l.pa_base.0);
    (0..l.size / PAGE_SIZE).map(move |i| (ia + i * PAGE_SIZE, PhysAddr(pa + i * PAGE_SIZE)))
}

/// 1. One valid owner per page, and a borrower other than the owner.
fn record_entries_valid<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    for (pa, e) in record(mem) {
        match e {
            Some(e) if e.borrower() != Some(e.owner()) => {}
            _ => return Err(Violation::BadEntry { pa }),
        }
    }
    Ok(())
}

/// 2. The host's stage 2: an identity map, reaching in RAM only what the host may access.
fn host_s2_maps_only_host_pages<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    let (own, ram) = (&mem.own(), mem.own().ram());
    first_leaf_violation(mem.host_s2(), mem.tables(), |l| {
        if l.pa_base.0 != l.ia_base {
            return Some(Violation::HostMapsForbidden { ipa: l.ia_base, pa: l.pa_base });
        }
        if !ram.overlaps(&PhysRange { start: l.pa_base, end: PhysAddr(l.pa_base.0 + l.size) }) {
            return None; // device space (its memory type: `host_s2_memory_types`)
        }
        leaf_pages(&l)
            .find(|&(_, pa)| ram.contains(pa) && !own.can_access(pa, Component::Host))
            .map(|(ipa, pa)| Violation::HostMapsForbidden { ipa, pa })
    })
}

/// 3. Each guest's stage 2: pages of its own regions, which it owns or borrows; a page or a
/// 2 MiB block (every page of it as its regions translate it).
fn guest_s2_maps_only_own_regions<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    for vm in mem.vms.iter() {
        first_leaf_violation(vm.mem.s2(), &vm.mem.table_memory(mem.tables()), |l| {
            if l.level < 2 {
                return Some(Violation::GuestMapsForeign { vm: vm.handle, ipa: l.ia_base, pa: l.pa_base });
            }
            leaf_pages(&l)
                .find(|&(ipa, pa)| vm.mem.translate(ipa) != Some(pa) || !mem.own().can_access(pa, vm.component()))
                .map(|(ipa, pa)| Violation::GuestMapsForeign { vm: vm.handle, ipa, pa })
        })?;
    }
    Ok(())
}

/// 4. EL2's stage 1: in RAM only EL2's pages and pages lent to it; no fixmap slot in use.
fn hyp_s1_maps_only_hyp_pages<T: TableMemory>(mem: &MemState<'_, T>, layout: &Layout) -> Result<(), Violation> {
    first_leaf_violation(mem.hyp_s1(), mem.tables(), |l| {
        if layout.fixmap.is_some_and(|(start, end)| l.ia_base >= start && l.ia_base < end) {
            return Some(Violation::HypMapsForeign { va: l.ia_base, pa: l.pa_base });
        }
        leaf_pages(&l)
            .find(|&(_, pa)| matches!(mem.own().state(pa, Component::Hyp), Some(PageState::SharedOwned | PageState::NoAccess)))
            .map(|(va, pa)| Violation::HypMapsForeign { va, pa })
    })
}

/// 5. Every table page of every table in EL2's pool, but a guest's tables below the root:
/// the pages its memcache handed out, each linked once (so none is handed out again while
/// in use).
fn tables_in_pool<T: TableMemory>(mem: &MemState<'_, T>, layout: &Layout) -> Result<(), Violation> {
    let mut bad = None;
    let in_pool = |pa: PhysAddr| layout.pool.is_none_or(|p| p.contains(pa));
    let mut pool_only = |pa: PhysAddr| {
        if bad.is_none() && !in_pool(pa) {
            bad = Some(Violation::TableOutsidePool { pa });
        }
    };
    mem.host_s2().for_each_table(mem.tables(), &mut pool_only);
    mem.hyp_s1().for_each_table(mem.tables(), &mut pool_only);
    bad.map_or(Ok(()), Err)?;
    for vm in mem.vms.iter() {
        let (root, cache, tables) = (vm.mem.s2().root(), vm.mem.tables(), vm.mem.table_memory(mem.tables()));
        let (mut linked, mut bad) = (0, None);
        vm.mem.s2().for_each_table(&tables, &mut |pa| {
            if pa == root {
                if !in_pool(pa) {
                    bad = bad.or(Some(pa));
                }
                return;
            }
            linked += 1;
            // Handed out, and linked once (a guest's tables are few: counting each one's links
            // is cheap enough for a checker).
            let mut links = 0;
            vm.mem.s2().for_each_table(&tables, &mut |other| links += u64::from(other == pa));
            if cache.position(pa).is_none_or(|p| p >= cache.used()) || links != 1 {
                bad = bad.or(Some(pa));
            }
        });
        // Every page handed out is a table (`map` links each table it takes).
        if linked != cache.used() {
            bad = bad.or(Some(root));
        }
        if let Some(pa) = bad {
            return Err(Violation::TableOutsidePool { pa });
        }
    }
    Ok(())
}

/// 19. A VM's table pages: EL2's alone, mapped by EL2 at their address, in no pool and no
/// other VM's memcache; no more handed out than held.
fn memcache_pages_are_el2s<T: TableMemory>(mem: &MemState<'_, T>, layout: &Layout) -> Result<(), Violation> {
    for vm in mem.vms.iter() {
        let cache = vm.mem.tables();
        let bad = |pa| Violation::TablePageMisplaced { vm: vm.handle, pa };
        if cache.used() > cache.pages() {
            return Err(bad(cache.runs().first().map_or(PhysAddr(0), |r| r.start)));
        }
        for run in cache.runs() {
            for pa in (run.start.0..run.end.0).step_by(PAGE_SIZE as usize).map(PhysAddr) {
                let mapped = mem.hyp_s1().lookup(mem.tables(), pa.0).is_some_and(|l| l.pa_base.0 + (pa.0 - l.ia_base) == pa.0);
                let elsewhere = layout.pool.is_some_and(|p| p.contains(pa)) || mem.vms.iter().any(|o| o.handle != vm.handle && o.mem.tables().holds(pa));
                if mem.own().state(pa, Component::Hyp) != Some(PageState::Owned) || !mapped || elsewhere {
                    return Err(bad(pa));
                }
            }
        }
    }
    Ok(())
}

/// 20. EL2 owns its region's pages and the live VMs' table pages, nothing else.
fn hyp_owns_only_its_region_and_tables<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    for (pa, e) in record(mem) {
        if e.is_some_and(|e| e.owner() == Component::Hyp) && !hyp.hyp_region.contains(pa) && !mem.vms.iter().any(|vm| vm.mem.tables().holds(pa)) {
            return Err(Violation::StrayHypPage { pa });
        }
    }
    Ok(())
}

/// Whether `vm` maps the page at `pa` (through the region that holds it).
fn vm_maps<T: TableMemory>(mem: &MemState<'_, T>, vm: &Vm, pa: PhysAddr) -> bool {
    vm.mem.regions()
        .iter()
        .find(|r| r.phys().contains(pa))
        .is_some_and(|r| {
            let ipa = r.ipa + (pa.0 - r.pa.0);
            vm.mem.lookup(mem.tables(), ipa).is_some_and(|l| l.pa_base.0 + (ipa - l.ia_base) == pa.0)
        })
}

/// 6. A *tags clean* mark only on a page an MTE VM holding it has mapped.
fn tags_clean_marks_are_mapped<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    for (pa, e) in record(mem) {
        let Some(e) = e.filter(|e| e.tags_clean()) else { continue };
        let holds = |vm: &&Vm| vm.mte && (e.owner() == vm.component() || e.borrower() == Some(vm.component()));
        if !mem.vms.iter().filter(holds).any(|vm| vm_maps(mem, vm, pa)) {
            return Err(Violation::StaleTagsClean { pa });
        }
    }
    Ok(())
}

/// 7, 8. What an MTE VM maps has tag storage and tags EL2 cleared.
fn mte_mappings_are_tagged<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    for vm in mem.vms.iter().filter(|vm| vm.mte) {
        first_leaf_violation(vm.mem.s2(), &vm.mem.table_memory(mem.tables()), |l| {
            leaf_pages(&l).find_map(|(ipa, pa)| {
                if hyp.platform.untagged.is_some_and(|u| u.contains(pa)) {
                    Some(Violation::MteNoTagStorage { vm: vm.handle, ipa, pa })
                } else if !mem.own().entry(pa).is_some_and(|e| e.tags_clean()) {
                    Some(Violation::MteTagsNotClean { vm: vm.handle, ipa, pa })
                } else {
                    None
                }
            })
        })?;
    }
    Ok(())
}

/// 9. A protected VM owns every page of its regions, lent to nobody but the host.
fn protected_pages_exclusive<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    for vm in mem.vms.iter().filter(|vm| vm.protected) {
        for r in vm.mem.regions() {
            let mut pages = (r.pa.0..r.phys().end.0).step_by(PAGE_SIZE as usize).map(PhysAddr);
            let ok = |pa: PhysAddr| mem.own().entry(pa).is_some_and(|e| e.owner() == vm.component() && matches!(e.borrower(), None | Some(Component::Host)));
            if let Some(pa) = pages.find(|&pa| !ok(pa)) {
                return Err(Violation::ProtectedPageNotExclusive { vm: vm.handle, pa });
            }
        }
    }
    Ok(())
}

/// 10. Only guests with a live VM own or borrow pages.
fn no_orphan_guest_pages<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    let mut live = [false; MAX_GUEST as usize + 1];
    for vm in mem.vms.iter() {
        if let Component::Guest(n) = vm.component() {
            live[n as usize] = true;
        }
    }
    let orphan = |c: Option<Component>| matches!(c, Some(Component::Guest(n)) if !live[n as usize]);
    for (pa, e) in record(mem) {
        if e.is_some_and(|e| orphan(Some(e.owner())) || orphan(e.borrower())) {
            return Err(Violation::OrphanGuestPage { pa });
        }
    }
    Ok(())
}

/// 11, 12. Regions share no physical page, and one VM's regions no IPA.
fn regions_disjoint<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    let regions = || mem.vms.iter().flat_map(|vm| vm.mem.regions().iter().map(move |r| (vm.handle, r)));
    for (i, (vm_a, a)) in regions().enumerate() {
        for (vm_b, b) in regions().skip(i + 1) {
            if a.phys().overlaps(&b.phys()) {
                return Err(Violation::RegionsOverlapPhys { pa: a.pa.max(b.pa) });
            }
            if vm_a == vm_b && a.ipa < b.ipa + b.size() && b.ipa < a.ipa + a.size() {
                return Err(Violation::RegionsOverlapIpa { vm: vm_a, ipa: a.ipa.max(b.ipa) });
            }
        }
    }
    Ok(())
}

/// 13. The vCPUs of a free VM slot are at reset: nothing of a destroyed VM's lingers.
fn free_vcpus_reset<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    const RESET: VcpuCtx = VcpuCtx::new();
    for slot in (0..MAX_VMS).filter(|&s| !mem.vms.iter().any(|vm| vm.vmid as usize == s + 1)) {
        for (vcpu, v) in hyp.vcpus[slot].iter().enumerate() {
            let bad = Err(Violation::FreeVcpuNotReset { slot, vcpu });
            if v.power.load(Ordering::Acquire) != power::OFF || v.on_entry.load(Ordering::Acquire) != 0 || v.on_context.load(Ordering::Acquire) != 0 {
                return bad;
            }
            // Nor linked SGIs, held or running.
            if v.sgi_linked.load(Ordering::Acquire) || v.sgi_pending.load(Ordering::Acquire) != 0 || v.running_on.load(Ordering::Acquire) != 0 {
                return bad;
            }
            // Claims never wait, so taking one under the memory lock cannot deadlock. A claim
            // held elsewhere is a call with a stale handle that will find no VM and change
            // nothing: the context is then not read.
            if v.claim().is_some_and(|ctx| *ctx != RESET) {
                return bad;
            }
        }
    }
    Ok(())
}

/// 14. EL2 borrows only the registered message pages.
fn hyp_borrows_only_message_pages<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    let registered = |pa: PhysAddr| (0..MAX_CPUS).any(|cpu| hyp.msg.page(cpu) == Ok(pa));
    for (pa, e) in record(mem) {
        if e.is_some_and(|e| e.borrower() == Some(Component::Hyp)) && !registered(pa) {
            return Err(Violation::HypBorrowsNonMessage { pa });
        }
    }
    Ok(())
}

/// 15. EL2's stage 1 is W^X.
fn hyp_s1_w_xor_x<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    let s1 = &mem.hyp_s1();
    first_leaf_violation(s1, mem.tables(), |l| {
        (s1.leaf_writable(l.desc) && s1.leaf_executable(l.desc)).then_some(Violation::HypWritableExecutable { va: l.ia_base })
    })
}

/// 16. The host's stage 2: RAM Normal, the rest Device, no leaf over both.
fn host_s2_memory_types<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    let ram = hyp.platform.ram;
    let s2 = &mem.host_s2();
    first_leaf_violation(s2, mem.tables(), |l| {
        let range = PhysRange { start: PhysAddr(l.ia_base), end: PhysAddr(l.ia_base + l.size) };
        let want = if ram.contains_range(&range) {
            MemType::Normal
        } else if !ram.overlaps(&range) {
            MemType::Device
        } else {
            return Some(Violation::HostWrongMemoryType { ipa: l.ia_base });
        };
        (s2.leaf_mem_type(l.desc) != Some(want)).then_some(Violation::HostWrongMemoryType { ipa: l.ia_base })
    })
}

/// 18. The host maps a page it borrows from a guest as that page alone, read/write, not
/// executable.
fn host_s2_borrowed_pages<T: TableMemory>(mem: &MemState<'_, T>) -> Result<(), Violation> {
    let s2 = mem.host_s2();
    first_leaf_violation(s2, mem.tables(), |l| {
        let range = PhysRange { start: PhysAddr(l.ia_base), end: PhysAddr(l.ia_base + l.size) };
        let borrowed = mem.own().ram().contains_range(&range)
            && (0..l.size / PAGE_SIZE).any(|i| mem.own().state(PhysAddr(l.ia_base + i * PAGE_SIZE), Component::Host) == Some(PageState::SharedBorrowed)
                && mem.own().entry(PhysAddr(l.ia_base + i * PAGE_SIZE)).is_some_and(|e| matches!(e.owner(), Component::Guest(_))));
        (borrowed && (l.size != PAGE_SIZE || s2.leaf_executable(l.desc) || !s2.leaf_writable(l.desc))).then_some(Violation::HostBorrowedPageMapping { ipa: l.ia_base })
    })
}

/// 17. Every host stage-2 leaf outside RAM is device space the host may map.
fn host_s2_allowed_devices<T: TableMemory>(hyp: &Hyp<'_, T>, mem: &MemState<'_, T>) -> Result<(), Violation> {
    let ram = mem.own().ram();
    first_leaf_violation(mem.host_s2(), mem.tables(), |l| {
        let range = PhysRange { start: PhysAddr(l.ia_base), end: PhysAddr(l.ia_base + l.size) };
        (!ram.overlaps(&range) && !hyp.platform.devices.may_map(&range)).then_some(Violation::HostMapsForbiddenDevice { ipa: l.ia_base })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, Fixture, Recorder, HYP_PAGES, RAM_PAGES};
    use crate::mem::pgtable::{Attrs, MemType, Perms};
    use crate::mem::guest::Region;
    use shared_abi::msg::{vm_flags, VmCreate};
    use shared_abi::HypercallId as H;
    use zerocopy::IntoBytes;

    const LAYOUT: Layout = Layout { pool: None, fixmap: None };
    const IPA: u64 = 0x4000_0000;
    const RAM_RWX: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RWX };
    const RAM_RW: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RW };

    fn run_check(f: &Fixture) -> Result<u64, Violation> {
        check(&f.hyp, &f.hyp.mem.lock(), &LAYOUT)
    }

    /// A fixture with a message page (RAM page 0) and one VM with `flags` and `pages` pages of
    /// RAM from page `first`, at [`IPA`]. The state is legal.
    fn one_vm(flags: u64, first: usize, pages: u64) -> (Fixture, u64) {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        let h = create(&mut f, flags);
        f.call(0, H::VmAddMemory, &[h, f.page(first), IPA, pages]).unwrap();
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
        (f, h)
    }

    fn create(f: &mut Fixture, flags: u64) -> u64 {
        let req = VmCreate { nr_vcpus: 2, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 };
        f.ram.0[..32].copy_from_slice(req.as_bytes());
        let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
        crate::testing::give_tables(f, h);
        h
    }

    fn page_range(f: &Fixture, n: usize) -> PhysRange {
        PhysRange::from_size(PhysAddr(f.page(n)), PAGE_SIZE).unwrap()
    }

    #[test]
    fn a_busy_but_correct_state_passes() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        crate::host::trap::host_s2_fault(&f.hyp, f.page(1), &Recorder::default());
        crate::host::trap::host_s2_fault(&f.hyp, 0x0900_0000, &Recorder::default());
        let req = VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::PROTECTED | vm_flags::MTE, sve_vl: 0, reserved: 0 };
        f.ram.0[..32].copy_from_slice(req.as_bytes());
        let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
        f.call(0, H::VmSmcccForward, &[h, 0, 1]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(8), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        let t = (0x24 << 26) | (1 << 25) | 0b000111;
        *rec.exits.borrow_mut() = vec![
            crate::hw::GuestTrap { kind: crate::hw::TrapKind::Sync, esr: t, far: 0, hpfar: 0x4000_0000 >> 8 },
            crate::hw::GuestTrap { kind: crate::hw::TrapKind::Sync, esr: (0x16 << 26) | (1 << 25), far: 0, hpfar: 0 },
        ];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
        // And after it is gone, its vCPU slot included.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
    }

    #[test]
    fn every_violation_has_its_own_code() {
        let pa = PhysAddr(0x1000);
        let all = [
            Violation::BadEntry { pa },
            Violation::HostMapsForbidden { ipa: 0, pa },
            Violation::GuestMapsForeign { vm: 0, ipa: 0, pa },
            Violation::HypMapsForeign { va: 0, pa },
            Violation::TableOutsidePool { pa },
            Violation::StaleTagsClean { pa },
            Violation::MteTagsNotClean { vm: 0, ipa: 0, pa },
            Violation::MteNoTagStorage { vm: 0, ipa: 0, pa },
            Violation::ProtectedPageNotExclusive { vm: 0, pa },
            Violation::OrphanGuestPage { pa },
            Violation::RegionsOverlapPhys { pa },
            Violation::RegionsOverlapIpa { vm: 0, ipa: 0x1000 },
            Violation::FreeVcpuNotReset { slot: 0, vcpu: 0 },
            Violation::HypBorrowsNonMessage { pa },
            Violation::HypWritableExecutable { va: 0x1000 },
            Violation::HostWrongMemoryType { ipa: 0x1000 },
            Violation::HostMapsForbiddenDevice { ipa: 0x1000 },
            Violation::HostBorrowedPageMapping { ipa: 0x1000 },
        ];
        for (i, v) in all.iter().enumerate() {
            assert_eq!(v.code_and_addr().0, i as u64 + 1, "{v:?}");
        }
        assert_eq!(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }.code_and_addr(), (13, 0x301));
    }

    #[test]
    fn a_host_mapping_of_el2_memory_is_found() {
        let f = fixture();
        let el2 = f.hyp.hyp_region.start.0 + 2 * PAGE_SIZE;
        let mut mem = f.hyp.mem.lock();
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.map(tables, el2, PhysAddr(el2), PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostMapsForbidden { ipa: el2, pa: PhysAddr(el2) }));
        let _ = HYP_PAGES;
    }

    #[test]
    fn a_guest_mapping_of_host_memory_is_found() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        let h = create(&mut f, 0);
        let host_page = f.page(20);
        let mut mem = f.hyp.mem.lock();
        let (_, _, _, tables, vms) = mem.parts_mut();
        let vm = vms.iter_mut().next().unwrap();
        vm.mem.map_unchecked(tables, IPA, PhysAddr(host_page), PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::GuestMapsForeign { vm: h, ipa: IPA, pa: PhysAddr(host_page) }));
    }

    #[test]
    fn el2_mapping_host_memory_and_stray_tables_are_found() {
        let f = fixture();
        let host_page = f.page(30);
        {
            let mut mem = f.hyp.mem.lock();
            let (_, _, hyp_s1, tables, _) = mem.parts_mut();
            hyp_s1.map(tables, host_page, PhysAddr(host_page), PAGE_SIZE, Attrs { mem: MemType::Normal, perms: Perms::RW }, 3).unwrap();
            assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HypMapsForeign { va: host_page, pa: PhysAddr(host_page) }));
        }
        let mem = f.hyp.mem.lock();
        let pool = PhysRange::from_size(PhysAddr(0x1000), PAGE_SIZE);
        let layout = Layout { pool, fixmap: None };
        assert!(matches!(check(&f.hyp, &mem, &layout), Err(Violation::HypMapsForeign { .. }) | Err(Violation::TableOutsidePool { .. })));
    }

    #[test]
    fn a_guest_table_the_memcache_would_hand_out_again_is_found() {
        let (f, h) = one_vm(vm_flags::PROTECTED, 8, 2);
        let mut mem = f.hyp.mem.lock();
        let (_, _, _, tables, vms) = mem.parts_mut();
        vms.iter_mut().next().unwrap().mem.map_unchecked(tables, IPA, PhysAddr(f.page(8)), PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
        let used = mem.vms.lookup(h).unwrap().1.mem.tables().used();
        assert!(used >= 1);
        let set = |mem: &mut MemState<'_, _>, n| mem.vms.lookup_mut(h).unwrap().1.mem.set_tables_used(n);
        // The last table linked is a page the memcache has not handed out: it would again.
        set(&mut mem, used - 1);
        assert!(matches!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::TableOutsidePool { .. })));
        // A page handed out that is no table.
        set(&mut mem, used + 1);
        assert!(matches!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::TableOutsidePool { .. })));
        set(&mut mem, used);
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
    }

    #[test]
    fn a_table_page_the_host_owns_and_a_stray_el2_page_are_found() {
        let (f, h) = one_vm(vm_flags::PROTECTED, 8, 2);
        let mut mem = f.hyp.mem.lock();
        let run = mem.vms.lookup(h).unwrap().1.mem.tables().runs()[0];
        let page = PhysRange { start: run.start, end: PhysAddr(run.start.0 + PAGE_SIZE) };
        // A table page handed back to the host while the VM still holds it (EL2 then maps a
        // page of the host's: found by 4 first), or no longer mapped at EL2.
        mem.parts_mut().0.donate(page, Component::Hyp, Component::Host).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HypMapsForeign { va: run.start.0, pa: run.start }));
        mem.parts_mut().0.donate(page, Component::Host, Component::Hyp).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
        let (_, _, hyp_s1, tables, _) = mem.parts_mut();
        hyp_s1.unmap(tables, run.start.0, PAGE_SIZE).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::TablePageMisplaced { vm: h, pa: run.start }));
        let (_, _, hyp_s1, tables, _) = mem.parts_mut();
        hyp_s1.map(tables, run.start.0, run.start, PAGE_SIZE, RAM_RW, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
        // A page EL2 took that is neither its region's nor a VM's table page.
        let stray = page_range(&f, 60);
        mem.parts_mut().0.donate(stray, Component::Host, Component::Hyp).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::StrayHypPage { pa: stray.start }));
    }

    #[test]
    fn a_stale_tags_clean_mark_is_found() {
        let f = fixture();
        let mut mem = f.hyp.mem.lock();
        mem.parts_mut().0.mark_tags_clean(PhysAddr(f.page(40)));
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::StaleTagsClean { pa: PhysAddr(f.page(40)) }));
    }

    #[test]
    fn an_mte_mapping_without_cleared_tags_is_found() {
        let (f, h) = one_vm(vm_flags::MTE, 8, 2);
        let pa = PhysAddr(f.page(9));
        let mut mem = f.hyp.mem.lock();
        let (_, _, _, tables, vms) = mem.parts_mut();
        // Mapped behind EL2's back: the tags were never cleared.
        vms.iter_mut().next().unwrap().mem.map_unchecked(tables, IPA + PAGE_SIZE, pa, PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::MteTagsNotClean { vm: h, ipa: IPA + PAGE_SIZE, pa }));
        // The same mapping in a VM without MTE is legal.
        vms_set_mte(&mut mem, false);
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
    }

    fn vms_set_mte<T: TableMemory>(mem: &mut MemState<'_, T>, mte: bool) {
        for vm in mem.vms.iter_mut() {
            vm.mte = mte;
        }
    }

    #[test]
    fn an_mte_mapping_of_untagged_memory_is_found() {
        let (mut f, h) = one_vm(vm_flags::MTE | vm_flags::PROTECTED, 8, 2);
        let pa = PhysAddr(f.page(8));
        f.hyp.platform.untagged = PhysRange::from_size(pa, PAGE_SIZE);
        let mut mem = f.hyp.mem.lock();
        let (own, _, _, tables, vms) = mem.parts_mut();
        // Tags cleared, but there is no tag storage behind the page.
        own.mark_tags_clean(pa);
        vms.iter_mut().next().unwrap().mem.map_unchecked(tables, IPA, pa, PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::MteNoTagStorage { vm: h, ipa: IPA, pa }));
    }

    #[test]
    fn a_protected_page_lent_to_another_than_the_host_is_found() {
        let (f, h) = one_vm(vm_flags::PROTECTED, 8, 4);
        let pa = PhysAddr(f.page(10));
        let mut mem = f.hyp.mem.lock();
        // Lent to the host (the guest's own MEM_SHARE): legal.
        mem.parts_mut().0.share(page_range(&f, 10), Component::Guest(0), Component::Host).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64));
        // Lent to EL2 or to another guest: never.
        mem.parts_mut().0.unshare(page_range(&f, 10), Component::Guest(0), Component::Host).unwrap();
        mem.parts_mut().0.share(page_range(&f, 10), Component::Guest(0), Component::Guest(1)).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::ProtectedPageNotExclusive { vm: h, pa }));
    }

    #[test]
    fn a_host_mapping_of_a_borrowed_page_other_than_rw_alone_is_found() {
        let (f, _) = one_vm(vm_flags::PROTECTED, 8, 4);
        let pa = f.page(10);
        let mut mem = f.hyp.mem.lock();
        mem.parts_mut().0.share(page_range(&f, 10), Component::Guest(0), Component::Host).unwrap();
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.map(tables, pa, PhysAddr(pa), PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostBorrowedPageMapping { ipa: pa }), "executable");
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.unmap(tables, pa, PAGE_SIZE).unwrap();
        host_s2.map(tables, pa, PhysAddr(pa), PAGE_SIZE, Attrs { mem: MemType::Normal, perms: Perms::RW }, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64), "read/write, that page alone");
    }

    #[test]
    fn a_protected_region_merely_shared_is_found() {
        let (f, h) = one_vm(0, 8, 4);
        let mut mem = f.hyp.mem.lock();
        // A VM made protected after its memory was shared, not donated.
        mem.vms.iter_mut().next().unwrap().protected = true;
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::ProtectedPageNotExclusive { vm: h, pa: PhysAddr(f.page(8)) }));
    }

    #[test]
    fn pages_of_a_guest_without_a_vm_are_found() {
        let f = fixture();
        let mut mem = f.hyp.mem.lock();
        mem.parts_mut().0.donate(page_range(&f, 50), Component::Host, Component::Guest(5)).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::OrphanGuestPage { pa: PhysAddr(f.page(50)) }));
        drop(mem);
        // Lent, not owned: the same.
        let (f, _) = one_vm(0, 8, 1);
        let mut mem = f.hyp.mem.lock();
        mem.parts_mut().0.share(page_range(&f, 60), Component::Host, Component::Guest(1)).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::OrphanGuestPage { pa: PhysAddr(f.page(60)) }));
    }

    #[test]
    fn two_vms_backed_by_one_page_are_found() {
        let (mut f, _) = one_vm(0, 8, 4);
        create(&mut f, 0);
        let mut mem = f.hyp.mem.lock();
        // The second VM names one of the first VM's pages (and maps nothing).
        let second = mem.vms.iter_mut().nth(1).unwrap();
        second.mem.parts_mut().1.push(Region { ipa: IPA, pa: PhysAddr(f.page(10)), pages: 1 });
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::RegionsOverlapPhys { pa: PhysAddr(f.page(10)) }));
    }

    #[test]
    fn overlapping_regions_of_one_vm_are_found() {
        let (f, h) = one_vm(0, 8, 4);
        f.call(0, H::VmAddMemory, &[h, f.page(20), IPA + 0x10_0000, 4]).unwrap();
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
        let mut mem = f.hyp.mem.lock();
        mem.vms.iter_mut().next().unwrap().mem.parts_mut().1[1].ipa = IPA + 3 * PAGE_SIZE;
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::RegionsOverlapIpa { vm: h, ipa: IPA + 3 * PAGE_SIZE }));
    }

    #[test]
    fn a_free_slot_with_leftover_vcpu_state_is_found() {
        let f = fixture();
        let slot = &f.hyp.vcpus[3][1];
        slot.claim().unwrap().x[0] = 0x5EC2E7;
        assert_eq!(run_check(&f), Err(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }));
        slot.claim().unwrap().x[0] = 0;
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
        // A pending MMIO read is state too.
        let access = crate::exception::syndrome::decode_mmio((0x24 << 26) | (1 << 24) | (3 << 22)).unwrap();
        slot.claim().unwrap().pending_mmio = Some(crate::guest::vcpu::PendingMmio { access, esr: 0, far: 0 });
        assert_eq!(run_check(&f), Err(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }));
        slot.claim().unwrap().pending_mmio = None;
        slot.power.store(power::ON, Ordering::Relaxed);
        assert_eq!(run_check(&f), Err(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }));
        slot.power.store(power::OFF, Ordering::Relaxed);
        slot.on_entry.store(0x5000, Ordering::Relaxed);
        assert_eq!(run_check(&f), Err(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }));
        slot.on_entry.store(0, Ordering::Relaxed);
        // A linked SGI held for a destroyed VM's vCPU.
        slot.sgi_pending.store(1 << 3, Ordering::Relaxed);
        assert_eq!(run_check(&f), Err(Violation::FreeVcpuNotReset { slot: 3, vcpu: 1 }));
    }

    #[test]
    fn el2_borrowing_a_page_that_is_no_message_page_is_found() {
        let f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(0)]).unwrap();
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64));
        let mut mem = f.hyp.mem.lock();
        mem.parts_mut().0.share(page_range(&f, 70), Component::Host, Component::Hyp).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HypBorrowsNonMessage { pa: PhysAddr(f.page(70)) }));
    }

    #[test]
    fn a_writable_executable_el2_mapping_is_found() {
        let f = fixture();
        let el2 = f.hyp.hyp_region.start.0 + PAGE_SIZE;
        let mut mem = f.hyp.mem.lock();
        let (_, _, hyp_s1, tables, _) = mem.parts_mut();
        // `map` refuses RWX at EL2; write the descriptor by hand: RW's write permission (AP[2]
        // clear) and RX's execute permission (XN clear), all else equal.
        let rw = hyp_s1.leaf_descriptor(3, PhysAddr(el2), Attrs { mem: MemType::Normal, perms: Perms::RW }).unwrap();
        let rx = hyp_s1.leaf_descriptor(3, PhysAddr(el2), Attrs { mem: MemType::Normal, perms: Perms::RX }).unwrap();
        let entry = hyp_s1.reserve_leaf(tables, el2, 3).unwrap();
        // SAFETY: `entry` points at the (invalid) level-3 entry for `el2` in a table page of
        // the fixture's fake table memory, which outlives this write.
        unsafe { entry.write_volatile(rw) };
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Ok(RAM_PAGES as u64), "RW alone is legal");
        // SAFETY: as above.
        unsafe { entry.write_volatile(rw & rx) };
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HypWritableExecutable { va: el2 }));
    }

    #[test]
    fn host_memory_of_the_wrong_type_is_found() {
        // RAM as Device.
        let f = fixture();
        let pa = f.page(80);
        let mut mem = f.hyp.mem.lock();
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.map(tables, pa, PhysAddr(pa), PAGE_SIZE, Attrs { mem: MemType::Device, perms: Perms::RW }, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostWrongMemoryType { ipa: pa }));
        drop(mem);
        // Device space as Normal.
        let f = fixture();
        let mut mem = f.hyp.mem.lock();
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.map(tables, 0x0900_0000, PhysAddr(0x0900_0000), PAGE_SIZE, RAM_RWX, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostWrongMemoryType { ipa: 0x0900_0000 }));
    }

    #[test]
    fn a_host_mapping_of_a_guarded_page_or_a_dma_master_is_found() {
        let f = fixture();
        for pa in [0x0800_0000, 0x080A_1000, 0x080B_0000] {
            crate::host::trap::host_s2_fault(&f.hyp, pa, &Recorder::default());
        }
        assert_eq!(run_check(&f), Ok(RAM_PAGES as u64), "the distributor and the pages around the guard");
        let mut mem = f.hyp.mem.lock();
        let (_, host_s2, _, tables, _) = mem.parts_mut();
        host_s2.map(tables, 0x080C_0000, PhysAddr(0x080C_0000), PAGE_SIZE, Attrs { mem: MemType::Device, perms: Perms::RW }, 3).unwrap();
        assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostMapsForbiddenDevice { ipa: 0x080C_0000 }));
        drop(mem);
        // fw_cfg (a DMA master), ECAM (guarded) and the ITS: each found.
        for pa in [0x0902_0000, 0x40_1000_0000, 0x0808_0000] {
            let f = fixture();
            let mut mem = f.hyp.mem.lock();
            let (_, host_s2, _, tables, _) = mem.parts_mut();
            host_s2.map(tables, pa, PhysAddr(pa), PAGE_SIZE, Attrs { mem: MemType::Device, perms: Perms::RW }, 3).unwrap();
            assert_eq!(check(&f.hyp, &mem, &LAYOUT), Err(Violation::HostMapsForbiddenDevice { ipa: pa }), "{pa:#x}");
        }
    }
}

#[cfg(test)]
mod properties {
    //! Random sequences of VM hypercalls (through the real dispatcher, with a fake world switch
    //! that plays random guest exits), checking every invariant after every operation. 100
    //! sequences of 1,000 operations: 100,000 per run; proptest shrinks a failure.
    use super::*;
    use crate::testing::{fixture, Fixture, Recorder};
    use crate::hw::{GuestTrap, TrapKind};
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
        SetIrq { vm: usize, vintid: u64, config: u64 },
        IrqState { vm: usize },
        Stats { vm: usize },
        /// The host touches RAM page `page` (a stage-2 fault: mapped if it may, e.g. shared).
        HostTouch { page: usize },
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
            (0usize..6, proptest::collection::vec((prop_oneof![0u8..9, 9u8..12], 0u64..0x10_0000), 1..6)).prop_map(|(vm, exits)| Op::Run { vm, exits }),
            (0usize..1024).prop_map(|page| Op::HostTouch { page }),
            (
                0usize..6,
                prop_oneof![Just(reg::PC), Just(reg::x(1)), Just(0u64), Just(reg::CNTVOFF_EL2), Just(reg::CNTP_CTL_EL0), Just(reg::CNTP_CVAL_EL0)],
                prop_oneof![any::<u64>(), Just(u64::MAX), 0u64..8]
            )
                .prop_map(|(vm, id, value)| Op::SetReg { vm, id, value }),
            // List-register requests: mostly valid ones (they fill the list registers the runs
            // then load), and any value at all.
            (
                0usize..6,
                prop_oneof![0u64..1020, 1020u64..1024, any::<u64>()],
                prop_oneof![
                    (0u64..32, any::<bool>(), 1u64..4, any::<bool>()).prop_map(|(p, g, st, eoi)| p << 3 | (g as u64) << 8 | st << 9 | (eoi as u64) << 11),
                    any::<u64>(),
                    0u64..(1 << 13),
                ]
            )
                .prop_map(|(vm, vintid, config)| Op::SetIrq { vm, vintid, config }),
            (0usize..6).prop_map(|vm| Op::IrqState { vm }),
            (0usize..6).prop_map(|vm| Op::Stats { vm }),
        ]
    }

    /// The guest's `x0..=x3` for exit `kind` at `addr`: for 9, 10, 11 a `MEM_SHARE`,
    /// `MEM_UNSHARE` or `MMIO_GUARD` call (an HVC exit) of a granule in or around the RAM the
    /// `Add`s give (or, for the guard, MMIO, unaligned now and then); zeros otherwise.
    fn call(kind: u8, addr: u64) -> [u64; 4] {
        use shared_abi::guest as abi;
        // Mostly inside the first 512 KiB, where the `Add`s put regions; now and then unaligned.
        let ipa = 0x4000_0000 + (addr & 0x7_F000) + (addr & 0x8_0000) * 8 + (addr & 1 & (addr >> 1)) * 0x10;
        match kind {
            9 => [abi::MEM_SHARE as u64, ipa, 0, 0],
            10 => [abi::MEM_UNSHARE as u64, ipa, 0, 0],
            11 if addr & 2 != 0 => [abi::MMIO_GUARD as u64, 0x0900_0000 + (addr & 0xF000), 0, 0],
            11 => [abi::MMIO_GUARD as u64, ipa, 0, 0],
            _ => [0; 4],
        }
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
            3 => GuestTrap { kind: TrapKind::Sync, esr: (0x01 << 26) | (1 << 25), far: 0, hpfar: 0 },
            // MSR ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 from X(addr % 31): an SGI exit.
            4 => GuestTrap { kind: TrapKind::Sync, esr: sysreg(3, 0, 12, 11, 5 + addr % 3, addr % 32, false), far: 0, hpfar: 0 },
            // CNTP_TVAL/CTL/CVAL_EL0, read or written: emulated in EL2.
            5 => GuestTrap { kind: TrapKind::Sync, esr: sysreg(3, 3, 14, 2, addr % 3, addr % 32, addr & 32 != 0), far: 0, hpfar: 0 },
            // MDSCR_EL1, OSLAR_EL1, a breakpoint register, or an unknown debug encoding.
            6 => {
                let (crn, crm, op2) = [(0, 2, 2), (1, 0, 4), (0, 0, 5), (7, 15, 7)][(addr % 4) as usize];
                GuestTrap { kind: TrapKind::Sync, esr: sysreg(2, 0, crn, crm, op2, addr % 32, addr & 64 != 0), far: 0, hpfar: 0 }
            }
            // Set/way cache maintenance (DC CISW).
            7 => GuestTrap { kind: TrapKind::Sync, esr: sysreg(1, 0, 7, 14, 2, 0, false), far: 0, hpfar: 0 },
            // A pKVM guest memory call ([`call`]).
            9..=11 => GuestTrap { kind: TrapKind::Sync, esr: (0x16 << 26) | (1 << 25), far: 0, hpfar: 0 },
            // A physical interrupt.
            _ => GuestTrap { kind: TrapKind::Irq, esr: 0, far: 0, hpfar: 0 },
        }
    }

    /// The syndrome of a trapped `MRS`/`MSR`/`SYS` (EC 0x18).
    fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
        (0x18 << 26) | (1 << 25) | op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | read as u64
    }

    fn apply(f: &mut Fixture, handles: &mut Vec<u64>, op: &Op) -> Result<[u64; 3], HypError> {
        let h = |i: usize| handles.get(i % handles.len().max(1)).copied().unwrap_or(0);
        match op {
            Op::Create(flags) => {
                let req = VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: *flags, sve_vl: 0, reserved: 0 };
                // Into the message page the test registered (RAM page 990).
                f.ram.0[990 * 4096..990 * 4096 + 32].copy_from_slice(req.as_bytes());
                let r = f.call(0, H::VmCreate, &[]);
                if let Ok([handle, _, _]) = r {
                    handles.push(handle);
                }
                r
            }
            Op::Destroy(i) => {
                let handle = h(*i);
                let r = f.call(0, H::VmDestroy, &[handle]);
                if r.is_ok() {
                    handles.retain(|&x| x != handle);
                }
                r
            }
            Op::Add { vm, page, ipa, pages } => {
                let pa = if *page < 1024 { f.page(*page) } else { f.page(0) - 4096 * (*page as u64 - 1023) };
                f.call(0, H::VmAddMemory, &[h(*vm), pa, *ipa, *pages])
            }
            Op::Run { vm, exits } => {
                let rec = Recorder::default();
                // Enough exits that the run always ends (a WFI at the end exits to the host).
                let mut script: Vec<GuestTrap> = exits.iter().map(|&(k, a)| trap(k, a)).collect();
                script.push(trap(3, 0));
                *rec.exits.borrow_mut() = script;
                *rec.calls.borrow_mut() = exits.iter().map(|&(k, a)| call(k, a)).chain([[0; 4]]).collect();
                f.call_with(&rec, 0, H::VcpuRun, &[h(*vm), 0, 0])
            }
            Op::SetReg { vm, id, value } => f.call(0, H::VcpuSetReg, &[h(*vm), 0, *id, *value, 0]),
            Op::SetIrq { vm, vintid, config } => f.call(0, H::VcpuSetIrq, &[h(*vm), 0, *vintid, *config]),
            Op::IrqState { vm } => f.call(0, H::VcpuIrqState, &[h(*vm), 0]),
            Op::Stats { vm } => f.call(0, H::VcpuStats, &[h(*vm), 0]),
            Op::HostTouch { page } => {
                crate::host::trap::host_s2_fault(&f.hyp, f.page(*page), &Recorder::default());
                Ok([0; 3])
            }
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
                let r = apply(&mut f, &mut handles, op);
                // A list-register request with a bad field is refused whatever the VM.
                if let Op::SetIrq { vintid, config, .. } = op {
                    if let Err(e) = crate::guest::vgic::lr_from_request(*vintid, *config, f.hyp.vgic_caps().unwrap()) {
                        let want = if e == crate::guest::vgic::IrqError::Hardware { HypError::Denied } else { HypError::InvalidArgument };
                        prop_assert_eq!(r, Err(want), "{:?}", op);
                    }
                }
                let mem = f.hyp.mem.lock();
                let r = check(&f.hyp, &mem, &layout);
                prop_assert!(r.is_ok(), "after {:?}: {:?}", op, r);
                // Exactly the pages given away are not the host's.
                let (host, hyp, guests) = mem.own().census();
                prop_assert_eq!(host + hyp + guests, crate::testing::RAM_PAGES as u64);
            }
            // Destroying everything gives every page back to the host.
            for h in handles {
                let _ = f.call(0, H::VmDestroy, &[h]);
            }
            let mem = f.hyp.mem.lock();
            let r = check(&f.hyp, &mem, &layout);
            prop_assert!(r.is_ok(), "after destroying every VM: {:?}", r);
            prop_assert_eq!(mem.own().census().2, 0, "guest-owned pages left after destroying every VM");
            prop_assert_eq!(mem.vms.count(), 0);
        }
    }

    /// One guest memory call or access, for [`guest_memory_calls_follow_a_model`].
    #[derive(Clone, Debug)]
    enum GuestOp {
        /// `MEM_SHARE` (0), `MEM_UNSHARE` (1) or `MMIO_GUARD` (2) of granule `page` (16 and up:
        /// past the VM's RAM), unaligned if `skew`.
        Call { vm: usize, call: u8, page: u64, skew: bool },
        /// The host touches the backing page of the VM's granule `page`.
        HostTouch { vm: usize, page: u64 },
        /// The guest reads its granule `page` (a first touch maps it; past RAM: MMIO).
        GuestTouch { vm: usize, page: u64 },
    }

    fn guest_op() -> impl Strategy<Value = GuestOp> {
        prop_oneof![
            (0usize..2, 0u8..3, 0u64..20, proptest::bool::weighted(0.1)).prop_map(|(vm, call, page, skew)| GuestOp::Call { vm, call, page, skew }),
            (0usize..2, 0u64..16).prop_map(|(vm, page)| GuestOp::HostTouch { vm, page }),
            (0usize..2, 0u64..20).prop_map(|(vm, page)| GuestOp::GuestTouch { vm, page }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Two protected VMs (one with MTE) of 16 pages at IPA 0x4000_0000 make random
        /// `MEM_SHARE`, `MEM_UNSHARE` and `MMIO_GUARD` calls while the host and the guests touch
        /// their pages: every answer is what a model of the shared set says, the host may map
        /// exactly the shared pages, every invariant holds after each step, and destroy leaves
        /// nothing behind.
        #[test]
        fn guest_memory_calls_follow_a_model(ops in proptest::collection::vec(guest_op(), 1..300)) {
            use crate::mem::owner::{Component, PageState};
            use crate::mem::protect::HostFault;
            use shared_abi::guest as abi;
            use shared_abi::msg::exit;
            const IPA: u64 = 0x4000_0000;
            let mut f = fixture();
            f.call(0, H::SetMessagePage, &[0, f.page(990)]).unwrap();
            let layout = Layout { pool: None, fixmap: None };
            let mut vms = Vec::new();
            for (flags, first) in [(vm_flags::PROTECTED, 8usize), (vm_flags::PROTECTED | vm_flags::MTE, 40)] {
                let req = VmCreate { nr_vcpus: 1, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 };
                f.ram.0[990 * 4096..990 * 4096 + 32].copy_from_slice(req.as_bytes());
                let h = f.call(0, H::VmCreate, &[]).unwrap()[0];
                crate::testing::give_tables(&f, h);
                f.call(0, H::VmAddMemory, &[h, f.page(first), IPA, 16]).unwrap();
                vms.push((h, first));
            }
            let mut shared = [[false; 16]; 2];
            // Per VM: the guard is on, and which granules past RAM (16..20) it declared.
            let mut guarded = [(false, [false; 20]); 2];
            let wfi = GuestTrap { kind: TrapKind::Sync, esr: (0x01 << 26) | (1 << 25), far: 0, hpfar: 0 };
            for op in &ops {
                match *op {
                    GuestOp::Call { vm, call, page, skew } => {
                        let (h, _) = vms[vm];
                        let ipa = IPA + page * 4096 + if skew { 8 } else { 0 };
                        let id = [abi::MEM_SHARE, abi::MEM_UNSHARE, abi::MMIO_GUARD][call as usize];
                        let rec = Recorder::default();
                        *rec.exits.borrow_mut() = vec![GuestTrap { kind: TrapKind::Sync, esr: (0x16 << 26) | (1 << 25), far: 0, hpfar: 0 }, wfi];
                        *rec.calls.borrow_mut() = vec![[id as u64, ipa, 0, 0]];
                        let mut reasons = vec![f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap()[0]];
                        if reasons[0] != exit::WFX as u64 {
                            reasons.push(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap()[0]);
                        }
                        let slot = f.hyp.mem.lock().vms.lookup(h).unwrap().0;
                        let answer = f.hyp.vcpus[slot][0].claim().unwrap().x[0];
                        let p = page as usize;
                        let (want, exit) = match call {
                            0 if !skew && p < 16 && !shared[vm][p] => { shared[vm][p] = true; (abi::SUCCESS, Some(exit::MEM_SHARE)) }
                            1 if !skew && p < 16 && shared[vm][p] => { shared[vm][p] = false; (abi::SUCCESS, Some(exit::MEM_UNSHARE)) }
                            2 if !skew && p >= 16 => { guarded[vm].0 = true; guarded[vm].1[p] = true; (abi::SUCCESS, None) }
                            _ => (abi::INVALID_PARAMETER, None),
                        };
                        prop_assert_eq!(answer, want, "{:?}", op);
                        let want_reasons: Vec<u64> = exit.into_iter().map(u64::from).chain([exit::WFX as u64]).collect();
                        prop_assert_eq!(reasons, want_reasons, "{:?}", op);
                    }
                    GuestOp::HostTouch { vm, page } => {
                        let pa = f.page(vms[vm].1 + page as usize);
                        let r = crate::host::trap::host_s2_fault(&f.hyp, pa, &Recorder::default());
                        let want = if shared[vm][page as usize] { HostFault::Retry } else { HostFault::Inject };
                        prop_assert_eq!(r, want, "{:?}", op);
                    }
                    GuestOp::GuestTouch { vm, page } => {
                        let (h, _) = vms[vm];
                        let ipa = IPA + page * 4096;
                        let rec = Recorder::default();
                        // A 4-byte load with a valid syndrome (x1), then a WFI.
                        let load = GuestTrap { kind: TrapKind::Sync, esr: (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (1 << 16) | 0b000111, far: ipa, hpfar: ipa >> 8 };
                        *rec.exits.borrow_mut() = vec![load, wfi];
                        let r = f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap()[0];
                        // RAM maps and resumes; MMIO exits unless the guard is on (then an abort
                        // is injected and the guest runs on to its WFI).
                        let (on, declared) = guarded[vm];
                        let want = if page < 16 || (on && !declared[page as usize]) { exit::WFX } else { exit::MMIO };
                        prop_assert_eq!(r, want as u64, "{:?}", op);
                        if r == exit::MMIO as u64 {
                            f.call_with(&Recorder { exits: std::cell::RefCell::new(vec![wfi]), ..Recorder::default() }, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
                        }
                    }
                }
                let mem = f.hyp.mem.lock();
                let r = check(&f.hyp, &mem, &layout);
                prop_assert!(r.is_ok(), "after {:?}: {:?}", op, r);
                for (vm, &(_, first)) in vms.iter().enumerate() {
                    for p in 0..16 {
                        let state = mem.own().state(PhysAddr(f.page(first + p)), Component::Host);
                        let want = if shared[vm][p] { PageState::SharedBorrowed } else { PageState::NoAccess };
                        prop_assert_eq!(state, Some(want), "VM {} page {} after {:?}", vm, p, op);
                    }
                }
            }
            for (h, _) in vms {
                f.call(0, H::VmDestroy, &[h]).unwrap();
            }
            let mem = f.hyp.mem.lock();
            prop_assert!(check(&f.hyp, &mem, &layout).is_ok());
            prop_assert_eq!(mem.own().census().2, 0);
        }
    }
}
