//! Benchmark guest: measures, in retired instructions as this guest sees them, the round trips
//! that matter (a call served in EL2, an MMIO read the host emulates, the first touch of a page).
//! Needs a non-protected VM with the `HOST_PMU` flag: it reads PMU counter 0, which the host
//! programmed to count INST_RETIRED at EL0, EL1 and EL2 (QEMU `-icount shift=0` makes it exact).
#![no_std]
#![no_main]

use guests::println;
use shared_abi::bench::Stats;

guests::entry!(main, secondary);

const N: usize = 1000;
/// An address no device answers: the host emulates the read (returns 0).
const UNASSIGNED: u64 = 0x0c00_0000;
/// Pages first touched by the page-fault benchmark (inside guest RAM, past the image).
const TOUCH_BASE: u64 = 0x4040_0000;

static mut SAMPLES: [u64; N] = [0; N];

#[inline(always)]
fn count() -> u64 {
    let v: u64;
    // SAFETY: reading PMU counter 0 (allowed to this VM by HOST_PMU). The ISB keeps earlier
    // instructions from being counted after the read.
    unsafe { core::arch::asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) v, options(nostack)) };
    v
}

fn measure(key: &str, overhead: u64, mut f: impl FnMut(usize)) -> u64 {
    // SAFETY: one vCPU, and `measure` is not re-entered: the only reference to SAMPLES.
    let samples = unsafe { &mut *core::ptr::addr_of_mut!(SAMPLES) };
    for (i, s) in samples.iter_mut().enumerate() {
        let a = count();
        f(i);
        let b = count();
        *s = (b - a).saturating_sub(overhead);
    }
    let st = Stats::from_samples(samples).unwrap_or(Stats { n: 0, median: 0, min: 0, max: 0 });
    if !key.is_empty() {
        println!("bench: {key} {st}");
    }
    st.min
}

fn pacga() {
    // SAFETY: PACGA x0, x1, x2 (encoded): computes a signature with this VM's APGAKey.
    unsafe { core::arch::asm!(".inst 0x9ac23020", out("x0") _, in("x1") 1u64, in("x2") 2u64, options(nostack)) };
}

/// A page of this guest's own RAM to share and take back (mode 4).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SHARED: Page = Page([0; 4096]);

/// Mode 4, in a protected VM (which may not read the PMU): `MEM_SHARE` + `MEM_UNSHARE` of one
/// page, each an exit to the host, timed with the virtual counter (under `-icount shift=0`
/// one nanosecond is one instruction).
fn share_unshare() {
    let ipa = core::ptr::addr_of!(SHARED) as u64;
    let freq = guests::gic::cntfrq();
    // SAFETY: one vCPU, not re-entered: the only reference to SAMPLES.
    let samples = unsafe { &mut *core::ptr::addr_of_mut!(SAMPLES) };
    for s in samples.iter_mut() {
        let a = guests::gic::cntvct();
        let share = smccc::hvc64(shared_abi::guest::MEM_SHARE, [ipa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])[0];
        let unshare = smccc::hvc64(shared_abi::guest::MEM_UNSHARE, [ipa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])[0];
        let b = guests::gic::cntvct();
        if share != 0 || unshare != 0 {
            guests::fail(format_args!("MEM_SHARE {share:#x}, MEM_UNSHARE {unshare:#x}"));
        }
        *s = (b - a) * 1_000_000_000 / freq;
    }
    let st = Stats::from_samples(samples).unwrap_or(Stats { n: 0, median: 0, min: 0, max: 0 });
    println!("bench: guest_mem_share_unshare {st}");
}

/// An SVE VM's MMIO read: every round trip through the host puts the guest's SVE registers
/// away (Z0..Z31, P0..P15, FFR at the VM's length, then zeroed), and the SVE instruction before
/// the next read traps and loads them again.
fn sve_rows(vq: u64, overhead: u64) {
    // SAFETY: enabling SVE and FP/SIMD at EL1 for this guest, and asking for its largest
    // vector length (ZCR_EL1, S3_0_C1_C2_0).
    unsafe {
        core::arch::asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 16)", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack));
        core::arch::asm!("msr S3_0_C1_C2_0, {}", "isb", in(reg) 0xFu64, options(nostack));
    }
    let key = match vq {
        4 => "guest_mmio_read_sve512",
        16 => "guest_mmio_read_sve2048",
        _ => guests::fail(format_args!("no SVE row for {vq} quadwords")),
    };
    measure(key, overhead, |_| {
        // SAFETY: an SVE move into Z0 (unused by this softfloat guest), then the MMIO read.
        unsafe {
            core::arch::asm!(".arch_extension sve", "dup z0.b, #0", options(nostack));
            core::ptr::read_volatile(UNASSIGNED as *const u64);
        }
    });
}

fn main(_dtb: u64) {
    // The host's test device says which run this is: 0 the main rows, 1/2 the pointer-
    // authentication rows under the eager/lazy policy (in a VM with pointer authentication),
    // 3 an MTE VM's rows, 4 a protected VM's (no PMU there), 5 | VQ << 8 an SVE VM's of VQ
    // quadwords.
    let policy = guests::testdev_read();
    if policy == 4 {
        share_unshare();
        return;
    }
    if policy & 0xFF == 5 {
        let overhead = measure("", 0, |_| {});
        sve_rows(policy >> 8, overhead);
        return;
    }
    let overhead = measure("", 0, |_| {});
    println!("guest: bench: counter read overhead {overhead} instructions (subtracted)");
    if policy == 3 {
        // An MTE VM: the first touch includes clearing the page's allocation tags.
        measure("guest_first_touch_mte", overhead, |i| {
            // SAFETY: page `i` of a 4 MiB stretch of this guest's RAM that nothing else uses.
            unsafe { core::ptr::write_volatile((TOUCH_BASE + i as u64 * 4096) as *mut u64, 1) };
        });
        // Every exit to the host switches the MTE registers (RGSR, GCR, TFSR, TFSRE0) both ways.
        measure("guest_mmio_read_mte", overhead, |_| {
            // SAFETY: an MMIO read of an unassigned address: the host answers 0.
            unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
        });
        return;
    }
    if policy != 0 {
        let name = if policy == 1 { "eager" } else { "lazy" };
        let mut active = [0u8; 32];
        let mut idle = [0u8; 32];
        let key = |buf: &mut [u8; 32], what: &str| {
            let s = [b"ptrauth_".as_slice(), name.as_bytes(), b"_".as_slice(), what.as_bytes()];
            let mut n = 0;
            for part in s {
                buf[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            n
        };
        let na = key(&mut active, "active");
        let ni = key(&mut idle, "idle");
        // Idle first: a guest that never touched its keys.
        measure(core::str::from_utf8(&idle[..ni]).unwrap_or("?"), overhead, |_| {
            // SAFETY: an MMIO read of an unassigned address: the host answers 0.
            unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
        });
        measure(core::str::from_utf8(&active[..na]).unwrap_or("?"), overhead, |_| {
            pacga();
            // SAFETY: as above.
            unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
        });
        return;
    }
    // The calls take no argument: only x0 is set (as kvm-unit-tests' micro-bench calls), so
    // the figure is EL2's, not the smccc crate's zeroing of x1..x17 (18 instructions).
    measure("guest_smccc_version", overhead, |_| {
        guests::hvc_no_args(smccc::arch::SMCCC_VERSION);
    });
    measure("world_switch_plain", overhead, |_| {
        guests::hvc_no_args(smccc::psci::PSCI_VERSION);
    });
    measure("guest_mmio_read", overhead, |_| {
        // SAFETY: an MMIO read of an unassigned address: the host answers 0.
        unsafe { core::ptr::read_volatile(UNASSIGNED as *const u64) };
    });
    // The same exit with the guest's FP/SIMD live: each round trip through the host puts the
    // guest's FP registers away and the next FP use traps and loads them again.
    // SAFETY: enabling FP/SIMD at EL1 for this guest.
    unsafe { core::arch::asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack)) };
    measure("guest_mmio_read_fp", overhead, |_| {
        // SAFETY: an FP/SIMD move into V0 (unused by this softfloat guest), then the MMIO read.
        unsafe {
            core::arch::asm!(".arch_extension fp", "fmov d0, xzr", options(nostack));
            core::ptr::read_volatile(UNASSIGNED as *const u64);
        }
    });
    measure("guest_first_touch", overhead, |i| {
        // SAFETY: page `i` of a 4 MiB stretch of this guest's RAM that nothing else uses.
        unsafe { core::ptr::write_volatile((TOUCH_BASE + i as u64 * 4096) as *mut u64, 1) };
    });
}

fn secondary(_: u64) {}
