//! A guest's memory as EL2 records it: its stage 2 and the regions the host gave it. Read by
//! anyone; changed only by [`super::protect`] (the fields are private to `mem`).

use super::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use super::pgtable::PageTable;
use arrayvec::ArrayVec;

/// Most memory regions per VM.
pub const MAX_REGIONS: usize = 16;
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
    pub(super) s2: PageTable,
    pub(super) regions: ArrayVec<Region, MAX_REGIONS>,
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
