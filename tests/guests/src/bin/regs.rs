//! Register-integrity test guest: fills every GPR and the EL1 system registers it may use with
//! patterns, exits 30,000 times (per round: an MMIO read and an MMIO write, which go to the host,
//! and a PSCI_VERSION call, which EL2 answers itself; 10,000 rounds), and checks that nothing
//! changed but what PSCI_VERSION returns in x0.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// An address no device answers: reads return 0, writes are dropped (by the host).
const UNASSIGNED: u64 = 0x0c00_0000;
const ROUNDS: u64 = 10_000;

core::arch::global_asm!(
    r#"
// x0 = where to store x0..x30 after the loop (31 words), x1 = rounds. AAPCS64 function.
.global regs_exit_loop
regs_exit_loop:
    stp x29, x30, [sp, #-112]!
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    stp x23, x24, [sp, #48]
    stp x25, x26, [sp, #64]
    stp x27, x28, [sp, #80]
    str x0, [sp, #96]
    mov x29, x1
    ldr x0, =0x0000000000010001
    ldr x1, ={unassigned}
    ldr x2, =0x0202020202020202
    ldr x3, =0x0303030303030303
    ldr x4, =0x0404040404040404
    ldr x5, =0x0505050505050505
    ldr x6, =0x0606060606060606
    ldr x7, =0x0707070707070707
    ldr x8, =0x0808080808080808
    ldr x9, =0x0909090909090909
    ldr x10, =0x0a0a0a0a0a0a0a0a
    ldr x11, =0x0b0b0b0b0b0b0b0b
    ldr x12, =0x0c0c0c0c0c0c0c0c
    ldr x13, =0x0d0d0d0d0d0d0d0d
    ldr x14, =0x0e0e0e0e0e0e0e0e
    ldr x15, =0x0f0f0f0f0f0f0f0f
    ldr x16, =0x1010101010101010
    ldr x17, =0x1111111111111111
    ldr x18, =0x1212121212121212
    ldr x19, =0x1313131313131313
    ldr x20, =0x1414141414141414
    ldr x21, =0x1515151515151515
    ldr x22, =0x1616161616161616
    ldr x23, =0x1717171717171717
    ldr x24, =0x1818181818181818
    ldr x25, =0x1919191919191919
    ldr x26, =0x1a1a1a1a1a1a1a1a
    ldr x27, =0x1b1b1b1b1b1b1b1b
    ldr x28, =0x1c1c1c1c1c1c1c1c
    ldr x30, =0x1e1e1e1e1e1e1e1e
1:  ldr xzr, [x1]
    str x29, [x1]
    ldr x0, =0x84000000
    hvc #0
    sub x29, x29, #1
    cbnz x29, 1b
    sub sp, sp, #256
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    str x30, [sp, #240]
    ldr x1, [sp, #256 + 96]
    mov x2, #0
2:  ldr x3, [sp, x2, lsl #3]
    str x3, [x1, x2, lsl #3]
    add x2, x2, #1
    cmp x2, #31
    b.lo 2b
    add sp, sp, #256
    ldp x19, x20, [sp, #16]
    ldp x21, x22, [sp, #32]
    ldp x23, x24, [sp, #48]
    ldp x25, x26, [sp, #64]
    ldp x27, x28, [sp, #80]
    ldp x29, x30, [sp], #112
    ret
"#,
    unassigned = const UNASSIGNED,
);

extern "C" {
    fn regs_exit_loop(out: *mut u64, rounds: u64);
    fn fp_fill(seed: u64);
    fn fp_dump(out: *mut u64);
}

core::arch::global_asm!(
    r#"
.arch_extension fp
.arch_extension simd
// x0 = seed: Vn = (seed + 2n, seed + 2n + 1) as (low, high) 64-bit halves.
.global fp_fill
fp_fill:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    add x1, x0, #(2 * \n)
    add x2, x1, #1
    fmov d\n, x1
    fmov v\n\().d[1], x2
.endr
    ret
// x0 = where to store V0..V31 (64 words).
.global fp_dump
fp_dump:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    str q\n, [x0], #16
.endr
    ret
"#
);

/// FP/SIMD state survives exits: fill V0..V31 (the first use traps and EL2 loads this vCPU's
/// FP registers lazily), exit `ROUNDS` times to the host and to EL2, touching FP/SIMD every
/// other round (a lazy load in some runs, none in others), then check all 32 registers.
fn fp_check() {
    const SEED: u64 = 0xF0F0_0000_0000_0000;
    // SAFETY: enabling FP/SIMD at EL1 for this guest (CPACR_EL1.FPEN = 0b11).
    unsafe { core::arch::asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack)) };
    // SAFETY: writes only V0..V31 (this softfloat guest uses them for nothing else).
    unsafe { fp_fill(SEED) };
    for i in 0..ROUNDS {
        // SAFETY: an MMIO read of an unassigned address (an exit to the host).
        unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
        if i % 2 == 0 {
            // SAFETY: `fmov d31, d31` rewrites V31's low half with itself (and zeroes its high
            // half, which fp_fill then rewrites): any FP/SIMD use that traps lazily.
            unsafe { core::arch::asm!(".arch_extension fp", "fmov x9, d31", "fmov d31, x9", out("x9") _, options(nostack)) };
            // SAFETY: as for fp_fill.
            unsafe { core::arch::asm!(".arch_extension fp", ".arch_extension simd", "fmov v31.d[1], {hi}", hi = in(reg) SEED + 63, options(nostack)) };
        }
    }
    let mut v = [0u64; 64];
    // SAFETY: `v` holds 64 words.
    unsafe { fp_dump(v.as_mut_ptr()) };
    for (i, w) in v.iter().enumerate() {
        if *w != SEED + i as u64 {
            guests::fail(format_args!("V{} word {} is {w:#x} after exits, expected {:#x}", i / 2, i % 2, SEED + i as u64));
        }
    }
    println!("guest: ok: V0-V31 intact after {ROUNDS} exits (FP/SIMD loaded lazily)");
}

macro_rules! sysregs {
    ($(($name:literal, $pattern:expr)),* $(,)?) => {
        /// Writes each register's pattern and returns what reads back (RES0 bits masked).
        fn write_sysregs() -> [u64; [$($name),*].len()] {
            let mut out = [0; [$($name),*].len()];
            let mut i = 0;
            $(
                // SAFETY: EL1 registers this guest does not use for anything (its MMU is off,
                // it takes no exceptions during the test); a pattern in them is harmless.
                unsafe {
                    core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) $pattern as u64, options(nostack));
                    core::arch::asm!("isb", options(nostack));
                    core::arch::asm!(concat!("mrs {}, ", $name), out(reg) out[i], options(nostack));
                }
                i += 1;
            )*
            let _ = i;
            out
        }
        fn read_sysregs() -> [u64; [$($name),*].len()] {
            let mut out = [0; [$($name),*].len()];
            let mut i = 0;
            $(
                // SAFETY: reading an EL1 register has no side effects.
                unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) out[i], options(nostack)) };
                i += 1;
            )*
            let _ = i;
            out
        }
        const NAMES: &[&str] = &[$($name),*];
    };
}

sysregs!(
    ("ttbr0_el1", 0x0000_1234_5678_9000u64),
    ("ttbr1_el1", 0x0001_8765_4321_0000u64),
    ("mair_el1", 0x44FF_0400_BB44_FF04u64),
    ("amair_el1", 0u64),
    ("tcr_el1", 0x0000_0005_B519_3519u64),
    ("contextidr_el1", 0xC0DE_u64),
    ("tpidr_el0", 0xAAAA_BBBB_CCCC_DDDDu64),
    ("tpidrro_el0", 0x1111_2222_3333_4444u64),
    ("tpidr_el1", 0x5555_6666_7777_8888u64),
    ("par_el1", 0x0000_0000_1234_5000u64),
    ("afsr0_el1", 0u64),
    ("afsr1_el1", 0u64),
    ("far_el1", 0xFFFF_0000_DEAD_BEEFu64),
    ("esr_el1", 0x9600_0045u64),
    ("vbar_el1", 0x4010_0800u64),
    ("cntkctl_el1", 0x3u64),
    ("csselr_el1", 0x2u64),
    ("cpacr_el1", 0x30_0000u64),
    ("cntv_cval_el0", 0x0123_4567_89AB_CDEFu64),
    ("cntv_ctl_el0", 0x2u64),
    ("sp_el0", 0x4020_0000u64),
    ("elr_el1", 0x4008_1234u64),
    ("spsr_el1", 0x6000_03C5u64),
);

fn main(_dtb: u64) {
    let before = write_sysregs();
    let mut gprs = [0u64; 31];
    // SAFETY: an AAPCS64 function writing 31 words to `gprs`.
    unsafe { regs_exit_loop(gprs.as_mut_ptr(), ROUNDS) };
    let after = read_sysregs();
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        if b != a {
            guests::fail(format_args!("{} changed across exits: {b:#x} -> {a:#x}", NAMES[i]));
        }
    }
    for (n, v) in gprs.iter().enumerate() {
        let want = match n {
            0 => 0x1_0001, // PSCI_VERSION's answer, from EL2
            1 => UNASSIGNED,
            29 => 0, // the loop counter
            n => 0x0101_0101_0101_0101u64 * n as u64,
        };
        if *v != want {
            guests::fail(format_args!("x{n} changed across exits: {v:#x}, expected {want:#x}"));
        }
    }
    println!("guest: ok: 31 GPRs and {} EL1 system registers intact after {} exits", NAMES.len(), 3 * ROUNDS);
    fp_check();
}

fn secondary(_: u64) {}
