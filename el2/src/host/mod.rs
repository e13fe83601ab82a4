//! What EL2 does for the host beyond hypercalls: its PSCI calls and the redistributor pages
//! it may not map.

pub mod gicr;
pub mod psci;
