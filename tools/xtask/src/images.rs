//! The built images: where they are, the QEMU machine that boots them, and the ELF work on
//! them (a flat copy of an image, a symbol's address).

use crate::qemu::Machine;
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};
use std::path::{Path, PathBuf};

/// The built images.
pub struct Images {
    pub el2: PathBuf,
    pub host: PathBuf,
    /// Directory of the bundled guests (`demo`, `regs`, `isolation`, `bench`).
    pub guests: PathBuf,
}

/// The guests `tests/guests` builds (and `demo.bin`, the raw copy of `demo`).
pub const BUNDLED_GUESTS: &[&str] = &["demo", "demo.bin", "regs", "vm-isolation", "vm-id-registers", "vm-pointer-authentication", "vm-mte", "vm-sve", "hostile-guests", "integrity-soak", "bench", "vm-illegal-state", "vm-switched-or-trapped", "spin", "vm-vgic", "storm", "irqbench", "vm-pkvm-guest-abi", "vm-measurement", "vm-scale"];

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

/// The QEMU machine for a test guest: `images` with `smp` CPUs, boot arguments `bootargs` and
/// the guest image `guest` staged for the host.
pub fn test_guest_machine(images: &Images, smp: u32, bootargs: &str, guest: &Path) -> Result<Machine, String> {
    let size = std::fs::metadata(guest).map(|m| m.len()).unwrap_or(0);
    Ok(with_hypervisor(images, Machine::virt()?, smp, guest).args(["-append", &format!("{bootargs} guest={GUEST_STAGING:#x},{size}")]))
}

/// `machine` with `smp` CPUs, EL2 and the host, and `guest` staged for the host at
/// [`GUEST_STAGING`]; the caller adds the host's boot arguments (`-append`).
pub fn with_hypervisor(images: &Images, machine: Machine, smp: u32, guest: &Path) -> Machine {
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

/// The initial contents of the data symbol `name` in an ELF64 file (its `.symtab`).
pub fn elf_symbol_data(elf: &Path, name: &str) -> Result<Vec<u8>, String> {
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let missing = |why: &str| format!("{}: no data for symbol {name}: {why}", elf.display());
    let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| missing(&e.to_string()))?;
    let symbol = file.symbols().find(|s| s.name() == Ok(name)).ok_or_else(|| missing("not in the symbol table"))?;
    let section = symbol.section_index().and_then(|i| file.section_by_index(i).ok()).ok_or_else(|| missing("in no section"))?;
    match section.data_range(symbol.address(), symbol.size()) {
        Ok(Some(bytes)) => Ok(bytes.to_vec()),
        _ => Err(missing("outside its section's file data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root;

    /// A little-endian ELF64 file with these program headers `(type, paddr, data)`, the data
    /// after the headers, and virtual addresses unlike the physical ones.
    fn elf(segments: &[(u32, u64, &[u8])]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        let mut offset = 64 + 56 * segments.len() as u64;
        for (ty, paddr, data) in segments {
            let size = data.len() as u64;
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&4u32.to_le_bytes()); // PF_R
            // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            for word in [offset, paddr + 0xffff_0000_0000_0000, *paddr, size, size + 16, 8] {
                f.extend_from_slice(&word.to_le_bytes());
            }
            offset += size;
        }
        for (_, _, data) in segments {
            f.extend_from_slice(data);
        }
        f
    }

    #[test]
    fn flattening_places_each_loaded_segment_at_its_physical_address() {
        let dir = std::env::temp_dir().join(format!("xtask-flatten-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in.elf"), dir.join("out.bin"));
        let note = object::elf::PT_NOTE.0;
        // An empty loaded segment and a note, both below the others, take no room.
        let file = elf(&[(PT_LOAD.0, 0x1008, b"BB"), (PT_LOAD.0, 0x1000, b"AAAA"), (PT_LOAD.0, 0x10, b""), (note, 0x20, b"N")]);
        std::fs::write(&input, file).unwrap();
        flatten_elf(&input, &output).unwrap();
        assert_eq!(std::fs::read(&output).unwrap(), b"AAAA\0\0\0\0BB", "the gap is zeros");
        std::fs::write(&input, elf(&[(note, 0x20, b"N")])).unwrap();
        assert!(flatten_elf(&input, &output).unwrap_err().contains("no loadable segment"));
        std::fs::write(&input, b"MZ not an ELF").unwrap();
        assert!(flatten_elf(&input, &output).unwrap_err().contains("not an ELF64 image"));
        assert_eq!(elf_symbol(&input, "_start"), None);
        assert!(elf_symbol_data(&input, "_start").unwrap_err().contains("no data for symbol _start"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A data symbol of this test binary, for [`elf_symbol_data`].
    #[no_mangle]
    #[used]
    static XTASK_TEST_SYMBOL_DATA: [u8; 12] = *b"demo\nlinux\n\n";

    #[test]
    fn a_data_symbol_is_read_from_the_file() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_symbol_data(&me, "XTASK_TEST_SYMBOL_DATA").unwrap(), XTASK_TEST_SYMBOL_DATA);
        assert!(elf_symbol_data(&me, "XTASK_NO_SUCH_SYMBOL").unwrap_err().contains("not in the symbol table"));
    }

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
