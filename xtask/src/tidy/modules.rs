//! The file graph of one crate: which source file names an item of which other file
//! (`use crate::a::b`, `super::x`, inline `crate::a::f()`), and its circles.
//!
//! A module that names its own descendants is not an edge (a parent contains its children, as
//! `mod` declares them); a child naming its parent (`super::Mat`) is. So a circle is always
//! between files that neither contains the other, which is what docs/ARCHITECTURE.md forbids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::source::{code_only, test_ranges, word_positions};

/// A module path, `[]` for the crate root.
type ModPath = Vec<String>;

/// The module path of `file` relative to the crate's `src`: `lib.rs` → `[]`, `a/mod.rs` and
/// `a.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths a file names: every `use` tree expanded, then every inline `crate::`, `super::`
/// or `self::` path outside them, as segment lists.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut masked = code.to_string().into_bytes();
    for at in word_positions(code, "use") {
        let Some(len) = code[at..].find(';') else {
            continue;
        };
        let tree = &code[at + 3..at + len];
        expand_use(&strip_renames(tree), &mut Vec::new(), &mut out);
        masked[at..at + len].fill(b' ');
    }
    let masked = String::from_utf8_lossy(&masked).into_owned();
    for start in ["crate", "super", "self"] {
        for at in word_positions(&masked, start) {
            if masked[..at].ends_with("::") || !masked[at..].starts_with(&format!("{start}::")) {
                continue;
            }
            let path: String = masked[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
    }
    out
}

/// `a::b as c` → `a::b`, whitespace removed.
fn strip_renames(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = String::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" {
            // Skip the alias, but keep any `,` or `}` glued to it.
            let alias = words.get(i + 1).copied().unwrap_or("");
            kept.push_str(alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            i += 2;
        } else {
            kept.push_str(words[i]);
            i += 1;
        }
    }
    kept
}

/// Expands a use tree (`a::{b, c::{d, self}}`) into its paths.
fn expand_use(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim().trim_start_matches("::");
    let Some(brace) = tree.find('{') else {
        let mut p = prefix.clone();
        p.extend(
            tree.split("::")
                .filter(|s| !s.is_empty() && *s != "*")
                .map(String::from),
        );
        if p.last().is_some_and(|s| s == "self") {
            p.pop();
        }
        out.push(p);
        return;
    };
    let head: Vec<String> = tree[..brace]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
    let depth0 = prefix.len();
    prefix.extend(head);
    for part in split_top_level(inner) {
        expand_use(part, prefix, out);
    }
    prefix.truncate(depth0);
}

/// `inner` split at the commas outside braces.
fn split_top_level(inner: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (vec![], 0i32, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Where `path`, named in module `here`, starts: `crate::` from the root, `super::` from the
/// parent, `self::` from `here`; other paths (external crates, children by bare name) are not
/// followed.
fn absolute(here: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut segs = path.iter();
    let mut base = match segs.next()?.as_str() {
        "crate" => vec![],
        "self" => here.clone(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    let mut rest: Vec<&String> = segs.collect();
    while rest.first().is_some_and(|s| *s == "super") {
        base.pop();
        rest.remove(0);
    }
    base.extend(rest.into_iter().cloned());
    Some(base)
}

/// The crate's files (`.rs` under `src`, the binary root `main.rs` left out where a `lib.rs`
/// exists: it is another crate) and their edges, as (from, to) file pairs.
pub fn edges(src: &Path, files: &[PathBuf]) -> BTreeSet<(PathBuf, PathBuf)> {
    let has_lib = files.iter().any(|f| f == &src.join("lib.rs"));
    let files: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !(has_lib && (*f == &src.join("main.rs") || f.starts_with(src.join("bin")))))
        .filter(|f| !super::is_test_file(f.strip_prefix(src).unwrap_or(f)))
        .collect();
    let modules: BTreeMap<ModPath, &PathBuf> =
        files.iter().map(|f| (module_of(src, f), *f)).collect();
    let mut out = BTreeSet::new();
    for file in &files {
        let here = module_of(src, file);
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // Test-only code may name anything: it is not part of the module's graph.
        let mut code = code_only(&text).into_bytes();
        for r in test_ranges(&String::from_utf8_lossy(&code)) {
            code[r].fill(b' ');
        }
        for path in named_paths(&String::from_utf8_lossy(&code)) {
            let Some(mut target) = absolute(&here, &path) else {
                continue;
            };
            // The longest prefix that is a module of this crate.
            while !target.is_empty() && !modules.contains_key(&target) {
                target.pop();
            }
            if target.starts_with(&here) {
                continue; // itself or a descendant
            }
            if let Some(to) = modules.get(&target) {
                out.insert(((*file).clone(), (*to).clone()));
            }
        }
    }
    out
}

/// The circles of a graph: its strongly connected components of more than one file.
pub fn circles(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<Vec<PathBuf>> {
    let mut next: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &PathBuf| -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(f) = stack.pop() {
            for &t in next.get(f).map(Vec::as_slice).unwrap_or(&[]) {
                if seen.insert(t.clone()) {
                    stack.push(t);
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<&PathBuf> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach: BTreeMap<&PathBuf, BTreeSet<PathBuf>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<Vec<PathBuf>> = vec![];
    for n in &nodes {
        let circle: Vec<PathBuf> = nodes
            .iter()
            .filter(|m| reach[*n].contains(**m) && reach[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(code: &str) -> Vec<String> {
        named_paths(code)
            .into_iter()
            .map(|p| p.join("::"))
            .collect()
    }

    #[test]
    fn use_trees_and_inline_paths_are_expanded() {
        let got = paths(
            "use crate::a::{b, c::{d as e, self}, *};\nuse std::fmt;\nfn f() { super::g::h(); crate::x::Y::new(); }",
        );
        assert_eq!(
            got,
            [
                "crate::a::b",
                "crate::a::c::d",
                "crate::a::c",
                "crate::a",
                "std::fmt",
                "crate::x::Y::new",
                "super::g::h"
            ]
        );
    }

    #[test]
    fn paths_start_where_they_say() {
        let here = vec!["gemm".to_string(), "amx".to_string()];
        let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
        assert_eq!(absolute(&here, &p("super::Mat")), Some(p("gemm::Mat")));
        assert_eq!(
            absolute(&here, &p("super::super::isa::x")),
            Some(p("isa::x"))
        );
        assert_eq!(
            absolute(&here, &p("crate::precision::P")),
            Some(p("precision::P"))
        );
        assert_eq!(absolute(&here, &p("candle_core::Tensor")), None);
    }
}
