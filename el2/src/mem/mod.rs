//! Memory: addresses, the ownership record, page tables, the table pool, and the state the
//! memory lock guards.
//!
//! The only code that changes the ownership record, the host stage 2, a guest stage 2 or EL2's
//! stage 1 is in this module: the fields of [`MemState`] and [`GuestMemory`] are private to it,
//! and every change is a named check-then-commit transition in [`protect`]. Everyone else reads.

pub mod addr;
pub mod owner;
pub mod pgtable;
pub mod pool;
pub mod protect;

use crate::guest::vm::VmTable;
use addr::{PhysAddr, PhysRange, PAGE_SIZE};
use arrayvec::ArrayVec;
use owner::{Component, OwnError, Ownership};
use pgtable::{PageTable, TableMemory};

/// Most memory regions per VM.
pub const MAX_REGIONS: usize = 16;
/// Everything the memory lock guards.
pub struct MemState<'a, T: TableMemory> {
    /// Who owns each page of RAM.
    own: Ownership<'a>,
    /// The host's stage 2, an identity map built lazily from [`MemState::own`].
    host_s2: PageTable,
    /// EL2's own stage 1.
    hyp_s1: PageTable,
    /// Where table pages come from.
    tables: T,
    /// Every VM.
    pub vms: VmTable,
}

impl<'a, T: TableMemory> MemState<'a, T> {
    /// The state at boot, from `own` (all RAM the host's), the empty host stage 2, EL2's
    /// stage 1 and the table pool, with no VM: EL2 takes `hyp_region` for itself.
    ///
    /// # Errors
    /// `hyp_region` is not page-aligned RAM the host owns.
    pub fn new(mut own: Ownership<'a>, host_s2: PageTable, hyp_s1: PageTable, tables: T, hyp_region: PhysRange) -> Result<Self, OwnError> {
        own.donate(hyp_region, Component::Host, Component::Hyp)?;
        Ok(Self { own, host_s2, hyp_s1, tables, vms: VmTable::default() })
    }

    /// Who owns each page of RAM.
    pub fn own(&self) -> &Ownership<'a> {
        &self.own
    }

    /// The host's stage 2.
    pub fn host_s2(&self) -> &PageTable {
        &self.host_s2
    }

    /// EL2's stage 1.
    pub fn hyp_s1(&self) -> &PageTable {
        &self.hyp_s1
    }

    /// The table pool.
    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// Every part, writable: for tests that build broken states on purpose.
    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut Ownership<'a>, &mut PageTable, &mut PageTable, &mut T, &mut VmTable) {
        (&mut self.own, &mut self.host_s2, &mut self.hyp_s1, &mut self.tables, &mut self.vms)
    }
}

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

/// A guest's memory: its stage 2 and the regions the host gave it.
#[derive(Debug)]
pub struct GuestMemory {
    s2: PageTable,
    regions: ArrayVec<Region, MAX_REGIONS>,
}

impl GuestMemory {
    /// The guest's stage 2.
    pub fn s2(&self) -> &PageTable {
        &self.s2
    }

    /// Its regions, in the order they were added.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The backing page of `ipa`, if it is guest memory.
    pub fn translate(&self, ipa: u64) -> Option<PhysAddr> {
        self.regions
            .iter()
            .find(|r| ipa >= r.ipa && ipa - r.ipa < r.size())
            .map(|r| PhysAddr(r.pa.0 + ((ipa - r.ipa) & !(PAGE_SIZE - 1))))
    }

    /// Whether `ipa..ipa + size` overlaps a region.
    pub fn overlaps(&self, ipa: u64, size: u64) -> bool {
        self.regions.iter().any(|r| ipa < r.ipa + r.size() && r.ipa < ipa + size)
    }

    /// `VTTBR_EL2` for this stage 2 under `vmid`.
    pub fn vttbr(&self, vmid: u8) -> u64 {
        self.s2.root().0 | (vmid as u64) << 48
    }

    /// Both parts, writable: for tests that build broken states on purpose.
    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut PageTable, &mut ArrayVec<Region, MAX_REGIONS>) {
        (&mut self.s2, &mut self.regions)
    }
}
