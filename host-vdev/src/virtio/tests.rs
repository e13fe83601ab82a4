//! Randomised tests of whole devices behind their transport: a hostile driver writes random
//! registers, rewrites descriptors and rings between notifications, and notifies; the VMM
//! feeds console input. Whatever happens, no call panics, each call's guest memory accesses
//! stay under a fixed bound, and the transport's state stays consistent.

extern crate std;

use super::blk::{Blk, RamDisk};
use super::console::{Console, ConsoleOutput};
use super::mmio::{status, Device, DmaPolicy, Outcome, VirtioMmio};
use super::queue::QUEUE_SIZE_MAX;
use super::testing::{bring_up, off, DriverQueue, FakeMemory, NEXT, RAM_BASE, RAM_SIZE, WRITE};
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// One step of the hostile driver (or of the VMM).
#[derive(Clone, Debug)]
enum Op {
    /// A register write.
    Write { offset: u64, size: u32, value: u64 },
    /// A register read.
    Read { offset: u64, size: u32 },
    /// A well-formed chain on queue `q` at descriptor `head` and on: a 16-byte request header
    /// (`kind`, `sector`) for a block device, `segments` data buffers of `len` bytes in all
    /// (device-writable if `writable`), and a status byte; published.
    Request { q: u8, head: u16, kind: u32, sector: u64, len: u32, segments: u8, writable: bool },
    /// Rewrites descriptor `i` of queue `q`'s table (as the test laid it out).
    Desc { q: u8, i: u16, addr: u64, len: u32, flags: u16, next: u16 },
    /// Puts `head` in queue `q`'s available ring and publishes it.
    Publish { q: u8, head: u16 },
    /// Sets queue `q`'s available `idx` to anything.
    AvailIdx { q: u8, idx: u16 },
    /// Writes bytes anywhere in RAM (headers, rings, the data).
    Poke { at: u64, bytes: Vec<u8> },
    /// `QueueNotify`.
    Notify { q: u32 },
    /// Console input from the VMM.
    Receive { len: usize },
    /// A reset and a fresh bring-up with queues of `2^size_log` entries.
    Restart { size_log: u8 },
}

/// Register offsets, mostly the defined ones.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..0x40).prop_map(|r| r * 4),
        1 => 0x100u64..0x220,
        1 => any::<u64>(),
    ]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..4, 2 => 0u64..0x200, 1 => Just(0xFF), 1 => RAM_BASE..RAM_BASE + RAM_SIZE, 2 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![8 => Just(4u32), 1 => Just(1u32), 1 => Just(2u32), 1 => Just(8u32), 1 => any::<u32>()];
    let addr = prop_oneof![
        4 => RAM_BASE + 0x1_0000..RAM_BASE + 0x2_0000,
        2 => RAM_BASE..RAM_BASE + RAM_SIZE,
        1 => any::<u64>(),
        1 => u64::MAX - 0x1000..=u64::MAX,
    ];
    let len = prop_oneof![1 => Just(0u32), 4 => 1u32..0x40, 3 => 0x200u32..0x2000, 1 => any::<u32>()];
    let flags = prop_oneof![3 => Just(0u16), 4 => Just(1u16), 3 => Just(2u16), 4 => Just(3u16), 1 => Just(4u16), 1 => any::<u16>()];
    let request = (
        0u8..2,
        0u16..16,
        prop_oneof![4 => Just(0u32), 4 => Just(1u32), 1 => Just(4u32), 1 => Just(8u32), 1 => any::<u32>()],
        prop_oneof![6 => 0u64..130, 1 => any::<u64>()],
        prop_oneof![6 => (0u32..=8).prop_map(|s| s * 512), 1 => Just(20u32), 2 => 0u32..4096],
        1u8..5,
        any::<bool>(),
    )
        .prop_map(|(q, head, kind, sector, len, segments, writable)| Op::Request { q, head, kind, sector, len, segments, writable });
    prop_oneof![
        8 => request,
        1 => (offset(), size.clone(), value()).prop_map(|(offset, size, value)| Op::Write { offset, size, value }),
        1 => (offset(), size).prop_map(|(offset, size)| Op::Read { offset, size }),
        3 => (0u8..2, 0u16..16, addr, len, flags, prop_oneof![4 => 0u16..16, 1 => any::<u16>()])
            .prop_map(|(q, i, addr, len, flags, next)| Op::Desc { q, i, addr, len, flags, next }),
        4 => (0u8..2, prop_oneof![4 => 0u16..16, 1 => any::<u16>()]).prop_map(|(q, head)| Op::Publish { q, head }),
        1 => (0u8..2, any::<u16>()).prop_map(|(q, idx)| Op::AvailIdx { q, idx }),
        2 => ((RAM_BASE..RAM_BASE + RAM_SIZE - 64), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, bytes)| Op::Poke { at, bytes }),
        6 => prop_oneof![8 => 0u32..2, 1 => any::<u32>()].prop_map(|q| Op::Notify { q }),
        3 => (0usize..600).prop_map(|len| Op::Receive { len }),
        1 => (0u8..=8).prop_map(|size_log| Op::Restart { size_log }),
    ]
}

/// The most guest memory accesses any one call may make: queue size chains, each walked in
/// at most queue size reads (plus the `idx` and the ring entry), each moving at most
/// `DATA_PER_CHAIN` pieces of data (a piece per segment and per bounce buffer: the console's
/// 64 KiB cap in 256-byte pieces, or the disk's 64 KiB in 4 KiB chunks, a 16-byte header and
/// a status byte, plus one per segment crossed), and two used ring writes; and a final
/// `flags` read. Every queue runs once when `DRIVER_OK` is set.
const QUEUES: u64 = 2;
const Q: u64 = QUEUE_SIZE_MAX as u64;
const DATA_PER_CHAIN: u64 = (64 * 1024 / 256) + 16 + 3 * Q + 2;
const BOUND: u64 = QUEUES * (Q * (2 + Q + DATA_PER_CHAIN + 2) + 2);

/// Discards the guest's output.
struct Discard(u64);

impl ConsoleOutput for Discard {
    fn write(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// Writes [`Op::Request`]'s chain: the header at the start of the queue's data area (one
/// 16-byte slot per head), the data from 4 KiB on (4 KiB per head), the status byte at
/// 0x800 (one per head); descriptors `head, head + 1, ...` (modulo the size, so a small queue
/// gets a chain that loops).
#[allow(clippy::too_many_arguments)]
fn request(mem: &FakeMemory, dq: &mut DriverQueue, head: u16, kind: u32, sector: u64, len: u32, segments: u8, writable: bool) {
    let slot = u64::from(head % 16);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.put(dq.data + 16 * slot, &h);
    let data = dq.data + 0x1000 + 0x1000 * (slot % 8);
    let mut bufs = vec![(dq.data + 16 * slot, 16, false)];
    let per = len / u32::from(segments);
    let mut at = data;
    for k in 0..segments {
        let n = if k + 1 == segments { len - per * u32::from(segments - 1) } else { per };
        if n > 0 {
            bufs.push((at, n, writable));
            at += u64::from(n);
        }
    }
    bufs.push((dq.data + 0x800 + slot, 1, true));
    for (k, &(addr, n, w)) in bufs.iter().enumerate() {
        let i = (head + k as u16) % dq.size;
        let more = k + 1 < bufs.len();
        let flags = if w { WRITE } else { 0 } | if more { NEXT } else { 0 };
        dq.set_desc(mem, i, addr, n, flags, (i + 1) % dq.size);
    }
    dq.publish(mem, head % dq.size);
}

/// Runs `ops` against `t`, checking after each call what the module documentation promises.
fn run<D: Device>(
    t: &mut VirtioMmio<D>,
    mem: &FakeMemory,
    ops: &[Op],
    mut receive: impl FnMut(&mut VirtioMmio<D>, &FakeMemory, &[u8]) -> (usize, Outcome),
) -> Result<(), TestCaseError> {
    let mut queues: Vec<DriverQueue> = bring_up(t, mem, 0, 8);
    let input = vec![b'i'; 600];
    for op in ops {
        let before = mem.accesses();
        let outcome = match op {
            &Op::Write { offset, size, value } => Some(t.write(mem, offset, size, value)),
            &Op::Read { offset, size } => {
                let _ = t.read(offset, size);
                None
            }
            &Op::Request { q, head, kind, sector, len, segments, writable } => {
                if let Some(dq) = queues.get_mut(usize::from(q)) {
                    request(mem, dq, head, kind, sector, len, segments, writable);
                }
                None
            }
            &Op::Desc { q, i, addr, len, flags, next } => {
                if let Some(dq) = queues.get(usize::from(q)) {
                    dq.set_desc(mem, i % dq.size, addr, len, flags, next);
                }
                None
            }
            &Op::Publish { q, head } => {
                if let Some(dq) = queues.get_mut(usize::from(q)) {
                    dq.publish(mem, head);
                }
                None
            }
            &Op::AvailIdx { q, idx } => {
                if let Some(dq) = queues.get_mut(usize::from(q)) {
                    dq.avail_idx = idx;
                    mem.put_u16(dq.avail + 2, idx);
                }
                None
            }
            Op::Poke { at, bytes } => {
                mem.put(*at, bytes);
                None
            }
            &Op::Notify { q } => Some(t.write(mem, off::QUEUE_NOTIFY, 4, u64::from(q))),
            &Op::Receive { len } => Some(receive(t, mem, &input[..len]).1),
            &Op::Restart { size_log } => {
                // A driver sets up new, zeroed rings after a reset.
                for q in &queues {
                    mem.put(q.desc, &[0; 0x1_0000]);
                }
                queues = bring_up(t, mem, 0, 1 << size_log);
                None
            }
        };
        let accesses = mem.accesses() - before;
        prop_assert!(accesses <= BOUND, "{op:?}: {accesses} guest memory accesses");
        // The line is InterruptStatus, and Outcome reports it.
        let isr = t.read(off::INTERRUPT_STATUS, 4);
        prop_assert_eq!(t.irq_level(), isr != 0);
        prop_assert!(isr & !3 == 0, "only the two defined bits");
        if let Some(o) = outcome {
            prop_assert_eq!(o.irq_level, t.irq_level());
            if o.failed.is_some() {
                prop_assert!(t.status() & status::DEVICE_NEEDS_RESET != 0);
            }
        }
        // DEVICE_NEEDS_RESET if and only if a failure is recorded.
        prop_assert_eq!(t.status() & status::DEVICE_NEEDS_RESET != 0, t.failure().is_some());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_hostile_driver_cannot_make_the_console_panic_or_work_without_bound(ops in proptest::collection::vec(op(), 1..150)) {
        let mem = FakeMemory::new();
        let mut t = VirtioMmio::new(Console::new(Discard(0)), DmaPolicy::Restricted);
        run(&mut t, &mem, &ops, |t, mem, bytes| t.receive(mem, bytes))?;
        let s = t.device().stats();
        prop_assert_eq!(s.tx_bytes, t.device().output().0);
    }

    #[test]
    fn a_hostile_driver_cannot_make_the_block_device_panic_or_work_without_bound(ops in proptest::collection::vec(op(), 1..150)) {
        let mem = FakeMemory::new();
        let mut disk = vec![0u8; 0x1_0000];
        let mut t = VirtioMmio::new(Blk::new(RamDisk::new(&mut disk), b"fuzz"), DmaPolicy::Restricted);
        // No input to a block device: the step only samples the line.
        run(&mut t, &mem, &ops, |t, _, _| (0, Outcome { irq_level: t.irq_level(), failed: None }))?;
        let s = t.device().stats();
        prop_assert!(s.sectors_read + s.sectors_written <= 128 * t.stats().used_buffers);
    }
}
