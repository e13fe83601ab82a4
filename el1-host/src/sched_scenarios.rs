//! Scenarios for the host's interrupts and scheduler (guest `spin`): preemption of a guest
//! that never exits, round robin of more vCPUs than host CPUs, kick and destroy.

use crate::gic::COUNTS;
use crate::platform::Platform;
use crate::sched::{self, STATS};
use crate::vm_scenarios::start;
use crate::vmm::{Outcome, Vm};
use crate::hyp;
use core::sync::atomic::Ordering;
use shared_abi::HypercallId;

/// The spin guest's roles (its test device's answer; see `tests/guests/src/bin/spin.rs`).
const ROLE_MASKED: u64 = 1;
const ROLE_SPIN_WAIT: u64 = 2;

fn queue(vm: &Vm, role: u64) {
    let r = sched::add(vm, role);
    check!(r.is_ok(), "queueing VM {:#x}: {r:?}", vm.handle);
}

fn destroy(vm: &Vm) {
    let r = sched::destroy(vm);
    check!(r.is_ok(), "VM_DESTROY {:#x}: {r:?}", vm.handle);
}

fn preemptions() -> u64 {
    STATS.iter().map(|s| s.preemptions.load(Ordering::Relaxed)).sum()
}

/// `vm-preempt`: a vCPU that masks interrupts and never exits shares one host CPU with a VM
/// whose two vCPUs spin-wait for each other (they finish only if the spinner is preempted);
/// then the spinner runs alone on CPU 1, which comes back to the host at every tick while
/// CPU 0 works, and a kick brings it back for `VM_DESTROY`.
pub fn preempt(plat: &Platform) {
    check!(crate::gic::present(), "no GIC: nothing can preempt a guest");
    check!(plat.nr_cpus >= 2, "vm-preempt needs 2 CPUs");
    let spinner = start(plat, 1, true);
    let pair = start(plat, 2, true);
    queue(&spinner, ROLE_MASKED);
    queue(&pair, ROLE_SPIN_WAIT);

    // 1. Three vCPUs on this CPU alone.
    sched::start(1);
    sched::work_until(&|| sched::outcome(&pair).is_some());
    sched::finish();
    let r = sched::outcome(&pair);
    check!(r == Some(Ok(Outcome::Off)), "spin-wait VM ended {r:?}");
    check!(sched::outcome(&spinner).is_none(), "the spinner ended");
    destroy(&pair);
    ok!("one host CPU ran a VM whose 2 vCPUs spin-wait beside a vCPU that never exits ({} preemptions)", preemptions());

    // 2. The spinner alone on CPU 1; this CPU makes hypercalls meanwhile.
    let ticks = || COUNTS[1].ticks.load(Ordering::Relaxed);
    sched::start(1 << 1);
    // Count from when the spinner runs there: a tick CPU 1 takes before it has picked the
    // spinner up is no preemption (seen on a loaded machine).
    while sched::running_on(&spinner) != 1 << 1 {
        host_kernel::arch::relax();
    }
    let (t0, p0) = (ticks(), STATS[1].preemptions.load(Ordering::Relaxed));
    let mut calls = 0u64;
    while ticks() < t0 + 5 {
        calls += hyp::call(HypercallId::Ping, &[calls]).map_or(0, |r| (r[0] == calls) as u64);
    }
    let back = STATS[1].preemptions.load(Ordering::Relaxed) - p0;
    check!(back >= 4, "CPU 1 took {} ticks but came back from the guest {back} times", ticks() - t0);
    ok!("host CPU 1 got its CPU back from the spinning vCPU at each tick (5 ticks) while CPU 0 made {calls} hypercalls");
    // Kick: stop the spinner while it runs on CPU 1 (retry in the rare case it is between two
    // runs, when no kick is needed).
    let k0 = COUNTS[1].kicks.load(Ordering::Relaxed);
    loop {
        while sched::running_on(&spinner) != 1 << 1 {
            host_kernel::arch::relax();
        }
        if sched::stop(&spinner) == 1 << 1 {
            break;
        }
        let r = sched::requeue(&spinner);
        check!(r.is_ok(), "requeueing the spinner: {r:?}");
    }
    // CPU 1 acknowledges the kick in VCPU_RUN's IRQ exit (or, if a tick beat it there, in
    // its idle loop right after).
    while sched::running_on(&spinner) != 0 || COUNTS[1].kicks.load(Ordering::Relaxed) == k0 {
        host_kernel::arch::relax();
    }
    destroy(&spinner);
    sched::finish();
    ok!("a kick (SGI) took host CPU 1 back from the spinning vCPU, and its VM was destroyed");
}

/// `vm-preempt-spin-wait`: 2 VMs x 2 vCPUs that spin-wait for each other without exits, on 2
/// host CPUs: without preemption, the two vCPUs 0 (or any two waiters) would hold both CPUs
/// for ever.
pub fn spin_wait(plat: &Platform) {
    check!(crate::gic::present(), "no GIC: nothing can preempt a guest");
    check!(plat.nr_cpus >= 2, "vm-preempt-spin-wait needs 2 CPUs");
    let a = start(plat, 2, true);
    let b = start(plat, 2, false);
    queue(&a, ROLE_SPIN_WAIT);
    queue(&b, ROLE_SPIN_WAIT);
    sched::run(&[&a, &b], 0b11);
    let (ra, rb) = (sched::outcome(&a), sched::outcome(&b));
    check!(ra == Some(Ok(Outcome::Off)) && rb == Some(Ok(Outcome::Off)), "spin-wait VMs ended {ra:?} {rb:?}");
    let picks: u64 = STATS.iter().map(|s| s.picks.load(Ordering::Relaxed)).sum();
    check!(preemptions() > 0, "finished without a preemption");
    destroy(&a);
    destroy(&b);
    ok!("2 VMs x 2 vCPUs spin-waiting without exits finished on 2 host CPUs ({} preemptions, {picks} picks)", preemptions());
}
