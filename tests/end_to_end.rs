//! The whole path: corpus → objective → model → optimizer → trainer → checkpoint → resume.

use candle_core::Device;
use lm_integration_tests::tiny_config;
use lm_train::data::BUILTIN_SHAKESPEARE;
use lm_train::metrics::MetricsLog;
use lm_train::Trainer;

fn train_losses(run_dir: &std::path::Path) -> Vec<(u64, f32)> {
    MetricsLog::read(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.val_loss.is_none())
        .map(|r| (r.step, r.train_loss))
        .collect()
}

#[test]
fn resume_reproduces_the_uninterrupted_run_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let parts = tmp.path().join("parts");
    Trainer::new(tiny_config(BUILTIN_SHAKESPEARE, 12), &whole, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();

    // The same run stopped at step 8 (a checkpoint step), then resumed to its end.
    let mut first =
        Trainer::new(tiny_config(BUILTIN_SHAKESPEARE, 12), &parts, Device::Cpu).unwrap();
    first.stop_at(8).unwrap();
    assert_eq!(first.train().unwrap().step, 8);
    drop(first);
    let mut resumed = Trainer::resume(&parts, None, Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 8);
    resumed.train().unwrap();

    let a = train_losses(&whole);
    let b = train_losses(&parts);
    assert_eq!(a.len(), 12);
    // Bit-exact: same losses (f32 equality) at every step, before and after the resume.
    assert_eq!(a, b);
    // Evaluation lines agree too.
    let evals = |d: &std::path::Path| -> Vec<(u64, Option<f32>)> {
        MetricsLog::read(&d.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r.val_loss.is_some())
            .map(|r| (r.step, r.val_loss))
            .collect()
    };
    assert_eq!(evals(&whole), evals(&parts));
}

#[test]
fn resume_after_a_crash_past_the_checkpoint_drops_the_lost_steps_from_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(BUILTIN_SHAKESPEARE, 6);
    cfg.train.eval_interval = 4;
    Trainer::new(cfg, &run, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    // Pretend the run died after step 6 but before its checkpoint: remove it.
    std::fs::remove_dir_all(run.join("checkpoints/step-00000006")).unwrap();
    let mut t = Trainer::resume(&run, None, Device::Cpu).unwrap();
    assert_eq!(t.step(), 4);
    t.train().unwrap();
    let steps: Vec<u64> = train_losses(&run).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn training_lowers_the_validation_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(BUILTIN_SHAKESPEARE, 40);
    cfg.train.eval_interval = 40;
    cfg.train.eval_iters = 8;
    cfg.optim.lr = 1e-2;
    cfg.optim.min_lr = 1e-3;
    let mut t = Trainer::new(cfg, &tmp.path().join("run"), Device::Cpu).unwrap();
    t.train().unwrap();
    let evals: Vec<f32> = MetricsLog::read(&tmp.path().join("run/metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| r.val_loss)
        .collect();
    let (first, last) = (evals[0], *evals.last().unwrap());
    // Starts at the uniform guess ln 65 ≈ 4.17 and must clearly improve in 40 steps: over seeds
    // 1–8 of this config the drop was 0.69–0.96 (2026-12-07), so 0.6 holds for any data order,
    // not one lucky draw (0.8 held for the data order before prepared datasets only).
    assert!((first - 65f32.ln()).abs() < 0.1, "{first}");
    assert!(last < first - 0.6, "val loss {first} -> {last}");
}

#[test]
fn the_bundled_recipe_builds_nanogpts_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = lm_train::config::TrainConfig::recipe("gpt-shakespeare-char").unwrap();
    cfg.train.max_iters = 0;
    let t = Trainer::new(cfg, &tmp.path().join("run"), Device::Cpu).unwrap();
    // nanoGPT reports 0.80 M parameters without position embeddings: 64·128 fewer than ours.
    let n = t.params().num_params();
    assert_eq!(
        n,
        65 * 128
            + 64 * 128
            + 4 * (4 * 128 + 128 * 384 + 384 + 128 * 128 + 128 + 128 * 512 + 512 + 512 * 128 + 128)
            + 2 * 128
    );
}

#[test]
fn tensorboard_events_hold_what_metrics_jsonl_holds() {
    use lm_train::tensorboard::{read_events, What};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    Trainer::new(tiny_config(BUILTIN_SHAKESPEARE, 4), &run, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    // Every scalar at its step, as f32.
    let mut seen = std::collections::HashMap::new();
    for e in &events[1..] {
        let Some(What::Summary(s)) = &e.what else {
            panic!("{e:?}")
        };
        for v in &s.value {
            seen.insert((e.step as u64, v.tag.clone()), v.simple_value.unwrap());
        }
    }
    let records = MetricsLog::read(&run.join("metrics.jsonl")).unwrap();
    assert!(records.len() >= 6, "{records:?}");
    for r in &records {
        let at = |tag: &str| seen.get(&(r.step, tag.to_string())).copied();
        match r.val_loss {
            Some(v) => {
                assert_eq!(at("eval/val_loss"), Some(v), "step {}", r.step);
                assert_eq!(at("eval/train_loss"), Some(r.train_loss));
            }
            None => {
                assert_eq!(at("train/loss"), Some(r.train_loss), "step {}", r.step);
                assert_eq!(at("train/lr"), Some(r.lr as f32));
                assert_eq!(at("train/grad_norm"), r.grad_norm.map(|g| g as f32));
            }
        }
    }
    // `plot --compare` draws exactly the run's `eval/…` tags but the training loss.
    let tags: std::collections::BTreeSet<String> = seen
        .keys()
        .map(|(_, t)| t.clone())
        .filter(|t| t.starts_with("eval/") && t != "eval/train_loss")
        .collect();
    let compared: std::collections::BTreeSet<String> = lm_train::plot::compare_metrics(&records)
        .iter()
        .map(|m| format!("eval/{m}"))
        .collect();
    assert_eq!(compared, tags);
    // Opted out: no tb/ at all.
    let mut cfg = tiny_config(BUILTIN_SHAKESPEARE, 2);
    cfg.train.tensorboard = false;
    let quiet = tmp.path().join("quiet");
    Trainer::new(cfg, &quiet, Device::Cpu)
        .unwrap()
        .train()
        .unwrap();
    assert!(!quiet.join("tb").exists());
}

/// MFU is stated against a named peak: `train.peak_flops` when set, else the measured peak of
/// the run's products on its threads; every logged step carries it.
#[test]
fn mfu_names_the_peak_it_is_stated_against() {
    let tmp = tempfile::tempdir().unwrap();
    for (peak, says) in [
        (None, "measured"),
        (Some(2e9), "train.peak_flops (2 GFLOP/s)"),
    ] {
        let mut cfg = tiny_config(BUILTIN_SHAKESPEARE, 2);
        cfg.train.peak_flops = peak;
        let run = tmp.path().join(format!("run-{}", peak.is_some()));
        let mut trainer = Trainer::new(cfg, &run, Device::Cpu).unwrap();
        assert!(trainer.mfu_line().contains(says), "{}", trainer.mfu_line());
        trainer.train().unwrap();
        let records = MetricsLog::read(&run.join("metrics.jsonl")).unwrap();
        let logged: Vec<_> = records.iter().filter(|r| r.val_loss.is_none()).collect();
        assert!(!logged.is_empty() && logged.iter().all(|r| r.mfu.is_some_and(|m| m > 0.0)));
    }
}
