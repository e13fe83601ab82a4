//! What a guest calls EL2 with beyond PSCI: the pKVM guest ABI, SMCCC vendor-specific
//! hypervisor service calls (owner 6), as KVM defines them and Linux's `pkvm-guest` driver
//! (`drivers/virt/coco/pkvm-guest`, Linux 6.12) uses them. EL2 serves them itself; the host
//! learns of a share or unshare from an exit ([`crate::msg::exit::MEM_SHARE`]).
//!
//! Discovery: SMCCC 1.1 over `HVC` (found through PSCI 1.0's `PSCI_FEATURES`), then
//! [`VENDOR_HYP_CALL_UID`] must return [`KVM_UID`] and [`VENDOR_HYP_KVM_FEATURES`] the bitmap
//! of the services below.
//!
//! Every memory call takes one granule's address in `x1` ([`HYP_MEMINFO`] tells the granule:
//! 4 KiB); `x2` and `x3` must be 0. The answer in `x0` is [`SUCCESS`] or
//! [`INVALID_PARAMETER`]; a VM that is not protected gets [`NOT_SUPPORTED`] (the services are
//! for protected VMs, whose memory the host cannot otherwise reach).

/// `VENDOR_HYP_CALL_UID`: `x0..=x3` = [`KVM_UID`].
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
/// `VENDOR_HYP_KVM_FEATURES` (function 0): `x0` = the bitmap of services ([`features`]),
/// `x1..=x3` = 0.
pub const VENDOR_HYP_KVM_FEATURES: u32 = 0x8600_0000;
/// `HYP_MEMINFO` (function 2): `x0` = the protection granule in bytes.
pub const HYP_MEMINFO: u32 = 0xC600_0002;
/// `MEM_SHARE` (function 3): shares the granule at IPA `x1`, guest RAM the guest owns and has
/// not shared, with the host, which may then map it read/write.
pub const MEM_SHARE: u32 = 0xC600_0003;
/// `MEM_UNSHARE` (function 4): takes back the granule at IPA `x1` that the guest shared; the
/// host's mappings of it are gone, on every CPU, when the call returns.
pub const MEM_UNSHARE: u32 = 0xC600_0004;
/// `MMIO_GUARD` (function 7): declares the granule at IPA `x1`, outside the guest's RAM, as
/// MMIO the host may emulate. From the first such call on, a guest access outside its RAM
/// that is not to a declared granule is an external abort injected into the guest, and the
/// host never sees it.
pub const MMIO_GUARD: u32 = 0xC600_0007;

/// KVM's vendor hypervisor UID, 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as `x0..=x3`.
pub const KVM_UID: [u32; 4] = [0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D];

/// Bits of [`VENDOR_HYP_KVM_FEATURES`]: the function numbers served.
pub mod features {
    /// `VENDOR_HYP_KVM_FEATURES` itself.
    pub const FEATURES: u32 = 0;
    /// [`super::HYP_MEMINFO`].
    pub const HYP_MEMINFO: u32 = 2;
    /// [`super::MEM_SHARE`].
    pub const MEM_SHARE: u32 = 3;
    /// [`super::MEM_UNSHARE`].
    pub const MEM_UNSHARE: u32 = 4;
    /// [`super::MMIO_GUARD`].
    pub const MMIO_GUARD: u32 = 7;
    /// The bitmap a protected VM gets.
    pub const PROTECTED: u64 = 1 << FEATURES | 1 << HYP_MEMINFO | 1 << MEM_SHARE | 1 << MEM_UNSHARE | 1 << MMIO_GUARD;
    /// The bitmap any other VM gets: only the discovery call.
    pub const OTHER: u64 = 1 << FEATURES;
}

/// The protection granule (`HYP_MEMINFO`): a page.
pub const GRANULE: u64 = crate::PAGE_SIZE;

/// SMCCC `SUCCESS`.
pub const SUCCESS: u64 = 0;
/// SMCCC `NOT_SUPPORTED` (-1).
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
/// SMCCC `INVALID_PARAMETER` (-3): a granule that is not the guest's RAM in the state the call
/// needs (owned and not shared for `MEM_SHARE`, shared for `MEM_UNSHARE`), RAM for
/// `MMIO_GUARD`, not aligned, outside the IPA space, non-zero `x2`/`x3`, or no room left to
/// record a guarded granule.
pub const INVALID_PARAMETER: u64 = -3i64 as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_is_kvms_uuid_in_smccc_order() {
        // SMCCC returns a UUID's 16 bytes, in order, as four little-endian words.
        let uuid: [u8; 16] = [0x28, 0xb4, 0x6f, 0xb6, 0x2e, 0xc5, 0x11, 0xe9, 0xa9, 0xca, 0x4b, 0x56, 0x4d, 0x00, 0x3a, 0x74];
        for (i, w) in KVM_UID.iter().enumerate() {
            assert_eq!(w.to_le_bytes(), uuid[4 * i..4 * i + 4]);
        }
    }

    #[test]
    fn ids_are_fast_64_bit_vendor_hypervisor_calls() {
        for id in [HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD] {
            assert_eq!(id >> 24, 0xC6, "fast, SMC64, owner 6");
        }
        assert_eq!(features::PROTECTED, 0b1001_1101);
    }
}
