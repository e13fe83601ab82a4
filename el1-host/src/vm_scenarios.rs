//! Scenarios with VMs: lifecycle, isolation, register integrity, hostile arguments.

use crate::platform::Platform;
use host_kernel::arch;
use host_kernel::hyp::client::Exited;
use crate::vmm::{self, NoDevice, Outcome, Stepper, TestDevice, Vm, GUEST_RAM};
use crate::{hyp, println, PROBE};
use shared_abi::layout::HYP_REGION_BASE;
use shared_abi::msg::{vm_flags, VmCreate};
use shared_abi::{reg, HypError, HypercallId, PAGE_SIZE};

/// Guest RAM per VM.
const GUEST_MIB: u64 = 16;

fn kind(protected: bool) -> &'static str {
    if protected {
        "protected"
    } else {
        "non-protected"
    }
}

fn image(plat: &Platform) -> &'static [u8] {
    match plat.guest_image() {
        Some(i) => i,
        None => crate::fail::fail(format_args!("no guest image: boot with guest=ADDR,SIZE")),
    }
}

/// Creates a VM, loads the guest image into its memory and gives the memory to it.
pub fn start(plat: &Platform, vcpus: u32, protected: bool) -> Vm {
    start_with(plat, vcpus, if protected { vm_flags::PROTECTED } else { 0 })
}

/// [`start`] with explicit VM flags.
fn start_with(plat: &Platform, vcpus: u32, flags: u64) -> Vm {
    start_at(plat, vcpus, flags, vmm::alloc_pages(GUEST_MIB * 256))
}

/// [`start_with`] with the VM's RAM backed by host memory at `backing`.
fn start_at(plat: &Platform, vcpus: u32, flags: u64, backing: u64) -> Vm {
    start_sve_at(plat, vcpus, flags, 0, backing)
}

/// [`start_with`] with SVE of `sve_vl` bytes ([`vm_flags::SVE`] added unless 0).
pub(crate) fn start_sve(plat: &Platform, vcpus: u32, flags: u64, sve_vl: u64) -> Vm {
    start_sve_at(plat, vcpus, flags, sve_vl, vmm::alloc_pages(GUEST_MIB * 256))
}

/// [`start_sve`] with the VM's RAM backed by host memory at `backing`.
fn start_sve_at(plat: &Platform, vcpus: u32, flags: u64, sve_vl: u64, backing: u64) -> Vm {
    start_laid(plat, vcpus, flags, sve_vl, backing).0
}

/// [`start_sve_at`], and where the VM's layout put things.
fn start_laid(plat: &Platform, vcpus: u32, flags: u64, sve_vl: u64, backing: u64) -> (Vm, vmm::vm_platform::Laid) {
    let protected = flags & vm_flags::PROTECTED != 0;
    let vm = match vmm::create_sve_at(vcpus, flags, sve_vl, GUEST_MIB, backing) {
        Ok(vm) => vm,
        Err(e) => crate::fail::fail(format_args!("VM_CREATE: {e:?}")),
    };
    let laid = match vmm::boot(&vm, image(plat), &[], "", false) {
        Ok(l) => l,
        Err(e) => crate::fail::fail(format_args!("booting the guest: {e}")),
    };
    println!(
        "host: VM {:#x}: {}, {vcpus} vCPU(s), {GUEST_MIB} MiB at host {:#x}, entry {:#x}, device tree {:#x}",
        vm.handle,
        kind(protected),
        vm.backing,
        laid.entry,
        laid.dtb
    );
    (vm, laid)
}

fn run_to_off(plat: &Platform, vm: &Vm, dev: &mut dyn TestDevice) {
    let r = vmm::pinned::run(vm, plat.nr_cpus, dev);
    check!(r == Ok(Outcome::Off), "VM {:#x} ended with {r:?}, expected SYSTEM_OFF", vm.handle);
}

pub(crate) fn destroy(vm: &Vm) {
    let r = vmm::destroy(vm);
    check!(r.is_ok(), "VM_DESTROY {:#x}: {r:?}", vm.handle);
}

pub fn lifecycle(plat: &Platform) {
    for (protected, vcpus) in [(true, 1), (true, 2), (false, 1), (false, 2)] {
        let vm = start(plat, vcpus, protected);
        run_to_off(plat, &vm, &mut NoDevice);
        if !protected {
            register_list(&vm);
        }
        destroy(&vm);
        ok!("{} VM with {vcpus} vCPU(s) ran to SYSTEM_OFF and was destroyed", kind(protected));
    }
    let a = start(plat, 1, true);
    let b = start(plat, 2, false);
    run_to_off(plat, &a, &mut NoDevice);
    run_to_off(plat, &b, &mut NoDevice);
    destroy(&b);
    destroy(&a);
    ok!("two VMs alive at once, both ran and were destroyed");
}

/// `VCPU_REG_LIST` names every register, and each one it names can be read.
fn register_list(vm: &Vm) {
    let r = hyp::call(HypercallId::VcpuRegList, &[vm.handle, 0]);
    check!(r.is_ok(), "VCPU_REG_LIST: {r:?}");
    let list: shared_abi::msg::RegList = crate::hyp::read_msg(crate::cpu_id());
    check!(list.count == r.unwrap_or([0; 3])[0] && list.count as usize <= list.ids.len(), "VCPU_REG_LIST count {}", list.count);
    let ids = &list.ids[..list.count as usize];
    for want in [reg::x(0), reg::x(30), reg::PC, reg::PSTATE, reg::SP_EL1, reg::SYSREGS[0].1, reg::MPIDR_EL1] {
        check!(ids.contains(&want), "VCPU_REG_LIST lacks {:?}", reg::name(want));
    }
    for &id in ids {
        let v = hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, id]);
        check!(v.is_ok(), "VCPU_GET_REG {:?} from the list: {v:?}", reg::name(id));
    }
    let pc = hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::PC]).unwrap_or([0; 3])[0];
    ok!("VCPU_REG_LIST names {} registers, all readable (PC {pc:#x})", list.count);
}

/// The host's side of the isolation guest: on the guest's write (the IPA of its secret page),
/// try to read and write the page; answer the guest's read with the verdict.
struct Attack {
    verdict: u64,
    /// Forwarded SMCCC calls the host answered.
    calls: u64,
}

/// The vendor-specific OS service range (owner 7) the isolation VMs forward a part of to the
/// host: `VM_SMCCC_FORWARD` of [`FORWARDED`]`..+0x100`.
const FORWARDED: u64 = 0xC700_0100;

const MARKER: u64 = 0x4057_0000_C0DE;

impl TestDevice for Attack {
    fn call(&mut self, _vm: &Vm, args: [u64; 4]) -> u64 {
        check!(args[0] == FORWARDED && args[1] == 41, "forwarded call {args:x?}: the guest calls {FORWARDED:#x} with x1 = 41");
        self.calls += 1;
        args[1] + 1
    }

    fn write(&mut self, vm: &Vm, ipa: u64) {
        let Some(off) = ipa.checked_sub(GUEST_RAM).filter(|o| *o < vm.pages * PAGE_SIZE) else {
            crate::fail::fail(format_args!("guest named IPA {ipa:#x} outside its RAM"));
        };
        let pa = vm.backing + off;
        if vm.protected {
            let r = PROBE.expect(|| {
                vmm::backing_word(vm, off);
            });
            check!(matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == 0x25 && esr & 0x3F == 0x10), "host read of protected page {pa:#x}: {r:x?}");
            ok!("read of the protected guest's page at {pa:#x} -> synchronous external abort");
            // SAFETY: a deliberate write to a page EL2 must protect; the probe catches the abort.
            let r = PROBE.expect(|| unsafe { core::ptr::write_volatile((pa + 8) as *mut u64, MARKER) });
            check!(matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == 0x25 && esr & (1 << 6) != 0), "host write of protected page: {r:x?}");
            ok!("write to the protected guest's page -> synchronous external abort");
            self.verdict = 1;
        } else {
            let first = vmm::backing_word(vm, off);
            check!(first == 0x005E_C2E7, "shared page word 0 is {first:#x}");
            // SAFETY: a non-protected VM's memory is shared: the host keeps access.
            unsafe { core::ptr::write_volatile((pa + 8) as *mut u64, MARKER) };
            ok!("non-protected guest's page readable and writable by the host");
            self.verdict = 2;
        }
    }
    fn read(&mut self, _: &Vm) -> u64 {
        self.verdict
    }
}

pub fn isolation(plat: &Platform) {
    for protected in [true, false] {
        let vm = start(plat, 1, protected);
        let r = vm.el2().smccc_forward(FORWARDED, 0x100);
        check!(r.is_ok(), "VM_SMCCC_FORWARD: {r:?}");
        let mut dev = Attack { verdict: 0, calls: 0 };
        let before = vmm::host_exits(vm.handle, shared_abi::msg::exit::HYPERCALL);
        run_to_off(plat, &vm, &mut dev);
        check!(dev.verdict != 0, "the guest never showed its page");
        let hypercall_exits = vmm::host_exits(vm.handle, shared_abi::msg::exit::HYPERCALL) - before;
        check!(dev.calls == 1 && hypercall_exits == 1, "{} forwarded calls answered, {hypercall_exits} HYPERCALL exits: expected 1 (only the forwarded call leaves EL2)", dev.calls);
        ok!("{} VM: of its SMCCC calls EL2 does not serve, only the forwarded one reached the host", kind(protected));
        destroy(&vm);
        if protected {
            let words = vm.pages * PAGE_SIZE / 8;
            let r = PROBE.expect(|| {
                for w in 0..words {
                    let v = vmm::backing_word(&vm, w * 8);
                    check!(v == 0, "word {w} of the destroyed VM's memory is {v:#x}");
                }
            });
            check!(r.is_none(), "host cannot read its memory back after destroy: {r:x?}");
            ok!("protected guest's {} pages are back with the host and all zero", vm.pages);
        }
    }
}

/// Whether V0..V31 still hold what `arch::fp_fill(seed)` wrote: the host's own FP/SIMD
/// registers, which EL2 must give back intact after a guest used its own.
pub(crate) fn host_fp_intact(seed: u64) -> bool {
    arch::fp_dump().iter().enumerate().all(|(i, w)| *w == seed + i as u64)
}

pub fn register_integrity(plat: &Platform) {
    const HOST_SEED: u64 = 0x4057_0000_0000_0000;
    for protected in [true, false] {
        let vm = start(plat, 1, protected);
        arch::fp_fill(HOST_SEED);
        run_to_off(plat, &vm, &mut NoDevice);
        check!(host_fp_intact(HOST_SEED), "the host's V0..V31 changed across the guest's runs");
        destroy(&vm);
        ok!("{} VM kept its registers across exits; the host's FP/SIMD registers intact", kind(protected));
    }
}

pub(crate) fn create_raw(vcpus: u32, ipa_bits: u32, flags: u64, sve_vl: u64, reserved: u64) -> Result<u64, HypError> {
    crate::hyp::write_msg(crate::cpu_id(), &VmCreate { nr_vcpus: vcpus, ipa_bits, flags, sve_vl, reserved });
    hyp::call(HypercallId::VmCreate, &[]).map(|r| r[0])
}

pub fn hostile_arguments(plat: &Platform) {
    // VM_CREATE.
    expect_err!(create_raw(0, 36, 0, 0, 0), HypError::InvalidArgument, "VM_CREATE with 0 vCPUs");
    expect_err!(create_raw(99, 36, 0, 0, 0), HypError::InvalidArgument, "VM_CREATE with 99 vCPUs");
    expect_err!(create_raw(1, 48, 0, 0, 0), HypError::InvalidArgument, "VM_CREATE with a 48-bit IPA");
    expect_err!(create_raw(1, 36, 1 << 40, 0, 0), HypError::InvalidArgument, "VM_CREATE with an unknown flag");
    expect_err!(create_raw(1, 36, vm_flags::HOST_PMU | vm_flags::PROTECTED, 0, 0), HypError::Denied, "VM_CREATE of a protected VM with the host's PMU");
    expect_err!(create_raw(1, 36, 0, 0, 7), HypError::BadMessage, "VM_CREATE with a reserved field set");
    // Capacity.
    let mut handles = [0u64; 16];
    for h in handles.iter_mut() {
        *h = create_raw(1, 36, 0, 0, 0).unwrap_or(0);
        check!(*h != 0, "VM_CREATE below capacity failed");
    }
    expect_err!(create_raw(1, 36, 0, 0, 0), HypError::NoCapacity, "VM_CREATE beyond 16 VMs");
    for h in handles {
        check!(hyp::call(HypercallId::VmDestroy, &[h]).is_ok(), "VM_DESTROY {h:#x}");
    }
    // Handles.
    expect_err!(hyp::call(HypercallId::VmDestroy, &[0]), HypError::InvalidHandle, "VM_DESTROY of handle 0");
    expect_err!(hyp::call(HypercallId::VmDestroy, &[handles[0]]), HypError::InvalidHandle, "VM_DESTROY of a destroyed VM");
    expect_err!(hyp::call(HypercallId::VcpuRun, &[handles[0], 0, 0]), HypError::InvalidHandle, "VCPU_RUN of a destroyed VM");
    expect_err!(hyp::call(HypercallId::VcpuRun, &[u64::MAX, 0, 0]), HypError::InvalidHandle, "VCPU_RUN of handle all-ones");

    // Memory.
    let a = vmm::create(1, true, 1).unwrap_or_else(|e| crate::fail::fail(format_args!("{e:?}")));
    let b = vmm::create(1, true, 1).unwrap_or_else(|e| crate::fail::fail(format_args!("{e:?}")));
    let add = |h: u64, pa: u64, ipa: u64, n: u64| hyp::call(HypercallId::VmAddMemory, &[h, pa, ipa, n]);
    expect_err!(add(a.handle, a.backing + 8, GUEST_RAM, 1), HypError::NotAligned, "VM_ADD_MEMORY with an unaligned page");
    expect_err!(add(a.handle, a.backing, GUEST_RAM + 0x800, 1), HypError::NotAligned, "VM_ADD_MEMORY with an unaligned IPA");
    expect_err!(add(a.handle, a.backing, GUEST_RAM, 0), HypError::OutOfRange, "VM_ADD_MEMORY of 0 pages");
    expect_err!(add(a.handle, a.backing, GUEST_RAM, u64::MAX >> 12), HypError::OutOfRange, "VM_ADD_MEMORY with an overflowing range");
    expect_err!(add(a.handle, !0xFFF, GUEST_RAM, 1), HypError::OutOfRange, "VM_ADD_MEMORY of the last page of the address space");
    expect_err!(add(a.handle, a.backing, 1 << 36, 1), HypError::OutOfRange, "VM_ADD_MEMORY at an IPA beyond the VM's IPA size");
    expect_err!(add(a.handle, HYP_REGION_BASE, GUEST_RAM, 1), HypError::NotOwned, "VM_ADD_MEMORY of EL2's memory");
    expect_err!(add(a.handle, crate::hyp::msg_page(0) as u64, GUEST_RAM, 1), HypError::NotOwned, "VM_ADD_MEMORY of a page shared with EL2");
    check!(add(a.handle, a.backing, GUEST_RAM, 4).is_ok(), "a valid VM_ADD_MEMORY");
    expect_err!(add(a.handle, a.backing, GUEST_RAM + 0x10_0000, 1), HypError::NotOwned, "VM_ADD_MEMORY of an already donated page");
    expect_err!(add(b.handle, a.backing + PAGE_SIZE, GUEST_RAM, 1), HypError::NotOwned, "VM_ADD_MEMORY of a page donated to another VM");
    expect_err!(add(a.handle, b.backing, GUEST_RAM + PAGE_SIZE, 1), HypError::InvalidArgument, "VM_ADD_MEMORY over an IPA already backed");
    let r = PROBE.expect(|| {
        vmm::backing_word(&a, 0);
    });
    check!(matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == 0x25), "host read of a donated page: {r:x?}");
    ok!("host read of a donated page -> synchronous external abort");

    // Registers.
    expect_err!(hyp::call(HypercallId::VcpuSetReg, &[a.handle, 0, 0x6030_0000_0013_FFFF, 1]), HypError::UnknownRegister, "VCPU_SET_REG of an unknown register");
    expect_err!(hyp::call(HypercallId::VcpuGetReg, &[a.handle, 0, 0]), HypError::UnknownRegister, "VCPU_GET_REG of register ID 0");
    expect_err!(hyp::call(HypercallId::VcpuGetReg, &[a.handle, 1, reg::PC]), HypError::InvalidArgument, "VCPU_GET_REG of a vCPU the VM does not have");
    expect_err!(hyp::call(HypercallId::VcpuGetReg, &[a.handle, 1 << 40, reg::PC]), HypError::InvalidArgument, "VCPU_GET_REG of vCPU 2^40");
    // SMCCC forwarding (4.2).
    let fwd = |h: u64, first: u64, count: u64| hyp::call(HypercallId::VmSmcccForward, &[h, first, count]);
    expect_err!(fwd(a.handle, 0xC700_0000, 0), HypError::InvalidArgument, "VM_SMCCC_FORWARD of no IDs");
    expect_err!(fwd(a.handle, 1 << 32, 1), HypError::InvalidArgument, "VM_SMCCC_FORWARD from a 33-bit ID");
    expect_err!(fwd(a.handle, 0xFFFF_FF00, 0x101), HypError::OutOfRange, "VM_SMCCC_FORWARD past the last function ID");
    expect_err!(fwd(a.handle, 0x8400_0000, 0x20), HypError::InvalidArgument, "VM_SMCCC_FORWARD of PSCI, which EL2 serves");
    expect_err!(fwd(a.handle, 0xC5FF_FFFF, 2), HypError::InvalidArgument, "VM_SMCCC_FORWARD reaching into the pKVM guest services");
    for i in 0..shared_abi::SMCCC_FORWARD_RANGES as u64 {
        check!(fwd(a.handle, 0xC700_0000 + 0x10 * i, 0x10).is_ok(), "VM_SMCCC_FORWARD range {i}");
    }
    expect_err!(fwd(a.handle, 0xC700_0005, 1), HypError::InvalidArgument, "VM_SMCCC_FORWARD overlapping a forwarded range");
    expect_err!(fwd(a.handle, 0xC800_0000, 1), HypError::NoCapacity, "VM_SMCCC_FORWARD of a ninth range");
    expect_err!(fwd(handles[0], 0xC800_0000, 1), HypError::InvalidHandle, "VM_SMCCC_FORWARD of a destroyed VM");
    check!(hyp::call(HypercallId::VmDestroy, &[a.handle]).is_ok(), "VM_DESTROY a");
    check!(hyp::call(HypercallId::VmDestroy, &[b.handle]).is_ok(), "VM_DESTROY b");

    // A protected VM's registers are sealed once it has run.
    let vm = start(plat, 1, true);
    check!(hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::PC]).is_ok(), "VCPU_GET_REG before the first run");
    run_to_off(plat, &vm, &mut NoDevice);
    expect_err!(hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, 0]), HypError::Denied, "VCPU_SET_REG on a protected VM after it ran");
    expect_err!(hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::x(0)]), HypError::Denied, "VCPU_GET_REG on a protected VM after it ran");
    expect_err!(vm.el2().smccc_forward(0xC700_0000, 1), HypError::Frozen, "VM_SMCCC_FORWARD after the first run");
    destroy(&vm);
    check!(hyp::call(HypercallId::Ping, &[3]) == Ok([3, 0, 0]), "EL2 stopped serving");
    ok!("EL2 still serving after hostile VM calls");
}

/// Firmware pseudo-registers as a VMM restoring a VM would use them.
pub fn firmware_registers(plat: &Platform) {
    const PSCI_VERSION: u64 = reg::FW_PSCI_VERSION;
    let (wa1, wa2, wa3) = (PSCI_VERSION + 1, PSCI_VERSION + 2, PSCI_VERSION + 3);
    let vm = start(plat, 1, false);
    let get = |id: u64| hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, id]).map(|r| r[0]);
    let set = |id: u64, v: u64| hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, id, v, 0]);
    let levels = (get(wa1), get(wa2), get(wa3));
    check!(get(PSCI_VERSION) == Ok(0x10001), "PSCI_VERSION register {:?}", get(PSCI_VERSION));
    ok!("firmware registers: PSCI 1.1, workaround levels {levels:?}");
    expect_err!(set(wa1, 1 << 8), HypError::InvalidArgument, "WORKAROUND_1 with unknown bits");
    expect_err!(set(wa2, 0x10), HypError::InvalidArgument, "WORKAROUND_2 ENABLED without AVAIL");
    expect_err!(set(PSCI_VERSION, 0x10005), HypError::InvalidArgument, "PSCI_VERSION 1.5");
    expect_err!(set(PSCI_VERSION + 4, 0), HypError::UnknownRegister, "firmware register 4");
    check!(set(wa1, 0).is_ok(), "WORKAROUND_1 = NOT_AVAIL (never more than provided) refused");
    check!(set(PSCI_VERSION, 0x10000).is_ok(), "PSCI_VERSION = 1.0 refused");
    ok!("compatible restore accepted (PSCI 1.0)");
    run_to_off(plat, &vm, &mut NoDevice);
    check!(set(PSCI_VERSION, 0x10000).is_ok(), "identical write after the first run refused");
    expect_err!(set(PSCI_VERSION, 0x10001), HypError::Frozen, "changing PSCI_VERSION after the first run");
    destroy(&vm);
}

/// Collects the (index, value) pairs the features guest reports.
struct IdRegReport {
    pending: Option<u64>,
    seen: [(u64, u64); 16],
    n: usize,
}

impl TestDevice for IdRegReport {
    fn write(&mut self, _: &Vm, v: u64) {
        match self.pending.take() {
            None => self.pending = Some(v),
            Some(i) if self.n < self.seen.len() => {
                self.seen[self.n] = (i, v);
                self.n += 1;
            }
            Some(_) => {}
        }
    }
    fn read(&mut self, _: &Vm) -> u64 {
        0
    }
}

/// The ID register with index `i` (CRm = i / 8 + 1, op2 = i % 8).
fn idreg_id(i: u64) -> u64 {
    reg::sysreg(3, 0, 0, i / 8 + 1, i % 8)
}

/// Per-VM ID registers: lowering a field before the first run, refusals, what the guest sees.
pub fn id_registers(plat: &Platform) {
    let vm = start(plat, 1, false);
    let get = |i: u64| hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, idreg_id(i)]).map(|r| r[0]);
    let set = |i: u64, v: u64| hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, idreg_id(i), v, 0]);
    let (isar0, pfr0) = (get(40).unwrap_or(0), get(24).unwrap_or(0));
    println!("host: VM ID_AA64ISAR0_EL1 {isar0:#x} ID_AA64PFR0_EL1 {pfr0:#x}");
    let aes = (isar0 >> 4) & 0xF;
    check!(aes >= 1, "no AES to lower (ISAR0 {isar0:#x})");
    expect_err!(set(24, pfr0 | 1 << 32), HypError::InvalidArgument, "ID_AA64PFR0_EL1 with SVE added");
    expect_err!(set(40, isar0 | 1), HypError::InvalidArgument, "ID_AA64ISAR0_EL1 with a reserved bit set");
    let lowered = (isar0 & !(0xF << 4)) | (aes - 1) << 4;
    check!(set(40, lowered).is_ok(), "lowering ID_AA64ISAR0_EL1.AES refused");
    ok!("ID_AA64ISAR0_EL1.AES lowered from {aes} to {}", aes - 1);
    let mut report = IdRegReport { pending: None, seen: [(0, 0); 16], n: 0 };
    run_to_off(plat, &vm, &mut report);
    check!(report.n == 8, "the guest reported {} registers", report.n);
    for &(i, v) in &report.seen[..report.n] {
        let host = get(i);
        check!(host == Ok(v), "ID register {i}: the guest read {v:#x}, the host reads {host:x?}");
    }
    check!(report.seen.iter().any(|&(i, v)| i == 40 && v == lowered), "the guest did not see the lowered ISAR0");
    ok!("the guest read exactly the VM's ID registers, the lowered AES included");
    check!(set(40, lowered).is_ok(), "identical write after the first run refused");
    expect_err!(set(40, isar0), HypError::Frozen, "changing an ID register after the first run");
    destroy(&vm);
}

/// The pauth guest's test device: gives it its key seed, records its signatures.
struct PauthDevice {
    seed: u64,
    sigs: [u64; 2],
    n: usize,
}

impl TestDevice for PauthDevice {
    fn write(&mut self, _: &Vm, v: u64) {
        if self.n < 2 {
            self.sigs[self.n] = v;
        }
        self.n += 1;
    }
    fn read(&mut self, _: &Vm) -> u64 {
        self.seed
    }
}

/// Two pointer-authentication VMs with different keys, run exit by exit in turn.
pub fn pointer_authentication(plat: &Platform) {
    const HOST_KEY: u64 = 0x4057_4B45_5900_0001;
    arch::set_pauth_keys(HOST_KEY);
    let a = start_with(plat, 1, vm_flags::PTRAUTH | vm_flags::PROTECTED);
    let b = start_with(plat, 1, vm_flags::PTRAUTH);
    let (mut da, mut db) = (PauthDevice { seed: 1, sigs: [0; 2], n: 0 }, PauthDevice { seed: 2, sigs: [0; 2], n: 0 });
    let (mut sa, mut sb) = (Stepper::new(), Stepper::new());
    let (mut done_a, mut done_b) = (None, None);
    let mut switches = 0u64;
    while done_a.is_none() || done_b.is_none() {
        if done_a.is_none() {
            done_a = sa.step(&a, 0, &mut da).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN a: {e:?}")));
        }
        if done_b.is_none() {
            done_b = sb.step(&b, 0, &mut db).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN b: {e:?}")));
        }
        switches += 1;
    }
    check!(done_a == Some(Outcome::Off) && done_b == Some(Outcome::Off), "pauth guests ended {done_a:?} {done_b:?}");
    check!(da.n == 2 && db.n == 2, "pauth guests reported {} and {} signatures", da.n, db.n);
    check!(da.sigs[0] == da.sigs[1] && db.sigs[0] == db.sigs[1], "a guest's signature changed: {:x?} {:x?}", da.sigs, db.sigs);
    check!(da.sigs[0] != db.sigs[0], "two VMs with different keys produced the same signature {:#x}", da.sigs[0]);
    ok!("two pointer-authentication VMs interleaved over {switches} rounds kept their own keys");
    let (k1, k2) = arch::pauth_keys();
    check!(k1 == HOST_KEY && k2 == HOST_KEY, "the host's keys changed: {k1:#x} {k2:#x}");
    ok!("the host's pointer-authentication keys intact");
    destroy(&a);
    destroy(&b);
}

/// The MTE guest's mode, from its test device.
struct MteMode(u64);
impl TestDevice for MteMode {
    fn write(&mut self, _: &Vm, _: u64) {}
    fn read(&mut self, _: &Vm) -> u64 {
        self.0
    }
}

/// Where the boot arguments declare RAM without tag storage (`pkvm.notags=`): the last 64 MiB.
const UNTAGGED: u64 = 0x7C00_0000;

pub fn mte(plat: &Platform) {
    const HOST_MTE: [u64; 4] = [0x0777 << 8 | 0x9, 1 << 16 | 0x0F0F, 0b10, 0b10];
    // The host's own RGSR_EL1, GCR_EL1, TFSR_EL1 and TFSRE0_EL1.
    arch::set_mte_registers(HOST_MTE);
    let run = |vm: &Vm, mode: u64| vmm::pinned::run(vm, plat.nr_cpus, &mut MteMode(mode));
    // Two non-protected MTE VMs on the same pages: the first leaves tags behind (a non-protected
    // VM's memory is not scrubbed on destroy), the second must find them cleared.
    let backing = vmm::alloc_pages(GUEST_MIB * 256);
    let a = start_at(plat, 1, vm_flags::MTE, backing);
    check!(run(&a, 1) == Ok(Outcome::Off), "MTE VM a did not run to SYSTEM_OFF");
    destroy(&a);
    let b = start_at(plat, 1, vm_flags::MTE, backing);
    check!(run(&b, 2) == Ok(Outcome::Off), "MTE VM b did not run to SYSTEM_OFF");
    destroy(&b);
    ok!("pages another MTE VM had tagged reached the next MTE VM with clean tags");
    // Memory without tag storage is refused to an MTE VM when the host offers it (EL2 would
    // also stop the VM at its first touch of such a page, should it get one: unit-tested).
    let c = vmm::create_at(1, vm_flags::MTE, GUEST_MIB, UNTAGGED).unwrap_or_else(|e| crate::fail::fail(format_args!("VM_CREATE: {e:?}")));
    expect_err!(
        hyp::call(HypercallId::VmAddMemory, &[c.handle, UNTAGGED, GUEST_RAM, c.pages]),
        HypError::InvalidArgument,
        "VM_ADD_MEMORY of memory without tag storage to an MTE VM"
    );
    expect_err!(
        hyp::call(HypercallId::VmAddMemory, &[c.handle, UNTAGGED - PAGE_SIZE, GUEST_RAM, 2]),
        HypError::InvalidArgument,
        "VM_ADD_MEMORY of a range ending in memory without tag storage to an MTE VM"
    );
    destroy(&c);
    // The same memory is fine for a VM without MTE, and MTE VMs elsewhere carry on.
    let d = start_at(plat, 1, 0, UNTAGGED);
    check!(run(&d, 3) == Ok(Outcome::Off), "a VM without MTE on untagged memory did not run");
    destroy(&d);
    let e = start_with(plat, 1, vm_flags::MTE | vm_flags::PROTECTED);
    check!(run(&e, 2) == Ok(Outcome::Off), "a protected MTE VM did not run");
    destroy(&e);
    ok!("a VM without MTE used that memory, and a protected MTE VM ran after");
    let host = arch::mte_registers();
    check!(host == HOST_MTE, "the host's MTE registers changed: {host:#x?}, expected {HOST_MTE:#x?}");
    ok!("the host's RGSR_EL1, GCR_EL1, TFSR_EL1 and TFSRE0_EL1 intact");
}

/// A hostile guest and a well-behaved one, run exit by exit in turn. The hostile one is a
/// protected VM with `hostile-protected=1` (then its pKVM memory calls are served, and its MMIO
/// guard is on).
pub fn hostile_guests(plat: &Platform) {
    let hostile_flags = if plat.arg("hostile-protected") == Some("1") { vm_flags::PROTECTED } else { 0 };
    let a = start_with(plat, 1, hostile_flags);
    let b = start_with(plat, 1, vm_flags::PROTECTED);
    let (mut da, mut db) = (MteMode(1), MteMode(2));
    let (mut sa, mut sb) = (Stepper::new(), Stepper::new());
    let (mut done_a, mut done_b) = (None, None);
    let mut rounds = 0u64;
    while done_a.is_none() || done_b.is_none() {
        if done_a.is_none() {
            done_a = sa.step(&a, 0, &mut da).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN hostile: {e:?}")));
        }
        if done_b.is_none() {
            done_b = sb.step(&b, 0, &mut db).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN neighbour: {e:?}")));
        }
        rounds += 1;
    }
    check!(done_b == Some(Outcome::Off), "the neighbour VM ended {done_b:?}");
    check!(matches!(done_a, Some(Outcome::Off) | Some(Outcome::Killed(..))), "the hostile VM ended {done_a:?}");
    ok!("hostile guest ended {:?}, its neighbour ran correctly, {rounds} rounds, {} unassigned MMIO accesses",
        done_a.unwrap_or(Outcome::Off),
        vmm::UNASSIGNED.load(core::sync::atomic::Ordering::Relaxed)
    );
    check!(hyp::call(HypercallId::Ping, &[4]) == Ok([4, 0, 0]), "EL2 stopped serving");
    destroy(&a);
    destroy(&b);
}

/// The soak guest's test device: its seed, then the number of rounds.
struct SoakDev {
    vals: [u64; 2],
    i: usize,
}

impl TestDevice for SoakDev {
    fn write(&mut self, _: &Vm, _: u64) {}
    fn read(&mut self, _: &Vm) -> u64 {
        let v = self.vals[self.i % 2];
        self.i += 1;
        v
    }
}

/// Two VMs (pointer authentication and MTE; one protected) with two vCPUs each, on both host
/// CPUs, interleaved exit by exit and with host work in between: every vCPU checks its
/// registers, keys, MTE state and a tag after every exit (`soak-rounds=N`, default 10,000).
pub fn integrity_soak(plat: &Platform) {
    let rounds: u64 = plat.arg("soak-rounds").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    check!(plat.nr_cpus >= 2, "the soak needs 2 CPUs");
    let a = start_with(plat, 2, vm_flags::PTRAUTH | vm_flags::MTE | vm_flags::PROTECTED);
    let b = start_with(plat, 2, vm_flags::PTRAUTH | vm_flags::MTE);
    vmm::pinned::arm_secondaries();
    vmm::pinned::start_secondary_pair(1, a.handle, b.handle, 1);
    let (mut da, mut db) = (SoakDev { vals: [1, rounds], i: 0 }, SoakDev { vals: [2, rounds], i: 0 });
    let (mut sa, mut sb) = (Stepper::new(), Stepper::new());
    let (mut done_a, mut done_b) = (None, None);
    let mut host_work = 0u64;
    while done_a.is_none() || done_b.is_none() {
        if done_a.is_none() {
            done_a = sa.step(&a, 0, &mut da).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN a: {e:?}")));
        }
        if done_b.is_none() {
            done_b = sb.step(&b, 0, &mut db).unwrap_or_else(|e| crate::fail::fail(format_args!("VCPU_RUN b: {e:?}")));
        }
        // Host work between the guests' runs.
        host_work += hyp::call(HypercallId::Ping, &[host_work]).map_or(0, |r| (r[0] == host_work) as u64);
    }
    vmm::pinned::stop_secondaries();
    vmm::pinned::wait_secondary(1);
    check!(done_a == Some(Outcome::Off) && done_b == Some(Outcome::Off), "soak VMs ended {done_a:?} {done_b:?}");
    ok!("soak: 2 VMs x 2 vCPUs on 2 CPUs, {rounds} checked exits per vCPU, {host_work} host calls in between");
    destroy(&a);
    destroy(&b);
}

/// `PSTATE` decides where the world switch's `ERET` lands: the host may only choose an AArch64
/// EL0 or EL1 mode, so it cannot enter EL2 at a PC of its choosing (the attack: PSTATE EL2h,
/// PC in EL2, then `VCPU_RUN`). The guest then returns to AArch32 EL0 itself, and EL2 stops it.
pub fn illegal_state(plat: &Platform) {
    use shared_abi::msg::kill;
    let vm = start(plat, 1, false);
    let el2_pc = HYP_REGION_BASE + 0x1000;
    for (pstate, what) in [(0x3C9u64, "EL2h"), (0x3C8, "EL2t"), (0x3C5 | 1 << 20, "EL1h with IL"), (0x1D0, "AArch32 usr"), (0x1D3, "AArch32 svc"), (0x3C5 | 1 << 36, "an undefined bit")] {
        let r = hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PSTATE, pstate]);
        check!(r == Err(HypError::InvalidArgument), "VCPU_SET_REG PSTATE {pstate:#x} ({what}): {r:?}");
        ok!("PSTATE {pstate:#x} ({what}) -> InvalidArgument");
    }
    let pc = hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::PC]).map_or(0, |r| r[0]);
    // The PC may be anything (it is a guest address); with PSTATE refused it stays one.
    check!(hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, el2_pc]).is_ok(), "setting PC");
    check!(hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, pc]).is_ok(), "restoring PC");
    let pstate = hyp::call(HypercallId::VcpuGetReg, &[vm.handle, 0, reg::PSTATE]).map_or(0, |r| r[0]);
    check!(pstate == 0x3C5, "PSTATE after the refused writes: {pstate:#x}");
    ok!("PSTATE still {pstate:#x} (EL1h) after the refused writes");
    let r = vmm::pinned::run(&vm, 1, &mut NoDevice);
    check!(matches!(r, Ok(Outcome::Killed(kill::ILLEGAL_STATE, _, _))), "the AArch32 guest ended {r:?}");
    let Ok(Outcome::Killed(_, _, spsr)) = r else { return };
    ok!("guest that returned to AArch32 EL0 stopped by EL2 (ILLEGAL_STATE, PSTATE {spsr:#x})");
    let again = hyp::call(HypercallId::VcpuRun, &[vm.handle, 0, 0]);
    check!(again == Err(HypError::NotRunnable), "VCPU_RUN after the stop: {again:?}");
    ok!("VCPU_RUN of the stopped VM -> NotRunnable");
    destroy(&vm);
}

/// What the leaks guest found, in its order: `TPIDR2_EL0`, `ICC_PMR_EL1`, `ICC_AP0R0_EL1`,
/// `ICC_AP1R0_EL1`, `DISR_EL1`.
struct FoundDev {
    found: [u64; 5],
    n: usize,
}
impl TestDevice for FoundDev {
    fn write(&mut self, _: &Vm, v: u64) {
        if self.n < self.found.len() {
            self.found[self.n] = v;
        }
        self.n += 1;
    }
    fn read(&mut self, _: &Vm) -> u64 {
        0
    }
}

/// Registers a guest can reach are switched or trapped: two VMs run the leaks guest one after
/// the other on the same CPU; each must find reset values, not what the host or the VM before
/// it left in `TPIDR2_EL0`, the GIC priority mask (`ICH_VMCR_EL2`), the active priorities
/// (`ICH_AP0R0_EL2`/`ICH_AP1R0_EL2`, which the guest writes directly while its interface is
/// idle) and `DISR_EL1` (`VDISR_EL2`).
pub fn switched_or_trapped(plat: &Platform) {
    const HOST_TPIDR2: u64 = 0x4057_0000_7770_0001;
    arch::set_tpidr2(HOST_TPIDR2);
    for (round, protected) in [(1, true), (2, false)] {
        let vm = start(plat, 1, protected);
        let mut dev = FoundDev { found: [u64::MAX; 5], n: 0 };
        let r = vmm::pinned::run(&vm, 1, &mut dev);
        check!(r == Ok(Outcome::Off), "leaks guest {round} ended {r:?}");
        check!(dev.n == 5, "leaks guest {round} reported {} values", dev.n);
        let [tpidr2, pmr, ap0r0, ap1r0, disr] = dev.found;
        check!(tpidr2 == 0, "VM {round} found TPIDR2_EL0 {tpidr2:#x} (the host's is {HOST_TPIDR2:#x})");
        check!(pmr == 0, "VM {round} found ICC_PMR_EL1 {pmr:#x}");
        ok!("VM {round} ({}) found TPIDR2_EL0 and ICC_PMR_EL1 at reset values", kind(protected));
        check!(ap0r0 == 0 && ap1r0 == 0, "VM {round} found ICC_AP0R0_EL1 {ap0r0:#x}, ICC_AP1R0_EL1 {ap1r0:#x}");
        ok!("VM {round} ({}) found ICC_AP0R0_EL1 and ICC_AP1R0_EL1 at reset values", kind(protected));
        check!(disr == 0, "VM {round} found DISR_EL1 {disr:#x}");
        ok!("VM {round} ({}) found DISR_EL1 at its reset value", kind(protected));
        destroy(&vm);
    }
    let host = arch::tpidr2();
    check!(host == HOST_TPIDR2, "the host's TPIDR2_EL0 changed to {host:#x}");
    ok!("the host's TPIDR2_EL0 intact");
}

/// The host's side of the vgic guest: queue SPI 40 (level-sensitive) when the guest says it is
/// ready, see it taken and its deactivation reported, then deliver the SGI the guest sends.
struct VgicDev {
    /// Flags of the last exit.
    flags: u32,
    /// The guest's reports (INTIDs it took).
    took: [u64; 2],
    n: usize,
    /// The SGI exit: INTID, targets, register.
    sgi: Option<[u64; 3]>,
}

impl TestDevice for VgicDev {
    fn exit(&mut self, vm: &Vm, e: &Exited) {
        use shared_abi::msg::{irq, Exit};
        self.flags = e.record.flags;
        if let Exit::Sgi { intid, targets, reg, .. } = e.exit {
            self.sgi = Some([intid as u64, targets, reg]);
            for t in (0..8).filter(|t| targets & (1 << t) != 0) {
                let r = vm.el2().vcpu(t).set_irq(intid as u32, irq::config(0x80, true, irq::PENDING, false));
                check!(r.is_ok(), "queueing SGI {intid} for vCPU {t}: {r:?}");
            }
        }
    }

    fn read(&mut self, vm: &Vm) -> u64 {
        use shared_abi::msg::irq::{self, config, PENDING};
        let level = config(0x80, true, PENDING, true) as u64;
        let set = |vintid: u64, cfg: u64| hyp::call(HypercallId::VcpuSetIrq, &[vm.handle, 0, vintid, cfg]);
        // Hostile requests first: each refused with its documented error, nothing queued.
        check!(set(40, level | irq::HW as u64 | 27 << irq::PINTID_SHIFT) == Err(HypError::Denied), "HW bit accepted");
        check!(set(40, config(0x81, true, PENDING, true) as u64) == Err(HypError::InvalidArgument), "unimplemented priority bit accepted");
        check!(set(1020, level) == Err(HypError::InvalidArgument), "special INTID accepted");
        check!(set(40, config(0x80, true, 0, true) as u64) == Err(HypError::InvalidArgument), "empty state accepted");
        check!(set(40, level) == Ok([0, 0, 0]), "SPI 40 not queued in LR0");
        check!(set(40, level) == Err(HypError::Busy), "SPI 40 queued twice");
        ok!("hostile list-register requests refused; SPI 40 queued in LR0");
        0
    }

    fn write(&mut self, vm: &Vm, v: u64) {
        if self.n < 2 {
            self.took[self.n] = v;
        }
        self.n += 1;
        if self.n == 1 {
            // The guest EOIed the level-sensitive SPI before this exit: EL2 says so.
            check!(self.flags & shared_abi::msg::exit::FLAG_EOI != 0, "no EOI flag after the guest's EOI (flags {:#x})", self.flags);
            let r = hyp::call(HypercallId::VcpuIrqState, &[vm.handle, 0]);
            check!(r == Ok([0, 0, 0]), "VCPU_IRQ_STATE: {r:?}");
            let s: shared_abi::msg::VgicState = crate::hyp::read_msg(crate::cpu_id());
            check!(s.used == 0 && s.nr_lrs >= 1, "list registers after the EOI: used {:#x} of {}", s.used, s.nr_lrs);
            check!(s.eoi[0] == 1 << 40 && s.eoi[1..].iter().all(|&w| w == 0), "EOI report {:x?}", s.eoi);
            ok!("the guest's EOI of SPI 40 reported (flag and VCPU_IRQ_STATE), its list register free");
        }
    }
}

pub fn vgic(plat: &Platform) {
    let vm = start(plat, 1, true);
    let mut dev = VgicDev { flags: 0, took: [0; 2], n: 0, sgi: None };
    let r = vmm::pinned::run(&vm, 1, &mut dev);
    check!(r == Ok(Outcome::Off), "vgic guest ended {r:?}");
    check!(dev.n == 2 && dev.took == [40, 5], "the guest took {:?} ({} reports)", dev.took, dev.n);
    ok!("protected guest took SPI 40 from its list register");
    check!(dev.sgi == Some([5, 1, shared_abi::msg::sgi::SGI1R]), "SGI exit {:?}", dev.sgi);
    ok!("guest SGI 5 exited to the host (targets 0x1, ICC_SGI1R_EL1), queued back and taken");
    let r = hyp::call(HypercallId::VcpuIrqState, &[vm.handle, 0]);
    check!(r == Ok([0, 0, 0]), "VCPU_IRQ_STATE at the end: {r:?}");
    destroy(&vm);
}

/// What the measurement guest reports: its measurement and a digest of its sealing secret.
#[derive(Default)]
struct Reported {
    words: [u64; 8],
    n: usize,
}

impl TestDevice for Reported {
    fn write(&mut self, _: &Vm, v: u64) {
        if let Some(w) = self.words.get_mut(self.n) {
            *w = v;
        }
        self.n += 1;
    }
    fn read(&mut self, _: &Vm) -> u64 {
        0
    }
}

impl Reported {
    fn measurement(&self) -> [u8; 32] {
        let mut m = [0u8; 32];
        for (i, w) in self.words[..4].iter().enumerate() {
            m[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        m
    }
}

fn hex(bytes: &[u8; 32]) -> impl core::fmt::Display + '_ {
    struct Hex<'a>(&'a [u8; 32]);
    impl core::fmt::Display for Hex<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
    Hex(bytes)
}

/// `vm-measurement`: a protected VM and a non-protected one of the same image. Each guest reads
/// the measurement EL2 wrote into its handover page; it must be the one `VM_MEASUREMENT`
/// gives the host (and, checked by the test runner, the one computed offline); unmeasured RAM,
/// which the host filled with 0x5A, reaches the protected guest zeroed; the two VMs get
/// different secrets; the protected VM's handover page is out of the host's reach.
pub fn measurement(plat: &Platform) {
    let mut reported = [Reported::default(), Reported::default()];
    for (protected, rep) in [true, false].into_iter().zip(reported.iter_mut()) {
        let backing = vmm::alloc_pages(GUEST_MIB * 256);
        // SAFETY: pages just taken for this VM, the host's until VM_ADD_MEMORY.
        unsafe { core::ptr::write_bytes(backing as *mut u8, 0x5A, (GUEST_MIB << 20) as usize) };
        let (vm, laid) = start_laid(plat, 1, if protected { vm_flags::PROTECTED } else { 0 }, 0, backing);
        let before = vm.el2().measurement();
        check!(before == Ok(None), "measurement before the first run: {before:?}");
        run_to_off(plat, &vm, rep);
        check!(rep.n == 8, "the guest reported {} words, expected 8", rep.n);
        let m = vm.el2().measurement();
        check!(m == Ok(Some(rep.measurement())), "VM_MEASUREMENT {m:x?} is not what the guest read {:x?}", rep.measurement());
        println!("host: {} VM measurement {}", kind(protected), hex(&rep.measurement()));
        ok!("{} VM: VM_MEASUREMENT is the measurement the guest read from its handover page", kind(protected));
        let handover = vm.backing + laid.handover;
        // SAFETY: the VM's handover page: host RAM EL2 decides about; an abort is caught.
        let r = PROBE.expect(|| unsafe { core::ptr::read_volatile(handover as *const u64); });
        if protected {
            check!(matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == 0x25 && esr & 0x3F == 0x10), "host read of the protected VM's handover page: {r:x?}");
            ok!("the protected VM's handover page (its secrets) is out of the host's reach");
        } else {
            check!(r.is_none(), "host read of a shared VM's handover page faulted: {r:x?}");
        }
        destroy(&vm);
    }
    check!(reported[0].measurement() != reported[1].measurement(), "the two VMs have one measurement");
    check!(reported[0].words[4..] != reported[1].words[4..], "the two VMs have one sealing secret");
    ok!("a protected and a non-protected VM of one image: different measurements, different secrets");
}
