//! The host's SMCs: which ones EL2 intercepts and which go on to firmware.
//!
//! Place in the flow: *decode*, for `ESR_EL2.EC == SMC64` traps from the host (`HCR_EL2.TSC`).
//! EL2 must see every way a CPU can (re)enter the host, so that each CPU passes through EL2's
//! own entry first and is given its stage 2 and traps before it runs host code:
//!
//! - `CPU_ON` (32 and 64) is intercepted: EL2 records the host's entry point and context, and
//!   asks firmware to start the CPU at EL2's secondary entry instead.
//! - `CPU_SUSPEND` and `SYSTEM_SUSPEND` would resume the CPU at a host-chosen address *at EL2*;
//!   they are refused with PSCI `NOT_SUPPORTED`, and `PSCI_FEATURES` says so.
//! - Everything else (PSCI_VERSION, CPU_OFF, AFFINITY_INFO, SYSTEM_OFF, SYSTEM_RESET, non-PSCI
//!   calls) is forwarded to firmware unchanged; none of them transfers control to an address.

use smccc::psci;

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
    /// Answer in EL2 with this value in `x0`.
    Answer(i64),
    /// Pass the call to firmware unchanged.
    Forward,
}

fn is_refused(function: u32) -> bool {
    matches!(
        function,
        psci::PSCI_CPU_SUSPEND_32
            | psci::PSCI_CPU_SUSPEND_64
            | psci::PSCI_SYSTEM_SUSPEND_32
            | psci::PSCI_SYSTEM_SUSPEND_64
            | psci::PSCI_CPU_DEFAULT_SUSPEND_32
            | psci::PSCI_CPU_DEFAULT_SUSPEND_64
    )
}

/// Classifies a host SMC from its `x0..=x3`.
pub fn classify(x: [u64; 4]) -> HostSmc {
    // SMCCC: only w0 is the function ID; a 64-bit x0 with upper bits set is not a PSCI call
    // (firmware will answer NOT_SUPPORTED), and forwarding it is harmless.
    if x[0] >> 32 != 0 {
        return HostSmc::Forward;
    }
    let function = x[0] as u32;
    match function {
        psci::PSCI_CPU_ON_64 => HostSmc::CpuOn { target: x[1], entry: x[2], context: x[3] },
        // SMC32 calling convention: arguments are the low 32 bits of the registers.
        psci::PSCI_CPU_ON_32 => HostSmc::CpuOn {
            target: x[1] & 0xFFFF_FFFF,
            entry: x[2] & 0xFFFF_FFFF,
            context: x[3] & 0xFFFF_FFFF,
        },
        f if is_refused(f) => HostSmc::Answer(psci::error::NOT_SUPPORTED as i64),
        psci::PSCI_FEATURES if x[1] >> 32 == 0 && is_refused(x[1] as u32) => {
            HostSmc::Answer(psci::error::NOT_SUPPORTED as i64)
        }
        _ => HostSmc::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn suspend_calls_and_their_features_are_refused() {
        for f in [psci::PSCI_CPU_SUSPEND_64, psci::PSCI_SYSTEM_SUSPEND_32, psci::PSCI_CPU_DEFAULT_SUSPEND_64] {
            assert_eq!(classify([f as u64, 0, 0, 0]), HostSmc::Answer(-1));
            assert_eq!(classify([psci::PSCI_FEATURES as u64, f as u64, 0, 0]), HostSmc::Answer(-1));
        }
    }

    #[test]
    fn everything_else_is_forwarded() {
        for f in [psci::PSCI_VERSION, psci::PSCI_SYSTEM_OFF, psci::PSCI_CPU_OFF, psci::PSCI_AFFINITY_INFO_64] {
            assert_eq!(classify([f as u64, 0, 0, 0]), HostSmc::Forward);
        }
        assert_eq!(classify([psci::PSCI_FEATURES as u64, psci::PSCI_CPU_ON_64 as u64, 0, 0]), HostSmc::Forward);
        assert_eq!(classify([1 << 32 | psci::PSCI_CPU_ON_64 as u64, 1, 2, 3]), HostSmc::Forward);
        assert_eq!(classify([0xC600_0000, 0, 0, 0]), HostSmc::Forward);
    }
}
