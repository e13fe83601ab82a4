//! The virtio-mmio transport, version 2 (§4.2): the register file a driver sees in the
//! device's frame, the device status state machine (§2.1, §3.1) and the queues' setup,
//! generic over a [`Device`].
//!
//! Place in the flow: guest MMIO exit in the frame → [`VirtioMmio::read`] /
//! [`VirtioMmio::write`]; a `QueueNotify` write runs [`Device::notified`] over that queue,
//! and device-specific calls ([`VirtioMmio::receive`] for the console's input) do the same
//! for the VMM. Each mutating call returns an [`Outcome`]: the interrupt line's level, which
//! the VMM drives into the vGIC as the transport's SPI (level-sensitive, high while
//! `InterruptStatus` is not zero), and the error that broke the device in this call.
//!
//! # The state machine
//!
//! - **Reset** (`Status` = 0, and at creation): status, feature selections and the driver's
//!   features, every queue's configuration (not ready, positions at 0), `InterruptStatus` and
//!   the recorded failure are cleared, and the device forgets any state of its own.
//! - **Status writes** add bits: a driver may not clear one (§2.1.1), so a write that would is
//!   taken as the union; `DEVICE_NEEDS_RESET` is the device's and cannot be written.
//! - **`FEATURES_OK`** is kept only if the driver's features are a subset of those offered,
//!   include `VIRTIO_F_VERSION_1` and, under [`DmaPolicy::Restricted`],
//!   `VIRTIO_F_ACCESS_PLATFORM`; otherwise the write leaves it clear and the driver, reading
//!   `Status` back, gives up (§3.1.1). Once it is set, `DriverFeatures` writes are ignored.
//! - **Live**: the device touches its queues only while `FEATURES_OK` and `DRIVER_OK` are set
//!   and `FAILED` and `DEVICE_NEEDS_RESET` are not (§2.1.2: nothing before `DRIVER_OK`). A
//!   notification that comes earlier is dropped; the `Status` write that makes the device live
//!   runs every ready queue once, which serves it.
//! - **Queues** are configured while not ready (writes to `QueueNum` and the ring addresses
//!   of a ready queue are ignored, §4.2.2.2), checked when `QueueReady` is set to 1 (a bad
//!   size or ring address is an [`Error`] that breaks the device), and stopped by
//!   `QueueReady` = 0.
//! - **Broken**: an [`Error`] sets `DEVICE_NEEDS_RESET`, raises a configuration change
//!   interrupt if `DRIVER_OK` is set (§2.1.2; or when the driver sets it later), and stops
//!   all queue work until reset. The first error is kept for [`VirtioMmio::failure`].
//!
//! # Registers and access sizes
//!
//! As §4.2.2's table: 32-bit aligned accesses to the registers below 0x100, and 8-, 16- or
//! 32-bit naturally aligned accesses to the device's configuration space from 0x100 (a 64-bit
//! field is read as two 32-bit halves, as Linux does). Any other access, an offset that names
//! no register, a read of a write-only register, a write to a read-only one (the
//! configuration space included: neither device has a writable field), a feature or queue
//! register write the state forbids, a `QueueNotify` naming no queue: the read returns 0, the
//! write is ignored, and both count in [`Stats::unhandled_accesses`]. No shared memory
//! regions (`SHMLen` and `SHMBase` read all ones, §4.2.2), no `QueueReset`.
//! `ConfigGeneration` is always 0: neither device's configuration changes after creation.

use super::queue::{QueueError, SplitQueue, Virtqueue, QUEUE_SIZE_MAX};
use super::{Error, GuestMemory};

/// The size of a transport's register frame (as QEMU's `virt` machine gives each).
pub const FRAME_SIZE: u64 = 0x200;
/// The most queues a device has.
pub const MAX_QUEUES: usize = 2;
/// `MagicValue`: "virt" in little-endian (§4.2.2).
pub const MAGIC: u32 = 0x7472_6976;
/// `Version`: 2, the non-legacy interface (§4.2.2).
pub const VERSION: u32 = 2;
/// `VendorID`: "pKrs" in little-endian. Linux's driver does not look at it.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"pKrs");

/// Register offsets (§4.2.2); the tests name them too.
pub(crate) mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00C;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0A0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0A4;
    pub const SHM_SEL: u64 = 0x0AC;
    pub const SHM_LEN_LOW: u64 = 0x0B0;
    pub const SHM_LEN_HIGH: u64 = 0x0B4;
    pub const SHM_BASE_LOW: u64 = 0x0B8;
    pub const SHM_BASE_HIGH: u64 = 0x0BC;
    /// `QueueReset`: only with `VIRTIO_F_RING_RESET`, which is not offered (reads as 0).
    #[cfg_attr(not(test), allow(dead_code))]
    pub const QUEUE_RESET: u64 = 0x0C0;
    pub const CONFIG_GENERATION: u64 = 0x0FC;
    pub const CONFIG: u64 = 0x100;
}

/// `Status` bits (§2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete (kept only if the device accepts the features).
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Feature bits every device offers (§6).
pub mod features {
    /// `VIRTIO_F_VERSION_1` (bit 32): the non-legacy interface; required of the driver.
    pub const VERSION_1: u64 = 1 << 32;
    /// `VIRTIO_F_ACCESS_PLATFORM` (bit 33): the device reaches only the memory the platform
    /// lets it (for a protected VM, what the guest shared), so the driver goes through its
    /// DMA API, which bounces buffers through the restricted DMA pool.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// The device-specific bits (0–23; §2.2 also gives 50–127 to devices, which none uses).
    pub const DEVICE_SPECIFIC: u64 = 0xFF_FFFF;
}

/// `InterruptStatus` and `InterruptACK` bits (§4.2.2).
pub mod interrupt {
    /// Used Buffer Notification: the device used a buffer in a queue.
    pub const USED_BUFFER: u32 = 1 << 0;
    /// Configuration Change Notification (also: the device needs a reset).
    pub const CONFIG_CHANGE: u32 = 1 << 1;
}

/// What a virtio device adds to the transport: its identity, features, configuration space
/// and the work its queues carry.
pub trait Device {
    /// `DeviceID` (§5).
    const DEVICE_ID: u32;
    /// How many queues it has, at most [`MAX_QUEUES`]; each offers [`QUEUE_SIZE_MAX`].
    const QUEUES: u16;

    /// Its feature bits, within [`features::DEVICE_SPECIFIC`] (the transport adds
    /// `VERSION_1` and `ACCESS_PLATFORM`).
    fn features(&self) -> u64;

    /// Fills `buf` from its configuration space at `offset`; bytes past the end read as 0.
    fn read_config(&self, offset: u64, buf: &mut [u8]);

    /// The driver reset the device: forget anything kept about the queues.
    fn reset(&mut self);

    /// The driver notified queue `queue` (below [`Device::QUEUES`]), which is ready and the
    /// device live: consume what the driver made available.
    ///
    /// # Errors
    ///
    /// What [`Virtqueue`] and its chains report; the transport then breaks the device.
    fn notified<M: GuestMemory>(&mut self, queue: u16, vq: &mut Virtqueue<'_, M>) -> Result<(), QueueError>;
}

/// Which drivers may use the device's memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaPolicy {
    /// A non-protected VM: the device reaches all the guest's RAM, and a driver need not
    /// accept `VIRTIO_F_ACCESS_PLATFORM`.
    Open,
    /// A protected VM: the device reaches only memory the guest shared, so a driver that does
    /// not accept `VIRTIO_F_ACCESS_PLATFORM` (and would hand the device private buffers) is
    /// refused `FEATURES_OK` (§6.1 lets the device fail then).
    Restricted,
}

/// What a call changed that the VMM acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the VMM drives the transport's SPI to `irq_level`"]
pub struct Outcome {
    /// The interrupt line after the call: high while `InterruptStatus` is not zero. The VMM
    /// drives the transport's SPI to it (level-sensitive).
    pub irq_level: bool,
    /// The error that broke the device in this call, if one did (for the VMM's debug log; the
    /// guest learns of it from `DEVICE_NEEDS_RESET`).
    pub failed: Option<Error>,
}

/// Counters for the VMM's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accesses that named no register, used a bad size or alignment, or that the state
    /// forbade (see the module documentation).
    pub unhandled_accesses: u64,
    /// `QueueNotify` writes naming a queue of the device.
    pub notifications: u64,
    /// Chains the device gave back through the used rings.
    pub used_buffers: u64,
}

/// One virtio-mmio transport and its device.
#[derive(Clone, Debug)]
pub struct VirtioMmio<D> {
    device: D,
    policy: DmaPolicy,
    status: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// The driver's features, bits 0–63.
    driver_features: u64,
    /// The driver set a bit above 63, which nothing offers.
    driver_features_beyond: bool,
    queue_sel: u32,
    queues: [SplitQueue; MAX_QUEUES],
    interrupt_status: u32,
    /// The first error since reset.
    failure: Option<Error>,
    stats: Stats,
}

impl<D: Device> VirtioMmio<D> {
    /// A transport at reset in front of `device`.
    pub fn new(device: D, policy: DmaPolicy) -> Self {
        const { assert!(D::QUEUES as usize <= MAX_QUEUES, "a device has at most MAX_QUEUES queues") };
        let queues = core::array::from_fn(|i| SplitQueue::new(if i < usize::from(D::QUEUES) { QUEUE_SIZE_MAX } else { 0 }));
        Self {
            device,
            policy,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            failure: None,
            stats: Stats::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to reach its backend (the console's output, the disk).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `Status`.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The first error since the last reset: why `DEVICE_NEEDS_RESET` is set.
    pub fn failure(&self) -> Option<Error> {
        self.failure
    }

    /// The interrupt line: high while `InterruptStatus` is not zero.
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// The features offered.
    pub fn device_features(&self) -> u64 {
        self.device.features() & features::DEVICE_SPECIFIC | features::VERSION_1 | features::ACCESS_PLATFORM
    }

    /// The features the driver accepted (meaningful once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// A guest read of `size` bytes at `offset` in the frame.
    pub fn read(&mut self, offset: u64, size: u32) -> u64 {
        match self.read_register(offset, size) {
            Some(v) => v,
            None => {
                self.stats.unhandled_accesses += 1;
                0
            }
        }
    }

    /// A guest write of `value` (`size` bytes) at `offset` in the frame; `mem` is the guest's
    /// memory, for the queue work a notification, or the `Status` write that makes the device
    /// live, starts.
    pub fn write<M: GuestMemory>(&mut self, mem: &M, offset: u64, size: u32, value: u64) -> Outcome {
        let mut failed = None;
        if !self.write_register(mem, offset, size, value, &mut failed) {
            self.stats.unhandled_accesses += 1;
        }
        self.outcome(failed)
    }

    fn outcome(&self, failed: Option<Error>) -> Outcome {
        Outcome { irq_level: self.irq_level(), failed }
    }

    fn selected_queue(&mut self) -> Option<&mut SplitQueue> {
        let q = self.queues.get_mut(self.queue_sel as usize)?;
        (q.max_size() > 0).then_some(q)
    }

    fn read_register(&mut self, offset: u64, size: u32) -> Option<u64> {
        if offset >= reg::CONFIG {
            if !matches!(size, 1 | 2 | 4) || !offset.is_multiple_of(u64::from(size)) || offset >= FRAME_SIZE {
                return None;
            }
            let mut buf = [0u8; 4];
            let buf = &mut buf[..size as usize];
            self.device.read_config(offset - reg::CONFIG, buf);
            return Some(buf.iter().rev().fold(0, |v, b| v << 8 | u64::from(*b)));
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return None;
        }
        let value = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => D::DEVICE_ID,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => u32::from(self.status),
            // No shared memory regions: length and base -1 (§4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => 0,
            _ => return None,
        };
        Some(u64::from(value))
    }

    /// Performs a write; `false` if it is one the module documentation lists as unhandled.
    fn write_register<M: GuestMemory>(&mut self, mem: &M, offset: u64, size: u32, value: u64, failed: &mut Option<Error>) -> bool {
        if offset >= reg::CONFIG || size != 4 || !offset.is_multiple_of(4) {
            return false;
        }
        let value = value as u32;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    return false;
                }
                match self.driver_features_sel {
                    0 => self.driver_features = self.driver_features & !0xFFFF_FFFF | u64::from(value),
                    1 => self.driver_features = self.driver_features & 0xFFFF_FFFF | u64::from(value) << 32,
                    _ => self.driver_features_beyond |= value != 0,
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => match self.selected_queue() {
                Some(q) if !q.ready() => q.size = value,
                _ => return false,
            },
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                let Some(q) = self.selected_queue().filter(|q| !q.ready()) else { return false };
                let field = match offset & !0xF {
                    reg::QUEUE_DESC_LOW => &mut q.desc,
                    reg::QUEUE_DRIVER_LOW => &mut q.driver,
                    _ => &mut q.device,
                };
                *field =
                    if offset & 4 == 0 { *field & !0xFFFF_FFFF | u64::from(value) } else { *field & 0xFFFF_FFFF | u64::from(value) << 32 };
            }
            reg::QUEUE_READY => {
                let queue = self.queue_sel as u16;
                let Some(q) = self.selected_queue() else { return false };
                match value {
                    0 => q.disable(),
                    1 => {
                        if let Err(e) = q.enable(queue) {
                            self.fail(e, failed);
                        }
                    }
                    _ => return false,
                }
            }
            reg::QUEUE_NOTIFY => {
                let Ok(queue) = u16::try_from(value) else { return false };
                if queue >= D::QUEUES {
                    return false;
                }
                self.stats.notifications += 1;
                self.run(mem, queue, failed, |dev, vq| dev.notified(queue, vq));
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(mem, value, failed),
            // Selects a shared memory region; there is none to select.
            reg::SHM_SEL => {}
            _ => return false,
        }
        true
    }

    fn write_status<M: GuestMemory>(&mut self, mem: &M, value: u32, failed: &mut Option<Error>) {
        if value == 0 {
            self.reset();
            return;
        }
        let was_live = self.live();
        let mut added = value as u8 & !status::DEVICE_NEEDS_RESET & !self.status;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            added &= !status::FEATURES_OK;
        }
        self.status |= added;
        if added & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET != 0 {
            self.interrupt_status |= interrupt::CONFIG_CHANGE;
        }
        if !was_live && self.live() {
            // Serve notifications that came before the device was live.
            for queue in 0..D::QUEUES {
                self.run(mem, queue, failed, |dev, vq| dev.notified(queue, vq));
            }
        }
    }

    /// Whether the driver's features let the device set `FEATURES_OK`.
    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        let required = match self.policy {
            DmaPolicy::Open => features::VERSION_1,
            DmaPolicy::Restricted => features::VERSION_1 | features::ACCESS_PLATFORM,
        };
        !self.driver_features_beyond && f & !self.device_features() == 0 && f & required == required
    }

    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = SplitQueue::new(q.max_size());
        }
        self.interrupt_status = 0;
        self.failure = None;
        self.device.reset();
    }

    /// Whether the device may touch its queues (see "Live" in the module documentation).
    fn live(&self) -> bool {
        let s = self.status;
        s & (status::FEATURES_OK | status::DRIVER_OK) == status::FEATURES_OK | status::DRIVER_OK
            && s & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
    }

    /// Breaks the device (§2.1.2).
    fn fail(&mut self, e: Error, failed: &mut Option<Error>) {
        self.failure.get_or_insert(e);
        failed.get_or_insert(e);
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_status |= interrupt::CONFIG_CHANGE;
        }
    }

    /// Runs `work` over queue `queue` if the device is live and the queue ready: raises the
    /// used buffer interrupt if the driver wants it, or breaks the device on an error.
    /// Returns what `work` returned, `None` if it did not run or failed.
    pub(super) fn run<M: GuestMemory, R>(
        &mut self,
        mem: &M,
        queue: u16,
        failed: &mut Option<Error>,
        work: impl FnOnce(&mut D, &mut Virtqueue<'_, M>) -> Result<R, QueueError>,
    ) -> Option<R> {
        if !self.live() {
            return None;
        }
        let mut vq = self.queues.get_mut(usize::from(queue))?.view(mem)?;
        let result = work(&mut self.device, &mut vq).and_then(|r| vq.finish().map(|notify| (r, notify)));
        self.stats.used_buffers += u64::from(vq.used());
        match result {
            Ok((r, notify)) => {
                if notify {
                    self.interrupt_status |= interrupt::USED_BUFFER;
                }
                Some(r)
            }
            Err(error) => {
                self.fail(Error::Queue { queue, error }, failed);
                None
            }
        }
    }

    /// Runs `work` over queue `queue` for the VMM (input, say): as [`Self::run`], with the
    /// outcome.
    pub(super) fn run_for_host<M: GuestMemory, R>(
        &mut self,
        mem: &M,
        queue: u16,
        work: impl FnOnce(&mut D, &mut Virtqueue<'_, M>) -> Result<R, QueueError>,
    ) -> (Option<R>, Outcome) {
        let mut failed = None;
        let r = self.run(mem, queue, &mut failed, work);
        (r, self.outcome(failed))
    }
}

#[cfg(test)]
mod tests;
