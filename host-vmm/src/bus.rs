//! A VM's MMIO bus: emulated devices by IPA range. The test devices ([`crate::TestDevice`]'s
//! port, the console UART) and the Linux devices (vGIC distributor and redistributors, PL011)
//! plug into the same [`Device`] trait.

use core::ops::Range;

/// vCPUs (bit n = vCPU n) whose deliverable interrupts have grown.
pub type Wake = u32;

/// An emulated device: the MMIO registers in its IPA ranges.
pub trait Device {
    /// The IPA ranges it answers.
    fn ranges(&self) -> &[Range<u64>];

    /// A guest access of `size` bytes at `ipa` (in one of its ranges): `write` holds the value
    /// written, `None` for a read. Returns the value read (0 for a write) and the vCPUs whose
    /// deliverable interrupts it may have grown.
    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> (u64, Wake);
}

/// The devices of one exit's MMIO access, by range.
pub struct Bus<'a, const N: usize>(pub [&'a mut dyn Device; N]);

impl<const N: usize> Bus<'_, N> {
    /// Performs the access on the device whose range holds `ipa`; `None` if no device's does
    /// (an unassigned address).
    pub fn access(&mut self, ipa: u64, size: u32, write: Option<u64>) -> Option<(u64, Wake)> {
        let dev = self.0.iter_mut().find(|d| d.ranges().iter().any(|r| r.contains(&ipa)))?;
        Some(dev.mmio(ipa, size, write))
    }
}
