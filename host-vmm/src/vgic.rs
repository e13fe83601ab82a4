//! A guest's GICv3 distributor and redistributors: the register model
//! ([`host_vdev::vgic`], host-tested) behind the guest's MMIO exits, and the path from the model
//! to EL2's list registers.
//!
//! Place in the flow (ARCHITECTURE.md, *Interrupt flow*): a device line, a timer deadline or a
//! guest SGI makes an interrupt pending in the model; before each `VCPU_RUN` the VMM asks the
//! model for what the vCPU may take, highest priority first, and queues each with
//! `VCPU_SET_IRQ` (EL2 validates it and writes the list register); the guest acknowledges and
//! deactivates it in the list register, without an exit; EL2 reports the deactivation in the
//! next exit record (`FLAG_EOI`, then `VCPU_IRQ_STATE`), and the model samples a level
//! interrupt's line again. The VMM asks to hear of every deactivation (`EOI_NOTIFY`), edge or
//! level, so it knows when a vINTID may be queued again.

use crate::bus::{Device, Wake};
use core::ops::Range;
use host_kernel::hyp::client::VmHandle;
use host_vdev::vgic::Vgic;
use shared_abi::msg::irq;
use shared_abi::HypError;

/// The distributor's frame (IPA).
pub const GICD: u64 = host_vdev::vm_platform::GICD;
/// Its size.
pub const GICD_SIZE: u64 = 0x1_0000;
/// The redistributors (IPA): one 128 KiB frame per vCPU.
pub const GICR: u64 = host_vdev::vm_platform::GICR;
/// One redistributor's frames (`RD_base`, `SGI_base`).
pub const GICR_STRIDE: u64 = 0x2_0000;

fn bits(w: host_vdev::vgic::Wake) -> Wake {
    w.bits() as Wake
}

/// One VM's distributor model.
pub struct VirtualGic {
    model: host_kernel::sync::Mutex<Vgic>,
    /// The distributor's frame and the vCPUs' redistributors.
    ranges: [Range<u64>; 2],
    /// Guest writes to the distributor or redistributors so far: what EL2 was told of the
    /// configuration (`VCPU_LINK_*`) may be stale only once this has moved.
    writes: core::sync::atomic::AtomicU64,
}

impl VirtualGic {
    /// The distributor of a VM with `nr_vcpus` vCPUs, at reset.
    pub fn new(nr_vcpus: usize) -> Result<Self, host_vdev::vgic::Error> {
        let ranges = [GICD..GICD + GICD_SIZE, GICR..GICR + GICR_STRIDE * nr_vcpus as u64];
        Ok(Self { model: host_kernel::sync::Mutex::new(Vgic::new(nr_vcpus)?), ranges, writes: core::sync::atomic::AtomicU64::new(0) })
    }

    /// A device's interrupt line (a PPI of `vcpu`, or an SPI) is now `high`.
    pub fn set_level(&self, vcpu: usize, intid: u32, high: bool) -> Wake {
        // The VMM's own lines only (timers, UART): an error would be a VMM bug, and the line
        // simply stays as it was.
        self.model.lock().set_level(vcpu, intid, high).map_or(0, bits)
    }

    /// vCPU sent SGI `intid` to the vCPUs in `targets` (EL2 decoded `ICC_SGI1R_EL1`).
    pub fn send_sgi(&self, targets: u8, intid: u8) -> Wake {
        // EL2 decoded the targets from the VM's own vCPUs; refused otherwise.
        self.model.lock().send_sgi(targets, intid as u32).map_or(0, bits)
    }

    /// The link configuration (priority and group, [`irq::GROUP1`]) for PPI `intid` of `vcpu`
    /// while the guest has it enabled ([`host_vdev::vgic::Vgic::link_config`]).
    pub fn link_config(&self, vcpu: usize, intid: u32) -> Option<(u8, bool)> {
        self.model.lock().link_config(vcpu, intid)
    }

    /// The SGI configuration of `vcpu` for `VCPU_LINK_SGIS`
    /// ([`host_vdev::vgic::Vgic::sgi_link_config`]).
    pub fn sgi_link_config(&self, vcpu: usize) -> Option<(u32, u128)> {
        self.model.lock().sgi_link_config(vcpu)
    }

    /// How many guest writes the model has taken (a configuration change is one of them).
    pub fn writes(&self) -> u64 {
        self.writes.load(core::sync::atomic::Ordering::SeqCst)
    }

    /// PPI `intid` of `vcpu` is delivered by EL2 (`linked`), or by the model again.
    pub fn set_linked(&self, vcpu: usize, intid: u32, linked: bool) {
        // The VMM's own timer PPI of one of the VM's vCPUs: cannot fail.
        let _ = self.model.lock().set_linked(vcpu, intid, linked);
    }

    /// Whether `vcpu` has an interrupt the model has not handed to EL2 yet that it may take.
    pub fn has_deliverable(&self, vcpu: usize) -> bool {
        self.model.lock().has_deliverable(vcpu)
    }

    /// Queues what `vcpu` may take into its list registers, until the model has nothing
    /// (`Ok(true)`) or EL2 has no free list register (`Ok(false)`: the rest waits for a later
    /// run). Reports each vINTID queued to `queued`.
    pub fn flush(&self, handle: u64, vcpu: usize, mut queued: impl FnMut(u32)) -> Result<bool, HypError> {
        let mut m = self.model.lock();
        while let Some(q) = m.next_to_queue(vcpu) {
            let intid = q.intid();
            // The list register holds 5 priority bits on QEMU (EL2 refuses lower ones): the
            // guest's priority, rounded as a GIC with 5 bits would read it back.
            let config = irq::config(q.priority() & 0xF8, q.group1(), irq::PENDING, true);
            match VmHandle(handle).vcpu(vcpu as u64).set_irq(intid, config) {
                Ok(_) => {
                    q.accept();
                    queued(intid);
                }
                // No free list register, or the vINTID is still in one: next run.
                Err(HypError::NoCapacity | HypError::Busy) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Collects the deactivations EL2 recorded for `vcpu` (after an exit with `FLAG_EOI`);
    /// calls `done` for each vINTID.
    pub fn collect_eois(&self, handle: u64, vcpu: usize, mut done: impl FnMut(u32)) -> Result<Wake, HypError> {
        let s = VmHandle(handle).vcpu(vcpu as u64).irq_state()?;
        let mut m = self.model.lock();
        let mut wake = 0;
        for (w, word) in s.eoi.iter().enumerate() {
            let mut b = *word;
            while b != 0 {
                let intid = (w * 64) as u32 + b.trailing_zeros();
                b &= b - 1;
                wake |= m.deactivated(vcpu, intid).map_or(0, bits);
                done(intid);
            }
        }
        Ok(wake)
    }
}

/// The distributor and redistributors on the VM's bus.
impl Device for &VirtualGic {
    fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> (u64, Wake) {
        let mut m = self.model.lock();
        if write.is_some() {
            self.writes.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        }
        if self.ranges[0].contains(&ipa) {
            let off = ipa - GICD;
            match write {
                Some(v) => (0, bits(m.gicd_write(off, size, v))),
                None => (m.gicd_read(off, size), 0),
            }
        } else {
            let off = ipa - GICR;
            match write {
                Some(v) => (0, bits(m.gicr_write(off, size, v))),
                None => (m.gicr_read(off, size), 0),
            }
        }
    }
}
