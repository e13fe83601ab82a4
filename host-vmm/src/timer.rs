//! A guest's architected timers, as the VMM sees them: two deadlines per vCPU.
//!
//! EL2 switches the virtual timer (`CNTV_*`, with the VM's own `CNTVOFF_EL2`) with the vCPU
//! and emulates the EL1 physical timer (`CNTP_*`, trapped); neither reaches the host's GIC
//! while the vCPU is not running. Every exit record carries both timers' deadlines in
//! system-counter ticks (`u64::MAX`: disabled or masked), and the VMM turns them into the
//! input lines of PPIs 27 and 30 of its distributor model: high once the counter has reached
//! the deadline. A vCPU waiting in `WFI` sleeps until the earlier deadline.
//!
//! While the guest runs, its virtual timer is live in the CPU and fires the physical PPI 27,
//! and EL2 sets its own physical timer (`CNTHP`, PPI 26) to the emulated EL1 physical timer's
//! deadline: either ends the run (exit `IRQ`) so the VMM can inject the virtual interrupt at
//! once. Each physical interrupt is disabled on the CPU while its virtual one is queued or
//! already high ([`physical_enabled`]): otherwise an expired timer the guest has not handled
//! yet would end every run before its first instruction. A linked virtual timer
//! (`VCPU_LINK_VTIMER`, the Linux VMM's default) is the exception: EL2 takes its PPI 27 and
//! delivers it without an exit, so the PPI stays enabled for the whole run.

/// The virtual timer's PPI (INTID 27).
pub const VTIMER_INTID: u32 = 27;
/// The EL1 physical timer's PPI (INTID 30).
pub const PTIMER_INTID: u32 = 30;

/// One vCPU's timers, from its last exit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// The virtual timer's deadline (system-counter ticks), `u64::MAX` if it cannot fire.
    pub vtimer: u64,
    /// The EL1 physical timer's deadline.
    pub ptimer: u64,
}

impl Timers {
    /// Neither timer armed (a vCPU that has not run).
    pub const fn new() -> Self {
        Self { vtimer: u64::MAX, ptimer: u64::MAX }
    }

    /// The earlier deadline still to come after `now`: when a vCPU in `WFI` must run again at
    /// the latest (`u64::MAX`: none). A deadline already passed is not one: its line is high
    /// already, and if the guest has that interrupt disabled its `WFI` must still sleep.
    pub fn next_after(&self, now: u64) -> u64 {
        [self.vtimer, self.ptimer].into_iter().filter(|&d| d > now).min().unwrap_or(u64::MAX)
    }

    /// The virtual and physical timers' output levels at counter value `now`.
    pub fn levels(&self, now: u64) -> (bool, bool) {
        (now >= self.vtimer, now >= self.ptimer)
    }
}

/// Whether the physical PPI behind a timer with `deadline` should end the vCPU's next run:
/// only while the timer's virtual interrupt is neither queued nor already high.
pub fn physical_enabled(deadline: u64, queued: bool, now: u64) -> bool {
    !queued && now < deadline
}
