//! `cargo xtask measure`: a test VM's measurement, computed offline, from the same inputs and by
//! the same code as the VMM lays the VM out (`host_vdev::testvm`) and EL2 builds the value
//! (`shared_abi::measure`): what a guest reads from its handover page must be this.

use crate::cli;
use crate::images::Images;
use host_vdev::testvm::{lay_out, measurement, GUEST_RAM};
use shared_abi::msg::vm_flags;
use std::path::Path;

/// The measurement of a test VM of `vcpus` vCPUs and `mib` MiB booting `image`, with VM
/// `flags` (IPA size 36 bits, as the VMM creates test VMs).
pub fn test_vm(image: &Path, vcpus: u32, mib: u64, flags: u64) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut mem = vec![0u8; (mib << 20) as usize];
    let loaded = host_vdev::loader::load_test_image(&mut mem, GUEST_RAM, &bytes)?;
    let (chunks, n, dtb) = lay_out(&mut mem, &loaded, vcpus)?;
    Ok(measurement(&mem, &chunks[..n], vcpus, 36, flags, loaded.entry, dtb))
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
    let vcpus = flags.number("--vcpus", 1, 1..=8)?;
    let mib = u64::from(flags.number("--mib", 16, 1..=1024)?);
    let vm = if flags.has("--non-protected") { 0 } else { vm_flags::PROTECTED };
    let tc = crate::setup::setup()?;
    let images: Images = crate::build::build(&tc, crate::build::Flavour::Release)?;
    let guest = images.guest(flags.value("--guest").unwrap_or("demo"))?;
    println!("{}", hex(&test_vm(&guest, vcpus as u32, mib, vm)?));
    Ok(())
}
