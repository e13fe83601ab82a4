//! The host's VMM: creates VMs, loads guest images, gives them memory, runs their vCPUs through
//! one exit loop ([`run`]) with their devices on a bus, all through the hypercall client of
//! `host-kernel`, and places vCPUs on host CPUs: the scheduler ([`sched`]), or fixed placement
//! ([`pinned`]) for the scenarios that need it. The scenarios above it use it; it never uses
//! them.
//!
//! Every VM is the one machine of [`host_vdev::vm_platform`] (its physical map, layout and
//! measurement): [`boot`] lays a guest out on it. The scenarios that step a vCPU exit by exit
//! ([`Stepper`]) also have the test device at [`vm_platform::TEST_DEVICE`] through which they
//! talk to their guest. Any other MMIO address reads as 0 and ignores writes there (counted in
//! [`UNASSIGNED`]); on the Linux VMs ([`linux`]) it is an external abort for the guest, as
//! under KVM.

#![cfg(target_os = "none")]
#![no_std]

mod bus;
pub mod linux;
pub mod pinned;
mod pl011;
pub mod run;
pub mod sched;
mod stats;
mod testdev;
mod timer;
mod vgic;
mod virtio;

pub use run::HOST_RUN_STATUS;
pub use stats::{host_exits, report_stats};
pub use testdev::{NoDevice, Ran, Stepper, TestDevice, ValueDevice};

use host_kernel::cpu::{cpu_id, MAX_CPUS};
use host_kernel::{check, console, fail, gic, platform, println};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use host_kernel::hyp::client::VmHandle;
use shared_abi::msg::{vm_flags, VmCreate};
use shared_abi::{reg, HypError, PAGE_SIZE};

/// The machine every VM is.
pub use host_vdev::vm_platform;
/// Guest RAM base (IPA).
pub const GUEST_RAM: u64 = vm_platform::GUEST_RAM;

/// Host RAM handed out for guest memory (bump allocation: simple, and plenty for tests).
static NEXT_FREE: AtomicU64 = AtomicU64::new(0x5000_0000);
/// Unassigned MMIO accesses by guests.
pub static UNASSIGNED: AtomicUsize = AtomicUsize::new(0);

/// Takes `pages` pages of host RAM for a guest: 2 MiB aligned when it is a whole number of
/// 2 MiB blocks (guest RAM, which EL2 then maps in blocks), page aligned otherwise (table
/// pages).
pub fn alloc_pages(pages: u64) -> u64 {
    const BLOCK: u64 = 2 << 20;
    let size = pages * PAGE_SIZE;
    let align = if size % BLOCK == 0 { BLOCK } else { PAGE_SIZE };
    let mut start = 0;
    // Cannot fail: the closure always returns `Some`.
    let _ = NEXT_FREE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |next| {
        start = next.next_multiple_of(align);
        Some(start + size)
    });
    start
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

/// Creates a VM with `vcpus` vCPUs and `mib` MiB of RAM (memory not given yet), and gives it
/// a first batch of stage-2 table pages ([`run::TABLE_BATCH`]).
pub fn create(vcpus: u32, protected: bool, mib: u64) -> Result<Vm, HypError> {
    create_with_flags(vcpus, if protected { vm_flags::PROTECTED } else { 0 }, mib)
}

/// [`create`] with explicit [`vm_flags`].
pub fn create_with_flags(vcpus: u32, flags: u64, mib: u64) -> Result<Vm, HypError> {
    create_at(vcpus, flags, mib, alloc_pages(mib * 256))
}

/// [`create_with_flags`] with the VM's RAM backed by host memory at `backing`.
pub fn create_at(vcpus: u32, flags: u64, mib: u64, backing: u64) -> Result<Vm, HypError> {
    create_sve_at(vcpus, flags, 0, mib, backing)
}

/// [`create_at`] with an SVE vector length of `sve_vl` bytes ([`vm_flags::SVE`] added when it
/// is not 0).
pub fn create_sve_at(vcpus: u32, flags: u64, sve_vl: u64, mib: u64, backing: u64) -> Result<Vm, HypError> {
    let protected = flags & vm_flags::PROTECTED != 0;
    let flags = if sve_vl != 0 { flags | vm_flags::SVE } else { flags };
    let req = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, sve_vl, reserved: 0 };
    let handle = VmHandle::create(&req)?.0;
    let vm = Vm { handle, backing, pages: mib * 256, protected, vcpus };
    // A first batch of stage-2 table pages; the exit loop gives more when EL2 asks.
    run::give_tables(vm.el2(), run::TABLE_BATCH)?;
    Ok(vm)
}

/// `VM_ADD_MEMORY` of each run, with the flags its kind asks for.
fn give_chunks(vm: &Vm, chunks: &[host_vdev::loader::Chunk]) -> Result<(), HypError> {
    use host_vdev::loader::ChunkKind;
    use shared_abi::measure::add_flags;
    for c in chunks {
        let flags = match c.kind {
            ChunkKind::Content => add_flags::MEASURE,
            ChunkKind::Empty => 0,
            ChunkKind::Handover => add_flags::HANDOVER,
        };
        vm.el2().add_memory(vm.backing + c.offset, GUEST_RAM + c.offset, c.pages, flags)?;
    }
    Ok(())
}

/// Lays the VM out on the one machine ([`vm_platform::lay_out`]: `kernel` where its format
/// says, `initrd`, and the device tree with `bootargs`, a virtio-blk transport if it has a
/// `disk`, and a restricted DMA pool if it is protected), gives the VM its RAM (donated if
/// protected, shared otherwise; what was loaded and the device tree measured, the handover
/// page below them, the rest empty) and points vCPU 0 at the entry with `x0` = the device
/// tree, as Linux's boot protocol expects.
///
/// # Errors
/// The layout's refusal (what does not fit or is not a kernel), or a failed hypercall.
pub fn boot(vm: &Vm, kernel: &[u8], initrd: &[u8], bootargs: &str, disk: bool) -> Result<vm_platform::Laid, &'static str> {
    // SAFETY: the VM's backing pages, allocated for it and still the host's until
    // VM_ADD_MEMORY below.
    let mem = unsafe { core::slice::from_raw_parts_mut(vm.backing as *mut u8, (vm.pages * PAGE_SIZE) as usize) };
    let devices = vm_platform::Devices { protected: vm.protected, disk };
    let laid = vm_platform::lay_out(mem, kernel, initrd, vm.vcpus, bootargs, devices)?;
    let failed = |_| "a hypercall to set up the VM failed";
    give_chunks(vm, &laid.chunks[..laid.count]).map_err(failed)?;
    vm.el2().vcpu(0).set_reg(reg::PC, laid.entry).map_err(failed)?;
    vm.el2().vcpu(0).set_reg(reg::x(0), laid.dtb).map_err(failed)?;
    Ok(laid)
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
