//! What the host reads from the device tree.

use crate::cpu::MAX_CPUS;
use core::sync::atomic::{AtomicBool, Ordering};

/// The machine as the host sees it.
pub struct Platform {
    /// PL011 base.
    pub uart: u64,
    /// `MPIDR` of each CPU, in device-tree order.
    pub cpus: [u64; MAX_CPUS],
    /// Number of valid entries in `cpus`.
    pub nr_cpus: usize,
    /// RAM base and size.
    pub ram: (u64, u64),
    /// PCIe ECAM base, if any.
    pub ecam: Option<u64>,
    /// A 32-bit PCI memory window (base), if any.
    pub pci_mem32: Option<u64>,
    /// GICv3 distributor and redistributor bases (`arm,gic-v3`: the first two `reg` entries).
    pub gic: Option<(u64, u64)>,
    bootargs: [u8; 256],
    bootargs_len: usize,
}

impl Platform {
    /// Parses the device tree at `dtb`; the host cannot run without one.
    pub fn from_dtb(dtb: u64) -> Self {
        // SAFETY: EL2 passes the device tree QEMU placed in host RAM; `from_ptr` reads the
        // header's size and checks the magic.
        let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
            Ok(f) => f,
            Err(_) => crate::fail::halt(),
        };
        let uart = fdt
            .find_compatible(&["arm,pl011"])
            .and_then(|n| n.reg()?.next())
            .map_or(0x0900_0000, |r| r.starting_address as u64);
        let mut cpus = [0; MAX_CPUS];
        let mut nr_cpus = 0;
        for cpu in fdt.cpus().take(MAX_CPUS) {
            cpus[nr_cpus] = cpu.ids().first() as u64;
            nr_cpus += 1;
        }
        let ram = fdt
            .memory()
            .regions()
            .next()
            .map_or((0, 0), |r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"]);
        let ecam = pci.and_then(|n| n.reg()?.next()).map(|r| r.starting_address as u64);
        let pci_mem32 = pci.and_then(|n| n.property("ranges")).and_then(|p| {
            // PCI ranges: (flags, child hi, child lo, parent hi, parent lo, size hi, size lo).
            p.value.chunks_exact(28).find_map(|e| {
                let cell = |i: usize| u32::from_be_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]]) as u64;
                ((cell(0) >> 24) & 3 == 2).then(|| cell(3) << 32 | cell(4))
            })
        });
        let gic = fdt.find_compatible(&["arm,gic-v3"]).and_then(|n| {
            let mut regs = n.reg()?;
            Some((regs.next()?.starting_address as u64, regs.next()?.starting_address as u64))
        });
        let mut bootargs = [0u8; 256];
        let mut bootargs_len = 0;
        if let Some(args) = fdt.chosen().bootargs() {
            bootargs_len = args.len().min(256);
            bootargs[..bootargs_len].copy_from_slice(&args.as_bytes()[..bootargs_len]);
        }
        Self { uart, cpus, nr_cpus, ram, ecam, pci_mem32, gic, bootargs, bootargs_len }
    }

    /// The value of `key=value` in the boot arguments.
    pub fn arg(&self, key: &str) -> Option<&str> {
        let args = core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("");
        args.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The guest image QEMU's loader placed in host RAM: `guest=ADDR,SIZE` (hex address).
    pub fn guest_image(&self) -> Option<&'static [u8]> {
        self.staged("guest")
    }

    /// A file QEMU's loader placed in host RAM, named by `key=ADDR,SIZE` (hex address, decimal
    /// size): `guest`, `initrd`, `cmdline` (see `shared_abi::layout`).
    pub fn staged(&self, key: &str) -> Option<&'static [u8]> {
        let (a, n) = self.arg(key)?.split_once(',')?;
        let addr = u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?;
        let size: usize = n.parse().ok()?;
        // SAFETY: QEMU's loader put the image there, in host RAM that nothing else uses.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, size) })
    }

    /// The disk image QEMU's loader placed at [`GUEST_DISK_STAGING`]
    /// (`disk=ADDR,SIZE`), writable: the backing of a Linux VM's virtio-blk. Handed out once
    /// per boot (`None` after); `None` too if the boot arguments name another address or a
    /// size above [`GUEST_DISK_MAX`].
    ///
    /// [`GUEST_DISK_STAGING`]: shared_abi::layout::GUEST_DISK_STAGING
    /// [`GUEST_DISK_MAX`]: shared_abi::layout::GUEST_DISK_MAX
    pub fn take_disk(&self) -> Option<&'static mut [u8]> {
        use shared_abi::layout::{GUEST_DISK_MAX, GUEST_DISK_STAGING};
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let (a, n) = self.arg("disk")?.split_once(',')?;
        let addr = u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?;
        let size: u64 = n.parse().ok()?;
        let in_ram = GUEST_DISK_STAGING.checked_add(size).is_some_and(|end| end <= self.ram.0.saturating_add(self.ram.1));
        if addr != GUEST_DISK_STAGING || size > GUEST_DISK_MAX || !in_ram || TAKEN.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: QEMU's loader put the image there, in host RAM inside the machine's that
        // nothing else uses (the VMM gives guests memory only below it, `shared_abi::layout`),
        // and `TAKEN` hands it out once, so this is the only reference to it.
        Some(unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, size as usize) })
    }

    /// The scenario named by `scenario=NAME` in the boot arguments, or `demo`.
    pub fn scenario(&self) -> &str {
        self.arg("scenario").unwrap_or("demo")
    }
}
