//! Fixed placement: vCPU `k` of a test VM on host CPU `k`, each CPU stepping its vCPU (or two
//! VMs' vCPUs, exit by exit) until the VM stops; for the scenarios that need to know which CPU
//! runs which vCPU. The scheduler ([`crate::sched`]) places vCPUs on any CPU instead.

use crate::{println, NoDevice, Outcome, Ran, Stepper, TestDevice, Vm, MAX_CPUS};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared_abi::msg::Exit;
use shared_abi::HypError;

/// Set when the VM being run by several host CPUs has stopped.
static STOP: AtomicBool = AtomicBool::new(false);
/// `CPU_ON` exits seen by the fixed-placement loops: a secondary vCPU found off waits for this
/// to change (or [`STOP`]) instead of asking EL2 again and again.
static CPU_ONS: AtomicU64 = AtomicU64::new(0);

impl Stepper {
    /// Runs vCPU `index` to its next exit and handles it. `Some` when the vCPU's run is over
    /// (a secondary vCPU that is off waits for `STOP`; vCPU 0 off ends the run).
    pub fn step(&mut self, vm: &Vm, index: u64, dev: &mut dyn TestDevice) -> Result<Option<Outcome>, HypError> {
        // Off at its last run, and no `CPU_ON` served since: not worth asking EL2 again. (The
        // loop around may run other vCPUs meanwhile, so this never waits itself.)
        if let Some(seen) = self.off_since {
            if CPU_ONS.load(Ordering::SeqCst) == seen {
                if index == 0 || STOP.load(Ordering::SeqCst) {
                    return Ok(Some(Outcome::Off));
                }
                host_kernel::arch::relax();
                return Ok(None);
            }
            self.off_since = None;
        }
        // Read before the run: a `CPU_ON` served after it changes the count.
        let cpu_ons = CPU_ONS.load(Ordering::SeqCst);
        match self.run_once(vm, index, dev)? {
            Ran::Ended(o) => Ok(Some(o)),
            Ran::Exit(Exit::VcpuOff) => {
                if index == 0 || STOP.load(Ordering::SeqCst) {
                    return Ok(Some(Outcome::Off));
                }
                self.off_since = Some(cpu_ons);
                Ok(None)
            }
            Ran::Exit(Exit::CpuOn { .. }) => {
                CPU_ONS.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            }
            Ran::Exit(_) => Ok(None),
        }
    }
}

/// Runs vCPU `index` until the VM stops. `dev` serves the test device.
pub fn run_vcpu(vm: &Vm, index: u64, dev: &mut dyn TestDevice) -> Result<Outcome, HypError> {
    let mut s = Stepper::new();
    loop {
        match s.step(vm, index, dev) {
            Ok(Some(o)) => return Ok(o),
            Ok(None) => {}
            // Another vCPU ended the VM (SYSTEM_OFF/RESET) or EL2 stopped it: this vCPU's run
            // is over too.
            Err(HypError::NotRunnable) if index != 0 => return Ok(Outcome::Off),
            Err(e) => return Err(e),
        }
        if index != 0 && STOP.load(Ordering::SeqCst) {
            return Ok(Outcome::Off);
        }
    }
}

/// Host CPUs running secondary vCPUs: handle and vCPU index per CPU (handle 0: idle).
static WORK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WORK_VCPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WORK_DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// A second VM for a secondary CPU to interleave with the first, exit by exit (0: none).
static WORK2: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Has host CPU `cpu` run vCPU `vcpu` of two VMs, alternating exit by exit, until both end
/// (after `STOP` for secondary vCPUs).
pub fn start_secondary_pair(cpu: usize, a: u64, b: u64, vcpu: u64) {
    WORK2[cpu].store(b, Ordering::SeqCst);
    start_secondary(cpu, a, vcpu);
}

/// Ends a [`start_secondary_pair`] run once the VMs' vCPU 0 runs are over.
pub fn stop_secondaries() {
    STOP.store(true, Ordering::SeqCst);
}

/// Called by an idle host secondary CPU: runs the vCPU it was given, if any.
pub fn secondary_work(cpu: usize) {
    let handle = WORK[cpu].load(Ordering::SeqCst);
    if handle == 0 || WORK_DONE[cpu].load(Ordering::SeqCst) {
        return;
    }
    let second = WORK2[cpu].swap(0, Ordering::SeqCst);
    if second != 0 {
        let index = WORK_VCPU[cpu].load(Ordering::SeqCst);
        let (a, b) = (Vm { handle, backing: 0, pages: 0, protected: false, vcpus: 0 }, Vm { handle: second, backing: 0, pages: 0, protected: false, vcpus: 0 });
        let (mut sa, mut sb) = (Stepper::new(), Stepper::new());
        let (mut da, mut db) = (false, false);
        while !(da && db) {
            if !da {
                da = !matches!(sa.step(&a, index, &mut NoDevice), Ok(None));
            }
            if !db {
                db = !matches!(sb.step(&b, index, &mut NoDevice), Ok(None));
            }
        }
        WORK_DONE[cpu].store(true, Ordering::SeqCst);
        return;
    }
    let vm = Vm { handle, backing: 0, pages: 0, protected: false, vcpus: 0 };
    if let Err(e) = run_vcpu(&vm, WORK_VCPU[cpu].load(Ordering::SeqCst), &mut NoDevice) {
        println!("host: cpu{cpu}: VCPU_RUN failed: {e:?}");
    }
    WORK_DONE[cpu].store(true, Ordering::SeqCst);
}

/// Has host CPU `cpu` run vCPU `vcpu` of the VM `handle` until its run ends.
pub fn start_secondary(cpu: usize, handle: u64, vcpu: u64) {
    WORK_VCPU[cpu].store(vcpu, Ordering::SeqCst);
    WORK_DONE[cpu].store(false, Ordering::SeqCst);
    WORK[cpu].store(handle, Ordering::SeqCst);
    // Wakes the helpers from their idle `wfe`.
    host_kernel::arch::sev();
}

/// Whether host CPU `cpu` has finished the work [`start_secondary`] gave it.
pub fn secondary_done(cpu: usize) -> bool {
    WORK_DONE[cpu].load(Ordering::SeqCst)
}

/// Waits until host CPU `cpu` has finished the work [`start_secondary`] gave it.
pub fn wait_secondary(cpu: usize) {
    while !WORK_DONE[cpu].load(Ordering::SeqCst) {
        host_kernel::arch::relax();
    }
    WORK[cpu].store(0, Ordering::SeqCst);
}

/// Runs a whole VM: vCPU 0 here, vCPU `k` on host CPU `k`; returns when vCPU 0's run ends and
/// every helper CPU has stopped.
pub fn run(vm: &Vm, host_cpus: usize, dev: &mut dyn TestDevice) -> Result<Outcome, HypError> {
    STOP.store(false, Ordering::SeqCst);
    run_started(vm, host_cpus, dev)
}

/// Clears `STOP` before a [`start_secondary_pair`] run.
pub fn arm_secondaries() {
    STOP.store(false, Ordering::SeqCst);
}

fn run_started(vm: &Vm, host_cpus: usize, dev: &mut dyn TestDevice) -> Result<Outcome, HypError> {
    let helpers = (vm.vcpus as usize).min(host_cpus);
    for k in 1..helpers {
        start_secondary(k, vm.handle, k as u64);
    }
    let outcome = run_vcpu(vm, 0, dev);
    STOP.store(true, Ordering::SeqCst);
    // A sibling vCPU may be spinning without exits: bring its host CPU back now rather than
    // at its next tick.
    for k in 1..helpers {
        crate::gic::kick(k);
    }
    for k in 1..helpers {
        wait_secondary(k);
    }
    outcome
}

