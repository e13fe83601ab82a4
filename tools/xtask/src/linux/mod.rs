//! Linux guests: a Linux run under the hypervisor (`run --kernel`, the Linux scenarios, the
//! benchmarks) and the QEMU machine for it, the same kernel on bare QEMU (the baseline,
//! `cargo xtask linux-bare`), and the boot-to-userspace measurement the benchmark compares
//! between the two. The files (`artifacts.rs`, `initramfs.rs`), the pKVM guest kernel's build
//! (`kernel.rs`), the kvm-unit-tests build (`kut.rs`) and the limits (`limits.rs`) are in the
//! submodules.

pub mod artifacts;
pub mod bare;
mod cpio;
mod initramfs;
pub mod kernel;
pub mod kut;
pub mod limits;

pub use artifacts::{artifacts, Artifacts};

use crate::images::Images;
use crate::qemu::{self, Machine};
use limits::{check_kernel_head, check_limits};
use shared_abi::layout::{GUEST_CMDLINE_STAGING, GUEST_DISK_STAGING, GUEST_IMAGE_STAGING, GUEST_INITRD_STAGING};
use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kernel command line for Linux runs without `--cmdline`.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 earlycon=pl011,0x09000000 panic=-1";

/// The same for the pKVM guest kernel: no `earlycon`. Linux 6.12's pKVM guest driver declares
/// MMIO only through `ioremap`, and earlycon's fixmap mapping of the PL011 is not one: once the
/// GIC driver's `ioremap` has turned the MMIO guard on, earlycon's next write is an undeclared
/// access, EL2 injects an external abort, and the kernel hangs reporting it through the same
/// console. Messages before the PL011 driver takes over wait in the log buffer instead.
pub const PKVM_CMDLINE: &str = "console=ttyAMA0 panic=-1";

/// The kernels a Linux run names rather than gives as a file (`--kernel NAME`, `kernel = NAME`);
/// both boot with the project's initramfs by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedKernel {
    /// Debian bookworm's arm64 cloud kernel (Linux 6.1), fetched by `setup`.
    Debian,
    /// The project's pKVM guest kernel (Linux 6.12 with `ARM_PKVM_GUEST`), built by `setup`.
    Pkvm,
}

impl NamedKernel {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "debian" => Some(Self::Debian),
            "pkvm" => Some(Self::Pkvm),
            _ => None,
        }
    }

    /// The command line when none is given.
    pub fn default_cmdline(self) -> &'static str {
        match self {
            Self::Pkvm => PKVM_CMDLINE,
            Self::Debian => DEFAULT_CMDLINE,
        }
    }
}

/// The prefix that names one of the project's test guests as the kernel (`guest:demo`).
pub const GUEST_PREFIX: &str = "guest:";

/// The test guest `guest:NAME` names, if it names one.
pub fn guest_name(kernel: &str) -> Option<&str> {
    kernel.strip_prefix(GUEST_PREFIX)
}

/// The command line for a kernel (a name or a file) when none is given: none for a
/// kvm-unit-tests program (`kut:...`), whose every bootargs word is an argument, nor for a test
/// guest (`guest:...`).
pub fn default_cmdline(kernel: &str) -> &'static str {
    if kut::program_name(kernel).is_some() || guest_name(kernel).is_some() {
        return "";
    }
    NamedKernel::parse(kernel).map_or(DEFAULT_CMDLINE, NamedKernel::default_cmdline)
}

/// The kernel file and default initramfs of what `--kernel` or `kernel =` names: a named kernel
/// (with the project's initramfs, from `artifacts`, asked only then), a kvm-unit-tests program
/// (`kut:NAME.flat`, built by `setup`; no initramfs), one of the project's test guests
/// (`guest:NAME`, as `build` leaves it; no initramfs), or a file (relative to `base`).
pub fn resolve_kernel<A: Borrow<Artifacts>>(kernel: &str, base: &Path, artifacts: impl FnOnce() -> Result<A, String>) -> Result<(PathBuf, Option<PathBuf>), String> {
    if let Some(name) = kut::program_name(kernel) {
        return Ok((kut::program(name)?, None));
    }
    if let Some(name) = guest_name(kernel) {
        if !crate::images::BUNDLED_GUESTS.contains(&name) {
            return Err(format!("no test guest {name:?} (there are: {})", crate::images::BUNDLED_GUESTS.join(", ")));
        }
        return Ok((crate::build::release_dir().join(name), None));
    }
    match NamedKernel::parse(kernel) {
        Some(named) => {
            let a = artifacts()?;
            let a = a.borrow();
            Ok((a.image(named)?.to_path_buf(), Some(a.initramfs.clone())))
        }
        None => Ok((base.join(kernel), None)),
    }
}

/// Set to 1 to let `setup` go on without the Linux artifacts (Linux scenarios are then skipped).
pub const OPTIONAL_ENV: &str = "XTASK_LINUX_OPTIONAL";

/// The machine's RAM for Linux runs (EL2 covers up to 6 GiB; scenarios may set `ram`).
const LINUX_MACHINE_RAM: &str = "2G";

/// A Linux run: what `run --kernel` and the Linux scenarios boot under the hypervisor.
#[derive(Debug, Clone)]
pub struct LinuxRun {
    /// The host scenario (`linux`).
    pub scenario: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A disk image behind each VM's virtio-blk (`--disk`).
    pub disk: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub protected: bool,
    pub mte: bool,
    pub ptrauth: bool,
    /// SVE vector length in bytes (`--sve`, `--sve-vl`), 0 without SVE.
    pub sve_vl: u64,
    pub vms: u32,
}

/// The sizes of a Linux run's files, measured once by [`LinuxRun::validate`].
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    pub kernel: u64,
    pub initrd: Option<u64>,
    pub disk: Option<u64>,
}

impl LinuxRun {
    /// Reads the files' sizes and the kernel's header and checks every limit.
    pub fn validate(&self) -> Result<Staged, String> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("{}: {e}", p.display()));
        let kernel = size(&self.kernel)?;
        let initrd = self.initrd.as_deref().map(size).transpose()?;
        let disk = self.disk.as_deref().map(size).transpose()?;
        check_limits(kernel, initrd, self.cmdline.len(), self.mem_mib, self.vcpus, self.vms)?;
        if let Some(d) = disk {
            limits::check_disk(d)?;
            if self.vms > 1 {
                return Err("--disk with --vms 2: one staged disk image cannot be two VMs' disks".into());
            }
        }
        // An `Image`; the host's Linux VMM also runs the project's ELF test guests (the
        // benchmarks' interrupt guest), loaded at their own addresses, and raw images (the
        // kvm-unit-tests programs), at RAM + 0x80000.
        check_kernel_head(&read_head(&self.kernel)?).map_err(|e| format!("{}: {e}", self.kernel.display()))?;
        Ok(Staged { kernel, initrd, disk })
    }

    /// The host's boot arguments: the contract with el1-host's `linux` scenario.
    pub fn bootargs(&self, staged: Staged) -> String {
        let b = |on: bool| u8::from(on);
        let mut s = format!(
            "scenario={} mem={} vcpus={} protected={} mte={} ptrauth={} vms={} guest={GUEST_IMAGE_STAGING:#x},{}",
            self.scenario,
            self.mem_mib,
            self.vcpus,
            b(self.protected),
            b(self.mte),
            b(self.ptrauth),
            self.vms,
            staged.kernel
        );
        if self.sve_vl != 0 {
            s += &format!(" sve={}", self.sve_vl);
        }
        if let Some(size) = staged.initrd {
            s += &format!(" initrd={GUEST_INITRD_STAGING:#x},{size}");
        }
        if let Some(size) = staged.disk {
            s += &format!(" disk={GUEST_DISK_STAGING:#x},{size}");
        }
        if !self.cmdline.is_empty() {
            s += &format!(" cmdline={GUEST_CMDLINE_STAGING:#x},{}", self.cmdline.len());
        }
        s
    }
}

/// The first 64 bytes of a kernel file (fewer if it is shorter): what its format is told from.
pub fn read_head(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = Vec::with_capacity(64);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, 64), &mut head).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(head)
}

/// A temporary file holding a Linux run's command line, for QEMU's loader; removed on drop.
pub struct CmdlineFile(PathBuf);

impl Drop for CmdlineFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static CMDLINE_FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The QEMU machine for a Linux run under the hypervisor: 2 GiB of RAM, EL2, the host, and the
/// kernel, initrd and command line staged where the host expects them. Keep the returned file
/// until QEMU has started.
pub fn hyp_machine(images: &Images, smp: u32, run: &LinuxRun, extra_bootargs: &str) -> Result<(Machine, Option<CmdlineFile>), String> {
    let staged = run.validate()?;
    let mut bootargs = run.bootargs(staged);
    if !extra_bootargs.trim().is_empty() {
        bootargs = format!("{bootargs} {}", extra_bootargs.trim());
    }
    let mut m = crate::images::with_hypervisor(images, Machine::virt()?.mem(LINUX_MACHINE_RAM), smp, &run.kernel);
    if let Some(initrd) = &run.initrd {
        m = m.loader(initrd, Some(GUEST_INITRD_STAGING));
    }
    if let Some(disk) = &run.disk {
        m = m.loader(disk, Some(GUEST_DISK_STAGING));
    }
    let mut file = None;
    if !run.cmdline.is_empty() {
        let dir = artifacts::cache().join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = CMDLINE_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("cmdline-{}-{n}", std::process::id()));
        std::fs::write(&path, &run.cmdline).map_err(|e| format!("{}: {e}", path.display()))?;
        m = m.loader(&path, Some(GUEST_CMDLINE_STAGING));
        file = Some(CmdlineFile(path));
    }
    Ok((m.args(["-append", &bootargs]), file))
}

/// The same kernel, initrd and command line on bare QEMU, at EL1: `qemu/virt.args` without
/// EL2 (`virtualization=off`), `run.vcpus` CPUs, `run.mem_mib` of RAM and MTE as asked;
/// QEMU answers PSCI itself. Pointer authentication is always there (`-cpu max`); `protected`
/// and `vms` mean nothing here.
pub fn bare_machine(run: &LinuxRun) -> Result<Machine, String> {
    let props = [("virtualization", "off"), ("mte", if run.mte { "on" } else { "off" })];
    let mut m = Machine::virt()?.mem(&format!("{}M", run.mem_mib)).machine_properties(&props).smp(run.vcpus).serial_on_stdio().kernel(&run.kernel);
    if let Some(initrd) = &run.initrd {
        m = m.args(["-initrd", &initrd.display().to_string()]);
    }
    Ok(m.args(["-append", &run.cmdline]))
}

/// The check list for a VM of `cpus` CPUs, with or without MTE (pointer authentication is
/// always there: `-cpu max`).
pub fn default_checks(cpus: u32, mte: bool) -> String {
    if mte {
        format!("cpus={cpus},cpuinfo,mte,pac,timer")
    } else {
        format!("cpus={cpus},cpuinfo=paca+pacg+no-mte,pac,timer")
    }
}

/// What one boot to userspace showed.
#[derive(Debug, Default, Clone)]
pub struct BootReport {
    /// `PKVM-STAMP:` of the first userspace program: CNTVCT_EL0 and CNTFRQ_EL0.
    pub stamp: Option<(u64, u64)>,
    /// Wall time to the stamp line and to QEMU's exit.
    pub wall_to_userspace: Option<Duration>,
    pub wall_total: Duration,
    /// The `PKVM-CHECK: passed|failed ...` summary lines (one per VM).
    pub summaries: Vec<String>,
    /// QEMU's exit status (`None`: killed at the timeout).
    pub exit: Option<i32>,
    pub lines: Vec<String>,
}

impl BootReport {
    /// Guest counter time to the first userspace line, in ns. Under `-icount shift=0` one
    /// instruction is one ns of virtual time, so this counts instructions (all CPUs' together,
    /// QEMU runs them in turn), plus idle time where every CPU waited.
    pub fn ns_to_userspace(&self) -> Option<u64> {
        let (cntvct, cntfrq) = self.stamp?;
        (cntfrq != 0).then(|| (cntvct as u128 * 1_000_000_000 / cntfrq as u128) as u64)
    }

    /// Every VM printed `PKVM-CHECK: passed`, `vms` of them, and QEMU exited 0.
    pub fn passed(&self, vms: usize) -> bool {
        self.exit == Some(0) && self.summaries.len() == vms && self.summaries.iter().all(|s| s.contains("PKVM-CHECK: passed"))
    }
}

/// QEMU's instruction counting for the boot measurement: one instruction is one ns of virtual
/// time (`shift=0`), and while every CPU waits, virtual time jumps to the next timer deadline at
/// once (`sleep=off`) instead of running with the wall clock, so idle stretches do not add
/// host noise (two bare boots to userspace differ by about 0.003%; with `sleep=on`, by 0.3%).
pub const ICOUNT: &str = "shift=0,sleep=off";

/// The benchmark's figure for one QEMU machine that boots a Linux guest with the project's
/// initramfs (`bare_machine` or `hyp_machine`): the guest's virtual counter at the first
/// userspace line, in ns, under [`ICOUNT`] (added here). On bare QEMU that counts from the
/// machine's start (no EL2: no offset); under the hypervisor too, as long as the VM's
/// `CNTVOFF_EL2` is 0 (EL2's default; the host's `host: bench: VM ... kernel entry at
/// CNTPCT=.. CNTVOFF_EL2=..` line says where its kernel started and with which offset, and
/// `cargo xtask bench` measures both from the kernel's first instruction). Fails
/// unless the guest reaches userspace and every VM passes its checks.
pub fn ns_to_userspace(machine: Machine, vms: usize, timeout: Duration, echo: bool) -> Result<(u64, BootReport), String> {
    let r = boot(&machine.icount(ICOUNT), timeout, echo)?;
    if r.exit.is_none() {
        return Err(format!("the guest did not power off within {} s", timeout.as_secs()));
    }
    let ns = r.ns_to_userspace().ok_or_else(|| format!("the guest printed no PKVM-STAMP line (QEMU exit {:?})", r.exit))?;
    if !r.passed(vms) {
        return Err(format!("the guest reached userspace but did not pass: QEMU exit {:?}, {:?}", r.exit, r.summaries));
    }
    Ok((ns, r))
}

/// Parses `PKVM-STAMP: cntvct=N cntfrq=F` anywhere in a console line.
fn parse_stamp(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("PKVM-STAMP: ").nth(1)?;
    let mut words = rest.split_whitespace();
    let cntvct = words.next()?.strip_prefix("cntvct=")?.parse().ok()?;
    let cntfrq = words.next()?.strip_prefix("cntfrq=")?.parse().ok()?;
    Some((cntvct, cntfrq))
}

/// Runs a QEMU machine that boots a Linux guest with the project's initramfs to its end (the
/// guest powers off), reading the console; `echo` prints every line. The benchmark calls it
/// with the bare machine and with the hypervisor's, both under `-icount shift=0`, and compares
/// [`BootReport::ns_to_userspace`].
pub fn boot(machine: &Machine, timeout: Duration, echo: bool) -> Result<BootReport, String> {
    let out = qemu::Run::new(machine).deadline(timeout).echo(echo).label_stderr("qemu: ").wait()?;
    let mut report = BootReport { wall_total: out.wall, exit: out.code(), ..Default::default() };
    for line in out.lines {
        if report.stamp.is_none() {
            if let Some(s) = parse_stamp(&line.text) {
                report.stamp = Some(s);
                report.wall_to_userspace = Some(line.at);
            }
        }
        if line.text.contains("PKVM-CHECK: passed") || line.text.contains("PKVM-CHECK: failed") {
            report.summaries.push(line.text.clone());
        }
        report.lines.push(line.text);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_run() -> LinuxRun {
        LinuxRun {
            scenario: "linux".into(),
            kernel: "Image".into(),
            initrd: Some("initramfs.cpio".into()),
            disk: None,
            cmdline: DEFAULT_CMDLINE.into(),
            mem_mib: 512,
            vcpus: 2,
            protected: true,
            mte: true,
            ptrauth: false,
            sve_vl: 0,
            vms: 1,
        }
    }

    #[test]
    fn bootargs_follow_the_host_contract() {
        let run = sample_run();
        let args = run.bootargs(Staged { kernel: 27303872, initrd: Some(2_700_000), disk: None });
        assert_eq!(
            args,
            format!(
                "scenario=linux mem=512 vcpus=2 protected=1 mte=1 ptrauth=0 vms=1 guest=0x48000000,27303872 initrd=0x4c000000,2700000 cmdline=0x4bfff000,{}",
                DEFAULT_CMDLINE.len()
            )
        );
        let bare = LinuxRun { initrd: None, cmdline: String::new(), protected: false, vms: 2, ..run };
        assert_eq!(bare.bootargs(Staged { kernel: 10, initrd: None, disk: Some(1 << 20) }), "scenario=linux mem=512 vcpus=2 protected=0 mte=1 ptrauth=0 vms=2 guest=0x48000000,10 disk=0xb0000000,1048576");
        let sve = LinuxRun { sve_vl: 64, ..bare };
        assert_eq!(sve.bootargs(Staged { kernel: 10, initrd: None, disk: None }), "scenario=linux mem=512 vcpus=2 protected=0 mte=1 ptrauth=0 vms=2 guest=0x48000000,10 sve=64", "SVE only when on");
    }

    #[test]
    fn stamp_lines_and_reports() {
        assert_eq!(parse_stamp("PKVM-STAMP: cntvct=62500000 cntfrq=62500000"), Some((62_500_000, 62_500_000)));
        assert_eq!(parse_stamp("vm1: PKVM-STAMP: cntvct=16 cntfrq=62500000\r"), Some((16, 62_500_000)));
        assert_eq!(parse_stamp("PKVM-STAMP: cntvct=x cntfrq=1"), None);
        let r = BootReport { stamp: Some((1000, 62_500_000)), exit: Some(0), summaries: vec!["PKVM-CHECK: passed 5/5".into()], ..Default::default() };
        assert_eq!(r.ns_to_userspace(), Some(16_000), "62.5 MHz: 16 ns a tick");
        assert!(r.passed(1) && !r.passed(2));
        let failed = BootReport { summaries: vec!["PKVM-CHECK: failed 1/5".into()], ..r.clone() };
        assert!(!failed.passed(1));
        assert!(!BootReport { exit: Some(1), ..r }.passed(1));
    }
}
