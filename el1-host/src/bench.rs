//! The `bench` scenario: instruction counts of the hot paths (run under QEMU `-icount shift=0`
//! by `cargo xtask bench`). Prints `bench:` lines (see `shared_abi::bench`).
//!
//! Also [`note_linux_start`], which the `linux` scenario calls before its vCPUs first run: the
//! mark the Linux boot benchmark measures from.

use crate::platform::Platform;
use host_kernel::arch;
use crate::{gic, hyp, println, vmm};
use host_kernel::hyp::client::VmHandle;
use shared_abi::bench::Stats;
use shared_abi::msg::{vm_flags, VmCreate};
use shared_abi::{reg, HypercallId};

const N: usize = 1000;
static mut SAMPLES: [u64; N] = [0; N];

fn measure(key: &str, n: usize, overhead: u64, mut f: impl FnMut()) -> u64 {
    // SAFETY: only CPU 0 runs benchmarks, one at a time: the only reference to SAMPLES.
    let samples = unsafe { &mut (&mut *core::ptr::addr_of_mut!(SAMPLES))[..n] };
    for s in samples.iter_mut() {
        let a = arch::pmu_counter();
        f();
        let b = arch::pmu_counter();
        *s = (b - a).saturating_sub(overhead);
    }
    let st = Stats::from_samples(samples).unwrap_or(Stats { n: 0, median: 0, min: 0, max: 0 });
    if !key.is_empty() {
        println!("bench: {key} {st}");
    }
    st.min
}

fn create(flags: u64) -> u64 {
    crate::hyp::write_msg(crate::cpu_id(), &VmCreate { nr_vcpus: 1, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 });
    let h = hyp::call(HypercallId::VmCreate, &[]).map_or(0, |r| r[0]);
    // Stage-2 table pages, as the VMM gives them.
    let _ = vmm::run::give_tables(VmHandle(h), vmm::run::TABLE_BATCH);
    h
}

/// For the Linux boot benchmark (`cargo xtask bench`): prints, for each Linux VM about to run
/// for the first time, the physical count now and the VM's `CNTVOFF_EL2` (EL2 sets it to the
/// count at `VM_CREATE`, so the guest's virtual count starts near 0 there). The benchmark takes
/// `now - CNTVOFF_EL2` as the virtual count at the kernel's first instruction and measures the
/// guest's `PKVM-STAMP` from it; the building of the VM in between (copying the kernel, giving
/// the memory) is the VMM's, not the kernel's boot. The scheduler starts vCPU 0 right after
/// this, a few thousand instructions (a few hundred ticks) later, which the figure includes.
pub fn note_linux_start(vms: &[&vmm::Vm]) {
    for vm in vms {
        let now = gic::counter();
        // Readable before the first run, even for a protected VM.
        match hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::CNTVOFF_EL2]) {
            Ok([cntvoff, ..]) => println!(
                "host: bench: VM {:#x} kernel entry at CNTPCT={now} CNTVOFF_EL2={cntvoff} (virtual count {})",
                vm.handle,
                now.wrapping_sub(cntvoff)
            ),
            Err(e) => println!("host: bench: VM {:#x}: CNTVOFF_EL2 unreadable ({e:?})", vm.handle),
        }
    }
}

/// A test device answering the bench guest's question: which rows to run.
struct Mode(u64);
impl vmm::TestDevice for Mode {
    fn write(&mut self, _: &vmm::Vm, _: u64) {}
    fn read(&mut self, _: &vmm::Vm) -> u64 {
        self.0
    }
}

/// The pointer-authentication rows, under the policy set at set-up (`ptrauth=eager|lazy`).
pub fn run_ptrauth(plat: &Platform) {
    arch::pmu_count_instructions();
    let mode = if plat.arg("ptrauth") == Some("eager") { 1 } else { 2 };
    let Some(image) = plat.guest_image() else { crate::fail::fail(format_args!("no bench guest image")) };
    let vm = match vmm::create_with_flags(1, vm_flags::HOST_PMU | vm_flags::PTRAUTH, 16) {
        Ok(vm) => vm,
        Err(e) => crate::fail::fail(format_args!("VM_CREATE with PTRAUTH: {e:?}")),
    };
    let booted = vmm::boot(&vm, image, &[], "", false).err();
    check!(booted.is_none(), "booting the bench guest: {booted:?}");
    let r = vmm::pinned::run(&vm, 1, &mut Mode(mode));
    check!(r == Ok(vmm::Outcome::Off), "bench guest ended with {r:?}");
    check!(vmm::destroy(&vm).is_ok(), "destroying the bench guest");
    println!("host: bench: done");
}

/// Runs every benchmark.
pub fn run(plat: &Platform) {
    arch::pmu_count_instructions();
    if arch::pmu_counter() == 0 && arch::pmu_counter() == 0 {
        crate::fail::fail(format_args!("PMU counter 0 does not count: run under QEMU -icount shift=0"));
    }
    // `bench-n=K` (K <= 1000) shortens the host's rows, for the test suite's smoke run.
    let n = plat.arg("bench-n").and_then(|v| v.parse().ok()).filter(|k| (1..=N).contains(k)).unwrap_or(N);
    let overhead = measure("", n, 0, || {});
    println!("host: bench: counter read overhead {overhead} instructions (subtracted)");
    measure("host_null_hvc", n, overhead, || {
        let _ = hyp::call(HypercallId::Ping, &[7]);
    });
    // Create, give memory, destroy a protected VM (destroy scrubs every page).
    let backing = vmm::alloc_pages(64 * 256);
    for (key, mib) in [("vm_lifecycle_1mib", 1u64), ("vm_lifecycle_16mib", 16), ("vm_lifecycle_64mib", 64)] {
        let mut failed = false;
        measure(key, n, overhead, || {
            let h = create(vm_flags::PROTECTED);
            failed |= h == 0;
            failed |= hyp::call(HypercallId::VmAddMemory, &[h, backing, vmm::GUEST_RAM, mib * 256]).is_err();
            failed |= hyp::call(HypercallId::VmDestroy, &[h]).is_err();
        });
        check!(!failed, "{key}: a VM call failed");
    }
    // The same for 1 MiB of content to measure: each page hashed (SHA-256) at the donation
    // instead of zeroed.
    let mut failed = false;
    measure("vm_lifecycle_1mib_measured", n, overhead, || {
        let h = create(vm_flags::PROTECTED);
        failed |= h == 0;
        failed |= hyp::call(HypercallId::VmAddMemory, &[h, backing, vmm::GUEST_RAM, 256, shared_abi::measure::add_flags::MEASURE]).is_err();
        failed |= hyp::call(HypercallId::VmDestroy, &[h]).is_err();
    });
    check!(!failed, "vm_lifecycle_1mib_measured: a VM call failed");
    // The guest's own view: a non-protected VM allowed to read the PMU.
    let Some(image) = plat.guest_image() else { crate::fail::fail(format_args!("no bench guest image")) };
    let vm = match vmm::create_with_flags(1, vm_flags::HOST_PMU, 16) {
        Ok(vm) => vm,
        Err(e) => crate::fail::fail(format_args!("VM_CREATE: {e:?}")),
    };
    let booted = vmm::boot(&vm, image, &[], "", false).err();
    check!(booted.is_none(), "booting the bench guest: {booted:?}");
    let r = vmm::pinned::run(&vm, 1, &mut vmm::NoDevice);
    check!(r == Ok(vmm::Outcome::Off), "bench guest ended with {r:?}");
    check!(vmm::destroy(&vm).is_ok(), "destroying the bench guest");
    // The same guest in an MTE VM, for the first-touch row with tag clearing.
    let vm = match vmm::create_with_flags(1, vm_flags::HOST_PMU | vm_flags::MTE, 16) {
        Ok(vm) => vm,
        Err(e) => crate::fail::fail(format_args!("VM_CREATE with MTE: {e:?}")),
    };
    let booted = vmm::boot(&vm, image, &[], "", false).err();
    check!(booted.is_none(), "booting the MTE bench guest: {booted:?}");
    let r = vmm::pinned::run(&vm, 1, &mut Mode(3));
    check!(r == Ok(vmm::Outcome::Off), "MTE bench guest ended with {r:?}");
    check!(vmm::destroy(&vm).is_ok(), "destroying the MTE bench guest");
    // The same guest in SVE VMs of 512 and 2048 bits: an MMIO read with the SVE registers live.
    for sve_vl in [64u64, 256] {
        let vm = match vmm::create_sve_at(1, vm_flags::HOST_PMU, sve_vl, 16, vmm::alloc_pages(16 * 256)) {
            Ok(vm) => vm,
            Err(e) => crate::fail::fail(format_args!("VM_CREATE with SVE of {sve_vl} bytes: {e:?}")),
        };
        let booted = vmm::boot(&vm, image, &[], "", false).err();
        check!(booted.is_none(), "booting the SVE bench guest: {booted:?}");
        let r = vmm::pinned::run(&vm, 1, &mut Mode(5 | (sve_vl / 16) << 8));
        check!(r == Ok(vmm::Outcome::Off), "SVE bench guest ended with {r:?}");
        check!(vmm::destroy(&vm).is_ok(), "destroying the SVE bench guest");
    }
    // The same guest in a protected VM: MEM_SHARE + MEM_UNSHARE of a page (timed by the guest).
    let vm = match vmm::create_with_flags(1, vm_flags::PROTECTED, 16) {
        Ok(vm) => vm,
        Err(e) => crate::fail::fail(format_args!("VM_CREATE, protected: {e:?}")),
    };
    let booted = vmm::boot(&vm, image, &[], "", false).err();
    check!(booted.is_none(), "booting the protected bench guest: {booted:?}");
    let r = vmm::pinned::run(&vm, 1, &mut Mode(4));
    check!(r == Ok(vmm::Outcome::Off), "protected bench guest ended with {r:?}");
    check!(vmm::destroy(&vm).is_ok(), "destroying the protected bench guest");
    println!("host: bench: done");
}
