//! `cargo xtask run`: the hypervisor on QEMU with a guest on the terminal: a test guest
//! (`--guest`, the demo by default) or a Linux guest (`--kernel`), both booted on the one VM
//! platform by the host's VMM (its `linux` scenario); or, with `--scenario`, a host scenario
//! with a test guest staged for it.

use crate::build::{build, Flavour};
use crate::images::test_guest_machine;
use crate::{cli, linux, scenario, setup::setup};
use std::path::{Path, PathBuf};

/// `cargo xtask run`.
pub fn command(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("run", args, cli::RUN_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("run", cli::RUN_FLAGS));
        return Ok(());
    }
    // Everything that can be checked without QEMU is checked before anything is built.
    let smp = flags.number("--smp", 2, 1..=8)?;
    if let Some(kernel) = flags.value("--kernel") {
        if flags.has("--guest") {
            return Err("--guest and --kernel both name the guest: choose one".into());
        }
        return run_linux(&flags, kernel, smp, "512M");
    }
    if !flags.has("--scenario") {
        // A test guest boots like any other guest: on the host's VMM.
        let guest = flags.value("--guest").unwrap_or("demo");
        let kernel = if crate::images::BUNDLED_GUESTS.contains(&guest) { format!("{}{guest}", linux::GUEST_PREFIX) } else { guest.to_string() };
        return run_linux(&flags, &kernel, smp, "64M");
    }
    if let Some(f) = cli::LINUX_ONLY_FLAGS.iter().find(|f| flags.has(f)) {
        return Err(format!("{f} is for a guest the host's VMM boots: drop --scenario (a host scenario makes its own VMs)"));
    }
    let vcpus = flags.number("--vcpus", 2, 1..=8)?;
    let scenario = flags.value("--scenario").unwrap_or_default().to_string();
    let tc = setup()?;
    let flavour = if flags.has("--test-image") { Flavour::TestHooks } else { Flavour::Release };
    let images = build(&tc, flavour)?;
    scenario::Registry::from_host(&images.host)?.require(&scenario)?;
    let guest = images.guest(flags.value("--guest").unwrap_or("demo"))?;
    let vm = if flags.has("--non-protected") { "plain" } else { "protected" };
    let extra = flags.value("--args").unwrap_or_default();
    let mut machine = test_guest_machine(&images, smp, &format!("scenario={scenario} vm={vm} vcpus={vcpus} {extra}"), &guest)?;
    if flags.has("--gdb") {
        println!("xtask: QEMU waits for gdb on :1234 (gdb-multiarch {} -ex 'target remote :1234')", images.el2.display());
        machine = machine.args(["-s", "-S"]);
    }
    println!(
        "xtask: booting the hypervisor on QEMU virt ({smp} CPUs, scenario {scenario}, guest {} staged for it); the host powers off when done",
        guest.display()
    );
    let status = machine.run_attached(false)?;
    match status.code() {
        Some(0) => {
            println!("xtask: QEMU exited 0: all went well");
            Ok(())
        }
        code => Err(format!("QEMU exited with {code:?}: the run failed (see the log above)")),
    }
}

/// `run --kernel` (or `--guest` without `--scenario`): a guest under the hypervisor, on the
/// host's VMM (its `linux` scenario), with `default_mem` unless `--mem` says.
fn run_linux(flags: &cli::Parsed, kernel: &str, smp: u32, default_mem: &str) -> Result<(), String> {
    if flags.has("--protected") && flags.has("--non-protected") {
        return Err("--protected and --non-protected: choose one".into());
    }
    let vcpus = flags.number("--vcpus", 2, 1..=8)?;
    let vms = flags.number("--vms", 1, 1..=2)?;
    let mem_mib = linux::limits::parse_mem(flags.value("--mem").unwrap_or(default_mem))?;
    let cmdline = flags.value("--cmdline").unwrap_or(linux::default_cmdline(kernel)).to_string();
    // The limits that need no file, before anything is fetched or built.
    linux::limits::check_limits(0, None, cmdline.len(), mem_mib, vcpus, vms)?;
    let file = linux::NamedKernel::parse(kernel).is_none() && linux::kut::program_name(kernel).is_none() && linux::guest_name(kernel).is_none();
    if file {
        let head = linux::read_head(Path::new(kernel)).map_err(|e| format!("--kernel {e}"))?;
        linux::limits::check_kernel_head(&head).map_err(|e| format!("--kernel {kernel}: {e}"))?;
    }
    let tc = setup()?;
    let (kernel, default_initrd) = linux::resolve_kernel(kernel, Path::new(""), linux::artifacts)?;
    let run = linux::LinuxRun {
        scenario: flags.value("--scenario").unwrap_or("linux").to_string(),
        kernel,
        initrd: flags.value("--initrd").map(PathBuf::from).or(default_initrd),
        disk: flags.value("--disk").map(PathBuf::from),
        cmdline,
        mem_mib,
        vcpus,
        protected: !flags.has("--non-protected"),
        mte: flags.has("--mte"),
        ptrauth: flags.has("--ptrauth"),
        sve_vl: flags.sve_vl()?,
        vms,
    };
    run.validate()?;
    let flavour = if flags.has("--test-image") { Flavour::TestHooks } else { Flavour::Release };
    let images = build(&tc, flavour)?;
    scenario::Registry::from_host(&images.host)?.require(&run.scenario)?;
    let (mut machine, _cmdline_file) = linux::hyp_machine(&images, smp, &run, flags.value("--args").unwrap_or_default())?;
    if flags.has("--gdb") {
        println!("xtask: QEMU waits for gdb on :1234 (gdb-multiarch {} -ex 'target remote :1234')", images.el2.display());
        machine = machine.args(["-s", "-S"]);
    }
    println!(
        "xtask: booting the hypervisor on QEMU virt ({smp} CPUs, 2 GiB) with {} as {vms} {} VM(s) of {vcpus} vCPU(s) and {mem_mib} MiB, MTE {}, pointer authentication {}, SVE {}{}",
        run.kernel.display(),
        if run.protected { "protected" } else { "non-protected" },
        if run.mte { "on" } else { "off" },
        if run.ptrauth { "on" } else { "off" },
        if run.sve_vl == 0 { "off".to_string() } else { format!("{} bits", run.sve_vl * 8) },
        run.initrd.as_ref().map_or(String::new(), |i| format!(", initrd {}", i.display())) + &run.disk.as_ref().map_or(String::new(), |d| format!(", disk {}", d.display()))
    );
    println!("xtask: guest command line: {}", run.cmdline);
    // The console is the terminal's: a shell in the guest can be used (Ctrl-C ends QEMU).
    let status = machine.run_attached(true)?;
    match status.code() {
        Some(0) => {
            println!("xtask: QEMU exited 0: all went well");
            Ok(())
        }
        code => Err(format!("QEMU exited with {code:?}: the run failed (see the log above)")),
    }
}
