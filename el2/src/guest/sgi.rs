//! Linked SGIs (`VCPU_LINK_SGIS`): an SGI between two vCPUs of a VM that EL2 delivers itself,
//! without exits, while the target runs.
//!
//! Place in the flow: the sender's trapped `ICC_SGI1R_EL1` write ([`send`], from
//! `guest::sysreg`), the target's entry ([`entered`]), its doorbell IRQ and its `WFI`
//! ([`may_wait`]), from `guest::exit`. The list registers are `vgic`'s
//! ([`crate::guest::vgic::VgicCpu::queue_sgis_live`]).
//!
//! **The protocol.** Each vCPU slot has a pending mask (bit n = SGI n) and `running_on` (the
//! CPU index plus one while the vCPU runs linked, 0 otherwise). The sender sets the bit, then
//! reads `running_on`: running elsewhere, it rings that CPU's doorbell, whose IRQ makes the
//! target take its mask into its list registers; not running, it takes the bit back and leaves
//! the SGI to the host (the `SGI` exit's targets), which wakes the vCPU and queues it as for an
//! unlinked one. The target publishes `running_on` and then takes its mask at every entry;
//! before it exits on `WFI` it clears `running_on` and looks at its mask once more. Both sides
//! use sequentially consistent accesses, so of a sender's bit and a target's `running_on`
//! change at least one sees the other: an SGI is never left in a mask whose vCPU sleeps, and
//! never delivered twice (a bit taken back was not taken by the target).

use crate::guest::running::Me;
use crate::guest::vcpu::{VcpuCtx, VcpuSlot};
use crate::guest::vgic::Sgi;
use crate::hw::Hw;
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use core::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};

/// Takes the vCPU's pending linked SGIs into its list registers; what finds none stays.
/// Whether any was queued.
fn take<A: Hw>(slot: &VcpuSlot, ctx: &mut VcpuCtx, arch: &A, saved: &mut A::Saved) -> bool {
    let bits = slot.sgi_pending.swap(0, SeqCst);
    if bits == 0 {
        return false;
    }
    let left = arch.queue_sgis(ctx, saved, bits);
    if left != 0 {
        slot.sgi_pending.fetch_or(left, SeqCst);
    }
    left != bits
}

/// The doorbell (already consumed) reached this vCPU: a linked one takes its pending SGIs. An
/// unlinked one takes nothing: a sibling's bit left in its mask is that sibling's to take back.
pub fn doorbell<A: Hw>(slot: &VcpuSlot, ctx: &mut VcpuCtx, arch: &A, saved: &mut A::Saved) {
    if slot.sgi_linked.load(Acquire) {
        take(slot, ctx, arch, saved);
    }
}

/// After load on CPU `cpu`: a linked vCPU runs there from now on, and takes what is pending.
/// Whether it queued any.
pub fn entered<A: Hw>(slot: &VcpuSlot, cpu: usize, ctx: &mut VcpuCtx, arch: &A, saved: &mut A::Saved) -> bool {
    if !slot.sgi_linked.load(Acquire) {
        return false;
    }
    slot.running_on.store(cpu as u8 + 1, SeqCst);
    take(slot, ctx, arch, saved)
}

/// At put: no longer running. (Only this CPU, holding the vCPU's claim, sets `running_on`:
/// a vCPU that is not linked, or cleared it at a `WFI`, costs no store.)
pub fn left(slot: &VcpuSlot) {
    if slot.running_on.load(Relaxed) != 0 {
        slot.running_on.store(0, SeqCst);
    }
}

/// The guest's `WFI` or `WFE` (on CPU `cpu`): whether it may wait in the host. Not while a
/// linked SGI it has enabled is pending and finds a list register: queued, and the guest
/// resumes. (One that finds none waits with it: the guest then holds interrupts it has not
/// finished, which cap the host's sleep.)
pub fn may_wait<A: Hw>(slot: &VcpuSlot, cpu: usize, ctx: &mut VcpuCtx, arch: &A, saved: &mut A::Saved) -> bool {
    if !slot.sgi_linked.load(Acquire) {
        return true;
    }
    slot.running_on.store(0, SeqCst);
    if slot.sgi_pending.load(SeqCst) & ctx.vgic.sgi_on == 0 {
        return true;
    }
    !entered(slot, cpu, ctx, arch, saved)
}

/// vCPU `me` (its context `ctx`, loaded) sent `sgi`: made pending on each linked target, with
/// the doorbell rung where one runs elsewhere, and on itself at once. Returns the targets left
/// to the host: those not linked, or not running.
pub fn send<T: TableMemory, A: Hw>(hyp: &Hyp<'_, T>, me: &Me<'_>, ctx: &mut VcpuCtx, sgi: &Sgi, arch: &A, saved: &mut A::Saved) -> u8 {
    let bit = 1u16 << sgi.intid;
    let mut host = 0;
    for t in (0..8).filter(|t| sgi.targets & 1 << t != 0) {
        let slot = &hyp.vcpus[me.vm_slot][t];
        if !slot.sgi_linked.load(Acquire) {
            host |= 1 << t;
            continue;
        }
        slot.sgi_pending.fetch_or(bit, SeqCst);
        if t == me.index {
            let _ = take(slot, ctx, arch, saved);
            continue;
        }
        match slot.running_on.load(SeqCst) {
            // Not running: the bit back if still there, and the host delivers.
            0 => {
                if slot.sgi_pending.fetch_and(!bit, SeqCst) & bit != 0 {
                    host |= 1 << t;
                }
            }
            c => {
                if let Some(&mpidr) = hyp.platform.cpus.get(c as usize - 1) {
                    arch.ring_doorbell(mpidr);
                }
            }
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use crate::guest::sysreg::tests::sysreg_esr;
    use crate::guest::vcpu::power;
    use crate::guest::vm::handle_slot;
    use crate::hw::{GuestTrap, TrapKind};
    use crate::testing::*;
    use core::sync::atomic::Ordering::SeqCst;

    /// The guest's `MSR ICC_SGI1R_EL1, X0`, with X0 = SGI `intid` to the vCPUs in `targets`.
    fn sgi1r(intid: u64, targets: u64) -> (GuestTrap, [u64; 4]) {
        (trap(sysreg_esr(3, 0, 12, 11, 5, 0, false), 0), [intid << 24 | targets, 0, 0, 0])
    }

    #[test]
    fn linked_sgis_reach_running_siblings_through_el2_and_the_rest_through_the_host() {
        let mut f = fixture();
        let h = create(&mut f, 3, 0);
        let slots = &f.hyp.vcpus[handle_slot(h)];
        for v in &slots[1..] {
            v.power.store(power::ON, SeqCst);
        }
        // vCPUs 1 and 2 linked (SGIs 0..=7 enabled, Group 1, priority 0x80); vCPU 0 not.
        let prio = u64::from_le_bytes([0x80; 8]);
        let link = |v: u64, on: u64, masks: u64, p: u64| f.call(0, H::VcpuLinkSgis, &[h, v, on, masks, p, p]);
        for v in [1, 2] {
            assert_eq!(link(v, 1, 0xFF | 0xFF << 16, prio), Ok([0; 3]));
        }
        // vCPU 1 runs on CPU 1 (its index plus one), vCPU 2 does not run.
        slots[1].running_on.store(2, SeqCst);
        let run = |f: &Fixture, vcpu: u64, script: Vec<(GuestTrap, [u64; 4])>, rec: Recorder| {
            *rec.exits.borrow_mut() = script.iter().map(|s| s.0).collect();
            *rec.calls.borrow_mut() = script.iter().map(|s| s.1).collect();
            let r = f.call_with(&rec, 0, H::VcpuRun, &[h, vcpu, 0]);
            (r, rec)
        };
        // To all three: the running sibling's bit set and its CPU's doorbell rung; the one not
        // running and the unlinked sender left to the host, which the exit says.
        let (r, rec) = run(&f, 0, vec![sgi1r(3, 0b111)], Recorder::default());
        assert_eq!(r, Ok([exit::SGI as u64, 0, 0]));
        assert_eq!(exit_record(&f).args[..2], [3, 0b101]);
        assert_eq!(*rec.doorbells_rung.borrow(), [1], "CPU 1's affinity");
        assert_eq!((slots[1].sgi_pending.load(SeqCst), slots[2].sgi_pending.load(SeqCst)), (1 << 3, 0), "vCPU 2's bit taken back");
        // To the running sibling alone: no exit at all.
        let (r, rec) = run(&f, 0, vec![sgi1r(4, 0b010), (hvc(), [0; 4])], Recorder::default());
        assert_eq!(r, Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow().len(), 2, "resumed after the SGI");
        assert_eq!(slots[1].sgi_pending.load(SeqCst), 1 << 3 | 1 << 4);
        // vCPU 1 runs: takes both at entry; its doorbell takes what came since (nothing here);
        // it is not running once its run ends.
        slots[1].running_on.store(0, SeqCst);
        let (_, rec) = run(&f, 1, vec![(GuestTrap { kind: TrapKind::Irq, esr: 0, far: 0, hpfar: 0 }, [0; 4]), (hvc(), [0; 4])], {
            let r = Recorder::default();
            r.doorbells.set(1);
            r
        });
        assert_eq!(*rec.sgis_queued.borrow(), [1 << 3 | 1 << 4]);
        assert_eq!(rec.entry_pcs.borrow().len(), 2, "the doorbell resumed the guest");
        assert_eq!((slots[1].sgi_pending.load(SeqCst), slots[1].running_on.load(SeqCst)), (0, 0));
        // A WFI with an enabled SGI pending (no list register for it at entry, one now)
        // resumes instead of waiting; still none, or a disabled one, does not keep it from
        // waiting.
        let wfi = (trap(0x01 << 26 | 1 << 25, 0), [0; 4]);
        slots[1].sgi_pending.store(1 << 5, SeqCst);
        let rec = Recorder::default();
        *rec.sgis_left.borrow_mut() = vec![1 << 5];
        let (r, rec) = run(&f, 1, vec![wfi, (hvc(), [0; 4])], rec);
        assert!(r.is_ok());
        assert_eq!(*rec.sgis_queued.borrow(), [1 << 5, 1 << 5], "at entry, and before the WFI");
        assert_eq!(exit_record(&f).reason, exit::HYPERCALL, "not WFX");
        for (pending, why) in [(1 << 5, "no list register"), (1 << 9, "SGI 9 is disabled")] {
            slots[1].sgi_pending.store(pending, SeqCst);
            let rec = Recorder::default();
            *rec.sgis_left.borrow_mut() = vec![pending, pending];
            let (r, _) = run(&f, 1, vec![wfi], rec);
            assert_eq!(r, Ok([exit::WFX as u64, 0, 0]), "{why}");
        }
        // An SGI to itself is taken at once.
        let rec = Recorder::default();
        *rec.sgis_left.borrow_mut() = vec![1 << 9, 1 << 9];
        let (_, rec) = run(&f, 1, vec![sgi1r(2, 0b010), (hvc(), [0; 4])], rec);
        assert_eq!(*rec.sgis_queued.borrow(), [1 << 9, 1 << 9 | 1 << 2], "the disabled one at entry, then with its own");
        // Unlinking hands back what EL2 still held; hostile configurations are refused.
        assert_eq!(link(1, 0, 0, 0), Ok([1 << 9, 0, 0]));
        assert!(!slots[1].sgi_linked.load(SeqCst));
        for (on, masks, p) in [(1, 1 << 32, 0), (1, 0, 1), (0, 1, 0), (2, 0, 0)] {
            assert_eq!(link(2, on, masks, p), Err(HypError::InvalidArgument), "{on} {masks:#x} {p:#x}");
        }
        // Destroy forgets everything.
        f.call(0, H::VmDestroy, &[h]).unwrap();
        assert!(!slots[2].sgi_linked.load(SeqCst));
    }
}
