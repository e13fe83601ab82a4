//! The Rust toolchain that builds the bare-metal images.

use super::apt::apt_install;
use crate::build::TARGET;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the bare-metal images are built.
pub enum Toolchain {
    /// rustup's toolchain with the installed target.
    Rustup,
    /// Debian's `rustc-web` with `-Zbuild-std` (when rustup cannot download the target).
    DebianBuildStd,
}

fn target_installed() -> bool {
    Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore"))))
}

/// Installs the bare-metal target with rustup, or else Debian's Rust with its library source,
/// and says which toolchain builds the images.
pub fn install() -> Result<Toolchain, String> {
    let toolchain = if target_installed() {
        Toolchain::Rustup
    } else {
        println!("xtask: installing the Rust target {TARGET} (rustup target add)...");
        let ok = Command::new("rustup").args(["target", "add", TARGET]).status().is_ok_and(|s| s.success());
        if ok && target_installed() {
            Toolchain::Rustup
        } else {
            println!("xtask: rustup could not install {TARGET}; falling back to Debian's rustc-web with -Zbuild-std");
            if !Path::new("/usr/bin/rustc").exists() || !Path::new("/usr/lib/rustlib/src").exists() {
                apt_install(&["rustc-web", "cargo-web", "rust-web-src"])?;
            }
            Toolchain::DebianBuildStd
        }
    };
    Ok(toolchain)
}
