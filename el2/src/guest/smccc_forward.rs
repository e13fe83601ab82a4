//! Which SMCCC calls a VM forwards to the host (`VM_SMCCC_FORWARD`, ABI 5.0): ranges of
//! function IDs the host asked for before the VM's first run, fixed from then on. A guest call
//! EL2 does not serve ([`crate::guest::psci`]) exits to the host only when it falls in one;
//! every other one EL2 answers `NOT_SUPPORTED` itself. This is KVM's
//! `KVM_ARM_VM_SMCCC_FILTER` with `FWD_TO_USER`, the rest of the ID space being `DENY`: a
//! guest's calls no longer cost an exit to the host by default, and a protected guest's
//! arguments reach the host only where the host asked for them.

/// The ranges of SMCCC function IDs a VM forwards to the host (`VM_SMCCC_FORWARD`), set
/// before its first run and fixed from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmcccForward {
    /// `(first, last)` function IDs, inclusive; `ranges[..len]` are in use.
    ranges: [(u32, u32); shared_abi::SMCCC_FORWARD_RANGES],
    len: u8,
}

/// Why a range cannot be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardRefused {
    /// No IDs, or a first ID that is no 32-bit function ID.
    Empty,
    /// It overflows the 32-bit function IDs.
    Overflow,
    /// It overlaps what EL2 serves, or a range already forwarded.
    Overlap,
    /// Every slot is in use.
    Full,
}

impl SmcccForward {
    /// Nothing forwarded: every call EL2 does not serve is answered `NOT_SUPPORTED`.
    pub const NONE: Self = Self { ranges: [(0, 0); shared_abi::SMCCC_FORWARD_RANGES], len: 0 };

    /// Forwards the `count` IDs from `first` to the host.
    ///
    /// # Errors
    /// The [`ForwardRefused`] reason; nothing changes then.
    pub fn add(&mut self, first: u64, count: u64) -> Result<(), ForwardRefused> {
        if count == 0 || first > u64::from(u32::MAX) {
            return Err(ForwardRefused::Empty);
        }
        let last = first.checked_add(count - 1).filter(|&l| l <= u64::from(u32::MAX)).ok_or(ForwardRefused::Overflow)?;
        let (first, last) = (first as u32, last as u32);
        let overlaps = |&(a, b): &(u32, u32)| first <= b && a <= last;
        if shared_abi::SMCCC_EL2_RANGES.iter().any(overlaps) || self.ranges[..self.len as usize].iter().any(overlaps) {
            return Err(ForwardRefused::Overlap);
        }
        let slot = self.ranges.get_mut(self.len as usize).ok_or(ForwardRefused::Full)?;
        *slot = (first, last);
        self.len += 1;
        Ok(())
    }

    /// Whether nothing is forwarded.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a call with `x0` = `function` goes to the host (bits 63:32 set: never, it is no
    /// SMCCC function ID).
    pub fn forwards(&self, function: u64) -> bool {
        function >> 32 == 0 && self.ranges[..self.len as usize].iter().any(|&(a, b)| (a..=b).contains(&(function as u32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_ranges_are_checked_and_looked_up() {
        let mut f = SmcccForward::NONE;
        assert!(f.is_empty() && !f.forwards(0) && !f.forwards(0xC700_0001), "nothing by default");
        assert_eq!(f.add(0xC700_0000, 0x100), Ok(()));
        assert!(f.forwards(0xC700_0000) && f.forwards(0xC700_00FF) && !f.forwards(0xC700_0100) && !f.forwards(0xC6FF_FFFF));
        assert!(!f.forwards(1 << 32 | 0xC700_0000), "bits 63:32 set: no function ID");
        assert_eq!(f.add(0xC700_00FF, 1), Err(ForwardRefused::Overlap), "its last ID again");
        assert_eq!(f.add(0xC6FF_FF00, 0x101), Err(ForwardRefused::Overlap), "reaching into it");
        for (first, count) in [(0x8400_0000u64, 1u64), (0x8400_001F, 1), (0x8000_0000, 1), (0x8001_0000, 1), (0xC600_0012, 1), (0x8601_0000, 1), (0x83FF_FFFF, 2), (0x7FFF_0000, 0x1_0000_0000 - 0x7FFF_0000)] {
            assert_eq!(f.add(first, count), Err(ForwardRefused::Overlap), "EL2's own: {first:#x}+{count:#x}");
        }
        // The standard services past PSCI (TRNG, 0x8400_0050..) are a VMM's to serve.
        let mut trng = SmcccForward::NONE;
        assert_eq!(trng.add(0x8400_0050, 4), Ok(()));
        assert_eq!(f.add(0, 0), Err(ForwardRefused::Empty));
        assert_eq!(f.add(1 << 32, 1), Err(ForwardRefused::Empty));
        assert_eq!(f.add(0xFFFF_FFFF, 2), Err(ForwardRefused::Overflow));
        assert_eq!(f.add(0xFFFF_FFFF, u64::MAX), Err(ForwardRefused::Overflow));
        assert_eq!(f.add(0xFFFF_FFFF, 1), Ok(()), "the last ID");
        for i in 0..6 {
            assert_eq!(f.add(i * 16, 16), Ok(()));
        }
        let before = f;
        assert_eq!(f.add(0x1000, 1), Err(ForwardRefused::Full));
        assert_eq!(f, before, "a refusal changes nothing");
        assert!(f.forwards(0x5F) && !f.forwards(0x60));
    }
}
