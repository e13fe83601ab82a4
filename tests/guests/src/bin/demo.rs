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
    let v = guests::psci_version();
    println!("guest: PSCI version {}.{} (answered by EL2)", v >> 16, v & 0xFFFF);
    let mut started = 0;
    for i in 1..8 {
        if guests::cpu_on(i).is_err() {
            break;
        }
        started += 1;
    }
    let mut spins = 0u64;
    while ONLINE.load(Ordering::Acquire) < started {
        spins += 1;
        if spins > 500_000_000 {
            guests::fail(format_args!("secondary vCPUs did not come online"));
        }
        core::hint::spin_loop();
    }
    println!("guest: {} vCPU(s) online", started + 1);
    println!("guest: demo done, powering off");
}

fn secondary(index: u64) {
    println!("guest: vCPU {index} online");
    ONLINE.fetch_add(1, Ordering::Release);
}
