//! The hostile host (`scenario=hostile seed=N calls=N`, test EL2 image): seeded, reproducible
//! hypercalls mixing random values, boundary values (0, all-ones, unaligned and page-crossing
//! ranges, the last page of RAM, EL2's own addresses, the message pages, stale handles) and
//! valid-but-ill-timed calls (destroy while a vCPU runs on the other CPU, registers after a
//! protected VM ran, double donation), with EL2's invariant checker every 1,000 calls. Every
//! call must return success or a documented error.
//!
//! Every register the host can set is an input to EL2, and some only matter when the vCPU
//! runs (`PSTATE` decides where the world switch's `ERET` lands), so every `VCPU_SET_REG` is
//! followed by a `VCPU_RUN` of that vCPU, whatever the set returned.

use crate::platform::Platform;
use crate::{hvc, println, vmm};
use core::sync::atomic::Ordering;
use shared_abi::layout::{run_status, HYP_REGION_BASE, HYP_REGION_SIZE};
use shared_abi::msg::{vm_flags, VmCreate};
use shared_abi::{reg, HypError, HypercallId, PAGE_SIZE};

/// Host memory the hostile host may give away: 64 MiB nobody else uses.
const SANDBOX: u64 = 0x6000_0000;
/// Host memory for the ill-timed VM, reused every round.
const ILL_TIMED_BACKING: u64 = 0x5800_0000;
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
    let r = hvc::call(HypercallId::TestCheckInvariants, &[]);
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
    println!("host: hostile host: seed {seed}, {calls} calls");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (ram_base, ram_size) = plat.ram;
    let ram_end = ram_base + ram_size;
    let msg0 = crate::scenarios::msg_page(0) as u64;
    let msg1 = crate::scenarios::msg_page(1) as u64;
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
    ];
    let regs = [reg::PC, reg::x(0), reg::PSTATE, reg::SYSREGS[12].1, reg::fp_vreg(3), reg::FW_PSCI_VERSION, reg::MPIDR_EL1, reg::sysreg(3, 0, 0, 4, 0), 0, u64::MAX];
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
                let flags = [0, vm_flags::PROTECTED, vm_flags::MTE, vm_flags::PTRAUTH, vm_flags::HOST_PMU | vm_flags::PROTECTED, rng.next()];
                let req = VmCreate {
                    nr_vcpus: rng.pick(&[0, 1, 2, 8, 9, u32::MAX]),
                    ipa_bits: rng.pick(&[0, 31, 32, 36, 40, 41, 64]),
                    flags: rng.pick(&flags),
                    reserved: if rng.below(10) == 0 { [1, 0] } else { [0; 2] },
                };
                crate::scenarios::write_msg(0, &req);
            }
            Ok(HypercallId::VmDestroy) => x[0] = handle(&mut rng, &handles),
            Ok(HypercallId::VmAddMemory) => {
                x[0] = handle(&mut rng, &handles);
                x[1] = addr(&mut rng);
                let (r1, r2) = (rng.next(), 0x4000_0000 + rng.below(4096) * PAGE_SIZE);
                x[2] = rng.pick(&[0x4000_0000, 0, 1 << 36, (1 << 36) - PAGE_SIZE, r1, r2]);
                x[3] = pages(&mut rng);
                // Keep sandbox donations inside the sandbox: the host must not give away its
                // own code by accident (that would break the host, not EL2).
                if (ram_base..ram_end).contains(&x[1]) && !(SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) && x[1] != ram_end - PAGE_SIZE {
                    x[3] = x[3].max(u64::MAX >> 12);
                } else if (SANDBOX..SANDBOX + SANDBOX_PAGES * PAGE_SIZE).contains(&x[1]) {
                    x[3] = x[3].min((SANDBOX + SANDBOX_PAGES * PAGE_SIZE - x[1]) / PAGE_SIZE + rng.below(2));
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
                    if x[2] == reg::PSTATE && rng.below(2) == 0 {
                        // Modes that must never be entered: EL2h, EL2t, EL1h with IL, AArch32
                        // usr/svc/hyp, and one undefined bit; then the guest's own modes.
                        x[3] = rng.pick(&[0x3C9, 0x3C8, 0x3C5 | 1 << 20, 0x1D0, 0x1D3, 0x1DA, 0x3C5 | 1 << 36, 0x3C5, 0x3C4, 0]);
                    }
                }
            }
            Ok(HypercallId::VcpuSetIrq) | Ok(HypercallId::VcpuIrqState) => {
                // List-register requests: valid ones (which fill a vCPU's list registers, then
                // the next runs load them) mixed with every kind of hostile field.
                use shared_abi::msg::irq;
                x[0] = handle(&mut rng, &handles);
                x[1] = rng.pick(&[0, 0, 1, 7, 8, u64::MAX]);
                if id == HypercallId::VcpuSetIrq as u64 {
                    let (r, small) = (rng.next(), rng.below(1024));
                    x[2] = rng.pick(&[0, 15, 27, 32, 1019, 1020, 1023, 8192, small, r]);
                    let level = rng.below(2) == 0;
                    let ok = irq::config(0x80, true, irq::PENDING, level) as u64;
                    x[3] = rng.pick(&[ok, ok, ok | irq::HW as u64 | 27 << irq::PINTID_SHIFT, ok | 1, ok & !(irq::STATE_MASK as u64), ok | 1 << 40, r, r & 0xFFFF_FFFF]);
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
        let r = hvc::raw(id, &x);
        if let (Ok(HypercallId::VmCreate), Ok([h, _, _])) = (HypercallId::try_from(id), r) {
            handles[rng.below(24) as usize] = h; // replaced handles stay alive: fine
        }
        record(&mut c, &r);
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
                let run = hvc::raw(HypercallId::VcpuRun as u64, &[x[0], x[1], 0]);
                record(&mut c, &run);
                runs_after_set += 1;
            }
        }
        // Ill-timed: now and then, run a VM on CPU 1 and destroy it from here meanwhile.
        if n % 5000 == 2500 {
            ill_timed(plat, &mut c);
        }
    }
    for h in handles {
        let _ = hvc::call(HypercallId::VmDestroy, &[h]);
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
    check!(hvc::call(HypercallId::Ping, &[9]) == Ok([9, 0, 0]), "EL2 stopped serving");
    println!("host: invariant checks: {checks}, invariant violations: {violations}");
    check!(violations == 0, "invariant violations");
}

/// A VM whose vCPU runs on CPU 1 while CPU 0 tries to destroy it, sets its registers after it
/// ran, and donates its pages again.
fn ill_timed(plat: &Platform, c: &mut Counts) {
    let Some(image) = plat.guest_image() else { return };
    // Always the same 16 MiB (each round's VM is destroyed before the next).
    let Ok(vm) = vmm::create_at(1, vm_flags::PROTECTED, 16, ILL_TIMED_BACKING) else { return };
    let Ok(entry) = vmm::load(&vm, image) else { return };
    if vmm::boot(&vm, entry).is_err() {
        return;
    }
    // CPU 1 runs it (the regs guest makes 30,000 exits: plenty of time to collide). Wait,
    // without touching the vCPU (a register access claims it, and CPU 1's VCPU_RUN would then
    // meet Busy and give up), until CPU 1 has finished its first run: from then on a protected
    // VM's registers are sealed (Denied) or the vCPU is held (Busy).
    let status = &vmm::HOST_RUN_STATUS[1];
    let before = status[run_status::RUNS].load(Ordering::Acquire);
    vmm::start_secondary(1, vm.handle, 0);
    let mut spins = 0u64;
    while status[run_status::RUNS].load(Ordering::Acquire) < before + 2 && !vmm::secondary_done(1) && spins < 500_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    let mut busy = 0;
    loop {
        let r = hvc::call(HypercallId::VmDestroy, &[vm.handle]);
        record(c, &r);
        match r {
            Err(HypError::Busy) => busy += 1,
            _ => break,
        }
        let r = hvc::call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, 0, 0]);
        check!(matches!(r, Err(HypError::Busy) | Err(HypError::Denied)), "set-reg on a running protected VM: {r:?}");
        record(c, &r);
        let r = hvc::call(HypercallId::VmAddMemory, &[vm.handle, vm.backing, 0x5000_0000, 1]);
        // Denied: the protected VM has run (sealed); NotOwned: the pages are its already.
        check!(matches!(r, Err(HypError::NotOwned) | Err(HypError::Denied)), "double donation: {r:?}");
        record(c, &r);
    }
    vmm::wait_secondary(1);
    println!("host: ill-timed destroy: Busy {busy} time(s) while cpu1 ran the vCPU, then destroyed");
}
