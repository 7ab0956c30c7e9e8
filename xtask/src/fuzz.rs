//! `cargo xtask fuzz [--seconds N] [TARGET..]`: every libFuzzer target of `fuzz/` (or the named
//! ones) for a fixed time each, from the seeds `tests/fuzzing.rs` gives and the corpus earlier
//! runs kept (`fuzz/corpus/`, not committed); a table of executions per second and findings.
//! Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly && cargo install
//! cargo-fuzz`); never part of `test`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// libFuzzer's limits: one allocation over 64 MiB is a finding (the proptest twin,
/// `tests/fuzz_parsers.rs`, uses the same bound), and inputs up to 64 KiB.
const LIMITS: [&str; 3] = [
    "-malloc_limit_mb=64",
    "-max_len=65536",
    "-print_final_stats=1",
];

/// One target's outcome.
struct Outcome {
    target: String,
    runs: u64,
    finding: Option<String>,
}

/// The targets: the files of `fuzz/fuzz_targets/`.
fn targets(fuzz: &Path) -> Result<Vec<String>> {
    let dir = fuzz.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(String::from)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo +nightly ARGS` in `dir`, outside the pinned toolchain of the workspace.
fn nightly_cargo(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg("+nightly");
    c
}

/// Runs `target` for `seconds`, its output kept in `log`.
fn run_one(fuzz: &Path, seeds: &Path, target: &str, seconds: u64, log: &Path) -> Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let out = nightly_cargo(fuzz)
        .args(["fuzz", "run", target])
        .arg(&corpus)
        .arg(seeds.join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(LIMITS)
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::write(log, &text)?;
    let stat = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
    };
    let finding = (!out.status.success()).then(|| {
        text.lines()
            .find(|l| l.contains("Test unit written to"))
            .map_or_else(|| format!("exit {}", out.status), |l| l.trim().to_string())
    });
    Ok(Outcome {
        target: target.into(),
        runs: stat("stat::number_of_executed_units").unwrap_or(0),
        finding,
    })
}

/// The command: `args` are `--seconds N` and target names.
pub fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut wanted = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                seconds = v.parse().with_context(|| format!("--seconds {v:?}"))?;
            }
            name => wanted.push(name.to_string()),
        }
    }
    let fuzz = root.join("fuzz");
    let all = targets(&fuzz)?;
    if let Some(unknown) = wanted.iter().find(|w| !all.contains(w)) {
        bail!(
            "no fuzz target {unknown:?}; the targets are {}",
            all.join(", ")
        );
    }
    let chosen = if wanted.is_empty() { all } else { wanted };
    let version = nightly_cargo(&fuzz).args(["fuzz", "--version"]).output();
    if !version.is_ok_and(|o| o.status.success()) {
        bail!("cargo fuzz needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly && cargo install cargo-fuzz`");
    }
    let seeds = root.join("target/fuzz-seeds");
    crate::cargo(&[
        "run",
        "--quiet",
        "-p",
        "lm-integration-tests",
        "--example",
        "fuzz_seeds",
        "--",
        &seeds.to_string_lossy(),
    ])?;
    let status = nightly_cargo(&fuzz).args(["fuzz", "build"]).status()?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let logs = root.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    let mut outcomes = vec![];
    for t in &chosen {
        eprintln!("fuzzing {t} for {seconds} s …");
        outcomes.push(run_one(
            &fuzz,
            &seeds,
            t,
            seconds,
            &logs.join(format!("{t}.log")),
        )?);
    }
    println!("| target | seconds | executions | per second | finding |");
    println!("| --- | --- | --- | --- | --- |");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} | {} |",
            o.target,
            seconds,
            o.runs,
            o.runs / seconds.max(1),
            o.finding.as_deref().unwrap_or("none")
        );
    }
    let found: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.finding.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !found.is_empty() {
        bail!(
            "findings in {} (logs in {})",
            found.join(", "),
            logs.display()
        );
    }
    Ok(())
}
