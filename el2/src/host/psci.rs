//! The host's SMCs: an allow-list of what goes on to firmware.
//!
//! Place in the flow: *decode*, for `ESR_EL2.EC == SMC64` traps from the host (`HCR_EL2.TSC`).
//! The host is hostile and firmware runs at EL3, above EL2: a host SMC reaches firmware only if
//! EL2 knows the call is harmless. Everything else answers SMCCC `NOT_SUPPORTED` (-1) without
//! reaching firmware.
//!
//! - `CPU_ON` (32 and 64) is intercepted: EL2 records the host's entry point and context, and
//!   asks firmware to start the CPU at EL2's secondary entry instead, so every CPU passes
//!   through EL2's own entry before it runs host code. Firmware gets the device tree's MPIDR
//!   for the CPU, and a CPU already found weaker than the fixed CPU view is `DENIED`
//!   ([`cpu_on_target`]).
//! - Forwarded unchanged ([`FORWARDED`]): `PSCI_VERSION`, `CPU_OFF`, `AFFINITY_INFO`,
//!   `MIGRATE_INFO_TYPE`, `SYSTEM_OFF`, `SYSTEM_RESET`, `SYSTEM_RESET2` with an architectural
//!   reset type (a vendor-specific type is IMPLEMENTATION DEFINED: `INVALID_PARAMETERS`),
//!   `MEM_PROTECT_CHECK_RANGE` (a query), `SMCCC_VERSION`, `SMCCC_ARCH_FEATURES` and
//!   `SMCCC_ARCH_WORKAROUND_1/2/3` (the host's Spectre mitigations). None transfers control to
//!   a host-chosen address.
//! - `PSCI_FEATURES` and `SMCCC_ARCH_FEATURES` are forwarded only for a function the host may
//!   call; for anything else EL2 answers `NOT_SUPPORTED` itself.
//! - `MEM_PROTECT` ([`HostSmc::MemProtect`], decided by [`mem_protect`]): firmware's promise to
//!   scrub RAM before anyone reads it after a reset. EL2 turns it on itself when the first
//!   protected VM is created (where firmware implements it), and while any protected VM exists
//!   the host may not turn it off (`DENIED`), so a reset cannot hand a protected guest's memory
//!   to the next boot.
//! - Refused with `NOT_SUPPORTED`: `CPU_SUSPEND`, `SYSTEM_SUSPEND`, `CPU_DEFAULT_SUSPEND` (they
//!   would resume at a host-chosen address *at EL2*), FF-A (`0x8400_0060..=0x8400_00FF` and
//!   `0xC400_0060..=0xC400_00FF`: not proxied yet, and it can share memory with the secure
//!   world behind EL2's back), SiP and OEM calls, the other PSCI calls, and any `x0` with bits
//!   \[63:32\] set. The vendor hypervisor range (`0xC600_xxxx`) is EL2's ABI through `HVC`; by
//!   `SMC` it is refused like the rest.

use crate::cpu::features::CpuFeatures;
use crate::hw::Firmware;
use crate::mem::pgtable::TableMemory;
use crate::mem::MemState;
use crate::platform::{Platform, MPIDR_AFF_MASK};
use smccc::{arch, psci};


/// What to do with a host SMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostSmc {
    /// `CPU_ON(target_mpidr, entry, context)`: start a CPU through EL2.
    CpuOn {
        /// `MPIDR` of the CPU to start.
        target: u64,
        /// Host entry point (an IPA of the host).
        entry: u64,
        /// Value for the host's `x0` at `entry`.
        context: u64,
    },
    /// `MEM_PROTECT(enable)`: decide with [`mem_protect`] under the memory lock (where the
    /// protected VMs are counted), and forward while still holding it.
    MemProtect {
        /// The `enable` argument (`w1`).
        enable: u32,
    },
    /// Answer in EL2 with this value in `x0`.
    Answer(psci::Error),
    /// Pass the call to firmware unchanged.
    Forward,
}

/// The calls forwarded to firmware unchanged (the allow-list).
pub const FORWARDED: [u32; 16] = [
    psci::PSCI_VERSION,
    psci::PSCI_CPU_OFF,
    psci::PSCI_AFFINITY_INFO_32,
    psci::PSCI_AFFINITY_INFO_64,
    psci::PSCI_MIGRATE_INFO_TYPE,
    psci::PSCI_SYSTEM_OFF,
    psci::PSCI_SYSTEM_RESET,
    psci::PSCI_SYSTEM_RESET2_32,
    psci::PSCI_SYSTEM_RESET2_64,
    psci::PSCI_MEM_PROTECT_CHECK_RANGE_32,
    psci::PSCI_MEM_PROTECT_CHECK_RANGE_64,
    arch::SMCCC_VERSION,
    arch::SMCCC_ARCH_FEATURES,
    arch::SMCCC_ARCH_WORKAROUND_1,
    arch::SMCCC_ARCH_WORKAROUND_2,
    arch::SMCCC_ARCH_WORKAROUND_3,
];

/// Whether the host may call `function` at all (forwarded, intercepted or decided by EL2): what
/// `PSCI_FEATURES` and `SMCCC_ARCH_FEATURES` may ask firmware about.
pub fn offered(function: u32) -> bool {
    FORWARDED.contains(&function)
        || matches!(function, psci::PSCI_CPU_ON_32 | psci::PSCI_CPU_ON_64 | psci::PSCI_MEM_PROTECT | psci::PSCI_FEATURES)
}

/// `SYSTEM_RESET2.reset_type` bit 31: a vendor-specific reset.
const RESET2_VENDOR: u64 = 1 << 31;

/// Classifies a host SMC from its `x0..=x3`.
pub fn classify(x: [u64; 4]) -> HostSmc {
    const NOT_SUPPORTED: HostSmc = HostSmc::Answer(psci::Error::NotSupported);
    // SMCCC: only w0 is the function ID; an x0 with upper bits set is no call EL2 knows.
    if x[0] >> 32 != 0 {
        return NOT_SUPPORTED;
    }
    match x[0] as u32 {
        psci::PSCI_CPU_ON_64 => HostSmc::CpuOn { target: x[1], entry: x[2], context: x[3] },
        // SMC32 calling convention: arguments are the low 32 bits of the registers.
        psci::PSCI_CPU_ON_32 => HostSmc::CpuOn {
            target: x[1] & 0xFFFF_FFFF,
            entry: x[2] & 0xFFFF_FFFF,
            context: x[3] & 0xFFFF_FFFF,
        },
        psci::PSCI_MEM_PROTECT => HostSmc::MemProtect { enable: x[1] as u32 },
        psci::PSCI_FEATURES | arch::SMCCC_ARCH_FEATURES if x[1] >> 32 != 0 || !offered(x[1] as u32) => NOT_SUPPORTED,
        psci::PSCI_FEATURES => HostSmc::Forward,
        psci::PSCI_SYSTEM_RESET2_32 | psci::PSCI_SYSTEM_RESET2_64 if x[1] & RESET2_VENDOR != 0 => {
            HostSmc::Answer(psci::Error::InvalidParameters)
        }
        f if FORWARDED.contains(&f) => HostSmc::Forward,
        _ => NOT_SUPPORTED,
    }
}

/// The host's `MEM_PROTECT(enable)` while `protected_vms` protected VMs exist: `None` to
/// forward it, or EL2's answer, `DENIED`, if it could turn memory protection off (anything but
/// `enable == 1`) while a protected VM exists.
pub fn mem_protect(enable: u32, protected_vms: usize) -> Option<psci::Error> {
    (protected_vms > 0 && enable != 1).then_some(psci::Error::Denied)
}


/// Decides a host `CPU_ON(target)`: the target's platform index and the `MPIDR` to give
/// firmware, the platform's own value for that CPU (affinity fields as the device tree gives
/// them; the host's other bits are dropped).
///
/// # Errors
/// The PSCI status for the host: `INVALID_PARAMETERS` for an MPIDR that names no CPU; `DENIED`
/// for a CPU that already failed [`CpuFeatures::report`] against the fixed view.
pub fn cpu_on_target(platform: &Platform, cpus: &crate::sync::Mutex<CpuFeatures>, target: u64) -> Result<(usize, u64), psci::Error> {
    let idx = platform.cpu_index(target).ok_or(psci::Error::InvalidParameters)?;
    if let Err(w) = cpus.lock().cpu_on_check(idx) {
        log::debug!("CPU_ON of cpu{idx} refused: it is weaker than the fixed CPU view ({w:?})");
        return Err(psci::Error::Denied);
    }
    Ok((idx, platform.cpus[idx] & MPIDR_AFF_MASK))
}

/// The host's `MEM_PROTECT(enable)` ([`mem_protect`]): decided and forwarded under the memory
/// lock `mem`, where protected VMs are created and destroyed, so their count cannot change
/// between the decision and firmware's answer. Returns the value for `x0`.
pub fn host_mem_protect<T: TableMemory>(mem: &crate::sync::Mutex<MemState<'_, T>>, enable: u32, fw: &impl Firmware) -> i64 {
    let mem = mem.lock();
    let protected_vms = mem.vms.iter().filter(|vm| vm.protected).count();
    match mem_protect(enable, protected_vms) {
        None => fw.mem_protect(enable),
        Some(answer) => answer.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: HostSmc = HostSmc::Answer(psci::Error::NotSupported);

    #[test]
    fn cpu_on_is_intercepted_with_its_arguments() {
        assert_eq!(
            classify([psci::PSCI_CPU_ON_64 as u64, 1, 0x4200_0100, 7]),
            HostSmc::CpuOn { target: 1, entry: 0x4200_0100, context: 7 }
        );
        assert_eq!(
            classify([psci::PSCI_CPU_ON_32 as u64, 1 << 32 | 1, 1 << 40 | 0x100, u64::MAX]),
            HostSmc::CpuOn { target: 1, entry: 0x100, context: 0xFFFF_FFFF }
        );
    }

    #[test]
    fn every_allowed_call_is_forwarded() {
        for f in FORWARDED {
            // (SMCCC_ARCH_FEATURES itself needs an offered function to ask about.)
            let x1 = if f == arch::SMCCC_ARCH_FEATURES { arch::SMCCC_ARCH_WORKAROUND_1 as u64 } else { 0 };
            assert_eq!(classify([f as u64, x1, 0, 0]), HostSmc::Forward, "{f:#x}");
            assert_eq!(classify([psci::PSCI_FEATURES as u64, f as u64, 0, 0]), HostSmc::Forward, "PSCI_FEATURES({f:#x})");
            assert_eq!(classify([arch::SMCCC_ARCH_FEATURES as u64, f as u64, 0, 0]), HostSmc::Forward, "ARCH_FEATURES({f:#x})");
        }
        for f in [psci::PSCI_CPU_ON_32, psci::PSCI_CPU_ON_64, psci::PSCI_MEM_PROTECT, psci::PSCI_FEATURES] {
            assert_eq!(classify([psci::PSCI_FEATURES as u64, f as u64, 0, 0]), HostSmc::Forward, "PSCI_FEATURES({f:#x})");
        }
        // The exact list the issue asks for, by number (so the constants cannot drift).
        let ids = [
            0x8400_0000u32, 0x8400_0002, 0x8400_0004, 0xC400_0004, 0x8400_0006, 0x8400_0008, 0x8400_0009,
            0x8400_0012, 0xC400_0012, 0x8400_0014, 0xC400_0014, 0x8000_0000, 0x8000_0001, 0x8000_8000,
            0x8000_7FFF, 0x8000_3FFF,
        ];
        assert_eq!(FORWARDED, ids);
        // SYSTEM_RESET2: the architectural warm reset goes on, a vendor-specific type does not.
        assert_eq!(classify([psci::PSCI_SYSTEM_RESET2_64 as u64, 0, 0x1234, 0]), HostSmc::Forward);
        assert_eq!(classify([psci::PSCI_SYSTEM_RESET2_32 as u64, 1 << 31, 0, 0]), HostSmc::Answer(psci::Error::InvalidParameters));
        assert_eq!(classify([psci::PSCI_SYSTEM_RESET2_64 as u64, 1 << 31 | 5, 0, 0]), HostSmc::Answer(psci::Error::InvalidParameters));
    }

    #[test]
    fn suspend_calls_and_their_features_are_refused() {
        for f in [
            psci::PSCI_CPU_SUSPEND_32,
            psci::PSCI_CPU_SUSPEND_64,
            psci::PSCI_SYSTEM_SUSPEND_32,
            psci::PSCI_SYSTEM_SUSPEND_64,
            psci::PSCI_CPU_DEFAULT_SUSPEND_32,
            psci::PSCI_CPU_DEFAULT_SUSPEND_64,
        ] {
            assert_eq!(classify([f as u64, 0, 0, 0]), NS);
            assert_eq!(classify([psci::PSCI_FEATURES as u64, f as u64, 0, 0]), NS);
        }
    }

    #[test]
    fn everything_else_is_refused_without_reaching_firmware() {
        let refused = [
            // FF-A, both ends of both ranges (FFA_VERSION, FFA_MEM_SHARE, ...).
            0x8400_0060u32, 0x8400_0063, 0x8400_0073, 0x8400_00FF, 0xC400_0060, 0xC400_0073, 0xC400_00FF,
            // SiP and OEM service calls, fast and yielding, 32 and 64.
            0x8200_0000, 0x8200_FFFF, 0xC200_0000, 0xC200_0001, 0x0200_0000, 0x8300_0000, 0xC300_0010,
            // The vendor hypervisor range: EL2's own ABI is HVC, not SMC.
            0xC600_0000, 0xC600_0006, 0x8600_0000,
            // Other PSCI and arch calls the host has no need for.
            psci::PSCI_MIGRATE_32, psci::PSCI_MIGRATE_64, psci::PSCI_MIGRATE_INFO_UP_CPU_64, psci::PSCI_CPU_FREEZE,
            psci::PSCI_NODE_HW_STATE_64, psci::PSCI_SET_SUSPEND_MODE, psci::PSCI_STAT_COUNT_64, arch::SMCCC_ARCH_SOC_ID,
            // Standard service range beyond PSCI, trusted OS, unknown.
            0x8400_0020, 0xC400_0100, 0xB200_0000, 0xBF00_0000, 0xFFFF_FFFF, 0,
        ];
        for f in refused {
            assert_eq!(classify([f as u64, 0, 0, 0]), NS, "{f:#x}");
            assert_eq!(classify([psci::PSCI_FEATURES as u64, f as u64, 0, 0]), NS, "PSCI_FEATURES({f:#x})");
            assert_eq!(classify([arch::SMCCC_ARCH_FEATURES as u64, f as u64, 0, 0]), NS, "ARCH_FEATURES({f:#x})");
        }
        // Upper bits of x0 set, or of a FEATURES argument: no call EL2 knows.
        assert_eq!(classify([1 << 32 | psci::PSCI_CPU_ON_64 as u64, 1, 2, 3]), NS);
        assert_eq!(classify([1 << 32 | psci::PSCI_VERSION as u64, 0, 0, 0]), NS);
        assert_eq!(classify([psci::PSCI_FEATURES as u64, 1 << 32 | psci::PSCI_VERSION as u64, 0, 0]), NS);
    }

    #[test]
    fn memory_protection_stays_on_while_protected_vms_exist() {
        assert_eq!(classify([psci::PSCI_MEM_PROTECT as u64, 1 << 32, 0, 0]), HostSmc::MemProtect { enable: 0 });
        assert_eq!(classify([psci::PSCI_MEM_PROTECT as u64, 1, 0, 0]), HostSmc::MemProtect { enable: 1 });
        // No protected VM: the host decides.
        for enable in [0, 1, 7] {
            assert_eq!(mem_protect(enable, 0), None);
        }
        // One or more: it may only (re-)enable.
        for count in [1, 2, 16] {
            assert_eq!(mem_protect(0, count), Some(psci::Error::Denied));
            assert_eq!(mem_protect(2, count), Some(psci::Error::Denied), "not a valid enable");
            assert_eq!(mem_protect(u32::MAX, count), Some(psci::Error::Denied));
            assert_eq!(mem_protect(1, count), None);
        }
    }
}
