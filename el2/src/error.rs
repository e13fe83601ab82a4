//! EL2's errors: the internal [`Error`], built from each module's own error, and its one
//! conversion into the [`HypError`] the host sees; and [`PsciStatus`], the PSCI return codes
//! EL2 answers with.
//!
//! Each module reports what went wrong in its own terms (`OwnError`, `PtError`, `RegError`,
//! `FwError`, `IrqError`); a hypercall handler lets `?` turn it into an [`Error`] and then a
//! [`HypError`], so the mapping from cause to ABI error is in one table, here.

use crate::cpu::fwreg::FwError;
use crate::guest::vcpu::RegError;
use crate::guest::vgic::IrqError;
use crate::mem::owner::OwnError;
use crate::mem::pgtable::PtError;
use shared_abi::HypError;

/// Why an operation inside EL2 failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// An ownership check or change.
    Own(OwnError),
    /// A page-table change.
    Table(PtError),
    /// A vCPU register access by ID.
    Reg(RegError),
    /// A firmware pseudo-register write.
    Fw(FwError),
    /// A list-register request.
    Irq(IrqError),
}

impl From<Error> for HypError {
    fn from(e: Error) -> Self {
        match e {
            Error::Own(OwnError::BadRange) => HypError::OutOfRange,
            Error::Own(OwnError::WrongState(_) | OwnError::SameComponent) => HypError::NotOwned,
            Error::Table(PtError::NoMemory) => HypError::NoMemory,
            Error::Table(PtError::BadRange | PtError::BadGeometry) => HypError::OutOfRange,
            Error::Table(PtError::AlreadyMapped | PtError::BadAttrs) => HypError::NotOwned,
            Error::Reg(RegError::Unknown) | Error::Fw(FwError::Unknown) => HypError::UnknownRegister,
            Error::Reg(RegError::ReadOnly) => HypError::Denied,
            Error::Reg(RegError::TooWide | RegError::BadValue) | Error::Fw(FwError::Refused) => HypError::InvalidArgument,
            Error::Irq(IrqError::BadField) => HypError::InvalidArgument,
            Error::Irq(IrqError::Hardware | IrqError::NoVgic) => HypError::Denied,
            Error::Irq(IrqError::Queued) => HypError::Busy,
            Error::Irq(IrqError::Full) => HypError::NoCapacity,
        }
    }
}

macro_rules! from_cause {
    ($($cause:ident => $variant:ident),*) => {
        $(
            impl From<$cause> for Error {
                fn from(e: $cause) -> Self {
                    Error::$variant(e)
                }
            }

            impl From<$cause> for HypError {
                fn from(e: $cause) -> Self {
                    Error::$variant(e).into()
                }
            }
        )*
    };
}

from_cause!(OwnError => Own, PtError => Table, RegError => Reg, FwError => Fw, IrqError => Irq);

/// A PSCI return code (PSCI 1.1, section 5.2.2), as EL2 answers the host or a guest in `x0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum PsciStatus {
    /// The call succeeded.
    Success = 0,
    /// The function is not implemented (also SMCCC's `NOT_SUPPORTED`).
    NotSupported = -1,
    /// An argument is invalid (e.g. an MPIDR that names no CPU).
    InvalidParameters = -2,
    /// The caller may not do this (e.g. turn memory protection off while protected VMs exist).
    Denied = -3,
    /// `CPU_ON` of a CPU that is on.
    AlreadyOn = -4,
    /// `CPU_ON` of a CPU whose power-on is pending.
    OnPending = -5,
}

impl PsciStatus {
    /// The value for `x0`: the code sign-extended to 64 bits.
    pub const fn x0(self) -> u64 {
        self as i32 as i64 as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_documented_abi_error() {
        assert_eq!(HypError::from(OwnError::BadRange), HypError::OutOfRange);
        assert_eq!(HypError::from(PtError::NoMemory), HypError::NoMemory);
        assert_eq!(HypError::from(RegError::ReadOnly), HypError::Denied);
        assert_eq!(HypError::from(FwError::Refused), HypError::InvalidArgument);
        assert_eq!(HypError::from(IrqError::Full), HypError::NoCapacity);
    }

    #[test]
    fn psci_codes_are_sign_extended() {
        assert_eq!(PsciStatus::NotSupported.x0(), u64::MAX);
        assert_eq!(PsciStatus::OnPending.x0(), -5i64 as u64);
        assert_eq!(PsciStatus::Success.x0(), 0);
        assert_eq!(PsciStatus::Denied as i32, smccc::psci::error::DENIED);
    }
}
