//! EL2 entry on QEMU's `virt` machine: early assembly, EL2's stage 1, hand-off to the host.
//!
//! Boot order on the first CPU (the one QEMU starts at the ELF entry, at EL2, MMU off):
//!
//! 1. `_start` (assembly): CPU index 0 into `TPIDR_EL2`, stack, clear `.bss`, vectors.
//! 2. [`boot_main`], still with the MMU off (so only aligned accesses and no locks): parse the
//!    device tree, build EL2's stage 1 (its own image, stacks and the UART, nothing else; no
//!    page both writable and executable) and an empty host stage 2, turn the MMU on.
//! 3. Console, ownership record (EL2's region taken from the host), global state.
//! 4. Configure stage 2 and traps for the host, `ERET` to the host at EL1.
//!
//! Other CPUs start only when the host asks for them with PSCI `CPU_ON`, which EL2 intercepts:
//! firmware starts them at `_secondary_entry` (EL2), and [`secondary_main`] gives them the same
//! EL2 MMU configuration and host stage 2 before entering the host where it asked.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};
use el2::host::devices::HostDevices;
use el2::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use el2::arch::{self, El2MmuConfig, HostConfig};
use el2::hyp::{Hyp, HypParts};
use el2::mem::owner::{Ownership, PageEntry};
use el2::mem::pgtable::{Attrs, Format, MemType, PageTable, Perms};
use el2::platform::{self, Platform, MAX_CPUS};
use el2::mem::pool::PagePool;
use el2::arch::trap::{HYP, SECONDARY_ENTRY};
use el2::guest::vcpu::{VcpuSlot, VcpuTable};
use el2::guest::vm::IdRegTable;
use el2::guest::{MAX_VCPUS, MAX_VMS};
use shared_abi::layout::{HOST_IMAGE_BASE, HYP_REGION_BASE, HYP_REGION_SIZE};

/// Bytes per CPU in the stack region: one guard page, then the 64 KiB stack.
const STACK_STRIDE: u64 = 68 * 1024;
const GUARD_SIZE: u64 = 4096;
/// Pages EL2 keeps for translation tables (14 MiB): its own stage 1, the host's stage 2 (whose
/// reserve, `el2::hyp::host_s2_reserve`, is about 3,100 pages with 6 GiB of RAM: one table
/// per 2 MiB, the worst case), and each VM's root. A guest's other tables are the host's
/// (`VM_TOPUP_TABLES`), so this pool bounds how much RAM the machine may have, not how much
/// memory guests get.
const POOL_PAGES: usize = 3584;
/// Largest RAM the static ownership record covers (6 GiB).
const MAX_RAM_PAGES: usize = 6 * 256 * 1024;
/// What the rest of the EL2 image may take at most: code, read-only data, the vCPU and ID
/// register tables and the other statics, the panic stacks (about 1.6 MiB today, 1.3 MiB of it the
/// vCPU table, which has room for every vCPU's SVE registers).
const IMAGE_BUDGET: usize = 3 << 20;

// Everything EL2 uses must fit its region (the linker script checks the final image too): the
// table pool, the ownership record, the stacks with their guard pages, and the rest.
const _: () = assert!(
    POOL_PAGES * 4096 + MAX_RAM_PAGES * core::mem::size_of::<PageEntry>() + MAX_CPUS * STACK_STRIDE as usize + IMAGE_BUDGET
        <= HYP_REGION_SIZE as usize,
    "EL2's table pool, ownership record, stacks and image do not fit HYP_REGION_SIZE"
);
/// Where QEMU places the device tree for an ELF image: the base of RAM.
const DTB_BASE: u64 = 0x4000_0000;
/// EL2's virtual address space (identity-mapped) is 48 bits.
const HYP_VA_BITS: u8 = 48;

global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    msr tpidr_el2, xzr
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    ldr x2, ={stride}
    add sp, x1, x2
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
2:  adrp x1, el2_vectors
    add x1, x1, :lo12:el2_vectors
    msr vbar_el2, x1
    // VBAR_EL2 is in effect before anything can fault.
    isb
    ldr x0, ={dtb}
    bl {boot_main}
3:  wfe
    b 3b

.global _secondary_entry
_secondary_entry:
    // Started by firmware at EL2 with the MMU off; x0 = the CPU index EL2 passed to CPU_ON.
    cmp x0, #{max_cpus}
    b.hs 3b
    msr tpidr_el2, x0
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    add x3, x0, #1
    ldr x2, ={stride}
    madd x1, x3, x2, x1
    mov sp, x1
    adrp x1, el2_vectors
    add x1, x1, :lo12:el2_vectors
    msr vbar_el2, x1
    isb
    bl {secondary_main}
    b 3b
"#,
    stride = const STACK_STRIDE,
    dtb = const DTB_BASE,
    max_cpus = const MAX_CPUS,
    boot_main = sym boot_main,
    secondary_main = sym secondary_main,
);

extern "C" {
    static __hyp_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stacks_start: u8;
    static __panic_stacks_start: u8;
    static __hyp_end: u8;
    static _secondary_entry: u8;
}

#[repr(C, align(4096))]
struct PoolPages(core::cell::UnsafeCell<[[u8; 4096]; POOL_PAGES]>);
// SAFETY: the pages are only ever reached through the one `PagePool` built in `boot_main`,
// which lives under the memory lock. (Interior mutability also keeps them out of `.rodata`.)
unsafe impl Sync for PoolPages {}
/// Translation-table pages.
static POOL: PoolPages = PoolPages(core::cell::UnsafeCell::new([[0; 4096]; POOL_PAGES]));

struct Record(core::cell::UnsafeCell<[PageEntry; MAX_RAM_PAGES]>);
// SAFETY: the record is borrowed mutably exactly once, by `boot_main` on the boot CPU before
// any other CPU runs, and from then on only through the memory lock.
unsafe impl Sync for Record {}
static RECORD: Record = Record(core::cell::UnsafeCell::new([PageEntry::EMPTY; MAX_RAM_PAGES]));

/// Every vCPU context.
static VCPUS: VcpuTable = [const { [const { VcpuSlot::new() }; MAX_VCPUS] }; MAX_VMS];
/// Every VM's ID registers.
static IDREGS: IdRegTable = [const { [const { AtomicU64::new(0) }; el2::cpu::idreg::NR_IDREGS] }; MAX_VMS];

/// EL2 MMU settings for the secondary CPUs: TTBR0, TCR, MAIR, SCTLR. Cleaned to the point of
/// coherency after being written, because secondaries read them with their MMU off.
static MMU_CONFIG: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static HOST_CONFIG: spin::Once<HostConfig> = spin::Once::new();

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

fn read_platform(dtb: u64) -> Result<Platform, platform::PlatformError> {
    // SAFETY: QEMU places the device tree at `dtb` (base of RAM) and nothing else uses that
    // memory yet; the header is read first so the slice covers exactly the blob.
    let header = unsafe { &*(dtb as *const [u8; 8]) };
    let size = platform::dtb_total_size(header).ok_or(platform::PlatformError::BadBlob)?;
    // SAFETY: as above, for the size the header gives (bounded by MAX_DTB_SIZE).
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    platform::parse(blob)
}

fn map_or_park(t: &mut PageTable, pool: &mut PagePool, start: u64, end: u64, mem: MemType, perms: Perms) {
    if end > start && t.map(pool, start, PhysAddr(start), end - start, Attrs { mem, perms }, 2).is_err() {
        arch::park();
    }
}

/// Builds EL2's stage 1: the image by section, the stacks without their guard pages, the UART,
/// the device pages EL2 guards for the host (redistributor control pages, PCI configuration
/// space) and the failure device.
fn build_hyp_stage1(pool: &mut PagePool, uart: PhysAddr, pvpanic: Option<(u64, u64)>, devices: &HostDevices) -> PageTable {
    let Ok(mut t) = PageTable::new(pool, Format::El2Stage1, HYP_VA_BITS) else { arch::park() };
    // SAFETY: taking the address of linker-provided symbols; nothing is read through them.
    let (start, text_end, rodata_end, stacks, panic_stacks, end) = unsafe {
        (
            sym(&__hyp_start),
            sym(&__text_end),
            sym(&__rodata_end),
            sym(&__stacks_start),
            sym(&__panic_stacks_start),
            sym(&__hyp_end),
        )
    };
    map_or_park(&mut t, pool, start, text_end, MemType::Normal, Perms::RX);
    map_or_park(&mut t, pool, text_end, rodata_end, MemType::Normal, Perms::RO);
    map_or_park(&mut t, pool, rodata_end, stacks, MemType::Normal, Perms::RW);
    for cpu in 0..MAX_CPUS as u64 {
        let s = stacks + cpu * STACK_STRIDE;
        map_or_park(&mut t, pool, s + GUARD_SIZE, s + STACK_STRIDE, MemType::Normal, Perms::RW);
    }
    // The panic stacks likewise: each CPU's 4 KiB above an unmapped guard page.
    for cpu in 0..MAX_CPUS as u64 {
        let s = panic_stacks + cpu * 2 * PAGE_SIZE;
        map_or_park(&mut t, pool, s + PAGE_SIZE, s + 2 * PAGE_SIZE, MemType::Normal, Perms::RW);
    }
    map_or_park(&mut t, pool, panic_stacks + MAX_CPUS as u64 * 2 * PAGE_SIZE, end, MemType::Normal, Perms::RW);
    map_or_park(&mut t, pool, uart.0, uart.0 + PAGE_SIZE, MemType::Device, Perms::RW);
    // The first page of every redistributor's RD_base frame, and all of the PCI configuration
    // space, kept from the host: EL2 performs the host's accesses to them (el2::host::gicr,
    // el2::host::pciconfig). Not optional: without them the host would own
    // GICR_CTLR.EnableLPIs and Command.BusMasterEnable, that is, DMA.
    for page in devices.gicr.into_iter().flat_map(el2::host::gicr::guarded_pages) {
        map_or_park(&mut t, pool, page.0, page.0 + PAGE_SIZE, MemType::Device, Perms::RW);
    }
    // And the first page of each SGI_base frame, which the host keeps too: EL2 sets and clears
    // the linked virtual timer's PPI 27 active and consumes its doorbell SGI there
    // (el2::arch::switch::vgic).
    for page in devices.gicr.into_iter().flat_map(el2::host::gicr::sgi_pages) {
        map_or_park(&mut t, pool, page.0, page.0 + PAGE_SIZE, MemType::Device, Perms::RW);
    }
    if let Some(ecam) = devices.ecam {
        map_or_park(&mut t, pool, ecam.start.0, ecam.end.0, MemType::Device, Perms::RW);
    }
    // The failure device, if mapping its BAR works (it is optional: without it a fatal error
    // only parks the CPU). Its configuration page lies in the ECAM, mapped above.
    if let Some((config, bar)) = pvpanic {
        let device = Attrs { mem: MemType::Device, perms: Perms::RW };
        if devices.ecam.is_some_and(|e| e.contains(PhysAddr(config))) && t.map(pool, bar, PhysAddr(bar), PAGE_SIZE, device, 3).is_ok() {
            arch::failstop::arm(config, bar);
        }
    }
    // One fixmap slot per CPU, for EL2's short-lived access to pages it does not map (scrubbing
    // guest memory), and one 2 MiB block slot (clearing a guest block's tags, cleaning it to
    // the PoC): the level-3 and level-2 entries exist from now on and start empty.
    let normal = Attrs { mem: MemType::Normal, perms: Perms::RW };
    let (Ok(template), Ok(block)) = (t.leaf_descriptor(3, PhysAddr(0), normal), t.leaf_descriptor(2, PhysAddr(0), normal)) else { arch::park() };
    arch::FIXMAP_TEMPLATE.store(template, Ordering::Relaxed);
    arch::FIXMAP_BLOCK_TEMPLATE.store(block, Ordering::Relaxed);
    if arch::has_mte2() {
        let tagged = Attrs { mem: MemType::NormalTagged, perms: Perms::RW };
        let (Ok(page), Ok(block)) = (t.leaf_descriptor(3, PhysAddr(0), tagged), t.leaf_descriptor(2, PhysAddr(0), tagged)) else { arch::park() };
        arch::FIXMAP_TEMPLATE_TAGGED.store(page, Ordering::Relaxed);
        arch::FIXMAP_BLOCK_TEMPLATE_TAGGED.store(block, Ordering::Relaxed);
    }
    for cpu in 0..MAX_CPUS {
        let Ok(e) = t.reserve_leaf(pool, arch::FIXMAP_VA + cpu as u64 * PAGE_SIZE, 3) else { arch::park() };
        arch::FIXMAP_ENTRY[cpu].store(e as u64, Ordering::Relaxed);
        let Ok(e) = t.reserve_leaf(pool, arch::FIXMAP_BLOCK_VA + cpu as u64 * arch::FIXMAP_BLOCK_SIZE, 2) else { arch::park() };
        arch::FIXMAP_BLOCK_ENTRY[cpu].store(e as u64, Ordering::Relaxed);
    }
    t
}

/// The host's IPA size: 40 bits (all of QEMU `virt`'s map) where the CPU allows a level-0
/// start, otherwise what a single level-1 root reaches.
fn host_ipa_bits(pa_bits: u8) -> u8 {
    if pa_bits >= 44 {
        40
    } else {
        pa_bits.min(39)
    }
}

extern "C" fn boot_main(dtb: u64) -> ! {
    // MMU off: no console until the UART is mapped, so a bad device tree can only park.
    let Ok(platform) = read_platform(dtb) else { arch::park() };
    let pa_bits = arch::pa_bits();
    // SAFETY: POOL lies in EL2's .bss (inside the HYP region, identity-mapped RW by the stage 1
    // built below) and is used by nothing but this pool.
    let mut pool = unsafe { PagePool::new(PhysAddr(POOL.0.get() as u64), POOL_PAGES) };
    // MMU off: the ECAM is reached as Device memory. Finding pvpanic now lets EL2 end the
    // machine as a failure later (arch::failstop).
    // SAFETY: the ECAM from the platform's device tree, with the MMU off.
    let pvpanic = platform.pci.and_then(|pci| Some((unsafe { arch::failstop::probe(pci.ecam.0) }?, pci.mem32.0)));
    let hyp_s1 = build_hyp_stage1(&mut pool, platform.uart, pvpanic, &platform.devices);
    let Ok(host_s2) = PageTable::new(&mut pool, Format::Stage2, host_ipa_bits(pa_bits)) else { arch::park() };
    let mmu = El2MmuConfig::new(&hyp_s1, pa_bits);
    // SAFETY: at EL2 with the MMU off; `hyp_s1` identity-maps this code, its stack and data.
    unsafe { arch::enable_el2_mmu(&mmu) };

    el2::arch::console::init(platform.uart.0, log::LevelFilter::Info);
    log::info!(
        "hypervisor at EL2: {} CPUs, RAM {}..{}, PA {} bits, ABI {}.{}",
        platform.cpus.len(),
        platform.ram.start,
        platform.ram.end,
        pa_bits,
        shared_abi::ABI_VERSION.major,
        shared_abi::ABI_VERSION.minor,
    );

    // This CPU runs as CPU 0 (stack, vCPU context, fixmap slot and message page 0, chosen in
    // `_start` before the device tree was read), so it must be the device tree's first CPU:
    // otherwise a later CPU_ON of that CPU would give a second CPU the same index.
    if let Err(e) = platform.check_boot_cpu(arch::mpidr()) {
        log::error!("EL2 start-up failed: {e:?} (boot CPU MPIDR {:#x})", arch::mpidr());
        arch::park();
    }

    for (i, v) in [mmu.ttbr0, mmu.tcr, mmu.mair, mmu.sctlr].into_iter().enumerate() {
        MMU_CONFIG[i].store(v, Ordering::Relaxed);
    }
    arch::clean_dcache_range(addr_of!(MMU_CONFIG) as u64, core::mem::size_of_val(&MMU_CONFIG) as u64);
    // SAFETY: taking a symbol's address.
    SECONDARY_ENTRY.store(sym(unsafe { &_secondary_entry }), Ordering::Relaxed);

    let Some(hyp_region) = PhysRange::from_size(PhysAddr(HYP_REGION_BASE), HYP_REGION_SIZE) else { arch::park() };
    // SAFETY: taking a symbol's address.
    if sym(unsafe { &__hyp_start }) != HYP_REGION_BASE {
        log::error!("EL2 image is not linked at the HYP region base {HYP_REGION_BASE:#x}");
        arch::park();
    }
    // The redistributors behind the guarded pages (mapped above): GICR_TYPER.Last ends them.
    let gicr = platform.devices.gicr.map(|r| el2::host::gicr::probe(r, &arch::GuardedMmio));
    if let Some(g) = gicr {
        log::info!("GIC redistributors: {} at {}, control pages kept from the host ({} guarded)", g.present, g.region.start, el2::host::gicr::guarded_pages(g.region).count());
    }
    // What the host may reach outside RAM (el2::host::devices): every other device, those that
    // can master memory among them, is never in its stage 2.
    for r in &platform.devices.mmio {
        log::info!("host device space: {}..{}", r.start, r.end);
    }
    if let Some(e) = platform.devices.ecam {
        log::info!("PCI configuration space {}..{}: performed by EL2, bus mastering kept off", e.start, e.end);
    }
    if let Some(u) = platform.untagged {
        log::info!("RAM without tag storage: {}..{} (MTE VMs are never given it)", u.start, u.end);
    }
    let pages = (platform.ram.size() / PAGE_SIZE) as usize;
    if pages > MAX_RAM_PAGES || !platform.ram.contains_range(&hyp_region) {
        log::error!("unsupported RAM layout {:?} (at most {MAX_RAM_PAGES} pages, must hold {hyp_region:?})", platform.ram);
        arch::park();
    }
    // SAFETY: see `Record`: this is the only mutable borrow, taken once before other CPUs run.
    let entries = unsafe { &mut (&mut *RECORD.0.get())[..pages] };
    let Ok(own) = Ownership::new(platform.ram, entries) else { arch::park() };
    let host_cfg = HostConfig::new(&host_s2, pa_bits);
    log::info!(
        "EL2 owns {hyp_region:?}; host stage 2: {} bit IPA, table pool {} of {} pages free ({} kept for the host stage 2)",
        host_s2.ia_bits(),
        pool.capacity() - pool.in_use(),
        pool.capacity(),
        el2::hyp::host_s2_reserve(platform.ram, &platform.devices)
    );
    if let Err(e) = arch::check_sysreg_tables() {
        log::error!("EL2 start-up failed: {e}");
        arch::park();
    }
    let host_cfg = HOST_CONFIG.call_once(|| host_cfg);
    arch::activate_host(&host_cfg.for_this_cpu(&arch::read_idregs()));
    let (boot_secret, random) = arch::boot_secret(dtb);
    if !random {
        log::info!("no FEAT_RNG: VM secrets derive from a boot value that is not secret (debug mode only)");
    }
    // After `activate_host`: ICH_VTR_EL2 is readable.
    let boot_cpu = arch::cpu_id();
    if let Some(max) = boot_cpu.sve.max() {
        log::info!("SVE: vector lengths {:#06x} (bit n: (n + 1) x 128 bits), up to {} bits", boot_cpu.sve.0, max as u32 * 128);
    }
    let parts = HypParts {
        platform,
        hyp_region,
        own,
        host_s2,
        hyp_s1,
        tables: pool,
        vcpus: &VCPUS,
        idregs: &IDREGS,
        boot_cpu,
        gicr,
        boot_secret,
    };
    // Built inside the `Once`: the state is tens of KiB (the VM table), and each copy through
    // a temporary would cost that much of the boot stack.
    HYP.call_once(|| {
        Hyp::new(parts).unwrap_or_else(|e| {
            log::error!("EL2 start-up failed: {e}");
            arch::park()
        })
    });
    find_own_redistributor(HYP.get().unwrap_or_else(|| arch::park()), true);
    log::info!("cpu0 entering host at {HOST_IMAGE_BASE:#x} (EL1, stage 2 on)");
    // SAFETY: `activate_host` ran on this CPU.
    unsafe { arch::enter_host(HOST_IMAGE_BASE, dtb) }
}

/// This CPU's redistributor, for the linked virtual timer. The boot CPU also decides, for
/// good, whether EL2 links virtual timers at all: only if every CPU of the platform has one
/// (`el2::hyp::Hyp::cpu_redistributor`), so that no CPU that comes online later runs a linked
/// vCPU without it.
fn find_own_redistributor<T: el2::mem::pgtable::TableMemory>(hyp: &el2::hyp::Hyp<'_, T>, boot: bool) {
    let find = |mpidr: u64| hyp.gicr.as_ref().and_then(|g| el2::host::gicr::sgi_base_of(g, mpidr, &arch::GuardedMmio));
    if boot {
        let all = hyp.platform.cpus.iter().all(|&m| find(m).is_some());
        if !all {
            log::warn!("a CPU has no redistributor: virtual timers are not linked");
        }
        hyp.cpu_redistributor(all);
    }
    arch::set_redistributor(find(arch::mpidr()));
}

extern "C" fn secondary_main(cpu: u64) -> ! {
    let mmu = El2MmuConfig {
        ttbr0: MMU_CONFIG[0].load(Ordering::Relaxed),
        tcr: MMU_CONFIG[1].load(Ordering::Relaxed),
        mair: MMU_CONFIG[2].load(Ordering::Relaxed),
        sctlr: MMU_CONFIG[3].load(Ordering::Relaxed),
    }
    .for_this_cpu();
    if mmu.ttbr0 == 0 {
        arch::park();
    }
    // SAFETY: at EL2 with the MMU off; the boot CPU's tables identity-map all of EL2, this
    // CPU's stack included.
    unsafe { arch::enable_el2_mmu(&mmu) };
    let (Some(hyp), Some(host_cfg)) = (HYP.get(), HOST_CONFIG.get()) else { arch::park() };
    arch::activate_host(&host_cfg.for_this_cpu(&arch::read_idregs()));
    // After `activate_host`: ICH_VTR_EL2 is readable.
    let id = arch::cpu_id();
    if let Err(w) = hyp.cpu_entered_el2(cpu as usize % MAX_CPUS, id) {
        // The CPU view is fixed (set-up finalised or a VM exists) and this CPU lacks something
        // VMs or EL2 rely on: it must run neither host nor guest code. The host's CPU_ON has
        // already succeeded; it learns because the CPU never comes online (AFFINITY_INFO says
        // OFF), and its next CPU_ON of this CPU is DENIED.
        log::warn!("cpu{cpu} (MIDR {:#x}) is weaker than the fixed CPU view ({w:?}): powering it off", id.midr);
        arch::cpu_off();
    }
    find_own_redistributor(hyp, false);
    let boot = &hyp.cpu_boot[cpu as usize % MAX_CPUS];
    let entry = boot.entry.load(Ordering::Acquire);
    let context = boot.context.load(Ordering::Acquire);
    log::info!("cpu{cpu} online at EL2 (MPIDR {:#x}), entering host at {entry:#x}", arch::mpidr());
    // SAFETY: `activate_host` ran on this CPU.
    unsafe { arch::enter_host(entry, context) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    el2::arch::console::emergency(format_args!("EL2 PANIC on cpu{}: {info}\n", arch::cpu_index()));
    arch::failstop::signal();
    arch::park()
}
