//! The limits of a Linux run, checked before anything is built or started: the kernel's
//! format (an `Image` for the kernels the project fetches or builds; an `Image`, an ELF test
//! guest or a raw image for a run) and the sizes of its files, command line, memory, vCPUs and VMs.

use host_vdev::loader::{kernel_format, KernelFormat};
use shared_abi::layout::{GUEST_CMDLINE_MAX, GUEST_DISK_MAX, GUEST_DISK_STAGING, GUEST_IMAGE_MAX, GUEST_IMAGE_STAGING, GUEST_INITRD_MAX, GUEST_INITRD_STAGING};

/// The bytes `ARM\x64` at offset 0x38 of an arm64 `Image` header (Linux
/// Documentation/arch/arm64/booting.rst), and the header's flags at offset 0x18.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
const IMAGE_MAGIC_OFFSET: usize = 0x38;
const IMAGE_FLAGS_OFFSET: usize = 0x18;

/// Guest memory per VM, in MiB, and for all VMs together: what EL2 and the host can give out
/// of the 2 GiB machine a Linux run uses.
pub const MEM_MIB_RANGE: core::ops::RangeInclusive<u32> = 64..=1536;
pub const MEM_MIB_TOTAL: u32 = 1536;

/// Checks the header of an arm64 `Image`: the magic, and little-endian (flags bit 0 clear).
pub fn check_image_header(head: &[u8]) -> Result<(), String> {
    if head.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) != Some(IMAGE_MAGIC.as_slice()) {
        return Err(format!("not a Linux arm64 Image: no magic \"ARM\\x64\" at offset {IMAGE_MAGIC_OFFSET:#x}"));
    }
    if head[IMAGE_FLAGS_OFFSET] & 1 != 0 {
        return Err("a big-endian arm64 Image (header flags bit 0): guests are little-endian".into());
    }
    Ok(())
}

/// Checks what a Linux run boots from its first bytes (at most 64; fewer for a smaller file),
/// deciding as the VMM does (`host_vdev::loader::kernel_format`): a Linux arm64 `Image`, one
/// of the project's ELF test guests, or a raw image loaded at RAM + 0x80000 (a
/// kvm-unit-tests `.flat`).
pub fn check_kernel_head(head: &[u8]) -> Result<KernelFormat, String> {
    kernel_format(head).map_err(|e| e.message().to_string())
}

/// Parses a memory size such as `512M`, `1G`, `1536MiB` into MiB.
pub fn parse_mem(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let (digits, unit) = match upper.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), ""),
    };
    let n: u32 = digits.parse().map_err(|_| format!("--mem {t:?}: a size such as 512M or 1G"))?;
    let mib = match unit {
        "M" | "MIB" | "MB" => Some(n),
        "G" | "GIB" | "GB" => n.checked_mul(1024),
        _ => return Err(format!("--mem {t:?}: a size such as 512M or 1G (unit M or G)")),
    };
    mib.ok_or(format!("--mem {t:?}: too large"))
}

/// The SVE vector length of `--sve` and `sve = on`, in bytes: 512 bits, Linux's default
/// vector length and one that every CPU with SVE of at least that length gives.
pub const DEFAULT_SVE_VL: u64 = 64;

/// Parses an SVE vector length in bytes (`--sve-vl`, `sve = N`): a multiple of 16 from 16 to
/// 256 (EL2 refuses any other, and one the CPUs cannot give).
pub fn parse_sve_vl(text: &str) -> Result<u64, String> {
    let t = text.trim();
    match t.parse::<u64>() {
        Ok(vl) if shared_abi::msg::sve::valid_vl(vl) => Ok(vl),
        _ => Err(format!("SVE vector length {t:?}: bytes, a multiple of 16 from 16 to 256 (e.g. 64 for 512 bits)")),
    }
}

/// Checks a disk image's size: at most [`GUEST_DISK_MAX`], and a whole number of 512-byte
/// sectors (virtio-blk offers whole sectors only).
pub fn check_disk(size: u64) -> Result<(), String> {
    if size > GUEST_DISK_MAX {
        return Err(format!("--disk is {size} bytes: the limit is {} MiB (staged at {GUEST_DISK_STAGING:#x})", GUEST_DISK_MAX >> 20));
    }
    if size == 0 || !size.is_multiple_of(512) {
        return Err(format!("--disk is {size} bytes: a disk image is a non-zero whole number of 512-byte sectors"));
    }
    Ok(())
}

/// Checks every limit of a Linux run from sizes alone, naming the limit that is broken.
pub fn check_limits(kernel: u64, initrd: Option<u64>, cmdline: usize, mem_mib: u32, vcpus: u32, vms: u32) -> Result<(), String> {
    const MIB: u64 = 1 << 20;
    if kernel > GUEST_IMAGE_MAX {
        return Err(format!("kernel Image is {kernel} bytes: the limit is {} MiB (staged at {GUEST_IMAGE_STAGING:#x}, below the command line)", GUEST_IMAGE_MAX / MIB));
    }
    if let Some(i) = initrd.filter(|&i| i > GUEST_INITRD_MAX) {
        return Err(format!("initrd is {i} bytes: the limit is {} MiB (staged at {GUEST_INITRD_STAGING:#x})", GUEST_INITRD_MAX / MIB));
    }
    if cmdline as u64 > GUEST_CMDLINE_MAX {
        return Err(format!("--cmdline is {cmdline} bytes: the limit is {GUEST_CMDLINE_MAX} bytes"));
    }
    if !MEM_MIB_RANGE.contains(&mem_mib) {
        return Err(format!("--mem {mem_mib}M: the limit is {}M to {}M per VM", MEM_MIB_RANGE.start(), MEM_MIB_RANGE.end()));
    }
    if !(1..=8).contains(&vcpus) {
        return Err(format!("--vcpus {vcpus}: the limit is 1 to 8"));
    }
    if !(1..=2).contains(&vms) {
        return Err(format!("--vms {vms}: the limit is 1 to 2"));
    }
    if vms * mem_mib > MEM_MIB_TOTAL {
        return Err(format!("--vms {vms} x --mem {mem_mib}M = {}M: the limit is {MEM_MIB_TOTAL}M for all VMs together", vms * mem_mib));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sve_lengths_are_bytes_in_128_bit_steps() {
        assert_eq!(parse_sve_vl("64"), Ok(64));
        assert_eq!(parse_sve_vl(" 256 "), Ok(256));
        for bad in ["0", "24", "272", "512", "on", "-16", ""] {
            assert!(parse_sve_vl(bad).is_err(), "{bad:?}");
        }
    }

    fn image_head() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h[0x18] = 0x0a;
        h
    }

    #[test]
    fn image_header_magic_and_endianness() {
        assert_eq!(check_image_header(&image_head()), Ok(()));
        let mut elf = image_head();
        elf[0x38] = b'X';
        assert!(check_image_header(&elf).unwrap_err().contains("no magic"));
        assert!(check_image_header(&image_head()[..0x3a]).unwrap_err().contains("no magic"), "short file");
        let mut be = image_head();
        be[0x18] |= 1;
        assert!(check_image_header(&be).unwrap_err().contains("big-endian"));
    }

    #[test]
    fn a_run_boots_an_image_an_elf_or_a_raw_image() {
        assert_eq!(check_kernel_head(&image_head()), Ok(KernelFormat::Image));
        assert_eq!(check_kernel_head(b"\x7fELF\x02\x01\x01\0"), Ok(KernelFormat::Elf));
        // A kvm-unit-tests .flat: no header, its first instruction first; a file shorter than
        // an Image header too.
        let mut flat = vec![0u8; 64];
        flat[..4].copy_from_slice(&[0x1f, 0x20, 0x03, 0xd5]);
        assert_eq!(check_kernel_head(&flat), Ok(KernelFormat::Raw));
        assert_eq!(check_kernel_head(&flat[..16]), Ok(KernelFormat::Raw));
        assert!(check_kernel_head(&[0x1f, 0x8b, 8, 0]).unwrap_err().contains("compressed"));
        assert!(check_kernel_head(&[]).unwrap_err().contains("empty"));
        let mut be = image_head();
        be[0x18] |= 1;
        assert!(check_kernel_head(&be).unwrap_err().contains("big-endian"));
    }

    #[test]
    fn disk_sizes() {
        assert_eq!(check_disk(512), Ok(()));
        assert_eq!(check_disk(256 << 20), Ok(()));
        assert!(check_disk((256 << 20) + 512).unwrap_err().contains("limit is 256 MiB"));
        assert!(check_disk(0).unwrap_err().contains("512-byte sectors"));
        assert!(check_disk(1000).unwrap_err().contains("512-byte sectors"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem("512M"), Ok(512));
        assert_eq!(parse_mem("1G"), Ok(1024));
        assert_eq!(parse_mem("1536MiB"), Ok(1536));
        assert_eq!(parse_mem("2g"), Ok(2048));
        assert!(parse_mem("512").unwrap_err().contains("unit M or G"));
        assert!(parse_mem("1T").is_err() && parse_mem("M").is_err() && parse_mem("-1G").is_err());
        assert!(parse_mem("99999999G").unwrap_err().contains("too large"));
    }

    #[test]
    fn every_limit_is_checked_and_named() {
        let ok = |k, i, c, m, v, n| check_limits(k, i, c, m, v, n);
        assert_eq!(ok(27 << 20, Some(3 << 20), 100, 512, 2, 1), Ok(()));
        assert_eq!(ok(60 << 20, Some(64 << 20), 4095, 768, 8, 2), Ok(()), "every limit exactly");
        assert!(ok((60 << 20) + 1, None, 0, 512, 2, 1).unwrap_err().contains("limit is 60 MiB"));
        assert!(ok(1, Some((64 << 20) + 1), 0, 512, 2, 1).unwrap_err().contains("limit is 64 MiB"));
        assert!(ok(1, None, 4096, 512, 2, 1).unwrap_err().contains("limit is 4095 bytes"));
        assert!(ok(1, None, 0, 63, 2, 1).unwrap_err().contains("64M to 1536M"));
        assert!(ok(1, None, 0, 1537, 2, 1).unwrap_err().contains("64M to 1536M"));
        assert!(ok(1, None, 0, 512, 0, 1).unwrap_err().contains("--vcpus 0: the limit is 1 to 8"));
        assert!(ok(1, None, 0, 512, 9, 1).unwrap_err().contains("--vcpus 9"));
        assert!(ok(1, None, 0, 512, 2, 3).unwrap_err().contains("--vms 3: the limit is 1 to 2"));
        assert!(ok(1, None, 0, 769, 2, 2).unwrap_err().contains("1538M: the limit is 1536M"));
    }
}
