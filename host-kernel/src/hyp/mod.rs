//! The hypercall client: hypercalls as the ABI in [`shared_abi`] defines them ([`call`],
//! [`raw`]), the per-CPU message pages that carry their larger arguments and results
//! ([`msg_page`]), and typed calls over both for VMs and vCPUs ([`client`]).

pub mod client;
mod msg_page;

pub use msg_page::{msg_page, read_coalesced, read_msg, write_msg};
use shared_abi::{decode_result, HypResult, HypercallId};

/// Makes hypercall `id` with `args` in `x1..`; the remaining argument registers are zero.
pub fn call(id: HypercallId, args: &[u64]) -> HypResult {
    raw(id as u64, args)
}

/// Makes an `HVC #0` with any `x0` (for probing unknown IDs) and `args` in `x1..` (at most 7;
/// more are not sent).
// Inlined: the argument registers are then set straight from the caller's values.
#[inline(always)]
pub fn raw(x0: u64, args: &[u64]) -> HypResult {
    debug_assert!(args.len() <= 7, "the ABI has seven argument registers");
    let a: [u64; 7] = core::array::from_fn(|i| args.get(i).copied().unwrap_or(0));
    decode_result(crate::arch::hvc0(x0, a))
}

/// `HVC` with a non-zero immediate (not part of the ABI).
pub fn hvc_imm1(x0: u64) -> u64 {
    crate::arch::hvc1(x0)
}
