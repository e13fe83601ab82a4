//! The pKVM guest ABI (`shared_abi::guest`) from a bare-metal guest, as Linux's `pkvm-guest`
//! driver would use it, and as a hostile guest would: discovery (KVM's UID, the feature
//! bitmap, `HYP_MEMINFO`), `MEM_SHARE` and `MEM_UNSHARE` with the host looking at the page,
//! refused calls that must change nothing, a sibling vCPU using a page while vCPU 0 shares and
//! unshares it 500 times, and `MMIO_GUARD`. The host's side is `el1-host/src/guest_abi.rs`.
//!
//! The guest's first read of the test device says what it runs as: [`PROTECTED`] (2 vCPUs) or
//! [`NOT_PROTECTED`] (1 vCPU: the services answer `NOT_SUPPORTED`). Then each write is a
//! command for the host, `CMD << 48 | argument` (an IPA, or counts), and each read after one
//! returns how many commands the host has handled, which the guest checks.
//!
//! The values are spelled out here (the UID, `0x9d`, `-3`) rather than taken from
//! `shared_abi::guest`, so a wrong constant there is a failure here.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guests::println;

guests::entry!(main, secondary);

/// Test-device answers to the first read.
const PROTECTED: u64 = 1;
const NOT_PROTECTED: u64 = 2;

/// Commands (bits [63:48] of a test-device write).
mod cmd {
    /// The page at the IPA is shared and holds [`super::pattern`]: read it, write
    /// [`super::reply`] over it.
    pub const SHARED: u64 = 1;
    /// The page at the IPA is the guest's alone: a read and a write must abort.
    pub const PRIVATE: u64 = 2;
    /// The page at the IPA is still shared: a read must not abort.
    pub const STILL_SHARED: u64 = 3;
    /// The guest's count of `MEM_SHARE` (bits [47:24]) and `MEM_UNSHARE` (bits [23:0]) calls
    /// that succeeded: the host must have seen as many exits.
    pub const EXITS: u64 = 4;
    /// The number of accesses outside the declared MMIO that the host must have seen as MMIO
    /// exits.
    pub const STRAY_MMIO: u64 = 5;
    /// The page at the IPA stays shared, holding [`super::pattern`], through `SYSTEM_OFF`.
    pub const LEFT_SHARED: u64 = 6;
}

/// KVM's UID, 28b46fb6-2ec5-11e9-a9ca-4b564d003a74, as SMCCC returns it in `x0..x3`.
const KVM_UID: [u64; 4] = [0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D];
const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
const VENDOR_HYP_KVM_FEATURES: u32 = 0x8600_0000;
const HYP_MEMINFO: u32 = 0xC600_0002;
const MEM_SHARE: u32 = 0xC600_0003;
const MEM_UNSHARE: u32 = 0xC600_0004;
const MMIO_GUARD: u32 = 0xC600_0007;
const SUCCESS: u64 = 0;
const NOT_SUPPORTED: u64 = -1i64 as u64;
const INVALID_PARAMETER: u64 = -3i64 as u64;

/// The end of the 16 MiB of RAM the host gives, and the VM's IPA size (36 bits).
const RAM_END: u64 = guests::RAM_BASE + (16 << 20);
const IPA_LIMIT: u64 = 1 << 36;
/// An address outside RAM that the host's VMM emulates nothing at: an MMIO exit, read as 0,
/// until the MMIO guard is on.
const UNDECLARED: u64 = 0x0a00_0000;
/// `MEM_SHARE` / `MEM_UNSHARE` rounds of vCPU 0 while vCPU 1 uses the page.
const RACE_ROUNDS: u64 = 500;

#[repr(C, align(4096))]
struct Page([u64; 512]);

/// The pages shared: [`SHARE`] for the round trip, [`HOSTILE`] shared twice, [`NEVER`] never
/// shared, [`RACE`] for the sibling race, [`LEFT`] left shared at the end.
static mut PAGES: [Page; 5] = [const { Page([0; 512]) }; 5];
const SHARE: usize = 0;
const HOSTILE: usize = 1;
const NEVER: usize = 2;
const RACE: usize = 3;
const LEFT: usize = 4;

/// vCPU 1's passes over [`RACE`] (each writes and checks all 512 words).
static PASSES: AtomicU64 = AtomicU64::new(0);
/// Set by vCPU 0 when its rounds are done; vCPU 1 then finishes its pass and sets
/// [`LAST_PASS`] to its number + 1.
static STOP: AtomicU64 = AtomicU64::new(0);
static LAST_PASS: AtomicU64 = AtomicU64::new(0);

fn page(n: usize) -> *mut u64 {
    // SAFETY: only the address of the static is taken.
    unsafe { core::ptr::addr_of_mut!(PAGES[n]) as *mut u64 }
}

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0AB1_0000
}

fn reply(i: usize) -> u64 {
    !pattern(i)
}

/// vCPU 1's value for word `i` in pass `pass`.
fn race_word(pass: u64, i: usize) -> u64 {
    pass << 32 | i as u64 | 0x5100_0000_0000_0000
}

fn fill(p: *mut u64, f: impl Fn(usize) -> u64) {
    for i in 0..512 {
        // SAFETY: word `i` of one of this guest's pages; volatile so each store is made.
        unsafe { p.add(i).write_volatile(f(i)) };
    }
}

/// The first word of `p` that is not `f(i)`.
fn differs(p: *mut u64, f: impl Fn(usize) -> u64) -> Option<(usize, u64)> {
    // SAFETY: word `i` of one of this guest's pages.
    (0..512).map(|i| (i, unsafe { p.add(i).read_volatile() })).find(|&(i, v)| v != f(i))
}

/// An SMCCC call by `HVC`: `x0..x3` of the answer.
fn call(id: u32, x1: u64, x2: u64, x3: u64) -> [u64; 4] {
    let r = smccc::hvc64(id, [x1, x2, x3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    [r[0], r[1], r[2], r[3]]
}

/// `id(x1, x2, x3)` must answer `want` in `x0`.
fn expect(what: &str, id: u32, x: [u64; 3], want: u64) {
    let r = call(id, x[0], x[1], x[2])[0];
    if r != want {
        guests::fail(format_args!("{what} ({id:#x}, x1 {:#x}, x2 {:#x}, x3 {:#x}): {r:#x}, expected {want:#x}", x[0], x[1], x[2]));
    }
}

/// Commands the host has handled, by the guest's count.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Hands the host command `c` with `arg`, and checks it handled it.
fn tell(c: u64, arg: u64) {
    guests::testdev_write(c << 48 | arg);
    let sent = SENT.fetch_add(1, Ordering::Relaxed) + 1;
    let handled = guests::testdev_read();
    if handled != sent {
        guests::fail(format_args!("the host handled {handled} commands, {sent} sent"));
    }
}

/// A 32-bit read or write of `ipa`, outside RAM: an MMIO exit the host's VMM answers (reads
/// 0, ignores writes), or, with the MMIO guard on and the granule undeclared, an abort that
/// [`abort_of`] catches.
fn access(ipa: u64, write: bool) {
    // SAFETY: nothing of this guest's is at `ipa`; the access either exits to the host or
    // takes an exception that the vectors record and skip.
    unsafe {
        if write {
            core::ptr::write_volatile(ipa as *mut u32, 0x600D);
        } else {
            core::ptr::read_volatile(ipa as *const u32);
        }
    }
}

/// `ESR_EL1` and `FAR_EL1` of the synchronous exception `f` took, if any.
fn abort_of(f: impl FnOnce()) -> Option<(u64, u64)> {
    let esr = guests::trapped(f)?;
    let far: u64;
    // SAFETY: reading FAR_EL1 has no side effect; nothing has faulted since the exception.
    unsafe { core::arch::asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack)) };
    Some((esr, far))
}

fn main(_dtb: u64) {
    guests::install_vectors();
    match guests::testdev_read() {
        PROTECTED => protected(),
        NOT_PROTECTED => not_protected(),
        m => guests::fail(format_args!("the host says mode {m}")),
    }
}

fn discovery(features: u64) {
    let uid = call(VENDOR_HYP_CALL_UID, 0, 0, 0);
    if uid != KVM_UID {
        guests::fail(format_args!("VENDOR_HYP_CALL_UID: {uid:#x?}, expected KVM's {KVM_UID:#x?}"));
    }
    // The same by SMC: EL2 serves both conduits.
    let r = smccc::smc64(VENDOR_HYP_CALL_UID, [0; 17]);
    if r[..4] != KVM_UID {
        guests::fail(format_args!("VENDOR_HYP_CALL_UID by SMC: {:#x?}", &r[..4]));
    }
    let f = call(VENDOR_HYP_KVM_FEATURES, 0, 0, 0);
    if f != [features, 0, 0, 0] {
        guests::fail(format_args!("VENDOR_HYP_KVM_FEATURES: {f:#x?}, expected [{features:#x}, 0, 0, 0]"));
    }
}

fn protected() {
    // 1. Discovery.
    discovery(0x9d);
    expect("HYP_MEMINFO", HYP_MEMINFO, [0; 3], 4096);
    println!("guest: ok: discovery: KVM's UID (by HVC and SMC), features 0x9d, HYP_MEMINFO 4096");

    // 2. Share a page; the host reads it and replies in it; unshare it.
    let s = page(SHARE);
    fill(s, pattern);
    expect("MEM_SHARE", MEM_SHARE, [s as u64, 0, 0], SUCCESS);
    tell(cmd::SHARED, s as u64);
    if let Some((i, v)) = differs(s, reply) {
        guests::fail(format_args!("word {i} of the shared page is {v:#x} after the host's reply"));
    }
    println!("guest: ok: MEM_SHARE: the host read the page and its reply is here");
    expect("MEM_UNSHARE", MEM_UNSHARE, [s as u64, 0, 0], SUCCESS);
    tell(cmd::PRIVATE, s as u64);
    if let Some((i, v)) = differs(s, reply) {
        guests::fail(format_args!("word {i} of the unshared page is {v:#x} after the host's attempt"));
    }
    println!("guest: ok: MEM_UNSHARE: the host's read and write of the page abort, the page is unchanged");
    tell(cmd::EXITS, 1 << 24 | 1);

    // 3. Hostile use: INVALID_PARAMETER, and nothing changes.
    hostile();
    tell(cmd::EXITS, 2 << 24 | 2);
    // The refused MMIO_GUARD calls did not turn the guard on: this still reaches the host.
    if let Some(e) = abort_of(|| access(UNDECLARED, false)) {
        guests::fail(format_args!("read of {UNDECLARED:#x} before any MMIO_GUARD took {e:#x?}"));
    }
    tell(cmd::STRAY_MMIO, 1);
    println!("guest: ok: refused MMIO_GUARD calls left the guard off ({UNDECLARED:#x} still reaches the host)");

    // 4. vCPU 1 uses a page while this vCPU shares and unshares it.
    race();
    tell(cmd::EXITS, (2 + RACE_ROUNDS) << 24 | (2 + RACE_ROUNDS));

    // 5. The MMIO guard.
    guard();

    // 6. A page left shared through SYSTEM_OFF: the host reads it, then gets it back zeroed
    // when it destroys the VM.
    let l = page(LEFT);
    fill(l, pattern);
    expect("MEM_SHARE", MEM_SHARE, [l as u64, 0, 0], SUCCESS);
    tell(cmd::LEFT_SHARED, l as u64);
    tell(cmd::EXITS, (3 + RACE_ROUNDS) << 24 | (2 + RACE_ROUNDS));
    println!("guest: ok: protected guest done, powering off with a page shared");
}

fn hostile() {
    let p = page(HOSTILE) as u64;
    let n = page(NEVER) as u64;
    let bad = |what: &str, id: u32, x1: u64| expect(what, id, [x1, 0, 0], INVALID_PARAMETER);
    // The same page twice: the second is refused, the page stays shared.
    expect("MEM_SHARE", MEM_SHARE, [p, 0, 0], SUCCESS);
    bad("MEM_SHARE of a shared page", MEM_SHARE, p);
    tell(cmd::STILL_SHARED, p);
    expect("MEM_UNSHARE", MEM_UNSHARE, [p, 0, 0], SUCCESS);
    bad("MEM_UNSHARE of an unshared page", MEM_UNSHARE, p);
    bad("MEM_UNSHARE of a page never shared", MEM_UNSHARE, n);
    tell(cmd::PRIVATE, p);
    println!("guest: ok: MEM_SHARE twice and MEM_UNSHARE of an unshared page -> INVALID_PARAMETER");
    // Not RAM, or not the guest's.
    bad("MEM_SHARE of the UART", MEM_SHARE, guests::UART);
    bad("MEM_SHARE of the test device", MEM_SHARE, guests::TESTDEV);
    bad("MEM_SHARE past the VM's RAM", MEM_SHARE, RAM_END);
    bad("MEM_SHARE below the VM's RAM", MEM_SHARE, guests::RAM_BASE - 4096);
    bad("MEM_SHARE beyond the IPA space", MEM_SHARE, IPA_LIMIT);
    bad("MEM_SHARE of the last granule of the address space", MEM_SHARE, !0xFFF);
    bad("MEM_UNSHARE of the UART", MEM_UNSHARE, guests::UART);
    bad("MEM_UNSHARE beyond the IPA space", MEM_UNSHARE, IPA_LIMIT);
    println!("guest: ok: MEM_SHARE and MEM_UNSHARE of MMIO, past RAM and beyond the IPA space -> INVALID_PARAMETER");
    // Malformed.
    bad("MEM_SHARE unaligned", MEM_SHARE, n + 0x10);
    bad("MEM_SHARE at the last byte of a page", MEM_SHARE, n + 0xFFF);
    bad("MEM_UNSHARE unaligned", MEM_UNSHARE, p + 0x800);
    expect("MEM_SHARE with x2 set", MEM_SHARE, [n, 1, 0], INVALID_PARAMETER);
    expect("MEM_SHARE with x3 set", MEM_SHARE, [n, 0, 1 << 63], INVALID_PARAMETER);
    expect("MEM_UNSHARE with x2 set", MEM_UNSHARE, [n, 1, 0], INVALID_PARAMETER);
    expect("HYP_MEMINFO with x1 set", HYP_MEMINFO, [1, 0, 0], INVALID_PARAMETER);
    tell(cmd::PRIVATE, n);
    println!("guest: ok: unaligned addresses and x1/x2/x3 set -> INVALID_PARAMETER, nothing shared");
    // MMIO_GUARD of what is not MMIO.
    bad("MMIO_GUARD of a RAM page", MMIO_GUARD, n);
    bad("MMIO_GUARD of the first RAM page", MMIO_GUARD, guests::RAM_BASE);
    bad("MMIO_GUARD beyond the IPA space", MMIO_GUARD, IPA_LIMIT);
    bad("MMIO_GUARD unaligned", MMIO_GUARD, guests::UART + 4);
    expect("MMIO_GUARD with x2 set", MMIO_GUARD, [guests::UART, 1, 0], INVALID_PARAMETER);
    println!("guest: ok: MMIO_GUARD of RAM, beyond the IPA space, unaligned or with x2 set -> INVALID_PARAMETER");
}

fn race() {
    let r = page(RACE);
    if guests::cpu_on(1).is_err() {
        guests::fail(format_args!("CPU_ON of vCPU 1 failed"));
    }
    wait_for_pass(0);
    let mut seen = PASSES.load(Ordering::Acquire);
    for round in 0..RACE_ROUNDS {
        expect("MEM_SHARE in the race", MEM_SHARE, [r as u64, 0, 0], SUCCESS);
        expect("MEM_UNSHARE in the race", MEM_UNSHARE, [r as u64, 0, 0], SUCCESS);
        // Every 50 rounds, vCPU 1 must have made progress meanwhile: the two really overlap,
        // however the host's CPUs were scheduled.
        if round % 50 == 49 {
            wait_for_pass(seen);
            seen = PASSES.load(Ordering::Acquire);
        }
    }
    STOP.store(1, Ordering::Release);
    let mut spins = 0u64;
    while LAST_PASS.load(Ordering::Acquire) == 0 {
        spins += 1;
        if spins > 1_000_000 {
            guests::fail(format_args!("vCPU 1 did not finish its pass"));
        }
        guests::relax();
    }
    let last = LAST_PASS.load(Ordering::Acquire) - 1;
    if let Some((i, v)) = differs(r, |i| race_word(last, i)) {
        guests::fail(format_args!("word {i} of the race page is {v:#x}, vCPU 1 wrote {:#x}", race_word(last, i)));
    }
    println!("guest: ok: {RACE_ROUNDS} MEM_SHARE/MEM_UNSHARE rounds while vCPU 1 rewrote and checked the page; its data intact");
}

/// Waits (with exits) until vCPU 1 has made more than `seen` passes.
fn wait_for_pass(seen: u64) {
    let mut spins = 0u64;
    while PASSES.load(Ordering::Acquire) <= seen {
        spins += 1;
        if spins > 1_000_000 {
            guests::fail(format_args!("vCPU 1 made no progress past pass {seen}"));
        }
        guests::relax();
    }
}

/// vCPU 1: rewrites and checks [`RACE`] until vCPU 0 stops it. It runs on its own host CPU,
/// so it may keep it without exits.
fn secondary(index: u64) {
    if index != 1 {
        return;
    }
    let r = page(RACE);
    let mut pass = 0;
    loop {
        fill(r, |i| race_word(pass, i));
        if let Some((i, v)) = differs(r, |i| race_word(pass, i)) {
            guests::fail(format_args!("vCPU 1: word {i} of the race page is {v:#x} in pass {pass}"));
        }
        PASSES.store(pass + 1, Ordering::Release);
        if STOP.load(Ordering::Acquire) != 0 {
            break;
        }
        pass += 1;
    }
    LAST_PASS.store(pass + 1, Ordering::Release);
}

fn guard() {
    let ok = |what: &str, ipa: u64| expect(what, MMIO_GUARD, [ipa, 0, 0], SUCCESS);
    ok("MMIO_GUARD of the UART", guests::UART);
    ok("MMIO_GUARD of the test device", guests::TESTDEV);
    ok("MMIO_GUARD of the UART again", guests::UART);
    // The console (this line) and the test device (tell) still work.
    println!("guest: ok: MMIO_GUARD of the UART and the test device granules -> SUCCESS");
    tell(cmd::STRAY_MMIO, 1);
    // Undeclared: a synchronous external abort (data abort, EC 0x25; DFSC 0x10), no exit.
    for (what, ipa, write) in [("read", UNDECLARED, false), ("write", UNDECLARED + 8, true), ("read", guests::UART + 0x1000, false), ("write", guests::TESTDEV + 0x1000, true)] {
        match abort_of(|| access(ipa, write)) {
            Some((esr, far)) if esr >> 26 == 0x25 && esr & 0x3F == 0x10 && ((esr >> 6) & 1 == 1) == write && far == ipa => {
                println!("guest: ok: {what} of undeclared {ipa:#x} -> synchronous external abort (ESR_EL1 {esr:#x})");
            }
            other => guests::fail(format_args!("{what} of undeclared {ipa:#x}: {other:#x?}, expected a synchronous external abort")),
        }
    }
    tell(cmd::STRAY_MMIO, 1);
}

fn not_protected() {
    discovery(1);
    let p = page(SHARE) as u64;
    for (what, id, x1) in [("HYP_MEMINFO", HYP_MEMINFO, 0), ("MEM_SHARE", MEM_SHARE, p), ("MEM_UNSHARE", MEM_UNSHARE, p), ("MMIO_GUARD", MMIO_GUARD, guests::UART)] {
        expect(what, id, [x1, 0, 0], NOT_SUPPORTED);
    }
    println!("guest: ok: non-protected VM: KVM's UID, features 0x1, memory calls -> NOT_SUPPORTED");
    // No guard: this reaches the host.
    if let Some(e) = abort_of(|| access(UNDECLARED, false)) {
        guests::fail(format_args!("read of {UNDECLARED:#x} in a non-protected VM took {e:#x?}"));
    }
    tell(cmd::STRAY_MMIO, 1);
    tell(cmd::EXITS, 0);
    println!("guest: ok: non-protected guest done, powering off");
}
