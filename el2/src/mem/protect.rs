//! Every change of page ownership and page tables, as named transitions.
//!
//! Each transition runs under the memory lock (the caller holds [`MemState`] mutably), checks
//! every page it will touch, and only then commits: the ownership record, the stage-2 or
//! stage-1 tables, and the TLB or cache maintenance that makes the change safe. A failure
//! after the checks would be an EL2 bug, never an error the host sees.
//!
//! | transition | ownership | tables |
//! |---|---|---|
//! | [`MemState::host_share_hyp`] | host owned → host shared-owned, EL2 shared-borrowed | EL2 stage 1 map |
//! | [`MemState::host_give_guest`], protected VM: donate | host owned → guest owned | host stage 2 unmap (TLBI) |
//! | [`MemState::host_give_guest`], other VM: share | host owned → host shared-owned, guest shared-borrowed | — |
//! | [`MemState::host_donate_tables`] (`VM_TOPUP_TABLES`) | host owned → EL2 owned (the VM's table pages) | host stage 2 unmap (TLBI), EL2 stage 1 map |
//! | [`MemState::guest_map_on_fault`] | (tags cleared once per change of hands) | guest stage 2 map |
//! | [`MemState::guest_reclaim_scrub`] | guest owned → scrubbed → host owned; shares undone; table pages zeroed → host owned | guest stage 2 freed (TLBI); EL2 stage 1 unmap of the table pages (TLBI) |
//! | [`MemState::host_map_on_fault`] | — | host stage 2 map (largest allowed block) |
//! | [`MemState::guest_share_host`] (`MEM_SHARE`) | guest owned → guest shared-owned, host shared-borrowed | — (the host maps it on fault, read/write, page by page) |
//! | [`MemState::guest_unshare_host`] (`MEM_UNSHARE`) | guest shared-owned → guest owned, host shared-borrowed → no access | host stage 2 unmap (TLBI) |
//! | [`MemState::guest_mmio_guard`] (`MMIO_GUARD`) | — (the granule is not RAM) | — (the VM's declared MMIO) |

use super::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use super::owner::{Component, Ownership, PageState};
use super::pgtable::{level_size, Attrs, Format, MemType, PageTable, Perms, TableMemory};
use super::guest::{GuestMemory, Region};
use super::memcache::{GuestTables, Memcache};
use super::MemState;
use crate::guest::vm::Vm;
use crate::host::devices::{Guard, HostDevices};
use crate::guest::vm::Measured;
use crate::hw::{CacheOps, PageIo, Tlb};
use arrayvec::ArrayVec;
use shared_abi::HypError;

const HOST_RAM: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RWX };
/// A page a guest shared with the host: read/write, never executable.
const HOST_BORROWED: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RW };
const HOST_DEVICE: Attrs = Attrs { mem: MemType::Device, perms: Perms::RW };
const HYP_SHARED: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RW };
/// A guest's stage-2 table page in EL2's stage 1.
const HYP_TABLES: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RW };
const GUEST_RAM: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RWX };
/// A level-2 block of a 4 KiB-granule stage 2: what a guest's first touch maps where it can.
const BLOCK: u64 = 2 << 20;

/// Outcome of [`MemState::guest_map_on_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPage {
    /// The page is guest RAM and mapped (now or before).
    Mapped,
    /// The page is guest RAM, but mapping it needs this many more table pages than the VM's
    /// memcache holds: the host gives them (`VM_TOPUP_TABLES`) and runs the vCPU again.
    NeedTables(u64),
    /// The page is guest RAM but could not be mapped (an EL2 bug).
    NoMemory,
    /// An MTE VM's page without allocation-tag storage behind it.
    Untagged(PhysAddr),
    /// Not guest RAM: an MMIO exit to the host.
    NotRam,
    /// Not guest RAM, and not MMIO the guest declared while its MMIO guard is on: nothing of
    /// the access may reach the host.
    Unguarded,
}

/// What the pages of a `VM_ADD_MEMORY` hold, for the VM's measurement
/// ([`shared_abi::measure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// The host's content (an image, a device tree): hashed page by page, kept.
    Measured,
    /// Nothing to keep: a protected VM gets the pages zeroed.
    Zeroed,
    /// The handover region: zeroed for a protected VM; EL2 writes the handover at the seal.
    Handover,
}

/// Why a guest's memory call (`MEM_SHARE`, `MEM_UNSHARE`, `MMIO_GUARD`) was refused. The guest
/// is answered `INVALID_PARAMETER` for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The address is not granule aligned.
    NotAligned,
    /// Not the guest's RAM (`MEM_SHARE`, `MEM_UNSHARE`).
    NotRam,
    /// The page is not in the state the call needs: not owned by the guest and unshared
    /// (`MEM_SHARE`), not shared with the host (`MEM_UNSHARE`), or the VM is not protected.
    WrongState,
    /// The guest's RAM, or outside its IPA space (`MMIO_GUARD`).
    NotMmio,
    /// No room to record another run of declared MMIO (`MMIO_GUARD`).
    NoRoom,
}

/// What happened to a host stage-2 fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFault {
    /// A mapping now exists (made now, or by another CPU): retry the access.
    Retry,
    /// The host may not access this address: inject an abort.
    Inject,
    /// A guarded device page, never mapped: EL2 performs a valid data access itself
    /// ([`crate::host::gicr::emulate`], [`crate::host::pciconfig::emulate`]) and injects an
    /// abort for anything else.
    Emulate(Guard),
}

/// Decides how to map a host access to `ipa` that hit no stage-2 entry: the largest block
/// (1 GiB, 2 MiB or 4 KiB) around it that the host may access with a single memory type.
///
/// RAM is mapped only where the ownership record gives the host access, and never in a block
/// that contains a page it may not access. Outside RAM, only the device space `devices`
/// allows is mapped, in blocks inside one allowed range that hold no guarded page (a guarded
/// page itself is never mapped); everything else, DMA-capable devices among it, never is.
/// `None`: inject an abort (or, on a guarded page, emulate).
pub fn host_fault_mapping(ipa: u64, ipa_bits: u8, own: &super::owner::Ownership<'_>, devices: &HostDevices) -> Option<(u64, u64, Attrs)> {
    if ipa >> ipa_bits != 0 {
        return None;
    }
    let ram = own.ram();
    if ram.contains(PhysAddr(ipa)) {
        match own.state(PhysAddr(ipa), Component::Host) {
            // A guest's page it shared: that page alone, read/write.
            Some(PageState::SharedBorrowed) => return Some((ipa & !(PAGE_SIZE - 1), PAGE_SIZE, HOST_BORROWED)),
            Some(PageState::Owned | PageState::SharedOwned) => {}
            _ => return None,
        }
        let size = level_size(2);
        let base = ipa & !(size - 1);
        let block = PhysRange { start: PhysAddr(base), end: PhysAddr(base + size) };
        if ram.contains_range(&block) && own.owns_all(block, Component::Host) {
            return Some((base, size, HOST_RAM));
        }
        return Some((ipa & !(PAGE_SIZE - 1), PAGE_SIZE, HOST_RAM));
    }
    for level in 1..=3 {
        let size = level_size(level);
        let base = ipa & !(size - 1);
        let block = PhysRange { start: PhysAddr(base), end: PhysAddr(base + size) };
        if !block.overlaps(&ram) && devices.may_map(&block) && block.end.0 <= 1 << ipa_bits {
            return Some((base, size, HOST_DEVICE));
        }
    }
    None
}

impl<T: TableMemory> MemState<'_, T> {
    /// **Host share with hyp** (a message page): the host keeps the page, EL2 maps it in its
    /// stage 1 and may read and write it from now on.
    ///
    /// # Errors
    /// `NotOwned` unless the host owns `pa` outright; `NoMemory` if EL2's stage 1 needs a
    /// table page and none is left.
    pub fn host_share_hyp(&mut self, pa: PhysAddr, tlb: &impl Tlb) -> Result<(), HypError> {
        let page = PhysRange::from_size(pa, PAGE_SIZE).ok_or(HypError::OutOfRange)?;
        if self.own.state(pa, Component::Host) != Some(PageState::Owned) {
            return Err(HypError::NotOwned);
        }
        // EL2 needs the page in its stage 1; this is the only step that can fail for lack of
        // memory, so it comes before the commit (a stray intermediate table is harmless).
        self.hyp_s1.map(&mut self.tables, pa.0, pa, PAGE_SIZE, HYP_SHARED, 3)?;
        tlb.hyp_s1_mapped();
        // Commit. Checked above under the same lock, so this cannot fail.
        self.own.share(page, Component::Host, Component::Hyp).map_err(HypError::from)
    }

    /// A new, empty guest stage 2 for `ipa_bits` of IPA (the FEAT_S2FWB format if `fwb`),
    /// unless that would dip into the `reserve` of table pages kept for the host's stage 2.
    ///
    /// # Errors
    /// `NoMemory`.
    pub fn guest_memory_new(&mut self, fwb: bool, ipa_bits: u8, reserve: usize) -> Result<GuestMemory, HypError> {
        if self.tables.free_pages() <= reserve {
            return Err(HypError::NoMemory);
        }
        let format = if fwb { Format::Stage2Fwb } else { Format::Stage2 };
        let s2 = PageTable::new(&mut self.tables, format, ipa_bits).map_err(|_| HypError::NoMemory)?;
        Ok(GuestMemory { s2, tables: Memcache::default(), regions: ArrayVec::new(), mmio_guard: Default::default() })
    }

    /// **Host donate tables** (`VM_TOPUP_TABLES`): the pages of `run` become EL2's, table pages
    /// for the stage 2 of VM `handle` ([`Memcache`]): out of the host's stage 2 (on every CPU),
    /// into EL2's stage 1 at their physical address, zeroed. They go back to the host at
    /// `VM_DESTROY`, and the tables EL2's stage 1 needed for them go back to its pool. Those
    /// come from the pool, but never from the `reserve` kept for the host's stage 2: a host
    /// that gives much table memory uses up the pool above the reserve, which only refuses its
    /// own later calls (`NoMemory`).
    ///
    /// Checked in this order: the VM (`InvalidHandle`), room for another run unless `run` joins
    /// the last (`NoCapacity`), the host owning every page outright (`NotOwned`: not shared,
    /// lent, EL2's or a guest's), EL2's pool (`NoMemory`).
    pub fn host_donate_tables(&mut self, handle: u64, run: PhysRange, reserve: usize, hw: &(impl Tlb + PageIo)) -> Result<(), HypError> {
        let (_, vm) = self.vms.lookup_mut(handle)?;
        if vm.mem.tables.runs.is_full() && vm.mem.tables.runs.last().is_none_or(|l| l.end != run.start) {
            return Err(HypError::NoCapacity);
        }
        let pages = run.size() / PAGE_SIZE;
        if (0..pages).any(|i| self.own.state(PhysAddr(run.start.0 + i * PAGE_SIZE), Component::Host) != Some(PageState::Owned)) {
            return Err(HypError::NotOwned);
        }
        // EL2's stage 1 needs at most one new level-3 table per 2 MiB the run touches, one
        // level-2 table per GiB, and a level-1 table: checked first, so that the map below
        // cannot fail half way.
        let need = [512, 512 * 512, 512 * 512 * 512].iter().map(|per| pages.div_ceil(*per) + 1).sum::<u64>();
        if (self.tables.free_pages() as u64) < reserve as u64 + need {
            return Err(HypError::NoMemory);
        }
        // Commit. The host loses the pages first, on every CPU.
        self.own.donate(run, Component::Host, Component::Hyp)?;
        if let Ok(Some(_)) = self.host_s2.unmap(&mut self.tables, run.start.0, run.size()) {
            hw.host_s2_unmapped();
        }
        let mapped = self.hyp_s1.map(&mut self.tables, run.start.0, run.start, run.size(), HYP_TABLES, 3);
        // Room checked above (and the VM cannot go while the lock is held).
        if mapped.is_err() || !vm.mem.tables.add(run) {
            // An EL2 bug. Undone, so that EL2 maps nothing the host owns, and fails closed: the
            // pages stay EL2's if EL2 cannot unmap them.
            log::error!("VM {handle:#x}: table pages {run:?} not taken: {mapped:?}");
            let unmapped = self.hyp_s1.unmap(&mut self.tables, run.start.0, run.size()).is_ok();
            let _ = self.hyp_s1.prune(&mut self.tables, run.start.0, run.size());
            hw.hyp_s1_unmapped();
            if unmapped {
                let _ = self.own.donate(run, Component::Hyp, Component::Host);
            }
            return Err(HypError::NoMemory);
        }
        hw.hyp_s1_mapped();
        // What the host left there is never read as a table entry (tables start empty).
        const ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        for i in 0..pages {
            hw.write_page(PhysAddr(run.start.0 + i * PAGE_SIZE), &ZERO);
        }
        Ok(())
    }

    /// **Host donate to guest** (a protected VM) or **host share with guest** (any other):
    /// `region` becomes memory of VM `handle` at its IPA. A donation takes every host mapping
    /// of the pages away, on every CPU, before it returns. Guest mappings come at first touch
    /// ([`Self::guest_map_on_fault`]).
    ///
    /// Before the VM's first run, the region then joins its measurement as `content` says
    /// ([`Content`]): hashed, or (a protected VM's) zeroed, or zeroed as the handover region.
    /// The pages are hashed after the donation, so the host can no longer change what was
    /// measured; hashing and zeroing run under the memory lock (a long call for a large
    /// region is the host's own cost).
    ///
    /// Checked in this order: the VM (`InvalidHandle`), content to measure or a handover after
    /// the first run (`Denied`), a second handover region (`InvalidArgument`), a protected VM
    /// that has run (`Denied`: sealed), the IPA range (`OutOfRange`), overlap with its regions
    /// (`InvalidArgument`), room for a region (`NoCapacity`), an MTE VM given pages in
    /// `untagged` (`InvalidArgument`), the host owning every page (`NotOwned`).
    pub fn host_give_guest(&mut self, handle: u64, region: Region, content: Content, untagged: Option<PhysRange>, hw: &(impl Tlb + CacheOps + PageIo)) -> Result<(), HypError> {
        let (_, vm) = self.vms.lookup_mut(handle)?;
        let building = matches!(vm.measurement, Measured::Building(_));
        if content != Content::Zeroed && !building {
            // Content measured, or a handover written, after the seal: neither can be.
            return Err(HypError::Denied);
        }
        if content == Content::Handover && vm.handover.is_some() {
            return Err(HypError::InvalidArgument);
        }
        let phys = region.phys();
        if vm.protected && vm.ran {
            // A protected VM is sealed once it has run: the host may not change what the
            // guest's memory is (checked under the lock `VCPU_RUN` sets `ran` under).
            return Err(HypError::Denied);
        }
        let ipa_end = region.ipa.checked_add(region.size()).ok_or(HypError::OutOfRange)?;
        if ipa_end > 1u64 << vm.mem.s2.ia_bits() {
            return Err(HypError::OutOfRange);
        }
        if vm.mem.overlaps(region.ipa, region.size()) {
            return Err(HypError::InvalidArgument);
        }
        if vm.mem.regions.is_full() {
            return Err(HypError::NoCapacity);
        }
        if vm.mte && untagged.is_some_and(|u| u.overlaps(&phys)) {
            // An MTE guest must never get Normal cacheable memory without tag storage: refused
            // here, and (should it get there some other way) stopped at the first touch.
            return Err(HypError::InvalidArgument);
        }
        let me = vm.component();
        if vm.protected {
            self.own.donate(phys, Component::Host, me)?;
            // The host loses the pages: drop every host mapping of them, on every CPU.
            if let Ok(Some(_)) = self.host_s2.unmap(&mut self.tables, phys.start.0, phys.size()) {
                hw.host_s2_unmapped();
            }
        } else {
            self.own.share(phys, Component::Host, me)?;
        }
        vm.mem.regions.push(region);
        if let Measured::Building(m) = &mut vm.measurement {
            let page = |p: u64| (region.ipa + p * PAGE_SIZE, PhysAddr(region.pa.0 + p * PAGE_SIZE));
            match content {
                Content::Measured => {
                    let mut buf = [0u8; PAGE_SIZE as usize];
                    for p in 0..region.pages {
                        let (ipa, pa) = page(p);
                        hw.read_page(pa, &mut buf);
                        m.page(ipa, &buf);
                    }
                }
                Content::Zeroed | Content::Handover => {
                    if vm.protected {
                        // What the host left there never reaches the guest unmeasured.
                        for p in 0..region.pages {
                            let pa = page(p).1;
                            hw.scrub_page(pa, !untagged.is_some_and(|u| u.contains(pa)));
                        }
                    }
                    if content == Content::Handover {
                        m.handover(region.ipa, region.pages);
                        vm.handover = Some((region.ipa, region.pa));
                    } else {
                        m.zero(region.ipa, region.pages);
                    }
                }
            }
        }
        Ok(())
    }

    /// **Seal the measurement** at vCPU 0's first `VCPU_RUN` of VM `handle`: its registers `x`,
    /// `pc`, `pstate` close it, and the handover (the measurement and the secrets derived from
    /// it and `boot_secret`) is written into the handover region, if the VM has one. Nothing
    /// is measured after this.
    pub fn seal_measurement(&mut self, handle: u64, x: &[u64; 31], pc: u64, pstate: u64, boot_secret: &[u8; 32], io: &impl PageIo) {
        let Ok((_, vm)) = self.vms.lookup_mut(handle) else { return };
        let Measured::Building(m) = &vm.measurement else { return };
        let value = m.clone().seal(x, pc, pstate);
        vm.measurement = Measured::Sealed(value);
        if let Some((_, pa)) = vm.handover {
            let handover = shared_abi::measure::Handover::new(value, boot_secret);
            let mut page = [0u8; PAGE_SIZE as usize];
            page[..core::mem::size_of::<shared_abi::measure::Handover>()].copy_from_slice(zerocopy::IntoBytes::as_bytes(&handover));
            io.write_page(pa, &page);
        }
    }

    /// **Guest map on fault**: maps the memory of VM `handle` holding `ipa` in its stage 2 if
    /// it is guest memory: the whole 2 MiB block around it where one region backs all of it
    /// with 2 MiB-aligned contiguous pages and nothing of it is mapped yet
    /// ([`Self::guest_block`]), else the page. Clears an MTE VM's tags the first time a page is
    /// its own and, for a VM without FWB, cleans what it maps to the PoC (a block as one,
    /// through the CPU's block slot). New tables come from the VM's memcache: [`GuestPage::NeedTables`] when it has too
    /// few, before anything changes. Refuses an MTE VM memory in `untagged`.
    ///
    /// A guest's mapping never changes while the VM lives (`MEM_SHARE` and `MEM_UNSHARE` change
    /// the host's access, not the guest's; memory goes back to the host only at destroy), so a
    /// block is never split or merged.
    pub fn guest_map_on_fault(&mut self, handle: u64, ipa: u64, untagged: Option<PhysRange>, hw: &(impl Tlb + CacheOps)) -> GuestPage {
        let Ok((_, vm)) = self.vms.lookup_mut(handle) else { return GuestPage::NotRam };
        let Some(pa) = vm.mem.translate(ipa) else {
            return if vm.mem.mmio_guard.allows(ipa) { GuestPage::NotRam } else { GuestPage::Unguarded };
        };
        if !self.own.can_access(pa, vm.component()) {
            // Regions are only recorded after a successful donation or share: an EL2 bug.
            log::error!("VM {handle:#x}: region page {pa:?} not the guest's");
            return GuestPage::NoMemory;
        }
        let page = ipa & !(PAGE_SIZE - 1);
        if vm.mem.lookup(&self.tables, page).is_some() {
            return GuestPage::Mapped;
        }
        if vm.mte && untagged.is_some_and(|u| u.contains(pa)) {
            // An MTE guest may only get Normal cacheable memory that can hold tags.
            return GuestPage::Untagged(pa);
        }
        let (ia, range, level) = match Self::guest_block(vm, &self.own, &self.tables, ipa, untagged) {
            Some((ia, base)) => (ia, PhysRange { start: base, end: PhysAddr(base.0 + BLOCK) }, 2u8),
            None => (page, PhysRange { start: PhysAddr(pa.0 & !(PAGE_SIZE - 1)), end: PhysAddr((pa.0 & !(PAGE_SIZE - 1)) + PAGE_SIZE) }, 3),
        };
        // One new table for each level between where the walk ends and the leaf's. Checked
        // before the tags are cleared, so that a refusal changes nothing.
        let need = u64::from(level.saturating_sub(vm.mem.s2.walk_level(&vm.mem.table_memory(&self.tables), ia)));
        if vm.mem.tables.free() < need {
            return GuestPage::NeedTables(need - vm.mem.tables.free());
        }
        let pages = || (range.start.0..range.end.0).step_by(PAGE_SIZE as usize).map(PhysAddr);
        // Only tags nobody else left: cleared once per change of ownership (the donated or
        // shared data is the host's and is kept). Marked only once the mapping exists, so a
        // *tags clean* mark is only ever on a page the VM has mapped.
        let tags_clean = |p| self.own.entry(p).is_some_and(|e| e.tags_clean());
        // A block none of whose tags are clean yet: all at once.
        let whole_block = vm.mte && level == 2 && !pages().any(tags_clean);
        // Tags that could not be cleared (cannot happen: boot parks without its fixmap slots,
        // and an MTE VM exists only where every CPU has FEAT_MTE2) stop the mapping: the
        // previous owner's tags must never reach the guest.
        if whole_block && !hw.clear_tags_block(range.start) {
            return GuestPage::NoMemory;
        }
        for p in pages() {
            if vm.mte && !whole_block && !tags_clean(p) && !hw.clear_tags(p) {
                return GuestPage::NoMemory;
            }
            if !vm.fwb && level == 3 {
                // Without FWB a guest may see the page Non-cacheable (MMU off, or its own
                // mapping): DRAM must hold what the host (or the tag clearing above) left in
                // the caches, and no dirty line of the host's may later be written back over
                // the guest's data. Once per page and VM: the mapping stays until destroy. (A
                // block's pages all at once, below.)
                hw.clean_inval_poc(p);
            }
        }
        if !vm.fwb && level == 2 {
            hw.clean_inval_poc_block(range.start);
        }
        let mut tables = GuestTables { pool: &mut self.tables, cache: &mut vm.mem.tables };
        match vm.mem.s2.map(&mut tables, ia, range.start, range.size(), GUEST_RAM, level) {
            Ok(()) => {
                if vm.mte {
                    for p in pages() {
                        self.own.mark_tags_clean(p);
                    }
                }
                hw.guest_s2_mapped();
                GuestPage::Mapped
            }
            Err(_) => GuestPage::NoMemory,
        }
    }

    /// The 2 MiB block of `vm` around `ipa` as `(IPA, first backing page)`, if it can be mapped
    /// whole: its regions (one, or several the host added side by side, as a VMM gives a VM's
    /// RAM in runs) back every page of it with contiguous pages as aligned as the IPA (a block
    /// descriptor maps 2 MiB of contiguous, aligned output), the guest may access every page,
    /// none is in `untagged` for an MTE VM, and no page of it is mapped yet (the walk ends at
    /// level 2 or above: `map` never replaces a table).
    fn guest_block(vm: &Vm, own: &Ownership<'_>, tables: &T, ipa: u64, untagged: Option<PhysRange>) -> Option<(u64, PhysAddr)> {
        let ia = ipa & !(BLOCK - 1);
        let base = vm.mem.translate(ia)?;
        if base.0 % BLOCK != 0 || vm.mem.s2.walk_level(&vm.mem.table_memory(tables), ia) > 2 {
            return None;
        }
        let block = PhysRange { start: base, end: PhysAddr(base.0 + BLOCK) };
        if vm.mte && untagged.is_some_and(|u| u.overlaps(&block)) {
            return None;
        }
        let me = vm.component();
        let whole = (0..BLOCK / PAGE_SIZE).map(|i| i * PAGE_SIZE).all(|off| {
            let pa = PhysAddr(base.0 + off);
            vm.mem.translate(ia + off) == Some(pa) && own.can_access(pa, me)
        });
        whole.then_some((ia, base))
    }

    /// **Guest reclaim with scrub** (`VM_DESTROY`'s memory part, after its checks): a
    /// protected VM's pages are scrubbed (zeroed, their tags too where the page has tag
    /// storage, i.e. is not in `untagged`, and cleaned to the PoC) and go back to the host; a
    /// shared VM's are unshared; the stage 2 goes, with its TLB entries; its table pages are
    /// zeroed, leave EL2's stage 1 (on every CPU) and go back to the host.
    pub fn guest_reclaim_scrub(&mut self, mut vm: Vm, untagged: Option<PhysRange>, hw: &(impl Tlb + CacheOps)) {
        let handle = vm.handle;
        let me = vm.component();
        let mut unmapped = false;
        for r in &vm.mem.regions {
            if vm.protected {
                // Pages the guest shared come back first: out of the host's stage 2 (and its
                // TLBs, below) before they are scrubbed.
                for p in 0..r.pages {
                    let page = PhysRange { start: PhysAddr(r.pa.0 + p * PAGE_SIZE), end: PhysAddr(r.pa.0 + (p + 1) * PAGE_SIZE) };
                    if self.own.entry(page.start).and_then(|e| e.borrower()) == Some(Component::Host) {
                        let _ = self.own.unshare(page, me, Component::Host);
                        unmapped |= matches!(self.host_s2.unmap(&mut self.tables, page.start.0, PAGE_SIZE), Ok(Some(_)));
                    }
                }
            }
        }
        if unmapped {
            hw.host_s2_unmapped();
        }
        for r in &vm.mem.regions {
            if vm.protected {
                for p in 0..r.pages {
                    let pa = PhysAddr(r.pa.0 + p * PAGE_SIZE);
                    // Zeroed and cleaned to the PoC, FWB or not (see `scrub_page`).
                    hw.scrub_page(pa, !untagged.is_some_and(|u| u.contains(pa)));
                }
                if self.own.donate(r.phys(), me, Component::Host).is_err() {
                    log::error!("VM {handle:#x}: region {r:?} not owned by the guest at destroy");
                }
            } else if self.own.unshare(r.phys(), Component::Host, me).is_err() {
                log::error!("VM {handle:#x}: region {r:?} not shared at destroy");
            }
        }
        hw.flush_guest_tlb(vm.mem.vttbr(vm.vmid), vm.mem.s2.ia_bits(), vm.mem.s2.start_level());
        let runs = vm.mem.tables.runs.clone();
        vm.mem.s2.destroy(&mut GuestTables { pool: &mut self.tables, cache: &mut vm.mem.tables });
        // No walker can reach the table pages now (the VMID's entries are gone above): zeroed
        // (what the guest's layout was stays EL2's), out of EL2's stage 1 with the tables that
        // mapped them (freed to the pool, which nothing can allocate from before the TLBI
        // below: the memory lock is held), on every CPU, back to the host. A run EL2 could not
        // unmap (an EL2 bug) stays EL2's.
        let mut unmapped = [false; super::memcache::MAX_TABLE_RUNS];
        for (run, done) in runs.iter().zip(&mut unmapped) {
            for pa in (run.start.0..run.end.0).step_by(PAGE_SIZE as usize) {
                hw.scrub_page(PhysAddr(pa), false);
            }
            *done = self.hyp_s1.unmap(&mut self.tables, run.start.0, run.size()).is_ok();
            if !*done {
                log::error!("VM {handle:#x}: table pages {run:?} not unmapped at EL2: kept");
            }
            let _ = self.hyp_s1.prune(&mut self.tables, run.start.0, run.size());
        }
        if !runs.is_empty() {
            hw.hyp_s1_unmapped();
        }
        for run in runs.iter().zip(unmapped).filter(|(_, done)| *done).map(|(run, _)| run) {
            if self.own.donate(*run, Component::Hyp, Component::Host).is_err() {
                log::error!("VM {handle:#x}: table pages {run:?} not EL2's at destroy");
            }
        }
    }

    /// The backing page of granule `ipa` of protected VM `handle`, and the VM's component.
    fn protected_guest_page(&mut self, handle: u64, ipa: u64) -> Result<(PhysRange, Component), Refused> {
        let (_, vm) = self.vms.lookup(handle).map_err(|_| Refused::WrongState)?;
        if !vm.protected {
            return Err(Refused::WrongState);
        }
        if ipa % PAGE_SIZE != 0 {
            return Err(Refused::NotAligned);
        }
        let pa = vm.mem.translate(ipa).ok_or(Refused::NotRam)?;
        Ok((PhysRange { start: pa, end: PhysAddr(pa.0 + PAGE_SIZE) }, vm.component()))
    }

    /// **Guest share with host** (`MEM_SHARE` of protected VM `handle`): the granule at `ipa`,
    /// guest RAM the guest owns and has not lent, becomes readable and writable by the host,
    /// which maps it on its next fault. The guest keeps its own mapping.
    ///
    /// # Errors
    /// [`Refused`]: not aligned, not the guest's RAM, or not owned and unshared.
    pub fn guest_share_host(&mut self, handle: u64, ipa: u64) -> Result<(), Refused> {
        let (page, me) = self.protected_guest_page(handle, ipa)?;
        let clean = self.own.entry(page.start).is_some_and(|e| e.tags_clean());
        self.own.share(page, me, Component::Host).map_err(|_| Refused::WrongState)?;
        self.keep_tags_clean(page.start, clean);
        Ok(())
    }

    /// A guest's share or unshare changes no owner and leaves the guest's mapping: the tags
    /// EL2 cleared when it first mapped the page are still the only ones that page had before
    /// the guest used it, so its *tags clean* mark (which the transition dropped) stays.
    fn keep_tags_clean(&mut self, pa: PhysAddr, clean: bool) {
        if clean {
            self.own.mark_tags_clean(pa);
        }
    }

    /// **Guest unshare from host** (`MEM_UNSHARE`): the granule at `ipa` that protected VM
    /// `handle` shared is the guest's alone again. The host's mapping of it is gone, on every
    /// CPU, before this returns (and so before the guest runs on). Called in the guest's run,
    /// with its stage 2 (and VMID) loaded.
    ///
    /// # Errors
    /// [`Refused`]: not aligned, not the guest's RAM, or not shared with the host.
    pub fn guest_unshare_host(&mut self, handle: u64, ipa: u64, tlb: &impl Tlb) -> Result<(), Refused> {
        let (page, me) = self.protected_guest_page(handle, ipa)?;
        let clean = self.own.entry(page.start).is_some_and(|e| e.tags_clean());
        self.own.unshare(page, me, Component::Host).map_err(|_| Refused::WrongState)?;
        self.keep_tags_clean(page.start, clean);
        // The host maps a page it borrows page by page (`host_fault_mapping`), never in a
        // block, so this removes exactly that page. The invalidation is for the host's VMID
        // (0, as `arch::host::HostConfig` loads it), not the guest's loaded one.
        if let Ok(Some(_)) = self.host_s2.unmap(&mut self.tables, page.start.0, PAGE_SIZE) {
            tlb.host_s2_unmapped_from_guest(self.host_s2.root().0);
        }
        Ok(())
    }

    /// **Guest MMIO guard** (`MMIO_GUARD` of protected VM `handle`): declares the granule at
    /// `ipa`, outside the guest's RAM and inside its IPA space, as MMIO the host may emulate,
    /// and turns the VM's guard on (see [`GuestPage::Unguarded`]).
    ///
    /// # Errors
    /// [`Refused`]: not aligned, RAM or outside the IPA space, or no room left.
    pub fn guest_mmio_guard(&mut self, handle: u64, ipa: u64) -> Result<(), Refused> {
        let (_, vm) = self.vms.lookup_mut(handle).map_err(|_| Refused::WrongState)?;
        if !vm.protected {
            return Err(Refused::WrongState);
        }
        if ipa % PAGE_SIZE != 0 {
            return Err(Refused::NotAligned);
        }
        if ipa >> vm.mem.s2.ia_bits() != 0 || vm.mem.overlaps(ipa, PAGE_SIZE) {
            return Err(Refused::NotMmio);
        }
        if vm.mem.mmio_guard.add(ipa) { Ok(()) } else { Err(Refused::NoRoom) }
    }

    /// **Host map on fault**: a host stage-2 *translation* fault on `ipa` outside the guarded
    /// device pages of `devices`: maps the largest block [`host_fault_mapping`] allows.
    pub fn host_map_on_fault(&mut self, ipa: u64, devices: &HostDevices, tlb: &impl Tlb) -> HostFault {
        if self.host_s2.lookup(&self.tables, ipa).is_some() {
            return HostFault::Retry;
        }
        let Some((_, size, attrs)) = host_fault_mapping(ipa, self.host_s2.ia_bits(), &self.own, devices) else {
            return HostFault::Inject;
        };
        // A table may already sit where the block would go: left by an earlier split (a page
        // of the block was given away, the rest mapped page by page, and the page came back).
        // `map` never replaces a table, so map only as much as the table's entry covers; every
        // aligned part of an allowed block is allowed too.
        let level = (1..=3).find(|&l| level_size(l) == size).unwrap_or(3).max(self.host_s2.walk_level(&self.tables, ipa));
        let size = level_size(level);
        let base = ipa & !(size - 1);
        match self.host_s2.map(&mut self.tables, base, PhysAddr(base), size, attrs, level) {
            Ok(()) => {
                tlb.host_s2_mapped();
                HostFault::Retry
            }
            Err(e) => {
                // The pool is sized for the worst case of a host identity map; running out is
                // an EL2 bug or misconfiguration, not something the host can cause.
                log::error!("host stage 2: cannot map {base:#x}+{size:#x}: {e:?}");
                HostFault::Inject
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::owner::{Ownership, PageEntry};
    use crate::testing::GICR;

    /// Device space for tests: the GiB below RAM and the GiB from 4 MiB into RAM's.
    fn open_devices(ram: &PhysRange) -> HostDevices {
        let mut d = HostDevices::default();
        d.allow(0, 1 << 30, ram).unwrap();
        d.allow(0x4040_0000, 0x3FC0_0000, ram).unwrap();
        d
    }

    #[test]
    fn fault_policy_respects_ownership_and_ram_boundaries() {
        let mut entries = vec![PageEntry::default(); 1024];
        let ram = PhysRange::from_size(PhysAddr(0x4000_0000), 1024 * PAGE_SIZE).unwrap();
        let mut own = Ownership::new(ram, &mut entries).unwrap();
        let d = open_devices(&ram);
        // All host: 2 MiB blocks.
        assert_eq!(host_fault_mapping(0x4000_1234, 40, &own, &d), Some((0x4000_0000, 2 << 20, HOST_RAM)));
        // One page in the first block donated away: that block is mapped page by page.
        own.donate(PhysRange::from_size(PhysAddr(0x4010_0000), PAGE_SIZE).unwrap(), Component::Host, Component::Hyp).unwrap();
        assert_eq!(host_fault_mapping(0x4000_1234, 40, &own, &d), Some((0x4000_1000, PAGE_SIZE, HOST_RAM)));
        assert_eq!(host_fault_mapping(0x4010_0000, 40, &own, &d), None);
        assert_eq!(host_fault_mapping(0x4020_0000, 40, &own, &d), Some((0x4020_0000, 2 << 20, HOST_RAM)));
        // Device space: the GiB below RAM is one block; the GiB holding RAM uses smaller ones.
        assert_eq!(host_fault_mapping(0x0900_0000, 40, &own, &d), Some((0, 1 << 30, HOST_DEVICE)));
        assert_eq!(host_fault_mapping(0x4040_0000, 40, &own, &d), Some((0x4040_0000, 2 << 20, HOST_DEVICE)));
        assert_eq!(host_fault_mapping(1 << 40, 40, &own, &d), None);
        // Nothing outside the allowed ranges.
        assert_eq!(host_fault_mapping(0x8000_0000, 40, &own, &d), None);
        assert_eq!(host_fault_mapping(0x0900_0000, 40, &own, &HostDevices::default()), None);
    }

    /// QEMU `virt`'s device space as EL2 reads it from the device tree (1 GiB of RAM).
    fn qemu_devices() -> HostDevices {
        crate::platform::parse(crate::testing::QEMU_VIRT_DTB).unwrap().devices
    }

    #[test]
    fn the_host_maps_no_dma_master_of_qemu_virt() {
        let mut entries = vec![PageEntry::default(); 1024];
        let ram = PhysRange::from_size(PhysAddr(0x4000_0000), 1024 * PAGE_SIZE).unwrap();
        let own = Ownership::new(ram, &mut entries).unwrap();
        let d = qemu_devices();
        for (pa, what) in [
            (0x0902_0010, "fw_cfg's DMA address register"),
            (0x0902_0000, "fw_cfg"),
            (0x0808_0080, "the ITS (GITS_CBASER)"),
            (0x0A00_0000, "a virtio-mmio transport"),
            (0x0A00_3E00, "the last virtio-mmio transport"),
            (0x0C00_0000, "the platform bus"),
            (0x0000_1000, "the flash"),
            (0x40_1000_8004, "PCI configuration space"),
        ] {
            assert_eq!(host_fault_mapping(pa, 40, &own, &d), None, "{what} at {pa:#x}");
        }
        assert_eq!(d.guard(0x40_1000_8004), Some(Guard::PciConfig));
        assert_eq!(d.guard(0x0902_0010), None);
    }

    #[test]
    fn the_host_maps_the_devices_it_needs_in_the_largest_blocks_allowed() {
        let mut entries = vec![PageEntry::default(); 1024];
        let ram = PhysRange::from_size(PhysAddr(0x4000_0000), 1024 * PAGE_SIZE).unwrap();
        let own = Ownership::new(ram, &mut entries).unwrap();
        let d = qemu_devices();
        let page = |pa: u64| Some((pa & !(PAGE_SIZE - 1), PAGE_SIZE, HOST_DEVICE));
        assert_eq!(host_fault_mapping(0x0900_0018, 40, &own, &d), page(0x0900_0000), "the UART");
        assert_eq!(host_fault_mapping(0x0901_0000, 40, &own, &d), page(0x0901_0000), "the RTC");
        assert_eq!(host_fault_mapping(0x0903_0000, 40, &own, &d), page(0x0903_0000), "the GPIO");
        assert_eq!(host_fault_mapping(0x0800_0000, 40, &own, &d), page(0x0800_0000), "the distributor");
        assert_eq!(host_fault_mapping(0x080B_0080, 40, &own, &d), page(0x080B_0080), "SGI_base");
        assert_eq!(host_fault_mapping(0x080A_1000, 40, &own, &d), page(0x080A_1000));
        assert_eq!(host_fault_mapping(0x1000_0000, 40, &own, &d), Some((0x1000_0000, 2 << 20, HOST_DEVICE)), "PCI memory window");
        assert_eq!(host_fault_mapping(0x3EFF_0000, 40, &own, &d), page(0x3EFF_0000), "PCI I/O window");
        assert_eq!(host_fault_mapping(0x80_0000_0000, 40, &own, &d), Some((0x80_0000_0000, 1 << 30, HOST_DEVICE)), "64-bit window");
        // The guarded redistributor pages themselves: never.
        for pa in [0x080A_0000, 0x080A_0FFC, 0x080C_0070, 0x08FE_0000] {
            assert_eq!(host_fault_mapping(pa, 40, &own, &d), None, "{pa:#x}");
        }
        // Whatever is asked, a mapping never covers a guarded page or leaves the allowed ranges.
        for ipa in (0..0x1000_0000u64).step_by(0x1_0000).chain((0x0800_0000..0x0920_0000).step_by(0x1000)) {
            if let Some((base, size, _)) = host_fault_mapping(ipa, 40, &own, &d) {
                let block = PhysRange::from_size(PhysAddr(base), size).unwrap();
                assert!(!crate::host::gicr::overlaps_guarded(&GICR, &block), "{ipa:#x}: {base:#x}+{size:#x}");
                assert!(d.mmio.iter().any(|r| r.contains_range(&block)), "{ipa:#x}: {base:#x}+{size:#x}");
            }
        }
    }
}
