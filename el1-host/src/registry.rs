//! Every host scenario, declared once: its name and what it runs. The name is the boot argument
//! (`scenario=NAME`) and the section of `tests/scenarios.txt` that runs it (`[NAME]`, or
//! `[NAME-VARIANT]` for another run of the same scenario with other settings). `cargo xtask`
//! reads the names from the image ([`HOST_SCENARIOS`]) and refuses any other.

use crate::platform::Platform;
use crate::scenarios::{setup, smp};
use crate::{bench, guest_abi, hostile, sched_scenarios as sched, storm, sve_scenarios, vm_scenarios as vm};

/// A host scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&Platform),
    /// Whether `tests/scenarios.txt` must run it (`false`: only `cargo xtask bench` boots it).
    pub tested: bool,
}

const fn tested(name: &'static str, run: fn(&Platform)) -> Scenario {
    Scenario { name, run, tested: true }
}

/// The scenarios. Those with VMs first bring up every CPU and finish the VMM's set-up.
pub const SCENARIOS: &[Scenario] = &[
    tested("checks", |p| {
        smp(p);
        crate::scenarios::hypercalls(p);
        crate::scenarios::unknown_hypercall();
        crate::scenarios::host_reads_el2_memory();
    }),
    tested("boot-smp", smp),
    tested("hypercalls", crate::scenarios::hypercalls),
    tested("unknown-hypercall", |_| crate::scenarios::unknown_hypercall()),
    tested("host-reads-el2-memory", |_| crate::scenarios::host_reads_el2_memory()),
    tested("host-device-space", crate::scenarios::host_device_space),
    tested("hostile-arguments", crate::scenarios::hostile_arguments),
    tested("el2-fatal-ends-the-run", crate::scenarios::el2_fatal),
    tested("bench", |p| {
        // Exact instruction counts: no tick in the middle of a measurement.
        crate::gic::stop_tick();
        setup(p);
        bench::run(p);
    }),
    Scenario {
        name: "bench-ptrauth",
        run: |p| {
            crate::gic::stop_tick();
            setup(p);
            bench::run_ptrauth(p);
        },
        tested: false,
    },
    tested("hostile-host", |p| with_vms(p, hostile::run)),
    tested("guest-storm", |p| with_vms(p, storm::run)),
    tested("linux", |p| with_vms(p, |p| crate::vmm::linux::run(p, bench::note_linux_start))),
    tested("vm-lifecycle", |p| with_vms(p, vm::lifecycle)),
    tested("vm-isolation", |p| with_vms(p, vm::isolation)),
    tested("vm-measurement", |p| with_vms(p, vm::measurement)),
    tested("vm-register-integrity", |p| with_vms(p, vm::register_integrity)),
    tested("vm-hostile-arguments", |p| with_vms(p, vm::hostile_arguments)),
    tested("vm-firmware-registers", |p| with_vms(p, vm::firmware_registers)),
    tested("vm-id-registers", |p| with_vms(p, vm::id_registers)),
    tested("vm-pointer-authentication", |p| with_vms(p, vm::pointer_authentication)),
    tested("vm-mte", |p| with_vms(p, vm::mte)),
    tested("vm-sve", |p| with_vms(p, sve_scenarios::sve)),
    tested("hostile-guests", |p| with_vms(p, vm::hostile_guests)),
    tested("integrity-soak", |p| with_vms(p, vm::integrity_soak)),
    tested("vm-illegal-state", |p| with_vms(p, vm::illegal_state)),
    tested("vm-switched-or-trapped", |p| with_vms(p, vm::switched_or_trapped)),
    tested("vm-preempt", |p| with_vms(p, sched::preempt)),
    tested("vm-preempt-spin-wait", |p| with_vms(p, sched::spin_wait)),
    tested("vm-vgic", |p| with_vms(p, vm::vgic)),
    tested("vm-pkvm-guest-abi", |p| with_vms(p, guest_abi::guest_abi)),
    tested("vm-scale", |p| with_vms(p, crate::scale::run)),
];

/// Every CPU up and the VMM's set-up done, then `run`.
fn with_vms(plat: &Platform, run: fn(&Platform)) {
    smp(plat);
    setup(plat);
    run(plat);
}

/// Runs the scenario called `name`, or fails the run naming the ones there are.
pub fn run(name: &str, plat: &Platform) {
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) => (s.run)(plat),
        None => crate::fail::fail(format_args!("unknown scenario {name:?} (there are: {})", names())),
    }
}

/// The names, a line each, with ` untested` after those `tests/scenarios.txt` need not run.
fn names() -> &'static str {
    // The bytes are ASCII names, spaces and newlines, copied from `&str`s by `names_bytes`.
    core::str::from_utf8(&HOST_SCENARIOS).unwrap_or("?")
}

const UNTESTED: &[u8] = b" untested";

const fn names_len() -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < SCENARIOS.len() {
        len += SCENARIOS[i].name.len() + 1;
        if !SCENARIOS[i].tested {
            len += UNTESTED.len();
        }
        i += 1;
    }
    len
}

const fn names_bytes() -> [u8; names_len()] {
    let mut out = [0u8; names_len()];
    let mut at = 0;
    let mut i = 0;
    while i < SCENARIOS.len() {
        let s = &SCENARIOS[i];
        at = copy(&mut out, at, s.name.as_bytes());
        if !s.tested {
            at = copy(&mut out, at, UNTESTED);
        }
        out[at] = b'\n';
        at += 1;
        i += 1;
    }
    out
}

const fn copy<const N: usize>(out: &mut [u8; N], mut at: usize, bytes: &[u8]) -> usize {
    let mut j = 0;
    while j < bytes.len() {
        out[at] = bytes[j];
        at += 1;
        j += 1;
    }
    at
}

/// The scenario names as text in the image, for `cargo xtask` to read by this symbol.
#[no_mangle]
pub static HOST_SCENARIOS: [u8; names_len()] = names_bytes();
