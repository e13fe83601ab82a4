//! Property tests: random operation sequences against simple reference models, with
//! shrinking, so a failure prints a minimal sequence. At least 100,000 operations per run.

use el2::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use el2::mem::owner::{Component, OwnError, Ownership, PageEntry};
use proptest::prelude::*;

const BASE: u64 = 0x4000_0000;
const PAGES: u64 = 48;

#[derive(Clone, Copy, Debug)]
enum Op {
    Share(u64, u64, Component, Component),
    Unshare(u64, u64, Component, Component),
    Donate(u64, u64, Component, Component),
}

fn component() -> impl Strategy<Value = Component> {
    prop_oneof![Just(Component::Host), Just(Component::Hyp), (0u8..3).prop_map(Component::Guest)]
}

fn op() -> impl Strategy<Value = Op> {
    // Ranges may start before RAM, run past it, or be empty.
    let range = (0u64..PAGES + 4, 0u64..6);
    prop_oneof![
        (range.clone(), component(), component()).prop_map(|((s, n), a, b)| Op::Share(s, n, a, b)),
        (range.clone(), component(), component()).prop_map(|((s, n), a, b)| Op::Unshare(s, n, a, b)),
        (range, component(), component()).prop_map(|((s, n), a, b)| Op::Donate(s, n, a, b)),
    ]
}

/// The reference model: a plain vector of (owner, borrower), every rule written out directly.
#[derive(Clone)]
struct Model(Vec<(Component, Option<Component>)>);

impl Model {
    fn apply(&mut self, op: Op) -> Result<(), ()> {
        let (s, n, from, to) = match op {
            Op::Share(s, n, a, b) | Op::Unshare(s, n, a, b) | Op::Donate(s, n, a, b) => (s, n, a, b),
        };
        if n == 0 || s + n > PAGES || from == to {
            return Err(());
        }
        let pages = s as usize..(s + n) as usize;
        let ok = self.0[pages.clone()].iter().all(|&(o, b)| match op {
            Op::Share(..) | Op::Donate(..) => o == from && b.is_none(),
            Op::Unshare(..) => o == from && b == Some(to),
        });
        if !ok {
            return Err(());
        }
        for e in &mut self.0[pages] {
            *e = match op {
                Op::Share(..) => (from, Some(to)),
                Op::Unshare(..) => (from, None),
                Op::Donate(..) => (to, None),
            };
        }
        Ok(())
    }
}

fn range(s: u64, n: u64) -> PhysRange {
    PhysRange { start: PhysAddr(BASE + s * PAGE_SIZE), end: PhysAddr(BASE + (s + n) * PAGE_SIZE) }
}

proptest! {
    // 200 sequences of 500 operations: 100,000 operations per run.
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn ownership_record_matches_the_model(ops in proptest::collection::vec(op(), 500)) {
        let mut entries = vec![PageEntry::default(); PAGES as usize];
        let ram = PhysRange::from_size(PhysAddr(BASE), PAGES * PAGE_SIZE).unwrap();
        let mut own = Ownership::new(ram, &mut entries).unwrap();
        let mut model = Model(vec![(Component::Host, None); PAGES as usize]);
        for op in ops {
            let expected = model.clone().apply(op);
            let got: Result<(), OwnError> = match op {
                Op::Share(s, n, a, b) => own.share(range(s, n), a, b),
                Op::Unshare(s, n, a, b) => own.unshare(range(s, n), a, b),
                Op::Donate(s, n, a, b) => own.donate(range(s, n), a, b),
            };
            prop_assert_eq!(got.is_ok(), expected.is_ok(), "{:?}: record {:?}, model {:?}", op, got, expected);
            if expected.is_ok() {
                model.apply(op).unwrap();
            }
            for (i, &(o, b)) in model.0.iter().enumerate() {
                let e = own.entry(PhysAddr(BASE + i as u64 * PAGE_SIZE)).unwrap();
                prop_assert_eq!((e.owner(), e.borrower()), (o, b), "page {} after {:?}", i, op);
            }
        }
    }
}
