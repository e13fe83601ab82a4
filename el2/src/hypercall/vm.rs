//! The VM calls: `VM_CREATE`, `VM_DESTROY` and `VM_ADD_MEMORY`.

use crate::cpu::fwreg::FwRegs;
use crate::cpu::idreg::{self, VmPolicy};
use crate::cpu::sve::SveRefused;
use crate::guest::smccc_forward::{ForwardRefused, SmcccForward};
use crate::guest::vcpu::{power, VcpuGuard};
use crate::guest::vm::{Measured, Vm};
use crate::guest::{MAX_IPA_BITS, MAX_VCPUS, MIN_IPA_BITS};
use crate::hw::Hw;
use crate::hyp::Hyp;
use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::mem::pgtable::TableMemory;
use crate::mem::guest::Region;
use crate::mem::protect::{Content, Refused};
use arrayvec::ArrayVec;
use core::sync::atomic::Ordering;
use shared_abi::measure::{add_flags, Measurement};
use shared_abi::msg::{vm_flags, VmCreate, VmMeasurement};
use shared_abi::{HypError, HypResult};

/// `VM_CREATE`.
pub(crate) fn vm_create<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, arch: &impl Hw) -> HypResult {
    let req: VmCreate = hyp.msg.read(cpu)?;
    if req.reserved != 0 {
        return Err(HypError::BadMessage);
    }
    if req.nr_vcpus == 0 || req.nr_vcpus as usize > MAX_VCPUS {
        return Err(HypError::InvalidArgument);
    }
    if !(MIN_IPA_BITS..=MAX_IPA_BITS).contains(&req.ipa_bits) || req.flags & !vm_flags::ALL != 0 {
        return Err(HypError::InvalidArgument);
    }
    let sve = req.flags & vm_flags::SVE != 0;
    if sve && !shared_abi::msg::sve::valid_vl(req.sve_vl) || !sve && req.sve_vl != 0 {
        // Not an SVE vector length, or a length without the flag.
        return Err(HypError::InvalidArgument);
    }
    // From here on the CPU view is fixed: CPUs that come online later must be at least as
    // capable as what this VM is given (see `cpu::features`).
    let cpus = hyp.fix_cpu_features();
    if req.ipa_bits > cpus.max_ipa_bits() as u32 {
        // Some CPU's PARange is smaller than the IPA size asked for, or a 40-bit IPA on a
        // CPU with less than a 44-bit PA (its stage 2 could not start at level 0).
        return Err(HypError::InvalidArgument);
    }
    let mte = req.flags & vm_flags::MTE != 0;
    if mte && !cpus.mte2() {
        // Some CPU has no allocation tags in memory.
        return Err(HypError::Denied);
    }
    let ptrauth = req.flags & vm_flags::PTRAUTH != 0;
    if ptrauth && !cpus.ptrauth() {
        // Some CPU lacks address or generic authentication, CPUs differ in algorithm or
        // PAuth level, or an IMPLEMENTATION DEFINED algorithm on CPUs that are not identical.
        return Err(HypError::Denied);
    }
    // The VM's SVE length in quadwords (0: no SVE): one every CPU gives alike.
    let sve_vq = match sve.then(|| cpus.sve().vm_vq(req.sve_vl)) {
        None => 0,
        Some(Ok(vq)) => vq,
        // Checked above: a valid length.
        Some(Err(SveRefused::NotALength)) => return Err(HypError::InvalidArgument),
        // Some CPU lacks SVE or this length, or CPUs differ at or below it.
        Some(Err(SveRefused::NotGiven)) => return Err(HypError::Denied),
    };
    if req.flags & vm_flags::HOST_PMU != 0 && req.flags & vm_flags::PROTECTED != 0 {
        // A protected guest must not share the host's PMU (a side channel both ways).
        return Err(HypError::Denied);
    }
    let mut mem = hyp.mem.lock();
    let slot = mem.vms.free_slot().ok_or(HypError::NoCapacity)?;
    // The slot's vCPUs may be briefly claimed by a call with a stale handle.
    let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
    for v in &hyp.vcpus[slot] {
        guards.push(v.claim().ok_or(HypError::Busy)?);
    }
    let fwb = cpus.s2fwb();
    let guest_memory = mem.guest_memory_new(fwb, req.ipa_bits as u8, hyp.host_reserve)?;
    let vms = &mut mem.vms;
    let policy = VmPolicy {
        mte,
        ptrauth,
        pmu: req.flags & vm_flags::HOST_PMU != 0,
        ipa_bits: req.ipa_bits as u8,
        protected: req.flags & vm_flags::PROTECTED != 0,
        sve,
    };
    let idreg_limit = idreg::restrict(cpus.view(), &policy);
    for (a, v) in hyp.idregs[slot].iter().zip(idreg_limit) {
        a.store(v, Ordering::Relaxed);
    }
    let handle = vms.next_handle(slot);
    for (i, (g, v)) in guards.iter_mut().zip(&hyp.vcpus[slot]).enumerate() {
        g.reset();
        g.sve_vq = sve_vq;
        v.power.store(if i == 0 { power::ON } else { power::OFF }, Ordering::Release);
    }
    let protected = req.flags & vm_flags::PROTECTED != 0;
    if protected && !vms.iter().any(|vm| vm.protected) {
        // The first protected VM: from now on a reset must not hand RAM to the next boot
        // unscrubbed. Under the memory lock, like the host's own MEM_PROTECT calls, so the
        // host cannot turn protection off in between. Firmware without MEM_PROTECT (QEMU)
        // answers NOT_SUPPORTED; the VM is created all the same.
        let r = arch.mem_protect(1);
        log::debug!("PSCI MEM_PROTECT(1) for the first protected VM: {r}");
    }
    vms.insert(slot, Vm {
        handle,
        protected,
        nr_vcpus: req.nr_vcpus as usize,
        vmid: slot as u8 + 1,
        mem: guest_memory,
        ran: false,
        killed: false,
        ended: false,
        host_pmu: req.flags & vm_flags::HOST_PMU != 0,
        fw: FwRegs::new(cpus.fw_provided()),
        idreg_limit,
        ptrauth,
        mte,
        sve_vq,
        fwb,
        // 0 until the host sets it: on QEMU 7.2 an enabled virtual timer whose
        // CNTV_CVAL_EL0 + CNTVOFF_EL2 wraps re-arms QEMU's timer in the past for ever and
        // hangs the whole machine, and any non-zero offset lets a guest choose such a CVAL
        // (a guest must not be able to stop the emulator). A host that sets an offset takes
        // that on itself (`guest-storm-cval-max-offset`).
        cntvoff: 0,
        measurement: Measured::Building(Measurement::new(req.nr_vcpus, req.ipa_bits, req.flags, req.sve_vl)),
        smccc_forward: SmcccForward::NONE,
        handover: None,
    });
    crate::guest::memory::publish_layout(hyp, &mem, handle);
    if let Some(run) = hyp.runs.get(slot) {
        run.reset();
    }
    Ok([handle, 0, 0])
}

/// `VM_DESTROY`.
pub(crate) fn vm_destroy<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, arch: &impl Hw) -> HypResult {
    let mut mem = hyp.mem.lock();
    let (slot, _) = mem.vms.lookup(handle)?;
    let mut guards = ArrayVec::<VcpuGuard<'_>, MAX_VCPUS>::new();
    for v in &hyp.vcpus[slot] {
        guards.push(v.claim().ok_or(HypError::Busy)?);
    }
    // Checked: commit. Nothing below can fail.
    let Some(vm) = mem.vms.remove(slot) else { return Err(HypError::InvalidHandle) };
    // The slot's hint closes until its next VM publishes its own.
    if let Some(hint) = hyp.layout.get(slot) {
        let (lo, hi, guarded) = crate::guest::vm::LayoutHint::CLOSED;
        hint.publish(lo, hi, guarded);
    }
    mem.guest_reclaim_scrub(vm, hyp.platform.untagged, arch);
    // Nothing of the VM's vCPUs stays in EL2's memory: registers, and a guest's pending
    // `CPU_ON` entry point and context.
    for (g, v) in guards.iter_mut().zip(&hyp.vcpus[slot]) {
        g.reset();
        v.power.store(power::OFF, Ordering::Release);
        v.on_entry.store(0, Ordering::Relaxed);
        v.on_context.store(0, Ordering::Relaxed);
        v.sgi_linked.store(false, Ordering::Relaxed);
        v.sgi_pending.store(0, Ordering::Relaxed);
        v.running_on.store(0, Ordering::Relaxed);
    }
    if let Some(run) = hyp.runs.get(slot) {
        run.coalesced.reset();
    }
    Ok([0; 3])
}

/// `VM_ADD_MEMORY`.
pub(crate) fn vm_add_memory<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, pa: u64, ipa: u64, pages: u64, flags: u64, hw: &impl Hw) -> HypResult {
    let content = match flags {
        0 => Content::Zeroed,
        add_flags::MEASURE => Content::Measured,
        add_flags::HANDOVER => Content::Handover,
        _ => return Err(HypError::InvalidArgument),
    };
    if !pa.is_multiple_of(PAGE_SIZE) || !ipa.is_multiple_of(PAGE_SIZE) {
        return Err(HypError::NotAligned);
    }
    let size = pages.checked_mul(PAGE_SIZE).filter(|&s| s > 0).ok_or(HypError::OutOfRange)?;
    let phys = PhysRange::from_size(PhysAddr(pa), size).ok_or(HypError::OutOfRange)?;
    ipa.checked_add(size).ok_or(HypError::OutOfRange)?;
    if !hyp.platform.ram.contains_range(&phys) {
        return Err(HypError::OutOfRange);
    }
    let region = Region { ipa, pa: PhysAddr(pa), pages };
    let mut mem = hyp.mem.lock();
    mem.host_give_guest(handle, region, content, hyp.platform.untagged, hw)?;
    crate::guest::memory::publish_layout(hyp, &mem, handle);
    Ok([0; 3])
}

/// `VM_TOPUP_TABLES`: the host gives `pages` pages at `pa` as table pages for the VM's stage
/// 2. Checked here: alignment (`NotAligned`), no pages or a range past RAM (`OutOfRange`); the
/// rest by [`crate::mem::MemState::host_donate_tables`].
pub(crate) fn vm_topup_tables<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, pa: u64, pages: u64, hw: &impl Hw) -> HypResult {
    if !pa.is_multiple_of(PAGE_SIZE) {
        return Err(HypError::NotAligned);
    }
    let size = pages.checked_mul(PAGE_SIZE).filter(|&s| s > 0).ok_or(HypError::OutOfRange)?;
    let run = PhysRange::from_size(PhysAddr(pa), size).ok_or(HypError::OutOfRange)?;
    if !hyp.platform.ram.contains_range(&run) {
        return Err(HypError::OutOfRange);
    }
    hyp.mem.lock().host_donate_tables(handle, run, hyp.host_reserve, hw)?;
    Ok([0; 3])
}

/// `VM_MMIO_GUARD`: the host declares a granule MMIO before a protected VM's first run.
pub(crate) fn vm_mmio_guard<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ipa: u64) -> HypResult {
    let mut mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup_mut(handle)?;
    if !vm.protected {
        return Err(HypError::InvalidArgument);
    }
    let Measured::Building(_) = vm.measurement else { return Err(HypError::Denied) };
    if vm.ran {
        return Err(HypError::Denied);
    }
    let guarded = mem.guest_mmio_guard(handle, ipa);
    // Whatever the answer, as the guest's MMIO_GUARD does.
    crate::guest::memory::publish_layout(hyp, &mem, handle);
    guarded.map_err(|e| match e {
        Refused::NotAligned => HypError::NotAligned,
        Refused::NoRoom => HypError::NoCapacity,
        Refused::NotMmio | Refused::NotRam | Refused::WrongState => HypError::InvalidArgument,
    })?;
    if let Ok((_, vm)) = mem.vms.lookup_mut(handle) {
        if let Measured::Building(m) = &mut vm.measurement {
            m.mmio_guard(ipa);
        }
    }
    Ok([0; 3])
}

/// `VM_SMCCC_FORWARD`: the `count` function IDs from `first` go to the host when the VM's
/// guest calls them and EL2 does not serve them. Before the first run only (afterwards
/// `Frozen`: the run loop reads the ranges without asking whether they changed).
pub(crate) fn vm_smccc_forward<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, first: u64, count: u64) -> HypResult {
    let mut mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup_mut(handle)?;
    if vm.ran {
        return Err(HypError::Frozen);
    }
    vm.smccc_forward.add(first, count).map_err(|e| match e {
        ForwardRefused::Empty | ForwardRefused::Overlap => HypError::InvalidArgument,
        ForwardRefused::Overflow => HypError::OutOfRange,
        ForwardRefused::Full => HypError::NoCapacity,
    })?;
    // Which of its calls reach the host is part of what the guest is (before the first run
    // the measurement is still being built: `ran` is set where it is sealed).
    if let Measured::Building(m) = &mut vm.measurement {
        m.smccc_forward(first, count);
    }
    Ok([0; 3])
}

/// `VM_MMIO_COALESCE`: the VM's coalesced MMIO zone ([`crate::guest::coalesce`]), replacing
/// any earlier one. Before the first run only (afterwards `Frozen`: the VM's runs read the
/// zone from its slot's [`crate::guest::vm::Coalesced`] without the lock).
pub(crate) fn vm_mmio_coalesce<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, ipa: u64, len: u64) -> HypResult {
    let mut mem = hyp.mem.lock();
    let (slot, vm) = mem.vms.lookup_mut(handle)?;
    if vm.ran {
        return Err(HypError::Frozen);
    }
    let zone = crate::guest::coalesce::Zone::new(ipa, len)?;
    // Read by the VM's runs without the lock: they all begin with a first run under it, after
    // which the zone no longer changes (`Frozen` above).
    hyp.runs.get(slot).ok_or(HypError::InvalidHandle)?.coalesced.set_zone(zone);
    Ok([0; 3])
}

/// `VM_MEASUREMENT`.
pub(crate) fn vm_measurement<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64) -> HypResult {
    hyp.msg.page(cpu)?;
    let info = {
        let mem = hyp.mem.lock();
        let (_, vm) = mem.vms.lookup(handle)?;
        match &vm.measurement {
            Measured::Sealed(m) => VmMeasurement { measurement: *m, sealed: 1, reserved: 0 },
            Measured::Building(_) => VmMeasurement::default(),
        }
    };
    hyp.msg.write(cpu, &info)?;
    Ok([info.sealed as u64, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::vcpu::VcpuCtx;
    use crate::guest::vm::handle_slot;
    use crate::guest::MAX_VMS;
    use crate::testing::*;

    #[test]
    fn create_validates_the_request() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let cases = [
            (VmCreate { nr_vcpus: 0, ipa_bits: 36, flags: 0, sve_vl: 0, reserved: 0 }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 9, ipa_bits: 36, flags: 0, sve_vl: 0, reserved: 0 }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 31, flags: 0, sve_vl: 0, reserved: 0 }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 41, flags: 0, sve_vl: 0, reserved: 0 }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 1 << 9, sve_vl: 0, reserved: 0 }, HypError::InvalidArgument),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: vm_flags::HOST_PMU | vm_flags::PROTECTED, sve_vl: 0, reserved: 0 }, HypError::Denied),
            (VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, sve_vl: 0, reserved: 1 }, HypError::BadMessage),
        ];
        for (req, err) in cases {
            f.ram.0[..32].copy_from_slice(req.as_bytes());
            assert_eq!(f.call(0, H::VmCreate, &[]), Err(err), "{req:?}");
        }
        assert_eq!(f.hyp.mem.lock().vms.count(), 0);
    }

    /// `VM_CREATE` of one vCPU with `flags` and an SVE length of `sve_vl` bytes.
    fn create_sve(f: &mut Fixture, flags: u64, sve_vl: u64) -> HypResult {
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).ok();
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 2, ipa_bits: 36, flags, sve_vl, reserved: 0 }.as_bytes());
        f.call(0, H::VmCreate, &[])
    }

    #[test]
    fn sve_lengths_are_refused_unless_every_cpu_gives_them() {
        use vm_flags::{PROTECTED, SVE};
        // The fixture's CPU: 128, 256 and 512 bits.
        let mut f = fixture();
        for (flags, vl, err) in [
            (SVE, 0, HypError::InvalidArgument),
            (SVE, 24, HypError::InvalidArgument),
            (SVE, 272, HypError::InvalidArgument),
            (SVE, u64::MAX, HypError::InvalidArgument),
            (0, 64, HypError::InvalidArgument),
            (PROTECTED, 16, HypError::InvalidArgument),
            (SVE, 48, HypError::Denied),
            (SVE | PROTECTED, 128, HypError::Denied),
            (SVE, 256, HypError::Denied),
        ] {
            assert_eq!(create_sve(&mut f, flags, vl), Err(err), "flags {flags:#x}, {vl} bytes");
        }
        assert_eq!(f.hyp.mem.lock().vms.count(), 0);
        for vl in [16, 32, 64] {
            let h = create_sve(&mut f, SVE | PROTECTED, vl).unwrap()[0];
            let mem = f.hyp.mem.lock();
            let (slot, vm) = mem.vms.lookup(h).unwrap();
            assert_eq!(vm.sve_vq as u64, vl / 16);
            drop(mem);
            for v in &f.hyp.vcpus[slot][..2] {
                assert_eq!(v.claim().unwrap().sve_vq as u64, vl / 16, "every vCPU has the VM's length");
            }
            // The guest's ID registers say SVE (SVE2, the CPUs' AES).
            let pfr0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(4, 0))]).unwrap()[0];
            let zfr0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(4, 4))]).unwrap()[0];
            assert_eq!((pfr0 >> 32 & 0xF, zfr0), (1, 1 | 2 << 4));
            f.call(0, H::VmDestroy, &[h]).unwrap();
        }
        // Without the flag: hidden, as before SVE was given to VMs.
        let h = create_sve(&mut f, PROTECTED, 0).unwrap()[0];
        let pfr0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(4, 0))]).unwrap()[0];
        let zfr0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(4, 4))]).unwrap()[0];
        assert_eq!((pfr0 >> 32 & 0xF, zfr0), (0, 0));
        assert_eq!(f.hyp.vcpus[handle_slot(h)][0].claim().unwrap().sve_vq, 0);
    }

    #[test]
    fn a_cpu_without_the_length_or_without_sve_takes_it_from_every_vm() {
        use crate::cpu::features::CpuId;
        use crate::cpu::sve::VqSet;
        let mut f = fixture();
        let view = *f.hyp.cpus.lock().view();
        let other = |sve: VqSet, pfr0: u64| {
            let mut regs = view;
            regs[idreg::idx(4, 0)] = pfr0;
            CpuId { midr: 0x410F_D0C0, regs, ctr: FIXTURE_CTR, ich_vtr: Some(QEMU_ICH_VTR), sve }
        };
        // Open view: a CPU of 256 bits joins; 512 bits is gone for VMs, and HYP_INFO says so.
        f.hyp.cpu_entered_el2(1, other(VqSet(0b11), view[idreg::idx(4, 0)])).unwrap();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        f.call(0, H::HypInfo, &[]).unwrap();
        let info = shared_abi::msg::HypInfo::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        assert_eq!(info.sve_vls, 0b11, "128 and 256 bits");
        assert_eq!(create_sve(&mut f, vm_flags::SVE, 64), Err(HypError::Denied));
        let h = create_sve(&mut f, vm_flags::SVE, 32).unwrap()[0];
        f.call(0, H::VmDestroy, &[h]).unwrap();
        // Fixed now: CPU 1 comes back without SVE; refused (it would run a VM of 256 bits).
        assert_eq!(
            f.hyp.cpu_entered_el2(1, other(VqSet::NONE, view[idreg::idx(4, 0)] & !(0xF << 32))),
            Err(crate::cpu::features::Weaker::Field { reg: "ID_AA64PFR0_EL1", field: "SVE" })
        );
        assert_eq!(f.hyp.cpu_entered_el2(1, other(VqSet(0b1), view[idreg::idx(4, 0)])), Err(crate::cpu::features::Weaker::Field { reg: "ZCR_EL2", field: "LEN" }), "128 bits only");
        assert_eq!(f.hyp.cpu_entered_el2(1, other(VqSet(0b111), view[idreg::idx(4, 0)])), Ok(()), "384 bits: above what VMs may have, so no guest can select it");
        assert_eq!(f.hyp.cpu_entered_el2(1, other(VqSet(0b1011), view[idreg::idx(4, 0)])), Ok(()), "the lengths up to 256 bits alike");
        // A CPU without SVE in an open view takes SVE from VMs altogether.
        let mut f = fixture();
        f.hyp.cpu_entered_el2(1, other(VqSet::NONE, view[idreg::idx(4, 0)] & !(0xF << 32))).unwrap();
        assert_eq!(create_sve(&mut f, vm_flags::SVE, 16), Err(HypError::Denied));
    }

    #[test]
    fn the_sve_length_is_measured() {
        let mut f = fixture();
        let h = create_sve(&mut f, vm_flags::SVE | vm_flags::PROTECTED, 32).unwrap()[0];
        let mem = f.hyp.mem.lock();
        let Measured::Building(m) = &mem.vms.lookup(h).unwrap().1.measurement else { panic!("sealed") };
        let want = Measurement::new(2, 36, vm_flags::SVE | vm_flags::PROTECTED, 32).seal(&[0; 31], 0, VcpuCtx::new().pstate);
        assert_eq!(m.clone().seal(&[0; 31], 0, VcpuCtx::new().pstate), want);
        assert_ne!(want, Measurement::new(2, 36, vm_flags::SVE | vm_flags::PROTECTED, 64).seal(&[0; 31], 0, VcpuCtx::new().pstate));
    }

    #[test]
    fn a_40_bit_ipa_needs_a_44_bit_pa() {
        // A 4 KiB-granule stage 2 starting at level 0 (VTCR_EL2.SL0 = 0b10) is invalid below a
        // 44-bit PA (Arm ARM AArch64.S2InvalidSL); a 40-bit IPA without concatenated tables
        // needs it. With every CPU at PARange 40 bits the largest guest IPA is 39 bits.
        for (parange, largest) in [(2u64, 39u32), (3, 39), (4, 40), (5, 40), (1, 36)] {
            let mut f = fixture();
            f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
            f.hyp.cpus.lock().view_mut()[idreg::idx(7, 0)] = parange;
            let ask = |f: &mut Fixture, ipa_bits: u32| {
                f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits, flags: 0, sve_vl: 0, reserved: 0 }.as_bytes());
                f.call(0, H::VmCreate, &[])
            };
            if largest < 40 {
                assert_eq!(ask(&mut f, largest + 1), Err(HypError::InvalidArgument), "PARange {parange}: {} bits", largest + 1);
            }
            let h = ask(&mut f, largest).unwrap_or_else(|e| panic!("PARange {parange}: {largest} bits: {e:?}"))[0];
            let mem = f.hyp.mem.lock();
            let level = mem.vms.lookup(h).unwrap().1.mem.s2().start_level();
            assert_eq!(level, if largest == 40 { 0 } else { 1 }, "PARange {parange}");
        }
    }

    #[test]
    fn capacity_is_an_error_and_handles_go_stale() {
        let mut f = fixture();
        let handles: Vec<u64> = (0..MAX_VMS).map(|_| create(&mut f, 1, 0)).collect();
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, sve_vl: 0, reserved: 0 }.as_bytes());
        assert_eq!(f.call(0, H::VmCreate, &[]), Err(HypError::NoCapacity));
        f.call(0, H::VmDestroy, &[handles[3]]).unwrap();
        let again = create(&mut f, 1, 0);
        assert_eq!(again & 0xFF, handles[3] & 0xFF, "slot reused");
        assert_ne!(again, handles[3], "with a new generation");
        assert_eq!(f.call(0, H::VmDestroy, &[handles[3]]), Err(HypError::InvalidHandle), "stale handle");
        assert_eq!(f.call(0, H::VcpuRun, &[handles[3], 0, 0]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VmDestroy, &[0]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VmDestroy, &[u64::MAX]), Err(HypError::InvalidHandle));
    }

    /// Every refusal of `VM_TOPUP_TABLES`, each changing nothing; what a top-up does; and that
    /// the pages come back at destroy.
    #[test]
    fn table_pages_are_refused_unless_the_host_owns_them_outright() {
        use crate::host::trap::host_s2_fault;
        use crate::mem::owner::Component;
        use crate::mem::protect::HostFault;
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        let other = create(&mut f, 1, 0);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 2]).unwrap();
        f.call(0, H::VmAddMemory, &[other, f.page(GUEST + 2), 0x4000_0000, 2]).unwrap();
        let free = f.page(100);
        let hyp_page = f.hyp.hyp_region.start.0;
        let table_page = f.hyp.mem.lock().vms.lookup(other).unwrap().1.mem.tables().runs()[0].start.0;
        let before = |f: &Fixture| f.hyp.mem.lock().vms.lookup(h).unwrap().1.mem.tables().clone();
        let start = before(&f);
        for (args, want, why) in [
            ([h ^ 1 << 40, free, 1], HypError::InvalidHandle, "a stale handle"),
            ([h, free + 8, 1], HypError::NotAligned, "unaligned"),
            ([h, free, 0], HypError::OutOfRange, "no pages"),
            ([h, free, u64::MAX / 4096], HypError::OutOfRange, "wraps"),
            ([h, f.page(crate::testing::RAM_PAGES - 1), 2], HypError::OutOfRange, "past RAM"),
            ([h, 0x1000, 1], HypError::OutOfRange, "not RAM"),
            ([h, f.page(MSG), 1], HypError::NotOwned, "the message page, shared with EL2"),
            ([h, f.page(GUEST + 1), 1], HypError::NotOwned, "donated to a protected VM"),
            ([h, f.page(GUEST + 2), 1], HypError::NotOwned, "shared with a VM"),
            ([h, hyp_page, 1], HypError::NotOwned, "EL2's own"),
            ([h, table_page, 1], HypError::NotOwned, "another VM's table page"),
        ] {
            assert_eq!(f.call(0, H::VmTopupTables, &args), Err(want), "{why}");
            assert_eq!(before(&f), start, "{why}: nothing changed");
        }
        // A top-up: EL2's alone, out of the host's reach (an access is an injected abort), in
        // EL2's stage 1, zeroed.
        f.ram.0[100 * 4096] = 0xAA;
        f.call(0, H::VmTopupTables, &[h, free, 2]).unwrap();
        assert_eq!(f.ram.0[100 * 4096], 0, "zeroed");
        assert_eq!(f.call(0, H::VmTopupTables, &[h, free + PAGE_SIZE, 1]), Err(HypError::NotOwned), "given already");
        assert_eq!(host_s2_fault(&f.hyp, free, &Recorder::default()), HostFault::Inject);
        {
            let mem = f.hyp.mem.lock();
            assert_eq!(mem.own().state(PhysAddr(free), Component::Hyp), Some(PageState::Owned));
            assert!(mem.hyp_s1().lookup(mem.tables(), free + PAGE_SIZE).is_some());
            assert_eq!(mem.vms.lookup(h).unwrap().1.mem.tables().free(), TABLE_PAGES as u64 + 2);
        }
        // Runs: at most MAX_TABLE_RUNS, but a run next to the last one joins it.
        let runs = |f: &Fixture| f.hyp.mem.lock().vms.lookup(h).unwrap().1.mem.tables().runs().len();
        for i in runs(&f)..shared_abi::MAX_TABLE_RUNS {
            f.call(0, H::VmTopupTables, &[h, f.page(200 + 2 * i), 1]).unwrap();
        }
        let last = f.page(200 + 2 * (shared_abi::MAX_TABLE_RUNS - 1));
        assert_eq!(f.call(0, H::VmTopupTables, &[h, f.page(300), 1]), Err(HypError::NoCapacity));
        f.call(0, H::VmTopupTables, &[h, last + PAGE_SIZE, 1]).unwrap();
        assert_eq!(runs(&f), shared_abi::MAX_TABLE_RUNS);
        // EL2's stage 1 may need tables: never from the host stage 2's reserve.
        let r2 = create(&mut f, 1, 0);
        leave_only_the_host_reserve(&mut f);
        assert_eq!(f.call(0, H::VmTopupTables, &[r2, f.page(400), 1]), Err(HypError::NoMemory));
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(f.page(400)), Component::Host), Some(PageState::Owned));
        // Destroy: every table page back to the host, out of EL2's stage 1.
        let rec = Recorder::default();
        f.call_with(&rec, 0, H::VmDestroy, &[h]).unwrap();
        assert!(rec.log.borrow().ends_with(&["hyp_s1_unmapped"]), "{:?}", rec.log.borrow());
        {
            let mem = f.hyp.mem.lock();
            for pa in [free, free + PAGE_SIZE, last, last + PAGE_SIZE] {
                assert_eq!(mem.own().state(PhysAddr(pa), Component::Host), Some(PageState::Owned));
                assert!(mem.hyp_s1().lookup(mem.tables(), pa).is_none());
            }
        }
        assert_eq!(host_s2_fault(&f.hyp, free, &Recorder::default()), HostFault::Retry);
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert_eq!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout), Ok(crate::testing::RAM_PAGES as u64));
    }

    /// EL2's stage 1 maps table pages with tables from EL2's pool: they go back at destroy, so
    /// a host that gives scattered table pages VM after VM never drains the pool.
    #[test]
    fn table_pages_cost_el2s_pool_nothing_after_destroy() {
        use crate::mem::pgtable::TableMemory;
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let free = |f: &Fixture| f.hyp.mem.lock().tables().free_pages();
        let before = free(&f);
        for round in 0..3 {
            let h = create(&mut f, 1, vm_flags::PROTECTED);
            // One page in each 2 MiB of the fixture's RAM: a level-3 table of EL2's each.
            for page in [100 + round, 600 + round, 1100 + round] {
                f.call(0, H::VmTopupTables, &[h, f.page(page), 1]).unwrap();
            }
            assert!(free(&f) < before);
            f.call(0, H::VmDestroy, &[h]).unwrap();
            assert_eq!(free(&f), before, "round {round}: every table EL2 took came back");
        }
    }

    #[test]
    fn create_keeps_the_host_reserve() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        leave_only_the_host_reserve(&mut f);
        f.ram.0[..32].copy_from_slice(VmCreate { nr_vcpus: 1, ipa_bits: 36, flags: 0, sve_vl: 0, reserved: 0 }.as_bytes());
        assert_eq!(f.call(0, H::VmCreate, &[]), Err(HypError::NoMemory));
    }

    #[test]
    fn destroy_leaves_no_vcpu_state_behind() {
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        // vCPU 0 calls CPU_ON(1, 0x5000, 7): vCPU 1 is left pending with the guest's entry
        // point and context; then the host destroys the VM.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_CPU_ON_64 as u64]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 0x5000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(3), 7]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::CPU_ON as u64, 0, 0]));
        let slot = handle_slot(h);
        assert_eq!(f.hyp.vcpus[slot][1].on_entry.load(Ordering::Relaxed), 0x5000);
        f.call(0, H::VmDestroy, &[h]).unwrap();
        for v in &f.hyp.vcpus[slot] {
            assert_eq!(v.power.load(Ordering::Relaxed), power::OFF);
            assert_eq!((v.on_entry.load(Ordering::Relaxed), v.on_context.load(Ordering::Relaxed)), (0, 0));
            assert_eq!(*v.claim().unwrap(), VcpuCtx::new());
        }
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout).is_ok());
    }

    #[test]
    fn vcpu_in_use_is_busy_and_destroy_waits_for_it() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let guard = f.hyp.vcpus[handle_slot(h)][0].claim().unwrap();
        assert_eq!(f.call(0, H::VmDestroy, &[h]), Err(HypError::Busy));
        assert_eq!(f.call(0, H::VcpuRun, &[h, 0, 0]), Err(HypError::Busy));
        drop(guard);
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert_eq!(f.call(0, H::VmDestroy, &[h]), Err(HypError::InvalidHandle));
    }

    /// A protected VM of one vCPU: `image` measured at 0x4000_0000 (RAM page GUEST), two
    /// zeroed pages after it, the handover page after those; PC and x0 set, then one run.
    fn measured_vm(f: &mut Fixture, image: u8) -> u64 {
        use shared_abi::measure::add_flags;
        let h = create(f, 1, vm_flags::PROTECTED);
        f.ram.0[GUEST * 4096..(GUEST + 1) * 4096].fill(image);
        f.ram.0[(GUEST + 1) * 4096] = 0x77; // host leftovers in a page it does not measure
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 1, add_flags::MEASURE]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 1), 0x4000_1000, 2, 0]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST + 3), 0x4000_3000, 1, add_flags::HANDOVER]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0000, 0]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), 0x4000_2000, 0]).unwrap();
        assert_eq!(f.call(0, H::VmMeasurement, &[h]), Ok([0, 0, 0]), "not sealed before the first run");
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        h
    }

    #[test]
    fn the_measurement_is_what_anyone_computes_from_the_same_inputs() {
        use shared_abi::measure::{Handover, Measurement};
        let mut f = fixture();
        let h = measured_vm(&mut f, 0xAB);
        assert_eq!(f.call(0, H::VmMeasurement, &[h]), Ok([1, 0, 0]));
        let got = shared_abi::msg::VmMeasurement::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        // Offline: the same records.
        let mut m = Measurement::new(1, 36, vm_flags::PROTECTED, 0);
        m.smccc_forward(0, 1); // `create`'s (testing.rs)
        m.page(0x4000_0000, &[0xAB; 4096]);
        m.zero(0x4000_1000, 2);
        m.handover(0x4000_3000, 1);
        let mut x = [0u64; 31];
        x[0] = 0x4000_2000;
        let want = m.seal(&x, 0x4000_0000, VcpuCtx::new().pstate);
        assert_eq!(got.measurement, want);
        // The unmeasured pages reach the guest zeroed; the handover holds the value and the
        // secrets for this boot.
        assert_eq!(f.ram.0[(GUEST + 1) * 4096], 0);
        let handover = Handover::read_from_prefix(&f.ram.0[(GUEST + 3) * 4096..]).unwrap().0;
        assert_eq!(handover, Handover::new(want, &[0x5E; 32]));
        // One byte of the image makes another measurement, and other secrets.
        let mut f2 = fixture();
        let h2 = measured_vm(&mut f2, 0xAA);
        f2.call(0, H::VmMeasurement, &[h2]).unwrap();
        let other = shared_abi::msg::VmMeasurement::read_from_prefix(&f2.ram.0[MSG * 4096..]).unwrap().0;
        assert_ne!(other.measurement, want);
        assert_ne!(Handover::read_from_prefix(&f2.ram.0[(GUEST + 3) * 4096..]).unwrap().0.cdi_seal, handover.cdi_seal);
    }

    #[test]
    fn nothing_joins_a_sealed_measurement_and_bad_flags_are_refused() {
        use shared_abi::measure::add_flags;
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let add = |f: &Fixture, page: usize, ipa: u64, flags: u64| f.call(0, H::VmAddMemory, &[h, f.page(page), ipa, 1, flags]);
        assert_eq!(add(&f, GUEST, 0x4000_0000, 1 << 2), Err(HypError::InvalidArgument), "unknown flag");
        assert_eq!(add(&f, GUEST, 0x4000_0000, add_flags::ALL), Err(HypError::InvalidArgument), "both");
        add(&f, GUEST, 0x4000_0000, add_flags::HANDOVER).unwrap();
        assert_eq!(add(&f, GUEST + 1, 0x4000_1000, add_flags::HANDOVER), Err(HypError::InvalidArgument), "a second handover");
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(0x01 << 26 | 1 << 25, 0)];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        // A non-protected VM takes memory after its first run, but none to measure.
        assert_eq!(add(&f, GUEST + 1, 0x4000_1000, add_flags::MEASURE), Err(HypError::Denied));
        assert_eq!(add(&f, GUEST + 1, 0x4000_1000, 0), Ok([0; 3]));
        assert_eq!(f.call(0, H::VmMeasurement, &[h]), Ok([1, 0, 0]));
        assert_eq!(f.call(0, H::VmMeasurement, &[h + 1]), Err(HypError::InvalidHandle));
    }

    #[test]
    fn the_host_can_turn_a_protected_vms_mmio_guard_on_before_it_runs() {
        let mut f = fixture();
        let plain = create(&mut f, 1, 0);
        assert_eq!(f.call(0, H::VmMmioGuard, &[plain, 0x0900_0000]), Err(HypError::InvalidArgument), "not protected");
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4, 0]).unwrap();
        assert_eq!(f.call(0, H::VmMmioGuard, &[h, 0x0900_0008]), Err(HypError::NotAligned));
        assert_eq!(f.call(0, H::VmMmioGuard, &[h, 0x4000_1000]), Err(HypError::InvalidArgument), "RAM");
        assert_eq!(f.call(0, H::VmMmioGuard, &[h, 1 << 36]), Err(HypError::InvalidArgument), "outside the IPA space");
        assert_eq!(f.call(0, H::VmMmioGuard, &[h + 1, 0x0900_0000]), Err(HypError::InvalidHandle));
        f.call(0, H::VmMmioGuard, &[h, 0x0900_0000]).unwrap();
        // The UART exits; anything else is an abort in the guest from its first instruction.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0900_0018, true, 1, 2)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::MMIO as u64, 0, 0]));
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![mmio(0x0A00_0000, true, 1, 2), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(f.call(0, H::VmMmioGuard, &[h, 0x0A00_0000]), Err(HypError::Denied), "after the first run: the guest's to declare");
        // Recorded in the measurement.
        f.call(0, H::VmMeasurement, &[h]).unwrap();
        let with = shared_abi::msg::VmMeasurement::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        let mut m = shared_abi::measure::Measurement::new(1, 36, vm_flags::PROTECTED, 0);
        m.smccc_forward(0, 1); // `create`'s (testing.rs)
        m.zero(0x4000_0000, 4);
        m.mmio_guard(0x0900_0000);
        assert_eq!(with.measurement, m.seal(&[0; 31], 0, VcpuCtx::new().pstate));
    }
}
