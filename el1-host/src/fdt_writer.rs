//! A minimal flattened-device-tree writer (DTSpec v0.4, version 17) for guest device trees.

const FDT_MAGIC: u32 = 0xD00D_FEED;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER: usize = 40;
const RSVMAP: usize = 16;

/// Builds a device tree in fixed buffers; [`FdtWriter::finish`] lays out the blob.
pub struct FdtWriter {
    structure: [u8; 4096],
    slen: usize,
    strings: [u8; 1024],
    tlen: usize,
    overflow: bool,
}

impl FdtWriter {
    /// An empty tree.
    pub const fn new() -> Self {
        Self { structure: [0; 4096], slen: 0, strings: [0; 1024], tlen: 0, overflow: false }
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
        let off = self.string_offset(name);
        self.put(&FDT_PROP.to_be_bytes());
        self.put(&(value.len() as u32).to_be_bytes());
        self.put(&off.to_be_bytes());
        self.put(value);
        self.pad();
    }

    /// A property of 32-bit cells.
    pub fn cells(&mut self, name: &str, cells: &[u32]) {
        let mut buf = [0u8; 64];
        for (i, c) in cells.iter().enumerate().take(16) {
            buf[4 * i..4 * i + 4].copy_from_slice(&c.to_be_bytes());
        }
        self.prop(name, &buf[..4 * cells.len().min(16)]);
    }

    /// A string property (several strings: separate them with `\0`).
    pub fn string(&mut self, name: &str, s: &str) {
        let mut buf = [0u8; 128];
        let n = s.len().min(127);
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.prop(name, &buf[..n + 1]);
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

/// The device tree of a guest: RAM, vCPUs (PSCI over HVC), the PL011 and its clock.
pub fn guest_tree(out: &mut [u8], ram_base: u64, ram_size: u64, vcpus: u32, uart: u64) -> Option<usize> {
    let hi = |v: u64| (v >> 32) as u32;
    let lo = |v: u64| v as u32;
    let mut w = FdtWriter::new();
    w.begin("");
    w.cells("#address-cells", &[2]);
    w.cells("#size-cells", &[2]);
    w.string("compatible", "linux,dummy-virt");
    w.string("model", "pkvm-rs guest");
    w.begin("chosen");
    w.string("stdout-path", "/pl011@9000000");
    w.end();
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
    w.cells("phandle", &[1]);
    w.end();
    w.begin("pl011@9000000");
    w.string("compatible", "arm,pl011\0arm,primecell");
    w.cells("reg", &[hi(uart), lo(uart), 0, 0x1000]);
    w.cells("clocks", &[1, 1]);
    w.string("clock-names", "uartclk\0apb_pclk");
    w.end();
    w.end();
    w.finish(out)
}
