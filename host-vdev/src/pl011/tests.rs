//! Unit tests of the PL011 model: reset values, register access rules, the receive FIFO, the
//! interrupt line through mask and clear sequences, the way Linux's driver transmits, and
//! hostile accesses.

use super::*;
use crate::rng::XorShift;

const DR: u64 = 0x000;
const RSR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02C;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03C;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;

const RXIM: u64 = 1 << 4;
const TXIM: u64 = 1 << 5;
const RTIM: u64 = 1 << 6;
const FEN: u64 = 1 << 4;

/// Enabled with FIFOs, as Linux leaves it after `startup` and `set_termios`.
fn running() -> Pl011 {
    let mut u = Pl011::new();
    assert_eq!(u.write(LCR_H, 2, 0x60 | FEN), None);
    assert_eq!(u.write(CR, 2, 0x301), None);
    u
}

#[test]
fn reset_values() {
    let mut u = Pl011::new();
    assert_eq!(u.read(FR, 4), 0x97, "TXFE, RXFE, and CTS, DSR, DCD asserted");
    assert_eq!(u.read(CR, 4), 0x300);
    assert_eq!(u.read(IFLS, 4), 0x12);
    for off in [RSR, ILPR, IBRD, FBRD, LCR_H, IMSC, RIS, MIS, DMACR, DR] {
        assert_eq!(u.read(off, 4), 0, "{off:#x}");
    }
    assert!(!u.irq_level());
    assert_eq!(u.stats(), Stats::default());
}

#[test]
fn identification_registers_match_the_trm() {
    let mut u = Pl011::new();
    let id: [u64; 8] = core::array::from_fn(|i| u.read(0xFE0 + 4 * i as u64, 4));
    assert_eq!(id, [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]);
    // Linux's AMBA bus reads them as one ID each: part 0x011, designer 0x41, revision 1; and
    // the PrimeCell ID 0xB105F00D.
    let periph = id[..4].iter().enumerate().fold(0, |a, (i, b)| a | b << (8 * i));
    let cell = id[4..].iter().enumerate().fold(0, |a, (i, b)| a | b << (8 * i));
    assert_eq!((periph & 0xFFF, periph >> 12 & 0xFF, periph >> 20 & 0xF), (0x011, 0x41, 1));
    assert_eq!(cell, 0xB105_F00D);
    let _ = u.write(0xFE0, 4, 0xFF);
    assert_eq!(u.read(0xFE0, 4), 0x11, "read-only");
    assert_eq!(u.read(0xFD0, 4), 0, "below the ID block");
    assert_eq!(u.stats().unhandled_accesses, 1);
}

#[test]
fn read_write_registers_keep_their_implemented_bits() {
    let mut u = Pl011::new();
    for (off, kept) in [
        (ILPR, 0xFF),
        (IBRD, 0xFFFF),
        (FBRD, 0x3F),
        (LCR_H, 0xFF),
        (CR, 0xFF87),
        (IFLS, 0x3F),
        (IMSC, 0x7FF),
        (DMACR, 0x7),
    ] {
        assert_eq!(u.write(off, 4, 0xFFFF_FFFF), None);
        assert_eq!(u.read(off, 4), kept, "{off:#x}");
        let _ = u.write(off, 4, 0);
        assert_eq!(u.read(off, 4), 0, "{off:#x}");
    }
    // Read-only and write-only registers.
    for off in [FR, RIS, MIS] {
        let before = u.read(off, 4);
        let _ = u.write(off, 4, 0xFFFF_FFFF);
        assert_eq!(u.read(off, 4), before, "{off:#x}");
    }
    let _ = u.write(RSR, 4, 0xFF);
    assert_eq!(u.read(RSR, 4), 0, "no errors to clear");
    assert_eq!(u.read(ICR, 4), 0);
    assert_eq!(u.stats().unhandled_accesses, 0);
}

#[test]
fn byte_and_halfword_accesses_at_a_register_offset() {
    let mut u = Pl011::new();
    let _ = u.write(IBRD, 2, 0x1234);
    assert_eq!(u.read(IBRD, 2), 0x1234);
    assert_eq!(u.read(IBRD, 1), 0x34, "the low byte");
    let _ = u.write(IBRD, 1, 0xFFFF);
    assert_eq!(u.read(IBRD, 4), 0xFF, "a byte write zero-extends");
    assert_eq!(u.write(DR, 1, 0x1_41), Some(0x41));
    assert_eq!(u.stats().unhandled_accesses, 0);
    // Inside a register, 64-bit, odd sizes, past the frame: unhandled.
    for (off, size) in [(IBRD + 1, 1), (IBRD + 2, 2), (IBRD, 8), (IBRD, 3), (IBRD, 0), (0x1000, 4), (u64::MAX, 1)] {
        assert_eq!(u.read(off, size), 0, "{off:#x}/{size}");
        assert_eq!(u.write(off, size, u64::MAX), None, "{off:#x}/{size}");
    }
    assert_eq!(u.read(IBRD, 4), 0xFF);
    assert_eq!(u.stats().unhandled_accesses, 14);
    // Holes in the map.
    for off in [0x008, 0x014, 0x01C, 0x04C, 0x100, 0xFDC] {
        assert_eq!(u.read(off, 4), 0, "{off:#x}");
    }
    assert_eq!(u.stats().unhandled_accesses, 20);
}

#[test]
fn transmit_returns_the_byte_and_raises_txris_until_cleared() {
    let mut u = Pl011::new();
    assert_eq!(u.read(RIS, 4), 0, "TXRIS is clear out of reset");
    assert_eq!(u.write(DR, 4, 0xFFFF_FF0A), Some(0x0A), "the data byte only");
    assert_eq!(u.read(RIS, 4), 1 << 5);
    assert_eq!(u.read(MIS, 4), 0);
    assert!(!u.irq_level(), "masked");
    let _ = u.write(IMSC, 4, TXIM);
    assert!(u.irq_level());
    assert_eq!(u.read(MIS, 4), 1 << 5);
    let _ = u.write(ICR, 4, !TXIM);
    assert!(u.irq_level(), "other ICR bits do not clear TXRIS");
    let _ = u.write(ICR, 4, TXIM);
    assert!(!u.irq_level());
    assert_eq!(u.read(RIS, 4), 0);
    assert_eq!(u.read(FR, 4) & 0xE8, 0x80, "TXFE; never TXFF or BUSY");
    assert_eq!(u.stats().tx_bytes, 1);
}

#[test]
fn linux_transmits_without_the_tx_interrupt() {
    // Outside the handler the driver writes while FR.TXFF is clear: the whole buffer at once,
    // and TXIM stays masked.
    let mut u = running();
    let msg = b"login: ";
    let mut out = [0u8; 7];
    for (o, &b) in out.iter_mut().zip(msg) {
        assert_eq!(u.read(FR, 2) & 1 << 5, 0, "TXFF");
        *o = u.write(DR, 2, u64::from(b)).unwrap();
    }
    assert_eq!(&out, msg);
    // The console path then waits for BUSY to clear.
    assert_eq!(u.read(FR, 2) & 1 << 3, 0);
    assert!(!u.irq_level());
}

#[test]
fn linux_transmits_from_the_tx_interrupt_and_the_line_drops_when_it_masks_it() {
    // In the handler: half a FIFO per pass, re-reading RIS & IMSC, until the buffer is empty;
    // then the driver masks TXIM itself (it never clears TXIS through ICR).
    let mut u = running();
    let _ = u.write(IMSC, 2, RTIM | RXIM | TXIM);
    let _ = u.write(DR, 2, u64::from(b'x'));
    assert!(u.irq_level());
    let mut pending = 40;
    let mut passes = 0;
    while u.read(RIS, 2) & u.read(IMSC, 2) & TXIM != 0 {
        passes += 1;
        for _ in 0..RX_FIFO_DEPTH / 2 {
            if pending == 0 {
                break;
            }
            assert!(u.write(DR, 2, u64::from(b'y')).is_some());
            pending -= 1;
        }
        if pending == 0 {
            let im = u.read(IMSC, 2);
            let _ = u.write(IMSC, 2, im & !TXIM);
        }
        assert!(passes < 256, "the handler would spin");
    }
    assert_eq!(passes, 5);
    assert!(!u.irq_level());
    assert_eq!(u.stats().tx_bytes, 41);
}

#[test]
fn receive_fifo_order_flags_and_burst_larger_than_the_fifo() {
    let mut u = running();
    let mut refused = 0;
    for b in 0..40u8 {
        if !u.push_rx(b) {
            refused += 1;
        }
    }
    assert_eq!(refused, 40 - RX_FIFO_DEPTH, "the host keeps what does not fit");
    assert_eq!(u.rx_room(), 0);
    assert_eq!(u.read(FR, 4) & 0x50, 0x40, "RXFF, not RXFE");
    let mut got = [0u8; RX_FIFO_DEPTH];
    for g in &mut got {
        *g = u.read(DR, 4) as u8;
    }
    assert_eq!(got, core::array::from_fn(|i| i as u8), "in order");
    assert_eq!(u.read(FR, 4) & 0x50, 0x10, "RXFE");
    assert_eq!(u.read(DR, 4), 0, "an empty FIFO reads 0");
    // The host offers the rest; the ring wraps.
    for b in 16..40u8 {
        if !u.push_rx(b) {
            assert_eq!(b, 32);
            for want in 16..32 {
                assert_eq!(u.read(DR, 2), want);
            }
            assert!(u.push_rx(b));
        }
    }
    for want in 32..40 {
        assert_eq!(u.read(DR, 1), want);
    }
    assert_eq!(u.stats().rx_bytes, 40);
}

#[test]
fn receive_is_refused_while_the_receiver_is_off() {
    let mut u = Pl011::new();
    assert!(!u.push_rx(b'a'), "UARTEN clear out of reset");
    assert_eq!(u.rx_room(), 0);
    let _ = u.write(CR, 2, 0x101); // UARTEN | TXE, no RXE
    assert!(!u.push_rx(b'a'));
    let _ = u.write(CR, 2, 0x301);
    assert_eq!(u.rx_room(), 1, "FIFOs off: a one-byte holding register");
    assert!(u.push_rx(b'a'));
    assert!(!u.push_rx(b'b'));
    assert_eq!(u.read(FR, 2) & 0x40, 0x40, "RXFF");
    let _ = u.write(LCR_H, 2, FEN);
    assert_eq!(u.rx_room(), RX_FIFO_DEPTH - 1);
    assert!(u.push_rx(b'b'));
    assert_eq!((u.read(DR, 2), u.read(DR, 2)), (u64::from(b'a'), u64::from(b'b')));
}

#[test]
fn receive_interrupts_follow_the_fifo_level_and_trigger() {
    let mut u = running();
    let _ = u.write(IMSC, 2, RXIM | RTIM);
    assert!(!u.irq_level());
    assert!(u.push_rx(1));
    assert_eq!(u.read(RIS, 2), RTIM, "timeout: any data");
    assert!(u.irq_level());
    // Half full (the reset trigger, IFLS = 0x12): 8 bytes.
    for b in 2..=7 {
        assert!(u.push_rx(b));
    }
    assert_eq!(u.read(RIS, 2), RTIM);
    assert!(u.push_rx(8));
    assert_eq!(u.read(RIS, 2), RTIM | RXIM);
    // ICR cannot clear them while the data waits; masking can.
    let _ = u.write(ICR, 2, 0x7FF);
    assert_eq!(u.read(RIS, 2), RTIM | RXIM);
    let _ = u.write(IMSC, 2, 0);
    assert!(!u.irq_level());
    assert_eq!(u.read(MIS, 2), 0);
    let _ = u.write(IMSC, 2, RXIM);
    assert!(u.irq_level());
    // Reading below the trigger lowers RXRIS; emptying lowers RTRIS.
    assert_eq!(u.read(DR, 2), 1);
    assert_eq!(u.read(RIS, 2), RTIM);
    assert!(!u.irq_level(), "only RXIM unmasked");
    for _ in 0..7 {
        let _ = u.read(DR, 2);
    }
    assert_eq!(u.read(RIS, 2), 0);
    // Other trigger levels: 1/8 (2 bytes) and 7/8 (14 bytes).
    let _ = u.write(IFLS, 2, 0);
    assert!(u.push_rx(1));
    assert_eq!(u.read(RIS, 2) & RXIM, 0);
    assert!(u.push_rx(2));
    assert_eq!(u.read(RIS, 2) & RXIM, RXIM);
    let _ = u.write(IFLS, 2, 4 << 3);
    assert_eq!(u.read(RIS, 2) & RXIM, 0, "the trigger moves with IFLS");
    for b in 3..=14 {
        assert!(u.push_rx(b));
    }
    assert_eq!(u.read(RIS, 2) & RXIM, RXIM);
}

#[test]
fn the_line_through_mask_and_clear_sequences() {
    let mut u = running();
    // Linux's startup: clear RX/RT, drain, unmask RT and RX; TX stays masked.
    let _ = u.write(ICR, 2, 0x7F0);
    while u.read(FR, 2) & 0x10 == 0 {
        let _ = u.read(DR, 2);
    }
    let _ = u.write(IMSC, 2, RTIM | RXIM);
    let _ = u.write(DR, 2, u64::from(b'>'));
    assert!(!u.irq_level(), "TXRIS set but masked");
    assert!(u.push_rx(b'l'));
    assert!(u.irq_level());
    // The handler: reads RIS & IMSC, clears the non-RX/TX bits, drains the FIFO.
    let status = u.read(RIS, 2) & u.read(IMSC, 2);
    assert_eq!(status, RTIM);
    let _ = u.write(ICR, 2, status & !(TXIM | RTIM | RXIM));
    assert!(u.irq_level(), "RTRIS holds while the byte waits");
    assert_eq!(u.read(DR, 2), u64::from(b'l'));
    assert!(!u.irq_level());
    // Shutdown masks everything and clears all.
    assert!(u.push_rx(b'x'));
    let _ = u.write(IMSC, 2, 0);
    let _ = u.write(ICR, 2, 0xFFFF);
    assert!(!u.irq_level());
    assert_eq!(u.read(RIS, 2), RTIM, "the byte still waits; TXRIS is cleared");
}

/// Random accesses of any size at any offset, and random host input: nothing panics, reads fit
/// their size, only a `DR` read changes the model, the FIFO never holds more than its depth and
/// the line always equals MIS != 0.
#[test]
fn random_accesses_keep_the_model_sane() {
    let mut rng = XorShift::for_test("pl011 random_accesses_keep_the_model_sane");
    let sizes = [0u32, 1, 2, 2, 4, 4, 8, 3, u32::MAX];
    for _round in 0..20 {
        let mut u = Pl011::new();
        for _ in 0..5_000 {
            let size = rng.pick(&sizes);
            let off = match rng.below(4) {
                0 => rng.below(0x50) & !3,
                1 => 0xFE0 + (rng.below(0x20) & !3),
                2 => rng.below(0x1000),
                _ => rng.next(),
            };
            match rng.below(4) {
                0 => {
                    let before = u.clone();
                    let r = u.read(off, size);
                    assert_eq!(r & !width_mask(size), 0, "{off:#x}/{size}: {r:#x}");
                    if !Pl011::read_changes_state(off) {
                        // The VMM skips sampling the line after such a read.
                        let mut after = u.clone();
                        after.stats = before.stats;
                        assert_eq!(after, before, "a read at {off:#x}/{size} changed the model");
                    }
                }
                1 => {
                    let (line, may_change) = (u.irq_level(), u.write_may_change_line(off));
                    let tx = u.write(off, size, rng.next());
                    assert!(tx.is_none() || off == 0, "only DR transmits");
                    assert!(may_change || u.irq_level() == line, "a write at {off:#x} moved the line");
                }
                2 => {
                    let room = u.rx_room();
                    assert_eq!(u.push_rx(rng.next() as u8), room > 0);
                }
                _ => {
                    // Linux's usual configuration, so the FIFO gets used.
                    let _ = u.write(LCR_H, 4, 0x70);
                    let _ = u.write(CR, 4, 0x301);
                }
            }
            assert!(u.rx_len <= RX_FIFO_DEPTH);
            let mis = u.read(MIS, 4);
            assert_eq!(u.irq_level(), mis != 0);
        }
    }
}
