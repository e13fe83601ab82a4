//! `cargo xtask tcb`: the size of the trusted computing base (EL2 and boot).
//!
//! - lines of Rust code in `el2/src` and `boot/src`, without `#[cfg(test)]` modules, comments
//!   and blank lines (inline assembly counts: it is code); a file that only the test EL2 image
//!   compiles (`#![cfg(any(test, feature = "test-hooks"))]`: the invariant checker) is counted
//!   apart, since a release EL2 does not contain it;
//! - `unsafe` blocks and `unsafe impl`s, and how many have a `// SAFETY:` comment in the comment
//!   block right above them (or on the same line);
//! - section sizes of the EL2 image;
//! - the crates linked into EL2, with versions (procedural macros, which only run at build
//!   time, are left out).

use crate::images::Images;
use crate::root;
use object::elf::{SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS};
use object::read::elf::{ElfFile64, SectionHeader};
use object::Endianness;
use std::path::Path;
use std::process::Command;

#[derive(Default, Debug)]
struct Counts {
    code: usize,
    /// Code in files only the test EL2 image compiles.
    test_image_only: usize,
    unsafe_blocks: usize,
    unsafe_commented: usize,
    files: usize,
}

/// Counts one file's code lines and `unsafe` blocks.
fn count_file(text: &str, c: &mut Counts) {
    let lines: Vec<&str> = text.lines().collect();
    let mut skip_depth: Option<i32> = None;
    let mut pending_cfg_test = false;
    for (i, raw) in lines.iter().enumerate() {
        let l = raw.trim();
        if let Some(d) = skip_depth.as_mut() {
            *d += l.matches('{').count() as i32 - l.matches('}').count() as i32;
            if *d <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if l == "#![cfg(test)]" {
            // A whole file of test code (a fixture module).
            return;
        }
        if l == r#"#![cfg(any(test, feature = "test-hooks"))]"# {
            // A whole file of the test image's code: counted apart.
            let mut rest = Counts::default();
            count_file(&lines[i + 1..].join("\n"), &mut rest);
            c.test_image_only += rest.code;
            c.unsafe_blocks += rest.unsafe_blocks;
            c.unsafe_commented += rest.unsafe_commented;
            return;
        }
        if l == "#[cfg(test)]" {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test {
            pending_cfg_test = false;
            if l.starts_with("mod ") || l.starts_with("pub(crate) mod ") || l.starts_with("pub mod ") {
                let d = l.matches('{').count() as i32 - l.matches('}').count() as i32;
                if d > 0 {
                    skip_depth = Some(d);
                }
                continue;
            }
        }
        if l.is_empty() || l.starts_with("//") {
            continue;
        }
        c.code += 1;
        let is_unsafe = (l.contains("unsafe {") || l.contains("unsafe impl")) && !l.starts_with("#");
        if is_unsafe {
            c.unsafe_blocks += 1;
            let mut commented = l.contains("SAFETY:");
            let mut j = i;
            while !commented && j > 0 {
                j -= 1;
                let p = lines[j].trim();
                if !p.starts_with("//") {
                    break;
                }
                commented = p.contains("SAFETY:");
            }
            if commented {
                c.unsafe_commented += 1;
            }
        }
    }
}

fn count_dir(dir: &Path, c: &mut Counts) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            count_dir(&p, c);
        } else if p.extension().is_some_and(|e| e == "rs") {
            if let Ok(t) = std::fs::read_to_string(&p) {
                c.files += 1;
                count_file(&t, c);
            }
        }
    }
}

/// Section sizes of an ELF64 image: (text, rodata, data, bss) in bytes.
fn sections(elf: &Path) -> Result<(u64, u64, u64, u64), String> {
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| format!("{}: {e}", elf.display()))?;
    let endian = file.endian();
    let (mut text, mut rodata, mut data, mut bss) = (0, 0, 0, 0);
    for sh in file.elf_section_table().iter() {
        let (flags, size) = (sh.sh_flags(endian), sh.sh_size(endian));
        if !flags.contains(SHF_ALLOC) {
            continue;
        }
        match (sh.sh_type(endian) == SHT_NOBITS, flags.contains(SHF_EXECINSTR), flags.contains(SHF_WRITE)) {
            (true, _, _) => bss += size,
            (false, true, _) => text += size,
            (false, false, false) => rodata += size,
            (false, false, true) => data += size,
        }
    }
    Ok((text, rodata, data, bss))
}

/// Prints the report.
pub fn run(images: &Images) -> Result<(), String> {
    let root = root();
    let mut el2 = Counts::default();
    count_dir(&root.join("el2/src"), &mut el2);
    let mut boot = Counts::default();
    count_dir(&root.join("boot/src"), &mut boot);
    let total = el2.code + boot.code;
    let unsafe_total = el2.unsafe_blocks + boot.unsafe_blocks;
    let commented = el2.unsafe_commented + boot.unsafe_commented;
    let (text, rodata, data, bss) = sections(&images.el2)?;
    let tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["tree", "-p", "boot", "--target", crate::build::TARGET, "-e", "normal,no-proc-macro", "--prefix", "none", "--no-dedupe"])
        .output()
        .map_err(|e| format!("cargo tree: {e}"))?;
    let mut crates: Vec<String> = String::from_utf8_lossy(&tree.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, ver) = (w.next()?, w.next()?);
            let local = l.contains('(') && l.contains(root.to_string_lossy().as_ref());
            let note = if local { " (this project)" } else { "" };
            Some(format!("{name} {ver}{note}"))
        })
        .collect();
    crates.sort();
    crates.dedup();

    println!("Trusted computing base (EL2 + boot):\n");
    println!("| what | figure |");
    println!("|---|---:|");
    println!("| lines of code, el2 (no tests, comments, blank lines) | {} |", el2.code);
    println!("| lines of code, boot | {} |", boot.code);
    println!("| lines of code, total: the release EL2 (target < 8,000) | {total} |");
    println!("| lines of code in the test EL2 image only (the invariant checker) | {} |", el2.test_image_only + boot.test_image_only);
    println!("| `unsafe` blocks and impls | {unsafe_total} |");
    println!("| ... with a `// SAFETY:` comment | {commented} |");
    println!("| EL2 image .text | {} KiB |", text / 1024);
    println!("| EL2 image .rodata | {} KiB |", rodata / 1024);
    println!("| EL2 image .data | {} KiB |", data / 1024);
    println!("| EL2 image .bss and stacks (table pool, ownership record, vCPU contexts, stacks) | {} KiB |", bss / 1024);
    println!("\nCrates linked into EL2:");
    for c in &crates {
        println!("- {c}");
    }
    let verdict_loc = if total < 8000 { "met" } else { "over" };
    let verdict_unsafe = if commented == unsafe_total { "met" } else { "NOT met" };
    println!("\nTargets: under 8,000 lines: {verdict_loc}; every unsafe commented: {verdict_unsafe}");
    let json = format!(
        "{{\"el2_loc\": {}, \"boot_loc\": {}, \"total_loc\": {total}, \"test_image_only_loc\": {}, \"unsafe\": {unsafe_total}, \"unsafe_with_safety\": {commented}, \"text\": {text}, \"rodata\": {rodata}, \"data\": {data}, \"bss\": {bss}, \"crates\": [{}]}}\n",
        el2.code,
        boot.code,
        el2.test_image_only + boot.test_image_only,
        crates.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
    );
    let path = root.join("target/tcb.json");
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("xtask: figures written to {}", path.display());
    if commented != unsafe_total {
        return Err(format!("{} unsafe block(s) without a SAFETY comment", unsafe_total - commented));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_the_test_image_is_counted_apart() {
        let mut c = Counts::default();
        count_file("//! The checker.\n#![cfg(any(test, feature = \"test-hooks\"))]\nfn check() {\n    // SAFETY: x\n    unsafe { y() };\n}\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n", &mut c);
        assert_eq!((c.code, c.test_image_only, c.unsafe_blocks, c.unsafe_commented), (0, 3, 1, 1));
    }

    #[test]
    fn a_file_of_test_code_is_not_counted() {
        let mut c = Counts::default();
        count_file("//! The fixture.\n#![cfg(test)]\nfn fixture() {}\n", &mut c);
        assert_eq!(c.code, 0);
    }

    #[test]
    fn counts_code_and_unsafe_but_not_tests_or_comments() {
        let src = "//! doc\nfn a() {\n    // SAFETY: fine\n    unsafe { x() };\n    unsafe { y() };\n}\n\n#[cfg(test)]\nmod tests {\n    fn t() { unsafe { z() } }\n}\nfn b() {}\n";
        let mut c = Counts::default();
        count_file(src, &mut c);
        assert_eq!(c.code, 5, "fn a, two unsafe lines, closing brace, fn b");
        assert_eq!((c.unsafe_blocks, c.unsafe_commented), (2, 1));
    }
}
