//! Measurement guest: finds its handover page through the device tree (`google,open-dice`),
//! checks it is EL2's (magic, version, debug mode), prints its measurement, and hands the host
//! the measurement and a digest of its sealing secret (test device: 4 + 4 words). It also
//! checks that RAM the host left unmeasured reached it zeroed: the host fills the backing
//! memory with 0x5A before loading.
#![no_std]
#![no_main]

use guests::println;
use shared_abi::measure::{digest, Handover, HANDOVER_MAGIC, MODE_DEBUG};
use zerocopy::FromBytes;

guests::entry!(main, secondary);

fn main(dtb: u64) {
    // SAFETY: x0 is the device tree's IPA, which the VMM placed in this guest's RAM (at most
    // 64 KiB); the guest runs with its MMU off, so the IPA is the address.
    let tree = unsafe { core::slice::from_raw_parts(dtb as *const u8, 64 * 1024) };
    let Ok(fdt) = fdt::Fdt::new(tree) else { guests::fail(format_args!("no device tree at {dtb:#x}")) };
    let Some(node) = fdt.find_compatible(&["google,open-dice"]) else { guests::fail(format_args!("no google,open-dice node")) };
    let Some(reg) = node.reg().and_then(|mut r| r.next()) else { guests::fail(format_args!("open-dice node without reg")) };
    let at = reg.starting_address as u64;
    // SAFETY: the handover page the VMM gave this VM (4 KiB of its RAM, mapped on first touch).
    let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, core::mem::size_of::<Handover>()) };
    let Ok(h) = Handover::read_from_bytes(bytes) else { guests::fail(format_args!("handover unreadable")) };
    if h.magic != HANDOVER_MAGIC || h.version != 1 || h.mode != MODE_DEBUG {
        guests::fail(format_args!("not EL2's handover at {at:#x}: {:x?} v{} mode {}", h.magic, h.version, h.mode));
    }
    println!("guest: ok: handover at {at:#x}: version 1, debug mode");
    print_hex("guest: measurement ", &h.measurement);
    // Unmeasured RAM is zero in a protected VM (the pKVM services say which it is; a
    // non-protected VM's memory is the host's, shared as it is).
    let features = smccc::hvc64(shared_abi::guest::VENDOR_HYP_KVM_FEATURES, [0; 17])[0];
    if features != shared_abi::guest::features::PROTECTED {
        println!("guest: not a protected VM: its memory is the host's as it was");
        report(&h);
        guests::system_off();
    }
    // The middle of RAM, which holds neither image nor tree.
    let ram = fdt.memory().regions().next().map_or((0, 0), |r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
    for probe in [ram.0 + ram.1 / 2, ram.0 + ram.1 / 2 + 0x1238, ram.0 + ram.1 - 0x2_0000] {
        // SAFETY: inside this guest's RAM (from its device tree), below the tree.
        let v = unsafe { core::ptr::read_volatile(probe as *const u64) };
        if v != 0 {
            guests::fail(format_args!("unmeasured RAM at {probe:#x} holds {v:#x}"));
        }
    }
    println!("guest: ok: RAM the host did not measure reads as zero");
    report(&h);
    guests::system_off();
}

/// Hands the host the measurement and a digest of the sealing secret (never the secret).
fn report(h: &Handover) {
    for chunk in h.measurement.chunks_exact(8).chain(digest(&h.cdi_seal).chunks_exact(8)) {
        guests::testdev_write(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
    }
}

fn print_hex(what: &str, bytes: &[u8; 32]) {
    struct Hex<'a>(&'a [u8; 32]);
    impl core::fmt::Display for Hex<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
    println!("{what}{}", Hex(bytes));
}

fn secondary(_: u64) {}
