//! vCPU register IDs, in KVM's `ONE_REG` encoding for arm64, so that people who know KVM know
//! the IDs.
//!
//! - Core registers: `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | index`, where
//!   `index` is the offset in 32-bit words of the field in KVM's `struct kvm_regs`
//!   (`x0..x30` at 0, 2, .., 60; `sp` (SP_EL0) 62; `pc` 64; `pstate` 66; `sp_el1` 68;
//!   `elr_el1` 70; `spsr[EL1]` 72).
//! - System registers: `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | op0 << 14 |
//!   op1 << 11 | CRn << 7 | CRm << 3 | op2`.
//! - Firmware pseudo-registers: `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW | n`.

/// Architecture field of a register ID.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// Size field: 64 bits.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// Coprocessor field: core registers.
pub const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
/// Coprocessor field: AArch64 system registers.
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;
/// Coprocessor field: firmware pseudo-registers.
pub const KVM_REG_ARM_FW: u64 = 0x0014 << 16;

/// The ID of the core register at `index` (32-bit words into `struct kvm_regs`).
pub const fn core(index: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | index
}

/// General-purpose register `Xn` (`n` in 0..=30).
pub const fn x(n: u64) -> u64 {
    core(2 * n)
}

/// `SP_EL0` (KVM's `regs.sp`).
pub const SP_EL0: u64 = core(62);
/// The program counter.
pub const PC: u64 = core(64);
/// PSTATE (as in `SPSR_ELx`).
pub const PSTATE: u64 = core(66);
/// `SP_EL1`.
pub const SP_EL1: u64 = core(68);
/// `ELR_EL1`.
pub const ELR_EL1: u64 = core(70);
/// `SPSR_EL1` (KVM's `spsr[KVM_SPSR_EL1]`).
pub const SPSR_EL1: u64 = core(72);

/// The ID of the system register with this encoding.
pub const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2
}

/// The EL1/EL0 system registers each vCPU has, saved and restored by the world switch, in the
/// order of the vCPU context. Name and ID.
pub const SYSREGS: [(&str, u64); 21] = [
    ("SCTLR_EL1", sysreg(3, 0, 1, 0, 0)),
    ("CPACR_EL1", sysreg(3, 0, 1, 0, 2)),
    ("TTBR0_EL1", sysreg(3, 0, 2, 0, 0)),
    ("TTBR1_EL1", sysreg(3, 0, 2, 0, 1)),
    ("TCR_EL1", sysreg(3, 0, 2, 0, 2)),
    ("AFSR0_EL1", sysreg(3, 0, 5, 1, 0)),
    ("AFSR1_EL1", sysreg(3, 0, 5, 1, 1)),
    ("ESR_EL1", sysreg(3, 0, 5, 2, 0)),
    ("FAR_EL1", sysreg(3, 0, 6, 0, 0)),
    ("PAR_EL1", sysreg(3, 0, 7, 4, 0)),
    ("MAIR_EL1", sysreg(3, 0, 10, 2, 0)),
    ("AMAIR_EL1", sysreg(3, 0, 10, 3, 0)),
    ("VBAR_EL1", sysreg(3, 0, 12, 0, 0)),
    ("CONTEXTIDR_EL1", sysreg(3, 0, 13, 0, 1)),
    ("TPIDR_EL1", sysreg(3, 0, 13, 0, 4)),
    ("CNTKCTL_EL1", sysreg(3, 0, 14, 1, 0)),
    ("CSSELR_EL1", sysreg(3, 2, 0, 0, 0)),
    ("TPIDR_EL0", sysreg(3, 3, 13, 0, 2)),
    ("TPIDRRO_EL0", sysreg(3, 3, 13, 0, 3)),
    ("CNTV_CTL_EL0", sysreg(3, 3, 14, 3, 1)),
    ("CNTV_CVAL_EL0", sysreg(3, 3, 14, 3, 2)),
];

/// Size field: 128 bits.
pub const KVM_REG_SIZE_U128: u64 = 0x0040_0000_0000_0000;
/// Size field: 32 bits.
pub const KVM_REG_SIZE_U32: u64 = 0x0020_0000_0000_0000;

/// FP/SIMD register `Vn` (`n` in 0..=31), 128 bits (`fp_regs.vregs[n]` of `struct kvm_regs`).
/// `VCPU_SET_REG` takes bits 63:0 in `x4` and bits 127:64 in `x5`; `VCPU_GET_REG` returns them
/// in `x1` and `x2`.
pub const fn fp_vreg(n: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | (82 + 4 * n)
}
/// `FPSR`, 32 bits.
pub const FPSR: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE | 210;
/// `FPCR`, 32 bits.
pub const FPCR: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE | 211;

/// `n` if `id` is [`fp_vreg`]`(n)`.
pub fn fp_vreg_index(id: u64) -> Option<usize> {
    let base = fp_vreg(0);
    let off = id.checked_sub(base)?;
    (off % 4 == 0 && off / 4 < 32).then_some((off / 4) as usize)
}

/// The pointer-authentication keys, in context order: APIAKeyLo/Hi, APIBKeyLo/Hi,
/// APDAKeyLo/Hi, APDBKeyLo/Hi, APGAKeyLo/Hi (op0=3, op1=0, CRn=2, CRm=1..3).
pub const PAUTH_KEYS: [(&str, u64); 10] = [
    ("APIAKeyLo_EL1", sysreg(3, 0, 2, 1, 0)),
    ("APIAKeyHi_EL1", sysreg(3, 0, 2, 1, 1)),
    ("APIBKeyLo_EL1", sysreg(3, 0, 2, 1, 2)),
    ("APIBKeyHi_EL1", sysreg(3, 0, 2, 1, 3)),
    ("APDAKeyLo_EL1", sysreg(3, 0, 2, 2, 0)),
    ("APDAKeyHi_EL1", sysreg(3, 0, 2, 2, 1)),
    ("APDBKeyLo_EL1", sysreg(3, 0, 2, 2, 2)),
    ("APDBKeyHi_EL1", sysreg(3, 0, 2, 2, 3)),
    ("APGAKeyLo_EL1", sysreg(3, 0, 2, 3, 0)),
    ("APGAKeyHi_EL1", sysreg(3, 0, 2, 3, 1)),
];

/// The MTE registers a vCPU of an MTE VM has, in context order: RGSR_EL1, GCR_EL1, TFSR_EL1,
/// TFSRE0_EL1.
pub const MTE_REGS: [(&str, u64); 4] = [
    ("RGSR_EL1", sysreg(3, 0, 1, 0, 5)),
    ("GCR_EL1", sysreg(3, 0, 1, 0, 6)),
    ("TFSR_EL1", sysreg(3, 0, 5, 6, 0)),
    ("TFSRE0_EL1", sysreg(3, 0, 5, 6, 1)),
];

/// `MPIDR_EL1` as the vCPU sees it (read-only: Aff0 = vCPU index).
pub const MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);

/// `CNTVOFF_EL2` (op0 3, op1 4, CRn 14, CRm 0, op2 3), VM-wide (ABI 3.3): the offset of the
/// guest's virtual count from the physical counter (`CNTVCT = CNTPCT - CNTVOFF`). Chosen by EL2
/// at `VM_CREATE` (the physical count then, so the guest's virtual count starts near 0);
/// readable, and writable before the VM's first run.
pub const CNTVOFF_EL2: u64 = sysreg(3, 4, 14, 0, 3);
/// `CNTP_CTL_EL0` of the emulated EL1 physical timer (ABI 3.3): ENABLE (bit 0) and IMASK
/// (bit 1) as the guest set them; ISTATUS (bit 2) is not stored (it reads 0 here, and a write
/// of it is ignored, as on hardware).
pub const CNTP_CTL_EL0: u64 = sysreg(3, 3, 14, 2, 1);
/// `CNTP_CVAL_EL0` of the emulated EL1 physical timer (ABI 3.3), in physical counter ticks.
pub const CNTP_CVAL_EL0: u64 = sysreg(3, 3, 14, 2, 2);

/// `KVM_REG_ARM_PSCI_VERSION`.
pub const FW_PSCI_VERSION: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW;

/// Index of a system register in [`SYSREGS`].
pub fn sysreg_index(id: u64) -> Option<usize> {
    SYSREGS.iter().position(|&(_, i)| i == id)
}

/// The name of a register ID, for messages.
pub fn name(id: u64) -> Option<&'static str> {
    const X: [&str; 31] = [
        "X0", "X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "X9", "X10", "X11", "X12", "X13", "X14", "X15", "X16",
        "X17", "X18", "X19", "X20", "X21", "X22", "X23", "X24", "X25", "X26", "X27", "X28", "X29", "X30",
    ];
    match id {
        SP_EL0 => Some("SP_EL0"),
        PC => Some("PC"),
        PSTATE => Some("PSTATE"),
        SP_EL1 => Some("SP_EL1"),
        ELR_EL1 => Some("ELR_EL1"),
        SPSR_EL1 => Some("SPSR_EL1"),
        MPIDR_EL1 => Some("MPIDR_EL1"),
        CNTVOFF_EL2 => Some("CNTVOFF_EL2"),
        CNTP_CTL_EL0 => Some("CNTP_CTL_EL0"),
        CNTP_CVAL_EL0 => Some("CNTP_CVAL_EL0"),
        FW_PSCI_VERSION => Some("KVM_REG_ARM_PSCI_VERSION"),
        FPSR => Some("FPSR"),
        FPCR => Some("FPCR"),
        _ if fp_vreg_index(id).is_some() => Some("V<n>"),
        _ if id & !0xFF == core(0) && id & 1 == 0 && (id & 0xFF) <= 60 => Some(X[(id as usize & 0xFF) / 2]),
        _ => sysreg_index(id).map(|i| SYSREGS[i].0).or_else(|| PAUTH_KEYS.iter().chain(MTE_REGS.iter()).find(|k| k.1 == id).map(|k| k.0)),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn ids_match_kvm_encoding() {
        // Values as KVM's uapi headers define them.
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(x(30), 0x6030_0000_0010_003C);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(SYSREGS[0].1, 0x6030_0000_0013_C080, "SCTLR_EL1");
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_C005);
        assert_eq!(FW_PSCI_VERSION, 0x6030_0000_0014_0000);
        assert_eq!(CNTVOFF_EL2, 0x6030_0000_0013_E703);
        assert_eq!(CNTP_CTL_EL0, 0x6030_0000_0013_DF11);
        assert_eq!(CNTP_CVAL_EL0, 0x6030_0000_0013_DF12);
        assert_eq!(fp_vreg(0), 0x6040_0000_0010_0052);
        assert_eq!(fp_vreg(31), 0x6040_0000_0010_00CE);
        assert_eq!(FPSR, 0x6020_0000_0010_00D2);
        assert_eq!(FPCR, 0x6020_0000_0010_00D3);
        assert_eq!(fp_vreg_index(fp_vreg(7)), Some(7));
        assert_eq!(fp_vreg_index(fp_vreg(7) + 1), None);
        assert_eq!(fp_vreg_index(fp_vreg(32)), None);
    }

    #[test]
    fn every_id_is_distinct_and_named() {
        let mut all: std::vec::Vec<u64> = (0..31).map(x).collect();
        all.extend([SP_EL0, PC, PSTATE, SP_EL1, ELR_EL1, SPSR_EL1, MPIDR_EL1, FW_PSCI_VERSION, FPSR, FPCR, CNTVOFF_EL2, CNTP_CTL_EL0, CNTP_CVAL_EL0]);
        all.extend((0..32).map(fp_vreg));
        all.extend(SYSREGS.iter().map(|s| s.1));
        for (i, a) in all.iter().enumerate() {
            assert!(name(*a).is_some(), "{a:#x} has no name");
            assert!(!all[i + 1..].contains(a), "{a:#x} twice");
        }
        assert_eq!(name(x(7)), Some("X7"));
        assert_eq!(name(core(1)), None, "odd core index is not a register start");
        assert_eq!(name(core(200)), None);
    }
}
