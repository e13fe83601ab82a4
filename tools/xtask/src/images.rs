//! The built images: where they are, the QEMU machine that boots them, and the ELF work on
//! them (a flat copy of an image, a symbol's address).

use crate::qemu::Machine;
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol};
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
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let bad = |why: &str| format!("{}: not an ELF64 image: {why}", elf.display());
    let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| bad(&e.to_string()))?;
    let endian = file.endian();
    let mut segments = Vec::new();
    for ph in file.elf_program_headers().iter().filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_filesz(endian) > 0) {
        let bytes = ph.data(endian, &*data).map_err(|()| bad("a segment lies outside the file"))?;
        segments.push((ph.p_paddr(endian), bytes));
    }
    let base = segments.iter().map(|s| s.0).min().ok_or_else(|| bad("no loadable segment"))?;
    let end = segments.iter().map(|(paddr, bytes)| paddr + bytes.len() as u64).max().ok_or_else(|| bad("no loadable segment"))?;
    let mut image = vec![0u8; (end - base) as usize];
    for (paddr, bytes) in segments {
        let at = (paddr - base) as usize;
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }
    std::fs::write(out, image).map_err(|e| format!("{}: {e}", out.display()))
}

/// The address of the symbol `name` in an ELF64 file (its `.symtab`).
pub fn elf_symbol(elf: &Path, name: &str) -> Option<u64> {
    let data = std::fs::read(elf).ok()?;
    let file = ElfFile64::<Endianness>::parse(&*data).ok()?;
    file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address())
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
