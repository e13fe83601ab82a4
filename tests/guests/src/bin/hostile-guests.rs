//! Hostile guest (mode 1 from the test device): random IPAs read and written, HVC/SMC with
//! random function IDs and random pKVM guest memory calls (`MEM_SHARE`, `MEM_UNSHARE`,
//! `MMIO_GUARD`, `HYP_MEMINFO` on its own pages, MMIO and wild addresses; in a protected VM the
//! guard is on from the start, its console and test device declared), random system-register reads and EL2/EL3 register writes (generated
//! instructions), pointer-authentication and MTE instructions the VM does not have, WFI storms.
//! Every exception it takes is recorded and skipped. Mode 2 is the well-behaved neighbour: it
//! checks its own memory and registers across thousands of exits.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

const ACTIONS: u64 = 4000;
const RAM: (u64, u64) = (0x4000_0000, 0x4100_0000);

#[repr(C, align(4096))]
struct Code([u32; 1024]);
static mut CODE: Code = Code([0; 1024]);
static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);
static mut SCRATCH: [u64; 64] = [0; 64];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs one generated instruction (followed by `ret`) and counts an exception if it takes one.
fn run_insn(insn: u32) {
    // SAFETY: CODE is this guest's own buffer; the instruction is written, made visible to
    // instruction fetch (clean to PoU, invalidate the I-cache line), and called as a leaf
    // function whose only effect is the generated instruction on x0.
    unsafe {
        let code = core::ptr::addr_of_mut!(CODE) as *mut u32;
        code.write_volatile(insn);
        code.add(1).write_volatile(0xD65F_03C0); // ret
        core::arch::asm!("dc cvau, {p}", "dsb ish", "ic ivau, {p}", "dsb ish", "isb", p = in(reg) code, options(nostack));
        // x0 (the generated instruction's operand) points at this guest's own scratch memory,
        // so tag stores and the like hit its RAM, not an address EL2 cannot emulate.
        let scratch = core::ptr::addr_of_mut!(SCRATCH) as u64;
        if guests::trapped(|| core::arch::asm!("blr {f}", f = in(reg) code, inout("x0") scratch => _, out("x30") _, options(nostack))).is_some() {
            EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pKVM guest memory calls ([`hostile`] makes them with random arguments).
const MEMORY_CALLS: [u64; 4] = [0xC600_0002, 0xC600_0003, 0xC600_0004, 0xC600_0007];

fn hostile() {
    let mut rng = Rng(0x5EED_1234);
    // Protected VMs: the MMIO guard on, with the console and the test device declared (a VM
    // that is not protected is answered NOT_SUPPORTED and keeps exiting for every MMIO access).
    for page in [guests::UART, guests::TESTDEV] {
        smccc::hvc64(0xC600_0007, [page, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    let forbidden = [0x8400_0002u64, 0x8400_0008, 0x8400_0009, 0xC400_0003, 0x8400_0003]; // CPU_OFF, SYSTEM_OFF/RESET, CPU_ON
    let mut wfis = 0;
    let mut memory_done = 0;
    for _ in 0..ACTIONS {
        let r = rng.next();
        match r % 8 {
            // Reads anywhere: own RAM, MMIO space, beyond the IPA size.
            0 => {
                let a = match (r >> 8) % 3 {
                    0 => (RAM.0 + rng.next() % (RAM.1 - RAM.0)) & !7,
                    1 => (rng.next() % RAM.0) & !7,
                    _ => rng.next() & !7,
                };
                if guests::trapped(|| {
                    // SAFETY: a deliberately wild read; faults are caught and skipped.
                    unsafe { core::ptr::read_volatile(a as *const u64) };
                })
                .is_some()
                {
                    EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Writes outside its RAM (its own code and data it leaves alone).
            1 => {
                let a = match (r >> 8) % 2 {
                    0 => (rng.next() % RAM.0) & !7,
                    _ => (RAM.1 + rng.next() % (1 << 40)) & !7,
                };
                if guests::trapped(|| {
                    // SAFETY: a deliberately wild write outside this guest's RAM.
                    unsafe { core::ptr::write_volatile(a as *mut u64, r) };
                })
                .is_some()
                {
                    EXCEPTIONS.fetch_add(1, Ordering::Relaxed);
                }
            }
            // HVC and SMC with random function IDs (not the ones that stop this vCPU).
            2 | 3 => {
                let mut id = match (r >> 8) % 4 {
                    0 => 0x8400_0000 | ((r >> 16) % 0x20),
                    1 => MEMORY_CALLS[((r >> 16) % 4) as usize],
                    _ => rng.next(),
                };
                if forbidden.contains(&(id & 0xFFFF_FFFF)) || forbidden.contains(&id) {
                    id = 0xC600_0000;
                }
                let mut args = [rng.next(), rng.next(), rng.next()];
                if MEMORY_CALLS.contains(&id) {
                    // A granule of its own RAM, of MMIO space, or anything; x2, x3 mostly 0.
                    args[0] = match (r >> 20) % 4 {
                        0 | 1 => (RAM.0 + args[0] % (RAM.1 - RAM.0)) & !0xFFF,
                        2 => args[0] % RAM.0 & !0xFFF,
                        _ => args[0],
                    };
                    if (r >> 24) % 8 != 0 {
                        args[1] = 0;
                        args[2] = 0;
                    }
                }
                let answer: u64;
                // SAFETY: an SMCCC call; EL2 answers or exits to the host, x0..x3 change.
                unsafe {
                    if r % 8 == 2 {
                        core::arch::asm!("hvc #0", inout("x0") id => answer, inout("x1") args[0] => _, inout("x2") args[1] => _, inout("x3") args[2] => _, options(nostack));
                    } else {
                        core::arch::asm!("smc #0", inout("x0") id => answer, inout("x1") args[0] => _, inout("x2") args[1] => _, inout("x3") args[2] => _, options(nostack));
                    }
                }
                if MEMORY_CALLS[1..].contains(&id) && answer == 0 {
                    memory_done += 1;
                }
            }
            // MRS of random registers, including EL2 and EL3 ones and IMPLEMENTATION DEFINED.
            4 => {
                let op1 = [0u32, 3, 4, 5, 6, 7][((r >> 8) % 6) as usize];
                let field = |shift: u64, mask: u64| ((r >> shift) & mask) as u32;
                let enc = (field(16, 1) << 19) | (op1 << 16) | (field(20, 0xF) << 12) | (field(24, 0xF) << 8) | (field(28, 7) << 5);
                run_insn(0xD530_0000 | enc); // MRS x0, S<op0>_<op1>_C<n>_C<m>_<op2>
            }
            // MSR to EL2/EL3 registers (op1 4 or 6): UNDEFINED at EL1 whatever the encoding.
            5 => {
                let op1 = if (r >> 8) & 1 == 0 { 4u32 } else { 6 };
                let field = |shift: u64, mask: u64| ((r >> shift) & mask) as u32;
                let enc = (1 << 19) | (op1 << 16) | (field(20, 0xF) << 12) | (field(24, 0xF) << 8) | (field(28, 7) << 5);
                run_insn(0xD510_0000 | enc); // MSR S3_<op1>_C<n>_C<m>_<op2>, x0
            }
            // Pointer authentication and MTE this VM was not given.
            6 => {
                let insn = [0x9AC2_3020u32 /* PACGA x0, x1, x2 */, 0xDAC1_0020 /* PACIA x0, x1 */, 0xD920_0800 /* STG x0, [x0] */, 0x9ADF_1000 /* IRG x0, x0 */, 0xD538_10A0 /* MRS x0, RGSR_EL1 */][((r >> 8) % 5) as usize];
                run_insn(insn);
            }
            // A WFI storm.
            _ => {
                for _ in 0..20 {
                    // SAFETY: WFI only waits (here: exits to the host, which resumes us).
                    unsafe { core::arch::asm!("wfi", options(nostack)) };
                    wfis += 1;
                }
            }
        }
    }
    println!("guest: hostile guest survived {ACTIONS} actions: {} exceptions taken and skipped, {wfis} WFIs, {memory_done} memory calls done", EXCEPTIONS.load(Ordering::Relaxed));
}

static mut BUF: [u64; 512] = [0; 512];

fn victim() {
    // SAFETY: this guest's own buffer.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    for (i, w) in buf.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    for round in 0..3000u64 {
        // SAFETY: an MMIO read of an unassigned address (an exit to the host).
        unsafe { core::ptr::read_volatile(0x0c00_0000 as *const u64) };
        let v = guests::psci_version();
        if v != 0x10001 {
            guests::fail(format_args!("PSCI_VERSION {v:#x} in round {round}"));
        }
        let i = (round % 512) as usize;
        if buf[i] != (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) {
            guests::fail(format_args!("memory word {i} changed in round {round}"));
        }
    }
    println!("guest: ok: the neighbour VM's memory and answers stayed right for 3000 rounds");
}

fn main(_dtb: u64) {
    guests::install_vectors();
    if guests::testdev_read() == 1 {
        hostile();
    } else {
        victim();
    }
}

fn secondary(_: u64) {}
