//! Which device pages the host may reach: an allow-list read from the device tree, and nothing
//! else (default deny).
//!
//! Place in the flow: built at boot by [`crate::platform::parse`]; consulted by the host
//! stage-2 fault path ([`crate::mem::protect::host_fault_mapping`] maps only allowed device
//! pages) and the host data-abort handler in [`crate::host::trap`] (a guarded page is emulated).
//!
//! **Why.** A device that masters DMA writes memory with no stage 2 in the way. A host that
//! could program one would reach EL2's memory and every protected guest's, whatever the
//! stage 2 says. On hardware an SMMU confines such devices; QEMU `virt` has none, and it does
//! have DMA masters: `fw_cfg` (its DMA interface copies firmware data to any physical address),
//! the virtio-mmio transports, the GIC ITS (command queue and tables in memory), and PCI
//! functions with bus mastering. So EL2 gives the host only what it can show cannot master
//! memory, whatever the QEMU command line says:
//!
//! | device tree node | host access |
//! |---|---|
//! | `arm,pl011`, `arm,pl031`, `arm,pl061` (UART, RTC, GPIO) | mapped: registers only, no DMA |
//! | `arm,gic-v3`: distributor | mapped: it has no memory accesses of its own |
//! | `arm,gic-v3`: redistributors | mapped, but the control page of each is guarded: `EnableLPIs` stays 0, so no LPI table walks ([`crate::host::gicr`]) |
//! | `pci-host-ecam-generic`: memory and I/O windows | mapped: BARs live here |
//! | `pci-host-ecam-generic`: ECAM | every page guarded: bus mastering stays off in every function ([`crate::host::pciconfig`]) |
//! | anything else (`qemu,fw-cfg-mmio`, `virtio,mmio`, `arm,gic-v3-its`, `cfi-flash`, the platform bus, ...) | never mapped: an access is an injected synchronous external abort |
//!
//! A node whose `status` is not `okay` is not allowed either.

use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use arrayvec::ArrayVec;

/// Most device ranges the host may map.
pub const MAX_HOST_MMIO: usize = 24;

/// `compatible` strings of devices whose registers the host may map as they are: none of them
/// masters memory.
pub const PLAIN_DEVICES: [&str; 3] = ["arm,pl011", "arm,pl031", "arm,pl061"];

/// The device space the host may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDevices {
    /// Ranges the host may map (page aligned, outside RAM), except the guarded pages below.
    pub mmio: ArrayVec<PhysRange, MAX_HOST_MMIO>,
    /// The GICv3 redistributor region (`arm,gic-v3`, `reg` entry 1): the first page of every
    /// redistributor frame is guarded ([`crate::host::gicr`]).
    pub gicr: Option<PhysRange>,
    /// The PCI configuration space (ECAM): all of it guarded ([`crate::host::pciconfig`]).
    pub ecam: Option<PhysRange>,
}

/// A device page EL2 keeps from the host's stage 2 and performs the host's accesses to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// A redistributor control page: `GICR_CTLR.EnableLPIs` filtered.
    Redistributor,
    /// PCI configuration space: `Command.BusMasterEnable` filtered.
    PciConfig,
}

/// Why a device description was refused at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// More allowed ranges than [`MAX_HOST_MMIO`].
    TooMany,
    /// An allowed range that is empty, overflows, or overlaps RAM.
    BadRange,
}

impl HostDevices {
    /// Allows the host to map `[start, start + size)`, widened to whole pages.
    ///
    /// # Errors
    /// [`DeviceError`]: EL2 start-up stops (fails closed).
    pub fn allow(&mut self, start: u64, size: u64, ram: &PhysRange) -> Result<(), DeviceError> {
        let end = start.checked_add(size).filter(|_| size > 0).ok_or(DeviceError::BadRange)?;
        let range = PhysRange { start: PhysAddr(start & !(PAGE_SIZE - 1)), end: PhysAddr(end.checked_next_multiple_of(PAGE_SIZE).ok_or(DeviceError::BadRange)?) };
        if range.overlaps(ram) {
            return Err(DeviceError::BadRange);
        }
        self.mmio.try_push(range).map_err(|_| DeviceError::TooMany)
    }

    /// The guard of the page holding `pa`, if it is guarded.
    pub fn guard(&self, pa: u64) -> Option<Guard> {
        if self.gicr.is_some_and(|g| crate::host::gicr::guarded(&g, pa).is_some()) {
            Some(Guard::Redistributor)
        } else if self.ecam.is_some_and(|e| e.contains(PhysAddr(pa))) {
            Some(Guard::PciConfig)
        } else {
            None
        }
    }

    /// Whether the host may map all of `block` as a device: it lies inside one allowed range
    /// and holds no guarded page.
    pub fn may_map(&self, block: &PhysRange) -> bool {
        self.mmio.iter().any(|r| r.contains_range(block))
            && !self.gicr.is_some_and(|g| crate::host::gicr::overlaps_guarded(&g, block))
            && !self.ecam.is_some_and(|e| e.overlaps(block))
    }

    /// Table pages below the root the host stage 2 may need to map all allowed device space
    /// in the largest blocks [`Self::may_map`] gives: a table at each level wherever an allowed
    /// range starts or ends inside that table's span, and a level-3 table for every 2 MiB of
    /// the redistributor region (its guarded pages split them all). Ranges share tables, so
    /// each table is counted once.
    pub fn table_reserve(&self) -> usize {
        // (level, index of the span the table maps): at most 3 levels x 2 ends per range, and
        // the redistributor region's 2 MiB spans.
        let mut tables: ArrayVec<(u8, u64), { 6 * MAX_HOST_MMIO + 64 }> = ArrayVec::new();
        let mut add = |level: u8, span_shift: u32, pa: u64| {
            if !tables.contains(&(level, pa >> span_shift)) {
                let _ = tables.try_push((level, pa >> span_shift));
            }
        };
        for r in &self.mmio {
            for (level, shift) in [(1, 39), (2, 30), (3, 21)] {
                add(level, shift, r.start.0);
                add(level, shift, r.end.0 - 1);
            }
        }
        if let Some(g) = self.gicr {
            for pa in (g.start.0..g.end.0).step_by(2 << 20) {
                add(3, 21, pa);
            }
            add(3, 21, g.end.0 - 1);
        }
        // A region too large to count (never on a real machine) is counted at its worst.
        if tables.is_full() { 6 * MAX_HOST_MMIO + 64 + self.gicr.map_or(0, |g| (g.size() >> 21) as usize) } else { tables.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: PhysRange = PhysRange { start: PhysAddr(0x4000_0000), end: PhysAddr(0x8000_0000) };

    fn range(s: u64, n: u64) -> PhysRange {
        PhysRange::from_size(PhysAddr(s), n).unwrap()
    }

    #[test]
    fn allowed_ranges_are_whole_pages_outside_ram() {
        let mut d = HostDevices::default();
        d.allow(0x0A00_0200, 0x200, &RAM).unwrap();
        assert_eq!(d.mmio[0], range(0x0A00_0000, PAGE_SIZE));
        assert_eq!(d.allow(0x3FFF_F000, 0x2000, &RAM), Err(DeviceError::BadRange), "reaches into RAM");
        assert_eq!(d.allow(0x1000, 0, &RAM), Err(DeviceError::BadRange));
        assert_eq!(d.allow(u64::MAX - 10, 0x100, &RAM), Err(DeviceError::BadRange));
        for i in 1..MAX_HOST_MMIO as u64 {
            d.allow(i << 40, PAGE_SIZE, &RAM).unwrap();
        }
        assert_eq!(d.allow(0x1000, PAGE_SIZE, &RAM), Err(DeviceError::TooMany));
    }

    #[test]
    fn only_blocks_inside_one_allowed_range_and_without_guarded_pages_map() {
        let mut d = HostDevices { gicr: Some(range(0x080A_0000, 0xF6_0000)), ecam: Some(range(0x40_1000_0000, 0x1000_0000)), ..Default::default() };
        d.allow(0x0900_0000, PAGE_SIZE, &RAM).unwrap();
        d.allow(0x080A_0000, 0xF6_0000, &RAM).unwrap();
        d.allow(0x1000_0000, 0x2EFF_0000, &RAM).unwrap();
        assert!(d.may_map(&range(0x0900_0000, PAGE_SIZE)));
        assert!(!d.may_map(&range(0x0900_0000, 2 << 20)), "the UART's neighbours (fw_cfg) are not allowed");
        assert!(!d.may_map(&range(0x0902_0000, PAGE_SIZE)), "fw_cfg");
        assert!(!d.may_map(&range(0x080A_0000, PAGE_SIZE)), "a guarded redistributor page");
        assert!(d.may_map(&range(0x080A_1000, PAGE_SIZE)));
        assert!(d.may_map(&range(0x1020_0000, 2 << 20)), "a PCI window block");
        assert!(!d.may_map(&range(0x40_1000_0000, PAGE_SIZE)), "ECAM");
        assert_eq!(d.guard(0x080C_0000), Some(Guard::Redistributor));
        assert_eq!(d.guard(0x080C_1000), None);
        assert_eq!(d.guard(0x40_1000_8004), Some(Guard::PciConfig));
        assert_eq!(d.guard(0x0902_0010), None, "not guarded: simply never mapped");
    }
}
