//! Where the host starts and where its exceptions land: the boot and secondary entry code, the
//! EL1 exception vectors, and the hooks through which the binary above plugs in its `main`, its
//! idle-loop work and its handling of faults it provokes on purpose ([`entry!`]).

use crate::cpu::{current_el, MAX_CPUS, ONLINE};
use crate::platform::Platform;
use crate::{fail, gic, hyp, println};
use core::arch::{asm, global_asm};
use core::sync::atomic::Ordering;

const STACK_SIZE: u64 = 64 * 1024;

// `host_main` is the binary's, defined by [`entry!`].
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
    /// Resumes after the faulting instruction.
    pub fn skip_instruction(&mut self) {
        self.elr += 4;
    }

    /// Resumes at the return address in `x30` (an instruction abort on a branch target).
    pub fn return_to_caller(&mut self) {
        self.elr = self.x[30];
    }
}

/// The vector of a synchronous exception from the current EL with `SP_ELx`.
pub const SYNC_CURRENT_EL: u64 = 4;

/// What the binary plugs into the kernel ([`entry!`]).
pub struct Hooks {
    /// Runs on CPU 0 once the kernel is up; the machine powers off when it returns.
    pub main: fn(&Platform),
    /// Runs in every secondary CPU's idle loop, with the CPU's index.
    pub idle: fn(usize),
    /// Offered every exception first (`frame`, vector, `ESR_EL1`, `FAR_EL1`): `true` if it
    /// handled it (adjusting `frame` to resume); otherwise the host fails.
    pub exception: fn(&mut Frame, u64, u64, u64) -> bool,
}

static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// Defines the host's entry point (`host_main`, called by the boot code on CPU 0) with the
/// given [`Hooks`].
#[macro_export]
macro_rules! entry {
    ($hooks:expr) => {
        #[no_mangle]
        extern "C" fn host_main(dtb: u64) -> ! {
            $crate::entry::start(dtb, $hooks)
        }
    };
}

/// The kernel's start on CPU 0: platform, console, failure reports and the GIC, then
/// `hooks.main`, then power off.
pub fn start(dtb: u64, hooks: Hooks) -> ! {
    let plat = Platform::from_dtb(dtb);
    crate::console::init(plat.uart);
    fail::init(&plat);
    println!("host: el1-host starting at EL{} (device tree at {dtb:#x})", current_el());
    gic::init(&plat);
    ONLINE[0].store(true, Ordering::SeqCst);
    let hooks = HOOKS.call_once(|| hooks);
    (hooks.main)(&plat);
    println!("host: powering off");
    let _ = smccc::psci::system_off::<smccc::Smc>();
    fail::fail(format_args!("PSCI SYSTEM_OFF returned"));
}

extern "C" fn host_secondary(cpu: u64) -> ! {
    let cpu = cpu as usize % MAX_CPUS;
    let version = hyp::call(shared_abi::HypercallId::Version, &[]);
    println!("host: cpu{cpu} online at EL{}, hypervisor ABI {version:x?}", current_el());
    gic::init_cpu(cpu);
    ONLINE[cpu].store(true, Ordering::SeqCst);
    loop {
        if let Some(h) = HOOKS.get() {
            (h.idle)(cpu);
        }
        // A tick (or kick) that came while idle: acknowledge it, re-arming the tick.
        gic::handle_pending();
        // SAFETY: `wfe` only waits (the requester sends an event).
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

fn read_sysreg_esr_far() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reading ESR_EL1/FAR_EL1 has no side effects.
    unsafe {
        asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack));
    }
    (esr, far)
}

extern "C" fn host_exception(frame: &mut Frame, kind: u64) {
    let (esr, far) = read_sysreg_esr_far();
    if HOOKS.get().is_some_and(|h| (h.exception)(frame, kind, esr, far)) {
        return;
    }
    fail::fail(format_args!(
        "unexpected exception at EL1: vector {kind} ESR_EL1={esr:#x} FAR_EL1={far:#x} ELR_EL1={:#x}",
        frame.elr
    ));
}
