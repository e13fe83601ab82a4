//! Unit tests of the vGIC model: register reset values and access rules, routing, priorities,
//! the queue/deactivate contract with the host, and hostile accesses.

use super::*;
use crate::rng::XorShift;

// Distributor offsets used below.
const CTLR: u64 = 0x0000;
const TYPER: u64 = 0x0004;
const IIDR_OFF: u64 = 0x0008;
const TYPER2: u64 = 0x000C;
const STATUSR: u64 = 0x0010;
const IGROUPR: u64 = 0x0080;
const ISENABLER: u64 = 0x0100;
const ICENABLER: u64 = 0x0180;
const ISPENDR: u64 = 0x0200;
const ICPENDR: u64 = 0x0280;
const ISACTIVER: u64 = 0x0300;
const ICACTIVER: u64 = 0x0380;
const IPRIORITYR: u64 = 0x0400;
const ITARGETSR: u64 = 0x0800;
const ICFGR: u64 = 0x0C00;
const IGRPMODR: u64 = 0x0D00;
const NSACR: u64 = 0x0E00;
const SGIR: u64 = 0x0F00;
const PIDR2_OFF: u64 = 0xFFE8;

// Redistributor offsets.
const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_STATUSR: u64 = 0x0010;
const GICR_WAKER: u64 = 0x0014;

const fn irouter(n: u64) -> u64 {
    0x6000 + 8 * n
}

/// vCPU `v`'s `RD_base`.
const fn rd(v: u64) -> u64 {
    v * GICR_STRIDE
}

/// vCPU `v`'s `SGI_base`.
const fn sgi(v: u64) -> u64 {
    v * GICR_STRIDE + GICR_SGI_BASE
}

const SPI: u32 = 33; // the PL011's SPI on QEMU virt is 32 + 1
const TIMER_PPI: u32 = 27;

fn vgic(n: usize) -> Vgic {
    Vgic::new(n).unwrap()
}

/// Both groups on, as Linux leaves `GICD_CTLR`.
fn groups_on(g: &mut Vgic) {
    let _ = g.gicd_write(CTLR, 4, 0x3);
}

/// SPI `intid`: Group 1, enabled, `level` or edge, priority `prio`.
fn setup_spi(g: &mut Vgic, intid: u32, edge: bool, prio: u8) {
    let (word, bit) = (u64::from(intid / 32) * 4, intid % 32);
    let old = g.gicd_read(IGROUPR + word, 4);
    let _ = g.gicd_write(IGROUPR + word, 4, old | 1 << bit);
    let _ = g.gicd_write(IPRIORITYR + u64::from(intid), 1, u64::from(prio));
    let cfg = ICFGR + u64::from(intid / 16) * 4;
    let old = g.gicd_read(cfg, 4);
    let edge_bit = 1u64 << (2 * (intid % 16) + 1);
    let _ = g.gicd_write(cfg, 4, if edge { old | edge_bit } else { old & !edge_bit });
    let _ = g.gicd_write(ISENABLER + word, 4, 1 << bit);
}

/// SGI or PPI `intid` of vCPU `v`: Group 1, enabled, priority `prio` (trigger unchanged).
fn setup_private(g: &mut Vgic, v: u64, intid: u32, prio: u8) {
    let old = g.gicr_read(sgi(v) + IGROUPR, 4);
    let _ = g.gicr_write(sgi(v) + IGROUPR, 4, old | 1 << intid);
    let _ = g.gicr_write(sgi(v) + IPRIORITYR + u64::from(intid), 1, u64::from(prio));
    let _ = g.gicr_write(sgi(v) + ISENABLER, 4, 1 << intid);
}

/// Queues whatever `vcpu` would take next, as a host whose EL2 always accepts.
fn queue_next(g: &mut Vgic, vcpu: usize) -> Option<u32> {
    let c = g.next_to_queue(vcpu)?;
    let intid = c.intid();
    c.accept();
    Some(intid)
}

// ---- Distributor registers -------------------------------------------------------------

#[test]
fn gicd_identification_registers_read_their_fixed_values() {
    let mut g = vgic(2);
    assert_eq!(g.gicd_read(CTLR, 4), 0x50, "ARE and DS RAO, both groups disabled, RWP 0");
    // ITLinesNumber 2 (INTIDs up to 95), IDbits 9, nothing else.
    assert_eq!(g.gicd_read(TYPER, 4), 0x0048_0002);
    assert_eq!(g.gicd_read(IIDR_OFF, 4), 0x0100_0000);
    assert_ne!(g.gicd_read(IIDR_OFF, 4), 0, "0 would make Linux apply the HIP07 workaround");
    assert_eq!(g.gicd_read(TYPER2, 4), 0);
    assert_eq!(g.gicd_read(STATUSR, 4), 0);
    assert_eq!(g.gicd_read(PIDR2_OFF, 4), 0x30, "ArchRev 3");
    for id in (0xFFD0..=0xFFFC).step_by(4).filter(|&o| o != PIDR2_OFF) {
        assert_eq!(g.gicd_read(id, 4), 0, "{id:#x}");
    }
    // Writes to read-only registers are ignored, and are not unhandled accesses.
    for off in [TYPER, IIDR_OFF, TYPER2, STATUSR, PIDR2_OFF] {
        assert_eq!(g.gicd_write(off, 4, 0xFFFF_FFFF), Wake::NONE);
    }
    assert_eq!(g.gicd_read(TYPER, 4), 0x0048_0002);
    assert_eq!(g.gicd_read(PIDR2_OFF, 4), 0x30);
    assert_eq!(g.stats().unhandled_accesses, 0);
}

#[test]
fn gicd_ctlr_keeps_only_the_group_enables() {
    let mut g = vgic(1);
    let _ = g.gicd_write(CTLR, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(CTLR, 4), 0x53);
    let _ = g.gicd_write(CTLR, 4, 0x2);
    assert_eq!(g.gicd_read(CTLR, 4), 0x52);
    let _ = g.gicd_write(CTLR, 4, 0);
    assert_eq!(g.gicd_read(CTLR, 4), 0x50, "ARE and DS cannot be cleared");
}

#[test]
fn gicd_spi_registers_reset_to_zero_and_level() {
    let mut g = vgic(2);
    for w in 1..3 {
        for base in [IGROUPR, ISENABLER, ICENABLER, ISPENDR, ICPENDR, ISACTIVER, ICACTIVER] {
            assert_eq!(g.gicd_read(base + 4 * w, 4), 0, "{base:#x} word {w}");
        }
    }
    for intid in 32..96 {
        assert_eq!(g.gicd_read(IPRIORITYR + intid, 1), 0);
        assert_eq!(g.gicd_read(irouter(intid), 8), 0);
    }
    for w in 2..6 {
        assert_eq!(g.gicd_read(ICFGR + 4 * w, 4), 0, "SPIs reset level-sensitive");
    }
}

#[test]
fn gicd_words_of_private_intids_are_raz_wi() {
    let mut g = vgic(1);
    for base in [IGROUPR, ISENABLER, ISPENDR, ISACTIVER] {
        let _ = g.gicd_write(base, 4, 0xFFFF_FFFF);
        assert_eq!(g.gicd_read(base, 4), 0, "{base:#x}");
    }
    let _ = g.gicd_write(IPRIORITYR, 4, 0xF8F8_F8F8);
    assert_eq!(g.gicd_read(IPRIORITYR, 4), 0);
    let _ = g.gicd_write(ICFGR + 4, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(ICFGR + 4, 4), 0);
    assert_eq!(g.gicd_read(ICFGR, 4), 0, "even the SGIs' edge configuration lives in the redistributor");
    // None of it reached the redistributor.
    assert_eq!(g.gicr_read(sgi(0) + IGROUPR, 4), 0);
    assert_eq!(g.gicr_read(sgi(0) + ISENABLER, 4), 0);
    assert_eq!(g.gicr_read(sgi(0) + ISPENDR, 4), 0);
    assert_eq!(g.gicr_read(sgi(0) + IPRIORITYR, 4), 0);
    assert_eq!(g.gicr_read(sgi(0) + ICFGR + 4, 4), 0);
    assert_eq!(g.stats().unhandled_accesses, 0, "architecturally RAZ/WI, not unhandled");
}

#[test]
fn gicd_igroupr_is_plain_read_write_for_implemented_spis() {
    let mut g = vgic(1);
    let _ = g.gicd_write(IGROUPR + 4, 4, 0xFFFF_FFFF);
    let _ = g.gicd_write(IGROUPR + 8, 4, 0x8000_0001);
    assert_eq!(g.gicd_read(IGROUPR + 4, 4), 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(IGROUPR + 8, 4), 0x8000_0001);
    let _ = g.gicd_write(IGROUPR + 4, 4, 0x0000_00F0);
    assert_eq!(g.gicd_read(IGROUPR + 4, 4), 0xF0, "zero bits clear");
    let _ = g.gicd_write(IGROUPR + 12, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(IGROUPR + 12, 4), 0, "INTIDs 96.. are not implemented");
}

#[test]
fn gicd_set_and_clear_enable_pairs() {
    let mut g = vgic(1);
    let _ = g.gicd_write(ISENABLER + 4, 4, 0b1010);
    let _ = g.gicd_write(ISENABLER + 4, 4, 0b0001);
    assert_eq!(g.gicd_read(ISENABLER + 4, 4), 0b1011, "write 1 to set, 0 has no effect");
    assert_eq!(g.gicd_read(ICENABLER + 4, 4), 0b1011, "both read the enable state");
    let _ = g.gicd_write(ICENABLER + 4, 4, 0b0010);
    assert_eq!(g.gicd_read(ISENABLER + 4, 4), 0b1001);
    let _ = g.gicd_write(ICENABLER + 4, 4, 0);
    assert_eq!(g.gicd_read(ISENABLER + 4, 4), 0b1001);
}

#[test]
fn gicd_pending_latch_and_line() {
    let mut g = vgic(1);
    // ISPENDR latches, ICPENDR clears the latch.
    let _ = g.gicd_write(ISPENDR + 4, 4, 1 << 2);
    assert_eq!(g.gicd_read(ISPENDR + 4, 4), 1 << 2);
    assert_eq!(g.gicd_read(ICPENDR + 4, 4), 1 << 2);
    let _ = g.gicd_write(ICPENDR + 4, 4, 1 << 2);
    assert_eq!(g.gicd_read(ISPENDR + 4, 4), 0);
    // A level-sensitive SPI is pending while its line is high, whatever ICPENDR says.
    let _ = g.set_level(0, SPI, true).unwrap();
    assert_eq!(g.gicd_read(ISPENDR + 4, 4), 1 << (SPI - 32));
    let _ = g.gicd_write(ICPENDR + 4, 4, 1 << (SPI - 32));
    assert_eq!(g.gicd_read(ISPENDR + 4, 4), 1 << (SPI - 32));
    let _ = g.set_level(0, SPI, false).unwrap();
    assert_eq!(g.gicd_read(ISPENDR + 4, 4), 0);
}

#[test]
fn gicd_priorities_keep_the_top_five_bits_by_byte_or_word() {
    let mut g = vgic(1);
    let _ = g.gicd_write(IPRIORITYR + 32, 4, 0xFFA0_7F01);
    assert_eq!(g.gicd_read(IPRIORITYR + 32, 4), 0xF8A0_7800);
    assert_eq!(g.gicd_read(IPRIORITYR + 33, 1), 0x78);
    let _ = g.gicd_write(IPRIORITYR + 34, 1, 0x47);
    assert_eq!(g.gicd_read(IPRIORITYR + 32, 4), 0xF840_7800);
    assert_eq!(g.stats().unhandled_accesses, 0);
    // Halfword and doubleword accesses are not allowed.
    assert_eq!(g.gicd_read(IPRIORITYR + 32, 2), 0);
    let _ = g.gicd_write(IPRIORITYR + 32, 8, u64::MAX);
    assert_eq!(g.gicd_read(IPRIORITYR + 32, 4), 0xF840_7800);
    assert_eq!(g.stats().unhandled_accesses, 2);
}

#[test]
fn gicd_icfgr_keeps_only_int_config() {
    let mut g = vgic(1);
    let _ = g.gicd_write(ICFGR + 8, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(ICFGR + 8, 4), 0xAAAA_AAAA, "bit 2i is RES0");
    let _ = g.gicd_write(ICFGR + 8, 4, 0x0000_0008);
    assert_eq!(g.gicd_read(ICFGR + 8, 4), 0x8, "INTID 33 edge, the rest level");
    let _ = g.gicd_write(ICFGR + 24, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(ICFGR + 24, 4), 0, "INTIDs 96.. are not implemented");
}

#[test]
fn gicd_irouter_accepts_64_bit_and_either_half() {
    let mut g = vgic(4);
    let _ = g.gicd_write(irouter(40), 8, 0xFFFF_FFFF_FFFF_FFFF);
    assert_eq!(g.gicd_read(irouter(40), 8), 0x80FF_FFFF, "Aff3 and RES0 bits are dropped");
    let _ = g.gicd_write(irouter(40), 4, 0x0000_0003);
    assert_eq!(g.gicd_read(irouter(40), 8), 3);
    assert_eq!(g.gicd_read(irouter(40), 4), 3);
    assert_eq!(g.gicd_read(irouter(40) + 4, 4), 0);
    let _ = g.gicd_write(irouter(40) + 4, 4, 0xFF);
    assert_eq!(g.gicd_read(irouter(40), 8), 3, "Aff3 is RES0 (GICD_TYPER.A3V = 0)");
    // Unimplemented SPIs: RAZ/WI. INTIDs below 32: reserved (unhandled).
    let _ = g.gicd_write(irouter(96), 8, 1);
    assert_eq!(g.gicd_read(irouter(96), 8), 0);
    assert_eq!(g.gicd_read(irouter(1019), 8), 0);
    assert_eq!(g.stats().unhandled_accesses, 0);
    let _ = g.gicd_write(irouter(31), 8, 1);
    assert_eq!(g.gicd_read(irouter(0), 8), 0);
    assert_eq!(g.gicd_read(irouter(40) + 4, 8), 0, "misaligned 64-bit access");
    assert_eq!(g.gicd_read(irouter(40), 2), 0, "halfword access");
    assert_eq!(g.gicd_read(irouter(1020), 8), 0, "past GICD_IROUTER1019");
    assert_eq!(g.stats().unhandled_accesses, 5);
}

#[test]
fn gicd_legacy_and_secure_only_registers_are_raz_wi() {
    let mut g = vgic(1);
    for (off, size) in [(ITARGETSR + 32, 1), (ITARGETSR + 32, 4), (IGRPMODR + 4, 4), (NSACR + 8, 4), (SGIR, 4)] {
        let _ = g.gicd_write(off, size, 0xFFFF_FFFF);
        assert_eq!(g.gicd_read(off, size), 0, "{off:#x}");
    }
    assert_eq!(g.stats().unhandled_accesses, 0);
}

#[test]
fn gicd_rejects_bad_sizes_alignments_and_holes() {
    let mut g = vgic(1);
    let bad = [
        (CTLR, 8),
        (CTLR, 2),
        (CTLR, 1),
        (CTLR + 1, 1),
        (TYPER, 0),
        (TYPER, 3),
        (TYPER, 16),
        (TYPER, u32::MAX),
        (ISENABLER + 4, 1),
        (ISENABLER + 2, 2),
        (ICFGR + 8, 8),
        (0x0040, 4), // GICD_SETSPI_NSR: no message-based SPIs
        (0x0F80, 4), // GICD_INMIR: no NMIs
        (0x1000, 4),
        (GICD_SIZE, 4),
        (u64::MAX, 1),
        (u64::MAX - 3, 4),
    ];
    for (i, &(off, size)) in bad.iter().enumerate() {
        assert_eq!(g.gicd_read(off, size), 0, "{off:#x}/{size}");
        assert_eq!(g.gicd_write(off, size, u64::MAX), Wake::NONE);
        assert_eq!(g.stats().unhandled_accesses, 2 * (i as u64 + 1), "{off:#x}/{size}");
    }
    assert_eq!(g.gicd_read(CTLR, 4), 0x50, "nothing reached a register");
}

// ---- Redistributor registers -----------------------------------------------------------

#[test]
fn gicr_rd_base_registers_per_vcpu() {
    let mut g = vgic(3);
    for v in 0..3u64 {
        assert_eq!(g.gicr_read(rd(v) + GICR_CTLR, 4), 0);
        assert_eq!(g.gicr_read(rd(v) + GICR_IIDR, 4), 0x0100_0000);
        assert_eq!(g.gicr_read(rd(v) + GICR_STATUSR, 4), 0);
        assert_eq!(g.gicr_read(rd(v) + PIDR2_OFF, 4), 0x30);
        let last = if v == 2 { 1 << 4 } else { 0 };
        let typer = v << 32 | v << 8 | last;
        assert_eq!(g.gicr_read(rd(v) + GICR_TYPER, 8), typer, "vCPU {v}");
        assert_eq!(g.gicr_read(rd(v) + GICR_TYPER, 4), typer & 0xFFFF_FFFF);
        assert_eq!(g.gicr_read(rd(v) + GICR_TYPER + 4, 4), v, "Affinity_Value: Aff0 = vCPU");
    }
    // GICR_CTLR.EnableLPIs cannot be set; TYPER and IIDR ignore writes.
    let _ = g.gicr_write(rd(1) + GICR_CTLR, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicr_read(rd(1) + GICR_CTLR, 4), 0);
    let _ = g.gicr_write(rd(1) + GICR_TYPER, 8, u64::MAX);
    assert_eq!(g.gicr_read(rd(1) + GICR_TYPER, 8), 1 << 32 | 1 << 8);
    assert_eq!(g.stats().unhandled_accesses, 0);
    // Other sizes, LPI registers and holes: unhandled.
    for (off, size) in [(GICR_CTLR, 8), (GICR_TYPER + 4, 8), (GICR_TYPER, 2), (GICR_WAKER, 1), (0x70, 8), (0x78, 8), (0x40, 8)] {
        assert_eq!(g.gicr_read(rd(1) + off, size), 0, "{off:#x}/{size}");
    }
    assert_eq!(g.stats().unhandled_accesses, 7);
}

#[test]
fn gicr_waker_children_asleep_follows_processor_sleep() {
    let mut g = vgic(2);
    assert_eq!(g.gicr_read(rd(1) + GICR_WAKER, 4), 0b110, "asleep out of reset");
    let _ = g.gicr_write(rd(1) + GICR_WAKER, 4, 0);
    assert_eq!(g.gicr_read(rd(1) + GICR_WAKER, 4), 0, "awake at once");
    assert_eq!(g.gicr_read(rd(0) + GICR_WAKER, 4), 0b110, "per redistributor");
    let _ = g.gicr_write(rd(1) + GICR_WAKER, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicr_read(rd(1) + GICR_WAKER, 4), 0b110, "only ProcessorSleep is writable");
    let _ = g.gicr_write(rd(1) + GICR_WAKER, 4, 0b100);
    assert_eq!(g.gicr_read(rd(1) + GICR_WAKER, 4), 0, "ChildrenAsleep is read-only");
}

#[test]
fn gicr_frames_past_the_last_vcpu_are_unhandled() {
    let mut g = vgic(2);
    assert_eq!(g.gicr_read(rd(2) + GICR_TYPER, 8), 0);
    assert_eq!(g.gicr_read(rd(2) + PIDR2_OFF, 4), 0);
    let _ = g.gicr_write(sgi(2) + ISENABLER, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicr_read(u64::MAX - 7, 8), 0);
    assert_eq!(g.stats().unhandled_accesses, 4);
}

#[test]
fn gicr_sgi_base_reset_values() {
    let mut g = vgic(2);
    for v in 0..2 {
        for base in [IGROUPR, ISENABLER, ICENABLER, ISPENDR, ICPENDR, ISACTIVER, ICACTIVER, IGRPMODR, NSACR] {
            assert_eq!(g.gicr_read(sgi(v) + base, 4), 0, "{base:#x}");
        }
        for w in 0..8 {
            assert_eq!(g.gicr_read(sgi(v) + IPRIORITYR + 4 * w, 4), 0);
        }
        assert_eq!(g.gicr_read(sgi(v) + ICFGR, 4), 0xAAAA_AAAA, "SGIs are edge-triggered");
        assert_eq!(g.gicr_read(sgi(v) + ICFGR + 4, 4), 0, "PPIs reset level-sensitive");
    }
}

#[test]
fn gicr_sgi_base_registers_are_banked_per_vcpu() {
    let mut g = vgic(2);
    let _ = g.gicr_write(sgi(1) + IGROUPR, 4, 0xFFFF_FFFF);
    let _ = g.gicr_write(sgi(1) + ISENABLER, 4, 0x0800_0001);
    let _ = g.gicr_write(sgi(1) + IPRIORITYR + 24, 4, 0xA0A0_A0A0);
    let _ = g.gicr_write(sgi(1) + ICFGR + 4, 4, 0xFFFF_FFFF);
    let _ = g.gicr_write(sgi(1) + ICFGR, 4, 0);
    assert_eq!(g.gicr_read(sgi(1) + IGROUPR, 4), 0xFFFF_FFFF);
    assert_eq!(g.gicr_read(sgi(1) + ISENABLER, 4), 0x0800_0001);
    assert_eq!(g.gicr_read(sgi(1) + IPRIORITYR + 27, 1), 0xA0);
    assert_eq!(g.gicr_read(sgi(1) + ICFGR + 4, 4), 0xAAAA_AAAA, "PPIs programmable, bit 2i RES0");
    assert_eq!(g.gicr_read(sgi(1) + ICFGR, 4), 0xAAAA_AAAA, "SGI configuration is read-only");
    let _ = g.gicr_write(sgi(1) + ICENABLER, 4, 1);
    assert_eq!(g.gicr_read(sgi(1) + ISENABLER, 4), 0x0800_0000);
    for base in [IGROUPR, ISENABLER, IPRIORITYR + 24] {
        assert_eq!(g.gicr_read(sgi(0) + base, 4), 0, "vCPU 0 untouched: {base:#x}");
    }
    // IGRPMODR0 and NSACR are RAZ/WI; registers for INTIDs 32.. do not exist in SGI_base.
    let _ = g.gicr_write(sgi(1) + IGRPMODR, 4, 0xFFFF_FFFF);
    let _ = g.gicr_write(sgi(1) + NSACR, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicr_read(sgi(1) + IGRPMODR, 4), 0);
    assert_eq!(g.gicr_read(sgi(1) + NSACR, 4), 0);
    assert_eq!(g.stats().unhandled_accesses, 0);
    for off in [ISENABLER + 4, IGROUPR + 4, IPRIORITYR + 32, ICFGR + 8, IGRPMODR + 4, NSACR + 4, 0x0F80] {
        let _ = g.gicr_write(sgi(1) + off, 4, 0xFFFF_FFFF);
    }
    assert_eq!(g.stats().unhandled_accesses, 7);
}

// ---- Delivery --------------------------------------------------------------------------

#[test]
fn an_spi_goes_to_the_vcpu_its_irouter_names() {
    let mut g = vgic(3);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, false, 0x80);
    let _ = g.gicd_write(irouter(u64::from(SPI)), 8, 2);
    assert_eq!(g.set_level(0, SPI, true), Ok(Wake(0b100)));
    assert!(!g.has_deliverable(0) && !g.has_deliverable(1) && g.has_deliverable(2));
    assert!(g.next_to_queue(0).is_none());
    // Re-routing a pending SPI wakes its new target.
    assert_eq!(g.gicd_write(irouter(u64::from(SPI)), 8, 1), Wake(0b010));
    assert!(g.has_deliverable(1) && !g.has_deliverable(2));
    assert_eq!(g.next_to_queue(1).map(|c| c.intid()), Some(SPI));
}

#[test]
fn spis_routed_nowhere_or_one_of_n_go_to_vcpu_0() {
    let mut g = vgic(2);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, false, 0x80);
    let _ = g.set_level(0, SPI, true).unwrap();
    for route in [1 << 31 | 1, 0x100 | 1, 0x1_0000, 2, 0xFF] {
        let _ = g.gicd_write(irouter(u64::from(SPI)), 8, route);
        assert!(g.has_deliverable(0) && !g.has_deliverable(1), "route {route:#x}");
    }
    let _ = g.gicd_write(irouter(u64::from(SPI)), 8, 1);
    assert!(!g.has_deliverable(0) && g.has_deliverable(1));
}

#[test]
fn the_highest_priority_goes_first_then_the_lowest_intid() {
    let mut g = vgic(1);
    groups_on(&mut g);
    setup_spi(&mut g, 40, true, 0x80);
    setup_spi(&mut g, 35, true, 0x80);
    setup_spi(&mut g, 50, true, 0x40);
    setup_private(&mut g, 0, 5, 0xA0);
    setup_private(&mut g, 0, 20, 0x80);
    for spi in [40, 35, 50] {
        let _ = g.set_level(0, spi, true).unwrap();
    }
    let _ = g.send_sgi(1, 5).unwrap();
    let _ = g.gicr_write(sgi(0) + ISPENDR, 4, 1 << 20);
    let c = g.next_to_queue(0).unwrap();
    assert_eq!((c.intid(), c.priority(), c.group1()), (50, 0x40, true));
    c.accept();
    let mut order = [0; 4];
    for o in &mut order {
        *o = queue_next(&mut g, 0).unwrap();
    }
    assert_eq!(order, [20, 35, 40, 5]);
    assert!(g.next_to_queue(0).is_none(), "everything is queued");
    assert_eq!(g.stats().queued, 5);
}

#[test]
fn groups_and_enables_gate_delivery() {
    let mut g = vgic(1);
    setup_spi(&mut g, SPI, false, 0x80);
    assert_eq!(g.set_level(0, SPI, true), Ok(Wake::NONE), "Group 1 is disabled in GICD_CTLR");
    assert_eq!(g.gicd_write(CTLR, 4, 0x1), Wake::NONE, "enabling Group 0 does not help a Group 1 SPI");
    assert_eq!(g.gicd_write(CTLR, 4, 0x2), Wake(1));
    assert_eq!(g.gicd_write(ICENABLER + 4, 4, 1 << (SPI - 32)), Wake::NONE);
    assert!(!g.has_deliverable(0));
    assert_eq!(g.gicd_write(ISENABLER + 4, 4, 1 << (SPI - 32)), Wake(1));
    // A Group 0 interrupt needs EnableGrp0 and is queued as Group 0.
    let _ = g.gicd_write(IGROUPR + 4, 4, 0);
    assert!(!g.has_deliverable(0));
    assert_eq!(g.gicd_write(CTLR, 4, 0x1), Wake(1));
    assert!(!g.next_to_queue(0).unwrap().group1());
}

#[test]
fn mmio_writes_that_make_an_interrupt_deliverable_wake_its_vcpu() {
    let mut g = vgic(2);
    groups_on(&mut g);
    // ISPENDR on an enabled SGI of vCPU 1.
    setup_private(&mut g, 1, 2, 0x80);
    assert_eq!(g.gicr_write(sgi(1) + ISPENDR, 4, 1 << 2), Wake(0b10));
    assert_eq!(g.gicr_write(sgi(1) + ISPENDR, 4, 1 << 2), Wake::NONE, "already deliverable");
    // Enabling a pending PPI of vCPU 0.
    let _ = g.set_level(0, TIMER_PPI, true).unwrap();
    let _ = g.gicr_write(sgi(0) + IGROUPR, 4, 1 << TIMER_PPI);
    assert_eq!(g.gicr_write(sgi(0) + ISENABLER, 4, 1 << TIMER_PPI), Wake(0b01));
    // Changing a priority does not add anything.
    assert_eq!(g.gicr_write(sgi(0) + IPRIORITYR + 24, 4, 0), Wake::NONE);
}

#[test]
fn sgis_reach_exactly_their_targets() {
    let mut g = vgic(3);
    groups_on(&mut g);
    for v in 0..3 {
        setup_private(&mut g, v, 1, 0x80);
    }
    assert_eq!(g.send_sgi(0b101, 1), Ok(Wake(0b101)));
    assert!(g.has_deliverable(0) && !g.has_deliverable(1) && g.has_deliverable(2));
    assert_eq!(g.gicr_read(sgi(2) + ISPENDR, 4), 0b10);
    assert_eq!(g.gicr_read(sgi(1) + ISPENDR, 4), 0);
    assert_eq!(g.stats().sgis, 2);
    // Two SGIs before delivery are one pending state; SGIs are edge: delivered once.
    let _ = g.send_sgi(0b001, 1).unwrap();
    assert_eq!(queue_next(&mut g, 0), Some(1));
    assert_eq!(g.deactivated(0, 1), Ok(Wake::NONE));
    assert!(!g.has_deliverable(0));
    // Broadcast to all three.
    assert_eq!(g.send_sgi(0b111, 1), Ok(Wake(0b011)), "vCPU 2's is still pending from before");
    assert_eq!(g.stats().sgis, 6);
}

#[test]
fn a_level_interrupt_is_resampled_when_deactivated() {
    let mut g = vgic(1);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, false, 0x80);
    assert_eq!(g.set_level(0, SPI, true), Ok(Wake(1)));
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    assert!(!g.has_deliverable(0), "queued: not again while EL2 holds it");
    assert_eq!(g.set_level(0, SPI, true), Ok(Wake::NONE));
    assert_eq!(g.gicd_read(ISACTIVER + 4, 4), 1 << (SPI - 32), "ISACTIVER reads 'queued'");
    // The line is still high when the guest deactivates: deliverable again at once.
    assert_eq!(g.deactivated(0, SPI), Ok(Wake(1)));
    assert_eq!(g.gicd_read(ISACTIVER + 4, 4), 0);
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    // The device lowers its line before the guest is done: nothing more.
    assert_eq!(g.set_level(0, SPI, false), Ok(Wake::NONE));
    assert_eq!(g.deactivated(0, SPI), Ok(Wake::NONE));
    assert!(!g.has_deliverable(0));
    assert_eq!(g.stats().deactivated, 2);
}

#[test]
fn ispendr_on_a_level_interrupt_is_consumed_by_the_delivery() {
    let mut g = vgic(1);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, false, 0x80);
    let _ = g.gicd_write(ISPENDR + 4, 4, 1 << (SPI - 32));
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    assert_eq!(g.deactivated(0, SPI), Ok(Wake::NONE), "line low, latch consumed");
    assert!(!g.has_deliverable(0));
}

#[test]
fn an_edge_latch_is_consumed_once() {
    let mut g = vgic(2);
    groups_on(&mut g);
    let _ = g.gicr_write(sgi(1) + ICFGR + 4, 4, 2 << (2 * (TIMER_PPI - 16)));
    setup_private(&mut g, 1, TIMER_PPI, 0x80);
    assert_eq!(g.set_level(1, TIMER_PPI, true), Ok(Wake(0b10)), "rising edge");
    assert_eq!(g.set_level(1, TIMER_PPI, true), Ok(Wake::NONE), "high again is no edge");
    assert_eq!(queue_next(&mut g, 1), Some(TIMER_PPI));
    assert_eq!(g.gicr_read(sgi(1) + ISPENDR, 4), 0, "the edge is consumed; the high line does not count");
    assert_eq!(g.set_level(1, TIMER_PPI, true), Ok(Wake::NONE), "a line held high is no new edge");
    assert_eq!(g.gicr_read(sgi(1) + ISPENDR, 4), 0);
    assert_eq!(g.deactivated(1, TIMER_PPI), Ok(Wake::NONE));
    assert!(!g.has_deliverable(1));
    // Two edges while queued are delivered once after the deactivation.
    assert_eq!(g.set_level(1, TIMER_PPI, false), Ok(Wake::NONE));
    let _ = g.set_level(1, TIMER_PPI, true).unwrap();
    assert_eq!(queue_next(&mut g, 1), Some(TIMER_PPI));
    for high in [false, true, false, true] {
        assert_eq!(g.set_level(1, TIMER_PPI, high), Ok(Wake::NONE));
    }
    assert_eq!(g.deactivated(1, TIMER_PPI), Ok(Wake(0b10)));
    assert_eq!(queue_next(&mut g, 1), Some(TIMER_PPI));
    assert_eq!(g.deactivated(1, TIMER_PPI), Ok(Wake::NONE));
    assert!(!g.has_deliverable(1));
    assert!(!g.has_deliverable(0), "a PPI is the other vCPU's business");
}

#[test]
fn a_queued_interrupt_cannot_be_withdrawn_by_the_guest() {
    let mut g = vgic(1);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, true, 0x80);
    let _ = g.set_level(0, SPI, true).unwrap();
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    let _ = g.gicd_write(ICACTIVER + 4, 4, 0xFFFF_FFFF);
    let _ = g.gicd_write(ICENABLER + 4, 4, 0xFFFF_FFFF);
    let _ = g.gicd_write(ICPENDR + 4, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(ISACTIVER + 4, 4), 1 << (SPI - 32), "still in a list register");
    assert_eq!(g.deactivated(0, SPI), Ok(Wake::NONE));
    // ISACTIVER writes are ignored too.
    let _ = g.gicd_write(ISACTIVER + 4, 4, 0xFFFF_FFFF);
    assert_eq!(g.gicd_read(ISACTIVER + 4, 4), 0);
}

#[test]
fn host_contract_misuse_is_refused_without_change() {
    assert_eq!(Vgic::new(0).err(), Some(Error::VcpuCount));
    assert_eq!(Vgic::new(MAX_VCPUS + 1).err(), Some(Error::VcpuCount));
    let mut g = vgic(2);
    groups_on(&mut g);
    setup_spi(&mut g, SPI, false, 0x80);
    setup_private(&mut g, 0, 3, 0x80);
    assert_eq!(g.set_level(0, 3, true), Err(Error::BadIntid), "SGIs have no line");
    assert_eq!(g.set_level(2, TIMER_PPI, true), Err(Error::NoSuchVcpu));
    assert_eq!(g.set_level(0, 96, true), Err(Error::BadIntid));
    assert_eq!(g.set_level(0, u32::MAX, true), Err(Error::BadIntid));
    assert_eq!(g.set_level(usize::MAX, SPI, false), Ok(Wake::NONE), "vCPU ignored for SPIs");
    assert_eq!(g.send_sgi(0b100, 3), Err(Error::NoSuchVcpu));
    assert_eq!(g.send_sgi(1, 16), Err(Error::BadIntid));
    assert_eq!(g.stats().sgis, 0);
    assert!(!g.has_deliverable(0));
    assert!(g.next_to_queue(2).is_none());
    assert!(!g.has_deliverable(usize::MAX));
    // Deactivations EL2 cannot have reported.
    assert_eq!(g.deactivated(0, SPI), Err(Error::NotQueued));
    assert_eq!(g.deactivated(2, SPI), Err(Error::NoSuchVcpu));
    assert_eq!(g.deactivated(0, 96), Err(Error::BadIntid));
    assert_eq!(g.deactivated(0, 1023), Err(Error::BadIntid));
    let _ = g.set_level(0, SPI, true).unwrap();
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    assert_eq!(g.deactivated(1, SPI), Err(Error::NotQueued), "queued on vCPU 0, not 1");
    assert_eq!(g.deactivated(0, SPI), Ok(Wake(1)));
    assert_eq!(g.deactivated(0, SPI), Err(Error::NotQueued), "twice");
    // EL2 refused (Busy, NoCapacity): dropping the candidate changes nothing.
    let before = g.clone();
    let c = g.next_to_queue(0).unwrap();
    assert_eq!(c.intid(), SPI);
    drop(c);
    assert_eq!(g, before);
    assert_eq!(g.stats().deactivated, 1);
}

#[test]
fn a_linux_style_bring_up_delivers_the_timer_and_the_uart() {
    // The order of accesses a GICv3 driver makes: distributor off, SPIs to Group 1, disabled,
    // inactive, default priority, level, routed to the boot CPU; distributor on; then each
    // CPU wakes its redistributor and configures its SGIs and PPIs.
    let mut g = vgic(2);
    let _ = g.gicd_write(CTLR, 4, 0);
    assert_eq!(g.gicd_read(CTLR, 4) & 1 << 31, 0, "RWP");
    let lines = (g.gicd_read(TYPER, 4) & 0x1F) + 1;
    for w in 1..lines {
        let _ = g.gicd_write(IGROUPR + 4 * w, 4, 0xFFFF_FFFF);
        let _ = g.gicd_write(ICENABLER + 4 * w, 4, 0xFFFF_FFFF);
        let _ = g.gicd_write(ICACTIVER + 4 * w, 4, 0xFFFF_FFFF);
    }
    for i in (32..32 * lines).step_by(4) {
        let _ = g.gicd_write(IPRIORITYR + i, 4, 0xA0A0_A0A0);
    }
    for i in (32..32 * lines).step_by(16) {
        let _ = g.gicd_write(ICFGR + i / 4, 4, 0);
    }
    for n in 32..32 * lines {
        let _ = g.gicd_write(irouter(n), 8, 0);
    }
    let _ = g.gicd_write(CTLR, 4, 0x13);
    for v in 0..2 {
        let typer = g.gicr_read(rd(v) + GICR_TYPER, 8);
        assert_eq!(typer >> 32, v, "matches the vCPU's MPIDR");
        let waker = g.gicr_read(rd(v) + GICR_WAKER, 4);
        let _ = g.gicr_write(rd(v) + GICR_WAKER, 4, waker & !0b10);
        assert_eq!(g.gicr_read(rd(v) + GICR_WAKER, 4) & 0b100, 0, "ChildrenAsleep clear");
        let _ = g.gicr_write(sgi(v) + IGROUPR, 4, 0xFFFF_FFFF);
        let _ = g.gicr_write(sgi(v) + ICACTIVER, 4, 0xFFFF_FFFF);
        let _ = g.gicr_write(sgi(v) + ICENABLER, 4, 0xFFFF_0000);
        let _ = g.gicr_write(sgi(v) + ISENABLER, 4, 0x0000_FFFF);
        for i in (0..32).step_by(4) {
            let _ = g.gicr_write(sgi(v) + IPRIORITYR + i, 4, 0xA0A0_A0A0);
        }
        assert_eq!(g.gicr_read(rd(v) + GICR_TYPER, 8) & 1 << 4 != 0, v == 1, "Last");
    }
    // The timer PPI (level) of vCPU 1 and the UART's SPI.
    let _ = g.gicr_write(sgi(1) + IPRIORITYR + u64::from(TIMER_PPI), 1, 0x80);
    let _ = g.gicr_write(sgi(1) + ISENABLER, 4, 1 << TIMER_PPI);
    let _ = g.gicd_write(ISENABLER + 4, 4, 1 << (SPI - 32));
    assert_eq!(g.set_level(1, TIMER_PPI, true), Ok(Wake(0b10)));
    assert_eq!(g.set_level(0, SPI, true), Ok(Wake(0b01)));
    let c = g.next_to_queue(1).unwrap();
    assert_eq!((c.intid(), c.priority(), c.group1()), (TIMER_PPI, 0x80, true));
    c.accept();
    assert_eq!(queue_next(&mut g, 0), Some(SPI));
    assert_eq!(g.stats().unhandled_accesses, 0);
}

// ---- Hostile input ---------------------------------------------------------------------

/// The enable bits as the guest's writes set them, kept apart from the model's bitmaps:
/// each vCPU's SGIs and PPIs, and the SPIs (bit `i` = SPI `32 + i`).
#[derive(Default)]
struct Enables {
    private: [u32; MAX_VCPUS],
    spis: u64,
}

impl Enables {
    /// Follows a guest write: `ISENABLER`/`ICENABLER` words are 32-bit accesses; the
    /// distributor's words 1 and 2 hold the SPIs (word 0, the private INTIDs, is RAZ/WI there),
    /// a redistributor's `SGI_base` word 0 its vCPU's SGIs and PPIs.
    fn write(&mut self, nr: usize, gicr: bool, off: u64, size: u32, value: u64) {
        let bits = value as u32;
        if size != 4 {
            return;
        }
        let (set, word) = match (gicr, off % GICR_STRIDE) {
            (false, o) if off == o && (ISENABLER + 4..ISENABLER + 12).contains(&o) => (true, (o - ISENABLER) / 4),
            (false, o) if off == o && (ICENABLER + 4..ICENABLER + 12).contains(&o) => (false, (o - ICENABLER) / 4),
            (true, o) if o == GICR_SGI_BASE + ISENABLER => (true, 0),
            (true, o) if o == GICR_SGI_BASE + ICENABLER => (false, 0),
            _ => return,
        };
        if gicr {
            let Some(w) = self.private.get_mut((off / GICR_STRIDE) as usize).filter(|_| ((off / GICR_STRIDE) as usize) < nr) else { return };
            *w = if set { *w | bits } else { *w & !bits };
        } else {
            let shift = 32 * (word - 1);
            let m = u64::from(bits) << shift;
            self.spis = if set { self.spis | m } else { self.spis & !m };
        }
    }

    fn enabled(&self, vcpu: usize, intid: usize) -> bool {
        match intid {
            0..NR_PRIVATE => self.private[vcpu] >> intid & 1 != 0,
            _ => self.spis >> (intid - NR_PRIVATE) & 1 != 0,
        }
    }
}

/// Every vCPU's deliverable INTIDs from a look at every interrupt of every bank, with the
/// enable bits the guest wrote: what `deliverable_map` must find by looking only at the
/// bitmaps' enabled ones.
fn reference_maps(g: &Vgic, en: &Enables) -> [u128; MAX_VCPUS] {
    let mut maps = [0u128; MAX_VCPUS];
    for (v, map) in maps.iter_mut().enumerate().take(g.nr_vcpus) {
        for i in 0..NR_PRIVATE {
            if ready(g.ctlr, en.enabled(v, i), &g.private[v][i]) {
                *map |= 1 << i;
            }
        }
    }
    for s in 0..NR_SPIS {
        if ready(g.ctlr, en.enabled(0, NR_PRIVATE + s), &g.spis[s]) {
            maps[g.spi_target(s)] |= 1 << (NR_PRIVATE + s);
        }
    }
    maps
}

/// Random guest accesses (biased to real registers, any size, any value) interleaved with
/// random host calls: nothing panics, reads fit their size, every candidate is sane, the
/// returned `Wake` names exactly the vCPUs that gained a deliverable interrupt (the single-
/// interrupt changes compute it from that interrupt alone), and one vCPU's map is its row of
/// all of them.
#[test]
fn random_accesses_and_calls_keep_the_model_sane() {
    let mut rng = XorShift::for_test("vgic random_accesses_and_calls_keep_the_model_sane");
    let sizes = [0u32, 1, 2, 3, 4, 4, 4, 4, 8, 8, 16, u32::MAX];
    for _round in 0..20 {
        let nr = 1 + rng.below(MAX_VCPUS as u64) as usize;
        let mut g = vgic(nr);
        let mut en = Enables::default();
        let mut unhandled = 0;
        for _ in 0..5_000 {
            let before = g.deliverable_maps();
            let size = rng.pick(&sizes);
            let value = match rng.below(5) {
                0 => 0,
                1 => u64::MAX,
                // An `IROUTER` that names a vCPU.
                2 => rng.below(MAX_VCPUS as u64),
                _ => rng.next(),
            };
            let off = match rng.below(8) {
                0 => rng.below(0x1000) & !3,
                1 => 0x6000 + rng.below(0x2000),
                2 => rng.below(GICR_STRIDE * (MAX_VCPUS as u64 + 1)) & !3,
                3 => rng.below(nr as u64) * GICR_STRIDE + GICR_SGI_BASE + (rng.below(0x1000) & !3),
                4 => rng.next(),
                // The enable words, distributor's (SPIs) and redistributors' (SGIs and PPIs),
                // which a uniform pick would seldom reach.
                5 => rng.pick(&[ISENABLER + 4, ISENABLER + 8, ICENABLER + 4, ICENABLER + 8]),
                6 => rng.below(nr as u64) * GICR_STRIDE + GICR_SGI_BASE + rng.pick(&[ISENABLER, ICENABLER]),
                _ => rng.below(0x1_0000),
            };
            let wake = match rng.below(9) {
                0 => {
                    let r = g.gicd_read(off, size);
                    assert_eq!(r & !width_mask(size), 0, "{off:#x}/{size}: {r:#x}");
                    Wake::NONE
                }
                1 => {
                    let r = g.gicr_read(off, size);
                    assert_eq!(r & !width_mask(size), 0, "{off:#x}/{size}: {r:#x}");
                    Wake::NONE
                }
                2 => {
                    en.write(nr, false, off % GICD_SIZE, size, value);
                    g.gicd_write(off % GICD_SIZE, size, value)
                }
                3 => {
                    en.write(nr, true, off, size, value);
                    g.gicr_write(off, size, value)
                }
                4 => g.set_level(rng.below(9) as usize, rng.below(100) as u32, rng.below(2) == 0).unwrap_or_default(),
                5 => g.send_sgi(rng.next() as u8, rng.below(17) as u32).unwrap_or_default(),
                6 => {
                    let v = rng.below(9) as usize;
                    let has = g.has_deliverable(v);
                    let c = g.next_to_queue(v);
                    assert_eq!(c.is_some(), has);
                    if let Some(c) = c {
                        assert_eq!(c.priority() & 7, 0, "VCPU_SET_IRQ would refuse it");
                        assert!(c.intid() < 96);
                        if rng.below(4) != 0 {
                            c.accept();
                        }
                    }
                    Wake::NONE
                }
                7 => g.deactivated(rng.below(9) as usize, rng.below(100) as u32).unwrap_or_default(),
                _ => {
                    // The common Linux set-up: both groups on.
                    g.gicd_write(0, 4, 3)
                }
            };
            assert_eq!(u32::from(wake.bits()) >> nr, 0, "only vCPUs of the VM");
            let after = g.deliverable_maps();
            assert_eq!(after, reference_maps(&g, &en));
            let gained = (0..MAX_VCPUS).filter(|&v| after[v] & !before[v] != 0).fold(0u8, |w, v| w | 1 << v);
            assert_eq!(wake.bits(), gained, "the wake is the vCPUs that gained an interrupt");
            for (v, &map) in after.iter().enumerate() {
                assert_eq!(g.deliverable_map(v), map);
                assert_eq!(g.has_deliverable(v), map != 0);
            }
            assert!(g.stats().unhandled_accesses >= unhandled);
            unhandled = g.stats().unhandled_accesses;
        }
    }
}

#[test]
fn a_linked_ppi_is_never_queued_but_reads_pending() {
    let mut g = vgic(2);
    groups_on(&mut g);
    assert_eq!(g.link_config(0, TIMER_PPI), None, "disabled at reset");
    let _ = g.gicr_write(sgi(0) + IGROUPR, 4, 1 << TIMER_PPI);
    let _ = g.gicr_write(sgi(0) + IPRIORITYR + 24, 4, 0xA8 << 24);
    let _ = g.gicr_write(sgi(0) + ISENABLER, 4, 1 << TIMER_PPI);
    assert_eq!(g.link_config(0, TIMER_PPI), Some((0xA8, true)));
    assert_eq!(g.link_config(1, TIMER_PPI), None, "vCPU 1's own PPI");
    let _ = g.gicd_write(CTLR, 4, 0x1);
    assert_eq!(g.link_config(0, TIMER_PPI), None, "its group disabled");
    groups_on(&mut g);
    assert_eq!(g.link_config(0, 5), None, "an SGI is never linked");
    assert_eq!(g.set_linked(0, 5, true), Err(Error::BadIntid));
    assert_eq!(g.set_linked(2, TIMER_PPI, true), Err(Error::NoSuchVcpu));
    g.set_linked(0, TIMER_PPI, true).unwrap();
    // The line goes high: pending as the guest reads it, but neither offered nor a wake-up.
    let w = g.set_level(0, TIMER_PPI, true).unwrap();
    assert_eq!(w.bits(), 0);
    assert!(!g.has_deliverable(0));
    assert!(g.next_to_queue(0).is_none());
    assert_eq!(g.gicr_read(sgi(0) + ISPENDR, 4) & 1 << TIMER_PPI, 1 << TIMER_PPI);
    // Unlinked: the model's to queue again.
    g.set_linked(0, TIMER_PPI, false).unwrap();
    assert!(g.has_deliverable(0));
    assert_eq!(g.next_to_queue(0).map(|c| c.intid()), Some(TIMER_PPI));
}
