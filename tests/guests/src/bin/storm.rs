//! Hostile guests for the device VMs (host scenario `storm`, `el1-host/src/storm.rs`): a VM
//! with the GIC distributor, redistributors, PL011 and timers of `vmm::linux`, where the
//! guest's kind comes from its command line (`/chosen/bootargs`, `storm=KIND`):
//!
//! - `count` (`count=N`): the well-behaved neighbour. It enables PPI 27 in its redistributor
//!   and takes N virtual-timer interrupts, each armed 1 ms ahead and waited for in `WFI`,
//!   acknowledging (`ICC_IAR1_EL1`) and ending (`ICC_EOIR1_EL1`) each, then powers off;
//! - `sgi`: every vCPU writes the SGI generation registers (`ICC_SGI1R_EL1`, `ICC_ASGI1R_EL1`,
//!   `ICC_SGI0R_EL1`) in a tight loop, to every vCPU, to vCPUs that do not exist (target-list
//!   bits, `Aff1..3`, `RS`), with `IRM`, and with any value; now and then it takes what
//!   arrived and flips its SGIs' enables;
//! - `timer`: vCPU 0 arms its virtual timer in the past and never handles it, re-arming it
//!   without end, in phases: plain; enabling and disabling PPI 27 in its redistributor on
//!   every round (MMIO exits); toggling `CNTV_CTL_EL0.IMASK`; with `PSTATE.I` clear, taking
//!   the interrupt in a handler that never acknowledges it. vCPU 1 does the same with the EL1
//!   physical timer (every access trapped and emulated by EL2) and PPI 30;
//! - `gic`: random loads and stores (any offset, size 1, 2, 4 or 8, any value) to the
//!   distributor, the redistributors (and the frames of vCPUs that do not exist), the UART and
//!   just past each; the alignment faults they cause are the guest's own, skipped;
//! - `masked`: every vCPU masks its interrupts (`PSTATE.DAIF`) and branches to itself;
//! - `onoff`: vCPU 1 makes MMIO exits and powers itself off (PSCI `CPU_OFF`), vCPU 0 powers
//!   it on again, without end: its exit statistics must survive each `CPU_ON`;
//! - `aborts`: every vCPU loads from, stores to and branches to addresses that are neither
//!   RAM nor a device (64 below RAM, 16 above it), each an external abort for the guest (the
//!   VMM declines the loads and stores, EL2 answers the fetches), which its vectors handle and
//!   go on; vCPU 0 first makes one pass alone and checks that it took exactly one abort per
//!   access, then starts the others and all repeat without end;
//! - `debug`: every vCPU clears its OS lock, enables breakpoint and watchpoint events at its
//!   own exception level (`MDSCR_EL1.MDE`, `KDE`) and programs every breakpoint and watchpoint
//!   its ID registers give it on EL2's addresses (its image and stacks, its UART, the top of the
//!   address space), matching at every exception level it may name (`HMC`, `SSC`, `PMC` all
//!   set), and random values, then makes exits (MMIO, ID register reads, `PSCI_VERSION`) and
//!   programs them again, without end. EL2 must take no debug exception; one the guest takes
//!   itself (a slot matching its own access) turns its events off in the vectors, and it goes
//!   on;
//! - `cvalmax`: every vCPU enables its virtual timer with `CNTV_CVAL_EL0` = all-ones, a legal
//!   "never", and spins. Under a non-zero `CNTVOFF_EL2` QEMU 7.2's timer computes
//!   `CVAL + CNTVOFF` wrapped into the past and re-arms itself for ever: the whole machine
//!   stops (scenario `guest-storm-cval-max`, off by default).
//!
//! None of the storms ends by itself: the host stops the VM after its time limit.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guests::gic::{self, write32, GICD, GICD_CTLR_ENABLE_GRP1, GICR, GICR_ICENABLER0, GICR_ISENABLER0, GICR_SGI_BASE, GICR_STRIDE};
use guests::println;

guests::entry!(main, secondary);

/// The virtual and the EL1 physical timers' PPIs.
const VTIMER_INTID: u32 = 27;
const PTIMER_INTID: u32 = 30;
/// An address with nothing behind it in the device VM: every access is an MMIO exit the VMM
/// answers with an external abort, which the vectors skip.
const UNASSIGNED: u64 = 0x0b00_0000;

/// The storms, as named on the command line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count(u64),
    Sgi,
    Timer,
    Gic,
    Masked,
    OnOff,
    CvalMax,
    Aborts,
    Debug,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Count(_) => "count",
            Kind::Sgi => "sgi",
            Kind::Timer => "timer",
            Kind::Gic => "gic",
            Kind::Masked => "masked",
            Kind::OnOff => "onoff",
            Kind::CvalMax => "cvalmax",
            Kind::Aborts => "aborts",
            Kind::Debug => "debug",
        }
    }
}

/// The kind, for the secondary vCPUs (written by vCPU 0 before it starts them).
static KIND: AtomicU64 = AtomicU64::new(0);
/// Synchronous exceptions the guest took and skipped (alignment faults and external aborts of
/// the GIC storm).
#[no_mangle]
static STORM_SYNC: AtomicU64 = AtomicU64::new(0);
/// Debug exceptions (breakpoint, step, watchpoint) the guest took at its own level.
#[no_mangle]
static STORM_DEBUG: AtomicU64 = AtomicU64::new(0);
/// Interrupts the guest took without acknowledging them.
#[no_mangle]
static STORM_IRQS: AtomicU64 = AtomicU64::new(0);

// EL1 vectors. A synchronous exception from the current EL (SPx) is counted and skipped: an
// instruction abort (EC 0x21: the `aborts` storm's `BLR` to an address with nothing there)
// returns to the link register; a breakpoint, software step or watchpoint (EC 0x31, 0x33,
// 0x35: the `debug` storm) turns MDSCR_EL1's debug events off and retries the instruction;
// anything else returns past the faulting 4-byte load or store. An IRQ
// or FIQ is counted and returned from with PSTATE.I and F set, never acknowledged; anything
// else stops the VM.
core::arch::global_asm!(
    r#"
.section .text, "ax"
.balign 2048
storm_vectors:
    .rept 4
    .balign 0x80
    b storm_bad_vector
    .endr
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    adrp x0, STORM_SYNC
    add x0, x0, :lo12:STORM_SYNC
    ldr x1, [x0]
    add x1, x1, #1
    str x1, [x0]
    mrs x0, esr_el1
    lsr x0, x0, #26
    cmp x0, #0x21
    b.ne 3f
    msr elr_el1, x30
    b 2f
3:  sub x1, x0, #0x31
    cmp x1, #4
    b.hi 1f
    tbnz x1, #0, 1f
    mrs x0, mdscr_el1
    mov x1, #0xa001
    bic x0, x0, x1
    msr mdscr_el1, x0
    adrp x0, STORM_DEBUG
    add x0, x0, :lo12:STORM_DEBUG
    ldr x1, [x0]
    add x1, x1, #1
    str x1, [x0]
    b 2f
1:  mrs x0, elr_el1
    add x0, x0, #4
    msr elr_el1, x0
2:  ldp x0, x1, [sp], #16
    eret
    .rept 2
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    adrp x0, STORM_IRQS
    add x0, x0, :lo12:STORM_IRQS
    ldr x1, [x0]
    add x1, x1, #1
    str x1, [x0]
    mrs x0, spsr_el1
    orr x0, x0, #0xc0
    msr spsr_el1, x0
    ldp x0, x1, [sp], #16
    eret
    .endr
    .rept 9
    .balign 0x80
    b storm_bad_vector
    .endr
storm_bad_vector:
    mrs x0, esr_el1
    bl storm_unexpected
"#
);

extern "C" {
    fn storm_vectors();
}

#[no_mangle]
extern "C" fn storm_unexpected(esr: u64) -> ! {
    guests::fail(format_args!("unexpected exception, ESR_EL1 {esr:#x}"))
}

fn install_vectors() {
    // SAFETY: this guest's own vectors, which only touch the counters above, ELR_EL1 and
    // SPSR_EL1.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) storm_vectors as *const () as u64, options(nostack)) };
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Makes vCPU `me`'s interrupts group 1, wakes its redistributor, enables the private
/// interrupts in `enable` (bit n = INTID n) and the distributor's group 1, and opens its
/// virtual CPU interface (priority mask 0xFF, group 1 enabled). `PSTATE.I` stays as it is.
fn gic_init(me: u64, enable: u32) {
    write32(GICD, GICD_CTLR_ENABLE_GRP1);
    gic::redistributor_on(me, u32::MAX, enable);
    gic::cpu_interface_on();
}

/// Enables (`on`) or disables private interrupt `intid` in vCPU `me`'s redistributor.
fn ppi_enable(me: u64, intid: u32, on: bool) {
    let rd = GICR + me * GICR_STRIDE + GICR_SGI_BASE;
    write32(rd + if on { GICR_ISENABLER0 } else { GICR_ICENABLER0 }, 1 << intid);
}

/// Arms the virtual timer `ticks` from now (`CNTV_TVAL_EL0`, `CNTV_CTL_EL0` = ENABLE).
fn vtimer_in(ticks: u64) {
    // SAFETY: this vCPU's own virtual timer.
    unsafe { asm!("msr cntv_tval_el0, {t}", "msr cntv_ctl_el0, {one}", "isb", t = in(reg) ticks, one = in(reg) 1u64, options(nostack)) };
}

fn vtimer_off() {
    // SAFETY: this vCPU's own virtual timer.
    unsafe { asm!("msr cntv_ctl_el0, xzr", "isb", options(nostack)) };
}

fn main(dtb: u64) {
    install_vectors();
    // SAFETY: the device tree the host wrote at the top of this VM's RAM (x0 at entry).
    let tree = (dtb != 0).then(|| unsafe { fdt::Fdt::from_ptr(dtb as *const u8) }.ok()).flatten();
    let Some(tree) = tree else { guests::fail(format_args!("no device tree")) };
    let args = tree.chosen().bootargs().unwrap_or("");
    let arg = |key: &str| args.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
    let kind = match arg("storm") {
        Some("count") => Kind::Count(arg("count").and_then(|n| n.parse().ok()).unwrap_or(100)),
        Some("sgi") => Kind::Sgi,
        Some("timer") => Kind::Timer,
        Some("gic") => Kind::Gic,
        Some("masked") => Kind::Masked,
        Some("onoff") => Kind::OnOff,
        Some("cvalmax") => Kind::CvalMax,
        Some("aborts") => Kind::Aborts,
        Some("debug") => Kind::Debug,
        other => guests::fail(format_args!("unknown storm {other:?} (bootargs {args:?})")),
    };
    let vcpus = tree.cpus().count() as u64;
    KIND.store(
        match kind {
            Kind::Count(_) => 0,
            Kind::Sgi => 1,
            Kind::Timer => 2,
            Kind::Gic => 3,
            Kind::Masked => 4,
            Kind::OnOff => 5,
            Kind::CvalMax => 6,
            Kind::Aborts => 7,
            Kind::Debug => 8,
        },
        Ordering::SeqCst,
    );
    if let Kind::Count(n) = kind {
        return count(n);
    }
    println!("guest: storm {}: {vcpus} vCPU(s), until the host stops the VM", kind.name());
    if kind == Kind::Aborts {
        let ram = tree.memory().regions().next().map_or((0, 0), |r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
        RAM_END.store(ram.0 + ram.1, Ordering::SeqCst);
        let before = STORM_SYNC.load(Ordering::SeqCst);
        let accesses = abort_pass();
        let taken = STORM_SYNC.load(Ordering::SeqCst) - before;
        if taken != accesses {
            guests::fail(format_args!("storm aborts: {accesses} accesses outside RAM and devices, {taken} aborts taken"));
        }
        println!("guest: ok: {accesses} accesses outside RAM and devices (loads, stores, fetches), each an abort the guest handled");
    }
    if kind != Kind::OnOff {
        for v in 1..vcpus {
            if guests::cpu_on(v).is_err() {
                guests::fail(format_args!("CPU_ON of vCPU {v} refused"));
            }
        }
    }
    storm(kind, 0, vcpus);
}

fn secondary(index: u64) {
    install_vectors();
    let kind = match KIND.load(Ordering::SeqCst) {
        1 => Kind::Sgi,
        2 => Kind::Timer,
        3 => Kind::Gic,
        4 => Kind::Masked,
        6 => Kind::CvalMax,
        7 => Kind::Aborts,
        8 => Kind::Debug,
        _ => Kind::OnOff,
    };
    storm(kind, index, 0);
}

/// The well-behaved neighbour: `n` virtual-timer interrupts, 1 ms apart, each waited for in
/// `WFI` with `PSTATE.I` set (the interrupt wakes the `WFI`, the guest then acknowledges it).
fn count(n: u64) {
    gic_init(0, 1 << VTIMER_INTID);
    let ms = gic::cntfrq() / 1000;
    let start = gic::cntvct();
    let mut longest = 0;
    for round in 0..n {
        let t0 = gic::cntvct();
        vtimer_in(ms);
        let mut spurious = 0u64;
        loop {
            guests::relax();
            match gic::ack() {
                VTIMER_INTID => break,
                1020..=1023 => {
                    spurious += 1;
                    if spurious > 1_000_000 {
                        guests::fail(format_args!("round {round}: the timer interrupt never came"));
                    }
                }
                other => guests::fail(format_args!("round {round}: interrupt {other}, expected {VTIMER_INTID}")),
            }
        }
        // Lower the timer's output before ending the interrupt, or its level makes it pending
        // again at once.
        vtimer_off();
        gic::eoi(VTIMER_INTID);
        let waited = gic::cntvct().wrapping_sub(t0);
        if waited < ms {
            guests::fail(format_args!("round {round}: the interrupt came after {waited} ticks, before the 1 ms ({ms} ticks) it was armed for"));
        }
        longest = longest.max(waited);
    }
    let total_ms = gic::cntvct().wrapping_sub(start) / ms.max(1);
    println!("guest: ok: counted {n} virtual-timer interrupts 1 ms apart in {total_ms} ms (longest wait {} us)", longest * 1000 / ms.max(1));
}

/// vCPU `me` storms; `vcpus` is the VM's vCPU count as vCPU 0 read it (0 elsewhere).
fn storm(kind: Kind, me: u64, vcpus: u64) -> ! {
    match kind {
        Kind::Sgi => sgi_storm(me),
        Kind::Timer if me == 0 => vtimer_storm(),
        Kind::Timer => ptimer_storm(me),
        Kind::Gic => gic_storm(me),
        Kind::OnOff if me == 0 => onoff_vcpu0(vcpus),
        Kind::OnOff => onoff_vcpu1(),
        Kind::Aborts => loop {
            abort_pass();
        },
        Kind::Debug => debug_storm(me),
        Kind::CvalMax => {
            // SAFETY: this vCPU's own virtual timer: enabled, compare value all-ones.
            unsafe { asm!("msr cntv_cval_el0, {m}", "msr cntv_ctl_el0, {one}", "isb", m = in(reg) u64::MAX, one = in(reg) 1u64, options(nostack)) };
            loop {
                core::hint::spin_loop();
            }
        }
        // Masked, and anything else: no exit ever.
        _ => {
            // SAFETY: masks this vCPU's interrupts and loops; touches no memory.
            unsafe { asm!("msr daifset, #0xf", "2: b 2b", options(noreturn, nomem, nostack)) }
        }
    }
}

/// Defines `$write(n, v)` for `DBG<kind>R<n>_EL1`, each `n` its own instruction.
macro_rules! debug_bank {
    ($write:ident, $name:literal) => {
        debug_bank!($write, $name, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    };
    ($write:ident, $name:literal, [$($i:literal),*]) => {
        fn $write(n: u64, v: u64) {
            match n {
                // SAFETY: this vCPU's own debug register (`n` within its ID registers' count).
                $( $i => unsafe { asm!(concat!("msr ", $name, $i, "_el1, {}"), in(reg) v, options(nostack)) }, )*
                _ => {}
            }
        }
    };
}
debug_bank!(write_bvr, "dbgbvr");
debug_bank!(write_bcr, "dbgbcr");
debug_bank!(write_wvr, "dbgwvr");
debug_bank!(write_wcr, "dbgwcr");

/// The `debug` storm.
fn debug_storm(me: u64) -> ! {
    let dfr0: u64;
    // SAFETY: an ID register read (trapped and answered by EL2).
    unsafe { asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
    let (brps, wrps) = ((dfr0 >> 12) & 0xF, (dfr0 >> 20) & 0xF);
    // EL2's image and stacks, its UART, the top of the address space, the bottom.
    const TARGETS: [u64; 5] = [0x4020_0000, 0x4080_0000, 0x0900_0000, 0xFFFF_FFFF_FFFF_F000, 0];
    let mut rng = Rng(0xDEB6_0000_0000_0001 ^ (me + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // SAFETY: clears this vCPU's OS lock (OSLAR_EL1 = 0).
    unsafe { asm!("msr oslar_el1, xzr", "isb", options(nostack)) };
    let mut round = 0u64;
    loop {
        for n in 0..=brps {
            let r = rng.next();
            let addr = if round % 4 == 3 { r } else { TARGETS[((n + round) % 5) as usize] };
            write_bvr(n, addr);
            // E, PMC = 0b11, BAS = 0b1111, HMC, SSC = 0b11; or anything.
            write_bcr(n, if round % 4 == 3 { rng.next() } else { 1 | 0b11 << 1 | 0xF << 5 | 1 << 13 | 0b11 << 14 });
        }
        for n in 0..=wrps {
            let r = rng.next();
            let addr = if round % 4 == 3 { r } else { TARGETS[((n + round + 2) % 5) as usize] };
            write_wvr(n, addr);
            // E, PAC = 0b11, LSC = 0b11 (loads and stores), BAS = all eight bytes, HMC, SSC.
            write_wcr(n, if round % 4 == 3 { rng.next() } else { 1 | 0b11 << 1 | 0b11 << 3 | 0xFF << 5 | 1 << 13 | 0b11 << 14 });
        }
        // SAFETY: MDSCR_EL1.MDE and KDE: this vCPU's own debug events; the vectors handle any
        // it takes.
        unsafe { asm!("mrs {t}, mdscr_el1", "orr {t}, {t}, #0x8000", "orr {t}, {t}, #0x2000", "msr mdscr_el1, {t}", "isb", t = out(reg) _, options(nostack)) };
        for _ in 0..16 {
            // SAFETY: an MMIO load the host emulates (UARTFR), and an ID register read.
            let _ = unsafe { core::ptr::read_volatile((guests::UART + 0x18) as *const u32) };
            unsafe { asm!("mrs {}, id_aa64mmfr0_el1", out(reg) _, options(nomem, nostack)) };
            let _ = guests::psci_version();
        }
        round += 1;
    }
}

/// The end of the VM's RAM (from its device tree), for the `aborts` storm.
static RAM_END: AtomicU64 = AtomicU64::new(0);

/// One pass of the `aborts` storm: a load, a store and a branch to each of 64 addresses below
/// RAM (16 MiB apart, 8 MiB into each: clear of the GIC, the PL011 and the virtio frames) and
/// 16 above it. Returns the accesses made, each of which must be an abort.
fn abort_pass() -> u64 {
    let below = (0..64u64).map(|k| k * (16 << 20) + (8 << 20));
    let end = RAM_END.load(Ordering::Relaxed);
    let above = (0..16u64).map(|k| end + k * (16 << 20) + (8 << 20));
    let mut n = 0;
    for addr in below.chain(above) {
        // SAFETY: nothing is at `addr`: each access is an external abort, which the vectors
        // skip (the load and store) or return from to the link register (the branch); no
        // memory of this guest changes.
        unsafe {
            asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack));
            asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) 0xA5A5_A5A5u32, options(nostack));
            asm!("blr {a}", a = in(reg) addr, out("x30") _, clobber_abi("C"), options(nostack));
        }
        n += 3;
    }
    n
}

/// Every SGI register, every target form, in a tight loop.
fn sgi_storm(me: u64) -> ! {
    gic_init(me, 0xFFFF);
    let mut enabled = true;
    let mut i: u64 = 0;
    loop {
        let intid = i & 15;
        let v = match (i >> 4) & 7 {
            // The target list of every Aff0: this VM's vCPUs and 14 or so that do not exist.
            0 => intid << 24 | 0xFFFF,
            // IRM: every vCPU but the sender.
            1 => intid << 24 | 1 << 40,
            // Aff1, Aff2, Aff3, RS: affinities no vCPU has.
            2 => intid << 24 | 1 << 16 | 3,
            3 => intid << 24 | 0xFF << 32 | 3,
            4 => intid << 24 | 0xFF << 48 | 3,
            5 => intid << 24 | 0xF << 44 | 3,
            // To itself.
            6 => intid << 24 | 1 << me,
            // Any value at all.
            _ => i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        // SAFETY: writes of the SGI generation registers, which trap to EL2 (an SGI exit).
        unsafe {
            match i % 3 {
                0 => asm!("msr S3_0_C12_C11_5, {}", in(reg) v, options(nostack)),
                1 => asm!("msr S3_0_C12_C11_6, {}", in(reg) v, options(nostack)),
                _ => asm!("msr S3_0_C12_C11_7, {}", in(reg) v, options(nostack)),
            }
        }
        if i % 1024 == 1023 {
            // Take what has arrived (each end is a deactivation the host hears of), then flip
            // the SGIs' enables.
            for _ in 0..32 {
                let id = gic::ack();
                if id >= 1020 {
                    break;
                }
                gic::eoi(id);
            }
            enabled = !enabled;
            write32(GICR + me * GICR_STRIDE + GICR_SGI_BASE + if enabled { GICR_ISENABLER0 } else { GICR_ICENABLER0 }, 0xFFFF);
        }
        i = i.wrapping_add(1);
    }
}

/// Rounds per phase of the timer storms.
const PHASE: u64 = 4096;

/// The virtual timer armed in the past and never handled, re-armed without end.
fn vtimer_storm() -> ! {
    gic_init(0, 1 << VTIMER_INTID);
    let mut i: u64 = 0;
    loop {
        let phase = (i / PHASE) % 4;
        // In the past: CVAL 0, or a count already gone by.
        let cval = if i & 1 == 0 { 0 } else { gic::cntvct().wrapping_sub(i & 0xFFFF) };
        // IMASK toggled in phase 2, else ENABLE alone.
        let ctl: u64 = if phase == 2 && i & 1 == 1 { 3 } else { 1 };
        // SAFETY: this vCPU's own virtual timer (not trapped: switched with the vCPU).
        unsafe { asm!("msr cntv_cval_el0, {c}", "msr cntv_ctl_el0, {t}", "isb", c = in(reg) cval, t = in(reg) ctl, options(nostack)) };
        if phase == 2 && i & 2 == 0 {
            // A negative TVAL: in the past too.
            // SAFETY: as above.
            unsafe { asm!("msr cntv_tval_el0, {}", in(reg) (-((i & 0xFFF) as i64)) as u64, options(nostack)) };
        }
        match phase {
            1 => ppi_enable(0, VTIMER_INTID, i & 1 == 0),
            3 => unmasked_moment(),
            _ => {}
        }
        i = i.wrapping_add(1);
    }
}

/// The EL1 physical timer (every access trapped and emulated by EL2), the same way.
fn ptimer_storm(me: u64) -> ! {
    gic_init(me, 1 << PTIMER_INTID);
    let mut i: u64 = 0;
    loop {
        let phase = (i / PHASE) % 4;
        let cval = if i & 1 == 0 { 0 } else { gic::cntvct().wrapping_sub(i & 0xFFFF) };
        let ctl: u64 = if phase == 2 && i & 1 == 1 { 3 } else { 1 };
        // SAFETY: the EL1 physical timer, which EL2 emulates for this vCPU.
        unsafe { asm!("msr cntp_cval_el0, {c}", "msr cntp_ctl_el0, {t}", c = in(reg) cval, t = in(reg) ctl, options(nostack)) };
        if phase == 2 && i & 2 == 0 {
            // SAFETY: as above.
            unsafe { asm!("msr cntp_tval_el0, {}", in(reg) (-((i & 0xFFF) as i64)) as u64, options(nostack)) };
        }
        match phase {
            1 => ppi_enable(me, PTIMER_INTID, i & 1 == 0),
            3 => unmasked_moment(),
            _ => {}
        }
        i = i.wrapping_add(1);
    }
}

/// Clears `PSTATE.I` for a moment: a pending virtual interrupt is taken by the vectors, which
/// return with it set again, never acknowledging anything.
fn unmasked_moment() {
    // SAFETY: the vectors handle (count) the interrupt and return with I and F set.
    unsafe { asm!("msr daifclr, #2", "isb", "nop", "msr daifset, #2", options(nostack)) };
}

/// One load or store of `size` bytes at `addr` (a store writes `value`).
fn access(addr: u64, size: u64, store: bool, value: u64) {
    // SAFETY: device addresses of this VM (the host emulates them, or answers with an external
    // abort); an unaligned access takes an alignment fault. The vectors skip both. Nothing is
    // RAM.
    unsafe {
        match (size, store) {
            (1, false) => asm!("ldrb {v:w}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack)),
            (2, false) => asm!("ldrh {v:w}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack)),
            (4, false) => asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack)),
            (_, false) => asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack)),
            (1, true) => asm!("strb {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)),
            (2, true) => asm!("strh {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)),
            (4, true) => asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)),
            (_, true) => asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)),
        }
    }
}

/// Random accesses to the GIC's frames, the UART and just past each.
fn gic_storm(me: u64) -> ! {
    let mut rng = Rng(0x5EED_0000_0000_0001 ^ (me + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    loop {
        let r = rng.next();
        let offset = (r >> 8) & 0xFFFF;
        let addr = match r % 8 {
            0..=2 => GICD + offset,
            // Four redistributors' worth: two vCPUs' and two that do not exist.
            3..=5 => GICR + ((r >> 8) % (4 * GICR_STRIDE)),
            6 => guests::UART + (offset & 0xFFF),
            _ => [GICD + 0x1_0000, GICR + 8 * GICR_STRIDE, guests::UART + 0x1000, UNASSIGNED][(offset & 3) as usize] + ((offset >> 2) & 0xFF),
        };
        let size = 1 << ((r >> 40) & 3);
        access(addr, size, (r >> 42) & 1 != 0, rng.next());
    }
}

/// vCPU 0 of `onoff`: powers vCPU 1 on whenever it is off, and waits 100 us between tries
/// for its virtual timer's interrupt (a `WFI` with nothing enabled to end it would sleep for
/// ever, as on hardware).
fn onoff_vcpu0(vcpus: u64) -> ! {
    if vcpus < 2 {
        guests::fail(format_args!("onoff needs 2 vCPUs"));
    }
    gic_init(0, 1 << VTIMER_INTID);
    let tick = gic::cntfrq() / 10_000;
    loop {
        let _ = guests::cpu_on(1);
        vtimer_in(tick);
        while gic::ack() != VTIMER_INTID {
            guests::relax();
        }
        vtimer_off();
        gic::eoi(VTIMER_INTID);
    }
}

/// vCPU 1 of `onoff`: 64 MMIO exits (the PL011's flag register), then off.
fn onoff_vcpu1() -> ! {
    for _ in 0..64 {
        // SAFETY: an MMIO load the host emulates.
        let _ = unsafe { core::ptr::read_volatile((guests::UART + 0x18) as *const u32) };
    }
    guests::cpu_off()
}
