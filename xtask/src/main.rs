//! Project chores, run as `cargo xtask <command>`:
//!
//! - `ci`: `cargo fmt --check`, `cargo clippy -D warnings` (also over the CUDA code), then the tests.
//! - `test`: the whole test suite (what `.ci/run` runs), after `tidy` and its own tests.
//! - `tidy`: the structure rules (crate floors, file circles, lengths, SAFETY notes, panics).
//! - `demo`: the main job, the gpt-shakespeare-char recipe on the bundled corpus.
//! - `recipe NAME [ARGS..]`: any bundled recipe, extra arguments passed to `lm-train train`.
//! - `bench [SUITE]`: the benchmarks.
//! - `outside`: a project outside the workspace that depends on lm-optim and lm-objectives by
//!   path, built and run (part of `test`); `examples`: every crate's example, run (part of `test`).
//! - `fuzz [--seconds N] [TARGET..]`: the libFuzzer targets of `fuzz/`, 60 s each (nightly and
//!   cargo-fuzz needed; not part of `test`).
//! - `metal-check`: the workspace type-checked for Apple silicon with `--features metal`, on
//!   any machine (part of `test`).
//! - `cuda-build`: the `--features cuda` (and `nccl`) build with a pinned CUDA toolkit, on any
//!   machine (part of `test`); `gpu-check`: the prepared check for a machine with a GPU.

use std::process::Command;

use anyhow::{bail, Context, Result};

mod cuda;
mod fuzz;
mod metal;
mod outside;
mod tidy;

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

/// `cargo ARGS` with extra environment variables.
fn cargo_with(args: &[&str], env: &[(String, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The workspace root (xtask's parent directory).
fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Whether a program is on the PATH.
fn found(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The test suite, the data-parallel tests over MPI where `mpirun` is installed, then the CUDA
/// build (with the CUDA-only tests, which skip without a GPU).
fn test() -> Result<()> {
    tidy::tidy(&workspace_root())?;
    cargo(&["test", "-p", "xtask", "--quiet"])?;
    cpu_tests()?;
    examples()?;
    outside::outside(&workspace_root())?;
    cuda::build()?;
    metal::metal_check()
}

/// Each crate's example a user can copy (the README's crate table links them), built as the
/// tests build them and run with their defaults.
const EXAMPLES: [(&str, &str); 7] = [
    ("lm-data", "bytes"),
    ("lm-kernels", "fused_block"),
    ("lm-dist", "data_parallel"),
    ("lm-optim", "candle_nn_mlp"),
    ("lm-objectives", "noise"),
    ("lm-models", "generate"),
    ("lm-train", "trainer"),
];

fn examples() -> Result<()> {
    cargo(&[
        "build",
        "--workspace",
        "--exclude",
        "xtask",
        "--examples",
        "--quiet",
    ])?;
    for (krate, name) in EXAMPLES {
        eprintln!("example {krate}/{name}");
        let bin = workspace_root().join("target/debug/examples").join(name);
        let status = Command::new(&bin)
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        if !status.success() {
            bail!("example {krate}/{name} failed ({status})");
        }
    }
    Ok(())
}

fn cpu_tests() -> Result<()> {
    cargo(&["test", "--workspace", "--exclude", "xtask"])?;
    // The kernels a smaller CPU runs, on this one: lm-kernels' correctness tests (every fused op
    // against its composite form, the gemm kernels against f64; not the perf guard, whose
    // ratios are for the CPU's own kernels) with the instruction set capped at each level below
    // AMX (levels this CPU lacks fall back the same way as uncapped).
    for isa in ["generic", "avx512", "avx512-bf16"] {
        println!("lm-kernels' tests with LM_KERNELS_MAX_ISA={isa}");
        let env = [("LM_KERNELS_MAX_ISA".to_string(), isa.to_string())];
        let args = [
            "test",
            "-p",
            "lm-kernels",
            "--lib",
            "--test",
            "fused_ops",
            "--quiet",
        ];
        cargo_with(&args, &env)?;
    }
    let minilm = std::env::var_os("LM_TRAIN_MINILM_DIR").is_some()
        || std::path::Path::new("models/all-MiniLM-L6-v2/model.safetensors").exists();
    if !minilm {
        println!(
            "skipped: lm-train's minilm test (ids and hidden states of all-MiniLM-L6-v2 against \
             transformers): the model is not here; tests/fixtures/minilm/make_minilm_fixture.py \
             says how to get it once into models/all-MiniLM-L6-v2"
        );
    }
    if found("mpirun") {
        cargo(&[
            "test",
            "-p",
            "lm-train",
            "--features",
            "mpi",
            "--test",
            "data_parallel",
        ])
    } else {
        println!(
            "skipped: lm-train's data_parallel tests (two_ranks_of_six_equal_one_process_of_twelve, \
             a_killed_rank_stops_the_job_and_the_run_resumes_exactly, \
             zero_1_shards_the_optimizer_state_and_still_equals_one_process, \
             zero_2_and_3_equal_one_process_for_gpt_and_t5_with_clipping, \
             a_signal_to_mpirun_or_to_one_rank_stops_every_rank_with_one_checkpoint, \
             a_run_resumes_on_another_number_of_ranks_keeping_its_global_batch): \
             mpirun not found; install with `apt-get install libopenmpi-dev openmpi-bin libclang-dev`"
        );
        Ok(())
    }
}

/// A recipe through `cargo run --release`, cargo's build progress shown (the first build takes
/// minutes: a silent wait looks like a hang).
fn recipe(name: &str, extra: &[String]) -> Result<()> {
    cargo(&recipe_args(name, extra))
}

/// `cargo run --release -p lm-train -- train --recipe NAME EXTRA…`, not `--quiet`.
fn recipe_args<'a>(name: &'a str, extra: &'a [String]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "lm-train",
        "--",
        "train",
        "--recipe",
        name,
    ];
    args.extend(extra.iter().map(String::as_str));
    args
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!(
            "usage: cargo xtask <ci|test|tidy|demo|recipe NAME|bench [SUITE]|fuzz [TARGET..]|cuda-build|gpu-check>"
        );
    };
    match cmd.as_str() {
        "ci" => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cuda::clippy()?;
            test()
        }
        "test" => test(),
        "tidy" => tidy::tidy(&workspace_root()),
        "cuda-build" => cuda::build(),
        "gpu-check" => cuda::gpu_check(args.iter().any(|a| a == "--bundle")),
        "demo" => recipe("gpt-shakespeare-char", &args[1..]),
        "recipe" => {
            let Some(name) = args.get(1) else {
                bail!("usage: cargo xtask recipe NAME [lm-train train options]");
            };
            recipe(name, &args[2..])
        }
        "fuzz" => fuzz::fuzz(&workspace_root(), &args[1..]),
        "examples" => examples(),
        "metal-check" => metal::metal_check(),
        "outside" => outside::outside(&workspace_root()),
        "bench" => {
            let mut a = vec!["run", "--release", "--quiet", "-p", "lm-bench", "--"];
            a.extend(args[1..].iter().map(String::as_str));
            cargo(&a)
        }
        other => bail!("unknown xtask command {other:?}; expected ci, test, tidy, demo, recipe, bench, examples, outside, fuzz, cuda-build, metal-check or gpu-check"),
    }
}

#[cfg(test)]
mod tests {
    /// `cargo xtask demo` lets cargo show its build progress (a quiet first build of minutes
    /// looks like a hang), and passes the recipe and extra arguments on.
    #[test]
    fn the_demo_shows_cargos_build_progress() {
        let extra = vec!["--max-iters".to_string(), "5".to_string()];
        let args = super::recipe_args("gpt-shakespeare-char", &extra);
        assert!(
            !args.contains(&"--quiet") && !args.contains(&"-q"),
            "{args:?}"
        );
        assert_eq!(
            args[args.len() - 3..],
            ["gpt-shakespeare-char", "--max-iters", "5"]
        );
    }
}
