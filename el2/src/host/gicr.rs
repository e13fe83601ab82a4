//! The GIC redistributors' control pages, kept from the host: no LPI tables.
//!
//! Place in the flow: the host stage-2 fault path ([`crate::mem::protect::host_fault_mapping`] never
//! maps a guarded page) and the host data-abort handler in `trap.rs`, which hands an access to
//! a guarded page to [`emulate`]. The MMIO itself is the arch layer's ([`GuardedIo`]).
//!
//! **Why.** With `GICR_CTLR.EnableLPIs` set, a redistributor reads and writes the LPI property
//! and pending tables at the physical addresses in `GICR_PROPBASER`/`GICR_PENDBASER`. Those
//! are the GIC's accesses, not the CPU's: the host stage 2 does not see them, so a host that
//! owned these registers could aim them at EL2's or a protected guest's memory. QEMU 7.2's
//! redistributors implement LPIs (`GICR_TYPER.PLPIS` = 1) even without an ITS.
//!
//! **What.** The first 4 KiB page of each redistributor's `RD_base` frame (GICv3: 64 KiB
//! `RD_base` then 64 KiB `SGI_base`, one redistributor every [`RD_STRIDE`]) holds `GICR_CTLR`,
//! `GICR_TYPER`, `GICR_WAKER`, `GICR_PROPBASER`, `GICR_PENDBASER` and the direct-LPI registers.
//! That page of every frame of the device tree's redistributor region is *guarded*: never in
//! the host stage 2, mapped Device in EL2's stage 1 at boot. A host load or store there with a
//! valid syndrome (`ESR_EL2.ISV`) of a size the register allows is performed by EL2: reads as
//! they are, writes as they are except that a write to `GICR_CTLR` has `EnableLPIs` (bit 0)
//! cleared. With `EnableLPIs` 0 the redistributor never touches the LPI tables, so
//! `GICR_PROPBASER`/`GICR_PENDBASER` writes pass through: they are only numbers (and the
//! host reads back what it wrote); the direct-LPI registers (`GICR_SETLPIR`, ...) have no
//! effect either. Anything else (no `ISV`, a byte or halfword, unaligned, a 64-bit access to a
//! 32-bit register, a frame past the last redistributor) gets the injected abort any bad host
//! access gets.
//!
//! Only GICv3 redistributors (two 64 KiB frames each) are handled: GICv4's (four frames, with
//! `GICR_VPROPBASER`/`GICR_VPENDBASER`) are refused at boot by [`probe`] (none emulated).

use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::exception::syndrome::{decode_mmio, MmioAccess};
use crate::host::guarded::{perform, GuardedIo};

/// Distance between two GICv3 redistributors: `RD_base` (64 KiB) then `SGI_base` (64 KiB).
pub const RD_STRIDE: u64 = 0x2_0000;
/// `GICR_CTLR` (32 bits).
pub const GICR_CTLR: u64 = 0x0;
/// `GICR_CTLR.EnableLPIs`.
pub const CTLR_ENABLE_LPIS: u64 = 1 << 0;
/// `GICR_TYPER` (64 bits).
pub const GICR_TYPER: u64 = 0x8;
/// `GICR_TYPER.VLPIS`: virtual LPIs (GICv4), four 64 KiB frames per redistributor.
pub const TYPER_VLPIS: u64 = 1 << 1;
/// `GICR_TYPER.Last`: the last redistributor of its region.
pub const TYPER_LAST: u64 = 1 << 4;
/// Where a redistributor's `SGI_base` frame starts, from its `RD_base`.
pub const SGI_BASE_OFFSET: u64 = 0x1_0000;
/// `GICR_ICPENDR0` (in `SGI_base`): write one to make an SGI or PPI of that CPU not pending.
pub const GICR_ICPENDR0: u64 = 0x0280;
/// `GICR_ISACTIVER0` (in `SGI_base`): write one to make an SGI or PPI of that CPU active.
pub const GICR_ISACTIVER0: u64 = 0x0300;
/// `GICR_ICACTIVER0` (in `SGI_base`): write one to make it inactive.
pub const GICR_ICACTIVER0: u64 = 0x0380;
/// The 64-bit registers of the guarded page (`GICR_TYPER`, `GICR_SETLPIR`, `GICR_CLRLPIR`,
/// `GICR_PROPBASER`, `GICR_PENDBASER`, `GICR_INVLPIR`, `GICR_INVALLR`): the only offsets EL2
/// accesses with 8 bytes. Everything else is 32-bit (reserved offsets are RAZ/WI).
const REGS64: [u64; 7] = [0x08, 0x40, 0x48, 0x70, 0x78, 0xA0, 0xB0];

/// The redistributors: where they are and how many EL2 performs accesses for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redistributors {
    /// The device tree's redistributor region (`arm,gic-v3`, `reg` entry 1): every
    /// [`RD_STRIDE`] in it starts a guarded page, whether a redistributor is there or not.
    pub region: PhysRange,
    /// Frames that hold a redistributor (up to the first with `GICR_TYPER.Last`): EL2 touches
    /// only these; a guarded page past them is never accessed, only refused.
    pub present: u64,
}

/// Whether the frame region `region` is usable: 64 KiB aligned, non-empty.
pub fn region_ok(region: &PhysRange) -> bool {
    region.start.0.is_multiple_of(0x1_0000) && region.size() > 0
}

/// The guarded pages of `region`: the first page of every [`RD_STRIDE`].
pub fn guarded_pages(region: PhysRange) -> impl Iterator<Item = PhysAddr> {
    (region.start.0..region.end.0).step_by(RD_STRIDE as usize).map(PhysAddr)
}

/// The first page of every redistributor frame's `SGI_base` in `region`: not guarded (the
/// host enables its PPIs there), but mapped in EL2's stage 1 as well, for the linked virtual
/// timer's active state ([`sgi_base_of`]).
pub fn sgi_pages(region: PhysRange) -> impl Iterator<Item = PhysAddr> {
    guarded_pages(region).map(|p| PhysAddr(p.0 + SGI_BASE_OFFSET)).filter(move |p| region.contains(*p))
}

/// The `SGI_base` frame of the redistributor of the CPU with `MPIDR_EL1` = `mpidr`: the present
/// one whose `GICR_TYPER.Affinity_Value` (bits 63:32: `Aff3.Aff2.Aff1.Aff0`) is the CPU's.
pub fn sgi_base_of(rd: &Redistributors, mpidr: u64, io: &impl GuardedIo) -> Option<PhysAddr> {
    let affinity = (mpidr & 0xFF_FFFF) | ((mpidr >> 32) & 0xFF) << 24;
    (0..rd.present).map(|i| rd.region.start.0 + i * RD_STRIDE).find_map(|base| {
        // SAFETY: a present redistributor's guarded page, mapped Device at boot; `GICR_TYPER`
        // is 64-bit and aligned.
        let typer = unsafe { io.read(PhysAddr(base + GICR_TYPER), 8) };
        (typer >> 32 == affinity).then_some(PhysAddr(base + SGI_BASE_OFFSET))
    })
}

/// The frame index and offset of `pa` if it lies in a guarded page of `region`.
pub fn guarded(region: &PhysRange, pa: u64) -> Option<(u64, u64)> {
    if !region.contains(PhysAddr(pa)) {
        return None;
    }
    let rel = pa - region.start.0;
    (rel % RD_STRIDE < PAGE_SIZE).then_some((rel / RD_STRIDE, rel % RD_STRIDE))
}

/// Whether `range` shares a byte with a guarded page of `region` (a host stage-2 block must
/// not).
pub fn overlaps_guarded(region: &PhysRange, range: &PhysRange) -> bool {
    if !region.overlaps(range) || range.start.0 >= range.end.0 {
        return false;
    }
    // The first guarded page that ends after `range` starts; it overlaps if it starts before
    // `range` ends.
    let rel = range.start.0.saturating_sub(region.start.0);
    let k = if rel < PAGE_SIZE { 0 } else { (rel - PAGE_SIZE) / RD_STRIDE + 1 };
    let page = region.start.0 + k * RD_STRIDE;
    page < region.end.0 && page < range.end.0
}

/// The value EL2 writes for a host write of `value` at `offset` of a guarded page:
/// `GICR_CTLR` without `EnableLPIs`, everything else unchanged.
pub const fn filter_write(offset: u64, value: u64) -> u64 {
    if offset == GICR_CTLR {
        value & !CTLR_ENABLE_LPIS
    } else {
        value
    }
}

/// Decodes a host data abort on `pa`: the offset in its guarded page and the access, if EL2
/// performs it (a guarded page of a present redistributor, `ISV` set, 4 bytes aligned or
/// 8 bytes at a 64-bit register).
pub fn decode(rd: &Redistributors, esr: u64, pa: u64) -> Option<(u64, MmioAccess)> {
    let (frame, offset) = guarded(&rd.region, pa)?;
    if frame >= rd.present {
        return None;
    }
    let access = decode_mmio(esr)?;
    let ok = match access.size {
        4 => offset % 4 == 0,
        8 => REGS64.contains(&offset),
        _ => false,
    };
    ok.then_some((offset, access))
}

/// Performs a host data abort on a guarded page for the host: `x` are its `x0..=x30`, `esr`
/// and `pa` (the faulting IPA: the host stage 2 is an identity map) what it trapped with.
/// `true`: done, the caller steps the host over the instruction; `false`: inject an abort.
pub fn emulate(rd: &Redistributors, esr: u64, pa: u64, x: &mut [u64; 31], io: &impl GuardedIo) -> bool {
    let Some((offset, access)) = decode(rd, esr, pa) else {
        return false;
    };
    // SAFETY: `decode` checked that `pa` lies in a present redistributor's guarded page
    // (mapped Device RW in EL2's stage 1 at boot) and is aligned to the access size (4, or 8
    // at a 64-bit register).
    unsafe { perform(access, pa, x, |v| filter_write(offset, v), io) };
    true
}

/// Finds the redistributors of `region` at boot (EL2's Device mapping of the guarded pages in
/// place): frames up to the first with `GICR_TYPER.Last`. GICv4 redistributors (`VLPIS`) are
/// not handled: none is emulated (the host then cannot use them; fail closed). A redistributor
/// whose LPIs are already on (firmware's doing: the Arm ARM lets an implementation keep
/// `EnableLPIs` once set) is reported as an EL2 error: its tables are outside EL2's control.
pub fn probe(region: PhysRange, io: &impl GuardedIo) -> Redistributors {
    let frames = region.size().div_ceil(RD_STRIDE);
    let mut present = 0;
    while present < frames {
        let base = region.start.0 + present * RD_STRIDE;
        // SAFETY: frame `present` is guarded and reached in order: every earlier frame held a
        // redistributor without `Last`, so this one exists; `GICR_TYPER` is 64-bit, aligned.
        let typer = unsafe { io.read(PhysAddr(base + GICR_TYPER), 8) };
        if typer & TYPER_VLPIS != 0 {
            log::error!("GICv4 redistributors at {base:#x}: not supported, none emulated for the host");
            return Redistributors { region, present: 0 };
        }
        // SAFETY: as above; `GICR_CTLR` is 32-bit, aligned.
        if unsafe { io.read(PhysAddr(base + GICR_CTLR), 4) } & CTLR_ENABLE_LPIS != 0 {
            log::error!("redistributor at {base:#x} has LPIs enabled before EL2 started");
        }
        present += 1;
        if typer & TYPER_LAST != 0 {
            break;
        }
    }
    Redistributors { region, present }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// QEMU `virt`'s redistributor region (room for 123) with two redistributors.
    fn qemu() -> Redistributors {
        Redistributors { region: PhysRange::from_size(PhysAddr(0x080A_0000), 0xF6_0000).unwrap(), present: 2 }
    }

    /// A data abort syndrome: `ISV`, `SAS` (log2 size), `SRT`, `SF`, `WnR`, DFSC translation L3.
    fn esr(isv: bool, sas: u64, srt: u64, write: bool) -> u64 {
        (0x24 << 26) | (1 << 25) | (isv as u64) << 24 | sas << 22 | srt << 16 | 1 << 15 | (write as u64) << 6 | 0b00_0111
    }

    /// Redistributor registers as a map; records every access.
    #[derive(Default)]
    struct FakeRd {
        log: RefCell<Vec<(char, u64, u8, u64)>>,
        typer: Vec<u64>,
    }
    impl GuardedIo for FakeRd {
        unsafe fn read(&self, pa: PhysAddr, size: u8) -> u64 {
            let frame = ((pa.0 - 0x080A_0000) / RD_STRIDE) as usize;
            let v = if pa.0 % RD_STRIDE == GICR_TYPER { self.typer.get(frame).copied().unwrap_or(0) } else { 0x1234_5678_9ABC_DEF0 };
            self.log.borrow_mut().push(('r', pa.0, size, v));
            v
        }
        unsafe fn write(&self, pa: PhysAddr, size: u8, value: u64) {
            self.log.borrow_mut().push(('w', pa.0, size, value));
        }
    }

    #[test]
    fn each_cpu_finds_its_own_redistributors_sgi_frame_by_affinity() {
        // Frame 0: Aff0 0; frame 1: Aff3.Aff2.Aff1.Aff0 = 1.2.3.1 (MPIDR bits 39:32, 23:16,
        // 15:8, 7:0; GICR_TYPER bits 63:32).
        let rd = FakeRd { typer: std::vec![0, 0x0102_0301 << 32 | TYPER_LAST], ..Default::default() };
        let q = qemu();
        assert_eq!(sgi_base_of(&q, 0x8000_0000, &rd), Some(PhysAddr(0x080B_0000)), "MPIDR's RES1 bit 31 ignored");
        assert_eq!(sgi_base_of(&q, 1 << 32 | 0x02_0301, &rd), Some(PhysAddr(0x080D_0000)));
        assert_eq!(sgi_base_of(&q, 0x02_0301, &rd), None, "Aff3 differs");
        assert_eq!(sgi_base_of(&Redistributors { present: 1, ..q }, 1 << 32 | 0x02_0301, &rd), None, "only present frames");
        assert!(rd.log.borrow().iter().all(|&(k, pa, size, _)| k == 'r' && size == 8 && pa % RD_STRIDE == GICR_TYPER));
        // The pages EL2 maps for it: the SGI_base frame's first page of every frame.
        assert_eq!(sgi_pages(q.region).count(), 123);
        assert_eq!(sgi_pages(q.region).nth(1), Some(PhysAddr(0x080D_0000)));
    }

    #[test]
    fn guarded_pages_are_the_first_page_of_every_frame() {
        let r = qemu().region;
        assert_eq!(guarded(&r, 0x080A_0000), Some((0, 0)));
        assert_eq!(guarded(&r, 0x080A_0FFC), Some((0, 0xFFC)));
        assert_eq!(guarded(&r, 0x080A_1000), None, "second page of RD_base");
        assert_eq!(guarded(&r, 0x080B_0000), None, "SGI_base");
        assert_eq!(guarded(&r, 0x080C_0078), Some((1, 0x78)));
        assert_eq!(guarded(&r, 0x08FE_0000), Some((122, 0)), "the region's last frame");
        assert_eq!(guarded(&r, 0x0809_FFFC), None, "below the region");
        assert_eq!(guarded(&r, 0x0900_0000), None, "above: the UART");
        assert_eq!(guarded_pages(r).count(), 123);
        assert_eq!(guarded_pages(r).nth(1), Some(PhysAddr(0x080C_0000)));
        assert!(region_ok(&r));
        assert!(!region_ok(&PhysRange::from_size(PhysAddr(0x080A_1000), RD_STRIDE).unwrap()));
    }

    #[test]
    fn blocks_over_a_guarded_page_are_found() {
        let r = qemu().region;
        let range = |s: u64, n: u64| PhysRange::from_size(PhysAddr(s), n).unwrap();
        assert!(overlaps_guarded(&r, &range(0, 1 << 30)), "the GiB below RAM");
        assert!(overlaps_guarded(&r, &range(0x0800_0000, 2 << 20)));
        assert!(overlaps_guarded(&r, &range(0x08E0_0000, 2 << 20)));
        assert!(!overlaps_guarded(&r, &range(0x0900_0000, 2 << 20)), "past the region");
        assert!(!overlaps_guarded(&r, &range(0x0800_0000, 0xA_0000)), "the distributor, below");
        assert!(overlaps_guarded(&r, &range(0x080A_0FFF, 1)));
        assert!(!overlaps_guarded(&r, &range(0x080A_1000, PAGE_SIZE)), "the page after the guard");
        assert!(!overlaps_guarded(&r, &range(0x080A_1000, RD_STRIDE - PAGE_SIZE)), "everything between two guards");
        assert!(overlaps_guarded(&r, &range(0x080A_1000, RD_STRIDE - PAGE_SIZE + 1)), "one byte of the next guard");
        assert!(overlaps_guarded(&r, &range(0x08FE_0000, PAGE_SIZE)));
        assert!(!overlaps_guarded(&r, &range(0x08FE_1000, 0x1F000)));
    }

    #[test]
    fn only_enable_lpis_in_gicr_ctlr_is_filtered() {
        assert_eq!(filter_write(GICR_CTLR, 1), 0);
        assert_eq!(filter_write(GICR_CTLR, 0xFFFF_FFFF), 0xFFFF_FFFE);
        assert_eq!(filter_write(GICR_CTLR, 0x0700_0000), 0x0700_0000, "DPG bits kept");
        assert_eq!(filter_write(0x14, 1), 1, "GICR_WAKER");
        assert_eq!(filter_write(0x70, 0x4000_0F8F), 0x4000_0F8F, "GICR_PROPBASER passes: never used");
        assert_eq!(filter_write(0x78, 0x4000_0001), 0x4000_0001, "GICR_PENDBASER");
    }

    #[test]
    fn decoding_accepts_only_architected_accesses() {
        let rd = qemu();
        let (w32, r64) = (esr(true, 2, 3, true), esr(true, 3, 3, false));
        assert_eq!(decode(&rd, w32, 0x080A_0000).map(|d| (d.0, d.1.size, d.1.write)), Some((0, 4, true)));
        assert_eq!(decode(&rd, r64, 0x080C_0008).map(|d| (d.0, d.1.size, d.1.write)), Some((8, 8, false)));
        assert_eq!(decode(&rd, r64, 0x080A_0078).map(|d| d.0), Some(0x78));
        assert_eq!(decode(&rd, esr(false, 2, 3, true), 0x080A_0000), None, "no ISV");
        assert_eq!(decode(&rd, esr(true, 0, 3, true), 0x080A_0000), None, "byte");
        assert_eq!(decode(&rd, esr(true, 1, 3, true), 0x080A_0000), None, "halfword");
        assert_eq!(decode(&rd, w32, 0x080A_0002), None, "unaligned");
        assert_eq!(decode(&rd, esr(true, 3, 3, true), 0x080A_0000), None, "64-bit GICR_CTLR");
        assert_eq!(decode(&rd, r64, 0x080A_0014), None, "64-bit GICR_WAKER");
        assert_eq!(decode(&rd, w32, 0x080E_0000), None, "frame 2: no redistributor");
        assert_eq!(decode(&rd, w32, 0x080A_1000), None, "not a guarded page");
    }

    #[test]
    fn emulation_clears_enable_lpis_and_passes_the_rest() {
        let rd = qemu();
        let io = FakeRd::default();
        let mut x = [0u64; 31];
        x[5] = 0xFFFF_FFFF_0000_0003;
        assert!(emulate(&rd, esr(true, 2, 5, true), 0x080C_0000, &mut x, &io));
        x[6] = 0x4000_0F8F;
        assert!(emulate(&rd, esr(true, 3, 6, true), 0x080C_0070, &mut x, &io));
        assert!(emulate(&rd, esr(true, 2, 31, true), 0x080C_0014, &mut x, &io), "XZR stores 0");
        assert!(emulate(&rd, esr(true, 2, 7, false), 0x080A_0000, &mut x, &io));
        assert_eq!(x[7], 0x9ABC_DEF0, "32-bit read, zero-extended");
        assert!(emulate(&rd, esr(true, 3, 30, false), 0x080A_0078, &mut x, &io));
        assert_eq!(x[30], 0x1234_5678_9ABC_DEF0);
        assert!(emulate(&rd, esr(true, 2, 31, false), 0x080A_0000, &mut x, &io), "a read into XZR is performed and dropped");
        assert_eq!(
            io.log.borrow().as_slice(),
            &[
                ('w', 0x080C_0000, 4, 2),
                ('w', 0x080C_0070, 8, 0x4000_0F8F),
                ('w', 0x080C_0014, 4, 0),
                ('r', 0x080A_0000, 4, 0x1234_5678_9ABC_DEF0),
                ('r', 0x080A_0078, 8, 0x1234_5678_9ABC_DEF0),
                ('r', 0x080A_0000, 4, 0x1234_5678_9ABC_DEF0),
            ]
        );
        // Refused: nothing touched, registers unchanged.
        let before = x;
        assert!(!emulate(&rd, esr(false, 2, 5, true), 0x080C_0000, &mut x, &io));
        assert!(!emulate(&rd, esr(true, 2, 5, false), 0x0810_0000, &mut x, &io));
        assert_eq!(io.log.borrow().len(), 6);
        assert_eq!(x, before);
    }

    #[test]
    fn probe_stops_at_the_last_redistributor() {
        let region = qemu().region;
        let io = FakeRd { typer: vec![1, 1 | 1 << 8 | TYPER_LAST, 1], ..Default::default() };
        assert_eq!(probe(region, &io), qemu());
        assert_eq!(io.log.borrow().len(), 4, "TYPER and CTLR of two frames, nothing past Last");
        let gicv4 = FakeRd { typer: vec![1 | TYPER_VLPIS | TYPER_LAST], ..Default::default() };
        assert_eq!(probe(region, &gicv4).present, 0, "GICv4: fail closed");
        let small = PhysRange::from_size(PhysAddr(0x080A_0000), 2 * RD_STRIDE).unwrap();
        let no_last = FakeRd { typer: vec![1, 1, 1], ..Default::default() };
        assert_eq!(probe(small, &no_last).present, 2, "never past the region");
    }
}
