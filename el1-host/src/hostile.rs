//! The hostile host (`scenario=hostile-host seed=N calls=N`, test EL2 image): seeded, reproducible
//! hypercalls mixing random values, boundary values (0, all-ones, unaligned and page-crossing
//! ranges, the last page of RAM, EL2's own addresses, the message pages, stale handles) and
//! valid-but-ill-timed calls (destroy while a vCPU runs on the other CPU, registers after a
//! protected VM ran, double donation), with EL2's invariant checker every 1,000 calls. Every
//! call must return success or a documented error.
//!
//! Every register the host can set is an input to EL2, and some only matter when the vCPU
//! runs (`PSTATE` decides where the world switch's `ERET` lands), so every `VCPU_SET_REG` is
//! followed by a `VCPU_RUN` of that vCPU, whatever the set returned. The timer registers of
//! ABI 3.3 (`CNTVOFF_EL2`, `CNTP_CTL_EL0`, `CNTP_CVAL_EL0`, and `CNTV_*`) are among them, with
//! hostile values (all-ones, `ISTATUS` and RES0 bits).
//!
//! Where the ABI says exactly what EL2 must answer, the answer is checked, not only counted:
//! `VCPU_SET_IRQ` fields (vINTID, priority bits, group, state, `EOI_NOTIFY`, `HW` with any
//! pINTID, every undefined bit) against a model written from docs/ABI.md, the list registers
//! `VCPU_IRQ_STATE` reports (well-formed, each vINTID once), `VCPU_STATS`' total, a timer
//! register read back after a write; and every 5,000 calls a *timer round* runs a small VM with
//! hostile timer values before and after its first run, checking the exit record's deadlines
//! and the first-run rules (`Frozen`, `Denied` once a protected VM has run). Every random call
//! (and the run after a register set) also sets `x8..=x30` to values of its own and checks
//! that `x4..=x30` come back unchanged.

use crate::platform::Platform;
use crate::{gic, hyp, println, vmm};
use core::sync::atomic::Ordering;
use shared_abi::layout::{run_status, HYP_REGION_BASE, HYP_REGION_SIZE};
use shared_abi::msg::{exit, irq, stats, vm_flags, VcpuExit, VcpuStats, VgicState, VmCreate};
use shared_abi::{reg, HypError, HypercallId, PAGE_SIZE};

/// Host memory the hostile host may give away: 64 MiB nobody else uses.
const SANDBOX: u64 = 0x6000_0000;
/// Host memory for the ill-timed VM, reused every round.
const ILL_TIMED_BACKING: u64 = 0x5800_0000;
/// The timer round's page (every round's VM is destroyed before the next).
const TIMER_BACKING: u64 = 0x5FFF_F000;
const SANDBOX_PAGES: u64 = 16 * 1024;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

struct Counts {
    ok: u64,
    errors: [u64; 32],
}

fn record(c: &mut Counts, r: &Result<[u64; 3], HypError>) {
    match r {
        Ok(_) => c.ok += 1,
        Err(e) => c.errors[(-(*e as i64)) as usize % 32] += 1,
    }
}

/// Checks EL2's invariants; returns the number of violations (0 or 1).
pub(crate) fn invariants() -> u64 {
    let r = hyp::call(HypercallId::TestCheckInvariants, &[]);
    match r {
        Ok([pages, _, _]) if pages != u64::MAX => 0,
        Ok([_, code, addr]) => {
            println!("host: invariant violation: code {code} at {addr:#x}");
            1
        }
        Err(e) => crate::fail::fail(format_args!("the invariant checker is not there ({e:?}): use the test EL2 image")),
    }
}

/// Runs the hostile host.
pub fn run(plat: &Platform) {
    let seed: u64 = plat.arg("seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let calls: u64 = plat.arg("calls").and_then(|s| s.parse().ok()).unwrap_or(100_000);
    // Replaying a failure: every call from this one on is printed before it is made.
    let trace_from: u64 = plat.arg("trace-from").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    println!("host: hostile host: seed {seed}, {calls} calls");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (ram_base, ram_size) = plat.ram;
    let ram_end = ram_base + ram_size;
    let msg0 = crate::hyp::msg_page(0) as u64;
    let msg1 = crate::hyp::msg_page(1) as u64;
    let sandbox_page = |rng: &mut Rng| SANDBOX + rng.below(SANDBOX_PAGES) * PAGE_SIZE;
    let mut handles: [u64; 24] = [0; 24]; // live and stale
    let mut c = Counts { ok: 0, errors: [0; 32] };
    let mut violations = invariants();
    let mut checks = 1u64;
    let (mut runs_after_set, mut runs_skipped) = (0u64, 0u64);
    // VMs given RAM at IPA 0 (a ring far larger than the 16 VMs alive at once).
    let (mut rams_at_zero, mut zeros) = ([0u64; 64], 0usize);
    let ids = [
        HypercallId::Version,
        HypercallId::Ping,
        HypercallId::SetMessagePage,
        HypercallId::FinaliseSetup,
        HypercallId::HypInfo,
        HypercallId::Echo,
        HypercallId::VmCreate,
        HypercallId::VmDestroy,
        HypercallId::VmAddMemory,
        HypercallId::VcpuSetReg,
        HypercallId::VcpuGetReg,
        HypercallId::VcpuRegList,
        HypercallId::VcpuRun,
        HypercallId::VcpuStats,
        HypercallId::SetPtrauthPolicy,
        HypercallId::VcpuSetIrq,
        HypercallId::VcpuIrqState,
        HypercallId::VmMeasurement,
        HypercallId::VmMmioGuard,
        HypercallId::VmSmcccForward,
        HypercallId::VmMmioCoalesce,
        HypercallId::VmTopupTables,
        HypercallId::VcpuLinkVtimer,
        HypercallId::VcpuLinkSgis,
    ];
    let regs = [
        reg::PC,
        reg::x(0),
        reg::PSTATE,
        reg::SYSREGS[12].1,
        reg::fp_vreg(3),
        reg::FW_PSCI_VERSION,
        reg::MPIDR_EL1,
        reg::sysreg(3, 0, 0, 4, 0),
        0,
        u64::MAX,
        reg::CNTVOFF_EL2,
        reg::CNTP_CTL_EL0,
        reg::CNTP_CVAL_EL0,
        CNTV_CTL_EL0,
        CNTV_CVAL_EL0,
    ];
    let mut wrong = Wrong(0);
    let mut timer_rounds = 0u64;
    for n in 0..calls {
        if n % 1000 == 999 {
            violations += invariants();
            checks += 1;
        }
        if n % 20_000 == 19_999 {
            println!("host: hostile host: {} calls done, {} succeeded", n + 1, c.ok);
        }
        let handle = |rng: &mut Rng, h: &[u64; 24]| match rng.below(4) {
            0 => rng.next(),
            1 => 0,
            _ => h[rng.below(24) as usize],
        };
        let addr = |rng: &mut Rng| match rng.below(12) {
            0 => 0,
            1 => !0xFFF,
            2 => rng.next(),
            3 => sandbox_page(rng) + 8, // unaligned
            4 => ram_end - PAGE_SIZE,   // last page of RAM
            5 => ram_end,
            6 => HYP_REGION_BASE + rng.below(HYP_REGION_SIZE / PAGE_SIZE) * PAGE_SIZE,
            7 => [msg0, msg1][rng.below(2) as usize],
            8 => ram_base - PAGE_SIZE,
            _ => sandbox_page(rng),
        };
        // Mostly small runs: a protected VM's pages are scrubbed at destroy, so a stream of
        // 64 MiB donations would spend the run zeroing memory.
        let pages = |rng: &mut Rng| match rng.below(64) {
            0..=3 => 0,
            4..=7 => u64::MAX >> 12,
            8..=11 => rng.next(),
            12 => SANDBOX_PAGES,
            _ => 1 + rng.below(32),
        };
        let id = if rng.below(20) == 0 { 0xC600_0000 + rng.below(0x40) } else { rng.pick(&ids) as u64 };
        let mut x = [0u64; 7];
        match HypercallId::try_from(id) {
            Ok(HypercallId::VmCreate) => {
                let flags = [0, vm_flags::PROTECTED, vm_flags::MTE, vm_flags::PTRAUTH, vm_flags::HOST_PMU | vm_flags::PROTECTED, vm_flags::SVE | vm_flags::PROTECTED, rng.next()];
                let r = rng.next();
                let req = VmCreate {
                    nr_vcpus: rng.pick(&[0, 1, 2, 8, 9, u32::MAX]),
                    ipa_bits: rng.pick(&[0, 31, 32, 36, 40, 41, 64]),
                    flags: rng.pick(&flags),
                    // SVE lengths: none, valid ones, not a length, beyond the architecture.
                    sve_vl: rng.pick(&[0, 0, 16, 64, 256, 24, 272, r]),
                    reserved: if rng.below(10) == 0 { 1 } else { 0 },
                };
                crate::hyp::write_msg(0, &req);
            }
            Ok(HypercallId::VmDestroy) => x[0] = handle(&mut rng, &handles),
            Ok(HypercallId::VmAddMemory) => {
                x[0] = handle(&mut rng, &handles);
                x[1] = addr(&mut rng);
                let (r1, r2) = (rng.next(), 0x4000_0000 + rng.below(4096) * PAGE_SIZE);
                x[2] = rng.pick(&[0x4000_0000, 0, 1 << 36, (1 << 36) - PAGE_SIZE, r1, r2]);
                x[3] = pages(&mut rng);
                // What the pages hold, for the measurement (ABI 4.0): mostly the defined flags.
                let r3 = rng.next();
                x[4] = rng.pick(&[0, 0, shared_abi::measure::add_flags::MEASURE, shared_abi::measure::add_flags::HANDOVER, r3]);
                // Keep sandbox donations inside the sandbox: the host must not give away its
                // own code by accident (that would break the host, not EL2).
                if (ram_base..ram_end).contains(&x[1]) && !(SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) && x[1] != ram_end - PAGE_SIZE {
                    x[3] = x[3].max(u64::MAX >> 12);
                } else if (SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) {
                    x[3] = x[3].min((SANDBOX + SANDBOX_PAGES * PAGE_SIZE - x[1]) / PAGE_SIZE + rng.below(2));
                }
            }
            Ok(HypercallId::VmTopupTables) => {
                // Table pages: EL2's, the message pages, pages given to VMs or as tables
                // already, past RAM, too many.
                x[0] = handle(&mut rng, &handles);
                x[1] = addr(&mut rng);
                x[2] = pages(&mut rng);
                // As for VM_ADD_MEMORY: sandbox pages only, never the host's own.
                if (ram_base..ram_end).contains(&x[1]) && !(SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) && x[1] != ram_end - PAGE_SIZE {
                    x[2] = x[2].max(u64::MAX >> 12);
                } else if (SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) {
                    x[2] = x[2].min((SANDBOX + SANDBOX_PAGES * PAGE_SIZE - x[1]) / PAGE_SIZE + rng.below(2));
                }
            }
            Ok(HypercallId::VcpuSetReg) | Ok(HypercallId::VcpuGetReg) => {
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 1, 7, 8, u64::MAX]);
                x[2] = rng.pick(&regs);
                if id == HypercallId::VcpuSetReg as u64 {
                    let r = rng.next();
                    x[3] = rng.pick(&[0, r, 0x4000_0000, u64::MAX]);
                    x[4] = rng.pick(&[0, 0, 1]);
                    if TIMER_REGS.contains(&x[2]) && rng.below(2) == 0 {
                        // ENABLE, IMASK, ISTATUS, a RES0 bit, the top bit; a count near now.
                        x[3] = rng.pick(&[1, 2, 3, 4, 5, 7, 8, 1 << 63, u64::MAX, gic::counter(), 0]);
                    }
                    if x[2] == CNTV_CVAL_EL0 {
                        x[3] &= QEMU_SAFE_CVAL;
                    }
                    if x[2] == reg::PSTATE && rng.below(2) == 0 {
                        // Modes that must never be entered: EL2h, EL2t, EL1h with IL, AArch32
                        // usr/svc/hyp, and one undefined bit; then the guest's own modes.
                        x[3] = rng.pick(&[0x3C9, 0x3C8, 0x3C5 | 1 << 20, 0x1D0, 0x1D3, 0x1DA, 0x3C5 | 1 << 36, 0x3C5, 0x3C4, 0]);
                    }
                }
            }
            Ok(HypercallId::VmMeasurement) => x[0] = handle(&mut rng, &handles),
            Ok(HypercallId::VmMmioGuard) => {
                x[0] = handle(&mut rng, &handles);
                let r = rng.next();
                x[1] = rng.pick(&[0x0900_0000, 0x0900_0008, 0x4000_0000, 1 << 36, r]);
            }
            Ok(HypercallId::VmSmcccForward) => {
                // Before and after first runs (Frozen), overlapping EL2's ranges and each other,
                // empty, overflowing, past capacity.
                x[0] = handle(&mut rng, &handles);
                let r = rng.next();
                let near = 0xC700_0000 + rng.below(16);
                x[1] = rng.pick(&[0, 0xC700_0000, near, 0x8400_0000, 0xC600_0000, 0xFFFF_FFFF, 1 << 32, r & 0xFFFF_FFFF, r]);
                x[2] = rng.pick(&[0, 1, 2, 16, 0x1_0000, u64::MAX, r]);
            }
            Ok(HypercallId::VmMmioCoalesce) => {
                // Before and after first runs (Frozen), over the UART (the guests' MMIO), RAM,
                // the top of the address space; removed, a page, past a page, wrapping.
                x[0] = handle(&mut rng, &handles);
                let r = rng.next();
                x[1] = rng.pick(&[0x0900_0000, 0x0A00_0000, 0x4000_0000, u64::MAX - 3, r]);
                x[2] = rng.pick(&[0, 1, 4, 4096, 4097, u64::MAX, r]);
            }
            Ok(HypercallId::VcpuLinkVtimer) => {
                // Linked and unlinked around runs and VCPU_SET_IRQ of vINTID 27; priorities the
                // CPU lacks, Group 0, every undefined bit, a state, HW.
                use shared_abi::msg::irq;
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 0, 1, 7, 8, u64::MAX]);
                x[2] = rng.pick(&[0, 1, 1, 2, u64::MAX]);
                let r = rng.next();
                x[3] = rng.pick(&[0x80 | irq::GROUP1 as u64, 0xF8 | irq::GROUP1 as u64, 0, 0x81, 0x80 | irq::HW as u64, 0x80 | 1 << irq::STATE_SHIFT, 1 << 40, r & 0xFFFF, r]);
            }
            Ok(HypercallId::VcpuLinkSgis) => {
                // Linked and unlinked around runs; masks past 32 bits, priorities the CPU lacks.
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 0, 1, 7, 8, u64::MAX]);
                x[2] = rng.pick(&[0, 1, 1, 2, u64::MAX]);
                let r = rng.next();
                x[3] = rng.pick(&[0xFFFF_FFFF, 0xFFFF, 0, 1 << 32, r & 0xFFFF_FFFF, r]);
                x[4] = rng.pick(&[0x8080_8080_8080_8080, 0, 0x0101, r]);
                x[5] = rng.pick(&[0x8080_8080_8080_8080, 0, 1 << 56, r]);
            }
            Ok(HypercallId::VcpuSetIrq) | Ok(HypercallId::VcpuIrqState) => {
                // List-register requests: valid ones (which fill a vCPU's list registers, then
                // the next runs load them) mixed with every kind of hostile field.
                use shared_abi::msg::irq;
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 0, 1, 7, 8, u64::MAX]);
                if id == HypercallId::VcpuSetIrq as u64 {
                    let (r, small) = (rng.next(), rng.below(1024));
                    x[2] = rng.pick(&[0, 15, 16, 27, 31, 32, 1019, 1020, 1021, 1022, 1023, 1024, 8192, 1 << 32, u64::MAX, small, small, r]);
                    let level = rng.below(2) == 0;
                    let ok = irq::config(0x80, true, irq::PENDING, level) as u64;
                    x[3] = match rng.below(4) {
                        0 => rng.pick(&[ok, ok | irq::HW as u64 | 27 << irq::PINTID_SHIFT, ok | 1, ok & !(irq::STATE_MASK as u64), ok | 1 << 40, r, r & 0xFFFF_FFFF]),
                        _ => irq_config(&mut rng),
                    };
                    if rng.below(32) == 0 {
                        // An argument register the call does not use.
                        x[4] = 1;
                    }
                }
            }
            Ok(HypercallId::VcpuRegList) | Ok(HypercallId::VcpuRun) | Ok(HypercallId::VcpuStats) => {
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 0, 1, 9, u64::MAX]);
            }
            Ok(HypercallId::SetMessagePage) => {
                x[0] = rng.pick(&[0, 1, 2, u64::MAX]);
                x[1] = addr(&mut rng);
            }
            _ => {
                for v in x.iter_mut().take(rng.below(8) as usize) {
                    *v = rng.next();
                }
            }
        }
        // See the run after a register set, below.
        if id == HypercallId::VcpuRun as u64 && x[0] != 0 && rams_at_zero.contains(&x[0]) {
            runs_skipped += 1;
            continue;
        }
        if n >= trace_from {
            println!("host: hostile host: call {n}: {id:#x} {x:x?}");
        }
        let r = raw_all_gprs(id, &x, n as u64, &mut wrong);
        if let (Ok(HypercallId::VmCreate), Ok([h, _, _])) = (HypercallId::try_from(id), r) {
            handles[rng.below(24) as usize] = h; // replaced handles stay alive: fine
        }
        record(&mut c, &r);
        check_answer(id, &x, &r, &mut wrong);
        if let (Ok(HypercallId::VmAddMemory), Ok(_), 0) = (HypercallId::try_from(id), r, x[2]) {
            rams_at_zero[zeros % rams_at_zero.len()] = x[0];
            zeros += 1;
        }
        if id == HypercallId::VcpuSetReg as u64 {
            // A VM with zeroed RAM at IPA 0 loops for ever at EL1 from reset (PC 0 is UDF, the
            // vector at VBAR_EL1 0 + 0x200 is UDF again) without ever exiting to EL2. Nothing
            // can take the CPU back from such a guest until the host takes interrupts, so those
            // VMs are not run; every other VM is (a fresh one dies at its first run: PC 0 is
            // not RAM).
            if x[0] != 0 && rams_at_zero.contains(&x[0]) {
                runs_skipped += 1;
            } else {
                let run = raw_all_gprs(HypercallId::VcpuRun as u64, &[x[0], x[1], 0, 0, 0, 0, 0], n as u64, &mut wrong);
                record(&mut c, &run);
                runs_after_set += 1;
            }
        }
        // Ill-timed: now and then, run a VM on CPU 1 and destroy it from here meanwhile.
        if n % 5000 == 2500 {
            ill_timed(plat, &mut c);
        }
        if n % 5000 == 1250 {
            timer_round(timer_rounds, &mut rng, &mut wrong);
            timer_rounds += 1;
        }
    }
    for h in handles {
        let _ = hyp::call(HypercallId::VmDestroy, &[h]);
    }
    violations += invariants();
    checks += 1;
    println!(
        "host: hostile host: {calls} calls and {runs_after_set} runs after a register set ({runs_skipped} skipped: RAM at IPA 0), {} succeeded",
        c.ok
    );
    for e in HypError::ALL {
        let n = c.errors[(-(*e as i64)) as usize % 32];
        if n > 0 {
            println!("host:   {:>16}: {n}", e.name());
        }
    }
    check!(hyp::call(HypercallId::Ping, &[9]) == Ok([9, 0, 0]), "EL2 stopped serving");
    println!("host: timer rounds: {timer_rounds}, answers other than documented: {}", wrong.0);
    check!(wrong.0 == 0, "EL2 answered {} call(s) otherwise than documented", wrong.0);
    println!("host: invariant checks: {checks}, invariant violations: {violations}");
    check!(violations == 0, "invariant violations");
}

/// `CNTV_CTL_EL0` and `CNTV_CVAL_EL0` (EL1/EL0 system registers of the register ABI).
const CNTV_CTL_EL0: u64 = reg::sysreg(3, 3, 14, 3, 1);
const CNTV_CVAL_EL0: u64 = reg::sysreg(3, 3, 14, 3, 2);
/// `CNTV_CVAL_EL0` values the hostile host writes stay below 2^62: QEMU 7.2's generic timer
/// livelocks its main loop (the whole machine stops, its monitor and `SIGTERM` included) when an
/// enabled virtual timer's `CVAL + CNTVOFF` wraps past 2^64 while `CNTVCT` is below `CVAL` (the
/// next deadline it computes is then in the past, for ever). Real hardware has no such limit and
/// EL2 passes any value; the guest-side case is scenario `guest-storm-cval-max`.
const QEMU_SAFE_CVAL: u64 = (1 << 62) - 1;
/// The timer registers of ABI 3.3 and the virtual timer's.
const TIMER_REGS: [u64; 5] = [reg::CNTVOFF_EL2, reg::CNTP_CTL_EL0, reg::CNTP_CVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0];
/// Priority bits QEMU's virtual CPU interface implements (`ICH_VTR_EL2.PRIbits` + 1 = 5): the
/// low 3 bits of a `VCPU_SET_IRQ` priority must be zero. (The host cannot read `ICH_VTR_EL2`;
/// its VMM makes the same assumption.)
const UNIMPLEMENTED_PRIORITY_BITS: u64 = 0x7;

/// The call `id` with arguments `x`, through [`host_kernel::arch::hvc0_all_gprs`]: also reports
/// each register past `x3` that EL2 did not give back as the host left it (docs/ABI.md,
/// *Convention*). Call `n` fills `x8..=x30` with its own values.
fn raw_all_gprs(id: u64, x: &[u64; 7], n: u64, wrong: &mut Wrong) -> Result<[u64; 3], HypError> {
    let fill = 0x5A00_0000_0000_0000 | n << 8;
    let regs = host_kernel::arch::hvc0_all_gprs(id, *x, fill);
    if let Some(i) = (4..31).find(|&i| regs[i] != if i < 8 { x[i - 1] } else { fill + i as u64 }) {
        wrong.report(format_args!("call {id:#x} {x:x?}: x{i} came back as {:#x}", regs[i]));
    }
    shared_abi::decode_result([regs[0], regs[1], regs[2], regs[3]])
}

/// Calls EL2 answered otherwise than docs/ABI.md says (each printed, the first few).
struct Wrong(u64);
impl Wrong {
    fn report(&mut self, what: core::fmt::Arguments<'_>) {
        if self.0 < 10 {
            println!("host: hostile host: wrong answer: {what}");
        }
        self.0 += 1;
    }
}

/// A `VCPU_SET_IRQ` configuration built field by field: any priority (some with bits QEMU
/// lacks), either group, any state (0 included), `EOI_NOTIFY` or not, now and then `HW`, a
/// pINTID, or one undefined bit.
fn irq_config(rng: &mut Rng) -> u64 {
    let any = rng.below(256);
    let priority = rng.pick(&[0x80, 0xF8, 0, 0x08, 0x81, 0x82, 0x84, 0xFF, any]);
    let mut c = priority | rng.below(2) << 8 | rng.below(4) << 9 | rng.below(2) << 11;
    if rng.below(8) == 0 {
        c |= 1 << 12;
    }
    if rng.below(8) == 0 {
        let any = rng.below(0x2000);
        c |= rng.pick(&[27, 25, 30, 1, 0x1FFF, any]) << 16;
    }
    if rng.below(8) == 0 {
        let undefined = [13u64, 14, 15, 29, 30, 31, 32, 40, 48, 63];
        c |= 1 << rng.pick(&undefined);
    }
    c
}

/// What EL2 must answer a `VCPU_SET_IRQ` of `vintid` with `config`, whatever the VM and vCPU:
/// its fields are checked before anything else (docs/ABI.md, "The virtual GIC CPU
/// interface"; written from that table, not from `shared_abi::msg::irq`). `None`: the fields
/// are valid.
fn set_irq_field_error(vintid: u64, config: u64) -> Option<HypError> {
    // 7:0 priority, 8 group 1, 10:9 state, 11 EOI_NOTIFY, 12 HW, 28:16 pINTID.
    const DEFINED: u64 = 0xFF | 1 << 8 | 3 << 9 | 1 << 11 | 1 << 12 | 0x1FFF << 16;
    let state = (config >> 9) & 3;
    if vintid > 1019 || config & !DEFINED != 0 || state == 0 || config & UNIMPLEMENTED_PRIORITY_BITS != 0 {
        return Some(HypError::InvalidArgument);
    }
    if config & 1 << 12 != 0 {
        return Some(HypError::Denied);
    }
    if config & 0x1FFF << 16 != 0 {
        return Some(HypError::InvalidArgument);
    }
    None
}

/// Checks an answer the ABI pins down exactly (see the module header); other answers are only
/// counted.
fn check_answer(id: u64, x: &[u64; 7], r: &Result<[u64; 3], HypError>, wrong: &mut Wrong) {
    match HypercallId::try_from(id) {
        Ok(HypercallId::VcpuSetIrq) => {
            let want = if x[4..].iter().any(|&v| v != 0) {
                Some(HypError::InvalidArgument)
            } else {
                set_irq_field_error(x[2], x[3])
            };
            match (want, r) {
                (Some(e), _) if *r != Err(e) => wrong.report(format_args!("VCPU_SET_IRQ vINTID {:#x} config {:#x}: {r:?}, documented {e:?}", x[2], x[3])),
                (None, _) if x[1] >= 8 && *r != Err(HypError::InvalidArgument) => {
                    wrong.report(format_args!("VCPU_SET_IRQ to vCPU {}: {r:?}, documented InvalidArgument", x[1]))
                }
                (None, Ok([lr, 0, 0])) if *lr < 16 => {}
                (None, Ok(v)) => wrong.report(format_args!("VCPU_SET_IRQ: list register {v:?}")),
                (None, Err(HypError::Busy | HypError::InvalidHandle | HypError::InvalidArgument | HypError::NoCapacity)) => {}
                // vINTID 27 while the vCPU's virtual timer is linked (VCPU_LINK_VTIMER).
                (None, Err(HypError::Denied)) if x[2] == shared_abi::msg::irq::VTIMER_PPI as u64 => {}
                (None, Err(e)) => wrong.report(format_args!("VCPU_SET_IRQ vINTID {:#x} config {:#x}: {e:?}, undocumented", x[2], x[3])),
                _ => {}
            }
        }
        Ok(HypercallId::VcpuIrqState) => {
            if let Ok([used, 0, 0]) = r {
                let s: VgicState = crate::hyp::read_msg(0);
                if let Err(why) = vgic_state_ok(&s, *used) {
                    wrong.report(format_args!("VCPU_IRQ_STATE: {why}: {s:x?}"));
                }
            } else if r.is_ok() {
                wrong.report(format_args!("VCPU_IRQ_STATE: {r:?}"));
            }
        }
        Ok(HypercallId::VmMeasurement) => {
            // Sealed (1) with a value, or not yet (0) with zeros; nothing else.
            if let Ok([sealed, 0, 0]) = r {
                let m: shared_abi::msg::VmMeasurement = crate::hyp::read_msg(0);
                let ok = m.reserved == 0 && m.sealed as u64 == *sealed && (*sealed == 1 || (*sealed == 0 && m.measurement == [0; 32]));
                if !ok {
                    wrong.report(format_args!("VM_MEASUREMENT: {sealed} {m:x?}"));
                }
            } else if r.is_ok() {
                wrong.report(format_args!("VM_MEASUREMENT: {r:?}"));
            }
        }
        Ok(HypercallId::VcpuStats) => {
            if let Ok([total, 0, 0]) = r {
                let s: VcpuStats = crate::hyp::read_msg(0);
                if s.counts.iter().sum::<u64>() != *total {
                    wrong.report(format_args!("VCPU_STATS: total {total}, counts {:?}", s.counts));
                }
            } else if r.is_ok() {
                wrong.report(format_args!("VCPU_STATS: {r:?}"));
            }
        }
        Ok(HypercallId::VcpuSetReg) if x[2] == reg::CNTP_CTL_EL0 && (x[3] & !7 != 0 || x[4] != 0) && r.is_ok() => {
            wrong.report(format_args!("CNTP_CTL_EL0 = {:#x} (high half {:#x}) accepted", x[3], x[4]))
        }
        Ok(HypercallId::VcpuSetReg) if TIMER_REGS.contains(&x[2]) && r.is_ok() => {
            // Read back at once (nothing else runs this VM): what was written, but for
            // CNTP_CTL_EL0's ISTATUS, which is not stored.
            let want = if x[2] == reg::CNTP_CTL_EL0 { x[3] & 3 } else { x[3] };
            let got = hyp::call(HypercallId::VcpuGetReg, &[x[0], x[1], x[2]]);
            if got != Ok([want, 0, 0]) {
                wrong.report(format_args!("register {:#x} written {:#x}, read back {got:?}", x[2], x[3]));
            }
        }
        _ => {}
    }
}

/// Whether a `VCPU_IRQ_STATE` report with used mask `used` (the call's `x1`) is one EL2 could
/// have built: used registers within `nr_lrs`, each a vINTID 0..=1019 once, in a state, with
/// implemented priority bits, no `HW`, no pINTID, no undefined bit; free ones zero; no
/// deactivation of a special INTID.
fn vgic_state_ok(s: &VgicState, used: u64) -> Result<(), &'static str> {
    if !(1..=16).contains(&s.nr_lrs) {
        return Err("nr_lrs");
    }
    if used != s.used as u64 || s.used >> s.nr_lrs != 0 {
        return Err("used mask");
    }
    let mut seen = [0u64; 16];
    for (n, &lr) in s.lrs.iter().enumerate() {
        if s.used & 1 << n == 0 {
            if lr != 0 {
                return Err("a free list register is not zero");
            }
            continue;
        }
        let (vintid, config) = (lr & 0xFFFF_FFFF, lr >> 32);
        if vintid > 1019 {
            return Err("vINTID");
        }
        if (config >> 9) & 3 == 0 {
            return Err("a used list register without a state");
        }
        // The one hardware interrupt: the linked virtual timer's, which EL2 writes (vINTID and
        // pINTID 27, HW, no EOI notification).
        let linked_timer = vintid == 27 && config & (1 << 12 | 0x1FFF << 16 | 1 << 11) == (1 << 12 | 27 << 16);
        let hw = if linked_timer { 1 << 12 | 0x1FFF << 16 } else { 0 };
        if config & !(0xFF | 1 << 8 | 3 << 9 | 1 << 11 | hw) != 0 || config & UNIMPLEMENTED_PRIORITY_BITS != 0 {
            return Err("HW, a pINTID, an undefined or unimplemented bit");
        }
        if seen[(vintid / 64) as usize] & 1 << (vintid % 64) != 0 {
            return Err("a vINTID in two list registers");
        }
        seen[(vintid / 64) as usize] |= 1 << (vintid % 64);
    }
    if s.eoi[15] >> 60 != 0 {
        return Err("a deactivation of a special INTID (1020..=1023)");
    }
    Ok(())
}

/// A small VM whose timers the host sets to hostile values, before and after its first run
/// (alternately protected and not): one page at IPA 0x4000_0000 holding `HVC #0; B .-4`, so
/// each run ends at once with a `HYPERCALL` exit whose record carries the timer deadlines.
/// Checks the deadlines against docs/ABI.md's formula and the first-run rules.
fn timer_round(round: u64, rng: &mut Rng, wrong: &mut Wrong) {
    let protected = round % 2 == 1;
    let flags = if protected { vm_flags::PROTECTED } else { 0 };
    let Ok(vm) = vmm::create_at(1, flags, 1, TIMER_BACKING) else { return };
    // SAFETY: the VM's one backing page, the host's until VM_ADD_MEMORY below.
    unsafe {
        core::ptr::write_volatile(TIMER_BACKING as *mut u32, 0xD400_0002); // hvc #0
        core::ptr::write_volatile((TIMER_BACKING + 4) as *mut u32, 0x17FF_FFFF); // b .-4
    }
    let h = vm.handle;
    let call = |id: HypercallId, a: &[u64]| hyp::call(id, a);
    let expect = |wrong: &mut Wrong, what: &str, got: Result<[u64; 3], HypError>, want: Result<[u64; 3], HypError>| {
        if got != want {
            wrong.report(format_args!("timer round {round} ({}): {what}: {got:?}, documented {want:?}", if protected { "protected" } else { "non-protected" }));
        }
    };
    expect(wrong, "VM_ADD_MEMORY", call(HypercallId::VmAddMemory, &[h, TIMER_BACKING, 0x4000_0000, 1, shared_abi::measure::add_flags::MEASURE]), Ok([0; 3]));
    expect(wrong, "PC", call(HypercallId::VcpuSetReg, &[h, 0, reg::PC, 0x4000_0000, 0]), Ok([0; 3]));
    // Before the first run every value is taken: CNTVOFF_EL2 any (the guest's virtual count
    // moves), CNTP_CTL_EL0 with ISTATUS (ignored), CNTP_CVAL_EL0 any; CNTP_CTL_EL0 with a RES0
    // bit, or a high half, is refused.
    let now = gic::counter();
    let (r1, r2, r3) = (rng.next(), rng.next(), rng.next());
    let off = rng.pick(&[u64::MAX, 0, now, now / 2, r1]);
    let vcval = rng.pick(&[0, 1, QEMU_SAFE_CVAL, now, r2 & QEMU_SAFE_CVAL]);
    let vctl = rng.pick(&[0u64, 1, 3, 5, 0xFFFF_FFFF_FFFF_FFF9]);
    let pcval = rng.pick(&[0, u64::MAX, now, r3]);
    let pctl = rng.pick(&[0u64, 1, 2, 3, 5, 7]);
    for (reg_id, v) in [(reg::CNTVOFF_EL2, off), (CNTV_CVAL_EL0, vcval), (CNTV_CTL_EL0, vctl), (reg::CNTP_CVAL_EL0, pcval), (reg::CNTP_CTL_EL0, pctl)] {
        expect(wrong, "set before the first run", call(HypercallId::VcpuSetReg, &[h, 0, reg_id, v, 0]), Ok([0; 3]));
    }
    expect(wrong, "CNTP_CTL_EL0 with a RES0 bit", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, 8 | pctl, 0]), Err(HypError::InvalidArgument));
    expect(wrong, "CNTVOFF_EL2 with a high half", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTVOFF_EL2, off, 1]), Err(HypError::InvalidArgument));
    expect(wrong, "CNTVOFF_EL2 read back", call(HypercallId::VcpuGetReg, &[h, 0, reg::CNTVOFF_EL2]), Ok([off, 0, 0]));
    expect(wrong, "CNTP_CTL_EL0 read back", call(HypercallId::VcpuGetReg, &[h, 0, reg::CNTP_CTL_EL0]), Ok([pctl & 3, 0, 0]));
    // The deadlines every exit record carries (docs/ABI.md): for an enabled, unmasked timer
    // whose count (CNTPCT - offset, modulo 2^64) has reached its CVAL, the tick it did (0 if
    // before the counter started); otherwise the exit's count plus the ticks to go
    // (saturating); else u64::MAX. The exit's count lies between the reads around the run;
    // the documented value may differ only where the count crosses its wrap in between.
    let documented = |ctl: u64, cval: u64, off: u64, now: u64| {
        if ctl & 3 != 1 {
            return u64::MAX;
        }
        let count = now.wrapping_sub(off);
        if count >= cval { now.saturating_sub(count - cval) } else { now.saturating_add(cval - count) }
    };
    for run in 0..2 {
        let before = gic::counter();
        let r = call(HypercallId::VcpuRun, &[h, 0, 0]);
        let after = gic::counter();
        let e: VcpuExit = crate::hyp::read_msg(0);
        let at = |now| (documented(vctl, vcval, off, now), documented(pctl, pcval, 0, now));
        let (want_v, want_p) = if at(before) == (e.vtimer_deadline, e.ptimer_deadline) { at(before) } else { at(after) };
        // A physical interrupt (the host's tick) may end a run before the guest's HVC.
        if r != Ok([exit::HYPERCALL as u64, 0, 0]) && r != Ok([exit::IRQ as u64, 0, 0]) {
            wrong.report(format_args!("timer round {round}: run {run}: {r:?}"));
        }
        if r.is_ok() && (e.vtimer_deadline, e.ptimer_deadline) != (want_v, want_p) {
            wrong.report(format_args!(
                "timer round {round}: run {run}: deadlines {:#x}/{:#x}, documented {want_v:#x}/{want_p:#x} (CNTVOFF {off:#x}, CNTV_CTL {vctl:#x}, CVAL {vcval:#x}, CNTP_CTL {pctl:#x}, CVAL {pcval:#x})",
                e.vtimer_deadline, e.ptimer_deadline
            ));
        }
        if r == Ok([exit::IRQ as u64, 0, 0]) {
            gic::handle_pending();
        }
    }
    // After the first run: a protected VM's registers are sealed (Denied, even for a value
    // that would be refused anyway); a non-protected VM's CNTVOFF_EL2 is frozen (an identical
    // write still succeeds) and its per-vCPU timer registers stay the host's to set.
    if protected {
        for (reg_id, v) in [(reg::CNTVOFF_EL2, off), (reg::CNTP_CTL_EL0, 1), (reg::CNTP_CTL_EL0, 8), (reg::CNTP_CVAL_EL0, 0), (CNTV_CTL_EL0, 1)] {
            expect(wrong, "set after the first run (protected)", call(HypercallId::VcpuSetReg, &[h, 0, reg_id, v, 0]), Err(HypError::Denied));
        }
        expect(wrong, "CNTVOFF_EL2 read after the first run (protected)", call(HypercallId::VcpuGetReg, &[h, 0, reg::CNTVOFF_EL2]), Err(HypError::Denied));
    } else {
        expect(wrong, "identical CNTVOFF_EL2 after the first run", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTVOFF_EL2, off, 0]), Ok([0; 3]));
        expect(wrong, "another CNTVOFF_EL2 after the first run", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTVOFF_EL2, off ^ 1, 0]), Err(HypError::Frozen));
        expect(wrong, "CNTP_CTL_EL0 after the first run", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, 3, 0]), Ok([0; 3]));
        expect(wrong, "CNTP_CTL_EL0 with a RES0 bit after the first run", call(HypercallId::VcpuSetReg, &[h, 0, reg::CNTP_CTL_EL0, 1 << 63, 0]), Err(HypError::InvalidArgument));
    }
    // Interrupt state and counts: allowed for protected VMs at any time.
    let spi = irq::config(0x80, true, irq::PENDING, true) as u64;
    expect(wrong, "VCPU_SET_IRQ after the first run", call(HypercallId::VcpuSetIrq, &[h, 0, 40, spi]), Ok([0; 3]));
    expect(wrong, "the same vINTID again", call(HypercallId::VcpuSetIrq, &[h, 0, 40, spi]), Err(HypError::Busy));
    let st = call(HypercallId::VcpuIrqState, &[h, 0]);
    let s: VgicState = crate::hyp::read_msg(0);
    expect(wrong, "VCPU_IRQ_STATE", st, Ok([1, 0, 0]));
    if s.lrs[0] != (spi << 32 | 40) {
        wrong.report(format_args!("timer round {round}: LR0 reads {:#x}", s.lrs[0]));
    }
    if let Ok([total, 0, 0]) = call(HypercallId::VcpuStats, &[h, 0]) {
        let s: VcpuStats = crate::hyp::read_msg(0);
        if total == 0 || s.counts.iter().sum::<u64>() != total || (s.counts[stats::HVC_SMC] == 0 && s.counts[stats::IRQ] == 0) {
            wrong.report(format_args!("timer round {round}: VCPU_STATS {total}: {:?}", s.counts));
        }
    } else {
        wrong.report(format_args!("timer round {round}: VCPU_STATS refused"));
    }
    // One more run with the interrupt queued, then the VM goes.
    let _ = call(HypercallId::VcpuRun, &[h, 0, 0]);
    expect(wrong, "VM_DESTROY", call(HypercallId::VmDestroy, &[h]), Ok([0; 3]));
}

/// A VM whose vCPU runs on CPU 1 while CPU 0 tries to destroy it, sets its registers after it
/// ran, and donates its pages again.
fn ill_timed(plat: &Platform, c: &mut Counts) {
    let Some(image) = plat.guest_image() else { return };
    // Always the same 16 MiB (each round's VM is destroyed before the next).
    let Ok(vm) = vmm::create_at(1, vm_flags::PROTECTED, 16, ILL_TIMED_BACKING) else { return };
    if vmm::boot(&vm, image, &[], "", false).is_err() {
        return;
    }
    // CPU 1 runs it (the regs guest makes 30,000 exits: plenty of time to collide). Wait,
    // without touching the vCPU (a register access claims it, and CPU 1's VCPU_RUN would then
    // meet Busy and give up), until CPU 1 has finished its first run: from then on a protected
    // VM's registers are sealed (Denied) or the vCPU is held (Busy).
    let status = &vmm::HOST_RUN_STATUS[1];
    let before = status[run_status::RUNS].load(Ordering::Acquire);
    vmm::pinned::start_secondary(1, vm.handle, 0);
    let mut spins = 0u64;
    while status[run_status::RUNS].load(Ordering::Acquire) < before + 2 && !vmm::pinned::secondary_done(1) && spins < 500_000_000 {
        spins += 1;
        host_kernel::arch::relax();
    }
    let mut busy = 0;
    loop {
        let r = hyp::call(HypercallId::VmDestroy, &[vm.handle]);
        record(c, &r);
        match r {
            Err(HypError::Busy) => busy += 1,
            _ => break,
        }
        let r = hyp::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, 0, 0]);
        check!(matches!(r, Err(HypError::Busy) | Err(HypError::Denied)), "set-reg on a running protected VM: {r:?}");
        record(c, &r);
        let r = hyp::call(HypercallId::VmAddMemory, &[vm.handle, vm.backing, 0x5000_0000, 1]);
        // Denied: the protected VM has run (sealed); NotOwned: the pages are its already.
        check!(matches!(r, Err(HypError::NotOwned) | Err(HypError::Denied)), "double donation: {r:?}");
        record(c, &r);
    }
    vmm::pinned::wait_secondary(1);
    println!("host: ill-timed destroy: Busy {busy} time(s) while cpu1 ran the vCPU, then destroyed");
}
