//! `cargo xtask setup`, which every command but `check-docs` runs first: installs what is
//! missing (the bare-metal Rust target, QEMU, the arm64 cross compiler), proves QEMU can start
//! the project's machine, fetches Debian's arm64 kernel and busybox for Linux guests, and
//! builds the project's pKVM guest kernel and kvm-unit-tests (once per machine,
//! `linux/kernel.rs`, `linux/kut.rs`).

pub mod apt;
mod dryboot;
mod toolchain;

use crate::linux;
use apt::{apt_install, have};
pub use toolchain::Toolchain;

/// Installs what is missing and says which toolchain builds the images.
pub fn setup() -> Result<Toolchain, String> {
    let tc = toolchain::install()?;
    if !have("qemu-system-aarch64", "--version") {
        apt_install(&["qemu-system-arm"])?;
        if !have("qemu-system-aarch64", "--version") {
            return Err("qemu-system-aarch64 still missing: run `apt-get install qemu-system-arm`".into());
        }
    }
    dryboot::dry_boot()?;
    linux::artifacts::setup()?;
    Ok(tc)
}
