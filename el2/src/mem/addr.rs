//! Typed addresses. No bare `u64` address crosses a module boundary in EL2.
//!
//! `PhysAddr` is an output address of stage 2 (and, because EL2 identity-maps what it maps, also
//! an EL2 virtual address); `Ipa` is an input address of a stage 2 (for the host, `Ipa` and
//! `PhysAddr` are numerically equal: its stage 2 is an identity map).

use core::fmt;

/// Size of a translation granule and of every unit of ownership.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

macro_rules! addr_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// Whether the address is page aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.0 % PAGE_SIZE == 0
            }
            /// Rounds down to a page boundary.
            pub const fn page_align_down(self) -> Self {
                Self(self.0 & !(PAGE_SIZE - 1))
            }
            /// Adds an offset, `None` on overflow.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_type!(
    /// A physical address (stage-2 output address).
    PhysAddr
);
addr_type!(
    /// An intermediate physical address (stage-2 input address).
    Ipa
);
addr_type!(
    /// An EL2 virtual address.
    VirtAddr
);

/// A physical page frame number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
#[repr(transparent)]
pub struct Pfn(pub u64);

impl PhysAddr {
    /// The frame holding this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
}

impl Pfn {
    /// First byte of the frame.
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
}

/// A half-open range of physical memory, `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PhysRange {
    /// First byte.
    pub start: PhysAddr,
    /// One past the last byte.
    pub end: PhysAddr,
}

impl PhysRange {
    /// `[start, start + size)`, `None` if it overflows.
    pub const fn from_size(start: PhysAddr, size: u64) -> Option<Self> {
        match start.0.checked_add(size) {
            Some(end) => Some(Self { start, end: PhysAddr(end) }),
            None => None,
        }
    }
    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Whether `a` lies inside.
    pub const fn contains(&self, a: PhysAddr) -> bool {
        a.0 >= self.start.0 && a.0 < self.end.0
    }
    /// Whether all of `other` lies inside.
    pub const fn contains_range(&self, other: &PhysRange) -> bool {
        other.start.0 >= self.start.0 && other.end.0 <= self.end.0 && other.start.0 <= other.end.0
    }
    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_predicates() {
        let r = PhysRange::from_size(PhysAddr(0x1000), 0x2000).unwrap();
        assert!(r.contains(PhysAddr(0x1000)));
        assert!(r.contains(PhysAddr(0x2fff)));
        assert!(!r.contains(PhysAddr(0x3000)));
        assert!(r.overlaps(&PhysRange::from_size(PhysAddr(0x2fff), 1).unwrap()));
        assert!(!r.overlaps(&PhysRange::from_size(PhysAddr(0x3000), 1).unwrap()));
        assert!(PhysRange::from_size(PhysAddr(u64::MAX), 1).is_none());
        assert_eq!(PhysAddr(0x5123).pfn(), Pfn(5));
        assert_eq!(Pfn(5).addr(), PhysAddr(0x5000));
    }
}
