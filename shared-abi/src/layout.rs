//! The boot protocol: where the images sit on QEMU's `virt` machine and how EL2 enters the host.
//!
//! ```text
//! 0x4000_0000  device tree blob, placed by QEMU at the base of RAM      (host-owned)
//! 0x4020_0000  EL2: image, stacks, ownership record, page-table pool   (EL2-owned, HYP_REGION_SIZE)
//! 0x4200_0000  host image (el1-host), loaded by QEMU's generic loader  (host-owned)
//! 0x4800_0000  the guest image file, staged by QEMU's loader           (host-owned)
//! 0x4BFF_F000  a Linux guest's command line, staged by QEMU's loader   (host-owned)
//! 0x4C00_0000  a Linux guest's initrd, staged by QEMU's loader         (host-owned)
//! 0x5000_0000  host memory the host's VMM gives to guests               (host-owned until given)
//! 0xB000_0000  a Linux guest's disk image, staged by QEMU's loader     (host-owned)
//!   ...        rest of RAM                                             (host-owned)
//! ```
//!
//! EL2 enters the host at [`HOST_IMAGE_BASE`] at EL1h with `x0` = physical address of the device
//! tree, as Linux's arm64 boot protocol does, and the MMU off.

/// Where the boot image (EL2) is linked. 2 MiB aligned so no host block mapping covers it.
pub const HYP_REGION_BASE: u64 = 0x4020_0000;
/// Size of the memory EL2 reserves for itself. A multiple of 2 MiB.
pub const HYP_REGION_SIZE: u64 = 24 << 20;
/// Where the host image is linked and entered.
pub const HOST_IMAGE_BASE: u64 = 0x4200_0000;

/// Where the run command stages a guest image file for the host (`guest=ADDR,SIZE` in the
/// boot arguments tells the host). At most [`GUEST_IMAGE_MAX`] bytes.
pub const GUEST_IMAGE_STAGING: u64 = 0x4800_0000;
/// The largest guest image file (a Linux arm64 `Image` included) the run command stages: it
/// must end below [`GUEST_CMDLINE_STAGING`].
pub const GUEST_IMAGE_MAX: u64 = 60 << 20;
/// Where the run command stages a Linux guest's command line, as a file of at most
/// [`GUEST_CMDLINE_MAX`] bytes with no terminating NUL (`cmdline=ADDR,SIZE` in the boot
/// arguments tells the host). One 4 KiB page, just below the initrd.
pub const GUEST_CMDLINE_STAGING: u64 = 0x4BFF_F000;
/// The longest guest command line, in bytes: with the NUL the guest's device tree adds, one
/// 4 KiB page.
pub const GUEST_CMDLINE_MAX: u64 = 4095;
/// Where the run command stages a Linux guest's initrd (`initrd=ADDR,SIZE` in the boot
/// arguments tells the host). At most [`GUEST_INITRD_MAX`] bytes.
pub const GUEST_INITRD_STAGING: u64 = 0x4C00_0000;
/// The largest initrd the run command stages: it must end by 0x5000_0000, where the memory
/// the host gives to guests starts.
pub const GUEST_INITRD_MAX: u64 = 64 << 20;

/// Where the run command stages a Linux guest's disk image (`disk=ADDR,SIZE` in the boot
/// arguments tells the host), behind each Linux VM's virtio-blk; writes stay in this copy for
/// the run. Above the memory given to guests: the VMM gives at most 1536 MiB from 0x5000_0000
/// and never from here on. At most [`GUEST_DISK_MAX`] bytes.
pub const GUEST_DISK_STAGING: u64 = 0xB000_0000;
/// The largest disk image the run command stages: it must end by 0xC000_0000, the end of the
/// 2 GiB a Linux run's machine has.
pub const GUEST_DISK_MAX: u64 = 256 << 20;

const _: () = {
    assert!(HYP_REGION_BASE.is_multiple_of(2 << 20));
    assert!(HYP_REGION_SIZE.is_multiple_of(2 << 20));
    assert!(HYP_REGION_BASE + HYP_REGION_SIZE <= HOST_IMAGE_BASE);
    // The staged files do not overlap each other or the memory given to guests.
    assert!(GUEST_IMAGE_STAGING + GUEST_IMAGE_MAX <= GUEST_CMDLINE_STAGING);
    assert!(GUEST_CMDLINE_STAGING + GUEST_CMDLINE_MAX < GUEST_INITRD_STAGING);
    assert!(GUEST_INITRD_STAGING + GUEST_INITRD_MAX <= 0x5000_0000);
    assert!(0x5000_0000 + (1536 << 20) <= GUEST_DISK_STAGING);
    assert!(GUEST_DISK_STAGING + GUEST_DISK_MAX <= 0xC000_0000);
};

/// The host's run-status table: what each host CPU last did with a vCPU. Not part of the
/// hypercall ABI; a contract between the host and the test runner, which reads the table
/// through QEMU's monitor (by the symbol [`run_status::SYMBOL`] in the host image, whose
/// addresses are physical: the host runs with its MMU off) when a scenario times out, so that
/// a hang names the VM, vCPU and last exit on every CPU.
pub mod run_status {
    /// The symbol of the table: `[[u64; WORDS]; CPUS]`.
    pub const SYMBOL: &str = "HOST_RUN_STATUS";
    /// Rows (host CPUs).
    pub const CPUS: usize = 8;
    /// Words per row.
    pub const WORDS: usize = 8;
    /// Word: the VM handle last run on this CPU (0: none yet).
    pub const VM: usize = 0;
    /// Word: the vCPU index last run.
    pub const VCPU: usize = 1;
    /// Word: 1 while inside `VCPU_RUN` (in EL2 or the guest), 0 while the host handles an exit.
    pub const IN_RUN: usize = 2;
    /// Word: `VCPU_RUN` calls made on this CPU.
    pub const RUNS: usize = 3;
    /// Word: the last exit's reason ([`crate::msg::exit`]), or `u64::MAX` if the last
    /// `VCPU_RUN` returned an error.
    pub const LAST_EXIT: usize = 4;
    /// Word: the last exit's IPA.
    pub const LAST_IPA: usize = 5;
    /// Word: the last exit's data (MMIO value, kill reason) or the error code.
    pub const LAST_DATA: usize = 6;
}
