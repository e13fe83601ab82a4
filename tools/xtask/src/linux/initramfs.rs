//! The initramfs of the Linux guest.

use super::cpio::{CpioError, Newc};

/// The initramfs: `/init` (a busybox script), `/bin/busybox` (and `/bin/sh`), `/bin/pkvm-check`, the mount
/// points, `/dev/console` (5,1), which the kernel opens for `/init` before anything can
/// mount devtmpfs, and the kernel's virtio `modules` (name, content) in `/lib/virtio/`.
pub fn initramfs(init: &[u8], busybox: &[u8], check: &[u8], modules: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, CpioError> {
    let mut c = Newc::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/virtio"] {
        c.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    c.char_device("dev/console", 0o600, 5, 1)?;
    c.file("init", 0o755, init)?;
    c.file("bin/busybox", 0o755, busybox)?;
    // The rest of busybox's applets are linked by /init (`busybox --install -s`).
    c.symlink("bin/sh", "busybox")?;
    c.file("bin/pkvm-check", 0o755, check)?;
    for (name, data) in modules {
        c.file(&format!("lib/virtio/{name}"), 0o644, data)?;
    }
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root;

    #[test]
    fn initramfs_has_what_the_kernel_and_init_need() {
        let a = initramfs(b"#!/bin/busybox sh\n", b"BB", b"CHECK", &[("virtio.ko", b"KO".to_vec())]).unwrap();
        let text = String::from_utf8_lossy(&a);
        for name in ["bin\0", "dev\0", "proc\0", "sys\0", "tmp\0", "dev/console\0", "init\0", "bin/busybox\0", "bin/sh\0", "bin/pkvm-check\0", "lib/virtio/virtio.ko\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name:?} missing");
        }
        // /dev/console is a character device 5:1: mode 020600, rdevmajor 5, rdevminor 1.
        let at = text.find("dev/console\0").unwrap() - 110;
        let field = |i: usize| u32::from_str_radix(&text[at + 6 + 8 * i..at + 14 + 8 * i], 16).unwrap();
        assert_eq!((field(1), field(9), field(10)), (0o020600, 5, 1));
    }

    #[test]
    fn the_init_script_runs_the_checks_and_powers_off() {
        let init = std::fs::read_to_string(root().join("tests/linux/init.sh")).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        for needed in ["mount -t proc", "mount -t sysfs", "mount -t devtmpfs", "pkvm.check=", "pkvm.virtio", "insmod /lib/virtio/", "pkvm-check \"$checks\"", "poweroff -f", "setsid cttyhack sh", "/bin/pkvm-check stamp"] {
            assert!(init.contains(needed), "init.sh lacks {needed:?}");
        }
    }
}
