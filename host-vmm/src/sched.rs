//! The host's vCPU scheduler: any number of vCPUs, of any number of VMs, on the host CPUs a
//! caller chooses, round robin, preempted by the host's tick.
//!
//! Place in the flow: the run queue itself ([`host_sched::RunQueue`], host-tested) decides
//! who runs next. A VM queued with a [`Runner`] (a Linux VM, [`crate::linux`]) has its vCPUs
//! run by it; this module runs a test VM's chosen vCPU with [`Stepper::run_once`] until
//! - the vCPU exits with `IRQ` and the host's tick or a kick arrived ([`gic::take_preempt`]):
//!   a guest that never exits loses its CPU at the next tick;
//! - it waits (`WFX`) or is powered off (`VCPU_OFF`): it yields;
//! - its VM was stopped meanwhile: it is done;
//! - its VM ends (`SYSTEM_OFF`, `SYSTEM_RESET`, `KILLED`) or `VCPU_RUN` fails: the VM's
//!   outcome is recorded, its other vCPUs stop, and the host CPUs running them are kicked
//!   (SGI) so that a sibling spinning without exits comes back at once.
//!
//! A vCPU's console line and pending MMIO read ([`Stepper`]) live with its queue slot, so a vCPU
//! can move between host CPUs (EL2 keeps its context and flushes the local TLB on migration).
//! Helper CPUs take part through [`secondary_work`], called from their idle loop. The older
//! fixed placement ([`crate::pinned`]: vCPU `k` on host CPU `k`) stays for the scenarios that
//! are about something else.

use crate::gic;
use crate::{Outcome, Ran, Stepper, ValueDevice, Vm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use host_sched::{RunQueue, CAPACITY};
use shared_abi::msg::Exit;
use shared_abi::HypError;

static QUEUE: host_kernel::sync::Mutex<RunQueue> = host_kernel::sync::Mutex::new(RunQueue::new());
/// Each slot's run state; locked by the CPU running the slot (never contended: the queue
/// gives a slot to one CPU at a time).
static STEPPERS: [host_kernel::sync::Mutex<Stepper>; CAPACITY] = [const { host_kernel::sync::Mutex::new(Stepper::new()) }; CAPACITY];
/// Each slot's test-device answer.
static DEV_VALUE: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];

/// What runs the vCPUs of a kind of VM that brings its own devices (the Linux VMs').
pub trait Runner: Sync {
    /// Runs vCPU `vcpu` of VM `vm` from queue slot `slot` on this CPU until it waits
    /// ([`block`]), loses the CPU ([`yield_slot`]) or is done ([`end_slot`]).
    fn run_slot(&self, slot: usize, vm: u64, vcpu: u64);
}

/// Each slot's [`Runner`] (`None`: a test VM's vCPU, run here). Locked after [`QUEUE`], never
/// before it.
static RUNNERS: host_kernel::sync::Mutex<[Option<&'static dyn Runner>; CAPACITY]> = host_kernel::sync::Mutex::new([None; CAPACITY]);
/// What idle CPUs poll between picks, once a runner has given it (console input).
static IDLE_POLL: spin::Once<fn()> = spin::Once::new();

/// Most VMs whose outcome is kept.
const MAX_VMS: usize = 8;
/// How a VM's run ended: `Ok` from the guest, `Err` from `VCPU_RUN`.
pub type VmOutcome = Result<Outcome, HypError>;
/// Each queued VM's handle and outcome (handle 0: free).
static OUTCOMES: host_kernel::sync::Mutex<[(u64, Option<VmOutcome>); MAX_VMS]> = host_kernel::sync::Mutex::new([(0, None); MAX_VMS]);

/// Helper CPUs taking part (bit `cpu`), and whether they should.
static HELPERS: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Helper CPUs currently inside [`secondary_work`]'s loop.
static BUSY: [AtomicBool; crate::MAX_CPUS] = [const { AtomicBool::new(false) }; crate::MAX_CPUS];

/// Per-CPU figures for the scenarios.
pub struct Stats {
    /// vCPUs that lost the CPU to a tick or a kick.
    pub preemptions: AtomicU64,
    /// vCPUs picked.
    pub picks: AtomicU64,
}

/// Per-CPU [`Stats`].
pub static STATS: [Stats; crate::MAX_CPUS] = [const { Stats { preemptions: AtomicU64::new(0), picks: AtomicU64::new(0) } }; crate::MAX_CPUS];

/// Queues every vCPU of test VM `vm`; its test device answers reads with `dev_value`.
///
/// # Errors
/// The queue's refusal (full, or already queued).
pub fn add(vm: &Vm, dev_value: u64) -> Result<(), host_sched::Error> {
    queue(vm, dev_value, None)
}

/// Queues every vCPU of `vm`, to be run by `runner`.
///
/// # Errors
/// The queue's refusal (full, or already queued).
pub fn add_run_by(vm: &Vm, runner: &'static dyn Runner) -> Result<(), host_sched::Error> {
    queue(vm, 0, Some(runner))
}

/// Idle CPUs call `poll` between picks from now on (the first one given stays).
pub fn set_idle_poll(poll: fn()) {
    IDLE_POLL.call_once(|| poll);
}

fn queue(vm: &Vm, dev_value: u64, runner: Option<&'static dyn Runner>) -> Result<(), host_sched::Error> {
    {
        let mut o = OUTCOMES.lock();
        let free = o.iter().position(|(h, _)| *h == 0 || *h == vm.handle).ok_or(host_sched::Error::Full)?;
        o[free] = (vm.handle, None);
    }
    let mut q = QUEUE.lock();
    for v in 0..vm.vcpus as u64 {
        let slot = q.add(vm.handle, v)?;
        *STEPPERS[slot].lock() = Stepper::new();
        DEV_VALUE[slot].store(dev_value, Ordering::Relaxed);
        RUNNERS.lock()[slot] = runner;
    }
    Ok(())
}

/// How `vm`'s run ended, once it has.
pub fn outcome(vm: &Vm) -> Option<VmOutcome> {
    OUTCOMES.lock().iter().find(|(h, _)| *h == vm.handle).and_then(|(_, o)| *o)
}

fn record(handle: u64, r: VmOutcome) {
    let mut o = OUTCOMES.lock();
    if let Some(e) = o.iter_mut().find(|(h, _)| *h == handle) {
        e.1.get_or_insert(r);
    }
}

/// Stops every vCPU of `vm` and kicks the host CPUs running one; returns those CPUs.
pub fn stop(vm: &Vm) -> u64 {
    let cpus = QUEUE.lock().stop_vm(vm.handle);
    kick_mask(cpus);
    cpus
}

/// Queues a stopped `vm` again (its vCPUs runnable, their run state kept), once no host CPU
/// runs it.
///
/// # Errors
/// The queue's refusal.
pub fn requeue(vm: &Vm) -> Result<(), host_sched::Error> {
    loop {
        let mut q = QUEUE.lock();
        if q.running_on(vm.handle) != 0 {
            drop(q);
            host_kernel::arch::relax();
            continue;
        }
        return q.requeue_vm(vm.handle);
    }
}

fn kick_mask(cpus: u64) {
    let me = crate::cpu_id();
    for cpu in (0..crate::MAX_CPUS).filter(|c| cpus & 1 << c != 0 && *c != me) {
        gic::kick(cpu);
    }
}

/// The host CPUs running a vCPU of `vm`.
pub fn running_on(vm: &Vm) -> u64 {
    QUEUE.lock().running_on(vm.handle)
}

/// Stops `vm` (kicking the CPUs that run it), waits until no host CPU runs it, takes it out of
/// the queue and destroys it.
///
/// # Errors
/// `VM_DESTROY`'s error.
pub fn destroy(vm: &Vm) -> Result<(), HypError> {
    stop(vm);
    while QUEUE.lock().remove_vm(vm.handle) == Err(host_sched::Error::Busy) {
        host_kernel::arch::relax();
    }
    if let Some(e) = OUTCOMES.lock().iter_mut().find(|(h, _)| *h == vm.handle) {
        *e = (0, None);
    }
    crate::destroy(vm)
}

/// Lets the helper CPUs in `cpus` (bit `cpu`; this CPU's bit is ignored) run vCPUs from the
/// queue until [`finish`].
pub fn start(cpus: u64) {
    HELPERS.store(cpus & !(1 << crate::cpu_id()), Ordering::SeqCst);
    ACTIVE.store(true, Ordering::SeqCst);
    // Wakes the helpers from their idle `wfe`.
    host_kernel::arch::sev();
}

/// Ends [`start`]: the helpers put back what they run (they are kicked, so a guest that never
/// exits does not keep them) and go idle; returns once they have.
pub fn finish() {
    ACTIVE.store(false, Ordering::SeqCst);
    let helpers = HELPERS.swap(0, Ordering::SeqCst);
    kick_mask(helpers);
    for busy in &BUSY {
        while busy.load(Ordering::SeqCst) {
            host_kernel::arch::relax();
        }
    }
}

/// Host CPUs idle in [`idle`] (bit `cpu`): kicked when a vCPU becomes runnable.
static IDLE: AtomicU64 = AtomicU64::new(0);
/// Idle CPUs sleep (`WFI`) instead of polling: set while device VMs ([`crate::linux`])
/// run, whose vCPUs block in `WFI` for long stretches. The test scenarios keep polling.
pub static SLEEP_WHEN_IDLE: AtomicBool = AtomicBool::new(false);

/// Runs vCPUs from the queue on this CPU until `done()`.
pub fn work_until(done: &dyn Fn() -> bool) {
    let cpu = crate::cpu_id();
    while !done() {
        let picked = QUEUE.lock().pick(cpu, gic::counter());
        match picked {
            Some((slot, e)) => {
                let runner = RUNNERS.lock()[slot];
                match runner {
                    Some(runner) => runner.run_slot(slot, e.vm, e.vcpu),
                    None => run_slot(cpu, slot, e.vm, e.vcpu),
                }
            }
            None => {
                gic::handle_pending();
                if let Some(poll) = IDLE_POLL.get() {
                    poll();
                }
                if SLEEP_WHEN_IDLE.load(Ordering::Relaxed) {
                    idle(cpu, done);
                } else {
                    host_kernel::arch::relax();
                }
            }
        }
    }
}

/// Sleeps until an interrupt: a tick, a kick (a vCPU became runnable, or a VM ended), or the
/// earliest deadline of a blocked vCPU.
fn idle(cpu: usize, done: &dyn Fn() -> bool) {
    IDLE.fetch_or(1 << cpu, Ordering::SeqCst);
    // Looked at again after the idle mark is visible: whoever makes a vCPU runnable (or ends
    // a VM) after this point sees the mark and kicks.
    let next = {
        let q = QUEUE.lock();
        (!q.any_ready(gic::counter())).then(|| q.next_deadline())
    };
    if let Some(next) = next {
        if !done() {
            if let Some(d) = next {
                gic::arm_wakeup(d);
            }
            gic::wait_for_interrupt();
            // What woke this CPU (a tick, a wake-up, a kick) is handled now, not by an `IRQ`
            // exit at the next guest entry.
            gic::handle_pending();
        }
    }
    IDLE.fetch_and(!(1 << cpu), Ordering::SeqCst);
}

/// Kicks the idle host CPUs (after a vCPU became runnable or a VM ended).
fn kick_idle() {
    let idle = IDLE.load(Ordering::SeqCst);
    if idle != 0 {
        kick_mask(idle);
    }
}

/// The running vCPU in `slot` waits until woken ([`wake`]) or the counter reaches `until`
/// ([`host_sched::NEVER`]: only when woken).
pub fn block(slot: usize, until: u64) {
    let _ = QUEUE.lock().block(slot, until);
    // An idle CPU may have to bring its wake-up forward to this deadline.
    if until != host_sched::NEVER {
        kick_idle();
    }
}

/// The running vCPU in `slot` goes back to the end of the round.
pub fn yield_slot(slot: usize) {
    let _ = QUEUE.lock().put_back(slot);
    kick_idle();
}

/// Whether some other vCPU is waiting for a host CPU (a preempted vCPU only yields then).
pub fn others_ready() -> bool {
    QUEUE.lock().any_ready(gic::counter())
}

/// Whether the VM of the vCPU running in `slot` was stopped.
pub fn stopping(slot: usize) -> bool {
    QUEUE.lock().stopping(slot)
}

/// Something for vCPU `vcpu` of `vm` to do (an interrupt): a blocked vCPU becomes runnable
/// (and an idle CPU is kicked to run it); a vCPU running on another CPU is kicked out of the
/// guest so its VMM loop queues the interrupt.
pub fn wake(vm: u64, vcpu: u64) {
    let running = {
        let mut q = QUEUE.lock();
        if q.wake(vm, vcpu) {
            None
        } else {
            (0..CAPACITY).find_map(|s| q.entry(s).filter(|e| e.vm == vm && e.vcpu == vcpu)).and_then(|e| match e.state {
                host_sched::State::Running { cpu } => Some(cpu),
                _ => None,
            })
        }
    };
    match running {
        None => kick_idle(),
        Some(cpu) if cpu != crate::cpu_id() => gic::kick(cpu),
        Some(_) => {}
    }
}

/// The vCPU in `slot` of `handle` is done because its VM ended with `r` (or stopped: `None`):
/// records the outcome and stops the VM's other vCPUs, kicking the CPUs that run them.
pub fn end_slot(slot: usize, handle: u64, r: Option<VmOutcome>) {
    if let Some(r) = r {
        record(handle, r);
    }
    let cpus = {
        let mut q = QUEUE.lock();
        let _ = q.finish(slot);
        q.stop_vm(handle)
    };
    kick_mask(cpus);
    kick_idle();
}

/// Runs every queued vCPU of `vms` on the CPUs in `cpus` (this one included if its bit is set)
/// until each VM has an outcome.
pub fn run(vms: &[&Vm], cpus: u64) {
    start(cpus);
    let done = || vms.iter().all(|vm| outcome(vm).is_some());
    if cpus & 1 << crate::cpu_id() != 0 {
        work_until(&done);
    } else {
        while !done() {
            host_kernel::arch::relax();
        }
    }
    finish();
}

/// Called by an idle helper CPU: runs vCPUs while [`start`] includes it.
pub fn secondary_work(cpu: usize) {
    if !ACTIVE.load(Ordering::SeqCst) || HELPERS.load(Ordering::SeqCst) & 1 << cpu == 0 {
        return;
    }
    BUSY[cpu].store(true, Ordering::SeqCst);
    // Re-checked after BUSY is set, so `finish` either sees BUSY or this CPU sees !ACTIVE.
    work_until(&|| !ACTIVE.load(Ordering::SeqCst) || HELPERS.load(Ordering::SeqCst) & 1 << cpu == 0);
    BUSY[cpu].store(false, Ordering::SeqCst);
}

/// Runs the vCPU in `slot` until it yields, is preempted, stops or its VM ends.
fn run_slot(cpu: usize, slot: usize, handle: u64, vcpu: u64) {
    STATS[cpu].picks.fetch_add(1, Ordering::Relaxed);
    let vm = Vm { handle, backing: 0, pages: 0, protected: false, vcpus: 0 };
    let mut dev = ValueDevice(DEV_VALUE[slot].load(Ordering::Relaxed));
    let mut stepper = STEPPERS[slot].lock();
    // A tick or kick that arrived while this CPU was not running a guest is not this vCPU's.
    gic::take_preempt();
    let ended = loop {
        match stepper.run_once(&vm, vcpu, &mut dev) {
            Ok(Ran::Exit(Exit::Wfx | Exit::VcpuOff)) => break None,
            Ok(Ran::Exit(exit)) => {
                if exit == Exit::Irq && gic::take_preempt() {
                    STATS[cpu].preemptions.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                if QUEUE.lock().stopping(slot) {
                    break None;
                }
            }
            Ok(Ran::Ended(o)) => break Some(Ok(o)),
            // A sibling ended the VM (or EL2 stopped it) between this vCPU's runs.
            Err(HypError::NotRunnable) => break Some(Err(HypError::NotRunnable)),
            Err(e) => break Some(Err(e)),
        }
    };
    drop(stepper);
    match ended {
        None => {
            let _ = QUEUE.lock().put_back(slot);
        }
        Some(r) => end_slot(slot, handle, (r != Err(HypError::NotRunnable)).then_some(r)),
    }
}
