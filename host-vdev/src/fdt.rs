//! Guest device trees: a minimal flattened-device-tree writer (DTSpec v0.4, version 17) and the
//! two trees the VMM gives guests: the test guests' (RAM, vCPUs, PSCI, PL011) and a Linux
//! guest's (the same plus the GICv3, the architected timer, the PL011's interrupt, the
//! initramfs and the command line).
//!
//! Our own writer rather than `vm-fdt`: that crate builds the blob in a `Vec`, and the host
//! has no heap; this one writes into fixed buffers and reports overflow instead.

const FDT_MAGIC: u32 = 0xD00D_FEED;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER: usize = 40;
const RSVMAP: usize = 16;

/// Builds a device tree in fixed buffers; [`FdtWriter::finish`] lays out the blob.
pub struct FdtWriter {
    structure: [u8; 8192],
    slen: usize,
    strings: [u8; 1024],
    tlen: usize,
    overflow: bool,
}

impl Default for FdtWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FdtWriter {
    /// An empty tree.
    pub const fn new() -> Self {
        Self { structure: [0; 8192], slen: 0, strings: [0; 1024], tlen: 0, overflow: false }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.slen + bytes.len() > self.structure.len() {
            self.overflow = true;
            return;
        }
        self.structure[self.slen..self.slen + bytes.len()].copy_from_slice(bytes);
        self.slen += bytes.len();
    }

    fn pad(&mut self) {
        while !self.slen.is_multiple_of(4) {
            self.put(&[0]);
        }
    }

    fn string_offset(&mut self, name: &str) -> u32 {
        let mut off = 0;
        while off < self.tlen {
            let end = off + self.strings[off..self.tlen].iter().position(|&b| b == 0).unwrap_or(0);
            if &self.strings[off..end] == name.as_bytes() {
                return off as u32;
            }
            off = end + 1;
        }
        if self.tlen + name.len() + 1 > self.strings.len() {
            self.overflow = true;
            return 0;
        }
        let at = self.tlen;
        self.strings[at..at + name.len()].copy_from_slice(name.as_bytes());
        self.tlen += name.len() + 1;
        at as u32
    }

    /// Opens node `name` (`""` for the root).
    pub fn begin(&mut self, name: &str) {
        self.put(&FDT_BEGIN_NODE.to_be_bytes());
        self.put(name.as_bytes());
        self.put(&[0]);
        self.pad();
    }

    /// Closes the current node.
    pub fn end(&mut self) {
        self.put(&FDT_END_NODE.to_be_bytes());
    }

    /// A property with raw bytes.
    pub fn prop(&mut self, name: &str, value: &[u8]) {
        self.prop_parts(name, &[value]);
    }

    /// A property whose value is the concatenation of `parts` (no copy on the stack).
    fn prop_parts(&mut self, name: &str, parts: &[&[u8]]) {
        let off = self.string_offset(name);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.put(&FDT_PROP.to_be_bytes());
        self.put(&(len as u32).to_be_bytes());
        self.put(&off.to_be_bytes());
        for p in parts {
            self.put(p);
        }
        self.pad();
    }

    /// A property of 32-bit cells (at most 16; more is an overflow).
    pub fn cells(&mut self, name: &str, cells: &[u32]) {
        let mut buf = [0u8; 64];
        if cells.len() > 16 {
            self.overflow = true;
        }
        for (i, c) in cells.iter().enumerate().take(16) {
            buf[4 * i..4 * i + 4].copy_from_slice(&c.to_be_bytes());
        }
        self.prop(name, &buf[..4 * cells.len().min(16)]);
    }

    /// A string property (several strings: separate them with `\0`), at most 4095 bytes.
    pub fn string(&mut self, name: &str, s: &str) {
        if s.len() > 4095 {
            self.overflow = true;
            return;
        }
        self.prop_parts(name, &[s.as_bytes(), &[0]]);
    }

    /// A property holding one 64-bit value as two cells.
    pub fn u64(&mut self, name: &str, v: u64) {
        self.cells(name, &[(v >> 32) as u32, v as u32]);
    }

    /// Writes the blob into `out`; returns its size, or `None` if anything did not fit.
    pub fn finish(mut self, out: &mut [u8]) -> Option<usize> {
        self.put(&FDT_END.to_be_bytes());
        let off_struct = HEADER + RSVMAP;
        let off_strings = off_struct + self.slen;
        let total = off_strings + self.tlen;
        if self.overflow || total > out.len() {
            return None;
        }
        out[..total].fill(0);
        let header = [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            HEADER as u32,
            17,
            16,
            0,
            self.tlen as u32,
            self.slen as u32,
        ];
        for (i, h) in header.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&h.to_be_bytes());
        }
        out[off_struct..off_strings].copy_from_slice(&self.structure[..self.slen]);
        out[off_strings..total].copy_from_slice(&self.strings[..self.tlen]);
        Some(total)
    }
}

/// The device tree of a test guest: RAM, vCPUs (PSCI over HVC), the PL011 and its clock.
pub fn test_guest_tree(out: &mut [u8], ram_base: u64, ram_size: u64, vcpus: u32, uart: u64, dice: Option<u64>) -> Option<usize> {
    let mut w = FdtWriter::new();
    w.begin("");
    common(&mut w, ram_base, ram_size, vcpus, false);
    dice_node(&mut w, dice);
    w.begin("chosen");
    w.string("stdout-path", "/pl011@9000000");
    w.end();
    pl011(&mut w, uart, None);
    w.end();
    w.finish(out)
}

/// What a Linux guest's device tree describes.
pub struct LinuxTree<'a> {
    /// Guest RAM (IPA base, size).
    pub ram: (u64, u64),
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The PL011 (IPA) and its SPI (0-based: INTID 32 + n).
    pub uart: (u64, u32),
    /// The GICv3 distributor and redistributor region (IPA; one 128 KiB frame per vCPU).
    pub gicd: u64,
    /// See [`Self::gicd`].
    pub gicr: u64,
    /// The initramfs (IPA start, end).
    pub initrd: Option<(u64, u64)>,
    /// The kernel command line (`/chosen/bootargs`).
    pub bootargs: &'a str,
    /// The measurement handover page (IPA), if the VM has one ([`dice_node`]).
    pub dice: Option<u64>,
}

/// The page where EL2 writes the VM's measurement handover, as Android's protected VMs
/// describe theirs: `/reserved-memory/dice` with `compatible = "google,open-dice"` and
/// `no-map`, which Linux (`CONFIG_OPEN_DICE`) offers as `/dev/open-dice0`.
fn dice_node(w: &mut FdtWriter, dice: Option<u64>) {
    let Some(addr) = dice else { return };
    w.begin("reserved-memory");
    w.cells("#address-cells", &[2]);
    w.cells("#size-cells", &[2]);
    w.prop("ranges", &[]);
    w.begin("dice");
    w.string("compatible", "google,open-dice");
    w.cells("reg", &[hi(addr), lo(addr), 0, 0x1000]);
    w.prop("no-map", &[]);
    w.end();
    w.end();
}

/// The GIC's phandle.
const GIC_PHANDLE: u32 = 2;
/// The APB clock's phandle.
const CLOCK_PHANDLE: u32 = 1;
/// Interrupt specifier types (`arm,gic-v3` binding): SPI 0, PPI 1.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Level-sensitive, active high.
const IRQ_LEVEL_HIGH: u32 = 4;

/// The device tree of a Linux guest. `None` if it does not fit in `out`.
pub fn linux_tree(out: &mut [u8], t: &LinuxTree<'_>) -> Option<usize> {
    let mut w = FdtWriter::new();
    w.begin("");
    w.cells("interrupt-parent", &[GIC_PHANDLE]);
    common(&mut w, t.ram.0, t.ram.1, t.vcpus, true);
    dice_node(&mut w, t.dice);
    w.begin("chosen");
    w.string("stdout-path", "/pl011@9000000");
    w.string("bootargs", t.bootargs);
    if let Some((start, end)) = t.initrd {
        w.u64("linux,initrd-start", start);
        w.u64("linux,initrd-end", end);
    }
    w.end();
    // GICv3: the distributor (64 KiB) and one redistributor (RD_base + SGI_base, 128 KiB) per
    // vCPU; the maintenance interrupt is PPI 9 (INTID 25).
    w.begin("intc@8000000");
    w.string("compatible", "arm,gic-v3");
    w.cells("#interrupt-cells", &[3]);
    w.prop("interrupt-controller", &[]);
    w.cells("#redistributor-regions", &[1]);
    let rd = t.vcpus as u64 * 0x2_0000;
    w.cells("reg", &[hi(t.gicd), lo(t.gicd), 0, 0x1_0000, hi(t.gicr), lo(t.gicr), hi(rd), lo(rd)]);
    w.cells("interrupts", &[GIC_PPI, 9, IRQ_LEVEL_HIGH]);
    w.cells("phandle", &[GIC_PHANDLE]);
    w.end();
    // The architected timer: secure physical (PPI 13, INTID 29), non-secure physical (14, 30),
    // virtual (11, 27) and hypervisor (10, 26), as the binding orders them.
    w.begin("timer");
    w.string("compatible", "arm,armv8-timer");
    w.cells(
        "interrupts",
        &[GIC_PPI, 13, IRQ_LEVEL_HIGH, GIC_PPI, 14, IRQ_LEVEL_HIGH, GIC_PPI, 11, IRQ_LEVEL_HIGH, GIC_PPI, 10, IRQ_LEVEL_HIGH],
    );
    w.prop("always-on", &[]);
    w.end();
    pl011(&mut w, t.uart.0, Some(t.uart.1));
    w.end();
    w.finish(out)
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn lo(v: u64) -> u32 {
    v as u32
}

/// Root properties, memory, cpus (PSCI over HVC), psci and the PL011's clock (`linux`: the
/// model string of a Linux guest's tree).
fn common(w: &mut FdtWriter, ram_base: u64, ram_size: u64, vcpus: u32, linux: bool) {
    w.cells("#address-cells", &[2]);
    w.cells("#size-cells", &[2]);
    w.string("compatible", "linux,dummy-virt");
    w.string("model", if linux { "pkvm-rs Linux guest" } else { "pkvm-rs guest" });
    w.begin("memory@40000000");
    w.string("device_type", "memory");
    w.cells("reg", &[hi(ram_base), lo(ram_base), hi(ram_size), lo(ram_size)]);
    w.end();
    w.begin("cpus");
    w.cells("#address-cells", &[1]);
    w.cells("#size-cells", &[0]);
    const NAMES: [&str; 8] = ["cpu@0", "cpu@1", "cpu@2", "cpu@3", "cpu@4", "cpu@5", "cpu@6", "cpu@7"];
    for (i, name) in NAMES.iter().enumerate().take(vcpus as usize) {
        w.begin(name);
        w.string("device_type", "cpu");
        w.string("compatible", "arm,armv8");
        // MPIDR affinity: EL2 gives vCPU n Aff0 = n.
        w.cells("reg", &[i as u32]);
        w.string("enable-method", "psci");
        w.end();
    }
    w.end();
    w.begin("psci");
    w.string("compatible", "arm,psci-1.0\0arm,psci-0.2");
    w.string("method", "hvc");
    w.end();
    w.begin("apb-pclk");
    w.string("compatible", "fixed-clock");
    w.cells("#clock-cells", &[0]);
    w.cells("clock-frequency", &[24_000_000]);
    w.string("clock-output-names", "clk24mhz");
    w.cells("phandle", &[CLOCK_PHANDLE]);
    w.end();
}

/// The PL011 at `base`, with its SPI if it has one.
fn pl011(w: &mut FdtWriter, base: u64, spi: Option<u32>) {
    w.begin("pl011@9000000");
    w.string("compatible", "arm,pl011\0arm,primecell");
    w.cells("reg", &[hi(base), lo(base), 0, 0x1000]);
    if let Some(spi) = spi {
        w.cells("interrupts", &[GIC_SPI, spi, IRQ_LEVEL_HIGH]);
    }
    w.cells("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE]);
    w.string("clock-names", "uartclk\0apb_pclk");
    w.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(p: &[u8]) -> std::vec::Vec<u32> {
        p.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    extern crate std;

    const TREE: LinuxTree<'static> = LinuxTree {
        ram: (0x4000_0000, 512 << 20),
        vcpus: 2,
        uart: (0x0900_0000, 1),
        gicd: 0x0800_0000,
        gicr: 0x080A_0000,
        initrd: Some((0x5F00_0000, 0x5F12_3456)),
        bootargs: "console=ttyAMA0 panic=-1",
        dice: None,
    };

    #[test]
    fn a_linux_tree_describes_the_machine() {
        let mut buf = [0u8; 16384];
        let n = linux_tree(&mut buf, &TREE).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        assert_eq!(fdt.chosen().bootargs(), Some("console=ttyAMA0 panic=-1"));
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(cells(chosen.property("linux,initrd-start").unwrap().value), [0, 0x5F00_0000]);
        assert_eq!(cells(chosen.property("linux,initrd-end").unwrap().value), [0, 0x5F12_3456]);
        let mem = fdt.memory().regions().next().unwrap();
        assert_eq!((mem.starting_address as u64, mem.size), (0x4000_0000, Some(512 << 20)));
        assert_eq!(fdt.cpus().count(), 2);
        assert!(fdt.cpus().all(|c| c.property("enable-method").and_then(|p| p.as_str()) == Some("psci")));
        assert_eq!(fdt.find_node("/psci").unwrap().property("method").unwrap().as_str(), Some("hvc"));
        // GICv3: the distributor, and 2 x 128 KiB of redistributors; the root's interrupt parent.
        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        assert_eq!(cells(gic.property("reg").unwrap().value), [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080A_0000, 0, 0x4_0000]);
        assert!(gic.property("interrupt-controller").is_some());
        let phandle = cells(gic.property("phandle").unwrap().value);
        assert_eq!(cells(fdt.root().property("interrupt-parent").unwrap().value), phandle);
        // The timer's four PPIs in the binding's order: secure, non-secure physical, virtual, hyp.
        let timer = fdt.find_compatible(&["arm,armv8-timer"]).unwrap();
        let t = cells(timer.property("interrupts").unwrap().value);
        assert_eq!([t[1], t[4], t[7], t[10]], [13, 14, 11, 10]);
        assert!(t.chunks(3).all(|c| c[0] == 1 && c[2] == 4), "PPIs, level high");
        let uart = fdt.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(cells(uart.property("interrupts").unwrap().value), [0, 1, 4]);
        assert_eq!(uart.property("clock-names").unwrap().value, b"uartclk\0apb_pclk\0");
    }

    #[test]
    fn a_test_guest_tree_has_no_interrupts() {
        let mut buf = [0u8; 16384];
        let n = test_guest_tree(&mut buf, 0x4000_0000, 16 << 20, 1, 0x0900_0000, None).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        assert!(fdt.find_compatible(&["arm,gic-v3"]).is_none());
        assert!(fdt.find_compatible(&["arm,pl011"]).unwrap().property("interrupts").is_none());
        assert_eq!(fdt.cpus().count(), 1);
        assert!(fdt.find_compatible(&["google,open-dice"]).is_none());
    }

    #[test]
    fn the_handover_page_is_reserved_memory_for_open_dice() {
        let mut buf = [0u8; 16384];
        for n in [
            test_guest_tree(&mut buf.clone(), 0x4000_0000, 16 << 20, 1, 0x0900_0000, Some(0x40FE_F000)),
            linux_tree(&mut buf, &LinuxTree { dice: Some(0x40FE_F000), ..TREE }),
        ] {
            let _ = n.unwrap();
        }
        let n = test_guest_tree(&mut buf, 0x4000_0000, 16 << 20, 1, 0x0900_0000, Some(0x40FE_F000)).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        let dice = fdt.find_compatible(&["google,open-dice"]).unwrap();
        let reg = dice.reg().unwrap().next().unwrap();
        assert_eq!((reg.starting_address as u64, reg.size), (0x40FE_F000, Some(0x1000)));
        assert!(dice.property("no-map").is_some());
        assert_eq!(fdt.find_node("/reserved-memory/dice").map(|n| n.name), Some("dice"));
    }

    #[test]
    fn what_does_not_fit_is_an_error_not_a_truncated_tree() {
        let mut small = [0u8; 256];
        assert_eq!(linux_tree(&mut small, &TREE), None);
        let long = "x".repeat(4096);
        let mut buf = [0u8; 16384];
        assert_eq!(linux_tree(&mut buf, &LinuxTree { bootargs: &long, ..TREE }), None, "bootargs over 4095 bytes");
        let most = "y".repeat(4095);
        let n = linux_tree(&mut buf, &LinuxTree { bootargs: &most, ..TREE }).unwrap();
        assert_eq!(fdt::Fdt::new(&buf[..n]).unwrap().chosen().bootargs().map(str::len), Some(4095));
        let mut w = FdtWriter::new();
        w.cells("too-many", &[0; 17]);
        assert_eq!(w.finish(&mut buf), None);
    }
}
