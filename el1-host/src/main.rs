//! The untrusted host kernel, at EL1 under EL2's stage 2.
//!
//! It talks to EL2 only through hypercalls (`HVC #0`, [`shared_abi`]) and to firmware only
//! through PSCI (`SMC`, which EL2 intercepts). It runs with its MMU off; EL2 sets
//! `HCR_EL2.DC`, so its memory is Normal cacheable and devices are Device through stage 2.
//! It owns the physical GICv3 and each CPU's EL1 physical timer ([`gic`]): with `DAIF` masked
//! throughout, it acknowledges interrupts after a `VCPU_RUN` ends with exit `IRQ` and in idle
//! loops, and its scheduler ([`sched`]) preempts guests at each tick.
//!
//! The device tree's `/chosen/bootargs` selects a scenario (`scenario=NAME`, default `demo`).
//! Every scenario ends by powering the machine off through PSCI (QEMU exits 0) or, on failure,
//! by reporting a panic through QEMU's `pvpanic-pci` device (QEMU exits 1).
#![no_std]
#![no_main]

mod console;
mod fail;
mod gic;
mod hvc;
mod platform;
#[macro_use]
mod scenarios;
// After `scenarios`, whose check! macros they use.
mod bench;
mod hostile;
mod sched;
mod sched_scenarios;
mod storm;
mod vm_scenarios;
mod vmm;

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Most CPUs the host handles.
pub const MAX_CPUS: usize = 8;
const STACK_SIZE: u64 = 64 * 1024;

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
    bl {main}
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
    main = sym host_main,
    secondary = sym host_secondary,
    handler = sym host_exception,
);

extern "C" {
    fn host_secondary_entry();
}

/// Registers saved by the exception vectors.
#[repr(C)]
pub struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    _pad: u64,
}

/// A fault a scenario provokes on purpose, and what was observed.
pub struct FaultProbe {
    armed: AtomicBool,
    count: AtomicUsize,
    esr: AtomicU64,
    far: AtomicU64,
}

/// The one fault probe (scenarios run on CPU 0 while probing).
pub static PROBE: FaultProbe = FaultProbe {
    armed: AtomicBool::new(false),
    count: AtomicUsize::new(0),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
};

impl FaultProbe {
    /// Runs `f` expecting exactly one synchronous exception; returns its `(ESR_EL1, FAR_EL1)`.
    pub fn expect(&self, f: impl FnOnce()) -> Option<(u64, u64)> {
        let before = self.count.load(Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
        f();
        self.armed.store(false, Ordering::SeqCst);
        (self.count.load(Ordering::SeqCst) == before + 1)
            .then(|| (self.esr.load(Ordering::SeqCst), self.far.load(Ordering::SeqCst)))
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
    let ec = (esr >> 26) & 0x3F;
    // Synchronous, current EL with SP_ELx: the only kind a probe provokes.
    if kind == 4 && PROBE.armed.swap(false, Ordering::SeqCst) {
        PROBE.esr.store(esr, Ordering::SeqCst);
        PROBE.far.store(far, Ordering::SeqCst);
        PROBE.count.fetch_add(1, Ordering::SeqCst);
        if ec == 0x21 {
            // Instruction abort on a branch target: resume at the caller (x30).
            frame.elr = frame.x[30];
        } else {
            frame.elr += 4;
        }
        return;
    }
    fail::fail(format_args!(
        "unexpected exception at EL1: vector {kind} ESR_EL1={esr:#x} FAR_EL1={far:#x} ELR_EL1={:#x}",
        frame.elr
    ));
}

/// CPUs that have reported in, by index.
pub static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Physical address of the secondary entry point.
pub fn secondary_entry() -> u64 {
    host_secondary_entry as *const () as u64
}

/// This host CPU's index (kept in `TPIDR_EL1` by the entry code).
pub fn cpu_id() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack)) };
    v as usize % MAX_CPUS
}

/// The exception level the host runs at (`CurrentEL.EL`).
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

extern "C" fn host_main(dtb: u64) -> ! {
    let plat = platform::Platform::from_dtb(dtb);
    console::init(plat.uart);
    fail::init(&plat);
    println!("host: el1-host starting at EL{} (device tree at {dtb:#x})", current_el());
    gic::init(&plat);
    ONLINE[0].store(true, Ordering::SeqCst);
    let name = plat.scenario();
    scenarios::run(name, &plat);
    println!("host: scenario {name}: PASS");
    println!("host: powering off");
    let _ = smccc::psci::system_off::<smccc::Smc>();
    fail::fail(format_args!("PSCI SYSTEM_OFF returned"));
}

extern "C" fn host_secondary(cpu: u64) -> ! {
    let version = hvc::call(shared_abi::HypercallId::Version, &[]);
    println!("host: cpu{cpu} online at EL{}, hypervisor ABI {version:x?}", current_el());
    gic::init_cpu(cpu as usize % MAX_CPUS);
    ONLINE[cpu as usize % MAX_CPUS].store(true, Ordering::SeqCst);
    loop {
        if FAULT_REQUEST.load(Ordering::SeqCst) == cpu {
            FAULT_REQUEST.store(u64::MAX, Ordering::SeqCst);
            println!("host: cpu{cpu} asks EL2 to take an unexpected exception (test hook)");
            let r = hvc::call(shared_abi::HypercallId::TestFault, &[0]);
            println!("host: cpu{cpu}: TEST_FAULT returned {r:?}");
            FAULT_RETURNED.store(true, Ordering::SeqCst);
        }
        vmm::secondary_work(cpu as usize % MAX_CPUS);
        sched::secondary_work(cpu as usize % MAX_CPUS);
        // A tick (or kick) that came while idle: acknowledge it, re-arming the tick.
        gic::handle_pending();
        // SAFETY: `wfe` only waits (the requester sends an event).
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// CPU index a scenario wants to make EL2 fault on (`u64::MAX`: none, or taken).
pub static FAULT_REQUEST: AtomicU64 = AtomicU64::new(u64::MAX - 1);
/// Set if the test-hook call returned (it must not, on a test EL2).
pub static FAULT_RETURNED: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail::fail(format_args!("host panic: {info}"))
}
