//! `cargo xtask check-docs`: checks `docs/ABI.md` against the `shared-abi` crate, the ABI's
//! source of truth, and names every disagreement:
//!
//! - the version in the title, `(version M.N)`, and in the `VERSION` row of the calls table,
//!   ``currently `0xM_000N` ``, against [`shared_abi::ABI_VERSION`];
//! - the calls table (`| ID | name | phase | arguments | result |`): one row per
//!   [`HypercallId`] and no other, each with its function ID, its phase (`set-up only` or not)
//!   and its arity: the highest argument register `xN` its arguments cell names (0 for none)
//!   must be [`HypercallId::nr_args`];
//! - the errors table (`| value | name | meaning |`): one row per [`HypError`] and no other,
//!   each with its value.
//!
//! It also checks that the README's benchmark table is the recorded run's
//! ([`crate::figures::check`]).
//!
//! Call names in the document are the Rust names in upper snake case (`VcpuSetReg` is
//! `VCPU_SET_REG`); error names are the Rust names.

use crate::root;
use shared_abi::{HypError, HypercallId, Phase, ABI_VERSION};

/// The column headings that identify the two tables.
const CALLS_HEADER: &[&str] = &["ID", "name", "phase", "arguments", "result"];
const ERRORS_HEADER: &[&str] = &["value", "name", "meaning"];

/// Checks `docs/ABI.md`; the error lists every disagreement.
pub fn run() -> Result<(), String> {
    let path = root().join("docs/ABI.md");
    let doc = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let problems = check(&doc);
    if problems.is_empty() {
        println!(
            "xtask: docs/ABI.md agrees with shared-abi (version {}.{}, {} calls, {} errors)",
            ABI_VERSION.major,
            ABI_VERSION.minor,
            HypercallId::ALL.len(),
            HypError::ALL.len()
        );
        crate::figures::check()
    } else {
        Err(format!("docs/ABI.md disagrees with shared-abi:\n  - {}", problems.join("\n  - ")))
    }
}

/// Every disagreement between `doc` (the text of `docs/ABI.md`) and `shared-abi`.
fn check(doc: &str) -> Vec<String> {
    let mut problems = Vec::new();
    check_title_version(doc, &mut problems);
    match table(doc, CALLS_HEADER) {
        Some(rows) => check_calls(&rows, &mut problems),
        None => problems.push(format!("no calls table (columns {})", CALLS_HEADER.join(" | "))),
    }
    match table(doc, ERRORS_HEADER) {
        Some(rows) => check_errors(&rows, &mut problems),
        None => problems.push(format!("no errors table (columns {})", ERRORS_HEADER.join(" | "))),
    }
    problems
}

fn version_text() -> String {
    format!("{}.{}", ABI_VERSION.major, ABI_VERSION.minor)
}

fn check_title_version(doc: &str, problems: &mut Vec<String>) {
    let title = doc.lines().find(|l| l.starts_with("# ")).unwrap_or("");
    let said = title.split("(version ").nth(1).and_then(|r| r.split(')').next());
    match said {
        Some(v) if v == version_text() => {}
        Some(v) => problems.push(format!("the title says version {v}, shared_abi::ABI_VERSION is {}", version_text())),
        None => problems.push(format!("the title does not say the version: expected \"(version {})\"", version_text())),
    }
}

/// The body rows of the first Markdown table whose heading cells are `header`, as cells (an
/// escaped `\|` stays inside its cell), or `None` if there is no such table.
fn table(doc: &str, header: &[&str]) -> Option<Vec<Vec<String>>> {
    let mut lines = doc.lines().skip_while(|l| cells(l) != header);
    lines.next()?;
    let rows = lines
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .filter(|row| !row.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')))
        .collect();
    Some(rows)
}

/// The cells of one table line, trimmed, with `\|` unescaped.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let Some(inner) = line.strip_prefix('|').and_then(|l| l.strip_suffix('|')) else { return Vec::new() };
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => out.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

/// `VcpuSetReg` -> `VCPU_SET_REG`.
fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The highest argument register `xN` (N in 1..=7) named in `text`, 0 if none.
fn highest_register(text: &str) -> usize {
    let bytes = text.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'x' && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()))
        .filter_map(|i| {
            let digits: String = text[i + 1..].chars().take_while(char::is_ascii_digit).collect();
            let after = text[i + 1 + digits.len()..].chars().next();
            if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            digits.parse().ok().filter(|n| (1..=7).contains(n))
        })
        .max()
        .unwrap_or(0)
}

/// A hexadecimal number such as `0xC600_000C` (backticks and `_` allowed).
fn parse_hex(text: &str) -> Option<u64> {
    let t = text.trim().trim_matches('`').replace('_', "");
    u64::from_str_radix(t.strip_prefix("0x")?, 16).ok()
}

fn check_calls(rows: &[Vec<String>], problems: &mut Vec<String>) {
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| r.len() == CALLS_HEADER.len()).collect();
    let name_of = |r: &Vec<String>| r[1].trim_matches('`').to_string();
    for id in HypercallId::ALL {
        let name = upper_snake(&format!("{id:?}"));
        let code = *id as u32;
        let found: Vec<_> = rows.iter().filter(|r| name_of(r) == name).collect();
        let row = match found.as_slice() {
            [] => {
                problems.push(format!("calls table: {name} ({code:#x}) is missing"));
                continue;
            }
            [row] => row,
            _ => {
                problems.push(format!("calls table: {name} has {} rows", found.len()));
                continue;
            }
        };
        match parse_hex(&row[0]) {
            Some(doc_id) if doc_id == code as u64 => {}
            _ => problems.push(format!("calls table: {name} has ID {}, shared-abi says {code:#x}", row[0])),
        }
        let setup_only = row[2].starts_with("set-up only");
        if setup_only != (id.phase() == Phase::SetupOnly) {
            problems.push(format!("calls table: {name} has phase {:?}, shared-abi says {:?}", row[2], id.phase()));
        }
        let arity = highest_register(&row[3]);
        if arity != id.nr_args() {
            problems.push(format!(
                "calls table: {name} names {arity} argument register(s) (highest x{arity}), shared-abi's nr_args() is {}",
                id.nr_args()
            ));
        }
        if *id == HypercallId::Version {
            let current = row[4].split("currently `").nth(1).and_then(|r| r.split('`').next());
            let encoded = ABI_VERSION.encode();
            match current.map(|c| (c, parse_hex(c))) {
                Some((_, Some(v))) if v == encoded => {}
                Some((c, _)) => problems.push(format!("calls table: VERSION says it returns {c}, shared_abi::ABI_VERSION ({}) encodes as {encoded:#x}", version_text())),
                None => problems.push(format!("calls table: VERSION does not say what it returns now (\"currently `{encoded:#x}`\")")),
            }
        }
    }
    for row in &rows {
        let name = name_of(row);
        if !HypercallId::ALL.iter().any(|id| upper_snake(&format!("{id:?}")) == name) {
            problems.push(format!("calls table: {name} is not a call of shared-abi"));
        }
    }
}

fn check_errors(rows: &[Vec<String>], problems: &mut Vec<String>) {
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| r.len() == ERRORS_HEADER.len()).collect();
    let name_of = |r: &Vec<String>| r[1].trim_matches('`').to_string();
    for e in HypError::ALL {
        let found: Vec<_> = rows.iter().filter(|r| name_of(r) == e.name()).collect();
        match found.as_slice() {
            [] => problems.push(format!("errors table: {} ({}) is missing", e.name(), *e as i64)),
            [row] => {
                if row[0].parse::<i64>().ok() != Some(*e as i64) {
                    problems.push(format!("errors table: {} has value {}, shared-abi says {}", e.name(), row[0], *e as i64));
                }
            }
            _ => problems.push(format!("errors table: {} has {} rows", e.name(), found.len())),
        }
    }
    for row in &rows {
        let name = name_of(row);
        if !HypError::ALL.iter().any(|e| e.name() == name) {
            problems.push(format!("errors table: {name} is not an error of shared-abi"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abi_md() -> String {
        std::fs::read_to_string(root().join("docs/ABI.md")).unwrap()
    }

    /// The problems of `docs/ABI.md` with `from` replaced by `to` (which must occur).
    fn doctored(from: &str, to: &str) -> Vec<String> {
        let doc = abi_md();
        assert!(doc.contains(from), "docs/ABI.md no longer contains {from:?}");
        check(&doc.replacen(from, to, 1))
    }

    fn assert_one_problem(problems: &[String], needles: &[&str]) {
        assert_eq!(problems.len(), 1, "{problems:#?}");
        for n in needles {
            assert!(problems[0].contains(n), "{:?} lacks {n:?}", problems[0]);
        }
    }

    #[test]
    fn the_project_abi_md_agrees() {
        assert_eq!(check(&abi_md()), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_version_fails() {
        let v = version_text();
        assert_one_problem(&doctored(&format!("(version {v})"), "(version 2.9)"), &["title", "2.9", &v]);
        let encoded = format!("currently `{:#x}_{:04x}`", ABI_VERSION.major, ABI_VERSION.minor);
        assert_one_problem(&doctored(&encoded, "currently `0x2_0009`"), &["VERSION", "0x2_0009"]);
    }

    #[test]
    fn a_wrong_or_missing_call_fails() {
        assert_one_problem(&doctored("| `0xC600_000C` | `VCPU_RUN`", "| `0xC600_001C` | `VCPU_RUN`"), &["VCPU_RUN", "0xC600_001C", "0xc600000c"]);
        let doc = abi_md();
        let row = doc.lines().find(|l| l.contains("| `VCPU_STATS` |")).unwrap();
        assert_one_problem(&doctored(&format!("{row}\n"), ""), &["VCPU_STATS", "missing"]);
        assert_one_problem(&doctored(&format!("{row}\n"), &format!("{row}\n{}\n", row.replace("VCPU_STATS", "VCPU_FROB"))), &["VCPU_FROB", "not a call"]);
        assert_one_problem(&doctored("| `0xC600_0003` | `FINALISE_SETUP` | set-up only", "| `0xC600_0003` | `FINALISE_SETUP` | any"), &["FINALISE_SETUP", "phase"]);
    }

    #[test]
    fn a_wrong_arity_fails() {
        assert_one_problem(
            &doctored(", `x4` = flags (4.1)", ", flags in the message page (4.1)"),
            &["VCPU_RUN", "3 argument register(s)", "nr_args() is 4"],
        );
        assert_one_problem(&doctored("| `VM_DESTROY` | any | `x1` = handle |", "| `VM_DESTROY` | any | `x1` = handle, `x2` = 0 |"), &["VM_DESTROY", "highest x2", "is 1"]);
    }

    #[test]
    fn a_wrong_or_missing_error_fails() {
        assert_one_problem(&doctored("| -14 | `Denied` |", "| -17 | `Denied` |"), &["Denied", "-17", "-14"]);
        let renamed = doctored("| -16 | `Frozen` |", "| -16 | `Thawed` |");
        assert_eq!(renamed.len(), 2, "{renamed:#?}");
        assert!(renamed[0].contains("Frozen (-16) is missing") && renamed[1].contains("Thawed is not an error"), "{renamed:#?}");
    }

    #[test]
    fn tables_and_registers_are_read_as_written() {
        assert_eq!(cells("| a | `x \\| y` | c |"), ["a", "`x | y`", "c"]);
        assert_eq!(highest_register("`x1` = handle, `x4` = pages"), 4);
        assert_eq!(highest_register("— (x0 is the ID, 0x12 is hex, x10 is no argument, xx1 neither)"), 0);
        assert_eq!(upper_snake("TestCheckInvariants"), "TEST_CHECK_INVARIANTS");
        assert_eq!(parse_hex("`0xC600_FF01`"), Some(0xC600_FF01));
    }
}
