//! The virtual GICv3 CPU interface of each vCPU: its list registers, the host's requests to
//! fill them (validated field by field), what the world switch moves, and the decoding of a
//! guest's SGI writes.
//!
//! Place in the flow: *validation and state*, plain Rust (unit-tested on the host). The host
//! emulates the distributor and redistributors (MMIO exits) and decides which interrupt goes
//! to which vCPU; EL2 decides how: only through `VCPU_SET_IRQ`, whose request EL2 turns into
//! an `ICH_LR<n>_EL2` value itself, so a list register never holds a bit the host chose
//! beyond the documented fields. What the world switch moves, and when, is decided here
//! ([`VgicCpu::load`], [`VgicCpu::put`]) over the [`IchRegs`] seam, which `arch::switch::vgic`
//! implements with the `ICH_*_EL2` registers and the tests with a model of one CPU;
//! [`VgicCpu::after_put`] then frees the list registers the guest has finished with.
//!
//! Register layouts: Arm GICv3/v4 architecture specification (IHI 0069), `ICH_LR<n>_EL2`,
//! `ICH_HCR_EL2`, `ICH_VTR_EL2`, `ICC_SGI1R_EL1`.

use crate::exception::syndrome::SysregAccess;
use crate::guest::MAX_VCPUS;
use shared_abi::msg::{irq, sgi, VgicState, MAX_LRS};

/// `ICH_LR<n>_EL2` fields.
pub mod lr {
    /// `vINTID`, bits 31:0.
    pub const VINTID: u64 = 0xFFFF_FFFF;
    /// `pINTID`, bits 44:32 (with `HW`).
    pub const PINTID_SHIFT: u32 = 32;
    /// `EOI`, bit 41 (without `HW`): a maintenance interrupt when the guest deactivates it.
    pub const EOI: u64 = 1 << 41;
    /// `Priority`, bits 55:48.
    pub const PRIORITY_SHIFT: u32 = 48;
    /// `Group`, bit 60: Group 1.
    pub const GROUP1: u64 = 1 << 60;
    /// `HW`, bit 61.
    pub const HW: u64 = 1 << 61;
    /// `State`, bits 63:62 (0 invalid, 1 pending, 2 active, 3 pending and active).
    pub const STATE_SHIFT: u32 = 62;
}

/// `ICH_HCR_EL2` while a guest runs: `En` only. No underflow, no-pending or group-enable
/// maintenance interrupts (the host keeps overflow interrupts in its own model and queues
/// them after an exit), no traps of the guest's `ICV_*` accesses. Deactivation of a
/// level-sensitive interrupt raises the maintenance interrupt through the list register's
/// own `EOI` bit. The host runs with `ICH_HCR_EL2 = 0`.
pub const ICH_HCR_GUEST: u64 = 1;

/// The virtual CPU interface's size, from `ICH_VTR_EL2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VgicCaps {
    /// List registers (`ListRegs + 1`), 1..=16.
    pub nr_lrs: u8,
    /// Virtual priority bits (`PRIbits + 1`), 5..=8.
    pub pri_bits: u8,
    /// Virtual preemption bits (`PREbits + 1`), 5..=7.
    pub pre_bits: u8,
}

impl VgicCaps {
    /// From `ICH_VTR_EL2`: `ListRegs` [4:0], `PREbits` [28:26], `PRIbits` [31:29].
    pub const fn from_vtr(vtr: u64) -> Self {
        let nr = (vtr & 0x1F) as u8 + 1;
        Self {
            nr_lrs: if nr as usize > MAX_LRS { MAX_LRS as u8 } else { nr },
            pre_bits: ((vtr >> 26) & 7) as u8 + 1,
            pri_bits: ((vtr >> 29) & 7) as u8 + 1,
        }
    }

    /// Field by field, what both `self` and `other` implement.
    pub fn min(self, other: Self) -> Self {
        Self { nr_lrs: self.nr_lrs.min(other.nr_lrs), pri_bits: self.pri_bits.min(other.pri_bits), pre_bits: self.pre_bits.min(other.pre_bits) }
    }

    /// Packed for an atomic (0: no virtual CPU interface).
    pub const fn bits(self) -> u32 {
        self.nr_lrs as u32 | (self.pri_bits as u32) << 8 | (self.pre_bits as u32) << 16
    }

    /// Unpacks [`Self::bits`]; `None` for 0.
    pub const fn from_bits(b: u32) -> Option<Self> {
        if b & 0xFF == 0 {
            return None;
        }
        Some(Self { nr_lrs: b as u8, pri_bits: (b >> 8) as u8, pre_bits: (b >> 16) as u8 })
    }
}

/// How many `ICH_AP0R<n>_EL2` (and as many `ICH_AP1R<n>_EL2`) exist for `ICH_VTR_EL2 = vtr`:
/// 1 for 5 preemption bits, 2 for 6, 4 for 7.
pub const fn apr_count(vtr: u64) -> usize {
    match (vtr >> 26) & 7 {
        0..=4 => 1,
        5 => 2,
        _ => 4,
    }
}

/// The virtual CPU interface's registers in this CPU (`ICH_*_EL2`), as the world switch reaches
/// them: `arch::switch::vgic` implements it with the system registers, the tests with a model
/// of one CPU that vCPUs of several VMs take turns on.
pub trait IchRegs {
    /// How many `ICH_AP0R<n>_EL2` (and as many `ICH_AP1R<n>_EL2`) this CPU has: [`apr_count`]
    /// of its `ICH_VTR_EL2`.
    fn apr_count(&self) -> usize;
    /// Reads `ICH_VMCR_EL2`.
    fn vmcr(&self) -> u64;
    /// Writes `ICH_VMCR_EL2`.
    fn set_vmcr(&mut self, v: u64);
    /// Writes `ICH_HCR_EL2`.
    fn set_hcr(&mut self, v: u64);
    /// Reads the first [`Self::apr_count`] `ICH_AP0R<n>_EL2` into `ap0` and `ICH_AP1R<n>_EL2`
    /// into `ap1`; the other entries are left as they are (those registers do not exist).
    fn read_aprs(&self, ap0: &mut [u32; 4], ap1: &mut [u32; 4]);
    /// Writes the first [`Self::apr_count`] `ICH_AP0R<n>_EL2` and `ICH_AP1R<n>_EL2`.
    fn write_aprs(&mut self, ap0: &[u32; 4], ap1: &[u32; 4]);
    /// Reads `ICH_LR<n>_EL2`, `n` below the CPU's `ICH_VTR_EL2.ListRegs + 1`.
    fn lr(&self, n: usize) -> u64;
    /// Writes `ICH_LR<n>_EL2`, `n` as for [`Self::lr`].
    fn set_lr(&mut self, n: usize, v: u64);
}

/// Boot, on every CPU with the interface (after `ICC_SRE_EL2.SRE` is in effect): the virtual
/// interface off and every list register and active priority zero (their reset values are
/// UNKNOWN), so a vCPU's load finds only its own state in them. `ICH_VMCR_EL2` needs nothing:
/// every load writes it.
pub fn reset_cpu_interface(cpu: &mut impl IchRegs, vtr: u64) {
    cpu.set_hcr(0);
    cpu.write_aprs(&[0; 4], &[0; 4]);
    for n in 0..=(vtr & 0x1F) as usize {
        cpu.set_lr(n, 0);
    }
}

/// Why a `VCPU_SET_IRQ` request is refused (converted to the ABI error in `vm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// A field outside its domain: vINTID, priority bits the CPU lacks, state 0, a pINTID
    /// without `HW`, an undefined bit (`InvalidArgument`).
    BadField,
    /// `HW`: only EL2 writes a hardware interrupt, the linked virtual timer's (`Denied`).
    Hardware,
    /// The CPUs have no virtual GICv3 CPU interface (`Denied`).
    NoVgic,
    /// The vINTID is already in one of the vCPU's list registers (`Busy`: it leaves once the
    /// guest has deactivated it).
    Queued,
    /// Every list register is in use (`NoCapacity`).
    Full,
    /// vINTID 27 while the vCPU's virtual timer is linked: EL2 delivers it (`Denied`).
    Linked,
}

/// Turns a host request into the `ICH_LR<n>_EL2` value EL2 will write, checking every field.
///
/// # Errors
/// [`IrqError::BadField`], [`IrqError::Hardware`].
pub fn lr_from_request(vintid: u64, config: u64, caps: VgicCaps) -> Result<u64, IrqError> {
    if vintid > irq::MAX_VINTID as u64 || config & !(irq::DEFINED as u64) != 0 {
        return Err(IrqError::BadField);
    }
    let c = config as u32;
    let state = (c & irq::STATE_MASK) >> irq::STATE_SHIFT;
    let priority = c & irq::PRIORITY_MASK;
    if state == 0 || !priority_ok(priority, caps) {
        return Err(IrqError::BadField);
    }
    if c & irq::HW != 0 {
        return Err(IrqError::Hardware);
    }
    if c & irq::PINTID_MASK != 0 {
        return Err(IrqError::BadField);
    }
    let mut v = vintid | (priority as u64) << lr::PRIORITY_SHIFT | (state as u64) << lr::STATE_SHIFT;
    if c & irq::GROUP1 != 0 {
        v |= lr::GROUP1;
    }
    if c & irq::EOI_NOTIFY != 0 {
        v |= lr::EOI;
    }
    Ok(v)
}

/// Whether the list register holds `priority` as it is: priority bits below the implemented
/// ones are RAZ/WI there, so a value that uses them would not be the priority the host asked
/// for.
fn priority_ok(priority: u32, caps: VgicCaps) -> bool {
    let unimplemented = (1u32 << (8 - caps.pri_bits.clamp(1, 8))) - 1;
    priority & unimplemented == 0
}

/// The virtual timer's PPI, its vINTID and, on every CPU, its pINTID ([`irq::VTIMER_PPI`]).
pub const VTIMER_PPI: u64 = irq::VTIMER_PPI as u64;

/// `VCPU_LINK_VTIMER`'s configuration turned into the list-register value EL2 writes, with its
/// state, when the linked virtual timer fires: vINTID 27, `HW` with pINTID 27, the host's
/// priority and group. Nothing else is accepted: the host chooses neither the INTIDs nor `HW`.
///
/// # Errors
/// [`IrqError::BadField`]: a bit other than the priority and [`irq::GROUP1`], or a priority
/// bit the CPU lacks.
pub fn vtimer_lr(config: u64, caps: VgicCaps) -> Result<u64, IrqError> {
    let priority = (config & irq::PRIORITY_MASK as u64) as u32;
    if config & !((irq::PRIORITY_MASK | irq::GROUP1) as u64) != 0 || !priority_ok(priority, caps) {
        return Err(IrqError::BadField);
    }
    let group = if config & irq::GROUP1 as u64 != 0 { lr::GROUP1 } else { 0 };
    Ok(VTIMER_PPI | lr::HW | VTIMER_PPI << lr::PINTID_SHIFT | (priority as u64) << lr::PRIORITY_SHIFT | group)
}

/// `VCPU_LINK_SGIS`' configuration (`masks`: enabled SGIs in bits 15:0, Group 1 ones in bits
/// 31:16; `priorities`: byte n = SGI n's) turned into the list-register value of each SGI EL2
/// queues (vINTID n, the priority and group), enabled or not.
///
/// # Errors
/// [`IrqError::BadField`]: a mask bit above 31, or a priority bit the CPU lacks.
pub fn sgi_lrs(masks: u64, priorities: u128, caps: VgicCaps) -> Result<[u64; 16], IrqError> {
    if masks >> 32 != 0 {
        return Err(IrqError::BadField);
    }
    let mut lrs = [0; 16];
    for (n, v) in lrs.iter_mut().enumerate() {
        let priority = (priorities >> (8 * n)) as u32 & irq::PRIORITY_MASK;
        if !priority_ok(priority, caps) {
            return Err(IrqError::BadField);
        }
        let group = if masks >> (16 + n) & 1 != 0 { lr::GROUP1 } else { 0 };
        *v = n as u64 | (priority as u64) << lr::PRIORITY_SHIFT | group;
    }
    Ok(lrs)
}

/// `CNTV_CTL_EL0` of a timer whose interrupt output is asserted: enabled, not masked, its
/// condition met (`ISTATUS`).
pub const fn timer_asserts(ctl: u64) -> bool {
    use crate::guest::timer::{TIMER_ENABLE, TIMER_IMASK, TIMER_ISTATUS};
    ctl & (TIMER_ENABLE | TIMER_IMASK | TIMER_ISTATUS) == TIMER_ENABLE | TIMER_ISTATUS
}

/// What [`VgicCpu::take_vtimer`] made of a physical IRQ that ended a guest's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtimerIrq {
    /// Not the vCPU's linked virtual timer firing: the host's interrupt (an `IRQ` exit).
    NotOurs,
    /// vINTID 27 queued, pending, in list register `n`.
    Queued(usize),
    /// vINTID 27 is already in a list register, pending or active: the guest takes or finishes
    /// that one first (its deactivation of a `HW` one deactivates the physical PPI, which then
    /// fires again while the timer still asserts).
    AlreadyQueued,
    /// No list register free: the interrupt waits for the vCPU's next entry after an exit to
    /// the host (the host's tick at the latest), when the timer, still asserted, fires again.
    NoFreeLr,
}

/// The ABI encoding (vINTID in bits 31:0, [`irq`] configuration in bits 63:32) of a list
/// register value; 0 for a free one.
pub const fn lr_to_abi(v: u64) -> u64 {
    let state = (v >> lr::STATE_SHIFT) & 3;
    let mut c = ((v >> lr::PRIORITY_SHIFT) & 0xFF) as u32 | (state as u32) << irq::STATE_SHIFT;
    if v & lr::GROUP1 != 0 {
        c |= irq::GROUP1;
    }
    if v & lr::HW != 0 {
        c |= irq::HW | (((v >> lr::PINTID_SHIFT) & 0x1FFF) as u32) << irq::PINTID_SHIFT;
    } else if v & lr::EOI != 0 {
        c |= irq::EOI_NOTIFY;
    }
    (c as u64) << 32 | (v & lr::VINTID)
}

/// One vCPU's virtual CPU interface, as the world switch moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgicCpu {
    /// `ICH_VMCR_EL2`: the guest's `ICC_PMR_EL1`, binary points and group enables.
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2` (only as many as `ICH_VTR_EL2.PREbits` implies move).
    pub ap0r: [u32; 4],
    /// `ICH_AP1R<n>_EL2`.
    pub ap1r: [u32; 4],
    /// `ICH_LR<n>_EL2`; zero where `used` is clear.
    pub lr: [u64; MAX_LRS],
    /// Bit n: `lr[n]` holds an interrupt. Only these list registers are written at load and
    /// read (and cleared) at put; the others are zero in the CPU whenever no guest runs.
    pub used: u16,
    /// vINTIDs 0..=1023 the guest deactivated with [`lr::EOI`] set, not yet collected by the
    /// host (`VCPU_IRQ_STATE`).
    pub eoi: [u64; 16],
    /// `eoi` is not empty (kept so that every exit need not scan it).
    pub eoi_waiting: bool,
    /// The linked virtual timer (`VCPU_LINK_VTIMER`): the list-register value
    /// [`Self::take_vtimer`] writes, pending ([`vtimer_lr`]); 0 when not linked. Kept across a
    /// PSCI `CPU_ON` reset, like the list registers (the host's distributor model is not reset).
    pub vtimer: u64,
    /// List registers the VM's vCPUs may use (the smallest number of any CPU), from a link.
    pub nr_lrs_linked: u8,
    /// Linked SGIs (`VCPU_LINK_SGIS`): per SGI, the list-register value
    /// [`Self::queue_sgis_live`] writes, pending ([`sgi_lrs`]).
    pub sgi: [u64; 16],
    /// The linked SGIs the guest has enabled (bit n = SGI n); 0 while not linked.
    pub sgi_on: u16,
}

impl VgicCpu {
    /// Nothing for the interface to deliver or remember: no list register in use and no
    /// active priority. Such a vCPU cannot acknowledge a virtual interrupt during the run (only
    /// list registers hold them, and EL2 changes those only between runs), so its load moves
    /// `ICH_VMCR_EL2` alone and leaves the interface disabled (`ICH_HCR_EL2.En` 0); the
    /// active-priority registers are zero in the CPU whenever no guest runs. It can still
    /// write its active priorities directly, so [`Self::put`] reads them back all the same.
    pub fn idle(&self) -> bool {
        self.used == 0 && self.ap0r == [0; 4] && self.ap1r == [0; 4]
    }

    /// The world switch's load: the priority mask and enables (`ICH_VMCR_EL2`); unless the
    /// interface is [idle](Self::idle), the active priorities, the used list registers (the
    /// others are zero in the CPU: every put clears what it loaded, and boot clears them all)
    /// and `ICH_HCR_EL2.En`. Returns whether it was idle, for [`Self::put`].
    pub fn load(&self, cpu: &mut impl IchRegs) -> bool {
        cpu.set_vmcr(self.vmcr);
        let idle = self.idle();
        if !idle {
            cpu.write_aprs(&self.ap0r, &self.ap1r);
            let mut used = self.used;
            while used != 0 {
                let n = used.trailing_zeros() as usize;
                cpu.set_lr(n, self.lr[n]);
                used &= used - 1;
            }
            cpu.set_hcr(ICH_HCR_GUEST);
        }
        idle
    }

    /// The world switch's put (`idle_at_load`: what [`Self::load`] returned): the host runs with
    /// the virtual interface off (no maintenance interrupt), and with no list register or
    /// active priority of this vCPU left in the CPU.
    ///
    /// The active priorities come back even if the vCPU was idle at load: the guest writes
    /// `ICC_AP0R<n>_EL1`/`ICC_AP1R<n>_EL1` directly (`ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` under
    /// `HCR_EL2.IMO/FMO`, never trapped), without any list register. Non-zero ones are saved
    /// (the vCPU is then no longer idle, and its next load restores them) and zeroed in the
    /// CPU, which an idle load relies on (finding N3 of the security review).
    pub fn put(&mut self, cpu: &mut impl IchRegs, idle_at_load: bool) {
        self.vmcr = cpu.vmcr();
        if !idle_at_load {
            cpu.set_hcr(0);
        }
        cpu.read_aprs(&mut self.ap0r, &mut self.ap1r);
        if self.ap0r != [0; 4] || self.ap1r != [0; 4] {
            cpu.write_aprs(&[0; 4], &[0; 4]);
        }
        // After an idle load nothing is used: EL2 queues interrupts only between runs.
        let mut used = self.used;
        while used != 0 {
            let n = used.trailing_zeros() as usize;
            self.lr[n] = cpu.lr(n);
            cpu.set_lr(n, 0);
            used &= used - 1;
        }
    }

    /// At reset: nothing queued, everything masked.
    pub const fn new() -> Self {
        Self { vmcr: 0, ap0r: [0; 4], ap1r: [0; 4], lr: [0; MAX_LRS], used: 0, eoi: [0; 16], eoi_waiting: false, vtimer: 0, nr_lrs_linked: 0, sgi: [0; 16], sgi_on: 0 }
    }

    /// Puts the validated list-register value `v` ([`lr_from_request`]) into the lowest free
    /// list register below `nr_lrs`; returns its index.
    ///
    /// # Errors
    /// [`IrqError::Queued`] if its vINTID is already in a list register (two list registers
    /// with one vINTID are UNPREDICTABLE), [`IrqError::Full`], [`IrqError::Linked`].
    pub fn queue(&mut self, v: u64, nr_lrs: u8) -> Result<usize, IrqError> {
        let vintid = v & lr::VINTID;
        if vintid == VTIMER_PPI && self.vtimer != 0 {
            return Err(IrqError::Linked);
        }
        if self.used_lrs().any(|n| self.lr[n] & lr::VINTID == vintid) {
            return Err(IrqError::Queued);
        }
        let n = self.free_lr(nr_lrs).ok_or(IrqError::Full)?;
        self.lr[n] = v;
        self.used |= 1 << n;
        Ok(n)
    }

    /// vINTID 27 as the host queued it (not hardware-linked) is in a list register: the link
    /// waits until the guest has finished it.
    pub fn host_queued_vtimer(&self) -> bool {
        self.used_lrs().any(|n| self.lr[n] & (lr::VINTID | lr::HW) == VTIMER_PPI)
    }

    /// A hardware-linked interrupt (the virtual timer's) is in a list register, pending or
    /// active, as the last put saved it: while the vCPU is loaded, the CPU's physical PPI 27 must
    /// be active, so that the guest's deactivation has something to deactivate and the timer
    /// cannot fire to the host meanwhile.
    pub fn hw_live(&self) -> bool {
        self.used_lrs().any(|n| self.lr[n] & lr::HW != 0 && self.lr[n] >> lr::STATE_SHIFT != 0)
    }

    /// A PSCI `CPU_ON` reset: hardware-linked list registers go (the guest starting again
    /// would never deactivate an active one, and its timer would stay silent); the put before
    /// it already made the physical PPI inactive. The timer, still asserted, fires again.
    pub fn drop_hw(&mut self) {
        for n in 0..MAX_LRS {
            if self.used & (1 << n) != 0 && self.lr[n] & lr::HW != 0 {
                self.lr[n] = 0;
                self.used &= !(1 << n);
            }
        }
    }

    /// While this vCPU is loaded in `cpu`: a physical IRQ ended its run, with
    /// `ICC_HPPIR1_EL1` = `hppir` and the guest's live `CNTV_CTL_EL0` = `ctl`. If the vCPU's
    /// timer is linked and its output asserted, and the IRQ is PPI 27, queues vINTID 27 (pending,
    /// `HW`) in a free list register, in `cpu` and in EL2's copy, and enables the interface if
    /// its load found it idle (`idle`, as the world switch's put must know). In every case but
    /// [`VtimerIrq::NotOurs`] the caller makes the physical PPI 27 active and resumes the guest.
    ///
    /// A physical PPI 27 the host made pending itself while the guest's timer does not assert
    /// is the host's: nothing for the guest.
    pub fn take_vtimer(&mut self, cpu: &mut impl IchRegs, hppir: u64, ctl: u64, idle: &mut bool) -> VtimerIrq {
        if self.vtimer == 0 || hppir != VTIMER_PPI || !timer_asserts(ctl) {
            return VtimerIrq::NotOurs;
        }
        self.refresh_live(cpu);
        let n = match self.used_lrs().find(|&n| self.lr[n] & lr::VINTID == VTIMER_PPI) {
            Some(n) if self.lr[n] >> lr::STATE_SHIFT != 0 => return VtimerIrq::AlreadyQueued,
            // One the host queued (the link refuses that, `Busy`), deactivated this run: its
            // notification is recorded at put, which a new value here would lose.
            Some(n) if self.lr[n] & lr::HW == 0 => return VtimerIrq::NoFreeLr,
            // The last one, deactivated this run: nothing to record, reused.
            Some(n) => n,
            None => match self.free_lr(self.nr_lrs_linked) {
                Some(n) => n,
                None => return VtimerIrq::NoFreeLr,
            },
        };
        self.write_live(cpu, n, self.vtimer | 1 << lr::STATE_SHIFT, idle);
        VtimerIrq::Queued(n)
    }

    /// Mid-run: EL2's copy of the used list registers as the guest left them (the one from load
    /// is stale).
    fn refresh_live(&mut self, cpu: &impl IchRegs) {
        let mut used = self.used;
        while used != 0 {
            let n = used.trailing_zeros() as usize;
            used &= used - 1;
            self.lr[n] = cpu.lr(n);
        }
    }

    /// Mid-run: list register `n` becomes `v`, in the CPU and in EL2's copy, and the interface
    /// is turned on if its load found it idle (the active priorities it did not load are zero
    /// in the CPU, as in the context: that is what idle means).
    fn write_live(&mut self, cpu: &mut impl IchRegs, n: usize, v: u64, idle: &mut bool) {
        self.lr[n] = v;
        self.used |= 1 << n;
        cpu.set_lr(n, v);
        if *idle {
            cpu.set_hcr(ICH_HCR_GUEST);
            *idle = false;
        }
    }

    /// While this vCPU is loaded in `cpu` (`idle`: as for [`Self::take_vtimer`]): queues the
    /// linked SGIs of `bits` into its list registers, and returns those left pending: disabled,
    /// or no list register for them. One already pending stays so (SGIs are edge-triggered:
    /// two sends before the guest takes it are one); one active becomes pending and active;
    /// one the guest has finished (EL2 queues SGIs without `EOI`) is queued again in place.
    pub fn queue_sgis_live(&mut self, cpu: &mut impl IchRegs, bits: u16, idle: &mut bool) -> u16 {
        self.refresh_live(cpu);
        let mut left = 0u16;
        let mut todo = bits;
        while todo != 0 {
            let i = todo.trailing_zeros() as usize;
            todo &= todo - 1;
            let pending = self.sgi[i] | 1 << lr::STATE_SHIFT;
            let held = self.used_lrs().find(|&n| self.lr[n] & lr::VINTID == i as u64);
            let slot = match held {
                _ if self.sgi_on & 1 << i == 0 => None,
                Some(n) => match self.lr[n] >> lr::STATE_SHIFT {
                    1 | 3 => continue,
                    2 => Some((n, self.lr[n] | 1 << lr::STATE_SHIFT)),
                    // Finished, but the host's (EOI notification due at put): not reused.
                    _ if self.lr[n] & lr::EOI != 0 => None,
                    _ => Some((n, pending)),
                },
                None => self.free_lr(self.nr_lrs_linked).map(|n| (n, pending)),
            };
            match slot {
                Some((n, v)) => self.write_live(cpu, n, v, idle),
                None => left |= 1 << i,
            }
        }
        left
    }

    /// Indices of the used list registers.
    pub fn used_lrs(&self) -> impl Iterator<Item = usize> + '_ {
        // Bit by bit of `used`: a vCPU with one interrupt queued costs one step, not 16.
        let mut used = self.used;
        core::iter::from_fn(move || {
            let n = used.trailing_zeros() as usize;
            used &= used.wrapping_sub(1);
            (n < MAX_LRS).then_some(n)
        })
    }

    /// The lowest free list register below `nr_lrs`.
    fn free_lr(&self, nr_lrs: u8) -> Option<usize> {
        let n = (!self.used).trailing_zeros() as usize;
        (n < (nr_lrs as usize).min(MAX_LRS)).then_some(n)
    }

    /// After the world switch has saved the list registers: frees each one the guest has
    /// finished with (state invalid), recording a deactivated one that asked for EOI
    /// notification. Returns whether deactivations wait for the host.
    pub fn after_put(&mut self) -> bool {
        // Only the used list registers: a vCPU without interrupts costs a test and a branch
        // on every exit to the host.
        let mut used = self.used;
        while used != 0 {
            let n = used.trailing_zeros() as usize;
            used &= used - 1;
            let v = self.lr[n];
            if v >> lr::STATE_SHIFT != 0 {
                continue;
            }
            if v & lr::EOI != 0 && v & lr::HW == 0 {
                let id = (v & lr::VINTID) as usize % 1024;
                self.eoi[id / 64] |= 1 << (id % 64);
                self.eoi_waiting = true;
            }
            self.lr[n] = 0;
            self.used &= !(1 << n);
        }
        self.eoi_waiting
    }

    /// Deactivations not yet collected by the host.
    pub fn eoi_pending(&self) -> bool {
        self.eoi_waiting
    }

    /// The host's view (`VCPU_IRQ_STATE`); [`Self::collected`] once it is delivered.
    pub fn report(&self, nr_lrs: u8) -> VgicState {
        let mut s = VgicState { nr_lrs: nr_lrs as u32, used: self.used as u32, lrs: [0; MAX_LRS], eoi: self.eoi, };
        for n in self.used_lrs() {
            s.lrs[n] = lr_to_abi(self.lr[n]);
        }
        s
    }

    /// The recorded deactivations were reported: the next report starts afresh.
    pub fn collected(&mut self) {
        self.eoi = [0; 16];
        self.eoi_waiting = false;
    }
}

impl Default for VgicCpu {
    fn default() -> Self {
        Self::new()
    }
}

/// A guest's SGI, decoded from its write to an SGI generation register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgi {
    /// INTID 0..=15.
    pub intid: u8,
    /// Target vCPUs: bit n = vCPU n.
    pub targets: u8,
    /// Which register ([`sgi`]).
    pub reg: u64,
}

/// Decodes a trapped system-register access as an SGI generation write, sent by vCPU
/// `sender` of a VM with `nr_vcpus` vCPUs, if it is one.
///
/// With `HCR_EL2.IMO`/`FMO` set (always, for guests), EL1 writes to `ICC_SGI1R_EL1`,
/// `ICC_ASGI1R_EL1` and `ICC_SGI0R_EL1` trap to EL2 (EC 0x18), whatever `ICH_HCR_EL2.TC`
/// says: the virtual interface has no SGI registers of its own. `ICC_SGI1R_EL1`: `TargetList`
/// [15:0], `Aff1` [23:16], `INTID` [27:24], `Aff2` [39:32], `IRM` [40], `RS` [47:44], `Aff3`
/// [55:48]. A vCPU's `MPIDR_EL1` has `Aff0` = its index and every other affinity zero, so
/// only `RS` = 0 and zero `Aff1..3` name vCPUs.
pub fn decode_sgi(a: &SysregAccess, value: u64, sender: usize, nr_vcpus: usize) -> Option<Sgi> {
    if a.read || a.op0 != 3 || a.op1 != 0 || a.crn != 12 || a.crm != 11 {
        return None;
    }
    let reg = match a.op2 {
        5 => sgi::SGI1R,
        6 => sgi::ASGI1R,
        7 => sgi::SGI0R,
        _ => return None,
    };
    let all = ((1u32 << nr_vcpus.min(MAX_VCPUS)) - 1) as u8;
    let targets = if value & (1 << 40) != 0 {
        all & !(1u8.checked_shl(sender as u32).unwrap_or(0))
    } else if value & (0xFF << 48 | 0xF << 44 | 0xFF << 32 | 0xFF << 16) != 0 {
        0
    } else {
        (value & 0xFF) as u8 & all
    };
    Some(Sgi { intid: ((value >> 24) & 0xF) as u8, targets, reg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::msg::irq::{config, ACTIVE, PENDING, PENDING_ACTIVE};

    /// QEMU 7.2's virtual interface: 4 list registers, 5 priority and preemption bits.
    const QEMU_VTR: u64 = 3 | 4 << 26 | 4 << 29;
    const QEMU: VgicCaps = VgicCaps::from_vtr(QEMU_VTR);

    /// One CPU's virtual interface, as the architecture keeps it: what a guest writes directly
    /// (its `ICC_*` registers under `HCR_EL2.IMO/FMO`) lands here, whoever runs next reads it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct IchModel {
        apr: usize,
        nr_lrs: usize,
        vmcr: u64,
        hcr: u64,
        ap0: [u32; 4],
        ap1: [u32; 4],
        lr: [u64; MAX_LRS],
        /// Register writes, to tell what a load or put costs.
        writes: usize,
    }

    impl IchModel {
        /// After boot ([`reset_cpu_interface`]), from UNKNOWN values.
        fn booted(vtr: u64) -> Self {
            let mut m = Self { apr: apr_count(vtr), nr_lrs: (vtr & 0x1F) as usize + 1, vmcr: 0x5A, hcr: 0x5A, ap0: [!0; 4], ap1: [!0; 4], lr: [!0; MAX_LRS], writes: 0 };
            reset_cpu_interface(&mut m, vtr);
            // Registers the CPU does not have read as nothing and are never touched.
            m.ap0[m.apr..].fill(0);
            m.ap1[m.apr..].fill(0);
            m.lr[m.nr_lrs..].fill(0);
            assert_eq!((m.hcr, m.ap0, m.ap1, m.lr), (0, [0; 4], [0; 4], [0; MAX_LRS]), "boot leaves nothing");
            m.writes = 0;
            m
        }
    }

    impl IchRegs for IchModel {
        fn apr_count(&self) -> usize {
            self.apr
        }
        fn vmcr(&self) -> u64 {
            self.vmcr
        }
        fn set_vmcr(&mut self, v: u64) {
            self.writes += 1;
            self.vmcr = v;
        }
        fn set_hcr(&mut self, v: u64) {
            self.writes += 1;
            self.hcr = v;
        }
        fn read_aprs(&self, ap0: &mut [u32; 4], ap1: &mut [u32; 4]) {
            ap0[..self.apr].copy_from_slice(&self.ap0[..self.apr]);
            ap1[..self.apr].copy_from_slice(&self.ap1[..self.apr]);
        }
        fn write_aprs(&mut self, ap0: &[u32; 4], ap1: &[u32; 4]) {
            self.writes += 2 * self.apr;
            self.ap0[..self.apr].copy_from_slice(&ap0[..self.apr]);
            self.ap1[..self.apr].copy_from_slice(&ap1[..self.apr]);
        }
        fn lr(&self, n: usize) -> u64 {
            assert!(n < self.nr_lrs, "ICH_LR{n}_EL2 does not exist");
            self.lr[n]
        }
        fn set_lr(&mut self, n: usize, v: u64) {
            assert!(n < self.nr_lrs, "ICH_LR{n}_EL2 does not exist");
            self.writes += 1;
            self.lr[n] = v;
        }
    }

    #[test]
    fn load_and_put_move_the_interface_and_leave_the_cpu_clear() {
        let mut cpu = IchModel::booted(QEMU_VTR);
        let mut v = VgicCpu::new();
        let pending = lr_from_request(40, config(0x80, true, PENDING, true) as u64, QEMU).unwrap();
        v.queue(pending, 4).unwrap();
        v.queue(lr_from_request(41, config(0x80, true, PENDING, false) as u64, QEMU).unwrap(), 4).unwrap();
        v.vmcr = 0xF0 << 24 | 2;
        let idle = v.load(&mut cpu);
        assert!(!idle);
        assert_eq!((cpu.vmcr, cpu.hcr, cpu.lr[0], cpu.lr[1], cpu.lr[2]), (v.vmcr, ICH_HCR_GUEST, pending, v.lr[1], 0));
        // The guest acknowledges SPI 40 (active, priority 0x80 active in Group 1), finishes 41
        // and changes its priority mask.
        cpu.lr[0] = (pending & !(3 << lr::STATE_SHIFT)) | 2 << lr::STATE_SHIFT;
        cpu.ap1[0] = 1 << (0x80 >> 3);
        cpu.lr[1] = 0;
        cpu.vmcr = 0x80 << 24 | 2;
        v.put(&mut cpu, idle);
        assert_eq!((v.vmcr, v.ap1r[0], v.lr[0] >> lr::STATE_SHIFT, v.lr[1]), (0x80 << 24 | 2, 1 << 16, 2, 0));
        assert_eq!((cpu.hcr, cpu.ap0, cpu.ap1, cpu.lr), (0, [0; 4], [0; 4], [0; MAX_LRS]), "nothing of the vCPU left in the CPU");
        assert!(!v.after_put());
        assert_eq!(v.used, 0b01, "LR0 still active: kept");
        // Loaded again: its active priority and the active interrupt come back.
        let idle = v.load(&mut cpu);
        assert!(!idle);
        assert_eq!((cpu.ap1[0], cpu.lr[0] >> lr::STATE_SHIFT), (1 << 16, 2));
        v.put(&mut cpu, idle);
    }

    /// `CNTV_CTL_EL0` of a virtual timer that fires: enabled, condition met, not masked.
    const FIRING: u64 = 0b101;

    #[test]
    fn the_link_accepts_only_a_priority_and_a_group() {
        let want = 27 | lr::HW | 27 << lr::PINTID_SHIFT | 0xA0 << lr::PRIORITY_SHIFT | lr::GROUP1;
        assert_eq!(vtimer_lr(0xA0 | irq::GROUP1 as u64, QEMU), Ok(want));
        assert_eq!(vtimer_lr(0x08, QEMU), Ok(27 | lr::HW | 27 << lr::PINTID_SHIFT | 0x08 << lr::PRIORITY_SHIFT), "Group 0");
        for bad in [0xA1, 0xA4, 0xA0 | irq::HW as u64, 0xA0 | 1 << irq::STATE_SHIFT, 0xA0 | irq::EOI_NOTIFY as u64, 0xA0 | 33 << irq::PINTID_SHIFT, 1 << 32, u64::MAX] {
            assert_eq!(vtimer_lr(bad, QEMU), Err(IrqError::BadField), "{bad:#x}");
        }
        assert_eq!(vtimer_lr(0xA1, VgicCaps { pri_bits: 8, ..QEMU }).map(|v| v >> lr::PRIORITY_SHIFT & 0xFF), Ok(0xA1), "8 priority bits");
        // Linked, vINTID 27 is EL2's to queue: the host's request is refused, any other vINTID not.
        let mut v = VgicCpu::new();
        v.vtimer = want;
        let ppi = lr_from_request(27, config(0xA0, true, PENDING, true) as u64, QEMU).unwrap();
        assert_eq!(v.queue(ppi, 4), Err(IrqError::Linked));
        assert_eq!(v.queue(lr_from_request(30, config(0xA0, true, PENDING, true) as u64, QEMU).unwrap(), 4), Ok(0));
        v.vtimer = 0;
        assert_eq!(v.queue(ppi, 4), Ok(1), "unlinked: the host's again");
    }

    #[test]
    fn a_linked_timer_that_fires_is_queued_in_place_as_a_hardware_interrupt() {
        let mut cpu = IchModel::booted(QEMU_VTR);
        let mut v = VgicCpu::new();
        v.vtimer = vtimer_lr(0xA0 | irq::GROUP1 as u64, QEMU).unwrap();
        v.nr_lrs_linked = 4;
        let mut idle = v.load(&mut cpu);
        assert!(idle && cpu.hcr == 0, "nothing queued: an idle load");
        // Not ours: another interrupt, the timer masked, disabled or not yet due, or not linked.
        for (hppir, ctl) in [(30, FIRING), (1, FIRING), (1023, FIRING), (27, 0b111), (27, 0b100), (27, 0b001), (27, 0b110)] {
            assert_eq!(v.take_vtimer(&mut cpu, hppir, ctl, &mut idle), VtimerIrq::NotOurs, "{hppir} {ctl:#b}");
        }
        let linked = v.vtimer;
        v.vtimer = 0;
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::NotOurs, "not linked");
        v.vtimer = linked;
        assert_eq!((cpu.lr, cpu.hcr, idle), ([0; MAX_LRS], 0, true), "nothing touched");
        // Ours: pending in the first free list register, and the interface turned on.
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::Queued(0));
        let pending = linked | 1 << lr::STATE_SHIFT;
        assert_eq!((cpu.lr[0], v.lr[0], v.used, cpu.hcr, idle), (pending, pending, 1, ICH_HCR_GUEST, false));
        // Fired again before the guest took it (the caller activated the physical PPI; the
        // host, say, deactivated it): the one queued stands.
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::AlreadyQueued);
        // The guest acknowledged it: still there, active.
        cpu.lr[0] = linked | 2 << lr::STATE_SHIFT;
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::AlreadyQueued);
        // The guest deactivated it (and so the physical PPI): the same list register again.
        cpu.lr[0] = linked;
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::Queued(0));
        assert_eq!(cpu.lr[0], pending);
        // Put while pending: saved, cleared from the CPU, kept by after_put; live for the next
        // load, which must activate the physical PPI again.
        v.put(&mut cpu, idle);
        assert_eq!(cpu.lr, [0; MAX_LRS]);
        assert!(!v.after_put());
        assert!(v.hw_live());
        // The guest finishes it in the next run: freed at put, with nothing for the host.
        let idle = v.load(&mut cpu);
        cpu.lr[0] = linked;
        v.put(&mut cpu, idle);
        assert!(!v.after_put(), "no EOI notification for a hardware interrupt");
        assert_eq!((v.used, v.hw_live(), v.eoi), (0, false, [0; 16]));
    }

    #[test]
    fn a_linked_timer_never_takes_a_busy_list_register() {
        let mut cpu = IchModel::booted(QEMU_VTR);
        let mut v = VgicCpu::new();
        let spi = |id| lr_from_request(id, config(0x80, true, PENDING, true) as u64, QEMU).unwrap();
        for id in [32, 33, 34] {
            v.queue(spi(id), 4).unwrap();
        }
        v.vtimer = vtimer_lr(0xA0 | irq::GROUP1 as u64, QEMU).unwrap();
        v.nr_lrs_linked = 4;
        let mut idle = v.load(&mut cpu);
        assert!(!idle);
        // The fourth, free, is taken; the three the host queued stay as they are, even the one
        // the guest has just deactivated (its EOI notification is recorded at put).
        cpu.lr[1] &= !(3 << lr::STATE_SHIFT);
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::Queued(3));
        assert_eq!((cpu.lr[0], cpu.lr[1], cpu.lr[2]), (spi(32), spi(33) & !(3 << lr::STATE_SHIFT), spi(34)));
        // Every list register busy: the interrupt waits for the next entry.
        assert_eq!(v.used, 0b1111);
        cpu.lr[3] = spi(35);
        v.lr[3] = spi(35);
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::NoFreeLr);
        // vINTID 27 the host queued before linking, deactivated this run: not reused (its
        // notification), not duplicated.
        cpu.lr[3] = spi(27) & !(3 << lr::STATE_SHIFT);
        v.lr[3] = spi(27);
        v.used = 0b1000;
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::NoFreeLr);
        // Still pending or active: the guest takes that one first.
        cpu.lr[3] = spi(27);
        assert_eq!(v.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::AlreadyQueued);
        // Never beyond the VM's list registers (a smaller CPU may run the vCPU next).
        let mut w = VgicCpu { vtimer: v.vtimer, nr_lrs_linked: 2, used: 0b11, ..VgicCpu::new() };
        w.lr[0] = spi(40);
        w.lr[1] = spi(41);
        let mut cpu = IchModel::booted(QEMU_VTR);
        cpu.lr[0] = spi(40);
        cpu.lr[1] = spi(41);
        let mut idle = false;
        assert_eq!(w.take_vtimer(&mut cpu, 27, FIRING, &mut idle), VtimerIrq::NoFreeLr);
        assert_eq!(cpu.lr[2], 0);
    }

    #[test]
    fn linked_sgis_are_queued_once_in_place_and_the_rest_stays_pending() {
        let mut cpu = IchModel::booted(QEMU_VTR);
        let mut v = VgicCpu::new();
        // SGIs 0..=3 enabled, 1 and 3 in Group 1, priorities 0x10 * n.
        let masks = 0b1111 | 0b1010 << 16;
        let prios = (0..16u128).fold(0, |p, n| p | (0x10 * n) << (8 * n));
        v.sgi = sgi_lrs(masks, prios, QEMU).unwrap();
        v.sgi_on = masks as u16;
        v.nr_lrs_linked = 4;
        assert_eq!((v.sgi[0], v.sgi[1]), (0, 1 | 0x10 << lr::PRIORITY_SHIFT | lr::GROUP1), "SGI 0: priority 0, Group 0");
        let mut idle = v.load(&mut cpu);
        // SGI 5 is disabled: it stays pending. 0 and 1 go to the first free list registers, and
        // the interface is turned on.
        assert_eq!(v.queue_sgis_live(&mut cpu, 1 << 5 | 0b11, &mut idle), 1 << 5);
        assert_eq!((cpu.lr[0], cpu.lr[1], cpu.hcr, idle), (v.sgi[0] | 1 << 62, v.sgi[1] | 1 << 62, ICH_HCR_GUEST, false));
        // Sent again while still pending: one interrupt, nothing written.
        let writes = cpu.writes;
        assert_eq!(v.queue_sgis_live(&mut cpu, 0b1, &mut idle), 0);
        assert_eq!(cpu.writes, writes);
        // The guest acknowledged SGI 0 (active) and finished SGI 1: pending and active, and
        // queued again in place.
        cpu.lr[0] = v.sgi[0] | 2 << 62;
        cpu.lr[1] = v.sgi[1];
        assert_eq!(v.queue_sgis_live(&mut cpu, 0b11, &mut idle), 0);
        assert_eq!((cpu.lr[0] >> 62, cpu.lr[1] >> 62), (3, 1));
        // A list register the host queued for SGI 2, finished but with its notification due:
        // not reused; SGI 3 takes the last free one, and then nothing is left for SGI 2.
        let host = lr_from_request(2, config(0x80, true, PENDING, true) as u64, QEMU).unwrap();
        v.queue(host, 4).unwrap();
        cpu.lr[2] = host & !(3 << 62);
        assert_eq!(v.queue_sgis_live(&mut cpu, 0b1100, &mut idle), 0b100);
        assert_eq!((cpu.lr[2], cpu.lr[3]), (host & !(3 << 62), v.sgi[3] | 1 << 62));
        // Every list register in use: left pending. Put then saves what the guest left.
        assert_eq!(v.queue_sgis_live(&mut cpu, 0b100, &mut idle), 0b100);
        v.put(&mut cpu, idle);
        assert_eq!(cpu.lr, [0; MAX_LRS]);
        // Hostile configurations: a mask bit above 31, an unimplemented priority bit.
        assert_eq!(sgi_lrs(1 << 32, 0, QEMU), Err(IrqError::BadField));
        assert_eq!(sgi_lrs(1, 0x01 << 120, QEMU), Err(IrqError::BadField), "SGI 15's priority bits 2:0");
        assert_eq!(sgi_lrs(0, 0, QEMU).map(|l| l[15]), Ok(15), "linked, all disabled, Group 0, priority 0");
    }

    #[test]
    fn an_idle_vcpu_loads_only_its_priority_mask() {
        let mut cpu = IchModel::booted(QEMU_VTR);
        let mut v = VgicCpu::new();
        v.vmcr = 0xF0 << 24;
        let idle = v.load(&mut cpu);
        assert!(idle);
        assert_eq!((cpu.vmcr, cpu.hcr, cpu.writes), (0xF0 << 24, 0, 1), "ICH_VMCR_EL2 alone, the interface off");
        cpu.vmcr = 0xA0 << 24;
        v.put(&mut cpu, idle);
        assert_eq!((v.vmcr, v.ap0r, v.ap1r, cpu.writes), (0xA0 << 24, [0; 4], [0; 4], 1), "read back (with the zero active priorities), nothing written");
    }

    /// Finding N3: with `HCR_EL2.IMO/FMO` a guest writes `ICC_AP0R<n>_EL1`/`ICC_AP1R<n>_EL1`,
    /// i.e. `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2`, directly: no list register, no trap, also
    /// while its interface is idle. Those writes stay the vCPU's own, across puts and loads,
    /// and never reach the next vCPU on the CPU, whatever VM it belongs to.
    #[test]
    fn active_priorities_a_guest_writes_while_idle_are_its_own() {
        // 5, 6 and 7 preemption bits: 1, 2 and 4 registers per group.
        for vtr in [QEMU_VTR, QEMU_VTR & !(7 << 26) | 5 << 26, QEMU_VTR & !(7 << 26) | 6 << 26] {
            let mut cpu = IchModel::booted(vtr);
            let last = cpu.apr - 1;
            let (mut vm1, mut vm2) = (VgicCpu::new(), VgicCpu::new());
            let idle = vm1.load(&mut cpu);
            assert!(idle);
            cpu.ap0[0] = 0x1;
            cpu.ap1[0] = 0xC0DE_0001;
            cpu.ap1[last] |= 1 << 31;
            vm1.put(&mut cpu, idle);
            let mut want1 = [0; 4];
            want1[0] = 0xC0DE_0001;
            want1[last] |= 1 << 31;
            assert_eq!((vm1.ap0r[0], vm1.ap1r), (0x1, want1), "{vtr:#x}: the guest's writes kept in its context");
            assert_eq!((cpu.ap0, cpu.ap1), ([0; 4], [0; 4]), "{vtr:#x}: and not left in the CPU");
            assert!(!vm1.idle(), "its next load restores them");
            // VM 2 runs next on this CPU, idle too: it finds reset values, and takes nothing away.
            let idle = vm2.load(&mut cpu);
            assert!(idle);
            assert_eq!((cpu.ap0, cpu.ap1), ([0; 4], [0; 4]), "{vtr:#x}: VM 2 finds VM 1's active priorities");
            vm2.put(&mut cpu, idle);
            assert_eq!((vm2.ap0r, vm2.ap1r), ([0; 4], [0; 4]));
            // VM 1 again: its own values back, with the interface enabled as for any active
            // priority; once it clears them itself it is idle again.
            let idle = vm1.load(&mut cpu);
            assert!(!idle);
            assert_eq!((cpu.ap0[0], cpu.ap1, cpu.hcr), (0x1, want1, ICH_HCR_GUEST), "{vtr:#x}: VM 1's values restored");
            cpu.ap0 = [0; 4];
            cpu.ap1 = [0; 4];
            vm1.put(&mut cpu, idle);
            assert!(vm1.idle());
            assert_eq!((cpu.hcr, cpu.ap0, cpu.ap1), (0, [0; 4], [0; 4]));
        }
    }

    #[test]
    fn caps_from_ich_vtr() {
        assert_eq!(QEMU, VgicCaps { nr_lrs: 4, pri_bits: 5, pre_bits: 5 });
        assert_eq!(apr_count(QEMU_VTR), 1);
        assert_eq!(apr_count(5 << 26), 2);
        assert_eq!(apr_count(6 << 26), 4);
        let big = VgicCaps::from_vtr(15 | 6 << 26 | 7 << 29);
        assert_eq!(big, VgicCaps { nr_lrs: 16, pri_bits: 8, pre_bits: 7 });
        assert_eq!(big.min(QEMU), QEMU);
        assert_eq!(VgicCaps::from_bits(QEMU.bits()), Some(QEMU));
        assert_eq!(VgicCaps::from_bits(0), None);
    }

    #[test]
    fn requests_encode_to_list_registers_and_back() {
        let v = lr_from_request(33, config(0xA0, true, PENDING, true) as u64, QEMU).unwrap();
        assert_eq!(v, 33 | 0xA0 << 48 | 1 << 60 | 1 << 62 | 1 << 41);
        assert_eq!(lr_to_abi(v), (config(0xA0, true, PENDING, true) as u64) << 32 | 33);
        let v = lr_from_request(27, config(0, false, PENDING_ACTIVE, false) as u64, QEMU).unwrap();
        assert_eq!(v, 27 | 3 << 62);
        assert_eq!(lr_from_request(1019, config(0xF8, true, ACTIVE, false) as u64, QEMU).unwrap(), 1019 | 0xF8 << 48 | 1 << 60 | 2 << 62);
        // What the guest leaves: an acknowledged (active) interrupt reads back active.
        assert_eq!(lr_to_abi(33 | 2 << 62) >> 32, (ACTIVE << irq::STATE_SHIFT) as u64);
        // A hardware LR (never queued by this EL2) would read back with its pINTID.
        assert_eq!(lr_to_abi(27 | 27 << 32 | lr::HW | 1 << 62) >> 32, (irq::HW | 27 << irq::PINTID_SHIFT | PENDING << irq::STATE_SHIFT) as u64);
    }

    #[test]
    fn every_hostile_field_is_refused() {
        let ok = config(0x80, true, PENDING, false) as u64;
        assert!(lr_from_request(32, ok, QEMU).is_ok());
        // vINTIDs: special 1020..=1023, LPIs, anything wider than 32 bits.
        for v in [1020, 1023, 1024, 8192, 1 << 32, u64::MAX] {
            assert_eq!(lr_from_request(v, ok, QEMU), Err(IrqError::BadField), "vINTID {v}");
        }
        // State 0 queues nothing.
        assert_eq!(lr_from_request(32, config(0x80, true, 0, false) as u64, QEMU), Err(IrqError::BadField));
        // Priority bits the CPU lacks (5 implemented: 2:0 must be zero); with 8, any value.
        for p in [1u8, 2, 4, 0x81, 0xFF] {
            assert_eq!(lr_from_request(32, config(p, true, PENDING, false) as u64, QEMU), Err(IrqError::BadField), "priority {p:#x}");
            assert!(lr_from_request(32, config(p, true, PENDING, false) as u64, VgicCaps { pri_bits: 8, ..QEMU }).is_ok());
        }
        // HW is refused; a pINTID without HW is malformed.
        assert_eq!(lr_from_request(27, ok | irq::HW as u64 | 27 << irq::PINTID_SHIFT, QEMU), Err(IrqError::Hardware));
        assert_eq!(lr_from_request(27, ok | irq::HW as u64, QEMU), Err(IrqError::Hardware));
        assert_eq!(lr_from_request(27, ok | 27 << irq::PINTID_SHIFT, QEMU), Err(IrqError::BadField));
        // Every undefined bit, one by one: bits 15:13, 31:29 and everything above 31.
        for bit in (13..16).chain(29..64) {
            assert_eq!(lr_from_request(32, ok | 1 << bit, QEMU), Err(IrqError::BadField), "bit {bit}");
        }
    }

    #[test]
    fn queueing_takes_the_lowest_free_register_once_per_vintid() {
        let mut c = VgicCpu::new();
        let v = |id: u64| lr_from_request(id, config(0x80, true, PENDING, false) as u64, QEMU).unwrap();
        assert_eq!(c.queue(v(40), 4), Ok(0));
        assert_eq!(c.queue(v(41), 4), Ok(1));
        assert_eq!(c.queue(v(40), 4), Err(IrqError::Queued), "already in LR0");
        let active40 = lr_from_request(40, config(0x80, true, ACTIVE, false) as u64, QEMU).unwrap();
        assert_eq!(c.queue(active40, 4), Err(IrqError::Queued), "in any state");
        assert_eq!(c.queue(v(42), 4), Ok(2));
        assert_eq!(c.queue(v(43), 4), Ok(3));
        assert_eq!(c.queue(v(44), 4), Err(IrqError::Full));
        assert_eq!(c.used, 0b1111);
        // The guest finished LR1: it is free again, and the next request takes it.
        c.lr[1] &= !(3 << lr::STATE_SHIFT);
        assert!(!c.after_put(), "no EOI notification asked for");
        assert_eq!((c.used, c.lr[1]), (0b1101, 0));
        assert_eq!(c.queue(v(44), 4), Ok(1));
        // Never beyond the CPU's list registers, nor beyond 16.
        let mut c = VgicCpu::new();
        assert_eq!(c.queue(v(1), 1), Ok(0));
        assert_eq!(c.queue(v(2), 1), Err(IrqError::Full));
        let mut c = VgicCpu::new();
        for id in 0..16 {
            assert_eq!(c.queue(v(id), 255), Ok(id as usize));
        }
        assert_eq!(c.queue(v(16), 255), Err(IrqError::Full));
    }

    #[test]
    fn save_restore_moves_only_used_registers_and_reports_eois() {
        let mut c = VgicCpu::new();
        assert_eq!(c.used_lrs().count(), 0, "an idle vCPU moves no list register");
        let level = lr_from_request(50, config(0x80, true, PENDING, true) as u64, QEMU).unwrap();
        let edge = lr_from_request(51, config(0x80, true, PENDING, false) as u64, QEMU).unwrap();
        c.queue(level, 4).unwrap();
        c.queue(edge, 4).unwrap();
        assert_eq!(c.used_lrs().collect::<Vec<_>>(), [0, 1]);
        // Still pending or active after the run: kept.
        c.lr[0] = (c.lr[0] & !(3 << 62)) | 2 << 62;
        assert!(!c.after_put());
        assert_eq!(c.used, 0b11);
        // Both deactivated: freed; only the level one is reported, once.
        c.lr[0] &= !(3 << 62);
        c.lr[1] &= !(3 << 62);
        assert!(c.after_put());
        assert_eq!((c.used, c.lr[0], c.lr[1]), (0, 0, 0));
        let s = c.report(4);
        assert_eq!((s.nr_lrs, s.used, s.lrs[0]), (4, 0, 0));
        assert_eq!(s.eoi[0], 1 << 50);
        assert!(s.eoi[1..].iter().all(|&w| w == 0));
        assert!(c.eoi_pending() && c.report(4) == s, "a report alone collects nothing");
        c.collected();
        assert!(!c.eoi_pending() && c.report(4).eoi == [0; 16], "collected");
        // A report names each used register in the ABI encoding.
        c.queue(edge, 4).unwrap();
        let s = c.report(4);
        assert_eq!((s.used, s.lrs[0]), (1, lr_to_abi(edge)));
        assert_eq!(c, VgicCpu { used: 1, lr: { let mut l = [0; MAX_LRS]; l[0] = edge; l }, ..VgicCpu::new() });
    }

    fn write(op2: u8) -> SysregAccess {
        SysregAccess { op0: 3, op1: 0, crn: 12, crm: 11, op2, rt: 1, read: false }
    }

    #[test]
    fn sgi_writes_decode_to_vcpu_targets() {
        // INTID 3 to vCPUs 1 and 2.
        let v = 3 << 24 | 0b110;
        assert_eq!(decode_sgi(&write(5), v, 0, 4), Some(Sgi { intid: 3, targets: 0b110, reg: sgi::SGI1R }));
        assert_eq!(decode_sgi(&write(6), v, 0, 4).unwrap().reg, sgi::ASGI1R);
        assert_eq!(decode_sgi(&write(7), v, 0, 4).unwrap().reg, sgi::SGI0R);
        // Targets beyond the VM's vCPUs are dropped.
        assert_eq!(decode_sgi(&write(5), 15 << 24 | 0xFFFF, 0, 2).unwrap(), Sgi { intid: 15, targets: 0b11, reg: sgi::SGI1R });
        // IRM: every vCPU but the sender.
        assert_eq!(decode_sgi(&write(5), 1 << 40 | 0xFF, 1, 3).unwrap().targets, 0b101);
        assert_eq!(decode_sgi(&write(5), 1 << 40, 7, 8).unwrap().targets, 0x7F);
        // Aff1, Aff2, Aff3 or RS set: no vCPU has that affinity.
        for extra in [1u64 << 16, 1 << 32, 1 << 44, 1 << 48] {
            assert_eq!(decode_sgi(&write(5), extra | 1, 0, 8).unwrap().targets, 0, "{extra:#x}");
        }
        // Not an SGI register, or a read.
        assert_eq!(decode_sgi(&SysregAccess { read: true, ..write(5) }, v, 0, 4), None);
        assert_eq!(decode_sgi(&write(4), v, 0, 4), None);
        assert_eq!(decode_sgi(&SysregAccess { crm: 12, ..write(5) }, v, 0, 4), None);
        assert_eq!(decode_sgi(&SysregAccess { op1: 4, ..write(5) }, v, 0, 4), None);
    }

    /// An independent restatement of docs/ABI.md's `VCPU_SET_IRQ` rules (bit positions written
    /// out, not taken from `shared_abi::msg::irq`): the list register EL2 must build, or why not.
    fn model(vintid: u64, config: u64, pri_bits: u8) -> Result<u64, IrqError> {
        let defined = 0xFFu64 | 1 << 8 | 3 << 9 | 1 << 11 | 1 << 12 | 0x1FFF << 16;
        let (priority, state) = (config & 0xFF, (config >> 9) & 3);
        let unimplemented = (1u64 << (8 - pri_bits)) - 1;
        if vintid > 1019 || config & !defined != 0 || state == 0 || priority & unimplemented != 0 {
            return Err(IrqError::BadField);
        }
        if config & 1 << 12 != 0 {
            return Err(IrqError::Hardware);
        }
        if config & 0x1FFF << 16 != 0 {
            return Err(IrqError::BadField);
        }
        // ICH_LR<n>_EL2: vINTID 31:0, EOI 41, Priority 55:48, Group 60, State 63:62.
        Ok(vintid | ((config >> 11) & 1) << 41 | priority << 48 | ((config >> 8) & 1) << 60 | state << 62)
    }

    #[test]
    fn every_field_combination_matches_the_documented_rules() {
        // Every combination of the 13 low configuration bits (priority, group, state,
        // EOI_NOTIFY, HW), with and without a pINTID and each undefined bit, for the vINTIDs at
        // every boundary, on CPUs with 5 to 8 priority bits.
        let vintids = [0u64, 15, 16, 31, 32, 1019, 1020, 1021, 1022, 1023, 1024, 8191, 8192, 1 << 31, 1 << 32, u64::MAX];
        let extras = [0u64, 27 << 16, 0x1FFF << 16, 1 << 13, 1 << 15, 1 << 29, 1 << 31, 1 << 32, 1 << 63];
        let mut accepted = 0;
        for pri_bits in 5..=8u8 {
            let caps = VgicCaps { pri_bits, ..QEMU };
            for &vintid in &vintids {
                for low in 0..1u64 << 13 {
                    for &extra in &extras {
                        let config = low | extra;
                        let got = lr_from_request(vintid, config, caps);
                        assert_eq!(got, model(vintid, config, pri_bits), "vINTID {vintid:#x} config {config:#x} with {pri_bits} priority bits");
                        if let Ok(v) = got {
                            accepted += 1;
                            // Nothing beyond the documented fields: no HW, no pINTID, no
                            // reserved LR bit (40:32 but EOI, 47:42, 59:56).
                            assert_eq!(v & (lr::HW | 0x1FF << 32 | 0x3F << 42 | 0xF << 56), 0, "{v:#x}");
                            // And the host reads back exactly what it asked for.
                            assert_eq!(lr_to_abi(v), config << 32 | vintid, "{v:#x}");
                        }
                    }
                }
            }
        }
        // 5 bits: 32 priorities x 2 groups x 3 states x 2 (EOI) per vINTID; up to 8 bits: 256.
        assert_eq!(accepted, 6 * 12 * (32 + 64 + 128 + 256));
    }

    #[test]
    fn hostile_list_register_counts_and_states() {
        let v = lr_from_request(40, config(0x80, true, PENDING, true) as u64, QEMU).unwrap();
        // A CPU without list registers (never reported by a GICv3, but EL2 must not index
        // past them), and a count above the 16 the context holds.
        assert_eq!(VgicCpu::new().queue(v, 0), Err(IrqError::Full));
        assert_eq!(VgicCaps::from_vtr(u64::MAX).nr_lrs as usize, MAX_LRS);
        assert_eq!(VgicCaps::from_vtr(0), VgicCaps { nr_lrs: 1, pri_bits: 1, pre_bits: 1 });
        // With one priority bit (a malformed ICH_VTR_EL2), only bit 7 may be set.
        let one = VgicCaps::from_vtr(0);
        assert!(lr_from_request(32, config(0x80, true, PENDING, false) as u64, one).is_ok());
        assert_eq!(lr_from_request(32, config(0x40, true, PENDING, false) as u64, one), Err(IrqError::BadField));
        // A guest that acknowledges and never ends an interrupt keeps its list register (the
        // host then gets NoCapacity, never a second copy of the vINTID).
        let mut c = VgicCpu::new();
        c.queue(v, 4).unwrap();
        c.lr[0] = (c.lr[0] & !(3 << lr::STATE_SHIFT)) | 2 << lr::STATE_SHIFT;
        for _ in 0..3 {
            assert!(!c.after_put());
            assert_eq!(c.queue(v, 4), Err(IrqError::Queued));
        }
        assert_eq!(c.used, 1);
        // A list register left invalid with HW set (never queued by this EL2) is freed but not
        // reported as a deactivation the host asked for.
        let mut c = VgicCpu::new();
        c.lr[2] = 27 | lr::HW | lr::EOI;
        c.used = 1 << 2;
        assert!(!c.after_put());
        assert_eq!((c.used, c.eoi), (0, [0; 16]));
        // The report never names a deactivation beyond vINTID 1019 (validation keeps them out).
        let mut c = VgicCpu::new();
        c.queue(lr_from_request(1019, config(0x80, true, PENDING, true) as u64, QEMU).unwrap(), 4).unwrap();
        c.lr[0] &= !(3 << lr::STATE_SHIFT);
        assert!(c.after_put());
        let s = c.report(4);
        assert_eq!((s.eoi[15], s.used), (1 << (1019 % 64), 0));
    }

    #[test]
    fn any_sgi_value_decodes_to_existing_vcpus_only() {
        // Every value pattern a guest could write, from every sender of VMs of 0 to 9 vCPUs:
        // INTID 0..=15, targets only among the VM's vCPUs, IRM never naming the sender, and
        // an affinity no vCPU has naming nobody.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut values = vec![0, u64::MAX, 1 << 40, 0xFFFF, 0xF << 24 | 0xFFFF, 1 << 40 | 0xFF << 48];
        for _ in 0..2000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            values.push(x.wrapping_mul(0x2545_F491_4F6C_DD1D));
        }
        for nr in 0..=9usize {
            let all = ((1u32 << nr.min(MAX_VCPUS)) - 1) as u8;
            for sender in [0usize, 1, 7, 8, 63, 64, 255] {
                for &v in &values {
                    for op2 in 5..=7 {
                        let s = decode_sgi(&write(op2), v, sender, nr).expect("an SGI register write");
                        assert_eq!(s.intid as u64, (v >> 24) & 0xF);
                        assert_eq!(s.targets & !all, 0, "value {v:#x}: targets beyond {nr} vCPUs");
                        if v & 1 << 40 != 0 {
                            let me = if sender < 8 { 1u8 << sender } else { 0 };
                            assert_eq!(s.targets, all & !me, "IRM: every vCPU but the sender");
                        } else if v & (0xFF << 48 | 0xF << 44 | 0xFF << 32 | 0xFF << 16) != 0 {
                            assert_eq!(s.targets, 0, "value {v:#x}: an affinity no vCPU has");
                        } else {
                            assert_eq!(s.targets, v as u8 & all);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn idle_means_nothing_queued_and_nothing_active() {
        let mut v = VgicCpu::new();
        assert!(v.idle());
        v.vmcr = 0xF0 << 24;
        assert!(v.idle(), "the priority mask alone moves with VMCR");
        v.used = 1;
        assert!(!v.idle());
        v.used = 0;
        v.ap1r[0] = 1 << 3;
        assert!(!v.idle(), "an active priority must be restored");
        v.ap1r[0] = 0;
        v.ap0r[3] = 1;
        assert!(!v.idle());
    }
}
