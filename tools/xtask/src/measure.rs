//! `cargo xtask measure`: a VM's measurement, computed offline, from the same inputs and by
//! the same code as the VMM lays the VM out (`host_vdev::vm_platform`) and EL2 builds the value
//! (`shared_abi::measure`): what a guest reads from its handover page must be this.

use crate::cli;
use crate::images::Images;
use host_vdev::vm_platform::{lay_out, measurement, Devices};
use shared_abi::msg::{vm_flags, VmCreate};
use std::path::Path;

/// The measurement of a scenario's VM of `vcpus` vCPUs and `mib` MiB booting `image` with VM
/// `flags` (IPA size 36 bits, no command line, no disk: as the host's scenarios boot their
/// guests, `host_vmm::boot`). Also what tells `run --guest` that an image fits.
pub fn test_vm(image: &Path, vcpus: u32, mib: u64, flags: u64) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut mem = vec![0u8; (mib << 20) as usize];
    let devices = Devices { protected: flags & vm_flags::PROTECTED != 0, disk: false };
    let laid = lay_out(&mut mem, &bytes, &[], vcpus, "", devices).map_err(|e| format!("{}: {e} ({mib} MiB of guest RAM: see --mem)", image.display()))?;
    let config = VmCreate { nr_vcpus: vcpus, ipa_bits: 36, flags, sve_vl: 0, reserved: 0 };
    Ok(measurement(&mem, &laid.chunks[..laid.count], &config, laid.entry, laid.dtb))
}

/// The measurement of each VM of a Linux run (they are alike): the kernel, initramfs,
/// command line and devices (protected or not: the DMA pool; a disk or not) laid out as the
/// VMM lays them out, with the run's VM flags.
pub fn linux_vm(run: &crate::linux::LinuxRun) -> Result<[u8; 32], String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let kernel = read(&run.kernel)?;
    let initrd = match &run.initrd {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    let mut mem = vec![0u8; (u64::from(run.mem_mib) << 20) as usize];
    let devices = Devices { protected: run.protected, disk: run.disk.is_some() };
    let laid = lay_out(&mut mem, &kernel, &initrd, run.vcpus, run.cmdline.trim_end_matches(['\0', '\n']), devices)?;
    let mut flags = 0;
    for (on, f) in [(run.protected, vm_flags::PROTECTED), (run.mte, vm_flags::MTE), (run.ptrauth, vm_flags::PTRAUTH), (run.sve_vl != 0, vm_flags::SVE)] {
        if on {
            flags |= f;
        }
    }
    // As the VMM asks for it (host-vmm `linux::Config`, `create_sve_at`).
    let config = VmCreate { nr_vcpus: run.vcpus, ipa_bits: 36, flags, sve_vl: run.sve_vl, reserved: 0 };
    Ok(measurement(&mem, &laid.chunks[..laid.count], &config, laid.entry, laid.dtb))
}

/// Lower-case hex.
pub fn hex(m: &[u8; 32]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect()
}

/// `cargo xtask measure`.
pub fn command(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("measure", args, cli::MEASURE_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("measure", cli::MEASURE_FLAGS));
        return Ok(());
    }
    if let Some(kernel) = flags.value("--kernel") {
        let (kernel_file, default_initrd) = crate::linux::resolve_kernel(kernel, Path::new(""), crate::linux::artifacts)?;
        let run = crate::linux::LinuxRun {
            scenario: "linux".into(),
            kernel: kernel_file,
            initrd: flags.value("--initrd").map(std::path::PathBuf::from).or(default_initrd),
            disk: flags.value("--disk").map(std::path::PathBuf::from),
            cmdline: flags.value("--cmdline").unwrap_or(crate::linux::default_cmdline(kernel)).to_string(),
            mem_mib: crate::linux::limits::parse_mem(flags.value("--mem").unwrap_or("512M"))?,
            vcpus: flags.number("--vcpus", 2, 1..=8)?,
            protected: !flags.has("--non-protected"),
            mte: flags.has("--mte"),
            ptrauth: flags.has("--ptrauth"),
            sve_vl: flags.sve_vl()?,
            vms: 1,
        };
        run.validate()?;
        println!("{}", hex(&linux_vm(&run)?));
        return Ok(());
    }
    let vcpus = flags.number("--vcpus", 1, 1..=8)?;
    let mib = u64::from(crate::linux::limits::parse_mem(flags.value("--mem").unwrap_or("16M"))?);
    if !(16..=1024).contains(&mib) {
        return Err(format!("--mem {mib}M: a test guest's VM has 16M to 1024M"));
    }
    let vm = if flags.has("--non-protected") { 0 } else { vm_flags::PROTECTED };
    let tc = crate::setup::setup()?;
    let images: Images = crate::build::build(&tc, crate::build::Flavour::Release)?;
    let guest = images.guest(flags.value("--guest").unwrap_or("demo"))?;
    println!("{}", hex(&test_vm(&guest, vcpus, mib, vm)?));
    Ok(())
}
