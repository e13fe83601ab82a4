//! The developer front door: `cargo xtask <command>`.
//!
//! - `setup`: installs what is missing (the bare-metal Rust target, QEMU, the arm64 cross
//!   compiler) and fetches Debian's arm64 kernel and busybox for Linux guests into
//!   `target/linux/` (once per package version), saying what it does.
//! - `build`: builds the EL2 image (`boot`) and the host image (`el1-host`).
//! - `run [--guest NAME|PATH] [--vcpus N] [--non-protected] [--smp N] [--scenario NAME] [--gdb]`:
//!   builds and boots them on QEMU with a guest (default: the bundled demo guest, protected,
//!   2 vCPUs); exits with QEMU's status. `--args` adds boot arguments (e.g. `seed=7 calls=1000000`
//!   for the hostile host); `--test-image` boots the EL2 image with the test-only hypercalls.
//!   `--kernel FILE|debian [--initrd FILE] [--cmdline "..."] [--mem SIZE] [--vms N] [--mte]
//!   [--ptrauth]` boots a Linux arm64 Image as the guest instead (the host's `linux` scenario);
//!   `--kernel debian` is Debian's kernel with the project's initramfs (`tests/linux`).
//! - `test [--no-unit] [--only NAME[,NAME...]] [--all] [--repeat N] [--verbose]`: host unit
//!   tests, then every QEMU scenario in `tests/scenarios.txt` (or those named; `--all` adds those
//!   marked `default = off`, the Linux guests), each `N` times in a row.
//! - `linux-bare [--smp N] [--mte] [--icount] ...`: the baseline: the same Linux kernel and
//!   initramfs on bare QEMU at EL1, checking `PKVM-CHECK: passed` (see `linux.rs`).
//! - `check-docs`: checks `docs/ABI.md` against `shared-abi` (version, call IDs, arities,
//!   errors); `test` runs it first.
//! - `tcb`: the size of the trusted code (lines, `unsafe`, image sections, crates).
//! - `bench [--only GROUP,...]`: instruction counts of the hot paths, interrupt delivery and the
//!   Linux boot ratio (QEMU `-icount`), a table and `target/bench.json`.
//!
//! Every command but `check-docs` runs `setup` first. A missing tool is a one-line error naming the fix.

mod bench;
mod check_docs;
mod cli;
mod cpio;
mod linux;
mod qemu;
mod scenario;
mod tcb;

use std::path::{Path, PathBuf};
use qemu::Machine;
use std::process::{exit, Command, Stdio};

pub const TARGET: &str = "aarch64-unknown-none-softfloat";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let result = match cmd {
        "setup" => setup().map(|_| ()),
        "build" => setup().and_then(|tc| build(&tc, Flavour::Release).map(|_| ())),
        "run" => run(rest),
        "test" => test(rest),
        "tcb" => setup().and_then(|tc| build(&tc, Flavour::Release)).and_then(|i| tcb::run(&i)),
        "bench" => bench(rest),
        "linux-bare" => linux::bare(rest),
        "check-docs" => check_docs::run(),
        _ => {
            eprintln!("usage: cargo xtask <setup|build|run|test|bench|tcb|linux-bare|check-docs> (run, test, bench and linux-bare take --help)");
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e}");
        exit(1);
    }
}

/// How the bare-metal images are built.
pub enum Toolchain {
    /// rustup's toolchain with the installed target.
    Rustup,
    /// Debian's `rustc-web` with `-Zbuild-std` (when rustup cannot download the target).
    DebianBuildStd,
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("workspace root").to_path_buf()
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get` that waits for another package manager to finish (a fresh machine may be running
/// its own update when set-up starts) rather than failing at once on the dpkg lock.
pub fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.args(["-o", "DPkg::Lock::Timeout=600"]);
    c
}

fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    if !is_root() {
        return Err(format!("{} missing: run `sudo apt-get install {}`", pkgs[0], pkgs.join(" ")));
    }
    println!("xtask: installing {} from Debian (apt-get)...", pkgs.join(" "));
    let ok = apt_get().args(["update", "-qq"]).status().is_ok_and(|s| s.success())
        && apt_get()
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err(format!("apt-get install {} failed", pkgs.join(" "))) }
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

/// Installs what is missing and says which toolchain builds the images.
pub fn setup() -> Result<Toolchain, String> {
    let tc = if target_installed() {
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
    if !have("qemu-system-aarch64", "--version") {
        apt_install(&["qemu-system-arm"])?;
        if !have("qemu-system-aarch64", "--version") {
            return Err("qemu-system-aarch64 still missing: run `apt-get install qemu-system-arm`".into());
        }
    }
    dry_boot()?;
    linux::setup()?;
    Ok(tc)
}

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
fn dry_boot() -> Result<(), String> {
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

/// The built images.
pub struct Images {
    pub el2: PathBuf,
    pub host: PathBuf,
    /// Directory of the bundled guests (`demo`, `regs`, `isolation`, `bench`).
    pub guests: PathBuf,
}

/// The guests `tests/guests` builds (and `demo.bin`, the raw copy of `demo`).
pub const BUNDLED_GUESTS: &[&str] = &["demo", "demo.bin", "regs", "isolation", "features", "pauth", "mte", "hostile", "soak", "bench", "aarch32", "leaks", "spin", "vgic", "storm", "irqbench"];

/// Where QEMU's loader stages the guest image.
const GUEST_STAGING: u64 = shared_abi::layout::GUEST_IMAGE_STAGING;

impl Images {
    /// A bundled guest by name, or a file path.
    pub fn guest(&self, name_or_path: &str) -> Result<PathBuf, String> {
        let bundled = self.guests.join(name_or_path);
        let p = if bundled.is_file() { bundled } else { PathBuf::from(name_or_path) };
        if p.is_file() { Ok(p) } else { Err(format!("guest image {name_or_path:?} not found (bundled: {})", BUNDLED_GUESTS.join(", "))) }
    }
}

/// Which EL2 image to build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavour {
    /// The image users run.
    Release,
    /// With the `test-hooks` feature (test-only hypercalls), in its own target directory.
    TestHooks,
}

fn build(tc: &Toolchain, flavour: Flavour) -> Result<Images, String> {
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
    // A raw (flat binary) copy of the demo guest, to exercise the host's raw-image loader the
    // way a Linux `Image` would be loaded.
    flatten_elf(&dir.join("demo"), &dir.join("demo.bin"))?;
    Ok(Images { el2: dir.join("boot"), host: dir.join("el1-host"), guests: dir })
}

/// The QEMU machine for `images` with `smp` CPUs, boot arguments `bootargs` and the guest
/// image `guest` staged for the host.
pub fn qemu_machine(images: &Images, smp: u32, bootargs: &str, guest: &Path) -> Result<Machine, String> {
    let size = std::fs::metadata(guest).map(|m| m.len()).unwrap_or(0);
    Ok(hyp_machine(images, Machine::virt()?, smp, guest).args(["-append", &format!("{bootargs} guest={GUEST_STAGING:#x},{size}")]))
}

/// `machine` with `smp` CPUs, EL2 and the host, and `guest` staged for the host at
/// [`GUEST_STAGING`]; the caller adds the host's boot arguments (`-append`).
pub fn hyp_machine(images: &Images, machine: Machine, smp: u32, guest: &Path) -> Machine {
    machine.smp(smp).serial_on_stdio().kernel(&images.el2).loader(&images.host, None).loader(guest, Some(GUEST_STAGING))
}

/// Writes the loadable segments of an ELF64 file as a flat binary starting at the lowest
/// load address (what `objcopy -O binary` does).
fn flatten_elf(elf: &Path, out: &Path) -> Result<(), String> {
    let f = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let rd = |o: usize, n: usize| -> Option<u64> { Some(f.get(o..o + n)?.iter().rev().fold(0u64, |a, b| a << 8 | *b as u64)) };
    let bad = || format!("{}: not an ELF64 image", elf.display());
    if f.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(bad());
    }
    let (phoff, phentsize, phnum) = (rd(32, 8).ok_or_else(bad)? as usize, rd(54, 2).ok_or_else(bad)? as usize, rd(56, 2).ok_or_else(bad)? as usize);
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd(ph, 4) == Some(1) && rd(ph + 32, 8).unwrap_or(0) > 0 {
            segs.push((rd(ph + 24, 8).ok_or_else(bad)?, rd(ph + 8, 8).ok_or_else(bad)? as usize, rd(ph + 32, 8).ok_or_else(bad)? as usize));
        }
    }
    let base = segs.iter().map(|s| s.0).min().ok_or_else(bad)?;
    let end = segs.iter().map(|s| s.0 + s.2 as u64).max().ok_or_else(bad)?;
    let mut img = vec![0u8; (end - base) as usize];
    for (paddr, off, size) in segs {
        let at = (paddr - base) as usize;
        img[at..at + size].copy_from_slice(f.get(off..off + size).ok_or_else(bad)?);
    }
    std::fs::write(out, img).map_err(|e| format!("{}: {e}", out.display()))
}

/// The address of the symbol `name` in an ELF64 file (its `.symtab`).
pub fn elf_symbol(elf: &Path, name: &str) -> Option<u64> {
    let f = std::fs::read(elf).ok()?;
    let rd = |o: usize, n: usize| -> Option<u64> { Some(f.get(o..o + n)?.iter().rev().fold(0u64, |a, b| a << 8 | *b as u64)) };
    if f.get(..4) != Some(b"\x7fELF".as_slice()) {
        return None;
    }
    let (shoff, shentsize, shnum) = (rd(40, 8)? as usize, rd(58, 2)? as usize, rd(60, 2)? as usize);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if rd(sh + 4, 4)? != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size, link, entsize) = (rd(sh + 24, 8)? as usize, rd(sh + 32, 8)? as usize, rd(sh + 40, 4)? as usize, rd(sh + 56, 8)? as usize);
        let strtab = rd(section(link)? + 24, 8)? as usize;
        for sym in (off..off.checked_add(size)?).step_by(entsize.max(1)) {
            let name_at = strtab.checked_add(rd(sym, 4)? as usize)?;
            let end = name_at + f.get(name_at..)?.iter().position(|&b| b == 0)?;
            if &f[name_at..end] == name.as_bytes() {
                return rd(sym + 8, 8);
            }
        }
    }
    None
}

/// The largest image the host can load: QEMU stages it at GUEST_STAGING, and the host gives
/// the VM 16 MiB of RAM, less 64 KiB for the device tree (a raw image goes at RAM + 0x80000).
const GUEST_RAM: u64 = 16 << 20;
const RAW_IMAGE_OFFSET: u64 = 0x8_0000;
const DTB_SPACE: u64 = 64 << 10;

fn run(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("run", args, cli::RUN_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("run", cli::RUN_FLAGS));
        return Ok(());
    }
    // Everything that can be checked without QEMU is checked before anything is built.
    let smp = flags.number("--smp", 2, 1..=8)?;
    if let Some(kernel) = flags.value("--kernel") {
        return run_linux(&flags, kernel, smp);
    }
    if let Some(f) = cli::LINUX_ONLY_FLAGS.iter().find(|f| flags.has(f)) {
        return Err(format!("{f} is for a Linux guest: add --kernel FILE (or --kernel debian)"));
    }
    let vcpus = flags.number("--vcpus", 2, 1..=8)?;
    let scenario = flags.value("--scenario").unwrap_or("demo").to_string();
    if scenario == "demo" && vcpus > smp {
        return Err(format!("--vcpus {vcpus}: the demo runs one vCPU per host CPU, so at most --smp ({smp})"));
    }
    let tc = setup()?;
    let flavour = if flags.has("--test-image") { Flavour::TestHooks } else { Flavour::Release };
    let images = build(&tc, flavour)?;
    let guest = images.guest(flags.value("--guest").unwrap_or("demo"))?;
    let size = std::fs::metadata(&guest).map_err(|e| format!("{}: {e}", guest.display()))?.len();
    let is_elf = std::fs::read(&guest).ok().is_some_and(|b| b.starts_with(b"\x7fELF"));
    let limit = if is_elf { GUEST_RAM - DTB_SPACE } else { GUEST_RAM - RAW_IMAGE_OFFSET - DTB_SPACE };
    if size > limit {
        return Err(format!(
            "guest image {} is {size} bytes: the limit is {limit} bytes ({} MiB of guest RAM{})",
            guest.display(),
            GUEST_RAM >> 20,
            if is_elf { ", less the device tree" } else { ", less the 0x80000 load offset and the device tree" }
        ));
    }
    let vm = if flags.has("--non-protected") { "plain" } else { "protected" };
    let extra = flags.value("--args").unwrap_or_default();
    let mut machine = qemu_machine(&images, smp, &format!("scenario={scenario} vm={vm} vcpus={vcpus} {extra}"), &guest)?;
    if flags.has("--gdb") {
        println!("xtask: QEMU waits for gdb on :1234 (gdb-multiarch {} -ex 'target remote :1234')", images.el2.display());
        machine = machine.args(["-s", "-S"]);
    }
    println!(
        "xtask: booting the hypervisor on QEMU virt ({smp} CPUs, scenario {scenario}, guest {} as a {vm} VM with {vcpus} vCPU(s)); the host powers off when done",
        guest.display()
    );
    let status = machine.run_attached(false)?;
    match status.code() {
        Some(0) => {
            println!("xtask: QEMU exited 0: all went well");
            Ok(())
        }
        code => Err(format!("QEMU exited with {code:?}: the run failed (see the log above)")),
    }
}

/// `run --kernel`: a Linux guest under the hypervisor (the host's `linux` scenario).
fn run_linux(flags: &cli::Parsed, kernel: &str, smp: u32) -> Result<(), String> {
    if flags.has("--guest") {
        return Err("--guest and --kernel both name the guest: choose one".into());
    }
    if flags.has("--protected") && flags.has("--non-protected") {
        return Err("--protected and --non-protected: choose one".into());
    }
    let vcpus = flags.number("--vcpus", 2, 1..=8)?;
    let vms = flags.number("--vms", 1, 1..=2)?;
    let mem_mib = linux::parse_mem(flags.value("--mem").unwrap_or("512M"))?;
    let cmdline = flags.value("--cmdline").unwrap_or(linux::DEFAULT_CMDLINE).to_string();
    // The limits that need no file, before anything is fetched or built.
    linux::check_limits(0, None, cmdline.len(), mem_mib, vcpus, vms)?;
    if kernel != "debian" {
        let head = std::fs::read(kernel).map_err(|e| format!("--kernel {kernel}: {e}"))?;
        linux::check_image_header(&head).map_err(|e| format!("--kernel {kernel}: {e}"))?;
    }
    let tc = setup()?;
    let (kernel, default_initrd) = if kernel == "debian" {
        let a = linux::artifacts()?;
        (a.image, Some(a.initramfs))
    } else {
        (PathBuf::from(kernel), None)
    };
    let run = linux::LinuxRun {
        scenario: flags.value("--scenario").unwrap_or("linux").to_string(),
        kernel,
        initrd: flags.value("--initrd").map(PathBuf::from).or(default_initrd),
        cmdline,
        mem_mib,
        vcpus,
        protected: !flags.has("--non-protected"),
        mte: flags.has("--mte"),
        ptrauth: flags.has("--ptrauth"),
        vms,
    };
    run.validate()?;
    let flavour = if flags.has("--test-image") { Flavour::TestHooks } else { Flavour::Release };
    let images = build(&tc, flavour)?;
    let (mut machine, _cmdline_file) = linux::hyp_machine(&images, smp, &run, flags.value("--args").unwrap_or_default())?;
    if flags.has("--gdb") {
        println!("xtask: QEMU waits for gdb on :1234 (gdb-multiarch {} -ex 'target remote :1234')", images.el2.display());
        machine = machine.args(["-s", "-S"]);
    }
    println!(
        "xtask: booting the hypervisor on QEMU virt ({smp} CPUs, 2 GiB) with Linux {} as {vms} {} VM(s) of {vcpus} vCPU(s) and {mem_mib} MiB, MTE {}, pointer authentication {}{}",
        run.kernel.display(),
        if run.protected { "protected" } else { "non-protected" },
        if run.mte { "on" } else { "off" },
        if run.ptrauth { "on" } else { "off" },
        run.initrd.as_ref().map_or(String::new(), |i| format!(", initrd {}", i.display()))
    );
    println!("xtask: guest command line: {}", run.cmdline);
    // The console is the terminal's: a shell in the guest can be used (Ctrl-C ends QEMU).
    let status = machine.run_attached(true)?;
    match status.code() {
        Some(0) => {
            println!("xtask: QEMU exited 0: all went well");
            Ok(())
        }
        code => Err(format!("QEMU exited with {code:?}: the run failed (see the log above)")),
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("bench", args, cli::BENCH_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("bench", cli::BENCH_FLAGS));
        return Ok(());
    }
    let groups: Vec<&str> = match flags.value("--only") {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => bench::GROUPS.to_vec(),
    };
    if let Some(g) = groups.iter().find(|g| !bench::GROUPS.contains(g)) {
        return Err(format!("--only {g:?}: the groups are {}", bench::GROUPS.join(", ")));
    }
    let images = setup().and_then(|tc| build(&tc, Flavour::Release))?;
    bench::run(&images, &groups)
}

fn test(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("test", args, cli::TEST_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("test", cli::TEST_FLAGS));
        return Ok(());
    }
    let repeat = flags.number("--repeat", 1, 1..=1000)?;
    check_docs::run()?;
    let tc = setup()?;
    if !flags.has("--no-unit") {
        println!("xtask: host unit tests (cargo test)");
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["test", "--workspace", "--exclude", "boot", "--exclude", "el1-host", "--exclude", "guests"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("host unit tests failed".into());
        }
    }
    let release = build(&tc, Flavour::Release)?;
    let test_hooks = build(&tc, Flavour::TestHooks)?;
    scenario::run_all(&release, &test_hooks, flags.value("--only"), flags.has("--all"), repeat, flags.has("--verbose"))
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
