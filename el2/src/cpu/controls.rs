//! The EL2 control-register values: what EL2 writes at boot and around every guest run.
//!
//! Place in the flow: *policy*, computed here in plain Rust (unit-tested on the host) from the
//! CPU's features and the VM's configuration; `arch` only writes the results. A control
//! register whose feature the CPU lacks is never written (an access would be UNDEFINED).
//!
//! The rule is "switched or trapped": every register a guest can reach either moves with the
//! vCPU (the world switch) or traps to EL2 (then emulated or an UNDEF). Features the guest's ID
//! registers hide are trapped where the architecture has a trap, and neutralised around the run
//! where it has none.

use crate::guest::vcpu::SysReg;
use crate::hw::GuestConfig;

/// ID-register fields (the CPU's own) that decide which controls exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlFeatures {
    /// FEAT_RAS (`ID_AA64PFR0_EL1.RAS`): `HCR_EL2.TERR` exists.
    pub ras: bool,
    /// FEAT_AMUv1 (`ID_AA64PFR0_EL1.AMU`): `CPTR_EL2.TAM` exists.
    pub amu: bool,
    /// GICv3 system-register interface (`ID_AA64PFR0_EL1.GIC`): `ICH_*_EL2`, `ICC_SRE_EL2`.
    pub gicv3: bool,
    /// FEAT_SME (`ID_AA64PFR1_EL1.SME`): `TPIDR2_EL0` exists.
    pub sme: bool,
    /// FEAT_TRF (`ID_AA64DFR0_EL1.TraceFilt`): `TRFCR_EL1/EL2`, `MDCR_EL2.TTRF`.
    pub trf: bool,
    /// FEAT_SPE (`ID_AA64DFR0_EL1.PMSVer`): `MDCR_EL2.TPMS`.
    pub spe: bool,
    /// FEAT_PMUv3 (`ID_AA64DFR0_EL1.PMUVer`, not IMPLEMENTATION DEFINED).
    pub pmu: bool,
    /// FEAT_LOR (`ID_AA64MMFR1_EL1.LO`): `HCR_EL2.TLOR`.
    pub lor: bool,
    /// FEAT_HCX (`ID_AA64MMFR1_EL1.HCX`): `HCRX_EL2`.
    pub hcx: bool,
    /// FEAT_FGT (`ID_AA64MMFR0_EL1.FGT`): the fine-grained trap registers.
    pub fgt: bool,
}

fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xF
}

impl ControlFeatures {
    /// Packed, for a per-CPU atomic (see [`Self::from_bits`]).
    pub const fn bits(&self) -> u16 {
        self.ras as u16
            | (self.amu as u16) << 1
            | (self.gicv3 as u16) << 2
            | (self.sme as u16) << 3
            | (self.trf as u16) << 4
            | (self.spe as u16) << 5
            | (self.pmu as u16) << 6
            | (self.lor as u16) << 7
            | (self.hcx as u16) << 8
            | (self.fgt as u16) << 9
    }

    /// Unpacks [`Self::bits`].
    pub fn from_bits(b: u16) -> Self {
        let bit = |n: u32| b & (1 << n) != 0;
        Self { ras: bit(0), amu: bit(1), gicv3: bit(2), sme: bit(3), trf: bit(4), spe: bit(5), pmu: bit(6), lor: bit(7), hcx: bit(8), fgt: bit(9) }
    }

    /// From this CPU's `ID_AA64PFR0/PFR1/DFR0/MMFR0/MMFR1_EL1`.
    pub fn from_id_regs(pfr0: u64, pfr1: u64, dfr0: u64, mmfr0: u64, mmfr1: u64) -> Self {
        let pmuver = field(dfr0, 8);
        Self {
            ras: field(pfr0, 28) != 0,
            amu: field(pfr0, 44) != 0,
            gicv3: field(pfr0, 24) != 0,
            sme: field(pfr1, 24) != 0,
            trf: field(dfr0, 40) != 0,
            spe: field(dfr0, 32) != 0,
            pmu: pmuver != 0 && pmuver != 0xF,
            lor: field(mmfr1, 16) != 0,
            hcx: field(mmfr1, 40) != 0,
            fgt: field(mmfr0, 56) != 0,
        }
    }
}

/// `HCR_EL2` fields (Arm ARM D19.2.48), for the host's and the guests' configurations.
pub mod hcr {
    /// Stage 2 enable.
    pub const VM: u64 = 1 << 0;
    /// Set/way invalidation override (upgrade DC ISW to DC CISW).
    pub const SWIO: u64 = 1 << 1;
    /// Route FIQs, IRQs and SErrors to EL2 (and make `ICC_*` accesses virtual).
    pub const FMO: u64 = 1 << 3;
    pub const IMO: u64 = 1 << 4;
    pub const AMO: u64 = 1 << 5;
    /// Default cacheability: EL1&0 stage 1 off behaves as Normal Write-Back.
    pub const DC: u64 = 1 << 12;
    /// Trap WFI, WFE.
    pub const TWI: u64 = 1 << 13;
    pub const TWE: u64 = 1 << 14;
    /// Trap data-cache maintenance by set/way (`DC ISW/CSW/CISW` and the MTE forms).
    pub const TSW: u64 = 1 << 22;
    /// Trap ID-register group 2: `CTR_EL0`, `CCSIDR_EL1`, `CCSIDR2_EL1`, `CLIDR_EL1` reads,
    /// `CSSELR_EL1` reads and writes.
    pub const TID2: u64 = 1 << 17;
    /// Trap ID-register group 3 reads.
    pub const TID3: u64 = 1 << 18;
    /// Trap SMC from EL1 to EL2.
    pub const TSC: u64 = 1 << 19;
    /// Trap IMPLEMENTATION DEFINED registers, `ACTLR_EL1`.
    pub const TIDCP: u64 = 1 << 20;
    pub const TACR: u64 = 1 << 21;
    /// EL1 is AArch64.
    pub const RW: u64 = 1 << 31;
    /// Trap the LORegion registers (FEAT_LOR).
    pub const TLOR: u64 = 1 << 35;
    /// Trap the RAS error-record registers (FEAT_RAS).
    pub const TERR: u64 = 1 << 36;
    /// Do not trap pointer-authentication key registers, instructions.
    pub const APK: u64 = 1 << 40;
    pub const API: u64 = 1 << 41;
    /// Stage 2 `MemAttr` uses the forced-Write-Back encoding (FEAT_S2FWB).
    pub const FWB: u64 = 1 << 46;
    /// Allow EL1&0 access to allocation tags (FEAT_MTE2).
    pub const ATA: u64 = 1 << 56;
}

/// `CPTR_EL2` (nVHE layout) bits.
pub mod cptr {
    /// RES1 bits (13, 9, 7:0).
    pub const RES1: u64 = 0x22FF;
    /// Trap SVE instructions and `ZCR_EL1`/`ZCR_EL2` accesses, at EL2 too (`ESR_EL2.EC` 0x19).
    pub const TZ: u64 = 1 << 8;
    /// Trap FP/SIMD (and SVE, where `TZ` does not already), at EL2 too (`ESR_EL2.EC` 0x07).
    pub const TFP: u64 = 1 << 10;
    /// Trap SME (FEAT_SME; RES1 without it, so always set).
    pub const TSM: u64 = 1 << 12;
    /// Trap trace-register accesses.
    pub const TTA: u64 = 1 << 20;
    /// Trap activity-monitor accesses (FEAT_AMUv1).
    pub const TAM: u64 = 1 << 30;
}

/// `MDCR_EL2` bits.
pub mod mdcr {
    /// HPMN: the counters that belong to EL1&0.
    pub const HPMN: u64 = 0x1F;
    pub const TPMCR: u64 = 1 << 5;
    pub const TPM: u64 = 1 << 6;
    pub const TDA: u64 = 1 << 9;
    pub const TDOSA: u64 = 1 << 10;
    pub const TDRA: u64 = 1 << 11;
    /// Trap the statistical-profiling registers (FEAT_SPE).
    pub const TPMS: u64 = 1 << 14;
    /// Event counting prohibited at EL2.
    pub const HPMD: u64 = 1 << 17;
    /// Trap `TRFCR_EL1` (FEAT_TRF).
    pub const TTRF: u64 = 1 << 19;
}

/// The controls a guest runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestControls {
    /// `HCR_EL2` before the per-run bits (`API/APK`, `ATA`, `FWB`) the switch adds.
    pub hcr: u64,
    /// `CPTR_EL2`, FP/SIMD, SVE and SME trapped (FP/SIMD and SVE lifted by the lazy load).
    pub cptr: u64,
    /// `MDCR_EL2`.
    pub mdcr: u64,
    /// `CNTHCTL_EL2`.
    pub cnthctl: u64,
    /// Stop the host's PMU counters for the run (`PMCNTENSET_EL0` saved, cleared, restored):
    /// the host must not count a protected guest's events.
    pub stop_host_counters: bool,
    /// `TRFCR_EL1` is zero for the run (no trace of the guest); FEAT_TRF only.
    pub no_trace: bool,
    /// The guest's `DISR_EL1` is `VDISR_EL2` (`HCR_EL2.AMO` set, FEAT_RAS), which nothing
    /// traps: it moves with the vCPU (saved at put, restored at load).
    pub switch_vdisr: bool,
}

/// Trap configuration for guests, built in this one place. Deny by default:
/// - every guest gets stage 2;
/// - ID-register reads trap (`TID3`) and are answered from the VM's own values;
/// - the cache type and cache identification registers trap (`TID2`) where the CPUs' `CTR_EL0`
///   differ (`cfg.trap_cache_type`): guests then read the `CTR_EL0` every CPU satisfies and a
///   cache hierarchy made from it (`cpu::cachetype`), not the CPU's they happen to run on;
///   where every CPU has the same, they read it directly, as under KVM (Linux reads it in
///   every cache maintenance loop, and user space in every `__clear_cache`);
/// - IRQ/FIQ/SError go to EL2, so the host gets its CPU back;
/// - SMC, WFI/WFE, IMPLEMENTATION DEFINED registers (`TIDCP`) and ACTLR (`TACR`) trap;
/// - data-cache maintenance by set/way traps (`TSW`): it acts on one CPU's caches, which a
///   vCPU does not own (EL2 emulates it by VA: `guest::sysreg`);
/// - LORegions (`TLOR`), RAS error records (`TERR`), activity monitors (`TAM`), trace
///   registers (`TTA`, `TTRF`) and statistical profiling (`TPMS`) trap where they exist: the
///   guest's ID registers hide all of them;
/// - FP/SIMD and SVE trap until the first use in each run, when EL2 loads the guest's
///   registers (`guest::fpsimd`; SVE only for a VM with SVE, an UNDEF for any other);
/// - SME always traps (hidden from every VM: no `ZA` or streaming mode to switch);
/// - PMU registers trap unless the VM has the opt-in `HOST_PMU` flag (never protected VMs),
///   and a protected VM runs with the host's counters stopped and EL2 counting prohibited;
/// - debug registers (`TDA`, `TDOSA`, `TDRA`) and the EL1 physical timer trap (EL2 emulates
///   them: `guest::sysreg`);
/// - pointer authentication and allocation tags as the switch decides per run;
/// - what a guest reaches untrapped through EL2's virtual registers moves with the vCPU
///   instead: with `AMO`, its `DISR_EL1` is `VDISR_EL2` (FEAT_RAS; `switch_vdisr`), as with
///   `IMO`/`FMO` its GIC CPU interface is the virtual one (the vGIC's own switch).
///
/// Everything trapped that EL2 does not emulate becomes an UNDEF in the guest.
pub fn guest_controls(f: &ControlFeatures, host_mdcr: u64, cfg: &GuestConfig, protected: bool) -> GuestControls {
    use hcr::*;
    let mut hcr = VM | SWIO | FMO | IMO | AMO | TWI | TWE | TSW | TID3 | TSC | TIDCP | TACR | RW;
    if cfg.trap_cache_type {
        hcr |= TID2;
    }
    if f.lor {
        hcr |= TLOR;
    }
    if f.ras {
        hcr |= TERR;
    }
    let mut cptr = cptr::RES1 | cptr::TZ | cptr::TSM | cptr::TFP | cptr::TTA;
    if f.amu {
        cptr |= cptr::TAM;
    }
    let mut mdcr = (host_mdcr & mdcr::HPMN) | mdcr::TDA | mdcr::TDOSA | mdcr::TDRA;
    if !cfg.host_pmu {
        mdcr |= mdcr::TPMCR | mdcr::TPM;
    }
    if protected {
        mdcr |= mdcr::HPMD;
    }
    if f.spe {
        mdcr |= mdcr::TPMS;
    }
    if f.trf {
        mdcr |= mdcr::TTRF;
    }
    GuestControls {
        hcr,
        cptr,
        mdcr,
        // EL1PCTEN: the physical counter is readable; EL1PCEN clear: the physical timer traps.
        cnthctl: 0b01,
        stop_host_counters: protected && f.pmu,
        no_trace: f.trf,
        switch_vdisr: f.ras && hcr & AMO != 0,
    }
}

/// The host's EL1 registers as `put` restores them, from what `load` saved (`sys`, in
/// `shared_abi::reg::SYSREGS` order): `CNTV_CTL_EL0` = 0, ENABLE clear. The host does not use
/// the virtual timer (its tick is the physical one); a guest's, once saved, must not stay
/// enabled in the CPU where its output would keep PPI 27 asserted to the host.
pub fn host_el1_at_put(sys: &mut [u64; crate::guest::vcpu::NR_SYSREGS]) {
    sys[SysReg::CNTV_CTL_EL0] = 0;
}

/// Values EL2 writes at boot, on every CPU, to control registers it otherwise never touches,
/// so nothing is left at an UNKNOWN reset value or a previous owner's setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootControls {
    /// `HCRX_EL2` = 0: none of its newer features enabled for EL1&0 (FEAT_HCX only).
    pub hcrx: Option<u64>,
    /// `HFGRTR_EL2`, `HFGWTR_EL2`, `HFGITR_EL2`, `HDFGRTR_EL2`, `HDFGWTR_EL2` = 0 (FEAT_FGT
    /// only): no fine-grained traps, and the negative-polarity (`nXXX`) bits trap the newer
    /// registers they name (e.g. `TPIDR2_EL0`, `SMPRI_EL1`).
    pub fgt: Option<u64>,
    /// `ICC_SRE_EL2`: SRE (system-register interface at EL2), DFB and DIB (no FIQ/IRQ bypass),
    /// Enable (EL1 may use the system-register interface: the host's GIC driver, and guests
    /// through the virtual CPU interface).
    pub icc_sre_el2: Option<u64>,
    /// `TRFCR_EL2` = 0: no trace at EL2 (FEAT_TRF only).
    pub trfcr_el2: Option<u64>,
}

/// The boot values for a CPU with features `f`.
pub fn boot_controls(f: &ControlFeatures) -> BootControls {
    BootControls {
        hcrx: f.hcx.then_some(0),
        fgt: f.fgt.then_some(0),
        icc_sre_el2: f.gicv3.then_some(0b1111),
        trfcr_el2: f.trf.then_some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuestConfig {
        GuestConfig { vttbr: 0, start_level: 1, ipa_bits: 36, vmpidr: 0, host_pmu: false, pauth_now: false, mte: false, fwb: false, protected: false, cntvoff: 0, trap_cache_type: false }
    }

    #[test]
    fn the_host_gets_the_virtual_timer_back_disabled() {
        // What load saved: the host's registers, its CNTV_CTL_EL0 enabled and unmasked.
        let mut sys: [u64; crate::guest::vcpu::NR_SYSREGS] = core::array::from_fn(|i| 0x100 + i as u64);
        sys[SysReg::CNTV_CTL_EL0] = 0b001;
        let before = sys;
        host_el1_at_put(&mut sys);
        assert_eq!(sys[SysReg::CNTV_CTL_EL0], 0, "ENABLE clear");
        for (i, (a, b)) in sys.iter().zip(before).enumerate() {
            if i != SysReg::CNTV_CTL_EL0 as usize {
                assert_eq!(*a, b, "{} changed", shared_abi::reg::SYSREGS[i].0);
            }
        }
    }

    const ALL: ControlFeatures = ControlFeatures { ras: true, amu: true, gicv3: true, sme: true, trf: true, spe: true, pmu: true, lor: true, hcx: true, fgt: true };

    #[test]
    fn features_from_id_registers() {
        // QEMU 7.2 `max`: GICv3, RAS, SME, PMUv3, LOR, FGT; no AMU, TRF, SPE, HCX.
        let pfr0 = 0x1 << 24 | 0x1 << 28;
        let pfr1 = 0x1 << 24;
        let dfr0 = 0x6 << 8;
        let mmfr0 = 0x1 << 56;
        let mmfr1 = 0x1 << 16;
        let f = ControlFeatures::from_id_regs(pfr0, pfr1, dfr0, mmfr0, mmfr1);
        assert_eq!(f, ControlFeatures { ras: true, amu: false, gicv3: true, sme: true, trf: false, spe: false, pmu: true, lor: true, hcx: false, fgt: true });
        assert!(!ControlFeatures::from_id_regs(0, 0, 0xF << 8, 0, 0).pmu, "IMPLEMENTATION DEFINED PMU");
        assert_eq!(ControlFeatures::from_id_regs(0, 0, 0, 0, 0), ControlFeatures::default());
        for x in [f, ALL, ControlFeatures::default()] {
            assert_eq!(ControlFeatures::from_bits(x.bits()), x);
        }
    }

    #[test]
    fn hidden_features_trap_where_they_exist() {
        let c = guest_controls(&ALL, 0x6, &cfg(), false);
        assert_eq!(c.hcr & (hcr::TLOR | hcr::TERR), hcr::TLOR | hcr::TERR);
        assert_eq!(c.cptr & (cptr::TAM | cptr::TTA | cptr::TFP), cptr::TAM | cptr::TTA | cptr::TFP);
        assert_eq!(c.cptr & (cptr::TZ | cptr::TSM), cptr::TZ | cptr::TSM, "SVE until the lazy load, SME always");
        assert_eq!(c.cptr & cptr::RES1, cptr::RES1);
        assert_eq!(c.mdcr & (mdcr::TTRF | mdcr::TPMS | mdcr::TPM | mdcr::TPMCR), mdcr::TTRF | mdcr::TPMS | mdcr::TPM | mdcr::TPMCR);
        assert!(c.no_trace);
        // Without the features the bits are RES0 and never written; TTA always exists.
        let c = guest_controls(&ControlFeatures::default(), 0x6, &cfg(), false);
        assert_eq!(c.hcr & (hcr::TLOR | hcr::TERR), 0);
        assert_eq!(c.cptr & (cptr::TAM | cptr::TTA), cptr::TTA);
        assert_eq!(c.mdcr & (mdcr::TTRF | mdcr::TPMS), 0);
        assert!(!c.no_trace && !c.stop_host_counters);
    }

    #[test]
    fn the_host_pmu_never_observes_a_protected_guest() {
        let p = guest_controls(&ALL, 0x6, &cfg(), true);
        assert!(p.stop_host_counters);
        assert_eq!(p.mdcr & mdcr::HPMD, mdcr::HPMD);
        let np = guest_controls(&ALL, 0x6, &cfg(), false);
        assert!(!np.stop_host_counters);
        assert_eq!(np.mdcr & mdcr::HPMD, 0);
        // HOST_PMU (non-protected only) leaves the PMU registers untrapped.
        let pmu = guest_controls(&ALL, 0x6, &GuestConfig { host_pmu: true, ..cfg() }, false);
        assert_eq!(pmu.mdcr & (mdcr::TPM | mdcr::TPMCR), 0);
        assert_eq!(pmu.mdcr & mdcr::HPMN, 0x6, "HPMN kept");
    }

    #[test]
    fn debug_and_base_traps_are_always_set() {
        for f in [ALL, ControlFeatures::default()] {
            let c = guest_controls(&f, 0, &cfg(), false);
            let base = hcr::VM | hcr::IMO | hcr::FMO | hcr::AMO | hcr::TWI | hcr::TWE | hcr::TSW | hcr::TID3 | hcr::TSC | hcr::TIDCP | hcr::TACR | hcr::RW;
            assert_eq!(c.hcr & base, base);
            assert_eq!(c.mdcr & (mdcr::TDA | mdcr::TDOSA | mdcr::TDRA), mdcr::TDA | mdcr::TDOSA | mdcr::TDRA);
            assert_eq!(c.cnthctl, 0b01, "physical timer traps");
        }
    }

    /// Finding N4: with `HCR_EL2.AMO` a guest's `DISR_EL1` accesses reach `VDISR_EL2`, which no
    /// trap covers; on a CPU with FEAT_RAS it must move with the vCPU, else the next VM reads
    /// what the last one wrote. Without FEAT_RAS the register does not exist.
    #[test]
    fn what_amo_redirects_to_vdisr_moves_with_the_vcpu() {
        for protected in [false, true] {
            let c = guest_controls(&ControlFeatures { ras: true, ..ControlFeatures::default() }, 0, &cfg(), protected);
            assert_eq!(c.hcr & hcr::AMO, hcr::AMO);
            assert!(c.switch_vdisr, "protected {protected}: VDISR_EL2 left in the CPU");
            assert!(guest_controls(&ALL, 0, &cfg(), protected).switch_vdisr);
            assert!(!guest_controls(&ControlFeatures::default(), 0, &cfg(), protected).switch_vdisr, "no FEAT_RAS: no VDISR_EL2");
        }
    }

    #[test]
    fn guests_read_the_cache_identification_registers_through_el2_where_cpus_differ() {
        for f in [ALL, ControlFeatures::default()] {
            assert_ne!(guest_controls(&f, 0, &GuestConfig { trap_cache_type: true, ..cfg() }, false).hcr & hcr::TID2, 0);
            assert_eq!(guest_controls(&f, 0, &GuestConfig { trap_cache_type: false, ..cfg() }, false).hcr & hcr::TID2, 0, "same CTR_EL0 everywhere: read directly");
        }
    }

    #[test]
    fn boot_writes_only_registers_that_exist() {
        assert_eq!(boot_controls(&ControlFeatures::default()), BootControls { hcrx: None, fgt: None, icc_sre_el2: None, trfcr_el2: None });
        assert_eq!(boot_controls(&ALL), BootControls { hcrx: Some(0), fgt: Some(0), icc_sre_el2: Some(0b1111), trfcr_el2: Some(0) });
    }
}
