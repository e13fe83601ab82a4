//! Scale: many protected VMs holding much memory at once. Each VM fills its memory with a
//! pattern of its own (the `vm-scale` guest) and stays alive until every VM has; then each
//! reads its pattern back and powers off, and all are destroyed. EL2's own page pool is not
//! what bounds guest memory: each VM's stage-2 tables are pages the VMM gives it
//! (`VM_TOPUP_TABLES`, at create and on `NEED_TABLES` exits).

use crate::platform::Platform;
use crate::vmm::{self, vm_platform, Outcome, Ran, Stepper, TestDevice, Vm, GUEST_RAM};
use crate::{hostile, println};
use shared_abi::msg::{exit, vm_flags};
use shared_abi::PAGE_SIZE;

/// The `vm-scale` guest's side of the test device: the range to fill and a seed, then the
/// command to check; what it reports.
struct Fill {
    first: u64,
    end: u64,
    seed: u64,
    reads: u64,
    /// Pages the guest filled.
    filled: Option<u64>,
    /// Pages it found changed.
    changed: Option<u64>,
}

impl TestDevice for Fill {
    fn write(&mut self, _: &Vm, v: u64) {
        if self.filled.is_none() {
            self.filled = Some(v);
        } else {
            self.changed = Some(v);
        }
    }

    fn read(&mut self, _: &Vm) -> u64 {
        self.reads += 1;
        match self.reads {
            1 => self.first,
            2 => self.end,
            3 => self.seed,
            _ => 1, // check
        }
    }
}

struct Running {
    vm: Vm,
    stepper: Stepper,
    dev: Fill,
}

/// Runs `r`'s vCPU 0 until `done` says so; fails on the VM's end.
fn step_until(r: &mut Running, done: fn(&Fill) -> bool) {
    while !done(&r.dev) {
        match r.stepper.run_once(&r.vm, 0, &mut r.dev) {
            Ok(Ran::Exit(_)) => {}
            other => crate::fail::fail(format_args!("VM {:#x}: {other:?} before the guest was done", r.vm.handle)),
        }
    }
}

/// `vms` (boot argument, default 4) protected VMs of `mib` MiB (default 64) each; with
/// `blocks=off` each VM's memory starts one page past a 2 MiB boundary, so that EL2 maps it
/// page by page (a level-3 table per 2 MiB: the VMs then need more table pages than the
/// VMM's first batch, and get them on `NEED_TABLES` exits).
pub fn run(plat: &Platform) {
    let vms: u64 = plat.arg("vms").and_then(|v| v.parse().ok()).unwrap_or(4);
    let mib: u64 = plat.arg("mib").and_then(|v| v.parse().ok()).unwrap_or(64);
    let blocks = plat.arg("blocks") != Some("off");
    let Some(image) = plat.guest_image() else { crate::fail::fail(format_args!("no guest image")) };
    println!("host: scale: {vms} protected VMs of {mib} MiB at once, on {} MiB of RAM", plat.ram.1 >> 20);
    let mut all: arrayvec::ArrayVec<Running, 16> = arrayvec::ArrayVec::new();
    for i in 0..vms {
        let backing = if blocks { vmm::alloc_pages(mib * 256) } else { vmm::alloc_pages(mib * 256 + 1) + PAGE_SIZE };
        check!(backing + (mib << 20) <= plat.ram.0 + plat.ram.1, "VM {i}: {mib} MiB past the end of RAM");
        let vm = match vmm::create_sve_at(1, vm_flags::PROTECTED, 0, mib, backing) {
            Ok(vm) => vm,
            Err(e) => crate::fail::fail(format_args!("VM {i}: VM_CREATE: {e:?}")),
        };
        let laid = match vmm::boot(&vm, image, &[], "", false) {
            Ok(l) => l,
            Err(e) => crate::fail::fail(format_args!("VM {i}: {e}")),
        };
        // Above the image (4 MiB up), below the restricted DMA pool under the handover page.
        let end = GUEST_RAM + (laid.handover - vm_platform::DMA_POOL_SIZE) / PAGE_SIZE * PAGE_SIZE;
        let dev = Fill { first: GUEST_RAM + (4 << 20), end, seed: 0x5CA1_E000 ^ i << 40, reads: 0, filled: None, changed: None };
        if all.try_push(Running { vm, stepper: Stepper::new(), dev }).is_err() {
            crate::fail::fail(format_args!("at most 16 VMs"));
        }
        let r = all.last_mut().unwrap_or_else(|| crate::fail::halt());
        step_until(r, |d| d.filled.is_some());
        let want = (r.dev.end - r.dev.first) / PAGE_SIZE;
        check!(r.dev.filled == Some(want), "VM {i}: filled {:?} pages, expected {want}", r.dev.filled);
    }
    let (pages, tables): (u64, u64) = all.iter().map(|r| (r.dev.filled.unwrap_or(0), vmm::host_exits(r.vm.handle, exit::NEED_TABLES))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    ok!("{vms} protected VMs of {mib} MiB alive at once, {pages} pages filled ({} MiB), {tables} NEED_TABLES exits answered", pages * PAGE_SIZE >> 20);
    // Mapped page by page, each VM needs a level-3 table per 2 MiB: more than the first batch.
    check!(blocks || tables >= vms, "blocks=off: only {tables} NEED_TABLES exits for {vms} VMs");
    // The test EL2 image's checker (the scenario boots it).
    check!(hostile::invariants() == 0, "an EL2 invariant is broken with {vms} VMs alive");
    ok!("every EL2 invariant holds with {vms} VMs alive (their table pages included)");
    for (i, r) in all.iter_mut().enumerate() {
        step_until(r, |d| d.changed.is_some());
        check!(r.dev.changed == Some(0), "VM {i}: {:?} pages changed while the others ran", r.dev.changed);
        // To its power-off (an IRQ exit, the host's tick, may come first).
        let end = loop {
            match r.stepper.run_once(&r.vm, 0, &mut r.dev) {
                Ok(Ran::Exit(shared_abi::msg::Exit::Irq)) => continue,
                other => break other,
            }
        };
        check!(matches!(end, Ok(Ran::Ended(Outcome::Off))), "VM {i}: {end:?}, expected SYSTEM_OFF");
    }
    ok!("every VM read its own pattern back unchanged and powered off");
    for r in &all {
        let d = vmm::destroy(&r.vm);
        check!(d.is_ok(), "VM_DESTROY {:#x}: {d:?}", r.vm.handle);
    }
    check!(hostile::invariants() == 0, "an EL2 invariant is broken after the VMs went");
    ok!("all {vms} VMs destroyed: their memory and table pages scrubbed and the host's again");
}
