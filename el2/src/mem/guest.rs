//! A guest's memory as EL2 records it: its stage 2 and the regions the host gave it. Read by
//! anyone; changed only by [`super::protect`] (the fields are private to `mem`).

use super::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use super::memcache::{GuestTablesRef, Memcache};
use super::pgtable::{Leaf, PageTable, TableMemory};
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

/// Most runs of granules a VM can declare with `MMIO_GUARD` (adjacent granules make one run).
pub const MAX_GUARDED_RUNS: usize = 32;

/// The MMIO a guest declared with `MMIO_GUARD` ([`shared_abi::guest::MMIO_GUARD`]): once on,
/// only an access to a declared granule may reach the host as an MMIO exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioGuard {
    pub(super) on: bool,
    /// Declared IPA runs `[start, end)`, page aligned, sorted, neither overlapping nor adjacent.
    pub(super) runs: ArrayVec<(u64, u64), MAX_GUARDED_RUNS>,
}

impl MmioGuard {
    /// Whether the guest turned the guard on (by declaring a first granule).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Whether an access to `ipa` outside the guest's RAM may be an MMIO exit to the host.
    pub fn allows(&self, ipa: u64) -> bool {
        !self.on || self.runs.iter().any(|&(s, e)| s <= ipa && ipa < e)
    }

    /// Declares the page at `page` (aligned) and turns the guard on. `false`: no room for a
    /// new run (nothing changed). Declaring a declared page again is no change.
    pub(super) fn add(&mut self, page: u64) -> bool {
        let end = page + PAGE_SIZE;
        let at = self.runs.iter().position(|&(s, _)| s > page).unwrap_or(self.runs.len());
        let joins_prev = at > 0 && self.runs[at - 1].1 >= page;
        let joins_next = at < self.runs.len() && self.runs[at].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[at - 1].1 = self.runs[at].1;
                self.runs.remove(at);
            }
            (true, false) => self.runs[at - 1].1 = self.runs[at - 1].1.max(end),
            (false, true) => self.runs[at].0 = page,
            (false, false) => {
                if self.runs.try_insert(at, (page, end)).is_err() {
                    return false;
                }
            }
        }
        self.on = true;
        true
    }
}

/// A guest's memory: its stage 2 and the table pages the host gave for it, the regions the
/// host gave it, and the MMIO it declared.
#[derive(Debug)]
pub struct GuestMemory {
    pub(super) s2: PageTable,
    pub(super) tables: Memcache,
    pub(super) regions: ArrayVec<Region, MAX_REGIONS>,
    pub(super) mmio_guard: MmioGuard,
}

impl GuestMemory {
    /// The guest's stage 2.
    pub fn s2(&self) -> &PageTable {
        &self.s2
    }

    /// The table pages the host gave for its stage 2 (`VM_TOPUP_TABLES`).
    pub fn tables(&self) -> &Memcache {
        &self.tables
    }

    /// The stage 2's table memory, for walks: the root in EL2's `pool`, the rest donated.
    pub fn table_memory<'a, T: TableMemory>(&'a self, pool: &'a T) -> GuestTablesRef<'a, T> {
        GuestTablesRef { pool, cache: &self.tables }
    }

    /// The stage-2 leaf that maps `ipa`, if any (`pool`: EL2's, which holds the root).
    pub fn lookup<T: TableMemory>(&self, pool: &T, ipa: u64) -> Option<Leaf> {
        self.s2.lookup(&self.table_memory(pool), ipa)
    }

    /// Its regions, in the order they were added.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The MMIO the guest declared.
    pub fn mmio_guard(&self) -> &MmioGuard {
        &self.mmio_guard
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

    /// Maps in the stage 2 with no check, tables from the memcache: for tests that build broken
    /// states on purpose.
    #[cfg(test)]
    pub(crate) fn map_unchecked<T: TableMemory>(&mut self, pool: &mut T, ia: u64, pa: PhysAddr, size: u64, attrs: super::pgtable::Attrs, level: u8) -> Result<(), super::pgtable::PtError> {
        self.s2.map(&mut super::memcache::GuestTables { pool, cache: &mut self.tables }, ia, pa, size, attrs, level)
    }

    /// Sets how many table pages the memcache has handed out: for tests that build broken
    /// states on purpose.
    #[cfg(test)]
    pub(crate) fn set_tables_used(&mut self, used: u64) {
        self.tables.used = used;
    }

    /// Both parts, writable: for tests that build broken states on purpose.
    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut PageTable, &mut ArrayVec<Region, MAX_REGIONS>) {
        (&mut self.s2, &mut self.regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_granules_merge_into_sorted_runs() {
        let mut g = MmioGuard::default();
        assert!(g.allows(0x0900_0000) && !g.is_on(), "off: everything may exit");
        assert!(g.add(0x0900_0000));
        assert!(g.allows(0x0900_0FFF) && !g.allows(0x0900_1000) && !g.allows(0x08FF_FFFF));
        assert!(g.add(0x0900_2000));
        assert!(g.add(0x0900_1000), "fills the hole");
        assert_eq!(g.runs.as_slice(), &[(0x0900_0000, 0x0900_3000)]);
        assert!(g.add(0x0900_1000), "again: no change");
        assert!(g.add(0x08FF_F000));
        assert!(g.add(0x0A00_0000));
        assert_eq!(g.runs.as_slice(), &[(0x08FF_F000, 0x0900_3000), (0x0A00_0000, 0x0A00_1000)]);
        for i in 2..MAX_GUARDED_RUNS as u64 {
            assert!(g.add(0x1000_0000 + i * 0x2000));
        }
        assert!(!g.add(0x2000_0000), "full");
        assert!(!g.allows(0x2000_0000));
        assert!(g.add(0x1000_0000 + 2 * 0x2000 + PAGE_SIZE), "joining a run needs no room");
    }
}
