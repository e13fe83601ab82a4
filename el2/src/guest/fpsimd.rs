//! The guest's vector registers, switched lazily: FP/SIMD (`V0..V31`, `FPSR`, `FPCR`) for
//! every VM, the SVE registers (`Z0..Z31`, `P0..P15`, `FFR`, and `ZCR_EL1`) for a VM with SVE.
//!
//! Place in the flow: step 9 of the world switch (`arch::switch`), written here as a script
//! over the [`VectorRegs`] seam so that its order is tested on the host; `arch` supplies the
//! register accesses and the host's scratch area.
//!
//! - **Load**: nothing moves. The guest runs with `CPTR_EL2.TFP` and `TZ` set (and `TSM`:
//!   SME is never the guest's), so its first FP/SIMD instruction (`ESR_EL2.EC` 0x07), or for a
//!   VM with SVE its first SVE instruction or `ZCR_EL1` access (0x19), traps.
//! - **First use**: `CPTR_EL2` without those traps, `ISB` (EL2's own accesses below need it in
//!   force); the host's `V0..V31`, `FPSR`, `FPCR` to the CPU's scratch area; for a VM with SVE,
//!   `ZCR_EL2.LEN` = the VM's length (no `ISB`: see [`VectorRegs::write_zcr_el2`]) and the
//!   guest's SVE registers at that length, else the guest's FP/SIMD registers. The guest
//!   retries the instruction; nothing traps again in this run.
//! - **Put**, if the first use happened: the guest's registers out (SVE: at the VM's length,
//!   whatever shorter length its `ZCR_EL1` chose); for a VM with SVE every `Z`, `P` and `FFR`
//!   bit the guest could have written is then zeroed; the host's registers back in.
//!
//! The host never has SVE (it runs with `CPTR_EL2.TZ` set), so only its FP/SIMD registers are
//! saved. Restoring them writes the low 128 bits of each `Z` register; the architecture does
//! not promise that the bits above are cleared (the pseudocode leaves it CONSTRAINED
//! UNPREDICTABLE above the current length), and `P0..P15` and `FFR` are not touched at all.
//! Hence the zeroing at put: no later context, the host or another VM with a longer vector
//! length, can find a guest's bits above its `V` registers. A guest's own load writes all of
//! its registers before it can read any, and `ZCR_EL2` keeps it from the bits above its
//! length. `ZCR_EL2` is left at the last SVE VM's length: the host runs with SVE trapped and
//! every SVE VM's first use writes its own.

use crate::cpu::controls::cptr;
use crate::cpu::sve::zcr_el2;
use crate::guest::vcpu::{FpRegs, VcpuCtx};
use crate::hw::VectorRegs;

/// Whether this run loaded the guest's vector registers, and the guest's traps to lift then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lazy {
    loaded: bool,
    /// `CPTR_EL2` of the guest's run, with every vector trap set.
    guest_cptr: u64,
}

/// Load: nothing moves; `guest_cptr` (FP/SIMD, SVE and SME trapped) is remembered for the
/// first use.
pub fn load(guest_cptr: u64) -> Lazy {
    Lazy { loaded: false, guest_cptr }
}

/// The guest's first FP/SIMD (or, with SVE, SVE) use in this run: untrap, the host's
/// registers out to `host`, the guest's in. `false` if they are loaded already (the trap is
/// then not this one's to fix).
pub fn first_use(hw: &impl VectorRegs, lazy: &mut Lazy, ctx: &VcpuCtx, host: &mut FpRegs) -> bool {
    if lazy.loaded {
        return false;
    }
    let sve = ctx.sve_vq != 0;
    let untrap = if sve { cptr::TFP | cptr::TZ } else { cptr::TFP };
    hw.write_cptr(lazy.guest_cptr & !untrap);
    // The lifted traps are in force for EL2's own FP/SIMD and SVE accesses below (EL2 runs
    // under CPTR_EL2 too).
    hw.isb();
    hw.fp_save(host);
    if sve {
        hw.write_zcr_el2(zcr_el2(ctx.sve_vq));
        hw.sve_restore(&ctx.sve);
    } else {
        hw.fp_restore(&ctx.fp);
    }
    lazy.loaded = true;
    true
}

/// Put: the guest's registers out and the host's back, if they moved (for SVE with every
/// guest bit above them zeroed first: module documentation).
pub fn put(hw: &impl VectorRegs, lazy: &Lazy, ctx: &mut VcpuCtx, host: &FpRegs) {
    if !lazy.loaded {
        return;
    }
    if ctx.sve_vq != 0 {
        // ZCR_EL2 still holds the VM's length (nothing else writes it in a run): the whole
        // of every register the guest could reach is saved, and zeroed.
        hw.sve_save(&mut ctx.sve);
        hw.sve_zero();
    } else {
        hw.fp_save(&mut ctx.fp);
    }
    hw.fp_restore(host);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::controls::{guest_controls, ControlFeatures};
    use crate::testing::{FakeVectors, Recorder};

    /// The guest's `CPTR_EL2` at load, as `guest_controls` computes it.
    fn guest_cptr() -> u64 {
        let cfg = crate::hw::GuestConfig { vttbr: 0, start_level: 1, ipa_bits: 36, vmpidr: 0, host_pmu: false, pauth_now: false, mte: false, fwb: false, protected: true, cntvoff: 0, trap_cache_type: false };
        guest_controls(&ControlFeatures::default(), 0, &cfg, true).cptr
    }

    fn vcpu(sve_vq: u8) -> VcpuCtx {
        let mut c = VcpuCtx::new();
        c.sve_vq = sve_vq;
        c
    }

    /// The host's FP/SIMD registers: `Vn` = `0x11 * (n + 1)` in every byte.
    fn host_fp() -> FpRegs {
        let mut f = FpRegs::ZERO;
        for n in 0..32 {
            let b = 0x11u8.wrapping_mul(n as u8 + 1);
            f.v[2 * n] = u64::from_ne_bytes([b; 8]);
            f.v[2 * n + 1] = u64::from_ne_bytes([b; 8]);
        }
        (f.fpsr, f.fpcr) = (0x1F, 0x0300_0000);
        f
    }

    #[test]
    fn the_guest_runs_with_every_vector_trap_set_until_its_first_use() {
        let c = guest_cptr();
        assert_eq!(c & (cptr::TFP | cptr::TZ | cptr::TSM), cptr::TFP | cptr::TZ | cptr::TSM);
        let rec = Recorder::default();
        let mut lazy = load(c);
        let mut ctx = vcpu(4);
        put(&rec, &lazy, &mut ctx, &host_fp());
        assert!(rec.log.borrow().is_empty(), "a run without a use moves nothing: {:?}", rec.log.borrow());
        assert!(!lazy.loaded);
        let mut scratch = FpRegs::ZERO;
        assert!(first_use(&rec, &mut lazy, &ctx, &mut scratch), "the first use loads");
    }

    #[test]
    fn a_vm_without_sve_moves_fp_simd_only_and_keeps_sve_trapped() {
        let rec = Recorder::default();
        let mut lazy = load(guest_cptr());
        let mut ctx = vcpu(0);
        let mut host = FpRegs::ZERO;
        assert!(first_use(&rec, &mut lazy, &ctx, &mut host));
        assert_eq!(*rec.log.borrow(), ["write_cptr", "isb", "fp_save", "fp_restore"]);
        let cptr_now = rec.vectors.borrow().cptr;
        assert_eq!(cptr_now, guest_cptr() & !cptr::TFP, "FP/SIMD untrapped; SVE and SME still trapped");
        assert!(!first_use(&rec, &mut lazy, &ctx, &mut host), "once per run");
        rec.log.borrow_mut().clear();
        put(&rec, &lazy, &mut ctx, &host);
        assert_eq!(*rec.log.borrow(), ["fp_save", "fp_restore"]);
    }

    #[test]
    fn an_sve_vm_gets_its_length_and_registers_at_its_first_use() {
        let rec = Recorder::default();
        let mut lazy = load(guest_cptr());
        let mut ctx = vcpu(4);
        let mut host = FpRegs::ZERO;
        assert!(first_use(&rec, &mut lazy, &ctx, &mut host));
        assert_eq!(*rec.log.borrow(), ["write_cptr", "isb", "fp_save", "write_zcr_el2", "sve_restore"]);
        let v = rec.vectors.borrow();
        assert_eq!(v.cptr, guest_cptr() & !(cptr::TFP | cptr::TZ), "FP/SIMD and SVE untrapped, SME trapped");
        assert_eq!(v.zcr_el2, 3, "LEN = 512 bits / 128 - 1");
        drop(v);
        rec.log.borrow_mut().clear();
        put(&rec, &lazy, &mut ctx, &host);
        assert_eq!(*rec.log.borrow(), ["sve_save", "sve_zero", "fp_restore"]);
    }

    #[test]
    fn the_guests_registers_survive_and_the_host_sees_only_its_own() {
        // A CPU of 2048 bits; a VM of 512. The host's registers are in the CPU.
        let rec = Recorder::default();
        let host = host_fp();
        {
            let mut v = rec.vectors.borrow_mut();
            *v = FakeVectors::with_max_vq(16);
            v.load_fp(&host);
        }
        let mut ctx = vcpu(4);
        // The guest's saved state: Zn = n in every byte, Pn = 0x80 | n, FFR 0x55, ZCR_EL1 1.
        for n in 0..32 {
            ctx.sve.z[n * 64..(n + 1) * 64].fill(n as u8);
        }
        for n in 0..16 {
            ctx.sve.p[n * 8..(n + 1) * 8].fill(0x80 | n as u8);
        }
        ctx.sve.ffr[..8].fill(0x55);
        (ctx.sve.fpsr, ctx.sve.fpcr, ctx.sve.zcr_el1) = (0x8, 0x0040_0000, 1);
        let saved = ctx.sve.clone();
        let mut scratch = FpRegs::ZERO;
        let mut lazy = load(guest_cptr());
        assert!(first_use(&rec, &mut lazy, &ctx, &mut scratch));
        assert_eq!(scratch, host, "the host's registers went to the scratch area");
        // What the guest finds: its own registers at its length.
        assert_eq!(rec.vectors.borrow().z[5][..64], [5u8; 64]);
        assert_eq!(rec.vectors.borrow().p[3][..8], [0x83u8; 8]);
        assert_eq!(rec.vectors.borrow().zcr_el1, 1);
        // No exits change them: put saves the same state.
        put(&rec, &lazy, &mut ctx, &scratch);
        assert_eq!(ctx.sve, saved, "saved as loaded");
        // The host: its own V registers, and no bit of the guest's above them.
        let v = rec.vectors.borrow();
        assert_eq!(v.fp(), host, "the host's V0..V31, FPSR, FPCR");
        for n in 0..32 {
            assert!(v.z[n][16..].iter().all(|&b| b == 0), "Z{n} above 128 bits: {:x?}", &v.z[n][16..80]);
        }
        assert!(v.p.iter().all(|p| p.iter().all(|&b| b == 0)), "P registers zeroed");
        assert!(v.ffr.iter().all(|&b| b == 0), "FFR zeroed");
    }

    #[test]
    fn what_the_guest_changed_is_saved_at_the_vms_length_whatever_its_zcr_el1() {
        let rec = Recorder::default();
        *rec.vectors.borrow_mut() = FakeVectors::with_max_vq(16);
        let mut ctx = vcpu(4);
        let mut lazy = load(guest_cptr());
        let mut scratch = FpRegs::ZERO;
        first_use(&rec, &mut lazy, &ctx, &mut scratch);
        {
            // The guest chose 128 bits with its ZCR_EL1 and wrote Z0's low half; bits it wrote
            // earlier at 512 bits stay (EL2's length is the VM's, not the guest's choice).
            let mut v = rec.vectors.borrow_mut();
            v.zcr_el1 = 0;
            v.z[0][..16].fill(0xAA);
            v.z[0][16..64].fill(0xBB);
            v.z[0][64..].fill(0xCC); // beyond the VM's length: no guest could have put it there
        }
        put(&rec, &lazy, &mut ctx, &scratch);
        assert_eq!(ctx.sve.z[..16], [0xAA; 16]);
        assert_eq!(ctx.sve.z[16..64], [0xBB; 48]);
        assert_eq!(ctx.sve.z[64..128], [0; 64], "Z1 is next: the VM's length packs them");
        assert_eq!(ctx.sve.zcr_el1, 0);
        assert_eq!(rec.vectors.borrow().zcr_el2, 3, "left at the VM's length");
    }
}
