//! Guest image loaders: what a VM boots ([`kernel_format`]: a Linux arm64 `Image`, one of the
//! project's ELF test guests, or a raw image such as a kvm-unit-tests `.flat`) and its
//! initramfs, placed as `crate::vm_platform` lays the VM out.
//!
//! Place in the flow: the VMM (`el1-host/src/vmm`) copies an image into the guest's backing
//! pages while they are still the host's (before `VM_ADD_MEMORY` donates or shares them), then points vCPU 0 at the
//! entry this module returns. Every size and offset here comes from a file the user chose, so
//! each is checked against the guest's RAM before a byte is copied.

/// Where a raw image goes, relative to the RAM base (as Linux's old boot protocol put an
/// `Image`, and QEMU's `-kernel` a file it does not recognise): a raw image
/// ([`KernelFormat::Raw`]).
pub const RAW_IMAGE_OFFSET: u64 = 0x8_0000;

/// An ELF guest copied into RAM: its entry IPA and the bytes it occupies (offsets from the RAM
/// base, end exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The entry point (IPA).
    pub entry: u64,
    /// `[start, end)` of what was written, from the RAM base.
    pub span: (u64, u64),
}

/// Copies an ELF64 for AArch64 (one of the project's test guests) into `mem`, the guest RAM
/// that starts at IPA `ram_base`, at the addresses its `PT_LOAD` segments name.
pub fn load_elf(mem: &mut [u8], ram_base: u64, image: &[u8]) -> Result<Loaded, &'static str> {
    let size = mem.len() as u64;
    let mut span = (u64::MAX, 0u64);
    if image.len() < 64 || image[..4] != *b"\x7fELF" {
        return Err("not an ELF file");
    }
    // A field of `n` bytes at `o`; 0 past the end (every offset comes from the file).
    let rd = |o: usize, n: usize| -> u64 {
        o.checked_add(n).and_then(|e| image.get(o..e)).map_or(0, |b| b.iter().rev().fold(0u64, |a, x| a << 8 | *x as u64))
    };
    if image[4] != 2 || image[5] != 1 || rd(18, 2) != 183 {
        return Err("not a little-endian ELF64 for AArch64");
    }
    let (phoff, phentsize, phnum) = (rd(32, 8) as usize, rd(54, 2) as usize, rd(56, 2) as usize);
    // Two passes: check every PT_LOAD segment and find what they span, then zero that
    // span (gaps between segments included: whatever RAM held before must not stay between
    // them) and copy them in.
    for pass in 0..2 {
        for i in 0..phnum {
            let Some(ph) = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)) else {
                return Err("program headers outside the file");
            };
            if rd(ph, 4) != 1 {
                continue; // not PT_LOAD
            }
            let (off, paddr, filesz, memsz) = (rd(ph + 8, 8), rd(ph + 24, 8), rd(ph + 32, 8), rd(ph + 40, 8));
            let start = paddr.checked_sub(ram_base).ok_or("segment below guest RAM")?;
            if start.checked_add(memsz).is_none_or(|e| e > size) || filesz > memsz {
                return Err("segment outside guest RAM");
            }
            let src = off
                .checked_add(filesz)
                .and_then(|end| image.get(off as usize..end as usize))
                .ok_or("segment outside the file")?;
            if pass == 0 {
                span = (span.0.min(start), span.1.max(start + memsz));
            } else {
                mem[start as usize..(start + filesz) as usize].copy_from_slice(src);
            }
        }
        if pass == 0 {
            if span.0 > span.1 {
                span = (0, 0);
            }
            mem[span.0 as usize..span.1 as usize].fill(0);
        }
    }
    Ok(Loaded { entry: rd(24, 8), span })
}

/// What a run of a VM's RAM holds, for `VM_ADD_MEMORY`'s flags (the VM's measurement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Content the host put there: measured.
    Content,
    /// Nothing: zeroed for a protected VM.
    Empty,
    /// The measurement handover page.
    Handover,
}

/// One `VM_ADD_MEMORY` of a VM's RAM: `pages` pages from `offset` (bytes from the RAM base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset from the RAM base (page aligned).
    pub offset: u64,
    /// Number of pages.
    pub pages: u64,
    /// What they hold.
    pub kind: ChunkKind,
}

/// Most chunks [`ram_chunks`] makes.
pub const MAX_CHUNKS: usize = 16;

/// Splits `ram_size` bytes of RAM into the runs a VMM gives the VM, in address order: the
/// `spans` that hold content (byte ranges from the RAM base, widened to whole pages, merged
/// where they touch), the one `handover` page, and everything else empty. Two VMMs (or a VMM
/// and an offline measurement) that load the same things get the same chunks.
///
/// # Errors
/// A span or the handover page outside RAM, the handover page inside a span, or more than
/// [`MAX_CHUNKS`] runs.
pub fn ram_chunks(ram_size: u64, spans: &[(u64, u64)], handover: Option<u64>) -> Result<([Chunk; MAX_CHUNKS], usize), &'static str> {
    const PAGE: u64 = 4096;
    let pages = ram_size / PAGE;
    let kinds_at = |p: u64| -> ChunkKind {
        if handover.is_some_and(|h| h / PAGE == p) {
            ChunkKind::Handover
        } else if spans.iter().any(|&(s, e)| e > s && p >= s / PAGE && p < e.div_ceil(PAGE)) {
            ChunkKind::Content
        } else {
            ChunkKind::Empty
        }
    };
    for &(s, e) in spans {
        if s > e || e > ram_size {
            return Err("loaded span outside guest RAM");
        }
    }
    if let Some(h) = handover {
        if h % PAGE != 0 || h >= ram_size {
            return Err("handover page outside guest RAM");
        }
        if spans.iter().any(|&(s, e)| e > s && h / PAGE >= s / PAGE && h / PAGE < e.div_ceil(PAGE)) {
            return Err("handover page inside loaded content");
        }
    }
    let mut out = [Chunk { offset: 0, pages: 0, kind: ChunkKind::Empty }; MAX_CHUNKS];
    let mut n = 0;
    let mut p = 0;
    while p < pages {
        let kind = kinds_at(p);
        let start = p;
        while p < pages && kinds_at(p) == kind {
            p += 1;
        }
        if n == MAX_CHUNKS {
            return Err("guest RAM in too many pieces");
        }
        out[n] = Chunk { offset: start * PAGE, pages: p - start, kind };
        n += 1;
    }
    Ok((out, n))
}

/// The arm64 `Image` header (Linux's `Documentation/arch/arm64/booting.rst`): 64 bytes at the
/// start of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the image goes above a 2 MiB aligned base (`text_offset`, at 0x08).
    pub text_offset: u64,
    /// Bytes the kernel uses from its load address on, BSS included (`image_size`, at 0x10).
    pub image_size: u64,
}

/// The magic at offset 0x38: "ARM\x64".
const IMAGE_MAGIC: u32 = 0x644D_5241;

/// Parses the header of an arm64 `Image`.
pub fn image_header(image: &[u8]) -> Result<ImageHeader, &'static str> {
    let word = |o: usize| image.get(o..o + 8).map(|b| b.iter().rev().fold(0u64, |a, x| a << 8 | *x as u64));
    let magic = image.get(0x38..0x3C).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if magic != Some(IMAGE_MAGIC) {
        return Err("not an arm64 Linux Image (no \"ARM\\x64\" magic at 0x38)");
    }
    let (Some(text_offset), Some(image_size), Some(flags)) = (word(0x08), word(0x10), word(0x18)) else {
        return Err("truncated Image header");
    };
    if flags & 1 != 0 {
        return Err("big-endian kernel");
    }
    // An `image_size` of zero is a kernel older than 3.17: text_offset is then 0x80000.
    if image_size == 0 {
        return Ok(ImageHeader { text_offset: 0x8_0000, image_size: image.len() as u64 });
    }
    if text_offset >= 2 << 20 {
        return Err("text_offset beyond 2 MiB");
    }
    Ok(ImageHeader { text_offset, image_size: image_size.max(image.len() as u64) })
}

/// What a Linux VM boots, told apart by its first bytes ([`kernel_format`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF64 file: one of the project's test guests, loaded at its own addresses
    /// ([`load_elf`]).
    Elf,
    /// A Linux arm64 `Image` (magic `ARM\x64` at 0x38), placed as its header says.
    Image,
    /// Anything else: a raw image without a header (a kvm-unit-tests `.flat`), loaded at
    /// [`RAW_IMAGE_OFFSET`] and entered at its first byte with `x0` = the device tree, as QEMU's
    /// `-kernel` loads a file it does not recognise ([`raw_header`]).
    Raw,
}

/// Why a file cannot be a Linux VM's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormatError {
    /// The file is empty.
    Empty,
    /// It starts with the magic of a compressed file (gzip, xz, zstd, bzip2, lz4): an
    /// `Image.gz` or the like, which would otherwise pass for a raw image and crash at its first
    /// instruction.
    Compressed,
    /// An arm64 `Image` whose header says big-endian (flags bit 0): guests are little-endian.
    BigEndian,
}

impl KernelFormatError {
    /// What to tell the user.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Empty => "the kernel image is empty",
            Self::Compressed => "a compressed kernel (gzip, xz, zstd, bzip2 or lz4): give the uncompressed Image",
            Self::BigEndian => "a big-endian arm64 Image (header flags bit 0): guests are little-endian",
        }
    }
}

/// The first bytes of the compressed formats a kernel is shipped in.
const COMPRESSED_MAGIC: [&[u8]; 5] = [b"\x1f\x8b", b"\xfd7zXZ\0", b"\x28\xb5\x2f\xfd", b"BZh", b"\x04\x22\x4d\x18"];

/// Tells a kernel's format from its first 64 bytes (`head` may be the whole file, or shorter
/// than 64 bytes for a small raw image): ELF, arm64 `Image`, or raw. The VMM and
/// `cargo xtask` (which reads only the head before anything is staged) decide alike.
///
/// # Errors
/// An empty or compressed file, or a big-endian `Image`.
pub fn kernel_format(head: &[u8]) -> Result<KernelFormat, KernelFormatError> {
    if head.is_empty() {
        return Err(KernelFormatError::Empty);
    }
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    if head.get(0x38..0x3C) == Some(&IMAGE_MAGIC.to_le_bytes()[..]) {
        return if head.get(0x18).is_some_and(|f| f & 1 != 0) { Err(KernelFormatError::BigEndian) } else { Ok(KernelFormat::Image) };
    }
    if COMPRESSED_MAGIC.iter().any(|m| head.starts_with(m)) {
        return Err(KernelFormatError::Compressed);
    }
    Ok(KernelFormat::Raw)
}

/// The header a raw image of `len` bytes is laid out with: at [`RAW_IMAGE_OFFSET`], as QEMU's
/// `-kernel` puts a file without an `Image` header. How much memory it uses past its last byte
/// (BSS, stacks) is unknown; [`linux_layout`] keeps 16 MiB above it free, before the initramfs
/// and the device tree.
pub const fn raw_header(len: u64) -> ImageHeader {
    ImageHeader { text_offset: RAW_IMAGE_OFFSET, image_size: len }
}

/// Where a Linux guest's pieces go in its RAM (offsets from the RAM base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The kernel's load address and entry point.
    pub kernel: u64,
    /// The initramfs (start, end), if any.
    pub initrd: Option<(u64, u64)>,
    /// The device tree.
    pub dtb: u64,
}

/// Space kept for the device tree, at the top of RAM.
pub const DTB_SPACE: u64 = 64 * 1024;

/// Lays out a kernel with header `h`, an initramfs of `initrd_len` bytes and the device tree
/// in `ram_size` bytes of RAM: the kernel at `text_offset` above the (2 MiB aligned) RAM base,
/// the device tree in the last [`DTB_SPACE`], the initramfs page-aligned just below it.
pub fn linux_layout(h: &ImageHeader, initrd_len: u64, ram_size: u64) -> Result<LinuxLayout, &'static str> {
    let kernel_end = h.text_offset.checked_add(h.image_size).ok_or("kernel too large")?;
    let dtb = ram_size.checked_sub(DTB_SPACE).ok_or("guest RAM too small")?;
    let initrd = if initrd_len == 0 {
        None
    } else {
        let start = dtb.checked_sub(initrd_len).ok_or("initramfs larger than guest RAM")? & !0xFFF;
        Some((start, start + initrd_len))
    };
    let lowest = initrd.map_or(dtb, |(s, _)| s);
    // Leave the kernel room to grow its own early allocations above its image.
    if kernel_end.checked_add(16 << 20).is_none_or(|e| e > lowest) {
        return Err("guest RAM too small for the kernel, its initramfs and the device tree");
    }
    Ok(LinuxLayout { kernel: h.text_offset, initrd, dtb })
}

/// Copies the kernel and initramfs into `mem` (the guest's RAM) as `layout` says.
pub fn load_linux(mem: &mut [u8], layout: &LinuxLayout, kernel: &[u8], initrd: &[u8]) -> Result<(), &'static str> {
    let k = layout.kernel as usize;
    mem.get_mut(k..k + kernel.len()).ok_or("kernel outside guest RAM")?.copy_from_slice(kernel);
    if let Some((s, e)) = layout.initrd {
        mem.get_mut(s as usize..e as usize).ok_or("initramfs outside guest RAM")?.copy_from_slice(initrd);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut i = vec![0u8; len.max(64)];
        i[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        i[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        i[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        i[0x38..0x3C].copy_from_slice(b"ARM\x64");
        i
    }

    #[test]
    fn image_headers_are_read_and_checked() {
        let h = image_header(&image(0, 0x200_0000, 0xA, 0x1000)).unwrap();
        assert_eq!(h, ImageHeader { text_offset: 0, image_size: 0x200_0000 });
        // Older kernels: image_size 0 means text_offset 0x80000.
        assert_eq!(image_header(&image(0x1234, 0, 0, 0x1000)).unwrap(), ImageHeader { text_offset: 0x8_0000, image_size: 0x1000 });
        // image_size smaller than the file: the file's size.
        assert_eq!(image_header(&image(0, 0x100, 0, 0x2000)).unwrap().image_size, 0x2000);
        assert!(image_header(&image(0, 0x1000, 1, 0x1000)).is_err(), "big-endian");
        assert!(image_header(&image(2 << 20, 0x1000, 0, 0x1000)).is_err(), "text_offset past 2 MiB");
        let mut bad = image(0, 0x1000, 0, 0x1000);
        bad[0x38] = b'X';
        assert!(image_header(&bad).is_err());
        assert!(image_header(&[0u8; 0x3A]).is_err(), "truncated");
        assert!(image_header(&[]).is_err());
    }

    #[test]
    fn kernel_formats_are_told_from_their_first_bytes() {
        use KernelFormat::{Elf, Image, Raw};
        assert_eq!(kernel_format(&image(0, 0x1000, 0xA, 0x1000)), Ok(Image));
        assert_eq!(kernel_format(&image(0, 0x1000, 0, 64)), Ok(Image), "the header alone, as xtask reads it");
        assert_eq!(kernel_format(&image(0, 0x1000, 1, 64)), Err(KernelFormatError::BigEndian));
        assert_eq!(kernel_format(&elf(&[(0x800, 0x4008_0000, 4, 4)])), Ok(Elf));
        // A kvm-unit-tests .flat starts with an instruction; a short raw image is still one.
        assert_eq!(kernel_format(&[0x00, 0x00, 0x00, 0x14, 0, 0, 0, 0]), Ok(Raw));
        assert_eq!(kernel_format(&[0x1f]), Ok(Raw));
        let mut no_magic = image(0, 0x1000, 0, 0x1000);
        no_magic[0x38] = b'X';
        assert_eq!(kernel_format(&no_magic), Ok(Raw));
        for compressed in [&b"\x1f\x8b\x08\x00"[..], b"\xfd7zXZ\0\0", b"\x28\xb5\x2f\xfd\0", b"BZh91AY", b"\x04\x22\x4d\x18\x64"] {
            assert_eq!(kernel_format(compressed), Err(KernelFormatError::Compressed), "{compressed:x?}");
        }
        assert_eq!(kernel_format(&[]), Err(KernelFormatError::Empty));
        assert_eq!(raw_header(0x1_6000), ImageHeader { text_offset: RAW_IMAGE_OFFSET, image_size: 0x1_6000 });
    }

    #[test]
    fn linux_layout_places_initrd_and_tree_at_the_top() {
        let h = ImageHeader { text_offset: 0, image_size: 30 << 20 };
        let l = linux_layout(&h, 2_554_204, 512 << 20).unwrap();
        assert_eq!(l.kernel, 0);
        assert_eq!(l.dtb, (512 << 20) - DTB_SPACE);
        let (s, e) = l.initrd.unwrap();
        assert_eq!(s % 4096, 0);
        assert!(e <= l.dtb && e - s == 2_554_204);
        assert_eq!(linux_layout(&h, 0, 512 << 20).unwrap().initrd, None);
        // Too small: the kernel, 16 MiB of room, the initramfs and the tree must fit.
        assert!(linux_layout(&h, 2 << 20, 48 << 20).is_err());
        assert!(linux_layout(&h, u64::MAX, 512 << 20).is_err());
        assert!(linux_layout(&ImageHeader { text_offset: 0, image_size: u64::MAX }, 0, 512 << 20).is_err());
        assert!(linux_layout(&h, 0, 1000).is_err());
    }

    #[test]
    fn load_linux_copies_where_the_layout_says() {
        let mut mem = vec![0u8; 64 << 20];
        let h = ImageHeader { text_offset: 0x1000, image_size: 0x2000 };
        let l = linux_layout(&h, 3, mem.len() as u64).unwrap();
        load_linux(&mut mem, &l, &[1, 2, 3, 4], &[9, 8, 7]).unwrap();
        assert_eq!(&mem[0x1000..0x1004], &[1, 2, 3, 4]);
        let (s, _) = l.initrd.unwrap();
        assert_eq!(&mem[s as usize..s as usize + 3], &[9, 8, 7]);
        let far = LinuxLayout { kernel: (64 << 20) - 2, initrd: None, dtb: 0 };
        assert!(load_linux(&mut mem, &far, &[1, 2, 3, 4], &[]).is_err());
    }

    fn elf(segments: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        // (file offset, paddr, filesz, memsz) per PT_LOAD, entry 0x4008_0000.
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&183u16.to_le_bytes());
        f[24..32].copy_from_slice(&0x4008_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(off, paddr, filesz, memsz)) in segments.iter().enumerate() {
            let ph = 64 + 56 * i;
            f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        f[0x800..0x804].copy_from_slice(&[0xAA; 4]);
        f
    }

    #[test]
    fn elf_guests_load_inside_guest_ram_only() {
        let base = 0x4000_0000;
        let mut mem = vec![0xFFu8; 1 << 20];
        let loaded = load_elf(&mut mem, base, &elf(&[(0x800, base + 0x8_0000, 4, 8)])).unwrap();
        assert_eq!(loaded.span, (0x8_0000, 0x8_0008), "what the segment occupies, memsz included");
        let entry = loaded.entry;
        assert_eq!(entry, 0x4008_0000);
        assert_eq!(&mem[0x8_0000..0x8_0008], &[0xAA, 0xAA, 0xAA, 0xAA, 0, 0, 0, 0], "data, then BSS zeroed");
        for hostile in [
            (0x800, base - 0x1000, 4, 4),   // below RAM
            (0x800, base + (1 << 20) - 2, 4, 4), // past its end
            (0x800, base, 8, 4),            // filesz > memsz
            (0xFFF, base, 4, 4),            // past the file
            (u64::MAX, base, 4, 4),         // offset overflow
            (0x800, u64::MAX, 4, 4),        // address overflow
            (0x800, base, 4, u64::MAX),     // size overflow
        ] {
            assert!(load_elf(&mut mem, base, &elf(&[hostile])).is_err(), "{hostile:x?}");
        }
        // Program headers at an offset that overflows (host tests run with overflow checks:
        // arithmetic that wrapped would panic here): past the file, nothing to load; a second
        // header whose offset overflows is an error.
        let mut bad = elf(&[(0x800, base, 4, 4)]);
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(load_elf(&mut mem, base, &bad).map(|l| l.entry), Ok(0x4008_0000));
        bad[54..56].copy_from_slice(&u16::MAX.to_le_bytes());
        bad[56..58].copy_from_slice(&2u16.to_le_bytes());
        assert!(load_elf(&mut mem, base, &bad).is_err());
        // Anything else is not for this loader (`kernel_format` sends raw images elsewhere).
        assert_eq!(load_elf(&mut mem, base, &[1, 2, 3]), Err("not an ELF file"));
    }

    #[test]
    fn ram_splits_into_content_empty_and_handover_runs() {
        let mib = 1 << 20;
        let (c, n) = ram_chunks(16 * mib, &[(0x8_0000, 0x8_0010), (16 * mib - 0x1_0000, 16 * mib)], Some(16 * mib - 0x1_1000)).unwrap();
        let got: std::vec::Vec<_> = c[..n].iter().map(|c| (c.offset, c.pages, c.kind)).collect();
        assert_eq!(
            got,
            [
                (0, 0x80, ChunkKind::Empty),
                (0x8_0000, 1, ChunkKind::Content),
                (0x8_1000, 4096 - 0x81 - 17, ChunkKind::Empty),
                (16 * mib - 0x1_1000, 1, ChunkKind::Handover),
                (16 * mib - 0x1_0000, 16, ChunkKind::Content),
            ]
        );
        assert_eq!(c[..n].iter().map(|c| c.pages).sum::<u64>(), 4096, "every page once");
        // Touching spans merge; a handover inside content, spans outside RAM: refused.
        let (_, n) = ram_chunks(mib, &[(0, 0x1800), (0x1800, 0x3000)], None).unwrap();
        assert_eq!(n, 2);
        assert!(ram_chunks(mib, &[(0, 0x2000)], Some(0x1000)).is_err());
        assert!(ram_chunks(mib, &[(0, mib + 1)], None).is_err());
        assert!(ram_chunks(mib, &[], Some(mib)).is_err());
        // Too many pieces.
        let spans: std::vec::Vec<(u64, u64)> = (0..9).map(|i| (i * 0x2000, i * 0x2000 + 1)).collect();
        assert!(ram_chunks(mib, &spans, None).is_err());
    }

    #[test]
    fn nothing_the_ram_held_stays_between_segments() {
        let base = 0x4000_0000;
        let mut mem = vec![0xEEu8; 0x10_0000];
        let image = elf(&[(0x800, base + 0x8_0000, 4, 4), (0x800, base + 0x9_0000, 4, 8)]);
        let loaded = load_elf(&mut mem, base, &image).unwrap();
        assert_eq!(loaded.span, (0x8_0000, 0x9_0008));
        assert!(mem[0x8_0004..0x9_0000].iter().all(|&b| b == 0), "the gap is zeroed");
        assert_eq!((mem[0x7_FFFF], mem[0x9_0008]), (0xEE, 0xEE), "outside the span: untouched");
    }
}
