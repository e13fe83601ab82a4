//! The QEMU scenario runner: boots the real images, captures the serial console, and checks
//! expected lines, forbidden lines and QEMU's exit status, with a timeout. The scenarios are
//! data, in `tests/scenarios.txt` (the format: `format.rs`), each section named for the host
//! scenario it runs (`names.rs`); a scenario that times out reports what each CPU was doing
//! (`timeout_report.rs`).

mod format;
mod names;
mod runner;
mod timeout_report;

use crate::images::Images;
use crate::{linux, root};
use format::{parse, Scenario};
pub use names::Registry;
use runner::run_one;
use std::time::Instant;

/// The scenarios of `tests/scenarios.txt`, and those a `--only` list names.
pub struct Suite {
    scenarios: Vec<Scenario>,
    wanted: Option<Vec<String>>,
}

impl Suite {
    /// Reads `tests/scenarios.txt` and checks that `only` (comma-separated) names its sections.
    pub fn load(only: Option<&str>) -> Result<Self, String> {
        let path = root().join("tests/scenarios.txt");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let scenarios = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let wanted: Option<Vec<String>> = only.map(|o| o.split(',').map(|n| n.trim().to_string()).collect());
        if let Some(unknown) = wanted.iter().flatten().find(|n| !scenarios.iter().any(|s| s.name == **n)) {
            let names: Vec<_> = scenarios.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("no scenario named {unknown:?} in tests/scenarios.txt (there are: {})", names.join(", ")));
        }
        Ok(Self { scenarios, wanted })
    }
}

/// Runs every scenario in the default suite (with `all`, every scenario; or those `--only`
/// named), each `repeat` times in a row, and prints a summary. First every section is matched
/// with the host scenario it runs, from the names in the host image.
pub fn run_all(release: &Images, test_hooks: &Images, suite: Suite, all: bool, repeat: u32, verbose: bool) -> Result<(), String> {
    let Suite { mut scenarios, wanted } = suite;
    Registry::from_host(&release.host)?.assign(&mut scenarios)?;
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|s| match &wanted {
            Some(w) => w.contains(&s.name),
            None => s.default || all,
        })
        .collect();
    let held: Vec<_> = scenarios.iter().filter(|s| !s.default && !selected.iter().any(|x| x.name == s.name)).map(|s| s.name.as_str()).collect();
    let repeat = repeat.max(1);
    println!("xtask: {} QEMU scenarios{}", selected.len(), if repeat > 1 { format!(", each {repeat} times in a row") } else { String::new() });
    if !held.is_empty() {
        println!("xtask: not run by default (default = off; --all or --only runs them): {}", held.join(", "));
    }
    // The named kernels (Debian's, the pKVM guest kernel) and the initramfs, made once if a
    // selected scenario boots one.
    let named = |s: &Scenario| s.linux.as_ref().and_then(|l| linux::NamedKernel::parse(&l.kernel));
    let artifacts = selected.iter().any(|s| named(s).is_some()).then(linux::artifacts);
    let optional = std::env::var(linux::OPTIONAL_ENV).is_ok_and(|v| v == "1");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut summary = Vec::new();
    for s in selected {
        let images = if s.test_image { test_hooks } else { release };
        // Why a named kernel cannot boot: no artifacts, or this kernel missing from them; why
        // a kvm-unit-tests program cannot: the suite not built.
        let missing = named(s).and_then(|k| match &artifacts {
            Some(Ok(a)) => a.image(k).err(),
            Some(Err(e)) => Some(e.clone()),
            None => None,
        });
        let kut = s.linux.as_ref().and_then(|l| linux::kut::program_name(&l.kernel));
        if let Some(why) = kut.and_then(|_| linux::kut::source_missing()) {
            println!("scenario {} ... skipped: {why}", s.name);
            skipped += repeat.max(1);
            continue;
        }
        let missing = missing.or_else(|| kut.and_then(|p| linux::kut::program(p).err()));
        if let Some(e) = &missing {
            if optional {
                println!("scenario {} ... skipped: {e} ({}=1)", s.name, linux::OPTIONAL_ENV);
                skipped += repeat.max(1);
                continue;
            }
        }
        let artifacts = artifacts.as_ref().and_then(|a| a.as_ref().ok());
        let (mut ok, mut times) = (0u32, Vec::new());
        for run in 1..=repeat {
            let t = Instant::now();
            let (r, lines) = match &missing {
                Some(e) => (Err(e.clone()), vec![]),
                None => run_one(images, s, artifacts, verbose),
            };
            let secs = t.elapsed().as_secs_f64();
            times.push(secs);
            let which = if repeat > 1 { format!(" (run {run}/{repeat})") } else { String::new() };
            match r {
                Ok(checks) => {
                    ok += 1;
                    if repeat == 1 || verbose {
                        println!("scenario {}{which} ... ok ({secs:.1} s, {checks} checks)", s.name);
                    }
                }
                Err(why) => {
                    println!("scenario {}{which} ... FAILED: {why}", s.name);
                    for l in lines.iter().rev().take(25).collect::<Vec<_>>().into_iter().rev() {
                        println!("    | {l}");
                    }
                }
            }
        }
        passed += ok;
        failed += repeat - ok;
        if repeat > 1 {
            let max = times.iter().copied().fold(0.0, f64::max);
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let line = format!("scenario {}: {ok}/{repeat} passed (mean {mean:.1} s, max {max:.1} s)", s.name);
            println!("{line}");
            summary.push(line);
        }
    }
    if !summary.is_empty() {
        println!("repeat summary:");
        summary.iter().for_each(|l| println!("  {l}"));
    }
    if skipped > 0 {
        println!("scenarios: {passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("scenarios: {passed} passed, {failed} failed");
    }
    if failed == 0 { Ok(()) } else { Err(format!("{failed} scenario run(s) failed")) }
}
