//! Messages exchanged through a CPU's message page.
//!
//! Every message is `#[repr(C)]`, has no padding (so `zerocopy` can derive `IntoBytes`), and has
//! its size and field offsets pinned by `const` assertions: a layout change is a compile error on
//! both sides, not a silent ABI break. All messages live at offset 0 of the page.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Number of payload words in an echo message.
pub const ECHO_WORDS: usize = 6;

/// Request of [`crate::HypercallId::Echo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EchoRequest {
    /// Any value; returned unchanged.
    pub nonce: u64,
    /// Reserved, must be zero ([`crate::HypError::BadMessage`] otherwise).
    pub flags: u64,
    /// Payload.
    pub words: [u64; ECHO_WORDS],
}

/// Response of [`crate::HypercallId::Echo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EchoResponse {
    /// The request's nonce.
    pub nonce: u64,
    /// Wrapping sum of the request's payload words.
    pub sum: u64,
    /// The request's payload, each word bitwise inverted.
    pub inverted: [u64; ECHO_WORDS],
}

impl EchoRequest {
    /// The response a correct hypervisor gives to this request.
    pub fn expected_response(&self) -> EchoResponse {
        let mut inverted = [0; ECHO_WORDS];
        for (o, w) in inverted.iter_mut().zip(self.words) {
            *o = !w;
        }
        EchoResponse {
            nonce: self.nonce,
            sum: self.words.iter().fold(0u64, |a, w| a.wrapping_add(*w)),
            inverted,
        }
    }
}

/// Response of [`crate::HypercallId::HypInfo`]: what EL2 found at boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HypInfo {
    /// [`crate::AbiVersion::encode`] of the running hypervisor.
    pub abi_version: u32,
    /// Number of CPUs EL2 manages (from the device tree).
    pub nr_cpus: u32,
    /// Base of RAM.
    pub ram_base: u64,
    /// Size of RAM in bytes.
    pub ram_size: u64,
    /// Base of the memory EL2 keeps for itself (no host access).
    pub hyp_base: u64,
    /// Size of EL2's memory in bytes.
    pub hyp_size: u64,
    /// Intermediate physical address size of the host's stage 2, in bits.
    pub host_ipa_bits: u32,
    /// 1 once set-up is finalised.
    pub finalised: u32,
}

const _: () = {
    assert!(size_of::<EchoRequest>() == 64);
    assert!(offset_of!(EchoRequest, nonce) == 0);
    assert!(offset_of!(EchoRequest, flags) == 8);
    assert!(offset_of!(EchoRequest, words) == 16);
    assert!(size_of::<EchoResponse>() == 64);
    assert!(offset_of!(EchoResponse, sum) == 8);
    assert!(offset_of!(EchoResponse, inverted) == 16);
    assert!(size_of::<HypInfo>() == 48);
    assert!(offset_of!(HypInfo, nr_cpus) == 4);
    assert!(offset_of!(HypInfo, ram_base) == 8);
    assert!(offset_of!(HypInfo, hyp_base) == 24);
    assert!(offset_of!(HypInfo, host_ipa_bits) == 40);
    assert!(offset_of!(HypInfo, finalised) == 44);
    // Every message fits in the page.
    assert!(size_of::<HypInfo>() as u64 <= crate::PAGE_SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_bytes_round_trip() {
        let r = EchoRequest { nonce: 0x1122_3344_5566_7788, flags: 0, words: [1, 2, 3, 4, 5, u64::MAX] };
        let bytes = r.as_bytes();
        assert_eq!(bytes.len(), 64);
        assert_eq!(&bytes[0..8], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(EchoRequest::read_from_bytes(bytes).unwrap(), r);
    }

    #[test]
    fn echo_response_bytes_round_trip() {
        let r = EchoRequest { nonce: 9, flags: 0, words: [1, 2, 3, 4, 5, u64::MAX] }.expected_response();
        assert_eq!(r.sum, 14, "wrapping sum");
        assert_eq!(r.inverted[0], !1);
        assert_eq!(EchoResponse::read_from_bytes(r.as_bytes()).unwrap(), r);
    }

    #[test]
    fn hyp_info_bytes_round_trip() {
        let i = HypInfo {
            abi_version: crate::ABI_VERSION.encode() as u32,
            nr_cpus: 2,
            ram_base: 0x4000_0000,
            ram_size: 1 << 30,
            hyp_base: 0x4020_0000,
            hyp_size: 16 << 20,
            host_ipa_bits: 40,
            finalised: 1,
        };
        let b = i.as_bytes();
        assert_eq!(&b[8..16], &0x4000_0000u64.to_ne_bytes());
        assert_eq!(HypInfo::read_from_bytes(b).unwrap(), i);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(EchoRequest::read_from_bytes(&[0u8; 63]).is_err());
        assert!(HypInfo::read_from_prefix(&[0u8; 47]).is_err());
    }
}
