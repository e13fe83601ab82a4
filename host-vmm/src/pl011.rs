//! A guest's PL011: the register model ([`host_vdev::pl011`], host-tested) behind the guest's
//! MMIO exits, its interrupt line, its output on the host's console and the host's console
//! input.
//!
//! Output is gathered into lines and printed whole under the console lock, so a guest's text
//! never breaks into the middle of a line the host or EL2 prints; with several VMs each line
//! carries its VM's number. A partial line (a shell prompt) is printed when the vCPU waits,
//! if the console is the VM's alone.

use crate::console;
use core::sync::atomic::{AtomicBool, Ordering};
use host_vdev::pl011::Pl011;

/// The PL011's frame (IPA), as in QEMU's `virt`.
pub const UART: u64 = host_vdev::vm_platform::UART;
/// Its size.
pub const UART_SIZE: u64 = 0x1000;
/// Its SPI (INTID 32 + 1 = 33), as in QEMU's `virt`.
pub const UART_SPI: u32 = host_vdev::vm_platform::UART_SPI;
/// Its INTID.
pub const UART_INTID: u32 = 32 + UART_SPI;
/// The bytes from `UARTDR` up to and including `UARTCR` whose guest writes the Linux VMM has
/// EL2 coalesce (`VM_MMIO_COALESCE`).
pub const COALESCED_LEN: u64 = host_vdev::pl011::reg::CR + 4;

const LINE: usize = 256;

/// One VM's UART and its console line.
pub struct GuestUart {
    model: host_kernel::sync::Mutex<Pl011>,
    /// The interrupt line as last driven (changed only under `model`'s lock).
    level: AtomicBool,
    line: host_kernel::sync::Mutex<([u8; LINE], usize)>,
    /// `Some(n)`: prefix each line with `[vmN] `.
    prefix: Option<usize>,
}

impl GuestUart {
    /// A UART at reset; `prefix` as in [`GuestUart::prefix`].
    pub fn new(prefix: Option<usize>) -> Self {
        Self { model: host_kernel::sync::Mutex::new(Pl011::new()), level: AtomicBool::new(false), line: host_kernel::sync::Mutex::new(([0; LINE], 0)), prefix }
    }

    /// Performs a guest access at `ipa` if it is the UART's: `Some(value read)`. When the
    /// access changed the interrupt line, `line` drives it (called under the UART's lock, so
    /// two CPUs cannot drive the line out of order).
    pub fn mmio(&self, ipa: u64, size: u32, write: Option<u64>, line: impl FnOnce(bool)) -> Option<u64> {
        if !(UART..UART + UART_SIZE).contains(&ipa) {
            return None;
        }
        let off = ipa - UART;
        let mut m = self.model.lock();
        let value = match write {
            Some(v) => {
                let may_change = m.write_may_change_line(off);
                if let Some(byte) = m.write(off, size, v) {
                    self.output(byte);
                }
                if !may_change {
                    return Some(0);
                }
                0
            }
            None => {
                let value = m.read(off, size);
                if !Pl011::read_changes_state(off) {
                    // The line is where the last access left it (the console's `UARTFR`
                    // polls, one per character, come here).
                    return Some(value);
                }
                value
            }
        };
        self.drive(&m, line);
        Some(value)
    }

    /// Calls `line` with the interrupt line's level if it differs from the last one driven.
    fn drive(&self, m: &Pl011, line: impl FnOnce(bool)) {
        let level = m.irq_level();
        if self.level.swap(level, Ordering::Relaxed) != level {
            line(level);
        }
    }

    /// Moves console input from `next` into the receive FIFO while it has room (the rest
    /// stays in the host UART's own FIFO), and drives the interrupt line through `line` if it
    /// changed. One lock for the room check and the pushes: two host CPUs polling at once must
    /// not both fill the last free entry.
    pub fn take_input(&self, mut next: impl FnMut() -> Option<u8>, line: impl FnOnce(bool)) {
        let mut m = self.model.lock();
        while m.rx_room() > 0 {
            let Some(b) = next() else { break };
            m.push_rx(b);
        }
        self.drive(&m, line);
    }

    fn output(&self, byte: u8) {
        let mut l = self.line.lock();
        if byte != b'\n' && byte != b'\r' {
            let n = l.1;
            l.0[n] = byte;
            l.1 += 1;
        }
        if byte == b'\n' || l.1 == LINE {
            self.print(&l.0[..l.1], true);
            l.1 = 0;
        }
    }

    /// Prints what the guest wrote since its last full line (a prompt, when the vCPU waits)
    /// if the console is this VM's alone; with several VMs a line is only printed whole (their
    /// lines would otherwise break into pieces), until [`Self::flush_final`].
    pub fn flush(&self) {
        if self.prefix.is_none() {
            self.flush_final();
        }
    }

    /// Prints what the guest wrote since its last full line, if anything (the VM ended).
    pub fn flush_final(&self) {
        let mut l = self.line.lock();
        if l.1 > 0 {
            self.print(&l.0[..l.1], false);
            l.1 = 0;
        }
    }

    fn print(&self, text: &[u8], newline: bool) {
        match self.prefix {
            Some(n) => {
                let s = core::str::from_utf8(text).unwrap_or("<bad utf-8>");
                crate::println!("[vm{n}] {s}");
            }
            None => {
                let mut buf = [0u8; LINE + 1];
                buf[..text.len()].copy_from_slice(text);
                let mut len = text.len();
                if newline {
                    buf[len] = b'\n';
                    len += 1;
                }
                console::write_bytes(&buf[..len]);
            }
        }
    }
}
