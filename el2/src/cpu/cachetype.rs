//! `CTR_EL0`, the cache type register: how CPUs' values combine, when a CPU satisfies the
//! combined value, and the cache identification registers guests read instead of the CPU's
//! (`CLIDR_EL1`, `CCSIDR_EL1`, `CCSIDR2_EL1`), fabricated from it.
//!
//! Place in the flow: *policy*, plain Rust (unit-tested on the host). Each CPU reports its
//! `CTR_EL0` when it enters EL2 ([`crate::cpu::features`]); where the CPUs' values differ,
//! guests read the combined value through a trap (`HCR_EL2.TID2`, [`crate::guest::sysreg`]).
//!
//! # Why guests read it through EL2
//! A guest's cache maintenance follows `CTR_EL0`: `DminLine`, `IminLine` and `TminLine` are the
//! strides of its by-address loops, `IDC` and `DIC` let it skip the data clean and the
//! instruction-cache invalidation to the Point of Unification, and `L1Ip` = PIPT lets it
//! invalidate instructions by address where VIPT (which Linux treats as aliasing) needs the
//! whole instruction cache. Read from the CPU, the value is that of whichever CPU the vCPU
//! happens to run on; moved to a CPU with smaller lines, without `DIC`/`IDC` or with a VIPT
//! instruction cache, the maintenance it skipped or strode past is missing: stale data or
//! instructions. So every guest reads the value combined over the CPUs, field by field as
//! Linux's arm64 `cpufeature` combines it ([`combine`]), and once the CPU view is fixed a CPU
//! that does not satisfy it is refused ([`at_least`]).
//!
//! The trap is set only where it matters, as KVM does: where every CPU accepted so far has the
//! same `CTR_EL0`, that value *is* the combined one, and a guest reads it directly on any CPU
//! it can move to (a later CPU that does not satisfy it is refused; one with another, stronger
//! value turns the trap on before it runs a vCPU: [`crate::cpu::features::CpuFeatures::ctr_trap`]).
//! The trap costs an exit per guest read of `CTR_EL0`, which Linux makes in its by-address
//! maintenance routines and user space in every `__clear_cache`; QEMU's CPUs agree, so the
//! suite runs untrapped and the trapped path is covered by host tests. Not chosen: running VMs
//! only if every CPU's `CTR_EL0` is the same, which would leave common big.LITTLE pairs (a VIPT
//! next to a PIPT instruction cache) without VMs.
//!
//! `HCR_EL2.TID2` also traps the cache geometry, which differs between CPUs just as much. As
//! KVM does, EL2 fabricates it from the combined `CTR_EL0` ([`clidr`], [`ccsidr`]): levels that
//! ask for no less maintenance than `CTR_EL0` does, the smallest line size, and one set of one
//! way. Set/way maintenance traps anyway and cleans the whole VM (`HCR_EL2.TSW`), so the
//! geometry only sizes the guest's set/way loops; one set of one way keeps them to one trap.
//!
//! Field layout: Arm ARM D19.2 (`CTR_EL0`, `CLIDR_EL1`, `CCSIDR_EL1`, `CSSELR_EL1`).

/// `CTR_EL0` bit 31, RES1.
pub const RES1: u64 = 1 << 31;
/// `CTR_EL0.IDC`: data cache clean to the PoU not required for instruction coherence.
pub const IDC: u64 = 1 << 28;
/// `CTR_EL0.DIC`: instruction cache invalidation to the PoU not required.
pub const DIC: u64 = 1 << 29;
/// `CTR_EL0.L1Ip` = VIPT.
pub const L1IP_VIPT: u64 = 0b10;
/// `CTR_EL0.L1Ip` = PIPT.
pub const L1IP_PIPT: u64 = 0b11;

/// How a field combines and which CPU values satisfy a combined one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// The smallest is safe (a line size, a feature bit).
    Lower,
    /// The largest is safe, and 0 ("not given": the architectural maximum) safest (`ERG`, `CWG`).
    HigherOrZero,
    /// `L1Ip`: CPUs that differ give VIPT, which PIPT satisfies.
    L1Ip,
}

/// A field of `CTR_EL0`.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: &'static str,
    shift: u32,
    bits: u32,
    rule: Rule,
}

const fn field(name: &'static str, shift: u32, bits: u32, rule: Rule) -> Field {
    Field { name, shift, bits, rule }
}

/// Every field of `CTR_EL0` (the rest is RES0, but bit 31, RES1).
const FIELDS: [Field; 8] = [
    field("IminLine", 0, 4, Rule::Lower),
    field("L1Ip", 14, 2, Rule::L1Ip),
    field("DminLine", 16, 4, Rule::Lower),
    field("ERG", 20, 4, Rule::HigherOrZero),
    field("CWG", 24, 4, Rule::HigherOrZero),
    field("IDC", 28, 1, Rule::Lower),
    field("DIC", 29, 1, Rule::Lower),
    // FEAT_MTE2: the smallest allocation-tag line, for the tag forms of DC by address.
    field("TminLine", 32, 6, Rule::Lower),
];

impl Field {
    fn get(&self, v: u64) -> u64 {
        (v >> self.shift) & ((1 << self.bits) - 1)
    }
}

/// `ctr` with its RES0 bits cleared and bit 31 set: what a guest may be shown of one CPU.
pub fn sanitise(ctr: u64) -> u64 {
    FIELDS.iter().fold(RES1, |v, f| v | f.get(ctr) << f.shift)
}

/// The value that every CPU whose `CTR_EL0` is `a` or `b` satisfies (field by field).
pub fn combine(a: u64, b: u64) -> u64 {
    FIELDS.iter().fold(RES1, |v, f| {
        let (x, y) = (f.get(a), f.get(b));
        let c = match f.rule {
            Rule::Lower => x.min(y),
            Rule::HigherOrZero if x == 0 || y == 0 => 0,
            Rule::HigherOrZero => x.max(y),
            Rule::L1Ip if x == y => x,
            Rule::L1Ip => L1IP_VIPT,
        };
        v | c << f.shift
    })
}

/// Whether a CPU whose `CTR_EL0` is `cpu` satisfies the combined `view`: a guest doing what
/// `view` says is correct on it.
///
/// # Errors
/// The name of the first field where it does not.
pub fn at_least(view: u64, cpu: u64) -> Result<(), &'static str> {
    for f in &FIELDS {
        let (v, c) = (f.get(view), f.get(cpu));
        let ok = match f.rule {
            Rule::Lower => c >= v,
            Rule::HigherOrZero => v == 0 || (c != 0 && c <= v),
            Rule::L1Ip => c == v || (v == L1IP_VIPT && c == L1IP_PIPT),
        };
        if !ok {
            return Err(f.name);
        }
    }
    Ok(())
}

/// `CLIDR_EL1.Ctype<n>` values.
const CTYPE_INSTRUCTION: u64 = 0b001;
const CTYPE_DATA: u64 = 0b010;
const CTYPE_UNIFIED: u64 = 0b100;
/// `CLIDR_EL1` fields.
const LOUIS_SHIFT: u32 = 21;
const LOC_SHIFT: u32 = 24;
const LOUU_SHIFT: u32 = 27;
/// `CLIDR_EL1.Ttype<n>` = 0b10: allocation tags and data in unified lines.
const TTYPE_UNIFIED: u64 = 0b10;

const fn ctype_shift(level: u64) -> u64 {
    3 * (level - 1)
}

const fn ttype_shift(level: u64) -> u64 {
    33 + 2 * (level - 1)
}

/// The `CLIDR_EL1` a guest reads, from the combined `CTR_EL0` `ctr` (`mte`: the VM has MTE).
/// Without `IDC`, level 1 has a data cache and is the Point of Unification (a data clean to
/// it is needed); with `IDC`, the data cache is a unified one past the Point of Unification.
/// Without `DIC`, level 1 has an instruction cache (its invalidation is needed). The last
/// level is the Point of Coherence, with unified allocation tags for an MTE VM.
pub fn clidr(ctr: u64, mte: bool) -> u64 {
    let (mut v, loc) = if ctr & IDC != 0 {
        let loc = if ctr & DIC != 0 { 1 } else { 2 };
        (CTYPE_UNIFIED << ctype_shift(loc), loc)
    } else {
        (1 << LOUU_SHIFT | 1 << LOUIS_SHIFT | CTYPE_DATA << ctype_shift(1), 1)
    };
    if ctr & DIC == 0 {
        v |= CTYPE_INSTRUCTION << ctype_shift(1);
    }
    if mte {
        v |= TTYPE_UNIFIED << ttype_shift(loc);
    }
    v | loc << LOC_SHIFT
}

/// `CSSELR_EL1`: `InD` (bit 0), `Level` (bits 3:1), and `TnD` (bit 4) with FEAT_MTE2.
pub const fn csselr_mask(mte: bool) -> u64 {
    if mte {
        0x1F
    } else {
        0xF
    }
}

/// The `CCSIDR_EL1` a guest reads for its `CSSELR_EL1` `csselr` and `CLIDR_EL1` `clidr` (what
/// [`clidr`] gave), from the combined `CTR_EL0` `ctr`: the smallest line of the selected kind
/// (`IminLine` for an instruction cache, else `DminLine`), one set, one way. The same in the
/// 32-bit and the FEAT_CCIDX 64-bit format. A cache `clidr` does not have reads 0 (the Arm ARM
/// makes it UNKNOWN).
pub fn ccsidr(ctr: u64, csselr: u64, clidr: u64) -> u64 {
    let (instruction, tags, level) = (csselr & 1 != 0, csselr & 1 << 4 != 0, ((csselr >> 1) & 7) + 1);
    if level > 7 {
        return 0;
    }
    let ctype = (clidr >> ctype_shift(level)) & 7;
    let present = match (instruction, tags) {
        (true, false) => ctype == CTYPE_INSTRUCTION || ctype == CTYPE_INSTRUCTION | CTYPE_DATA,
        (false, false) => ctype == CTYPE_DATA || ctype == CTYPE_INSTRUCTION | CTYPE_DATA || ctype == CTYPE_UNIFIED,
        (false, true) => (clidr >> ttype_shift(level)) & 3 != 0,
        (true, true) => false,
    };
    if !present {
        return 0;
    }
    // Lines in CTR_EL0 are log2 words; CCSIDR_EL1.LineSize is log2 bytes minus 4.
    let words = if instruction { ctr & 0xF } else { (ctr >> 16) & 0xF };
    (words + 2).saturating_sub(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little core: VIPT, 64-byte lines, ERG and CWG 16 words, no IDC, no DIC.
    const LITTLE: u64 = 0x8444_8004;
    /// A big core: as the little one but PIPT.
    const BIG: u64 = 0x8444_C004;
    /// A core with IDC and DIC, 64-byte lines, PIPT.
    const COHERENT: u64 = 0xB444_C004;

    fn with(v: u64, name: &str, x: u64) -> u64 {
        let f = FIELDS.iter().find(|f| f.name == name).unwrap();
        (v & !(((1 << f.bits) - 1) << f.shift)) | x << f.shift
    }

    #[test]
    fn cpus_combine_field_by_field() {
        assert_eq!(combine(LITTLE, LITTLE), LITTLE);
        assert_eq!(combine(BIG, LITTLE), LITTLE, "PIPT next to VIPT: VIPT");
        assert_eq!(combine(COHERENT, BIG), BIG, "IDC and DIC only if both have them");
        assert_eq!(combine(with(COHERENT, "DminLine", 3), COHERENT), with(COHERENT, "DminLine", 3), "the smaller line");
        assert_eq!(combine(with(COHERENT, "IminLine", 5), COHERENT), COHERENT);
        assert_eq!(combine(with(COHERENT, "CWG", 5), COHERENT), with(COHERENT, "CWG", 5), "the larger writeback granule");
        assert_eq!(combine(with(COHERENT, "ERG", 0), COHERENT), with(COHERENT, "ERG", 0), "0: not given, the largest");
        assert_eq!(combine(with(COHERENT, "TminLine", 4), with(COHERENT, "TminLine", 2)), with(COHERENT, "TminLine", 2));
        assert_eq!(sanitise(u64::MAX), 0x3F_BFFF_C00F, "RES0 bits cleared");
        assert_eq!(sanitise(0), RES1);
    }

    #[test]
    fn a_cpu_satisfies_the_combined_value_or_names_the_field() {
        assert_eq!(at_least(LITTLE, BIG), Ok(()), "PIPT satisfies VIPT");
        assert_eq!(at_least(BIG, LITTLE), Err("L1Ip"));
        assert_eq!(at_least(COHERENT, with(COHERENT, "DIC", 0)), Err("DIC"));
        assert_eq!(at_least(COHERENT, with(COHERENT, "IDC", 0)), Err("IDC"));
        assert_eq!(at_least(with(COHERENT, "DIC", 0), COHERENT), Ok(()), "DIC where the guest does not rely on it");
        assert_eq!(at_least(COHERENT, with(COHERENT, "DminLine", 3)), Err("DminLine"), "a smaller line");
        assert_eq!(at_least(COHERENT, with(COHERENT, "IminLine", 3)), Err("IminLine"));
        assert_eq!(at_least(COHERENT, with(COHERENT, "TminLine", 1)), Ok(()), "COHERENT's TminLine is 0");
        assert_eq!(at_least(with(COHERENT, "TminLine", 2), with(COHERENT, "TminLine", 1)), Err("TminLine"));
        assert_eq!(at_least(COHERENT, with(COHERENT, "CWG", 5)), Err("CWG"), "a larger granule");
        assert_eq!(at_least(COHERENT, with(COHERENT, "CWG", 0)), Err("CWG"), "a granule not given");
        assert_eq!(at_least(with(COHERENT, "CWG", 0), with(COHERENT, "CWG", 9)), Ok(()));
        for (a, b) in [(LITTLE, BIG), (COHERENT, BIG), (with(COHERENT, "ERG", 0), COHERENT)] {
            let v = combine(a, b);
            assert_eq!((at_least(v, a), at_least(v, b)), (Ok(()), Ok(())), "{a:#x} {b:#x}: both satisfy what they combine to");
        }
    }

    #[test]
    fn the_fabricated_hierarchy_asks_for_no_less_than_ctr() {
        // No IDC: a level-1 data cache that is the PoU (LoUU = LoUIS = 1); no DIC: a level-1
        // instruction cache too.
        let c = clidr(LITTLE, false);
        assert_eq!(c, 1 << LOUU_SHIFT | 1 << LOUIS_SHIFT | 1 << LOC_SHIFT | 0b011);
        // IDC and DIC: one unified level, no PoU level (Linux's "effective IDC" agrees).
        assert_eq!(clidr(COHERENT, false), 1 << LOC_SHIFT | 0b100);
        // IDC without DIC: instruction cache at level 1, unified at level 2.
        assert_eq!(clidr(with(COHERENT, "DIC", 0), false), 2 << LOC_SHIFT | 0b100 << 3 | 0b001);
        // An MTE VM: tags unified with data at the last level.
        assert_eq!(clidr(COHERENT, true), clidr(COHERENT, false) | 0b10 << 33);
        assert_eq!(clidr(with(COHERENT, "DIC", 0), true) >> 35 & 3, 0b10);
    }

    #[test]
    fn the_fabricated_geometry_is_one_set_of_one_way_with_the_smallest_line() {
        let q = clidr(COHERENT, true);
        assert_eq!(ccsidr(COHERENT, 0, q), 2, "level 1 data: 64-byte lines, LineSize 2");
        assert_eq!(ccsidr(COHERENT, 1, q), 0, "no instruction cache at level 1 (DIC)");
        assert_eq!(ccsidr(COHERENT, 1 << 4, q), 2, "the tag cache");
        assert_eq!(ccsidr(COHERENT, 1 << 4 | 1, q), 0, "TnD with InD: reserved");
        assert_eq!(ccsidr(COHERENT, 0b10, q), 0, "no level 2");
        let a = clidr(LITTLE, false);
        let a55_small_i = with(LITTLE, "IminLine", 3);
        assert_eq!(ccsidr(a55_small_i, 1, a), 1, "32-byte instruction lines");
        assert_eq!(ccsidr(a55_small_i, 0, a), 2);
        assert_eq!(ccsidr(with(LITTLE, "DminLine", 1), 0, a), 0, "lines below 16 bytes: LineSize 0");
        assert_eq!(ccsidr(LITTLE, 1 << 4, a), 0, "no tags without MTE");
        for csselr in 0..32 {
            assert_eq!(ccsidr(LITTLE, csselr, a) & !7, 0, "no set or way beyond one: {csselr:#x}");
        }
        assert_eq!(ccsidr(LITTLE, 0xE, a), 0, "Level 8 (reserved)");
    }
}
