//! `cargo xtask tidy`: the structure rules of docs/ARCHITECTURE.md, checked on every run of the
//! tests (after rust-analyzer's `xtask/src/tidy.rs`).
//!
//! 1. **Crate floors**: each crate of `crates/` has a floor ([`FLOORS`]); its dependencies
//!    (normal, build and target-specific; not dev-dependencies, which only tests use) are on
//!    lower floors only.
//! 2. **No file circles** within a crate ([`modules`]).
//! 3. **File length**: at most [`MAX_FILE_LINES`] lines per source file outside lm-kernels,
//!    inline tests included.
//! 4. **Function length**: at most [`MAX_FN_LINES`] lines per function outside lm-kernels.
//! 5. **`SAFETY:`** in the comment block above every `unsafe` (or `# Safety` for an
//!    `unsafe fn`), or on its line.
//! 6. **No `Vec::set_len`** anywhere: it hands out uninitialized elements.
//! 7. **No `unwrap()`, `expect(…)`, `panic!`, `unreachable!`, `todo!` or `unimplemented!`** in
//!    library code (a crate's `src/` outside `main.rs`, `bin/`, `tests.rs` files and test-only
//!    items) unless the
//!    comment block above or the line says `INVARIANT:` and why it holds.
//!
//! What is already over a limit and not yet fixed is listed in [`known`] with its measured size:
//! a listed item may shrink but not grow, an item that shrank must have its size lowered, and
//! one no longer over its limit must leave the list (so the list only gets shorter).

mod known;
mod modules;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use source::{code_only, functions, line_of, test_ranges, word_positions};

/// Crates and their floors: a crate depends only on crates of lower floors.
pub const FLOORS: &[(&str, u32)] = &[
    ("lm-data", 0),
    ("lm-dist", 0),
    ("lm-kernels", 0),
    ("lm-objectives", 1),
    ("lm-optim", 1),
    ("lm-models", 2),
    ("lm-train", 3),
];

/// Longest source file outside lm-kernels.
pub const MAX_FILE_LINES: usize = 800;
/// Longest function outside lm-kernels.
pub const MAX_FN_LINES: usize = 100;

/// The rules, as named in messages and in [`known`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// A dependency on a crate of the same or a higher floor.
    CrateFloor,
    /// Files of one crate naming each other.
    FileCircle,
    /// A file over [`MAX_FILE_LINES`].
    FileLength,
    /// A function over [`MAX_FN_LINES`].
    FunctionLength,
    /// `unsafe` without a `SAFETY:` note.
    Safety,
    /// A panic in library code without an `INVARIANT:` note.
    Panic,
    /// `Vec::set_len`, which exposes uninitialized elements.
    SetLen,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CrateFloor => "crate floor",
            Self::FileCircle => "file circle",
            Self::FileLength => "file length",
            Self::FunctionLength => "function length",
            Self::Safety => "SAFETY note",
            Self::Panic => "panic in library code",
            Self::SetLen => "set_len",
        })
    }
}

/// One broken rule: where and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Which rule.
    pub rule: Rule,
    /// The file, relative to the workspace root.
    pub file: PathBuf,
    /// 1-based line (0 where the whole file is meant).
    pub line: usize,
    /// What is named (function, dependency, …), for [`known`].
    pub item: String,
    /// How much (lines, count), for [`known`]; 0 where there is no measure.
    pub size: usize,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.rule,
            self.what
        )
    }
}

/// Every `.rs` file under `dir` (sorted; `target` and hidden directories skipped).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && name != "target" && !name.starts_with('.') {
            out.extend(rust_files(&p));
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The crates under `root/crates`, by directory name.
fn crates(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("crates"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The workspace's own crates a manifest depends on outside `[dev-dependencies]`:
/// (name, line).
fn own_dependencies(manifest: &str) -> Vec<(String, usize)> {
    let mut section = String::new();
    let mut out = vec![];
    for (i, line) in manifest.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
            continue;
        }
        let counts = section.ends_with("dependencies]") && !section.ends_with("dev-dependencies]");
        let name: String = t
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if counts && name.starts_with("lm-") {
            out.push((name, i + 1));
        }
    }
    out
}

fn crate_floors(root: &Path, out: &mut Vec<Violation>) {
    let floor = |n: &str| FLOORS.iter().find(|(c, _)| *c == n).map(|(_, f)| *f);
    for (name, dir) in crates(root) {
        let file = dir.join("Cargo.toml");
        let rel = rel(root, &file);
        let Some(mine) = floor(&name) else {
            out.push(violation(
                Rule::CrateFloor,
                rel,
                0,
                &name,
                0,
                format!("crate {name} has no floor in xtask's FLOORS"),
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (dep, line) in own_dependencies(&text) {
            match floor(&dep) {
                Some(f) if f < mine => {}
                Some(f) => out.push(violation(
                    Rule::CrateFloor,
                    rel.clone(),
                    line,
                    &format!("{name} -> {dep}"),
                    0,
                    format!(
                        "{name} (floor {mine}) depends on {dep} (floor {f}): only lower floors"
                    ),
                )),
                None => out.push(violation(
                    Rule::CrateFloor,
                    rel.clone(),
                    line,
                    &dep,
                    0,
                    format!("{dep} has no floor"),
                )),
            }
        }
    }
}

fn violation(
    rule: Rule,
    file: PathBuf,
    line: usize,
    item: &str,
    size: usize,
    what: String,
) -> Violation {
    Violation {
        rule,
        file,
        line,
        item: item.to_string(),
        size,
        what,
    }
}

fn rel(root: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(root).unwrap_or(p).to_path_buf()
}

fn file_circles(root: &Path, out: &mut Vec<Violation>) {
    let mut srcs: Vec<PathBuf> = crates(root)
        .into_iter()
        .map(|(_, d)| d.join("src"))
        .collect();
    srcs.extend(["xtask/src", "bench/src"].map(|d| root.join(d)));
    for src in srcs {
        let edges = modules::edges(&src, &rust_files(&src));
        for circle in modules::circles(&edges) {
            let names: Vec<String> = circle
                .iter()
                .map(|f| rel(root, f).display().to_string())
                .collect();
            out.push(violation(
                Rule::FileCircle,
                rel(root, &circle[0]),
                0,
                &names.join(" <-> "),
                0,
                format!("files name each other: {}", names.join(", ")),
            ));
        }
    }
}

/// The source files the length and SAFETY rules read: the crates, xtask, bench and tests.
fn sources(root: &Path) -> Vec<PathBuf> {
    ["crates", "xtask", "bench", "tests"]
        .iter()
        .flat_map(|d| rust_files(&root.join(d)))
        .collect()
}

fn lengths(root: &Path, file: &Path, text: &str, code: &str, out: &mut Vec<Violation>) {
    if file.starts_with(root.join("crates/lm-kernels")) {
        return;
    }
    let rel = rel(root, file);
    let lines = text.lines().count();
    if lines > MAX_FILE_LINES {
        let what = format!("{lines} lines (at most {MAX_FILE_LINES}; split it by job)");
        out.push(violation(Rule::FileLength, rel.clone(), 0, "", lines, what));
    }
    for f in functions(code) {
        let n = f.last - f.first + 1;
        if n > MAX_FN_LINES {
            let what = format!("fn {} is {n} lines (at most {MAX_FN_LINES})", f.name);
            out.push(violation(
                Rule::FunctionLength,
                rel.clone(),
                f.first,
                &f.name,
                n,
                what,
            ));
        }
    }
}

/// The comment and attribute lines right above line `line` (1-based), and the line itself.
fn note_above(lines: &[&str], line: usize) -> String {
    let mut note = lines.get(line - 1).copied().unwrap_or("").to_string();
    let mut i = line - 1;
    while i > 0 {
        let t = lines[i - 1].trim_start();
        if !(t.starts_with("//") || t.starts_with("#[") || t.starts_with("#![")) {
            break;
        }
        note.push_str(t);
        i -= 1;
    }
    note
}

fn safety(root: &Path, file: &Path, text: &str, code: &str, out: &mut Vec<Violation>) {
    let lines: Vec<&str> = text.lines().collect();
    for (at, _) in code.match_indices(".set_len(") {
        let what = "`Vec::set_len` exposes uninitialized elements: build the vector by writing \
                    (`vec![0.0; n]`, `extend`, `resize`)"
            .into();
        out.push(violation(
            Rule::SetLen,
            rel(root, file),
            line_of(code, at),
            "set_len",
            0,
            what,
        ));
    }
    for at in word_positions(code, "unsafe") {
        let line = line_of(code, at);
        let note = note_above(&lines, line);
        if !(note.contains("SAFETY:") || note.contains("# Safety")) {
            let what =
                "`unsafe` without a `// SAFETY:` note above it (or `# Safety` for an unsafe fn)"
                    .into();
            out.push(violation(
                Rule::Safety,
                rel(root, file),
                line,
                "unsafe",
                0,
                what,
            ));
        }
    }
}

/// Whether `file` is test code by its name: a `tests.rs` (a `#[cfg(test)] mod tests;` moved out
/// of its parent) or anything under a `tests/` directory.
pub fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "tests.rs") || file.iter().any(|c| c == "tests")
}

/// Whether `file` is library code: under a crate's `src/`, not a binary root, `bin/` or a test
/// file ([`is_test_file`]).
fn is_library(root: &Path, file: &Path) -> bool {
    if is_test_file(file.strip_prefix(root).unwrap_or(file)) {
        return false;
    }
    let Ok(r) = file.strip_prefix(root.join("crates")) else {
        return false;
    };
    let parts: Vec<String> = r.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    parts.get(1).is_some_and(|s| s == "src")
        && !(parts.len() == 3 && parts[2] == "main.rs")
        && !parts.iter().any(|s| s == "bin")
}

const PANICS: &[&str] = &[
    ".unwrap()",
    ".expect(",
    "panic!(",
    "unreachable!(",
    "todo!(",
    "unimplemented!(",
];

fn panics(root: &Path, file: &Path, text: &str, code: &str, out: &mut Vec<Violation>) {
    if !is_library(root, file) {
        return;
    }
    let tests = test_ranges(code);
    let lines: Vec<&str> = text.lines().collect();
    for p in PANICS {
        for (at, _) in code.match_indices(p) {
            let word_start = at + usize::from(p.starts_with('.'));
            if code
                .as_bytes()
                .get(word_start.wrapping_sub(1))
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                || tests.iter().any(|r| r.contains(&at))
            {
                continue;
            }
            let line = line_of(code, at);
            if !note_above(&lines, line).contains("INVARIANT:") {
                let what = format!("`{p}…` in library code: return a typed error, or say `// INVARIANT:` why it cannot fail");
                out.push(violation(Rule::Panic, rel(root, file), line, p, 0, what));
            }
        }
    }
}

/// Every violation under `root`, known ones included, sorted.
pub fn check(root: &Path) -> Vec<Violation> {
    let mut out = vec![];
    crate_floors(root, &mut out);
    file_circles(root, &mut out);
    for file in sources(root) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let code = code_only(&text);
        lengths(root, &file, &text, &code, &mut out);
        safety(root, &file, &text, &code, &mut out);
        panics(root, &file, &text, &code, &mut out);
    }
    out.sort();
    out
}

/// `cargo xtask tidy`: fails on any violation that is not a known one within its measured
/// size, and on any known one that is gone (so that the list shrinks with the work).
pub fn tidy(root: &Path) -> Result<()> {
    let found = check(root);
    let verdict = known::judge(&found);
    for v in &verdict.new {
        eprintln!("{v}");
    }
    for k in &verdict.stale {
        eprintln!("xtask/src/tidy/known.rs: {k}");
    }
    println!(
        "tidy: {} violation(s), {} known and not grown (xtask/src/tidy/known.rs), {} stale",
        verdict.new.len(),
        verdict.known,
        verdict.stale.len()
    );
    if !verdict.new.is_empty() || !verdict.stale.is_empty() {
        bail!("tidy failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
