//! Virtio devices for the host VMM: the virtio-mmio transport (version 2) and split
//! virtqueues, as pure state machines over guest memory that the VMM reaches through
//! [`GuestMemory`].
//!
//! Place in the flow: guest MMIO exit in a transport's frame → [`mmio::VirtioMmio::read`] /
//! [`mmio::VirtioMmio::write`]; a write to `QueueNotify` runs the device over its queue
//! ([`queue`]: the walker that copies each descriptor chain out of guest memory once and
//! checks it), which moves data between guest buffers and the VMM. Every call returns the
//! interrupt line's level ([`mmio::Outcome`]), which the VMM drives into the vGIC as the
//! transport's SPI, and the error that made the device need a reset, if one did.
//!
//! - [`mmio`]: the register file and the device status state machine (`Status`, feature
//!   negotiation, queue setup, interrupts), generic over a [`mmio::Device`].
//! - [`queue`]: split virtqueues: the descriptor chain walker, the used ring, and
//!   [`queue::Chain`] with its byte cursors.
//! - [`console`]: virtio-console (device ID 3), one port, no multiport.
//! - [`blk`]: virtio-blk (device ID 2) over a [`blk::Disk`] the VMM provides, and
//!   [`blk::RamDisk`], a disk in memory.
//!
//! Specification: *Virtual I/O Device (VIRTIO) Version 1.2* (OASIS, cs01); section numbers in
//! this module and below are that document's. The constants are written here with their
//! section rather than taken from the `virtio-spec` or `virtio-drivers` crates: the first
//! brings volatile-access and PCI types this model does not need, the second is the driver
//! side; both would add more code than the few dozen constants they would replace.
//!
//! # What the guest is, and what is offered
//!
//! The guest is hostile: every register value, every ring index, descriptor and buffer
//! address is checked, and a wrong one is an [`Error`], never a panic. An error in a queue
//! makes the device *need a reset* (§2.1.2): `Status.DEVICE_NEEDS_RESET` is set, a
//! configuration change interrupt raised (if `DRIVER_OK` is set), and no queue is touched
//! again until the driver resets the device by writing 0 to `Status`. The features offered
//! are `VIRTIO_F_VERSION_1` and `VIRTIO_F_ACCESS_PLATFORM` (§6) and the device's own;
//! *not* offered: indirect descriptors (`VIRTIO_F_INDIRECT_DESC`: a descriptor with
//! `VIRTQ_DESC_F_INDIRECT` is an error), `VIRTIO_F_EVENT_IDX`, packed rings, in-order use,
//! notification data and queue reset.
//!
//! # Memory
//!
//! The device reads and writes guest memory only through [`GuestMemory`], in the guest's
//! physical address space ([`Gpa`]). The VMM's implementation decides what the device may
//! touch: for a protected VM, only the pages the guest shared (its restricted DMA pool); a
//! refused access ([`MemError`]) is an error in the queue, like a bad descriptor. The
//! device copies each descriptor chain out of guest memory once before it checks it, so the
//! guest cannot change a descriptor between its check and its use (STYLE habit 7).
//! No `unsafe`, no heap: a chain is copied into a fixed array ([`queue::Chain`]), data moves
//! through small buffers on the stack.

pub mod blk;
pub mod console;
pub mod guest_ram;
pub mod mmio;
pub mod queue;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

/// A guest physical address (an IPA of the VM), as a driver writes it into a ring register or
/// a descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

impl Gpa {
    /// `self + offset`, or `None` if it wraps the 64-bit address space.
    pub const fn checked_add(self, offset: u64) -> Option<Gpa> {
        match self.0.checked_add(offset) {
            Some(a) => Some(Gpa(a)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

/// Why the VMM's [`GuestMemory`] refused an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// Some of the range is not the guest's RAM (or the range wraps the address space).
    OutsideRam,
    /// The range is the guest's RAM, but some of it is not shared with the host: a protected
    /// VM's private memory, which the device must not reach.
    NotShared,
}

/// The guest's memory as the device may access it; the VMM implements it (tests use a fake).
///
/// The device calls these in program order and relies on [`GuestMemory::fence`] for the
/// ordering the rings need (§2.7.13, §2.7.14); it never keeps a reference into guest memory.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes of guest memory at `gpa` into `buf`.
    ///
    /// # Errors
    ///
    /// The whole range must be memory the device may read; if it is not, nothing useful is in
    /// `buf`, and the device treats the queue as broken.
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError>;

    /// Copies `data` into guest memory at `gpa`.
    ///
    /// # Errors
    ///
    /// The whole range must be memory the device may write; if it is not, part of it may have
    /// been written, and the device treats the queue as broken.
    fn write(&self, gpa: Gpa, data: &[u8]) -> Result<(), MemError>;

    /// A full memory barrier between the device's guest memory accesses before it and those
    /// after it, as observed by the guest's vCPUs (`dmb ish` on AArch64). The device calls it
    /// after reading the available ring's `idx` (before it reads the entries that `idx`
    /// publishes), between writing a used ring element and the used ring's `idx`, and after
    /// that `idx` before it reads the available ring's `flags`.
    fn fence(&self);
}

/// Why a virtio device stopped: the guest set up or used a virtqueue in a way the
/// specification forbids. The device then needs a reset (`Status.DEVICE_NEEDS_RESET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `QueueReady` was set while `QueueNum` was 0, above `QueueNumMax` or not a power of
    /// two (§2.7, §4.2.2.2).
    QueueSize {
        /// The queue.
        queue: u16,
        /// The size the driver wrote to `QueueNum`.
        size: u32,
    },
    /// `QueueReady` was set while a ring's address was not aligned as §2.7 requires (16 for
    /// the descriptor table, 2 for the available ring, 4 for the used ring), or the ring
    /// wrapped the address space.
    QueueAddress {
        /// The queue.
        queue: u16,
    },
    /// Processing the queue found `error`.
    Queue {
        /// The queue.
        queue: u16,
        /// What was wrong.
        error: queue::QueueError,
    },
}
