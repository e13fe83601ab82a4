//! A small, uncompressed, reproducible archive in the `newc` cpio format (magic `070701`), the
//! only archive format the Linux kernel unpacks as an initramfs: directories, regular files,
//! symbolic links and device nodes, all owned by root with mtime 0, followed by the
//! `TRAILER!!!` entry. The `cpio` crate writes the entries; this module checks what goes in:
//! names relative to `/` (as the kernel reads them), each once, after its parent directory.

use std::io::Write;

/// File-type bits of `st_mode` (POSIX `<sys/stat.h>`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Why an entry cannot be written.
#[derive(Debug, PartialEq, Eq)]
pub enum CpioError {
    /// The name is empty, absolute, has a NUL, or a `.`/`..` component.
    BadName(String),
    /// The name was already written.
    Duplicate(String),
    /// The entry's parent directory was not written before it.
    NoParent(String),
    /// The data does not fit the format's 32-bit size field.
    TooLarge(String),
}

impl core::fmt::Display for CpioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadName(n) => write!(f, "cpio: bad entry name {n:?} (relative, no NUL, no . or .. components)"),
            Self::Duplicate(n) => write!(f, "cpio: {n:?} written twice"),
            Self::NoParent(n) => write!(f, "cpio: {n:?} comes before its parent directory"),
            Self::TooLarge(n) => write!(f, "cpio: {n:?} is larger than 4 GiB"),
        }
    }
}

/// An archive being built in memory.
#[derive(Default)]
pub struct Newc {
    out: Vec<u8>,
    names: Vec<String>,
    dirs: Vec<String>,
}

impl Newc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory with permission bits `perm` (e.g. `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])?;
        self.dirs.push(name.to_string());
        Ok(())
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node with device number `major:minor`.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Ends the archive with the trailer entry and returns its bytes.
    pub fn finish(self) -> Vec<u8> {
        cpio::newc::trailer(self.out).expect("writing to a Vec cannot fail")
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> Result<(), CpioError> {
        let bad = || CpioError::BadName(name.to_string());
        if name.is_empty() || name.starts_with('/') || name.contains('\0') || name == "TRAILER!!!" {
            return Err(bad());
        }
        if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad());
        }
        if self.names.iter().any(|n| n == name) {
            return Err(CpioError::Duplicate(name.to_string()));
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !self.dirs.iter().any(|d| d == parent) {
                return Err(CpioError::NoParent(name.to_string()));
            }
        }
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        // Inode numbers only need to differ between entries; 0 is left for the trailer.
        let ino = self.names.len() as u32 + 1;
        let header = cpio::newc::Builder::new(name).ino(ino).mode(mode).nlink(nlink).rdev_major(rdev.0).rdev_minor(rdev.1);
        let mut writer = header.write(&mut self.out, size);
        writer.write_all(data).and_then(|_| writer.finish().map(|_| ())).expect("writing to a Vec cannot fail");
        self.names.push(name.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: (name, mode, nlink, rdev, data).
    type Entry = (String, u32, u32, (u32, u32), Vec<u8>);

    /// An independent reader of what the kernel's unpacker reads, for round trips.
    fn read_all(mut a: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            let offset = total - a.len();
            assert_eq!(offset % 4, 0, "entry at {offset} not 4-byte aligned");
            assert_eq!(&a[..6], b"070701", "magic at {offset}");
            let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, nlink, size, rdev, namesize) = (field(1), field(4), field(6) as usize, (field(9), field(10)), field(11) as usize);
            assert_eq!(field(12), 0, "check field");
            let name = std::str::from_utf8(&a[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(a[110 + namesize - 1], 0, "name NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = a[data_at..data_at + size].to_vec();
            a = &a[(data_at + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, nlink, rdev, data));
        }
    }

    #[test]
    fn header_has_the_exact_newc_layout() {
        let mut c = Newc::new();
        c.file("init", 0o755, b"hello").unwrap();
        let a = c.finish();
        // 110-byte header + "init\0" = 115, padded to 116; 5 data bytes padded to 8.
        let first = &a[..116 + 8];
        let expected_header =
            "070701".to_string() + "00000001" + "000081ed" + "00000000" + "00000000" + "00000001" + "00000000" + "00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000";
        assert_eq!(std::str::from_utf8(&first[..110]).unwrap(), expected_header);
        assert_eq!(&first[110..116], b"init\0\0");
        assert_eq!(&first[116..124], b"hello\0\0\0");
        let trailer = &a[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(trailer.len(), 124, "110 + 11 name bytes, padded to 124");
    }

    #[test]
    fn round_trips_every_entry_kind() {
        let mut c = Newc::new();
        c.dir("bin", 0o755).unwrap();
        c.dir("dev", 0o755).unwrap();
        c.char_device("dev/console", 0o600, 5, 1).unwrap();
        c.file("bin/busybox", 0o755, &[0xaa; 13]).unwrap();
        c.symlink("bin/sh", "busybox").unwrap();
        c.file("empty", 0o644, &[]).unwrap();
        let entries = read_all(&c.finish());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "dev", "dev/console", "bin/busybox", "bin/sh", "empty"]);
        assert_eq!((entries[0].1, entries[0].2), (0o040755, 2));
        assert_eq!((entries[2].1, entries[2].3), (0o020600, (5, 1)));
        assert_eq!((entries[3].1, entries[3].4.as_slice()), (0o100755, [0xaa; 13].as_slice()));
        assert_eq!((entries[4].1, entries[4].4.as_slice()), (0o120777, b"busybox".as_slice()));
        assert!(entries[5].4.is_empty());
    }

    #[test]
    fn every_name_length_keeps_alignment() {
        // Name lengths 1..=8 cover every padding case of both the name and the data.
        let mut c = Newc::new();
        for n in 1..=8usize {
            c.file(&"x".repeat(n), 0o644, &vec![n as u8; n]).unwrap();
        }
        let entries = read_all(&c.finish());
        assert_eq!(entries.len(), 8);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.0.len(), i + 1);
            assert_eq!(e.4, vec![(i + 1) as u8; i + 1]);
        }
    }

    #[test]
    fn rejects_bad_names_duplicates_and_orphans() {
        let mut c = Newc::new();
        for bad in ["", "/init", "a//b", "./init", "a/../b", "nul\0", "TRAILER!!!", "dir/"] {
            assert_eq!(c.file(bad, 0o644, b""), Err(CpioError::BadName(bad.into())), "{bad:?}");
        }
        assert_eq!(c.file("bin/busybox", 0o755, b""), Err(CpioError::NoParent("bin/busybox".into())));
        c.dir("bin", 0o755).unwrap();
        c.file("bin/busybox", 0o755, b"").unwrap();
        assert_eq!(c.symlink("bin/busybox", "x"), Err(CpioError::Duplicate("bin/busybox".into())));
        assert_eq!(c.dir("bin", 0o755), Err(CpioError::Duplicate("bin".into())));
    }

    #[test]
    fn permission_bits_cannot_change_the_file_type() {
        let mut c = Newc::new();
        c.file("f", 0o170777, b"").unwrap();
        assert_eq!(read_all(&c.finish())[0].1, 0o100777);
    }
}
