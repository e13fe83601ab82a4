//! A Linux VM's layout, in one place for the VMM that builds it and for whoever computes its
//! measurement offline (`cargo xtask measure --kernel`): the kernel `Image` at its
//! `text_offset` (or one of the project's ELF guests where it links itself), the initramfs
//! just below the device tree at the top of RAM, the measurement handover page below the
//! initramfs, the device tree (GICv3, timer, PL011, `/chosen`), and the runs of RAM the VMM
//! gives with `VM_ADD_MEMORY`. Its measurement is [`crate::testvm::measurement`] of the same.

use crate::fdt::{linux_tree, LinuxTree};
use crate::loader::{image_header, linux_layout, load_linux, load_test_image, ram_chunks, Chunk, LinuxLayout, DTB_SPACE, MAX_CHUNKS};
use crate::testvm::{clear_slack, GUEST_RAM};

/// The PL011's frame (IPA), as in QEMU's `virt`.
pub const UART: u64 = 0x0900_0000;
/// Its SPI (INTID 32 + 1 = 33), as in QEMU's `virt`.
pub const UART_SPI: u32 = 1;
/// The GICv3 distributor (IPA).
pub const GICD: u64 = 0x0800_0000;
/// The redistributors (IPA): one 128 KiB frame per vCPU.
pub const GICR: u64 = 0x080A_0000;
const PAGE: u64 = 4096;

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
}

/// Lays out `kernel` (an arm64 `Image`, or an ELF test guest), `initrd` and the device tree
/// for `vcpus` vCPUs and command line `bootargs` in `mem` (the VM's RAM).
///
/// # Errors
/// What does not fit or is not a kernel.
pub fn lay_out(mem: &mut [u8], kernel: &[u8], initrd: &[u8], vcpus: u32, bootargs: &str) -> Result<Laid, &'static str> {
    let ram = mem.len() as u64;
    let (entry, layout, image_span) = if kernel.starts_with(b"\x7fELF") {
        let loaded = load_test_image(mem, GUEST_RAM, kernel)?;
        let dtb = ram.checked_sub(DTB_SPACE).ok_or("guest RAM too small")?;
        (loaded.entry, LinuxLayout { kernel: 0, initrd: None, dtb }, loaded.span)
    } else {
        let header = image_header(kernel)?;
        let layout = linux_layout(&header, initrd.len() as u64, ram)?;
        load_linux(mem, &layout, kernel, initrd)?;
        (GUEST_RAM + layout.kernel, layout, (layout.kernel, layout.kernel + kernel.len() as u64))
    };
    let handover = layout.initrd.map_or(layout.dtb, |(s, _)| s).checked_sub(PAGE).ok_or("guest RAM too small")?;
    let tree = LinuxTree {
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
    let n = linux_tree(&mut mem[dtb..dtb + DTB_SPACE as usize], &tree).ok_or("device tree does not fit")?;
    let spans = [image_span, layout.initrd.unwrap_or((0, 0)), (layout.dtb, layout.dtb + n as u64)];
    clear_slack(mem, &spans);
    let (chunks, count) = ram_chunks(ram, &spans, Some(handover))?;
    Ok(Laid { chunks, count, entry, dtb: GUEST_RAM + layout.dtb, layout })
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

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
        let la = lay_out(&mut a, &kernel, &initrd, 2, "console=ttyAMA0").unwrap();
        let mut b = std::vec![0x5Au8; 64 << 20];
        let lb = lay_out(&mut b, &kernel, &initrd, 2, "console=ttyAMA0").unwrap();
        let m = |mem: &[u8], l: &Laid| crate::testvm::measurement(mem, &l.chunks[..l.count], 2, 36, 1, l.entry, l.dtb);
        assert_eq!(m(&a, &la), m(&b, &lb), "leftovers never count");
        let mut c = std::vec![0u8; 64 << 20];
        let lc = lay_out(&mut c, &kernel, &initrd, 2, "console=ttyAMA0 quiet").unwrap();
        assert_ne!(m(&a, &la), m(&c, &lc), "the command line is measured (in the device tree)");
        assert_eq!(la.entry, GUEST_RAM);
    }
}
