//! EL2's exception vector tables and the trap frame the assembly builds.
//!
//! - In the host table, a synchronous exception from a lower EL (AArch64) that is a hypercall
//!   (`ESR_EL2.EC` is `HVC64`) saves `x0..=x18`, `x30`, `ELR_EL2` and `SPSR_EL2` ([`HvcFrame`])
//!   on this CPU's EL2 stack, calls [`crate::arch::trap::el2_host_hvc`], restores and `ERET`s.
//!   `x19..=x29` are not saved: the handler is AAPCS64 code, which preserves them, and a
//!   hypercall neither reads nor writes them. Any other synchronous exception saves all GPRs
//!   ([`TrapFrame`]: an abort's transfer register may be any of them), calls
//!   [`crate::arch::trap::el2_lower_sync`], restores (the handler may have changed any of them)
//!   and `ERET`s.
//! - While a guest runs on this CPU, `VBAR_EL2` is the guest table, `el2_guest_vectors` (set by
//!   `__guest_enter`), in which any lower-EL exception (synchronous, IRQ, FIQ, SError) is a
//!   *guest exit*: `__guest_exit` stores the guest's GPRs, puts the host table, `el2_vectors`,
//!   back and returns to the world switch ([`super::switch`]). Two tables, not one
//!   that asks which world trapped: neither path pays for the question. The vCPU context is
//!   found at the top of EL2's stack, where `__guest_enter` left it.
//! - Everything else is unexpected: IRQ/FIQ/SError are not routed to EL2 while the host runs
//!   (`HCR_EL2.IMO/FMO/AMO` clear for the host), an AArch32 lower EL never takes an exception
//!   to EL2 (`HCR_EL2.RW`: EL1 is AArch64, and a guest's AArch32 EL0 traps to its EL1), and an exception *at* EL2 is an EL2
//!   bug. Those switch to this CPU's panic stack first (the normal stack may be what overflowed),
//!   save the frame, and call [`crate::arch::trap::el2_unexpected`], which reports and parks the CPU:
//!   it never returns into state that may be corrupt.
//!
//! The frame layout is fixed by [`TrapFrame`] and checked at compile time against the offsets
//! the assembly uses.

use core::arch::global_asm;
use core::mem::{offset_of, size_of};

/// Registers of the interrupted context, as saved by the vector assembly.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// `x0..=x30`.
    pub x: [u64; 31],
    /// `ELR_EL2`: where the context resumes.
    pub elr: u64,
    /// `SPSR_EL2`: the context's PSTATE.
    pub spsr: u64,
    _pad: u64,
}

const FRAME_SIZE: usize = 272;
const _: () = {
    assert!(size_of::<TrapFrame>() == FRAME_SIZE);
    assert!(offset_of!(TrapFrame, x) == 0);
    assert!(offset_of!(TrapFrame, elr) == 248);
    assert!(offset_of!(TrapFrame, spsr) == 256);
};

/// A host hypercall's registers, as the vectors' hypercall path saves them: those a called
/// AAPCS64 function may change, and the return state (a `VCPU_RUN` changes `ELR_EL2` and
/// `SPSR_EL2`).
#[repr(C)]
#[derive(Debug)]
pub struct HvcFrame {
    /// `x0..=x18`: the call in `x0..=x7`, its result written to `x0..=x3`.
    pub x: [u64; 19],
    /// `x30`.
    x30: u64,
    /// `ELR_EL2`.
    pub elr: u64,
    /// `SPSR_EL2`.
    pub spsr: u64,
}

const HVC_FRAME_SIZE: usize = 176;
const _: () = {
    assert!(size_of::<HvcFrame>() == HVC_FRAME_SIZE);
    assert!(offset_of!(HvcFrame, x) == 0);
    assert!(offset_of!(HvcFrame, x30) == 144 + 8);
    assert!(offset_of!(HvcFrame, elr) == 160);
    assert!(offset_of!(HvcFrame, spsr) == 168);
};

global_asm!(
    r#"
// x2..x17 at [sp + 16] onwards: the part of a frame both frames share.
.macro SAVE_X2_X17
    stp x2, x3, [sp, #16 * 1]
    stp x4, x5, [sp, #16 * 2]
    stp x6, x7, [sp, #16 * 3]
    stp x8, x9, [sp, #16 * 4]
    stp x10, x11, [sp, #16 * 5]
    stp x12, x13, [sp, #16 * 6]
    stp x14, x15, [sp, #16 * 7]
    stp x16, x17, [sp, #16 * 8]
.endm

.macro RESTORE_X2_X17
    ldp x2, x3, [sp, #16 * 1]
    ldp x4, x5, [sp, #16 * 2]
    ldp x6, x7, [sp, #16 * 3]
    ldp x8, x9, [sp, #16 * 4]
    ldp x10, x11, [sp, #16 * 5]
    ldp x12, x13, [sp, #16 * 6]
    ldp x14, x15, [sp, #16 * 7]
    ldp x16, x17, [sp, #16 * 8]
.endm

.macro SAVE_FRAME
    sub sp, sp, #{frame}
    stp x0, x1, [sp, #16 * 0]
    SAVE_X2_X17
    stp x18, x19, [sp, #16 * 9]
    stp x20, x21, [sp, #16 * 10]
    stp x22, x23, [sp, #16 * 11]
    stp x24, x25, [sp, #16 * 12]
    stp x26, x27, [sp, #16 * 13]
    stp x28, x29, [sp, #16 * 14]
    mrs x0, elr_el2
    mrs x1, spsr_el2
    stp x30, x0, [sp, #16 * 15]
    str x1, [sp, #16 * 16]
.endm

.macro RESTORE_FRAME
    ldr x1, [sp, #16 * 16]
    ldp x30, x0, [sp, #16 * 15]
    msr elr_el2, x0
    msr spsr_el2, x1
    ldp x0, x1, [sp, #16 * 0]
    RESTORE_X2_X17
    ldp x18, x19, [sp, #16 * 9]
    ldp x20, x21, [sp, #16 * 10]
    ldp x22, x23, [sp, #16 * 11]
    ldp x24, x25, [sp, #16 * 12]
    ldp x26, x27, [sp, #16 * 13]
    ldp x28, x29, [sp, #16 * 14]
    add sp, sp, #{frame}
.endm

// A vector slot is 0x80 bytes, so each unexpected slot only parks x0 in SP_EL0 (a lower-EL
// register: this path never returns to the lower EL) and branches with its vector number.
.macro UNEXPECTED kind
    msr sp_el0, x0
    mov x0, #\kind
    b el2_unexpected_entry
.endm

// A guest exit (guest table): the guest's x0/x1 pushed for __guest_exit, x1 = the vCPU context
// __guest_enter left at the top of EL2's stack (which the guest cannot reach), x0 = the kind.
.macro GUEST_EXIT kind
    stp x0, x1, [sp, #-16]!
    ldr x1, [sp, #16]
    mov x0, #\kind
    b __guest_exit
.endm

// Slots `first..=last` of a table (0x80 bytes each), never taken: EL2's own exceptions (vectors
// 0 to 7) and AArch32 lower ELs (12 to 15; HCR_EL2.RW is set) in both tables, and in the host's
// the lower-EL IRQ, FIQ and SError (9 to 11).
.macro UNEXPECTED_SLOTS first, last
.irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
.if \n >= \first && \n <= \last
    .balign 0x80
    UNEXPECTED \n
.endif
.endr
.endm

.section .text.vectors, "ax"
.balign 2048
.global el2_vectors
el2_vectors:
    UNEXPECTED_SLOTS 0, 7
    // Lower EL, AArch64: the host (IRQ, FIQ and SError are not routed to EL2 while it runs).
    .balign 0x80
    b el2_lower_sync_entry
    UNEXPECTED_SLOTS 9, 15

// The table while a guest runs: the same but for the lower-EL AArch64 slots, every one of
// which is an exit of that guest.
.balign 2048
.global el2_guest_vectors
el2_guest_vectors:
    UNEXPECTED_SLOTS 0, 7
// Synchronous, IRQ, FIQ, SError: kinds 0, 1, 1, 2 (an FIQ is an IRQ to the world switch).
.irp kind, 0, 1, 1, 2
    .balign 0x80
    GUEST_EXIT \kind
.endr
    UNEXPECTED_SLOTS 12, 15

// Enter a guest. x0 = &VcpuCtx (GPRs at 0, host-save pointer slot at 248), x1 = host save area
// (14 words): EL2's callee-saved x18..x29, x30 and SP, restored by __guest_exit. &VcpuCtx is
// pushed for the guest table's exits (the SP restored at the exit is the one from before the
// push). VBAR_EL2 is the guest table from here to __guest_exit's end: every lower-EL exception
// in between is this guest's. (No ISB: the ERET into the guest, and later the one into the
// host, are context synchronising, and EL2's own exceptions are unexpected in either table.)
.global __guest_enter
__guest_enter:
    adr x2, el2_guest_vectors
    msr vbar_el2, x2
    stp x18, x19, [x1, #0]
    stp x20, x21, [x1, #16]
    stp x22, x23, [x1, #32]
    stp x24, x25, [x1, #48]
    stp x26, x27, [x1, #64]
    stp x28, x29, [x1, #80]
    mov x2, sp
    stp x30, x2, [x1, #96]
    str x1, [x0, #248]
    str x0, [sp, #-16]!
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldr x30, [x0, #240]
    ldp x0, x1, [x0, #0]
    eret
    dsb nsh
    isb

// A guest exit: x0 = exit kind, x1 = &VcpuCtx, the guest's x0/x1 on the stack. Stores the
// guest GPRs, restores EL2's registers, puts the host table back in VBAR_EL2 (a later
// lower-EL exception is the host's) and returns x0 to __guest_enter's caller.
__guest_exit:
    stp x2, x3, [x1, #16]
    stp x4, x5, [x1, #32]
    stp x6, x7, [x1, #48]
    stp x8, x9, [x1, #64]
    stp x10, x11, [x1, #80]
    stp x12, x13, [x1, #96]
    stp x14, x15, [x1, #112]
    stp x16, x17, [x1, #128]
    stp x18, x19, [x1, #144]
    stp x20, x21, [x1, #160]
    stp x22, x23, [x1, #176]
    stp x24, x25, [x1, #192]
    stp x26, x27, [x1, #208]
    stp x28, x29, [x1, #224]
    str x30, [x1, #240]
    ldp x2, x3, [sp], #16
    stp x2, x3, [x1, #0]
    ldr x2, [x1, #248]
    ldp x18, x19, [x2, #0]
    ldp x20, x21, [x2, #16]
    ldp x22, x23, [x2, #32]
    ldp x24, x25, [x2, #48]
    ldp x26, x27, [x2, #64]
    ldp x28, x29, [x2, #80]
    ldp x30, x3, [x2, #96]
    mov sp, x3
    adr x3, el2_vectors
    msr vbar_el2, x3
    ret

// Unexpected exception, x0 = vector number: move to this CPU's panic stack (top =
// __panic_stacks_start + (cpu + 1) * 8192: a guard page, then the 4 KiB stack; cpu from
// TPIDR_EL2; the normal stack may be what overflowed), save the frame there and report. x1 is
// parked in TPIDRRO_EL0 meanwhile.
el2_unexpected_entry:
    msr tpidrro_el0, x1
    mrs x1, tpidr_el2
    and x1, x1, #7
    add x1, x1, #1
    lsl x1, x1, #13
    mov sp, x1
    adrp x1, __panic_stacks_start
    add x1, x1, :lo12:__panic_stacks_start
    add sp, sp, x1
    str x0, [sp, #-16]!
    mrs x0, sp_el0
    mrs x1, tpidrro_el0
    SAVE_FRAME
    ldr x1, [sp, #{frame}]
    mov x0, sp
    bl {unexpected}
    b .

// A synchronous exception from the host. A hypercall (ESR_EL2.EC = 0x16, HVC64) takes the short
// frame; anything else gives it back and takes the full one.
el2_lower_sync_entry:
    sub sp, sp, #{hvc_frame}
    stp x0, x1, [sp, #16 * 0]
    mrs x1, esr_el2
    ubfx x0, x1, #26, #6
    cmp x0, #0x16
    b.ne 1f
    SAVE_X2_X17
    stp x18, x30, [sp, #16 * 9]
    mrs x2, elr_el2
    mrs x3, spsr_el2
    stp x2, x3, [sp, #16 * 10]
    mov x0, sp
    bl {host_hvc}
    ldp x2, x3, [sp, #16 * 10]
    msr elr_el2, x2
    msr spsr_el2, x3
    ldp x0, x1, [sp, #16 * 0]
    RESTORE_X2_X17
    ldp x18, x30, [sp, #16 * 9]
    add sp, sp, #{hvc_frame}
    eret
    // ERET is not a speculation barrier for straight-line execution after it.
    dsb nsh
    isb
1:
    ldp x0, x1, [sp], #{hvc_frame}
    SAVE_FRAME
    mov x0, sp
    bl {lower_sync}
    RESTORE_FRAME
    eret
    // ERET is not a speculation barrier for straight-line execution after it.
    dsb nsh
    isb
"#,
    frame = const FRAME_SIZE,
    hvc_frame = const HVC_FRAME_SIZE,
    host_hvc = sym crate::arch::trap::el2_host_hvc,
    lower_sync = sym crate::arch::trap::el2_lower_sync,
    unexpected = sym crate::arch::trap::el2_unexpected,
);
