//! The world switch: from the host (inside a `VCPU_RUN` hypercall) into a guest and back.
//!
//! A `VCPU_RUN` *loads* the vCPU once, *runs* it as often as EL2 handles its exits itself
//! (only GPRs, PC and PSTATE move then), and *puts* it back once. Each feature that moves
//! state has its own module with its saved state and its `load_guest`/`put` pair. `load`
//! runs them in this order and `put` in the reverse:
//!
//! | step | module | what moves |
//! |---|---|---|
//! | 1 | [`el1`] | the host's EL1 state out |
//! | 2 | [`traps`] | the guest's traps computed from the host's (which `put` restores from [`traps::HostEl2`]) |
//! | 3 | [`debug`] | the guest's `MDSCR_EL1` (its breakpoints and watchpoints too if it uses them, lazily otherwise), trace prohibited, the host's counters stopped (protected VMs) |
//! | 4 | [`tpidr2`] | `TPIDR2_EL0` (FEAT_SME) |
//! | 5 | [`disr`] | the guest's `DISR_EL1`, i.e. `VDISR_EL2` (FEAT_RAS) |
//! | 6 | [`vgic`] | the virtual GIC CPU interface |
//! | 7 | [`pauth`] | pointer-authentication keys (eager; lazily at first use otherwise) |
//! | 8 | [`mte`] | MTE registers, tags accessible (MTE VMs) |
//! | 9 | [`fpsimd`] | FP/SIMD, and SVE for a VM with SVE: only at the guest's first use, trapped until then |
//! | 10 | [`traps`] | the guest's traps and stage 2 |
//! | 11 | [`timer`] | the VM's `CNTVOFF_EL2`; the emulated physical timer on `CNTHP` |
//! | 12 | [`el1`] | the guest's EL1 state in |
//!
//! No ISB at the end of `load`: the `ERET` in `__guest_enter` is context synchronising, so
//! every register written is in effect for the guest's first instruction. `put` ends with an
//! ISB (see there). Between `load` and `put` the guest's EL1 registers live in the CPU, not
//! in the context.

mod debug;
mod disr;
mod el1;
mod fpsimd;
mod mte;
mod pauth;
mod sve;
mod timer;
mod tpidr2;
pub(in crate::arch) mod traps;
pub mod vgic;

pub use el1::check_sysreg_tables;
pub(crate) use sve::lengths as sve_lengths;

use super::regs::{cpu_index, isb};
use super::Cpu;
use crate::cpu::controls::{guest_controls, hcr, ControlFeatures};
use crate::guest::timer::PTimer;
use crate::guest::vcpu::{FpRegs, VcpuCtx};
use crate::hw::{GuestConfig, GuestIrq, GuestTrap, TrapKind, WorldSwitch};
use crate::platform::MAX_CPUS;
use aarch64_cpu::registers::*;
use core::sync::atomic::Ordering;

/// Defines `$save(out)` and `$restore(v)` for a bank of system registers, in the order given.
/// Each invocation names only registers that EL2 accesses without trapping and that act on
/// EL1&0 alone, and says why for its bank.
macro_rules! sysreg_bank {
    ($save:ident, $restore:ident, $n:expr, [$($name:literal),* $(,)?]) => {
        fn $save(out: &mut [u64; $n]) {
            let mut i = 0;
            $(
                let v: u64;
                // SAFETY: reading a register of this bank at EL2 has no side effects (see the
                // invocation).
                unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
                out[i] = v;
                i += 1;
            )*
            let _ = i;
        }

        fn $restore(v: &[u64; $n]) {
            let mut i = 0;
            $(
                // SAFETY: registers of this bank only affect EL1&0, which does not run until
                // the ERET that follows every restore (the host's, or the guest's).
                unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v[i], options(nomem, nostack, preserves_flags)) };
                i += 1;
            )*
            let _ = i;
        }
    };
}

pub(crate) use sysreg_bank;

extern "C" {
    /// Saves EL2's callee-saved registers in `host_save`, loads the guest GPRs from `ctx` and
    /// enters the guest; returns (through `__guest_exit`) the exit kind: 0 synchronous, 1 IRQ
    /// or FIQ, 2 SError.
    fn __guest_enter(ctx: *mut u64, host_save: *mut [u64; 14]) -> u64;
}

/// Per CPU: its [`ControlFeatures`] ([`ControlFeatures::bits`]), read once by `activate_host`.
pub static CONTROL_FEATURES: [core::sync::atomic::AtomicU16; MAX_CPUS] = [const { core::sync::atomic::AtomicU16::new(0) }; MAX_CPUS];

/// This CPU's features.
fn features() -> ControlFeatures {
    ControlFeatures::from_bits(CONTROL_FEATURES[cpu_index() % MAX_CPUS].load(Ordering::Relaxed))
}

/// What `load` saved of the host, for `put`: each feature's own.
pub struct HostSaved {
    debug: debug::Saved,
    tpidr2: tpidr2::Saved,
    disr: disr::Saved,
    vgic: vgic::Saved,
    pauth: pauth::Saved,
    mte: mte::Saved,
    fp: crate::guest::fpsimd::Lazy,
}

/// Where a CPU keeps the host's EL1 state, and its FP/SIMD registers and keys while a guest's
/// are loaded. Kept out of [`HostSaved`] so that a `VCPU_RUN` does not copy them around: each
/// is saved and restored in place.
struct HostScratch {
    el1: el1::Saved,
    fp: FpRegs,
    keys: [u64; 10],
    mte: [u64; 4],
    debug: debug::HostDebug,
}

struct PerCpuScratch(core::cell::UnsafeCell<HostScratch>);
// SAFETY: each CPU touches only its own entry (indexed by its CPU number), and only between
// `load` and `put` of the one vCPU it runs; EL2 is never re-entered on a CPU meanwhile.
unsafe impl Sync for PerCpuScratch {}

static SCRATCH: [PerCpuScratch; MAX_CPUS] =
    [const { PerCpuScratch(core::cell::UnsafeCell::new(HostScratch { el1: el1::Saved::ZERO, fp: FpRegs::ZERO, keys: [0; 10], mte: [0; 4], debug: debug::HostDebug::ZERO })) }; MAX_CPUS];

/// This CPU's scratch area.
fn scratch() -> &'static mut HostScratch {
    // SAFETY: see `PerCpuScratch`: this CPU's entry, used by no other CPU and by no other
    // live reference on this one (callers use it for one save or restore at a time).
    unsafe { &mut *SCRATCH[cpu_index() % MAX_CPUS].0.get() }
}

impl Cpu {
    /// Loads the vCPU: the script's steps 1 to 12 (module documentation).
    fn load_guest(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> HostSaved {
        let f = features();
        el1::save_host(&mut scratch().el1);
        let host = traps::HostEl2::this_cpu();
        let mut controls = guest_controls(&f, host.mdcr(), cfg, cfg.protected);
        let mut hcr = controls.hcr;
        if cfg.fwb {
            // The VM's stage 2 uses the FWB encoding (VMs are created so only when every CPU
            // has FEAT_S2FWB). The host's stage 2 never does, and TLB entries are per VMID, so
            // the bit can change with VTTBR_EL2 without invalidation.
            hcr |= hcr::FWB;
        }
        let debug = debug::load_guest(&debug::Regs, &mut controls, ctx);
        let tpidr2 = tpidr2::load_guest(&f, ctx);
        let disr = disr::load_guest(&controls, ctx);
        let vgic = vgic::load_guest(&f, ctx);
        let pauth = pauth::load_guest(cfg, ctx, &mut hcr);
        let mte = mte::load_guest(cfg, ctx, &mut hcr);
        let fp = fpsimd::load_guest(controls.cptr);
        traps::load_guest(host, hcr, &controls, cfg);
        timer::load_guest(cfg, ctx);
        el1::load_guest(ctx);
        HostSaved { debug, tpidr2, disr, vgic, pauth, mte, fp }
    }

    /// Between load and put: enter, and read the exit's syndrome. Only GPRs, PC and PSTATE move.
    /// Inlined into the run loop: a frame of its own cost about ten instructions an exit.
    #[inline(always)]
    fn enter(&self, ctx: &mut VcpuCtx) -> GuestTrap {
        ELR_EL2.set(ctx.pc);
        SPSR_EL2.set(ctx.pstate);
        // Not zeroed first (a `memset` call, about 65 instructions on every entry): only the
        // assembly writes and reads it, __guest_enter all 14 words before the ERET.
        let mut host_save = core::mem::MaybeUninit::<[u64; 14]>::uninit();
        // The guest runs under its own stage 2 and the traps above: it cannot reach EL2 or host.
        // SAFETY: `ctx` is ours alone (a claimed vCPU), `host_save` outlives the call, and
        // __guest_enter returns only via __guest_exit, which restores callee-saved regs and SP
        // (and VBAR_EL2: the guest table only while the guest runs).
        let kind = unsafe { __guest_enter(ctx as *mut VcpuCtx as *mut u64, host_save.as_mut_ptr()) };
        // Syndrome and guest PC/PSTATE, before anything can overwrite them.
        let trap = GuestTrap {
            kind: match kind {
                0 => TrapKind::Sync,
                1 => TrapKind::Irq,
                _ => TrapKind::SError,
            },
            esr: ESR_EL2.get(),
            far: FAR_EL2.get(),
            hpfar: HPFAR_EL2.get(),
        };
        ctx.pc = ELR_EL2.get();
        ctx.pstate = SPSR_EL2.get();
        trap
    }

    /// Puts the vCPU back: the script in reverse.
    fn put_guest(&self, ctx: &mut VcpuCtx, saved: HostSaved) {
        el1::save_guest(ctx);
        fpsimd::put(ctx, &saved.fp);
        mte::put(ctx, &saved.mte);
        pauth::put(ctx, &saved.pauth);
        vgic::put(ctx, &saved.vgic);
        disr::put(ctx, &saved.disr);
        tpidr2::put(ctx, &saved.tpidr2);
        debug::put(&debug::Regs, ctx, &saved.debug);
        el1::restore_host(&mut scratch().el1);
        timer::put();
        traps::restore_host(&traps::HOST_EL2[cpu_index() % MAX_CPUS]);
        // EL2 goes on to run Rust code that writes host memory (the exit record) and returns
        // to the host by ERET; the ISB makes the host configuration effective now rather than
        // at that ERET, so EL2 never runs with the guest's traps half in place.
        isb();
        // Step 6's physical side, once the guest's virtual timer is out of the CPU.
        vgic::put_vtimer(&saved.vgic);
    }
}

impl WorldSwitch for Cpu {
    type Saved = HostSaved;

    fn load(&self, ctx: &VcpuCtx, cfg: &GuestConfig) -> HostSaved {
        self.load_guest(ctx, cfg)
    }

    #[inline(always)]
    fn run(&self, ctx: &mut VcpuCtx) -> GuestTrap {
        self.enter(ctx)
    }

    fn put(&self, ctx: &mut VcpuCtx, saved: HostSaved) {
        self.put_guest(ctx, saved)
    }

    fn pauth_load(&self, ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
        pauth::first_use(ctx, saved)
    }

    fn fp_load(&self, ctx: &VcpuCtx, saved: &mut HostSaved) -> bool {
        fpsimd::first_use(ctx, saved)
    }

    fn debug_sync(&self, ctx: &mut VcpuCtx, saved: &mut HostSaved, uses: bool) {
        debug::sync(&debug::Regs, ctx, &mut saved.debug, uses);
    }

    fn el1_to_ctx(&self, ctx: &mut VcpuCtx) {
        el1::save_guest(ctx);
    }

    fn el1_from_ctx(&self, ctx: &VcpuCtx) {
        el1::load_guest(ctx);
    }

    fn ptimer_backing(&self, t: &PTimer) {
        timer::back_ptimer(t);
    }

    fn guest_irq(&self, ctx: &mut VcpuCtx, saved: &mut HostSaved) -> GuestIrq {
        vgic::guest_irq(ctx, &mut saved.vgic)
    }

    fn queue_sgis(&self, ctx: &mut VcpuCtx, saved: &mut HostSaved, bits: u16) -> u16 {
        vgic::queue_sgis(ctx, &mut saved.vgic, bits)
    }

    fn ring_doorbell(&self, mpidr: u64) {
        vgic::ring_doorbell(mpidr);
    }
}
