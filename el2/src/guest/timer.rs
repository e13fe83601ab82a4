//! Guest timers: the emulated EL1 physical timer and when each of a vCPU's timers asserts.
//!
//! The virtual timer is the guest's own (switched by the world switch with the VM's
//! `CNTVOFF_EL2`); the EL1 physical timer is emulated against the physical counter. Both are
//! delivered by the host, which learns their deadlines from every exit record.

/// The emulated EL1 physical timer of a vCPU (`CNTP_*_EL0`), relative to the physical counter
/// (no offset). In the register ABI as [`shared_abi::reg::CNTP_CTL_EL0`] and [`shared_abi::reg::CNTP_CVAL_EL0`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PTimer {
    /// `CNTP_CTL_EL0.ENABLE` (bit 0) and `IMASK` (bit 1); ISTATUS is computed when read.
    pub ctl: u64,
    /// `CNTP_CVAL_EL0`.
    pub cval: u64,
}

/// `CNT*_CTL_EL0.ENABLE`.
pub const TIMER_ENABLE: u64 = 1 << 0;
/// `CNT*_CTL_EL0.IMASK`.
pub const TIMER_IMASK: u64 = 1 << 1;
/// `CNT*_CTL_EL0.ISTATUS` (read-only).
pub const TIMER_ISTATUS: u64 = 1 << 2;

impl PTimer {
    /// When its output asserts, in physical counter ticks: `cval` if enabled and not masked,
    /// else never (`u64::MAX`).
    pub const fn deadline(&self, now: u64) -> u64 {
        timer_deadline(self.ctl, self.cval, 0, now)
    }
}

/// When a generic timer with control `ctl` and compare value `cval`, counting the physical
/// count minus `offset` (modulo 2^64, as the hardware subtracts), asserts its output, in
/// physical counter ticks, seen at physical count `now`: `u64::MAX` (never) if it is disabled
/// or masked; if its count has reached `cval`, the tick it did so (0 if that was before the
/// counter started: an offset above the count makes the count wrap, and the timer fires at
/// once); otherwise `now` plus the ticks still to go (saturating). Without a wrap that is
/// `cval + offset`.
pub const fn timer_deadline(ctl: u64, cval: u64, offset: u64, now: u64) -> u64 {
    if ctl & (TIMER_ENABLE | TIMER_IMASK) != TIMER_ENABLE {
        return u64::MAX;
    }
    let count = now.wrapping_sub(offset);
    if count >= cval {
        now.saturating_sub(count - cval)
    } else {
        now.saturating_add(cval - count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_deadlines_are_never_when_disabled_or_masked_and_saturate() {
        assert_eq!(timer_deadline(0, 100, 0, 0), u64::MAX, "disabled");
        assert_eq!(timer_deadline(TIMER_ENABLE | TIMER_IMASK, 100, 0, 0), u64::MAX, "masked");
        assert_eq!(timer_deadline(TIMER_IMASK, 100, 0, 0), u64::MAX);
        assert_eq!(timer_deadline(TIMER_ENABLE, 100, 0, 0), 100);
        assert_eq!(timer_deadline(TIMER_ENABLE, 100, 0, 150), 100, "fired: when it did");
        assert_eq!(timer_deadline(TIMER_ENABLE | TIMER_ISTATUS, 100, 50, 60), 150, "ISTATUS does not matter");
        assert_eq!(timer_deadline(TIMER_ENABLE, u64::MAX - 10, 50, 50), u64::MAX, "saturates");
        assert_eq!(timer_deadline(TIMER_ENABLE, u64::MAX, u64::MAX, u64::MAX), u64::MAX);
        // An offset above the count: the count wrapped to the top, the timer has fired.
        assert_eq!(timer_deadline(TIMER_ENABLE, 1_000, 500, 10), 0);
        // CVAL at the very top: the wrapped count (2^64 - 490) reaches it 489 ticks later.
        assert_eq!(timer_deadline(TIMER_ENABLE, u64::MAX, 500, 10), 10 + 489, "until the wrapped count reaches it");
        assert_eq!(PTimer { ctl: TIMER_ENABLE, cval: 7 }.deadline(0), 7);
        assert_eq!(PTimer { ctl: TIMER_ENABLE, cval: 7 }.deadline(9), 7);
        assert_eq!(PTimer { ctl: 0, cval: 7 }.deadline(0), u64::MAX);
    }

}
