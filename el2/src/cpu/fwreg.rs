//! Firmware pseudo-registers: `KVM_REG_ARM_PSCI_VERSION` and `KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1/2/3`,
//! with KVM's value encodings, so a VM saved on KVM (or here) restores with the same meaning.
//!
//! Place in the flow: *state*, per VM. The host reads them and may write them before the VM
//! first runs; the guest sees them through `PSCI_VERSION` and `SMCCC_ARCH_FEATURES`.
//!
//! The rule for writes (a restore after migration): **the receiving side decides, and never
//! downgrades**. A value with unknown bits is refused; a mitigation level higher than this
//! hypervisor provides is refused (the guest relied on protection it would lose here); a
//! level at or below what it provides is accepted and is what the guest is told from then on.
//!
//! Levels (higher is better): workarounds 1 and 3: 0 `NOT_AVAIL`, 1 `AVAIL`, 2 `NOT_REQUIRED`.
//! Workaround 2: 0 `NOT_AVAIL`, 1 `UNKNOWN`, 2 `AVAIL`, 3 `NOT_REQUIRED`, plus bit 4 `ENABLED`
//! (only with `AVAIL`). As KVM does, a workaround-2 level is compared after grouping
//! `NOT_AVAIL`/`UNKNOWN` and `AVAIL`/`NOT_REQUIRED`.

use shared_abi::reg::{KVM_REG_ARM64, KVM_REG_ARM_FW, KVM_REG_SIZE_U64};

/// `KVM_REG_ARM_PSCI_VERSION`.
pub const PSCI_VERSION: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW;
/// `KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1`.
pub const WORKAROUND_1: u64 = PSCI_VERSION + 1;
/// `KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2`.
pub const WORKAROUND_2: u64 = PSCI_VERSION + 2;
/// `KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3`.
pub const WORKAROUND_3: u64 = PSCI_VERSION + 3;
/// Every firmware register, in `VCPU_REG_LIST` order.
pub const IDS: [u64; 4] = [PSCI_VERSION, WORKAROUND_1, WORKAROUND_2, WORKAROUND_3];

/// Workaround level: vulnerable, no workaround.
pub const NOT_AVAIL: u64 = 0;
/// Workaround 1/3 level: the workaround is available. (Workaround 2: unknown.)
pub const AVAIL: u64 = 1;
/// Workaround 1/3 level: not needed on this hardware.
pub const NOT_REQUIRED: u64 = 2;
/// Workaround 2 levels.
pub mod wa2 {
    /// Vulnerable.
    pub const NOT_AVAIL: u64 = 0;
    /// Unknown.
    pub const UNKNOWN: u64 = 1;
    /// Available.
    pub const AVAIL: u64 = 2;
    /// Not needed.
    pub const NOT_REQUIRED: u64 = 3;
    /// The guest has the mitigation enabled (only with `AVAIL`).
    pub const ENABLED: u64 = 1 << 4;
}

/// PSCI versions a VM can be given: 0.2, 1.0, 1.1 (what EL2 implements for guests).
pub const PSCI_VERSIONS: [u64; 3] = [0x0000_0002, 0x0001_0000, 0x0001_0001];

/// What this hypervisor provides, decided from every CPU's ID registers (the combined view of
/// [`crate::cpu::features`], fixed before the first VM exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provided {
    /// Workaround 1 level ([`NOT_AVAIL`] or [`NOT_REQUIRED`]: EL2 implements no firmware
    /// workaround, so only hardware that does not need one gets more than `NOT_AVAIL`).
    pub wa1: u64,
    /// Workaround 2 level.
    pub wa2: u64,
    /// Workaround 3 level.
    pub wa3: u64,
}

impl Provided {
    /// From `ID_AA64PFR0_EL1.CSV2` (bits 59:56) and `ID_AA64MMFR1_EL1.ECBHB` (bits 63:60):
    /// CSV2 >= 1 means branch-target injection cannot cross contexts (no workaround 1 needed);
    /// CSV2 >= 3 or ECBHB means the same for branch history (workaround 3). Speculative store
    /// bypass has no "not affected" field; EL2 does not implement workaround 2 (a guest uses
    /// SSBS where present), so its level is `NOT_AVAIL`.
    pub fn from_id_regs(pfr0: u64, mmfr1: u64) -> Self {
        let csv2 = (pfr0 >> 56) & 0xF;
        let ecbhb = (mmfr1 >> 60) & 0xF;
        Self {
            wa1: if csv2 >= 1 { NOT_REQUIRED } else { NOT_AVAIL },
            wa2: wa2::NOT_AVAIL,
            wa3: if csv2 >= 3 || ecbhb >= 1 { NOT_REQUIRED } else { NOT_AVAIL },
        }
    }
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwError {
    /// Not a firmware register.
    Unknown,
    /// Unknown bits, an impossible combination, or more protection than this hypervisor
    /// provides.
    Refused,
}

/// One VM's firmware registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwRegs {
    /// PSCI version the guest is told.
    pub psci_version: u64,
    /// Workaround 1 level.
    pub wa1: u64,
    /// Workaround 2 value.
    pub wa2: u64,
    /// Workaround 3 level.
    pub wa3: u64,
}

fn wa2_group(level: u64) -> u64 {
    if level <= wa2::UNKNOWN {
        wa2::NOT_AVAIL
    } else {
        wa2::NOT_REQUIRED
    }
}

impl FwRegs {
    /// A new VM's values: PSCI 1.1 and what this hypervisor provides.
    pub const fn new(p: Provided) -> Self {
        Self { psci_version: 0x0001_0001, wa1: p.wa1, wa2: p.wa2, wa3: p.wa3 }
    }

    /// Reads register `id`.
    pub fn get(&self, id: u64) -> Option<u64> {
        match id {
            PSCI_VERSION => Some(self.psci_version),
            WORKAROUND_1 => Some(self.wa1),
            WORKAROUND_2 => Some(self.wa2),
            WORKAROUND_3 => Some(self.wa3),
            _ => None,
        }
    }

    /// The registers after writing `value` to `id`, if the write is compatible with `p`.
    ///
    /// # Errors
    /// [`FwError`].
    pub fn with(&self, p: &Provided, id: u64, value: u64) -> Result<Self, FwError> {
        let mut n = *self;
        match id {
            PSCI_VERSION if PSCI_VERSIONS.contains(&value) => n.psci_version = value,
            WORKAROUND_1 | WORKAROUND_3 => {
                let provided = if id == WORKAROUND_1 { p.wa1 } else { p.wa3 };
                if value > NOT_REQUIRED || value > provided {
                    return Err(FwError::Refused);
                }
                if id == WORKAROUND_1 {
                    n.wa1 = value;
                } else {
                    n.wa3 = value;
                }
            }
            WORKAROUND_2 => {
                let level = value & 0xF;
                if value & !(0xF | wa2::ENABLED) != 0 || level > wa2::NOT_REQUIRED {
                    return Err(FwError::Refused);
                }
                if value & wa2::ENABLED != 0 && level != wa2::AVAIL {
                    return Err(FwError::Refused);
                }
                if wa2_group(level) > wa2_group(p.wa2) {
                    return Err(FwError::Refused);
                }
                n.wa2 = value;
            }
            PSCI_VERSION => return Err(FwError::Refused),
            _ => return Err(FwError::Unknown),
        }
        Ok(n)
    }

    /// The guest's `SMCCC_ARCH_FEATURES` answer for a workaround function, from this VM's
    /// values: `None` if `function` is not a workaround.
    pub fn arch_features(&self, function: u32) -> Option<i64> {
        Some(match function {
            smccc::arch::SMCCC_ARCH_WORKAROUND_1 | smccc::arch::SMCCC_ARCH_WORKAROUND_3 => {
                let level = if function == smccc::arch::SMCCC_ARCH_WORKAROUND_1 { self.wa1 } else { self.wa3 };
                match level {
                    AVAIL => 0,
                    NOT_REQUIRED => 1,
                    _ => -1,
                }
            }
            smccc::arch::SMCCC_ARCH_WORKAROUND_2 => match self.wa2 & 0xF {
                wa2::AVAIL => 0,
                wa2::NOT_REQUIRED => -2,
                _ => -1,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFFECTED: Provided = Provided { wa1: NOT_AVAIL, wa2: wa2::NOT_AVAIL, wa3: NOT_AVAIL };
    const UNAFFECTED: Provided = Provided { wa1: NOT_REQUIRED, wa2: wa2::NOT_REQUIRED, wa3: NOT_REQUIRED };

    #[test]
    fn ids_are_kvms() {
        assert_eq!(PSCI_VERSION, 0x6030_0000_0014_0000);
        assert_eq!(WORKAROUND_3, 0x6030_0000_0014_0003);
    }

    #[test]
    fn provided_levels_follow_id_registers() {
        assert_eq!(Provided::from_id_regs(0, 0), AFFECTED);
        assert_eq!(Provided::from_id_regs(1 << 56, 0).wa1, NOT_REQUIRED);
        assert_eq!(Provided::from_id_regs(1 << 56, 0).wa3, NOT_AVAIL);
        assert_eq!(Provided::from_id_regs(3 << 56, 0).wa3, NOT_REQUIRED);
        assert_eq!(Provided::from_id_regs(0, 1 << 60).wa3, NOT_REQUIRED);
    }

    #[test]
    fn psci_version_accepts_only_what_el2_implements() {
        let r = FwRegs::new(AFFECTED);
        assert_eq!(r.get(PSCI_VERSION), Some(0x10001));
        for v in PSCI_VERSIONS {
            assert_eq!(r.with(&AFFECTED, PSCI_VERSION, v).unwrap().psci_version, v);
        }
        for v in [0, 1, 0x10002, 0x20000, u64::MAX, 1 << 32 | 0x10001] {
            assert_eq!(r.with(&AFFECTED, PSCI_VERSION, v), Err(FwError::Refused), "{v:#x}");
        }
    }

    /// Every value 0..=0x1F and a few wide ones, against both kinds of hardware.
    #[test]
    fn workaround_1_and_3_full_table() {
        for id in [WORKAROUND_1, WORKAROUND_3] {
            for (p, max) in [(AFFECTED, NOT_AVAIL), (UNAFFECTED, NOT_REQUIRED)] {
                let r = FwRegs::new(p);
                for v in (0..=0x1F).chain([1 << 4 | 1, 1 << 63, u64::MAX]) {
                    let got = r.with(&p, id, v);
                    if v <= max {
                        assert_eq!(got.unwrap().get(id), Some(v), "id {id:#x} value {v:#x} on {p:?}");
                    } else {
                        assert_eq!(got, Err(FwError::Refused), "id {id:#x} value {v:#x} on {p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn workaround_2_full_table() {
        for p in [AFFECTED, UNAFFECTED] {
            let r = FwRegs::new(p);
            for v in (0..=0x3F).chain([1 << 8, u64::MAX]) {
                let level = v & 0xF;
                let ok = v & !0x1F == 0
                    && level <= wa2::NOT_REQUIRED
                    && (v & wa2::ENABLED == 0 || level == wa2::AVAIL)
                    && wa2_group(level) <= wa2_group(p.wa2);
                assert_eq!(r.with(&p, WORKAROUND_2, v).is_ok(), ok, "value {v:#x} on {p:?}");
            }
            // Spot checks of the rule itself.
            assert!(r.with(&p, WORKAROUND_2, wa2::UNKNOWN).is_ok(), "NOT_AVAIL group is always fine");
            assert_eq!(r.with(&p, WORKAROUND_2, wa2::NOT_AVAIL | wa2::ENABLED), Err(FwError::Refused));
        }
        assert_eq!(FwRegs::new(AFFECTED).with(&AFFECTED, WORKAROUND_2, wa2::AVAIL), Err(FwError::Refused), "no downgrade");
        assert!(FwRegs::new(UNAFFECTED).with(&UNAFFECTED, WORKAROUND_2, wa2::AVAIL | wa2::ENABLED).is_ok());
    }

    #[test]
    fn unknown_ids_and_refusals_change_nothing() {
        let r = FwRegs::new(UNAFFECTED);
        assert_eq!(r.with(&UNAFFECTED, PSCI_VERSION + 4, 0), Err(FwError::Unknown));
        assert_eq!(r.get(PSCI_VERSION + 4), None);
        assert!(r.with(&UNAFFECTED, WORKAROUND_1, 3).is_err());
        assert_eq!(r.get(WORKAROUND_1), Some(NOT_REQUIRED));
    }

    #[test]
    fn guest_answers_follow_the_vms_values() {
        let mut r = FwRegs::new(UNAFFECTED);
        assert_eq!(r.arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_1), Some(1));
        assert_eq!(r.arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_2), Some(-2));
        r = r.with(&UNAFFECTED, WORKAROUND_1, AVAIL).unwrap();
        assert_eq!(r.arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_1), Some(0));
        r = r.with(&UNAFFECTED, WORKAROUND_3, NOT_AVAIL).unwrap();
        assert_eq!(r.arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_3), Some(-1));
        assert_eq!(FwRegs::new(AFFECTED).arch_features(smccc::arch::SMCCC_ARCH_WORKAROUND_2), Some(-1));
        assert_eq!(r.arch_features(smccc::arch::SMCCC_VERSION), None);
    }
}
