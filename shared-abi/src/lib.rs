//! The hypercall ABI between the untrusted EL1 host and the EL2 hypervisor.
//!
//! Place in the flow: this crate is the *first* step of every call. The host encodes a call with
//! the types here; EL2 decodes the same registers with the same types, validates, and answers with
//! an [`HypError`] or success. Both sides compile against this one crate, so an ID, a value or a
//! layout cannot drift between them. It contains no `unsafe` and no I/O.
//!
//! # Calling convention (SMCCC 1.4, SMC64 fast calls)
//! - The host issues `HVC #0` with the function ID in `w0` (see [`HypercallId`]); the IDs are SMC64
//!   fast calls in the *vendor-specific hypervisor service* range, `0xC600_0000 + n`.
//! - Arguments are in `x1..=x7`. An argument register a call does not use **must be zero**;
//!   anything else is refused with [`HypError::InvalidArgument`], so future versions can give the
//!   registers meaning without changing what old hosts get.
//! - Results: `x0` is `0` on success or a negative [`HypError`] value; `x1..=x3` carry return
//!   values where a call documents them, and are zero otherwise.
//! - Messages larger than registers travel in the calling CPU's *message page*, a host page shared
//!   with EL2 during set-up (see [`HypercallId::SetMessagePage`]). EL2 copies a request out of the
//!   page before it looks at it, so a host that rewrites the page concurrently gains nothing.
//!
//! The ABI reference with every call and error is `docs/ABI.md`.
#![cfg_attr(not(test), no_std)]

pub mod bench;
pub mod guest;
pub mod layout;
pub mod measure;
pub mod msg;
pub mod reg;

/// ABI version implemented by this crate: major in bits [31:16], minor in bits [15:0].
///
/// The major number changes when an existing call changes meaning; the minor number when calls
/// are added.
pub const ABI_VERSION: AbiVersion = AbiVersion { major: 6, minor: 3 };

/// Size of the granule every address argument is counted in.
pub const PAGE_SIZE: u64 = 4096;

/// First function ID of the SMC64 fast-call vendor-specific hypervisor service range.
pub const VENDOR_HYP_BASE: u32 = 0xC600_0000;

/// An ABI version as returned by [`HypercallId::Version`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl AbiVersion {
    /// Encodes the version as the `x1` result of [`HypercallId::Version`].
    pub const fn encode(self) -> u64 {
        ((self.major as u64) << 16) | self.minor as u64
    }

    /// Decodes a version from the `x1` result of [`HypercallId::Version`].
    pub const fn decode(raw: u64) -> Option<Self> {
        if raw >> 32 != 0 {
            return None;
        }
        Some(Self { major: (raw >> 16) as u16, minor: raw as u16 })
    }
}

/// Pointer-authentication keys are switched on every vCPU load and put.
pub const PTRAUTH_EAGER: u64 = 0;
/// Pointer-authentication keys stay trapped until a vCPU uses them, then are switched eagerly
/// for that vCPU until it goes a number of runs without using them.
pub const PTRAUTH_LAZY: u64 = 1;

/// When in the hypervisor's life a call may be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Only before [`HypercallId::FinaliseSetup`]; refused with [`HypError::SetupFinalised`] after.
    SetupOnly,
    /// At any time.
    Any,
}

macro_rules! hypercalls {
    ($( $(#[$doc:meta])* $name:ident = $n:literal, $phase:ident, in $args:literal, out $results:literal; )*) => {
        /// Every hypercall the host may make. The discriminant is the SMCCC function ID.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum HypercallId {
            $( $(#[$doc])* $name = VENDOR_HYP_BASE + $n, )*
        }

        impl HypercallId {
            /// Every call, in ID order.
            pub const ALL: &'static [HypercallId] = &[$(HypercallId::$name,)*];

            /// When the call may be made.
            pub const fn phase(self) -> Phase {
                match self { $(HypercallId::$name => Phase::$phase,)* }
            }

            /// How many argument registers (`x1..`) the call uses; the rest must be zero.
            pub const fn nr_args(self) -> usize {
                match self { $(HypercallId::$name => $args,)* }
            }

            /// How many result registers (`x1..=x3`) the call returns values in; the rest are
            /// zero.
            pub const fn nr_results(self) -> usize {
                match self { $(HypercallId::$name => $results,)* }
            }
        }

        impl TryFrom<u64> for HypercallId {
            type Error = HypError;

            /// Decodes `x0` of a host HVC. Only the low 32 bits are the function ID (SMCCC);
            /// non-zero upper bits are refused as [`HypError::NotSupported`], like unknown IDs.
            #[inline(always)]
            fn try_from(x0: u64) -> Result<Self, HypError> {
                // One match on the offset into the range (a jump table), not a chain of compares.
                match x0.wrapping_sub(VENDOR_HYP_BASE as u64) {
                    $( $n => Ok(HypercallId::$name), )*
                    _ => Err(HypError::NotSupported),
                }
            }
        }
    };
}

// One row per call: `Name = offset into the range, phase, in <argument registers>, out <result
// registers>;`. Everything EL2 decodes and the host encodes about a call's shape comes from here.
hypercalls! {
    /// Returns the ABI version in `x1` ([`AbiVersion::encode`]). No arguments.
    Version = 0, Any, in 0, out 1;
    /// The null call: returns `x1` unchanged in `x1`. Used to measure the bare round trip.
    Ping = 1, Any, in 1, out 1;
    /// `x1` = CPU index (`0..nr_cpus`), `x2` = physical address of a host page. Shares the page
    /// with EL2 (host: shared-owned, EL2: shared-borrowed) and makes it that CPU's message page.
    /// Each CPU's page may be set once; the page must be RAM the host owns and not already shared.
    SetMessagePage = 2, SetupOnly, in 2, out 0;
    /// Ends set-up: from now on, [`Phase::SetupOnly`] calls are refused. No arguments.
    FinaliseSetup = 3, SetupOnly, in 0, out 0;
    /// Writes a [`msg::HypInfo`] at offset 0 of the calling CPU's message page. No arguments.
    HypInfo = 4, Any, in 0, out 0;
    /// Reads a [`msg::EchoRequest`] at offset 0 of the calling CPU's message page and writes a
    /// [`msg::EchoResponse`] at offset 0. A round trip of the message path.
    Echo = 5, Any, in 0, out 0;
    /// Reads a [`msg::VmCreate`] from the message page and creates a VM. `x1` = its handle.
    VmCreate = 6, Any, in 0, out 1;
    /// `x1` = VM handle. Tears the VM down, scrubs every page it owned and gives all its memory
    /// back to the host. [`HypError::Busy`] while one of its vCPUs runs.
    VmDestroy = 7, Any, in 1, out 0;
    /// `x1` = VM handle, `x2` = host physical address, `x3` = guest IPA, `x4` = number of pages,
    /// `x5` = [`measure::add_flags`]. Gives the pages to the VM at that IPA: *donated* to a
    /// protected VM (the host loses access), *shared* with a non-protected one (the host keeps
    /// it). Mapped in the guest's stage 2 when the guest first touches it (a 2 MiB block at a
    /// time where the pages are contiguous and 2 MiB-aligned, 5.0). Before the
    /// VM's first run each call adds to its measurement ([`measure`]): with `MEASURE` the
    /// pages' contents, without it (a protected VM) pages EL2 zeroes first; `HANDOVER` names
    /// the region EL2 writes the measurement handover into at the first run. (`x5`: ABI 4.0.)
    VmAddMemory = 8, Any, in 5, out 0;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = register ID ([`reg`]), `x4` = value (bits
    /// 63:0), `x5` = bits 127:64 for 128-bit registers (zero otherwise).
    VcpuSetReg = 9, Any, in 5, out 0;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = register ID. `x1` = the value (bits 63:0),
    /// `x2` = bits 127:64 of a 128-bit register.
    VcpuGetReg = 10, Any, in 3, out 2;
    /// `x1` = VM handle, `x2` = vCPU index. Writes a [`msg::RegList`] to the message page.
    VcpuRegList = 11, Any, in 2, out 1;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = value for a pending MMIO read (ignored
    /// otherwise), `x4` = [`msg::run_flags`] (ABI 4.1: [`msg::run_flags::ABORT_MMIO`] answers
    /// the pending MMIO access, read or write, with a synchronous external abort). Runs the
    /// vCPU until it needs the host; writes a [`msg::VcpuExit`] to the message page and returns
    /// its reason in `x1`.
    VcpuRun = 12, Any, in 4, out 1;
    /// `x1` = pointer-authentication policy ([`PTRAUTH_EAGER`] or [`PTRAUTH_LAZY`]), `x2` =
    /// for lazy: runs a vCPU keeps its keys loaded after its last trapped use before the trap is
    /// re-armed (1..=1,000,000). Set-up only; applies to every VM.
    SetPtrauthPolicy = 13, SetupOnly, in 2, out 0;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = virtual INTID, `x4` = configuration
    /// ([`msg::irq`]: priority, group, state, EOI notification). Puts the interrupt into a free
    /// list register of the vCPU (its virtual GICv3 CPU interface), after EL2 has checked
    /// every field. [`HypError::NoCapacity`] when every list register is in use: the host
    /// keeps the interrupt pending in its own model and tries again after a run. `x1` = the
    /// list register used. (ABI 3.1.)
    VcpuSetIrq = 14, Any, in 4, out 1;
    /// `x1` = VM handle, `x2` = vCPU index. Writes a [`msg::VgicState`] to the message page:
    /// the vCPU's list registers, and the level-sensitive interrupts the guest deactivated
    /// since the last call (which this call collects). Allowed for protected VMs after their
    /// first run: it reveals only interrupt configuration and state. (ABI 3.1.)
    VcpuIrqState = 15, Any, in 2, out 1;
    /// `x1` = VM handle, `x2` = vCPU index. Writes a [`msg::VcpuStats`] to the message page:
    /// every exception the vCPU took to EL2 since it was created, counted by class
    /// ([`msg::stats`]), whether EL2 handled it or the host did. Counts only, never register
    /// contents: allowed for protected VMs at any time. (ABI 3.2.)
    VcpuStats = 16, Any, in 2, out 1;
    /// `x1` = VM handle. Writes a [`msg::VmMeasurement`] to the message page: the VM's
    /// measurement once sealed (at its first `VCPU_RUN`), zeros before. `x1` = 1 if sealed,
    /// else 0. (ABI 4.0.)
    VmMeasurement = 17, Any, in 1, out 1;
    /// `x1` = VM handle, `x2` = a granule's IPA. Before a protected VM's first run only: declares
    /// the granule as MMIO the host emulates and turns the VM's MMIO guard on, as if the guest had
    /// called `MMIO_GUARD` ([`guest::MMIO_GUARD`]): from its first instruction, a guest access
    /// outside its RAM to any other granule is an external abort injected into the guest. For a
    /// VMM that wants the guard for guests that never call it (the UART pre-declared). Recorded
    /// in the measurement. (ABI 4.0.)
    VmMmioGuard = 18, Any, in 2, out 0;
    /// `x1` = VM handle, `x2` = first SMCCC function ID, `x3` = how many consecutive IDs. Before
    /// the VM's first run only: a guest's HVC or SMC with a function ID in that range that EL2
    /// does not serve itself exits to the host (`HYPERCALL`), which answers it in the next
    /// `VCPU_RUN`'s `x3` (the guest's `x0`). Every other call EL2 does not serve, EL2 answers
    /// `NOT_SUPPORTED` without an exit. At most [`SMCCC_FORWARD_RANGES`] ranges, none
    /// overlapping another or the ranges EL2 serves ([`SMCCC_EL2_RANGES`]); KVM's
    /// `KVM_ARM_VM_SMCCC_FILTER` with `FWD_TO_USER`. Recorded in the measurement. (ABI 5.0:
    /// before it, every call EL2 did not serve exited to the host.)
    VmSmcccForward = 19, Any, in 3, out 0;
    /// `x1` = VM handle, `x2` = host physical address, `x3` = number of pages. Donates the
    /// pages to EL2 as table pages for the VM's stage 2 (pKVM's memcache): the host loses
    /// access, EL2 zeroes them, takes the VM's tables below the root from them, and gives them
    /// back, zeroed, at `VM_DESTROY`. A `VCPU_RUN` whose guest needs more exits
    /// [`msg::exit::NEED_TABLES`]. At most [`MAX_TABLE_RUNS`] runs per VM (a run that
    /// starts where the last ended joins it). Allowed at any time, for any VM. (ABI 6.0.)
    VmTopupTables = 20, Any, in 3, out 0;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = 1 to link, 0 to unlink, `x4` = when linking,
    /// the interrupt's priority and group ([`msg::irq::PRIORITY_MASK`], [`msg::irq::GROUP1`];
    /// nothing else, 0 when unlinking). Links the vCPU's virtual timer to its interrupt,
    /// vINTID 27 ([`msg::irq::VTIMER_PPI`]), as KVM's hardware-mapped timer: while the vCPU
    /// runs and its virtual timer fires, EL2 itself puts vINTID 27 in a free list register as a
    /// hardware interrupt of the CPU's physical PPI 27 and resumes the guest, without an exit;
    /// the guest's deactivation deactivates the physical PPI, again without an exit. While
    /// linked, `VCPU_SET_IRQ` refuses vINTID 27 ([`HypError::Denied`]). The host links while
    /// the guest has the interrupt enabled in its distributor model, and keeps the physical
    /// PPI 27 enabled during the vCPU's runs. [`HypError::Denied`] without a virtual CPU
    /// interface or when a CPU lacks its redistributor; [`HypError::Busy`] while the host's own
    /// vINTID 27 is in a list register. (ABI 6.1.)
    VcpuLinkVtimer = 21, Any, in 4, out 0;
    /// `x1` = VM handle, `x2` = vCPU index, `x3` = 1 to link, 0 to unlink, `x4` = when linking,
    /// SGIs enabled (bits 15:0, bit n = SGI n) and in Group 1 (bits 31:16), `x5` = priorities of
    /// SGIs 0..=7 (byte n = SGI n), `x6` = of SGIs 8..=15 (implemented priority bits only);
    /// all 0 when unlinking. Links the vCPU's SGIs: a sibling's SGI to it while it runs is made
    /// pending by EL2, which rings the doorbell ([`msg::irq::DOORBELL_SGI`]) of the CPU that
    /// runs it and queues the SGI in a free list register there, without an exit on either
    /// side; an SGI to it while it does not run is left to the host, as for an unlinked vCPU
    /// (the `SGI` exit's targets). EL2 keeps an SGI that is disabled, or finds no free list
    /// register, pending until it can queue it. `x1` = when unlinking, the SGIs EL2 still held
    /// pending for the vCPU (bit n = SGI n): the host's to deliver from now on. The host links
    /// with the vCPU's redistributor configuration as the guest set it, and again whenever the
    /// guest changes it. [`HypError::Denied`] without a virtual CPU interface or when a CPU
    /// lacks its redistributor. (ABI 6.2.)
    VcpuLinkSgis = 22, Any, in 6, out 1;
    /// `x1` = VM handle, `x2` = first IPA, `x3` = length in bytes (at most [`PAGE_SIZE`]; 0
    /// removes the zone). Before the VM's first run only: the VM's *coalesced MMIO zone*, as
    /// KVM's `KVM_REGISTER_COALESCED_MMIO`. A guest write that would exit to the host as MMIO
    /// and lies wholly inside the zone completes at once, without an exit: EL2 appends it to
    /// the VM's queue of coalesced writes ([`msg::COALESCED_MAX`]; when that is full, the write
    /// exits as usual), and the next exit record of any of the VM's vCPUs carries the queue
    /// ([`msg::VcpuExit::coalesced`], [`msg::CoalescedBatch`]), numbered in the order EL2
    /// took the writes. The host applies them, in that order, before it serves the exit. Reads
    /// in the zone exit as usual. For device registers whose writes need no answer (a UART's
    /// data register): a write there can no longer be answered with an external abort. Not
    /// recorded in the measurement: what reaches the host is what an MMIO exit would carry,
    /// and the host could complete any write without looking at it. One zone per VM; a second
    /// call replaces the first. (ABI 6.3.)
    VmMmioCoalesce = 23, Any, in 3, out 0;
    /// **Test builds only** (EL2 built with the `test-hooks` feature; a release EL2 answers
    /// [`HypError::NotSupported`]). `x1` = 0: EL2 takes an unexpected exception on the calling
    /// CPU, to prove that EL2 reports it and stops only that CPU. The call does not return.
    TestFault = 0xFF00, Any, in 1, out 0;
    /// **Test builds only** (a release EL2 answers [`HypError::NotSupported`]). Runs EL2's
    /// invariant checker: `x1` = RAM pages checked and `x2 = x3 = 0` if every invariant holds;
    /// otherwise `x1 = u64::MAX`, `x2` = violation code, `x3` = the address involved.
    TestCheckInvariants = 0xFF01, Any, in 0, out 3;
}


macro_rules! errors {
    ($( $(#[$doc:meta])* $name:ident = $v:literal, )*) => {
        /// Every way a hypercall can fail. Values are fixed: they are the ABI.
        #[repr(i64)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum HypError {
            $( $(#[$doc])* $name = $v, )*
        }

        impl HypError {
            /// Every error, in value order (most negative last).
            pub const ALL: &'static [HypError] = &[$(HypError::$name,)*];

            /// Decodes `x0` of a result. `None` for success (0) and for values the ABI does
            /// not define.
            pub const fn from_x0(x0: u64) -> Option<Self> {
                match x0 as i64 {
                    $( $v => Some(HypError::$name), )*
                    _ => None,
                }
            }

            /// A short stable name, for logs and test output.
            pub const fn name(self) -> &'static str {
                match self { $(HypError::$name => stringify!($name),)* }
            }
        }
    };
}

errors! {
    /// The function ID is not a call this hypervisor implements (SMCCC `NOT_SUPPORTED`).
    NotSupported = -1,
    /// An argument is outside its documented domain, or an unused argument register is not zero.
    InvalidArgument = -2,
    /// An address or size is not a multiple of [`PAGE_SIZE`].
    NotAligned = -3,
    /// An address range overflows, or lies (partly) outside the memory the call may name.
    OutOfRange = -4,
    /// A page is not in the ownership state the call requires (e.g. the host does not own it,
    /// it is already shared, or it belongs to EL2).
    NotOwned = -5,
    /// A set-up-only call was made after [`HypercallId::FinaliseSetup`].
    SetupFinalised = -6,
    /// A message call was made on a CPU that has no message page.
    NoMessagePage = -7,
    /// A message in the message page failed validation (reserved field set, bad length).
    BadMessage = -8,
    /// EL2 ran out of internal memory for this operation. Nothing was changed.
    NoMemory = -9,
    /// The object is in use right now (a vCPU is running or being accessed on another CPU, the
    /// VM has a running vCPU, the interrupt is still in one of the vCPU's list registers): the
    /// same call may succeed later.
    Busy = -10,
    /// The VM handle does not name a live VM (never created, or destroyed).
    InvalidHandle = -11,
    /// A fixed capacity is exhausted (VMs, vCPUs, memory regions per VM, a vCPU's list
    /// registers).
    NoCapacity = -12,
    /// The register ID is not one this vCPU has.
    UnknownRegister = -13,
    /// The operation is refused for this VM: a protected VM's registers or new memory for it
    /// after its first run, a feature flag this hypervisor cannot give, or a hardware (`HW`)
    /// virtual interrupt.
    Denied = -14,
    /// The vCPU cannot run: its VM was stopped by EL2 or ended itself (PSCI `SYSTEM_OFF` or
    /// `SYSTEM_RESET`).
    NotRunnable = -15,
    /// The value can no longer change: a CPU's message page once set, a VM's ID or firmware
    /// registers after its first run. Permanent (unlike [`HypError::Busy`]).
    Frozen = -16,
}

/// Most ranges of SMCCC function IDs a VM forwards to the host ([`HypercallId::VmSmcccForward`]).
pub const SMCCC_FORWARD_RANGES: usize = 8;

/// Most runs of table pages a VM holds ([`HypercallId::VmTopupTables`]; ABI 6.0).
pub const MAX_TABLE_RUNS: usize = 16;

/// The SMCCC function IDs EL2 keeps for itself (first, last), as fast SMC32 and SMC64 calls:
/// the Arm Architecture calls (owner 0, as KVM keeps them from its filter), PSCI (functions
/// 0x00..=0x1F of owner 4: the other standard services, TRNG for one, a VMM may serve) and every
/// vendor hypervisor call (owner 6, the pKVM guest services: EL2 decodes the whole owner). A
/// forwarded range may not overlap them ([`HypercallId::VmSmcccForward`]).
pub const SMCCC_EL2_RANGES: [(u32, u32); 6] = [
    (0x8000_0000, 0x80FF_FFFF),
    (0xC000_0000, 0xC0FF_FFFF),
    (0x8400_0000, 0x8400_001F),
    (0xC400_0000, 0xC400_001F),
    (0x8600_0000, 0x86FF_FFFF),
    (0xC600_0000, 0xC6FF_FFFF),
];

/// Linux errno values used by [`HypError::errno`].
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const ENOMEM: i32 = 12;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EAGAIN: i32 = 11;
    pub const EOPNOTSUPP: i32 = 95;
}

impl HypError {
    /// The errno a KVM-style front end (an `ioctl` shim over this ABI) should return, as KVM
    /// and pKVM do for the same situation (docs/ABI.md, "Errors for KVM users").
    pub const fn errno(self) -> i32 {
        use errno::*;
        match self {
            HypError::NotSupported => EOPNOTSUPP,
            HypError::InvalidArgument | HypError::NotAligned | HypError::OutOfRange | HypError::BadMessage => EINVAL,
            HypError::NotOwned | HypError::SetupFinalised | HypError::Denied => EPERM,
            HypError::NoMessagePage => EFAULT,
            HypError::NoMemory => ENOMEM,
            HypError::Busy => EAGAIN,
            HypError::InvalidHandle => EBADF,
            HypError::NoCapacity => ENOSPC,
            HypError::UnknownRegister => ENOENT,
            HypError::NotRunnable => EIO,
            HypError::Frozen => EBUSY,
        }
    }

    /// The value placed in `x0`.
    pub const fn to_x0(self) -> u64 {
        self as i64 as u64
    }
}

/// A decoded hypercall result as the host sees it: `x1..=x3` on success.
pub type HypResult = Result<[u64; 3], HypError>;

/// Decodes the four result registers of a hypercall.
///
/// An `x0` that is neither 0 nor a defined error is reported as [`HypError::NotSupported`], the
/// conservative reading for a host talking to an unknown hypervisor.
pub fn decode_result(regs: [u64; 4]) -> HypResult {
    if regs[0] == 0 {
        Ok([regs[1], regs[2], regs[3]])
    } else {
        Err(HypError::from_x0(regs[0]).unwrap_or(HypError::NotSupported))
    }
}

/// Encodes a result into `x0..=x3`.
pub fn encode_result(r: HypResult) -> [u64; 4] {
    match r {
        Ok([a, b, c]) => [0, a, b, c],
        Err(e) => [e.to_x0(), 0, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_fits_the_registers() {
        for &id in HypercallId::ALL {
            assert!(id.nr_args() <= 7 && id.nr_results() <= 3, "{id:?}");
        }
    }

    #[test]
    fn every_id_decodes_to_itself() {
        for &id in HypercallId::ALL {
            assert_eq!(HypercallId::try_from(id as u64), Ok(id));
            assert_eq!(id as u32 & 0xFFFF_0000, 0xC600_0000, "{id:?} outside vendor hyp range");
        }
    }

    #[test]
    fn ids_are_smc64_fast_calls_in_vendor_hyp_range() {
        for &id in HypercallId::ALL {
            let v = id as u32;
            assert_eq!(v >> 31, 1, "fast call bit");
            assert_eq!((v >> 30) & 1, 1, "SMC64 bit");
            assert_eq!((v >> 24) & 0x3F, 6, "owning entity: vendor-specific hypervisor");
        }
    }

    #[test]
    fn unknown_and_wide_ids_are_not_supported() {
        assert_eq!(HypercallId::try_from(0xC600_FFFF), Err(HypError::NotSupported));
        assert_eq!(HypercallId::try_from(0), Err(HypError::NotSupported));
        assert_eq!(HypercallId::try_from(u64::MAX), Err(HypError::NotSupported));
        // Upper bits set on a valid ID are not the same call.
        assert_eq!(HypercallId::try_from(1 << 32 | HypercallId::Version as u64), Err(HypError::NotSupported));
    }

    #[test]
    fn errors_round_trip_through_x0() {
        for &e in HypError::ALL {
            assert!((e as i64) < 0);
            assert_eq!(HypError::from_x0(e.to_x0()), Some(e));
            assert_eq!(decode_result(encode_result(Err(e))), Err(e));
        }
        assert_eq!(HypError::NotSupported.to_x0(), u64::MAX, "SMCCC NOT_SUPPORTED is -1");
        assert_eq!(HypError::from_x0(0), None);
        assert_eq!(HypError::from_x0(-1000i64 as u64), None);
    }

    #[test]
    fn error_values_are_distinct() {
        for (i, a) in HypError::ALL.iter().enumerate() {
            for b in &HypError::ALL[i + 1..] {
                assert_ne!(*a as i64, *b as i64);
            }
        }
    }

    #[test]
    fn errors_map_to_kvm_errnos() {
        assert_eq!(HypError::UnknownRegister.errno(), errno::ENOENT, "KVM_{{GET,SET}}_ONE_REG of an unknown ID");
        assert_eq!(HypError::Frozen.errno(), errno::EBUSY, "KVM: an ID register written after the first run");
        assert_eq!(HypError::Busy.errno(), errno::EAGAIN, "transient");
        assert_eq!(HypError::InvalidArgument.errno(), errno::EINVAL);
        assert_eq!(HypError::Denied.errno(), errno::EPERM, "pKVM: a protected VM's state");
        assert!(HypError::ALL.iter().all(|e| e.errno() > 0));
    }

    #[test]
    fn success_round_trips() {
        assert_eq!(decode_result(encode_result(Ok([1, 2, 3]))), Ok([1, 2, 3]));
        assert_eq!(decode_result([-77i64 as u64, 0, 0, 0]), Err(HypError::NotSupported));
    }

    #[test]
    fn version_encoding_both_ways() {
        let v = AbiVersion { major: 3, minor: 0xABCD };
        assert_eq!(v.encode(), 0x3_ABCD);
        assert_eq!(AbiVersion::decode(v.encode()), Some(v));
        assert_eq!(AbiVersion::decode(1 << 32), None);
        assert_eq!(AbiVersion::decode(ABI_VERSION.encode()), Some(ABI_VERSION));
    }

    #[test]
    fn setup_only_calls() {
        assert_eq!(HypercallId::SetMessagePage.phase(), Phase::SetupOnly);
        assert_eq!(HypercallId::FinaliseSetup.phase(), Phase::SetupOnly);
        assert_eq!(HypercallId::Ping.phase(), Phase::Any);
    }
}
