//! Host access to vCPU registers: `VCPU_GET_REG`, `VCPU_SET_REG`, `VCPU_REG_LIST`, and the
//! VM-wide registers (firmware pseudo-registers, ID registers, `CNTVOFF_EL2`) behind them.

use super::MAX_VCPUS;
use crate::cpu::fwreg::{self, FwError};
use crate::hyp::Hyp;
use crate::guest::vm::vcpu_slot;
use crate::cpu::idreg::{self, NR_IDREGS};
use crate::mem::pgtable::TableMemory;
use crate::guest::vcpu::{register_ids, RegError, VcpuCtx};
use core::sync::atomic::Ordering;
use shared_abi::msg::{RegList, MAX_REG_IDS};
use shared_abi::{reg, HypError, HypResult};

/// Whether `id` is a VM-wide register (firmware pseudo-registers, ID registers, `CNTVOFF_EL2`):
/// one value for every vCPU, under the memory lock ([`Hyp::vm_reg`]).
fn is_vm_reg(id: u64) -> bool {
    fwreg::IDS.contains(&id) || idreg::index_of(id).is_some() || id == reg::CNTVOFF_EL2
}

fn vm_err(e: RegError) -> HypError {
    match e {
        RegError::Unknown => HypError::UnknownRegister,
        RegError::ReadOnly => HypError::Denied,
        RegError::TooWide | RegError::BadValue => HypError::InvalidArgument,
    }
}

/// Runs `access` on the context of vCPU `index` of `handle` for the host, if the host may
/// access its registers.
///
/// The seal check must hold for the whole access, not only when it is made: the vCPU's
/// claim excludes *its own* run, but another vCPU of the same VM may start running on
/// another CPU and set `ran` in between. So the check and the access both happen under
/// the memory lock, which `VCPU_RUN` holds to set `ran`: a protected VM either has not run
/// for the whole access, or the access is `Denied`. (Lock order as everywhere: the claim
/// first, then the memory lock; the access itself only copies registers.)
fn with_host_regs<T: TableMemory, R>(hyp: &Hyp<'_, T>, handle: u64, index: u64, access: impl FnOnce(&mut VcpuCtx) -> R) -> Result<R, HypError> {
    let mut guard = vcpu_slot(hyp, handle, index)?.claim().ok_or(HypError::Busy)?;
    let mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup(handle)?;
    if index as usize >= vm.nr_vcpus {
        return Err(HypError::InvalidArgument);
    }
    if vm.protected && vm.ran {
        return Err(HypError::Denied);
    }
    let r = access(&mut guard);
    drop(mem);
    Ok(r)
}

/// VM-wide registers (firmware pseudo-registers, ID registers, `CNTVOFF_EL2`) through `VCPU_GET_REG`/`VCPU_SET_REG`:
/// writable before the VM's first run; afterwards an identical write succeeds and any
/// other is `Frozen` (a protected VM's are sealed like the rest of its registers).
fn vm_reg<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, id: u64, write: Option<(u64, u64)>) -> HypResult {
    if index >= MAX_VCPUS as u64 {
        return Err(HypError::InvalidArgument);
    }
    let mut mem = hyp.mem.lock();
    let (_, vm) = mem.vms.lookup_mut(handle)?;
    if index as usize >= vm.nr_vcpus {
        return Err(HypError::InvalidArgument);
    }
    if vm.protected && vm.ran {
        return Err(HypError::Denied);
    }
    if let Some(i) = idreg::index_of(id) {
        let slot = &hyp.idregs[(handle & 0xFF) as usize][i];
        let current = slot.load(Ordering::Relaxed);
        let Some((value, hi)) = write else { return Ok([current, 0, 0]) };
        if vm.ran || hi != 0 {
            return if value == current && hi == 0 { Ok([0; 3]) } else if hi != 0 { Err(HypError::InvalidArgument) } else { Err(HypError::Frozen) };
        }
        if !idreg::write_ok(i, value, vm.idreg_limit[i]) {
            return Err(HypError::InvalidArgument);
        }
        slot.store(value, Ordering::Relaxed);
        return Ok([0; 3]);
    }
    if id == reg::CNTVOFF_EL2 {
        // Any offset is a valid one: it only moves the guest's virtual count.
        let current = vm.cntvoff;
        let Some((value, hi)) = write else { return Ok([current, 0, 0]) };
        if hi != 0 {
            return Err(HypError::InvalidArgument);
        }
        if vm.ran {
            return if value == current { Ok([0; 3]) } else { Err(HypError::Frozen) };
        }
        vm.cntvoff = value;
        return Ok([0; 3]);
    }
    let current = vm.fw.get(id).ok_or(HypError::UnknownRegister)?;
    let Some((value, hi)) = write else { return Ok([current, 0, 0]) };
    if hi != 0 {
        return Err(HypError::InvalidArgument);
    }
    if vm.ran {
        return if value == current { Ok([0; 3]) } else { Err(HypError::Frozen) };
    }
    vm.fw = vm.fw.with(&hyp.fw_provided(), id, value).map_err(|e| match e {
        FwError::Unknown => HypError::UnknownRegister,
        FwError::Refused => HypError::InvalidArgument,
    })?;
    Ok([0; 3])
}

/// `VCPU_SET_REG`.
pub(crate) fn vcpu_set_reg<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, id: u64, value: (u64, u64)) -> HypResult {
    if is_vm_reg(id) {
        return vm_reg(hyp, handle, index, id, Some(value));
    }
    with_host_regs(hyp, handle, index, |g| g.set(id, value))?.map_err(vm_err)?;
    Ok([0; 3])
}

/// `VCPU_GET_REG`.
pub(crate) fn vcpu_get_reg<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, id: u64) -> HypResult {
    if is_vm_reg(id) {
        return vm_reg(hyp, handle, index, id, None);
    }
    let (lo, hi) = with_host_regs(hyp, handle, index, |g| g.get(index as usize, id))?.map_err(vm_err)?;
    Ok([lo, hi, 0])
}

/// `VCPU_REG_LIST`.
pub(crate) fn vcpu_reg_list<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64) -> HypResult {
    {
        let mem = hyp.mem.lock();
        let (_, vm) = mem.vms.lookup(handle)?;
        if index as usize >= vm.nr_vcpus {
            return Err(HypError::InvalidArgument);
        }
    }
    let mut list = RegList { count: 0, ids: [0; MAX_REG_IDS] };
    let ids = register_ids().chain(fwreg::IDS).chain((0..NR_IDREGS).map(idreg::reg_id)).chain([reg::CNTVOFF_EL2]);
    for (slot, id) in list.ids.iter_mut().zip(ids) {
        *slot = id;
        list.count += 1;
    }
    hyp.msg.write(cpu, &list)?;
    Ok([list.count, 0, 0])
}

#[cfg(test)]
mod tests {
    use crate::guest::vm::tests::*;
    use super::*;

    #[test]
    fn non_protected_registers_stay_accessible() {
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        f.call(0, H::VcpuSetReg, &[h, 1, reg::x(3), 99]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 1, reg::x(3)]), Ok([99, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Ok([4, 0, 0]), "WFI stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 2, reg::PC]), Err(HypError::InvalidArgument), "no vCPU 2");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, 0x6030_0000_0013_FFFF]), Err(HypError::UnknownRegister));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, reg::MPIDR_EL1, 1]), Err(HypError::Denied));
    }

    #[test]
    fn firmware_registers_follow_the_restore_rules() {
        let mut f = fixture(); // the fixture's hardware needs no workaround 1 (CSV2 = 1)
        let h = create(&mut f, 1, 0);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::PSCI_VERSION]), Ok([0x10001, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::WORKAROUND_1]), Ok([fwreg::NOT_REQUIRED, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, fwreg::WORKAROUND_3]), Ok([fwreg::NOT_AVAIL, 0, 0]));
        // Refused: unknown bits, more protection than provided, an unknown version.
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_1, 1 << 4, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_3, fwreg::AVAIL, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10002, 0]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION + 9, 0, 0]), Err(HypError::UnknownRegister));
        // Accepted before the first run.
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10000, 0]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::WORKAROUND_1, fwreg::AVAIL, 0]).unwrap();
        // The guest is told: PSCI_VERSION answered from the VM's value.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::psci::PSCI_VERSION as u64, 0]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Ok([0x10000, 0, 0]));
        // After the first run: identical writes succeed, others are Busy.
        f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10000, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, fwreg::PSCI_VERSION, 0x10001, 0]), Err(HypError::Frozen));
        // Listed by VCPU_REG_LIST.
        let all = register_ids().count() + fwreg::IDS.len() + NR_IDREGS + 1;
        assert!(all <= MAX_REG_IDS, "the register list must fit the message");
        assert_eq!(f.call(0, H::VcpuRegList, &[h, 0]).unwrap()[0] as usize, all);
    }

    #[test]
    fn cntvoff_is_per_vm_zero_at_create_and_follows_the_first_run_rules() {
        let mut f = fixture();
        f.call(0, H::SetMessagePage, &[0, f.page(MSG)]).unwrap();
        let create_at = |f: &mut Fixture, count: u64, flags: u64| {
            let req = VmCreate { nr_vcpus: 2, ipa_bits: 36, flags, reserved: [0; 2] };
            f.ram.0[MSG * 4096..MSG * 4096 + 32].copy_from_slice(req.as_bytes());
            let rec = Recorder::default();
            rec.counter.set(count);
            f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0]
        };
        let (a, b) = (create_at(&mut f, 1_000, 0), create_at(&mut f, 9_000_000, vm_flags::PROTECTED));
        // 0 whatever the count at creation (QEMU 7.2 hangs when a guest's CVAL + CNTVOFF
        // wraps, and any non-zero offset lets a guest arrange that).
        assert_eq!(f.call(0, H::VcpuGetReg, &[a, 0, reg::CNTVOFF_EL2]), Ok([0, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[b, 1, reg::CNTVOFF_EL2]), Ok([0, 0, 0]), "VM-wide: any vCPU");
        // Listed once, with the other VM-wide registers.
        f.call(0, H::VcpuRegList, &[a, 0]).unwrap();
        let list = shared_abi::msg::RegList::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        assert_eq!(list.ids[..list.count as usize].iter().filter(|&&id| id == reg::CNTVOFF_EL2).count(), 1);
        // Writable before the first run (any value), never with a high half or for a vCPU the
        // VM does not have.
        f.call(0, H::VcpuSetReg, &[a, 0, reg::CNTVOFF_EL2, u64::MAX, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[a, 1, reg::CNTVOFF_EL2]), Ok([u64::MAX, 0, 0]));
        assert_eq!(f.call(0, H::VcpuSetReg, &[a, 0, reg::CNTVOFF_EL2, 5, 1]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetReg, &[a, 2, reg::CNTVOFF_EL2, 5, 0]), Err(HypError::InvalidArgument));
        f.call(0, H::VcpuSetReg, &[a, 0, reg::CNTVOFF_EL2, 77, 0]).unwrap();
        f.call(0, H::VcpuSetReg, &[b, 0, reg::CNTVOFF_EL2, 88, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[a, 0, reg::CNTVOFF_EL2]), Ok([77, 0, 0]), "each VM its own");
        // The run loads it (GuestConfig) and reports the virtual deadline with it.
        f.call(0, H::VcpuSetReg, &[a, 0, SysReg::CNTV_CTL_EL0.id(), 1]).unwrap();
        f.call(0, H::VcpuSetReg, &[a, 0, SysReg::CNTV_CVAL_EL0.id(), 1_000]).unwrap();
        for (h, deadline) in [(a, 1_077), (b, u64::MAX)] {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![hvc()];
            rec.counter.set(100);
            f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
            assert_eq!(exit_record(&f).vtimer_deadline, deadline, "CVAL + this VM's CNTVOFF (b's timer is off)");
        }
        // After the first run: an identical write succeeds, another is Frozen; a protected VM's
        // is sealed like every register.
        f.call(0, H::VcpuSetReg, &[a, 0, reg::CNTVOFF_EL2, 77, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuSetReg, &[a, 0, reg::CNTVOFF_EL2, 78, 0]), Err(HypError::Frozen));
        assert_eq!(f.call(0, H::VcpuGetReg, &[a, 0, reg::CNTVOFF_EL2]), Ok([77, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[b, 0, reg::CNTVOFF_EL2]), Err(HypError::Denied));
        assert_eq!(f.call(0, H::VcpuSetReg, &[b, 0, reg::CNTVOFF_EL2, 88, 0]), Err(HypError::Denied));
    }

    #[test]
    fn the_seal_holds_for_the_whole_register_access() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Barrier;
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        f.call(1, H::SetMessagePage, &[1, f.page(MSG + 1)]).unwrap();
        let f = &f;
        let (inside, run_done) = (Barrier::new(2), AtomicBool::new(false));
        std::thread::scope(|s| {
            // CPU 1 runs vCPU 1 (it is off, but the run still marks the VM as having run)
            // while CPU 0 is in the middle of a register access to vCPU 0.
            s.spawn(|| {
                inside.wait();
                f.call(1, H::VcpuRun, &[h, 1, 0]).unwrap();
                run_done.store(true, Ordering::SeqCst);
            });
            let r = with_host_regs(&f.hyp, h, 0, |ctx| {
                inside.wait();
                std::thread::sleep(std::time::Duration::from_millis(200));
                ctx.x[0] = 42;
                run_done.load(Ordering::SeqCst)
            });
            assert_eq!(r, Ok(false), "the VM started running in the middle of a sealed-register access");
        });
        assert!(f.hyp.mem.lock().vms.lookup(h).unwrap().1.ran);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(0)]), Err(HypError::Denied));
    }
}
