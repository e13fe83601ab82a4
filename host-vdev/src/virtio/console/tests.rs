//! Unit tests of virtio-console: its identity, output and input through real descriptor
//! chains in fake guest memory, a round trip, the transmit cap, and guest buffers that break
//! the device.

extern crate std;

use super::*;
use crate::virtio::mmio::{interrupt, status, Outcome};
use crate::virtio::queue::QueueError;
use crate::virtio::testing::{live, negotiate, off, r32, setup_queue, w32, DriverQueue, FakeMemory, RAM_BASE};
use crate::virtio::{Error, Gpa, MemError};
use std::vec::Vec;

/// What the guest wrote.
#[derive(Default)]
struct Captured(Vec<u8>);

impl ConsoleOutput for Captured {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn console() -> Console<Captured> {
    Console::new(Captured::default())
}

#[test]
fn identity_features_queues_and_configuration() {
    let mem = FakeMemory::new();
    let (mut t, _) = live(console(), &mem, 0, 8);
    assert_eq!(r32(&mut t, off::DEVICE_ID), 3);
    let _ = w32(&mut t, &mem, off::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r32(&mut t, off::DEVICE_FEATURES), 0, "no SIZE, MULTIPORT or EMERG_WRITE");
    let _ = w32(&mut t, &mem, off::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r32(&mut t, off::DEVICE_FEATURES), 0x3, "VERSION_1, ACCESS_PLATFORM");
    for (q, max) in [(0, 256), (1, 256), (2, 0), (3, 0)] {
        let _ = w32(&mut t, &mem, off::QUEUE_SEL, q);
        assert_eq!(r32(&mut t, off::QUEUE_NUM_MAX), max, "queue {q}: no control queues");
    }
    // cols, rows, max_nr_ports, emerg_wr: not offered, zero.
    for o in (0..12).step_by(4) {
        assert_eq!(t.read(off::CONFIG + o, 4), 0);
    }
    // A console driver that offers nothing of its own still negotiates.
    assert!(negotiate(&mut t, &mem, (1 << 32) | (1 << 33)));
    assert!(!negotiate(&mut t, &mem, (1 << 32) | (1 << 33) | 1 << 1), "MULTIPORT is not offered");
}

#[test]
fn transmitted_bytes_reach_the_output_in_order() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    let tx = &mut qs[1];
    mem.put(tx.data, b"hello, ");
    mem.put(tx.data + 0x100, b"virtio");
    mem.put(tx.data + 0x200, b" world\n");
    let a = tx.chain(&mem, 0, &[(tx.data, 7, false), (tx.data + 0x100, 6, false)]);
    let b = tx.chain(&mem, 4, &[(tx.data + 0x200, 7, false)]);
    tx.publish(&mem, a);
    tx.publish(&mem, b);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, u32::from(TRANSMITQ));
    assert_eq!(o, Outcome { irq_level: true, failed: None });
    assert_eq!(t.device().output().0, b"hello, virtio world\n");
    assert_eq!(tx.take_used(&mem), [(0, 0), (4, 0)], "nothing written to a transmit buffer");
    assert_eq!(t.device().stats(), Stats { tx_bytes: 20, rx_bytes: 0, tx_truncated: 0 });
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), interrupt::USED_BUFFER);
}

#[test]
fn writable_buffers_in_a_transmit_chain_are_left_alone() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    let tx = &mut qs[1];
    mem.put(tx.data, b"ab");
    mem.put(tx.data + 0x10, &[0xEE; 4]);
    let h = tx.chain(&mem, 0, &[(tx.data, 2, false), (tx.data + 0x10, 4, true)]);
    tx.publish(&mem, h);
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    assert_eq!(t.device().output().0, b"ab");
    assert_eq!(mem.get(tx.data + 0x10, 4), [0xEE; 4]);
    assert_eq!(tx.take_used(&mem), [(0, 0)]);
}

#[test]
fn input_fills_the_receive_buffers_in_order() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    let rx = &mut qs[0];
    let a = rx.chain(&mem, 0, &[(rx.data, 4, true)]);
    let b = rx.chain(&mem, 1, &[(rx.data + 0x100, 3, true), (rx.data + 0x200, 3, true)]);
    rx.publish(&mem, a);
    rx.publish(&mem, b);
    // A notification of new receive buffers moves nothing by itself.
    let writes = mem.writes.get();
    assert!(!w32(&mut t, &mem, off::QUEUE_NOTIFY, u32::from(RECEIVEQ)).irq_level);
    assert_eq!(mem.writes.get(), writes);
    let (taken, o) = t.receive(&mem, b"abcdefghijk");
    assert_eq!(taken, 10, "the buffers' room: 4 + 3 + 3");
    assert_eq!(o, Outcome { irq_level: true, failed: None });
    assert_eq!(mem.get(rx.data, 4), b"abcd");
    assert_eq!(mem.get(rx.data + 0x100, 3), b"efg");
    assert_eq!(mem.get(rx.data + 0x200, 3), b"hij");
    assert_eq!(rx.take_used(&mem), [(0, 4), (1, 6)]);
    // No buffer left: the VMM keeps "k".
    let _ = w32(&mut t, &mem, off::INTERRUPT_ACK, interrupt::USED_BUFFER);
    assert_eq!(t.receive(&mem, b"k"), (0, Outcome { irq_level: false, failed: None }));
    // A buffer larger than the input takes what there is.
    let c = rx.chain(&mem, 2, &[(rx.data + 0x300, 64, true)]);
    rx.publish(&mem, c);
    assert_eq!(t.receive(&mem, b"k").0, 1);
    assert_eq!(rx.take_used(&mem), [(2, 1)]);
    assert_eq!(t.device().stats().rx_bytes, 11);
}

#[test]
fn input_waits_for_a_live_device_and_a_ready_receive_queue() {
    let mem = FakeMemory::new();
    let mut t = VirtioMmio::new(console(), crate::virtio::mmio::DmaPolicy::Restricted);
    assert_eq!(t.receive(&mem, b"x"), (0, Outcome { irq_level: false, failed: None }));
    assert!(negotiate(&mut t, &mem, (1 << 32) | (1 << 33)));
    let mut rx = DriverQueue::new(0, 8);
    assert_eq!(setup_queue(&mut t, &mem, 0, &rx).failed, None);
    let h = rx.chain(&mem, 0, &[(rx.data, 4, true)]);
    rx.publish(&mem, h);
    assert_eq!(t.receive(&mem, b"x").0, 0, "before DRIVER_OK");
    assert_eq!(mem.accesses(), 0);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(s));
    assert_eq!(t.receive(&mem, b"x").0, 1);
    let _ = w32(&mut t, &mem, off::QUEUE_READY, 0);
    let h = rx.chain(&mem, 1, &[(rx.data, 4, true)]);
    rx.publish(&mem, h);
    assert_eq!(t.receive(&mem, b"y").0, 0, "receiveq stopped");
}

#[test]
fn a_round_trip_echoes_the_guests_output_back_as_input() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 16);
    let (rx, tx) = qs.split_at_mut(1);
    let (rx, tx) = (&mut rx[0], &mut tx[0]);
    for i in 0..4 {
        let h = rx.chain(&mem, i, &[(rx.data + 0x100 * u64::from(i), 16, true)]);
        rx.publish(&mem, h);
    }
    for (i, line) in [&b"ping\n"[..], b"pong\n"].iter().enumerate() {
        let at = tx.data + 0x100 * i as u64;
        mem.put(at, line);
        let h = tx.chain(&mem, i as u16, &[(at, line.len() as u32, false)]);
        tx.publish(&mem, h);
        let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
        let out = core::mem::take(&mut t.device_mut().output_mut().0);
        assert_eq!(out, *line);
        assert_eq!(t.receive(&mem, &out).0, out.len());
        assert_eq!(mem.get(rx.data + 0x100 * i as u64, out.len()), *line);
    }
    assert_eq!(rx.take_used(&mem), [(0, 5), (1, 5)]);
    assert_eq!(tx.take_used(&mem), [(0, 0), (1, 0)]);
    assert_eq!(t.stats().used_buffers, 4);
}

#[test]
fn a_transmit_chain_is_cut_at_tx_chain_max() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    let tx = &mut qs[1];
    mem.put(tx.data, &[b'x'; 0x1_0000]);
    // 80 KiB through one 40 KiB buffer named twice.
    let h = tx.chain(&mem, 0, &[(tx.data, 40 * 1024, false), (tx.data, 40 * 1024, false)]);
    tx.publish(&mem, h);
    assert_eq!(w32(&mut t, &mem, off::QUEUE_NOTIFY, 1).failed, None);
    assert_eq!(t.device().output().0.len() as u64, TX_CHAIN_MAX);
    assert_eq!(t.device().stats().tx_truncated, 1);
    assert_eq!(tx.take_used(&mem), [(0, 0)]);
}

#[test]
fn a_transmit_buffer_the_guest_did_not_share_breaks_the_device() {
    let mut mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    // The rings and the data areas of both queues are shared, nothing else.
    mem.shared = Some(RAM_BASE..RAM_BASE + 0x4_0000);
    let private = RAM_BASE + 0x8_0000;
    let tx = &mut qs[1];
    let h = tx.chain(&mem, 0, &[(private, 16, false)]);
    tx.publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    let e = Error::Queue { queue: 1, error: QueueError::Memory { gpa: Gpa(private), cause: MemError::NotShared } };
    assert_eq!(o, Outcome { irq_level: true, failed: Some(e) });
    assert_ne!(r32(&mut t, off::STATUS) & u32::from(status::DEVICE_NEEDS_RESET), 0);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    assert!(t.device().output().0.is_empty());
    assert!(tx.take_used(&mem).is_empty(), "the chain is not given back");
}

#[test]
fn a_bad_receive_chain_breaks_the_device_and_receive_says_so() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(console(), &mem, 0, 8);
    let rx = &mut qs[0];
    let good = rx.chain(&mem, 0, &[(rx.data, 2, true)]);
    let bad = rx.chain(&mem, 1, &[(rx.data, 0, true)]);
    rx.publish(&mem, good);
    rx.publish(&mem, bad);
    let (taken, o) = t.receive(&mem, b"abcd");
    assert_eq!(taken, 2, "the first buffer was filled and given back");
    assert_eq!(o.failed, Some(Error::Queue { queue: 0, error: QueueError::ZeroLength { index: 1 } }));
    assert!(o.irq_level);
    assert_eq!(t.receive(&mem, b"cd").0, 0, "broken until reset");
}
