//! Linux guests: VMs with the devices an unmodified arm64 kernel needs (a GICv3, the
//! architected timers, a PL011 with its interrupt), booted the standard way (an `Image`, an
//! initramfs, a command line and a device tree), their vCPUs run by the host scheduler.
//!
//! The same VMs run the project's ELF test guests that need these devices (`scenario=linux`
//! with an ELF staged as the kernel).
//!
//! Place in the flow: [`run`] builds the VMs from what `cargo xtask run --kernel ...` staged
//! (`shared_abi::layout`), queues their vCPUs and lets every host CPU run them
//! ([`crate::sched`]); the scheduler hands each vCPU of these VMs to [`run_slot`], the VMM's
//! exit loop: MMIO to the devices, guest SGIs and timer deadlines to the distributor model,
//! `WFI` to a sleep until an interrupt or the vCPU's timer deadline.
//!
//! Guest physical map: GIC distributor at `0x0800_0000`, redistributors at `0x080A_0000`
//! (128 KiB per vCPU), PL011 at `0x0900_0000` (SPI 1), RAM at `0x4000_0000`.

use super::pl011::{GuestUart, UART, UART_INTID, UART_SPI};
use super::timer::{self, Timers, PTIMER_INTID, VTIMER_INTID};
use super::vgic::{VirtualGic, Wake, GICD, GICR};
use super::{count_exit, note_exit, note_run, Outcome, Vm, GUEST_RAM};
use crate::platform::Platform;
use crate::{gic, hvc, println, sched};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared_abi::msg::{exit, vm_flags, VcpuExit};
use shared_abi::{reg, HypError, HypercallId};

/// Most Linux VMs at once.
pub const MAX_VMS: usize = 2;
/// Most vCPUs per Linux VM.
pub const MAX_VCPUS: usize = 8;

/// One Linux VM's devices and per-vCPU VMM state.
pub struct LinuxVm {
    vm: Vm,
    gic: VirtualGic,
    uart: GuestUart,
    vcpus: [spin::Mutex<VcpuState>; MAX_VCPUS],
}

/// What the VMM keeps of one vCPU between runs.
struct VcpuState {
    /// The value for the MMIO read the vCPU's last exit asked for.
    mmio_value: u64,
    /// Its timers' deadlines, from its last exit.
    timers: Timers,
    /// Its virtual timer interrupt is in a list register (queued, not yet deactivated).
    vtimer_queued: bool,
}

impl VcpuState {
    const fn new() -> Self {
        Self { mmio_value: 0, timers: Timers::new(), vtimer_queued: false }
    }
}

static VMS: [spin::Once<LinuxVm>; MAX_VMS] = [const { spin::Once::new() }; MAX_VMS];
/// Set while Linux VMs run (the console's input goes to the first one).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Handles of the Linux VMs, for [`owns`] without touching the `Once`s.
static HANDLES: [AtomicU64; MAX_VMS] = [const { AtomicU64::new(0) }; MAX_VMS];

/// Whether `handle` is a Linux VM's (the scheduler gives its vCPUs to [`run_slot`]).
pub fn owns(handle: u64) -> bool {
    handle != 0 && HANDLES.iter().any(|h| h.load(Ordering::Relaxed) == handle)
}

fn lookup(handle: u64) -> Option<&'static LinuxVm> {
    VMS.iter().filter_map(|v| v.get()).find(|v| v.vm.handle == handle)
}

/// What the boot arguments ask for (`cargo xtask run --kernel ...`).
struct Config {
    mem_mib: u64,
    vcpus: u32,
    flags: u64,
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
        Ok(Self { mem_mib, vcpus: vcpus as u32, flags, vms: vms as usize })
    }
}

/// The `linux` scenario: boots the staged kernel in `vms=N` VMs and runs them on every host
/// CPU until each has powered off. Fails the run if a VM did not power off cleanly.
pub fn run(plat: &Platform) {
    let cfg = Config::from(plat).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: {e}")));
    let kernel = plat.guest_image().unwrap_or_else(|| crate::fail::fail(format_args!("linux: no kernel staged (guest=ADDR,SIZE)")));
    let initrd = plat.staged("initrd").unwrap_or(&[]);
    let cmdline = plat.staged("cmdline").map_or("console=ttyAMA0", |c| core::str::from_utf8(c).unwrap_or("console=ttyAMA0").trim_end_matches(['\0', '\n']));
    println!(
        "host: linux: {} VM(s), {} vCPUs, {} MiB, flags {:#x}; kernel {} bytes, initramfs {} bytes",
        cfg.vms,
        cfg.vcpus,
        cfg.mem_mib,
        cfg.flags,
        kernel.len(),
        initrd.len()
    );
    for n in 0..cfg.vms {
        let vm = build(&cfg, kernel, initrd, cmdline).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: VM {n}: {e}")));
        let prefix = (cfg.vms > 1).then_some(n);
        let nr = cfg.vcpus as usize;
        HANDLES[n].store(vm.handle, Ordering::SeqCst);
        let gic = VirtualGic::new(nr).unwrap_or_else(|_| crate::fail::fail(format_args!("linux: {nr} vCPUs")));
        VMS[n].call_once(|| LinuxVm { gic, uart: GuestUart::new(prefix), vcpus: [const { spin::Mutex::new(VcpuState::new()) }; MAX_VCPUS], vm });
    }
    let live = || VMS.iter().filter_map(|v| v.get()).map(|l| &l.vm);
    let mut refs: [&Vm; MAX_VMS] = [&VMS[0].get().unwrap_or_else(|| crate::fail::halt()).vm; MAX_VMS];
    let mut count = 0;
    for (slot, vm) in refs.iter_mut().zip(live()) {
        *slot = vm;
        count += 1;
    }
    for vm in &refs[..count] {
        sched::add(vm, 0).unwrap_or_else(|e| crate::fail::fail(format_args!("linux: run queue: {e:?}")));
    }
    ACTIVE.store(true, Ordering::SeqCst);
    sched::SLEEP_WHEN_IDLE.store(true, Ordering::SeqCst);
    let cpus = (1u64 << plat.nr_cpus) - 1;
    // The Linux boot benchmark's mark: where each kernel starts, in its VM's virtual count.
    crate::bench::note_linux_start(&refs[..count]);
    sched::run(&refs[..count], cpus);
    ACTIVE.store(false, Ordering::SeqCst);
    let mut clean = true;
    for (n, vm) in refs[..count].iter().enumerate() {
        if let Some(l) = lookup(vm.handle) {
            l.uart.flush_final();
        }
        let outcome = sched::outcome(vm);
        println!("host: linux VM {n} ({:#x}) ended: {outcome:?}", vm.handle);
        clean &= outcome == Some(Ok(Outcome::Off));
        if let Err(e) = sched::destroy(vm) {
            crate::fail::fail(format_args!("linux: VM_DESTROY: {e:?}"));
        }
    }
    if !clean {
        crate::fail::fail(format_args!("linux: a VM did not power off cleanly"));
    }
}

/// Creates one VM: its RAM filled with the kernel, initramfs and device tree, then given to it
/// (donated if protected), vCPU 0 at the kernel's entry with `x0` = the device tree.
fn build(cfg: &Config, kernel: &[u8], initrd: &[u8], cmdline: &str) -> Result<Vm, &'static str> {
    let ram = cfg.mem_mib << 20;
    let vm = super::create_with_flags(cfg.vcpus, cfg.flags, cfg.mem_mib).map_err(|_| "VM_CREATE failed")?;
    // SAFETY: the backing pages were just allocated for this VM and are still the host's
    // (until VM_ADD_MEMORY below).
    let mem = unsafe { core::slice::from_raw_parts_mut(vm.backing as *mut u8, ram as usize) };
    // A Linux `Image`, or one of the project's ELF test guests (benchmarks and hostile guests
    // that need the devices): loaded at its own addresses, the device tree at the top of RAM
    // all the same.
    let (entry, layout) = if kernel.starts_with(b"\x7fELF") {
        let entry = super::loader::load_test_image(mem, GUEST_RAM, kernel)?;
        let dtb = ram.checked_sub(super::loader::DTB_SPACE).ok_or("guest RAM too small")?;
        (entry, super::loader::LinuxLayout { kernel: 0, initrd: None, dtb })
    } else {
        let header = super::loader::image_header(kernel)?;
        let layout = super::loader::linux_layout(&header, initrd.len() as u64, ram)?;
        super::loader::load_linux(mem, &layout, kernel, initrd)?;
        (GUEST_RAM + layout.kernel, layout)
    };
    let tree = super::fdt::LinuxTree {
        ram: (GUEST_RAM, ram),
        vcpus: cfg.vcpus,
        uart: (UART, UART_SPI),
        gicd: GICD,
        gicr: GICR,
        initrd: layout.initrd.map(|(s, e)| (GUEST_RAM + s, GUEST_RAM + e)),
        bootargs: cmdline,
    };
    let dtb = &mut mem[layout.dtb as usize..(layout.dtb + super::loader::DTB_SPACE) as usize];
    super::fdt::linux_tree(dtb, &tree).ok_or("device tree does not fit")?;
    let call = |id, args: &[u64]| hvc::call(id, args).map_err(|_| "a hypercall to set up the VM failed");
    call(HypercallId::VmAddMemory, &[vm.handle, vm.backing, GUEST_RAM, vm.pages])?;
    call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::PC, entry])?;
    call(HypercallId::VcpuSetReg, &[vm.handle, 0, reg::x(0), GUEST_RAM + layout.dtb])?;
    Ok(vm)
}

/// Moves the console's input to the first Linux VM's UART (from idle loops and `IRQ` exits).
pub fn poll_input() {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let Some(l) = VMS[0].get() else { return };
    let mut buf = [0u8; 16];
    let mut n = 0;
    // Only what the receive FIFO takes: the rest stays in the host UART's own FIFO.
    let room = l.uart.rx_room().min(buf.len());
    while n < room {
        match crate::console::try_read() {
            Some(b) => {
                buf[n] = b;
                n += 1;
            }
            None => break,
        }
    }
    if n > 0 {
        let level = l.uart.input(&buf[..n]);
        let wake = l.gic.set_level(0, UART_INTID, level);
        l.wake(wake, usize::MAX);
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

/// How often a powered-off vCPU looks whether a sibling has turned it on (PSCI `CPU_ON` is
/// EL2's and tells the host nothing), in milliseconds.
const OFF_POLL_MS: u64 = 1;

/// Runs vCPU `vcpu` of Linux VM `handle` (run-queue slot `slot`) until it waits, is
/// preempted, or its VM ends.
pub fn run_slot(slot: usize, handle: u64, vcpu: u64) {
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
            sched::block(slot, until);
            // An interrupt made pending between the exit and the block found the vCPU still
            // running (its sender kicked this CPU, not the queue): look again now that it is
            // blocked, or it would sleep through it.
            if l.gic.has_deliverable(v) {
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
    /// One `VCPU_RUN` of vCPU `v` and its exit: `Some` when the vCPU leaves this host CPU.
    fn step(&self, v: usize, st: &mut VcpuState) -> Result<Option<Yield>, HypError> {
        let handle = self.vm.handle;
        let now = gic::counter();
        self.deliver(v, st, now)?;
        gic::set_vtimer_enabled(timer::physical_vtimer_enabled(&st.timers, st.vtimer_queued, now));
        // Only a deadline still to come: one that has passed has raised the line already
        // (`deliver`), and a wake-up in the past would end every run before the guest's first
        // instruction, so it could never handle the interrupt and turn its timer off.
        if st.timers.ptimer > now && st.timers.ptimer != u64::MAX {
            gic::arm_wakeup(st.timers.ptimer);
        }
        note_run(&self.vm, v as u64);
        let r = hvc::call(HypercallId::VcpuRun, &[handle, v as u64, st.mmio_value]);
        st.mmio_value = 0;
        if let Err(e) = r {
            note_exit(Err(e));
            return Err(e);
        }
        // SAFETY: this CPU's message page, which EL2 just wrote the exit record to.
        let e: VcpuExit = unsafe { core::ptr::read_volatile(crate::scenarios::msg_page(crate::cpu_id()) as *const VcpuExit) };
        note_exit(Ok(&e));
        count_exit(handle, e.reason);
        st.timers = Timers { vtimer: e.vtimer_deadline, ptimer: e.ptimer_deadline };
        if e.flags & exit::FLAG_EOI != 0 {
            let wake = self.gic.collect_eois(handle, v, |intid| {
                if intid == VTIMER_INTID {
                    st.vtimer_queued = false;
                }
            })?;
            self.wake(wake, v);
        }
        Ok(match e.reason {
            exit::MMIO => {
                st.mmio_value = self.mmio(v, &e);
                None
            }
            exit::SGI => {
                let wake = self.gic.send_sgi(e.args[1] as u8, e.args[0] as u8);
                self.wake(wake, v);
                None
            }
            exit::WFX => {
                // Woken by what is already due; otherwise asleep until the earlier timer
                // deadline or an interrupt ([`Self::wake`]).
                let now = gic::counter();
                self.set_timer_lines(v, st, now);
                (!self.gic.has_deliverable(v)).then(|| Yield::Block(st.timers.next_after(now)))
            }
            exit::IRQ => {
                gic::handle_pending();
                poll_input();
                (gic::take_preempt() && sched::others_ready()).then_some(Yield::Preempted)
            }
            exit::VCPU_OFF => Some(Yield::Block(gic::counter() + OFF_POLL_MS * gic::ticks_per_ms())),
            // An HVC/SMC EL2 does not serve: already answered NOT_SUPPORTED.
            exit::HYPERCALL => None,
            exit::SYSTEM_OFF => Some(Yield::Done(Some(Ok(Outcome::Off)))),
            exit::SYSTEM_RESET => Some(Yield::Done(Some(Ok(Outcome::Reset)))),
            exit::KILLED => {
                println!("host: linux VM {handle:#x} vCPU {v} stopped by EL2: reason {} at IPA {:#x}", e.data, e.ipa);
                Some(Yield::Done(Some(Ok(Outcome::Killed(e.data, e.ipa, e.args[0])))))
            }
            other => crate::fail::fail(format_args!("linux: unknown exit reason {other}")),
        })
    }

    /// The timers' lines of vCPU `v` at counter value `now`.
    fn set_timer_lines(&self, v: usize, st: &VcpuState, now: u64) {
        let (vt, pt) = st.timers.levels(now);
        self.gic.set_level(v, VTIMER_INTID, vt);
        self.gic.set_level(v, PTIMER_INTID, pt);
    }

    /// Before a run: the timers' lines, then everything vCPU `v` may take into its list
    /// registers.
    fn deliver(&self, v: usize, st: &mut VcpuState, now: u64) -> Result<(), HypError> {
        self.set_timer_lines(v, st, now);
        self.gic.flush(self.vm.handle, v, |intid| {
            if intid == VTIMER_INTID {
                st.vtimer_queued = true;
            }
        })
    }

    /// An MMIO exit: the GIC, the UART, or an unassigned address (reads 0, writes ignored).
    fn mmio(&self, v: usize, e: &VcpuExit) -> u64 {
        let write = (e.flags & exit::MMIO_WRITE != 0).then_some(e.data);
        let size = e.size;
        if let Some((value, wake)) = self.gic.mmio(e.ipa, size, write) {
            self.wake(wake, v);
            return value;
        }
        if let Some((value, level)) = self.uart.mmio(e.ipa, size, write) {
            let wake = self.gic.set_level(v, UART_INTID, level);
            self.wake(wake, v);
            return value;
        }
        super::UNASSIGNED.fetch_add(1, Ordering::Relaxed);
        0
    }

    /// Wakes or kicks the vCPUs in `wake` but `me` (which queues its own before its next run).
    fn wake(&self, wake: Wake, me: usize) {
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
