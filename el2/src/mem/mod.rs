//! Memory: addresses, the ownership record, page tables and the table pool.

pub mod addr;
pub mod owner;
pub mod pgtable;
pub mod pool;
