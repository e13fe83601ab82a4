//! Decoding syndromes: `ESR_EL2` and the fault address registers, for traps from the host and
//! from guests alike. Every field EL2 reads out of a syndrome is read here.
//!
//! Place in the flow: the first step after the vectors. Callers decide what to do with what
//! this module decodes; it only computes, so it is tested on the host.

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
    /// SVE instruction or `ZCR_EL1` access trapped (here: by `CPTR_EL2.TZ`).
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
pub(super) const EC_SHIFT: u32 = 26;
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


/// `HPFAR_EL2.FIPA` (bits [43:4]) holds IPA[51:12].
const HPFAR_FIPA_MASK: u64 = 0x0000_0FFF_FFFF_FFF0;

/// The IPA of a stage-2 fault: the page from `HPFAR_EL2.FIPA`, the offset from `FAR_EL2`.
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    (hpfar & HPFAR_FIPA_MASK) << 8 | (far & 0xFFF)
}

/// `HPFAR_EL2` for a fault on `ipa` (what the hardware reports; tests build traps with it).
pub const fn hpfar_of(ipa: u64) -> u64 {
    (ipa >> 8) & HPFAR_FIPA_MASK
}

/// A decoded MMIO data access (from `ESR_EL2.ISS` with `ISV` set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes accessed: 1, 2, 4 or 8 (`SAS`).
    pub size: u8,
    /// The access was a write (`WnR`).
    pub write: bool,
    /// Register transferred (`SRT`; 31 = XZR).
    pub reg: u8,
    /// Sign-extend a read (`SSE`).
    pub sign_extend: bool,
    /// The register is 64-bit (`SF`); otherwise a read is zero-extended to 32 bits.
    pub sixty_four: bool,
}

const ISS_ISV: u64 = 1 << 24;

/// Decodes a data abort's syndrome. `None` if `ISV` is clear (the instruction cannot be
/// emulated from the syndrome: pair, writeback, SIMD, ...).
pub fn decode_mmio(esr: u64) -> Option<MmioAccess> {
    if esr & ISS_ISV == 0 {
        return None;
    }
    Some(MmioAccess {
        size: 1 << ((esr >> 22) & 3),
        sign_extend: esr & (1 << 21) != 0,
        reg: ((esr >> 16) & 0x1F) as u8,
        sixty_four: esr & (1 << 15) != 0,
        write: esr & (1 << 6) != 0,
    })
}

impl MmioAccess {
    /// The value a read of `raw` (from the host) puts in the register.
    pub fn read_value(&self, raw: u64) -> u64 {
        let bits = self.size as u32 * 8;
        let v = if bits == 64 { raw } else { raw & ((1 << bits) - 1) };
        let v = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((v << shift) as i64) >> shift) as u64
        } else {
            v
        };
        if self.sixty_four {
            v
        } else {
            v & 0xFFFF_FFFF
        }
    }

    /// The value a write stores, from the register's value.
    pub fn write_value(&self, reg_value: u64) -> u64 {
        let bits = self.size as u32 * 8;
        if bits == 64 {
            reg_value
        } else {
            reg_value & ((1 << bits) - 1)
        }
    }
}

/// A trapped `MRS`/`MSR` (`ESR_EL2.EC == 0x18`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysregAccess {
    /// `op0`.
    pub op0: u8,
    /// `op1`.
    pub op1: u8,
    /// `CRn`.
    pub crn: u8,
    /// `CRm`.
    pub crm: u8,
    /// `op2`.
    pub op2: u8,
    /// The general-purpose register.
    pub rt: u8,
    /// A read (`MRS`).
    pub read: bool,
}

/// Decodes the ISS of a trapped system-register access (Arm ARM D17.2.37, EC 0x18).
pub fn sysreg_access(esr: u64) -> Option<SysregAccess> {
    (Esr(esr).ec() == ec::SYS64).then_some(SysregAccess {
        op0: ((esr >> 20) & 3) as u8,
        op2: ((esr >> 17) & 7) as u8,
        op1: ((esr >> 14) & 7) as u8,
        crn: ((esr >> 10) & 0xF) as u8,
        rt: ((esr >> 5) & 0x1F) as u8,
        crm: ((esr >> 1) & 0xF) as u8,
        read: esr & 1 != 0,
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
    t[ec::SVE as usize] = stats::FP as u8;
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
            (ec::SVE, stats::FP),
            (ec::UNKNOWN, stats::OTHER),
        ] {
            assert_eq!(exit_class(false, false, esr(e)), class, "EC {e:#x}");
        }
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
    fn stage2_fault_addresses_round_trip() {
        for ipa in [0, 0x4000_1234, 0xFF_FFFF_FFFF, (1 << 52) - 1] {
            assert_eq!(fault_ipa(hpfar_of(ipa), ipa), ipa, "{ipa:#x}");
        }
    }

    fn esr(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (0x24 << 26) | (isv as u64) << 24 | sas << 22 | (sse as u64) << 21 | srt << 16 | (sf as u64) << 15 | (wnr as u64) << 6
    }

    #[test]
    fn decodes_mmio_syndromes() {
        assert_eq!(
            decode_mmio(esr(true, 0, false, 3, false, true)),
            Some(MmioAccess { size: 1, write: true, reg: 3, sign_extend: false, sixty_four: false })
        );
        assert_eq!(decode_mmio(esr(true, 3, false, 31, true, false)).unwrap().size, 8);
        assert_eq!(decode_mmio(esr(false, 2, false, 1, true, false)), None, "ISV clear");
    }

    #[test]
    fn mmio_read_values_are_sized_and_extended() {
        let ldrb = decode_mmio(esr(true, 0, false, 1, false, false)).unwrap();
        assert_eq!(ldrb.read_value(0x1234_5678_9ABC_DEF0), 0xF0);
        let ldrsb_x = decode_mmio(esr(true, 0, true, 1, true, false)).unwrap();
        assert_eq!(ldrsb_x.read_value(0x80), 0xFFFF_FFFF_FFFF_FF80);
        let ldrsh_w = decode_mmio(esr(true, 1, true, 1, false, false)).unwrap();
        assert_eq!(ldrsh_w.read_value(0x8000), 0xFFFF_8000);
        let ldr_x = decode_mmio(esr(true, 3, false, 1, true, false)).unwrap();
        assert_eq!(ldr_x.read_value(u64::MAX), u64::MAX);
        let str_w = decode_mmio(esr(true, 2, false, 1, false, true)).unwrap();
        assert_eq!(str_w.write_value(0x1122_3344_5566_7788), 0x5566_7788);
    }
}
