//! kvm-unit-tests, the conformance suite KVM/arm64 and pKVM developers run against their
//! hypervisors, as guests of the Linux VM platform: `kernel = kut:PROGRAM.flat` in a scenario,
//! `--kernel kut:PROGRAM.flat` for `run` and `measure`.
//!
//! The upstream source is test input, never part of the project (it is GPL): the tarball in
//! [`TARBALL`] (beside the clone, with a README that lists the standard runs). `setup` builds it
//! once per machine, outside the clone like the pKVM guest kernel (`kernel.rs`), keyed by a hash
//! of the tarball and of this recipe:
//!
//! ```text
//! ~/.cache/pkvm-rs/kvm-unit-tests/<key>/*.flat   the programs ($XDG_CACHE_HOME if set)
//! ~/.cache/pkvm-rs/kvm-unit-tests/<key>.log      the last build's output
//! ```
//!
//! A build extracts the tarball into a scratch directory beside the cache entry, runs
//! `./configure --arch=arm64 --cross-prefix=aarch64-linux-gnu-` and `make`, copies `arm/*.flat`
//! into a partial entry and renames it into place, so a half-built entry is never taken for a
//! built one (about 10 s on 2 cores).
//!
//! A program is a raw image without an `Image` header: the VMM loads it at RAM + 0x80000 and
//! enters it at its first byte with `x0` = the device tree, as QEMU's `-kernel` does
//! (`host_vdev::loader::KernelFormat::Raw`). Every word of `/chosen/bootargs` is one of its
//! arguments, so a run passes only the test's own (the command line defaults to empty). It ends
//! by printing `EXIT: STATUS=<n>` (1 pass, 3 fail, 77 skip, 127 abort) and calling PSCI
//! `SYSTEM_OFF`.

use super::artifacts::install_cross_compiler;
use super::kernel::{installed_version, machine_cache, step, CacheBuild};
use crate::root;
use crate::setup::apt::apt_install;
use host_vdev::loader::{kernel_format, KernelFormat};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a scenario or `--kernel` names a program: `kut:selftest.flat`.
pub const PREFIX: &str = "kut:";

/// The upstream source, relative to the workspace root: `git archive` of kvm-unit-tests at
/// commit 1da1819e.
pub const TARBALL: &str = "../shared/kvm-unit-tests/kvm-unit-tests-1da1819e.tar.gz";

/// The build steps, hashed into the cache key with the tarball: changing them rebuilds.
const RECIPE: &str = "tar -xzf TARBALL; ./configure --arch=arm64 --cross-prefix=aarch64-linux-gnu-; make -jN; cp arm/*.flat";

/// What the build needs besides the cross compiler (Debian amd64 packages).
const BUILD_PACKAGES: &[&str] = &["make"];

/// The program a kernel name names, if it is `kut:PROGRAM`.
pub fn program_name(kernel: &str) -> Option<&str> {
    kernel.strip_prefix(PREFIX)
}

/// The cache key: a hash of the recipe and the tarball's bytes.
fn cache_key(tarball: &[u8]) -> String {
    let mut input = Vec::with_capacity(RECIPE.len() + 1 + tarball.len());
    input.extend_from_slice(RECIPE.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(tarball);
    let digest = shared_abi::measure::digest(&input);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("kvm-unit-tests-{hash}")
}

/// The cache entry for the tarball as it is now.
fn entry() -> Result<PathBuf, String> {
    let tarball = root().join(TARBALL);
    let bytes = std::fs::read(&tarball).map_err(|e| format!("the kvm-unit-tests source {}: {e}", tarball.display()))?;
    Ok(machine_cache()?.join("kvm-unit-tests").join(cache_key(&bytes)))
}

/// A program's name is a file name of the build: `NAME.flat`, nothing else.
fn check_name(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix(".flat").ok_or(format!("{PREFIX}{name}: a kvm-unit-tests program is named NAME.flat (e.g. {PREFIX}selftest.flat)"))?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{PREFIX}{name}: not a program's file name"));
    }
    Ok(())
}

/// The built program `name` (`selftest.flat`).
pub fn program(name: &str) -> Result<PathBuf, String> {
    check_name(name)?;
    let dir = entry()?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    if !dir.is_dir() {
        return Err(format!("kvm-unit-tests are not built (no {}): run `cargo xtask setup`", dir.display()));
    }
    let mut built: Vec<String> = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    built.sort();
    Err(format!("{PREFIX}{name}: no such kvm-unit-tests program (built: {})", built.join(", ")))
}

/// Why the suite cannot be built here: its source is not beside the clone. The source is test
/// input kept outside the project (GPL); a machine without it runs every other test, and
/// reports each kvm-unit-tests scenario as skipped with this reason.
pub fn source_missing() -> Option<String> {
    let tarball = root().join(TARBALL);
    (!tarball.is_file()).then(|| format!("no kvm-unit-tests source at {} (test input outside the clone)", tarball.display()))
}

/// `setup`'s part: installs `make` and the cross compiler if missing and builds the suite unless
/// the cache has it for this tarball and recipe. Without the source: a warning, nothing built.
pub fn setup() -> Result<(), String> {
    if let Some(why) = source_missing() {
        println!("xtask: warning: {why}: the kvm-unit-tests scenarios will be skipped");
        return Ok(());
    }
    let dir = entry()?;
    if dir.is_dir() {
        return Ok(());
    }
    let missing: Vec<&str> = BUILD_PACKAGES.iter().copied().filter(|p| installed_version(p).is_none()).collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    install_cross_compiler()?;
    build(&dir)
}

/// Builds the suite into the cache entry `dir` (`CacheBuild`, as the kernel is built).
fn build(dir: &Path) -> Result<(), String> {
    let b = CacheBuild::start(dir)?;
    let (scratch, log) = (&b.scratch, &b.log);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tarball = root().join(TARBALL);
    println!("xtask: building kvm-unit-tests from {} (make -j{jobs}; seconds, once per machine), output in {}", tarball.display(), log.display());
    let start = Instant::now();
    let step = |program: &str, args: &[&str]| step(scratch, log, &[], program, args);
    let result = (|| {
        step("tar", &["-xzf", &tarball.display().to_string()])?;
        step("./configure", &["--arch=arm64", "--cross-prefix=aarch64-linux-gnu-"])?;
        step("make", &[&format!("-j{jobs}")])?;
        let arm = scratch.join("arm");
        let mut flats: Vec<PathBuf> = std::fs::read_dir(&arm).map_err(|e| format!("{}: {e}", arm.display()))?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "flat")).collect();
        flats.sort();
        if flats.is_empty() {
            return Err(format!("the kvm-unit-tests build left no arm/*.flat (see {})", log.display()));
        }
        b.publish(|partial| {
            for flat in &flats {
                let bytes = std::fs::read(flat).map_err(|e| format!("{}: {e}", flat.display()))?;
                // What the VMM will make of it: a raw image, not an `Image` or an ELF.
                if kernel_format(&bytes) != Ok(KernelFormat::Raw) {
                    return Err(format!("{}: not a raw image", flat.display()));
                }
                let name = flat.file_name().unwrap_or_default();
                std::fs::write(partial.join(name), &bytes).map_err(|e| format!("{}: {e}", partial.display()))?;
            }
            Ok(())
        })?;
        Ok(flats.len())
    })();
    drop(b);
    let count = result?;
    println!("xtask: kvm-unit-tests built in {:.0} s: {count} programs in {}", start.elapsed().as_secs_f64(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_named_by_their_file_name() {
        assert_eq!(program_name("kut:selftest.flat"), Some("selftest.flat"));
        assert_eq!(program_name("pkvm"), None);
        assert_eq!(program_name("arm/selftest.flat"), None);
        assert!(check_name("selftest.flat").is_ok() && check_name("micro-bench.flat").is_ok());
        assert!(check_name("selftest").unwrap_err().contains("NAME.flat"));
        for bad in [".flat", "../x.flat", "a/b.flat", "a b.flat"] {
            assert!(check_name(bad).unwrap_err().contains("not a program's file name"), "{bad}");
        }
    }

    #[test]
    fn the_cache_key_follows_the_tarball() {
        let a = cache_key(b"one");
        assert!(a.starts_with("kvm-unit-tests-") && a.len() == "kvm-unit-tests-".len() + 16, "{a}");
        assert_eq!(a, cache_key(b"one"));
        assert_ne!(a, cache_key(b"two"));
    }
}
