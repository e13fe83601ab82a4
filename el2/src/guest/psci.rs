//! PSCI and SMCCC for guests: which calls EL2 answers itself, and the vCPU power states
//! (`CPU_ON`, `CPU_OFF`, `AFFINITY_INFO`) it keeps for them. The host sees only what EL2 does
//! not answer, as a `HYPERCALL` exit, and a `CPU_ON` exit telling it a sibling wants a CPU.
//! Vendor-hypervisor calls (the pKVM guest services) are decoded by [`crate::guest::services`].

use crate::cpu::fwreg::FwRegs;
use crate::guest::vcpu::{power, VcpuCtx, VcpuSlot};
use crate::guest::services::{self, MemCall, Service};
use crate::guest::MAX_VCPUS;
use core::sync::atomic::Ordering;
use shared_abi::msg::Exit;

/// What a guest's SMCCC call (HVC or SMC) leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCall {
    /// Answer in EL2: `x0 = value`, resume the guest.
    Answer(u64),
    /// `CPU_ON` of vCPU `target` (its `x0` = `context` at `entry`).
    CpuOn {
        /// vCPU index.
        target: usize,
        /// Entry point (guest IPA / VA as the guest's MMU sees it).
        entry: u64,
        /// The target's `x0`.
        context: u64,
    },
    /// `CPU_OFF`.
    CpuOff,
    /// `AFFINITY_INFO` of vCPU `target`.
    AffinityInfo(usize),
    /// `SYSTEM_OFF`: exit to the host.
    SystemOff,
    /// `SYSTEM_RESET`: exit to the host.
    SystemReset,
    /// A pKVM guest service call ([`crate::guest::services`]).
    Service(Service),
    /// Not a call EL2 serves: `NOT_SUPPORTED`, unless the VM forwards it to the host
    /// ([`crate::guest::smccc_forward`]).
    NotEl2s,
}

/// SMCCC owner of a function ID (bits [29:24]) for vendor-specific hypervisor services.
const OWNER_VENDOR_HYP: u64 = 6;

/// `SMCCC_VERSION` for guests: 1.1.
pub const GUEST_SMCCC_VERSION: u64 = 0x0001_0001;
const NOT_SUPPORTED: u64 = smccc::psci::error::NOT_SUPPORTED as i64 as u64;
const INVALID_PARAMETERS: u64 = smccc::psci::error::INVALID_PARAMETERS as i64 as u64;

/// PSCI functions EL2 serves for guests.
const GUEST_PSCI: [u32; 9] = [
    smccc::psci::PSCI_VERSION,
    smccc::psci::PSCI_FEATURES,
    smccc::psci::PSCI_CPU_ON_64,
    smccc::psci::PSCI_CPU_OFF,
    smccc::psci::PSCI_AFFINITY_INFO_64,
    smccc::psci::PSCI_SYSTEM_OFF,
    smccc::psci::PSCI_SYSTEM_RESET,
    smccc::arch::SMCCC_VERSION,
    smccc::arch::SMCCC_ARCH_FEATURES,
];

/// Decodes a guest SMCCC call from its `x0..=x3` for a VM of `nr_vcpus` vCPUs whose firmware
/// registers are `fw`, `protected` or not.
pub fn classify_guest_call(x: [u64; 4], nr_vcpus: usize, fw: &FwRegs, protected: bool) -> GuestCall {
    if x[0] >> 32 != 0 {
        return GuestCall::NotEl2s;
    }
    // Fast calls (bit 31) of the vendor-specific hypervisor service: the pKVM guest services.
    if x[0] >> 31 == 1 && (x[0] >> 24) & 0x3F == OWNER_VENDOR_HYP {
        return GuestCall::Service(services::classify(x, protected));
    }
    let target = |mpidr: u64| -> Option<usize> {
        // Only Aff0 names a vCPU; every other affinity field must be zero.
        let idx = (mpidr & 0xFF) as usize;
        (mpidr & 0xFF_00FF_FF00 == 0 && idx < nr_vcpus).then_some(idx)
    };
    let psci_1_0 = fw.psci_version >= 0x0001_0000;
    match x[0] as u32 {
        smccc::psci::PSCI_VERSION => GuestCall::Answer(fw.psci_version),
        // PSCI_FEATURES exists from PSCI 1.0 on.
        smccc::psci::PSCI_FEATURES if !psci_1_0 => GuestCall::Answer(NOT_SUPPORTED),
        // The PSCI functions, and SMCCC_VERSION: SMCCC (1.1 on) says a caller discovers
        // SMCCC_VERSION through PSCI_FEATURES (Linux finds SMCCC 1.1 that way); the other Arm
        // architecture calls are discovered through SMCCC_ARCH_FEATURES, not here.
        smccc::psci::PSCI_FEATURES => {
            let ok = x[1] >> 32 == 0 && GUEST_PSCI[..8].contains(&(x[1] as u32));
            GuestCall::Answer(if ok { 0 } else { NOT_SUPPORTED })
        }
        smccc::psci::PSCI_CPU_ON_64 => match target(x[1]) {
            Some(t) => GuestCall::CpuOn { target: t, entry: x[2], context: x[3] },
            None => GuestCall::Answer(INVALID_PARAMETERS),
        },
        smccc::psci::PSCI_CPU_OFF => GuestCall::CpuOff,
        smccc::psci::PSCI_AFFINITY_INFO_64 => match (target(x[1]), x[2]) {
            (Some(t), 0) => GuestCall::AffinityInfo(t),
            _ => GuestCall::Answer(INVALID_PARAMETERS),
        },
        smccc::psci::PSCI_SYSTEM_OFF => GuestCall::SystemOff,
        smccc::psci::PSCI_SYSTEM_RESET => GuestCall::SystemReset,
        smccc::arch::SMCCC_VERSION => GuestCall::Answer(GUEST_SMCCC_VERSION),
        smccc::arch::SMCCC_ARCH_FEATURES => {
            if x[1] >> 32 != 0 {
                return GuestCall::Answer(NOT_SUPPORTED);
            }
            if let Some(a) = fw.arch_features(x[1] as u32) {
                return GuestCall::Answer(a as u64);
            }
            let ok = GUEST_PSCI[7..].contains(&(x[1] as u32));
            GuestCall::Answer(if ok { 0 } else { NOT_SUPPORTED })
        }
        // The workaround calls themselves: nothing to do where the VM's level says the
        // mitigation is available or not needed (EL2 only offers that on unaffected hardware).
        f @ (smccc::arch::SMCCC_ARCH_WORKAROUND_1 | smccc::arch::SMCCC_ARCH_WORKAROUND_2 | smccc::arch::SMCCC_ARCH_WORKAROUND_3) => {
            let answer = fw.arch_features(f).unwrap_or(-1);
            GuestCall::Answer(if answer >= 0 { 0 } else { NOT_SUPPORTED })
        }
        _ => GuestCall::NotEl2s,
    }
}

/// What serving a guest's SMCCC call leaves to the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Answered in `x0`: resume the guest.
    Resume,
    /// Exit to the host.
    Exit(Exit),
    /// `SYSTEM_OFF` or `SYSTEM_RESET` (the exit): the VM has ended.
    EndVm(Exit),
    /// A memory service call: the run loop serves it under the memory lock
    /// ([`services::serve`]) and answers the guest.
    Memory(MemCall),
    /// Not EL2's (`x0..=x3` of the call; the guest's `x0` is `NOT_SUPPORTED` already): the
    /// run loop looks up whether the VM forwards it ([`crate::guest::smccc_forward`]).
    NotEl2s([u64; 4]),
}

const PSCI_ALREADY_ON: u64 = smccc::psci::error::ALREADY_ON as i64 as u64;
const PSCI_ON_PENDING: u64 = smccc::psci::error::ON_PENDING as i64 as u64;

/// Serves an SMCCC call (HVC, or SMC already stepped over) of vCPU `index` of a VM of
/// `nr_vcpus` vCPUs, whose slots are `vcpus` and firmware registers `fw`: answers what EL2
/// answers (the power states of its siblings included) and says what the host must see.
pub fn serve(vcpus: &[VcpuSlot; MAX_VCPUS], index: usize, nr_vcpus: usize, fw: &FwRegs, protected: bool, ctx: &mut VcpuCtx) -> Served {
    let x = [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]];
    match classify_guest_call(x, nr_vcpus, fw, protected) {
        GuestCall::Answer(v) => ctx.x[0] = v,
        GuestCall::Service(Service::Answer(v)) => ctx.x[..4].copy_from_slice(&v),
        GuestCall::Service(Service::Memory(call)) => return Served::Memory(call),
        GuestCall::CpuOn { target, entry, context } => {
            let t = &vcpus[target];
            ctx.x[0] = match t.power.load(Ordering::Acquire) {
                power::ON => PSCI_ALREADY_ON,
                power::ON_PENDING | power::CLAIMED => PSCI_ON_PENDING,
                // Claimed first, published after: of two siblings racing to turn the same
                // vCPU on, the one told SUCCESS is the one whose entry point it starts at.
                _ => match t.power.compare_exchange(power::OFF, power::CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        t.on_entry.store(entry, Ordering::Relaxed);
                        t.on_context.store(context, Ordering::Relaxed);
                        // Release: the target's run reads them after it sees ON_PENDING.
                        t.power.store(power::ON_PENDING, Ordering::Release);
                        // Answered; the host learns that the target now wants a CPU
                        // (until now it exited VCPU_OFF), so it need not poll it.
                        ctx.x[0] = 0;
                        return Served::Exit(Exit::CpuOn { vcpu: target as u64 });
                    }
                    Err(power::ON) => PSCI_ALREADY_ON,
                    Err(_) => PSCI_ON_PENDING,
                },
            };
        }
        GuestCall::CpuOff => {
            vcpus[index].power.store(power::OFF, Ordering::Release);
            return Served::Exit(Exit::VcpuOff);
        }
        GuestCall::AffinityInfo(t) => {
            ctx.x[0] = match vcpus[t].power.load(Ordering::Acquire) {
                power::ON => 0,
                power::ON_PENDING | power::CLAIMED => 2,
                _ => 1,
            }
        }
        GuestCall::SystemOff => return Served::EndVm(Exit::SystemOff),
        GuestCall::SystemReset => return Served::EndVm(Exit::SystemReset),
        GuestCall::NotEl2s => {
            ctx.x[0] = NOT_SUPPORTED;
            return Served::NotEl2s(x);
        }
    }
    Served::Resume
}

#[cfg(test)]
mod tests {
    use super::*;
    use smccc::psci;

    #[test]
    fn guest_psci_calls() {
        let fw = crate::cpu::fwreg::FwRegs::new(crate::cpu::fwreg::Provided::from_id_regs(0, 0));
        let c = |x0: u32, x1: u64, x2: u64, x3: u64| classify_guest_call([x0 as u64, x1, x2, x3], 2, &fw, false);
        assert_eq!(c(psci::PSCI_VERSION, 0, 0, 0), GuestCall::Answer(0x10001));
        assert_eq!(c(psci::PSCI_CPU_ON_64, 1, 0x4000, 7), GuestCall::CpuOn { target: 1, entry: 0x4000, context: 7 });
        assert_eq!(c(psci::PSCI_CPU_ON_64, 2, 0x4000, 7), GuestCall::Answer(INVALID_PARAMETERS), "no vCPU 2");
        assert_eq!(c(psci::PSCI_CPU_ON_64, 1 << 8 | 1, 0, 0), GuestCall::Answer(INVALID_PARAMETERS), "Aff1 set");
        assert_eq!(c(psci::PSCI_CPU_OFF, 0, 0, 0), GuestCall::CpuOff);
        assert_eq!(c(psci::PSCI_AFFINITY_INFO_64, 1, 0, 0), GuestCall::AffinityInfo(1));
        assert_eq!(c(psci::PSCI_AFFINITY_INFO_64, 1, 1, 0), GuestCall::Answer(INVALID_PARAMETERS));
        assert_eq!(c(psci::PSCI_SYSTEM_OFF, 0, 0, 0), GuestCall::SystemOff);
        assert_eq!(c(psci::PSCI_SYSTEM_RESET, 0, 0, 0), GuestCall::SystemReset);
        assert_eq!(c(psci::PSCI_FEATURES, psci::PSCI_CPU_ON_64 as u64, 0, 0), GuestCall::Answer(0));
        assert_eq!(c(psci::PSCI_FEATURES, psci::PSCI_CPU_SUSPEND_64 as u64, 0, 0), GuestCall::Answer(NOT_SUPPORTED));
        assert_eq!(c(psci::PSCI_CPU_SUSPEND_64, 0, 0, 0), GuestCall::NotEl2s);
        // SMCCC_VERSION is discovered through PSCI_FEATURES; the arch calls are not.
        assert_eq!(c(psci::PSCI_FEATURES, smccc::arch::SMCCC_VERSION as u64, 0, 0), GuestCall::Answer(0));
        assert_eq!(c(psci::PSCI_FEATURES, smccc::arch::SMCCC_ARCH_FEATURES as u64, 0, 0), GuestCall::Answer(NOT_SUPPORTED));
        assert_eq!(c(psci::PSCI_FEATURES, 1 << 32 | smccc::arch::SMCCC_VERSION as u64, 0, 0), GuestCall::Answer(NOT_SUPPORTED));
    }

    #[test]
    fn guest_smccc_calls() {
        let fw = crate::cpu::fwreg::FwRegs::new(crate::cpu::fwreg::Provided::from_id_regs(0, 0));
        let c = |x0: u32, x1: u64| classify_guest_call([x0 as u64, x1, 0, 0], 1, &fw, false);
        assert_eq!(c(smccc::arch::SMCCC_VERSION, 0), GuestCall::Answer(0x10001));
        assert_eq!(c(smccc::arch::SMCCC_ARCH_FEATURES, smccc::arch::SMCCC_VERSION as u64), GuestCall::Answer(0));
        assert_eq!(c(smccc::arch::SMCCC_ARCH_FEATURES, smccc::arch::SMCCC_ARCH_WORKAROUND_1 as u64), GuestCall::Answer(NOT_SUPPORTED));
        assert_eq!(c(smccc::arch::SMCCC_ARCH_WORKAROUND_1, 0), GuestCall::Answer(NOT_SUPPORTED));
        assert_eq!(c(0xC600_0000, 0), GuestCall::Service(Service::Answer([NOT_SUPPORTED, 0, 0, 0])), "vendor hypervisor calls: EL2's");
        assert_eq!(c(0xC700_0000, 0), GuestCall::NotEl2s, "vendor-specific OS calls: the host's");
        assert_eq!(c(0x0600_0000, 0), GuestCall::NotEl2s, "a yielding call of owner 6: the host's");
        assert_eq!(classify_guest_call([1 << 32, 0, 0, 0], 1, &fw, false), GuestCall::NotEl2s);
        // A VM set to PSCI 0.2 has no PSCI_FEATURES; one on unaffected hardware is told so.
        let unaffected = crate::cpu::fwreg::Provided::from_id_regs(3 << 56, 0);
        let mut fw = crate::cpu::fwreg::FwRegs::new(unaffected);
        fw.psci_version = 2;
        assert_eq!(classify_guest_call([smccc::psci::PSCI_VERSION as u64, 0, 0, 0], 1, &fw, false), GuestCall::Answer(2));
        assert_eq!(classify_guest_call([smccc::psci::PSCI_FEATURES as u64, 0, 0, 0], 1, &fw, false), GuestCall::Answer(NOT_SUPPORTED));
        let wa1 = smccc::arch::SMCCC_ARCH_WORKAROUND_1 as u64;
        assert_eq!(classify_guest_call([smccc::arch::SMCCC_ARCH_FEATURES as u64, wa1, 0, 0], 1, &fw, false), GuestCall::Answer(1));
        assert_eq!(classify_guest_call([wa1, 0, 0, 0], 1, &fw, false), GuestCall::Answer(0));
    }
}
