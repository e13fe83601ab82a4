//! Which guest memory a VM's devices may touch: the checks behind the VMM's
//! [`super::GuestMemory`], before it copies a byte.
//!
//! Place in the flow: a guest's `MEM_SHARE` / `MEM_UNSHARE` exit → [`SharedPages::share`] /
//! [`SharedPages::unshare`]; a device's access → [`GuestRam::check`], which turns the range into
//! an offset into the VM's backing memory, or refuses it ([`MemError`]). The VMM then copies
//! with a copy that survives an abort: a protected VM's vCPU may unshare a page between the
//! check and the copy (EL2 unmaps it from the host first), and the bitmap only says what the
//! guest shared when it was last told.
//!
//! - A **non-protected** VM's RAM is the host's backing: every byte of it may be touched.
//! - A **protected** VM's device may touch only pages whose bit is set: the ones the guest
//!   shared (its restricted DMA pool, once it set the pool up) and has not taken back.
//!
//! The bitmap is atomic words, no lock: vCPUs of the VM record their exits on any host CPU
//! while another vCPU's device work reads it; a bit set or cleared late only makes an access
//! fail (the guest's own race) or fault into the copy's recovery.

use super::{Gpa, MemError};
use core::sync::atomic::{AtomicU64, Ordering};

/// The granule the guest shares in.
pub const PAGE: u64 = 4096;

/// One bit per page of a VM's RAM (bit set: shared with the host); room for `WORDS * 64`
/// pages.
pub struct SharedPages<const WORDS: usize> {
    words: [AtomicU64; WORDS],
}

/// A page outside the VM's RAM (or the bitmap's room) was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideRam;

impl<const WORDS: usize> SharedPages<WORDS> {
    /// Nothing shared.
    pub const fn new() -> Self {
        Self { words: [const { AtomicU64::new(0) }; WORDS] }
    }

    /// How many pages it has room for.
    pub const fn capacity() -> u64 {
        WORDS as u64 * 64
    }

    fn bit(page: u64) -> Result<(usize, u64), OutsideRam> {
        if page >= Self::capacity() {
            return Err(OutsideRam);
        }
        Ok(((page / 64) as usize, 1 << (page % 64)))
    }

    /// The guest shared page `page` (from the RAM base).
    ///
    /// # Errors
    /// [`OutsideRam`] if the bitmap has no such page.
    pub fn share(&self, page: u64) -> Result<(), OutsideRam> {
        let (w, b) = Self::bit(page)?;
        self.words[w].fetch_or(b, Ordering::SeqCst);
        Ok(())
    }

    /// The guest took page `page` back.
    ///
    /// # Errors
    /// [`OutsideRam`] if the bitmap has no such page.
    pub fn unshare(&self, page: u64) -> Result<(), OutsideRam> {
        let (w, b) = Self::bit(page)?;
        self.words[w].fetch_and(!b, Ordering::SeqCst);
        Ok(())
    }

    /// Whether every page in `first..=last` is shared (`false` past the bitmap's room).
    pub fn all_shared(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|p| Self::bit(p).is_ok_and(|(w, b)| self.words[w].load(Ordering::SeqCst) & b != 0))
    }

    /// Forgets every share (the VM is gone, its slot reused).
    pub fn clear(&self) {
        for w in &self.words {
            w.store(0, Ordering::SeqCst);
        }
    }
}

impl<const WORDS: usize> Default for SharedPages<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

/// A VM's RAM as its devices see it.
#[derive(Clone, Copy)]
pub struct GuestRam<'a, const WORDS: usize> {
    /// The RAM's base (IPA).
    pub base: Gpa,
    /// Its size in bytes.
    pub size: u64,
    /// `Some` for a protected VM: only these pages.
    pub shared: Option<&'a SharedPages<WORDS>>,
}

impl<const WORDS: usize> GuestRam<'_, WORDS> {
    /// Where `len` bytes at `gpa` are in the RAM (the offset from its base), if a device may
    /// touch all of them. An empty range is checked like a one-byte one.
    ///
    /// # Errors
    /// [`MemError::OutsideRam`] if some of the range is not RAM (or it wraps),
    /// [`MemError::NotShared`] if the VM is protected and some page of it is not shared.
    pub fn check(&self, gpa: Gpa, len: usize) -> Result<u64, MemError> {
        let offset = gpa.0.checked_sub(self.base.0).ok_or(MemError::OutsideRam)?;
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.size).ok_or(MemError::OutsideRam)?;
        if offset >= self.size {
            return Err(MemError::OutsideRam);
        }
        if let Some(shared) = self.shared {
            let last = end.saturating_sub(1).max(offset);
            if !shared.all_shared(offset / PAGE, last / PAGE) {
                return Err(MemError::NotShared);
            }
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Gpa = Gpa(0x4000_0000);

    #[test]
    fn shared_pages_are_set_cleared_and_bounded() {
        let s = SharedPages::<2>::new();
        assert_eq!(SharedPages::<2>::capacity(), 128);
        assert!(!s.all_shared(0, 0));
        s.share(0).unwrap();
        s.share(63).unwrap();
        s.share(64).unwrap();
        assert!(s.all_shared(0, 0) && s.all_shared(63, 64) && !s.all_shared(0, 1));
        s.unshare(63).unwrap();
        assert!(!s.all_shared(63, 64) && s.all_shared(64, 64));
        assert_eq!(s.share(128), Err(OutsideRam));
        assert_eq!(s.unshare(u64::MAX), Err(OutsideRam));
        assert!(!s.all_shared(127, 128), "past the room is never shared");
        s.clear();
        assert!(!s.all_shared(0, 0) && !s.all_shared(64, 64));
    }

    #[test]
    fn a_non_protected_vm_s_devices_reach_all_its_ram_and_nothing_else() {
        let ram = GuestRam::<1> { base: BASE, size: 8 * PAGE, shared: None };
        assert_eq!(ram.check(BASE, 8 * PAGE as usize), Ok(0));
        assert_eq!(ram.check(Gpa(BASE.0 + 8 * PAGE - 1), 1), Ok(8 * PAGE - 1));
        assert_eq!(ram.check(Gpa(BASE.0 + 8 * PAGE - 1), 2), Err(MemError::OutsideRam));
        assert_eq!(ram.check(Gpa(BASE.0 + 8 * PAGE), 0), Err(MemError::OutsideRam));
        assert_eq!(ram.check(Gpa(BASE.0 - 1), 1), Err(MemError::OutsideRam));
        assert_eq!(ram.check(Gpa(u64::MAX), 2), Err(MemError::OutsideRam), "wraps");
        assert_eq!(ram.check(Gpa(BASE.0 + 5), usize::MAX), Err(MemError::OutsideRam));
    }

    #[test]
    fn a_protected_vm_s_devices_reach_only_pages_it_shared() {
        let s = SharedPages::<1>::new();
        let ram = GuestRam { base: BASE, size: 8 * PAGE, shared: Some(&s) };
        assert_eq!(ram.check(Gpa(BASE.0 + PAGE), 16), Err(MemError::NotShared));
        s.share(1).unwrap();
        s.share(2).unwrap();
        assert_eq!(ram.check(Gpa(BASE.0 + PAGE), 16), Ok(PAGE));
        assert_eq!(ram.check(Gpa(BASE.0 + PAGE), 2 * PAGE as usize), Ok(PAGE), "two shared pages");
        assert_eq!(ram.check(Gpa(BASE.0 + PAGE + 1), 2 * PAGE as usize), Err(MemError::NotShared), "into page 3");
        assert_eq!(ram.check(Gpa(BASE.0 + PAGE - 1), 2), Err(MemError::NotShared), "from page 0");
        assert_eq!(ram.check(Gpa(BASE.0 + 3 * PAGE), 0), Err(MemError::NotShared));
        s.unshare(2).unwrap();
        assert_eq!(ram.check(Gpa(BASE.0 + 2 * PAGE), 1), Err(MemError::NotShared));
        assert_eq!(ram.check(Gpa(BASE.0 + 9 * PAGE), 1), Err(MemError::OutsideRam), "outside RAM first");
    }
}
