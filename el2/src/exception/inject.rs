//! Building exceptions to inject into EL1.
//!
//! When the answer to a trap is "the lower EL gets an exception", [`inject_sync`] computes the
//! EL1 register values the Arm ARM says an exception taken to EL1 produces (D1.10 "Exception
//! entry"). The arch layer (for the host) or the vCPU context (for a guest) takes them; this
//! module only computes, so it is tested on the host.

use super::syndrome::{ec, ESR_IL, EC_SHIFT, FSC_SEA, ISS_WNR};
#[cfg(test)]
use super::syndrome::Esr;

/// `SPSR_ELx.M[3:0]` values.
pub mod mode {
    /// EL0 (AArch64).
    pub const EL0T: u64 = 0b0000;
    /// EL1 using SP_EL0.
    pub const EL1T: u64 = 0b0100;
    /// EL1 using SP_EL1.
    pub const EL1H: u64 = 0b0101;
}

const SPSR_M_MASK: u64 = 0b1111;
const SPSR_NRW: u64 = 1 << 4;
/// `SPSR.{D,A,I,F}`: all four masked.
pub const SPSR_DAIF: u64 = 0b1111 << 6;
const SPSR_PAN: u64 = 1 << 22;
const SPSR_TCO: u64 = 1 << 25;

/// What to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// A synchronous External abort on a data access (write if `write`).
    DataAbort {
        /// The access was a write.
        write: bool,
    },
    /// A synchronous External abort on an instruction fetch.
    InstructionAbort,
    /// An Undefined Instruction exception.
    Undef,
}

/// The state of the interrupted lower EL that injection depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapState {
    /// `ELR_EL2`: where the lower EL was.
    pub elr: u64,
    /// `SPSR_EL2`: its PSTATE.
    pub spsr: u64,
    /// `ESR_EL2.IL` of the trap.
    pub il: bool,
    /// `VBAR_EL1` of the lower EL.
    pub vbar_el1: u64,
}

/// EL1 and EL2 register values after an exception is injected into EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injected {
    /// New `ESR_EL1`.
    pub esr_el1: u64,
    /// New `ELR_EL1` (the interrupted PC).
    pub elr_el1: u64,
    /// New `SPSR_EL1` (the interrupted PSTATE).
    pub spsr_el1: u64,
    /// New `ELR_EL2`: the EL1 vector to return to.
    pub elr_el2: u64,
    /// New `SPSR_EL2`: PSTATE on entry to the EL1 vector.
    pub spsr_el2: u64,
}

/// Computes the effect of taking `what` to EL1 from the state in `t`.
///
/// Returns `None` if the interrupted state was not AArch64 EL0/EL1 (EL2 never runs AArch32
/// lower ELs: `HCR_EL2.RW` is set), in which case the caller must not inject.
///
/// `FAR_EL1` is the caller's: for aborts it is the faulting virtual address (`FAR_EL2`).
pub fn inject_sync(what: Injection, t: TrapState) -> Option<Injected> {
    if t.spsr & SPSR_NRW != 0 {
        return None;
    }
    let from_el0 = match t.spsr & SPSR_M_MASK {
        mode::EL0T => true,
        mode::EL1T | mode::EL1H => false,
        _ => return None,
    };
    // Vector offset (Arm ARM D1.10.2): current EL with SP_EL0 0x000, current EL with SP_ELx
    // 0x200, lower EL using AArch64 0x400; synchronous exceptions at +0x000.
    let offset = match t.spsr & SPSR_M_MASK {
        mode::EL1T => 0x000,
        mode::EL1H => 0x200,
        _ => 0x400,
    };
    let il = if t.il { ESR_IL } else { 0 };
    let esr_el1 = match what {
        Injection::DataAbort { write } => {
            let ec = if from_el0 { ec::DABT_LOW } else { ec::DABT_CUR };
            (ec as u64) << EC_SHIFT | il | if write { ISS_WNR } else { 0 } | FSC_SEA
        }
        Injection::InstructionAbort => {
            let ec = if from_el0 { ec::IABT_LOW } else { ec::IABT_CUR };
            (ec as u64) << EC_SHIFT | il | FSC_SEA
        }
        // An UNDEF always reports a 32-bit instruction (IL = 1), EC = 0.
        Injection::Undef => (ec::UNKNOWN as u64) << EC_SHIFT | ESR_IL,
    };
    // PSTATE on exception entry to EL1 (Arm ARM D1.10.1): EL1h, D/A/I/F masked, TCO set
    // (FEAT_MTE), PAN kept (we do not model SCTLR_EL1.SPAN == 0 setting it).
    let spsr_el2 = mode::EL1H | SPSR_DAIF | SPSR_TCO | (t.spsr & SPSR_PAN);
    Some(Injected {
        esr_el1,
        elr_el1: t.elr,
        spsr_el1: t.spsr,
        elr_el2: t.vbar_el1.wrapping_add(offset),
        spsr_el2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBAR: u64 = 0x4200_8000;

    fn at_el1h(elr: u64) -> TrapState {
        TrapState { elr, spsr: mode::EL1H | SPSR_DAIF, il: true, vbar_el1: VBAR }
    }

    #[test]
    fn data_abort_from_el1h_goes_to_current_el_spx_vector() {
        let i = inject_sync(Injection::DataAbort { write: false }, at_el1h(0x4200_1234)).unwrap();
        assert_eq!(i.esr_el1, (0x25 << 26) | ESR_IL | 0x10);
        assert_eq!(i.elr_el1, 0x4200_1234);
        assert_eq!(i.spsr_el1, mode::EL1H | SPSR_DAIF);
        assert_eq!(i.elr_el2, VBAR + 0x200);
        assert_eq!(i.spsr_el2 & 0b1111, mode::EL1H);
        assert_eq!(i.spsr_el2 & SPSR_DAIF, SPSR_DAIF);
    }

    #[test]
    fn write_abort_keeps_wnr() {
        let i = inject_sync(Injection::DataAbort { write: true }, at_el1h(0)).unwrap();
        assert_eq!(i.esr_el1 & ISS_WNR, ISS_WNR);
    }

    #[test]
    fn aborts_from_el0_use_lower_el_vector_and_ec() {
        let t = TrapState { elr: 0x1000, spsr: mode::EL0T, il: true, vbar_el1: VBAR };
        let d = inject_sync(Injection::DataAbort { write: false }, t).unwrap();
        assert_eq!(Esr(d.esr_el1).ec(), ec::DABT_LOW);
        assert_eq!(d.elr_el2, VBAR + 0x400);
        let i = inject_sync(Injection::InstructionAbort, t).unwrap();
        assert_eq!(Esr(i.esr_el1).ec(), ec::IABT_LOW);
    }

    #[test]
    fn el1t_uses_sp0_vector() {
        let t = TrapState { elr: 0, spsr: mode::EL1T, il: true, vbar_el1: VBAR };
        assert_eq!(inject_sync(Injection::Undef, t).unwrap().elr_el2, VBAR);
    }

    #[test]
    fn instruction_abort_and_undef_syndromes() {
        let i = inject_sync(Injection::InstructionAbort, at_el1h(0)).unwrap();
        assert_eq!(i.esr_el1, (0x21 << 26) | ESR_IL | 0x10);
        let u = inject_sync(Injection::Undef, TrapState { il: false, ..at_el1h(0) }).unwrap();
        assert_eq!(u.esr_el1, ESR_IL, "EC 0, IL 1");
    }

    #[test]
    fn pan_is_kept_and_tco_set() {
        let t = TrapState { spsr: mode::EL1H | SPSR_PAN, ..at_el1h(0) };
        let i = inject_sync(Injection::Undef, t).unwrap();
        assert_eq!(i.spsr_el2 & SPSR_PAN, SPSR_PAN);
        assert_eq!(i.spsr_el2 & SPSR_TCO, SPSR_TCO);
    }

    #[test]
    fn refuses_aarch32_and_el2_states() {
        let t = TrapState { spsr: SPSR_NRW | 0b10000, ..at_el1h(0) };
        assert_eq!(inject_sync(Injection::Undef, t), None);
        let t = TrapState { spsr: 0b1001, ..at_el1h(0) }; // EL2h
        assert_eq!(inject_sync(Injection::Undef, t), None);
    }
}
