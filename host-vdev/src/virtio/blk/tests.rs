//! Unit tests of virtio-blk: identity and configuration space, writes and reads through real
//! descriptor chains in any layout, flush and device ID, and every bad request: its exact
//! status, what it moved (nothing), and which ones break the device (only memory it may not
//! touch).

extern crate std;

use super::*;
use crate::virtio::mmio::{status as dev_status, Outcome, VirtioMmio};
use crate::virtio::testing::{live, off, r32, w32, DriverQueue, FakeMemory, RAM_BASE};
use crate::virtio::{Error, MemError};
use std::vec;
use std::vec::Vec;

const SEG_MAX_BIT: u64 = 1 << 2;
const FLUSH_BIT: u64 = 1 << 9;

/// A 64 KiB disk and 100 bytes: 128 whole sectors.
const DISK: usize = 0x1_0000 + 100;

/// A request header.
fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Bytes that tell sectors apart.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// Where requests go in the request queue's data area.
struct Layout {
    header: u64,
    data: u64,
    status: u64,
}

fn layout(q: &DriverQueue) -> Layout {
    Layout { header: q.data, data: q.data + 0x1000, status: q.data + 0xFFF0 }
}

/// Publishes one chain, notifies, and returns (used length, status byte, outcome).
fn submit<D: Disk>(t: &mut VirtioMmio<Blk<D>>, mem: &FakeMemory, q: &mut DriverQueue, bufs: &[(u64, u32, bool)]) -> (u32, u8, Outcome) {
    let h = q.chain(mem, 0, bufs);
    q.publish(mem, h);
    let o = w32(t, mem, off::QUEUE_NOTIFY, 0);
    let used = q.take_used(mem);
    assert_eq!(used.len(), 1, "one request, one used element");
    assert_eq!(used[0].0, u32::from(h));
    let status_at = bufs.iter().rev().find(|b| b.2).map_or(0, |b| b.0 + u64::from(b.1) - 1);
    (used[0].1, if status_at == 0 { 0xFF } else { mem.get(status_at, 1)[0] }, o)
}

#[test]
fn identity_features_and_configuration() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, _) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, SEG_MAX_BIT | FLUSH_BIT, 8);
    assert_eq!(r32(&mut t, off::DEVICE_ID), 2);
    let _ = w32(&mut t, &mem, off::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r32(&mut t, off::DEVICE_FEATURES), 0x204, "SEG_MAX, FLUSH");
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 1);
    assert_eq!(r32(&mut t, off::QUEUE_NUM_MAX), 0, "one request queue");
    // capacity (le64, read as two halves), size_max (0: not offered), seg_max.
    assert_eq!(t.read(off::CONFIG, 4), 128);
    assert_eq!(t.read(off::CONFIG + 4, 4), 0);
    assert_eq!(t.read(off::CONFIG + 8, 4), 0);
    assert_eq!(t.read(off::CONFIG + 12, 4), 254);
    assert_eq!(t.read(off::CONFIG, 1), 128);
    assert_eq!(t.read(off::CONFIG + 12, 2), 254);
    assert_eq!(t.read(off::CONFIG + 16, 4), 0, "geometry and on: not offered");
    assert_eq!(t.device().capacity(), 128);
}

/// A disk of 2^50 bytes that reads as zeros and keeps nothing.
struct Huge;

impl Disk for Huge {
    fn size(&self) -> u64 {
        1 << 50
    }
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), DiskError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
}

#[test]
fn a_large_capacity_fills_both_halves() {
    let mut t = VirtioMmio::new(Blk::new(Huge, b""), crate::virtio::mmio::DmaPolicy::Open);
    assert_eq!(t.read(off::CONFIG, 4), 0);
    assert_eq!(t.read(off::CONFIG + 4, 4), 0x200, "2^41 sectors");
}

#[test]
fn a_write_then_a_read_through_real_chains() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    let data = pattern(1024, 3);
    mem.put(l.header, &header(1, 3));
    mem.put(l.data, &data);
    let out = [(l.header, 16, false), (l.data, 600, false), (l.data + 600, 424, false), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &out), (1, status::OK, Outcome { irq_level: true, failed: None }));
    assert_eq!(t.device().disk().bytes()[3 * 512..5 * 512], data[..]);
    assert!(t.device().disk().bytes()[..3 * 512].iter().all(|&b| b == 0), "nothing else written");
    // Read it back into other buffers.
    mem.put(l.header, &header(0, 3));
    let into = l.data + 0x4000;
    let inn = [(l.header, 16, false), (into, 512, true), (into + 512, 512, true), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &inn).0, 1025, "data and status");
    assert_eq!(mem.get(l.status, 1), [status::OK]);
    assert_eq!(mem.get(into, 1024), data);
    let s = t.device().stats();
    assert_eq!((s.ok, s.sectors_written, s.sectors_read, s.ioerr), (2, 2, 2, 0));
}

#[test]
fn the_request_layout_is_free() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 16);
    let q = &mut qs[0];
    let l = layout(q);
    // Header and data in one readable buffer, split at an odd place in the header.
    let data = pattern(512, 9);
    mem.put(l.header, &header(1, 127));
    mem.put(l.header + 16, &data);
    let out = [(l.header, 5, false), (l.header + 5, 16 - 5 + 512, false), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &out).1, status::OK);
    assert_eq!(t.device().disk().bytes()[127 * 512..128 * 512], data[..], "the last whole sector");
    // Data and status in one writable buffer; segments of uneven sizes across the chunks.
    mem.put(l.header, &header(0, 112));
    let sizes = [1000u32, 24, 3072, 100, 3996 + 1];
    let mut at = l.data;
    let mut bufs = vec![(l.header, 16, false)];
    for s in sizes {
        bufs.push((at, s, true));
        at += u64::from(s) + 0x40;
    }
    assert_eq!(submit(&mut t, &mem, q, &bufs), (8193, status::OK, Outcome { irq_level: true, failed: None }));
    let mut read = Vec::new();
    for &(a, s, _) in &bufs[1..] {
        read.extend(mem.get(a, s as usize));
    }
    assert_eq!(read[..8192], t.device().disk().bytes()[112 * 512..128 * 512]);
    assert_eq!(read[8192], status::OK);
}

#[test]
fn flush_and_device_id() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"pkvm-rs test disk"), &mem, FLUSH_BIT, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.header, &header(4, 0));
    assert_eq!(submit(&mut t, &mem, q, &[(l.header, 16, false), (l.status, 1, true)]).0, 1);
    assert_eq!(mem.get(l.status, 1), [status::OK]);
    // GET_ID: 20 bytes, NUL-padded.
    mem.put(l.header, &header(8, 0));
    let id = [(l.header, 16, false), (l.data, 20, true), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &id), (21, status::OK, Outcome { irq_level: true, failed: None }));
    assert_eq!(mem.get(l.data, 20), b"pkvm-rs test disk\0\0\0");
    // A shorter buffer takes what fits; a longer one the 20 bytes, and the used length stops
    // there (the status byte is not next to them).
    let short = [(l.header, 16, false), (l.data + 0x100, 4, true), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &short).0, 5);
    assert_eq!(mem.get(l.data + 0x100, 4), b"pkvm");
    let long = [(l.header, 16, false), (l.data + 0x200, 40, true), (l.status, 1, true)];
    assert_eq!(submit(&mut t, &mem, q, &long), (20, status::OK, Outcome { irq_level: true, failed: None }));
    // An ID longer than 20 bytes is cut.
    let b = Blk::new(RamDisk::new(&mut []), b"0123456789abcdefghijKLMN");
    assert_eq!(&b.id, b"0123456789abcdefghij");
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    // DISCARD, WRITE_ZEROES, GET_LIFETIME, SECURE_ERASE (features not offered), undefined.
    for kind in [11, 13, 10, 14, 2, 0xFFFF_FFFF] {
        mem.put(l.header, &header(kind, 0));
        assert_eq!(submit(&mut t, &mem, q, &[(l.header, 16, false), (l.status, 1, true)]).1, status::UNSUPP, "type {kind}");
    }
    assert_eq!(t.device().stats().unsupp, 6);
    assert_eq!(t.failure(), None);
}

#[test]
fn requests_outside_the_capacity_are_io_errors_that_move_nothing() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.data, &[0xAA; 1024]);
    // Writes that end past the last whole sector, or start there, or wrap.
    for sector in [127, 128, 1 << 60, u64::MAX] {
        mem.put(l.header, &header(1, sector));
        let out = [(l.header, 16, false), (l.data, 1024, false), (l.status, 1, true)];
        assert_eq!(submit(&mut t, &mem, q, &out).1, status::IOERR, "write at {sector}");
    }
    assert!(t.device().disk().bytes().iter().all(|&b| b == 0), "the disk is untouched, its partial last sector too");
    // Reads likewise: the buffer keeps its content, and the used length says nothing was
    // written before the status.
    for sector in [127, 128, u64::MAX / 512, u64::MAX] {
        mem.put(l.header, &header(0, sector));
        let inn = [(l.header, 16, false), (l.data, 1024, true), (l.status, 1, true)];
        assert_eq!(submit(&mut t, &mem, q, &inn).0, 0);
        assert_eq!(mem.get(l.status, 1), [status::IOERR], "read at {sector}");
    }
    assert_eq!(mem.get(l.data, 1024), [0xAA; 1024]);
    assert_eq!(t.device().stats().ioerr, 8);
    assert_eq!(t.failure(), None, "a bad request is the request's error, not the device's");
}

#[test]
fn partial_sectors_are_io_errors() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.data, &[0xAA; 1024]);
    mem.put(l.header, &header(1, 0));
    assert_eq!(submit(&mut t, &mem, q, &[(l.header, 16, false), (l.data, 100, false), (l.status, 1, true)]).1, status::IOERR);
    mem.put(l.header, &header(0, 0));
    assert_eq!(submit(&mut t, &mem, q, &[(l.header, 16, false), (l.data, 513, true), (l.status, 1, true)]).1, status::IOERR);
    assert!(t.device().disk().bytes().iter().all(|&b| b == 0));
    assert_eq!(mem.get(l.data, 513), [0xAA; 513]);
    // No data at all is a whole number of sectors: nothing to do.
    assert_eq!(
        submit(&mut t, &mem, q, &[(l.header, 16, false), (l.status, 1, true)]),
        (1, status::OK, Outcome { irq_level: true, failed: None })
    );
}

#[test]
fn a_short_header_is_an_io_error() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.header, &header(1, 0));
    assert_eq!(submit(&mut t, &mem, q, &[(l.header, 15, false), (l.status, 1, true)]).1, status::IOERR);
    assert_eq!(submit(&mut t, &mem, q, &[(l.status, 1, true)]).1, status::IOERR, "no readable part");
    assert_eq!(t.device().stats().ioerr, 2);
}

#[test]
fn a_chain_without_a_writable_byte_is_given_back_unanswered() {
    let mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.header, &header(1, 0));
    mem.put(l.data, &[0xAA; 512]);
    let (len, _, o) = submit(&mut t, &mem, q, &[(l.header, 16, false), (l.data, 512, false)]);
    assert_eq!((len, o), (0, Outcome { irq_level: true, failed: None }));
    assert_eq!(t.device().stats().no_status, 1);
    assert!(t.device().disk().bytes().iter().all(|&b| b == 0), "not performed");
    assert_eq!(r32(&mut t, off::STATUS) & u32::from(dev_status::DEVICE_NEEDS_RESET), 0);
    // The next request is served.
    assert_eq!(submit(&mut t, &mem, q, &[(l.header, 16, false), (l.data, 512, false), (l.status, 1, true)]).1, status::OK);
}

/// A disk whose every access fails.
struct Failing;

impl Disk for Failing {
    fn size(&self) -> u64 {
        0x1_0000
    }
    fn read(&mut self, _: u64, _: &mut [u8]) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), DiskError> {
        Err(DiskError)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Err(DiskError)
    }
}

#[test]
fn a_failing_disk_is_an_io_error() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Blk::new(Failing, b""), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    for kind in [0, 1, 4] {
        mem.put(l.header, &header(kind, 0));
        let data = (l.data, 512, kind == 0);
        let bufs: Vec<(u64, u32, bool)> =
            [(l.header, 16, false)].into_iter().chain((kind != 4).then_some(data)).chain([(l.status, 1, true)]).collect();
        assert_eq!(submit(&mut t, &mem, q, &bufs).1, status::IOERR, "type {kind}");
    }
    assert_eq!(t.failure(), None);
}

#[test]
fn the_status_goes_after_the_data_and_before_the_used_ring() {
    let mem = FakeMemory::new();
    let mut bytes = pattern(DISK, 1);
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.put(l.header, &header(0, 0));
    mem.log.borrow_mut().clear();
    let _ = submit(&mut t, &mem, q, &[(l.header, 16, false), (l.data, 512, true), (l.data + 512, 512, true), (l.status, 1, true)]);
    let log = mem.log.borrow();
    let writes: Vec<u64> = log.iter().map(|w| w.0).collect();
    assert_eq!(writes, [l.data, l.data + 512, l.status, q.used + 4, q.used + 2]);
}

#[test]
fn a_data_buffer_the_guest_did_not_share_breaks_the_device() {
    let mut mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    let l = layout(q);
    mem.shared = Some(RAM_BASE..RAM_BASE + 0x2_0000);
    let private = RAM_BASE + 0x8_0000;
    mem.put(l.header, &header(0, 0));
    let h = q.chain(&mem, 0, &[(l.header, 16, false), (private, 512, true), (l.status, 1, true)]);
    q.publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    let e = Error::Queue { queue: 0, error: QueueError::Memory { gpa: Gpa(private), cause: MemError::NotShared } };
    assert_eq!(o, Outcome { irq_level: true, failed: Some(e) });
    assert_ne!(r32(&mut t, off::STATUS) & u32::from(dev_status::DEVICE_NEEDS_RESET), 0);
    assert!(q.take_used(&mem).is_empty());
    // The same for a private status byte, after the data went out: the disk was written, the
    // request is not completed.
    let mut mem = FakeMemory::new();
    let mut bytes = vec![0u8; DISK];
    let (mut t, mut qs) = live(Blk::new(RamDisk::new(&mut bytes), b"disk"), &mem, 0, 8);
    let q = &mut qs[0];
    mem.shared = Some(RAM_BASE..RAM_BASE + 0x2_0000);
    mem.put(l.header, &header(1, 0));
    mem.put(l.data, &[0x5A; 512]);
    let h = q.chain(&mem, 0, &[(l.header, 16, false), (l.data, 512, false), (private, 1, true)]);
    q.publish(&mem, h);
    assert!(w32(&mut t, &mem, off::QUEUE_NOTIFY, 0).failed.is_some());
    assert!(q.take_used(&mem).is_empty());
}

#[test]
fn a_ram_disk_refuses_accesses_past_its_end() {
    let mut bytes = [0u8; 1024];
    let mut d = RamDisk::new(&mut bytes);
    assert_eq!(d.size(), 1024);
    let mut buf = [0u8; 512];
    assert_eq!(d.read(512, &mut buf), Ok(()));
    assert_eq!(d.read(513, &mut buf), Err(DiskError));
    assert_eq!(d.write(1024, &[1]), Err(DiskError));
    assert_eq!(d.write(u64::MAX, &[1]), Err(DiskError));
    assert_eq!(d.write(1023, &[7]), Ok(()));
    assert_eq!(d.bytes()[1023], 7);
    assert_eq!(d.flush(), Ok(()));
}
