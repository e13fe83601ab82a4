//! virtio-console (§5.3, device ID 3): one port, the guest's `hvc0` under Linux.
//!
//! Place in the flow: the guest's transmit buffers reach the VMM's [`ConsoleOutput`] when the
//! driver notifies `transmitq` ([`super::mmio::VirtioMmio::write`]); the VMM's console input
//! goes into the guest's receive buffers with [`VirtioMmio::receive`], which takes what the
//! buffers have room for (the VMM keeps the rest and offers it again later, as with the
//! PL011's [`crate::pl011::Pl011::push_rx`]).
//!
//! No features: no `VIRTIO_CONSOLE_F_SIZE` (the configuration space reads as zeros),
//! `VIRTIO_CONSOLE_F_MULTIPORT` (so no control queues: queue 0 is port 0's `receiveq`, queue 1
//! its `transmitq`), or `VIRTIO_CONSOLE_F_EMERG_WRITE`.
//!
//! Each transmit chain gives at most [`TX_CHAIN_MAX`] bytes to the output (Linux's buffers are
//! at most 32 KiB); what a chain holds beyond is not read, and is counted. Device-writable
//! buffers in a transmit chain, and device-readable ones in a receive chain, are left alone.

use super::mmio::{Device, Outcome, VirtioMmio};
use super::queue::{QueueError, Virtqueue};
use super::GuestMemory;

/// `DeviceID` (§5.3.1).
pub const DEVICE_ID: u32 = 3;
/// Port 0's receive queue: input to the guest.
pub const RECEIVEQ: u16 = 0;
/// Port 0's transmit queue: output from the guest.
pub const TRANSMITQ: u16 = 1;
/// The most bytes of one transmit chain the device reads.
pub const TX_CHAIN_MAX: u64 = 64 * 1024;

/// Where the guest's output goes; the VMM implements it.
pub trait ConsoleOutput {
    /// The guest wrote `bytes`.
    fn write(&mut self, bytes: &[u8]);
}

/// Counters for the VMM's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes the guest transmitted.
    pub tx_bytes: u64,
    /// Bytes given to the guest.
    pub rx_bytes: u64,
    /// Transmit chains longer than [`TX_CHAIN_MAX`], cut there.
    pub tx_truncated: u64,
}

/// The console device.
#[derive(Clone, Debug)]
pub struct Console<O> {
    output: O,
    stats: Stats,
}

impl<O: ConsoleOutput> Console<O> {
    /// A console whose output goes to `output`.
    pub fn new(output: O) -> Self {
        Self { output, stats: Stats::default() }
    }

    /// The output.
    pub fn output(&self) -> &O {
        &self.output
    }

    /// The output, to drain it.
    pub fn output_mut(&mut self) -> &mut O {
        &mut self.output
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn transmit<M: GuestMemory>(&mut self, vq: &mut Virtqueue<'_, M>) -> Result<(), QueueError> {
        let mem = vq.memory();
        while let Some(chain) = vq.pop()? {
            let mut reader = chain.reader();
            if reader.remaining() > TX_CHAIN_MAX {
                self.stats.tx_truncated += 1;
            }
            let mut left = reader.remaining().min(TX_CHAIN_MAX) as usize;
            let mut buf = [0u8; 256];
            while left > 0 {
                let n = reader.read(mem, &mut buf[..left.min(256)])?;
                // Never 0 (`left` is at most what remains); the check keeps the loop finite.
                if n == 0 {
                    break;
                }
                self.output.write(&buf[..n]);
                self.stats.tx_bytes += n as u64;
                left -= n;
            }
            vq.push_used(&chain, 0)?;
        }
        Ok(())
    }
}

impl<O: ConsoleOutput> Device for Console<O> {
    const DEVICE_ID: u32 = DEVICE_ID;
    const QUEUES: u16 = 2;

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, buf: &mut [u8]) {
        buf.fill(0);
    }

    fn reset(&mut self) {}

    fn notified<M: GuestMemory>(&mut self, queue: u16, vq: &mut Virtqueue<'_, M>) -> Result<(), QueueError> {
        match queue {
            TRANSMITQ => self.transmit(vq),
            // New receive buffers: the VMM's next `receive` fills them.
            _ => Ok(()),
        }
    }
}

impl<O: ConsoleOutput> VirtioMmio<Console<O>> {
    /// Gives console input to the guest: fills its receive buffers from `bytes`, in order;
    /// returns how many bytes they took (the VMM keeps the rest for later), and the outcome.
    /// Takes nothing unless the device is live and `receiveq` ready.
    pub fn receive<M: GuestMemory>(&mut self, mem: &M, bytes: &[u8]) -> (usize, Outcome) {
        // Counted outside the work: bytes already in the used ring stay taken if a later
        // chain breaks the device.
        let mut taken = 0;
        let (_, outcome) = self.run_for_host(mem, RECEIVEQ, |console, vq| {
            while taken < bytes.len() {
                let Some(chain) = vq.pop()? else { break };
                let n = chain.writer().write(mem, &bytes[taken..])?;
                vq.push_used(&chain, n as u32)?;
                taken += n;
                console.stats.rx_bytes += n as u64;
            }
            Ok(())
        });
        (taken, outcome)
    }
}

#[cfg(test)]
mod tests;
