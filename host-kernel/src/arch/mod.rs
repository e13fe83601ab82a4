//! Every instruction the host needs that Rust cannot express: barriers and events, system
//! registers, plain loads and stores for EL2 to perform, hypercalls, and the host's own
//! registers that scenarios set and read back around guests; a copy that survives an abort
//! ([`guarded_copy`]); the boot code and exception vectors ([`boot`]). The one place with
//! `asm!` in the host.

pub mod boot;

use core::arch::{asm, global_asm};

/// Waits for an event (`WFE`).
pub fn wfe() {
    // SAFETY: `wfe` only waits.
    unsafe { asm!("wfe", options(nomem, nostack)) };
}

/// Signals an event to every CPU's `WFE` (`SEV`).
pub fn sev() {
    // SAFETY: `sev` only signals an event.
    unsafe { asm!("sev", options(nomem, nostack)) };
}

/// Makes this CPU's earlier stores visible, then waits for an interrupt (`DSB SY; WFI`).
pub fn wait_for_interrupt() {
    // SAFETY: WFI only waits; a pending interrupt (even masked) ends it.
    unsafe { asm!("dsb sy", "wfi", options(nomem, nostack, preserves_flags)) };
}

/// Orders earlier memory accesses before later ones in the inner-shareable domain (`DSB ISH`).
pub fn dsb_ish() {
    // SAFETY: DSB only orders memory accesses.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// `ESR_EL1` and `FAR_EL1`: the syndrome and address of the exception being handled.
pub fn esr_far() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reading ESR_EL1/FAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack)) };
    (esr, far)
}

/// `TPIDR_EL1`, where the entry code keeps the CPU's index.
pub fn tpidr_el1() -> u64 {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// `CurrentEL`.
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    v
}

// ---- The system counter and this CPU's EL1 physical timer (CNTP) ----------------------------

/// `CNTPCT_EL0`, after an `ISB` (not read early).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading the physical counter has no side effects (CNTHCTL_EL2.EL1PCTEN).
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// `CNTFRQ_EL0`: the system counter's frequency.
pub fn counter_freq() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// `CNTP_CVAL_EL0` and `CNTP_CTL_EL0`.
pub fn timer_cval_ctl() -> (u64, u64) {
    let (cval, ctl): (u64, u64);
    // SAFETY: reading the host's own EL1 physical timer.
    unsafe { asm!("mrs {}, cntp_cval_el0", "mrs {}, cntp_ctl_el0", out(reg) cval, out(reg) ctl, options(nomem, nostack, preserves_flags)) };
    (cval, ctl)
}

/// Enables the timer to fire when the counter reaches `deadline` (`CNTP_CVAL_EL0`).
pub fn timer_at(deadline: u64) {
    // SAFETY: the host owns its EL1 physical timer (CNTHCTL_EL2.EL1PCEN while it runs; guests
    // trap it); writing it only schedules the timer interrupt.
    unsafe { asm!("msr cntp_cval_el0, {}", "msr cntp_ctl_el0, {}", "isb", in(reg) deadline, in(reg) 1u64, options(nomem, nostack, preserves_flags)) };
}

/// Enables the timer to fire `ticks` from now (`CNTP_TVAL_EL0`); this also lowers its level
/// interrupt until then.
pub fn timer_after(ticks: u64) {
    // SAFETY: as for `timer_at`.
    unsafe { asm!("msr cntp_tval_el0, {}", "msr cntp_ctl_el0, {}", "isb", in(reg) ticks, in(reg) 1u64, options(nomem, nostack, preserves_flags)) };
}

/// Stops the timer.
pub fn timer_off() {
    // SAFETY: as for `timer_at`.
    unsafe { asm!("msr cntp_ctl_el0, xzr", "isb", options(nomem, nostack, preserves_flags)) };
}

// ---- Loads and stores EL2 can perform from the syndrome -------------------------------------

/// A 32-bit load with a plain `LDR` (so the syndrome is valid if EL2 has to perform it).
///
/// # Safety
/// `pa` is a device register the host may read.
pub unsafe fn read32(pa: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller's: `pa` may be read; the load touches nothing else.
    unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) pa, v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// A 32-bit store with a plain `STR`.
///
/// # Safety
/// `pa` is a device register the host may write with `v`.
pub unsafe fn write32(pa: u64, v: u32) {
    // SAFETY: the caller's: `pa` may be written; the store touches nothing else.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) pa, v = in(reg) v, options(nostack, preserves_flags)) };
}

// ---- Hypercalls -----------------------------------------------------------------------------

/// `HVC #0` with a full 64-bit `x0` and `a` in `x1..=x7` (the hypervisor ABI's argument
/// registers); returns `x0..=x3`. Only those are set: the smccc crate's `hvc64` zeroes
/// `x8..=x17` too (ten instructions on every call) and takes a 32-bit function ID.
pub fn hvc0(x0: u64, a: [u64; 7]) -> [u64; 4] {
    let mut r = [0u64; 4];
    // SAFETY: an HVC to EL2 following SMCCC; x0..x3 are results, x4..x17 may be changed.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") x0 => r[0], inout("x1") a[0] => r[1], inout("x2") a[1] => r[2],
            inout("x3") a[2] => r[3], inout("x4") a[3] => _, inout("x5") a[4] => _,
            inout("x6") a[5] => _, inout("x7") a[6] => _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    r
}

/// `HVC #1` (not part of the ABI); returns `x0`.
pub fn hvc1(x0: u64) -> u64 {
    let r: u64;
    // SAFETY: as for `hvc0`.
    unsafe {
        asm!(
            "hvc #1",
            inout("x0") x0 => r,
            out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _,
            out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    r
}

global_asm!(
    r#"
// x0 = a block of 8 + 31 words: x0..x7 of an HVC #0 in, all of x0..x30 after it out; x1 =
// `fill`: x8..x30 are set to fill + n before the call. Callee-saved registers are restored.
.global host_hvc_all_gprs
host_hvc_all_gprs:
    stp x29, x30, [sp, #-112]!
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    stp x23, x24, [sp, #48]
    stp x25, x26, [sp, #64]
    stp x27, x28, [sp, #80]
    stp x18, x0, [sp, #96]
.irp n, 8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
    add x\n, x1, #\n
.endr
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x0, x1, [x0, #0]
    hvc #0
    stp x0, x1, [sp, #-16]!
    ldr x0, [sp, #16 + 104]
    add x0, x0, #64
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #8 * 30]
    ldp x2, x3, [sp], #16
    stp x2, x3, [x0]
    ldp x18, x0, [sp, #96]
    ldp x19, x20, [sp, #16]
    ldp x21, x22, [sp, #32]
    ldp x23, x24, [sp, #48]
    ldp x25, x26, [sp, #64]
    ldp x27, x28, [sp, #80]
    ldp x29, x30, [sp], #112
    ret
"#
);

extern "C" {
    fn host_hvc_all_gprs(block: *mut u64, fill: u64);
}

/// `HVC #0` as [`hvc0`], with `x8..=x30` set to `fill + n` first; returns every GPR after
/// the call (`x0..=x30`). For checking that EL2 returns each register it does not answer in
/// as the host left it.
pub fn hvc0_all_gprs(x0: u64, a: [u64; 7], fill: u64) -> [u64; 31] {
    let mut block = [0u64; 8 + 31];
    block[0] = x0;
    block[1..8].copy_from_slice(&a);
    // SAFETY: `block` holds 39 words; the routine restores every callee-saved register and SP,
    // and the HVC follows the hypervisor ABI (as `hvc0`).
    unsafe { host_hvc_all_gprs(block.as_mut_ptr(), fill) };
    let mut out = [0u64; 31];
    out.copy_from_slice(&block[8..]);
    out
}

// ---- Registers the host does not otherwise use, set and read back by scenarios --------------

/// Calls `target` as a function with no arguments (`BLR`), clobbering what a C call may.
///
/// # Safety
/// Whatever `target` does when called; a scenario uses it to fetch from memory the host may
/// not execute, with a fault probe that resumes at the return address.
pub unsafe fn call_address(target: u64) {
    // SAFETY: the caller's.
    unsafe { asm!("blr {0}", in(reg) target, clobber_abi("C")) };
}

/// Programs PMU counter 0 to count INST_RETIRED (event 0x08) at EL0, EL1 and EL2
/// (`PMEVTYPER0_EL0.NSH`), and starts it.
pub fn pmu_count_instructions() {
    // SAFETY: the host owns the PMU (MDCR_EL2.HPMN = PMCR_EL0.N); this only starts counting.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {ty}",
            "msr pmcntenset_el0, {one}",
            "mrs {t}, pmcr_el0",
            "orr {t}, {t}, #1",
            "msr pmcr_el0, {t}",
            "isb",
            ty = in(reg) 0x08u64 | 1 << 27,
            one = in(reg) 1u64,
            t = out(reg) _,
            options(nostack)
        );
    }
}

/// PMU counter 0, after an `ISB` (earlier instructions are not counted late).
#[inline(always)]
pub fn pmu_counter() -> u64 {
    let v: u64;
    // SAFETY: reading PMU counter 0 has no side effects.
    unsafe { asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) v, options(nostack)) };
    v
}

global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
.global host_fp_fill
host_fp_fill:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    add x1, x0, #(2 * \n)
    add x2, x1, #1
    fmov d\n, x1
    fmov v\n\().d[1], x2
.endr
    ret
.global host_fp_dump
host_fp_dump:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    str q\n, [x0], #16
.endr
    ret
"#
);

extern "C" {
    fn host_fp_fill(seed: u64);
    fn host_fp_dump(out: *mut u64);
}

/// Enables FP/SIMD at EL1 (`CPACR_EL1.FPEN`) and fills V0..V31 with `seed`, `seed + 1`, ...
/// (64-bit halves, low first).
pub fn fp_fill(seed: u64) {
    // SAFETY: enabling FP/SIMD at EL1, then writing only V0..V31 (this softfloat host uses
    // them for nothing else).
    unsafe {
        asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack));
        host_fp_fill(seed);
    }
}

/// V0..V31, as 64-bit halves (low first); FP/SIMD must be enabled ([`fp_fill`]).
pub fn fp_dump() -> [u64; 64] {
    let mut v = [0u64; 64];
    // SAFETY: `v` holds 64 words.
    unsafe { host_fp_dump(v.as_mut_ptr()) };
    v
}

/// Sets `APIAKeyLo_EL1` and `APGAKeyLo_EL1` to `key`.
pub fn set_pauth_keys(key: u64) {
    // SAFETY: the host's own key registers (not trapped for the host), which this host does
    // not otherwise use.
    unsafe { asm!("msr S3_0_C2_C1_0, {k}", "msr S3_0_C2_C3_0, {k}", k = in(reg) key, options(nostack)) };
}

/// `APIAKeyLo_EL1` and `APGAKeyLo_EL1`.
pub fn pauth_keys() -> (u64, u64) {
    let (k1, k2): (u64, u64);
    // SAFETY: reading the host's own key registers.
    unsafe { asm!("mrs {}, S3_0_C2_C1_0", "mrs {}, S3_0_C2_C3_0", out(reg) k1, out(reg) k2, options(nostack)) };
    (k1, k2)
}

/// `RGSR_EL1`, `GCR_EL1`, `TFSR_EL1` and `TFSRE0_EL1` (FEAT_MTE2).
pub fn mte_registers() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reading the host's own MTE registers.
    unsafe {
        asm!(
            "mrs {}, S3_0_C1_C0_5", "mrs {}, S3_0_C1_C0_6", "mrs {}, S3_0_C5_C6_0", "mrs {}, S3_0_C5_C6_1",
            out(reg) a, out(reg) b, out(reg) c, out(reg) d, options(nostack)
        )
    };
    [a, b, c, d]
}

/// Sets the registers [`mte_registers`] reads.
pub fn set_mte_registers(r: [u64; 4]) {
    // SAFETY: the host's own MTE registers, which it does not otherwise use (its MMU is off).
    unsafe {
        asm!(
            "msr S3_0_C1_C0_5, {}", "msr S3_0_C1_C0_6, {}", "msr S3_0_C5_C6_0, {}", "msr S3_0_C5_C6_1, {}", "isb",
            in(reg) r[0], in(reg) r[1], in(reg) r[2], in(reg) r[3], options(nostack)
        )
    };
}

/// `TPIDR2_EL0` (FEAT_SME).
pub fn tpidr2() -> u64 {
    let v: u64;
    // SAFETY: reading the host's own TPIDR2_EL0.
    unsafe { asm!("mrs {}, S3_3_C13_C0_5", out(reg) v, options(nostack)) };
    v
}

/// Sets `TPIDR2_EL0`.
pub fn set_tpidr2(v: u64) {
    // SAFETY: the host's own TPIDR2_EL0, otherwise unused.
    unsafe { asm!("msr S3_3_C13_C0_5, {}", in(reg) v, options(nostack)) };
}

// ---- A copy that survives a synchronous external abort ---------------------------------------

// `host_guarded_copy(dst = x0, src = x1, len = x2) -> x0`: 0 when all `len` bytes were copied;
// 1 when a load or store aborted (the exception handler resumes at `host_guarded_copy_fixup`,
// [`recover_guarded_copy`]). Doublewords while both pointers are 8-byte aligned, then bytes.
// Only x0..x4 and the flags change, and no stack: the handler can resume at the fixup from any
// instruction between the labels.
global_asm!(
    r#"
.section .text, "ax"
.balign 4
.global host_guarded_copy
host_guarded_copy:
    orr x3, x0, x1
    tst x3, #7
    b.ne 2f
1:  cmp x2, #8
    b.lo 2f
    ldr x4, [x1], #8
    str x4, [x0], #8
    sub x2, x2, #8
    b 1b
2:  cbz x2, 3f
    ldrb w4, [x1], #1
    strb w4, [x0], #1
    sub x2, x2, #1
    b 2b
3:  mov x0, #0
    ret
.global host_guarded_copy_fixup
host_guarded_copy_fixup:
    mov x0, #1
    ret
"#
);

extern "C" {
    fn host_guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn host_guarded_copy_fixup();
}

/// A load or store of [`guarded_copy`] took a synchronous external abort: the memory is not
/// (or no longer) the host's to touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aborted;

/// Copies `len` bytes from `src` to `dst` (host physical addresses: the host's MMU is off), and
/// reports a data abort on either side as [`Aborted`] instead of failing the host: for memory
/// that another CPU's guest may take away from the host at any moment (a protected VM's
/// shared page, unshared by one vCPU while the device of another copies from it). Part of the
/// range may have been copied then.
///
/// # Safety
/// Every byte of both ranges is RAM that the host may touch or that EL2 answers with an abort
/// (never memory whose contents matter to Rust code: no live reference may point into `dst`).
pub unsafe fn guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), Aborted> {
    // SAFETY: the caller's; the routine touches only the two ranges and x0..x4, and an abort
    // inside it resumes at its fixup ([`recover_guarded_copy`]), which returns 1.
    match unsafe { host_guarded_copy(dst, src, len) } {
        0 => Ok(()),
        _ => Err(Aborted),
    }
}

/// The exception handler's part of [`guarded_copy`]: if a synchronous data abort from the
/// current EL (`ESR_EL1.EC` = 0x25) was taken inside the copy routine, makes the exception
/// return to its fixup (`x0` = 1) and says so; otherwise changes nothing.
pub fn recover_guarded_copy(frame: &mut boot::Frame, esr: u64) -> bool {
    const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
    let (start, fixup) = (host_guarded_copy as *const () as u64, host_guarded_copy_fixup as *const () as u64);
    if (esr >> 26) & 0x3F != EC_DATA_ABORT_SAME_EL || !(start..fixup).contains(&frame.elr()) {
        return false;
    }
    frame.resume_at(fixup);
    true
}

/// Orders this CPU's earlier memory accesses before its later ones, as observed in the
/// inner-shareable domain (`DMB ISH`): what a device model's ring accesses need against the
/// guest's vCPUs on other CPUs.
pub fn dmb_ish() {
    // SAFETY: DMB only orders memory accesses (not `nomem`: it must not be moved across them).
    unsafe { asm!("dmb ish", options(nostack, preserves_flags)) };
}

/// One round of a busy wait: `YIELD`, the architecture's hint that this CPU only waits (QEMU's
/// round-robin TCG, under `-icount` too, moves on to the next CPU at it, so the CPU waited for
/// gets to run; on hardware it costs about a `NOP`).
#[inline(always)]
pub fn relax() {
    // SAFETY: a hint; no memory, register or flag effect.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}
