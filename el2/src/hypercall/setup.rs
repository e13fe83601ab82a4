//! The set-up and diagnostic calls: `VERSION`, `PING` (in the dispatcher), `SET_MESSAGE_PAGE`,
//! `FINALISE_SETUP`, `HYP_INFO`, `ECHO` and `SET_PTRAUTH_POLICY`.

use crate::hw::Tlb;
use crate::hyp::Hyp;
use crate::mem::addr::{PhysAddr, PhysRange, PAGE_SIZE};
use crate::mem::pgtable::TableMemory;
use core::sync::atomic::Ordering;
use shared_abi::msg::{EchoRequest, HypInfo};
use shared_abi::{HypError, HypResult, ABI_VERSION};

/// `VERSION`.
pub fn version() -> HypResult {
    Ok([ABI_VERSION.encode(), 0, 0])
}

/// `SET_MESSAGE_PAGE`: host page `pa` becomes CPU `cpu`'s message page, shared with EL2.
pub fn set_message_page<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: u64, pa: u64, tlb: &impl Tlb) -> HypResult {
    // Validate: everything checkable without the lock.
    if cpu >= hyp.platform.cpus.len() as u64 {
        return Err(HypError::InvalidArgument);
    }
    let pa = PhysAddr(pa);
    if !pa.is_page_aligned() {
        return Err(HypError::NotAligned);
    }
    let page = PhysRange::from_size(pa, PAGE_SIZE).ok_or(HypError::OutOfRange)?;
    if !hyp.platform.ram.contains_range(&page) {
        return Err(HypError::OutOfRange);
    }
    // Lock, check, commit.
    let mut mem = hyp.mem.lock();
    if hyp.finalised() {
        return Err(HypError::SetupFinalised);
    }
    if hyp.msg.is_set(cpu as usize) {
        return Err(HypError::Frozen);
    }
    mem.host_share_hyp(pa, tlb)?;
    hyp.msg.register(cpu as usize, pa)?;
    Ok([0; 3])
}

/// `FINALISE_SETUP`.
pub fn finalise<T: TableMemory>(hyp: &Hyp<'_, T>) -> HypResult {
    let _guard = hyp.mem.lock();
    // CPUs that come online from now on must be at least what is combined so far.
    hyp.fix_cpu_features();
    hyp.finalised.store(true, Ordering::Release);
    Ok([0; 3])
}

/// `HYP_INFO`: a [`HypInfo`] in the caller's message page.
pub fn hyp_info<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize) -> HypResult {
    let info = HypInfo {
        abi_version: ABI_VERSION.encode() as u32,
        nr_cpus: hyp.platform.cpus.len() as u32,
        ram_base: hyp.platform.ram.start.0,
        ram_size: hyp.platform.ram.size(),
        hyp_base: hyp.hyp_region.start.0,
        hyp_size: hyp.hyp_region.size(),
        host_ipa_bits: hyp.mem.lock().host_s2().ia_bits() as u32,
        finalised: hyp.finalised() as u32,
        sve_vls: hyp.cpus.lock().sve().vls(),
        reserved: 0,
    };
    hyp.msg.write(cpu, &info)?;
    Ok([0; 3])
}

/// `ECHO`: the round trip of the message path.
pub fn echo<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize) -> HypResult {
    let req: EchoRequest = hyp.msg.read(cpu)?;
    if req.flags != 0 {
        return Err(HypError::BadMessage);
    }
    hyp.msg.write(cpu, &req.expected_response())?;
    Ok([0; 3])
}

/// `SET_PTRAUTH_POLICY`: eager, or lazy keeping the keys for `decay` runs after a use.
pub fn set_ptrauth_policy<T: TableMemory>(hyp: &Hyp<'_, T>, policy: u64, decay: u64) -> HypResult {
    let lazy = match (policy, decay) {
        (shared_abi::PTRAUTH_EAGER, 0) => false,
        (shared_abi::PTRAUTH_LAZY, 1..=1_000_000) => true,
        _ => return Err(HypError::InvalidArgument),
    };
    let _guard = hyp.mem.lock();
    if hyp.finalised() {
        return Err(HypError::SetupFinalised);
    }
    hyp.pauth_lazy.store(lazy, Ordering::Relaxed);
    hyp.pauth_decay.store(decay as u32, Ordering::Relaxed);
    Ok([0; 3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::owner::{Component, PageState};
    use crate::testing::*;
    use shared_abi::msg::EchoResponse;
    use shared_abi::HypercallId;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn version_and_ping() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::Version, &[]), Ok([ABI_VERSION.encode(), 0, 0]));
        assert_eq!(f.call(0, HypercallId::Ping, &[0xDEAD]), Ok([0xDEAD, 0, 0]));
    }

    #[test]
    fn message_calls_need_a_message_page() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::HypInfo, &[]), Err(HypError::NoMessagePage));
        assert_eq!(f.call(1, HypercallId::Echo, &[]), Err(HypError::NoMessagePage));
    }

    #[test]
    fn message_page_is_shared_and_mapped_for_el2() {
        let f = fixture();
        let rec = Recorder::default();
        let mut x = [0u64; 8];
        x[0] = HypercallId::SetMessagePage as u64;
        x[1] = 1;
        x[2] = f.page(3);
        assert_eq!(crate::hypercall::handle(&f.hyp, 0, &x, &rec), Ok([0; 3]));
        assert_eq!(rec.log.borrow().as_slice(), &["hyp_s1_mapped"]);
        let mem = f.hyp.mem.lock();
        assert_eq!(mem.own().state(PhysAddr(f.page(3)), Component::Host), Some(PageState::SharedOwned));
        assert_eq!(mem.own().state(PhysAddr(f.page(3)), Component::Hyp), Some(PageState::SharedBorrowed));
        assert!(mem.hyp_s1().lookup(mem.tables(), f.page(3)).is_some());
    }

    #[test]
    fn echo_round_trips_through_the_page() {
        let mut f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).unwrap();
        let req = EchoRequest { nonce: 42, flags: 0, words: [1, 2, 3, 4, 5, 6] };
        f.ram.0[4096..4096 + 64].copy_from_slice(req.as_bytes());
        f.call(0, HypercallId::Echo, &[]).unwrap();
        let resp = EchoResponse::read_from_bytes(&f.ram.0[4096..4096 + 64]).unwrap();
        assert_eq!(resp, req.expected_response());
        // A reserved field set is a bad message, and the page is left as it was.
        let bad = EchoRequest { flags: 1, ..req };
        f.ram.0[4096..4096 + 64].copy_from_slice(bad.as_bytes());
        assert_eq!(f.call(0, HypercallId::Echo, &[]), Err(HypError::BadMessage));
        assert_eq!(&f.ram.0[4096..4096 + 64], bad.as_bytes());
    }

    #[test]
    fn hyp_info_describes_the_machine() {
        let f = fixture();
        f.call(1, HypercallId::SetMessagePage, &[1, f.page(2)]).unwrap();
        f.call(1, HypercallId::HypInfo, &[]).unwrap();
        let info = HypInfo::read_from_prefix(&f.ram.0[2 * 4096..]).unwrap().0;
        assert_eq!(info.nr_cpus, 2);
        assert_eq!(info.ram_size, (RAM_PAGES * 4096) as u64);
        assert_eq!(info.hyp_size, HYP_PAGES * PAGE_SIZE);
        assert_eq!(info.finalised, 0);
        assert_eq!(info.host_ipa_bits, 48);
    }

    #[test]
    fn set_message_page_rejects_bad_arguments_and_changes_nothing() {
        let f = fixture();
        let el2_page = f.hyp.hyp_region.start.0;
        let cases: &[(&[u64], HypError)] = &[
            (&[2, f.page(0)], HypError::InvalidArgument),
            (&[u64::MAX, f.page(0)], HypError::InvalidArgument),
            (&[0, f.page(0) + 8], HypError::NotAligned),
            (&[0, f.page(0) - 4096], HypError::OutOfRange),
            (&[0, !0xFFF], HypError::OutOfRange),
            (&[0, el2_page], HypError::NotOwned),
        ];
        for (args, err) in cases {
            assert_eq!(f.call(0, HypercallId::SetMessagePage, args), Err(*err), "{args:x?}");
        }
        assert_eq!(f.hyp.mem.lock().own().census(), ((RAM_PAGES as u64 - HYP_PAGES), HYP_PAGES, 0));
        assert_eq!(f.call(0, HypercallId::HypInfo, &[]), Err(HypError::NoMessagePage));
    }

    #[test]
    fn messages_are_written_whole_and_nothing_past_them() {
        let mut f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]).unwrap();
        f.ram.0[4096..8192].fill(0xEE);
        // 8-byte words, then a tail of bytes (no message has one today; the writer must not care).
        let msg: [u8; 21] = core::array::from_fn(|i| i as u8 + 1);
        f.hyp.msg.write(0, &msg).unwrap();
        assert_eq!(f.ram.0[4096..4096 + 21], msg);
        assert!(f.ram.0[4096 + 21..8192].iter().all(|&b| b == 0xEE), "nothing written past the message");
        assert_eq!(f.hyp.msg.write(1, &msg), Err(HypError::NoMessagePage));
    }

    #[test]
    fn message_page_cannot_be_set_twice_or_reused() {
        let f = fixture();
        f.call(0, HypercallId::SetMessagePage, &[0, f.page(5)]).unwrap();
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[0, f.page(6)]), Err(HypError::Frozen));
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[1, f.page(5)]), Err(HypError::NotOwned));
        assert_eq!(f.hyp.mem.lock().own().state(PhysAddr(f.page(6)), Component::Host), Some(PageState::Owned));
    }
}
