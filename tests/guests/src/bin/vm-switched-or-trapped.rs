//! A guest that looks for state left by whoever ran before it on the CPU, then leaves its own:
//! it reports `TPIDR2_EL0` (FEAT_SME; hidden from its ID registers but not trappable without
//! FEAT_FGT) and `ICC_PMR_EL1` (its GIC priority mask, through the virtual CPU interface, i.e.
//! `ICH_VMCR_EL2`) to the host's test device, then writes its own values to both. Run twice in
//! two VMs, the second must see reset values, not the first one's (nor the host's). It also
//! checks that the LORegion and RAS error-record registers, which its ID registers hide, are
//! UNDEF (trapped by `HCR_EL2.TLOR`/`TERR`) rather than reaching the hardware.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// What this guest leaves behind.
pub const LEFT_TPIDR2: u64 = 0x1EAC_0000_2222_0002;
/// The priority mask it leaves (a value no reset state has).
pub const LEFT_PMR: u64 = 0xF0;

fn main(_dtb: u64) {
    guests::install_vectors();
    let (tpidr2, pmr): (u64, u64);
    // SAFETY: reading TPIDR2_EL0 (S3_3_C13_C0_5) and ICC_PMR_EL1 (S3_0_C4_C6_0), which this
    // CPU implements; if EL2 trapped them the vectors would record an UNDEF (checked below).
    unsafe { core::arch::asm!("mrs {}, S3_3_C13_C0_5", "mrs {}, S3_0_C4_C6_0", out(reg) tpidr2, out(reg) pmr, options(nostack)) };
    guests::testdev_write(tpidr2);
    guests::testdev_write(pmr);
    println!("guest: found TPIDR2_EL0 {tpidr2:#x}, ICC_PMR_EL1 {pmr:#x}");
    // SAFETY: this vCPU's own TPIDR2_EL0 and priority mask.
    unsafe { core::arch::asm!("msr S3_3_C13_C0_5, {}", "msr S3_0_C4_C6_0, {}", "isb", in(reg) LEFT_TPIDR2, in(reg) LEFT_PMR, options(nostack)) };
    let (mut t2, mut p2) = (0u64, 0u64);
    // SAFETY: as above.
    unsafe { core::arch::asm!("mrs {}, S3_3_C13_C0_5", "mrs {}, S3_0_C4_C6_0", out(reg) t2, out(reg) p2, options(nostack)) };
    if t2 != LEFT_TPIDR2 || p2 != LEFT_PMR {
        guests::fail(format_args!("own TPIDR2_EL0/ICC_PMR_EL1 did not stick: {t2:#x} {p2:#x}"));
    }
    // Exits in between, so the values must survive the world switch.
    for _ in 0..100 {
        guests::relax();
    }
    // SAFETY: as above.
    unsafe { core::arch::asm!("mrs {}, S3_3_C13_C0_5", "mrs {}, S3_0_C4_C6_0", out(reg) t2, out(reg) p2, options(nostack)) };
    if t2 != LEFT_TPIDR2 || p2 != LEFT_PMR {
        guests::fail(format_args!("TPIDR2_EL0/ICC_PMR_EL1 changed across exits: {t2:#x} {p2:#x}"));
    }
    println!("guest: left TPIDR2_EL0 {LEFT_TPIDR2:#x}, ICC_PMR_EL1 {LEFT_PMR:#x}, kept across 100 exits");
    // SAFETY: reading LORID_EL1 (S3_0_C10_C4_7) and ERRIDR_EL1 (S3_0_C5_C3_0): expected to trap.
    let lor = guests::trapped(|| unsafe { core::arch::asm!("mrs {}, S3_0_C10_C4_7", out(reg) _, options(nostack)) });
    // SAFETY: as above.
    let ras = guests::trapped(|| unsafe { core::arch::asm!("mrs {}, S3_0_C5_C3_0", out(reg) _, options(nostack)) });
    let undef = |e: Option<u64>| e.is_some_and(|e| e >> 26 == 0);
    if !undef(lor) || !undef(ras) {
        guests::fail(format_args!("LORID_EL1 -> {lor:x?}, ERRIDR_EL1 -> {ras:x?}: expected UNDEF"));
    }
    println!("guest: ok: LORID_EL1 and ERRIDR_EL1 -> UNDEF injected");
}

fn secondary(_index: u64) {}
