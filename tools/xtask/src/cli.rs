//! Command-line flags of `cargo xtask run`, `test`, `linux-bare` and `bench`: every flag is
//! declared once with its help, unknown flags are errors, and limits are checked before QEMU
//! starts. `lexopt` splits the arguments.

/// One flag: its name, the name of its value (`None` for a switch) and what it does.
pub struct Flag {
    pub name: &'static str,
    pub value: Option<&'static str>,
    pub help: &'static str,
}

/// The flags `run` takes.
pub const RUN_FLAGS: &[Flag] = &[
    Flag { name: "--guest", value: Some("NAME|PATH"), help: "a test guest instead of a Linux kernel: a bundled guest or a file (ELF, or a raw image loaded at RAM + 0x80000); with --scenario, the image staged for that host scenario; default demo" },
    Flag { name: "--kernel", value: Some("FILE|debian|pkvm|kut:NAME.flat"), help: "boot a Linux arm64 Image, or a raw image loaded at RAM + 0x80000 (at most 60 MiB), as the guest instead; `debian` is Debian's cloud kernel that setup fetched, `pkvm` the project's pKVM guest kernel that setup built, `kut:NAME.flat` a kvm-unit-tests program that setup built" },
    Flag { name: "--initrd", value: Some("FILE"), help: "the Linux guest's initrd, at most 64 MiB; default with --kernel debian or pkvm: the project's initramfs (tests/linux)" },
    Flag { name: "--disk", value: Some("FILE"), help: "a disk image (whole 512-byte sectors, at most 256 MiB) behind each Linux VM's virtio-blk; writes stay in memory for the run" },
    Flag { name: "--cmdline", value: Some("\"...\""), help: "the Linux guest's command line, at most 4095 bytes; default \"console=ttyAMA0 earlycon=pl011,0x09000000 panic=-1\" (with --kernel pkvm: without earlycon; with kut:NAME.flat: none, every word is the test's argument)" },
    Flag { name: "--mem", value: Some("SIZE"), help: "memory of each VM, 64M to 1536M (e.g. 512M, 1G), at most 1536M for all VMs; default 512M with --kernel, 64M with a test guest" },
    Flag { name: "--vms", value: Some("N"), help: "identical Linux VMs run at once, 1 or 2; default 1" },
    Flag { name: "--vcpus", value: Some("N"), help: "vCPUs of each VM, 1 to 8; default 2" },
    Flag { name: "--protected", value: None, help: "a protected VM (the default)" },
    Flag { name: "--non-protected", value: None, help: "a non-protected VM (memory shared with the host) instead of a protected one" },
    Flag { name: "--mte", value: None, help: "give the Linux VM MTE" },
    Flag { name: "--ptrauth", value: None, help: "give the Linux VM pointer authentication" },
    Flag { name: "--sve", value: None, help: "give the Linux VM SVE with 512-bit vectors (64 bytes)" },
    Flag { name: "--sve-vl", value: Some("BYTES"), help: "give the Linux VM SVE with this vector length: a multiple of 16 from 16 to 256 that every CPU gives (EL2 refuses others)" },
    Flag { name: "--smp", value: Some("N"), help: "host CPUs, 1 to 8; default 2" },
    Flag { name: "--scenario", value: Some("NAME"), help: "a host scenario to run instead (README, \"Commands\"), with --guest staged for it; default: linux, the host's VMM booting the guest" },
    Flag { name: "--args", value: Some("\"K=V ...\""), help: "more host boot arguments (e.g. \"seed=7 calls=1000000\" for the hostile host)" },
    Flag { name: "--test-image", value: None, help: "boot the EL2 image built with the test-only hypercalls" },
    Flag { name: "--gdb", value: None, help: "wait for gdb-multiarch on :1234 before starting" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The flags of `run` that only a guest the host's VMM boots takes (not a host scenario's).
pub const LINUX_ONLY_FLAGS: &[&str] = &["--initrd", "--disk", "--cmdline", "--mem", "--vms", "--protected", "--mte", "--ptrauth", "--sve", "--sve-vl"];

/// The flags `test` takes.
pub const TEST_FLAGS: &[Flag] = &[
    Flag { name: "--no-unit", value: None, help: "skip the host unit tests" },
    Flag { name: "--only", value: Some("NAME[,NAME...]"), help: "only these scenarios of tests/scenarios.txt (those marked default = off too)" },
    Flag { name: "--all", value: None, help: "also the scenarios marked default = off (the Linux guests)" },
    Flag { name: "--repeat", value: Some("N"), help: "run each scenario N times in a row (1 to 1000)" },
    Flag { name: "--verbose", value: None, help: "show every console line" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The flags `linux-bare` takes.
pub const LINUX_BARE_FLAGS: &[Flag] = &[
    Flag { name: "--smp", value: Some("N"), help: "CPUs, 1 to 8; default 2" },
    Flag { name: "--mem", value: Some("SIZE"), help: "memory, 64M to 1536M; default 512M" },
    Flag { name: "--mte", value: None, help: "MTE on (machine mte=on); default off" },
    Flag { name: "--checks", value: Some("LIST"), help: "the pkvm.check= list; default cpus=N,cpuinfo,mte,pac,timer (without --mte: cpuinfo=paca+pacg+no-mte, no mte)" },
    Flag { name: "--icount", value: None, help: "run under -icount shift=0,sleep=off and report the guest counter at the first userspace line (instructions)" },
    Flag { name: "--timeout", value: Some("SECONDS"), help: "give up after this long; default 240" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The flags `measure` takes.
pub const MEASURE_FLAGS: &[Flag] = &[
    Flag { name: "--guest", value: Some("NAME|PATH"), help: "the test guest (default: demo)" },
    Flag { name: "--kernel", value: Some("FILE|debian|pkvm|kut:NAME.flat"), help: "a Linux VM's kernel instead: an Image, or a raw image (as run --kernel lays it out)" },
    Flag { name: "--initrd", value: Some("FILE"), help: "with --kernel: the initramfs (debian, pkvm: the project's)" },
    Flag { name: "--cmdline", value: Some("\"...\""), help: "with --kernel: the command line (as run's default)" },
    Flag { name: "--disk", value: Some("FILE"), help: "with --kernel: the VM has a disk (its virtio-blk transport is in the measured device tree; the disk's content is not measured)" },
    Flag { name: "--mem", value: Some("SIZE"), help: "RAM, as run's --mem; default 512M with --kernel, 16M with a test guest" },
    Flag { name: "--mte", value: None, help: "with --kernel: an MTE VM" },
    Flag { name: "--ptrauth", value: None, help: "with --kernel: a VM with pointer authentication" },
    Flag { name: "--sve", value: None, help: "with --kernel: a VM with SVE of 64-byte vectors (its length is measured)" },
    Flag { name: "--sve-vl", value: Some("BYTES"), help: "with --kernel: a VM with SVE of this vector length" },
    Flag { name: "--vcpus", value: Some("N"), help: "vCPUs, 1 to 8; default 1 (2 with --kernel)" },
    Flag { name: "--non-protected", value: None, help: "the VM is not protected (its flags are measured)" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The flags `bench` takes.
pub const BENCH_FLAGS: &[Flag] = &[
    Flag { name: "--only", value: Some("GROUP[,GROUP...]"), help: "only these groups: main, ptrauth (PMU rows), irq (interrupt guest), kut (kvm-unit-tests micro-bench on 2 CPUs), linux (boot ratio), blk (virtio-blk throughput); default all" },
    Flag { name: "--record", value: None, help: "record the rows this run measured in docs/bench.json (replacing those rows, keeping the others) and write README.md's table from it" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The parsed flags: `(name, value)` in order, a switch with `None`.
#[derive(Debug, Default)]
pub struct Parsed(Vec<(&'static str, Option<String>)>);

impl Parsed {
    /// The SVE vector length `--sve` (64 bytes) or `--sve-vl BYTES` asks for, 0 for neither.
    pub fn sve_vl(&self) -> Result<u64, String> {
        match self.value("--sve-vl") {
            Some(v) => crate::linux::limits::parse_sve_vl(v),
            None if self.has("--sve") => Ok(crate::linux::limits::DEFAULT_SVE_VL),
            None => Ok(0),
        }
    }

    /// The value of `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_deref())
    }

    /// Whether `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }

    /// The number given to `name` (default `default`), which must lie in `range`.
    pub fn number(&self, name: &str, default: u32, range: core::ops::RangeInclusive<u32>) -> Result<u32, String> {
        let Some(v) = self.value(name) else { return Ok(default) };
        let n: u32 = v.parse().map_err(|_| format!("{name} takes a number, not {v:?}"))?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(format!("{name} {n}: the limit is {} to {}", range.start(), range.end()))
        }
    }
}

/// Parses `args` against `flags` (`--flag value` or `--flag=value`). Unknown flags, stray
/// words and missing values are errors.
pub fn parse(command: &str, args: &[String], flags: &[Flag]) -> Result<Parsed, String> {
    let unknown = |what: &str, arg: &str| format!("unknown {what} {arg:?} (cargo xtask {command} --help lists the flags)");
    let mut out = Parsed::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let name = match arg {
            lexopt::Arg::Long(name) => format!("--{name}"),
            lexopt::Arg::Short(c) => return Err(unknown("flag", &format!("-{c}"))),
            lexopt::Arg::Value(word) => return Err(unknown("word", &word.to_string_lossy())),
        };
        let Some(f) = flags.iter().find(|f| f.name == name) else { return Err(unknown("flag", &name)) };
        let value = match f.value {
            Some(what) => {
                let v = parser.value().map_err(|_| format!("{} needs a value: {what}", f.name))?;
                Some(v.into_string().map_err(|v| format!("{} {v:?}: not UTF-8", f.name))?)
            }
            None => None,
        };
        out.0.push((f.name, value));
    }
    Ok(out)
}

/// The help text for `command`.
pub fn help(command: &str, flags: &[Flag]) -> String {
    let mut s = format!("usage: cargo xtask {command} [FLAGS]\n");
    for f in flags {
        let left = match f.value {
            Some(v) => format!("{} {v}", f.name),
            None => f.name.to_string(),
        };
        s += &format!("  {left:<28} {}\n", f.help);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_flags_and_missing_values_are_errors() {
        let e = parse("run", &args(&["--bogus"]), RUN_FLAGS).unwrap_err();
        assert!(e.contains("unknown flag \"--bogus\"") && e.contains("--help"), "{e}");
        assert!(parse("run", &args(&["demo"]), RUN_FLAGS).unwrap_err().contains("unknown word"));
        assert!(parse("run", &args(&["--vcpus"]), RUN_FLAGS).unwrap_err().contains("--vcpus needs a value"));
        assert!(parse("test", &args(&["--guest", "x"]), TEST_FLAGS).is_err(), "run's flags are not test's");
        assert!(parse("run", &args(&["-g"]), RUN_FLAGS).unwrap_err().contains("unknown flag \"-g\""));
        assert!(parse("run", &args(&["--gdb=yes"]), RUN_FLAGS).is_err(), "a switch takes no value");
    }

    #[test]
    fn limits_are_checked_and_named() {
        let p = parse("run", &args(&["--vcpus", "99", "--smp", "two"]), RUN_FLAGS).unwrap();
        assert_eq!(p.number("--vcpus", 2, 1..=8).unwrap_err(), "--vcpus 99: the limit is 1 to 8");
        assert!(p.number("--smp", 2, 1..=8).unwrap_err().contains("takes a number"));
        let p = parse("run", &args(&["--non-protected", "--vcpus", "1", "--args", "a=1 b=2"]), RUN_FLAGS).unwrap();
        assert!(p.has("--non-protected") && !p.has("--gdb"));
        assert_eq!(p.number("--vcpus", 2, 1..=8), Ok(1));
        assert_eq!(p.number("--smp", 2, 1..=8), Ok(2), "default");
        assert_eq!(p.value("--args"), Some("a=1 b=2"));
        let p = parse("run", &args(&["--vcpus=3", "--args", "--not-a-flag"]), RUN_FLAGS).unwrap();
        assert_eq!(p.number("--vcpus", 2, 1..=8), Ok(3));
        assert_eq!(p.value("--args"), Some("--not-a-flag"), "a value may start with dashes");
    }

    #[test]
    fn linux_only_flags_are_run_flags() {
        for f in LINUX_ONLY_FLAGS {
            assert!(RUN_FLAGS.iter().any(|r| r.name == *f), "{f}");
        }
    }

    #[test]
    fn help_lists_every_flag() {
        for (cmd, flags) in [("run", RUN_FLAGS), ("test", TEST_FLAGS), ("linux-bare", LINUX_BARE_FLAGS), ("bench", BENCH_FLAGS)] {
            let h = help(cmd, flags);
            assert!(flags.iter().all(|f| h.contains(f.name)), "{h}");
        }
    }
}
