//! Where the host starts and where its exceptions land (from the boot code and vectors in
//! [`crate::arch::boot`]), and the hooks through which the binary above plugs in its `main`, its
//! idle-loop work and its handling of faults it provokes on purpose ([`entry!`](crate::entry!)).
//! A data abort inside [`crate::arch::guarded_copy`] is the kernel's own: the copy fails.

pub use crate::arch::boot::{secondary_entry, Frame};
use crate::cpu::{current_el, MAX_CPUS, ONLINE};
use crate::platform::Platform;
use crate::{arch, fail, gic, hyp, println};
use core::sync::atomic::Ordering;

/// The vector of a synchronous exception from the current EL with `SP_ELx`.
pub const SYNC_CURRENT_EL: u64 = 4;

/// What the binary plugs into the kernel ([`entry!`](crate::entry!)).
pub struct Hooks {
    /// Runs on CPU 0 once the kernel is up; the machine powers off when it returns.
    pub main: fn(&Platform),
    /// Runs in every secondary CPU's idle loop, with the CPU's index.
    pub idle: fn(usize),
    /// Offered every exception first (`frame`, vector, `ESR_EL1`, `FAR_EL1`): `true` if it
    /// handled it (adjusting `frame` to resume); otherwise the host fails.
    pub exception: fn(&mut Frame, u64, u64, u64) -> bool,
}

static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// Defines the host's entry point (`host_main`, called by the boot code on CPU 0) with the
/// given [`Hooks`].
#[macro_export]
macro_rules! entry {
    ($hooks:expr) => {
        #[no_mangle]
        extern "C" fn host_main(dtb: u64) -> ! {
            $crate::entry::start(dtb, $hooks)
        }
    };
}

/// The kernel's start on CPU 0: platform, console, failure reports and the GIC, then
/// `hooks.main`, then power off.
pub fn start(dtb: u64, hooks: Hooks) -> ! {
    let plat = Platform::from_dtb(dtb);
    crate::console::init(plat.uart);
    fail::init(&plat);
    println!("host: el1-host starting at EL{} (device tree at {dtb:#x})", current_el());
    gic::init(&plat);
    ONLINE[0].store(true, Ordering::SeqCst);
    let hooks = HOOKS.call_once(|| hooks);
    (hooks.main)(&plat);
    println!("host: powering off");
    let _ = smccc::psci::system_off::<smccc::Smc>();
    fail::fail(format_args!("PSCI SYSTEM_OFF returned"));
}

/// A secondary CPU's start (from the boot code), with its index.
pub(crate) extern "C" fn host_secondary(cpu: u64) -> ! {
    let cpu = cpu as usize % MAX_CPUS;
    let version = hyp::call(shared_abi::HypercallId::Version, &[]);
    println!("host: cpu{cpu} online at EL{}, hypervisor ABI {version:x?}", current_el());
    gic::init_cpu(cpu);
    ONLINE[cpu].store(true, Ordering::SeqCst);
    loop {
        if let Some(h) = HOOKS.get() {
            (h.idle)(cpu);
        }
        // A tick (or kick) that came while idle: acknowledge it, re-arming the tick.
        gic::handle_pending();
        // The requester sends an event.
        arch::wfe();
    }
}

/// Every exception (from the vectors), with the vector's number.
pub(crate) extern "C" fn host_exception(frame: &mut Frame, kind: u64) {
    let (esr, far) = arch::esr_far();
    // A device's copy of guest memory that the guest took away meanwhile: the copy fails.
    if kind == SYNC_CURRENT_EL && arch::recover_guarded_copy(frame, esr) {
        return;
    }
    if HOOKS.get().is_some_and(|h| (h.exception)(frame, kind, esr, far)) {
        return;
    }
    fail::fail(format_args!(
        "unexpected exception at EL1: vector {kind} ESR_EL1={esr:#x} FAR_EL1={far:#x} ELR_EL1={:#x}",
        frame.elr()
    ));
}
