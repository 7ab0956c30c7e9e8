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
