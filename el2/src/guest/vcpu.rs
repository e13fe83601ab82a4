//! vCPU state and the logic of guest exits that does not touch hardware.
//!
//! Place in the flow: *state*. A [`VcpuCtx`] is what the world switch saves and restores; this
//! module reads and writes it by KVM register ID, decodes MMIO accesses from `ESR_EL2`, and
//! answers the guest's PSCI and SMCCC calls. Everything here is unit-tested on the host.
//!
//! The layout of the first fields is fixed: the world-switch assembly stores the guest GPRs at
//! offset 0 and reads the host save-area pointer at offset 248.

use crate::exception::syndrome::MmioAccess;
use crate::guest::timer::{timer_deadline, PTimer, TIMER_ENABLE, TIMER_IMASK, TIMER_ISTATUS};
use crate::guest::vgic::VgicCpu;
use crate::guest::{MAX_VCPUS, MAX_VMS};
use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::ops::{Deref, DerefMut, Index, IndexMut};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use shared_abi::reg;

/// What the run loop needs to run a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// `VTTBR_EL2`: stage-2 root and VMID.
    pub vttbr: u64,
    /// Stage-2 root level.
    pub start_level: u8,
    /// Guest IPA size.
    pub ipa_bits: u8,
    /// `VMPIDR_EL2`.
    pub vmpidr: u64,
    /// Leave the PMU untrapped ([`shared_abi::msg::vm_flags::HOST_PMU`]).
    pub host_pmu: bool,
    /// Load the guest's pointer-authentication keys now (and leave them untrapped).
    pub pauth_now: bool,
    /// MTE VM: allocation tags accessible (`HCR_EL2.ATA`), MTE registers switched.
    pub mte: bool,
    /// The stage 2 uses the FEAT_S2FWB encoding: run with `HCR_EL2.FWB` set.
    pub fwb: bool,
    /// A protected VM: the host's PMU must not count it (see `controls::guest_controls`).
    pub protected: bool,
    /// `CNTVOFF_EL2` for the run (the VM's); the host runs with 0.
    pub cntvoff: u64,
    /// Trap the cache type and identification registers (`HCR_EL2.TID2`): the CPUs' `CTR_EL0`
    /// differ ([`crate::cpu::features::CpuFeatures::ctr_trap`]).
    pub trap_cache_type: bool,
}

/// What `VCPU_RUN` needs of its VM, fixed from the VM's first run on (`VCPU_SET_REG` of
/// `CNTVOFF_EL2` and the firmware registers, and `VM_SMCCC_FORWARD`, are `Frozen` then; the
/// rest is fixed at `VM_CREATE`), but for `guest.trap_cache_type`, a machine-wide setting
/// that may still turn on, which every run reads anew. The first `VCPU_RUN` of each vCPU reads
/// it under the memory lock and keeps it in the vCPU's context ([`VcpuCtx::run_cfg`]); the
/// later ones of the same VM use it without the lock ([`crate::guest::vm::RunState`] says why
/// that is sound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// The VM it was read from: a context of a slot's later VM holds none
    /// ([`VcpuCtx::reset`] at `VM_DESTROY`), and the run compares it with its handle anyway.
    pub handle: u64,
    /// The world switch's configuration (`pauth_now` false: each run decides it).
    pub guest: GuestConfig,
    /// The VM's number of vCPUs.
    pub nr_vcpus: usize,
    /// Its firmware pseudo-registers.
    pub fw: crate::cpu::fwreg::FwRegs,
    /// It has pointer authentication.
    pub ptrauth: bool,
    /// It forwards some SMCCC calls to the host.
    pub forwards: bool,
}

/// A guest's MMIO access that the host emulates: completed, or answered with an external
/// abort, at the vCPU's next `VCPU_RUN` ([`shared_abi::msg::run_flags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMmio {
    /// The access, decoded from the trap's syndrome.
    pub access: MmioAccess,
    /// `ESR_EL2` of the trap: an abort injected for the access keeps its `IL` and `WnR`.
    pub esr: u64,
    /// `FAR_EL2` of the trap: the guest's virtual address, `FAR_EL1` of an injected abort.
    pub far: u64,
}

/// `PSTATE` of a vCPU at reset: EL1h, D/A/I/F masked.
pub const PSTATE_RESET: u64 = 0x3C5;
/// `PSTATE.M[4:0]` values a vCPU may run in: AArch64 EL0t, EL1t, EL1h. Everything else is
/// either a higher exception level (EL2t/EL2h would make the world switch's `ERET` land in EL2,
/// at a PC the host chose) or AArch32 (an illegal return at EL2, or AArch32 EL0, which the ID
/// registers hide and EL2 does not emulate).
const GUEST_MODES: [u64; 3] = [0b0_0000, 0b0_0100, 0b0_0101];
/// `PSTATE.M[4:0]`.
const PSTATE_M: u64 = 0x1F;
/// `PSTATE.IL` (illegal execution state).
const PSTATE_IL: u64 = 1 << 20;
/// `PSTATE.SS`: software step (active-not-pending when set).
const PSTATE_SS: u64 = 1 << 21;
/// `PSTATE` bits the host may set (what KVM accepts for AArch64): N, Z, C, V (31:28), TCO (25),
/// DIT (24), UAO (23), PAN (22), SS (21), SSBS (12), BTYPE (11:10), D, A, I, F (9:6) and M[4:0]
/// (checked against [`GUEST_MODES`]). Not IL (20), not bit 5 (AArch32's T), nothing above 31.
pub const PSTATE_HOST_WRITABLE: u64 = 0xF000_0000 | 0x03E0_0000 | 0x1000 | 0xC00 | 0x3C0 | PSTATE_M;

/// Whether `ERET` with `SPSR_EL2 = pstate` enters the guest and nothing else: an AArch64 EL0 or
/// EL1 mode, `IL` clear. EL2 checks this before every guest entry and after every exit but an
/// `HVC` or `SMC` one, which only AArch64 EL1 takes (a guest that returned to AArch32 EL0 is
/// stopped there, as KVM does); the other bits only concern the guest itself.
pub const fn pstate_enters_guest(pstate: u64) -> bool {
    let m = pstate & PSTATE_M;
    pstate & PSTATE_IL == 0 && (m == GUEST_MODES[0] || m == GUEST_MODES[1] || m == GUEST_MODES[2])
}

/// Whether the host may set `PSTATE` to `pstate` ([`reg::PSTATE`]): only defined bits
/// ([`PSTATE_HOST_WRITABLE`]) and a mode that [enters the guest](pstate_enters_guest).
pub const fn pstate_host_ok(pstate: u64) -> bool {
    pstate & !PSTATE_HOST_WRITABLE == 0 && pstate_enters_guest(pstate)
}

/// `SCTLR_EL1` at reset: RES1 bits, MMU and caches off.
pub const SCTLR_EL1_RESET: u64 = 0x30D0_0800;
/// Number of EL1 system registers switched ([`reg::SYSREGS`]).
pub const NR_SYSREGS: usize = reg::SYSREGS.len();

macro_rules! sysregs {
    ($($name:ident),* $(,)?) => {
        /// The EL1 and EL0 system registers a vCPU context holds ([`VcpuCtx::sys`]), named as
        /// in the Arm ARM, in [`reg::SYSREGS`] order (checked at compile time).
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum SysReg { $($name,)* }

        const SYSREG_NAMES: [&str; NR_SYSREGS] = [$(stringify!($name),)*];
    };
}

sysregs!(
    SCTLR_EL1, CPACR_EL1, TTBR0_EL1, TTBR1_EL1, TCR_EL1, AFSR0_EL1, AFSR1_EL1, ESR_EL1, FAR_EL1,
    PAR_EL1, MAIR_EL1, AMAIR_EL1, VBAR_EL1, CONTEXTIDR_EL1, TPIDR_EL1, CNTKCTL_EL1, CSSELR_EL1,
    TPIDR_EL0, TPIDRRO_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
);

const _: () = {
    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let mut i = 0;
    while i < NR_SYSREGS {
        assert!(same(SYSREG_NAMES[i], reg::SYSREGS[i].0), "SysReg differs from shared_abi::reg::SYSREGS");
        i += 1;
    }
};

impl SysReg {
    /// Its register ID in the host's register ABI ([`reg::SYSREGS`]).
    pub const fn id(self) -> u64 {
        reg::SYSREGS[self as usize].1
    }
}

impl Index<SysReg> for [u64; NR_SYSREGS] {
    type Output = u64;
    fn index(&self, r: SysReg) -> &u64 {
        &self[r as usize]
    }
}

impl IndexMut<SysReg> for [u64; NR_SYSREGS] {
    fn index_mut(&mut self, r: SysReg) -> &mut u64 {
        &mut self[r as usize]
    }
}

/// The state of one vCPU that the world switch moves.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuCtx {
    /// `x0..=x30`.
    pub x: [u64; 31],
    /// Filled in by the world switch while the vCPU runs: where EL2's own registers are saved.
    pub host_save: u64,
    /// `SP_EL0`.
    pub sp_el0: u64,
    /// The guest PC (`ELR_EL2` while in EL2).
    pub pc: u64,
    /// The guest PSTATE (`SPSR_EL2` while in EL2).
    pub pstate: u64,
    /// `SP_EL1`.
    pub sp_el1: u64,
    /// `ELR_EL1`.
    pub elr_el1: u64,
    /// `SPSR_EL1`.
    pub spsr_el1: u64,
    /// EL1/EL0 system registers, in [`reg::SYSREGS`] order.
    pub sys: [u64; NR_SYSREGS],
    /// FP/SIMD registers (loaded lazily, see `arch::switch`) of a vCPU without SVE
    /// ([`Self::sve_vq`] 0); unused with SVE, whose [`Self::sve`] holds them.
    pub fp: FpRegs,
    /// Pointer-authentication keys, in [`reg::PAUTH_KEYS`] order.
    pub pauth_keys: [u64; 10],
    /// Lazy pointer authentication: loads left before the key trap is re-armed.
    pub pauth_eager_left: u32,
    /// MTE registers, in [`reg::MTE_REGS`] order (switched only for MTE VMs).
    pub mte: [u64; 4],
    /// The MMIO access of the last exit, completed (or aborted) by the next `VCPU_RUN`.
    pub pending_mmio: Option<PendingMmio>,
    /// The last exit was an SMCCC call the VM forwards to the host: the next `VCPU_RUN`'s
    /// value is the guest's `x0` (`VM_SMCCC_FORWARD`).
    pub pending_call: bool,
    /// Exceptions taken to EL2, by class ([`shared_abi::msg::stats`]; `VCPU_STATS`).
    pub stats: [u64; shared_abi::msg::stats::CLASSES],
    /// `TPIDR2_EL0` (FEAT_SME): hidden from the guest's ID registers, but not trappable without
    /// FEAT_FGT, so it moves with the vCPU instead of leaking between host and guests. Not in
    /// the register ABI.
    pub tpidr2: u64,
    /// `DISR_EL1` as the guest sees it: `VDISR_EL2` while it runs (`HCR_EL2.AMO`), moved only
    /// on CPUs with FEAT_RAS (where the register exists; hidden from the guest's ID registers,
    /// not trappable). Not in the register ABI, nor in [`SysReg`]: those are the EL1
    /// registers the world switch moves as they are.
    pub disr_el1: u64,
    /// The virtual GICv3 CPU interface: `ICH_VMCR_EL2` (the guest's `ICC_PMR_EL1`, group
    /// enables, ..., which its `ICC_*` accesses reach through the virtual interface), active
    /// priorities and list registers. Not in the register ABI: the host queues interrupts
    /// with `VCPU_SET_IRQ` and reads them back with `VCPU_IRQ_STATE`.
    pub vgic: VgicCpu,
    /// The self-hosted debug registers as the guest sees them (`guest::sysreg` while trapped,
    /// the CPU's own while live: `arch::switch::debug`). Not in the register ABI.
    pub debug: DebugRegs,
    /// The EL1 physical timer, emulated (`guest::sysreg`; the guest never reaches the real one).
    pub ptimer: PTimer,
    /// The VM's SVE vector length in quadwords (128 bits), 0 without SVE: which of [`Self::fp`]
    /// and [`Self::sve`] holds the vector registers. Set at `VM_CREATE`; kept by a `CPU_ON`
    /// reset.
    pub sve_vq: u8,
    /// What `VCPU_RUN` keeps of its VM from the vCPU's first run on ([`RunConfig`]); `None`
    /// before it, and after `VM_DESTROY`. Kept by a `CPU_ON` reset. Not in the register ABI.
    pub run_cfg: Option<RunConfig>,
    /// SVE registers (loaded lazily like [`Self::fp`], `guest::fpsimd`) of a vCPU with SVE;
    /// all zero for any other (nothing writes them unless [`Self::sve_vq`] is set). Not in the
    /// register ABI, but for the `V<n>` registers (the low 128 bits of `Z<n>`), `FPSR` and
    /// `FPCR`. Last, so the fields the run loop uses stay at small offsets.
    pub sve: SveRegs,
}

/// Breakpoints and watchpoints the context holds (the most the architecture has: `BRPs` and
/// `WRPs` are 4-bit counts minus one).
pub const DEBUG_SLOTS: usize = 16;

/// `MDSCR_EL1.SS`: software step.
pub const MDSCR_SS: u64 = 1;
/// `MDSCR_EL1.KDE`: debug exceptions from the kernel's own exception level.
pub const MDSCR_KDE: u64 = 1 << 13;
/// `MDSCR_EL1.MDE`: breakpoint and watchpoint debug events.
pub const MDSCR_MDE: u64 = 1 << 15;
/// `MDSCR_EL1.TDCC`: EL0 access to the debug communication channel traps (to EL1: an UNDEF).
pub const MDSCR_TDCC: u64 = 1 << 12;
/// The `MDSCR_EL1` bits of a guest's that EL2 puts in the CPU: self-hosted debug only. The
/// rest (HDE, ERR, TDA, INTdis, the channel's flags: external debug, the CPU's own status)
/// stays in the vCPU's copy.
pub const MDSCR_IN_CPU: u64 = MDSCR_SS | MDSCR_TDCC | MDSCR_KDE | MDSCR_MDE;

/// A vCPU's self-hosted debug registers.
///
/// Switched lazily, as KVM does: the guest runs with its debug registers trapped
/// (`MDCR_EL2.TDA`) and EL2 emulates each access against this copy, until the guest uses
/// breakpoints or watchpoints (it accesses one of their registers, or its `MDSCR_EL1` enables
/// their events); then the copy is loaded into the CPU and the trap lifted for the rest of the
/// run (*live*), and `put` saves the CPU's registers back here. Its `MDSCR_EL1` is in the CPU
/// for every run (software step needs it), less the debug-event enables while its OS lock is
/// locked: the Arm ARM generates no breakpoint, watchpoint or step exception then, and the
/// registers stay trapped so the guest cannot re-enable them behind the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    /// `MDSCR_EL1`, masked to its writable bits.
    pub mdscr: u64,
    /// `OSLSR_EL1.OSLK`: the OS lock, as `OSLAR_EL1` last set it.
    pub oslk: bool,
    /// `DBGBVR<n>_EL1`, `DBGBCR<n>_EL1`, `DBGWVR<n>_EL1`, `DBGWCR<n>_EL1`: trapped, the guest
    /// reaches the first `BRPs + 1` and `WRPs + 1` of the VM's `ID_AA64DFR0_EL1`; live, every
    /// one this CPU implements (saved back here at put), the rest stay zero.
    pub bvr: [u64; DEBUG_SLOTS],
    pub bcr: [u64; DEBUG_SLOTS],
    pub wvr: [u64; DEBUG_SLOTS],
    pub wcr: [u64; DEBUG_SLOTS],
}

impl DebugRegs {
    /// At reset (a vCPU's creation or its `CPU_ON`): everything zero (no breakpoint or
    /// watchpoint enabled) and the OS lock locked, as a cold reset leaves it (Arm ARM,
    /// `OSLSR_EL1.OSLK`); an OS clears the lock at boot.
    pub const RESET: Self = Self { mdscr: 0, oslk: true, bvr: [0; DEBUG_SLOTS], bcr: [0; DEBUG_SLOTS], wvr: [0; DEBUG_SLOTS], wcr: [0; DEBUG_SLOTS] };

    /// The `MDSCR_EL1` the CPU runs the guest with: its own self-hosted debug bits
    /// ([`MDSCR_IN_CPU`]), less `SS`, `KDE` and `MDE` while its OS lock is locked.
    pub const fn mdscr_in_force(&self) -> u64 {
        let m = self.mdscr & MDSCR_IN_CPU;
        if self.oslk {
            m & !(MDSCR_SS | MDSCR_KDE | MDSCR_MDE)
        } else {
            m
        }
    }

    /// Whether a run starts with the registers live: the guest enabled breakpoint and
    /// watchpoint events (the host's own registers must not fire in it), its OS lock clear.
    pub const fn live_from_entry(&self) -> bool {
        !self.oslk && self.mdscr & (MDSCR_KDE | MDSCR_MDE) != 0
    }
}

const _: () = {
    assert!(offset_of!(VcpuCtx, x) == 0);
    assert!(offset_of!(VcpuCtx, host_save) == 248);
};

/// FP/SIMD state: `V0..V31` (low 64 bits, high 64 bits each), `FPSR`, `FPCR`. The layout is
/// what the save/restore assembly uses (offsets 0, 512, 520).
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FpRegs {
    /// `Vn` = `v[2n]` (bits 63:0) and `v[2n+1]` (bits 127:64).
    pub v: [u64; 64],
    /// `FPSR`.
    pub fpsr: u64,
    /// `FPCR`.
    pub fpcr: u64,
}

impl FpRegs {
    /// All zero.
    pub const ZERO: FpRegs = FpRegs { v: [0; 64], fpsr: 0, fpcr: 0 };
}

const _: () = {
    assert!(core::mem::size_of::<FpRegs>() == 528);
    assert!(offset_of!(FpRegs, fpsr) == 512);
};

/// SVE state of a vCPU whose VM has SVE, at the VM's vector length `VL` (`16 * sve_vq` bytes):
/// `Z0..Z31` of `VL` bytes each, packed from offset 0 (`Zn` at `n * VL`, as `STR Zn, [base, #n,
/// MUL VL]` stores them), `P0..P15` of `VL / 8` bytes each packed at [`SveRegs::P_OFFSET`],
/// `FFR` at [`SveRegs::FFR_OFFSET`], then `FPSR`, `FPCR` and the guest's `ZCR_EL1`. Room for
/// the architecture's largest length (2048 bits); the bytes past the VM's length stay zero.
/// The layout is what the save/restore assembly uses (`arch::switch::sve`).
#[repr(C, align(16))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SveRegs {
    /// `Z0..Z31`, each `VL` bytes, little-endian element order.
    pub z: [u8; 32 * SVE_VL_MAX],
    /// `P0..P15`, each `VL / 8` bytes.
    pub p: [u8; 16 * SVE_VL_MAX / 8],
    /// `FFR`, `VL / 8` bytes.
    pub ffr: [u8; SVE_VL_MAX / 8],
    /// `FPSR`.
    pub fpsr: u64,
    /// `FPCR`.
    pub fpcr: u64,
    /// The guest's `ZCR_EL1` (its own choice of length, at most the VM's: `ZCR_EL2` caps it).
    pub zcr_el1: u64,
}

/// The architecture's largest SVE vector length in bytes (2048 bits).
pub const SVE_VL_MAX: usize = shared_abi::msg::sve::VL_MAX as usize;

impl SveRegs {
    /// All zero: a vCPU's SVE state at reset (`ZCR_EL1.LEN` 0, 128 bits, until its guest
    /// chooses, as under KVM).
    pub const ZERO: SveRegs = SveRegs { z: [0; 32 * SVE_VL_MAX], p: [0; 16 * SVE_VL_MAX / 8], ffr: [0; SVE_VL_MAX / 8], fpsr: 0, fpcr: 0, zcr_el1: 0 };
    /// Offset of `P0`.
    pub const P_OFFSET: usize = offset_of!(SveRegs, p);
    /// Offset of `FFR`.
    pub const FFR_OFFSET: usize = offset_of!(SveRegs, ffr);
    /// Offset of `FPSR` (`FPCR` follows, then `ZCR_EL1`).
    pub const FPSR_OFFSET: usize = offset_of!(SveRegs, fpsr);

    /// `Vn`, the low 128 bits of `Zn`, at a vector length of `vq` quadwords: `(bits 63:0, bits
    /// 127:64)`.
    pub fn v(&self, vq: u8, n: usize) -> (u64, u64) {
        let at = n * 16 * vq as usize;
        let word = |i: usize| u64::from_le_bytes(self.z[at + i..at + i + 8].try_into().unwrap_or([0; 8]));
        (word(0), word(8))
    }

    /// Writes `Vn` as an FP/SIMD write does: the low 128 bits of `Zn`, the rest of it zero.
    pub fn set_v(&mut self, vq: u8, n: usize, (lo, hi): (u64, u64)) {
        let vl = 16 * vq as usize;
        let z = &mut self.z[n * vl..(n + 1) * vl];
        z.fill(0);
        z[..8].copy_from_slice(&lo.to_le_bytes());
        z[8..16].copy_from_slice(&hi.to_le_bytes());
    }
}

const _: () = {
    assert!(SveRegs::P_OFFSET == 8192);
    assert!(SveRegs::FFR_OFFSET == 8192 + 512);
    assert!(SveRegs::FPSR_OFFSET == 8192 + 512 + 32);
    assert!(offset_of!(SveRegs, fpcr) == SveRegs::FPSR_OFFSET + 8);
    assert!(offset_of!(SveRegs, zcr_el1) == SveRegs::FPSR_OFFSET + 16);
};

/// Errors of register access by ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegError {
    /// Not a register this vCPU has.
    Unknown,
    /// A register that cannot be written (e.g. `MPIDR_EL1`).
    ReadOnly,
    /// A value wider than the register.
    TooWide,
    /// A value the register may not hold (a `PSTATE` outside [`pstate_host_ok`]).
    BadValue,
}

impl VcpuCtx {
    /// A vCPU at reset.
    pub const fn new() -> Self {
        let mut sys = [0; NR_SYSREGS];
        sys[SysReg::SCTLR_EL1 as usize] = SCTLR_EL1_RESET;
        Self {
            x: [0; 31],
            host_save: 0,
            sp_el0: 0,
            pc: 0,
            pstate: PSTATE_RESET,
            sp_el1: 0,
            elr_el1: 0,
            spsr_el1: 0,
            sys,
            fp: FpRegs::ZERO,
            pauth_keys: [0; 10],
            pauth_eager_left: 0,
            mte: [0; 4],
            pending_mmio: None,
            pending_call: false,
            stats: [0; shared_abi::msg::stats::CLASSES],
            tpidr2: 0,
            disr_el1: 0,
            vgic: VgicCpu::new(),
            debug: DebugRegs::RESET,
            ptimer: PTimer { ctl: 0, cval: 0 },
            sve_vq: 0,
            run_cfg: None,
            sve: SveRegs::ZERO,
        }
    }

    /// Resets in place to [`Self::new`], without building a whole context (about 11 KiB) and
    /// copying it: the SVE registers are written only if this vCPU may have used them (only a
    /// vCPU with SVE ever does). The pattern names every field, so none can be left out.
    pub fn reset(&mut self) {
        const NEW: VcpuCtx = VcpuCtx::new();
        let Self { x, host_save, sp_el0, pc, pstate, sp_el1, elr_el1, spsr_el1, sys, fp, pauth_keys, pauth_eager_left, mte, pending_mmio, pending_call, stats, tpidr2, disr_el1, vgic, debug, ptimer, sve_vq, run_cfg, sve } = self;
        if *sve_vq != 0 {
            *sve = SveRegs::ZERO;
        }
        debug_assert!(*sve == SveRegs::ZERO, "SVE registers of a vCPU without SVE");
        (*x, *host_save, *sp_el0, *pc, *pstate, *sp_el1, *elr_el1, *spsr_el1) = (NEW.x, NEW.host_save, NEW.sp_el0, NEW.pc, NEW.pstate, NEW.sp_el1, NEW.elr_el1, NEW.spsr_el1);
        (*sys, *fp, *pauth_keys, *pauth_eager_left, *mte, *pending_mmio, *stats) = (NEW.sys, NEW.fp, NEW.pauth_keys, NEW.pauth_eager_left, NEW.mte, NEW.pending_mmio, NEW.stats);
        (*tpidr2, *disr_el1, *vgic, *debug, *ptimer, *sve_vq, *pending_call, *run_cfg) = (NEW.tpidr2, NEW.disr_el1, NEW.vgic, NEW.debug, NEW.ptimer, NEW.sve_vq, NEW.pending_call, NEW.run_cfg);
    }

    /// Resets to the PSCI `CPU_ON` state: `pc = entry`, `x0 = context`, everything else reset
    /// but the interrupts queued in its list registers (they model the redistributor's pending
    /// state, which a CPU's power-on does not reset; the host may have queued an SGI for it
    /// between the guest's `CPU_ON` and the first run) and the exit statistics (`VCPU_STATS`
    /// counts since the VM was created: a guest that powers a vCPU off and on must not wipe
    /// what the host saw it do); its VM's run configuration stays too.
    pub fn reset_for_cpu_on(&mut self, entry: u64, context: u64) {
        let mut queued = VgicCpu { vmcr: 0, ap0r: [0; 4], ap1r: [0; 4], ..self.vgic.clone() };
        queued.drop_hw();
        let (stats, sve_vq, run_cfg) = (self.stats, self.sve_vq, self.run_cfg);
        self.reset();
        self.vgic = queued;
        self.stats = stats;
        self.sve_vq = sve_vq;
        self.run_cfg = run_cfg;
        self.pc = entry;
        self.x[0] = context;
    }

    fn core_slot(&mut self, id: u64) -> Option<&mut u64> {
        Some(match id {
            reg::SP_EL0 => &mut self.sp_el0,
            reg::PC => &mut self.pc,
            reg::PSTATE => &mut self.pstate,
            reg::SP_EL1 => &mut self.sp_el1,
            reg::ELR_EL1 => &mut self.elr_el1,
            reg::SPSR_EL1 => &mut self.spsr_el1,
            reg::CNTP_CTL_EL0 => &mut self.ptimer.ctl,
            reg::CNTP_CVAL_EL0 => &mut self.ptimer.cval,
            _ if id & !0xFF == reg::core(0) && id & 1 == 0 && (id & 0xFF) <= 60 => &mut self.x[(id & 0xFF) as usize / 2],
            _ => match reg::sysreg_index(id) {
                Some(i) => &mut self.sys[i],
                None => match reg::PAUTH_KEYS.iter().position(|k| k.1 == id) {
                    Some(i) => &mut self.pauth_keys[i],
                    None => &mut self.mte[reg::MTE_REGS.iter().position(|k| k.1 == id)?],
                },
            },
        })
    }

    /// Reads register `id` of vCPU number `index`: `(bits 63:0, bits 127:64)` (the high half
    /// is zero but for 128-bit registers).
    ///
    /// # Errors
    /// [`RegError::Unknown`] for IDs not in [`register_ids`].
    pub fn get(&mut self, index: usize, id: u64) -> Result<(u64, u64), RegError> {
        if id == reg::MPIDR_EL1 {
            return Ok((vmpidr(index), 0));
        }
        if let Some(n) = reg::fp_vreg_index(id) {
            if self.sve_vq != 0 {
                return Ok(self.sve.v(self.sve_vq, n));
            }
            return Ok((self.fp.v[2 * n], self.fp.v[2 * n + 1]));
        }
        match id {
            reg::FPSR => return Ok((if self.sve_vq != 0 { self.sve.fpsr } else { self.fp.fpsr }, 0)),
            reg::FPCR => return Ok((if self.sve_vq != 0 { self.sve.fpcr } else { self.fp.fpcr }, 0)),
            _ => {}
        }
        self.core_slot(id).map(|r| (*r, 0)).ok_or(RegError::Unknown)
    }

    /// Writes register `id` with `(bits 63:0, bits 127:64)`.
    ///
    /// # Errors
    /// [`RegError::Unknown`] for IDs not in [`register_ids`], [`RegError::ReadOnly`] for
    /// `MPIDR_EL1`, [`RegError::TooWide`] for a non-zero high half of a register narrower than
    /// 128 bits (or a 32-bit register given more than 32 bits), [`RegError::BadValue`] for a
    /// `PSTATE` that [`pstate_host_ok`] refuses or a `CNTP_CTL_EL0` with RES0 bits set.
    pub fn set(&mut self, id: u64, (lo, hi): (u64, u64)) -> Result<(), RegError> {
        if id == reg::MPIDR_EL1 {
            return Err(RegError::ReadOnly);
        }
        if let Some(n) = reg::fp_vreg_index(id) {
            if self.sve_vq != 0 {
                self.sve.set_v(self.sve_vq, n, (lo, hi));
                return Ok(());
            }
            self.fp.v[2 * n] = lo;
            self.fp.v[2 * n + 1] = hi;
            return Ok(());
        }
        if hi != 0 {
            return Err(RegError::TooWide);
        }
        match id {
            reg::FPSR | reg::FPCR if lo >> 32 != 0 => return Err(RegError::TooWide),
            reg::FPSR if self.sve_vq != 0 => self.sve.fpsr = lo,
            reg::FPCR if self.sve_vq != 0 => self.sve.fpcr = lo,
            reg::FPSR => self.fp.fpsr = lo,
            reg::FPCR => self.fp.fpcr = lo,
            // The world switch's ERET consumes PSTATE (as SPSR_EL2): validated here, where it
            // enters, and again before every guest entry.
            reg::PSTATE if !pstate_host_ok(lo) => return Err(RegError::BadValue),
            // ENABLE and IMASK are stored; ISTATUS is read-only (ignored, as on hardware);
            // anything else is RES0.
            reg::CNTP_CTL_EL0 if lo & !(TIMER_ENABLE | TIMER_IMASK | TIMER_ISTATUS) != 0 => return Err(RegError::BadValue),
            reg::CNTP_CTL_EL0 => self.ptimer.ctl = lo & (TIMER_ENABLE | TIMER_IMASK),
            _ => *self.core_slot(id).ok_or(RegError::Unknown)? = lo,
        }
        Ok(())
    }

    /// When the vCPU's virtual and physical timers assert, in physical counter ticks
    /// ([`shared_abi::msg::VcpuExit::vtimer_deadline`], `ptimer_deadline`), from its saved
    /// state and the VM's `CNTVOFF_EL2`, at physical count `now`.
    pub fn timer_deadlines(&self, cntvoff: u64, now: u64) -> (u64, u64) {
        let vtimer = timer_deadline(self.sys[SysReg::CNTV_CTL_EL0], self.sys[SysReg::CNTV_CVAL_EL0], cntvoff, now);
        (vtimer, self.ptimer.deadline(now))
    }

    /// Moves the guest past the 4-byte instruction EL2 emulated, and ends a software step in
    /// progress over it: `PSTATE.SS` clear, so a stepping guest takes its step exception right
    /// after, as if the instruction had run itself (the Arm ARM's active-pending state).
    pub fn skip_instruction(&mut self) {
        self.pc = self.pc.wrapping_add(4);
        self.pstate &= !PSTATE_SS;
    }

    /// Writes `value` to GPR `n`; `n == 31` is XZR (the write is dropped).
    pub fn set_gpr(&mut self, n: u8, value: u64) {
        if let Some(r) = self.x.get_mut(n as usize) {
            *r = value;
        }
    }

    /// Reads GPR `n`; `n == 31` is XZR.
    pub fn gpr(&self, n: u8) -> u64 {
        self.x.get(n as usize).copied().unwrap_or(0)
    }
}

impl Default for VcpuCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The `MPIDR_EL1` a vCPU sees: `Aff0` = its index, bit 31 RES1.
pub const fn vmpidr(index: usize) -> u64 {
    (1 << 31) | (index as u64 & 0xFF)
}

/// Every register ID a vCPU has, in `VCPU_REG_LIST` order.
pub fn register_ids() -> impl Iterator<Item = u64> {
    (0..31)
        .map(reg::x)
        .chain([reg::SP_EL0, reg::PC, reg::PSTATE, reg::SP_EL1, reg::ELR_EL1, reg::SPSR_EL1])
        .chain(reg::SYSREGS.iter().map(|s| s.1))
        .chain([reg::MPIDR_EL1])
        .chain((0..32).map(reg::fp_vreg))
        .chain([reg::FPSR, reg::FPCR])
        .chain(reg::PAUTH_KEYS.iter().map(|k| k.1))
        .chain(reg::MTE_REGS.iter().map(|k| k.1))
        .chain([reg::CNTP_CTL_EL0, reg::CNTP_CVAL_EL0])
}

/// Power state of a vCPU (PSCI).
pub mod power {
    /// Off: `VCPU_RUN` answers `VCPU_OFF`.
    pub const OFF: u8 = 0;
    /// `CPU_ON` was called; the next run resets it to the requested entry.
    pub const ON_PENDING: u8 = 1;
    /// Running or runnable.
    pub const ON: u8 = 2;
    /// A sibling's `CPU_ON` has claimed the vCPU and is storing its entry point; it becomes
    /// [`ON_PENDING`] next. A run meanwhile finds it off; other callers see it pending.
    pub const CLAIMED: u8 = 3;
}

/// A vCPU's context and who holds it.
pub struct VcpuSlot {
    claimed: AtomicBool,
    /// PSCI power state ([`power`]).
    pub power: AtomicU8,
    /// `CPU_ON` entry point for a pending power-on.
    pub on_entry: AtomicU64,
    /// `CPU_ON` context for a pending power-on.
    pub on_context: AtomicU64,
    /// Its SGIs are linked (`VCPU_LINK_SGIS`; [`crate::guest::sgi`]). Changed only by the host,
    /// with the vCPU claimed; read by its siblings' SGI writes.
    pub sgi_linked: AtomicBool,
    /// Linked SGIs EL2 holds pending for it (bit n = SGI n): set by its siblings, taken by its
    /// own runs.
    pub sgi_pending: AtomicU16,
    /// While it runs with its SGIs linked: the CPU's index plus one (0 otherwise), where a
    /// sibling rings the doorbell.
    pub running_on: AtomicU8,
    ctx: UnsafeCell<VcpuCtx>,
}

// SAFETY: `ctx` is only reached through a `VcpuGuard`, and at most one guard exists per slot
// (the `claimed` flag is taken with an acquire compare-exchange and released on drop).
unsafe impl Sync for VcpuSlot {}

impl VcpuSlot {
    /// An unclaimed, powered-off vCPU at reset.
    pub const fn new() -> Self {
        Self {
            claimed: AtomicBool::new(false),
            power: AtomicU8::new(power::OFF),
            on_entry: AtomicU64::new(0),
            on_context: AtomicU64::new(0),
            sgi_linked: AtomicBool::new(false),
            sgi_pending: AtomicU16::new(0),
            running_on: AtomicU8::new(0),
            ctx: UnsafeCell::new(VcpuCtx::new()),
        }
    }

    /// Takes the vCPU's context, or `None` if someone else holds it.
    pub fn claim(&self) -> Option<VcpuGuard<'_>> {
        self.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            // Lazily: a guard built and dropped on failure would release the holder's claim.
            .then(|| VcpuGuard { slot: self })
    }
}

impl Default for VcpuSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Exclusive access to a vCPU's context.
pub struct VcpuGuard<'a> {
    slot: &'a VcpuSlot,
}

impl Deref for VcpuGuard<'_> {
    type Target = VcpuCtx;
    fn deref(&self) -> &VcpuCtx {
        // SAFETY: the guard is the only holder of the claim (see `VcpuSlot`'s Sync).
        unsafe { &*self.slot.ctx.get() }
    }
}

impl DerefMut for VcpuGuard<'_> {
    fn deref_mut(&mut self) -> &mut VcpuCtx {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.slot.ctx.get() }
    }
}

impl Drop for VcpuGuard<'_> {
    fn drop(&mut self) {
        self.slot.claimed.store(false, Ordering::Release);
    }
}

/// Every vCPU slot, by VM slot and vCPU index.
pub type VcpuTable = [[VcpuSlot; MAX_VCPUS]; MAX_VMS];

#[cfg(test)]
mod tests {
    use super::*;
    

    #[test]
    fn pstate_modes_the_host_may_set() {
        // Every M[4:0]: only AArch64 EL0t (0), EL1t (4) and EL1h (5).
        for m in 0..32u64 {
            let v = 0x3C0 | m;
            assert_eq!(pstate_host_ok(v), [0, 4, 5].contains(&m), "M = {m:#x}");
            assert_eq!(pstate_enters_guest(v), [0, 4, 5].contains(&m), "M = {m:#x}");
        }
        // The attack: EL2h and EL2t with everything else plausible.
        assert!(!pstate_host_ok(0x3C9) && !pstate_host_ok(0x3C8));
        assert!(!pstate_enters_guest(0x3C9) && !pstate_enters_guest(0x3C8));
        // AArch32 modes (M[4] set): usr, fiq, irq, svc, hyp, ...
        for m in [0x10u64, 0x11, 0x12, 0x13, 0x1A, 0x1F] {
            assert!(!pstate_host_ok(m) && !pstate_enters_guest(m), "{m:#x}");
        }
        // IL, bit 5, and every bit above 31 or otherwise undefined: refused one by one.
        for bit in 0..64 {
            let v = PSTATE_RESET | 1 << bit;
            let defined = PSTATE_HOST_WRITABLE & (1 << bit) != 0 && bit > 4;
            if bit > 4 {
                assert_eq!(pstate_host_ok(v), defined, "bit {bit}");
            }
        }
        assert!(!pstate_host_ok(PSTATE_RESET | 1 << 20) && !pstate_enters_guest(PSTATE_RESET | 1 << 20), "IL");
        // Every defined bit at once, in each guest mode.
        for m in [0, 4, 5] {
            assert!(pstate_host_ok((PSTATE_HOST_WRITABLE & !0x1F) | m));
        }
    }

    #[test]
    fn pstate_writes_are_validated_where_they_enter() {
        let mut c = VcpuCtx::new();
        assert_eq!(c.set(reg::PSTATE, (0x3C9, 0)), Err(RegError::BadValue), "EL2h");
        assert_eq!(c.set(reg::PSTATE, (0x3C8, 0)), Err(RegError::BadValue), "EL2t");
        assert_eq!(c.set(reg::PSTATE, (0x3C5 | 1 << 20, 0)), Err(RegError::BadValue), "IL");
        assert_eq!(c.set(reg::PSTATE, (0x10, 0)), Err(RegError::BadValue), "AArch32 usr");
        assert_eq!(c.set(reg::PSTATE, (0x3C5 | 1 << 32, 0)), Err(RegError::BadValue), "undefined bit");
        assert_eq!(c.pstate, PSTATE_RESET, "refused writes change nothing");
        assert_eq!(c.set(reg::PSTATE, (0xF000_03C4, 0)), Ok(()));
        assert_eq!(c.pstate, 0xF000_03C4);
        assert_eq!(c.set(reg::PSTATE, (0, 0)), Ok(()), "EL0t");
    }

    #[test]
    fn registers_by_kvm_id() {
        let mut c = VcpuCtx::new();
        for n in 0..31 {
            c.set(reg::x(n), (0x1000 + n, 0)).unwrap();
        }
        c.set(reg::PC, (0x4008_0000, 0)).unwrap();
        c.set(reg::SYSREGS[12].1, (0xAAAA_0000, 0)).unwrap(); // VBAR_EL1
        assert_eq!(c.x[7], 0x1007);
        assert_eq!(c.get(0, reg::x(30)), Ok((0x101E, 0)));
        assert_eq!(c.get(0, reg::PC), Ok((0x4008_0000, 0)));
        assert_eq!(c.sys[SysReg::VBAR_EL1], 0xAAAA_0000);
        assert_eq!(c.get(0, reg::PSTATE), Ok((PSTATE_RESET, 0)));
        assert_eq!(c.get(0, reg::SYSREGS[0].1), Ok((SCTLR_EL1_RESET, 0)));
        assert_eq!(c.get(3, reg::MPIDR_EL1), Ok((0x8000_0003, 0)));
    }

    #[test]
    fn fp_registers_are_128_bit() {
        let mut c = VcpuCtx::new();
        c.set(reg::fp_vreg(31), (1, 2)).unwrap();
        assert_eq!((c.fp.v[62], c.fp.v[63]), (1, 2));
        assert_eq!(c.get(0, reg::fp_vreg(31)), Ok((1, 2)));
        c.set(reg::FPCR, (0x0300_0000, 0)).unwrap();
        assert_eq!(c.get(0, reg::FPCR), Ok((0x0300_0000, 0)));
        assert_eq!(c.set(reg::FPSR, (1 << 32, 0)), Err(RegError::TooWide));
        assert_eq!(c.set(reg::PC, (0, 1)), Err(RegError::TooWide));
        assert_eq!(c.pc, 0, "refused writes change nothing");
    }

    #[test]
    fn unknown_and_read_only_registers() {
        let mut c = VcpuCtx::new();
        for id in [0, u64::MAX, reg::core(1), reg::core(62 + 200), reg::sysreg(3, 4, 1, 1, 0), reg::FW_PSCI_VERSION] {
            assert_eq!(c.get(0, id), Err(RegError::Unknown), "{id:#x}");
            assert_eq!(c.set(id, (1, 0)), Err(RegError::Unknown), "{id:#x}");
        }
        assert_eq!(c.set(reg::MPIDR_EL1, (1, 0)), Err(RegError::ReadOnly));
        let before = c.clone();
        assert_eq!(before.x, c.x);
    }

    #[test]
    fn register_list_is_complete_and_gettable() {
        let mut c = VcpuCtx::new();
        let ids: std::vec::Vec<u64> = register_ids().collect();
        assert_eq!(ids.len(), 31 + 6 + NR_SYSREGS + 1 + 34 + 10 + 4 + 2);
        assert!(ids.len() <= shared_abi::msg::MAX_REG_IDS);
        for id in ids {
            assert!(c.get(0, id).is_ok(), "{id:#x}");
        }
    }

    #[test]
    fn the_physical_timer_registers_are_validated() {
        let mut c = VcpuCtx::new();
        assert_eq!(c.get(0, reg::CNTP_CTL_EL0), Ok((0, 0)), "disabled at reset");
        c.set(reg::CNTP_CTL_EL0, (TIMER_ENABLE | TIMER_IMASK, 0)).unwrap();
        c.set(reg::CNTP_CVAL_EL0, (u64::MAX - 1, 0)).unwrap();
        assert_eq!(c.ptimer, PTimer { ctl: 3, cval: u64::MAX - 1 });
        // ISTATUS is read-only: accepted and dropped; RES0 bits and a high half are refused.
        c.set(reg::CNTP_CTL_EL0, (TIMER_ENABLE | TIMER_ISTATUS, 0)).unwrap();
        assert_eq!(c.get(0, reg::CNTP_CTL_EL0), Ok((TIMER_ENABLE, 0)));
        assert_eq!(c.set(reg::CNTP_CTL_EL0, (1 << 3, 0)), Err(RegError::BadValue));
        assert_eq!(c.set(reg::CNTP_CTL_EL0, (1 << 63, 0)), Err(RegError::BadValue));
        assert_eq!(c.set(reg::CNTP_CVAL_EL0, (1, 1)), Err(RegError::TooWide));
        assert_eq!(c.ptimer.ctl, TIMER_ENABLE, "nothing changed by a refused write");
    }

    #[test]
    fn xzr_reads_zero_and_ignores_writes() {
        let mut c = VcpuCtx::new();
        c.set_gpr(31, 5);
        assert_eq!(c.gpr(31), 0);
        c.set_gpr(3, 5);
        assert_eq!(c.gpr(3), 5);
    }

    #[test]
    fn cpu_on_reset_state() {
        let mut c = VcpuCtx::new();
        c.x[5] = 9;
        c.sys[SysReg::TTBR1_EL1] = 7;
        c.disr_el1 = 0x8000_1234;
        c.reset_for_cpu_on(0x4010_0000, 0xC0FFEE);
        assert_eq!((c.pc, c.x[0], c.x[5], c.sys[SysReg::TTBR1_EL1], c.pstate), (0x4010_0000, 0xC0FFEE, 0, 0, PSTATE_RESET));
        assert_eq!((VcpuCtx::new().disr_el1, c.disr_el1), (0, 0), "DISR_EL1 zero at reset");
    }

    #[test]
    fn reset_in_place_is_new() {
        let mut c = VcpuCtx::new();
        // Every field away from its reset value.
        c.x = [1; 31];
        (c.host_save, c.sp_el0, c.pc, c.pstate, c.sp_el1, c.elr_el1, c.spsr_el1) = (2, 3, 4, 5, 6, 7, 8);
        c.sys = [9; NR_SYSREGS];
        c.fp.v[5] = 10;
        c.fp.fpcr = 11;
        c.pauth_keys = [12; 10];
        c.pauth_eager_left = 13;
        c.mte = [14; 4];
        c.pending_mmio = Some(PendingMmio { access: crate::exception::syndrome::decode_mmio(0x9340_0000 | 1 << 24).unwrap(), esr: 1, far: 2 });
        c.stats = [15; shared_abi::msg::stats::CLASSES];
        (c.tpidr2, c.disr_el1) = (16, 17);
        c.vgic.vmcr = 18;
        c.debug.mdscr = 19;
        c.debug.oslk = false;
        c.debug.wcr[3] = 27;
        c.ptimer = PTimer { ctl: 1, cval: 20 };
        c.sve_vq = 16;
        c.sve.z.fill(21);
        c.sve.p.fill(22);
        (c.sve.ffr[0], c.sve.fpsr, c.sve.fpcr, c.sve.zcr_el1) = (23, 24, 25, 26);
        assert_ne!(c, VcpuCtx::new());
        c.reset();
        assert_eq!(c, VcpuCtx::new());
    }

    #[test]
    fn a_cpu_on_reset_keeps_the_vms_sve_length_and_clears_the_registers() {
        let mut c = VcpuCtx::new();
        c.sve_vq = 4;
        c.sve.z[..64].fill(0xAB);
        c.sve.p[3] = 1;
        c.sve.zcr_el1 = 3;
        c.reset_for_cpu_on(0x4010_0000, 0);
        assert_eq!(c.sve_vq, 4, "the shape of its registers is the VM's");
        assert_eq!(c.sve, SveRegs::ZERO, "ZCR_EL1 0 (128 bits) and every register zero");
    }

    #[test]
    fn an_sve_vcpus_v_registers_are_the_low_bits_of_its_z_registers() {
        let mut c = VcpuCtx::new();
        c.sve_vq = 2;
        // Z1 as the guest left it: 32 bytes.
        c.sve.z[32..64].copy_from_slice(&core::array::from_fn::<u8, 32, _>(|i| i as u8 + 1));
        let lo = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let hi = u64::from_le_bytes([9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(c.get(0, reg::fp_vreg(1)), Ok((lo, hi)));
        assert_eq!(c.get(0, reg::fp_vreg(0)), Ok((0, 0)));
        // A write is an FP/SIMD write: the low 128 bits, the rest of the Z register zero.
        c.set(reg::fp_vreg(1), (7, 8)).unwrap();
        assert_eq!(c.get(0, reg::fp_vreg(1)), Ok((7, 8)));
        assert_eq!(c.sve.z[48..64], [0; 16]);
        assert_eq!(c.sve.z[64..], [0; 32 * SVE_VL_MAX - 64], "Z2 and on untouched");
        assert_eq!(c.fp, FpRegs::ZERO, "FpRegs is not the SVE vCPU's");
        c.set(reg::FPCR, (0x0300_0000, 0)).unwrap();
        c.set(reg::FPSR, (0x1F, 0)).unwrap();
        assert_eq!((c.sve.fpcr, c.sve.fpsr, c.get(0, reg::FPCR), c.get(0, reg::FPSR)), (0x0300_0000, 0x1F, Ok((0x0300_0000, 0)), Ok((0x1F, 0))));
        assert_eq!(c.set(reg::FPSR, (1 << 32, 0)), Err(RegError::TooWide));
        // The same IDs for a vCPU without SVE reach FpRegs.
        let mut c = VcpuCtx::new();
        c.set(reg::fp_vreg(1), (7, 8)).unwrap();
        assert_eq!((c.fp.v[2], c.fp.v[3]), (7, 8));
        assert_eq!(c.sve, SveRegs::ZERO);
    }

}
