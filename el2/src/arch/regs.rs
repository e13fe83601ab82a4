//! Barriers, this CPU's identity and ID registers, EL2's own MMU, the trap registers and
//! the SMC conduit.

use crate::mem::pgtable::{PageTable, MAIR_EL2_VALUE};
use aarch64_cpu::registers::*;
use core::arch::asm;

/// The RES1 bits of `SCTLR_EL2` (without E2H), with `EOS` (bit 11) and `EIS` (bit 22) among
/// them: [`SCTLR_EL2_EOS`] names the one the world switch relies on.
const SCTLR_EL2_RES1: u64 = 0x30C5_0830;
/// `SCTLR_EL2.EOS` (FEAT_ExS; RES1 without it): an exception return from EL2 is a context
/// synchronisation event. The world switch relies on it: the guest's registers, its traps and
/// `VBAR_EL2`'s guest table are in force from the `ERET` into the guest with no `ISB` before it,
/// and the host's from the `ERET` back ([`crate::arch::vectors`]).
const SCTLR_EL2_EOS: u64 = 1 << 11;
const _: () = assert!(SCTLR_EL2_RES1 & SCTLR_EL2_EOS != 0, "EOS must stay set");
const SCTLR_EL2_M: u64 = 1 << 0;
const SCTLR_EL2_C: u64 = 1 << 2;
const SCTLR_EL2_SA: u64 = 1 << 3;
const SCTLR_EL2_I: u64 = 1 << 12;
const SCTLR_EL2_WXN: u64 = 1 << 19;
/// `SCTLR_EL2.ATA`: EL2 may access allocation tags (to clear a page's tags for a guest).
const SCTLR_EL2_ATA: u64 = 1 << 43;
/// `SCTLR_EL2.ITFSB` (FEAT_MTE2): pending asynchronous tag-check faults are synchronised into
/// `TFSR_EL1`/`TFSRE0_EL1` on every exception entry to EL2, so a guest's land in its own
/// registers before the world switch saves them.
const SCTLR_EL2_ITFSB: u64 = 1 << 37;
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);

/// Translation-table walk attributes shared by `TCR_EL2` and `VTCR_EL2`: `IRGN0`/`ORGN0` =
/// Write-Back Read/Write-Allocate, `SH0` = Inner Shareable, `TG0` = 4 KiB.
pub(super) const WALK_ATTRS: u64 = (0b01 << 8) | (0b01 << 10) | (0b11 << 12);

/// `YIELD`: a hint that this CPU spins waiting for another ([`crate::sync`]). QEMU's
/// round-robin TCG, `-icount` included, moves on to the next CPU at it, so the one holding
/// what this CPU waits for runs; on hardware it costs about a `NOP`.
#[inline(always)]
pub fn yield_hint() {
    // SAFETY: a hint; no memory, register or flag effect.
    unsafe { asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// `DSB ISH`: completes earlier memory accesses and maintenance for the Inner Shareable domain.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier has no effect on memory safety. Not `nomem`: it orders memory accesses,
    // so the compiler must not move them across it.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// `DSB ISHST`: completes earlier stores (e.g. to translation tables) before later maintenance.
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: as for `dsb_ish`.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// `DSB SY`: completes earlier memory accesses, device writes included, system-wide.
#[inline(always)]
pub fn dsb_sy() {
    // SAFETY: as for `dsb_ish`.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// `ISB`: context synchronisation, so later instructions see earlier system-register writes.
#[inline(always)]
pub fn isb() {
    // SAFETY: as for `dsb_ish`.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Stops this CPU for good, in a low-power wait.
pub fn park() -> ! {
    loop {
        // SAFETY: `wfe` only waits.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// This CPU's index, kept in `TPIDR_EL2` by the entry code.
#[inline(always)]
pub fn cpu_index() -> usize {
    TPIDR_EL2.get() as usize
}

/// A random value for this boot (each VM's secrets are derived from it): 32 bytes from
/// `RNDR` (FEAT_RNG) where the CPU has it; otherwise a digest of the counter, this CPU's
/// identity and the device tree's address, which is not secret, and `false` says so.
pub fn boot_secret(dtb: u64) -> ([u8; 32], bool) {
    let isar0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { asm!("mrs {}, id_aa64isar0_el1", out(reg) isar0, options(nomem, nostack, preserves_flags)) };
    if (isar0 >> 60) & 0xF != 0 {
        let mut out = [0u8; 32];
        let mut filled = 0;
        // RNDR may fail now and then (PSTATE.Z set): try again, a bounded number of times.
        for _ in 0..64 {
            if filled == 32 {
                break;
            }
            let (v, failed): (u64, u64);
            // SAFETY: RNDR (S3_3_C2_C4_0) exists with FEAT_RNG; it only returns a number and
            // sets NZCV, which `cset` reads.
            unsafe { asm!("mrs {v}, s3_3_c2_c4_0", "cset {f}, eq", v = out(reg) v, f = out(reg) failed, options(nomem, nostack)) };
            if failed == 0 {
                out[filled..filled + 8].copy_from_slice(&v.to_le_bytes());
                filled += 8;
            }
        }
        if filled == 32 {
            return (out, true);
        }
    }
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&CNTPCT_EL0.get().to_le_bytes());
    seed[8..16].copy_from_slice(&MPIDR_EL1.get().to_le_bytes());
    seed[16..24].copy_from_slice(&MIDR_EL1.get().to_le_bytes());
    seed[24..].copy_from_slice(&dtb.to_le_bytes());
    (shared_abi::measure::digest(&seed), false)
}

/// `MPIDR_EL1` of this CPU.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get()
}

/// Physical address size from `ID_AA64MMFR0_EL1.PARange`, in bits (capped at 48: EL2 does not
/// use 52-bit descriptors).
pub fn pa_bits() -> u8 {
    match ID_AA64MMFR0_EL1.get() & 0xF {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    }
}

/// `MIDR_EL1` of this CPU.
pub fn midr() -> u64 {
    MIDR_EL1.get()
}

/// This CPU's identification, for [`crate::cpu::features`]. Only after
/// [`super::activate_host`] on this CPU: `ICH_VTR_EL2` is readable at EL2 once
/// `ICC_SRE_EL2.SRE` is set (before, [`super::ich_vtr`] would say "no GICv3").
pub fn cpu_id() -> crate::cpu::features::CpuId {
    crate::cpu::features::CpuId { midr: midr(), regs: read_idregs(), ctr: ctr_el0(), ich_vtr: super::ich_vtr(), sve: super::sve_lengths() }
}

/// Powers this CPU off with PSCI `CPU_OFF`; parks it if firmware returns (it only returns on
/// an error, `DENIED` for the last CPU of a trusted OS).
pub fn cpu_off() -> ! {
    let r = smc(smccc::psci::PSCI_CPU_OFF, [0; 17]);
    log::error!("PSCI CPU_OFF returned {:#x}: parking this CPU", r[0]);
    park()
}

/// This CPU's 56 ID registers (op0=3, op1=0, CRn=0, CRm=1..7, op2=0..7), in
/// [`crate::cpu::idreg::idx`] order. Unallocated encodings in this space read as zero.
pub fn read_idregs() -> [u64; crate::cpu::idreg::NR_IDREGS] {
    macro_rules! mrs {
        ($r:literal) => {{
            let x: u64;
            // SAFETY: reading an ID register at EL2 has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $r), out(reg) x, options(nomem, nostack, preserves_flags)) };
            x
        }};
    }
    let mut v = [0u64; crate::cpu::idreg::NR_IDREGS];
        v[0] = mrs!("S3_0_C0_C1_0");
        v[1] = mrs!("S3_0_C0_C1_1");
        v[2] = mrs!("S3_0_C0_C1_2");
        v[3] = mrs!("S3_0_C0_C1_3");
        v[4] = mrs!("S3_0_C0_C1_4");
        v[5] = mrs!("S3_0_C0_C1_5");
        v[6] = mrs!("S3_0_C0_C1_6");
        v[7] = mrs!("S3_0_C0_C1_7");
        v[8] = mrs!("S3_0_C0_C2_0");
        v[9] = mrs!("S3_0_C0_C2_1");
        v[10] = mrs!("S3_0_C0_C2_2");
        v[11] = mrs!("S3_0_C0_C2_3");
        v[12] = mrs!("S3_0_C0_C2_4");
        v[13] = mrs!("S3_0_C0_C2_5");
        v[14] = mrs!("S3_0_C0_C2_6");
        v[15] = mrs!("S3_0_C0_C2_7");
        v[16] = mrs!("S3_0_C0_C3_0");
        v[17] = mrs!("S3_0_C0_C3_1");
        v[18] = mrs!("S3_0_C0_C3_2");
        v[19] = mrs!("S3_0_C0_C3_3");
        v[20] = mrs!("S3_0_C0_C3_4");
        v[21] = mrs!("S3_0_C0_C3_5");
        v[22] = mrs!("S3_0_C0_C3_6");
        v[23] = mrs!("S3_0_C0_C3_7");
        v[24] = mrs!("S3_0_C0_C4_0");
        v[25] = mrs!("S3_0_C0_C4_1");
        v[26] = mrs!("S3_0_C0_C4_2");
        v[27] = mrs!("S3_0_C0_C4_3");
        v[28] = mrs!("S3_0_C0_C4_4");
        v[29] = mrs!("S3_0_C0_C4_5");
        v[30] = mrs!("S3_0_C0_C4_6");
        v[31] = mrs!("S3_0_C0_C4_7");
        v[32] = mrs!("S3_0_C0_C5_0");
        v[33] = mrs!("S3_0_C0_C5_1");
        v[34] = mrs!("S3_0_C0_C5_2");
        v[35] = mrs!("S3_0_C0_C5_3");
        v[36] = mrs!("S3_0_C0_C5_4");
        v[37] = mrs!("S3_0_C0_C5_5");
        v[38] = mrs!("S3_0_C0_C5_6");
        v[39] = mrs!("S3_0_C0_C5_7");
        v[40] = mrs!("S3_0_C0_C6_0");
        v[41] = mrs!("S3_0_C0_C6_1");
        v[42] = mrs!("S3_0_C0_C6_2");
        v[43] = mrs!("S3_0_C0_C6_3");
        v[44] = mrs!("S3_0_C0_C6_4");
        v[45] = mrs!("S3_0_C0_C6_5");
        v[46] = mrs!("S3_0_C0_C6_6");
        v[47] = mrs!("S3_0_C0_C6_7");
        v[48] = mrs!("S3_0_C0_C7_0");
        v[49] = mrs!("S3_0_C0_C7_1");
        v[50] = mrs!("S3_0_C0_C7_2");
        v[51] = mrs!("S3_0_C0_C7_3");
        v[52] = mrs!("S3_0_C0_C7_4");
        v[53] = mrs!("S3_0_C0_C7_5");
        v[54] = mrs!("S3_0_C0_C7_6");
        v[55] = mrs!("S3_0_C0_C7_7");
    v
}

/// Whether the CPU implements FEAT_MTE2 (`ID_AA64PFR1_EL1.MTE >= 2`).
pub fn has_mte2() -> bool {
    (ID_AA64PFR1_EL1.get() >> 8) & 0xF >= 2
}

pub(super) fn ps_field(pa_bits: u8) -> u64 {
    match pa_bits {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        _ => 5,
    }
}

/// The EL2 MMU configuration, computed once by the boot CPU and reused by the others.
#[derive(Clone, Copy, Debug)]
pub struct El2MmuConfig {
    /// `TTBR0_EL2`.
    pub ttbr0: u64,
    /// `TCR_EL2`.
    pub tcr: u64,
    /// `MAIR_EL2`.
    pub mair: u64,
    /// `SCTLR_EL2` with the MMU on.
    pub sctlr: u64,
}

impl El2MmuConfig {
    /// The boot CPU's configuration as this CPU must use it: `SCTLR_EL2.ATA` only where this
    /// CPU has FEAT_MTE2 (the bit is RES0 otherwise). EL2 clears tags only for MTE VMs, which
    /// need FEAT_MTE2 on every CPU ([`crate::cpu::features`]). Reads only ID registers, so it may run
    /// with the MMU off.
    pub fn for_this_cpu(self) -> Self {
        Self { sctlr: if has_mte2() { self.sctlr } else { self.sctlr & !SCTLR_EL2_ATA }, ..self }
    }

    /// The configuration for EL2's stage 1 `table`.
    pub fn new(table: &PageTable, pa_bits: u8) -> Self {
        let t0sz = 64 - table.ia_bits() as u64;
        Self {
            ttbr0: table.root().0,
            tcr: TCR_EL2_RES1 | t0sz | WALK_ATTRS | ps_field(pa_bits) << 16,
            mair: MAIR_EL2_VALUE,
            // TCF stays 0: EL2's own accesses are never tag checked.
            sctlr: SCTLR_EL2_RES1
                | SCTLR_EL2_EOS
                | SCTLR_EL2_M
                | SCTLR_EL2_C
                | SCTLR_EL2_SA
                | SCTLR_EL2_I
                | SCTLR_EL2_WXN
                | if has_mte2() { SCTLR_EL2_ATA | SCTLR_EL2_ITFSB } else { 0 },
        }
    }
}

/// Turns on EL2's MMU with `cfg`.
///
/// # Safety
/// Must run at EL2 with the MMU off, and `cfg` must describe valid tables that identity-map
/// the code being executed, its stack and its data, so execution continues after the `ISB`.
pub unsafe fn enable_el2_mmu(cfg: &El2MmuConfig) {
    MAIR_EL2.set(cfg.mair);
    TCR_EL2.set(cfg.tcr);
    TTBR0_EL2.set(cfg.ttbr0);
    // Table writes (made with the MMU off) complete before the walker can use them, and no
    // stale EL2 translation survives from before.
    dsb_ish();
    // SAFETY: invalidating EL2's TLB entries is always allowed at EL2.
    unsafe { asm!("tlbi alle2", options(nostack, preserves_flags)) };
    dsb_ish();
    // MAIR/TCR/TTBR writes take effect before the MMU is turned on.
    isb();
    SCTLR_EL2.set(cfg.sctlr);
    // The MMU is on for every instruction after this one.
    isb();
}

/// Cleans `[addr, addr + len)` to the point of coherency, so a CPU that still runs with its
/// MMU (and so its data cache) off reads what this CPU wrote.
pub fn clean_dcache_range(addr: u64, len: u64) {
    let line = dcache_line_size();
    let mut a = addr & !(line - 1);
    while a < addr + len {
        // SAFETY: `dc cvac` on a mapped address only writes back a cache line.
        unsafe { asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    // The clean completes before anything that depends on it (e.g. starting another CPU).
    dsb_ish();
}

/// This CPU's `CTR_EL0`.
pub fn ctr_el0() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    ctr
}

/// Smallest data cache line of this CPU, in bytes (`CTR_EL0.DminLine` is log2 of words).
pub(crate) fn dcache_line_size() -> u64 {
    4 << ((ctr_el0() >> 16) & 0xF)
}

/// Syndrome and fault-address registers of the current trap.
#[derive(Clone, Copy, Debug)]
pub struct TrapRegs {
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// `HPFAR_EL2`.
    pub hpfar: u64,
}

/// Reads the syndrome registers.
pub fn trap_regs() -> TrapRegs {
    TrapRegs { esr: ESR_EL2.get(), far: FAR_EL2.get(), hpfar: HPFAR_EL2.get() }
}

/// Reads `ESR_EL2` alone (the trap shim's first question; only an abort reads the fault
/// addresses).
#[inline(always)]
pub fn esr_el2() -> u64 {
    ESR_EL2.get()
}

/// `VBAR_EL1` of the interrupted lower EL.
pub fn vbar_el1() -> u64 {
    VBAR_EL1.get()
}

/// Writes the EL1 exception registers of an injected exception.
pub fn write_el1_exception(esr: u64, far: u64, elr: u64, spsr: u64) {
    ESR_EL1.set(esr);
    FAR_EL1.set(far);
    ELR_EL1.set(elr);
    SPSR_EL1.set(spsr);
}

/// Calls firmware with `SMC #0`.
pub fn smc(function: u32, args: [u64; 17]) -> [u64; 18] {
    smccc::smc64(function, args)
}

