//! What every CPU can do: each CPU's `MIDR_EL1`, ID registers, cache type (`CTR_EL0`), virtual
//! GIC CPU interface (`ICH_VTR_EL2`) and SVE vector lengths, and the view EL2 combines from them.
//!
//! Place in the flow: *state*, global, behind its own lock ([`crate::hyp::Hyp::cpus`]). Each CPU
//! reports when it enters EL2 (the boot CPU at start-up, the others in their EL2 entry path after
//! the host's `CPU_ON`); `VM_CREATE` reads the combined view.
//!
//! The view is **open** until the first of `FINALISE_SETUP` and `VM_CREATE`, and **fixed** from
//! then on, for the life of EL2:
//!
//! - Open: a reporting CPU joins the view, which is recomputed over every CPU that ever
//!   reported (field by field, [`idreg::combine`] and [`cachetype::combine`]; the virtual GIC
//!   CPU interface as the smallest of each of its sizes, [`VgicCaps::min`]; the SVE vector
//!   lengths as [`SveView`] combines them). Nothing depends on it yet.
//! - Fixed: VMs' ID registers, their MTE, pointer authentication and FWB, the firmware
//!   workaround levels ([`Provided`]), the largest guest IPA, the cache type guests read, the
//!   SVE vector lengths VMs may have, and how many list registers a vCPU may fill with which
//!   priorities were all decided from it. A CPU that reports now must be at least as capable
//!   in every field ([`idreg::at_least`]), satisfy the cache type guests follow
//!   ([`cachetype::at_least`]: no smaller line, no `DIC` or `IDC` missing), implement exactly
//!   the view's SVE vector lengths up to the largest a VM may have ([`SveView::check`]), and
//!   have at least the view's list registers, priority and preemption bits (a vCPU's load
//!   writes every list register it uses: one the CPU lacks is an EL2 UNDEF); and, when pointer
//!   authentication was allowed on the strength of every CPU being
//!   identical (the IMPLEMENTATION DEFINED algorithm), have the boot CPU's `MIDR_EL1` and ID
//!   registers too. A CPU that is not ([`Weaker`]) must never run host or guest code: its
//!   entry path powers it off.
//!
//! A host that wants VMs on a machine whose CPUs differ must therefore bring every CPU up
//! before it finalises set-up or creates its first VM.

use crate::cpu::cachetype;
use crate::cpu::fwreg::Provided;
use crate::cpu::idreg::{self, NR_IDREGS};
use crate::cpu::sve::{SveView, VqSet};
use crate::guest::vgic::VgicCaps;
use crate::platform::MAX_CPUS;

/// One CPU's identification: `MIDR_EL1`, the 56 ID registers ([`idreg::idx`] order),
/// `CTR_EL0`, `ICH_VTR_EL2` and the SVE vector lengths it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuId {
    /// `MIDR_EL1`.
    pub midr: u64,
    /// The ID registers.
    pub regs: [u64; NR_IDREGS],
    /// `CTR_EL0` ([`cachetype`]).
    pub ctr: u64,
    /// `ICH_VTR_EL2` (`None`: no GICv3 system-register interface). EL2 relies on `ListRegs`,
    /// `PRIbits` and `PREbits` ([`VgicCaps`]); not on `IDbits` (vINTIDs stop at 1019).
    pub ich_vtr: Option<u64>,
    /// The SVE vector lengths it implements, as far as EL3 lets EL2 use them (its probe,
    /// [`VqSet::probe`]); none without FEAT_SVE.
    pub sve: VqSet,
}

impl CpuId {
    /// The virtual GIC CPU interface, if the CPU has one.
    pub fn vgic(&self) -> Option<VgicCaps> {
        self.ich_vtr.map(VgicCaps::from_vtr)
    }

    /// Same `MIDR_EL1` and ID registers: nothing tells the two CPUs' IMPLEMENTATION DEFINED
    /// behaviour (a pointer-authentication algorithm) apart.
    fn same_implementation(&self, other: &CpuId) -> bool {
        self.midr == other.midr && self.regs == other.regs
    }
}

/// Why a CPU may not join a fixed view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weaker {
    /// A field below the view (lower-safe), above it (higher-safe) or different (exact): of an
    /// ID register, `CTR_EL0` ([`cachetype::at_least`]) or `ICH_VTR_EL2` (too few list
    /// registers, priority or preemption bits; no interface at all is `ID_AA64PFR0_EL1.GIC`).
    Field {
        /// Register name.
        reg: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// Pointer authentication with the IMPLEMENTATION DEFINED algorithm was allowed because
    /// every CPU was identical; this one differs (`MIDR_EL1` or an ID register).
    NotIdentical,
}

/// Every CPU's report and the combined view.
#[derive(Clone, Debug)]
pub struct CpuFeatures {
    /// What each CPU (by platform index) reported when it last entered EL2.
    reported: [Option<CpuId>; MAX_CPUS],
    /// Field-by-field combination over every reported CPU.
    view: [u64; NR_IDREGS],
    /// `CTR_EL0` combined over every reported CPU ([`cachetype::combine`]): what guests read.
    ctr: u64,
    /// Every CPU accepted so far has this same `CTR_EL0`: guests may read it untrapped.
    ctr_uniform: bool,
    /// The virtual GIC CPU interface every reported CPU has: the smallest of each size, `None`
    /// if some CPU has none.
    vgic: Option<VgicCaps>,
    /// The SVE vector lengths of every reported CPU.
    sve: SveView,
    /// Every reported CPU has the same `MIDR_EL1` and ID registers.
    identical: bool,
    /// The boot CPU's report: what "identical" compares with once the view is fixed.
    boot: CpuId,
    /// Fixed: see the module documentation.
    fixed: bool,
}

impl CpuFeatures {
    /// The view with only the boot CPU (platform index `cpu`) in it, open.
    pub fn new(cpu: usize, boot: CpuId) -> Self {
        let mut reported = [None; MAX_CPUS];
        reported[cpu % MAX_CPUS] = Some(boot);
        Self { reported, view: boot.regs, ctr: cachetype::sanitise(boot.ctr), ctr_uniform: true, vgic: boot.vgic(), sve: SveView::new(boot.sve), identical: true, boot, fixed: false }
    }

    /// CPU `cpu` has entered EL2 with `id`. Open view: it joins. Fixed view: it must be at
    /// least as capable (see [`CpuFeatures::check`]); its report is kept either way, so a later
    /// `CPU_ON` of a refused CPU can be refused at once ([`CpuFeatures::cpu_on_check`]).
    ///
    /// # Errors
    /// [`Weaker`]: the CPU must not enter the host.
    pub fn report(&mut self, cpu: usize, id: CpuId) -> Result<(), Weaker> {
        self.reported[cpu % MAX_CPUS] = Some(id);
        if self.fixed {
            self.check(&id)?;
            // Accepted, but with another cache type (a stronger one): from now on guests read
            // the combined value through the trap, wherever they run.
            self.ctr_uniform &= cachetype::sanitise(id.ctr) == self.ctr;
            return Ok(());
        }
        let mut cpus = self.reported.iter().flatten();
        let first = *cpus.next().unwrap_or(&id);
        self.view = first.regs;
        self.ctr = cachetype::sanitise(first.ctr);
        self.ctr_uniform = true;
        self.vgic = first.vgic();
        self.sve = SveView::new(first.sve);
        self.identical = true;
        for c in cpus {
            idreg::combine(&mut self.view, &c.regs);
            self.ctr_uniform &= cachetype::sanitise(c.ctr) == cachetype::sanitise(first.ctr);
            self.ctr = cachetype::combine(self.ctr, c.ctr);
            self.vgic = self.vgic.zip(c.vgic()).map(|(a, b)| a.min(b));
            self.sve.join(c.sve);
            self.identical &= c.same_implementation(&first);
        }
        Ok(())
    }

    /// Whether a CPU with `id` may run under the fixed view: every field at least the view's,
    /// the cache type guests read satisfied, the SVE lengths VMs may have given alike, at least
    /// the view's virtual GIC CPU interface, and identical to the others if pointer
    /// authentication relies on that.
    ///
    /// # Errors
    /// [`Weaker`].
    pub fn check(&self, id: &CpuId) -> Result<(), Weaker> {
        idreg::at_least(&self.view, &id.regs).map_err(|f| Weaker::Field { reg: f.reg_name, field: f.name })?;
        cachetype::at_least(self.ctr, id.ctr).map_err(|field| Weaker::Field { reg: "CTR_EL0", field })?;
        self.sve.check(id.sve).map_err(|_| Weaker::Field { reg: "ZCR_EL2", field: "LEN" })?;
        vgic_at_least(self.vgic, id.vgic())?;
        let relies_on_identical = !idreg::ptrauth_consistent(&self.view, false) && self.ptrauth();
        if relies_on_identical && !id.same_implementation(&self.boot) {
            return Err(Weaker::NotIdentical);
        }
        Ok(())
    }

    /// Before forwarding a host `CPU_ON` of CPU `cpu`: refused if the view is fixed and the
    /// CPU's report from an earlier boot fails [`CpuFeatures::check`]. A CPU never seen is
    /// allowed (its entry path checks it).
    ///
    /// # Errors
    /// [`Weaker`].
    pub fn cpu_on_check(&self, cpu: usize) -> Result<(), Weaker> {
        match self.reported.get(cpu) {
            Some(Some(id)) if self.fixed => self.check(id),
            _ => Ok(()),
        }
    }

    /// Fixes the view (idempotent). From now on CPUs only join if they are at least as capable.
    pub fn fix(&mut self) {
        self.fixed = true;
    }

    /// Whether the view is fixed.
    pub fn fixed(&self) -> bool {
        self.fixed
    }

    /// The combined ID registers.
    pub fn view(&self) -> &[u64; NR_IDREGS] {
        &self.view
    }

    /// The combined ID registers, for tests that model other CPUs.
    #[cfg(test)]
    pub(crate) fn view_mut(&mut self) -> &mut [u64; NR_IDREGS] {
        &mut self.view
    }

    /// The combined `CTR_EL0`, which guests read: every CPU satisfies it.
    pub fn ctr(&self) -> u64 {
        self.ctr
    }

    /// Whether guests must read the cache type through EL2 (`HCR_EL2.TID2`): some accepted CPU
    /// has a `CTR_EL0` other than the rest. Where every CPU has the same, a guest's direct
    /// read is the combined value, on every CPU it can move to (a later CPU with a weaker
    /// one is refused; one with another, stronger one turns the trap on before it runs a
    /// vCPU), so no trap is needed, as under KVM.
    pub fn ctr_trap(&self) -> bool {
        !self.ctr_uniform
    }

    /// The virtual GIC CPU interface vCPUs may use: every CPU has at least these list
    /// registers, priority and preemption bits (`None`: some CPU has no interface).
    pub fn vgic(&self) -> Option<VgicCaps> {
        self.vgic
    }

    /// The SVE vector lengths of the CPUs, and which a VM may have.
    pub fn sve(&self) -> &SveView {
        &self.sve
    }

    /// Every CPU reported identical `MIDR_EL1` and ID registers.
    pub fn identical(&self) -> bool {
        self.identical
    }

    /// VMs may be given pointer authentication ([`idreg::ptrauth_consistent`]).
    pub fn ptrauth(&self) -> bool {
        idreg::ptrauth_consistent(&self.view, self.identical)
    }

    /// Every CPU has FEAT_MTE2.
    pub fn mte2(&self) -> bool {
        idreg::mte2(&self.view)
    }

    /// Every CPU has FEAT_S2FWB.
    pub fn s2fwb(&self) -> bool {
        idreg::s2fwb(&self.view)
    }

    /// The largest guest IPA size every CPU can translate: within the smallest PARange, and
    /// 39 bits below a 44-bit PA, where a stage 2 may not start at level 0
    /// ([`crate::mem::pgtable::stage2_max_ia_bits`]).
    pub fn max_ipa_bits(&self) -> u8 {
        crate::mem::pgtable::stage2_max_ia_bits(idreg::pa_bits(&self.view))
    }

    /// The firmware workaround levels every CPU supports.
    pub fn fw_provided(&self) -> Provided {
        Provided::from_id_regs(self.view[idreg::idx(4, 0)], self.view[idreg::idx(7, 1)])
    }
}

/// Whether a CPU's virtual GIC CPU interface `cpu` has at least what the view `view` promises.
///
/// # Errors
/// The first size below the view's (no interface at all: `ID_AA64PFR0_EL1.GIC`).
fn vgic_at_least(view: Option<VgicCaps>, cpu: Option<VgicCaps>) -> Result<(), Weaker> {
    let Some(v) = view else { return Ok(()) };
    let field = match cpu {
        None => return Err(Weaker::Field { reg: "ID_AA64PFR0_EL1", field: "GIC" }),
        Some(c) if c.nr_lrs < v.nr_lrs => "ListRegs",
        Some(c) if c.pri_bits < v.pri_bits => "PRIbits",
        Some(c) if c.pre_bits < v.pre_bits => "PREbits",
        Some(_) => return Ok(()),
    };
    Err(Weaker::Field { reg: "ICH_VTR_EL2", field })
}

/// The bytes of memory whose allocation tags one `STGM` writes: `GMID_EL1.BS` (bits 3:0) is
/// the log2 of that block in 4-byte words, 16 to 256 bytes (`BS` 2 to 6). A reserved value
/// gives 16, the smallest: stepping by less than the block only repeats stores, by more would
/// skip tags.
pub const fn stgm_block_bytes(gmid_el1: u64) -> u64 {
    match gmid_el1 & 0xF {
        bs @ 2..=6 => 4 << bs,
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::fwreg::{NOT_AVAIL, NOT_REQUIRED};
    use crate::cpu::idreg::idx;

    const PFR0: usize = idx(4, 0);
    const PFR1: usize = idx(4, 1);
    const ISAR1: usize = idx(6, 1);
    const ISAR2: usize = idx(6, 2);
    const MMFR0: usize = idx(7, 0);
    const MMFR1: usize = idx(7, 1);
    const QARMA5: u64 = 1 << 4 | 1 << 24;
    const IMPDEF: u64 = 1 << 8 | 1 << 28;
    /// `ICH_VTR_EL2`: 4 list registers, 5 priority and preemption bits.
    const VTR: u64 = 3 | 4 << 26 | 4 << 29;
    /// `CTR_EL0`: DIC, IDC, 64-byte lines, PIPT.
    const CTR: u64 = 0xB444_C004;

    /// A big core: CSV2 1, MTE2, 48-bit PA, QARMA5 PAuth, AES 2.
    fn big() -> CpuId {
        let mut regs = [0u64; NR_IDREGS];
        regs[PFR0] = 0x11 | 1 << 56;
        regs[PFR1] = 2 << 8;
        regs[ISAR1] = QARMA5;
        regs[idx(6, 0)] = 2 << 4;
        regs[MMFR0] = 5;
        CpuId { midr: 0x410F_D0C0, regs, ctr: CTR, ich_vtr: Some(VTR), sve: VqSet(0b1011) }
    }

    fn with(mut c: CpuId, reg: usize, v: u64) -> CpuId {
        c.regs[reg] = v;
        c
    }

    #[test]
    fn stgm_steps_by_the_block_gmid_names_and_never_by_more() {
        for (bs, bytes) in [(2, 16), (3, 32), (4, 64), (5, 128), (6, 256)] {
            assert_eq!(stgm_block_bytes(bs | 0xABC0), bytes, "BS {bs}; the other bits are ignored");
            // The tag-clearing loop stores four blocks a turn: whole turns cover a page and a
            // 2 MiB block.
            assert_eq!(4096 % (4 * bytes), 0);
        }
        for reserved in [0, 1, 7, 8, 15] {
            assert_eq!(stgm_block_bytes(reserved), 16);
        }
    }

    #[test]
    fn a_little_core_lowers_the_open_view() {
        let little = CpuId { midr: 0x410F_D050, ..with(with(big(), PFR0, 0x11), PFR1, 0) };
        let mut f = CpuFeatures::new(0, big());
        assert!(f.mte2() && f.ptrauth());
        assert_eq!(f.fw_provided().wa1, NOT_REQUIRED);
        assert_eq!(f.report(1, little), Ok(()));
        assert!(!f.mte2(), "MTE only if every CPU has it");
        assert!(!f.identical());
        assert!(f.ptrauth(), "QARMA5 on both: no need to be identical");
        // The firmware levels come from every CPU, not the boot CPU.
        assert_eq!(f.fw_provided().wa1, NOT_AVAIL);
        // Reported again after CPU_OFF/CPU_ON: the view is recomputed, not lowered twice.
        assert_eq!(f.report(1, big()), Ok(()));
        assert!(f.mte2() && f.identical());
        assert_eq!(f.fw_provided().wa1, NOT_REQUIRED);
    }

    #[test]
    fn the_ipa_limit_is_the_smallest_parange() {
        let mut f = CpuFeatures::new(0, big());
        assert_eq!(f.max_ipa_bits(), 48);
        f.report(1, with(big(), MMFR0, 1)).unwrap();
        assert_eq!(f.max_ipa_bits(), 36);
        // 40 and 42 bits of PA: no level-0 stage 2, so 39 bits.
        f.report(1, with(big(), MMFR0, 2)).unwrap();
        assert_eq!(f.max_ipa_bits(), 39);
        f.report(1, with(big(), MMFR0, 3)).unwrap();
        assert_eq!(f.max_ipa_bits(), 39);
        f.report(1, with(big(), MMFR0, 4)).unwrap();
        assert_eq!(f.max_ipa_bits(), 44);
    }

    #[test]
    fn pauth_levels_or_algorithms_that_differ_give_no_pauth() {
        // PAuth (APA 1) next to PAuth2/FPAC (APA 3, 4): different PACs.
        for apa in [3u64, 4, 5] {
            let mut f = CpuFeatures::new(0, big());
            f.report(1, with(big(), ISAR1, apa << 4 | 1 << 24)).unwrap();
            assert!(!f.ptrauth(), "APA 1 vs {apa}");
            assert_eq!(f.view()[ISAR1] >> 4 & 0xF, 0, "exact field: CPUs differ, none");
        }
        // QARMA5 next to QARMA3.
        let mut f = CpuFeatures::new(0, big());
        f.report(1, with(with(big(), ISAR1, 0), ISAR2, 1 << 12 | 1 << 8)).unwrap();
        assert!(!f.ptrauth());
        // Same QARMA3 everywhere is fine.
        let q3 = with(with(big(), ISAR1, 0), ISAR2, 1 << 12 | 1 << 8);
        let mut f = CpuFeatures::new(0, q3);
        f.report(1, CpuId { midr: 1, ..q3 }).unwrap();
        assert!(f.ptrauth());
    }

    #[test]
    fn an_impdef_algorithm_is_trusted_only_on_identical_cpus() {
        let a = with(big(), ISAR1, IMPDEF);
        let mut f = CpuFeatures::new(0, a);
        assert!(f.ptrauth(), "one CPU: identical to itself");
        f.report(1, a).unwrap();
        assert!(f.ptrauth(), "same MIDR, same registers");
        // Same ID registers, another implementation: its algorithm may differ.
        f.report(1, CpuId { midr: 0x4100_0000, ..a }).unwrap();
        assert!(!f.ptrauth());
        // Same MIDR, another ID register (revision with other features).
        f.report(1, with(a, idx(6, 0), 1 << 4)).unwrap();
        assert!(!f.ptrauth());
    }

    #[test]
    fn a_fixed_view_refuses_weaker_cpus() {
        let mut f = CpuFeatures::new(0, big());
        f.fix();
        assert!(f.fixed());
        assert_eq!(f.report(1, big()), Ok(()), "as capable");
        let mut stronger = with(big(), idx(6, 0), 2 << 4 | 1 << 8);
        stronger.midr = 0x410F_D400;
        assert_eq!(f.report(1, stronger), Ok(()), "more capable: fine");
        assert_eq!(f.report(1, with(big(), PFR1, 0)), Err(Weaker::Field { reg: "ID_AA64PFR1_EL1", field: "MTE" }));
        assert_eq!(
            f.report(1, with(big(), PFR0, 0x11)),
            Err(Weaker::Field { reg: "ID_AA64PFR0_EL1", field: "CSV2" }),
            "firmware workaround levels were decided from CSV2"
        );
        assert_eq!(f.report(1, with(big(), MMFR0, 2)), Err(Weaker::Field { reg: "ID_AA64MMFR0_EL1", field: "PARange" }));
        assert_eq!(
            f.report(1, with(big(), ISAR1, 3 << 4 | 1 << 24)),
            Err(Weaker::Field { reg: "ID_AA64ISAR1_EL1", field: "APA" }),
            "PAuth2 is not 'more' PAuth: exact"
        );
        assert_eq!(f.report(1, with(big(), MMFR1, 0)), Ok(()), "ECBHB was 0 already");
        // The failed report is kept: the next CPU_ON of that CPU is refused before it starts.
        f.report(1, with(big(), PFR1, 0)).unwrap_err();
        assert!(f.cpu_on_check(1).is_err());
        assert_eq!(f.cpu_on_check(2), Ok(()), "never seen: checked when it enters EL2");
        assert_eq!(f.view()[PFR1] >> 8 & 0xF, 2, "a refused CPU does not change the view");
    }

    #[test]
    fn the_virtual_gic_is_the_smallest_and_a_fixed_view_keeps_it() {
        let caps = |lrs: u8, pri: u8, pre: u8| Some(VgicCaps { nr_lrs: lrs, pri_bits: pri, pre_bits: pre });
        let mut f = CpuFeatures::new(0, big());
        assert_eq!(f.vgic(), caps(4, 5, 5));
        f.report(1, CpuId { ich_vtr: Some(1 | 6 << 26 | 7 << 29), ..big() }).unwrap();
        assert_eq!(f.vgic(), caps(2, 5, 5), "each size the smallest");
        assert!(f.identical(), "same MIDR and ID registers");
        f.report(2, CpuId { ich_vtr: None, ..big() }).unwrap();
        assert_eq!(f.vgic(), None);
        f.report(2, big()).unwrap();
        f.fix();
        // 2 list registers in the view: a CPU with 2 is fine, with 1 not.
        assert_eq!(f.report(3, CpuId { ich_vtr: Some(1 | 4 << 26 | 4 << 29), ..big() }), Ok(()));
        assert_eq!(f.report(3, CpuId { ich_vtr: Some(4 << 26 | 4 << 29), ..big() }), Err(Weaker::Field { reg: "ICH_VTR_EL2", field: "ListRegs" }));
        assert_eq!(f.vgic(), caps(2, 5, 5), "a refused CPU does not change the view");
        assert!(f.cpu_on_check(3).is_err());
        // A view without a virtual GIC asks nothing of a CPU's.
        let mut f = CpuFeatures::new(0, CpuId { ich_vtr: None, ..big() });
        f.fix();
        assert_eq!(f.report(1, CpuId { ich_vtr: Some(0), ..big() }), Ok(()));
    }

    #[test]
    fn guests_read_a_cache_type_every_cpu_satisfies() {
        let no_dic = CpuId { ctr: CTR & !cachetype::DIC, ..big() };
        // Open: a CPU without DIC takes it out of what guests read, who now must read it
        // through EL2 (directly they would read DIC on the other CPU).
        let mut f = CpuFeatures::new(0, big());
        f.report(1, big()).unwrap();
        assert_eq!((f.ctr(), f.ctr_trap()), (CTR, false), "CPUs agree: read directly");
        f.report(1, no_dic).unwrap();
        assert_eq!((f.ctr(), f.ctr_trap()), (CTR & !cachetype::DIC, true));
        f.report(1, big()).unwrap();
        assert!(!f.ctr_trap(), "open: the view is made again from the reports");
        assert!(f.identical(), "same MIDR and ID registers");
        // Fixed with DIC: a late CPU without it is refused (a guest that skipped the
        // instruction-cache invalidation would run stale instructions there).
        let mut f = CpuFeatures::new(0, big());
        f.fix();
        assert_eq!(f.report(1, no_dic), Err(Weaker::Field { reg: "CTR_EL0", field: "DIC" }));
        assert_eq!(f.ctr(), CTR, "a refused CPU does not change what guests read");
        assert!(f.cpu_on_check(1).is_err());
        assert_eq!(f.report(2, CpuId { ctr: CTR & !(0xF << 16) | 3 << 16, ..big() }), Err(Weaker::Field { reg: "CTR_EL0", field: "DminLine" }));
        assert!(!f.ctr_trap(), "refused CPUs never run vCPUs");
        // Fixed without DIC: a CPU with it is fine (guests do not rely on it), but from then on
        // guests read the combined value through EL2, there too.
        let mut f = CpuFeatures::new(0, no_dic);
        f.fix();
        assert!(!f.ctr_trap());
        assert_eq!(f.report(1, big()), Ok(()));
        assert!(f.ctr_trap());
        // RES0 bits of a CPU's CTR_EL0 never reach a guest.
        let f = CpuFeatures::new(0, CpuId { ctr: CTR | 1 << 30 | 1 << 63, ..big() });
        assert_eq!(f.ctr(), CTR);
    }

    #[test]
    fn an_open_view_never_refuses() {
        let mut f = CpuFeatures::new(0, big());
        assert_eq!(f.report(1, with(big(), PFR1, 0)), Ok(()));
        assert_eq!(f.cpu_on_check(1), Ok(()));
    }

    #[test]
    fn a_fixed_view_that_trusts_impdef_pauth_needs_identical_cpus() {
        let a = with(big(), ISAR1, IMPDEF);
        let mut f = CpuFeatures::new(0, a);
        f.fix();
        assert_eq!(f.report(1, a), Ok(()));
        assert_eq!(f.report(1, CpuId { midr: 0x4100_0000, ..a }), Err(Weaker::NotIdentical));
        // Without pointer authentication in the view, a different MIDR is fine.
        let mut f = CpuFeatures::new(0, big());
        f.fix();
        assert_eq!(f.report(1, CpuId { midr: 0x4100_0000, ..big() }), Ok(()));
    }
}
