//! A guest that uses its virtual GICv3 CPU interface: it enables Group 1 interrupts and
//! the priority mask, tells the host it is ready (the host then queues a level-sensitive SPI
//! into its list registers with `VCPU_SET_IRQ`), unmasks IRQs, takes the virtual interrupt,
//! acknowledges it (`ICC_IAR1_EL1`, which reaches the virtual interface) and EOIs it, and reports
//! the INTID to the host. Then it sends itself SGI 5 through `ICC_SGI1R_EL1` (a trapped write
//! that becomes an SGI exit), which the host queues back, and reports that one too.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::{gic, println};

guests::entry!(main, secondary);

/// The SPI the host queues.
pub const SPI: u64 = 40;
/// The SGI the guest sends itself.
pub const SGI: u32 = 5;

/// The INTID the IRQ handler acknowledged last (`u64::MAX`: none).
#[no_mangle]
static TAKEN: AtomicU64 = AtomicU64::new(u64::MAX);

// EL1 vectors: an IRQ from the current EL (SPx) acknowledges the highest-priority pending
// virtual interrupt, records its INTID, EOIs it (priority drop and deactivation, EOImode 0)
// and returns; every other exception stops the VM.
core::arch::global_asm!(
    r#"
.section .text, "ax"
.balign 2048
vgic_vectors:
    .rept 5
    .balign 0x80
    b vgic_bad_vector
    .endr
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mrs x0, S3_0_C12_C12_0
    adrp x1, TAKEN
    add x1, x1, :lo12:TAKEN
    str x0, [x1]
    msr S3_0_C12_C12_1, x0
    isb
    ldp x0, x1, [sp], #16
    eret
    .rept 10
    .balign 0x80
    b vgic_bad_vector
    .endr
vgic_bad_vector:
    mrs x0, esr_el1
    bl vgic_unexpected
"#
);

extern "C" {
    fn vgic_vectors();
}

#[no_mangle]
extern "C" fn vgic_unexpected(esr: u64) -> ! {
    guests::fail(format_args!("unexpected exception, ESR_EL1 {esr:#x}"))
}

/// Unmasks IRQs until the handler has taken one (exiting in between, so the host CPU is
/// never held); returns its INTID.
fn take_irq() -> u64 {
    TAKEN.store(u64::MAX, Ordering::SeqCst);
    for _ in 0..1000 {
        // SAFETY: the vectors handle the IRQ; masking again leaves nothing else changed.
        unsafe { core::arch::asm!("msr daifclr, #2", "isb", "nop", "msr daifset, #2", options(nostack)) };
        let t = TAKEN.load(Ordering::SeqCst);
        if t != u64::MAX {
            return t;
        }
        guests::relax();
    }
    guests::fail(format_args!("no virtual interrupt arrived"))
}

fn main(_dtb: u64) {
    // SAFETY: this vCPU's own vectors (the ISB in `cpu_interface_on` makes them take effect
    // before IRQs are first unmasked).
    unsafe { core::arch::asm!("msr vbar_el1, {}", in(reg) vgic_vectors as *const () as u64, options(nostack)) };
    gic::cpu_interface_on();
    // Ready: the host queues the SPI before it answers.
    let _ = guests::testdev_read();
    let spi = take_irq();
    println!("guest: took vINTID {spi} through ICC_IAR1_EL1 and EOIed it");
    guests::testdev_write(spi);
    // SGI 5 to this vCPU (Aff0 0: target list bit 0).
    gic::send_sgi(SGI, 1 << 0);
    let sgi = take_irq();
    println!("guest: took SGI {sgi}");
    guests::testdev_write(sgi);
}

fn secondary(_index: u64) {}
