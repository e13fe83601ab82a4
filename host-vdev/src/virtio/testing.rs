//! Test helpers for the virtio modules: a fake guest memory that counts its accesses and can
//! refuse ranges, a driver's view of a split queue laid out in it, and a driver that brings a
//! transport up as Linux does.

extern crate std;

use super::mmio::{status, Device, DmaPolicy, Outcome, VirtioMmio};
use super::{Gpa, GuestMemory, MemError};
use core::cell::{Cell, RefCell};
use std::vec;
use std::vec::Vec;

/// Guest RAM at [`RAM_BASE`], [`RAM_SIZE`] bytes.
pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: u64 = 0x10_0000;

/// Guest memory: `RAM_SIZE` bytes at `RAM_BASE`, all of it reachable unless `shared` says
/// which part is.
pub struct FakeMemory {
    bytes: RefCell<Vec<u8>>,
    /// If set, only this range is shared: the rest of RAM is `NotShared`.
    pub shared: Option<core::ops::Range<u64>>,
    pub reads: Cell<u64>,
    pub writes: Cell<u64>,
    pub fences: Cell<u64>,
    /// Every successful write, in order: (gpa, len).
    pub log: RefCell<Vec<(u64, usize)>>,
}

impl FakeMemory {
    pub fn new() -> Self {
        Self {
            bytes: RefCell::new(vec![0; RAM_SIZE as usize]),
            shared: None,
            reads: Cell::new(0),
            writes: Cell::new(0),
            fences: Cell::new(0),
            log: RefCell::new(Vec::new()),
        }
    }

    fn check(&self, gpa: Gpa, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        let end = gpa.0.checked_add(len as u64).ok_or(MemError::OutsideRam)?;
        if gpa.0 < RAM_BASE || end > RAM_BASE + RAM_SIZE {
            return Err(MemError::OutsideRam);
        }
        if let Some(s) = &self.shared {
            if gpa.0 < s.start || end > s.end {
                return Err(MemError::NotShared);
            }
        }
        Ok((gpa.0 - RAM_BASE) as usize..(end - RAM_BASE) as usize)
    }

    /// Test-side access, not counted.
    pub fn put(&self, gpa: u64, data: &[u8]) {
        let r = self.check(Gpa(gpa), data.len()).expect("test writes inside RAM");
        self.bytes.borrow_mut()[r].copy_from_slice(data);
    }

    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let r = (gpa - RAM_BASE) as usize..(gpa - RAM_BASE) as usize + len;
        self.bytes.borrow()[r].to_vec()
    }

    pub fn put_u16(&self, gpa: u64, v: u16) {
        self.put(gpa, &v.to_le_bytes());
    }

    pub fn get_u16(&self, gpa: u64) -> u16 {
        let b = self.get(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn get_u32(&self, gpa: u64) -> u32 {
        let b = self.get(gpa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn accesses(&self) -> u64 {
        self.reads.get() + self.writes.get()
    }
}

impl GuestMemory for FakeMemory {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get() + 1);
        let r = self.check(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, gpa: Gpa, data: &[u8]) -> Result<(), MemError> {
        self.writes.set(self.writes.get() + 1);
        let r = self.check(gpa, data.len())?;
        self.bytes.borrow_mut()[r].copy_from_slice(data);
        self.log.borrow_mut().push((gpa.0, data.len()));
        Ok(())
    }

    fn fence(&self) {
        self.fences.set(self.fences.get() + 1);
    }
}

/// `VIRTQ_DESC_F_*`, for building chains.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

/// A split queue as the driver lays it out: the descriptor table, available and used rings
/// at fixed places in the fake memory, and a data area.
#[derive(Clone, Copy, Debug)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where this queue's buffers go (64 KiB).
    pub data: u64,
    /// The available ring's `idx` as published.
    pub avail_idx: u16,
    /// Used ring entries read so far.
    pub used_seen: u16,
}

impl DriverQueue {
    /// Queue `n`'s layout (each queue has its own 128 KiB region).
    pub fn new(n: u64, size: u16) -> Self {
        let base = RAM_BASE + n * 0x2_0000;
        Self { size, desc: base, avail: base + 0x1000 * 4, used: base + 0x1000 * 5, data: base + 0x1_0000, avail_idx: 0, used_seen: 0 }
    }

    pub fn set_desc(&self, mem: &FakeMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.put(self.desc + 16 * u64::from(i), &d);
    }

    /// Puts `head` in the next slot of the available ring and publishes it.
    pub fn publish(&mut self, mem: &FakeMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.put_u16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.put_u16(self.avail + 2, self.avail_idx);
    }

    /// Sets the available ring's `flags`.
    pub fn set_avail_flags(&self, mem: &FakeMemory, flags: u16) {
        mem.put_u16(self.avail, flags);
    }

    /// The used ring's `idx`.
    pub fn used_idx(&self, mem: &FakeMemory) -> u16 {
        mem.get_u16(self.used + 2)
    }

    /// The used ring entries since the last call: (id, len).
    pub fn take_used(&mut self, mem: &FakeMemory) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            out.push((mem.get_u32(at), mem.get_u32(at + 4)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Writes the chain `bufs` (addr, len, device-writable) into descriptors `first..`, and
    /// returns its head.
    pub fn chain(&self, mem: &FakeMemory, first: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let more = k + 1 < bufs.len();
            let flags = if w { WRITE } else { 0 } | if more { NEXT } else { 0 };
            self.set_desc(mem, i, addr, len, flags, if more { i + 1 } else { 0 });
        }
        first
    }
}

/// A transport's register offsets, as the transport names them.
pub(crate) use super::mmio::reg as off;

/// A 32-bit register write that must not break the device.
pub fn w32<D: Device>(t: &mut VirtioMmio<D>, mem: &FakeMemory, offset: u64, value: u32) -> Outcome {
    t.write(mem, offset, 4, u64::from(value))
}

/// A 32-bit register read.
pub fn r32<D: Device>(t: &mut VirtioMmio<D>, offset: u64) -> u32 {
    t.read(offset, 4) as u32
}

/// Negotiates `features` as Linux does: ACKNOWLEDGE, DRIVER, the features, FEATURES_OK;
/// returns whether FEATURES_OK stuck.
pub fn negotiate<D: Device>(t: &mut VirtioMmio<D>, mem: &FakeMemory, features: u64) -> bool {
    let _ = w32(t, mem, off::STATUS, 0);
    let _ = w32(t, mem, off::STATUS, u32::from(status::ACKNOWLEDGE));
    let _ = w32(t, mem, off::STATUS, u32::from(status::ACKNOWLEDGE | status::DRIVER));
    let _ = w32(t, mem, off::DRIVER_FEATURES_SEL, 0);
    let _ = w32(t, mem, off::DRIVER_FEATURES, features as u32);
    let _ = w32(t, mem, off::DRIVER_FEATURES_SEL, 1);
    let _ = w32(t, mem, off::DRIVER_FEATURES, (features >> 32) as u32);
    let _ = w32(t, mem, off::STATUS, u32::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
    r32(t, off::STATUS) & u32::from(status::FEATURES_OK) != 0
}

/// Sets queue `n` up at `q`'s layout and makes it ready.
pub fn setup_queue<D: Device>(t: &mut VirtioMmio<D>, mem: &FakeMemory, n: u32, q: &DriverQueue) -> Outcome {
    let _ = w32(t, mem, off::QUEUE_SEL, n);
    let _ = w32(t, mem, off::QUEUE_NUM, u32::from(q.size));
    for (lo, v) in [(off::QUEUE_DESC_LOW, q.desc), (off::QUEUE_DRIVER_LOW, q.avail), (off::QUEUE_DEVICE_LOW, q.used)] {
        let _ = w32(t, mem, lo, v as u32);
        let _ = w32(t, mem, lo + 4, (v >> 32) as u32);
    }
    w32(t, mem, off::QUEUE_READY, 1)
}

/// A transport for `device` brought up with VERSION_1 and ACCESS_PLATFORM and `extra`
/// features, every queue set up with `size` entries (queue `n` at `DriverQueue::new(n)`), and
/// DRIVER_OK; returns the driver's queues.
pub fn live<D: Device>(device: D, mem: &FakeMemory, extra: u64, size: u16) -> (VirtioMmio<D>, Vec<DriverQueue>) {
    let mut t = VirtioMmio::new(device, DmaPolicy::Restricted);
    let queues = bring_up(&mut t, mem, extra, size);
    (t, queues)
}

/// Resets `t` and brings it up as [`live`] does.
pub fn bring_up<D: Device>(t: &mut VirtioMmio<D>, mem: &FakeMemory, extra: u64, size: u16) -> Vec<DriverQueue> {
    assert!(negotiate(t, mem, (1 << 32) | (1 << 33) | extra));
    let queues: Vec<DriverQueue> = (0..D::QUEUES).map(|n| DriverQueue::new(u64::from(n), size)).collect();
    for (n, q) in queues.iter().enumerate() {
        assert_eq!(setup_queue(t, mem, n as u32, q).failed, None);
    }
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(w32(t, mem, off::STATUS, u32::from(s)).failed, None);
    assert_eq!(r32(t, off::STATUS), u32::from(s));
    queues
}
