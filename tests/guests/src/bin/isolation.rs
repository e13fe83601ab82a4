//! Isolation test guest: fills a page with a secret, tells the host where it is (test device),
//! lets the host try to read and overwrite it, and checks it afterwards.
//!
//! The host answers on the test device: 1 = "I could not touch it" (protected VM), 2 = "I read
//! it and wrote a marker into word 1" (non-protected VM, which shares its memory).
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

/// The word the host writes into a non-protected guest's page.
const MARKER: u64 = 0x4057_0000_C0DE;

#[repr(C, align(4096))]
struct Page([u64; 512]);
static mut SECRET: Page = Page([0; 512]);

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EC2_E7
}

fn main(_dtb: u64) {
    let page = core::ptr::addr_of_mut!(SECRET) as *mut u64;
    for i in 0..512 {
        // SAFETY: within the static page; volatile so the writes really happen in order.
        unsafe { page.add(i).write_volatile(pattern(i)) };
    }
    println!("guest: secret page at IPA {:#x}", page as u64);
    guests::testdev_write(page as u64);
    let verdict = guests::testdev_read();
    for i in 0..512 {
        // SAFETY: as above.
        let v = unsafe { page.add(i).read_volatile() };
        let want = if verdict == 2 && i == 1 { MARKER } else { pattern(i) };
        if v != want {
            guests::fail(format_args!("word {i} of the secret page is {v:#x}, expected {want:#x}"));
        }
    }
    match verdict {
        1 => println!("guest: ok: secret page unchanged after the host's attempt"),
        2 => println!("guest: ok: host's write to shared memory seen, the rest unchanged"),
        v => guests::fail(format_args!("unexpected verdict {v}")),
    }
}

fn secondary(_: u64) {}
