//! The dry boot: QEMU starts the project's machine with a stub that powers off at once.

use crate::qemu::{self, Machine};

/// A 16-byte AArch64 program that powers the machine off: `w0 = PSCI SYSTEM_OFF (0x8400_0008)`,
/// `smc #0` (QEMU answers PSCI itself with `secure=off`), then `b .`.
const POWER_OFF_STUB: [u8; 16] = [
    0x00, 0x01, 0x80, 0x52, // movz w0, #0x0008
    0x00, 0x80, 0xb0, 0x72, // movk w0, #0x8400, lsl #16
    0x03, 0x00, 0x00, 0xd4, // smc #0
    0x00, 0x00, 0x00, 0x14, // b .
];

/// Proves QEMU can start the machine of `qemu/virt.args` with only what `setup` installed:
/// boots a stub that powers off at once. A missing firmware or option ROM (an optional Debian
/// package) is named here, before any build, instead of failing every scenario later.
pub fn dry_boot() -> Result<(), String> {
    let stub = std::env::temp_dir().join(format!("xtask-dry-boot-{}.bin", std::process::id()));
    std::fs::write(&stub, POWER_OFF_STUB).map_err(|e| format!("{}: {e}", stub.display()))?;
    let result = Machine::virt().and_then(|m| {
        let machine = m.smp(1).args(["-display", "none", "-monitor", "none", "-serial", "none"]).kernel(&stub);
        let out = qemu::Run::new(&machine).deadline(std::time::Duration::from_secs(30)).wait()?;
        match out.status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(dry_boot_failure(&out.texts().join("\n"), status.code())),
            None => Err("QEMU started the machine of qemu/virt.args but the power-off stub did not end it within 30 s".into()),
        }
    });
    let _ = std::fs::remove_file(&stub);
    result
}

/// Explains why QEMU could not start the machine, naming the Debian package when it is a
/// missing optional file.
fn dry_boot_failure(stderr: &str, code: Option<i32>) -> String {
    let stderr = stderr.trim();
    let missing = stderr.split('"').nth(1).filter(|_| stderr.contains("failed to find romfile") || stderr.contains("Could not find ROM"));
    let package = missing.and_then(|f| match f {
        f if f.starts_with("efi-") || f.starts_with("pxe-") => Some("ipxe-qemu"),
        f if f.starts_with("vgabios") || f.starts_with("bios") => Some("seabios"),
        f if f.contains("edk2") || f.contains("AAVMF") => Some("qemu-efi-aarch64"),
        _ => None,
    });
    match (missing, package) {
        (Some(file), Some(pkg)) => format!(
            "QEMU cannot start the machine in qemu/virt.args: it needs {file:?}, which Debian ships in the optional package {pkg} \
             (not installed). Remove the device that wants it from qemu/virt.args, or run `apt-get install {pkg}`.\n  QEMU said: {stderr}"
        ),
        (Some(file), None) => format!("QEMU cannot start the machine in qemu/virt.args: file {file:?} is missing.\n  QEMU said: {stderr}"),
        _ => format!("QEMU cannot start the machine in qemu/virt.args (exit status {code:?}).\n  QEMU said: {stderr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_boot_names_the_missing_package() {
        let e = dry_boot_failure("qemu-system-aarch64: failed to find romfile \"efi-virtio.rom\"\n", Some(1));
        assert!(e.contains("\"efi-virtio.rom\"") && e.contains("ipxe-qemu"), "{e}");
        let e = dry_boot_failure("qemu-system-aarch64: failed to find romfile \"mystery.rom\"", Some(1));
        assert!(e.contains("\"mystery.rom\" is missing"), "{e}");
        let e = dry_boot_failure("qemu-system-aarch64: -machine foo: unsupported", Some(1));
        assert!(e.contains("exit status Some(1)") && e.contains("unsupported"), "{e}");
    }
}
