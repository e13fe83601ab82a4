//! The built images: where they are, the QEMU machine that boots them, and the ELF work on
//! them (a flat copy of an image, a symbol's address).

use crate::qemu::Machine;
use std::path::{Path, PathBuf};

/// The built images.
pub struct Images {
    pub el2: PathBuf,
    pub host: PathBuf,
    /// Directory of the bundled guests (`demo`, `regs`, `isolation`, `bench`).
    pub guests: PathBuf,
}

/// The guests `tests/guests` builds (and `demo.bin`, the raw copy of `demo`).
pub const BUNDLED_GUESTS: &[&str] = &["demo", "demo.bin", "regs", "isolation", "features", "pauth", "mte", "hostile", "soak", "bench", "aarch32", "leaks", "spin", "vgic", "storm", "irqbench"];

/// Where QEMU's loader stages the guest image.
pub const GUEST_STAGING: u64 = shared_abi::layout::GUEST_IMAGE_STAGING;

impl Images {
    /// A bundled guest by name, or a file path.
    pub fn guest(&self, name_or_path: &str) -> Result<PathBuf, String> {
        let bundled = self.guests.join(name_or_path);
        let p = if bundled.is_file() { bundled } else { PathBuf::from(name_or_path) };
        if p.is_file() { Ok(p) } else { Err(format!("guest image {name_or_path:?} not found (bundled: {})", BUNDLED_GUESTS.join(", "))) }
    }
}

/// The QEMU machine for `images` with `smp` CPUs, boot arguments `bootargs` and the guest
/// image `guest` staged for the host.
pub fn qemu_machine(images: &Images, smp: u32, bootargs: &str, guest: &Path) -> Result<Machine, String> {
    let size = std::fs::metadata(guest).map(|m| m.len()).unwrap_or(0);
    Ok(hyp_machine(images, Machine::virt()?, smp, guest).args(["-append", &format!("{bootargs} guest={GUEST_STAGING:#x},{size}")]))
}

/// `machine` with `smp` CPUs, EL2 and the host, and `guest` staged for the host at
/// [`GUEST_STAGING`]; the caller adds the host's boot arguments (`-append`).
pub fn hyp_machine(images: &Images, machine: Machine, smp: u32, guest: &Path) -> Machine {
    machine.smp(smp).serial_on_stdio().kernel(&images.el2).loader(&images.host, None).loader(guest, Some(GUEST_STAGING))
}

/// Writes the loadable segments of an ELF64 file as a flat binary starting at the lowest
/// load address (what `objcopy -O binary` does).
pub fn flatten_elf(elf: &Path, out: &Path) -> Result<(), String> {
    let f = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let rd = |o: usize, n: usize| -> Option<u64> { Some(f.get(o..o + n)?.iter().rev().fold(0u64, |a, b| a << 8 | *b as u64)) };
    let bad = || format!("{}: not an ELF64 image", elf.display());
    if f.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(bad());
    }
    let (phoff, phentsize, phnum) = (rd(32, 8).ok_or_else(bad)? as usize, rd(54, 2).ok_or_else(bad)? as usize, rd(56, 2).ok_or_else(bad)? as usize);
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd(ph, 4) == Some(1) && rd(ph + 32, 8).unwrap_or(0) > 0 {
            segs.push((rd(ph + 24, 8).ok_or_else(bad)?, rd(ph + 8, 8).ok_or_else(bad)? as usize, rd(ph + 32, 8).ok_or_else(bad)? as usize));
        }
    }
    let base = segs.iter().map(|s| s.0).min().ok_or_else(bad)?;
    let end = segs.iter().map(|s| s.0 + s.2 as u64).max().ok_or_else(bad)?;
    let mut img = vec![0u8; (end - base) as usize];
    for (paddr, off, size) in segs {
        let at = (paddr - base) as usize;
        img[at..at + size].copy_from_slice(f.get(off..off + size).ok_or_else(bad)?);
    }
    std::fs::write(out, img).map_err(|e| format!("{}: {e}", out.display()))
}

/// The address of the symbol `name` in an ELF64 file (its `.symtab`).
pub fn elf_symbol(elf: &Path, name: &str) -> Option<u64> {
    let f = std::fs::read(elf).ok()?;
    let rd = |o: usize, n: usize| -> Option<u64> { Some(f.get(o..o + n)?.iter().rev().fold(0u64, |a, b| a << 8 | *b as u64)) };
    if f.get(..4) != Some(b"\x7fELF".as_slice()) {
        return None;
    }
    let (shoff, shentsize, shnum) = (rd(40, 8)? as usize, rd(58, 2)? as usize, rd(60, 2)? as usize);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if rd(sh + 4, 4)? != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size, link, entsize) = (rd(sh + 24, 8)? as usize, rd(sh + 32, 8)? as usize, rd(sh + 40, 4)? as usize, rd(sh + 56, 8)? as usize);
        let strtab = rd(section(link)? + 24, 8)? as usize;
        for sym in (off..off.checked_add(size)?).step_by(entsize.max(1)) {
            let name_at = strtab.checked_add(rd(sym, 4)? as usize)?;
            let end = name_at + f.get(name_at..)?.iter().position(|&b| b == 0)?;
            if &f[name_at..end] == name.as_bytes() {
                return rd(sym + 8, 8);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root;

    #[test]
    fn every_bundled_guest_is_a_binary_of_the_guests_crate() {
        let manifest = std::fs::read_to_string(root().join("tests/guests/Cargo.toml")).unwrap();
        let bins: Vec<&str> = manifest.split("[[bin]]").skip(1).filter_map(|b| b.split('"').nth(1)).collect();
        let listed: Vec<&str> = BUNDLED_GUESTS.iter().copied().filter(|g| *g != "demo.bin").collect();
        for b in &bins {
            assert!(listed.contains(b), "guest {b} missing from BUNDLED_GUESTS");
        }
        assert_eq!(bins.len(), listed.len(), "BUNDLED_GUESTS names a guest that is not built");
    }
}
