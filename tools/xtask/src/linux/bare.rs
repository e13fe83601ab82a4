//! `cargo xtask linux-bare`.

use super::limits::{check_limits, parse_mem};
use super::{artifacts, bare_machine, boot, default_checks, ns_to_userspace, LinuxRun, DEFAULT_CMDLINE};
use crate::cli;
use std::time::Duration;

/// `cargo xtask linux-bare`: boots the Debian kernel with the initramfs on bare QEMU (EL1, no
/// hypervisor) and checks that userspace passes its checks: the baseline that proves the
/// checks right, independent of the hypervisor.
pub fn command(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("linux-bare", args, cli::LINUX_BARE_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("linux-bare", cli::LINUX_BARE_FLAGS));
        return Ok(());
    }
    let smp = flags.number("--smp", 2, 1..=8)?;
    let mem = flags.value("--mem").map_or(Ok(512), parse_mem)?;
    let mte = flags.has("--mte");
    let checks = flags.value("--checks").map_or_else(|| default_checks(smp, mte), String::from);
    let cmdline = format!("{DEFAULT_CMDLINE} pkvm.check={checks}");
    check_limits(0, None, cmdline.len(), mem, smp, 1)?;
    crate::setup::setup()?;
    let a = artifacts()?;
    let run = LinuxRun {
        scenario: String::new(),
        kernel: a.image.clone(),
        initrd: Some(a.initramfs.clone()),
        disk: None,
        cmdline,
        mem_mib: mem,
        vcpus: smp,
        protected: false,
        mte,
        ptrauth: true,
        sve_vl: 0,
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
