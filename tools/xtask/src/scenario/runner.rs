//! One run of one scenario.

use super::format::{LinuxKeys, Scenario};
use super::timeout_report::timeout_report;
use crate::images::{test_guest_machine, Images};
use crate::linux::{self, LinuxRun};
use crate::{qemu, root};
use std::time::Duration;

const DEFAULT_FORBID: &[&str] = &["EL2 FATAL", "EL2 PANIC", "] WARN", "] ERROR", "host: FAIL"];

/// A seed for `{seed}`: the clock and the process ID, mixed.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let x = t ^ (std::process::id() as u64).rotate_left(32) ^ MONITORS.load(std::sync::atomic::Ordering::Relaxed) as u64;
    // splitmix64 finaliser, then keep it short enough to type.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 1_000_000_000
}

/// Monitor sockets made so far (their names must be unique within this run).
static MONITORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The Linux run a scenario's keys describe, with `debian` and `pkvm` resolved to the cached
/// artifacts and `kut:NAME.flat` to the built kvm-unit-tests program.
pub fn linux_run(keys: &LinuxKeys, artifacts: Option<&linux::Artifacts>) -> Result<LinuxRun, String> {
    let artifacts = || artifacts.ok_or_else(|| "no Debian kernel and busybox for the initramfs".to_string());
    let (kernel, default_initrd) = linux::resolve_kernel(&keys.kernel, &root(), artifacts).map_err(|e| format!("kernel = {}, but {e}", keys.kernel))?;
    Ok(LinuxRun {
        scenario: "linux".into(),
        kernel,
        initrd: keys.initrd.as_ref().map(|i| root().join(i)).or(default_initrd),
        disk: keys.disk.as_ref().map(|d| root().join(d)),
        cmdline: keys.cmdline.clone().unwrap_or_else(|| linux::default_cmdline(&keys.kernel).into()),
        mem_mib: keys.mem_mib,
        vcpus: keys.vcpus,
        protected: keys.protected,
        mte: keys.mte,
        ptrauth: keys.ptrauth,
        sve_vl: keys.sve_vl,
        vms: keys.vms,
    })
}

/// The checks the host passed, from its last line `host: scenario NAME: PASS (N checks)`.
fn host_checks_passed(lines: &[String], scenario: &str) -> Option<usize> {
    let head = format!("host: scenario {scenario}: PASS (");
    lines.iter().find_map(|l| l.split_once(&head)?.1.trim_end().strip_suffix(" checks)")?.parse().ok())
}

/// Outcome of one scenario: the number of checks it passed (the host's, each expected line,
/// the exit status), or why it failed.
pub fn run_one(images: &Images, s: &Scenario, artifacts: Option<&linux::Artifacts>, verbose: bool) -> (Result<usize, String>, Vec<String>) {
    let seed = fresh_seed();
    if s.args.contains("{seed}") {
        println!("scenario {}: fresh seed {seed} (replay: --args with seed={seed})", s.name);
    }
    let args = s.args.replace("{seed}", &seed.to_string());
    let mut expect: Vec<String> = s.expect.iter().map(|e| e.replace("{seed}", &seed.to_string())).collect();
    // A Linux run's measurement, computed offline, for the host's line to match.
    if let (Some(keys), true) = (&s.linux, expect.iter().any(|e| e.contains("{measurement}"))) {
        let m = match linux_run(keys, artifacts).and_then(|run| crate::measure::linux_vm(&run)) {
            Ok(m) => crate::measure::hex(&m),
            Err(e) => return (Err(format!("computing the measurement offline: {e}")), Vec::new()),
        };
        expect.iter_mut().for_each(|e| *e = e.replace("{measurement}", &m));
    }
    // Measurements computed offline, for the guest's lines to match.
    for (i, &(vcpus, mib, protected)) in s.measure.iter().enumerate() {
        let flags = if protected { shared_abi::msg::vm_flags::PROTECTED } else { 0 };
        let m = match images.guest(&s.guest).and_then(|g| crate::measure::test_vm(&g, vcpus, mib, flags)) {
            Ok(m) => crate::measure::hex(&m),
            Err(e) => return (Err(format!("computing the measurement offline: {e}")), Vec::new()),
        };
        let key = if i == 0 { "{measurement}".to_string() } else { format!("{{measurement{}}}", i + 1) };
        expect.iter_mut().for_each(|e| *e = e.replace(&key, &m));
    }
    // The command-line file of a Linux run lives until QEMU has exited.
    let mut _cmdline_file = None;
    let machine = match &s.linux {
        Some(keys) if keys.bare => linux_run(&LinuxKeys { vcpus: s.smp, ..keys.clone() }, artifacts).and_then(|run| run.validate().and_then(|_| linux::bare_machine(&run))),
        Some(keys) => linux_run(keys, artifacts).and_then(|run| linux::hyp_machine(images, s.smp, &run, &args)).map(|(machine, file)| {
            _cmdline_file = file;
            machine
        }),
        None => images.guest(&s.guest).and_then(|guest| test_guest_machine(images, s.smp, &format!("scenario={} {args}", s.scenario), &guest)),
    };
    let mut machine = match machine {
        Ok(m) => m,
        Err(e) => return (Err(e), vec![]),
    };
    if s.icount {
        machine = machine.icount("shift=0");
    }
    if let Some(mib) = s.ram_mib {
        machine = machine.mem(&format!("{mib}M"));
    }
    // A monitor on a private socket, for the timeout report.
    let monitor = std::env::temp_dir().join(format!("xtask-{}-{}.mon", std::process::id(), MONITORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let _ = std::fs::remove_file(&monitor);
    let run = qemu::Run::new(&machine.monitor_socket(&monitor))
        .deadline(Duration::from_secs(s.timeout))
        .script(&s.input)
        .echo(verbose)
        .on_deadline(|| timeout_report(&monitor, &images.host, s.smp))
        .wait();
    let _ = std::fs::remove_file(&monitor);
    let out = match run {
        Ok(out) => out,
        Err(e) => return (Err(e), vec![]),
    };
    let lines = out.texts();
    let Some(status) = out.status else {
        return (Err(format!("timed out after {} s\n{}", s.timeout, out.deadline_report.unwrap_or_default())), lines);
    };
    if status.code() != Some(s.exit) {
        return (Err(format!("QEMU exit status {:?}, expected {}", status.code(), s.exit)), lines);
    }
    let boots_host = s.linux.as_ref().is_none_or(|l| !l.bare);
    let host_checks = if s.exit == 0 && boots_host {
        let Some(passed) = host_checks_passed(&lines, &s.scenario) else {
            return (Err(format!("no line \"host: scenario {}: PASS (N checks)\"", s.scenario)), lines);
        };
        if let Some(want) = s.checks.filter(|want| *want != passed) {
            return (Err(format!("the host passed {passed} checks, the scenario expects {want} (checks = {want})")), lines);
        }
        passed
    } else {
        0
    };
    for e in &expect {
        if !lines.iter().any(|l| l.contains(e.as_str())) {
            return (Err(format!("expected line missing: {e:?}")), lines);
        }
    }
    for (count, e) in &s.expect_count {
        let seen = lines.iter().filter(|l| l.contains(e.as_str())).count();
        if seen != *count {
            return (Err(format!("expected {count} lines with {e:?}, saw {seen}")), lines);
        }
    }
    let defaults: &[&str] = if s.exit == 0 { DEFAULT_FORBID } else { &[] };
    let defaults = defaults.iter().copied().filter(|d| !s.allow.iter().any(|a| a == d));
    for f in defaults.chain(s.forbid.iter().map(String::as_str)) {
        if let Some(l) = lines.iter().find(|l| l.contains(f)) {
            return (Err(format!("forbidden line present: {l:?}")), lines);
        }
    }
    (Ok(host_checks + expect.len() + s.expect_count.len() + 1), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reports_its_checks_on_its_pass_line() {
        let lines: Vec<String> = ["host: ok: x", "host: scenario demo-x: PASS (9 checks)", "host: scenario demo: PASS (12 checks) ", "host: powering off"].map(String::from).into();
        assert_eq!(host_checks_passed(&lines, "demo"), Some(12));
        assert_eq!(host_checks_passed(&lines, "linux"), None);
        assert_eq!(host_checks_passed(&["host: scenario demo: PASS".to_string()], "demo"), None);
    }
}
