//! Each rule fails on a planted violation in a small workspace and passes on its clean form.

use std::path::{Path, PathBuf};

use super::known::{judge_against, Known};
use super::{check, Rule};

/// A fresh directory for one test's workspace.
fn workspace(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("lm-tidy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn rules(root: &Path) -> Vec<(Rule, String, usize)> {
    check(root)
        .into_iter()
        .map(|v| (v.rule, v.file.display().to_string(), v.line))
        .collect()
}

/// Two crates, lm-objectives over lm-kernels, with a two-file library each.
fn clean(name: &str) -> PathBuf {
    let root = workspace(name);
    write(
        &root,
        "crates/lm-kernels/Cargo.toml",
        "[package]\nname = \"lm-kernels\"\n\n[dependencies]\ncandle-core.workspace = true\n",
    );
    write(
        &root,
        "crates/lm-kernels/src/lib.rs",
        "pub mod a;\npub mod b;\n",
    );
    write(
        &root,
        "crates/lm-kernels/src/a.rs",
        "use crate::b::B;\npub fn a() -> B { B }\n",
    );
    write(
        &root,
        "crates/lm-kernels/src/b.rs",
        "pub struct B;\n// SAFETY: nothing is read.\nunsafe impl Send for B {}\n",
    );
    write(
        &root,
        "crates/lm-objectives/Cargo.toml",
        "[package]\nname = \"lm-objectives\"\n\n[dependencies]\nlm-kernels.workspace = true\n\n[dev-dependencies]\nlm-models.workspace = true\n",
    );
    write(
        &root,
        "crates/lm-objectives/src/lib.rs",
        "/// Doc.\npub fn f(x: Option<u8>) -> u8 {\n    // INVARIANT: callers pass Some.\n    x.unwrap()\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() { Some(1).unwrap(); panic!(\"in a test\"); }\n}\n",
    );
    write(
        &root,
        "crates/lm-objectives/src/main.rs",
        "fn main() { std::env::args().next().unwrap(); }\n",
    );
    root
}

#[test]
fn a_clean_workspace_passes() {
    let root = clean("clean");
    assert_eq!(rules(&root), vec![]);
}

#[test]
fn an_upward_or_sideways_dependency_fails() {
    let root = clean("floor");
    write(&root, "crates/lm-kernels/Cargo.toml", "[package]\nname = \"lm-kernels\"\n\n[target.'cfg(unix)'.dependencies]\nlm-objectives = { workspace = true }\n");
    assert_eq!(
        rules(&root),
        vec![(Rule::CrateFloor, "crates/lm-kernels/Cargo.toml".into(), 5)]
    );
    write(
        &root,
        "crates/lm-kernels/Cargo.toml",
        "[package]\nname = \"lm-kernels\"\n\n[dependencies]\nlm-dist.workspace = true\n",
    );
    assert_eq!(
        rules(&root),
        vec![(Rule::CrateFloor, "crates/lm-kernels/Cargo.toml".into(), 5)]
    );
}

#[test]
fn a_file_circle_fails_but_a_child_naming_its_parent_does_not() {
    let root = clean("circle");
    write(
        &root,
        "crates/lm-kernels/src/b.rs",
        "pub struct B;\npub fn g() { crate::a::a(); }\n",
    );
    let found = check(&root);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, Rule::FileCircle);
    assert!(found[0].what.contains("a.rs") && found[0].what.contains("b.rs"));

    let root = clean("nested");
    write(
        &root,
        "crates/lm-kernels/src/lib.rs",
        "pub mod a;\npub mod b;\npub mod g;\n",
    );
    write(
        &root,
        "crates/lm-kernels/src/g/mod.rs",
        "mod x;\npub struct M;\npub fn f() { x::y(); }\n",
    );
    write(
        &root,
        "crates/lm-kernels/src/g/x.rs",
        "use super::M;\npub fn y() -> Option<M> { None }\n",
    );
    // A test module naming a file that names this one back is not a circle either.
    write(
        &root,
        "crates/lm-kernels/src/b.rs",
        "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::a;\n}\n",
    );
    assert_eq!(rules(&root), vec![]);
}

#[test]
fn long_files_and_functions_fail_outside_the_kernels() {
    let root = clean("length");
    let body = "    let _ = 1;\n".repeat(99);
    write(
        &root,
        "crates/lm-objectives/src/long.rs",
        &format!(
            "fn ok() {{\n{}}}\nfn long() {{\n{body}    let _ = 2;\n}}\n",
            "    let _ = 0;\n".repeat(98)
        ),
    );
    assert_eq!(
        rules(&root),
        vec![(
            Rule::FunctionLength,
            "crates/lm-objectives/src/long.rs".into(),
            101
        )]
    );
    let root = clean("file");
    write(&root, "tests/big.rs", &"// a line\n".repeat(801));
    write(
        &root,
        "crates/lm-kernels/src/big.rs",
        &"// a line\n".repeat(2000),
    );
    assert_eq!(
        rules(&root),
        vec![(Rule::FileLength, "tests/big.rs".into(), 0)]
    );
}

#[test]
fn unsafe_without_a_safety_note_fails() {
    let root = clean("safety");
    write(&root, "crates/lm-kernels/src/b.rs", "pub struct B;\n// Send is fine.\nunsafe impl Send for B {}\n/// Doc.\n/// # Safety\n/// AVX2 must be present.\n#[inline]\npub unsafe fn f() {}\n");
    assert_eq!(
        rules(&root),
        vec![(Rule::Safety, "crates/lm-kernels/src/b.rs".into(), 3)]
    );
}

#[test]
fn set_len_fails_anywhere() {
    let root = clean("set-len");
    write(&root, "crates/lm-kernels/src/b.rs", "pub struct B;\npub fn f(v: &mut Vec<f32>) {\n    // SAFETY: none.\n    unsafe { v.set_len(4) }\n}\n");
    assert_eq!(
        rules(&root),
        vec![(Rule::SetLen, "crates/lm-kernels/src/b.rs".into(), 4)]
    );
}

#[test]
fn panics_in_library_code_fail_unless_an_invariant_says_why() {
    let root = clean("panic");
    write(
        &root,
        "crates/lm-objectives/src/lib.rs",
        "pub fn f(x: Option<u8>) -> u8 {\n    let s = \"x.unwrap()\"; // no: .expect(\n    x.expect(\"always\")\n}\npub fn g() { unreachable!() }\npub fn h(x: Option<u8>) -> u8 { x.unwrap_or(0) }\n",
    );
    let want = vec![
        (
            Rule::Panic,
            "crates/lm-objectives/src/lib.rs".to_string(),
            3,
        ),
        (
            Rule::Panic,
            "crates/lm-objectives/src/lib.rs".to_string(),
            5,
        ),
    ];
    assert_eq!(rules(&root), want);
}

#[test]
fn known_entries_may_shrink_but_not_grow_and_must_leave_when_fixed() {
    let root = clean("known");
    write(&root, "tests/big.rs", &"// a line\n".repeat(900));
    let found = check(&root);
    let list = |size| {
        [Known {
            rule: Rule::FileLength,
            file: "tests/big.rs",
            item: "",
            size,
        }]
    };
    let v = judge_against(&found, &list(900));
    assert!(v.new.is_empty() && v.stale.is_empty() && v.known == 1);
    let v = judge_against(&found, &list(850));
    assert_eq!(v.new.len(), 1, "grown past the listed size");
    let v = judge_against(&found, &list(950));
    assert_eq!(v.stale.len(), 1, "smaller than listed: lower the entry");
    let v = judge_against(&[], &list(900));
    assert_eq!(v.stale.len(), 1, "fixed: remove the entry");
}
