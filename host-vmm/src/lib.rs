//! The host's VMM: creates VMs, loads guest images, gives them memory, runs their vCPUs through
//! one exit loop ([`run`]) with their devices on a bus, all through the hypercall client of
//! `host-kernel`, and places vCPUs on host CPUs: the scheduler ([`sched`]), or fixed placement
//! ([`pinned`]) for the scenarios that need it. The scenarios above it use it; it never uses
//! them.
//!
//! Guest physical map (IPA): RAM at [`GUEST_RAM`] (images load at RAM + 0x80000 as Linux's
//! boot protocol expects, or at their ELF load addresses), a PL011 at `0x0900_0000`, and a test
//! device at `0x0b00_0000` that scenarios use to talk to their guest. Any other MMIO address
//! reads as 0 and ignores writes (counted, as QEMU does for unassigned addresses).

#![cfg(target_os = "none")]
#![no_std]

mod bus;
pub mod linux;
pub mod pinned;
mod pl011;
pub mod run;
pub mod sched;
mod testdev;
mod timer;
mod vgic;

pub use run::HOST_RUN_STATUS;
pub use testdev::{NoDevice, Ran, Stepper, TestDevice, ValueDevice};

use host_kernel::cpu::{cpu_id, MAX_CPUS};
use host_kernel::{check, console, fail, gic, platform, println};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use host_kernel::hyp::client::VmHandle;
use shared_abi::msg::{exit, vm_flags, VmCreate};
use shared_abi::{reg, HypError, PAGE_SIZE};

/// Guest RAM base (IPA).
pub const GUEST_RAM: u64 = 0x4000_0000;
/// The test VMs' console UART (IPA).
const UART: u64 = 0x0900_0000;
/// The test device's register (IPA).
const TESTDEV: u64 = 0x0b00_0000;

/// Host RAM handed out for guest memory (bump allocation: simple, and plenty for tests).
static NEXT_FREE: AtomicU64 = AtomicU64::new(0x5000_0000);
/// Unassigned MMIO accesses by guests.
pub static UNASSIGNED: AtomicUsize = AtomicUsize::new(0);

/// Takes `pages` pages of host RAM for a guest.
pub fn alloc_pages(pages: u64) -> u64 {
    NEXT_FREE.fetch_add(pages * PAGE_SIZE, Ordering::SeqCst)
}

/// A VM as the host sees it.
pub struct Vm {
    /// EL2's handle.
    pub handle: u64,
    /// Host address of the guest RAM's backing pages.
    pub backing: u64,
    /// Guest RAM size in pages.
    pub pages: u64,
    /// Protected VM.
    pub protected: bool,
    /// Number of vCPUs.
    pub vcpus: u32,
}

impl Vm {
    /// The VM as EL2 knows it, for typed hypercalls.
    pub const fn el2(&self) -> VmHandle {
        VmHandle(self.handle)
    }
}

/// How a VM's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PSCI `SYSTEM_OFF`.
    Off,
    /// PSCI `SYSTEM_RESET` (the test guests' failure signal).
    Reset,
    /// Stopped by EL2: reason, IPA, and (for untagged memory) the physical page.
    Killed(u64, u64, u64),
}

/// Creates a VM with `vcpus` vCPUs and `mib` MiB of RAM (memory not given yet).
pub fn create(vcpus: u32, protected: bool, mib: u64) -> Result<Vm, HypError> {
    create_with_flags(vcpus, if protected { vm_flags::PROTECTED } else { 0 }, mib)
}

/// [`create`] with explicit [`vm_flags`].
pub fn create_with_flags(vcpus: u32, flags: u64, mib: u64) -> Result<Vm, HypError> {
    create_at(vcpus, flags, mib, alloc_pages(mib * 256))
}

/// [`create_with_flags`] with the VM's RAM backed by host memory at `backing`.
pub fn create_at(vcpus: u32, flags: u64, mib: u64, backing: u64) -> Result<Vm, HypError> {
    let protected = flags & vm_flags::PROTECTED != 0;
    let req = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, reserved: [0; 2] };
    let handle = VmHandle::create(&req)?.0;
    Ok(Vm { handle, backing, pages: mib * 256, protected, vcpus })
}

/// Copies `image` (ELF64 or raw) into the VM's backing memory; returns the entry IPA.
pub fn load(vm: &Vm, image: &[u8]) -> Result<u64, &'static str> {
    // SAFETY: the backing pages were just allocated for this VM and are still the host's.
    let mem = unsafe { core::slice::from_raw_parts_mut(vm.backing as *mut u8, (vm.pages * PAGE_SIZE) as usize) };
    host_vdev::loader::load_test_image(mem, GUEST_RAM, image)
}

/// Space for the guest's device tree, at the end of its RAM.
const DTB_SPACE: u64 = 64 * 1024;

/// Writes the guest's device tree at the end of its RAM, gives the VM its RAM (donated if
/// protected, shared otherwise) and points vCPU 0 at `entry` with `x0` = the device tree, as
/// Linux's boot protocol expects. Returns the device tree's IPA.
pub fn boot(vm: &Vm, entry: u64) -> Result<u64, HypError> {
    let size = vm.pages * PAGE_SIZE;
    let dtb_off = size.checked_sub(DTB_SPACE).ok_or(HypError::InvalidArgument)?;
    // SAFETY: the VM's backing pages, still the host's until VM_ADD_MEMORY below.
    let dtb = unsafe { core::slice::from_raw_parts_mut((vm.backing + dtb_off) as *mut u8, DTB_SPACE as usize) };
    host_vdev::fdt::test_guest_tree(dtb, GUEST_RAM, size, vm.vcpus, UART).ok_or(HypError::InvalidArgument)?;
    vm.el2().add_memory(vm.backing, GUEST_RAM, vm.pages)?;
    vm.el2().vcpu(0).set_reg(reg::PC, entry)?;
    vm.el2().vcpu(0).set_reg(reg::x(0), GUEST_RAM + dtb_off)?;
    Ok(GUEST_RAM + dtb_off)
}

/// Exit reasons the host counts per VM ([`exit`] values 1..=9).
const HOST_EXIT_NAMES: [&str; 11] = ["", "mmio", "wfx", "hypercall", "system_off", "system_reset", "irq", "killed", "vcpu_off", "sgi", "cpu_on"];

/// Kinds of injected interrupts ([`count_injection`]).
const INJECTION_NAMES: [&str; 4] = ["timer", "sgi", "uart", "other"];

/// Interrupts the VMM queued into list registers, per VM slot (the handle's low byte) and kind.
static INJECTED: [[AtomicU64; 4]; 16] = [const { [const { AtomicU64::new(0) }; 4] }; 16];
/// VM slots whose VM has a distributor model that injects interrupts, until its report.
static INJECTS: [AtomicBool; 16] = [const { AtomicBool::new(false) }; 16];

/// VM `handle` injects interrupts from a distributor model: its report counts them.
pub(crate) fn note_injects(handle: u64) {
    let slot = handle as usize & 0xFF;
    if let (Some(flag), Some(row)) = (INJECTS.get(slot), INJECTED.get(slot)) {
        row.iter().for_each(|n| n.store(0, Ordering::Relaxed));
        flag.store(true, Ordering::Relaxed);
    }
}

/// VM `handle` had an interrupt of `kind` ([`INJECTION_NAMES`]: timer, SGI, UART, other)
/// queued into a list register.
pub(crate) fn count_injection(handle: u64, kind: usize) {
    if let Some(n) = INJECTED.get(handle as usize & 0xFF).and_then(|row| row.get(kind)) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// The interrupts VM `handle` had injected, by kind, reset to zero; `None` if it has no
/// distributor model (or they were taken already).
fn take_injections(handle: u64) -> Option<[u64; 4]> {
    let slot = handle as usize & 0xFF;
    let row = INJECTED.get(slot)?;
    INJECTS.get(slot)?.swap(false, Ordering::Relaxed).then(|| core::array::from_fn(|i| row[i].swap(0, Ordering::Relaxed)))
}

/// Exits that reached the host, per VM slot (the handle's low byte) and reason.
static HOST_EXITS: [[AtomicU64; 11]; 16] = [const { [const { AtomicU64::new(0) }; 11] }; 16];

/// Exits with `reason` that VM `handle` made to the host so far (cleared by [`report_stats`]).
pub fn host_exits(handle: u64, reason: u32) -> u64 {
    HOST_EXITS.get(handle as usize & 0xFF).and_then(|row| row.get(reason as usize)).map_or(0, |n| n.load(Ordering::Relaxed))
}

pub(crate) fn count_exit(handle: u64, reason: u32) {
    if let Some(n) = HOST_EXITS.get(handle as usize & 0xFF).and_then(|row| row.get(reason as usize)) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints the VM's exits in the spirit of `kvm_stat`: what reached the host, by reason, and
/// what every vCPU took to EL2, by class (`VCPU_STATS`), then the same as one JSON line for
/// tests and benchmarks. Checks that every exit the host saw came from an exception EL2
/// counted. Clears the host's counts for the slot's next VM.
pub fn report_stats(vm: &Vm) {
    use shared_abi::msg::stats;
    let Some(row) = HOST_EXITS.get(vm.handle as usize & 0xFF) else { return };
    let host: [u64; 11] = core::array::from_fn(|i| row[i].swap(0, Ordering::Relaxed));
    let mut el2 = [0u64; stats::CLASSES];
    for v in 0..vm.vcpus as u64 {
        if let Ok(s) = vm.el2().vcpu(v).stats() {
            el2.iter_mut().zip(s.counts).for_each(|(a, b)| *a += b);
        }
    }
    let host_line = Fmt(|f| host.iter().enumerate().skip(1).filter(|(_, n)| **n > 0).try_for_each(|(i, n)| write!(f, " {} {n}", HOST_EXIT_NAMES[i])));
    println!("host: VM {:#x} exits to the host:{host_line}", vm.handle);
    let el2_line = Fmt(|f| el2.iter().enumerate().try_for_each(|(i, n)| write!(f, " {} {n}", stats::NAMES[i])));
    println!("host: VM {:#x} exceptions taken to EL2:{el2_line}", vm.handle);
    let host_json = Fmt(|f| host.iter().enumerate().skip(1).try_for_each(|(i, n)| write!(f, "{}\"{}\":{n}", if i > 1 { "," } else { "" }, HOST_EXIT_NAMES[i])));
    let el2_json = Fmt(|f| el2.iter().enumerate().try_for_each(|(i, n)| write!(f, "{}\"{}\":{n}", if i > 0 { "," } else { "" }, stats::NAMES[i])));
    // Interrupts the VMM injected (Linux VMs: their distributor model), by kind.
    let inj = take_injections(vm.handle);
    if let Some(inj) = inj {
        let line = Fmt(|f| INJECTION_NAMES.iter().zip(inj).try_for_each(|(name, n)| write!(f, " {name} {n}")));
        println!("host: VM {:#x} interrupts injected:{line}", vm.handle);
    }
    let inj_json = Fmt(|f| match inj {
        Some(inj) => {
            write!(f, ",\"injected\":{{")?;
            INJECTION_NAMES.iter().zip(inj).enumerate().try_for_each(|(i, (name, n))| write!(f, "{}\"{name}\":{n}", if i > 0 { "," } else { "" }))?;
            write!(f, "}}")
        }
        None => Ok(()),
    });
    println!("host: stats {{\"vm\":\"{:#x}\",\"host\":{{{host_json}}},\"el2\":{{{el2_json}}}{inj_json}}}", vm.handle);
    // Every exit the host saw but VCPU_OFF (answered without entering the guest) was an
    // exception EL2 took first.
    let trapped: u64 = host.iter().enumerate().filter(|(i, _)| *i != exit::VCPU_OFF as usize).map(|(_, n)| n).sum();
    let taken: u64 = el2.iter().sum();
    check!(vm.vcpus == 0 || trapped <= taken, "VM {:#x}: the host saw {trapped} exits but EL2 counted {taken} exceptions", vm.handle);
}

/// Formats with a closure (one `println!` per line keeps lines whole across CPUs).
struct Fmt<F: Fn(&mut core::fmt::Formatter<'_>) -> core::fmt::Result>(F);
impl<F: Fn(&mut core::fmt::Formatter<'_>) -> core::fmt::Result> core::fmt::Display for Fmt<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (self.0)(f)
    }
}

/// Destroys the VM, after reporting its exit statistics ([`report_stats`]).
pub fn destroy(vm: &Vm) -> Result<(), HypError> {
    report_stats(vm);
    vm.el2().destroy()
}

/// Reads one word of the VM's backing memory through the host's own mapping (it faults for a
/// protected VM's memory; callers arm the fault probe when they expect that).
pub fn backing_word(vm: &Vm, offset: u64) -> u64 {
    // SAFETY: the address is host RAM; whether the host may access it is EL2's decision, and
    // an abort is caught by the probe.
    unsafe { core::ptr::read_volatile((vm.backing + offset) as *const u64) }
}
