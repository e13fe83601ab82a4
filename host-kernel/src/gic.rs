//! The host's interrupts: the physical GICv3 and each CPU's EL1 physical timer (CNTP).
//!
//! Place in the flow: the host owns the GIC (distributor and redistributors are host device
//! memory in its stage 2; the CPU interface is its `ICC_*_EL1` registers, which EL2 lets EL1
//! use through `ICC_SRE_EL2.Enable`) and its timer (`CNTHCTL_EL2.EL1PCEN` while it runs).
//! EL2 needs neither: it only sends a physical interrupt that arrives while a guest runs back
//! to the host as the `IRQ` exit of `VCPU_RUN` (guests run with `HCR_EL2.IMO/FMO`, so the
//! guest's own `PSTATE.I` cannot hold it off). One thing EL2 does touch: the first page of
//! each redistributor (`GICR_CTLR`, `GICR_WAKER`, ...) is not in the host's stage 2; EL2
//! performs the host's loads and stores there and keeps `GICR_CTLR.EnableLPIs` at 0, so the
//! GIC never reads or writes LPI tables (which would bypass stage 2). This driver uses plain
//! 32/64-bit `LDR`/`STR` there (`safe-mmio`), which EL2 can perform from the syndrome.
//!
//! **Polled, not vectored.** The host keeps `DAIF` masked, as before: it is a cooperative,
//! single-threaded kernel per CPU, with nothing an interrupt handler could usefully preempt.
//! An interrupt that arrives while a guest runs ends the `VCPU_RUN` (exit `IRQ`), and the
//! VMM then calls [`handle_pending`], which acknowledges everything pending (`ICC_IAR1_EL1`),
//! acts on it and ends it (`ICC_EOIR1_EL1`; `ICC_CTLR_EL1.EOImode` = 0, so that also
//! deactivates). One that arrives while the host itself runs stays pending: the next guest
//! entry exits at once and the same path handles it. No exception vector changes, no
//! re-entrancy, and the order of host work stays deterministic.
//!
//! Two interrupts are used:
//! - the tick, PPI 30 (INTID 30, the EL1 physical timer, level): re-armed `tick` later at
//!   every acknowledgement; it tells the scheduler to move on (a guest that never exits loses
//!   its CPU at the next tick);
//! - the kick, SGI [`KICK_SGI`] from another host CPU (`ICC_SGI1R_EL1`): "come back to the
//!   host now", when a VM powers off, resets or is destroyed while a sibling vCPU runs here.
//!
//! The driver is the `arm-gic` crate (README, "Dependencies"); the timer is three registers.

use crate::arch;
use crate::arch::counter_freq;
use crate::platform::Platform;
use crate::cpu::MAX_CPUS;
use arm_gic::gicv3::registers::{Gicd, GicrSgi};
use arm_gic::gicv3::{GicCpuInterface, GicV3, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, Trigger, UniqueMmioPointer};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The EL1 physical timer's PPI (INTID 30).
pub const TIMER_INTID: u32 = 30;
/// The virtual timer's PPI (INTID 27): asserted by a guest's `CNTV_*` while it runs.
pub const VTIMER_INTID: u32 = 27;
/// EL2's physical timer (INTID 26, `CNTHP`): EL2 sets it to a running guest's emulated EL1
/// physical timer's deadline, so the deadline ends the run.
pub const HYP_TIMER_INTID: u32 = 26;
/// The GIC maintenance interrupt (INTID 25): a guest deactivated an interrupt the host asked
/// to hear about (list register `EOI` bit).
pub const MAINTENANCE_INTID: u32 = 25;
/// The SGI one host CPU sends another to bring it back from a guest.
pub const KICK_SGI: u32 = 1;
/// EL2's doorbell for linked SGIs (`VCPU_LINK_SGIS`): enabled on every CPU for EL2, which
/// sends and consumes it while guests run; one that reaches the host means nothing to it.
pub const DOORBELL_SGI: u32 = shared_abi::msg::irq::DOORBELL_SGI;
/// The doorbell's priority: the least urgent of the host's interrupts (the others keep the
/// default from `configure_default_settings`), still above the priority mask (0xFF).
const DOORBELL_PRIORITY: u8 = 0xF0;
/// The default tick, in milliseconds of the system counter (`tick-ms=N`; 0: no tick).
pub const DEFAULT_TICK_MS: u64 = 10;

/// The GIC, once the boot CPU has found and initialised it.
static GIC: crate::sync::Mutex<Option<GicV3<'static>>> = crate::sync::Mutex::new(None);
/// The tick period in counter ticks (0: the tick is off).
static TICK: AtomicU64 = AtomicU64::new(0);
/// Each CPU's MPIDR affinity (Aff3..Aff0), the SGI target.
static MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// What each CPU has acknowledged, for the scheduler and the scenarios.
pub struct Counts {
    /// Ticks acknowledged.
    pub ticks: AtomicU64,
    /// Kicks acknowledged.
    pub kicks: AtomicU64,
    /// Interrupts that were neither (spurious or unknown; ended and ignored).
    pub other: AtomicU64,
}

/// Per-CPU [`Counts`].
pub static COUNTS: [Counts; MAX_CPUS] =
    [const { Counts { ticks: AtomicU64::new(0), kicks: AtomicU64::new(0), other: AtomicU64::new(0) } }; MAX_CPUS];

/// Set by a tick or a kick, cleared by [`take_preempt`]: the scheduler should move on.
static PREEMPT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Boot CPU: finds the GIC, configures the distributor (affinity routing, group 1) and this
/// CPU's redistributor and CPU interface, and starts the tick (`tick-ms=N`, default 10).
/// Without a GICv3 in the device tree the host runs without interrupts, as before.
pub fn init(plat: &Platform) {
    let Some((gicd, gicr)) = plat.gic else {
        crate::println!("host: no GICv3 in the device tree: no tick, no preemption");
        return;
    };
    for (i, m) in plat.cpus[..plat.nr_cpus].iter().enumerate() {
        MPIDR[i].store(*m, Ordering::Relaxed);
    }
    // SAFETY: the device tree names these as the GIC's distributor and redistributor frames;
    // they are device memory in the host's stage 2 (EL2 maps everything outside RAM as
    // Device), and this is the only driver instance: it lives in `GIC` for ever.
    let gic = unsafe {
        let d = UniqueMmioPointer::new(NonNull::new(gicd as *mut Gicd).unwrap_or_else(|| crate::fail::halt()));
        GicV3::new(d, NonNull::new(gicr as *mut GicrSgi).unwrap_or_else(|| crate::fail::halt()), plat.nr_cpus.max(1))
    };
    let Ok(mut gic) = gic else {
        crate::fail::fail(format_args!("GICv3 at {gicd:#x}/{gicr:#x}: the redistributors do not look like a GICv3"));
    };
    // Distributor: affinity routing, group 1 (non-secure; QEMU's GIC has one security state),
    // every SPI group 1 at one priority and disabled (the host uses none yet).
    gic.distributor().configure_default_settings();
    *GIC.lock() = Some(gic);
    let ms = plat.arg("tick-ms").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_TICK_MS);
    TICK.store(counter_freq() * ms / 1000, Ordering::SeqCst);
    init_cpu(0);
    crate::println!("host: GICv3 at {gicd:#x} (redistributors {gicr:#x}), tick {ms} ms");
}

/// Every CPU (the boot CPU from [`init`]): wakes this CPU's redistributor (`GICR_WAKER`),
/// configures its SGIs and PPIs, turns on the CPU interface (`ICC_SRE_EL1.SRE`,
/// `ICC_PMR_EL1` = 0xFF, `ICC_IGRPEN1_EL1`), enables the tick and the kick, and arms the tick.
pub fn init_cpu(cpu: usize) {
    let mut guard = GIC.lock();
    let Some(gic) = guard.as_mut() else { return };
    // ICC_SRE_EL1.SRE, GICR_WAKER.ProcessorSleep = 0 (waits for ChildrenAsleep to clear),
    // ICC_CTLR_EL1 = 0 (EOImode 0: EOIR also deactivates).
    gic.init_cpu(cpu);
    let ok = gic.redistributor(cpu).map(|mut r| r.configure_default_settings()).is_ok()
        && gic.set_trigger(IntId::ppi(TIMER_INTID - 16), Some(cpu), Trigger::Level).is_ok()
        && gic.enable_interrupt(IntId::ppi(TIMER_INTID - 16), Some(cpu), true).is_ok()
        && gic.enable_interrupt(IntId::sgi(KICK_SGI), Some(cpu), true).is_ok()
        // The doorbell below every other interrupt the host takes: a sibling's SGI storm that
        // keeps it pending never hides the tick or the kick from EL2's look at the CPU
        // interface (ICC_HPPIR1_EL1 reports the most urgent one).
        && gic.set_interrupt_priority(IntId::sgi(DOORBELL_SGI), Some(cpu), DOORBELL_PRIORITY).is_ok()
        && gic.enable_interrupt(IntId::sgi(DOORBELL_SGI), Some(cpu), true).is_ok()
        // A guest's virtual timer and the vGIC's maintenance interrupt only end a guest's
        // run (exit `IRQ`), so that the VMM looks at the timer and the deactivations at once.
        // The timers' PPIs (27, 26) are enabled per run (`set_timer_ppis`).
        && gic.set_trigger(IntId::ppi(VTIMER_INTID - 16), Some(cpu), Trigger::Level).is_ok()
        && gic.set_trigger(IntId::ppi(MAINTENANCE_INTID - 16), Some(cpu), Trigger::Level).is_ok()
        && gic.set_trigger(IntId::ppi(HYP_TIMER_INTID - 16), Some(cpu), Trigger::Level).is_ok()
        && gic.enable_interrupt(IntId::ppi(MAINTENANCE_INTID - 16), Some(cpu), true).is_ok();
    drop(guard);
    if !ok {
        crate::fail::fail(format_args!("cpu{cpu}: no GIC redistributor for this CPU"));
    }
    GicCpuInterface::set_priority_mask(0xFF);
    GicCpuInterface::enable_group1(true);
    arm_tick();
}

/// Each CPU's last setting of [`set_timer_ppis`] (a redistributor write is not free): bit 0
/// the virtual timer's PPI, bit 1 EL2's physical timer's.
static TIMER_PPIS_ON: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Enables or disables, on this CPU, INTID 27 (a running guest's virtual timer) and INTID 26
/// (EL2's physical timer, backing a running guest's emulated EL1 physical timer). The VMM
/// disables each while the guest's interrupt for that timer is queued or its level is already
/// high: the timer keeps running while the guest runs, and an expired one would otherwise end
/// every run at once, before the guest could handle it.
pub fn set_timer_ppis(vtimer: bool, hyp_timer: bool) {
    let cpu = crate::cpu::cpu_id();
    let want = vtimer as u64 | (hyp_timer as u64) << 1;
    let had = TIMER_PPIS_ON[cpu % MAX_CPUS].load(Ordering::Relaxed);
    if had == want {
        return;
    }
    let mut guard = GIC.lock();
    let Some(gic) = guard.as_mut() else { return };
    let mut now = had;
    for (bit, intid) in [(1, VTIMER_INTID), (2, HYP_TIMER_INTID)] {
        if (had ^ want) & bit != 0 && gic.enable_interrupt(IntId::ppi(intid - 16), Some(cpu), want & bit != 0).is_ok() {
            now ^= bit;
        }
    }
    TIMER_PPIS_ON[cpu % MAX_CPUS].store(now, Ordering::Relaxed);
}

/// `CNTPCT_EL0`: the system counter.
pub fn counter() -> u64 {
    arch::counter()
}

/// System-counter ticks per millisecond.
pub fn ticks_per_ms() -> u64 {
    counter_freq() / 1000
}

/// Brings this CPU's timer interrupt forward to `deadline` (system-counter ticks) if it would
/// come later: a blocked vCPU's deadline, or a guest's emulated physical timer. The interrupt
/// counts as a tick (the tick is re-armed when it is acknowledged).
pub fn arm_wakeup(deadline: u64) {
    let (cval, ctl) = arch::timer_cval_ctl();
    if ctl & 1 != 0 && cval <= deadline {
        return;
    }
    // An earlier interrupt is only an early tick.
    arch::timer_at(deadline);
}

/// Waits for an interrupt (a tick, a kick or a wake-up), with `DAIF` masked as always: `WFI`
/// returns when one is pending; the caller then handles it with [`handle_pending`].
pub fn wait_for_interrupt() {
    // The DSB in it makes this CPU's earlier stores (its idle mark) visible before it sleeps.
    arch::wait_for_interrupt();
}

/// Sets the tick period for the ticks armed from now on (each CPU's next acknowledgement),
/// unless the boot arguments chose one (`tick-ms=N`).
pub fn set_default_tick_ms(plat: &Platform, ms: u64) {
    if plat.arg("tick-ms").is_none() && TICK.load(Ordering::SeqCst) != 0 {
        TICK.store(counter_freq() * ms / 1000, Ordering::SeqCst);
    }
}

/// Whether the GIC is in use.
pub fn present() -> bool {
    GIC.lock().is_some()
}

/// Arms this CPU's tick one period from now (`CNTP_TVAL_EL0`, `CNTP_CTL_EL0.ENABLE`), or
/// stops the timer when the tick is off. Re-arming also lowers the timer's level interrupt.
fn arm_tick() {
    let period = TICK.load(Ordering::Relaxed);
    if period == 0 {
        arch::timer_off();
    } else {
        arch::timer_after(period);
    }
}

/// Turns the tick off on every CPU from their next acknowledgement on, and on this one now
/// (benchmarks: an exact instruction count must not include a tick).
pub fn stop_tick() {
    TICK.store(0, Ordering::SeqCst);
    arm_tick();
}

/// Acknowledges and handles every pending interrupt on this CPU; returns how many. Called
/// after a `VCPU_RUN` that ended with exit `IRQ`, and by idle loops.
pub fn handle_pending() -> usize {
    let cpu = crate::cpu::cpu_id();
    let mut n = 0;
    // Bounded: a level interrupt that the handler failed to lower cannot keep the host here.
    while n < 16 {
        let Some(id) = GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1) else { break };
        let raw = u32::from(id);
        match raw {
            TIMER_INTID => {
                COUNTS[cpu].ticks.fetch_add(1, Ordering::Relaxed);
                arm_tick();
                PREEMPT[cpu].store(true, Ordering::Release);
            }
            VTIMER_INTID | HYP_TIMER_INTID | MAINTENANCE_INTID | DOORBELL_SGI => {
                // Their work is the VMM's, after the exit they caused; nothing to do here.
            }
            KICK_SGI => {
                COUNTS[cpu].kicks.fetch_add(1, Ordering::Relaxed);
                PREEMPT[cpu].store(true, Ordering::Release);
            }
            _ => {
                COUNTS[cpu].other.fetch_add(1, Ordering::Relaxed);
            }
        }
        GicCpuInterface::end_interrupt(id, InterruptGroup::Group1);
        n += 1;
    }
    n
}

/// Whether a tick or kick arrived on this CPU since the last call.
pub fn take_preempt() -> bool {
    PREEMPT[crate::cpu::cpu_id()].swap(false, Ordering::AcqRel)
}

/// Sends the kick SGI to host CPU `cpu`: if it is running a guest, its `VCPU_RUN` returns
/// `IRQ` (EL2 routes physical interrupts to itself while a guest runs) and its scheduler looks
/// at the run queue again. A kick to a CPU that runs host code is acknowledged at its next
/// guest entry or idle poll.
pub fn kick(cpu: usize) {
    let Some(mpidr) = MPIDR.get(cpu).map(|m| m.load(Ordering::Relaxed)).filter(|m| *m != u64::MAX) else { return };
    if !present() {
        return;
    }
    let aff = |n: u32| ((mpidr >> n) & 0xFF) as u8;
    let target = SgiTarget::List { affinity3: aff(32), affinity2: aff(16), affinity1: aff(8), target_list: 1 << (mpidr & 0xF) };
    // The SGI's data (the run queue's state) must be visible to the target first.
    arch::dsb_ish();
    let _ = GicCpuInterface::send_sgi(IntId::sgi(KICK_SGI), target, SgiTargetGroup::CurrentGroup1);
}

/// `GICR_CTLR.EnableLPIs` and `GICR_TYPER.PLPIS` (bit 0 of each).
const GICR_CTLR: u64 = 0x0;
const GICR_TYPER: u64 = 0x8;
/// Distance between two GICv3 redistributors (`RD_base`, then `SGI_base`).
const GICR_STRIDE: u64 = 0x2_0000;

/// A redistributor register, with a plain `LDR` (EL2 performs it from the syndrome).
fn read32(pa: u64) -> u32 {
    // SAFETY: `pa` is a redistributor register; reading it has no effect on memory.
    unsafe { arch::read32(pa) }
}

/// A redistributor register, with a plain `STR`.
fn write32(pa: u64, v: u32) {
    // SAFETY: `pa` is a redistributor register; the caller knows what the write does.
    unsafe { arch::write32(pa, v) }
}

/// Test (`smp` scenario): sets `GICR_CTLR.EnableLPIs` in CPU `cpu`'s redistributor of the
/// region at `gicr`, keeping its other bits, and reads it back. Returns `GICR_TYPER.PLPIS`
/// (the redistributor implements LPIs) and `EnableLPIs` as read back. EL2 keeps the bit 0:
/// LPIs on would let the GIC read and write the LPI tables wherever the host pointed them.
pub fn try_enable_lpis(gicr: u64, cpu: usize) -> (bool, bool) {
    let rd = gicr + cpu as u64 * GICR_STRIDE;
    let plpis = read32(rd + GICR_TYPER) & 1 != 0;
    write32(rd + GICR_CTLR, read32(rd + GICR_CTLR) | 1);
    (plpis, read32(rd + GICR_CTLR) & 1 != 0)
}
