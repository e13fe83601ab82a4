//! The demo guest: `cargo xtask run` starts it as a protected VM. It greets, asks EL2 for the
//! PSCI version, brings up every vCPU the VM has with PSCI `CPU_ON`, and powers off.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

static ONLINE: AtomicU64 = AtomicU64::new(0);

fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

fn main(dtb: u64) {
    println!("guest: hello from the demo guest, running at EL{} (device tree at {dtb:#x})", current_el());
    // The host's device tree: vCPUs, RAM, PSCI conduit.
    // SAFETY: x0 holds the device tree the host placed in guest RAM (0 if none); from_ptr
    // checks the header before reading further.
    let tree = (dtb != 0).then(|| unsafe { fdt::Fdt::from_ptr(dtb as *const u8) }.ok()).flatten();
    let Some(tree) = tree else { guests::fail(format_args!("no valid device tree in x0 ({dtb:#x})")) };
    let dt_cpus = tree.cpus().count() as u64;
    let mem = tree.memory().regions().next().map_or((0, 0), |r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
    let method = tree.find_node("/psci").and_then(|n| n.property("method")).and_then(|p| p.as_str()).unwrap_or("?");
    println!("guest: device tree: {dt_cpus} CPU(s), {} MiB RAM at {:#x}, PSCI via {method}", mem.1 >> 20, mem.0);
    let v = guests::psci_version();
    println!("guest: PSCI version {}.{} (answered by EL2)", v >> 16, v & 0xFFFF);
    let mut started = 0;
    for i in 1..8 {
        if guests::cpu_on(i).is_err() {
            break;
        }
        started += 1;
    }
    wait_until("secondary vCPUs did not come online", || ONLINE.load(Ordering::Acquire) >= started);
    println!("guest: {} vCPU(s) online", started + 1);
    if started + 1 != dt_cpus {
        guests::fail(format_args!("{} vCPUs came up, the device tree lists {dt_cpus}", started + 1));
    }
    // Each secondary powers itself off when done; AFFINITY_INFO (answered by EL2) sees it.
    for i in 1..=started {
        wait_until("a secondary vCPU never turned off", || {
            smccc::psci::affinity_info::<smccc::Hvc>(i, smccc::psci::LowestAffinityLevel::All) == Ok(smccc::psci::AffinityState::Off)
        });
    }
    if started > 0 {
        println!("guest: AFFINITY_INFO: secondary vCPUs off again");
    }
    println!("guest: demo done, powering off");
}

/// Spins (`YIELD`) until `done`, or fails with `what` after 10 s of the virtual counter. Not
/// `WFI`: with no interrupt coming, a VMM may keep a vCPU in `WFI` asleep for ever (the host's
/// VMM does, as KVM does); the tick takes the CPU from a spinning vCPU when others wait.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = guests::gic::cntvct() + 10 * guests::gic::cntfrq();
    while !done() {
        if guests::gic::cntvct() > deadline {
            guests::fail(format_args!("{what}"));
        }
        core::hint::spin_loop();
    }
}

fn secondary(index: u64) {
    println!("guest: vCPU {index} online");
    ONLINE.fetch_add(1, Ordering::Release);
}
