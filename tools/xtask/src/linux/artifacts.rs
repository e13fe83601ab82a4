//! The Linux guest's files: Debian's arm64 kernel and busybox (fetched by `setup`), the
//! project's pKVM guest kernel (built by `setup`, `kernel.rs`), the check program
//! `tests/linux/pkvm-check.c` built with the cross compiler, and the initramfs.
//!
//! The cache of Debian's files, keyed by package versions, is never committed (the pKVM guest
//! kernel's cache is outside the clone, see `kernel.rs`):
//!
//! ```text
//! target/linux/resolved                      which versions, for which state of apt's lists
//! target/linux/<kernel package>_<version>/Image
//! target/linux/busybox-static_<version>/busybox
//! target/linux/pkvm-check                    built from tests/linux/pkvm-check.c
//! target/linux/initramfs.cpio                /init, /bin/busybox, /bin/pkvm-check, /dev/console
//! ```

use super::initramfs::initramfs;
use super::limits::check_image_header;
use super::{NamedKernel, OPTIONAL_ENV};
use crate::root;
use crate::setup::apt::{apt_get, apt_install, have, is_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian meta-package that names the current cloud kernel, and busybox.
const KERNEL_META: &str = "linux-image-cloud-arm64:arm64";
const BUSYBOX: &str = "busybox-static";
/// The kernel package's virtio modules the initramfs carries (`/lib/virtio/`, for
/// `pkvm.virtio`: Debian builds virtio-mmio and its drivers as modules), in load order, by
/// their path under `lib/modules/VERSION/kernel/`.
pub const VIRTIO_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/char/virtio_console.ko",
    "drivers/block/virtio_blk.ko",
];

/// A module's file name (what the cache and the initramfs call it).
fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The cross compiler for the check program (Debian amd64 packages).
const CROSS_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];
pub(super) const CROSS_GCC: &str = "aarch64-linux-gnu-gcc";

pub fn cache() -> PathBuf {
    root().join("target/linux")
}

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
    /// The kernel's `Image` and its virtio modules are cached.
    fn kernel_ready(&self) -> bool {
        let dir = self.kernel_dir();
        dir.join("Image").is_file() && VIRTIO_MODULES.iter().all(|m| dir.join(module_name(m)).is_file())
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
    run_quiet(apt_get().args(["update", "-qq"])).map(|_| ())
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
    run_quiet(apt_get().current_dir(&dl).args(["download", "-qq", &format!("{package}:arm64={version}")]))?;
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
    install_all_into_cache(&[(file.to_path_buf(), name)], dir)
}

/// [`install_into_cache`] for several files.
fn install_all_into_cache(files: &[(PathBuf, &str)], dir: &Path) -> Result<(), String> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for (file, name) in files {
        std::fs::copy(file, tmp.join(name)).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Fetches the kernel `Image` and busybox unless cached.
fn fetch(r: &Resolved) -> Result<(), String> {
    let work = cache().join(format!("work-{}", std::process::id()));
    let result = (|| {
        if !r.kernel_ready() {
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
            // The modules of the one kernel version the package holds.
            let modules = tree.join("lib/modules");
            let version = std::fs::read_dir(&modules)
                .map_err(|e| format!("{}: {e}", modules.display()))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("kernel").is_dir())
                .ok_or(format!("{} has no /lib/modules/*/kernel", r.kernel_package))?;
            let mut files = vec![(vmlinuz, "Image")];
            files.extend(VIRTIO_MODULES.iter().map(|m| (version.join("kernel").join(m), module_name(m))));
            install_all_into_cache(&files, &r.kernel_dir())?;
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

/// `setup`'s part for Linux guests: the arm64 architecture in dpkg, Debian's kernel and busybox
/// in the cache (apt is asked only when its lists changed since the last resolution), the cross
/// compiler for the check program, the pKVM guest kernel and the kvm-unit-tests programs (each
/// built once per machine).
pub fn setup() -> Result<(), String> {
    let result = fetch_all().and_then(|_| install_cross_compiler()).and_then(|_| super::kernel::setup()).and_then(|_| super::kut::setup());
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
        if *lists == stamp && r.kernel_ready() && r.busybox_dir().join("busybox").is_file() {
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
    have(CROSS_GCC, "--version") && Path::new("/usr/aarch64-linux-gnu/lib/libc.a").is_file()
}

pub(super) fn install_cross_compiler() -> Result<(), String> {
    if !cross_compiler_ready() {
        apt_install(CROSS_PACKAGES)?;
        if !cross_compiler_ready() {
            return Err(format!("{CROSS_GCC} or the static arm64 libc still missing: run `apt-get install {}`", CROSS_PACKAGES.join(" ")));
        }
    }
    Ok(())
}

/// The Debian kernel, the pKVM guest kernel and the project's initramfs, ready to boot.
pub struct Artifacts {
    /// Debian's kernel.
    pub image: PathBuf,
    pub initramfs: PathBuf,
    /// E.g. `linux-image-6.1.0-57-cloud-arm64 6.1.192-3`.
    pub kernel: String,
    /// The project's pKVM guest kernel, or why it is not there.
    pub pkvm_image: Result<PathBuf, String>,
}

impl Artifacts {
    /// The image of a named kernel.
    pub fn image(&self, kernel: NamedKernel) -> Result<&Path, String> {
        match kernel {
            NamedKernel::Debian => Ok(&self.image),
            NamedKernel::Pkvm => self.pkvm_image.as_deref().map_err(Clone::clone),
        }
    }
}

/// The cached kernels and busybox (no apt: `setup` fetched and built them), the check program
/// built and the initramfs packed. Only Debian's kernel and busybox must be there; the pKVM
/// guest kernel's absence is reported by [`Artifacts::image`].
pub fn artifacts() -> Result<Artifacts, String> {
    let missing = || "the Debian kernel and busybox are not in target/linux: run `cargo xtask setup`".to_string();
    let text = std::fs::read_to_string(cache().join("resolved")).map_err(|_| missing())?;
    let (r, _) = Resolved::from_text(&text).ok_or_else(missing)?;
    let image = r.kernel_dir().join("Image");
    let busybox = r.busybox_dir().join("busybox");
    if !r.kernel_ready() || !busybox.is_file() {
        return Err(missing());
    }
    let check = build_check_program()?;
    let init = root().join("tests/linux/init.sh");
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let modules = VIRTIO_MODULES.iter().map(|m| Ok((module_name(m), read(&r.kernel_dir().join(module_name(m)))?))).collect::<Result<Vec<_>, String>>()?;
    let archive = initramfs(&read(&init)?, &read(&busybox)?, &read(&check)?, &modules).map_err(|e| e.to_string())?;
    let initramfs = cache().join("initramfs.cpio");
    // Written only when it changed, so its modification time means something.
    if std::fs::read(&initramfs).ok().as_deref() != Some(archive.as_slice()) {
        std::fs::write(&initramfs, &archive).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    }
    Ok(Artifacts { image, initramfs, kernel: format!("{} {}", r.kernel_package, r.kernel_version), pkvm_image: super::kernel::cached_image() })
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
}
