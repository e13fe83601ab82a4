//! The host kernel's lowest layer, at EL1 under EL2's stage 2: what every layer above it (the
//! VMM in `host-vmm`, the scenarios in `el1-host`) runs on.
//!
//! It talks to EL2 only through hypercalls (`HVC #0`, [`hyp`]) and to firmware only through
//! PSCI (`SMC`, which EL2 intercepts). It runs with its MMU off; EL2 sets `HCR_EL2.DC`, so its
//! memory is Normal cacheable and devices are Device through stage 2. It owns the physical
//! GICv3 and each CPU's EL1 physical timer ([`gic`]): with `DAIF` masked throughout, it
//! acknowledges interrupts after a `VCPU_RUN` ends with exit `IRQ` and in idle loops.
//!
//! The binary above defines the entry point with [`entry!`].
#![cfg(target_os = "none")]
#![no_std]

pub mod arch;
pub mod console;
pub mod cpu;
pub mod entry;
pub mod fail;
pub mod gic;
pub mod hyp;
pub mod platform;
pub mod sync;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail::fail(format_args!("host panic: {info}"))
}
