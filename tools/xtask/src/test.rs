//! `cargo xtask test`: the ABI document check, the host unit tests, then the QEMU scenarios.

use crate::build::{build, Flavour};
use crate::{check_docs, cli, root, scenario, setup::setup};
use std::process::Command;

/// `cargo xtask test`.
pub fn command(args: &[String]) -> Result<(), String> {
    let flags = cli::parse("test", args, cli::TEST_FLAGS)?;
    if flags.has("--help") {
        print!("{}", cli::help("test", cli::TEST_FLAGS));
        return Ok(());
    }
    let repeat = flags.number("--repeat", 1, 1..=1000)?;
    let suite = scenario::Suite::load(flags.value("--only"))?;
    check_docs::run()?;
    let tc = setup()?;
    if !flags.has("--no-unit") {
        println!("xtask: host unit tests (cargo test)");
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["test", "--workspace", "--exclude", "boot", "--exclude", "el1-host", "--exclude", "guests"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("host unit tests failed".into());
        }
    }
    let release = build(&tc, Flavour::Release)?;
    let test_hooks = build(&tc, Flavour::TestHooks)?;
    scenario::run_all(&release, &test_hooks, suite, flags.has("--all"), repeat, flags.has("--verbose"))
}
