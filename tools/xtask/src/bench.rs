//! `cargo xtask bench`: boots the hypervisor under QEMU with instruction counting and prints a
//! table (operation, median, min, max, target, verdict); the same figures go to
//! `target/bench.json`. Six groups, chosen with `--only`:
//!
//! - `main`, `ptrauth`: the host's `bench` scenarios with the bench guest, under `-icount
//!   shift=0`, where PMU event 0x08 (INST_RETIRED) counts exactly: instructions the measuring
//!   CPU retired;
//! - `irq`: the interrupt guest (`tests/guests/src/bin/irqbench.rs`) in the Linux-style VM (the
//!   host's distributor model, its timers), two boots per row (its samples, and one sample:
//!   the difference of the VM's `host: stats` is the exits of the rounds); figures in ns of
//!   counter time under `-icount shift=0,sleep=off`, that is instructions retired by every CPU
//!   (QEMU runs them in turn), idle time skipped;
//! - `linux`: Debian's kernel with the project's initramfs from its first instruction to its
//!   first userspace line, on bare QEMU at EL1 and as protected and non-protected VMs, in the
//!   same unit, and the ratio; the project's pKVM guest kernel the same way as a protected VM
//!   (against Debian's);
//! - `blk`: virtio-blk read throughput in KiB/s of guest time, protected (every buffer bounced
//!   through the restricted DMA pool) against non-protected, each reading into a buffer of
//!   physically contiguous pages (the bounce costs per physical segment);
//! - `kut`: kvm-unit-tests' `micro-bench` in a protected VM of 2 vCPUs on 2 host CPUs
//!   ([`KUT_HOST_CPUS`]), its table's means in the same unit, next to the performance issue's
//!   targets and KVM's figures on the same QEMU.
//!
//! The `irq`, `kut`, `linux` and `blk` groups run on 2 host CPUs ([`HOST_CPUS`], [`KUT_HOST_CPUS`]).
//! QEMU 7.2's round-robin `-icount` gives a CPU that busy-waits the whole slice up to the next
//! timer deadline and leaves the others none (fixed in QEMU 8.0, which splits the slice); every
//! wait of the host and of EL2, their locks' included (`host_kernel::sync`, `el2::sync`),
//! executes `YIELD`, which ends the slice, so the hypervisor runs there on 2 CPUs. A row's `config` in `bench.json` says where it ran. Without
//! `-icount` the figures would be wall time.

use crate::linux::{self, LinuxRun, NamedKernel, ICOUNT};
use crate::qemu;
use crate::build::{build, Flavour};
use crate::images::{test_guest_machine, Images};
use crate::setup::setup;
use crate::{cli, root};
use shared_abi::bench::Stats;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a row's figures count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Unit {
    /// PMU event 0x08 on the measuring CPU (`-icount shift=0`).
    Instructions,
    /// ns of counter time under `-icount shift=0,sleep=off`: instructions of all CPUs.
    CounterNs,
    /// KiB read per second of the guest's `CLOCK_MONOTONIC`, under the same `-icount`.
    KibPerSecond,
}

impl Unit {
    fn json(self) -> &'static str {
        match self {
            Unit::Instructions => "instructions retired (PMU 0x08, QEMU -icount shift=0)",
            Unit::CounterNs => "ns of counter time (QEMU -icount shift=0,sleep=off: instructions retired by all CPUs)",
            Unit::KibPerSecond => "KiB/s of guest time (CLOCK_MONOTONIC under QEMU -icount shift=0,sleep=off)",
        }
    }
}

/// A row of the report: the key the images print, what it measures, and its target.
struct Row {
    key: &'static str,
    operation: &'static str,
    target: Option<u64>,
    target_text: &'static str,
    unit: Unit,
}

const fn row(key: &'static str, operation: &'static str, target: Option<u64>, target_text: &'static str) -> Row {
    Row { key, operation, target, target_text, unit: Unit::Instructions }
}

const fn ns_row(key: &'static str, operation: &'static str, target_text: &'static str) -> Row {
    Row { key, operation, target: None, target_text, unit: Unit::CounterNs }
}

/// A row of kvm-unit-tests' `micro-bench` (its mean, in ns of counter time), with the target of
/// the performance issue.
const fn kut_row(key: &'static str, operation: &'static str, target: u64, target_text: &'static str) -> Row {
    Row { key, operation, target: Some(target), target_text, unit: Unit::CounterNs }
}

const ROWS: &[Row] = &[
    row("host_null_hvc", "host null hypercall round trip (PING)", Some(100), "<= 100"),
    row("guest_smccc_version", "guest SMCCC_VERSION, served in EL2", Some(150), "<= 150"),
    row("guest_mmio_read", "guest MMIO read emulated by the host", Some(1200), "<= 1200"),
    row("guest_mmio_read_fp", "guest MMIO read with the guest's FP/SIMD live (lazy FP switch)", None, "FP moves only"),
    row("guest_mmio_read_mte", "guest MMIO read, MTE VM (MTE registers switched)", None, "MTE moves only"),
    row("guest_mmio_read_sve512", "guest MMIO read with the guest's SVE live, 512-bit VM (lazy SVE switch)", None, "SVE moves only"),
    row("guest_mmio_read_sve2048", "guest MMIO read with the guest's SVE live, 2048-bit VM (lazy SVE switch)", None, "SVE moves only"),
    row("ptrauth_eager_idle", "guest MMIO read, ptrauth VM not using its keys, eager policy", None, "key moves only"),
    row("ptrauth_lazy_idle", "guest MMIO read, ptrauth VM not using its keys, lazy policy", None, "key moves only"),
    row("ptrauth_eager_active", "guest PACGA + MMIO read, ptrauth VM, eager policy", None, "key moves only"),
    row("ptrauth_lazy_active", "guest PACGA + MMIO read, ptrauth VM, lazy policy", None, "key moves only"),
    row("guest_first_touch", "guest first touch of RAM, per 4 KiB page (the 2 MiB block's fault / 512)", Some(400), "<= 400"),
    row("guest_first_touch_block", "guest first touch of RAM: the fault that maps its 2 MiB block", None, "per page above"),
    row("guest_first_touch_mte", "guest first touch of RAM, per 4 KiB page, MTE VM (the block's fault / 512)", Some(600), "<= 600"),
    row("guest_first_touch_mte_block", "guest first touch of RAM, MTE VM: the fault that maps its 2 MiB block (tags of 512 pages cleared)", None, "per page above"),
    row("world_switch_plain", "world switch round trip, plain (PSCI_VERSION)", None, "own moves only"),
    row("vm_lifecycle_1mib", "create + donate + destroy, protected, 1 MiB", None, "linear"),
    row("vm_lifecycle_16mib", "create + donate + destroy, protected, 16 MiB", None, "linear"),
    row("vm_lifecycle_64mib", "create + donate + destroy, protected, 64 MiB", None, "linear"),
    row("vm_lifecycle_1mib_measured", "create + donate (content measured) + destroy, protected, 1 MiB", None, "hash per page"),
    ns_row("guest_mem_share_unshare", "guest MEM_SHARE + MEM_UNSHARE of one page, protected VM, each an exit to the host (ns = instructions)", "exits only"),
    ns_row("vmm_mmio_read", "guest MMIO read of the virtio-console's DeviceID (kvm-unit-tests' mmio_read_user), Linux-style VMM (ns = instructions)", "exits only"),
    ns_row("vmm_uart_fr_read", "guest read of the PL011's UARTFR, Linux-style VMM (ns = instructions)", "exits only"),
    ns_row("irq_sgi_round_trip", "SGI round trip vCPU 0 -> 1 -> 0, 2 vCPUs, one per host CPU (ns = instructions)", "exits only"),
    ns_row("irq_vtimer_wfi", "virtual timer (PPI 27) deadline to guest handler, vCPU in WFI (ns)", "exits only"),
    ns_row("irq_vtimer_busy", "virtual timer (PPI 27) deadline to guest handler, vCPU busy (ns)", "exits only"),
    ns_row("irq_ptimer_wfi", "EL1 physical timer (PPI 30, EL2-emulated) deadline to handler, vCPU in WFI (ns)", "exits only"),
    ns_row("irq_ptimer_busy", "EL1 physical timer (PPI 30, EL2-emulated) deadline to handler, vCPU busy (ns)", "exits only"),
    ns_row("linux_boot_bare", "Linux boot, kernel entry to first userspace line, bare QEMU at EL1, 1 CPU (ns)", "baseline"),
    ns_row("linux_boot_protected", "Linux boot, same, protected VM of 1 vCPU (MTE, PAuth) (ns)", "<= 1.15x bare"),
    ns_row("linux_boot_nonprotected", "Linux boot, same, non-protected VM of 1 vCPU (ns)", "<= 1.15x bare"),
    ns_row("linux_boot_bare_2cpu", "Linux boot, same, bare QEMU at EL1, 2 CPUs (ns)", "baseline"),
    ns_row("linux_boot_protected_2vcpu", "Linux boot, same, protected VM of 2 vCPUs on 2 host CPUs (ns)", "<= 1.15x bare"),
    ns_row("linux_boot_pkvm_protected", "Linux boot, same, the pKVM guest kernel, protected VM of 1 vCPU (ns)", "vs Debian's"),
    kut_row("kut_hyp_call", "micro-bench hyp_call: an SMCCC ID no one implements (KVM VHE: 1,003)", 200, "<= 200"),
    kut_row("kut_mmio_read_user", "micro-bench mmio_read_user: a read the host VMM emulates (KVM VHE: 5,458)", 1000, "<= 1000"),
    kut_row("kut_mmio_read_vgic", "micro-bench mmio_read_vgic: a GICD_IIDR read (KVM VHE: 1,834)", 1200, "<= 1200"),
    kut_row("kut_eoi", "micro-bench eoi: ICC_EOIR1_EL1 of a spurious INTID, in the CPU (KVM VHE: 21)", 21, "21"),
    kut_row("kut_ipi", "micro-bench ipi: SGI sent by vCPU 0 until taken and acknowledged by vCPU 1 (KVM VHE: 4,700)", 1500, "<= 1500"),
    kut_row("kut_timer_10ms", "micro-bench timer_10ms: per virtual-timer interrupt, 10 ms apart (KVM VHE: 4,832)", 1500, "<= 1500"),
    Row { key: "blk_read_nonprotected", operation: "virtio-blk read, 64 MiB in 256 KiB O_DIRECT requests, pKVM guest kernel, non-protected VM (KiB/s)", target: None, target_text: "baseline", unit: Unit::KibPerSecond },
    Row { key: "blk_read_protected", operation: "virtio-blk read, same, protected VM (bounced through the restricted DMA pool) (KiB/s)", target: None, target_text: "vs non-protected", unit: Unit::KibPerSecond },
];

/// Host CPUs under the hypervisor for the `irq` and `linux` groups (see the module header):
/// two, so that the 2-vCPU rows have one vCPU per host CPU.
const HOST_CPUS: u32 = 2;

/// The boot-ratio target: a Linux VM reaches userspace in at most this many times bare QEMU's
/// counter time.
const LINUX_RATIO_TARGET: f64 = 1.15;

fn verdict(row: &Row, s: Option<&Stats>) -> String {
    match (s, row.target) {
        (None, _) => "not measured".into(),
        (Some(s), Some(t)) if s.median <= t => "met".into(),
        (Some(s), Some(t)) => format!("{:.1}x target", s.median as f64 / t as f64),
        (Some(_), None) => "see below".into(),
    }
}

/// The groups `--only` chooses from.
pub const GROUPS: &[&str] = &["main", "ptrauth", "irq", "kut", "linux", "blk"];

/// Where a row ran: host CPUs under the hypervisor (bare QEMU's CPUs for a bare row), the VM's
/// vCPUs (0: no VM), and how the vCPUs were placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    host_cpus: u32,
    vcpus: u32,
    placement: &'static str,
}

impl Config {
    /// How `vcpus` vCPUs share `host_cpus` host CPUs under the host's scheduler.
    const fn scheduled(host_cpus: u32, vcpus: u32) -> Self {
        let placement = if vcpus > host_cpus { "host scheduler: vCPUs share the host CPUs" } else { "host scheduler: one vCPU per host CPU" };
        Self { host_cpus, vcpus, placement }
    }

    fn json(&self) -> String {
        format!("{{\"host_cpus\": {}, \"vcpus\": {}, \"placement\": \"{}\"}}", self.host_cpus, self.vcpus, self.placement)
    }
}

/// The `main` and `ptrauth` groups' rows: the host alone, or the bench guest's one vCPU run
/// by the scenario on the one host CPU.
fn main_config(key: &str) -> Config {
    if key.starts_with("host_") || key.starts_with("vm_lifecycle") {
        Config { host_cpus: 1, vcpus: 0, placement: "the host alone, no VM running" }
    } else {
        Config { host_cpus: 1, vcpus: 1, placement: "stepped by the host scenario on the one host CPU" }
    }
}

/// What the runs collected.
#[derive(Default)]
struct Results {
    stats: BTreeMap<String, Stats>,
    /// Where each row ran, by row key.
    config: BTreeMap<String, Config>,
    /// When the run started (UTC) and the commit it ran (read then: editing the tree during a
    /// run does not change what it measured).
    date: String,
    commit: String,
    /// Exits per measured operation, by row key: `(source.reason, per op)`.
    exits: BTreeMap<String, Vec<(String, f64)>>,
    /// Verdicts computed from more than one row (the boot ratio), by row key.
    verdicts: BTreeMap<String, String>,
    /// Extra lines for the report and JSON fields for the Linux boot.
    notes: Vec<String>,
    json_extra: Vec<String>,
}

/// Boots one run of the host's `bench` scenarios and collects its `bench:` lines.
fn boot(images: &Images, args: &str, r: &mut Results) -> Result<(), String> {
    let guest = images.guest("bench")?;
    let machine = test_guest_machine(images, 1, args, &guest)?.icount("shift=0");
    let out = qemu::Run::new(&machine).echo(true).stderr_to_terminal().wait()?;
    for line in out.texts() {
        if let Some((key, s)) = parse_bench_line(&line)? {
            if let Some((block_key, per_page)) = first_touch(&key, &s) {
                // The guest touched 1,000 pages of 4 MiB: all but the block faults hit a block
                // mapped already (the median), each block fault (the largest) mapped 512.
                r.notes.push(format!("{key}: of {} page touches the median ({}) hit a mapped block; the largest ({}) is a fault that mapped 2 MiB", s.n, s.median, s.max));
                r.config.insert(block_key.clone(), main_config(&key));
                r.verdicts.insert(block_key.clone(), format!("one fault maps 512 pages ({} per page)", per_page.median));
                r.stats.insert(block_key, Stats { n: 1, median: s.max, min: s.max, max: s.max });
                r.config.insert(key.clone(), main_config(&key));
                r.stats.insert(key, per_page);
                continue;
            }
            r.config.insert(key.clone(), main_config(&key));
            r.stats.insert(key, s);
        } else if line.contains("bench:") || line.contains("FAIL") || line.contains("FATAL") {
            r.notes.push(line);
        }
    }
    if out.code() != Some(0) {
        return Err(format!("the benchmark run {args:?} failed (QEMU exit {:?})", out.code()));
    }
    Ok(())
}

/// A first-touch row of the bench guest (`guest_first_touch`, `guest_first_touch_mte`): its
/// block row's key and the cost per 4 KiB page. A first touch maps the whole 2 MiB block where
/// it can, so of the guest's page touches the largest is the block's fault; per page, that is
/// a 512th of it.
fn first_touch(key: &str, s: &Stats) -> Option<(String, Stats)> {
    if key != "guest_first_touch" && key != "guest_first_touch_mte" {
        return None;
    }
    let per_page = s.max.div_ceil(512);
    Some((format!("{key}_block"), Stats { n: 512, median: per_page, min: per_page, max: per_page }))
}

/// `bench: KEY n=.. median=.. min=.. max=..` anywhere in a console line (`None`: not one).
fn parse_bench_line(line: &str) -> Result<Option<(String, Stats)>, String> {
    let Some(rest) = line.split("bench: ").nth(1).filter(|r| r.contains(" n=")) else { return Ok(None) };
    let (key, fields) = rest.split_once(' ').ok_or(format!("bad bench line {line:?}"))?;
    let s = Stats::parse(fields).ok_or(format!("bad bench line {line:?}"))?;
    Ok(Some((key.to_string(), s)))
}

/// The counts of the host's `host: stats {"vm":..,"host":{..},"el2":{..}}` line: the exits
/// that reached the host by reason, and the exceptions EL2 took by class.
#[derive(Debug, Default, PartialEq)]
struct ExitStats {
    host: Vec<(String, u64)>,
    el2: Vec<(String, u64)>,
}

fn parse_stats_line(line: &str) -> Option<ExitStats> {
    let json = line.split("host: stats ").nth(1)?;
    let object = |name: &str| -> Option<Vec<(String, u64)>> {
        let body = json.split(&format!("\"{name}\":{{")).nth(1)?.split('}').next()?;
        body.split(',')
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                let (k, v) = f.split_once(':')?;
                Some((k.trim().trim_matches('"').to_string(), v.trim().parse().ok()?))
            })
            .collect()
    };
    Some(ExitStats { host: object("host")?, el2: object("el2")? })
}

/// One row of the interrupt group: the guest's mode and the machine it runs on.
struct IrqRow {
    key: &'static str,
    mode: &'static str,
    /// Host CPUs and the VM's vCPUs.
    smp: u32,
    vcpus: u32,
    /// Samples (the guest adds 16 warm-up rounds) and the timer's distance in ticks.
    n: usize,
    ahead: u64,
}

/// The guest's warm-up rounds (`irqbench.rs`, `WARMUP`), which it does not count as samples.
const IRQ_WARMUP: usize = 16;

const IRQ_ROWS: &[IrqRow] = &[
    IrqRow { key: "vmm_mmio_read", mode: "mmio", smp: HOST_CPUS, vcpus: 1, n: 1000, ahead: 1 },
    IrqRow { key: "vmm_uart_fr_read", mode: "uart-fr", smp: HOST_CPUS, vcpus: 1, n: 1000, ahead: 1 },
    IrqRow { key: "irq_sgi_round_trip", mode: "sgi", smp: HOST_CPUS, vcpus: 2, n: 1000, ahead: 1 },
    IrqRow { key: "irq_vtimer_wfi", mode: "vtimer-wfi", smp: HOST_CPUS, vcpus: 1, n: 1000, ahead: 1000 },
    IrqRow { key: "irq_vtimer_busy", mode: "vtimer-busy", smp: HOST_CPUS, vcpus: 1, n: 1000, ahead: 1000 },
    IrqRow { key: "irq_ptimer_wfi", mode: "ptimer-wfi", smp: HOST_CPUS, vcpus: 1, n: 1000, ahead: 1000 },
    // Each sample spins until the host's next tick (see README): few of them.
    IrqRow { key: "irq_ptimer_busy", mode: "ptimer-busy", smp: HOST_CPUS, vcpus: 1, n: 20, ahead: 1000 },
];

/// One boot of the interrupt guest for `row` with `n` samples: its `bench:` figures and the
/// VM's exit statistics.
fn irq_boot(images: &Images, row: &IrqRow, n: usize) -> Result<(Stats, ExitStats), String> {
    let run = LinuxRun {
        scenario: "linux".into(),
        kernel: images.guest("irqbench")?,
        initrd: None,
        disk: None,
        cmdline: format!("irqbench={} bench-key={} n={n} ahead={}", row.mode, row.key, row.ahead),
        mem_mib: 64,
        vcpus: row.vcpus,
        protected: true,
        mte: false,
        ptrauth: false,
        sve_vl: 0,
        vms: 1,
    };
    let (machine, _file) = linux::hyp_machine(images, row.smp, &run, "")?;
    let report = linux::boot(&machine.icount(ICOUNT), Duration::from_secs(180), false)?;
    let mut got = None;
    let mut exits = None;
    for line in &report.lines {
        if let Some((key, s)) = parse_bench_line(line)? {
            got = Some((key, s));
        }
        exits = exits.or_else(|| parse_stats_line(line));
    }
    if report.exit != Some(0) {
        let tail: Vec<String> = report.lines.iter().rev().take(12).rev().map(|l| format!("    | {l}")).collect();
        return Err(format!("{}: QEMU exit {:?} (None: timed out); last lines:\n{}", row.key, report.exit, tail.join("\n")));
    }
    let (key, s) = got.ok_or(format!("{}: the guest printed no bench line", row.key))?;
    if key != row.key || s.n != n {
        return Err(format!("{}: the guest reported {key} with {} samples", row.key, s.n));
    }
    Ok((s, exits.ok_or(format!("{}: no host: stats line", row.key))?))
}

/// The interrupt guest in a protected Linux-style VM: per row, a boot with its samples and one
/// with a single sample, whose difference in exit statistics is the exits of `n - 1` rounds.
fn irq_rows(images: &Images, r: &mut Results) -> Result<(), String> {
    for row in IRQ_ROWS {
        println!("xtask: {} ({} host CPU(s), {} vCPU(s), {} samples after {IRQ_WARMUP} warm-up rounds)", row.key, row.smp, row.vcpus, row.n);
        let (s, full) = irq_boot(images, row, row.n)?;
        let (_, one) = irq_boot(images, row, 1)?;
        println!("    | bench: {} {s}", row.key);
        let rounds = (row.n - 1) as f64;
        let diff = |a: &[(String, u64)], b: &[(String, u64)], side: &str| -> Vec<(String, f64)> {
            a.iter()
                .map(|(k, n)| {
                    let base = b.iter().find(|(bk, _)| bk == k).map_or(0, |(_, m)| *m);
                    (format!("{side}.{k}"), (*n as f64 - base as f64) / rounds)
                })
                .filter(|(_, per)| per.abs() >= 0.005)
                .collect()
        };
        let mut per_op = diff(&full.host, &one.host, "host");
        per_op.extend(diff(&full.el2, &one.el2, "el2"));
        r.exits.insert(row.key.into(), per_op);
        r.config.insert(row.key.into(), Config::scheduled(row.smp, row.vcpus));
        r.stats.insert(row.key.into(), s);
    }
    Ok(())
}

/// kvm-unit-tests' `micro-bench` programs' names, and the rows they fill.
const KUT_ROWS: &[(&str, &str)] = &[
    ("hyp_call", "kut_hyp_call"),
    ("mmio_read_user", "kut_mmio_read_user"),
    ("mmio_read_vgic", "kut_mmio_read_vgic"),
    ("eoi", "kut_eoi"),
    ("ipi", "kut_ipi"),
    ("timer_10ms", "kut_timer_10ms"),
];

/// Host CPUs (and the VM's vCPUs) of the `kut` group: its `ipi` row needs the two vCPUs on
/// different host CPUs, which the host scheduler gives each one once both CPUs are up.
const KUT_HOST_CPUS: u32 = 2;

/// kvm-unit-tests' `micro-bench` in a protected VM of 2 vCPUs on 2 host CPUs under `-icount`
/// (about three minutes): its table's means, one row each.
fn kut_rows(images: &Images, r: &mut Results) -> Result<(), String> {
    let kernel = match linux::kut::program("micro-bench.flat") {
        Ok(k) => k,
        Err(e) => {
            // As the kvm-unit-tests scenarios: a machine without the suite's source skips it.
            r.notes.push(format!("kut group skipped: {e}"));
            return Ok(());
        }
    };
    println!("xtask: kvm-unit-tests micro-bench ({KUT_HOST_CPUS} host CPUs, a protected VM of 2 vCPUs; about three minutes)");
    let run = LinuxRun {
        scenario: "linux".into(),
        kernel,
        initrd: None,
        disk: None,
        cmdline: String::new(),
        mem_mib: 128,
        vcpus: 2,
        protected: true,
        mte: false,
        ptrauth: false,
        sve_vl: 0,
        vms: 1,
    };
    let (machine, _file) = linux::hyp_machine(images, KUT_HOST_CPUS, &run, "")?;
    let report = linux::boot(&machine.icount(ICOUNT), Duration::from_secs(900), false)?;
    if report.exit != Some(0) || !report.lines.iter().any(|l| l.contains("EXIT: STATUS=1")) {
        let tail: Vec<String> = report.lines.iter().rev().take(12).rev().map(|l| format!("    | {l}")).collect();
        return Err(format!("micro-bench: QEMU exit {:?} (None: timed out); last lines:\n{}", report.exit, tail.join("\n")));
    }
    for line in &report.lines {
        if let Some((name, s)) = parse_micro_bench_line(line) {
            if let Some((_, key)) = KUT_ROWS.iter().find(|(n, _)| *n == name) {
                println!("    | bench: {key} {s}");
                r.config.insert((*key).into(), Config::scheduled(KUT_HOST_CPUS, 2));
                r.stats.insert((*key).into(), s);
            }
        }
    }
    if let Some((name, _)) = KUT_ROWS.iter().find(|(_, key)| !r.stats.contains_key(*key)) {
        return Err(format!("micro-bench printed no {name} row"));
    }
    r.notes.push("kut_* rows: micro-bench prints only a mean per operation (median = min = max = that mean; n = its count).".into());
    Ok(())
}

/// A row of micro-bench's table, `NAME TOTAL_NS AVG_NS`: the name and its mean as [`Stats`]
/// (`n`: total / mean; median, min and max: the mean, rounded).
fn parse_micro_bench_line(line: &str) -> Option<(&str, Stats)> {
    let mut words = line.split_whitespace();
    let (name, total, avg) = (words.next()?, words.next()?.parse::<f64>().ok()?, words.next()?.parse::<f64>().ok()?);
    if words.next().is_some() || !(avg > 0.0) {
        return None;
    }
    let mean = avg.round() as u64;
    Some((name, Stats { n: (total / avg).round() as usize, median: mean, min: mean, max: mean }))
}

/// The virtual count at the kernel's first instruction and `CNTVOFF_EL2`, from the host's
/// `host: bench: VM .. kernel entry at CNTPCT=N CNTVOFF_EL2=M` line.
fn parse_kernel_entry(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("kernel entry at CNTPCT=").nth(1)?;
    let mut words = rest.split_whitespace();
    let cntpct: u64 = words.next()?.parse().ok()?;
    let cntvoff: u64 = words.next()?.strip_prefix("CNTVOFF_EL2=")?.parse().ok()?;
    Some((cntpct.checked_sub(cntvoff)?, cntvoff))
}

/// Counter ticks to ns.
fn ticks_to_ns(ticks: u64, freq: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / freq.max(1) as u128) as u64
}

/// One Linux boot: on bare QEMU with `cpus` CPUs, or as a VM of `cpus` vCPUs on [`HOST_CPUS`]
/// host CPUs; and the row its ratio is taken against.
struct BootRow {
    key: &'static str,
    kernel: NamedKernel,
    cpus: u32,
    /// `None`: bare QEMU at EL1.
    protected: Option<bool>,
    /// The row the ratio is taken against, and its name in the verdict (`bare`: the ratio has
    /// the target [`LINUX_RATIO_TARGET`]).
    baseline: Option<(&'static str, &'static str)>,
}

const BARE: Option<(&str, &str)> = Some(("linux_boot_bare", "bare"));
const BOOT_ROWS: &[BootRow] = &[
    BootRow { key: "linux_boot_bare", kernel: NamedKernel::Debian, cpus: 1, protected: None, baseline: None },
    BootRow { key: "linux_boot_protected", kernel: NamedKernel::Debian, cpus: 1, protected: Some(true), baseline: BARE },
    BootRow { key: "linux_boot_nonprotected", kernel: NamedKernel::Debian, cpus: 1, protected: Some(false), baseline: BARE },
    BootRow { key: "linux_boot_bare_2cpu", kernel: NamedKernel::Debian, cpus: 2, protected: None, baseline: None },
    BootRow { key: "linux_boot_protected_2vcpu", kernel: NamedKernel::Debian, cpus: 2, protected: Some(true), baseline: Some(("linux_boot_bare_2cpu", "bare")) },
    // The same initramfs and checks; the kernel also shares its restricted DMA pool (2,080
    // MEM_SHARE exits) and declares its MMIO with MMIO_GUARD.
    BootRow { key: "linux_boot_pkvm_protected", kernel: NamedKernel::Pkvm, cpus: 1, protected: Some(true), baseline: Some(("linux_boot_protected", "Debian's")) },
];

/// Debian's kernel with the project's initramfs (MTE on; pointer authentication, which bare
/// QEMU's CPU always has, given to the VMs), 512 MiB: [`BOOT_ROWS`], each measured from the
/// kernel's first instruction to its first userspace line.
fn linux_rows(images: &Images, r: &mut Results) -> Result<(), String> {
    let a = linux::artifacts()?;
    let timeout = Duration::from_secs(900);
    let mut figures = Vec::new();
    for row in BOOT_ROWS {
        let run = LinuxRun {
            scenario: "linux".into(),
            kernel: a.image(row.kernel)?.to_path_buf(),
            initrd: Some(a.initramfs.clone()),
            disk: None,
            cmdline: format!("{} pkvm.check={}", row.kernel.default_cmdline(), linux::default_checks(row.cpus, true)),
            mem_mib: 512,
            vcpus: row.cpus,
            protected: row.protected.unwrap_or(false),
            mte: true,
            ptrauth: true,
            sve_vl: 0,
            vms: 1,
        };
        run.validate()?;
        let kernel_ns = match row.protected {
            None => {
                println!("xtask: {} (bare QEMU at EL1, {} CPU(s), MTE)", row.key, row.cpus);
                // QEMU's boot stub runs a handful of instructions before the kernel's first.
                linux::ns_to_userspace(linux::bare_machine(&run)?, 1, timeout, false)?.0
            }
            Some(protected) => {
                let (machine, _file) = linux::hyp_machine(images, HOST_CPUS, &run, "")?;
                let what = if protected { "protected" } else { "non-protected" };
                println!("xtask: {} ({HOST_CPUS} host CPU(s), a {what} VM of {} vCPU(s), MTE, PAuth)", row.key, row.cpus);
                let (stamp_ns, report) = linux::ns_to_userspace(machine, 1, timeout, false)?;
                let freq = report.stamp.map_or(0, |s| s.1);
                let (entry, cntvoff) = report.lines.iter().find_map(|l| parse_kernel_entry(l)).ok_or(format!("{}: the host printed no kernel entry line", row.key))?;
                let kernel_ns = stamp_ns.checked_sub(ticks_to_ns(entry, freq)).ok_or(format!("{}: the stamp is before the kernel entry", row.key))?;
                if let Some(e) = report.lines.iter().find_map(|l| parse_stats_line(l)) {
                    let list = |v: &[(String, u64)]| v.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
                    r.notes.push(format!("{}: over the whole run (boot, checks, power-off): exits to the host {}; exceptions taken to EL2 {}", row.key, list(&e.host), list(&e.el2)));
                    let pairs = |v: &[(String, u64)]| v.iter().map(|(k, n)| format!("\"{k}\": {n}")).collect::<Vec<_>>().join(", ");
                    figures.push(format!("\"{}_exits\": {{\"host\": {{{}}}, \"el2\": {{{}}}}}", row.key, pairs(&e.host), pairs(&e.el2)));
                }
                let since_reset = stamp_ns + ticks_to_ns(cntvoff, freq);
                r.notes.push(format!(
                    "{}: kernel entry at the VM's virtual count {entry} ({:.1} ms of counter time: EL2's and the host's boot, the VMM copying the kernel and giving the memory; CNTVOFF_EL2 {cntvoff}), first userspace line at {since_reset} ns since the machine's reset; {:.1} s wall",
                    row.key,
                    ticks_to_ns(entry, freq) as f64 / 1e6,
                    report.wall_total.as_secs_f64()
                ));
                figures.push(format!("\"{}_from_reset_ns\": {since_reset}", row.key));
                kernel_ns
            }
        };
        figures.push(format!("\"{}_ns\": {kernel_ns}", row.key));
        let config = if row.protected.is_some() { Config::scheduled(HOST_CPUS, row.cpus) } else { Config { host_cpus: row.cpus, vcpus: 0, placement: "bare QEMU at EL1, no hypervisor" } };
        r.config.insert(row.key.into(), config);
        r.stats.insert(row.key.into(), Stats { n: 1, median: kernel_ns, min: kernel_ns, max: kernel_ns });
        if let Some((base, name)) = row.baseline.and_then(|(b, name)| Some((r.stats.get(b)?, name))) {
            let ratio = kernel_ns as f64 / base.median as f64;
            let met = match name {
                "bare" if ratio <= LINUX_RATIO_TARGET => ": met",
                "bare" => ": NOT met",
                _ => "",
            };
            r.verdicts.insert(row.key.into(), format!("{ratio:.3}x {name}{met}"));
            figures.push(format!("\"{}_ratio\": {ratio:.4}", row.key));
        } else {
            r.verdicts.insert(row.key.into(), "baseline".into());
        }
    }
    r.json_extra.push(format!("\"linux_boot\": {{{}, \"host_cpus\": {HOST_CPUS}, \"target_ratio\": {LINUX_RATIO_TARGET}}}", figures.join(", ")));
    Ok(())
}

/// The block-throughput disk's size.
const BLK_DISK_MIB: u64 = 64;

/// The block-throughput disk: [`BLK_DISK_MIB`] MiB whose every 512-byte sector begins with its
/// own number (what `pkvm-check blkread` verifies), written once under `target/linux/`.
fn bench_disk() -> Result<std::path::PathBuf, String> {
    let path = linux::artifacts::cache().join(format!("bench-disk-{BLK_DISK_MIB}m.img"));
    let size = BLK_DISK_MIB << 20;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        let mut disk = vec![0x5a_u8; size as usize];
        for (n, sector) in disk.chunks_exact_mut(512).enumerate() {
            sector[..8].copy_from_slice(&(n as u64).to_le_bytes());
        }
        std::fs::write(&path, disk).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// virtio-blk read throughput, the pKVM guest kernel reading the whole bench disk with
/// `O_DIRECT` (`pkvm-check blkread=vda`): a non-protected VM (the device reaches the guest's
/// buffers) and a protected one (the kernel bounces each through its restricted DMA pool, the
/// only memory the device may touch).
fn blk_rows(images: &Images, a: &linux::Artifacts, r: &mut Results) -> Result<(), String> {
    let disk = bench_disk()?;
    let mut runs_of = Vec::new();
    for (key, protected) in [("blk_read_nonprotected", false), ("blk_read_protected", true)] {
        let run = LinuxRun {
            scenario: "linux".into(),
            kernel: a.image(NamedKernel::Pkvm)?.to_path_buf(),
            initrd: Some(a.initramfs.clone()),
            disk: Some(disk.clone()),
            cmdline: format!("{} pkvm.check=blkread=vda", linux::PKVM_CMDLINE),
            mem_mib: 512,
            vcpus: 1,
            protected,
            mte: true,
            ptrauth: true,
            sve_vl: 0,
            vms: 1,
        };
        println!("xtask: {key} ({HOST_CPUS} host CPU(s), a {} VM of 1 vCPU, {BLK_DISK_MIB} MiB disk)", if protected { "protected" } else { "non-protected" });
        let (machine, _file) = linux::hyp_machine(images, HOST_CPUS, &run, "")?;
        let report = linux::boot(&machine.icount(ICOUNT), Duration::from_secs(600), false)?;
        let (bytes, ns, runs) = report.lines.iter().find_map(|l| parse_blk_line(l)).ok_or(format!("{key}: no PKVM-BLK line (QEMU exit {:?})", report.exit))?;
        if report.exit != Some(0) || bytes != BLK_DISK_MIB << 20 || ns == 0 {
            return Err(format!("{key}: read {bytes} bytes in {ns} ns, QEMU exit {:?}; {:?}", report.exit, report.summaries));
        }
        let kib_s = (bytes as u128 * 1_000_000_000 / 1024 / ns as u128) as u64;
        r.config.insert(key.into(), Config::scheduled(HOST_CPUS, 1));
        r.stats.insert(key.into(), Stats { n: 1, median: kib_s, min: kib_s, max: kib_s });
        r.json_extra.push(format!("\"{key}\": {{\"bytes\": {bytes}, \"ns\": {ns}, \"buffer_runs\": {runs}}}"));
        runs_of.push(runs);
    }
    // The bounce costs per physical segment: only two reads through one physically contiguous
    // buffer each compare the I/O paths rather than where the guest's allocator put the pages.
    let layout = if runs_of.iter().all(|&n| n == 1) { String::new() } else { format!(" (buffers in {runs_of:?} physical runs: not comparable)") };
    if let (Some(p), Some(n)) = (r.stats.get("blk_read_protected"), r.stats.get("blk_read_nonprotected")) {
        let ratio = p.median as f64 / n.median as f64;
        r.verdicts.insert("blk_read_protected".into(), format!("{ratio:.3}x non-protected{layout}"));
        r.verdicts.insert("blk_read_nonprotected".into(), format!("baseline{layout}"));
    }
    Ok(())
}

/// `PKVM-BLK: read N bytes in T ns of CLOCK_MONOTONIC`: (N, T).
fn parse_blk_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.split("PKVM-BLK: read ").nth(1)?;
    let (bytes, rest) = rest.split_once(" bytes in ")?;
    let (ns, rest) = rest.split_once(" ns of CLOCK_MONOTONIC, buffer in ")?;
    let (runs, _) = rest.split_once(" physical runs")?;
    Some((bytes.parse().ok()?, ns.parse().ok()?, runs.parse().ok()?))
}

/// `cargo xtask bench`.
pub fn command(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("bench", args, cli::BENCH_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("bench", cli::BENCH_FLAGS));
        return Ok(());
    }
    let groups: Vec<&str> = match flags.value("--only") {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => GROUPS.to_vec(),
    };
    if let Some(g) = groups.iter().find(|g| !GROUPS.contains(g)) {
        return Err(format!("--only {g:?}: the groups are {}", GROUPS.join(", ")));
    }
    let images = setup().and_then(|tc| build(&tc, Flavour::Release))?;
    run(&images, &groups)?;
    if flags.has("--record") {
        crate::figures::record()?;
    }
    Ok(())
}

/// Runs the benchmarks of `groups` (all by default) and reports them.
pub fn run(images: &Images, groups: &[&str]) -> Result<(), String> {
    let has = |g: &str| groups.contains(&g);
    println!("xtask: running benchmarks ({}) under QEMU -icount (about five minutes for all)", groups.join(", "));
    let mut r = Results { date: utc_now(), commit: commit(), ..Results::default() };
    if has("main") {
        boot(images, "scenario=bench", &mut r)?;
    }
    if has("ptrauth") {
        boot(images, "scenario=bench-ptrauth ptrauth=eager", &mut r)?;
        boot(images, "scenario=bench-ptrauth ptrauth=lazy", &mut r)?;
    }
    if has("irq") {
        irq_rows(images, &mut r)?;
    }
    if has("kut") {
        kut_rows(images, &mut r)?;
    }
    if has("linux") {
        linux_rows(images, &mut r)?;
    }
    if has("blk") {
        blk_rows(images, &linux::artifacts()?, &mut r)?;
    }
    report(&r)
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar: days to a
/// civil date by eras of 400 years).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// The commit the figures are of (`-dirty` with uncommitted changes), or `unknown`.
fn commit() -> String {
    let git = |args: &[&str]| std::process::Command::new("git").args(args).current_dir(root()).output().ok().filter(|o| o.status.success());
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    format!("{}{}", String::from_utf8_lossy(&head.stdout).trim(), if dirty { "-dirty" } else { "" })
}

/// "6.00 exits/op: wfx 2.00, irq 2.00, sgi 2.00 (EL2: ...)": a row's exits per operation.
fn exits_text(exits: &[(String, f64)]) -> String {
    let side = |prefix: &str| -> (f64, String) {
        let items: Vec<(&str, f64)> = exits.iter().filter_map(|(k, n)| Some((k.strip_prefix(prefix)?, *n))).collect();
        (items.iter().map(|(_, n)| n).sum(), items.iter().map(|(k, n)| format!("{k} {n:.2}")).collect::<Vec<_>>().join(", "))
    };
    let ((total, host), (_, el2)) = (side("host."), side("el2."));
    format!("{total:.2} exits/op: {host} (taken to EL2: {el2})")
}

fn report(r: &Results) -> Result<(), String> {
    println!("\nPMU rows: instructions retired by the measuring CPU (-icount shift=0). ns rows: counter time under -icount shift=0,sleep=off,");
    println!("one instruction per ns, every CPU's instructions together (QEMU runs them in turn), idle time skipped.\n");
    println!("| operation | median | min | max | target | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    let mut json = format!(
        "{{\n  \"date\": \"{}\",\n  \"commit\": \"{}\",\n  \"unit\": \"instructions retired (PMU 0x08, QEMU -icount shift=0) unless a row says otherwise\",\n  \"rows\": [\n",
        r.date,
        r.commit
    );
    let plain = r.stats.get("guest_mmio_read").map(|s| s.median);
    for (i, row) in ROWS.iter().enumerate() {
        let s = r.stats.get(row.key);
        let cell = |f: fn(&Stats) -> u64| s.map_or("-".to_string(), |s| f(s).to_string());
        let mut v = verdict(row, s);
        if let (Some(s), Some(p)) = (s, plain) {
            if row.key.starts_with("ptrauth_") || row.key == "guest_mmio_read_fp" || row.key == "guest_mmio_read_mte" || row.key.starts_with("guest_mmio_read_sve") {
                v = format!("{:+} vs plain MMIO read", s.median as i64 - p as i64);
            }
        }
        if let Some(e) = r.exits.get(row.key) {
            v = exits_text(e);
        }
        if let Some(text) = r.verdicts.get(row.key) {
            v = text.clone();
        }
        println!("| {} | {} | {} | {} | {} | {} |", row.operation, cell(|s| s.median), cell(|s| s.min), cell(|s| s.max), row.target_text, v);
        let exits_json = r.exits.get(row.key).map_or(String::new(), |e| {
            format!(", \"exits_per_op\": {{{}}}", e.iter().map(|(k, n)| format!("\"{k}\": {n:.3}")).collect::<Vec<_>>().join(", "))
        });
        let config_json = r.config.get(row.key).map_or(String::new(), |c| format!(", \"config\": {}", c.json()));
        // Measured in this run: when, at which commit (a record may keep older runs' rows).
        let run_json = s.map_or(String::new(), |_| format!(", \"date\": \"{}\", \"commit\": \"{}\"", r.date, r.commit));
        json += &format!(
            "    {{\"key\": \"{}\", \"operation\": \"{}\", \"unit\": \"{}\", \"n\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"target\": \"{}\", \"verdict\": \"{}\"{config_json}{run_json}{exits_json}}}{}\n",
            row.key,
            row.operation,
            row.unit.json(),
            s.map_or(0, |s| s.n),
            cell(|s| s.median).replace('-', "null"),
            cell(|s| s.min).replace('-', "null"),
            cell(|s| s.max).replace('-', "null"),
            row.target_text,
            v,
            if i + 1 < ROWS.len() { "," } else { "" }
        );
    }
    json += "  ]";
    // (6): linear in memory size, with the per-page cost.
    let m = |k: &str| r.stats.get(k).map(|s| s.median as f64);
    if let (Some(a), Some(b), Some(c)) = (m("vm_lifecycle_1mib"), m("vm_lifecycle_16mib"), m("vm_lifecycle_64mib")) {
        let low = (b - a) / (4096.0 - 256.0);
        let high = (c - b) / (16384.0 - 4096.0);
        let fixed = a - 256.0 * low;
        let linear = (low - high).abs() <= 0.05 * low.max(high);
        // Per GiB, from the larger VMs' slope (262,144 pages).
        let per_gib = high * 262_144.0;
        println!(
            "\nVM create + donate + destroy: {:.0} instructions per 4 KiB page (1->16 MiB) and {:.0} (16->64 MiB), fixed part {:.0}: {}; {:.0} million per GiB",
            low,
            high,
            fixed,
            if linear { "linear" } else { "NOT linear" },
            per_gib / 1e6
        );
        json += &format!(",\n  \"vm_lifecycle_per_page\": {low:.1},\n  \"vm_lifecycle_per_page_large\": {high:.1},\n  \"vm_lifecycle_per_gib\": {per_gib:.0},\n  \"vm_lifecycle_fixed\": {fixed:.0},\n  \"vm_lifecycle_linear\": {linear}");
    }
    for extra in &r.json_extra {
        json += &format!(",\n  {extra}");
    }
    json += "\n}\n";
    if !r.exits.is_empty() {
        println!("\nExits per operation: the VM's exit statistics (host: stats at destroy) of a run with n rounds less those of a run");
        println!("with 1 round, divided by n - 1; host.* reached the host (by reason), el2.* were taken to EL2 (by class).");
    }
    for n in &r.notes {
        println!("{n}");
    }
    let path = root().join("target/bench.json");
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\nxtask: figures written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_are_found_anywhere_in_a_line() {
        let (k, s) = parse_bench_line("bench: irq_vtimer_wfi n=1000 median=4000 min=3984 max=9000").unwrap().unwrap();
        assert_eq!((k.as_str(), s), ("irq_vtimer_wfi", Stats { n: 1000, median: 4000, min: 3984, max: 9000 }));
        assert!(parse_bench_line("vm0: bench: k n=1 median=2 min=2 max=2").unwrap().is_some());
        let (_, s) = parse_bench_line("bench: irq_ptimer_wfi n=0050 median=0000024000 min=0000024000 max=0000024000").unwrap().unwrap();
        assert_eq!(s, Stats { n: 50, median: 24000, min: 24000, max: 24000 }, "the interrupt guest's fixed-width figures");
        assert_eq!(parse_bench_line("host: bench: counter read overhead 3 instructions (subtracted)"), Ok(None));
        assert!(parse_bench_line("bench: k n=1 median=x min=2 max=2").is_err());
    }

    #[test]
    fn exit_statistics_line() {
        let line = r#"host: stats {"vm":"0x101","host":{"mmio":12,"wfx":2032,"hypercall":0,"sgi":2033},"el2":{"irq":4065,"wfx":2032,"other":0}}"#;
        let e = parse_stats_line(line).unwrap();
        assert_eq!(e.host, [("mmio".to_string(), 12), ("wfx".into(), 2032), ("hypercall".into(), 0), ("sgi".into(), 2033)]);
        assert_eq!(e.el2, [("irq".to_string(), 4065), ("wfx".into(), 2032), ("other".into(), 0)]);
        assert_eq!(parse_stats_line("host: stats {\"vm\":\"0x1\",\"host\":{\"mmio\":x},\"el2\":{}}"), None);
        assert_eq!(parse_stats_line("host: VM 0x101 exits to the host: mmio 12"), None);
    }

    #[test]
    fn block_read_line() {
        assert_eq!(parse_blk_line("PKVM-BLK: read 67108864 bytes in 123456789 ns of CLOCK_MONOTONIC, buffer in 1 physical runs"), Some((67108864, 123456789, 1)));
        assert_eq!(parse_blk_line("[vm0] PKVM-BLK: read 512 bytes in 7 ns of CLOCK_MONOTONIC, buffer in 0 physical runs"), Some((512, 7, 0)));
        assert_eq!(parse_blk_line("PKVM-BLK: read 512 bytes in 7 ns of CLOCK_MONOTONIC"), None);
        assert_eq!(parse_blk_line("PKVM-BLK: read x bytes in 7 ns of CLOCK_MONOTONIC, buffer in 1 physical runs"), None);
        assert_eq!(parse_blk_line("PKVM-CHECK: ok blkread"), None);
    }

    #[test]
    fn kernel_entry_line() {
        let l = "host: bench: VM 0x101 kernel entry at CNTPCT=5000000 CNTVOFF_EL2=3000000 (virtual count 2000000)";
        assert_eq!(parse_kernel_entry(l), Some((2_000_000, 3_000_000)));
        assert_eq!(parse_kernel_entry("host: bench: VM 0x101 kernel entry at CNTPCT=1 CNTVOFF_EL2=2 (virtual count ...)"), None, "before CNTVOFF");
        assert_eq!(ticks_to_ns(1000, 62_500_000), 16_000);
    }

    #[test]
    fn a_first_touch_row_becomes_a_block_row_and_a_per_page_row() {
        let s = Stats { n: 1000, median: 2, min: 2, max: 30837 };
        let (block, page) = first_touch("guest_first_touch", &s).unwrap();
        assert_eq!((block.as_str(), page.median), ("guest_first_touch_block", 61));
        assert!(first_touch("guest_mmio_read", &s).is_none());
        for k in ["guest_first_touch_block", "guest_first_touch_mte_block"] {
            assert!(ROWS.iter().any(|r| r.key == k));
        }
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_495_775), "2026-12-05T18:36:15Z");
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn every_row_of_a_group_knows_where_it_ran() {
        assert_eq!(main_config("host_null_hvc").vcpus, 0);
        assert_eq!(main_config("guest_first_touch").vcpus, 1);
        assert_eq!(Config::scheduled(1, 2).placement, "host scheduler: vCPUs share the host CPUs");
        assert!(Config::scheduled(2, 2).json().contains("\"host_cpus\": 2, \"vcpus\": 2, \"placement\": \"host scheduler: one vCPU per host CPU\""));
    }

    #[test]
    fn micro_bench_lines() {
        let (name, s) = parse_micro_bench_line("hyp_call                            102642464.0                         1566.0              ").unwrap();
        assert_eq!((name, s.n, s.median, s.min, s.max), ("hyp_call", 65544, 1566, 1566, 1566));
        assert!(parse_micro_bench_line("ipi_hw test skipped").is_none());
        assert!(parse_micro_bench_line("name                                    total ns                         avg ns").is_none());
        assert!(parse_micro_bench_line("Timer Frequency 62500000 Hz (Output in microseconds)").is_none());
        for (_, key) in KUT_ROWS {
            assert!(ROWS.iter().any(|r| r.key == *key && r.unit == Unit::CounterNs && r.target.is_some()), "{key}");
        }
    }

    #[test]
    fn every_irq_row_and_group_is_reported() {
        for row in IRQ_ROWS {
            assert!(ROWS.iter().any(|r| r.key == row.key && r.unit == Unit::CounterNs), "{}", row.key);
            assert!(row.n + IRQ_WARMUP <= 2000, "{}: the guest keeps at most 2000 samples", row.key);
        }
        let guest = std::fs::read_to_string(root().join("tests/guests/src/bin/irqbench.rs")).unwrap();
        assert!(guest.contains(&format!("const WARMUP: usize = {IRQ_WARMUP};")), "IRQ_WARMUP must match the guest");
        for mode in ["\"mmio\"", "\"uart-fr\"", "\"sgi\"", "\"vtimer-wfi\"", "\"vtimer-busy\"", "\"ptimer-wfi\"", "\"ptimer-busy\""] {
            assert!(guest.contains(mode), "{mode}");
        }
    }
}
