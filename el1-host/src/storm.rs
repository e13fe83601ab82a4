//! Hostile guests in device VMs (`scenario=guest-storm storm=KIND`, test EL2 image, guest `storm`):
//! a VM whose guest storms the interrupt and timer paths (SGIs, expired timers never handled,
//! random GIC and UART accesses, masked spinning, `CPU_OFF`/`CPU_ON`, aborts on every address
//! outside RAM and the devices, breakpoints and watchpoints on EL2's addresses) runs next to a
//! well-behaved VM that takes `count=N` virtual-timer interrupts 1 ms apart, both with the
//! devices of [`crate::vmm::linux`] and scheduled by [`crate::sched`] on every host CPU but
//! this one.
//!
//! This CPU supervises: it sleeps in `WFI` between its ticks, checks EL2's invariants while
//! the storm goes on, and once the neighbour has powered off and the storm has lasted
//! `storm-ms`, stops the storming VM and destroys it (its exit statistics are printed). The
//! run fails if the neighbour does not finish within `limit-ms`, if the storming VM ended by
//! itself, if an invariant breaks, or if the storming VM's `IRQ` exits exceed `irq-bound` per
//! second: the bound a guest whose expired virtual timer kept the physical PPI 27 asserted at
//! every entry would break many times over. `cntvoff=N` sets the storming VM's `CNTVOFF_EL2`
//! before its first run (the VMM disables that PPI while the virtual one
//! is queued or high: host-vmm's `timer::physical_enabled`, `gic::set_timer_ppis`).

use crate::platform::Platform;
use crate::vmm::{self, linux, Outcome};
use crate::{gic, println, sched};
use shared_abi::msg::{exit, vm_flags};

/// Guest RAM of each VM, in MiB.
const MEM_MIB: u64 = 32;

fn num(plat: &Platform, key: &str, default: u64) -> u64 {
    plat.arg(key).map_or(default, |v| v.parse().unwrap_or_else(|_| crate::fail::fail(format_args!("storm: {key}={v} is not a number"))))
}

/// Runs the scenario.
pub fn run(plat: &Platform) {
    let kind = plat.arg("storm").unwrap_or("sgi");
    let storm_ms = num(plat, "storm-ms", 3000);
    let limit_ms = num(plat, "limit-ms", 60_000);
    let count = num(plat, "count", 100);
    let bound = num(plat, "irq-bound", 500);
    let image = plat.guest_image().unwrap_or_else(|| crate::fail::fail(format_args!("storm: no guest image staged (guest = storm)")));
    check!(plat.nr_cpus >= 2, "storm: needs a CPU to supervise and at least one to run vCPUs");
    let mut violations = crate::hostile::invariants();
    let mut checks = 1u64;
    let storm = linux::add_vm(plat, 0, 2, vm_flags::PROTECTED, MEM_MIB, image, storm_cmdline(kind))
        .unwrap_or_else(|e| crate::fail::fail(format_args!("storm: the storming VM: {e}")));
    let mut cmdline = [0u8; 64];
    let neighbour_args = fmt_into(&mut cmdline, format_args!("storm=count count={count}"));
    let good = linux::add_vm(plat, 1, 1, 0, MEM_MIB, image, neighbour_args).unwrap_or_else(|e| crate::fail::fail(format_args!("storm: the neighbour VM: {e}")));
    println!(
        "host: storm {kind}: VM {:#x} (protected, 2 vCPUs) storms for {storm_ms} ms beside VM {:#x} (1 vCPU, counts {count} timer interrupts), on {} host CPU(s)",
        storm.handle,
        good.handle,
        plat.nr_cpus - 1
    );
    if let Some(off) = plat.arg("cntvoff") {
        // The storming VM's virtual counter offset, before its first run (EL2's default is 0:
        // the virtual count is the physical one).
        let off: u64 = off.parse().unwrap_or_else(|_| crate::fail::fail(format_args!("storm: cntvoff={off} is not a number")));
        let r = crate::hyp::call(shared_abi::HypercallId::VcpuSetReg, &[storm.handle, 0, shared_abi::reg::CNTVOFF_EL2, off, 0]);
        check!(r.is_ok(), "storm: CNTVOFF_EL2 = {off}: {r:?}");
    }
    let off = crate::hyp::call(shared_abi::HypercallId::VcpuGetReg, &[storm.handle, 0, shared_abi::reg::CNTVOFF_EL2]);
    check!(off.is_ok(), "storm: reading CNTVOFF_EL2: {off:?}");
    println!("host: storm {kind}: VM {:#x} runs with CNTVOFF_EL2 = {}", storm.handle, off.map_or(0, |r| r[0]));
    for vm in [storm, good] {
        linux::queue(vm).unwrap_or_else(|e| crate::fail::fail(format_args!("storm: run queue: {e:?}")));
    }
    linux::set_running(true);
    let ms = gic::ticks_per_ms().max(1);
    let start = gic::counter();
    let workers = ((1u64 << plat.nr_cpus) - 1) & !(1 << crate::cpu_id());
    sched::start(workers);
    let mut neighbour_ms = None;
    let mut checked_mid = false;
    loop {
        let now = gic::counter();
        let elapsed = now.wrapping_sub(start);
        if neighbour_ms.is_none() && sched::outcome(good).is_some() {
            neighbour_ms = Some(elapsed / ms);
        }
        if let Some(o) = sched::outcome(storm) {
            crate::fail::fail(format_args!("storm {kind}: the storming VM ended by itself after {} ms: {o:?}", elapsed / ms));
        }
        if !checked_mid && elapsed >= storm_ms * ms / 2 {
            // In the middle of the storm: EL2's tables, ownership and vCPU slots.
            violations += crate::hostile::invariants();
            checks += 1;
            checked_mid = true;
        }
        if neighbour_ms.is_some() && elapsed >= storm_ms * ms {
            break;
        }
        if elapsed >= limit_ms * ms {
            // Starved: say how hard the storming VM was hitting the host meanwhile.
            let irq = vmm::host_exits(storm.handle, exit::IRQ);
            crate::fail::fail(format_args!("storm {kind}: the neighbour VM did not finish within {limit_ms} ms (the storming VM made {irq} IRQ exits, {}/s)", irq * 1000 / limit_ms.max(1)));
        }
        gic::arm_wakeup(now + 5 * ms);
        gic::wait_for_interrupt();
        gic::handle_pending();
    }
    let elapsed = gic::counter().wrapping_sub(start);
    let irq = vmm::host_exits(storm.handle, exit::IRQ);
    let (sgi, mmio) = (vmm::host_exits(storm.handle, exit::SGI), vmm::host_exits(storm.handle, exit::MMIO));
    linux::flush_console(storm.handle);
    println!("host: storm {kind}: stopping VM {:#x} after {} ms (its neighbour finished after {} ms)", storm.handle, elapsed / ms, neighbour_ms.unwrap_or(0));
    sched::destroy(storm).unwrap_or_else(|e| crate::fail::fail(format_args!("storm: VM_DESTROY of the storming VM: {e:?}")));
    let outcome = sched::outcome(good);
    linux::flush_console(good.handle);
    sched::destroy(good).unwrap_or_else(|e| crate::fail::fail(format_args!("storm: VM_DESTROY of the neighbour: {e:?}")));
    sched::finish();
    linux::set_running(false);
    check!(outcome == Some(Ok(Outcome::Off)), "storm {kind}: the neighbour VM ended {outcome:?}");
    ok!("the neighbour VM counted {count} timer interrupts and powered off while VM {:#x} stormed", storm.handle);
    violations += crate::hostile::invariants();
    checks += 1;
    println!("host: invariant checks: {checks}, invariant violations: {violations}");
    check!(violations == 0, "invariant violations");
    let secs_milli = (elapsed / ms).max(1);
    let rate = irq * 1000 / secs_milli;
    println!("host: storm {kind}: {irq} IRQ exits in {secs_milli} ms ({rate}/s), {sgi} SGI exits, {mmio} MMIO exits");
    check!(rate <= bound, "storm {kind}: the storming VM made {rate} IRQ exits per second, above the bound of {bound}: an interrupt storms the host");
    ok!("IRQ exits of the storming VM at most {bound}/s");
}

/// `storm=KIND` for the storming VM's command line.
fn storm_cmdline(kind: &str) -> &'static str {
    match kind {
        "sgi" => "storm=sgi",
        "timer" => "storm=timer",
        "gic" => "storm=gic",
        "masked" => "storm=masked",
        "onoff" => "storm=onoff",
        "cvalmax" => "storm=cvalmax",
        "aborts" => "storm=aborts",
        "debug" => "storm=debug",
        other => crate::fail::fail(format_args!("storm: unknown storm {other:?} (sgi, timer, gic, masked, onoff, cvalmax, aborts, debug)")),
    }
}

/// Formats `args` into `buf`; the text written (cut at the buffer's end).
fn fmt_into<'a>(buf: &'a mut [u8], args: core::fmt::Arguments<'_>) -> &'a str {
    struct W<'b>(&'b mut [u8], usize);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.0.len() - self.1);
            self.0[self.1..self.1 + n].copy_from_slice(&s.as_bytes()[..n]);
            self.1 += n;
            Ok(())
        }
    }
    let mut w = W(buf, 0);
    let _ = core::fmt::write(&mut w, args);
    let n = w.1;
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}
