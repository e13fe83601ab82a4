//! Debian's tools: whether a command is there, and installing packages with apt-get.

use std::process::Command;
use std::process::Stdio;

pub fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get` that waits for another package manager to finish (a fresh machine may be running
/// its own update when set-up starts) rather than failing at once on the dpkg lock.
pub fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.args(["-o", "DPkg::Lock::Timeout=600"]);
    c
}

pub fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    if !is_root() {
        return Err(format!("{} missing: run `sudo apt-get install {}`", pkgs[0], pkgs.join(" ")));
    }
    println!("xtask: installing {} from Debian (apt-get)...", pkgs.join(" "));
    let ok = apt_get().args(["update", "-qq"]).status().is_ok_and(|s| s.success())
        && apt_get()
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err(format!("apt-get install {} failed", pkgs.join(" "))) }
}
