//! Cache maintenance on pages that change hands ([`CacheOps`]): EL2 reaches a page through
//! its CPU's fixmap slot to scrub it, clear its allocation tags or clean it to the PoC.

use super::regs::{dsb_ish, dsb_ishst, isb};
use super::Cpu;
use crate::hw::{CacheOps, PageIo};
use crate::mem::addr::PhysAddr;
use crate::platform::MAX_CPUS;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// `DC CIVAC` over the page mapped at `va`, then `DSB ISH`: its lines reach the PoC and are
/// dropped on every CPU before the slot is unmapped and the page mapped for its next user.
fn civac_page(va: u64) {
    civac_range(va, 4096);
}

/// [`civac_page`] over the `len` bytes at `va`.
fn civac_range(va: u64, len: u64) {
    let line = super::regs::dcache_line_size();
    let mut a = va;
    while a < va + len {
        // SAFETY: `a` lies in the page or block the caller's fixmap closure maps; DC CIVAC only writes
        // back and drops one cache line. (Allocation tags need none: they are only ever reached
        // through cacheable Tagged mappings, which are coherent.)
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    dsb_ish();
}

/// Virtual address of CPU `n`'s fixmap slot in EL2's stage 1 (far from any RAM address).
pub const FIXMAP_VA: u64 = 0x7F00_0000_0000;
/// What a block slot maps: one level-2 block.
pub const FIXMAP_BLOCK_SIZE: u64 = 2 << 20;
/// Virtual address of CPU `n`'s block slot, `FIXMAP_BLOCK_VA + n * FIXMAP_BLOCK_SIZE`: past the
/// page slots, which fill less than the first 2 MiB.
pub const FIXMAP_BLOCK_VA: u64 = FIXMAP_VA + FIXMAP_BLOCK_SIZE;
/// The end of both kinds of slot.
pub const FIXMAP_END: u64 = FIXMAP_BLOCK_VA + MAX_CPUS as u64 * FIXMAP_BLOCK_SIZE;
const _: () = assert!(MAX_CPUS as u64 * 4096 <= FIXMAP_BLOCK_SIZE);

/// Per CPU: pointer to its fixmap slot's level-3 entry, and the descriptor template (Normal
/// RW XN, output address zero) that a PA is ORed into.
pub static FIXMAP_ENTRY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// See [`FIXMAP_ENTRY`].
pub static FIXMAP_TEMPLATE: AtomicU64 = AtomicU64::new(0);
/// The same with the Tagged Normal memory type (for tag writes; 0 without FEAT_MTE2).
pub static FIXMAP_TEMPLATE_TAGGED: AtomicU64 = AtomicU64::new(0);
/// Per CPU: pointer to its block slot's level-2 entry (see [`FIXMAP_ENTRY`]).
pub static FIXMAP_BLOCK_ENTRY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The Tagged Normal level-2 (block) descriptor template (0 without FEAT_MTE2).
pub static FIXMAP_BLOCK_TEMPLATE_TAGGED: AtomicU64 = AtomicU64::new(0);
/// The Normal level-2 (block) descriptor template.
pub static FIXMAP_BLOCK_TEMPLATE: AtomicU64 = AtomicU64::new(0);

/// Maps `pa` at this CPU's fixmap slot, runs `f` on it, and unmaps it.
fn with_fixmap(pa: PhysAddr, f: impl FnOnce(*mut u8)) {
    with_fixmap_as(FIXMAP_TEMPLATE.load(Ordering::Relaxed), pa, f)
}

/// [`with_fixmap`] with descriptor template `template`.
fn with_fixmap_as(template: u64, pa: PhysAddr, f: impl FnOnce(*mut u8)) {
    with_slot(false, template, pa, f);
}

/// Maps `pa` with descriptor `template` at this CPU's page slot, or its block slot if `block`
/// (`pa` then 2 MiB aligned, `template` a level-2 one), runs `f` on it, and unmaps it. `false`
/// (and `f` not run) if the slot is missing, which boot does not allow.
fn with_slot(block: bool, template: u64, pa: PhysAddr, f: impl FnOnce(*mut u8)) -> bool {
    let cpu = super::cpu_index() % MAX_CPUS;
    let (entries, va) = if block {
        (&FIXMAP_BLOCK_ENTRY, FIXMAP_BLOCK_VA + cpu as u64 * FIXMAP_BLOCK_SIZE)
    } else {
        (&FIXMAP_ENTRY, FIXMAP_VA + cpu as u64 * 4096)
    };
    let entry = entries[cpu].load(Ordering::Relaxed) as *mut u64;
    if entry.is_null() {
        log::error!("fixmap slot of cpu{cpu} missing");
        return false;
    }
    // SAFETY: `entry` is this CPU's own reserved level-3 (or level-2) entry (set up at boot,
    // used by no other CPU), and the slot is empty between uses.
    unsafe { entry.write_volatile(template | pa.0) };
    // The entry is visible to this CPU's walker before the first access through it.
    dsb_ishst();
    isb();
    f(va as *mut u8);
    // SAFETY: as above.
    unsafe { entry.write_volatile(0) };
    // Break: the entry is gone, and *every* CPU forgets it. Only this CPU uses the slot, but
    // the slot lives in the EL2 stage 1 all CPUs share, and a TLB may cache any valid entry
    // (speculative walks included): another CPU could still hold this page's translation when
    // the slot next maps another page, which is a break-before-make violation on that CPU (a
    // TLB conflict), and a speculative access through it could allocate cache lines for a page
    // that has since gone to a guest. Hence the broadcast form; last level only (`VALE2IS`, a
    // block included): the table itself stays.
    dsb_ishst();
    // SAFETY: TLB invalidation of one EL2 VA is always allowed at EL2.
    unsafe { asm!("tlbi vale2is, {}", in(reg) va >> 12, options(nostack, preserves_flags)) };
    // Completes the invalidation on every CPU before the slot is reused.
    dsb_ish();
    isb();
    true
}

/// Sets the allocation tags of the `len` bytes at `va` (mapped Tagged Normal; `len` a multiple
/// of 1 KiB) to zero, keeping the data: `STGM XZR`, which writes one naturally aligned block of
/// tags (`GMID_EL1.BS`: 16 to 256 bytes of memory), four a turn. `DC GVA` did the same 64 bytes
/// at a time, with the loop's own compare and branch after each: with a mapping and a
/// broadcast TLBI per page, 299 instructions a page under QEMU's count; an MTE VM's tag work
/// at first touch is now about 72 a page (this loop about 40 of them).
fn zero_tags(va: u64, len: u64) {
    let gmid: u64;
    // SAFETY: reading GMID_EL1 has no side effects (EL2 sets tag access only with FEAT_MTE2,
    // which has it).
    unsafe { asm!(".arch_extension memtag", "mrs {}, gmid_el1", out(reg) gmid, options(nomem, nostack, preserves_flags)) };
    let step = crate::cpu::features::stgm_block_bytes(gmid);
    // Whole turns only. (Kept this plain because no test here would see a wrong stride: in an
    // experiment under QEMU 7.2, one `STGM XZR` cleared the tags of a whole 4 KiB page, so
    // `vm-mte` passes even with every other block skipped; it does fail if the tags are not
    // cleared at all. The step itself is unit-tested in `stgm_block_bytes`.)
    debug_assert!(len.is_multiple_of(4 * step));
    let mut a = va;
    while a < va + len {
        // SAFETY: `a..a + 4 * step` (at most 1 KiB) lies in the range mapped Tagged Normal for
        // the caller's closure; STGM writes only allocation tags, never data.
        unsafe {
            asm!(
                ".arch_extension memtag",
                "stgm xzr, [{a}]",
                "add {a}, {a}, {step}",
                "stgm xzr, [{a}]",
                "add {a}, {a}, {step}",
                "stgm xzr, [{a}]",
                "add {a}, {a}, {step}",
                "stgm xzr, [{a}]",
                "add {a}, {a}, {step}",
                a = inout(reg) a,
                step = in(reg) step,
                options(nostack, preserves_flags)
            )
        };
    }
    // The tag writes are complete before the slot is unmapped and the guest maps the memory.
    dsb_ish();
}

/// The `DC ZVA`/`GVA`/`GZVA` block size in bytes (`DCZID_EL0.BS`). EL2 enables tag writes only
/// on CPUs with FEAT_MTE2, where the block is architecturally allowed for these.
fn zva_block() -> u64 {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    (4u64 << (dczid & 0xF)).clamp(16, 2048)
}

impl CacheOps for Cpu {
    fn clean_inval_poc(&self, pa: PhysAddr) {
        with_fixmap(pa, |p| civac_page(p as u64));
    }

    fn clean_inval_poc_block(&self, base: PhysAddr) {
        let template = FIXMAP_BLOCK_TEMPLATE.load(Ordering::Relaxed);
        // Through the block slot if it can be (an aligned base), else page by page: the same
        // lines reach the PoC either way.
        if !(template != 0 && base.0.is_multiple_of(FIXMAP_BLOCK_SIZE) && with_slot(true, template, base, |p| civac_range(p as u64, FIXMAP_BLOCK_SIZE))) {
            for page in (0..FIXMAP_BLOCK_SIZE).step_by(4096) {
                self.clean_inval_poc(PhysAddr(base.0 + page));
            }
        }
    }

    fn clear_tags(&self, pa: PhysAddr) -> bool {
        let tagged = FIXMAP_TEMPLATE_TAGGED.load(Ordering::Relaxed);
        tagged != 0 && with_slot(false, tagged, PhysAddr(pa.0 & !0xFFF), |p| zero_tags(p as u64, 4096))
    }

    fn clear_tags_block(&self, base: PhysAddr) -> bool {
        let tagged = FIXMAP_BLOCK_TEMPLATE_TAGGED.load(Ordering::Relaxed);
        // An unaligned base would set RES0 bits of the block descriptor and map the block
        // around it, which may be someone else's.
        tagged != 0 && base.0.is_multiple_of(FIXMAP_BLOCK_SIZE) && with_slot(true, tagged, base, |p| zero_tags(p as u64, FIXMAP_BLOCK_SIZE))
    }

    // Inlined into its one caller, destroy's per-page loop: a call per page cost about 15
    // instructions per page (`cargo xtask bench`, vm_lifecycle rows).
    #[inline]
    fn scrub_page(&self, pa: PhysAddr, has_tags: bool) {
        let tagged = FIXMAP_TEMPLATE_TAGGED.load(Ordering::Relaxed);
        if tagged != 0 && has_tags {
            // Data and allocation tags both zero: DC GZVA through a Tagged mapping.
            with_fixmap_as(tagged, pa, |p| {
                let block = zva_block();
                let mut a = p as u64;
                while a < p as u64 + 4096 {
                    // SAFETY: `a` lies in the page mapped Tagged Normal for this closure.
                    unsafe { asm!(".arch_extension memtag", "dc gzva, {}", in(reg) a, options(nostack, preserves_flags)) };
                    a += block;
                }
                dsb_ish();
                civac_page(p as u64);
            });
            return;
        }
        with_fixmap(pa, |p| {
            let dczid: u64;
            // SAFETY: reading DCZID_EL0 has no side effects.
            unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
            let block = 4u64 << (dczid & 0xF);
            if dczid & (1 << 4) != 0 || block > 2048 {
                // DC ZVA prohibited (DZP) or implausible: plain stores.
                // SAFETY: the fixmap maps exactly one writable page at `p` for the closure.
                unsafe { core::ptr::write_bytes(p, 0, 4096) };
                civac_page(p as u64);
                return;
            }
            let mut a = p as u64;
            while a < p as u64 + 4096 {
                // SAFETY: `a` lies in the page the fixmap maps writable (Normal memory, as
                // DC ZVA requires) for this closure; it zeroes one naturally aligned block.
                unsafe { asm!("dc zva, {}", in(reg) a, options(nostack, preserves_flags)) };
                a += block;
            }
            // The zeroes are complete before they are cleaned to the PoC.
            dsb_ish();
            civac_page(p as u64);
        });
    }
}

impl PageIo for Cpu {
    fn read_page(&self, pa: PhysAddr, out: &mut [u8; 4096]) {
        // SAFETY: the closure's pointer is the fixmap slot, which maps the 4 KiB page at `pa`
        // Normal RW for the closure's duration; `out` is EL2's own buffer, not aliased.
        with_fixmap(pa, |p| unsafe { core::ptr::copy_nonoverlapping(p as *const u8, out.as_mut_ptr(), 4096) });
    }

    fn write_page(&self, pa: PhysAddr, bytes: &[u8; 4096]) {
        with_fixmap(pa, |p| {
            // SAFETY: as in `read_page`, for a write of the whole page.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, 4096) };
            civac_page(p as u64);
        });
    }
}
