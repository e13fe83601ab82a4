//! The QEMU scenario runner: boots the real images, captures the serial console, and checks
//! expected lines, forbidden lines and QEMU's exit status, with a timeout.
//!
//! Scenarios are data, in `tests/scenarios.txt`:
//!
//! ```text
//! [name]
//! args = scenario=smp        # /chosen/bootargs for the host
//! smp = 2                    # CPUs (default 2)
//! exit = 0                   # expected QEMU exit status (default 0)
//! timeout = 60               # seconds (default 60)
//! expect = some text         # must appear in the output (any number of these)
//! forbid = other text        # must not appear (added to the default forbidden lines)
//! allow = EL2 FATAL          # drop a default forbidden line (for scenarios that provoke it)
//! image = test               # boot the EL2 image with test-only hypercalls (default: release)
//! guest = regs               # the guest image staged for the host (default: demo)
//! icount = on                # run QEMU with -icount shift=0 (exact PMU instruction counts)
//! expect_count = 2 some text  # must appear on exactly 2 lines
//! default = off              # not in a plain `cargo xtask test`: `--only NAME` or `--all`
//! ```
//!
//! A Linux guest (the host's `linux` scenario, see `linux.rs`) instead of a test guest:
//!
//! ```text
//! kernel = debian            # Debian's kernel (with the project's initramfs), or an Image file
//! initrd = FILE              # default with debian: the project's initramfs
//! cmdline = console=...      # the guest's command line (default linux::DEFAULT_CMDLINE)
//! mem = 512M                 # memory of each VM (default 512M)
//! vcpus = 2                  # vCPUs of each VM (default 2)
//! vms = 1                    # identical VMs at once (default 1)
//! protected = on             # on or off (default on)
//! mte = on                   # give the VMs MTE (default off)
//! ptrauth = on               # give the VMs pointer authentication (default off)
//! bare = on                  # no hypervisor: the same guest on bare QEMU at EL1 with `smp`
//!                            # CPUs (the baseline that proves the guest's checks right)
//! ```
//!
//! `args` then adds to the host's boot arguments. If the Linux artifacts are missing and
//! `XTASK_LINUX_OPTIONAL=1` (see `linux::OPTIONAL_ENV`), Linux scenarios are skipped, not failed.
//!
//! `{seed}` in `args` and `expect` lines becomes a fresh random number on every run, printed so
//! that a failure can be replayed.
//!
//! Default forbidden lines (unless `exit` is non-zero): anything EL2 reports as fatal, any
//! warning or error EL2 logs, and any host failure.

use crate::linux::{self, LinuxRun};
use crate::qemu;
use crate::{elf_symbol, qemu_machine, root, Images};
use shared_abi::layout::run_status;
use shared_abi::msg::exit;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const DEFAULT_FORBID: &[&str] = &["EL2 FATAL", "EL2 PANIC", "] WARN", "] ERROR", "host: FAIL"];

#[derive(Debug, Default)]
struct Scenario {
    name: String,
    args: String,
    smp: u32,
    exit: i32,
    timeout: u64,
    expect: Vec<String>,
    forbid: Vec<String>,
    allow: Vec<String>,
    test_image: bool,
    guest: String,
    icount: bool,
    expect_count: Vec<(usize, String)>,
    /// Console input: once a line containing the first text has appeared, the second is typed
    /// into QEMU's console (with a newline), in order.
    input: Vec<(String, String)>,
    /// In a plain `cargo xtask test` (`default = off` clears it).
    default: bool,
    linux: Option<LinuxKeys>,
}

/// The keys of a Linux scenario, before the files are known.
#[derive(Debug, Clone, PartialEq)]
struct LinuxKeys {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    mem_mib: u32,
    vcpus: u32,
    vms: u32,
    protected: bool,
    mte: bool,
    ptrauth: bool,
    bare: bool,
}

impl Default for LinuxKeys {
    fn default() -> Self {
        Self {
            kernel: String::new(),
            initrd: None,
            cmdline: linux::DEFAULT_CMDLINE.into(),
            mem_mib: 512,
            vcpus: 2,
            vms: 1,
            protected: true,
            mte: false,
            ptrauth: false,
            bare: false,
        }
    }
}

const LINUX_KEYS: &[&str] = &["kernel", "initrd", "cmdline", "mem", "vcpus", "vms", "protected", "mte", "ptrauth", "bare"];

fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let mut out: Vec<Scenario> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push(Scenario { name: name.into(), smp: 2, timeout: 60, guest: "demo".into(), default: true, ..Default::default() });
            continue;
        }
        let s = out.last_mut().ok_or(format!("line {}: setting before any [scenario]", n + 1))?;
        let (k, v) = line.split_once('=').ok_or(format!("line {}: expected key = value", n + 1))?;
        let v = v.trim().to_string();
        let bad = |what: &str| format!("line {}: bad {what}", n + 1);
        let on_off = |what: &str| match v.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(bad(&format!("{what} (on or off)"))),
        };
        let k = k.trim();
        if LINUX_KEYS.contains(&k) {
            if k != "kernel" && s.linux.is_none() {
                return Err(format!("line {}: {k} is for a Linux scenario: put kernel = ... first", n + 1));
            }
            let l = s.linux.get_or_insert_with(LinuxKeys::default);
            match k {
                "kernel" => l.kernel = v.clone(),
                "initrd" => l.initrd = Some(v.clone()),
                "cmdline" => l.cmdline = v.clone(),
                "mem" => l.mem_mib = linux::parse_mem(&v).map_err(|e| format!("line {}: {e}", n + 1))?,
                "vcpus" => l.vcpus = v.parse().map_err(|_| bad("vcpus"))?,
                "vms" => l.vms = v.parse().map_err(|_| bad("vms"))?,
                "protected" => l.protected = on_off("protected")?,
                "mte" => l.mte = on_off("mte")?,
                "bare" => l.bare = on_off("bare")?,
                _ => l.ptrauth = on_off("ptrauth")?,
            }
            continue;
        }
        match k {
            "args" => s.args = v,
            "smp" => s.smp = v.parse().map_err(|_| bad("smp"))?,
            "exit" => s.exit = v.parse().map_err(|_| bad("exit"))?,
            "timeout" => s.timeout = v.parse().map_err(|_| bad("timeout"))?,
            "expect" => s.expect.push(v),
            "forbid" => s.forbid.push(v),
            "allow" => s.allow.push(v),
            "guest" => s.guest = v,
            "icount" => s.icount = v == "on",
            "default" => s.default = on_off("default")?,
            "input" => {
                let (after, text) = v.split_once("=>").ok_or(bad("input (TEXT SEEN => TEXT TO TYPE)"))?;
                s.input.push((after.trim().to_string(), text.trim().to_string()));
            }
            "expect_count" => {
                let (count, text) = v.split_once(' ').ok_or(bad("expect_count (N text)"))?;
                s.expect_count.push((count.parse().map_err(|_| bad("expect_count (N text)"))?, text.trim().to_string()));
            }
            "image" => {
                s.test_image = match v.as_str() {
                    "test" => true,
                    "release" => false,
                    _ => return Err(bad("image (release or test)")),
                }
            }
            other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
        }
    }
    Ok(out)
}

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

/// Sends one command to QEMU's human monitor and returns what it printed before the next prompt.
fn monitor_command(mon: &mut UnixStream, cmd: &str) -> String {
    let _ = mon.write_all(format!("{cmd}\n").as_bytes());
    read_to_prompt(mon)
}

fn read_to_prompt(mon: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while !buf.ends_with(b"(qemu) ") {
        match mon.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).replace("\r\n", "\n")
}

/// What each CPU was doing when a scenario timed out: its PC and exception level (from QEMU's
/// monitor) and, from the host's run-status table, the VM and vCPU it last ran and that run's
/// last exit. A hang then explains itself.
fn timeout_report(monitor: &Path, host_elf: &Path, cpus: u32) -> String {
    let mut mon = match UnixStream::connect(monitor) {
        Ok(m) => m,
        Err(e) => return format!("    (no timeout report: QEMU monitor {}: {e})", monitor.display()),
    };
    let _ = mon.set_read_timeout(Some(Duration::from_secs(5)));
    read_to_prompt(&mut mon);
    let regs = monitor_command(&mut mon, "info registers -a");
    let table = elf_symbol(host_elf, run_status::SYMBOL).map(|addr| {
        let words = run_status::CPUS * run_status::WORDS;
        parse_xp(&monitor_command(&mut mon, &format!("xp /{words}gx {addr:#x}")))
    });
    let mut out = String::from("    timeout report (QEMU monitor; host run-status table):");
    for cpu in 0..cpus as usize {
        let (pc, el) = cpu_state(&regs, cpu);
        out += &format!("\n    cpu{cpu}: PC={pc} {el}");
        match &table {
            Some(t) if t.len() >= (cpu + 1) * run_status::WORDS => out += &describe_row(&t[cpu * run_status::WORDS..][..run_status::WORDS]),
            _ => out += "; host run-status table unreadable",
        }
    }
    out
}

/// The PC and `PSTATE` mode (e.g. `EL1h`) of `cpu` in `info registers -a` output.
fn cpu_state(regs: &str, cpu: usize) -> (String, String) {
    let Some(block) = regs.split(&format!("CPU#{cpu}\n")).nth(1) else { return ("?".into(), "?".into()) };
    let block = block.split("\nCPU#").next().unwrap_or("");
    let pc = block.split("PC=").nth(1).and_then(|r| r.split_whitespace().next()).map_or("?".into(), |p| format!("0x{}", p.trim_start_matches('0')));
    let el = block
        .split("PSTATE=")
        .nth(1)
        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("EL") || w.starts_with("usr") || w.starts_with("svc")))
        .unwrap_or("?")
        .to_string();
    (pc, el)
}

/// The values of an `xp /Ngx` dump, in order.
fn parse_xp(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(a, _)| a.trim().chars().all(|c| c.is_ascii_hexdigit()) && !a.trim().is_empty())
        .flat_map(|(_, v)| v.split_whitespace().filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok()).collect::<Vec<_>>())
        .collect()
}

/// One CPU's row of the host's run-status table, in words.
fn describe_row(row: &[u64]) -> String {
    use run_status::*;
    if row[VM] == 0 {
        return "; the host has run no vCPU on this CPU".into();
    }
    let last = match row[LAST_EXIT] {
        0 => "none yet".to_string(),
        u64::MAX => format!("VCPU_RUN error {}", row[LAST_DATA] as i64),
        r => format!("{} (ipa {:#x}, data {:#x})", exit::name(r as u32), row[LAST_IPA], row[LAST_DATA]),
    };
    let state = if row[IN_RUN] == 1 { "inside VCPU_RUN (guest or EL2)" } else { "in the host, handling an exit" };
    format!("; VM {:#x} vCPU {}, {state}, run {}; last exit: {last}", row[VM], row[VCPU], row[RUNS])
}

/// The Linux run a scenario's keys describe, with `debian` resolved to the cached artifacts.
fn linux_run(keys: &LinuxKeys, debian: Option<&linux::Artifacts>) -> Result<LinuxRun, String> {
    let debian_or = |what: &str| debian.ok_or(format!("kernel = debian, but {what}"));
    let (kernel, default_initrd) = if keys.kernel == "debian" {
        let a = debian_or("no Debian kernel")?;
        (a.image.clone(), Some(a.initramfs.clone()))
    } else {
        (root().join(&keys.kernel), None)
    };
    Ok(LinuxRun {
        scenario: "linux".into(),
        kernel,
        initrd: keys.initrd.as_ref().map(|i| root().join(i)).or(default_initrd),
        cmdline: keys.cmdline.clone(),
        mem_mib: keys.mem_mib,
        vcpus: keys.vcpus,
        protected: keys.protected,
        mte: keys.mte,
        ptrauth: keys.ptrauth,
        vms: keys.vms,
    })
}

/// Outcome of one scenario: `Err` holds the reason it failed.
fn run_one(images: &Images, s: &Scenario, debian: Option<&linux::Artifacts>, verbose: bool) -> (Result<(), String>, Vec<String>) {
    let seed = fresh_seed();
    if s.args.contains("{seed}") {
        println!("scenario {}: fresh seed {seed} (replay: --args with seed={seed})", s.name);
    }
    let args = s.args.replace("{seed}", &seed.to_string());
    let expect: Vec<String> = s.expect.iter().map(|e| e.replace("{seed}", &seed.to_string())).collect();
    // The command-line file of a Linux run lives until QEMU has exited.
    let mut _cmdline_file = None;
    let machine = match &s.linux {
        Some(keys) if keys.bare => linux_run(&LinuxKeys { vcpus: s.smp, ..keys.clone() }, debian).and_then(|run| run.validate().and_then(|_| linux::bare_machine(&run))),
        Some(keys) => linux_run(keys, debian).and_then(|run| linux::hyp_machine(images, s.smp, &run, &args)).map(|(machine, file)| {
            _cmdline_file = file;
            machine
        }),
        None => images.guest(&s.guest).and_then(|guest| qemu_machine(images, s.smp, &args, &guest)),
    };
    let mut machine = match machine {
        Ok(m) => m,
        Err(e) => return (Err(e), vec![]),
    };
    if s.icount {
        machine = machine.icount("shift=0");
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
    (Ok(()), lines)
}

/// Runs every scenario in the default suite (with `all`, every scenario; or those named in
/// `only`, comma-separated), each `repeat` times in a row, and prints a summary.
pub fn run_all(release: &Images, test_hooks: &Images, only: Option<&str>, all: bool, repeat: u32, verbose: bool) -> Result<(), String> {
    let path = root().join("tests/scenarios.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let scenarios = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let wanted: Option<Vec<&str>> = only.map(|o| o.split(',').map(str::trim).collect());
    if let Some(w) = &wanted {
        if let Some(unknown) = w.iter().find(|n| !scenarios.iter().any(|s| s.name == **n)) {
            let names: Vec<_> = scenarios.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("no scenario named {unknown:?} (there are: {})", names.join(", ")));
        }
    }
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|s| match &wanted {
            Some(w) => w.contains(&s.name.as_str()),
            None => s.default || all,
        })
        .collect();
    let held: Vec<_> = scenarios.iter().filter(|s| !s.default && !selected.iter().any(|x| x.name == s.name)).map(|s| s.name.as_str()).collect();
    let repeat = repeat.max(1);
    println!("xtask: {} QEMU scenarios{}", selected.len(), if repeat > 1 { format!(", each {repeat} times in a row") } else { String::new() });
    if !held.is_empty() {
        println!("xtask: not run by default (default = off; --all or --only runs them): {}", held.join(", "));
    }
    // The Debian kernel and initramfs, made once if a selected scenario boots them.
    let debian = selected
        .iter()
        .any(|s| s.linux.as_ref().is_some_and(|l| l.kernel == "debian"))
        .then(linux::artifacts);
    let optional = std::env::var(linux::OPTIONAL_ENV).is_ok_and(|v| v == "1");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut summary = Vec::new();
    for s in selected {
        let images = if s.test_image { test_hooks } else { release };
        let wants_debian = s.linux.as_ref().is_some_and(|l| l.kernel == "debian");
        if let (true, Some(Err(e))) = (wants_debian, &debian) {
            if optional {
                println!("scenario {} ... skipped: {e} ({}=1)", s.name, linux::OPTIONAL_ENV);
                skipped += repeat.max(1);
                continue;
            }
        }
        let debian = debian.as_ref().and_then(|d| d.as_ref().ok());
        let (mut ok, mut times) = (0u32, Vec::new());
        for run in 1..=repeat {
            let t = Instant::now();
            let (r, lines) = match (&debian, wants_debian) {
                (None, true) => (Err(linux::artifacts().err().unwrap_or_default()), vec![]),
                _ => run_one(images, s, debian, verbose),
            };
            let secs = t.elapsed().as_secs_f64();
            times.push(secs);
            let which = if repeat > 1 { format!(" (run {run}/{repeat})") } else { String::new() };
            match r {
                Ok(()) => {
                    ok += 1;
                    if repeat == 1 || verbose {
                        println!("scenario {}{which} ... ok ({secs:.1} s, {} checks)", s.name, s.expect.len() + 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scenarios_and_defaults() {
        let s = parse("# c\n[a]\nargs = scenario=x\nexpect = hello = world\n[b]\nsmp = 1\nexit = 1\nimage = test\nallow = X\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].args, "scenario=x");
        assert_eq!(s[0].expect, vec!["hello = world"]);
        assert_eq!((s[0].smp, s[0].exit, s[0].timeout), (2, 0, 60));
        assert_eq!((s[1].smp, s[1].exit), (1, 1));
        assert!(s[1].test_image && !s[0].test_image);
        assert_eq!(s[1].allow, vec!["X"]);
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(parse("args = x\n").is_err());
        assert!(parse("[a]\nnonsense\n").is_err());
        assert!(parse("[a]\nsmp = two\n").is_err());
        assert!(parse("[a]\ncolour = red\n").is_err());
        assert!(parse("[a]\nimage = debug\n").is_err());
    }

    #[test]
    fn parses_linux_scenarios() {
        let s = parse("[l]\ndefault = off\nkernel = debian\nmem = 1G\nvms = 2\nprotected = off\nmte = on\ncmdline = console=ttyAMA0 pkvm.check=cpus=2\nexpect_count = 2 PKVM-CHECK: passed 1/1\n[plain]\nexpect = x\n").unwrap();
        let l = s[0].linux.as_ref().unwrap();
        assert_eq!((l.kernel.as_str(), l.mem_mib, l.vms, l.vcpus, l.protected, l.mte, l.ptrauth), ("debian", 1024, 2, 2, false, true, false));
        assert_eq!(l.cmdline, "console=ttyAMA0 pkvm.check=cpus=2");
        assert_eq!(s[0].expect_count, vec![(2, "PKVM-CHECK: passed 1/1".to_string())]);
        assert!(!s[0].default && s[1].default && s[1].linux.is_none());
        let run = linux_run(l, None);
        assert!(run.unwrap_err().contains("no Debian kernel"));
        let file = linux_run(&LinuxKeys { kernel: "my/Image".into(), ..l.clone() }, None).unwrap();
        assert_eq!((file.kernel, file.initrd, file.protected), (root().join("my/Image"), None, false));
    }

    #[test]
    fn rejects_malformed_linux_keys() {
        assert!(parse("[a]\nmem = 512M\n").unwrap_err().contains("put kernel = ... first"));
        assert!(parse("[a]\nkernel = debian\nmem = 512\n").unwrap_err().contains("unit M or G"));
        assert!(parse("[a]\nkernel = debian\nmte = yes\n").unwrap_err().contains("mte (on or off)"));
        assert!(parse("[a]\ndefault = no\n").is_err());
        assert!(parse("[a]\nexpect_count = two x\n").is_err());
        assert!(parse("[a]\nexpect_count = 2\n").is_err());
        assert!(parse("[a]\ninput = no arrow\n").is_err());
        let s = parse("[a]\ninput = login: => root\ninput = # => exit\n").unwrap();
        assert_eq!(s[0].input, vec![("login:".to_string(), "root".to_string()), ("#".to_string(), "exit".to_string())]);
    }

    #[test]
    fn the_bundled_linux_scenarios_are_within_the_limits() {
        let text = std::fs::read_to_string(root().join("tests/scenarios.txt")).unwrap();
        let linux: Vec<_> = parse(&text).unwrap().into_iter().filter(|s| s.linux.is_some()).collect();
        assert!(linux.len() >= 3);
        for s in &linux {
            let l = s.linux.as_ref().unwrap();
            linux::check_limits(1, Some(1), l.cmdline.len(), l.mem_mib, l.vcpus, l.vms).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            if l.kernel != "debian" {
                // A test guest in the Linux VM (the benchmarks' interrupt guest): no userspace.
                assert!(l.kernel.starts_with("target/"), "{}: a kernel other than debian is a built test guest", s.name);
                continue;
            }
            // Checks from the command line, or typed into the console.
            assert!(l.cmdline.contains("pkvm.check=") || s.input.iter().any(|(_, t)| t.contains("pkvm-check")), "{}: checks nothing", s.name);
            assert!(s.expect.iter().chain(s.expect_count.iter().map(|e| &e.1)).any(|e| e.contains("PKVM-CHECK: passed")), "{}", s.name);
        }
    }

    #[test]
    fn reads_the_timeout_report_sources() {
        let regs = "\nCPU#0\n PC=0000000040201184 X00=0\nPSTATE=620003c9 -ZC- EL2h  SVCR=0\n\nCPU#1\n PC=0000000040080010 X00=1\nPSTATE=000003c5 ---- EL1h\n";
        assert_eq!(cpu_state(regs, 0), ("0x40201184".into(), "EL2h".into()));
        assert_eq!(cpu_state(regs, 1), ("0x40080010".into(), "EL1h".into()));
        assert_eq!(cpu_state(regs, 2), ("?".into(), "?".into()));
        let xp = "xp /4gx 0x42001000\n0000000042001000: 0x0000000000000101 0x0000000000000001\n0000000042001010: 0x0000000000000001 0x00000000000003e8\n(qemu) ";
        assert_eq!(parse_xp(xp), vec![0x101, 1, 1, 1000]);
        let row = [0x101, 1, 1, 1000, exit::WFX as u64, 0, 0, 0];
        let d = describe_row(&row);
        assert!(d.contains("VM 0x101 vCPU 1, inside VCPU_RUN") && d.contains("run 1000") && d.contains("last exit: WFx"), "{d}");
        assert!(describe_row(&[0; 8]).contains("no vCPU"));
        let err = [0x101, 0, 0, 3, u64::MAX, 0, (-5i64) as u64, 0];
        assert!(describe_row(&err).contains("VCPU_RUN error -5"));
    }

    #[test]
    fn the_bundled_scenario_file_parses() {
        let text = std::fs::read_to_string(root().join("tests/scenarios.txt")).unwrap();
        let s = parse(&text).unwrap();
        assert!(s.len() >= 4);
        assert!(s.iter().all(|s| !s.expect.is_empty()), "every scenario checks something");
    }
}
