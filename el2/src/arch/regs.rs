//! System registers, barriers and TLB maintenance.

use crate::cpu::controls::hcr;
use crate::mem::pgtable::{PageTable, MAIR_EL2_VALUE};
use aarch64_cpu::registers::*;
use core::arch::asm;

const SCTLR_EL2_RES1: u64 = 0x30C5_0830;
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
/// `SCTLR_EL1` the host starts with: RES1 bits, MMU and caches off.
const SCTLR_EL1_HOST_RESET: u64 = 0x30D0_0800;
const TCR_EL2_RES1: u64 = (1 << 31) | (1 << 23);
/// `CPTR_EL2` (non-VHE): RES1 bits, `TZ` and `TSM` set (SVE/SME trap: EL2 does not switch
/// them), `TFP` clear (FP/SIMD is the host's).
const CPTR_EL2_HOST: u64 = 0x33FF;
const VTCR_EL2_RES1: u64 = 1 << 31;
/// `SPSR_EL2` for entering the host: EL1h, D/A/I/F masked.
const SPSR_EL1H_DAIF: u64 = 0x3C5;

/// Translation-table walk attributes shared by `TCR_EL2` and `VTCR_EL2`: `IRGN0`/`ORGN0` =
/// Write-Back Read/Write-Allocate, `SH0` = Inner Shareable, `TG0` = 4 KiB.
const WALK_ATTRS: u64 = (0b01 << 8) | (0b01 << 10) | (0b11 << 12);

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

/// This CPU's identification, for [`crate::cpu::features`].
pub fn cpu_id() -> crate::cpu::features::CpuId {
    crate::cpu::features::CpuId { midr: midr(), regs: read_idregs() }
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

fn ps_field(pa_bits: u8) -> u64 {
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

/// Smallest data cache line, in bytes (`CTR_EL0.DminLine` is log2 of words).
pub(crate) fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xF)
}

/// Stage-2 and trap configuration for running the host on this CPU.
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// `VTTBR_EL2` (host VMID 0).
    pub vttbr: u64,
    /// `VTCR_EL2`.
    pub vtcr: u64,
    /// `HCR_EL2`.
    pub hcr: u64,
}

impl HostConfig {
    /// The boot CPU's host configuration as this CPU must use it: `HCR_EL2.ATA` only with
    /// FEAT_MTE2 and `HCR_EL2.API/APK` only with pointer authentication, from this CPU's own
    /// ID registers `regs` (the bits are RES0 otherwise). The host reads the real ID registers
    /// and decides for itself; guests' MTE and pointer authentication come from every CPU.
    pub fn for_this_cpu(&self, regs: &[u64; crate::cpu::idreg::NR_IDREGS]) -> Self {
        let mut hcr = self.hcr;
        if !crate::cpu::idreg::mte2(regs) {
            hcr &= !hcr::ATA;
        }
        if !crate::cpu::idreg::has_pauth(regs) {
            hcr &= !(hcr::API | hcr::APK);
        }
        Self { hcr, ..*self }
    }

    /// The configuration for the host stage 2 `table`.
    pub fn new(table: &PageTable, pa_bits: u8) -> Self {
        let sl0 = match table.start_level() {
            0 => 2,
            1 => 1,
            _ => 0,
        };
        let vtcr = VTCR_EL2_RES1 | (64 - table.ia_bits() as u64) | sl0 << 6 | WALK_ATTRS | ps_field(pa_bits) << 16;
        // Traps deny by default: the host gets stage 2, SMC trapping, and only what it needs.
        // ATA and API/APK are filtered per CPU by `for_this_cpu`.
        let hcr = hcr::VM | hcr::SWIO | hcr::DC | hcr::TSC | hcr::RW | hcr::API | hcr::APK | hcr::ATA;
        Self { vttbr: table.root().0, vtcr, hcr }
    }
}

/// Programs this CPU to run the host under `cfg`.
pub fn activate_host(cfg: &HostConfig) {
    // This CPU's features decide which control registers exist; the world switch reads them
    // back on every guest load.
    let features = crate::cpu::controls::ControlFeatures::from_id_regs(
        ID_AA64PFR0_EL1.get(),
        ID_AA64PFR1_EL1.get(),
        ID_AA64DFR0_EL1.get(),
        ID_AA64MMFR0_EL1.get(),
        ID_AA64MMFR1_EL1.get(),
    );
    super::switch::CONTROL_FEATURES[cpu_index() % crate::platform::MAX_CPUS].store(features.bits(), core::sync::atomic::Ordering::Relaxed);
    write_boot_controls(&crate::cpu::controls::boot_controls(&features));
    super::switch::clear_vgic();
    VTCR_EL2.set(cfg.vtcr);
    VTTBR_EL2.set(cfg.vttbr);
    // VTCR/VTTBR are in effect before the TLB invalidation below uses the VMID.
    isb();
    // SAFETY: invalidating all EL1&0 stage 1 and 2 entries of the current VMID is always
    // allowed at EL2; it drops anything left from before EL2 started.
    unsafe { asm!("tlbi vmalls12e1", options(nostack, preserves_flags)) };
    dsb_ish();
    CPTR_EL2.set(CPTR_EL2_HOST);
    let pmcr_n = {
        let v: u64;
        // SAFETY: reading PMCR_EL0 at EL2 has no side effects.
        unsafe { asm!("mrs {}, pmcr_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
        (v >> 11) & 0x1F
    };
    // MDCR_EL2.HPMN = PMCR_EL0.N: every counter belongs to EL1&0; no debug or PMU traps.
    MDCR_EL2.set(pmcr_n);
    // CNTHCTL_EL2.EL1PCTEN | EL1PCEN: the host uses the physical counter and timer directly.
    CNTHCTL_EL2.set(0b11);
    CNTVOFF_EL2.set(0);
    // EL2's physical timer off (its ENABLE resets to an UNKNOWN value): it only ever backs a
    // running guest's emulated EL1 physical timer (`GuestArch::ptimer_backing`), and must not
    // fire PPI 26 at the host before the first guest runs here.
    CNTHP_CTL_EL2.set(0);
    // The host sees the real MIDR/MPIDR; both registers reset to UNKNOWN values.
    let midr = MIDR_EL1.get();
    // SAFETY: writing VPIDR_EL2 only changes what EL1 reads from MIDR_EL1.
    unsafe { asm!("msr vpidr_el2, {}", in(reg) midr, options(nostack, preserves_flags)) };
    VMPIDR_EL2.set(MPIDR_EL1.get());
    SCTLR_EL1.set(SCTLR_EL1_HOST_RESET);
    HCR_EL2.set(cfg.hcr);
    // All of the above is in effect before anything runs at EL1 (the ERET that enters the
    // host is context synchronising too; this makes the order independent of the caller).
    isb();
}

/// Writes the control registers EL2 otherwise never touches to their known values
/// (`controls::boot_controls`); the `ISB` at the end of [`activate_host`] puts them in force.
fn write_boot_controls(b: &crate::cpu::controls::BootControls) {
    // Each register is written only when this CPU implements it (`boot_controls` returns
    // `None` otherwise), and each only configures EL2 traps or EL1&0 behaviour, which does not
    // run until the ERET into the host.
    if let Some(v) = b.hcrx {
        // SAFETY: see above (FEAT_HCX).
        unsafe { asm!("msr S3_4_C1_C2_2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // HCRX_EL2
    }
    if let Some(v) = b.fgt {
        // SAFETY: see above (FEAT_FGT).
        unsafe {
            asm!(
                "msr S3_4_C1_C1_4, {v}", // HFGRTR_EL2
                "msr S3_4_C1_C1_5, {v}", // HFGWTR_EL2
                "msr S3_4_C1_C1_6, {v}", // HFGITR_EL2
                "msr S3_4_C3_C1_4, {v}", // HDFGRTR_EL2
                "msr S3_4_C3_C1_5, {v}", // HDFGWTR_EL2
                v = in(reg) v,
                options(nomem, nostack, preserves_flags)
            )
        };
    }
    if let Some(v) = b.icc_sre_el2 {
        // SAFETY: see above (GICv3 system-register interface).
        unsafe { asm!("msr S3_4_C12_C9_5, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // ICC_SRE_EL2
    }
    if let Some(v) = b.trfcr_el2 {
        // SAFETY: see above (FEAT_TRF).
        unsafe { asm!("msr S3_4_C1_C2_1, {}", in(reg) v, options(nomem, nostack, preserves_flags)) }; // TRFCR_EL2
    }
}

/// Enters the host at EL1h at `entry` with `x0 = arg`, every other GPR zero, and D/A/I/F
/// masked.
///
/// # Safety
/// [`activate_host`] must have run on this CPU.
pub unsafe fn enter_host(entry: u64, arg: u64) -> ! {
    ELR_EL2.set(entry);
    SPSR_EL2.set(SPSR_EL1H_DAIF);
    // SAFETY: the caller guarantees the host configuration is active; the GPRs are cleared so
    // no EL2 value reaches the host. ERET is context synchronising (ELR/SPSR writes).
    unsafe {
        asm!(
            "mov x1, xzr", "mov x2, xzr", "mov x3, xzr", "mov x4, xzr", "mov x5, xzr",
            "mov x6, xzr", "mov x7, xzr", "mov x8, xzr", "mov x9, xzr", "mov x10, xzr",
            "mov x11, xzr", "mov x12, xzr", "mov x13, xzr", "mov x14, xzr", "mov x15, xzr",
            "mov x16, xzr", "mov x17, xzr", "mov x18, xzr", "mov x19, xzr", "mov x20, xzr",
            "mov x21, xzr", "mov x22, xzr", "mov x23, xzr", "mov x24, xzr", "mov x25, xzr",
            "mov x26, xzr", "mov x27, xzr", "mov x28, xzr", "mov x29, xzr", "mov x30, xzr",
            "eret",
            in("x0") arg,
            options(noreturn)
        )
    }
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

/// Reads `ESR_EL2` alone (the hypercall path needs nothing else).
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

