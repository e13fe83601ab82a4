//! MTE guest. It turns its MMU on (identity map: devices below 1 GiB, RAM as Tagged Normal),
//! enables tag access and synchronous tag checks, and then, by the mode the host's test device
//! gives it:
//! - 1: tags memory with IRG/STG, takes a synchronous tag-check fault on a mismatched access,
//!   checks tags survive 2,000 exits, and leaves nonzero tags on 16 "handover" pages;
//! - 2: the same checks, then checks the handover pages (now its own, freshly given) read
//!   all-zero tags;
//! - 3: no MTE use at all (for a VM without MTE on memory without tag storage).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

const UNASSIGNED: u64 = 0x0c00_0000;
/// 16 pages past the image, tagged in mode 1 and checked in mode 2.
const HANDOVER: u64 = 0x4060_0000;
/// Pages tagged for the survival check (64 of them, after the first).
const WORK: u64 = 0x4070_0000;

#[repr(C, align(4096))]
struct Table([u64; 512]);
static mut L1: Table = Table([0; 512]);
static mut L2: Table = Table([0; 512]);

fn mmu_on() {
    // SAFETY: the table is this guest's; it identity-maps what the guest uses.
    let l1 = unsafe { &mut *core::ptr::addr_of_mut!(L1) };
    const AF: u64 = 1 << 10;
    const SH_INNER: u64 = 0b11 << 8;
    // SAFETY: as above, for the level-2 table.
    let l2 = unsafe { &mut *core::ptr::addr_of_mut!(L2) };
    // [0] devices: a 1 GiB block (AttrIndx 0, XN). [1] RAM: 2 MiB blocks (AttrIndx 1, Tagged
    // Normal) through a level-2 table.
    l1.0[0] = 0x1 | AF | (1 << 54) | (1 << 53);
    for (i, e) in l2.0.iter_mut().enumerate() {
        *e = (0x4000_0000 + (i as u64) * 0x20_0000) | 0x1 | AF | SH_INNER | (1 << 2);
    }
    l1.0[1] = l2.0.as_ptr() as u64 | 0x3;
    let mair: u64 = 0x04 | (0xF0 << 8);
    // T0SZ 25 (39-bit VA, level-1 start), IRGN0/ORGN0 WB, SH0 inner, TG0 4K, EPD1, IPS 36-bit,
    // TBI0 (tags live in the top byte).
    let tcr: u64 = 25 | (1 << 8) | (1 << 10) | (0b11 << 12) | (1 << 23) | (1 << 32) | (1 << 37);
    // SAFETY: installing an identity map of the running code and data, then turning on the MMU,
    // caches, allocation-tag access (ATA) and synchronous tag-check faults (TCF = 1).
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {t}, sctlr_el1",
            "orr {t}, {t}, #1",
            "orr {t}, {t}, #(1 << 2)",
            "orr {t}, {t}, #(1 << 12)",
            "orr {t}, {t}, #(1 << 43)",
            "orr {t}, {t}, #(1 << 40)",
            "msr sctlr_el1, {t}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) l1.0.as_ptr() as u64,
            t = out(reg) _,
            options(nostack)
        );
        // Random tags from RGSR_EL1's seed, no tag excluded.
        core::arch::asm!("msr S3_0_C1_C0_6, xzr", "msr S3_0_C1_C0_5, {seed}", "isb", seed = in(reg) 0x1234u64 << 8, options(nostack));
    }
}

fn irg(p: u64) -> u64 {
    let r: u64;
    // SAFETY: IRG only computes a tagged pointer.
    unsafe { core::arch::asm!(".arch_extension memtag", "irg {r}, {p}", r = out(reg) r, p = in(reg) p, options(nostack)) };
    r
}

fn stg(p: u64) {
    // SAFETY: sets the allocation tag of the granule at `p` (in this guest's tagged RAM) to p's tag.
    unsafe { core::arch::asm!(".arch_extension memtag", "stg {p}, [{p}]", p = in(reg) p, options(nostack)) };
}

fn ldg(p: u64) -> u64 {
    let mut r = p & !(0xF << 56);
    // SAFETY: reads the allocation tag of the granule at `p` into r's tag bits.
    unsafe { core::arch::asm!(".arch_extension memtag", "ldg {r}, [{p}]", r = inout(reg) r, p = in(reg) p, options(nostack)) };
    (r >> 56) & 0xF
}

fn with_tag(p: u64, t: u64) -> u64 {
    (p & !(0xF << 56)) | (t & 0xF) << 56
}

fn checks() {
    // Tagged allocation and a matching access.
    let base = WORK;
    let t = irg(base);
    stg(t);
    // SAFETY: an access through the pointer carrying the granule's tag.
    unsafe { core::ptr::write_volatile(t as *mut u64, 7) };
    // A mismatched access: synchronous tag-check fault (EC 0x25, DFSC 0x11).
    let wrong = with_tag(t, (t >> 56) + 1);
    let esr = guests::trapped(|| {
        // SAFETY: a deliberately mismatched access; the fault is caught and the access skipped.
        unsafe { core::ptr::read_volatile(wrong as *const u64) };
    });
    match esr {
        Some(e) if e >> 26 == 0x25 && e & 0x3F == 0x11 => println!("guest: ok: mismatched tag -> synchronous tag-check fault"),
        other => guests::fail(format_args!("mismatched tag access: {other:x?}")),
    }
    // Tags survive exits: 64 granules with tags 0..15, 2,000 exits, check all. One granule per
    // page: the QEMU this project tests on (7.2) keeps a single tag byte per page for a guest
    // behind stage 2 (observed: all even granules of a page share one tag, all odd ones
    // another), so granules of one page cannot be told apart there; hardware keeps a tag per
    // 16-byte granule, and one granule per page checks the same thing on both.
    for g in 0..64u64 {
        stg(with_tag(base + 0x1000 + g * 4096, g));
    }
    for _ in 0..2000 {
        // SAFETY: an MMIO read of an unassigned address (an exit to the host).
        unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
    }
    for g in 0..64u64 {
        let got = ldg(base + 0x1000 + g * 4096);
        if got != g % 16 {
            guests::fail(format_args!("granule {g} tag {got} after 2000 exits, expected {}", g % 16));
        }
    }
    println!("guest: ok: 64 allocation tags intact after 2000 exits");
    mte_registers_switched();
}

/// RGSR_EL1, GCR_EL1, TFSR_EL1 and TFSRE0_EL1 keep this guest's values across exits (the
/// host runs with its own in between).
fn mte_registers_switched() {
    const RGSR: u64 = 0x5A5A << 8 | 0x3;
    const GCR: u64 = 1 << 16 | 0x00F0;
    const TFSR: u64 = 0b11;
    const TFSRE0: u64 = 0b01;
    let read = || -> [u64; 4] {
        let (a, b, c, d): (u64, u64, u64, u64);
        // SAFETY: reading this guest's own MTE registers (RGSR, GCR, TFSR, TFSRE0).
        unsafe {
            core::arch::asm!(
                "mrs {}, S3_0_C1_C0_5", "mrs {}, S3_0_C1_C0_6", "mrs {}, S3_0_C5_C6_0", "mrs {}, S3_0_C5_C6_1",
                out(reg) a, out(reg) b, out(reg) c, out(reg) d, options(nostack)
            )
        };
        [a, b, c, d]
    };
    // SAFETY: this guest's own MTE registers; no tag checking depends on them until restored.
    unsafe {
        core::arch::asm!(
            "msr S3_0_C1_C0_5, {}", "msr S3_0_C1_C0_6, {}", "msr S3_0_C5_C6_0, {}", "msr S3_0_C5_C6_1, {}", "isb",
            in(reg) RGSR, in(reg) GCR, in(reg) TFSR, in(reg) TFSRE0, options(nostack)
        )
    };
    for _ in 0..500 {
        // SAFETY: an MMIO read of an unassigned address (an exit to the host).
        unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
    }
    let got = read();
    if got != [RGSR, GCR, TFSR, TFSRE0] {
        guests::fail(format_args!("MTE registers after 500 exits: {got:#x?}"));
    }
    // SAFETY: back to the settings `mmu_on` chose, with no fault recorded.
    unsafe {
        core::arch::asm!(
            "msr S3_0_C1_C0_6, xzr", "msr S3_0_C1_C0_5, {seed}", "msr S3_0_C5_C6_0, xzr", "msr S3_0_C5_C6_1, xzr", "isb",
            seed = in(reg) 0x1234u64 << 8, options(nostack)
        )
    };
    println!("guest: ok: RGSR_EL1, GCR_EL1, TFSR_EL1 and TFSRE0_EL1 intact after 500 exits");
}

fn main(_dtb: u64) {
    guests::install_vectors();
    let mode = guests::testdev_read();
    if mode == 3 {
        println!("guest: running without MTE");
        return;
    }
    mmu_on();
    checks();
    // Every 16-byte granule of 16 pages: EL2 clears tags a block of them at a time, and a
    // block it skipped would show.
    let granules = (0..16 * 4096u64).step_by(16).map(|o| HANDOVER + o);
    if mode == 1 {
        granules.for_each(|g| stg(with_tag(g, 0xA)));
        println!("guest: tagged 4096 granules of the 16 handover pages with tag 0xA");
    } else {
        let nonzero = granules.filter(|&g| ldg(g) != 0).count();
        if nonzero != 0 {
            guests::fail(format_args!("{nonzero} granules of freshly given pages have nonzero tags"));
        }
        println!("guest: ok: freshly given pages read all-zero tags (4096 granules of 16 pages)");
    }
}

fn secondary(_: u64) {}
