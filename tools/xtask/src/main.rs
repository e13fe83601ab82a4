//! The developer front door: `cargo xtask <command>`.
//!
//! - `setup`: installs what is missing (the bare-metal Rust target, QEMU, the arm64 cross
//!   compiler), fetches Debian's arm64 kernel and busybox for Linux guests into
//!   `target/linux/` (once per package version) and builds the pKVM guest kernel into
//!   `~/.cache/pkvm-rs/kernel/` and kvm-unit-tests into `~/.cache/pkvm-rs/kvm-unit-tests/`
//!   (once per machine), saying what it does.
//! - `build`: builds the EL2 image (`boot`) and the host image (`el1-host`).
//! - `run [--guest NAME|PATH] [--vcpus N] [--mem SIZE] [--non-protected] [--smp N] [--scenario NAME] [--gdb]`:
//!   builds and boots them on QEMU with a guest (default: the bundled demo guest, protected,
//!   2 vCPUs); exits with QEMU's status. `--args` adds boot arguments (e.g. `seed=7 calls=1000000`
//!   for the hostile host); `--test-image` boots the EL2 image with the test-only hypercalls.
//!   `--kernel FILE|debian|pkvm|kut:NAME.flat [--initrd FILE] [--disk FILE] [--cmdline "..."]
//!   [--mem SIZE] [--vms N] [--mte] [--ptrauth]` boots a Linux arm64 Image or a raw image as
//!   the guest instead (the host's `linux` scenario; `--disk`: an image behind its virtio-blk);
//!   `--kernel debian` is Debian's kernel, `--kernel pkvm` the project's pKVM guest kernel, both
//!   with the project's initramfs (`tests/linux`), `kut:NAME.flat` a kvm-unit-tests program.
//! - `test [--no-unit] [--only NAME[,NAME...]] [--all] [--repeat N] [--verbose]`: host unit
//!   tests, then every QEMU scenario in `tests/scenarios.txt` (or those named; `--all` adds those
//!   marked `default = off`, the Linux guests), each `N` times in a row.
//! - `linux-bare [--smp N] [--mte] [--icount] ...`: the baseline: the same Linux kernel and
//!   initramfs on bare QEMU at EL1, checking `PKVM-CHECK: passed` (see `linux/bare.rs`).
//! - `check-docs`: checks `docs/ABI.md` against `shared-abi` (version, call IDs, arities,
//!   errors); `test` runs it first.
//! - `tcb`: the size of the trusted code (lines, `unsafe`, image sections, crates).
//! - `measure [--guest NAME|PATH] [--vcpus N] [--mem SIZE] [--non-protected]`, or with `--kernel
//!   FILE|debian [--initrd FILE] [--disk FILE] [--cmdline "..."] [--mem SIZE] [--mte] [--ptrauth]`: a VM's
//!   measurement, computed offline (what its guest reads from its handover page, what
//!   `VM_MEASUREMENT` tells the host).
//! - `bench [--only GROUP,...]`: instruction counts of the hot paths, interrupt delivery and the
//!   Linux boot ratio (QEMU `-icount`), a table and `target/bench.json`.
//!
//! Every command but `check-docs` runs `setup` first. A missing tool is a one-line error naming the fix.

mod bench;
mod build;
mod check_docs;
mod cli;
mod figures;
mod images;
mod linux;
mod measure;
mod qemu;
mod run;
mod scenario;
mod setup;
mod tcb;
mod test;

use build::Flavour;
use std::path::{Path, PathBuf};
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let result = match cmd {
        "setup" => setup::setup().map(|_| ()),
        "build" => setup::setup().and_then(|tc| build::build(&tc, Flavour::Release).map(|_| ())),
        "run" => run::command(rest),
        "test" => test::command(rest),
        "tcb" => setup::setup().and_then(|tc| build::build(&tc, Flavour::Release)).and_then(|i| tcb::run(&i)),
        "bench" => bench::command(rest),
        "linux-bare" => linux::bare::command(rest),
        "check-docs" => check_docs::run(),
        "measure" => measure::command(rest),
        _ => {
            eprintln!("usage: cargo xtask <setup|build|run|test|bench|tcb|linux-bare|check-docs|measure> (run, test, bench, linux-bare and measure take --help)");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e}");
        exit(1);
    }
}

/// The workspace's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("workspace root").to_path_buf()
}
