//! The host binary: the host's scenarios, on top of the VMM (`host-vmm`) and the host kernel
//! (`host-kernel`), which never depend on them.
//!
//! The device tree's `/chosen/bootargs` selects a scenario (`scenario=NAME`, default `demo`)
//! from the registry (`registry.rs`).
//! Every scenario ends by powering the machine off through PSCI (QEMU exits 0) or, on failure,
//! by reporting a panic through QEMU's `pvpanic-pci` device (QEMU exits 1).
#![no_std]
#![no_main]

#[macro_use]
extern crate host_kernel;

#[macro_use]
mod scenarios;
// After `scenarios`, whose ok! and expect_err! macros they use.
mod bench;
mod guest_abi;
mod hostile;
mod probe;
mod registry;
mod scale;
mod sched_scenarios;
mod storm;
mod sve_scenarios;
mod vm_scenarios;

// The kernel's and the VMM's items under the names the scenarios use (`crate::gic`, ...).
use host_kernel::cpu::{cpu_id, ONLINE};
use host_kernel::entry::{secondary_entry, Hooks};
use host_kernel::platform::Platform;
use host_kernel::{fail, gic, hyp, platform, println};
use host_vmm::{self as vmm, sched};
use probe::PROBE;

host_kernel::entry!(Hooks { main, idle: secondary_idle, exception: probe::exception });

/// Runs the scenario the boot arguments name.
fn main(plat: &Platform) {
    let name = plat.scenario();
    registry::run(name, plat);
    println!("host: scenario {name}: PASS ({} checks)", scenarios::CHECKS_PASSED.load(core::sync::atomic::Ordering::Relaxed));
}

/// A secondary CPU's idle work: the fault test hook, then vCPUs of the fixed placement or of
/// the scheduler.
fn secondary_idle(cpu: usize) {
    probe::fault_hook(cpu);
    vmm::pinned::secondary_work(cpu);
    sched::secondary_work(cpu);
}
