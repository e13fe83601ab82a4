//! The one virtual machine every guest boots on, in one place for the VMM that builds it and
//! for whoever computes its measurement offline (`cargo xtask measure`): its physical map, how
//! a guest is laid out in its RAM, and the measurement EL2 will seal of that.
//!
//! # The machine
//!
//! Modelled on QEMU's `virt`, so that what boots there boots here: RAM at [`GUEST_RAM`] (its
//! size is the VM's), PSCI over `HVC`, a GICv3 ([`GICD`], [`GICR`]: one 128 KiB frame per
//! vCPU), the architected timers, a PL011 at [`UART`] with its interrupt ([`UART_SPI`]),
//! `/chosen/bootargs` and an initramfs, a virtio-console ([`VIRTIO_CONSOLE`]) and, given a disk,
//! a virtio-blk ([`VIRTIO_BLK`]). The host VMM also answers a test device at [`TEST_DEVICE`],
//! through which the project's scenarios talk to their guests; it is not in the device tree.
//!
//! # Layout
//!
//! [`lay_out`] puts the kernel where its format says (an `Image` at its `text_offset`, one of the
//! project's ELF guests where it links itself, a raw image such as a kvm-unit-tests `.flat` at
//! RAM + 0x80000), the initramfs just below the device tree at the top of RAM, the measurement
//! handover page below the initramfs, and, for a protected VM, the restricted DMA pool below
//! the handover page; and it returns the runs of RAM the VMM gives with `VM_ADD_MEMORY`. Its
//! measurement is [`measurement`] of the same.
//!
//! # Virtio
//!
//! A protected VM's devices reach only what the guest shares, so its tree names a
//! `restricted-dma-pool` of [`DMA_POOL_SIZE`] bytes that its drivers bounce every buffer
//! through ([`crate::fdt`], *Virtio and the restricted DMA pool*): the pages just below the
//! handover page, above the kernel image, given as empty (zeroed, unmeasured) memory like the
//! rest of the free RAM; only the tree that names it is measured.

use crate::fdt::{vm_tree_with_virtio, DmaPool, TreeError, Virtio, VirtioMmioNode, VmTree};
use crate::loader::{
    image_header, kernel_format, linux_layout, load_elf, load_linux, ram_chunks, raw_header, Chunk, ChunkKind, KernelFormat, KernelFormatError, LinuxLayout, DTB_SPACE, MAX_CHUNKS,
};
use shared_abi::measure::Measurement;
use shared_abi::msg::VmCreate;

/// Guest RAM base (IPA).
pub const GUEST_RAM: u64 = 0x4000_0000;
/// `PSTATE` of vCPU 0 as the VMM leaves it (EL2's reset value: EL1h, D/A/I/F masked).
pub const BOOT_PSTATE: u64 = 0x3C5;
/// The test device's register (IPA): in no device tree, answered only by the scenarios'
/// VMM (the host's `host_vmm`).
pub const TEST_DEVICE: u64 = 0x0b00_0000;

/// The PL011's frame (IPA), as in QEMU's `virt`.
pub const UART: u64 = 0x0900_0000;
/// Its SPI (INTID 32 + 1 = 33), as in QEMU's `virt`.
pub const UART_SPI: u32 = 1;
/// The GICv3 distributor (IPA).
pub const GICD: u64 = 0x0800_0000;
/// The redistributors (IPA): one 128 KiB frame per vCPU.
pub const GICR: u64 = 0x080A_0000;
const PAGE: u64 = 4096;
/// The virtio-console transport (IPA, SPI), as the first of QEMU `virt`'s virtio-mmio frames.
pub const VIRTIO_CONSOLE: VirtioMmioNode = VirtioMmioNode { base: 0x0a00_0000, spi: 16 };
/// The virtio-blk transport of a VM given a disk (IPA, SPI), the next frame.
pub const VIRTIO_BLK: VirtioMmioNode = VirtioMmioNode { base: 0x0a00_0200, spi: 17 };
/// The size of a protected VM's restricted DMA pool.
pub const DMA_POOL_SIZE: u64 = 8 << 20;

/// The console a Linux command line gives `/dev/console` (and so the shell of an interactive
/// boot): the last `console=` names it, as in Linux's `console_setup`. `Hvc`: the
/// virtio-console (`hvc0`); `Uart`: the PL011 (`ttyAMA0`, also Linux's choice without any
/// `console=`, from the device tree's `stdout-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleDevice {
    /// The PL011.
    Uart,
    /// The virtio-console.
    Hvc,
}

impl ConsoleDevice {
    /// Which device `bootargs` makes the console.
    pub fn from_bootargs(bootargs: &str) -> Self {
        match bootargs.split_ascii_whitespace().filter_map(|w| w.strip_prefix("console=")).last() {
            Some(name) if name.starts_with("hvc") => Self::Hvc,
            _ => Self::Uart,
        }
    }
}

/// What a Linux VM has besides its kernel: the parts of the layout and device tree that differ
/// between VMs booting the same files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// A protected VM: its virtio buffers go through a restricted DMA pool.
    pub protected: bool,
    /// It has a disk (a virtio-blk transport).
    pub disk: bool,
}

impl Devices {
    /// The transports in the tree.
    pub fn transports(&self) -> &'static [VirtioMmioNode] {
        const BOTH: [VirtioMmioNode; 2] = [VIRTIO_CONSOLE, VIRTIO_BLK];
        if self.disk {
            &BOTH
        } else {
            &BOTH[..1]
        }
    }
}

/// A Linux VM laid out in its RAM `mem`.
pub struct Laid {
    /// The runs of RAM to give, in order (`chunks[..count]`).
    pub chunks: [Chunk; MAX_CHUNKS],
    /// How many.
    pub count: usize,
    /// vCPU 0's entry point (IPA).
    pub entry: u64,
    /// The device tree (IPA): vCPU 0's `x0`.
    pub dtb: u64,
    /// Where things went (offsets from the RAM base).
    pub layout: LinuxLayout,
    /// The restricted DMA pool (IPA), for a protected VM.
    pub dma_pool: Option<DmaPool>,
    /// The measurement handover page (offset from the RAM base).
    pub handover: u64,
}

/// Where a protected VM's pool goes: the [`DMA_POOL_SIZE`] bytes just below the handover page
/// (offset from the RAM base), which must leave the kernel image (up to `image_end`) clear.
fn dma_pool(handover: u64, image_end: u64) -> Result<DmaPool, &'static str> {
    let base = handover.checked_sub(DMA_POOL_SIZE).filter(|&b| b >= image_end.next_multiple_of(PAGE));
    let base = base.ok_or("guest RAM too small for the kernel and the restricted DMA pool")?;
    Ok(DmaPool { base: GUEST_RAM + base, size: DMA_POOL_SIZE })
}

/// Lays out `kernel` (an arm64 `Image`, an ELF test guest, or a raw image:
/// [`kernel_format`]), `initrd` and the device tree for `vcpus` vCPUs, command line `bootargs`
/// and `devices` in `mem` (the VM's RAM). vCPU 0 starts at [`Laid::entry`] with `x0` =
/// [`Laid::dtb`]: an `Image`'s or a raw image's first byte, an ELF's entry point.
///
/// # Errors
/// What does not fit or is not a kernel.
pub fn lay_out(mem: &mut [u8], kernel: &[u8], initrd: &[u8], vcpus: u32, bootargs: &str, devices: Devices) -> Result<Laid, &'static str> {
    let ram = mem.len() as u64;
    let header = match kernel_format(kernel).map_err(KernelFormatError::message)? {
        KernelFormat::Elf => None,
        KernelFormat::Image => Some(image_header(kernel)?),
        // Its memory's end is unknown: its length, then the room `linux_layout` keeps free.
        KernelFormat::Raw => Some(raw_header(kernel.len() as u64)),
    };
    // `image_end`: where the kernel's memory ends (BSS included, as far as it is known).
    let (entry, layout, image_span, image_end) = match header {
        None => {
            let loaded = load_elf(mem, GUEST_RAM, kernel)?;
            let dtb = ram.checked_sub(DTB_SPACE).ok_or("guest RAM too small")?;
            (loaded.entry, LinuxLayout { kernel: 0, initrd: None, dtb }, loaded.span, loaded.span.1)
        }
        Some(header) => {
            let layout = linux_layout(&header, initrd.len() as u64, ram)?;
            load_linux(mem, &layout, kernel, initrd)?;
            let span = (layout.kernel, layout.kernel + kernel.len() as u64);
            (GUEST_RAM + layout.kernel, layout, span, layout.kernel + header.image_size)
        }
    };
    let handover = layout.initrd.map_or(layout.dtb, |(s, _)| s).checked_sub(PAGE).ok_or("guest RAM too small")?;
    let pool = if devices.protected { Some(dma_pool(handover, image_end)?) } else { None };
    let tree = VmTree {
        ram: (GUEST_RAM, ram),
        vcpus,
        uart: (UART, UART_SPI),
        gicd: GICD,
        gicr: GICR,
        initrd: layout.initrd.map(|(s, e)| (GUEST_RAM + s, GUEST_RAM + e)),
        bootargs,
        dice: Some(GUEST_RAM + handover),
    };
    let dtb = layout.dtb as usize;
    let virtio = Virtio { transports: devices.transports(), dma_pool: pool };
    let n = vm_tree_with_virtio(&mut mem[dtb..dtb + DTB_SPACE as usize], &tree, &virtio).map_err(|e| match e {
        TreeError::DoesNotFit => "device tree does not fit",
        TreeError::TransportPlacement { .. } | TreeError::TransportSpi { .. } => "virtio transports misplaced",
        TreeError::DmaPoolPlacement => "restricted DMA pool misplaced",
    })?;
    let spans = [image_span, layout.initrd.unwrap_or((0, 0)), (layout.dtb, layout.dtb + n as u64)];
    clear_slack(mem, &spans);
    let (chunks, count) = ram_chunks(ram, &spans, Some(handover))?;
    Ok(Laid { chunks, count, entry, dtb: GUEST_RAM + layout.dtb, layout, dma_pool: pool, handover })
}

/// Zeroes what shares a page with a span in `spans` but lies outside every span, so that the
/// pages the VMM gives as content hold nothing it did not put there on purpose (the
/// measurement is of whole pages).
pub fn clear_slack(mem: &mut [u8], spans: &[(u64, u64)]) {
    let inside = |a: u64| spans.iter().any(|&(s, e)| a >= s && a < e);
    for &(s, e) in spans.iter().filter(|(s, e)| e > s) {
        let (first, last) = (s / PAGE * PAGE, (e.div_ceil(PAGE) * PAGE).min(mem.len() as u64));
        for a in (first..s).chain(e..last) {
            if !inside(a) {
                mem[a as usize] = 0;
            }
        }
    }
}

/// The measurement EL2 will seal for a VM created with `config` (vCPUs, IPA size, flags, SVE
/// length), laid out in `mem` by [`lay_out`] (`chunks`) with vCPU 0 at `entry`, `x0` = `dtb`.
pub fn measurement(mem: &[u8], chunks: &[Chunk], config: &VmCreate, entry: u64, dtb: u64) -> [u8; 32] {
    let mut m = Measurement::new(config.nr_vcpus, config.ipa_bits, config.flags, config.sve_vl);
    for c in chunks {
        let ipa = GUEST_RAM + c.offset;
        match c.kind {
            ChunkKind::Content => {
                for p in 0..c.pages {
                    let at = (c.offset + p * PAGE) as usize;
                    let mut page = [0u8; 4096];
                    page.copy_from_slice(&mem[at..at + 4096]);
                    m.page(ipa + p * PAGE, &page);
                }
            }
            ChunkKind::Empty => m.zero(ipa, c.pages),
            ChunkKind::Handover => m.handover(ipa, c.pages),
        }
    }
    let mut x = [0u64; 31];
    x[0] = dtb;
    m.seal(&x, entry, BOOT_PSTATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    /// The VM configuration of a test: `vcpus`, a 36-bit IPA, `flags`, no SVE.
    fn config(vcpus: u32, flags: u64) -> VmCreate {
        VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 }
    }

    #[test]
    fn slack_is_cleared_and_content_kept() {
        let mut mem = std::vec![0x5Au8; 3 * 4096];
        clear_slack(&mut mem, &[(0x100, 0x200), (0x1000, 0x1010)]);
        assert_eq!((mem[0xFF], mem[0x100], mem[0x1FF], mem[0x200], mem[0xFFF]), (0, 0x5A, 0x5A, 0, 0));
        assert_eq!((mem[0x100F], mem[0x1010], mem[0x2000]), (0x5A, 0, 0x5A), "pages without a span are not touched");
    }

    /// A minimal arm64 `Image`: the header's magic, `text_offset` 0, `image_size` 1 MiB.
    fn image() -> std::vec::Vec<u8> {
        let mut k = std::vec![0u8; 0x2000];
        k[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
        k[56..60].copy_from_slice(b"ARM\x64");
        k[100] = 7;
        k
    }

    #[test]
    fn a_linux_vm_is_laid_out_and_measured_alike_whatever_ram_held() {
        let (kernel, initrd) = (image(), std::vec![9u8; 5000]);
        let mut a = std::vec![0u8; 64 << 20];
        let la = lay_out(&mut a, &kernel, &initrd, 2, "console=ttyAMA0", PROTECTED).unwrap();
        let mut b = std::vec![0x5Au8; 64 << 20];
        let lb = lay_out(&mut b, &kernel, &initrd, 2, "console=ttyAMA0", PROTECTED).unwrap();
        let m = |mem: &[u8], l: &Laid| measurement(mem, &l.chunks[..l.count], &config(2, 1), l.entry, l.dtb);
        assert_eq!(m(&a, &la), m(&b, &lb), "leftovers never count");
        let mut c = std::vec![0u8; 64 << 20];
        let lc = lay_out(&mut c, &kernel, &initrd, 2, "console=ttyAMA0 quiet", PROTECTED).unwrap();
        assert_ne!(m(&a, &la), m(&c, &lc), "the command line is measured (in the device tree)");
        assert_eq!(la.entry, GUEST_RAM);
    }

    /// A raw image: no `Image` header, no ELF magic (the first instruction, then filler).
    fn raw(len: usize) -> std::vec::Vec<u8> {
        let mut k: std::vec::Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        k[..4].copy_from_slice(&0x1400_0000u32.to_le_bytes()); // b .
        k
    }

    #[test]
    fn a_raw_image_lands_at_ram_plus_0x80000_and_is_entered_at_its_first_byte() {
        use crate::loader::RAW_IMAGE_OFFSET;
        let (kernel, initrd) = (raw(91_584), std::vec![9u8; 5000]);
        let mut mem = std::vec![0x5Au8; 64 << 20];
        let l = lay_out(&mut mem, &kernel, &initrd, 2, "selftest setup smp=2", PROTECTED).unwrap();
        assert_eq!(l.entry, GUEST_RAM + RAW_IMAGE_OFFSET, "QEMU's -kernel address for a file it does not recognise");
        assert_eq!(l.layout.kernel, RAW_IMAGE_OFFSET);
        let at = RAW_IMAGE_OFFSET as usize;
        assert_eq!(&mem[at..at + kernel.len()], &kernel[..]);
        // Below it nothing was loaded: an empty run of RAM, not content.
        assert_eq!((l.chunks[0].offset, l.chunks[0].pages, l.chunks[0].kind), (0, RAW_IMAGE_OFFSET / PAGE, ChunkKind::Empty));
        assert_eq!((l.chunks[1].offset, l.chunks[1].kind), (RAW_IMAGE_OFFSET, ChunkKind::Content));
        assert_eq!(l.chunks[1].pages, (kernel.len() as u64).div_ceil(PAGE));
        // Its memory's end is unknown: at least 16 MiB free above its last byte before the
        // pool, the handover page, the initramfs and the tree.
        let image_end = RAW_IMAGE_OFFSET + kernel.len() as u64;
        let (initrd_start, initrd_end) = l.layout.initrd.unwrap();
        assert_eq!(&mem[initrd_start as usize..initrd_end as usize], &initrd[..]);
        assert!(l.dma_pool.unwrap().base - GUEST_RAM >= image_end + (8 << 20));
        assert!(initrd_start >= image_end + (16 << 20));
        assert_eq!(l.dtb, GUEST_RAM + (64 << 20) - DTB_SPACE);
        // The tree carries the program's own arguments, and nothing else, as bootargs.
        let tree = &mem[(l.dtb - GUEST_RAM) as usize..][..DTB_SPACE as usize];
        assert!(tree.windows(20).any(|w| w == b"selftest setup smp=2"));
        // Laid out alike whatever RAM held: its measurement is computable offline.
        let mut zero = std::vec![0u8; 64 << 20];
        let lz = lay_out(&mut zero, &kernel, &initrd, 2, "selftest setup smp=2", PROTECTED).unwrap();
        let m = |mem: &[u8], l: &Laid| measurement(mem, &l.chunks[..l.count], &config(2, 1), l.entry, l.dtb);
        assert_eq!(m(&mem, &l), m(&zero, &lz));
    }

    #[test]
    fn a_raw_image_that_leaves_no_room_is_refused() {
        // 64 MiB of RAM: 0x80000 + the image + 16 MiB + the tree must fit.
        let mut mem = std::vec![0u8; 64 << 20];
        assert!(lay_out(&mut mem, &raw((40 << 20) - 0x8_0000), &[], 1, "", Devices::default()).is_ok());
        let e = lay_out(&mut mem, &raw(48 << 20), &[], 1, "", Devices::default()).err();
        assert_eq!(e, Some("guest RAM too small for the kernel, its initramfs and the device tree"));
    }

    #[test]
    fn images_and_elf_guests_are_still_told_from_raw_images() {
        let mut mem = std::vec![0u8; 64 << 20];
        // An `Image` at its text_offset (0), an ELF at its own entry, a raw image at 0x80000.
        assert_eq!(lay_out(&mut mem, &image(), &[], 1, "", Devices::default()).unwrap().entry, GUEST_RAM);
        let mut elf = std::vec![0u8; 0x1000];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        elf[24..32].copy_from_slice(&0x4010_0000u64.to_le_bytes());
        assert_eq!(lay_out(&mut mem, &elf, &[], 1, "", Devices::default()).unwrap().entry, 0x4010_0000);
        assert_eq!(lay_out(&mut mem, &raw(4096), &[], 1, "", Devices::default()).unwrap().entry, GUEST_RAM + 0x8_0000);
        // A compressed or empty file is no kernel; a big-endian Image is refused.
        let gz = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
        assert_eq!(lay_out(&mut mem, &gz, &[], 1, "", Devices::default()).err(), Some(KernelFormatError::Compressed.message()));
        assert_eq!(lay_out(&mut mem, &[], &[], 1, "", Devices::default()).err(), Some(KernelFormatError::Empty.message()));
        let mut be = image();
        be[0x18] = 1;
        assert_eq!(lay_out(&mut mem, &be, &[], 1, "", Devices::default()).err(), Some(KernelFormatError::BigEndian.message()));
    }

    #[test]
    fn the_last_console_argument_names_the_console() {
        use ConsoleDevice::{Hvc, Uart};
        for (args, want) in [
            ("", Uart),
            ("panic=-1 quiet", Uart),
            ("console=ttyAMA0", Uart),
            ("console=hvc0", Hvc),
            ("console=ttyAMA0 panic=-1 console=hvc0", Hvc),
            ("console=hvc0 console=ttyAMA0", Uart),
            ("earlycon console=hvc0,115200 init=/init", Hvc),
            ("xconsole=hvc0", Uart),
        ] {
            assert_eq!(ConsoleDevice::from_bootargs(args), want, "{args:?}");
        }
    }

    const PROTECTED: Devices = Devices { protected: true, disk: false };

    #[test]
    fn a_protected_vm_gets_a_pool_below_the_handover_page_as_empty_memory() {
        let (kernel, initrd) = (image(), std::vec![9u8; 5000]);
        let mut mem = std::vec![0u8; 64 << 20];
        let l = lay_out(&mut mem, &kernel, &initrd, 1, "", Devices { protected: true, disk: true }).unwrap();
        let (initrd_start, _) = l.layout.initrd.unwrap();
        let handover = initrd_start - PAGE;
        let pool = l.dma_pool.unwrap();
        assert_eq!((pool.base, pool.size), (GUEST_RAM + handover - DMA_POOL_SIZE, DMA_POOL_SIZE));
        // Clear of the kernel's whole image (1 MiB, BSS included), in one empty chunk.
        assert!(pool.base - GUEST_RAM >= 1 << 20);
        let (s, e) = (pool.base - GUEST_RAM, pool.base - GUEST_RAM + pool.size);
        let c = l.chunks[..l.count].iter().find(|c| c.offset <= s && s < c.offset + c.pages * PAGE).unwrap();
        assert_eq!(c.kind, ChunkKind::Empty);
        assert!(c.offset + c.pages * PAGE >= e, "the pool is one run of empty pages");
        // The handover page is the next one.
        let h = l.chunks[..l.count].iter().find(|c| c.kind == ChunkKind::Handover).unwrap();
        assert_eq!(h.offset, e);
    }

    #[test]
    fn a_non_protected_vm_gets_no_pool_and_the_tree_names_what_it_has() {
        let kernel = image();
        let m = |mem: &[u8], l: &Laid| measurement(mem, &l.chunks[..l.count], &config(1, 0), l.entry, l.dtb);
        let mut a = std::vec![0u8; 32 << 20];
        let la = lay_out(&mut a, &kernel, &[], 1, "", Devices::default()).unwrap();
        assert_eq!(la.dma_pool, None);
        let mut b = std::vec![0u8; 32 << 20];
        let lb = lay_out(&mut b, &kernel, &[], 1, "", Devices { protected: false, disk: true }).unwrap();
        let mut c = std::vec![0u8; 32 << 20];
        let lc = lay_out(&mut c, &kernel, &[], 1, "", Devices { protected: true, disk: false }).unwrap();
        assert_ne!(m(&a, &la), m(&b, &lb), "the disk's transport is in the measured tree");
        assert_ne!(m(&a, &la), m(&c, &lc), "so is the pool");
        let tree = |mem: &[u8], l: &Laid| mem[(l.dtb - GUEST_RAM) as usize..][..DTB_SPACE as usize].to_vec();
        let has = |t: &[u8], s: &[u8]| t.windows(s.len()).any(|w| w == s);
        assert!(has(&tree(&a, &la), b"virtio_mmio@a000000") && !has(&tree(&a, &la), b"virtio_mmio@a000200"));
        assert!(has(&tree(&b, &lb), b"virtio_mmio@a000200"));
        assert!(has(&tree(&c, &lc), b"restricted-dma-pool") && !has(&tree(&a, &la), b"restricted-dma-pool"));
    }

    #[test]
    fn a_pool_that_would_reach_the_kernel_is_refused() {
        // (An `Image` always leaves room: `linux_layout` keeps 16 MiB above it free.)
        assert_eq!(dma_pool(16 << 20, (8 << 20) + 1).err(), Some("guest RAM too small for the kernel and the restricted DMA pool"));
        assert_eq!(dma_pool(4 << 20, 0).err(), Some("guest RAM too small for the kernel and the restricted DMA pool"));
        assert_eq!(dma_pool(16 << 20, 8 << 20).unwrap(), DmaPool { base: GUEST_RAM + (8 << 20), size: DMA_POOL_SIZE });
    }
}
