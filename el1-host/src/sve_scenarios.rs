//! SVE for guests: what EL2 offers and refuses, and VMs with and without SVE taking turns on
//! one CPU, exit by exit, with a hostile sibling that changes its vector length all the while.

use crate::platform::Platform;
use crate::vm_scenarios::{create_raw, destroy, host_fp_intact, start, start_sve};
use crate::vmm::{Outcome, Stepper, TestDevice, Vm};
use crate::{hyp, println};
use host_kernel::arch;
use shared_abi::msg::{sve, vm_flags, HypInfo};
use shared_abi::{HypError, HypercallId};

/// The `vm-sve` guest's test device: its mode on a read (seed, vector length in quadwords,
/// hostile sibling), the seed it reports when its registers survived.
struct SveGuest {
    mode: u64,
    reported: Option<u64>,
}

impl SveGuest {
    fn new(seed: u8, sve_vl: u64, sibling: bool) -> Self {
        Self { mode: u64::from(seed) | (sve_vl / sve::VL_GRANULE) << 8 | u64::from(sibling) << 16, reported: None }
    }
}

impl TestDevice for SveGuest {
    fn write(&mut self, _: &Vm, v: u64) {
        self.reported = Some(v);
    }
    fn read(&mut self, _: &Vm) -> u64 {
        self.mode
    }
}

/// The `vm-sve` scenario.
pub fn sve(plat: &Platform) {
    // What every CPU gives (HYP_INFO), and VM_CREATE's refusals.
    check!(hyp::call(HypercallId::HypInfo, &[]).is_ok(), "HYP_INFO");
    let info: HypInfo = hyp::read_msg(0);
    check!(info.sve_vls & sve::vl_bit(16) != 0 && info.sve_vls & sve::vl_bit(64) != 0, "SVE vector lengths for VMs {:#x}: QEMU's max CPU has 128 to 2048 bits", info.sve_vls);
    ok!("HYP_INFO: SVE vector lengths for VMs {:#06x}", info.sve_vls);
    expect_err!(create_raw(1, 36, vm_flags::SVE, 0, 0), HypError::InvalidArgument, "VM_CREATE with SVE and no vector length");
    expect_err!(create_raw(1, 36, vm_flags::SVE, 24, 0), HypError::InvalidArgument, "VM_CREATE with SVE of 24 bytes");
    expect_err!(create_raw(1, 36, vm_flags::SVE | vm_flags::PROTECTED, 272, 0), HypError::InvalidArgument, "VM_CREATE with SVE of 272 bytes");
    expect_err!(create_raw(1, 36, 0, 64, 0), HypError::InvalidArgument, "VM_CREATE with a vector length and no SVE");
    match (1..=16u64).map(|vq| vq * sve::VL_GRANULE).find(|&vl| info.sve_vls & sve::vl_bit(vl) == 0) {
        Some(vl) => expect_err!(create_raw(1, 36, vm_flags::SVE, vl, 0), HypError::Denied, "VM_CREATE with a length the CPUs do not give"),
        None => println!("host: every length from 128 to 2048 bits is given here (the Denied case is host-tested)"),
    }
    // A protected VM of 512 bits with a hostile sibling, and a non-protected one of 256 bits,
    // run exit by exit in turn on this CPU: three register files of three lengths through
    // one CPU, the host's own FP/SIMD registers in between.
    const HOST_SEED: u64 = 0x5E5E_0000_0000_0000;
    let a = start_sve(plat, 2, vm_flags::PROTECTED, 64);
    let b = start_sve(plat, 1, 0, 32);
    let (mut da, mut db) = (SveGuest::new(0x10, 64, true), SveGuest::new(0x80, 32, false));
    let (mut a0, mut a1, mut b0) = (Stepper::new(), Stepper::new(), Stepper::new());
    let (mut done_a, mut done_b) = (None, None);
    let mut rounds = 0u64;
    arch::fp_fill(HOST_SEED);
    while done_a.is_none() || done_b.is_none() {
        let fail = |e: HypError| -> ! { crate::fail::fail(format_args!("VCPU_RUN: {e:?}")) };
        if done_a.is_none() {
            done_a = a0.step(&a, 0, &mut da).unwrap_or_else(|e| fail(e));
        }
        if done_a.is_none() {
            // The sibling's own end (CPU_OFF) is not the VM's.
            let _ = a1.step(&a, 1, &mut da).unwrap_or_else(|e| fail(e));
        }
        if done_b.is_none() {
            done_b = b0.step(&b, 0, &mut db).unwrap_or_else(|e| fail(e));
        }
        rounds += 1;
    }
    check!(done_a == Some(Outcome::Off) && done_b == Some(Outcome::Off), "SVE guests ended {done_a:?} {done_b:?}");
    check!(da.reported == Some(0x10) && db.reported == Some(0x80), "SVE guests reported {:x?} {:x?}", da.reported, db.reported);
    ok!("two SVE VMs (512 and 256 bits, one with a sibling changing ZCR_EL1) kept their registers over {rounds} rounds on one CPU");
    check!(host_fp_intact(HOST_SEED), "the host's V0..V31 changed across the SVE guests' runs");
    ok!("the host's FP/SIMD registers intact");
    // A VM without SVE on the same CPU: SVE is UNDEF, whatever the last VM left in the CPU.
    let c = start(plat, 1, false);
    let mut dc = SveGuest::new(0x20, 0, false);
    let mut c0 = Stepper::new();
    let done_c = loop {
        match c0.step(&c, 0, &mut dc) {
            Ok(Some(o)) => break o,
            Ok(None) => {}
            Err(e) => crate::fail::fail(format_args!("VCPU_RUN c: {e:?}")),
        }
    };
    check!(done_c == Outcome::Off, "the VM without SVE ended {done_c:?}");
    ok!("a VM without SVE finds SVE UNDEF after SVE VMs ran on its CPU");
    destroy(&a);
    destroy(&b);
    destroy(&c);
}
