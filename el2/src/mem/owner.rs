//! The page-ownership record: who owns every page of RAM, and who borrows it.
//!
//! Place in the flow: *state change*. Every memory hypercall validates its arguments, takes the
//! memory lock, asks this module whether the transition is legal for **every** page in the range,
//! and only then commits. A check that fails leaves the record untouched.
//!
//! Each component (the host, EL2, each guest) sees a page in one of four states, as in pKVM:
//!
//! | state | meaning |
//! |---|---|
//! | `Owned` | the component owns the page and nobody else can reach it |
//! | `SharedOwned` | the component owns the page and has lent it to one borrower |
//! | `SharedBorrowed` | another component owns the page and lent it to this one |
//! | `NoAccess` | the component may not touch the page |
//!
//! One entry per page holds the owner and the (single) borrower; a component's state is derived
//! from it, so "exactly one owner" holds by construction.
//!
//! Encoding of a [`PageEntry`] (`u32`): bits `[7:0]` owner code, bits `[15:8]` borrower code
//! (0 = none), bit 16 *tags clean* (EL2 has zeroed the page's allocation tags since its last
//! change of ownership), bits `[31:17]` reserved (zero). Every transition clears the mark. Component codes: 1 = host, 2 = EL2, `3 + n` = guest `n`.
//!
//! Legal transitions (anything else is refused and changes nothing):
//!
//! | call | from's state before → after | to's state before → after |
//! |---|---|---|
//! | `share(from, to)` | `Owned` → `SharedOwned` | `NoAccess` → `SharedBorrowed` |
//! | `unshare(from, to)` | `SharedOwned` → `Owned` | `SharedBorrowed` → `NoAccess` |
//! | `donate(from, to)` | `Owned` → `NoAccess` | `NoAccess` → `Owned` |

use crate::mem::addr::{PhysAddr, PhysRange, Pfn, PAGE_SIZE};

/// Largest guest index a page entry can name.
pub const MAX_GUEST: u8 = 255 - 3;

const TAGS_CLEAN: u32 = 1 << 16;

/// A party that can own or borrow memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The untrusted EL1 host.
    Host,
    /// EL2 itself.
    Hyp,
    /// Guest VM number `n` (`n <= MAX_GUEST`).
    Guest(u8),
}

impl Component {
    const fn code(self) -> u8 {
        match self {
            Component::Host => 1,
            Component::Hyp => 2,
            Component::Guest(n) => 3 + n,
        }
    }

    const fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => None,
            1 => Some(Component::Host),
            2 => Some(Component::Hyp),
            n => Some(Component::Guest(n - 3)),
        }
    }
}

/// A component's view of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Owned and not lent.
    Owned,
    /// Owned and lent to a borrower.
    SharedOwned,
    /// Lent to this component by its owner.
    SharedBorrowed,
    /// Not reachable by this component.
    NoAccess,
}

/// One page's record. See the module documentation for the encoding.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(transparent)]
pub struct PageEntry(u32);

impl PageEntry {
    /// An entry not yet initialised (for statically allocated records).
    pub const EMPTY: PageEntry = PageEntry(0);

    const fn new(owner: Component, borrower: Option<Component>) -> Self {
        let b = match borrower {
            Some(c) => c.code(),
            None => 0,
        };
        PageEntry(owner.code() as u32 | (b as u32) << 8)
    }

    /// Whether EL2 has cleared the page's allocation tags since its last change of ownership.
    pub fn tags_clean(self) -> bool {
        self.0 & TAGS_CLEAN != 0
    }

    /// The page's owner. Every tracked page has exactly one.
    pub fn owner(self) -> Component {
        // An entry is only ever written by `new`, which always stores a non-zero owner code.
        Component::from_code(self.0 as u8).unwrap_or(Component::Hyp)
    }

    /// The page's borrower, if it is lent.
    pub fn borrower(self) -> Option<Component> {
        Component::from_code((self.0 >> 8) as u8)
    }

    /// `who`'s view of the page.
    pub fn state_for(self, who: Component) -> PageState {
        if self.owner() == who {
            if self.borrower().is_some() {
                PageState::SharedOwned
            } else {
                PageState::Owned
            }
        } else if self.borrower() == Some(who) {
            PageState::SharedBorrowed
        } else {
            PageState::NoAccess
        }
    }
}

/// Why a transition was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnError {
    /// The range is empty, not page aligned, overflows, or is not entirely RAM.
    BadRange,
    /// The page at this address is not in the state the transition needs.
    WrongState(PhysAddr),
    /// A component cannot share with or donate to itself.
    SameComponent,
}

/// The record for all of RAM.
pub struct Ownership<'a> {
    base: Pfn,
    entries: &'a mut [PageEntry],
}

impl<'a> Ownership<'a> {
    /// Creates the record for `ram`, every page owned by the host, in `entries` (one per page).
    ///
    /// # Errors
    /// [`OwnError::BadRange`] if `ram` is not page aligned or `entries` has the wrong length.
    pub fn new(ram: PhysRange, entries: &'a mut [PageEntry]) -> Result<Self, OwnError> {
        if !ram.start.is_page_aligned() || !ram.end.is_page_aligned() || ram.end < ram.start {
            return Err(OwnError::BadRange);
        }
        if entries.len() as u64 != ram.size() / PAGE_SIZE {
            return Err(OwnError::BadRange);
        }
        entries.fill(PageEntry::new(Component::Host, None));
        Ok(Self { base: ram.start.pfn(), entries })
    }

    /// The RAM this record covers.
    pub fn ram(&self) -> PhysRange {
        PhysRange { start: self.base.addr(), end: Pfn(self.base.0 + self.entries.len() as u64).addr() }
    }

    fn index(&self, pa: PhysAddr) -> Option<usize> {
        let pfn = pa.pfn().0.checked_sub(self.base.0)?;
        (pfn < self.entries.len() as u64).then_some(pfn as usize)
    }

    /// The entry for the page holding `pa`, `None` outside RAM.
    pub fn entry(&self, pa: PhysAddr) -> Option<PageEntry> {
        self.index(pa).map(|i| self.entries[i])
    }

    /// `who`'s view of the page holding `pa`; `None` outside RAM.
    pub fn state(&self, pa: PhysAddr, who: Component) -> Option<PageState> {
        self.entry(pa).map(|e| e.state_for(who))
    }

    /// Whether `who` may access the page holding `pa` (owns or borrows it).
    pub fn can_access(&self, pa: PhysAddr, who: Component) -> bool {
        !matches!(self.state(pa, who), None | Some(PageState::NoAccess))
    }

    /// Whether `who` may access every page of `range` (which must lie in RAM).
    pub fn can_access_all(&self, range: PhysRange, who: Component) -> bool {
        match self.slice(range) {
            Ok((i, n)) => self.entries[i..i + n].iter().all(|e| e.state_for(who) != PageState::NoAccess),
            Err(_) => false,
        }
    }

    /// Whether `who` owns every page of `range` (lent or not).
    pub fn owns_all(&self, range: PhysRange, who: Component) -> bool {
        match self.slice(range) {
            Ok((i, n)) => self.entries[i..i + n].iter().all(|e| e.owner() == who),
            Err(_) => false,
        }
    }

    fn slice(&self, range: PhysRange) -> Result<(usize, usize), OwnError> {
        if !range.start.is_page_aligned() || !range.end.is_page_aligned() || range.end <= range.start {
            return Err(OwnError::BadRange);
        }
        if !self.ram().contains_range(&range) {
            return Err(OwnError::BadRange);
        }
        let i = self.index(range.start).ok_or(OwnError::BadRange)?;
        Ok((i, (range.size() / PAGE_SIZE) as usize))
    }

    /// Applies `f` to every page of `range` if `check` holds for all of them; otherwise changes
    /// nothing and names the first page that failed.
    fn transition(
        &mut self,
        range: PhysRange,
        check: impl Fn(PageEntry) -> bool,
        new: PageEntry,
    ) -> Result<(), OwnError> {
        let (i, n) = self.slice(range)?;
        if let Some(bad) = self.entries[i..i + n].iter().position(|e| !check(*e)) {
            return Err(OwnError::WrongState(PhysAddr(range.start.0 + bad as u64 * PAGE_SIZE)));
        }
        self.entries[i..i + n].fill(new);
        Ok(())
    }

    /// `from` lends every page of `range` to `to`.
    ///
    /// # Errors
    /// [`OwnError::WrongState`] unless `from` owns every page and none is lent.
    pub fn share(&mut self, range: PhysRange, from: Component, to: Component) -> Result<(), OwnError> {
        if from == to {
            return Err(OwnError::SameComponent);
        }
        self.transition(range, |e| e.state_for(from) == PageState::Owned, PageEntry::new(from, Some(to)))
    }

    /// `from` takes back every page of `range` it lent to `to`.
    ///
    /// # Errors
    /// [`OwnError::WrongState`] unless every page is owned by `from` and lent to `to`.
    pub fn unshare(&mut self, range: PhysRange, from: Component, to: Component) -> Result<(), OwnError> {
        if from == to {
            return Err(OwnError::SameComponent);
        }
        self.transition(
            range,
            |e| e.owner() == from && e.borrower() == Some(to),
            PageEntry::new(from, None),
        )
    }

    /// `from` gives every page of `range` to `to`, keeping no access.
    ///
    /// # Errors
    /// [`OwnError::WrongState`] unless `from` owns every page and none is lent.
    pub fn donate(&mut self, range: PhysRange, from: Component, to: Component) -> Result<(), OwnError> {
        if from == to {
            return Err(OwnError::SameComponent);
        }
        self.transition(range, |e| e.state_for(from) == PageState::Owned, PageEntry::new(to, None))
    }

    /// Marks the page holding `pa` as having clean tags (until its next transition).
    pub fn mark_tags_clean(&mut self, pa: PhysAddr) {
        if let Some(i) = self.index(pa) {
            self.entries[i].0 |= TAGS_CLEAN;
        }
    }

    /// Counts the pages each component owns: `(host, hyp, guests)`. For reports and checks.
    pub fn census(&self) -> (u64, u64, u64) {
        self.entries.iter().fold((0, 0, 0), |(h, y, g), e| match e.owner() {
            Component::Host => (h + 1, y, g),
            Component::Hyp => (h, y + 1, g),
            Component::Guest(_) => (h, y, g + 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Component::*;
    use PageState::*;

    const BASE: u64 = 0x4000_0000;

    fn record(entries: &mut [PageEntry]) -> Ownership<'_> {
        let n = entries.len() as u64;
        Ownership::new(PhysRange::from_size(PhysAddr(BASE), n * PAGE_SIZE).unwrap(), entries).unwrap()
    }

    fn pages(first: u64, n: u64) -> PhysRange {
        PhysRange::from_size(PhysAddr(BASE + first * PAGE_SIZE), n * PAGE_SIZE).unwrap()
    }

    #[test]
    fn everything_starts_host_owned() {
        let mut e = [PageEntry::default(); 8];
        let o = record(&mut e);
        for p in 0..8 {
            let a = PhysAddr(BASE + p * PAGE_SIZE);
            assert_eq!(o.state(a, Host), Some(Owned));
            assert_eq!(o.state(a, Hyp), Some(NoAccess));
            assert_eq!(o.state(a, Guest(0)), Some(NoAccess));
        }
        assert_eq!(o.census(), (8, 0, 0));
    }

    #[test]
    fn outside_ram_has_no_state() {
        let mut e = [PageEntry::default(); 2];
        let o = record(&mut e);
        assert_eq!(o.state(PhysAddr(BASE - 1), Host), None);
        assert_eq!(o.state(PhysAddr(BASE + 2 * PAGE_SIZE), Host), None);
        assert!(!o.can_access(PhysAddr(0), Host));
    }

    #[test]
    fn share_then_unshare_round_trips() {
        let mut e = [PageEntry::default(); 4];
        let mut o = record(&mut e);
        o.share(pages(1, 2), Host, Hyp).unwrap();
        assert_eq!(o.state(PhysAddr(BASE + PAGE_SIZE), Host), Some(SharedOwned));
        assert_eq!(o.state(PhysAddr(BASE + PAGE_SIZE), Hyp), Some(SharedBorrowed));
        assert_eq!(o.state(PhysAddr(BASE + 2 * PAGE_SIZE), Guest(3)), Some(NoAccess));
        assert_eq!(o.state(PhysAddr(BASE), Hyp), Some(NoAccess), "neighbour untouched");
        o.unshare(pages(1, 2), Host, Hyp).unwrap();
        assert_eq!(o.state(PhysAddr(BASE + PAGE_SIZE), Host), Some(Owned));
        assert_eq!(o.state(PhysAddr(BASE + PAGE_SIZE), Hyp), Some(NoAccess));
    }

    #[test]
    fn donate_moves_ownership_and_access() {
        let mut e = [PageEntry::default(); 4];
        let mut o = record(&mut e);
        o.donate(pages(0, 1), Host, Guest(7)).unwrap();
        assert_eq!(o.state(PhysAddr(BASE), Host), Some(NoAccess));
        assert_eq!(o.state(PhysAddr(BASE), Guest(7)), Some(Owned));
        assert!(!o.can_access(PhysAddr(BASE), Host));
        assert_eq!(o.census(), (3, 0, 1));
        // And back again.
        o.donate(pages(0, 1), Guest(7), Host).unwrap();
        assert_eq!(o.state(PhysAddr(BASE), Host), Some(Owned));
    }

    #[test]
    fn double_share_is_refused_and_changes_nothing() {
        let mut e = [PageEntry::default(); 4];
        let mut o = record(&mut e);
        o.share(pages(1, 1), Host, Hyp).unwrap();
        let before: [PageEntry; 4] = core::array::from_fn(|i| o.entry(PhysAddr(BASE + i as u64 * PAGE_SIZE)).unwrap());
        // Pages 0..3 include the already shared page 1: refused, names page 1, nothing changes.
        assert_eq!(o.share(pages(0, 3), Host, Guest(0)), Err(OwnError::WrongState(PhysAddr(BASE + PAGE_SIZE))));
        for (i, b) in before.iter().enumerate() {
            assert_eq!(o.entry(PhysAddr(BASE + i as u64 * PAGE_SIZE)), Some(*b));
        }
    }

    #[test]
    fn donating_a_shared_page_is_refused() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        o.share(pages(0, 1), Host, Hyp).unwrap();
        assert_eq!(o.donate(pages(0, 1), Host, Guest(0)), Err(OwnError::WrongState(PhysAddr(BASE))));
    }

    #[test]
    fn donating_the_same_page_twice_is_refused() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        o.donate(pages(0, 1), Host, Guest(0)).unwrap();
        assert_eq!(o.donate(pages(0, 1), Host, Guest(1)), Err(OwnError::WrongState(PhysAddr(BASE))));
        assert_eq!(o.state(PhysAddr(BASE), Guest(0)), Some(Owned));
    }

    #[test]
    fn only_the_owner_can_share_or_donate() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        o.donate(pages(0, 1), Host, Hyp).unwrap();
        assert_eq!(o.share(pages(0, 1), Host, Guest(0)), Err(OwnError::WrongState(PhysAddr(BASE))));
        assert_eq!(o.donate(pages(0, 1), Host, Guest(0)), Err(OwnError::WrongState(PhysAddr(BASE))));
        assert_eq!(o.share(pages(0, 1), Guest(0), Host), Err(OwnError::WrongState(PhysAddr(BASE))));
    }

    #[test]
    fn unshare_needs_the_same_borrower() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        assert_eq!(o.unshare(pages(0, 1), Host, Hyp), Err(OwnError::WrongState(PhysAddr(BASE))), "not shared");
        o.share(pages(0, 1), Host, Guest(2)).unwrap();
        assert_eq!(o.unshare(pages(0, 1), Host, Hyp), Err(OwnError::WrongState(PhysAddr(BASE))));
        assert_eq!(o.unshare(pages(0, 1), Hyp, Guest(2)), Err(OwnError::WrongState(PhysAddr(BASE))));
        o.unshare(pages(0, 1), Host, Guest(2)).unwrap();
    }

    #[test]
    fn self_transitions_are_refused() {
        let mut e = [PageEntry::default(); 1];
        let mut o = record(&mut e);
        assert_eq!(o.share(pages(0, 1), Host, Host), Err(OwnError::SameComponent));
        assert_eq!(o.donate(pages(0, 1), Host, Host), Err(OwnError::SameComponent));
        assert_eq!(o.unshare(pages(0, 1), Host, Host), Err(OwnError::SameComponent));
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        let unaligned = PhysRange { start: PhysAddr(BASE + 1), end: PhysAddr(BASE + PAGE_SIZE + 1) };
        assert_eq!(o.share(unaligned, Host, Hyp), Err(OwnError::BadRange));
        assert_eq!(o.share(pages(0, 0), Host, Hyp), Err(OwnError::BadRange), "empty");
        assert_eq!(o.share(pages(1, 2), Host, Hyp), Err(OwnError::BadRange), "runs past RAM");
        let below = PhysRange::from_size(PhysAddr(BASE - PAGE_SIZE), 2 * PAGE_SIZE).unwrap();
        assert_eq!(o.share(below, Host, Hyp), Err(OwnError::BadRange), "starts below RAM");
        let inverted = PhysRange { start: PhysAddr(BASE + PAGE_SIZE), end: PhysAddr(BASE) };
        assert_eq!(o.donate(inverted, Host, Hyp), Err(OwnError::BadRange));
        assert_eq!(o.census(), (2, 0, 0));
    }

    #[test]
    fn record_size_must_match_ram() {
        let mut e = [PageEntry::default(); 3];
        let r = PhysRange::from_size(PhysAddr(BASE), 2 * PAGE_SIZE).unwrap();
        assert!(Ownership::new(r, &mut e).is_err());
        let r = PhysRange::from_size(PhysAddr(BASE + 1), 3 * PAGE_SIZE).unwrap();
        assert!(Ownership::new(r, &mut e).is_err());
    }

    #[test]
    fn tags_clean_mark_lasts_until_the_next_transition() {
        let mut e = [PageEntry::default(); 2];
        let mut o = record(&mut e);
        o.donate(pages(0, 1), Host, Guest(0)).unwrap();
        assert!(!o.entry(PhysAddr(BASE)).unwrap().tags_clean());
        o.mark_tags_clean(PhysAddr(BASE));
        assert!(o.entry(PhysAddr(BASE)).unwrap().tags_clean());
        assert_eq!(o.state(PhysAddr(BASE), Guest(0)), Some(Owned), "the mark is not ownership");
        o.donate(pages(0, 1), Guest(0), Host).unwrap();
        assert!(!o.entry(PhysAddr(BASE)).unwrap().tags_clean(), "cleared by the transition");
        o.mark_tags_clean(PhysAddr(BASE + 5 * PAGE_SIZE)); // outside RAM: ignored
    }

    #[test]
    fn every_guest_code_round_trips() {
        for n in [0, 1, 100, MAX_GUEST] {
            let e = PageEntry::new(Guest(n), Some(Host));
            assert_eq!(e.owner(), Guest(n));
            assert_eq!(e.borrower(), Some(Host));
            assert_eq!(e.state_for(Host), SharedBorrowed);
            assert_eq!(e.state_for(Guest(n)), SharedOwned);
        }
    }
}
