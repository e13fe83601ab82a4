//! The virtual GICv3 CPU interface, which moves with the vCPU on CPUs that have the GICv3
//! system-register interface. What moves when is decided in plain Rust
//! ([`vgic::VgicCpu::load`], [`vgic::VgicCpu::put`]); this module gives it the `ICH_*_EL2`
//! registers ([`vgic::IchRegs`]).

use super::{features, ControlFeatures};
use crate::arch::regs::{cpu_index, dsb_ishst, dsb_sy, isb};
use crate::arch::sysreg::{read_ich_lr, write_ich_lr, ICC_HPPIR1_EL1, ICC_SGI1R_EL1};
use crate::hw::GuestIrq;
use shared_abi::msg::irq::DOORBELL_SGI;
use crate::arch::GuardedMmio;
use crate::host::gicr::{GICR_ICACTIVER0, GICR_ICPENDR0, GICR_ISACTIVER0};
use crate::host::guarded::GuardedIo;
use crate::mem::addr::PhysAddr;
use aarch64_cpu::registers::*;
use crate::guest::vcpu::VcpuCtx;
use crate::guest::vgic::{self, IchRegs, VtimerIrq};
use crate::platform::MAX_CPUS;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Per CPU: how many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` it has ([`vgic::apr_count`] of its
/// `ICH_VTR_EL2`), read once by [`clear`] at boot.
static APR_COUNT: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// This CPU's `ICH_*_EL2` registers, with its number of active-priority registers (1, 2 or 4:
/// [`vgic::apr_count`]; the others do not exist on this CPU and are never accessed).
struct Ich {
    apr: usize,
}

impl IchRegs for Ich {
    fn apr_count(&self) -> usize {
        self.apr
    }

    fn vmcr(&self) -> u64 {
        ICH_VMCR_EL2.get()
    }

    fn set_vmcr(&mut self, v: u64) {
        ICH_VMCR_EL2.set(v);
    }

    fn set_hcr(&mut self, v: u64) {
        ICH_HCR_EL2.set(v);
    }

    fn read_aprs(&self, ap0: &mut [u32; 4], ap1: &mut [u32; 4]) {
        ap0[0] = ICH_AP0R0_EL2.get() as u32;
        ap1[0] = ICH_AP1R0_EL2.get() as u32;
        if self.apr >= 2 {
            ap0[1] = ICH_AP0R1_EL2.get() as u32;
            ap1[1] = ICH_AP1R1_EL2.get() as u32;
        }
        if self.apr >= 4 {
            ap0[2] = ICH_AP0R2_EL2.get() as u32;
            ap1[2] = ICH_AP1R2_EL2.get() as u32;
            ap0[3] = ICH_AP0R3_EL2.get() as u32;
            ap1[3] = ICH_AP1R3_EL2.get() as u32;
        }
    }

    fn write_aprs(&mut self, ap0: &[u32; 4], ap1: &[u32; 4]) {
        ICH_AP0R0_EL2.set(ap0[0] as u64);
        ICH_AP1R0_EL2.set(ap1[0] as u64);
        if self.apr >= 2 {
            ICH_AP0R1_EL2.set(ap0[1] as u64);
            ICH_AP1R1_EL2.set(ap1[1] as u64);
        }
        if self.apr >= 4 {
            ICH_AP0R2_EL2.set(ap0[2] as u64);
            ICH_AP1R2_EL2.set(ap1[2] as u64);
            ICH_AP0R3_EL2.set(ap0[3] as u64);
            ICH_AP1R3_EL2.set(ap1[3] as u64);
        }
    }

    fn lr(&self, n: usize) -> u64 {
        read_ich_lr(n)
    }

    fn set_lr(&mut self, n: usize, v: u64) {
        write_ich_lr(n, v);
    }
}

/// This CPU's `ICH_VTR_EL2`, if it has the GICv3 system-register interface (reported to
/// [`crate::hyp::Hyp::cpu_entered_el2`] when the CPU enters EL2).
pub fn ich_vtr() -> Option<u64> {
    features().gicv3.then(|| ICH_VTR_EL2.get())
}

/// Boot, on every CPU with GICv3: [`vgic::reset_cpu_interface`].
pub fn clear() {
    if !features().gicv3 {
        return;
    }
    // ICC_SRE_EL2.SRE (written by the boot controls just before) enables EL2's accesses to
    // the ICH_* registers: in effect before the first of them.
    isb();
    let vtr = ICH_VTR_EL2.get();
    let apr = vgic::apr_count(vtr);
    APR_COUNT[cpu_index() % MAX_CPUS].store(apr as u8, Ordering::Relaxed);
    vgic::reset_cpu_interface(&mut Ich { apr }, vtr);
}

/// Per CPU: the physical address of its own redistributor's `SGI_base` frame, whose first page
/// boot mapped Device in EL2's stage 1 ([`set_redistributor`]); 0 if not found. The linked
/// virtual timer's active state and the doorbell's pending state live there; EL2 links
/// nothing unless every CPU has one (`Hyp::cpu_redistributor`).
static SGI_BASE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Boot, on every CPU: this CPU's redistributor `SGI_base` frame
/// ([`crate::host::gicr::sgi_base_of`]), if the GIC has one for it.
pub fn set_redistributor(sgi_base: Option<PhysAddr>) {
    SGI_BASE[cpu_index() % MAX_CPUS].store(sgi_base.map_or(0, |p| p.0), Ordering::Relaxed);
}

/// Sets (`active`) or clears the active state of this CPU's physical PPI 27, the virtual
/// timer's, in its redistributor. `false` if this CPU has no known redistributor.
fn set_vtimer_active(active: bool) -> bool {
    redistributor_write(if active { GICR_ISACTIVER0 } else { GICR_ICACTIVER0 }, 1 << vgic::VTIMER_PPI)
}

/// Writes `value` to register `reg` of this CPU's redistributor `SGI_base` frame: one of the
/// write-one set/clear registers of its SGIs and PPIs (so the host's own accesses to the frame
/// race with nothing). `false` if this CPU has no known redistributor.
fn redistributor_write(reg: u64, value: u64) -> bool {
    let base = SGI_BASE[cpu_index() % MAX_CPUS].load(Ordering::Relaxed);
    if base == 0 {
        return false;
    }
    // SAFETY: `base` is this CPU's redistributor's SGI_base frame, whose first page boot mapped
    // Device RW in EL2's stage 1 (a GIC register page, no memory EL2 relies on); the register
    // is 32-bit and aligned.
    unsafe { GuardedMmio.write(PhysAddr(base + reg), 4, value) };
    // The write completes before EL2 goes on, so the redistributor has it before the ERET
    // into the guest or, after put, the host. The GIC may still be updating then (there is no
    // RWP for these registers): the interrupt may signal once more (an extra trap), or the host
    // take one spurious PPI 27, both benign; the barrier only keeps that window small.
    dsb_sy();
    true
}

/// What `put` needs to know of the load.
pub(super) struct Saved {
    /// The CPU has the interface, with this many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` (0: no
    /// GICv3, nothing moved).
    apr: u8,
    /// What [`vgic::VgicCpu::load`] returned: the vCPU's interface was idle at load (until the
    /// linked timer enables it).
    idle: bool,
    /// EL2 made this CPU's physical PPI 27 active for the run: `put` clears it.
    vtimer_active: bool,
}

/// Load: [`vgic::VgicCpu::load`], and the physical PPI 27 active if a hardware-linked list
/// register comes with the vCPU ([`vgic::VgicCpu::hw_live`]). No ISB: the ERET synchronises.
pub(super) fn load_guest(f: &ControlFeatures, ctx: &VcpuCtx) -> Saved {
    if !f.gicv3 {
        return Saved { apr: 0, idle: true, vtimer_active: false };
    }
    let apr = APR_COUNT[cpu_index() % MAX_CPUS].load(Ordering::Relaxed);
    let idle = ctx.vgic.load(&mut Ich { apr: apr as usize });
    let vtimer_active = ctx.vgic.hw_live() && set_vtimer_active(true);
    Saved { apr, idle, vtimer_active }
}

/// While loaded, a physical IRQ ended the run ([`crate::hw::WorldSwitch::guest_irq`]): by this
/// CPU's `ICC_HPPIR1_EL1`, EL2's doorbell (made not pending: `GICR_ICPENDR0`), or
/// [`vgic::VgicCpu::take_vtimer`] with the guest's `CNTV_CTL_EL0` (live: the virtual timer is
/// EL1 state), then the physical PPI 27 active. No ISB: the ERET synchronises the list
/// registers and `ICH_HCR_EL2`.
pub(super) fn guest_irq(ctx: &mut VcpuCtx, saved: &mut Saved) -> GuestIrq {
    if saved.apr == 0 || SGI_BASE[cpu_index() % MAX_CPUS].load(Ordering::Relaxed) == 0 {
        return GuestIrq::Host;
    }
    let hppir = ICC_HPPIR1_EL1.get() & 0xFF_FFFF;
    if hppir == DOORBELL_SGI as u64 {
        redistributor_write(GICR_ICPENDR0, 1 << DOORBELL_SGI);
        return GuestIrq::Doorbell;
    }
    if ctx.vgic.vtimer == 0 {
        return GuestIrq::Host;
    }
    let ctl = CNTV_CTL_EL0.get();
    match ctx.vgic.take_vtimer(&mut Ich { apr: saved.apr as usize }, hppir, ctl, &mut saved.idle) {
        VtimerIrq::NotOurs => GuestIrq::Host,
        VtimerIrq::Queued(_) | VtimerIrq::AlreadyQueued | VtimerIrq::NoFreeLr => {
            saved.vtimer_active |= set_vtimer_active(true);
            GuestIrq::Timer
        }
    }
}

/// While loaded: [`vgic::VgicCpu::queue_sgis_live`] on this CPU's interface.
pub(super) fn queue_sgis(ctx: &mut VcpuCtx, saved: &mut Saved, bits: u16) -> u16 {
    if saved.apr == 0 {
        return bits;
    }
    ctx.vgic.queue_sgis_live(&mut Ich { apr: saved.apr as usize }, bits, &mut saved.idle)
}

/// Sends the doorbell SGI to the CPU with affinity `mpidr` (`ICC_SGI1R_EL1` at EL2: a Group 1
/// physical SGI; `RS` and `TargetList` from `Aff0`, `Aff1..3` as they are).
pub fn ring_doorbell(mpidr: u64) {
    let aff0 = mpidr & 0xFF;
    let v = (mpidr >> 8 & 0xFF) << 16 | (mpidr >> 16 & 0xFF) << 32 | (mpidr >> 32 & 0xFF) << 48 | (aff0 >> 4) << 44 | (DOORBELL_SGI as u64) << 24 | 1 << (aff0 & 0xF);
    // The pending bit the target takes (an atomic in EL2's memory) is visible before the SGI
    // can reach it: the GIC's delivery is not a memory access, so only a barrier orders them.
    dsb_ishst();
    ICC_SGI1R_EL1.set(v);
    // The SGI is generated before EL2 goes on (a system-register write's effect).
    isb();
}

/// After put, once the ISB there made the host's `CNTV_CTL_EL0` (0) effective, so the timer's
/// output no longer asserts: the physical PPI 27 inactive again if EL2 activated it. A
/// hardware-linked list register still live stays in the context; the next load activates
/// the PPI again.
pub(super) fn put_vtimer(saved: &Saved) {
    if saved.vtimer_active {
        set_vtimer_active(false);
    }
}

/// Put: [`vgic::VgicCpu::put`]. Its writes are in effect before EL2 continues: the ISB at the
/// end of put orders them.
pub(super) fn put(ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.apr == 0 {
        return;
    }
    ctx.vgic.put(&mut Ich { apr: saved.apr as usize }, saved.idle);
}
