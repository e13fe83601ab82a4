//! Interrupt benchmark guest, for the Linux-style VM (`scenario=linux`: the host's GICv3
//! distributor and redistributor model, its timers and PL011), so the measured path is the one
//! a Linux guest's interrupts take. `cargo xtask bench` boots it once per row and reads the
//! `bench:` line it prints.
//!
//! The row comes from the device tree's `/chosen/bootargs` (the VM's command line):
//! `irqbench=MODE bench-key=KEY [n=N] [ahead=TICKS]`, MODE one of
//! - `sgi`: vCPU 0 sends SGI [`PING`] to vCPU 1 (`ICC_SGI1R_EL1`, an exit to the host), whose
//!   handler sends SGI [`PONG`] back; a sample is vCPU 0's counter from before its write to its
//!   handler's entry (needs 2 vCPUs);
//! - `vtimer-wfi`, `vtimer-busy`: vCPU 0 sets its virtual timer (`CNTV_CVAL_EL0`) `ahead`
//!   ticks ahead and waits in `WFI` (an exit: the host sleeps until the deadline) or in a loop
//!   that makes no exit; a sample is the handler's entry (PPI 27) minus the deadline;
//! - `ptimer-wfi`, `ptimer-busy`: the same with the EL1 physical timer (`CNTP_*`, emulated by
//!   EL2, PPI 30), measured on `CNTPCT_EL0`;
//! - `mmio`, `uart-fr`: one MMIO read that exits to this VMM: of the virtio-console transport's
//!   `DeviceID` (what kvm-unit-tests' `mmio_read_user` reads at the same address on QEMU's
//!   `virt`), and of the PL011's flag register (what a console driver polls before every
//!   character).
//!
//! Samples are printed in ns of counter time: under QEMU `-icount shift=0` one instruction is
//! one ns, so they count the instructions every CPU retired meanwhile (the counter ticks every
//! 16). Nothing needs the PMU, so the VM may be protected.
//!
//! Waiting is race-free without a flag: IRQs are unmasked only inside [`irqbench_wait`], and
//! a handler that wants the wait over returns to [`irqbench_resume`] instead of the
//! interrupted instruction.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guests::{gic, println};
use shared_abi::bench::Stats;

guests::entry!(main, secondary);

/// The SGI vCPU 0 sends (and vCPU 1 answers).
const PING: u32 = 1;
/// The answer, and vCPU 1's "ready".
const PONG: u32 = 2;
/// The virtual timer's PPI.
const VTIMER: u32 = 27;
/// The EL1 physical timer's PPI.
const PTIMER: u32 = 30;


/// Most samples, and the first ones dropped (first touches of the guest's pages, the host
/// queueing the vCPU for the first time).
const MAX_N: usize = 2000;
const WARMUP: usize = 16;

/// The virtio-console transport's `DeviceID` register (the VMM's virtio model answers 3), and
/// `UARTFR`. (An address no device answers is an external abort for the guest.)
const VIRTIO_DEVICE_ID: u64 = 0x0a00_0008;
const UART_FR: u64 = guests::UART + 0x18;

/// `CNTV_CTL_EL0` / `CNTP_CTL_EL0.ENABLE` (IMASK clear).
const TIMER_ENABLE: u64 = 1;

static mut SAMPLES: [u64; MAX_N] = [0; MAX_N];

/// The counters at the last handler's entry (virtual, physical).
static ENTRY_VCT: AtomicU64 = AtomicU64::new(0);
static ENTRY_PCT: AtomicU64 = AtomicU64::new(0);
/// The INTID the last handler that ended a wait took.
static TAKEN: AtomicU64 = AtomicU64::new(0);
/// vCPU 1 answers PINGs.
static RESPONDER: AtomicBool = AtomicBool::new(false);

// EL1 vectors: an IRQ from the current EL (SPx) reads both counters first, then calls
// `irqbench_irq`; if it returns non-zero the interrupted wait is over and the handler returns
// to `irqbench_resume`. Every other exception stops the VM.
core::arch::global_asm!(
    r#"
.section .text, "ax"
.balign 2048
irqbench_vectors:
    .rept 5
    .balign 0x80
    b irqbench_bad_vector
    .endr
    .balign 0x80
    b irqbench_irq_entry
    .rept 10
    .balign 0x80
    b irqbench_bad_vector
    .endr
irqbench_bad_vector:
    mrs x0, esr_el1
    bl irqbench_unexpected

irqbench_irq_entry:
    sub sp, sp, #176
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    // The counters first: the exception entry is context-synchronising, so they are not read
    // early.
    mrs x0, cntvct_el0
    mrs x1, cntpct_el0
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    str x30, [sp, #160]
    bl irqbench_irq
    cbz x0, 1f
    adrp x1, irqbench_resume
    add x1, x1, :lo12:irqbench_resume
    msr elr_el1, x1
1:  ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x29, [sp, #144]
    ldr x30, [sp, #160]
    add sp, sp, #176
    eret

// irqbench_wait(busy): unmasks IRQs and waits, in WFI (busy = 0) or in a loop without exits,
// until a handler ends the wait; returns with IRQs masked. Only here are IRQs unmasked.
.global irqbench_wait
irqbench_wait:
    msr daifclr, #2
    cbnz x0, 2f
1:  wfi
    b 1b
2:  b 2b
irqbench_resume:
    msr daifset, #2
    ret
"#
);

extern "C" {
    fn irqbench_vectors();
    fn irqbench_wait(busy: u64);
}

#[no_mangle]
extern "C" fn irqbench_unexpected(esr: u64) -> ! {
    guests::fail(format_args!("irqbench: unexpected exception, ESR_EL1 {esr:#x}"))
}

/// Waits (IRQs unmasked) until a handler ends the wait.
fn wait(busy: bool) {
    // SAFETY: the vectors are installed; the wait returns through `irqbench_resume` with the
    // caller's registers (the handler saved and restored them, x30 included).
    unsafe { irqbench_wait(busy as u64) };
}

#[no_mangle]
extern "C" fn irqbench_irq(vct: u64, pct: u64) -> u64 {
    let intid = gic::ack();
    if intid >= 1020 {
        return 0; // spurious: nothing to end
    }
    let leave = match intid {
        PING if RESPONDER.load(Ordering::Relaxed) => {
            gic::send_sgi(PONG, 1 << 0);
            false
        }
        VTIMER => {
            // Lower the line before the EOI (a level interrupt): the timer off.
            // SAFETY: this vCPU's own virtual timer.
            unsafe { core::arch::asm!("msr cntv_ctl_el0, xzr", "isb", options(nostack)) };
            true
        }
        PTIMER => {
            // SAFETY: this vCPU's own (emulated) EL1 physical timer.
            unsafe { core::arch::asm!("msr cntp_ctl_el0, xzr", "isb", options(nostack)) };
            true
        }
        _ => true,
    };
    gic::eoi(intid);
    if leave {
        ENTRY_VCT.store(vct, Ordering::Relaxed);
        ENTRY_PCT.store(pct, Ordering::Relaxed);
        TAKEN.store(intid as u64, Ordering::Relaxed);
    }
    leave as u64
}

/// This vCPU's part of the GIC: its redistributor awake, the SGIs and timer PPIs in Group 1 and
/// enabled, then its vectors and CPU interface (priority mask open, Group 1 on).
fn gic_init_cpu(vcpu: u64) {
    let mine = 1 << PING | 1 << PONG | 1 << VTIMER | 1 << PTIMER;
    gic::redistributor_on(vcpu, mine, mine);
    // SAFETY: this vCPU's own vectors (the ISB in `cpu_interface_on` makes them take effect
    // before IRQs are first unmasked).
    unsafe { core::arch::asm!("msr vbar_el1, {}", in(reg) irqbench_vectors as *const () as u64, options(nostack)) };
    gic::cpu_interface_on();
}

#[inline(always)]
fn cntpct() -> u64 {
    let v: u64;
    // SAFETY: reading the physical counter (CNTHCTL_EL2.EL1PCTEN is set for guests).
    unsafe { core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nostack)) };
    v
}

/// What the command line asks for.
struct Args<'a> {
    mode: &'a str,
    key: &'a str,
    n: usize,
    ahead: u64,
}

fn args(bootargs: &str) -> Args<'_> {
    let mut a = Args { mode: "", key: "", n: 1000, ahead: 1000 };
    for word in bootargs.split_whitespace() {
        match word.split_once('=') {
            Some(("irqbench", m)) => a.mode = m,
            Some(("bench-key", k)) => a.key = k,
            Some(("n", v)) => a.n = v.parse().unwrap_or(0),
            Some(("ahead", v)) => a.ahead = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    a
}

fn main(dtb: u64) {
    // SAFETY: x0 holds the device tree the host placed in guest RAM; from_ptr checks the
    // header before reading further.
    let tree = (dtb != 0).then(|| unsafe { fdt::Fdt::from_ptr(dtb as *const u8) }.ok()).flatten();
    let Some(tree) = tree else { guests::fail(format_args!("irqbench: no valid device tree in x0 ({dtb:#x})")) };
    let a = args(tree.chosen().bootargs().unwrap_or(""));
    if a.key.is_empty() || !(1..=MAX_N - WARMUP).contains(&a.n) || a.ahead == 0 {
        guests::fail(format_args!("irqbench: want irqbench=MODE bench-key=KEY n=1..{} ahead=TICKS", MAX_N - WARMUP));
    }
    gic::write32(gic::GICD, gic::GICD_CTLR_ENABLE_GRP1);
    gic_init_cpu(0);
    let total = a.n + WARMUP;
    // SAFETY: only vCPU 0 touches SAMPLES, and `measure` is not re-entered.
    let samples = unsafe { &mut (&mut *core::ptr::addr_of_mut!(SAMPLES))[..total] };
    match a.mode {
        "sgi" => {
            RESPONDER.store(true, Ordering::SeqCst);
            if guests::cpu_on(1).is_err() {
                guests::fail(format_args!("irqbench: CPU_ON of vCPU 1 failed (the VM needs 2 vCPUs)"));
            }
            // vCPU 1 says it is ready with a PONG.
            wait(false);
            for s in samples.iter_mut() {
                let t0 = gic::cntvct();
                gic::send_sgi(PING, 1 << 1);
                wait(false);
                check_taken(PONG);
                *s = ENTRY_VCT.load(Ordering::Relaxed).wrapping_sub(t0);
            }
        }
        "vtimer-wfi" | "vtimer-busy" => {
            for s in samples.iter_mut() {
                let deadline = gic::cntvct() + a.ahead;
                // SAFETY: this vCPU's virtual timer: compare value, then enabled and unmasked.
                unsafe { core::arch::asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) deadline, in(reg) TIMER_ENABLE, options(nostack)) };
                wait(a.mode == "vtimer-busy");
                check_taken(VTIMER);
                *s = ENTRY_VCT.load(Ordering::Relaxed).wrapping_sub(deadline);
            }
        }
        "ptimer-wfi" | "ptimer-busy" => {
            for s in samples.iter_mut() {
                let deadline = cntpct() + a.ahead;
                // SAFETY: this vCPU's EL1 physical timer (each access traps to EL2, which
                // emulates it).
                unsafe { core::arch::asm!("msr cntp_cval_el0, {}", "msr cntp_ctl_el0, {}", "isb", in(reg) deadline, in(reg) TIMER_ENABLE, options(nostack)) };
                wait(a.mode == "ptimer-busy");
                check_taken(PTIMER);
                *s = ENTRY_PCT.load(Ordering::Relaxed).wrapping_sub(deadline);
            }
        }
        "mmio" | "uart-fr" => {
            let addr = if a.mode == "mmio" { VIRTIO_DEVICE_ID } else { UART_FR };
            for s in samples.iter_mut() {
                let t0 = gic::cntvct();
                // SAFETY: an MMIO read the host emulates (an exit).
                unsafe { core::ptr::read_volatile(addr as *const u32) };
                *s = gic::cntvct().wrapping_sub(t0);
            }
        }
        other => guests::fail(format_args!("irqbench: unknown mode {other:?}")),
    }
    // Counter ticks to ns (= instructions under -icount shift=0).
    let freq = gic::cntfrq();
    let measured = &mut samples[WARMUP..];
    for s in measured.iter_mut() {
        *s = (*s as u128 * 1_000_000_000 / freq as u128) as u64;
    }
    let Some(st) = Stats::from_samples(measured) else { guests::fail(format_args!("irqbench: no samples")) };
    // Fixed-width figures: every run prints as many characters (each one an MMIO exit), so the
    // exit statistics of two runs differ by their rounds alone.
    println!("guest: irqbench {}: {:04} samples after {WARMUP} warm-up, counter at {freq} Hz", a.mode, a.n);
    println!("bench: {} n={:04} median={:010} min={:010} max={:010}", a.key, st.n, st.median, st.min, st.max);
}

/// The wait that just ended was ended by `intid`.
fn check_taken(intid: u32) {
    let t = TAKEN.load(Ordering::Relaxed);
    if t != intid as u64 {
        guests::fail(format_args!("irqbench: waited for INTID {intid}, woken by {t}"));
    }
}

/// vCPU 1: answers every PING with a PONG, from its handler, for ever.
fn secondary(index: u64) {
    gic_init_cpu(index);
    gic::send_sgi(PONG, 1 << 0);
    loop {
        wait(false);
    }
}
