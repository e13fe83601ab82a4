//! Unit tests of the virtio-mmio transport over a probe device: every register's reset value
//! and access rules, feature negotiation, the status state machine (reset, `FEATURES_OK`,
//! `DRIVER_OK`, `FAILED`, `DEVICE_NEEDS_RESET`), queue setup, notifications and interrupts.

extern crate std;

use super::*;
use crate::virtio::queue::QueueError;
use crate::virtio::testing::{bring_up, live, negotiate, off, r32, setup_queue, w32, DriverQueue, FakeMemory};
use std::vec::Vec;

/// A device that gives every chain straight back, claiming its writable bytes written.
#[derive(Default)]
struct Probe {
    resets: u32,
    /// (queue, head) of each chain taken.
    seen: Vec<(u16, u16)>,
}

/// The probe's configuration space.
const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

impl Device for Probe {
    const DEVICE_ID: u32 = 42;
    const QUEUES: u16 = 2;

    fn features(&self) -> u64 {
        // Bit 40 (VIRTIO_F_RING_RESET) is not the device's to offer: the transport drops it.
        1 << 0 | 1 << 5 | 1 << 40
    }

    fn read_config(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = CONFIG.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn reset(&mut self) {
        self.resets += 1;
    }

    fn notified<M: GuestMemory>(&mut self, queue: u16, vq: &mut Virtqueue<'_, M>) -> Result<(), QueueError> {
        while let Some(c) = vq.pop()? {
            self.seen.push((queue, c.head()));
            vq.push_used(&c, c.writable_len() as u32)?;
        }
        Ok(())
    }
}

const V1_AP: u64 = features::VERSION_1 | features::ACCESS_PLATFORM;
const LIVE: u32 = (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK) as u32;

fn fresh() -> VirtioMmio<Probe> {
    VirtioMmio::new(Probe::default(), DmaPolicy::Restricted)
}

#[test]
fn identification_registers() {
    let mut t = fresh();
    assert_eq!(r32(&mut t, off::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(&mut t, off::VERSION), 2);
    assert_eq!(r32(&mut t, off::DEVICE_ID), 42);
    assert_eq!(r32(&mut t, off::VENDOR_ID), u32::from_le_bytes(*b"pKrs"));
    assert_eq!(t.stats(), Stats::default());
}

#[test]
fn reset_values() {
    let mut t = fresh();
    assert_eq!(r32(&mut t, off::STATUS), 0);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 0);
    assert_eq!(r32(&mut t, off::CONFIG_GENERATION), 0);
    for (sel, max) in [(0, 256), (1, 256), (2, 0), (u32::MAX, 0)] {
        let mem = FakeMemory::new();
        let _ = w32(&mut t, &mem, off::QUEUE_SEL, sel);
        assert_eq!(r32(&mut t, off::QUEUE_NUM_MAX), max, "queue {sel}");
        assert_eq!(r32(&mut t, off::QUEUE_READY), 0, "queue {sel}");
    }
    for shm in [off::SHM_LEN_LOW, off::SHM_LEN_HIGH, off::SHM_BASE_LOW, off::SHM_BASE_HIGH] {
        assert_eq!(r32(&mut t, shm), u32::MAX, "no shared memory region: -1");
    }
    assert!(!t.irq_level());
    assert_eq!(t.failure(), None);
    assert_eq!(t.stats().unhandled_accesses, 0);
}

#[test]
fn device_features_are_read_by_selection() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    for (sel, word) in [(0, 0x21), (1, 0x3), (2, 0), (u32::MAX, 0)] {
        let _ = w32(&mut t, &mem, off::DEVICE_FEATURES_SEL, sel);
        assert_eq!(r32(&mut t, off::DEVICE_FEATURES), word, "selection {sel}");
    }
    assert_eq!(t.device_features(), V1_AP | 0x21);
}

#[test]
fn features_ok_needs_version_1() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert!(negotiate(&mut t, &mem, V1_AP));
    assert_eq!(t.driver_features(), V1_AP);
    assert!(!negotiate(&mut t, &mem, features::ACCESS_PLATFORM), "legacy driver");
    assert!(!negotiate(&mut t, &mem, 0));
    assert!(negotiate(&mut t, &mem, V1_AP | 0x21), "with every device feature");
    assert_eq!(r32(&mut t, off::STATUS), u32::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
}

#[test]
fn features_ok_refuses_features_not_offered() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    // Bit 1 (not the probe's), INDIRECT_DESC (28), EVENT_IDX (29), RING_PACKED (34),
    // RING_RESET (40, which the probe tried to offer).
    for bit in [1, 28, 29, 34, 40, 63] {
        assert!(!negotiate(&mut t, &mem, V1_AP | 1 << bit), "bit {bit}");
        assert_eq!(r32(&mut t, off::STATUS) & u32::from(status::FEATURES_OK), 0);
    }
    // A bit above 63, through a third selection word.
    let _ = w32(&mut t, &mem, off::STATUS, 0);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES_SEL, 2);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES, 1);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES_SEL, 1);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES, (V1_AP >> 32) as u32);
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::FEATURES_OK));
    assert_eq!(r32(&mut t, off::STATUS), 0);
    // Zero written there is harmless.
    let _ = w32(&mut t, &mem, off::STATUS, 0);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES_SEL, 2);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES, 0);
    assert!(negotiate(&mut t, &mem, V1_AP));
}

#[test]
fn a_protected_vm_needs_access_platform() {
    let mem = FakeMemory::new();
    let mut restricted = fresh();
    assert!(!negotiate(&mut restricted, &mem, features::VERSION_1));
    let mut open = VirtioMmio::new(Probe::default(), DmaPolicy::Open);
    assert!(negotiate(&mut open, &mem, features::VERSION_1));
    assert!(negotiate(&mut open, &mem, V1_AP));
}

#[test]
fn driver_features_are_frozen_once_features_ok_is_set() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert!(negotiate(&mut t, &mem, V1_AP));
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES_SEL, 0);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES, 0x21);
    assert_eq!(t.driver_features(), V1_AP);
    assert_eq!(t.stats().unhandled_accesses, 1);
}

#[test]
fn status_bits_accumulate_and_needs_reset_is_the_devices() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::ACKNOWLEDGE));
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::DRIVER));
    assert_eq!(r32(&mut t, off::STATUS), u32::from(status::ACKNOWLEDGE | status::DRIVER), "a driver cannot clear a bit");
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::DEVICE_NEEDS_RESET));
    assert_eq!(r32(&mut t, off::STATUS), u32::from(status::ACKNOWLEDGE | status::DRIVER));
    // Everything at once: FEATURES_OK does not stick (no features written), NEEDS_RESET is not
    // the driver's.
    let _ = w32(&mut t, &mem, off::STATUS, 0xFF);
    assert_eq!(r32(&mut t, off::STATUS), 0xFF & !0x40 & !0x08);
    assert_eq!(t.failure(), None);
}

#[test]
fn writing_zero_to_status_resets_everything() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0x21, 8);
    let h = qs[1].chain(&mem, 0, &[(qs[1].data, 1, false)]);
    qs[1].publish(&mem, h);
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 1);
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 1);
    let _ = w32(&mut t, &mem, off::DEVICE_FEATURES_SEL, 1);
    let resets = t.device().resets;
    let o = w32(&mut t, &mem, off::STATUS, 0);
    assert!(!o.irq_level, "interrupts cleared");
    assert_eq!(r32(&mut t, off::STATUS), 0);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 0);
    assert_eq!(t.driver_features(), 0);
    assert_eq!(t.device().resets, resets + 1);
    assert_eq!(r32(&mut t, off::DEVICE_FEATURES), 0x21, "selection back to word 0");
    // Queue selection back to 0, and no queue ready or configured.
    let _ = w32(&mut t, &mem, off::QUEUE_NUM, 8);
    assert_eq!(t.queues[0].size, 8);
    assert_eq!(t.queues[1].size, 0);
    for q in &t.queues {
        assert!(!q.ready());
        assert_eq!((q.desc, q.driver, q.device), (0, 0, 0));
    }
    // And it comes up again as new, over the driver's new rings.
    let mem = FakeMemory::new();
    let mut qs = bring_up(&mut t, &mem, 0, 8);
    let h = qs[1].chain(&mem, 0, &[(qs[1].data, 1, true)]);
    qs[1].publish(&mem, h);
    assert!(w32(&mut t, &mem, off::QUEUE_NOTIFY, 1).irq_level);
    assert_eq!(qs[1].take_used(&mem), [(0, 1)]);
}

#[test]
fn queue_registers_configure_the_selected_queue() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 1);
    let _ = w32(&mut t, &mem, off::QUEUE_NUM, 64);
    for (lo, v) in
        [(off::QUEUE_DESC_LOW, 0x1_2345_6000u64), (off::QUEUE_DRIVER_LOW, 0x2_0000_0002), (off::QUEUE_DEVICE_LOW, 0xFFFF_FFFF_0000_0004)]
    {
        let _ = w32(&mut t, &mem, lo, v as u32);
        let _ = w32(&mut t, &mem, lo + 4, (v >> 32) as u32);
    }
    let q = t.queues[1];
    assert_eq!((q.size, q.desc, q.driver, q.device), (64, 0x1_2345_6000, 0x2_0000_0002, 0xFFFF_FFFF_0000_0004));
    assert_eq!(t.queues[0], SplitQueue::new(256), "queue 0 untouched");
    // Halves are independent.
    let _ = w32(&mut t, &mem, off::QUEUE_DESC_HIGH, 0);
    assert_eq!(t.queues[1].desc, 0x2345_6000);
    assert_eq!(t.stats().unhandled_accesses, 0);
}

#[test]
fn a_ready_queue_keeps_its_configuration() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let q = DriverQueue::new(0, 8);
    assert_eq!(setup_queue(&mut t, &mem, 0, &q).failed, None);
    assert_eq!(r32(&mut t, off::QUEUE_READY), 1);
    let before = t.queues[0];
    for reg in [
        off::QUEUE_NUM,
        off::QUEUE_DESC_LOW,
        off::QUEUE_DESC_HIGH,
        off::QUEUE_DRIVER_LOW,
        off::QUEUE_DRIVER_HIGH,
        off::QUEUE_DEVICE_LOW,
        off::QUEUE_DEVICE_HIGH,
    ] {
        let _ = w32(&mut t, &mem, reg, 0x40);
    }
    assert_eq!(t.queues[0], before);
    assert_eq!(t.stats().unhandled_accesses, 7);
    // Ready again is harmless.
    assert_eq!(w32(&mut t, &mem, off::QUEUE_READY, 1).failed, None);
    assert_eq!(t.queues[0], before);
}

#[test]
fn queue_ready_checks_the_queue_and_reads_back() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert!(negotiate(&mut t, &mem, V1_AP));
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 1);
    let _ = w32(&mut t, &mem, off::QUEUE_NUM, 12);
    let o = w32(&mut t, &mem, off::QUEUE_READY, 1);
    assert_eq!(o.failed, Some(Error::QueueSize { queue: 1, size: 12 }));
    assert!(!o.irq_level, "no configuration change interrupt before DRIVER_OK");
    assert_eq!(r32(&mut t, off::QUEUE_READY), 0);
    assert_ne!(r32(&mut t, off::STATUS) & u32::from(status::DEVICE_NEEDS_RESET), 0);
    assert_eq!(t.failure(), Some(Error::QueueSize { queue: 1, size: 12 }));
    // A second error keeps the first as the reason.
    let _ = w32(&mut t, &mem, off::QUEUE_NUM, 8);
    let _ = w32(&mut t, &mem, off::QUEUE_DESC_LOW, 8);
    assert_eq!(w32(&mut t, &mem, off::QUEUE_READY, 1).failed, Some(Error::QueueAddress { queue: 1 }));
    assert_eq!(t.failure(), Some(Error::QueueSize { queue: 1, size: 12 }));
    // The driver sets DRIVER_OK without looking: now it is told.
    let o = w32(&mut t, &mem, off::STATUS, LIVE);
    assert!(o.irq_level);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
}

#[test]
fn queue_ready_zero_stops_the_queue() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 0);
    let _ = w32(&mut t, &mem, off::QUEUE_READY, 0);
    assert_eq!(r32(&mut t, off::QUEUE_READY), 0);
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 1, true)]);
    qs[0].publish(&mem, h);
    let accesses = mem.accesses();
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert_eq!(mem.accesses(), accesses, "a queue that is not ready is not touched");
    assert!(!o.irq_level);
    assert!(t.device().seen.is_empty());
    // Other values are not defined.
    let _ = w32(&mut t, &mem, off::QUEUE_READY, 2);
    assert_eq!(t.stats().unhandled_accesses, 1);
    assert_eq!(r32(&mut t, off::QUEUE_READY), 0);
}

#[test]
fn a_queue_the_device_lacks_takes_no_configuration() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let _ = w32(&mut t, &mem, off::QUEUE_SEL, 2);
    for reg in [off::QUEUE_NUM, off::QUEUE_READY, off::QUEUE_DESC_LOW, off::QUEUE_DRIVER_HIGH, off::QUEUE_DEVICE_LOW] {
        let _ = w32(&mut t, &mem, reg, 1);
    }
    assert_eq!(t.stats().unhandled_accesses, 5);
    assert_eq!(r32(&mut t, off::QUEUE_READY), 0);
    assert_eq!(t.failure(), None);
}

#[test]
fn a_notification_runs_the_device_and_raises_the_used_buffer_interrupt() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    let h = qs[1].chain(&mem, 3, &[(qs[1].data, 4, false), (qs[1].data + 8, 6, true)]);
    qs[1].publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    assert_eq!(o, Outcome { irq_level: true, failed: None });
    assert_eq!(t.device().seen, [(1, 3)]);
    assert_eq!(qs[1].take_used(&mem), [(3, 6)]);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), interrupt::USED_BUFFER);
    let o = w32(&mut t, &mem, off::INTERRUPT_ACK, interrupt::USED_BUFFER);
    assert!(!o.irq_level);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 0);
    assert_eq!(t.stats(), Stats { unhandled_accesses: 0, notifications: 1, used_buffers: 1 });
    // A spurious notification: nothing used, no interrupt.
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    assert!(!o.irq_level);
}

#[test]
fn the_driver_may_suppress_the_used_buffer_interrupt() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    qs[0].set_avail_flags(&mem, 1);
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 4, true)]);
    qs[0].publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert!(!o.irq_level);
    assert_eq!(qs[0].take_used(&mem), [(0, 4)], "used all the same");
}

#[test]
fn interrupt_ack_clears_only_the_bits_written() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 4, true)]);
    qs[0].publish(&mem, h);
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    // Now break it: a zero-length chain.
    let h = qs[0].chain(&mem, 1, &[(qs[0].data, 0, true)]);
    qs[0].publish(&mem, h);
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 3);
    assert!(w32(&mut t, &mem, off::INTERRUPT_ACK, 2).irq_level);
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), 1);
    assert!(!w32(&mut t, &mem, off::INTERRUPT_ACK, 0xFFFF_FFFF).irq_level);
}

#[test]
fn a_notification_naming_no_queue_is_unhandled() {
    let mem = FakeMemory::new();
    let (mut t, _) = live(Probe::default(), &mem, 0, 8);
    let accesses = mem.accesses();
    for q in [2, 0xFFFF, 0x1_0000, u32::MAX] {
        assert_eq!(w32(&mut t, &mem, off::QUEUE_NOTIFY, q).failed, None);
    }
    assert_eq!(t.stats().unhandled_accesses, 4);
    assert_eq!(t.stats().notifications, 0);
    assert_eq!(mem.accesses(), accesses);
}

#[test]
fn notifications_before_driver_ok_are_served_when_it_is_set() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert!(negotiate(&mut t, &mem, V1_AP));
    let mut q = DriverQueue::new(0, 8);
    assert_eq!(setup_queue(&mut t, &mem, 0, &q).failed, None);
    let h = q.chain(&mem, 0, &[(q.data, 4, true)]);
    q.publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert!(!o.irq_level);
    assert_eq!(mem.accesses(), 0, "nothing before DRIVER_OK (§2.1.2)");
    let o = w32(&mut t, &mem, off::STATUS, LIVE);
    assert!(o.irq_level);
    assert_eq!(t.device().seen, [(0, 0)]);
}

#[test]
fn the_write_that_makes_the_device_live_serves_the_queues() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let mut q = DriverQueue::new(0, 8);
    assert_eq!(setup_queue(&mut t, &mem, 0, &q).failed, None);
    let h = q.chain(&mem, 0, &[(q.data, 4, true)]);
    q.publish(&mem, h);
    // DRIVER_OK first (out of order), the features after it.
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK));
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES_SEL, 1);
    let _ = w32(&mut t, &mem, off::DRIVER_FEATURES, (V1_AP >> 32) as u32);
    assert_eq!(mem.accesses(), 0);
    assert!(w32(&mut t, &mem, off::STATUS, u32::from(status::FEATURES_OK)).irq_level);
    assert_eq!(t.device().seen, [(0, 0)]);
    // Writing the same bits again runs nothing.
    let accesses = mem.accesses();
    let _ = w32(&mut t, &mem, off::STATUS, LIVE);
    assert_eq!(mem.accesses(), accesses);
}

#[test]
fn without_features_ok_driver_ok_does_not_make_the_device_live() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let mut q = DriverQueue::new(0, 8);
    assert_eq!(setup_queue(&mut t, &mem, 0, &q).failed, None);
    let h = q.chain(&mem, 0, &[(q.data, 4, true)]);
    q.publish(&mem, h);
    let _ = w32(&mut t, &mem, off::STATUS, LIVE);
    assert_eq!(r32(&mut t, off::STATUS), LIVE & !u32::from(status::FEATURES_OK), "no features were accepted");
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert_eq!(mem.accesses(), 0);
}

#[test]
fn a_driver_that_failed_gets_no_more_service() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    let _ = w32(&mut t, &mem, off::STATUS, u32::from(status::FAILED));
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 4, true)]);
    qs[0].publish(&mem, h);
    let accesses = mem.accesses();
    let _ = w32(&mut t, &mem, off::QUEUE_NOTIFY, 0);
    assert_eq!(mem.accesses(), accesses);
}

#[test]
fn a_bad_chain_makes_the_device_need_a_reset() {
    let mem = FakeMemory::new();
    let (mut t, mut qs) = live(Probe::default(), &mem, 0, 8);
    let h = qs[1].chain(&mem, 5, &[(qs[1].data, 4, true), (qs[1].data, 4, false)]);
    qs[1].publish(&mem, h);
    let o = w32(&mut t, &mem, off::QUEUE_NOTIFY, 1);
    let e = Error::Queue { queue: 1, error: QueueError::ReadableAfterWritable { index: 6 } };
    assert_eq!(o, Outcome { irq_level: true, failed: Some(e) });
    assert_eq!(t.failure(), Some(e));
    assert_eq!(r32(&mut t, off::STATUS), LIVE | u32::from(status::DEVICE_NEEDS_RESET));
    assert_eq!(r32(&mut t, off::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    // Good chains wait: no queue is touched until the reset.
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 4, true)]);
    qs[0].publish(&mem, h);
    let accesses = mem.accesses();
    assert_eq!(w32(&mut t, &mem, off::QUEUE_NOTIFY, 0).failed, None);
    assert_eq!(w32(&mut t, &mem, off::STATUS, LIVE).failed, None);
    assert_eq!(mem.accesses(), accesses);
    assert!(t.device().seen.is_empty());
    // The reset recovers it; the driver sets up new rings.
    let _ = w32(&mut t, &mem, off::STATUS, 0);
    assert_eq!(t.failure(), None);
    assert!(!t.irq_level());
    let mem = FakeMemory::new();
    let mut qs = bring_up(&mut t, &mem, 0, 8);
    let h = qs[0].chain(&mem, 0, &[(qs[0].data, 4, true)]);
    qs[0].publish(&mem, h);
    assert_eq!(w32(&mut t, &mem, off::QUEUE_NOTIFY, 0), Outcome { irq_level: true, failed: None });
}

#[test]
fn control_registers_take_only_aligned_32_bit_accesses() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert_eq!(t.read(off::MAGIC_VALUE, 1), 0);
    assert_eq!(t.read(off::MAGIC_VALUE, 2), 0);
    assert_eq!(t.read(off::MAGIC_VALUE, 8), 0);
    assert_eq!(t.read(off::MAGIC_VALUE + 2, 4), 0);
    assert_eq!(t.read(off::VERSION, 3), 0);
    let _ = t.write(&mem, off::QUEUE_SEL, 2, 1);
    let _ = t.write(&mem, off::STATUS, 1, 1);
    let _ = t.write(&mem, off::STATUS, 8, 1);
    assert_eq!(t.stats().unhandled_accesses, 8);
    assert_eq!(r32(&mut t, off::STATUS), 0);
    // A 32-bit write uses the low 32 bits of the value.
    let _ = t.write(&mem, off::QUEUE_SEL, 4, 0x1_0000_0001);
    assert_eq!(t.queue_sel, 1);
}

#[test]
fn write_only_registers_read_as_zero_and_read_only_ones_ignore_writes() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    let write_only = [
        off::DEVICE_FEATURES_SEL,
        off::DRIVER_FEATURES,
        off::DRIVER_FEATURES_SEL,
        off::QUEUE_SEL,
        off::QUEUE_NUM,
        off::QUEUE_NOTIFY,
        off::INTERRUPT_ACK,
        off::QUEUE_DESC_LOW,
        off::QUEUE_DESC_HIGH,
        off::QUEUE_DRIVER_LOW,
        off::QUEUE_DRIVER_HIGH,
        off::QUEUE_DEVICE_LOW,
        off::QUEUE_DEVICE_HIGH,
        off::SHM_SEL,
    ];
    for reg in write_only {
        assert_eq!(r32(&mut t, reg), 0, "{reg:#x}");
    }
    assert_eq!(t.stats().unhandled_accesses, write_only.len() as u64);
    let read_only = [
        off::MAGIC_VALUE,
        off::VERSION,
        off::DEVICE_ID,
        off::VENDOR_ID,
        off::DEVICE_FEATURES,
        off::QUEUE_NUM_MAX,
        off::INTERRUPT_STATUS,
        off::SHM_LEN_LOW,
        off::SHM_LEN_HIGH,
        off::SHM_BASE_LOW,
        off::SHM_BASE_HIGH,
        off::CONFIG_GENERATION,
    ];
    for reg in read_only {
        let _ = w32(&mut t, &mem, reg, 0x5A5A_5A5A);
    }
    assert_eq!(t.stats().unhandled_accesses, (write_only.len() + read_only.len()) as u64);
    assert_eq!(r32(&mut t, off::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(&mut t, off::DEVICE_ID), 42);
    // SHMSel takes any region number; there is none.
    let _ = w32(&mut t, &mem, off::SHM_SEL, 3);
    assert_eq!(r32(&mut t, off::SHM_LEN_LOW), u32::MAX);
    // QueueReset (VIRTIO_F_RING_RESET is not offered) and gaps in the map.
    let before = t.stats().unhandled_accesses;
    for reg in [off::QUEUE_RESET, 0x018, 0x028, 0x03C, 0x048, 0x054, 0x068, 0x074, 0x0F8] {
        assert_eq!(r32(&mut t, reg), 0, "{reg:#x}");
        let _ = w32(&mut t, &mem, reg, 1);
    }
    assert_eq!(t.stats().unhandled_accesses, before + 18);
    assert_eq!(mem.accesses(), 0);
}

#[test]
fn the_configuration_space_takes_naturally_aligned_8_16_and_32_bit_reads() {
    let mem = FakeMemory::new();
    let mut t = fresh();
    assert_eq!(t.read(off::CONFIG, 4), 0x4433_2211);
    assert_eq!(t.read(off::CONFIG + 4, 4), 0x8877_6655);
    assert_eq!(t.read(off::CONFIG + 2, 2), 0x4433);
    assert_eq!(t.read(off::CONFIG + 7, 1), 0x88);
    assert_eq!(t.read(off::CONFIG + 0xF0, 4), 0, "past the device's fields");
    assert_eq!(t.read(FRAME_SIZE - 4, 4), 0);
    assert_eq!(t.stats().unhandled_accesses, 0);
    assert_eq!(t.read(off::CONFIG, 8), 0);
    assert_eq!(t.read(off::CONFIG + 1, 2), 0);
    assert_eq!(t.read(off::CONFIG + 2, 4), 0);
    assert_eq!(t.read(FRAME_SIZE, 4), 0, "past the frame");
    assert_eq!(t.read(u64::MAX - 3, 4), 0);
    // Neither device has a writable field.
    let _ = t.write(&mem, off::CONFIG, 4, 0);
    let _ = t.write(&mem, off::CONFIG, 1, 0);
    assert_eq!(t.stats().unhandled_accesses, 7);
    assert_eq!(t.read(off::CONFIG, 1), 0x11);
}
