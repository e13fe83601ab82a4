//! Integrity-soak guest: every vCPU fills x2..x28 and V0..V31 with patterns of its own, sets
//! its own pointer-authentication key and MTE registers, tags a granule, and then, for the
//! number of rounds the host asks (test device), exits to the host and checks after *every*
//! return that all of it is unchanged (generated assembly: nothing of Rust's runs in between).
//! Needs a VM with pointer authentication and MTE.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

/// Shared with the assembly: offsets 0, 8, 16, 24, 32, 40, 48.
#[repr(C)]
struct SoakState {
    base: u64,
    rounds: u64,
    sig: u64,
    gcr: u64,
    tagged: u64,
    left: u64,
    failed: u64,
}

core::arch::global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
.arch_extension memtag
.arch_extension pauth
.global soak_loop
// x0 = &SoakState (base, rounds, sig, gcr, tagged, left, failed)
soak_loop:
    stp x29, x30, [sp, #-112]!
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    stp x23, x24, [sp, #48]
    stp x25, x26, [sp, #64]
    stp x27, x28, [sp, #80]
    str x0, [sp, #96]
    mov x29, x0              // x29 = state (kept across exits: it is checked implicitly by every load through it)
    ldr x30, [x29, #8]       // rounds
    ldr x1, [x29, #0]        // base
    add x2, x1, #2
    add x3, x1, #3
    add x4, x1, #4
    add x5, x1, #5
    add x6, x1, #6
    add x7, x1, #7
    add x8, x1, #8
    add x9, x1, #9
    add x10, x1, #10
    add x11, x1, #11
    add x12, x1, #12
    add x13, x1, #13
    add x14, x1, #14
    add x15, x1, #15
    add x16, x1, #16
    add x17, x1, #17
    add x18, x1, #18
    add x19, x1, #19
    add x20, x1, #20
    add x21, x1, #21
    add x22, x1, #22
    add x23, x1, #23
    add x24, x1, #24
    add x25, x1, #25
    add x26, x1, #26
    add x27, x1, #27
    add x28, x1, #28
    add x0, x1, #100
    fmov d0, x0
    add x0, x1, #101
    fmov d1, x0
    add x0, x1, #102
    fmov d2, x0
    add x0, x1, #103
    fmov d3, x0
    add x0, x1, #104
    fmov d4, x0
    add x0, x1, #105
    fmov d5, x0
    add x0, x1, #106
    fmov d6, x0
    add x0, x1, #107
    fmov d7, x0
    add x0, x1, #108
    fmov d8, x0
    add x0, x1, #109
    fmov d9, x0
    add x0, x1, #110
    fmov d10, x0
    add x0, x1, #111
    fmov d11, x0
    add x0, x1, #112
    fmov d12, x0
    add x0, x1, #113
    fmov d13, x0
    add x0, x1, #114
    fmov d14, x0
    add x0, x1, #115
    fmov d15, x0
    add x0, x1, #116
    fmov d16, x0
    add x0, x1, #117
    fmov d17, x0
    add x0, x1, #118
    fmov d18, x0
    add x0, x1, #119
    fmov d19, x0
    add x0, x1, #120
    fmov d20, x0
    add x0, x1, #121
    fmov d21, x0
    add x0, x1, #122
    fmov d22, x0
    add x0, x1, #123
    fmov d23, x0
    add x0, x1, #124
    fmov d24, x0
    add x0, x1, #125
    fmov d25, x0
    add x0, x1, #126
    fmov d26, x0
    add x0, x1, #127
    fmov d27, x0
    add x0, x1, #128
    fmov d28, x0
    add x0, x1, #129
    fmov d29, x0
    add x0, x1, #130
    fmov d30, x0
    add x0, x1, #131
    fmov d31, x0
1:
    mov x1, #0x0c000000
    ldr xzr, [x1]             // exit to the host
    ldr x1, [x29, #0]
    add x0, x1, #2
    cmp x2, x0
    b.ne 8f
    add x0, x1, #3
    cmp x3, x0
    b.ne 8f
    add x0, x1, #4
    cmp x4, x0
    b.ne 8f
    add x0, x1, #5
    cmp x5, x0
    b.ne 8f
    add x0, x1, #6
    cmp x6, x0
    b.ne 8f
    add x0, x1, #7
    cmp x7, x0
    b.ne 8f
    add x0, x1, #8
    cmp x8, x0
    b.ne 8f
    add x0, x1, #9
    cmp x9, x0
    b.ne 8f
    add x0, x1, #10
    cmp x10, x0
    b.ne 8f
    add x0, x1, #11
    cmp x11, x0
    b.ne 8f
    add x0, x1, #12
    cmp x12, x0
    b.ne 8f
    add x0, x1, #13
    cmp x13, x0
    b.ne 8f
    add x0, x1, #14
    cmp x14, x0
    b.ne 8f
    add x0, x1, #15
    cmp x15, x0
    b.ne 8f
    add x0, x1, #16
    cmp x16, x0
    b.ne 8f
    add x0, x1, #17
    cmp x17, x0
    b.ne 8f
    add x0, x1, #18
    cmp x18, x0
    b.ne 8f
    add x0, x1, #19
    cmp x19, x0
    b.ne 8f
    add x0, x1, #20
    cmp x20, x0
    b.ne 8f
    add x0, x1, #21
    cmp x21, x0
    b.ne 8f
    add x0, x1, #22
    cmp x22, x0
    b.ne 8f
    add x0, x1, #23
    cmp x23, x0
    b.ne 8f
    add x0, x1, #24
    cmp x24, x0
    b.ne 8f
    add x0, x1, #25
    cmp x25, x0
    b.ne 8f
    add x0, x1, #26
    cmp x26, x0
    b.ne 8f
    add x0, x1, #27
    cmp x27, x0
    b.ne 8f
    add x0, x1, #28
    cmp x28, x0
    b.ne 8f
    add x0, x1, #100
    fmov x1, d0
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #101
    fmov x1, d1
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #102
    fmov x1, d2
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #103
    fmov x1, d3
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #104
    fmov x1, d4
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #105
    fmov x1, d5
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #106
    fmov x1, d6
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #107
    fmov x1, d7
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #108
    fmov x1, d8
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #109
    fmov x1, d9
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #110
    fmov x1, d10
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #111
    fmov x1, d11
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #112
    fmov x1, d12
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #113
    fmov x1, d13
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #114
    fmov x1, d14
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #115
    fmov x1, d15
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #116
    fmov x1, d16
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #117
    fmov x1, d17
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #118
    fmov x1, d18
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #119
    fmov x1, d19
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #120
    fmov x1, d20
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #121
    fmov x1, d21
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #122
    fmov x1, d22
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #123
    fmov x1, d23
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #124
    fmov x1, d24
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #125
    fmov x1, d25
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #126
    fmov x1, d26
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #127
    fmov x1, d27
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #128
    fmov x1, d28
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #129
    fmov x1, d29
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #130
    fmov x1, d30
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    add x0, x1, #131
    fmov x1, d31
    cmp x1, x0
    ldr x1, [x29, #0]
    b.ne 7f
    // PACGA with this vCPU's key gives the same signature
    mov x0, #0x1234
    mov x1, #0x5678
    pacga x0, x0, x1
    ldr x1, [x29, #16]
    cmp x0, x1
    b.ne 6f
    // GCR_EL1 kept, and the tagged granule still carries its tag
    mrs x0, S3_0_C1_C0_6
    ldr x1, [x29, #24]
    cmp x0, x1
    b.ne 5f
    ldr x1, [x29, #32]
    and x0, x1, #0x00ffffffffffffff
    ldg x0, [x0]
    cmp x0, x1
    b.ne 4f
    subs x30, x30, #1
    b.ne 1b
    mov x0, #0
    b 3f
8:  mov x0, #1
    b 3f
7:  mov x0, #2
    b 3f
6:  mov x0, #3
    b 3f
5:  mov x0, #4
    b 3f
4:  mov x0, #5
    b 3f
3:  str x30, [x29, #40]     // rounds left when it stopped
    str x0, [x29, #48]      // 0 ok, else what failed
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
    fn soak_loop(state: *mut SoakState);
}

#[repr(C, align(4096))]
struct Table([u64; 512]);
static mut L1: Table = Table([0; 512]);
static mut L2: Table = Table([0; 512]);
static ROUNDS: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);

fn mmu_on(build: bool) {
    // SAFETY: this guest's own tables (built once, by vCPU 0, before vCPU 1 starts).
    let (l1, l2) = unsafe { (&mut *core::ptr::addr_of_mut!(L1), &mut *core::ptr::addr_of_mut!(L2)) };
    if build {
        l1.0[0] = 0x1 | 1 << 10 | 1 << 54 | 1 << 53;
        for (i, e) in l2.0.iter_mut().enumerate() {
            *e = (0x4000_0000 + i as u64 * 0x20_0000) | 0x1 | 1 << 10 | 0b11 << 8 | 1 << 2;
        }
        l1.0[1] = l2.0.as_ptr() as u64 | 0x3;
    }
    let tcr: u64 = 25 | (1 << 8) | (1 << 10) | (0b11 << 12) | (1 << 23) | (1 << 32) | (1 << 37);
    // SAFETY: an identity map of everything this guest touches; MMU, caches, tag access, no
    // tag-check faults (TCF 0: the soak checks tags itself), FP/SIMD and pointer authentication.
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}", "msr tcr_el1, {tcr}", "msr ttbr0_el1, {ttbr}",
            "tlbi vmalle1", "dsb ish", "isb",
            "mrs {t}, sctlr_el1", "orr {t}, {t}, #1", "orr {t}, {t}, #(1 << 2)", "orr {t}, {t}, #(1 << 12)",
            "orr {t}, {t}, #(1 << 43)", "msr sctlr_el1, {t}",
            "mrs {t}, cpacr_el1", "orr {t}, {t}, #(3 << 20)", "msr cpacr_el1, {t}", "isb",
            mair = in(reg) 0x04u64 | 0xF0 << 8, tcr = in(reg) tcr, ttbr = in(reg) l1.0.as_ptr() as u64, t = out(reg) _,
            options(nostack)
        );
    }
}

fn soak(index: u64) {
    let seed = SEED.load(Ordering::Acquire);
    let base = (seed << 32) ^ (index << 24) ^ 0x5000_0000;
    let key = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index;
    // SAFETY: this vCPU's own APGAKey and MTE registers.
    unsafe {
        core::arch::asm!("msr S3_0_C2_C3_0, {k}", "msr S3_0_C2_C3_1, {k}", k = in(reg) key, options(nostack));
        core::arch::asm!("msr S3_0_C1_C0_6, {g}", "msr S3_0_C1_C0_5, {r}", "isb", g = in(reg) 0x1u64 << index, r = in(reg) 0x77u64 << 8, options(nostack));
    }
    let sig: u64;
    // SAFETY: PACGA with this vCPU's key.
    unsafe { core::arch::asm!(".arch_extension pauth", "pacga {s}, {a}, {b}", s = out(reg) sig, a = in(reg) 0x1234u64, b = in(reg) 0x5678u64, options(nostack)) };
    // A granule of its own (one per page: see the mte guest on QEMU's tag storage), tagged.
    let granule = 0x4080_0000 + index * 4096;
    let tagged = granule | (0x3 + index) << 56;
    // SAFETY: STG on this vCPU's own page.
    unsafe { core::arch::asm!(".arch_extension memtag", "stg {p}, [{p}]", p = in(reg) tagged, options(nostack)) };
    let mut st = SoakState { base, rounds: ROUNDS.load(Ordering::Acquire), sig, gcr: 1 << index, tagged, left: 0, failed: 0 };
    // SAFETY: the loop preserves the callee-saved registers and writes only `st`.
    unsafe { soak_loop(&mut st) };
    let what = ["", "a general-purpose register", "an FP/SIMD register", "the PACGA signature (keys)", "GCR_EL1", "an allocation tag"];
    if st.failed != 0 {
        guests::fail(format_args!("vCPU {index}: {} changed after {} exits", what[st.failed as usize % 6], st.rounds - st.left));
    }
    println!("guest: ok: vCPU {index} checked x2-x28, V0-V31, its keys, GCR_EL1 and a tag after each of {} exits", st.rounds);
}

fn main(_dtb: u64) {
    SEED.store(guests::testdev_read(), Ordering::Release);
    ROUNDS.store(guests::testdev_read(), Ordering::Release);
    mmu_on(true);
    if guests::cpu_on(1).is_err() {
        guests::fail(format_args!("could not start vCPU 1"));
    }
    soak(0);
    while DONE.load(Ordering::Acquire) == 0 {
        guests::relax();
    }
}

fn secondary(index: u64) {
    mmu_on(false);
    soak(index);
    DONE.store(1, Ordering::Release);
}
