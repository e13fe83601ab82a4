//! The host's scenarios: what a (sometimes hostile) host does, and what it must observe.
//!
//! Each fails the run (QEMU exit status 1) on the first wrong observation and reports each check
//! it passed as a `host: ok: ...` line ([`ok!`]); the host ends a run that passed with the
//! number of those checks, which the QEMU scenario runner compares with the scenario's `checks`.

use crate::platform::Platform;
use crate::hyp::{self, msg_page, read_msg, write_msg};
use crate::{println, PROBE};
use core::sync::atomic::{AtomicU64, Ordering};
use shared_abi::layout::{HYP_REGION_BASE, HYP_REGION_SIZE};
use shared_abi::msg::{EchoRequest, EchoResponse, HypInfo};
use shared_abi::{HypError, HypercallId, ABI_VERSION, PAGE_SIZE};

/// Checks passed so far: the `host: ok:` lines of [`ok!`].
pub static CHECKS_PASSED: AtomicU64 = AtomicU64::new(0);

/// Reports a check passed: a `host: ok: ...` line, counted in [`CHECKS_PASSED`].
macro_rules! ok {
    ($($arg:tt)*) => {{
        $crate::scenarios::CHECKS_PASSED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        $crate::println!("host: ok: {}", format_args!($($arg)*));
    }};
}

/// Checks that `$call` fails with `$err`: a counted check ([`ok!`]).
macro_rules! expect_err {
    ($call:expr, $err:expr, $what:expr) => {{
        let r = $call;
        check!(r == Err($err), "{}: expected {:?}, got {:?}", $what, $err, r);
        ok!("{} -> {}", $what, $err.name());
    }};
}

/// Brings up every CPU through PSCI CPU_ON (EL2 intercepts it) and waits for each to report.
pub fn smp(plat: &Platform) {
    use smccc::psci;
    let me = plat.cpus[0];
    check!(
        psci::cpu_on::<smccc::Smc>(0xFF_FF, crate::secondary_entry(), 0).is_err(),
        "CPU_ON of a CPU that does not exist succeeded"
    );
    ok!("CPU_ON of a missing CPU refused");
    for cpu in 1..plat.nr_cpus {
        let r = psci::cpu_on::<smccc::Smc>(plat.cpus[cpu], crate::secondary_entry(), cpu as u64);
        check!(r.is_ok(), "CPU_ON cpu{cpu}: {r:?}");
        let mut spins = 0u64;
        while !crate::ONLINE[cpu].load(Ordering::SeqCst) {
            spins += 1;
            check!(spins < 2_000_000_000, "cpu{cpu} did not come online");
            host_kernel::arch::relax();
        }
    }
    check!(psci::cpu_on::<smccc::Smc>(me, crate::secondary_entry(), 0).is_err(), "CPU_ON of myself succeeded");
    ok!("all {} CPUs online", plat.nr_cpus);
    // Every CPU has initialised its redistributor. A hostile host turning LPIs on would have
    // the GIC itself read and write the tables at GICR_PROPBASER/GICR_PENDBASER, past the
    // stage 2: EL2 performs accesses to that page and keeps EnableLPIs at 0.
    if let Some((_, gicr)) = plat.gic {
        for cpu in 0..plat.nr_cpus {
            let (plpis, on) = crate::gic::try_enable_lpis(gicr, cpu);
            check!(plpis, "cpu{cpu}: GICR_TYPER.PLPIS is 0: this GIC has no LPIs to keep off");
            check!(!on, "cpu{cpu}: GICR_CTLR.EnableLPIs reads 1: the GIC may now write LPI tables anywhere");
        }
        ok!("GICR_CTLR.EnableLPIs stays 0: the GIC never reads or writes LPI tables");
    }
}

/// What a VMM does once at start: a message page per CPU, the pointer-authentication policy
/// if the boot arguments name one (`ptrauth=eager|lazy`), then the end of set-up.
pub fn setup(plat: &Platform) {
    for cpu in 0..plat.nr_cpus {
        let r = hyp::call(HypercallId::SetMessagePage, &[cpu as u64, msg_page(cpu) as u64]);
        check!(r.is_ok(), "SET_MESSAGE_PAGE cpu{cpu}: {r:?}");
    }
    let policy = match plat.arg("ptrauth") {
        Some("eager") => Some([shared_abi::PTRAUTH_EAGER, 0]),
        Some("lazy") => Some([shared_abi::PTRAUTH_LAZY, 64]),
        _ => None,
    };
    if let Some(p) = policy {
        let r = hyp::call(HypercallId::SetPtrauthPolicy, &p);
        check!(r.is_ok(), "SET_PTRAUTH_POLICY {p:?}: {r:?}");
        println!("host: pointer-authentication policy {}", plat.arg("ptrauth").unwrap_or("?"));
    }
    check!(hyp::call(HypercallId::FinaliseSetup, &[]).is_ok(), "FINALISE_SETUP failed");
    println!("host: set-up finalised ({} message pages)", plat.nr_cpus);
}

/// The ABI's calls, each answering as documented.
pub fn hypercalls(plat: &Platform) {
    let v = hyp::call(HypercallId::Version, &[]);
    check!(v == Ok([ABI_VERSION.encode(), 0, 0]), "VERSION: {v:x?}");
    ok!("hypervisor ABI version {}.{}", ABI_VERSION.major, ABI_VERSION.minor);
    for i in 0..100u64 {
        let r = hyp::call(HypercallId::Ping, &[i * 0x0101_0101]);
        check!(r == Ok([i * 0x0101_0101, 0, 0]), "PING {i}: {r:x?}");
    }
    ok!("100 PING round trips");
    expect_err!(hyp::call(HypercallId::HypInfo, &[]), HypError::NoMessagePage, "HYP_INFO before a message page");
    for cpu in 0..plat.nr_cpus {
        let r = hyp::call(HypercallId::SetMessagePage, &[cpu as u64, msg_page(cpu) as u64]);
        check!(r.is_ok(), "SET_MESSAGE_PAGE cpu{cpu}: {r:?}");
    }
    ok!("message pages shared");
    expect_err!(
        hyp::call(HypercallId::SetMessagePage, &[0, msg_page(1) as u64]),
        HypError::Frozen,
        "SET_MESSAGE_PAGE twice"
    );
    check!(hyp::call(HypercallId::HypInfo, &[]).is_ok(), "HYP_INFO failed");
    let info: HypInfo = read_msg(0);
    check!(info.nr_cpus as usize == plat.nr_cpus, "HYP_INFO nr_cpus {}", info.nr_cpus);
    check!(info.hyp_base == HYP_REGION_BASE && info.hyp_size == HYP_REGION_SIZE, "HYP_INFO region {info:x?}");
    check!((info.ram_base, info.ram_size) == plat.ram, "HYP_INFO RAM {info:x?}");
    ok!("HYP_INFO: {} CPUs, EL2 at {:#x}+{:#x}, host IPA {} bits", info.nr_cpus, info.hyp_base, info.hyp_size, info.host_ipa_bits);
    for n in 0..50u64 {
        let req = EchoRequest { nonce: n ^ 0xABCD, flags: 0, words: [n, n * 3, u64::MAX - n, 1 << (n % 64), 0, 7] };
        write_msg(0, &req);
        check!(hyp::call(HypercallId::Echo, &[]).is_ok(), "ECHO {n} failed");
        let resp: EchoResponse = read_msg(0);
        check!(resp == req.expected_response(), "ECHO {n}: wrong response {resp:x?}");
    }
    ok!("50 ECHO message round trips");
    write_msg(0, &EchoRequest { nonce: 1, flags: 0x80, words: [0; 6] });
    expect_err!(hyp::call(HypercallId::Echo, &[]), HypError::BadMessage, "ECHO with a reserved field set");
    check!(hyp::call(HypercallId::FinaliseSetup, &[]).is_ok(), "FINALISE_SETUP failed");
    ok!("set-up finalised");
    expect_err!(
        hyp::call(HypercallId::SetMessagePage, &[0, msg_page(0) as u64 + PAGE_SIZE * 8]),
        HypError::SetupFinalised,
        "SET_MESSAGE_PAGE after finalise"
    );
    expect_err!(hyp::call(HypercallId::FinaliseSetup, &[]), HypError::SetupFinalised, "FINALISE_SETUP twice");
    check!(hyp::call(HypercallId::HypInfo, &[]).is_ok(), "HYP_INFO after finalise");
    check!(read_msg::<HypInfo>(0).finalised == 1, "HYP_INFO does not report finalised");
}

/// IDs and register uses outside the ABI.
pub fn unknown_hypercall() {
    for id in [0xC600_0FFFu64, 0xC6FF_FFFF, 0x8600_0000, 0x0, 0xFFFF_FFFF, 1 << 32 | HypercallId::Version as u64] {
        let r = hyp::raw(id, &[]);
        check!(r == Err(HypError::NotSupported), "unknown ID {id:#x}: {r:?}");
        ok!("unknown hypercall {id:#x} -> NOT_SUPPORTED (-1)");
    }
    let r = hyp::hvc_imm1(HypercallId::Version as u64);
    check!(r == HypError::NotSupported.to_x0(), "HVC #1: {r:#x}");
    ok!("HVC #1 -> NOT_SUPPORTED");
    // Host SMCs: an allow-list reaches firmware; FF-A, SiP and the rest are refused by EL2.
    for id in [0x8400_0063u32, 0xC400_0070, 0xC200_0000, 0x8300_0000, smccc::psci::PSCI_CPU_FREEZE] {
        let r = smccc::smc64(id, [0; 17])[0];
        check!(r == u64::MAX, "SMC {id:#x}: {r:#x}");
        ok!("SMC {id:#x} -> NOT_SUPPORTED (-1)");
    }
    let v = smccc::smc64(smccc::psci::PSCI_VERSION, [0; 17])[0];
    check!(v >> 16 >= 1 && v >> 32 == 0, "PSCI_VERSION by SMC: {v:#x}");
    ok!("PSCI_VERSION reaches firmware");
    expect_err!(hyp::call(HypercallId::Version, &[1]), HypError::InvalidArgument, "VERSION with x1 set");
    expect_err!(hyp::call(HypercallId::Ping, &[1, 0, 0, 0, 0, 0, 9]), HypError::InvalidArgument, "PING with x7 set");
    expect_err!(hyp::call(HypercallId::TestFault, &[0]), HypError::NotSupported, "TEST_FAULT on a release EL2");
    check!(hyp::call(HypercallId::Ping, &[5]) == Ok([5, 0, 0]), "EL2 stopped serving");
    ok!("EL2 still serving");
}

const EC_DABT_CUR: u64 = 0x25;
const EC_IABT_CUR: u64 = 0x21;
const FSC_SEA: u64 = 0x10;

/// Reads, writes and executes EL2's memory: every access must come back as an injected
/// synchronous external abort, and EL2 must go on serving.
pub fn host_reads_el2_memory() {
    let targets = [HYP_REGION_BASE, HYP_REGION_BASE + 0x1238, HYP_REGION_BASE + HYP_REGION_SIZE - 8];
    for a in targets {
        // SAFETY: deliberately touching memory the host does not own: the fault is caught by
        // the probe and the access skipped; no value is used.
        let r = PROBE.expect(|| unsafe { core::ptr::read_volatile(a as *const u64); });
        check!(matches!(r, Some((esr, far)) if (esr >> 26) & 0x3F == EC_DABT_CUR && esr & 0x3F == FSC_SEA && far == a),
            "read of EL2 memory {a:#x}: {r:x?}");
        ok!("read of EL2 memory at {a:#x} -> synchronous external abort");
        // SAFETY: as above, for a write that EL2 must stop.
        let r = PROBE.expect(|| unsafe { core::ptr::write_volatile(a as *mut u64, 0xBAD) });
        check!(matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == EC_DABT_CUR && esr & (1 << 6) != 0 && esr & 0x3F == FSC_SEA),
            "write to EL2 memory {a:#x}: {r:x?}");
        ok!("write to EL2 memory at {a:#x} -> synchronous external abort");
    }
    let target = HYP_REGION_BASE;
    // SAFETY: branching into EL2's memory: the fetch faults before any instruction runs, and
    // the probe resumes at the return address in x30.
    let r = PROBE.expect(|| unsafe { host_kernel::arch::call_address(target) });
    check!(matches!(r, Some((esr, far)) if (esr >> 26) & 0x3F == EC_IABT_CUR && esr & 0x3F == FSC_SEA && far == target),
        "execute of EL2 memory: {r:x?}");
    ok!("execute of EL2 memory -> instruction abort");
    // The pages just outside EL2's region are the host's.
    for a in [HYP_REGION_BASE - 8, HYP_REGION_BASE + HYP_REGION_SIZE] {
        // SAFETY: host-owned RAM around EL2's region (the DTB's padding and the host image).
        let r = PROBE.expect(|| unsafe { core::ptr::read_volatile(a as *const u64); });
        check!(r.is_none(), "host memory at {a:#x} faulted: {r:x?}");
    }
    ok!("memory next to EL2's region is readable");
    check!(hyp::call(HypercallId::Ping, &[42]) == Ok([42, 0, 0]), "EL2 stopped serving after the aborts");
    ok!("EL2 still serving after host aborts");
}

/// The devices a hostile host would use to write memory past stage 2 (QEMU `virt`'s fw_cfg DMA,
/// virtio-mmio, the ITS frame, the flash) come back as injected synchronous external aborts,
/// and PCI functions never get bus mastering: EL2 performs configuration accesses with
/// `Command.BusMasterEnable` cleared. The devices the host needs still work.
pub fn host_device_space(plat: &Platform) {
    let sea = |r: Option<(u64, u64)>, a: u64, write: bool| matches!(r, Some((esr, far)) if (esr >> 26) & 0x3F == EC_DABT_CUR && esr & 0x3F == FSC_SEA && far == a && (esr & (1 << 6) != 0) == write);
    // fw_cfg's DMA address register (big-endian descriptor address): the review's way in.
    let dma = 0x0902_0010u64;
    // SAFETY: a store the probe expects to fault; EL2 must stop it before the device sees it.
    let r = PROBE.expect(|| unsafe { core::ptr::write_volatile(dma as *mut u64, (0x4000_0000u64).to_be()) });
    check!(sea(r, dma, true), "store to fw_cfg's DMA register {dma:#x}: {r:x?}");
    ok!("fw_cfg DMA register store -> synchronous external abort");
    for (a, what) in [(0x0902_0000u64, "fw_cfg data"), (0x0A00_0000, "virtio-mmio transport 0"), (0x0A00_3E00, "virtio-mmio transport 31"), (0x0808_0000, "the ITS frame"), (0x0000_0000, "the flash")] {
        // SAFETY: a load the probe expects to fault; no value is used.
        let r = PROBE.expect(|| unsafe { core::ptr::read_volatile(a as *const u32); });
        check!(sea(r, a, false), "read of {what} at {a:#x}: {r:x?}");
        ok!("{what} at {a:#x} -> synchronous external abort");
    }
    // PCI: every function on bus 0 keeps bus mastering off, whatever the host writes.
    let Some(ecam) = plat.ecam else {
        check!(false, "no PCI host bridge in the device tree");
        return;
    };
    let mut functions = 0;
    for dev in 0..32u64 {
        let cfg = ecam + (dev << 15);
        // SAFETY: ECAM configuration space of bus 0, device `dev`, function 0 (from the device
        // tree); EL2 performs the access. Reading the IDs has no side effects.
        let id = unsafe { core::ptr::read_volatile(cfg as *const u32) };
        if id == 0xFFFF_FFFF {
            continue;
        }
        functions += 1;
        let command = (cfg + 4) as *mut u16;
        // SAFETY: the Command register of the function just found: memory decoding and bus
        // mastering asked for, 16 bits, then 32 bits with Status, then the low byte alone.
        let (after16, after32, after8) = unsafe {
            let before = core::ptr::read_volatile(command);
            core::ptr::write_volatile(command, before | 0x6);
            let a16 = core::ptr::read_volatile(command);
            core::ptr::write_volatile(command as *mut u32, (before | 0x6) as u32);
            let a32 = core::ptr::read_volatile(command);
            core::ptr::write_volatile(command as *mut u8, (before | 0x6) as u8);
            let a8 = core::ptr::read_volatile(command);
            (a16, a32, a8)
        };
        check!(after16 & 0x6 == 0x2 && after32 & 0x6 == 0x2 && after8 & 0x6 == 0x2,
            "PCI {dev:02x}.0 ({id:#010x}): Command after asking for bus mastering: {after16:#x} {after32:#x} {after8:#x}");
    }
    check!(functions > 0, "no PCI function on bus 0");
    ok!("{functions} PCI function(s): memory decoding on, bus mastering refused (16-, 32- and 8-bit writes)");
    // SAFETY: a 64-bit load of configuration space, which EL2 refuses (ECAM is 32 bits wide).
    let r = PROBE.expect(|| unsafe { core::ptr::read_volatile(ecam as *const u64); });
    check!(sea(r, ecam, false), "64-bit ECAM read: {r:x?}");
    ok!("64-bit configuration read -> synchronous external abort");
    check!(hyp::call(HypercallId::Ping, &[7]) == Ok([7, 0, 0]), "EL2 stopped serving after the aborts");
    ok!("EL2 still serving");
}

/// Hostile arguments to the one call that takes addresses.
pub fn hostile_arguments(plat: &Platform) {
    let page = msg_page(0) as u64;
    let (ram, ram_size) = plat.ram;
    let cases: [(&str, u64, u64, HypError); 8] = [
        ("CPU index out of range", plat.nr_cpus as u64, page, HypError::InvalidArgument),
        ("CPU index all-ones", u64::MAX, page, HypError::InvalidArgument),
        ("unaligned page", 0, page + 8, HypError::NotAligned),
        ("page below RAM", 0, ram - PAGE_SIZE, HypError::OutOfRange),
        ("page past RAM", 0, ram + ram_size, HypError::OutOfRange),
        ("last page of the address space", 0, !(PAGE_SIZE - 1), HypError::OutOfRange),
        ("EL2's first page", 0, HYP_REGION_BASE, HypError::NotOwned),
        ("EL2's last page", 0, HYP_REGION_BASE + HYP_REGION_SIZE - PAGE_SIZE, HypError::NotOwned),
    ];
    for (what, cpu, pa, err) in cases {
        expect_err!(hyp::call(HypercallId::SetMessagePage, &[cpu, pa]), err, what);
    }
    expect_err!(hyp::call(HypercallId::SetMessagePage, &[0, page, 1]), HypError::InvalidArgument, "x3 set");
    check!(hyp::call(HypercallId::SetMessagePage, &[0, page]).is_ok(), "a valid SET_MESSAGE_PAGE after bad ones");
    expect_err!(hyp::call(HypercallId::SetMessagePage, &[1, page]), HypError::NotOwned, "the same page for a second CPU");
    check!(hyp::call(HypercallId::Ping, &[1]) == Ok([1, 0, 0]), "EL2 stopped serving");
    ok!("EL2 still serving after hostile arguments");
}

/// Test EL2 image only: EL2 takes an unexpected exception on CPU 1. It must report it and end
/// the whole machine as a failure at once (pvpanic: QEMU exits 1), so this scenario's own end
/// is never reached: if it is, the host fails it.
pub fn el2_fatal(plat: &Platform) {
    use crate::probe::{FAULT_REQUEST, FAULT_RETURNED};
    check!(plat.nr_cpus >= 2, "el2-fatal-ends-the-run needs 2 CPUs");
    smp(plat);
    FAULT_REQUEST.store(1, Ordering::SeqCst);
    // Wakes the other CPUs from their idle `wfe`.
    host_kernel::arch::sev();
    let mut spins = 0u64;
    while FAULT_REQUEST.load(Ordering::SeqCst) != u64::MAX {
        spins += 1;
        check!(spins < 2_000_000_000, "cpu1 did not take the request");
        host_kernel::arch::relax();
    }
    // Plenty of time for cpu1 to trap and EL2 to end the machine.
    for i in 0..2_000_000u64 {
        check!(!FAULT_RETURNED.load(Ordering::SeqCst), "TEST_FAULT returned: EL2 did not stop");
        let _ = hyp::call(HypercallId::Ping, &[i]);
    }
    crate::fail::fail(format_args!("EL2 took a fatal exception on cpu1 and the machine is still running"));
}
