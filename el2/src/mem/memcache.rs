//! A guest's stage-2 table memory: pages the host donated with `VM_TOPUP_TABLES`, as pKVM's
//! memcache. Read by anyone; changed only by [`super::protect`].
//!
//! Place in the flow: below a guest's stage 2. Only a VM's root table comes from EL2's own pool
//! (one per VM, at `VM_CREATE`); every table below it comes from here, so EL2's pool bounds the
//! number of VMs, never their memory. A guest's mappings never change while the VM lives, so
//! its tables are never freed before `VM_DESTROY`: handing pages out is a bump through the
//! donated runs, and the pages go back to the host, zeroed, all at once at destroy.

use super::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use super::pgtable::TableMemory;
use arrayvec::ArrayVec;

/// Most runs of donated table pages per VM (a run given next to the last one joins it).
pub const MAX_TABLE_RUNS: usize = shared_abi::MAX_TABLE_RUNS;

/// The table pages a VM holds: runs of host-donated pages, EL2-owned and mapped in EL2's
/// stage 1 at their physical address, zeroed when donated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memcache {
    /// The donated runs, in the order they were given.
    pub(super) runs: ArrayVec<PhysRange, MAX_TABLE_RUNS>,
    /// Pages handed out as tables: the first `used` pages of the runs, in order.
    pub(super) used: u64,
}

impl Memcache {
    /// The donated runs.
    pub fn runs(&self) -> &[PhysRange] {
        &self.runs
    }

    /// Pages donated.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.size() / PAGE_SIZE).sum()
    }

    /// Pages handed out as tables.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Pages not yet handed out.
    pub fn free(&self) -> u64 {
        self.pages() - self.used
    }

    /// Where `pa` is in the order pages are handed out, if it is one of the donated pages.
    pub fn position(&self, pa: PhysAddr) -> Option<u64> {
        let mut before = 0;
        for r in &self.runs {
            if r.contains(pa) {
                return Some(before + (pa.0 - r.start.0) / PAGE_SIZE);
            }
            before += r.size() / PAGE_SIZE;
        }
        None
    }

    /// Whether `pa` is one of the donated pages.
    pub fn holds(&self, pa: PhysAddr) -> bool {
        self.runs.iter().any(|r| r.contains(pa))
    }

    /// Records `run` (checked and donated by the caller). `false`: no room for another run
    /// (nothing changed). A run that starts where the last one ends joins it.
    pub(super) fn add(&mut self, run: PhysRange) -> bool {
        if let Some(last) = self.runs.last_mut() {
            if last.end == run.start {
                last.end = run.end;
                return true;
            }
        }
        self.runs.try_push(run).is_ok()
    }

    /// The next page not handed out, now handed out.
    fn take(&mut self) -> Option<PhysAddr> {
        let mut n = self.used;
        for r in &self.runs {
            let pages = r.size() / PAGE_SIZE;
            if n < pages {
                self.used += 1;
                return Some(PhysAddr(r.start.0 + n * PAGE_SIZE));
            }
            n -= pages;
        }
        None
    }
}

/// A guest's stage-2 table memory while its tables change: new tables from its [`Memcache`];
/// the root, EL2's, back to `pool` when the stage 2 is destroyed.
pub(super) struct GuestTables<'a, T: TableMemory> {
    pub pool: &'a mut T,
    pub cache: &'a mut Memcache,
}

impl<T: TableMemory> TableMemory for GuestTables<'_, T> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        // Zeroed when donated, and never handed out twice.
        self.cache.take()
    }

    fn free_table(&mut self, pa: PhysAddr) {
        // Only `PageTable::destroy` frees a guest's tables: the donated pages go back to the
        // host with the VM (`guest_reclaim_scrub`), the root to EL2's pool.
        if !self.cache.holds(pa) {
            self.pool.free_table(pa);
        }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        // EL2 maps donated table pages at their physical address.
        if self.cache.holds(pa) { pa.0 as *mut u64 } else { self.pool.table_ptr(pa) }
    }

    fn free_pages(&self) -> usize {
        self.cache.free() as usize
    }
}

/// A guest's stage-2 table memory for reading (walks, lookups): allocates nothing.
pub struct GuestTablesRef<'a, T: TableMemory> {
    pub(super) pool: &'a T,
    pub(super) cache: &'a Memcache,
}

impl<T: TableMemory> TableMemory for GuestTablesRef<'_, T> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        None
    }

    fn free_table(&mut self, pa: PhysAddr) {
        log::error!("guest tables: a free of {pa:?} through a reader");
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        if self.cache.holds(pa) { pa.0 as *mut u64 } else { self.pool.table_ptr(pa) }
    }

    fn free_pages(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, pages: u64) -> PhysRange {
        PhysRange::from_size(PhysAddr(start), pages * PAGE_SIZE).unwrap()
    }

    #[test]
    fn hands_out_every_page_once_in_order_and_joins_adjacent_runs() {
        let mut c = Memcache::default();
        assert!(c.add(run(0x10_0000, 2)));
        assert!(c.add(run(0x10_2000, 1)), "adjacent: joins");
        assert_eq!(c.runs().len(), 1);
        assert!(c.add(run(0x20_0000, 1)));
        assert_eq!((c.pages(), c.used(), c.free()), (4, 0, 4));
        let got: Vec<_> = core::iter::from_fn(|| c.take()).map(|p| p.0).collect();
        assert_eq!(got, [0x10_0000, 0x10_1000, 0x10_2000, 0x20_0000]);
        assert_eq!((c.used(), c.free()), (4, 0));
        assert!(c.holds(PhysAddr(0x10_2FFF)) && !c.holds(PhysAddr(0x10_3000)));
        assert!(c.add(run(0x30_0000, 1)));
        assert_eq!(c.take(), Some(PhysAddr(0x30_0000)), "a top-up after running dry");
    }

    #[test]
    fn refuses_a_run_past_its_capacity() {
        let mut c = Memcache::default();
        for i in 0..MAX_TABLE_RUNS as u64 {
            assert!(c.add(run(0x100_0000 + i * 0x2000, 1)));
        }
        let before = c.clone();
        assert!(!c.add(run(0x200_0000, 1)));
        assert_eq!(c, before, "nothing changed");
        assert!(c.add(run(0x100_0000 + (MAX_TABLE_RUNS as u64 - 1) * 0x2000 + PAGE_SIZE, 1)), "joining the last needs no room");
    }
}
