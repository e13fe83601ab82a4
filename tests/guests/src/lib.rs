//! A minimal bare-metal EL1 runtime for the bundled guests.
//!
//! A guest runs with its MMU off. It prints through the PL011 the host emulates at
//! [`UART`], talks to the host's test device at [`TESTDEV`], and uses PSCI (through `HVC`,
//! which EL2 serves) to start vCPUs and power off. A guest that finds something wrong prints
//! `guest: FAIL: ...` and calls PSCI `SYSTEM_RESET`, which the host treats as a failure.
#![no_std]

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

/// The emulated PL011 (guest IPA).
pub const UART: u64 = 0x0900_0000;
/// The host's test device (guest IPA): a write hands the host a value, a read returns one.
pub const TESTDEV: u64 = 0x0b00_0000;
/// Base of guest RAM (IPA).
pub const RAM_BASE: u64 = 0x4000_0000;

/// Defines the entry points: `$main(dtb)` on vCPU 0, `$secondary(index)` on vCPUs started with
/// [`cpu_on`]. Both power the VM off if they return.
#[macro_export]
macro_rules! entry {
    ($main:path, $secondary:path) => {
        core::arch::global_asm!(
            r#"
.section .text.boot, "ax"
.global _start
_start:
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    mov x2, #0x4000
    add sp, x1, x2
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    str xzr, [x1], #8
    b 1b
2:  bl {main}
3:  wfi
    b 3b
.global guest_secondary_entry
guest_secondary_entry:
    and x0, x0, #7
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    add x3, x0, #1
    mov x2, #0x4000
    madd x1, x3, x2, x1
    mov sp, x1
    bl {secondary}
    b 3b
"#,
            main = sym __guest_main,
            secondary = sym __guest_secondary,
        );
        extern "C" fn __guest_main(dtb: u64) -> ! {
            $main(dtb);
            $crate::system_off()
        }
        extern "C" fn __guest_secondary(index: u64) -> ! {
            $secondary(index);
            $crate::cpu_off()
        }
    };
}

extern "C" {
    fn guest_secondary_entry();
    fn guest_vectors();
}

// EL1 vectors for probing: a synchronous exception from the current EL (SPx) records ESR_EL1
// in TRAPPED_ESR and resumes after the faulting instruction; anything else stops the VM.
core::arch::global_asm!(
    r#"
.section .text, "ax"
.balign 2048
.global guest_vectors
guest_vectors:
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mrs x0, esr_el1
    adrp x1, TRAPPED_ESR
    add x1, x1, :lo12:TRAPPED_ESR
    str x0, [x1]
    mrs x0, elr_el1
    add x0, x0, #4
    msr elr_el1, x0
    ldp x0, x1, [sp], #16
    eret
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    b guest_bad_vector
    .balign 0x80
    b guest_bad_vector
guest_bad_vector:
    mrs x0, esr_el1
    bl guest_unexpected_exception
"#
);

/// ESR_EL1 of the last exception caught by [`expect_undef`] (`u64::MAX`: none).
#[no_mangle]
static TRAPPED_ESR: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

#[no_mangle]
extern "C" fn guest_unexpected_exception(esr: u64) -> ! {
    fail(format_args!("unexpected exception in the guest, ESR_EL1 {esr:#x}"))
}

/// Installs the probing vectors (`VBAR_EL1`).
pub fn install_vectors() {
    // SAFETY: the vectors only touch TRAPPED_ESR and ELR_EL1, and return.
    unsafe {
        core::arch::asm!("msr vbar_el1, {}", "isb", in(reg) guest_vectors as *const () as u64, options(nostack));
    }
}

/// Runs `f` and returns the `ESR_EL1` of the synchronous exception it took, if any.
pub fn trapped(f: impl FnOnce()) -> Option<u64> {
    TRAPPED_ESR.store(u64::MAX, core::sync::atomic::Ordering::SeqCst);
    f();
    let e = TRAPPED_ESR.load(core::sync::atomic::Ordering::SeqCst);
    (e != u64::MAX).then_some(e)
}

/// Powers the VM off with an SMC instead of an HVC: if SMCs reached firmware this would power
/// the whole machine off.
pub fn system_off_smc() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        relax();
    }
}

/// Waits a moment for another vCPU. `WFI` traps to EL2 (`HCR_EL2.TWI`), which hands it to the
/// host as a WFx exit, so the host CPU is free to run the vCPU being waited for. Guests never
/// wait for another vCPU without exiting: until the host takes timer interrupts nothing can
/// preempt a spinning vCPU, and with more vCPUs than host CPUs it would keep its CPU for ever.
/// (Not `WFE`: QEMU 7.2's TCG runs `WFE` as a plain yield and never traps it, whatever
/// `HCR_EL2.TWE` says; a `WFE` wait loop hung the soak that way.)
pub fn relax() {
    // SAFETY: `wfi` only waits (here: traps to EL2); it touches no memory.
    unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
}

static PRINT_LOCK: AtomicBool = AtomicBool::new(false);

fn putc(c: u8) {
    // SAFETY: the host emulates a PL011 at UART; a write to UARTDR (offset 0) is an MMIO exit.
    unsafe { core::ptr::write_volatile(UART as *mut u32, c as u32) };
}

struct Uart;
impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putc);
        Ok(())
    }
}

/// Prints a line (whole lines are not interleaved between this guest's vCPUs).
pub fn print(args: fmt::Arguments<'_>) {
    while PRINT_LOCK.swap(true, Ordering::Acquire) {
        relax();
    }
    let _ = Uart.write_fmt(args);
    PRINT_LOCK.store(false, Ordering::Release);
}

/// `println!` for guests.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Hands `v` to the host's test device.
pub fn testdev_write(v: u64) {
    // SAFETY: an MMIO write to the host's test device.
    unsafe { core::ptr::write_volatile(TESTDEV as *mut u64, v) };
}

/// Reads a value from the host's test device.
pub fn testdev_read() -> u64 {
    // SAFETY: an MMIO read from the host's test device.
    unsafe { core::ptr::read_volatile(TESTDEV as *const u64) }
}

/// Starts vCPU `index` at the secondary entry point.
pub fn cpu_on(index: u64) -> Result<(), smccc::psci::Error> {
    smccc::psci::cpu_on::<smccc::Hvc>(index, guest_secondary_entry as *const () as u64, index)
}

/// `HVC #0` of an SMCCC call without arguments (`x0` = `function`): its `x0`. Only `x0` is
/// set; `x1..=x17` may change.
pub fn hvc_no_args(function: u32) -> u64 {
    let r: u64;
    // SAFETY: an SMCCC call to EL2, which changes at most x0..x17.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") function as u64 => r,
            out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _,
            out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    r
}

/// PSCI version as EL2 reports it.
pub fn psci_version() -> u64 {
    smccc::hvc64(smccc::psci::PSCI_VERSION, [0; 17])[0]
}

/// Powers this vCPU off.
pub fn cpu_off() -> ! {
    let _ = smccc::psci::cpu_off::<smccc::Hvc>();
    loop {
        relax();
    }
}

/// Powers the VM off.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Hvc>();
    loop {
        relax();
    }
}

/// Reports a failure and stops the VM with `SYSTEM_RESET` (the host treats it as a failure).
pub fn fail(args: fmt::Arguments<'_>) -> ! {
    print(format_args!("guest: FAIL: {args}\n"));
    let _ = smccc::psci::system_reset::<smccc::Hvc>();
    loop {
        relax();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(format_args!("panic: {info}"))
}

/// The GICv3 of the Linux-style VM (`el1-host/src/vmm/vgic.rs` places it; the host's model
/// answers every access as an MMIO exit) and the virtual CPU interface (`ICC_*`, served by the
/// list registers EL2 loads), for the guests that take interrupts: `vgic`, `irqbench`, `storm`.
pub mod gic {
    /// The distributor (IPA).
    pub const GICD: u64 = 0x0800_0000;
    /// The redistributors: one 128 KiB frame per vCPU (`RD_base`, then `SGI_base`).
    pub const GICR: u64 = 0x080A_0000;
    /// One redistributor's frames.
    pub const GICR_STRIDE: u64 = 0x2_0000;
    /// `SGI_base` within a redistributor.
    pub const GICR_SGI_BASE: u64 = 0x1_0000;
    /// `GICD_CTLR.EnableGrp1` (a single security state).
    pub const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1;
    /// `GICR_WAKER` (`RD_base`).
    pub const GICR_WAKER: u64 = 0x14;
    /// `GICR_IGROUPR0`, `GICR_ISENABLER0`, `GICR_ICENABLER0` (`SGI_base`).
    pub const GICR_IGROUPR0: u64 = 0x80;
    /// See [`GICR_IGROUPR0`].
    pub const GICR_ISENABLER0: u64 = 0x100;
    /// See [`GICR_IGROUPR0`].
    pub const GICR_ICENABLER0: u64 = 0x180;

    /// A 32-bit store to the GIC (an MMIO exit the host's model performs).
    pub fn write32(addr: u64, v: u32) {
        // SAFETY: an MMIO store to the VM's emulated GIC; nothing of the guest's is behind it.
        unsafe { core::ptr::write_volatile(addr as *mut u32, v) };
    }

    /// Wakes vCPU `vcpu`'s redistributor and sets its private interrupts' groups (`group1`,
    /// bit n = INTID n in Group 1) and enables (`enable`).
    pub fn redistributor_on(vcpu: u64, group1: u32, enable: u32) {
        let rd = GICR + vcpu * GICR_STRIDE;
        write32(rd + GICR_WAKER, 0);
        write32(rd + GICR_SGI_BASE + GICR_IGROUPR0, group1);
        write32(rd + GICR_SGI_BASE + GICR_ISENABLER0, enable);
    }

    /// Opens this vCPU's virtual CPU interface: `ICC_PMR_EL1` = 0xFF (nothing masked by
    /// priority) and `ICC_IGRPEN1_EL1` = 1. `PSTATE.I` stays as it is.
    pub fn cpu_interface_on() {
        // SAFETY: this vCPU's own virtual CPU interface registers; the ISB makes them take
        // effect before IRQs are next unmasked.
        unsafe {
            core::arch::asm!(
                "msr S3_0_C4_C6_0, {pmr}",
                "msr S3_0_C12_C12_7, {one}",
                "isb",
                pmr = in(reg) 0xFFu64,
                one = in(reg) 1u64,
                options(nostack)
            )
        };
    }

    /// `ICC_IAR1_EL1`: acknowledges the highest-priority pending Group 1 interrupt (1020 and
    /// up: none).
    pub fn ack() -> u32 {
        let v: u64;
        // SAFETY: reading the virtual interface's acknowledge register only acknowledges.
        unsafe { core::arch::asm!("mrs {}, S3_0_C12_C12_0", out(reg) v, options(nostack)) };
        (v & 0xFF_FFFF) as u32
    }

    /// `ICC_EOIR1_EL1` (EOImode 0: priority drop and deactivation) of `intid`.
    pub fn eoi(intid: u32) {
        // SAFETY: ends the interrupt the caller acknowledged, in the virtual interface.
        unsafe { core::arch::asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) intid as u64, options(nostack)) };
    }

    /// `ICC_SGI1R_EL1`: SGI `intid` to the vCPUs in `targets` (bit n = MPIDR affinity
    /// 0.0.0.n), which traps to EL2 and exits to the host's distributor model.
    pub fn send_sgi(intid: u32, targets: u16) {
        let v = (intid as u64) << 24 | targets as u64;
        // SAFETY: a write of ICC_SGI1R_EL1 (trapped by EL2).
        unsafe { core::arch::asm!("msr S3_0_C12_C11_5, {}", in(reg) v, options(nostack)) };
    }

    /// `CNTVCT_EL0`, not read early (ISB first).
    #[inline(always)]
    pub fn cntvct() -> u64 {
        let v: u64;
        // SAFETY: reading the virtual counter has no side effect.
        unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
        v
    }

    /// `CNTFRQ_EL0`.
    pub fn cntfrq() -> u64 {
        let v: u64;
        // SAFETY: reading the counter frequency has no side effect.
        unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
        v
    }
}
