//! Coalesced MMIO (`VM_MMIO_COALESCE`, ABI 6.3; KVM's `KVM_REGISTER_COALESCED_MMIO`): a VM's
//! zone of device registers whose writes need no answer, and the queue of such writes that
//! completed without an exit.
//!
//! Place in the flow: the host sets the zone before the VM's first run
//! ([`crate::hypercall::vm::vm_mmio_coalesce`]), kept in the VM slot's
//! [`crate::guest::vm::Coalesced`] with the queue. A
//! guest write that would have been an MMIO exit and lies inside the zone goes to the VM's
//! [`Queue`] (in the VM slot's [`crate::guest::vm::Coalesced`]) instead and the guest resumes
//! after it ([`crate::guest::exit`]); the next exit record of any vCPU of the VM takes the whole
//! queue to the host (`finish_run`), numbered, and every record of the VM says how many writes
//! earlier records carried, so that the host applies the writes in the order EL2 took them,
//! each before any exit that came after it, whichever CPU carries them. A full queue, or a
//! read, exits as before.
//!
//! What the host learns is what the MMIO exits would have told it; what changes for the guest
//! is only when the host sees a write, and that a write in the zone cannot get an external
//! abort (the host could always complete a write without looking at it).

use shared_abi::msg::{CoalescedWrite, COALESCED_MAX};
use shared_abi::{HypError, PAGE_SIZE};

/// A VM's coalesced MMIO zone: `base..base + len` (`len` 0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    base: u64,
    len: u64,
}

impl Zone {
    /// No zone: every write exits.
    pub const NONE: Self = Self { base: 0, len: 0 };

    /// The zone of `len` bytes at `base`; `len` 0 is none.
    ///
    /// # Errors
    /// `InvalidArgument` for more than a page; `OutOfRange` if it wraps the address space.
    pub fn new(base: u64, len: u64) -> Result<Self, HypError> {
        if len > PAGE_SIZE {
            return Err(HypError::InvalidArgument);
        }
        if base.checked_add(len).is_none() {
            return Err(HypError::OutOfRange);
        }
        Ok(if len == 0 { Self::NONE } else { Self { base, len } })
    }

    /// The zone kept as its base and length ([`Self::from_parts`] gives it back).
    pub fn parts(&self) -> (u64, u64) {
        (self.base, self.len)
    }

    /// A zone from [`Self::parts`] of one [`Self::new`] made.
    pub fn from_parts(base: u64, len: u64) -> Self {
        Self { base, len }
    }

    /// Whether an access of `size` bytes at `ipa` lies wholly inside the zone.
    pub fn covers(&self, ipa: u64, size: u64) -> bool {
        // `ipa - base <= len - size`, without overflow: `len` is at most a page, `size` at most 8.
        ipa.wrapping_sub(self.base) < self.len && ipa - self.base + size <= self.len
    }
}

/// A VM's coalesced writes that no exit record has carried yet, and the number of the next.
#[derive(Debug)]
pub struct Queue {
    /// The number of `writes[0]` (or of the next write, while empty) among the VM's coalesced
    /// writes since `VM_CREATE`.
    first_seq: u64,
    len: usize,
    writes: [CoalescedWrite; COALESCED_MAX],
}

impl Queue {
    pub const fn new() -> Self {
        const EMPTY: CoalescedWrite = CoalescedWrite { ipa: 0, value: 0, size: 0, reserved: 0 };
        Self { first_seq: 0, len: 0, writes: [EMPTY; COALESCED_MAX] }
    }

    /// Appends a write; `false` (nothing done) when the queue is full.
    pub fn push(&mut self, ipa: u64, size: u64, value: u64) -> bool {
        let Some(slot) = self.writes.get_mut(self.len) else { return false };
        *slot = CoalescedWrite { ipa, value, size: size as u32, reserved: 0 };
        self.len += 1;
        true
    }

    /// The queued writes and the number of the first.
    pub fn pending(&self) -> (u64, &[CoalescedWrite]) {
        (self.first_seq, &self.writes[..self.len])
    }

    /// Forgets the queued writes (an exit record carries them); numbering goes on.
    pub fn taken(&mut self) {
        self.first_seq = self.first_seq.wrapping_add(self.len as u64);
        self.len = 0;
    }
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_is_at_most_a_page_and_does_not_wrap() {
        assert_eq!(Zone::new(0x900_0000, 0), Ok(Zone::NONE));
        assert_eq!(Zone::new(0x900_0000, PAGE_SIZE + 1), Err(HypError::InvalidArgument));
        assert_eq!(Zone::new(u64::MAX - 3, 8), Err(HypError::OutOfRange));
        assert!(Zone::new(u64::MAX - 8, 8).is_ok());
    }

    #[test]
    fn a_zone_covers_only_accesses_wholly_inside_it() {
        let z = Zone::new(0x900_0000, 4).unwrap();
        assert!(z.covers(0x900_0000, 1) && z.covers(0x900_0000, 4) && z.covers(0x900_0003, 1));
        assert!(!z.covers(0x900_0000, 8), "runs past the end");
        assert!(!z.covers(0x900_0002, 4), "runs past the end");
        assert!(!z.covers(0x900_0004, 1) && !z.covers(0x8ff_ffff, 1) && !z.covers(0x8ff_fffc, 8));
        assert!(!Zone::NONE.covers(0, 1) && !Zone::NONE.covers(u64::MAX, 1));
        let top = Zone::new(u64::MAX - 7, 7).unwrap();
        assert!(top.covers(u64::MAX - 7, 4) && !top.covers(u64::MAX, 1) && !top.covers(u64::MAX - 1, 8));
    }

    #[test]
    fn writes_are_numbered_across_batches_and_a_full_queue_refuses() {
        let c = crate::guest::vm::Coalesced::new();
        assert_eq!(c.take(|_, _| panic!("no write ever queued: no header")), None);
        for i in 0..COALESCED_MAX as u64 {
            assert!(c.push(0x900_0000, 1, i));
        }
        assert!(!c.push(0x900_0000, 1, 99), "full: this write exits");
        let mut seen = Vec::new();
        assert_eq!(c.take(|first, w| Ok(seen.push((first, w.len(), w[0].value, w[w.len() - 1].value)))), Some(COALESCED_MAX as u32));
        assert_eq!(seen, [(0, COALESCED_MAX, 0, COALESCED_MAX as u64 - 1)]);
        // Nothing queued now, but every record still says how many were carried before it.
        let mut header = None;
        assert_eq!(c.take(|first, w| Ok(header = Some((first, w.len())))), Some(0));
        assert_eq!(header, Some((COALESCED_MAX as u64, 0)));
        assert!(c.push(0x900_0000, 2, 0x4142));
        // A batch that could not be written stays queued, with its number.
        assert_eq!(c.take(|_, _| Err(HypError::NoMessagePage)), None);
        let mut again = None;
        assert_eq!(c.take(|first, w| Ok(again = Some((first, w.to_vec())))), Some(1));
        assert_eq!(again, Some((COALESCED_MAX as u64, vec![CoalescedWrite { ipa: 0x900_0000, value: 0x4142, size: 2, reserved: 0 }])));
        c.reset();
        assert_eq!(c.take(|_, _| panic!("a new VM has queued nothing")), None);
        assert!(c.push(0x900_0000, 1, 7));
        assert_eq!(c.take(|first, _| if first == 0 { Ok(()) } else { Err(HypError::InvalidArgument) }), Some(1), "a new VM numbers from 0");
    }
}
