//! The scenarios' harness: a vCPU stepped exit by exit ([`Stepper`]), every exit but MMIO left
//! to the scenario. On its bus: the PL011's data register, printed a line at a time, and the
//! test device through which a scenario talks to its guest ([`TestDevice`]), in the one exit
//! loop ([`crate::run`]). Its VMs are laid out on the one VM platform like every other
//! ([`crate::boot`]); the devices the harness does not serve read as 0.

use crate::bus::{Bus, Device, Wake};
use crate::run::Machine;
use crate::run;
use crate::{println, Outcome, Vm};
use host_vdev::vm_platform::{TEST_DEVICE as TESTDEV, UART};
use core::ops::Range;
use host_kernel::hyp::client::Exited;
use shared_abi::msg::Exit;
use shared_abi::HypError;

/// What a scenario does when its guest uses the test device.
pub trait TestDevice {
    /// The guest wrote `v`.
    fn write(&mut self, vm: &Vm, v: u64);
    /// The guest reads.
    fn read(&mut self, vm: &Vm) -> u64;
    /// Every exit, before it is handled (a guest SGI, the EOI flag, ...).
    fn exit(&mut self, _vm: &Vm, _e: &Exited) {}
    /// A guest SMCCC call the scenario had the VM forward (`VM_SMCCC_FORWARD`): the guest's
    /// `x0`.
    fn call(&mut self, _vm: &Vm, _args: [u64; 4]) -> u64 {
        run::SMCCC_NOT_SUPPORTED
    }
}

/// A test device that does nothing.
pub struct NoDevice;
impl TestDevice for NoDevice {
    fn write(&mut self, _: &Vm, _: u64) {}
    fn read(&mut self, _: &Vm) -> u64 {
        0
    }
}

/// A test device that answers every read with one value (a guest's role or parameter).
pub struct ValueDevice(pub u64);
impl TestDevice for ValueDevice {
    fn write(&mut self, _: &Vm, _: u64) {}
    fn read(&mut self, _: &Vm) -> u64 {
        self.0
    }
}

/// A vCPU's console: the UART's data register, printed a line at a time. Every other register
/// reads 0 (the flag register: never busy) and ignores writes.
struct ConsoleLine {
    line: [u8; 160],
    len: usize,
}

impl ConsoleLine {
    const fn new() -> Self {
        Self { line: [0; 160], len: 0 }
    }
}

impl Device for ConsoleLine {
    fn ranges(&self) -> &[Range<u64>] {
        const RANGE: Range<u64> = UART..UART + 0x1000;
        core::slice::from_ref(&RANGE)
    }

    fn mmio(&mut self, ipa: u64, _size: u32, write: Option<u64>) -> (u64, Wake) {
        if let (UART, Some(data)) = (ipa, write) {
            let c = data as u8;
            if c == b'\n' || self.len == self.line.len() {
                println!("{}", core::str::from_utf8(&self.line[..self.len]).unwrap_or("<bad utf-8>"));
                self.len = 0;
            }
            if c != b'\n' {
                self.line[self.len] = c;
                self.len += 1;
            }
        }
        (0, 0)
    }
}

/// The test device's one register, at [`TESTDEV`], served by the scenario's [`TestDevice`].
struct TestPort<'a> {
    vm: &'a Vm,
    dev: &'a mut dyn TestDevice,
}

impl Device for TestPort<'_> {
    fn ranges(&self) -> &[Range<u64>] {
        const RANGE: Range<u64> = TESTDEV..TESTDEV + 1;
        core::slice::from_ref(&RANGE)
    }

    fn mmio(&mut self, _ipa: u64, _size: u32, write: Option<u64>) -> (u64, Wake) {
        match write {
            Some(v) => {
                self.dev.write(self.vm, v);
                (0, 0)
            }
            None => (self.dev.read(self.vm), 0),
        }
    }
}

/// A test VM's vCPU in the exit loop: its console and the scenario's test device on the bus;
/// an `IRQ` exit has the host's pending interrupts handled; every other exit is the caller's
/// (an SGI is the test device's to deliver, if it wants: it saw the exit first).
struct TestMachine<'a> {
    vm: &'a Vm,
    index: u64,
    console: &'a mut ConsoleLine,
    dev: &'a mut dyn TestDevice,
}

impl Machine for TestMachine<'_> {
    type Step = Ran;

    fn vcpu(&self) -> (&Vm, u64) {
        (self.vm, self.index)
    }

    fn after_exit(&mut self, e: &Exited) -> Result<(), HypError> {
        self.dev.exit(self.vm, e);
        Ok(())
    }

    fn smccc_call(&mut self, args: [u64; 4]) -> u64 {
        self.dev.call(self.vm, args)
    }

    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> Option<u64> {
        let mut port = TestPort { vm: self.vm, dev: &mut *self.dev };
        Bus([&mut *self.console, &mut port]).access(ipa, size, write).map(|(v, _)| v)
    }

    fn exit(&mut self, e: &Exited) -> Ran {
        match e.exit {
            Exit::Irq => {
                crate::gic::handle_pending();
                Ran::Exit(Exit::Irq)
            }
            Exit::Mmio { .. } | Exit::Wfx | Exit::Hypercall { .. } | Exit::VcpuOff | Exit::Sgi { .. } | Exit::CpuOn { .. } | Exit::MemShare { .. } | Exit::MemUnshare { .. } | Exit::NeedTables { .. } => Ran::Exit(e.exit),
            Exit::SystemOff => Ran::Ended(Outcome::Off),
            Exit::SystemReset => Ran::Ended(Outcome::Reset),
            Exit::Killed { reason, ipa, detail } => Ran::Ended(Outcome::Killed(reason, ipa, detail)),
        }
    }
}

/// What one `VCPU_RUN` of [`Stepper::run_once`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// The vCPU exited so and may run again.
    Exit(Exit),
    /// The VM ended.
    Ended(Outcome),
}

/// One vCPU's run state between exits: its console line, a pending MMIO read value, and
/// whether it was off at its last run (for [`crate::pinned`]).
pub struct Stepper {
    console: ConsoleLine,
    reply: run::MmioReply,
    pub(crate) off_since: Option<u64>,
}

impl Default for Stepper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stepper {
    /// A fresh vCPU.
    pub const fn new() -> Self {
        Self { console: ConsoleLine::new(), reply: run::MmioReply::ZERO, off_since: None }
    }

    /// Runs vCPU `index` to its next exit and handles it: the exit reason, or how the VM
    /// ended. An `IRQ` exit has had the host's pending interrupts handled
    /// ([`crate::gic::handle_pending`]); a `VCPU_OFF` one is only reported. A `NEED_TABLES`
    /// exit is answered ([`run::give_tables`]) and the vCPU run again: the scenarios step the
    /// guest's exits, not the VMM's memory management (the test device still sees it).
    pub fn run_once(&mut self, vm: &Vm, index: u64, dev: &mut dyn TestDevice) -> Result<Ran, HypError> {
        loop {
            match run::step(&mut TestMachine { vm, index, console: &mut self.console, dev: &mut *dev }, &mut self.reply)? {
                Ran::Exit(Exit::NeedTables { .. }) => continue,
                r => return Ok(r),
            }
        }
    }
}
