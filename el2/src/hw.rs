//! The hardware seam: what portable EL2 code asks of the CPU, split by job. The arch layer
//! implements every trait for `arch::Cpu`; host tests implement them with
//! `testing::Recorder`, which records what was asked, so maintenance *sequences* are tested
//! where QEMU would hide them.
//!
//! | trait | job |
//! |---|---|
//! | [`WorldSwitch`] | load a vCPU, run it, put it back; lazy FP/SIMD and pointer-auth keys |
//! | [`VectorRegs`] | the FP/SIMD and SVE register file and its traps, for the lazy switch |
//! | [`Tlb`] | barriers and TLB maintenance after page-table edits |
//! | [`CacheOps`] | scrubbing, tag clearing and cleaning pages to the PoC |
//! | [`Firmware`] | calls to the firmware below EL2 |
//! | [`HostCpu`] | the host's exception registers at a trap |
//! | [`Clock`] | the physical count |

use crate::guest::timer::PTimer;
use crate::guest::vcpu::{FpRegs, SveRegs, VcpuCtx};
/// Defined beside the vCPU context, which keeps one for its VM ([`crate::guest::vcpu::RunConfig`]).
pub use crate::guest::vcpu::GuestConfig;
use crate::mem::addr::PhysAddr;

/// Barriers and TLB maintenance after page-table edits. Each method documents what it must
/// order.
pub trait Tlb {
    /// New valid entries in EL2's stage 1: make them visible to this CPU's walker before EL2
    /// touches the memory (`DSB ISHST; ISB`).
    fn hyp_s1_mapped(&self);
    /// Entries removed from EL2's stage 1: `DSB ISHST`, then every EL2 entry invalidated on
    /// all CPUs (`TLBI ALLE2IS`), `DSB ISH`, `ISB`, so that no CPU reaches the pages through a
    /// stale translation once they are the host's again.
    fn hyp_s1_unmapped(&self);
    /// New valid entries in the host stage 2: visible before the host retries (`DSB ISHST`;
    /// the `ERET` back to the host is context synchronising).
    fn host_s2_mapped(&self);
    /// Entries removed from the host stage 2: `DSB ISHST`, then every stage-1 and stage-2
    /// entry of the host's VMID invalidated on all CPUs (`TLBI VMALLS12E1IS`), `DSB ISH`, so
    /// no CPU keeps a stale translation. (A by-IPA invalidation would be cheaper; the whole
    /// VMID is the simple, always-correct choice for the rare donation.) Only with the host's
    /// VMID loaded, in a host call; in a guest's run, [`Self::host_s2_unmapped_from_guest`].
    fn host_s2_unmapped(&self);
    /// [`Self::host_s2_unmapped`] while a guest's stage 2 is loaded (a guest's `MEM_UNSHARE`,
    /// served in its run). `TLBI VMALLS12E1IS` acts on the VMID in `VTTBR_EL2`, the guest's
    /// there: the host's stage 2 (`host_vttbr`, and the host's `VTCR_EL2` with it, so that no
    /// walk pairs one regime's tables with the other's configuration) is borrowed for it, as
    /// [`Self::flush_guest_tlb`] borrows a guest's from the host.
    fn host_s2_unmapped_from_guest(&self, host_vttbr: u64);
    /// New valid entries in a guest stage 2: `DSB ISHST` (the entry to the guest synchronises).
    fn guest_s2_mapped(&self);
    /// Invalidates every TLB entry of the VMID in `vttbr`, on all CPUs: the guest's stage 2
    /// (`vttbr`, and a `VTCR_EL2` for its `ia_bits` and `start_level`) is borrowed for the
    /// `TLBI`, whose VMID is `VTTBR_EL2`'s.
    fn flush_guest_tlb(&self, vttbr: u64, ia_bits: u8, start_level: u8);
    /// While loaded, before the first entry: invalidates the loaded guest's TLB entries (its
    /// VMID, stage 1 and 2) and the instruction cache on *this CPU only*, so nothing a local
    /// TLBI or `IC IALLU` of the guest missed on another CPU survives here (see
    /// [`crate::guest::vm::LocalTlbRecord`]).
    fn flush_guest_local(&self);
}

/// Cache maintenance on pages that change hands.
pub trait CacheOps {
    /// Zeroes the page at `pa` (EL2 reaches it through a temporary mapping), and its
    /// allocation tags if `tagged`: the CPU has FEAT_MTE2 *and* the page has tag storage. Tag
    /// operations (`DC GZVA`) are never used on memory without tag storage. Then cleans and
    /// invalidates it to the PoC through the same mapping: the zeroes may sit in dirty lines
    /// over the guest's data in DRAM, and the host stage 2 is not FWB, so a host mapping the
    /// page Non-cacheable would read DRAM (the same as [`Self::clean_inval_poc`], without a
    /// second temporary mapping and its broadcast TLBI).
    fn scrub_page(&self, pa: PhysAddr, tagged: bool);
    /// Sets every allocation tag of the page at `pa` to zero, keeping its data. `false` if it
    /// could not (no tag access, no fixmap slot): the page must not be given to an MTE guest.
    #[must_use]
    fn clear_tags(&self, pa: PhysAddr) -> bool;
    /// [`Self::clear_tags`] for every page of the 2 MiB block at `base`, through one temporary
    /// block mapping rather than one mapping and broadcast TLBI per page. `false`, and nothing
    /// done, for a `base` not 2 MiB aligned, and as for `clear_tags`.
    #[must_use]
    fn clear_tags_block(&self, base: PhysAddr) -> bool;
    /// Cleans and invalidates the page at `pa` to the Point of Coherency (`DC CIVAC` per line
    /// through the fixmap, `DSB ISH`): DRAM then holds what any cache held, and no cache holds
    /// a line of it, so a non-cacheable view of the page and a cacheable one agree.
    fn clean_inval_poc(&self, pa: PhysAddr);
    /// [`Self::clean_inval_poc`] for every page of the 2 MiB block at `base`, through one
    /// temporary block mapping (one broadcast TLBI) where `base` is 2 MiB aligned.
    fn clean_inval_poc_block(&self, base: PhysAddr);
}

/// EL2's own reads and writes of a page it does not map (a guest's, or one given to a
/// guest): through a temporary mapping, as scrubbing does.
pub trait PageIo {
    /// Copies the page at `pa` into `out` (to measure what the host put there).
    fn read_page(&self, pa: PhysAddr, out: &mut [u8; 4096]);
    /// Writes `bytes` over the page at `pa`, then cleans and invalidates it to the PoC (a
    /// guest with its MMU off reads DRAM).
    fn write_page(&self, pa: PhysAddr, bytes: &[u8; 4096]);
}

/// The firmware below EL2.
pub trait Firmware {
    /// PSCI `CPU_ON` of the CPU with platform `MPIDR` `mpidr` and platform index `cpu`, started
    /// at EL2's own secondary entry point (which finds its host entry by `cpu`): firmware's
    /// answer for the host's `x0`.
    fn cpu_on(&self, mpidr: u64, cpu: usize) -> u64;
    /// Passes the host's SMC in `x[0..=17]` to firmware unchanged; its results replace them.
    fn forward(&self, x: &mut [u64; 31]);
    /// PSCI `MEM_PROTECT(enable)`: firmware's answer (the previous state, 0 or 1, or a
    /// negative PSCI error such as `NOT_SUPPORTED`).
    fn mem_protect(&self, enable: u32) -> i64;
}


/// The host's registers EL2 reads and writes at a host trap, beyond its GPRs and return state.
pub trait HostCpu {
    /// `FAR_EL2` and `HPFAR_EL2` of the trap being handled.
    fn fault_addresses(&self) -> (u64, u64);
    /// The host's `VBAR_EL1`.
    fn vbar_el1(&self) -> u64;
    /// Writes the host's `ESR_EL1`, `FAR_EL1`, `ELR_EL1` and `SPSR_EL1` for an exception EL2
    /// injects.
    fn write_el1_exception(&self, esr: u64, far: u64, elr: u64, spsr: u64);
}

/// The FP/SIMD and SVE register file, as the lazy switch of the guest's vector registers
/// (`guest::fpsimd`) uses it: each method is one step of its script, with the architectural
/// condition it needs. EL2 is built without FP/SIMD; these are its only vector accesses.
pub trait VectorRegs {
    /// Writes `CPTR_EL2` (which traps FP/SIMD, SVE and SME at EL2 as well as below it). Not
    /// in force for the accesses below until [`Self::isb`].
    fn write_cptr(&self, cptr: u64);
    /// `ISB`: the last `CPTR_EL2` write is in force.
    fn isb(&self);
    /// Writes `ZCR_EL2` (needs `CPTR_EL2.TZ` clear in force). Needs no `ISB` before the SVE
    /// accesses it sizes: the Arm ARM orders an indirect read of `ZCR_EL2.LEN` after a direct
    /// write of it in program order, without explicit synchronisation.
    fn write_zcr_el2(&self, zcr: u64);
    /// Stores `V0..V31`, `FPSR`, `FPCR` into `to` (needs `CPTR_EL2.TFP` clear in force).
    fn fp_save(&self, to: &mut FpRegs);
    /// Loads `V0..V31`, `FPSR`, `FPCR` from `from` (needs `CPTR_EL2.TFP` clear in force). A
    /// `V` write sets the low 128 bits of its `Z` register; whether the bits above the current
    /// vector length are cleared too is not guaranteed, so nothing relies on it.
    fn fp_restore(&self, from: &FpRegs);
    /// Stores `Z0..Z31`, `P0..P15` and `FFR` at the current vector length (`ZCR_EL2`), `FPSR`,
    /// `FPCR` and `ZCR_EL1` into `to` (needs `CPTR_EL2.TZ` and `TFP` clear in force).
    fn sve_save(&self, to: &mut SveRegs);
    /// Loads what [`Self::sve_save`] stores, at the current vector length.
    fn sve_restore(&self, from: &SveRegs);
    /// Sets `Z0..Z31`, `P0..P15` and `FFR` to zero at the current vector length (needs
    /// `CPTR_EL2.TZ` and `TFP` clear in force).
    fn sve_zero(&self);
}

/// The system counter.
pub trait Clock {
    /// The physical count (`CNTPCT_EL0`), for the emulated physical timer and `CNTVOFF_EL2`.
    fn counter(&self) -> u64;
}

/// Everything at once: what a hypercall handler that reaches several jobs takes.
pub trait Hw: WorldSwitch + Tlb + CacheOps + PageIo + Firmware + Clock {}
impl<T: WorldSwitch + Tlb + CacheOps + PageIo + Firmware + Clock> Hw for T {}

/// How a guest entry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// A synchronous exception (see `esr`).
    Sync,
    /// A physical IRQ or FIQ.
    Irq,
    /// A physical SError.
    SError,
}

/// The syndrome of a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTrap {
    /// What happened.
    pub kind: TrapKind,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// `HPFAR_EL2`.
    pub hpfar: u64,
}


/// The world switch: moving a vCPU onto this CPU and off it.
///
/// A `VCPU_RUN` *loads* the vCPU once (host EL1 state out, guest traps, stage 2 and EL1 state
/// in), *runs* it as often as EL2 handles its exits by itself (only GPRs, PC and PSTATE move),
/// and *puts* it back once, when returning to the host. Between `load` and `put` the guest's
/// EL1 system registers live in the CPU, not in `ctx.sys`.
pub trait WorldSwitch {
    /// What `load` saved of the host, for `put`.
    type Saved;
    /// Saves the host's EL1 state and EL2 configuration; installs the guest's.
    fn load(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> Self::Saved;
    /// Enters the loaded guest and returns at its next exit.
    fn run(&self, ctx: &mut VcpuCtx) -> GuestTrap;
    /// Saves the guest's EL1 state into `ctx` and restores the host's.
    fn put(&self, ctx: &mut VcpuCtx, saved: Self::Saved);
    /// The guest's first pointer-authentication use in this run (lazy policy): stop trapping
    /// it (`HCR_EL2.API/APK`), save the host's keys in `saved` and load the guest's from
    /// `ctx`; `put` swaps them back. `false` if already loaded.
    fn pauth_load(&self, ctx: &VcpuCtx, saved: &mut Self::Saved) -> bool;
    /// The guest's first FP/SIMD use in this run, or SVE use for a VM with SVE (its access
    /// trapped): stop trapping them, save the host's FP/SIMD registers in `saved` and load the
    /// guest's from `ctx` (`guest::fpsimd`); `put` swaps them back. `false` if they are
    /// already loaded (the trap is then not ours to fix).
    fn fp_load(&self, ctx: &VcpuCtx, saved: &mut Self::Saved) -> bool;
    /// While loaded, after EL2 emulated a debug-register access ([`crate::guest::debug_switch::sync`]):
    /// if the guest `uses` its breakpoints or watchpoints (the access was one of theirs, or its
    /// `MDSCR_EL1` enables their events) and its OS lock is clear, its breakpoint and watchpoint
    /// registers and `MDSCR_EL1` go into the CPU (the host's to this CPU's scratch) and stop
    /// trapping (`MDCR_EL2.TDA`) for the rest of the run; once live, only the OS lock saves them
    /// back into `ctx` and traps them again (the host's restored). Not live, the CPU's
    /// `MDSCR_EL1` becomes [`crate::guest::vcpu::DebugRegs::mdscr_in_force`]. `put` saves live
    /// ones into `ctx`.
    fn debug_sync(&self, ctx: &mut VcpuCtx, saved: &mut Self::Saved, uses: bool);
    /// While loaded: copies the guest's live EL1 system registers into `ctx`.
    fn el1_to_ctx(&self, ctx: &mut VcpuCtx);
    /// While loaded: writes `ctx`'s EL1 system registers back to the CPU.
    fn el1_from_ctx(&self, ctx: &VcpuCtx);
    /// While loaded: backs the guest's emulated EL1 physical timer `t` with EL2's own
    /// physical timer (`CNTHP_CVAL_EL2`, `CNTHP_CTL_EL2`), so its deadline ends the run (the
    /// physical PPI 26 is routed to EL2 like any interrupt while a guest runs) and the host
    /// delivers PPI 30 on time; disabled when `t` cannot fire. `load` does it from the
    /// context, `put` disables it.
    fn ptimer_backing(&self, t: &PTimer);
    /// While loaded, after a physical IRQ ended the run: what it is, by this CPU's
    /// `ICC_HPPIR1_EL1`. EL2's doorbell ([`shared_abi::msg::irq::DOORBELL_SGI`]) is consumed
    /// (made not pending in the CPU's redistributor). The guest's linked virtual timer firing
    /// is delivered without an exit ([`crate::guest::vgic::VgicCpu::take_vtimer`], with the
    /// guest's `CNTV_CTL_EL0`), and the CPU's physical PPI 27 made active until `put`, which
    /// deactivates it (`load` activates it too for a vCPU that comes with a live
    /// hardware-linked list register). Anything else is the host's.
    fn guest_irq(&self, ctx: &mut VcpuCtx, saved: &mut Self::Saved) -> GuestIrq;
    /// While loaded: queues the linked SGIs of `bits` into the vCPU's list registers
    /// ([`crate::guest::vgic::VgicCpu::queue_sgis_live`]); returns those left pending.
    fn queue_sgis(&self, ctx: &mut VcpuCtx, saved: &mut Self::Saved, bits: u16) -> u16;
    /// Sends EL2's doorbell SGI to the CPU with affinity `mpidr`, after earlier memory writes.
    fn ring_doorbell(&self, mpidr: u64);
}

/// What a physical IRQ that ended a guest's run is ([`WorldSwitch::guest_irq`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestIrq {
    /// The host's: an `IRQ` exit.
    Host,
    /// The guest's linked virtual timer, now in a list register (or held for it): resume.
    Timer,
    /// EL2's doorbell, consumed: take the vCPU's pending linked SGIs, resume.
    Doorbell,
}

