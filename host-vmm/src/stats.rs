//! What the VMM counts per VM: the exits that reached the host, by reason, and the interrupts
//! it injected, by kind; reported with what EL2 counted when the VM is destroyed.

use crate::{check, println, Vm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared_abi::msg::exit;

/// Exit reasons the host counts per VM ([`exit`] values 1..=13).
const HOST_EXIT_NAMES: [&str; REASONS] = ["", "mmio", "wfx", "hypercall", "system_off", "system_reset", "irq", "killed", "vcpu_off", "sgi", "cpu_on", "mem_share", "mem_unshare", "need_tables"];
/// Row length: reason 0 (none) and every reason.
const REASONS: usize = exit::NEED_TABLES as usize + 1;

/// Kinds of injected interrupts ([`count_injection`]).
const INJECTION_NAMES: [&str; 4] = ["timer", "sgi", "uart", "other"];

/// Interrupts the VMM queued into list registers, per VM slot (the handle's low byte) and kind.
static INJECTED: [[AtomicU64; 4]; 16] = [const { [const { AtomicU64::new(0) }; 4] }; 16];
/// VM slots whose VM has a distributor model that injects interrupts, until its report.
static INJECTS: [AtomicBool; 16] = [const { AtomicBool::new(false) }; 16];

/// VM `handle` injects interrupts from a distributor model: its report counts them.
pub(crate) fn note_injects(handle: u64) {
    let slot = handle as usize & 0xFF;
    if let (Some(flag), Some(row)) = (INJECTS.get(slot), INJECTED.get(slot)) {
        row.iter().for_each(|n| n.store(0, Ordering::Relaxed));
        flag.store(true, Ordering::Relaxed);
    }
}

/// VM `handle` had an interrupt of `kind` ([`INJECTION_NAMES`]: timer, SGI, UART, other)
/// queued into a list register.
pub(crate) fn count_injection(handle: u64, kind: usize) {
    if let Some(n) = INJECTED.get(handle as usize & 0xFF).and_then(|row| row.get(kind)) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// The interrupts VM `handle` had injected, by kind, reset to zero; `None` if it has no
/// distributor model (or they were taken already).
fn take_injections(handle: u64) -> Option<[u64; 4]> {
    let slot = handle as usize & 0xFF;
    let row = INJECTED.get(slot)?;
    INJECTS.get(slot)?.swap(false, Ordering::Relaxed).then(|| core::array::from_fn(|i| row[i].swap(0, Ordering::Relaxed)))
}

/// Exits that reached the host, per VM slot (the handle's low byte) and reason.
static HOST_EXITS: [[AtomicU64; REASONS]; 16] = [const { [const { AtomicU64::new(0) }; REASONS] }; 16];

/// Exits with `reason` that VM `handle` made to the host so far (cleared by [`report_stats`]).
pub fn host_exits(handle: u64, reason: u32) -> u64 {
    HOST_EXITS.get(handle as usize & 0xFF).and_then(|row| row.get(reason as usize)).map_or(0, |n| n.load(Ordering::Relaxed))
}

pub(crate) fn count_exit(handle: u64, reason: u32) {
    if let Some(n) = HOST_EXITS.get(handle as usize & 0xFF).and_then(|row| row.get(reason as usize)) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints the VM's exits in the spirit of `kvm_stat`: what reached the host, by reason, and
/// what every vCPU took to EL2, by class (`VCPU_STATS`), then the same as one JSON line for
/// tests and benchmarks. Checks that every exit the host saw came from an exception EL2
/// counted. Clears the host's counts for the slot's next VM.
pub fn report_stats(vm: &Vm) {
    use shared_abi::msg::stats;
    let Some(row) = HOST_EXITS.get(vm.handle as usize & 0xFF) else { return };
    let host: [u64; REASONS] = core::array::from_fn(|i| row[i].swap(0, Ordering::Relaxed));
    let mut el2 = [0u64; stats::CLASSES];
    for v in 0..vm.vcpus as u64 {
        if let Ok(s) = vm.el2().vcpu(v).stats() {
            el2.iter_mut().zip(s.counts).for_each(|(a, b)| *a += b);
        }
    }
    let host_line = Fmt(|f| host.iter().enumerate().skip(1).filter(|(_, n)| **n > 0).try_for_each(|(i, n)| write!(f, " {} {n}", HOST_EXIT_NAMES[i])));
    println!("host: VM {:#x} exits to the host:{host_line}", vm.handle);
    let el2_line = Fmt(|f| el2.iter().enumerate().try_for_each(|(i, n)| write!(f, " {} {n}", stats::NAMES[i])));
    println!("host: VM {:#x} exceptions taken to EL2:{el2_line}", vm.handle);
    let host_json = Fmt(|f| host.iter().enumerate().skip(1).try_for_each(|(i, n)| write!(f, "{}\"{}\":{n}", if i > 1 { "," } else { "" }, HOST_EXIT_NAMES[i])));
    let el2_json = Fmt(|f| el2.iter().enumerate().try_for_each(|(i, n)| write!(f, "{}\"{}\":{n}", if i > 0 { "," } else { "" }, stats::NAMES[i])));
    // Interrupts the VMM injected (Linux VMs: their distributor model), by kind.
    let inj = take_injections(vm.handle);
    if let Some(inj) = inj {
        let line = Fmt(|f| INJECTION_NAMES.iter().zip(inj).try_for_each(|(name, n)| write!(f, " {name} {n}")));
        println!("host: VM {:#x} interrupts injected:{line}", vm.handle);
    }
    let inj_json = Fmt(|f| match inj {
        Some(inj) => {
            write!(f, ",\"injected\":{{")?;
            INJECTION_NAMES.iter().zip(inj).enumerate().try_for_each(|(i, (name, n))| write!(f, "{}\"{name}\":{n}", if i > 0 { "," } else { "" }))?;
            write!(f, "}}")
        }
        None => Ok(()),
    });
    println!("host: stats {{\"vm\":\"{:#x}\",\"host\":{{{host_json}}},\"el2\":{{{el2_json}}}{inj_json}}}", vm.handle);
    // Every exit the host saw but VCPU_OFF (answered without entering the guest) was an
    // exception EL2 took first.
    let trapped: u64 = host.iter().enumerate().filter(|(i, _)| *i != exit::VCPU_OFF as usize).map(|(_, n)| n).sum();
    let taken: u64 = el2.iter().sum();
    check!(vm.vcpus == 0 || trapped <= taken, "VM {:#x}: the host saw {trapped} exits but EL2 counted {taken} exceptions", vm.handle);
}

/// Formats with a closure (one `println!` per line keeps lines whole across CPUs).
struct Fmt<F: Fn(&mut core::fmt::Formatter<'_>) -> core::fmt::Result>(F);
impl<F: Fn(&mut core::fmt::Formatter<'_>) -> core::fmt::Result> core::fmt::Display for Fmt<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (self.0)(f)
    }
}
