use super::*;

#[test]
fn recipe_parses_with_nanogpt_values() {
    let c = TrainConfig::recipe("gpt-shakespeare-char").unwrap();
    assert_eq!(
        (
            c.model.n_layer,
            c.model.n_head,
            c.model.n_embd,
            c.model.block_size
        ),
        (4, 4, 128, 64)
    );
    assert_eq!((c.train.batch_size, c.train.max_iters), (12, 2000));
    assert_eq!(
        (c.optim.beta2, c.optim.weight_decay, c.optim.grad_clip),
        (0.99, 0.1, 1.0)
    );
    let back = TrainConfig::from_toml(&c.to_toml(), "roundtrip").unwrap();
    assert_eq!(back, c);
}

#[test]
fn errors_name_the_key() {
    let base = TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    let e = TrainConfig::from_toml(&base.replace("n_embd = 128", "n_embd = 130"), "x.toml")
        .unwrap_err();
    assert!(
        e.to_string().contains("model.n_embd") && e.to_string().contains("divisible"),
        "{e}"
    );
    let e = TrainConfig::from_toml(
        &base.replace("n_layer = 4", "n_layer = 4\nn_layers = 4"),
        "x.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("n_layers"), "{e}");
    let e = TrainConfig::from_toml(&base.replace("n_layer = 4", "n_layer = \"four\""), "x.toml")
        .unwrap_err();
    assert!(
        e.to_string().contains("x.toml") && e.to_string().contains("string"),
        "{e}"
    );
    let e = TrainConfig::recipe("nope").unwrap_err();
    assert!(e.to_string().contains("gpt-shakespeare-char"), "{e}");
}

/// `recipe` with `[section] key = "bogus"`, parsed as `bad.toml` by either config type: the
/// error must name the file, the key's path, its line, the bad value and every allowed one.
fn assert_refused(recipe: &str, section: &str, key: &str, allowed: &[&str]) {
    let text = recipe_text(RECIPES, recipe)
        .or_else(|_| recipe_text(FINETUNE_RECIPES, recipe))
        .unwrap();
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    doc.entry(section)
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .unwrap()
        .insert(key.into(), "bogus".into());
    let bad = toml::to_string(&doc).unwrap();
    let e = RunConfig::from_toml(&bad, "bad.toml")
        .unwrap_err()
        .to_string();
    let path = format!("{section}.{key}");
    assert!(
        e.starts_with(&format!("config bad.toml: {path}: unknown variant `bogus`")),
        "{e}"
    );
    assert!(e.contains("(line "), "{e}");
    for v in allowed {
        assert!(
            e.contains(&format!("`{v}`")),
            "{path}: {v} missing from {e}"
        );
    }
}

macro_rules! refusal_tests {
    ($($test:ident: $recipe:literal, $section:literal, $key:literal, $ty:ty;)+) => {$(
        #[test]
        fn $test() {
            assert_refused($recipe, $section, $key, <$ty>::ALL);
        }
    )+};
}

#[test]
fn unknown_family_is_refused() {
    let names: Vec<&str> = crate::registry::families().iter().map(|f| f.name).collect();
    assert_eq!(names, ["gpt", "bert", "roberta", "bart", "t5"]);
    assert_refused("gpt-shakespeare-char", "model", "family", &names);
}

refusal_tests! {
    unknown_t5_feed_forward_is_refused: "t5-span-corruption", "model", "t5_feed_forward", T5FeedForward;
    unknown_tokenizer_is_refused: "gpt-shakespeare-char", "data", "tokenizer", TokenizerKind;
    unknown_mlm_selection_is_refused: "bert-mlm-nsp", "objective", "mlm_selection", MlmSelection;
    unknown_infilling_is_refused: "bart-denoising", "objective", "infilling", Infilling;
    unknown_optimizer_is_refused: "gpt-shakespeare-char", "optim", "name", OptimizerKind;
    unknown_schedule_is_refused: "gpt-shakespeare-char", "optim", "schedule", ScheduleKind;
    unknown_schedule_unit_is_refused: "gpt-shakespeare-char", "optim", "schedule_unit", ScheduleUnit;
    unknown_nonfinite_policy_is_refused: "gpt-shakespeare-char", "train", "on_nonfinite_loss", NonFinitePolicy;
    unknown_matmul_precision_is_refused: "gpt-shakespeare-char", "train", "matmul_precision", Precision;
    unknown_task_is_refused: "bert-finetune-pairs", "finetune", "task", TaskKind;
    unknown_freeze_is_refused: "bert-finetune-pairs", "finetune", "freeze", Freeze;
}

#[test]
fn type_errors_name_the_key_and_its_line() {
    let text = recipe_text(RECIPES, "gpt-shakespeare-char")
        .unwrap()
        .replace("n_layer = 4", "n_layer = \"four\"");
    let line = text.lines().position(|l| l.contains("\"four\"")).unwrap() + 1;
    let e = TrainConfig::from_toml(&text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config x.toml: model.n_layer: invalid type: string \"four\"")
            && e.contains(&format!("(line {line}, column ")),
        "{e}"
    );
}

/// The f16 loss scale's settings: a scale that is 0, negative, infinite or NaN, and a growth
/// interval of 0, are refused naming the key and the value.
#[test]
fn bad_loss_scale_settings_are_refused_by_key() {
    let base = TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    assert!(base.contains("loss_scale_init = 65536.0\n"), "{base}");
    let cases = [
        (
            "loss_scale_init = 65536.0",
            "loss_scale_init = 0",
            "train.loss_scale_init",
            "0 must be",
        ),
        (
            "loss_scale_init = 65536.0",
            "loss_scale_init = -8",
            "train.loss_scale_init",
            "-8 must be",
        ),
        (
            "loss_scale_init = 65536.0",
            "loss_scale_init = inf",
            "train.loss_scale_init",
            "inf must be",
        ),
        (
            "loss_scale_init = 65536.0",
            "loss_scale_init = nan",
            "train.loss_scale_init",
            "NaN must be",
        ),
        (
            "loss_scale_growth_interval = 2000",
            "loss_scale_growth_interval = 0",
            "train.loss_scale_growth_interval",
            "must be positive",
        ),
    ];
    for (from, to, key, problem) in cases {
        assert!(base.contains(from), "{from}");
        let e = TrainConfig::from_toml(&base.replace(from, to), "f16.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f16.toml") && e.contains(key) && e.contains(problem),
            "{to}: {e}"
        );
    }
}

#[test]
fn both_kinds_of_recipe_round_trip_through_run_config() {
    for (name, _) in RECIPES.iter().chain(FINETUNE_RECIPES) {
        let c = RunConfig::recipe(name).unwrap();
        assert_eq!(RunConfig::from_toml(&c.to_toml(), name).unwrap(), c);
        assert_eq!(
            matches!(c, RunConfig::Finetune(_)),
            FINETUNE_RECIPES.iter().any(|(n, _)| n == name)
        );
    }
}

/// The optimization a config describes, with `optim` replaced by the section `optim_toml`
/// (its preset applied).
fn preset_with(cfg: &TrainConfig, optim_toml: &str) -> lm_optim::presets::Preset {
    let mut cfg = cfg.clone();
    cfg.optim = parse_toml(optim_toml, "test").unwrap();
    let written = toml::from_str(optim_toml).unwrap();
    cfg.optim.fill_from_preset(&written, "test").unwrap();
    cfg.optim.preset(&cfg.train).unwrap()
}

#[test]
fn recipes_on_a_paper_preset_keep_their_optimization() {
    // The two recipes' [optim] sections before they named a preset, written out.
    let bert = TrainConfig::recipe("bert-mlm-nsp").unwrap();
    assert_eq!(bert.optim.preset, Some(PaperPreset::Bert));
    let before = "name = \"adamw\"\nschedule = \"linear\"\nlr = 1e-3\nmin_lr = 0.0\n\
                  warmup_iters = 60\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-6\n\
                  weight_decay = 0.01\ngrad_clip = 1.0\n";
    assert_eq!(
        bert.optim.preset(&bert.train).unwrap(),
        preset_with(&bert, before)
    );
    let t5 = TrainConfig::recipe("t5-span-corruption").unwrap();
    let before = "name = \"adafactor\"\nschedule = \"inverse_sqrt\"\nlr = 1e-2\nmin_lr = 0.0\n\
                  warmup_iters = 100\nweight_decay = 0.0\ngrad_clip = 1.0\n";
    assert_eq!(
        t5.optim.preset(&t5.train).unwrap(),
        preset_with(&t5, before)
    );
}

#[test]
fn a_paper_preset_alone_is_lm_optims_preset() {
    use lm_optim::presets;
    let base = TrainConfig::recipe("gpt-shakespeare-char").unwrap();
    let gpt3 = preset_with(&base, "preset = \"gpt3\"\nlr = 6e-4\n");
    let mut want = presets::gpt3(6e-4, 1, 1, 0.0).unwrap();
    want.batch_ramp = None; // the ramp is [train]'s
    assert_eq!(gpt3, want);
    // With [train]'s ramp keys it is GPT-3's whole recipe: clip, schedule in tokens, ramp.
    let mut ramped = base.clone();
    ramped.train.batch_ramp_start = Some(2);
    ramped.train.batch_ramp_tokens = 4e9;
    assert_eq!(
        preset_with(&ramped, "preset = \"gpt3\"\nlr = 6e-4\n"),
        presets::gpt3(6e-4, base.train.batch_size, 2, 4e9).unwrap()
    );
    let bert = preset_with(&base, "preset = \"bert\"\nlr = 1e-4\n");
    let bert_steps = (presets::BERT_WARMUP_STEPS, presets::BERT_TOTAL_STEPS);
    assert_eq!(
        bert,
        presets::bert(1e-4, bert_steps.0, bert_steps.1).unwrap()
    );
    assert_eq!(
        preset_with(&base, "preset = \"t5\"\nlr = 1e-2\n"),
        presets::t5()
    );
}

#[test]
fn keys_written_beside_a_preset_override_it() {
    let text = TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    let start = text.find("[optim]").unwrap();
    let end = start + text[start..].find("\n[").unwrap();
    let with = |optim: &str| {
        let doc = format!("{}[optim]\n{optim}{}", &text[..start], &text[end..]);
        TrainConfig::from_toml(&doc, "x.toml")
    };
    let c = with("preset = \"bert\"\nlr = 1e-3\nbeta2 = 0.98\nwarmup_iters = 5\n").unwrap();
    assert_eq!(
        (c.optim.name, c.optim.schedule, c.optim.beta2, c.optim.eps),
        (OptimizerKind::Adamw, ScheduleKind::Linear, 0.98, 1e-6)
    );
    assert_eq!(
        (
            c.optim.warmup_iters,
            c.optim.lr_decay_iters,
            c.optim.grad_clip
        ),
        (5, Some(1_000_000), 1.0)
    );
    // The filled section writes itself out whole and reads back the same.
    assert_eq!(TrainConfig::from_toml(&c.to_toml(), "again").unwrap(), c);
    let e = with("preset = \"bart\"\nlr = 1e-3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("optim.preset") && e.contains("`gpt3`"), "{e}");
}

#[test]
fn activation_checkpointing_is_a_name_or_a_count() {
    let text = TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    assert!(
        text.contains("activation_checkpointing = \"none\""),
        "{text}"
    );
    let with = |v: &str| {
        let t = text.replace(
            "activation_checkpointing = \"none\"",
            &format!("activation_checkpointing = {v}"),
        );
        TrainConfig::from_toml(&t, "x.toml")
    };
    for (v, want) in [
        ("\"none\"", ActivationCheckpointing::None),
        ("\"blocks\"", ActivationCheckpointing::Blocks),
        ("3", ActivationCheckpointing::EveryNth(3)),
    ] {
        let c = with(v).unwrap();
        assert_eq!(c.train.activation_checkpointing, want);
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), "again").unwrap(), c);
    }
    for bad in ["0", "-1", "\"all\""] {
        let e = with(bad).unwrap_err().to_string();
        assert!(
            e.contains("train.activation_checkpointing") && e.contains("\"blocks\""),
            "{bad}: {e}"
        );
    }
}

#[test]
fn zero_stage_is_0_to_3_and_the_old_sharding_key_reads_as_1() {
    let text = TrainConfig::recipe("gpt-shakespeare-char")
        .unwrap()
        .to_toml();
    assert!(text.contains("zero_stage = 0") && !text.contains("shard_optimizer_state"));
    let with = |v: &str| TrainConfig::from_toml(&text.replace("zero_stage = 0", v), "x.toml");
    for (v, want) in [
        ("zero_stage = 1", ZeroStage::Zero1),
        ("zero_stage = 2", ZeroStage::Zero2),
        ("zero_stage = 3", ZeroStage::Zero3),
        (
            "zero_stage = 3\nshard_optimizer_state = true",
            ZeroStage::Zero3,
        ),
        (
            "zero_stage = 0\nshard_optimizer_state = true",
            ZeroStage::Zero1,
        ),
        (
            "zero_stage = 2\nshard_optimizer_state = true",
            ZeroStage::Zero2,
        ),
        (
            "zero_stage = 0\nshard_optimizer_state = false",
            ZeroStage::Zero0,
        ),
    ] {
        let c = with(v).unwrap();
        assert_eq!(c.train.zero_stage(), want, "{v}");
        assert_eq!(TrainConfig::from_toml(&c.to_toml(), "again").unwrap(), c);
    }
    let e = with("zero_stage = 4").unwrap_err().to_string();
    assert!(
        e.contains("train.zero_stage") && e.contains("4 is not a ZeRO stage"),
        "{e}"
    );
}

#[test]
fn a_config_cut_mid_value_says_what_is_missing_and_where() {
    let text = "[model]\nfamily = \"gpt\"\nn_layer = 2\nn_head = ";
    let e = TrainConfig::from_toml(text, "cut.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.toml") && e.contains("line 4"), "{e}");
    // A reason, not an empty one before the position.
    assert!(!e.contains(":  ("), "{e}");
    assert!(e.contains("value"), "{e}");
}

#[test]
fn an_unknown_key_is_named_before_missing_ones_with_the_closest_known_key() {
    // `n_layers` misspelt and `n_head`, `lr` missing: the misspelling is the error.
    let text = "[model]\nfamily = \"gpt\"\nn_layers = 2\nn_embd = 32\nblock_size = 16\n\
                [train]\nbatch_size = 4\nmax_iters = 1\neval_interval = 1\n";
    let e = TrainConfig::from_toml(text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.n_layers")
            && e.contains("unknown field")
            && e.contains("did you mean `n_layer`?"),
        "{e}"
    );
    // With it fixed, every missing key at once.
    let e = TrainConfig::from_toml(&text.replace("n_layers", "n_layer"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.n_head, optim.lr") && e.contains("missing"),
        "{e}"
    );
    // Nothing close: no guess.
    let e = TrainConfig::from_toml(&text.replace("n_layers", "zzzzzz"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown field `zzzzzz`") && !e.contains("did you mean"),
        "{e}"
    );
}

#[test]
fn set_overrides_apply_and_bad_ones_name_the_flag_and_key() {
    let base = RunConfig::Pretrain(TrainConfig::recipe("gpt-shakespeare-char").unwrap());
    let sets = [
        "optim.lr=3e-4".to_string(),
        "train.zero_stage=2".to_string(),
    ];
    let RunConfig::Pretrain(c) = base.clone().with_overrides(&sets, Some(7)).unwrap() else {
        panic!("a pretraining config stays one");
    };
    assert_eq!((c.optim.lr, c.train.seed), (3e-4, 7));
    assert_eq!(c.train.zero_stage(), ZeroStage::Zero2);
    for (set, want) in [
        ("optim.lr", "expected KEY=VALUE"),
        ("optim.lr.x=1", "lr is not a section"),
        ("=3", "empty key"),
        ("optim.nope=1", "nope"),
        ("train.zero_stage=5", "not a ZeRO stage"),
    ] {
        let e = base
            .clone()
            .with_overrides(&[set.to_string()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set") && e.contains(want), "{set}: {e}");
    }
}

#[test]
fn activation_estimate_follows_korthikanti_in_f32_with_checkpointing_and_the_head() {
    // GPT-2 small, one sequence of 1 024: 12 layers of 1 024·68·768 bytes (the probabilities are
    // recomputed at 1 024 > 4·64), and the head in chunks (1 024 × 50 257 logits ≥ 2^24): one
    // chunk of 2^22 f32 values.
    let mut c = TrainConfig::recipe("gpt2-124m").unwrap();
    let head = 4.0 * f64::from(1u32 << 22);
    let layer = 1024.0 * 68.0 * 768.0;
    assert_eq!(c.activation_bytes(1.0, 50257.0), 12.0 * layer + head);
    // Every block recomputed: their inputs, one block's activations, the head.
    c.train.activation_checkpointing = ActivationCheckpointing::Blocks;
    assert_eq!(
        c.activation_bytes(1.0, 50257.0),
        12.0 * 1024.0 * 768.0 * 4.0 + layer + head
    );
    // Every 4th (blocks 0, 4, 8): 9 full, 3 inputs, one being recomputed.
    c.train.activation_checkpointing = ActivationCheckpointing::EveryNth(4);
    let want = 9.0 * layer + 3.0 * 1024.0 * 768.0 * 4.0 + layer + head;
    assert_eq!(c.activation_bytes(1.0, 50257.0), want);
    // At 256 tokens the probabilities are kept: 4·12·256 more values per token and layer; one
    // sequence's 256 × 50 257 logits stay below the chunking threshold and are held whole.
    c.train.activation_checkpointing = ActivationCheckpointing::None;
    c.model.block_size = 256;
    let layer = 256.0 * (68.0 * 768.0 + 4.0 * 12.0 * 256.0);
    let head = 3.0 * 256.0 * 50257.0 * 4.0;
    assert_eq!(c.activation_bytes(1.0, 50257.0), 12.0 * layer + head);
}
