//! The vCPU calls: registers (`VCPU_SET_REG`, `VCPU_GET_REG`, `VCPU_REG_LIST`, and the VM-wide
//! registers reached through them), interrupts (`VCPU_SET_IRQ`, `VCPU_IRQ_STATE`) and
//! statistics (`VCPU_STATS`).

use core::sync::atomic::Ordering;
use crate::cpu::fwreg::{self};
use crate::cpu::idreg::{self, NR_IDREGS};
use crate::guest::vcpu::{register_ids, VcpuCtx};
use crate::guest::vgic::{self};
use crate::hyp::Hyp;
use crate::guest::vm::handle_slot;
use crate::mem::pgtable::TableMemory;
use shared_abi::msg::{RegList, MAX_REG_IDS};
use crate::guest::MAX_VCPUS;
use shared_abi::{reg, HypError, HypResult};

/// Whether `id` is a VM-wide register (firmware pseudo-registers, ID registers, `CNTVOFF_EL2`):
/// one value for every vCPU, under the memory lock ([`vm_reg`]).
fn is_vm_reg(id: u64) -> bool {
    fwreg::IDS.contains(&id) || idreg::index_of(id).is_some() || id == reg::CNTVOFF_EL2
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
    let mut guard = hyp.vcpu_slot(handle, index)?.claim().ok_or(HypError::Busy)?;
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
        let slot = &hyp.idregs[handle_slot(handle)][i];
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
    vm.fw = vm.fw.with(&hyp.fw_provided(), id, value)?;
    Ok([0; 3])
}

/// `VCPU_SET_REG`.
pub(crate) fn vcpu_set_reg<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, id: u64, value: (u64, u64)) -> HypResult {
    if is_vm_reg(id) {
        return vm_reg(hyp, handle, index, id, Some(value));
    }
    with_host_regs(hyp, handle, index, |g| g.set(id, value))??;
    Ok([0; 3])
}

/// `VCPU_GET_REG`.
pub(crate) fn vcpu_get_reg<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, id: u64) -> HypResult {
    if is_vm_reg(id) {
        return vm_reg(hyp, handle, index, id, None);
    }
    let (lo, hi) = with_host_regs(hyp, handle, index, |g| g.get(index as usize, id))??;
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

/// `VCPU_SET_IRQ`: queues virtual interrupt `vintid` with `config` ([`shared_abi::msg::irq`])
/// in a free list register of vCPU `index`. Every field is checked before anything is
/// locked ([`vgic::lr_from_request`]); the list register value is EL2's own encoding.
/// Allowed for protected VMs after their first run: delivering interrupts is the host's
/// job, and an interrupt reveals nothing of the guest.
pub(crate) fn vcpu_set_irq<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, vintid: u64, config: u64) -> HypResult {
    let caps = hyp.vgic_caps().ok_or(HypError::Denied)?;
    let v = vgic::lr_from_request(vintid, config, caps)?;
    let mut guard = hyp.claim_vcpu(handle, index)?;
    let n = guard.vgic.queue(v, caps.nr_lrs)?;
    Ok([n as u64, 0, 0])
}

/// `VCPU_LINK_VTIMER`: links (`on` = 1, with `config`) or unlinks (`on` = 0, `config` 0) the
/// vCPU's virtual timer and vINTID 27 ([`vgic::VgicCpu::take_vtimer`]). Linking waits
/// (`Busy`) while the host's own vINTID 27 is queued; unlinking leaves a hardware one where it
/// is: the guest finishes it as usual.
pub(crate) fn vcpu_link_vtimer<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, on: u64, config: u64) -> HypResult {
    let caps = hyp.vgic_caps().filter(|_| hyp.linkable()).ok_or(HypError::Denied)?;
    let v = match on {
        0 if config == 0 => 0,
        1 => vgic::vtimer_lr(config, caps)?,
        _ => return Err(HypError::InvalidArgument),
    };
    let mut guard = hyp.claim_vcpu(handle, index)?;
    if v != 0 && guard.vgic.host_queued_vtimer() {
        return Err(HypError::Busy);
    }
    guard.vgic.vtimer = v;
    guard.vgic.nr_lrs_linked = caps.nr_lrs;
    Ok([0; 3])
}

/// `VCPU_LINK_SGIS`: links (`on` = 1, with the SGIs' `masks` and `priorities`, see
/// [`vgic::sgi_lrs`]) or unlinks (`on` = 0, the rest 0) the vCPU's SGIs
/// ([`crate::guest::sgi`]). Unlinking returns the SGIs EL2 still held pending for it.
pub(crate) fn vcpu_link_sgis<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, on: u64, masks: u64, priorities: [u64; 2]) -> HypResult {
    let caps = hyp.vgic_caps().filter(|_| hyp.linkable()).ok_or(HypError::Denied)?;
    let lrs = match on {
        0 if masks | priorities[0] | priorities[1] == 0 => None,
        1 => Some(vgic::sgi_lrs(masks, priorities[0] as u128 | (priorities[1] as u128) << 64, caps)?),
        _ => return Err(HypError::InvalidArgument),
    };
    let mut guard = hyp.claim_vcpu(handle, index)?;
    let slot = hyp.vcpu_slot(handle, index)?;
    guard.vgic.sgi = lrs.unwrap_or([0; 16]);
    guard.vgic.sgi_on = if lrs.is_some() { masks as u16 } else { 0 };
    guard.vgic.nr_lrs_linked = caps.nr_lrs;
    slot.sgi_linked.store(lrs.is_some(), Ordering::Release);
    // Claimed, the vCPU does not run: a sibling sees it not running and leaves the SGI to the
    // host, so nothing is set here from now on while unlinked.
    let held = if lrs.is_none() { slot.sgi_pending.swap(0, Ordering::SeqCst) } else { 0 };
    Ok([held as u64, 0, 0])
}

/// `VCPU_IRQ_STATE`: the vCPU's list registers and the deactivations the host asked to
/// hear about, to the message page (collecting the deactivations).
pub(crate) fn vcpu_irq_state<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64) -> HypResult {
    hyp.msg.page(cpu)?;
    let nr_lrs = hyp.vgic_caps().map_or(0, |c| c.nr_lrs);
    let mut guard = hyp.claim_vcpu(handle, index)?;
    let state = guard.vgic.report(nr_lrs);
    hyp.msg.write(cpu, &state)?;
    // Collected only once the report is written (the claim keeps runs out meanwhile): a
    // failed write loses nothing. (Not a clone of the state, reported, then copied back: that
    // cost two copies of the whole list-register state per call.)
    guard.vgic.collected();
    Ok([state.used as u64, 0, 0])
}

/// `VCPU_STATS`: the vCPU's exception counts, by class. Counts only: allowed for protected
/// VMs at any time.
pub(crate) fn vcpu_stats<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64) -> HypResult {
    hyp.msg.page(cpu)?;
    let guard = hyp.claim_vcpu(handle, index)?;
    let stats = shared_abi::msg::VcpuStats { counts: guard.stats };
    hyp.msg.write(cpu, &stats)?;
    Ok([guard.stats.iter().sum(), 0, 0])
}

#[cfg(test)]
mod tests {
    use crate::testing::*;
    use shared_abi::msg::irq::{self, config, PENDING};
    use shared_abi::msg::{stats, VcpuStats};
    use smccc::psci::{PSCI_CPU_OFF, PSCI_CPU_ON_64};
    use std::sync::Barrier;
    use std::sync::atomic::AtomicBool;
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
            let req = VmCreate { nr_vcpus: 2, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 };
            f.ram.0[MSG * 4096..MSG * 4096 + 32].copy_from_slice(req.as_bytes());
            let rec = Recorder::default();
            rec.counter.set(count);
            let h = f.call_with(&rec, 0, H::VmCreate, &[]).unwrap()[0];
            f.call(0, H::VmSmcccForward, &[h, 0, 1]).unwrap();
            h
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

    fn irq_state(f: &Fixture, h: u64, vcpu: u64) -> shared_abi::msg::VgicState {
        f.call(0, H::VcpuIrqState, &[h, vcpu]).unwrap();
        shared_abi::msg::VgicState::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0
    }

    #[test]
    fn set_irq_validates_every_field_and_fills_list_registers() {
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        let spi = config(0xA0, true, PENDING, false) as u64;
        // Hostile fields: refused before anything is touched.
        for (vintid, cfg, err) in [
            (1020, spi, HypError::InvalidArgument),
            (8192, spi, HypError::InvalidArgument),
            (32, config(0xA0, true, 0, false) as u64, HypError::InvalidArgument),
            (32, config(0xA1, true, PENDING, false) as u64, HypError::InvalidArgument),
            (32, spi | 1 << 40, HypError::InvalidArgument),
            (32, spi | 27 << irq::PINTID_SHIFT, HypError::InvalidArgument),
            (27, spi | irq::HW as u64 | 27 << irq::PINTID_SHIFT, HypError::Denied),
        ] {
            assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, vintid, cfg]), Err(err), "{vintid} {cfg:#x}");
        }
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 2, 32, spi]), Err(HypError::InvalidArgument), "no vCPU 2");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 8, 32, spi]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h + 0x100, 0, 32, spi]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 32, spi, 1]), Err(HypError::InvalidArgument), "x5 unused");
        assert_eq!(irq_state(&f, h, 0).used, 0, "nothing queued");
        // A protected VM that has run still gets interrupts, and the host sees their state.
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        for (n, id) in [32u64, 33, 27, 1].into_iter().enumerate() {
            assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, id, spi]), Ok([n as u64, 0, 0]));
        }
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 33, spi]), Err(HypError::Busy), "already queued");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 34, spi]), Err(HypError::NoCapacity), "4 list registers");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 34, spi]), Ok([0, 0, 0]), "per vCPU");
        let s = irq_state(&f, h, 0);
        assert_eq!((s.nr_lrs, s.used), (4, 0b1111));
        assert_eq!(s.lrs[2], (spi << 32) | 27);
        // A running vCPU is Busy.
        let guard = f.hyp.vcpus[handle_slot(h)][1].claim().unwrap();
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 35, spi]), Err(HypError::Busy));
        assert_eq!(f.call(0, H::VcpuIrqState, &[h, 1]), Err(HypError::Busy));
        drop(guard);
        // Destroy forgets everything queued.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout).is_ok());
    }

    #[test]
    fn a_linked_virtual_timer_is_delivered_in_el2_and_vintid_27_is_refused_to_the_host() {
        use crate::hw::{GuestTrap, TrapKind};
        let mut f = fixture();
        let h = create(&mut f, 2, vm_flags::PROTECTED);
        let link = |f: &Fixture, vcpu: u64, on: u64, config: u64| f.call(0, H::VcpuLinkVtimer, &[h, vcpu, on, config]);
        let ok = 0xA0 | irq::GROUP1 as u64;
        // Hostile arguments: refused with nothing changed.
        for (vcpu, on, config, want) in [
            (0, 1, 0xA1, HypError::InvalidArgument),
            (0, 1, ok | irq::HW as u64, HypError::InvalidArgument),
            (0, 1, ok | 1 << irq::STATE_SHIFT, HypError::InvalidArgument),
            (0, 1, ok | 1 << 32, HypError::InvalidArgument),
            (0, 2, ok, HypError::InvalidArgument),
            (0, u64::MAX, ok, HypError::InvalidArgument),
            (0, 0, ok, HypError::InvalidArgument),
            (2, 1, ok, HypError::InvalidArgument),
        ] {
            assert_eq!(link(&f, vcpu, on, config), Err(want), "{vcpu} {on} {config:#x}");
        }
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h + 0x100, 0, 1, ok]), Err(HypError::InvalidHandle));
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h, 0, 1, ok, 1]), Err(HypError::InvalidArgument), "x5 unused");
        assert_eq!(f.hyp.vcpus[handle_slot(h)][0].claim().unwrap().vgic.vtimer, 0);
        let spi = config(0xA0, true, PENDING, true) as u64;
        let irq_exit = GuestTrap { kind: TrapKind::Irq, esr: 0, far: 0, hpfar: 0 };
        let run = |f: &Fixture, script: Vec<GuestTrap>, takes: u32| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = script;
            rec.vtimer_takes.set(takes);
            let r = f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]);
            let asked = rec.log.borrow().iter().filter(|&&e| e == "guest_irq").count();
            let entries = rec.entry_pcs.borrow().len();
            (r, asked, entries)
        };
        // Not linked: an IRQ is the host's.
        assert_eq!(run(&f, vec![irq_exit], 3), (Ok([exit::IRQ as u64, 0, 0]), 1, 1));
        assert_eq!(link(&f, 0, 1, ok), Ok([0; 3]));
        // Linked: the timer's interrupts resume the guest, the next one is the host's.
        assert_eq!(run(&f, vec![irq_exit, irq_exit, irq_exit], 2), (Ok([exit::IRQ as u64, 0, 0]), 3, 3));
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 27, spi]), Err(HypError::Denied), "EL2 owns vINTID 27 now");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 27, spi]), Ok([0, 0, 0]), "per vCPU");
        assert_eq!(link(&f, 1, 1, ok), Err(HypError::Busy), "until the guest finishes the host's vINTID 27");
        // A guest CPU_ON reset keeps the link, as the host's distributor model keeps its state,
        // but not a hardware list register (the guest starting again would never finish it).
        {
            let mut g = f.hyp.vcpus[handle_slot(h)][0].claim().unwrap();
            let (n, pending) = (2, g.vgic.vtimer | 1 << 62);
            g.vgic.lr[n] = pending;
            g.vgic.used |= 1 << n;
            g.vgic.queue(crate::guest::vgic::lr_from_request(40, spi, f.hyp.vgic_caps().unwrap()).unwrap(), 4).unwrap();
            g.reset_for_cpu_on(0x8000, 0);
            assert_ne!(g.vgic.vtimer, 0);
            assert_eq!((g.vgic.used, g.vgic.lr[n]), (0b1, 0), "the host's SPI stays queued, the hardware one goes");
            g.vgic.lr[0] = 0;
            g.vgic.used = 0;
        }
        // Busy while running, like any vCPU call.
        let guard = f.hyp.vcpus[handle_slot(h)][0].claim().unwrap();
        assert_eq!(link(&f, 0, 0, 0), Err(HypError::Busy));
        drop(guard);
        assert_eq!(link(&f, 0, 0, 0), Ok([0; 3]));
        assert_eq!(run(&f, vec![irq_exit], 5), (Ok([exit::IRQ as u64, 0, 0]), 1, 1), "unlinked again");
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 27, spi]), Ok([0, 0, 0]));
        // A CPU without its redistributor: EL2 links no timer.
        let h2 = create(&mut f, 1, 0);
        f.hyp.cpu_redistributor(true);
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h2, 0, 1, ok]), Ok([0; 3]));
        f.hyp.cpu_redistributor(false);
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h2, 0, 1, ok]), Err(HypError::Denied));
        f.hyp.cpu_redistributor(true);
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h2, 0, 1, ok]), Err(HypError::Denied), "for good");
    }

    #[test]
    fn set_irq_is_denied_without_a_virtual_cpu_interface() {
        let mut f = fixture();
        // A CPU without the GICv3 system-register interface joins before the view is fixed.
        let regs = *f.hyp.cpus.lock().view();
        f.hyp.cpu_entered_el2(1, crate::cpu::features::CpuId { midr: 0x410F_D0C0, regs, ctr: FIXTURE_CTR, ich_vtr: None, sve: FIXTURE_SVE }).unwrap();
        let h = create(&mut f, 1, 0);
        let spi = shared_abi::msg::irq::config(0xA0, true, 1, false) as u64;
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 32, spi]), Err(HypError::Denied));
        assert_eq!(f.call(0, H::VcpuLinkVtimer, &[h, 0, 1, 0xA0 | shared_abi::msg::irq::GROUP1 as u64]), Err(HypError::Denied));
    }

    #[test]
    fn deactivated_level_interrupts_are_reported_once() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetIrq, &[h, 0, 40, config(0x80, true, PENDING, true) as u64]).unwrap();
        f.call(0, H::VcpuSetIrq, &[h, 0, 41, config(0x80, true, PENDING, false) as u64]).unwrap();
        let run = |f: &Fixture| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = vec![hvc()];
            f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
            exit_record(f).flags
        };
        assert_eq!(run(&f) & exit::FLAG_EOI, 0, "still pending");
        // The guest deactivated both (what put saves from the CPU).
        {
            let mut g = f.hyp.vcpus[handle_slot(h)][0].claim().unwrap();
            g.vgic.lr[0] &= !(3 << 62);
            g.vgic.lr[1] &= !(3 << 62);
        }
        assert_eq!(run(&f) & exit::FLAG_EOI, exit::FLAG_EOI);
        assert_eq!(run(&f) & exit::FLAG_EOI, exit::FLAG_EOI, "until collected");
        let s = irq_state(&f, h, 0);
        assert_eq!((s.used, s.eoi[0]), (0, 1 << 40), "both freed, only the level one reported");
        assert_eq!(run(&f) & exit::FLAG_EOI, 0);
        assert_eq!(irq_state(&f, h, 0).eoi, [0; 16]);
    }

    #[test]
    fn exit_statistics_survive_the_guests_own_cpu_off_and_cpu_on() {
        // VCPU_STATS counts since the VM was created: a guest that powers a vCPU off and on
        // again (PSCI, served by EL2) must not wipe what the host already saw it do.
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        let wfi = || trap(0x01 << 26 | 1 << 25, 0);
        let run = |f: &Fixture, vcpu: u64, script: Vec<crate::hw::GuestTrap>| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = script;
            f.call_with(&rec, 0, H::VcpuRun, &[h, vcpu, 0]).unwrap()[0]
        };
        let cpu_on = |f: &Fixture| {
            for (n, v) in [PSCI_CPU_ON_64 as u64, 1, 0x5000, 7].into_iter().enumerate() {
                f.call(0, H::VcpuSetReg, &[h, 0, reg::x(n as u64), v, 0]).unwrap();
            }
        };
        cpu_on(&f);
        assert_eq!(run(&f, 0, vec![hvc()]), exit::CPU_ON as u64);
        assert_eq!(run(&f, 1, vec![wfi()]), exit::WFX as u64, "vCPU 1 on, then waits");
        f.call(0, H::VcpuSetReg, &[h, 1, reg::x(0), PSCI_CPU_OFF as u64, 0]).unwrap();
        assert_eq!(run(&f, 1, vec![hvc()]), exit::VCPU_OFF as u64);
        assert_eq!(f.call(0, H::VcpuStats, &[h, 1]), Ok([2, 0, 0]), "a WFI and the CPU_OFF call");
        cpu_on(&f);
        assert_eq!(run(&f, 0, vec![hvc()]), exit::CPU_ON as u64);
        assert_eq!(run(&f, 1, vec![wfi()]), exit::WFX as u64, "on again, from the reset state");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 1, reg::PC]), Ok([0x5004, 0, 0]), "reset to the new entry point");
        assert_eq!(f.call(0, H::VcpuStats, &[h, 1]), Ok([3, 0, 0]), "the counts of vCPU 1's first life are kept");
        let s = shared_abi::msg::VcpuStats::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        assert_eq!((s.counts[shared_abi::msg::stats::WFX], s.counts[shared_abi::msg::stats::HVC_SMC]), (2, 1));
    }

    #[test]
    fn every_exception_a_vcpu_takes_is_counted_by_class() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x8000_0000, 1]).unwrap();
        // A first touch (EL2 maps it), a call EL2 answers (SMCCC_VERSION), then WFI (exit).
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(0), smccc::arch::SMCCC_VERSION as u64, 0]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![dabt_translation(0x8000_0000), hvc(), trap(0x01 << 26 | 1 << 25, 0)];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        // Counts only: allowed for a protected VM that has run.
        assert_eq!(f.call(0, H::VcpuStats, &[h, 0]), Ok([3, 0, 0]));
        let s = VcpuStats::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0;
        let mut want = [0u64; stats::CLASSES];
        (want[stats::ABORT], want[stats::HVC_SMC], want[stats::WFX]) = (1, 1, 1);
        assert_eq!(s.counts, want);
        assert_eq!(f.call(0, H::VcpuStats, &[h, 1]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, H::VcpuStats, &[h + 1, 0]), Err(HypError::InvalidHandle));
    }
}
