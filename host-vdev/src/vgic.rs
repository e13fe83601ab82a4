//! The GICv3 distributor and redistributors of one VM, as the host emulates them: the register
//! model the guest sees through MMIO exits, and the pending state that decides which virtual
//! interrupt the host queues on which vCPU.
//!
//! Place in the flow: guest MMIO exit → host decodes the IPA → [`Vgic::gicd_read`] /
//! [`Vgic::gicd_write`] / [`Vgic::gicr_read`] / [`Vgic::gicr_write`]; device models and SGI
//! exits → [`Vgic::set_level`] / [`Vgic::send_sgi`]; before a vCPU runs →
//! [`Vgic::next_to_queue`] and `VCPU_SET_IRQ` until EL2 refuses; after an exit → `VCPU_IRQ_STATE`
//! and [`Vgic::deactivated`] for each vINTID in its EOI bitmap. Every call that can make an
//! interrupt deliverable returns a [`Wake`]: the vCPUs to kick (running) or wake (in WFI).
//!
//! Register layouts and behaviour: Arm GICv3/v4 architecture specification (IHI 0069), with
//! affinity routing always enabled (`GICD_CTLR.ARE` RAO/WI) and a single security state
//! (`GICD_CTLR.DS` RAO/WI). No LPIs, no ITS, no extended SPI/PPI ranges, no legacy (GICv2)
//! operation, no message-based SPIs.
//!
//! # The model
//!
//! Up to [`MAX_VCPUS`] vCPUs; vCPU `n` has MPIDR affinity `0.0.0.n`. Per vCPU (banked): SGIs
//! 0–15 and PPIs 16–31, configured through that vCPU's redistributor `SGI_base` frame. Shared:
//! SPIs 32..32 + [`NR_SPIS`], configured through the distributor. Each interrupt has:
//! *enabled*, *group* (0 or 1), *priority* (the top 5 bits: the virtual CPU interface on QEMU
//! implements 5, and `VCPU_SET_IRQ` refuses the others), *trigger* (edge or level), the
//! *line* level its device drives (see [`Vgic::set_level`]), a *pending latch* (an edge, an
//! SGI, or a guest write to `ISPENDR`), and *queued*: handed to EL2 with `VCPU_SET_IRQ` and not
//! yet reported deactivated.
//!
//! - pending = latch || (level-sensitive && line high)
//! - deliverable to vCPU `v` = enabled && pending && its group enabled in `GICD_CTLR` &&
//!   !queued && routed to `v` (an SGI or PPI: the vCPU it is banked for; an SPI: its
//!   `GICD_IROUTER`).
//!
//! Queueing stands for the guest's acknowledge: it clears the latch (for either trigger, as an
//! acknowledge clears a pending state that `ISPENDR` latched on a level-sensitive interrupt).
//! A level-sensitive interrupt whose line is still high is pending again the moment the guest
//! deactivates it, and an edge that arrived meanwhile has set the latch again: both are
//! delivered once more after [`Vgic::deactivated`]. That is why the host asks for
//! `EOI_NOTIFY` on every interrupt it queues.
//!
//! # Approximations (the guest's acknowledge and EOI happen in the list registers, without
//! an exit)
//!
//! - `ISACTIVER`/`ICACTIVER` read *queued*: "in a list register, pending or active"; the
//!   model cannot tell the two apart. Writes to them are ignored: an interrupt cannot be put
//!   into or pulled out of a list register from here. Linux writes `ICACTIVER` only at
//!   initialisation, when nothing is queued.
//! - `ICENABLER` and `ICPENDR` on a queued interrupt cannot withdraw it either: the guest may
//!   still take it once (as it may on hardware when the disable races with the delivery).
//! - `GICD_IROUTER.Interrupt_Routing_Mode` = 1 (1 of N) delivers to vCPU 0, which is one
//!   legal choice of a participating PE; an affinity that names no vCPU of the VM also
//!   delivers to vCPU 0 (hardware would deliver it nowhere).
//! - `GICR_WAKER.ProcessorSleep` is kept for the guest to read back, but does not hold back
//!   delivery; `ChildrenAsleep` follows it at once. `RWP` is always 0: every write takes effect
//!   at once.
//! - SGIs from different senders collapse into one pending state per (target, INTID), as in
//!   GICv3 with affinity routing.
//!
//! # Access sizes
//!
//! 32-bit accesses to every register; also 8-bit accesses to `IPRIORITYR` and `ITARGETSR`,
//! and 64-bit accesses (or 32-bit accesses to either half) to `GICD_IROUTER<n>` and
//! `GICR_TYPER`, as the specification allows. Any other size, an unaligned access, or an offset
//! naming no register reads as zero, ignores the write and counts in
//! [`Stats::unhandled_accesses`]. Registers the specification makes RAZ/WI in this
//! configuration (`GICD_IGRPMODR`, `GICD_NSACR`, `GICD_ITARGETSR`, the `GICD` words of INTIDs
//! below 32, unimplemented INTIDs) are handled and not counted.

use crate::{naturally_aligned, width_mask};

/// The most vCPUs a VM has (as EL2 allows).
pub const MAX_VCPUS: usize = 8;
/// How many SPIs the distributor implements: INTIDs 32..32 + `NR_SPIS`.
pub const NR_SPIS: usize = 64;
/// The size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// The size of one vCPU's redistributor (`RD_base` then `SGI_base`, 64 KiB each).
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Where `SGI_base` starts in a redistributor.
pub const GICR_SGI_BASE: u64 = 0x1_0000;

/// SGIs and PPIs, banked per vCPU.
const NR_PRIVATE: usize = 32;
/// Every implemented INTID is below this.
const NR_INTIDS: usize = NR_PRIVATE + NR_SPIS;
/// The priority bits implemented (the top 5).
const PRIORITY_MASK: u8 = 0xF8;

// ITLinesNumber counts SPIs in blocks of 32; a deliverable map is one u128; the INTIDs stay
// below the special range 1020..=1023.
const _: () = assert!(NR_SPIS.is_multiple_of(32) && NR_SPIS >= 32 && NR_SPIS <= 64 && NR_INTIDS <= 128 && NR_INTIDS <= 1020);
const _: () = assert!(MAX_VCPUS <= 8, "Wake is a u8 bitmap");

/// Distributor registers (offsets in the `GICD` frame) and fields.
mod gicd {
    pub const CTLR: u64 = 0x0000;
    pub const TYPER: u64 = 0x0004;
    pub const IIDR: u64 = 0x0008;
    pub const TYPER2: u64 = 0x000C;
    pub const STATUSR: u64 = 0x0010;
    pub const ITARGETSR: u64 = 0x0800;
    pub const ITARGETSR_END: u64 = 0x0C00;
    pub const SGIR: u64 = 0x0F00;
    /// `GICD_IROUTER<n>` is at `IROUTER + 8n`, n = 32..=1019 (n < 32 is reserved).
    pub const IROUTER: u64 = 0x6000;
    pub const IROUTER_SPI_FIRST: u64 = IROUTER + 8 * 32;
    pub const IROUTER_END: u64 = IROUTER + 8 * 1020;

    /// `GICD_CTLR.EnableGrp0` (with `DS` = 1).
    pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
    /// `GICD_CTLR.EnableGrp1` (with `DS` = 1).
    pub const CTLR_ENABLE_GRP1: u32 = 1 << 1;
    /// `GICD_CTLR.ARE`: affinity routing, RAO/WI.
    pub const CTLR_ARE: u32 = 1 << 4;
    /// `GICD_CTLR.DS`: a single security state, RAO/WI.
    pub const CTLR_DS: u32 = 1 << 6;

    /// `GICD_TYPER.IDbits`, bits 23:19: INTIDs have IDbits + 1 bits.
    pub const TYPER_IDBITS_SHIFT: u32 = 19;

    /// `GICD_IROUTER` fields kept: `Interrupt_Routing_Mode` (bit 31), `Aff2.Aff1.Aff0` (bits
    /// 23:0). `Aff3` (bits 39:32) is RES0 because `GICD_TYPER.A3V` is 0.
    pub const IROUTER_IRM: u64 = 1 << 31;
    pub const IROUTER_KEPT: u64 = IROUTER_IRM | 0xFF_FFFF;
}

/// Redistributor `RD_base` registers (offsets in the frame) and fields.
mod gicr {
    pub const CTLR: u64 = 0x0000;
    pub const IIDR: u64 = 0x0004;
    pub const TYPER: u64 = 0x0008;
    pub const STATUSR: u64 = 0x0010;
    pub const WAKER: u64 = 0x0014;

    /// `GICR_TYPER.Last`: the last redistributor of the region.
    pub const TYPER_LAST: u64 = 1 << 4;
    /// `GICR_TYPER.Processor_Number`, bits 23:8.
    pub const TYPER_PROCESSOR_NUMBER_SHIFT: u32 = 8;
    /// `GICR_TYPER.Affinity_Value`, bits 63:32 (Aff3.Aff2.Aff1.Aff0).
    pub const TYPER_AFFINITY_SHIFT: u32 = 32;

    /// `GICR_WAKER.ProcessorSleep`.
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    /// `GICR_WAKER.ChildrenAsleep` (read-only).
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
}

/// `GICD_IIDR` and `GICR_IIDR`: ProductID 1, Variant 0, Revision 0, Implementer 0 (no JEP106
/// code claimed). Not all zero: Linux reads an `IIDR` of 0 as HiSilicon HIP07 and applies
/// that part's erratum workaround.
const IIDR: u32 = 0x0100_0000;
/// `GICD_PIDR2` and `GICR_PIDR2`: `ArchRev` (bits 7:4) = 3, GICv3.
const PIDR2: u32 = 0x30;
/// The ID register block at the top of every frame (`PIDR4`..`CIDR3`, 0xFFD0..=0xFFFC).
const ID_REGS: core::ops::RangeInclusive<u64> = 0xFFD0..=0xFFFC;
const PIDR2_OFFSET: u64 = 0xFFE8;

/// Why a host call was refused. The model is unchanged by a refused call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// [`Vgic::new`]: the number of vCPUs is 0 or above [`MAX_VCPUS`].
    VcpuCount,
    /// The vCPU index (or a bit of an SGI's target set) names no vCPU of this VM.
    NoSuchVcpu,
    /// The INTID is not one this call takes (an SGI for [`Vgic::set_level`], a PPI or SPI for
    /// [`Vgic::send_sgi`], anything not implemented).
    BadIntid,
    /// [`Vgic::deactivated`] for an interrupt the model has not queued on that vCPU: the host
    /// and EL2 disagree about what is in the list registers.
    NotQueued,
}

/// The vCPUs (bit `n` = vCPU `n`) whose set of deliverable interrupts has grown: the host
/// kicks those that run (so they exit and take the new interrupt) and wakes those that wait
/// in WFI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "a vCPU in this set may wait for an interrupt that is now deliverable"]
pub struct Wake(u8);

impl Wake {
    /// No vCPU.
    pub const NONE: Wake = Wake(0);

    /// The bitmap: bit `n` = vCPU `n`.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether no vCPU needs kicking.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether vCPU `vcpu` is in the set.
    pub const fn contains(self, vcpu: usize) -> bool {
        vcpu < MAX_VCPUS && self.0 & 1 << vcpu != 0
    }
}

/// Counters for the host's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// SGIs made pending: one per target vCPU of each [`Vgic::send_sgi`].
    pub sgis: u64,
    /// Interrupts handed to EL2 ([`Candidate::accept`]).
    pub queued: u64,
    /// Deactivations reported by EL2 and accepted ([`Vgic::deactivated`]).
    pub deactivated: u64,
    /// Guest accesses that named no register or used a size the register does not allow:
    /// read as zero, write ignored.
    pub unhandled_accesses: u64,
}

/// One interrupt's state (for an SGI or PPI: on one vCPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Irq {
    group1: bool,
    /// Only the bits of [`PRIORITY_MASK`].
    priority: u8,
    edge: bool,
    /// The input line (PPIs and SPIs; SGIs have none).
    line: bool,
    /// Pending from an edge, an SGI or `ISPENDR`.
    latch: bool,
    /// The vCPU whose list registers hold it (an SGI or PPI: its own vCPU).
    queued_on: Option<u8>,
    /// Delivered by EL2 (a PPI hardware-linked to its source, the virtual timer): never
    /// deliverable here (not offered for queueing, no reason to wake its vCPU: the VMM wakes it
    /// at the timer's deadline), but still pending from its line for the guest's reads.
    linked: bool,
}

impl Irq {
    /// Reset: disabled, Group 0, priority 0, level-sensitive, idle.
    const RESET: Irq =
        Irq { group1: false, priority: 0, edge: false, line: false, latch: false, queued_on: None, linked: false };
    /// An SGI at reset: as [`Irq::RESET`] but edge-triggered (always).
    const RESET_SGI: Irq = Irq { edge: true, ..Irq::RESET };

    const fn pending(&self) -> bool {
        self.latch || (!self.edge && self.line)
    }
}

/// Whether `irq`, enabled if `enabled`, may be offered to its vCPU with `GICD_CTLR` = `ctlr`:
/// enabled, pending, in no list register, not EL2's to deliver, and its group enabled.
fn ready(ctlr: u32, enabled: bool, irq: &Irq) -> bool {
    let group = if irq.group1 { gicd::CTLR_ENABLE_GRP1 } else { gicd::CTLR_ENABLE_GRP0 };
    enabled && irq.pending() && irq.queued_on.is_none() && !irq.linked && ctlr & group != 0
}

/// The set bits of `bits`, lowest first. (64 bits: on this target a `u128`'s shifts and
/// counts cost several instructions each.)
fn ones(mut bits: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        let i = (bits != 0).then(|| bits.trailing_zeros() as usize)?;
        bits &= bits - 1;
        Some(i)
    })
}

/// A read, or a write of a value.
#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write(u64),
}

/// Whose per-INTID registers a bank access reaches: the distributor's (SPIs) or one vCPU's
/// redistributor `SGI_base` (its SGIs and PPIs).
#[derive(Clone, Copy, Debug)]
enum Bank {
    Distributor,
    Redistributor(usize),
}

/// The per-INTID registers, laid out alike in the distributor and in `SGI_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BankReg {
    /// One bit per INTID, 32-bit access: `IGROUPR` and the set/clear pairs.
    Bits(BitReg),
    /// One byte per INTID, 8- or 32-bit access.
    Priority,
    /// Two bits per INTID, 32-bit access.
    Config,
    /// `IGRPMODR` (only meaningful with two security states): RAZ/WI, 32-bit access.
    Grpmod,
    /// `NSACR` (ditto): RAZ/WI, 32-bit access.
    Nsac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

/// Decodes an offset in the per-INTID register area (0x080..0xF00) into the register and the
/// first INTID the addressed word (or byte, for `IPRIORITYR`) covers.
fn decode_bank(off: u64) -> Option<(BankReg, usize)> {
    let bits = |base: u64, reg: BitReg| (BankReg::Bits(reg), ((off - base) / 4 * 32) as usize);
    Some(match off {
        0x080..=0x0FF => bits(0x080, BitReg::Group),
        0x100..=0x17F => bits(0x100, BitReg::SetEnable),
        0x180..=0x1FF => bits(0x180, BitReg::ClearEnable),
        0x200..=0x27F => bits(0x200, BitReg::SetPending),
        0x280..=0x2FF => bits(0x280, BitReg::ClearPending),
        0x300..=0x37F => bits(0x300, BitReg::SetActive),
        0x380..=0x3FF => bits(0x380, BitReg::ClearActive),
        0x400..=0x7FF => (BankReg::Priority, (off - 0x400) as usize),
        0xC00..=0xCFF => (BankReg::Config, ((off - 0xC00) / 4 * 16) as usize),
        0xD00..=0xD7F => (BankReg::Grpmod, ((off - 0xD00) / 4 * 32) as usize),
        0xE00..=0xEFF => (BankReg::Nsac, ((off - 0xE00) / 4 * 16) as usize),
        _ => return None,
    })
}

impl BankReg {
    /// Whether the specification allows an access of `size` bytes.
    fn size_ok(self, size: u32) -> bool {
        size == 4 || (self == BankReg::Priority && size == 1)
    }

    /// Whether the word starting at INTID `first` exists in a redistributor's `SGI_base`
    /// (which has only the registers for INTIDs 0..32).
    fn in_sgi_base(self, first: usize) -> bool {
        match self {
            BankReg::Bits(_) | BankReg::Grpmod | BankReg::Nsac => first == 0,
            BankReg::Priority | BankReg::Config => first < NR_PRIVATE,
        }
    }
}

/// The distributor and the redistributors of one VM.
///
/// The host's loop around a vCPU run, with EL2's answers stubbed:
///
/// ```
/// use host_vdev::vgic::Vgic;
/// # fn vcpu_set_irq(_vcpu: usize, _intid: u32, _config: u32) -> Result<(), ()> { Ok(()) }
/// # let eoi_bitmap_from_el2 = [33u32];
/// let mut vgic = Vgic::new(2).unwrap();
/// # let _ = vgic.gicd_write(0x0, 4, 0x3); // GICD_CTLR: both groups on
/// # let _ = vgic.gicd_write(0x84, 4, 1 << 1); // GICD_IGROUPR1: INTID 33 in Group 1
/// # let _ = vgic.gicd_write(0x104, 4, 1 << 1); // GICD_ISENABLER1: INTID 33 enabled
/// // A device raised its line (the UART's SPI): kick or wake the vCPUs named.
/// let wake = vgic.set_level(0, 33, true).unwrap();
/// assert!(wake.contains(0));
/// // Before running vCPU 0: queue until EL2 refuses (list registers full, or already there).
/// while let Some(c) = vgic.next_to_queue(0) {
///     let config = u32::from(c.priority()) | u32::from(c.group1()) << 8 | 1 << 9 | 1 << 11;
///     match vcpu_set_irq(0, c.intid(), config) {
///         Ok(()) => c.accept(),
///         Err(()) => break,
///     }
/// }
/// // After the exit: what the guest deactivated (VCPU_IRQ_STATE's EOI bitmap).
/// for &intid in &eoi_bitmap_from_el2 {
///     let _wake = vgic.deactivated(0, intid).unwrap(); // line still high: deliverable again
/// }
/// assert!(vgic.has_deliverable(0));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vgic {
    nr_vcpus: usize,
    /// `GICD_CTLR.EnableGrp0` and `EnableGrp1`; the other fields are constant.
    ctlr: u32,
    private: [[Irq; NR_PRIVATE]; MAX_VCPUS],
    spis: [Irq; NR_SPIS],
    /// The enable bits (`ISENABLER`): bit `i` of vCPU `v`'s word = its SGI or PPI `i`. Kept as
    /// bitmaps, not per interrupt, so the deliverable set is found by looking only at what the
    /// guest enabled (a handful of the 96 a vCPU sees).
    enabled_private: [u64; MAX_VCPUS],
    /// Bit `i` = SPI `32 + i`.
    enabled_spis: u64,
    /// `GICD_IROUTER<32 + i>`, only [`gicd::IROUTER_KEPT`] bits.
    irouter: [u64; NR_SPIS],
    /// `GICR_WAKER.ProcessorSleep` of each redistributor.
    processor_sleep: [bool; MAX_VCPUS],
    stats: Stats,
}

/// The interrupt [`Vgic::next_to_queue`] chose for a vCPU: queue it with `VCPU_SET_IRQ`
/// (configuration: [`Candidate::priority`], `GROUP1` if [`Candidate::group1`], state
/// `PENDING`, `EOI_NOTIFY`), then [`Candidate::accept`] if EL2 took it; drop it if EL2 refused
/// (`NoCapacity`: every list register in use) and stop queueing on that vCPU until its next
/// exit. The model never offers an interrupt it has queued, so `Busy` means the host has not
/// passed on a deactivation EL2 reported (collect `VCPU_IRQ_STATE` first).
///
/// It borrows the model mutably, so nothing can change the interrupt's state between the
/// choice and the acceptance, and it can be accepted at most once:
///
/// ```compile_fail,E0499
/// # use host_vdev::vgic::Vgic;
/// let mut vgic = Vgic::new(1).unwrap();
/// let c = vgic.next_to_queue(0).unwrap();
/// let _ = vgic.send_sgi(1, 3); // the model cannot change while a choice is outstanding
/// c.accept();
/// ```
#[derive(Debug)]
#[must_use = "accept the candidate once EL2 has queued it"]
pub struct Candidate<'a> {
    vgic: &'a mut Vgic,
    vcpu: u8,
    intid: u16,
    priority: u8,
    group1: bool,
}

impl Candidate<'_> {
    /// The vINTID.
    pub fn intid(&self) -> u32 {
        u32::from(self.intid)
    }

    /// Its priority: only the top 5 bits can be set, so `VCPU_SET_IRQ` accepts it on any
    /// virtual CPU interface.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether it is Group 1 (a virtual IRQ); otherwise Group 0 (a virtual FIQ).
    pub fn group1(&self) -> bool {
        self.group1
    }

    /// EL2 has put it in a list register: it is queued until [`Vgic::deactivated`], and its
    /// pending latch is consumed (the queueing stands for the guest's acknowledge).
    pub fn accept(self) {
        let (vcpu, intid) = (usize::from(self.vcpu), usize::from(self.intid));
        if let Some(irq) = self.vgic.irq_mut(vcpu, intid) {
            irq.queued_on = Some(self.vcpu);
            irq.latch = false;
            self.vgic.stats.queued += 1;
        }
    }
}

impl Vgic {
    /// A distributor and `nr_vcpus` redistributors at reset: every interrupt disabled, Group 0,
    /// priority 0, idle; SGIs edge-triggered, PPIs and SPIs level-sensitive; every SPI routed
    /// to vCPU 0; both groups disabled; every redistributor asleep (`ProcessorSleep` = 1).
    ///
    /// # Errors
    /// [`Error::VcpuCount`] unless `1 <= nr_vcpus <= MAX_VCPUS`.
    pub const fn new(nr_vcpus: usize) -> Result<Self, Error> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            return Err(Error::VcpuCount);
        }
        let mut bank = [Irq::RESET; NR_PRIVATE];
        let mut i = 0;
        while i < 16 {
            bank[i] = Irq::RESET_SGI;
            i += 1;
        }
        Ok(Self {
            nr_vcpus,
            ctlr: 0,
            private: [bank; MAX_VCPUS],
            spis: [Irq::RESET; NR_SPIS],
            enabled_private: [0; MAX_VCPUS],
            enabled_spis: 0,
            irouter: [0; NR_SPIS],
            processor_sleep: [true; MAX_VCPUS],
            stats: Stats { sgis: 0, queued: 0, deactivated: 0, unhandled_accesses: 0 },
        })
    }

    /// The number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- Host-facing interrupt API -------------------------------------------------------

    /// Drives the input line of PPI `intid` (16..32) of vCPU `vcpu`, or of SPI `intid`
    /// (32..32 + [`NR_SPIS`]; `vcpu` is then ignored). A level-sensitive interrupt is pending
    /// while its line is high; an edge-triggered one latches a rising edge.
    ///
    /// # Errors
    /// [`Error::BadIntid`] for an SGI or an unimplemented INTID, [`Error::NoSuchVcpu`] for a
    /// PPI of a vCPU the VM does not have.
    pub fn set_level(&mut self, vcpu: usize, intid: u32, high: bool) -> Result<Wake, Error> {
        let intid = usize::try_from(intid).map_err(|_| Error::BadIntid)?;
        let vcpu = match intid {
            16..NR_PRIVATE if vcpu < self.nr_vcpus => vcpu,
            16..NR_PRIVATE => return Err(Error::NoSuchVcpu),
            NR_PRIVATE..NR_INTIDS => 0,
            _ => return Err(Error::BadIntid),
        };
        Ok(self.changing_one(vcpu, intid, |irq| {
            if irq.edge && high && !irq.line {
                irq.latch = true;
            }
            irq.line = high;
        }))
    }

    /// Makes SGI `intid` (0..16) pending on every vCPU in `targets` (bit `n` = vCPU `n`), as
    /// EL2 decoded from the guest's `ICC_SGI1R_EL1` (an `SGI` exit).
    ///
    /// # Errors
    /// [`Error::BadIntid`] unless `intid < 16`; [`Error::NoSuchVcpu`] if `targets` names a vCPU
    /// the VM does not have.
    pub fn send_sgi(&mut self, targets: u8, intid: u32) -> Result<Wake, Error> {
        let intid = usize::try_from(intid).ok().filter(|&i| i < 16).ok_or(Error::BadIntid)?;
        if u32::from(targets) >> self.nr_vcpus != 0 {
            return Err(Error::NoSuchVcpu);
        }
        let mut wake = 0;
        for vcpu in (0..self.nr_vcpus).filter(|&n| targets & 1 << n != 0) {
            wake |= self.changing_one(vcpu, intid, |irq| irq.latch = true).0;
            self.stats.sgis += 1;
        }
        Ok(Wake(wake))
    }

    /// The interrupt to queue next on `vcpu`: the deliverable one of highest priority (lowest
    /// value; between equals, the lowest INTID). `None` if nothing is deliverable or `vcpu` is
    /// not a vCPU of the VM.
    pub fn next_to_queue(&mut self, vcpu: usize) -> Option<Candidate<'_>> {
        let map = self.deliverable_map(vcpu);
        // A plain loop over the fields the choice needs: the iterator version copied an `Irq`
        // per candidate, a byte-wise `memcpy` call on the host's target.
        let mut best: Option<(u8, usize, bool)> = None;
        for i in ones(map as u64).chain(ones((map >> 64) as u64).map(|i| i + 64)) {
            let Some(irq) = self.irq(vcpu, i) else { continue };
            // Strictly lower: between equal priorities the lowest INTID (the first) stays.
            if best.is_none_or(|(p, _, _)| irq.priority < p) {
                best = Some((irq.priority, i, irq.group1));
            }
        }
        let (priority, intid, group1) = best?;
        Some(Candidate {
            vcpu: vcpu as u8,
            intid: intid as u16,
            priority,
            group1,
            vgic: self,
        })
    }

    /// EL2 reported that the guest has deactivated `intid` on `vcpu` (its `VCPU_IRQ_STATE`
    /// EOI bitmap): it is no longer queued, and deliverable again at once if it is pending (a
    /// level-sensitive line still high, or a new edge or SGI meanwhile).
    ///
    /// # Errors
    /// [`Error::NoSuchVcpu`], [`Error::BadIntid`] (not implemented), [`Error::NotQueued`] (the
    /// model did not queue it on `vcpu`).
    pub fn deactivated(&mut self, vcpu: usize, intid: u32) -> Result<Wake, Error> {
        if vcpu >= self.nr_vcpus {
            return Err(Error::NoSuchVcpu);
        }
        let intid = usize::try_from(intid).map_err(|_| Error::BadIntid)?;
        let irq = self.irq(vcpu, intid).ok_or(Error::BadIntid)?;
        if irq.queued_on != Some(vcpu as u8) {
            return Err(Error::NotQueued);
        }
        self.stats.deactivated += 1;
        Ok(self.changing_one(vcpu, intid, |irq| irq.queued_on = None))
    }

    /// How EL2 should deliver PPI `intid` of `vcpu` itself (`VCPU_LINK_VTIMER` for the virtual
    /// timer's): its priority and group while the guest has it enabled, in an enabled group;
    /// `None` otherwise (the model then delivers it, or nothing does).
    pub fn link_config(&self, vcpu: usize, intid: u32) -> Option<(u8, bool)> {
        let irq = self.irq(vcpu, intid as usize).filter(|_| (16..NR_PRIVATE as u32).contains(&intid))?;
        let group = if irq.group1 { gicd::CTLR_ENABLE_GRP1 } else { gicd::CTLR_ENABLE_GRP0 };
        (self.enabled(vcpu, intid as usize) && self.ctlr & group != 0).then_some((irq.priority, irq.group1))
    }

    /// How EL2 should deliver the SGIs of `vcpu` itself (`VCPU_LINK_SGIS`): the enabled ones
    /// (in an enabled group; bits 15:0), the Group 1 ones (bits 31:16), and their priorities
    /// (byte n = SGI n). `None` for a vCPU the VM does not have.
    pub fn sgi_link_config(&self, vcpu: usize) -> Option<(u32, u128)> {
        let bank = self.private[..self.nr_vcpus].get(vcpu)?;
        let (mut masks, mut priorities) = (0u32, 0u128);
        for (n, irq) in bank.iter().take(16).enumerate() {
            let group = if irq.group1 { gicd::CTLR_ENABLE_GRP1 } else { gicd::CTLR_ENABLE_GRP0 };
            if self.enabled_private[vcpu] >> n & 1 != 0 && self.ctlr & group != 0 {
                masks |= 1 << n;
            }
            if irq.group1 {
                masks |= 1 << (16 + n);
            }
            priorities |= u128::from(irq.priority) << (8 * n);
        }
        Some((masks, priorities))
    }

    /// Marks PPI `intid` of `vcpu` as delivered by EL2 (`linked`) or by the model again.
    ///
    /// # Errors
    /// [`Error::BadIntid`] unless a PPI, [`Error::NoSuchVcpu`].
    pub fn set_linked(&mut self, vcpu: usize, intid: u32, linked: bool) -> Result<(), Error> {
        if !(16..NR_PRIVATE as u32).contains(&intid) {
            return Err(Error::BadIntid);
        }
        if vcpu >= self.nr_vcpus {
            return Err(Error::NoSuchVcpu);
        }
        if let Some(irq) = self.irq_mut(vcpu, intid as usize) {
            irq.linked = linked;
        }
        Ok(())
    }

    /// Whether `vcpu` has a deliverable interrupt (so a vCPU blocked in WFI must be woken).
    pub fn has_deliverable(&self, vcpu: usize) -> bool {
        self.deliverable_map(vcpu) != 0
    }

    // ---- Guest MMIO ----------------------------------------------------------------------

    /// A guest read of `size` bytes at `offset` in the 64 KiB distributor frame.
    pub fn gicd_read(&mut self, offset: u64, size: u32) -> u64 {
        let value = self.gicd_access(offset, size, Op::Read);
        self.count(value)
    }

    /// A guest write of `value` (`size` bytes) at `offset` in the distributor frame.
    pub fn gicd_write(&mut self, offset: u64, size: u32, value: u64) -> Wake {
        let value = value & width_mask(size);
        self.changing(|v| {
            let handled = v.gicd_access(offset, size, Op::Write(value));
            v.count(handled);
        })
    }

    /// A guest read of `size` bytes at `offset` in the redistributor region (vCPU `n`'s
    /// redistributor at `n * GICR_STRIDE`).
    pub fn gicr_read(&mut self, offset: u64, size: u32) -> u64 {
        let value = self.gicr_access(offset, size, Op::Read);
        self.count(value)
    }

    /// A guest write of `value` (`size` bytes) at `offset` in the redistributor region.
    pub fn gicr_write(&mut self, offset: u64, size: u32, value: u64) -> Wake {
        let value = value & width_mask(size);
        self.changing(|v| {
            let handled = v.gicr_access(offset, size, Op::Write(value));
            v.count(handled);
        })
    }

    // ---- Internals -----------------------------------------------------------------------

    /// The value of a handled access, or 0 and one more unhandled access.
    fn count(&mut self, access: Option<u64>) -> u64 {
        access.unwrap_or_else(|| {
            self.stats.unhandled_accesses += 1;
            0
        })
    }

    /// [`Self::changing`] for a change to INTID `intid` as vCPU `vcpu` sees it and to nothing
    /// else (a line, a latch, a deactivation): only that interrupt's bit in its own vCPU's map
    /// can move, so only it is looked at, before and after (the full maps cost a pass over
    /// every interrupt of every vCPU, twice, and a 2-vCPU Linux boot makes thousands of such
    /// changes). Nothing happens for an INTID the model does not implement.
    fn changing_one(&mut self, vcpu: usize, intid: usize, change: impl FnOnce(&mut Irq)) -> Wake {
        let target = match intid.checked_sub(NR_PRIVATE) {
            Some(spi) if spi < NR_SPIS => self.spi_target(spi),
            _ => vcpu,
        };
        let (ctlr, enabled) = (self.ctlr, self.enabled(vcpu, intid));
        let Some(irq) = self.irq_mut(vcpu, intid) else { return Wake::NONE };
        let before = ready(ctlr, enabled, irq);
        change(irq);
        Wake(if ready(ctlr, enabled, irq) && !before { 1 << target } else { 0 })
    }

    /// Runs `change` and returns the vCPUs that gained a deliverable interrupt.
    fn changing(&mut self, change: impl FnOnce(&mut Self)) -> Wake {
        let before = self.deliverable_maps();
        change(self);
        let after = self.deliverable_maps();
        let mut wake = 0;
        for (vcpu, (a, b)) in after.iter().zip(before).enumerate() {
            if a & !b != 0 {
                wake |= 1 << vcpu;
            }
        }
        Wake(wake)
    }

    /// For each vCPU, its deliverable INTIDs (bit `i` = INTID `i`); zero for absent vCPUs.
    fn deliverable_maps(&self) -> [u128; MAX_VCPUS] {
        core::array::from_fn(|v| self.deliverable_map(v))
    }

    /// vCPU `vcpu`'s deliverable INTIDs (its row of [`Self::deliverable_maps`]), looking only
    /// at the interrupts enabled; zero for an absent vCPU.
    fn deliverable_map(&self, vcpu: usize) -> u128 {
        let Some(bank) = self.private[..self.nr_vcpus].get(vcpu) else { return 0 };
        let (mut private, mut spis) = (0u64, 0u64);
        for i in ones(self.enabled_private[vcpu]) {
            if ready(self.ctlr, true, &bank[i]) {
                private |= 1 << i;
            }
        }
        for i in ones(self.enabled_spis) {
            if ready(self.ctlr, true, &self.spis[i]) && self.spi_target(i) == vcpu {
                spis |= 1 << i;
            }
        }
        u128::from(private) | u128::from(spis) << NR_PRIVATE
    }

    /// Whether INTID `intid` as vCPU `vcpu` sees it is enabled (false if not implemented).
    fn enabled(&self, vcpu: usize, intid: usize) -> bool {
        match intid {
            0..NR_PRIVATE => self.enabled_private.get(vcpu).is_some_and(|&w| w >> intid & 1 != 0),
            _ => intid - NR_PRIVATE < NR_SPIS && self.enabled_spis >> (intid - NR_PRIVATE) & 1 != 0,
        }
    }

    /// Sets or clears the enable bit of INTID `intid` in `bank` (where
    /// [`Self::bank_irq_mut`] found it).
    fn set_enabled(&mut self, bank: Bank, intid: usize, on: bool) {
        let (word, bit) = match bank {
            Bank::Distributor => (&mut self.enabled_spis, intid - NR_PRIVATE),
            Bank::Redistributor(vcpu) => (&mut self.enabled_private[vcpu], intid),
        };
        if on {
            *word |= 1 << bit;
        } else {
            *word &= !(1 << bit);
        }
    }

    /// The vCPU SPI `32 + spi` is routed to: the vCPU its `GICD_IROUTER` names, else vCPU 0
    /// (1-of-N routing, or an affinity naming no vCPU of the VM).
    fn spi_target(&self, spi: usize) -> usize {
        let route = self.irouter[spi];
        let aff0 = (route & 0xFF) as usize;
        if route & gicd::IROUTER_IRM != 0 || route & 0xFF_FF00 != 0 || aff0 >= self.nr_vcpus {
            0
        } else {
            aff0
        }
    }

    /// INTID `intid` as vCPU `vcpu` sees it (SPIs are shared; `vcpu` then does not matter).
    fn irq(&self, vcpu: usize, intid: usize) -> Option<&Irq> {
        match intid {
            0..NR_PRIVATE => self.private[..self.nr_vcpus].get(vcpu)?.get(intid),
            _ => self.spis.get(intid - NR_PRIVATE),
        }
    }

    fn irq_mut(&mut self, vcpu: usize, intid: usize) -> Option<&mut Irq> {
        match intid {
            0..NR_PRIVATE => self.private[..self.nr_vcpus].get_mut(vcpu)?.get_mut(intid),
            _ => self.spis.get_mut(intid - NR_PRIVATE),
        }
    }

    /// The interrupt a bank register bit or byte names, if implemented there: SPIs through the
    /// distributor, the vCPU's own SGIs and PPIs through its redistributor.
    fn bank_irq_mut(&mut self, bank: Bank, intid: usize) -> Option<&mut Irq> {
        match bank {
            Bank::Distributor if intid >= NR_PRIVATE => self.spis.get_mut(intid - NR_PRIVATE),
            Bank::Redistributor(vcpu) if intid < NR_PRIVATE => self.irq_mut(vcpu, intid),
            _ => None,
        }
    }

    /// `GICD_CTLR` as read.
    fn gicd_ctlr(&self) -> u32 {
        self.ctlr | gicd::CTLR_ARE | gicd::CTLR_DS
    }

    /// `GICD_TYPER`: ITLinesNumber (bits 4:0) from [`NR_SPIS`], IDbits = 9 (10-bit INTIDs);
    /// CPUNumber 0 (no legacy operation), and no security extension, message-based SPIs,
    /// LPIs, direct virtual LPI injection, Aff3, range-selector SGIs or extended SPIs.
    /// `No1N` (bit 25) is 0: 1-of-N routing is accepted (see the module docs).
    const fn gicd_typer() -> u32 {
        let it_lines = (NR_INTIDS / 32 - 1) as u32;
        it_lines | 9 << gicd::TYPER_IDBITS_SHIFT
    }

    /// `GICR_TYPER` of vCPU `vcpu`: its affinity 0.0.0.vcpu, `Processor_Number` = vcpu, `Last`
    /// on the last one; no physical or virtual LPIs, no direct LPI injection, 16 PPIs.
    fn gicr_typer(&self, vcpu: usize) -> u64 {
        let last = if vcpu + 1 == self.nr_vcpus { gicr::TYPER_LAST } else { 0 };
        (vcpu as u64) << gicr::TYPER_AFFINITY_SHIFT | (vcpu as u64) << gicr::TYPER_PROCESSOR_NUMBER_SHIFT | last
    }

    /// Decodes and performs a distributor access; `None` if unhandled. A write returns
    /// `Some(_)` of no meaning.
    fn gicd_access(&mut self, off: u64, size: u32, op: Op) -> Option<u64> {
        if !naturally_aligned(off, size) || off >= GICD_SIZE {
            return None;
        }
        let value = match (off, size) {
            (gicd::CTLR, 4) => {
                if let Op::Write(v) = op {
                    self.ctlr = v as u32 & (gicd::CTLR_ENABLE_GRP0 | gicd::CTLR_ENABLE_GRP1);
                }
                u64::from(self.gicd_ctlr())
            }
            (gicd::TYPER, 4) => u64::from(Self::gicd_typer()),
            (gicd::IIDR, 4) => u64::from(IIDR),
            (gicd::TYPER2 | gicd::STATUSR | gicd::SGIR, 4) => 0,
            (gicd::ITARGETSR..gicd::ITARGETSR_END, 1 | 4) => 0,
            (gicd::IROUTER_SPI_FIRST..gicd::IROUTER_END, 4 | 8) => self.irouter_access(off, size, op),
            (off, 4) if ID_REGS.contains(&off) => u64::from(if off == PIDR2_OFFSET { PIDR2 } else { 0 }),
            _ => {
                let (reg, first) = decode_bank(off)?;
                if !reg.size_ok(size) {
                    return None;
                }
                self.bank_access(Bank::Distributor, reg, first, size, op)
            }
        };
        Some(value)
    }

    /// `GICD_IROUTER<n>`, a 64-bit access or a 32-bit access to either half. The offset is
    /// aligned and within `IROUTER_SPI_FIRST..IROUTER_END`.
    fn irouter_access(&mut self, off: u64, size: u32, op: Op) -> u64 {
        let n = ((off - gicd::IROUTER) / 8) as usize;
        let Some(route) = n.checked_sub(NR_PRIVATE).and_then(|spi| self.irouter.get_mut(spi)) else {
            return 0; // an unimplemented SPI: RAZ/WI
        };
        let high_half = size == 4 && off % 8 == 4;
        if let Op::Write(v) = op {
            let new = match (size, high_half) {
                (8, _) => v,
                (_, false) => *route & !0xFFFF_FFFF | v,
                (_, true) => *route & 0xFFFF_FFFF | v << 32,
            };
            *route = new & gicd::IROUTER_KEPT;
        }
        match (size, high_half) {
            (8, _) => *route,
            (_, false) => *route & 0xFFFF_FFFF,
            (_, true) => *route >> 32,
        }
    }

    /// Decodes and performs a redistributor access; `None` if unhandled.
    fn gicr_access(&mut self, off: u64, size: u32, op: Op) -> Option<u64> {
        if !naturally_aligned(off, size) {
            return None;
        }
        let vcpu = usize::try_from(off / GICR_STRIDE).ok().filter(|&v| v < self.nr_vcpus)?;
        let frame = off % GICR_STRIDE;
        if frame >= GICR_SGI_BASE {
            let (reg, first) = decode_bank(frame - GICR_SGI_BASE)?;
            if !reg.size_ok(size) || !reg.in_sgi_base(first) {
                return None;
            }
            return Some(self.bank_access(Bank::Redistributor(vcpu), reg, first, size, op));
        }
        let value = match (frame, size) {
            // EnableLPIs RAZ/WI (no LPIs), RWP and UWP 0: nothing to configure.
            (gicr::CTLR | gicr::STATUSR, 4) => 0,
            (gicr::IIDR, 4) => u64::from(IIDR),
            (gicr::TYPER, 8) => self.gicr_typer(vcpu),
            (gicr::TYPER, 4) => self.gicr_typer(vcpu) & 0xFFFF_FFFF,
            (f, 4) if f == gicr::TYPER + 4 => self.gicr_typer(vcpu) >> 32,
            (gicr::WAKER, 4) => {
                if let Op::Write(v) = op {
                    self.processor_sleep[vcpu] = v as u32 & gicr::WAKER_PROCESSOR_SLEEP != 0;
                }
                if self.processor_sleep[vcpu] {
                    u64::from(gicr::WAKER_PROCESSOR_SLEEP | gicr::WAKER_CHILDREN_ASLEEP)
                } else {
                    0
                }
            }
            (f, 4) if ID_REGS.contains(&f) => u64::from(if f == PIDR2_OFFSET { PIDR2 } else { 0 }),
            _ => return None,
        };
        Some(value)
    }

    /// A per-INTID register access of `size` bytes (already checked) starting at INTID
    /// `first`. Bits and bytes of INTIDs the bank does not implement are RAZ/WI.
    fn bank_access(&mut self, bank: Bank, reg: BankReg, first: usize, size: u32, op: Op) -> u64 {
        let mut read = 0u64;
        match reg {
            BankReg::Grpmod | BankReg::Nsac => {}
            BankReg::Bits(bit) => {
                for i in 0..32 {
                    let intid = first + i;
                    let vcpu = match bank {
                        Bank::Distributor => 0,
                        Bank::Redistributor(v) => v,
                    };
                    let enabled = self.enabled(vcpu, intid);
                    let Some(irq) = self.bank_irq_mut(bank, intid) else { continue };
                    let set = match op {
                        Op::Read => false,
                        Op::Write(v) => v >> i & 1 != 0,
                    };
                    let mut enable = None;
                    if let Op::Write(_) = op {
                        match bit {
                            BitReg::Group => irq.group1 = set,
                            BitReg::SetEnable if set => enable = Some(true),
                            BitReg::ClearEnable if set => enable = Some(false),
                            BitReg::SetPending if set => irq.latch = true,
                            BitReg::ClearPending if set => irq.latch = false,
                            // ISACTIVER/ICACTIVER and zero bits: nothing (module docs).
                            _ => {}
                        }
                    }
                    let state = match bit {
                        BitReg::Group => irq.group1,
                        BitReg::SetEnable | BitReg::ClearEnable => enable.unwrap_or(enabled),
                        BitReg::SetPending | BitReg::ClearPending => irq.pending(),
                        BitReg::SetActive | BitReg::ClearActive => irq.queued_on.is_some(),
                    };
                    read |= u64::from(state) << i;
                    if let Some(on) = enable {
                        self.set_enabled(bank, intid, on);
                    }
                }
            }
            BankReg::Priority => {
                for i in 0..size as usize {
                    let Some(irq) = self.bank_irq_mut(bank, first + i) else { continue };
                    if let Op::Write(v) = op {
                        irq.priority = (v >> (8 * i)) as u8 & PRIORITY_MASK;
                    }
                    read |= u64::from(irq.priority) << (8 * i);
                }
            }
            BankReg::Config => {
                for i in 0..16 {
                    let intid = first + i;
                    let Some(irq) = self.bank_irq_mut(bank, intid) else { continue };
                    // Int_config is bit 2i+1 (1 = edge); bit 2i is RES0. SGIs: edge, read-only.
                    if let (Op::Write(v), true) = (op, intid >= 16) {
                        irq.edge = v >> (2 * i + 1) & 1 != 0;
                    }
                    read |= u64::from(irq.edge) << (2 * i + 1);
                }
            }
        }
        read
    }
}

#[cfg(test)]
mod tests;
