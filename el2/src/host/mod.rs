//! What EL2 does for the host: its traps (`trap`: hypercalls, SMCs, stage-2 faults), its PSCI
//! calls, its message pages, and the device space it may reach (`devices`), with the two kinds
//! of device page EL2 keeps from it and performs accesses to (`gicr`, `pciconfig`, through
//! `guarded`).

pub mod devices;
pub mod gicr;
pub mod guarded;
pub mod msgpage;
pub mod pciconfig;
pub mod psci;
pub mod trap;
