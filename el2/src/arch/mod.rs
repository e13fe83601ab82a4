//! The thin AArch64 layer: system registers, barriers, TLB maintenance, the exception vectors.
//!
//! Place in the flow: the bottom. Only this module (and the boot crate's entry assembly) contains
//! `asm!`. It is compiled only for the bare-metal target; everything above it builds and is
//! unit-tested on the development host.
//!
//! Register and field names follow the Arm ARM (DDI 0487). Every barrier says what it orders.

pub mod console;
pub mod failstop;
mod gicr;
mod regs;
pub(crate) mod switch;
mod vectors;

pub use gicr::RdMmio;
pub use regs::*;
pub use switch::{check_sysreg_tables, ich_vtr, FIXMAP_ENTRY, FIXMAP_TEMPLATE, FIXMAP_TEMPLATE_TAGGED, FIXMAP_VA};
pub use vectors::TrapFrame;
