//! Pointer-authentication guest: sets its own keys from a seed the host gives it, signs with
//! PACGA across thousands of exits (each run may find its keys loaded lazily, eagerly or
//! trapped again), checks every signature is the same, and checks that AUTIA rejects a forged
//! pointer. Reports its signature to the host's test device (for comparing two VMs).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

const UNASSIGNED: u64 = 0x0c00_0000;
const ROUNDS: u64 = 2000;

macro_rules! msr {
    ($r:literal, $v:expr) => {
        // SAFETY: writing this guest's own pointer-authentication key (trapped by EL2 until it
        // loads the guest's keys, then written directly).
        unsafe { core::arch::asm!(concat!("msr ", $r, ", {}"), in(reg) $v, options(nostack)) }
    };
}

fn pacga(x: u64, y: u64) -> u64 {
    let r: u64;
    // SAFETY: PACGA only computes (encoded; the softfloat target has no pauth feature flag).
    // Rd = x0, Rn = x1, Rm = x2: 0x9ac23020.
    unsafe { core::arch::asm!(".inst 0x9ac23020", inout("x1") x => _, in("x2") y, out("x0") r, options(nostack)) };
    r
}

fn pacia(p: u64, modifier: u64) -> u64 {
    let mut v = p;
    // SAFETY: PACIA x0, x1 (0xdac10020) signs x0 with APIAKey.
    unsafe { core::arch::asm!(".inst 0xdac10020", inout("x0") v, in("x1") modifier, options(nostack)) };
    v
}

fn autia(p: u64, modifier: u64) -> u64 {
    let mut v = p;
    // SAFETY: AUTIA x0, x1 (0xdac11020) authenticates x0 (a failure corrupts the pointer or,
    // with FEAT_FPAC, raises an exception the probing vectors catch).
    unsafe { core::arch::asm!(".inst 0xdac11020", inout("x0") v, in("x1") modifier, options(nostack)) };
    v
}

fn main(_dtb: u64) {
    guests::install_vectors();
    let seed = guests::testdev_read();
    let key = |n: u64| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(n as u32 * 7) ^ n;
    msr!("S3_0_C2_C1_0", key(0)); // APIAKeyLo_EL1
    msr!("S3_0_C2_C1_1", key(1));
    msr!("S3_0_C2_C1_2", key(2)); // APIBKey
    msr!("S3_0_C2_C1_3", key(3));
    msr!("S3_0_C2_C2_0", key(4)); // APDAKey
    msr!("S3_0_C2_C2_1", key(5));
    msr!("S3_0_C2_C2_2", key(6)); // APDBKey
    msr!("S3_0_C2_C2_3", key(7));
    msr!("S3_0_C2_C3_0", key(8)); // APGAKey
    msr!("S3_0_C2_C3_1", key(9));
    let sig = pacga(0x1234, 0x5678);
    guests::testdev_write(sig);
    for i in 0..ROUNDS {
        // SAFETY: an MMIO read of an unassigned address (an exit to the host).
        unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
        // Use the keys only in some runs, so that the lazy policy both traps and decays.
        if i % 100 < 70 {
            let s = pacga(0x1234, 0x5678);
            if s != sig {
                guests::fail(format_args!("PACGA changed after {i} exits: {s:#x} != {sig:#x}"));
            }
        }
    }
    println!("guest: ok: PACGA signature {:#x} stable across {ROUNDS} exits", sig >> 32);
    // Address authentication: enable SCTLR_EL1.EnIA (bit 31), sign, verify, forge.
    // SAFETY: enables instruction-address authentication for this guest's own PACIA/AUTIA.
    unsafe { core::arch::asm!("mrs {0}, sctlr_el1", "orr {0}, {0}, #(1 << 31)", "msr sctlr_el1, {0}", "isb", out(reg) _, options(nostack)) };
    let ptr = 0x4008_1234u64;
    let signed = pacia(ptr, 42);
    if signed == ptr {
        guests::fail(format_args!("PACIA did not sign {ptr:#x}"));
    }
    if autia(signed, 42) != ptr {
        guests::fail(format_args!("AUTIA rejected a good pointer {signed:#x}"));
    }
    let forged = signed ^ (1 << 53);
    let mut result = 0;
    let trapped = guests::trapped(|| result = autia(forged, 42));
    match trapped {
        Some(esr) if esr >> 26 == 0x1C => println!("guest: ok: forged pointer rejected (FPAC exception)"),
        None if result != ptr => println!("guest: ok: forged pointer rejected (AUTIA result {result:#x})"),
        other => guests::fail(format_args!("forged pointer {forged:#x} authenticated: {result:#x} {other:x?}")),
    }
    guests::testdev_write(pacga(0x1234, 0x5678));
}

fn secondary(_: u64) {}
