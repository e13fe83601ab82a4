//! Isolation test guest: fills a page with a secret, tells the host where it is (test device),
//! lets the host try to read and overwrite it, and checks it afterwards.
//!
//! The host answers on the test device: 1 = "I could not touch it" (protected VM), 2 = "I read
//! it and wrote a marker into word 1" (non-protected VM, which shares its memory).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// The word the host writes into a non-protected guest's page.
const MARKER: u64 = 0x4057_0000_C0DE;

#[repr(C, align(4096))]
struct Page([u64; 512]);
static mut SECRET: Page = Page([0; 512]);

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x005E_C2E7
}

fn main(_dtb: u64) {
    let page = core::ptr::addr_of_mut!(SECRET) as *mut u64;
    for i in 0..512 {
        // SAFETY: within the static page; volatile so the writes really happen in order.
        unsafe { page.add(i).write_volatile(pattern(i)) };
    }
    println!("guest: secret page at IPA {:#x}", page as u64);
    guests::testdev_write(page as u64);
    let verdict = guests::testdev_read();
    for i in 0..512 {
        // SAFETY: as above.
        let v = unsafe { page.add(i).read_volatile() };
        let want = if verdict == 2 && i == 1 { MARKER } else { pattern(i) };
        if v != want {
            guests::fail(format_args!("word {i} of the secret page is {v:#x}, expected {want:#x}"));
        }
    }
    match verdict {
        1 => println!("guest: ok: secret page unchanged after the host's attempt"),
        2 => println!("guest: ok: host's write to shared memory seen, the rest unchanged"),
        v => guests::fail(format_args!("unexpected verdict {v}")),
    }
    traps();
    // Through SMC: EL2 must answer it; firmware would switch the machine off instead.
    guests::system_off_smc();
}

/// What the guest may not do: each is answered with UNDEF or NOT_SUPPORTED, never reaches
/// EL2's host interface or firmware.
fn traps() {
    guests::install_vectors();
    // PMU registers trap to EL2 (MDCR_EL2.TPM), which does not emulate them.
    let pmcr = guests::trapped(|| {
        // SAFETY: reading PMCR_EL0 either works or takes the exception the vectors handle.
        unsafe { core::arch::asm!("mrs {}, pmcr_el0", out(reg) _, options(nostack)) };
    });
    expect_undef("PMCR_EL0 read", pmcr);
    // SVE traps to EL2 (CPTR_EL2.TZ): EL2 does not switch SVE state. The guest's own trap
    // (CPACR_EL1.ZEN and .FPEN) would win over EL2's, so enable both at EL1 first.
    // SAFETY: setting CPACR_EL1.ZEN only affects SVE instructions, tested right below.
    unsafe { core::arch::asm!("mrs {0}, cpacr_el1", "orr {0}, {0}, #(3 << 16)", "orr {0}, {0}, #(3 << 20)", "msr cpacr_el1, {0}", "isb", out(reg) _, options(nostack)) };
    let sve = guests::trapped(|| {
        // SAFETY: `rdvl x0, #1`, encoded; it either runs (clobbering x0, declared) or takes the
        // exception the vectors handle.
        unsafe { core::arch::asm!(".inst 0x04bf5020", out("x0") _, options(nostack)) };
    });
    expect_undef("SVE instruction", sve);
    // Pointer authentication without the VM flag: UNDEF (HCR_EL2.API traps it, EL2 refuses).
    let pac = guests::trapped(|| {
        // SAFETY: PACGA x0, x1, x2 (encoded): computes, or takes the exception the vectors handle.
        unsafe { core::arch::asm!(".inst 0x9ac23020", out("x0") _, in("x1") 1u64, in("x2") 2u64, options(nostack)) };
    });
    expect_undef("PACGA without pointer authentication", pac);
    // The host's hypercall ABI is not the guest's: EL2 answers NOT_SUPPORTED.
    let r = smccc::hvc64(0xC600_0000, [0; 17])[0];
    if r != u64::MAX {
        guests::fail(format_args!("host VERSION hypercall from a guest returned {r:#x}"));
    }
    println!("guest: ok: the host's hypercall ABI answers NOT_SUPPORTED to a guest");
    // A vendor-specific OS call (owner 7) no one serves: EL2's NOT_SUPPORTED; one in the range
    // the host forwards for this VM (VM_SMCCC_FORWARD): the host's answer (x1 + 1).
    let r = smccc::hvc64(0xC700_0001, [0; 17])[0];
    if r != u64::MAX {
        guests::fail(format_args!("an SMCCC call no one serves returned {r:#x}"));
    }
    let mut args = [0; 17];
    args[0] = 41;
    let r = smccc::hvc64(0xC700_0100, args)[0];
    if r != 42 {
        guests::fail(format_args!("the forwarded call returned {r:#x}, not the host's 42"));
    }
    println!("guest: ok: SMCCC calls: NOT_SUPPORTED from EL2, a forwarded one answered by the host");
}

fn expect_undef(what: &str, esr: Option<u64>) {
    match esr {
        Some(e) if e >> 26 == 0 => println!("guest: ok: {what} -> UNDEF injected (ESR_EL1 {e:#x})"),
        other => guests::fail(format_args!("{what}: expected UNDEF, got {other:x?}")),
    }
}

fn secondary(_: u64) {}
