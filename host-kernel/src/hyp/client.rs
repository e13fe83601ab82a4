//! Typed hypercalls for VMs and vCPUs: each wraps one untyped [`super::call`], moving its
//! message through this CPU's message page, and `VCPU_RUN`'s exit record comes back decoded
//! ([`Exit`], shared with EL2's encoder in [`shared_abi::msg`]).

use super::{call, read_msg, write_msg};
use crate::cpu::cpu_id;
use shared_abi::msg::{BadExit, Exit, VcpuExit, VcpuStats, VgicState, VmCreate};
use shared_abi::{HypError, HypercallId};

/// A VM, by its handle at EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmHandle(pub u64);

/// One vCPU of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vcpu {
    /// Its VM.
    pub vm: VmHandle,
    /// Its index in the VM.
    pub index: u64,
}

/// How `VCPU_RUN` returned: the exit, and the record it came in (for the fields every record
/// carries: [`shared_abi::msg::exit::FLAG_EOI`] and the timer deadlines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    /// Why the vCPU stopped.
    pub exit: Exit,
    /// The record as EL2 wrote it.
    pub record: VcpuExit,
}

impl Exited {
    /// Whether the guest has deactivated interrupts the host asked to hear about
    /// ([`Vcpu::irq_state`] says which).
    pub fn eoi(&self) -> bool {
        self.record.flags & shared_abi::msg::exit::FLAG_EOI != 0
    }
}

/// Fails for an exit record that does not decode. Out of line and cold, so that the record on
/// [`Vcpu::run`]'s path stays in registers rather than on the stack for the formatter.
#[cold]
#[inline(never)]
fn malformed(e: BadExit, record: VcpuExit) -> ! {
    crate::fail::fail(format_args!("VCPU_RUN: malformed exit record ({e:?}): {record:x?}"))
}

impl VmHandle {
    /// `VM_CREATE`.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn create(req: &VmCreate) -> Result<Self, HypError> {
        write_msg(cpu_id(), req);
        Ok(Self(call(HypercallId::VmCreate, &[])?[0]))
    }

    /// `VM_ADD_MEMORY`: gives the VM `pages` pages of host memory at `backing`, at `ipa`, with
    /// [`shared_abi::measure::add_flags`] `flags` (what the pages hold, for the measurement).
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn add_memory(self, backing: u64, ipa: u64, pages: u64, flags: u64) -> Result<(), HypError> {
        call(HypercallId::VmAddMemory, &[self.0, backing, ipa, pages, flags]).map(drop)
    }

    /// `VM_MMIO_GUARD`: declares the granule at `ipa` MMIO and turns the VM's guard on (a
    /// protected VM, before its first run).
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn mmio_guard(self, ipa: u64) -> Result<(), HypError> {
        call(HypercallId::VmMmioGuard, &[self.0, ipa]).map(drop)
    }

    /// `VM_SMCCC_FORWARD`: the guest's SMCCC calls with IDs `first..first + count` that EL2
    /// does not serve exit to the host (before the VM's first run).
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn smccc_forward(self, first: u64, count: u64) -> Result<(), HypError> {
        call(HypercallId::VmSmcccForward, &[self.0, first, count]).map(drop)
    }

    /// `VM_MMIO_COALESCE`: guest writes wholly inside the `len` bytes at `ipa` complete
    /// without an exit, and later exit records carry them ([`Exited::record`]'s `coalesced`,
    /// [`super::read_coalesced`]). Before the VM's first run.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn mmio_coalesce(self, ipa: u64, len: u64) -> Result<(), HypError> {
        call(HypercallId::VmMmioCoalesce, &[self.0, ipa, len]).map(drop)
    }

    /// `VM_TOPUP_TABLES`: donates `pages` pages of host memory at `pa` to EL2 as table pages
    /// for the VM's stage 2 (back to the host at `VM_DESTROY`).
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn topup_tables(self, pa: u64, pages: u64) -> Result<(), HypError> {
        call(HypercallId::VmTopupTables, &[self.0, pa, pages]).map(drop)
    }

    /// `VM_MEASUREMENT`: the VM's measurement, `None` before its first run.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn measurement(self) -> Result<Option<[u8; 32]>, HypError> {
        let sealed = call(HypercallId::VmMeasurement, &[self.0])?[0] == 1;
        let m: shared_abi::msg::VmMeasurement = read_msg(cpu_id());
        Ok(sealed.then_some(m.measurement))
    }

    /// `VM_DESTROY`.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn destroy(self) -> Result<(), HypError> {
        call(HypercallId::VmDestroy, &[self.0]).map(drop)
    }

    /// vCPU `index` of this VM.
    pub const fn vcpu(self, index: u64) -> Vcpu {
        Vcpu { vm: self, index }
    }
}

impl Vcpu {
    /// `VCPU_RUN`, with `mmio_value` for the MMIO read the last exit asked for and `flags`
    /// ([`shared_abi::msg::run_flags`]: abort that access instead). An exit record that does not
    /// decode breaks the ABI: the host fails.
    ///
    /// # Errors
    /// EL2's refusal to run the vCPU.
    // Inlined into the exit loop: the decoded exit then stays in registers instead of being
    // returned through memory (about a dozen instructions on every exit).
    #[inline(always)]
    pub fn run(self, mmio_value: u64, flags: u64) -> Result<Exited, HypError> {
        call(HypercallId::VcpuRun, &[self.vm.0, self.index, mmio_value, flags])?;
        let record: VcpuExit = read_msg(cpu_id());
        match Exit::decode(&record) {
            Ok(exit) => Ok(Exited { exit, record }),
            Err(e) => malformed(e, record),
        }
    }

    /// `VCPU_SET_REG`.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn set_reg(self, reg: u64, value: u64) -> Result<(), HypError> {
        call(HypercallId::VcpuSetReg, &[self.vm.0, self.index, reg, value]).map(drop)
    }

    /// `VCPU_GET_REG`.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn get_reg(self, reg: u64) -> Result<u64, HypError> {
        Ok(call(HypercallId::VcpuGetReg, &[self.vm.0, self.index, reg])?[0])
    }

    /// `VCPU_STATS`: the exceptions the vCPU took to EL2, by class.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn stats(self) -> Result<VcpuStats, HypError> {
        call(HypercallId::VcpuStats, &[self.vm.0, self.index])?;
        Ok(read_msg(cpu_id()))
    }

    /// `VCPU_SET_IRQ`: queues virtual interrupt `intid` with `config`
    /// ([`shared_abi::msg::irq`]) in a list register.
    ///
    /// # Errors
    /// EL2's refusal (`NoCapacity`: no list register free; `Busy`: `intid` is in one).
    pub fn set_irq(self, intid: u32, config: u32) -> Result<(), HypError> {
        call(HypercallId::VcpuSetIrq, &[self.vm.0, self.index, intid as u64, config as u64]).map(drop)
    }

    /// `VCPU_LINK_VTIMER`: links the vCPU's virtual timer to vINTID 27 with `config` (priority
    /// and [`shared_abi::msg::irq::GROUP1`]), so that EL2 delivers it without exits; `None`
    /// unlinks.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn link_vtimer(self, config: Option<u32>) -> Result<(), HypError> {
        let (on, c) = config.map_or((0, 0), |c| (1, c as u64));
        call(HypercallId::VcpuLinkVtimer, &[self.vm.0, self.index, on, c]).map(drop)
    }

    /// `VCPU_LINK_SGIS`: links the vCPU's SGIs with `config` (enabled SGIs in bits 15:0, Group 1
    /// ones in bits 31:16; byte n of the priorities = SGI n's), so that EL2 delivers its
    /// siblings' SGIs while it runs; `None` unlinks, and returns the SGIs EL2 still held
    /// pending (bit n = SGI n), the caller's to deliver.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn link_sgis(self, config: Option<(u32, u128)>) -> Result<u16, HypError> {
        let (on, masks, p) = config.map_or((0, 0, 0), |(m, p)| (1, m as u64, p));
        call(HypercallId::VcpuLinkSgis, &[self.vm.0, self.index, on, masks, p as u64, (p >> 64) as u64]).map(|r| r[0] as u16)
    }

    /// `VCPU_IRQ_STATE`: the list registers and the deactivations not yet collected.
    ///
    /// # Errors
    /// EL2's refusal.
    pub fn irq_state(self) -> Result<VgicState, HypError> {
        call(HypercallId::VcpuIrqState, &[self.vm.0, self.index])?;
        Ok(read_msg(cpu_id()))
    }
}
