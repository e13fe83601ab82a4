//! CPU-feature guest: reads its ID registers (each read traps to EL2, which answers from the
//! VM's values) and hands them to the host's test device as (index, value) pairs; checks that
//! what EL2 does not switch is hidden, and that its cache type and geometry agree: the line of
//! the last level's cache is at least `CTR_EL0`'s smallest data line (where the CPUs' `CTR_EL0`
//! differ, EL2 traps these reads and makes the geometry up: one set of one way; QEMU's CPUs
//! agree, so the guest reads them directly, as under KVM).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

macro_rules! mrs {
    ($r:literal) => {{
        let x: u64;
        // SAFETY: reading an ID register (trapped by EL2 and emulated) has no side effects.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $r), out(reg) x, options(nomem, nostack)) };
        x
    }};
}

fn main(_dtb: u64) {
    // (index in the 56-register space, value): CRm=4 op2=0 is 24, and so on.
    let seen = [
        (24, mrs!("S3_0_C0_C4_0")), // ID_AA64PFR0_EL1
        (25, mrs!("S3_0_C0_C4_1")), // ID_AA64PFR1_EL1
        (28, mrs!("S3_0_C0_C4_4")), // ID_AA64ZFR0_EL1
        (32, mrs!("S3_0_C0_C5_0")), // ID_AA64DFR0_EL1
        (40, mrs!("S3_0_C0_C6_0")), // ID_AA64ISAR0_EL1
        (41, mrs!("S3_0_C0_C6_1")), // ID_AA64ISAR1_EL1
        (48, mrs!("S3_0_C0_C7_0")), // ID_AA64MMFR0_EL1
        (0, mrs!("S3_0_C0_C1_0")),  // ID_PFR0_EL1 (AArch32)
    ];
    for (i, v) in seen {
        guests::testdev_write(i);
        guests::testdev_write(v);
    }
    let (pfr0, pfr1, zfr0, isar1, mmfr0, aarch32) = (seen[0].1, seen[1].1, seen[2].1, seen[5].1, seen[6].1, seen[7].1);
    let sve = (pfr0 >> 32) & 0xF;
    let el2 = (pfr0 >> 8) & 0xF;
    let mte = (pfr1 >> 8) & 0xF;
    let pauth = (isar1 >> 4) & 0xFF | (isar1 >> 24) & 0xFF;
    if sve != 0 || zfr0 != 0 || el2 != 0 || mte != 0 || pauth != 0 || aarch32 != 0 {
        guests::fail(format_args!("hidden features visible: SVE {sve} ZFR0 {zfr0:#x} EL2 {el2} MTE {mte} PAuth {pauth:#x} AArch32 {aarch32:#x}"));
    }
    println!("guest: ok: ID registers: no SVE, EL2, MTE, pointer authentication or AArch32; PARange {}", mmfr0 & 0xF);
    cache_type();
}

/// `CTR_EL0`, `CLIDR_EL1`, `CSSELR_EL1` and `CCSIDR_EL1` (trapped by `HCR_EL2.TID2` only where
/// the CPUs differ): the last level's data or unified cache has a line no smaller than
/// `CTR_EL0`'s smallest data line, and `CSSELR_EL1` is the guest's own.
fn cache_type() {
    let ctr = mrs!("ctr_el0");
    let clidr = mrs!("clidr_el1");
    let loc = (clidr >> 24) & 7;
    let csselr = loc.saturating_sub(1) << 1;
    // SAFETY: selecting which cache CCSIDR_EL1 describes has no other effect.
    unsafe { core::arch::asm!("msr csselr_el1, {}", "isb", in(reg) csselr, options(nostack)) };
    let (back, ccsidr) = (mrs!("csselr_el1"), mrs!("ccsidr_el1"));
    let line = (((ctr >> 16) & 0xF) + 2).saturating_sub(4);
    if ctr >> 31 != 1 || loc == 0 || back != csselr || ccsidr & 7 < line {
        guests::fail(format_args!("cache type: CTR_EL0 {ctr:#x} CLIDR_EL1 {clidr:#x} CSSELR_EL1 {back:#x} CCSIDR_EL1 {ccsidr:#x}"));
    }
    let made_up = if ccsidr == line { ", one set of one way (EL2's)" } else { "" };
    println!("guest: ok: cache type: CTR_EL0 {ctr:#x}, level {loc} line no smaller than its smallest{made_up}");
}

fn secondary(_: u64) {}
