//! The test VMs' layout, in one place for the VMM that builds them and for whoever computes
//! their measurement offline (`cargo xtask measure`): RAM at [`GUEST_RAM`], the image where the
//! loader puts it, the device tree in the last [`DTB_SPACE`] of RAM, the measurement handover
//! page just below it, and the runs of RAM the VMM gives with `VM_ADD_MEMORY`.

use crate::loader::{ram_chunks, Chunk, ChunkKind, Loaded, DTB_SPACE, MAX_CHUNKS};
use shared_abi::measure::Measurement;
use shared_abi::msg::VmCreate;

/// Guest RAM base (IPA).
pub const GUEST_RAM: u64 = 0x4000_0000;
/// The test VMs' console UART (IPA).
pub const UART: u64 = 0x0900_0000;
/// `PSTATE` of vCPU 0 as the VMM leaves it (EL2's reset value: EL1h, D/A/I/F masked).
pub const BOOT_PSTATE: u64 = 0x3C5;
const PAGE: u64 = 4096;

/// Where the device tree goes in `ram_size` bytes of RAM (offset from the base).
pub const fn dtb_offset(ram_size: u64) -> u64 {
    ram_size - DTB_SPACE
}

/// Where the measurement handover page goes (offset from the base): below the device tree.
pub const fn handover_offset(ram_size: u64) -> u64 {
    dtb_offset(ram_size) - PAGE
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

/// A test VM laid out in its RAM `mem` (zeroed where nothing was loaded): writes the device
/// tree (with the handover page), zeroes the slack and returns the runs of RAM to give.
///
/// # Errors
/// The device tree does not fit, or the image overlaps the tree or the handover page.
pub fn lay_out(mem: &mut [u8], loaded: &Loaded, vcpus: u32) -> Result<([Chunk; MAX_CHUNKS], usize, u64), &'static str> {
    let size = mem.len() as u64;
    if size < DTB_SPACE + PAGE || loaded.span.1 > handover_offset(size) {
        return Err("the image reaches the device tree");
    }
    let dtb = dtb_offset(size);
    let n = crate::fdt::test_guest_tree(&mut mem[dtb as usize..], GUEST_RAM, size, vcpus, UART, Some(GUEST_RAM + handover_offset(size))).ok_or("device tree does not fit")?;
    let spans = [loaded.span, (dtb, dtb + n as u64)];
    clear_slack(mem, &spans);
    let (chunks, count) = ram_chunks(size, &spans, Some(handover_offset(size)))?;
    Ok((chunks, count, GUEST_RAM + dtb))
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
pub(crate) mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn slack_is_cleared_and_content_kept() {
        let mut mem = std::vec![0x5Au8; 3 * 4096];
        clear_slack(&mut mem, &[(0x100, 0x200), (0x1000, 0x1010)]);
        assert_eq!((mem[0xFF], mem[0x100], mem[0x1FF], mem[0x200], mem[0xFFF]), (0, 0x5A, 0x5A, 0, 0));
        assert_eq!((mem[0x100F], mem[0x1010], mem[0x2000]), (0x5A, 0, 0x5A), "pages without a span are not touched");
    }

    /// The VM configuration of a test: `vcpus`, a 36-bit IPA, `flags`, no SVE.
    pub(crate) fn config(vcpus: u32, flags: u64) -> VmCreate {
        VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 }
    }

    #[test]
    fn a_test_vm_is_laid_out_and_measured_the_same_way_twice() {
        let mut image = std::vec![0u8; 100];
        image[..4].copy_from_slice(&[1, 2, 3, 4]);
        let mut a = std::vec![0u8; 1 << 20];
        let loaded = crate::loader::load_test_image(&mut a, GUEST_RAM, &image).unwrap();
        let (chunks, n, dtb) = lay_out(&mut a, &loaded, 1).unwrap();
        assert_eq!(dtb, GUEST_RAM + (1 << 20) - DTB_SPACE);
        let kinds: std::vec::Vec<_> = chunks[..n].iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChunkKind::Empty, ChunkKind::Content, ChunkKind::Empty, ChunkKind::Handover, ChunkKind::Content, ChunkKind::Empty]);
        let m1 = measurement(&a, &chunks[..n], &config(1, 1), loaded.entry, dtb);
        // A RAM buffer full of leftovers gives the same measurement: only what was loaded
        // counts.
        let mut b = std::vec![0xEEu8; 1 << 20];
        let loaded = crate::loader::load_test_image(&mut b, GUEST_RAM, &image).unwrap();
        let (chunks, n, _) = lay_out(&mut b, &loaded, 1).unwrap();
        assert_eq!(measurement(&b, &chunks[..n], &config(1, 1), loaded.entry, dtb), m1);
        image[50] = 1;
        let mut c = std::vec![0u8; 1 << 20];
        let loaded = crate::loader::load_test_image(&mut c, GUEST_RAM, &image).unwrap();
        let (chunks, n, _) = lay_out(&mut c, &loaded, 1).unwrap();
        assert_ne!(measurement(&c, &chunks[..n], &config(1, 1), loaded.entry, dtb), m1, "one byte of the image");
    }
}
