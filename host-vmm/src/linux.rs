//! The VMM: VMs of the one VM platform ([`host_vdev::vm_platform`]) with every device an
//! unmodified arm64 kernel needs (a GICv3, the architected timers, a PL011 with its interrupt)
//! and virtio devices (a console; a disk when one is staged: [`crate::virtio`]), booted the
//! standard way (a kernel, an initramfs, a command line and a device tree), their vCPUs run by
//! the host scheduler.
//!
//! The kernel is a Linux `Image`, one of the project's ELF test guests (`cargo xtask run
//! --guest`, the demo included), or a raw image such as kvm-unit-tests' `.flat` programs
//! ([`host_vdev::loader::KernelFormat`]).
//!
//! Place in the flow: [`run()`] builds the VMs from what `cargo xtask run --kernel ...` staged
//! (`shared_abi::layout`), queues their vCPUs and lets every host CPU run them
//! ([`crate::sched`]); the scheduler hands each vCPU of these VMs to `run_slot`, which runs
//! it through the VMM's exit loop ([`crate::run`]) as a `LinuxVcpu`: MMIO to the devices on
//! its bus, guest SGIs and timer deadlines to the distributor model, `WFI` to a sleep until an
//! interrupt or the vCPU's timer deadline, `VCPU_OFF` to a sleep until a sibling's `CPU_ON`.
//!
//! Guest physical map: GIC distributor at `0x0800_0000`, redistributors at `0x080A_0000`
//! (128 KiB per vCPU), PL011 at `0x0900_0000` (SPI 1), virtio-console at `0x0A00_0000` (SPI
//! 16), virtio-blk at `0x0A00_0200` (SPI 17, with a disk), RAM at `0x4000_0000`; a protected
//! VM's restricted DMA pool is 8 MiB of its RAM below the handover page
//! ([`host_vdev::vm_platform`]). A protected VM's devices touch only the pages it shared
//! (`MEM_SHARE` / `MEM_UNSHARE` exits, kept per VM in a bitmap).
//!
//! `disk=ADDR,SIZE` (the image `cargo xtask run --disk` staged) backs the virtio-blk of the
//! one VM (`vms=1` only: one image cannot be two VMs' disks); its writes stay in that memory.

use super::pl011::{GuestUart, UART, UART_INTID, UART_SIZE};
use super::timer::{self, Timers, PTIMER_INTID, VTIMER_INTID};
use super::vgic::VirtualGic;
use super::virtio::{BlkDev, BlkPort, ConsoleDev, ConsolePort, HvcLine, Shared, Transport, VmMemory};
use host_vdev::vm_platform::{ConsoleDevice, VIRTIO_BLK, VIRTIO_CONSOLE};
use host_vdev::virtio::guest_ram::GuestRam;
use host_vdev::virtio::mmio::{DmaPolicy, VirtioMmio};
use host_vdev::virtio::Gpa;
use super::{Outcome, Vm};
use crate::bus::{Bus, Device, Wake};
use crate::run::{self, Machine};
use core::ops::Range;
use host_kernel::hyp::client::{Exited, VmHandle};
use crate::platform::Platform;
use crate::{gic, println, sched};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use shared_abi::msg::{irq, vm_flags, Exit};
use shared_abi::{HypError, PAGE_SIZE};

/// Console input the VMM holds for `hvc0` at most (the rest waits in the host UART's FIFO).
const HVC_PENDING: usize = 64;
/// Most Linux VMs at once.
pub const MAX_VMS: usize = 2;
/// Most vCPUs per Linux VM.
pub const MAX_VCPUS: usize = 8;
/// The longest a vCPU in `WFI` sleeps while interrupts it has not deactivated are in its
/// list registers, in milliseconds.
const IN_FLIGHT_SLEEP_MS: u64 = 1;
/// The host's tick while Linux VMs have more vCPUs than the host has CPUs, in milliseconds.
const OVERCOMMIT_TICK_MS: u64 = 2;

/// One Linux VM's devices and per-vCPU VMM state.
pub struct LinuxVm {
    vm: Vm,
    /// A sibling turned the vCPU on (exit `CPU_ON`) since it last found itself off.
    turned_on: [AtomicBool; MAX_VCPUS],
    /// vCPUs (bit n) whose deliverable interrupts may have grown since their last complete
    /// flush into list registers (every [`Wake`] lands here): a run looks at the model only
    /// then, so an exit that changed nothing (most MMIO exits) costs no scan of it.
    to_flush: AtomicU32,
    /// Per vCPU: the SGIs EL2 was last told it has enabled (`VCPU_LINK_SGIS`), so that a
    /// sibling's write to the model that changes them wakes it.
    sgi_on: [AtomicU32; MAX_VCPUS],
    gic: VirtualGic,
    uart: GuestUart,
    console: ConsolePort,
    /// The device behind the guest's `/dev/console`, which gets the host's console input.
    console_device: ConsoleDevice,
    /// Console input read from the host's UART that `hvc0`'s receive buffers have not taken
    /// yet (the guest has not posted them, or they are full).
    hvc_pending: host_kernel::sync::Mutex<([u8; HVC_PENDING], usize)>,
    blk: Option<BlkPort>,
    /// The transports' frames (`virtio_ranges[..1]` without a disk).
    virtio_ranges: [Range<u64>; 2],
    /// `Some` for a protected VM: the pages it shared, which are all its devices may touch.
    shared: Option<&'static Shared>,
    vcpus: [host_kernel::sync::Mutex<VcpuState>; MAX_VCPUS],
}

/// What the VMM keeps of one vCPU between runs.
struct VcpuState {
    /// The answer to the MMIO access of the vCPU's last exit.
    mmio: run::MmioReply,
    /// Its timers' deadlines, from its last exit.
    timers: Timers,
    /// Its virtual timer interrupt is in a list register (queued, not yet deactivated).
    vtimer_queued: bool,
    /// The same for its EL1 physical timer's.
    ptimer_queued: bool,
    /// The timers' lines (virtual, physical) as last driven into the model.
    lines: (bool, bool),
    /// Interrupts in its list registers that it has not deactivated yet.
    in_flight: u32,
    /// Its virtual timer's link as EL2 last accepted it (`VCPU_LINK_VTIMER`): the
    /// configuration, `None` when EL2 delivers nothing itself.
    linked: Option<u32>,
    /// Its SGIs' link as EL2 last accepted it (`VCPU_LINK_SGIS`).
    sgis: Option<(u32, u128)>,
    /// The model's write count when both links were last brought up to date.
    links_at: u64,
}

impl VcpuState {
    const fn new() -> Self {
        Self { mmio: run::MmioReply::ZERO, timers: Timers::new(), vtimer_queued: false, ptimer_queued: false, lines: (false, false), in_flight: 0, linked: None, sgis: None, links_at: u64::MAX }
    }
}

/// Whether vCPUs' virtual timers are linked (`vtimer-link=off` turns it off: the VMM then
/// queues PPI 27 itself, as for every other interrupt, at the cost of two host round trips per
/// timer interrupt).
static LINK_VTIMER: AtomicBool = AtomicBool::new(true);

/// Whether vCPUs' SGIs are linked (`sgi-link=off` turns it off: every SGI is then an exit and
/// the model's to deliver).
static LINK_SGIS: AtomicBool = AtomicBool::new(true);

/// Whether guest writes to the PL011's data register are coalesced (`VM_MMIO_COALESCE`;
/// `uart-coalesce=off` turns it off: every write is then an exit). The console's other
/// registers, and every read, exit as before; a guest that polls `UARTFR` before each character
/// (Linux's console) still exits once per character, one exit instead of two.
static COALESCE_UART: AtomicBool = AtomicBool::new(true);

static VMS: [spin::Once<LinuxVm>; MAX_VMS] = [const { spin::Once::new() }; MAX_VMS];
/// Each VM slot's shared pages (no heap: the largest VM's bitmap, 48 KiB, per slot).
static SHARED: [Shared; MAX_VMS] = [const { Shared::new() }; MAX_VMS];
/// Set while Linux VMs run (the console's input goes to the first one).
static ACTIVE: AtomicBool = AtomicBool::new(false);
fn lookup(handle: u64) -> Option<&'static LinuxVm> {
    VMS.iter().filter_map(|v| v.get()).find(|v| v.vm.handle == handle)
}

/// What the boot arguments ask for (`cargo xtask run --kernel ...`).
struct Config {
    /// End of the host's RAM: guest memory must come from below it.
    ram_end: u64,
    mem_mib: u64,
    vcpus: u32,
    flags: u64,
    /// SVE vector length in bytes (`sve=N`), 0 without SVE.
    sve_vl: u64,
    vms: usize,
}

impl Config {
    fn from(plat: &Platform) -> Result<Self, &'static str> {
        let num = |k: &str, d: u64| plat.arg(k).map_or(Ok(d), |v| v.parse::<u64>().map_err(|_| "a boot argument is not a number"));
        let mem_mib = num("mem", 512)?;
        let vcpus = num("vcpus", 1)?;
        let vms = num("vms", 1)?;
        if !(16..=1536).contains(&mem_mib) || !(1..=MAX_VCPUS as u64).contains(&vcpus) || !(1..=MAX_VMS as u64).contains(&vms) {
            return Err("mem (16..=1536 MiB), vcpus (1..=8) or vms (1..=2) out of range");
        }
        let mut flags = 0;
        for (k, f) in [("protected", vm_flags::PROTECTED), ("mte", vm_flags::MTE), ("ptrauth", vm_flags::PTRAUTH)] {
            if num(k, 0)? != 0 {
                flags |= f;
            }
        }
        // The VM's SVE vector length in bytes (0: no SVE); EL2 checks it (ABI: VM_CREATE).
        let sve_vl = num("sve", 0)?;
        if sve_vl != 0 {
            flags |= vm_flags::SVE;
        }
        Ok(Self { ram_end: plat.ram.0 + plat.ram.1, mem_mib, vcpus: vcpus as u32, flags, sve_vl, vms: vms as usize })
    }
}

/// The `linux` scenario: boots the staged kernel in `vms=N` VMs and runs them on every host
/// CPU until each has powered off; `at_start` sees the VMs just before their vCPUs first run.
/// Fails the run if a VM did not power off cleanly.
pub fn run(plat: &Platform, at_start: fn(&[&Vm])) {
    let mut cfg = Config::from(plat).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: {e}")));
    LINK_VTIMER.store(plat.arg("vtimer-link") != Some("off"), Ordering::Relaxed);
    LINK_SGIS.store(plat.arg("sgi-link") != Some("off"), Ordering::Relaxed);
    COALESCE_UART.store(plat.arg("uart-coalesce") != Some("off"), Ordering::Relaxed);
    let mut disk = match plat.arg("disk") {
        None => None,
        Some(_) if cfg.vms > 1 => crate::fail::fail(format_args!("linux: disk= with vms={}: one image cannot be two VMs' disks", cfg.vms)),
        Some(_) => Some(plat.take_disk().unwrap_or_else(|| crate::fail::fail(format_args!("linux: disk= names no image staged where shared_abi::layout says")))),
    };
    if disk.is_some() {
        // Guest memory stays below the staged image.
        cfg.ram_end = cfg.ram_end.min(shared_abi::layout::GUEST_DISK_STAGING);
    }
    let kernel = plat.guest_image().unwrap_or_else(|| crate::fail::fail(format_args!("linux: no kernel staged (guest=ADDR,SIZE)")));
    let initrd = plat.staged("initrd").unwrap_or(&[]);
    // No command line staged: `cargo xtask` was given an empty one (a kvm-unit-tests program
    // without arguments, where every bootargs word would be one), so the tree's bootargs are
    // empty too, as `cargo xtask measure` lays the VM out.
    let cmdline = plat.staged("cmdline").map_or("", |c| core::str::from_utf8(c).unwrap_or("console=ttyAMA0").trim_end_matches(['\0', '\n']));
    println!(
        "host: linux: {} VM(s), {} vCPUs, {} MiB, flags {:#x}{}; kernel {} bytes, initramfs {} bytes, disk {} bytes",
        cfg.vms,
        cfg.vcpus,
        cfg.mem_mib,
        cfg.flags,
        SveVl(cfg.sve_vl),
        kernel.len(),
        initrd.len(),
        disk.as_ref().map_or(0, |d| d.len())
    );
    for (n, slot) in VMS.iter().enumerate().take(cfg.vms) {
        let disk = disk.take();
        let vm = build(&cfg, kernel, initrd, cmdline, disk.is_some()).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: VM {n}: {e}")));
        let prefix = (cfg.vms > 1).then_some(n);
        let nr = cfg.vcpus as usize;
        let gic = VirtualGic::new(nr).unwrap_or_else(|_| crate::fail::fail(format_args!("linux: {nr} vCPUs")));
        slot.call_once(|| LinuxVm::new(vm, gic, prefix, &SHARED[n], disk, ConsoleDevice::from_bootargs(cmdline)));
    }
    // Every VM built above, in order (the padding past `cfg.vms` is never used).
    let all: [&Vm; MAX_VMS] = core::array::from_fn(|n| &VMS[n.min(cfg.vms - 1)].get().unwrap_or_else(|| crate::fail::halt()).vm);
    let vms = &all[..cfg.vms];
    for vm in vms {
        queue(vm).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: run queue: {e:?}")));
    }
    ACTIVE.store(true, Ordering::SeqCst);
    sched::SLEEP_WHEN_IDLE.store(true, Ordering::SeqCst);
    // More vCPUs than host CPUs: a shorter time slice. A vCPU that spin-waits for a sibling
    // which is not running (Linux's cross-CPU calls, stop_machine) otherwise burns a whole
    // tick; WFE, which Linux spins on, does not trap on QEMU 7.2. (Measured, `cargo xtask
    // bench`: a 2-vCPU boot on 1 host CPU 1.256x bare with 10 ms, 1.122x with 2 ms.)
    if cfg.vcpus as usize * cfg.vms > plat.nr_cpus {
        gic::set_default_tick_ms(plat, OVERCOMMIT_TICK_MS);
    }
    let cpus = (1u64 << plat.nr_cpus) - 1;
    at_start(vms);
    sched::run(vms, cpus);
    // Back to the host's defaults for whatever runs next in this boot: polling idle loops,
    // the default tick, the timers' PPIs off on this CPU (each other CPU turns its own off at
    // its next Linux run; none follows, and a disabled PPI only costs latency).
    ACTIVE.store(false, Ordering::SeqCst);
    sched::SLEEP_WHEN_IDLE.store(false, Ordering::SeqCst);
    gic::set_default_tick_ms(plat, gic::DEFAULT_TICK_MS);
    gic::set_timer_ppis(false, false);
    let mut clean = true;
    for (n, vm) in vms.iter().enumerate() {
        if let Some(l) = lookup(vm.handle) {
            l.uart.flush_final();
            let c = {
                let mut c = l.console.lock();
                c.device_mut().output_mut().flush_final();
                c.device().stats()
            };
            println!("host: linux VM {n} virtio-console: {} bytes in, {} bytes out", c.rx_bytes, c.tx_bytes);
            if n == 0 {
                println!("host: linux VMs: {} coalesced MMIO writes applied", crate::run::COALESCED.load(Ordering::Relaxed));
            }
            if let Some(b) = &l.blk {
                let s = b.lock().device().stats();
                println!("host: linux VM {n} virtio-blk: {} requests ok, {} failed; {} sectors read, {} written", s.ok, s.ioerr + s.unsupp, s.sectors_read, s.sectors_written);
                // What the guest left on the disk, as the host's copy holds it (a test marker).
                const MARKER: &[u8] = b"PKVM-EXT4-WRITTEN-BY-THE-GUEST";
                if b.lock().device().disk().bytes().windows(MARKER.len()).any(|w| w == MARKER) {
                    println!("host: linux VM {n} disk: the host's copy holds the file the guest wrote (PKVM-EXT4-WRITTEN-BY-THE-GUEST)");
                }
            }
        }
        let outcome = sched::outcome(vm);
        println!("host: linux VM {n} ({:#x}) ended: {outcome:?}", vm.handle);
        if let Ok(Some(m)) = vm.el2().measurement() {
            let mut hex = [0u8; 64];
            for (i, b) in m.iter().enumerate() {
                hex[2 * i..2 * i + 2].copy_from_slice(&[b"0123456789abcdef"[(b >> 4) as usize], b"0123456789abcdef"[(b & 15) as usize]]);
            }
            println!("host: linux VM {n} measurement {}", core::str::from_utf8(&hex).unwrap_or("?"));
        }
        clean &= outcome == Some(Ok(Outcome::Off));
        if let Err(e) = sched::destroy(vm) {
            crate::fail::fail(format_args!("linux: VM_DESTROY: {e:?}"));
        }
    }
    if !clean {
        crate::fail::fail(format_args!("linux: a VM did not power off cleanly"));
    }
}

/// Creates one VM: its RAM filled with the kernel, initramfs and device tree (with a
/// virtio-blk transport if it has a `disk`), then given to it (donated if protected), vCPU 0
/// at the kernel's entry with `x0` = the device tree.
fn build(cfg: &Config, kernel: &[u8], initrd: &[u8], cmdline: &str, disk: bool) -> Result<Vm, &'static str> {
    let ram = cfg.mem_mib << 20;
    let backing = super::alloc_pages(ram / PAGE_SIZE);
    if backing.checked_add(ram).is_none_or(|end| end > cfg.ram_end) {
        return Err("not enough host RAM for the guest's memory (mem x vms)");
    }
    let vm = super::create_sve_at(cfg.vcpus, cfg.flags, cfg.sve_vl, cfg.mem_mib, backing).map_err(|e| match e {
        HypError::Denied if cfg.sve_vl != 0 => "VM_CREATE refused the SVE vector length (not one every CPU gives: HYP_INFO's sve_vls)",
        _ => "VM_CREATE failed",
    })?;
    // A Linux `Image`, one of the project's ELF test guests (benchmarks and hostile guests
    // that need the devices), or a raw image (a kvm-unit-tests program, at RAM + 0x80000):
    // laid out as `cargo xtask measure --kernel` lays it out, so the measurement can be
    // computed offline.
    super::boot(&vm, kernel, initrd, cmdline, disk)?;
    if COALESCE_UART.load(Ordering::Relaxed) {
        // `UARTDR` through `UARTCR`: writes that need no answer (the model is always ready to
        // send). A read exits, and so sees every earlier write applied; what else waits for the
        // next exit of any vCPU is bounded and keeps the writes' order: an `LCR_H` write's
        // effect on the receive trigger (and so on the line), a `CR` write's on whether host
        // input is taken. Linux's console writes `UARTCR` twice around every message.
        // `UARTIMSC` and `UARTICR`, which move the interrupt line, stay outside.
        crate::run::coalesce(vm.el2(), crate::pl011::UART, crate::pl011::COALESCED_LEN).map_err(|_| "VM_MMIO_COALESCE failed")?;
    }
    Ok(vm)
}

/// `, SVE N bits` for a VM with SVE of `N / 8` bytes, nothing otherwise.
struct SveVl(u64);

impl core::fmt::Display for SveVl {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => Ok(()),
            vl => write!(f, ", SVE {} bits", vl * 8),
        }
    }
}

/// Moves the console's input to the first Linux VM's console, its PL011 or its `hvc0`
/// ([`ConsoleDevice`]), from idle loops and `IRQ` exits.
pub fn poll_input() {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let Some(l) = VMS[0].get() else { return };
    let mut wake = 0;
    match l.console_device {
        ConsoleDevice::Uart => l.uart.take_input(crate::console::try_read, |level| wake = l.gic.set_level(0, UART_INTID, level)),
        ConsoleDevice::Hvc => {
            // One poller at a time: input stays in order.
            let Some(mut p) = l.hvc_pending.try_lock() else { return };
            let (buf, len) = &mut *p;
            while *len < HVC_PENDING {
                let Some(b) = crate::console::try_read() else { break };
                buf[*len] = b;
                *len += 1;
            }
            if *len > 0 {
                let (taken, w) = l.console.receive(&l.memory(), &l.gic, &buf[..*len]);
                buf.copy_within(taken..*len, 0);
                *len -= taken;
                wake = w;
            }
        }
    }
    l.wake(wake, usize::MAX);
}

/// Queues every vCPU of Linux VM `vm` with the scheduler, which gives them to `run_slot`;
/// idle host CPUs then poll the console for the first Linux VM ([`poll_input`]).
///
/// # Errors
/// The queue's refusal.
pub fn queue(vm: &Vm) -> Result<(), host_sched::Error> {
    sched::set_idle_poll(poll_input);
    sched::add_run_by(vm, &LinuxVcpus)
}

/// The scheduler's way to the Linux VMs' vCPUs.
struct LinuxVcpus;

impl sched::Runner for LinuxVcpus {
    fn run_slot(&self, slot: usize, vm: u64, vcpu: u64) {
        run_slot(slot, vm, vcpu);
    }
}

/// How a vCPU's time on this host CPU ended.
enum Yield {
    /// It waits for an interrupt or its timer deadline (counter ticks).
    Block(u64),
    /// It lost the CPU to a tick (other vCPUs wait).
    Preempted,
    /// Its VM ended (`Some`: with this outcome; `None`: another vCPU recorded it).
    Done(Option<sched::VmOutcome>),
}

/// Runs vCPU `vcpu` of Linux VM `handle` (run-queue slot `slot`) until it waits, is
/// preempted, or its VM ends.
fn run_slot(slot: usize, handle: u64, vcpu: u64) {
    let Some(l) = lookup(handle) else {
        sched::end_slot(slot, handle, None);
        return;
    };
    let v = vcpu as usize % MAX_VCPUS;
    let mut st = l.vcpus[v].lock();
    // A tick or kick that arrived while this CPU was not running a guest is not this vCPU's.
    gic::take_preempt();
    let why = loop {
        match l.step(v, &mut st) {
            Ok(None) => {}
            Ok(Some(y)) => break y,
            Err(HypError::NotRunnable) => break Yield::Done(None),
            Err(e) => break Yield::Done(Some(Err(e))),
        }
        if sched::stopping(slot) {
            break Yield::Done(None);
        }
    };
    drop(st);
    match why {
        Yield::Block(until) => {
            l.uart.flush();
            l.console.lock().device_mut().output_mut().flush();
            sched::block(slot, until);
            // An interrupt made pending, or a `CPU_ON` served, between the exit and the block
            // found the vCPU still running (its sender kicked this CPU, not the queue): look
            // again now that it is blocked, or it would sleep through it.
            if l.gic.has_deliverable(v) || l.turned_on[v].swap(false, Ordering::SeqCst) {
                sched::wake(handle, vcpu);
            }
        }
        Yield::Preempted => sched::yield_slot(slot),
        Yield::Done(r) => {
            l.uart.flush();
            sched::end_slot(slot, handle, r);
        }
    }
}

impl LinuxVm {
    /// A VM's devices at reset; `prefix`: its console lines carry `[vmN]`; `shared`: its
    /// slot's shared-page bitmap (cleared here); `disk`: its virtio-blk's content, if any.
    fn new(vm: Vm, gic: VirtualGic, prefix: Option<usize>, shared: &'static Shared, disk: Option<&'static mut [u8]>, console_device: ConsoleDevice) -> Self {
        crate::stats::note_injects(vm.handle);
        shared.clear();
        let policy = if vm.protected { DmaPolicy::Restricted } else { DmaPolicy::Open };
        let console: ConsoleDev = VirtioMmio::new(host_vdev::virtio::console::Console::new(HvcLine::new(prefix, console_device == ConsoleDevice::Hvc)), policy);
        let blk = disk.map(|d| {
            let model: BlkDev = VirtioMmio::new(host_vdev::virtio::blk::Blk::new(host_vdev::virtio::blk::RamDisk::new(d), b"pkvm-rs-disk"), policy);
            Transport::new(model, VIRTIO_BLK)
        });
        let console = Transport::new(console, VIRTIO_CONSOLE);
        let virtio_ranges = [console.range(), blk.as_ref().map_or(0..0, |b| b.range())];
        Self {
            shared: vm.protected.then_some(shared),
            vm,
            turned_on: [const { AtomicBool::new(false) }; MAX_VCPUS],
            to_flush: AtomicU32::new(u32::MAX),
            sgi_on: [const { AtomicU32::new(0) }; MAX_VCPUS],
            gic,
            uart: GuestUart::new(prefix),
            console,
            console_device,
            hvc_pending: host_kernel::sync::Mutex::new(([0; HVC_PENDING], 0)),
            blk,
            virtio_ranges,
            vcpus: [const { host_kernel::sync::Mutex::new(VcpuState::new()) }; MAX_VCPUS],
        }
    }

    /// The VM's RAM as its devices may reach it.
    fn memory(&self) -> VmMemory<'static> {
        let ram = GuestRam { base: Gpa(crate::GUEST_RAM), size: self.vm.pages * PAGE_SIZE, shared: self.shared };
        VmMemory { backing: self.vm.backing, ram }
    }

    /// A `MEM_SHARE` (`share`) or `MEM_UNSHARE` exit for the granule at `ipa` (EL2 has
    /// already changed the host's access): recorded for the devices of a protected VM.
    fn shared_changed(&self, ipa: u64, share: bool) {
        let Some(shared) = self.shared else { return };
        let Some(page) = ipa.checked_sub(crate::GUEST_RAM).map(|o| o / PAGE_SIZE).filter(|&p| p < self.vm.pages) else { return };
        // Inside the VM's RAM, which the bitmap covers (`SHARED_WORDS`): cannot fail.
        let _ = if share { shared.share(page) } else { shared.unshare(page) };
    }

    /// One `VCPU_RUN` of vCPU `v` and its exit: `Some` when the vCPU leaves this host CPU.
    fn step(&self, v: usize, st: &mut VcpuState) -> Result<Option<Yield>, HypError> {
        let mut mmio = core::mem::take(&mut st.mmio);
        let r = run::step(&mut LinuxVcpu { l: self, v, st }, &mut mmio);
        st.mmio = mmio;
        r
    }

    /// The timers' lines of vCPU `v` at counter value `now`, driven into the model where they
    /// changed.
    fn set_timer_lines(&self, v: usize, st: &mut VcpuState, now: u64) {
        let (vt, pt) = st.timers.levels(now);
        if (vt, pt) == st.lines {
            return;
        }
        let mut wake = 0;
        if vt != st.lines.0 {
            wake |= self.gic.set_level(v, VTIMER_INTID, vt);
        }
        if pt != st.lines.1 {
            wake |= self.gic.set_level(v, PTIMER_INTID, pt);
        }
        st.lines = (vt, pt);
        self.to_flush.fetch_or(wake, Ordering::SeqCst);
    }

    /// Before a run: links vCPU `v`'s virtual timer while the guest has its PPI enabled, with
    /// the PPI's priority and group as the guest set them, and unlinks it otherwise (told to
    /// EL2 only when that changes). The model keeps driving the line, for the guest's reads of
    /// the pending state, but no longer queues the PPI while linked.
    ///
    /// `Ok(false)` while EL2 cannot link yet (the model's vINTID 27 still in a list register).
    fn link_vtimer(&self, v: usize, st: &mut VcpuState) -> Result<bool, HypError> {
        let want = if LINK_VTIMER.load(Ordering::Relaxed) {
            // Five priority bits, as `flush` queues them (EL2 refuses the others on QEMU).
            self.gic.link_config(v, VTIMER_INTID).map(|(priority, group1)| irq::config(priority & 0xF8, group1, 0, false))
        } else {
            None
        };
        if want == st.linked {
            return Ok(true);
        }
        match VmHandle(self.vm.handle).vcpu(v as u64).link_vtimer(want) {
            Ok(()) => {}
            // vINTID 27 is still queued the old way: linked once the guest has finished it.
            Err(HypError::Busy) => return Ok(false),
            // EL2 links no timer (a CPU without its redistributor): the model delivers them.
            Err(HypError::Denied) => {
                LINK_VTIMER.store(false, Ordering::Relaxed);
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        self.gic.set_linked(v, VTIMER_INTID, want.is_some());
        st.linked = want;
        // Unlinked with the line high: the model's to queue now.
        self.to_flush.fetch_or(1 << v, Ordering::SeqCst);
        Ok(true)
    }

    /// After vCPU `me` wrote the distributor model: a sibling whose SGIs the guest enabled or
    /// disabled since they were linked is woken, so that its next run links them anew (EL2
    /// may hold an SGI it now may take, and a sibling asleep in `WFI` would not see it).
    fn relink_siblings(&self, me: usize) {
        let mut wake = 0;
        for t in (0..self.vm.vcpus as usize).filter(|&t| t != me) {
            let on = self.gic.sgi_link_config(t).map_or(0, |c| c.0 & 0xFFFF);
            if self.sgi_on[t].load(Ordering::SeqCst) != on {
                wake |= 1 << t;
            }
        }
        self.wake(wake, me);
    }

    /// Before a run: links vCPU `v`'s SGIs with their configuration in the model, told to EL2
    /// when it changed. Linked, a sibling's SGI to it while it runs is EL2's to deliver; the
    /// `SGI` exits still bring the model those sent while it does not run.
    fn link_sgis(&self, v: usize, st: &mut VcpuState) -> Result<bool, HypError> {
        let want = if LINK_SGIS.load(Ordering::Relaxed) { self.gic.sgi_link_config(v) } else { None };
        if want == st.sgis {
            return Ok(true);
        }
        match VmHandle(self.vm.handle).vcpu(v as u64).link_sgis(want) {
            Ok(held) => {
                // Unlinked: what EL2 still held is the model's now.
                for n in (0..16).filter(|n| held & 1 << n != 0) {
                    self.wake(self.gic.send_sgi(1 << v, n as u8), v);
                }
            }
            Err(HypError::Busy) => return Ok(false),
            Err(HypError::Denied) => {
                LINK_SGIS.store(false, Ordering::Relaxed);
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        st.sgis = want;
        self.sgi_on[v].store(want.map_or(0, |c| c.0 & 0xFFFF), Ordering::SeqCst);
        Ok(true)
    }

    /// Before a run: the timers' lines, then, if its deliverable set may have grown,
    /// everything vCPU `v` may take into its list registers.
    fn deliver(&self, v: usize, st: &mut VcpuState, now: u64) -> Result<(), HypError> {
        self.set_timer_lines(v, st, now);
        let bit = 1 << v;
        // Cleared first: a Wake for this vCPU from now on marks it again.
        if self.to_flush.fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
            return Ok(());
        }
        let complete = self.gic.flush(self.vm.handle, v, |intid| {
            st.in_flight += 1;
            match intid {
                VTIMER_INTID => st.vtimer_queued = true,
                PTIMER_INTID => st.ptimer_queued = true,
                _ => {}
            }
            let kind = match intid {
                VTIMER_INTID | PTIMER_INTID => 0,
                0..=15 => 1,
                UART_INTID => 2,
                _ => 3,
            };
            crate::stats::count_injection(self.vm.handle, kind);
        })?;
        if !complete {
            // No list register free: the rest waits for one, at a later run.
            self.to_flush.fetch_or(bit, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Marks the vCPUs in `wake` for a flush, and wakes or kicks them but `me` (which flushes
    /// its own before its next run).
    fn wake(&self, wake: Wake, me: usize) {
        if wake == 0 {
            return;
        }
        self.to_flush.fetch_or(wake, Ordering::SeqCst);
        let mut w = wake;
        while w != 0 {
            let v = w.trailing_zeros() as usize;
            w &= w - 1;
            if v != me && v < self.vm.vcpus as usize {
                sched::wake(self.vm.handle, v as u64);
            }
        }
    }
}

/// A Linux VM's vCPU in the exit loop ([`run::step`]): before each run its interrupts queued
/// and the host's timer PPIs set; after each exit its timer deadlines and collected
/// deactivations; on its bus the vGIC and the PL011; SGIs, `WFI`, `CPU_ON` and `CPU_OFF`
/// emulated with the distributor model and the scheduler.
struct LinuxVcpu<'a> {
    l: &'a LinuxVm,
    v: usize,
    st: &'a mut VcpuState,
}

impl Machine for LinuxVcpu<'_> {
    type Step = Option<Yield>;

    // As under KVM: the guest's own to handle (kvm-unit-tests expects it), nothing for the VMM.
    const ABORT_UNASSIGNED: bool = true;

    fn vcpu(&self) -> (&Vm, u64) {
        (&self.l.vm, self.v as u64)
    }

    fn before_run(&mut self) -> Result<(), HypError> {
        let st = &mut *self.st;
        let now = gic::counter();
        // EL2's copies of the configuration follow the guest's writes to the model.
        let writes = self.l.gic.writes();
        if writes != st.links_at && self.l.link_vtimer(self.v, st)? & self.l.link_sgis(self.v, st)? {
            st.links_at = writes;
        }
        self.l.deliver(self.v, st, now)?;
        // The physical PPIs behind the timers end the run at their deadlines, unless the
        // virtual interrupt is already queued or high (`timer::physical_enabled`). A linked
        // virtual timer's PPI 27 is EL2's to take while the guest runs: always enabled.
        gic::set_timer_ppis(
            st.linked.is_some() || timer::physical_enabled(st.timers.vtimer, st.vtimer_queued, now),
            timer::physical_enabled(st.timers.ptimer, st.ptimer_queued, now),
        );
        Ok(())
    }

    fn after_exit(&mut self, e: &Exited) -> Result<(), HypError> {
        let (st, v) = (&mut *self.st, self.v);
        st.timers = Timers { vtimer: e.record.vtimer_deadline, ptimer: e.record.ptimer_deadline };
        if e.eoi() {
            let wake = self.l.gic.collect_eois(self.l.vm.handle, v, |intid| {
                st.in_flight = st.in_flight.saturating_sub(1);
                match intid {
                    VTIMER_INTID => st.vtimer_queued = false,
                    PTIMER_INTID => st.ptimer_queued = false,
                    _ => {}
                }
            })?;
            self.l.wake(wake, v);
        }
        Ok(())
    }

    // Inlined into the exit loop (`run::step`), where every MMIO exit is served: called from
    // `apply_coalesced` too, it was otherwise kept out of line, at a call's cost on every exit.
    #[inline(always)]
    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> Option<u64> {
        let (l, v) = (self.l, self.v);
        let mut gic = &l.gic;
        let mut uart = UartPort { uart: &l.uart, gic: &l.gic, vcpu: v };
        let mut virtio = VirtioPorts { l, vcpu: v };
        let writes = l.gic.writes();
        // The UART first: the console's accesses are most of a Linux boot's.
        let (value, wake) = Bus([&mut uart, &mut gic, &mut virtio]).access(ipa, size, write)?;
        l.wake(wake, v);
        if l.gic.writes() != writes {
            l.relink_siblings(v);
        }
        Some(value)
    }

    fn exit(&mut self, e: &Exited) -> Option<Yield> {
        let (l, st, v) = (self.l, &mut *self.st, self.v);
        let handle = l.vm.handle;
        match e.exit {
            // Served on the bus.
            Exit::Mmio { .. } => None,
            Exit::Sgi { intid, targets, .. } => {
                let wake = l.gic.send_sgi(targets as u8, intid);
                l.wake(wake, v);
                None
            }
            Exit::Wfx => {
                // Woken by what is already due; otherwise asleep until the earlier timer
                // deadline or an interrupt ([`LinuxVm::wake`]).
                let now = gic::counter();
                l.set_timer_lines(v, st, now);
                // A guest's WFI with an interrupt pending in a list register does not trap
                // (QEMU checks for pending work first); one still in flight may be active, or
                // below the guest's priority mask, and the vCPU may sleep. Even so such a sleep
                // is capped: the host cannot see the list registers' state without a call.
                // A linked timer already high is the same: EL2 may hold it in a list register,
                // or wait for a free one.
                let held = st.in_flight > 0 || (st.linked.is_some() && st.lines.0);
                let cap = if held { now.saturating_add(IN_FLIGHT_SLEEP_MS * gic::ticks_per_ms()) } else { u64::MAX };
                (!l.gic.has_deliverable(v)).then(|| Yield::Block(st.timers.next_after(now).min(cap)))
            }
            Exit::Irq => {
                gic::handle_pending();
                poll_input();
                (gic::take_preempt() && sched::others_ready()).then_some(Yield::Preempted)
            }
            // Off (never started, or PSCI `CPU_OFF`): asleep until a sibling's `CPU_ON`.
            Exit::VcpuOff => (!l.turned_on[v].swap(false, Ordering::SeqCst)).then_some(Yield::Block(host_sched::NEVER)),
            Exit::CpuOn { vcpu } => {
                let t = vcpu as usize;
                if t < l.vm.vcpus as usize {
                    l.turned_on[t].store(true, Ordering::SeqCst);
                    sched::wake(handle, t as u64);
                }
                None
            }
            // An HVC/SMC EL2 does not serve: already answered NOT_SUPPORTED.
            Exit::Hypercall { .. } => None,
            // Answered by the exit loop (`run::give_tables`): run again.
            Exit::NeedTables { .. } => None,
            // The guest shared or took back a granule (counted): what its devices may touch.
            Exit::MemShare { ipa } => {
                l.shared_changed(ipa, true);
                None
            }
            Exit::MemUnshare { ipa } => {
                l.shared_changed(ipa, false);
                None
            }
            Exit::SystemOff => Some(Yield::Done(Some(Ok(Outcome::Off)))),
            Exit::SystemReset => Some(Yield::Done(Some(Ok(Outcome::Reset)))),
            Exit::Killed { reason, ipa, detail } => {
                println!("host: linux VM {handle:#x} vCPU {v} stopped by EL2: reason {reason} at IPA {ipa:#x}");
                Some(Yield::Done(Some(Ok(Outcome::Killed(reason, ipa, detail)))))
            }
        }
    }
}

/// The PL011 on a Linux VM's bus: its interrupt line drives the distributor model's SPI.
struct UartPort<'a> {
    uart: &'a GuestUart,
    gic: &'a VirtualGic,
    vcpu: usize,
}

impl Device for UartPort<'_> {
    fn ranges(&self) -> &[Range<u64>] {
        const RANGE: Range<u64> = UART..UART + UART_SIZE;
        core::slice::from_ref(&RANGE)
    }

    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> (u64, Wake) {
        let mut wake = 0;
        let value = self.uart.mmio(ipa, size, write, |level| wake = self.gic.set_level(self.vcpu, UART_INTID, level));
        (value.unwrap_or(0), wake)
    }
}

/// The virtio transports on a Linux VM's bus: each interrupt line drives its SPI.
struct VirtioPorts<'a> {
    l: &'a LinuxVm,
    vcpu: usize,
}

impl Device for VirtioPorts<'_> {
    fn ranges(&self) -> &[Range<u64>] {
        &self.l.virtio_ranges[..if self.l.blk.is_some() { 2 } else { 1 }]
    }

    fn mmio(&mut self, ipa: u64, size: u32, write: Option<u64>) -> (u64, Wake) {
        let (l, mem) = (self.l, self.l.memory());
        match &l.blk {
            Some(b) if b.range().contains(&ipa) => b.mmio(&mem, &l.gic, self.vcpu, ipa, size, write),
            _ => l.console.mmio(&mem, &l.gic, self.vcpu, ipa, size, write),
        }
    }
}

// ---- For the hostile-guest scenarios (el1-host's `storm`): VMs of one's own making ---------------

/// Builds Linux VM `n` (below [`MAX_VMS`]) from `image` (an `Image` or an ELF test guest) with
/// its own command line (`/chosen/bootargs`), `vcpus` vCPUs, VM `flags` and `mem_mib` MiB, and
/// registers it with the VMM (its console lines carry `[vmN]`). The caller queues its vCPUs
/// ([`queue`]) and runs them. Each `n` once per boot.
pub fn add_vm(plat: &Platform, n: usize, vcpus: u32, flags: u64, mem_mib: u64, image: &[u8], cmdline: &str) -> Result<&'static Vm, &'static str> {
    let slot = VMS.get(n).ok_or("no such Linux VM slot")?;
    if slot.is_completed() {
        return Err("Linux VM slot already used");
    }
    let gic = VirtualGic::new(vcpus as usize).map_err(|_| "vCPU count")?;
    let vm = build(&Config { ram_end: plat.ram.0 + plat.ram.1, mem_mib, vcpus, flags, sve_vl: 0, vms: MAX_VMS }, image, &[], cmdline, false)?;
    Ok(&slot.call_once(|| LinuxVm::new(vm, gic, Some(n), &SHARED[n], None, ConsoleDevice::from_bootargs(cmdline))).vm)
}

/// While Linux VMs run (`on`): console input goes to the first, and idle host CPUs sleep in
/// `WFI` until a deadline or a kick, as [`run()`] sets them.
pub fn set_running(on: bool) {
    ACTIVE.store(on, Ordering::SeqCst);
    sched::SLEEP_WHEN_IDLE.store(on, Ordering::SeqCst);
}

/// Prints the unfinished lines VM `handle`'s UART and virtio-console hold, if any (its VM was
/// stopped).
pub fn flush_console(handle: u64) {
    if let Some(l) = lookup(handle) {
        l.uart.flush_final();
        l.console.lock().device_mut().output_mut().flush_final();
    }
}
