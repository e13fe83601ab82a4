//! The project's pKVM guest kernel (`--kernel pkvm`, `kernel = pkvm`): Linux 6.12 from Debian's
//! `linux-source-6.12`, cross-compiled from `make tinyconfig` plus the fragment
//! `tests/linux/pkvm-guest.config` (`ARM_PKVM_GUEST`, `DMA_RESTRICTED_POOL`, virtio, MTE,
//! pointer authentication, ...), which Debian's own arm64 kernel does not enable.
//!
//! `setup` builds it once per machine, outside the clone, keyed by the source package's version
//! and a hash of the fragment and of this recipe:
//!
//! ```text
//! ~/.cache/pkvm-rs/kernel/<key>/Image     the kernel ($XDG_CACHE_HOME if set)
//! ~/.cache/pkvm-rs/kernel/<key>/config    its final .config
//! ~/.cache/pkvm-rs/kernel/<key>/System.map  its symbols (for a guest PC in a hang report)
//! ~/.cache/pkvm-rs/kernel/<key>.log       the last build's output
//! ```
//!
//! A build extracts the source into a scratch directory beside the cache entry, configures it,
//! checks that every option of the fragment is `=y` in the final `.config` (a Kconfig
//! dependency can drop one silently), builds `Image`, and removes the scratch directory. The
//! build's user, host and timestamp are fixed, so the same source, fragment and compiler give
//! the same `Image` on every machine.

use super::artifacts::{install_cross_compiler, CROSS_GCC};
use super::limits::check_image_header;
use crate::root;
use crate::setup::apt::apt_install;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Debian's package with the kernel source, and the tarball it installs.
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// What the build needs besides the source and the cross compiler (Debian amd64 packages): the
/// host compiler and `make` for Kconfig and the build's host tools, `bc`, `bison`, `flex`,
/// and `xz` for the tarball. Nothing else for this configuration (no modules, no signing, no
/// BTF): not `libssl-dev`, not `libelf-dev`.
const BUILD_PACKAGES: &[&str] = &["make", "gcc", "libc6-dev", "bc", "bison", "flex", "xz-utils"];

/// The fragment merged over `tinyconfig`, relative to the workspace root.
pub const FRAGMENT: &str = "tests/linux/pkvm-guest.config";

/// The build steps, hashed into the cache key with the fragment: changing them rebuilds.
const RECIPE: &str = "tar xf; make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- tinyconfig; \
    scripts/kconfig/merge_config.sh -m .config FRAGMENT; make olddefconfig; check FRAGMENT =y; make Image; \
    KBUILD_BUILD_USER=pkvm-rs KBUILD_BUILD_HOST=xtask KBUILD_BUILD_TIMESTAMP=$(date -u -r TARBALL)";

const MAKE_ARGS: &[&str] = &["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"];

/// `~/.cache/pkvm-rs` (or `$XDG_CACHE_HOME/pkvm-rs`): what `setup` builds once per machine,
/// outside the clone (this kernel; the kvm-unit-tests programs, `kut.rs`).
pub(super) fn machine_cache() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("neither XDG_CACHE_HOME nor HOME is set: no place for the build cache")?).join(".cache"),
    };
    Ok(base.join("pkvm-rs"))
}

/// `~/.cache/pkvm-rs/kernel` (or under `$XDG_CACHE_HOME`).
fn cache() -> Result<PathBuf, String> {
    Ok(machine_cache()?.join("kernel"))
}

/// The installed version of `package` (`dpkg-query`), `None` if it is not installed.
pub(super) fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('\t')?;
    (out.status.success() && status.ends_with(" installed") && !version.is_empty()).then(|| version.to_string())
}

/// The cache key: the source package's version, then a hash of the fragment and the recipe.
fn cache_key(source_version: &str, fragment: &str) -> String {
    let digest = shared_abi::measure::digest(format!("{RECIPE}\n{fragment}").as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{SOURCE_PACKAGE}_{}-{hash}", source_version.replace(':', "%3a"))
}

fn read_fragment() -> Result<String, String> {
    let path = root().join(FRAGMENT);
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The options a fragment asks for: its `CONFIG_NAME=y` lines (comments and blank lines
/// aside). Anything else is refused, so that every line can be checked in the final `.config`.
fn wanted(fragment: &str) -> Result<Vec<&str>, String> {
    let mut options = Vec::new();
    for (n, line) in fragment.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.strip_suffix("=y").filter(|name| name.starts_with("CONFIG_") && name.len() > 7 && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        match name {
            Some(name) => options.push(name),
            None => return Err(format!("{FRAGMENT} line {}: {line:?} is not CONFIG_NAME=y", n + 1)),
        }
    }
    if options.is_empty() {
        return Err(format!("{FRAGMENT} asks for no option"));
    }
    Ok(options)
}

/// The options of `wanted` that the final `.config` does not set to `y`, each with what it
/// became: `=m` or another value, `is not set`, or absent (its dependencies unmet, Kconfig
/// never asked).
fn dropped(wanted: &[&str], config: &str) -> Vec<String> {
    wanted
        .iter()
        .filter_map(|name| {
            let set = config.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('='));
            let unset = config.lines().any(|l| l == format!("# {name} is not set"));
            match (set, unset) {
                (Some("y"), _) => None,
                (Some(v), _) => Some(format!("{name}={v}")),
                (None, true) => Some(format!("{name} is not set")),
                (None, false) => Some(format!("{name} is absent (its dependencies are not met)")),
            }
        })
        .collect()
}

/// The cached kernel for the installed source and the current fragment, if `setup` built it.
pub fn cached_image() -> Result<PathBuf, String> {
    let not_built = |why: &str| format!("the pKVM guest kernel is not built ({why}): run `cargo xtask setup`");
    let version = installed_version(SOURCE_PACKAGE).ok_or_else(|| not_built(&format!("{SOURCE_PACKAGE} is not installed")))?;
    let image = cache()?.join(cache_key(&version, &read_fragment()?)).join("Image");
    if image.is_file() {
        Ok(image)
    } else {
        Err(not_built(&format!("no {}", image.display())))
    }
}

/// `setup`'s part: installs the source and the build's tools if missing and builds the
/// kernel unless the cache has it for this source version and fragment.
pub fn setup() -> Result<(), String> {
    let fragment = read_fragment()?;
    let options = wanted(&fragment)?;
    if installed_version(SOURCE_PACKAGE).is_none() {
        apt_install(&[SOURCE_PACKAGE])?;
    }
    let version = installed_version(SOURCE_PACKAGE).ok_or(format!("{SOURCE_PACKAGE} still not installed: run `apt-get install --no-install-recommends {SOURCE_PACKAGE}`"))?;
    let key = cache_key(&version, &fragment);
    let dir = cache()?.join(&key);
    if dir.join("Image").is_file() {
        return Ok(());
    }
    let missing: Vec<&str> = BUILD_PACKAGES.iter().copied().filter(|p| installed_version(p).is_none()).collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    install_cross_compiler()?;
    build(&version, &options, &dir)
}

/// The kernel's build timestamp (in its version string): the source tarball's, so that the
/// same source, fragment and compiler give the same `Image` on every machine (and a VM booting
/// it the same measurement).
fn build_timestamp() -> Result<String, String> {
    let out = Command::new("date").args(["-u", "-r", SOURCE_TARBALL]).output().map_err(|e| format!("cannot run date: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !text.is_empty() { Ok(text) } else { Err(format!("date -u -r {SOURCE_TARBALL} failed")) }
}

/// Runs one step of a build in `dir` with the environment `envs` added, its output appended
/// to `log`; a failure quotes the log's last lines.
pub(super) fn step(dir: &Path, log: &Path, envs: &[(&str, &str)], program: &str, args: &[&str]) -> Result<(), String> {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| format!("{}: {e}", log.display()));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("`{program} {}` failed ({status}); the end of {}:\n  {}", args.join(" "), log.display(), tail.join("\n  ")))
}

/// A build into the cache entry `dir` of what `setup` builds once per machine (the pKVM guest
/// kernel, kvm-unit-tests): in a fresh scratch directory beside the entry (removed when this is
/// dropped), its output in the `.log` beside the entry, the result published by filling a
/// partial entry and renaming it into place, so a half-built entry is never taken for a built
/// one.
pub(super) struct CacheBuild<'a> {
    pub dir: &'a Path,
    pub scratch: PathBuf,
    pub log: PathBuf,
}

impl<'a> CacheBuild<'a> {
    /// A clean scratch directory and log for building `dir`.
    pub fn start(dir: &'a Path) -> Result<Self, String> {
        let cache = dir.parent().ok_or(format!("{}: the cache entry has no parent directory", dir.display()))?;
        std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
        let build = Self { dir, scratch: cache.join(format!("build-{}", std::process::id())), log: beside(dir, ".log") };
        let _ = std::fs::remove_dir_all(&build.scratch);
        let _ = std::fs::remove_file(&build.log);
        std::fs::create_dir_all(&build.scratch).map_err(|e| format!("{}: {e}", build.scratch.display()))?;
        Ok(build)
    }

    /// Publishes the entry: `fill` writes it into an empty partial directory, which then
    /// replaces the entry.
    pub fn publish(&self, fill: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
        let partial = beside(self.dir, &format!(".partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        fill(&partial)?;
        let _ = std::fs::remove_dir_all(self.dir);
        std::fs::rename(&partial, self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))
    }
}

impl Drop for CacheBuild<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `dir`'s name with `suffix` appended (keys have dots, the version's: not `with_extension`).
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Builds the kernel into the cache entry `dir`.
fn build(version: &str, options: &[&str], dir: &Path) -> Result<(), String> {
    let b = CacheBuild::start(dir)?;
    let (scratch, log) = (&b.scratch, &b.log);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "xtask: building the pKVM guest kernel from {SOURCE_PACKAGE} {version} with {CROSS_GCC} (make -j{jobs}; a few minutes on 2 cores, once per machine), output in {}",
        log.display()
    );
    let start = Instant::now();
    let timestamp = build_timestamp()?;
    let envs = [("KBUILD_BUILD_USER", "pkvm-rs"), ("KBUILD_BUILD_HOST", "xtask"), ("KBUILD_BUILD_TIMESTAMP", timestamp.as_str())];
    let step = |program: &str, args: &[&str]| step(scratch, log, &envs, program, args);
    let result = (|| {
        step("tar", &["xf", SOURCE_TARBALL, "--strip-components=1"])?;
        step("make", &[MAKE_ARGS, &["tinyconfig"]].concat())?;
        let fragment = root().join(FRAGMENT);
        step("scripts/kconfig/merge_config.sh", &["-m", ".config", &fragment.display().to_string()])?;
        step("make", &[MAKE_ARGS, &["olddefconfig"]].concat())?;
        let config = std::fs::read_to_string(scratch.join(".config")).map_err(|e| format!("the kernel's .config: {e}"))?;
        let lost = dropped(options, &config);
        if !lost.is_empty() {
            return Err(format!("{FRAGMENT}: Kconfig did not keep {} of its options as asked:\n  {}", lost.len(), lost.join("\n  ")));
        }
        step("make", &[MAKE_ARGS, &[&format!("-j{jobs}"), "Image"]].concat())?;
        let image = scratch.join("arch/arm64/boot/Image");
        let head = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        check_image_header(&head).map_err(|e| format!("{}: {e}", image.display()))?;
        b.publish(|partial| {
            std::fs::copy(&image, partial.join("Image")).map_err(|e| format!("{}: {e}", image.display()))?;
            std::fs::write(partial.join("config"), &config).map_err(|e| format!("{}: {e}", partial.display()))?;
            std::fs::copy(scratch.join("System.map"), partial.join("System.map")).map_err(|e| format!("System.map: {e}"))?;
            Ok(())
        })?;
        Ok(head.len())
    })();
    drop(b);
    let size = result?;
    println!("xtask: pKVM guest kernel built in {:.0} s: {} ({size} bytes)", start.elapsed().as_secs_f64(), dir.join("Image").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_asks_only_for_options_it_can_check() {
        let fragment = read_fragment().unwrap();
        let options = wanted(&fragment).unwrap();
        for needed in ["CONFIG_ARM_PKVM_GUEST", "CONFIG_DMA_RESTRICTED_POOL", "CONFIG_ARM64_MTE", "CONFIG_ARM64_PTR_AUTH", "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "CONFIG_BLK_DEV_INITRD"] {
            assert!(options.contains(&needed), "{FRAGMENT} lacks {needed}");
        }
        assert!(wanted("# c\n\nCONFIG_A=y\n").is_ok());
        assert!(wanted("CONFIG_A=m\n").unwrap_err().contains("line 1"));
        assert!(wanted("CONFIG_NR_CPUS=8\n").is_err());
        assert!(wanted("CONFIG_a=y\n").is_err());
        assert!(wanted("# only comments\n").unwrap_err().contains("no option"));
    }

    #[test]
    fn every_dropped_option_is_named_with_what_it_became() {
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_AB=y\n";
        assert!(dropped(&["CONFIG_A"], config).is_empty());
        assert_eq!(
            dropped(&["CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_D"], config),
            vec!["CONFIG_B is not set", "CONFIG_C=m", "CONFIG_D is absent (its dependencies are not met)"]
        );
        // A longer name with the same prefix is not the option.
        assert_eq!(dropped(&["CONFIG_A"], "CONFIG_AB=y\n").len(), 1);
    }

    #[test]
    fn the_cache_key_follows_the_source_version_and_the_fragment() {
        let a = cache_key("6.12.118-1~deb12u1", "CONFIG_A=y\n");
        assert!(a.starts_with("linux-source-6.12_6.12.118-1~deb12u1-") && a.len() == "linux-source-6.12_6.12.118-1~deb12u1-".len() + 16, "{a}");
        assert_ne!(a, cache_key("6.12.119-1~deb12u1", "CONFIG_A=y\n"));
        assert_ne!(a, cache_key("6.12.118-1~deb12u1", "CONFIG_A=y\nCONFIG_B=y\n"));
        assert!(!cache_key("1:6.12", "").contains(':'));
    }
}
