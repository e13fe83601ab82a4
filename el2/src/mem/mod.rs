//! Memory: addresses, the ownership record, page tables, the table pool, and the state the
//! memory lock guards.
//!
//! The only code that changes the ownership record, the host stage 2, a guest stage 2 or EL2's
//! stage 1 is in this module: the fields of [`MemState`] and [`guest::GuestMemory`] are private to it,
//! and every change is a named check-then-commit transition in [`protect`]. Everyone else reads.

pub mod addr;
pub mod guest;
pub mod memcache;
pub mod owner;
pub mod pgtable;
pub mod pool;
pub mod protect;

use crate::guest::vm::VmTable;
use addr::PhysRange;
use owner::{Component, OwnError, Ownership};
use pgtable::{PageTable, TableMemory};

/// Everything the memory lock guards.
pub struct MemState<'a, T: TableMemory> {
    /// Who owns each page of RAM.
    own: Ownership<'a>,
    /// The host's stage 2, an identity map built lazily from [`MemState::own`].
    host_s2: PageTable,
    /// EL2's own stage 1.
    hyp_s1: PageTable,
    /// Where table pages come from.
    tables: T,
    /// Every VM.
    pub vms: VmTable,
}

impl<'a, T: TableMemory> MemState<'a, T> {
    /// The state at boot, from `own` (all RAM the host's), the empty host stage 2, EL2's
    /// stage 1 and the table pool, with no VM: EL2 takes `hyp_region` for itself.
    ///
    /// # Errors
    /// `hyp_region` is not page-aligned RAM the host owns.
    pub fn new(mut own: Ownership<'a>, host_s2: PageTable, hyp_s1: PageTable, tables: T, hyp_region: PhysRange) -> Result<Self, OwnError> {
        own.donate(hyp_region, Component::Host, Component::Hyp)?;
        Ok(Self { own, host_s2, hyp_s1, tables, vms: VmTable::default() })
    }

    /// Who owns each page of RAM.
    pub fn own(&self) -> &Ownership<'a> {
        &self.own
    }

    /// The host's stage 2.
    pub fn host_s2(&self) -> &PageTable {
        &self.host_s2
    }

    /// EL2's stage 1.
    pub fn hyp_s1(&self) -> &PageTable {
        &self.hyp_s1
    }

    /// The table pool.
    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// Every part, writable: for tests that build broken states on purpose.
    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut Ownership<'a>, &mut PageTable, &mut PageTable, &mut T, &mut VmTable) {
        (&mut self.own, &mut self.host_s2, &mut self.hyp_s1, &mut self.tables, &mut self.vms)
    }
}

