//! What each CPU was doing when a scenario timed out, from QEMU's monitor and the host's
//! run-status table.

use crate::images::elf_symbol;
use shared_abi::layout::run_status;
use shared_abi::msg::exit;
use crate::qemu::Monitor;
use std::path::Path;

/// What each CPU was doing when a scenario timed out: its PC and exception level (from QEMU's
/// monitor) and, from the host's run-status table, the VM and vCPU it last ran and that run's
/// last exit. A hang then explains itself.
pub fn timeout_report(monitor: &Path, host_elf: &Path, cpus: u32) -> String {
    let mut mon = match Monitor::connect(monitor) {
        Ok(m) => m,
        Err(e) => return format!("    (no timeout report: {e})"),
    };
    let regs = mon.command("info registers -a");
    let table = elf_symbol(host_elf, run_status::SYMBOL).map(|addr| {
        let words = run_status::CPUS * run_status::WORDS;
        parse_xp(&mon.command(&format!("xp /{words}gx {addr:#x}")))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
