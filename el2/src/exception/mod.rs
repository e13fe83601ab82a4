//! Decoding `ESR_EL2` and building exceptions to inject into EL1.
//!
//! Place in the flow: the first step after the vectors. The trap handler reads the syndrome,
//! decides (elsewhere) what to do, and, when the answer is "the lower EL gets an exception",
//! uses [`inject_sync`] to compute the EL1 register values the Arm ARM says an exception taken
//! to EL1 produces (D1.10 "Exception entry"). The arch layer writes them; this module only
//! computes, so it is tested on the host.

/// `ESR_ELx.EC` values EL2 handles (Arm ARM D17.2.37).
pub mod ec {
    /// Unknown reason (also used for injected UNDEF).
    pub const UNKNOWN: u8 = 0x00;
    /// WFI or WFE.
    pub const WFX: u8 = 0x01;
    /// FP/SIMD access trapped (here: by `CPTR_EL2.TFP`).
    pub const FP: u8 = 0x07;
    /// Pointer-authentication instruction trapped by `HCR_EL2.API`.
    pub const PAUTH: u8 = 0x09;
    /// HVC in AArch64 state.
    pub const HVC64: u8 = 0x16;
    /// SMC in AArch64 state (trapped by `HCR_EL2.TSC`; `ELR_EL2` points *at* the SMC).
    pub const SMC64: u8 = 0x17;
    /// MSR, MRS or system instruction in AArch64 state.
    pub const SYS64: u8 = 0x18;
    /// SVE access trapped.
    pub const SVE: u8 = 0x19;
    /// Instruction abort from a lower EL.
    pub const IABT_LOW: u8 = 0x20;
    /// Instruction abort without a change of EL.
    pub const IABT_CUR: u8 = 0x21;
    /// Data abort from a lower EL.
    pub const DABT_LOW: u8 = 0x24;
    /// Data abort without a change of EL.
    pub const DABT_CUR: u8 = 0x25;
}

/// `ESR_ELx.IL`: the trapped instruction was 32 bits wide.
pub const ESR_IL: u64 = 1 << 25;
const EC_SHIFT: u32 = 26;
/// `DFSC`/`IFSC` for a synchronous External abort, not on a translation table walk.
pub const FSC_SEA: u64 = 0b01_0000;
/// `ESR_ELx.ISS.WnR` of a data abort.
pub const ISS_WNR: u64 = 1 << 6;

/// A syndrome value, `ESR_EL2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

/// The kind of fault a data or instruction abort reports in `DFSC`/`IFSC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Translation fault at the given level.
    Translation(u8),
    /// Access flag fault.
    AccessFlag(u8),
    /// Permission fault.
    Permission(u8),
    /// Anything else (external aborts, alignment, TLB conflict, ...).
    Other(u8),
}

impl Esr {
    /// `ESR_ELx.EC`.
    pub const fn ec(self) -> u8 {
        ((self.0 >> EC_SHIFT) & 0x3F) as u8
    }
    /// `ESR_ELx.IL`.
    pub const fn il(self) -> bool {
        self.0 & ESR_IL != 0
    }
    /// `ESR_ELx.ISS`.
    pub const fn iss(self) -> u64 {
        self.0 & 0x1FF_FFFF
    }
    /// The immediate of a trapped HVC/SMC (`ISS[15:0]`).
    pub const fn imm16(self) -> u16 {
        self.0 as u16
    }
    /// For aborts: `DFSC`/`IFSC` decoded.
    pub const fn fault(self) -> FaultKind {
        let fsc = (self.0 & 0x3F) as u8;
        let level = fsc & 0b11;
        match fsc >> 2 {
            0b0001 => FaultKind::Translation(level),
            0b0010 => FaultKind::AccessFlag(level),
            0b0011 => FaultKind::Permission(level),
            _ => FaultKind::Other(fsc),
        }
    }
    /// For data aborts: the access was a write (`WnR`).
    pub const fn is_write(self) -> bool {
        self.0 & ISS_WNR != 0
    }
}

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

/// `ESR_EL2.EC` → class of [`shared_abi::msg::stats`], as a table: counting happens on every
/// exit, so it is one load rather than a chain of comparisons.
const EC_CLASS: [u8; 64] = {
    use shared_abi::msg::stats;
    let mut t = [stats::OTHER as u8; 64];
    t[ec::WFX as usize] = stats::WFX as u8;
    t[ec::HVC64 as usize] = stats::HVC_SMC as u8;
    t[ec::SMC64 as usize] = stats::HVC_SMC as u8;
    t[ec::SYS64 as usize] = stats::SYSREG as u8;
    t[ec::DABT_LOW as usize] = stats::ABORT as u8;
    t[ec::IABT_LOW as usize] = stats::ABORT as u8;
    t[ec::FP as usize] = stats::FP as u8;
    t[ec::PAUTH as usize] = stats::PAUTH as u8;
    t
};

/// The class of an exception a vCPU took to EL2, for its statistics
/// ([`shared_abi::msg::stats`]): `irq` for an asynchronous one, else by `ESR_EL2.EC`.
#[inline(always)]
pub fn exit_class(irq: bool, serror: bool, esr: u64) -> usize {
    use shared_abi::msg::stats;
    if irq {
        stats::IRQ
    } else if serror {
        stats::OTHER
    } else {
        EC_CLASS[((esr >> EC_SHIFT) & 0x3F) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified_by_syndrome() {
        use shared_abi::msg::stats;
        let esr = |ec: u8| (ec as u64) << 26 | ESR_IL;
        assert_eq!(exit_class(true, false, 0), stats::IRQ);
        assert_eq!(exit_class(false, true, esr(ec::SYS64)), stats::OTHER, "SError whatever ESR says");
        for (e, class) in [
            (ec::WFX, stats::WFX),
            (ec::HVC64, stats::HVC_SMC),
            (ec::SMC64, stats::HVC_SMC),
            (ec::SYS64, stats::SYSREG),
            (ec::DABT_LOW, stats::ABORT),
            (ec::IABT_LOW, stats::ABORT),
            (ec::FP, stats::FP),
            (ec::PAUTH, stats::PAUTH),
            (ec::SVE, stats::OTHER),
            (ec::UNKNOWN, stats::OTHER),
        ] {
            assert_eq!(exit_class(false, false, esr(e)), class, "EC {e:#x}");
        }
    }

    const VBAR: u64 = 0x4200_8000;

    fn at_el1h(elr: u64) -> TrapState {
        TrapState { elr, spsr: mode::EL1H | SPSR_DAIF, il: true, vbar_el1: VBAR }
    }

    #[test]
    fn decodes_syndrome_fields() {
        // Data abort from a lower EL, write, stage-2 translation fault level 3.
        let e = Esr((0x24 << 26) | ESR_IL | ISS_WNR | 0b000111);
        assert_eq!(e.ec(), ec::DABT_LOW);
        assert!(e.il());
        assert!(e.is_write());
        assert_eq!(e.fault(), FaultKind::Translation(3));
        assert_eq!(Esr(0b001101).fault(), FaultKind::Permission(1));
        assert_eq!(Esr(0b001010).fault(), FaultKind::AccessFlag(2));
        assert_eq!(Esr(0b010000).fault(), FaultKind::Other(0x10));
        assert_eq!(Esr((0x16 << 26) | 0x1234).imm16(), 0x1234);
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
