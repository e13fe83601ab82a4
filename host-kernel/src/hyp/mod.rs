//! The hypercall client: hypercalls as the ABI in [`shared_abi`] defines them ([`call`],
//! [`raw`]), the per-CPU message pages that carry their larger arguments and results
//! ([`msg_page`]), and typed calls over both for VMs and vCPUs ([`client`]).

pub mod client;
mod msg_page;

pub use msg_page::{msg_page, read_msg, write_msg};
use shared_abi::{decode_result, HypResult, HypercallId};

/// Makes hypercall `id` with `args` in `x1..`; the remaining argument registers are zero.
pub fn call(id: HypercallId, args: &[u64]) -> HypResult {
    raw(id as u64, args)
}

/// Makes an `HVC #0` with any `x0` (for probing unknown IDs) and `args` in `x1..`.
pub fn raw(x0: u64, args: &[u64]) -> HypResult {
    let mut a = [0u64; 17];
    a[..args.len()].copy_from_slice(args);
    let r = if x0 >> 32 == 0 {
        smccc::hvc64(x0 as u32, a)
    } else {
        crate::arch::hvc0(x0, a)
    };
    decode_result([r[0], r[1], r[2], r[3]])
}

/// `HVC` with a non-zero immediate (not part of the ABI).
pub fn hvc_imm1(x0: u64) -> u64 {
    crate::arch::hvc1(x0)
}
