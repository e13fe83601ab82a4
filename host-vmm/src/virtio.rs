//! A Linux VM's virtio devices: the virtio-mmio transports ([`host_vdev::virtio`], host-tested)
//! behind the guest's MMIO exits, the guest memory they reach, and their interrupt lines.
//!
//! Place in the flow: an MMIO exit in a transport's frame → [`Transport::mmio`] under the
//! transport's lock → the model, which on a `QueueNotify` walks the queue through
//! [`VmMemory`] → the console's output ([`HvcLine`], lines on the host's console prefixed
//! `hvc0: `) or the disk ([`host_vdev::virtio::blk::RamDisk`] over the image staged in host
//! RAM); the transport's line level is driven into the distributor model only when it changed.
//!
//! # Guest memory
//!
//! [`VmMemory`] checks each access with [`GuestRam::check`] (a non-protected VM: any of its
//! RAM; a protected VM: only pages in its [`Shared`] bitmap, kept from its `MEM_SHARE` and
//! `MEM_UNSHARE` exits), then copies with [`host_kernel::arch::guarded_copy`]: a vCPU of a
//! protected VM can unshare a page (EL2 unmaps it from the host first) while the device work
//! of another vCPU copies from it, and the host's resulting abort must fail the access, not
//! the host.
//!
//! Lock order: a transport's lock, then the distributor model's ([`VirtualGic::set_level`]).

use crate::bus::Wake;
use crate::vgic::VirtualGic;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};
use host_vdev::fdt::VirtioMmioNode;
use host_vdev::virtio::blk::{Blk, RamDisk};
use host_vdev::virtio::console::{Console, ConsoleOutput};
use host_vdev::virtio::guest_ram::{GuestRam, SharedPages};
use host_vdev::virtio::mmio::{Device as VirtioDevice, VirtioMmio, FRAME_SIZE};
use host_vdev::virtio::{Gpa, GuestMemory, MemError};

/// Words of the shared-page bitmap: one bit per page of the largest Linux VM (1536 MiB, the
/// most `cargo xtask run --mem` and the VMM's boot arguments allow).
pub const SHARED_WORDS: usize = (1536 << 20) / 4096 / 64;

/// A protected VM's shared pages.
pub type Shared = SharedPages<SHARED_WORDS>;

/// A VM's RAM as its devices reach it: the host's backing, the guest's view.
pub struct VmMemory<'a> {
    /// Host physical address of the RAM's backing (its IPA base is [`crate::GUEST_RAM`]).
    pub backing: u64,
    /// What the devices may touch.
    pub ram: GuestRam<'a, SHARED_WORDS>,
}

impl VmMemory<'_> {
    fn copy(&self, gpa: Gpa, len: usize, copy: impl FnOnce(u64) -> Result<(), host_kernel::arch::Aborted>) -> Result<(), MemError> {
        let offset = self.ram.check(gpa, len)?;
        // An abort: the page went away between the check and the copy (a protected VM's
        // unshare on another vCPU). The guest's own race: the device sees a refused access.
        copy(self.backing + offset).map_err(|_| MemError::NotShared)
    }
}

impl GuestMemory for VmMemory<'_> {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        let (dst, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `src` is `len` bytes of the VM's backing, checked inside its RAM (and, for a
        // protected VM, shared): host RAM or, if the guest took it back meanwhile, an abort
        // that the copy survives; `dst` is `buf`, which nothing else references meanwhile.
        self.copy(gpa, len, |src| unsafe { host_kernel::arch::guarded_copy(dst, src as *const u8, len) })
    }

    fn write(&self, gpa: Gpa, data: &[u8]) -> Result<(), MemError> {
        // SAFETY: as for `read`, the other way round; the guest's memory holds no Rust value.
        self.copy(gpa, data.len(), |dst| unsafe { host_kernel::arch::guarded_copy(dst as *mut u8, data.as_ptr(), data.len()) })
    }

    fn fence(&self) {
        host_kernel::arch::dmb_ish();
    }
}

const LINE: usize = 256;

/// The virtio-console's output. As a side channel (the VM's console is its PL011): whole
/// lines on the host's console, `hvc0: ` first (and the VM's `[vmN] ` with several VMs). As
/// the VM's console (`console=hvc0`, one VM): the text itself, as the PL011's is printed, a
/// partial line (a shell prompt) when the vCPU waits.
pub struct HvcLine {
    line: [u8; LINE],
    len: usize,
    prefix: Option<usize>,
    /// The VM's console, printed as it comes.
    raw: bool,
}

impl HvcLine {
    /// An empty line; `prefix`: lines carry `[vmN] `; `console`: `hvc0` is the VM's console.
    pub const fn new(prefix: Option<usize>, console: bool) -> Self {
        Self { line: [0; LINE], len: 0, prefix, raw: console && prefix.is_none() }
    }

    fn print(&mut self, newline: bool) {
        let s = core::str::from_utf8(&self.line[..self.len]).unwrap_or("<bad utf-8>");
        match self.prefix {
            _ if self.raw => {
                let mut buf = [0u8; LINE + 1];
                buf[..self.len].copy_from_slice(&self.line[..self.len]);
                buf[self.len] = b'\n';
                crate::console::write_bytes(&buf[..self.len + usize::from(newline)]);
            }
            Some(n) => crate::println!("[vm{n}] hvc0: {s}"),
            None => crate::println!("hvc0: {s}"),
        }
        self.len = 0;
    }

    /// Prints the unfinished line when the output is the VM's console (a prompt: the vCPU
    /// waits); a side channel's lines are printed only whole.
    pub fn flush(&mut self) {
        if self.raw && self.len > 0 {
            self.print(false);
        }
    }

    /// Prints the unfinished line, if any (the VM ended).
    pub fn flush_final(&mut self) {
        if self.len > 0 {
            self.print(false);
        }
    }
}

impl ConsoleOutput for HvcLine {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.print(true);
            } else if b != b'\r' {
                self.line[self.len] = b;
                self.len += 1;
                if self.len == LINE {
                    self.print(!self.raw);
                }
            }
        }
    }
}

/// The console device of a Linux VM.
pub type ConsoleDev = VirtioMmio<Console<HvcLine>>;
/// The block device of a Linux VM given a disk.
pub type BlkDev = VirtioMmio<Blk<RamDisk<'static>>>;
/// The console's transport on the bus.
pub type ConsolePort = Transport<Console<HvcLine>>;
/// The block device's transport on the bus.
pub type BlkPort = Transport<Blk<RamDisk<'static>>>;

/// One transport on a VM's bus: the model, its frame and SPI, and its line as last driven.
pub struct Transport<D> {
    model: host_kernel::sync::Mutex<VirtioMmio<D>>,
    node: VirtioMmioNode,
    /// The interrupt line as last driven (changed only under `model`'s lock).
    level: AtomicBool,
}

impl<D: VirtioDevice> Transport<D> {
    /// `model` at `node`'s frame and SPI.
    pub fn new(model: VirtioMmio<D>, node: VirtioMmioNode) -> Self {
        Self { model: host_kernel::sync::Mutex::new(model), node, level: AtomicBool::new(false) }
    }

    /// The frame's IPA range.
    pub fn range(&self) -> Range<u64> {
        self.node.base..self.node.base + FRAME_SIZE
    }

    /// A guest access at `ipa` (in [`Self::range`]) by vCPU `vcpu`: the value read, and the
    /// vCPUs whose deliverable interrupts grew if the line changed.
    pub fn mmio(&self, mem: &VmMemory<'_>, gic: &VirtualGic, vcpu: usize, ipa: u64, size: u32, write: Option<u64>) -> (u64, Wake) {
        let off = ipa - self.node.base;
        let mut m = self.model.lock();
        let value = match write {
            // A device the guest broke needs its reset (`DEVICE_NEEDS_RESET`): the guest's
            // doing, not logged (STYLE habit 15).
            Some(v) => {
                let _ = m.write(mem, off, size, v);
                0
            }
            None => m.read(off, size),
        };
        (value, self.drive(&m, gic, vcpu))
    }

    /// Drives the interrupt line into the distributor model if it changed (under the model's
    /// lock, so two CPUs cannot drive it out of order).
    fn drive(&self, m: &VirtioMmio<D>, gic: &VirtualGic, vcpu: usize) -> Wake {
        let level = m.irq_level();
        if self.level.swap(level, Ordering::Relaxed) != level {
            gic.set_level(vcpu, 32 + self.node.spi, level)
        } else {
            0
        }
    }

    /// The model, for its backend (the console's unfinished line) and counters.
    pub fn lock(&self) -> host_kernel::sync::MutexGuard<'_, VirtioMmio<D>> {
        self.model.lock()
    }
}

impl Transport<Console<HvcLine>> {
    /// Console input for the guest (`hvc0` is its console): what its receive buffers took of
    /// `bytes`, and the vCPUs whose deliverable interrupts grew.
    pub fn receive(&self, mem: &VmMemory<'_>, gic: &VirtualGic, bytes: &[u8]) -> (usize, Wake) {
        let mut m = self.model.lock();
        // A broken device (a hostile chain) takes nothing more until the guest resets it.
        let (taken, _) = m.receive(mem, bytes);
        (taken, self.drive(&m, gic, 0))
    }
}
