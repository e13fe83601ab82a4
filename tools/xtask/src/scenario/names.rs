//! The host's scenario names and the rule that ties `tests/scenarios.txt` to them. The host
//! declares its scenarios once, in `el1-host/src/registry.rs`, and keeps their names in its
//! image as text ([`SYMBOL`]: a name a line, ` untested` after one no section need run). A
//! section `[NAME]` runs the host scenario `NAME`; `[NAME-VARIANT]` runs it with other settings
//! (the longest such `NAME` counts); a Linux section (`kernel = ...`) runs `linux`.

use super::format::Scenario;
use crate::images::elf_symbol_data;
use std::path::Path;

/// The host image's symbol holding the names.
pub const SYMBOL: &str = "HOST_SCENARIOS";

/// The host's scenarios: `(name, whether a section must run it)`.
#[derive(Debug)]
pub struct Registry(Vec<(String, bool)>);

impl Registry {
    /// The registry of the host image `elf`.
    pub fn from_host(elf: &Path) -> Result<Self, String> {
        let bytes = elf_symbol_data(elf, SYMBOL)?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: {SYMBOL} is not UTF-8", elf.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {SYMBOL}: {e}", elf.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for line in text.lines() {
            let (name, tested) = match line.split_once(' ') {
                None => (line, true),
                Some((name, "untested")) => (name, false),
                Some(_) => return Err(format!("bad line {line:?}")),
            };
            if name.is_empty() || out.iter().any(|(n, _)| n == name) {
                return Err(format!("empty or repeated name {name:?}"));
            }
            out.push((name.to_string(), tested));
        }
        Ok(Self(out))
    }

    fn names(&self) -> String {
        self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// `Ok` if the host has a scenario called `name`.
    pub fn require(&self, name: &str) -> Result<(), String> {
        if self.has(name) { Ok(()) } else { Err(format!("the host has no scenario {name:?} (it has: {})", self.names())) }
    }

    /// The host scenario the section `[section]` runs.
    fn scenario_of(&self, section: &str) -> Option<&str> {
        let runs = |name: &str| section == name || section.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'));
        self.0.iter().map(|(n, _)| n.as_str()).filter(|n| runs(n)).max_by_key(|n| n.len())
    }

    /// Sets each section's host scenario, and checks that every section runs one the host has
    /// (or, with `unknown_scenario`, deliberately one it has not) and that every scenario the
    /// host must have tested has a section.
    pub fn assign(&self, scenarios: &mut [Scenario]) -> Result<(), String> {
        let mut errors = Vec::new();
        for s in scenarios.iter_mut() {
            if let Some(unknown) = &s.unknown_scenario {
                if self.has(unknown) {
                    errors.push(format!("[{}]: unknown_scenario = {unknown}, but the host has a scenario of that name", s.name));
                }
                s.scenario = unknown.clone();
                continue;
            }
            let Some(scenario) = self.scenario_of(&s.name) else {
                errors.push(format!("[{}]: the host has no scenario of this name, nor one it begins with and a '-' (it has: {})", s.name, self.names()));
                continue;
            };
            if (scenario == "linux") != s.linux.is_some() {
                errors.push(format!("[{}]: a section runs the host's linux scenario exactly when it has kernel = ... (name it linux-...)", s.name));
            }
            s.scenario = scenario.to_string();
        }
        for (name, _) in self.0.iter().filter(|(_, tested)| *tested) {
            if !scenarios.iter().any(|s| s.scenario == *name) {
                errors.push(format!("the host's scenario {name} has no section [{name}] or [{name}-...] (or mark it untested in el1-host/src/registry.rs)"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(format!("tests/scenarios.txt and the host's scenarios disagree:\n  {}", errors.join("\n  "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::format::parse;

    fn registry() -> Registry {
        Registry::parse("demo\nhostile-host\nhostile\nlinux\nbench-ptrauth untested\n").unwrap()
    }

    #[test]
    fn parses_the_host_text() {
        assert_eq!(registry().0[4], ("bench-ptrauth".to_string(), false));
        assert!(Registry::parse("a\na\n").is_err(), "repeated");
        assert!(Registry::parse("a maybe\n").is_err());
        assert!(Registry::parse("\n").is_err(), "empty name");
    }

    #[test]
    fn a_section_runs_its_name_or_the_longest_prefix_before_a_dash() {
        let r = registry();
        assert_eq!(r.scenario_of("demo"), Some("demo"));
        assert_eq!(r.scenario_of("demo-raw-image"), Some("demo"));
        assert_eq!(r.scenario_of("hostile-host-seed-2"), Some("hostile-host"));
        assert_eq!(r.scenario_of("hostile-guests"), Some("hostile"));
        assert_eq!(r.scenario_of("demonstration"), None, "a prefix must end at a dash");
        assert_eq!(r.scenario_of("checks"), None);
        assert!(r.require("demo").is_ok());
        let e = r.require("vm-leaks").unwrap_err();
        assert!(e.contains("no scenario \"vm-leaks\"") && e.contains("it has: demo, hostile-host"), "{e}");
    }

    #[test]
    fn sections_and_host_scenarios_must_match() {
        let file = "[demo]\n[demo-raw]\n[hostile-host-seed-2]\n[hostile]\n[linux-two]\nkernel = debian\n[failure]\nunknown_scenario = nope\n";
        let mut s = parse(file).unwrap();
        registry().assign(&mut s).unwrap();
        let ran: Vec<_> = s.iter().map(|s| s.scenario.as_str()).collect();
        assert_eq!(ran, ["demo", "demo", "hostile-host", "hostile", "linux", "nope"]);

        let mut s = parse("[demo]\n[hostile-host]\n[vm-leaks]\n[linux-x]\n[linux]\nkernel = debian\n[f]\nunknown_scenario = demo\n").unwrap();
        let e = registry().assign(&mut s).unwrap_err();
        assert!(e.contains("[vm-leaks]: the host has no scenario of this name"), "{e}");
        assert!(e.contains("[linux-x]: a section runs the host's linux scenario exactly when it has kernel"), "{e}");
        assert!(e.contains("[f]: unknown_scenario = demo, but the host has"), "{e}");
        assert!(e.contains("scenario hostile has no section [hostile]"), "{e}");
        assert!(!e.contains("bench-ptrauth has no section"), "untested: no section needed: {e}");
    }
}
