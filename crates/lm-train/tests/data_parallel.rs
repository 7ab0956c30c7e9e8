//! Data parallelism over MPI: `mpirun -np 2 lm-train train` with `batch_size = 6` per rank gives,
//! step by step, the losses and final parameters of one process with `batch_size = 12` — for a
//! GPT, a BERT (MLM + NSP, dropout 0.1) and a T5 recipe. A rank killed with SIGKILL stops the job
//! naming the rank, and the run resumes under mpirun to the uninterrupted run's losses.
//!
//! Built only with `--features mpi`; `cargo xtask test` runs it when `mpirun` is installed.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// `mpirun -np 2 lm-train ARGS` in `d`, not yet run.
fn mpirun_command(args: &[&str], d: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_lm-train"))
        .args(args)
        .current_dir(d)
        // Containers often forbid the cross-process memory copies of Open MPI's shared-memory
        // transport; copying through its buffers works everywhere.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// `mpirun -np 2 lm-train ARGS` in `d`.
fn mpirun(args: &[&str], d: &Path) -> Output {
    mpirun_command(args, d)
        .output()
        .expect("mpirun runs (apt-get install libopenmpi-dev openmpi-bin)")
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bundled recipe shrunk to seconds on a 40 kB corpus, with `batch` sequences per rank, as TOML.
/// Trained tokenizers come from `tokenizer_file` (the `tokenizers` crate's trainers are not
/// deterministic from run to run, so two runs that each trained one would not compare).
fn shrunk(recipe: &str, batch: usize, tokenizer_file: Option<&str>) -> String {
    let mut c = lm_train::config::TrainConfig::recipe(recipe).unwrap();
    c.data.corpus = "corpus.txt".into();
    c.data.tokenizer_file = tokenizer_file.map(String::from);
    c.data.vocab_size = None;
    (c.model.n_layer, c.model.n_head, c.model.n_embd) = (2, 2, 32);
    (c.model.d_ff, c.model.block_size) = (Some(64), 32);
    (c.train.batch_size, c.train.max_iters) = (batch, 12);
    (
        c.train.eval_interval,
        c.train.eval_iters,
        c.train.log_interval,
    ) = (6, 2, 1);
    c.train.sample_tokens = 0;
    // f32 products: a rank's share of a product can fall under the size where bf16 starts.
    c.train.matmul_precision = lm_train::config::Precision::Highest;
    (c.optim.warmup_iters, c.optim.lr_decay_iters) = (3, Some(12));
    // T5 v1.1's gated GELU instead of v1.0's ReLU: a ReLU makes the gradient a discontinuous
    // function of the parameters, and a pre-activation within rounding of 0 takes opposite signs
    // in the two runs now and then (measured: -3.8e-8 in one, +1.6e-7 in the other, one step
    // in 22 tokenizers), after which no tolerance holds; a smooth network keeps the two runs
    // within rounding (docs/distributed.md).
    if c.model.family == lm_train::config::Family::named("t5").unwrap() {
        c.model.t5_feed_forward = Some(lm_train::choices::T5FeedForward::GatedGelu);
    }
    c.to_toml()
}

/// Trains `d/one.toml` as one process into `one` and `d/two.toml` under `mpirun -np 2` into
/// `two`.
fn train_one_process_and_two_ranks(d: &Path, one: &str, two: &str) {
    succeeded(
        &lm_train(
            &["train", "--config", "one.toml", "--out", one, "--quiet"],
            d,
        ),
        one,
    );
    let out = mpirun(
        &["train", "--config", "two.toml", "--out", two, "--quiet"],
        d,
    );
    succeeded(&out, two);
    assert!(String::from_utf8_lossy(&out.stdout).contains("on 2 ranks"));
}

/// A ZeRO-3 checkpoint of 2 ranks: each wrote its parameters as one shard; the index names both.
fn assert_one_model_shard_per_rank(ckpt: &Path) {
    assert!(!ckpt.join("model.safetensors").exists());
    let files = lm_models::weights::files(&ckpt.join("model.safetensors")).unwrap();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap()).collect();
    let want = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    assert_eq!(names, want);
}

/// Two losses (or parameters) agree within 1e-5 relative (1e-6 absolute near zero).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-6
}

fn assert_same_run(one: &Path, two: &Path, what: &str) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!(a.len(), b.len(), "{what}: metrics lines");
    for ((sa, la, va), (sb, lb, vb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            close(*la as f64, *lb as f64),
            "{what} step {sa}: loss {la} vs {lb}"
        );
        if let (Some(va), Some(vb)) = (va, vb) {
            assert!(
                close(*va as f64, *vb as f64),
                "{what} step {sa}: val {va} vs {vb}"
            );
        }
    }
    // The newest checkpoint's tensors: one file, or a ZeRO-3 run's shard per rank.
    let last = |d: &Path| {
        let ckpt = lm_train::checkpoint::latest_checkpoint(d).unwrap();
        let files = lm_models::weights::files(&ckpt.join("model.safetensors")).unwrap();
        let mut tensors = std::collections::HashMap::new();
        for f in files {
            tensors.extend(candle_core::safetensors::load(f, &candle_core::Device::Cpu).unwrap());
        }
        tensors
    };
    let (pa, pb) = (last(one), last(two));
    assert_eq!(pa.len(), pb.len());
    let mut largest = 0f64;
    for (name, ta) in &pa {
        let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = pb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in va.iter().zip(&vb) {
            let (x, y) = (*x as f64, *y as f64);
            largest = largest.max((x - y).abs());
            assert!(close(x, y), "{what}: {name}: {x} vs {y}");
        }
    }
    eprintln!("{what}: largest parameter difference {largest:.2e}");
}

#[test]
fn two_ranks_of_six_equal_one_process_of_twelve() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    for (recipe, tokenizer) in [
        ("gpt-shakespeare-char", None),
        ("bert-mlm-nsp", Some("bert-300.json")),
        ("t5-span-corruption", Some("t5-300.json")),
    ] {
        // Committed tokenizers (tests/fixtures/tokenizers/make_tokenizers.sh): a trained one would
        // differ from run to run, and so would the runs' rounding.
        if let Some(name) = tokenizer {
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tokenizers")
                .join(name);
            std::fs::copy(&fixture, d.join(name)).unwrap();
        }
        std::fs::write(d.join("one.toml"), shrunk(recipe, 12, tokenizer)).unwrap();
        std::fs::write(d.join("two.toml"), shrunk(recipe, 6, tokenizer)).unwrap();
        let (one, two) = (format!("{recipe}-1x12"), format!("{recipe}-2x6"));
        train_one_process_and_two_ranks(d, &one, &two);
        assert_same_run(&d.join(&one), &d.join(&two), recipe);
    }
}

#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = kill_config(d);
    let cfg = cfg.to_str().unwrap();
    let whole = mpirun(&["train", "--config", cfg, "--out", "whole", "--quiet"], d);
    succeeded(&whole, "whole");
    // Run-level lines come from rank 0 alone.
    let said = String::from_utf8_lossy(&whole.stdout);
    for line in ["into whole on 2 ranks", " M parameters", "MFU against"] {
        assert_eq!(said.matches(line).count(), 1, "{line:?} in {said}");
    }
    let job = mpirun_command(&["train", "--config", cfg, "--out", "killed", "--quiet"], d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !d.join("killed/checkpoints/step-00000010").exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // SIGKILL one of mpirun's ranks (a child process running lm-train).
    let children = Command::new("pgrep")
        .args(["-P", &job.id().to_string(), "lm-train"])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&children.stdout).into_owned();
    let victim = pids.lines().last().expect("mpirun's ranks");
    assert!(Command::new("kill")
        .args(["-9", victim])
        .status()
        .unwrap()
        .success());
    let out = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job must stop");
    assert!(err.contains("rank"), "mpirun names the rank: {err}");
    // mpirun has ended its other rank too (its lock, left behind, belongs to a dead process).
    let lock = std::fs::read_to_string(d.join("killed/lock")).unwrap_or_default();
    if let Some(pid) = lock.split_whitespace().nth(1) {
        let started = std::time::Instant::now();
        while Path::new("/proc").join(pid).exists() {
            assert!(
                started.elapsed().as_secs() < 30,
                "rank {pid} outlived the job"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // The last complete checkpoint loads, and the resumed job ends where the whole one did.
    succeeded(
        &mpirun(&["train", "--resume", "killed", "--quiet"], d),
        "resume",
    );
    assert_eq!(losses(&d.join("killed")), losses(&d.join("whole")));
}

/// Bytes of optimizer state in a safetensors file (the step counter not counted).
fn state_bytes(path: &Path) -> usize {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "step")
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

#[test]
fn zero_1_shards_the_optimizer_state_and_still_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    let recipe = "gpt-shakespeare-char";
    std::fs::write(d.join("one.toml"), shrunk(recipe, 12, None)).unwrap();
    // The old spelling, which earlier runs' configs carry, reads as stage 1.
    let sharded = shrunk(recipe, 6, None).replace(
        "zero_stage = 0",
        "zero_stage = 0\nshard_optimizer_state = true",
    );
    assert!(sharded.contains("shard_optimizer_state = true"));
    std::fs::write(d.join("zero.toml"), sharded).unwrap();
    succeeded(
        &lm_train(
            &["train", "--config", "one.toml", "--out", "one", "--quiet"],
            d,
        ),
        "one",
    );
    // Stopped half way and resumed under mpirun, as the shards must reload.
    let args = [
        "train",
        "--config",
        "zero.toml",
        "--out",
        "zero",
        "--quiet",
        "--max-iters",
        "6",
    ];
    succeeded(&mpirun(&args, d), "zero to 6");
    succeeded(
        &mpirun(&["train", "--resume", "zero", "--quiet"], d),
        "zero resumed",
    );
    assert_same_run(&d.join("one"), &d.join("zero"), "ZeRO-1");
    // Sharded over 2 ranks, resumed by 1 process: it takes both shards' state.
    let args = [
        "train",
        "--config",
        "zero.toml",
        "--out",
        "zero-to-one",
        "--quiet",
        "--max-iters",
        "6",
    ];
    succeeded(&mpirun(&args, d), "zero-to-one to 6");
    succeeded(
        &lm_train(&["train", "--resume", "zero-to-one", "--quiet"], d),
        "1 process from 2 shards",
    );
    assert_same_run(
        &d.join("one"),
        &d.join("zero-to-one"),
        "ZeRO-1, 2 ranks then 1",
    );
    // Each rank holds about half of the optimizer state one process holds.
    let whole = state_bytes(&d.join("one/checkpoints/step-00000012/optimizer.safetensors"));
    for r in 0..2 {
        let part = state_bytes(&d.join(format!(
            "zero/checkpoints/step-00000012/optimizer-rank{r}.safetensors"
        )));
        let share = part as f64 / whole as f64;
        assert!(
            (0.4..=0.6).contains(&share),
            "rank {r}: {part} of {whole} bytes"
        );
    }
}

/// ZeRO-2 (gradients reduced to their owners during backward, optimizer state sharded) and
/// ZeRO-3 (the parameters too, between uses) on 2 ranks × 6 equal 1 process × 12: GPT with
/// AdamW, clipping and 2 micro-batches per step (only the last one reduces, carrying the
/// first); T5 with AdaFactor and clipping. The clip is small enough to bind, so the global
/// norm — summed over the ranks' shares — matters. A stage-3 run stopped at step 6 on 2 ranks
/// resumes as 1 process to the same losses (the ranks' memory accounts: tests/data_order.rs).
#[test]
fn zero_2_and_3_equal_one_process_for_gpt_and_t5_with_clipping() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    for (recipe, tokenizer, accum) in [
        ("gpt-shakespeare-char", None, 2),
        ("t5-span-corruption", Some("t5-300.json"), 1),
    ] {
        if let Some(name) = tokenizer {
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tokenizers")
                .join(name);
            std::fs::copy(&fixture, d.join(name)).unwrap();
        }
        let with = |toml: String, stage: &str| {
            let mut c: lm_train::config::TrainConfig = toml::from_str(&toml).unwrap();
            (c.optim.grad_clip, c.train.grad_accum) = (0.05, accum);
            c.to_toml().replace("zero_stage = 0", stage)
        };
        let one = format!("{recipe}-1x12");
        std::fs::write(
            d.join("one.toml"),
            with(shrunk(recipe, 12, tokenizer), "zero_stage = 0"),
        )
        .unwrap();
        succeeded(
            &lm_train(
                &["train", "--config", "one.toml", "--out", &one, "--quiet"],
                d,
            ),
            &one,
        );
        for stage in [2, 3] {
            let two = with(
                shrunk(recipe, 6, tokenizer),
                &format!("zero_stage = {stage}"),
            );
            assert!(two.contains(&format!("zero_stage = {stage}")));
            std::fs::write(d.join("two.toml"), two).unwrap();
            let two = format!("{recipe}-zero{stage}");
            let out = mpirun(
                &["train", "--config", "two.toml", "--out", &two, "--quiet"],
                d,
            );
            succeeded(&out, &two);
            let what = format!("ZeRO-{stage} {recipe}");
            assert_same_run(&d.join(&one), &d.join(&two), &what);
            // The clip binds: a logged norm above it.
            let metrics = std::fs::read_to_string(d.join(&two).join("metrics.jsonl")).unwrap();
            let clipped = metrics.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["grad_norm"].as_f64().is_some_and(|n| n > 0.05)
            });
            assert!(clipped, "{what}: no step's gradient norm reaches the clip");
        }
    }
    // Stage 3 on 2 ranks to step 6, then 1 process to 12: the uninterrupted run's losses.
    let recipe = "gpt-shakespeare-char";
    let stage3 = shrunk(recipe, 6, None).replace("zero_stage = 0", "zero_stage = 3");
    std::fs::write(d.join("three.toml"), stage3).unwrap();
    let args = [
        "train",
        "--config",
        "three.toml",
        "--out",
        "three-to-one",
        "--quiet",
        "--max-iters",
        "6",
    ];
    let out = mpirun(&args, d);
    succeeded(&out, "ZeRO-3 to 6");
    assert_one_model_shard_per_rank(&d.join("three-to-one/checkpoints/step-00000006"));
    succeeded(
        &lm_train(&["train", "--resume", "three-to-one", "--quiet"], d),
        "1 process from a ZeRO-3 run",
    );
    std::fs::write(d.join("plain.toml"), shrunk(recipe, 12, None)).unwrap();
    succeeded(
        &lm_train(
            &[
                "train",
                "--config",
                "plain.toml",
                "--out",
                "plain",
                "--quiet",
            ],
            d,
        ),
        "plain",
    );
    assert_same_run(
        &d.join("plain"),
        &d.join("three-to-one"),
        "ZeRO-3, 2 ranks then 1",
    );
}

/// Starts `mpirun -np 2 lm-train train --config long.toml --out OUT` in `d`, waits until it has
/// logged a few steps, sends SIGTERM to mpirun itself or to one of its ranks, and returns what
/// it printed (the job killed, and the test failed, if it has not ended a minute later).
fn signal_a_long_run(d: &Path, out: &str, to_a_rank: bool) -> Output {
    let args = ["train", "--config", "long.toml", "--out", out, "--quiet"];
    let mut child = mpirun_command(&args, d)
        // mpirun kills the ranks a second after passing SIGTERM on (its default); a slow disk's
        // fsyncs could take that long, so the test gives them what docs/reliability.md advises.
        .env("OMPI_MCA_odls_base_sigkill_timeout", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = d.join(out).join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "{out}: no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let target = if to_a_rank {
        let ranks = Command::new("pgrep")
            .args(["-P", &child.id().to_string()])
            .output()
            .unwrap();
        let ranks = String::from_utf8_lossy(&ranks.stdout).to_string();
        ranks.lines().last().unwrap_or_default().trim().to_string()
    } else {
        child.id().to_string()
    };
    assert!(!target.is_empty(), "{out}: no rank process found");
    let kill = Command::new("kill")
        .args(["-TERM", &target])
        .status()
        .unwrap();
    assert!(kill.success());
    // Read the pipes beside the wait, so that a full pipe never holds the job up.
    use std::io::Read as _;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = vec![];
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let signalled = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed().as_secs() > 60 {
            // The ranks first (mpirun killed with SIGKILL would leave them running).
            let pid = child.id().to_string();
            let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
            let _ = child.kill();
            panic!("{out}: the job did not end within 60 s of the signal");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// SIGTERM to mpirun (which passes it to every rank and kills them a second later) or to one
/// rank alone: the ranks agree at the next step boundary, write one checkpoint of that step,
/// rank 0 releases the lock, and the run resumes under mpirun from there.
#[test]
fn a_signal_to_mpirun_or_to_one_rank_stops_every_rank_with_one_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    let mut c: lm_train::config::TrainConfig =
        toml::from_str(&shrunk("gpt-shakespeare-char", 6, None)).unwrap();
    (c.train.max_iters, c.train.eval_interval) = (1_000_000, 1_000_000);
    std::fs::write(d.join("long.toml"), c.to_toml()).unwrap();
    for (out, to_a_rank) in [("to-mpirun", false), ("to-a-rank", true)] {
        let done = signal_a_long_run(d, out, to_a_rank);
        let said = String::from_utf8_lossy(&done.stderr).to_string();
        let step: u64 = said
            .split("interrupted at step ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{out}: no interruption reported: {said}"));
        assert!(!said.contains("MPI_ABORT"), "{out}: {said}");
        let run = d.join(out);
        let ckpt = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
        assert!(
            ckpt.ends_with(format!("step-{step:08}")),
            "{out}: {}",
            ckpt.display()
        );
        assert!(!run.join("lock").exists(), "{out}: the lock was left");
        let more = (step + 2).to_string();
        let args = ["train", "--resume", out, "--quiet", "--max-iters", &more];
        succeeded(&mpirun(&args, d), &format!("{out} resumed"));
        let last = lm_train::checkpoint::latest_checkpoint(&run).unwrap();
        assert!(last.ends_with(format!("step-{:08}", step + 2)), "{out}");
    }
}

#[test]
fn a_run_resumes_on_another_number_of_ranks_keeping_its_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..40_000]).unwrap();
    let recipe = "gpt-shakespeare-char";
    std::fs::write(d.join("one.toml"), shrunk(recipe, 12, None)).unwrap();
    std::fs::write(d.join("two.toml"), shrunk(recipe, 6, None)).unwrap();
    succeeded(
        &lm_train(
            &["train", "--config", "one.toml", "--out", "one", "--quiet"],
            d,
        ),
        "one",
    );
    let args = [
        "train",
        "--config",
        "two.toml",
        "--out",
        "moved",
        "--quiet",
        "--max-iters",
        "6",
    ];
    succeeded(&mpirun(&args, d), "2 ranks to step 6");
    // 1 process takes the whole global batch of 12 (batch_size is per rank) and continues the
    // 2 × 6 run as if it had been one process all along.
    succeeded(
        &lm_train(&["train", "--resume", "moved", "--quiet"], d),
        "1 × 12",
    );
    assert_same_run(&d.join("one"), &d.join("moved"), "2 ranks, then 1");
    // And the other way: 1 process × 12 to step 6, then 2 ranks take 6 each.
    let first = [
        "train",
        "--config",
        "one.toml",
        "--out",
        "grown",
        "--quiet",
        "--max-iters",
        "6",
    ];
    succeeded(&lm_train(&first, d), "1 process to step 6");
    succeeded(
        &mpirun(&["train", "--resume", "grown", "--quiet"], d),
        "2 ranks from step 6",
    );
    assert_same_run(&d.join("one"), &d.join("grown"), "1 process, then 2 ranks");
}

#[test]
fn fine_tuning_on_two_ranks_of_four_equals_one_process_of_eight() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("corpus.txt"), &lm_train::data::SHAKESPEARE[..30_000]).unwrap();
    // A classifier (predictions are class indices) and a generator (predictions are token ids).
    for (ft, pre) in [
        ("bert-finetune-pairs", "bert-mlm-nsp"),
        ("gpt-table-to-text", "gpt-shakespeare-bpe"),
    ] {
        let init = pretrained(d, pre);
        let config = |batch: usize| {
            let mut c = lm_train::config::FinetuneConfig::recipe(ft).unwrap();
            c.finetune.init = init.display().to_string();
            // 7 validation and 5 test examples: the ranks' shares differ in size (4 and 3).
            (c.finetune.train_examples, c.finetune.val_examples) = (48, 7);
            (c.finetune.test_examples, c.finetune.max_len) = (5, 24);
            c.finetune.max_target_len = 4;
            (c.train.max_iters, c.train.eval_interval, c.train.eval_iters) = (8, 4, 1);
            (c.train.batch_size, c.train.log_interval) = (batch, 1);
            c.train.matmul_precision = lm_train::config::Precision::Highest;
            c.optim.warmup_iters = 1;
            c.to_toml()
        };
        std::fs::write(d.join("one.toml"), config(8)).unwrap();
        std::fs::write(d.join("two.toml"), config(4)).unwrap();
        // The resumed run below shards everything (ZeRO-3): the evaluations, predictions and
        // the final report gather the parameters.
        let stage3 = config(4).replace("zero_stage = 0", "zero_stage = 3");
        assert!(stage3.contains("zero_stage = 3"));
        std::fs::write(d.join("two-zero3.toml"), stage3).unwrap();
        let (one, two) = (format!("{ft}-1x8"), format!("{ft}-2x4"));
        train_one_process_and_two_ranks(d, &one, &two);
        // The same two-rank run at ZeRO-3, stopped after step 4 and resumed under mpirun.
        let resumed = format!("{ft}-2x4-zero3-resumed");
        let half = [
            "train",
            "--config",
            "two-zero3.toml",
            "--out",
            &resumed,
            "--quiet",
            "--max-iters",
            "4",
        ];
        succeeded(&mpirun(&half, d), &resumed);
        succeeded(
            &mpirun(&["train", "--resume", &resumed, "--quiet"], d),
            &resumed,
        );
        // Losses, parameters, the validation metrics of every evaluation, the test results and
        // predictions are the same.
        let metrics = |run: &str| -> Vec<_> {
            lm_train::metrics::MetricsLog::read(&d.join(run).join("metrics.jsonl"))
                .unwrap()
                .into_iter()
                .filter(|r| !r.metrics.is_empty())
                .map(|r| (r.step, r.metrics))
                .collect()
        };
        let results = |run: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(d.join(run).join("results.json")).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["best_checkpoint"] = serde_json::Value::Null; // the paths differ by run directory
            v
        };
        let predictions =
            |run: &str| std::fs::read_to_string(d.join(run).join("test_predictions.txt")).unwrap();
        assert_eq!(
            metrics(&one).len(),
            3,
            "{ft}: evaluations at steps 0, 4 and 8"
        );
        for run in [&two, &resumed] {
            assert_same_run(&d.join(&one), &d.join(run), run);
            assert_eq!(metrics(&one), metrics(run), "{run}");
            assert_eq!(results(&one), results(run), "{run}");
            assert_eq!(predictions(&one), predictions(run), "{run}");
        }
        eprintln!(
            "{ft}: test {}\n{}",
            results(&two)["test"],
            predictions(&two)
        );
    }
}
