//! EL2's errors: the internal [`Error`], built from each module's own error, and its one
//! conversion into the [`HypError`] the host sees. (PSCI return codes are `smccc::psci::Error`.)
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
            Error::Irq(IrqError::Hardware | IrqError::NoVgic | IrqError::Linked) => HypError::Denied,
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
}
