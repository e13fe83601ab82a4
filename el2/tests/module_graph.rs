//! The modules of `el2` import one another without a cycle, so each can be read (and changed)
//! knowing only the modules below it.
//!
//! A module is a source file. An edge `a → b` is a path in `a`'s non-test code (comments and
//! `#[cfg(test)]` items aside) that names an item of `b`: `crate::b::…`, or `super::…` resolved
//! from `a`. A `mod.rs` declaring its children is not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, by module path (`["guest", "vm"]` for `guest/vm.rs`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            out.insert(p, path);
        }
    }
}

/// The non-test, non-comment code of a file.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let l = line.trim();
        if l == "#![cfg(test)]" {
            return String::new();
        }
        if let Some(d) = skip_depth.as_mut() {
            *d += l.matches('{').count() as i32 - l.matches('}').count() as i32;
            if *d <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if l.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test {
            pending_cfg_test = false;
            let d = l.matches('{').count() as i32 - l.matches('}').count() as i32;
            if d > 0 {
                skip_depth = Some(d);
            }
            continue;
        }
        if l.starts_with("//") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The module paths `code` (in module `me`, a `mod.rs` if `is_mod`) refers to.
fn references(code: &str, me: &[String], is_mod: bool) -> Vec<Vec<String>> {
    let mut refs = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let at_word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        let (base, skip): (Vec<String>, usize) = if at_word_start && rest.starts_with("crate::") {
            (Vec::new(), "crate::".len())
        } else if at_word_start && rest.starts_with("super::") {
            // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module a::b) it is `a` too.
            let mut parent = me.to_vec();
            if !is_mod || !parent.is_empty() {
                parent.pop();
            }
            let mut n = "super::".len();
            while code[i + n..].starts_with("super::") {
                parent.pop();
                n += "super::".len();
            }
            (parent, n)
        } else {
            i += 1;
            continue;
        };
        let tail: String = code[i + skip..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let mut path = base;
        for seg in tail.split("::") {
            if seg.is_empty() {
                break;
            }
            path.push(seg.to_string());
        }
        refs.push(path);
        i += skip;
    }
    refs
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&src, &[], &mut files);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let is_mod = path.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let text = std::fs::read_to_string(path).unwrap();
        let out = edges.entry(module.clone()).or_default();
        for r in references(&code(&text), module, is_mod) {
            // The longest prefix of the path that is a module file is what it names.
            if let Some(target) = (0..=r.len()).rev().map(|n| r[..n].to_vec()).find(|p| files.contains_key(p)) {
                let ancestor = module.starts_with(&target) && target.len() < module.len();
                if &target != module && !ancestor {
                    out.insert(target);
                }
            }
        }
    }
    edges
}

/// A cycle through the graph, if any, as the list of modules on it.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle: Vec<String> = stack[from..].iter().map(|p| p.join("::")).collect();
                    cycle.push(m.join("::"));
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn el2_modules_import_each_other_without_a_cycle() {
    let edges = graph();
    assert!(edges.len() > 30, "the source tree was not found ({} modules)", edges.len());
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between el2 modules: {}", cycle.join(" → "));
    }
}

#[test]
fn the_checker_sees_references_and_finds_cycles() {
    let me = vec!["guest".to_string(), "exit".to_string()];
    let refs = references("use crate::mem::protect::{GuestPage, HostFault};\nlet x = super::vm::Vm;\n", &me, false);
    assert_eq!(refs, vec![vec!["mem", "protect"], vec!["guest", "vm", "Vm"]]);
    assert!(code("// crate::a\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\nuse crate::c;\n").contains("crate::c"));
    assert!(!code("#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n").contains("crate::b"));
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
