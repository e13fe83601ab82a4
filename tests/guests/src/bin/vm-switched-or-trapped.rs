//! A guest that looks for state left by whoever ran before it on the CPU, then leaves its own:
//! it reports `TPIDR2_EL0` (FEAT_SME; hidden from its ID registers but not trappable without
//! FEAT_FGT), `ICC_PMR_EL1` (its GIC priority mask, through the virtual CPU interface, i.e.
//! `ICH_VMCR_EL2`), `ICC_AP0R0_EL1` and `ICC_AP1R0_EL1` (its active priorities, i.e.
//! `ICH_AP0R0_EL2`/`ICH_AP1R0_EL2`, written directly without any list register) and
//! `DISR_EL1` (`VDISR_EL2` under `HCR_EL2.AMO`, where the CPU has FEAT_RAS) to the host's test
//! device, then writes its own values to all of them and checks they stay across 100 exits to
//! the host. Run twice in two VMs, the second must see reset values, not the first one's (nor
//! the host's). It also checks that the LORegion and RAS error-record registers, which its ID
//! registers hide, are UNDEF (trapped by `HCR_EL2.TLOR`/`TERR`) rather than reaching the
//! hardware.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// What this guest leaves behind.
pub const LEFT_TPIDR2: u64 = 0x1EAC_0000_2222_0002;
/// The priority mask it leaves (a value no reset state has).
pub const LEFT_PMR: u64 = 0xF0;
/// The Group 0 active priorities it leaves: priority 0 active.
pub const LEFT_AP0R0: u64 = 0x1;
/// The Group 1 active priorities it leaves: bits any CPU implements (32 of them exist with 5
/// preemption bits, the minimum). Not a value an acknowledgement could produce; the virtual
/// interface stores it all the same, which is what makes it a channel if left in the CPU.
pub const LEFT_AP1R0: u64 = 0xC0DE_0001;
/// The `DISR_EL1` it leaves: `A` (bit 31) and an ISS.
pub const LEFT_DISR: u64 = 0x8000_1234;

/// Reads `TPIDR2_EL0`, `ICC_PMR_EL1`, `ICC_AP0R0_EL1`, `ICC_AP1R0_EL1`, `DISR_EL1`.
fn read_all() -> [u64; 5] {
    let (tpidr2, pmr, ap0, ap1, disr): (u64, u64, u64, u64, u64);
    // SAFETY: reading TPIDR2_EL0 (S3_3_C13_C0_5), ICC_PMR_EL1 (S3_0_C4_C6_0), ICC_AP0R0_EL1
    // (S3_0_C12_C8_4), ICC_AP1R0_EL1 (S3_0_C12_C9_0) and DISR_EL1 (S3_0_C12_C1_1), which this
    // CPU implements (QEMU's `max`: SME, GICv3, RAS); if EL2 trapped them the vectors would
    // record an UNDEF and the values would not match.
    unsafe {
        core::arch::asm!(
            "mrs {}, S3_3_C13_C0_5", "mrs {}, S3_0_C4_C6_0", "mrs {}, S3_0_C12_C8_4", "mrs {}, S3_0_C12_C9_0", "mrs {}, S3_0_C12_C1_1",
            out(reg) tpidr2, out(reg) pmr, out(reg) ap0, out(reg) ap1, out(reg) disr, options(nostack)
        )
    };
    [tpidr2, pmr, ap0, ap1, disr]
}

const LEFT: [u64; 5] = [LEFT_TPIDR2, LEFT_PMR, LEFT_AP0R0, LEFT_AP1R0, LEFT_DISR];

fn main(_dtb: u64) {
    guests::install_vectors();
    let found = read_all();
    for v in found {
        guests::testdev_write(v);
    }
    let [tpidr2, pmr, ap0, ap1, disr] = found;
    println!("guest: found TPIDR2_EL0 {tpidr2:#x}, ICC_PMR_EL1 {pmr:#x}, ICC_AP0R0_EL1 {ap0:#x}, ICC_AP1R0_EL1 {ap1:#x}, DISR_EL1 {disr:#x}");
    // SAFETY: this vCPU's own TPIDR2_EL0, priority mask, active priorities and DISR_EL1. With
    // priority 0 active the vCPU takes no virtual interrupt from now on; it needs none.
    unsafe {
        core::arch::asm!(
            "msr S3_3_C13_C0_5, {}", "msr S3_0_C4_C6_0, {}", "msr S3_0_C12_C8_4, {}", "msr S3_0_C12_C9_0, {}", "msr S3_0_C12_C1_1, {}", "isb",
            in(reg) LEFT_TPIDR2, in(reg) LEFT_PMR, in(reg) LEFT_AP0R0, in(reg) LEFT_AP1R0, in(reg) LEFT_DISR, options(nostack)
        )
    };
    let now = read_all();
    if now != LEFT {
        guests::fail(format_args!("own TPIDR2_EL0/ICC_PMR_EL1/ICC_AP0R0_EL1/ICC_AP1R0_EL1/DISR_EL1 did not stick: {now:#x?}"));
    }
    // Exits to the host in between (WFI), so the values must survive the world switch.
    for _ in 0..100 {
        guests::relax();
    }
    let now = read_all();
    if now != LEFT {
        guests::fail(format_args!("TPIDR2_EL0/ICC_PMR_EL1/ICC_AP0R0_EL1/ICC_AP1R0_EL1/DISR_EL1 changed across exits: {now:#x?}"));
    }
    println!("guest: left TPIDR2_EL0 {LEFT_TPIDR2:#x}, ICC_PMR_EL1 {LEFT_PMR:#x}, ICC_AP0R0_EL1 {LEFT_AP0R0:#x}, ICC_AP1R0_EL1 {LEFT_AP1R0:#x}, DISR_EL1 {LEFT_DISR:#x}, kept across 100 exits");
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
