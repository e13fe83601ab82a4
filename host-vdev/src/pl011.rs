//! The guest's UART: an ARM PrimeCell UART (PL011) register model with a receive FIFO and an
//! interrupt line.
//!
//! Place in the flow: guest MMIO exit in the UART's 4 KiB frame → [`Pl011::read`] /
//! [`Pl011::write`] (a transmitted byte comes back to the host for its console); console input
//! → [`Pl011::push_rx`]. After any of these the host samples [`Pl011::irq_level`] and drives
//! the UART's SPI with [`crate::vgic::Vgic::set_level`]. A DR read changes the level too, so
//! the host re-samples after every access rather than trusting a "changed" flag.
//!
//! Registers: PrimeCell UART (PL011) Technical Reference Manual (ARM DDI 0183). The model
//! claims revision 1 (`UARTPeriphID2` = 0x14), a part with 16-entry FIFOs; Linux's driver sizes
//! its FIFO from that revision (16 below revision 3, 32 from it), so the claim and the model
//! agree. Linux's AMBA bus matches the driver by the peripheral ID (part 0x011, designer 0x41)
//! and the PrimeCell ID.
//!
//! # Choices (the host transmits at once and has no baud clock)
//!
//! - **Transmit**: a write to `DR` hands the byte to the host at once, whatever `UARTEN`/`TXE`
//!   say (guest output is never dropped); the transmit FIFO is therefore always empty:
//!   `FR.TXFE` = 1, `FR.TXFF` = 0, `FR.BUSY` = 0.
//! - **Transmit interrupt**: `TXRIS` is raised by each `DR` write (the FIFO has just drained
//!   below any trigger level) and cleared by `ICR.TXIC`; it is 0 out of reset, as on the
//!   hardware, where it fires on the FIFO level passing the trigger, not on the level itself.
//!   Linux transmits with and without it: outside the interrupt handler it writes until
//!   `FR.TXFF`, which never comes, so the whole buffer goes at once and `TXIM` stays clear; in
//!   the handler it writes half a FIFO per pass and re-reads `RIS`, which still shows `TXRIS`,
//!   until its buffer is empty and it clears `TXIM` itself.
//! - **Receive**: a FIFO of [`RX_FIFO_DEPTH`] bytes, 1 while `LCR_H.FEN` is clear. The host's
//!   [`Pl011::push_rx`] is refused (the host keeps the byte and retries after the guest has
//!   read) when the FIFO is full or the receiver is off (`CR.UARTEN` or `CR.RXE` clear), so no
//!   byte is lost and `OERIS` never rises. Received bytes carry no framing, parity or break
//!   errors.
//! - **Receive interrupts** follow the FIFO rather than being latched: `RXRIS` while the FIFO
//!   holds at least the `IFLS.RXIFLSEL` trigger level, `RTRIS` (receive timeout) while it holds
//!   anything, as if the timeout expired at once. Reading `DR` lowers them as the FIFO empties;
//!   `ICR` cannot clear them while data waits (a driver that wants quiet masks them in
//!   `IMSC`, as Linux's throttling does).
//! - **Modem lines**: `FR.CTS`, `FR.DSR` and `FR.DCD` read as asserted (a terminal that is
//!   always there and ready), `FR.RI` as not; they never change, so the modem status
//!   interrupts never rise. `CR.LBE` (loopback) is kept but does not loop data back.
//! - Baud rate, line control and DMA control registers are stored and read back; they change
//!   nothing.
//!
//! # Access sizes
//!
//! 8-, 16- and 32-bit accesses at a register's offset (Linux uses 16-bit accesses on this
//! part): a read returns the register's low bytes, a write zero-extends. Unaligned or 64-bit
//! accesses and unknown offsets read as zero, ignore the write and count in
//! [`Stats::unhandled_accesses`].

use crate::width_mask;

/// Entries of the receive FIFO (with `LCR_H.FEN` set).
pub const RX_FIFO_DEPTH: usize = 16;
/// The size of the register frame.
pub const FRAME_SIZE: u64 = 0x1000;

/// Register offsets.
pub mod reg {
    pub const DR: u64 = 0x000;
    pub const RSR_ECR: u64 = 0x004;
    pub const FR: u64 = 0x018;
    pub const ILPR: u64 = 0x020;
    pub const IBRD: u64 = 0x024;
    pub const FBRD: u64 = 0x028;
    pub const LCR_H: u64 = 0x02C;
    pub const CR: u64 = 0x030;
    pub const IFLS: u64 = 0x034;
    pub const IMSC: u64 = 0x038;
    pub const RIS: u64 = 0x03C;
    pub const MIS: u64 = 0x040;
    pub const ICR: u64 = 0x044;
    pub const DMACR: u64 = 0x048;
    /// `UARTPeriphID0..3` at 0xFE0..=0xFEC, then `UARTPCellID0..3` at 0xFF0..=0xFFC.
    pub const PERIPH_ID0: u64 = 0xFE0;
}

/// `UARTFR` bits.
mod fr {
    pub const CTS: u32 = 1 << 0;
    pub const DSR: u32 = 1 << 1;
    pub const DCD: u32 = 1 << 2;
    pub const RXFE: u32 = 1 << 4;
    pub const RXFF: u32 = 1 << 6;
    pub const TXFE: u32 = 1 << 7;
}

/// `UARTCR` bits.
mod cr {
    pub const UARTEN: u16 = 1 << 0;
    pub const RXE: u16 = 1 << 9;
    pub const TXE: u16 = 1 << 8;
    /// Bits 15:7 and 2:0; 6:3 are reserved.
    pub const IMPLEMENTED: u16 = 0xFF87;
}

/// `UARTLCR_H.FEN`: FIFOs enabled.
const LCR_H_FEN: u8 = 1 << 4;

/// Interrupt bits, alike in `UARTIMSC`, `UARTRIS`, `UARTMIS` and `UARTICR`.
pub mod int {
    /// Receive (`RXRIS`/`RXIM`).
    pub const RX: u32 = 1 << 4;
    /// Transmit (`TXRIS`/`TXIM`).
    pub const TX: u32 = 1 << 5;
    /// Receive timeout (`RTRIS`/`RTIM`).
    pub const RT: u32 = 1 << 6;
    /// Every interrupt bit (modem, RX, TX, RT, errors): bits 10:0.
    pub const ALL: u32 = 0x7FF;
}

/// `UARTPeriphID0..3` then `UARTPCellID0..3`.
const ID_BYTES: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// Counters for the host's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes the guest transmitted.
    pub tx_bytes: u64,
    /// Bytes the guest read from the receive FIFO.
    pub rx_bytes: u64,
    /// Guest accesses that named no register or used a bad size or alignment.
    pub unhandled_accesses: u64,
}

/// One PL011.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pl011 {
    rx: [u8; RX_FIFO_DEPTH],
    /// Index of the oldest byte.
    rx_head: usize,
    /// Bytes held, `0..=RX_FIFO_DEPTH`.
    rx_len: usize,
    ilpr: u8,
    ibrd: u16,
    /// 6 bits.
    fbrd: u8,
    lcr_h: u8,
    cr: u16,
    /// 6 bits.
    ifls: u8,
    /// [`int::ALL`] bits.
    imsc: u32,
    tx_ris: bool,
    /// 3 bits.
    dmacr: u8,
    stats: Stats,
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl011 {
    /// A UART out of reset: `CR` = 0x300 (`TXE`, `RXE`, but `UARTEN` clear), `IFLS` = 0x12
    /// (both triggers at half full), FIFOs disabled, every interrupt masked and clear, nothing
    /// received.
    pub const fn new() -> Self {
        Self {
            rx: [0; RX_FIFO_DEPTH],
            rx_head: 0,
            rx_len: 0,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: cr::TXE | cr::RXE,
            ifls: 0x12,
            imsc: 0,
            tx_ris: false,
            dmacr: 0,
            stats: Stats { tx_bytes: 0, rx_bytes: 0, unhandled_accesses: 0 },
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The UART's interrupt line (`UARTINTR`): any unmasked raw interrupt.
    pub fn irq_level(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    /// Offers a received byte to the guest. `false` (nothing changes) if the FIFO is full or
    /// the receiver is disabled: the host keeps the byte and offers it again after the guest
    /// has read `DR` (or enabled the receiver).
    pub fn push_rx(&mut self, byte: u8) -> bool {
        if self.cr & (cr::UARTEN | cr::RXE) != cr::UARTEN | cr::RXE || self.rx_len >= self.depth() {
            return false;
        }
        self.rx[(self.rx_head + self.rx_len) % RX_FIFO_DEPTH] = byte;
        self.rx_len += 1;
        true
    }

    /// How many more bytes [`Pl011::push_rx`] would take now.
    pub fn rx_room(&self) -> usize {
        if self.cr & (cr::UARTEN | cr::RXE) != cr::UARTEN | cr::RXE {
            return 0;
        }
        self.depth().saturating_sub(self.rx_len)
    }

    /// Whether a read at `offset` may change the model (and so its interrupt line): only a
    /// `DR` read does, which takes a byte from the receive FIFO. Every other read leaves the
    /// line where it was, so a caller need not sample it again.
    pub const fn read_changes_state(offset: u64) -> bool {
        offset == reg::DR
    }

    /// Whether a write at `offset` may change the model's interrupt line: any but a `DR` write
    /// while `TXRIS` is already raised (which only raises it again). The console's character
    /// writes are those.
    pub fn write_may_change_line(&self, offset: u64) -> bool {
        offset != reg::DR || !self.tx_ris
    }

    /// A guest read of `size` bytes at `offset` in the frame.
    pub fn read(&mut self, offset: u64, size: u32) -> u64 {
        let Some(value) = self.access(offset, size, None) else {
            self.stats.unhandled_accesses += 1;
            return 0;
        };
        u64::from(value) & width_mask(size)
    }

    /// A guest write of `value` (`size` bytes) at `offset` in the frame. Returns the byte to
    /// transmit for a write to `DR`.
    pub fn write(&mut self, offset: u64, size: u32, value: u64) -> Option<u8> {
        let value = (value & width_mask(size)) as u32;
        let mut tx = None;
        if self.access(offset, size, Some((value, &mut tx))).is_none() {
            self.stats.unhandled_accesses += 1;
        }
        tx
    }

    /// The receive FIFO's depth: 1 (a holding register) while `LCR_H.FEN` is clear.
    fn depth(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// The receive trigger level from `IFLS.RXIFLSEL` (bits 5:3): 1/8, 1/4, 1/2, 3/4 or 7/8 of
    /// the FIFO (the reserved encodings act as 1/2); 1 without FIFOs.
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        let eighths = match (self.ifls >> 3) & 7 {
            0 => 1,
            1 => 2,
            3 => 6,
            4 => 7,
            _ => 4,
        };
        RX_FIFO_DEPTH * eighths / 8
    }

    /// `UARTRIS`.
    fn ris(&self) -> u32 {
        let mut ris = 0;
        if self.rx_len >= self.rx_trigger() {
            ris |= int::RX;
        }
        if self.rx_len > 0 {
            ris |= int::RT;
        }
        if self.tx_ris {
            ris |= int::TX;
        }
        ris
    }

    /// `UARTFR`.
    fn fr(&self) -> u32 {
        let mut fr = fr::TXFE | fr::CTS | fr::DSR | fr::DCD;
        if self.rx_len == 0 {
            fr |= fr::RXFE;
        }
        if self.rx_len >= self.depth() {
            fr |= fr::RXFF;
        }
        fr
    }

    /// Decodes and performs an access: a read if `write` is `None`, else a write of the value
    /// (with the place for a transmitted byte). `None` if unhandled; a write returns
    /// `Some(_)` of no meaning.
    fn access(&mut self, off: u64, size: u32, write: Option<(u32, &mut Option<u8>)>) -> Option<u32> {
        if !matches!(size, 1 | 2 | 4) || !off.is_multiple_of(4) || off >= FRAME_SIZE {
            return None;
        }
        let value = match off {
            reg::DR => match write {
                Some((v, tx)) => {
                    *tx = Some(v as u8);
                    self.tx_ris = true;
                    self.stats.tx_bytes += 1;
                    0
                }
                None => self.pop_rx().map_or(0, u32::from),
            },
            // No receive errors to report or clear.
            reg::RSR_ECR => 0,
            reg::FR => self.fr(),
            reg::ILPR => u32::from(store(&mut self.ilpr, write, 0xFF)),
            reg::IBRD => u32::from(store(&mut self.ibrd, write, 0xFFFF)),
            reg::FBRD => u32::from(store(&mut self.fbrd, write, 0x3F)),
            reg::LCR_H => u32::from(store(&mut self.lcr_h, write, 0xFF)),
            reg::CR => u32::from(store(&mut self.cr, write, cr::IMPLEMENTED)),
            reg::IFLS => u32::from(store(&mut self.ifls, write, 0x3F)),
            reg::IMSC => store(&mut self.imsc, write, int::ALL),
            reg::RIS => self.ris(),
            reg::MIS => self.ris() & self.imsc,
            reg::ICR => {
                if let Some((v, _)) = write {
                    if v & int::TX != 0 {
                        self.tx_ris = false;
                    }
                }
                0
            }
            reg::DMACR => u32::from(store(&mut self.dmacr, write, 0x7)),
            reg::PERIPH_ID0..FRAME_SIZE => {
                let i = ((off - reg::PERIPH_ID0) / 4) as usize;
                u32::from(*ID_BYTES.get(i)?)
            }
            _ => return None,
        };
        Some(value)
    }

    fn pop_rx(&mut self) -> Option<u8> {
        if self.rx_len == 0 {
            return None;
        }
        let byte = self.rx[self.rx_head];
        self.rx_head = (self.rx_head + 1) % RX_FIFO_DEPTH;
        self.rx_len -= 1;
        self.stats.rx_bytes += 1;
        Some(byte)
    }
}

/// A read-write register of implemented bits `mask`: stores a write, returns the value.
fn store<T>(reg: &mut T, write: Option<(u32, &mut Option<u8>)>, mask: T) -> T
where
    T: Copy + TryFrom<u32> + core::ops::BitAnd<Output = T> + Into<u32>,
{
    if let Some((v, _)) = write {
        // `v & mask` fits in T because mask does.
        if let Ok(v) = T::try_from(v & mask.into()) {
            *reg = v & mask;
        }
    }
    *reg
}

#[cfg(test)]
mod tests;
