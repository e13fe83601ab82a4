//! virtio-blk (§5.2, device ID 2): one request queue over a [`Disk`] the VMM provides, and
//! [`RamDisk`], a disk in memory whose writes stay there.
//!
//! Place in the flow: the driver notifies the request queue
//! ([`super::mmio::VirtioMmio::write`]) → [`Blk`] takes each request chain, moves its data
//! between the guest's buffers and the disk, and writes its status byte.
//!
//! # Requests (§5.2.6)
//!
//! A request is a 16-byte header (`type`, reserved, `sector`) in the device-readable bytes,
//! the data (device-readable for `VIRTIO_BLK_T_OUT`, device-writable for `VIRTIO_BLK_T_IN`
//! and `VIRTIO_BLK_T_GET_ID`), and a status byte: the last device-writable byte. The device
//! reads the bytes as one stream whatever their split into descriptors (§2.7.4.1). Handled:
//! `IN`, `OUT`, `FLUSH` (offered as `VIRTIO_BLK_F_FLUSH`) and `GET_ID`; any other type is
//! answered `VIRTIO_BLK_S_UNSUPP`. Answered `VIRTIO_BLK_S_IOERR`, with nothing moved: a header
//! shorter than 16 bytes, `IN`/`OUT` data that is not a whole number of 512-byte sectors or
//! that reaches past the capacity, and a disk that fails (data moved before the failure stays
//! moved, as §5.2.6 allows). A chain with no device-writable byte has no place for a status:
//! it is given back with nothing written and counted in [`Stats::no_status`].
//!
//! The data of each request is bounded by the disk (its sectors are checked before anything
//! moves); it goes through a 4 KiB buffer on the stack. The status byte is written after the
//! data, and the used ring after the status. The used length counts the bytes written from
//! the first device-writable byte on, as §2.7.8.1 requires: the data, and the status byte
//! when it follows the data directly (a request whose data is not written, or is shorter than
//! its room, reports only what precedes the gap; the driver reads the status byte anyway).
//!
//! Offered: `VIRTIO_BLK_F_FLUSH` and `VIRTIO_BLK_F_SEG_MAX` (`seg_max` = the queue size less
//! the header's and status's descriptors, so that Linux, which otherwise sends one data
//! segment per request, fills a chain). Configuration space: `capacity` (in 512-byte sectors)
//! and `seg_max`; the rest reads as zero.

use super::mmio::Device;
use super::queue::{Chain, Cursor, QueueError, Virtqueue, QUEUE_SIZE_MAX};
use super::{Gpa, GuestMemory};

/// `DeviceID` (§5.2.1).
pub const DEVICE_ID: u32 = 2;
/// The unit of `sector` and `capacity`.
pub const SECTOR_SIZE: u64 = 512;
/// The length of the device ID string `GET_ID` returns (§5.2.6).
pub const ID_LEN: usize = 20;

/// Feature bits (§5.2.3).
pub mod features {
    /// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` holds the most data segments in a request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// `VIRTIO_BLK_F_FLUSH`: the device takes `VIRTIO_BLK_T_FLUSH`.
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (§5.2.6).
mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status bytes (§5.2.6).
pub mod status {
    /// `VIRTIO_BLK_S_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_BLK_S_IOERR`: a device or driver error.
    pub const IOERR: u8 = 1;
    /// `VIRTIO_BLK_S_UNSUPP`: a request type the device does not take.
    pub const UNSUPP: u8 = 2;
}

/// The header's size: `type` (le32), reserved (le32), `sector` (le64).
const HEADER_LEN: usize = 16;
/// `seg_max`: a chain holds the header and the status besides the data.
const SEG_MAX: u32 = QUEUE_SIZE_MAX as u32 - 2;
/// The bounce buffer between guest memory and the disk.
const CHUNK: usize = 4096;

/// The disk failed an access; the request is answered `VIRTIO_BLK_S_IOERR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError;

/// The disk behind the device; the VMM implements it (or uses [`RamDisk`]).
pub trait Disk {
    /// The disk's size in bytes; the guest sees `size / 512` sectors (a partial last sector
    /// is not offered).
    fn size(&self) -> u64;

    /// Fills `buf` from the disk at byte `offset`. The device asks only for whole sectors
    /// below the capacity.
    ///
    /// # Errors
    ///
    /// [`DiskError`] if the disk could not be read.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;

    /// Writes `data` to the disk at byte `offset`, under the same terms.
    ///
    /// # Errors
    ///
    /// [`DiskError`] if the disk could not be written.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError>;

    /// Makes completed writes stable (`VIRTIO_BLK_T_FLUSH`).
    ///
    /// # Errors
    ///
    /// [`DiskError`] if they could not be.
    fn flush(&mut self) -> Result<(), DiskError>;
}

/// A disk in memory: reads and writes go to the slice, a flush does nothing.
#[derive(Debug)]
pub struct RamDisk<'a> {
    bytes: &'a mut [u8],
}

impl<'a> RamDisk<'a> {
    /// A disk whose content is `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    /// The content.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
        let start = usize::try_from(offset).map_err(|_| DiskError)?;
        let end = start.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or(DiskError)?;
        Ok(start..end)
    }
}

impl Disk for RamDisk<'_> {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let r = self.range(offset, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
}

/// Counters for the VMM's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered `VIRTIO_BLK_S_OK`.
    pub ok: u64,
    /// Requests answered `VIRTIO_BLK_S_IOERR`.
    pub ioerr: u64,
    /// Requests answered `VIRTIO_BLK_S_UNSUPP`.
    pub unsupp: u64,
    /// Chains with no device-writable byte for a status, given back unanswered.
    pub no_status: u64,
    /// Sectors read for the guest.
    pub sectors_read: u64,
    /// Sectors written for the guest.
    pub sectors_written: u64,
}

/// The block device.
#[derive(Clone, Debug)]
pub struct Blk<D> {
    disk: D,
    id: [u8; ID_LEN],
    stats: Stats,
}

impl<D: Disk> Blk<D> {
    /// A device over `disk` whose `GET_ID` string is `id` (cut to 20 bytes, NUL-padded).
    pub fn new(disk: D, id: &[u8]) -> Self {
        let mut padded = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        padded[..n].copy_from_slice(&id[..n]);
        Self { disk, id: padded, stats: Stats::default() }
    }

    /// The disk.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The disk, to reach its content.
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `capacity`: whole 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    /// Serves one request; returns the used length (see the module documentation).
    fn request<M: GuestMemory>(&mut self, mem: &M, chain: &Chain) -> Result<u32, QueueError> {
        let Some(last) = chain.writable().last() else {
            self.stats.no_status += 1;
            return Ok(0);
        };
        // The walker checked that the segment does not wrap and is not empty.
        let status_at = Gpa(last.addr.0 + u64::from(last.len) - 1);
        // Bytes before the status byte: IN and GET_ID data go there.
        let room = chain.writable_len() - 1;
        let mut reader = chain.reader();
        let mut header = [0u8; HEADER_LEN];
        let (status, written) = if reader.read(mem, &mut header)? < HEADER_LEN {
            (status::IOERR, 0)
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes([header[8], header[9], header[10], header[11], header[12], header[13], header[14], header[15]]);
            match kind {
                request::IN => self.read_sectors(mem, chain, sector, room)?,
                request::OUT => {
                    let len = reader.remaining();
                    (self.write_sectors(mem, &mut reader, sector, len)?, 0)
                }
                request::FLUSH => (if self.disk.flush().is_ok() { status::OK } else { status::IOERR }, 0),
                request::GET_ID => {
                    let n = room.min(ID_LEN as u64) as usize;
                    (status::OK, chain.writer().write(mem, &self.id[..n])?)
                }
                _ => (status::UNSUPP, 0),
            }
        };
        match status {
            status::OK => self.stats.ok += 1,
            status::IOERR => self.stats.ioerr += 1,
            _ => self.stats.unsupp += 1,
        }
        mem.write(status_at, &[status]).map_err(|cause| QueueError::Memory { gpa: status_at, cause })?;
        // Within the chain's u32::MAX bytes.
        let written = written as u64;
        Ok(if written == room { room + 1 } else { written } as u32)
    }

    /// The first sector of `len` bytes at `sector`, as a byte offset, if the range is whole
    /// sectors within the capacity.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        // Lazily: only once sector <= end <= capacity = size / 512 does the product not
        // overflow.
        (end <= self.capacity()).then(|| sector * SECTOR_SIZE)
    }

    /// `VIRTIO_BLK_T_IN` into the `len` data bytes of `chain`: the status and the bytes
    /// written.
    fn read_sectors<M: GuestMemory>(&mut self, mem: &M, chain: &Chain, sector: u64, len: u64) -> Result<(u8, usize), QueueError> {
        let Some(mut offset) = self.disk_range(sector, len) else { return Ok((status::IOERR, 0)) };
        let mut writer = chain.writer();
        let mut buf = [0u8; CHUNK];
        let mut done = 0usize;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if self.disk.read(offset, &mut buf[..n]).is_err() {
                return Ok((status::IOERR, done));
            }
            writer.write(mem, &buf[..n])?;
            done += n;
            offset += n as u64;
            left -= n as u64;
        }
        self.stats.sectors_read += len / SECTOR_SIZE;
        Ok((status::OK, done))
    }

    /// `VIRTIO_BLK_T_OUT` of the `len` bytes after the header: the status.
    fn write_sectors<M: GuestMemory>(&mut self, mem: &M, reader: &mut Cursor<'_>, sector: u64, len: u64) -> Result<u8, QueueError> {
        let Some(mut offset) = self.disk_range(sector, len) else { return Ok(status::IOERR) };
        let mut buf = [0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = reader.read(mem, &mut buf[..left.min(CHUNK as u64) as usize])?;
            // Never 0 (`len` is what remained in the chain's copy); the check keeps the loop
            // finite all the same.
            if n == 0 || self.disk.write(offset, &buf[..n]).is_err() {
                return Ok(status::IOERR);
            }
            offset += n as u64;
            left -= n as u64;
        }
        self.stats.sectors_written += len / SECTOR_SIZE;
        Ok(status::OK)
    }
}

impl<D: Disk> Device for Blk<D> {
    const DEVICE_ID: u32 = DEVICE_ID;
    const QUEUES: u16 = 1;

    fn features(&self) -> u64 {
        features::SEG_MAX | features::FLUSH
    }

    /// `struct virtio_blk_config` (§5.2.4) up to `seg_max`: `capacity` (le64 at 0),
    /// `size_max` (le32 at 8, not offered: 0), `seg_max` (le32 at 12).
    fn read_config(&self, offset: u64, buf: &mut [u8]) {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity().to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset.checked_add(i as u64).and_then(|o| config.get(usize::try_from(o).ok()?)).copied().unwrap_or(0);
        }
    }

    fn reset(&mut self) {}

    fn notified<M: GuestMemory>(&mut self, _queue: u16, vq: &mut Virtqueue<'_, M>) -> Result<(), QueueError> {
        let mem = vq.memory();
        while let Some(chain) = vq.pop()? {
            let written = self.request(mem, &chain)?;
            vq.push_used(&chain, written)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
