//! Linux guests: Debian's arm64 kernel and busybox (fetched by `setup` into `target/linux/`),
//! the userspace check program `tests/linux/pkvm-check.c`, the initramfs, the QEMU command
//! lines for a Linux guest under the hypervisor and for the same kernel on bare QEMU (the
//! baseline, `cargo xtask linux-bare`), and the boot-to-userspace measurement the benchmark
//! compares between the two.
//!
//! The cache, keyed by Debian package versions, is never committed:
//!
//! ```text
//! target/linux/resolved                      which versions, for which state of apt's lists
//! target/linux/<kernel package>_<version>/Image
//! target/linux/busybox-static_<version>/busybox
//! target/linux/pkvm-check                    built from tests/linux/pkvm-check.c
//! target/linux/initramfs.cpio                /init, /bin/busybox, /bin/pkvm-check, /dev/console
//! ```

use crate::cpio::Newc;
use crate::qemu::{self, Machine};
use crate::{apt_install, is_root, root, Images};
use shared_abi::layout::{GUEST_CMDLINE_MAX, GUEST_CMDLINE_STAGING, GUEST_IMAGE_MAX, GUEST_IMAGE_STAGING, GUEST_INITRD_MAX, GUEST_INITRD_STAGING};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Debian meta-package that names the current cloud kernel, and busybox.
const KERNEL_META: &str = "linux-image-cloud-arm64:arm64";
const BUSYBOX: &str = "busybox-static";

/// The cross compiler for the check program (Debian amd64 packages).
const CROSS_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];
const CROSS_GCC: &str = "aarch64-linux-gnu-gcc";

/// The kernel command line for Linux runs without `--cmdline`.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 earlycon=pl011,0x09000000 panic=-1";

/// Set to 1 to let `setup` go on without the Linux artifacts (Linux scenarios are then skipped).
pub const OPTIONAL_ENV: &str = "XTASK_LINUX_OPTIONAL";

/// The bytes `ARM\x64` at offset 0x38 of an arm64 `Image` header (Linux
/// Documentation/arch/arm64/booting.rst), and the header's flags at offset 0x18.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
const IMAGE_MAGIC_OFFSET: usize = 0x38;
const IMAGE_FLAGS_OFFSET: usize = 0x18;
/// The first bytes of an ELF file (a test guest the Linux VMM runs instead of a kernel).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Guest memory per VM, in MiB, and for all VMs together: what EL2 and the host can give out
/// of the 2 GiB machine a Linux run uses.
pub const MEM_MIB_RANGE: core::ops::RangeInclusive<u32> = 64..=1536;
pub const MEM_MIB_TOTAL: u32 = 1536;
/// The machine's RAM for Linux runs (EL2 supports at most 2 GiB).
const LINUX_MACHINE_RAM: &str = "2G";

fn cache() -> PathBuf {
    root().join("target/linux")
}

// ---- Fetching the Debian packages -----------------------------------------------------------

/// What apt resolved: the concrete kernel package and the versions of both packages.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Resolved {
    kernel_package: String,
    kernel_version: String,
    busybox_version: String,
}

impl Resolved {
    fn kernel_dir(&self) -> PathBuf {
        cache().join(cache_key(&self.kernel_package, &self.kernel_version))
    }
    fn busybox_dir(&self) -> PathBuf {
        cache().join(cache_key(BUSYBOX, &self.busybox_version))
    }
    fn to_text(&self, lists: &str) -> String {
        format!("lists {lists}\nkernel {} {}\nbusybox {}\n", self.kernel_package, self.kernel_version, self.busybox_version)
    }
    /// Reads `target/linux/resolved`: the resolution and the apt-lists stamp it was made for.
    fn from_text(text: &str) -> Option<(Resolved, String)> {
        let mut lines = text.lines();
        let lists = lines.next()?.strip_prefix("lists ")?.to_string();
        let (kernel_package, kernel_version) = lines.next()?.strip_prefix("kernel ")?.split_once(' ')?;
        let busybox_version = lines.next()?.strip_prefix("busybox ")?.to_string();
        let r = Resolved { kernel_package: kernel_package.into(), kernel_version: kernel_version.into(), busybox_version };
        Some((r, lists))
    }
}

/// A directory name for a package version (`:` of an epoch is not wanted in paths).
fn cache_key(package: &str, version: &str) -> String {
    format!("{package}_{}", version.replace(':', "%3a"))
}

/// Parses `apt-cache show --no-all-versions linux-image-cloud-arm64:arm64 busybox-static:arm64`:
/// the meta-package's `Depends` names the kernel package and its exact version.
fn parse_apt_show(text: &str) -> Result<Resolved, String> {
    let mut kernel = None;
    let mut busybox_version = None;
    for record in text.split("\n\n") {
        let field = |name: &str| record.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")).map(str::trim);
        match field("Package") {
            Some("linux-image-cloud-arm64") => {
                let dep = field("Depends").ok_or("linux-image-cloud-arm64 has no Depends")?;
                // "linux-image-6.1.0-57-cloud-arm64 (= 6.1.192-3)", perhaps among others.
                let first = dep.split(',').map(str::trim).find(|d| d.starts_with("linux-image-")).ok_or(format!("no kernel in Depends: {dep}"))?;
                let (name, rest) = first.split_once(' ').ok_or(format!("no exact version in Depends: {dep}"))?;
                let version = rest.trim().strip_prefix("(=").and_then(|v| v.strip_suffix(')')).ok_or(format!("no exact version in Depends: {dep}"))?;
                kernel = Some((name.to_string(), version.trim().to_string()));
            }
            Some(BUSYBOX) => busybox_version = field("Version").map(String::from),
            _ => {}
        }
    }
    let (kernel_package, kernel_version) = kernel.ok_or("apt-cache knows no linux-image-cloud-arm64:arm64")?;
    let busybox_version = busybox_version.ok_or("apt-cache knows no busybox-static:arm64")?;
    Ok(Resolved { kernel_package, kernel_version, busybox_version })
}

/// A stamp of apt's package lists: a resolution made for the same lists still holds, so a
/// cached `setup` asks apt nothing (apt-cache takes over a second here).
fn apt_lists_stamp() -> String {
    let mut newest = 0u128;
    let mut count = 0;
    if let Ok(dir) = std::fs::read_dir("/var/lib/apt/lists") {
        for e in dir.flatten() {
            if let Ok(m) = e.metadata() {
                count += 1;
                let t = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
                newest = newest.max(t);
            }
        }
    }
    format!("{count}-{newest}")
}

fn run_quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn apt_update() -> Result<(), String> {
    println!("xtask: apt-get update (for the arm64 package lists)...");
    run_quiet(crate::apt_get().args(["update", "-qq"])).map(|_| ())
}

fn resolve() -> Result<Resolved, String> {
    let text = run_quiet(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META, &format!("{BUSYBOX}:arm64")]))?;
    parse_apt_show(&text)
}

/// Downloads `package:arm64=version` and extracts it into a fresh directory.
fn download_and_extract(package: &str, version: &str, work: &Path) -> Result<PathBuf, String> {
    let dl = work.join(format!("download-{package}"));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(|e| format!("{}: {e}", dl.display()))?;
    // apt-get downloads as the unprivileged `_apt` user when that user can write there (else
    // it warns and downloads as root).
    let _ = std::fs::set_permissions(&dl, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    println!("xtask: downloading {package}:arm64 {version} from Debian (apt-get download)...");
    run_quiet(crate::apt_get().current_dir(&dl).args(["download", "-qq", &format!("{package}:arm64={version}")]))?;
    let deb = std::fs::read_dir(&dl)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or(format!("apt-get download {package} left no .deb"))?;
    let tree = work.join(format!("tree-{package}"));
    let _ = std::fs::remove_dir_all(&tree);
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let _ = std::fs::remove_dir_all(&dl);
    Ok(tree)
}

/// Puts `file` alone into the cache directory `dir` (written under a temporary name first, so
/// a half-made entry is never taken for a cached one).
fn install_into_cache(file: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::copy(file, tmp.join(name)).map_err(|e| format!("{}: {e}", file.display()))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Fetches the kernel `Image` and busybox unless cached.
fn fetch(r: &Resolved) -> Result<(), String> {
    let work = cache().join(format!("work-{}", std::process::id()));
    let result = (|| {
        if !r.kernel_dir().join("Image").is_file() {
            let tree = download_and_extract(&r.kernel_package, &r.kernel_version, &work)?;
            let boot = tree.join("boot");
            let vmlinuz = std::fs::read_dir(&boot)
                .map_err(|e| format!("{}: {e}", boot.display()))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
                .ok_or(format!("{} has no /boot/vmlinuz-*", r.kernel_package))?;
            // On arm64 the vmlinuz is already the raw Image the boot protocol loads.
            check_image_header(&std::fs::read(&vmlinuz).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", vmlinuz.display()))?;
            install_into_cache(&vmlinuz, &r.kernel_dir(), "Image")?;
        }
        if !r.busybox_dir().join("busybox").is_file() {
            let tree = download_and_extract(BUSYBOX, &r.busybox_version, &work)?;
            install_into_cache(&tree.join("bin/busybox"), &r.busybox_dir(), "busybox")?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Removes cache entries of other versions than `r`'s.
fn prune(r: &Resolved) {
    let keep = [r.kernel_dir(), r.busybox_dir()];
    let Ok(dir) = std::fs::read_dir(cache()) else { return };
    for e in dir.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && (name.starts_with("linux-image-") || name.starts_with(BUSYBOX)) && !keep.contains(&p) {
            println!("xtask: removing the old cache entry {}", p.display());
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// `setup`'s part for Linux guests: the arm64 architecture in dpkg, the kernel and busybox in
/// the cache (apt is asked only when its lists changed since the last resolution), and the
/// cross compiler for the check program.
pub fn setup() -> Result<(), String> {
    let result = fetch_all().and_then(|_| install_cross_compiler());
    match result {
        Err(e) if std::env::var(OPTIONAL_ENV).is_ok_and(|v| v == "1") => {
            println!("xtask: warning: no Linux guest artifacts ({e}); {OPTIONAL_ENV}=1, so going on without them");
            Ok(())
        }
        r => r.map_err(|e| format!("{e}\n  (Linux guest artifacts: `cargo xtask setup` fetches them; {OPTIONAL_ENV}=1 goes on without them)")),
    }
}

fn fetch_all() -> Result<(), String> {
    std::fs::create_dir_all(cache()).map_err(|e| format!("{}: {e}", cache().display()))?;
    let mut updated = false;
    let foreign = run_quiet(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if !foreign.lines().any(|a| a.trim() == "arm64") {
        if !is_root() {
            return Err("dpkg lacks the arm64 architecture: run `sudo dpkg --add-architecture arm64 && sudo apt-get update`".into());
        }
        println!("xtask: adding the arm64 architecture to dpkg (for the guest kernel and busybox)");
        // dpkg takes its lock for this too: wait (up to 10 minutes) for another package
        // manager, as `apt_get` does.
        let mut tries = 0;
        while let Err(e) = run_quiet(Command::new("dpkg").args(["--add-architecture", "arm64"])) {
            tries += 1;
            if tries == 120 {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        apt_update()?;
        updated = true;
    }
    let record = cache().join("resolved");
    let stamp = apt_lists_stamp();
    let cached = std::fs::read_to_string(&record).ok().and_then(|t| Resolved::from_text(&t));
    if let Some((r, lists)) = &cached {
        if *lists == stamp && r.kernel_dir().join("Image").is_file() && r.busybox_dir().join("busybox").is_file() {
            return Ok(());
        }
    }
    let r = match resolve() {
        Ok(r) => r,
        Err(_) if !updated => {
            apt_update()?;
            updated = true;
            resolve()?
        }
        Err(e) => return Err(e),
    };
    let r = match fetch(&r) {
        Ok(()) => r,
        // Lists older than the mirror name versions it no longer has: update once and retry.
        Err(e) if !updated => {
            println!("xtask: {e}; updating apt's lists and trying again");
            apt_update()?;
            let r = resolve()?;
            fetch(&r)?;
            r
        }
        Err(e) => return Err(e),
    };
    std::fs::write(&record, r.to_text(&apt_lists_stamp())).map_err(|e| format!("{}: {e}", record.display()))?;
    prune(&r);
    println!("xtask: Linux guest: {} {} and busybox {} in {}", r.kernel_package, r.kernel_version, r.busybox_version, cache().display());
    Ok(())
}

fn cross_compiler_ready() -> bool {
    crate::have(CROSS_GCC, "--version") && Path::new("/usr/aarch64-linux-gnu/lib/libc.a").is_file()
}

fn install_cross_compiler() -> Result<(), String> {
    if !cross_compiler_ready() {
        apt_install(CROSS_PACKAGES)?;
        if !cross_compiler_ready() {
            return Err(format!("{CROSS_GCC} or the static arm64 libc still missing: run `apt-get install {}`", CROSS_PACKAGES.join(" ")));
        }
    }
    Ok(())
}

// ---- The check program and the initramfs ----------------------------------------------------

/// The Debian kernel and the project's initramfs, ready to boot.
pub struct Artifacts {
    pub image: PathBuf,
    pub initramfs: PathBuf,
    /// E.g. `linux-image-6.1.0-57-cloud-arm64 6.1.192-3`.
    pub kernel: String,
}

/// The cached kernel and busybox (no apt: `setup` fetched them), the check program built and
/// the initramfs packed.
pub fn artifacts() -> Result<Artifacts, String> {
    let missing = || "the Debian kernel and busybox are not in target/linux: run `cargo xtask setup`".to_string();
    let text = std::fs::read_to_string(cache().join("resolved")).map_err(|_| missing())?;
    let (r, _) = Resolved::from_text(&text).ok_or_else(missing)?;
    let image = r.kernel_dir().join("Image");
    let busybox = r.busybox_dir().join("busybox");
    if !image.is_file() || !busybox.is_file() {
        return Err(missing());
    }
    let check = build_check_program()?;
    let init = root().join("tests/linux/init.sh");
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let archive = initramfs(&read(&init)?, &read(&busybox)?, &read(&check)?).map_err(|e| e.to_string())?;
    let initramfs = cache().join("initramfs.cpio");
    // Written only when it changed, so its modification time means something.
    if std::fs::read(&initramfs).ok().as_deref() != Some(archive.as_slice()) {
        std::fs::write(&initramfs, &archive).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    }
    Ok(Artifacts { image, initramfs, kernel: format!("{} {}", r.kernel_package, r.kernel_version) })
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds `target/linux/pkvm-check` from `tests/linux/pkvm-check.c` when the source is newer.
fn build_check_program() -> Result<PathBuf, String> {
    let src = root().join("tests/linux/pkvm-check.c");
    let out = cache().join("pkvm-check");
    if modified(&out).is_some_and(|o| modified(&src).is_some_and(|s| s <= o)) {
        return Ok(out);
    }
    install_cross_compiler()?;
    println!("xtask: building {} ({CROSS_GCC})", out.display());
    let status = Command::new(CROSS_GCC)
        .args(["-static", "-O2", "-march=armv8.5-a+memtag", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("cannot run {CROSS_GCC}: {e}"))?;
    if status.success() { Ok(out) } else { Err(format!("{CROSS_GCC} failed on {}", src.display())) }
}

/// The initramfs: `/init` (a busybox script), `/bin/busybox` (and `/bin/sh`), `/bin/pkvm-check`, the mount
/// points, and `/dev/console` (5,1), which the kernel opens for `/init` before anything can
/// mount devtmpfs.
pub fn initramfs(init: &[u8], busybox: &[u8], check: &[u8]) -> Result<Vec<u8>, crate::cpio::CpioError> {
    let mut c = Newc::new();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        c.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    c.char_device("dev/console", 0o600, 5, 1)?;
    c.file("init", 0o755, init)?;
    c.file("bin/busybox", 0o755, busybox)?;
    // The rest of busybox's applets are linked by /init (`busybox --install -s`).
    c.symlink("bin/sh", "busybox")?;
    c.file("bin/pkvm-check", 0o755, check)?;
    Ok(c.finish())
}

// ---- Validating a Linux run -------------------------------------------------------------------

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

/// A Linux run: what `run --kernel` and the Linux scenarios boot under the hypervisor.
#[derive(Debug, Clone)]
pub struct LinuxRun {
    /// The host scenario (`linux`).
    pub scenario: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub protected: bool,
    pub mte: bool,
    pub ptrauth: bool,
    pub vms: u32,
}

/// The sizes of a Linux run's files, measured once by [`LinuxRun::validate`].
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    pub kernel: u64,
    pub initrd: Option<u64>,
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

impl LinuxRun {
    /// Reads the files' sizes and the kernel's header and checks every limit.
    pub fn validate(&self) -> Result<Staged, String> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("{}: {e}", p.display()));
        let kernel = size(&self.kernel)?;
        let initrd = self.initrd.as_deref().map(size).transpose()?;
        check_limits(kernel, initrd, self.cmdline.len(), self.mem_mib, self.vcpus, self.vms)?;
        let mut head = vec![0u8; 64];
        let mut f = std::fs::File::open(&self.kernel).map_err(|e| format!("{}: {e}", self.kernel.display()))?;
        std::io::Read::read_exact(&mut f, &mut head).map_err(|_| format!("{}: not a Linux arm64 Image: shorter than its header", self.kernel.display()))?;
        // The host's Linux VMM also runs the project's ELF test guests (the benchmarks'
        // interrupt guest), loaded at their own addresses.
        if !head.starts_with(ELF_MAGIC) {
            check_image_header(&head).map_err(|e| format!("{}: {e}", self.kernel.display()))?;
        }
        Ok(Staged { kernel, initrd })
    }

    /// The host's boot arguments: the contract with el1-host's `linux` scenario.
    pub fn bootargs(&self, staged: Staged) -> String {
        let b = |on: bool| u8::from(on);
        let mut s = format!(
            "scenario={} mem={} vcpus={} protected={} mte={} ptrauth={} vms={} guest={GUEST_IMAGE_STAGING:#x},{}",
            self.scenario,
            self.mem_mib,
            self.vcpus,
            b(self.protected),
            b(self.mte),
            b(self.ptrauth),
            self.vms,
            staged.kernel
        );
        if let Some(size) = staged.initrd {
            s += &format!(" initrd={GUEST_INITRD_STAGING:#x},{size}");
        }
        if !self.cmdline.is_empty() {
            s += &format!(" cmdline={GUEST_CMDLINE_STAGING:#x},{}", self.cmdline.len());
        }
        s
    }
}

/// A temporary file holding a Linux run's command line, for QEMU's loader; removed on drop.
pub struct CmdlineFile(PathBuf);

impl Drop for CmdlineFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static CMDLINE_FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The QEMU machine for a Linux run under the hypervisor: 2 GiB of RAM, EL2, the host, and the
/// kernel, initrd and command line staged where the host expects them. Keep the returned file
/// until QEMU has started.
pub fn hyp_machine(images: &Images, smp: u32, run: &LinuxRun, extra_bootargs: &str) -> Result<(Machine, Option<CmdlineFile>), String> {
    let staged = run.validate()?;
    let mut bootargs = run.bootargs(staged);
    if !extra_bootargs.trim().is_empty() {
        bootargs = format!("{bootargs} {}", extra_bootargs.trim());
    }
    let mut m = crate::hyp_machine(images, Machine::virt()?.mem(LINUX_MACHINE_RAM), smp, &run.kernel);
    if let Some(initrd) = &run.initrd {
        m = m.loader(initrd, Some(GUEST_INITRD_STAGING));
    }
    let mut file = None;
    if !run.cmdline.is_empty() {
        let dir = cache().join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = CMDLINE_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("cmdline-{}-{n}", std::process::id()));
        std::fs::write(&path, &run.cmdline).map_err(|e| format!("{}: {e}", path.display()))?;
        m = m.loader(&path, Some(GUEST_CMDLINE_STAGING));
        file = Some(CmdlineFile(path));
    }
    Ok((m.args(["-append", &bootargs]), file))
}

// ---- The bare-QEMU baseline and the boot measurement ----------------------------------------

/// The same kernel, initrd and command line on bare QEMU, at EL1: `qemu/virt.args` without
/// EL2 (`virtualization=off`), `run.vcpus` CPUs, `run.mem_mib` of RAM and MTE as asked;
/// QEMU answers PSCI itself. Pointer authentication is always there (`-cpu max`); `protected`
/// and `vms` mean nothing here.
pub fn bare_machine(run: &LinuxRun) -> Result<Machine, String> {
    let props = [("virtualization", "off"), ("mte", if run.mte { "on" } else { "off" })];
    let mut m = Machine::virt()?.mem(&format!("{}M", run.mem_mib)).machine_properties(&props).smp(run.vcpus).serial_on_stdio().kernel(&run.kernel);
    if let Some(initrd) = &run.initrd {
        m = m.args(["-initrd", &initrd.display().to_string()]);
    }
    Ok(m.args(["-append", &run.cmdline]))
}

/// The check list for a VM of `cpus` CPUs, with or without MTE (pointer authentication is
/// always there: `-cpu max`).
pub fn default_checks(cpus: u32, mte: bool) -> String {
    if mte {
        format!("cpus={cpus},cpuinfo,mte,pac,timer")
    } else {
        format!("cpus={cpus},cpuinfo=paca+pacg+no-mte,pac,timer")
    }
}

/// What one boot to userspace showed.
#[derive(Debug, Default, Clone)]
pub struct BootReport {
    /// `PKVM-STAMP:` of the first userspace program: CNTVCT_EL0 and CNTFRQ_EL0.
    pub stamp: Option<(u64, u64)>,
    /// Wall time to the stamp line and to QEMU's exit.
    pub wall_to_userspace: Option<Duration>,
    pub wall_total: Duration,
    /// The `PKVM-CHECK: passed|failed ...` summary lines (one per VM).
    pub summaries: Vec<String>,
    /// QEMU's exit status (`None`: killed at the timeout).
    pub exit: Option<i32>,
    pub lines: Vec<String>,
}

impl BootReport {
    /// Guest counter time to the first userspace line, in ns. Under `-icount shift=0` one
    /// instruction is one ns of virtual time, so this counts instructions (all CPUs' together,
    /// QEMU runs them in turn), plus idle time where every CPU waited.
    pub fn ns_to_userspace(&self) -> Option<u64> {
        let (cntvct, cntfrq) = self.stamp?;
        (cntfrq != 0).then(|| (cntvct as u128 * 1_000_000_000 / cntfrq as u128) as u64)
    }

    /// Every VM printed `PKVM-CHECK: passed`, `vms` of them, and QEMU exited 0.
    pub fn passed(&self, vms: usize) -> bool {
        self.exit == Some(0) && self.summaries.len() == vms && self.summaries.iter().all(|s| s.contains("PKVM-CHECK: passed"))
    }
}

/// QEMU's instruction counting for the boot measurement: one instruction is one ns of virtual
/// time (`shift=0`), and while every CPU waits, virtual time jumps to the next timer deadline at
/// once (`sleep=off`) instead of running with the wall clock, so idle stretches do not add
/// host noise (two bare boots to userspace differ by about 0.003%; with `sleep=on`, by 0.3%).
pub const ICOUNT: &str = "shift=0,sleep=off";

/// The benchmark's figure for one QEMU machine that boots a Linux guest with the project's
/// initramfs (`bare_machine` or `hyp_machine`): the guest's virtual counter at the first
/// userspace line, in ns, under [`ICOUNT`] (added here). On bare QEMU that counts from the
/// machine's start (no EL2: no offset); under the hypervisor too, as long as the VM's
/// `CNTVOFF_EL2` is 0 (EL2's default; the host's `host: bench: VM ... kernel entry at
/// CNTPCT=.. CNTVOFF_EL2=..` line says where its kernel started and with which offset, and
/// `cargo xtask bench` measures both from the kernel's first instruction). Fails
/// unless the guest reaches userspace and every VM passes its checks.
pub fn ns_to_userspace(machine: Machine, vms: usize, timeout: Duration, echo: bool) -> Result<(u64, BootReport), String> {
    let r = boot(&machine.icount(ICOUNT), timeout, echo)?;
    if r.exit.is_none() {
        return Err(format!("the guest did not power off within {} s", timeout.as_secs()));
    }
    let ns = r.ns_to_userspace().ok_or_else(|| format!("the guest printed no PKVM-STAMP line (QEMU exit {:?})", r.exit))?;
    if !r.passed(vms) {
        return Err(format!("the guest reached userspace but did not pass: QEMU exit {:?}, {:?}", r.exit, r.summaries));
    }
    Ok((ns, r))
}

/// Parses `PKVM-STAMP: cntvct=N cntfrq=F` anywhere in a console line.
fn parse_stamp(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("PKVM-STAMP: ").nth(1)?;
    let mut words = rest.split_whitespace();
    let cntvct = words.next()?.strip_prefix("cntvct=")?.parse().ok()?;
    let cntfrq = words.next()?.strip_prefix("cntfrq=")?.parse().ok()?;
    Some((cntvct, cntfrq))
}

/// Runs a QEMU machine that boots a Linux guest with the project's initramfs to its end (the
/// guest powers off), reading the console; `echo` prints every line. The benchmark calls it
/// with the bare machine and with the hypervisor's, both under `-icount shift=0`, and compares
/// [`BootReport::ns_to_userspace`].
pub fn boot(machine: &Machine, timeout: Duration, echo: bool) -> Result<BootReport, String> {
    let out = qemu::Run::new(machine).deadline(timeout).echo(echo).label_stderr("qemu: ").wait()?;
    let mut report = BootReport { wall_total: out.wall, exit: out.code(), ..Default::default() };
    for line in out.lines {
        if report.stamp.is_none() {
            if let Some(s) = parse_stamp(&line.text) {
                report.stamp = Some(s);
                report.wall_to_userspace = Some(line.at);
            }
        }
        if line.text.contains("PKVM-CHECK: passed") || line.text.contains("PKVM-CHECK: failed") {
            report.summaries.push(line.text.clone());
        }
        report.lines.push(line.text);
    }
    Ok(report)
}

/// `cargo xtask linux-bare`: boots the Debian kernel with the initramfs on bare QEMU (EL1, no
/// hypervisor) and checks that userspace passes its checks: the baseline that proves the
/// checks right, independent of the hypervisor.
pub fn bare(args: &[String]) -> Result<(), String> {
    let flags = crate::cli::parse("linux-bare", args, crate::cli::LINUX_BARE_FLAGS)?;
    if flags.has("--help") {
        print!("{}", crate::cli::help("linux-bare", crate::cli::LINUX_BARE_FLAGS));
        return Ok(());
    }
    let smp = flags.number("--smp", 2, 1..=8)?;
    let mem = flags.value("--mem").map_or(Ok(512), parse_mem)?;
    let mte = flags.has("--mte");
    let checks = flags.value("--checks").map_or_else(|| default_checks(smp, mte), String::from);
    let cmdline = format!("{DEFAULT_CMDLINE} pkvm.check={checks}");
    check_limits(0, None, cmdline.len(), mem, smp, 1)?;
    crate::setup()?;
    let a = artifacts()?;
    let run = LinuxRun {
        scenario: String::new(),
        kernel: a.image.clone(),
        initrd: Some(a.initramfs.clone()),
        cmdline,
        mem_mib: mem,
        vcpus: smp,
        protected: false,
        mte,
        ptrauth: true,
        vms: 1,
    };
    run.validate()?;
    let machine = bare_machine(&run)?;
    let icount = flags.has("--icount");
    let timeout = Duration::from_secs(flags.number("--timeout", 240, 1..=3600)? as u64);
    println!(
        "xtask: booting {} on bare QEMU (EL1, {smp} CPUs, {mem} MiB, MTE {}{}), checks {checks}",
        a.kernel,
        if mte { "on" } else { "off" },
        if icount { ", -icount shift=0,sleep=off" } else { "" }
    );
    if icount {
        // The benchmark's own measurement, so the baseline figure is the one it compares.
        let (ns, r) = ns_to_userspace(machine, 1, timeout, true)?;
        println!(
            "xtask: wall time {:.1} s; first userspace line at {ns} ns of virtual time = instructions (all CPUs) and skipped idle time",
            r.wall_total.as_secs_f64()
        );
        println!("xtask: bare QEMU baseline: {}", r.summaries[0].trim());
        return Ok(());
    }
    let r = boot(&machine, timeout, true)?;
    let to_user = r.wall_to_userspace.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let counter = match (r.stamp, r.ns_to_userspace()) {
        (Some((cntvct, cntfrq)), Some(ns)) => format!(" (CNTVCT {cntvct} at {cntfrq} Hz: {:.2} s of guest time)", ns as f64 / 1e9),
        _ => String::new(),
    };
    println!("xtask: wall time {:.1} s, first userspace line after {to_user}{counter}", r.wall_total.as_secs_f64());
    if r.passed(1) {
        println!("xtask: bare QEMU baseline: {}", r.summaries[0].trim());
        Ok(())
    } else if r.exit.is_none() {
        Err(format!("bare QEMU baseline: timed out after {} s", timeout.as_secs()))
    } else {
        Err(format!("bare QEMU baseline failed: QEMU exit {:?}, summary {:?}", r.exit, r.summaries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-cloud-arm64\nSource: linux-signed-arm64 (6.1.192+3)\nVersion: 6.1.192-3\nArchitecture: arm64\n\
Depends: linux-image-6.1.0-57-cloud-arm64 (= 6.1.192-3)\nDescription: Linux for arm64 cloud\n\n\
Package: busybox-static\nSource: busybox (1:1.35.0-4+deb12u1)\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: arm64\n\n";

    #[test]
    fn resolves_the_kernel_package_from_the_meta_package() {
        let r = parse_apt_show(SHOW).unwrap();
        assert_eq!(r.kernel_package, "linux-image-6.1.0-57-cloud-arm64");
        assert_eq!(r.kernel_version, "6.1.192-3");
        assert_eq!(r.busybox_version, "1:1.35.0-4+deb12u1+b1");
        assert!(parse_apt_show(&SHOW.replace("Depends:", "Recommends:")).unwrap_err().contains("no Depends"));
        assert!(parse_apt_show(&SHOW.replace(" (= 6.1.192-3)", "")).unwrap_err().contains("no exact version"));
        assert!(parse_apt_show(SHOW.split("\n\n").nth(1).unwrap()).unwrap_err().contains("linux-image-cloud-arm64"));
        assert!(parse_apt_show(SHOW.split("\n\n").next().unwrap()).unwrap_err().contains("busybox"));
    }

    #[test]
    fn the_resolution_record_round_trips() {
        let r = parse_apt_show(SHOW).unwrap();
        let (back, lists) = Resolved::from_text(&r.to_text("12-345")).unwrap();
        assert_eq!((back, lists.as_str()), (r.clone(), "12-345"));
        assert!(Resolved::from_text("lists 1\nkernel nospace\nbusybox 1\n").is_none());
        assert!(r.busybox_dir().ends_with("busybox-static_1%3a1.35.0-4+deb12u1+b1"), "{}", r.busybox_dir().display());
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

    fn sample_run() -> LinuxRun {
        LinuxRun {
            scenario: "linux".into(),
            kernel: "Image".into(),
            initrd: Some("initramfs.cpio".into()),
            cmdline: DEFAULT_CMDLINE.into(),
            mem_mib: 512,
            vcpus: 2,
            protected: true,
            mte: true,
            ptrauth: false,
            vms: 1,
        }
    }

    #[test]
    fn bootargs_follow_the_host_contract() {
        let run = sample_run();
        let args = run.bootargs(Staged { kernel: 27303872, initrd: Some(2_700_000) });
        assert_eq!(
            args,
            format!(
                "scenario=linux mem=512 vcpus=2 protected=1 mte=1 ptrauth=0 vms=1 guest=0x48000000,27303872 initrd=0x4c000000,2700000 cmdline=0x4bfff000,{}",
                DEFAULT_CMDLINE.len()
            )
        );
        let bare = LinuxRun { initrd: None, cmdline: String::new(), protected: false, vms: 2, ..run };
        assert_eq!(bare.bootargs(Staged { kernel: 10, initrd: None }), "scenario=linux mem=512 vcpus=2 protected=0 mte=1 ptrauth=0 vms=2 guest=0x48000000,10");
    }

    #[test]
    fn initramfs_has_what_the_kernel_and_init_need() {
        let a = initramfs(b"#!/bin/busybox sh\n", b"BB", b"CHECK").unwrap();
        let text = String::from_utf8_lossy(&a);
        for name in ["bin\0", "dev\0", "proc\0", "sys\0", "tmp\0", "dev/console\0", "init\0", "bin/busybox\0", "bin/sh\0", "bin/pkvm-check\0", "TRAILER!!!\0"] {
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
        for needed in ["mount -t proc", "mount -t sysfs", "mount -t devtmpfs", "pkvm.check=", "pkvm-check \"$checks\"", "poweroff -f", "setsid cttyhack sh", "/bin/pkvm-check stamp"] {
            assert!(init.contains(needed), "init.sh lacks {needed:?}");
        }
    }

    #[test]
    fn stamp_lines_and_reports() {
        assert_eq!(parse_stamp("PKVM-STAMP: cntvct=62500000 cntfrq=62500000"), Some((62_500_000, 62_500_000)));
        assert_eq!(parse_stamp("vm1: PKVM-STAMP: cntvct=16 cntfrq=62500000\r"), Some((16, 62_500_000)));
        assert_eq!(parse_stamp("PKVM-STAMP: cntvct=x cntfrq=1"), None);
        let r = BootReport { stamp: Some((1000, 62_500_000)), exit: Some(0), summaries: vec!["PKVM-CHECK: passed 5/5".into()], ..Default::default() };
        assert_eq!(r.ns_to_userspace(), Some(16_000), "62.5 MHz: 16 ns a tick");
        assert!(r.passed(1) && !r.passed(2));
        let failed = BootReport { summaries: vec!["PKVM-CHECK: failed 1/5".into()], ..r.clone() };
        assert!(!failed.passed(1));
        assert!(!BootReport { exit: Some(1), ..r }.passed(1));
    }
}
