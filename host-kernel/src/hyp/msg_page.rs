//! The message pages: one page per host CPU, shared with EL2 (`SET_MESSAGE_PAGE`), through
//! which hypercalls pass what does not fit in registers.

use crate::cpu::MAX_CPUS;
use shared_abi::msg::{CoalescedBatch, CoalescedWrite, COALESCED_MAX, COALESCED_OFFSET};
use shared_abi::PAGE_SIZE;
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

/// The coalesced MMIO writes the last exit record on CPU `cpu` carried: the number of the
/// first ([`CoalescedBatch::first_seq`]) and write `i` of them (`i` below the record's
/// [`shared_abi::msg::VcpuExit::coalesced`], at most [`COALESCED_MAX`]), each read when asked:
/// a batch of one write costs one write's loads, not the whole batch's.
pub fn read_coalesced(cpu: usize) -> (u64, impl Fn(usize) -> CoalescedWrite) {
    const { assert!(COALESCED_OFFSET % 8 == 0 && COALESCED_OFFSET + core::mem::size_of::<CoalescedBatch>() <= PAGE_SIZE as usize) };
    let batch = msg_page(cpu).wrapping_add(COALESCED_OFFSET) as *const CoalescedBatch;
    // SAFETY: within this CPU's message page (asserted above), 8-byte aligned; any bytes are a
    // valid `u64`.
    let first = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*batch).first_seq)) };
    let write = move |i: usize| {
        let i = i.min(COALESCED_MAX - 1);
        // SAFETY: as above, entry `i` of the batch's array (`i` < COALESCED_MAX); any bytes are
        // a valid write.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*batch).writes[i])) }
    };
    (first, write)
}

/// Reads a message from CPU `cpu`'s message page.
pub fn read_msg<T: FromBytes>(cpu: usize) -> T {
    // SAFETY: within this CPU's message page, page aligned; any bytes are a valid `T`.
    unsafe { core::ptr::read_volatile(msg_page(cpu) as *const T) }
}
