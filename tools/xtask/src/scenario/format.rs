//! The scenario file, `tests/scenarios.txt`:
//!
//! ```text
//! [name]                     # runs the host scenario `name`, or `NAME` for [NAME-VARIANT]
//!                            # (names.rs)
//! args = vm=plain            # more /chosen/bootargs for the host (after scenario=NAME)
//! smp = 2                    # CPUs (default 2)
//! ram = 5G                   # the machine's RAM (default: qemu/virt.args's, 2G for Linux)
//! exit = 0                   # expected QEMU exit status (default 0)
//! timeout = 60               # seconds (default 60)
//! expect = some text         # must appear in the output (any number of these)
//! forbid = other text        # must not appear (added to the default forbidden lines)
//! allow = EL2 FATAL          # drop a default forbidden line (for scenarios that provoke it)
//! image = test               # boot the EL2 image with test-only hypercalls (default: release)
//! guest = regs               # the guest image staged for the host (default: demo)
//! icount = on                # run QEMU with -icount shift=0 (exact PMU instruction counts)
//! expect_count = 2 some text  # must appear on exactly 2 lines
//! checks = 12                # the host passes exactly 12 checks (its `host: ok:` lines)
//! default = off              # not in a plain `cargo xtask test`: `--only NAME` or `--all`
//! unknown_scenario = NAME    # boot the host with a scenario name it does not have
//! ```
//!
//! A Linux guest (the host's `linux` scenario, see `linux/mod.rs`) instead of a test guest:
//!
//! ```text
//! kernel = debian            # Debian's kernel, pkvm the project's pKVM guest kernel (both with
//!                            # the project's initramfs), kut:NAME.flat a kvm-unit-tests
//!                            # program (linux/kut.rs: built by setup, no initramfs, an empty
//!                            # command line by default), guest:NAME one of the project's
//!                            # test guests (no command line by default), or a file: an
//!                            # Image, an ELF or a raw image
//! initrd = FILE              # default with debian and pkvm: the project's initramfs
//! disk = FILE                # a disk image behind each VM's virtio-blk (none by default)
//! cmdline = console=...      # the guest's command line (default linux::default_cmdline)
//! mem = 512M                 # memory of each VM (default 512M)
//! vcpus = 2                  # vCPUs of each VM (default 2)
//! vms = 1                    # identical VMs at once (default 1)
//! protected = on             # on or off (default on)
//! mte = on                   # give the VMs MTE (default off)
//! ptrauth = on               # give the VMs pointer authentication (default off)
//! sve = on                   # give the VMs SVE: on (64-byte vectors), off (default), or a
//!                            # vector length in bytes (16 to 256, a multiple of 16)
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
//! warning or error EL2 logs, and any host failure. A run with exit 0 that boots the host must
//! also end with the host's `host: scenario NAME: PASS (N checks)`, N as `checks` says if given.
//! A scenario's checks are then the host's, its expected lines, and QEMU's exit status.

use crate::linux;

#[derive(Debug, Default)]
pub struct Scenario {
    pub name: String,
    /// The host scenario it boots: set from the host's names (`names.rs`).
    pub scenario: String,
    /// A scenario name the host does not have, booted to see the host refuse it.
    pub unknown_scenario: Option<String>,
    pub args: String,
    pub smp: u32,
    /// The machine's RAM in MiB, if not the default.
    pub ram_mib: Option<u32>,
    pub exit: i32,
    pub timeout: u64,
    pub expect: Vec<String>,
    pub forbid: Vec<String>,
    pub allow: Vec<String>,
    pub test_image: bool,
    pub guest: String,
    /// `measure` lines: (vCPUs, MiB, protected) of test VMs of `guest` whose measurement,
    /// computed offline, replaces `{measurement}` (the first), `{measurement2}` (the second)
    /// in expected lines.
    pub measure: Vec<(u32, u64, bool)>,
    pub icount: bool,
    pub expect_count: Vec<(usize, String)>,
    /// The number of checks the host must pass.
    pub checks: Option<usize>,
    /// Console input: once a line containing the first text has appeared, the second is typed
    /// into QEMU's console (with a newline), in order.
    pub input: Vec<(String, String)>,
    /// In a plain `cargo xtask test` (`default = off` clears it).
    pub default: bool,
    pub linux: Option<LinuxKeys>,
}

/// The keys of a Linux scenario, before the files are known.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxKeys {
    pub kernel: String,
    pub initrd: Option<String>,
    pub disk: Option<String>,
    /// `None`: the kernel's default (`linux::default_cmdline`).
    pub cmdline: Option<String>,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub vms: u32,
    pub protected: bool,
    pub mte: bool,
    pub ptrauth: bool,
    /// SVE vector length in bytes, 0 for off.
    pub sve_vl: u64,
    pub bare: bool,
}

impl Default for LinuxKeys {
    fn default() -> Self {
        Self {
            kernel: String::new(),
            initrd: None,
            disk: None,
            cmdline: None,
            mem_mib: 512,
            vcpus: 2,
            vms: 1,
            protected: true,
            mte: false,
            ptrauth: false,
            sve_vl: 0,
            bare: false,
        }
    }
}

const LINUX_KEYS: &[&str] = &["kernel", "initrd", "disk", "cmdline", "mem", "vcpus", "vms", "protected", "mte", "ptrauth", "sve", "bare"];

/// A machine RAM size such as `5G` or `1536M`, in MiB: 1 GiB to 6 GiB, the most EL2's
/// ownership record covers (`MAX_RAM_PAGES` in boot/src/main.rs).
fn parse_ram(v: &str) -> Option<u32> {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let mib = n.parse::<u32>().ok()?.checked_mul(match unit {
        "G" => 1024,
        "M" => 1,
        _ => return None,
    })?;
    (1024..=6144).contains(&mib).then_some(mib)
}

pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
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
                "disk" => l.disk = Some(v.clone()),
                "cmdline" => l.cmdline = Some(v.clone()),
                "mem" => l.mem_mib = linux::limits::parse_mem(&v).map_err(|e| format!("line {}: {e}", n + 1))?,
                "vcpus" => l.vcpus = v.parse().map_err(|_| bad("vcpus"))?,
                "vms" => l.vms = v.parse().map_err(|_| bad("vms"))?,
                "protected" => l.protected = on_off("protected")?,
                "mte" => l.mte = on_off("mte")?,
                "bare" => l.bare = on_off("bare")?,
                "sve" => {
                    l.sve_vl = match v.as_str() {
                        "on" => linux::limits::DEFAULT_SVE_VL,
                        "off" => 0,
                        len => linux::limits::parse_sve_vl(len).map_err(|e| format!("line {}: {e}", n + 1))?,
                    }
                }
                _ => l.ptrauth = on_off("ptrauth")?,
            }
            continue;
        }
        match k {
            "args" if v.split_whitespace().any(|w| w.starts_with("scenario=")) => {
                return Err(format!("line {}: no scenario= in args: the section's name is the host scenario's", n + 1))
            }
            "args" => s.args = v,
            "unknown_scenario" => s.unknown_scenario = Some(v),
            "smp" => s.smp = v.parse().map_err(|_| bad("smp"))?,
            "ram" => s.ram_mib = Some(parse_ram(&v).ok_or_else(|| bad("ram (e.g. 5G or 1536M, 1G to 6G: what EL2's ownership record covers)"))?),
            "exit" => s.exit = v.parse().map_err(|_| bad("exit"))?,
            "timeout" => s.timeout = v.parse().map_err(|_| bad("timeout"))?,
            "expect" => s.expect.push(v),
            "forbid" => s.forbid.push(v),
            "allow" => s.allow.push(v),
            "guest" => s.guest = v,
            "measure" => {
                // `VCPUS MIB protected|plain`: `{measurement}` in an expected line is the test
                // VM's measurement, computed offline (`cargo xtask measure`).
                let w: Vec<&str> = v.split_whitespace().collect();
                let (Some(vcpus), Some(mib), Some(kind)) = (w.first().and_then(|x| x.parse().ok()), w.get(1).and_then(|x| x.parse().ok()), w.get(2)) else {
                    return Err(bad("measure (VCPUS MIB protected|plain)"));
                };
                let protected = match *kind {
                    "protected" => true,
                    "plain" => false,
                    _ => return Err(bad("measure (VCPUS MIB protected|plain)")),
                };
                s.measure.push((vcpus, mib, protected));
            }
            "checks" => s.checks = Some(v.parse().map_err(|_| bad("checks"))?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root;
    use crate::scenario::runner::linux_run;

    #[test]
    fn parses_scenarios_and_defaults() {
        let s = parse("# c\n[a]\nargs = vm=plain\nexpect = hello = world\n[b]\nsmp = 1\nexit = 1\nimage = test\nallow = X\nunknown_scenario = z\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].args, "vm=plain");
        assert_eq!((s[0].unknown_scenario.as_deref(), s[1].unknown_scenario.as_deref()), (None, Some("z")));
        assert_eq!(s[0].expect, vec!["hello = world"]);
        assert_eq!((s[0].smp, s[0].exit, s[0].timeout), (2, 0, 60));
        assert_eq!((s[1].smp, s[1].exit), (1, 1));
        assert!(s[1].test_image && !s[0].test_image);
        assert_eq!(s[1].allow, vec!["X"]);
        assert_eq!(s[0].ram_mib, None);
    }

    #[test]
    fn machine_ram_is_checked() {
        assert_eq!(parse("[a]\nram = 5G\n").unwrap()[0].ram_mib, Some(5120));
        assert_eq!(parse("[a]\nram = 1536M\n").unwrap()[0].ram_mib, Some(1536));
        for bad in ["7G", "512M", "5", "G", "5T", "-1G", "99999999999G"] {
            assert!(parse(&format!("[a]\nram = {bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(parse("args = x\n").is_err());
        assert!(parse("[a]\nnonsense\n").is_err());
        assert!(parse("[a]\nsmp = two\n").is_err());
        assert!(parse("[a]\ncolour = red\n").is_err());
        assert!(parse("[a]\nimage = debug\n").is_err());
        assert!(parse("[a]\nchecks = some\n").is_err());
        assert_eq!(parse("[a]\nchecks = 12\n").unwrap()[0].checks, Some(12));
        assert!(parse("[a]\nargs = seed=1 scenario=b\n").unwrap_err().contains("no scenario= in args"));
    }

    #[test]
    fn parses_linux_scenarios() {
        let s = parse("[l]\ndefault = off\nkernel = debian\nmem = 1G\nvms = 2\nprotected = off\nmte = on\ncmdline = console=ttyAMA0 pkvm.check=cpus=2\nexpect_count = 2 PKVM-CHECK: passed 1/1\n[plain]\nexpect = x\n").unwrap();
        let l = s[0].linux.as_ref().unwrap();
        assert_eq!((l.kernel.as_str(), l.mem_mib, l.vms, l.vcpus, l.protected, l.mte, l.ptrauth), ("debian", 1024, 2, 2, false, true, false));
        assert_eq!(l.sve_vl, 0, "SVE off by default");
        assert_eq!(l.cmdline.as_deref(), Some("console=ttyAMA0 pkvm.check=cpus=2"));
        assert_eq!(s[0].expect_count, vec![(2, "PKVM-CHECK: passed 1/1".to_string())]);
        assert!(!s[0].default && s[1].default && s[1].linux.is_none());
        let run = linux_run(l, None);
        assert!(run.unwrap_err().contains("no Debian kernel"));
        let sve = |v: &str| parse(&format!("[s]\nkernel = debian\nsve = {v}\n")).map(|s| s[0].linux.as_ref().unwrap().sve_vl);
        assert_eq!((sve("on"), sve("off"), sve("32")), (Ok(64), Ok(0), Ok(32)));
        assert!(sve("24").unwrap_err().contains("line 3"), "not an SVE length");
        assert!(sve("yes").is_err());
        let on = linux_run(&LinuxKeys { kernel: "my/Image".into(), sve_vl: 64, ..l.clone() }, None).unwrap();
        assert_eq!(on.sve_vl, 64, "to the run, its boot arguments and its measurement");
        let file = linux_run(&LinuxKeys { kernel: "my/Image".into(), ..l.clone() }, None).unwrap();
        assert_eq!((file.kernel, file.initrd, file.protected), (root().join("my/Image"), None, false));
        assert!(linux_run(&LinuxKeys { kernel: "pkvm".into(), ..l.clone() }, None).unwrap_err().contains("kernel = pkvm"));
        // Without a cmdline line, the kernel's default: no earlycon for the pKVM guest kernel.
        let s = parse("[a]\nkernel = my/Image\n[b]\nkernel = pkvm\n").unwrap();
        assert_eq!(linux_run(s[0].linux.as_ref().unwrap(), None).unwrap().cmdline, linux::DEFAULT_CMDLINE);
        assert_eq!(linux::default_cmdline("pkvm"), linux::PKVM_CMDLINE);
        assert!(!linux::PKVM_CMDLINE.contains("earlycon"));
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
            let cmdline_len = l.cmdline.as_deref().unwrap_or(linux::default_cmdline(&l.kernel)).len();
            linux::limits::check_limits(1, Some(1), cmdline_len, l.mem_mib, l.vcpus, l.vms).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            if linux::kut::program_name(&l.kernel).is_some() {
                // A kvm-unit-tests program: its verdict line, exactly (STATUS=1 is also the
                // start of STATUS=127, an abort), no failed check, and every check of its
                // run counted: its SUMMARY line as bare QEMU prints it, a skip bare QEMU does
                // not make forbidden.
                let has = |v: &[String], t: &str| v.iter().any(|e| e == t);
                assert!(has(&s.expect, "EXIT: STATUS=1") && has(&s.forbid, "EXIT: STATUS=127") && has(&s.forbid, "FAIL:"), "{}: the kvm-unit-tests verdict", s.name);
                let summary = s.expect.iter().find(|e| e.starts_with("SUMMARY: ")).unwrap_or_else(|| panic!("{}: no SUMMARY line expected", s.name));
                assert!(summary.contains("skipped") || has(&s.forbid, "SKIP:"), "{}: a skip would pass unseen", s.name);
                assert_eq!(s.checks, Some(3), "{}: the host's checks of a Linux VM", s.name);
                continue;
            }
            let Some(named) = linux::NamedKernel::parse(&l.kernel) else {
                // A test guest on the VMM (the demo, the benchmarks' interrupt guest): no userspace.
                assert!(linux::guest_name(&l.kernel).is_some(), "{}: a kernel other than debian, pkvm or kut:NAME is a test guest (guest:NAME)", s.name);
                continue;
            };
            // Checks from the command line, or typed into the console.
            let cmdline = l.cmdline.as_deref().unwrap_or(linux::default_cmdline(&l.kernel));
            assert!(cmdline.contains("pkvm.check=") || s.input.iter().any(|(_, t)| t.contains("pkvm-check")), "{}: checks nothing", s.name);
            // The pKVM guest kernel must not use earlycon (linux::PKVM_CMDLINE says why).
            assert!(named != linux::NamedKernel::Pkvm || !cmdline.contains("earlycon"), "{}: earlycon with kernel = pkvm", s.name);
            assert!(s.expect.iter().chain(s.expect_count.iter().map(|e| &e.1)).any(|e| e.contains("PKVM-CHECK: passed")), "{}", s.name);
        }
    }

    #[test]
    fn the_bundled_scenario_file_parses() {
        let text = std::fs::read_to_string(root().join("tests/scenarios.txt")).unwrap();
        let s = parse(&text).unwrap();
        assert!(s.len() >= 4);
        for s in s.iter().filter(|s| s.default) {
            assert!(!s.expect.is_empty() || s.checks.is_some_and(|n| n > 0), "{}: checks nothing", s.name);
            let boots_host = s.exit == 0 && s.linux.as_ref().is_none_or(|l| !l.bare);
            assert!(!boots_host || s.checks.is_some(), "{}: no checks = N for the host's checks", s.name);
        }
    }
}
