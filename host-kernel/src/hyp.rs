//! The hypercall client: hypercalls as the ABI in [`shared_abi`] defines them, and the
//! per-CPU message pages that carry their larger arguments and results.

use crate::cpu::MAX_CPUS;
use shared_abi::{decode_result, HypResult, HypercallId, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

#[repr(C, align(4096))]
struct MessagePages([[u8; PAGE_SIZE as usize]; MAX_CPUS]);

/// One message page per CPU, shared with EL2 during set-up.
static mut MSG_PAGES: MessagePages = MessagePages([[0; PAGE_SIZE as usize]; MAX_CPUS]);

/// CPU `cpu`'s message page.
pub fn msg_page(cpu: usize) -> *mut u8 {
    // SAFETY: taking the address of a static; accesses go through volatile reads and writes.
    unsafe { core::ptr::addr_of_mut!(MSG_PAGES.0[cpu]) as *mut u8 }
}

/// Writes a message to CPU `cpu`'s message page.
pub fn write_msg<T: IntoBytes + Immutable>(cpu: usize, m: &T) {
    for (i, b) in m.as_bytes().iter().enumerate() {
        // SAFETY: within this CPU's message page.
        unsafe { core::ptr::write_volatile(msg_page(cpu).add(i), *b) };
    }
}

/// Reads a message from CPU `cpu`'s message page.
pub fn read_msg<T: FromBytes>(cpu: usize) -> T {
    // SAFETY: within this CPU's message page, page aligned; any bytes are a valid `T`.
    unsafe { core::ptr::read_volatile(msg_page(cpu) as *const T) }
}

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
