//! VMSAv8-64 translation tables with a 4 KiB granule: EL2's own stage 1 and every stage 2.
//!
//! Place in the flow: *state change*, below the ownership record. This module only edits table
//! memory; it issues no barrier and no TLB invalidation. The caller (which knows whether the
//! tables are live, and on which CPUs) does the maintenance the Arm ARM requires:
//!
//! - after [`PageTable::map`] into entries that were invalid: `DSB ISHST` so the table walker
//!   sees the new entries (no TLBI: invalid entries are never cached);
//! - after [`PageTable::unmap`]: `DSB ISHST`, TLBI of the returned range, `DSB ISH`.
//!
//! `map` never overwrites a valid entry, so replacing a mapping is always unmap (break), TLBI,
//! then map (make): break-before-make by construction.
//!
//! Descriptor encodings (Arm ARM D8.3):
//!
//! | field | EL2 stage 1 | stage 2 |
//! |---|---|---|
//! | memory type | `AttrIndx[4:2]` into `MAIR_EL2` ([`MAIR_EL2_VALUE`]) | `MemAttr[5:2]` (`0b1111` Normal WB, `0b0001` Device-nGnRE); with `HCR_EL2.FWB` ([`Format::Stage2Fwb`], FEAT_S2FWB) Normal is `0b0110`: `MemAttr[2]` = 1 Normal, `MemAttr[1:0]` = `0b10` Write-Back *forced*, whatever stage 1 says |
//! | write | `AP[2]` = 0 (bit 7 clear); `AP[1]` (bit 6) is RES1 | `S2AP[1]` (bit 7) |
//! | read | always | `S2AP[0]` (bit 6) |
//! | execute | `XN` (bit 54) clear | `XN[1:0]` (bits 54:53) = `0b00` |
//! | shareability | `SH` = Inner Shareable for Normal | same |

use crate::mem::addr::{PhysAddr, PAGE_SIZE};

/// Entries in one table.
pub const ENTRIES: usize = 512;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 0b11 << 8;
const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;
const S1_ATTRINDX_SHIFT: u64 = 2;
const S1_ATTRINDX_MASK: u64 = 0b111;
const S1_AP_RO: u64 = 1 << 7;
const S1_AP1_RES1: u64 = 1 << 6;
const S1_XN: u64 = 1 << 54;
const S2_MEMATTR_SHIFT: u64 = 2;
const S2_MEMATTR_MASK: u64 = 0b1111;
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111;
const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
/// With `HCR_EL2.FWB`: `MemAttr[2]` = 1 (Normal), `MemAttr[1:0]` = `0b10` (forced Write-Back).
const S2_MEMATTR_FWB_NORMAL_WB: u64 = 0b0110;
/// With `HCR_EL2.FWB`: `MemAttr[2]` = 0 (Device), `MemAttr[1:0]` = `0b01` (nGnRE).
const S2_MEMATTR_FWB_DEVICE_NGNRE: u64 = 0b0001;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const S2_XN: u64 = 0b10 << 53;
const S2_XN_MASK: u64 = 0b11 << 53;

/// `MAIR_EL2` as EL2's stage-1 `AttrIndx` values assume: index 0 Normal Write-Back
/// (`0xFF`), index 1 Device-nGnRE (`0x04`), index 2 Tagged Normal Write-Back (`0xF0`: the
/// fixmap's tagged template, through which EL2 clears and scrubs allocation tags).
pub const MAIR_EL2_VALUE: u64 = 0xFF | (0x04 << 8) | (0xF0 << 16);

/// Which translation regime a table is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// EL2's own (non-VHE) stage 1.
    El2Stage1,
    /// A stage 2 (host or guest) walked with `HCR_EL2.FWB` clear: the memory type combines
    /// with stage 1's (a guest's Non-cacheable mapping of Normal memory is Non-cacheable).
    Stage2,
    /// A stage 2 walked with `HCR_EL2.FWB` set (FEAT_S2FWB): Normal memory is Write-Back
    /// whatever stage 1 says, so the guest's view is coherent with everyone's cacheable one.
    Stage2Fwb,
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// Normal, inner and outer Write-Back, Inner Shareable.
    Normal,
    /// Normal Write-Back with allocation tags (stage 1 only; stage 2 encodes it as `Normal`).
    NormalTagged,
    /// Device-nGnRE.
    Device,
}

/// Access permissions of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Readable (stage 1 mappings are always readable).
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Perms {
    /// Read, write, no execute.
    pub const RW: Perms = Perms { read: true, write: true, exec: false };
    /// Read only.
    pub const RO: Perms = Perms { read: true, write: false, exec: false };
    /// Read and execute.
    pub const RX: Perms = Perms { read: true, write: false, exec: true };
    /// Read, write and execute (stage 2 of RAM only: a guest decides for itself).
    pub const RWX: Perms = Perms { read: true, write: true, exec: true };
}

/// What a leaf maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Memory type.
    pub mem: MemType,
    /// Permissions.
    pub perms: Perms,
}

/// Why a table operation failed. Nothing in the tables changed unless documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// The input address size is not supported.
    BadGeometry,
    /// Address or size not aligned, range empty or outside the input address space.
    BadRange,
    /// A valid entry is in the way (break-before-make must be done by the caller).
    AlreadyMapped,
    /// No page left for a table.
    NoMemory,
    /// The attributes cannot be expressed (e.g. a writable and executable EL2 page).
    BadAttrs,
}

/// Where table pages come from and how EL2 reaches them.
pub trait TableMemory {
    /// A zeroed, page-aligned page, or `None` if none is left.
    fn alloc_table(&mut self) -> Option<PhysAddr>;
    /// Returns a page obtained from [`TableMemory::alloc_table`].
    fn free_table(&mut self, pa: PhysAddr);
    /// A pointer through which EL2 reads and writes the 512 entries of the table at `pa`.
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64;
    /// Pages still free.
    fn free_pages(&self) -> usize;
}

/// A leaf found by [`PageTable::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Level of the leaf (1: 1 GiB block, 2: 2 MiB block, 3: 4 KiB page).
    pub level: u8,
    /// First input address the leaf maps.
    pub ia_base: u64,
    /// Output address of `ia_base`.
    pub pa_base: PhysAddr,
    /// Bytes mapped by the leaf.
    pub size: u64,
    /// The raw descriptor.
    pub desc: u64,
}

/// Bytes mapped by one entry at `level`.
pub const fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - level as u32))
}

const fn index(ia: u64, level: u8) -> usize {
    ((ia >> (12 + 9 * (3 - level as u32))) & (ENTRIES as u64 - 1)) as usize
}

/// The largest stage-2 input size a [`PageTable`] can give a valid walk on CPUs whose
/// physical address size is `pa_bits` (and never above it: `VTCR_EL2.PS`). A 4 KiB-granule
/// stage 2 may start at level 0 (`VTCR_EL2.SL0 = 0b10`, which [`PageTable::new`] uses from 40
/// bits) only on a CPU with a PA of at least 44 bits: below, the Arm ARM makes that `SL0`
/// invalid (`AArch64.S2InvalidSL`: every access a level-0 translation fault). A level-1 start
/// covers 39 bits without concatenated root tables, which are not used.
pub const fn stage2_max_ia_bits(pa_bits: u8) -> u8 {
    let most = if pa_bits >= 44 { 48 } else { 39 };
    if pa_bits < most {
        pa_bits
    } else {
        most
    }
}

/// One set of translation tables.
#[derive(Debug)]
pub struct PageTable {
    root: PhysAddr,
    start_level: u8,
    ia_bits: u8,
    format: Format,
}

impl PageTable {
    /// Allocates an empty table for `ia_bits`-bit input addresses.
    ///
    /// Supported sizes are 32..=48 bits: 40 bits and above start at level 0 (four levels),
    /// below at level 1. Concatenated root tables are not used. A stage 2 must also fit
    /// [`stage2_max_ia_bits`] of the CPUs that walk it, which the caller checks.
    ///
    /// # Errors
    /// [`PtError::BadGeometry`] for other sizes, [`PtError::NoMemory`] without a root page.
    pub fn new(mem: &mut impl TableMemory, format: Format, ia_bits: u8) -> Result<Self, PtError> {
        let start_level = match ia_bits {
            40..=48 => 0,
            32..=39 => 1,
            _ => return Err(PtError::BadGeometry),
        };
        let root = mem.alloc_table().ok_or(PtError::NoMemory)?;
        Ok(Self { root, start_level, ia_bits, format })
    }

    /// Physical address of the root table (for `TTBR0_EL2` / `VTTBR_EL2`).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Level of the root table (for `VTCR_EL2.SL0`).
    pub fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Input address size in bits (for `TCR_EL2.T0SZ` / `VTCR_EL2.T0SZ`).
    pub fn ia_bits(&self) -> u8 {
        self.ia_bits
    }

    fn encode_leaf(&self, level: u8, pa: PhysAddr, attrs: Attrs) -> Result<u64, PtError> {
        let kind = if level == 3 { TABLE_OR_PAGE } else { 0 };
        let mut d = VALID | kind | AF | (pa.0 & OA_MASK);
        let normal = attrs.mem != MemType::Device;
        if normal {
            d |= SH_INNER;
        }
        match self.format {
            Format::El2Stage1 => {
                if !attrs.perms.read || (attrs.perms.write && attrs.perms.exec) {
                    return Err(PtError::BadAttrs);
                }
                let idx = match attrs.mem {
                    MemType::Normal => 0,
                    MemType::Device => 1,
                    MemType::NormalTagged => 2,
                };
                d |= idx << S1_ATTRINDX_SHIFT | S1_AP1_RES1;
                if !attrs.perms.write {
                    d |= S1_AP_RO;
                }
                if !attrs.perms.exec {
                    d |= S1_XN;
                }
            }
            Format::Stage2 | Format::Stage2Fwb => {
                let memattr = match (self.format, normal) {
                    (Format::Stage2Fwb, true) => S2_MEMATTR_FWB_NORMAL_WB,
                    (Format::Stage2Fwb, false) => S2_MEMATTR_FWB_DEVICE_NGNRE,
                    (_, true) => S2_MEMATTR_NORMAL_WB,
                    (_, false) => S2_MEMATTR_DEVICE_NGNRE,
                };
                d |= memattr << S2_MEMATTR_SHIFT;
                if attrs.perms.read {
                    d |= S2AP_R;
                }
                if attrs.perms.write {
                    d |= S2AP_W;
                }
                if !attrs.perms.exec {
                    d |= S2_XN;
                }
            }
        }
        Ok(d)
    }

    fn read(mem: &impl TableMemory, table: PhysAddr, i: usize) -> u64 {
        debug_assert!(i < ENTRIES);
        // SAFETY: `table` is a table page of this `PageTable` (allocated from `mem`), so
        // `table_ptr` points at 512 entries owned by us; `i < 512`. Volatile because the table
        // walker of another CPU may read the entry concurrently.
        unsafe { mem.table_ptr(table).add(i).read_volatile() }
    }

    fn write(mem: &impl TableMemory, table: PhysAddr, i: usize, v: u64) {
        debug_assert!(i < ENTRIES);
        // SAFETY: as in `read`; a single aligned 64-bit store is single-copy atomic, so a
        // concurrent walker sees either the old or the new descriptor.
        unsafe { mem.table_ptr(table).add(i).write_volatile(v) }
    }

    fn check_range(&self, ia: u64, size: u64) -> Result<(), PtError> {
        let end = ia.checked_add(size).ok_or(PtError::BadRange)?;
        if size == 0 || !ia.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) || end > 1u64 << self.ia_bits {
            return Err(PtError::BadRange);
        }
        Ok(())
    }

    /// Maps `[ia, ia + size)` to `[pa, pa + size)` with `attrs`, using blocks no larger than
    /// `level_size(min_leaf_level)` where alignment allows (`min_leaf_level` in 1..=3).
    ///
    /// # Errors
    /// [`PtError::AlreadyMapped`] if any entry on the way is a valid leaf; [`PtError::NoMemory`]
    /// if a table page cannot be allocated. On error, leaves written before the failure stay
    /// written (callers that need all-or-nothing map one leaf per call).
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        ia: u64,
        pa: PhysAddr,
        size: u64,
        attrs: Attrs,
        min_leaf_level: u8,
    ) -> Result<(), PtError> {
        self.check_range(ia, size)?;
        if !pa.is_page_aligned() || pa.0.checked_add(size).is_none_or(|e| e > OA_MASK + PAGE_SIZE) {
            return Err(PtError::BadRange);
        }
        if !(1..=3).contains(&min_leaf_level) {
            return Err(PtError::BadRange);
        }
        self.encode_leaf(3, pa, attrs)?;
        let mut off = 0;
        while off < size {
            let (cia, cpa, left) = (ia + off, pa.0 + off, size - off);
            let level = (min_leaf_level.max(self.start_level.max(1))..=3)
                .find(|&l| {
                    let s = level_size(l);
                    cia % s == 0 && cpa % s == 0 && left >= s
                })
                .unwrap_or(3);
            self.map_leaf(mem, cia, PhysAddr(cpa), level, attrs)?;
            off += level_size(level);
        }
        Ok(())
    }

    fn map_leaf(
        &mut self,
        mem: &mut impl TableMemory,
        ia: u64,
        pa: PhysAddr,
        level: u8,
        attrs: Attrs,
    ) -> Result<(), PtError> {
        let leaf = self.encode_leaf(level, pa, attrs)?;
        let table = self.walk_alloc(mem, ia, level)?;
        let i = index(ia, level);
        if Self::read(mem, table, i) & VALID != 0 {
            return Err(PtError::AlreadyMapped);
        }
        Self::write(mem, table, i, leaf);
        Ok(())
    }

    /// Walks from the root to the table at `level` that holds `ia`'s entry, allocating missing
    /// tables on the way. A block on the way is [`PtError::AlreadyMapped`].
    fn walk_alloc(&mut self, mem: &mut impl TableMemory, ia: u64, level: u8) -> Result<PhysAddr, PtError> {
        let mut table = self.root;
        for l in self.start_level..level {
            let i = index(ia, l);
            let d = Self::read(mem, table, i);
            table = if d & VALID == 0 {
                let next = mem.alloc_table().ok_or(PtError::NoMemory)?;
                // The new table is zero (all invalid) before it becomes reachable; the caller's
                // DSB ISHST after `map` orders both stores before any walk.
                Self::write(mem, table, i, next.0 | VALID | TABLE_OR_PAGE);
                next
            } else if d & TABLE_OR_PAGE != 0 {
                PhysAddr(d & OA_MASK)
            } else {
                return Err(PtError::AlreadyMapped);
            };
        }
        Ok(table)
    }

    /// Makes sure the table of `level` (2 or 3) covering `ia` exists and returns a pointer to
    /// the (invalid) entry for `ia` there, so the caller can install and remove a block or page
    /// directly: a per-CPU *fixmap* slot. The caller owns the entry from then on.
    ///
    /// # Errors
    /// [`PtError::BadRange`] for another level, [`PtError::AlreadyMapped`] if a block or valid
    /// entry covers `ia`, [`PtError::NoMemory`].
    pub fn reserve_leaf(&mut self, mem: &mut impl TableMemory, ia: u64, level: u8) -> Result<*mut u64, PtError> {
        if !(2..=3).contains(&level) || level < self.start_level {
            return Err(PtError::BadRange);
        }
        self.check_range(ia & !(level_size(level) - 1), level_size(level))?;
        let table = self.walk_alloc(mem, ia, level)?;
        if Self::read(mem, table, index(ia, level)) & VALID != 0 {
            return Err(PtError::AlreadyMapped);
        }
        // SAFETY: `index(ia, level) < 512`, inside the table page.
        Ok(unsafe { mem.table_ptr(table).add(index(ia, level)) })
    }

    /// The leaf descriptor of `level` (a level-3 page, or a block above) this table would write
    /// for `pa` with `attrs`.
    ///
    /// # Errors
    /// [`PtError::BadAttrs`] as for [`PageTable::map`].
    pub fn leaf_descriptor(&self, level: u8, pa: PhysAddr, attrs: Attrs) -> Result<u64, PtError> {
        self.encode_leaf(level, pa, attrs)
    }

    /// Finds the leaf mapping `ia`, if any.
    pub fn lookup(&self, mem: &impl TableMemory, ia: u64) -> Option<Leaf> {
        if ia >> self.ia_bits != 0 {
            return None;
        }
        let mut table = self.root;
        for level in self.start_level..=3 {
            let d = Self::read(mem, table, index(ia, level));
            if d & VALID == 0 {
                return None;
            }
            if level == 3 || d & TABLE_OR_PAGE == 0 {
                let size = level_size(level);
                return Some(Leaf {
                    level,
                    ia_base: ia & !(size - 1),
                    pa_base: PhysAddr(d & OA_MASK & !(size - 1)),
                    size,
                    desc: d,
                });
            }
            table = PhysAddr(d & OA_MASK);
        }
        None
    }

    /// The level of the entry a walk for `ia` ends at: a leaf, or the first invalid entry. A
    /// new leaf for `ia` can be no larger than `level_size` of it without replacing a table
    /// (which `map` never does).
    pub fn walk_level(&self, mem: &impl TableMemory, ia: u64) -> u8 {
        let mut table = self.root;
        for level in self.start_level..3 {
            let d = Self::read(mem, table, index(ia, level));
            if d & VALID == 0 || d & TABLE_OR_PAGE == 0 {
                return level;
            }
            table = PhysAddr(d & OA_MASK);
        }
        3
    }

    /// Removes every leaf that maps any byte of `[ia, ia + size)`, whole: a block that only
    /// partly overlaps the range is removed entirely. Tables themselves are kept.
    ///
    /// Returns the input range that was unmapped (the union of removed leaves), which the
    /// caller must invalidate from the TLBs, or `None` if nothing was mapped.
    ///
    /// # Errors
    /// [`PtError::BadRange`] for an unaligned or out-of-range request.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, ia: u64, size: u64) -> Result<Option<(u64, u64)>, PtError> {
        self.check_range(ia, size)?;
        let mut removed: Option<(u64, u64)> = None;
        let mut cur = ia;
        let end = ia + size;
        while cur < end {
            match self.lookup(mem, cur) {
                Some(leaf) => {
                    self.clear_leaf(mem, leaf);
                    let (s, e) = (leaf.ia_base, leaf.ia_base + leaf.size);
                    removed = Some(match removed {
                        None => (s, e),
                        Some((a, b)) => (a.min(s), b.max(e)),
                    });
                    cur = e;
                }
                None => cur = (cur & !(PAGE_SIZE - 1)) + PAGE_SIZE,
            }
        }
        Ok(removed.map(|(s, e)| (s, e - s)))
    }

    /// Frees every table below the root that covers any of `[ia, ia + size)` and maps nothing
    /// (no valid entry, once the empty tables below it are gone), clearing the entry that
    /// pointed at it. Returns how many tables were freed.
    ///
    /// A walker may still hold the freed tables in its walk cache: the caller invalidates the
    /// TLBs of the regime before anyone can allocate (and so rewrite) the freed pages, i.e.
    /// before it releases the lock that guards `mem`. Until then they read as empty.
    ///
    /// # Errors
    /// [`PtError::BadRange`] for an unaligned or out-of-range request.
    pub fn prune(&mut self, mem: &mut impl TableMemory, ia: u64, size: u64) -> Result<usize, PtError> {
        self.check_range(ia, size)?;
        // (whether `table` is now empty, tables freed below it)
        fn walk(mem: &mut impl TableMemory, table: PhysAddr, level: u8, base: u64, range: (u64, u64)) -> (bool, usize) {
            let mut freed = 0;
            for i in 0..ENTRIES {
                let lo = base + i as u64 * level_size(level);
                let hi = lo + level_size(level);
                if hi <= range.0 || lo >= range.1 || level == 3 {
                    continue;
                }
                let d = PageTable::read(mem, table, i);
                if d & VALID != 0 && d & TABLE_OR_PAGE != 0 {
                    let child = PhysAddr(d & OA_MASK);
                    let (empty, below) = walk(mem, child, level + 1, lo, range);
                    freed += below;
                    if empty {
                        PageTable::write(mem, table, i, 0);
                        mem.free_table(child);
                        freed += 1;
                    }
                }
            }
            ((0..ENTRIES).all(|i| PageTable::read(mem, table, i) & VALID == 0), freed)
        }
        Ok(walk(mem, self.root, self.start_level, 0, (ia, ia + size)).1)
    }

    fn clear_leaf(&mut self, mem: &impl TableMemory, leaf: Leaf) {
        let mut table = self.root;
        for level in self.start_level..leaf.level {
            let d = Self::read(mem, table, index(leaf.ia_base, level));
            table = PhysAddr(d & OA_MASK);
        }
        Self::write(mem, table, index(leaf.ia_base, leaf.level), 0);
    }

    /// Calls `f` for every valid leaf, in address order.
    pub fn for_each_leaf(&self, mem: &impl TableMemory, f: &mut impl FnMut(Leaf)) {
        fn walk(mem: &impl TableMemory, table: PhysAddr, level: u8, base: u64, f: &mut impl FnMut(Leaf)) {
            for i in 0..ENTRIES {
                let d = PageTable::read(mem, table, i);
                if d & VALID == 0 {
                    continue;
                }
                let ia = base + i as u64 * level_size(level);
                if level == 3 || d & TABLE_OR_PAGE == 0 {
                    let size = level_size(level);
                    f(Leaf { level, ia_base: ia, pa_base: PhysAddr(d & OA_MASK & !(size - 1)), size, desc: d });
                } else {
                    walk(mem, PhysAddr(d & OA_MASK), level + 1, ia, f);
                }
            }
        }
        walk(mem, self.root, self.start_level, 0, f);
    }

    /// Calls `f` with the physical address of every table page, the root included.
    pub fn for_each_table(&self, mem: &impl TableMemory, f: &mut impl FnMut(PhysAddr)) {
        fn walk(mem: &impl TableMemory, table: PhysAddr, level: u8, f: &mut impl FnMut(PhysAddr)) {
            f(table);
            if level == 3 {
                return;
            }
            for i in 0..ENTRIES {
                let d = PageTable::read(mem, table, i);
                if d & VALID != 0 && d & TABLE_OR_PAGE != 0 {
                    walk(mem, PhysAddr(d & OA_MASK), level + 1, f);
                }
            }
        }
        walk(mem, self.root, self.start_level, f);
    }

    /// Whether a leaf descriptor grants write access (either format).
    pub fn leaf_writable(&self, desc: u64) -> bool {
        match self.format {
            Format::El2Stage1 => desc & S1_AP_RO == 0,
            Format::Stage2 | Format::Stage2Fwb => desc & S2AP_W != 0,
        }
    }

    /// Whether a leaf descriptor lets some exception level execute from it: EL2's stage 1
    /// `XN` (bit 54) clear; a stage 2's `XN[1:0]` (bits 54:53) anything but `0b10` (with
    /// FEAT_XNX, `0b01` and `0b11` leave one of EL0 and EL1 executable).
    pub fn leaf_executable(&self, desc: u64) -> bool {
        match self.format {
            Format::El2Stage1 => desc & S1_XN == 0,
            Format::Stage2 | Format::Stage2Fwb => desc & S2_XN_MASK != S2_XN,
        }
    }

    /// The memory type a leaf descriptor gives, or `None` for an encoding this module never
    /// writes (a stage-1 `AttrIndx` above 2; a stage-2 `MemAttr` other than the two of the
    /// table's format).
    pub fn leaf_mem_type(&self, desc: u64) -> Option<MemType> {
        match self.format {
            Format::El2Stage1 => match (desc >> S1_ATTRINDX_SHIFT) & S1_ATTRINDX_MASK {
                0 => Some(MemType::Normal),
                1 => Some(MemType::Device),
                2 => Some(MemType::NormalTagged),
                _ => None,
            },
            Format::Stage2 | Format::Stage2Fwb => {
                let (normal, device) = match self.format {
                    Format::Stage2Fwb => (S2_MEMATTR_FWB_NORMAL_WB, S2_MEMATTR_FWB_DEVICE_NGNRE),
                    _ => (S2_MEMATTR_NORMAL_WB, S2_MEMATTR_DEVICE_NGNRE),
                };
                match (desc >> S2_MEMATTR_SHIFT) & S2_MEMATTR_MASK {
                    m if m == normal => Some(MemType::Normal),
                    m if m == device => Some(MemType::Device),
                    _ => None,
                }
            }
        }
    }

    /// Frees every table page, the root included. The tables must no longer be live
    /// (not in any `TTBR`/`VTTBR`, TLBs invalidated).
    pub fn destroy(self, mem: &mut impl TableMemory) {
        fn free_level(mem: &mut impl TableMemory, table: PhysAddr, level: u8) {
            if level < 3 {
                for i in 0..ENTRIES {
                    let d = PageTable::read(mem, table, i);
                    if d & VALID != 0 && d & TABLE_OR_PAGE != 0 {
                        free_level(mem, PhysAddr(d & OA_MASK), level + 1);
                    }
                }
            }
            mem.free_table(table);
        }
        free_level(mem, self.root, self.start_level);
    }
}

#[cfg(test)]
pub(crate) mod test_mem {
    //! A fake table memory whose "physical" addresses are far from anything real, so code that
    //! dereferences a physical address directly instead of going through `table_ptr` fails.
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    pub struct FakeMemory {
        pages: Vec<Option<Box<[u64; ENTRIES]>>>,
        pub limit: usize,
    }

    pub const FAKE_BASE: u64 = 0x7_0000_0000;

    impl FakeMemory {
        pub fn new(limit: usize) -> Self {
            Self { pages: Vec::new(), limit }
        }
        pub fn in_use(&self) -> usize {
            self.pages.iter().filter(|p| p.is_some()).count()
        }
    }

    impl TableMemory for FakeMemory {
        fn alloc_table(&mut self) -> Option<PhysAddr> {
            if self.in_use() >= self.limit {
                return None;
            }
            let slot = match self.pages.iter().position(|p| p.is_none()) {
                Some(i) => i,
                None => {
                    self.pages.push(None);
                    self.pages.len() - 1
                }
            };
            self.pages[slot] = Some(Box::new([0; ENTRIES]));
            Some(PhysAddr(FAKE_BASE + slot as u64 * PAGE_SIZE))
        }
        fn free_table(&mut self, pa: PhysAddr) {
            let slot = ((pa.0 - FAKE_BASE) / PAGE_SIZE) as usize;
            assert!(self.pages[slot].take().is_some(), "double free of {pa:?}");
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            let slot = ((pa.0 - FAKE_BASE) / PAGE_SIZE) as usize;
            self.pages[slot].as_ref().expect("use after free").as_ptr() as *mut u64
        }
        fn free_pages(&self) -> usize {
            self.limit - self.in_use()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_mem::FakeMemory;
    use super::*;

    const RAM: Attrs = Attrs { mem: MemType::Normal, perms: Perms::RWX };
    const DEV: Attrs = Attrs { mem: MemType::Device, perms: Perms::RW };
    const G: u64 = 1 << 30;
    const M2: u64 = 2 << 20;

    #[test]
    fn geometry_follows_ia_size() {
        let mut m = FakeMemory::new(8);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 48).unwrap().start_level(), 0);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 40).unwrap().start_level(), 0);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 39).unwrap().start_level(), 1);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 32).unwrap().start_level(), 1);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 31).unwrap_err(), PtError::BadGeometry);
        assert_eq!(PageTable::new(&mut m, Format::Stage2, 49).unwrap_err(), PtError::BadGeometry);
    }

    #[test]
    fn a_level_0_stage_2_needs_a_44_bit_pa() {
        for (pa, most) in [(32, 32), (36, 36), (40, 39), (42, 39), (44, 44), (48, 48), (52, 48)] {
            assert_eq!(stage2_max_ia_bits(pa), most, "PA {pa} bits");
            // What fits starts at a level the CPU can walk.
            let mut m = FakeMemory::new(1);
            let level = PageTable::new(&mut m, Format::Stage2, most).unwrap().start_level();
            assert!(level == 1 || pa >= 44, "PA {pa} bits, {most}-bit IPA: level {level}");
        }
    }

    #[test]
    fn uses_largest_aligned_blocks() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        // 1 GiB + 2 MiB + 4 KiB starting at a 1 GiB boundary.
        t.map(&mut m, G, PhysAddr(G), G + M2 + PAGE_SIZE, RAM, 1).unwrap();
        assert_eq!(t.lookup(&m, G + 5).unwrap().level, 1);
        assert_eq!(t.lookup(&m, 2 * G + 5).unwrap().level, 2);
        assert_eq!(t.lookup(&m, 2 * G + M2).unwrap().level, 3);
        assert_eq!(t.lookup(&m, 2 * G + M2 + PAGE_SIZE), None);
        // Tables: root(L0) + L1 + L2 + L3.
        assert_eq!(m.in_use(), 4);
    }

    #[test]
    fn min_leaf_level_limits_block_size() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::El2Stage1, 48).unwrap();
        t.map(&mut m, G, PhysAddr(G), M2, Attrs { mem: MemType::Normal, perms: Perms::RW }, 3).unwrap();
        assert_eq!(t.lookup(&m, G).unwrap().level, 3);
        assert_eq!(t.lookup(&m, G + M2 - 1).unwrap().level, 3);
    }

    #[test]
    fn stage2_descriptor_bits_are_exact() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, 0x4000_0000, PhysAddr(0x4000_0000), PAGE_SIZE, RAM, 3).unwrap();
        t.map(&mut m, 0x0900_0000, PhysAddr(0x0900_0000), PAGE_SIZE, DEV, 3).unwrap();
        // Page, AF, SH inner, S2AP RW, MemAttr 0b1111, executable.
        assert_eq!(t.lookup(&m, 0x4000_0000).unwrap().desc, 0x4000_0000 | 0b11 | 1 << 10 | 0b11 << 8 | 0b11 << 6 | 0xF << 2);
        // Device-nGnRE, not shareable field, XN.
        assert_eq!(t.lookup(&m, 0x0900_0000).unwrap().desc, 0x0900_0000 | 0b11 | 1 << 10 | 0b11 << 6 | 0b0001 << 2 | 0b10 << 53);
    }

    #[test]
    fn el2_stage1_descriptor_bits_are_exact() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::El2Stage1, 48).unwrap();
        let text = Attrs { mem: MemType::Normal, perms: Perms::RX };
        let data = Attrs { mem: MemType::Normal, perms: Perms::RW };
        t.map(&mut m, 0x4020_0000, PhysAddr(0x4020_0000), PAGE_SIZE, text, 3).unwrap();
        t.map(&mut m, 0x4020_1000, PhysAddr(0x4020_1000), PAGE_SIZE, data, 3).unwrap();
        let common = 0b11 | 1 << 10 | 0b11 << 8 | 1 << 6;
        assert_eq!(t.lookup(&m, 0x4020_0000).unwrap().desc, 0x4020_0000 | common | 1 << 7);
        assert_eq!(t.lookup(&m, 0x4020_1000).unwrap().desc, 0x4020_1000 | common | 1 << 54);
    }

    #[test]
    fn el2_refuses_writable_executable_pages() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::El2Stage1, 48).unwrap();
        let wx = Attrs { mem: MemType::Normal, perms: Perms::RWX };
        assert_eq!(t.map(&mut m, 0, PhysAddr(0), PAGE_SIZE, wx, 3), Err(PtError::BadAttrs));
        assert_eq!(m.in_use(), 1, "nothing allocated for a refused mapping");
    }

    #[test]
    fn map_never_overwrites_a_valid_entry() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, 0, PhysAddr(0), M2, RAM, 2).unwrap();
        assert_eq!(t.map(&mut m, 0, PhysAddr(0x1000), PAGE_SIZE, RAM, 3), Err(PtError::AlreadyMapped), "page under a block");
        assert_eq!(t.map(&mut m, 0, PhysAddr(0), M2, DEV, 2), Err(PtError::AlreadyMapped));
        assert_eq!(t.lookup(&m, 0).unwrap().desc & (0xF << 2), 0xF << 2, "still Normal");
    }

    #[test]
    fn walk_level_stops_at_the_first_invalid_entry_or_leaf() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        assert_eq!(t.walk_level(&m, G), 0, "empty root");
        t.map(&mut m, G, PhysAddr(G), M2, RAM, 2).unwrap();
        assert_eq!(t.walk_level(&m, G + 8), 2, "the block");
        assert_eq!(t.walk_level(&m, G + M2), 2, "next to it: invalid level-2 entry");
        // A page in a block that was split: its level-3 entry is where a new leaf must go.
        t.unmap(&mut m, G, M2).unwrap();
        t.map(&mut m, G, PhysAddr(G), PAGE_SIZE, RAM, 3).unwrap();
        assert_eq!(t.walk_level(&m, G + PAGE_SIZE), 3);
        assert_eq!(t.walk_level(&m, 2 * G), 1);
    }

    #[test]
    fn unmap_removes_whole_covering_block() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, G, PhysAddr(G), 2 * M2, RAM, 2).unwrap();
        // Unmapping one page in the first block drops that whole block only.
        assert_eq!(t.unmap(&mut m, G + PAGE_SIZE, PAGE_SIZE), Ok(Some((G, M2))));
        assert_eq!(t.lookup(&m, G), None);
        assert!(t.lookup(&m, G + M2).is_some());
        assert_eq!(t.unmap(&mut m, G, PAGE_SIZE), Ok(None), "already gone");
        // The page can now be mapped on its own.
        t.map(&mut m, G + PAGE_SIZE, PhysAddr(G + PAGE_SIZE), PAGE_SIZE, RAM, 3).unwrap();
        assert_eq!(t.lookup(&m, G + PAGE_SIZE).unwrap().level, 3);
        assert_eq!(t.lookup(&m, G), None);
    }

    #[test]
    fn unmap_spanning_several_leaves_reports_union() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, 0, PhysAddr(0), 4 * PAGE_SIZE, RAM, 3).unwrap();
        assert_eq!(t.unmap(&mut m, PAGE_SIZE, 2 * PAGE_SIZE), Ok(Some((PAGE_SIZE, 2 * PAGE_SIZE))));
        assert!(t.lookup(&m, 0).is_some());
        assert!(t.lookup(&m, 3 * PAGE_SIZE).is_some());
    }

    #[test]
    fn out_of_range_and_unaligned_requests_are_refused() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        assert_eq!(t.map(&mut m, 1 << 40, PhysAddr(0), PAGE_SIZE, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.map(&mut m, (1 << 40) - PAGE_SIZE, PhysAddr(0), 2 * PAGE_SIZE, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.map(&mut m, 1, PhysAddr(0), PAGE_SIZE, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.map(&mut m, 0, PhysAddr(1), PAGE_SIZE, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.map(&mut m, 0, PhysAddr(0), 0, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.map(&mut m, !0xFFF, PhysAddr(0), PAGE_SIZE, RAM, 3), Err(PtError::BadRange));
        assert_eq!(t.unmap(&mut m, 0, !0xFFF), Err(PtError::BadRange));
        assert_eq!(t.lookup(&m, u64::MAX), None);
    }

    #[test]
    fn running_out_of_table_pages_is_an_error() {
        let mut m = FakeMemory::new(2);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        assert_eq!(t.map(&mut m, 0, PhysAddr(0), PAGE_SIZE, RAM, 3), Err(PtError::NoMemory));
    }

    #[test]
    fn reserved_leaf_is_the_entry_lookup_sees() {
        let mut m = FakeMemory::new(8);
        let mut t = PageTable::new(&mut m, Format::El2Stage1, 48).unwrap();
        let va = 0x7F00_0000_1000;
        let e = t.reserve_leaf(&mut m, va, 3).unwrap();
        assert_eq!(t.lookup(&m, va), None);
        let d = t.leaf_descriptor(3, PhysAddr(0x4800_0000), Attrs { mem: MemType::Normal, perms: Perms::RW }).unwrap();
        // SAFETY: `e` points into a live table page of `m`.
        unsafe { e.write_volatile(d) };
        assert_eq!(t.lookup(&m, va).unwrap().pa_base, PhysAddr(0x4800_0000));
        assert_eq!(t.reserve_leaf(&mut m, va, 3), Err(PtError::AlreadyMapped));
        // A level-2 slot in the same table: a block there is what lookup finds.
        let block_va = 0x7F00_0040_0000;
        let e = t.reserve_leaf(&mut m, block_va, 2).unwrap();
        let d = t.leaf_descriptor(2, PhysAddr(0x4860_0000), Attrs { mem: MemType::Normal, perms: Perms::RW }).unwrap();
        // SAFETY: as above.
        unsafe { e.write_volatile(d) };
        let leaf = t.lookup(&m, block_va + 0x1234).unwrap();
        assert_eq!((leaf.level, leaf.ia_base, leaf.pa_base), (2, block_va, PhysAddr(0x4860_0000)));
        assert_eq!(t.reserve_leaf(&mut m, block_va + 0x1000, 3), Err(PtError::AlreadyMapped), "the block covers it");
        assert_eq!(t.reserve_leaf(&mut m, block_va, 1), Err(PtError::BadRange));
    }

    #[test]
    fn walkers_see_every_leaf_and_table() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, G, PhysAddr(G), M2 + PAGE_SIZE, RAM, 2).unwrap();
        t.map(&mut m, 5 * G, PhysAddr(0x1000), PAGE_SIZE, DEV, 3).unwrap();
        let mut leaves = vec![];
        t.for_each_leaf(&m, &mut |l| leaves.push((l.ia_base, l.size, t.leaf_writable(l.desc))));
        assert_eq!(leaves, vec![(G, M2, true), (G + M2, PAGE_SIZE, true), (5 * G, PAGE_SIZE, true)]);
        let mut tables = 0;
        t.for_each_table(&m, &mut |_| tables += 1);
        assert_eq!(tables, m.in_use());
    }

    #[test]
    fn leaf_decoders_read_back_what_map_wrote() {
        let mut m = FakeMemory::new(8);
        for format in [Format::El2Stage1, Format::Stage2, Format::Stage2Fwb] {
            let t = PageTable::new(&mut m, format, 40).unwrap();
            let cases: &[(MemType, Perms)] = match format {
                Format::El2Stage1 => &[
                    (MemType::Normal, Perms::RX),
                    (MemType::Normal, Perms::RW),
                    (MemType::Device, Perms::RO),
                    (MemType::NormalTagged, Perms::RW),
                ],
                _ => &[(MemType::Normal, Perms::RWX), (MemType::Normal, Perms::RW), (MemType::Device, Perms::RW)],
            };
            for &(mem, perms) in cases {
                let d = t.leaf_descriptor(3, PhysAddr(0x4000_0000), Attrs { mem, perms }).unwrap();
                assert_eq!(t.leaf_mem_type(d), Some(mem), "{format:?} {mem:?}");
                assert_eq!(t.leaf_executable(d), perms.exec, "{format:?} {perms:?}");
                assert_eq!(t.leaf_writable(d), perms.write, "{format:?} {perms:?}");
            }
        }
        // Encodings never written decode to no memory type.
        let s1 = PageTable::new(&mut m, Format::El2Stage1, 40).unwrap();
        assert_eq!(s1.leaf_mem_type(0b111 << 2), None);
        let s2 = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        assert_eq!(s2.leaf_mem_type(0b0110 << 2), None, "the FWB encoding in a non-FWB table");
    }

    #[test]
    fn prune_frees_the_tables_left_empty_in_the_range_only() {
        let mut m = FakeMemory::new(16);
        let mut t = PageTable::new(&mut m, Format::Stage2, 48).unwrap();
        // Two pages in one 2 MiB region, one in the next, one a GiB away.
        for ia in [0x4000_0000, 0x4000_1000, 0x4020_0000, 0x8000_0000] {
            t.map(&mut m, ia, PhysAddr(ia), PAGE_SIZE, RAM, 3).unwrap();
        }
        let before = m.in_use();
        assert_eq!(t.prune(&mut m, 0x4000_0000, 0x40_0000).unwrap(), 0, "nothing empty yet");
        t.unmap(&mut m, 0x4000_0000, PAGE_SIZE).unwrap();
        assert_eq!(t.prune(&mut m, 0x4000_0000, PAGE_SIZE).unwrap(), 0, "0x4000_1000 still mapped");
        t.unmap(&mut m, 0x4000_1000, PAGE_SIZE).unwrap();
        t.unmap(&mut m, 0x4020_0000, PAGE_SIZE).unwrap();
        assert_eq!(t.prune(&mut m, 0x4000_0000, PAGE_SIZE).unwrap(), 1, "only the level-3 table of the range");
        assert!(t.lookup(&m, 0x8000_0000).is_some());
        assert_eq!(t.prune(&mut m, 0x4000_0000, 0x40_0000).unwrap(), 2, "the next level-3 table, then the empty level-2 table");
        assert_eq!(m.in_use(), before - 3);
        t.unmap(&mut m, 0x8000_0000, PAGE_SIZE).unwrap();
        assert_eq!(t.prune(&mut m, 0, 1 << 47).unwrap(), 3, "level 3, 2 and 1: only the root is left");
        assert_eq!(m.in_use(), 1);
        t.map(&mut m, 0x4000_0000, PhysAddr(0x4000_0000), PAGE_SIZE, RAM, 3).unwrap();
        assert!(t.lookup(&m, 0x4000_0000).is_some(), "usable again");
    }

    #[test]
    fn destroy_frees_every_table() {
        let mut m = FakeMemory::new(64);
        let mut t = PageTable::new(&mut m, Format::Stage2, 40).unwrap();
        t.map(&mut m, 0, PhysAddr(0), 3 * M2 + PAGE_SIZE, RAM, 2).unwrap();
        t.map(&mut m, 512 * G, PhysAddr(0), PAGE_SIZE, RAM, 3).unwrap();
        assert!(m.in_use() > 1);
        t.destroy(&mut m);
        assert_eq!(m.in_use(), 0);
    }
}
