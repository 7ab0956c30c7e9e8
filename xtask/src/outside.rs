//! `cargo xtask outside`: builds and runs a project outside this workspace that depends on
//! lm-optim and lm-objectives by path (`xtask/outside/main.rs`), as the README tells a user to:
//! candle pinned to `=0.11.0`, the workspace's patched candle-core named in the project's own
//! `[patch.crates-io]` (a workspace's patches do not reach its dependents), and
//! `opt-level = 3` for dependencies. Offline, from the workspace's `Cargo.lock` and the crates
//! it already fetched.

use std::path::Path;

use anyhow::{Context, Result};

/// The project's manifest, its paths pointing into the workspace at `root`.
fn manifest(root: &Path) -> String {
    let root = root.display();
    format!(
        r#"[package]
name = "outside"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
anyhow = "1"
candle-core = "=0.11.0"
candle-nn = "=0.11.0"
lm-optim = {{ path = "{root}/crates/lm-optim" }}
lm-objectives = {{ path = "{root}/crates/lm-objectives" }}

[patch.crates-io]
candle-core = {{ path = "{root}/vendor/candle-core" }}

[profile.dev.package."*"]
opt-level = 3
"#
    )
}

/// Writes the project under `target/outside/`, then `cargo run --offline` in it.
pub fn outside(root: &Path) -> Result<()> {
    let dir = root.join("target/outside");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), manifest(root))?;
    std::fs::copy(root.join("xtask/outside/main.rs"), dir.join("src/main.rs"))?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    let manifest_path = dir.join("Cargo.toml");
    crate::cargo(&[
        "run",
        "--quiet",
        "--offline",
        "--manifest-path",
        manifest_path.to_str().context("a UTF-8 path")?,
    ])
}
