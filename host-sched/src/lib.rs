//! The host scheduler's run queue, in plain Rust: no hardware, no `unsafe`, unit-tested on
//! the development host (`cargo test -p host-sched`).
//!
//! Place in the flow: the host's `el1-host/src/sched.rs` keeps one [`RunQueue`] behind a lock
//! and asks it which vCPU a host CPU runs next; the hypercalls, the GIC and the timer stay
//! there. This crate exists because `el1-host` is built only for the bare-metal target, so
//! logic that is worth testing on its own lives where `cargo test` reaches it.
//!
//! Policy: round robin over every runnable vCPU of every VM, one cursor shared by all host
//! CPUs (a vCPU put back goes to the end of the round). A vCPU is *runnable*, *running* on one
//! host CPU, *blocked* (waiting in `WFI` for an interrupt or a deadline of the system counter,
//! or powered off), or *done* (its VM ended or was stopped). A blocked vCPU becomes runnable
//! when [`RunQueue::wake`] names it or its deadline has passed when a CPU looks for work. Stopping a VM makes its runnable vCPUs
//! done at once and marks its running ones *stopping*: the CPUs running them are returned so
//! the caller can kick them, and each becomes done when its CPU puts it back.
#![no_std]
#![forbid(unsafe_code)]

/// How many vCPUs the queue holds (all VMs together).
pub const CAPACITY: usize = 16;

/// Where a vCPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for a host CPU.
    Runnable,
    /// Being run by host CPU `cpu` (between [`RunQueue::pick`] and [`RunQueue::put_back`] or
    /// [`RunQueue::finish`]).
    Running {
        /// The host CPU.
        cpu: usize,
    },
    /// Waiting: runnable again once woken ([`RunQueue::wake`]) or once the system counter
    /// reaches `until` ([`NEVER`]: only when woken).
    Blocked {
        /// The deadline, in system-counter ticks.
        until: u64,
    },
    /// Will not run again (its VM ended or was stopped).
    Done,
}

/// A [`State::Blocked`] deadline that never comes.
pub const NEVER: u64 = u64::MAX;

/// One vCPU in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The VM's handle.
    pub vm: u64,
    /// The vCPU's index in its VM.
    pub vcpu: u64,
    /// Where it is.
    pub state: State,
    /// Its VM was stopped while it ran: done once put back.
    pub stopping: bool,
}

/// Why the queue refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No free slot.
    Full,
    /// This vCPU of this VM is already queued.
    Duplicate,
    /// A vCPU of the VM still runs on some host CPU.
    Busy,
    /// No such slot or VM.
    NotFound,
}

/// The run queue: a fixed table of vCPUs and the round-robin cursor.
#[derive(Debug)]
pub struct RunQueue {
    slots: [Option<Entry>; CAPACITY],
    cursor: usize,
}

impl Default for RunQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RunQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self { slots: [None; CAPACITY], cursor: 0 }
    }

    /// Queues vCPU `vcpu` of VM `vm` as runnable; returns its slot.
    ///
    /// # Errors
    /// [`Error::Duplicate`] if it is queued already, [`Error::Full`] without a free slot.
    pub fn add(&mut self, vm: u64, vcpu: u64) -> Result<usize, Error> {
        if self.slots.iter().flatten().any(|e| e.vm == vm && e.vcpu == vcpu) {
            return Err(Error::Duplicate);
        }
        let slot = self.slots.iter().position(Option::is_none).ok_or(Error::Full)?;
        self.slots[slot] = Some(Entry { vm, vcpu, state: State::Runnable, stopping: false });
        Ok(slot)
    }

    /// The entry in `slot`.
    pub fn entry(&self, slot: usize) -> Option<Entry> {
        self.slots.get(slot).copied().flatten()
    }

    /// The next runnable vCPU after the cursor, now running on `cpu`; `None` if none is
    /// runnable. `now` is the system counter: a blocked vCPU whose deadline has come is
    /// runnable.
    pub fn pick(&mut self, cpu: usize, now: u64) -> Option<(usize, Entry)> {
        for k in 0..CAPACITY {
            let slot = (self.cursor + k) % CAPACITY;
            let ready = |e: &&mut Entry| match e.state {
                State::Runnable => true,
                State::Blocked { until } => until != NEVER && until <= now,
                _ => false,
            };
            if let Some(e) = self.slots[slot].as_mut().filter(ready) {
                e.state = State::Running { cpu };
                self.cursor = (slot + 1) % CAPACITY;
                return Some((slot, *e));
            }
        }
        None
    }

    /// The running vCPU in `slot` goes back to the queue (runnable, or done if its VM was
    /// stopped meanwhile).
    ///
    /// # Errors
    /// [`Error::NotFound`] if `slot` holds no running vCPU.
    pub fn put_back(&mut self, slot: usize) -> Result<State, Error> {
        let e = self.running(slot)?;
        e.state = if e.stopping { State::Done } else { State::Runnable };
        Ok(e.state)
    }

    /// The running vCPU in `slot` waits until woken or until the counter reaches `until`
    /// (done instead if its VM was stopped meanwhile).
    ///
    /// # Errors
    /// [`Error::NotFound`] if `slot` holds no running vCPU.
    pub fn block(&mut self, slot: usize, until: u64) -> Result<State, Error> {
        let e = self.running(slot)?;
        e.state = if e.stopping { State::Done } else { State::Blocked { until } };
        Ok(e.state)
    }

    /// Makes vCPU `vcpu` of `vm` runnable if it is blocked; returns whether it was.
    pub fn wake(&mut self, vm: u64, vcpu: u64) -> bool {
        match self.slots.iter_mut().flatten().find(|e| e.vm == vm && e.vcpu == vcpu) {
            Some(e) if matches!(e.state, State::Blocked { .. }) => {
                e.state = State::Runnable;
                true
            }
            _ => false,
        }
    }

    /// The earliest deadline of a blocked vCPU, if any has one: when an idle host CPU should
    /// look again at the latest.
    pub fn next_deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|e| match e.state {
                State::Blocked { until } if until != NEVER => Some(until),
                _ => None,
            })
            .min()
    }

    /// Whether a vCPU is runnable now (at counter value `now`).
    pub fn any_ready(&self, now: u64) -> bool {
        self.slots.iter().flatten().any(|e| match e.state {
            State::Runnable => true,
            State::Blocked { until } => until != NEVER && until <= now,
            _ => false,
        })
    }

    /// The running vCPU in `slot` will not run again.
    ///
    /// # Errors
    /// [`Error::NotFound`] if `slot` holds no running vCPU.
    pub fn finish(&mut self, slot: usize) -> Result<(), Error> {
        self.running(slot)?.state = State::Done;
        Ok(())
    }

    fn running(&mut self, slot: usize) -> Result<&mut Entry, Error> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|e| matches!(e.state, State::Running { .. }))
            .ok_or(Error::NotFound)
    }

    /// Whether the vCPU in `slot` should stop now (its VM was stopped while it ran).
    pub fn stopping(&self, slot: usize) -> bool {
        self.entry(slot).is_some_and(|e| e.stopping)
    }

    /// Stops VM `vm`: its runnable vCPUs are done, its running ones stopping. Returns the
    /// host CPUs running one of them (bit `cpu`), which the caller kicks.
    pub fn stop_vm(&mut self, vm: u64) -> u64 {
        let mut cpus = 0;
        for e in self.slots.iter_mut().flatten().filter(|e| e.vm == vm) {
            match e.state {
                State::Runnable | State::Blocked { .. } => e.state = State::Done,
                State::Running { cpu } => {
                    e.stopping = true;
                    cpus |= 1 << cpu;
                }
                State::Done => {}
            }
        }
        cpus
    }

    /// The host CPUs running a vCPU of `vm` (bit `cpu`).
    pub fn running_on(&self, vm: u64) -> u64 {
        self.slots.iter().flatten().filter(|e| e.vm == vm).fold(0, |m, e| match e.state {
            State::Running { cpu } => m | 1 << cpu,
            _ => m,
        })
    }

    /// Whether any vCPU of `vm` may still run.
    pub fn live(&self, vm: u64) -> bool {
        self.slots.iter().flatten().any(|e| e.vm == vm && e.state != State::Done)
    }

    /// Makes every vCPU of a stopped `vm` runnable again.
    ///
    /// # Errors
    /// [`Error::Busy`] while a vCPU of it runs, [`Error::NotFound`] if it has no slot.
    pub fn requeue_vm(&mut self, vm: u64) -> Result<(), Error> {
        if self.running_on(vm) != 0 {
            return Err(Error::Busy);
        }
        let mut found = false;
        for e in self.slots.iter_mut().flatten().filter(|e| e.vm == vm) {
            *e = Entry { state: State::Runnable, stopping: false, ..*e };
            found = true;
        }
        found.then_some(()).ok_or(Error::NotFound)
    }

    /// Frees every slot of `vm` (before `VM_DESTROY`).
    ///
    /// # Errors
    /// [`Error::Busy`] while a vCPU of it runs (stop it first and wait), [`Error::NotFound`]
    /// if it has no slot.
    pub fn remove_vm(&mut self, vm: u64) -> Result<(), Error> {
        if self.running_on(vm) != 0 {
            return Err(Error::Busy);
        }
        let mut found = false;
        for s in self.slots.iter_mut().filter(|s| s.is_some_and(|e| e.vm == vm)) {
            *s = None;
            found = true;
        }
        found.then_some(()).ok_or(Error::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(vms: &[(u64, u64)]) -> RunQueue {
        let mut q = RunQueue::new();
        for &(vm, n) in vms {
            for v in 0..n {
                q.add(vm, v).unwrap();
            }
        }
        q
    }

    #[test]
    fn one_cpu_runs_every_vcpu_in_turn() {
        let mut q = queue(&[(0x100, 2), (0x101, 2)]);
        let mut order = [0; 8];
        for o in &mut order {
            let (slot, e) = q.pick(0, 0).unwrap();
            *o = e.vm << 4 | e.vcpu;
            assert_eq!(q.put_back(slot), Ok(State::Runnable));
        }
        assert_eq!(order, [0x1000, 0x1001, 0x1010, 0x1011, 0x1000, 0x1001, 0x1010, 0x1011]);
    }

    #[test]
    fn two_cpus_never_pick_the_same_vcpu() {
        let mut q = queue(&[(0x100, 2), (0x101, 2)]);
        let (a, _) = q.pick(0, 0).unwrap();
        let (b, _) = q.pick(1, 0).unwrap();
        assert_ne!(a, b);
        // While both run, the other two are picked; then nothing is runnable.
        let (c, _) = q.pick(0, 0).unwrap();
        let (d, _) = q.pick(1, 0).unwrap();
        assert_eq!([a, b, c, d], [0, 1, 2, 3]);
        assert_eq!(q.pick(0, 0), None);
        q.put_back(b).unwrap();
        assert_eq!(q.pick(0, 0).map(|p| p.0), Some(b));
    }

    #[test]
    fn a_vcpu_put_back_waits_for_the_rest_of_the_round() {
        // Four vCPUs, two CPUs: the vCPU CPU 0 puts back is picked only after the two that
        // waited, so a vCPU spinning for a sibling always lets that sibling in.
        let mut q = queue(&[(0x100, 2), (0x101, 2)]);
        let (a, _) = q.pick(0, 0).unwrap();
        let (_b, _) = q.pick(1, 0).unwrap();
        q.put_back(a).unwrap();
        assert_eq!(q.pick(0, 0).map(|p| p.0), Some(2));
        assert_eq!(q.pick(0, 0).map(|p| p.0), Some(3));
        assert_eq!(q.pick(0, 0).map(|p| p.0), Some(a));
    }

    #[test]
    fn stopping_a_vm_reports_the_cpus_to_kick() {
        let mut q = queue(&[(0x100, 2), (0x101, 1)]);
        let (s0, _) = q.pick(1, 0).unwrap(); // 0x100 vCPU 0 on CPU 1
        assert_eq!(q.stop_vm(0x100), 1 << 1);
        assert!(q.stopping(s0));
        assert_eq!(q.entry(1).unwrap().state, State::Done, "the runnable sibling is done at once");
        assert!(q.live(0x100), "still running on CPU 1");
        assert_eq!(q.remove_vm(0x100), Err(Error::Busy));
        assert_eq!(q.put_back(s0), Ok(State::Done));
        assert!(!q.live(0x100));
        assert_eq!(q.running_on(0x100), 0);
        assert_eq!(q.requeue_vm(0x100), Ok(()));
        assert_eq!(q.entry(s0).unwrap(), Entry { vm: 0x100, vcpu: 0, state: State::Runnable, stopping: false });
        assert_eq!(q.stop_vm(0x100), 0, "nothing running: no CPU to kick");
        assert_eq!(q.remove_vm(0x100), Ok(()));
        assert_eq!(q.requeue_vm(0x100), Err(Error::NotFound));
        assert_eq!(q.remove_vm(0x100), Err(Error::NotFound));
        // The other VM is untouched and its slot order kept.
        assert_eq!(q.pick(0, 0).map(|p| p.1.vm), Some(0x101));
        assert_eq!(q.stop_vm(0x999), 0);
    }

    #[test]
    fn finished_vcpus_are_never_picked_again() {
        let mut q = queue(&[(0x100, 2)]);
        let (a, _) = q.pick(0, 0).unwrap();
        q.finish(a).unwrap();
        let (b, _) = q.pick(0, 0).unwrap();
        q.put_back(b).unwrap();
        assert_eq!(q.pick(0, 0).map(|p| p.0), Some(b));
        assert_eq!(q.finish(a), Err(Error::NotFound), "not running");
        assert_eq!(q.put_back(7), Err(Error::NotFound));
    }

    #[test]
    fn slots_are_bounded_and_reused() {
        let mut q = RunQueue::new();
        for v in 0..CAPACITY as u64 {
            q.add(0x100, v).unwrap();
        }
        assert_eq!(q.add(0x101, 0), Err(Error::Full));
        assert_eq!(q.add(0x100, 3), Err(Error::Duplicate));
        assert_eq!(q.stop_vm(0x100), 0);
        q.remove_vm(0x100).unwrap();
        assert_eq!(q.add(0x101, 0), Ok(0));
    }

    #[test]
    fn blocked_vcpus_wait_for_a_wake_or_their_deadline() {
        let mut q = queue(&[(0x100, 3)]);
        let (a, _) = q.pick(0, 0).unwrap();
        let (b, _) = q.pick(1, 0).unwrap();
        assert_eq!(q.block(a, 1000), Ok(State::Blocked { until: 1000 }));
        assert_eq!(q.block(b, NEVER), Ok(State::Blocked { until: NEVER }));
        assert_eq!(q.next_deadline(), Some(1000), "NEVER is not a deadline");
        // Only vCPU 2 is runnable before the deadline.
        let (c, e) = q.pick(0, 999).unwrap();
        assert_eq!(e.vcpu, 2);
        assert_eq!(q.pick(1, 999), None);
        assert!(!q.any_ready(999));
        assert!(q.any_ready(1000));
        // At the deadline vCPU 0 is picked; vCPU 1 only once woken.
        assert_eq!(q.pick(1, 1000).map(|p| p.1.vcpu), Some(0));
        assert_eq!(q.pick(1, u64::MAX - 1), None);
        assert!(q.wake(0x100, 1));
        assert!(!q.wake(0x100, 1), "already runnable");
        assert!(!q.wake(0x100, 2), "running, not blocked");
        assert!(!q.wake(0x999, 0));
        assert_eq!(q.pick(1, 0).map(|p| p.0), Some(b));
        assert_eq!(q.block(7, 0), Err(Error::NotFound));
        let _ = c;
    }

    #[test]
    fn stopping_a_vm_ends_its_blocked_vcpus() {
        let mut q = queue(&[(0x100, 2)]);
        let (a, _) = q.pick(0, 0).unwrap();
        let (b, _) = q.pick(0, 0).unwrap();
        q.block(a, NEVER).unwrap();
        assert_eq!(q.stop_vm(0x100), 1, "only the running one needs a kick");
        assert_eq!(q.entry(a).unwrap().state, State::Done);
        assert_eq!(q.block(b, 5), Ok(State::Done), "a stopping vCPU that blocks is done");
        assert!(!q.live(0x100));
        assert_eq!(q.next_deadline(), None);
    }
}
