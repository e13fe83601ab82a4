//! EL2's page pool: the pages its translation tables are made of.
//!
//! Place in the flow: below the page tables. The pool is a fixed range inside EL2's own memory
//! (never host-reachable), handed out a page at a time with a bitmap, so a host that makes EL2
//! build tables can at worst exhaust the pool (an error it gets back), never reach EL2 memory
//! outside it. EL2 identity-maps its memory, so a page's physical address is also its EL2
//! virtual address.

use crate::mem::addr::{PhysAddr, PAGE_SIZE};
use crate::mem::pgtable::TableMemory;

/// Most pages one pool manages.
pub const MAX_POOL_PAGES: usize = 4096;

/// A bitmap allocator over `[base, base + nr * PAGE_SIZE)`.
pub struct PagePool {
    base: PhysAddr,
    nr: usize,
    used: [u64; MAX_POOL_PAGES / 64],
    in_use: usize,
}

impl PagePool {
    /// A pool over `nr` pages at `base`.
    ///
    /// # Safety
    /// `[base, base + nr * PAGE_SIZE)` must be memory that EL2 owns exclusively, mapped
    /// read-write at the same virtual address, and used for nothing else for the pool's life.
    pub const unsafe fn new(base: PhysAddr, nr: usize) -> Self {
        let nr = if nr > MAX_POOL_PAGES { MAX_POOL_PAGES } else { nr };
        Self { base, nr, used: [0; MAX_POOL_PAGES / 64], in_use: 0 }
    }

    /// Pages handed out and not returned.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pages in the pool.
    pub fn capacity(&self) -> usize {
        self.nr
    }

    /// The memory the pool hands out.
    pub fn range(&self) -> (PhysAddr, u64) {
        (self.base, self.nr as u64 * PAGE_SIZE)
    }
}

impl TableMemory for PagePool {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        let i = (0..self.nr).find(|&i| self.used[i / 64] & (1 << (i % 64)) == 0)?;
        self.used[i / 64] |= 1 << (i % 64);
        self.in_use += 1;
        let pa = PhysAddr(self.base.0 + i as u64 * PAGE_SIZE);
        let p = self.table_ptr(pa);
        // SAFETY: by `new`'s contract the page is EL2-exclusive, mapped RW at `pa`, and not in
        // use (its bit was clear), so nobody else holds a reference to it.
        unsafe { core::ptr::write_bytes(p, 0, (PAGE_SIZE / 8) as usize) };
        Some(pa)
    }

    fn free_table(&mut self, pa: PhysAddr) {
        let off = pa.0.wrapping_sub(self.base.0);
        let i = (off / PAGE_SIZE) as usize;
        // A bad free is an EL2 bug: ignore it rather than corrupt the bitmap.
        if off.is_multiple_of(PAGE_SIZE) && i < self.nr && self.used[i / 64] & (1 << (i % 64)) != 0 {
            self.used[i / 64] &= !(1 << (i % 64));
            self.in_use -= 1;
        } else {
            log::error!("pool: bad free of {pa:?}");
        }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        pa.0 as *mut u64
    }

    fn free_pages(&self) -> usize {
        self.nr - self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Pages([u8; 4 * 4096]);

    #[test]
    fn allocates_zeroed_pages_until_empty_then_reuses() {
        let mut mem = Box::new(Pages([0xAA; 4 * 4096]));
        let base = PhysAddr(mem.0.as_mut_ptr() as u64);
        // SAFETY: the test owns `mem`, and the pool identity-maps it in this process.
        let mut pool = unsafe { PagePool::new(base, 4) };
        let pages: Vec<_> = (0..4).map(|_| pool.alloc_table().unwrap()).collect();
        assert_eq!(pool.alloc_table(), None);
        assert_eq!(pool.in_use(), 4);
        assert!(mem.0.iter().all(|&b| b == 0), "zeroed on allocation");
        pool.free_table(pages[2]);
        assert_eq!(pool.alloc_table(), Some(pages[2]));
        pool.free_table(PhysAddr(base.0 + 1));
        pool.free_table(PhysAddr(base.0 + 4 * 4096));
        assert_eq!(pool.in_use(), 4, "bad frees change nothing");
    }
}
