//! Guest device trees: a minimal flattened-device-tree writer (DTSpec v0.4, version 17) and the
//! one tree every VM gets (`crate::vm_platform`): RAM, vCPUs, PSCI, the GICv3, the architected
//! timer, the PL011 and its interrupt, the initramfs and the command line, the measurement
//! handover page, and the virtio-mmio transports with, for a protected VM, the restricted DMA
//! pool their buffers go through ([`vm_tree_with_virtio`]).
//!
//! # Virtio and the restricted DMA pool
//!
//! Each transport is a `virtio,mmio` node (the binding in Linux's
//! `Documentation/devicetree/bindings/virtio/mmio.yaml`): `reg` (its 0x200-byte frame),
//! `interrupts` (its SPI, level-sensitive: the line is high while `InterruptStatus` is not
//! zero), and `dma-coherent` (the host reaches guest memory through the cache, like the
//! guest's vCPUs). A protected VM's host may touch only what the guest shared; Linux shares
//! one region for all its device I/O when the devices name a `restricted-dma-pool` (the
//! binding in `Documentation/devicetree/bindings/reserved-memory/shared-dma-pool.yaml`): a
//! node under `/reserved-memory` (`#address-cells`, `#size-cells` as the root's, an empty
//! `ranges`) with `compatible = "restricted-dma-pool"`, `reg`, and neither `no-map` nor
//! `reusable` (the binding forbids them: the guest maps the pool to bounce buffers through
//! it), referenced by each transport's `memory-region = <&pool>` (which Linux reads for any
//! device whose DMA it configures, `of_dma_set_restricted_buffer`, with
//! `CONFIG_DMA_RESTRICTED_POOL`; the virtio binding's schema does not list it). The guest's
//! SWIOTLB then bounces every virtio buffer through the pool, which it shares with the host
//! when it sets the pool up (`set_memory_decrypted`, `MEM_SHARE` under pKVM), and the
//! transports' drivers must accept `VIRTIO_F_ACCESS_PLATFORM`
//! ([`crate::virtio::mmio::DmaPolicy::Restricted`]).
//!
//! Where the transports and the pool go is the VMM's choice; [`vm_tree_with_virtio`] checks
//! only what it knows: frames aligned and clear of RAM, the PL011, the GIC and each other,
//! distinct SPIs, and a pool of whole pages inside RAM, clear of the initramfs. Keeping it
//! clear of the kernel image and of the device tree itself is the VMM's part.
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

/// What a VM's device tree describes (`crate::vm_platform`).
pub struct VmTree<'a> {
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
    /// The measurement handover page (IPA), if the VM has one ([`reserved_memory`]).
    pub dice: Option<u64>,
}

/// `/reserved-memory`, one node for everything a tree reserves (Linux reads only the first
/// node of that name, `fdt_scan_reserved_mem`): the page where EL2 writes the VM's
/// measurement handover, as Android's protected VMs describe theirs (`dice` with
/// `compatible = "google,open-dice"` and `no-map`, which Linux, `CONFIG_OPEN_DICE`, offers as
/// `/dev/open-dice0`), and the restricted DMA pool (see the module documentation). Nothing if
/// there is neither.
fn reserved_memory(w: &mut FdtWriter, dice: Option<u64>, pool: Option<DmaPool>) {
    if dice.is_none() && pool.is_none() {
        return;
    }
    w.begin("reserved-memory");
    w.cells("#address-cells", &[2]);
    w.cells("#size-cells", &[2]);
    w.prop("ranges", &[]);
    if let Some(addr) = dice {
        w.begin("dice");
        w.string("compatible", "google,open-dice");
        w.cells("reg", &[hi(addr), lo(addr), 0, 0x1000]);
        w.prop("no-map", &[]);
        w.end();
    }
    if let Some(p) = pool {
        let mut name = [0u8; 40];
        w.begin(unit_name(&mut name, "restricted-dma-pool", p.base));
        w.string("compatible", "restricted-dma-pool");
        w.cells("reg", &[hi(p.base), lo(p.base), hi(p.size), lo(p.size)]);
        w.cells("phandle", &[DMA_POOL_PHANDLE]);
        w.end();
    }
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

/// A virtio-mmio transport in a VM's device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioNode {
    /// Its register frame (IPA; [`crate::virtio::mmio::FRAME_SIZE`] bytes, aligned to that).
    pub base: u64,
    /// Its SPI (0-based: INTID 32 + n).
    pub spi: u32,
}

/// A protected VM's restricted DMA pool: guest RAM (IPA) that the guest shares with the host
/// for all its virtio buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaPool {
    /// Where it starts (4 KiB aligned).
    pub base: u64,
    /// Its size (a non-zero multiple of 4 KiB).
    pub size: u64,
}

/// The virtio transports of a VM, and the pool their buffers go through (protected
/// VMs only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Virtio<'a> {
    /// The transports.
    pub transports: &'a [VirtioMmioNode],
    /// `Some` for a protected VM: every transport's `memory-region`.
    pub dma_pool: Option<DmaPool>,
}

impl Virtio<'_> {
    /// No virtio devices.
    pub const NONE: Virtio<'static> = Virtio { transports: &[], dma_pool: None };
}

/// Why [`vm_tree_with_virtio`] wrote no tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// The tree does not fit in the buffer, or a property is too long.
    DoesNotFit,
    /// The transport at `base` is not aligned to its frame's size, or its frame wraps or
    /// overlaps guest RAM, the PL011, the GIC or another transport.
    TransportPlacement {
        /// The transport.
        base: u64,
    },
    /// `spi` is not below [`crate::vgic::NR_SPIS`], or is the PL011's or another
    /// transport's.
    TransportSpi {
        /// The SPI.
        spi: u32,
    },
    /// The DMA pool is empty, not 4 KiB aligned, not inside guest RAM, or overlaps the
    /// initramfs.
    DmaPoolPlacement,
}

/// The pool's phandle.
const DMA_POOL_PHANDLE: u32 = 3;
/// The granule the pool is shared in.
const PAGE: u64 = 0x1000;

/// The device tree of a VM without virtio. `None` if it does not fit in `out`.
pub fn vm_tree(out: &mut [u8], t: &VmTree<'_>) -> Option<usize> {
    vm_tree_with_virtio(out, t, &Virtio::NONE).ok()
}

/// The device tree of a VM with virtio-mmio transports and, for a protected VM, the
/// restricted DMA pool (see the module documentation); returns its size.
///
/// # Errors
///
/// A [`TreeError`] if the transports or the pool are not placed as it says, or the tree does
/// not fit in `out`. Nothing useful is in `out` then.
pub fn vm_tree_with_virtio(out: &mut [u8], t: &VmTree<'_>, v: &Virtio<'_>) -> Result<usize, TreeError> {
    check_virtio(t, v)?;
    let mut w = FdtWriter::new();
    w.begin("");
    w.cells("interrupt-parent", &[GIC_PHANDLE]);
    common(&mut w, t.ram.0, t.ram.1, t.vcpus);
    reserved_memory(&mut w, t.dice, v.dma_pool);
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
    virtio(&mut w, v);
    w.end();
    w.finish(out).ok_or(TreeError::DoesNotFit)
}

/// Whether `a` (start, size) and `b` overlap; a range that wraps overlaps everything.
fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    match (a.0.checked_add(a.1), b.0.checked_add(b.1)) {
        (Some(a_end), Some(b_end)) => a.0 < b_end && b.0 < a_end,
        _ => true,
    }
}

/// Checks [`vm_tree_with_virtio`]'s placement rules.
fn check_virtio(t: &VmTree<'_>, v: &Virtio<'_>) -> Result<(), TreeError> {
    use crate::virtio::mmio::FRAME_SIZE;
    let fixed = [t.ram, (t.uart.0, 0x1000), (t.gicd, 0x1_0000), (t.gicr, u64::from(t.vcpus) * 0x2_0000)];
    for (i, tr) in v.transports.iter().enumerate() {
        let frame = (tr.base, FRAME_SIZE);
        let others = v.transports[..i].iter().map(|o| (o.base, FRAME_SIZE));
        if !tr.base.is_multiple_of(FRAME_SIZE) || fixed.into_iter().chain(others).any(|r| overlaps(frame, r)) {
            return Err(TreeError::TransportPlacement { base: tr.base });
        }
        let spi_taken = tr.spi == t.uart.1 || v.transports[..i].iter().any(|o| o.spi == tr.spi);
        if tr.spi as usize >= crate::vgic::NR_SPIS || spi_taken {
            return Err(TreeError::TransportSpi { spi: tr.spi });
        }
    }
    if let Some(p) = v.dma_pool {
        let in_ram = p.base >= t.ram.0 && p.base.checked_add(p.size).is_some_and(|end| end <= t.ram.0.saturating_add(t.ram.1));
        let initrd = t.initrd.is_some_and(|(s, e)| overlaps((p.base, p.size), (s, e.saturating_sub(s))));
        if p.size == 0 || !p.base.is_multiple_of(PAGE) || !p.size.is_multiple_of(PAGE) || !in_ram || initrd {
            return Err(TreeError::DmaPoolPlacement);
        }
    }
    Ok(())
}

/// A node name `prefix@<addr in hex>` in `buf`.
fn unit_name<'b>(buf: &'b mut [u8; 40], prefix: &'b str, addr: u64) -> &'b str {
    let mut hex = [0u8; 16];
    let mut n = 0;
    let mut a = addr;
    loop {
        hex[n] = b"0123456789abcdef"[(a & 0xF) as usize];
        n += 1;
        a >>= 4;
        if a == 0 {
            break;
        }
    }
    let p = prefix.len().min(buf.len() - 17);
    buf[..p].copy_from_slice(&prefix.as_bytes()[..p]);
    buf[p] = b'@';
    for i in 0..n {
        buf[p + 1 + i] = hex[n - 1 - i];
    }
    core::str::from_utf8(&buf[..p + 1 + n]).unwrap_or(prefix)
}

/// The transports (the pool is under `/reserved-memory`, [`reserved_memory`]).
fn virtio(w: &mut FdtWriter, v: &Virtio<'_>) {
    let mut name = [0u8; 40];
    for tr in v.transports {
        w.begin(unit_name(&mut name, "virtio_mmio", tr.base));
        w.string("compatible", "virtio,mmio");
        w.cells("reg", &[hi(tr.base), lo(tr.base), 0, crate::virtio::mmio::FRAME_SIZE as u32]);
        w.cells("interrupts", &[GIC_SPI, tr.spi, IRQ_LEVEL_HIGH]);
        w.prop("dma-coherent", &[]);
        if v.dma_pool.is_some() {
            w.cells("memory-region", &[DMA_POOL_PHANDLE]);
        }
        w.end();
    }
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn lo(v: u64) -> u32 {
    v as u32
}

/// Root properties, memory, cpus (PSCI over HVC), psci and the PL011's clock.
fn common(w: &mut FdtWriter, ram_base: u64, ram_size: u64, vcpus: u32) {
    w.cells("#address-cells", &[2]);
    w.cells("#size-cells", &[2]);
    w.string("compatible", "linux,dummy-virt");
    w.string("model", "pkvm-rs guest");
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

    const TREE: VmTree<'static> = VmTree {
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
    fn the_tree_describes_the_machine() {
        let mut buf = [0u8; 16384];
        let n = vm_tree(&mut buf, &TREE).unwrap();
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

    /// Two transports where QEMU's `virt` puts its first two.
    const TRANSPORTS: [VirtioMmioNode; 2] = [VirtioMmioNode { base: 0x0A00_0000, spi: 16 }, VirtioMmioNode { base: 0x0A00_0200, spi: 17 }];
    /// 4 MiB of RAM below the initramfs.
    const POOL: DmaPool = DmaPool { base: 0x5E00_0000, size: 4 << 20 };

    fn is_virtio(n: &fdt::node::FdtNode<'_, '_>) -> bool {
        n.compatible().is_some_and(|c| c.all().any(|s| s == "virtio,mmio"))
    }

    #[test]
    fn a_protected_guests_transports_use_the_restricted_dma_pool() {
        let mut buf = [0u8; 16384];
        let n = vm_tree_with_virtio(&mut buf, &TREE, &Virtio { transports: &TRANSPORTS, dma_pool: Some(POOL) }).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        // /reserved-memory with the root's cell sizes and an empty ranges.
        let rm = fdt.find_node("/reserved-memory").unwrap();
        assert_eq!(cells(rm.property("#address-cells").unwrap().value), [2]);
        assert_eq!(cells(rm.property("#size-cells").unwrap().value), [2]);
        assert_eq!(rm.property("ranges").unwrap().value, b"");
        let pools: std::vec::Vec<_> = rm.children().collect();
        assert_eq!(pools.len(), 1);
        let pool = pools[0];
        assert_eq!(pool.name, "restricted-dma-pool@5e000000");
        assert_eq!(pool.property("compatible").unwrap().value, b"restricted-dma-pool\0");
        assert_eq!(cells(pool.property("reg").unwrap().value), [0, 0x5E00_0000, 0, 0x40_0000]);
        assert!(pool.property("no-map").is_none() && pool.property("reusable").is_none(), "the binding forbids both");
        let phandle = cells(pool.property("phandle").unwrap().value);
        // Each transport: reg, its SPI (level-high), dma-coherent, the pool.
        let transports: std::vec::Vec<_> = fdt.all_nodes().filter(is_virtio).collect();
        assert_eq!(transports.len(), 2);
        for (node, t) in transports.iter().zip(TRANSPORTS) {
            assert_eq!(node.name, std::format!("virtio_mmio@{:x}", t.base));
            assert_eq!(cells(node.property("reg").unwrap().value), [0, t.base as u32, 0, 0x200]);
            assert_eq!(cells(node.property("interrupts").unwrap().value), [0, t.spi, 4]);
            assert_eq!(node.property("dma-coherent").unwrap().value, b"");
            assert_eq!(cells(node.property("memory-region").unwrap().value), phandle);
            assert!(node.property("interrupt-parent").is_none(), "the root's: the GIC");
        }
        let gic = fdt.find_phandle(cells(fdt.root().property("interrupt-parent").unwrap().value)[0]).unwrap();
        assert_eq!(gic.compatible().unwrap().first(), "arm,gic-v3");
        assert_eq!(fdt.find_phandle(phandle[0]).unwrap().name, pool.name);
        // Phandles are unique.
        let mut all: std::vec::Vec<u32> = fdt.all_nodes().filter_map(|n| n.property("phandle")).map(|p| cells(p.value)[0]).collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }

    #[test]
    fn the_handover_page_and_the_pool_share_one_reserved_memory_node() {
        // Linux scans only the first /reserved-memory: a second one (the pool's, once) was
        // ignored, and the transports' memory-region failed ("failed to initialise
        // \"restricted-dma-pool\" memory node").
        let mut buf = [0u8; 16384];
        let tree = VmTree { dice: Some(0x5FF0_0000), ..TREE };
        let n = vm_tree_with_virtio(&mut buf, &tree, &Virtio { transports: &TRANSPORTS, dma_pool: Some(POOL) }).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        assert_eq!(fdt.find_node("/").unwrap().children().filter(|c| c.name == "reserved-memory").count(), 1);
        let names: std::vec::Vec<_> = fdt.find_node("/reserved-memory").unwrap().children().map(|c| c.name).collect();
        assert_eq!(names, ["dice", "restricted-dma-pool@5e000000"]);
        let pool = fdt.find_compatible(&["restricted-dma-pool"]).unwrap();
        assert_eq!(cells(pool.property("reg").unwrap().value), [0, 0x5E00_0000, 0, 0x40_0000]);
        let dice = fdt.find_compatible(&["google,open-dice"]).unwrap();
        assert_eq!(cells(dice.property("reg").unwrap().value), [0, 0x5FF0_0000, 0, 0x1000]);
        // The handover page alone (a non-protected VM's tree).
        let n = vm_tree_with_virtio(&mut buf, &tree, &Virtio { transports: &TRANSPORTS, dma_pool: None }).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        assert_eq!(fdt.find_node("/reserved-memory").unwrap().children().map(|c| c.name).collect::<std::vec::Vec<_>>(), ["dice"]);
    }

    #[test]
    fn a_non_protected_guests_transports_reach_all_of_ram() {
        let mut buf = [0u8; 16384];
        let n = vm_tree_with_virtio(&mut buf, &TREE, &Virtio { transports: &TRANSPORTS, dma_pool: None }).unwrap();
        let fdt = fdt::Fdt::new(&buf[..n]).unwrap();
        assert!(fdt.find_node("/reserved-memory").is_none());
        let transports: std::vec::Vec<_> = fdt.all_nodes().filter(is_virtio).collect();
        assert_eq!(transports.len(), 2);
        assert!(transports.iter().all(|t| t.property("memory-region").is_none() && t.property("dma-coherent").is_some()));
    }

    #[test]
    fn without_virtio_the_tree_is_unchanged() {
        let (mut a, mut b) = ([0u8; 16384], [0u8; 16384]);
        let n = vm_tree(&mut a, &TREE).unwrap();
        assert_eq!(vm_tree_with_virtio(&mut b, &TREE, &Virtio::NONE), Ok(n));
        assert_eq!(a[..n], b[..n]);
        let fdt = fdt::Fdt::new(&a[..n]).unwrap();
        assert_eq!(fdt.all_nodes().filter(is_virtio).count(), 0);
    }

    #[test]
    fn transports_must_sit_alone_on_their_own_spi() {
        let mut buf = [0u8; 16384];
        let one = |base, spi| [VirtioMmioNode { base, spi }];
        let tree = |out: &mut [u8], t: &[VirtioMmioNode]| vm_tree_with_virtio(out, &TREE, &Virtio { transports: t, dma_pool: None });
        for base in [0x0A00_0100, 0x4000_0000, 0x5FFF_FE00, 0x0900_0000, 0x0800_0000, 0x080A_0000 + 0x2_0000, !0x1FF] {
            assert_eq!(tree(&mut buf, &one(base, 16)), Err(TreeError::TransportPlacement { base }), "{base:#x}");
        }
        assert_eq!(tree(&mut buf, &[TRANSPORTS[0], TRANSPORTS[0]]), Err(TreeError::TransportPlacement { base: 0x0A00_0000 }));
        for spi in [64, u32::MAX, 1] {
            assert_eq!(tree(&mut buf, &one(0x0A00_0000, spi)), Err(TreeError::TransportSpi { spi }), "SPI {spi}");
        }
        let same_spi = [TRANSPORTS[0], VirtioMmioNode { spi: 16, ..TRANSPORTS[1] }];
        assert_eq!(tree(&mut buf, &same_spi), Err(TreeError::TransportSpi { spi: 16 }));
        // Just past RAM and the last SPI are fine.
        assert!(tree(&mut buf, &one(0x6000_0000, 63)).is_ok());
        let mut small = [0u8; 512];
        assert_eq!(tree(&mut small, &TRANSPORTS), Err(TreeError::DoesNotFit));
    }

    #[test]
    fn the_dma_pool_must_be_whole_pages_of_ram_clear_of_the_initramfs() {
        let mut buf = [0u8; 16384];
        let with = |p| Virtio { transports: &TRANSPORTS, dma_pool: Some(p) };
        for (base, size) in [
            (0x5E00_0000, 0),
            (0x5E00_0800, 0x1000),
            (0x5E00_0000, 0x1800),
            (0x3FFF_F000, 0x2000),
            (0x5FFF_F000, 0x2000),
            (0x5F10_0000, 0x1000),
            (0x5EFF_F000, 0x2000),
            (!0xFFF, 0x2000),
        ] {
            let r = vm_tree_with_virtio(&mut buf, &TREE, &with(DmaPool { base, size }));
            assert_eq!(r, Err(TreeError::DmaPoolPlacement), "{base:#x} + {size:#x}");
        }
        for (base, size) in [(0x4000_0000, 0x1000), (0x5FFF_F000, 0x1000), (0x5F12_4000, 0x1000)] {
            assert!(vm_tree_with_virtio(&mut buf, &TREE, &with(DmaPool { base, size })).is_ok(), "{base:#x}");
        }
    }

    #[test]
    fn unit_names_are_lowercase_hex_without_leading_zeros() {
        let mut b = [0u8; 40];
        assert_eq!(unit_name(&mut b, "x", 0), "x@0");
        assert_eq!(unit_name(&mut b, "virtio_mmio", 0x0A00_0000), "virtio_mmio@a000000");
        assert_eq!(unit_name(&mut b, "restricted-dma-pool", u64::MAX), "restricted-dma-pool@ffffffffffffffff");
    }

    #[test]
    fn the_handover_page_is_reserved_memory_for_open_dice() {
        let mut buf = [0u8; 16384];
        let n = vm_tree(&mut buf, &VmTree { dice: Some(0x40FE_F000), ..TREE }).unwrap();
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
        assert_eq!(vm_tree(&mut small, &TREE), None);
        let long = "x".repeat(4096);
        let mut buf = [0u8; 16384];
        assert_eq!(vm_tree(&mut buf, &VmTree { bootargs: &long, ..TREE }), None, "bootargs over 4095 bytes");
        let most = "y".repeat(4095);
        let n = vm_tree(&mut buf, &VmTree { bootargs: &most, ..TREE }).unwrap();
        assert_eq!(fdt::Fdt::new(&buf[..n]).unwrap().chosen().bootargs().map(str::len), Some(4095));
        let mut w = FdtWriter::new();
        w.cells("too-many", &[0; 17]);
        assert_eq!(w.finish(&mut buf), None);
    }
}
