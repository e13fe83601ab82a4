//! Hypercalls: a host `HVC #0`, from its registers to the function that serves it.
//!
//! Place in the flow: right after the host-trap shim. [`handle`] decodes the call once, from
//! its row in `shared_abi`'s table (ID, phase, argument and result registers), into a [`Call`]
//! whose fields name the arguments, and refuses what is malformed before any lock is taken:
//! an unknown ID (`NotSupported`), a non-zero register past the call's arguments
//! (`InvalidArgument`), a set-up call after set-up (`SetupFinalised`). Then one `match` hands
//! the arguments to the function that serves the call; the compiler checks that every call has
//! one. Each of those validates what it was given, takes the locks it needs, checks, and
//! commits (memory changes through [`crate::mem::protect`]).
//!
//! | calls | served in |
//! |---|---|
//! | `VERSION`, `PING`, `SET_MESSAGE_PAGE`, `FINALISE_SETUP`, `HYP_INFO`, `ECHO`, `SET_PTRAUTH_POLICY` | [`setup`] |
//! | `VM_CREATE`, `VM_DESTROY`, `VM_ADD_MEMORY`, `VM_MEASUREMENT`, `VM_MMIO_GUARD` | [`vm`] |
//! | `VCPU_SET_REG`, `VCPU_GET_REG`, `VCPU_REG_LIST`, `VCPU_SET_IRQ`, `VCPU_IRQ_STATE`, `VCPU_STATS` | [`vcpu`] |
//! | `VCPU_RUN` | [`crate::guest::exit`] (the run loop) |
//! | `TEST_FAULT`, `TEST_CHECK_INVARIANTS` | the trap shim of a test build (`NotSupported` here) |

pub mod setup;
pub mod vcpu;
pub mod vm;

use crate::guest::exit;
use crate::hw::Hw;
use crate::hyp::Hyp;
use crate::mem::pgtable::TableMemory;
use shared_abi::{HypError, HypResult, HypercallId, Phase};

macro_rules! calls {
    ($( $id:ident $( { $($field:ident),+ } )? ; )*) => {
        /// A decoded hypercall. The fields are the argument registers `x1..` in order, as many
        /// as the call's row in `shared_abi`'s table gives it (checked at compile time).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Call {
            $( $id $( { $($field: u64),+ } )?, )*
        }

        impl Call {
            /// Decodes call `id` from `x` (`x[0]` is the function ID): `InvalidArgument` if a
            /// register past its arguments is not zero, `SetupFinalised` if it is a set-up call
            /// and `finalised()`; else its arguments. One arm a call, in which its argument
            /// count and phase are constants: the checks are a few instructions, not a loop.
            #[inline(always)]
            pub fn decode(id: HypercallId, x: &[u64; 8], finalised: impl Fn() -> bool) -> Result<Self, HypError> {
                match id {
                    $( HypercallId::$id => {
                        // OR-ed, not tested one by one: a few `ORR`s and one branch.
                        if x[1 + HypercallId::$id.nr_args()..].iter().fold(0, |a, &r| a | r) != 0 {
                            return Err(HypError::InvalidArgument);
                        }
                        if matches!(HypercallId::$id.phase(), Phase::SetupOnly) && finalised() {
                            return Err(HypError::SetupFinalised);
                        }
                        #[allow(unused_mut, unused_variables)]
                        let mut args = x[1..].iter().copied();
                        Ok(Call::$id $( { $($field: args.next().unwrap_or(0)),+ } )?)
                    } )*
                }
            }
        }

        const _: () = {
            $( assert!(HypercallId::$id.nr_args() == 0 $( + [$(stringify!($field)),+].len() )?, "argument count differs from shared_abi's table"); )*
        };
    };
}

calls! {
    Version;
    Ping { value };
    SetMessagePage { cpu, pa };
    FinaliseSetup;
    HypInfo;
    Echo;
    VmCreate;
    VmDestroy { handle };
    VmAddMemory { handle, pa, ipa, pages, flags };
    VcpuSetReg { handle, index, id, lo, hi };
    VcpuGetReg { handle, index, id };
    VcpuRegList { handle, index };
    VcpuRun { handle, index, mmio_value, flags };
    SetPtrauthPolicy { policy, decay };
    VcpuSetIrq { handle, index, vintid, config };
    VcpuIrqState { handle, index };
    VcpuStats { handle, index };
    VmMeasurement { handle };
    VmMmioGuard { handle, ipa };
    VmSmcccForward { handle, first, count };
    VmMmioCoalesce { handle, ipa, len };
    VmTopupTables { handle, pa, pages };
    VcpuLinkVtimer { handle, index, on, config };
    VcpuLinkSgis { handle, index, on, masks, prio_lo, prio_hi };
    TestFault { mode };
    TestCheckInvariants;
}

/// Handles a host `HVC #0` made on CPU `cpu` with `x0..=x7` = `x`; the result goes to
/// `x0..=x3`. Inlined into the trap shim, its one caller in the image: a call of its own would
/// add a frame to every hypercall.
#[inline(always)]
pub fn handle<T: TableMemory>(hyp: &Hyp<'_, T>, cpu: usize, x: &[u64; 8], hw: &impl Hw) -> HypResult {
    let id = HypercallId::try_from(x[0])?;
    let result = match Call::decode(id, x, || hyp.finalised())? {
        Call::Version => setup::version(),
        Call::Ping { value } => Ok([value, 0, 0]),
        Call::SetMessagePage { cpu, pa } => setup::set_message_page(hyp, cpu, pa, hw),
        Call::FinaliseSetup => setup::finalise(hyp),
        Call::HypInfo => setup::hyp_info(hyp, cpu),
        Call::Echo => setup::echo(hyp, cpu),
        Call::SetPtrauthPolicy { policy, decay } => setup::set_ptrauth_policy(hyp, policy, decay),
        Call::VmCreate => vm::vm_create(hyp, cpu, hw),
        Call::VmDestroy { handle } => vm::vm_destroy(hyp, handle, hw),
        Call::VmAddMemory { handle, pa, ipa, pages, flags } => vm::vm_add_memory(hyp, handle, pa, ipa, pages, flags, hw),
        Call::VmMeasurement { handle } => vm::vm_measurement(hyp, cpu, handle),
        Call::VmMmioGuard { handle, ipa } => vm::vm_mmio_guard(hyp, handle, ipa),
        Call::VmSmcccForward { handle, first, count } => vm::vm_smccc_forward(hyp, handle, first, count),
        Call::VmMmioCoalesce { handle, ipa, len } => vm::vm_mmio_coalesce(hyp, handle, ipa, len),
        Call::VmTopupTables { handle, pa, pages } => vm::vm_topup_tables(hyp, handle, pa, pages, hw),
        Call::VcpuSetReg { handle, index, id, lo, hi } => vcpu::vcpu_set_reg(hyp, handle, index, id, (lo, hi)),
        Call::VcpuGetReg { handle, index, id } => vcpu::vcpu_get_reg(hyp, handle, index, id),
        Call::VcpuRegList { handle, index } => vcpu::vcpu_reg_list(hyp, cpu, handle, index),
        Call::VcpuRun { handle, index, mmio_value, flags } => exit::vcpu_run(hyp, cpu, handle, index, mmio_value, flags, hw),
        Call::VcpuSetIrq { handle, index, vintid, config } => vcpu::vcpu_set_irq(hyp, handle, index, vintid, config),
        Call::VcpuIrqState { handle, index } => vcpu::vcpu_irq_state(hyp, cpu, handle, index),
        Call::VcpuStats { handle, index } => vcpu::vcpu_stats(hyp, cpu, handle, index),
        Call::VcpuLinkVtimer { handle, index, on, config } => vcpu::vcpu_link_vtimer(hyp, handle, index, on, config),
        Call::VcpuLinkSgis { handle, index, on, masks, prio_lo, prio_hi } => vcpu::vcpu_link_sgis(hyp, handle, index, on, masks, [prio_lo, prio_hi]),
        // Served by the trap shim in test builds; never here.
        Call::TestFault { .. } | Call::TestCheckInvariants => Err(HypError::NotSupported),
    };
    debug_assert!(result.map_or(true, |r| r[id.nr_results()..].iter().all(|&v| v == 0)), "{id:?} returned more than its row says");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn arguments_are_decoded_in_register_order() {
        let x = [HypercallId::VmAddMemory as u64, 1, 2, 3, 4, 5, 0, 0];
        assert_eq!(Call::decode(HypercallId::VmAddMemory, &x, || false), Ok(Call::VmAddMemory { handle: 1, pa: 2, ipa: 3, pages: 4, flags: 5 }));
        let x = [HypercallId::VcpuSetReg as u64, 1, 2, 3, 4, 5, 0, 0];
        assert_eq!(Call::decode(HypercallId::VcpuSetReg, &x, || false), Ok(Call::VcpuSetReg { handle: 1, index: 2, id: 3, lo: 4, hi: 5 }));
    }

    #[test]
    fn unknown_ids_are_not_supported() {
        let f = fixture();
        let mut x = [0u64; 8];
        for id in [0xC600_0FFF, 0x8400_0000, 0, u64::MAX] {
            x[0] = id;
            assert_eq!(handle(&f.hyp, 0, &x, &Recorder::default()), Err(HypError::NotSupported));
        }
    }

    #[test]
    fn test_hooks_are_not_served_by_the_dispatcher() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::TestFault, &[0]), Err(HypError::NotSupported));
    }

    #[test]
    fn non_zero_unused_registers_are_invalid() {
        let f = fixture();
        assert_eq!(f.call(0, HypercallId::Version, &[1]), Err(HypError::InvalidArgument));
        assert_eq!(f.call(0, HypercallId::Ping, &[1, 0, 0, 0, 0, 0, 1]), Err(HypError::InvalidArgument));
    }

    #[test]
    fn setup_calls_are_refused_after_finalise() {
        let f = fixture();
        f.call(0, HypercallId::FinaliseSetup, &[]).unwrap();
        assert_eq!(f.call(0, HypercallId::SetMessagePage, &[0, f.page(1)]), Err(HypError::SetupFinalised));
        assert_eq!(f.call(0, HypercallId::FinaliseSetup, &[]), Err(HypError::SetupFinalised));
        assert_eq!(f.call(0, HypercallId::Ping, &[7]), Ok([7, 0, 0]));
    }
}
