//! A guest that leaves AArch64: it returns to AArch32 EL0 (which its ID registers hide and EL2
//! does not emulate) and executes `WFI` there, which traps to EL2. EL2 must stop the VM with
//! `ILLEGAL_STATE` instead of interpreting an AArch32 exit. If EL2 let it carry on, the guest
//! would spin at `b .` in AArch32 for ever: the scenario then times out.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// A32 code: `wfi` (traps to EL2 under `HCR_EL2.TWI`), then `b .`.
#[repr(C, align(8))]
struct A32Code([u32; 2]);
static A32_CODE: A32Code = A32Code([0xE320_F003, 0xEAFF_FFFE]);

/// `SPSR_EL1` for the return: AArch32 (M[4] set) User mode (0x10), A, I, F masked.
const SPSR_A32_USR: u64 = 0x10 | 0b111 << 6;

fn main(_dtb: u64) {
    println!("guest: returning to AArch32 EL0 (SPSR_EL1 {SPSR_A32_USR:#x})");
    // SAFETY: an exception return to this guest's own code in AArch32 EL0. The MMU is off, so
    // EL0 may fetch it; it never comes back here.
    unsafe {
        core::arch::asm!(
            // SCTLR_EL1.nTWI (bit 16): EL0's WFI is not trapped to EL1 first, so it traps to
            // EL2 (HCR_EL2.TWI).
            "mrs {t}, sctlr_el1",
            "orr {t}, {t}, #(1 << 16)",
            "msr sctlr_el1, {t}",
            "msr elr_el1, {pc}",
            "msr spsr_el1, {spsr}",
            "isb",
            "eret",
            pc = in(reg) A32_CODE.0.as_ptr() as u64,
            spsr = in(reg) SPSR_A32_USR,
            t = in(reg) 0u64,
            options(noreturn, nostack)
        )
    }
}

fn secondary(_index: u64) {}
