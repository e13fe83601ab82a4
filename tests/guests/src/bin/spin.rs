//! The preemption guest: it never gives its vCPU back by itself. Its role is the test
//! device's answer:
//! - [`ROLE_MASKED`]: vCPU 0 masks every interrupt (`DAIF`) and branches to itself for ever,
//!   with no exit at all; only a physical interrupt routed to EL2 (`HCR_EL2.IMO`) takes the
//!   host CPU back;
//! - [`ROLE_SPIN_WAIT`]: vCPU 0 starts vCPU 1 and the two meet [`ROUNDS`] times, each waiting
//!   for the other in a plain load loop that never exits. Two such VMs on two host CPUs only
//!   finish if the host preempts a waiting vCPU to run the one it waits for.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

/// Spin for ever with interrupts masked.
const ROLE_MASKED: u64 = 1;
/// Two vCPUs spin-wait for each other.
const ROLE_SPIN_WAIT: u64 = 2;
/// How many times the two vCPUs meet.
const ROUNDS: u64 = 20;

/// The round each vCPU has reached.
static ROUND: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Set by vCPU 1 when it is done.
static DONE: AtomicU64 = AtomicU64::new(0);

fn main(_dtb: u64) {
    match guests::testdev_read() {
        ROLE_MASKED => {
            println!("guest: vCPU 0 masks interrupts and spins for ever, without exits");
            // SAFETY: masks this vCPU's interrupts and loops; touches no memory.
            unsafe { core::arch::asm!("msr daifset, #0xf", "2: b 2b", options(noreturn, nomem, nostack)) }
        }
        ROLE_SPIN_WAIT => {
            if guests::cpu_on(1).is_err() {
                guests::fail(format_args!("CPU_ON of vCPU 1 refused"));
            }
            meet(0);
            // Waits for vCPU 1's last store without exiting either.
            while DONE.load(Ordering::Acquire) == 0 {
                core::hint::spin_loop();
            }
            println!("guest: ok: 2 vCPUs met {ROUNDS} times, spin-waiting without exits");
        }
        other => guests::fail(format_args!("unknown role {other}")),
    }
}

/// Vcpu `me` announces each round and spins, without exiting, until its sibling has too.
fn meet(me: usize) {
    for r in 1..=ROUNDS {
        ROUND[me].store(r, Ordering::Release);
        while ROUND[1 - me].load(Ordering::Acquire) < r {
            core::hint::spin_loop();
        }
    }
}

fn secondary(index: u64) {
    if index == 1 {
        meet(1);
        DONE.store(1, Ordering::Release);
    }
}
