//! The scale guest: fills its memory with a pattern of its own, waits, and reads it back, so
//! that many VMs holding much memory at once can each show that nothing of theirs changed.
//!
//! Test device protocol: the guest reads the first and the last IPA to fill (page aligned, above
//! its own image) and a seed; writes the first and the last word of every page (`seed ^ IPA`
//! and its complement) and hands the host the number of pages written; then reads a command:
//! 1 reads every page back and hands the host the number of pages that changed (0), then powers
//! off; anything else powers off at once.
#![no_std]
#![no_main]

use guests::println;

guests::entry!(main, secondary);

const PAGE: u64 = 4096;

/// The words of page `ipa`: its first and its last.
fn words(ipa: u64) -> [*mut u64; 2] {
    [ipa as *mut u64, (ipa + PAGE - 8) as *mut u64]
}

fn main(_dtb: u64) {
    let (first, end, seed) = (guests::testdev_read(), guests::testdev_read(), guests::testdev_read());
    if first % PAGE != 0 || end % PAGE != 0 || first < guests::RAM_BASE + (4 << 20) || end < first {
        guests::fail(format_args!("bad range {first:#x}..{end:#x}"));
    }
    let pages = (end - first) / PAGE;
    for ipa in (first..end).step_by(PAGE as usize) {
        let [a, b] = words(ipa);
        // SAFETY: guest RAM above this image (checked above), which nothing else uses.
        unsafe {
            core::ptr::write_volatile(a, seed ^ ipa);
            core::ptr::write_volatile(b, !(seed ^ ipa));
        }
    }
    println!("guest: filled {pages} pages at {first:#x}..{end:#x}");
    guests::testdev_write(pages);
    if guests::testdev_read() == 1 {
        let changed = (first..end)
            .step_by(PAGE as usize)
            .filter(|&ipa| {
                let [a, b] = words(ipa);
                // SAFETY: the pages written above.
                unsafe { core::ptr::read_volatile(a) != seed ^ ipa || core::ptr::read_volatile(b) != !(seed ^ ipa) }
            })
            .count() as u64;
        println!("guest: {changed} of {pages} pages changed");
        guests::testdev_write(changed);
    }
}

fn secondary(_index: u64) {}
