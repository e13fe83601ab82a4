//! Per-VM ID registers: the 56 registers at op0=3, op1=0, CRn=0, CRm=1..7, op2=0..7.
//!
//! Place in the flow: *state*, per VM, built at `VM_CREATE` and read by the guest through a
//! trap (`HCR_EL2.TID3`) without taking a lock.
//!
//! 1. Each CPU reports its own values when it enters EL2 ([`crate::cpu::features`]); they are combined
//!    **field by field** with the field's rule: *lower-safe* fields take the smallest value (a feature
//!    level every CPU has), *higher-safe* the largest, *exact* fields the common value or the
//!    field's safe value if CPUs differ. Signed fields (where `0xF` means "not implemented")
//!    compare as signed. The pointer-authentication fields are exact (CPUs with
//!    different PAC algorithms or levels compute different PACs).
//! 2. The result is restricted to what EL2 supports for that VM: every field has a maximum
//!    EL2 allows (for example no SME, AMU, MPAM or nested virtualisation, which EL2 does
//!    not switch; AArch64 only; MTE, pointer authentication, SVE (`ID_AA64PFR0_EL1.SVE` and
//!    `ID_AA64ZFR0_EL1`) and the PMU only when the VM has them; PARange from the VM's IPA
//!    size); a field the VM's policy hides is zero whatever its
//!    rule. A field EL2 does not describe reads as zero, and
//!    so do all AArch32 ID registers: deny by default. Fields where zero is itself a claim are
//!    described so they never default to it: `ID_AA64PFR1_EL1.MTE_frac` reads 0xF (no
//!    asynchronous tag-check faults) for every VM, and `ID_AA64MMFR2_EL1.CCIDX` is the CPUs'
//!    common value (whether `CCSIDR2_EL1` exists is the hardware's; the `CCSIDR_EL1` guests
//!    read through EL2 has the same bits in both formats, [`crate::cpu::cachetype::ccsidr`]).
//! 3. The host may write a VM's ID registers before it first runs, lowering fields to values
//!    that are still safe (never above what step 2 gave); bits of undescribed fields must stay
//!    zero. After the first run an identical write succeeds and any other is `Busy`.
//!
//! The static [`FIELDS`] table is checked once at start-up ([`check_table`]).

/// Number of ID registers.
pub const NR_IDREGS: usize = 56;

/// Index of `(CRm, op2)` in the 56-register space.
pub const fn idx(crm: u8, op2: u8) -> usize {
    (crm as usize - 1) * 8 + op2 as usize
}

/// The index of a system-register ID (`shared_abi::reg::sysreg`) in the ID space, if it is
/// one of the 56.
pub fn index_of(id: u64) -> Option<usize> {
    (0..NR_IDREGS).find(|&i| reg_id(i) == id)
}

/// The KVM `ONE_REG` ID of ID register `i`.
pub const fn reg_id(i: usize) -> u64 {
    shared_abi::reg::sysreg(3, 0, 0, (i / 8 + 1) as u64, (i % 8) as u64)
}

/// How a field combines and which values are safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A smaller value is safe (a feature level).
    Lower,
    /// A larger value is safe.
    Higher,
    /// Only the same value is safe; CPUs that differ give `safe`.
    Exact {
        /// Value used when CPUs differ.
        safe: u8,
    },
}

/// A 4-bit field of an ID register.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// Register name (for messages).
    pub reg_name: &'static str,
    /// Register index ([`idx`]).
    pub reg: usize,
    /// Field name.
    pub name: &'static str,
    /// Bit position (a multiple of 4).
    pub shift: u8,
    /// Combination rule.
    pub rule: Rule,
    /// Values compare as signed 4-bit numbers (`0xF` = -1 = not implemented).
    pub signed: bool,
    /// The most EL2 supports (as a 4-bit value, signed if `signed`).
    pub max: i8,
    /// What the field needs from the VM to go beyond its restricted maximum.
    pub needs: Needs,
}

/// A VM property a field depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: `max` applies to every VM.
    Nothing,
    /// Only a VM with MTE (otherwise the field is 0).
    Mte,
    /// Only a VM with pointer authentication (otherwise 0).
    Ptrauth,
    /// Only a VM allowed the PMU (otherwise 0).
    Pmu,
    /// Only a VM with SVE (otherwise 0).
    Sve,
    /// The VM's IPA size (PARange), instead of `max`.
    IpaSize,
}

/// What a VM is allowed, for [`restrict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmPolicy {
    /// MTE enabled.
    pub mte: bool,
    /// Pointer authentication enabled.
    pub ptrauth: bool,
    /// PMU allowed.
    pub pmu: bool,
    /// Guest IPA size in bits.
    pub ipa_bits: u8,
    /// Protected VM (no LORegions either).
    pub protected: bool,
    /// SVE enabled.
    pub sve: bool,
}

macro_rules! fields {
    ($($reg:ident ($crm:literal, $op2:literal): [$($name:ident @ $shift:literal $rule:ident max $max:literal $(if $needs:ident)?),* $(,)?];)*) => {
        /// Every field EL2 exposes, with its rule and the most EL2 supports.
        pub const FIELDS: &[Field] = &[
            $($(Field {
                reg_name: stringify!($reg),
                reg: idx($crm, $op2),
                name: stringify!($name),
                shift: $shift,
                rule: fields!(@rule $rule),
                signed: fields!(@signed $rule),
                max: $max,
                needs: fields!(@needs $($needs)?),
            },)*)*
        ];
    };
    (@rule lower) => { Rule::Lower };
    (@rule signed_lower) => { Rule::Lower };
    (@rule exact) => { Rule::Exact { safe: 0 } };
    (@signed exact) => { false };
    (@signed signed_lower) => { true };
    (@signed lower) => { false };
    (@needs) => { Needs::Nothing };
    (@needs mte) => { Needs::Mte };
    (@needs ptrauth) => { Needs::Ptrauth };
    (@needs pmu) => { Needs::Pmu };
    (@needs sve) => { Needs::Sve };
    (@needs ipa) => { Needs::IpaSize };
}

fields! {
    ID_AA64PFR0_EL1 (4, 0): [
        EL0 @ 0 lower max 1, EL1 @ 4 lower max 1, EL2 @ 8 lower max 0, EL3 @ 12 lower max 0,
        FP @ 16 signed_lower max 1, AdvSIMD @ 20 signed_lower max 1, GIC @ 24 lower max 0,
        RAS @ 28 lower max 0, SVE @ 32 lower max 1 if sve, SEL2 @ 36 lower max 0, MPAM @ 40 lower max 0,
        AMU @ 44 lower max 0, DIT @ 48 lower max 1, RME @ 52 lower max 0, CSV2 @ 56 lower max 3,
        CSV3 @ 60 lower max 1,
    ];
    ID_AA64PFR1_EL1 (4, 1): [
        BT @ 0 lower max 1, SSBS @ 4 lower max 2, MTE @ 8 lower max 3 if mte, CSV2_frac @ 32 lower max 2,
        // 0 would claim asynchronous tag-check faults are supported (FEAT_MTE_ASYNC); 0xF says
        // they are not. Conservative: every VM reads 0xF, whatever the CPUs support.
        MTE_frac @ 40 signed_lower max -1,
    ];
    ID_AA64DFR0_EL1 (5, 0): [
        DebugVer @ 0 lower max 6, PMUVer @ 8 lower max 8 if pmu, BRPs @ 12 lower max 15,
        WRPs @ 20 lower max 15, CTX_CMPs @ 28 lower max 15, DoubleLock @ 36 signed_lower max -1,
    ];
    ID_AA64ISAR0_EL1 (6, 0): [
        AES @ 4 lower max 2, SHA1 @ 8 lower max 1, SHA2 @ 12 lower max 2, CRC32 @ 16 lower max 1,
        Atomic @ 20 lower max 2, RDM @ 28 lower max 1, SHA3 @ 32 lower max 1, SM3 @ 36 lower max 1,
        SM4 @ 40 lower max 1, DP @ 44 lower max 1, FHM @ 48 lower max 1, TS @ 52 lower max 2,
        TLB @ 56 lower max 2, RNDR @ 60 lower max 1,
    ];
    ID_AA64ISAR1_EL1 (6, 1): [
        // The pointer-authentication fields are exact: CPUs with different algorithms or PAuth
        // levels (PAuth vs PAuth2/FPAC) compute different PACs, so a mix is no PAuth at all.
        DPB @ 0 lower max 2, APA @ 4 exact max 5 if ptrauth, API @ 8 exact max 1 if ptrauth,
        JSCVT @ 12 lower max 1, FCMA @ 16 lower max 1, LRCPC @ 20 lower max 3,
        GPA @ 24 exact max 1 if ptrauth, GPI @ 28 exact max 1 if ptrauth, FRINTTS @ 32 lower max 1,
        SB @ 36 lower max 1, SPECRES @ 40 lower max 1, BF16 @ 44 lower max 2, DGH @ 48 lower max 1,
        I8MM @ 52 lower max 1, XS @ 56 lower max 1,
    ];
    ID_AA64ISAR2_EL1 (6, 2): [
        RPRES @ 4 lower max 1, GPA3 @ 8 exact max 1 if ptrauth, APA3 @ 12 exact max 5 if ptrauth,
        BC @ 20 lower max 1, PAC_frac @ 24 lower max 1 if ptrauth, CLRBHB @ 28 lower max 1,
    ];
    ID_AA64MMFR0_EL1 (7, 0): [
        PARange @ 0 lower max 6 if ipa, ASIDBits @ 4 lower max 2, BigEnd @ 8 lower max 1,
        BigEndEL0 @ 16 lower max 1, TGran16 @ 20 lower max 1, TGran64 @ 24 signed_lower max 0,
        TGran4 @ 28 signed_lower max 0,
    ];
    ID_AA64MMFR1_EL1 (7, 1): [
        HAFDBS @ 0 lower max 2, VMIDBits @ 4 lower max 2, HPDS @ 12 lower max 2, LO @ 16 lower max 0,
        PAN @ 20 lower max 3, SpecSEI @ 24 lower max 1, XNX @ 28 lower max 1, ETS @ 36 lower max 2,
        AFP @ 44 lower max 1, nTLBPA @ 48 lower max 1, CMOW @ 56 lower max 1, ECBHB @ 60 lower max 1,
    ];
    ID_AA64MMFR2_EL1 (7, 2): [
        CnP @ 0 lower max 1, UAO @ 4 lower max 1, LSM @ 8 lower max 1, IESB @ 12 lower max 1,
        VARange @ 16 lower max 1,
        // The format of CCSIDR_EL1 and whether CCSIDR2_EL1 exists: the hardware's, which
        // decides whether a guest's CCSIDR2_EL1 access traps or is UNDEFINED (0 is a format,
        // not "absent"). EL2's fabricated CCSIDR_EL1 reads the same in both formats.
        CCIDX @ 20 exact max 0, ST @ 28 lower max 1, AT @ 32 lower max 1, IDS @ 36 lower max 1,
        FWB @ 40 lower max 0, TTL @ 48 lower max 1, BBM @ 52 lower max 2, EVT @ 56 lower max 2,
        E0PD @ 60 lower max 1,
    ];
    // (Last: its field names repeat ID_AA64ISAR0/1_EL1's, which come first by name.) The SVE
    // instructions a VM with SVE may use: SVE2 (SVEver 1; SVE2p1 is not offered) and
    // its optional groups. Zero for every other VM, as ID_AA64PFR0_EL1.SVE.
    ID_AA64ZFR0_EL1 (4, 4): [
        SVEver @ 0 lower max 1 if sve, AES @ 4 lower max 2 if sve, BitPerm @ 16 lower max 1 if sve,
        BF16 @ 20 lower max 2 if sve, SHA3 @ 32 lower max 1 if sve, SM4 @ 40 lower max 1 if sve,
        I8MM @ 44 lower max 1 if sve, F32MM @ 52 lower max 1 if sve, F64MM @ 56 lower max 1 if sve,
    ];
}

fn get(v: u64, f: &Field) -> i8 {
    let raw = ((v >> f.shift) & 0xF) as i8;
    if f.signed && raw >= 8 {
        raw - 16
    } else {
        raw
    }
}

fn put(v: u64, f: &Field, x: i8) -> u64 {
    (v & !(0xF << f.shift)) | (((x as u8) & 0xF) as u64) << f.shift
}

/// Bits of register `r` that described fields cover.
fn described_mask(r: usize) -> u64 {
    FIELDS.iter().filter(|f| f.reg == r).fold(0, |m, f| m | 0xF << f.shift)
}

/// Checks the static table: registers in range, fields 4-bit aligned, no overlaps, no
/// duplicate names per register, maxima in the field's range. Run once at start-up.
///
/// # Errors
/// A message naming the first bad field.
pub fn check_table(fields: &[Field]) -> Result<(), &'static str> {
    for (i, f) in fields.iter().enumerate() {
        if f.reg >= NR_IDREGS || f.shift % 4 != 0 || f.shift > 60 {
            return Err(f.name);
        }
        let (lo, hi) = if f.signed { (-8, 7) } else { (0, 15) };
        if f.max < lo || f.max > hi {
            return Err(f.name);
        }
        if fields[i + 1..].iter().any(|g| g.reg == f.reg && (g.shift == f.shift || g.name == f.name)) {
            return Err(f.name);
        }
    }
    Ok(())
}

/// Combines one more CPU's registers into `acc` (the first CPU's values start it).
pub fn combine(acc: &mut [u64; NR_IDREGS], cpu: &[u64; NR_IDREGS]) {
    combine_with(FIELDS, acc, cpu);
}

fn combine_with(fields: &[Field], acc: &mut [u64; NR_IDREGS], cpu: &[u64; NR_IDREGS]) {
    for f in fields {
        let (a, b) = (get(acc[f.reg], f), get(cpu[f.reg], f));
        let v = match f.rule {
            Rule::Lower => a.min(b),
            Rule::Higher => a.max(b),
            Rule::Exact { safe } => {
                if a == b {
                    a
                } else {
                    safe as i8
                }
            }
        };
        acc[f.reg] = put(acc[f.reg], f, v);
    }
}

/// Whether every CPU (the combined values) has both address and generic pointer
/// authentication *with the same algorithm*: QARMA5 (`APA` + `GPA`) or QARMA3 (`APA3` +
/// `GPA3`), or the IMPLEMENTATION DEFINED algorithm (`API` + `GPI`, with `APA`/`GPA` zero) when
/// `identical` says every CPU has the same `MIDR_EL1` and ID registers (nothing else says two
/// CPUs' IMPLEMENTATION DEFINED algorithms agree). The pointer-authentication fields combine
/// with the exact rule, so CPUs that differ in any of them leave zeros and no pair.
pub fn ptrauth_consistent(s: &[u64; NR_IDREGS], identical: bool) -> bool {
    let (isar1, isar2) = (s[idx(6, 1)], s[idx(6, 2)]);
    let f = |v: u64, shift: u32| (v >> shift) & 0xF != 0;
    (f(isar1, 4) && f(isar1, 24)) || (f(isar2, 12) && f(isar2, 8)) || (identical && f(isar1, 8) && f(isar1, 28))
}

/// Whether this CPU's registers have any pointer authentication (`APA`, `API`, `APA3`, `GPA`,
/// `GPI` or `GPA3`): `HCR_EL2.API/APK` exist only then.
pub fn has_pauth(r: &[u64; NR_IDREGS]) -> bool {
    r[idx(6, 1)] & (0xF << 4 | 0xF << 8 | 0xF << 24 | 0xF << 28) != 0 || r[idx(6, 2)] & (0xF << 8 | 0xF << 12) != 0
}

/// Whether a CPU's registers `cpu` are at least what the combined `view` promises, field by
/// field: a lower-safe field at or above the view, a higher-safe one at or below, an exact one
/// equal. A CPU that passes can run anything built from `view` (including every VM's values,
/// which [`restrict`] only lowers).
///
/// # Errors
/// The first field where `cpu` is weaker.
pub fn at_least(view: &[u64; NR_IDREGS], cpu: &[u64; NR_IDREGS]) -> Result<(), &'static Field> {
    at_least_with(FIELDS, view, cpu)
}

fn at_least_with<'f>(fields: &'f [Field], view: &[u64; NR_IDREGS], cpu: &[u64; NR_IDREGS]) -> Result<(), &'f Field> {
    for f in fields {
        let (v, c) = (get(view[f.reg], f), get(cpu[f.reg], f));
        let ok = match f.rule {
            Rule::Lower => c >= v,
            Rule::Higher => c <= v,
            Rule::Exact { .. } => c == v,
        };
        if !ok {
            return Err(f);
        }
    }
    Ok(())
}

/// Physical address size in bits from `ID_AA64MMFR0_EL1.PARange` of the combined values (the
/// smallest over the CPUs). Reserved encodings count as 32 bits.
pub fn pa_bits(s: &[u64; NR_IDREGS]) -> u8 {
    match s[idx(7, 0)] & 0xF {
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 32,
    }
}

/// Whether every CPU (the sanitised values) implements FEAT_MTE2 (`ID_AA64PFR1_EL1.MTE >= 2`):
/// allocation tags in memory, which an MTE VM needs.
pub fn mte2(s: &[u64; NR_IDREGS]) -> bool {
    (s[idx(4, 1)] >> 8) & 0xF >= 2
}

/// Whether every CPU (the sanitised values) implements FEAT_S2FWB (`ID_AA64MMFR2_EL1.FWB`):
/// EL2 may then run guests with `HCR_EL2.FWB` (guests themselves never see it: no nested EL2).
pub fn s2fwb(s: &[u64; NR_IDREGS]) -> bool {
    (s[idx(7, 2)] >> 40) & 0xF >= 1
}

/// PARange for an IPA size (`ID_AA64MMFR0_EL1.PARange` encoding).
pub fn parange(ipa_bits: u8) -> i8 {
    match ipa_bits {
        0..=32 => 0,
        33..=36 => 1,
        37..=40 => 2,
        41..=42 => 3,
        43..=44 => 4,
        45..=48 => 5,
        _ => 6,
    }
}

/// A VM's ID registers from the sanitised values: every described field capped at what EL2
/// supports for this VM, everything else zero. A field the VM's policy hides reads as its
/// hidden value (0) whatever its rule: neither a higher-safe nor an exact combination may bring
/// it back.
pub fn restrict(sanitised: &[u64; NR_IDREGS], p: &VmPolicy) -> [u64; NR_IDREGS] {
    restrict_with(FIELDS, sanitised, p)
}

fn restrict_with(fields: &[Field], sanitised: &[u64; NR_IDREGS], p: &VmPolicy) -> [u64; NR_IDREGS] {
    let mut out = [0u64; NR_IDREGS];
    for f in fields {
        let allowed = match f.needs {
            Needs::Nothing => true,
            Needs::Mte => p.mte,
            Needs::Ptrauth => p.ptrauth,
            Needs::Pmu => p.pmu && !p.protected,
            Needs::Sve => p.sve,
            Needs::IpaSize => true,
        } && !(p.protected && f.name == "LO");
        let max = if f.needs == Needs::IpaSize { parange(p.ipa_bits) } else { f.max };
        let have = get(sanitised[f.reg], f);
        let v = match f.rule {
            Rule::Lower if allowed => have.min(max),
            // Lower-safe: a signed field may stay below zero (not implemented).
            Rule::Lower => have.min(0),
            Rule::Higher if allowed => have.max(max),
            Rule::Exact { .. } if allowed => have,
            Rule::Higher | Rule::Exact { .. } => 0,
        };
        out[f.reg] = put(out[f.reg], f, v);
    }
    out
}

/// Whether `value` may be written to register `r` of a VM whose ID registers were created as
/// `limit`: every described field still safe against the limit, every other bit zero.
pub fn write_ok(r: usize, value: u64, limit: u64) -> bool {
    if value & !described_mask(r) != 0 {
        return false;
    }
    FIELDS.iter().filter(|f| f.reg == r).all(|f| {
        let (v, l) = (get(value, f), get(limit, f));
        match f.rule {
            Rule::Lower => v <= l,
            Rule::Higher => v >= l,
            Rule::Exact { .. } => v == l,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: VmPolicy = VmPolicy { mte: false, ptrauth: false, pmu: false, ipa_bits: 36, protected: false, sve: false };
    const PFR0: usize = idx(4, 0);
    const ISAR1: usize = idx(6, 1);
    const MMFR0: usize = idx(7, 0);
    const DFR0: usize = idx(5, 0);

    fn field(name: &str) -> &'static Field {
        FIELDS.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn the_table_is_well_formed() {
        assert_eq!(check_table(FIELDS), Ok(()));
        assert_eq!(reg_id(PFR0), shared_abi::reg::sysreg(3, 0, 0, 4, 0));
        assert_eq!(index_of(reg_id(55)), Some(55));
        assert_eq!(index_of(shared_abi::reg::SYSREGS[0].1), None);
    }

    #[test]
    fn bad_tables_are_caught() {
        let mut bad = [*field("FP"), *field("AdvSIMD")];
        bad[1].shift = bad[0].shift;
        assert_eq!(check_table(&bad), Err("FP"), "overlap: the first of the pair is named");
        let mut bad = [*field("CSV2")];
        bad[0].shift = 62;
        assert!(check_table(&bad).is_err(), "misaligned");
        let mut bad = [*field("FP")];
        bad[0].max = 9;
        assert!(check_table(&bad).is_err(), "signed max out of range");
        let mut bad = [*field("FP")];
        bad[0].reg = NR_IDREGS;
        assert!(check_table(&bad).is_err(), "register out of range");
    }

    #[test]
    fn combining_cpus_takes_the_safe_value_per_field() {
        let mut a = [0u64; NR_IDREGS];
        let mut b = [0u64; NR_IDREGS];
        // CPU a: AES 2, FP 1; CPU b: AES 1, FP not implemented (-1).
        a[idx(6, 0)] = 2 << 4;
        b[idx(6, 0)] = 1 << 4;
        a[PFR0] = 1 << 16;
        b[PFR0] = 0xF << 16;
        combine(&mut a, &b);
        assert_eq!(get(a[idx(6, 0)], field("AES")), 1);
        assert_eq!(get(a[PFR0], field("FP")), -1, "signed: not implemented wins");
    }

    #[test]
    fn higher_safe_and_exact_rules() {
        let hi = Field { rule: Rule::Higher, ..*field("AES") };
        let ex = Field { rule: Rule::Exact { safe: 3 }, shift: 8, name: "X", ..*field("AES") };
        let table = [hi, ex];
        let mut a = [0u64; NR_IDREGS];
        let mut b = [0u64; NR_IDREGS];
        a[hi.reg] = put(put(0, &hi, 1), &ex, 2);
        b[hi.reg] = put(put(0, &hi, 2), &ex, 2);
        combine_with(&table, &mut a, &b);
        assert_eq!((get(a[hi.reg], &hi), get(a[hi.reg], &ex)), (2, 2), "higher takes the max; equal stays");
        b[hi.reg] = put(b[hi.reg], &ex, 1);
        combine_with(&table, &mut a, &b);
        assert_eq!(get(a[hi.reg], &ex), 3, "exact: CPUs differ, the safe value");
    }

    #[test]
    fn restriction_hides_what_el2_does_not_switch() {
        let mut hw = [0u64; NR_IDREGS];
        // Hardware with SVE, EL2/EL3, AArch32 EL0, MTE, PAuth (APA 1, GPA 1), PMUv3, 48-bit PA.
        hw[PFR0] = 2 /* EL0 AArch32 */ | 1 << 8 | 1 << 12 | 1 << 32 | 1 << 56;
        hw[idx(4, 1)] = 2 << 8;
        hw[ISAR1] = 1 << 4 | 1 << 24;
        hw[DFR0] = 8 | 5 << 8;
        hw[MMFR0] = 5;
        hw[idx(1, 0)] = 0x1234; // an AArch32 ID register
        hw[idx(4, 4)] = 0x11; // ID_AA64ZFR0_EL1
        let v = restrict(&hw, &PLAIN);
        assert_eq!(get(v[PFR0], field("EL0")), 1, "AArch64 only");
        assert_eq!(get(v[PFR0], field("EL2")), 0);
        assert_eq!(get(v[PFR0], field("SVE")), 0);
        assert_eq!(get(v[PFR0], field("CSV2")), 1, "kept");
        assert_eq!(get(v[idx(4, 1)], field("MTE")), 0, "no MTE without the flag");
        assert_eq!(get(v[ISAR1], field("APA")), 0, "no PAuth without the flag");
        assert_eq!(get(v[DFR0], field("PMUVer")), 0);
        assert_eq!(get(v[DFR0], field("DebugVer")), 6);
        assert_eq!(get(v[DFR0], field("DoubleLock")), -1);
        assert_eq!(get(v[MMFR0], field("PARange")), 1, "36-bit IPA");
        assert_eq!(v[idx(1, 0)], 0, "AArch32 registers hidden");
        assert_eq!(v[idx(4, 4)], 0, "SVE ID register hidden");
        let with = restrict(&hw, &VmPolicy { mte: true, ptrauth: true, pmu: true, ..PLAIN });
        assert_eq!(get(with[idx(4, 1)], field("MTE")), 2);
        assert_eq!(get(with[ISAR1], field("APA")), 1);
        assert_eq!(get(with[ISAR1], field("GPA")), 1);
        assert_eq!(get(with[DFR0], field("PMUVer")), 5);
        let prot = restrict(&hw, &VmPolicy { pmu: true, protected: true, ..PLAIN });
        assert_eq!(get(prot[DFR0], field("PMUVer")), 0, "never a PMU for protected VMs");
    }

    #[test]
    fn sve_is_shown_only_to_a_vm_with_sve_and_sme_never() {
        let mut hw = [0u64; NR_IDREGS];
        // SVE, SME (ID_AA64PFR1_EL1.SME 1), SVE2 with AES 2, BitPerm, BF16, SHA3, SM4, I8MM,
        // F32MM, F64MM; SVE2p1 (SVEver 2); an SME ID register.
        hw[PFR0] = 1 | 1 << 4 | 1 << 32;
        hw[idx(4, 1)] = 1 << 24;
        hw[idx(4, 4)] = 2 | 2 << 4 | 1 << 16 | 1 << 20 | 1 << 32 | 1 << 40 | 1 << 44 | 1 << 52 | 1 << 56;
        hw[idx(4, 5)] = 0x8000_0000_0000_0000; // ID_AA64SMFR0_EL1.FA64
        for p in [PLAIN, VmPolicy { protected: true, ..PLAIN }] {
            let v = restrict(&hw, &p);
            assert_eq!(get(v[PFR0], field("SVE")), 0, "{p:?}");
            assert_eq!(v[idx(4, 4)], 0, "ID_AA64ZFR0_EL1: {p:?}");
            assert!(!write_ok(PFR0, v[PFR0] | 1 << 32, v[PFR0]), "nor may the host add it");
        }
        for p in [VmPolicy { sve: true, ..PLAIN }, VmPolicy { sve: true, protected: true, ..PLAIN }] {
            let v = restrict(&hw, &p);
            assert_eq!(get(v[PFR0], field("SVE")), 1, "{p:?}");
            assert_eq!(v[idx(4, 4)], 1 | 2 << 4 | 1 << 16 | 1 << 20 | 1 << 32 | 1 << 40 | 1 << 44 | 1 << 52 | 1 << 56, "SVE2, not SVE2p1: {p:?}");
            // SME stays hidden whatever the VM has: PFR1.SME and SMFR0 are not described.
            assert_eq!(v[idx(4, 1)] >> 24 & 0xF, 0);
            assert_eq!(v[idx(4, 5)], 0);
            // The host may take SVE away again before the first run, or lower a field.
            assert!(write_ok(PFR0, v[PFR0] & !(0xF << 32), v[PFR0]));
            assert!(write_ok(idx(4, 4), 0, v[idx(4, 4)]));
            assert!(!write_ok(idx(4, 4), v[idx(4, 4)] | 1 << 8, v[idx(4, 4)]), "undescribed bits");
        }
        // CPUs that differ: the smaller wins, field by field.
        let mut a = hw;
        let mut b = hw;
        b[idx(4, 4)] = 1;
        combine(&mut a, &b);
        assert_eq!(a[idx(4, 4)], 1);
        b[PFR0] = 1 | 1 << 4;
        combine(&mut a, &b);
        assert_eq!(get(a[PFR0], field("SVE")), 0, "a CPU without SVE");
    }

    #[test]
    fn pmu_and_activity_monitors_are_hidden_unless_the_vm_has_the_host_pmu() {
        // Hardware with PMUv3 (PMUVer 6), FEAT_AMUv1p1 (AMU 2): Linux reads PMUVer before it
        // touches PMUSERENR_EL0, and AMU before AMUSERENR_EL0, at boot.
        let mut hw = [0u64; NR_IDREGS];
        hw[PFR0] = 1 | 1 << 4 | 2 << 44;
        hw[DFR0] = 6 | 6 << 8;
        for p in [PLAIN, VmPolicy { protected: true, ..PLAIN }, VmPolicy { pmu: true, protected: true, ..PLAIN }, VmPolicy { pmu: true, ..PLAIN }] {
            let v = restrict(&hw, &p);
            assert_eq!(get(v[PFR0], field("AMU")), 0, "activity monitors never: {p:?}");
            let pmu = if p.pmu && !p.protected { 6 } else { 0 };
            assert_eq!(get(v[DFR0], field("PMUVer")), pmu, "{p:?}");
            // Nor may the host raise them before the first run.
            assert!(!write_ok(PFR0, v[PFR0] | 1 << 44, v[PFR0]));
            if pmu == 0 {
                assert!(!write_ok(DFR0, v[DFR0] | 1 << 8, v[DFR0]));
            }
        }
    }

    #[test]
    fn fields_where_zero_is_a_claim_do_not_default_to_zero() {
        let mut hw = [0u64; NR_IDREGS];
        // FEAT_MTE2 with asynchronous faults (MTE_frac 0), 64-bit CCSIDR format (CCIDX 1).
        hw[idx(4, 1)] = 2 << 8;
        hw[idx(7, 2)] = 1 << 20;
        for p in [PLAIN, VmPolicy { mte: true, ..PLAIN }, VmPolicy { protected: true, ..PLAIN }] {
            let v = restrict(&hw, &p);
            assert_eq!(get(v[idx(4, 1)], field("MTE_frac")), -1, "asynchronous tag-check faults not offered: {p:?}");
            assert_eq!(get(v[idx(7, 2)], field("CCIDX")), 1, "the hardware's CCSIDR format: {p:?}");
            // The host may keep these, not change them.
            assert!(write_ok(idx(4, 1), v[idx(4, 1)], v[idx(4, 1)]));
            assert!(!write_ok(idx(4, 1), put(v[idx(4, 1)], field("MTE_frac"), 0), v[idx(4, 1)]));
            assert!(!write_ok(idx(7, 2), put(v[idx(7, 2)], field("CCIDX"), 0), v[idx(7, 2)]));
        }
        hw[idx(7, 2)] = 0;
        assert_eq!(get(restrict(&hw, &PLAIN)[idx(7, 2)], field("CCIDX")), 0, "32-bit format kept too");
        assert!(!write_ok(idx(7, 2), 1 << 20, 0), "nor raised");
        // CPUs that disagree: CCIDX falls to its safe value; one CPU without async faults wins.
        let mut a = [0u64; NR_IDREGS];
        let mut b = [0u64; NR_IDREGS];
        a[idx(7, 2)] = 1 << 20;
        b[idx(4, 1)] = 0xF << 40;
        combine(&mut a, &b);
        assert_eq!(get(a[idx(7, 2)], field("CCIDX")), 0);
        assert_eq!(get(a[idx(4, 1)], field("MTE_frac")), -1);
    }

    #[test]
    fn ptrauth_needs_address_and_generic_with_one_algorithm() {
        let with = |isar1: u64, isar2: u64, identical: bool| {
            let mut s = [0u64; NR_IDREGS];
            s[ISAR1] = isar1;
            s[idx(6, 2)] = isar2;
            ptrauth_consistent(&s, identical)
        };
        assert!(with(1 << 4 | 1 << 24, 0, false), "QARMA5 address + generic");
        assert!(with(0, 1 << 12 | 1 << 8, false), "QARMA3 address + generic");
        assert!(with(1 << 8 | 1 << 28, 0, true), "IMPDEF address + generic, identical CPUs");
        assert!(!with(1 << 8 | 1 << 28, 0, false), "IMPDEF on CPUs that are not identical");
        assert!(!with(1 << 4, 0, true), "address only");
        assert!(!with(1 << 24, 0, true), "generic only");
        assert!(!with(1 << 4 | 1 << 28, 0, true), "QARMA5 address, IMPDEF generic");
        // Two CPUs with different algorithms: combining leaves neither pair.
        let mut a = [0u64; NR_IDREGS];
        let mut b = [0u64; NR_IDREGS];
        a[ISAR1] = 1 << 4 | 1 << 24;
        b[ISAR1] = 1 << 8 | 1 << 28;
        combine(&mut a, &b);
        assert!(!ptrauth_consistent(&a, true));
    }

    #[test]
    fn ptrauth_fields_are_exact_across_cpus() {
        // PAuth (APA 1) and PAuth2 with FPAC (APA 4): both QARMA5, different PACs. A lower-safe
        // rule would give APA 1 and claim PAuth on a CPU that computes PAuth2 PACs.
        let mut a = [0u64; NR_IDREGS];
        let mut b = [0u64; NR_IDREGS];
        a[ISAR1] = 1 << 4 | 1 << 24;
        b[ISAR1] = 4 << 4 | 1 << 24;
        combine(&mut a, &b);
        assert_eq!(get(a[ISAR1], field("APA")), 0);
        assert!(!ptrauth_consistent(&a, false));
        // QARMA3 PAuth vs PAuth2 likewise.
        let (mut a, mut b) = ([0u64; NR_IDREGS], [0u64; NR_IDREGS]);
        a[idx(6, 2)] = 1 << 12 | 1 << 8;
        b[idx(6, 2)] = 3 << 12 | 1 << 8;
        combine(&mut a, &b);
        assert!(!ptrauth_consistent(&a, true));
        for name in ["APA", "API", "GPA", "GPI", "APA3", "GPA3"] {
            assert_eq!(field(name).rule, Rule::Exact { safe: 0 }, "{name}");
        }
    }

    #[test]
    fn hidden_fields_stay_hidden_whatever_the_rule() {
        // Exact (the PAuth fields) and higher-safe fields the policy hides read as zero.
        let mut hw = [0u64; NR_IDREGS];
        hw[ISAR1] = 1 << 4 | 1 << 24;
        hw[idx(6, 2)] = 1 << 12;
        let v = restrict(&hw, &PLAIN);
        for name in ["APA", "GPA"] {
            assert_eq!(get(v[ISAR1], field(name)), 0, "{name} hidden without the flag");
        }
        assert_eq!(get(v[idx(6, 2)], field("APA3")), 0);
        let hi = Field { rule: Rule::Higher, ..*field("MTE") };
        let ex = Field { rule: Rule::Exact { safe: 0 }, ..*field("PMUVer") };
        let mut hw = [0u64; NR_IDREGS];
        hw[hi.reg] = put(0, &hi, 3);
        hw[ex.reg] = put(0, &ex, 5);
        let v = restrict_with(&[hi, ex], &hw, &PLAIN);
        assert_eq!(get(v[hi.reg], &hi), 0, "higher-safe, hidden");
        assert_eq!(get(v[ex.reg], &ex), 0, "exact, hidden");
        let v = restrict_with(&[hi, ex], &hw, &VmPolicy { mte: true, pmu: true, ..PLAIN });
        assert_eq!((get(v[hi.reg], &hi), get(v[ex.reg], &ex)), (3, 5), "allowed: the combined values");
    }

    #[test]
    fn a_cpu_is_at_least_the_view_field_by_field() {
        let mut view = [0u64; NR_IDREGS];
        view[idx(6, 0)] = 2 << 4;
        view[PFR0] = 1 << 16; // FP16
        view[ISAR1] = 1 << 4 | 1 << 24;
        let mut cpu = view;
        assert!(at_least(&view, &cpu).is_ok());
        cpu[idx(6, 0)] = 3 << 4 | 1 << 8;
        assert!(at_least(&view, &cpu).is_ok(), "more is fine");
        cpu[idx(6, 0)] = 1 << 4;
        assert_eq!(at_least(&view, &cpu).map_err(|f| f.name), Err("AES"));
        let mut cpu = view;
        cpu[PFR0] = 0xF << 16;
        assert_eq!(at_least(&view, &cpu).map_err(|f| f.name), Err("FP"), "signed: absent is below");
        let mut cpu = view;
        cpu[ISAR1] = 3 << 4 | 1 << 24;
        assert_eq!(at_least(&view, &cpu).map_err(|f| f.name), Err("APA"), "exact");
        let hi = Field { rule: Rule::Higher, ..*field("AES") };
        let mut cpu = view;
        cpu[idx(6, 0)] = 3 << 4;
        assert!(at_least_with(&[hi], &view, &cpu).is_err(), "higher-safe: above the view is weaker");
        assert_eq!(pa_bits(&view), 32);
        view[MMFR0] = 2;
        assert_eq!(pa_bits(&view), 40);
    }

    #[test]
    fn writes_may_only_lower_to_safe_values() {
        let limit = put(put(0, field("AES"), 2), field("SHA1"), 1);
        let r = idx(6, 0);
        assert!(write_ok(r, limit, limit), "identical");
        assert!(write_ok(r, put(limit, field("AES"), 1), limit), "lower");
        assert!(write_ok(r, 0, limit), "all off");
        assert!(!write_ok(r, put(limit, field("SHA2"), 1), limit), "a feature the VM does not have");
        assert!(!write_ok(r, limit | 1, limit), "undescribed bits");
        // Signed: FP may go from implemented (0) to not implemented (-1), not back up.
        let pfr0 = put(0, field("FP"), 0);
        assert!(write_ok(PFR0, put(pfr0, field("FP"), -1), pfr0));
        assert!(!write_ok(PFR0, pfr0, put(pfr0, field("FP"), -1)), "no FP in the limit: cannot add it");
        assert!(!write_ok(PFR0, put(pfr0, field("FP"), 1), pfr0), "FP16 not in the limit");
    }
}
