//! `cargo xtask bench`: boots the hypervisor under QEMU `-icount shift=0` (so PMU event 0x08,
//! INST_RETIRED, counts exactly), runs the host's `bench` scenario with the bench guest, and
//! prints a table (operation, median, min, max, target, verdict); the same figures go to
//! `target/bench.json`.

use crate::{qemu_command, root, Images};
use shared_abi::bench::Stats;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// A row of the report: the key the images print, what it measures, and its target.
struct Row {
    key: &'static str,
    operation: &'static str,
    target: Option<u64>,
    target_text: &'static str,
}

const ROWS: &[Row] = &[
    Row { key: "host_null_hvc", operation: "host null hypercall round trip (PING)", target: Some(100), target_text: "<= 100" },
    Row { key: "guest_smccc_version", operation: "guest SMCCC_VERSION, served in EL2", target: Some(150), target_text: "<= 150" },
    Row { key: "guest_mmio_read", operation: "guest MMIO read emulated by the host", target: Some(1200), target_text: "<= 1200" },
    Row { key: "guest_mmio_read_fp", operation: "guest MMIO read with the guest's FP/SIMD live (lazy FP switch)", target: None, target_text: "FP moves only" },
    Row { key: "guest_mmio_read_mte", operation: "guest MMIO read, MTE VM (MTE registers switched)", target: None, target_text: "MTE moves only" },
    Row { key: "ptrauth_eager_idle", operation: "guest MMIO read, ptrauth VM not using its keys, eager policy", target: None, target_text: "key moves only" },
    Row { key: "ptrauth_lazy_idle", operation: "guest MMIO read, ptrauth VM not using its keys, lazy policy", target: None, target_text: "key moves only" },
    Row { key: "ptrauth_eager_active", operation: "guest PACGA + MMIO read, ptrauth VM, eager policy", target: None, target_text: "key moves only" },
    Row { key: "ptrauth_lazy_active", operation: "guest PACGA + MMIO read, ptrauth VM, lazy policy", target: None, target_text: "key moves only" },
    Row { key: "guest_first_touch", operation: "guest first touch of a 4 KiB page", target: Some(400), target_text: "<= 400" },
    Row { key: "guest_first_touch_mte", operation: "guest first touch of a 4 KiB page, MTE VM", target: Some(600), target_text: "<= 600" },
    Row { key: "world_switch_plain", operation: "world switch round trip, plain (PSCI_VERSION)", target: None, target_text: "own moves only" },
    Row { key: "vm_lifecycle_1mib", operation: "create + donate + destroy, protected, 1 MiB", target: None, target_text: "linear" },
    Row { key: "vm_lifecycle_16mib", operation: "create + donate + destroy, protected, 16 MiB", target: None, target_text: "linear" },
    Row { key: "vm_lifecycle_64mib", operation: "create + donate + destroy, protected, 64 MiB", target: None, target_text: "linear" },
];

fn verdict(row: &Row, s: Option<&Stats>) -> String {
    match (s, row.target) {
        (None, _) => "not measured".into(),
        (Some(s), Some(t)) if s.median <= t => "met".into(),
        (Some(s), Some(t)) => format!("{:.1}x target", s.median as f64 / t as f64),
        (Some(_), None) => "see below".into(),
    }
}

/// Boots one benchmark run and collects its `bench:` lines into `results`.
fn boot(images: &Images, args: &str, results: &mut BTreeMap<String, Stats>, notes: &mut Vec<String>) -> Result<(), String> {
    let guest = images.guest("bench")?;
    let mut cmd = qemu_command(images, 1, args, &guest);
    cmd.args(["-icount", "shift=0"]);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let out = child.stdout.take().ok_or("no QEMU output")?;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        let line = line.trim_end_matches('\r').to_string();
        if let Some(rest) = line.strip_prefix("bench: ") {
            let (key, fields) = rest.split_once(' ').ok_or(format!("bad bench line {line:?}"))?;
            let s = Stats::parse(fields).ok_or(format!("bad bench line {line:?}"))?;
            results.insert(key.to_string(), s);
        } else if line.contains("bench:") || line.contains("FAIL") || line.contains("FATAL") {
            notes.push(line.clone());
        }
        println!("    | {line}");
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the benchmark run {args:?} failed (QEMU exit {:?})", status.code()));
    }
    Ok(())
}

/// Runs the benchmarks and reports them.
pub fn run(images: &Images) -> Result<(), String> {
    println!("xtask: running benchmarks under QEMU -icount shift=0 (about a minute and a half)");
    let mut results: BTreeMap<String, Stats> = BTreeMap::new();
    let mut notes = Vec::new();
    boot(images, "scenario=bench", &mut results, &mut notes)?;
    boot(images, "scenario=bench-ptrauth ptrauth=eager", &mut results, &mut notes)?;
    boot(images, "scenario=bench-ptrauth ptrauth=lazy", &mut results, &mut notes)?;

    println!("\nInstructions retired (PMU event 0x08, QEMU -icount shift=0), {} samples each:\n", results.values().next().map_or(0, |s| s.n));
    println!("| operation | median | min | max | target | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    let mut json = String::from("{\n  \"unit\": \"instructions retired (PMU 0x08, QEMU -icount shift=0)\",\n  \"rows\": [\n");
    let plain = results.get("guest_mmio_read").map(|s| s.median);
    for (i, row) in ROWS.iter().enumerate() {
        let s = results.get(row.key);
        let cell = |f: fn(&Stats) -> u64| s.map_or("-".to_string(), |s| f(s).to_string());
        let mut v = verdict(row, s);
        if let (Some(s), Some(p)) = (s, plain) {
            if row.key.starts_with("ptrauth_") || row.key == "guest_mmio_read_fp" || row.key == "guest_mmio_read_mte" {
                v = format!("{:+} vs plain MMIO read", s.median as i64 - p as i64);
            }
        }
        println!("| {} | {} | {} | {} | {} | {} |", row.operation, cell(|s| s.median), cell(|s| s.min), cell(|s| s.max), row.target_text, v);
        json += &format!(
            "    {{\"key\": \"{}\", \"operation\": \"{}\", \"n\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"target\": \"{}\", \"verdict\": \"{}\"}}{}\n",
            row.key,
            row.operation,
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
    let m = |k: &str| results.get(k).map(|s| s.median as f64);
    if let (Some(a), Some(b), Some(c)) = (m("vm_lifecycle_1mib"), m("vm_lifecycle_16mib"), m("vm_lifecycle_64mib")) {
        let low = (b - a) / (4096.0 - 256.0);
        let high = (c - b) / (16384.0 - 4096.0);
        let fixed = a - 256.0 * low;
        let linear = (low - high).abs() <= 0.05 * low.max(high);
        println!(
            "\nVM create + donate + destroy: {:.0} instructions per 4 KiB page (1->16 MiB) and {:.0} (16->64 MiB), fixed part {:.0}: {}",
            low,
            high,
            fixed,
            if linear { "linear" } else { "NOT linear" }
        );
        json += &format!(",\n  \"vm_lifecycle_per_page\": {low:.1},\n  \"vm_lifecycle_per_page_large\": {high:.1},\n  \"vm_lifecycle_fixed\": {fixed:.0},\n  \"vm_lifecycle_linear\": {linear}");
    }
    json += "\n}\n";
    for n in notes {
        println!("{n}");
    }
    let path = root().join("target/bench.json");
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\nxtask: figures written to {}", path.display());
    Ok(())
}
