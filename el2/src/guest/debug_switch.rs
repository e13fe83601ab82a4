//! The world switch of self-hosted debug, as plain Rust over a register file
//! ([`DebugCpu`]): the guest's own `MDSCR_EL1` at every load and, once it uses them, its
//! breakpoints and watchpoints (KVM's lazy scheme, [`crate::guest::vcpu::DebugRegs`]); trace
//! prohibited (`TRFCR_EL1`) and the host's counters stopped (`PMCNTENSET_EL0`) for the run when
//! the controls say so. The arch layer (`arch/switch/debug.rs`) is the register file; host
//! tests use a fake one, with CPUs of different breakpoint and watchpoint counts.
//!
//! A run starts with the registers trapped (`MDCR_EL2.TDA`) and the host's in the CPU, harmless
//! while the guest's `MDSCR_EL1` enables no breakpoint or watchpoint events. They go *live*
//! (the guest's in the CPU, untrapped) at load when the guest's `MDSCR_EL1` enables those
//! events, or at its first access ([`sync`]). Live, every register this CPU implements moves,
//! not only the VM's advertised count: the guest reaches them all, and none of the host's or
//! another guest's may remain.

use crate::cpu::controls::{mdcr, GuestControls};
use crate::guest::vcpu::{DebugRegs, VcpuCtx, DEBUG_SLOTS, MDSCR_IN_CPU};

/// One bank of breakpoint or watchpoint registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bank {
    /// `DBGBVR<n>_EL1`.
    Bvr,
    /// `DBGBCR<n>_EL1`.
    Bcr,
    /// `DBGWVR<n>_EL1`.
    Wvr,
    /// `DBGWCR<n>_EL1`.
    Wcr,
}

/// The debug, trace and PMU registers the switch reads and writes on this CPU.
pub trait DebugCpu {
    /// This CPU's breakpoints and watchpoints (`ID_AA64DFR0_EL1.BRPs`, `WRPs`, plus one).
    fn slots(&self) -> (usize, usize);
    /// Register `n` of `bank` (`n` below this CPU's count).
    fn read(&self, bank: Bank, n: usize) -> u64;
    /// Writes register `n` of `bank` (`n` below this CPU's count).
    fn write(&self, bank: Bank, n: usize, v: u64);
    fn mdscr(&self) -> u64;
    fn set_mdscr(&self, v: u64);
    fn set_mdcr_el2(&self, v: u64);
    fn trfcr(&self) -> u64;
    fn set_trfcr(&self, v: u64);
    fn pmcntenset(&self) -> u64;
    /// `PMCNTENCLR_EL0 = v`: stops the counters in `v`.
    fn pmcnten_clear(&self, v: u64);
    /// `PMCNTENSET_EL0 = v`: starts the counters in `v`.
    fn pmcnten_set(&self, v: u64);
    /// Runs `f` on where the host's breakpoints and watchpoints wait while a guest's are live
    /// (this CPU's scratch): looked up only when they move.
    fn with_host<R>(&self, f: impl FnOnce(&mut HostDebug) -> R) -> R;
}

/// The host's values, where the run changed them.
#[derive(Debug)]
pub struct Saved {
    mdscr: u64,
    /// `TRFCR_EL1`, if trace was prohibited for the run.
    trfcr: Option<u64>,
    /// `PMCNTENSET_EL0`, if the host's counters were stopped for a protected run.
    pmcnten: Option<u64>,
    /// The guest's `MDCR_EL2` (with `TDA`).
    guest_mdcr: u64,
    /// The guest's breakpoints and watchpoints are in the CPU (the host's in [`HostDebug`]),
    /// untrapped.
    live: bool,
}

/// The host's breakpoint and watchpoint registers while a guest's are live, kept per CPU.
/// (`MDCCINT_EL1` and the claim tags, which the lifted trap also gives the guest, are not
/// moved: QEMU 7.2 has no such registers at EL2, an UNDEF there; docs/threat-model.md lists
/// them.)
pub struct HostDebug {
    regs: [[u64; DEBUG_SLOTS]; 4],
}

impl HostDebug {
    /// Nothing saved yet.
    pub const ZERO: Self = Self { regs: [[0; DEBUG_SLOTS]; 4] };
}

const BANKS: [Bank; 4] = [Bank::Bvr, Bank::Bcr, Bank::Wvr, Bank::Wcr];

/// Copies the CPU's breakpoint and watchpoint registers out, as many as it has.
fn save_regs(cpu: &impl DebugCpu, out: [&mut [u64; DEBUG_SLOTS]; 4]) {
    let (b, w) = cpu.slots();
    for (bank, regs) in BANKS.into_iter().zip(out) {
        let count = if matches!(bank, Bank::Bvr | Bank::Bcr) { b } else { w };
        for (n, r) in regs.iter_mut().enumerate().take(count.min(DEBUG_SLOTS)) {
            *r = cpu.read(bank, n);
        }
    }
}

/// Writes the CPU's breakpoint and watchpoint registers, as many as it has.
fn restore_regs(cpu: &impl DebugCpu, regs: [&[u64; DEBUG_SLOTS]; 4]) {
    let (b, w) = cpu.slots();
    for (bank, values) in BANKS.into_iter().zip(regs) {
        let count = if matches!(bank, Bank::Bvr | Bank::Bcr) { b } else { w };
        for (n, v) in values.iter().enumerate().take(count.min(DEBUG_SLOTS)) {
            cpu.write(bank, n, *v);
        }
    }
}

/// The guest's registers into the CPU, the host's into this CPU's scratch.
fn go_live(cpu: &impl DebugCpu, d: &DebugRegs, saved: &mut Saved) {
    cpu.with_host(|host| {
        let [hb, hc, hw, hwc] = &mut host.regs;
        save_regs(cpu, [hb, hc, hw, hwc]);
    });
    restore_regs(cpu, [&d.bvr, &d.bcr, &d.wvr, &d.wcr]);
    cpu.set_mdscr(d.mdscr_in_force());
    saved.live = true;
}

/// The guest's live registers back into `d` (of `MDSCR_EL1` only the bits EL2 put in the CPU:
/// `MDSCR_IN_CPU`), the host's from this CPU's scratch into the CPU.
fn take_back(cpu: &impl DebugCpu, d: &mut DebugRegs) {
    save_regs(cpu, [&mut d.bvr, &mut d.bcr, &mut d.wvr, &mut d.wcr]);
    d.mdscr = (d.mdscr & !MDSCR_IN_CPU) | (cpu.mdscr() & MDSCR_IN_CPU);
    cpu.with_host(|host| {
        let [hb, hc, hw, hwc] = &host.regs;
        restore_regs(cpu, [hb, hc, hw, hwc]);
    });
}

/// Load: the guest's `MDSCR_EL1` (its registers live if it enables their events), trace
/// prohibited and the host's counters stopped as `traps` says; `traps.mdcr` loses `TDA` for a
/// live start (the traps are written later in the load).
pub fn load_guest(cpu: &impl DebugCpu, traps: &mut GuestControls, ctx: &VcpuCtx) -> Saved {
    let mut saved = Saved {
        mdscr: cpu.mdscr(),
        trfcr: traps.no_trace.then(|| cpu.trfcr()),
        pmcnten: traps.stop_host_counters.then(|| cpu.pmcntenset()),
        guest_mdcr: traps.mdcr,
        live: false,
    };
    if ctx.debug.live_from_entry() {
        go_live(cpu, &ctx.debug, &mut saved);
        traps.mdcr &= !mdcr::TDA;
    } else {
        cpu.set_mdscr(ctx.debug.mdscr_in_force());
    }
    if saved.trfcr.is_some() {
        cpu.set_trfcr(0);
    }
    if let Some(on) = saved.pmcnten {
        cpu.pmcnten_clear(on);
    }
    saved
}

/// While loaded, after an emulated debug-register access: live if the guest now uses its
/// breakpoints or watchpoints (`uses`: the access was one of theirs, or its `MDSCR_EL1` enables
/// their events) with its OS lock clear. Once live, only the OS lock takes them back: the
/// guest's `MDSCR_EL1` is then in the CPU, untrapped, and its copy in `ctx` stale, so a
/// trapped OS-lock access must not read it as "events off" (the host's registers would come
/// back with the guest's events on).
pub fn sync(cpu: &impl DebugCpu, ctx: &mut VcpuCtx, saved: &mut Saved, uses: bool) {
    let live = !ctx.debug.oslk && (saved.live || uses);
    match (saved.live, live) {
        (false, true) => {
            go_live(cpu, &ctx.debug, saved);
            cpu.set_mdcr_el2(saved.guest_mdcr & !mdcr::TDA);
        }
        (true, false) => {
            take_back(cpu, &mut ctx.debug);
            saved.live = false;
            cpu.set_mdcr_el2(saved.guest_mdcr);
            cpu.set_mdscr(ctx.debug.mdscr_in_force());
        }
        (false, false) => cpu.set_mdscr(ctx.debug.mdscr_in_force()),
        (true, true) => {}
    }
}

/// Put: the guest's live registers saved, the host's values back.
pub fn put(cpu: &impl DebugCpu, ctx: &mut VcpuCtx, saved: &Saved) {
    if saved.live {
        take_back(cpu, &mut ctx.debug);
    }
    if let Some(v) = saved.pmcnten {
        cpu.pmcnten_set(v);
    }
    if let Some(v) = saved.trfcr {
        cpu.set_trfcr(v);
    }
    cpu.set_mdscr(saved.mdscr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::vcpu::{MDSCR_KDE, MDSCR_MDE, MDSCR_SS};
    use core::cell::{Cell, RefCell};
    extern crate std;
    use std::vec::Vec;

    /// A CPU's debug registers: `(breakpoints, watchpoints)` implemented, each bank's values,
    /// and every write, in order.
    struct FakeCpu {
        slots: (usize, usize),
        banks: RefCell<[[u64; DEBUG_SLOTS]; 4]>,
        mdscr: Cell<u64>,
        mdcr: Cell<Option<u64>>,
        trfcr: Cell<u64>,
        pmcnten: Cell<u64>,
        writes: RefCell<Vec<(Bank, usize)>>,
        host: RefCell<HostDebug>,
    }

    fn bank_index(b: Bank) -> usize {
        BANKS.iter().position(|&x| x == b).unwrap()
    }

    impl FakeCpu {
        /// The host's state: register `n` of bank `k` holds `0x4057_0000 + k * 0x100 + n`.
        fn host(slots: (usize, usize)) -> Self {
            let mut banks = [[0u64; DEBUG_SLOTS]; 4];
            for (k, bank) in banks.iter_mut().enumerate() {
                for (n, r) in bank.iter_mut().enumerate() {
                    *r = 0x4057_0000 + (k as u64) * 0x100 + n as u64;
                }
            }
            Self { slots, banks: RefCell::new(banks), mdscr: Cell::new(0x8000), mdcr: Cell::new(None), trfcr: Cell::new(0x5), pmcnten: Cell::new(0b1011), writes: RefCell::new(Vec::new()), host: RefCell::new(HostDebug::ZERO) }
        }
    }

    impl DebugCpu for FakeCpu {
        fn slots(&self) -> (usize, usize) {
            self.slots
        }
        fn read(&self, bank: Bank, n: usize) -> u64 {
            let limit = if matches!(bank, Bank::Bvr | Bank::Bcr) { self.slots.0 } else { self.slots.1 };
            assert!(n < limit, "{bank:?} {n}: not implemented on this CPU (an UNDEF at EL2)");
            self.banks.borrow()[bank_index(bank)][n]
        }
        fn write(&self, bank: Bank, n: usize, v: u64) {
            let limit = if matches!(bank, Bank::Bvr | Bank::Bcr) { self.slots.0 } else { self.slots.1 };
            assert!(n < limit, "{bank:?} {n}: not implemented on this CPU (an UNDEF at EL2)");
            self.banks.borrow_mut()[bank_index(bank)][n] = v;
            self.writes.borrow_mut().push((bank, n));
        }
        fn mdscr(&self) -> u64 {
            self.mdscr.get()
        }
        fn set_mdscr(&self, v: u64) {
            self.mdscr.set(v);
        }
        fn set_mdcr_el2(&self, v: u64) {
            self.mdcr.set(Some(v));
        }
        fn trfcr(&self) -> u64 {
            self.trfcr.get()
        }
        fn set_trfcr(&self, v: u64) {
            self.trfcr.set(v);
        }
        fn pmcntenset(&self) -> u64 {
            self.pmcnten.get()
        }
        fn pmcnten_clear(&self, v: u64) {
            self.pmcnten.set(self.pmcnten.get() & !v);
        }
        fn pmcnten_set(&self, v: u64) {
            self.pmcnten.set(self.pmcnten.get() | v);
        }
        fn with_host<R>(&self, f: impl FnOnce(&mut HostDebug) -> R) -> R {
            f(&mut self.host.borrow_mut())
        }
    }

    fn controls(protected: bool) -> GuestControls {
        GuestControls { hcr: 0, cptr: 0, mdcr: mdcr::TDA | 0x20, cnthctl: 0, stop_host_counters: protected, no_trace: true, switch_vdisr: false }
    }

    /// A vCPU whose breakpoints and watchpoints hold `0x6E57_0000 + k * 0x100 + n`, OS lock
    /// clear, with `mdscr`.
    fn guest(mdscr: u64) -> VcpuCtx {
        let mut ctx = VcpuCtx::new();
        let d = &mut ctx.debug;
        d.oslk = false;
        d.mdscr = mdscr;
        for (k, bank) in [&mut d.bvr, &mut d.bcr, &mut d.wvr, &mut d.wcr].into_iter().enumerate() {
            for (n, r) in bank.iter_mut().enumerate() {
                *r = 0x6E57_0000 + (k as u64) * 0x100 + n as u64;
            }
        }
        ctx
    }

    #[test]
    fn a_run_without_breakpoints_moves_no_bank_register() {
        let cpu = FakeCpu::host((6, 4));
        let mut traps = controls(true);
        let mut ctx = guest(MDSCR_SS | 1 << 14); // SS, and a bit (HDE) the CPU does not get
        let saved = load_guest(&cpu, &mut traps, &ctx);
        assert_eq!(traps.mdcr & mdcr::TDA, mdcr::TDA, "registers trapped");
        assert_eq!(cpu.mdscr.get(), MDSCR_SS, "only MDSCR_IN_CPU bits go in");
        assert_eq!((cpu.trfcr.get(), cpu.pmcnten.get()), (0, 0), "trace prohibited, counters stopped");
        put(&cpu, &mut ctx, &saved);
        assert!(cpu.writes.borrow().is_empty());
        assert_eq!((cpu.mdscr.get(), cpu.trfcr.get(), cpu.pmcnten.get()), (0x8000, 0x5, 0b1011), "the host's back");
    }

    #[test]
    fn a_live_run_swaps_every_register_the_cpu_has_and_only_those() {
        for slots in [(2, 2), (6, 4), (16, 16)] {
            let cpu = FakeCpu::host(slots);
            let before = *cpu.banks.borrow();
                let mut traps = controls(false);
            let mut ctx = guest(MDSCR_MDE | MDSCR_KDE);
            let saved = load_guest(&cpu, &mut traps, &ctx);
            assert_eq!(traps.mdcr & mdcr::TDA, 0, "untrapped from entry");
            assert_eq!(cpu.pmcnten.get(), 0b1011, "a non-protected run keeps the host's counters");
            {
                let banks = cpu.banks.borrow();
                for (k, bank) in banks.iter().enumerate() {
                    let count = if k < 2 { slots.0 } else { slots.1 };
                    for (n, v) in bank.iter().enumerate() {
                        let want = if n < count { 0x6E57_0000 + (k as u64) * 0x100 + n as u64 } else { before[k][n] };
                        assert_eq!(*v, want, "{slots:?}: bank {k} register {n} while the guest runs");
                    }
                }
            }
            // The guest changes a breakpoint and steps; put keeps both and gives the host its own.
            cpu.banks.borrow_mut()[0][1] = 0xABCD;
            cpu.mdscr.set(MDSCR_MDE | MDSCR_KDE | MDSCR_SS);
            put(&cpu, &mut ctx, &saved);
            assert_eq!(*cpu.banks.borrow(), before, "{slots:?}: every host register back");
            assert_eq!((ctx.debug.bvr[1], ctx.debug.mdscr & MDSCR_SS), (0xABCD, MDSCR_SS));
            for n in slots.0..DEBUG_SLOTS {
                assert_eq!(ctx.debug.bvr[n], 0x6E57_0000 + n as u64, "{slots:?}: breakpoint {n}, past the CPU's, keeps the guest's copy");
            }
        }
    }

    #[test]
    fn a_first_access_makes_the_registers_live_and_the_os_lock_takes_them_back() {
        let cpu = FakeCpu::host((6, 4));
        let before = *cpu.banks.borrow();
        let mut traps = controls(true);
        let mut ctx = guest(0);
        let mut saved = load_guest(&cpu, &mut traps, &ctx);
        sync(&cpu, &mut ctx, &mut saved, false);
        assert!(cpu.writes.borrow().is_empty() && cpu.mdcr.get().is_none(), "not live yet: nothing moves");
        sync(&cpu, &mut ctx, &mut saved, true);
        assert_eq!(cpu.mdcr.get(), Some(0x20), "MDCR_EL2 without TDA");
        assert_eq!(cpu.banks.borrow()[3][3], 0x6E57_0303);
        sync(&cpu, &mut ctx, &mut saved, true);
        // Live, the guest turns its events on in the CPU (untrapped; its copy stays stale) and
        // reads OSLSR_EL1 (still trapped, no use of breakpoints): the registers stay live.
        let writes = cpu.writes.borrow().len();
        cpu.mdscr.set(MDSCR_MDE | MDSCR_KDE);
        sync(&cpu, &mut ctx, &mut saved, false);
        assert_eq!(cpu.writes.borrow().len(), writes, "no register moves: the host's stay out");
        assert_eq!(cpu.banks.borrow()[0][0], 0x6E57_0000);
        // The guest locks its OS lock: registers go back, trapped again, events off.
        ctx.debug.oslk = true;
        ctx.debug.mdscr = MDSCR_MDE | MDSCR_KDE;
        cpu.mdscr.set(MDSCR_MDE | MDSCR_KDE);
        sync(&cpu, &mut ctx, &mut saved, false);
        assert_eq!(*cpu.banks.borrow(), before);
        assert_eq!((cpu.mdcr.get(), cpu.mdscr.get()), (Some(mdcr::TDA | 0x20), 0));
        put(&cpu, &mut ctx, &saved);
        assert_eq!(*cpu.banks.borrow(), before, "put of a run no longer live moves nothing more");
        assert_eq!((cpu.mdscr.get(), cpu.pmcnten.get(), cpu.trfcr.get()), (0x8000, 0b1011, 0x5));
    }
}
