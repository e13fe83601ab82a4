//! A VM's measurement: what EL2 hashes, in what order, so that anyone can compute the value
//! offline from the same inputs (`cargo xtask measure`) and compare it with what the guest is
//! told. EL2 and the offline tool both build it with [`Measurement`].
//!
//! A measurement is SHA-256 over a sequence of records, all little-endian, CCA-style: the
//! first is the VM's configuration at `VM_CREATE`; then one per page the host populates before
//! the first run, in the order of its `VM_ADD_MEMORY` calls; last, at vCPU 0's first
//! `VCPU_RUN` (the *seal*), that vCPU's registers. After the seal nothing changes it.
//!
//! | record | bytes |
//! |---|---|
//! | start | `"pkvm-rs measurement v1\0"` (24 bytes) |
//! | configuration | `"VMCONFIG"`, `nr_vcpus: u32`, `ipa_bits: u32`, `flags: u64` ([`crate::msg::vm_flags`]); with [`crate::msg::vm_flags::SVE`] also `sve_vl: u64` (4.1) |
//! | a page with content ([`add_flags::MEASURE`]) | `"PAGEDATA"`, `ipa: u64`, SHA-256 of its 4096 bytes |
//! | pages given zeroed (no flag) | `"PAGEZERO"`, `ipa: u64`, `pages: u64` |
//! | the handover page ([`add_flags::HANDOVER`]) | `"HANDOVER"`, `ipa: u64`, `pages: u64` |
//! | a granule the host declared MMIO (`VM_MMIO_GUARD`) | `"MMIOGARD"`, `ipa: u64` |
//! | SMCCC IDs the host had the VM forward (`VM_SMCCC_FORWARD`, 5.0) | `"SMCCCFWD"`, `first: u64`, `count: u64` |
//! | the seal | `"VCPUBOOT"`, `x0..x30: [u64; 31]`, `pc: u64`, `pstate: u64` of vCPU 0 |
//!
//! Not measured: what the host can only lower and the guest reads through EL2 (its ID and
//! firmware registers), the vCPUs other than 0 (they start off, and `CPU_ON` resets them to
//! what the guest chose), and the EL1 system registers (at their reset values unless the
//! host set them; a VMM that does must say so to whoever checks the value).

use sha2::{Digest, Sha256};

/// Flags of `VM_ADD_MEMORY` (`x5`, ABI 4.0).
pub mod add_flags {
    /// The pages hold content the host put there (an image, a device tree): each is hashed
    /// into the measurement and given to the guest as it is. Without it, a protected VM's
    /// pages are zeroed before the guest can see them, so the host cannot slip unmeasured data
    /// in.
    pub const MEASURE: u64 = 1 << 0;
    /// The pages are the measurement handover ([`super::Handover`]): EL2 writes it there at the
    /// seal (zeroed until then). At most one handover region per VM.
    pub const HANDOVER: u64 = 1 << 1;
    /// Every flag this ABI version defines.
    pub const ALL: u64 = MEASURE | HANDOVER;
}

/// Bytes of a SHA-256 digest.
pub const DIGEST: usize = 32;

/// A measurement being built.
#[derive(Clone)]
pub struct Measurement(Sha256);

impl Measurement {
    /// The start of a VM's measurement: its configuration. The SVE vector length `sve_vl` is
    /// part of it only with [`crate::msg::vm_flags::SVE`] (so the measurement of a VM without
    /// SVE is what it was before 4.1; `VM_CREATE` refuses a length without the flag).
    pub fn new(nr_vcpus: u32, ipa_bits: u32, flags: u64, sve_vl: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"pkvm-rs measurement v1\0");
        h.update(b"VMCONFIG");
        h.update(nr_vcpus.to_le_bytes());
        h.update(ipa_bits.to_le_bytes());
        h.update(flags.to_le_bytes());
        if flags & crate::msg::vm_flags::SVE != 0 {
            h.update(sve_vl.to_le_bytes());
        }
        Self(h)
    }

    /// A page with content at `ipa`.
    pub fn page(&mut self, ipa: u64, content: &[u8; 4096]) {
        self.0.update(b"PAGEDATA");
        self.0.update(ipa.to_le_bytes());
        self.0.update(digest(content));
    }

    /// `pages` pages at `ipa` given to the guest zeroed.
    pub fn zero(&mut self, ipa: u64, pages: u64) {
        self.0.update(b"PAGEZERO");
        self.0.update(ipa.to_le_bytes());
        self.0.update(pages.to_le_bytes());
    }

    /// The handover region, `pages` pages at `ipa`.
    pub fn handover(&mut self, ipa: u64, pages: u64) {
        self.0.update(b"HANDOVER");
        self.0.update(ipa.to_le_bytes());
        self.0.update(pages.to_le_bytes());
    }

    /// A granule at `ipa` the host declared MMIO before the first run (the guard on).
    pub fn mmio_guard(&mut self, ipa: u64) {
        self.0.update(b"MMIOGARD");
        self.0.update(ipa.to_le_bytes());
    }

    /// SMCCC function IDs `first..first + count` the host had the VM forward to it before the
    /// first run (`VM_SMCCC_FORWARD`, ABI 5.0): which of the guest's calls reach the host.
    pub fn smccc_forward(&mut self, first: u64, count: u64) {
        self.0.update(b"SMCCCFWD");
        self.0.update(first.to_le_bytes());
        self.0.update(count.to_le_bytes());
    }

    /// The seal: vCPU 0's registers at its first run. Returns the measurement.
    pub fn seal(mut self, x: &[u64; 31], pc: u64, pstate: u64) -> [u8; DIGEST] {
        self.0.update(b"VCPUBOOT");
        for r in x {
            self.0.update(r.to_le_bytes());
        }
        self.0.update(pc.to_le_bytes());
        self.0.update(pstate.to_le_bytes());
        self.0.finalize().into()
    }
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; DIGEST] {
    Sha256::digest(bytes).into()
}

/// A secret derived from EL2's per-boot secret for a measurement: SHA-256 of `label`, the
/// secret and the measurement. Every input has a fixed length per label, so no value of one
/// VM extends to another's.
pub fn derive(label: &[u8; 16], boot_secret: &[u8; DIGEST], measurement: &[u8; DIGEST]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(boot_secret);
    h.update(measurement);
    h.finalize().into()
}

/// Label of the attestation CDI.
pub const CDI_ATTEST: &[u8; 16] = b"pkvm-rs cdi att\0";
/// Label of the sealing CDI.
pub const CDI_SEAL: &[u8; 16] = b"pkvm-rs cdi seal";

/// What EL2 writes into a VM's handover region at the seal, DICE-style: the measurement and
/// two secrets derived from it and EL2's per-boot secret (Compound Device Identifiers). The
/// mode is always *debug*: the boot secret is a random value of this boot, not a hardware root
/// of trust, so nothing here is evidence to anyone outside this machine and boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)]
pub struct Handover {
    /// [`HANDOVER_MAGIC`].
    pub magic: [u8; 8],
    /// 1.
    pub version: u32,
    /// [`MODE_DEBUG`].
    pub mode: u32,
    /// The VM's measurement.
    pub measurement: [u8; DIGEST],
    /// [`derive`]`(`[`CDI_ATTEST`]`, ...)`.
    pub cdi_attest: [u8; DIGEST],
    /// [`derive`]`(`[`CDI_SEAL`]`, ...)`.
    pub cdi_seal: [u8; DIGEST],
}

/// [`Handover::magic`].
pub const HANDOVER_MAGIC: [u8; 8] = *b"PKVMDICE";
/// DICE's *debug* mode (DICE Layering Architecture: 2).
pub const MODE_DEBUG: u32 = 2;

const _: () = assert!(core::mem::size_of::<Handover>() == 112);

impl Handover {
    /// The handover for `measurement` under `boot_secret`.
    pub fn new(measurement: [u8; DIGEST], boot_secret: &[u8; DIGEST]) -> Self {
        Self {
            magic: HANDOVER_MAGIC,
            version: 1,
            mode: MODE_DEBUG,
            measurement,
            cdi_attest: derive(CDI_ATTEST, boot_secret, &measurement),
            cdi_seal: derive(CDI_SEAL, boot_secret, &measurement),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_one() {
        // FIPS 180-2, appendix B.1.
        let want = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(digest(b"abc"), want);
    }

    #[test]
    fn the_measurement_is_the_documented_byte_sequence() {
        let page = [7u8; 4096];
        let mut m = Measurement::new(2, 36, 1, 0);
        m.page(0x4000_0000, &page);
        m.zero(0x4000_1000, 3);
        m.handover(0x4100_0000, 1);
        let mut x = [0u64; 31];
        x[0] = 0x40ff_0000;
        let got = m.seal(&x, 0x4000_0000, 0x3c5);
        // The same records, written out by hand.
        let mut bytes = std::vec::Vec::new();
        bytes.extend_from_slice(b"pkvm-rs measurement v1\0VMCONFIG");
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&36u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(b"PAGEDATA");
        bytes.extend_from_slice(&0x4000_0000u64.to_le_bytes());
        bytes.extend_from_slice(&digest(&page));
        bytes.extend_from_slice(b"PAGEZERO");
        bytes.extend_from_slice(&0x4000_1000u64.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(b"HANDOVER");
        bytes.extend_from_slice(&0x4100_0000u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(b"VCPUBOOT");
        for r in x {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        bytes.extend_from_slice(&0x4000_0000u64.to_le_bytes());
        bytes.extend_from_slice(&0x3c5u64.to_le_bytes());
        assert_eq!(got, digest(&bytes));
        // One byte of one page changes it.
        let mut other = page;
        other[4095] ^= 1;
        let mut m = Measurement::new(2, 36, 1, 0);
        m.page(0x4000_0000, &other);
        m.zero(0x4000_1000, 3);
        m.handover(0x4100_0000, 1);
        assert_ne!(m.seal(&x, 0x4000_0000, 0x3c5), got);
    }

    #[test]
    fn the_sve_length_is_measured_only_with_the_flag() {
        use crate::msg::vm_flags::{PROTECTED, SVE};
        let seal = |m: Measurement| m.seal(&[0; 31], 0, 0x3c5);
        let mut bytes = std::vec::Vec::new();
        bytes.extend_from_slice(b"pkvm-rs measurement v1\0VMCONFIG");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&36u32.to_le_bytes());
        bytes.extend_from_slice(&(PROTECTED | SVE).to_le_bytes());
        bytes.extend_from_slice(&64u64.to_le_bytes());
        bytes.extend_from_slice(b"VCPUBOOT");
        bytes.extend_from_slice(&[0; 31 * 8 + 8]);
        bytes.extend_from_slice(&0x3c5u64.to_le_bytes());
        assert_eq!(seal(Measurement::new(1, 36, PROTECTED | SVE, 64)), digest(&bytes));
        assert_ne!(seal(Measurement::new(1, 36, PROTECTED | SVE, 64)), seal(Measurement::new(1, 36, PROTECTED | SVE, 32)), "another length");
        assert_eq!(seal(Measurement::new(1, 36, PROTECTED, 0)), seal(Measurement::new(1, 36, PROTECTED, 64)), "no flag: no length record");
    }

    #[test]
    fn secrets_differ_per_measurement_and_per_boot() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (s1, s2) = ([9u8; 32], [8u8; 32]);
        let h = Handover::new(a, &s1);
        assert_eq!((h.magic, h.version, h.mode), (*b"PKVMDICE", 1, 2));
        assert_ne!(h.cdi_attest, h.cdi_seal);
        assert_ne!(h.cdi_attest, Handover::new(b, &s1).cdi_attest, "another VM");
        assert_ne!(h.cdi_attest, Handover::new(a, &s2).cdi_attest, "another boot");
        assert_eq!(h, Handover::new(a, &s1), "the same VM, the same boot");
    }
}
