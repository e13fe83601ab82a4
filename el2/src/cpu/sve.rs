//! SVE for guests: the vector lengths every CPU gives the same way, which of them a VM may
//! have, and the `ZCR_EL2` value that gives it.
//!
//! Place in the flow: *policy*, plain Rust (unit-tested on the host). Each CPU probes its own
//! lengths when it enters EL2 (`arch`: `ZCR_EL2.LEN` from 15 down to 0, `RDVL` after each) and
//! reports them in its [`crate::cpu::features::CpuId`]; [`crate::cpu::features`] combines them
//! here; `VM_CREATE` asks [`SveView::vm_vq`]; the world switch programs [`zcr_el2`].
//!
//! A guest chooses its own length below the VM's with `ZCR_EL1.LEN`, and the CPU then gives it
//! the largest length it implements that is not above the request (Arm ARM, `ZCR_EL1.LEN`,
//! `ZCR_EL2.LEN`). So a guest whose VM length is `L` can observe every CPU's set of lengths up
//! to `L`. A VM may therefore only have a length `L` such that every CPU implements exactly the
//! same lengths up to `L`: below the smallest length some CPUs implement and others do not
//! (KVM calls the lengths above it "not virtualisable"). Where all CPUs implement the same
//! lengths (QEMU, and every CPU the current Arm ARM allows with one maximum: all powers of two
//! up to the maximum), that is every length up to the smallest maximum.
//!
//! Once the CPU view is fixed, a CPU that enters EL2 must implement exactly those lengths up to
//! the largest a VM may have ([`SveView::check`]): one that lacks a length, or has an extra one
//! a guest could select, is refused like any CPU weaker than the view.

/// The architecture's largest vector length in quadwords (128 bits): 2048 bits.
pub const VQ_MAX: u8 = 16;

/// A set of SVE vector lengths: bit `n` = `(n + 1) * 128` bits (the bit order of
/// [`shared_abi::msg::HypInfo::sve_vls`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VqSet(pub u16);

impl VqSet {
    /// No length (a CPU without SVE).
    pub const NONE: Self = Self(0);

    /// The set a CPU's probe found: `rdvl_at` answers `RDVL` (bytes) after `ZCR_EL2.LEN` =
    /// `len`, for `len` from 15 down to 0. A length the CPU does not implement is rounded down
    /// to one it does, so every answer is an implemented length; answers that are not a
    /// multiple of 16 bytes, or out of range, are dropped (they cannot happen on a conforming
    /// CPU).
    pub fn probe(mut rdvl_at: impl FnMut(u8) -> u64) -> Self {
        let mut set = 0u16;
        for len in (0..VQ_MAX).rev() {
            let vl = rdvl_at(len);
            if shared_abi::msg::sve::valid_vl(vl) {
                set |= shared_abi::msg::sve::vl_bit(vl) as u16;
            }
        }
        Self(set)
    }

    /// Whether `vq` quadwords is in the set.
    pub const fn contains(self, vq: u8) -> bool {
        vq >= 1 && vq <= VQ_MAX && self.0 & (1 << (vq - 1)) != 0
    }

    /// The largest length, in quadwords.
    pub const fn max(self) -> Option<u8> {
        if self.0 == 0 {
            None
        } else {
            Some(16 - self.0.leading_zeros() as u8)
        }
    }

    /// The smallest length, in quadwords.
    pub const fn min(self) -> Option<u8> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0.trailing_zeros() as u8 + 1)
        }
    }

    /// The lengths of `self` up to `vq` quadwords.
    pub const fn up_to(self, vq: u8) -> Self {
        let mask = if vq >= VQ_MAX { u16::MAX } else { (1u16 << vq) - 1 };
        Self(self.0 & mask)
    }
}

/// Why a VM cannot have the SVE length it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SveRefused {
    /// Not an SVE vector length at all (not a multiple of 16 bytes from 16 to 256):
    /// `InvalidArgument`.
    NotALength,
    /// A length the CPUs cannot all give the same way (some CPU lacks it or SVE, or CPUs
    /// differ at or below it): `Denied`.
    NotGiven,
}

/// A CPU does not implement the same SVE lengths as the view, up to the largest a VM may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthsDiffer;

/// The SVE lengths of the CPUs that reported, combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SveView {
    /// Lengths every CPU implements.
    every: VqSet,
    /// Lengths some CPU implements.
    some: VqSet,
}

impl SveView {
    /// The view of one CPU.
    pub const fn new(cpu: VqSet) -> Self {
        Self { every: cpu, some: cpu }
    }

    /// One more CPU joins.
    pub fn join(&mut self, cpu: VqSet) {
        self.every.0 &= cpu.0;
        self.some.0 |= cpu.0;
    }

    /// The lengths a VM may have: those every CPU implements, below the smallest that only
    /// some CPUs implement (module documentation).
    pub const fn guest_vqs(&self) -> VqSet {
        let partial = VqSet(self.some.0 & !self.every.0);
        match partial.min() {
            Some(vq) => self.every.up_to(vq - 1),
            None => self.every,
        }
    }

    /// [`Self::guest_vqs`] as `HYP_INFO` reports it ([`shared_abi::msg::HypInfo::sve_vls`]).
    pub const fn vls(&self) -> u32 {
        self.guest_vqs().0 as u32
    }

    /// The length in quadwords of a VM that asked for `vl` bytes.
    ///
    /// # Errors
    /// [`SveRefused`].
    pub const fn vm_vq(&self, vl: u64) -> Result<u8, SveRefused> {
        if !shared_abi::msg::sve::valid_vl(vl) {
            return Err(SveRefused::NotALength);
        }
        let vq = (vl / shared_abi::msg::sve::VL_GRANULE) as u8;
        if self.guest_vqs().contains(vq) {
            Ok(vq)
        } else {
            Err(SveRefused::NotGiven)
        }
    }

    /// Whether a CPU that implements `cpu` may run under this view once it is fixed: the same
    /// lengths up to the largest a VM may have (none missing, none extra a guest could
    /// select with its `ZCR_EL1`).
    ///
    /// # Errors
    /// [`LengthsDiffer`].
    pub const fn check(&self, cpu: VqSet) -> Result<(), LengthsDiffer> {
        let guest = self.guest_vqs();
        match guest.max() {
            None => Ok(()),
            Some(max) if cpu.up_to(max).0 == guest.0 => Ok(()),
            Some(_) => Err(LengthsDiffer),
        }
    }
}

/// `ZCR_EL2` while a VM of `vq` quadwords runs (`LEN` = `vq` - 1; the other bits are RES0 or
/// RAZ/WI). Its guests' effective lengths are then at most `vq`.
pub const fn zcr_el2(vq: u8) -> u64 {
    (vq as u64).saturating_sub(1) & 0xF
}


#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU that implements `lens` (quadwords), as its probe reports it.
    fn cpu(lens: &[u8]) -> VqSet {
        let max = lens.iter().copied().max().unwrap_or(0);
        VqSet::probe(|len| {
            let asked = len + 1;
            // The largest implemented length at or below the one asked for, never above the
            // maximum; the smallest (128 bits) always exists on an SVE CPU.
            lens.iter().copied().filter(|&l| l <= asked.min(max)).max().map_or(0, |l| l as u64 * 16)
        })
    }

    #[test]
    fn a_probe_finds_exactly_the_implemented_lengths() {
        assert_eq!(cpu(&[1, 2, 4, 8, 16]), VqSet(0b1000_0000_1000_1011));
        assert_eq!(cpu(&(1..=16).collect::<std::vec::Vec<_>>()), VqSet(0xFFFF));
        assert_eq!(cpu(&[1, 2, 3, 4]), VqSet(0b1111), "QEMU's sve-max-vq=4: every length up to 512 bits");
        assert_eq!(cpu(&[]), VqSet::NONE, "no SVE: RDVL never asked, or 0");
        assert_eq!(VqSet::probe(|_| 24), VqSet::NONE, "not a length: dropped");
        assert_eq!(VqSet::probe(|_| 512), VqSet::NONE, "above the architecture's maximum: dropped");
        assert_eq!(cpu(&[1, 2, 4]).max(), Some(4));
        assert_eq!(cpu(&[1, 2, 4]).min(), Some(1));
        assert_eq!(VqSet::NONE.max(), None);
    }

    #[test]
    fn cpus_combine_to_the_lengths_every_cpu_gives_alike() {
        // Same lengths everywhere: all of them.
        let mut v = SveView::new(cpu(&[1, 2, 4]));
        v.join(cpu(&[1, 2, 4]));
        assert_eq!(v.guest_vqs(), VqSet(0b1011));
        // A little core with 256 bits next to a big one with 512: up to 256.
        let mut v = SveView::new(cpu(&[1, 2, 4]));
        v.join(cpu(&[1, 2]));
        assert_eq!(v.guest_vqs(), VqSet(0b11));
        assert_eq!(v.vls(), 0b11);
        // A CPU with a non-power-of-two length the other lacks (384 bits): a guest of 512 bits
        // could select 384 with its ZCR_EL1 and get 384 on one CPU, 256 on the other. So the
        // VM's length stays below 384, although both CPUs have 512.
        let mut v = SveView::new(cpu(&[1, 2, 3, 4]));
        v.join(cpu(&[1, 2, 4]));
        assert_eq!(v.guest_vqs(), VqSet(0b11), "512 bits is not virtualisable here");
        assert_eq!(v.vm_vq(64), Err(SveRefused::NotGiven));
        assert_eq!(v.vm_vq(32), Ok(2));
        // A CPU without SVE: nothing.
        let mut v = SveView::new(cpu(&[1, 2, 4]));
        v.join(VqSet::NONE);
        assert_eq!(v.guest_vqs(), VqSet::NONE);
        assert_eq!(v.vm_vq(16), Err(SveRefused::NotGiven));
    }

    #[test]
    fn vm_lengths_are_checked_for_form_then_for_the_cpus() {
        let v = SveView::new(cpu(&[1, 2, 4, 8]));
        assert_eq!(v.vm_vq(16), Ok(1));
        assert_eq!(v.vm_vq(64), Ok(4));
        assert_eq!(v.vm_vq(128), Ok(8));
        assert_eq!(v.vm_vq(48), Err(SveRefused::NotGiven), "384 bits: not implemented");
        assert_eq!(v.vm_vq(256), Err(SveRefused::NotGiven), "above every CPU's maximum");
        for bad in [0, 8, 24, 100, 272, 4096, u64::MAX] {
            assert_eq!(v.vm_vq(bad), Err(SveRefused::NotALength), "{bad}");
        }
    }

    #[test]
    fn a_late_cpu_must_give_the_same_lengths_up_to_the_largest_a_vm_may_have() {
        let v = SveView::new(cpu(&[1, 2, 4]));
        assert_eq!(v.check(cpu(&[1, 2, 4])), Ok(()));
        assert_eq!(v.check(cpu(&[1, 2, 4, 8, 16])), Ok(()), "longer lengths above what VMs may have: fine");
        assert_eq!(v.check(cpu(&[1, 2])), Err(LengthsDiffer), "a VM of 512 bits would get 256 there");
        assert_eq!(v.check(VqSet::NONE), Err(LengthsDiffer), "no SVE at all");
        assert_eq!(v.check(cpu(&[1, 2, 3, 4])), Err(LengthsDiffer), "384 bits: a guest selecting it would see another length than on the others");
        // A view without SVE for VMs asks nothing.
        assert_eq!(SveView::new(VqSet::NONE).check(VqSet::NONE), Ok(()));
        let mut v = SveView::new(cpu(&[1, 2, 3, 4]));
        v.join(cpu(&[1, 2, 4]));
        assert_eq!(v.check(cpu(&[1, 2, 8])), Ok(()), "only 128 and 256 bits were promised");
    }

    #[test]
    fn zcr_values() {
        assert_eq!(zcr_el2(1), 0);
        assert_eq!(zcr_el2(4), 3);
        assert_eq!(zcr_el2(16), 15);
        assert_eq!(zcr_el2(0), 0, "never a negative LEN");
    }
}
