//! SVE guest. The host's test device tells it what to expect (`testdev_read` on vCPU 0):
//! bits 7:0 a seed for its register pattern, bits 15:8 the VM's vector length in quadwords
//! (0: the VM has no SVE), bit 16: start vCPU 1 as a hostile sibling.
//!
//! With SVE: vCPU 0 enables SVE for itself (`CPACR_EL1.ZEN`), asks for the largest length
//! (`ZCR_EL1.LEN` 15) and must get the VM's (EL2's `ZCR_EL2` caps it), fills `Z0..Z31`,
//! `P0..P15` and `FFR` with its pattern, and checks every byte survives thousands of exits to the
//! host (MMIO reads) and to EL2 (PSCI calls) while the host runs other VMs and vCPUs on its CPU.
//! The hostile sibling meanwhile rewrites its own `ZCR_EL1` with every value, checks the length
//! it gets never exceeds the VM's, fills its registers with a pattern of its own at each length,
//! and exits. Without SVE: SVE instructions and `ZCR_EL1` are UNDEF and the ID registers say no.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

const UNASSIGNED: u64 = 0x0c00_0000;
const ROUNDS: u64 = 2000;
/// The architecture's largest vector length in bytes.
const VL_MAX: usize = 256;

/// The VM's length in bytes, for the sibling.
static VL: AtomicU64 = AtomicU64::new(0);
/// The sibling has finished its rounds.
static SIBLING_DONE: AtomicBool = AtomicBool::new(false);

/// Where the registers go to be checked: `Z0..Z31` of `VL` bytes, then `P0..P15` and `FFR` of
/// `VL / 8` bytes.
#[repr(C, align(16))]
struct Regs {
    z: [u8; 32 * VL_MAX],
    p: [u8; 17 * VL_MAX / 8],
}

static mut REGS: [Regs; 2] = [const { Regs { z: [0; 32 * VL_MAX], p: [0; 17 * VL_MAX / 8] } }; 2];

/// This vCPU's buffer (each vCPU has its own).
fn regs(vcpu: usize) -> &'static mut Regs {
    // SAFETY: vCPU n only ever uses REGS[n]; no other reference to it is live.
    unsafe { &mut *core::ptr::addr_of_mut!(REGS[vcpu]) }
}

/// `CPACR_EL1.ZEN` and `FPEN` (EL1 and EL0 do not trap SVE and FP/SIMD to EL1).
fn enable_sve() {
    // SAFETY: changes this guest's own trap controls.
    unsafe { core::arch::asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 16)", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack)) };
}

/// Writes `ZCR_EL1` (S3_0_C1_C2_0).
fn set_zcr(v: u64) {
    // SAFETY: the guest's own vector-length control.
    unsafe { core::arch::asm!("msr S3_0_C1_C2_0, {}", "isb", in(reg) v, options(nostack)) };
}

/// Reads `ZCR_EL1`.
fn zcr() -> u64 {
    let v: u64;
    // SAFETY: reads the guest's own register.
    unsafe { core::arch::asm!("mrs {}, S3_0_C1_C2_0", out(reg) v, options(nostack)) };
    v
}

/// `RDVL`: the current vector length in bytes.
fn rdvl() -> u64 {
    let v: u64;
    // SAFETY: RDVL only reads the vector length.
    unsafe { core::arch::asm!(".arch_extension sve", "rdvl {}, #1", out(reg) v, options(nomem, nostack)) };
    v
}

/// `Zn` = `seed + n` in every byte; `Pn` and `FFR` from `pattern` (17 predicates of `VL / 8`
/// bytes: P0..P15, then FFR). Nothing else in the guest touches them: it is built without FP.
fn fill(seed: u8, pattern: &Regs) {
    macro_rules! dup {
        ($($n:literal)*) => { $(
            // SAFETY: writes Z register $n only.
            unsafe { core::arch::asm!(".arch_extension sve", concat!("dup z", $n, ".b, {0:w}"), in(reg) seed.wrapping_add($n) as u32, options(nomem, nostack)) };
        )* };
    }
    dup!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    let p = pattern.p.as_ptr();
    // SAFETY: reads 17 predicates of VL / 8 bytes from `pattern`; writes P0..P15 and FFR.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "ldr p0, [{p}, #16, mul vl]",
            "wrffr p0.b",
            "ldr p0, [{p}, #0, mul vl]", "ldr p1, [{p}, #1, mul vl]", "ldr p2, [{p}, #2, mul vl]", "ldr p3, [{p}, #3, mul vl]",
            "ldr p4, [{p}, #4, mul vl]", "ldr p5, [{p}, #5, mul vl]", "ldr p6, [{p}, #6, mul vl]", "ldr p7, [{p}, #7, mul vl]",
            "ldr p8, [{p}, #8, mul vl]", "ldr p9, [{p}, #9, mul vl]", "ldr p10, [{p}, #10, mul vl]", "ldr p11, [{p}, #11, mul vl]",
            "ldr p12, [{p}, #12, mul vl]", "ldr p13, [{p}, #13, mul vl]", "ldr p14, [{p}, #14, mul vl]", "ldr p15, [{p}, #15, mul vl]",
            p = in(reg) p,
            options(nostack, readonly),
        )
    };
}

/// Stores `Z0..Z31`, `P0..P15` and `FFR` into `out` at the current length.
fn store(out: &mut Regs) {
    let (z, p) = (out.z.as_mut_ptr(), out.p.as_mut_ptr());
    // SAFETY: writes 32 vectors and 17 predicates of the current length into `out`, which has
    // room for the largest; P0 is reloaded after carrying FFR.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "str z0, [{z}, #0, mul vl]", "str z1, [{z}, #1, mul vl]", "str z2, [{z}, #2, mul vl]", "str z3, [{z}, #3, mul vl]",
            "str z4, [{z}, #4, mul vl]", "str z5, [{z}, #5, mul vl]", "str z6, [{z}, #6, mul vl]", "str z7, [{z}, #7, mul vl]",
            "str z8, [{z}, #8, mul vl]", "str z9, [{z}, #9, mul vl]", "str z10, [{z}, #10, mul vl]", "str z11, [{z}, #11, mul vl]",
            "str z12, [{z}, #12, mul vl]", "str z13, [{z}, #13, mul vl]", "str z14, [{z}, #14, mul vl]", "str z15, [{z}, #15, mul vl]",
            "str z16, [{z}, #16, mul vl]", "str z17, [{z}, #17, mul vl]", "str z18, [{z}, #18, mul vl]", "str z19, [{z}, #19, mul vl]",
            "str z20, [{z}, #20, mul vl]", "str z21, [{z}, #21, mul vl]", "str z22, [{z}, #22, mul vl]", "str z23, [{z}, #23, mul vl]",
            "str z24, [{z}, #24, mul vl]", "str z25, [{z}, #25, mul vl]", "str z26, [{z}, #26, mul vl]", "str z27, [{z}, #27, mul vl]",
            "str z28, [{z}, #28, mul vl]", "str z29, [{z}, #29, mul vl]", "str z30, [{z}, #30, mul vl]", "str z31, [{z}, #31, mul vl]",
            "str p0, [{p}, #0, mul vl]", "str p1, [{p}, #1, mul vl]", "str p2, [{p}, #2, mul vl]", "str p3, [{p}, #3, mul vl]",
            "str p4, [{p}, #4, mul vl]", "str p5, [{p}, #5, mul vl]", "str p6, [{p}, #6, mul vl]", "str p7, [{p}, #7, mul vl]",
            "str p8, [{p}, #8, mul vl]", "str p9, [{p}, #9, mul vl]", "str p10, [{p}, #10, mul vl]", "str p11, [{p}, #11, mul vl]",
            "str p12, [{p}, #12, mul vl]", "str p13, [{p}, #13, mul vl]", "str p14, [{p}, #14, mul vl]", "str p15, [{p}, #15, mul vl]",
            "rdffr p0.b",
            "str p0, [{p}, #16, mul vl]",
            "ldr p0, [{p}, #0, mul vl]",
            z = in(reg) z,
            p = in(reg) p,
            options(nostack),
        )
    };
}

/// A predicate pattern for `seed`: byte `i` of `Pn` is `seed ^ (17 * n + i)` (every bit of a
/// predicate is one byte lane); `FFR` holds the first `k` lanes set and the rest clear, the
/// only kind of value first-fault loads leave in it (`k` from the seed).
fn pattern(seed: u8, vl: usize) -> &'static Regs {
    static mut PATTERNS: [Regs; 2] = [const { Regs { z: [0; 32 * VL_MAX], p: [0; 17 * VL_MAX / 8] } }; 2];
    let which = (seed & 1) as usize;
    // SAFETY: each vCPU of this guest uses its own pattern slot (vCPU 0 even seeds, the
    // sibling odd ones), written here before it is read.
    let r = unsafe { &mut *core::ptr::addr_of_mut!(PATTERNS[which]) };
    let pl = vl / 8;
    for n in 0..16 {
        for i in 0..pl {
            r.p[n * pl + i] = seed ^ (17 * n + i) as u8;
        }
    }
    let k = seed as usize * 7 % vl + 1;
    for i in 0..pl {
        let lanes = k.saturating_sub(8 * i).min(8);
        r.p[16 * pl + i] = ((1u16 << lanes) - 1) as u8;
    }
    r
}

/// Checks that `got` holds what [`fill`] put there at length `vl`; the first difference
/// otherwise.
fn check(got: &Regs, seed: u8, pattern: &Regs, vl: usize) -> Result<(), (&'static str, usize, u8, u8)> {
    for n in 0..32 {
        for i in 0..vl {
            let (g, w) = (got.z[n * vl + i], seed.wrapping_add(n as u8));
            if g != w {
                return Err(("Z", n * vl + i, g, w));
            }
        }
    }
    let pl = vl / 8;
    for i in 0..17 * pl {
        if got.p[i] != pattern.p[i] {
            return Err(("P/FFR", i, got.p[i], pattern.p[i]));
        }
    }
    Ok(())
}

/// An exit to the host: a read of an address no device answers.
fn exit_to_host() {
    // SAFETY: an MMIO read of an unassigned address (an exit to the host).
    unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
}

fn main(_dtb: u64) {
    guests::install_vectors();
    let mode = guests::testdev_read();
    let (seed, vq, hostile) = ((mode & 0xFE) as u8, (mode >> 8 & 0xFF) as usize, mode & (1 << 16) != 0);
    // SAFETY: reading an ID register (trapped, answered by EL2).
    let pfr0: u64 = unsafe {
        let v;
        core::arch::asm!("mrs {}, id_aa64pfr0_el1", out(reg) v, options(nomem, nostack));
        v
    };
    if vq == 0 {
        // No SVE: the ID register says so, and whatever CPACR_EL1 says, SVE is UNDEF.
        enable_sve();
        let rdvl_trap = guests::trapped(|| {
            rdvl();
        });
        let zcr_trap = guests::trapped(|| {
            zcr();
        });
        match (pfr0 >> 32 & 0xF, rdvl_trap, zcr_trap) {
            (0, Some(a), Some(b)) if a >> 26 == 0 && b >> 26 == 0 => println!("guest: ok: no SVE: ID_AA64PFR0_EL1.SVE 0, RDVL and ZCR_EL1 -> UNDEF"),
            other => guests::fail(format_args!("a VM without SVE: SVE field, RDVL, ZCR_EL1 -> {other:x?}")),
        }
        return;
    }
    let vl = vq * 16;
    if pfr0 >> 32 & 0xF != 1 {
        guests::fail(format_args!("ID_AA64PFR0_EL1.SVE is {} in a VM with SVE", pfr0 >> 32 & 0xF));
    }
    enable_sve();
    set_zcr(0xF);
    let got = rdvl();
    if got != vl as u64 {
        guests::fail(format_args!("asked for the largest vector length, got {got} bytes, the VM has {vl}"));
    }
    VL.store(vl as u64, Ordering::SeqCst);
    if hostile {
        if let Err(e) = guests::cpu_on(1) {
            guests::fail(format_args!("CPU_ON of the sibling: {e:?}"));
        }
    }
    let pat = pattern(seed, vl);
    fill(seed, pat);
    let mut i = 0;
    while i < ROUNDS || (hostile && !SIBLING_DONE.load(Ordering::SeqCst)) {
        if i % 4 == 0 {
            let _ = guests::psci_version();
        } else {
            exit_to_host();
        }
        // An SVE instruction in every run: each loads the registers (lazily, at this first
        // use) and each exit to the host puts them back.
        if rdvl() != vl as u64 {
            guests::fail(format_args!("after {i} exits: RDVL {} bytes, the VM has {vl}", rdvl()));
        }
        if i % 250 == 0 {
            store(regs(0));
            if let Err((what, at, g, w)) = check(regs(0), seed, pat, vl) {
                guests::fail(format_args!("after {i} exits: {what} byte {at} is {g:#x}, not {w:#x}"));
            }
        }
        i += 1;
    }
    store(regs(0));
    if let Err((what, at, g, w)) = check(regs(0), seed, pat, vl) {
        guests::fail(format_args!("after {i} exits: {what} byte {at} is {g:#x}, not {w:#x}"));
    }
    if rdvl() != vl as u64 || zcr() != 0xF {
        guests::fail(format_args!("the vector length moved: RDVL {}, ZCR_EL1 {:#x}", rdvl(), zcr()));
    }
    println!("guest: ok: {} bits: Z0..Z31, P0..P15 and FFR (pattern {seed:#x}) intact after {i} exits", vl * 8);
    guests::testdev_write(u64::from(seed));
}

/// The hostile sibling: every `ZCR_EL1` value, over and over, with registers of its own at each
/// length, and exits in between.
fn secondary(_index: u64) {
    enable_sve();
    let vl_vm = VL.load(Ordering::SeqCst) as usize;
    let seed = 0xA5u8;
    let mut lengths = [0u64; 16];
    for round in 0..40u64 {
        for len in 0..16u64 {
            // Bits above LEN are RAZ/WI: the register keeps LEN only.
            set_zcr(len | 0x1F0 | 1 << 40);
            if zcr() != len {
                guests::fail(format_args!("ZCR_EL1 reads {:#x} after writing LEN {len} with RAZ/WI bits", zcr()));
            }
            let vl = rdvl() as usize;
            if vl == 0 || !vl.is_multiple_of(16) || vl > vl_vm || vl > (len as usize + 1) * 16 {
                guests::fail(format_args!("ZCR_EL1.LEN {len}: vector length {vl} bytes, the VM has {vl_vm}"));
            }
            if round == 0 {
                lengths[len as usize] = vl as u64;
            } else if lengths[len as usize] != vl as u64 {
                guests::fail(format_args!("ZCR_EL1.LEN {len}: {vl} bytes now, {} before", lengths[len as usize]));
            }
            let pat = pattern(seed, vl);
            fill(seed, pat);
            exit_to_host();
            store(regs(1));
            if let Err((what, at, g, w)) = check(regs(1), seed, pat, vl) {
                guests::fail(format_args!("sibling at {vl} bytes: {what} byte {at} is {g:#x}, not {w:#x}"));
            }
        }
    }
    println!("guest: ok: sibling changed ZCR_EL1 640 times; lengths {:?} bytes, never above the VM's {vl_vm}", lengths);
    SIBLING_DONE.store(true, Ordering::SeqCst);
}
