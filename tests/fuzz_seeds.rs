//! Writes each fuzz target's seed inputs into `DIR/<target>/seed-<i>` (libFuzzer's starting
//! corpus); `cargo xtask fuzz` runs it first.
//!
//! `cargo run -p lm-integration-tests --example fuzz_seeds -- DIR`

use lm_integration_tests::fuzzing::{seeds, TARGETS};

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args().nth(1) else {
        anyhow::bail!("usage: fuzz_seeds DIR");
    };
    for (name, _) in TARGETS {
        let target = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&target)?;
        for (i, seed) in seeds(name).iter().enumerate() {
            std::fs::write(target.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
