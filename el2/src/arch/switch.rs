//! The world switch: from the host (inside a `VCPU_RUN` hypercall) into a guest and back.
//!
//! `load` / `run` / `put` read as a script of paired steps; the order matters and is commented
//! where it does. A `VCPU_RUN` loads the vCPU once, runs it as often as EL2 handles its exits
//! itself (only GPRs, PC and PSTATE move then), and puts it back once. EL2 itself never touches
//! FP/SIMD (softfloat target); a guest's FP/SIMD registers and pointer-authentication keys
//! move lazily, at its first trapped use in a run (`fp_load`, `pauth_load`).
//!
//! ```text
//! load: save host EL1 state → guest traps (and the vCPU's virtual GIC CPU interface: VMCR,
//!       active priorities, the used list registers, ICH_HCR_EL2.En) → guest stage 2
//!       → restore guest EL1 state
//! run (per exit): ELR/SPSR → __guest_enter (GPRs, ERET) … guest … vector → __guest_exit
//!                 → read syndrome, PC, PSTATE
//! put:  save guest EL1 state → restore host EL1 state (the virtual GIC interface back to the
//!       vCPU, ICH_HCR_EL2 = 0, its list registers cleared) → host traps + stage 2 → ISB
//! ```

use super::regs::isb;
use super::Cpu;
use crate::cpu::controls::{guest_controls, hcr, ControlFeatures};
use crate::platform::MAX_CPUS;
use crate::guest::vcpu::{FpRegs, VcpuCtx, NR_SYSREGS};
use crate::guest::vgic;
use crate::hw::{GuestConfig, GuestTrap, TrapKind, WorldSwitch};
use aarch64_cpu::registers::*;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Per CPU: the context of the vCPU running on it (0 when the host runs). The lower-EL vectors
/// read it to tell a guest exit from a host trap.
#[no_mangle]
pub static GUEST_CTX: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

// FP/SIMD save and restore. EL2 is built without FP (softfloat); these are its only FP
// instructions, run with CPTR_EL2.TFP clear. x0 = &FpRegs (V0..V31 at 0, FPSR at 512, FPCR 520).
core::arch::global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
.global __fp_save
__fp_save:
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mrs x1, fpsr
    mrs x2, fpcr
    add x0, x0, #512
    stp x1, x2, [x0]
    ret
.global __fp_restore
__fp_restore:
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    add x0, x0, #512
    ldp x1, x2, [x0]
    msr fpsr, x1
    msr fpcr, x2
    ret
"#
);

extern "C" {
    /// Stores V0..V31, FPSR, FPCR at `to`. Needs `CPTR_EL2.TFP` clear.
    fn __fp_save(to: *mut FpRegs);
    /// Loads V0..V31, FPSR, FPCR from `from`. Needs `CPTR_EL2.TFP` clear.
    fn __fp_restore(from: *const FpRegs);
    /// Saves EL2's callee-saved registers in `host_save`, loads the guest GPRs from `ctx` and
    /// enters the guest; returns (through `__guest_exit`) the exit kind: 0 synchronous, 1 IRQ,
    /// 2 FIQ, 3 SError.
    fn __guest_enter(ctx: *mut u64, host_save: *mut [u64; 14]) -> u64;
}

/// Defines `$save(out)` and `$restore(v)` for a bank of system registers, in the order given.
/// Each invocation names only registers that EL2 accesses without trapping and that act on
/// EL1&0 alone, and says why for its bank.
macro_rules! sysreg_bank {
    ($save:ident, $restore:ident, $n:expr, [$($name:literal),* $(,)?]) => {
        fn $save(out: &mut [u64; $n]) {
            let mut i = 0;
            $(
                let v: u64;
                // SAFETY: reading a register of this bank at EL2 has no side effects (see the
                // invocation).
                unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
                out[i] = v;
                i += 1;
            )*
            let _ = i;
        }

        fn $restore(v: &[u64; $n]) {
            let mut i = 0;
            $(
                // SAFETY: registers of this bank only affect EL1&0, which does not run until
                // the ERET that follows every restore (the host's, or the guest's).
                unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v[i], options(nomem, nostack, preserves_flags)) };
                i += 1;
            )*
            let _ = i;
        }
    };
}

// APIAKeyLo/Hi, APIBKeyLo/Hi, APDAKeyLo/Hi, APDBKeyLo/Hi, APGAKeyLo/Hi (shared_abi::reg::PAUTH_KEYS).
// The keys only affect pointer-authentication instructions at EL1&0; EL2 itself is not built
// with pointer authentication, so it never uses the guest's keys.
sysreg_bank!(save_keys, restore_keys, 10, [
    "S3_0_C2_C1_0", "S3_0_C2_C1_1", "S3_0_C2_C1_2", "S3_0_C2_C1_3", "S3_0_C2_C2_0",
    "S3_0_C2_C2_1", "S3_0_C2_C2_2", "S3_0_C2_C2_3", "S3_0_C2_C3_0", "S3_0_C2_C3_1",
]);

/// `HCR_EL2.APK | HCR_EL2.API`: pointer-authentication keys and instructions untrapped.
const HCR_APK_API: u64 = hcr::APK | hcr::API;

// RGSR_EL1, GCR_EL1, TFSR_EL1, TFSRE0_EL1 (shared_abi::reg::MTE_REGS): tag generation and
// checking at EL1&0. Only switched for MTE VMs, so FEAT_MTE2 is implemented.
sysreg_bank!(save_mte, restore_mte, 4, ["S3_0_C1_C0_5", "S3_0_C1_C0_6", "S3_0_C5_C6_0", "S3_0_C5_C6_1"]);

/// The EL1 (and EL0) context every world switch moves: plain EL1&0 state, never trapped at EL2.
macro_rules! el1_sysregs {
    ($($name:literal),* $(,)?) => {
        /// Names of the switched registers, in context order (checked against
        /// `shared_abi::reg::SYSREGS` at boot).
        pub const SWITCHED_SYSREGS: [&str; NR_SYSREGS] = [$($name),*];
        sysreg_bank!(save_el1_sysregs, restore_el1_sysregs, NR_SYSREGS, [$($name),*]);
    };
}

el1_sysregs!(
    "sctlr_el1", "cpacr_el1", "ttbr0_el1", "ttbr1_el1", "tcr_el1", "afsr0_el1", "afsr1_el1",
    "esr_el1", "far_el1", "par_el1", "mair_el1", "amair_el1", "vbar_el1", "contextidr_el1",
    "tpidr_el1", "cntkctl_el1", "csselr_el1", "tpidr_el0", "tpidrro_el0", "cntv_ctl_el0",
    "cntv_cval_el0",
);

/// Checks, once at boot, that the assembly-side list matches the ABI's register list.
pub fn check_sysreg_tables() -> Result<(), &'static str> {
    for (a, (b, _)) in SWITCHED_SYSREGS.iter().zip(shared_abi::reg::SYSREGS.iter()) {
        if !a.eq_ignore_ascii_case(b) {
            return Err("world-switch register list does not match shared_abi::reg::SYSREGS");
        }
    }
    Ok(())
}

/// EL1 state that is not in the system-register list.
#[derive(Default)]
struct El1Extra {
    sp_el0: u64,
    sp_el1: u64,
    elr_el1: u64,
    spsr_el1: u64,
}

fn save_el1_extra() -> El1Extra {
    El1Extra { sp_el0: SP_EL0.get(), sp_el1: SP_EL1.get(), elr_el1: ELR_EL1.get(), spsr_el1: SPSR_EL1.get() }
}

fn restore_el1_extra(e: &El1Extra) {
    SP_EL0.set(e.sp_el0);
    SP_EL1.set(e.sp_el1);
    ELR_EL1.set(e.elr_el1);
    SPSR_EL1.set(e.spsr_el1);
}

/// `CPTR_EL2.TFP`: trap FP/SIMD.
const CPTR_TFP: u64 = crate::cpu::controls::cptr::TFP;

/// Per CPU: its [`ControlFeatures`] ([`ControlFeatures::bits`]), read once by `activate_host`.
pub static CONTROL_FEATURES: [core::sync::atomic::AtomicU16; MAX_CPUS] = [const { core::sync::atomic::AtomicU16::new(0) }; MAX_CPUS];

/// This CPU's features.
fn features() -> ControlFeatures {
    ControlFeatures::from_bits(CONTROL_FEATURES[super::cpu_index() % MAX_CPUS].load(Ordering::Relaxed))
}

/// Reads `$r` (an `S<op0>_<op1>_C<n>_C<m>_<op2>` name or an architectural one).
macro_rules! mrs {
    ($r:literal) => {{
        let v: u64;
        // SAFETY: the callers read only registers that exist on this CPU (checked against its
        // features), at EL2, without side effects.
        unsafe { asm!(concat!("mrs {}, ", $r), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// Writes `$v` to `$r`.
macro_rules! msr {
    ($r:literal, $v:expr) => {
        // SAFETY: the callers write only registers that exist on this CPU, with values that
        // affect EL1&0 (which does not run until the next ERET) or restore the host's own.
        unsafe { asm!(concat!("msr ", $r, ", {}"), in(reg) $v, options(nomem, nostack, preserves_flags)) }
    };
}

fn guest_vtcr(cfg: &GuestConfig) -> u64 {
    let sl0 = match cfg.start_level {
        0 => 2,
        1 => 1,
        _ => 0,
    };
    // Same walk attributes and PS as the host's VTCR_EL2; only T0SZ and SL0 differ.
    let host = VTCR_EL2.get();
    (host & !0xFF) | (64 - cfg.ipa_bits as u64) | sl0 << 6
}

/// Writes `ICH_LR<n>_EL2` (`n` < 16; the caller's used-register mask only names list
/// registers the CPU implements, `ICH_VTR_EL2.ListRegs`).
fn write_lr(n: usize, v: u64) {
    match n {
        0 => msr!("S3_4_C12_C12_0", v),
        1 => msr!("S3_4_C12_C12_1", v),
        2 => msr!("S3_4_C12_C12_2", v),
        3 => msr!("S3_4_C12_C12_3", v),
        4 => msr!("S3_4_C12_C12_4", v),
        5 => msr!("S3_4_C12_C12_5", v),
        6 => msr!("S3_4_C12_C12_6", v),
        7 => msr!("S3_4_C12_C12_7", v),
        8 => msr!("S3_4_C12_C13_0", v),
        9 => msr!("S3_4_C12_C13_1", v),
        10 => msr!("S3_4_C12_C13_2", v),
        11 => msr!("S3_4_C12_C13_3", v),
        12 => msr!("S3_4_C12_C13_4", v),
        13 => msr!("S3_4_C12_C13_5", v),
        14 => msr!("S3_4_C12_C13_6", v),
        _ => msr!("S3_4_C12_C13_7", v),
    }
}

/// Reads `ICH_LR<n>_EL2` (as [`write_lr`]).
fn read_lr(n: usize) -> u64 {
    match n {
        0 => mrs!("S3_4_C12_C12_0"),
        1 => mrs!("S3_4_C12_C12_1"),
        2 => mrs!("S3_4_C12_C12_2"),
        3 => mrs!("S3_4_C12_C12_3"),
        4 => mrs!("S3_4_C12_C12_4"),
        5 => mrs!("S3_4_C12_C12_5"),
        6 => mrs!("S3_4_C12_C12_6"),
        7 => mrs!("S3_4_C12_C12_7"),
        8 => mrs!("S3_4_C12_C13_0"),
        9 => mrs!("S3_4_C12_C13_1"),
        10 => mrs!("S3_4_C12_C13_2"),
        11 => mrs!("S3_4_C12_C13_3"),
        12 => mrs!("S3_4_C12_C13_4"),
        13 => mrs!("S3_4_C12_C13_5"),
        14 => mrs!("S3_4_C12_C13_6"),
        _ => mrs!("S3_4_C12_C13_7"),
    }
}

/// Per CPU: how many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` it has ([`vgic::apr_count`] of its
/// `ICH_VTR_EL2`), read once by [`clear_vgic`] at boot.
static APR_COUNT: [core::sync::atomic::AtomicU8; MAX_CPUS] = [const { core::sync::atomic::AtomicU8::new(0) }; MAX_CPUS];

/// Writes the first `count` (1, 2 or 4: [`vgic::apr_count`]) `ICH_AP0R<n>_EL2` and
/// `ICH_AP1R<n>_EL2`; the others do not exist on this CPU.
fn write_aprs(count: usize, ap0: &[u32; 4], ap1: &[u32; 4]) {
    msr!("S3_4_C12_C8_0", ap0[0] as u64);
    msr!("S3_4_C12_C9_0", ap1[0] as u64);
    if count >= 2 {
        msr!("S3_4_C12_C8_1", ap0[1] as u64);
        msr!("S3_4_C12_C9_1", ap1[1] as u64);
    }
    if count >= 4 {
        msr!("S3_4_C12_C8_2", ap0[2] as u64);
        msr!("S3_4_C12_C9_2", ap1[2] as u64);
        msr!("S3_4_C12_C8_3", ap0[3] as u64);
        msr!("S3_4_C12_C9_3", ap1[3] as u64);
    }
}

/// Reads what [`write_aprs`] writes.
fn read_aprs(count: usize, ap0: &mut [u32; 4], ap1: &mut [u32; 4]) {
    ap0[0] = mrs!("S3_4_C12_C8_0") as u32;
    ap1[0] = mrs!("S3_4_C12_C9_0") as u32;
    if count >= 2 {
        ap0[1] = mrs!("S3_4_C12_C8_1") as u32;
        ap1[1] = mrs!("S3_4_C12_C9_1") as u32;
    }
    if count >= 4 {
        ap0[2] = mrs!("S3_4_C12_C8_2") as u32;
        ap1[2] = mrs!("S3_4_C12_C9_2") as u32;
        ap0[3] = mrs!("S3_4_C12_C8_3") as u32;
        ap1[3] = mrs!("S3_4_C12_C9_3") as u32;
    }
}

/// This CPU's `ICH_VTR_EL2`, if it has the GICv3 system-register interface (reported to
/// [`crate::hyp::Hyp::report_vgic`] when the CPU enters EL2).
pub fn ich_vtr() -> Option<u64> {
    features().gicv3.then(|| mrs!("S3_4_C12_C11_1"))
}

/// Boot, on every CPU with GICv3: the virtual interface off and every list register and
/// active priority zero (their reset values are UNKNOWN), so a guest's load finds only its
/// own state in them.
pub fn clear_vgic() {
    if !features().gicv3 {
        return;
    }
    // ICC_SRE_EL2.SRE (written by the boot controls just before) enables EL2's accesses to
    // the ICH_* registers: in effect before the first of them.
    isb();
    msr!("S3_4_C12_C11_0", 0u64);
    let vtr = mrs!("S3_4_C12_C11_1");
    let apr = vgic::apr_count(vtr);
    APR_COUNT[super::cpu_index() % MAX_CPUS].store(apr as u8, Ordering::Relaxed);
    write_aprs(apr, &[0; 4], &[0; 4]);
    for n in 0..=(vtr & 0x1F) as usize {
        write_lr(n, 0);
    }
}

/// What `load` saved of the host, for `put`.
pub struct HostSaved {
    sys: [u64; NR_SYSREGS],
    extra: El1Extra,
    hcr: u64,
    cptr: u64,
    mdcr: u64,
    cnthctl: u64,
    vtcr: u64,
    vttbr: u64,
    vmpidr: u64,
    /// The guest's FP/SIMD registers are loaded (the host's are in this CPU's [`HostScratch`]).
    fp_loaded: bool,
    /// CPTR_EL2 for the guest once its FP/SIMD is loaded.
    guest_cptr_fp: u64,
    /// The guest's pointer-authentication keys are loaded (the host's are in the scratch).
    keys_loaded: bool,
    /// An MTE VM: its MTE registers are loaded (the host's are in the scratch).
    mte_loaded: bool,
    /// The host's `MDSCR_EL1` (the guest runs with 0: no host breakpoint, watchpoint or step
    /// can fire in it).
    mdscr: u64,
    /// The host's `TRFCR_EL1`, if trace was prohibited for the run (FEAT_TRF).
    trfcr: Option<u64>,
    /// The host's `PMCNTENSET_EL0`, if its counters were stopped for a protected run.
    pmcnten: Option<u64>,
    /// The host's `TPIDR2_EL0`, if the CPU has FEAT_SME.
    tpidr2: Option<u64>,
    /// The CPU has the GICv3 system-register interface: the virtual CPU interface moves with
    /// the vCPU, with this many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` (0: no GICv3).
    gicv3: u8,
    /// The vCPU's interface was idle at load ([`crate::guest::vgic::VgicCpu::idle`]): only
    /// `ICH_VMCR_EL2` moved.
    vgic_idle: bool,
}

/// Where a CPU keeps the host's FP/SIMD registers and keys while a guest's are loaded. Kept
/// out of [`HostSaved`] so a `VCPU_RUN` that switches neither does not copy 600 bytes around.
struct HostScratch {
    fp: FpRegs,
    keys: [u64; 10],
    mte: [u64; 4],
}

struct PerCpuScratch(core::cell::UnsafeCell<HostScratch>);
// SAFETY: each CPU touches only its own entry (indexed by its CPU number), and only between
// `load` and `put` of the one vCPU it runs; EL2 is never re-entered on a CPU meanwhile.
unsafe impl Sync for PerCpuScratch {}

static SCRATCH: [PerCpuScratch; MAX_CPUS] =
    [const { PerCpuScratch(core::cell::UnsafeCell::new(HostScratch { fp: FpRegs::ZERO, keys: [0; 10], mte: [0; 4] })) }; MAX_CPUS];

/// This CPU's scratch area.
fn scratch() -> &'static mut HostScratch {
    // SAFETY: see `PerCpuScratch`: this CPU's entry, used by no other CPU and by no other
    // live reference on this one (callers use it for one save or restore at a time).
    unsafe { &mut *SCRATCH[super::cpu_index() % MAX_CPUS].0.get() }
}

impl Cpu {
    /// Steps 1–3 of the script: host out, guest traps, stage 2 and EL1 state in.
    fn load_guest(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> HostSaved {
        // 1. Host EL1 state, and the host's EL2 configuration to come back to.
        let mut sys = [0u64; NR_SYSREGS];
        save_el1_sysregs(&mut sys);
        let saved = HostSaved {
            sys,
            extra: save_el1_extra(),
            hcr: HCR_EL2.get(),
            cptr: CPTR_EL2.get(),
            mdcr: MDCR_EL2.get(),
            cnthctl: CNTHCTL_EL2.get(),
            vtcr: VTCR_EL2.get(),
            vttbr: VTTBR_EL2.get(),
            vmpidr: VMPIDR_EL2.get(),
            fp_loaded: false,
            guest_cptr_fp: 0,
            keys_loaded: false,
            mte_loaded: false,
            mdscr: mrs!("mdscr_el1"),
            trfcr: None,
            pmcnten: None,
            tpidr2: None,
            gicv3: 0,
            vgic_idle: false,
        };

        // 2. Guest traps and stage 2. EL1&0 does not run until the ERET, so architecturally the
        //    order of steps 2 and 3 is free; stage 2 goes first so that guest stage-1 state is
        //    never paired with the host's VMID (what speculative-AT errata would care about).
        let f = features();
        let traps = guest_controls(&f, saved.mdcr, cfg, cfg.protected);
        let mut saved = saved;
        saved.guest_cptr_fp = traps.cptr & !CPTR_TFP;
        // EL1&0 state that has no trap, or whose trap alone would leave the host's value in
        // force: neutralised or switched here (controls.rs, "switched or trapped"). No barrier
        // of their own: the ERET into the guest is context synchronising, so MDSCR_EL1 = 0,
        // TRFCR_EL1 = 0 and the stopped counters are in force from the guest's first
        // instruction; trace is prohibited for the whole run, so put has nothing to flush
        // (TSB CSYNC) before restoring the host's TRFCR_EL1, and put's final ISB puts the
        // host's values back in force before EL2 continues.
        msr!("mdscr_el1", 0u64);
        if traps.no_trace {
            saved.trfcr = Some(mrs!("S3_0_C1_C2_1"));
            msr!("S3_0_C1_C2_1", 0u64);
        }
        if traps.stop_host_counters {
            let on = mrs!("S3_3_C9_C12_1");
            msr!("S3_3_C9_C12_2", on);
            saved.pmcnten = Some(on);
        }
        if f.sme {
            saved.tpidr2 = Some(mrs!("S3_3_C13_C0_5"));
            msr!("S3_3_C13_C0_5", ctx.tpidr2);
        }
        if f.gicv3 {
            // The vCPU's virtual CPU interface: priority mask and enables, active priorities,
            // the list registers in use (the others are zero: every put clears what it
            // loaded, and boot clears them all), then En. No ISB: the ERET synchronises.
            let v = &ctx.vgic;
            msr!("S3_4_C12_C11_7", v.vmcr);
            let apr = APR_COUNT[super::cpu_index() % MAX_CPUS].load(Ordering::Relaxed) as usize;
            saved.gicv3 = apr as u8;
            saved.vgic_idle = v.idle();
            if !saved.vgic_idle {
                write_aprs(apr, &v.ap0r, &v.ap1r);
                let mut used = v.used;
                while used != 0 {
                    let n = used.trailing_zeros() as usize;
                    write_lr(n, v.lr[n]);
                    used &= used - 1;
                }
                msr!("S3_4_C12_C11_0", vgic::ICH_HCR_GUEST);
            }
        }
        let mut hcr = traps.hcr;
        if cfg.pauth_now {
            // Eager (or recently used): the guest's keys now, pointer authentication untrapped.
            save_keys(&mut scratch().keys);
            restore_keys(&ctx.pauth_keys);
            saved.keys_loaded = true;
            hcr |= HCR_APK_API;
        }
        if cfg.mte {
            // The guest's tag-generation and tag-check state; tags accessible at EL1&0. The
            // host's asynchronous tag-check faults land in its TFSR_EL1/TFSRE0_EL1 only once
            // its outstanding accesses complete: DSB, then ISB so the reads below see them.
            // SAFETY: barriers.
            unsafe { asm!("dsb nsh", "isb", options(nostack, preserves_flags)) };
            save_mte(&mut scratch().mte);
            restore_mte(&ctx.mte);
            saved.mte_loaded = true;
            hcr |= hcr::ATA;
        }
        if cfg.fwb {
            // The VM's stage 2 uses the FWB encoding (VMs are created so only when every CPU
            // has FEAT_S2FWB). The host's stage 2 never does, and TLB entries are per VMID, so
            // the bit can change with VTTBR_EL2 without invalidation.
            hcr |= hcr::FWB;
        }
        HCR_EL2.set(hcr);
        CPTR_EL2.set(traps.cptr);
        MDCR_EL2.set(traps.mdcr);
        CNTHCTL_EL2.set(traps.cnthctl);
        // The VM's virtual count (CNTVCT = CNTPCT - CNTVOFF); the host runs with 0.
        CNTVOFF_EL2.set(cfg.cntvoff);
        // The emulated EL1 physical timer's deadline, on EL2's own physical timer.
        self.ptimer_backing(&ctx.ptimer);
        VMPIDR_EL2.set(cfg.vmpidr);
        VTCR_EL2.set(guest_vtcr(cfg));
        VTTBR_EL2.set(cfg.vttbr);

        // 3. Guest EL1 state. No ISB: the ERET in __guest_enter is context synchronising, so
        //    every register written here is in effect for the guest's first instruction.
        self.el1_from_ctx(ctx);
        saved
    }

    /// Step 4 and 5: enter, and read the exit's syndrome. Only GPRs, PC and PSTATE move.
    fn enter(&self, ctx: &mut VcpuCtx) -> GuestTrap {
        let cpu = super::cpu_index() % MAX_CPUS;
        ELR_EL2.set(ctx.pc);
        SPSR_EL2.set(ctx.pstate);
        let mut host_save = [0u64; 14];
        // GUEST_CTX tells the vectors that an exit from a lower EL is this guest's.
        GUEST_CTX[cpu].store(ctx as *mut VcpuCtx as u64, Ordering::Relaxed);
        // SAFETY: `ctx` is ours alone (a claimed vCPU), `host_save` outlives the call, and
        // __guest_enter returns only via __guest_exit, which restores callee-saved regs and SP.
        // The guest runs under its own stage 2 and the traps above: it cannot reach EL2 or host.
        let kind = unsafe { __guest_enter(ctx as *mut VcpuCtx as *mut u64, &mut host_save) };
        GUEST_CTX[cpu].store(0, Ordering::Relaxed);
        // Syndrome and guest PC/PSTATE, before anything can overwrite them.
        let trap = GuestTrap {
            kind: match kind {
                0 => TrapKind::Sync,
                1 | 2 => TrapKind::Irq,
                _ => TrapKind::SError,
            },
            esr: ESR_EL2.get(),
            far: FAR_EL2.get(),
            hpfar: HPFAR_EL2.get(),
        };
        ctx.pc = ELR_EL2.get();
        ctx.pstate = SPSR_EL2.get();
        trap
    }

    /// Steps 6 and 7: guest EL1 (and FP/SIMD, if loaded) state out, host's back, host traps and
    /// stage 2.
    fn put_guest(&self, ctx: &mut VcpuCtx, mut saved: HostSaved) {
        self.el1_to_ctx(ctx);
        if saved.keys_loaded {
            save_keys(&mut ctx.pauth_keys);
            restore_keys(&scratch().keys);
        }
        if saved.mte_loaded {
            // Asynchronous tag-check faults the guest caused are recorded in TFSR_EL1/TFSRE0_EL1
            // only once outstanding accesses complete: DSB before reading them, and ISB so the
            // reads are ordered after the update, so they land in the guest's context and not
            // the host's. (SCTLR_EL2.ITFSB also synchronises them on every entry to EL2.)
            // SAFETY: barriers.
            unsafe { asm!("dsb nsh", "isb", options(nostack, preserves_flags)) };
            save_mte(&mut ctx.mte);
            restore_mte(&scratch().mte);
            // The host's MTE registers are in effect before EL2 continues: the ISB at the end
            // of `put` (after HCR_EL2) orders it.
        }
        if saved.fp_loaded {
            // SAFETY: CPTR_EL2.TFP is clear since fp_load; both areas are valid FpRegs.
            unsafe {
                __fp_save(&mut ctx.fp);
                __fp_restore(&scratch().fp);
            }
        }
        if let Some(v) = saved.tpidr2 {
            ctx.tpidr2 = mrs!("S3_3_C13_C0_5");
            msr!("S3_3_C13_C0_5", v);
        }
        if saved.gicv3 != 0 {
            // The host runs with the virtual interface off (no maintenance interrupt), and
            // with no list register or active priority of this vCPU left in the CPU.
            let v = &mut ctx.vgic;
            v.vmcr = mrs!("S3_4_C12_C11_7");
            if !saved.vgic_idle {
                msr!("S3_4_C12_C11_0", 0u64);
                read_aprs(saved.gicv3 as usize, &mut v.ap0r, &mut v.ap1r);
                if v.ap0r != [0; 4] || v.ap1r != [0; 4] {
                    write_aprs(saved.gicv3 as usize, &[0; 4], &[0; 4]);
                }
                let mut used = v.used;
                while used != 0 {
                    let n = used.trailing_zeros() as usize;
                    v.lr[n] = read_lr(n);
                    write_lr(n, 0);
                    used &= used - 1;
                }
            }
        }
        if let Some(v) = saved.pmcnten {
            msr!("S3_3_C9_C12_1", v);
        }
        if let Some(v) = saved.trfcr {
            msr!("S3_0_C1_C2_1", v);
        }
        msr!("mdscr_el1", saved.mdscr);
        // The guest's CNTV_CTL_EL0/CNTV_CVAL_EL0 are saved (el1_to_ctx above): the host gets
        // its EL1 registers back with the virtual timer disabled, so the guest's timer can never
        // keep the physical PPI 27 asserted to the host (the host injects the guest's virtual
        // PPI 27 itself, from the exit record's deadline). No barrier of its own: the ISB at the
        // end of put makes ENABLE = 0 (and CNTVOFF_EL2 = 0 below) effective before EL2
        // continues, and the timer's output is a level, so nothing latched stays pending.
        crate::cpu::controls::host_el1_at_put(&mut saved.sys);
        restore_el1_sysregs(&saved.sys);
        restore_el1_extra(&saved.extra);
        // (Host stage-1 state briefly pairs with the guest's VMID here; EL1 does not run in
        // between, which is all the architecture requires.)
        VTTBR_EL2.set(saved.vttbr);
        VTCR_EL2.set(saved.vtcr);
        VMPIDR_EL2.set(saved.vmpidr);
        CNTHCTL_EL2.set(saved.cnthctl);
        CNTVOFF_EL2.set(0);
        // EL2's physical timer backs only a running guest's emulated timer: off for the host
        // (the ISB below makes it effective, and its level output drops with it).
        msr!("cnthp_ctl_el2", 0u64);
        MDCR_EL2.set(saved.mdcr);
        CPTR_EL2.set(saved.cptr);
        HCR_EL2.set(saved.hcr);
        // EL2 goes on to run Rust code that writes host memory (the exit record) and returns
        // to the host by ERET; the ISB makes the host configuration effective now rather than
        // at that ERET, so EL2 never runs with the guest's traps half in place.
        isb();
    }
}

impl WorldSwitch for Cpu {
    type Saved = HostSaved;

    fn load(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> HostSaved {
        self.load_guest(ctx, cfg)
    }

    fn run(&self, ctx: &mut VcpuCtx) -> GuestTrap {
        self.enter(ctx)
    }

    fn put(&self, ctx: &mut VcpuCtx, saved: HostSaved) {
        self.put_guest(ctx, saved)
    }

    fn pauth_load(&self, ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
        if saved.keys_loaded {
            return false;
        }
        save_keys(&mut scratch().keys);
        restore_keys(&ctx.pauth_keys);
        saved.keys_loaded = true;
        // In effect for the guest from the ERET that retries the trapped instruction.
        HCR_EL2.set(HCR_EL2.get() | HCR_APK_API);
        true
    }

    fn fp_load(&self, ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
        if saved.fp_loaded {
            return false;
        }
        CPTR_EL2.set(saved.guest_cptr_fp);
        // The CPTR_EL2.TFP clear is in effect before EL2's own FP/SIMD accesses below.
        isb();
        // SAFETY: FP/SIMD is untrapped at EL2 now; both areas are valid FpRegs.
        unsafe {
            __fp_save(&mut scratch().fp);
            __fp_restore(&ctx.fp);
        }
        saved.fp_loaded = true;
        true
    }

    fn el1_to_ctx(&self, ctx: &mut VcpuCtx) {
        save_el1_sysregs(&mut ctx.sys);
        let g = save_el1_extra();
        (ctx.sp_el0, ctx.sp_el1, ctx.elr_el1, ctx.spsr_el1) = (g.sp_el0, g.sp_el1, g.elr_el1, g.spsr_el1);
    }

    fn el1_from_ctx(&self, ctx: &VcpuCtx) {
        restore_el1_sysregs(&ctx.sys);
        restore_el1_extra(&El1Extra { sp_el0: ctx.sp_el0, sp_el1: ctx.sp_el1, elr_el1: ctx.elr_el1, spsr_el1: ctx.spsr_el1 });
    }

    fn ptimer_backing(&self, t: &crate::guest::timer::PTimer) {
        // CNTHP counts the physical count, as the emulated timer does (no offset). No barrier:
        // the ERET back into the guest synchronises both writes before its next instruction,
        // and a stale setting until then can at worst end the run early (an IRQ exit).
        if t.deadline(0) == u64::MAX {
            msr!("cnthp_ctl_el2", 0u64);
        } else {
            msr!("cnthp_cval_el2", t.cval);
            msr!("cnthp_ctl_el2", 1u64);
        }
    }

}
