//! Split virtqueues (§2.7): a queue's configuration as the transport's registers set it, the
//! walker that takes descriptor chains from the available ring, and the used ring.
//!
//! Place in the flow: the transport ([`super::mmio`]) keeps one [`SplitQueue`] per queue and,
//! on a notification, lends the device a [`Virtqueue`]: the queue and guest memory together.
//! The device takes chains with [`Virtqueue::pop`], moves its data with the chain's
//! [`Cursor`]s, and gives each chain back with [`Virtqueue::push_used`].
//!
//! # The walker does not trust the guest
//!
//! [`Virtqueue::pop`] copies a whole chain out of guest memory into a [`Chain`] (read once,
//! STYLE habit 7) and checks every descriptor as it goes. Each check is a [`QueueError`]:
//!
//! - the available ring's `idx` may move ahead of the device by at most the queue size (it
//!   never moves back, §2.7.6.1);
//! - a head or `next` index must be below the queue size;
//! - a chain has at most queue size descriptors (§2.7.5.3.1): a longer one, or one that loops,
//!   is stopped at the first descriptor past that, after at most queue size reads;
//! - at most `u32::MAX` bytes in all (§2.7.5.2 allows 2^32, which a used ring `len` cannot
//!   express);
//! - flags: only `NEXT` and `WRITE`; `INDIRECT` is an error because `VIRTIO_F_INDIRECT_DESC`
//!   is not offered (§2.7.5.3.1), as is any undefined bit;
//! - no zero-length descriptor (QEMU refuses them too: "zero sized buffers are not allowed");
//! - no buffer that wraps the address space;
//! - no device-readable descriptor after a device-writable one (§2.7.4.2).
//!
//! Whether a buffer is memory the device may touch is [`GuestMemory`]'s decision, made when
//! the device reads or writes it ([`QueueError::Memory`]).
//!
//! # Work per notification
//!
//! A [`Virtqueue`] hands out at most queue size chains, each walked in at most queue size
//! descriptor reads, and every ring access is a fixed-size read or write: a notification
//! costs O(size²) small guest memory accesses before any data moves. How many data bytes a
//! device moves per chain is the device's bound, stated in its module.
//!
//! No `VIRTIO_F_EVENT_IDX`: the device sends a used buffer notification after it used buffers
//! unless the available ring's `flags` has `VIRTQ_AVAIL_F_NO_INTERRUPT` (§2.7.7.2), and never
//! asks the driver to hold back its notifications (the used ring's `flags` stays as the
//! driver initialised it, 0, §2.7.10.1).

use super::{Error, Gpa, GuestMemory, MemError};

/// The largest queue size the devices offer (`QueueNumMax`). A [`Chain`] holds this many
/// segments (16 bytes each) on the stack.
pub const QUEUE_SIZE_MAX: u16 = 256;

/// `VIRTQ_DESC_F_NEXT` (§2.7.5): the chain continues at `next`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE` (§2.7.5): the buffer is device-writable.
const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (§2.7.5.3): the buffer is a table of descriptors.
const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (§2.7.6): the driver does not want used buffer notifications.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The size of a descriptor (`struct virtq_desc`, §2.7.5).
const DESC_SIZE: u64 = 16;
/// The size of a used ring element (`struct virtq_used_elem`, §2.7.8).
const USED_ELEM_SIZE: u64 = 8;
/// Where the ring entries start in the available and used rings, after `flags` and `idx`.
const RING_START: u64 = 4;

/// What was wrong in a queue. Any of these makes the device need a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Guest memory refused an access to a ring, a descriptor or a buffer.
    Memory {
        /// Where the refused access started.
        gpa: Gpa,
        /// Why it was refused.
        cause: MemError,
    },
    /// The available ring's `idx` is more than the queue size ahead of the chains the device
    /// has taken, or behind them (§2.7.6.1: the driver never decrements it).
    AvailIndexJump {
        /// The `idx` the driver published.
        idx: u16,
        /// How many chains the device has taken (modulo 2^16).
        taken: u16,
    },
    /// A head in the available ring, or a descriptor's `next`, is not below the queue size.
    DescriptorIndex {
        /// The index.
        index: u16,
    },
    /// The chain that starts at `head` has more descriptors than the queue size: it loops, or
    /// is longer than the table (§2.7.5.3.1).
    ChainTooLong {
        /// The chain's head.
        head: u16,
    },
    /// The chain that starts at `head` holds more than `u32::MAX` bytes (§2.7.5.2).
    ChainTooLarge {
        /// The chain's head.
        head: u16,
    },
    /// Descriptor `index` has `VIRTQ_DESC_F_INDIRECT`, but `VIRTIO_F_INDIRECT_DESC` is not
    /// offered (§2.7.5.3.1).
    Indirect {
        /// The descriptor.
        index: u16,
    },
    /// Descriptor `index` has a flag bit that §2.7.5 does not define.
    UnknownFlags {
        /// The descriptor.
        index: u16,
        /// Its flags.
        flags: u16,
    },
    /// Descriptor `index` has length 0.
    ZeroLength {
        /// The descriptor.
        index: u16,
    },
    /// Descriptor `index`'s buffer wraps the 64-bit address space.
    AddressOverflow {
        /// The descriptor.
        index: u16,
    },
    /// Descriptor `index` is device-readable but follows a device-writable one (§2.7.4.2).
    ReadableAfterWritable {
        /// The descriptor.
        index: u16,
    },
}

/// One buffer of a chain: guest memory at `addr`, `len` bytes (`len` > 0, and the range does
/// not wrap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Where the buffer starts.
    pub addr: Gpa,
    /// Its length.
    pub len: u32,
}

/// A descriptor chain, copied out of guest memory and checked: its device-readable segments,
/// then its device-writable ones.
#[derive(Clone, Debug)]
pub struct Chain {
    head: u16,
    segments: [Segment; QUEUE_SIZE_MAX as usize],
    /// Segments held.
    count: usize,
    /// How many of them (the first ones) are device-readable.
    readable: usize,
}

impl Chain {
    fn new(head: u16) -> Self {
        Self { head, segments: [Segment::default(); QUEUE_SIZE_MAX as usize], count: 0, readable: 0 }
    }

    /// The index of the chain's first descriptor: its `id` in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The device-readable segments, in chain order.
    pub fn readable(&self) -> &[Segment] {
        &self.segments[..self.readable]
    }

    /// The device-writable segments, in chain order.
    pub fn writable(&self) -> &[Segment] {
        &self.segments[self.readable..self.count]
    }

    /// The bytes of the device-readable segments.
    pub fn readable_len(&self) -> u64 {
        total(self.readable())
    }

    /// The bytes of the device-writable segments.
    pub fn writable_len(&self) -> u64 {
        total(self.writable())
    }

    /// A cursor over the device-readable bytes, from the first.
    pub fn reader(&self) -> Cursor<'_> {
        Cursor { segments: self.readable(), segment: 0, offset: 0 }
    }

    /// A cursor over the device-writable bytes, from the first.
    pub fn writer(&self) -> Cursor<'_> {
        Cursor { segments: self.writable(), segment: 0, offset: 0 }
    }
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// A position in a chain's readable or writable bytes, as if its segments were one buffer.
#[derive(Clone, Debug)]
pub struct Cursor<'c> {
    segments: &'c [Segment],
    /// The segment the next byte is in.
    segment: usize,
    /// The next byte's offset in that segment (below its length).
    offset: u32,
}

impl Cursor<'_> {
    /// The bytes from here to the end.
    pub fn remaining(&self) -> u64 {
        total(self.segments.get(self.segment..).unwrap_or(&[])) - u64::from(self.offset)
    }

    /// Copies the next bytes of guest memory into `buf`, as many as fit and remain; returns
    /// how many (0 at the end).
    ///
    /// # Errors
    ///
    /// [`QueueError::Memory`] if guest memory refused a segment.
    pub fn read<M: GuestMemory>(&mut self, mem: &M, buf: &mut [u8]) -> Result<usize, QueueError> {
        let mut done = 0;
        while done < buf.len() {
            let Some((gpa, n)) = self.next_piece(buf.len() - done) else { break };
            mem.read(gpa, &mut buf[done..done + n]).map_err(|cause| QueueError::Memory { gpa, cause })?;
            done += n;
        }
        Ok(done)
    }

    /// Copies `data`, or as much of it as remains room for, into guest memory at the next
    /// bytes; returns how many.
    ///
    /// # Errors
    ///
    /// [`QueueError::Memory`] if guest memory refused a segment.
    pub fn write<M: GuestMemory>(&mut self, mem: &M, data: &[u8]) -> Result<usize, QueueError> {
        let mut done = 0;
        while done < data.len() {
            let Some((gpa, n)) = self.next_piece(data.len() - done) else { break };
            mem.write(gpa, &data[done..done + n]).map_err(|cause| QueueError::Memory { gpa, cause })?;
            done += n;
        }
        Ok(done)
    }

    /// The next at most `max` bytes that lie in one segment, and moves past them; `None` at
    /// the end.
    fn next_piece(&mut self, max: usize) -> Option<(Gpa, usize)> {
        let seg = self.segments.get(self.segment)?;
        let left = seg.len - self.offset;
        let n = (left as usize).min(max);
        // The walker checked that `addr + len` does not wrap, and `offset < len`.
        let gpa = Gpa(seg.addr.0 + u64::from(self.offset));
        if n == left as usize {
            self.segment += 1;
            self.offset = 0;
        } else {
            self.offset += n as u32;
        }
        Some((gpa, n))
    }
}

/// One split virtqueue: its configuration as the driver wrote it through the transport, and
/// the device's positions in its rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitQueue {
    /// `QueueNumMax`.
    max_size: u16,
    /// `QueueNum` as last written (checked when the queue is made ready).
    pub(super) size: u32,
    /// `QueueReady`.
    ready: bool,
    /// `QueueDesc`: the descriptor table (Descriptor Area).
    pub(super) desc: u64,
    /// `QueueDriver`: the available ring (Driver Area).
    pub(super) driver: u64,
    /// `QueueDevice`: the used ring (Device Area).
    pub(super) device: u64,
    /// How many chains the device has taken from the available ring (modulo 2^16).
    next_avail: u16,
    /// How many elements the device has put in the used ring (modulo 2^16).
    next_used: u16,
}

impl SplitQueue {
    /// A queue at reset whose `QueueNumMax` is `max_size` (at most [`QUEUE_SIZE_MAX`]).
    pub(super) const fn new(max_size: u16) -> Self {
        let max_size = if max_size > QUEUE_SIZE_MAX { QUEUE_SIZE_MAX } else { max_size };
        Self { max_size, size: 0, ready: false, desc: 0, driver: 0, device: 0, next_avail: 0, next_used: 0 }
    }

    /// `QueueNumMax`.
    pub(super) fn max_size(&self) -> u16 {
        self.max_size
    }

    /// `QueueReady`.
    pub(super) fn ready(&self) -> bool {
        self.ready
    }

    /// `QueueReady` = 0: the device stops using the queue.
    pub(super) fn disable(&mut self) {
        self.ready = false;
    }

    /// `QueueReady` = 1: checks the size and the rings' placement and starts at the rings'
    /// beginning. The queue stays not ready on an error.
    pub(super) fn enable(&mut self, queue: u16) -> Result<(), Error> {
        if self.ready {
            return Ok(());
        }
        let size = self.size;
        if size == 0 || size > u32::from(self.max_size) || !size.is_power_of_two() {
            return Err(Error::QueueSize { queue, size });
        }
        let n = u64::from(size);
        let fits = |base: u64, align: u64, len: u64| base.is_multiple_of(align) && base.checked_add(len).is_some();
        if !fits(self.desc, 16, DESC_SIZE * n)
            || !fits(self.driver, 2, RING_START + 2 + 2 * n)
            || !fits(self.device, 4, RING_START + 2 + USED_ELEM_SIZE * n)
        {
            return Err(Error::QueueAddress { queue });
        }
        self.ready = true;
        self.next_avail = 0;
        self.next_used = 0;
        Ok(())
    }

    /// The queue with guest memory, for one round of the device's work; `None` if the queue
    /// is not ready.
    pub(super) fn view<'a, M: GuestMemory>(&'a mut self, mem: &'a M) -> Option<Virtqueue<'a, M>> {
        if !self.ready {
            return None;
        }
        // `enable` checked that the size is a power of two, at most QUEUE_SIZE_MAX.
        let size = self.size as u16;
        Some(Virtqueue { q: self, mem, size, budget: size, used: 0 })
    }
}

/// A ready queue with guest memory, lent to a device for one round of work (one notification,
/// or one batch of input).
pub struct Virtqueue<'a, M> {
    q: &'a mut SplitQueue,
    mem: &'a M,
    /// The queue size (a power of two, at most [`QUEUE_SIZE_MAX`]).
    size: u16,
    /// How many more chains this round may take.
    budget: u16,
    /// How many chains this round has put in the used ring.
    used: u16,
}

impl<'a, M: GuestMemory> Virtqueue<'a, M> {
    /// The guest memory the chains' buffers are in.
    pub fn memory(&self) -> &'a M {
        self.mem
    }

    /// How many chains this round has put in the used ring.
    pub fn used(&self) -> u16 {
        self.used
    }

    /// Takes the next chain the driver made available, checked; `None` if there is none, or
    /// if this round has taken queue size chains already.
    ///
    /// # Errors
    ///
    /// Any [`QueueError`] but [`QueueError::Memory`]'s about buffers: the available ring or
    /// the chain is not as the specification requires, or guest memory refused to let the
    /// device read them. The device then needs a reset; the chain is lost.
    pub fn pop(&mut self) -> Result<Option<Chain>, QueueError> {
        if self.budget == 0 {
            return Ok(None);
        }
        let driver = Gpa(self.q.driver);
        let idx = read_u16(self.mem, offset(driver, 2))?;
        // The entries `idx` publishes were written before it (§2.7.13.3): read them after.
        self.mem.fence();
        let pending = idx.wrapping_sub(self.q.next_avail);
        if pending > self.size {
            return Err(QueueError::AvailIndexJump { idx, taken: self.q.next_avail });
        }
        if pending == 0 {
            return Ok(None);
        }
        let slot = u64::from(self.q.next_avail % self.size);
        let head = read_u16(self.mem, offset(driver, RING_START + 2 * slot))?;
        let chain = self.walk(head)?;
        self.q.next_avail = self.q.next_avail.wrapping_add(1);
        self.budget -= 1;
        Ok(Some(chain))
    }

    /// Copies the chain that starts at `head` out of the descriptor table, checking each
    /// descriptor.
    fn walk(&self, head: u16) -> Result<Chain, QueueError> {
        if head >= self.size {
            return Err(QueueError::DescriptorIndex { index: head });
        }
        let mut chain = Chain::new(head);
        let mut index = head;
        let mut writable = false;
        let mut bytes: u64 = 0;
        loop {
            if chain.count == usize::from(self.size) {
                return Err(QueueError::ChainTooLong { head });
            }
            let mut d = [0u8; DESC_SIZE as usize];
            let at = offset(Gpa(self.q.desc), DESC_SIZE * u64::from(index));
            self.mem.read(at, &mut d).map_err(|cause| QueueError::Memory { gpa: at, cause })?;
            let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect { index });
            }
            if flags & !(DESC_F_NEXT | DESC_F_WRITE) != 0 {
                return Err(QueueError::UnknownFlags { index, flags });
            }
            if len == 0 {
                return Err(QueueError::ZeroLength { index });
            }
            if addr.checked_add(u64::from(len)).is_none() {
                return Err(QueueError::AddressOverflow { index });
            }
            if flags & DESC_F_WRITE != 0 {
                writable = true;
            } else if writable {
                return Err(QueueError::ReadableAfterWritable { index });
            } else {
                chain.readable += 1;
            }
            bytes += u64::from(len);
            if bytes > u64::from(u32::MAX) {
                return Err(QueueError::ChainTooLarge { head });
            }
            chain.segments[chain.count] = Segment { addr: Gpa(addr), len };
            chain.count += 1;
            if flags & DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            if next >= self.size {
                return Err(QueueError::DescriptorIndex { index: next });
            }
            index = next;
        }
    }

    /// Gives `chain` back to the driver: `written` bytes of its device-writable buffers, from
    /// the first, hold what the device wrote (at most what they hold).
    ///
    /// # Errors
    ///
    /// [`QueueError::Memory`] if guest memory refused the used ring.
    pub fn push_used(&mut self, chain: &Chain, written: u32) -> Result<(), QueueError> {
        let len = u64::from(written).min(chain.writable_len()) as u32;
        let device = Gpa(self.q.device);
        let slot = u64::from(self.q.next_used % self.size);
        let mut elem = [0u8; USED_ELEM_SIZE as usize];
        elem[..4].copy_from_slice(&u32::from(chain.head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = offset(device, RING_START + USED_ELEM_SIZE * slot);
        self.mem.write(at, &elem).map_err(|cause| QueueError::Memory { gpa: at, cause })?;
        // The element before the index that publishes it (§2.7.8.1: len before idx).
        self.mem.fence();
        self.q.next_used = self.q.next_used.wrapping_add(1);
        let at = offset(device, 2);
        self.mem.write(at, &self.q.next_used.to_le_bytes()).map_err(|cause| QueueError::Memory { gpa: at, cause })?;
        self.used += 1;
        Ok(())
    }

    /// Ends the round: whether the driver wants a used buffer notification for it (it put
    /// something in the used ring and the available ring's `flags` does not say
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`, §2.7.7.2).
    ///
    /// # Errors
    ///
    /// [`QueueError::Memory`] if guest memory refused the available ring's `flags`.
    pub(super) fn finish(&self) -> Result<bool, QueueError> {
        if self.used == 0 {
            return Ok(false);
        }
        // The used index before the flags, as the driver writes the flags before it reads
        // the index (§2.7.14): otherwise both sides could miss the other's update.
        self.mem.fence();
        let flags = read_u16(self.mem, Gpa(self.q.driver))?;
        Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
    }
}

/// A place in a ring: `enable` checked that the whole ring lies below 2^64.
fn offset(base: Gpa, off: u64) -> Gpa {
    Gpa(base.0.wrapping_add(off))
}

fn read_u16<M: GuestMemory>(mem: &M, gpa: Gpa) -> Result<u16, QueueError> {
    let mut b = [0u8; 2];
    mem.read(gpa, &mut b).map_err(|cause| QueueError::Memory { gpa, cause })?;
    Ok(u16::from_le_bytes(b))
}

#[cfg(test)]
mod tests;
