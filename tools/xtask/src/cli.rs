//! Command-line flags of `cargo xtask run` and `cargo xtask test`: every flag is declared once
//! with its help, unknown flags are errors, and limits are checked before QEMU starts.

/// One flag: its name, the name of its value (`None` for a switch) and what it does.
pub struct Flag {
    pub name: &'static str,
    pub value: Option<&'static str>,
    pub help: &'static str,
}

/// The flags `run` takes.
pub const RUN_FLAGS: &[Flag] = &[
    Flag { name: "--guest", value: Some("NAME|PATH"), help: "the guest image: a bundled guest or a file (ELF, or a raw image such as a Linux Image, loaded at RAM + 0x80000); default demo" },
    Flag { name: "--vcpus", value: Some("N"), help: "vCPUs of the VM, 1 to 8 and at most --smp (the demo runs one vCPU per host CPU); default 2" },
    Flag { name: "--non-protected", value: None, help: "a non-protected VM (memory shared with the host) instead of a protected one" },
    Flag { name: "--smp", value: Some("N"), help: "host CPUs, 1 to 8; default 2" },
    Flag { name: "--scenario", value: Some("NAME"), help: "the host scenario to run (README, \"Commands\"); default demo" },
    Flag { name: "--args", value: Some("\"K=V ...\""), help: "more host boot arguments (e.g. \"seed=7 calls=1000000\" for the hostile host)" },
    Flag { name: "--test-image", value: None, help: "boot the EL2 image built with the test-only hypercalls" },
    Flag { name: "--gdb", value: None, help: "wait for gdb-multiarch on :1234 before starting" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The flags `test` takes.
pub const TEST_FLAGS: &[Flag] = &[
    Flag { name: "--no-unit", value: None, help: "skip the host unit tests" },
    Flag { name: "--only", value: Some("NAME[,NAME...]"), help: "only these scenarios of tests/scenarios.txt" },
    Flag { name: "--repeat", value: Some("N"), help: "run each scenario N times in a row (1 to 1000)" },
    Flag { name: "--verbose", value: None, help: "show every console line" },
    Flag { name: "--help", value: None, help: "this list" },
];

/// The parsed flags: `(name, value)` in order, a switch with `None`.
#[derive(Debug, Default)]
pub struct Parsed(Vec<(&'static str, Option<String>)>);

impl Parsed {
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

/// Parses `args` against `flags`. Unknown flags, stray words and missing values are errors.
pub fn parse(command: &str, args: &[String], flags: &[Flag]) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(f) = flags.iter().find(|f| f.name == a) else {
            return Err(format!("unknown {} {a:?} (cargo xtask {command} --help lists the flags)", if a.starts_with('-') { "flag" } else { "word" }));
        };
        let value = match f.value {
            Some(what) => Some(it.next().cloned().ok_or(format!("{} needs a value: {what}", f.name))?),
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
    }

    #[test]
    fn help_lists_every_flag() {
        for (cmd, flags) in [("run", RUN_FLAGS), ("test", TEST_FLAGS)] {
            let h = help(cmd, flags);
            assert!(flags.iter().all(|f| h.contains(f.name)), "{h}");
        }
    }
}
