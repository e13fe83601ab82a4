//! Trapped `MRS`/`MSR` (`ESR_EL2.EC == 0x18`) a guest makes: decoding, ID registers, SGI
//! generation, and the UNDEF for everything else.

use super::{GuestArch, Me, Next};
use crate::exception::{ec, Esr};
use crate::hyp::Hyp;
use crate::idreg;
use crate::pgtable::TableMemory;
use crate::vcpu::VcpuCtx;
use crate::vgic;
use core::sync::atomic::Ordering;
use shared_abi::msg::{exit, VcpuExit};

impl<T: TableMemory> Hyp<'_, T> {
    /// A trapped `MRS`/`MSR` of vCPU `me` that is not a first pointer-authentication use.
    pub(super) fn sysreg_trap(&self, handle: u64, me: Me<'_>, ctx: &mut VcpuCtx, esr: u64, arch: &impl GuestArch) -> Next {
        if let Some((sgi, value)) = sgi_write(esr, ctx, me) {
            ctx.pc = ctx.pc.wrapping_add(4);
            let args = [sgi.intid as u64, sgi.targets as u64, sgi.reg, 0];
            return Next::Exit(VcpuExit { reason: exit::SGI, data: value, args, ..Default::default() });
        }
        // ID registers (HCR_EL2.TID3): answered from the VM's values, without a lock.
        match sysreg_access(esr).and_then(|a| Some((a.rt, idreg_read(&a)?))) {
            Some((rt, i)) => {
                ctx.set_gpr(rt, self.idregs[me.vm_slot][i].load(Ordering::Relaxed));
                ctx.pc = ctx.pc.wrapping_add(4);
                Next::Resume
            }
            None => self.undef(handle, ctx, Esr(esr), arch),
        }
    }
}

/// A trapped `MRS`/`MSR` (`ESR_EL2.EC == 0x18`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysregAccess {
    /// `op0`.
    pub op0: u8,
    /// `op1`.
    pub op1: u8,
    /// `CRn`.
    pub crn: u8,
    /// `CRm`.
    pub crm: u8,
    /// `op2`.
    pub op2: u8,
    /// The general-purpose register.
    pub rt: u8,
    /// A read (`MRS`).
    pub read: bool,
}

/// Decodes the ISS of a trapped system-register access (Arm ARM D17.2.37, EC 0x18).
pub fn sysreg_access(esr: u64) -> Option<SysregAccess> {
    (Esr(esr).ec() == ec::SYS64).then_some(SysregAccess {
        op0: ((esr >> 20) & 3) as u8,
        op2: ((esr >> 17) & 7) as u8,
        op1: ((esr >> 14) & 7) as u8,
        crn: ((esr >> 10) & 0xF) as u8,
        rt: ((esr >> 5) & 0x1F) as u8,
        crm: ((esr >> 1) & 0xF) as u8,
        read: esr & 1 != 0,
    })
}

/// A trapped SGI generation write of vCPU `me`, decoded, and the value written.
fn sgi_write(esr: u64, ctx: &VcpuCtx, me: Me<'_>) -> Option<(vgic::Sgi, u64)> {
    let a = sysreg_access(esr)?;
    let value = ctx.gpr(a.rt);
    Some((vgic::decode_sgi(&a, value, me.index, me.nr_vcpus)?, value))
}

/// Whether a trapped `MRS`/`MSR` names a pointer-authentication key register.
pub(super) fn is_key_access(esr: u64) -> bool {
    sysreg_access(esr).is_some_and(|a| a.op0 == 3 && a.op1 == 0 && a.crn == 2 && (1..=3).contains(&a.crm))
}

/// The ID-register index a trapped read names, if it is one.
fn idreg_read(a: &SysregAccess) -> Option<usize> {
    (a.read && a.op0 == 3 && a.op1 == 0 && a.crn == 0 && (1..=7).contains(&a.crm)).then(|| idreg::idx(a.crm, a.op2))
}

#[cfg(test)]
mod tests {
    use crate::vm::tests::*;
    use super::*;

    #[test]
    fn id_register_reads_are_answered_from_the_vm() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        // MRS x3, ID_AA64ISAR0_EL1 (op0 3, op1 0, CRn 0, CRm 6, op2 0), then an MSR to it.
        let mrs = (0x18 << 26) | (1 << 25) | 3 << 20 | 3 << 5 | 6 << 1 | 1;
        let msr = mrs & !1;
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap(mrs, 0), trap(msr, 0), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let isar0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(6, 0))]).unwrap()[0];
        assert_eq!(isar0, 2 << 4, "the fixture CPU's AES 2, restricted");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(3)]), Ok([isar0, 0, 0]));
        assert_eq!(rec.2.borrow()[1], 4, "read stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::SYSREGS[SYS_ESR_EL1].1]), Ok([1 << 25, 0, 0]), "the write was an UNDEF");
        let sve = idreg::reg_id(idreg::idx(4, 0));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, sve, 0x11 | 1 << 32, 0]), Err(HypError::Frozen), "after the run");
    }

    #[test]
    fn unemulated_system_register_access_injects_undef() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::SYSREGS[SYS_VBAR_EL1].1, 0x8000]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap((0x18 << 26) | (1 << 25), 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[1], 0x8000 + 0x200, "resumed at the guest's EL1 sync vector");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::ELR_EL1]), Ok([0x1000, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::SYSREGS[SYS_ESR_EL1].1]), Ok([1 << 25, 0, 0]));
    }

    #[test]
    fn guest_sgis_exit_to_the_host_decoded() {
        let mut f = fixture();
        let h = create(&mut f, 4, vm_flags::PROTECTED);
        // MSR ICC_SGI1R_EL1, x5 (op0 3, op1 0, CRn 12, CRm 11, op2 5): INTID 7 to vCPUs 1, 3.
        let msr = |op2: u64| (0x18 << 26) | (1 << 25) | 3 << 20 | op2 << 17 | 12 << 10 | 5 << 5 | 11 << 1;
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(5), 7 << 24 | 0b1010]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        let rec = Recorder::default();
        *rec.1.borrow_mut() = vec![trap(msr(5), 0), trap(msr(7), 0), trap(msr(5) | 1, 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.args, e.data), ([7, 0b1010, shared_abi::msg::sgi::SGI1R, 0], 7 << 24 | 0b1010));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        assert_eq!(exit_record(&f).args[2], shared_abi::msg::sgi::SGI0R);
        // The read of the write-only register is an UNDEF, not an SGI.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.2.borrow()[..3], [0x1000, 0x1004, 0x1008], "each write stepped over");
    }
}
