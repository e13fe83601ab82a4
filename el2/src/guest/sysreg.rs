//! Trapped `MRS`/`MSR`/`SYS` (`ESR_EL2.EC == 0x18`) a guest makes: decoding, ID registers, the
//! cache type and cache identification registers, SGI generation, the debug registers, the EL1
//! physical timer, set/way cache maintenance, and the UNDEF for everything else.

use crate::guest::running::{undef, Me, Next};
use crate::hw::Hw;
use crate::exception::syndrome::{sysreg_access, Esr, SysregAccess};
use crate::hyp::Hyp;
use crate::guest::memory::clean_vm_to_poc;
use crate::cpu::{cachetype, idreg};
use crate::mem::pgtable::TableMemory;
use crate::guest::vcpu::{SysReg, VcpuCtx, MDSCR_TDCC};
use crate::guest::vgic;
use core::sync::atomic::Ordering;
use shared_abi::msg::Exit;

/// A trapped `MRS`/`MSR` of vCPU `me` that is not a first pointer-authentication use.
pub(crate) fn sysreg_trap<T: TableMemory, A: Hw>(hyp: &Hyp<'_, T>, handle: u64, me: &Me<'_>, ctx: &mut VcpuCtx, esr: u64, arch: &A, saved: &mut A::Saved) -> Next {
    if let Some((sgi, value)) = sgi_write(esr, ctx, me) {
        ctx.skip_instruction();
        // Linked targets EL2 served; the rest (or an SGI to no vCPU) the host's model decides.
        let targets = crate::guest::sgi::send(hyp, me, ctx, &sgi, arch, saved);
        if targets == 0 && sgi.targets != 0 {
            return Next::Resume;
        }
        return Next::Exit(Exit::Sgi { intid: sgi.intid, targets: targets as u64, reg: sgi.reg, value });
    }
    let Some(a) = sysreg_access(esr) else { return undef(hyp, handle, ctx, Esr(esr), arch) };
    let done = if let Some(i) = idreg_read(&a) {
        // ID registers (HCR_EL2.TID3): answered from the VM's values, without a lock.
        Some(Emulated::Read(hyp.idregs[me.vm_slot][i].load(Ordering::Relaxed)))
    } else if is_ctr(&a) {
        // CTR_EL0 (HCR_EL2.TID2): what every CPU satisfies, not this one's (cpu::cachetype).
        a.read.then(|| Emulated::Read(hyp.guest_ctr()))
    } else if is_cache_id(&a) {
        // CLIDR_EL1, CCSIDR_EL1, CCSIDR2_EL1, CSSELR_EL1 (HCR_EL2.TID2), made from the same
        // CTR_EL0. The guest's CSSELR_EL1 is live in the CPU: through the context.
        arch.el1_to_ctx(ctx);
        let value = ctx.gpr(a.rt);
        let r = cache_id_access(&a, value, &mut ctx.sys[SysReg::CSSELR_EL1], hyp.guest_ctr(), me.mte);
        if r == Some(Emulated::Written) {
            arch.el1_from_ctx(ctx);
        }
        r
    } else if a.op0 == 2 {
        // Debug registers (MDCR_EL2.TDA/TDOSA), while trapped: emulated against the vCPU's
        // copy; a use of breakpoints or watchpoints makes them live for the rest of the run,
        // the OS lock takes them back (`DebugRegs`).
        let dfr0 = hyp.idregs[me.vm_slot][idreg::idx(5, 0)].load(Ordering::Relaxed);
        let from_el0 = ctx.pstate & PSTATE_EL_MASK == 0;
        let r = debug_access(&a, ctx.gpr(a.rt), &mut ctx.debug, dfr0, from_el0);
        if r.is_some() {
            let uses = uses_breakpoints(&a) || ctx.debug.live_from_entry();
            arch.debug_sync(ctx, saved, uses);
        }
        r
    } else if a.op0 == 3 && a.op1 == 3 && a.crn == 14 && a.crm == 2 {
        // The EL1 physical timer (CNTHCTL_EL2.EL1PCEN clear): emulated against the physical
        // count; the guest never reaches the real one, which is the host's.
        let r = ptimer_access(&a, ctx.gpr(a.rt), &mut ctx.ptimer, arch.counter());
        if r == Some(Emulated::Written) {
            arch.ptimer_backing(&ctx.ptimer);
        }
        r
    } else if is_set_way(&a, me.mte) {
        // DC ISW/CSW/CISW (HCR_EL2.TSW). With FWB the guest's view of its memory is always
        // Write-Back cacheable, and so coherent with every other view: nothing a set/way
        // operation could make visible is not already. Without FWB the guest may run with
        // caching off: its whole memory goes to the PoC, once per VCPU_RUN (a guest cleans
        // by set/way in a loop over every set and way; the first clean covers the rest).
        if !me.fwb && !me.set_way_done.replace(true) {
            clean_vm_to_poc(hyp, handle, arch);
        }
        Some(Emulated::Written)
    } else {
        None
    };
    match done {
        Some(e) => {
            if let Emulated::Read(v) = e {
                ctx.set_gpr(a.rt, v);
            }
            ctx.skip_instruction();
            Next::Resume
        }
        None => undef(hyp, handle, ctx, Esr(esr), arch),
    }
}

/// A trapped access to the EL1 physical timer (`CNTP_TVAL_EL0`, `CNTP_CTL_EL0`,
/// `CNTP_CVAL_EL0`: op0 3, op1 3, CRn 14, CRm 2, op2 0/1/2) with value `value` (for a write),
/// against the vCPU's timer `t` at physical count `now`. `None` for another op2.
///
/// As the Arm ARM's generic timer: `CTL` reads `ISTATUS` (bit 2) = ENABLE and `now >= CVAL`
/// (whatever IMASK); writes keep ENABLE and IMASK only. `TVAL` reads the low 32 bits of
/// `CVAL - now` (a signed count, zero-extended), and a write sets `CVAL` to `now` plus the
/// sign-extended low 32 bits of the value. Every value is accepted; arithmetic wraps as the
/// hardware's does.
pub(super) fn ptimer_access(a: &SysregAccess, value: u64, t: &mut crate::guest::timer::PTimer, now: u64) -> Option<Emulated> {
    use crate::guest::timer::{TIMER_ENABLE, TIMER_IMASK, TIMER_ISTATUS};
    Some(match (a.op2, a.read) {
        (0, true) => Emulated::Read(t.cval.wrapping_sub(now) as u32 as u64),
        (0, false) => {
            t.cval = now.wrapping_add(value as u32 as i32 as i64 as u64);
            Emulated::Written
        }
        (1, true) => {
            let fired = t.ctl & TIMER_ENABLE != 0 && now >= t.cval;
            Emulated::Read(t.ctl | if fired { TIMER_ISTATUS } else { 0 })
        }
        (1, false) => {
            t.ctl = value & (TIMER_ENABLE | TIMER_IMASK);
            Emulated::Written
        }
        (2, true) => Emulated::Read(t.cval),
        (2, false) => {
            t.cval = value;
            Emulated::Written
        }
        _ => return None,
    })
}

/// Whether `a` is `CTR_EL0` (op0 3, op1 3, CRn 0, CRm 0, op2 1).
fn is_ctr(a: &SysregAccess) -> bool {
    (a.op0, a.op1, a.crn, a.crm, a.op2) == (3, 3, 0, 0, 1)
}

/// Whether `a` is one of the other registers `HCR_EL2.TID2` traps: `CCSIDR_EL1`, `CLIDR_EL1`,
/// `CCSIDR2_EL1` (op0 3, op1 1, CRn 0, CRm 0, op2 0/1/2) or `CSSELR_EL1` (op0 3, op1 2, CRn 0,
/// CRm 0, op2 0).
fn is_cache_id(a: &SysregAccess) -> bool {
    a.op0 == 3 && a.crn == 0 && a.crm == 0 && matches!((a.op1, a.op2), (1, 0..=2) | (2, 0))
}

/// A trapped access to a cache identification register ([`is_cache_id`]) with value `value`
/// (for a write), against the vCPU's `CSSELR_EL1` `csselr`, for a VM whose guests read `ctr`
/// (`mte`: the VM has MTE). `CLIDR_EL1` and `CCSIDR_EL1` are made from `ctr`
/// ([`cachetype::clidr`], [`cachetype::ccsidr`]); `CCSIDR2_EL1` (which traps only where
/// FEAT_CCIDX makes it exist) reads 0, one set; `CSSELR_EL1` reads back what was written, its
/// defined bits only. `None` for a write of a read-only register: an UNDEF.
pub(super) fn cache_id_access(a: &SysregAccess, value: u64, csselr: &mut u64, ctr: u64, mte: bool) -> Option<Emulated> {
    let clidr = cachetype::clidr(ctr, mte);
    Some(match (a.op1, a.op2, a.read) {
        (1, 0, true) => Emulated::Read(cachetype::ccsidr(ctr, *csselr, clidr)),
        (1, 1, true) => Emulated::Read(clidr),
        (1, 2, true) => Emulated::Read(0),
        (2, 0, true) => Emulated::Read(*csselr),
        (2, 0, false) => {
            *csselr = value & cachetype::csselr_mask(mte);
            Emulated::Written
        }
        _ => return None,
    })
}

/// Whether `a` is data-cache maintenance by set/way: `DC ISW`, `DC CSW`, `DC CISW` (op0 1, op1 0,
/// CRn 7, CRm 6/10/14, op2 2), and for an MTE VM the tag forms (op2 4 and 6: `DC IGSW`,
/// `IGDSW`, `CGSW`, `CGDSW`, `CIGSW`, `CIGDSW`).
pub(super) fn is_set_way(a: &SysregAccess, mte: bool) -> bool {
    a.op0 == 1 && a.op1 == 0 && a.crn == 7 && matches!(a.crm, 6 | 10 | 14) && !a.read && (a.op2 == 2 || (mte && matches!(a.op2, 4 | 6)))
}

/// `PSTATE.M[3:2]`, the exception level (0 for EL0).
const PSTATE_EL_MASK: u64 = 0b1100;

/// What EL2 made of an access it emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Emulated {
    /// A read: the value for `Rt`.
    Read(u64),
    /// A write, done (or ignored).
    Written,
}

/// `MDSCR_EL1` bits a guest may set and read back: SS (0), ERR (6), TDCC (12), KDE (13),
/// HDE (14), MDE (15), SC2 (19), TDA (21), INTdis (23:22), TXU (26), RXO (27), TXfull (29),
/// RXfull (30). Everything else (RES0, or fields of features the VM's ID registers hide) reads
/// as zero.
pub const MDSCR_EL1_MASK: u64 = 1 | 1 << 6 | 0xF << 12 | 1 << 19 | 1 << 21 | 0b11 << 22 | 0b11 << 26 | 0b11 << 29;
/// `OSLSR_EL1.OSLM` = 0b10 (bit 3 set, bit 0 clear): the OS lock is implemented (FEAT_DoubleLock
/// aside, which the VM's ID registers hide).
const OSLSR_EL1_OSLM: u64 = 1 << 3;

/// `DBGBCR<n>_EL1` bits a guest may set: BT (23:20), LBN (19:16), SSC (15:14), HMC (13), BAS
/// (8:5), PMC (2:1), E (0).
pub const DBGBCR_MASK: u64 = 0x00FF_E1E7;
/// `DBGWCR<n>_EL1` bits a guest may set: MASK (28:24), WT (20), LBN (19:16), SSC (15:14), HMC
/// (13), BAS (12:5), LSC (4:3), PAC (2:1), E (0).
pub const DBGWCR_MASK: u64 = 0x1F1F_FFFF;
/// `DBGBVR<n>_EL1`, `DBGWVR<n>_EL1`: bits 1:0 are RES0.
pub const DBGXVR_MASK: u64 = !0b11;
/// `DBGAUTHSTATUS_EL1`: Non-secure invasive and non-invasive debug implemented and enabled
/// (NSID, NSNID = 0b11); no Secure state.
const DBGAUTHSTATUS_NS: u64 = 0b1111;

/// Whether a debug-register access is a use of breakpoints or watchpoints (their registers, or
/// `MDSCR_EL1`): the registers then go live ([`crate::guest::vcpu::DebugRegs`]).
fn uses_breakpoints(a: &SysregAccess) -> bool {
    a.op1 == 0 && a.crn == 0 && ((4..=7).contains(&a.op2) || (a.crm, a.op2) == (2, 2))
}

/// A trapped access to a debug register (`op0 == 2`) with value `value` (for a write), against
/// the vCPU's copy `dbg` and the VM's `ID_AA64DFR0_EL1` `dfr0`; `from_el0` if the guest was at
/// EL0. `None`: not emulated (an UNDEF in the guest).
///
/// Breakpoint and watchpoint registers, for `n` up to what `dfr0` advertises (`BRPs`, `WRPs`:
/// the count minus one), read back what was written, masked to their fields. `MDSCR_EL1` reads
/// back what was written ([`MDSCR_EL1_MASK`]), the OS lock (`OSLAR_EL1`) shows in `OSLSR_EL1`.
/// The OS double lock (FEAT_DoubleLock, hidden), the power-down and claim-tag registers and
/// the debug communication channel read as zero and ignore writes. Trace (`op1 == 1`), the ROM
/// address (`MDRAR_EL1`), the registers of debug state (`OSDTRRX/TX_EL1`, `DLR/DSPSR_EL0`) and
/// the wrong direction of a read-only or write-only register are not emulated.
pub(super) fn debug_access(a: &SysregAccess, value: u64, dbg: &mut crate::guest::vcpu::DebugRegs, dfr0: u64, from_el0: bool) -> Option<Emulated> {
    let raz_wi = Some(if a.read { Emulated::Read(0) } else { Emulated::Written });
    let reg = |r: &mut u64, mask: u64| {
        Some(if a.read {
            Emulated::Read(*r)
        } else {
            *r = value & mask;
            Emulated::Written
        })
    };
    match (a.op1, a.crn, a.crm, a.op2) {
        // MDSCR_EL1.
        (0, 0, 2, 2) => {
            if a.read {
                Some(Emulated::Read(dbg.mdscr))
            } else {
                dbg.mdscr = value & MDSCR_EL1_MASK;
                Some(Emulated::Written)
            }
        }
        // OSLAR_EL1 (write-only).
        (0, 1, 0, 4) if !a.read => {
            dbg.oslk = value & 1 != 0;
            Some(Emulated::Written)
        }
        // OSLSR_EL1 (read-only).
        (0, 1, 1, 4) if a.read => Some(Emulated::Read(OSLSR_EL1_OSLM | (dbg.oslk as u64) << 1)),
        // MDCCINT_EL1, OSECCR_EL1, OSDLR_EL1, DBGPRCR_EL1, DBGCLAIMSET_EL1, DBGCLAIMCLR_EL1.
        (0, 0, 2, 0) | (0, 0, 6, 2) | (0, 1, 3, 4) | (0, 1, 4, 4) | (0, 7, 8, 6) | (0, 7, 9, 6) => raz_wi,
        // DBGBVR<n>_EL1, DBGBCR<n>_EL1 (op2 4, 5), DBGWVR<n>_EL1, DBGWCR<n>_EL1 (6, 7). (`n` is
        // CRm, below 16 = DEBUG_SLOTS.)
        (0, 0, n, 4) if n as u64 <= (dfr0 >> 12) & 0xF => reg(&mut dbg.bvr[n as usize & 15], DBGXVR_MASK),
        (0, 0, n, 5) if n as u64 <= (dfr0 >> 12) & 0xF => reg(&mut dbg.bcr[n as usize & 15], DBGBCR_MASK),
        (0, 0, n, 6) if n as u64 <= (dfr0 >> 20) & 0xF => reg(&mut dbg.wvr[n as usize & 15], DBGXVR_MASK),
        (0, 0, n, 7) if n as u64 <= (dfr0 >> 20) & 0xF => reg(&mut dbg.wcr[n as usize & 15], DBGWCR_MASK),
        // DBGAUTHSTATUS_EL1 (read-only).
        (0, 7, 14, 6) if a.read => Some(Emulated::Read(DBGAUTHSTATUS_NS)),
        // The debug communication channel: MDCCSR_EL0, DBGDTR_EL0, DBGDTRRX_EL0/DBGDTRTX_EL0.
        // At EL0 the guest's own MDSCR_EL1.TDCC decides, as on hardware (an UNDEF).
        (3, 0, 1, 0) | (3, 0, 4, 0) | (3, 0, 5, 0) if from_el0 && dbg.mdscr & MDSCR_TDCC != 0 => None,
        (3, 0, 1, 0) | (3, 0, 4, 0) | (3, 0, 5, 0) => raz_wi,
        _ => None,
    }
}

/// A trapped SGI generation write of vCPU `me`, decoded, and the value written.
fn sgi_write(esr: u64, ctx: &VcpuCtx, me: &Me<'_>) -> Option<(vgic::Sgi, u64)> {
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
pub(crate) mod tests {
    use crate::testing::*;
    use super::*;

    /// The syndrome of `MRS`/`MSR` (`read`) of `S<op0>_<op1>_C<crn>_C<crm>_<op2>` with `Xrt`.
    pub(crate) fn sysreg_esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
        (0x18 << 26) | (1 << 25) | op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | read as u64
    }

    fn access(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, read: bool) -> SysregAccess {
        sysreg_access(sysreg_esr(op0, op1, crn, crm, op2, 4, read)).unwrap()
    }

    #[test]
    fn debug_registers_are_a_shadow_the_guest_reads_back() {
        use crate::guest::vcpu::DebugRegs;
        let mut d = DebugRegs::RESET;
        // (BRPs 5, WRPs 3: six breakpoints, four watchpoints.)
        let dfr0 = 6 | 5 << 12 | 3 << 20;
        let mut go = |a: SysregAccess, v: u64, el0: bool| debug_access(&a, v, &mut d, dfr0, el0);
        // MDSCR_EL1: written (masked to its defined bits) and read back.
        assert_eq!(go(access(2, 0, 0, 2, 2, false), u64::MAX, false), Some(Emulated::Written));
        assert_eq!(go(access(2, 0, 0, 2, 2, true), 0, false), Some(Emulated::Read(MDSCR_EL1_MASK)));
        assert_eq!(MDSCR_EL1_MASK, 0x6CE8_F041);
        go(access(2, 0, 0, 2, 2, false), 1 << 15 | 1 << 63, false);
        assert_eq!(go(access(2, 0, 0, 2, 2, true), 0, false), Some(Emulated::Read(1 << 15)), "MDE kept, RES0 bit dropped");
        // The OS lock: locked at reset, cleared by OSLAR_EL1, shown by OSLSR_EL1 (OSLM 0b10).
        assert_eq!(go(access(2, 0, 1, 1, 4, true), 0, false), Some(Emulated::Read(0b1010)));
        assert_eq!(go(access(2, 0, 1, 0, 4, false), 0, false), Some(Emulated::Written));
        assert_eq!(go(access(2, 0, 1, 1, 4, true), 0, false), Some(Emulated::Read(0b1000)));
        go(access(2, 0, 1, 0, 4, false), 0xFFFF_FFFF, false);
        assert_eq!(go(access(2, 0, 1, 1, 4, true), 0, false), Some(Emulated::Read(0b1010)), "only bit 0 of OSLAR counts");
        // The wrong direction of a write-only or read-only register: UNDEF.
        assert_eq!(go(access(2, 0, 1, 0, 4, true), 0, false), None, "OSLAR_EL1 read");
        assert_eq!(go(access(2, 0, 1, 1, 4, false), 0, false), None, "OSLSR_EL1 write");
        assert_eq!(go(access(2, 0, 7, 14, 6, false), 0, false), None, "DBGAUTHSTATUS_EL1 write");
        assert_eq!(go(access(2, 0, 7, 14, 6, true), 0, false), Some(Emulated::Read(0b1111)), "DBGAUTHSTATUS_EL1: Non-secure debug permitted");
        // RAZ/WI: OSDLR, DBGPRCR, the claim tags, OSECCR, MDCCINT.
        for (crn, crm, op2) in [(1, 3, 4), (1, 4, 4), (7, 8, 6), (7, 9, 6), (0, 6, 2), (0, 2, 0)] {
            assert_eq!(go(access(2, 0, crn, crm, op2, false), u64::MAX, false), Some(Emulated::Written), "{crn} {crm} {op2}");
            assert_eq!(go(access(2, 0, crn, crm, op2, true), 0, false), Some(Emulated::Read(0)), "{crn} {crm} {op2}");
        }
        // Breakpoints 0..=5 and watchpoints 0..=3 exist and read back what was written, masked
        // to their fields; the next ones do not.
        for n in 0..16 {
            for (op2, mask) in [(4, DBGXVR_MASK), (5, DBGBCR_MASK), (6, DBGXVR_MASK), (7, DBGWCR_MASK)] {
                let exists = n <= if op2 < 6 { 5 } else { 3 };
                let v = 0xFFFF_FFFF_FFFF_FF00 | n;
                let want = exists.then_some(Emulated::Written);
                assert_eq!(go(access(2, 0, 0, n, op2, false), v, false), want, "write {n} {op2}");
                let want = exists.then_some(Emulated::Read(v & mask));
                assert_eq!(go(access(2, 0, 0, n, op2, true), 0, false), want, "read {n} {op2}");
            }
        }
        // The debug communication channel: RAZ/WI, but at EL0 the guest's MDSCR_EL1.TDCC
        // decides (clear so far: MDE alone was set).
        assert_eq!(go(access(2, 3, 0, 1, 0, true), 0, true), Some(Emulated::Read(0)), "MDCCSR_EL0 at EL0, TDCC clear");
        go(access(2, 0, 0, 2, 2, false), MDSCR_TDCC, false);
        for crm in [1, 4, 5] {
            assert_eq!(go(access(2, 3, 0, crm, 0, true), 0, true), None, "EL0 with TDCC set: UNDEF");
            assert_eq!(go(access(2, 3, 0, crm, 0, false), 7, false), Some(Emulated::Written), "EL1: WI");
            assert_eq!(go(access(2, 3, 0, crm, 0, true), 0, false), Some(Emulated::Read(0)), "EL1: RAZ");
        }
        // Not emulated: trace (op1 1), MDRAR_EL1, OSDTRRX_EL1, anything unknown.
        assert_eq!(go(access(2, 1, 0, 0, 0, true), 0, false), None, "trace");
        assert_eq!(go(access(2, 0, 1, 0, 0, true), 0, false), None, "MDRAR_EL1");
        assert_eq!(go(access(2, 0, 0, 0, 2, true), 0, false), None, "OSDTRRX_EL1");
        assert_eq!(go(access(2, 4, 0, 0, 0, true), 0, false), None);
        assert_eq!((d.bcr[5], d.wcr[3], d.bcr[6], d.wvr[4]), (0xFFFF_FFFF_FFFF_FF05 & DBGBCR_MASK, 0xFFFF_FFFF_FFFF_FF03 & DBGWCR_MASK, 0, 0));
    }

    #[test]
    fn debug_registers_go_live_at_first_use_once_the_os_lock_is_clear() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        let bcr0_write = trap(sysreg_esr(2, 0, 0, 0, 5, 1, false), 0);
        let oslar_clear = trap(sysreg_esr(2, 0, 1, 0, 4, 31, false), 0);
        let run = |f: &Fixture, script: Vec<crate::hw::GuestTrap>| {
            let rec = Recorder::default();
            *rec.exits.borrow_mut() = script;
            f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
            let log: Vec<_> = rec.log.borrow().iter().copied().filter(|e| e.starts_with("debug")).collect();
            log
        };
        // At reset the OS lock is locked: the write is emulated, the registers stay trapped.
        assert_eq!(run(&f, vec![bcr0_write, hvc()]), ["debug_trapped"]);
        // Unlocked (OSLAR_EL1 = XZR), the next use makes them live.
        assert_eq!(run(&f, vec![oslar_clear, bcr0_write, hvc()]), ["debug_trapped", "debug_live"]);
        // A guest stepping over an instruction EL2 emulates (PSTATE.SS set at the trap): the
        // step ends with it (SS clear), as if the guest had run it.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PSTATE, 0x3C5 | 1 << 21]).unwrap();
        run(&f, vec![bcr0_write, hvc()]);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PSTATE]), Ok([0x3C5, 0, 0]));
        // A trapped read of an ID register does the same.
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PSTATE, 0x3C5 | 1 << 21]).unwrap();
        run(&f, vec![trap(sysreg_esr(3, 0, 0, 4, 0, 2, true), 0), hvc()]);
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PSTATE]), Ok([0x3C5, 0, 0]));
    }

    #[test]
    fn the_os_lock_keeps_debug_events_off_in_the_cpu() {
        use crate::guest::vcpu::{DebugRegs, MDSCR_KDE, MDSCR_MDE, MDSCR_SS};
        let all = MDSCR_SS | MDSCR_KDE | MDSCR_MDE | MDSCR_TDCC;
        let locked = DebugRegs { mdscr: all, ..DebugRegs::RESET };
        assert_eq!(locked.mdscr_in_force(), MDSCR_TDCC, "no step, breakpoint or watchpoint event while locked");
        assert!(!locked.live_from_entry(), "and the registers stay trapped");
        let open = DebugRegs { oslk: false, ..locked };
        assert_eq!(open.mdscr_in_force(), all);
        assert!(open.live_from_entry());
        // Step alone needs MDSCR_EL1 only: the breakpoint registers stay lazy.
        assert!(!DebugRegs { mdscr: MDSCR_SS, oslk: false, ..DebugRegs::RESET }.live_from_entry());
        assert!(DebugRegs { mdscr: MDSCR_KDE, oslk: false, ..DebugRegs::RESET }.live_from_entry());
    }

    #[test]
    fn only_the_documented_debug_encodings_are_emulated() {
        use crate::guest::vcpu::DebugRegs;
        // Every op0 = 2 encoding (op1, CRn, CRm, op2), read and write, from EL1 and EL0, with
        // the VM's ID_AA64DFR0_EL1 at its smallest (one breakpoint, one watchpoint) and at its
        // largest (16 each: a hostile value the host cannot set, but EL2 must not index on it).
        for dfr0 in [0u64, u64::MAX] {
            let (brps, wrps) = ((dfr0 >> 12) & 0xF, (dfr0 >> 20) & 0xF);
            for op1 in 0..8u64 {
                for crn in 0..16u64 {
                    for crm in 0..16u64 {
                        for op2 in 0..8u64 {
                            for read in [true, false] {
                                for el0 in [false, true] {
                                    let before = DebugRegs { mdscr: MDSCR_TDCC, ..DebugRegs::RESET };
                                    let mut d = before;
                                    let got = debug_access(&access(2, op1, crn, crm, op2, read), u64::MAX, &mut d, dfr0, el0);
                                    let documented = match (op1, crn, crm, op2) {
                                        (0, 0, 2, 2) => true,
                                        (0, 1, 0, 4) => !read,
                                        (0, 1, 1, 4) => read,
                                        (0, 0, 2, 0) | (0, 0, 6, 2) | (0, 1, 3, 4) | (0, 1, 4, 4) | (0, 7, 8, 6) | (0, 7, 9, 6) => true,
                                        (0, 0, n, 4 | 5) if n <= brps => true,
                                        (0, 0, n, 6 | 7) if n <= wrps => true,
                                        (0, 7, 14, 6) => read,
                                        // The channel at EL0 with the guest's TDCC set (as here): UNDEF.
                                        (3, 0, 1 | 4 | 5, 0) => !el0,
                                        _ => false,
                                    };
                                    assert_eq!(got.is_some(), documented, "op1 {op1} CRn {crn} CRm {crm} op2 {op2} read {read} EL0 {el0} DFR0 {dfr0:#x}");
                                    if let Some(Emulated::Read(v)) = got {
                                        // Reads are zero but for MDSCR_EL1, OSLSR_EL1 and
                                        // DBGAUTHSTATUS_EL1 (breakpoints and watchpoints: as reset).
                                        let want = match (crn, crm, op2) {
                                            (0, 2, 2) if op1 == 0 => MDSCR_TDCC,
                                            (1, 1, 4) => OSLSR_EL1_OSLM | 2,
                                            (7, 14, 6) => DBGAUTHSTATUS_NS,
                                            _ => 0,
                                        };
                                        assert_eq!(v, want, "op1 {op1} CRn {crn} CRm {crm} op2 {op2}");
                                    }
                                    let changes = op1 == 0 && crn == 0 && (op2 >= 4 || (crm, op2) == (2, 2)) || (op1, crn, crm, op2) == (0, 1, 0, 4);
                                    if !changes || read {
                                        assert_eq!(d, before, "only MDSCR_EL1, OSLAR_EL1 and breakpoint or watchpoint writes change the copy");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_physical_timer_group_emulates_three_registers_and_nothing_else() {
        use crate::guest::timer::PTimer;
        // op2 0..=2 of CNTP_* are TVAL, CTL, CVAL; 3..=7 in the group are not registers, and
        // neighbouring groups (CNTV_*, CNTPCT, CNTKCTL, CNTPS_*) never reach the emulation.
        for op2 in 0..8u64 {
            for read in [true, false] {
                let mut t = PTimer { ctl: 1, cval: 5 };
                let got = ptimer_access(&access(3, 3, 14, 2, op2, read), u64::MAX, &mut t, 10);
                assert_eq!(got.is_some(), op2 <= 2, "op2 {op2} read {read}");
                if got.is_none() {
                    assert_eq!(t, PTimer { ctl: 1, cval: 5 }, "an UNDEF changes nothing");
                }
            }
        }
        // Whatever the guest writes to CTL, only ENABLE and IMASK are kept; hostile TVALs at
        // the 32-bit boundaries; a count at its very top.
        let mut t = PTimer::default();
        for v in [u64::MAX, 1 << 63 | 1, 4, 8, 0xFFFF_FFF8] {
            ptimer_access(&access(3, 3, 14, 2, 1, false), v, &mut t, 0);
            assert_eq!(t.ctl, v & 3, "CTL write {v:#x}");
        }
        let tval = access(3, 3, 14, 2, 0, false);
        ptimer_access(&tval, 0x8000_0000, &mut t, 1 << 40);
        assert_eq!(t.cval, (1 << 40) - (1 << 31), "TVAL 0x8000_0000 is -2^31");
        ptimer_access(&tval, 0x7FFF_FFFF, &mut t, u64::MAX - 1);
        assert_eq!(t.cval, 0x7FFF_FFFD, "wraps");
        ptimer_access(&tval, 0xFFFF_FFFF_0000_0000, &mut t, 7);
        assert_eq!(t.cval, 7, "the high half of a TVAL write is ignored");
        assert_eq!(ptimer_access(&access(3, 3, 14, 2, 0, true), 0, &mut t, 7 + (1 << 32)), Some(Emulated::Read(0)), "TVAL reads the low 32 bits of CVAL - now");
    }

    #[test]
    fn timer_deadlines_of_hostile_control_values() {
        use crate::guest::timer::timer_deadline;
        // CNTV_CTL_EL0 is saved from the CPU (ISTATUS set by the hardware) or written by the
        // host (any value): only ENABLE and IMASK decide.
        for (ctl, want) in [(0, u64::MAX), (1, 100), (3, u64::MAX), (5, 100), (7, u64::MAX), (u64::MAX, u64::MAX), (!2, 100), (1 << 63, u64::MAX)] {
            assert_eq!(timer_deadline(ctl, 40, 60, 60), want, "CTL {ctl:#x}");
        }
        // Saturates: never a deadline that wrapped into the past.
        assert_eq!(timer_deadline(1, u64::MAX, 1, 1), u64::MAX);
        assert_eq!(timer_deadline(1, 2, u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(timer_deadline(1, u64::MAX - 5, 5, 5), u64::MAX);
        assert_eq!(timer_deadline(1, u64::MAX - 6, 5, 5), u64::MAX - 1);
        // An offset above the count wraps the count (the hardware's subtraction): fired.
        assert_eq!(timer_deadline(1, 2, 100, 0), 0);
        // An offset of all-ones is -1: the count is 1 ahead of the physical one.
        assert_eq!(timer_deadline(1, 2, u64::MAX, 0), 1);
    }

    #[test]
    fn the_emulated_physical_timer_is_backed_by_el2s_own_while_the_guest_runs() {
        // A guest write to CNTP_* reprograms CNTHP (its deadline must end the run: the host
        // learns of it only from an exit); a read does not; the value written decides on/off.
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(1), 1, 0]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![
            trap(sysreg_esr(3, 3, 14, 2, 2, 0, false), 0), // MSR CNTP_CVAL_EL0, X0 (timer still off)
            trap(sysreg_esr(3, 3, 14, 2, 1, 1, false), 0), // MSR CNTP_CTL_EL0, X1 (ENABLE)
            trap(sysreg_esr(3, 3, 14, 2, 1, 1, true), 0),  // MRS X1, CNTP_CTL_EL0
            hvc(),
        ];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let backing: Vec<_> = rec.log.borrow().iter().copied().filter(|op| op.starts_with("ptimer_backing")).collect();
        assert_eq!(backing, ["ptimer_backing_off", "ptimer_backing_on"], "one per write, none for the read");
    }

    #[test]
    fn a_guest_reads_the_cache_type_of_every_cpu() {
        // MRS X1, CTR_EL0 (op0 3, op1 3, CRn 0, CRm 0, op2 1) traps (HCR_EL2.TID2) and reads
        // the CPUs' combined value, whichever CPU the vCPU runs on: here a second CPU without
        // DIC joined before the VM was created.
        let mut f = fixture();
        let mut other = crate::cpu::features::CpuId { midr: 0x410F_D0C0, regs: *f.hyp.cpus.lock().view(), ctr: FIXTURE_CTR, ich_vtr: Some(QEMU_ICH_VTR), sve: FIXTURE_SVE };
        other.ctr &= !cachetype::DIC;
        f.hyp.cpu_entered_el2(1, other).unwrap();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 0x2 | 0xF0]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![
            trap(sysreg_esr(3, 3, 0, 0, 1, 1, true), 0),  // MRS X1, CTR_EL0
            trap(sysreg_esr(3, 2, 0, 0, 0, 2, false), 0), // MSR CSSELR_EL1, X2 (level 2 data)
            trap(sysreg_esr(3, 2, 0, 0, 0, 3, true), 0),  // MRS X3, CSSELR_EL1
            trap(sysreg_esr(3, 1, 0, 0, 0, 4, true), 0),  // MRS X4, CCSIDR_EL1
            trap(sysreg_esr(3, 1, 0, 0, 1, 5, true), 0),  // MRS X5, CLIDR_EL1
            hvc(),
        ];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Ok([0x1014, 0, 0]), "all emulated, none UNDEF");
        let x = |n| f.call(0, H::VcpuGetReg, &[h, 0, reg::x(n)]).unwrap()[0];
        assert_eq!(x(1), FIXTURE_CTR & !cachetype::DIC, "no DIC: some CPU lacks it");
        assert_eq!(x(3), 0x2, "CSSELR_EL1: its defined bits (no TnD without MTE)");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, SysReg::CSSELR_EL1.id()]), Ok([0x2, 0, 0]), "kept in the vCPU's context");
        assert_eq!(x(5), cachetype::clidr(x(1), false));
        assert_eq!(x(4), cachetype::ccsidr(x(1), 0x2, x(5)), "level 2 is the unified cache of an IDC CPU without DIC");
        assert_eq!(x(4), 2, "64-byte lines, one set, one way");
    }

    #[test]
    fn only_the_cache_identification_registers_are_emulated_and_only_so() {
        let ctr = FIXTURE_CTR;
        for mte in [false, true] {
            for (op1, op2, read, want) in [
                (1u64, 0u64, true, Some(Emulated::Read(cachetype::ccsidr(ctr, 0, cachetype::clidr(ctr, mte))))),
                (1, 1, true, Some(Emulated::Read(cachetype::clidr(ctr, mte)))),
                (1, 2, true, Some(Emulated::Read(0))),
                (2, 0, true, Some(Emulated::Read(0))),
                (2, 0, false, Some(Emulated::Written)),
                (1, 0, false, None),
                (1, 1, false, None),
                (1, 2, false, None),
            ] {
                let a = access(3, op1, 0, 0, op2, read);
                assert!(is_cache_id(&a) && !is_ctr(&a));
                let mut csselr = 0;
                assert_eq!(cache_id_access(&a, u64::MAX, &mut csselr, ctr, mte), want, "op1 {op1} op2 {op2} read {read}");
                let written = (op1, op2, read) == (2, 0, false);
                assert_eq!(csselr, if !written { 0 } else if mte { 0x1F } else { 0xF }, "only a CSSELR_EL1 write changes it");
            }
        }
        assert!(is_ctr(&access(3, 3, 0, 0, 1, true)));
        for (op1, crm, op2) in [(1, 0, 7), (1, 0, 4), (0, 0, 0), (3, 0, 7), (2, 0, 1), (1, 1, 0)] {
            let a = access(3, op1, 0, crm, op2, true);
            assert!(!is_cache_id(&a) && !is_ctr(&a), "AIDR_EL1, GMID_EL1, MIDR_EL1, DCZID_EL0, ...: {op1} {crm} {op2}");
        }
    }

    #[test]
    fn timer_and_debug_accesses_through_xzr() {
        // MSR CNTP_CTL_EL0, XZR writes 0; MRS XZR, CNTP_CVAL_EL0 / MDSCR_EL1 / OSLSR_EL1 read
        // into nothing (register 31 is XZR here, never SP); an SGI from XZR names nobody.
        let mut f = fixture();
        let h = create(&mut f, 2, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, 1, 0]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::SP_EL1, 0x1234, 0]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![
            trap(sysreg_esr(3, 3, 14, 2, 1, 31, false), 0),
            trap(sysreg_esr(3, 3, 14, 2, 2, 31, true), 0),
            trap(sysreg_esr(2, 0, 0, 2, 2, 31, true), 0),
            trap(sysreg_esr(2, 0, 1, 1, 4, 31, true), 0),
            trap(sysreg_esr(3, 0, 12, 11, 5, 31, false), 0),
        ];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.args[0], e.args[1], e.data), (0, 0, 0), "SGI 0 to no vCPU");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::CNTP_CTL_EL0]), Ok([0, 0, 0]), "XZR written");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::SP_EL1]), Ok([0x1234, 0, 0]), "a read into XZR is dropped, not into SP");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::PC]), Ok([0x1014, 0, 0]), "all five stepped over");
        assert_eq!(e.ptimer_deadline, u64::MAX, "the physical timer is off");
    }

    #[test]
    fn a_guest_resetting_its_debug_registers_is_not_undefined() {
        let mut f = fixture(); // the fixture's CPU: ID_AA64DFR0_EL1 zero (BRPs, WRPs 0: one each)
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x8000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(4), 1 << 15 | 1 << 13]).unwrap();
        let rec = Recorder::default();
        // As Linux boots: MSR MDSCR_EL1, x4; MSR OSLAR_EL1, xzr; MSR DBGBCR0_EL1, x4; MRS x5,
        // MDSCR_EL1; MRS x6, OSLSR_EL1; then MSR DBGBCR1_EL1, x4 (not advertised): UNDEF.
        *rec.exits.borrow_mut() = vec![
            trap(sysreg_esr(2, 0, 0, 2, 2, 4, false), 0),
            trap(sysreg_esr(2, 0, 1, 0, 4, 31, false), 0),
            trap(sysreg_esr(2, 0, 0, 0, 5, 4, false), 0),
            trap(sysreg_esr(2, 0, 0, 2, 2, 5, true), 0),
            trap(sysreg_esr(2, 0, 1, 1, 4, 6, true), 0),
            trap(sysreg_esr(2, 0, 0, 1, 5, 4, false), 0),
            hvc(),
        ];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[..7], [0x1000, 0x1004, 0x1008, 0x100C, 0x1010, 0x1014, 0x8200], "five emulated, then an UNDEF");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(5)]), Ok([1 << 15 | 1 << 13, 0, 0]), "MDSCR_EL1 read back");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(6)]), Ok([0b1000, 0, 0]), "OS lock cleared");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::ELR_EL1]), Ok([0x1014, 0, 0]));
    }

    /// A run of a VM with 4 pages at 0x4000_0000 that touches two of them, then makes
    /// `ops` set/way operations in one run and one more in the next: the maintenance logged.
    fn set_way_log(f: &mut Fixture, flags: u64, ops: &[u64]) -> Vec<&'static str> {
        let h = create(f, 1, flags);
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, 4]).unwrap();
        let rec = Recorder::default();
        let mut script = vec![dabt_translation(0x4000_0000), dabt_translation(0x4000_2000)];
        script.extend(ops.iter().map(|&e| trap(e, 0)));
        script.extend([hvc(), trap(ops[0], 0), hvc()]);
        *rec.exits.borrow_mut() = script;
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        let pcs = rec.entry_pcs.borrow().clone();
        let stepped = pcs.windows(2).filter(|w| w[1] == w[0] + 4).count();
        assert_eq!(stepped, ops.len() + 1, "each operation completes and is stepped over: {pcs:x?}");
        f.call(0, H::VmDestroy, &[h]).unwrap();
        let log = rec.log.borrow().iter().copied().filter(|s| !["load", "run", "flush_guest_local", "guest_s2_mapped"].contains(s)).collect();
        log
    }

    #[test]
    fn set_way_maintenance_cleans_the_mapped_pages_once_per_run_without_fwb() {
        let (isw, csw, cisw) = (sysreg_esr(1, 0, 7, 6, 2, 0, false), sysreg_esr(1, 0, 7, 10, 2, 1, false), sysreg_esr(1, 0, 7, 14, 2, 2, false));
        let mut f = fixture(); // no FEAT_S2FWB
        let log = set_way_log(&mut f, 0, &[cisw, csw, isw, cisw]);
        // First touches clean each page; the first set/way operation of each run cleans the two
        // mapped pages (not the two never mapped), the others in that run nothing more.
        let c = "clean_inval_poc";
        assert_eq!(log, [c, c, c, c, "put", c, c, "put"]);
        // MTE VMs: the tag forms (DC CIGDSW) are set/way too; for others they are an UNDEF.
        let cigdsw = sysreg_esr(1, 0, 7, 14, 6, 0, false);
        assert_eq!(set_way_log(&mut f, vm_flags::MTE, &[cigdsw]).iter().filter(|s| **s == c).count(), 2 + 2 + 2);
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x8000]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(cigdsw, 0), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        assert_eq!(rec.entry_pcs.borrow()[1], 0x8200, "UNDEF without MTE");
    }

    #[test]
    fn a_set_way_clean_covers_every_mapped_page_across_batches() {
        // More mapped pages than one hold of the memory lock collects, over two regions, with
        // holes: each mapped page cleaned exactly once, none that was never mapped.
        use crate::guest::memory::SET_WAY_BATCH;
        let mut f = fixture(); // no FEAT_S2FWB
        let h = create(&mut f, 1, 0);
        let n = SET_WAY_BATCH as u64 + 40;
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST), 0x4000_0000, n]).unwrap();
        f.call(0, H::VmAddMemory, &[h, f.page(GUEST) + n * 4096, 0x5000_0000, 8]).unwrap();
        let mut script: Vec<_> = (0..n).filter(|p| p % 3 != 1).map(|p| dabt_translation(0x4000_0000 + p * 4096)).collect();
        script.extend((0..8).map(|p| dabt_translation(0x5000_0000 + p * 4096)));
        let mapped = script.len();
        script.extend([trap(sysreg_esr(1, 0, 7, 14, 2, 0, false), 0), hvc()]);
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = script;
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        let cleans = rec.log.borrow().iter().filter(|s| **s == "clean_inval_poc").count();
        assert_eq!(cleans, 2 * mapped, "one clean per first touch, one per mapped page for the set/way");
    }

    #[test]
    fn set_way_maintenance_is_a_no_op_with_fwb() {
        let mut f = fixture();
        f.hyp.cpus.lock().view_mut()[idreg::idx(7, 2)] |= 1 << 40; // every CPU has FEAT_S2FWB
        let cisw = sysreg_esr(1, 0, 7, 14, 2, 0, false);
        assert_eq!(set_way_log(&mut f, 0, &[cisw, cisw]), ["put", "put"], "the guest's view is always cacheable: nothing to clean");
    }

    #[test]
    fn pmu_and_activity_monitor_registers_are_an_undef_without_the_host_pmu() {
        let mut f = fixture();
        let h = create(&mut f, 1, vm_flags::PROTECTED);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x8000]).unwrap();
        // (MDCR_EL2.TPM/TPMCR and CPTR_EL2.TAM trap them: `controls`.) PMUSERENR_EL0, PMCR_EL0,
        // PMCCNTR_EL0 (read and write), AMUSERENR_EL0, AMCR_EL0.
        let regs = [(3, 3, 9, 14, 0), (3, 3, 9, 12, 0), (3, 3, 9, 13, 0), (3, 3, 13, 2, 3), (3, 3, 13, 2, 0)];
        let rec = Recorder::default();
        for (op0, op1, crn, crm, op2) in regs {
            for read in [true, false] {
                rec.exits.borrow_mut().push(trap(sysreg_esr(op0, op1, crn, crm, op2, 1, read), 0));
            }
        }
        rec.exits.borrow_mut().push(hvc());
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        // Each access enters the guest's EL1 synchronous vector (emulated, it would step on).
        let mut want = vec![0x1000];
        want.extend([0x8200; 10]);
        assert_eq!(*rec.entry_pcs.borrow(), want);
    }

    #[test]
    fn the_physical_timer_is_emulated_against_the_counter() {
        use crate::guest::timer::PTimer;
        let mut t = PTimer::default();
        let (tval, ctl, cval) = (access(3, 3, 14, 2, 0, true), access(3, 3, 14, 2, 1, true), access(3, 3, 14, 2, 2, true));
        let w = |a: SysregAccess| SysregAccess { read: false, ..a };
        // TVAL write: CVAL = now + sign-extended 32 bits (high bits of the value ignored).
        assert_eq!(ptimer_access(&w(tval), 0xFFFF_FFFF_0000_0100, &mut t, 1000), Some(Emulated::Written));
        assert_eq!(t.cval, 1256);
        assert_eq!(ptimer_access(&w(tval), (-100i64) as u64 & 0xFFFF_FFFF, &mut t, 1000), Some(Emulated::Written));
        assert_eq!(t.cval, 900, "a negative TVAL: in the past");
        // TVAL read: low 32 bits of CVAL - now, signed, zero-extended.
        assert_eq!(ptimer_access(&tval, 0, &mut t, 800), Some(Emulated::Read(100)));
        assert_eq!(ptimer_access(&tval, 0, &mut t, 1000), Some(Emulated::Read((-100i32) as u32 as u64)));
        // CTL: ENABLE and IMASK kept, ISTATUS = ENABLE && now >= CVAL, whatever IMASK.
        assert_eq!(ptimer_access(&ctl, 0, &mut t, 1000), Some(Emulated::Read(0)), "disabled: no ISTATUS");
        assert_eq!(ptimer_access(&w(ctl), u64::MAX, &mut t, 1000), Some(Emulated::Written));
        assert_eq!(t.ctl, 0b11, "ISTATUS and RES0 bits dropped");
        assert_eq!(ptimer_access(&ctl, 0, &mut t, 899), Some(Emulated::Read(0b011)), "not yet");
        assert_eq!(ptimer_access(&ctl, 0, &mut t, 900), Some(Emulated::Read(0b111)), "fired (masked)");
        assert_eq!(t.deadline(0), u64::MAX, "masked: never asserts");
        ptimer_access(&w(ctl), 1, &mut t, 0);
        assert_eq!(ptimer_access(&ctl, 0, &mut t, u64::MAX), Some(Emulated::Read(0b101)));
        assert_eq!(t.deadline(0), 900);
        // CVAL: any value, read back; hostile values near the top of the count wrap as the
        // hardware's subtraction does, and never fire early.
        assert_eq!(ptimer_access(&w(cval), u64::MAX, &mut t, 5), Some(Emulated::Written));
        assert_eq!(ptimer_access(&cval, 0, &mut t, 5), Some(Emulated::Read(u64::MAX)));
        assert_eq!(ptimer_access(&ctl, 0, &mut t, u64::MAX - 1), Some(Emulated::Read(0b001)));
        assert_eq!(ptimer_access(&ctl, 0, &mut t, u64::MAX), Some(Emulated::Read(0b101)));
        assert_eq!(ptimer_access(&tval, 0, &mut t, 5), Some(Emulated::Read((u64::MAX - 5) as u32 as u64)));
        assert_eq!(ptimer_access(&w(tval), 0x7FFF_FFFF, &mut t, u64::MAX), Some(Emulated::Written));
        assert_eq!(t.cval, 0x7FFF_FFFE, "wraps like the hardware's adder");
        // Other op2 in the group: not a timer register.
        assert_eq!(ptimer_access(&access(3, 3, 14, 2, 3, true), 0, &mut t, 0), None);
    }

    #[test]
    fn a_guest_programs_its_physical_timer_without_touching_the_real_one() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(2), 5000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, reg::x(3), 1]).unwrap();
        let rec = Recorder::default();
        rec.counter.set(70_000);
        // MSR CNTP_TVAL_EL0, x2; MSR CNTP_CTL_EL0, x3; MRS x4, CNTP_CTL_EL0; MRS x5, CNTP_CVAL_EL0; WFI.
        *rec.exits.borrow_mut() = vec![
            trap(sysreg_esr(3, 3, 14, 2, 0, 2, false), 0),
            trap(sysreg_esr(3, 3, 14, 2, 1, 3, false), 0),
            trap(sysreg_esr(3, 3, 14, 2, 1, 4, true), 0),
            trap(sysreg_esr(3, 3, 14, 2, 2, 5, true), 0),
            trap(0x01 << 26 | 1 << 25, 0),
        ];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::WFX as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[..5], [0x1000, 0x1004, 0x1008, 0x100C, 0x1010], "each access emulated and stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(4)]), Ok([1, 0, 0]), "enabled, not yet fired");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(5)]), Ok([75_000, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::CNTP_CVAL_EL0]), Ok([75_000, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::CNTP_CTL_EL0]), Ok([1, 0, 0]));
        assert_eq!(exit_record(&f).ptimer_deadline, 75_000, "the host learns when PPI 30 asserts");
        assert!(!rec.log.borrow().iter().any(|s| s.contains("cntp")), "the arch is never asked to touch the real timer");
    }

    #[test]
    fn id_register_reads_are_answered_from_the_vm() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        // MRS x3, ID_AA64ISAR0_EL1 (op0 3, op1 0, CRn 0, CRm 6, op2 0), then an MSR to it.
        let mrs = (0x18 << 26) | (1 << 25) | 3 << 20 | 3 << 5 | 6 << 1 | 1;
        let msr = mrs & !1;
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap(mrs, 0), trap(msr, 0), hvc()];
        f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]).unwrap();
        let isar0 = f.call(0, H::VcpuGetReg, &[h, 0, idreg::reg_id(idreg::idx(6, 0))]).unwrap()[0];
        assert_eq!(isar0, 2 << 4, "the fixture CPU's AES 2, restricted");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::x(3)]), Ok([isar0, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[1], 4, "read stepped over");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, SysReg::ESR_EL1.id()]), Ok([1 << 25, 0, 0]), "the write was an UNDEF");
        let sve = idreg::reg_id(idreg::idx(4, 0));
        assert_eq!(f.call(0, H::VcpuSetReg, &[h, 0, sve, 0x11 | 1 << 32, 0]), Err(HypError::Frozen), "after the run");
    }

    #[test]
    fn unemulated_system_register_access_injects_undef() {
        let mut f = fixture();
        let h = create(&mut f, 1, 0);
        f.call(0, H::VcpuSetReg, &[h, 0, reg::PC, 0x1000]).unwrap();
        f.call(0, H::VcpuSetReg, &[h, 0, SysReg::VBAR_EL1.id(), 0x8000]).unwrap();
        let rec = Recorder::default();
        *rec.exits.borrow_mut() = vec![trap((0x18 << 26) | (1 << 25), 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[1], 0x8000 + 0x200, "resumed at the guest's EL1 sync vector");
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, reg::ELR_EL1]), Ok([0x1000, 0, 0]));
        assert_eq!(f.call(0, H::VcpuGetReg, &[h, 0, SysReg::ESR_EL1.id()]), Ok([1 << 25, 0, 0]));
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
        *rec.exits.borrow_mut() = vec![trap(msr(5), 0), trap(msr(7), 0), trap(msr(5) | 1, 0), hvc()];
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        let e = exit_record(&f);
        assert_eq!((e.args, e.data), ([7, 0b1010, shared_abi::msg::sgi::SGI1R, 0], 7 << 24 | 0b1010));
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::SGI as u64, 0, 0]));
        assert_eq!(exit_record(&f).args[2], shared_abi::msg::sgi::SGI0R);
        // The read of the write-only register is an UNDEF, not an SGI.
        assert_eq!(f.call_with(&rec, 0, H::VcpuRun, &[h, 0, 0]), Ok([exit::HYPERCALL as u64, 0, 0]));
        assert_eq!(rec.entry_pcs.borrow()[..3], [0x1000, 0x1004, 0x1008], "each write stepped over");
    }
}
