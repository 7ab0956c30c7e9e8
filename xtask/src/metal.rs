//! `cargo xtask metal-check`: type-checks the whole workspace, every target (tests, examples,
//! benches), for Apple silicon with `--features metal` — on any machine, since only the Rust
//! standard library of `aarch64-apple-darwin` is needed (installed with rustup if missing). No
//! C library is built for that target: onig gives way to fancy-regex, the zstd C library to
//! ruzstd, mimalloc to the system allocator (the Cargo.toml files' Apple sections). Part of
//! `test`; a machine that cannot install the target says so and skips. Nothing here runs Metal
//! code: that needs a Mac (`cargo test --features metal` there).

use std::process::Command;

use anyhow::Result;

/// The Apple silicon target.
const TARGET: &str = "aarch64-apple-darwin";

/// Each crate's `metal` feature.
const FEATURES: &str = "lm-kernels/metal,lm-objectives/metal,lm-optim/metal,lm-models/metal,lm-train/metal,lm-integration-tests/metal";

/// Whether rustup has the target's standard library for the pinned toolchain.
fn installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
}

/// The check (see the module).
pub fn metal_check() -> Result<()> {
    if !installed() {
        eprintln!(
            "metal-check: installing the {TARGET} standard library (rustup target add {TARGET})"
        );
        // Bounded: a machine whose network does not reach rustup's server skips, not hangs.
        let added = Command::new("timeout")
            .args(["300", "rustup", "target", "add", TARGET])
            .status()
            .or_else(|_| {
                Command::new("rustup")
                    .args(["target", "add", TARGET])
                    .status()
            });
        if !added.is_ok_and(|s| s.success()) {
            println!("metal-check: skipped: the {TARGET} standard library could not be installed here (rustup target add {TARGET} failed); nothing was type-checked for Apple silicon");
            return Ok(());
        }
    }
    // Warnings are errors for the target's code as in `cargo xtask ci` (registry crates' lints
    // are capped by cargo; the vendored candle-core's are ours to keep clean).
    crate::cargo_with(
        &[
            "check",
            "--workspace",
            "--all-targets",
            "--target",
            TARGET,
            "--features",
            FEATURES,
        ],
        &[("RUSTFLAGS".into(), "-D warnings".into())],
    )?;
    println!("metal-check: the workspace type-checks for {TARGET} with --features metal (never run: no Mac)");
    Ok(())
}
