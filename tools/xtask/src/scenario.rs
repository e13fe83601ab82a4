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
//! ```
//!
//! Default forbidden lines (unless `exit` is non-zero): anything EL2 reports as fatal, any
//! warning or error EL2 logs, and any host failure.

use crate::{qemu_command, root, Images};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
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
}

fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let mut out: Vec<Scenario> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push(Scenario { name: name.into(), smp: 2, timeout: 60, guest: "demo".into(), ..Default::default() });
            continue;
        }
        let s = out.last_mut().ok_or(format!("line {}: setting before any [scenario]", n + 1))?;
        let (k, v) = line.split_once('=').ok_or(format!("line {}: expected key = value", n + 1))?;
        let v = v.trim().to_string();
        let bad = |what: &str| format!("line {}: bad {what}", n + 1);
        match k.trim() {
            "args" => s.args = v,
            "smp" => s.smp = v.parse().map_err(|_| bad("smp"))?,
            "exit" => s.exit = v.parse().map_err(|_| bad("exit"))?,
            "timeout" => s.timeout = v.parse().map_err(|_| bad("timeout"))?,
            "expect" => s.expect.push(v),
            "forbid" => s.forbid.push(v),
            "allow" => s.allow.push(v),
            "guest" => s.guest = v,
            "icount" => s.icount = v == "on",
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

/// Outcome of one scenario: `Err` holds the reason it failed.
fn run_one(images: &Images, s: &Scenario, verbose: bool) -> (Result<(), String>, Vec<String>) {
    let guest = match images.guest(&s.guest) {
        Ok(g) => g,
        Err(e) => return (Err(e), vec![]),
    };
    let mut cmd = qemu_command(images, s.smp, &s.args, &guest);
    if s.icount {
        cmd.args(["-icount", "shift=0"]);
    }
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (Err(format!("cannot start QEMU: {e}")), vec![]),
    };
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|s| Box::new(s) as _)]
        .into_iter()
        .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line.trim_end_matches('\r').to_string());
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(s.timeout);
    let mut lines = Vec::new();
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            if verbose {
                println!("    | {l}");
            }
            lines.push(l);
        }
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return (Err(format!("waiting for QEMU: {e}")), lines),
        }
    };
    // Drain what the readers still hold.
    for l in rx.iter() {
        if verbose {
            println!("    | {l}");
        }
        lines.push(l);
    }
    let Some(status) = status else {
        return (Err(format!("timed out after {} s", s.timeout)), lines);
    };
    if status.code() != Some(s.exit) {
        return (Err(format!("QEMU exit status {:?}, expected {}", status.code(), s.exit)), lines);
    }
    for e in &s.expect {
        if !lines.iter().any(|l| l.contains(e.as_str())) {
            return (Err(format!("expected line missing: {e:?}")), lines);
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

/// Runs every scenario (or the one named `only`) and prints a summary.
pub fn run_all(release: &Images, test_hooks: &Images, only: Option<&str>, verbose: bool) -> Result<(), String> {
    let path = root().join("tests/scenarios.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let scenarios = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let selected: Vec<_> = scenarios.iter().filter(|s| only.is_none_or(|o| o == s.name)).collect();
    if selected.is_empty() {
        return Err(format!("no scenario named {:?}", only.unwrap_or("")));
    }
    println!("xtask: {} QEMU scenarios", selected.len());
    let (mut passed, mut failed) = (0, 0);
    for s in selected {
        let t = Instant::now();
        let images = if s.test_image { test_hooks } else { release };
        let (r, lines) = run_one(images, s, verbose);
        match r {
            Ok(()) => {
                passed += 1;
                println!("scenario {} ... ok ({:.1} s, {} checks)", s.name, t.elapsed().as_secs_f64(), s.expect.len() + 1);
            }
            Err(why) => {
                failed += 1;
                println!("scenario {} ... FAILED: {why}", s.name);
                for l in lines.iter().rev().take(25).collect::<Vec<_>>().into_iter().rev() {
                    println!("    | {l}");
                }
            }
        }
    }
    println!("scenarios: {passed} passed, {failed} failed");
    if failed == 0 { Ok(()) } else { Err(format!("{failed} scenario(s) failed")) }
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
    fn the_bundled_scenario_file_parses() {
        let text = std::fs::read_to_string(root().join("tests/scenarios.txt")).unwrap();
        let s = parse(&text).unwrap();
        assert!(s.len() >= 4);
        assert!(s.iter().all(|s| !s.expect.is_empty()), "every scenario checks something");
    }
}
