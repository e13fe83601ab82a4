//! `vm-pkvm-guest-abi`: the host's side of the pKVM guest ABI (`shared_abi::guest`) guest
//! (`tests/guests/src/bin/vm-pkvm-guest-abi.rs`), which says what to check over the test
//! device: a page it shared is readable and writable through its backing page, a page it did
//! not share or took back is an abort, every `MEM_SHARE` / `MEM_UNSHARE` the guest made is one
//! exit to the host (after which the host probes the page), and with the MMIO guard on no
//! access to an undeclared granule reaches the host.
//!
//! A protected VM with 2 vCPUs runs it, then a non-protected one with 1, which gets
//! `NOT_SUPPORTED` for the memory services.

use crate::platform::Platform;
use crate::vm_scenarios::{destroy, start};
use crate::vmm::{self, Outcome, TestDevice, Vm, GUEST_RAM};
use crate::{fail, hyp, PROBE};
use core::sync::atomic::Ordering;
use host_kernel::hyp::client::Exited;
use shared_abi::msg::{exit, Exit};
use shared_abi::{HypercallId, PAGE_SIZE};

/// The guest's mode, its first read of the test device.
const PROTECTED: u64 = 1;
const NOT_PROTECTED: u64 = 2;

/// The guest's commands (bits [63:48] of a test-device write); the guest documents them.
mod cmd {
    pub const SHARED: u64 = 1;
    pub const PRIVATE: u64 = 2;
    pub const STILL_SHARED: u64 = 3;
    pub const EXITS: u64 = 4;
    pub const STRAY_MMIO: u64 = 5;
    pub const LEFT_SHARED: u64 = 6;
}

/// The MMIO granules the guest declares: its console and the test device.
const DECLARED: [u64; 2] = [0x0900_0000, 0x0b00_0000];

/// What the guest writes into a page before it shares it; the host's reply is its complement.
fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0AB1_0000
}

/// What the host tries to write into a page the guest did not share.
const MARKER: u64 = 0x4057_0000_ABAD;

/// Whether a probe's result is a synchronous external abort (EC 0x25, DFSC 0x10) of a data
/// access: a write if `write`.
fn is_external_abort(r: Option<(u64, u64)>, write: bool) -> bool {
    matches!(r, Some((esr, _)) if (esr >> 26) & 0x3F == 0x25 && esr & 0x3F == 0x10 && ((esr >> 6) & 1 == 1) == write)
}

/// Offset in the VM's backing memory of guest page `ipa`.
fn offset(vm: &Vm, ipa: u64) -> u64 {
    match ipa.checked_sub(GUEST_RAM).filter(|o| *o < vm.pages * PAGE_SIZE && o % PAGE_SIZE == 0) {
        Some(o) => o,
        None => fail::fail(format_args!("the guest named IPA {ipa:#x}, not a page of its RAM")),
    }
}

/// Whether the host can read the word at `off` of the VM's backing memory (or aborts).
fn host_reads(vm: &Vm, off: u64) -> Option<(u64, u64)> {
    PROBE.expect(|| {
        vmm::backing_word(vm, off);
    })
}

fn el2_serving(n: u64) {
    let r = hyp::call(HypercallId::Ping, &[n]);
    check!(r == Ok([n, 0, 0]), "EL2 stopped serving: PING {n} -> {r:?}");
}

/// The guest's test device: its mode, then its commands.
struct GuestAbi {
    mode: u64,
    mode_told: bool,
    /// Commands handled (what the guest reads back).
    handled: u64,
    /// `MEM_SHARE` and `MEM_UNSHARE` exits of vCPU 0, each followed by a probe of the page.
    shares: u64,
    unshares: u64,
    /// MMIO exits outside [`DECLARED`], and [`vmm::UNASSIGNED`] when the VM started.
    stray: u64,
    unassigned_before: usize,
    /// The page the guest left shared through `SYSTEM_OFF`.
    left: Option<u64>,
}

impl GuestAbi {
    fn new(mode: u64) -> Self {
        let unassigned_before = vmm::UNASSIGNED.load(Ordering::Relaxed);
        Self { mode, mode_told: false, handled: 0, shares: 0, unshares: 0, stray: 0, unassigned_before, left: None }
    }

    /// [`cmd::SHARED`]: the guest's pattern is there, the host's reply goes in; the pages
    /// around it, not shared, still abort.
    fn shared(&mut self, vm: &Vm, ipa: u64) {
        let off = offset(vm, ipa);
        let pa = vm.backing + off;
        let r = host_reads(vm, off);
        check!(r.is_none(), "host read of the shared page at {pa:#x}: {r:x?}");
        let bad = (0..512).map(|i| (i, vmm::backing_word(vm, off + 8 * i))).find(|&(i, v)| v != pattern(i));
        check!(bad.is_none(), "the shared page at {pa:#x} does not hold the guest's pattern: word {bad:x?}");
        for near in [off.wrapping_sub(PAGE_SIZE), off + PAGE_SIZE].into_iter().filter(|n| *n < vm.pages * PAGE_SIZE) {
            let r = host_reads(vm, near);
            check!(is_external_abort(r, false), "host read of {:#x}, next to the shared page: {r:x?}", vm.backing + near);
        }
        // The virtio devices' copy reads the shared page like a plain load.
        let mut words = [0u64; 4];
        // SAFETY: `src` is the page the guest shared; `dst` is `words`, 32 bytes.
        let r = unsafe { host_kernel::arch::guarded_copy(words.as_mut_ptr().cast(), (pa + 8) as *const u8, 32) };
        check!(r.is_ok() && words == core::array::from_fn(|i| pattern(i as u64 + 1)), "guarded copy from the shared page at {pa:#x}: {r:?}, {words:x?}");
        for i in 0..512 {
            // SAFETY: the page the guest shared: EL2 lets the host write it (an abort would be
            // a failure, reported by the kernel's exception handler).
            unsafe { core::ptr::write_volatile((pa + 8 * i) as *mut u64, !pattern(i)) };
        }
        ok!("MEM_SHARE of IPA {ipa:#x}: the host read the guest's pattern at {pa:#x} (plain loads and a guarded copy) and wrote its reply; the pages around it still abort");
    }

    /// [`cmd::PRIVATE`]: the host's read and write abort; EL2 goes on serving.
    fn private(&mut self, vm: &Vm, ipa: u64) {
        let off = offset(vm, ipa);
        let pa = vm.backing + off;
        let r = host_reads(vm, off);
        check!(is_external_abort(r, false), "host read of the guest's page at {pa:#x}: {r:x?}");
        // SAFETY: a deliberate write to a page EL2 must protect; the probe catches the abort.
        let r = PROBE.expect(|| unsafe { core::ptr::write_volatile((pa + 8) as *mut u64, MARKER) });
        check!(is_external_abort(r, true), "host write of the guest's page at {pa:#x}: {r:x?}");
        // The virtio devices' copy: the same aborts become errors, with no probe armed.
        let mut buf = [0u8; 24];
        // SAFETY: a deliberate copy from and to a page EL2 must protect; `guarded_copy`
        // survives the abort; `buf` is 24 bytes and MARKER's bytes 8.
        let (from, to) = unsafe {
            (
                host_kernel::arch::guarded_copy(buf.as_mut_ptr(), (pa + 8) as *const u8, buf.len()),
                host_kernel::arch::guarded_copy((pa + 8) as *mut u8, MARKER.to_le_bytes().as_ptr(), 8),
            )
        };
        let aborted = Err(host_kernel::arch::Aborted);
        check!(from == aborted && to == aborted, "guarded copies from and to the guest's page at {pa:#x}: {from:?}, {to:?}");
        el2_serving(self.handled);
        ok!("page IPA {ipa:#x} is the guest's alone: the host's read and write abort (synchronous external abort), a guarded copy either way fails; EL2 still serving");
    }
}

impl TestDevice for GuestAbi {
    fn exit(&mut self, vm: &Vm, e: &Exited) {
        match e.exit {
            // vCPU 0 is stopped at its call: the page stays as the call left it while the host
            // looks.
            Exit::MemShare { ipa } => {
                self.shares += 1;
                let r = host_reads(vm, offset(vm, ipa));
                check!(r.is_none(), "host read of IPA {ipa:#x} after MEM_SHARE exit {}: {r:x?}", self.shares);
            }
            Exit::MemUnshare { ipa } => {
                self.unshares += 1;
                let r = host_reads(vm, offset(vm, ipa));
                check!(is_external_abort(r, false), "host read of IPA {ipa:#x} after MEM_UNSHARE exit {}: {r:x?}", self.unshares);
            }
            Exit::Mmio { ipa, .. } if !DECLARED.contains(&(ipa & !(PAGE_SIZE - 1))) => self.stray += 1,
            _ => {}
        }
    }

    fn read(&mut self, _: &Vm) -> u64 {
        if !self.mode_told {
            self.mode_told = true;
            return self.mode;
        }
        self.handled
    }

    fn write(&mut self, vm: &Vm, v: u64) {
        let arg = v & ((1 << 48) - 1);
        match v >> 48 {
            cmd::SHARED => self.shared(vm, arg),
            cmd::PRIVATE => self.private(vm, arg),
            cmd::STILL_SHARED => {
                let r = host_reads(vm, offset(vm, arg));
                check!(r.is_none(), "host read of IPA {arg:#x}, still shared: {r:x?}");
                ok!("IPA {arg:#x} still shared after the refused second MEM_SHARE: the host reads it");
            }
            cmd::EXITS => {
                let (s, u) = (arg >> 24, arg & 0xFF_FFFF);
                let stats = (vmm::host_exits(vm.handle, exit::MEM_SHARE), vmm::host_exits(vm.handle, exit::MEM_UNSHARE));
                check!((self.shares, self.unshares) == (s, u) && stats == (s, u),
                    "the guest made {s} shares and {u} unshares; the host saw {} and {} exits, its statistics say {stats:?}", self.shares, self.unshares);
                ok!("{s} MEM_SHARE and {u} MEM_UNSHARE exits so far, one per call that succeeded");
            }
            cmd::STRAY_MMIO => {
                let unassigned = vmm::UNASSIGNED.load(Ordering::Relaxed) - self.unassigned_before;
                check!(self.stray == arg && unassigned as u64 == arg, "{} MMIO exits outside the declared granules ({unassigned} unassigned), the guest made {arg} that may reach the host", self.stray);
                ok!("{arg} MMIO exit(s) outside the console and test device, as many as the guest made that may reach the host");
            }
            cmd::LEFT_SHARED => {
                self.left = Some(arg);
                let r = host_reads(vm, offset(vm, arg));
                check!(r.is_none(), "host read of the page left shared at IPA {arg:#x}: {r:x?}");
                ok!("IPA {arg:#x} left shared: the host reads it");
            }
            c => fail::fail(format_args!("unknown command {c} from the guest ({v:#x})")),
        }
        self.handled += 1;
    }
}

pub fn guest_abi(plat: &Platform) {
    check!(plat.nr_cpus >= 2, "the guest's race needs 2 CPUs");
    let vm = start(plat, 2, true);
    let mut dev = GuestAbi::new(PROTECTED);
    let r = vmm::pinned::run(&vm, plat.nr_cpus, &mut dev);
    check!(r == Ok(Outcome::Off), "the protected guest ended {r:?}, expected SYSTEM_OFF");
    let stats = (vmm::host_exits(vm.handle, exit::MEM_SHARE), vmm::host_exits(vm.handle, exit::MEM_UNSHARE));
    check!(stats == (dev.shares, dev.unshares) && dev.shares > 0 && dev.unshares > 0, "exit statistics {stats:?}, the host's device saw {} and {}", dev.shares, dev.unshares);
    ok!("protected guest powered off; exit statistics: mem_share {}, mem_unshare {}, each probed (readable after a share, abort after an unshare)", stats.0, stats.1);
    // The page left shared is still the host's to read, guest data and all, after SYSTEM_OFF.
    let Some(left) = dev.left else { fail::fail(format_args!("the guest left no page shared")) };
    let off = offset(&vm, left);
    let bad = (0..512).map(|i| (i, vmm::backing_word(&vm, off + 8 * i))).find(|&(i, v)| v != pattern(i));
    check!(bad.is_none(), "the page left shared does not hold the guest's pattern: word {bad:x?}");
    ok!("the page left shared is readable after SYSTEM_OFF, the guest's data in it");
    destroy(&vm);
    // Destroy takes the shared page back from the host before the scrub: every page is the
    // host's again, and zero.
    let r = PROBE.expect(|| {
        for w in 0..vm.pages * PAGE_SIZE / 8 {
            let v = vmm::backing_word(&vm, w * 8);
            check!(v == 0, "word {w} of the destroyed VM's memory is {v:#x}");
        }
    });
    check!(r.is_none(), "host read of the destroyed VM's memory: {r:x?}");
    ok!("after VM_DESTROY all {} pages, the shared one included, are the host's and zero", vm.pages);

    let vm = start(plat, 1, false);
    let mut dev = GuestAbi::new(NOT_PROTECTED);
    let r = vmm::pinned::run(&vm, plat.nr_cpus, &mut dev);
    check!(r == Ok(Outcome::Off), "the non-protected guest ended {r:?}, expected SYSTEM_OFF");
    check!(dev.shares == 0 && dev.unshares == 0, "MEM_SHARE/MEM_UNSHARE exits from a non-protected VM: {} {}", dev.shares, dev.unshares);
    ok!("non-protected guest powered off, no MEM_SHARE or MEM_UNSHARE exit");
    destroy(&vm);
}
