//! Messages exchanged through a CPU's message page.
//!
//! Every message is `#[repr(C)]`, has no padding (so `zerocopy` can derive `IntoBytes`), and has
//! its size and field offsets pinned by `const` assertions: a layout change is a compile error on
//! both sides, not a silent ABI break. All messages live at offset 0 of the page.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Number of payload words in an echo message.
pub const ECHO_WORDS: usize = 6;

/// Request of [`crate::HypercallId::Echo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EchoRequest {
    /// Any value; returned unchanged.
    pub nonce: u64,
    /// Reserved, must be zero ([`crate::HypError::BadMessage`] otherwise).
    pub flags: u64,
    /// Payload.
    pub words: [u64; ECHO_WORDS],
}

/// Response of [`crate::HypercallId::Echo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EchoResponse {
    /// The request's nonce.
    pub nonce: u64,
    /// Wrapping sum of the request's payload words.
    pub sum: u64,
    /// The request's payload, each word bitwise inverted.
    pub inverted: [u64; ECHO_WORDS],
}

impl EchoRequest {
    /// The response a correct hypervisor gives to this request.
    pub fn expected_response(&self) -> EchoResponse {
        let mut inverted = [0; ECHO_WORDS];
        for (o, w) in inverted.iter_mut().zip(self.words) {
            *o = !w;
        }
        EchoResponse {
            nonce: self.nonce,
            sum: self.words.iter().fold(0u64, |a, w| a.wrapping_add(*w)),
            inverted,
        }
    }
}

/// Response of [`crate::HypercallId::HypInfo`]: what EL2 found at boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HypInfo {
    /// [`crate::AbiVersion::encode`] of the running hypervisor.
    pub abi_version: u32,
    /// Number of CPUs EL2 manages (from the device tree).
    pub nr_cpus: u32,
    /// Base of RAM.
    pub ram_base: u64,
    /// Size of RAM in bytes.
    pub ram_size: u64,
    /// Base of the memory EL2 keeps for itself (no host access).
    pub hyp_base: u64,
    /// Size of EL2's memory in bytes.
    pub hyp_size: u64,
    /// Intermediate physical address size of the host's stage 2, in bits.
    pub host_ipa_bits: u32,
    /// 1 once set-up is finalised.
    pub finalised: u32,
    /// The SVE vector lengths a VM may be given now (4.1, [`sve`]): bit `n` set means
    /// [`VmCreate::sve_vl`] = `16 * (n + 1)` bytes is accepted. 0: no SVE for VMs. Until the CPU
    /// view is fixed (the first `FINALISE_SETUP` or `VM_CREATE`), a CPU that comes up later may
    /// still remove lengths.
    pub sve_vls: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Flags of [`VmCreate`].
pub mod vm_flags {
    /// A protected VM: its memory is donated, its registers are sealed after the first run.
    pub const PROTECTED: u64 = 1 << 0;
    /// Memory tagging for the guest: refused with `Denied` unless every CPU has FEAT_MTE2.
    pub const MTE: u64 = 1 << 1;
    /// Pointer authentication for the guest (not yet supported: refused with `Denied`).
    pub const PTRAUTH: u64 = 1 << 2;
    /// Non-protected VMs only (refused with `Denied` for protected ones): the guest may use the
    /// PMU directly (`MDCR_EL2.TPM/TPMCR` clear), reading the counters the host programmed.
    /// For instruction-count benchmarks "as the guest sees them"; it also lets the guest
    /// observe and reprogram the host's counters, which is why it is opt-in.
    pub const HOST_PMU: u64 = 1 << 3;
    /// SVE for the guest (4.1), with the vector length in [`super::VmCreate::sve_vl`]: refused
    /// with `InvalidArgument` for a length that is no SVE length ([`super::sve::valid_vl`]),
    /// with `Denied` for one the CPUs cannot all give the same way ([`super::HypInfo::sve_vls`]).
    pub const SVE: u64 = 1 << 4;
    /// Every flag this ABI version defines.
    pub const ALL: u64 = PROTECTED | MTE | PTRAUTH | HOST_PMU | SVE;
}

/// SVE vector lengths (4.1), in bytes as [`VmCreate::sve_vl`] and [`HypInfo::sve_vls`] give
/// them.
pub mod sve {
    /// The architecture's granule: a vector length is a multiple of 128 bits.
    pub const VL_GRANULE: u64 = 16;
    /// The architecture's largest vector length, 2048 bits (`ZCR_ELx.LEN` = 15).
    pub const VL_MAX: u64 = 256;

    /// Whether `vl` bytes is an SVE vector length: a multiple of 16 from 16 to 256.
    pub const fn valid_vl(vl: u64) -> bool {
        vl >= VL_GRANULE && vl <= VL_MAX && vl.is_multiple_of(VL_GRANULE)
    }

    /// The bit of [`super::HypInfo::sve_vls`] for a valid length `vl`.
    pub const fn vl_bit(vl: u64) -> u32 {
        1 << (vl / VL_GRANULE - 1)
    }
}

/// Request of [`crate::HypercallId::VmCreate`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VmCreate {
    /// Number of vCPUs, 1..=`MAX_VCPUS`.
    pub nr_vcpus: u32,
    /// Guest IPA size in bits, 32..=40, within every CPU's PARange, and 32..=39 when some
    /// CPU's PARange is below 44 bits (docs/ABI.md, "VMs").
    pub ipa_bits: u32,
    /// [`vm_flags`].
    pub flags: u64,
    /// With [`vm_flags::SVE`] (4.1): the guest's SVE vector length in bytes, the largest its
    /// `ZCR_EL1` can select ([`sve::valid_vl`], one of [`HypInfo::sve_vls`]). Without it: 0.
    pub sve_vl: u64,
    /// Reserved, must be zero.
    pub reserved: u64,
}

/// [`crate::HypercallId::VcpuRun`]'s `x4` (ABI 4.1). Other bits: `InvalidArgument`.
pub mod run_flags {
    /// The MMIO access of the vCPU's last exit gets a synchronous external abort instead of
    /// completing (the VMM has no device there), as KVM answers an access to an IPA that is
    /// neither memory nor emulated. Without an MMIO access pending it is ignored.
    pub const ABORT_MMIO: u64 = 1;
    /// Every flag.
    pub const ALL: u64 = ABORT_MMIO;
}

/// Why [`crate::HypercallId::VcpuRun`] returned.
pub mod exit {
    /// The guest accessed an IPA outside its memory: `ipa`, `size`, `flags & MMIO_WRITE`, and
    /// for a write `data`. For a read, pass the value to the next `VCPU_RUN` in `x3`. The access
    /// completes (a write's, a read's with that value) at the next `VCPU_RUN`, or gets an
    /// external abort with [`super::run_flags::ABORT_MMIO`].
    pub const MMIO: u32 = 1;
    /// The guest executed WFI or WFE.
    pub const WFX: u32 = 2;
    /// The guest made an HVC/SMC that EL2 does not serve: `args` = its `x0..=x3`. The guest
    /// has been answered SMCCC `NOT_SUPPORTED` in `x0`.
    pub const HYPERCALL: u32 = 3;
    /// The guest called PSCI `SYSTEM_OFF`. The VM has ended: no vCPU of it runs again
    /// (`NotRunnable`); destroy it.
    pub const SYSTEM_OFF: u32 = 4;
    /// The guest called PSCI `SYSTEM_RESET`. The VM has ended as for [`SYSTEM_OFF`]; a reset
    /// is the host's to do, with a new VM.
    pub const SYSTEM_RESET: u32 = 5;
    /// A physical interrupt arrived while the guest ran; run it again when ready.
    pub const IRQ: u32 = 6;
    /// EL2 stopped the VM for good: `data` holds a [`super::kill`] reason, `ipa` the address
    /// involved if any. It never runs again; destroy it.
    pub const KILLED: u32 = 7;
    /// The vCPU is powered off (PSCI `CPU_OFF`, or never started by `CPU_ON`).
    pub const VCPU_OFF: u32 = 8;
    /// The guest wrote an SGI generation register (`ICC_SGI1R_EL1`, `ICC_ASGI1R_EL1` or
    /// `ICC_SGI0R_EL1`; the write is complete, the guest resumes after it): `args[0]` = the
    /// SGI's INTID (0..=15), `args[1]` = the target vCPUs (bit n = vCPU n; with `IRM` every
    /// vCPU but the sender; affinities that name no vCPU are dropped), `args[2]` = which
    /// register ([`super::sgi`]), `data` = the value written. The host makes the SGI pending
    /// on each target ([`crate::HypercallId::VcpuSetIrq`]). (ABI 3.1.)
    pub const SGI: u32 = 9;
    /// The guest turned on a sibling vCPU with PSCI `CPU_ON`, which EL2 has served (the call
    /// succeeded; the caller resumes after it): `args[0]` = the vCPU turned on. The host runs
    /// that vCPU, which until then exited [`VCPU_OFF`] and was waiting. (ABI 3.3.)
    pub const CPU_ON: u32 = 10;
    /// A protected guest shared the granule at `ipa` with the host (`MEM_SHARE`, see
    /// [`crate::guest`]), which EL2 has done (the call succeeded; the guest resumes after it):
    /// the host may now map its backing page, read/write. (ABI 3.4.)
    pub const MEM_SHARE: u32 = 11;
    /// A protected guest took back the granule at `ipa` it had shared (`MEM_UNSHARE`), which
    /// EL2 has done: the host's mappings of it are gone on every CPU. (ABI 3.4.)
    pub const MEM_UNSHARE: u32 = 12;
    /// The guest touched its memory, and mapping it needs `args[0]` more stage-2 table pages
    /// than the VM holds: give at least that many with
    /// [`crate::HypercallId::VmTopupTables`] and run the vCPU again, which retries the access
    /// (nothing of it happened). (ABI 6.0.)
    pub const NEED_TABLES: u32 = 13;
    /// `flags` bit of an MMIO exit: the access was a write.
    pub const MMIO_WRITE: u32 = 1;
    /// `flags` bit of any exit: the guest has deactivated level-sensitive interrupts queued
    /// with [`super::irq::EOI_NOTIFY`] that the host has not collected yet: call
    /// [`crate::HypercallId::VcpuIrqState`] to read which. (ABI 3.1.)
    pub const FLAG_EOI: u32 = 1 << 1;
    /// `flags` bit of any exit of a VM that has queued coalesced MMIO writes
    /// ([`crate::HypercallId::VmMmioCoalesce`]): the [`super::CoalescedBatch`] header is valid,
    /// and before serving the exit the host applies every write numbered below
    /// [`super::CoalescedBatch::first_seq`] (carried by earlier records, maybe on other CPUs),
    /// then this record's [`super::VcpuExit::coalesced`] writes. (ABI 6.3.)
    pub const FLAG_COALESCED: u32 = 1 << 2;

    /// A short name for an exit reason (for logs and reports).
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            MMIO => "MMIO",
            NEED_TABLES => "NEED_TABLES",
            WFX => "WFx",
            HYPERCALL => "HVC/SMC",
            SYSTEM_OFF => "SYSTEM_OFF",
            SYSTEM_RESET => "SYSTEM_RESET",
            IRQ => "IRQ",
            KILLED => "KILLED",
            VCPU_OFF => "VCPU_OFF",
            SGI => "SGI",
            CPU_ON => "CPU_ON",
            MEM_SHARE => "MEM_SHARE",
            MEM_UNSHARE => "MEM_UNSHARE",
            _ => "unknown",
        }
    }
}

/// Which register an [`exit::SGI`] came from (`args[2]`).
pub mod sgi {
    /// `ICC_SGI1R_EL1`: a Group 1 SGI.
    pub const SGI1R: u64 = 0;
    /// `ICC_ASGI1R_EL1`: a Group 1 SGI of the other Security state (for a guest: treat as
    /// Group 0, or ignore).
    pub const ASGI1R: u64 = 1;
    /// `ICC_SGI0R_EL1`: a Group 0 SGI.
    pub const SGI0R: u64 = 2;
}

/// The configuration word of [`crate::HypercallId::VcpuSetIrq`] (`x4`) and of each list
/// register in [`VgicState`]. Bits not defined here must be zero.
pub mod irq {
    /// Bits 7:0: priority (0 highest). Only the priority bits the CPU implements may be set
    /// (`ICH_VTR_EL2.PRIbits`: 5 on QEMU, so bits 2:0 must be zero).
    pub const PRIORITY_MASK: u32 = 0xFF;
    /// Bit 8: Group 1 (a virtual IRQ); clear: Group 0 (a virtual FIQ).
    pub const GROUP1: u32 = 1 << 8;
    /// Bits 10:9: the state ([`PENDING`], [`ACTIVE`], [`PENDING_ACTIVE`]; 0 = no interrupt,
    /// only seen in [`super::VgicState`] for a free list register).
    pub const STATE_SHIFT: u32 = 9;
    /// The state field.
    pub const STATE_MASK: u32 = 3 << STATE_SHIFT;
    /// Pending.
    pub const PENDING: u32 = 1;
    /// Active.
    pub const ACTIVE: u32 = 2;
    /// Pending and active.
    pub const PENDING_ACTIVE: u32 = 3;
    /// Bit 11: the interrupt is level-sensitive: tell the host when the guest deactivates it
    /// ([`super::exit::FLAG_EOI`]), so it can sample the line again.
    pub const EOI_NOTIFY: u32 = 1 << 11;
    /// Bit 12: hardware interrupt (the list register's `HW` bit) with the physical INTID in
    /// bits 28:16. Only EL2 writes one (the linked virtual timer, `VCPU_LINK_VTIMER`), and
    /// [`super::VgicState`] shows it; `VCPU_SET_IRQ` refuses it with `Denied`.
    pub const HW: u32 = 1 << 12;
    /// Bits 28:16: physical INTID (only with [`HW`]).
    pub const PINTID_SHIFT: u32 = 16;
    /// The physical INTID field.
    pub const PINTID_MASK: u32 = 0x1FFF << PINTID_SHIFT;
    /// Every defined bit.
    pub const DEFINED: u32 = PRIORITY_MASK | GROUP1 | STATE_MASK | EOI_NOTIFY | HW | PINTID_MASK;
    /// The virtual timer's PPI, virtual and physical (the generic timer's EL1 virtual timer
    /// interrupt on QEMU's `virt` and the Arm Base System Architecture's recommendation).
    pub const VTIMER_PPI: u32 = 27;
    /// The physical SGI EL2 sends to a CPU running a vCPU whose linked SGI it has just made
    /// pending (`VCPU_LINK_SGIS`), and consumes there itself. The host enables it (Group 1) on
    /// every CPU and uses it for nothing else; one that reaches the host is EL2's, ignored.
    pub const DOORBELL_SGI: u32 = 15;
    /// Largest virtual INTID the host may queue: SGIs 0..=15, PPIs 16..=31, SPIs 32..=1019.
    /// 1020..=1023 are special INTIDs and LPIs (8192 on) are not supported yet.
    pub const MAX_VINTID: u32 = 1019;

    /// `config` for an interrupt of `priority` in `state`, Group 1 if `group1`, with EOI
    /// notification if `level`.
    pub const fn config(priority: u8, group1: bool, state: u32, level: bool) -> u32 {
        priority as u32 | if group1 { GROUP1 } else { 0 } | (state & 3) << STATE_SHIFT | if level { EOI_NOTIFY } else { 0 }
    }
}

/// Most list registers a vCPU can have (`ICH_VTR_EL2.ListRegs` is at most 15).
pub const MAX_LRS: usize = 16;

/// Written by [`crate::HypercallId::VcpuIrqState`] to the message page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VgicState {
    /// List registers EL2 gives each vCPU (`ICH_VTR_EL2.ListRegs + 1`, the smallest of any CPU).
    pub nr_lrs: u32,
    /// Bit n: `lrs[n]` holds an interrupt.
    pub used: u32,
    /// Each list register: virtual INTID in bits 31:0, configuration ([`irq`]) in bits 63:32,
    /// with the state as the guest left it at its last exit. Zero when free.
    pub lrs: [u64; MAX_LRS],
    /// A bitmap of virtual INTIDs 0..=1023 (bit `v % 64` of word `v / 64`): the interrupts
    /// queued with [`irq::EOI_NOTIFY`] that the guest deactivated since the last call. This
    /// call collects them (the next one reports only new deactivations).
    pub eoi: [u64; 16],
}

/// Classes of the exceptions a vCPU takes to EL2 ([`VcpuStats::counts`] index).
pub mod stats {
    /// A physical interrupt (the host's tick, a kick, another device).
    pub const IRQ: usize = 0;
    /// `WFI`/`WFE`.
    pub const WFX: usize = 1;
    /// `HVC`/`SMC`: PSCI and SMCCC calls EL2 answers, and the rest, which go to the host.
    pub const HVC_SMC: usize = 2;
    /// System-register traps: ID registers (answered by EL2), `ICC_SGI*R_EL1` (an exit),
    /// pointer-authentication key registers (lazy load), everything else (UNDEF).
    pub const SYSREG: usize = 3;
    /// Stage-2 aborts: a first touch of RAM (mapped by EL2), MMIO (an exit), the rest.
    pub const ABORT: usize = 4;
    /// The first FP/SIMD use of a run, or SVE use for a VM with SVE (lazy load); an SVE
    /// instruction of a VM without it (an UNDEF).
    pub const FP: usize = 5;
    /// The first pointer-authentication instruction of a run (lazy load).
    pub const PAUTH: usize = 6;
    /// SErrors and every other class (UNDEF injected, or the VM stopped).
    pub const OTHER: usize = 7;
    /// Number of classes (a power of two: EL2 masks the index with `CLASSES - 1`).
    pub const CLASSES: usize = 8;
    const _: () = assert!(CLASSES.is_power_of_two());
    /// Names, in index order (for reports).
    pub const NAMES: [&str; CLASSES] = ["irq", "wfx", "hvc_smc", "sysreg", "abort", "fp", "pauth", "other"];
}

/// Written by [`crate::HypercallId::VmMeasurement`] to the message page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VmMeasurement {
    /// The VM's measurement ([`crate::measure`]), or zeros before its first run.
    pub measurement: [u8; 32],
    /// 1 once sealed (the VM has run), else 0.
    pub sealed: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<VmMeasurement>() == 40);

/// Written by [`crate::HypercallId::VcpuStats`] to the message page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuStats {
    /// Exceptions taken to EL2, by class ([`stats`]).
    pub counts: [u64; stats::CLASSES],
}

pub mod kill {
    /// A data abort outside guest memory that EL2 cannot decode (`ESR_EL2.ISV` clear).
    pub const UNDECODABLE_MMIO: u64 = 1;
    /// The guest took an exception EL2 cannot handle safely (e.g. an instruction fetch from
    /// MMIO, a stage-1 walk outside its RAM, an SError).
    pub const BAD_EXCEPTION: u64 = 2;
    /// EL2 could not map guest memory: an EL2 bug since ABI 6.0, where too few table pages is
    /// an exit ([`super::exit::NEED_TABLES`]), not a kill.
    pub const OUT_OF_MEMORY: u64 = 3;
    /// An MTE VM would have been given Normal cacheable memory without allocation-tag storage:
    /// `ipa` is the guest address, `args[0]` the physical page.
    pub const UNTAGGED_MEMORY: u64 = 4;
    /// The vCPU's `PSTATE` was not an AArch64 EL0 or EL1 mode with `IL` clear, either before an
    /// entry (which would have left the guest's exception levels) or after an exit (the guest
    /// returned to AArch32 EL0, which is hidden and not emulated): `args[0]` is that `PSTATE`.
    pub const ILLEGAL_STATE: u64 = 5;
}

/// Written by [`crate::HypercallId::VcpuRun`] to the message page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuExit {
    /// One of [`exit`].
    pub reason: u32,
    /// For MMIO: [`exit::MMIO_WRITE`].
    pub flags: u32,
    /// For MMIO and kills: the IPA involved.
    pub ipa: u64,
    /// For MMIO writes: the value written (zero-extended). For kills: the reason.
    pub data: u64,
    /// For MMIO: the access size in bytes (1, 2, 4, 8).
    pub size: u32,
    /// Any exit: how many coalesced MMIO writes of the VM ([`crate::HypercallId::VmMmioCoalesce`])
    /// this record carries, at most [`COALESCED_MAX`], in the [`CoalescedBatch`] at
    /// [`COALESCED_OFFSET`] of the message page (with [`exit::FLAG_COALESCED`]); the host
    /// applies them before it serves the exit. 0 otherwise. (ABI 6.3; reserved and zero before.)
    pub coalesced: u32,
    /// For hypercall exits: the guest's `x0..=x3`.
    pub args: [u64; 4],
    /// When the guest's virtual timer (PPI 27) asserts, in physical counter (`CNTPCT_EL0`)
    /// ticks: `CNTV_CVAL_EL0 + CNTVOFF` (saturating; with the count's wrap modelled, see
    /// docs/ABI.md), or `u64::MAX` if it cannot (CNTV_CTL ENABLE clear or IMASK set). Valid in
    /// every exit record (ABI 3.3).
    pub vtimer_deadline: u64,
    /// The same for the emulated EL1 physical timer (PPI 30): its CVAL, or `u64::MAX`.
    pub ptimer_deadline: u64,
}

/// Where in the message page an exit record's coalesced MMIO writes are
/// ([`VcpuExit::coalesced`]): after the record, 8-byte aligned.
pub const COALESCED_OFFSET: usize = 256;

/// Most coalesced MMIO writes a VM holds, and one exit record carries.
pub const COALESCED_MAX: usize = 32;

/// One coalesced MMIO write: what an [`exit::MMIO`] write would have carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CoalescedWrite {
    /// The IPA written.
    pub ipa: u64,
    /// The value written, zero-extended.
    pub value: u64,
    /// The access size in bytes (1, 2, 4, 8).
    pub size: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// The coalesced MMIO writes an exit record carries, at [`COALESCED_OFFSET`] of the message
/// page: the first [`VcpuExit::coalesced`] entries of `writes` are valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CoalescedBatch {
    /// How many of the VM's coalesced writes earlier exit records carried, counted from 0 at
    /// `VM_CREATE`: the number of `writes[0]`. The batches of one VM, from whichever CPU,
    /// follow each other without a gap; applied in this order, each before the exit that
    /// carried it is served, they give the device the writes in the order EL2 took them, and
    /// each exit after the writes its guest made before it.
    pub first_seq: u64,
    /// The writes, oldest first; the record's [`VcpuExit::coalesced`] are valid.
    pub writes: [CoalescedWrite; COALESCED_MAX],
}

/// An exit record ([`VcpuExit`]) decoded: why `VCPU_RUN` returned, with what that reason
/// carries. The record-wide fields (the [`exit::FLAG_EOI`] flag and the timer deadlines) stay
/// in the record.
///
/// `repr(u32)` (each variant a C struct that starts with the 32-bit tag, the exit's reason code
/// ([`exit`]), so that [`Exit::reason`] is a load; a 32-bit field next to it where the variant
/// has one) and 32 bytes in all, so that copying an `Exit` is four
/// aligned word moves, inlined. With Rust's own layout small fields sat next to the tag, and a
/// copy of bytes 1 to 7 became a call to the byte-wise `memcpy`; at 40 bytes every copy was a
/// call to the word-wise one (on these targets, which require aligned accesses, LLVM inlines
/// copies of up to 32 bytes).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// [`exit::MMIO`]: an access of `size` bytes (1, 2, 4 or 8) at `ipa`; `write`: the value
    /// written, or `None` for a read (its value goes to the next `VCPU_RUN`).
    Mmio { size: u32, ipa: u64, write: Option<u64> } = exit::MMIO,
    /// [`exit::WFX`].
    Wfx = exit::WFX,
    /// [`exit::HYPERCALL`]: the guest's `x0` (an SMCCC function ID: EL2 forwards only 32-bit
    /// ones) and `x1..=x3`.
    Hypercall { function: u32, args: [u64; 3] } = exit::HYPERCALL,
    /// [`exit::SYSTEM_OFF`].
    SystemOff = exit::SYSTEM_OFF,
    /// [`exit::SYSTEM_RESET`].
    SystemReset = exit::SYSTEM_RESET,
    /// [`exit::IRQ`].
    Irq = exit::IRQ,
    /// [`exit::KILLED`]: a [`kill`] reason, the IPA involved (or 0), and the reason's detail
    /// (the physical page for [`kill::UNTAGGED_MEMORY`], the `PSTATE` for
    /// [`kill::ILLEGAL_STATE`], otherwise 0).
    Killed { reason: u64, ipa: u64, detail: u64 } = exit::KILLED,
    /// [`exit::VCPU_OFF`].
    VcpuOff = exit::VCPU_OFF,
    /// [`exit::SGI`]: SGI `intid` (0..=15) to the vCPUs in `targets` (bit n = vCPU n), written
    /// to register `reg` ([`sgi`]) as `value`.
    Sgi { intid: u8, targets: u64, reg: u64, value: u64 } = exit::SGI,
    /// [`exit::CPU_ON`]: the guest turned on vCPU `vcpu`.
    CpuOn { vcpu: u64 } = exit::CPU_ON,
    /// [`exit::MEM_SHARE`]: the guest shared the granule at `ipa` with the host.
    MemShare { ipa: u64 } = exit::MEM_SHARE,
    /// [`exit::MEM_UNSHARE`]: the guest took back the granule at `ipa`.
    MemUnshare { ipa: u64 } = exit::MEM_UNSHARE,
    /// [`exit::NEED_TABLES`]: the VM needs `pages` more stage-2 table pages.
    NeedTables { pages: u64 } = exit::NEED_TABLES,
}

/// Why an exit record does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadExit {
    /// The reason is not one of [`exit`].
    Reason(u32),
    /// A flag the reason cannot have, or a reserved field not zero.
    Flags,
    /// An MMIO access size other than 1, 2, 4 or 8.
    Size(u32),
    /// An SGI INTID above 15, or a register not in [`sgi`].
    Sgi,
    /// More coalesced writes than [`COALESCED_MAX`].
    Coalesced(u32),
    /// A field the reason does not use is not zero.
    Unused,
}

impl Exit {
    /// The reason code ([`exit`]) of this exit.
    pub const fn reason(&self) -> u32 {
        match self {
            Exit::Mmio { .. } => exit::MMIO,
            Exit::Wfx => exit::WFX,
            Exit::Hypercall { .. } => exit::HYPERCALL,
            Exit::SystemOff => exit::SYSTEM_OFF,
            Exit::SystemReset => exit::SYSTEM_RESET,
            Exit::Irq => exit::IRQ,
            Exit::Killed { .. } => exit::KILLED,
            Exit::VcpuOff => exit::VCPU_OFF,
            Exit::Sgi { .. } => exit::SGI,
            Exit::CpuOn { .. } => exit::CPU_ON,
            Exit::MemShare { .. } => exit::MEM_SHARE,
            Exit::MemUnshare { .. } => exit::MEM_UNSHARE,
            Exit::NeedTables { .. } => exit::NEED_TABLES,
        }
    }

    /// The exit record for this exit: every field this reason does not use zero, no
    /// [`exit::FLAG_EOI`], and both timer deadlines `u64::MAX` (EL2 fills in those three).
    pub const fn encode(&self) -> VcpuExit {
        let mut e = VcpuExit {
            reason: self.reason(),
            flags: 0,
            ipa: 0,
            data: 0,
            size: 0,
            coalesced: 0,
            args: [0; 4],
            vtimer_deadline: u64::MAX,
            ptimer_deadline: u64::MAX,
        };
        match *self {
            Exit::Mmio { ipa, size, write } => {
                e.ipa = ipa;
                e.size = size;
                if let Some(v) = write {
                    e.flags = exit::MMIO_WRITE;
                    e.data = v;
                }
            }
            Exit::Hypercall { function, args: [a1, a2, a3] } => e.args = [function as u64, a1, a2, a3],
            Exit::Killed { reason, ipa, detail } => {
                e.data = reason;
                e.ipa = ipa;
                e.args[0] = detail;
            }
            Exit::Sgi { intid, targets, reg, value } => {
                e.args = [intid as u64, targets, reg, 0];
                e.data = value;
            }
            Exit::CpuOn { vcpu } => e.args[0] = vcpu,
            Exit::NeedTables { pages } => e.args[0] = pages,
            Exit::MemShare { ipa } | Exit::MemUnshare { ipa } => e.ipa = ipa,
            Exit::Wfx | Exit::SystemOff | Exit::SystemReset | Exit::Irq | Exit::VcpuOff => {}
        }
        e
    }

    /// Decodes exit record `e`, refusing one that [`Exit::encode`] (with any record-wide
    /// fields) could not have produced.
    ///
    /// # Errors
    /// What is wrong with the record ([`BadExit`]).
    // Inlined where the record is read (the host's `VCPU_RUN`): on every exit's path.
    #[inline(always)]
    pub fn decode(e: &VcpuExit) -> Result<Self, BadExit> {
        let write = e.flags & exit::MMIO_WRITE != 0;
        let bad_flags = e.flags & !(exit::MMIO_WRITE | exit::FLAG_EOI | exit::FLAG_COALESCED) != 0;
        if e.coalesced as usize > COALESCED_MAX || (e.coalesced != 0 && e.flags & exit::FLAG_COALESCED == 0) {
            return Err(BadExit::Coalesced(e.coalesced));
        }
        let [a0, a1, a2, a3] = e.args;
        let size = e.size as u64;
        // The fields that [`Exit::encode`] leaves zero for the reason must be zero: the record
        // is exactly an encoding. They are checked field by field, OR-ed (this is on every
        // exit's path: comparing with `x.encode()` is a byte-wise `memcmp` on bare metal), and
        // MMIO, the exit the host serves most, is decoded before the other reasons.
        if e.reason == exit::MMIO {
            if !matches!(e.size, 1 | 2 | 4 | 8) {
                return Err(BadExit::Size(e.size));
            }
            if bad_flags {
                return Err(BadExit::Flags);
            }
            if (if write { 0 } else { e.data }) | a0 | a1 | a2 | a3 != 0 {
                return Err(BadExit::Unused);
            }
            return Ok(Exit::Mmio { ipa: e.ipa, size: e.size, write: write.then_some(e.data) });
        }
        let (x, unused) = match e.reason {
            // A function ID past 32 bits is one EL2 never forwards.
            exit::HYPERCALL => (Exit::Hypercall { function: a0 as u32, args: [a1, a2, a3] }, e.ipa | e.data | size | a0 >> 32),
            exit::KILLED => (Exit::Killed { reason: e.data, ipa: e.ipa, detail: a0 }, size | a1 | a2 | a3),
            exit::SGI => {
                if a0 > 15 || a2 > sgi::SGI0R {
                    return Err(BadExit::Sgi);
                }
                (Exit::Sgi { intid: a0 as u8, targets: a1, reg: a2, value: e.data }, e.ipa | size | a3)
            }
            exit::CPU_ON => (Exit::CpuOn { vcpu: a0 }, e.ipa | e.data | size | a1 | a2 | a3),
            exit::NEED_TABLES => (Exit::NeedTables { pages: a0 }, e.ipa | e.data | size | a1 | a2 | a3),
            exit::MEM_SHARE => (Exit::MemShare { ipa: e.ipa }, e.data | size | a0 | a1 | a2 | a3),
            exit::MEM_UNSHARE => (Exit::MemUnshare { ipa: e.ipa }, e.data | size | a0 | a1 | a2 | a3),
            r => {
                let x = match r {
                    exit::WFX => Exit::Wfx,
                    exit::SYSTEM_OFF => Exit::SystemOff,
                    exit::SYSTEM_RESET => Exit::SystemReset,
                    exit::IRQ => Exit::Irq,
                    exit::VCPU_OFF => Exit::VcpuOff,
                    other => return Err(BadExit::Reason(other)),
                };
                (x, e.ipa | e.data | size | a0 | a1 | a2 | a3)
            }
        };
        // Only an MMIO exit may be a write.
        if bad_flags || write {
            return Err(BadExit::Flags);
        }
        if unused != 0 {
            return Err(BadExit::Unused);
        }
        Ok(x)
    }
}

/// Most register IDs a [`RegList`] can hold.
pub const MAX_REG_IDS: usize = 255;

/// Written by [`crate::HypercallId::VcpuRegList`] to the message page (`KVM_GET_REG_LIST`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegList {
    /// Number of valid entries in `ids`.
    pub count: u64,
    /// Register IDs ([`crate::reg`]).
    pub ids: [u64; MAX_REG_IDS],
}

const _: () = {
    assert!(size_of::<VmCreate>() == 32);
    assert!(offset_of!(VmCreate, flags) == 8);
    assert!(offset_of!(VmCreate, sve_vl) == 16);
    assert!(offset_of!(VmCreate, reserved) == 24);
    assert!(size_of::<VcpuExit>() == 80);
    assert!(size_of::<Exit>() == 32, "an Exit copy must stay inlined (see Exit)");
    assert!(offset_of!(VcpuExit, ipa) == 8);
    assert!(offset_of!(VcpuExit, data) == 16);
    assert!(offset_of!(VcpuExit, size) == 24);
    assert!(offset_of!(VcpuExit, coalesced) == 28);
    assert!(size_of::<CoalescedWrite>() == 24);
    assert!(COALESCED_OFFSET >= size_of::<VcpuExit>() && COALESCED_OFFSET % 8 == 0);
    assert!(COALESCED_OFFSET + size_of::<CoalescedBatch>() <= crate::PAGE_SIZE as usize);
    assert!(offset_of!(VcpuExit, args) == 32);
    assert!(offset_of!(VcpuExit, vtimer_deadline) == 64);
    assert!(offset_of!(VcpuExit, ptimer_deadline) == 72);
    assert!(size_of::<RegList>() == 2048);
    assert!(size_of::<VgicState>() == 264);
    assert!(size_of::<VcpuStats>() == 64);
    assert!(offset_of!(VgicState, lrs) == 8);
    assert!(offset_of!(VgicState, eoi) == 136);
    assert!(size_of::<RegList>() as u64 <= crate::PAGE_SIZE);
    assert!(size_of::<EchoRequest>() == 64);
    assert!(offset_of!(EchoRequest, nonce) == 0);
    assert!(offset_of!(EchoRequest, flags) == 8);
    assert!(offset_of!(EchoRequest, words) == 16);
    assert!(size_of::<EchoResponse>() == 64);
    assert!(offset_of!(EchoResponse, sum) == 8);
    assert!(offset_of!(EchoResponse, inverted) == 16);
    assert!(size_of::<HypInfo>() == 56);
    assert!(offset_of!(HypInfo, nr_cpus) == 4);
    assert!(offset_of!(HypInfo, ram_base) == 8);
    assert!(offset_of!(HypInfo, hyp_base) == 24);
    assert!(offset_of!(HypInfo, host_ipa_bits) == 40);
    assert!(offset_of!(HypInfo, finalised) == 44);
    assert!(offset_of!(HypInfo, sve_vls) == 48);
    // Every message fits in the page.
    assert!(size_of::<HypInfo>() as u64 <= crate::PAGE_SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_bytes_round_trip() {
        let r = EchoRequest { nonce: 0x1122_3344_5566_7788, flags: 0, words: [1, 2, 3, 4, 5, u64::MAX] };
        let bytes = r.as_bytes();
        assert_eq!(bytes.len(), 64);
        assert_eq!(&bytes[0..8], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(EchoRequest::read_from_bytes(bytes).unwrap(), r);
    }

    #[test]
    fn echo_response_bytes_round_trip() {
        let r = EchoRequest { nonce: 9, flags: 0, words: [1, 2, 3, 4, 5, u64::MAX] }.expected_response();
        assert_eq!(r.sum, 14, "wrapping sum");
        assert_eq!(r.inverted[0], !1);
        assert_eq!(EchoResponse::read_from_bytes(r.as_bytes()).unwrap(), r);
    }

    #[test]
    fn hyp_info_bytes_round_trip() {
        let i = HypInfo {
            abi_version: crate::ABI_VERSION.encode() as u32,
            nr_cpus: 2,
            ram_base: 0x4000_0000,
            ram_size: 1 << 30,
            hyp_base: 0x4020_0000,
            hyp_size: 16 << 20,
            host_ipa_bits: 40,
            finalised: 1,
            sve_vls: sve::vl_bit(16) | sve::vl_bit(32) | sve::vl_bit(256),
            reserved: 0,
        };
        let b = i.as_bytes();
        assert_eq!(&b[8..16], &0x4000_0000u64.to_ne_bytes());
        assert_eq!(&b[48..52], &0x8003u32.to_ne_bytes());
        assert_eq!(HypInfo::read_from_bytes(b).unwrap(), i);
    }

    #[test]
    fn vm_messages_round_trip() {
        let c = VmCreate { nr_vcpus: 2, ipa_bits: 36, flags: vm_flags::PROTECTED | vm_flags::SVE, sve_vl: 64, reserved: 0 };
        assert_eq!(&c.as_bytes()[8..16], &0x11u64.to_ne_bytes());
        assert_eq!(&c.as_bytes()[16..24], &64u64.to_ne_bytes());
        assert_eq!(VmCreate::read_from_bytes(c.as_bytes()).unwrap(), c);
        let e = VcpuExit { reason: exit::MMIO, flags: exit::MMIO_WRITE, ipa: 0x900_0000, data: 0x41, size: 1, coalesced: 0, args: [0; 4], vtimer_deadline: 7, ptimer_deadline: u64::MAX };
        assert_eq!(&e.as_bytes()[8..16], &0x900_0000u64.to_ne_bytes());
        assert_eq!(&e.as_bytes()[64..72], &7u64.to_ne_bytes());
        assert_eq!(&e.as_bytes()[72..80], &u64::MAX.to_ne_bytes());
        assert_eq!(VcpuExit::read_from_bytes(e.as_bytes()).unwrap(), e);
        let mut l = RegList { count: 2, ids: [0; MAX_REG_IDS] };
        l.ids[1] = crate::reg::PC;
        assert_eq!(RegList::read_from_bytes(l.as_bytes()).unwrap(), l);
        assert_eq!(&l.as_bytes()[16..24], &crate::reg::PC.to_ne_bytes());
    }

    /// One exit of each reason, with every field it carries set.
    fn every_exit() -> [Exit; 13] {
        [
            Exit::Mmio { ipa: 0x0900_0018, size: 4, write: None },
            Exit::Wfx,
            Exit::Hypercall { function: 0xC600_0000, args: [1, 2, 3] },
            Exit::SystemOff,
            Exit::SystemReset,
            Exit::Irq,
            Exit::Killed { reason: kill::UNTAGGED_MEMORY, ipa: 0x4000_3008, detail: 0x7C00_3000 },
            Exit::VcpuOff,
            Exit::Sgi { intid: 15, targets: 0b1010, reg: sgi::SGI0R, value: 0xF << 24 },
            Exit::CpuOn { vcpu: 7 },
            Exit::MemShare { ipa: 0x4010_0000 },
            Exit::MemUnshare { ipa: 0x4010_0000 },
            Exit::NeedTables { pages: 2 },
        ]
    }

    #[test]
    fn every_exit_round_trips() {
        let mut reasons = [false; 14];
        for x in every_exit().into_iter().chain([Exit::Mmio { ipa: 0x0b00_0000, size: 8, write: Some(u64::MAX) }]) {
            let e = x.encode();
            assert_eq!(e.reason, x.reason());
            assert_eq!(Exit::decode(&e), Ok(x), "{e:x?}");
            // The record-wide fields EL2 adds do not change the exit.
            let with = VcpuExit { flags: e.flags | exit::FLAG_EOI, vtimer_deadline: 5, ptimer_deadline: 6, ..e };
            assert_eq!(Exit::decode(&with), Ok(x));
            // Through the message page's bytes.
            assert_eq!(Exit::decode(&VcpuExit::read_from_bytes(with.as_bytes()).unwrap()), Ok(x));
            reasons[x.reason() as usize] = true;
        }
        assert!(reasons[1..].iter().all(|r| *r), "a reason without a variant: {reasons:?}");
        for reason in 1..=13 {
            assert_ne!(exit::name(reason), "unknown");
        }
    }

    #[test]
    fn malformed_exits_are_refused() {
        let mmio = Exit::Mmio { ipa: 0x0900_0000, size: 1, write: Some(0x41) }.encode();
        assert_eq!(Exit::decode(&VcpuExit { reason: 0, ..mmio }), Err(BadExit::Reason(0)));
        assert_eq!(Exit::decode(&VcpuExit { reason: 14, ..mmio }), Err(BadExit::Reason(14)));
        // A forwarded call's function ID is 32 bits: EL2 never sends another.
        let call = Exit::Hypercall { function: 0xC700_0001, args: [1, 2, 3] }.encode();
        assert_eq!(Exit::decode(&VcpuExit { args: [1 << 32 | 0xC700_0001, 1, 2, 3], ..call }), Err(BadExit::Unused));
        assert_eq!(Exit::decode(&VcpuExit { args: [1 << 32, 1, 2, 3], flags: 1 << 3, ..call }), Err(BadExit::Flags));
        assert_eq!(Exit::decode(&VcpuExit::default()), Err(BadExit::Reason(0)));
        for size in [0, 3, 16] {
            assert_eq!(Exit::decode(&VcpuExit { size, ..mmio }), Err(BadExit::Size(size)));
        }
        assert_eq!(Exit::decode(&VcpuExit { flags: 1 << 3, ..mmio }), Err(BadExit::Flags));
        // Coalesced writes ride on any exit, up to the most one record carries.
        let max = COALESCED_MAX as u32;
        let with = |e: VcpuExit, n: u32| VcpuExit { coalesced: n, flags: e.flags | exit::FLAG_COALESCED, ..e };
        assert_eq!(Exit::decode(&with(mmio, max)), Exit::decode(&mmio));
        assert_eq!(Exit::decode(&with(Exit::Wfx.encode(), 0)), Ok(Exit::Wfx));
        assert_eq!(Exit::decode(&with(Exit::Wfx.encode(), 1)), Ok(Exit::Wfx));
        assert_eq!(Exit::decode(&with(mmio, max + 1)), Err(BadExit::Coalesced(max + 1)));
        assert_eq!(Exit::decode(&VcpuExit { coalesced: 1, ..mmio }), Err(BadExit::Coalesced(1)), "writes without the flag");
        // A write flag on anything but MMIO.
        assert_eq!(Exit::decode(&VcpuExit { flags: exit::MMIO_WRITE, ..Exit::Wfx.encode() }), Err(BadExit::Flags));
        // A read carries no data; an MMIO exit no arguments.
        let read = Exit::Mmio { ipa: 0x0900_0000, size: 4, write: None }.encode();
        assert_eq!(Exit::decode(&VcpuExit { data: 1, ..read }), Err(BadExit::Unused));
        assert_eq!(Exit::decode(&VcpuExit { args: [0, 0, 0, 1], ..mmio }), Err(BadExit::Unused));
        let sgi = Exit::Sgi { intid: 1, targets: 1, reg: sgi::SGI1R, value: 0 }.encode();
        assert_eq!(Exit::decode(&VcpuExit { args: [16, 1, 0, 0], ..sgi }), Err(BadExit::Sgi));
        assert_eq!(Exit::decode(&VcpuExit { args: [1, 1, 3, 0], ..sgi }), Err(BadExit::Sgi));
        assert_eq!(Exit::decode(&VcpuExit { args: [1, 1, 0, 9], ..sgi }), Err(BadExit::Unused));
        // Every field a reason does not use must be zero.
        for x in every_exit() {
            let e = x.encode();
            let stray = [
                VcpuExit { ipa: e.ipa ^ 0x1000, ..e },
                VcpuExit { data: e.data ^ 1, ..e },
                VcpuExit { size: e.size ^ 8, ..e },
                VcpuExit { args: [e.args[0], e.args[1], e.args[2], e.args[3] ^ 1], ..e },
            ];
            let uses = match x {
                Exit::Mmio { .. } => [true, false, true, false],
                Exit::Hypercall { .. } => [false, false, false, true],
                Exit::Killed { .. } => [true, true, false, false],
                Exit::Sgi { .. } => [false, true, false, false],
                Exit::MemShare { .. } | Exit::MemUnshare { .. } => [true, false, false, false],
                _ => [false; 4],
            };
            for (r, used) in stray.iter().zip(uses) {
                let d = Exit::decode(r);
                if used {
                    assert!(d.is_ok_and(|y| y != x) || d.is_err(), "{x:?}: {r:x?} -> {d:?}");
                } else {
                    assert!(d.is_err(), "{x:?}: a stray field was accepted: {r:x?} -> {d:?}");
                }
            }
        }
    }

    #[test]
    fn decode_accepts_exactly_the_encodings() {
        // `decode` checks the unused fields one by one. The definition it must agree with: the
        // record is `encode` of what its reason decodes to, plus the record-wide fields.
        fn by_definition(e: &VcpuExit) -> Result<Exit, BadExit> {
            // The reason's variant, from the record with every field but the reason and the flags
            // cleared (and an MMIO size that decodes).
            let size = if e.reason == exit::MMIO { 8 } else { 0 };
            let x = match Exit::decode(&VcpuExit { ipa: 0, data: 0, size, args: [0; 4], ..*e }) {
                Ok(Exit::Mmio { .. }) if !matches!(e.size, 1 | 2 | 4 | 8) => return Err(BadExit::Size(e.size)),
                Ok(Exit::Mmio { .. }) => Exit::Mmio { ipa: e.ipa, size: e.size, write: (e.flags & exit::MMIO_WRITE != 0).then_some(e.data) },
                // (A function ID past 32 bits is not `encode`'s: the comparison below refuses it.)
                Ok(Exit::Hypercall { .. }) => Exit::Hypercall { function: e.args[0] as u32, args: [e.args[1], e.args[2], e.args[3]] },
                Ok(Exit::Killed { .. }) => Exit::Killed { reason: e.data, ipa: e.ipa, detail: e.args[0] },
                Ok(Exit::Sgi { .. }) if e.args[0] > 15 || e.args[2] > sgi::SGI0R => return Err(BadExit::Sgi),
                Ok(Exit::Sgi { .. }) => Exit::Sgi { intid: e.args[0] as u8, targets: e.args[1], reg: e.args[2], value: e.data },
                Ok(Exit::CpuOn { .. }) => Exit::CpuOn { vcpu: e.args[0] },
                Ok(Exit::NeedTables { .. }) => Exit::NeedTables { pages: e.args[0] },
                Ok(Exit::MemShare { .. }) => Exit::MemShare { ipa: e.ipa },
                Ok(Exit::MemUnshare { .. }) => Exit::MemUnshare { ipa: e.ipa },
                Ok(x) => x,
                Err(err) => return Err(err),
            };
            let mut f = x.encode();
            f.flags |= e.flags & exit::FLAG_EOI;
            (f.vtimer_deadline, f.ptimer_deadline) = (e.vtimer_deadline, e.ptimer_deadline);
            if f == *e { Ok(x) } else { Err(BadExit::Unused) }
        }
        let write = Exit::Mmio { ipa: 0x0b00_0000, size: 8, write: Some(3) };
        let sgi_args = [0, 1, 15, 16, 2, 3];
        for x in every_exit().into_iter().chain([write]) {
            let e = VcpuExit { flags: x.encode().flags | exit::FLAG_EOI, vtimer_deadline: 5, ptimer_deadline: 6, ..x.encode() };
            let mut records = [e; 15];
            records[0].ipa ^= 0x2000;
            records[1].data ^= 2;
            records[2].size ^= 8;
            records[3].size = 2;
            for i in 0..4 {
                records[4 + i].args[i] ^= 1;
            }
            for i in 0..6 {
                records[8 + i].args[i % 3] = sgi_args[i];
            }
            records[14].data = 0;
            for r in records {
                assert_eq!(Exit::decode(&r), by_definition(&r), "{x:?}: {r:x?}");
            }
        }
    }

    #[test]
    fn sve_lengths_are_multiples_of_128_bits_up_to_2048() {
        for vl in [16, 32, 48, 64, 128, 240, 256] {
            assert!(sve::valid_vl(vl), "{vl}");
        }
        for vl in [0, 8, 24, 264, 272, 512, u64::MAX] {
            assert!(!sve::valid_vl(vl), "{vl}");
        }
        assert_eq!((sve::vl_bit(16), sve::vl_bit(64), sve::vl_bit(256)), (1, 1 << 3, 1 << 15));
        assert_eq!(vm_flags::ALL & vm_flags::SVE, vm_flags::SVE);
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(EchoRequest::read_from_bytes(&[0u8; 63]).is_err());
        assert!(HypInfo::read_from_prefix(&[0u8; 55]).is_err());
    }
}
