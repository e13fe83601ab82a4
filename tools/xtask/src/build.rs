//! The cargo build of the bare-metal images: EL2 (`boot`), the host (`el1-host`) and the test
//! guests, for [`TARGET`].

use crate::images::{flatten_elf, Images};
use crate::root;
use crate::setup::Toolchain;
use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "aarch64-unknown-none-softfloat";

/// Which EL2 image to build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavour {
    /// The image users run.
    Release,
    /// With the `test-hooks` feature (test-only hypercalls), in its own target directory.
    TestHooks,
}

pub fn build(tc: &Toolchain, flavour: Flavour) -> Result<Images, String> {
    let root = root();
    let mut cmd = match tc {
        Toolchain::Rustup => {
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.arg("build");
            c
        }
        Toolchain::DebianBuildStd => {
            let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().map_err(|e| e.to_string())?;
            let lld = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
                .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld");
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_AARCH64_UNKNOWN_NONE_SOFTFLOAT_LINKER", lld)
                .args(["build", "-Zbuild-std=core,alloc"]);
            c
        }
    };
    let target_dir = match flavour {
        Flavour::Release => root.join("target"),
        Flavour::TestHooks => root.join("target/test-hooks"),
    };
    println!("xtask: building the EL2 and host images for {TARGET} ({flavour:?})...");
    cmd.current_dir(&root)
        .args(["--release", "--target", TARGET, "-p", "boot", "-p", "el1-host", "-p", "guests"])
        .arg("--target-dir")
        .arg(&target_dir);
    if flavour == Flavour::TestHooks {
        cmd.args(["--features", "boot/test-hooks"]);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("build failed".into());
    }
    let dir = target_dir.join(TARGET).join("release");
    debug_assert!(flavour != Flavour::Release || dir == release_dir());
    // A raw (flat binary) copy of the demo guest, to exercise the host's raw-image loader the
    // way a Linux `Image` would be loaded.
    flatten_elf(&dir.join("demo"), &dir.join("demo.bin"))?;
    Ok(Images { el2: dir.join("boot"), host: dir.join("el1-host"), guests: dir })
}

/// Where a release build leaves the images and the test guests (the test guests are the same
/// in both flavours: `guest:NAME` names them here).
pub fn release_dir() -> PathBuf {
    crate::root().join("target").join(TARGET).join("release")
}
