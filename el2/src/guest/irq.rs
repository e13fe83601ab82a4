//! The vCPU's interrupt state and counters for the host: `VCPU_SET_IRQ`, `VCPU_IRQ_STATE`,
//! `VCPU_STATS`.

use crate::hyp::Hyp;
use crate::guest::vm::claim_vcpu;
use crate::mem::pgtable::TableMemory;
use crate::guest::vgic::{self, IrqError};
use shared_abi::{HypError, HypResult};

fn irq_err(e: IrqError) -> HypError {
    match e {
        IrqError::BadField => HypError::InvalidArgument,
        IrqError::Hardware | IrqError::NoVgic => HypError::Denied,
        IrqError::Queued => HypError::Busy,
        IrqError::Full => HypError::NoCapacity,
    }
}

/// `VCPU_SET_IRQ`: queues virtual interrupt `vintid` with `config` ([`shared_abi::msg::irq`])
/// in a free list register of vCPU `index`. Every field is checked before anything is
/// locked ([`vgic::lr_from_request`]); the list register value is EL2's own encoding.
/// Allowed for protected VMs after their first run: delivering interrupts is the host's
/// job, and an interrupt reveals nothing of the guest.
pub(crate) fn vcpu_set_irq<T: TableMemory>(hyp: &Hyp<'_, T>, handle: u64, index: u64, vintid: u64, config: u64) -> HypResult {
    let caps = hyp.vgic_caps().ok_or(HypError::Denied)?;
    let v = vgic::lr_from_request(vintid, config, caps).map_err(irq_err)?;
    let mut guard = claim_vcpu(hyp, handle, index)?;
    let n = guard.vgic.queue(v, caps.nr_lrs).map_err(irq_err)?;
    Ok([n as u64, 0, 0])
}

/// `VCPU_IRQ_STATE`: the vCPU's list registers and the deactivations the host asked to
/// hear about, to the message page (collecting the deactivations).
pub(crate) fn vcpu_irq_state<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64) -> HypResult {
    hyp.msg.page(cpu)?;
    let nr_lrs = hyp.vgic_caps().map_or(0, |c| c.nr_lrs);
    let mut guard = claim_vcpu(hyp, handle, index)?;
    // Collected only once the report is written: a failed write loses nothing.
    let mut vgic = guard.vgic.clone();
    let state = vgic.report(nr_lrs);
    hyp.msg.write(cpu, &state)?;
    guard.vgic = vgic;
    Ok([state.used as u64, 0, 0])
}

/// `VCPU_STATS`: the vCPU's exception counts, by class. Counts only: allowed for protected
/// VMs at any time.
pub(crate) fn vcpu_stats<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, handle: u64, index: u64) -> HypResult {
    hyp.msg.page(cpu)?;
    let guard = claim_vcpu(hyp, handle, index)?;
    let stats = shared_abi::msg::VcpuStats { counts: guard.stats };
    hyp.msg.write(cpu, &stats)?;
    Ok([guard.stats.iter().sum(), 0, 0])
}

#[cfg(test)]
mod tests {
    use crate::guest::vm::tests::*;
    use super::*;

    fn irq_state(f: &Fixture, h: u64, vcpu: u64) -> shared_abi::msg::VgicState {
        f.call(0, H::VcpuIrqState, &[h, vcpu]).unwrap();
        shared_abi::msg::VgicState::read_from_prefix(&f.ram.0[MSG * 4096..]).unwrap().0
    }

    #[test]
    fn set_irq_validates_every_field_and_fills_list_registers() {
        use shared_abi::msg::irq::{self, config, PENDING};
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
        let guard = f.hyp.vcpus[(h & 0xFF) as usize][1].claim().unwrap();
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 1, 35, spi]), Err(HypError::Busy));
        assert_eq!(f.call(0, H::VcpuIrqState, &[h, 1]), Err(HypError::Busy));
        drop(guard);
        // Destroy forgets everything queued.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let layout = crate::invariants::Layout { pool: None, fixmap: None };
        assert!(crate::invariants::check(&f.hyp, &f.hyp.mem.lock(), &layout).is_ok());
    }

    #[test]
    fn set_irq_is_denied_without_a_virtual_cpu_interface() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.hyp.report_vgic(None);
        let spi = shared_abi::msg::irq::config(0xA0, true, 1, false) as u64;
        assert_eq!(f.call(0, H::VcpuSetIrq, &[h, 0, 32, spi]), Err(HypError::Denied));
    }

    #[test]
    fn deactivated_level_interrupts_are_reported_once() {
        use shared_abi::msg::irq::{config, PENDING};
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
            let mut g = f.hyp.vcpus[(h & 0xFF) as usize][0].claim().unwrap();
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
        use smccc::psci::{PSCI_CPU_OFF, PSCI_CPU_ON_64};
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
        use shared_abi::msg::{stats, VcpuStats};
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
