//! Exceptions: decoding what EL2 took ([`syndrome`]) and building what it injects into EL1
//! ([`inject`]).

pub mod inject;
pub mod syndrome;
