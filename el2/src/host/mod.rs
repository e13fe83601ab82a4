//! What EL2 does for the host: its traps (`trap`: hypercalls, SMCs, stage-2 faults), its PSCI
//! calls, its message pages, and the redistributor pages it may not map.

pub mod gicr;
pub mod msgpage;
pub mod psci;
pub mod trap;
