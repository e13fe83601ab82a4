//! The CPUs EL2 runs on: their combined features, the ID registers, cache type and SVE vector
//! lengths VMs see, the firmware workaround registers, and the EL2 control-register values
//! derived from them.

pub mod cachetype;
pub mod controls;
pub mod features;
pub mod fwreg;
pub mod idreg;
pub mod sve;
