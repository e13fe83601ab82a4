//! The host VMM's device models, and what a guest boots from, in plain Rust: no hardware, no
//! `unsafe`, no heap, unit-tested on the development host (`cargo test -p host-vdev`).
//!
//! **What it is for.** A guest (an unmodified Linux arm64 kernel included) reaches its
//! interrupt controller, its console and its virtio devices through MMIO that EL2 does not
//! map: every access is
//! an `MMIO` exit to the host (`docs/ABI.md`), which emulates the device and answers the read.
//! This crate holds those emulations, so that the untrusted but still careful host code in
//! `el1-host` stays a thin loop around them:
//!
//! - [`vgic::Vgic`]: the GICv3 distributor and redistributors of one VM (the register model
//!   and the pending state of every interrupt), and the decision which virtual interrupt goes
//!   to which vCPU next. The host queues what [`vgic::Vgic::next_to_queue`] names with the
//!   `VCPU_SET_IRQ` hypercall (EL2 owns the list registers) and reports back, from each exit's
//!   `VCPU_IRQ_STATE` bitmap, what the guest has deactivated.
//! - [`pl011::Pl011`]: the guest's UART (ARM PrimeCell PL011) with its receive FIFO and its
//!   interrupt line, which the host feeds into the vGIC as an SPI.
//! - [`virtio`]: virtio-mmio transports (version 2) and their split virtqueues, over the
//!   guest memory the VMM lends through [`virtio::GuestMemory`]; every descriptor chain is
//!   copied out once and checked, and a bad one makes the device need a reset. Devices: a
//!   console ([`virtio::console`]) and a block device ([`virtio::blk`]).
//! - [`loader`]: where a Linux `Image` (its header's `text_offset` and `image_size`), its
//!   initramfs and the device tree go in guest RAM, and the ELF loader; every
//!   size and offset of a user's file is checked before a byte is copied.
//! - [`fdt`]: the guests' device trees (a fixed-buffer FDT writer: the host has no heap),
//!   with `virtio,mmio` nodes and, for a protected VM, their restricted DMA pool.
//! - [`vm_platform`]: the one virtual machine every guest boots on (its physical map), a
//!   guest's layout in its RAM and its measurement, shared by the VMM and the offline
//!   `cargo xtask measure`.
//!
//! Place in the flow: `el1-host` (bare metal, built only for AArch64) keeps one `Vgic` and one
//! `Pl011` per VM behind a lock, decodes an exit's IPA into "which device, which offset", and
//! calls in here. Guest accesses are hostile input: every offset, size and value is accepted
//! without a panic; accesses the hardware would not define read as zero, are ignored when
//! written, and are counted so the host can report them. Calls that carry the host's own
//! bookkeeping return typed errors when they contradict the model.
//!
//! Like `host-sched`, this crate exists because `el1-host` cannot be unit-tested on the
//! development machine; it depends only on `shared-abi` (the measurement records) and builds for
//! the bare-metal target too.
#![no_std]
#![forbid(unsafe_code)]

pub mod fdt;
pub mod loader;
pub mod vm_platform;
pub mod pl011;
pub mod vgic;
pub mod virtio;

/// The bits of an access of `size` bytes (1, 2, 4 or 8); 0 for any other size.
const fn width_mask(size: u32) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        8 => u64::MAX,
        _ => 0,
    }
}

/// Whether an access of `size` bytes at `offset` is a naturally aligned 1-, 2-, 4- or 8-byte
/// access (the only kind either device decodes further).
const fn naturally_aligned(offset: u64, size: u32) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(size as u64)
}

/// A deterministic xorshift generator for the randomised tests of both modules. The seed is
/// `HOST_VDEV_SEED` if set, else fresh from the clock; the tests print it so a failure can be
/// replayed with `HOST_VDEV_SEED=<seed> cargo test -p host-vdev`.
#[cfg(test)]
pub(crate) mod rng {
    extern crate std;

    /// xorshift64.
    pub struct XorShift(u64);

    impl XorShift {
        /// A generator for test `name`, seeded as the module says; prints the seed.
        pub fn for_test(name: &str) -> Self {
            let seed = std::env::var("HOST_VDEV_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
            });
            std::println!("{name}: seed {seed} (replay: HOST_VDEV_SEED={seed})");
            Self(seed | 1)
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A value in `0..n` (`n > 0`).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// One of `items`.
        pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }
}
