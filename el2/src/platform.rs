//! What EL2 learns from the device tree at boot: RAM, the console, the CPUs.
//!
//! Place in the flow: boot only. The device tree comes from the platform (QEMU places it at the
//! base of RAM), not from the host, and is parsed once before the host runs. Everything needed
//! later is copied into [`Platform`]; EL2 keeps no reference into the blob and never maps it.

use crate::host::devices::{HostDevices, PLAIN_DEVICES};
use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use arrayvec::ArrayVec;

/// Most CPUs EL2 manages.
pub const MAX_CPUS: usize = 8;

/// Largest device tree EL2 accepts.
pub const MAX_DTB_SIZE: usize = 2 << 20;

/// The machine as EL2 sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The (first) RAM region, page aligned.
    pub ram: PhysRange,
    /// Base of the PL011 console.
    pub uart: PhysAddr,
    /// `MPIDR_EL1` affinity (the `reg` of each `/cpus/cpu` node), in device-tree order; the
    /// position is the CPU index EL2 uses everywhere.
    pub cpus: ArrayVec<u64, MAX_CPUS>,
    /// Cacheable RAM that has no allocation-tag storage (MTE VMs may not be given it).
    ///
    /// QEMU's `virt` has tag storage for all RAM, so the platform description models such a
    /// region: a `pkvm.notags=ADDR,SIZE` token (hexadecimal) in `/chosen/bootargs` of the
    /// device tree EL2 boots with. It is read before the host runs, like the rest of the
    /// platform description; on hardware it would come from the memory map's tag-storage
    /// description.
    pub untagged: Option<PhysRange>,
    /// The generic PCI host bridge, if any: where EL2 finds the `pvpanic-pci` device it uses to
    /// end the machine as a failure when it cannot go on (see `arch::failstop`).
    pub pci: Option<PciHost>,
    /// The device space the host may reach (default deny: see [`crate::host::devices`]),
    /// including the GICv3 redistributor region, whose control pages EL2 keeps from the host.
    pub devices: HostDevices,
}

/// A `pci-host-ecam-generic` bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// Configuration space (ECAM) of bus 0.
    pub ecam: PhysAddr,
    /// Base of the 32-bit memory window (where BARs can be placed).
    pub mem32: PhysAddr,
}

/// Why the device tree was not usable. Any of these stops EL2 start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// Not a valid flattened device tree.
    BadBlob,
    /// No `memory` node, or a region too small or not page aligned.
    NoRam,
    /// No `arm,pl011` node.
    NoUart,
    /// No CPU nodes.
    NoCpus,
    /// More CPUs than [`MAX_CPUS`].
    TooManyCpus,
    /// A `pkvm.notags=` token that is malformed or not inside RAM: EL2 would otherwise count
    /// untagged memory as tagged, so it stops (fails closed).
    BadNotags,
    /// PSCI missing or not using the SMC conduit (EL2 calls firmware with SMC).
    NoSmcPsci,
    /// An `arm,gic-v3` node whose redistributor region is missing, not 64 KiB aligned, or one
    /// of several (`#redistributor-regions` other than 1): EL2 could not keep the LPI
    /// registers from the host, so it stops (fails closed).
    BadGic,
    /// The booting CPU is not the device tree's first `/cpus` node: EL2 runs the booting CPU as
    /// CPU index 0, so a later `CPU_ON` of the first node would give two CPUs one index.
    BootCpuNotFirst,
    /// A device the host may map whose range is malformed, overlaps RAM, or one too many (see
    /// [`crate::host::devices`]).
    BadDevice,
}

impl Platform {
    /// The index of the CPU with affinity `mpidr`.
    pub fn cpu_index(&self, mpidr: u64) -> Option<usize> {
        let aff = mpidr & MPIDR_AFF_MASK;
        self.cpus.iter().position(|&c| c & MPIDR_AFF_MASK == aff)
    }
}

impl Platform {
    /// Checks that the CPU with affinity `mpidr`, which is booting EL2, is CPU index 0.
    ///
    /// # Errors
    /// [`PlatformError::BootCpuNotFirst`].
    pub fn check_boot_cpu(&self, mpidr: u64) -> Result<(), PlatformError> {
        (self.cpu_index(mpidr) == Some(0)).then_some(()).ok_or(PlatformError::BootCpuNotFirst)
    }
}

/// The affinity fields of `MPIDR_EL1` (Aff3 in bits [39:32], Aff2..Aff0 in [23:0]).
pub const MPIDR_AFF_MASK: u64 = 0xFF_00FF_FFFF;

/// Reads the size a device tree header claims, so the caller knows how much to look at.
///
/// Returns `None` if the magic is wrong or the size is implausible.
pub fn dtb_total_size(header: &[u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    (magic == 0xD00D_FEED && (40..=MAX_DTB_SIZE).contains(&size)).then_some(size)
}

/// Parses the device tree.
///
/// # Errors
/// A [`PlatformError`] naming the first thing missing.
pub fn parse(dtb: &[u8]) -> Result<Platform, PlatformError> {
    let fdt = fdt::Fdt::new(dtb).map_err(|_| PlatformError::BadBlob)?;

    let region = fdt.memory().regions().next().ok_or(PlatformError::NoRam)?;
    let start = region.starting_address as u64;
    let size = region.size.ok_or(PlatformError::NoRam)? as u64;
    let ram = PhysRange::from_size(PhysAddr(start), size).ok_or(PlatformError::NoRam)?;
    if !ram.start.is_page_aligned() || !ram.end.is_page_aligned() || size < 64 * PAGE_SIZE {
        return Err(PlatformError::NoRam);
    }

    let uart = fdt
        .find_compatible(&["arm,pl011"])
        .and_then(|n| n.reg()?.next())
        .map(|r| PhysAddr(r.starting_address as u64))
        .ok_or(PlatformError::NoUart)?;

    let mut cpus = ArrayVec::new();
    for cpu in fdt.cpus() {
        let id = cpu.ids().first() as u64;
        cpus.try_push(id).map_err(|_| PlatformError::TooManyCpus)?;
    }
    if cpus.is_empty() {
        return Err(PlatformError::NoCpus);
    }

    let psci = fdt.find_node("/psci").ok_or(PlatformError::NoSmcPsci)?;
    if psci.property("method").and_then(|p| p.as_str()) != Some("smc") {
        return Err(PlatformError::NoSmcPsci);
    }

    let untagged = untagged_from(fdt.chosen().bootargs(), &ram)?;

    let mut devices = HostDevices::default();
    let allow = |d: &mut HostDevices, start: u64, size: Option<usize>| d.allow(start, size.unwrap_or(0) as u64, &ram).map_err(|_| PlatformError::BadDevice);
    for node in fdt.all_nodes().filter(|n| n.property("status").and_then(|p| p.as_str()).is_none_or(|s| s == "okay" || s == "ok")) {
        let Some(compatible) = node.compatible() else { continue };
        if compatible.all().any(|c| PLAIN_DEVICES.contains(&c)) {
            for r in node.reg().into_iter().flatten() {
                allow(&mut devices, r.starting_address as u64, r.size)?;
            }
        }
    }

    let mut pci = None;
    if let Some(n) = fdt.find_compatible(&["pci-host-ecam-generic"]) {
        let ecam = n.reg().and_then(|mut r| r.next()).and_then(|r| PhysRange::from_size(PhysAddr(r.starting_address as u64), r.size? as u64)).ok_or(PlatformError::BadDevice)?;
        // `ranges` entries: PCI address (3 cells: space code in bits 25:24 of the first), CPU
        // address (2 cells), size (2 cells). Space code 0b01: I/O, 0b10: 32-bit memory, 0b11:
        // 64-bit memory. The host may map every window: BARs live there.
        let mut mem32 = None;
        for e in n.property("ranges").map_or(&[][..], |p| p.value).chunks_exact(28) {
            let cell = |i: usize| u32::from_be_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]]) as u64;
            let (cpu, size) = (cell(3) << 32 | cell(4), cell(5) << 32 | cell(6));
            allow(&mut devices, cpu, Some(size as usize))?;
            if (cell(0) >> 24) & 3 == 2 {
                mem32.get_or_insert(PhysAddr(cpu));
            }
        }
        devices.ecam = Some(ecam);
        pci = mem32.map(|mem32| PciHost { ecam: ecam.start, mem32 });
    }

    if let Some(n) = fdt.find_compatible(&["arm,gic-v3"]) {
        let regions = n.property("#redistributor-regions").and_then(|p| p.as_usize()).unwrap_or(1);
        let mut reg = n.reg().into_iter().flatten();
        let dist = reg.next().ok_or(PlatformError::BadGic)?;
        let r = reg.next().and_then(|r| PhysRange::from_size(PhysAddr(r.starting_address as u64), r.size? as u64));
        match r {
            Some(r) if regions == 1 && crate::host::gicr::region_ok(&r) => {
                allow(&mut devices, dist.starting_address as u64, dist.size)?;
                allow(&mut devices, r.start.0, Some(r.size() as usize))?;
                devices.gicr = Some(r);
            }
            _ => return Err(PlatformError::BadGic),
        }
    }

    Ok(Platform { ram, uart, cpus, untagged, pci, devices })
}

/// The untagged RAM a command line describes: none without a `pkvm.notags=` token; with one,
/// it must parse and lie inside `ram`, or EL2 stops (fail closed: a typo must not count
/// untagged memory as tagged).
///
/// # Errors
/// [`PlatformError::BadNotags`].
pub fn untagged_from(bootargs: Option<&str>, ram: &PhysRange) -> Result<Option<PhysRange>, PlatformError> {
    match bootargs {
        Some(args) if args.split_whitespace().any(|w| w.starts_with("pkvm.notags=")) => {
            parse_notags(args).filter(|r| ram.contains_range(r)).map(Some).ok_or(PlatformError::BadNotags)
        }
        _ => Ok(None),
    }
}

/// The `pkvm.notags=ADDR,SIZE` token of a command line, page aligned.
pub fn parse_notags(cmdline: &str) -> Option<PhysRange> {
    let v = cmdline.split_whitespace().find_map(|w| w.strip_prefix("pkvm.notags="))?;
    let (a, n) = v.split_once(',')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let r = PhysRange::from_size(PhysAddr(hex(a)?), hex(n)?)?;
    (r.start.is_page_aligned() && r.end.is_page_aligned() && r.size() > 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_VIRT: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-2cpu.dtb");

    #[test]
    fn parses_qemu_virt() {
        let p = parse(QEMU_VIRT).unwrap();
        assert_eq!(p.ram, PhysRange::from_size(PhysAddr(0x4000_0000), 1 << 30).unwrap());
        assert_eq!(p.uart, PhysAddr(0x0900_0000));
        assert_eq!(p.cpus.as_slice(), &[0, 1]);
        assert_eq!(p.cpu_index(1), Some(1));
        assert_eq!(p.cpu_index(0x8000_0001), Some(1), "MPIDR RES1/U bits ignored");
        assert_eq!(p.cpu_index(2), None);
        assert_eq!(p.check_boot_cpu(0x8000_0000), Ok(()));
        assert_eq!(p.check_boot_cpu(1), Err(PlatformError::BootCpuNotFirst), "CPU 1 booting would take CPU 0's index");
        assert_eq!(p.pci, Some(PciHost { ecam: PhysAddr(0x40_1000_0000), mem32: PhysAddr(0x1000_0000) }));
        assert_eq!(p.devices.gicr, PhysRange::from_size(PhysAddr(0x080A_0000), 0xF6_0000), "room for 123 redistributors");
    }

    #[test]
    fn untagged_range_from_the_command_line() {
        assert_eq!(
            parse_notags("scenario=x pkvm.notags=0x7c000000,0x4000000"),
            PhysRange::from_size(PhysAddr(0x7C00_0000), 0x400_0000)
        );
        assert_eq!(parse_notags("pkvm.notags=7c000000,1000 other"), PhysRange::from_size(PhysAddr(0x7C00_0000), 0x1000));
        assert_eq!(parse_notags("pkvm.notags=0x7c000001,0x1000"), None, "unaligned");
        assert_eq!(parse_notags("pkvm.notags=0x7c000000,0"), None, "empty");
        assert_eq!(parse_notags("pkvm.notags=zz,1000"), None);
        assert_eq!(parse_notags("pkvm.notags=0xffffffffffff0000,0x100000"), None, "overflow");
        assert_eq!(parse_notags("nothing here"), None);
        // The QEMU fixture's command line has none.
        assert_eq!(parse(QEMU_VIRT).unwrap().untagged, None);
    }

    #[test]
    fn a_bad_untagged_range_stops_boot() {
        let ram = PhysRange::from_size(PhysAddr(0x4000_0000), 1 << 30).unwrap();
        assert_eq!(untagged_from(None, &ram), Ok(None));
        assert_eq!(untagged_from(Some("console=x"), &ram), Ok(None));
        assert_eq!(untagged_from(Some("pkvm.notags=0x7c000000,0x4000000"), &ram), Ok(PhysRange::from_size(PhysAddr(0x7C00_0000), 0x400_0000)));
        for bad in ["pkvm.notags=0x7c000001,0x1000", "pkvm.notags=zz", "pkvm.notags=", "pkvm.notags=0x1000,0x1000", "pkvm.notags=0x7ffff000,0x2000"] {
            assert_eq!(untagged_from(Some(bad), &ram), Err(PlatformError::BadNotags), "{bad}");
        }
    }

    #[test]
    fn header_size_check() {
        let mut h = [0u8; 8];
        h[..8].copy_from_slice(&QEMU_VIRT[..8]);
        assert_eq!(dtb_total_size(&h), Some(QEMU_VIRT.len()));
        assert_eq!(dtb_total_size(&[0; 8]), None);
        assert_eq!(dtb_total_size(&[0xD0, 0x0D, 0xFE, 0xED, 0xFF, 0, 0, 0]), None, "too big");
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(&[0u8; 64]), Err(PlatformError::BadBlob));
        assert_eq!(parse(&QEMU_VIRT[..100]), Err(PlatformError::BadBlob));
    }
}
