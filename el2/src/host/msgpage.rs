//! Message pages: one host page per CPU, shared with EL2 at set-up, through which calls pass
//! what does not fit in registers. The only place EL2 dereferences a host address.
//!
//! A page is registered once ([`MessagePages::register`], under the memory lock, after
//! [`crate::mem::MemState::host_share_hyp`] mapped it) and never changes afterwards, so it is
//! *read* without a lock. The host may rewrite a page at any time: EL2 copies a request out
//! once and checks the copy.

use crate::mem::addr::{PhysAddr, PAGE_SIZE};
use crate::platform::MAX_CPUS;
use core::sync::atomic::{AtomicU64, Ordering};
use shared_abi::HypError;
use shared_abi::msg::{CoalescedWrite, COALESCED_MAX, COALESCED_OFFSET};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Every CPU's message page (0: none yet).
#[derive(Default)]
pub struct MessagePages {
    pages: [AtomicU64; MAX_CPUS],
}

impl MessagePages {
    /// Makes `pa` CPU `cpu`'s message page, once. The caller holds the memory lock and has
    /// shared and mapped the page for EL2.
    ///
    /// # Errors
    /// `Frozen` if the CPU has one already; `InvalidArgument` for a CPU out of range.
    pub fn register(&self, cpu: usize, pa: PhysAddr) -> Result<(), HypError> {
        let slot = self.pages.get(cpu).ok_or(HypError::InvalidArgument)?;
        if slot.load(Ordering::Relaxed) != 0 {
            return Err(HypError::Frozen);
        }
        slot.store(pa.0, Ordering::Release);
        Ok(())
    }

    /// Whether CPU `cpu` has registered its page (the check before the page is shared).
    pub fn is_set(&self, cpu: usize) -> bool {
        self.pages.get(cpu).is_some_and(|s| s.load(Ordering::Relaxed) != 0)
    }

    /// CPU `cpu`'s message page.
    ///
    /// # Errors
    /// `NoMessagePage` if it has none.
    pub fn page(&self, cpu: usize) -> Result<PhysAddr, HypError> {
        match self.pages.get(cpu).map(|s| s.load(Ordering::Acquire)) {
            Some(0) | None => Err(HypError::NoMessagePage),
            Some(pa) => Ok(PhysAddr(pa)),
        }
    }

    /// Copies a message out of `cpu`'s message page. The host may rewrite the page at any
    /// time; the copy is what gets validated and used.
    pub fn read<M: FromBytes>(&self, cpu: usize) -> Result<M, HypError> {
        let pa = self.page(cpu)?;
        const { assert!(core::mem::size_of::<M>() as u64 <= PAGE_SIZE) };
        // A volatile read copies each byte once: later checks see the copy, never the page.
        // SAFETY: a message page is host RAM shared with EL2 for good (the host cannot donate
        // it away), mapped RW at `pa` in EL2's stage 1, page aligned; any bytes are a valid M.
        Ok(unsafe { core::ptr::read_volatile(pa.0 as *const M) })
    }

    pub fn write<M: IntoBytes + Immutable>(&self, cpu: usize, msg: &M) -> Result<(), HypError> {
        let pa = self.page(cpu)?;
        const { assert!(core::mem::size_of::<M>() as u64 <= PAGE_SIZE) };
        let bytes = msg.as_bytes();
        // Volatile, so every byte is stored (the host reads the page, the compiler cannot see
        // it), 8 bytes at a time where they fit: an exit record is 10 stores, not 80. The page
        // is page aligned, so every 8-byte chunk is naturally aligned.
        let words = bytes.chunks_exact(8);
        let tail = words.remainder();
        let mut i = 0;
        for w in words {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            // SAFETY: as in `read`; `i + 8 <= size_of::<M>() <= PAGE_SIZE` and `pa + i`
            // is 8-byte aligned (the page is page aligned, `i` a multiple of 8).
            unsafe { core::ptr::write_volatile((pa.0 as *mut u8).add(i) as *mut u64, u64::from_ne_bytes(v)) };
            i += 8;
        }
        for b in tail {
            // SAFETY: as above, `i < size_of::<M>()`.
            unsafe { core::ptr::write_volatile((pa.0 as *mut u8).add(i), *b) };
            i += 1;
        }
        Ok(())
    }

    /// Writes coalesced MMIO writes, the first numbered `first`, as the
    /// [`shared_abi::msg::CoalescedBatch`] at [`COALESCED_OFFSET`] of `cpu`'s page: only the
    /// entries given (the exit record says how many).
    pub fn write_coalesced(&self, cpu: usize, first: u64, writes: &[CoalescedWrite]) -> Result<(), HypError> {
        self.write_words(cpu, COALESCED_OFFSET, &[first])?;
        let at = COALESCED_OFFSET + core::mem::offset_of!(shared_abi::msg::CoalescedBatch, writes);
        for (i, w) in writes.iter().take(COALESCED_MAX).enumerate() {
            // As words, from the fields: on this target (strict alignment) the bytes of a slice
            // element, of unknown alignment to the compiler, would be copied one by one. `size`
            // and `reserved` share the third word, little-endian (asserted below).
            let words = [w.ipa, w.value, u64::from(w.size) | u64::from(w.reserved) << 32];
            self.write_words(cpu, at + i * core::mem::size_of::<CoalescedWrite>(), &words)?;
        }
        Ok(())
    }

    /// Stores `words` from byte `offset` of `cpu`'s page.
    ///
    /// # Errors
    /// `NoMessagePage`; `InvalidArgument` (EL2's own mistake) for an offset not 8-byte aligned
    /// or words past the page's end.
    fn write_words(&self, cpu: usize, offset: usize, words: &[u64]) -> Result<(), HypError> {
        let pa = self.page(cpu)?;
        if offset % 8 != 0 || offset.saturating_add(words.len() * 8) > PAGE_SIZE as usize {
            return Err(HypError::InvalidArgument);
        }
        let base = (pa.0 as *mut u64).wrapping_add(offset / 8);
        // Volatile: the host reads the page, the compiler cannot see it.
        for (i, &w) in words.iter().enumerate() {
            // SAFETY: as in `read` (host RAM shared with EL2 for good, mapped RW at `pa`);
            // `offset + 8 * (i + 1) <= PAGE_SIZE` (checked above), `base + i` 8-byte aligned.
            unsafe { core::ptr::write_volatile(base.add(i), w) };
        }
        Ok(())
    }
}

// The batch fits its page after the exit record, 8-byte aligned, and a write is three words
// with `size` in the low half of the third (`write_coalesced`).
const _: () = assert!(cfg!(target_endian = "little") && core::mem::offset_of!(CoalescedWrite, size) == 16 && core::mem::offset_of!(CoalescedWrite, reserved) == 20);
const _: () = assert!(COALESCED_OFFSET % 8 == 0 && COALESCED_OFFSET + core::mem::size_of::<shared_abi::msg::CoalescedBatch>() <= PAGE_SIZE as usize);
