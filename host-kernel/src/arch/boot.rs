//! The boot code (CPU 0 at `_start`, the others at `host_secondary_entry`) and the EL1
//! exception vectors, which save the registers into a [`Frame`] for
//! [`crate::entry`](mod@crate::entry)'s handler.

use crate::cpu::MAX_CPUS;
use crate::entry::{host_exception, host_secondary};
use core::arch::global_asm;
use core::mem::size_of;

const STACK_SIZE: u64 = 64 * 1024;

// `host_main` is the binary's, defined by `entry!`.
global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    // x0 = device tree (from EL2). CPU 0 uses the first stack; TPIDR_EL1 = CPU index.
    msr tpidr_el1, xzr
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    mov x2, #{stack}
    add sp, x1, x2
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
2:  adrp x1, host_vectors
    add x1, x1, :lo12:host_vectors
    msr vbar_el1, x1
    isb
    bl host_main
3:  wfe
    b 3b

.global host_secondary_entry
host_secondary_entry:
    // x0 = CPU index, the context the host gave CPU_ON.
    cmp x0, #{max_cpus}
    b.hs 3b
    msr tpidr_el1, x0
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    add x3, x0, #1
    mov x2, #{stack}
    madd x1, x3, x2, x1
    mov sp, x1
    adrp x1, host_vectors
    add x1, x1, :lo12:host_vectors
    msr vbar_el1, x1
    isb
    bl {secondary}
    b 3b

.macro ENTRY kind
    .balign 0x80
    sub sp, sp, #272
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    mov x1, #\kind
    b host_exception_common
.endm

.section .text, "ax"
.balign 2048
.global host_vectors
host_vectors:
    ENTRY 0
    ENTRY 1
    ENTRY 2
    ENTRY 3
    ENTRY 4
    ENTRY 5
    ENTRY 6
    ENTRY 7
    ENTRY 8
    ENTRY 9
    ENTRY 10
    ENTRY 11
    ENTRY 12
    ENTRY 13
    ENTRY 14
    ENTRY 15

host_exception_common:
    mrs x0, elr_el1
    stp x30, x0, [sp, #240]
    mrs x0, spsr_el1
    str x0, [sp, #256]
    mov x0, sp
    bl {handler}
    ldr x0, [sp, #256]
    msr spsr_el1, x0
    ldp x30, x0, [sp, #240]
    msr elr_el1, x0
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x19, [sp, #144]
    ldp x20, x21, [sp, #160]
    ldp x22, x23, [sp, #176]
    ldp x24, x25, [sp, #192]
    ldp x26, x27, [sp, #208]
    ldp x28, x29, [sp, #224]
    add sp, sp, #272
    eret
"#,
    stack = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
    secondary = sym host_secondary,
    handler = sym host_exception,
);

extern "C" {
    fn host_secondary_entry();
}

/// Physical address of the secondary entry point (for PSCI `CPU_ON`).
pub fn secondary_entry() -> u64 {
    host_secondary_entry as *const () as u64
}

/// Registers saved by the exception vectors.
#[repr(C)]
pub struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    _pad: u64,
}

impl Frame {
    /// The address the exception returns to (`ELR_EL1`).
    pub fn elr(&self) -> u64 {
        self.elr
    }

    /// Resumes after the faulting instruction.
    pub fn skip_instruction(&mut self) {
        self.elr += 4;
    }

    /// Resumes at `pc`.
    pub(crate) fn resume_at(&mut self, pc: u64) {
        self.elr = pc;
    }

    /// Resumes at the return address in `x30` (an instruction abort on a branch target).
    pub fn return_to_caller(&mut self) {
        self.elr = self.x[30];
    }
}

// The vectors save x0..x30, ELR_EL1 and SPSR_EL1 in 272 bytes.
const _: () = assert!(size_of::<Frame>() == 272);
