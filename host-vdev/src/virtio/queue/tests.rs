//! Unit tests of the split virtqueue: setup checks, the chain walker on good chains and on
//! every kind of hostile one, the used ring and its ordering, the cursors, and a randomised
//! walk over arbitrary descriptor tables that must end without a panic in bounded work.

extern crate std;

use super::*;
use crate::virtio::testing::{DriverQueue, FakeMemory, INDIRECT, NEXT, RAM_BASE, RAM_SIZE, WRITE};
use proptest::prelude::*;
use std::vec::Vec;

/// A ready queue of `size` entries at `DriverQueue::new(0)`'s layout.
fn ready(size: u16) -> (SplitQueue, DriverQueue) {
    let d = DriverQueue::new(0, size);
    let mut q = SplitQueue::new(QUEUE_SIZE_MAX);
    q.size = u32::from(size);
    q.desc = d.desc;
    q.driver = d.avail;
    q.device = d.used;
    assert_eq!(q.enable(0), Ok(()));
    (q, d)
}

/// Publishes one chain and pops it.
fn pop_one(mem: &FakeMemory, q: &mut SplitQueue, d: &mut DriverQueue, head: u16) -> Result<Option<Chain>, QueueError> {
    d.publish(mem, head);
    q.view(mem).unwrap().pop()
}

#[test]
fn enable_checks_the_size() {
    let (_, d) = ready(4);
    for (size, ok) in [(0, false), (1, true), (3, false), (96, false), (128, true), (256, true), (512, false), (u32::MAX, false)] {
        let mut q = SplitQueue::new(QUEUE_SIZE_MAX);
        (q.size, q.desc, q.driver, q.device) = (size, d.desc, d.avail, d.used);
        let r = q.enable(7);
        assert_eq!(r.is_ok(), ok, "size {size}");
        if !ok {
            assert_eq!(r, Err(Error::QueueSize { queue: 7, size }));
        }
        assert_eq!(q.ready(), ok);
    }
    let mut small = SplitQueue::new(8);
    (small.size, small.desc, small.driver, small.device) = (16, d.desc, d.avail, d.used);
    assert_eq!(small.enable(0), Err(Error::QueueSize { queue: 0, size: 16 }), "above QueueNumMax");
}

#[test]
fn enable_checks_the_rings_alignment_and_wrap() {
    let (_, d) = ready(4);
    let cases = [
        (d.desc + 8, d.avail, d.used),
        (d.desc, d.avail + 1, d.used),
        (d.desc, d.avail, d.used + 2),
        (u64::MAX - 15, d.avail, d.used),
        (d.desc, u64::MAX - 1, d.used),
        (d.desc, d.avail, u64::MAX - 3),
    ];
    for (desc, driver, device) in cases {
        let mut q = SplitQueue::new(QUEUE_SIZE_MAX);
        (q.size, q.desc, q.driver, q.device) = (4, desc, driver, device);
        assert_eq!(q.enable(1), Err(Error::QueueAddress { queue: 1 }), "{desc:#x} {driver:#x} {device:#x}");
        assert!(!q.ready());
    }
    // The least alignment is enough: 16, 2, 4.
    let mut q = SplitQueue::new(QUEUE_SIZE_MAX);
    (q.size, q.desc, q.driver, q.device) = (4, d.desc + 16, d.avail + 2, d.used + 4);
    assert_eq!(q.enable(0), Ok(()));
}

#[test]
fn a_queue_not_ready_lends_no_view() {
    let mem = FakeMemory::new();
    let mut q = SplitQueue::new(QUEUE_SIZE_MAX);
    assert!(q.view(&mem).is_none());
    let (mut q, _) = ready(4);
    q.disable();
    assert!(q.view(&mem).is_none());
    assert_eq!(mem.accesses(), 0, "the device does not touch a queue that is not ready");
}

#[test]
fn nothing_available_pops_nothing() {
    let mem = FakeMemory::new();
    let (mut q, _) = ready(8);
    let mut vq = q.view(&mem).unwrap();
    assert!(vq.pop().unwrap().is_none());
    assert_eq!(vq.finish(), Ok(false), "nothing used, nothing to notify");
}

#[test]
fn a_chain_is_copied_readable_first_then_writable() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(8);
    let head =
        d.chain(&mem, 2, &[(d.data, 16, false), (d.data + 0x100, 100, false), (d.data + 0x200, 512, true), (d.data + 0x400, 1, true)]);
    let chain = pop_one(&mem, &mut q, &mut d, head).unwrap().unwrap();
    assert_eq!(chain.head(), 2);
    assert_eq!(chain.readable(), [Segment { addr: Gpa(d.data), len: 16 }, Segment { addr: Gpa(d.data + 0x100), len: 100 }]);
    assert_eq!(chain.writable(), [Segment { addr: Gpa(d.data + 0x200), len: 512 }, Segment { addr: Gpa(d.data + 0x400), len: 1 }]);
    assert_eq!((chain.readable_len(), chain.writable_len()), (116, 513));
}

#[test]
fn a_chain_may_be_all_readable_all_writable_or_use_every_descriptor() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    let h = d.chain(&mem, 0, &[(d.data, 8, true)]);
    let c = pop_one(&mem, &mut q, &mut d, h).unwrap().unwrap();
    assert_eq!((c.readable().len(), c.writable().len()), (0, 1));
    let h = d.chain(&mem, 0, &[(d.data, 8, false)]);
    let c = pop_one(&mem, &mut q, &mut d, h).unwrap().unwrap();
    assert_eq!((c.readable().len(), c.writable().len()), (1, 0));
    // Exactly queue size descriptors, in any order of the table.
    d.set_desc(&mem, 3, d.data, 1, NEXT, 1);
    d.set_desc(&mem, 1, d.data, 1, NEXT, 0);
    d.set_desc(&mem, 0, d.data, 1, NEXT, 2);
    d.set_desc(&mem, 2, d.data, 1, WRITE, 0);
    let c = pop_one(&mem, &mut q, &mut d, 3).unwrap().unwrap();
    assert_eq!((c.readable().len(), c.writable().len()), (3, 1));
}

#[test]
fn the_descriptors_are_read_once() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(8);
    let h = d.chain(&mem, 0, &[(d.data, 8, false), (d.data, 8, false), (d.data, 8, true)]);
    d.publish(&mem, h);
    let mut vq = q.view(&mem).unwrap();
    let chain = vq.pop().unwrap().unwrap();
    // idx, the ring entry, three descriptors; the data is not touched.
    assert_eq!((mem.reads.get(), mem.writes.get()), (5, 0));
    // The guest rewrites the descriptors after the walk: the chain the device holds is the
    // one it checked.
    d.set_desc(&mem, 0, u64::MAX - 1, 100, INDIRECT, 0);
    assert_eq!(chain.readable()[0], Segment { addr: Gpa(d.data), len: 8 });
}

#[test]
fn used_elements_go_before_the_index_with_a_fence_between() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    let h = d.chain(&mem, 1, &[(d.data, 4, false), (d.data + 16, 32, true)]);
    d.publish(&mem, h);
    let mut vq = q.view(&mem).unwrap();
    let chain = vq.pop().unwrap().unwrap();
    let fences = mem.fences.get();
    vq.push_used(&chain, 20).unwrap();
    assert_eq!(mem.fences.get(), fences + 1);
    assert_eq!(*mem.log.borrow(), [(d.used + 4, 8), (d.used + 2, 2)], "element, then idx");
    assert_eq!(vq.used(), 1);
    assert_eq!(vq.finish(), Ok(true));
    assert_eq!(d.take_used(&mem), [(1, 20)]);
}

#[test]
fn a_used_length_is_at_most_the_writable_bytes() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    let h = d.chain(&mem, 0, &[(d.data, 4, false), (d.data + 16, 32, true)]);
    d.publish(&mem, h);
    let mut vq = q.view(&mem).unwrap();
    let chain = vq.pop().unwrap().unwrap();
    vq.push_used(&chain, 1000).unwrap();
    assert_eq!(d.take_used(&mem), [(0, 32)]);
}

#[test]
fn no_interrupt_in_the_available_flags_suppresses_the_notification() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    d.set_avail_flags(&mem, 1);
    let h = d.chain(&mem, 0, &[(d.data, 4, true)]);
    d.publish(&mem, h);
    let mut vq = q.view(&mem).unwrap();
    let c = vq.pop().unwrap().unwrap();
    vq.push_used(&c, 4).unwrap();
    assert_eq!(vq.finish(), Ok(false));
    // Undefined bits are ignored; bit 0 clear wants the notification.
    d.set_avail_flags(&mem, 0xFFFE);
    assert_eq!(vq.finish(), Ok(true));
}

#[test]
fn the_rings_wrap_at_the_queue_size_and_the_indices_at_2_pow_16() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    // Start just below the 16-bit wrap, as if 65534 chains had gone before.
    q.next_avail = 0xFFFE;
    q.next_used = 0xFFFE;
    d.avail_idx = 0xFFFE;
    d.used_seen = 0xFFFE;
    mem.put_u16(d.used + 2, 0xFFFE);
    for round in 0..10u16 {
        let h = d.chain(&mem, round % 4, &[(d.data, 8, true)]);
        d.publish(&mem, h);
        let mut vq = q.view(&mem).unwrap();
        let c = vq.pop().unwrap().unwrap();
        assert_eq!(c.head(), round % 4);
        vq.push_used(&c, 8).unwrap();
        assert!(vq.pop().unwrap().is_none());
        assert_eq!(d.take_used(&mem), [(u32::from(round % 4), 8)]);
    }
    assert_eq!(d.used_idx(&mem), 8);
}

#[test]
fn a_round_takes_at_most_queue_size_chains() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    for i in 0..4 {
        let h = d.chain(&mem, i, &[(d.data, 8, true)]);
        d.publish(&mem, h);
    }
    let mut vq = q.view(&mem).unwrap();
    for _ in 0..4 {
        let c = vq.pop().unwrap().unwrap();
        vq.push_used(&c, 0).unwrap();
        // The driver keeps adding while the device works.
        d.publish(&mem, c.head());
    }
    assert!(vq.pop().unwrap().is_none(), "the round's budget is spent");
    // The next round serves what came meanwhile.
    let mut vq = q.view(&mem).unwrap();
    for _ in 0..4 {
        assert!(vq.pop().unwrap().is_some());
    }
}

// Hostile chains: each is an exact error, found within queue size descriptor reads.

/// Pops the chain at `head` of a queue of `size` and returns the error and the reads it took.
fn hostile(size: u16, head: u16, descs: &[(u16, u64, u32, u16, u16)]) -> (QueueError, u64) {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(size);
    for &(i, addr, len, flags, next) in descs {
        d.set_desc(&mem, i, if addr == 0 { d.data } else { addr }, len, flags, next);
    }
    d.publish(&mem, head);
    let mut vq = q.view(&mem).unwrap();
    let err = vq.pop().unwrap_err();
    (err, mem.reads.get())
}

#[test]
fn a_loop_is_stopped_after_queue_size_descriptors() {
    let (e, reads) = hostile(8, 0, &[(0, 0, 8, NEXT, 0)]);
    assert_eq!(e, QueueError::ChainTooLong { head: 0 });
    assert_eq!(reads, 2 + 8, "idx, ring entry, then 8 descriptors");
    let (e, reads) = hostile(256, 5, &[(5, 0, 8, NEXT, 6), (6, 0, 8, NEXT, 7), (7, 0, 8, NEXT, 5)]);
    assert_eq!(e, QueueError::ChainTooLong { head: 5 });
    assert_eq!(reads, 2 + 256);
}

#[test]
fn a_loop_through_writable_descriptors_is_stopped_too() {
    let (e, _) = hostile(4, 0, &[(0, 0, 8, NEXT, 1), (1, 0, 8, NEXT | WRITE, 2), (2, 0, 8, NEXT | WRITE, 1)]);
    assert_eq!(e, QueueError::ChainTooLong { head: 0 });
}

#[test]
fn indices_past_the_queue_size_are_refused() {
    let (e, _) = hostile(4, 4, &[]);
    assert_eq!(e, QueueError::DescriptorIndex { index: 4 }, "head");
    let (e, _) = hostile(4, 0xFFFF, &[]);
    assert_eq!(e, QueueError::DescriptorIndex { index: 0xFFFF });
    let (e, _) = hostile(4, 0, &[(0, 0, 8, NEXT, 4)]);
    assert_eq!(e, QueueError::DescriptorIndex { index: 4 }, "next");
}

#[test]
fn indirect_and_undefined_flags_are_refused() {
    let (e, _) = hostile(4, 0, &[(0, 0, 16, INDIRECT, 0)]);
    assert_eq!(e, QueueError::Indirect { index: 0 });
    let (e, _) = hostile(4, 0, &[(0, 0, 8, NEXT, 1), (1, 0, 16, INDIRECT | WRITE, 0)]);
    assert_eq!(e, QueueError::Indirect { index: 1 });
    for flags in [8, 0x80, 0x8000, NEXT | 0x10] {
        let (e, _) = hostile(4, 0, &[(0, 0, 8, flags, 1), (1, 0, 8, 0, 0)]);
        assert_eq!(e, QueueError::UnknownFlags { index: 0, flags }, "{flags:#x}");
    }
}

#[test]
fn zero_lengths_are_refused() {
    let (e, _) = hostile(4, 0, &[(0, 0, 0, 0, 0)]);
    assert_eq!(e, QueueError::ZeroLength { index: 0 });
    let (e, _) = hostile(4, 2, &[(2, 0, 8, NEXT, 3), (3, 0, 0, WRITE, 0)]);
    assert_eq!(e, QueueError::ZeroLength { index: 3 });
}

#[test]
fn buffers_that_wrap_the_address_space_are_refused() {
    let (e, _) = hostile(4, 0, &[(0, u64::MAX - 10, 100, 0, 0)]);
    assert_eq!(e, QueueError::AddressOverflow { index: 0 });
    let (e, _) = hostile(4, 0, &[(0, u64::MAX, 1, 0, 0)]);
    assert_eq!(e, QueueError::AddressOverflow { index: 0 });
}

#[test]
fn a_readable_descriptor_after_a_writable_one_is_refused() {
    let (e, _) = hostile(4, 0, &[(0, 0, 8, NEXT | WRITE, 1), (1, 0, 8, 0, 0)]);
    assert_eq!(e, QueueError::ReadableAfterWritable { index: 1 });
}

#[test]
fn chains_of_more_than_u32_max_bytes_are_refused() {
    let (e, _) = hostile(4, 0, &[(0, 0, 0x8000_0000, NEXT, 1), (1, 0, 0x8000_0000, 0, 0)]);
    assert_eq!(e, QueueError::ChainTooLarge { head: 0 });
    // u32::MAX itself is fine (the buffers are not touched by the walk).
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    let h = d.chain(&mem, 0, &[(d.data, 0x8000_0000, false), (d.data, 0x7FFF_FFFF, true)]);
    assert!(pop_one(&mem, &mut q, &mut d, h).unwrap().is_some());
}

#[test]
fn the_available_index_may_not_jump_past_the_queue_size_or_go_back() {
    let mem = FakeMemory::new();
    let (mut q, d) = ready(8);
    mem.put_u16(d.avail + 2, 9);
    assert_eq!(q.view(&mem).unwrap().pop().unwrap_err(), QueueError::AvailIndexJump { idx: 9, taken: 0 });
    // Exactly the queue size ahead is fine.
    for i in 0..8 {
        d.chain(&mem, i, &[(d.data, 1, true)]);
        mem.put_u16(d.avail + 4 + 2 * u64::from(i), i);
    }
    mem.put_u16(d.avail + 2, 8);
    let mut vq = q.view(&mem).unwrap();
    for _ in 0..3 {
        assert!(vq.pop().unwrap().is_some());
    }
    // Backwards.
    mem.put_u16(d.avail + 2, 2);
    assert_eq!(vq.pop().unwrap_err(), QueueError::AvailIndexJump { idx: 2, taken: 3 });
    mem.put_u16(d.avail + 2, 0x8003);
    assert_eq!(vq.pop().unwrap_err(), QueueError::AvailIndexJump { idx: 0x8003, taken: 3 });
}

#[test]
fn rings_outside_the_memory_the_device_may_touch_are_memory_errors() {
    let mut mem = FakeMemory::new();
    let (mut q, mut d) = ready(4);
    let h = d.chain(&mem, 0, &[(d.data, 8, true)]);
    d.publish(&mem, h);
    // Only the data area is shared: the available ring is private.
    mem.shared = Some(d.data..d.data + 0x1_0000);
    assert_eq!(q.view(&mem).unwrap().pop().unwrap_err(), QueueError::Memory { gpa: Gpa(d.avail + 2), cause: MemError::NotShared });
    // Rings shared, descriptor table outside RAM.
    mem.shared = None;
    let mut q2 = q;
    q2.ready = false;
    q2.desc = RAM_BASE + RAM_SIZE;
    assert_eq!(q2.enable(0), Ok(()));
    assert_eq!(
        q2.view(&mem).unwrap().pop().unwrap_err(),
        QueueError::Memory { gpa: Gpa(RAM_BASE + RAM_SIZE), cause: MemError::OutsideRam }
    );
    // The used ring outside RAM.
    let mut q3 = q;
    q3.ready = false;
    q3.device = RAM_BASE - 0x1000;
    assert_eq!(q3.enable(0), Ok(()));
    let mut vq = q3.view(&mem).unwrap();
    let c = vq.pop().unwrap().unwrap();
    assert_eq!(vq.push_used(&c, 0).unwrap_err(), QueueError::Memory { gpa: Gpa(RAM_BASE - 0x1000 + 4), cause: MemError::OutsideRam });
}

#[test]
fn cursors_read_and_write_across_segments() {
    let mem = FakeMemory::new();
    let (mut q, mut d) = ready(8);
    mem.put(d.data, b"hello, ");
    mem.put(d.data + 0x100, b"virtio world");
    let h = d.chain(&mem, 0, &[(d.data, 7, false), (d.data + 0x100, 12, false), (d.data + 0x200, 3, true), (d.data + 0x300, 10, true)]);
    let c = pop_one(&mem, &mut q, &mut d, h).unwrap().unwrap();
    let mut r = c.reader();
    assert_eq!(r.remaining(), 19);
    let mut buf = [0u8; 10];
    assert_eq!(r.read(&mem, &mut buf), Ok(10));
    assert_eq!(&buf, b"hello, vir");
    assert_eq!(r.remaining(), 9);
    assert_eq!(r.read(&mem, &mut buf), Ok(9));
    assert_eq!(&buf[..9], b"tio world");
    assert_eq!(r.read(&mem, &mut buf), Ok(0), "at the end");
    let mut w = c.writer();
    assert_eq!(w.write(&mem, b"ABCDEFGHIJKLMNOP"), Ok(13), "only the room there is");
    assert_eq!(mem.get(d.data + 0x200, 3), b"ABC");
    assert_eq!(mem.get(d.data + 0x300, 10), b"DEFGHIJKLM");
    assert_eq!(w.remaining(), 0);
}

#[test]
fn a_cursor_reports_a_buffer_it_may_not_touch() {
    let mut mem = FakeMemory::new();
    let (mut q, mut d) = ready(8);
    let h = d.chain(&mem, 0, &[(d.data, 8, false), (RAM_BASE + RAM_SIZE - 4, 8, false)]);
    let c = pop_one(&mem, &mut q, &mut d, h).unwrap().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.reader().read(&mem, &mut buf), Err(QueueError::Memory { gpa: Gpa(RAM_BASE + RAM_SIZE - 4), cause: MemError::OutsideRam }));
    mem.shared = Some(d.data + 4..d.data + 8);
    assert_eq!(c.reader().read(&mem, &mut buf), Err(QueueError::Memory { gpa: Gpa(d.data), cause: MemError::NotShared }));
}

// Randomised: arbitrary descriptor tables, rings and indices.

/// A descriptor field drawn from values that are interesting to the walker.
fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![Just(RAM_BASE + 0x1_0000), (RAM_BASE..RAM_BASE + RAM_SIZE), any::<u64>(), (u64::MAX - 0x1000..=u64::MAX),];
    let len = prop_oneof![1 => Just(0u32), 4 => 1u32..64, 2 => 1u32..0x2_0000, 1 => any::<u32>()];
    let flags =
        prop_oneof![3 => Just(0u16), 6 => Just(NEXT), 3 => Just(WRITE), 6 => Just(NEXT | WRITE), 1 => Just(INDIRECT), 1 => any::<u16>()];
    let next = prop_oneof![4 => 0u16..256, 1 => any::<u16>()];
    (addr, len, flags, next)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the table holds, a round ends without a panic, takes at most queue size
    /// chains, reads at most `2 + size` times per chain (plus the final `idx`), and every
    /// chain it returns obeys the walker's rules.
    #[test]
    fn any_descriptor_table_is_walked_in_bounded_work(
        size_log in 0u32..=8,
        table in proptest::collection::vec(desc(), 256),
        ring in proptest::collection::vec(prop_oneof![4 => 0u16..256, 1 => any::<u16>()], 256),
        idx in prop_oneof![6 => 0u16..=256, 1 => any::<u16>()],
        start in any::<u16>(),
    ) {
        let size = 1u16 << size_log;
        // Mostly an index the queue size allows, sometimes a jump.
        let idx = if idx <= 256 { idx % (size + 1) } else { idx };
        let mem = FakeMemory::new();
        let (mut q, d) = ready(size);
        q.next_avail = start;
        for (i, &(addr, len, flags, next)) in table.iter().enumerate().take(usize::from(size)) {
            // Mostly a `next` inside the table, so that chains grow and loop.
            let next = if next < 256 { next % size } else { next };
            d.set_desc(&mem, i as u16, addr, len, flags, next);
        }
        for (slot, &head) in ring.iter().enumerate().take(usize::from(size)) {
            // Mostly heads inside the table, so that the walk gets going.
            let head = if head < 256 { head % size } else { head };
            mem.put_u16(d.avail + 4 + 2 * slot as u64, head);
        }
        mem.put_u16(d.avail + 2, start.wrapping_add(idx));
        let mut vq = q.view(&mem).unwrap();
        let mut chains = 0u64;
        let outcome: Result<(), QueueError> = loop {
            match vq.pop() {
                Ok(Some(c)) => {
                    chains += 1;
                    let segs: Vec<Segment> = c.readable().iter().chain(c.writable()).copied().collect();
                    prop_assert!(!segs.is_empty() && segs.len() <= usize::from(size));
                    prop_assert!(segs.iter().all(|s| s.len > 0 && s.addr.0.checked_add(u64::from(s.len)).is_some()));
                    prop_assert!(c.readable_len() + c.writable_len() <= u64::from(u32::MAX));
                    prop_assert!(c.head() < size);
                    let _ = vq.push_used(&c, 0);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        prop_assert!(chains <= u64::from(size));
        prop_assert!(mem.reads.get() <= chains * (2 + u64::from(size)) + 2 + u64::from(size), "reads {}", mem.reads.get());
        if idx > size {
            prop_assert_eq!(outcome, Err(QueueError::AvailIndexJump { idx: start.wrapping_add(idx), taken: start }));
        }
    }
}
